//! The model as Cranelift functions and data, written once for any
//! `cranelift_module::Module` (the JIT and the object writer are thin wrappers).
//!
//! What gets defined, for a graph in topological order:
//! - one read-only data object per kernel that needs one (packed weights, window tables);
//! - one local function per node (a kernel) taking `(in, out, arena)`;
//! - `infer(in, out, arena) -> i32`, which calls the kernels in order and returns 0.
//!
//! Where every value lives ([`Layout`]): inputs one after another in the caller's input
//! buffer, outputs one after another in the output buffer (a node computes straight
//! into its output slot), intermediates at their memory-plan slots in the arena, and
//! after the plan's last byte (rounded to 64) the kernels' scratch space (padded conv
//! inputs), shared because kernels run one at a time.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, Function, GlobalValueData, InstBuilder, Signature, StackSlotData, StackSlotKind, Type, UserFuncName,
    types,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};

use super::kernels::conv::{ConvKernel, ConvShape, LinearKernel};
use super::kernels::depthwise::DepthwiseKernel;
use super::kernels::elementwise::{self, Combine};
use super::kernels::movement::{self, ChannelMap};
use super::kernels::normalize::{self, LayerNorm, Lrn};
use super::kernels::operands::{self, OperandSpec};
use super::kernels::pointwise::PointwiseKernel;
use super::kernels::pool::{PoolKernel, PoolKind};
use super::kernels::reduce;
use super::kernels::winograd::WinogradKernel;
use super::kernels::x86::{Simd, Ukernel};
use super::kernels::{Base, Kb, Loc, MathFns, MicroKernel};
use crate::ir::shape::as_4d;
use crate::ir::{Activation, Conv, Epilogue, Graph, Node, NodeId, Op, ParamRole};
use crate::passes::plan_memory::concat_is_free;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Cranelift's optimization level for the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClifOptLevel {
    None,
    Speed,
}

/// Knobs of the code generator; [`CodegenOptions::default`] is what `cnnc` uses.
///
/// The defaults come from `tests/cpu_backend.rs`'s `bench_*` runs (x86-64 with AVX2 and
/// FMA): Cranelift's `none` optimization level beats `speed` on these kernels (ResNet-18
/// 140 ms against 196 ms at batch 1) because the e-graph pass re-elaborates the unrolled
/// multiply-add chains one accumulator at a time, keeping every loaded value alive
/// across the whole step, and the register allocator then spills; `none` keeps the
/// emitted order, which is already the schedule. FMA is worth 20-30%.
#[derive(Clone, Debug)]
pub struct CodegenOptions {
    pub opt_level: ClifOptLevel,
    /// Fuse multiply-adds when the target has FMA (x86-64 with the `fma` feature,
    /// AArch64). Without it, or when false, a multiply and an add.
    pub fma: bool,
    /// Output channels per convolution block, in f32x4 vectors: the tile is 4 pixels by
    /// `4 * conv_vectors` channels, in `4 * conv_vectors` vector registers.
    pub conv_vectors: usize,
    /// How the convolution micro-kernel feeds its multiply-adds.
    pub micro_kernel: MicroKernel,
    /// Output features per fully connected block, in f32x4 vectors.
    pub linear_vectors: usize,
    /// Run convolutions and linear layers on the x86-64 machine-code micro-kernels
    /// (`kernels/x86.rs`) with the widest vectors the target has: AVX-512F, else AVX2
    /// with FMA.
    pub wide: bool,
    /// The x86-64 level to compile for (instead of the host's CPU, or a named triple's
    /// baseline).
    pub cpu: Option<CpuLevel>,
    /// Run 3x3 stride-1 convolutions with 32 or more input and output channels and 36
    /// (AVX2: 16) or more 2x2 output tiles by Winograd's F(2x2, 3x3) or F(4x4, 3x3)
    /// (`kernels/winograd.rs`) on AVX-512 and AVX2 targets, instead of directly: on
    /// AVX-512 F(2x2) 1.2 to 2 times faster on the 14x14 to 224x224 layers of VGG-16 and
    /// ResNet-18 (2 threads), F(4x4), where chosen, another 1.2 to 1.5 times on the
    /// 28x28 to 224x224 ones (one thread); on AVX2 (one thread) F(4x4) 2.0 to 2.8 times
    /// faster on their 14x14 to 224x224 layers, F(2x2) 2.2 times on ResNet-18's 7x7.
    pub winograd: bool,
    /// Run depthwise convolutions (one input and one output channel per group) on the
    /// depthwise bands (`kernels/depthwise.rs`) on AVX-512 and AVX2 targets, instead of
    /// the direct tiles, whose 16 (or 8) channel lanes a depthwise group fills one of.
    pub depthwise: bool,
    /// Which Winograd variant such a convolution runs: `None` chooses per layer by its
    /// shape (`WinogradKernel::tile_size`), `Some(true)` always F(4x4, 3x3), `Some(false)`
    /// always F(2x2, 3x3).
    pub winograd_f4: Option<bool>,
    /// Which kernels bf16 conv and linear layers run on ([`Bf16Tiles`]).
    pub bf16_tiles: Bf16Tiles,
    /// Run int8 convs and linear layers on the AVX-512 VNNI integer tiles
    /// (`kernels/int8.rs`, `vpdpbusd`) when the target has AVX512_VNNI (the host's ISA;
    /// no x86-64 level includes it); otherwise, or when false, on the f32 tiles fed the
    /// integers.
    pub vnni_tiles: bool,
    /// Run Cranelift's IR verifier on every function (slower compiles).
    pub verify: bool,
    /// Call `cnnc_profile_tick(kernel index)` between kernels (JIT only; see
    /// `JitModel::profile`).
    pub profile: bool,
}

/// Which kernels a bf16 conv or linear layer runs on: the `vdpbf16ps` tiles
/// (`kernels/bf16.rs`), which need the target to be this host with AVX-512 and
/// AVX512_BF16 (no `cpu` level named: none includes it), or the f32 kernels (every one
/// the layer's f32 twin would run: direct, pointwise, depthwise, Winograd, linear) over
/// bf16-rounded weights and an input rounded into scratch first.
///
/// Both give bf16's arithmetic: products of bf16 values (exact in f32) summed in f32.
/// Which is faster depends on the core:
/// - AMD Zen 4 runs AVX-512 FMAs as two 256-bit halves, so `vdpbf16ps` (two products per
///   lane) does twice their work: measured 234 against 117 GFLOP/s per core.
/// - An Intel Xeon with two 512-bit FMA units (Sapphire and Emerald Rapids) issues
///   `vdpbf16ps` on one port: measured 85 against 169 GFLOP/s per core, so the f32
///   kernels are twice as fast there (ResNet-50, one thread: 61 against 109 ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bf16Tiles {
    /// The `vdpbf16ps` tiles where the host has them and they outpace its FMAs
    /// ([`host_prefers_bf16_tiles`]: AMD cores), else the f32 kernels.
    #[default]
    Auto,
    /// The `vdpbf16ps` tiles wherever the host has them (for tests and measurements).
    Always,
    /// The f32 kernels over rounded operands.
    Never,
}

impl Default for CodegenOptions {
    fn default() -> CodegenOptions {
        CodegenOptions {
            opt_level: ClifOptLevel::None,
            fma: true,
            conv_vectors: 3,
            micro_kernel: MicroKernel::Shared,
            linear_vectors: 3,
            wide: true,
            winograd: true,
            depthwise: true,
            winograd_f4: None,
            cpu: None,
            bf16_tiles: Bf16Tiles::Auto,
            vnni_tiles: true,
            verify: cfg!(debug_assertions),
            profile: false,
        }
    }
}

/// An x86-64 micro-architecture level: which vector instructions the code may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuLevel {
    /// SSE4.2 and POPCNT: 128-bit vectors only.
    X86_64V2,
    /// + AVX, AVX2, FMA, BMI1/2, LZCNT: the AVX2 micro-kernels.
    X86_64V3,
    /// + AVX-512F/DQ/VL: the AVX-512 micro-kernels.
    X86_64V4,
}

impl CpuLevel {
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::X86_64V2 => "x86-64-v2",
            CpuLevel::X86_64V3 => "x86-64-v3",
            CpuLevel::X86_64V4 => "x86-64-v4",
        }
    }

    /// Cranelift's settings for the level.
    fn settings(self) -> &'static [&'static str] {
        match self {
            CpuLevel::X86_64V2 => &["x86-64-v2"],
            CpuLevel::X86_64V3 => &["x86-64-v3", "has_avx"],
            CpuLevel::X86_64V4 => &["x86-64-v4", "has_avx", "has_avx512f"],
        }
    }

    /// Whether this process's CPU runs code of the level.
    pub fn host_has(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                CpuLevel::X86_64V2 => has!("sse4.2") && has!("popcnt"),
                CpuLevel::X86_64V3 => {
                    has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("popcnt")
                }
                CpuLevel::X86_64V4 => {
                    CpuLevel::X86_64V3.host_has() && has!("avx512f") && has!("avx512dq") && has!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The target ISA: the host's, with every feature it has, or a named triple's
/// baseline (x86-64 with SSE4.2, the x86-64-v2 level; AArch64 with NEON), or either at
/// the x86-64 level `options.cpu`.
pub(crate) fn build_isa(triple: Option<&str>, options: &CodegenOptions, pic: bool) -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, name: &str, value: &str| {
        flags.set(name, value).map_err(|e| format!("internal error: Cranelift setting {name}={value}: {e}"))
    };
    let level = match options.opt_level {
        ClifOptLevel::None => "none",
        ClifOptLevel::Speed => "speed",
    };
    set(&mut flags, "opt_level", level)?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "enable_verifier", if options.verify { "true" } else { "false" })?;
    let mut builder = match triple {
        None if options.cpu.is_some() => cranelift_native::builder_with_options(false)
            .map_err(|e| format!("the host is not supported by Cranelift: {e}"))?,
        None => cranelift_native::builder().map_err(|e| format!("the host is not supported by Cranelift: {e}"))?,
        Some(name) => {
            // `isa::lookup_by_name` panics on a string that is no triple; parse it first.
            let parsed: target_lexicon::Triple = name
                .parse()
                .map_err(|e| format!("`{name}` is not a target triple ({e}); for example x86_64-unknown-linux-gnu"))?;
            let mut builder = cranelift_codegen::isa::lookup(parsed)
                .map_err(|e| format!("unsupported target triple `{name}`: {e}"))?;
            if builder.triple().endianness().is_ok_and(|e| format!("{e:?}") == "Big") {
                return Err(format!("target `{name}` is big-endian; the CPU backend packs weights little-endian"));
            }
            if builder.triple().architecture.to_string() == "x86_64" {
                for feature in ["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt"] {
                    builder.enable(feature).map_err(|e| format!("internal error: {feature}: {e}"))?;
                }
            }
            builder
        }
    };
    if let Some(level) = options.cpu {
        if builder.triple().architecture.to_string() != "x86_64" {
            return Err(format!("--cpu {} needs an x86-64 target, not {}", level.name(), builder.triple()));
        }
        for setting in level.settings() {
            builder.enable(setting).map_err(|e| format!("internal error: {setting}: {e}"))?;
        }
    }
    builder.finish(settings::Flags::new(flags)).map_err(|e| format!("cannot configure Cranelift: {e}"))
}

/// Whether an x86-64 ISA has a CPU feature (`has_fma`, `has_avx512f`, ...).
fn x64_has(isa: &dyn TargetIsa, flag: &str) -> bool {
    isa.name() == "x64" && isa.isa_flags().iter().any(|f| f.name == flag && f.as_bool() == Some(true))
}

/// Whether `fma` compiles to one instruction on this ISA.
pub(crate) fn has_native_fma(isa: &dyn TargetIsa) -> bool {
    isa.name() == "aarch64" || x64_has(isa, "has_fma")
}

/// Where the model's values live, and the sizes of the buffers.
pub(crate) struct Layout {
    locs: HashMap<NodeId, Loc>,
    /// Byte offset of each output in the output buffer, in `Graph::outputs` order.
    output_offsets: Vec<usize>,
    /// Where the scratch space starts in the arena.
    scratch_offset: usize,
}

fn bytes_of(shape: &[usize]) -> usize {
    4 * shape.iter().product::<usize>()
}

impl Layout {
    fn new(graph: &Graph) -> Result<Layout, String> {
        let plan = graph.memory.as_ref().ok_or("the graph has no memory plan (run passes::optimize first)")?;
        let mut locs = HashMap::new();
        let mut offset = 0;
        for &id in &graph.inputs {
            locs.insert(id, Loc { base: Base::Input, offset });
            offset += bytes_of(&graph.node(id).shape);
        }
        let input_bytes = offset;
        let mut output_offsets = Vec::new();
        let mut offset = 0;
        for output in &graph.outputs {
            locs.entry(output.node).or_insert(Loc { base: Base::Output, offset });
            output_offsets.push(offset);
            offset += bytes_of(&graph.node(output.node).shape);
        }
        let output_bytes = offset;
        for (&id, slot) in &plan.slots {
            locs.entry(id).or_insert(Loc { base: Base::Arena, offset: slot.offset });
        }
        let scratch_offset = plan.arena_bytes.div_ceil(64) * 64;
        // Every offset a kernel forms must fit Cranelift's 32-bit load/store immediates
        // comfortably; refuse larger models rather than wrap.
        const LIMIT: usize = 1 << 31;
        if input_bytes >= LIMIT || output_bytes >= LIMIT || scratch_offset >= LIMIT {
            return Err("the model's buffers exceed 2 GiB, more than the CPU backend supports".into());
        }
        Ok(Layout { locs, output_offsets, scratch_offset })
    }

    fn loc(&self, id: NodeId) -> Result<Loc, String> {
        self.locs.get(&id).copied().ok_or_else(|| format!("internal error: node {id:?} has no place in memory"))
    }
}

/// What [`define_model`] defined.
pub(crate) struct DefinedModel {
    pub infer: FuncId,
    pub infer_part: FuncId,
    pub arena_bytes: usize,
    /// What each kernel computes, in the order `infer` calls them.
    pub kernels: Vec<KernelInfo>,
}

/// What one kernel of the generated code computes, and how.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// `layer (op)`.
    pub name: String,
    /// The algorithm and micro-kernel chosen for it.
    pub algorithm: String,
    pub macs: u64,
}

/// A kernel's work, with its packed data.
enum Kernel {
    Conv(ConvKernel),
    Pointwise(PointwiseKernel),
    Depthwise(DepthwiseKernel),
    Winograd(WinogradKernel),
    Linear(LinearKernel),
    ScaleShift(Vec<f32>),
    Pool(PoolKernel),
    Activation(Activation),
    Copy,
    Broadcast(Combine),
    Concat,
    Softmax,
    Lrn(Lrn),
    /// Channel planes moved by a map (`slice`, `channel_shuffle`).
    Planes(ChannelMap),
    Permute(Vec<usize>),
    /// The normalization's shape; the data holds the weight and bias.
    LayerNorm(LayerNorm, Vec<f32>),
    /// `mean` over some dimensions; the data holds its offset tables.
    Mean(reduce::Mean, Vec<u8>),
}

impl Kernel {
    /// Moves the kernel's read-only data out (little-endian bytes), if it has any.
    fn take_data(&mut self) -> Option<Vec<u8>> {
        match self {
            Kernel::Conv(k) => Some(std::mem::take(&mut k.data)),
            Kernel::Pointwise(k) => Some(std::mem::take(&mut k.data)),
            Kernel::Depthwise(k) => Some(std::mem::take(&mut k.data)),
            Kernel::Winograd(k) => Some(std::mem::take(&mut k.data)),
            Kernel::Linear(k) => Some(std::mem::take(&mut k.data)),
            Kernel::ScaleShift(d) | Kernel::LayerNorm(_, d) => Some(d.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Kernel::Pool(p) => p.data(),
            Kernel::Mean(_, tables) => Some(std::mem::take(tables)),
            _ => None,
        }
    }

    fn scratch_bytes(&self) -> usize {
        match self {
            Kernel::Conv(k) => k.scratch_bytes(),
            Kernel::Linear(k) => k.scratch_bytes(),
            // A pool pads one plane at a time into each part's own plane.
            Kernel::Pool(p) => p.scratch_bytes() * MAX_PARTS,
            Kernel::Winograd(k) => k.scratch_bytes(),
            Kernel::Pointwise(k) => k.scratch_bytes(),
            Kernel::Depthwise(k) => k.scratch_bytes(),
            _ => 0,
        }
    }
}

/// The tensor of a node's parameter with the given role, checked against the shape the
/// op needs.
fn param<'g>(
    weights: &'g Weights,
    node: &Node,
    input_shape: &[usize],
    role: ParamRole,
) -> Result<Option<&'g Tensor>, String> {
    let Some((_, expected)) = node.op.param_shapes(input_shape).into_iter().find(|(r, _)| *r == role) else {
        return Ok(None);
    };
    let Some(p) = node.params.iter().find(|p| p.role == role) else {
        return Err(format!("layer `{}` has no `{}` parameter", node.name, role.suffix()));
    };
    let tensor = weights.get(&p.name).ok_or_else(|| format!("missing weight `{}`", p.name))?;
    if tensor.shape != expected || tensor.data.len() != expected.iter().product::<usize>() {
        return Err(format!("weight `{}` has shape {:?}, expected {:?}", p.name, tensor.shape, expected));
    }
    Ok(Some(tensor))
}

fn required<'g>(
    weights: &'g Weights,
    node: &Node,
    input_shape: &[usize],
    role: ParamRole,
) -> Result<&'g Tensor, String> {
    param(weights, node, input_shape, role)?
        .ok_or_else(|| format!("layer `{}` reads no `{}`", node.name, role.suffix()))
}

/// Chooses and prepares the kernel of a node, its weights read from `weights`.
fn prepare(
    graph: &Graph,
    weights: &Weights,
    id: NodeId,
    options: &CodegenOptions,
    simd: Option<Simd>,
    bf16: bool,
    vnni: bool,
) -> Result<Kernel, String> {
    let node = graph.node(id);
    // Graphs for this backend come from the generic pipeline, which has no fuse_pooling.
    if node.epilogue.pool.is_some() {
        return Err(format!("internal error: layer `{}`: the CPU backend cannot fuse pooling", node.name));
    }
    let operands = graph.op_operands(id);
    let x_shape = operands.first().map(|&o| graph.node(o).shape.clone()).unwrap_or_default();
    let kernel = match &node.op {
        Op::Input { .. } => return Err("internal error: inputs have no kernel".into()),
        Op::Conv(conv) => {
            let weight = required(weights, node, &x_shape, ParamRole::Weight)?;
            let bias = param(weights, node, &x_shape, ParamRole::Bias)?;
            let shape = ConvShape {
                batch: x_shape[0],
                in_channels: x_shape[1],
                in_h: x_shape[2],
                in_w: x_shape[3],
                out_channels: node.shape[1],
                out_h: node.shape[2],
                out_w: node.shape[3],
            };
            let bias = bias.map(|b| b.data.as_slice());
            // A bf16 layer on the f32 kernels: its weights rounded here, its input
            // rounded into scratch before the kernel runs (`define_model`).
            let on_f32_kernels = bf16_on_f32_kernels(node, &x_shape, options, simd, bf16);
            let precision = if on_f32_kernels { Precision::F32 } else { node.precision };
            let rounded: Vec<f32>;
            let weight_data = if on_f32_kernels {
                rounded = rounded_bf16(&weight.data);
                rounded.as_slice()
            } else {
                weight.data.as_slice()
            };
            // Other bf16 layers run on the `vdpbf16ps` tiles (`kernels::bf16`); an int8
            // layer on the integer tiles when they apply, on an AVX2 host or with VNNI
            // (`kernels::int8`), else on the direct tiles over its quantized operands.
            let vectors = options.conv_vectors.max(1);
            // Depthwise layers on the depthwise bands in f32 and int8: over a quantized
            // copy of each plane for int8 (the direct tiles fill one of their channel
            // lanes and ran them 10-15x slower than f32). In f32 after the linear and
            // pointwise kernels, which take a single channel's 1x1.
            let depthwise_simd = simd.filter(|_| options.depthwise && DepthwiseKernel::applies(conv, &x_shape));
            let depthwise = |simd| {
                let shape = (x_shape[0], x_shape[1], (x_shape[2], x_shape[3]), (node.shape[2], node.shape[3]));
                let kernel = DepthwiseKernel::new(simd, conv, shape, weight_data, bias, &node.epilogue, precision);
                Ok(Kernel::Depthwise(kernel))
            };
            if let Some(simd) = depthwise_simd.filter(|_| precision.is_int8()) {
                return depthwise(simd);
            }
            if precision == Precision::Bf16 {
                // Pointwise layers on large planes on the pixel-lane tiles, which store
                // without transposes (their short reductions made the channel-lane
                // tiles' stores the cost), the others on the direct tiles.
                let epilogue = Epilogue { gate: false, ..node.epilogue.clone() };
                if PointwiseKernel::bf16_applies(conv, &epilogue, shape.out_h * shape.out_w) {
                    let shape = (x_shape[0], x_shape[1], node.shape[1], node.shape[2] * node.shape[3]);
                    return Ok(Kernel::Pointwise(PointwiseKernel::bf16(shape, &weight.data, bias, &epilogue)));
                }
                return Ok(Kernel::Conv(ConvKernel::bf16(conv, shape, &weight.data, bias)));
            }
            if precision.is_int8() {
                // The integer tiles: AVX2's pairs, or with AVX512_VNNI the AVX-512 quads.
                let integer_tiles = simd.is_some_and(|simd| ConvKernel::int8_tiles_apply(conv, x_shape[1], simd))
                    && (simd == Some(Simd::Avx2) || vnni);
                let tiles = if integer_tiles { simd } else { reduced_precision_simd(simd) };
                let kernel = ConvKernel::new(conv, shape, &weight.data, bias, vectors, tiles, precision);
                if integer_tiles {
                    return Ok(Kernel::Conv(kernel.with_int8_tiles(&weight.data, bias, &node.epilogue)));
                }
                return Ok(Kernel::Conv(kernel));
            }
            if simd.is_some() && applies_as_linear(conv, &shape) {
                let kernel = LinearKernel::new(
                    shape.batch,
                    weight_data,
                    bias,
                    shape.out_channels,
                    options.linear_vectors.max(1),
                    simd,
                    Precision::F32,
                );
                return Ok(Kernel::Linear(kernel));
            }
            // A gate multiplies the input before a bf16 layer rounds it: not in the kernel.
            let epilogue = Epilogue { gate: node.epilogue.gate && !on_f32_kernels, ..node.epilogue.clone() };
            if let Some(simd) = simd.filter(|&simd| PointwiseKernel::applies(simd, conv, &epilogue)) {
                let shape = (x_shape[0], x_shape[1], node.shape[1], node.shape[2] * node.shape[3]);
                return Ok(Kernel::Pointwise(PointwiseKernel::new(simd, shape, weight_data, bias, &epilogue)));
            }
            if let Some(simd) = depthwise_simd {
                return depthwise(simd);
            }
            if let Some(simd) = simd.filter(|&simd| options.winograd && WinogradKernel::applies(simd, conv, &shape)) {
                let m = WinogradKernel::tile_size(simd, &shape, options.winograd_f4);
                return Ok(Kernel::Winograd(WinogradKernel::new(simd, conv, shape, m, weight_data, bias)));
            }
            Kernel::Conv(
                ConvKernel::new(conv, shape, weight_data, bias, options.conv_vectors.max(1), simd, Precision::F32)
                    .with_register_activation(&node.epilogue),
            )
        }
        Op::Linear { out_features, .. } => {
            let weight = required(weights, node, &x_shape, ParamRole::Weight)?;
            let bias = param(weights, node, &x_shape, ParamRole::Bias)?.map(|b| b.data.as_slice());
            // Every dimension but the last indexes rows.
            let rows = x_shape[..x_shape.len() - 1].iter().product();
            let in_features = x_shape.last().copied().unwrap_or(0);
            // A bf16 layer runs on the `vdpbf16ps` tiles (`kernels::bf16`) or on the f32
            // tiles over rounded operands (its input rounded into scratch by
            // `define_model`); an int8 one on the integer tiles on an AVX2 host (or with
            // VNNI; `kernels::int8`), else on the f32 tiles of at most AVX2 over its
            // quantized operands.
            if node.precision == Precision::Bf16 {
                if bf16_on_f32_kernels(node, &x_shape, options, simd, bf16) {
                    let rounded = rounded_bf16(&weight.data);
                    let vectors = options.linear_vectors.max(1);
                    let kernel = LinearKernel::new(rows, &rounded, bias, *out_features, vectors, simd, Precision::F32);
                    return Ok(Kernel::Linear(kernel));
                }
                return Ok(Kernel::Linear(LinearKernel::bf16(rows, &weight.data, bias, *out_features)));
            }
            let integer_tiles = node.precision.is_int8()
                && LinearKernel::int8_tiles_apply(in_features)
                && (simd == Some(Simd::Avx2) || vnni);
            let tiles = match node.precision {
                Precision::F32 => simd,
                _ if integer_tiles => simd,
                _ => reduced_precision_simd(simd),
            };
            let vectors = options.linear_vectors.max(1);
            let kernel = LinearKernel::new(rows, &weight.data, bias, *out_features, vectors, tiles, node.precision);
            if integer_tiles {
                Kernel::Linear(kernel.with_int8_tiles(&weight.data, bias))
            } else {
                Kernel::Linear(kernel)
            }
        }
        Op::ScaleShift => {
            let scale = required(weights, node, &x_shape, ParamRole::Scale)?;
            let shift = required(weights, node, &x_shape, ParamRole::Shift)?;
            Kernel::ScaleShift(scale.data.iter().chain(&shift.data).copied().collect())
        }
        Op::BatchNorm { eps } => {
            // Unoptimized graphs: the same per-channel affine map, computed here.
            let gamma = required(weights, node, &x_shape, ParamRole::Weight)?;
            let beta = required(weights, node, &x_shape, ParamRole::Bias)?;
            let mean = required(weights, node, &x_shape, ParamRole::RunningMean)?;
            let var = required(weights, node, &x_shape, ParamRole::RunningVar)?;
            let scale: Vec<f32> =
                gamma.data.iter().zip(&var.data).map(|(g, v)| (*g as f64 / (*v as f64 + eps).sqrt()) as f32).collect();
            let shift: Vec<f32> = beta
                .data
                .iter()
                .zip(&mean.data)
                .zip(&scale)
                .map(|((b, m), s)| (*b as f64 - *m as f64 * *s as f64) as f32)
                .collect();
            Kernel::ScaleShift(scale.into_iter().chain(shift).collect())
        }
        Op::Activation(activation) => Kernel::Activation(*activation),
        Op::Flatten
        | Op::Reshape { .. }
        | Op::Identity
        | Op::Dropout { .. }
        | Op::Dropout2d { .. }
        | Op::StochasticDepth { .. } => Kernel::Copy,
        Op::Softmax => Kernel::Softmax,
        Op::Mean { dims, .. } => {
            let (mean, tables) = reduce::Mean::new(&x_shape, dims);
            Kernel::Mean(mean, tables)
        }
        // 1-D pooling on [N, C, L] runs as the 2-D pooling of [N, C, 1, L].
        Op::MaxPool(pool) => {
            let (x_shape, shape) = (as_4d(&x_shape), as_4d(&node.shape));
            Kernel::Pool(PoolKernel::window(PoolKind::Max, pool, &x_shape, (shape[2], shape[3])).with_simd(simd))
        }
        Op::AvgPool(pool) => {
            let (x_shape, shape) = (as_4d(&x_shape), as_4d(&node.shape));
            Kernel::Pool(PoolKernel::window(PoolKind::Avg, pool, &x_shape, (shape[2], shape[3])))
        }
        Op::GlobalAvgPool => Kernel::Pool(PoolKernel::global(PoolKind::Avg, &x_shape)),
        Op::GlobalMaxPool => Kernel::Pool(PoolKernel::global(PoolKind::Max, &x_shape)),
        Op::AdaptiveAvgPool { .. } => Kernel::Pool(PoolKernel::adaptive(&x_shape, (node.shape[2], node.shape[3]))),
        Op::Add => Kernel::Broadcast(Combine::Add),
        Op::Mul => Kernel::Broadcast(Combine::Mul),
        Op::Concat => Kernel::Concat,
        Op::Lrn { size, alpha, beta, k } => Kernel::Lrn(Lrn { size: *size, alpha: *alpha, beta: *beta, k: *k }),
        Op::Slice { start, .. } => Kernel::Planes(ChannelMap::Slice { start: *start }),
        Op::ChannelShuffle { groups } => Kernel::Planes(ChannelMap::Shuffle { groups: *groups }),
        Op::Permute { perm } => Kernel::Permute(perm.clone()),
        Op::LayerNorm { eps, axis } => {
            let weight = required(weights, node, &x_shape, ParamRole::Weight)?;
            let bias = required(weights, node, &x_shape, ParamRole::Bias)?;
            let shape = LayerNorm {
                outer: x_shape[..*axis].iter().product(),
                count: x_shape[*axis],
                inner: x_shape[axis + 1..].iter().product(),
                eps: *eps,
            };
            Kernel::LayerNorm(shape, weight.data.iter().chain(&bias.data).copied().collect())
        }
        // Over the last `dims` dimensions: one row of their values per outer index.
        Op::LayerNormLast { eps, dims } => {
            let weight = required(weights, node, &x_shape, ParamRole::Weight)?;
            let bias = required(weights, node, &x_shape, ParamRole::Bias)?;
            let split = x_shape.len() - dims;
            let shape = LayerNorm {
                outer: x_shape[..split].iter().product(),
                count: x_shape[split..].iter().product(),
                inner: 1,
                eps: *eps,
            };
            Kernel::LayerNorm(shape, weight.data.iter().chain(&bias.data).copied().collect())
        }
        // A scale-shift with no shift: `x * s + 0` rounds as `x * s`.
        Op::Scale => {
            let scale = required(weights, node, &x_shape, ParamRole::Parameter)?;
            Kernel::ScaleShift(scale.data.iter().copied().chain(std::iter::repeat_n(0.0, scale.data.len())).collect())
        }
    };
    // Only convolutions and linear layers carry a residual; others at most activations.
    let epilogue_ok = match kernel {
        Kernel::Conv(_) | Kernel::Linear(_) | Kernel::Pointwise(_) | Kernel::Depthwise(_) | Kernel::Winograd(_) => true,
        Kernel::ScaleShift(_) | Kernel::Broadcast(_) => !node.epilogue.residual,
        _ => node.epilogue.is_empty(),
    };
    if !epilogue_ok {
        return Err(format!(
            "internal error: layer `{}` ({}) has an epilogue the CPU backend cannot fuse",
            node.name,
            node.op.mnemonic()
        ));
    }
    Ok(kernel)
}

/// The most parts (threads) `infer_part` accepts: pooling kernels keep a scratch plane
/// per part.
pub const MAX_PARTS: usize = 16;

/// The signatures: `infer(in, out, arena) -> i32`, every kernel's and
/// `infer_part`'s `(in, out, arena, part, parts, sync, sync_ctx)` (`-> i32` for
/// `infer_part`), and `sync(sync_ctx)`.
fn signature(ptr: Type, call_conv: CallConv, params: usize, returns: bool) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..params {
        sig.params.push(AbiParam::new(ptr));
    }
    if returns {
        sig.returns.push(AbiParam::new(types::I32));
    }
    sig
}

/// How `define_model` names and links what it defines.
pub(crate) struct Symbols<'a> {
    /// The prefix of the local symbols (kernels, data).
    pub prefix: &'a str,
    pub infer_name: &'a str,
    pub infer_part_name: &'a str,
    pub infer_linkage: Linkage,
    /// Whether the weights may lie more than 2 GiB from the code (the JIT allocates them
    /// apart), so that kernels must reach them by absolute address.
    pub far_data: bool,
}

/// Defines the model's kernels, data and `infer` in `module`.
///
/// The weights are read from `graph.weights`, or from `owned` when given: the weights
/// taken out of the graph, each layer's tensors dropped as soon as they are packed, so
/// that a large network is not held three times over (as given, packed, and in the
/// module's data) while it compiles.
pub(crate) fn define_model<M: Module>(
    module: &mut M,
    graph: &Graph,
    mut owned: Option<&mut Weights>,
    options: &CodegenOptions,
    symbols: &Symbols,
) -> Result<DefinedModel, String> {
    let Symbols { prefix, infer_name, infer_part_name, infer_linkage: linkage, far_data } = *symbols;
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let layout = Layout::new(graph)?;
    let ptr = module.target_config().pointer_type();
    let fma = options.fma && has_native_fma(module.isa());
    let simd = match (options.wide && fma, module.isa()) {
        (true, isa) if x64_has(isa, "has_avx512f") => Some(Simd::Avx512),
        (true, isa) if x64_has(isa, "has_avx2") => Some(Simd::Avx2),
        _ => None,
    };
    let bf16 = bf16_tiles(options, simd);
    // int8 layers on the AVX-512 VNNI tiles (`kernels::int8`) where the ISA has them.
    let vnni = options.vnni_tiles && simd == Some(Simd::Avx512) && x64_has(module.isa(), "has_avx512vnni");
    // The micro-kernels are written for the System V convention.
    let tile_sig = |arguments: usize, returns: bool| signature(ptr, CallConv::SystemV, arguments, returns);
    let module_error = |e: cranelift_module::ModuleError| format!("internal error: Cranelift: {e:?}");

    // The C math functions.
    let mut unary = Signature::new(module.isa().default_call_conv());
    unary.params.push(AbiParam::new(types::F32));
    unary.returns.push(AbiParam::new(types::F32));
    let mut binary = unary.clone();
    binary.params.push(AbiParam::new(types::F32));
    let expf = module.declare_function("expf", Linkage::Import, &unary).map_err(module_error)?;
    let powf = module.declare_function("powf", Linkage::Import, &binary).map_err(module_error)?;

    let call_conv = module.isa().default_call_conv();
    let kernel_sig = signature(ptr, call_conv, 7, false);
    let sync_sig = signature(ptr, call_conv, 1, false);
    let mut ctx = module.make_context();
    let mut builder_ctx = FunctionBuilderContext::new();
    let mut kernels: Vec<(FuncId, KernelInfo)> = Vec::new();
    let mut scratch_bytes = 0usize;

    // Defines one kernel function; `emit` fills its body.
    let mut define_kernel = |module: &mut M,
                             name: String,
                             data: Option<DataId>,
                             tiles: &[(Ukernel, FuncId)],
                             emit: &mut dyn FnMut(&mut Kb)|
     -> Result<FuncId, String> {
        let func_id = module.declare_function(&name, Linkage::Local, &kernel_sig).map_err(module_error)?;
        ctx.func = Function::with_name_signature(UserFuncName::user(0, func_id.as_u32()), kernel_sig.clone());
        let mut fb = FunctionBuilder::new(&mut ctx.func, &mut builder_ctx);
        let entry = fb.create_block();
        fb.append_block_params_for_function_params(entry);
        fb.switch_to_block(entry);
        fb.seal_block(entry);
        let params = fb.block_params(entry).to_vec();
        let math = MathFns {
            expf: module.declare_func_in_func(expf, fb.func),
            powf: module.declare_func_in_func(powf, fb.func),
        };
        let data = data.map(|d| {
            let gv = module.declare_data_in_func(d, fb.func);
            if far_data && let GlobalValueData::Symbol { colocated, .. } = &mut fb.func.global_values[gv] {
                // A 64-bit absolute address instead of a 32-bit PC-relative one.
                *colocated = false;
            }
            fb.ins().symbol_value(ptr, gv)
        });
        let sync_sig = fb.import_signature(sync_sig.clone());
        let tiles = tiles.iter().map(|(spec, id)| (spec.clone(), module.declare_func_in_func(*id, fb.func))).collect();
        let mut kb = Kb {
            fb,
            ptr,
            fma,
            micro_kernel: options.micro_kernel,
            bases: [params[0], params[1], params[2]],
            part: params[3],
            parts: params[4],
            sync: params[5],
            sync_ctx: params[6],
            sync_sig,
            math,
            data,
            tiles,
            simd,
            tile_slot: None,
        };
        emit(&mut kb);
        kb.fb.ins().return_(&[]);
        kb.fb.finalize(module.target_config());
        module.define_function(func_id, &mut ctx).map_err(|e| format!("internal error: Cranelift: {e:?}"))?;
        module.clear_context(&mut ctx);
        Ok(func_id)
    };

    // Kernels are defined largest weights first (then in order), and run in order. Each
    // layer's packed data exists twice while the module copies it in, on top of the data
    // defined before it and the weights not yet packed: the largest layer first keeps
    // that peak lowest (VGG-16's 411 MB `classifier.0` first: peak RSS 1099 -> 950 MB).
    let weight_floats =
        |id: NodeId| -> usize { graph.node(id).params.iter().map(|p| p.shape.iter().product::<usize>()).sum() };
    let mut schedule: Vec<usize> = (0..order.len()).collect();
    schedule.sort_by_key(|&index| std::cmp::Reverse(weight_floats(order[index])));
    let mut defined: Vec<Option<(FuncId, KernelInfo)>> = vec![None; order.len()];
    for index in schedule {
        let id = order[index];
        let node = graph.node(id);
        // Inputs have no kernel, nor do concats whose operands were all computed in
        // their slices (concat elimination).
        if matches!(node.op, Op::Input { .. }) || concat_is_free(graph, id) {
            continue;
        }
        if bytes_of(&node.shape) >= 1 << 31 {
            return Err(format!("layer `{}` is larger than 2 GiB, more than the CPU backend supports", node.name));
        }
        let mut kernel = prepare(graph, owned.as_deref().unwrap_or(&graph.weights), id, options, simd, bf16, vnni)?;
        if let Some(weights) = owned.as_deref_mut() {
            for param in &node.params {
                weights.tensors.remove(&param.name);
            }
        }
        // The kernel's machine-code micro-kernels.
        let mut tiles = Vec::new();
        // A bf16 layer on the f32 kernels reads its input rounded into scratch.
        let x_shape = graph.op_operands(id).first().map(|&o| graph.node(o).shape.clone()).unwrap_or_default();
        let rounds = bf16_on_f32_kernels(node, &x_shape, options, simd, bf16);
        let rounding = rounding_spec(&x_shape, options, simd).filter(|_| rounds);
        let mut specs = match &kernel {
            Kernel::Conv(k) => k.tile_specs(),
            Kernel::Pointwise(k) => k.tile_specs(),
            Kernel::Depthwise(k) => k.tile_specs(),
            Kernel::Winograd(k) => k.tile_specs(),
            Kernel::Linear(k) => k.tile_specs(),
            Kernel::Pool(k) => k.tile_specs(),
            _ => Vec::new(),
        };
        specs.extend(rounding.clone().map(Ukernel::Operands));
        for spec in specs.into_iter().filter(Ukernel::fits) {
            let bytes = spec.assemble()?;
            let name = format!("{prefix}_k{index}_tile{}", tiles.len());
            let func = module
                .declare_function(&name, Linkage::Local, &tile_sig(spec.arguments(), spec.returns()))
                .map_err(module_error)?;
            module.define_function_bytes(func, 64, &bytes, &[]).map_err(module_error)?;
            tiles.push((spec, func));
        }
        let data = match kernel.take_data() {
            Some(bytes) => {
                let data_id = module
                    .declare_data(&format!("{prefix}_data{index}"), Linkage::Local, false, false)
                    .map_err(module_error)?;
                let mut description = DataDescription::new();
                description.define(bytes.into_boxed_slice());
                description.set_align(64);
                module.define_data(data_id, &description).map_err(module_error)?;
                Some(data_id)
            }
            None => None,
        };
        let mut operands: Vec<(Loc, &[usize])> = graph
            .op_operands(id)
            .into_iter()
            .map(|o| Ok((layout.loc(o)?, graph.node(o).shape.as_slice())))
            .collect::<Result<_, String>>()?;
        let residual = graph.residual(id).map(|r| layout.loc(r)).transpose()?;
        let out = layout.loc(id)?;
        let scratch = Loc { base: Base::Arena, offset: layout.scratch_offset };
        let gate = match graph.gate(id) {
            Some(g) => Some((layout.loc(g)?, graph.node(g).shape.as_slice())),
            None => None,
        };
        // A gate the kernel does not take itself: the input times the gate is written
        // into scratch past the kernel's own, and the kernel reads it from there.
        let (kernel_gate, gated_input) = match gate {
            Some((loc, _)) if matches!(&kernel, Kernel::Pointwise(k) if k.gated()) => (Some(loc), None),
            Some(gate) => {
                let own = kernel.scratch_bytes().div_ceil(64) * 64;
                let gated = Loc { base: Base::Arena, offset: layout.scratch_offset + own };
                let x = *operands
                    .first()
                    .ok_or_else(|| format!("internal error: gated layer `{}` has no input", node.name))?;
                scratch_bytes = scratch_bytes.max(own + bytes_of(x.1));
                operands[0].0 = gated;
                (None, Some((x, gate, gated)))
            }
            None => (None, None),
        };
        scratch_bytes = scratch_bytes.max(kernel.scratch_bytes());
        // The rounded input past the kernel's own scratch and the gated input.
        let rounded_input = rounds.then(|| {
            let own = kernel.scratch_bytes().div_ceil(64) * 64;
            let gated = gated_input.map_or(0, |(x, _, _)| bytes_of(x.1).div_ceil(64) * 64);
            let x = operands[0];
            scratch_bytes = scratch_bytes.max(own + gated + bytes_of(x.1));
            let rounded = Loc { base: Base::Arena, offset: layout.scratch_offset + own + gated };
            operands[0].0 = rounded;
            (x, rounded)
        });
        let name = format!("{prefix}_k{index}_{}", node.op.mnemonic());
        let func = define_kernel(module, name, data, &tiles, &mut |kb| {
            if let Some((x, gate, gated)) = gated_input {
                elementwise::emit_broadcast(kb, Combine::Mul, x.1, &[x, gate], gated, &Epilogue::default());
                kb.sync();
            }
            if let Some((x, rounded)) = rounded_input {
                // The gated input where there is one.
                let from = gated_input.map_or(x.0, |(_, _, gated)| gated);
                emit_rounded_input(kb, from, x.1, rounded, rounding.as_ref());
            }
            let beside = Beside { residual, gate: kernel_gate };
            emit_kernel(kb, &kernel, node, &operands, beside, out, scratch)
        })?;
        let algorithm = match &kernel {
            Kernel::Conv(k) => k.algorithm(!tiles.is_empty()),
            Kernel::Pointwise(k) => k.algorithm(),
            Kernel::Depthwise(k) => k.algorithm(),
            Kernel::Winograd(k) => k.algorithm(),
            Kernel::Linear(k) => k.algorithm(!tiles.is_empty()),
            Kernel::Pool(p) => p.algorithm(),
            Kernel::Softmax | Kernel::Lrn(_) => "elementwise (one thread)".into(),
            _ => "elementwise".into(),
        };
        let algorithm = if rounds { algorithm + ", bf16 operands (input rounded first)" } else { algorithm };
        let info = KernelInfo {
            name: format!("{} ({})", node.name, node.op.mnemonic()),
            algorithm,
            macs: crate::summary::macs(graph, id),
        };
        defined[index] = Some((func, info));
    }
    kernels.extend(defined.into_iter().flatten());

    // Outputs whose value lives elsewhere (an input, or a node listed twice): copies.
    for (position, output) in graph.outputs.iter().enumerate() {
        let home = layout.loc(output.node)?;
        let target = Loc { base: Base::Output, offset: layout.output_offsets[position] };
        if home != target {
            let floats = graph.node(output.node).shape.iter().product();
            let name = format!("{prefix}_output{position}");
            let func =
                define_kernel(module, name, None, &[], &mut |kb| elementwise::emit_copy(kb, home, target, floats))?;
            let info = KernelInfo { name: format!("{} (output copy)", output.name), algorithm: "copy".into(), macs: 0 };
            kernels.push((func, info));
        }
    }

    // `infer`: the kernels in order, with `cnnc_profile_tick(kernel index)` before each
    // one and at the end when profiling.
    let profile_tick = if options.profile {
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params.push(AbiParam::new(types::I32));
        Some(module.declare_function("cnnc_profile_tick", Linkage::Import, &sig).map_err(module_error)?)
    } else {
        None
    };
    // `infer` runs every kernel as the only part; `infer_part` runs this part's share
    // of each and waits at the barrier after it.
    let infer_sig = signature(ptr, call_conv, 3, true);
    let infer_part_sig = signature(ptr, call_conv, 7, true);
    let infer = module.declare_function(infer_name, linkage, &infer_sig).map_err(module_error)?;
    let infer_part = module.declare_function(infer_part_name, linkage, &infer_part_sig).map_err(module_error)?;
    // On x86-64 both run their kernels with denormals flushed to zero
    // (`x86::assemble_flush_enter`), the caller's MXCSR restored before they return.
    let flush = if module.isa().triple().architecture.to_string() == "x86_64" {
        let mut define = |name: &str, bytes: Vec<u8>| -> Result<FuncId, String> {
            let func = module.declare_function(name, Linkage::Local, &tile_sig(1, false)).map_err(module_error)?;
            module.define_function_bytes(func, 16, &bytes, &[]).map_err(module_error)?;
            Ok(func)
        };
        let enter = define(&format!("{prefix}_flush_enter"), super::kernels::x86::assemble_flush_enter()?)?;
        let leave = define(&format!("{prefix}_flush_leave"), super::kernels::x86::assemble_flush_leave()?)?;
        Some((enter, leave))
    } else {
        None
    };
    for (func_id, sig, parallel) in [(infer, infer_sig, false), (infer_part, infer_part_sig, true)] {
        ctx.func = Function::with_name_signature(UserFuncName::user(0, func_id.as_u32()), sig);
        let mut fb = FunctionBuilder::new(&mut ctx.func, &mut builder_ctx);
        let entry = fb.create_block();
        fb.append_block_params_for_function_params(entry);
        fb.switch_to_block(entry);
        fb.seal_block(entry);
        let mut params = fb.block_params(entry).to_vec();
        if parallel {
            // part < parts <= MAX_PARTS, else status 1.
            let (part, parts) = (params[3], params[4]);
            let part_ok = fb.ins().icmp(IntCC::UnsignedLessThan, part, parts);
            let parts_ok = fb.ins().icmp_imm_u(IntCC::UnsignedLessThanOrEqual, parts, MAX_PARTS as i64);
            let ok = fb.ins().band(part_ok, parts_ok);
            let run = fb.create_block();
            let fail = fb.create_block();
            fb.ins().brif(ok, run, &[], fail, &[]);
            fb.switch_to_block(fail);
            fb.seal_block(fail);
            let one = fb.ins().iconst(types::I32, 1);
            fb.ins().return_(&[one]);
            fb.switch_to_block(run);
            fb.seal_block(run);
        } else {
            let zero = fb.ins().iconst(ptr, 0);
            let one = fb.ins().iconst(ptr, 1);
            params.extend([zero, one, zero, zero]);
        }
        let sync = fb.import_signature(sync_sig.clone());
        // The call that gives the caller's MXCSR back, with its saved value.
        let leave = match flush {
            Some((enter, leave)) => {
                let slot = fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 4, 2));
                let saved = fb.ins().stack_addr(ptr, slot, 0);
                let enter = module.declare_func_in_func(enter, fb.func);
                fb.ins().call(enter, &[saved]);
                Some((module.declare_func_in_func(leave, fb.func), saved))
            }
            None => None,
        };
        let tick = match profile_tick {
            Some(id) => Some(module.declare_func_in_func(id, fb.func)),
            None => None,
        };
        for (index, (kernel, _)) in kernels.iter().enumerate() {
            if let Some(tick) = tick {
                let index = fb.ins().iconst(types::I32, index as i64);
                fb.ins().call(tick, &[index]);
            }
            let callee = module.declare_func_in_func(*kernel, fb.func);
            fb.ins().call(callee, &params);
            if parallel {
                fb.ins().call_indirect(sync, params[5], &[params[6]]);
            }
        }
        if let Some(tick) = tick {
            let index = fb.ins().iconst(types::I32, kernels.len() as i64);
            fb.ins().call(tick, &[index]);
        }
        if let Some((leave, saved)) = leave {
            fb.ins().call(leave, &[saved]);
        }
        let zero = fb.ins().iconst(types::I32, 0);
        fb.ins().return_(&[zero]);
        fb.finalize(module.target_config());
        module.define_function(func_id, &mut ctx).map_err(|e| format!("internal error: Cranelift: {e:?}"))?;
        module.clear_context(&mut ctx);
    }

    let arena_bytes = if scratch_bytes > 0 {
        layout.scratch_offset + scratch_bytes
    } else {
        graph.memory.as_ref().map_or(0, |m| m.arena_bytes)
    };
    if arena_bytes >= 1 << 31 {
        return Err("the model's arena exceeds 2 GiB, more than the CPU backend supports".into());
    }
    let kernels = kernels.into_iter().map(|(_, info)| info).collect();
    Ok(DefinedModel { infer, infer_part, arena_bytes, kernels })
}

/// The operands a kernel reads beside the op's own: the residual its epilogue adds, and
/// the gate it multiplies its input by where it takes that itself.
#[derive(Clone, Copy)]
struct Beside {
    residual: Option<Loc>,
    gate: Option<Loc>,
}

/// Emits the body of one node's kernel.
fn emit_kernel(
    kb: &mut Kb,
    kernel: &Kernel,
    node: &Node,
    operands: &[(Loc, &[usize])],
    beside: Beside,
    out: Loc,
    scratch: Loc,
) {
    let Beside { residual, gate } = beside;
    let epilogue: &Epilogue = &node.epilogue;
    let count: usize = node.shape.iter().product();
    match kernel {
        Kernel::Conv(conv) => conv.emit(kb, operands[0].0, out, residual, scratch, epilogue),
        Kernel::Pointwise(k) => k.emit(kb, operands[0].0, out, residual, scratch, gate),
        Kernel::Depthwise(k) => k.emit(kb, operands[0].0, out, residual, scratch),
        Kernel::Winograd(k) => k.emit(kb, operands[0].0, out, residual, scratch, epilogue),
        Kernel::Linear(linear) => linear.emit(kb, operands[0].0, out, residual, scratch, epilogue),
        Kernel::Pool(pool) => pool.emit(kb, operands[0].0, out, scratch),
        Kernel::ScaleShift(_) => elementwise::emit_scale_shift(kb, &node.shape, operands[0].0, out, epilogue),
        Kernel::Activation(activation) => elementwise::emit_activation(kb, *activation, operands[0].0, out, count),
        Kernel::Copy => elementwise::emit_copy(kb, operands[0].0, out, count),
        Kernel::Planes(map) => {
            movement::emit_channel_planes(kb, *map, operands[0].1, node.shape[1], operands[0].0, out)
        }
        Kernel::Permute(perm) => movement::emit_permute(kb, operands[0].1, perm, operands[0].0, out),
        Kernel::LayerNorm(shape, _) => normalize::emit_layer_norm(kb, shape, operands[0].0, out),
        Kernel::Mean(mean, _) => reduce::emit_mean(kb, mean, operands[0].0, out),
        Kernel::Broadcast(combine) => elementwise::emit_broadcast(kb, *combine, &node.shape, operands, out, epilogue),
        Kernel::Concat => {
            let batch = node.shape[0];
            let parts: Vec<(Loc, usize)> =
                operands.iter().map(|(loc, shape)| (*loc, shape.iter().product::<usize>() / batch.max(1))).collect();
            elementwise::emit_concat(kb, batch, &parts, out);
        }
        // The rest are rare or small: one part runs them.
        _ => kb.on_last_part(|kb| emit_serial_kernel(kb, kernel, node, operands, out)),
    }
}

/// Emits the body of a kernel that one part runs alone.
fn emit_serial_kernel(kb: &mut Kb, kernel: &Kernel, node: &Node, operands: &[(Loc, &[usize])], out: Loc) {
    match kernel {
        Kernel::Softmax => normalize::emit_softmax(kb, &node.shape, operands[0].0, out),
        Kernel::Lrn(lrn) => normalize::emit_lrn(kb, lrn, &node.shape, operands[0].0, out),
        _ => unreachable!("shared kernels are emitted by emit_kernel"),
    }
}

/// Defines `name() -> usize` returning a constant (the object's `NAME_arena_bytes`).
pub(crate) fn define_constant_function<M: Module>(module: &mut M, name: &str, value: usize) -> Result<FuncId, String> {
    let ptr = module.target_config().pointer_type();
    let mut sig = Signature::new(module.isa().default_call_conv());
    sig.returns.push(AbiParam::new(ptr));
    let id = module
        .declare_function(name, Linkage::Export, &sig)
        .map_err(|e| format!("internal error: Cranelift: {e:?}"))?;
    let mut ctx = module.make_context();
    ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    let mut builder_ctx = FunctionBuilderContext::new();
    {
        let mut fb = FunctionBuilder::new(&mut ctx.func, &mut builder_ctx);
        let entry = fb.create_block();
        fb.switch_to_block(entry);
        fb.seal_block(entry);
        let v = fb.ins().iconst(ptr, value as i64);
        fb.ins().return_(&[v]);
        fb.finalize(module.target_config());
    }
    module.define_function(id, &mut ctx).map_err(|e| format!("internal error: Cranelift: {e:?}"))?;
    Ok(id)
}

/// The tiles an int8 layer runs on where neither the integer tiles nor the depthwise
/// bands take it (grouped convs, small reductions on AVX2): at most AVX2's, over its
/// operands quantized into scratch (`crate::precision`); the AVX2 and f32x4 tiles are the
/// ones this path was checked on against the interpreter. (bf16 layers run on the
/// `vdpbf16ps` tiles or on the f32 kernels of the target, `bf16_on_f32_kernels`.)
fn reduced_precision_simd(simd: Option<Simd>) -> Option<Simd> {
    simd.map(|_| Simd::Avx2)
}

/// Whether bf16 layers run on the `vdpbf16ps` tiles: AVX-512 tiles for this host (no
/// `--cpu` level, none of which includes AVX512_BF16), which has AVX512_BF16, and the
/// options' [`Bf16Tiles`] choose them.
fn bf16_tiles(options: &CodegenOptions, simd: Option<Simd>) -> bool {
    let chosen = match options.bf16_tiles {
        Bf16Tiles::Auto => host_prefers_bf16_tiles(),
        Bf16Tiles::Always => true,
        Bf16Tiles::Never => false,
    };
    chosen && options.cpu.is_none() && simd == Some(Simd::Avx512) && host_has_bf16()
}

/// Whether a bf16 conv or linear layer runs on the f32 kernels over rounded operands
/// (its input rounded into scratch first, [`emit_rounded_input`]) rather than the
/// `vdpbf16ps` tiles: where those do not run (`bf16` false, [`bf16_tiles`]) and for the
/// depthwise convolutions the depthwise bands take, which have no bf16 tiles.
fn bf16_on_f32_kernels(
    node: &Node,
    x_shape: &[usize],
    options: &CodegenOptions,
    simd: Option<Simd>,
    bf16: bool,
) -> bool {
    let depthwise = match &node.op {
        Op::Conv(conv) => simd.is_some() && options.depthwise && DepthwiseKernel::applies(conv, x_shape),
        _ => false,
    };
    node.precision == Precision::Bf16 && (!bf16 || depthwise)
}

/// A bf16 layer's weights for the f32 kernels: each rounded to bf16.
fn rounded_bf16(weights: &[f32]) -> Vec<f32> {
    weights.iter().map(|&w| crate::precision::round_bf16(w)).collect()
}

/// Rounds the input `x` (`shape`) to bf16 into `to`, the parts sharing its planes (the
/// last two dimensions; a row for a 2-D input): an `operands` micro-kernel per plane
/// when the kernel defined one (`spec`), else f32x4 Cranelift code.
fn emit_rounded_input(kb: &mut Kb, x: Loc, shape: &[usize], to: Loc, spec: Option<&OperandSpec>) {
    let count: usize = shape.iter().product();
    let run = rounding_run(shape);
    let (x, to) = (kb.addr(x), kb.addr(to));
    kb.for_share(count / run, |kb, plane| {
        let from = kb.index(x, plane, 4 * run as i64);
        let into = kb.index(to, plane, 4 * run as i64);
        match spec {
            Some(spec) => operands::convert(kb, spec, from, into),
            None => kb.copy_floats_bf16(from, into, run),
        }
    });
    kb.sync();
}

/// The plane [`emit_rounded_input`] rounds at once, as an `operands` micro-kernel where
/// the target is this host (no `--cpu` level), with AVX-512 and AVX512_BF16.
fn rounding_spec(shape: &[usize], options: &CodegenOptions, simd: Option<Simd>) -> Option<OperandSpec> {
    // `vcvtneps2bf16` only for this host's ISA: no `--cpu` level includes AVX512_BF16.
    let bf16_host = options.cpu.is_none() && host_has_bf16();
    OperandSpec::for_layer(Precision::Bf16, simd?, bf16_host, rounding_run(shape))
}

/// The values [`emit_rounded_input`] rounds in one run: a plane (a row of a 2-D input).
fn rounding_run(shape: &[usize]) -> usize {
    let run = if shape.len() >= 3 { shape[shape.len() - 2..].iter().product() } else { *shape.last().unwrap_or(&1) };
    run.max(1)
}

/// Whether this process's CPU has AVX512_BF16 and its `vdpbf16ps` outpaces its FMAs
/// ([`Bf16Tiles`]): an AMD core (Zen 4 and later, whose FMAs are 256 bits wide). Intel
/// cores with AVX512_BF16 have two 512-bit FMA units and one port for `vdpbf16ps`.
pub fn host_prefers_bf16_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0: the vendor in ebx, edx, ecx.
        let vendor = std::arch::x86_64::__cpuid(0);
        let amd = [vendor.ebx, vendor.edx, vendor.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        amd && host_has_bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this process's CPU has AVX512_BF16.
pub fn host_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a convolution is a fully connected layer over the batch: a 1x1 kernel on a 1x1
/// map (squeeze-and-excitation's two layers after the global pool), whose NCHW input
/// and output are `[batch, channels]` rows. The linear kernel's tiles put output
/// channels in the lanes and the images in the rows; the pixel-lane tiles would fill one
/// lane of sixteen.
fn applies_as_linear(conv: &Conv, shape: &ConvShape) -> bool {
    conv.kernel.h == 1
        && conv.kernel.w == 1
        && conv.groups == 1
        && conv.pad.is_zero()
        && (shape.in_h, shape.in_w, shape.out_h, shape.out_w) == (1, 1, 1, 1)
}
