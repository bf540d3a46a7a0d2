//! Reduced precision: what `--precision bf16` and `--precision int8` mean, exactly, and
//! where they apply.
//!
//! A layer's precision is a field of its node ([`crate::ir::Node::precision`]), so that
//! a later per-layer choice (`--precision auto`) needs no new representation; `f32`
//! everywhere is the default and the IR text mentions a precision only when it is not
//! f32. [`assign`] sets one precision on every layer it applies to.
//!
//! **bf16** (the arithmetic of AVX-512 BF16's `vcvtne2ps2bf16` and `vdpbf16ps`), for a
//! conv or linear layer:
//! - its weights are rounded to bf16 (8 bits of significand, f32's exponent range);
//! - its input activations are rounded to bf16 where the layer reads them (the value
//!   other layers read stays f32);
//! - the products of two bf16 values are exact in f32 and are accumulated in f32;
//! - the bias and the fused epilogue (activations, residual add) run in f32, as does
//!   every other layer (pooling, normalization, elementwise, softmax...).
//!
//! Where it runs: the reference interpreter simulates it exactly; the cpu target runs a
//! bf16 layer one of two ways (`backend::clif::Bf16Tiles`), whichever is faster on the
//! host:
//! - the `vdpbf16ps` tiles of `backend/clif/kernels/bf16.rs` (pairs of input channels,
//!   two exact products per f32 lane; pointwise layers on large planes on the pointwise
//!   pixel tiles with `vdpbf16ps`), with the weights rounded as they are packed and the
//!   input rounded as it is copied into the pair planes: on a host with AVX512_BF16 whose
//!   `vdpbf16ps` outpaces its FMAs (AMD Zen 4: twice their work per cycle) and no `--cpu`
//!   level;
//! - elsewhere (Intel cores with two 512-bit FMA units, where `vdpbf16ps` runs at half
//!   the FMAs' rate; hosts without AVX512_BF16; any `--cpu` level), and for depthwise
//!   layers everywhere, the f32 kernels the layer's f32 twin would run (direct,
//!   pointwise, depthwise, Winograd, linear), over weights rounded when they are packed
//!   and an input rounded into scratch before the kernel runs: bf16's arithmetic at f32's
//!   speed. Winograd computes the same sums of the same rounded products with its own
//!   f32 rounding errors (about 1e-6 relative), like every f32 kernel.
//!
//! The gpu target runs f32 only and refuses bf16.
//!
//! The rounding ([`round_bf16`]) is round-to-nearest-even on the 16 bits dropped. A
//! denormal f32 becomes a zero of its sign (the instructions treat denormal inputs as
//! zero and never produce bf16 denormals), a NaN stays a NaN (made quiet, its sign and
//! high payload bits kept), an infinity stays infinite, and a finite value whose
//! rounding passes the largest bf16 becomes an infinity of its sign. The hardware also
//! flushes denormal partial sums to zero; the reference interpreter does not (a
//! difference far below 1e-30 in absolute terms), and it accumulates in its own order, so
//! the native code is compared with it by relative L2 error like any f32 kernel.
//!
//! **int8** (static post-training quantization), for a conv or linear layer:
//! - its weights are quantized per output channel `c`, symmetric, to s8 in [-127, 127]:
//!   `s_w[c] = max|w_c| / 127` (f32), `q_w = clamp(round_half_even(w / s_w[c]), -127,
//!   127)`; an all-zero channel gets `s_w[c] = 1` (its integers are all 0). -128 is left
//!   out: with the scale set by `max|w_c|`, rounding never reaches it, and the bound
//!   `|q_w| <= 127` is the same for both signs. That bound is what the integer kernels
//!   need: VNNI's `vpdpbusd` (u8 x s8 into i32) takes these integers as they are, while
//!   AVX2's `vpmaddubsw` adds two u8 x s8 products into a saturating i16, where a pair
//!   reaches 2 x 255 x 127 = 64770 > 32767; the AVX2 kernel therefore multiplies i16
//!   operands with `vpmaddwd` (each pair summed exactly into an i32) instead;
//! - its input activations are quantized per tensor to u8 with a zero point, from a
//!   calibration ([`crate::calibrate`], `cnnc calibrate`): the calibrated range `[lo, hi]`
//!   is widened to contain 0, `s_x = (hi - lo) / 255`, `zp = round_half_even(-lo /
//!   s_x)` (so the real 0, the padding, is exactly the integer `zp`), and each value
//!   becomes `q_x = clamp(round_half_even(x / s_x) + zp, 0, 255)` (saturation: values
//!   outside the calibrated range, and infinities, go to 0 or 255). A NaN stays NaN: the
//!   outputs that read it are NaN, as in f32 (no integer can hold it, and turning it into
//!   a number would hide it);
//! - the products `(q_x - zp) x q_w` are summed exactly as integers (`acc`, i32);
//! - the output is `f32(f32(acc) * m[c]) + bias[c]` in f32 (multiply, round, add, round;
//!   no fused multiply-add), with `m[c] = f32(s_x * s_w[c])`; the fused epilogue
//!   (activations, residual add) runs in f32 after it, as does every other layer.
//!
//! The sum of one output has `K` products (input channels per group x kernel taps, or
//! the input features), each at most 255 x 127 in magnitude, so `acc` fits i32 whenever
//! `K <= 66311` ([`INT8_MAX_REDUCTION`]; VGG-16's largest, fc6, has K = 25088); a layer
//! with a longer reduction stays f32 ([`Precision::applies_to`] says no).
//!
//! Where int8 runs: the reference interpreter simulates it exactly (the integers
//! accumulated in f64, exact to 2^53). On the cpu target:
//! - a conv layer with one group and at least 4 input channels, or a linear layer of at
//!   least 4 input features, on an AVX2 host (x86-64-v3, or `--cpu x86-64-v3`), runs on
//!   the integer tiles of `backend/clif/kernels/int8.rs`: the input is copied into the
//!   scratch buffer as i16 offsets `q_x - zp`, two input channels (or features) per
//!   32-bit word, the weights are packed as i16 pairs, `vpmaddwd` and `vpaddd` sum the
//!   products exactly in i32, and the store converts the sum to f32 (rounded to nearest
//!   even) and applies `* m[c] + bias[c]` (the same two roundings) before the epilogue:
//!   bit for bit the simulation, with no limit on the partial sums but i32's. An input
//!   with a NaN (no integer holds one) takes the f32 direct tiles below (for that batch
//!   element; a linear layer's whole batch);
//! - on an AVX-512 host with AVX512_VNNI (the host's ISA, no `--cpu` level), a conv
//!   layer with one group, whatever its input channels, or a linear layer of at least 4
//!   input features, runs on the VNNI tiles of the same file: the input copied as u8
//!   `q_x`, four input channels (or features) per 32-bit word, the weights as s8 quads,
//!   `vpdpbusd` summing four products per lane exactly into i32 accumulators that start
//!   at `-zp * sum(q_w)` (so that they end at the sum of `(q_x - zp) * q_w`), then the
//!   same store: bit for bit the simulation, a NaN handled as on AVX2;
//! - with VNNI, a 1x1 conv (stride 1, no padding, one group) on a plane of at least 512
//!   pixels whose epilogue runs in registers takes the pointwise pixel tiles over the same
//!   quad planes (`vpdpbusd` per quad, pixels in the lanes, the output stored without
//!   transposes), bit for bit the simulation too; an input with a NaN takes the f32
//!   direct tiles as above;
//! - a depthwise conv (one input and one output channel per group, the shapes the
//!   depthwise bands take) runs on the depthwise bands of `backend/clif/kernels/
//!   depthwise.rs` over each plane quantized into the offsets `q_x - zp` as f32, the
//!   weights' integers as taps, the accumulators from 0 (at most 11 x 11 products of
//!   magnitude 255 x 127: exact in f32) and `acc * m + bias` in the band: bit for bit the
//!   simulation, a NaN kept as a NaN;
//! - every other int8 layer (grouped convs, depthwise ones the bands do not take, on
//!   AVX2 those of 1 to 3 input channels or features, on AVX-512 hosts without VNNI all
//!   of them, and below AVX2) runs on the f32 direct tiles fed the integers,
//!   `q_x - zp` (as the input is copied into the scratch buffer) and `q_w` (packed),
//!   whose products are exact in f32 and whose sums are exact while every partial sum
//!   stays below 2^24 in magnitude (at least up to K = 518 whatever the values; beyond,
//!   a sum past 2^24 rounds, by at most 2^-24 of it); the accumulators start at 0 and
//!   the store is the same. This gives int8's results but not its speed.
//!
//! No Winograd kernels for an int8 layer; `--precision auto`
//! (`crate::auto_precision`) chooses per layer between f32, bf16 and int8. The gpu
//! target refuses int8.

use std::fmt;

use crate::ir::{Graph, Op};

/// The arithmetic a layer runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE single precision throughout.
    #[default]
    F32,
    /// Weights and input activations rounded to bf16, f32 accumulation and epilogue.
    Bf16,
    /// Weights quantized to s8 per output channel, the input to u8 with the layer's
    /// calibrated scale and zero point, exact integer sums, f32 rescaling and epilogue.
    Int8(Int8Input),
}

/// The longest reduction (products per output) an int8 layer may have: its integer sum
/// then fits i32 whatever the values, `floor((2^31 - 1) / (255 * 127))`.
pub const INT8_MAX_REDUCTION: usize = 66_311;

/// How an int8 layer quantizes its input: `q = clamp(round_half_even(x / scale) +
/// zero_point, 0, 255)`. The scale is kept as its bits so that the type is `Eq` and
/// `Hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Int8Input {
    scale_bits: u32,
    zero_point: u8,
}

impl Int8Input {
    /// A quantization with this scale (finite and positive, else `None`) and zero point.
    pub fn new(scale: f32, zero_point: u8) -> Option<Int8Input> {
        (scale.is_finite() && scale > 0.0).then_some(Int8Input { scale_bits: scale.to_bits(), zero_point })
    }

    /// The quantization of the range `[lo, hi]` (finite, `lo <= hi`), widened to contain
    /// 0: `scale = (hi - lo) / 255` (1 for the range [0, 0]), `zero_point =
    /// round_half_even(-lo / scale)`.
    pub fn from_range(lo: f32, hi: f32) -> Option<Int8Input> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return None;
        }
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = (hi - lo) / 255.0;
        if scale == 0.0 {
            return Int8Input::new(1.0, 0);
        }
        if !scale.is_finite() {
            return None;
        }
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        Int8Input::new(scale, zero_point)
    }

    pub fn scale(self) -> f32 {
        f32::from_bits(self.scale_bits)
    }

    pub fn zero_point(self) -> u8 {
        self.zero_point
    }

    /// `q - zero_point` for an input value `x`, as the f32 of that integer (-255 to
    /// 255); NaN stays NaN (see the module docs). Every step is exact but the division.
    pub fn offset(self, x: f32) -> f32 {
        let zp = self.zero_point as f32;
        ((x / self.scale()).round_ties_even() + zp).clamp(0.0, 255.0) - zp
    }

    /// The real value an integer offset (`q - zero_point`) stands for.
    pub fn dequantize(self, offset: f32) -> f32 {
        offset * self.scale()
    }
}

impl Precision {
    /// The name on the command line and in the IR text.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8(_) => "int8",
        }
    }

    /// Parses `f32` or `bf16` (int8 needs a calibration: [`crate::calibrate`]).
    pub fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Err("precision int8 needs a calibration file (made by `cnnc calibrate`)".to_string()),
            _ => Err(format!("unknown precision `{text}` (expected f32, bf16 or int8)")),
        }
    }

    /// Whether this is int8 (whatever its input quantization).
    pub fn is_int8(self) -> bool {
        matches!(self, Precision::Int8(_))
    }

    /// Whether a layer of this op can run in this precision: f32 everything, bf16 and
    /// int8 the layers whose work is a dot product of weights and inputs (conv and
    /// linear). For int8 the layer's shape matters too ([`reduction_length`] at most
    /// [`INT8_MAX_REDUCTION`]), which [`assign`] checks.
    pub fn applies_to(self, op: &Op) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 | Precision::Int8(_) => matches!(op, Op::Conv(_) | Op::Linear { .. }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sets `precision` on every layer it applies to ([`Precision::applies_to`]; for int8,
/// with its reduction at most [`INT8_MAX_REDUCTION`], and with one input quantization
/// for all: per-layer ones come from a calibration, [`crate::calibrate`]); the others
/// run in f32. Returns how many layers took it.
pub fn assign(graph: &mut Graph, precision: Precision) -> usize {
    let mut count = 0;
    for id in graph.node_ids() {
        // int8 takes the layers whose integer sums fit i32 only.
        let fits = !precision.is_int8()
            || graph
                .op_operands(id)
                .first()
                .is_some_and(|&x| reduction_length(&graph.node(id).op, &graph.node(x).shape) <= INT8_MAX_REDUCTION);
        let node = graph.node_mut(id);
        node.precision = if fits && precision.applies_to(&node.op) { precision } else { Precision::F32 };
        count += usize::from(node.precision == precision);
    }
    count
}

/// The int8 weights of a conv or linear layer (`[O, ...]`, output channel first):
/// `(q_w as f32, s_w)`, the integers in [-127, 127] and one scale per output channel
/// (see the module docs).
pub fn quantize_weights(weight: &[f32], out_channels: usize) -> (Vec<f32>, Vec<f32>) {
    let per_channel = weight.len() / out_channels.max(1);
    let mut integers = Vec::with_capacity(weight.len());
    let mut scales = Vec::with_capacity(out_channels);
    for channel in weight.chunks(per_channel.max(1)) {
        let max = channel.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 1.0 };
        scales.push(scale);
        integers.extend(channel.iter().map(|&w| quantize_weight(w, scale)));
    }
    (integers, scales)
}

/// One weight's integer (as f32): `clamp(round_half_even(w / scale), -127, 127)`.
pub fn quantize_weight(w: f32, scale: f32) -> f32 {
    (w / scale).round_ties_even().clamp(-127.0, 127.0)
}

/// The per-channel factors `m[c] = f32(s_x * s_w[c])` that turn an int8 layer's integer
/// sums into its outputs (before the bias).
pub fn output_scales(input: Int8Input, weight_scales: &[f32]) -> Vec<f32> {
    weight_scales.iter().map(|&s| input.scale() * s).collect()
}

/// The products per output of a conv or linear layer whose input is `input_shape`.
pub fn reduction_length(op: &Op, input_shape: &[usize]) -> usize {
    match op {
        Op::Conv(conv) => input_shape.get(1).copied().unwrap_or(0) / conv.groups.max(1) * conv.kernel.h * conv.kernel.w,
        Op::Linear { .. } => input_shape.last().copied().unwrap_or(0),
        _ => 0,
    }
}

/// Rounds an f32 to the nearest bf16 (ties to even), returned as the f32 of equal
/// value; denormals become signed zeros and NaNs quiet NaNs (see the module docs).
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xffff_0000);
    }
    if bits & 0x7f80_0000 == 0 {
        // Zero or denormal.
        return f32::from_bits(bits & 0x8000_0000);
    }
    // Adding 0x7fff plus the lowest kept bit rounds half to even; an infinity has no
    // low bits and stays, the largest finite values carry into the exponent (infinity).
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// Rounds every value of a slice to bf16 in place.
pub fn round_slice_bf16(values: &mut [f32]) {
    for v in values {
        *v = round_bf16(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        let r = |bits: u32| round_bf16(f32::from_bits(bits)).to_bits();
        assert_eq!(r(0x3f80_0000), 0x3f80_0000);
        // Below, at and above the halfway point, with an even and an odd kept bit.
        assert_eq!(r(0x3f80_7fff), 0x3f80_0000);
        assert_eq!(r(0x3f80_8000), 0x3f80_0000);
        assert_eq!(r(0x3f80_8001), 0x3f81_0000);
        assert_eq!(r(0x3f81_8000), 0x3f82_0000);
        assert_eq!(r(0xbf81_8000), 0xbf82_0000);
        // A carry into the exponent.
        assert_eq!(r(0x3fff_ff00), 0x4000_0000);
    }

    #[test]
    fn special_values() {
        let r = |x: f32| round_bf16(x).to_bits();
        assert_eq!(r(f32::INFINITY), f32::INFINITY.to_bits());
        assert_eq!(r(f32::NEG_INFINITY), f32::NEG_INFINITY.to_bits());
        assert_eq!(r(f32::MAX), f32::INFINITY.to_bits());
        assert_eq!(r(-f32::MAX), f32::NEG_INFINITY.to_bits());
        assert_eq!(r(f32::from_bits(1)), 0);
        assert_eq!(r(-f32::from_bits(0x007f_ffff)), 0x8000_0000);
        assert_eq!(r(-0.0), 0x8000_0000);
        // The smallest normal stays.
        assert_eq!(r(f32::MIN_POSITIVE), f32::MIN_POSITIVE.to_bits());
        // A NaN whose payload lies in the dropped bits stays a (quiet) NaN.
        let nan = round_bf16(f32::from_bits(0x7f80_0001));
        assert!(nan.is_nan());
        assert_eq!(nan.to_bits(), 0x7fc0_0000);
    }

    #[test]
    fn every_rounded_value_is_a_bf16_and_the_nearest() {
        let mut state = 0x1234_5678u32;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = f32::from_bits(state);
            if !x.is_finite() || x.abs() < f32::MIN_POSITIVE || x.abs() > 1e38 {
                continue;
            }
            let y = round_bf16(x);
            assert_eq!(y.to_bits() & 0xffff, 0);
            // The neighbours one bf16 ulp either side are no nearer.
            let ulp = f32::from_bits(y.abs().to_bits() + 0x1_0000) - y.abs();
            let err = (x as f64 - y as f64).abs();
            assert!(err <= ulp as f64 / 2.0, "{x:e} -> {y:e}");
        }
    }
}
