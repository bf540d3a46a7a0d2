//! `convert_fc_to_conv`: turns a fully connected classifier into convolutions, the
//! lecture notes' exercise: the first `linear` after `flatten` of a C×H×W map becomes a
//! conv with an H×W kernel, the linears after it 1×1 convs, and the `flatten` goes away.
//! The weights are reshaped (PyTorch's flatten order C, H, W is the conv weight's
//! order), not changed.
//!
//! Rewrites: `flatten` of a 4-D value whose users are all `linear`; then every `linear`
//! reading a converted value, directly or through elementwise ops (activations,
//! dropout, batch_norm, scale_shift), which become 4-D. A network output that became
//! 4-D gets a `flatten` so the network's outputs keep their shapes at the built size.
//! Runs after `eliminate_identities` (a dropout between flatten and linear hides the
//! pattern). Leaves alone: linears on a genuinely 2-D input (an `[F]` network input), flattens
//! with other users.
//!
//! Not in the default pipeline (a linear layer is a faster kernel than an H×W conv on an
//! H×W map); [`make_fully_convolutional`] uses it to build a network for larger inputs.

use crate::ir::shape::{self, fmt_shape};
use crate::ir::{Conv, Graph, Hw, Node, NodeId, Op, Output, Pad, Param, ParamRole};

/// Whether values pass through this op elementwise per channel, so that it works on a
/// `[N, C, 1, 1]` map exactly as on `[N, C]`.
fn passes_through(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation(_)
            | Op::Dropout { .. }
            | Op::StochasticDepth { .. }
            | Op::Identity
            | Op::BatchNorm { .. }
            | Op::ScaleShift
            | Op::Softmax
    )
}

fn conv_for_linear(out_features: usize, bias: bool, kernel: Hw) -> Op {
    Op::Conv(Conv {
        out_channels: out_features,
        kernel,
        stride: Hw::square(1),
        pad: Pad::symmetric(Hw::square(0)),
        dilation: Hw::square(1),
        groups: 1,
        bias,
    })
}

/// Rewrites one linear node into a conv with the given kernel, reshaping its weight.
fn linear_to_conv(graph: &mut Graph, id: NodeId, kernel: Hw, in_channels: usize) {
    let node = graph.node(id);
    let Op::Linear { out_features, bias } = node.op else { return };
    let weight_shape = vec![out_features, in_channels, kernel.h, kernel.w];
    let weight_name = node.params[0].name.clone();
    let node = graph.node_mut(id);
    node.op = conv_for_linear(out_features, bias, kernel);
    node.params[0] = Param { role: ParamRole::Weight, name: weight_name, shape: weight_shape };
}

/// Recomputes every node's shape from the inputs' shapes, in topological order.
pub fn reinfer_shapes(graph: &mut Graph) -> Result<(), String> {
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    for id in order {
        if matches!(graph.node(id).op, Op::Input { .. }) {
            continue;
        }
        let operands = graph.op_operands(id);
        let shapes: Vec<Vec<usize>> = operands.iter().map(|o| graph.node(*o).shape.clone()).collect();
        let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let node = graph.node(id);
        let shape = shape::infer_node(&node.op, &node.epilogue, &refs)
            .map_err(|e| format!("layer `{}`: {}", node.name, e.message))?;
        let wanted = node.op.param_shapes(&shapes[0]);
        for (param, (_, wanted_shape)) in node.params.iter().zip(&wanted) {
            if param.shape != *wanted_shape {
                return Err(format!(
                    "layer `{}` reads {} of shape {} but its input {} needs {}",
                    node.name,
                    param.name,
                    fmt_shape(&param.shape),
                    fmt_shape(&shapes[0]),
                    fmt_shape(wanted_shape)
                ));
            }
        }
        if let Some(residual) = graph.residual(id)
            && graph.node(residual).shape != shape
        {
            return Err(format!("layer `{}`: its residual no longer matches its output", node.name));
        }
        graph.node_mut(id).shape = shape;
    }
    Ok(())
}

pub fn convert_fc_to_conv(graph: &mut Graph) -> bool {
    // Work on a copy without the weights, and keep it only if every shape still works
    // out (a converted value may meet an op that needs it 2-D).
    let weights = std::mem::take(&mut graph.weights);
    let mut converted = graph.clone();
    let changed = convert(&mut converted);
    graph.weights = weights;
    if !changed {
        return false;
    }
    converted.weights = std::mem::take(&mut graph.weights);
    *graph = converted;
    // The weights take the conv layout: same values, new shapes.
    for id in graph.node_ids() {
        for param in graph.node(id).params.clone() {
            if let Some(tensor) = graph.weights.tensors.get_mut(&param.name)
                && tensor.len() == param.shape.iter().product::<usize>()
            {
                tensor.shape = param.shape;
            }
        }
    }
    true
}

/// The rewrite itself; false (and a graph to throw away) if nothing changed or the
/// result does not infer.
fn convert(graph: &mut Graph) -> bool {
    let mut changed = false;
    let original_outputs: Vec<(String, Vec<usize>)> =
        graph.outputs.iter().map(|o| (o.name.clone(), graph.node(o.node).shape.clone())).collect();
    for id in graph.topo_order().unwrap_or_default() {
        if !graph.contains(id) || !matches!(graph.node(id).op, Op::Flatten) || graph.is_output(id) {
            continue;
        }
        let [map] = graph.operands(id)[..] else { continue };
        let map_shape = graph.node(map).shape.clone();
        let users = graph.users(id);
        if map_shape.len() != 4
            || users.is_empty()
            || !users.iter().all(|u| matches!(graph.node(*u).op, Op::Linear { .. }))
        {
            continue;
        }
        let kernel = Hw::new(map_shape[2], map_shape[3]);
        let mut frontier = Vec::new();
        for user in users {
            linear_to_conv(graph, user, kernel, map_shape[1]);
            frontier.push(user);
        }
        graph.replace_all_uses(id, map);
        graph.remove_node(id);
        // Walk on through elementwise ops to the next linears: they become 1x1 convs.
        while let Some(value) = frontier.pop() {
            for user in graph.users(value) {
                let op = &graph.node(user).op;
                if let Op::Linear { .. } = op {
                    let in_channels = graph.node(user).params[0].shape[1];
                    linear_to_conv(graph, user, Hw::square(1), in_channels);
                    frontier.push(user);
                } else if passes_through(op) {
                    frontier.push(user);
                }
            }
        }
        changed = true;
    }
    if !changed {
        return false;
    }
    // Shapes changed downstream; the outputs keep theirs through a flatten.
    if reinfer_shapes(graph).is_err() {
        return false;
    }
    for (index, (name, shape)) in original_outputs.into_iter().enumerate() {
        let node = graph.outputs[index].node;
        let now = graph.node(node).shape.clone();
        if now.len() == 4 && shape.len() == 2 && now[2] * now[3] == 1 {
            let flatten = Node::new(Op::Flatten, format!("{}.flatten", graph.node(node).name), shape, Vec::new());
            let flatten = graph.add_node(flatten, &[node]);
            graph.outputs[index] = Output { name, node: flatten };
        }
    }
    changed
}

/// Builds the network for a larger input and makes it output its class-score map (the
/// classifier slides over the image): identities go, the classifier becomes
/// convolutional, and the shapes are recomputed for `input_chw`. With `average`, each
/// 4-D output is averaged over its map into one prediction `[N, K]`.
pub fn make_fully_convolutional(graph: &mut Graph, input_chw: &[usize], average: bool) -> Result<(), String> {
    super::eliminate_identities(graph);
    convert_fc_to_conv(graph);
    // The map is the output now: drop the flattens the conversion put before outputs.
    for index in 0..graph.outputs.len() {
        let node = graph.outputs[index].node;
        if matches!(graph.node(node).op, Op::Flatten) {
            let operand = graph.operands(node)[0];
            if graph.node(operand).shape.len() == 4 && graph.users(node).is_empty() {
                graph.outputs[index].node = operand;
                graph.remove_node(node);
            }
        }
    }
    let [input] = graph.inputs[..] else {
        return Err("--fully-conv needs a network with exactly one input".into());
    };
    let mut shape = vec![graph.node(input).shape[0]];
    shape.extend_from_slice(input_chw);
    if shape.len() != graph.node(input).shape.len() {
        return Err(format!("--input-shape {} does not match the input's rank", fmt_shape(input_chw)));
    }
    graph.node_mut(input).shape = shape;
    reinfer_shapes(graph)
        .map_err(|e| format!("the network is not fully convolutional at this size: {e} (is there a flatten before a linear that could not be converted?)"))?;
    if average {
        for index in 0..graph.outputs.len() {
            let node = graph.outputs[index].node;
            let out_shape = graph.node(node).shape.clone();
            if out_shape.len() != 4 {
                continue;
            }
            let name = graph.node(node).name.clone();
            let pooled = graph.add_node(
                Node::new(
                    Op::GlobalAvgPool,
                    format!("{name}.average"),
                    vec![out_shape[0], out_shape[1], 1, 1],
                    Vec::new(),
                ),
                &[node],
            );
            let flat = graph.add_node(
                Node::new(Op::Flatten, format!("{name}.average.flatten"), vec![out_shape[0], out_shape[1]], Vec::new()),
                &[pooled],
            );
            graph.outputs[index].node = flat;
        }
    }
    crate::ir::verify(graph).map_err(|e| format!("internal error after --fully-conv: {e}"))
}
