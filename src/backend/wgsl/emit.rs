//! The WGSL emitter: lays out a graph's values and weights in GPU buffers and
//! specializes one kernel template from `shaders/` per node.
//!
//! A kernel module is three parts: a generated prelude (the layer's shapes as `const`s,
//! its storage bindings, one `load_*`/`store_y` accessor per tensor it touches and its
//! fused `epilogue`), `shaders/common.wgsl`, and the op's template. Templates see
//! tensors only through the accessors, so they know nothing of buffers, offsets or
//! bindings: an accessor adds the tensor's offset inside its binding and, for a tensor
//! larger than one binding may be (`max_storage_buffer_binding_size`), picks the
//! binding that holds the element. Every module is parsed and validated by naga before
//! it leaves this file; a module naga rejects is a bug in the emitter or a template.
//! Convolutions have two templates ([`ConvKernel`]): a register-blocked direct one for
//! CPU drivers and a workgroup-memory tiled one for GPUs. A convolution whose epilogue
//! pools (`fuse_pooling`) always takes the direct one, which pools in registers: each
//! invocation's 4 output columns are then 4 pooling windows, and every value of a window
//! is computed by the invocation that reduces it. The tiled one spreads an output's
//! values over the invocations of a workgroup (32 positions per tile), so pooling there
//! would need a reduction through workgroup memory and tiles aligned to windows.
//!
//! Buffers: one activations buffer holds the memory plan's arena (`Graph::memory`, or
//! one slot per value when the graph was not planned), then the inputs, then the
//! outputs; activations are always bound `read_write` (a buffer bound both read-only
//! and read-write in one dispatch is a usage conflict). The weights live in as few
//! read-only buffers as `max_buffer_size` allows, each tensor at an aligned offset.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::ir::shape::as_4d;
use crate::ir::{Activation, Epilogue, Graph, NodeId, Op, Pool, PoolKind};

/// The text every module shares, between the prelude and the template.
const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// The kernel templates by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("conv", include_str!("../../../shaders/conv.wgsl")),
    ("conv_tiled", include_str!("../../../shaders/conv_tiled.wgsl")),
    ("depthwise", include_str!("../../../shaders/depthwise.wgsl")),
    ("linear", include_str!("../../../shaders/linear.wgsl")),
    ("pool", include_str!("../../../shaders/pool.wgsl")),
    ("adaptive_pool", include_str!("../../../shaders/adaptive_pool.wgsl")),
    ("softmax", include_str!("../../../shaders/softmax.wgsl")),
    ("elementwise", include_str!("../../../shaders/elementwise.wgsl")),
    ("concat", include_str!("../../../shaders/concat.wgsl")),
    ("lrn", include_str!("../../../shaders/lrn.wgsl")),
    ("layer_norm", include_str!("../../../shaders/layer_norm.wgsl")),
];

/// Invocations per workgroup of the one-value-per-invocation kernels (`WG` in
/// `common.wgsl`).
const WORKGROUP_SIZE: u64 = 64;

/// Inputs and outputs start at offsets aligned to this many bytes, the largest
/// `min_storage_buffer_offset_alignment` WebGPU allows, so their bindings start at
/// element 0 on every device.
const IO_ALIGNMENT: u64 = 256;

/// The device limits the layout has to respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLimits {
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub min_storage_buffer_offset_alignment: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

impl Default for DeviceLimits {
    /// WebGPU's default limits: what every adapter offers.
    fn default() -> DeviceLimits {
        DeviceLimits {
            max_storage_buffer_binding_size: 128 << 20,
            max_buffer_size: 256 << 20,
            min_storage_buffer_offset_alignment: 256,
            max_storage_buffers_per_shader_stage: 8,
            max_compute_workgroups_per_dimension: 65535,
        }
    }
}

/// Which template computes convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvKernel {
    /// `conv.wgsl`: each invocation keeps an 8-channel x 4-column block in registers.
    /// The faster one on CPU drivers such as lavapipe, where workgroup memory is plain
    /// memory and barriers cost.
    #[default]
    Direct,
    /// `conv_tiled.wgsl`: an implicit matrix product over 32 x 32 tiles staged in
    /// workgroup memory, for GPUs.
    Tiled,
}

/// A GPU buffer of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BufferId {
    /// The arena, the inputs and the outputs.
    Activations,
    /// The `n`th weights buffer.
    Weights(usize),
}

/// Elements `first .. first + count` of a tensor, stored contiguously in one buffer
/// from `byte_offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub buffer: BufferId,
    pub byte_offset: u64,
    pub first: u64,
    pub count: u64,
}

/// A tensor's place in the buffers: one segment, or several for a weight larger than a
/// buffer may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub name: String,
    pub shape: Vec<usize>,
    pub segments: Vec<Segment>,
}

/// A storage binding of a kernel: `size` bytes of `buffer` from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    pub buffer: BufferId,
    pub offset: u64,
    pub size: u64,
    pub read_only: bool,
}

/// One dispatch: a specialized module, its bindings (binding `k` of group 0 is
/// `bindings[k]`) and its workgroup counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kernel {
    /// The layer the kernel computes (or part of, for a split concat).
    pub layer: String,
    /// The template it was specialized from (a key of [`TEMPLATES`]).
    pub template: &'static str,
    /// The WGSL module; entry point `main`.
    pub source: String,
    pub bindings: Vec<Binding>,
    pub workgroups: [u32; 3],
}

/// Everything the runtime needs to run a graph: buffer sizes, where every weight,
/// input and output lives, and the dispatches in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub network: String,
    pub limits: DeviceLimits,
    pub conv_kernel: ConvKernel,
    pub activation_bytes: u64,
    pub weight_buffer_bytes: Vec<u64>,
    /// Weights by parameter name, in the graph's topological order.
    pub weights: Vec<Placement>,
    /// In `Graph::inputs` order.
    pub inputs: Vec<Placement>,
    /// In `Graph::outputs` order.
    pub outputs: Vec<Placement>,
    pub kernels: Vec<Kernel>,
}

/// Parses and validates a WGSL module with naga; `Err` holds naga's report.
pub fn validate_wgsl(source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
    Ok(())
}

/// Lays out the graph's values and weights for a device with `limits` and emits one
/// validated kernel per node (none for inputs and for copies made in place; several for
/// a concat of more operands than a kernel may bind), convolutions with `conv_kernel`.
pub fn plan(graph: &Graph, limits: &DeviceLimits, conv_kernel: ConvKernel) -> Result<Plan, String> {
    let order = graph.topo_order().ok_or_else(|| format!("graph `{}` has a cycle", graph.name))?;
    if limits.max_storage_buffer_binding_size < 2 * limits.min_storage_buffer_offset_alignment.max(4) {
        return Err(format!("the device's storage bindings are too small ({limits:?})"));
    }
    let activations = layout_activations(graph, &order, limits)?;
    let (weight_buffer_bytes, weights) = layout_weights(graph, &order, limits)?;
    let weight_segments: HashMap<&str, &[Segment]> =
        weights.iter().map(|p| (p.name.as_str(), p.segments.as_slice())).collect();

    let mut kernels = Vec::new();
    for &id in &order {
        emit_node(graph, id, &activations, &weight_segments, limits, conv_kernel, &mut kernels)?;
    }
    let placement = |name: &str, id: NodeId| Placement {
        name: name.to_string(),
        shape: graph.node(id).shape.clone(),
        segments: vec![activations.values[&id]],
    };
    let inputs = graph
        .inputs
        .iter()
        .map(|&id| match &graph.node(id).op {
            Op::Input { name } => placement(name, id),
            _ => placement(&graph.node(id).name, id),
        })
        .collect();
    let outputs = graph.outputs.iter().map(|o| placement(&o.name, o.node)).collect();
    Ok(Plan {
        network: graph.name.clone(),
        limits: *limits,
        conv_kernel,
        activation_bytes: activations.bytes,
        weight_buffer_bytes,
        weights,
        inputs,
        outputs,
        kernels,
    })
}

/// Where every value lives in the activations buffer.
struct Activations {
    values: HashMap<NodeId, Segment>,
    bytes: u64,
}

fn element_count(shape: &[usize]) -> Result<u64, String> {
    let count = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match count {
        Some(n) if n < u32::MAX as u64 => Ok(n),
        _ => Err(format!("a tensor of shape {shape:?} is too large for the GPU backend (32-bit indices)")),
    }
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

fn layout_activations(graph: &Graph, order: &[NodeId], limits: &DeviceLimits) -> Result<Activations, String> {
    let mut values = HashMap::new();
    let mut bytes = 0u64;
    let segment =
        |offset: u64, count: u64| Segment { buffer: BufferId::Activations, byte_offset: offset, first: 0, count };
    // The arena, as planned; without a plan, one slot per value.
    for &id in order {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. }) || graph.is_output(id) {
            continue;
        }
        let count = element_count(&node.shape)?;
        let offset = match &graph.memory {
            Some(plan) => {
                let slot = plan
                    .slots
                    .get(&id)
                    .ok_or_else(|| format!("internal error: layer `{}` has no slot in the memory plan", node.name))?;
                if (slot.bytes as u64) < 4 * count {
                    return Err(format!("internal error: layer `{}`'s slot is too small", node.name));
                }
                slot.offset as u64
            }
            None => {
                let offset = align_up(bytes, IO_ALIGNMENT);
                bytes = offset + 4 * count;
                offset
            }
        };
        values.insert(id, segment(offset, count));
    }
    if let Some(plan) = &graph.memory {
        bytes = plan.arena_bytes as u64;
    }
    // Then the inputs and the outputs, each at an aligned offset.
    let io_values = graph.inputs.iter().copied().chain(graph.outputs.iter().map(|o| o.node));
    for id in io_values {
        if values.contains_key(&id) {
            continue; // an input that is also an output, or a value listed twice
        }
        let count = element_count(&graph.node(id).shape)?;
        let offset = align_up(bytes, IO_ALIGNMENT);
        bytes = offset + 4 * count;
        values.insert(id, segment(offset, count));
    }
    let bytes = align_up(bytes.max(4), IO_ALIGNMENT);
    if bytes > limits.max_buffer_size {
        return Err(format!(
            "network `{}` needs a {bytes}-byte activations buffer; the device allows {} bytes",
            graph.name, limits.max_buffer_size
        ));
    }
    Ok(Activations { values, bytes })
}

/// Places every weight tensor: in the current buffer if it fits, else in a new one; a
/// tensor larger than a buffer may be is split over several.
fn layout_weights(
    graph: &Graph,
    order: &[NodeId],
    limits: &DeviceLimits,
) -> Result<(Vec<u64>, Vec<Placement>), String> {
    let alignment = limits.min_storage_buffer_offset_alignment.max(4);
    // At most 1 GiB per buffer even where the device allows more: a buffer is mapped
    // whole at creation to upload it, and drivers differ on how large that may be.
    let capacity = (limits.max_buffer_size.min(1 << 30) / alignment) * alignment;
    let mut buffers: Vec<u64> = Vec::new();
    let mut placements = Vec::new();
    for &id in order {
        for param in &graph.node(id).params {
            let count = element_count(&param.shape)?;
            let bytes = 4 * count;
            let mut segments = Vec::new();
            let current = buffers.last().map(|&used| align_up(used, alignment));
            match current {
                Some(offset) if offset + bytes <= capacity => {
                    let index = buffers.len() - 1;
                    buffers[index] = offset + bytes;
                    segments.push(Segment { buffer: BufferId::Weights(index), byte_offset: offset, first: 0, count });
                }
                _ => {
                    let mut first = 0;
                    while first < count || segments.is_empty() {
                        let piece = (count - first).min(capacity / 4);
                        buffers.push(4 * piece);
                        let buffer = BufferId::Weights(buffers.len() - 1);
                        segments.push(Segment { buffer, byte_offset: 0, first, count: piece });
                        first += piece;
                    }
                }
            }
            placements.push(Placement { name: param.name.clone(), shape: param.shape.clone(), segments });
        }
    }
    for used in &mut buffers {
        *used = align_up((*used).max(4), alignment);
    }
    Ok((buffers, placements))
}

/// Builds one kernel module: constants, bindings, accessors, then the template.
struct KernelBuilder<'a> {
    limits: &'a DeviceLimits,
    layer: String,
    constants: String,
    functions: String,
    bindings: Vec<Binding>,
    error: Option<String>,
}

impl<'a> KernelBuilder<'a> {
    fn new(limits: &'a DeviceLimits, layer: &str) -> KernelBuilder<'a> {
        KernelBuilder {
            limits,
            layer: layer.to_string(),
            constants: String::new(),
            functions: String::new(),
            bindings: Vec::new(),
            error: None,
        }
    }

    fn uint(&mut self, name: &str, value: usize) {
        if value > u32::MAX as usize {
            self.error.get_or_insert(format!("layer `{}`: {name} = {value} does not fit 32 bits", self.layer));
        }
        let _ = writeln!(self.constants, "const {name}: u32 = {value}u;");
    }

    fn float(&mut self, name: &str, value: f64) {
        let literal = self.float_literal(value);
        let _ = writeln!(self.constants, "const {name}: f32 = {literal};");
    }

    /// A WGSL f32 literal; attributes are finite (the front end checks them), so a
    /// value that is not is an error rather than a silent substitute.
    fn float_literal(&mut self, value: f64) -> String {
        let value = value as f32;
        if !value.is_finite() {
            self.error.get_or_insert(format!("layer `{}`: attribute {value} is not a finite f32", self.layer));
        }
        format!("{value:?}f")
    }

    /// `fn epilogue(i: u32, value: f32) -> f32`: `leading` (a standalone activation
    /// op), then the node's epilogue in its order: activation, `+ residual`,
    /// post-activation. `i` indexes the kernel's own output (the residual's shape); a
    /// pooling stage is not here but in the conv template, over these values.
    fn epilogue(&mut self, leading: Option<Activation>, epilogue: &Epilogue) {
        let mut body = String::from("    var v = value;\n");
        for activation in [leading, epilogue.activation].into_iter().flatten() {
            let call = self.activation_call(activation);
            let _ = writeln!(body, "    v = {call};");
        }
        if epilogue.residual {
            body += "    v = v + load_residual(i);\n";
        }
        if let Some(activation) = epilogue.post_activation {
            let call = self.activation_call(activation);
            let _ = writeln!(body, "    v = {call};");
        }
        self.function(&format!("fn epilogue(i: u32, value: f32) -> f32 {{\n{body}    return v;\n}}\n"));
    }

    /// The activation applied to `v`, with the functions of `common.wgsl`.
    fn activation_call(&mut self, activation: Activation) -> String {
        match activation {
            Activation::Relu => "relu(v)".to_string(),
            Activation::LeakyRelu { slope } => format!("leaky_relu(v, {})", self.float_literal(slope)),
            Activation::Sigmoid => "sigmoid(v)".to_string(),
            Activation::Tanh => "tanh_clamped(v)".to_string(),
            Activation::Clamp { min, max } => {
                format!("clamp_nan(v, {}, {})", self.float_literal(min), self.float_literal(max))
            }
            Activation::HardSwish => "hardswish(v)".to_string(),
            Activation::HardSigmoid => "hardsigmoid(v)".to_string(),
            Activation::HardSigmoidAffine { alpha, beta } => {
                format!("clamp_nan(fma(v, {}, {}), 0.0, 1.0)", self.float_literal(alpha), self.float_literal(beta))
            }
            Activation::Erf => "erf_approx(v)".to_string(),
            Activation::Silu => "silu(v)".to_string(),
            Activation::Gelu { tanh: false } => "gelu_erf(v)".to_string(),
            Activation::Gelu { tanh: true } => "gelu_tanh(v)".to_string(),
        }
    }

    fn boolean(&mut self, name: &str, value: bool) {
        let _ = writeln!(self.constants, "const {name}: bool = {value};");
    }

    fn function(&mut self, text: &str) {
        self.functions.push_str(text);
        self.functions.push('\n');
    }

    /// The variable of a binding, declared once per distinct range.
    fn binding(&mut self, binding: Binding) -> String {
        let index = match self.bindings.iter().position(|b| *b == binding) {
            Some(index) => index,
            None => {
                self.bindings.push(binding);
                self.bindings.len() - 1
            }
        };
        format!("b{index}")
    }

    /// The pieces a tensor's segments are bound as: (variable, first element, element
    /// count, the element's index inside the binding).
    fn pieces(&mut self, segments: &[Segment], read_only: bool) -> Vec<(String, u64, u64, u64)> {
        let alignment = self.limits.min_storage_buffer_offset_alignment.max(4);
        let max_size = self.limits.max_storage_buffer_binding_size / 4 * 4;
        let mut pieces = Vec::new();
        for segment in segments {
            let end = segment.byte_offset + 4 * segment.count;
            let mut start = segment.byte_offset;
            while start < end {
                let offset = start / alignment * alignment;
                let piece_end = end.min(offset + max_size);
                let variable =
                    self.binding(Binding { buffer: segment.buffer, offset, size: piece_end - offset, read_only });
                let first = segment.first + (start - segment.byte_offset) / 4;
                pieces.push((variable, first, (piece_end - start) / 4, (start - offset) / 4));
                start = piece_end;
            }
        }
        pieces
    }

    /// `fn load_NAME(i: u32) -> f32`, reading element `i` of the tensor.
    fn loader(&mut self, name: &str, segments: &[Segment], read_only: bool) {
        let pieces = self.pieces(segments, read_only);
        let body = piece_dispatch(&pieces, |element| format!("return {element};"));
        self.function(&format!("fn load_{name}(i: u32) -> f32 {{\n{body}}}\n"));
    }

    /// `fn store_y(i: u32, v: f32)`, writing element `i` of the output.
    fn storer(&mut self, segments: &[Segment]) {
        let pieces = self.pieces(segments, false);
        let body = piece_dispatch(&pieces, |element| format!("{element} = v;\n        return;"));
        self.function(&format!("fn store_y(i: u32, v: f32) {{\n{body}}}\n"));
    }

    /// The finished, validated module dispatched over `grid`; `None` when there is
    /// nothing to compute.
    fn finish(mut self, template: &'static str, grid: Grid) -> Result<Option<Kernel>, String> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let (workgroups, depth) = match grid {
            Grid::Invocations(invocations) => {
                self.uint("TOTAL", invocations as usize);
                (invocations.div_ceil(WORKGROUP_SIZE), 1)
            }
            Grid::Workgroups { count, depth } => (count, depth),
        };
        if workgroups == 0 || depth == 0 {
            return Ok(None);
        }
        let bound = self.bindings.len();
        if bound > self.limits.max_storage_buffers_per_shader_stage as usize {
            return Err(format!(
                "layer `{}` needs {bound} storage bindings; the device allows {} per shader stage",
                self.layer, self.limits.max_storage_buffers_per_shader_stage
            ));
        }
        let text = TEMPLATES.iter().find(|(name, _)| *name == template).map(|(_, text)| *text).unwrap_or("");
        let mut source = format!("// cnnc kernel `{template}` for layer `{}`\n\n", self.layer.replace('\n', " "));
        source += &self.constants;
        source.push('\n');
        for (index, binding) in self.bindings.iter().enumerate() {
            let access = if binding.read_only { "read" } else { "read_write" };
            let _ = writeln!(source, "@group(0) @binding({index}) var<storage, {access}> b{index}: array<f32>;");
        }
        source.push('\n');
        source += &self.functions;
        source += COMMON;
        source.push('\n');
        source += text;
        validate_wgsl(&source).map_err(|report| {
            format!("internal error: the `{template}` kernel of layer `{}` does not validate:\n{report}", self.layer)
        })?;
        let workgroups = workgroup_grid(workgroups, depth, self.limits)
            .ok_or_else(|| format!("layer `{}` needs too many workgroups ({workgroups} x {depth})", self.layer))?;
        Ok(Some(Kernel { layer: self.layer, template, source, bindings: self.bindings, workgroups }))
    }
}

/// The body of an accessor: `access("bK[index]")` for the piece holding element `i`.
fn piece_dispatch(pieces: &[(String, u64, u64, u64)], access: impl Fn(&str) -> String) -> String {
    let mut body = String::new();
    for (position, (variable, first, count, base)) in pieces.iter().enumerate() {
        let index = if base >= first {
            if base == first { "i".to_string() } else { format!("i + {}u", base - first) }
        } else {
            format!("i - {}u", first - base)
        };
        let statement = access(&format!("{variable}[{index}]"));
        if position + 1 < pieces.len() {
            let _ = writeln!(body, "    if (i < {}u) {{\n        {statement}\n    }}", first + count);
        } else {
            let _ = writeln!(body, "    {statement}");
        }
    }
    body
}

/// How a kernel is dispatched.
enum Grid {
    /// One invocation per index `0..n` (`TOTAL`), `WORKGROUP_SIZE` per workgroup.
    Invocations(u64),
    /// `count` workgroups along x and y, times `depth` along z.
    Workgroups { count: u64, depth: u64 },
}

/// A grid of at least `count` workgroups in x and y (x filled first), `depth` in z.
fn workgroup_grid(count: u64, depth: u64, limits: &DeviceLimits) -> Option<[u32; 3]> {
    let max = limits.max_compute_workgroups_per_dimension.max(1) as u64;
    let x = count.min(max);
    let y = count.div_ceil(x);
    (y <= max && depth <= max).then_some([x as u32, y as u32, depth as u32])
}

/// Emits the kernel(s) of one node.
fn emit_node<'a>(
    graph: &Graph,
    id: NodeId,
    activations: &Activations,
    weights: &HashMap<&str, &[Segment]>,
    limits: &'a DeviceLimits,
    conv_kernel: ConvKernel,
    kernels: &mut Vec<Kernel>,
) -> Result<(), String> {
    let node = graph.node(id);
    if matches!(node.op, Op::Input { .. }) {
        return Ok(());
    }
    if node.epilogue.gate {
        return Err(format!(
            "internal error: layer `{}` is gated (fuse_gates), which the gpu backend does not run",
            node.name
        ));
    }
    if node.epilogue.pool.is_some() && !matches!(node.op, Op::Conv(_)) {
        return Err(format!("internal error: layer `{}`: only convolutions pool in their epilogue", node.name));
    }
    let operands = graph.op_operands(id);
    let value =
        |operand: NodeId| -> Result<Segment, String> {
            activations.values.get(&operand).copied().ok_or_else(|| {
                format!("internal error: layer `{}` reads a value that has no place in memory", node.name)
            })
        };
    let output = value(id)?;
    let shape = &node.shape;
    let first_shape = operands.first().map(|&o| graph.node(o).shape.clone()).unwrap_or_default();
    let total = element_count(shape)?;

    // The accessors every kernel of the node shares: operands, weights, residual, output.
    let start = |builder_layer: &str| -> Result<KernelBuilder<'a>, String> {
        let mut builder = KernelBuilder::new(limits, builder_layer);
        for param in &node.params {
            let segments = weights
                .get(param.name.as_str())
                .ok_or_else(|| format!("internal error: weight `{}` has no place", param.name))?;
            // A bare parameter (`scale`'s) is read as `load_parameter`.
            let loader = match param.role.suffix() {
                "" => "parameter",
                suffix => suffix,
            };
            builder.loader(loader, segments, true);
        }
        if let Some(residual) = graph.residual(id) {
            builder.loader("residual", &[value(residual)?], false);
        }
        builder.storer(&[output]);
        let leading = Activation::of(&node.op);
        builder.epilogue(leading, &node.epilogue);
        Ok(builder)
    };
    let operand_name = |position: usize| if position == 0 { "x".to_string() } else { format!("x{position}") };
    let with_operands = |builder: &mut KernelBuilder<'_>| -> Result<(), String> {
        for (position, &operand) in operands.iter().enumerate() {
            builder.loader(&operand_name(position), &[value(operand)?], false);
        }
        Ok(())
    };
    let dims4 = |s: &[usize]| -> Result<[usize; 4], String> {
        match s {
            [n, c, h, w] => Ok([*n, *c, *h, *w]),
            _ => Err(format!("layer `{}` expects a 4-D operand, got {s:?}", node.name)),
        }
    };
    let inner = |s: &[usize]| s.iter().skip(2).product::<usize>();

    let kernel = match &node.op {
        Op::Input { .. } => None,
        Op::Conv(conv) => {
            let [_, c, h, w] = dims4(&first_shape)?;
            // The stored output (pooled when the epilogue pools) and the conv's own.
            let [n, o, oh, ow] = dims4(shape)?;
            let conv_shape = crate::ir::shape::infer(&node.op, &[&first_shape])
                .map_err(|e| format!("internal error: layer `{}`: {}", node.name, e.message))?;
            let [_, _, conv_h, conv_w] = dims4(&conv_shape)?;
            // Without pooling, the direct kernel's window is the single value it stores.
            let (window, pool_max) = match &node.epilogue.pool {
                Some(pool) => (pool.window.clone(), pool.kind == PoolKind::Max),
                None => (
                    Pool {
                        kernel: crate::ir::Hw::square(1),
                        stride: crate::ir::Hw::square(1),
                        pad: crate::ir::Pad::symmetric(crate::ir::Hw::square(0)),
                        dilation: crate::ir::Hw::square(1),
                        ceil: false,
                        count_pad: false,
                    },
                    true,
                ),
            };
            // Each invocation computes 8 channels at 4 columns (see conv.wgsl), or for a
            // depthwise convolution one channel at 4 columns (depthwise.wgsl).
            let ow_blocks = ow.div_ceil(4);
            if conv.groups == c && o == c && node.epilogue.pool.is_none() {
                let mut b = start(&node.name)?;
                with_operands(&mut b)?;
                if !conv.bias {
                    b.function("fn load_bias(i: u32) -> f32 {\n    return 0.0;\n}\n");
                }
                for (name, v) in [
                    ("C", c),
                    ("H", h),
                    ("W", w),
                    ("OH", oh),
                    ("OW", ow),
                    ("KH", conv.kernel.h),
                    ("KW", conv.kernel.w),
                    ("KHW", conv.kernel.h * conv.kernel.w),
                    ("SH", conv.stride.h),
                    ("SW", conv.stride.w),
                    ("DH", conv.dilation.h),
                    ("DW", conv.dilation.w),
                    ("PT", conv.pad.top),
                    ("PL", conv.pad.left),
                    ("OW_BLOCKS", ow_blocks),
                ] {
                    b.uint(name, v);
                }
                let invocations = (n * o * oh * ow_blocks) as u64;
                kernels.extend(b.finish("depthwise", Grid::Invocations(invocations))?);
                return Ok(());
            }
            let positions = n * oh * ow_blocks;
            let channel_blocks = conv.groups.max(1) * (o / conv.groups.max(1)).div_ceil(8);
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            if !conv.bias {
                b.function("fn load_bias(i: u32) -> f32 {\n    return 0.0;\n}\n");
            }
            for (name, v) in [
                ("C", c),
                ("H", h),
                ("W", w),
                ("O", o),
                ("OH", oh),
                ("OW", ow),
                ("KH", conv.kernel.h),
                ("KW", conv.kernel.w),
                ("SH", conv.stride.h),
                ("SW", conv.stride.w),
                ("DH", conv.dilation.h),
                ("DW", conv.dilation.w),
                ("PT", conv.pad.top),
                ("PL", conv.pad.left),
                ("C_PER_G", c / conv.groups.max(1)),
                ("O_PER_G", o / conv.groups.max(1)),
                ("OW_BLOCKS", ow_blocks),
                ("BLOCKS", positions),
                ("CH", conv_h),
                ("CW", conv_w),
                ("PKH", window.kernel.h),
                ("PKW", window.kernel.w),
                ("PSH", window.stride.h),
                ("PSW", window.stride.w),
                ("PPT", window.pad.top),
                ("PPL", window.pad.left),
                ("PPB", window.pad.bottom),
                ("PPR", window.pad.right),
            ] {
                b.uint(name, v);
            }
            b.boolean("POOL_MAX", pool_max);
            b.boolean("COUNT_PAD", window.count_pad);
            // Pooling runs in the direct kernel only (see the module's doc).
            let conv_kernel = if node.epilogue.pool.is_some() { ConvKernel::Direct } else { conv_kernel };
            match conv_kernel {
                ConvKernel::Direct => {
                    let count = (positions as u64).div_ceil(WORKGROUP_SIZE);
                    b.finish("conv", Grid::Workgroups { count, depth: channel_blocks as u64 })?
                }
                ConvKernel::Tiled => {
                    // 32 x 32 tiles of (channels of a group) x (positions), see conv_tiled.wgsl.
                    let all_positions = n * oh * ow;
                    let channel_tiles = (o / conv.groups.max(1)).div_ceil(32);
                    b.uint("K", (c / conv.groups.max(1)) * conv.kernel.h * conv.kernel.w);
                    b.uint("POSITIONS", all_positions);
                    b.uint("POSITION_TILES", all_positions.div_ceil(32));
                    b.uint("CHANNEL_TILES", channel_tiles);
                    let count = all_positions.div_ceil(32) as u64;
                    b.finish(
                        "conv_tiled",
                        Grid::Workgroups { count, depth: (conv.groups.max(1) * channel_tiles) as u64 },
                    )?
                }
            }
        }
        Op::Linear { bias, .. } => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            if !bias {
                b.function("fn load_bias(i: u32) -> f32 {\n    return 0.0;\n}\n");
            }
            // On any rank, the last dimension: the others index rows.
            b.uint("F", first_shape.last().copied().unwrap_or(0));
            b.uint("O", shape.last().copied().unwrap_or(0));
            b.uint("ROWS", total as usize);
            b.finish("linear", Grid::Workgroups { count: total, depth: 1 })?
        }
        Op::MaxPool(pool) | Op::AvgPool(pool) => {
            let b = start(&node.name)?;
            // 1-D pooling on [N, C, L] runs as the 2-D pooling of [N, C, 1, L].
            let (in_shape, out_shape) = (as_4d(&first_shape), as_4d(shape));
            emit_pool(b, pool, matches!(node.op, Op::MaxPool(_)), &in_shape, &out_shape, &with_operands, total)?
        }
        Op::GlobalMaxPool => {
            let b = start(&node.name)?;
            let [_, _, h, w] = dims4(&first_shape)?;
            let pool = Pool {
                kernel: crate::ir::Hw::new(h, w),
                stride: crate::ir::Hw::square(1),
                pad: crate::ir::Pad::symmetric(crate::ir::Hw::square(0)),
                dilation: crate::ir::Hw::square(1),
                ceil: false,
                count_pad: false,
            };
            emit_pool(b, &pool, true, &first_shape, shape, &with_operands, total)?
        }
        Op::GlobalAvgPool | Op::AdaptiveAvgPool { .. } => {
            let [_, _, h, w] = dims4(&first_shape)?;
            let [_, _, oh, ow] = dims4(shape)?;
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            for (name, v) in [("H", h), ("W", w), ("OH", oh), ("OW", ow)] {
                b.uint(name, v);
            }
            b.finish("adaptive_pool", Grid::Invocations(total))?
        }
        Op::Softmax => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            b.uint("C", shape.get(1).copied().unwrap_or(1));
            b.uint("INNER", inner(shape));
            b.finish("softmax", Grid::Invocations((shape.first().copied().unwrap_or(1) * inner(shape)) as u64))?
        }
        Op::Lrn { size, alpha, beta, k } => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            b.uint("C", shape.get(1).copied().unwrap_or(1));
            b.uint("INNER", inner(shape));
            b.uint("SIZE", *size);
            b.float("ALPHA", *alpha);
            b.float("BETA", *beta);
            b.float("K", *k);
            b.finish("lrn", Grid::Invocations(total))?
        }
        Op::Activation(_)
        | Op::Dropout { .. }
        | Op::Dropout2d { .. }
        | Op::StochasticDepth { .. }
        | Op::Flatten
        | Op::Reshape { .. }
        | Op::Identity => {
            let copy_in_place = Activation::of(&node.op).is_none()
                && node.epilogue.is_empty()
                && operands.first().map(|&o| value(o)).transpose()? == Some(output);
            if copy_in_place {
                None
            } else {
                let mut b = start(&node.name)?;
                with_operands(&mut b)?;
                b.function("fn value(i: u32) -> f32 {\n    return load_x(i);\n}\n");
                b.finish("elementwise", Grid::Invocations(total))?
            }
        }
        Op::Mean { dims, .. } => {
            // One output value per invocation: its first input value from the kept
            // coordinates, then a loop over the reduced positions.
            let mut strides = vec![1usize; first_shape.len()];
            for d in (0..first_shape.len().saturating_sub(1)).rev() {
                strides[d] = strides[d + 1] * first_shape[d + 1];
            }
            let steps = |axes: &[usize], var: &str, into: &str| -> String {
                axes.iter()
                    .rev()
                    .map(|&a| {
                        format!(
                            "        {into} = {into} + ({var} % {}u) * {}u;\n        {var} = {var} / {}u;\n",
                            first_shape[a], strides[a], first_shape[a]
                        )
                    })
                    .collect()
            };
            let kept: Vec<usize> = (0..first_shape.len()).filter(|d| !dims.contains(d)).collect();
            let count: usize = dims.iter().map(|&d| first_shape[d]).product();
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            b.uint("COUNT", count);
            b.float("INVERSE", 1.0 / count as f64);
            b.function(&format!(
                "fn value(i: u32) -> f32 {{\n    var rest = i;\n    var base = 0u;\n{}    var sum = 0.0;\n    for (var r = 0u; r < COUNT; r = r + 1u) {{\n        var q = r;\n        var offset = 0u;\n{}        sum = sum + load_x(base + offset);\n    }}\n    return sum * INVERSE;\n}}\n",
                steps(&kept, "rest", "base").replace("        ", "    "),
                steps(dims, "q", "offset")
            ));
            b.finish("elementwise", Grid::Invocations(total))?
        }
        Op::ScaleShift | Op::BatchNorm { .. } => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            b.uint("C", shape.get(1).copied().unwrap_or(1));
            b.uint("INNER", inner(shape));
            let expression = match &node.op {
                Op::BatchNorm { eps } => {
                    b.float("EPS", *eps);
                    "(load_x(i) - load_running_mean(c)) / sqrt(load_running_var(c) + EPS) * load_weight(c) + load_bias(c)"
                }
                _ => "load_x(i) * load_scale(c) + load_shift(c)",
            };
            b.function(&format!(
                "fn value(i: u32) -> f32 {{\n    let c = (i / INNER) % C;\n    return {expression};\n}}\n"
            ));
            b.finish("elementwise", Grid::Invocations(total))?
        }
        Op::Add | Op::Mul => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            let shapes: Vec<Vec<usize>> = operands.iter().map(|&o| graph.node(o).shape.clone()).collect();
            let combine = if matches!(node.op, Op::Add) { "+" } else { "*" };
            b.function(&broadcast_value(shape, &shapes, combine, &operand_name));
            b.finish("elementwise", Grid::Invocations(total))?
        }
        Op::Concat => {
            emit_concat(graph, id, &operands, activations, limits, &start, kernels)?;
            None
        }
        Op::Slice { .. } | Op::ChannelShuffle { .. } | Op::Permute { .. } | Op::Scale => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            b.function(&movement_value(&node.op, &first_shape, shape));
            b.finish("elementwise", Grid::Invocations(total))?
        }
        Op::LayerNorm { eps, axis } => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            let outer: usize = shape[..*axis].iter().product();
            let inner: usize = shape[axis + 1..].iter().product();
            b.uint("C", shape[*axis]);
            b.uint("INNER", inner);
            b.float("EPS", *eps);
            b.finish("layer_norm", Grid::Invocations((outer * inner) as u64))?
        }
        // Over the last `dims` dimensions: `[outer, count]` with the weight flattened.
        Op::LayerNormLast { eps, dims } => {
            let mut b = start(&node.name)?;
            with_operands(&mut b)?;
            let split = shape.len() - dims;
            b.uint("C", shape[split..].iter().product());
            b.uint("INNER", 1);
            b.float("EPS", *eps);
            b.finish("layer_norm", Grid::Invocations(shape[..split].iter().product::<usize>() as u64))?
        }
    };
    kernels.extend(kernel);
    Ok(())
}

fn emit_pool(
    mut b: KernelBuilder<'_>,
    pool: &Pool,
    is_max: bool,
    in_shape: &[usize],
    out_shape: &[usize],
    with_operands: &dyn Fn(&mut KernelBuilder<'_>) -> Result<(), String>,
    total: u64,
) -> Result<Option<Kernel>, String> {
    with_operands(&mut b)?;
    let (h, w) = (in_shape.get(2).copied().unwrap_or(1), in_shape.get(3).copied().unwrap_or(1));
    let (oh, ow) = (out_shape.get(2).copied().unwrap_or(1), out_shape.get(3).copied().unwrap_or(1));
    for (name, v) in [
        ("H", h),
        ("W", w),
        ("OH", oh),
        ("OW", ow),
        ("KH", pool.kernel.h),
        ("KW", pool.kernel.w),
        ("SH", pool.stride.h),
        ("SW", pool.stride.w),
        ("PT", pool.pad.top),
        ("PL", pool.pad.left),
        ("PB", pool.pad.bottom),
        ("PR", pool.pad.right),
        ("DH", pool.dilation.h),
        ("DW", pool.dilation.w),
    ] {
        b.uint(name, v);
    }
    b.boolean("IS_MAX", is_max);
    b.boolean("COUNT_PAD", pool.count_pad);
    b.finish("pool", Grid::Invocations(total))
}

/// `fn value(i: u32) -> f32` of the ops that read one input value per output value
/// elsewhere than at `i` (slice, channel_shuffle, permute) or scale it (scale).
fn movement_value(op: &Op, in_shape: &[usize], out_shape: &[usize]) -> String {
    let inner: usize = in_shape.iter().skip(2).product();
    let in_channels = in_shape.get(1).copied().unwrap_or(1);
    let body = match op {
        Op::Slice { start, len } => format!(
            "    let n = i / {part}u;\n    return load_x(n * {row}u + {offset}u + i % {part}u);\n",
            part = len * inner,
            row = in_channels * inner,
            offset = start * inner
        ),
        Op::ChannelShuffle { groups } => format!(
            "    let c = (i / {inner}u) % {in_channels}u;\n    let source = (c % {groups}u) * {per_group}u + c / {groups}u;\n    \
             return load_x(i - c * {inner}u + source * {inner}u);\n",
            per_group = in_channels / groups.max(&1)
        ),
        Op::Permute { perm } => {
            let rank = in_shape.len();
            let in_stride = |d: usize| in_shape[d + 1..].iter().product::<usize>();
            let mut body = String::new();
            let mut terms = Vec::new();
            for (d, &from) in perm.iter().enumerate().take(rank) {
                let out_stride: usize = out_shape[d + 1..].iter().product();
                let _ = writeln!(body, "    let d{d} = (i / {out_stride}u) % {}u;", out_shape[d].max(1));
                terms.push(format!("d{d} * {}u", in_stride(from)));
            }
            let _ = writeln!(body, "    return load_x({});", terms.join(" + "));
            body
        }
        _ => format!("    let c = (i / {inner}u) % {in_channels}u;\n    return load_x(i) * load_parameter(c);\n"),
    };
    format!("fn value(i: u32) -> f32 {{\n{body}}}\n")
}

/// `fn value(i: u32) -> f32` combining the operands elementwise, left to right, each
/// read with its broadcast strides (0 along a dimension of size 1).
fn broadcast_value(
    out_shape: &[usize],
    operand_shapes: &[Vec<usize>],
    combine: &str,
    operand_name: &dyn Fn(usize) -> String,
) -> String {
    let rank = out_shape.len();
    let mut body = String::new();
    let needs_indices = operand_shapes.iter().any(|s| s.as_slice() != out_shape);
    if needs_indices {
        for d in 0..rank {
            let stride: usize = out_shape[d + 1..].iter().product();
            let _ = writeln!(body, "    let d{d} = (i / {stride}u) % {}u;", out_shape[d].max(1));
        }
    }
    for (position, operand_shape) in operand_shapes.iter().enumerate() {
        let index = if operand_shape.as_slice() == out_shape {
            "i".to_string()
        } else {
            let mut terms = Vec::new();
            for d in 0..rank {
                if operand_shape.get(d).copied().unwrap_or(1) != 1 {
                    let stride: usize = operand_shape[d + 1..].iter().product();
                    terms.push(format!("d{d} * {stride}u"));
                }
            }
            if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
        };
        let load = format!("load_{}({index})", operand_name(position));
        if position == 0 {
            let _ = writeln!(body, "    var acc = {load};");
        } else {
            let _ = writeln!(body, "    acc = acc {combine} {load};");
        }
    }
    format!("fn value(i: u32) -> f32 {{\n{body}    return acc;\n}}\n")
}

/// Concatenation along dimension 1: one kernel per run of operands that fits the
/// device's binding budget (usually one for the whole concat).
fn emit_concat<'a>(
    graph: &Graph,
    id: NodeId,
    operands: &[NodeId],
    activations: &Activations,
    limits: &'a DeviceLimits,
    start: &dyn Fn(&str) -> Result<KernelBuilder<'a>, String>,
    kernels: &mut Vec<Kernel>,
) -> Result<(), String> {
    let node = graph.node(id);
    let batch = node.shape.first().copied().unwrap_or(1);
    let out_row: usize = node.shape.iter().skip(1).product();
    let rows: Vec<usize> = operands.iter().map(|&o| graph.node(o).shape.iter().skip(1).product()).collect();
    // Each activation binding covers at most this many elements.
    let bindings_for = |elements: u64| {
        let per_binding = (limits.max_storage_buffer_binding_size - limits.min_storage_buffer_offset_alignment) / 4;
        elements.div_ceil(per_binding.max(1)) as usize + 1
    };
    let budget = limits.max_storage_buffers_per_shader_stage as usize;
    let output_bindings = bindings_for(element_count(&node.shape)?);
    let segment_of =
        |id: NodeId| {
            activations.values.get(&id).copied().ok_or_else(|| {
                format!("internal error: layer `{}` reads a value that has no place in memory", node.name)
            })
        };
    // Where each operand's row starts in the output's row.
    let starts: Vec<usize> = rows.iter().scan(0, |start, row| Some(std::mem::replace(start, *start + row))).collect();
    // Operands the memory plan computed in their slice of the output already (concat
    // elimination, batch 1) are not copied; runs of the others are.
    let output = segment_of(id)?;
    let mut copied = Vec::new();
    for (position, &operand) in operands.iter().enumerate() {
        let segment = segment_of(operand)?;
        let in_place = batch == 1
            && segment.buffer == output.buffer
            && segment.byte_offset == output.byte_offset + 4 * starts[position] as u64;
        if !in_place {
            copied.push(position);
        }
    }
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let mut used = output_bindings;
    for position in copied {
        let need = bindings_for(element_count(&graph.node(operands[position]).shape)?);
        match runs.last_mut() {
            Some(run) if run.end == position && used + need <= budget => run.end = position + 1,
            _ => {
                runs.push(position..position + 1);
                used = output_bindings;
            }
        }
        used += need;
    }
    for run in runs {
        let part_offset = starts[run.start];
        let layer = if operands.len() == run.len() {
            node.name.clone()
        } else {
            format!("{} (operands {}..{})", node.name, run.start, run.end)
        };
        let mut b = start(&layer)?;
        let mut body = String::new();
        let mut before = 0;
        for (k, position) in run.clone().enumerate() {
            let name = if k == 0 { "x".to_string() } else { format!("x{k}") };
            b.loader(&name, &[segment_of(operands[position])?], false);
            let row = rows[position];
            let read = format!("return load_{name}(n * {row}u + r - {before}u);");
            if k + 1 < run.len() {
                let _ = writeln!(body, "    if (r < {}u) {{\n        {read}\n    }}", before + row);
            } else {
                let _ = writeln!(body, "    {read}");
            }
            before += row;
        }
        b.function(&format!("fn part_value(n: u32, r: u32) -> f32 {{\n{body}}}\n"));
        b.uint("OUT_ROW", out_row);
        b.uint("PART_ROW", before);
        b.uint("PART_OFFSET", part_offset);
        kernels.extend(b.finish("concat", Grid::Invocations((batch * before) as u64))?);
    }
    Ok(())
}

/// The weight a placement refers to, checked against the shape the plan laid out.
pub(crate) fn placed_weight<'g>(graph: &'g Graph, placement: &Placement) -> Result<&'g crate::tensor::Tensor, String> {
    let tensor = graph.weights.get(&placement.name).ok_or_else(|| format!("missing weight `{}`", placement.name))?;
    if tensor.shape != placement.shape || tensor.data.len() != placement.shape.iter().product::<usize>() {
        return Err(format!(
            "weight `{}` has shape {}, the graph needs {:?}",
            placement.name,
            tensor.shape_string(),
            placement.shape
        ));
    }
    Ok(tensor)
}
