//! Convolution and fully connected layers, both as one register-tiled micro-kernel: a
//! tile of up to 4 output pixels (batch rows, for `linear`) times a block of
//! `4 * vectors` output channels accumulates in `4 * vectors` f32x4 registers, each
//! multiply-add taking one input value broadcast to all lanes and one f32x4 of weights
//! for four consecutive output channels.
//!
//! Weights are repacked at build time so that the inner loop reads them contiguously:
//! for each group and block of output channels, `[in_channel][kh][kw][lane]` with
//! `4 * vectors` lanes (zero lanes past the group's last output channel), then the bias
//! in the same blocks. A padded convolution first copies its input, per batch element,
//! into a zero-bordered scratch buffer in the arena, so the hot loop has no bounds tests.
//!
//! A tile's accumulators hold, per pixel, four output channels; a convolution's output
//! is NCHW, so a full tile of 4 consecutive pixels is transposed (4x4, in registers)
//! into one f32x4 per output channel before the epilogue and a contiguous store. Tiles
//! never straddle the end of a row or plane: the last tile of a row overlaps the one
//! before it (recomputing a few pixels) instead; rows narrower than 4 pixels use
//! partial tiles stored lane by lane.
//!
//! Loop order, per batch element and group: chunks of output pixels, then blocks of
//! output channels, then the tiles of the chunk, then the reduction (input channels,
//! with the kernel window unrolled). One chunk covers the whole plane unless the input
//! outgrows the L2 cache while the weights do not (see `ConvKernel::chunking`).
//!
//! Cranelift ties an FMA's result to its first factor, so the broadcast input value,
//! shared by the `vectors` multiply-adds of its pixel, is copied before all but the last
//! of them (register moves, free at rename on current x86 cores); `MicroKernel` has
//! variants that trade those copies for loads.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::Variable;

use super::pointwise::PointwiseKernel;
use super::x86::{RegisterActivation, Simd, TileSpec, Ukernel};
use super::{F32, F32X4, Kb, Loc, MicroKernel, bf16, int8};
use crate::ir::{Conv, Epilogue};
use crate::precision::{Int8Input, Precision};

/// The fewest chunks a plane is cut into when it has that many units (rows or tiles):
/// the parts of a multithreaded run share a convolution's chunks.
const MIN_CHUNKS: usize = 16;
/// Runs of pixels per block of output channels when the parts share the blocks.
const BLOCK_PIECES: usize = 4;

/// How output channels are split into register blocks for one group.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocking {
    /// f32x4 vectors per full block.
    pub(super) vectors: usize,
    pub(super) full_blocks: usize,
    /// Vectors of the last, partial block (0 if there is none).
    pub(super) tail_vectors: usize,
    /// Output channels of the partial block.
    pub(super) tail_channels: usize,
}

impl Blocking {
    /// Blocks of `vectors` f32x4 vectors; a partial block's vectors are rounded up to a
    /// multiple of `quantum` (4 for the 16-lane micro-kernels).
    fn new(out_per_group: usize, vectors: usize, quantum: usize) -> Blocking {
        let lanes = 4 * vectors;
        let rest = out_per_group % lanes;
        let tail_vectors = rest.div_ceil(4 * quantum) * quantum;
        Blocking { vectors, full_blocks: out_per_group / lanes, tail_vectors, tail_channels: rest }
    }

    /// The (f32x4 vectors, channels) of each kind of block: the full one, the tail.
    fn kinds(&self) -> Vec<usize> {
        let mut kinds = Vec::new();
        if self.full_blocks > 0 {
            kinds.push(self.vectors);
        }
        if self.tail_vectors > 0 {
            kinds.push(self.tail_vectors);
        }
        kinds
    }

    /// Packed lanes per group (output channels rounded up to whole vectors).
    pub(super) fn group_lanes(&self) -> usize {
        4 * (self.full_blocks * self.vectors + self.tail_vectors)
    }

    /// (first output channel, lanes) of each block of a group.
    pub(super) fn blocks(&self) -> Vec<(usize, usize)> {
        let mut blocks: Vec<(usize, usize)> =
            (0..self.full_blocks).map(|b| (b * 4 * self.vectors, 4 * self.vectors)).collect();
        if self.tail_vectors > 0 {
            blocks.push((self.full_blocks * 4 * self.vectors, 4 * self.tail_vectors));
        }
        blocks
    }
}

/// Packs `[out][k]` weights (and a bias) into the block layout described in the module
/// docs, `groups` groups of `out / groups` output channels each, as little-endian bytes.
pub(super) fn pack(weight: &[f32], bias: Option<&[f32]>, groups: usize, k: usize, blocking: Blocking) -> Vec<u8> {
    let out_per_group = weight.len() / k / groups;
    let group_lanes = blocking.group_lanes();
    let mut packed: Vec<u8> = Vec::with_capacity(4 * groups * group_lanes * (k + 1));
    // (first output channel, lanes) of each block of a group.
    let mut blocks: Vec<(usize, usize)> =
        (0..blocking.full_blocks).map(|b| (b * 4 * blocking.vectors, 4 * blocking.vectors)).collect();
    if blocking.tail_vectors > 0 {
        blocks.push((blocking.full_blocks * 4 * blocking.vectors, 4 * blocking.tail_vectors));
    }
    for group in 0..groups {
        for &(first, lanes) in &blocks {
            let rows: Vec<Option<&[f32]>> = (first..first + lanes)
                .map(|oc| (oc < out_per_group).then(|| &weight[(group * out_per_group + oc) * k..][..k]))
                .collect();
            for kk in 0..k {
                for row in &rows {
                    packed.extend_from_slice(&row.map_or(0.0, |r| r[kk]).to_le_bytes());
                }
            }
        }
    }
    packed.extend(channel_region(bias, groups, out_per_group, blocking));
    debug_assert_eq!(packed.len(), packed.capacity());
    packed
}

/// One value per output channel laid out as `pack` lays out the bias (blocks of
/// `4 * vectors` lanes per group, the lanes past a group's channels 0), little-endian.
pub(super) fn channel_region(
    values: Option<&[f32]>,
    groups: usize,
    out_per_group: usize,
    blocking: Blocking,
) -> Vec<u8> {
    let mut blocks: Vec<(usize, usize)> =
        (0..blocking.full_blocks).map(|b| (b * 4 * blocking.vectors, 4 * blocking.vectors)).collect();
    if blocking.tail_vectors > 0 {
        blocks.push((blocking.full_blocks * 4 * blocking.vectors, 4 * blocking.tail_vectors));
    }
    let mut region = Vec::with_capacity(4 * groups * blocking.group_lanes());
    for group in 0..groups {
        for &(first, lanes) in &blocks {
            for oc in first..first + lanes {
                let value = match values {
                    Some(b) if oc < out_per_group => b[group * out_per_group + oc],
                    _ => 0.0,
                };
                region.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    region
}

/// Copies `count` floats of a conv's or linear layer's input from `src` to `dst` as the
/// layer reads them: as they are (f32), rounded to bf16, or as the integer offsets
/// `q_x - zp` of int8 (`Int8Input::offset`: a division, rounding half to even, the zero
/// point added, a clamp to [0, 255] that keeps NaN, the zero point taken off).
pub(super) fn copy_operand(kb: &mut Kb, precision: Precision, src: Value, dst: Value, count: usize) {
    match precision {
        Precision::F32 => kb.copy_floats(src, dst, count),
        Precision::Bf16 => kb.copy_floats_bf16(src, dst, count),
        Precision::Int8(input) => {
            kb.map_floats(count, &[src], dst, |kb, ty, values| int8::offset(kb, input, ty, values[0]))
        }
    }
}

/// The packed data of a conv or linear kernel: the weights and the bias as `pack` lays
/// them out, at the layer's precision. An int8 layer packs its weights' integers and a
/// zero bias (its accumulators start at 0 and sum integers), then the per-channel
/// factors `m[c]` and the real bias in two more regions laid out as the bias
/// ([`Block::requant`]).
fn pack_operands(
    weight: &[f32],
    bias: Option<&[f32]>,
    groups: usize,
    k: usize,
    blocking: Blocking,
    precision: Precision,
) -> Vec<u8> {
    let out_channels = weight.len() / k.max(1);
    let (weight, weight_scales) = operand_weights(weight, precision, out_channels);
    match precision {
        Precision::Int8(input) => {
            let integers = weight;
            let mut data = pack(&integers, None, groups, k, blocking);
            let scales = crate::precision::output_scales(input, weight_scales.as_deref().unwrap_or_default());
            let out_per_group = out_channels / groups;
            data.extend(channel_region(Some(&scales), groups, out_per_group, blocking));
            data.extend(channel_region(bias, groups, out_per_group, blocking));
            data
        }
        _ => pack(&weight, bias, groups, k, blocking),
    }
}

/// The reduction of one output value: `count` steps (input channels, or features), each
/// `taps` multiply-adds (the kernel window), the input advancing `in_step` bytes per step.
struct Reduction {
    count: usize,
    in_step: i64,
    /// Byte offset of each tap in the input, relative to the pixel's window origin.
    taps: Vec<i64>,
    /// What a step reads: one f32 input channel, or a pair of them (int8 for the integer
    /// tiles, bf16 for the `vdpbf16ps` tiles), whose tiles then run every tile.
    operands: Operands,
}

/// Where a tile's pixels are: pixel `p` reads the input from `in_base + p * in_stride`
/// and writes the output at `out_offset + p * out_stride` (bytes, within one channel).
struct Tile {
    pixels: usize,
    in_base: Value,
    in_stride: i64,
    out_offset: Value,
    out_stride: i64,
}

/// One block of output channels: its weights and bias, and where its first channel goes.
struct Block {
    vectors: usize,
    channels: usize,
    weights: Value,
    bias: Value,
    out: Value,
    residual: Option<Value>,
    /// int8: the bytes from `bias` to the block's factors `m[c]`, the real bias twice as
    /// far ([`pack_operands`]); the store computes `acc * m[c] + bias[c]` before the
    /// epilogue.
    requant: Option<i64>,
}

/// Where one group's blocks read and write: the packed weights and bias, the output
/// (and residual) of its first channel, and the bytes from one output channel to the
/// next.
struct BlockBases {
    weights: Value,
    bias: Value,
    out: Value,
    residual: Option<Value>,
    channel_bytes: i64,
    requant: Option<i64>,
}

impl Blocking {
    /// The full block `index` (a run-time value) of a reduction of `k`.
    fn full_block(&self, kb: &mut Kb, bases: &BlockBases, k: usize, index: Value) -> Block {
        let lanes = 4 * self.vectors;
        Block {
            vectors: self.vectors,
            channels: lanes,
            weights: kb.index(bases.weights, index, (k * lanes * 4) as i64),
            bias: kb.index(bases.bias, index, (lanes * 4) as i64),
            out: kb.index(bases.out, index, lanes as i64 * bases.channel_bytes),
            residual: bases.residual.map(|r| kb.index(r, index, lanes as i64 * bases.channel_bytes)),
            requant: bases.requant,
        }
    }

    /// The partial block after the full ones.
    fn tail_block(&self, kb: &mut Kb, bases: &BlockBases, k: usize) -> Block {
        let first = self.full_blocks * 4 * self.vectors;
        Block {
            vectors: self.tail_vectors,
            channels: self.tail_channels,
            weights: kb.offset(bases.weights, (first * k * 4) as i64),
            bias: kb.offset(bases.bias, first as i64 * 4),
            out: kb.offset(bases.out, first as i64 * bases.channel_bytes),
            residual: bases.residual.map(|r| kb.offset(r, first as i64 * bases.channel_bytes)),
            requant: bases.requant,
        }
    }
}

/// The micro-kernel: `pixels x vectors` accumulators over the reduction, then the
/// epilogue and the stores.
///
/// `in_registers`: the micro-kernel applies `epilogue`'s activation (its whole epilogue)
/// itself, see [`ConvKernel::register_activation`].
fn emit_tile(
    kb: &mut Kb,
    reduction: &Reduction,
    tile: &Tile,
    block: &Block,
    oc_stride: i64,
    epilogue: &Epilogue,
    in_registers: Option<RegisterActivation>,
) {
    let spec = kb.simd.map(|simd| tile_spec(simd, reduction, tile.pixels, tile.in_stride, block.vectors, in_registers));
    let int8 = reduction.operands.integers();
    let ukernel = spec.map(|spec| if int8 { Ukernel::Int8Tile(spec) } else { Ukernel::Tile(spec) });
    let func = ukernel.and_then(|ukernel| kb.tile_kernel(&ukernel));
    // The pairs (or quads) are only laid out for kernels whose tiles all fit
    // (`with_int8_tiles`, `ConvKernel::bf16`, `LinearKernel::bf16`).
    assert!(func.is_some() || reduction.operands == Operands::Floats, "internal error: a pair tile was not defined");
    if let Some(func) = func {
        // The machine-code micro-kernel leaves the tile pixel-major in a stack buffer.
        let buffer = kb.tile_buffer();
        kb.fb.ins().call(func, &[tile.in_base, block.weights, block.bias, buffer]);
        match in_registers {
            // The activation was the whole epilogue (`with_register_activation`).
            Some(_) => store_buffered_tile(kb, buffer, tile, block, oc_stride, &Epilogue::default()),
            None => store_buffered_tile(kb, buffer, tile, block, oc_stride, epilogue),
        }
        return;
    }
    // Without its micro-kernel (a tile that does not fit) the f32x4 code below applies
    // the whole epilogue.
    let style = kb.micro_kernel;
    let lanes = 4 * block.vectors as i64;
    let taps = reduction.taps.len();
    // Accumulators start at the bias.
    let mut accumulators = Vec::with_capacity(tile.pixels * block.vectors);
    for _ in 0..tile.pixels {
        for v in 0..block.vectors {
            let bias = kb.load_weight(F32X4, block.bias, 16 * v as i64);
            let var = kb.fb.declare_var(F32X4);
            kb.fb.def_var(var, bias);
            accumulators.push(var);
        }
    }
    let in_var = kb.fb.declare_var(kb.ptr);
    kb.fb.def_var(in_var, tile.in_base);
    let w_var = kb.fb.declare_var(kb.ptr);
    kb.fb.def_var(w_var, block.weights);

    // One reduction step `u` steps past the current pointers.
    let step = |kb: &mut Kb, u: usize| {
        let input = kb.fb.use_var(in_var);
        let weights = kb.fb.use_var(w_var);
        let mut acc: Vec<Value> = accumulators.iter().map(|&a| kb.fb.use_var(a)).collect();
        for (t, &tap) in reduction.taps.iter().enumerate() {
            let w_offset = ((u * taps + t) as i64 * lanes) * 4;
            let w: Vec<Value> = if style == MicroKernel::WeightOperands {
                Vec::new()
            } else {
                (0..block.vectors).map(|v| kb.load_weight(F32X4, weights, w_offset + 16 * v as i64)).collect()
            };
            for p in 0..tile.pixels {
                let offset = u as i64 * reduction.in_step + tap + p as i64 * tile.in_stride;
                let shared = if style == MicroKernel::SplatPerFma {
                    None
                } else {
                    let x = kb.load(F32, input, offset);
                    Some(kb.fb.ins().splat(F32X4, x))
                };
                for v in 0..block.vectors {
                    // Cranelift ties an FMA's result to its first factor, so a factor
                    // that is loaded right there (and so used once) saves a register copy.
                    let x = match shared {
                        Some(x) => x,
                        None => {
                            let x = kb.load(F32, input, offset);
                            kb.fb.ins().splat(F32X4, x)
                        }
                    };
                    let weight = if style == MicroKernel::WeightOperands {
                        kb.load_weight(F32X4, weights, w_offset + 16 * v as i64)
                    } else {
                        w[v]
                    };
                    let a = &mut acc[p * block.vectors + v];
                    *a = kb.mul_add(x, weight, *a);
                }
            }
        }
        for (&var, &value) in accumulators.iter().zip(&acc) {
            kb.fb.def_var(var, value);
        }
    };
    let advance = |kb: &mut Kb, steps: usize| {
        let input = kb.fb.use_var(in_var);
        let input = kb.offset(input, steps as i64 * reduction.in_step);
        kb.fb.def_var(in_var, input);
        let weights = kb.fb.use_var(w_var);
        let weights = kb.offset(weights, steps as i64 * taps as i64 * lanes * 4);
        kb.fb.def_var(w_var, weights);
    };

    // Unrolled so that a loop iteration does at least 4 taps.
    let unroll = 4usize.div_ceil(taps).clamp(1, reduction.count.max(1));
    kb.for_range(reduction.count / unroll, |kb, _| {
        for u in 0..unroll {
            step(kb, u);
        }
        advance(kb, unroll);
    });
    for u in 0..reduction.count % unroll {
        step(kb, u);
    }

    let acc: Vec<Value> = accumulators.iter().map(|&a| kb.fb.use_var(a)).collect();
    store_tile(kb, &acc, tile, block, oc_stride, epilogue);
}

/// The machine-code micro-kernel of a tile (`vectors` in f32x4 units).
fn tile_spec(
    simd: Simd,
    reduction: &Reduction,
    pixels: usize,
    pixel_stride: i64,
    vectors: usize,
    activation: Option<RegisterActivation>,
) -> TileSpec {
    TileSpec {
        simd,
        pixels,
        vectors: vectors / (simd.lanes() / 4),
        pixel_stride,
        steps: reduction.count,
        in_step: reduction.in_step,
        taps: reduction.taps.clone(),
        bf16: reduction.operands == Operands::Bf16Pairs,
        activation,
    }
}

/// Stores a tile the micro-kernel left pixel-major in `buffer`: groups of 4 pixels
/// through [`store_tile`]'s transposes, a last group of fewer straight from the buffer.
fn store_buffered_tile(kb: &mut Kb, buffer: Value, tile: &Tile, block: &Block, oc_stride: i64, epilogue: &Epilogue) {
    let lanes = 4 * block.vectors;
    for first in (0..tile.pixels).step_by(4) {
        let pixels = (tile.pixels - first).min(4);
        let out_offset = kb.fb.ins().iadd_imm_s(tile.out_offset, first as i64 * tile.out_stride);
        if pixels == 4 || oc_stride == 4 {
            let acc: Vec<Value> = (0..pixels * block.vectors)
                .map(|i| kb.load(F32X4, buffer, 16 * (first * block.vectors + i) as i64))
                .collect();
            let sub = Tile {
                pixels,
                in_base: tile.in_base,
                in_stride: tile.in_stride,
                out_offset,
                out_stride: tile.out_stride,
            };
            store_tile(kb, &acc, &sub, block, oc_stride, epilogue);
            continue;
        }
        let out = kb.fb.ins().iadd(block.out, out_offset);
        let residual = block.residual.map(|r| kb.fb.ins().iadd(r, out_offset));
        for p in 0..pixels {
            for channel in 0..block.channels {
                let x = kb.load(F32, buffer, 4 * ((first + p) * lanes + channel) as i64);
                let x = requantize(kb, block, x, 4 * channel as i64);
                let offset = channel as i64 * oc_stride + p as i64 * tile.out_stride;
                let x = kb.epilogue(epilogue, x, residual.map(|r| (r, offset)));
                kb.store(x, out, offset);
            }
        }
    }
}

/// Applies the epilogue to a tile's accumulators and stores them.
fn store_tile(kb: &mut Kb, acc: &[Value], tile: &Tile, block: &Block, oc_stride: i64, epilogue: &Epilogue) {
    let vectors = block.vectors;
    let out = kb.fb.ins().iadd(block.out, tile.out_offset);
    let residual = block.residual.map(|r| kb.fb.ins().iadd(r, tile.out_offset));
    if oc_stride == 4 {
        // Channels are contiguous in the output (linear): one vector per pixel and block.
        for p in 0..tile.pixels {
            for v in 0..vectors {
                let offset = p as i64 * tile.out_stride + 16 * v as i64;
                let valid = block.channels.saturating_sub(4 * v).min(4);
                let value = requantize(kb, block, acc[p * vectors + v], 16 * v as i64);
                if valid == 4 {
                    let value = kb.epilogue(epilogue, value, residual.map(|r| (r, offset)));
                    kb.store(value, out, offset);
                } else {
                    for lane in 0..valid {
                        let x = kb.fb.ins().extractlane(value, lane as u8);
                        let lane_offset = offset + 4 * lane as i64;
                        let x = kb.epilogue(epilogue, x, residual.map(|r| (r, lane_offset)));
                        kb.store(x, out, lane_offset);
                    }
                }
            }
        }
    } else if tile.pixels == 4 && tile.out_stride == 4 {
        // Four consecutive pixels: transpose each 4x4 (pixel x channel) block so that a
        // vector holds one channel's four pixels.
        for v in 0..vectors {
            let rows = [acc[v], acc[vectors + v], acc[2 * vectors + v], acc[3 * vectors + v]];
            let columns = transpose4(kb, rows);
            for (lane, &column) in columns.iter().enumerate() {
                let channel = 4 * v + lane;
                if channel >= block.channels {
                    break;
                }
                let offset = channel as i64 * oc_stride;
                let column = requantize_pixels(kb, block, column, channel);
                let value = kb.epilogue(epilogue, column, residual.map(|r| (r, offset)));
                kb.store(value, out, offset);
            }
        }
    } else {
        for p in 0..tile.pixels {
            for channel in 0..block.channels {
                let (v, lane) = (channel / 4, channel % 4);
                let x = kb.fb.ins().extractlane(acc[p * vectors + v], lane as u8);
                let x = requantize(kb, block, x, 4 * channel as i64);
                let offset = channel as i64 * oc_stride + p as i64 * tile.out_stride;
                let x = kb.epilogue(epilogue, x, residual.map(|r| (r, offset)));
                kb.store(x, out, offset);
            }
        }
    }
}

/// int8 (`block.requant`): `f32(acc * m[c]) + bias[c]` for the accumulator `x`, an
/// F32 (one channel) or an F32X4 (four channels) whose factors start `offset` bytes into
/// the block's regions. A multiply and an add, each rounded, as the interpreter computes
/// it. Other precisions: `x` as it is.
fn requantize(kb: &mut Kb, block: &Block, x: Value, offset: i64) -> Value {
    let Some(requant) = block.requant else { return x };
    let ty = kb.fb.func.dfg.value_type(x);
    let scale = kb.load_weight(ty, block.bias, requant + offset);
    let shift = kb.load_weight(ty, block.bias, 2 * requant + offset);
    let product = kb.fb.ins().fmul(x, scale);
    kb.fb.ins().fadd(product, shift)
}

/// [`requantize`] for an F32X4 holding one channel's four pixels: the channel's factor
/// and bias splatted.
fn requantize_pixels(kb: &mut Kb, block: &Block, x: Value, channel: usize) -> Value {
    let Some(requant) = block.requant else { return x };
    let offset = 4 * channel as i64;
    let scale = kb.load_weight(F32, block.bias, requant + offset);
    let shift = kb.load_weight(F32, block.bias, 2 * requant + offset);
    let scale = kb.fb.ins().splat(F32X4, scale);
    let shift = kb.fb.ins().splat(F32X4, shift);
    let product = kb.fb.ins().fmul(x, scale);
    kb.fb.ins().fadd(product, shift)
}

/// Transposes four f32x4 rows into four columns with the unpack shuffles (`unpcklps`,
/// `unpckhps`, `punpcklqdq`, `punpckhqdq` on x86-64, `zip1`/`zip2` on AArch64).
fn transpose4(kb: &mut Kb, rows: [Value; 4]) -> [Value; 4] {
    // Byte masks over the 32 bytes of (a, b).
    const LO32: [u8; 16] = [0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23];
    const HI32: [u8; 16] = [8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31];
    const LO64: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
    const HI64: [u8; 16] = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];
    let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let bytes: Vec<Value> = rows.iter().map(|&r| kb.fb.ins().bitcast(types::I8X16, little, r)).collect();
    let shuffle = |kb: &mut Kb, a: Value, b: Value, mask: &[u8; 16]| {
        let mask = kb.fb.func.dfg.immediates.push(mask.to_vec().into());
        kb.fb.ins().shuffle(a, b, mask)
    };
    let t0 = shuffle(kb, bytes[0], bytes[1], &LO32);
    let t1 = shuffle(kb, bytes[2], bytes[3], &LO32);
    let t2 = shuffle(kb, bytes[0], bytes[1], &HI32);
    let t3 = shuffle(kb, bytes[2], bytes[3], &HI32);
    let columns = [
        shuffle(kb, t0, t1, &LO64),
        shuffle(kb, t0, t1, &HI64),
        shuffle(kb, t2, t3, &LO64),
        shuffle(kb, t2, t3, &HI64),
    ];
    columns.map(|c| kb.fb.ins().bitcast(F32X4, little, c))
}

/// The shapes of a convolution, batch included.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// The weights a conv or linear kernel packs (`crate::precision`): as given in f32,
/// rounded to bf16 for a bf16 layer, their integers for an int8 layer (with the
/// per-channel scales `s_w`; `out_channels` rows of weights).
pub(super) fn operand_weights(
    weight: &[f32],
    precision: Precision,
    out_channels: usize,
) -> (std::borrow::Cow<'_, [f32]>, Option<Vec<f32>>) {
    use std::borrow::Cow;
    match precision {
        Precision::F32 => (Cow::Borrowed(weight), None),
        Precision::Bf16 => (Cow::Owned(weight.iter().map(|&w| crate::precision::round_bf16(w)).collect()), None),
        Precision::Int8(_) => {
            let (integers, scales) = crate::precision::quantize_weights(weight, out_channels);
            (Cow::Owned(integers), Some(scales))
        }
    }
}

/// A convolution ready to emit: its packed weights and the geometry.
pub(crate) struct ConvKernel {
    conv: Conv,
    shape: ConvShape,
    blocking: Blocking,
    /// Pixels per tile (4 for the f32x4 code; up to 8 for the machine-code tiles).
    tile_width: usize,
    /// The machine-code tiles' vectors, if they run this kernel.
    simd: Option<Simd>,
    /// Where the bias starts in the packed data, in floats.
    bias_start: usize,
    /// The layer's precision (`crate::precision`). bf16: the weights packed rounded to
    /// bf16, and the input rounded to bf16 as it is copied into the scratch buffer
    /// (always copied then, padded or not). int8: the weights' integers packed, the
    /// input's integer offsets `q_x - zp` written into the scratch buffer, the rescaling
    /// applied at the store ([`pack_operands`]). Either way the f32 tiles then compute
    /// what the interpreter's simulation computes.
    precision: Precision,
    /// An activation the machine-code tiles apply in registers (see `TileSpec`), set by
    /// [`ConvKernel::with_register_activation`]: the whole epilogue is then that
    /// activation, and the store applies nothing.
    register_activation: Option<RegisterActivation>,
    /// int8 on the integer tiles ([`ConvKernel::with_int8_tiles`]; AVX2's pairs or the
    /// VNNI quads): the bytes of their packed data (`int8::pack`), which comes first, the
    /// f32 tiles' after it.
    int8_pairs: Option<usize>,
    /// int8 1x1 layers on large planes with VNNI: the pointwise pixel tiles over the quad
    /// planes (`pointwise::PointwiseKernel::int8`, one image), whose packed data then
    /// comes first in place of the integer tiles'; the f32 tiles still run an input with
    /// a NaN.
    pointwise: Option<Box<PointwiseKernel>>,
    /// bf16 on the `vdpbf16ps` tiles ([`ConvKernel::bf16`]): the data is the
    /// weights as bf16 pairs, the input is copied as pair planes.
    bf16_pairs: bool,
    /// The packed weights and bias, little-endian f32.
    pub data: Vec<u8>,
}

/// Which operands a convolution's tiles read: f32 (as the layer's precision has them),
/// the pairs of int8 input channels of the integer tiles, or the bf16 pairs of the
/// `vdpbf16ps` tiles (`bf16`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operands {
    Floats,
    Int8Pairs,
    /// The quads of u8 input channels of the AVX-512 VNNI integer tiles (`int8`).
    Int8Quads,
    Bf16Pairs,
}

impl Operands {
    /// Reduction steps over `channels` input channels (or features).
    fn steps(self, channels: usize) -> usize {
        match self {
            Operands::Floats => channels,
            Operands::Int8Pairs | Operands::Bf16Pairs => channels.div_ceil(2),
            Operands::Int8Quads => channels.div_ceil(4),
        }
    }

    /// Whether the integer tiles (`int8`) run these operands.
    fn integers(self) -> bool {
        matches!(self, Operands::Int8Pairs | Operands::Int8Quads)
    }

    /// The operands of the integer tiles of `simd`: quads on AVX-512 (VNNI), pairs on
    /// AVX2.
    fn integer_tiles(simd: Option<Simd>) -> Operands {
        if simd == Some(Simd::Avx512) { Operands::Int8Quads } else { Operands::Int8Pairs }
    }
}

impl ConvKernel {
    /// `vectors` f32x4 vectors per block of output channels, or with `simd`, blocks for
    /// the 16-lane machine-code micro-kernels (see `x86`).
    pub fn new(
        conv: &Conv,
        shape: ConvShape,
        weight: &[f32],
        bias: Option<&[f32]>,
        vectors: usize,
        simd: Option<Simd>,
        precision: Precision,
    ) -> ConvKernel {
        let mut kernel = ConvKernel::unpacked(conv, shape, vectors, simd, precision);
        let k = shape.in_channels / conv.groups * conv.kernel.h * conv.kernel.w;
        kernel.data = pack_operands(weight, bias, conv.groups, k, kernel.blocking, precision);
        kernel.bias_start = conv.groups * kernel.blocking.group_lanes() * k;
        kernel
    }

    /// The kernel's geometry, with no data yet.
    fn unpacked(conv: &Conv, shape: ConvShape, vectors: usize, simd: Option<Simd>, precision: Precision) -> ConvKernel {
        let out_per_group = shape.out_channels / conv.groups;
        // The pixels tiled in one line: the whole plane or a row (see `line_mode`).
        let padded_w = shape.in_w + conv.pad.left + conv.pad.right;
        let line = conv.stride.h == 1 && conv.stride.w == 1 && padded_w == shape.out_w;
        let line_pixels = if line { shape.out_h * shape.out_w } else { shape.out_w };
        let (tile_width, blocking) = match simd {
            Some(simd) => {
                let width = wide_tile_width(line_pixels, simd);
                (width, wide_blocking(out_per_group, width, simd))
            }
            None => (4, Blocking::new(out_per_group, vectors, 1)),
        };
        ConvKernel {
            conv: conv.clone(),
            shape,
            blocking,
            tile_width,
            simd,
            bias_start: 0,
            precision,
            register_activation: None,
            int8_pairs: None,
            pointwise: None,
            bf16_pairs: false,
            data: Vec::new(),
        }
    }

    /// The kernel with `epilogue`'s activation applied by the machine-code tiles (AVX2
    /// or AVX-512), where that is the whole epilogue (no residual or pooling), the layer
    /// is f32, and the activation is sigmoid or silu: the ones whose exp is slow in the
    /// f32x4 epilogue. Otherwise the kernel as it was.
    pub fn with_register_activation(mut self, epilogue: &Epilogue) -> ConvKernel {
        let only_activation = Epilogue { activation: epilogue.activation, ..Epilogue::default() } == *epilogue;
        if let (Some(_), Some(activation), true, Precision::F32) =
            (self.simd, epilogue.activation, only_activation, self.precision)
        {
            self.register_activation = RegisterActivation::of(activation).filter(|f| f.uses_exp());
        }
        self
    }

    /// Whether an int8 convolution runs on the integer tiles (`int8`) of `simd`: one
    /// group; on AVX2 at least 4 input channels. With 3 (an RGB image), a quarter of the
    /// pairs' products are padding and the f32 tiles were faster (ResNet-18's 7x7
    /// `conv1`, one thread: 3.73 ms on the integer tiles, 2.87 on the f32 ones). The
    /// VNNI tiles' four products per lane are still faster with 3 (ResNet-50's `conv1`,
    /// one thread: 6.48 ms on the f32 tiles).
    pub fn int8_tiles_apply(conv: &Conv, in_channels: usize, simd: Simd) -> bool {
        conv.groups == 1 && (in_channels >= 4 || simd == Simd::Avx512)
    }

    /// This int8 kernel (made with the AVX2 tiles, `Simd::Avx2`, or on a host with
    /// AVX512_VNNI the AVX-512 ones, and a layer for which
    /// [`ConvKernel::int8_tiles_apply`]) on the integer tiles, given the same weights
    /// and bias again: pairs of i16 on AVX2, quads of bytes on AVX-512 (`int8`). It
    /// keeps the f32 tiles' data for inputs with a NaN.
    /// `epilogue` is the layer's: with VNNI, a 1x1 layer on a large plane whose epilogue
    /// the pointwise tiles run in registers takes those (`pointwise`).
    pub fn with_int8_tiles(mut self, weight: &[f32], bias: Option<&[f32]>, epilogue: &Epilogue) -> ConvKernel {
        let Precision::Int8(input) = self.precision else {
            panic!("internal error: the integer tiles run int8 layers only");
        };
        let simd = self.simd.filter(|&simd| ConvKernel::int8_tiles_apply(&self.conv, self.shape.in_channels, simd));
        let simd = simd.expect("internal error: the integer tiles do not apply");
        let s = self.shape;
        let packed = if simd == Simd::Avx512 && PointwiseKernel::int8_applies(&self.conv, epilogue, s.out_h * s.out_w) {
            let shape = (1, s.in_channels, s.out_channels, s.out_h * s.out_w);
            let mut pointwise = PointwiseKernel::int8(shape, weight, bias, epilogue, input);
            let data = std::mem::take(&mut pointwise.data);
            self.pointwise = Some(Box::new(pointwise));
            data
        } else {
            let taps = self.conv.kernel.h * self.conv.kernel.w;
            int8::pack(simd, weight, input, bias, s.in_channels, taps, self.blocking)
        };
        let packed_len = packed.len().div_ceil(64) * 64;
        self.int8_pairs = Some(packed_len);
        let mut data = packed;
        data.resize(packed_len, 0);
        data.extend(std::mem::take(&mut self.data));
        self.data = data;
        self
    }

    /// A bf16 convolution on the AVX-512 `vdpbf16ps` tiles (a host with AVX512_BF16):
    /// the weights packed as bf16 pairs of input channels (`bf16::pack_pairs`), the input
    /// copied as pair planes ([`ConvKernel::emit_bf16_copy`]). Every tile of the f32
    /// geometry fits (`wide_blocking`), so no tile falls back to the f32x4 code.
    pub fn bf16(conv: &Conv, shape: ConvShape, weight: &[f32], bias: Option<&[f32]>) -> ConvKernel {
        let mut kernel = ConvKernel::unpacked(conv, shape, 1, Some(Simd::Avx512), Precision::Bf16);
        let taps = conv.kernel.h * conv.kernel.w;
        let in_per_group = shape.in_channels / conv.groups;
        let pairs = bf16::pack_pairs(weight, shape.out_channels, in_per_group, taps);
        let k = Operands::Bf16Pairs.steps(in_per_group) * taps;
        kernel.data = pack(&pairs, bias, conv.groups, k, kernel.blocking);
        kernel.bias_start = conv.groups * kernel.blocking.group_lanes() * k;
        kernel.bf16_pairs = true;
        kernel
    }

    /// The operands the tiles read.
    fn operands(&self) -> Operands {
        if self.bf16_pairs { Operands::Bf16Pairs } else { Operands::Floats }
    }

    fn padded(&self) -> bool {
        !self.conv.pad.is_zero()
    }

    /// Whether the input is copied into the scratch buffer first: padded, rounded or
    /// quantized.
    fn copied(&self) -> bool {
        self.padded() || self.precision != Precision::F32
    }

    /// The padded input's height and width.
    fn padded_hw(&self) -> (usize, usize) {
        let p = self.conv.pad;
        (self.shape.in_h + p.top + p.bottom, self.shape.in_w + p.left + p.right)
    }

    /// Scratch bytes for the padded (or rounded) copy of one batch element's input; with
    /// the integer tiles, then the parts' NaN flags (`int8::any_part_saw_nan`).
    pub fn scratch_bytes(&self) -> usize {
        if !self.copied() {
            return 0;
        }
        match self.int8_pairs {
            Some(_) => self.nan_slots() + 4 * super::super::codegen::MAX_PARTS,
            None => self.float_copy_bytes(),
        }
    }

    /// Bytes of the f32 copy of one batch element's input (the pair planes take fewer).
    fn float_copy_bytes(&self) -> usize {
        let (hp, wp) = self.padded_hw();
        4 * self.shape.in_channels * hp * wp
    }

    /// Where the NaN flags start in the scratch buffer.
    fn nan_slots(&self) -> usize {
        self.float_copy_bytes().div_ceil(64) * 64
    }

    /// The algorithm, for profiles: `tiled` when the machine-code micro-kernels run it.
    pub fn algorithm(&self, tiled: bool) -> String {
        let simd = self.simd.filter(|_| tiled);
        if let (Some(pointwise), Some(_)) = (&self.pointwise, simd) {
            return pointwise.algorithm() + ", f32 tiles for a NaN";
        }
        let c = &self.conv;
        let mut text = format!("direct {}x{}/s{}", c.kernel.h, c.kernel.w, c.stride.h);
        if c.groups > 1 {
            text.push_str(&format!(" g{}", c.groups));
        }
        let s = &self.shape;
        let line = if self.line_mode() { s.out_h * s.out_w } else { s.out_w };
        text = text + ", " + &block_text(self.blocking, self.tile_width.min(line), simd);
        if let (Some(_), Some(_)) = (simd, self.register_activation) {
            text.push_str(", activation in registers");
        }
        match self.precision {
            Precision::F32 => {}
            Precision::Bf16 if self.bf16_pairs && simd.is_some() => text.push_str(", bf16 tiles (vdpbf16ps)"),
            Precision::Bf16 => text.push_str(", bf16 operands"),
            Precision::Int8(_) if self.int8_pairs.is_some() && simd == Some(Simd::Avx512) => {
                text.push_str(", int8 integer tiles (vpdpbusd)")
            }
            Precision::Int8(_) if self.int8_pairs.is_some() && simd.is_some() => {
                text.push_str(", int8 integer tiles (vpmaddwd)")
            }
            Precision::Int8(_) => text.push_str(", int8 operands (as f32)"),
        }
        text
    }

    fn reduction(&self, operands: Operands) -> Reduction {
        let c = &self.conv;
        let (hp, wp) = self.padded_hw();
        let in_per_group = self.shape.in_channels / c.groups;
        Reduction {
            operands,
            count: operands.steps(in_per_group),
            in_step: (hp * wp) as i64 * 4,
            taps: (0..c.kernel.h)
                .flat_map(|kh| (0..c.kernel.w).map(move |kw| ((kh * c.dilation.h * wp + kw * c.dilation.w) * 4) as i64))
                .collect(),
        }
    }

    /// The micro-kernels the tiles of this convolution can use.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let s = &self.shape;
        let (pixels, pixel_stride) = if self.line_mode() {
            ((s.out_h * s.out_w).min(self.tile_width), 4)
        } else {
            (s.out_w.min(self.tile_width), (self.conv.stride.w * 4) as i64)
        };
        let Some(simd) = self.simd else { return Vec::new() };
        let reduction = self.reduction(self.operands());
        let kinds = self.blocking.kinds().into_iter();
        let mut specs: Vec<Ukernel> = kinds
            .clone()
            .map(|v| Ukernel::Tile(tile_spec(simd, &reduction, pixels, pixel_stride, v, self.register_activation)))
            .collect();
        if let Some(pointwise) = &self.pointwise {
            specs.extend(pointwise.tile_specs());
        } else if self.int8_pairs.is_some() {
            let reduction = self.reduction(Operands::integer_tiles(self.simd));
            specs.extend(kinds.map(|v| Ukernel::Int8Tile(tile_spec(simd, &reduction, pixels, pixel_stride, v, None))));
        }
        if let (Some(_), Operands::Int8Quads, Precision::Int8(input)) =
            (self.int8_pairs, Operands::integer_tiles(self.simd), self.precision)
        {
            specs.push(Ukernel::Int8Quads(int8::QuadSpec::new(input, self.copied_run())));
        }
        if self.bf16_pairs {
            let odd = (self.shape.in_channels / self.conv.groups) % 2 == 1;
            specs.extend(bf16::row_specs(self.copied_run(), odd));
        }
        specs
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>, scratch: Loc, epilogue: &Epilogue) {
        let s = &self.shape;
        let in_image = (s.in_channels * s.in_h * s.in_w) as i64 * 4;
        let x_base = kb.addr(x);
        let outputs = Outputs { out: kb.addr(out), residual: residual.map(|r| kb.addr(r)), epilogue };
        let scratch_base = kb.addr(scratch);
        let data = kb.data();
        kb.for_range(s.batch, |kb, n| {
            let x_n = kb.index(x_base, n, in_image);
            if let Some(pairs_bytes) = self.int8_pairs {
                let slots = kb.offset(scratch_base, self.nan_slots() as i64);
                let nan = self.emit_integer_copy(kb, x_n, scratch_base, slots);
                let floats = kb.offset(data, pairs_bytes as i64);
                kb.when_else(
                    nan,
                    |kb| {
                        // A NaN in this input: the f32 tiles, which keep it.
                        self.emit_pad_copy(kb, x_n, scratch_base);
                        kb.sync();
                        self.emit_groups(kb, Operands::Floats, floats, scratch_base, n, &outputs);
                    },
                    |kb| match &self.pointwise {
                        Some(pointwise) => {
                            let out_image = (s.out_channels * s.out_h * s.out_w) as i64 * 4;
                            let out_n = kb.index(outputs.out, n, out_image);
                            let res_n = outputs.residual.map(|r| kb.index(r, n, out_image));
                            pointwise.emit_planes(kb, scratch_base, out_n, res_n, None);
                        }
                        None => {
                            self.emit_groups(kb, Operands::integer_tiles(self.simd), data, scratch_base, n, &outputs)
                        }
                    },
                );
            } else if self.bf16_pairs {
                self.emit_bf16_copy(kb, x_n, scratch_base);
                kb.sync();
                self.emit_groups(kb, Operands::Bf16Pairs, data, scratch_base, n, &outputs);
            } else {
                let input = if self.copied() {
                    self.emit_pad_copy(kb, x_n, scratch_base);
                    kb.sync();
                    scratch_base
                } else {
                    x_n
                };
                self.emit_groups(kb, Operands::Floats, data, input, n, &outputs);
            }
            if self.copied() && s.batch > 1 {
                // The next batch element's padded copy overwrites the scratch buffer.
                kb.sync();
            }
        });
    }

    /// Runs every group of batch element `n` over `input` (its copy or the tensor itself),
    /// with the tiles of `operands` and their packed data at `data`.
    fn emit_groups(&self, kb: &mut Kb, operands: Operands, data: Value, input: Value, n: Value, outputs: &Outputs) {
        let s = &self.shape;
        let c = &self.conv;
        let (hp, wp) = self.padded_hw();
        let out_per_group = s.out_channels / c.groups;
        let out_plane = (s.out_h * s.out_w) as i64 * 4;
        let reduction = self.reduction(operands);
        // Packed columns per output channel: input channels (or pairs) times taps.
        let k = reduction.count * reduction.taps.len();
        let bias_start = if operands.integers() { c.groups * self.blocking.group_lanes() * k } else { self.bias_start };
        let group_lanes = self.blocking.group_lanes();
        let (out_base, residual_base, epilogue) = (outputs.out, outputs.residual, outputs.epilogue);
        kb.for_range(c.groups, |kb, g| {
            // A group's planes (or pair planes) follow the previous group's.
            let in_g = kb.index(input, g, (reduction.count * hp * wp) as i64 * 4);
            // Output channel index of the group's first channel, over the batch.
            let out_channel = kb.fb.ins().imul_imm_s(n, s.out_channels as i64);
            let group_channel = kb.fb.ins().imul_imm_s(g, out_per_group as i64);
            let out_channel = kb.fb.ins().iadd(out_channel, group_channel);
            let out_g = kb.index(out_base, out_channel, out_plane);
            let res_g = residual_base.map(|r| kb.index(r, out_channel, out_plane));
            let bias_data = kb.offset(data, bias_start as i64 * 4);
            let bases = BlockBases {
                weights: kb.index(data, g, (group_lanes * k * 4) as i64),
                bias: kb.index(bias_data, g, (group_lanes * 4) as i64),
                out: out_g,
                residual: res_g,
                channel_bytes: out_plane,
                requant: self.precision.is_int8().then_some((c.groups * group_lanes * 4) as i64),
            };
            let (chunks, chunk_size) = self.chunking();
            if chunks > 1 {
                // The parts share the chunks of pixels, each running every block.
                kb.for_share(chunks, |kb, chunk_index| {
                    let chunk = Chunk { index: chunk_index, size: chunk_size };
                    kb.for_range(self.blocking.full_blocks, |kb, ob| {
                        let block = self.blocking.full_block(kb, &bases, k, ob);
                        self.emit_pixels(kb, &reduction, in_g, &block, chunk, epilogue);
                    });
                    if self.blocking.tail_vectors > 0 {
                        let block = self.blocking.tail_block(kb, &bases, k);
                        self.emit_pixels(kb, &reduction, in_g, &block, chunk, epilogue);
                    }
                });
            } else {
                // One pass over the weights: the parts share the blocks of output
                // channels, each cut into `pieces` runs of pixels so that the share
                // stays even when the blocks are few (two parts over 2 blocks and a
                // tail once got 48 and 80 channels). A part reads a block's weights
                // once, a block split between two parts is read by both.
                let (pieces, size) = block_pieces(chunk_size);
                kb.for_share(self.blocking.full_blocks * pieces, |kb, i| {
                    let ob = kb.fb.ins().udiv_imm_u(i, pieces as i64);
                    let piece = kb.fb.ins().urem_imm_u(i, pieces as i64);
                    let block = self.blocking.full_block(kb, &bases, k, ob);
                    self.emit_pixels(kb, &reduction, in_g, &block, Chunk { index: piece, size }, epilogue);
                });
                if self.blocking.tail_vectors > 0 {
                    kb.for_share(pieces, |kb, piece| {
                        let block = self.blocking.tail_block(kb, &bases, k);
                        self.emit_pixels(kb, &reduction, in_g, &block, Chunk { index: piece, size }, epilogue);
                    });
                }
            }
        });
    }

    /// Whether the plane is tiled as one line of pixels (each output pixel's window
    /// starts at the input offset of the same index) rather than row by row.
    fn line_mode(&self) -> bool {
        let (_, wp) = self.padded_hw();
        self.conv.stride.h == 1 && self.conv.stride.w == 1 && wp == self.shape.out_w
    }

    /// How a group's pixels are split into chunks, each run through every block of
    /// output channels before the next: `(chunks, tiles or rows per chunk)`.
    ///
    /// Blocks outer (one chunk) rereads the group's input once per block; chunks outer
    /// rereads the group's weights once per chunk. Chunks of about 64 KiB of input keep
    /// it in the L1/L2 caches while all the blocks pass over it; they are used when the
    /// weights are small enough (512 KiB) to stay in L2 across chunks and the input
    /// would not (over 256 KiB).
    fn chunking(&self) -> (usize, usize) {
        let s = &self.shape;
        let c = &self.conv;
        let (hp, wp) = self.padded_hw();
        let in_per_group = s.in_channels / c.groups;
        let k = in_per_group * c.kernel.h * c.kernel.w;
        let weight_bytes = 4 * k * self.blocking.group_lanes();
        let input_bytes = 4 * in_per_group * hp * wp;
        let pixels = s.out_h * s.out_w;
        let (units, unit_bytes) = if self.line_mode() {
            if pixels < self.tile_width {
                return (1, 1);
            }
            (pixels.div_ceil(self.tile_width), 4 * self.tile_width * in_per_group)
        } else {
            (s.out_h, 4 * in_per_group * c.stride.h * wp)
        };
        if weight_bytes > 512 << 10 {
            // One pass over the weights, block by block (threads share the blocks): every
            // chunk would fetch all of them again from beyond the L2 cache.
            return (1, units);
        }
        let chunks = if input_bytes <= 256 << 10 { 1 } else { units.div_ceil(((64 << 10) / unit_bytes.max(1)).max(1)) };
        // At least MIN_CHUNKS chunks (when there are that many units), so that threads
        // can share the plane.
        let chunks = chunks.max(units.min(MIN_CHUNKS));
        let size = units.div_ceil(chunks);
        (units.div_ceil(size), size)
    }

    /// The values [`Self::emit_plane`] converts in one run: a row of a padded plane, or a
    /// whole plane.
    fn copied_run(&self) -> usize {
        let s = &self.shape;
        if self.padded() { s.in_w } else { s.in_h * s.in_w }
    }

    /// Writes one plane of the copy at `dst_plane` (padded geometry, 32-bit words) from
    /// the input planes `srcs`: without padding the whole plane in one `convert` call,
    /// else `border` over the whole padded plane (`border(kb, dst, words)`) and then
    /// `convert(kb, rows, dst, pixels)` row by row into its interior.
    fn emit_plane<const N: usize>(
        &self,
        kb: &mut Kb,
        srcs: [Value; N],
        dst_plane: Value,
        border: impl Fn(&mut Kb, Value, usize),
        convert: impl Fn(&mut Kb, [Value; N], Value, usize),
    ) {
        let s = &self.shape;
        let p = self.conv.pad;
        let (hp, wp) = self.padded_hw();
        if !self.padded() {
            // The plane in one run, not row by row.
            convert(kb, srcs, dst_plane, self.copied_run());
            return;
        }
        border(kb, dst_plane, hp * wp);
        let dst_plane = kb.offset(dst_plane, ((p.top * wp + p.left) * 4) as i64);
        kb.for_range(s.in_h, |kb, row| {
            let rows = srcs.map(|src| kb.index(src, row, (s.in_w * 4) as i64));
            let dst = kb.index(dst_plane, row, (wp * 4) as i64);
            convert(kb, rows, dst, self.copied_run());
        });
    }

    /// Copies one batch element's input into the scratch buffer with zero borders (this
    /// part's share of the channels), rounded to bf16 for a bf16 layer, as the integer
    /// offsets `q_x - zp` for an int8 layer (the zero borders are then the real 0's).
    fn emit_pad_copy(&self, kb: &mut Kb, x_n: Value, scratch: Value) {
        let s = &self.shape;
        let (hp, wp) = self.padded_hw();
        kb.for_share(s.in_channels, |kb, channel| {
            let src_plane = kb.index(x_n, channel, (s.in_h * s.in_w * 4) as i64);
            let dst_plane = kb.index(scratch, channel, (hp * wp * 4) as i64);
            self.emit_plane(
                kb,
                [src_plane],
                dst_plane,
                |kb: &mut Kb, dst, words| kb.zero_floats(dst, words),
                |kb, [src], dst, count| copy_operand(kb, self.precision, src, dst, count),
            );
        });
    }

    /// Copies one batch element's input into the scratch buffer as the `vdpbf16ps` tiles'
    /// pair planes (`bf16`; this part's share of the pairs, zero borders): each group's
    /// channels `2s` and `2s + 1` rounded into pair plane `s` of the group by
    /// `bf16::convert` (a whole plane, or row by row into a padded one), an odd last
    /// channel's partner a zero.
    fn emit_bf16_copy(&self, kb: &mut Kb, x_n: Value, scratch: Value) {
        let s = &self.shape;
        let (hp, wp) = self.padded_hw();
        let in_per_group = s.in_channels / self.conv.groups;
        let pairs = Operands::Bf16Pairs.steps(in_per_group);
        let plane = (s.in_h * s.in_w * 4) as i64;
        let odd = in_per_group % 2 == 1;
        kb.for_share(self.conv.groups * pairs, |kb, i| {
            let (pair, channel) = bf16::pair_channel(kb, i, pairs, in_per_group);
            let low = kb.index(x_n, channel, plane);
            let high = kb.offset(low, plane);
            let dst_plane = kb.index(scratch, i, (hp * wp * 4) as i64);
            self.emit_plane(
                kb,
                [low, high],
                dst_plane,
                |kb: &mut Kb, dst, words| kb.zero_floats(dst, words),
                |kb, [low, high], dst, pixels| bf16::convert(kb, (low, high), dst, pixels, odd, pair, pairs),
            );
        });
    }

    /// Copies one batch element's input into the scratch buffer for the integer tiles
    /// (`int8`; this part's share, borders at the real 0): pair planes on AVX2 or quad
    /// planes with VNNI. Returns whether any part met a NaN (`int8::any_part_saw_nan`,
    /// which waits for every part's copy).
    fn emit_integer_copy(&self, kb: &mut Kb, x_n: Value, scratch: Value, slots: Value) -> Value {
        let Precision::Int8(input) = self.precision else { unreachable!("the integer tiles run int8 layers") };
        let nan = int8::nan_seen(kb);
        match Operands::integer_tiles(self.simd) {
            Operands::Int8Quads => self.emit_quad_planes(kb, input, x_n, scratch, nan),
            _ => self.emit_pair_planes(kb, input, x_n, scratch, nan),
        }
        int8::any_part_saw_nan(kb, nan, slots)
    }

    /// The quad planes of the VNNI tiles: u8 `q_x` of channels `4j` to `4j + 3` per word
    /// (a channel past the last reading the last: its weights are 0), the border the zero
    /// point in every byte.
    fn emit_quad_planes(&self, kb: &mut Kb, input: Int8Input, x_n: Value, scratch: Value, nan: Variable) {
        let s = &self.shape;
        let (hp, wp) = self.padded_hw();
        let plane = (s.in_h * s.in_w * 4) as i64;
        let quads = s.in_channels.div_ceil(4);
        let border = u32::from_le_bytes([input.zero_point(); 4]);
        kb.for_share(quads, |kb, quad| {
            let first = kb.fb.ins().imul_imm_s(quad, 4);
            let last = kb.iconst(s.in_channels as i64 - 1);
            let srcs = [0, 1, 2, 3].map(|i| {
                let channel = kb.fb.ins().iadd_imm_s(first, i);
                let channel = kb.fb.ins().umin(channel, last);
                kb.index(x_n, channel, plane)
            });
            let dst_plane = kb.index(scratch, quad, (hp * wp * 4) as i64);
            let border = |kb: &mut Kb, dst, words| int8::fill_words(kb, dst, words, border);
            self.emit_plane(kb, srcs, dst_plane, border, |kb, srcs, dst, pixels| {
                int8::copy_quads(kb, input, srcs, dst, pixels, nan)
            });
        });
    }

    /// The pair planes of the AVX2 integer tiles: two channels' i16 offsets `q_x - zp`
    /// per word (the odd last channel paired with itself: its partner's weights are 0).
    fn emit_pair_planes(&self, kb: &mut Kb, input: Int8Input, x_n: Value, scratch: Value, nan: Variable) {
        let s = &self.shape;
        let (hp, wp) = self.padded_hw();
        let pairs = s.in_channels.div_ceil(2);
        let plane = (s.in_h * s.in_w * 4) as i64;
        kb.for_share(pairs, |kb, pair| {
            let low = kb.index(x_n, pair, 2 * plane);
            let high = if s.in_channels % 2 == 1 {
                // The odd last channel is paired with itself (its partner's weights are 0).
                let last = kb.fb.ins().icmp_imm_u(IntCC::Equal, pair, pairs as i64 - 1);
                let next = kb.offset(low, plane);
                kb.fb.ins().select(last, low, next)
            } else {
                kb.offset(low, plane)
            };
            let dst_plane = kb.index(scratch, pair, (hp * wp * 4) as i64);
            self.emit_plane(
                kb,
                [low, high],
                dst_plane,
                |kb: &mut Kb, dst, words| kb.zero_floats(dst, words),
                |kb, [low, high], dst, pixels| int8::copy_pairs(kb, input, (low, high), dst, pixels, nan),
            );
        });
    }

    /// Runs a block over a chunk of the group's output pixels, tile by tile.
    fn emit_pixels(&self, kb: &mut Kb, reduction: &Reduction, in_g: Value, block: &Block, chunk: Chunk, ep: &Epilogue) {
        let s = &self.shape;
        let c = &self.conv;
        let (_, wp) = self.padded_hw();
        let oc_stride = (s.out_h * s.out_w) as i64 * 4;
        if self.line_mode() {
            // Output pixel q reads its window at input offset q: tile the plane as a line.
            let total = s.out_h * s.out_w;
            let tile = |kb: &mut Kb, tile: Tile| {
                emit_tile(kb, reduction, &tile, block, oc_stride, ep, self.register_activation)
            };
            let line = Line { count: total, width: self.tile_width, in_stride: 4, out_stride: 4 };
            emit_line(kb, line, in_g, Some(chunk), tile);
        } else {
            kb.for_range(chunk.size, |kb, r| {
                // The chunk's rows; the last chunk may repeat the last row.
                let first = kb.fb.ins().imul_imm_s(chunk.index, chunk.size as i64);
                let row = kb.fb.ins().iadd(first, r);
                let last = kb.iconst(s.out_h as i64 - 1);
                let oh = kb.fb.ins().umin(row, last);
                let in_row = kb.index(in_g, oh, (c.stride.h * wp * 4) as i64);
                let out_row = kb.fb.ins().imul_imm_s(oh, (s.out_w * 4) as i64);
                let col_in = (c.stride.w * 4) as i64;
                let line = Line { count: s.out_w, width: self.tile_width, in_stride: col_in, out_stride: 4 };
                emit_line(kb, line, in_row, None, |kb, mut tile| {
                    tile.out_offset = kb.fb.ins().iadd(tile.out_offset, out_row);
                    emit_tile(kb, reduction, &tile, block, oc_stride, ep, self.register_activation)
                });
            });
        }
    }
}

/// Where a convolution's outputs go: the output (and residual) of the batch's first
/// channel, and the epilogue.
struct Outputs<'e> {
    out: Value,
    residual: Option<Value>,
    epilogue: &'e Epilogue,
}

/// Runs of pixels per block when the parts share the blocks: up to `BLOCK_PIECES` runs
/// of `size` units out of `units`, (pieces, size), none of them empty.
fn block_pieces(units: usize) -> (usize, usize) {
    let size = units.div_ceil(BLOCK_PIECES.min(units).max(1)).max(1);
    (units.div_ceil(size), size)
}

/// A run of units (tiles of a line, or rows) out of a plane: `size` units from unit
/// `index * size`, clamped to the last unit (so the last chunk may redo it).
#[derive(Clone, Copy)]
struct Chunk {
    index: Value,
    size: usize,
}

/// `count` pixels laid out in a line, input `in_stride` and output `out_stride` bytes
/// apart, cut into tiles of `width` pixels.
#[derive(Clone, Copy)]
struct Line {
    count: usize,
    width: usize,
    in_stride: i64,
    out_stride: i64,
}

/// Tiles a line starting at `in_base`, the last tile overlapping its predecessor, or only
/// the tiles of `chunk`; fewer than `width` pixels make one partial tile.
fn emit_line(kb: &mut Kb, line: Line, in_base: Value, chunk: Option<Chunk>, emit: impl Fn(&mut Kb, Tile)) {
    let Line { count, width, in_stride, out_stride } = line;
    if count < width {
        let zero = kb.iconst(0);
        emit(kb, Tile { pixels: count, in_base, in_stride, out_offset: zero, out_stride });
        return;
    }
    let tiles = count.div_ceil(width);
    kb.for_range(chunk.map_or(tiles, |c| c.size), |kb, t| {
        let index = match chunk {
            Some(c) => {
                let first = kb.fb.ins().imul_imm_s(c.index, c.size as i64);
                let index = kb.fb.ins().iadd(first, t);
                let last = kb.iconst(tiles as i64 - 1);
                kb.fb.ins().umin(index, last)
            }
            None => t,
        };
        let first = kb.fb.ins().imul_imm_s(index, width as i64);
        let last_start = kb.iconst((count - width) as i64);
        let first = kb.fb.ins().umin(first, last_start);
        let tile_in = kb.index(in_base, first, in_stride);
        let out_offset = kb.fb.ins().imul_imm_s(first, out_stride);
        emit(kb, Tile { pixels: width, in_base: tile_in, in_stride, out_offset, out_stride });
    });
}

/// How a kernel's tiles run, for profiles.
fn block_text(blocking: Blocking, pixels: usize, simd: Option<Simd>) -> String {
    let lanes = 4 * blocking.vectors;
    let code = simd.map_or("f32x4", Simd::name);
    format!("{code} tiles {pixels} px x {lanes} ch")
}

/// Pixels per machine-code tile for a line of `count` pixels: the whole line up to the
/// most a tile holds, else the width from 4 up that computes the fewest pixels (the last tile of a line
/// overlaps the one before it), the widest of those.
pub(super) fn wide_tile_width(count: usize, simd: Simd) -> usize {
    let most = simd.max_pixels();
    if count <= most {
        return count.max(1);
    }
    (4..=most).min_by_key(|&p| (count.div_ceil(p) * p, std::cmp::Reverse(p))).unwrap_or(4)
}

/// Blocks for the machine-code micro-kernels with tiles of `pixels` pixels: as many full
/// vectors (up to 4) as the registers hold next to the accumulators, fewer when the group
/// has fewer channels.
pub(super) fn wide_blocking(out_per_group: usize, pixels: usize, simd: Simd) -> Blocking {
    let quantum = simd.lanes() / 4;
    let vectors = out_per_group.div_ceil(simd.lanes()).clamp(1, simd.max_vectors(pixels));
    Blocking::new(out_per_group, quantum * vectors, quantum)
}

/// A fully connected layer ready to emit: `[batch, in] -> [batch, out]`.
pub(crate) struct LinearKernel {
    batch: usize,
    /// Batch rows per tile.
    tile_width: usize,
    simd: Option<Simd>,
    in_features: usize,
    out_features: usize,
    blocking: Blocking,
    bias_start: usize,
    /// bf16 or int8: the weights packed rounded or quantized, the input rounded or
    /// quantized into the scratch buffer first (as `ConvKernel::precision`).
    precision: Precision,
    /// int8 on the integer tiles (as `ConvKernel::int8_pairs`).
    int8_pairs: Option<usize>,
    /// bf16 on the `vdpbf16ps` tiles (as `ConvKernel::bf16_pairs`).
    bf16_pairs: bool,
    /// The packed weights and bias, little-endian f32.
    pub data: Vec<u8>,
}

impl LinearKernel {
    pub fn new(
        batch: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        out_features: usize,
        vectors: usize,
        simd: Option<Simd>,
        precision: Precision,
    ) -> LinearKernel {
        let in_features = weight.len() / out_features;
        let mut kernel = LinearKernel::unpacked(batch, in_features, out_features, vectors, simd, precision);
        kernel.data = pack_operands(weight, bias, 1, in_features, kernel.blocking, precision);
        kernel.bias_start = kernel.blocking.group_lanes() * in_features;
        kernel
    }

    /// The layer's geometry, with no data yet.
    fn unpacked(
        batch: usize,
        in_features: usize,
        out_features: usize,
        vectors: usize,
        simd: Option<Simd>,
        precision: Precision,
    ) -> LinearKernel {
        let (tile_width, blocking) = match simd {
            Some(simd) => {
                let width = wide_tile_width(batch, simd);
                (width, wide_blocking(out_features, width, simd))
            }
            None => (4, Blocking::new(out_features, vectors, 1)),
        };
        LinearKernel {
            batch,
            tile_width,
            simd,
            in_features,
            out_features,
            blocking,
            bias_start: 0,
            precision,
            int8_pairs: None,
            bf16_pairs: false,
            data: Vec::new(),
        }
    }

    /// A bf16 layer on the AVX-512 `vdpbf16ps` tiles (a host with AVX512_BF16): the
    /// weights packed as bf16 pairs of features, each row of the input copied as pairs
    /// in order (`bf16::copy_row`).
    pub fn bf16(batch: usize, weight: &[f32], bias: Option<&[f32]>, out_features: usize) -> LinearKernel {
        let in_features = weight.len() / out_features;
        let mut kernel =
            LinearKernel::unpacked(batch, in_features, out_features, 1, Some(Simd::Avx512), Precision::Bf16);
        let pairs = bf16::pack_pairs(weight, out_features, in_features, 1);
        let k = Operands::Bf16Pairs.steps(in_features);
        kernel.data = pack(&pairs, bias, 1, k, kernel.blocking);
        kernel.bias_start = kernel.blocking.group_lanes() * k;
        kernel.bf16_pairs = true;
        kernel
    }

    /// Whether an int8 linear layer runs on the integer tiles (AVX2's, or the VNNI tiles):
    /// 4 input features or more (as convs on AVX2, [`ConvKernel::int8_tiles_apply`]).
    pub fn int8_tiles_apply(in_features: usize) -> bool {
        in_features >= 4
    }

    /// This int8 kernel (made with the AVX2 tiles) on the integer tiles, given the same
    /// weights and bias again; it keeps the f32 tiles' data for inputs with a NaN. Each
    /// row of the input is quantized into scratch as i16 offsets in order (a row of
    /// pairs of features; a zero after an odd last one).
    pub fn with_int8_tiles(mut self, weight: &[f32], bias: Option<&[f32]>) -> LinearKernel {
        let Precision::Int8(input) = self.precision else {
            panic!("internal error: the integer tiles run int8 layers only");
        };
        let simd = self.simd.filter(|_| LinearKernel::int8_tiles_apply(self.in_features));
        let simd = simd.expect("internal error: the integer tiles do not apply");
        let pairs = int8::pack(simd, weight, input, bias, self.in_features, 1, self.blocking);
        self.int8_pairs = Some(pairs.len());
        self.data = [pairs, std::mem::take(&mut self.data)].concat();
        self
    }

    /// Scratch bytes for the rounded or quantized copy of the input; with the integer
    /// tiles, then the parts' NaN flags.
    pub fn scratch_bytes(&self) -> usize {
        match (self.precision, self.int8_pairs) {
            (Precision::F32, _) => 0,
            (_, Some(_)) => self.nan_slots() + 4 * super::super::codegen::MAX_PARTS,
            _ => 4 * self.batch * self.in_features,
        }
    }

    /// Where the NaN flags start in the scratch buffer, after the f32 copy.
    fn nan_slots(&self) -> usize {
        (4 * self.batch * self.in_features).div_ceil(64) * 64
    }

    fn reduction(&self, operands: Operands) -> Reduction {
        Reduction { count: operands.steps(self.in_features), in_step: 4, taps: vec![0], operands }
    }

    /// The algorithm, for profiles: `tiled` when the machine-code micro-kernels run it.
    pub fn algorithm(&self, tiled: bool) -> String {
        let simd = self.simd.filter(|_| tiled);
        let operands = match self.precision {
            Precision::F32 => "",
            Precision::Bf16 if self.bf16_pairs && simd.is_some() => ", bf16 tiles (vdpbf16ps)",
            Precision::Bf16 => ", bf16 operands",
            Precision::Int8(_) if self.int8_pairs.is_some() && simd == Some(Simd::Avx512) => {
                ", int8 integer tiles (vpdpbusd)"
            }
            Precision::Int8(_) if self.int8_pairs.is_some() && simd.is_some() => ", int8 integer tiles (vpmaddwd)",
            Precision::Int8(_) => ", int8 operands (as f32)",
        };
        format!("gemm, {}{operands}", block_text(self.blocking, self.tile_width.min(self.batch), simd))
    }

    /// The micro-kernels the tiles of this layer can use.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let reduction = self.reduction(if self.bf16_pairs { Operands::Bf16Pairs } else { Operands::Floats });
        let (pixels, stride) = (self.batch.min(self.tile_width), (reduction.count * 4) as i64);
        let Some(simd) = self.simd else { return Vec::new() };
        let kinds = self.blocking.kinds().into_iter();
        let mut specs: Vec<Ukernel> =
            kinds.clone().map(|v| Ukernel::Tile(tile_spec(simd, &reduction, pixels, stride, v, None))).collect();
        if self.int8_pairs.is_some() {
            let reduction = self.reduction(Operands::integer_tiles(self.simd));
            let stride = (reduction.count * 4) as i64;
            specs.extend(kinds.map(|v| Ukernel::Int8Tile(tile_spec(simd, &reduction, pixels, stride, v, None))));
        }
        specs
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>, scratch: Loc, epilogue: &Epilogue) {
        let k = self.in_features;
        let x_base = kb.addr(x);
        let scratch_base = kb.addr(scratch);
        let outputs = Outputs { out: kb.addr(out), residual: residual.map(|r| kb.addr(r)), epilogue };
        let data = kb.data();
        let float_copy = |kb: &mut Kb| {
            // The parts round (or quantize) a share of the rows each, then all read all
            // of them.
            kb.for_share(self.batch, |kb, row| {
                let src = kb.index(x_base, row, (k * 4) as i64);
                let dst = kb.index(scratch_base, row, (k * 4) as i64);
                copy_operand(kb, self.precision, src, dst, k);
            });
            kb.sync();
        };
        match (self.precision, self.int8_pairs) {
            (Precision::F32, _) => self.emit_rows(kb, Operands::Floats, data, x_base, &outputs),
            (Precision::Bf16, _) if self.bf16_pairs => {
                // The rows as bf16 pairs, `ceil(k / 2)` words each.
                let row_bytes = (k.div_ceil(2) * 4) as i64;
                kb.for_share(self.batch, |kb, row| {
                    let src = kb.index(x_base, row, (k * 4) as i64);
                    let dst = kb.index(scratch_base, row, row_bytes);
                    bf16::copy_row(kb, src, dst, k);
                });
                kb.sync();
                self.emit_rows(kb, Operands::Bf16Pairs, data, scratch_base, &outputs);
            }
            (Precision::Int8(input), Some(pairs_bytes)) => {
                // The rows as i16 offsets (AVX2) or u8 `q_x` (VNNI), `ceil(k / 2)` or
                // `ceil(k / 4)` words each.
                let operands = Operands::integer_tiles(self.simd);
                let row_bytes = (operands.steps(k) * 4) as i64;
                let nan = int8::nan_seen(kb);
                kb.for_share(self.batch, |kb, row| {
                    let src = kb.index(x_base, row, (k * 4) as i64);
                    let dst = kb.index(scratch_base, row, row_bytes);
                    if operands == Operands::Int8Quads {
                        int8::copy_row_bytes(kb, input, src, dst, k, nan);
                    } else {
                        int8::copy_row(kb, input, src, dst, k, nan);
                    }
                });
                let slots = kb.offset(scratch_base, self.nan_slots() as i64);
                let nan = int8::any_part_saw_nan(kb, nan, slots);
                let floats = kb.offset(data, pairs_bytes as i64);
                kb.when_else(
                    nan,
                    |kb| {
                        // A NaN in the input: the f32 tiles, which keep it.
                        float_copy(kb);
                        self.emit_rows(kb, Operands::Floats, floats, scratch_base, &outputs);
                    },
                    |kb| self.emit_rows(kb, operands, data, scratch_base, &outputs),
                );
            }
            _ => {
                float_copy(kb);
                self.emit_rows(kb, Operands::Floats, data, scratch_base, &outputs);
            }
        }
    }

    /// Runs every block of output features over the rows at `x_base` (the input or its
    /// copy), with the tiles of `operands` and their packed data at `data`.
    fn emit_rows(&self, kb: &mut Kb, operands: Operands, data: Value, x_base: Value, outputs: &Outputs) {
        let reduction = self.reduction(operands);
        let k = reduction.count;
        let bias_start = if operands.integers() { self.blocking.group_lanes() * k } else { self.bias_start };
        // A row per batch element: the features of one output are 4 bytes apart.
        let bases = BlockBases {
            weights: data,
            bias: kb.offset(data, bias_start as i64 * 4),
            out: outputs.out,
            residual: outputs.residual,
            channel_bytes: 4,
            requant: self.precision.is_int8().then_some((self.blocking.group_lanes() * 4) as i64),
        };
        let in_stride = (k * 4) as i64;
        let out_stride = (self.out_features * 4) as i64;
        let epilogue = outputs.epilogue;
        let run = |kb: &mut Kb, block: &Block| {
            let line = Line { count: self.batch, width: self.tile_width, in_stride, out_stride };
            emit_line(kb, line, x_base, None, |kb, tile| emit_tile(kb, &reduction, &tile, block, 4, epilogue, None));
        };
        // The parts share the blocks of output features.
        kb.for_share(self.blocking.full_blocks, |kb, ob| {
            let block = self.blocking.full_block(kb, &bases, k, ob);
            run(kb, &block);
        });
        if self.blocking.tail_vectors > 0 {
            kb.on_last_part(|kb| {
                let block = self.blocking.tail_block(kb, &bases, k);
                run(kb, &block);
            });
        }
    }
}
