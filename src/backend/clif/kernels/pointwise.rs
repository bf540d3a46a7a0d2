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
//! 16-pixel tiles on AVX2). The last, partial tile of a plane masks its last vector.

use cranelift_codegen::ir::{InstBuilder, Value};

use super::x86::{PointwiseSpec, RegisterActivation, Simd, Ukernel};
use super::{Kb, Loc};
use crate::ir::{Activation, Conv, Epilogue};

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
    /// The packed weights and bias, little-endian f32.
    pub data: Vec<u8>,
}

impl PointwiseKernel {
    /// Whether the pointwise tiles can run a convolution: 1x1, stride 1, no padding, one
    /// group, an epilogue of activations that run in registers and a residual add at
    /// most (a tanh or gelu, and on AVX-512 a sigmoid or silu, runs on the channel-lane
    /// tiles instead).
    pub fn applies(simd: Simd, conv: &Conv, epilogue: &Epilogue) -> bool {
        let in_registers = |a: Option<Activation>| a.is_none_or(|a| RegisterActivation::of(a, simd).is_some());
        conv.kernel.h == 1
            && conv.kernel.w == 1
            && conv.stride.h == 1
            && conv.stride.w == 1
            && conv.pad.is_zero()
            && conv.groups == 1
            && in_registers(epilogue.activation)
            && in_registers(epilogue.post_activation)
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
        PointwiseKernel {
            simd,
            batch,
            in_channels,
            out_channels,
            plane,
            channels,
            tile_pixels,
            activation: epilogue.activation.and_then(|a| RegisterActivation::of(a, simd)),
            residual: epilogue.residual,
            post_activation: epilogue.post_activation.and_then(|a| RegisterActivation::of(a, simd)),
            bias_start,
            data: packed,
        }
    }

    fn spec(&self, channels: usize, pixels: usize) -> PointwiseSpec {
        let lanes = self.simd.lanes();
        PointwiseSpec {
            simd: self.simd,
            channels,
            vectors: pixels.div_ceil(lanes),
            last_lanes: (pixels - 1) % lanes + 1,
            steps: self.in_channels,
            plane_bytes: 4 * self.plane as i64,
            prefetch: if tiles_outer(self.simd, self.plane) { 4 * self.tile_pixels as i64 } else { 0 },
            activation: self.activation,
            residual: self.residual,
            post_activation: self.post_activation,
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
        self.tile_kinds().into_iter().map(|(c, p)| Ukernel::Pointwise(self.spec(c, p))).collect()
    }

    pub fn algorithm(&self) -> String {
        format!("pointwise, {} pixel tiles {} px x {} ch", self.simd.name(), self.tile_pixels, self.channels)
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>) {
        let plane_bytes = 4 * self.plane as i64;
        let x_base = kb.addr(x);
        let out_base = kb.addr(out);
        let residual_base = residual.map(|r| kb.addr(r));
        let data = kb.data();
        let bias_data = kb.offset(data, 4 * self.bias_start as i64);
        let (channels, tile_pixels) = (self.channels, self.tile_pixels);
        let full_tiles = self.plane / tile_pixels;
        let rest = self.plane % tile_pixels;
        let full_blocks = self.out_channels / channels;
        let tail = self.out_channels % channels;
        // (pixels, first pixel) of the plane's tiles.
        let tiles: Vec<(usize, usize)> = (0..full_tiles)
            .map(|t| (tile_pixels, t * tile_pixels))
            .chain((rest > 0).then_some((rest, full_tiles * tile_pixels)))
            .collect();
        kb.for_range(self.batch, |kb, n| {
            let x_n = kb.index(x_base, n, self.in_channels as i64 * plane_bytes);
            let out_n = kb.index(out_base, n, self.out_channels as i64 * plane_bytes);
            let res_n = residual_base.map(|r| kb.index(r, n, self.out_channels as i64 * plane_bytes));
            // One tile: `channels` channels from channel `first`, `pixels` pixels from
            // byte `offset` of the plane.
            let tile = |kb: &mut Kb, first: Value, channels: usize, pixels: usize, offset: Value| {
                let func = kb
                    .tile_kernel(&Ukernel::Pointwise(self.spec(channels, pixels)))
                    .expect("pointwise micro-kernels are defined for every tile kind");
                let weights = kb.index(data, first, 4 * self.in_channels as i64);
                let bias = kb.index(bias_data, first, 4);
                let input = kb.fb.ins().iadd(x_n, offset);
                let channel = kb.fb.ins().imul_imm_s(first, plane_bytes);
                let at = kb.fb.ins().iadd(channel, offset);
                let output = kb.fb.ins().iadd(out_n, at);
                let residual = match res_n {
                    Some(r) => kb.fb.ins().iadd(r, at),
                    None => kb.iconst(0),
                };
                kb.fb.ins().call(func, &[input, weights, bias, output, residual]);
            };
            // Every block of channels over one tile of pixels.
            let column = |kb: &mut Kb, pixels: usize, offset: Value| {
                kb.for_range(full_blocks, |kb, b| {
                    let first = kb.fb.ins().imul_imm_s(b, channels as i64);
                    tile(kb, first, channels, pixels, offset);
                });
                if tail > 0 {
                    let first = kb.iconst((full_blocks * channels) as i64);
                    tile(kb, first, tail, pixels, offset);
                }
            };
            // Every tile of pixels for one block of channels.
            let row = |kb: &mut Kb, first: Value, channels: usize| {
                for &(pixels, start) in &tiles {
                    let offset = kb.iconst(4 * start as i64);
                    tile(kb, first, channels, pixels, offset);
                }
            };
            if tiles_outer(self.simd, self.plane) {
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
