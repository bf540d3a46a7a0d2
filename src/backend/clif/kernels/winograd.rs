//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3x3) with m = 2
//! or 4 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), on
//! AVX-512 and AVX2: each m x m block of output pixels (a *tile*) comes from the `alpha x alpha`
//! input window around it (`alpha = m + 2`) as
//! `Y = A^T [ sum over input channels of (G g G^T) . (B^T d B) ] A`, `alpha^2`
//! multiplies per tile, channel pair and input window instead of the direct method's
//! `9 m^2`: F(2x2, 3x3) 16 for 4 outputs (2.25 times fewer), F(4x4, 3x3) 36 for 16 (4
//! times fewer, with larger transforms, more waste in partial tiles at the edges, and
//! transformed weights 4 times the weights instead of 16/9). One code path serves both:
//! the transforms are the matrices `G`, `B^T`, `A^T` of each variant (points 0, 1, -1,
//! infinity; and 0, 1, -1, 2, -2, infinity), applied row by row in f32 or f32x4 code.
//! `WinogradKernel::tile_size` picks the variant per layer by shape (`prefers_f4`, with
//! the measurements behind it), unless `CodegenOptions::winograd_f4` says which.
//!
//! The filters are transformed at build time, `U = G g G^T` in f64 rounded once to f32,
//! and packed per element `xi` of the `alpha x alpha` tile (`xi = alpha * row +
//! column`) as the pointwise tiles want their weights: blocks of `channels` output
//! channels, `[in_channel][channel]`. Then the bias, then as many zeros.
//!
//! The output is computed in *chunks* of `rows` whole rows of tiles (`T` tiles, `V`
//! and `M` within `CHUNK_BYTES`), one after another; every part of a run takes a share
//! of each step of a chunk, with a barrier after the first two:
//! 1. input transform (the parts share the input channels):
//!    `V[xi][in_channel][tile] = (B^T d B)[xi]`, f32x4 over four tiles of a row, row by
//!    row of `B^T d`: the vertical sums first (elementwise on input vectors), then each
//!    tile's columns gathered into lanes by shuffles (F(2x2): even and odd columns;
//!    F(4x4): 4x4 transposes), then the horizontal sums;
//! 2. `alpha^2` GEMMs `M[xi] = U[xi] x V[xi]` (the parts share the pairs of element and
//!    pixel tile, or of element and block of output channels: see `emit_gemms`), which
//!    are pointwise convolutions over a "plane" of `T` pixels: the pixel-lane tiles of
//!    `x86::assemble_pointwise` at full width, 64 pixels (four zmm vectors) by 6
//!    channels on AVX-512, 16 pixels (two ymm vectors, `vmaskmovps` on a partial last
//!    one) by 6 channels on AVX2 (where fewer than 9 pixels, by 12). Only this stage
//!    depends on the ISA; the transforms are the same f32x4 code on both. The bias rides on the element at
//!    row 1, column 1 (column 1 of `A^T` is all ones in both variants, so it enters
//!    every output of the tile with weight 1), the others start from zeros;
//! 3. output transform `A^T M A` (the parts share the output channels), the epilogue,
//!    and the stores into the NCHW output, f32x4 over four tiles (shuffles interleave
//!    the tiles' columns: two for F(2x2), a 4x4 transpose for F(4x4)) or one tile at a
//!    time at the right edge of a width that is not a multiple of m (its first
//!    `out_w % m` columns); in the last tile row of such a height, only the first
//!    `out_h % m` rows are stored.
//!
//! Large chunks matter most: each chunk reads all of `U` (16/9 or 4 times the size of
//! the weights) once, so sharing a chunk between the parts, rather than giving each part
//! chunks of its own, keeps `V` and `M` single and the chunks as large as they can be.
//!
//! Padding and partial tiles: before its transform, each input channel's rows of the
//! chunk are copied into the part's own small buffer with zero borders that covers every
//! tile's `alpha x alpha` window (in the L1 cache when the transform reads it), unless
//! the input already does (no padding and output sizes multiples of m).
//!
//! Threads: a tile's arithmetic is the same whichever part or vector lane computes it
//! (the transforms have no FMA and apply each matrix row with the same operations in
//! the same order in their f32x4 and f32 forms, see `dot`; a pixel-lane tile does the
//! same multiply-adds in every lane), and the chunks do not depend on the number of
//! parts, so any split gives the bits of one thread. The last chunk starts early enough
//! to stay inside the plane, recomputing rows of the one before it (the same values).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Type, Value, types};

use super::super::codegen::MAX_PARTS;
use super::conv::ConvShape;
use super::pointwise::pack_blocks;
use super::x86::{PointwiseSpec, Simd, Ukernel};
use super::{F32, F32X4, Kb, Loc};
use crate::ir::{Conv, Epilogue, Pad};

/// Pixel lanes of a full GEMM tile: four zmm vectors on AVX-512, two ymm vectors on
/// AVX2 (whose 16 registers hold 6 channels x 2 vectors of accumulators).
fn tile_pixels(simd: Simd) -> usize {
    match simd {
        Simd::Avx512 => 64,
        Simd::Avx2 => 16,
    }
}
/// The most bytes of a chunk's transformed input `V` and products `M` (at least one
/// row of tiles). Larger chunks read the transformed weights fewer times per image.
const CHUNK_BYTES: usize = 8 << 20;
/// The most bytes of a pixel tile's `V` that the GEMMs keep in the L1 cache (48 KiB)
/// while every block of output channels passes over it.
const TILE_L1_BYTES: usize = 32 << 10;

/// The fewest 2x2 tiles per image for Winograd. Each image reads `U`, 16/9 the size of
/// the weights, at least once: on AVX-512, measured on 2 threads, ResNet-18's 7x7
/// layers (16 tiles, 512 channels) ran 15% slower than directly, its 14x14 ones (49
/// tiles) 30% faster: 36. The AVX2 direct tiles are slower (62-65 GFLOP/s on those 7x7
/// layers, against 90-97 on 56x56 and 28x28), and F(2x2) on 16-pixel tiles runs them
/// 2.2 times faster (one thread, Zen 3: 3.53/3.53/3.55 -> 1.63/1.57/1.59 ms): 16.
fn min_tiles(simd: Simd) -> usize {
    match simd {
        Simd::Avx512 => 36,
        Simd::Avx2 => 16,
    }
}

/// F(2x2, 3x3): `G` (4x3), `B^T` (4x4) and `A^T` (2x4), points 0, 1, -1, infinity.
const G2: &[[f64; 3]] = &[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
const BT2: &[&[f32]] = &[&[1.0, 0.0, -1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], &[0.0, -1.0, 1.0, 0.0], &[0.0, 1.0, 0.0, -1.0]];
const AT2: &[&[f32]] = &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]];

/// F(4x4, 3x3): `G` (6x3), `B^T` (6x6) and `A^T` (4x6), points 0, 1, -1, 2, -2, infinity.
const G4: &[[f64; 3]] = &[
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const BT4: &[&[f32]] = &[
    &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const AT4: &[&[f32]] = &[
    &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// A transform matrix of `B^T` or `A^T`, by rows.
type Matrix = &'static [&'static [f32]];

/// The transforms of F(m x m, 3x3): `G`, `B^T`, `A^T`.
fn matrices(m: usize) -> (&'static [[f64; 3]], Matrix, Matrix) {
    match m {
        2 => (G2, BT2, AT2),
        4 => (G4, BT4, AT4),
        _ => unreachable!("Winograd tiles are 2x2 or 4x4"),
    }
}

/// A Winograd convolution ready to emit.
pub(crate) struct WinogradKernel {
    /// The ISA of the GEMMs' pointwise tiles (the transforms are f32x4 code either way).
    simd: Simd,
    shape: ConvShape,
    pad: Pad,
    /// Output tile size: F(m x m, 3x3), 2 or 4; windows of `alpha = m + 2`.
    m: usize,
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

/// `G g G^T` of one 3x3 filter, row-major `alpha x alpha` (`alpha` the rows of `G`).
fn transform_filter(gm: &[[f64; 3]], g: &[f32]) -> Vec<f64> {
    let alpha = gm.len();
    let tmp: Vec<[f64; 3]> =
        gm.iter().map(|row| std::array::from_fn(|k| (0..3).map(|j| row[j] * g[3 * j + k] as f64).sum())).collect();
    let mut u = vec![0.0f64; alpha * alpha];
    for i in 0..alpha {
        for l in 0..alpha {
            u[alpha * i + l] = (0..3).map(|k| tmp[i][k] * gm[l][k]).sum();
        }
    }
    u
}

impl WinogradKernel {
    /// Whether the Winograd kernel runs a convolution: 3x3, stride 1, dilation 1, one
    /// group, with enough channels on both sides that the GEMMs (which grow with
    /// `in * out`) outweigh the transforms (which grow with `in + out`), and enough
    /// 2x2 tiles per image (`min_tiles`: 36, on AVX2 16) that they outweigh reading the transformed
    /// weights. 32 input channels, or 16 where F(4x4) runs the layer: SqueezeNet's
    /// 16 -> 64 on 55x55 went from 0.42 ms direct to 0.36 ms with F(4x4) (one thread;
    /// with F(2x2) it was 0.42 too; on AVX2 0.615 -> 0.435 with F(4x4)).
    pub fn applies(simd: Simd, conv: &Conv, shape: &ConvShape) -> bool {
        conv.kernel.h == 3
            && conv.kernel.w == 3
            && conv.stride.h == 1
            && conv.stride.w == 1
            && conv.dilation.h == 1
            && conv.dilation.w == 1
            && conv.groups == 1
            && (shape.in_channels >= 32 || (shape.in_channels >= 16 && Self::tile_size(simd, shape, None) == 4))
            && shape.out_channels >= 32
            && shape.out_h.div_ceil(2) * shape.out_w.div_ceil(2) >= min_tiles(simd)
    }

    /// The output tile size for a layer that Winograd runs: 4 where `f4` says so, 2
    /// where it says not; by default where F(4x4) measured faster, else 2 (on AVX-512
    /// see `prefers_f4`, on AVX2 `avx2_prefers_f4`).
    pub fn tile_size(simd: Simd, shape: &ConvShape, f4: Option<bool>) -> usize {
        let f4 = f4.unwrap_or_else(|| match simd {
            Simd::Avx512 => prefers_f4(shape),
            Simd::Avx2 => avx2_prefers_f4(shape),
        });
        if f4 { 4 } else { 2 }
    }

    /// `weight` is `[out][in][3][3]`; `m` the output tile size, 2 or 4.
    pub fn new(
        simd: Simd,
        conv: &Conv,
        shape: ConvShape,
        m: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> WinogradKernel {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let (gm, _, _) = matrices(m);
        let elements = (m + 2) * (m + 2);
        let tiles_h = shape.out_h.div_ceil(m);
        let tiles_w = shape.out_w.div_ceil(m);
        let pixels = tile_pixels(simd);
        let rows = choose_rows(tiles_h, tiles_w, elements * (cin + cout), CHUNK_BYTES);
        let tiles = rows * tiles_w;
        // The widest pointwise tile that fits the registers next to `tiles.min(pixels)`
        // pixels.
        let vectors = tiles.min(pixels).div_ceil(simd.lanes());
        let channels = match (simd, vectors) {
            (Simd::Avx512, 4) => 6,
            (Simd::Avx512, 3) => 8,
            (Simd::Avx512, 2) => 12,
            (Simd::Avx512, _) => 24,
            (Simd::Avx2, 1) => 12,
            (Simd::Avx2, _) => 6,
        };
        // `U[xi][out][in]`, then packed per element and block.
        let mut u = vec![0.0f32; elements * cout * cin];
        for (filter, g) in weight.chunks_exact(9).enumerate() {
            for (xi, value) in transform_filter(gm, g).into_iter().enumerate() {
                u[xi * cout * cin + filter] = value as f32;
            }
        }
        let mut data: Vec<u8> = Vec::with_capacity(4 * (elements * cout * cin + 2 * cout));
        for u_xi in u.chunks_exact(cout * cin) {
            pack_blocks(&mut data, u_xi, cin, channels);
        }
        let bias_start = data.len() / 4;
        for oc in 0..cout {
            data.extend_from_slice(&bias.map_or(0.0, |b| b[oc]).to_le_bytes());
        }
        let zeros_start = data.len() / 4;
        data.resize(data.len() + 4 * cout, 0);
        WinogradKernel {
            simd,
            shape,
            pad: conv.pad,
            m,
            tiles_h,
            tiles_w,
            rows,
            channels,
            pixels,
            bias_start,
            zeros_start,
            data,
        }
    }

    /// The input window's side, `m + 2`.
    fn alpha(&self) -> usize {
        self.m + 2
    }

    /// Elements of a transformed tile, `alpha^2`.
    fn elements(&self) -> usize {
        self.alpha() * self.alpha()
    }

    /// The element of `M` that enters every output of its tile with weight 1 under `A`
    /// (row 1, column 1: column 1 of `A^T` is all ones in both variants), which carries
    /// the bias.
    fn bias_element(&self) -> usize {
        self.alpha() + 1
    }

    /// Tiles per chunk.
    fn tiles(&self) -> usize {
        self.rows * self.tiles_w
    }

    fn chunks(&self) -> usize {
        self.tiles_h.div_ceil(self.rows)
    }

    /// Whether the input needs a zero-bordered copy: padding, or an output size that is
    /// not a multiple of `m` (whose last tiles reach rows or columns past the input).
    fn copies(&self) -> bool {
        !self.pad.is_zero() || !self.shape.out_h.is_multiple_of(self.m) || !self.shape.out_w.is_multiple_of(self.m)
    }

    /// Height and width of the planes the input transform reads (the copy's, or the
    /// input's).
    fn view_hw(&self) -> (usize, usize) {
        let m = self.m;
        if self.copies() { (m * self.tiles_h + 2, m * self.tiles_w + 2) } else { (self.shape.in_h, self.shape.in_w) }
    }

    /// Bytes of one part's padded rows (one channel's rows of a chunk), rounded to 64.
    fn rows_bytes(&self) -> usize {
        if !self.copies() {
            return 0;
        }
        let (_, wv) = self.view_hw();
        (4 * (self.m * self.rows + 2) * wv).div_ceil(64) * 64
    }

    /// Bytes of `V` and of `M`, each rounded to 64.
    fn v_bytes(&self) -> usize {
        self.elements() * self.element_stride(self.shape.in_channels)
    }

    fn m_bytes(&self) -> usize {
        self.elements() * self.element_stride(self.shape.out_channels)
    }

    /// Bytes between the elements `V[xi]` (or `M[xi]`) of `channels` channels: whole
    /// pages and 256 bytes, so that the transforms' 16 or 36 streams, one per element,
    /// fall into different sets of the L1 cache (page-multiple strides would put them
    /// all in one 12-way set; at 256 bytes, 16 streams cover the 64 sets, so F(4x4)'s 36
    /// put at most 3 in a set).
    fn element_stride(&self, channels: usize) -> usize {
        (4 * channels * self.tiles()).div_ceil(4096) * 4096 + 256
    }

    /// Scratch bytes: every part's padded rows, then the chunk's `V` and `M` (shared).
    pub fn scratch_bytes(&self) -> usize {
        MAX_PARTS * self.rows_bytes() + self.v_bytes() + self.m_bytes()
    }

    fn spec(&self, channels: usize, pixels: usize) -> PointwiseSpec {
        let lanes = self.simd.lanes();
        PointwiseSpec {
            simd: self.simd,
            channels,
            vectors: pixels.div_ceil(lanes),
            last_lanes: (pixels - 1) % lanes + 1,
            steps: self.shape.in_channels,
            plane_bytes: 4 * self.tiles() as i64,
            prefetch: 0,
            activation: None,
            residual: false,
            post_activation: None,
            accumulate: false,
            finish: true,
            bf16: false,
            int8: None,
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
        let m = self.m;
        format!(
            "winograd F({m}x{m},3x3), {} tiles/chunk, {} pixel tiles {} px x {} ch",
            self.tiles(),
            self.simd.name(),
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
    /// reads, `m rows + 2` rows from row `m ty0` of the padded plane, into `dst` with
    /// zero borders: rows of padding zeroed, input rows between their zeroed left and
    /// right borders. In this part's own buffer, so the input transform then reads
    /// them from the L1 cache.
    fn emit_pad_rows(&self, kb: &mut Kb, plane: Value, ty0: Value, dst: Value) {
        let s = &self.shape;
        let (_, wv) = self.view_hw();
        let left = self.pad.left;
        let right = wv - left - s.in_w;
        let first = kb.fb.ins().imul_imm_s(ty0, self.m as i64);
        kb.for_range(self.m * self.rows + 2, |kb, k| {
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
        let m = self.m as i64;
        let (_, bt, _) = matrices(self.m);
        kb.for_share(s.in_channels, |kb, c| {
            let plane = kb.index(x_n, c, (s.in_h * s.in_w * 4) as i64);
            // Input row m ty0 of the (padded) plane.
            let top = if self.copies() {
                self.emit_pad_rows(kb, plane, ty0, padded_rows);
                padded_rows
            } else {
                kb.index(plane, ty0, m * row_bytes)
            };
            let v_c = kb.index(v_base, c, (t * 4) as i64);
            kb.for_range(self.rows, |kb, r| {
                // Tile row `ty0 + r` reads input rows m (ty0 + r) to m (ty0 + r) + m + 1.
                let src_row = kb.index(top, r, m * row_bytes);
                let v_row = kb.index(v_c, r, (self.tiles_w * 4) as i64);
                tiles_of_row(kb, self.tiles_w, |kb, tx, lanes| {
                    let src = kb.index(src_row, tx, 4 * m);
                    let dst = kb.index(v_row, tx, 4);
                    input_tiles(kb, lanes, bt, src, row_bytes, dst, xi_stride);
                });
            });
        });
    }

    /// The 16 or 36 GEMMs `M[xi] = U[xi] x V[xi]`. With few input channels (a pixel tile's
    /// `V`, `pixels * in` floats, fits the L1 cache next to the weights' stream), the parts
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
            // The bias enters through one element only.
            let is_bias = kb.fb.ins().icmp_imm_u(IntCC::Equal, xi, self.bias_element() as i64);
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
        let (p, t, elements) = (self.pixels, self.tiles(), self.elements());
        if 4 * p * cin <= TILE_L1_BYTES {
            let full_tiles = t / p;
            kb.for_share(elements * full_tiles, |kb, item| {
                let xi = kb.fb.ins().udiv_imm_u(item, full_tiles as i64);
                let tile = kb.fb.ins().urem_imm_u(item, full_tiles as i64);
                let start = kb.fb.ins().imul_imm_s(tile, p as i64);
                column(kb, xi, p, start);
            });
            if !t.is_multiple_of(p) {
                kb.for_share(elements, |kb, xi| {
                    let start = kb.iconst((full_tiles * p) as i64);
                    column(kb, xi, t % p, start);
                });
            }
        } else {
            kb.for_share(elements * full_blocks, |kb, item| {
                let xi = kb.fb.ins().udiv_imm_u(item, full_blocks as i64);
                let block = kb.fb.ins().urem_imm_u(item, full_blocks as i64);
                let first = kb.fb.ins().imul_imm_s(block, self.channels as i64);
                row(kb, xi, first, self.channels);
            });
            if tail > 0 {
                kb.for_share(elements, |kb, xi| {
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
        let m = self.m;
        let (_, _, at_matrix) = matrices(m);
        let full_w = s.out_w / m;
        let rows_h = s.out_h % m;
        let last_ty = (self.tiles_h - 1) as i64;
        kb.for_share(s.out_channels, |kb, oc| {
            let out_c = kb.index(at.out, oc, out_plane);
            let res_c = at.residual.map(|r| kb.index(r, oc, out_plane));
            let m_c = kb.index(at.m, oc, plane);
            kb.for_range(self.rows, |kb, r| {
                let ty = kb.fb.ins().iadd(at.ty0, r);
                let out_row = kb.index(out_c, ty, (m as i64) * row_bytes);
                let res_row = res_c.map(|res| kb.index(res, ty, (m as i64) * row_bytes));
                let m_row = kb.index(m_c, r, (self.tiles_w * 4) as i64);
                // The last row of tiles of a height that is not a multiple of m has only
                // its first `rows_h` output rows.
                let some_rows = (rows_h > 0).then(|| (rows_h, kb.fb.ins().icmp_imm_u(IntCC::NotEqual, ty, last_ty)));
                let store = Store { row_bytes, some_rows, epilogue };
                tiles_of_row(kb, full_w, |kb, tx, lanes| {
                    let m_at = kb.index(m_row, tx, 4);
                    let out = kb.index(out_row, tx, 4 * m as i64);
                    let res = res_row.map(|res| kb.index(res, tx, 4 * m as i64));
                    output_tiles(kb, lanes, at_matrix, m_at, xi_stride, out, res, &store, m);
                });
                if !s.out_w.is_multiple_of(m) {
                    // The last tile of a row of a width that is not a multiple of m has
                    // fewer columns.
                    let tx = (self.tiles_w - 1) as i64;
                    let m_at = kb.offset(m_row, 4 * tx);
                    let out = kb.offset(out_row, 4 * m as i64 * tx);
                    let res = res_row.map(|res| kb.offset(res, 4 * m as i64 * tx));
                    output_tiles(kb, F32, at_matrix, m_at, xi_stride, out, res, &store, s.out_w % m);
                }
            });
        });
    }
}

/// Whether F(4x4, 3x3) runs a layer by default rather than F(2x2, 3x3): 64 or more 4x4
/// tiles per image; or 36 or more where F(4x4)'s transformed weights take at most
/// `F4_WEIGHT_BYTES` or F(2x2) would take more than one chunk.
///
/// F(4x4) does 36 multiplies per tile and channel pair for 16 outputs, 2.25 times fewer
/// than F(2x2)'s 16 for 4, but its transforms cost more per output, its partial tiles at
/// the edges waste more (13x13 and 14x14 outputs: 16 tiles compute 256 pixels, and the
/// GEMMs save 27% instead of 44%), and each chunk reads all of `U`, 4 times the weights
/// (F(2x2): 16/9), once per chunk, with fewer pixels per weight: the fewer the tiles, the
/// more the GEMMs wait for `U` (from L3 in a network, where the other layers' weights
/// evict it from L2). Measured on one thread, medians of 20 runs, the least of 2 or 3
/// alternating rounds (`cnnc bench --threads 1 --profile`), F(2x2) -> F(4x4) in ms, as
/// in -> out channels @ output size:
/// - 64 or more tiles, faster everywhere: ResNet-18 64@56 1.31/1.06/1.00/1.03 ->
///   1.01/0.89/0.86/0.87, ResNet-50 64@56 1.74/1.26/1.12 -> 1.13/0.94/0.90, its CIFAR
///   variant 64@32 0.33/0.30/0.30/0.30 -> 0.27/0.29/0.27/0.28, VGG-16 64@224 20.7 ->
///   14.7, 128@112 7.6/13.7 -> 6.1/11.2, 256@56 7.7/14.9/14.9 -> 5.7/9.8/9.9;
/// - 36 to 63 tiles (28x28): faster with small weights or where F(2x2) takes two
///   chunks (Inception 3a 96->128 0.68 -> 0.52, SqueezeNet 32->128@27 0.285/0.268 ->
///   0.262/0.254, VGG-16's 512@28, two F(2x2) chunks, 7.2/14.5/13.9 -> 5.5/10.7/10.4),
///   slower with 128@28's 2.4 MB (ResNet-18 1.00/0.98/1.00 -> 1.03/1.06/1.07, ResNet-50
///   1.07/1.06/1.04 -> 1.08/1.08/1.06);
/// - fewer than 36 tiles, slower everywhere: ResNet-18 and -50 256@14 1.10 to 1.17 ->
///   1.69 to 1.74, VGG-16 512@14 4.35/4.41/4.38 -> 5.92/5.88/5.88, the CIFAR ResNet's
///   128@16 0.36/0.40/0.42 -> 0.42/0.42/0.43, SqueezeNet 48->192@13 0.154/0.153 ->
///   0.237/0.234 and 64->256@13 0.27/0.31 -> 0.38/0.41.
///
/// Single layers, where `U` stays in L2 and L3 from one run to the next, favour F(4x4)
/// more (128@28 0.87 -> 0.67, 256@14 0.98 -> 0.76): the rule follows the networks.
fn prefers_f4(shape: &ConvShape) -> bool {
    let tiles = shape.out_h.div_ceil(4) * shape.out_w.div_ceil(4);
    let weight_bytes = 36 * 4 * shape.in_channels * shape.out_channels;
    let (tiles_h2, tiles_w2) = (shape.out_h.div_ceil(2), shape.out_w.div_ceil(2));
    let rows2 = choose_rows(tiles_h2, tiles_w2, 16 * (shape.in_channels + shape.out_channels), CHUNK_BYTES);
    let f2_chunks = tiles_h2.div_ceil(rows2);
    tiles >= 64 || (tiles >= 36 && (weight_bytes <= F4_WEIGHT_BYTES || f2_chunks > 1))
}

/// Whether F(4x4, 3x3) runs a layer by default on AVX2 (16-pixel GEMM tiles) rather
/// than F(2x2, 3x3): from 16 4x4 tiles per image (14x14 outputs) on; below that (where
/// Winograd `applies`: 7x7 outputs), F(2x2).
///
/// On AVX2 every layer that `applies` measured faster by Winograd than on the direct
/// tiles (about 90-97 GFLOP/s on 56x56 and 28x28 outputs, 75-80 on 14x14, 55-65 on 7x7
/// and VGG-16's first 224x224 layer), and F(4x4) faster than F(2x2) wherever it has 16
/// or more tiles, unlike on AVX-512 (`prefers_f4`): the 16-pixel GEMM tiles lose less to
/// F(4x4)'s smaller chunks, and the GEMMs' share of the time is larger. Measured on one
/// thread (Zen 3, `cnnc bench --threads 1 --profile`, medians of 5 to 20 runs), direct
/// -> F(2x2) -> F(4x4) in ms, as in -> out channels @ output size:
/// - ResNet-18 64@56 2.47/2.47/2.45/2.51 -> 1.47/1.37/1.33/1.37 -> 1.24/1.17/1.15/1.17,
///   128@28 2.41/2.38/2.41 -> 1.28/1.30/1.31 -> 1.12/1.08/1.12, 256@14 2.98/2.92/2.99
///   -> 1.73/1.71/1.73 -> 1.17/1.17/1.18, 512@7 3.53/3.53/3.55 -> 1.63/1.57/1.59 ->
///   3.00/2.90/2.86 (4 tiles of 4x4 for 49 outputs);
/// - ResNet-50 64@56 2.45/2.43/2.45 -> 1.42/1.33/1.34 -> 1.23/1.13/1.14, 128@28
///   2.39/2.38/2.39 -> 1.32/1.30/1.28 -> 1.06/1.04/1.07, 256@14 2.92 to 3.00 -> 1.63
///   to 1.70 -> 1.03 to 1.05;
/// - VGG-16 64@224 42.2 -> 23.1 -> 17.1, 128@112 19.8/38.8 -> 10.4/20.4 -> 7.8/14.0,
///   256@56 19.0/39.0/38.5 -> 9.8/20.1/20.2 -> 6.9/13.0/13.1, 512@28 19.3/44.2/43.0
///   -> 10.3/20.5/20.6 -> 7.8/15.6/15.7, 512@14 12.3/12.3/12.2 -> 6.5/6.5/6.4 ->
///   3.9/3.9/3.8;
/// - SqueezeNet 1.1 16->64@55 0.615/0.612 -> 0.457/0.458 -> 0.435/0.436, 32->128@27
///   0.600/0.598 -> 0.393/0.390 -> 0.343/0.345, 48->192@13 0.335/0.330 -> 0.234/0.233
///   -> 0.202/0.202, 64->256@13 0.712/0.712 -> 0.393/0.391 -> 0.316/0.316.
fn avx2_prefers_f4(shape: &ConvShape) -> bool {
    shape.out_h.div_ceil(4) * shape.out_w.div_ceil(4) >= 16
}

/// The most bytes of F(4x4)'s transformed weights `U` for 36 to 63 tiles (between
/// SqueezeNet's 32->128, 0.6 MB, and Inception's 96->128, 1.8 MB, which ran faster, and
/// ResNet's 128->128, 2.4 MB, which ran slower).
const F4_WEIGHT_BYTES: usize = 2 << 20;

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
    /// When present, `(rows, condition)`: the rows from `rows` on are stored only under
    /// `condition`.
    some_rows: Option<(usize, Value)>,
    epilogue: &'e Epilogue,
}

/// Rows of tiles per chunk: the chunk's `V` and `M` (`floats` per tile: elements times
/// input and output channels) within `budget` bytes, at least one row;
/// among those, the fewest pixel lanes computed (each chunk's tiles rounded up to whole
/// vectors of 16, plus one vector's worth per chunk for its pass over the weights and
/// its barriers), then the most rows.
fn choose_rows(tiles_h: usize, tiles_w: usize, floats: usize, budget: usize) -> usize {
    let most_tiles = (budget / (4 * floats)).max(tiles_w);
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

/// `sum_k coeffs[k] x_k` over the nonzero coefficients, `x_k` from `value(k)` (called
/// once for each), in a fixed order whatever the type: from the first term of positive
/// coefficient, then the others in order, each added or subtracted (times `|c|` unless
/// 1). No FMA, so one tile's value has the same bits in an f32 and in any f32x4 lane.
fn dot(kb: &mut Kb, coeffs: &[f32], mut value: impl FnMut(&mut Kb, usize) -> Value) -> Value {
    let first = coeffs.iter().position(|&c| c > 0.0).expect("every transform row has a positive coefficient");
    let mut term = |kb: &mut Kb, k: usize| {
        let x = value(kb, k);
        let c = coeffs[k].abs();
        if c == 1.0 {
            x
        } else {
            let ty = kb.fb.func.dfg.value_type(x);
            let c = kb.constant(ty, c);
            kb.fb.ins().fmul(x, c)
        }
    };
    let mut sum = term(kb, first);
    for (k, &c) in coeffs.iter().enumerate() {
        if k == first || c == 0.0 {
            continue;
        }
        let t = term(kb, k);
        sum = if c > 0.0 { kb.fb.ins().fadd(sum, t) } else { kb.fb.ins().fsub(sum, t) };
    }
    sum
}

/// A 4x4 transpose of f32x4 rows: `[a, b, c, d]` to their columns.
fn transpose(kb: &mut Kb, [a, b, c, d]: [Value; 4]) -> [Value; 4] {
    let ab_lo = shuffle(kb, a, b, [0, 4, 1, 5]);
    let cd_lo = shuffle(kb, c, d, [0, 4, 1, 5]);
    let ab_hi = shuffle(kb, a, b, [2, 6, 3, 7]);
    let cd_hi = shuffle(kb, c, d, [2, 6, 3, 7]);
    [
        shuffle(kb, ab_lo, cd_lo, [0, 1, 4, 5]),
        shuffle(kb, ab_lo, cd_lo, [2, 3, 6, 7]),
        shuffle(kb, ab_hi, cd_hi, [0, 1, 4, 5]),
        shuffle(kb, ab_hi, cd_hi, [2, 3, 6, 7]),
    ]
}

/// Byte offsets, from four consecutive tiles' first input column, of the f32x4 vectors
/// of a row that [`columns`] rearranges: F(2x2) columns 0-3, 4-7, 2-5, 6-9; F(4x4)
/// columns 0-3, 4-7, 8-11, 12-15, then 2-5, 6-9, 10-13, 14-17.
fn raw_offsets(m: usize) -> &'static [i64] {
    if m == 2 { &[0, 16, 8, 24] } else { &[0, 16, 32, 48, 8, 24, 40, 56] }
}

/// The `alpha` vectors of column `j` of four consecutive tiles (lane `k`: input column
/// `m k + j`) from a row's vectors at [`raw_offsets`]: F(2x2) splits even and odd columns
/// by shuffles, F(4x4) transposes (the second transpose only for columns 4 and 5).
fn columns(kb: &mut Kb, m: usize, raw: &[Value]) -> Vec<Value> {
    if m == 2 {
        vec![
            shuffle(kb, raw[0], raw[1], [0, 2, 4, 6]),
            shuffle(kb, raw[0], raw[1], [1, 3, 5, 7]),
            shuffle(kb, raw[2], raw[3], [0, 2, 4, 6]),
            shuffle(kb, raw[2], raw[3], [1, 3, 5, 7]),
        ]
    } else {
        let mut out = transpose(kb, [raw[0], raw[1], raw[2], raw[3]]).to_vec();
        // Lanes 2 and 3 of the vectors from columns 2, 6, 10, 14: columns 4 and 5.
        let lo = shuffle(kb, raw[4], raw[5], [2, 6, 3, 7]);
        let hi = shuffle(kb, raw[6], raw[7], [2, 6, 3, 7]);
        out.push(shuffle(kb, lo, hi, [0, 1, 4, 5]));
        out.push(shuffle(kb, lo, hi, [2, 3, 6, 7]));
        out
    }
}

/// The input transform of one tile (`ty` F32) or four consecutive tiles of a row
/// (F32X4): the `alpha x alpha` windows from `src` (the first tile's top-left input,
/// rows `row_bytes` apart), `V[xi] = (B^T d B)[xi]` stored at `dst + xi * xi_stride`.
/// Row by row of `B^T d`: the vertical sums on whole input vectors, then the tiles'
/// columns gathered by shuffles, then the horizontal sums.
fn input_tiles(kb: &mut Kb, ty: Type, bt: &[&[f32]], src: Value, row_bytes: i64, dst: Value, xi_stride: i64) {
    let alpha = bt.len();
    let m = alpha - 2;
    for (i, bt_i) in bt.iter().enumerate() {
        // `B^T d` row i at the tile's (or the tiles') columns 0..alpha.
        let cols: Vec<Value> = if ty == F32 {
            (0..alpha).map(|j| dot(kb, bt_i, |kb, k| kb.load(F32, src, k as i64 * row_bytes + 4 * j as i64))).collect()
        } else {
            let raw: Vec<Value> = raw_offsets(m)
                .iter()
                .map(|&offset| dot(kb, bt_i, |kb, k| kb.load(F32X4, src, k as i64 * row_bytes + offset)))
                .collect();
            columns(kb, m, &raw)
        };
        // `(B^T d) B` row i: column j combines the columns by row j of `B^T`.
        for (j, bt_j) in bt.iter().enumerate() {
            let value = dot(kb, bt_j, |_, k| cols[k]);
            kb.store(value, dst, (alpha * i + j) as i64 * xi_stride);
        }
    }
}

/// The output transform of one tile (`ty` F32) or four consecutive tiles (F32X4):
/// `M[xi]` from `m + xi * xi_stride`, `A^T M A`, the epilogue, and the stores of
/// `columns` (1 to `m`; all `m` for F32X4) columns per tile row from `out` (rows
/// `store.row_bytes` apart).
#[allow(clippy::too_many_arguments)]
fn output_tiles(
    kb: &mut Kb,
    ty: Type,
    at: &[&[f32]],
    m: Value,
    xi_stride: i64,
    out: Value,
    residual: Option<Value>,
    store: &Store,
    columns: usize,
) {
    let (size, alpha) = (at.len(), at[0].len());
    // `A^T M`, column by column of `M`: s[r][j].
    let mut s = vec![Vec::new(); size];
    for j in 0..alpha {
        let m_j: Vec<Value> = (0..alpha).map(|i| kb.load(ty, m, (alpha * i + j) as i64 * xi_stride)).collect();
        for (r, at_r) in at.iter().enumerate() {
            let value = dot(kb, at_r, |_, i| m_j[i]);
            s[r].push(value);
        }
    }
    for (r, s_r) in s.iter().enumerate() {
        // `(A^T M) A` row r: y[c] combines row r by row c of `A^T`.
        let y: Vec<Value> = at.iter().map(|at_c| dot(kb, at_c, |_, j| s_r[j])).collect();
        let row = r as i64 * store.row_bytes;
        let emit_row = |kb: &mut Kb| {
            // (value, byte offset in the row) of what this row stores.
            let values: Vec<(Value, i64)> = if ty == F32 {
                y.iter().take(columns).enumerate().map(|(c, &v)| (v, 4 * c as i64)).collect()
            } else if size == 2 {
                // Interleave the tiles' two columns: output columns 2 tx .. 2 tx + 8.
                vec![(shuffle(kb, y[0], y[1], [0, 4, 1, 5]), 0), (shuffle(kb, y[0], y[1], [2, 6, 3, 7]), 16)]
            } else {
                // Each tile's four columns: output columns 4 tx .. 4 tx + 16.
                let tiles = transpose(kb, [y[0], y[1], y[2], y[3]]);
                tiles.into_iter().enumerate().map(|(k, v)| (v, 16 * k as i64)).collect()
            };
            for (value, offset) in values {
                let value = kb.epilogue(store.epilogue, value, residual.map(|res| (res, row + offset)));
                kb.store(value, out, row + offset);
            }
        };
        match store.some_rows {
            Some((rows, condition)) if r >= rows => kb.when(condition, emit_row),
            _ => emit_row(kb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of values in [-1, 1).
    fn values(seed: u64, count: usize) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// `A^T [(G g G^T) . (B^T d B)] A` in f64 equals the direct 3x3 correlation of the
    /// `alpha x alpha` window, for both variants' matrices.
    #[test]
    fn transforms_compute_the_convolution_of_a_tile() {
        for m in [2, 4] {
            let (gm, bt, at) = matrices(m);
            let alpha = m + 2;
            assert_eq!((gm.len(), bt.len(), at.len()), (alpha, alpha, m));
            for seed in 0..20 {
                let g = values(seed, 9);
                let d = values(100 + seed, alpha * alpha);
                let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                let u = transform_filter(gm, &g32);
                let bt = |i: usize, k: usize| bt[i][k] as f64;
                let mut v = vec![0.0; alpha * alpha];
                for i in 0..alpha {
                    for j in 0..alpha {
                        v[alpha * i + j] = (0..alpha)
                            .flat_map(|k| (0..alpha).map(move |l| (k, l)))
                            .map(|(k, l)| bt(i, k) * d[alpha * k + l] * bt(j, l))
                            .sum();
                    }
                }
                for r in 0..m {
                    for c in 0..m {
                        let winograd: f64 = (0..alpha)
                            .flat_map(|i| (0..alpha).map(move |j| (i, j)))
                            .map(|(i, j)| at[r][i] as f64 * u[alpha * i + j] * v[alpha * i + j] * at[c][j] as f64)
                            .sum();
                        let direct: f64 = (0..3)
                            .flat_map(|a| (0..3).map(move |b| (a, b)))
                            .map(|(a, b)| g32[3 * a + b] as f64 * d[alpha * (r + a) + c + b])
                            .sum();
                        assert!(
                            (winograd - direct).abs() < 1e-12,
                            "F({m}x{m}) output ({r}, {c}): {winograd} != {direct}"
                        );
                    }
                }
                // The bias element enters every output with weight 1.
                assert!((0..m).all(|r| at[r][1] == 1.0));
            }
        }
    }
}
