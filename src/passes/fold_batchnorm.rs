//! `fold_batchnorm`: folds a BatchNorm into the convolution or linear layer before it.
//!
//! With scale = γ/√(σ²+ε): w' = w·scale (per output channel), b' = (b−μ)·scale+β, computed
//! in f64 and rounded to f32. The conv (or linear) gains a bias if it had none; its
//! parameters keep their names (`conv1.weight` now holds the folded values) and the bias
//! of a conv that had none is named `<conv>.bias`. When the graph carries no weight values
//! (`cnnc ir` without weights), only the structure changes.
//! Leaves alone: a BatchNorm whose operand is not a conv or linear, or whose operand has
//! other users or is a network output (its unfolded value is observable).

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
            Op::Conv(c) => c.bias,
            Op::Linear { bias, .. } => *bias,
            _ => continue,
        };
        if graph.users(layer_id).len() != 1 || graph.is_output(layer_id) {
            continue;
        }
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
