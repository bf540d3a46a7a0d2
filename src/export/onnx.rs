//! Export to ONNX: an opset-17 `ModelProto` (IR version 8) that computes what the graph
//! computes, with static shapes (batch included) and the weights as initializers named by
//! their `state_dict` names.
//!
//! Naming: graph inputs are named after the `input` declarations, graph outputs after
//! [`Graph::outputs`], and each IR node's ONNX node (or the first node of its
//! decomposition) after the IR node. With `intermediates`, every non-input node's value is
//! also a graph output named after the node, so a comparison can find the first layer
//! that diverges.
//!
//! Op mapping, chosen so that ONNX Runtime computes exactly the language's semantics:
//!
//! | IR op | ONNX |
//! | --- | --- |
//! | `conv` | `Conv` (`pads` = top, left, bottom, right) |
//! | `linear` | `Gemm` with `transB = 1` on `[N, F]`; on higher ranks (the last dimension) `MatMul` by the `Transpose`d weight, then `Add` of the bias |
//! | `batch_norm` | `BatchNormalization` (on `[N, C, H, W]` and `[N, F]`) |
//! | `relu`, `leaky_relu`, `sigmoid`, `tanh`, `erf` | `Relu`, `LeakyRelu`, `Sigmoid`, `Tanh`, `Erf` |
//! | `hardsigmoid(alpha=, beta=)` | `HardSigmoid(alpha, beta)` (the plain `hardsigmoid` as PyTorch's `relu6(x + 3) / 6`, see below) |
//! | `softmax` | `Softmax(axis = 1)` |
//! | `max_pool`, `avg_pool` | `MaxPool`, `AveragePool` (one spatial axis on `[N, C, L]`; `pads` = top, left, bottom, right; `ceil_mode`, `count_include_pad`, `dilations`: a model with a dilated `avg_pool` imports opset 19, where `AveragePool` has them) |
//! | `global_avg_pool`, `global_max_pool` | `GlobalAveragePool`, `GlobalMaxPool` |
//! | `adaptive_avg_pool` | `Identity` when the size is already right; `AveragePool` when the input divides evenly; otherwise per axis one `Slice` + `ReduceMean` per bin (PyTorch's edges `floor(i*In/Out)..ceil((i+1)*In/Out)`) and a `Concat` |
//! | `dropout`, `dropout2d`, `identity` | `Identity` |
//! | `flatten` | `Flatten(axis = 1)` |
//! | `reshape` | `Reshape` to the output's shape, batch included |
//! | `mean` | `ReduceMean` (`axes` an attribute at opset 17, `keepdims`) |
//! | `add`, `mul` | a chain of `Add` / `Mul` (numpy broadcasting covers the language's) |
//! | `concat` | `Concat(axis = 1)` |
//! | `lrn` | PyTorch's `LocalResponseNorm` decomposition (ONNX's `LRN` centres even windows differently) |
//! | `slice` (a part of `chunk`/`split`) | `Slice` on axis 1 |
//! | `channel_shuffle` | `Reshape` to `[N, g, C/g, H, W]`, `Transpose(0, 2, 1, 3, 4)`, `Reshape` back |
//! | `permute` | `Transpose` |
//! | `layer_norm(dims=k)` | `LayerNormalization(axis = rank - k)` |
//! | `layer_norm` | `LayerNormalization(axis = -1)`; over another dimension (`layer_norm2d`), between two `Transpose`s that move it last and back |
//! | `scale` | `Mul` by the `[C, 1, 1]` parameter (broadcast) |

use std::collections::{HashMap, HashSet};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, type_proto,
};

use crate::ir::{Activation, Graph, Hw, NodeId, Op, Pad, Pool};
use crate::weights::Weights;

/// The ONNX opset the exported models import.
pub const OPSET: i64 = 17;
/// The ONNX IR version of the exported models (the one that goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// The opset (and IR version) of a model with a dilated `avg_pool`: `AveragePool` has
/// `dilations` from opset 19 on. The other ops the exporter writes mean the same there.
pub const DILATED_AVERAGE_OPSET: (i64, i64) = (19, 9);

/// A protobuf message may not exceed 2 GiB; leave room for everything but the weights.
const MAX_MODEL_BYTES: usize = (1 << 31) - (64 << 20);

/// Serializes `graph` with `weights` as an ONNX model. With `intermediates`, every
/// non-input node's value is also a graph output named after the node.
///
/// Errors: a missing or mis-shaped weight, a cyclic graph, clashing input/output names,
/// or a model over protobuf's 2 GiB limit.
pub fn to_onnx(graph: &Graph, weights: &Weights, intermediates: bool) -> Result<Vec<u8>, String> {
    let model = to_model(graph, weights, intermediates)?;
    model.write_to_bytes().map_err(|e| format!("cannot serialize the ONNX model: {e}"))
}

/// Builds the `ModelProto` [`to_onnx`] serializes.
pub fn to_model(graph: &Graph, weights: &Weights, intermediates: bool) -> Result<ModelProto, String> {
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    // The exporter speaks the language's ops: it takes the graph as elaborated (the
    // oracle should not inherit cnnc's rewrites), not after fusion.
    if let Some(&id) = order.iter().find(|&&id| {
        let node = graph.node(id);
        !node.epilogue.is_empty() || matches!(node.op, Op::ScaleShift)
    }) {
        return Err(format!(
            "layer `{}` is a fused kernel; export the network before optimization (-O0)",
            graph.node(id).name
        ));
    }
    let mut b = Builder::default();

    // Names fixed by the contract come first: weights, inputs, outputs.
    let mut weight_bytes = 0usize;
    for &id in &order {
        let node = graph.node(id);
        for param in &node.params {
            let tensor = weights
                .get(&param.name)
                .ok_or_else(|| format!("weight `{}` of layer `{}` is missing", param.name, node.name))?;
            if tensor.shape != param.shape {
                return Err(format!(
                    "weight `{}` of layer `{}` has shape {}, expected {}",
                    param.name,
                    node.name,
                    tensor.shape_string(),
                    crate::ir::shape::fmt_shape(&param.shape)
                ));
            }
            if !b.taken.insert(param.name.clone()) {
                return Err(format!("weight `{}` is read by two layers", param.name));
            }
            weight_bytes += tensor.data.len() * 4;
            if weight_bytes > MAX_MODEL_BYTES {
                return Err(format!(
                    "the weights exceed {} MiB, more than one ONNX (protobuf) file may hold",
                    MAX_MODEL_BYTES >> 20
                ));
            }
            b.initializers.push(float_tensor(&param.name, &tensor.shape, &tensor.data));
        }
    }
    let mut input_infos = Vec::new();
    for &id in &graph.inputs {
        let node = graph.node(id);
        let Op::Input { name } = &node.op else {
            return Err(format!("graph input `{}` is not an input node", node.name));
        };
        if !b.taken.insert(name.clone()) {
            return Err(format!("input name `{name}` clashes with a weight or another input"));
        }
        input_infos.push(value_info(name, &node.shape));
    }
    let mut output_names = HashSet::new();
    for output in &graph.outputs {
        if !graph.contains(output.node) {
            return Err(format!("output `{}` names a node that does not exist", output.name));
        }
        if !output_names.insert(output.name.clone()) {
            return Err(format!("two outputs are named `{}`", output.name));
        }
        let is_own_input = matches!(&graph.node(output.node).op, Op::Input { name } if *name == output.name);
        if !is_own_input && !b.taken.insert(output.name.clone()) {
            return Err(format!("output name `{}` clashes with a weight or an input", output.name));
        }
    }

    // The value each IR node produces: the node's own name where it is free (or is the
    // name of an output of this very node), a fresh one otherwise.
    let mut values: HashMap<NodeId, String> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let value = match &node.op {
            Op::Input { name } => name.clone(),
            _ => {
                let own_output = graph.outputs.iter().any(|o| o.node == id && o.name == node.name);
                if own_output || b.taken.insert(node.name.clone()) { node.name.clone() } else { b.fresh(&node.name) }
            }
        };
        values.insert(id, value);
    }

    for &id in &order {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        let inputs: Vec<String> = graph.operands(id).iter().map(|o| values[o].clone()).collect();
        let input_shapes: Vec<&[usize]> = graph.operands(id).iter().map(|&o| graph.node(o).shape.as_slice()).collect();
        let params: Vec<String> = node.params.iter().map(|p| p.name.clone()).collect();
        let out = values[&id].clone();
        b.lower(&node.op, &node.name, &inputs, &input_shapes, &params, &node.shape, &out)?;
    }

    // Graph outputs in order, then the intermediates in topological order.
    let mut output_infos = Vec::new();
    for output in &graph.outputs {
        let value = &values[&output.node];
        if *value != output.name {
            b.node(
                "Identity",
                &format!("{}/output", output.name),
                std::slice::from_ref(value),
                std::slice::from_ref(&output.name),
                vec![],
            );
        }
        output_infos.push(value_info(&output.name, &graph.node(output.node).shape));
    }
    if intermediates {
        for &id in &order {
            let node = graph.node(id);
            if matches!(node.op, Op::Input { .. }) || output_names.contains(&node.name) || values[&id] != node.name {
                continue;
            }
            output_infos.push(value_info(&node.name, &node.shape));
        }
    }

    let graph_proto = GraphProto {
        name: if graph.name.is_empty() { "cnnc".to_string() } else { graph.name.clone() },
        node: b.nodes,
        initializer: b.initializers,
        input: input_infos,
        output: output_infos,
        ..GraphProto::default()
    };
    let dilated_average =
        order.iter().any(|&id| matches!(&graph.node(id).op, Op::AvgPool(p) if p.dilation != Hw::square(1)));
    let (opset, ir_version) = if dilated_average { DILATED_AVERAGE_OPSET } else { (OPSET, IR_VERSION) };
    Ok(ModelProto {
        ir_version,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset, ..Default::default() }],
        producer_name: "cnnc".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(graph_proto).into(),
        ..ModelProto::default()
    })
}

/// An attribute of an ONNX node.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto { name: name.to_string(), ..AttributeProto::default() };
    match value {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = i;
        }
        Attr::Ints(ints) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = ints;
        }
        Attr::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = f;
        }
    }
    a
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn hw(v: Hw) -> Vec<i64> {
    vec![v.h as i64, v.w as i64]
}

fn pads(p: Pad) -> Vec<i64> {
    vec![p.top as i64, p.left as i64, p.bottom as i64, p.right as i64]
}

fn float_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims(shape),
        data_type: DataType::FLOAT as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

fn int64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: vec![data.len() as i64],
        data_type: DataType::INT64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| Dimension { value: Some(dimension::Value::DimValue(d as i64)), ..Dimension::default() })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto { dim, ..TensorShapeProto::default() }).into(),
        ..type_proto::Tensor::default()
    };
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..TypeProto::default() }).into(),
        ..ValueInfoProto::default()
    }
}

/// Accumulates nodes and initializers, handing out unique value and node names.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Value names in use (initializers, inputs, outputs, node results).
    taken: HashSet<String>,
    /// Node names in use.
    node_names: HashSet<String>,
}

impl Builder {
    /// A value name starting with `base` that is not in use yet; marks it used.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while !self.taken.insert(name.clone()) {
            name = format!("{base}#{n}");
            n += 1;
        }
        name
    }

    fn node(&mut self, op_type: &str, name: &str, inputs: &[String], outputs: &[String], attrs: Vec<(&str, Attr)>) {
        let mut unique = name.to_string();
        let mut n = 1;
        while !self.node_names.insert(unique.clone()) {
            unique = format!("{name}#{n}");
            n += 1;
        }
        self.nodes.push(NodeProto {
            op_type: op_type.to_string(),
            name: unique,
            input: inputs.to_vec(),
            output: outputs.to_vec(),
            attribute: attrs.into_iter().map(|(k, v)| attribute(k, v)).collect(),
            ..NodeProto::default()
        });
    }

    /// A node with one fresh output value named `{name}/{suffix}`; returns that value.
    fn step(&mut self, op_type: &str, name: &str, suffix: &str, inputs: &[String], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&format!("{name}/{suffix}"));
        self.node(op_type, &format!("{name}/{suffix}"), inputs, std::slice::from_ref(&out), attrs);
        out
    }

    fn const_i64(&mut self, name: &str, data: &[i64]) -> String {
        let value = self.fresh(name);
        self.initializers.push(int64_tensor(&value, data));
        value
    }

    fn const_f32(&mut self, name: &str, value: f32) -> String {
        let value_name = self.fresh(name);
        self.initializers.push(float_tensor(&value_name, &[], &[value]));
        value_name
    }

    /// Emits the ONNX nodes for one IR node reading `inputs` and writing `out`.
    #[allow(clippy::too_many_arguments)]
    fn lower(
        &mut self,
        op: &Op,
        name: &str,
        inputs: &[String],
        input_shapes: &[&[usize]],
        params: &[String],
        shape: &[usize],
        out: &str,
    ) -> Result<(), String> {
        let outs = [out.to_string()];
        let x = inputs.first().cloned().ok_or_else(|| format!("layer `{name}` has no operand"))?;
        let with_params = |extra: &[String]| -> Vec<String> {
            let mut v = vec![x.clone()];
            v.extend_from_slice(extra);
            v
        };
        match op {
            Op::Input { .. } | Op::ScaleShift => {}
            Op::Conv(c) => {
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(hw(c.kernel))),
                    ("strides", Attr::Ints(hw(c.stride))),
                    ("pads", Attr::Ints(pads(c.pad))),
                    ("dilations", Attr::Ints(hw(c.dilation))),
                    ("group", Attr::Int(c.groups as i64)),
                ];
                self.node("Conv", name, &with_params(params), &outs, attrs);
            }
            Op::Linear { .. } if shape.len() == 2 => {
                self.node("Gemm", name, &with_params(params), &outs, vec![("transB", Attr::Int(1))]);
            }
            Op::Linear { .. } => {
                let weight = params.first().ok_or_else(|| format!("linear `{name}` has no weight"))?;
                let transposed = self.step(
                    "Transpose",
                    name,
                    "weight_t",
                    std::slice::from_ref(weight),
                    vec![("perm", Attr::Ints(vec![1, 0]))],
                );
                match params.get(1) {
                    Some(bias) => {
                        let product = self.step("MatMul", name, "matmul", &[x, transposed], vec![]);
                        self.node("Add", name, &[product, bias.clone()], &outs, vec![]);
                    }
                    None => self.node("MatMul", name, &[x, transposed], &outs, vec![]),
                }
            }
            Op::BatchNorm { eps } => {
                self.node(
                    "BatchNormalization",
                    name,
                    &with_params(params),
                    &outs,
                    vec![("epsilon", Attr::Float(*eps as f32))],
                );
            }
            Op::Activation(activation) => self.activation(*activation, name, &x, out),
            Op::Softmax => self.node("Softmax", name, &[x], &outs, vec![("axis", Attr::Int(1))]),
            Op::MaxPool(p) => self.node("MaxPool", name, &[x], &outs, pool_attrs(p, false, shape.len() == 3)),
            Op::AvgPool(p) => self.node("AveragePool", name, &[x], &outs, pool_attrs(p, true, shape.len() == 3)),
            Op::GlobalAvgPool => self.node("GlobalAveragePool", name, &[x], &outs, vec![]),
            Op::GlobalMaxPool => self.node("GlobalMaxPool", name, &[x], &outs, vec![]),
            Op::AdaptiveAvgPool { out: size } => {
                let input = input_shapes.first().copied().unwrap_or(&[]);
                if input.len() != 4 {
                    return Err(format!("adaptive_avg_pool `{name}` needs a 4-D input"));
                }
                self.adaptive_avg_pool(name, &x, input, *size, out);
            }
            Op::Mean { dims, keepdim } => {
                let axes = Attr::Ints(dims.iter().map(|&d| d as i64).collect());
                self.node(
                    "ReduceMean",
                    name,
                    &[x],
                    &outs,
                    vec![("axes", axes), ("keepdims", Attr::Int(*keepdim as i64))],
                );
            }
            Op::Reshape { .. } => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let target = self.const_i64(&format!("{name}/shape"), &dims);
                self.node("Reshape", name, &[x, target], &outs, vec![]);
            }
            Op::Dropout { .. } | Op::Dropout2d { .. } | Op::StochasticDepth { .. } | Op::Identity => {
                self.node("Identity", name, &[x], &outs, vec![])
            }
            Op::Flatten => self.node("Flatten", name, &[x], &outs, vec![("axis", Attr::Int(1))]),
            Op::Add | Op::Mul => {
                let op_type = if matches!(op, Op::Add) { "Add" } else { "Mul" };
                if inputs.len() < 2 {
                    return Err(format!("{} `{name}` needs two operands", op.mnemonic()));
                }
                let mut acc = inputs[0].clone();
                for (i, operand) in inputs.iter().enumerate().skip(1) {
                    let pair = [acc.clone(), operand.clone()];
                    if i + 1 == inputs.len() {
                        self.node(op_type, name, &pair, &outs, vec![]);
                    } else {
                        acc = self.step(op_type, name, &format!("{}_{i}", op_type.to_lowercase()), &pair, vec![]);
                    }
                }
            }
            Op::Concat => self.node("Concat", name, inputs, &outs, vec![("axis", Attr::Int(1))]),
            Op::Lrn { size, alpha, beta, k } => {
                if shape.len() != 4 {
                    return Err(format!("lrn `{name}` needs a 4-D input"));
                }
                self.lrn(name, &x, shape, *size, *alpha, *beta, *k, out);
            }
            Op::Slice { start, len } => {
                let starts = self.const_i64(&format!("{name}/starts"), &[*start as i64]);
                let ends = self.const_i64(&format!("{name}/ends"), &[(start + len) as i64]);
                let axes = self.const_i64(&format!("{name}/axes"), &[1]);
                self.node("Slice", name, &[x, starts, ends, axes], &outs, vec![]);
            }
            Op::ChannelShuffle { groups } => {
                if shape.len() != 4 {
                    return Err(format!("channel_shuffle `{name}` needs a 4-D input"));
                }
                let (n, c, h, w) = (shape[0] as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64);
                let g = *groups as i64;
                let grouped_shape = self.const_i64(&format!("{name}/grouped_shape"), &[n, g, c / g, h, w]);
                let grouped = self.step("Reshape", name, "grouped", &[x, grouped_shape], vec![]);
                let swapped = self.step(
                    "Transpose",
                    name,
                    "transpose",
                    &[grouped],
                    vec![("perm", Attr::Ints(vec![0, 2, 1, 3, 4]))],
                );
                let back_shape = self.const_i64(&format!("{name}/shape"), &[n, c, h, w]);
                self.node("Reshape", name, &[swapped, back_shape], &outs, vec![]);
            }
            Op::Permute { perm } => {
                let perm = perm.iter().map(|&d| d as i64).collect();
                self.node("Transpose", name, &[x], &outs, vec![("perm", Attr::Ints(perm))]);
            }
            Op::LayerNormLast { eps, dims } => {
                let axis = (shape.len() - dims) as i64;
                let attrs = vec![("axis", Attr::Int(axis)), ("epsilon", Attr::Float(*eps as f32))];
                self.node("LayerNormalization", name, &with_params(params), &outs, attrs);
            }
            Op::LayerNorm { eps, axis } => {
                let mut inputs = with_params(params);
                let attrs = |axis: i64| vec![("axis", Attr::Int(axis)), ("epsilon", Attr::Float(*eps as f32))];
                if axis + 1 == shape.len() {
                    self.node("LayerNormalization", name, &inputs, &outs, attrs(-1));
                } else {
                    // ONNX normalizes over every dimension from `axis` on: move `axis` last.
                    let rank = shape.len() as i64;
                    let axis = *axis as i64;
                    let to_last: Vec<i64> = (0..rank).filter(|&d| d != axis).chain([axis]).collect();
                    let mut back = vec![0i64; to_last.len()];
                    for (position, &d) in to_last.iter().enumerate() {
                        back[d as usize] = position as i64;
                    }
                    inputs[0] = self.step("Transpose", name, "to_last", &[x], vec![("perm", Attr::Ints(to_last))]);
                    let normalized = self.step("LayerNormalization", name, "normalize", &inputs, attrs(-1));
                    self.node("Transpose", name, &[normalized], &outs, vec![("perm", Attr::Ints(back))]);
                }
            }
            Op::Scale => self.node("Mul", name, &with_params(params), &outs, vec![]),
        }
        Ok(())
    }

    /// An activation at opset 17: one op where ONNX has it, else PyTorch's own export
    /// pattern (`silu` as `x * Sigmoid(x)`, `gelu` through `Erf` or `Tanh`).
    fn activation(&mut self, activation: Activation, name: &str, x: &str, out: &str) {
        let outs = [out.to_string()];
        let x = x.to_string();
        match activation {
            Activation::Relu => self.node("Relu", name, &[x], &outs, vec![]),
            Activation::LeakyRelu { slope } => {
                self.node("LeakyRelu", name, &[x], &outs, vec![("alpha", Attr::Float(slope as f32))])
            }
            Activation::Sigmoid => self.node("Sigmoid", name, &[x], &outs, vec![]),
            Activation::Tanh => self.node("Tanh", name, &[x], &outs, vec![]),
            Activation::Clamp { min, max } => {
                let min = self.const_f32(&format!("{name}/min"), min as f32);
                let max = self.const_f32(&format!("{name}/max"), max as f32);
                self.node("Clip", name, &[x, min, max], &outs, vec![]);
            }
            Activation::HardSwish => self.node("HardSwish", name, &[x], &outs, vec![]),
            Activation::HardSigmoid => {
                // PyTorch's relu6(x + 3) / 6, not ONNX's HardSigmoid: its f32 `x / 6 + 0.5`
                // cancels just above -3 (1.3e-4 relative L2 there, MobileNet v3's gates).
                let three = self.const_f32(&format!("{name}/three"), 3.0);
                let shifted = self.step("Add", name, "shift", &[x, three], vec![]);
                let zero = self.const_f32(&format!("{name}/zero"), 0.0);
                let six = self.const_f32(&format!("{name}/six"), 6.0);
                let clipped = self.step("Clip", name, "clip", &[shifted, zero, six.clone()], vec![]);
                self.node("Div", name, &[clipped, six], &outs, vec![]);
            }
            Activation::HardSigmoidAffine { alpha, beta } => self.node(
                "HardSigmoid",
                name,
                &[x],
                &outs,
                vec![("alpha", Attr::Float(alpha as f32)), ("beta", Attr::Float(beta as f32))],
            ),
            Activation::Erf => self.node("Erf", name, &[x], &outs, vec![]),
            Activation::Silu => {
                let sigmoid = self.step("Sigmoid", name, "sigmoid", std::slice::from_ref(&x), vec![]);
                self.node("Mul", name, &[x, sigmoid], &outs, vec![]);
            }
            Activation::Gelu { tanh: false } => {
                // x * 0.5 * (1 + erf(x / sqrt(2))), as torch.onnx exports nn.GELU().
                let sqrt2 = self.const_f32(&format!("{name}/sqrt2"), std::f32::consts::SQRT_2);
                let scaled = self.step("Div", name, "div", &[x.clone(), sqrt2], vec![]);
                let erf = self.step("Erf", name, "erf", &[scaled], vec![]);
                self.gelu_tail(name, &x, erf, out);
            }
            Activation::Gelu { tanh: true } => {
                // x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
                let square = self.step("Mul", name, "square", &[x.clone(), x.clone()], vec![]);
                let cube = self.step("Mul", name, "cube", &[square, x.clone()], vec![]);
                let kappa = self.const_f32(&format!("{name}/kappa"), 0.044715);
                let scaled_cube = self.step("Mul", name, "scaled_cube", &[cube, kappa], vec![]);
                let sum = self.step("Add", name, "sum", &[x.clone(), scaled_cube], vec![]);
                let beta = self.const_f32(&format!("{name}/beta"), (2.0 / std::f64::consts::PI).sqrt() as f32);
                let inner = self.step("Mul", name, "inner", &[sum, beta], vec![]);
                let tanh = self.step("Tanh", name, "tanh", &[inner], vec![]);
                self.gelu_tail(name, &x, tanh, out);
            }
        }
    }

    /// `x * 0.5 * (1 + t)` into `out`: GELU's last steps, `t` being erf's or tanh's value.
    fn gelu_tail(&mut self, name: &str, x: &str, t: String, out: &str) {
        let one = self.const_f32(&format!("{name}/one"), 1.0);
        let half = self.const_f32(&format!("{name}/half"), 0.5);
        let plus_one = self.step("Add", name, "plus_one", &[t, one], vec![]);
        let x_half = self.step("Mul", name, "x_half", &[x.to_string(), half], vec![]);
        self.node("Mul", name, &[x_half, plus_one], &[out.to_string()], vec![]);
    }

    /// PyTorch's `adaptive_avg_pool2d`: `Identity`, one `AveragePool`, or per axis one
    /// `Slice` + `ReduceMean` per bin and a `Concat`. The mean over a rectangular bin is
    /// the mean over its rows of the means over its columns, so the two axes separate.
    fn adaptive_avg_pool(&mut self, name: &str, x: &str, input: &[usize], size: Hw, out: &str) {
        let outs = [out.to_string()];
        let (h, w) = (input[2], input[3]);
        if h == size.h && w == size.w {
            self.node("Identity", name, &[x.to_string()], &outs, vec![]);
            return;
        }
        if h % size.h == 0 && w % size.w == 0 {
            let kernel = vec![(h / size.h) as i64, (w / size.w) as i64];
            self.node(
                "AveragePool",
                name,
                &[x.to_string()],
                &outs,
                vec![("kernel_shape", Attr::Ints(kernel.clone())), ("strides", Attr::Ints(kernel))],
            );
            return;
        }
        let passes: Vec<(i64, usize, usize)> =
            [(2, h, size.h), (3, w, size.w)].into_iter().filter(|&(_, i, o)| i != o).collect();
        let mut current = x.to_string();
        for (pass, &(axis, in_size, out_size)) in passes.iter().enumerate() {
            let axis_name = if axis == 2 { "h" } else { "w" };
            let axes = self.const_i64(&format!("{name}/{axis_name}_axes"), &[axis]);
            let mut bins = Vec::with_capacity(out_size);
            for i in 0..out_size {
                let start = (i * in_size) / out_size;
                let end = ((i + 1) * in_size).div_ceil(out_size);
                let starts = self.const_i64(&format!("{name}/{axis_name}{i}_start"), &[start as i64]);
                let ends = self.const_i64(&format!("{name}/{axis_name}{i}_end"), &[end as i64]);
                let slice = self.step(
                    "Slice",
                    name,
                    &format!("{axis_name}{i}_slice"),
                    &[current.clone(), starts, ends, axes.clone()],
                    vec![],
                );
                let mean = self.step(
                    "ReduceMean",
                    name,
                    &format!("{axis_name}{i}_mean"),
                    &[slice],
                    vec![("axes", Attr::Ints(vec![axis])), ("keepdims", Attr::Int(1))],
                );
                bins.push(mean);
            }
            let attrs = vec![("axis", Attr::Int(axis))];
            if pass + 1 == passes.len() {
                self.node("Concat", name, &bins, &outs, attrs);
            } else {
                current = self.step("Concat", name, &format!("{axis_name}_concat"), &bins, attrs);
            }
        }
    }

    /// PyTorch's `LocalResponseNorm`: `x / (k + alpha * avg)^beta` where `avg` averages
    /// `x^2` over `size` channels, zero-padded by `size/2` before and `(size-1)/2` after
    /// (ONNX's `LRN` pads the other way round for even sizes).
    #[allow(clippy::too_many_arguments)]
    fn lrn(&mut self, name: &str, x: &str, shape: &[usize], size: usize, alpha: f64, beta: f64, k: f64, out: &str) {
        let (n, c, h, w) = (shape[0] as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64);
        let x = x.to_string();
        let square = self.step("Mul", name, "square", &[x.clone(), x.clone()], vec![]);
        let flat_shape = self.const_i64(&format!("{name}/flat_shape"), &[n, 1, c, h * w]);
        let flat = self.step("Reshape", name, "flat", &[square, flat_shape], vec![]);
        let pad_amounts =
            self.const_i64(&format!("{name}/pads"), &[0, 0, (size / 2) as i64, 0, 0, 0, ((size - 1) / 2) as i64, 0]);
        let padded = self.step("Pad", name, "pad", &[flat, pad_amounts], vec![]);
        let pooled = self.step(
            "AveragePool",
            name,
            "window_mean",
            &[padded],
            vec![
                ("kernel_shape", Attr::Ints(vec![size as i64, 1])),
                ("strides", Attr::Ints(vec![1, 1])),
                ("count_include_pad", Attr::Int(1)),
            ],
        );
        let back_shape = self.const_i64(&format!("{name}/shape"), &[n, c, h, w]);
        let mean = self.step("Reshape", name, "unflat", &[pooled, back_shape], vec![]);
        let alpha = self.const_f32(&format!("{name}/alpha"), alpha as f32);
        let scaled = self.step("Mul", name, "scaled", &[mean, alpha], vec![]);
        let k = self.const_f32(&format!("{name}/k"), k as f32);
        let shifted = self.step("Add", name, "shifted", &[scaled, k], vec![]);
        let beta = self.const_f32(&format!("{name}/beta"), beta as f32);
        let divisor = self.step("Pow", name, "divisor", &[shifted, beta], vec![]);
        self.node("Div", name, &[x, divisor], &[out.to_string()], vec![]);
    }
}

/// A pool's attributes; `one_axis` for 1-D pooling on `[N, C, L]` (the window's width).
fn pool_attrs(p: &Pool, average: bool, one_axis: bool) -> Vec<(&'static str, Attr)> {
    let hw = |v: Hw| if one_axis { vec![v.w as i64] } else { hw(v) };
    let pads = if one_axis { vec![p.pad.left as i64, p.pad.right as i64] } else { pads(p.pad) };
    let mut attrs = vec![
        ("kernel_shape", Attr::Ints(hw(p.kernel))),
        ("strides", Attr::Ints(hw(p.stride))),
        ("pads", Attr::Ints(pads)),
        ("ceil_mode", Attr::Int(p.ceil as i64)),
    ];
    if average {
        attrs.push(("count_include_pad", Attr::Int(p.count_pad as i64)));
    }
    if p.dilation != Hw::square(1) {
        attrs.push(("dilations", Attr::Ints(hw(p.dilation))));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::{BuildOptions, compile_source};
    use crate::tensor::Tensor;

    fn build(source: &str, batch: usize) -> (Graph, Weights) {
        let graph = compile_source(source, &BuildOptions { batch, input_shape: None }).expect("compiles");
        let mut weights = Weights::default();
        for param in graph.params() {
            let n = param.shape.iter().product();
            weights.insert(param.name.clone(), Tensor::new(param.shape.clone(), vec![0.5; n]).expect("sizes agree"));
        }
        (graph, weights)
    }

    fn shape_of(info: &ValueInfoProto) -> Vec<i64> {
        info.type_
            .tensor_type()
            .shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) => v,
                _ => -1,
            })
            .collect()
    }

    const NET: &str = "network t {\n input image: [1, 8, 8]\n c1: conv(4, 3, pad=1)\n relu\n lrn(2)\n \
                       adaptive_avg_pool(3)\n flatten\n fc: linear(5)\n softmax\n}";

    #[test]
    fn names_shapes_and_metadata() {
        let (graph, weights) = build(NET, 2);
        let bytes = to_onnx(&graph, &weights, false).expect("exports");
        let model = ModelProto::parse_from_bytes(&bytes).expect("parses back");
        assert_eq!((model.ir_version, model.producer_name.as_str()), (8, "cnnc"));
        assert_eq!(model.opset_import[0].version, 17);
        let g = model.graph.as_ref().expect("has a graph");
        assert_eq!(g.input.len(), 1);
        assert_eq!((g.input[0].name.as_str(), shape_of(&g.input[0])), ("image", vec![2, 1, 8, 8]));
        assert_eq!(g.output.len(), 1);
        assert_eq!((g.output[0].name.as_str(), shape_of(&g.output[0])), ("output", vec![2, 5]));
        let mut initializers: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        initializers.retain(|n| !n.contains('/'));
        initializers.sort();
        assert_eq!(initializers, ["c1.bias", "c1.weight", "fc.bias", "fc.weight"]);
        let conv = g.node.iter().find(|n| n.name == "c1").expect("conv node named after the layer");
        assert_eq!(conv.op_type, "Conv");
        assert_eq!(conv.input, ["image", "c1.weight", "c1.bias"]);
        let gemm = g.node.iter().find(|n| n.name == "fc").expect("gemm node");
        assert_eq!(gemm.op_type, "Gemm");
        assert!(gemm.attribute.iter().any(|a| a.name == "transB" && a.i == 1));
        // 8x8 -> 3x3 does not divide: the adaptive pool is decomposed into slices.
        assert!(g.node.iter().any(|n| n.op_type == "Slice"));
        assert!(g.node.iter().all(|n| n.op_type != "LRN"));
        let names: HashSet<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), g.node.len(), "node names are unique");
    }

    #[test]
    fn intermediates_are_outputs_named_after_nodes() {
        let (graph, weights) = build(NET, 1);
        let model = to_model(&graph, &weights, true).expect("exports");
        let g = model.graph.as_ref().expect("has a graph");
        let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs[0], "output");
        for id in graph.topo_order().expect("acyclic") {
            let node = graph.node(id);
            if !matches!(node.op, Op::Input { .. }) {
                let info = g.output.iter().find(|o| o.name == node.name).expect("every node is an output");
                assert_eq!(shape_of(info), dims(&node.shape));
            }
        }
    }

    #[test]
    fn missing_or_misshaped_weights_are_errors() {
        let (graph, mut weights) = build(NET, 1);
        weights.tensors.remove("fc.bias");
        let err = to_onnx(&graph, &weights, false).expect_err("a weight is missing");
        assert!(err.contains("fc.bias"), "{err}");
        let (graph, mut weights) = build(NET, 1);
        weights.insert("c1.bias", Tensor::zeros(vec![3]));
        let err = to_onnx(&graph, &weights, false).expect_err("a weight has the wrong shape");
        assert!(err.contains("c1.bias") && err.contains("[3]"), "{err}");
    }
}
