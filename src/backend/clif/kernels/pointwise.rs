//! Pointwise convolutions (1x1, stride 1, no padding, one group) on AVX-512 and AVX2,
//! with the pixels in the vector lanes (`x86::assemble_pointwise`): a tile is 6 output
//! channels by 64 consecutive pixels of one image (16 on AVX2, whose 16 registers hold
//! 6 x 2 accumulators), and its results, epilogue applied in registers, store straight
//! into the NCHW output. The channel-lane tiles of `conv`
//! store through a buffer and transposes, which costs as much as the multiply-adds when
//! the reduction is short (a 1x1 layer over 16 to 64 channels).
//!
//! Weights are packed per block of output channels as `[in_channel][channel]`, then the
//! bias. Tiles of pixels run outermost (a tile's input stays in the caches while every
//! block of channels reads it), shared by the threads; small planes (fewer than 8 tiles)
//! share the blocks instead, with tiles of 14 channels by 32 pixels on AVX-512 (the
//! 16-pixel tiles on AVX2), or on AVX-512 with a long reduction its four pieces
//! (`PointwiseKernel::shared`). The last, partial tile of a plane masks its last vector.
//!
//! A gated layer (`ir::Epilogue::gate`, squeeze-and-excitation's multiply) scales its
//! packed weights per image by the gate into scratch, `W[o][c] * g[n][c]`, and the
//! tiles read those: two copies, alternating between images, so that one sync per image
//! separates the scaling from the tiles still reading the copy before.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::x86::{PointwiseSpec, RegisterActivation, Simd, Ukernel, epilogue_in_registers};
use super::{Kb, Loc, bf16, int8};
use crate::ir::{Activation, Conv, Epilogue};
use crate::precision::Int8Input;

/// Output channels per tile, and pixel vectors (16 lanes) per full tile.
const CHANNELS: usize = 6;
const VECTORS: usize = 4;
const TILE_PIXELS: usize = 16 * VECTORS;
/// The tile on small planes, where the parts share the blocks and every block reads the
/// whole input from the L2 cache: 14 channels over 32 pixels (28 accumulators, all 32
/// registers in use) load 2.3 times less input per multiply-add. Measured on one
/// thread: SqueezeNet's 512 -> 1000 on 13x13 1.27 -> 1.12 ms, 1024 -> 256 on 14x14
/// 0.735 -> 0.66 ms, 512 -> 512 on 7x7 0.211 -> 0.198 ms (12 x 32 and 8 x 48 gained
/// less, 24 x 16 lost).
const SMALL_CHANNELS: usize = 14;
const SMALL_PIXELS: usize = 32;
/// Full tiles of pixels from which the parts share the tiles rather than the blocks.
const SHARED_TILES: usize = 8;
/// On small planes on AVX-512, a reduction over at least this many input channels (a
/// multiple of [`QUARTERS`]) runs in [`QUARTERS`] fixed pieces that the parts share, each
/// piece's sums into a slot of its own, added up in a fixed order after a sync (see
/// [`PointwiseKernel::shared`]).
const SHARED_MIN_CHANNELS: usize = 384;
const QUARTERS: usize = 4;
/// The AVX2 tile: 6 channels by two vectors of 8 pixels (12 accumulators, two input
/// vectors, a broadcast and a scratch register: all 16).
const AVX2_PIXELS: usize = 16;

/// Appends `[out][in]` weights packed for the pixel-lane tiles: per block of `channels`
/// output channels (the last one maybe partial), `[in_channel][channel]`.
pub(crate) fn pack_blocks(packed: &mut Vec<u8>, weight: &[f32], in_channels: usize, channels: usize) {
    let out_channels = weight.len() / in_channels.max(1);
    for first in (0..out_channels).step_by(channels) {
        let last = (first + channels).min(out_channels);
        for ic in 0..in_channels {
            for oc in first..last {
                packed.extend_from_slice(&weight[oc * in_channels + ic].to_le_bytes());
            }
        }
    }
}

/// A pointwise convolution ready to emit.
pub(crate) struct PointwiseKernel {
    simd: Simd,
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    /// Pixels of one channel's plane.
    plane: usize,
    /// Output channels and pixels of a full tile.
    channels: usize,
    tile_pixels: usize,
    activation: Option<RegisterActivation>,
    residual: bool,
    post_activation: Option<RegisterActivation>,
    bias_start: usize,
    /// The parts of the reduction each tile runs in turn: one, the whole, but for long
    /// reductions where the tiles run outermost on AVX2 ([`MAX_PART`]).
    parts: Vec<Part>,
    /// Where the batch's planes run joined into one (`batch` is then 1 and `plane` the
    /// joined plane): the images' sizes, and what of the epilogue runs as the output is
    /// copied back.
    joined: Option<Joined>,
    /// Whether the input is multiplied by a gate `[N, C, 1, 1]` (by scaling the weights
    /// per image; the images are then never joined).
    gate: bool,
    /// Whether the parts share the reduction rather than the blocks of output channels
    /// (small planes on AVX-512, long reductions; gated or not): the input channels in
    /// [`QUARTERS`] pieces, piece `q`'s sums (from the bias for `q = 0`, else from 0)
    /// stored by the tiles without epilogue into the output (`q = 0`) or into scratch
    /// slot `q - 1`; after a sync the parts share the output planes, each the sum of its
    /// pieces in order plus the epilogue. Sharing the blocks, each part read the whole
    /// input, half of it written by the other core's depthwise layer (which shares the
    /// channels): MobileNet v2's 14x14 projections ran 1.0 to 1.3 times faster on two
    /// threads than on one. The pieces are fixed, so every thread count gives the same
    /// results.
    shared: bool,
    epilogue: Epilogue,
    /// Where the zeros (one per output channel) start in `data`: the bias of the pieces
    /// after the first.
    zeros_start: usize,
    /// bf16 on the `vdpbf16ps` tiles ([`PointwiseKernel::bf16`]): the layer's input
    /// channels. `in_channels` is then the count of pairs, the weights are bf16 pairs,
    /// and the input is copied into scratch as pair planes before the tiles run.
    bf16: Option<usize>,
    /// int8 on the VNNI tiles ([`PointwiseKernel::int8`]): `in_channels` is the count of
    /// quads, the weights are s8 quads, the bias region holds the corrections and is
    /// followed by the factors `m` and the bias; the input is the quad planes its
    /// `conv::ConvKernel` writes.
    int8: bool,
    /// The packed weights and bias, little-endian f32.
    pub data: Vec<u8>,
}

/// A run of input channels of the reduction: from `first`, `steps` of them. The first
/// part starts from the bias, the others from the sums stored by the one before, and
/// only the last applies the epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Part {
    first: usize,
    steps: usize,
    accumulate: bool,
    finish: bool,
}

/// The most input channels a part of the reduction reads on AVX2, where the tiles run
/// outermost: a 16-pixel tile's input is then 12 KiB, which stays in the L1 cache while
/// every block of output channels reads it. One part for a whole long reduction left it
/// to the L2 cache: 96 outputs on 14x14 at batch 8, 1 thread, ran at 89 GFLOP/s from 192
/// inputs, 79 from 384 and 576, 66 from 960.
const MAX_PART: usize = 192;

/// A pointwise layer on small planes of several images, run as one plane: the input
/// copied into scratch as `[in_channel][image][pixel]`, the tiles run over the joined
/// plane into scratch, and the output copied back to NCHW with the residual add and
/// post-activation. A 7x7 plane's 49 pixels fill four 16-pixel AVX2 tiles (49 of 64
/// lanes); eight images' 392 fill 25 (392 of 400).
#[derive(Clone, Copy, Debug)]
struct Joined {
    batch: usize,
    plane: usize,
    residual: bool,
    post_activation: Option<Activation>,
}

impl PointwiseKernel {
    /// Whether the pointwise tiles can run a convolution: 1x1, stride 1, no padding, one
    /// group, an epilogue that runs in registers (`x86::epilogue_in_registers`: a tanh
    /// or gelu, and on AVX-512 a sigmoid or silu beside a residual add, runs on the
    /// channel-lane tiles instead).
    pub fn applies(simd: Simd, conv: &Conv, epilogue: &Epilogue) -> bool {
        conv.kernel.h == 1
            && conv.kernel.w == 1
            && conv.stride.h == 1
            && conv.stride.w == 1
            && conv.pad.is_zero()
            && conv.groups == 1
            && epilogue_in_registers(simd, epilogue.activation, epilogue.residual, epilogue.post_activation)
    }

    /// `weight` is `[out][in]`, `shape` `(batch, in_channels, out_channels, plane)`.
    pub fn new(
        simd: Simd,
        shape: (usize, usize, usize, usize),
        weight: &[f32],
        bias: Option<&[f32]>,
        epilogue: &Epilogue,
    ) -> PointwiseKernel {
        let (batch, in_channels, out_channels, plane) = shape;
        let joined = (!epilogue.gate && joins_images(simd, shape)).then_some(Joined {
            batch,
            plane,
            residual: epilogue.residual,
            post_activation: epilogue.post_activation,
        });
        let (batch, plane) = if joined.is_some() { (1, batch * plane) } else { (batch, plane) };
        let (channels, tile_pixels) = match simd {
            Simd::Avx2 => (CHANNELS, AVX2_PIXELS),
            Simd::Avx512 if tiles_outer(simd, plane) => (CHANNELS, TILE_PIXELS),
            Simd::Avx512 => (SMALL_CHANNELS, SMALL_PIXELS),
        };
        let mut packed: Vec<u8> = Vec::with_capacity(4 * (out_channels * in_channels + out_channels));
        pack_blocks(&mut packed, weight, in_channels, channels);
        let bias_start = packed.len() / 4;
        for oc in 0..out_channels {
            packed.extend_from_slice(&bias.map_or(0.0, |b| b[oc]).to_le_bytes());
        }
        let shared = simd == Simd::Avx512
            && !tiles_outer(simd, plane)
            && joined.is_none()
            && in_channels >= SHARED_MIN_CHANNELS
            && in_channels.is_multiple_of(QUARTERS);
        let zeros_start = packed.len() / 4;
        if shared {
            packed.resize(packed.len() + 4 * out_channels, 0);
        }
        // Long reductions on AVX2, where the tiles run outermost: parts of at most
        // MAX_PART input channels, of near-equal lengths.
        let count = match simd {
            Simd::Avx2 if tiles_outer(simd, plane) => in_channels.div_ceil(MAX_PART).max(1),
            _ => 1,
        };
        let parts = (0..count)
            .map(|i| {
                let first = i * in_channels / count;
                let end = (i + 1) * in_channels / count;
                Part { first, steps: end - first, accumulate: i > 0, finish: i + 1 == count }
            })
            .collect();
        PointwiseKernel {
            simd,
            batch,
            in_channels,
            out_channels,
            plane,
            channels,
            tile_pixels,
            activation: epilogue.activation.and_then(RegisterActivation::of),
            residual: epilogue.residual && joined.is_none(),
            post_activation: epilogue.post_activation.filter(|_| joined.is_none()).and_then(RegisterActivation::of),
            bias_start,
            parts,
            joined,
            gate: epilogue.gate,
            shared,
            epilogue: epilogue.clone(),
            zeros_start,
            bf16: None,
            int8: false,
            data: packed,
        }
    }

    /// Whether a bf16 convolution (of a plane of `pixels` outputs) runs on
    /// [`Self::bf16`]: one [`Self::applies`] to on AVX-512, on a plane where the tiles
    /// run outermost. On smaller planes the direct tiles were as fast.
    pub fn bf16_applies(conv: &Conv, epilogue: &Epilogue, pixels: usize) -> bool {
        Self::applies(Simd::Avx512, conv, epilogue) && tiles_outer(Simd::Avx512, pixels)
    }

    /// A bf16 layer on AVX-512 with AVX512_BF16 (`shape` and `weight` as [`Self::new`]'s):
    /// the f32 kernel over `ceil(in / 2)` pair channels, the weights packed as bf16 pairs
    /// (`bf16::pack_pairs`), the tiles' multiply-adds `vdpbf16ps`. Never shared in pieces
    /// nor gated (a gate is applied to the input before the kernel: [`Self::gated`] is
    /// false).
    pub fn bf16(
        shape: (usize, usize, usize, usize),
        weight: &[f32],
        bias: Option<&[f32]>,
        epilogue: &Epilogue,
    ) -> PointwiseKernel {
        let (batch, in_channels, out_channels, plane) = shape;
        let pairs = bf16::pack_pairs(weight, out_channels, in_channels, 1);
        let epilogue = Epilogue { gate: false, ..epilogue.clone() };
        let shape = (batch, in_channels.div_ceil(2), out_channels, plane);
        let mut kernel = PointwiseKernel::new(Simd::Avx512, shape, &pairs, bias, &epilogue);
        kernel.shared = false;
        kernel.bf16 = Some(in_channels);
        kernel
    }

    /// Whether an int8 convolution of `pixels` outputs per plane runs on [`Self::int8`]
    /// (on AVX-512 with AVX512_VNNI): as [`Self::bf16_applies`].
    pub fn int8_applies(conv: &Conv, epilogue: &Epilogue, pixels: usize) -> bool {
        Self::bf16_applies(conv, epilogue, pixels)
    }

    /// An int8 layer on the VNNI pixel tiles, for one image (`shape` as [`Self::new`]'s
    /// with a batch of 1, `weight` `[out][in]`): the f32 kernel's geometry over
    /// `ceil(in / 4)` quad channels, the weights packed as s8 quads
    /// (`int8::pointwise_quads`), the tiles' multiply-adds `vpdpbusd`
    /// (`x86::PointwiseSpec::int8`). The input is the u8 quad planes the conv kernel
    /// quantizes (`conv::ConvKernel::with_int8_tiles`), which also runs the f32 tiles
    /// where the input holds a NaN. Never shared, joined nor gated.
    pub fn int8(
        shape: (usize, usize, usize, usize),
        weight: &[f32],
        bias: Option<&[f32]>,
        epilogue: &Epilogue,
        input: Int8Input,
    ) -> PointwiseKernel {
        let (batch, in_channels, out_channels, plane) = shape;
        assert!(batch == 1 && tiles_outer(Simd::Avx512, plane), "internal error: an int8 pointwise kernel's shape");
        let [quads, corrections, factors] = int8::pointwise_quads(weight, input, in_channels);
        let epilogue = Epilogue { gate: false, ..epilogue.clone() };
        let shape = (1, in_channels.div_ceil(4), out_channels, plane);
        let mut kernel = PointwiseKernel::new(Simd::Avx512, shape, &quads, Some(&corrections), &epilogue);
        assert!(kernel.joined.is_none() && !kernel.shared && kernel.parts.len() == 1);
        // After the corrections (the bias region), the factors and the bias.
        kernel.data.truncate(4 * (kernel.bias_start + out_channels));
        for value in factors.into_iter().chain((0..out_channels).map(|oc| bias.map_or(0.0, |b| b[oc]))) {
            kernel.data.extend_from_slice(&value.to_le_bytes());
        }
        kernel.int8 = true;
        kernel
    }

    /// The tile of one piece of a shared reduction ([`Self::shared`]): its sums as they
    /// are, the epilogue left to the sum of the pieces.
    fn piece_spec(&self, channels: usize, pixels: usize) -> PointwiseSpec {
        let piece = Part { first: 0, steps: self.in_channels / QUARTERS, accumulate: false, finish: true };
        PointwiseSpec {
            activation: None,
            residual: false,
            post_activation: None,
            ..self.spec(channels, pixels, &piece)
        }
    }

    fn spec(&self, channels: usize, pixels: usize, part: &Part) -> PointwiseSpec {
        let lanes = self.simd.lanes();
        PointwiseSpec {
            simd: self.simd,
            channels,
            vectors: pixels.div_ceil(lanes),
            last_lanes: (pixels - 1) % lanes + 1,
            steps: part.steps,
            plane_bytes: 4 * self.plane as i64,
            prefetch: if tiles_outer(self.simd, self.plane) { 4 * self.tile_pixels as i64 } else { 0 },
            activation: self.activation,
            residual: self.residual,
            post_activation: self.post_activation,
            accumulate: part.accumulate,
            finish: part.finish,
            bf16: self.bf16.is_some(),
            int8: self.int8.then_some(4 * self.out_channels as i64),
        }
    }

    /// (channels, pixels) of each kind of tile: full and partial blocks of channels,
    /// full and partial tiles of pixels.
    fn tile_kinds(&self) -> Vec<(usize, usize)> {
        let mut channels = Vec::new();
        if self.out_channels >= self.channels {
            channels.push(self.channels);
        }
        if !self.out_channels.is_multiple_of(self.channels) {
            channels.push(self.out_channels % self.channels);
        }
        let mut pixels = Vec::new();
        if self.plane >= self.tile_pixels {
            pixels.push(self.tile_pixels);
        }
        if !self.plane.is_multiple_of(self.tile_pixels) {
            pixels.push(self.plane % self.tile_pixels);
        }
        channels.iter().flat_map(|&c| pixels.iter().map(move |&p| (c, p))).collect()
    }

    /// The micro-kernels this layer needs.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let mut specs: Vec<Ukernel> = match self.bf16 {
            Some(channels) => bf16::row_specs(self.plane, channels % 2 == 1),
            None => Vec::new(),
        };
        for (c, p) in self.tile_kinds() {
            let pieces = self.shared.then(|| self.piece_spec(c, p));
            for spec in self.parts.iter().map(|part| self.spec(c, p, part)).chain(pieces) {
                let spec = Ukernel::Pointwise(spec);
                if !specs.contains(&spec) {
                    specs.push(spec);
                }
            }
        }
        specs
    }

    pub fn algorithm(&self) -> String {
        let parts = match self.parts.len() {
            1 => String::new(),
            n => format!(", reduction in {n} parts"),
        };
        let joined = if self.joined.is_some() { ", images joined" } else { "" };
        let joined = if self.gate { ", gated (weights scaled per image)" } else { joined };
        let shared = if self.shared { ", reduction shared in 4 pieces" } else { "" };
        let instruction = match (self.bf16, self.int8) {
            (Some(_), _) => ", bf16 tiles (vdpbf16ps)",
            (None, true) => ", int8 tiles (vpdpbusd)",
            (None, false) => "",
        };
        let (simd, pixels, channels) = (self.simd.name(), self.tile_pixels, self.channels);
        format!("pointwise, {simd} pixel tiles {pixels} px x {channels} ch{parts}{joined}{shared}{instruction}")
    }

    /// Scratch bytes: the joined input and output, or the two copies of the gated
    /// weights and the shared pieces' slots (nothing otherwise).
    pub fn scratch_bytes(&self) -> usize {
        if self.bf16.is_some() {
            // The pair planes of every image.
            return 4 * self.batch * self.in_channels * self.plane;
        }
        let gated = self.gated_scratch_bytes();
        let slots = if self.shared { 4 * (QUARTERS - 1) * self.batch * self.out_channels * self.plane } else { 0 };
        match self.joined {
            Some(_) => 4 * (self.in_channels + self.out_channels) * self.plane,
            None => gated + slots,
        }
    }

    /// Scratch bytes of the gated weights' two copies (0 for a layer without a gate).
    fn gated_scratch_bytes(&self) -> usize {
        if self.gate { 2 * self.gated_weight_bytes() } else { 0 }
    }

    /// The bytes of one image's copy of the gated weights, rounded up to a cache line.
    fn gated_weight_bytes(&self) -> usize {
        (4 * self.in_channels * self.out_channels).div_ceil(64) * 64
    }

    /// Whether the kernel multiplies its input by a gate itself (`emit`'s `gate`).
    pub fn gated(&self) -> bool {
        self.gate
    }

    /// `gate`, `[N, C, 1, 1]`, is given exactly when the kernel is [`Self::gated`].
    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>, scratch: Loc, gate: Option<Loc>) {
        let x_base = kb.addr(x);
        let out_base = kb.addr(out);
        let residual_base = residual.map(|r| kb.addr(r));
        if let Some(channels) = self.bf16 {
            // Every image's pair planes (the parts share them), then the tiles over them.
            let pairs = self.in_channels;
            let plane_bytes = 4 * self.plane as i64;
            let scratch = kb.addr(scratch);
            kb.for_share(self.batch * pairs, |kb, i| {
                let (pair, channel) = bf16::pair_channel(kb, i, pairs, channels);
                let low = kb.index(x_base, channel, plane_bytes);
                let high = kb.offset(low, plane_bytes);
                let dst = kb.index(scratch, i, plane_bytes);
                bf16::convert(kb, (low, high), dst, self.plane, channels % 2 == 1, pair, pairs);
            });
            kb.sync();
            self.emit_planes(kb, scratch, out_base, residual_base, None);
            return;
        }
        if self.shared {
            // The gated weights' two copies, then the slots.
            let scratch = kb.addr(scratch);
            let gate = gate.map(|g| (kb.addr(g), scratch));
            let slots = kb.offset(scratch, self.gated_scratch_bytes() as i64);
            self.emit_shared(kb, x_base, out_base, residual_base, slots, gate);
            return;
        }
        let Some(joined) = self.joined else {
            let gate = gate.map(|g| (kb.addr(g), kb.addr(scratch)));
            self.emit_planes(kb, x_base, out_base, residual_base, gate);
            return;
        };
        // `[image][channel][pixel]` <-> `[channel][image][pixel]`: one plane of
        // `joined.plane` floats at a time, the parts sharing the channels.
        let (batch, plane) = (joined.batch, joined.plane);
        let plane_bytes = 4 * plane as i64;
        let joined_in = kb.addr(scratch);
        let joined_out = kb.offset(joined_in, 4 * (self.in_channels * self.plane) as i64);
        kb.for_share(self.in_channels, |kb, c| {
            let row = kb.index(joined_in, c, batch as i64 * plane_bytes);
            kb.for_range(batch, |kb, n| {
                let image = kb.fb.ins().imul_imm_s(n, self.in_channels as i64);
                let src_plane = kb.fb.ins().iadd(image, c);
                let src = kb.index(x_base, src_plane, plane_bytes);
                let dst = kb.index(row, n, plane_bytes);
                kb.copy_floats(src, dst, plane);
            });
        });
        kb.sync();
        self.emit_planes(kb, joined_in, joined_out, None, None);
        kb.sync();
        let rest = Epilogue { residual: false, post_activation: joined.post_activation, ..Epilogue::default() };
        kb.for_share(self.out_channels, |kb, c| {
            let row = kb.index(joined_out, c, batch as i64 * plane_bytes);
            kb.for_range(batch, |kb, n| {
                let src = kb.index(row, n, plane_bytes);
                let image = kb.fb.ins().imul_imm_s(n, self.out_channels as i64);
                let dst_plane = kb.fb.ins().iadd(image, c);
                let dst = kb.index(out_base, dst_plane, plane_bytes);
                let residual = residual_base.filter(|_| joined.residual).map(|r| kb.index(r, dst_plane, plane_bytes));
                let srcs: Vec<Value> = [src].into_iter().chain(residual).collect();
                kb.map_floats(plane, &srcs, dst, |kb, _, values| {
                    kb.epilogue_of(&rest, values[0], values.get(1).copied())
                });
            });
        });
    }

    /// [`Self::shared`]: the pieces of every image's reduction, shared by the parts, into
    /// the output and the scratch slots at `slots`; a sync; the sums and the epilogue,
    /// the parts sharing the output planes. With `gate` (the gate's and the gated
    /// weights' addresses), each image's weights are scaled first, the parts sharing the
    /// input channels as they then share the pieces (each scales the rows it reads).
    fn emit_shared(
        &self,
        kb: &mut Kb,
        x_base: Value,
        out_base: Value,
        residual_base: Option<Value>,
        slots: Value,
        gate: Option<(Value, Value)>,
    ) {
        let plane_bytes = 4 * self.plane as i64;
        let out_image_bytes = self.out_channels as i64 * plane_bytes;
        let slot_bytes = self.batch as i64 * out_image_bytes;
        let steps = self.in_channels / QUARTERS;
        let channels = self.channels;
        let full_blocks = self.out_channels / channels;
        let tail = self.out_channels % channels;
        let tiles = self.plane_tiles();
        let data = kb.data();
        kb.for_range(self.batch, |kb, n| {
            let x_n = kb.index(x_base, n, self.in_channels as i64 * plane_bytes);
            let weights_n = self.emit_image_weights(kb, data, gate, n);
            kb.for_share(QUARTERS, |kb, q| {
                // Piece `q`: input channels from `q * steps`, into the output or slot q - 1.
                let first = kb.fb.ins().imul_imm_s(q, steps as i64);
                let x_piece = kb.index(x_n, first, plane_bytes);
                let is_first = kb.fb.ins().icmp_imm_u(IntCC::Equal, q, 0);
                let bias_start = kb.iconst(4 * self.bias_start as i64);
                let zeros_start = kb.iconst(4 * self.zeros_start as i64);
                let bias_offset = kb.fb.ins().select(is_first, bias_start, zeros_start);
                let bias_base = kb.fb.ins().iadd(data, bias_offset);
                let out_n = kb.index(out_base, n, out_image_bytes);
                let slot = kb.fb.ins().iadd_imm_s(q, -1);
                let slot = kb.index(slots, slot, slot_bytes);
                let slot_n = kb.index(slot, n, out_image_bytes);
                let target = kb.fb.ins().select(is_first, out_n, slot_n);
                let tile = |kb: &mut Kb, block_first: Value, channels: usize, pixels: usize, start: usize| {
                    let func = kb
                        .tile_kernel(&Ukernel::Pointwise(self.piece_spec(channels, pixels)))
                        .expect("pointwise micro-kernels are defined for every piece");
                    // The block's weights are `[in_channel][channel]`: the piece's from `first` on.
                    let block = kb.index(weights_n, block_first, 4 * self.in_channels as i64);
                    let block = kb.index(block, first, 4 * channels as i64);
                    let bias = kb.index(bias_base, block_first, 4);
                    let input = kb.offset(x_piece, 4 * start as i64);
                    let output = kb.index(target, block_first, plane_bytes);
                    let output = kb.offset(output, 4 * start as i64);
                    let residual = kb.iconst(0);
                    kb.fb.ins().call(func, &[input, block, bias, output, residual]);
                };
                kb.for_range(full_blocks, |kb, b| {
                    let block_first = kb.fb.ins().imul_imm_s(b, channels as i64);
                    for &(pixels, start) in &tiles {
                        tile(kb, block_first, channels, pixels, start);
                    }
                });
                if tail > 0 {
                    let block_first = kb.iconst((full_blocks * channels) as i64);
                    for &(pixels, start) in &tiles {
                        tile(kb, block_first, tail, pixels, start);
                    }
                }
            });
        });
        kb.sync();
        // The sums in piece order, then the epilogue: activation, residual, activation.
        let epilogue = &self.epilogue;
        // Image by image, the parts sharing the channels (as the depthwise layers do).
        kb.for_range(self.batch, |kb, n| {
            kb.for_share(self.out_channels, |kb, c| {
                let image = kb.fb.ins().imul_imm_s(n, self.out_channels as i64);
                let i = kb.fb.ins().iadd(image, c);
                let dst = kb.index(out_base, i, plane_bytes);
                let mut srcs = vec![dst];
                for slot in 0..QUARTERS - 1 {
                    let base = kb.offset(slots, slot as i64 * slot_bytes);
                    srcs.push(kb.index(base, i, plane_bytes));
                }
                if let Some(r) = residual_base.filter(|_| epilogue.residual) {
                    srcs.push(kb.index(r, i, plane_bytes));
                }
                kb.map_floats(self.plane, &srcs, dst, |kb, _, values| {
                    let mut v = values[0];
                    for &piece in &values[1..QUARTERS] {
                        v = kb.fb.ins().fadd(v, piece);
                    }
                    kb.epilogue_of(epilogue, v, values.get(QUARTERS).copied())
                });
            })
        });
    }

    /// The tiles over every plane of the input at `x_base` into the output at `out_base`
    /// (NCHW, `self.batch` images of `self.plane` pixels); with `gate`, the gate's and the
    /// gated weights' addresses, each image's weights scaled first.
    pub(super) fn emit_planes(
        &self,
        kb: &mut Kb,
        x_base: Value,
        out_base: Value,
        residual_base: Option<Value>,
        gate: Option<(Value, Value)>,
    ) {
        let plane_bytes = 4 * self.plane as i64;
        let data = kb.data();
        let bias_data = kb.offset(data, 4 * self.bias_start as i64);
        let (channels, tile_pixels) = (self.channels, self.tile_pixels);
        let full_tiles = self.plane / tile_pixels;
        let rest = self.plane % tile_pixels;
        let full_blocks = self.out_channels / channels;
        let tail = self.out_channels % channels;
        let tiles = self.plane_tiles();
        kb.for_range(self.batch, |kb, n| {
            let x_n = kb.index(x_base, n, self.in_channels as i64 * plane_bytes);
            let out_n = kb.index(out_base, n, self.out_channels as i64 * plane_bytes);
            let res_n = residual_base.map(|r| kb.index(r, n, self.out_channels as i64 * plane_bytes));
            // The weights the tiles read: the packed ones, or this image's gated copy.
            let weights_n = self.emit_image_weights(kb, data, gate, n);
            // One tile: `channels` channels from channel `first`, `pixels` pixels from
            // byte `offset` of the plane.
            let tile = |kb: &mut Kb, first: Value, channels: usize, pixels: usize, offset: Value, part: &Part| {
                let func = kb
                    .tile_kernel(&Ukernel::Pointwise(self.spec(channels, pixels, part)))
                    .expect("pointwise micro-kernels are defined for every tile kind");
                // The block's weights are `[in_channel][channel]`: the part's from
                // `part.first` on.
                let block = kb.index(weights_n, first, 4 * self.in_channels as i64);
                let weights = kb.offset(block, 4 * (part.first * channels) as i64);
                let bias = kb.index(bias_data, first, 4);
                let x_part = kb.offset(x_n, part.first as i64 * plane_bytes);
                let input = kb.fb.ins().iadd(x_part, offset);
                let channel = kb.fb.ins().imul_imm_s(first, plane_bytes);
                let at = kb.fb.ins().iadd(channel, offset);
                let output = kb.fb.ins().iadd(out_n, at);
                let residual = match res_n {
                    Some(r) => kb.fb.ins().iadd(r, at),
                    None => kb.iconst(0),
                };
                kb.fb.ins().call(func, &[input, weights, bias, output, residual]);
            };
            // Every block of channels over one tile of pixels, one part of the
            // reduction after the other.
            let column = |kb: &mut Kb, pixels: usize, offset: Value| {
                for part in &self.parts {
                    kb.for_range(full_blocks, |kb, b| {
                        let first = kb.fb.ins().imul_imm_s(b, channels as i64);
                        tile(kb, first, channels, pixels, offset, part);
                    });
                    if tail > 0 {
                        let first = kb.iconst((full_blocks * channels) as i64);
                        tile(kb, first, tail, pixels, offset, part);
                    }
                }
            };
            // Every tile of pixels for one block of channels.
            let row = |kb: &mut Kb, first: Value, channels: usize| {
                for &(pixels, start) in &tiles {
                    let offset = kb.iconst(4 * start as i64);
                    for part in &self.parts {
                        tile(kb, first, channels, pixels, offset, part);
                    }
                }
            };
            if tiles_outer(self.simd, self.plane) && short_reduction(self.simd, self.in_channels) {
                // Blocks outer over a large plane, the parts sharing each block's tiles:
                // the input is read again by every block, but from few planes, while
                // only one block's output (and residual) planes stream at a time.
                let block = |kb: &mut Kb, first: Value, channels: usize| {
                    kb.for_share(full_tiles, |kb, t| {
                        let offset = kb.fb.ins().imul_imm_s(t, 4 * tile_pixels as i64);
                        for part in &self.parts {
                            tile(kb, first, channels, tile_pixels, offset, part);
                        }
                    });
                    if rest > 0 {
                        kb.on_last_part(|kb| {
                            let offset = kb.iconst(4 * (full_tiles * tile_pixels) as i64);
                            for part in &self.parts {
                                tile(kb, first, channels, rest, offset, part);
                            }
                        });
                    }
                };
                kb.for_range(full_blocks, |kb, b| {
                    let first = kb.fb.ins().imul_imm_s(b, channels as i64);
                    block(kb, first, channels);
                });
                if tail > 0 {
                    let first = kb.iconst((full_blocks * channels) as i64);
                    block(kb, first, tail);
                }
            } else if tiles_outer(self.simd, self.plane) {
                // Tiles outer: a tile's input (every channel of 64 pixels) stays in the
                // caches while all the blocks read it. The parts share the tiles.
                kb.for_share(full_tiles, |kb, t| {
                    let offset = kb.fb.ins().imul_imm_s(t, 4 * tile_pixels as i64);
                    column(kb, tile_pixels, offset);
                });
                if rest > 0 {
                    kb.on_last_part(|kb| {
                        let offset = kb.iconst(4 * (full_tiles * tile_pixels) as i64);
                        column(kb, rest, offset);
                    });
                }
            } else {
                // Few tiles (small planes): the parts share the blocks of channels.
                kb.for_share(full_blocks, |kb, b| {
                    let first = kb.fb.ins().imul_imm_s(b, channels as i64);
                    row(kb, first, channels);
                });
                if tail > 0 {
                    kb.on_last_part(|kb| {
                        let first = kb.iconst((full_blocks * channels) as i64);
                        row(kb, first, tail);
                    });
                }
            }
        });
    }
}

impl PointwiseKernel {
    /// (pixels, first pixel) of the tiles of a plane: the full ones, then a partial one.
    fn plane_tiles(&self) -> Vec<(usize, usize)> {
        let (plane, tile_pixels) = (self.plane, self.tile_pixels);
        (0..plane / tile_pixels)
            .map(|t| (tile_pixels, t * tile_pixels))
            .chain(
                (!plane.is_multiple_of(tile_pixels)).then(|| (plane % tile_pixels, plane / tile_pixels * tile_pixels)),
            )
            .collect()
    }

    /// The weights image `n`'s tiles read: the packed ones at `data`, or with `gate` (the
    /// gate's and the gated copies' addresses) this image's copy, scaled here, then a
    /// sync (two copies alternate, so one sync per image suffices).
    fn emit_image_weights(&self, kb: &mut Kb, data: Value, gate: Option<(Value, Value)>, n: Value) -> Value {
        let Some((gate_base, copies)) = gate else {
            return data;
        };
        let gate_n = kb.index(gate_base, n, 4 * self.in_channels as i64);
        let copy = kb.fb.ins().band_imm_u(n, 1);
        let copy = kb.index(copies, copy, self.gated_weight_bytes() as i64);
        self.emit_gated_weights(kb, data, gate_n, copy);
        kb.sync();
        copy
    }

    /// `copy = weights * gate` for one image: every packed row (one input channel of a
    /// block of output channels) times that channel's gate value, the parts sharing the
    /// input channels. A row of 4 floats or more runs in f32x4 steps, the last one
    /// overlapping the one before where the row is not a multiple of 4 (it writes the
    /// same products again).
    fn emit_gated_weights(&self, kb: &mut Kb, weights: Value, gate_n: Value, copy: Value) {
        let channels = self.channels;
        let full_blocks = self.out_channels / channels;
        let tail = self.out_channels % channels;
        let in_channels = self.in_channels as i64;
        let scale_row = |kb: &mut Kb, at: Value, len: usize, g: Value, g4: Value| {
            let src = kb.fb.ins().iadd(weights, at);
            let dst = kb.fb.ins().iadd(copy, at);
            if len < 4 {
                for i in 0..len as i64 {
                    let w = kb.load_weight(F32, src, 4 * i);
                    let product = kb.fb.ins().fmul(w, g);
                    kb.store(product, dst, 4 * i);
                }
                return;
            }
            let starts = (0..len / 4).map(|v| 4 * v).chain((!len.is_multiple_of(4)).then_some(len - 4));
            for start in starts {
                let w = kb.load_weight(F32X4, src, 4 * start as i64);
                let product = kb.fb.ins().fmul(w, g4);
                kb.store(product, dst, 4 * start as i64);
            }
        };
        kb.for_share(self.in_channels, |kb, c| {
            let g = kb.index(gate_n, c, 4);
            let g = kb.load(F32, g, 0);
            let g4 = kb.fb.ins().splat(F32X4, g);
            // Row `c` of the block from channel `first` is at float
            // `first * in_channels + c * len`.
            let row = kb.fb.ins().imul_imm_s(c, 4 * channels as i64);
            kb.for_range(full_blocks, |kb, b| {
                let block = kb.fb.ins().imul_imm_s(b, 4 * (channels as i64) * in_channels);
                let at = kb.fb.ins().iadd(block, row);
                scale_row(kb, at, channels, g, g4);
            });
            if tail > 0 {
                let row = kb.fb.ins().imul_imm_s(c, 4 * tail as i64);
                let at = kb.fb.ins().iadd_imm_s(row, 4 * (full_blocks * channels) as i64 * in_channels);
                scale_row(kb, at, tail, g, g4);
            }
        });
    }
}

/// Whether a layer runs its images' planes joined ([`Joined`]): on AVX2, at batch 2 and
/// more, on planes of fewer than 8 tiles whose last tile is mostly empty (at least 15%
/// more lanes than pixels: 7x7, not 14x14 or 8x8) and whose joined tiles waste at least
/// a tenth of a lane per pixel less, and with channels enough on both
/// sides that the copies cost little next to the multiply-adds (harmonic mean of the
/// channel counts at least 64).
fn joins_images(simd: Simd, (batch, in_channels, out_channels, plane): (usize, usize, usize, usize)) -> bool {
    let lanes = plane.div_ceil(AVX2_PIXELS) * AVX2_PIXELS;
    let joined_lanes = (batch * plane).div_ceil(AVX2_PIXELS) * AVX2_PIXELS;
    simd == Simd::Avx2
        && batch > 1
        && !tiles_outer(simd, plane)
        && 100 * lanes >= 115 * plane
        && 10 * joined_lanes <= batch * (10 * lanes - plane)
        && 2 * in_channels * out_channels >= 64 * (in_channels + out_channels)
}

/// Whether a layer over a large plane runs its blocks of output channels outermost, each
/// over every tile, rather than its tiles: on AVX2, from 16 input channels or fewer.
/// Tiles outer, a 16 -> 16 layer with a residual add on 112x112 streams 16 input, 16
/// output and 16 residual planes at once, and at batch 8 (maps past the L2 cache) ran at
/// 36 GFLOP/s; blocks outer, it re-reads its 16 input planes for each of three blocks
/// and ran at 47 (MobileNet v3 large's features.1.block.1: 1.44 -> 1.09 ms; its 16 -> 64
/// features.2.block.0 3.54 -> 2.93). From 24 and 32 inputs it lost (MobileNet v2's
/// 32 -> 16 on 112x112: 1.48 -> 2.08 ms).
fn short_reduction(simd: Simd, in_channels: usize) -> bool {
    simd == Simd::Avx2 && in_channels <= 16
}

/// Whether the tiles of pixels of a `plane`-pixel plane run outermost (shared by the
/// parts), each over every block of channels, rather than the blocks (small planes):
/// from 8 full tiles of 64 pixels on AVX-512, of 16 on AVX2. On AVX2 this counts the
/// 16-pixel tiles, so that 14x14 planes run tiles outer too: each block reading the
/// whole input from the L2 cache cost MobileNet v2's 14x14 projections (384 or 576
/// inputs) 1.23-1.28 times ORT's time, tiles outer 1.12-1.15 (1 thread).
fn tiles_outer(simd: Simd, plane: usize) -> bool {
    let tile_pixels = match simd {
        Simd::Avx512 => TILE_PIXELS,
        Simd::Avx2 => AVX2_PIXELS,
    };
    plane / tile_pixels >= SHARED_TILES
}
