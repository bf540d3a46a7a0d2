//! `fold_batchnorm`: folds a BatchNorm into the convolution or linear layer before it.
//!
//! With scale = γ/√(σ²+ε): w' = w·scale (per output channel), b' = (b−μ)·scale+β, computed
//! in f64 and rounded to f32. The conv (or linear) gains a bias if it had none; its
//! parameters keep their names (`conv1.weight` now holds the folded values) and the bias
//! of a conv that had none is named `<conv>.bias`. When the graph carries no weight values
//! (`cnnc ir` without weights), only the structure changes.
//! A BatchNorm with nothing to fold into (its operand is not a conv or a 2-D linear, or has
//! other users, or is a network output, or already has a fused epilogue) becomes a
//! `scale_shift` with scale = γ/√(σ²+ε) and shift = β − μ·scale, named `<bn>.scale` and
//! `<bn>.shift`.
//! Leaves alone: every other op.

use crate::ir::{Graph, Op, Param, ParamRole};
use crate::tensor::Tensor;

pub fn fold_batchnorm(graph: &mut Graph) -> bool {
    let mut changed = false;
    for bn_id in graph.topo_order().unwrap_or_default() {
        let bn = graph.node(bn_id);
        let Op::BatchNorm { eps } = bn.op else { continue };
        let operands = graph.operands(bn_id);
        let [layer_id] = operands[..] else { continue };
        let layer = graph.node(layer_id);
        let had_bias = match &layer.op {
            Op::Conv(c) => Some(c.bias),
            // A linear on a higher rank acts on the last dimension, a BatchNorm on
            // dimension 1: not the same channels.
            Op::Linear { bias, .. } if layer.shape.len() == 2 => Some(*bias),
            _ => None,
        };
        // A layer with a fused epilogue computes more than its weights say: scaling them
        // would scale before the activation or pooling instead of after.
        let foldable = graph.users(layer_id).len() == 1 && !graph.is_output(layer_id) && layer.epilogue.is_empty();
        let Some(had_bias) = had_bias.filter(|_| foldable) else {
            to_scale_shift(graph, bn_id, eps);
            changed = true;
            continue;
        };
        let bn_params: Vec<String> = bn.params.iter().map(|p| p.name.clone()).collect();
        let weight_name = layer.params[0].name.clone();
        let bias_name = format!("{}.bias", layer.name);
        let out_channels = layer.shape[1];
        fold_values(
            graph,
            &weight_name,
            had_bias.then_some(bias_name.as_str()),
            &bias_name,
            &bn_params,
            eps,
            out_channels,
        );
        for name in &bn_params {
            graph.weights.tensors.remove(name);
        }
        let layer = graph.node_mut(layer_id);
        match &mut layer.op {
            Op::Conv(c) => c.bias = true,
            Op::Linear { bias, .. } => *bias = true,
            _ => unreachable!("checked above"),
        }
        if !had_bias {
            layer.params.push(Param { role: ParamRole::Bias, name: bias_name, shape: vec![out_channels] });
        }
        graph.replace_all_uses(bn_id, layer_id);
        graph.remove_node(bn_id);
        changed = true;
    }
    changed
}

/// Turns a BatchNorm into the per-channel affine map it computes at inference.
fn to_scale_shift(graph: &mut Graph, bn_id: crate::ir::NodeId, eps: f64) {
    let bn = graph.node(bn_id);
    let channels = bn.shape[1];
    let names: Vec<String> = bn.params.iter().map(|p| p.name.clone()).collect();
    let (scale_name, shift_name) = (format!("{}.scale", bn.name), format!("{}.shift", bn.name));
    let weights = &graph.weights;
    let values: Option<Vec<&Tensor>> = names.iter().map(|n| weights.get(n).filter(|t| t.len() == channels)).collect();
    if let Some(values) = values {
        let (gamma, beta, mean, var) = (values[0], values[1], values[2], values[3]);
        let mut scale = vec![0.0f32; channels];
        let mut shift = vec![0.0f32; channels];
        for c in 0..channels {
            let s = gamma.data[c] as f64 / (var.data[c] as f64 + eps).sqrt();
            scale[c] = s as f32;
            shift[c] = (beta.data[c] as f64 - mean.data[c] as f64 * s) as f32;
        }
        graph.weights.insert(scale_name.clone(), Tensor { shape: vec![channels], data: scale });
        graph.weights.insert(shift_name.clone(), Tensor { shape: vec![channels], data: shift });
    }
    for name in &names {
        graph.weights.tensors.remove(name);
    }
    let node = graph.node_mut(bn_id);
    node.op = Op::ScaleShift;
    node.params = vec![
        Param { role: ParamRole::Scale, name: scale_name, shape: vec![channels] },
        Param { role: ParamRole::Shift, name: shift_name, shape: vec![channels] },
    ];
}

/// Computes the folded weight and bias when every tensor involved is present.
fn fold_values(
    graph: &mut Graph,
    weight_name: &str,
    old_bias: Option<&str>,
    new_bias: &str,
    bn: &[String],
    eps: f64,
    channels: usize,
) {
    let weights = &graph.weights;
    let get = |name: &str| weights.get(name).filter(|t| t.len() == channels || name == weight_name);
    let (Some(w), Some(gamma), Some(beta), Some(mean), Some(var)) =
        (weights.get(weight_name), get(&bn[0]), get(&bn[1]), get(&bn[2]), get(&bn[3]))
    else {
        return;
    };
    if old_bias.is_some() && get(old_bias.unwrap_or_default()).is_none() {
        return;
    }
    let per_channel = w.len() / channels;
    let mut folded_w = w.clone();
    let mut folded_b = vec![0.0f32; channels];
    for (c, folded_bias) in folded_b.iter_mut().enumerate() {
        let scale = gamma.data[c] as f64 / (var.data[c] as f64 + eps).sqrt();
        for v in &mut folded_w.data[c * per_channel..(c + 1) * per_channel] {
            *v = (*v as f64 * scale) as f32;
        }
        let b = old_bias.and_then(|name| weights.get(name)).map(|t| t.data[c] as f64).unwrap_or(0.0);
        *folded_bias = ((b - mean.data[c] as f64) * scale + beta.data[c] as f64) as f32;
    }
    graph.weights.insert(weight_name, folded_w);
    graph.weights.insert(new_bias, Tensor { shape: vec![channels], data: folded_b });
}
