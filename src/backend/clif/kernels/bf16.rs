//! The bf16 convolution and linear layers of AVX512_BF16 hosts (issue #19): the weights
//! packed as bf16 pairs, the input converted into bf16 pairs, and with
//! `TileSpec::bf16` (a `vdpbf16ps` per multiply-add) the f32 direct tiles' geometry with
//! half the reduction steps (`conv::ConvKernel::bf16`, `conv::LinearKernel::bf16`,
//! `pointwise::PointwiseKernel::bf16`):
//!
//! - **Input.** One batch element's input, per group, becomes `ceil(C / 2)` planes of
//!   32-bit bf16 pairs (input channel `2s` in the low half, `2s + 1` in the high half,
//!   zero for the missing channel of an odd count), zero-bordered like the f32 padded
//!   copy: a pair plane has the byte geometry of one f32 plane, so the tile's `in_step`,
//!   taps and pixel strides are the f32 ones. [`RowSpec`], a micro-kernel
//!   (`vcvtneps2bf16`), converts one row (or a whole unpadded plane) of two channels into
//!   it; a linear layer's row becomes pairs of consecutive features ([`copy_row`]).
//! - **Weights.** [`pack_pairs`] turns `[out][C][kh][kw]` f32 weights into
//!   `[out][ceil(C / 2)][kh][kw]` 32-bit pairs, rounded by `precision::round_bf16`; the
//!   block packing of `conv::pack` then lays them out as it lays out f32 weights, one
//!   pair per lane, and the bias stays f32.
//!
//! The cpu target uses them for a bf16 layer when the host has AVX512_BF16 and no
//! `--cpu` level is named (no x86-64 level includes it; `codegen::bf16_tiles`); other
//! hosts run a bf16 layer on the f32 tiles over rounded operands (`ConvKernel::precision`),
//! which compute the same values. The micro-kernels are also checked here on a small x86
//! emulator of the instructions they use ([`super::emulate`]), so that these tests run
//! on hosts without AVX-512.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use iced_x86::code_asm::*;

use super::x86::Ukernel;
use super::{F32, I32, Kb};
use crate::precision::round_bf16;

/// The bf16 bits of an f32, rounded as `vcvtneps2bf16` rounds ([`round_bf16`]).
pub(crate) fn bf16_bits(x: f32) -> u16 {
    (round_bf16(x).to_bits() >> 16) as u16
}

/// `[out][channels][taps]` f32 weights as `[out][ceil(channels / 2)][taps]` bf16 pairs
/// (channel `2s` low, `2s + 1` high, 0 past the last channel), each pair's bits in an
/// f32 so that `conv::pack` lays them out.
pub(crate) fn pack_pairs(weight: &[f32], out: usize, channels: usize, taps: usize) -> Vec<f32> {
    let pairs = channels.div_ceil(2);
    let mut packed = Vec::with_capacity(out * pairs * taps);
    for o in 0..out {
        let row = &weight[o * channels * taps..][..channels * taps];
        for s in 0..pairs {
            for t in 0..taps {
                let low = bf16_bits(row[2 * s * taps + t]) as u32;
                let high = if 2 * s + 1 < channels { bf16_bits(row[(2 * s + 1) * taps + t]) as u32 } else { 0 };
                packed.push(f32::from_bits(low | (high << 16)));
            }
        }
    }
    packed
}

/// Pair plane `i` (a run-time value) of runs of `pairs` pair planes, each run over
/// `channels` input channels (a group's, or an image's): `(pair, channel)`, its index in
/// its run and the input channel of its low half.
pub(super) fn pair_channel(kb: &mut Kb, i: Value, pairs: usize, channels: usize) -> (Value, Value) {
    let run = kb.fb.ins().udiv_imm_u(i, pairs as i64);
    let pair = kb.fb.ins().urem_imm_u(i, pairs as i64);
    let first = kb.fb.ins().imul_imm_s(run, channels as i64);
    let low = kb.fb.ins().imul_imm_s(pair, 2);
    (pair, kb.fb.ins().iadd(first, low))
}

/// The [`RowSpec`] micro-kernels [`convert`] calls for rows of `pixels`: two channels,
/// then (for an odd count of channels) the last one alone.
pub(super) fn row_specs(pixels: usize, odd: bool) -> Vec<Ukernel> {
    let mut specs = vec![Ukernel::Bf16Row(RowSpec { pixels, high: true })];
    if odd {
        specs.push(Ukernel::Bf16Row(RowSpec { pixels, high: false }));
    }
    specs
}

/// Converts `pixels` floats of channels `low` and `high` into pairs at `dst` by the
/// [`RowSpec`] micro-kernels ([`row_specs`]); with `odd`, the pair `pair` (a run-time
/// value) of `pairs` is the last channel alone when it is the last pair, its high half
/// zero and `high` not read (not the channel again: its weights are zero, but zero times
/// an infinity would be NaN).
pub(super) fn convert(
    kb: &mut Kb,
    (low, high): (Value, Value),
    dst: Value,
    pixels: usize,
    odd: bool,
    pair: Value,
    pairs: usize,
) {
    let call = |kb: &mut Kb, high_too: bool| {
        let spec = Ukernel::Bf16Row(RowSpec { pixels, high: high_too });
        let f = kb.tile_kernel(&spec).expect("internal error: a bf16 row conversion was not defined");
        kb.fb.ins().call(f, &[low, high, dst]);
    };
    if odd {
        let last = kb.fb.ins().icmp_imm_u(IntCC::Equal, pair, pairs as i64 - 1);
        kb.when_else(last, |kb| call(kb, false), |kb| call(kb, true));
    } else {
        call(kb, true);
    }
}

/// Writes the `count` floats at `src` as `ceil(count / 2)` bf16 pairs at `dst`, in order
/// (word `j` holds values `2j` and `2j + 1`, as a linear layer's `vdpbf16ps` tiles read
/// them), and a zero after an odd last one.
pub(super) fn copy_row(kb: &mut Kb, src: Value, dst: Value, count: usize) {
    let flags = MemFlagsData::new();
    // Eight values at a time: rounded, their bf16 bits in the low halves, narrowed into
    // eight 16-bit lanes in order (exact: the bits are below 2^16).
    kb.for_range(count / 8, |kb, i| {
        let from = kb.index(src, i, 32);
        let to = kb.index(dst, i, 16);
        let [low, high] = [0, 16].map(|offset| {
            let x = kb.load(types::F32X4, from, offset);
            let rounded = kb.round_bf16(x);
            let bits = kb.fb.ins().bitcast(types::I32X4, flags, rounded);
            kb.fb.ins().ushr_imm_u(bits, 16)
        });
        let halves = kb.fb.ins().unarrow(low, high);
        kb.store(halves, to, 0);
    });
    for i in count / 8 * 8..count {
        let x = kb.load(F32, src, 4 * i as i64);
        let rounded = kb.round_bf16(x);
        let bits = kb.fb.ins().bitcast(I32, flags, rounded);
        let bits = kb.fb.ins().ushr_imm_u(bits, 16);
        let half = kb.fb.ins().ireduce(types::I16, bits);
        kb.store(half, dst, 2 * i as i64);
    }
    if count % 2 == 1 {
        let zero = kb.fb.ins().iconst(types::I16, 0);
        kb.store(zero, dst, 2 * count as i64);
    }
}

/// Converts `pixels` consecutive floats of two input channels into bf16 pairs:
///
/// ```text
/// void convert(const float *low, const float *high, uint32_t *pairs);
/// ```
///
/// `pairs[p] = bf16(low[p]) | bf16(high[p]) << 16`, or with `high: false` (the last
/// channel of an odd count; the `high` pointer is not read) `bf16(low[p])`. Whole
/// vectors of 16 pixels in a loop, the rest under a mask (masked lanes are neither read
/// nor written). AVX-512F and AVX512_BF16.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowSpec {
    pub pixels: usize,
    pub high: bool,
}

fn err(e: IcedError) -> String {
    format!("internal error: assembling a bf16 conversion: {e}")
}

/// Assembles a [`RowSpec`].
pub(crate) fn assemble_row(spec: &RowSpec) -> Result<Vec<u8>, String> {
    assert!(spec.pixels >= 1, "an empty bf16 conversion");
    let mut a = CodeAssembler::new(64).map_err(err)?;
    // One vector: loads (masked with k1 when `masked`), conversions, the store.
    let body = |a: &mut CodeAssembler, masked: bool| -> Result<(), String> {
        let load = |a: &mut CodeAssembler, to: AsmRegisterZmm, from: AsmRegister64| {
            if masked { a.vmovups(to.k1().z(), zmmword_ptr(from)) } else { a.vmovups(to, zmmword_ptr(from)) }
        };
        load(a, zmm0, rdi).map_err(err)?;
        a.vcvtneps2bf16(ymm0, zmm0).map_err(err)?;
        a.vpmovzxwd(zmm0, ymm0).map_err(err)?;
        if spec.high {
            load(a, zmm1, rsi).map_err(err)?;
            a.vcvtneps2bf16(ymm1, zmm1).map_err(err)?;
            a.vpmovzxwd(zmm1, ymm1).map_err(err)?;
            a.vpslld(zmm1, zmm1, 16).map_err(err)?;
            a.vpord(zmm0, zmm0, zmm1).map_err(err)?;
        }
        if masked { a.vmovups(zmmword_ptr(rdx).k1(), zmm0) } else { a.vmovups(zmmword_ptr(rdx), zmm0) }.map_err(err)
    };
    let advance = |a: &mut CodeAssembler| -> Result<(), String> {
        a.add(rdi, 64).map_err(err)?;
        if spec.high {
            a.add(rsi, 64).map_err(err)?;
        }
        a.add(rdx, 64).map_err(err)
    };
    super::x86::emit_lanes_512(&mut a, spec.pixels, rcx, &body, &advance)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::emulate::{Emulator, Region};
    use super::super::x86::{Simd, TileSpec, assemble};
    use super::*;

    /// Deterministic values with every kind the rounding meets: ties, denormals, NaN,
    /// infinities, zeros of both signs and ordinary values.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                match i % 11 {
                    0 => f32::from_bits(0x3f80_8000 | (state & 0x0001_0000)), // a tie
                    1 => f32::from_bits(state & 0x807f_ffff),                 // a denormal
                    2 if i % 5 == 0 => f32::NAN,
                    3 if i % 7 == 0 => f32::NEG_INFINITY,
                    4 => -0.0,
                    _ => (state as i32) as f32 / i32::MAX as f32 * 4.0,
                }
            })
            .collect()
    }

    fn bytes(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// The conversion writes exactly `pixels` pairs, rounded as `round_bf16`, at every
    /// length around the vector width, and reads and writes nothing else (the
    /// emulator's regions are exactly the rows).
    #[test]
    fn rows_convert_to_bf16_pairs() {
        for pixels in [1, 5, 15, 16, 17, 31, 32, 33, 56, 224] {
            for high in [false, true] {
                let spec = RowSpec { pixels, high };
                let code = assemble_row(&spec).unwrap();
                let low_values = values(pixels, pixels as u32);
                let high_values = values(pixels, 1000 + pixels as u32);
                let guard = 0xdead_beefu32;
                let mut emulator = Emulator::new(&code);
                let low = emulator.map(Region::new(bytes(&low_values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())));
                let high_region =
                    emulator.map(Region::new(bytes(&high_values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())));
                let out = emulator.map(Region::new(bytes(&vec![guard; pixels])));
                emulator.call(&[low, if high { high_region } else { 0 }, out]).unwrap();
                let got = words(emulator.region(out));
                for p in 0..pixels {
                    let low_bits = bf16_bits(low_values[p]) as u32;
                    let high_bits = if high { bf16_bits(high_values[p]) as u32 } else { 0 };
                    assert_eq!(got[p], low_bits | (high_bits << 16), "{spec:?}, pixel {p}");
                }
            }
        }
    }

    /// The bf16 tile on packed pairs: each accumulator is the bias plus, step by step and
    /// tap by tap, `vdpbf16ps`'s two exact products of bf16 values added in f32, and
    /// equals the f64 dot product of the rounded operands within f32 accumulation error.
    #[test]
    fn the_bf16_tile_accumulates_rounded_products() {
        // (pixels, vectors, steps, taps) over the shapes the blocking makes.
        for (pixels, vectors, steps, taps) in [(1, 1, 1, 1), (8, 3, 5, 9), (4, 4, 3, 1), (6, 2, 8, 3), (2, 1, 7, 2)] {
            let lanes = 16 * vectors;
            let channels = 2 * steps - usize::from(steps % 2 == 1); // odd counts too
            let pixel_stride = 4i64;
            // The input: `steps` pair planes of `plane` pixels.
            let plane = pixels + taps + 3;
            let tap_offsets: Vec<i64> = (0..taps as i64).map(|t| 4 * t).collect();
            let x = values(channels * plane, 7 + steps as u32)
                .into_iter()
                .map(|v| if v.is_finite() { v } else { 0.5 })
                .collect::<Vec<f32>>();
            let w = values(lanes * channels * taps, 3 + taps as u32)
                .into_iter()
                .map(|v| if v.is_finite() { v } else { -0.25 })
                .collect::<Vec<f32>>();
            let bias: Vec<f32> = (0..lanes).map(|l| l as f32 * 0.125 - 1.0).collect();
            // Pair planes of the input.
            let mut pairs = vec![0u32; steps * plane];
            for s in 0..steps {
                for q in 0..plane {
                    let low = bf16_bits(x[2 * s * plane + q]) as u32;
                    let high = if 2 * s + 1 < channels { bf16_bits(x[(2 * s + 1) * plane + q]) as u32 } else { 0 };
                    pairs[s * plane + q] = low | (high << 16);
                }
            }
            // Weights `[lane][channel][tap]` to pairs, then `[step][tap][lane]` as the
            // block packing lays out one block.
            let paired = pack_pairs(&w, lanes, channels, taps);
            let mut packed = Vec::new();
            for s in 0..steps {
                for t in 0..taps {
                    for l in 0..lanes {
                        packed.push(paired[(l * steps + s) * taps + t].to_bits());
                    }
                }
            }
            let spec = TileSpec {
                simd: Simd::Avx512,
                pixels,
                vectors,
                pixel_stride,
                steps,
                in_step: 4 * plane as i64,
                taps: tap_offsets.clone(),
                bf16: true,
                activation: None,
            };
            assert!(spec.fits());
            let code = assemble(&spec).unwrap();
            let mut emulator = Emulator::new(&code);
            let input = emulator.map(Region::new(bytes(&pairs)));
            let weights = emulator.map(Region::new(bytes(&packed)));
            let bias_at = emulator.map(Region::new(bytes(&bias.iter().map(|b| b.to_bits()).collect::<Vec<_>>())));
            let tile = emulator.map(Region::new(vec![0; 4 * pixels * lanes]));
            emulator.call(&[input, weights, bias_at, tile]).unwrap();
            let got: Vec<f32> = words(emulator.region(tile)).into_iter().map(f32::from_bits).collect();
            let r = |v: f32| round_bf16(v) as f64;
            for p in 0..pixels {
                for l in 0..lanes {
                    let mut exact = bias[l] as f64;
                    let mut scale = bias[l].abs() as f64;
                    for c in 0..channels {
                        for t in 0..taps {
                            let product = r(w[(l * channels + c) * taps + t]) * r(x[c * plane + p + t]);
                            exact += product;
                            scale += product.abs();
                        }
                    }
                    // f32 accumulation of n terms: at most n rounding errors of half an
                    // ulp of the running sum's scale (exact products).
                    let bound = scale * (channels * taps + 1) as f64 * 2f64.powi(-24);
                    let value = got[p * lanes + l] as f64;
                    assert!((value - exact).abs() <= bound, "pixel {p} lane {l}: {value} vs {exact} ({spec:?})");
                }
            }
        }
    }

    /// A whole direct convolution through the emulated micro-kernels, laid out as the
    /// cpu target's bf16 path is to lay it out (pair planes from `RowSpec` rows, weights
    /// by `pack_pairs` and `conv::pack` with the blocking of the AVX-512 tiles, tiles
    /// along each output row, the last one overlapping), against the interpreter's bf16
    /// simulation: relative L2 at most 1e-4, the cpu target's tolerance.
    #[test]
    fn an_emulated_bf16_convolution_matches_the_interpreter() {
        use crate::ir::ParamRole;
        use crate::precision::Precision;
        use crate::tensor::relative_l2;
        // (in channels, out channels, height, width, kernel, stride, pad)
        let cases: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
            (3, 16, 9, 9, 3, 1, 1),
            (7, 37, 8, 11, 3, 2, 1),
            (4, 20, 6, 6, 1, 1, 0),
            (1, 5, 12, 7, 3, 1, 0),
            (16, 70, 7, 10, 3, 1, 1),
        ];
        for (c, o, h, w, k, stride, pad) in cases {
            let source = format!(
                "network t {{\n    input x: [{c}, {h}, {w}]\n    c: conv({o}, {k}, stride={stride}, pad={pad})\n}}\n"
            );
            let mut graph = crate::front::compile_source(&source, &Default::default()).unwrap();
            graph.weights = crate::weights::random_weights(&graph, 5);
            let x = crate::weights::random_normal(&graph.node(graph.inputs[0]).shape, 9);
            let f32_out = crate::interp::run(&graph, &graph.weights, std::slice::from_ref(&x)).unwrap().remove(0);
            crate::precision::assign(&mut graph, Precision::Bf16);
            let expected = crate::interp::run(&graph, &graph.weights, std::slice::from_ref(&x)).unwrap().remove(0);
            let node = graph.node(graph.outputs[0].node);
            let param =
                |role| node.params.iter().find(|p| p.role == role).map(|p| &graph.weights.get(&p.name).unwrap().data);
            let (weight, bias) = (param(ParamRole::Weight).unwrap(), param(ParamRole::Bias));
            let (out_h, out_w) = (node.shape[2], node.shape[3]);
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            let steps = c.div_ceil(2);
            let taps = k * k;

            // The pair planes, row by row through the conversion kernel.
            let mut pairs = vec![0u32; steps * hp * wp];
            for s in 0..steps {
                let high = 2 * s + 1 < c;
                let code = assemble_row(&RowSpec { pixels: w, high }).unwrap();
                for r in 0..h {
                    let row = |channel: usize| {
                        x.data[(channel * h + r) * w..][..w].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    let mut emulator = Emulator::new(&code);
                    let low = emulator.map(Region::new(bytes(&row(2 * s))));
                    let high_row = if high { emulator.map(Region::new(bytes(&row(2 * s + 1)))) } else { 0 };
                    let dst = emulator.map(Region::new(vec![0; 4 * w]));
                    emulator.call(&[low, high_row, dst]).unwrap();
                    let start = (s * hp + r + pad) * wp + pad;
                    pairs[start..start + w].copy_from_slice(&words(emulator.region(dst)));
                }
            }

            // The weights, blocked as the f32 tiles block them.
            let pixels = super::super::conv::wide_tile_width(out_w, Simd::Avx512);
            let blocking = super::super::conv::wide_blocking(o, pixels, Simd::Avx512);
            let paired = pack_pairs(weight, o, c, taps);
            let kk = steps * taps;
            let packed = words(&super::super::conv::pack(&paired, bias.map(|b| b.as_slice()), 1, kk, blocking));
            let bias_start = blocking.group_lanes() * kk;
            // (first channel, vectors of 16 lanes, channels) of each block.
            let mut blocks: Vec<(usize, usize, usize)> = (0..blocking.full_blocks)
                .map(|b| (b * 4 * blocking.vectors, blocking.vectors / 4, 4 * blocking.vectors))
                .collect();
            if blocking.tail_vectors > 0 {
                blocks.push((
                    blocking.full_blocks * 4 * blocking.vectors,
                    blocking.tail_vectors / 4,
                    blocking.tail_channels,
                ));
            }

            let mut out = vec![f32::NAN; o * out_h * out_w];
            for &(first, vectors, channels) in &blocks {
                let lanes = 16 * vectors;
                let spec = TileSpec {
                    simd: Simd::Avx512,
                    pixels,
                    vectors,
                    pixel_stride: 4 * stride as i64,
                    steps,
                    in_step: 4 * (hp * wp) as i64,
                    taps: (0..k).flat_map(|kh| (0..k).map(move |kw| 4 * (kh * wp + kw) as i64)).collect(),
                    bf16: true,
                    activation: None,
                };
                assert!(spec.fits(), "{spec:?}");
                let code = assemble(&spec).unwrap();
                let block_weights = &packed[first * kk..][..lanes * kk];
                let block_bias = &packed[bias_start + first..][..lanes];
                for oh in 0..out_h {
                    let mut starts: Vec<usize> = (0..out_w).step_by(pixels).map(|p| p.min(out_w - pixels)).collect();
                    starts.dedup();
                    for ow in starts {
                        let mut emulator = Emulator::new(&code);
                        let input = emulator.map(Region::new(bytes(&pairs)));
                        let weights = emulator.map(Region::new(bytes(block_weights)));
                        let bias_at = emulator.map(Region::new(bytes(block_bias)));
                        let tile = emulator.map(Region::new(vec![0; 4 * pixels * lanes]));
                        let origin = input + 4 * (oh * stride * wp + ow * stride) as u64;
                        emulator.call(&[origin, weights, bias_at, tile]).unwrap();
                        let result = words(emulator.region(tile));
                        for p in 0..pixels {
                            for l in 0..channels {
                                out[((first + l) * out_h + oh) * out_w + ow + p] =
                                    f32::from_bits(result[p * lanes + l]);
                            }
                        }
                    }
                }
            }
            let error = relative_l2(&out, &expected.data);
            let against_f32 = relative_l2(&out, &f32_out.data);
            eprintln!(
                "conv {:?}: relative L2 {error:.2e} against the bf16 interpreter, {against_f32:.2e} against f32",
                (c, o, h, w, k, stride, pad)
            );
            assert!(
                error <= 1e-4,
                "case {:?}: relative L2 {error:e} against the bf16 interpreter",
                (c, o, h, w, k, stride, pad)
            );
            // The simulation is the one that matches: f32 is much further away.
            assert!(
                against_f32 > 10.0 * error.max(1e-7),
                "case {:?}: {against_f32:e} against f32",
                (c, o, h, w, k, stride, pad)
            );
        }
    }
}
