//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), on AVX-512: each 2x2
//! block of output pixels (a *tile*) comes from the 4x4 input window around it as
//! `Y = A^T [ sum over input channels of (G g G^T) . (B^T d B) ] A`, 16 multiplies per
//! tile, channel pair and input window instead of the direct method's 36 (2.25 times
//! fewer).
//!
//! The filters are transformed at build time, `U = G g G^T` in f64 rounded once to f32,
//! and packed per element `xi` of the 4x4 tile (`xi = 4 * row + column`) as the
//! pointwise tiles want their weights: blocks of `channels` output channels,
//! `[in_channel][channel]`. Then the bias, then as many zeros.
//!
//! The output is computed in *chunks* of `rows` whole rows of tiles (`T` tiles, `V`
//! and `M` within `CHUNK_BYTES`), one after another; every part of a run takes a share
//! of each step of a chunk, with a barrier after the first two:
//! 1. input transform (the parts share the input channels):
//!    `V[xi][in_channel][tile] = (B^T d B)[xi]`, f32x4 over four tiles of a row: the
//!    vertical sums first (elementwise on input rows), then the even and odd columns
//!    split by shuffles, then the horizontal sums;
//! 2. 16 GEMMs `M[xi] = U[xi] x V[xi]` (the parts share the pairs of element and pixel
//!    tile, or of element and block of output channels: see `emit_gemms`), which are
//!    pointwise convolutions over a "plane" of `T` pixels: the AVX-512 pixel-lane tiles
//!    of `x86::assemble_pointwise` at full width.
//!    The bias rides on `M[5]` (the element at row 1, column 1 of the tile enters all
//!    four outputs with weight 1), the other 15 start from zeros;
//! 3. output transform `A^T M A` (the parts share the output channels), the epilogue,
//!    and the stores into the NCHW output, f32x4 over four tiles (two shuffles
//!    interleave the two columns of a row of tiles) or one tile at a time at the right
//!    edge of an odd width; the second row of the last tile row of an odd height is not
//!    stored.
//!
//! Large chunks matter most: each chunk reads all of `U` (16/9 the size of the weights)
//! once, so sharing a chunk between the parts, rather than giving each part chunks of
//! its own, keeps `V` and `M` single and the chunks as large as they can be.
//!
//! Padding and odd sizes: before its transform, each input channel's rows of the chunk
//! are copied into the part's own small buffer with zero borders that covers every
//! tile's 4x4 window (in the L1 cache when the transform reads it), unless the input
//! already does (no padding and even output sizes).
//!
//! Threads: a tile's arithmetic is the same whichever part or vector lane computes it
//! (the transforms have no FMA and use the same operations in the same order in their
//! f32x4 and f32 forms; a pixel-lane tile does the same multiply-adds in every lane), and
//! the chunks do not depend on the number of parts, so any split gives the bits of one
//! thread. The last chunk starts early enough to stay inside the plane, recomputing rows
//! of the one before it (the same values).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Type, Value, types};

use super::super::codegen::MAX_PARTS;
use super::conv::ConvShape;
use super::pointwise::pack_blocks;
use super::x86::{PointwiseSpec, Ukernel};
use super::{F32, F32X4, Kb, Loc};
use crate::ir::{Conv, Epilogue, Pad};

/// Pixel lanes of a full GEMM tile: four zmm vectors.
const TILE_PIXELS: usize = 64;
/// The most bytes of a chunk's transformed input `V` and products `M` (at least one
/// row of tiles). Larger chunks read the transformed weights fewer times per image.
const CHUNK_BYTES: usize = 8 << 20;
/// The most bytes of a pixel tile's `V` that the GEMMs keep in the L1 cache (48 KiB)
/// while every block of output channels passes over it.
const TILE_L1_BYTES: usize = 32 << 10;

/// The fewest tiles per image for Winograd. Each image reads `U`, 16/9 the size of the
/// weights, at least once: measured on 2 threads, ResNet-18's 7x7 layers (16 tiles, 512
/// channels) ran 15% slower than directly, its 14x14 ones (49 tiles) 30% faster.
const MIN_TILES: usize = 36;

/// `G`, which transforms a 3-tap filter into 4 values.
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// A Winograd convolution ready to emit.
pub(crate) struct WinogradKernel {
    shape: ConvShape,
    pad: Pad,
    tiles_h: usize,
    tiles_w: usize,
    /// Rows of tiles per chunk.
    rows: usize,
    /// Output channels per GEMM block (the pointwise tile's rows).
    channels: usize,
    /// Pixels of a full GEMM tile.
    pixels: usize,
    bias_start: usize,
    zeros_start: usize,
    /// The transformed, packed weights, bias and zeros, little-endian f32.
    pub data: Vec<u8>,
}

/// `G g G^T` of one 3x3 filter, row-major 4x4.
fn transform_filter(g: &[f32]) -> [f64; 16] {
    let mut tmp = [[0.0f64; 3]; 4];
    for i in 0..4 {
        for k in 0..3 {
            tmp[i][k] = (0..3).map(|j| G[i][j] * g[3 * j + k] as f64).sum();
        }
    }
    let mut u = [0.0f64; 16];
    for i in 0..4 {
        for l in 0..4 {
            u[4 * i + l] = (0..3).map(|k| tmp[i][k] * G[l][k]).sum();
        }
    }
    u
}

impl WinogradKernel {
    /// Whether the Winograd kernel runs a convolution: 3x3, stride 1, dilation 1, one
    /// group, with enough channels on both sides that the GEMMs (which grow with
    /// `in * out`) outweigh the transforms (which grow with `in + out`), and enough
    /// tiles per image (`MIN_TILES`) that they outweigh reading the transformed weights.
    pub fn applies(conv: &Conv, shape: &ConvShape) -> bool {
        conv.kernel.h == 3
            && conv.kernel.w == 3
            && conv.stride.h == 1
            && conv.stride.w == 1
            && conv.dilation.h == 1
            && conv.dilation.w == 1
            && conv.groups == 1
            && shape.in_channels >= 32
            && shape.out_channels >= 32
            && shape.out_h.div_ceil(2) * shape.out_w.div_ceil(2) >= MIN_TILES
    }

    /// `weight` is `[out][in][3][3]`.
    pub fn new(conv: &Conv, shape: ConvShape, weight: &[f32], bias: Option<&[f32]>) -> WinogradKernel {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let tiles_h = shape.out_h.div_ceil(2);
        let tiles_w = shape.out_w.div_ceil(2);
        let pixels = TILE_PIXELS;
        let rows = choose_rows(tiles_h, tiles_w, cin + cout, CHUNK_BYTES);
        let tiles = rows * tiles_w;
        // The widest pointwise tile that fits the registers next to `tiles.min(64)` pixels.
        let channels = match tiles.min(pixels).div_ceil(16) {
            4 => 6,
            3 => 8,
            2 => 12,
            _ => 24,
        };
        // `U[xi][out][in]`, then packed per element and block.
        let mut u = vec![0.0f32; 16 * cout * cin];
        for (filter, g) in weight.chunks_exact(9).enumerate() {
            for (xi, value) in transform_filter(g).into_iter().enumerate() {
                u[xi * cout * cin + filter] = value as f32;
            }
        }
        let mut data: Vec<u8> = Vec::with_capacity(4 * (16 * cout * cin + 2 * cout));
        for u_xi in u.chunks_exact(cout * cin) {
            pack_blocks(&mut data, u_xi, cin, channels);
        }
        let bias_start = data.len() / 4;
        for oc in 0..cout {
            data.extend_from_slice(&bias.map_or(0.0, |b| b[oc]).to_le_bytes());
        }
        let zeros_start = data.len() / 4;
        data.resize(data.len() + 4 * cout, 0);
        WinogradKernel { shape, pad: conv.pad, tiles_h, tiles_w, rows, channels, pixels, bias_start, zeros_start, data }
    }

    /// Tiles per chunk.
    fn tiles(&self) -> usize {
        self.rows * self.tiles_w
    }

    fn chunks(&self) -> usize {
        self.tiles_h.div_ceil(self.rows)
    }

    /// Whether the input needs a zero-bordered copy: padding, or an odd output size
    /// (whose last tiles reach one row or column past the input).
    fn copies(&self) -> bool {
        !self.pad.is_zero() || self.shape.out_h % 2 == 1 || self.shape.out_w % 2 == 1
    }

    /// Height and width of the planes the input transform reads (the copy's, or the
    /// input's).
    fn view_hw(&self) -> (usize, usize) {
        if self.copies() { (2 * self.tiles_h + 2, 2 * self.tiles_w + 2) } else { (self.shape.in_h, self.shape.in_w) }
    }

    /// Bytes of one part's padded rows (one channel's rows of a chunk), rounded to 64.
    fn rows_bytes(&self) -> usize {
        if !self.copies() {
            return 0;
        }
        let (_, wv) = self.view_hw();
        (4 * (2 * self.rows + 2) * wv).div_ceil(64) * 64
    }

    /// Bytes of `V` and of `M`, each rounded to 64.
    fn v_bytes(&self) -> usize {
        16 * self.element_stride(self.shape.in_channels)
    }

    fn m_bytes(&self) -> usize {
        16 * self.element_stride(self.shape.out_channels)
    }

    /// Bytes between the elements `V[xi]` (or `M[xi]`) of `channels` channels: whole
    /// pages and 256 bytes, so that the transforms' 16 streams, one per element, fall
    /// into different sets of the L1 cache (page-multiple strides would put all 16 in
    /// one 12-way set).
    fn element_stride(&self, channels: usize) -> usize {
        (4 * channels * self.tiles()).div_ceil(4096) * 4096 + 256
    }

    /// Scratch bytes: every part's padded rows, then the chunk's `V` and `M` (shared).
    pub fn scratch_bytes(&self) -> usize {
        MAX_PARTS * self.rows_bytes() + self.v_bytes() + self.m_bytes()
    }

    fn spec(&self, channels: usize, pixels: usize) -> PointwiseSpec {
        PointwiseSpec {
            channels,
            vectors: pixels.div_ceil(16),
            last_lanes: (pixels - 1) % 16 + 1,
            steps: self.shape.in_channels,
            plane_bytes: 4 * self.tiles() as i64,
            prefetch: 0,
            relu: false,
            residual: false,
            post_relu: false,
        }
    }

    /// (pixels, first pixel) of the GEMM tiles over a chunk's `T` tiles.
    fn pixel_tiles(&self) -> Vec<(usize, usize)> {
        let t = self.tiles();
        let p = self.pixels;
        let full = t / p;
        (0..full).map(|i| (p, i * p)).chain((!t.is_multiple_of(p)).then_some((t % p, full * p))).collect()
    }

    /// The micro-kernels this layer needs: full and partial blocks of channels (a
    /// group is whole blocks; the last group may end with a partial one) by full and
    /// partial tiles of pixels.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let cout = self.shape.out_channels;
        let mut channels = Vec::new();
        if cout >= self.channels {
            channels.push(self.channels);
        }
        if !cout.is_multiple_of(self.channels) {
            channels.push(cout % self.channels);
        }
        let pixels: Vec<usize> = self.pixel_tiles().iter().map(|&(p, _)| p).collect();
        let mut specs = Vec::new();
        for &c in &channels {
            for &p in &pixels {
                let spec = Ukernel::Pointwise(self.spec(c, p));
                if !specs.contains(&spec) {
                    specs.push(spec);
                }
            }
        }
        specs
    }

    pub fn algorithm(&self) -> String {
        format!(
            "winograd F(2x2,3x3), {} tiles/chunk, AVX-512 pixel tiles {} px x {} ch",
            self.tiles(),
            self.tiles().min(self.pixels),
            self.channels
        )
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, residual: Option<Loc>, scratch: Loc, epilogue: &Epilogue) {
        let s = &self.shape;
        let in_image = (s.in_channels * s.in_h * s.in_w * 4) as i64;
        let out_image = (s.out_channels * s.out_h * s.out_w * 4) as i64;
        let x_base = kb.addr(x);
        let out_base = kb.addr(out);
        let residual_base = residual.map(|r| kb.addr(r));
        let rows_base = kb.addr(scratch);
        let part = kb.part;
        let padded_rows = kb.index(rows_base, part, self.rows_bytes() as i64);
        let v_base = kb.offset(rows_base, (MAX_PARTS * self.rows_bytes()) as i64);
        let m_base = kb.offset(v_base, self.v_bytes() as i64);
        let rows = self.rows;
        kb.for_range(s.batch, |kb, n| {
            let x_n = kb.index(x_base, n, in_image);
            let out_n = kb.index(out_base, n, out_image);
            let res_n = residual_base.map(|r| kb.index(r, n, out_image));
            // Every part runs every chunk, sharing each step's work; a barrier after the
            // input transform (V complete) and after the GEMMs (M complete). The next
            // chunk's input transform writes only V, which no one reads by then; its
            // GEMMs write M after its first barrier, which every part reaches once done
            // with this chunk's output transform.
            kb.for_range(self.chunks(), |kb, chunk| {
                // The chunk's first row of tiles; the last chunk may start early.
                let first = kb.fb.ins().imul_imm_s(chunk, rows as i64);
                let last_start = kb.iconst((self.tiles_h - rows) as i64);
                let ty0 = kb.fb.ins().umin(first, last_start);
                self.emit_input_transform(kb, x_n, ty0, padded_rows, v_base);
                kb.sync();
                self.emit_gemms(kb, v_base, m_base);
                kb.sync();
                let at = Chunk { ty0, m: m_base, out: out_n, residual: res_n };
                self.emit_output_transform(kb, &at, epilogue);
            });
        });
    }

    /// Copies the input rows of one channel's plane that the chunk from tile row `ty0`
    /// reads, `2 rows + 2` rows from row `2 ty0` of the padded plane, into `dst` with
    /// zero borders: rows of padding zeroed, input rows between their zeroed left and
    /// right borders. In this part's own buffer, so the input transform then reads
    /// them from the L1 cache.
    fn emit_pad_rows(&self, kb: &mut Kb, plane: Value, ty0: Value, dst: Value) {
        let s = &self.shape;
        let (_, wv) = self.view_hw();
        let left = self.pad.left;
        let right = wv - left - s.in_w;
        let first = kb.fb.ins().imul_imm_s(ty0, 2);
        kb.for_range(2 * self.rows + 2, |kb, k| {
            let padded_row = kb.fb.ins().iadd(first, k);
            // The input row, wrapping around below 0 so that one unsigned test bounds it.
            let y = kb.fb.ins().iadd_imm_s(padded_row, -(self.pad.top as i64));
            let inside = kb.fb.ins().icmp_imm_u(IntCC::UnsignedLessThan, y, s.in_h as i64);
            let to = kb.index(dst, k, (wv * 4) as i64);
            kb.when_else(
                inside,
                |kb| {
                    let from = kb.index(plane, y, (s.in_w * 4) as i64);
                    kb.zero_floats(to, left);
                    let inner = kb.offset(to, (left * 4) as i64);
                    kb.copy_floats(from, inner, s.in_w);
                    let after = kb.offset(inner, (s.in_w * 4) as i64);
                    kb.zero_floats(after, right);
                },
                |kb| kb.zero_floats(to, wv),
            );
        });
    }

    /// `V` of the chunk whose first row of tiles is `ty0`, every input channel (the parts
    /// share them), from the padded rows (in `padded_rows`) or the input itself.
    fn emit_input_transform(&self, kb: &mut Kb, x_n: Value, ty0: Value, padded_rows: Value, v_base: Value) {
        let s = &self.shape;
        let (_, wv) = self.view_hw();
        let t = self.tiles();
        let xi_stride = self.element_stride(s.in_channels) as i64;
        let row_bytes = (wv * 4) as i64;
        kb.for_share(s.in_channels, |kb, c| {
            let plane = kb.index(x_n, c, (s.in_h * s.in_w * 4) as i64);
            // Input row 2 ty0 of the (padded) plane.
            let top = if self.copies() {
                self.emit_pad_rows(kb, plane, ty0, padded_rows);
                padded_rows
            } else {
                kb.index(plane, ty0, 2 * row_bytes)
            };
            let v_c = kb.index(v_base, c, (t * 4) as i64);
            kb.for_range(self.rows, |kb, r| {
                // Tile row `ty0 + r` reads input rows 2 (ty0 + r) to 2 (ty0 + r) + 3.
                let src_row = kb.index(top, r, 2 * row_bytes);
                let v_row = kb.index(v_c, r, (self.tiles_w * 4) as i64);
                tiles_of_row(kb, self.tiles_w, |kb, tx, lanes| {
                    let src = kb.index(src_row, tx, 8);
                    let dst = kb.index(v_row, tx, 4);
                    input_tiles(kb, lanes, src, row_bytes, dst, xi_stride);
                });
            });
        });
    }

    /// The 16 GEMMs `M[xi] = U[xi] x V[xi]`. With few input channels (a pixel tile's
    /// `V`, `64 * in` floats, fits the L1 cache next to the weights' stream), the parts
    /// share the (element, pixel tile) pairs and run every block of output channels over
    /// a tile while it stays in L1; with more, they share the (element, block) pairs,
    /// element-major so that a part's consecutive blocks read the same `V[xi]` from L2,
    /// and a block runs over all the pixel tiles with its weights in L1.
    fn emit_gemms(&self, kb: &mut Kb, v_base: Value, m_base: Value) {
        let s = &self.shape;
        let (cin, cout) = (s.in_channels, s.out_channels);
        let plane = (self.tiles() * 4) as i64;
        let full_blocks = cout / self.channels;
        let tail = cout % self.channels;
        let data = kb.data();
        let bias = kb.offset(data, 4 * self.bias_start as i64);
        let zeros = kb.offset(data, 4 * self.zeros_start as i64);
        // Element `xi`'s block of `rows` channels from channel `first` over `pixels`
        // pixels from tile `start`.
        let call = |kb: &mut Kb, xi: Value, first: Value, rows: usize, pixels: usize, start: Value| {
            let func = kb
                .tile_kernel(&Ukernel::Pointwise(self.spec(rows, pixels)))
                .expect("pointwise micro-kernels are defined for every Winograd tile kind");
            let v_xi = kb.index(v_base, xi, self.element_stride(cin) as i64);
            let input = kb.index(v_xi, start, 4);
            let w_xi = kb.index(data, xi, (cout * cin * 4) as i64);
            let w = kb.index(w_xi, first, (cin * 4) as i64);
            // The bias enters through element 5 only.
            let is_bias = kb.fb.ins().icmp_imm_u(IntCC::Equal, xi, 5);
            let b = kb.fb.ins().select(is_bias, bias, zeros);
            let b = kb.index(b, first, 4);
            let m_xi = kb.index(m_base, xi, self.element_stride(cout) as i64);
            let output = kb.index(m_xi, first, plane);
            let output = kb.index(output, start, 4);
            let none = kb.iconst(0);
            kb.fb.ins().call(func, &[input, w, b, output, none]);
        };
        // Every block over one pixel tile, and one block over every pixel tile.
        let column = |kb: &mut Kb, xi: Value, pixels: usize, start: Value| {
            kb.for_range(full_blocks, |kb, block| {
                let first = kb.fb.ins().imul_imm_s(block, self.channels as i64);
                call(kb, xi, first, self.channels, pixels, start);
            });
            if tail > 0 {
                let first = kb.iconst((full_blocks * self.channels) as i64);
                call(kb, xi, first, tail, pixels, start);
            }
        };
        let row = |kb: &mut Kb, xi: Value, first: Value, rows: usize| {
            for (pixels, start) in self.pixel_tiles() {
                let start = kb.iconst(start as i64);
                call(kb, xi, first, rows, pixels, start);
            }
        };
        let (p, t) = (self.pixels, self.tiles());
        if 4 * p * cin <= TILE_L1_BYTES {
            let full_tiles = t / p;
            kb.for_share(16 * full_tiles, |kb, item| {
                let xi = kb.fb.ins().udiv_imm_u(item, full_tiles as i64);
                let tile = kb.fb.ins().urem_imm_u(item, full_tiles as i64);
                let start = kb.fb.ins().imul_imm_s(tile, p as i64);
                column(kb, xi, p, start);
            });
            if !t.is_multiple_of(p) {
                kb.for_share(16, |kb, xi| {
                    let start = kb.iconst((full_tiles * p) as i64);
                    column(kb, xi, t % p, start);
                });
            }
        } else {
            kb.for_share(16 * full_blocks, |kb, item| {
                let xi = kb.fb.ins().udiv_imm_u(item, full_blocks as i64);
                let block = kb.fb.ins().urem_imm_u(item, full_blocks as i64);
                let first = kb.fb.ins().imul_imm_s(block, self.channels as i64);
                row(kb, xi, first, self.channels);
            });
            if tail > 0 {
                kb.for_share(16, |kb, xi| {
                    let first = kb.iconst((full_blocks * self.channels) as i64);
                    row(kb, xi, first, tail);
                });
            }
        }
    }

    /// `A^T M A` over the chunk (the parts share the output channels), the epilogue
    /// and the stores.
    fn emit_output_transform(&self, kb: &mut Kb, at: &Chunk, epilogue: &Epilogue) {
        let s = &self.shape;
        let t = self.tiles();
        let plane = (t * 4) as i64;
        let out_plane = (s.out_h * s.out_w * 4) as i64;
        let row_bytes = (s.out_w * 4) as i64;
        let xi_stride = self.element_stride(s.out_channels) as i64;
        let full_w = s.out_w / 2;
        let odd_h = s.out_h % 2 == 1;
        let last_ty = (self.tiles_h - 1) as i64;
        kb.for_share(s.out_channels, |kb, oc| {
            let out_c = kb.index(at.out, oc, out_plane);
            let res_c = at.residual.map(|r| kb.index(r, oc, out_plane));
            let m_c = kb.index(at.m, oc, plane);
            kb.for_range(self.rows, |kb, r| {
                let ty = kb.fb.ins().iadd(at.ty0, r);
                let out_row = kb.index(out_c, ty, 2 * row_bytes);
                let res_row = res_c.map(|res| kb.index(res, ty, 2 * row_bytes));
                let m_row = kb.index(m_c, r, (self.tiles_w * 4) as i64);
                // The second output row exists but in the last row of tiles of an odd
                // height.
                let second = odd_h.then(|| kb.fb.ins().icmp_imm_u(IntCC::NotEqual, ty, last_ty));
                let store = Store { row_bytes, second, epilogue };
                tiles_of_row(kb, full_w, |kb, tx, lanes| {
                    let m = kb.index(m_row, tx, 4);
                    let out = kb.index(out_row, tx, 8);
                    let res = res_row.map(|res| kb.index(res, tx, 8));
                    output_tiles(kb, lanes, m, xi_stride, out, res, &store, 2);
                });
                if s.out_w % 2 == 1 {
                    // The last tile of a row of odd width has one column.
                    let tx = (self.tiles_w - 1) as i64;
                    let m = kb.offset(m_row, 4 * tx);
                    let out = kb.offset(out_row, 8 * tx);
                    let res = res_row.map(|res| kb.offset(res, 8 * tx));
                    output_tiles(kb, F32, m, xi_stride, out, res, &store, 1);
                }
            });
        });
    }
}

/// Where a chunk's values are: its first row of tiles, `M`, and the batch element's
/// output and residual.
struct Chunk {
    ty0: Value,
    m: Value,
    out: Value,
    residual: Option<Value>,
}

/// How the output transform stores a tile's rows.
struct Store<'e> {
    row_bytes: i64,
    /// When present, the condition under which the second row is stored.
    second: Option<Value>,
    epilogue: &'e Epilogue,
}

/// Rows of tiles per chunk: the chunk's `V` and `M` (16 floats per tile and channel,
/// `channels` input and output channels) within `budget` bytes, at least one row;
/// among those, the fewest pixel lanes computed (each chunk's tiles rounded up to whole
/// vectors of 16, plus one vector's worth per chunk for its pass over the weights and
/// its barriers), then the most rows.
fn choose_rows(tiles_h: usize, tiles_w: usize, channels: usize, budget: usize) -> usize {
    let most_tiles = (budget / (16 * 4 * channels)).max(tiles_w);
    let most_rows = (most_tiles / tiles_w).clamp(1, tiles_h);
    (1..=most_rows)
        .min_by_key(|&rows| {
            let chunks = tiles_h.div_ceil(rows);
            (chunks * ((rows * tiles_w).div_ceil(16) * 16 + 16), std::cmp::Reverse(rows))
        })
        .unwrap_or(1)
}

/// Emits `body(tx, ty)` over the `count` tiles of a row: f32x4 groups of four tiles
/// (`ty` F32X4, `tx` the group's first tile; the last group starts early enough to end
/// at the row's end, redoing tiles of the one before), or one tile at a time (`ty` F32)
/// for rows of fewer than four.
fn tiles_of_row(kb: &mut Kb, count: usize, mut body: impl FnMut(&mut Kb, Value, Type)) {
    if count >= 4 {
        let last = kb.iconst((count - 4) as i64);
        kb.for_range(count.div_ceil(4), |kb, g| {
            let tx = kb.fb.ins().imul_imm_s(g, 4);
            let tx = kb.fb.ins().umin(tx, last);
            body(kb, tx, F32X4);
        });
    } else {
        for tx in 0..count {
            let tx = kb.iconst(tx as i64);
            body(kb, tx, F32);
        }
    }
}

/// A two-operand f32x4 shuffle; `lanes` picks from `a` (0-3) and `b` (4-7).
fn shuffle(kb: &mut Kb, a: Value, b: Value, lanes: [u8; 4]) -> Value {
    let little = MemFlagsData::new().with_endianness(Endianness::Little);
    let a = kb.fb.ins().bitcast(types::I8X16, little, a);
    let b = kb.fb.ins().bitcast(types::I8X16, little, b);
    let bytes: Vec<u8> = lanes.iter().flat_map(|&l| (0..4).map(move |i| 4 * l + i)).collect();
    let mask = kb.fb.func.dfg.immediates.push(bytes.into());
    let shuffled = kb.fb.ins().shuffle(a, b, mask);
    kb.fb.ins().bitcast(F32X4, little, shuffled)
}

/// Row `i` of `B^T d` from the input rows it combines: `d0 - d2`, `d1 + d2`,
/// `d2 - d1`, `d1 - d3`. Returns the rows read and whether to add.
const VERTICAL: [(usize, usize, bool); 4] = [(0, 2, false), (1, 2, true), (2, 1, false), (1, 3, false)];

fn combine(kb: &mut Kb, a: Value, b: Value, add: bool) -> Value {
    if add { kb.fb.ins().fadd(a, b) } else { kb.fb.ins().fsub(a, b) }
}

/// The input transform of one tile (`ty` F32) or four consecutive tiles of a row
/// (F32X4): the 4x4 windows from `src` (the first tile's top-left input, rows
/// `row_bytes` apart), `V[xi]` stored at `dst + xi * xi_stride`.
fn input_tiles(kb: &mut Kb, ty: Type, src: Value, row_bytes: i64, dst: Value, xi_stride: i64) {
    for (i, &(p, q, add)) in VERTICAL.iter().enumerate() {
        // `B^T d` row i at input columns 2 tx + 0..4: the tile's even and odd columns and
        // the next tile's.
        let [e0, o0, e1, o1] = if ty == F32 {
            [0, 4, 8, 12].map(|offset| {
                let a = kb.load(F32, src, p as i64 * row_bytes + offset);
                let b = kb.load(F32, src, q as i64 * row_bytes + offset);
                combine(kb, a, b, add)
            })
        } else {
            // Columns 2 tx .. 2 tx + 8 and, two further, 2 tx + 2 .. 2 tx + 10.
            let [lo, hi, lo2, hi2] = [0, 16, 8, 24].map(|offset| {
                let a = kb.load(F32X4, src, p as i64 * row_bytes + offset);
                let b = kb.load(F32X4, src, q as i64 * row_bytes + offset);
                combine(kb, a, b, add)
            });
            [
                shuffle(kb, lo, hi, [0, 2, 4, 6]),
                shuffle(kb, lo, hi, [1, 3, 5, 7]),
                shuffle(kb, lo2, hi2, [0, 2, 4, 6]),
                shuffle(kb, lo2, hi2, [1, 3, 5, 7]),
            ]
        };
        // `(B^T d) B` row i: `e0 - e1`, `o0 + e1`, `e1 - o0`, `o0 - o1`.
        let v = [(e0, e1, false), (o0, e1, true), (e1, o0, false), (o0, o1, false)];
        for (j, &(a, b, add)) in v.iter().enumerate() {
            let value = combine(kb, a, b, add);
            kb.store(value, dst, (4 * i + j) as i64 * xi_stride);
        }
    }
}

/// The output transform of one tile (`ty` F32) or four consecutive tiles (F32X4):
/// `M[xi]` from `m + xi * xi_stride`, `A^T M A`, the epilogue, and the stores of
/// `columns` (1 or 2) columns per tile row from `out` (rows `store.row_bytes` apart).
#[allow(clippy::too_many_arguments)]
fn output_tiles(
    kb: &mut Kb,
    ty: Type,
    m: Value,
    xi_stride: i64,
    out: Value,
    residual: Option<Value>,
    store: &Store,
    columns: usize,
) {
    // `A^T M`: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of the 4x4 M), per column.
    let (mut s0, mut s1) = (Vec::new(), Vec::new());
    for j in 0..4 {
        let m_j: Vec<Value> = (0..4).map(|i| kb.load(ty, m, (4 * i + j) as i64 * xi_stride)).collect();
        let sum = kb.fb.ins().fadd(m_j[0], m_j[1]);
        s0.push(kb.fb.ins().fadd(sum, m_j[2]));
        let difference = kb.fb.ins().fsub(m_j[1], m_j[2]);
        s1.push(kb.fb.ins().fsub(difference, m_j[3]));
    }
    for (r, s_r) in [s0, s1].iter().enumerate() {
        // `(A^T M) A`: y0 = s0 + s1 + s2, y1 = s1 - s2 - s3.
        let sum = kb.fb.ins().fadd(s_r[0], s_r[1]);
        let y0 = kb.fb.ins().fadd(sum, s_r[2]);
        let difference = kb.fb.ins().fsub(s_r[1], s_r[2]);
        let y1 = kb.fb.ins().fsub(difference, s_r[3]);
        let row = r as i64 * store.row_bytes;
        let emit_row = |kb: &mut Kb| {
            // (value, byte offset in the row) of what this row stores.
            let values: Vec<(Value, i64)> = if ty == F32 {
                [(y0, 0), (y1, 4)].into_iter().take(columns).collect()
            } else {
                // Interleave the tiles' two columns: output columns 2 tx .. 2 tx + 8.
                vec![(shuffle(kb, y0, y1, [0, 4, 1, 5]), 0), (shuffle(kb, y0, y1, [2, 6, 3, 7]), 16)]
            };
            for (value, offset) in values {
                let value = kb.epilogue(store.epilogue, value, residual.map(|res| (res, row + offset)));
                kb.store(value, out, row + offset);
            }
        };
        match (r, store.second) {
            (1, Some(condition)) => kb.when(condition, emit_row),
            _ => emit_row(kb),
        }
    }
}
