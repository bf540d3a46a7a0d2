//! `fold_channels_last`: runs ConvNeXt's channels-last sandwich in NCHW.
//!
//! Rewrites `permute(0, 2, 3, 1)`, then a chain of ops that act on the last dimension
//! or elementwise (`layer_norm` over the last dimension, `linear`, activations,
//! dropout), then `permute(0, 3, 1, 2)`: the two permutes go, `layer_norm` normalizes
//! dimension 1 instead, and each `linear` becomes the 1x1 convolution it is on an NCHW
//! map (weight `[out, in]` read as `[out, in, 1, 1]`: the same values, reshaped; names
//! kept). Backends then run the block without transposes, and the 1x1 convs on their
//! pointwise kernels.
//! Leaves alone: chains with any other op, a value of the chain with several users or
//! that is a network output (its channels-last layout is observable), and linears with
//! a fused epilogue (the pass runs before fusion).

use crate::ir::{Activation, Conv, Graph, Hw, NodeId, Op, Pad, Param, ParamRole};

const TO_LAST: [usize; 4] = [0, 2, 3, 1];
const TO_FIRST: [usize; 4] = [0, 3, 1, 2];

/// The single user of `id`, reading it once, if `id` is not an output.
fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    let users = graph.users(id);
    if users.len() != 1 || graph.is_output(id) {
        return None;
    }
    (graph.operands(users[0]).iter().filter(|&&o| o == id).count() == 1).then_some(users[0])
}

/// The ops between the permutes, in order, and the closing permute; `None` when the
/// chain from `open` is not a sandwich.
fn sandwich(graph: &Graph, open: NodeId) -> Option<(Vec<NodeId>, NodeId)> {
    let mut inner = Vec::new();
    let mut current = open;
    loop {
        let user = sole_user(graph, current)?;
        let node = graph.node(user);
        if !node.epilogue.is_empty() {
            return None;
        }
        match &node.op {
            Op::Permute { perm } if perm[..] == TO_FIRST => return Some((inner, user)),
            Op::LayerNorm { axis: 3, .. } | Op::Linear { .. } | Op::Dropout { .. } => {}
            op if Activation::of(op).is_some() => {}
            _ => return None,
        }
        inner.push(user);
        current = user;
    }
}

pub fn fold_channels_last(graph: &mut Graph) -> bool {
    let mut changed = false;
    for open in graph.topo_order().unwrap_or_default() {
        if !graph.contains(open) {
            continue;
        }
        let node = graph.node(open);
        if !matches!(&node.op, Op::Permute { perm } if perm[..] == TO_LAST) || !node.epilogue.is_empty() {
            continue;
        }
        let Some((inner, close)) = sandwich(graph, open) else { continue };
        let [source] = graph.operands(open)[..] else { continue };
        graph.replace_all_uses(open, source);
        graph.remove_node(open);
        let mut shape = graph.node(source).shape.clone();
        for &id in &inner {
            let node = graph.node_mut(id);
            match node.op {
                Op::LayerNorm { eps, .. } => node.op = Op::LayerNorm { eps, axis: 1 },
                Op::Linear { out_features, bias } => {
                    node.op = Op::Conv(Conv {
                        out_channels: out_features,
                        kernel: Hw::square(1),
                        stride: Hw::square(1),
                        pad: Pad::symmetric(Hw::square(0)),
                        dilation: Hw::square(1),
                        groups: 1,
                        bias,
                    });
                    let conv_shape = vec![out_features, shape[1], 1, 1];
                    let name = node.params[0].name.clone();
                    node.params[0] = Param { role: ParamRole::Weight, name: name.clone(), shape: conv_shape.clone() };
                    if let Some(tensor) = graph.weights.tensors.get_mut(&name) {
                        tensor.shape = conv_shape;
                    }
                    shape[1] = out_features;
                }
                _ => {}
            }
            graph.node_mut(id).shape = shape.clone();
        }
        // Users and outputs of the closing permute read the chain's last value.
        let last = inner.last().copied().unwrap_or(source);
        graph.replace_all_uses(close, last);
        graph.remove_node(close);
        changed = true;
    }
    changed
}
