//! Convolution micro-kernels in x86-64 machine code with full-width vectors: 512-bit
//! (AVX-512F, 32 zmm registers) or 256-bit (AVX2 with FMA, 16 ymm registers), assembled
//! per layer with iced-x86 and defined in the Cranelift module next to the kernels that
//! call them (`Module::define_function_bytes`), so the JIT and object files both get
//! them. Cranelift's x86-64 backend lowers 128-bit vectors only; these run the same tile
//! at two or four times the width (the way oneDNN generates kernels with Xbyak).
//!
//! One micro-kernel computes the reduction of one tile, `pixels` output pixels by
//! `vectors` full vectors of output channels, in `pixels * vectors` accumulators:
//!
//! ```text
//! void ukernel(const float *in, const float *weights, const float *bias, float *tile);
//! ```
//!
//! `in` is the tile's first pixel's window origin (pixel `p` at `in + p * pixel_stride`
//! bytes), `weights` the block's packed weights (`[step][tap][lane]`, the layout of
//! `conv::pack` with full-width vectors), `bias` the block's bias. The accumulators
//! start at the bias, take `steps` reduction steps (the input advancing `in_step` bytes,
//! each step `taps.len()` multiply-adds per accumulator), and are stored pixel-major to
//! `tile` (`[pixel][lane]`), where the Cranelift side applies the epilogue and stores the
//! channels into the NCHW output. System V calling convention; only caller-saved
//! registers are used (rdi, rsi, r8, the vector registers), and the code has no
//! relocations.

use iced_x86::code_asm::asm_traits::{
    CodeAsmVaddps, CodeAsmVblendvps, CodeAsmVbroadcastss, CodeAsmVcmpps, CodeAsmVdivps, CodeAsmVdpbf16ps,
    CodeAsmVfmadd213ps, CodeAsmVfmadd231ps, CodeAsmVfmsub231ps, CodeAsmVmovups, CodeAsmVsubps,
};
use iced_x86::code_asm::*;

use crate::ir::Activation;

/// The vector extension a micro-kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    /// AVX2 and FMA: 16 ymm registers of 8 lanes (x86-64-v3).
    Avx2,
    /// AVX-512F: 32 zmm registers of 16 lanes (x86-64-v4).
    Avx512,
}

impl Simd {
    pub fn lanes(self) -> usize {
        match self {
            Simd::Avx2 => 8,
            Simd::Avx512 => 16,
        }
    }

    fn registers(self) -> usize {
        match self {
            Simd::Avx2 => 16,
            Simd::Avx512 => 32,
        }
    }

    /// The most vectors per tile row next to `pixels` rows of accumulators, the weights
    /// of one tap and two broadcast registers.
    pub fn max_vectors(self, pixels: usize) -> usize {
        ((self.registers() - 2) / (pixels + 1)).min(MAX_VECTORS)
    }

    /// The most pixels per tile: AVX2's 16 registers hold 6 rows of two vectors.
    pub fn max_pixels(self) -> usize {
        match self {
            Simd::Avx2 => 6,
            Simd::Avx512 => MAX_PIXELS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx2 => "AVX2",
            Simd::Avx512 => "AVX-512",
        }
    }
}

/// The most pixels and vectors of a tile, and the bytes of the buffer it is stored to.
pub(crate) const MAX_PIXELS: usize = 8;
pub(crate) const MAX_VECTORS: usize = 4;
pub(crate) const TILE_BUFFER_BYTES: usize = MAX_PIXELS * MAX_VECTORS * 16 * 4;

/// What one micro-kernel computes; equal specs assemble to equal code.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TileSpec {
    pub simd: Simd,
    pub pixels: usize,
    /// Full-width vectors of output channels.
    pub vectors: usize,
    /// Bytes between consecutive pixels' windows in the input.
    pub pixel_stride: i64,
    pub steps: usize,
    /// Bytes the input advances per step.
    pub in_step: i64,
    /// Byte offset of each tap from the window origin.
    pub taps: Vec<i64>,
    /// bf16 (AVX512_BF16, 512-bit only): each step is a pair of input channels, the
    /// input and weights hold bf16 pairs (channel `2s` in the low half of each 32-bit
    /// element, `2s + 1` in the high half; the layout of `bf16::pack_pairs` and
    /// `bf16::RowSpec`), and each multiply-add is a `vdpbf16ps`: two products per lane,
    /// accumulated in f32. The geometry (bytes per step, tap and pixel) is the f32
    /// tile's.
    pub bf16: bool,
    /// An activation the tile applies to its results after storing them to the tile
    /// buffer (a [`GatePass`]; whole vectors, so the reloads take the stores' values
    /// straight from the store buffer), for a layer whose whole epilogue it is (no
    /// residual): only sigmoid and silu, whose exp would otherwise run in the f32x4
    /// epilogue (EfficientNet's 3x3/s2 stem, one thread: 1.44 ms with the f32x4 silu,
    /// against 0.40 ms for MobileNet v2's relu6 one, on AVX2).
    pub activation: Option<RegisterActivation>,
}

impl TileSpec {
    /// Whether the tile fits the register file and the tile buffer.
    pub fn fits(&self) -> bool {
        (1..=MAX_PIXELS).contains(&self.pixels)
            && (1..=self.simd.max_vectors(self.pixels)).contains(&self.vectors)
            && (!self.bf16 || self.simd == Simd::Avx512)
            && self.activation.is_none_or(|f| f.uses_exp() && !self.bf16)
    }
}

pub(super) const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17,
    zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];

pub(super) const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];

pub(super) fn disp(bytes: i64) -> Result<i32, String> {
    i32::try_from(bytes).map_err(|_| format!("internal error: micro-kernel displacement {bytes} exceeds 32 bits"))
}

pub(super) fn err(e: IcedError) -> String {
    format!("internal error: assembling a micro-kernel: {e}")
}

/// Assembles the micro-kernel of `spec`.
pub(crate) fn assemble(spec: &TileSpec) -> Result<Vec<u8>, String> {
    assert!(spec.fits(), "micro-kernel tile does not fit the registers: {spec:?}");
    match spec.simd {
        Simd::Avx512 => assemble_with(spec, &ZMM, zmmword_ptr),
        Simd::Avx2 => assemble_with(spec, &YMM, ymmword_ptr),
    }
}

/// The micro-kernel over one register file; `vector_ptr` makes a full-width memory
/// operand.
fn assemble_with<R>(
    spec: &TileSpec,
    regs: &[R],
    vector_ptr: fn(AsmMemoryOperand) -> AsmMemoryOperand,
) -> Result<Vec<u8>, String>
where
    R: Copy,
    CodeAssembler: CodeAsmVmovups<R, AsmMemoryOperand>
        + CodeAsmVmovups<AsmMemoryOperand, R>
        + CodeAsmVbroadcastss<R, AsmMemoryOperand>
        + CodeAsmVfmadd231ps<R, R, R>
        + CodeAsmVdpbf16ps<R, R, R>,
{
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (p_count, v_count) = (spec.pixels, spec.vectors);
    let vector_bytes = (spec.simd.lanes() * 4) as i64;
    let acc = |p: usize, v: usize| regs[p * v_count + v];
    let weight = |v: usize| regs[p_count * v_count + v];
    let broadcast = |i: usize| regs[p_count * v_count + v_count + i % 2];
    let tap_bytes = v_count as i64 * vector_bytes;
    let step_bytes = tap_bytes * spec.taps.len() as i64;

    for p in 0..p_count {
        for v in 0..v_count {
            a.vmovups(acc(p, v), vector_ptr(rdx + disp(vector_bytes * v as i64)?)).map_err(err)?;
        }
    }
    // One step: `taps` rounds of weight loads, broadcasts and multiply-adds, `u` steps
    // past the current pointers.
    let step = |a: &mut CodeAssembler, u: i64| -> Result<(), String> {
        let mut b = 0;
        for (t, &tap) in spec.taps.iter().enumerate() {
            let w_offset = u * step_bytes + t as i64 * tap_bytes;
            for v in 0..v_count {
                a.vmovups(weight(v), vector_ptr(rsi + disp(w_offset + vector_bytes * v as i64)?)).map_err(err)?;
            }
            for p in 0..p_count {
                let x = broadcast(b);
                b += 1;
                let offset = u * spec.in_step + tap + p as i64 * spec.pixel_stride;
                a.vbroadcastss(x, dword_ptr(rdi + disp(offset)?)).map_err(err)?;
                for v in 0..v_count {
                    if spec.bf16 {
                        a.vdpbf16ps(acc(p, v), weight(v), x).map_err(err)?;
                    } else {
                        a.vfmadd231ps(acc(p, v), weight(v), x).map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    };
    emit_steps(&mut a, spec, step_bytes, &step)?;
    for p in 0..p_count {
        for v in 0..v_count {
            let offset = (p * v_count + v) as i64 * vector_bytes;
            a.vmovups(vector_ptr(rcx + disp(offset)?), acc(p, v)).map_err(err)?;
        }
    }
    // The activation (sigmoid or silu: `TileSpec::fits`) over the stored tile.
    let mut table = VectorConstants::default();
    if let Some(activation) = spec.activation {
        let pass = GatePass::for_epilogue(Some(activation), false, None)
            .ok_or("internal error: a tile activation other than sigmoid or silu")?;
        let at = |i: usize| disp(i as i64 * vector_bytes).map(|offset| rcx + offset);
        let vectors = 0..p_count * v_count;
        match spec.simd {
            Simd::Avx2 => pass.run(
                &mut a,
                &mut table,
                vectors.map(|i| Ok((ymmword_ptr(at(i)?), None))).collect::<Result<_, String>>()?,
            )?,
            Simd::Avx512 => pass.run_512(
                &mut a,
                &mut table,
                vectors.map(|i| Ok((zmmword_ptr(at(i)?), None))).collect::<Result<_, String>>()?,
            )?,
        }
    }
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    table.place(&mut a)?;
    a.assemble(0).map_err(err)
}

/// The reduction loop of a tile (the f32 tiles' and `int8`'s): `spec.steps` calls of
/// `step(a, u)` (a step `u` steps past the input and weight pointers), unrolled so that
/// an iteration does at least 4 taps, counted down in r8, the pointers (rdi, rsi)
/// advancing `spec.in_step` and `step_bytes` per step; then the steps left over.
/// Emits `body` over `lanes` 32-bit lanes in vectors of 16 (AVX-512): `lanes / 16`
/// times in a loop counted in `counter`, `advance` after each, then once with `masked`
/// true for the rest, the first `lanes % 16` lanes in k1 (set through eax).
pub(super) fn emit_lanes_512(
    a: &mut CodeAssembler,
    lanes: usize,
    counter: AsmRegister64,
    body: &dyn Fn(&mut CodeAssembler, bool) -> Result<(), String>,
    advance: &dyn Fn(&mut CodeAssembler) -> Result<(), String>,
) -> Result<(), String> {
    let (full, rest) = (lanes / 16, lanes % 16);
    if full > 0 {
        a.mov(counter, full as u64).map_err(err)?;
        let mut head = a.create_label();
        a.set_label(&mut head).map_err(err)?;
        body(a, false)?;
        advance(a)?;
        a.dec(counter).map_err(err)?;
        a.jnz(head).map_err(err)?;
    }
    if rest > 0 {
        a.mov(eax, (1u32 << rest) - 1).map_err(err)?;
        a.kmovw(k1, eax).map_err(err)?;
        body(a, true)?;
    }
    Ok(())
}

pub(super) fn emit_steps(
    a: &mut CodeAssembler,
    spec: &TileSpec,
    step_bytes: i64,
    step: &dyn Fn(&mut CodeAssembler, i64) -> Result<(), String>,
) -> Result<(), String> {
    let unroll = 4usize.div_ceil(spec.taps.len()).clamp(1, spec.steps.max(1));
    let iterations = spec.steps / unroll;
    if iterations > 0 {
        a.mov(r8, iterations as u64).map_err(err)?;
        let mut head = a.create_label();
        a.set_label(&mut head).map_err(err)?;
        for u in 0..unroll {
            step(a, u as i64)?;
        }
        a.add(rdi, disp(unroll as i64 * spec.in_step)?).map_err(err)?;
        a.add(rsi, disp(unroll as i64 * step_bytes)?).map_err(err)?;
        a.dec(r8).map_err(err)?;
        a.jnz(head).map_err(err)?;
    }
    for u in 0..spec.steps % unroll {
        step(a, u as i64)?;
    }
    Ok(())
}

/// A pointwise (1x1, stride 1, one group) convolution tile with pixels in the vector
/// lanes (AVX-512, or AVX2 with 8 lanes): `channels` output channels by `vectors` x 16
/// (or 8) consecutive pixels, so
/// that results store straight into the NCHW output with the epilogue applied in
/// registers: no transposes. Layers with short reductions (16 to 64 input channels),
/// where the channel-lane tiles spend as long storing as computing, run on these.
///
/// ```text
/// void ukernel(const float *in, const float *weights, const float *bias, float *out,
///              const float *residual);
/// ```
///
/// `in` and `out` (and `residual`) point at the tile's first pixel of channel 0 of the
/// input and of the tile's first output channel; channels are `plane_bytes` apart.
/// `weights` holds `[step][channel]`, `bias` `[channel]`. The last vector keeps only
/// `last_lanes` lanes (masked loads and stores, which never touch the lanes past them:
/// `k` masks on AVX-512, `vmaskmovps` under a lane mask placed after the code on AVX2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PointwiseSpec {
    pub simd: Simd,
    pub channels: usize,
    pub vectors: usize,
    pub last_lanes: usize,
    pub steps: usize,
    pub plane_bytes: i64,
    /// When not 0, the output (and residual) lines this many bytes past the tile's are
    /// prefetched into the L2 cache at the start: those of the next tile of pixels when
    /// the tiles run outermost. A large layer's 64-pixel pieces of hundreds of channel
    /// planes are more streams than the hardware prefetchers follow (ResNet-50's 56x56
    /// 1x1 layers with a residual: 1.41 -> 0.97 ms). The input lines of the next tile
    /// are prefetched too, into L1, in the reduction loop: one per channel on AVX2, the
    /// tile's four on AVX-512.
    pub prefetch: i64,
    /// Epilogue: an activation before the residual add, the residual add, an
    /// activation after it.
    pub activation: Option<RegisterActivation>,
    pub residual: bool,
    pub post_activation: Option<RegisterActivation>,
    /// A part of a longer reduction (AVX2 only): `accumulate` starts the sums from the
    /// output tile, where the earlier parts stored theirs, rather than from the bias;
    /// without `finish` the sums store as they are, epilogue left to the last part.
    pub accumulate: bool,
    pub finish: bool,
    /// bf16 (AVX-512 with AVX512_BF16): each step is a pair of input channels, the
    /// input's planes and the weights hold bf16 pairs (`bf16`), and each multiply-add is
    /// a `vdpbf16ps`.
    pub bf16: bool,
    /// int8 (AVX-512 with AVX512_VNNI; `int8`): each step is a quad of input channels,
    /// the input's planes hold u8 quads `q_x` and the weights s8 quads `q_w`, and each
    /// multiply-add is a `vpdpbusd` (four exact products into an i32 lane). The
    /// accumulators start at the bias argument's i32 corrections `-zp * sum(q_w)` and end
    /// as `f32(acc) * m + bias` (multiplied, then added, each rounded) before the
    /// epilogue, `m` and the bias read this many bytes and twice this many past the
    /// corrections.
    pub int8: Option<i64>,
}

/// An activation the pointwise tile applies in registers: those made of comparisons,
/// adds and multiplies, and on AVX2 sigmoid and silu (with exp in registers). The
/// others (tanh, gelu) run on other kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RegisterActivation {
    Relu,
    LeakyRelu {
        slope: u32,
    },
    /// Bounds as f32 bits.
    Clamp {
        min: u32,
        max: u32,
    },
    HardSigmoid,
    HardSwish,
    /// `1 / (1 + exp(-x))`: on AVX2 anywhere in an epilogue, on AVX-512 as the whole
    /// epilogue only (a [`GatePass`]; [`epilogue_in_registers`]).
    Sigmoid,
    /// `x / (1 + exp(-x))`, as sigmoid.
    Silu,
}

/// Whether an epilogue runs in a tile's registers on `simd`: every activation a
/// [`RegisterActivation`], and on AVX-512 sigmoid and silu only as the whole epilogue
/// (no residual, nothing after them), which a [`GatePass`] runs (after the stores, or
/// in the AVX-512 depthwise band on the accumulators before them).
pub(crate) fn epilogue_in_registers(
    simd: Simd,
    activation: Option<Activation>,
    residual: bool,
    post_activation: Option<Activation>,
) -> bool {
    let register = |a: Option<Activation>| a.map(RegisterActivation::of);
    let (activation, post_activation) = (register(activation), register(post_activation));
    if activation == Some(None) || post_activation == Some(None) {
        return false;
    }
    register_epilogue_fits(simd, activation.flatten(), residual, post_activation.flatten())
}

/// [`epilogue_in_registers`] once the activations are [`RegisterActivation`]s: on
/// AVX-512 sigmoid and silu only through a [`GatePass`].
fn register_epilogue_fits(
    simd: Simd,
    activation: Option<RegisterActivation>,
    residual: bool,
    post_activation: Option<RegisterActivation>,
) -> bool {
    let uses_exp = [activation, post_activation].iter().flatten().any(|a| a.uses_exp());
    simd == Simd::Avx2 || !uses_exp || GatePass::for_epilogue(activation, residual, post_activation).is_some()
}

impl RegisterActivation {
    /// The activation in registers, if it runs there (on AVX-512 sigmoid and silu only
    /// as a whole epilogue: [`epilogue_in_registers`]).
    pub fn of(activation: Activation) -> Option<RegisterActivation> {
        let bits = |v: f64| (v as f32).to_bits();
        match activation {
            Activation::Sigmoid => Some(RegisterActivation::Sigmoid),
            Activation::Silu => Some(RegisterActivation::Silu),
            Activation::Relu => Some(RegisterActivation::Relu),
            Activation::LeakyRelu { slope } => Some(RegisterActivation::LeakyRelu { slope: bits(slope) }),
            Activation::Clamp { min, max } => Some(RegisterActivation::Clamp { min: bits(min), max: bits(max) }),
            Activation::HardSigmoid => Some(RegisterActivation::HardSigmoid),
            Activation::HardSwish => Some(RegisterActivation::HardSwish),
            Activation::Tanh | Activation::Gelu { .. } | Activation::HardSigmoidAffine { .. } | Activation::Erf => None,
        }
    }

    /// The constants the code reads from its red-zone slots.
    fn constants(self) -> Vec<u32> {
        match self {
            RegisterActivation::Relu => vec![],
            RegisterActivation::LeakyRelu { slope } => vec![slope],
            RegisterActivation::Clamp { min, max } => vec![min, max],
            RegisterActivation::HardSigmoid | RegisterActivation::HardSwish => {
                vec![3f32.to_bits(), 6f32.to_bits(), (1.0f32 / 6.0).to_bits()]
            }
            // Full vectors after the code (`VectorConstants`).
            RegisterActivation::Sigmoid | RegisterActivation::Silu => vec![],
        }
    }

    /// Whether the activation needs a third scratch register (`emit_avx2`'s `u`).
    pub fn uses_exp(self) -> bool {
        matches!(self, RegisterActivation::Sigmoid | RegisterActivation::Silu)
    }

    /// Applies the activation to `x` in place, with `k` and `t` as scratch and the
    /// constants in the 4-byte stack slots from `first_slot` on (slot `i` at
    /// `[rsp + 4 * i]`). Maxima and minima take `x` as their second source, which
    /// `vmaxps`/`vminps` return when either is NaN: NaN passes through, as in the
    /// interpreter.
    fn emit(
        self,
        a: &mut CodeAssembler,
        x: AsmRegisterZmm,
        k: AsmRegisterZmm,
        t: AsmRegisterZmm,
        first_slot: usize,
    ) -> Result<(), String> {
        let slot = |i: usize| rsp + (4 * (first_slot + i)) as i32;
        match self {
            RegisterActivation::Relu => {
                a.vpxord(k, k, k).map_err(err)?;
                a.vmaxps(x, k, x).map_err(err)?;
            }
            RegisterActivation::LeakyRelu { .. } => {
                // x < 0 (false for NaN) takes x * slope.
                a.vpxord(k, k, k).map_err(err)?;
                a.vcmpps(k2, x, k, 1).map_err(err)?; // LT_OS
                a.vmulps(x.k2(), x, dword_bcst(slot(0))).map_err(err)?;
            }
            RegisterActivation::Clamp { .. } => {
                a.vbroadcastss(k, dword_ptr(slot(0))).map_err(err)?;
                a.vmaxps(x, k, x).map_err(err)?;
                a.vbroadcastss(k, dword_ptr(slot(1))).map_err(err)?;
                a.vminps(x, k, x).map_err(err)?;
            }
            RegisterActivation::HardSigmoid | RegisterActivation::HardSwish => {
                // relu6(x + 3) / 6, into t for hardswish (then x * t).
                let swish = self == RegisterActivation::HardSwish;
                let gate = if swish { t } else { x };
                a.vaddps(gate, x, dword_bcst(slot(0))).map_err(err)?;
                a.vpxord(k, k, k).map_err(err)?;
                a.vmaxps(gate, k, gate).map_err(err)?;
                a.vbroadcastss(k, dword_ptr(slot(1))).map_err(err)?;
                a.vminps(gate, k, gate).map_err(err)?;
                a.vmulps(gate, gate, dword_bcst(slot(2))).map_err(err)?;
                if swish {
                    a.vmulps(x, x, gate).map_err(err)?;
                }
            }
            RegisterActivation::Sigmoid | RegisterActivation::Silu => {
                return Err(format!("{self:?} runs on AVX-512 in a gate pass only"));
            }
        }
        Ok(())
    }
    /// [`RegisterActivation::emit`] on AVX2's ymm registers: no embedded broadcasts (the
    /// constants are broadcast into `k`) and no mask registers (leaky relu blends the
    /// product in under a `vcmpps` lane mask). Sigmoid and silu take a third scratch
    /// register `u` and read their constants as full vectors from `table`.
    #[allow(clippy::too_many_arguments)]
    fn emit_avx2(
        self,
        a: &mut CodeAssembler,
        x: AsmRegisterYmm,
        k: AsmRegisterYmm,
        t: AsmRegisterYmm,
        u: Option<AsmRegisterYmm>,
        first_slot: usize,
        table: &mut VectorConstants,
    ) -> Result<(), String> {
        let slot = |i: usize| rsp + (4 * (first_slot + i)) as i32;
        match self {
            RegisterActivation::Relu => {
                a.vxorps(k, k, k).map_err(err)?;
                a.vmaxps(x, k, x).map_err(err)?;
            }
            RegisterActivation::LeakyRelu { .. } => {
                // x < 0 (false for NaN) takes x * slope.
                a.vxorps(k, k, k).map_err(err)?;
                a.vcmpps(k, x, k, 1).map_err(err)?; // LT_OS
                a.vbroadcastss(t, dword_ptr(slot(0))).map_err(err)?;
                a.vmulps(t, x, t).map_err(err)?;
                a.vblendvps(x, x, t, k).map_err(err)?;
            }
            RegisterActivation::Clamp { .. } => {
                a.vbroadcastss(k, dword_ptr(slot(0))).map_err(err)?;
                a.vmaxps(x, k, x).map_err(err)?;
                a.vbroadcastss(k, dword_ptr(slot(1))).map_err(err)?;
                a.vminps(x, k, x).map_err(err)?;
            }
            RegisterActivation::HardSigmoid | RegisterActivation::HardSwish => {
                // relu6(x + 3) / 6, into t for hardswish (then x * t).
                let swish = self == RegisterActivation::HardSwish;
                let gate = if swish { t } else { x };
                a.vbroadcastss(k, dword_ptr(slot(0))).map_err(err)?;
                a.vaddps(gate, x, k).map_err(err)?;
                a.vxorps(k, k, k).map_err(err)?;
                a.vmaxps(gate, k, gate).map_err(err)?;
                a.vbroadcastss(k, dword_ptr(slot(1))).map_err(err)?;
                a.vminps(gate, k, gate).map_err(err)?;
                a.vbroadcastss(k, dword_ptr(slot(2))).map_err(err)?;
                a.vmulps(gate, gate, k).map_err(err)?;
                if swish {
                    a.vmulps(x, x, gate).map_err(err)?;
                }
            }
            RegisterActivation::Sigmoid | RegisterActivation::Silu => {
                let u = u.ok_or("sigmoid and silu need a third scratch register")?;
                emit_exp_gate_avx2(a, self == RegisterActivation::Silu, x, [k, t, u], table)?;
            }
        }
        Ok(())
    }
}

/// Constants read as full 8-lane vectors from after the code (each value once).
#[derive(Default)]
pub(crate) struct VectorConstants(Vec<(u32, CodeLabel)>);

impl VectorConstants {
    /// The label of the vector of `bits`, created the first time it is asked for.
    fn label(&mut self, a: &mut CodeAssembler, bits: u32) -> CodeLabel {
        match self.0.iter().find(|(b, _)| *b == bits) {
            Some(&(_, label)) => label,
            None => {
                let label = a.create_label();
                self.0.push((bits, label));
                label
            }
        }
    }

    /// The vector of `bits` in every lane.
    fn at(&mut self, a: &mut CodeAssembler, bits: u32) -> AsmMemoryOperand {
        ymmword_ptr(self.label(a, bits))
    }

    /// The first float of the vector of `bits`, for `vbroadcastss` into a zmm register.
    fn scalar_at(&mut self, a: &mut CodeAssembler, bits: u32) -> AsmMemoryOperand {
        dword_ptr(self.label(a, bits))
    }

    /// Places the vectors (after the code's `ret`).
    fn place(self, a: &mut CodeAssembler) -> Result<(), String> {
        for (bits, mut label) in self.0 {
            a.set_label(&mut label).map_err(err)?;
            let bytes: Vec<u8> = (0..8).flat_map(|_| bits.to_le_bytes()).collect();
            a.db(&bytes).map_err(err)?;
        }
        Ok(())
    }
}

/// `1 / (1 + exp(-x))` (or `x / (1 + exp(-x))` for silu) into `x`, with three scratch
/// registers, in 19 instructions (20 for sigmoid) besides the constants' loads: exp(-x)
/// by range reduction to `r` in [-ln 2 / 2, ln 2 / 2] and a degree-5 polynomial (fitted
/// near minimax in relative error by `tools/fit_exp.py`: within 1.7e-7 of exp in f32
/// arithmetic; silu within 2.5e-7 of f64's over [-100, 100], relative):
/// - `x` clamped to [-88, 87] (by `vmaxps`/`vminps`, which pass NaN through), `m = -x`;
/// - `n = round(m log2(e))` by adding 1.5 * 2^23 in the same fused multiply-add (the sum's
///   low mantissa bits are then `n`, which `vpslld` moves into the exponent field);
/// - `r = m - n ln 2`, `ln 2` in two parts (Cephes' 355/512 - 2.12194440e-4) so `r` is
///   exact to an ulp;
/// - `exp(r) = (p(r) r) r + r + 1`, and `exp(m) = 2^n exp(r)` by adding `n << 23` to its
///   bits (`n` in [-126, 127] and `exp(r)` in [0.70, 1.42]: the result is finite; below
///   2^-126 it is off by at most a factor of 2, which `1 + exp(m) = 1` does not see);
/// - inf where `x < -88` (then `1 + exp(-x)` is inf in f32 too: silu gives -0, and NaN for
///   -inf, sigmoid 0, as the interpreter);
/// - the quotient. A NaN input stays NaN: silu divides the NaN; sigmoid, whose dividend is
///   1 and whose divisor a NaN's payload can turn into a number (the exponent add), blends
///   the NaN back in.
///
/// The earlier form (Cephes' degree-7 polynomial, `vroundps` and `vcvtps2dq`, a multiply
/// by 2^n) took 4.7 ns per vector on the EPYC Zen 3 host, this one 2.9 (a loop over 96
/// vectors in L1, written in C with the same instructions).
fn emit_exp_gate_avx2(
    a: &mut CodeAssembler,
    silu: bool,
    x: AsmRegisterYmm,
    scratch: [AsmRegisterYmm; 3],
    table: &mut VectorConstants,
) -> Result<(), String> {
    emit_exp_gate_with(a, silu, x, scratch, &mut |a, v| table.at(a, v.to_bits()))
}

/// The gate's constants, in the order [`GatePass`] keeps them in registers.
const GATE_CONSTANTS: [f32; 12] = [
    -88.0,
    87.0,
    -std::f32::consts::LOG2_E,
    GATE_ROUND,
    355.0 / 512.0,
    2.121_944_4e-4,
    GATE_POLYNOMIAL[0],
    GATE_POLYNOMIAL[1],
    GATE_POLYNOMIAL[2],
    GATE_POLYNOMIAL[3],
    1.0,
    f32::INFINITY,
];
/// `exp(r) ~ 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3)`, highest first.
const GATE_POLYNOMIAL: [f32; 4] = [8.312_525e-3, 4.189_011_4e-2, 1.666_711_4e-1, 4.999_923e-1];
/// 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits.
const GATE_ROUND: f32 = 12_582_912.0;

/// [`emit_exp_gate_avx2`] with its constants from `constant`: vectors after the code
/// (memory operands) in a tile's epilogue, registers in a [`GatePass`].
fn emit_exp_gate_with<K: Copy>(
    a: &mut CodeAssembler,
    silu: bool,
    x: AsmRegisterYmm,
    [p, n, r]: [AsmRegisterYmm; 3],
    constant: &mut dyn FnMut(&mut CodeAssembler, f32) -> K,
) -> Result<(), String>
where
    CodeAssembler: CodeAsmVmovups<AsmRegisterYmm, K>
        + CodeAsmVfmadd213ps<AsmRegisterYmm, AsmRegisterYmm, K>
        + CodeAsmVfmadd231ps<AsmRegisterYmm, AsmRegisterYmm, K>
        + CodeAsmVfmsub231ps<AsmRegisterYmm, AsmRegisterYmm, K>
        + CodeAsmVsubps<AsmRegisterYmm, AsmRegisterYmm, K>
        + CodeAsmVaddps<AsmRegisterYmm, AsmRegisterYmm, K>
        + CodeAsmVcmpps<AsmRegisterYmm, AsmRegisterYmm, K, i32>
        + CodeAsmVblendvps<AsmRegisterYmm, AsmRegisterYmm, K, AsmRegisterYmm>,
{
    type Y = AsmRegisterYmm;
    let c = constant;
    // p = clamp(x, -88, 87), NaN passing through (the second source of vmaxps/vminps).
    let low = c(a, -88.0);
    a.vmovups(p, low).map_err(err)?;
    a.vmaxps(p, p, x).map_err(err)?;
    let high = c(a, 87.0);
    a.vmovups(r, high).map_err(err)?;
    a.vminps(p, r, p).map_err(err)?;
    // n = m log2(e) + 1.5 * 2^23 (m = -p), rounded to nearest; r = n - 1.5 * 2^23.
    let minus_log2e = c(a, -std::f32::consts::LOG2_E);
    a.vmovups(n, minus_log2e).map_err(err)?;
    let round = c(a, GATE_ROUND);
    a.vfmadd213ps(n, p, round).map_err(err)?;
    a.vsubps(r, n, round).map_err(err)?;
    // p = m - r ln 2 = -(p + r 355/512) + r 2.12194440e-4.
    let ln2_high = c(a, 355.0 / 512.0);
    a.vfmadd231ps(p, r, ln2_high).map_err(err)?;
    let ln2_low = c(a, 2.121_944_4e-4);
    a.vfmsub231ps(p, r, ln2_low).map_err(err)?;
    // n << 23: 2^n's exponent step.
    a.vpslld(n, n, 23).map_err(err)?;
    // The polynomial in p, into r; exp(p) = (q p) p + p + 1, times 2^n.
    let first = c(a, GATE_POLYNOMIAL[0]);
    a.vmovups(r, first).map_err(err)?;
    for &coefficient in &GATE_POLYNOMIAL[1..] {
        let k = c(a, coefficient);
        a.vfmadd213ps(r, p, k).map_err(err)?;
    }
    a.vmulps(r, r, p).map_err(err)?;
    <CodeAssembler as CodeAsmVfmadd213ps<Y, Y, Y>>::vfmadd213ps(a, r, p, p).map_err(err)?;
    let one = c(a, 1.0);
    a.vaddps(r, r, one).map_err(err)?;
    a.vpaddd(r, r, n).map_err(err)?;
    // inf where x < -88 (false for NaN).
    a.vcmpps(n, x, low, 1).map_err(err)?; // LT_OS
    let infinity = c(a, f32::INFINITY);
    a.vblendvps(r, r, infinity, n).map_err(err)?;
    // 1 + exp(-x), then the quotient.
    a.vaddps(r, r, one).map_err(err)?;
    if silu {
        <CodeAssembler as CodeAsmVdivps<Y, Y, Y>>::vdivps(a, x, x, r).map_err(err)?;
    } else {
        a.vmovups(p, one).map_err(err)?;
        <CodeAssembler as CodeAsmVdivps<Y, Y, Y>>::vdivps(a, p, p, r).map_err(err)?;
        <CodeAssembler as CodeAsmVcmpps<Y, Y, Y, i32>>::vcmpps(a, n, x, x, 3).map_err(err)?; // UNORD_Q: NaN lanes
        <CodeAssembler as CodeAsmVblendvps<Y, Y, Y, Y>>::vblendvps(a, x, p, x, n).map_err(err)?;
    }
    Ok(())
}

/// [`emit_exp_gate_with`] on AVX-512's zmm registers, the constants in registers
/// (`constant`) and the blends under `k2`: the same operations in the same order, so
/// the same results lane for lane. NaN lanes: silu divides the NaN; sigmoid moves the
/// quotient into the ordered lanes only.
fn emit_exp_gate_512(
    a: &mut CodeAssembler,
    silu: bool,
    x: AsmRegisterZmm,
    [p, n, r]: [AsmRegisterZmm; 3],
    constant: &dyn Fn(f32) -> AsmRegisterZmm,
) -> Result<(), String> {
    let c = constant;
    a.vmaxps(p, c(-88.0), x).map_err(err)?;
    a.vminps(p, c(87.0), p).map_err(err)?;
    a.vmovaps(n, c(-std::f32::consts::LOG2_E)).map_err(err)?;
    a.vfmadd213ps(n, p, c(GATE_ROUND)).map_err(err)?;
    a.vsubps(r, n, c(GATE_ROUND)).map_err(err)?;
    a.vfmadd231ps(p, r, c(355.0 / 512.0)).map_err(err)?;
    a.vfmsub231ps(p, r, c(2.121_944_4e-4)).map_err(err)?;
    a.vpslld(n, n, 23).map_err(err)?;
    a.vmovaps(r, c(GATE_POLYNOMIAL[0])).map_err(err)?;
    for &coefficient in &GATE_POLYNOMIAL[1..] {
        a.vfmadd213ps(r, p, c(coefficient)).map_err(err)?;
    }
    a.vmulps(r, r, p).map_err(err)?;
    a.vfmadd213ps(r, p, p).map_err(err)?;
    a.vaddps(r, r, c(1.0)).map_err(err)?;
    a.vpaddd(r, r, n).map_err(err)?;
    a.vcmpps(k2, x, c(-88.0), 1).map_err(err)?; // LT_OS
    a.vmovaps(r.k2(), c(f32::INFINITY)).map_err(err)?;
    a.vaddps(r, r, c(1.0)).map_err(err)?;
    if silu {
        a.vdivps(x, x, r).map_err(err)?;
    } else {
        a.vdivps(p, c(1.0), r).map_err(err)?;
        a.vcmpps(k2, x, x, 7).map_err(err)?; // ORD_Q: the lanes that are not NaN
        a.vmovaps(x.k2(), p).map_err(err)?;
    }
    Ok(())
}

/// Sigmoid or silu over vectors a tile has just stored, with the gate's twelve constants
/// held in ymm4..ymm15 and ymm0..ymm3 as the working registers: in a tile's epilogue the
/// free registers are too few for the constants, and loading each from memory (fourteen
/// loads per vector) made the gate cost 0.56 ns per value in a 1x1 layer, against 0.36
/// in a loop with them in registers. Used where the activation is the layer's whole
/// epilogue; the stores it reloads are still in L1.
#[derive(Clone, Copy)]
pub(crate) struct GatePass {
    pub silu: bool,
}

impl GatePass {
    /// Loads the constants (clobbering every ymm register).
    fn begin(&self, a: &mut CodeAssembler, table: &mut VectorConstants) -> Result<(), String> {
        for (i, &v) in GATE_CONSTANTS.iter().enumerate() {
            let at = table.at(a, v.to_bits());
            a.vmovups(YMM[4 + i], at).map_err(err)?;
        }
        Ok(())
    }

    /// The gate on the vector at `at`, in place; for a partial vector, under the lane
    /// mask at `lanes` (loaded into ymm1 for the load and again for the store).
    fn apply(
        &self,
        a: &mut CodeAssembler,
        at: AsmMemoryOperand,
        lanes: Option<AsmMemoryOperand>,
    ) -> Result<(), String> {
        let x = YMM[0];
        match lanes {
            Some(lanes) => {
                a.vmovups(YMM[1], lanes).map_err(err)?;
                a.vmaskmovps(x, YMM[1], at).map_err(err)?;
            }
            None => a.vmovups(x, at).map_err(err)?,
        }
        let mut constant = |_: &mut CodeAssembler, v: f32| {
            let i = GATE_CONSTANTS.iter().position(|c| c.to_bits() == v.to_bits()).expect("a gate constant");
            YMM[4 + i]
        };
        emit_exp_gate_with(a, self.silu, x, [YMM[1], YMM[2], YMM[3]], &mut constant)?;
        match lanes {
            Some(lanes) => {
                a.vmovups(YMM[1], lanes).map_err(err)?;
                a.vmaskmovps(at, YMM[1], x).map_err(err)
            }
            None => a.vmovups(at, x).map_err(err),
        }
    }

    /// The pass over `stored`, each vector with its lane mask if partial.
    fn run(
        &self,
        a: &mut CodeAssembler,
        table: &mut VectorConstants,
        stored: Vec<(AsmMemoryOperand, Option<AsmMemoryOperand>)>,
    ) -> Result<(), String> {
        self.begin(a, table)?;
        for (target, lanes) in stored {
            self.apply(a, target, lanes)?;
        }
        Ok(())
    }

    /// [`Self::run`] on AVX-512, each partial vector with the number of the `k` register
    /// holding its lanes.
    fn run_512(
        &self,
        a: &mut CodeAssembler,
        table: &mut VectorConstants,
        stored: Vec<(AsmMemoryOperand, Option<usize>)>,
    ) -> Result<(), String> {
        self.begin_512(a, table)?;
        for (target, mask) in stored {
            self.apply_512(a, target, mask)?;
        }
        Ok(())
    }

    /// [`Self::begin`] on AVX-512: the constants broadcast into zmm20..zmm31 (clobbering
    /// them; zmm0..zmm3 are the working registers, `k2` the blends' mask).
    fn begin_512(&self, a: &mut CodeAssembler, table: &mut VectorConstants) -> Result<(), String> {
        for (i, &v) in GATE_CONSTANTS.iter().enumerate() {
            let at = table.scalar_at(a, v.to_bits());
            a.vbroadcastss(ZMM[20 + i], at).map_err(err)?;
        }
        Ok(())
    }

    /// [`Self::apply`] on AVX-512: a partial vector loads and stores under `mask`, the
    /// number of the `k` register holding its lanes (1 or 3).
    fn apply_512(&self, a: &mut CodeAssembler, at: AsmMemoryOperand, mask: Option<usize>) -> Result<(), String> {
        let x = ZMM[0];
        type Under<T> = fn(T) -> T;
        let (register_under, memory_under): (Under<AsmRegisterZmm>, Under<AsmMemoryOperand>) = match mask {
            Some(1) => (|r| r.k1(), |m| m.k1()),
            Some(3) => (|r| r.k3(), |m| m.k3()),
            Some(k) => return Err(format!("the gate pass takes lane masks in k1 or k3, not k{k}")),
            None => (|r| r, |m| m),
        };
        match mask {
            Some(_) => a.vmovups(register_under(x).z(), at).map_err(err)?,
            None => a.vmovups(x, at).map_err(err)?,
        }
        self.gate_512(a, x, [ZMM[1], ZMM[2], ZMM[3]])?;
        a.vmovups(memory_under(at), x).map_err(err)
    }

    /// The gate on `x` in place, on AVX-512, with the constants [`Self::begin_512`]
    /// loaded into zmm20..zmm31, `work` three other registers and `k2` the blends' mask.
    fn gate_512(&self, a: &mut CodeAssembler, x: AsmRegisterZmm, work: [AsmRegisterZmm; 3]) -> Result<(), String> {
        let constant = |v: f32| {
            let i = GATE_CONSTANTS.iter().position(|c| c.to_bits() == v.to_bits()).expect("a gate constant");
            ZMM[20 + i]
        };
        emit_exp_gate_512(a, self.silu, x, work, &constant)
    }

    /// The pass for an epilogue that is sigmoid or silu alone (no residual add, no
    /// activation after it); `None` for any other, which runs in the tile's registers.
    pub fn for_epilogue(
        activation: Option<RegisterActivation>,
        residual: bool,
        post_activation: Option<RegisterActivation>,
    ) -> Option<GatePass> {
        if residual || post_activation.is_some() {
            return None;
        }
        match activation? {
            RegisterActivation::Silu => Some(GatePass { silu: true }),
            RegisterActivation::Sigmoid => Some(GatePass { silu: false }),
            _ => None,
        }
    }
}

/// Bytes reserved below the stack pointer for an epilogue's activation constants.
const CONSTANT_BYTES: i32 = 32;

/// An epilogue's activation constants ([`RegisterActivation::constants`]) on the stack:
/// the activation's from slot 0, the post-activation's from `post_slot`.
struct StackConstants {
    post_slot: usize,
    reserved: bool,
}

impl StackConstants {
    /// Reserves [`CONSTANT_BYTES`] below the stack pointer, when there are constants, and
    /// stores them there.
    fn push(
        a: &mut CodeAssembler,
        activation: Option<RegisterActivation>,
        post_activation: Option<RegisterActivation>,
    ) -> Result<StackConstants, String> {
        let post_slot = activation.map_or(0, |f| f.constants().len());
        let constants: Vec<u32> = activation.into_iter().chain(post_activation).flat_map(|f| f.constants()).collect();
        assert!(4 * constants.len() <= CONSTANT_BYTES as usize, "epilogue constants overflow their slots");
        let reserved = !constants.is_empty();
        if reserved {
            a.sub(rsp, CONSTANT_BYTES).map_err(err)?;
        }
        for (i, &bits) in constants.iter().enumerate() {
            a.mov(dword_ptr(rsp + 4 * i as i32), bits as i32).map_err(err)?;
        }
        Ok(StackConstants { post_slot, reserved })
    }

    /// Gives the reserved bytes back.
    fn pop(&self, a: &mut CodeAssembler) -> Result<(), String> {
        if self.reserved {
            a.add(rsp, CONSTANT_BYTES).map_err(err)?;
        }
        Ok(())
    }
}

impl PointwiseSpec {
    /// Accumulators, the input vectors of one step, a broadcast and a zero register (on
    /// AVX2 also a lane mask for the epilogue, in the second input vector's register
    /// when there is one).
    pub fn fits(&self) -> bool {
        let inputs = match self.simd {
            Simd::Avx512 => self.vectors,
            Simd::Avx2 => self.vectors.max(2),
        };
        self.channels >= 1
            && (!self.bf16 || self.simd == Simd::Avx512)
            && (self.int8.is_none() || self.simd == Simd::Avx512 && !self.bf16)
            && (1..=4).contains(&self.vectors)
            && (1..=self.simd.lanes()).contains(&self.last_lanes)
            && self.channels * self.vectors + inputs + 2 <= self.simd.registers()
    }
}

/// Assembles a pointwise tile.
pub(crate) fn assemble_pointwise(spec: &PointwiseSpec) -> Result<Vec<u8>, String> {
    assert!(spec.fits(), "pointwise tile does not fit the registers: {spec:?}");
    match spec.simd {
        Simd::Avx512 => assemble_pointwise_512(spec),
        Simd::Avx2 => assemble_pointwise_avx2(spec),
    }
}

/// The AVX-512 pointwise tile.
fn assemble_pointwise_512(spec: &PointwiseSpec) -> Result<Vec<u8>, String> {
    assert!(!spec.accumulate && spec.finish, "the AVX-512 pointwise tile runs whole reductions");
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (r_count, q_count) = (spec.channels, spec.vectors);
    let acc = |r: usize, q: usize| ZMM[r * q_count + q];
    let input = |q: usize| ZMM[r_count * q_count + q];
    let broadcast = ZMM[r_count * q_count + q_count];
    let zero = ZMM[r_count * q_count + q_count + 1];
    let masked = |q: usize| q + 1 == q_count && spec.last_lanes < LANES_512;
    if spec.last_lanes < LANES_512 {
        a.mov(eax, (1u32 << spec.last_lanes) - 1).map_err(err)?;
        a.kmovw(k1, eax).map_err(err)?;
    }
    for r in 0..r_count {
        a.vbroadcastss(broadcast, dword_ptr(rdx + disp(4 * r as i64)?)).map_err(err)?;
        for q in 0..q_count {
            a.vmovaps(acc(r, q), broadcast).map_err(err)?;
        }
    }
    if spec.prefetch != 0 {
        for r in 0..r_count {
            for q in 0..q_count {
                let offset = r as i64 * spec.plane_bytes + 64 * q as i64 + spec.prefetch;
                a.prefetcht1(byte_ptr(rcx + disp(offset)?)).map_err(err)?;
                if spec.residual {
                    a.prefetcht1(byte_ptr(r8 + disp(offset)?)).map_err(err)?;
                }
            }
        }
    }
    a.mov(r9, spec.steps as u64).map_err(err)?;
    let mut head = a.create_label();
    a.set_label(&mut head).map_err(err)?;
    // The next tile's input lines of this channel, into L1: the planes of a long
    // reduction are more streams than the hardware prefetchers follow (MobileNet v2's
    // 144 -> 24 on 56x56 at batch 8, its input beyond the L2 cache, ran at 59 GFLOP/s).
    if spec.prefetch != 0 {
        for q in 0..q_count {
            a.prefetcht0(byte_ptr(rdi + disp(spec.prefetch + 64 * q as i64)?)).map_err(err)?;
        }
    }
    for q in 0..q_count {
        let source = zmmword_ptr(rdi + disp(64 * q as i64)?);
        if masked(q) {
            a.vmovups(input(q).k1().z(), source).map_err(err)?;
        } else {
            a.vmovups(input(q), source).map_err(err)?;
        }
    }
    for r in 0..r_count {
        a.vbroadcastss(broadcast, dword_ptr(rsi + disp(4 * r as i64)?)).map_err(err)?;
        for q in 0..q_count {
            if spec.bf16 {
                a.vdpbf16ps(acc(r, q), input(q), broadcast).map_err(err)?;
            } else if spec.int8.is_some() {
                a.vpdpbusd(acc(r, q), input(q), broadcast).map_err(err)?;
            } else {
                a.vfmadd231ps(acc(r, q), input(q), broadcast).map_err(err)?;
            }
        }
    }
    a.add(rdi, disp(spec.plane_bytes)?).map_err(err)?;
    a.add(rsi, disp(4 * r_count as i64)?).map_err(err)?;
    a.dec(r9).map_err(err)?;
    a.jnz(head).map_err(err)?;
    // The epilogue, with the registers of the loop's inputs and broadcasts as scratch.
    // `max(0, x)` is x for NaN and -0.0, as the interpreter's relu. The activations'
    // constants go to the stack (`StackConstants`), the post-activation's after the
    // activation's.
    let temp = input(0);
    let stack = StackConstants::push(&mut a, spec.activation, spec.post_activation)?;
    let post_slot = stack.post_slot;
    // Sigmoid or silu as the whole epilogue: stored first, then a `GatePass` over `stored`.
    let pass = GatePass::for_epilogue(spec.activation, spec.residual, spec.post_activation);
    let mut stored = Vec::new();
    let mut table = VectorConstants::default();
    for r in 0..r_count {
        for q in 0..q_count {
            let x = acc(r, q);
            let offset = r as i64 * spec.plane_bytes + 64 * q as i64;
            if let Some(stride) = spec.int8 {
                a.vcvtdq2ps(x, x).map_err(err)?;
                a.vmulps(x, x, dword_bcst(rdx + disp(stride + 4 * r as i64)?)).map_err(err)?;
                a.vaddps(x, x, dword_bcst(rdx + disp(2 * stride + 4 * r as i64)?)).map_err(err)?;
            }
            if let Some(activation) = spec.activation.filter(|_| pass.is_none()) {
                activation.emit(&mut a, x, zero, temp, 0)?;
            }
            if spec.residual {
                let source = zmmword_ptr(r8 + disp(offset)?);
                if masked(q) {
                    a.vmovups(broadcast.k1().z(), source).map_err(err)?;
                } else {
                    a.vmovups(broadcast, source).map_err(err)?;
                }
                a.vaddps(x, x, broadcast).map_err(err)?;
            }
            if let Some(activation) = spec.post_activation {
                activation.emit(&mut a, x, zero, temp, post_slot)?;
            }
            let target = zmmword_ptr(rcx + disp(offset)?);
            if masked(q) {
                a.vmovups(target.k1(), x).map_err(err)?;
            } else {
                a.vmovups(target, x).map_err(err)?;
            }
            stored.push((target, masked(q).then_some(1)));
        }
    }
    if let Some(pass) = pass {
        pass.run_512(&mut a, &mut table, stored)?;
    }
    stack.pop(&mut a)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    table.place(&mut a)?;
    a.assemble(0).map_err(err)
}

/// The AVX2 pointwise tile: 8 pixels per vector, the last vector's loads and stores
/// under a `vmaskmovps` lane mask, the activations' constants broadcast from the stack.
fn assemble_pointwise_avx2(spec: &PointwiseSpec) -> Result<Vec<u8>, String> {
    const LANES: usize = 8;
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (r_count, q_count) = (spec.channels, spec.vectors);
    let acc = |r: usize, q: usize| YMM[r * q_count + q];
    let input = |q: usize| YMM[r_count * q_count + q];
    let broadcast = YMM[r_count * q_count + q_count];
    let zero = YMM[r_count * q_count + q_count + 1];
    // The epilogue's lane mask: the second input vector's register, or the one after.
    let mask = if q_count >= 2 { input(1) } else { YMM[r_count * q_count + q_count + 2] };
    let partial = spec.last_lanes < LANES;
    let masked = |q: usize| q + 1 == q_count && partial;
    let mut lanes_label = a.create_label();
    if spec.accumulate {
        // The earlier parts' sums, from the output tile.
        if partial {
            a.vmovups(broadcast, ymmword_ptr(lanes_label)).map_err(err)?;
        }
        for r in 0..r_count {
            for q in 0..q_count {
                let source = ymmword_ptr(rcx + disp(r as i64 * spec.plane_bytes + 32 * q as i64)?);
                if masked(q) {
                    a.vmaskmovps(acc(r, q), broadcast, source).map_err(err)?;
                } else {
                    a.vmovups(acc(r, q), source).map_err(err)?;
                }
            }
        }
    } else {
        for r in 0..r_count {
            a.vbroadcastss(broadcast, dword_ptr(rdx + disp(4 * r as i64)?)).map_err(err)?;
            for q in 0..q_count {
                a.vmovaps(acc(r, q), broadcast).map_err(err)?;
            }
        }
    }
    if spec.prefetch != 0 {
        // One prefetch per 64-byte line of each channel's row of the tile.
        for r in 0..r_count {
            for line in 0..(32 * q_count).div_ceil(64) {
                let offset = r as i64 * spec.plane_bytes + 64 * line as i64 + spec.prefetch;
                a.prefetcht1(byte_ptr(rcx + disp(offset)?)).map_err(err)?;
                if spec.residual {
                    a.prefetcht1(byte_ptr(r8 + disp(offset)?)).map_err(err)?;
                }
            }
        }
    }
    a.mov(r9, spec.steps as u64).map_err(err)?;
    let mut head = a.create_label();
    a.set_label(&mut head).map_err(err)?;
    for q in 0..q_count {
        let source = ymmword_ptr(rdi + disp(32 * q as i64)?);
        if masked(q) {
            // The broadcast register holds the mask until the broadcasts below.
            a.vmovups(broadcast, ymmword_ptr(lanes_label)).map_err(err)?;
            a.vmaskmovps(input(q), broadcast, source).map_err(err)?;
        } else {
            a.vmovups(input(q), source).map_err(err)?;
        }
    }
    if spec.prefetch != 0 {
        // The next tile's input in this channel's plane, into L1: the hundreds of planes
        // a long reduction reads are more streams than the hardware prefetchers follow.
        a.prefetcht0(byte_ptr(rdi + disp(spec.prefetch)?)).map_err(err)?;
    }
    for r in 0..r_count {
        a.vbroadcastss(broadcast, dword_ptr(rsi + disp(4 * r as i64)?)).map_err(err)?;
        for q in 0..q_count {
            a.vfmadd231ps(acc(r, q), input(q), broadcast).map_err(err)?;
        }
    }
    a.add(rdi, disp(spec.plane_bytes)?).map_err(err)?;
    a.add(rsi, disp(4 * r_count as i64)?).map_err(err)?;
    a.dec(r9).map_err(err)?;
    a.jnz(head).map_err(err)?;
    // The epilogue, as on AVX-512 (see `assemble_pointwise_512`), the broadcast register
    // a third scratch for sigmoid and silu (whose constants go after the code).
    // A part that does not finish the reduction stores its sums as they are.
    let (activation, residual, post_activation) = match spec.finish {
        true => (spec.activation, spec.residual, spec.post_activation),
        false => (None, false, None),
    };
    let temp = input(0);
    let mut table = VectorConstants::default();
    let stack = StackConstants::push(&mut a, activation, post_activation)?;
    let post_slot = stack.post_slot;
    if partial {
        a.vmovups(mask, ymmword_ptr(lanes_label)).map_err(err)?;
    }
    // Sigmoid or silu as the whole epilogue: stored first, then a `GatePass` over `stored`.
    let pass = GatePass::for_epilogue(activation, residual, post_activation);
    let mut stored = Vec::new();
    for r in 0..r_count {
        for q in 0..q_count {
            let x = acc(r, q);
            let offset = r as i64 * spec.plane_bytes + 32 * q as i64;
            if let Some(activation) = activation.filter(|_| pass.is_none()) {
                activation.emit_avx2(&mut a, x, zero, temp, Some(broadcast), 0, &mut table)?;
            }
            if residual {
                let source = ymmword_ptr(r8 + disp(offset)?);
                if masked(q) {
                    a.vmaskmovps(broadcast, mask, source).map_err(err)?;
                } else {
                    a.vmovups(broadcast, source).map_err(err)?;
                }
                a.vaddps(x, x, broadcast).map_err(err)?;
            }
            if let Some(activation) = post_activation {
                activation.emit_avx2(&mut a, x, zero, temp, Some(broadcast), post_slot, &mut table)?;
            }
            let target = ymmword_ptr(rcx + disp(offset)?);
            if masked(q) {
                a.vmaskmovps(target, mask, x).map_err(err)?;
            } else {
                a.vmovups(target, x).map_err(err)?;
            }
            stored.push((target, masked(q).then(|| ymmword_ptr(lanes_label))));
        }
    }
    if let Some(pass) = pass {
        pass.run(&mut a, &mut table, stored)?;
    }
    stack.pop(&mut a)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    if partial {
        a.set_label(&mut lanes_label).map_err(err)?;
        let bytes: Vec<u8> =
            (0..LANES).flat_map(|l| if l < spec.last_lanes { u32::MAX } else { 0 }.to_le_bytes()).collect();
        a.db(&bytes).map_err(err)?;
    }
    table.place(&mut a)?;
    a.assemble(0).map_err(err)
}

const LANES_512: usize = 16;

/// The two passes of a separable max pooling over one output row, on AVX-512 (the
/// passes are described in `pool.rs`). A maximum takes the new value when it is greater
/// or NaN, as the interpreter's does: `vmaxps` (which keeps the running maximum when
/// either is NaN), then the new value's NaN lanes moved in under a `vcmpunordps` mask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PoolSpec {
    /// `void f(const float *first_row, float *to)`: the maxima of `rows` input rows
    /// (`row_bytes` apart) over `width` columns into `to` (-inf for no rows). The last
    /// 16 columns or fewer load and store under a mask, so nothing past a row is read.
    Columns { width: usize, rows: usize, row_bytes: i64 },
    /// `void f(const float *row, float *out)`: `outputs` maxima of `taps` floats of `row`,
    /// output `o` from float `stride * o` on (stride 1 or 2; at stride 2 two loads and a
    /// `vpermt2ps` gather the even floats). Reads up to [`PoolSpec::reach`] floats of
    /// `row` whatever `outputs` is (the lanes past the last output are not stored).
    Windows { outputs: usize, taps: usize, stride: usize },
}

impl PoolSpec {
    pub fn fits(&self) -> bool {
        match *self {
            PoolSpec::Columns { width, .. } => width >= 1,
            PoolSpec::Windows { outputs, taps, stride } => outputs >= 1 && taps >= 1 && (1..=2).contains(&stride),
        }
    }

    /// Floats of the row a `Windows` kernel may read.
    pub fn reach(&self) -> usize {
        match *self {
            PoolSpec::Columns { width, .. } => width,
            PoolSpec::Windows { outputs, taps, stride } => {
                stride * LANES_512 * (outputs.div_ceil(LANES_512) - 1) + taps - 1 + stride * LANES_512
            }
        }
    }
}

/// Assembles a pooling pass.
pub(crate) fn assemble_pool(spec: &PoolSpec) -> Result<Vec<u8>, String> {
    assert!(spec.fits(), "pooling micro-kernel out of range: {spec:?}");
    let mut a = CodeAssembler::new(64).map_err(err)?;
    // acc = max(acc, v), NaN in v taken.
    let max = |a: &mut CodeAssembler, acc: AsmRegisterZmm, v: AsmRegisterZmm| -> Result<(), String> {
        a.vmaxps(acc, v, acc).map_err(err)?;
        a.vcmpps(k2, v, v, 3).map_err(err)?;
        a.vmovaps(acc.k2(), v).map_err(err)?;
        Ok(())
    };
    let (count, rest) = match *spec {
        PoolSpec::Columns { width, .. } => (width / LANES_512, width % LANES_512),
        PoolSpec::Windows { outputs, .. } => (outputs / LANES_512, outputs % LANES_512),
    };
    if rest > 0 {
        a.mov(eax, (1u32 << rest) - 1).map_err(err)?;
        a.kmovw(k1, eax).map_err(err)?;
    }
    let mut index = a.create_label();
    // One vector of results from the current pointers, masked or not.
    let body = |a: &mut CodeAssembler, masked: bool| -> Result<(), String> {
        let load = |a: &mut CodeAssembler, to: AsmRegisterZmm, at: AsmMemoryOperand| -> Result<(), String> {
            if masked { a.vmovups(to.k1().z(), at) } else { a.vmovups(to, at) }.map_err(err)
        };
        match *spec {
            PoolSpec::Columns { rows, row_bytes, .. } => {
                if rows == 0 {
                    a.mov(eax, f32::NEG_INFINITY.to_bits()).map_err(err)?;
                    a.vpbroadcastd(zmm0, eax).map_err(err)?;
                }
                for r in 0..rows {
                    let to = if r == 0 { zmm0 } else { zmm1 };
                    load(a, to, zmmword_ptr(rdi + disp(r as i64 * row_bytes)?))?;
                    if r > 0 {
                        max(a, zmm0, zmm1)?;
                    }
                }
            }
            PoolSpec::Windows { taps, stride, .. } => {
                // Whole vectors: the caller's buffer holds `reach` floats.
                for j in 0..taps {
                    let to = if j == 0 { zmm0 } else { zmm1 };
                    a.vmovups(to, zmmword_ptr(rdi + disp(4 * j as i64)?)).map_err(err)?;
                    if stride == 2 {
                        a.vpermt2ps(to, zmm7, zmmword_ptr(rdi + disp(4 * j as i64 + 64)?)).map_err(err)?;
                    }
                    if j > 0 {
                        max(a, zmm0, zmm1)?;
                    }
                }
            }
        }
        if masked { a.vmovups(zmmword_ptr(rsi).k1(), zmm0) } else { a.vmovups(zmmword_ptr(rsi), zmm0) }.map_err(err)
    };
    let step = match *spec {
        PoolSpec::Columns { .. } => 64,
        PoolSpec::Windows { stride, .. } => 64 * stride as i32,
    };
    if matches!(spec, PoolSpec::Windows { stride: 2, .. }) {
        a.vmovups(zmm7, zmmword_ptr(index)).map_err(err)?;
    }
    if count > 0 {
        a.mov(rcx, count as u64).map_err(err)?;
        let mut head = a.create_label();
        a.set_label(&mut head).map_err(err)?;
        body(&mut a, false)?;
        a.add(rdi, step).map_err(err)?;
        a.add(rsi, 64).map_err(err)?;
        a.dec(rcx).map_err(err)?;
        a.jnz(head).map_err(err)?;
    }
    if rest > 0 {
        body(&mut a, true)?;
    }
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    if matches!(spec, PoolSpec::Windows { stride: 2, .. }) {
        // The even floats of two vectors.
        a.set_label(&mut index).map_err(err)?;
        let evens: Vec<u8> = (0..16u32).flat_map(|i| (2 * i).to_le_bytes()).collect();
        a.db(&evens).map_err(err)?;
    }
    a.assemble(0).map_err(err)
}

/// A depthwise convolution band: `rows` consecutive output rows of one channel's plane,
/// every column, with the pixels of a row in the vector lanes (16 on AVX-512, 8 on AVX2).
///
/// ```text
/// void ukernel(const float *origin, const float *weights, float *out, const float *residual);
/// ```
///
/// `origin` is the band's first input row (`stride.0` times its first output row, less
/// the top padding; it may lie before the plane, but only rows `valid.0..valid.1` from
/// it are read), `weights` the channel's `kh * kw` taps then its bias, `out` (and
/// `residual`) the band's first output row. For each input row and tap column, the
/// vectors of inputs that the row's outputs multiply by that tap are loaded once and
/// feed every output row of the band that reads them. At stride 2, two loads from
/// column `2 * o + j` hold the inputs of tap `j` in their even floats and those of tap
/// `j + 1` in their odd ones: on AVX-512 a `vpermi2ps` gathers each, on AVX2 a
/// `vshufps` (0x88 even, 0xDD odd) leaves them in the order [0 1 4 5 | 2 3 6 7], the
/// same for every tap, so the accumulators hold that order and one `vpermpd` 0xD8 each
/// puts them back before the epilogue (not one per input vector). The
/// columns that padding puts outside the row are masked off the loads (zero-filled;
/// masked lanes never fault: `k` masks on AVX-512, `vmaskmovps` with lane masks
/// placed after the code on AVX2), so the input is read in place. On AVX-512 up to 9
/// taps stay in registers, more are broadcast from memory by each multiply-add; on
/// AVX2, whose 16 registers go to the accumulators, each tap is broadcast into one
/// register before the multiply-adds of the row's vectors that use it. A partial last
/// vector of a row stores under a mask, except on AVX2 where its 8 lanes end inside the
/// plane (`whole_tails`): there it is stored whole, the lanes past the row read back
/// and blended in, or left to the next row's store where that follows (`vmaskmovps`
/// stores cost about 4 ns each on AMD Zen 3). The partial loads' lane masks stay in the
/// registers the band leaves free, where there are some.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DepthwiseSpec {
    pub simd: Simd,
    /// Kernel rows and columns.
    pub taps: (usize, usize),
    /// Row and column strides (the column stride 1 or 2).
    pub stride: (usize, usize),
    pub pad_left: usize,
    pub in_w: usize,
    pub out_w: usize,
    /// Output rows of the band.
    pub rows: usize,
    /// The band's input rows inside the plane, counted from `origin`.
    pub valid: (usize, usize),
    /// Vectors of a row computed together (`rows * group` accumulators).
    pub group: usize,
    /// Epilogue in registers: an activation, the residual add, an activation after it
    /// (any [`RegisterActivation`]; on AVX-512 sigmoid and silu as the whole epilogue
    /// only, [`epilogue_in_registers`]).
    pub activation: Option<RegisterActivation>,
    pub residual: bool,
    pub post_activation: Option<RegisterActivation>,
    /// On AVX2, the band's first rows whose partial last vector is stored whole (its
    /// lanes past the row read back and blended in, `vblendps`, or overwritten by the
    /// next row's store): those whose 8 lanes end inside the plane, which one thread
    /// writes. The others, and every row on AVX-512, store under a mask.
    pub whole_tails: usize,
    /// int8 (`crate::precision`): the accumulators start at 0 (the taps are the
    /// weights' integers and the input the offsets `q_x - zp`, so the sums are exact
    /// integers) and end as `acc * m + bias`, multiplied then added with a rounding each
    /// (`m` the float after the bias in the channel's weights), before the epilogue.
    /// Otherwise they start at the bias.
    pub rescale: bool,
}

impl DepthwiseSpec {
    /// Taps kept in registers (broadcast once), else 0.
    fn weight_registers(&self) -> usize {
        let taps = self.taps.0 * self.taps.1;
        if taps <= 9 { taps } else { 0 }
    }

    /// The most output rows of a band computing `group` vectors of a row together:
    /// beside the accumulators, the input vectors (at stride 2, those of two tap
    /// columns), `activation_registers` for the activations (a zero for relu, one more
    /// for sigmoid and silu), and on AVX-512 the taps and at stride 2 the two
    /// permutations and the two loads they gather from; on AVX2 a register for the
    /// broadcast tap (or a lane mask) and at stride 2 the two loads.
    pub fn most_rows(simd: Simd, taps: usize, stride_w: usize, activation_registers: usize, group: usize) -> usize {
        let fixed = match simd {
            Simd::Avx512 => (if taps <= 9 { taps } else { 0 }) + if stride_w == 2 { 4 } else { 0 },
            Simd::Avx2 => 1 + if stride_w == 2 { 2 } else { 0 },
        } + activation_registers;
        let inputs = if stride_w == 2 { 2 * group } else { group };
        simd.registers().saturating_sub(fixed + inputs) / group.max(1)
    }

    /// Registers the activations take besides the first input vector's: none, one, or
    /// two for sigmoid and silu; none where sigmoid or silu is the whole epilogue, which
    /// a [`GatePass`] runs after the accumulation with every other register free (on
    /// AVX-512 on the accumulators, at most 16, before the stores; on AVX2 after them).
    pub fn activation_registers(&self) -> usize {
        Self::registers_for(self.activation, self.residual, self.post_activation)
    }

    /// [`Self::activation_registers`] of an epilogue.
    pub fn registers_for(
        activation: Option<RegisterActivation>,
        residual: bool,
        post_activation: Option<RegisterActivation>,
    ) -> usize {
        let activations = [activation, post_activation];
        if GatePass::for_epilogue(activation, residual, post_activation).is_some() {
            0
        } else if activations.iter().flatten().any(|a| a.uses_exp()) {
            2
        } else {
            usize::from(activations.iter().any(Option::is_some))
        }
    }

    pub fn fits(&self) -> bool {
        let most = Self::most_rows(
            self.simd,
            self.taps.0 * self.taps.1,
            self.stride.1,
            self.activation_registers(),
            self.group,
        );
        self.rows >= 1
            && self.group >= 1
            && self.taps.0 >= 1
            && self.taps.1 >= 1
            && self.stride.0 >= 1
            && (1..=2).contains(&self.stride.1)
            && self.in_w >= 1
            && self.out_w >= 1
            && self.valid.0 <= self.valid.1
            && self.rows <= most
            && self.whole_tails <= self.rows
            && register_epilogue_fits(self.simd, self.activation, self.residual, self.post_activation)
    }
}

/// Assembles a depthwise band.
pub(crate) fn assemble_depthwise(spec: &DepthwiseSpec) -> Result<Vec<u8>, String> {
    assert!(spec.fits(), "depthwise band does not fit the registers: {spec:?}");
    match spec.simd {
        Simd::Avx512 => assemble_depthwise_512(spec),
        Simd::Avx2 => assemble_depthwise_avx2(spec),
    }
}

/// The AVX-512 band: the taps in registers (up to 9), `k` masks, `vpermi2ps` at stride 2.
fn assemble_depthwise_512(spec: &DepthwiseSpec) -> Result<Vec<u8>, String> {
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (kh, kw) = spec.taps;
    let (sh, sw) = spec.stride;
    let group = spec.group;
    let weights_in_registers = spec.weight_registers();
    // Sigmoid or silu as the whole epilogue: a `GatePass`'s gate on each accumulator in
    // its register before the store, the constants in zmm20..zmm31 and zmm16..zmm18 the
    // work registers (every register but the accumulators is free then; the taps and
    // permutations are loaded again for a next group). Not a pass over the stored rows:
    // reloading a row that a masked store has just written waits for the store (rows
    // narrower than a vector overlap their neighbours' stores), which made silu cost
    // about 200 cycles per vector on 7x7 planes.
    let pass = GatePass::for_epilogue(spec.activation, spec.residual, spec.post_activation);
    assert!(pass.is_none() || spec.rows * group <= 16, "the gate's registers overlap the accumulators");
    let scratch_register = spec.activation_registers() >= 1;
    let mut next = 0;
    let mut take = |n: usize| {
        let first = next;
        next += n;
        first
    };
    let acc_first = take(spec.rows * group);
    // At stride 2, two tap columns at a time: inputs of the even one, then the odd one.
    let pair = if sw == 2 { 2 } else { 1 };
    let input_first = take(pair * group);
    let weight_first = take(weights_in_registers);
    // The activations' scratch (`k` of `RegisterActivation::emit`; `t` is the first
    // input vector's register).
    let spare = if scratch_register { Some(ZMM[take(1)]) } else { None };
    let [even_index, odd_index, table, second] =
        if sw == 2 { [ZMM[take(1)], ZMM[take(1)], ZMM[take(1)], ZMM[take(1)]] } else { [zmm0; 4] };
    let acc = |q: usize, g: usize| ZMM[acc_first + q * group + g];
    let input = |g: usize| ZMM[input_first + g];
    let in_row_bytes = 4 * spec.in_w as i64;
    let out_row_bytes = 4 * spec.out_w as i64;
    let vectors = spec.out_w.div_ceil(LANES_512);
    let last_lanes = spec.out_w - (vectors - 1) * LANES_512;
    // The lanes of a 16-float load from column `start` that lie inside the row.
    let lanes_inside = |start: isize| -> u32 {
        (0..LANES_512 as isize).filter(|l| (0..spec.in_w as isize).contains(&(start + l))).fold(0, |m, l| m | (1 << l))
    };
    const ALL: u32 = 0xffff;
    // The values in k1 and k2 (straight-line code: known at each point; leaky relu's
    // comparison writes k2, which then holds none).
    let masks = std::cell::Cell::new([None::<u32>; 2]);
    let mut set_mask = |a: &mut CodeAssembler, which: usize, value: u32| -> Result<(), String> {
        let mut known = masks.get();
        if known[which] != Some(value) {
            a.mov(eax, value).map_err(err)?;
            a.kmovw(if which == 0 { k1 } else { k2 }, eax).map_err(err)?;
            known[which] = Some(value);
            masks.set(known);
        }
        Ok(())
    };
    // A load of 16 floats at `start` of the row at `row_offset`, zero outside the row.
    let load = |a: &mut CodeAssembler,
                set_mask: &mut dyn FnMut(&mut CodeAssembler, usize, u32) -> Result<(), String>,
                to: AsmRegisterZmm,
                which: usize,
                row_offset: i64,
                start: isize|
     -> Result<(), String> {
        let mask = lanes_inside(start);
        let at = zmmword_ptr(rdi + disp(row_offset + 4 * start as i64)?);
        if mask == 0 {
            a.vpxord(to, to, to).map_err(err)
        } else if mask == ALL {
            a.vmovups(to, at).map_err(err)
        } else {
            set_mask(a, which, mask)?;
            a.vmovups(if which == 0 { to.k1().z() } else { to.k2().z() }, at).map_err(err)
        }
    };

    if last_lanes < LANES_512 {
        a.mov(eax, (1u32 << last_lanes) - 1).map_err(err)?;
        a.kmovw(k3, eax).map_err(err)?;
    }
    let mut evens = a.create_label();
    let mut odds = a.create_label();
    // The taps and the stride-2 permutations, in their registers.
    let load_fixed = |a: &mut CodeAssembler| -> Result<(), String> {
        for t in 0..weights_in_registers {
            a.vbroadcastss(ZMM[weight_first + t], dword_ptr(rsi + disp(4 * t as i64)?)).map_err(err)?;
        }
        if sw == 2 {
            a.vmovups(even_index, zmmword_ptr(evens)).map_err(err)?;
            a.vmovups(odd_index, zmmword_ptr(odds)).map_err(err)?;
        }
        Ok(())
    };
    load_fixed(&mut a)?;
    // The activations' constants on the stack, as in the pointwise tiles (a gate's are
    // in registers).
    let in_band = spec.activation.filter(|_| pass.is_none());
    let stack = StackConstants::push(&mut a, in_band, spec.post_activation)?;
    let mut constants = VectorConstants::default();
    let bias = 4 * (kh * kw) as i64;
    let factor = bias + 4;
    for first in (0..vectors).step_by(group) {
        let count = group.min(vectors - first);
        for q in 0..spec.rows {
            for g in 0..count {
                if spec.rescale {
                    a.vpxord(acc(q, g), acc(q, g), acc(q, g)).map_err(err)?;
                } else {
                    a.vbroadcastss(acc(q, g), dword_ptr(rsi + disp(bias)?)).map_err(err)?;
                }
            }
        }
        for r in spec.valid.0..spec.valid.1 {
            // The band's output rows that read input row `r`, and with which tap row.
            let users: Vec<(usize, usize)> =
                (0..spec.rows).filter_map(|q| r.checked_sub(q * sh).filter(|&i| i < kh).map(|i| (q, i))).collect();
            if users.is_empty() {
                continue;
            }
            let row_offset = r as i64 * in_row_bytes;
            // Tap columns `j..j + pair`: at stride 2 the even floats of two loads from
            // column `2 * o + j` are the inputs of tap `j`, the odd ones those of `j + 1`.
            for j in (0..kw).step_by(pair) {
                let columns = pair.min(kw - j);
                // The input vectors of these tap columns; false where padding zeroes all.
                let mut live = [false; 32];
                for (g, live) in live.iter_mut().enumerate().take(count) {
                    let column = ((first + g) * LANES_512 * sw) as isize + j as isize - spec.pad_left as isize;
                    if sw == 1 {
                        *live = lanes_inside(column) != 0;
                        if *live {
                            load(&mut a, &mut set_mask, input(g), 0, row_offset, column)?;
                        }
                    } else {
                        let ends = (column, column + LANES_512 as isize);
                        *live = lanes_inside(ends.0) != 0 || lanes_inside(ends.1) != 0;
                        if *live {
                            load(&mut a, &mut set_mask, table, 0, row_offset, ends.0)?;
                            load(&mut a, &mut set_mask, second, 1, row_offset, ends.1)?;
                            for u in 0..columns {
                                let x = input(u * group + g);
                                a.vmovaps(x, if u == 0 { even_index } else { odd_index }).map_err(err)?;
                                a.vpermi2ps(x, table, second).map_err(err)?;
                            }
                        }
                    }
                }
                for u in 0..columns {
                    for &(q, i) in &users {
                        let t = i * kw + j + u;
                        for g in (0..count).filter(|&g| live[g]) {
                            let x = input(u * group + g);
                            if weights_in_registers > 0 {
                                a.vfmadd231ps(acc(q, g), x, ZMM[weight_first + t]).map_err(err)?;
                            } else {
                                a.vfmadd231ps(acc(q, g), x, dword_bcst(rsi + disp(4 * t as i64)?)).map_err(err)?;
                            }
                        }
                    }
                }
            }
        }
        // The epilogue and the stores.
        if let Some(pass) = pass {
            pass.begin_512(&mut a, &mut constants)?;
        }
        for q in 0..spec.rows {
            for g in 0..count {
                let x = acc(q, g);
                let offset = q as i64 * out_row_bytes + 64 * (first + g) as i64;
                let masked = first + g + 1 == vectors && last_lanes < LANES_512;
                if spec.rescale {
                    a.vmulps(x, x, dword_bcst(rsi + disp(factor)?)).map_err(err)?;
                    a.vaddps(x, x, dword_bcst(rsi + disp(bias)?)).map_err(err)?;
                }
                if let Some(activation) = in_band {
                    activation.emit(&mut a, x, spare.expect("an activation register"), input(0), 0)?;
                }
                if let Some(pass) = pass {
                    pass.gate_512(&mut a, x, [ZMM[16], ZMM[17], ZMM[18]])?;
                }
                if spec.residual {
                    let source = zmmword_ptr(rcx + disp(offset)?);
                    if masked {
                        a.vmovups(input(0).k3().z(), source).map_err(err)?;
                    } else {
                        a.vmovups(input(0), source).map_err(err)?;
                    }
                    a.vaddps(x, x, input(0)).map_err(err)?;
                }
                if let Some(activation) = spec.post_activation {
                    activation.emit(&mut a, x, spare.expect("an activation register"), input(0), stack.post_slot)?;
                }
                let target = zmmword_ptr(rdx + disp(offset)?);
                if masked {
                    a.vmovups(target.k3(), x).map_err(err)?;
                } else {
                    a.vmovups(target, x).map_err(err)?;
                }
            }
        }
        // Leaky relu's comparison and the gate's blends wrote k2.
        let leaky = |f: Option<RegisterActivation>| matches!(f, Some(RegisterActivation::LeakyRelu { .. }));
        if leaky(in_band) || leaky(spec.post_activation) || pass.is_some() {
            masks.set([masks.get()[0], None]);
        }
        // The gate's constants took the taps' registers.
        if pass.is_some() && first + group < vectors {
            load_fixed(&mut a)?;
        }
    }
    stack.pop(&mut a)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    if sw == 2 {
        // The even and the odd floats of two vectors.
        a.set_label(&mut evens).map_err(err)?;
        let table: Vec<u8> = (0..16u32).flat_map(|i| (2 * i).to_le_bytes()).collect();
        a.db(&table).map_err(err)?;
        a.set_label(&mut odds).map_err(err)?;
        let odd: Vec<u8> = (0..16u32).flat_map(|i| (2 * i + 1).to_le_bytes()).collect();
        a.db(&odd).map_err(err)?;
    }
    constants.place(&mut a)?;
    a.assemble(0).map_err(err)
}

/// The AVX2 band: 8 lanes, `vmaskmovps` row edges under lane masks placed after the
/// code, `vshufps` at stride 2 (`vpermpd` once per accumulator), each tap broadcast
/// into one register.
fn assemble_depthwise_avx2(spec: &DepthwiseSpec) -> Result<Vec<u8>, String> {
    const LANES: usize = 8;
    const ALL: u32 = 0xff;
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (kh, kw) = spec.taps;
    let (sh, sw) = spec.stride;
    let group = spec.group;
    let mut next = 0;
    let mut take = |n: usize| {
        let first = next;
        next += n;
        first
    };
    let acc_first = take(spec.rows * group);
    // At stride 2, two tap columns at a time: inputs of the even one, then the odd one.
    let pair = if sw == 2 { 2 } else { 1 };
    let input_first = take(pair * group);
    // A broadcast tap, or the lane mask of a masked load or store.
    let scratch = YMM[take(1)];
    // The activations' scratch (with the first input vector's register).
    let spare = if spec.activation_registers() >= 1 { Some(YMM[take(1)]) } else { None };
    let spare_exp = if spec.activation_registers() == 2 { Some(YMM[take(1)]) } else { None };
    let mut table = VectorConstants::default();
    let pass = GatePass::for_epilogue(spec.activation, spec.residual, spec.post_activation);
    let [low, high] = if sw == 2 { [YMM[take(1)], YMM[take(1)]] } else { [ymm0; 2] };
    // The registers free while the stores run: the input vectors, the stride-2 loads
    // and those nothing takes (a gate's scratch for the whole last vectors below).
    let inputs = (input_first..input_first + pair * group).map(|i| YMM[i]);
    let loads = if sw == 2 { vec![low, high] } else { Vec::new() };
    let unused = &YMM[next..];
    let free: Vec<AsmRegisterYmm> = inputs.chain(loads).chain(unused.iter().copied()).collect();
    let acc = |q: usize, g: usize| YMM[acc_first + q * group + g];
    // Where a row's vectors are one group, the lanes a whole last vector writes past
    // the row are the next rows' first ones, stored after it (by this group or the next
    // band): they need no blend (whose load would wait on the previous row's store where
    // rows are narrower than the lanes). With a residual they are blended all the same.
    let overwritten = spec.out_w.div_ceil(LANES) <= group && !spec.residual;
    let input = |g: usize| YMM[input_first + g];
    let in_row_bytes = 4 * spec.in_w as i64;
    let out_row_bytes = 4 * spec.out_w as i64;
    let vectors = spec.out_w.div_ceil(LANES);
    let last_lanes = spec.out_w - (vectors - 1) * LANES;
    // The `vblendps` lanes of a whole last vector that lie past the row.
    let past_row = (0xff << last_lanes) & 0xff;
    // The lanes of an 8-float load from column `start` that lie inside the row.
    let lanes_inside = |start: isize| -> u32 {
        (0..LANES as isize).filter(|l| (0..spec.in_w as isize).contains(&(start + l))).fold(0, |m, l| m | (1 << l))
    };
    // The lane masks the code reads (32 bytes each, after the code) and their labels.
    let mut masks: Vec<(u32, CodeLabel)> = Vec::new();
    fn mask_of(a: &mut CodeAssembler, masks: &mut Vec<(u32, CodeLabel)>, lanes: u32) -> CodeLabel {
        if let Some(&(_, label)) = masks.iter().find(|(m, _)| *m == lanes) {
            return label;
        }
        let label = a.create_label();
        masks.push((lanes, label));
        label
    }
    // A load of 8 floats at `start` of the row at `row_offset`, zero outside the row.
    // (A lane mask held in a register for the vector group, `held`, is not reloaded.)
    let load = |a: &mut CodeAssembler,
                masks: &mut Vec<(u32, CodeLabel)>,
                held: &[(u32, AsmRegisterYmm)],
                to: AsmRegisterYmm,
                row_offset: i64,
                start: isize|
     -> Result<(), String> {
        let lanes = lanes_inside(start);
        let at = ymmword_ptr(rdi + disp(row_offset + 4 * start as i64)?);
        if lanes == 0 {
            a.vxorps(to, to, to).map_err(err)
        } else if lanes == ALL {
            a.vmovups(to, at).map_err(err)
        } else if let Some(&(_, mask)) = held.iter().find(|(m, _)| *m == lanes) {
            a.vmaskmovps(to, mask, at).map_err(err)
        } else {
            let label = mask_of(a, masks, lanes);
            a.vmovups(scratch, ymmword_ptr(label)).map_err(err)?;
            a.vmaskmovps(to, scratch, at).map_err(err)
        }
    };

    // The activations' constants on the stack, as in the pointwise tiles.
    let stack = StackConstants::push(&mut a, spec.activation, spec.post_activation)?;
    let post_slot = stack.post_slot;
    let bias = 4 * (kh * kw) as i64;
    let factor = bias + 4;
    for first in (0..vectors).step_by(group) {
        let count = group.min(vectors - first);
        for q in 0..spec.rows {
            for g in 0..count {
                if spec.rescale {
                    a.vxorps(acc(q, g), acc(q, g), acc(q, g)).map_err(err)?;
                } else {
                    a.vbroadcastss(acc(q, g), dword_ptr(rsi + disp(bias)?)).map_err(err)?;
                }
            }
        }
        // The group's partial lane masks (the same in every input row) into the
        // registers nothing takes, as many as there are.
        let mut held: Vec<(u32, AsmRegisterYmm)> = Vec::new();
        for j in (0..kw).step_by(pair) {
            for g in 0..count {
                let column = ((first + g) * LANES * sw) as isize + j as isize - spec.pad_left as isize;
                let starts = if sw == 1 { vec![column] } else { vec![column, column + LANES as isize] };
                for lanes in starts.into_iter().map(lanes_inside) {
                    if lanes != 0 && lanes != ALL && held.len() < unused.len() && !held.iter().any(|(m, _)| *m == lanes)
                    {
                        let register = unused[held.len()];
                        let label = mask_of(&mut a, &mut masks, lanes);
                        a.vmovups(register, ymmword_ptr(label)).map_err(err)?;
                        held.push((lanes, register));
                    }
                }
            }
        }
        for r in spec.valid.0..spec.valid.1 {
            // The band's output rows that read input row `r`, and with which tap row.
            let users: Vec<(usize, usize)> =
                (0..spec.rows).filter_map(|q| r.checked_sub(q * sh).filter(|&i| i < kh).map(|i| (q, i))).collect();
            if users.is_empty() {
                continue;
            }
            let row_offset = r as i64 * in_row_bytes;
            for j in (0..kw).step_by(pair) {
                let columns = pair.min(kw - j);
                // The input vectors of these tap columns; false where padding zeroes all.
                let mut live = [false; 16];
                for (g, live) in live.iter_mut().enumerate().take(count) {
                    let column = ((first + g) * LANES * sw) as isize + j as isize - spec.pad_left as isize;
                    if sw == 1 {
                        *live = lanes_inside(column) != 0;
                        if *live {
                            load(&mut a, &mut masks, &held, input(g), row_offset, column)?;
                        }
                    } else {
                        let ends = (column, column + LANES as isize);
                        *live = lanes_inside(ends.0) != 0 || lanes_inside(ends.1) != 0;
                        if *live {
                            load(&mut a, &mut masks, &held, low, row_offset, ends.0)?;
                            load(&mut a, &mut masks, &held, high, row_offset, ends.1)?;
                            // Even or odd columns in the order [0 1 4 5 | 2 3 6 7]
                            // of the output lanes: the accumulators hold that order
                            // and are put back in order once, before the epilogue.
                            for u in 0..columns {
                                let x = input(u * group + g);
                                a.vshufps(x, low, high, if u == 0 { 0x88 } else { 0xdd }).map_err(err)?;
                            }
                        }
                    }
                }
                if !live.iter().any(|&l| l) {
                    continue;
                }
                for u in 0..columns {
                    for &(q, i) in &users {
                        let t = i * kw + j + u;
                        a.vbroadcastss(scratch, dword_ptr(rsi + disp(4 * t as i64)?)).map_err(err)?;
                        for g in (0..count).filter(|&g| live[g]) {
                            a.vfmadd231ps(acc(q, g), input(u * group + g), scratch).map_err(err)?;
                        }
                    }
                }
            }
        }
        // The epilogue and the stores (the activations as in the pointwise tiles; sigmoid
        // or silu as the whole epilogue in a `GatePass` after them, over `stored`).
        let mut stored = Vec::new();
        for q in 0..spec.rows {
            for g in 0..count {
                let x = acc(q, g);
                let offset = q as i64 * out_row_bytes + 32 * (first + g) as i64;
                // The last vector of a row ending before its 8 lanes: stored whole where
                // they lie inside the plane (`whole_tails`), the lanes past the row read
                // back and blended in; else under a mask (`vmaskmovps` stores cost about
                // 4 ns each on Zen 3, 14 of them per plane on a 14x14 one).
                let tail = first + g + 1 == vectors && last_lanes < LANES;
                // With a gate pass, a whole last vector takes the gate here, its
                // constants from memory (the pass's loads would overlap the stores of
                // the next row's first vector and stall on them).
                let gate_here = pass.is_some() && free.len() >= 3;
                let whole = tail && q < spec.whole_tails && (pass.is_none() || gate_here);
                let masked = tail && !whole;
                if spec.rescale {
                    a.vbroadcastss(scratch, dword_ptr(rsi + disp(factor)?)).map_err(err)?;
                    a.vmulps(x, x, scratch).map_err(err)?;
                    a.vbroadcastss(scratch, dword_ptr(rsi + disp(bias)?)).map_err(err)?;
                    a.vaddps(x, x, scratch).map_err(err)?;
                }
                let lanes = masked.then(|| ymmword_ptr(mask_of(&mut a, &mut masks, (1 << last_lanes) - 1)));
                if let Some(lanes) = lanes {
                    a.vmovups(scratch, lanes).map_err(err)?;
                }
                if sw == 2 {
                    a.vpermpd(x, x, 0xd8).map_err(err)?;
                }
                if let Some(activation) = spec.activation.filter(|_| pass.is_none()) {
                    activation.emit_avx2(
                        &mut a,
                        x,
                        spare.expect("an activation register"),
                        input(0),
                        spare_exp,
                        0,
                        &mut table,
                    )?;
                }
                if spec.residual {
                    let source = ymmword_ptr(rcx + disp(offset)?);
                    if masked {
                        a.vmaskmovps(input(0), scratch, source).map_err(err)?;
                    } else {
                        a.vmovups(input(0), source).map_err(err)?;
                    }
                    a.vaddps(x, x, input(0)).map_err(err)?;
                }
                if let Some(activation) = spec.post_activation {
                    activation.emit_avx2(
                        &mut a,
                        x,
                        spare.expect("an activation register"),
                        input(0),
                        spare_exp,
                        post_slot,
                        &mut table,
                    )?;
                }
                let target = ymmword_ptr(rdx + disp(offset)?);
                if masked {
                    a.vmaskmovps(target, scratch, x).map_err(err)?;
                } else {
                    if whole {
                        if let Some(gate) = spec.activation.filter(|_| pass.is_some()) {
                            gate.emit_avx2(&mut a, x, free[0], free[1], Some(free[2]), 0, &mut table)?;
                        }
                        if !overwritten {
                            a.vblendps(x, x, target, past_row).map_err(err)?;
                        }
                    }
                    a.vmovups(target, x).map_err(err)?;
                }
                if !whole {
                    stored.push((target, lanes));
                }
            }
        }
        if let Some(pass) = pass {
            // Every register is reloaded for the next vectors.
            pass.run(&mut a, &mut table, stored)?;
        }
    }
    stack.pop(&mut a)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    // The lane masks: all ones in the lanes kept, as `vmaskmovps` reads their sign bits.
    for (lanes, mut label) in masks {
        a.set_label(&mut label).map_err(err)?;
        let bytes: Vec<u8> =
            (0..LANES).flat_map(|l| if lanes & (1 << l) != 0 { u32::MAX } else { 0 }.to_le_bytes()).collect();
        a.db(&bytes).map_err(err)?;
    }
    table.place(&mut a)?;
    a.assemble(0).map_err(err)
}

/// A machine-code micro-kernel of any kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Ukernel {
    Tile(TileSpec),
    /// The AVX2 integer tile of an int8 layer (`int8`): a [`TileSpec`]'s geometry over
    /// pairs of input channels.
    Int8Tile(TileSpec),
    Pointwise(PointwiseSpec),
    Pool(PoolSpec),
    Depthwise(DepthwiseSpec),
    /// The conversion of two channels' rows into the bf16 pairs of the `vdpbf16ps`
    /// tiles (`bf16`).
    Bf16Row(super::bf16::RowSpec),
    /// The quantization of four channels' rows into the quads of the VNNI tiles (`int8`).
    Int8Quads(super::int8::QuadSpec),
    /// A run of f32 values rounded to bf16 or turned into int8 offsets, as f32
    /// (`operands`).
    Operands(super::operands::OperandSpec),
}

impl Ukernel {
    pub fn fits(&self) -> bool {
        match self {
            Ukernel::Tile(spec) => spec.fits(),
            Ukernel::Int8Tile(spec) => super::int8::fits(spec),
            Ukernel::Pointwise(spec) => spec.fits(),
            Ukernel::Pool(spec) => spec.fits(),
            Ukernel::Depthwise(spec) => spec.fits(),
            Ukernel::Bf16Row(spec) => spec.pixels >= 1,
            Ukernel::Int8Quads(spec) => spec.pixels >= 1,
            Ukernel::Operands(spec) => spec.count >= 1,
        }
    }

    pub fn assemble(&self) -> Result<Vec<u8>, String> {
        match self {
            Ukernel::Tile(spec) => assemble(spec),
            Ukernel::Int8Tile(spec) => super::int8::assemble(spec),
            Ukernel::Pointwise(spec) => assemble_pointwise(spec),
            Ukernel::Pool(spec) => assemble_pool(spec),
            Ukernel::Depthwise(spec) => assemble_depthwise(spec),
            Ukernel::Bf16Row(spec) => super::bf16::assemble_row(spec),
            Ukernel::Int8Quads(spec) => super::int8::assemble_quads(spec),
            Ukernel::Operands(spec) => super::operands::assemble(spec),
        }
    }

    /// Pointer arguments: `(in, weights, bias, tile)`, `(in, weights, bias, out,
    /// residual)`, `(from, to)` (a pool or an operand conversion), `(origin, weights,
    /// out, residual)`, `(low, high, pairs)` or `(c0, c1, c2, c3, quads)`.
    pub fn arguments(&self) -> usize {
        match self {
            Ukernel::Tile(_) | Ukernel::Int8Tile(_) => 4,
            Ukernel::Pointwise(_) => 5,
            Ukernel::Pool(_) | Ukernel::Operands(_) => 2,
            Ukernel::Depthwise(_) => 4,
            Ukernel::Bf16Row(_) => 3,
            Ukernel::Int8Quads(_) => 5,
        }
    }

    /// Whether the micro-kernel returns an I32 (`Int8Quads`: whether it met a NaN).
    pub fn returns(&self) -> bool {
        matches!(self, Ukernel::Int8Quads(_))
    }
}

/// `void f(uint32_t *saved)`: saves MXCSR into `*saved`, then sets flush-to-zero (bit 15)
/// and denormals-are-zero (bit 6), so that a denormal result is 0 and a denormal operand
/// reads as 0. `infer` and `infer_part` run their kernels so and restore the caller's
/// MXCSR with [`assemble_flush_leave`]: on Intel cores an FMA that meets a denormal
/// costs a microcode assist (EfficientNet-B0 with random weights, whose sigmoid gates
/// reach 1e-39 and make the gated map denormal where it is small, ran its
/// `features.7.0.block.3.0` in 6.5 ms instead of 0.6).
pub(crate) fn assemble_flush_enter() -> Result<Vec<u8>, String> {
    let mut a = CodeAssembler::new(64).map_err(err)?;
    a.stmxcsr(dword_ptr(rdi)).map_err(err)?;
    a.mov(eax, dword_ptr(rdi)).map_err(err)?;
    a.or(eax, 0x8040).map_err(err)?;
    // The red zone below the stack pointer holds the new value for `ldmxcsr`.
    a.mov(dword_ptr(rsp - 4), eax).map_err(err)?;
    a.ldmxcsr(dword_ptr(rsp - 4)).map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

/// `void f(const uint32_t *saved)`: restores the MXCSR [`assemble_flush_enter`] saved.
pub(crate) fn assemble_flush_leave() -> Result<Vec<u8>, String> {
    let mut a = CodeAssembler::new(64).map_err(err)?;
    a.ldmxcsr(dword_ptr(rdi)).map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}
