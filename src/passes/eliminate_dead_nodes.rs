//! `eliminate_dead_nodes`: removes nodes whose values reach no output.
//!
//! Rewrites: any non-input node from which no output is reachable, with its weights.
//! Leaves alone: inputs (they are the network's interface even when unused).

use std::collections::HashSet;

use crate::ir::{Graph, Op};

pub fn eliminate_dead_nodes(graph: &mut Graph) -> bool {
    let mut live = HashSet::new();
    let mut stack: Vec<_> = graph.outputs.iter().map(|o| o.node).collect();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    let mut changed = false;
    for id in graph.node_ids() {
        if !live.contains(&id) && !matches!(graph.node(id).op, Op::Input { .. }) {
            if let Some(node) = graph.remove_node(id) {
                for param in node.params {
                    graph.weights.tensors.remove(&param.name);
                }
            }
            changed = true;
        }
    }
    changed
}
