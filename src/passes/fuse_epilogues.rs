//! `fuse_epilogues`: folds the elementwise work that follows a kernel into its epilogue,
//! so the intermediate tensor is never written to memory.
//!
//! Rewrites, for a conv, linear, scale-shift or two-operand `add` node N whose value has
//! exactly one user and is not a network output:
//! - N followed by an activation: the activation becomes N's `epilogue.activation`
//!   (or its `post_activation` once N has a residual);
//! - a conv or linear N followed by a two-operand `add` of N and another value R of the
//!   same shape: R becomes N's residual operand (the add goes away), provided R does not
//!   depend on N; then the add's own following activation fuses as `post_activation`.
//!
//! Leaves alone: adds that broadcast, merges of three or more operands, values with
//! several users or that are outputs (their unfused value is observable), pooling
//! (fusing it needs backend support that does not exist yet) and `concat`.

use std::collections::HashSet;

use crate::ir::{Activation, Graph, NodeId, Op};

fn fusable_kernel(op: &Op) -> bool {
    matches!(op, Op::Conv(_) | Op::Linear { .. } | Op::ScaleShift | Op::Add)
}

/// The single user of `id`, if it has exactly one and is not an output.
fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    let users = graph.users(id);
    if users.len() != 1 || graph.is_output(id) {
        return None;
    }
    // The user must read the value once (`add(x, x)` reads it twice).
    let user = users[0];
    (graph.operands(user).iter().filter(|&&o| o == id).count() == 1).then_some(user)
}

/// Whether `target` can be reached from `from` along use edges.
fn reaches(graph: &Graph, from: NodeId, target: NodeId) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![from];
    while let Some(id) = stack.pop() {
        if id == target {
            return true;
        }
        if seen.insert(id) {
            stack.extend(graph.users(id));
        }
    }
    false
}

/// Tries one fusion into `id`; true if the graph changed.
fn fuse_once(graph: &mut Graph, id: NodeId) -> bool {
    let node = graph.node(id);
    if !fusable_kernel(&node.op) || (matches!(node.op, Op::Add) && graph.op_operands(id).len() != 2) {
        return false;
    }
    let Some(user) = sole_user(graph, id) else { return false };
    let user_node = graph.node(user);
    if let Some(activation) = Activation::of(&user_node.op) {
        let epilogue = &graph.node(id).epilogue;
        let slot_free =
            if epilogue.residual { epilogue.post_activation.is_none() } else { epilogue.activation.is_none() };
        if !slot_free {
            return false;
        }
        let epilogue = &mut graph.node_mut(id).epilogue;
        if epilogue.residual {
            epilogue.post_activation = Some(activation);
        } else {
            epilogue.activation = Some(activation);
        }
        replace(graph, user, id);
        return true;
    }
    let node = graph.node(id);
    if matches!(user_node.op, Op::Add)
        && matches!(node.op, Op::Conv(_) | Op::Linear { .. })
        && !node.epilogue.residual
        && user_node.epilogue.is_empty()
        && user_node.shape == node.shape
    {
        let add_operands = graph.operands(user);
        if add_operands.len() != 2 {
            return false;
        }
        let residual = if add_operands[0] == id { add_operands[1] } else { add_operands[0] };
        if graph.node(residual).shape != node.shape || reaches(graph, id, residual) {
            return false;
        }
        // The residual becomes N's last operand.
        let position = graph.operands(id).len();
        graph.add_edge(residual, id, position);
        graph.node_mut(id).epilogue.residual = true;
        replace(graph, user, id);
        return true;
    }
    false
}

/// Removes `old` (whose work `new` now does) and points its users at `new`.
fn replace(graph: &mut Graph, old: NodeId, new: NodeId) {
    graph.replace_all_uses(old, new);
    graph.remove_node(old);
}

pub fn fuse_epilogues(graph: &mut Graph) -> bool {
    let mut changed = false;
    for id in graph.topo_order().unwrap_or_default() {
        while graph.contains(id) && fuse_once(graph, id) {
            changed = true;
        }
    }
    changed
}
