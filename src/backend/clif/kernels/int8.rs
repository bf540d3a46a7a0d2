//! The integer micro-kernel of int8 convolutions and linear layers on AVX2 (x86-64-v3):
//! exact integer
//! sums, so the layer computes bit for bit what the interpreter's simulation computes
//! (`crate::precision`), with no limit on the partial sums but i32's.
//!
//! The operands are 16-bit integers taken two input channels at a time. The layer's
//! input is copied into the scratch buffer as *pair planes*: plane `j` holds, per padded
//! pixel, a 32-bit word whose low half is channel `2j`'s offset `q_x - zp` and whose high
//! half is channel `2j + 1`'s, both i16 in [-255, 255] (an odd last channel is paired
//! with itself; its partner's weights are 0). A pair plane has the byte geometry of one
//! f32 channel plane, so the tiles walk it exactly as the f32 direct tiles walk the f32
//! copy (`conv`): `ceil(C / 2)` steps instead of `C`, the same taps, pixels and strides.
//! The weights are packed the same way, `[pair][tap][lane]` with a word per lane holding
//! the s8 weights of the two channels as i16, then three regions laid out as the f32
//! tiles' bias: zeros, the factors `m[c]` and the bias. A linear layer is the 1x1 case
//! over rows: each row of its input is copied as its i16 offsets in order (`copy_row`;
//! word `j` holds features `2j` and `2j + 1`, a zero after an odd last one), and the
//! weights take half the bytes of f32's (VGG-16's 25088 x 4096 `classifier.0`, bound by
//! reading them: 48 to 18 ms).
//!
//! One tile: `pixels x vectors` ymm accumulators of 8 i32 (8 output channels), zeroed;
//! per step and tap, the weight vectors are loaded, each pixel's word is broadcast
//! (`vpbroadcastd`), and `vpmaddwd` multiplies the 16 i16 pairs and adds each pair's two
//! products into an i32 (at most 2 x 255 x 127 in magnitude, exact), which `vpaddd` adds
//! to the accumulator (exact: the layer's reduction is at most `INT8_MAX_REDUCTION`).
//! `vpmaddubsw` (u8 x s8, faster) is not used: its i16 pair sums saturate (2 x 255 x
//! 127 is over 32767). At the end, `vcvtdq2ps` rounds each sum to f32 (to nearest even, as the
//! simulation's `f32(acc)`), and the tile is stored pixel-major to the tile buffer as
//! the f32 tiles store theirs; the conv kernel's store then computes `f32(acc * m[c]) +
//! bias[c]` (two roundings) and the epilogue.
//!
//! NaN: no integer holds one, and the simulation makes every output that reads a NaN a
//! NaN. The quantizing copy notes whether it met a NaN (each part its share, in a flag
//! slot per part after the copy); if any part did, that batch element (a linear layer:
//! the whole batch) runs on the f32
//! direct tiles fed the integers (exact too, and NaN-keeping), whose packed weights the
//! kernel also holds.
//!
//! **VNNI** (AVX-512 hosts with AVX512_VNNI, [`assemble_vnni`]): quads instead of pairs.
//! The input is copied as *quad planes* of u8 `q_x` (four channels per 32-bit word,
//! [`QuadSpec`], a micro-kernel that also reports a NaN; the border is the zero point in
//! every byte), the weights as s8 quads ([`pack`]), and `vpdpbusd` adds each
//! lane's four u8 x s8 products into its i32 accumulator, which starts at `-zp *
//! sum(q_w)`: the sum of `(q_x - zp) * q_w`, exact, then as on AVX2.
//!
//! Where it runs: int8 conv layers with one group, on AVX2 hosts with at least 4 input
//! channels and on AVX-512 hosts with VNNI with any (`codegen`,
//! `ConvKernel::int8_tiles_apply`), and int8 linear layers of at least 4 input features
//! on both (`LinearKernel::int8_tiles_apply`; a linear layer's rows quantized in order,
//! [`copy_row`] and [`copy_row_bytes`]). Grouped and depthwise int8 layers, the smaller
//! ones, and every int8 layer on AVX-512 hosts without VNNI run on the f32 direct tiles
//! fed the integers.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::Variable;
use iced_x86::code_asm::*;

use super::conv::{Blocking, channel_region};
use super::x86::{Simd, TileSpec, YMM, disp, emit_steps, err};
use super::{F32, I32, Kb};
use crate::precision::Int8Input;

/// Bytes of one ymm register.
const VECTOR_BYTES: i64 = 32;

/// Whether the integer tile of `spec` fits: on AVX2 the f32 tile's accumulators and
/// weight vectors, a broadcast register and a product register; on AVX-512 (the VNNI
/// tile, [`assemble_vnni`]) the f32 tile's registers.
pub(super) fn fits(spec: &TileSpec) -> bool {
    !spec.bf16 && spec.fits()
}

/// Assembles the integer tile of `spec` (`x86::Ukernel::Int8Tile`): the signature and
/// geometry of the f32 tiles (`x86`); on AVX2 `steps` pairs of input channels, the bias
/// argument not read (the sums start at 0); on AVX-512 the VNNI tile of quads.
pub(super) fn assemble(spec: &TileSpec) -> Result<Vec<u8>, String> {
    assert!(fits(spec), "int8 micro-kernel tile does not fit the registers: {spec:?}");
    if spec.simd == Simd::Avx512 {
        return assemble_vnni(spec);
    }
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (p_count, v_count) = (spec.pixels, spec.vectors);
    let acc = |p: usize, v: usize| YMM[p * v_count + v];
    let weight = |v: usize| YMM[p_count * v_count + v];
    let x = YMM[p_count * v_count + v_count];
    let product = YMM[p_count * v_count + v_count + 1];
    let tap_bytes = v_count as i64 * VECTOR_BYTES;
    let step_bytes = tap_bytes * spec.taps.len() as i64;

    for p in 0..p_count {
        for v in 0..v_count {
            a.vpxor(acc(p, v), acc(p, v), acc(p, v)).map_err(err)?;
        }
    }
    // One step (a pair of input channels): per tap, the weight vectors, then per pixel
    // a broadcast word and its multiply-adds; `u` steps past the current pointers.
    let step = |a: &mut CodeAssembler, u: i64| -> Result<(), String> {
        for (t, &tap) in spec.taps.iter().enumerate() {
            let w_offset = u * step_bytes + t as i64 * tap_bytes;
            for v in 0..v_count {
                a.vmovdqu(weight(v), ymmword_ptr(rsi + disp(w_offset + VECTOR_BYTES * v as i64)?)).map_err(err)?;
            }
            for p in 0..p_count {
                let offset = u * spec.in_step + tap + p as i64 * spec.pixel_stride;
                a.vpbroadcastd(x, dword_ptr(rdi + disp(offset)?)).map_err(err)?;
                for v in 0..v_count {
                    a.vpmaddwd(product, weight(v), x).map_err(err)?;
                    a.vpaddd(acc(p, v), acc(p, v), product).map_err(err)?;
                }
            }
        }
        Ok(())
    };
    // The steps unrolled and looped as the f32 tiles'.
    emit_steps(&mut a, spec, step_bytes, &step)?;
    for p in 0..p_count {
        for v in 0..v_count {
            let offset = (p * v_count + v) as i64 * VECTOR_BYTES;
            a.vcvtdq2ps(acc(p, v), acc(p, v)).map_err(err)?;
            a.vmovups(ymmword_ptr(rcx + disp(offset)?), acc(p, v)).map_err(err)?;
        }
    }
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

/// Assembles the VNNI tile of `spec` (AVX-512 with AVX512_VNNI): the f32 tile's
/// geometry over `steps` quads of input channels. The input's quad planes hold per
/// pixel a 32-bit word of four u8 `q_x` (channels `4j` to `4j + 3`), the weights a word
/// of four s8 `q_w` per lane; `vpdpbusd` adds the four products of each lane's bytes
/// into its i32 accumulator, exactly. The accumulators start at the bias argument's
/// i32 correction `-zp * sum(q_w)` ([`pack`]), so that they end at the sum of
/// `(q_x - zp) * q_w`; `vcvtdq2ps` rounds it to f32 for the store, as on AVX2.
fn assemble_vnni(spec: &TileSpec) -> Result<Vec<u8>, String> {
    const ZMM_BYTES: i64 = 64;
    let zmm = |i: usize| super::x86::ZMM[i];
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (p_count, v_count) = (spec.pixels, spec.vectors);
    let acc = |p: usize, v: usize| zmm(p * v_count + v);
    let weight = |v: usize| zmm(p_count * v_count + v);
    let x = zmm(p_count * v_count + v_count);
    let tap_bytes = v_count as i64 * ZMM_BYTES;
    let step_bytes = tap_bytes * spec.taps.len() as i64;
    for p in 0..p_count {
        for v in 0..v_count {
            a.vmovdqu32(acc(p, v), zmmword_ptr(rdx + disp(ZMM_BYTES * v as i64)?)).map_err(err)?;
        }
    }
    let step = |a: &mut CodeAssembler, u: i64| -> Result<(), String> {
        for (t, &tap) in spec.taps.iter().enumerate() {
            let w_offset = u * step_bytes + t as i64 * tap_bytes;
            for v in 0..v_count {
                a.vmovdqu32(weight(v), zmmword_ptr(rsi + disp(w_offset + ZMM_BYTES * v as i64)?)).map_err(err)?;
            }
            for p in 0..p_count {
                let offset = u * spec.in_step + tap + p as i64 * spec.pixel_stride;
                a.vpbroadcastd(x, dword_ptr(rdi + disp(offset)?)).map_err(err)?;
                for v in 0..v_count {
                    a.vpdpbusd(acc(p, v), x, weight(v)).map_err(err)?;
                }
            }
        }
        Ok(())
    };
    emit_steps(&mut a, spec, step_bytes, &step)?;
    for p in 0..p_count {
        for v in 0..v_count {
            let offset = (p * v_count + v) as i64 * ZMM_BYTES;
            a.vcvtdq2ps(acc(p, v), acc(p, v)).map_err(err)?;
            a.vmovups(zmmword_ptr(rcx + disp(offset)?), acc(p, v)).map_err(err)?;
        }
    }
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

/// Quantizes `pixels` consecutive floats of four input channels into the words of a
/// quad plane, byte `i` of each word channel `i`'s `q_x` in [0, 255] (a channel past the
/// last may repeat one: its weights are 0):
///
/// ```text
/// uint32_t quantize(const float *c0, const float *c1, const float *c2, const float *c3,
///                   uint32_t *quads);
/// ```
///
/// Returns nonzero when any value read was NaN. Each `q_x` is `Int8Input::offset`'s
/// plus the zero point, computed as [`quantize_bits`] computes it: `x / scale` clamped
/// to `[-zp, 255 - zp]` (`vmaxps`, `vminps`), rounded half to even by adding [`MAGIC`],
/// whose bits less [`MAGIC_BITS`] are the offset; plus `zp`. Sixteen pixels per vector,
/// the rest under a mask. AVX-512F.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct QuadSpec {
    pub pixels: usize,
    /// The input's scale, as f32 bits.
    pub scale: u32,
    pub zero_point: u8,
}

impl QuadSpec {
    pub fn new(input: Int8Input, pixels: usize) -> QuadSpec {
        QuadSpec { pixels, scale: input.scale().to_bits(), zero_point: input.zero_point() }
    }
}

/// Assembles a [`QuadSpec`].
pub(super) fn assemble_quads(spec: &QuadSpec) -> Result<Vec<u8>, String> {
    let zmm = |i: usize| super::x86::ZMM[i];
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let zero_point = spec.zero_point as f32;
    let constants = [
        spec.scale,
        (-zero_point).to_bits(),
        (255.0 - zero_point).to_bits(),
        MAGIC.to_bits(),
        (spec.zero_point as i64 - MAGIC_BITS) as i32 as u32,
    ];
    let (scale, least, most, magic, shift) = (zmm(16), zmm(17), zmm(18), zmm(19), zmm(20));
    for (register, value) in [scale, least, most, magic, shift].into_iter().zip(constants) {
        a.mov(eax, value).map_err(err)?;
        a.vpbroadcastd(register, eax).map_err(err)?;
    }
    a.kxorw(k2, k2, k2).map_err(err)?;
    a.xor(r10, r10).map_err(err)?;
    let sources = [rdi, rsi, rdx, rcx];
    // One vector of 16 pixels at byte `r10` of each row (masked by k1 when `masked`).
    let body = |a: &mut CodeAssembler, masked: bool| -> Result<(), String> {
        for (c, &source) in sources.iter().enumerate() {
            let x = zmm(c);
            let from = zmmword_ptr(source + r10);
            if masked { a.vmovups(x.k1().z(), from) } else { a.vmovups(x, from) }.map_err(err)?;
            a.vcmpps(k3, x, x, 3).map_err(err)?; // UNORD_Q: NaN
            a.korw(k2, k2, k3).map_err(err)?;
            a.vdivps(x, x, scale).map_err(err)?;
            a.vmaxps(x, x, least).map_err(err)?;
            a.vminps(x, x, most).map_err(err)?;
            a.vaddps(x, x, magic).map_err(err)?;
            a.vpaddd(x, x, shift).map_err(err)?;
            if c > 0 {
                a.vpslld(x, x, 8 * c as u32).map_err(err)?;
                a.vpord(zmm(0), zmm(0), x).map_err(err)?;
            }
        }
        let to = zmmword_ptr(r8 + r10);
        if masked { a.vmovdqu32(to.k1(), zmm(0)) } else { a.vmovdqu32(to, zmm(0)) }.map_err(err)
    };
    let advance = |a: &mut CodeAssembler| a.add(r10, 64).map_err(err);
    super::x86::emit_lanes_512(&mut a, spec.pixels, r9, &body, &advance)?;
    a.kmovw(eax, k2).map_err(err)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

/// Quantizes `count` values of the four channels `srcs` into the quad plane at `dst`
/// ([`QuadSpec`]'s micro-kernel, which `kb` defines for the layer), noting NaNs in
/// `nan`.
pub(super) fn copy_quads(kb: &mut Kb, input: Int8Input, srcs: [Value; 4], dst: Value, count: usize, nan: Variable) {
    let spec = super::x86::Ukernel::Int8Quads(QuadSpec::new(input, count));
    let f = kb.tile_kernel(&spec).expect("internal error: an int8 quad conversion was not defined");
    let call = kb.fb.ins().call(f, &[srcs[0], srcs[1], srcs[2], srcs[3], dst]);
    let seen = kb.fb.inst_results(call)[0];
    let seen = kb.fb.ins().splat(types::I32X4, seen);
    let so_far = kb.fb.use_var(nan);
    let so_far = kb.fb.ins().bor(so_far, seen);
    kb.fb.def_var(nan, so_far);
}

/// Quantizes a row of `count` values at `src` into `count` u8 `q_x` at `dst`, in order
/// (so word `j` holds values `4j` to `4j + 3`, as a linear layer's VNNI tiles read them);
/// the bytes after the last up to a whole word are left as they are (their weights are
/// 0, and integer products of 0 are 0). NaNs noted in `nan`.
pub(super) fn copy_row_bytes(kb: &mut Kb, input: Int8Input, src: Value, dst: Value, count: usize, nan: Variable) {
    let shift = kb.fb.ins().iconst(I32, input.zero_point() as i64 - MAGIC_BITS);
    let shift_vector = kb.fb.ins().splat(types::I32X4, shift);
    let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    // Four values at a time: their u8 `q_x` narrowed (exactly: they are in [0, 255])
    // into the first word of a vector.
    kb.for_range(count / 4, |kb, i| {
        let from = kb.index(src, i, 16);
        let x = kb.load(types::F32X4, from, 0);
        let bits = quantize_bits(kb, input, x, nan);
        let q = kb.fb.ins().iadd(bits, shift_vector);
        let halves = kb.fb.ins().unarrow(q, q);
        let bytes = kb.fb.ins().unarrow(halves, halves);
        let words = kb.fb.ins().bitcast(types::I32X4, little, bytes);
        let word = kb.fb.ins().extractlane(words, 0);
        let to = kb.index(dst, i, 4);
        kb.store(word, to, 0);
    });
    for i in count / 4 * 4..count {
        let x = kb.load(F32, src, 4 * i as i64);
        let bits = quantize_bits(kb, input, x, nan);
        let q = kb.fb.ins().iadd(bits, shift);
        let q = kb.fb.ins().ireduce(types::I8, q);
        kb.store(q, dst, i as i64);
    }
}

/// Writes `count` copies of the 32-bit `word` at `dst` (a quad plane's border: the zero
/// point in every byte, the real 0).
pub(super) fn fill_words(kb: &mut Kb, dst: Value, count: usize, word: u32) {
    kb.map_floats(count, &[], dst, |kb, ty, _| kb.constant(ty, f32::from_bits(word)));
}

/// The packed data of the integer tiles of `simd` for a one-group convolution (a linear
/// layer: `taps` 1) of `in_channels` input channels, given its f32 weights
/// (`[out][in_channels * taps]`): their integers (`precision::quantize_weights`) in
/// words of input channels, `[word][tap][lane]`, 0 past the last channel: on AVX2 pairs
/// of i16, on AVX-512 (VNNI) quads of s8. Then three regions laid out as the f32 tiles'
/// bias: where the accumulators start (zeros on AVX2; on AVX-512 each channel's
/// correction `-zp * sum(q_w)` as i32 bits, so that they end at the sum of
/// `(q_x - zp) * q_w`), the factors `m[c]` and the bias; padded to 64 bytes.
pub(super) fn pack(
    simd: Simd,
    weight: &[f32],
    input: Int8Input,
    bias: Option<&[f32]>,
    in_channels: usize,
    taps: usize,
    blocking: Blocking,
) -> Vec<u8> {
    let k = in_channels * taps;
    let out_channels = weight.len() / k.max(1);
    let (integers, scales) = crate::precision::quantize_weights(weight, out_channels);
    let m = crate::precision::output_scales(input, &scales);
    let per_word = if simd == Simd::Avx512 { 4 } else { 2 };
    let words = in_channels.div_ceil(per_word);
    let mut packed: Vec<u8> = Vec::with_capacity(4 * blocking.group_lanes() * (words * taps + 3) + 64);
    for (first, lanes) in blocking.blocks() {
        let rows: Vec<Option<&[f32]>> =
            (first..first + lanes).map(|oc| (oc < out_channels).then(|| &integers[oc * k..][..k])).collect();
        for word in 0..words {
            for tap in 0..taps {
                for row in &rows {
                    let value = row.map_or(0, |r| integer_word(r, per_word, word, taps, tap, in_channels));
                    packed.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
    }
    let corrections = (simd == Simd::Avx512).then(|| corrections(&integers, input, out_channels));
    packed.extend(channel_region(corrections.as_deref(), 1, out_channels, blocking));
    packed.extend(channel_region(Some(&m), 1, out_channels, blocking));
    packed.extend(channel_region(bias, 1, out_channels, blocking));
    packed.resize(packed.len().div_ceil(64) * 64, 0);
    packed
}

/// Word `word` of tap `tap` of one output channel's integers `row` (`[in][taps]`):
/// `per_word` (2 or 4) input channels' integers, each as its two's complement in
/// `32 / per_word` bits (|q_w| <= 127), 0 past the last channel.
fn integer_word(row: &[f32], per_word: usize, word: usize, taps: usize, tap: usize, in_channels: usize) -> u32 {
    let bits = 32 / per_word;
    (0..per_word).filter(|i| per_word * word + i < in_channels).fold(0u32, |value, i| {
        let integer = row[(per_word * word + i) * taps + tap] as i32 as u32;
        value | (integer & (u32::MAX >> (32 - bits))) << (bits * i)
    })
}

/// Each output channel's correction `-zp * sum(q_w)`, as the f32 with its i32 bits.
fn corrections(integers: &[f32], input: Int8Input, out_channels: usize) -> Vec<f32> {
    let k = integers.len() / out_channels.max(1);
    (0..out_channels)
        .map(|oc| {
            let sum: i32 = integers[oc * k..][..k].iter().map(|&w| w as i32).sum();
            f32::from_bits((-i32::from(input.zero_point()) * sum) as u32)
        })
        .collect()
}

/// A pointwise layer's weights (`[out][in]`) for the VNNI pointwise tiles
/// (`pointwise`, `x86::PointwiseSpec::int8`): `[out][quad]` s8 quads (as the f32 with
/// their bits, 0 past the last channel), the corrections and the factors `m`.
pub(super) fn pointwise_quads(weight: &[f32], input: Int8Input, in_channels: usize) -> [Vec<f32>; 3] {
    let out_channels = weight.len() / in_channels.max(1);
    let (integers, scales) = crate::precision::quantize_weights(weight, out_channels);
    let quads = in_channels.div_ceil(4);
    let words = (0..out_channels)
        .flat_map(|oc| {
            let row = &integers[oc * in_channels..][..in_channels];
            (0..quads).map(move |q| f32::from_bits(integer_word(row, 4, q, 1, 0, in_channels)))
        })
        .collect();
    let corrections = corrections(&integers, input, out_channels);
    [words, corrections, crate::precision::output_scales(input, &scales)]
}

/// `q_x - zp` of an F32 or F32X4 input `x` (`Int8Input::offset`: a division, rounding
/// half to even, the zero point added, a clamp to [0, 255] that keeps NaN, the zero
/// point taken off), as f32.
pub(super) fn offset(kb: &mut Kb, input: Int8Input, ty: Type, x: Value) -> Value {
    let scale = kb.constant(ty, input.scale());
    let zero_point = kb.constant(ty, input.zero_point() as f32);
    let (low, high) = (kb.constant(ty, 0.0), kb.constant(ty, 255.0));
    let q = kb.fb.ins().fdiv(x, scale);
    let q = kb.fb.ins().nearest(q);
    let q = kb.fb.ins().fadd(q, zero_point);
    // Cranelift's fmax and fmin return NaN when either operand is NaN.
    let q = kb.fb.ins().fmax(q, low);
    let q = kb.fb.ins().fmin(q, high);
    kb.fb.ins().fsub(q, zero_point)
}

/// A variable that collects, lane by lane, whether the quantizing copy met a NaN.
pub(super) fn nan_seen(kb: &mut Kb) -> Variable {
    let var = kb.fb.declare_var(types::I32X4);
    let zero = kb.fb.ins().iconst(I32, 0);
    let zero = kb.fb.ins().splat(types::I32X4, zero);
    kb.fb.def_var(var, zero);
    var
}

/// Quantizes `count` values of two input channels, `low` and `high` (addresses; equal
/// for an odd last channel), into the words of a pair plane at `dst`, noting NaNs in
/// `nan`.
///
/// Each offset is `Int8Input::offset`'s, computed as [`quantize_bits`] computes it: the
/// low 16 bits of its result are the offset's i16, so a word is the first channel's
/// bits masked and the second's shifted up 16.
pub(super) fn copy_pairs(
    kb: &mut Kb,
    input: Int8Input,
    (low, high): (Value, Value),
    dst: Value,
    count: usize,
    nan: Variable,
) {
    let flags = MemFlagsData::new();
    kb.map_floats(count, &[low, high], dst, |kb, ty, values| {
        let int_ty = if ty == F32 { I32 } else { types::I32X4 };
        let halves = [values[0], values[1]].map(|x| quantize_bits(kb, input, x, nan));
        let mask = kb.fb.ins().iconst(I32, 0xffff);
        let mask = if ty == F32 { mask } else { kb.fb.ins().splat(int_ty, mask) };
        let low = kb.fb.ins().band(halves[0], mask);
        let high = kb.fb.ins().ishl_imm_u(halves[1], 16);
        let word = kb.fb.ins().bor(low, high);
        kb.fb.ins().bitcast(ty, flags, word)
    });
}

/// 1.5 x 2^23: adding it to an f32 of magnitude at most 2^22 rounds that value to an
/// integer, half to even (the default rounding of the addition), and leaves the integer
/// in the sum's low bits: `bits(v + MAGIC) = MAGIC_BITS + round_half_even(v)`.
pub(super) const MAGIC: f32 = 12_582_912.0;
/// The bits of [`MAGIC`].
const MAGIC_BITS: i64 = 0x4b40_0000;

/// The offset `q_x - zp` of an F32 or F32X4 input `x`, as an I32 or I32X4 whose low 16
/// bits are the offset's i16 (the whole value is `MAGIC_BITS` plus the offset), noting
/// a NaN in `nan`.
///
/// `Int8Input::offset` is `clamp(round_half_even(x / scale) + zp, 0, 255) - zp`, which
/// is `clamp(round_half_even(x / scale), -zp, 255 - zp)`, and, the bounds being
/// integers and the rounding monotonic, `round_half_even(clamp(x / scale, -zp, 255 -
/// zp))`: here the quotient is clamped in f32 (`maxps`, `minps`; infinities go to the
/// bounds) and rounded by adding [`MAGIC`] (exact for |v| <= 255). A NaN gives some
/// finite word (whatever `maxps` makes of it); it is noted, and the batch element it
/// belongs to runs on the f32 tiles, which never read the word. Four vector
/// instructions after the division, where `nearest`, `fcvt_to_sint_sat` and an integer
/// clamp took ten.
fn quantize_bits(kb: &mut Kb, input: Int8Input, x: Value, nan: Variable) -> Value {
    let flags = MemFlagsData::new();
    let scalar = kb.fb.func.dfg.value_type(x) == F32;
    let x = if scalar { kb.fb.ins().splat(types::F32X4, x) } else { x };
    let zero_point = input.zero_point() as f32;
    let least = kb.constant(types::F32X4, -zero_point);
    let most = kb.constant(types::F32X4, 255.0 - zero_point);
    let scale = kb.constant(types::F32X4, input.scale());
    let magic = kb.constant(types::F32X4, MAGIC);
    let is_nan = kb.fb.ins().fcmp(FloatCC::Unordered, x, x);
    let seen = kb.fb.use_var(nan);
    let seen = kb.fb.ins().bor(seen, is_nan);
    kb.fb.def_var(nan, seen);
    let q = kb.fb.ins().fdiv(x, scale);
    // `least < q ? q : least` and `q < most ? q : most`, the forms Cranelift lowers to
    // `maxps` and `minps`.
    let above = kb.fb.ins().fcmp(FloatCC::LessThan, least, q);
    let above = kb.fb.ins().bitcast(types::F32X4, flags, above);
    let q = kb.fb.ins().bitselect(above, q, least);
    let below = kb.fb.ins().fcmp(FloatCC::LessThan, q, most);
    let below = kb.fb.ins().bitcast(types::F32X4, flags, below);
    let q = kb.fb.ins().bitselect(below, q, most);
    let q = kb.fb.ins().fadd(q, magic);
    let bits = kb.fb.ins().bitcast(types::I32X4, flags, q);
    if scalar { kb.fb.ins().extractlane(bits, 0) } else { bits }
}

/// The offset `q_x - zp` of an F32 or F32X4 input `x` as an I32 or I32X4 (see
/// [`quantize_bits`]), noting a NaN in `nan`.
fn quantize(kb: &mut Kb, input: Int8Input, x: Value, nan: Variable) -> Value {
    let bits = quantize_bits(kb, input, x, nan);
    let ty = kb.fb.func.dfg.value_type(bits);
    let bias = kb.fb.ins().iconst(I32, MAGIC_BITS);
    let bias = if ty == I32 { bias } else { kb.fb.ins().splat(ty, bias) };
    kb.fb.ins().isub(bits, bias)
}

/// Quantizes a row of `count` values at `src` into `count` i16 offsets at `dst`, in
/// order (so word `j` is the pair of values `2j`, `2j + 1`, as the integer tiles of a
/// linear layer read them), and a zero after an odd last one; NaNs noted in `nan`.
pub(super) fn copy_row(kb: &mut Kb, input: Int8Input, src: Value, dst: Value, count: usize, nan: Variable) {
    kb.for_range(count / 8, |kb, i| {
        let from = kb.index(src, i, 32);
        let to = kb.index(dst, i, 16);
        let low = kb.load(types::F32X4, from, 0);
        let high = kb.load(types::F32X4, from, 16);
        let low = quantize(kb, input, low, nan);
        let high = quantize(kb, input, high, nan);
        // Offsets in [-255, 255]: the narrowing never saturates.
        let words = kb.fb.ins().snarrow(low, high);
        kb.store(words, to, 0);
    });
    for i in count / 8 * 8..count {
        let x = kb.load(F32, src, 4 * i as i64);
        let q = quantize(kb, input, x, nan);
        let q = kb.fb.ins().ireduce(types::I16, q);
        kb.store(q, dst, 2 * i as i64);
    }
    if count % 2 == 1 {
        let zero = kb.fb.ins().iconst(types::I16, 0);
        kb.store(zero, dst, 2 * count as i64);
    }
}

/// Publishes whether this part's copy met a NaN (`nan`) in its slot of `slots` (one i32
/// per part), waits for every part, and returns whether any part met one (an `icmp`
/// result, the same in every part). Each part writes its own slot each time, so the
/// slots need no reset; the next writes come after the barrier that ends the batch
/// element or the kernel.
pub(super) fn any_part_saw_nan(kb: &mut Kb, nan: Variable, slots: Value) -> Value {
    let seen = kb.fb.use_var(nan);
    let seen = kb.fb.ins().vany_true(seen);
    let seen = kb.fb.ins().uextend(I32, seen);
    let part = kb.part;
    let slot = kb.index(slots, part, 4);
    kb.store(seen, slot, 0);
    kb.sync();
    let any = kb.fb.declare_var(I32);
    let zero = kb.fb.ins().iconst(I32, 0);
    kb.fb.def_var(any, zero);
    let parts = kb.parts;
    kb.for_dynamic(parts, |kb, i| {
        let slot = kb.index(slots, i, 4);
        let flag = kb.load(I32, slot, 0);
        let so_far = kb.fb.use_var(any);
        let so_far = kb.fb.ins().bor(so_far, flag);
        kb.fb.def_var(any, so_far);
    });
    let any = kb.fb.use_var(any);
    kb.fb.ins().icmp_imm_u(IntCC::NotEqual, any, 0)
}
