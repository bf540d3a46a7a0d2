//! The reference interpreter: runs a graph on weights and inputs with plain loops, as
//! the ground truth every backend is compared against.
//!
//! Semantics are PyTorch's (NCHW, float32 storage, inference mode). Sums (convolution,
//! linear, pooling averages, softmax, batch norm, LRN windows) are accumulated in f64
//! and rounded to f32 once per output value, so the interpreter is at least as accurate
//! as any backend it checks. Clarity comes first; the only concessions to speed are in
//! the convolution (a zero-padded f64 copy of the input, so no tap needs a bounds test;
//! a loop order whose innermost loop sweeps one output row over contiguous memory, with
//! a kernel row's taps fused) and splitting convolution and linear work over threads by
//! output value, each written by exactly one thread, so results do not depend on the
//! thread count.
//!
//! A conv or linear node whose precision is not f32 ([`crate::precision`]) reads its
//! input and weights rounded as that precision rounds them (bf16: round to nearest even,
//! denormals to zero), the exact simulation the native bf16 kernels are checked against.
//!
//! Nothing a caller passes makes it panic: a missing or mis-shaped input or weight, or a
//! node whose stored shape disagrees with its operands, is an [`InterpError`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use crate::ir::shape::{self, fmt_shape};
use crate::ir::{Activation, Conv, Epilogue, Graph, Node, NodeId, Op, ParamRole, Pool, PoolKind};
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// An error running a graph: a missing or mis-shaped weight or input.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpError(pub String);

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InterpError {}

/// Runs the graph; returns the outputs in `graph.outputs` order.
pub fn run(graph: &Graph, weights: &Weights, inputs: &[Tensor]) -> Result<Vec<Tensor>, InterpError> {
    run_traced(graph, weights, inputs, &mut |_, _| {})
}

/// Same, calling `observe(node_id, &value)` for every node's value in topological order
/// (for layer-by-layer comparisons).
///
/// Inputs are given in `graph.inputs` order and must have exactly the input node's shape,
/// batch included. Each intermediate value is freed right after its last user has run;
/// output values are kept until the end.
pub fn run_traced(
    graph: &Graph,
    weights: &Weights,
    inputs: &[Tensor],
    observe: &mut dyn FnMut(NodeId, &Tensor),
) -> Result<Vec<Tensor>, InterpError> {
    run_rewriting(graph, weights, inputs, &mut |id, value| observe(id, value))
}

/// Same, but `rewrite(node_id, &mut value)` may change each node's value before its
/// users read it (to simulate rounding, or to measure how sensitive the outputs are to
/// it). The rewritten value must keep its shape.
pub fn run_rewriting(
    graph: &Graph,
    weights: &Weights,
    inputs: &[Tensor],
    rewrite: &mut dyn FnMut(NodeId, &mut Tensor),
) -> Result<Vec<Tensor>, InterpError> {
    let order = graph.topo_order().ok_or_else(|| InterpError(format!("graph `{}` has a cycle", graph.name)))?;
    if inputs.len() != graph.inputs.len() {
        return Err(InterpError(format!(
            "graph `{}` takes {} input(s), got {}",
            graph.name,
            graph.inputs.len(),
            inputs.len()
        )));
    }
    let input_position: HashMap<NodeId, usize> = graph.inputs.iter().enumerate().map(|(i, id)| (*id, i)).collect();

    // How many distinct user nodes still have to read each value.
    let mut pending_users: HashMap<NodeId, usize> = order.iter().map(|id| (*id, graph.users(*id).len())).collect();
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();

    for id in order {
        let node = graph.node(id);
        let operand_ids = graph.operands(id);
        let value = if let Op::Input { name } = &node.op {
            let position = *input_position
                .get(&id)
                .ok_or_else(|| InterpError(format!("input `{name}` is not listed in the graph's inputs")))?;
            let given = &inputs[position];
            check_tensor_data(given, &format!("input `{name}`"))?;
            if given.shape != node.shape {
                return Err(InterpError(format!(
                    "input `{name}` must have shape {}, got {}",
                    fmt_shape(&node.shape),
                    given.shape_string()
                )));
            }
            given.clone()
        } else {
            let own_operands = graph.op_operands(id);
            let mut operands: Vec<&Tensor> = Vec::with_capacity(own_operands.len());
            for operand in &own_operands {
                operands.push(values.get(operand).ok_or_else(|| {
                    InterpError(format!("layer `{}`: operand {:?} has no value", node.name, operand))
                })?);
            }
            // A gated op reads its input times the gate, rounded as `mul` rounds.
            let gated = match graph.gate(id) {
                Some(g) => {
                    let gate = values
                        .get(&g)
                        .ok_or_else(|| InterpError(format!("layer `{}`: gate {:?} has no value", node.name, g)))?;
                    let x = operands.first().ok_or_else(|| InterpError(format!("layer `{}`: no input", node.name)))?;
                    if gate.shape.len() != 4 || x.shape.len() != 4 || gate.shape[..2] != x.shape[..2] {
                        return Err(InterpError(format!(
                            "layer `{}`: gate {} does not match the input {}",
                            node.name,
                            gate.shape_string(),
                            x.shape_string()
                        )));
                    }
                    Some(broadcast_fold(&[x, gate], x.shape.clone(), |a, b| a * b))
                }
                None => None,
            };
            if let Some(gated) = &gated {
                operands[0] = gated;
            }
            let kernel_shape = check_node_shape(node, &operands)?;
            let mut value = eval_node(node, &operands, weights, kernel_shape)?;
            if !node.epilogue.is_empty() {
                let residual =
                    match graph.residual(id) {
                        Some(r) => Some(values.get(&r).ok_or_else(|| {
                            InterpError(format!("layer `{}`: residual {:?} has no value", node.name, r))
                        })?),
                        None => None,
                    };
                apply_epilogue(&node.epilogue, &mut value, residual)?;
            }
            if value.shape != node.shape {
                return Err(InterpError(format!(
                    "layer `{}`: computed shape {} differs from the graph's {}",
                    node.name,
                    value.shape_string(),
                    fmt_shape(&node.shape)
                )));
            }
            value
        };
        let mut value = value;
        rewrite(id, &mut value);
        if value.shape != node.shape {
            return Err(InterpError(format!("layer `{}`: a rewrite changed its value's shape", node.name)));
        }
        if pending_users[&id] > 0 || graph.is_output(id) {
            values.insert(id, value);
        }

        // Free the operands this node was the last user of.
        let mut distinct_operands = operand_ids;
        distinct_operands.sort();
        distinct_operands.dedup();
        for operand in distinct_operands {
            let remaining = pending_users.get_mut(&operand).expect("every node has a use count");
            *remaining -= 1;
            if *remaining == 0 && !graph.is_output(operand) {
                values.remove(&operand);
            }
        }
    }

    graph
        .outputs
        .iter()
        .map(|output| {
            values
                .get(&output.node)
                .cloned()
                .ok_or_else(|| InterpError(format!("output `{}` names a node with no value", output.name)))
        })
        .collect()
}

/// Checks that a tensor's data length matches its shape (its fields are public).
fn check_tensor_data(tensor: &Tensor, what: &str) -> Result<(), InterpError> {
    match shape::checked_elements(&tensor.shape) {
        Some(n) if n == tensor.data.len() => Ok(()),
        _ => Err(InterpError(format!("{what} has shape {} but {} values", tensor.shape_string(), tensor.data.len()))),
    }
}

/// Checks that the node's stored output shape is what its op and epilogue make of its
/// operands' shapes, so that every loop below can index with the shapes without bound
/// failures; returns the op's own output shape (before an epilogue's pooling).
fn check_node_shape(node: &Node, operands: &[&Tensor]) -> Result<Vec<usize>, InterpError> {
    let operand_shapes: Vec<&[usize]> = operands.iter().map(|t| t.shape.as_slice()).collect();
    let located = |e: shape::ShapeError| InterpError(format!("layer `{}`: {}", node.name, e.message));
    let kernel_shape = shape::infer(&node.op, &operand_shapes).map_err(located)?;
    let inferred = shape::infer_node(&node.op, &node.epilogue, &operand_shapes).map_err(located)?;
    if inferred != node.shape {
        return Err(InterpError(format!(
            "layer `{}`: the graph says its output is {}, but its operands make {}",
            node.name,
            fmt_shape(&node.shape),
            fmt_shape(&inferred)
        )));
    }
    Ok(kernel_shape)
}

/// The weight tensors a weighted node reads, by role, each checked against the shape
/// its op needs for the node's input.
struct NodeParams<'a> {
    by_role: Vec<(ParamRole, &'a Tensor)>,
}

impl<'a> NodeParams<'a> {
    fn load(node: &Node, input_shape: &[usize], weights: &'a Weights) -> Result<NodeParams<'a>, InterpError> {
        let mut by_role = Vec::new();
        for (role, expected_shape) in node.op.param_shapes(input_shape) {
            let param = node.params.iter().find(|p| p.role == role).ok_or_else(|| {
                InterpError(format!("layer `{}` has no `{}` parameter in the graph", node.name, role.suffix()))
            })?;
            let tensor =
                weights.get(&param.name).ok_or_else(|| InterpError(format!("missing weight `{}`", param.name)))?;
            check_tensor_data(tensor, &format!("weight `{}`", param.name))?;
            if tensor.shape != expected_shape {
                return Err(InterpError(format!(
                    "weight `{}` must have shape {}, got {}",
                    param.name,
                    fmt_shape(&expected_shape),
                    tensor.shape_string()
                )));
            }
            by_role.push((role, tensor));
        }
        Ok(NodeParams { by_role })
    }

    /// The tensor for `role`, if the op reads one (a bias may be absent).
    fn get(&self, role: ParamRole) -> Option<&'a Tensor> {
        self.by_role.iter().find(|(r, _)| *r == role).map(|(_, t)| *t)
    }

    /// The tensor for `role`, which `load` guarantees exists for the op's required roles.
    fn require(&self, role: ParamRole) -> Result<&'a Tensor, InterpError> {
        self.get(role).ok_or_else(|| InterpError(format!("no `{}` parameter loaded", role.suffix())))
    }
}

/// A conv's or linear layer's input and weights as its precision reads them
/// ([`crate::precision`]): as they are in f32, both rounded to bf16 in bf16 (the products
/// of bf16 values are exact, and the f64 accumulation after them is the f32
/// accumulation's ideal). The bias and the epilogue stay f32. (int8 layers go through
/// [`int8_operands`].)
fn at_precision<'a>(precision: Precision, x: &'a Tensor, weight: &'a Tensor) -> (Cow<'a, Tensor>, Cow<'a, Tensor>) {
    match precision {
        Precision::F32 | Precision::Int8(_) => (Cow::Borrowed(x), Cow::Borrowed(weight)),
        Precision::Bf16 => {
            let round = |t: &Tensor| {
                let mut t = t.clone();
                crate::precision::round_slice_bf16(&mut t.data);
                Cow::Owned(t)
            };
            (round(x), round(weight))
        }
    }
}

/// An int8 layer's operands ([`crate::precision`]): the input's integer offsets
/// `q_x - zp` and the weights' integers `q_w`, both as f32 (exact), and the per-channel
/// factors `m[c]`. The conv and linear loops then sum the integer products in f64, which
/// is exact (every sum is below 2^53), and round the sum to f32 (exact while below 2^24).
fn int8_operands(
    node: &Node,
    input: crate::precision::Int8Input,
    x: &Tensor,
    weight: &Tensor,
) -> Result<(Tensor, Tensor, Vec<f32>), InterpError> {
    let out_channels = weight.shape[0];
    let k = weight.len() / out_channels.max(1);
    if k > crate::precision::INT8_MAX_REDUCTION {
        return Err(InterpError(format!(
            "layer `{}`: int8 with {k} products per output, more than the {} an i32 sum holds",
            node.name,
            crate::precision::INT8_MAX_REDUCTION
        )));
    }
    let (integers, weight_scales) = crate::precision::quantize_weights(&weight.data, out_channels);
    let x = Tensor { shape: x.shape.clone(), data: x.data.iter().map(|&v| input.offset(v)).collect() };
    let weight = Tensor { shape: weight.shape.clone(), data: integers };
    Ok((x, weight, crate::precision::output_scales(input, &weight_scales)))
}

/// An int8 layer's outputs from its integer sums, `inner` values per channel (a conv's
/// plane; 1 for a linear layer, whose channels are the last dimension): `f32(sum *
/// m[c]) + bias[c]`, rounded after the product and after the sum, as the cpu target
/// computes them.
fn int8_outputs(mut sums: Tensor, scales: &[f32], bias: Option<&Tensor>, inner: usize) -> Tensor {
    let channels = scales.len();
    for (i, v) in sums.data.iter_mut().enumerate() {
        let c = (i / inner) % channels;
        let product = *v * scales[c];
        *v = product + bias.map_or(0.0, |b| b.data[c]);
    }
    sums
}

/// Computes one node's op from its operands' values, into `out_shape` (the op's own
/// output shape; the epilogue comes after).
fn eval_node(
    node: &Node,
    operands: &[&Tensor],
    weights: &Weights,
    out_shape: Vec<usize>,
) -> Result<Tensor, InterpError> {
    let x = operands[0];
    let out = match &node.op {
        Op::Input { .. } => unreachable!("inputs are handled by run_traced"),
        Op::Conv(conv) => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            let (weight, bias) = (params.require(ParamRole::Weight)?, params.get(ParamRole::Bias));
            if let Precision::Int8(input) = node.precision {
                let (x, weight, scales) = int8_operands(node, input, x, weight)?;
                let inner = out_shape[2] * out_shape[3];
                let sums = conv2d(conv, &x, &weight, None, out_shape);
                return Ok(int8_outputs(sums, &scales, bias, inner));
            }
            let (x, weight) = at_precision(node.precision, x, weight);
            conv2d(conv, &x, &weight, bias, out_shape)
        }
        Op::Linear { .. } => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            let (weight, bias) = (params.require(ParamRole::Weight)?, params.get(ParamRole::Bias));
            if let Precision::Int8(input) = node.precision {
                let (x, weight, scales) = int8_operands(node, input, x, weight)?;
                let sums = linear(&x, &weight, None, out_shape);
                return Ok(int8_outputs(sums, &scales, bias, 1));
            }
            let (x, weight) = at_precision(node.precision, x, weight);
            linear(&x, &weight, bias, out_shape)
        }
        Op::BatchNorm { eps } => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            batch_norm(
                x,
                params.require(ParamRole::Weight)?,
                params.require(ParamRole::Bias)?,
                params.require(ParamRole::RunningMean)?,
                params.require(ParamRole::RunningVar)?,
                *eps,
            )
        }
        // NaN passes through relu, as in PyTorch.
        Op::Activation(activation) => map(x, |v| activate(*activation, v)),
        Op::Softmax => softmax_dim1(x),
        // 1-D pooling on [N, C, L] is the 2-D pooling of [N, C, 1, L].
        Op::MaxPool(pool) | Op::AvgPool(pool) if x.shape.len() == 3 => {
            let flat = Tensor { shape: crate::ir::shape::as_4d(&x.shape), data: x.data.clone() };
            let pooled = if matches!(node.op, Op::MaxPool(_)) {
                max_pool(pool, &flat, crate::ir::shape::as_4d(&out_shape))
            } else {
                avg_pool(pool, &flat, crate::ir::shape::as_4d(&out_shape))
            };
            Tensor { shape: out_shape, data: pooled.data }
        }
        Op::MaxPool(pool) => max_pool(pool, x, out_shape),
        Op::AvgPool(pool) => avg_pool(pool, x, out_shape),
        Op::GlobalAvgPool => adaptive_avg_pool(x, out_shape),
        Op::GlobalMaxPool => global_max_pool(x),
        Op::AdaptiveAvgPool { .. } => adaptive_avg_pool(x, out_shape),
        // Dropout and stochastic depth are the identity at inference.
        Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } => x.clone(),
        // Row-major data is already in C, H, W order.
        Op::Flatten | Op::Reshape { .. } => Tensor { shape: out_shape, data: x.data.clone() },
        Op::Identity => x.clone(),
        Op::Mean { dims, .. } => mean(x, dims, out_shape),
        Op::Add => broadcast_fold(operands, out_shape, |acc, v| acc + v),
        Op::Mul => broadcast_fold(operands, out_shape, |acc, v| acc * v),
        Op::Concat => concat_dim1(operands, out_shape),
        Op::Lrn { size, alpha, beta, k } => lrn(x, *size, *alpha, *beta, *k),
        Op::ScaleShift => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            scale_shift(x, params.require(ParamRole::Scale)?, params.require(ParamRole::Shift)?)
        }
        Op::Slice { start, len } => slice_dim1(x, *start, *len, out_shape),
        Op::ChannelShuffle { groups } => channel_shuffle(x, *groups),
        Op::Permute { perm } => permute(x, perm, out_shape),
        Op::LayerNorm { eps, axis } => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            layer_norm(x, params.require(ParamRole::Weight)?, params.require(ParamRole::Bias)?, *eps, *axis)
        }
        // Over the last `dims` dimensions: the layer norm of `[outer, count]`.
        Op::LayerNormLast { eps, dims } => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            let split = x.shape.len() - dims;
            let count: usize = x.shape[split..].iter().product();
            let flat = |t: &Tensor, shape: Vec<usize>| Tensor { shape, data: t.data.clone() };
            let rows = flat(x, vec![x.shape[..split].iter().product(), count]);
            let (weight, bias) = (params.require(ParamRole::Weight)?, params.require(ParamRole::Bias)?);
            let y = layer_norm(&rows, &flat(weight, vec![count]), &flat(bias, vec![count]), *eps, 1);
            flat(&y, x.shape.clone())
        }
        Op::Scale => {
            let params = NodeParams::load(node, &x.shape, weights)?;
            let scale = params.require(ParamRole::Parameter)?;
            let channels = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let mut out = x.clone();
            for (i, v) in out.data.iter_mut().enumerate() {
                *v *= scale.data[(i / inner) % channels];
            }
            out
        }
    };
    Ok(out)
}

/// The value of an activation, computed as the standalone op computes it: in f64 by
/// PyTorch's formulas, rounded once to f32. NaN passes through every activation (as in
/// PyTorch: relu and the clamps compare, they do not take a maximum).
fn activate(activation: Activation, v: f32) -> f32 {
    let x = v as f64;
    let y = match activation {
        Activation::Relu => return if v < 0.0 { 0.0 } else { v },
        Activation::LeakyRelu { slope } => return if v < 0.0 { (x * slope) as f32 } else { v },
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Clamp { min, max } => clamp(x, min, max),
        // `-inf * 0` is NaN for hardswish(-inf) and gelu(-inf), as in PyTorch.
        Activation::HardSwish => x * clamp(x + 3.0, 0.0, 6.0) / 6.0,
        Activation::HardSigmoid => clamp(x + 3.0, 0.0, 6.0) / 6.0,
        Activation::HardSigmoidAffine { alpha, beta } => clamp(alpha * x + beta, 0.0, 1.0),
        Activation::Erf => libm::erf(x),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu { tanh: false } => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
        Activation::Gelu { tanh: true } => {
            // PyTorch's constants: sqrt(2 / pi) and 0.044715.
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        }
    };
    y as f32
}

/// The mean over `dims` (in f64, rounded once), the output in row-major order over the
/// kept dimensions.
fn mean(x: &Tensor, dims: &[usize], out_shape: Vec<usize>) -> Tensor {
    let shape = &x.shape;
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    // Offsets of the positions along `axes`, row-major.
    let strides = &strides;
    let offsets = |axes: &[usize]| -> Vec<usize> {
        axes.iter().fold(vec![0], |offsets, &a| {
            let (size, stride) = (shape[a], strides[a]);
            offsets.iter().flat_map(|&o| (0..size).map(move |i| o + i * stride)).collect()
        })
    };
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    let reduced = offsets(dims);
    let count = reduced.len() as f64;
    let data = offsets(&kept)
        .iter()
        .map(|&base| (reduced.iter().map(|&r| x.data[base + r] as f64).sum::<f64>() / count) as f32)
        .collect();
    Tensor { shape: out_shape, data }
}

/// `x` limited to `[min, max]`; NaN stays NaN.
fn clamp(x: f64, min: f64, max: f64) -> f64 {
    if x < min {
        min
    } else if x > max {
        max
    } else {
        x
    }
}

/// Applies a fused epilogue exactly as the unfused ops would: activation, then the
/// residual add (in f32, as `add` of two operands), then the post-activation, then the
/// pooling (by the pooling ops' own functions, over the whole activated tensor).
fn apply_epilogue(epilogue: &Epilogue, value: &mut Tensor, residual: Option<&Tensor>) -> Result<(), InterpError> {
    if let Some(activation) = epilogue.activation {
        value.data.iter_mut().for_each(|v| *v = activate(activation, *v));
    }
    if let Some(residual) = residual {
        if residual.shape != value.shape {
            return Err(InterpError(format!(
                "residual {} does not match the output {}",
                residual.shape_string(),
                value.shape_string()
            )));
        }
        value.data.iter_mut().zip(&residual.data).for_each(|(v, r)| *v = (*v as f64 + *r as f64) as f32);
    }
    if let Some(activation) = epilogue.post_activation {
        value.data.iter_mut().for_each(|v| *v = activate(activation, *v));
    }
    if let Some(pool) = &epilogue.pool {
        let pooled_shape = shape::infer(&pool.op(), &[&value.shape]).map_err(|e| InterpError(e.message))?;
        *value = match pool.kind {
            PoolKind::Max => max_pool(&pool.window, value, pooled_shape),
            PoolKind::Avg => avg_pool(&pool.window, value, pooled_shape),
        };
    }
    Ok(())
}

/// Per-channel `x * scale + shift` over dimension 1, in f64.
fn scale_shift(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Tensor {
    let channels = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        let c = (i / inner) % channels;
        *v = (*v as f64 * scale.data[c] as f64 + shift.data[c] as f64) as f32;
    }
    out
}

/// Channels `start .. start + len` of dimension 1 (`torch.chunk`/`torch.split`'s parts).
fn slice_dim1(x: &Tensor, start: usize, len: usize, out_shape: Vec<usize>) -> Tensor {
    let (channels, inner) = (x.shape[1], x.shape[2..].iter().product::<usize>());
    let mut data = Vec::with_capacity(out_shape.iter().product());
    for n in 0..x.shape[0] {
        data.extend_from_slice(&x.data[(n * channels + start) * inner..][..len * inner]);
    }
    Tensor { shape: out_shape, data }
}

/// torchvision's `channel_shuffle`: `view(N, g, C/g, H, W)`, `transpose(1, 2)`,
/// `view(N, C, H, W)`; output channel `i * g + j` is input channel `j * (C/g) + i`.
fn channel_shuffle(x: &Tensor, groups: usize) -> Tensor {
    let (channels, inner) = (x.shape[1], x.shape[2..].iter().product::<usize>());
    let per_group = channels / groups;
    let mut data = Vec::with_capacity(x.data.len());
    for n in 0..x.shape[0] {
        for i in 0..per_group {
            for j in 0..groups {
                let c = j * per_group + i;
                data.extend_from_slice(&x.data[(n * channels + c) * inner..][..inner]);
            }
        }
    }
    Tensor { shape: x.shape.clone(), data }
}

/// `torch.permute`: `out[i_0, ..., i_r] = x[j]` with `j[perm[d]] = i_d`.
fn permute(x: &Tensor, perm: &[usize], out_shape: Vec<usize>) -> Tensor {
    let rank = x.shape.len();
    let mut in_strides = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * x.shape[d + 1];
    }
    // The input stride of each output dimension.
    let strides: Vec<usize> = perm.iter().map(|&d| in_strides[d]).collect();
    let total: usize = out_shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut index = vec![0usize; rank];
    for _ in 0..total {
        data.push(x.data[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Tensor { shape: out_shape, data }
}

/// Layer normalization over dimension `axis` alone, for every index of the others:
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, the variance biased (divided by
/// the count), as `nn.LayerNorm` over the last dimension and torchvision's `LayerNorm2d`
/// over dimension 1. Mean and variance in f64.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, axis: usize) -> Tensor {
    let outer: usize = x.shape[..axis].iter().product();
    let count = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut out = Tensor::zeros(x.shape.clone());
    for o in 0..outer {
        for s in 0..inner {
            let index = |c: usize| (o * count + c) * inner + s;
            let mean = (0..count).map(|c| x.data[index(c)] as f64).sum::<f64>() / count as f64;
            let var = (0..count).map(|c| (x.data[index(c)] as f64 - mean).powi(2)).sum::<f64>() / count as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for c in 0..count {
                let normalized = (x.data[index(c)] as f64 - mean) * inv;
                out.data[index(c)] = (normalized * weight.data[c] as f64 + bias.data[c] as f64) as f32;
            }
        }
    }
    out
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor { shape: x.shape.clone(), data: x.data.iter().map(|v| f(*v)).collect() }
}

/// The number of worker threads for the parallel ops.
fn thread_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Fills `out`, viewed as consecutive units of `unit_len` values, by calling
/// `fill(unit_index, unit)` for every unit; contiguous runs of units go to separate
/// threads. Each unit is written by exactly one call, so the result does not depend on
/// the thread count.
fn fill_units_in_parallel(out: &mut [f32], unit_len: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
    if unit_len == 0 || out.is_empty() {
        return;
    }
    let unit_count = out.len() / unit_len;
    let threads = thread_count().min(unit_count).max(1);
    let units_per_thread = unit_count.div_ceil(threads);
    let fill = &fill;
    std::thread::scope(|scope| {
        for (chunk_index, chunk) in out.chunks_mut(units_per_thread * unit_len).enumerate() {
            scope.spawn(move || {
                for (i, unit) in chunk.chunks_mut(unit_len).enumerate() {
                    fill(chunk_index * units_per_thread + i, unit);
                }
            });
        }
    });
}

/// 2-D convolution (cross-correlation, as PyTorch): input `[N, C, H, W]`, weight
/// `[O, C/groups, KH, KW]`, optional bias `[O]`, output `[N, O, OH, OW]` from the node.
///
/// `out[n, o, oh, ow] = bias[o] + sum over c, kh, kw of
///   w[o, c, kh, kw] * x[n, g*C/groups + c, oh*sh + kh*dh - top, ow*sw + kw*dw - left]`
/// where `g = o / (O/groups)` and taps outside the input read zero (the padding).
///
/// The input is first copied, as f64, into a zero-padded buffer, so every tap is in
/// bounds: the output size formula `(H + top + bottom - d(k-1) - 1)/s + 1` guarantees
/// that the last tap of the last window, `(OH-1)*sh + (KH-1)*dh`, is inside the padded
/// height (likewise for the width).
///
/// Loop order: for each (n, o) output plane (split over threads), each output row, each
/// input channel of the group and each kernel row, one f64 accumulator row is updated
/// across the whole output row by all the kernel row's taps.
fn conv2d(conv: &Conv, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out_shape: Vec<usize>) -> Tensor {
    let (n_batch, in_c, in_h, in_w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (out_c, out_h, out_w) = (out_shape[1], out_shape[2], out_shape[3]);
    let (kernel_h, kernel_w) = (conv.kernel.h, conv.kernel.w);
    let in_per_group = in_c / conv.groups;
    let out_per_group = out_c / conv.groups;

    // The zero-padded input in f64: [N, C, top + H + bottom, left + W + right].
    let (padded_h, padded_w) = (conv.pad.top + in_h + conv.pad.bottom, conv.pad.left + in_w + conv.pad.right);
    let mut padded = vec![0.0f64; n_batch * in_c * padded_h * padded_w];
    for plane in 0..n_batch * in_c {
        for ih in 0..in_h {
            let src = &x.data[(plane * in_h + ih) * in_w..][..in_w];
            let dst = &mut padded[(plane * padded_h + conv.pad.top + ih) * padded_w + conv.pad.left..][..in_w];
            for (d, v) in dst.iter_mut().zip(src) {
                *d = *v as f64;
            }
        }
    }
    let w64: Vec<f64> = weight.data.iter().map(|v| *v as f64).collect();
    let bias64: Vec<f64> = match bias {
        Some(b) => b.data.iter().map(|v| *v as f64).collect(),
        None => vec![0.0; out_c],
    };

    let mut out = Tensor::zeros(out_shape);
    fill_units_in_parallel(&mut out.data, out_h * out_w, |plane_index, out_plane| {
        let (n, o) = (plane_index / out_c, plane_index % out_c);
        let group = o / out_per_group;
        let mut acc_row = vec![0.0f64; out_w];
        for oh in 0..out_h {
            acc_row.fill(bias64[o]);
            for c in 0..in_per_group {
                let in_plane_index = n * in_c + group * in_per_group + c;
                for kh in 0..kernel_h {
                    let ih = oh * conv.stride.h + kh * conv.dilation.h;
                    let in_row = &padded[(in_plane_index * padded_h + ih) * padded_w..][..padded_w];
                    let taps = &w64[((o * in_per_group + c) * kernel_h + kh) * kernel_w..][..kernel_w];
                    add_kernel_row(&mut acc_row, in_row, taps, conv.stride.w, conv.dilation.w);
                }
            }
            for (dst, a) in out_plane[oh * out_w..][..out_w].iter_mut().zip(&acc_row) {
                *dst = *a as f32;
            }
        }
    });
    out
}

/// One kernel row's contribution to one output row:
/// `acc[ow] += sum over kw of taps[kw] * in_row[ow*stride + kw*dilation]`.
///
/// The common 1-, 3-, 5- and 7-tap rows at stride 1 go through [`add_taps_stride1`],
/// the same sum written so that the compiler vectorizes it; everything else takes the
/// plain loop.
fn add_kernel_row(acc: &mut [f64], in_row: &[f64], taps: &[f64], stride: usize, dilation: usize) {
    match (stride, taps.len()) {
        (1, 1) => add_taps_stride1::<1>(acc, in_row, taps, dilation),
        (1, 3) => add_taps_stride1::<3>(acc, in_row, taps, dilation),
        (1, 5) => add_taps_stride1::<5>(acc, in_row, taps, dilation),
        (1, 7) => add_taps_stride1::<7>(acc, in_row, taps, dilation),
        _ => {
            for (ow, a) in acc.iter_mut().enumerate() {
                for (kw, w) in taps.iter().enumerate() {
                    *a += w * in_row[ow * stride + kw * dilation];
                }
            }
        }
    }
}

/// `acc[ow] += sum over t of taps[t] * in_row[ow + t*dilation]` for a kernel row of
/// `TAPS` taps at stride 1. Each accumulator is loaded and stored once per kernel row.
fn add_taps_stride1<const TAPS: usize>(acc: &mut [f64], in_row: &[f64], taps: &[f64], dilation: usize) {
    let n = acc.len();
    // The input seen by each tap, each exactly as long as the output row.
    let tap_inputs: [&[f64]; TAPS] = std::array::from_fn(|t| &in_row[t * dilation..][..n]);
    let taps: [f64; TAPS] = std::array::from_fn(|t| taps[t]);
    for (ow, a) in acc.iter_mut().enumerate() {
        let mut sum = *a;
        for t in 0..TAPS {
            sum += taps[t] * tap_inputs[t][ow];
        }
        *a = sum;
    }
}

/// Fully connected layer: `y[n, o] = bias[o] + sum over f of w[o, f] * x[n, f]`.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, out_shape: Vec<usize>) -> Tensor {
    // Every dimension but the last indexes rows, as nn.Linear.
    let in_features = *x.shape.last().expect("linear's operand has rank 2 or more");
    let out_features = *out_shape.last().expect("same rank as the operand");
    let mut out = Tensor::zeros(out_shape);
    fill_units_in_parallel(&mut out.data, 1, |index, y| {
        let (n, o) = (index / out_features, index % out_features);
        let x_row = &x.data[n * in_features..][..in_features];
        let w_row = &weight.data[o * in_features..][..in_features];
        let mut sum = bias.map_or(0.0, |b| b.data[o] as f64);
        for (w, v) in w_row.iter().zip(x_row) {
            sum += *w as f64 * *v as f64;
        }
        y[0] = sum as f32;
    });
    out
}

/// Batch norm with running statistics, per channel (dimension 1) of a `[N, C, H, W]` or
/// `[N, F]` tensor: `y = (x - mean) / sqrt(var + eps) * weight + bias`.
fn batch_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Tensor {
    let channels = x.shape[1];
    let spatial: usize = x.shape[2..].iter().product();
    let mut out = Tensor::zeros(x.shape.clone());
    for (index, (y, v)) in out.data.iter_mut().zip(&x.data).enumerate() {
        let c = (index / spatial) % channels;
        let normalized = (*v as f64 - mean.data[c] as f64) / (var.data[c] as f64 + eps).sqrt();
        *y = (normalized * weight.data[c] as f64 + bias.data[c] as f64) as f32;
    }
    out
}

/// Softmax over dimension 1, independently for every other index (for `[N, C, H, W]`,
/// per (n, h, w)). The maximum is subtracted before exponentiating.
fn softmax_dim1(x: &Tensor) -> Tensor {
    let (n_batch, channels) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let mut out = Tensor::zeros(x.shape.clone());
    for n in 0..n_batch {
        for s in 0..inner {
            let index = |c: usize| (n * channels + c) * inner + s;
            let max = (0..channels).map(|c| x.data[index(c)] as f64).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..channels).map(|c| (x.data[index(c)] as f64 - max).exp()).sum();
            for c in 0..channels {
                out.data[index(c)] = ((x.data[index(c)] as f64 - max).exp() / sum) as f32;
            }
        }
    }
    out
}

/// One pooling window along one dimension: the window as placed on the padded input
/// (`start` may be negative), clipped PyTorch's way.
struct Window {
    /// `min(start + kernel, in_len + pad_after) - start`: the window clipped to the padded
    /// input; PyTorch's divisor for `count_include_pad`.
    padded_len: usize,
    /// The real input positions inside the window.
    real: std::ops::Range<usize>,
}

fn window(
    out_index: usize,
    kernel: usize,
    stride: usize,
    pad_before: usize,
    pad_after: usize,
    in_len: usize,
) -> Window {
    let start = (out_index * stride) as isize - pad_before as isize;
    let end = (start + kernel as isize).min((in_len + pad_after) as isize);
    let real_start = start.max(0) as usize;
    let real_end = (end.min(in_len as isize).max(0) as usize).max(real_start);
    Window { padded_len: (end - start).max(0) as usize, real: real_start..real_end }
}

/// The real input positions of window `out_index`'s taps along one dimension: `kernel`
/// taps `dilation` apart from `out_index * stride - pad_before`.
fn taps(
    out_index: usize,
    (kernel, stride, dilation): (usize, usize, usize),
    pad_before: usize,
    in_len: usize,
) -> impl Iterator<Item = usize> + Clone {
    let start = (out_index * stride) as isize - pad_before as isize;
    (0..kernel as isize)
        .map(move |i| start + i * dilation as isize)
        .filter_map(move |p| if p >= 0 && (p as usize) < in_len { Some(p as usize) } else { None })
}

/// Max pooling; padded positions are -inf, so only real positions compete. NaN wins,
/// as in PyTorch. With `dilation`, the window's taps are `dilation` apart.
fn max_pool(pool: &Pool, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (in_h, in_w) = (x.shape[2], x.shape[3]);
    let (out_h, out_w) = (out_shape[2], out_shape[3]);
    let mut out = Tensor::zeros(out_shape);
    for plane_index in 0..x.shape[0] * x.shape[1] {
        let in_plane = &x.data[plane_index * in_h * in_w..][..in_h * in_w];
        let out_plane = &mut out.data[plane_index * out_h * out_w..][..out_h * out_w];
        for oh in 0..out_h {
            let rows = taps(oh, (pool.kernel.h, pool.stride.h, pool.dilation.h), pool.pad.top, in_h);
            for ow in 0..out_w {
                let cols = taps(ow, (pool.kernel.w, pool.stride.w, pool.dilation.w), pool.pad.left, in_w);
                let mut best = f32::NEG_INFINITY;
                for ih in rows.clone() {
                    for iw in cols.clone() {
                        let v = in_plane[ih * in_w + iw];
                        if v > best || v.is_nan() {
                            best = v;
                        }
                    }
                }
                out_plane[oh * out_w + ow] = best;
            }
        }
    }
    out
}

/// Average pooling as PyTorch's `avg_pool2d`: the sum over the real positions of the
/// window, divided by the number of real positions (`count_pad=false`) or by the window
/// clipped to the padded input (`count_pad=true`; with `ceil=true` a last window that
/// runs past the padding is smaller than the kernel). A dilated pool (ONNX's
/// `AveragePool` `dilations`) averages its taps `dilation` apart the same way: the real
/// taps, divided by their number or by the number of taps inside the padded input.
fn avg_pool(pool: &Pool, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    if pool.dilation != crate::ir::Hw::square(1) {
        return dilated_avg_pool(pool, x, out_shape);
    }
    let (in_h, in_w) = (x.shape[2], x.shape[3]);
    let (out_h, out_w) = (out_shape[2], out_shape[3]);
    let mut out = Tensor::zeros(out_shape);
    for plane_index in 0..x.shape[0] * x.shape[1] {
        let in_plane = &x.data[plane_index * in_h * in_w..][..in_h * in_w];
        let out_plane = &mut out.data[plane_index * out_h * out_w..][..out_h * out_w];
        for oh in 0..out_h {
            let rows = window(oh, pool.kernel.h, pool.stride.h, pool.pad.top, pool.pad.bottom, in_h);
            for ow in 0..out_w {
                let cols = window(ow, pool.kernel.w, pool.stride.w, pool.pad.left, pool.pad.right, in_w);
                let mut sum = 0.0f64;
                for ih in rows.real.clone() {
                    for iw in cols.real.clone() {
                        sum += in_plane[ih * in_w + iw] as f64;
                    }
                }
                let divisor =
                    if pool.count_pad { rows.padded_len * cols.padded_len } else { rows.real.len() * cols.real.len() };
                out_plane[oh * out_w + ow] = (sum / divisor as f64) as f32;
            }
        }
    }
    out
}

/// [`avg_pool`] with taps `dilation` apart.
fn dilated_avg_pool(pool: &Pool, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (in_h, in_w) = (x.shape[2], x.shape[3]);
    let (out_h, out_w) = (out_shape[2], out_shape[3]);
    // Taps inside the padded input count when `count_pad`; `taps` on the padded extent
    // gives them (shifted by the padding before).
    let padded_count = |o: usize, (k, s, d): (usize, usize, usize), before: usize, after: usize, len: usize| {
        taps(o, (k, s, d), 0, before + len + after).count()
    };
    let mut out = Tensor::zeros(out_shape);
    for plane_index in 0..x.shape[0] * x.shape[1] {
        let in_plane = &x.data[plane_index * in_h * in_w..][..in_h * in_w];
        let out_plane = &mut out.data[plane_index * out_h * out_w..][..out_h * out_w];
        let window_h = (pool.kernel.h, pool.stride.h, pool.dilation.h);
        let window_w = (pool.kernel.w, pool.stride.w, pool.dilation.w);
        for oh in 0..out_h {
            let rows = taps(oh, window_h, pool.pad.top, in_h);
            for ow in 0..out_w {
                let cols = taps(ow, window_w, pool.pad.left, in_w);
                let mut sum = 0.0f64;
                for ih in rows.clone() {
                    for iw in cols.clone() {
                        sum += in_plane[ih * in_w + iw] as f64;
                    }
                }
                let divisor = if pool.count_pad {
                    padded_count(oh, window_h, pool.pad.top, pool.pad.bottom, in_h)
                        * padded_count(ow, window_w, pool.pad.left, pool.pad.right, in_w)
                } else {
                    rows.clone().count() * cols.clone().count()
                };
                out_plane[oh * out_w + ow] = (sum / divisor as f64) as f32;
            }
        }
    }
    out
}

/// Adaptive average pooling with PyTorch's bins: output `i` of `out` along a dimension
/// of length `len` averages `floor(i*len/out) .. ceil((i+1)*len/out)`. Global average
/// pooling is the case `out = 1`.
fn adaptive_avg_pool(x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (in_h, in_w) = (x.shape[2], x.shape[3]);
    let (out_h, out_w) = (out_shape[2], out_shape[3]);
    let bin = |i: usize, len: usize, out: usize| (i * len / out)..((i + 1) * len).div_ceil(out);
    let mut out = Tensor::zeros(out_shape);
    for plane_index in 0..x.shape[0] * x.shape[1] {
        let in_plane = &x.data[plane_index * in_h * in_w..][..in_h * in_w];
        let out_plane = &mut out.data[plane_index * out_h * out_w..][..out_h * out_w];
        for oh in 0..out_h {
            let rows = bin(oh, in_h, out_h);
            for ow in 0..out_w {
                let cols = bin(ow, in_w, out_w);
                let mut sum = 0.0f64;
                for ih in rows.clone() {
                    for iw in cols.clone() {
                        sum += in_plane[ih * in_w + iw] as f64;
                    }
                }
                out_plane[oh * out_w + ow] = (sum / (rows.len() * cols.len()) as f64) as f32;
            }
        }
    }
    out
}

/// The maximum of every `[H, W]` plane (NaN wins), giving `[N, C, 1, 1]`.
fn global_max_pool(x: &Tensor) -> Tensor {
    let plane_len = x.shape[2] * x.shape[3];
    let data = (0..x.shape[0] * x.shape[1])
        .map(|plane_index| {
            let plane = &x.data[plane_index * plane_len..][..plane_len];
            plane.iter().fold(f32::NEG_INFINITY, |best, v| if *v > best || v.is_nan() { *v } else { best })
        })
        .collect();
    Tensor { shape: vec![x.shape[0], x.shape[1], 1, 1], data }
}

/// Combines operands elementwise left to right with `combine` (in f64, rounded to f32
/// once; for two operands this equals the f32 operation), broadcasting: an operand
/// dimension of size 1 repeats along the output's.
fn broadcast_fold(operands: &[&Tensor], out_shape: Vec<usize>, combine: fn(f64, f64) -> f64) -> Tensor {
    let rank = out_shape.len();
    // Each operand's strides in the output's index space; 0 along a broadcast dimension.
    let strides: Vec<Vec<usize>> = operands
        .iter()
        .map(|t| {
            let mut strides = vec![0; rank];
            let mut step = 1;
            for d in (0..rank).rev() {
                strides[d] = if t.shape[d] == 1 { 0 } else { step };
                step *= t.shape[d];
            }
            strides
        })
        .collect();
    let mut out = Tensor::zeros(out_shape.clone());
    let mut index = vec![0usize; rank];
    for y in out.data.iter_mut() {
        let value_of = |operand: usize| {
            let offset: usize = index.iter().zip(&strides[operand]).map(|(i, s)| i * s).sum();
            operands[operand].data[offset] as f64
        };
        let acc = (1..operands.len()).fold(value_of(0), |acc, operand| combine(acc, value_of(operand)));
        *y = acc as f32;
        // Advance the row-major multi-index.
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Concatenation along dimension 1: for each batch index, the operands' blocks in order.
fn concat_dim1(operands: &[&Tensor], out_shape: Vec<usize>) -> Tensor {
    let n_batch = out_shape[0];
    let mut data = Vec::with_capacity(shape::checked_elements(&out_shape).unwrap_or(0));
    for n in 0..n_batch {
        for t in operands {
            let block = t.data.len() / n_batch;
            data.extend_from_slice(&t.data[n * block..(n + 1) * block]);
        }
    }
    Tensor { shape: out_shape, data }
}

/// Local response normalization exactly as PyTorch's `LocalResponseNorm`: the squares
/// are zero-padded by `size/2` channels before and `(size-1)/2` after, averaged over
/// `size` channels (padding included), and `b = a / (k + alpha * average)^beta`. For
/// channel `c` the window is `c - size/2 ..= c + (size-1)/2`.
fn lrn(x: &Tensor, size: usize, alpha: f64, beta: f64, k: f64) -> Tensor {
    let channels = x.shape[1];
    let spatial: usize = x.shape[2..].iter().product();
    let mut out = Tensor::zeros(x.shape.clone());
    for (index, y) in out.data.iter_mut().enumerate() {
        let c = (index / spatial) % channels;
        let plane_start = index - c * spatial; // the (n, 0, h, w) position
        let first = c.saturating_sub(size / 2);
        let last = (c + (size - 1) / 2).min(channels - 1);
        let sum_of_squares: f64 = (first..=last)
            .map(|j| {
                let v = x.data[plane_start + j * spatial] as f64;
                v * v
            })
            .sum();
        let a = x.data[index] as f64;
        *y = (a / (k + alpha * sum_of_squares / size as f64).powf(beta)) as f32;
    }
    out
}
