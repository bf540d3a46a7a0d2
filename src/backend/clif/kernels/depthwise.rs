//! Depthwise convolutions (one input and one output channel per group, column stride 1
//! or 2, no dilation) on AVX-512 and AVX2: each channel's plane in bands of output rows,
//! one `x86::assemble_depthwise` micro-kernel call per band, the pixels of a row in the
//! lanes (16 or 8). The generic tiles put 16 (or 8) output channels in the lanes, of
//! which a depthwise group has one, and ran these layers at 3.5 to 4.5 GFLOP/s.
//!
//! Weights are packed per channel as its `kh * kw` taps then its bias. The parts share
//! each image's channels. A band reads its input rows in place (padding rows
//! are left out of the bands at the plane's edges, padding columns are masked off the
//! loads), so nothing is copied. Bands whose rows lie at the same place relative to the
//! plane's edges share one micro-kernel, and runs of them are loops. On AVX2 a row's
//! partial last vector is stored whole where its lanes end inside the plane (the bands
//! that say so, `DepthwiseSpec::whole_tails`): the lanes past the row are the plane's
//! next rows, which only this plane's thread writes, read back and written unchanged.
//!
//! The epilogue runs in the micro-kernel's registers where it is made of
//! `x86::RegisterActivation`s and a residual add (relu, leaky relu, the clamps such as
//! relu6, hardsigmoid, hardswish; sigmoid and silu anywhere on AVX2, as the whole
//! epilogue on AVX-512, `x86::epilogue_in_registers`); any other runs after each band
//! over its rows, which are still in the L1 cache, through the shared `Kb::activation`
//! (so every activation the backend knows fuses here).
//!
//! An int8 layer (`crate::precision`) runs on the same bands: each part first quantizes
//! the plane it is about to compute into the offsets `q_x - zp` (as floats) in a plane of
//! its own in the scratch space (on AVX-512 with an `operands` micro-kernel, elsewhere
//! `conv::copy_operand`, as the direct tiles' copies), and the bands read that plane.
//! The weights are packed as their integers followed by the bias and the factor `m[c]`;
//! the bands start their accumulators at 0 and end them as `acc * m + bias`
//! (`DepthwiseSpec::rescale`). The products of two integers are exact in f32, and a sum
//! of at most 11 x 11 products of magnitude 255 x 127 stays below 2^24, so it is exact
//! too: an int8 layer gives the simulation's values bit for bit. A NaN in the input
//! stays NaN through the quantization (`int8::offset`), so the outputs whose windows
//! read it are NaN, as in the simulation. (A bf16 depthwise layer runs here as f32 on
//! rounded operands, `codegen::bf16_on_f32_kernels`.)

use cranelift_codegen::ir::{InstBuilder, Value};

use super::conv::copy_operand;
use super::operands::{self, OperandSpec};
use super::x86::{DepthwiseSpec, RegisterActivation, Simd, Ukernel, epilogue_in_registers};
use super::{Kb, Loc};
use crate::ir::{Activation, Conv, Epilogue};
use crate::precision::Precision;

/// The most output rows per band.
const MAX_BAND_ROWS: usize = 8;
/// The widest row a band's code is unrolled over, and the largest kernel.
const MAX_WIDTH: usize = 1024;
const MAX_TAPS: usize = 11;

/// The layer's shape: `(batch, channels, (in_h, in_w), (out_h, out_w))`.
pub(crate) type DepthwiseShape = (usize, usize, (usize, usize), (usize, usize));

/// A depthwise convolution ready to emit.
pub(crate) struct DepthwiseKernel {
    simd: Simd,
    batch: usize,
    channels: usize,
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    taps: (usize, usize),
    stride: (usize, usize),
    /// Top and left padding.
    pad: (usize, usize),
    /// Output rows of a full band, and vectors of a row computed together.
    band_rows: usize,
    group: usize,
    /// Whether the micro-kernel runs the epilogue (activations and the residual add).
    in_registers: bool,
    epilogue: Epilogue,
    /// The layer's precision, f32 or int8: int8 bands read a quantized copy of each plane
    /// (see the module's notes).
    precision: Precision,
    /// The micro-kernel that quantizes a plane, where one does (AVX-512).
    convert: Option<OperandSpec>,
    /// The packed weights, little-endian f32: per channel its taps, its bias and, for
    /// int8, its factor `m[c]`.
    pub data: Vec<u8>,
}

/// One band of output rows and the micro-kernel that computes it.
#[derive(Clone, Debug, PartialEq)]
struct Band {
    first_row: usize,
    spec: DepthwiseSpec,
}

impl DepthwiseKernel {
    /// Whether the depthwise bands can run a convolution on `in_shape` (`[N, C, H, W]`).
    pub fn applies(conv: &Conv, in_shape: &[usize]) -> bool {
        let channels = in_shape[1];
        conv.groups == channels
            && conv.out_channels == channels
            && conv.dilation.h == 1
            && conv.dilation.w == 1
            && (1..=2).contains(&conv.stride.w)
            && (1..=MAX_TAPS).contains(&conv.kernel.h)
            && (1..=MAX_TAPS).contains(&conv.kernel.w)
            && in_shape[3] <= MAX_WIDTH
    }

    /// `weight` is `[C][1][kh][kw]`; `precision` f32 or int8.
    pub fn new(
        simd: Simd,
        conv: &Conv,
        shape: DepthwiseShape,
        weight: &[f32],
        bias: Option<&[f32]>,
        epilogue: &Epilogue,
        precision: Precision,
    ) -> Self {
        assert!(precision != Precision::Bf16, "internal error: a bf16 layer on the depthwise bands");
        let (batch, channels, in_hw, out_hw) = shape;
        let taps = (conv.kernel.h, conv.kernel.w);
        let per_channel = taps.0 * taps.1;
        let (weight, factors) = super::conv::operand_weights(weight, precision, channels);
        let factors = match (precision, factors) {
            (Precision::Int8(input), Some(scales)) => Some(crate::precision::output_scales(input, &scales)),
            _ => None,
        };
        let mut data = Vec::with_capacity(4 * channels * (per_channel + 2));
        for c in 0..channels {
            for &w in &weight[c * per_channel..(c + 1) * per_channel] {
                data.extend_from_slice(&w.to_le_bytes());
            }
            data.extend_from_slice(&bias.map_or(0.0, |b| b[c]).to_le_bytes());
            if let Some(factors) = &factors {
                data.extend_from_slice(&factors[c].to_le_bytes());
            }
        }
        // Any `RegisterActivation` (on AVX-512 sigmoid and silu as the whole epilogue).
        let in_registers =
            epilogue_in_registers(simd, epilogue.activation, epilogue.residual, epilogue.post_activation);
        // A zero for relu, and one more for sigmoid and silu, none for a gate pass
        // (`DepthwiseSpec::registers_for`).
        let register = |a: Option<Activation>| a.filter(|_| in_registers).and_then(RegisterActivation::of);
        let activation_registers = DepthwiseSpec::registers_for(
            register(epilogue.activation),
            in_registers && epilogue.residual,
            register(epilogue.post_activation),
        );
        // Two vectors of a row together when the row has them, then as many rows as the
        // registers hold, spread evenly over the bands.
        let vectors = out_hw.1.div_ceil(simd.lanes());
        let group = vectors.min(2);
        let most_rows = DepthwiseSpec::most_rows(simd, per_channel, conv.stride.w, activation_registers, group)
            .clamp(1, MAX_BAND_ROWS);
        let bands = out_hw.0.div_ceil(most_rows);
        let band_rows = out_hw.0.div_ceil(bands.max(1)).max(1);
        DepthwiseKernel {
            simd,
            batch,
            channels,
            in_hw,
            out_hw,
            taps,
            stride: (conv.stride.h, conv.stride.w),
            pad: (conv.pad.top, conv.pad.left),
            band_rows,
            group,
            in_registers,
            epilogue: epilogue.clone(),
            precision,
            convert: OperandSpec::for_layer(precision, simd, false, in_hw.0 * in_hw.1),
            data,
        }
    }

    /// Bytes of the packed data per channel: the taps, the bias, for int8 the factor.
    fn channel_bytes(&self) -> i64 {
        let extra = if self.precision.is_int8() { 2 } else { 1 };
        4 * (self.taps.0 * self.taps.1 + extra) as i64
    }

    /// Scratch bytes: a plane for each part's quantized copy (int8), each rounded to 64
    /// bytes.
    pub fn scratch_bytes(&self) -> usize {
        if self.precision == Precision::F32 {
            return 0;
        }
        self.copy_bytes() * super::super::codegen::MAX_PARTS
    }

    fn copy_bytes(&self) -> usize {
        (4 * self.in_hw.0 * self.in_hw.1).div_ceil(64) * 64
    }

    /// The bands of a plane, top to bottom.
    fn bands(&self) -> Vec<Band> {
        let (kh, _) = self.taps;
        let sh = self.stride.0;
        (0..self.out_hw.0)
            .step_by(self.band_rows)
            .map(|first_row| {
                let rows = self.band_rows.min(self.out_hw.0 - first_row);
                let origin = (first_row * sh) as isize - self.pad.0 as isize;
                let needed = (rows - 1) * sh + kh;
                let start = (-origin).clamp(0, needed as isize) as usize;
                let end = (self.in_hw.0 as isize - origin).clamp(start as isize, needed as isize) as usize;
                let spec = DepthwiseSpec {
                    simd: self.simd,
                    taps: self.taps,
                    stride: self.stride,
                    pad_left: self.pad.1,
                    in_w: self.in_hw.1,
                    out_w: self.out_hw.1,
                    rows,
                    valid: (start, end),
                    group: self.group,
                    activation: self.register_activation(self.epilogue.activation),
                    residual: self.in_registers && self.epilogue.residual,
                    post_activation: self.register_activation(self.epilogue.post_activation),
                    whole_tails: self.whole_tails(first_row, rows),
                    rescale: self.precision.is_int8(),
                };
                Band { first_row, spec }
            })
            .collect()
    }

    /// The rows from `first_row` on (at most `rows`) whose partial last vector lies
    /// inside the plane on AVX2, where it is stored whole (`DepthwiseSpec::whole_tails`).
    fn whole_tails(&self, first_row: usize, rows: usize) -> usize {
        let lanes = self.simd.lanes();
        let (out_h, out_w) = self.out_hw;
        if self.simd != Simd::Avx2 || out_w % lanes == 0 {
            return 0;
        }
        let row_end = out_w.div_ceil(lanes) * lanes;
        (0..rows).take_while(|q| (first_row + q) * out_w + row_end <= out_h * out_w).count()
    }

    /// An activation of the epilogue when the micro-kernel runs it.
    fn register_activation(&self, activation: Option<Activation>) -> Option<RegisterActivation> {
        activation.filter(|_| self.in_registers).and_then(RegisterActivation::of)
    }

    /// The micro-kernels this layer needs.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let mut specs: Vec<Ukernel> = self.convert.iter().cloned().map(Ukernel::Operands).collect();
        for band in self.bands() {
            let spec = Ukernel::Depthwise(band.spec);
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
        specs
    }

    pub fn algorithm(&self) -> String {
        let epilogue = if self.in_registers { "" } else { ", epilogue per band" };
        let lanes = self.simd.lanes();
        let operands = if self.precision.is_int8() { ", int8 operands (exact in f32)" } else { "" };
        format!(
            "depthwise, {} bands of {} rows x {} px{epilogue}{operands}",
            self.simd.name(),
            self.band_rows,
            lanes * self.group.min(self.out_hw.1.div_ceil(lanes))
        )
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>, scratch: Loc) {
        let (in_h, in_w) = self.in_hw;
        let (out_h, out_w) = self.out_hw;
        let in_plane_bytes = 4 * (in_h * in_w) as i64;
        let out_plane_bytes = 4 * (out_h * out_w) as i64;
        let in_row = 4 * in_w as i64;
        let out_row = 4 * out_w as i64;
        let weight_bytes = self.channel_bytes();
        let x_base = kb.addr(x);
        // This part's plane of the scratch space (int8).
        let copy = kb.addr(scratch);
        let copy = kb.index(copy, kb.part, self.copy_bytes() as i64);
        let out_base = kb.addr(out);
        let residual_base = residual.map(|r| kb.addr(r));
        let data = kb.data();
        let bands = self.bands();
        // Image by image, the parts sharing the channels: each part writes the same
        // channels of every image, which the pieces of a following pointwise layer's
        // shared reduction read (`pointwise`).
        kb.for_range(self.batch, |kb, n| {
            kb.for_share(self.channels, |kb, channel| {
                let image = kb.fb.ins().imul_imm_s(n, self.channels as i64);
                let plane = kb.fb.ins().iadd(image, channel);
                let weights = kb.index(data, channel, weight_bytes);
                let x_plane = kb.index(x_base, plane, in_plane_bytes);
                // int8: the bands read the plane quantized.
                let x_plane = match &self.convert {
                    _ if self.precision == Precision::F32 => x_plane,
                    Some(spec) => {
                        operands::convert(kb, spec, x_plane, copy);
                        copy
                    }
                    None => {
                        copy_operand(kb, self.precision, x_plane, copy, in_h * in_w);
                        copy
                    }
                };
                let out_plane = kb.index(out_base, plane, out_plane_bytes);
                let res_plane = residual_base.map(|r| kb.index(r, plane, out_plane_bytes));
                // The band of output row `first` (a value), with the micro-kernel of `spec`.
                let band = |kb: &mut Kb, first: Value, spec: &DepthwiseSpec| {
                    let func = kb
                        .tile_kernel(&Ukernel::Depthwise(spec.clone()))
                        .expect("depthwise micro-kernels are defined for every band");
                    let origin_row = kb.fb.ins().imul_imm_s(first, self.stride.0 as i64);
                    let origin = kb.index(x_plane, origin_row, in_row);
                    let origin = kb.offset(origin, -(self.pad.0 as i64) * in_row);
                    let output = kb.index(out_plane, first, out_row);
                    let res = match res_plane {
                        Some(r) => kb.index(r, first, out_row),
                        None => kb.iconst(0),
                    };
                    kb.fb.ins().call(func, &[origin, weights, output, res]);
                    if !self.in_registers && !self.epilogue.is_empty() {
                        self.emit_band_epilogue(kb, spec.rows * out_w, output, res_plane.map(|_| res));
                    }
                };
                // Runs of bands with the same micro-kernel: a loop each.
                let mut start = 0;
                while start < bands.len() {
                    let spec = &bands[start].spec;
                    let end = (start..bands.len()).find(|&b| bands[b].spec != *spec).unwrap_or(bands.len());
                    let first = bands[start].first_row;
                    if end - start == 1 {
                        let first = kb.iconst(first as i64);
                        band(kb, first, spec);
                    } else {
                        kb.for_range(end - start, |kb, i| {
                            let row = kb.fb.ins().imul_imm_s(i, self.band_rows as i64);
                            let row = kb.fb.ins().iadd_imm_s(row, first as i64);
                            band(kb, row, spec);
                        });
                    }
                    start = end;
                }
            })
        });
    }

    /// The epilogue over a band's `count` stored outputs from `output`: activation,
    /// `+ residual`, activation, four at a time.
    fn emit_band_epilogue(&self, kb: &mut Kb, count: usize, output: Value, residual: Option<Value>) {
        let srcs: Vec<Value> = std::iter::once(output).chain(residual).collect();
        let epilogue = &self.epilogue;
        kb.map_floats(count, &srcs, output, |kb, _, values| {
            kb.epilogue_of(epilogue, values[0], values.get(1).copied())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Hw, Pad};

    /// On AVX2 a band stores a row's partial last vector whole exactly where its 8 lanes
    /// end inside the plane (the lanes past the row are the plane's next rows, which the
    /// same thread writes; past the plane, another thread's plane or the buffer's end):
    /// checked row by row against each band's first row, for rows narrower and wider
    /// than the lanes, strides 1 and 2; never on AVX-512 nor for rows of whole vectors.
    #[test]
    fn whole_tails_end_inside_the_plane() {
        let shapes =
            [(14, 3, 1), (7, 3, 1), (7, 5, 1), (28, 5, 2), (3, 3, 1), (1, 1, 1), (9, 3, 2), (16, 3, 1), (56, 3, 2)];
        for simd in [Simd::Avx2, Simd::Avx512] {
            for (size, k, s) in shapes {
                let conv = Conv {
                    out_channels: 4,
                    kernel: Hw::square(k),
                    stride: Hw::square(s),
                    pad: Pad::symmetric(Hw::square(k / 2)),
                    dilation: Hw::square(1),
                    groups: 4,
                    bias: true,
                };
                let out = (size + 2 * (k / 2) - k) / s + 1;
                let shape = (1, 4, (size, size + 1), (out, (size + 1 + 2 * (k / 2) - k) / s + 1));
                let weight = vec![0.5; 4 * k * k];
                let kernel =
                    DepthwiseKernel::new(simd, &conv, shape, &weight, None, &Epilogue::default(), Precision::F32);
                let (out_h, out_w) = kernel.out_hw;
                let row_end = out_w.div_ceil(simd.lanes()) * simd.lanes();
                let mut whole = 0;
                for band in kernel.bands() {
                    for q in 0..band.spec.rows {
                        let row = band.first_row + q;
                        let inside = (row * out_w + row_end) <= out_h * out_w;
                        let want = simd == Simd::Avx2 && out_w % simd.lanes() != 0 && inside;
                        assert_eq!(q < band.spec.whole_tails, want, "{simd:?} {shape:?} {k}x{k}/{s}, row {row}");
                        whole += usize::from(want);
                    }
                }
                assert_eq!(whole > 0, simd == Simd::Avx2 && out_w % 8 != 0 && out_h > 1, "{shape:?}");
            }
        }
    }
}
