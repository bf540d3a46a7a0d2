//! `fuse_gates`: folds squeeze-and-excitation's channel multiply into the 1x1 conv that
//! reads it, so the gated feature map is never written to memory.
//!
//! Rewrites a two-operand `mul` of a feature map `x` (`[N, C, H, W]`, more than one
//! pixel) by a gate `g` of one value per image and channel (`[N, C, 1, 1]`), whose value
//! has exactly one user, is not a network output and carries no epilogue, when that user
//! is a 1x1 conv of one group, stride 1 and no padding reading it as its input: the conv
//! reads `x` and takes `g` as its gate (`Epilogue::gate`), and the `mul` goes away.
//!
//! Only where the conv has fewer output channels than `x` has pixels (`O < H * W`): a
//! backend runs the gate by scaling the conv's weights per image (`O x C` multiplies),
//! which then costs less than the multiply it replaces (`C x H x W`). Leaves alone the
//! other cases (SE on 7x7 maps before a wide projection), muls that are not a gate,
//! convs that already pool or are gated, and convs of several groups.
//!
//! Only for backends that run gated convolutions (`Capabilities::gated_convolutions`,
//! the CPU). Runs after `fuse_epilogues`, whose activations and residuals stay where
//! they are: the gate acts on the conv's input.

use crate::ir::{Graph, NodeId, Op};

/// The gate and the feature map of a `mul` that gates, `(x, g)`.
fn gate_operands(graph: &Graph, mul: NodeId) -> Option<(NodeId, NodeId)> {
    let node = graph.node(mul);
    let operands = graph.operands(mul);
    if !matches!(node.op, Op::Mul) || operands.len() != 2 || !node.epilogue.is_empty() {
        return None;
    }
    let is_gate = |x: NodeId, g: NodeId| {
        let (xs, gs) = (&graph.node(x).shape, &graph.node(g).shape);
        x != g && xs.len() == 4 && xs[2] * xs[3] > 1 && *gs == [xs[0], xs[1], 1, 1] && *xs == node.shape
    };
    let (a, b) = (operands[0], operands[1]);
    if is_gate(a, b) {
        Some((a, b))
    } else if is_gate(b, a) {
        Some((b, a))
    } else {
        None
    }
}

/// Fuses the gate `mul` into its one reader; true if it did.
fn fuse_gate(graph: &mut Graph, mul: NodeId) -> bool {
    let Some((x, g)) = gate_operands(graph, mul) else { return false };
    let users = graph.users(mul);
    if users.len() != 1 || graph.is_output(mul) {
        return false;
    }
    let conv = users[0];
    let node = graph.node(conv);
    let Op::Conv(c) = &node.op else { return false };
    let plane = graph.node(mul).shape[2] * graph.node(mul).shape[3];
    let fits = c.kernel.h == 1
        && c.kernel.w == 1
        && c.stride.h == 1
        && c.stride.w == 1
        && c.pad.is_zero()
        && c.groups == 1
        && !node.epilogue.gate
        && node.epilogue.pool.is_none()
        && node.shape[1] < plane
        && graph.op_operands(conv) == [mul]
        && graph.residual(conv) != Some(mul);
    if !fits {
        return false;
    }
    let residual = graph.residual(conv);
    graph.remove_node(mul);
    let operands: Vec<NodeId> = [x, g].into_iter().chain(residual).collect();
    graph.set_operands(conv, &operands);
    graph.node_mut(conv).epilogue.gate = true;
    true
}

pub fn fuse_gates(graph: &mut Graph) -> bool {
    let mut changed = false;
    for id in graph.topo_order().unwrap_or_default() {
        if graph.contains(id) {
            changed |= fuse_gate(graph, id);
        }
    }
    changed
}
