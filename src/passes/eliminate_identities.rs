//! `eliminate_identities`: removes ops that compute the identity at inference.
//!
//! Rewrites: `dropout`, `dropout2d` and `stochastic_depth` (identity at inference), `identity`,
//! a `reshape` to the input's own shape; `adaptive_avg_pool`
//! whose output size equals its input size (every bin is one pixel); `max_pool` and
//! `avg_pool` with a 1x1 kernel, stride 1 and no padding; a `slice` of every channel; a
//! `channel_shuffle` with 1 group or one channel per group; a `permute` that keeps every
//! dimension in place. Users (and outputs) of the
//! removed node read its operand instead. A network output that would become a network
//! input stays (the backends copy it).
//! Leaves alone: everything else, including `flatten` (it changes the shape).

use crate::ir::{Graph, Hw, Op, Pad};

fn is_identity(graph: &Graph, op: &Op, input: &[usize], output: &[usize]) -> bool {
    let _ = graph;
    match op {
        Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } | Op::Identity => true,
        Op::Reshape { .. } => input == output,
        Op::AdaptiveAvgPool { .. } => input == output,
        Op::MaxPool(p) | Op::AvgPool(p) => {
            p.kernel == Hw::square(1) && p.stride == Hw::square(1) && p.pad == Pad::symmetric(Hw::square(0))
        }
        Op::Slice { .. } => input == output,
        Op::ChannelShuffle { groups } => *groups == 1 || Some(groups) == input.get(1),
        Op::Permute { perm } => perm.iter().enumerate().all(|(i, &d)| i == d),
        _ => false,
    }
}

pub fn eliminate_identities(graph: &mut Graph) -> bool {
    let mut changed = false;
    for id in graph.topo_order().unwrap_or_default() {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let [operand] = operands[..] else { continue };
        if !is_identity(graph, &node.op, &graph.node(operand).shape, &node.shape)
            || (graph.is_output(id) && matches!(graph.node(operand).op, Op::Input { .. }))
        {
            continue;
        }
        graph.replace_all_uses(id, operand);
        graph.remove_node(id);
        changed = true;
    }
    changed
}
