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
//! several users or that are outputs (their unfused value is observable), kernels whose
//! epilogue already pools (what follows the pooling cannot run before it), pooling
//! itself (`fuse_pooling`, for the backends that run it) and `concat`.

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

/// Fuses the activation that follows `id` into its epilogue; true if it did.
fn fuse_activation(graph: &mut Graph, id: NodeId) -> bool {
    let node = graph.node(id);
    if !fusable_kernel(&node.op)
        || (matches!(node.op, Op::Add) && graph.op_operands(id).len() != 2)
        || node.epilogue.pool.is_some()
    {
        return false;
    }
    let Some(user) = sole_user(graph, id) else { return false };
    let Some(activation) = Activation::of(&graph.node(user).op) else { return false };
    let epilogue = &mut graph.node_mut(id).epilogue;
    let slot = if epilogue.residual { &mut epilogue.post_activation } else { &mut epilogue.activation };
    if slot.is_some() {
        return false;
    }
    *slot = Some(activation);
    replace(graph, user, id);
    true
}

/// Fuses a two-operand `add` into the conv or linear producing one of its operands, the
/// first operand (the current tensor, as written) preferred; returns that kernel.
fn fuse_residual(graph: &mut Graph, add: NodeId) -> Option<NodeId> {
    let add_node = graph.node(add);
    let operands = graph.operands(add);
    if !matches!(add_node.op, Op::Add) || operands.len() != 2 || !add_node.epilogue.is_empty() {
        return None;
    }
    for (kernel, residual) in [(operands[0], operands[1]), (operands[1], operands[0])] {
        let node = graph.node(kernel);
        let fits = matches!(node.op, Op::Conv(_) | Op::Linear { .. })
            && !node.epilogue.residual
            && node.epilogue.pool.is_none()
            && node.shape == add_node.shape
            && graph.node(residual).shape == node.shape
            && sole_user(graph, kernel) == Some(add)
            && !reaches(graph, kernel, residual);
        if fits {
            // The residual becomes the kernel's last operand; the add goes away.
            let position = graph.operands(kernel).len();
            graph.add_edge(residual, kernel, position);
            graph.node_mut(kernel).epilogue.residual = true;
            replace(graph, add, kernel);
            return Some(kernel);
        }
    }
    None
}

/// Removes `old` (whose work `new` now does) and points its users at `new`.
fn replace(graph: &mut Graph, old: NodeId, new: NodeId) {
    graph.replace_all_uses(old, new);
    graph.remove_node(old);
}

pub fn fuse_epilogues(graph: &mut Graph) -> bool {
    let mut changed = false;
    for id in graph.topo_order().unwrap_or_default() {
        if !graph.contains(id) {
            continue;
        }
        // An add fuses into the kernel before it, which then takes the add's activation
        // (that kernel was visited earlier in the order, so finish it here).
        let kernel = fuse_residual(graph, id).unwrap_or(id);
        changed |= kernel != id;
        while fuse_activation(graph, kernel) {
            changed = true;
        }
    }
    changed
}
