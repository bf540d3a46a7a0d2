//! Pooling: max and average pooling (padding, `ceil`, `count_pad`), adaptive average
//! pooling (PyTorch's bins) and the global pools.
//!
//! Max and average pooling see every window whole: a plane whose windows reach past its
//! edges (padding, `ceil`) is first copied into scratch space with a border of -inf (max;
//! it never wins) or 0 (sums), wide enough for the last window. Four outputs of a row are
//! then computed at once in f32x4 registers, with one vector load per tap at stride 1
//! and two loads and a `shufps` at stride 2 (other strides run one output at a time).
//! Dilated pooling (max, and ONNX's dilated average) reads its taps `dilation` apart in
//! the padded copy.
//! Undilated max pooling (k x k, k > 1) runs in two passes per output row instead (`separable`),
//! reading the input in place: the maxima of the window's rows inside the input, column
//! by column, into a row buffer whose border columns are -inf, then the windows over
//! that row. Padding only leaves rows out of the first pass (the edge rows are emitted
//! one by one), so nothing is copied.
//! Average divisors follow PyTorch's clipping rules (the interpreter's `window`): a
//! constant when every window is whole, else per-row and per-column factors from tables
//! in read-only data. Adaptive pools read their uneven bins from tables; global pools
//! reduce each plane with f32x4 partial results.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};

use super::x86::{PoolSpec, Simd, Ukernel};
use super::{F32, F32X4, Kb, Loc};
use crate::ir::{Hw, Pool};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolKind {
    Max,
    Avg,
}

/// One window along one dimension: the real input positions and, for averages, the
/// length that divides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    start: usize,
    len: usize,
    divisor: usize,
}

/// The windows of a pooling op along a dimension of `in_len` giving `out_len` outputs,
/// clipped as the interpreter (and PyTorch) clip them. With `dilation` above 1 only the
/// divisors are meaningful: the number of real taps, or with `count_pad` of taps inside
/// the padded input (the interpreter's dilated average).
fn pool_windows(
    out_len: usize,
    (kernel, stride, dilation): (usize, usize, usize),
    pad_before: usize,
    pad_after: usize,
    in_len: usize,
    count_pad: bool,
) -> Vec<Window> {
    (0..out_len)
        .map(|o| {
            if dilation > 1 {
                let first = (o * stride) as isize - pad_before as isize;
                let taps = |lo: isize, hi: isize| {
                    (0..kernel as isize).map(|i| first + i * dilation as isize).filter(|&p| p >= lo && p < hi).count()
                };
                let real = taps(0, in_len as isize);
                let padded = taps(-(pad_before as isize), (in_len + pad_after) as isize);
                return Window { start: 0, len: real, divisor: if count_pad { padded } else { real } };
            }
            let start = (o * stride) as isize - pad_before as isize;
            let end = (start + kernel as isize).min((in_len + pad_after) as isize);
            let real_start = start.max(0) as usize;
            let real_end = (end.min(in_len as isize).max(0) as usize).max(real_start);
            let padded_len = (end - start).max(0) as usize;
            let len = real_end - real_start;
            Window { start: real_start, len, divisor: if count_pad { padded_len } else { len } }
        })
        .collect()
}

/// PyTorch's adaptive bins: output `i` averages `floor(i*len/out) .. ceil((i+1)*len/out)`.
fn adaptive_windows(out_len: usize, in_len: usize) -> Vec<Window> {
    (0..out_len)
        .map(|i| {
            let start = i * in_len / out_len;
            let end = ((i + 1) * in_len).div_ceil(out_len);
            Window { start, len: end - start, divisor: end - start }
        })
        .collect()
}

/// Max or average pooling over whole windows of a (maybe padded) plane.
struct Windowed {
    kernel: (usize, usize),
    stride: (usize, usize),
    /// The taps' spacing (`dilation`).
    dilation: (usize, usize),
    /// The input's offset in the padded plane (top, left).
    pad: (usize, usize),
    /// The padded plane's height and width (the input's when nothing is padded).
    padded_hw: (usize, usize),
    /// Average divisors per output row and per output column (their product divides),
    /// unless every window divides by the whole kernel.
    divisors: Option<(Vec<f32>, Vec<f32>)>,
}

enum Mode {
    Windowed(Windowed),
    /// Uneven bins read from tables (adaptive pooling).
    Tabled {
        rows: Vec<Window>,
        cols: Vec<Window>,
    },
    /// One output per plane.
    Global,
}

/// A pooling kernel over `planes` planes of `in_h x in_w`.
pub(crate) struct PoolKernel {
    kind: PoolKind,
    planes: usize,
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    mode: Mode,
    /// Separable max pooling runs its two passes as AVX-512 micro-kernels.
    avx512: bool,
    /// Whether the AVX-512 micro-kernels were written and tested for this padding:
    /// symmetric, at most half the kernel (PyTorch's cases). Asymmetric pads and pads up
    /// to `kernel - 1` (ONNX's) run on the f32x4 code until the tiles are checked on them.
    tiles_tested: bool,
}

impl PoolKernel {
    /// `in_shape` is `[N, C, H, W]`, `out_hw` the output's height and width.
    pub fn window(kind: PoolKind, pool: &Pool, in_shape: &[usize], out_hw: (usize, usize)) -> PoolKernel {
        let (in_h, in_w) = (in_shape[2], in_shape[3]);
        let (k, s, p, d) = (pool.kernel, pool.stride, pool.pad, pool.dilation);
        // Enough padding for the last window, whatever `ceil` made of the output size.
        let span = |k: usize, d: usize| (k - 1) * d + 1;
        let padded_h = (p.top + in_h + p.bottom).max((out_hw.0 - 1) * s.h + span(k.h, d.h)).max(p.top + in_h);
        let padded_w = (p.left + in_w + p.right).max((out_hw.1 - 1) * s.w + span(k.w, d.w)).max(p.left + in_w);
        let divisors = (kind == PoolKind::Avg).then(|| {
            let count_pad = pool.count_pad;
            let rows = pool_windows(out_hw.0, (k.h, s.h, d.h), p.top, p.bottom, in_h, count_pad);
            let cols = pool_windows(out_hw.1, (k.w, s.w, d.w), p.left, p.right, in_w, count_pad);
            let whole = rows.iter().all(|w| w.divisor == k.h) && cols.iter().all(|w| w.divisor == k.w);
            (!whole).then(|| {
                let factors = |windows: &[Window]| windows.iter().map(|w| w.divisor as f32).collect();
                (factors(&rows), factors(&cols))
            })
        });
        let windowed = Windowed {
            kernel: (k.h, k.w),
            stride: (s.h, s.w),
            dilation: (d.h, d.w),
            pad: (p.top, p.left),
            padded_hw: (padded_h, padded_w),
            divisors: divisors.flatten(),
        };
        PoolKernel {
            kind,
            planes: in_shape[0] * in_shape[1],
            in_hw: (in_h, in_w),
            out_hw,
            mode: Mode::Windowed(windowed),
            avx512: false,
            tiles_tested: p.top == p.bottom
                && p.left == p.right
                && 2 * p.top <= k.h
                && 2 * p.left <= k.w
                && d == Hw::square(1),
        }
    }

    pub fn adaptive(in_shape: &[usize], out_hw: (usize, usize)) -> PoolKernel {
        let (in_h, in_w) = (in_shape[2], in_shape[3]);
        let mode = if out_hw == (1, 1) {
            Mode::Global
        } else {
            Mode::Tabled { rows: adaptive_windows(out_hw.0, in_h), cols: adaptive_windows(out_hw.1, in_w) }
        };
        PoolKernel {
            kind: PoolKind::Avg,
            planes: in_shape[0] * in_shape[1],
            in_hw: (in_h, in_w),
            out_hw,
            mode,
            avx512: false,
            tiles_tested: true,
        }
    }

    pub fn global(kind: PoolKind, in_shape: &[usize]) -> PoolKernel {
        PoolKernel {
            kind,
            planes: in_shape[0] * in_shape[1],
            in_hw: (in_shape[2], in_shape[3]),
            out_hw: (1, 1),
            mode: Mode::Global,
            avx512: false,
            tiles_tested: true,
        }
    }

    /// Runs a separable max pooling's passes on AVX-512 micro-kernels when `simd` is
    /// AVX-512 and the tiles were tested on its padding (`tiles_tested`).
    pub fn with_simd(mut self, simd: Option<Simd>) -> PoolKernel {
        self.avx512 = simd == Some(Simd::Avx512) && self.tiles_tested;
        self
    }

    /// Whether the micro-kernels run this pooling.
    fn tiled(&self) -> Option<&Windowed> {
        match &self.mode {
            Mode::Windowed(w) if self.avx512 && self.separable(w) => Some(w),
            _ => None,
        }
    }

    /// The micro-kernels: the column pass for each count of window rows inside the
    /// input, and the window pass.
    pub fn tile_specs(&self) -> Vec<Ukernel> {
        let Some(w) = self.tiled() else { return Vec::new() };
        let mut rows: Vec<usize> = (0..self.out_hw.0).map(|oh| self.rows_of(w, oh).1).collect();
        rows.sort_unstable();
        rows.dedup();
        rows.into_iter()
            .map(|rows| Ukernel::Pool(self.columns_spec(rows)))
            .chain(std::iter::once(Ukernel::Pool(self.windows_spec(w))))
            .collect()
    }

    fn columns_spec(&self, rows: usize) -> PoolSpec {
        PoolSpec::Columns { width: self.in_hw.1, rows, row_bytes: (4 * self.in_hw.1) as i64 }
    }

    fn windows_spec(&self, w: &Windowed) -> PoolSpec {
        PoolSpec::Windows { outputs: self.out_hw.1, taps: w.kernel.1, stride: w.stride.1 }
    }

    /// The first input row of output row `oh`'s window inside the input, and how many.
    fn rows_of(&self, w: &Windowed, oh: usize) -> (usize, usize) {
        let first = (oh * w.stride.0) as isize - w.pad.0 as isize;
        let start = first.max(0) as usize;
        let end = ((first + w.kernel.0 as isize).max(0) as usize).min(self.in_hw.0);
        (start, end.saturating_sub(start))
    }

    pub fn algorithm(&self) -> String {
        match &self.mode {
            Mode::Windowed(_) if self.tiled().is_some() => "separable max, AVX-512 rows".into(),
            Mode::Windowed(w) if self.separable(w) => "separable max, f32x4 rows".into(),
            Mode::Windowed(_) => "windows, f32x4".into(),
            Mode::Tabled { .. } => "adaptive bins".into(),
            Mode::Global => "global, f32x4".into(),
        }
    }

    /// The read-only data the kernel reads: divisor factors (f32, rows then columns) or
    /// window tables (i32 `start, len, divisor` per row, then per column).
    pub fn data(&self) -> Option<Vec<u8>> {
        match &self.mode {
            Mode::Windowed(Windowed { divisors: Some((rows, cols)), .. }) => {
                Some(rows.iter().chain(cols).flat_map(|x| x.to_le_bytes()).collect())
            }
            Mode::Tabled { rows, cols } => Some(
                rows.iter()
                    .chain(cols)
                    .flat_map(|w| [w.start as i32, w.len as i32, w.divisor as i32])
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Whether the windowed plane needs a padded copy.
    fn padded(w: &Windowed, in_hw: (usize, usize)) -> bool {
        w.pad != (0, 0) || w.padded_hw != in_hw
    }

    /// Whether a max pooling runs in two passes per output row: the maximum of the
    /// window's rows, column by column, into a row of scratch, then the maximum of each
    /// window's columns of that row. A k x k window then takes about 2k maxima per output
    /// instead of k^2 (the maximum is exact, so the result is the same).
    /// It reads the input plane in place: the window rows that padding clips are left
    /// out, and the row buffer carries the border of -inf columns (no padded copy).
    fn separable(&self, w: &Windowed) -> bool {
        self.kind == PoolKind::Max && w.kernel.0 > 1 && w.dilation == (1, 1) && self.vector(w) && self.in_hw.1 >= 4
    }

    /// Whether four outputs of a row are computed at once (see `emit_windowed`).
    fn vector(&self, w: &Windowed) -> bool {
        self.out_hw.1 >= 4 && (w.stride.1 == 1 || w.stride.1 == 2)
    }

    /// Scratch bytes for one padded plane or, for a separable pooling, one row of it
    /// (each part of a run needs its own), rounded to a page so that the parts' scratch
    /// shares no cache line. Measured on Inception's 3x3 pool with two threads: 0.35 ms
    /// with the row buffers adjacent, 0.13-0.17 rounded to 128 bytes, 0.11 to 4 KiB.
    pub fn scratch_bytes(&self) -> usize {
        self.part_scratch_bytes().div_ceil(4096) * 4096
    }

    fn part_scratch_bytes(&self) -> usize {
        match &self.mode {
            Mode::Windowed(w) => {
                let copied = Self::padded(w, self.in_hw) && !self.separable(w);
                let plane = if copied { 4 * w.padded_hw.0 * w.padded_hw.1 } else { 0 };
                let row = match self.tiled() {
                    Some(w) => 4 * w.padded_hw.1.max(self.windows_spec(w).reach()),
                    None if self.separable(w) => 4 * w.padded_hw.1,
                    None => 0,
                };
                plane + row
            }
            _ => 0,
        }
    }

    pub fn emit(&self, kb: &mut Kb, x: Loc, out: Loc, scratch: Loc) {
        let src = kb.addr(x);
        let dst = kb.addr(out);
        let scratch = kb.addr(scratch);
        let in_plane = (self.in_hw.0 * self.in_hw.1 * 4) as i64;
        let out_plane = (self.out_hw.0 * self.out_hw.1 * 4) as i64;
        // Each part pads into a plane of its own.
        let scratch = kb.index(scratch, kb.part, self.scratch_bytes() as i64);
        kb.for_share(self.planes, |kb, plane| {
            let src = kb.index(src, plane, in_plane);
            let dst = kb.index(dst, plane, out_plane);
            match &self.mode {
                Mode::Global => self.emit_global(kb, src, dst),
                Mode::Tabled { .. } => self.emit_tabled(kb, src, dst),
                Mode::Windowed(w) if self.separable(w) => self.emit_separable(kb, w, src, scratch, dst),
                Mode::Windowed(w) => {
                    let padded = Self::padded(w, self.in_hw);
                    let plane = if padded {
                        self.emit_pad_copy(kb, w, src, scratch);
                        scratch
                    } else {
                        src
                    };
                    self.emit_windowed(kb, w, plane, dst);
                }
            }
        });
    }

    fn initial(&self, kb: &mut Kb, ty: Type) -> Value {
        match self.kind {
            PoolKind::Max => kb.constant(ty, f32::NEG_INFINITY),
            PoolKind::Avg => kb.constant(ty, 0.0),
        }
    }

    /// Folds one value into the running maximum or sum. The maximum takes NaN, as the
    /// interpreter (and PyTorch) do.
    fn accumulate(&self, kb: &mut Kb, acc: Value, v: Value) -> Value {
        match self.kind {
            PoolKind::Avg => kb.fb.ins().fadd(acc, v),
            PoolKind::Max if kb.fb.func.dfg.value_type(v) == F32 => {
                let greater = kb.fb.ins().fcmp(FloatCC::GreaterThan, v, acc);
                let nan = kb.fb.ins().fcmp(FloatCC::Unordered, v, v);
                let take = kb.fb.ins().bor(greater, nan);
                kb.fb.ins().select(take, v, acc)
            }
            PoolKind::Max => {
                // `acc < v ? v : acc` (one `maxps`, which keeps a NaN already in `acc`),
                // then a NaN in `v` blended in.
                let less = kb.fb.ins().fcmp(FloatCC::LessThan, acc, v);
                let less = kb.fb.ins().bitcast(F32X4, MemFlagsData::new(), less);
                let max = kb.fb.ins().bitselect(less, v, acc);
                let nan = kb.fb.ins().fcmp(FloatCC::Unordered, v, v);
                let nan = kb.fb.ins().bitcast(F32X4, MemFlagsData::new(), nan);
                kb.fb.ins().bitselect(nan, v, max)
            }
        }
    }

    /// Copies a plane into the scratch space inside a border of the initial value.
    fn emit_pad_copy(&self, kb: &mut Kb, w: &Windowed, src: Value, scratch: Value) {
        let (hp, wp) = w.padded_hw;
        let (in_h, in_w) = self.in_hw;
        let kind = self.kind;
        kb.map_floats(hp * wp, &[], scratch, |kb, ty, _| match kind {
            PoolKind::Max => kb.constant(ty, f32::NEG_INFINITY),
            PoolKind::Avg => kb.constant(ty, 0.0),
        });
        let first = kb.offset(scratch, ((w.pad.0 * wp + w.pad.1) * 4) as i64);
        kb.for_range(in_h, |kb, row| {
            let from = kb.index(src, row, (in_w * 4) as i64);
            let to = kb.index(first, row, (wp * 4) as i64);
            kb.copy_floats(from, to, in_w);
        });
    }

    /// Separable max pooling over the unpadded input plane `src`: per output row, the
    /// maxima of the window's rows inside the input (`emit_column_maxima`) into the
    /// interior of `row_buffer` (`padded_hw.1` wide, its border columns -inf), then the
    /// windows over that row. Rows whose windows padding clips are emitted one by one
    /// with their own row counts; the rows between them run in a loop.
    fn emit_separable(&self, kb: &mut Kb, w: &Windowed, src: Value, row_buffer: Value, dst: Value) {
        let in_w = self.in_hw.1;
        let out_h = self.out_hw.0;
        let (kh, sh) = (w.kernel.0, w.stride.0);
        let (top, left) = w.pad;
        let wp = w.padded_hw.1;
        let border = kb.constant(F32, f32::NEG_INFINITY);
        for column in (0..left).chain(left + in_w..wp) {
            kb.store(border, row_buffer, 4 * column as i64);
        }
        let interior = kb.offset(row_buffer, 4 * left as i64);
        let row_bytes = (in_w * 4) as i64;
        let tiled = self.tiled().is_some();
        // One output row from the window rows `first..first + rows` of the input.
        let row = |kb: &mut Kb, first: Value, rows: usize, oh: Value| {
            if tiled {
                let columns = Ukernel::Pool(self.columns_spec(rows));
                let columns = kb.tile_kernel(&columns).expect("a column pass for every count of rows");
                kb.fb.ins().call(columns, &[first, interior]);
                let windows = kb.tile_kernel(&Ukernel::Pool(self.windows_spec(w))).expect("the window pass");
                let out_row = kb.index(dst, oh, (self.out_hw.1 * 4) as i64);
                kb.fb.ins().call(windows, &[row_buffer, out_row]);
            } else {
                self.emit_column_maxima(kb, first, rows, interior);
                self.emit_row(kb, w, row_buffer, dst, oh, (1, w.kernel.1));
            }
        };
        // The rows whose windows padding does not clip, a run (the window's first row
        // grows with `oh`).
        let whole = |oh: usize| self.rows_of(w, oh).1 == kh;
        let begin = (0..out_h).find(|&oh| whole(oh)).unwrap_or(out_h);
        let end = (begin..out_h).find(|&oh| !whole(oh)).unwrap_or(out_h);
        let clipped = |kb: &mut Kb, oh: usize| {
            let (start, rows) = self.rows_of(w, oh);
            let first = kb.offset(src, start as i64 * row_bytes);
            let oh = kb.iconst(oh as i64);
            row(kb, first, rows, oh);
        };
        for oh in 0..begin {
            clipped(kb, oh);
        }
        kb.for_range(end - begin, |kb, i| {
            let oh = kb.fb.ins().iadd_imm_s(i, begin as i64);
            let start = kb.fb.ins().imul_imm_s(oh, sh as i64);
            let start = kb.fb.ins().iadd_imm_s(start, -(top as i64));
            let first = kb.index(src, start, row_bytes);
            row(kb, first, kh, oh);
        });
        for oh in end..out_h {
            clipped(kb, oh);
        }
    }

    /// The maxima of `rows` consecutive input rows from `first`, column by column, into
    /// `to` (-inf when no row is left), four columns at a time: the last four overlap
    /// their predecessors rather than run past the row (the input is at least 4 wide).
    fn emit_column_maxima(&self, kb: &mut Kb, first: Value, rows: usize, to: Value) {
        let in_w = self.in_hw.1;
        kb.for_range(in_w.div_ceil(4), |kb, c| {
            let start = kb.fb.ins().imul_imm_s(c, 4);
            let last = kb.iconst(in_w as i64 - 4);
            let x = kb.fb.ins().umin(start, last);
            let at = kb.index(first, x, 4);
            let mut acc = self.initial(kb, F32X4);
            for i in 0..rows {
                let v = kb.load(F32X4, at, (i * in_w * 4) as i64);
                acc = if i == 0 { v } else { self.accumulate(kb, acc, v) };
            }
            let to = kb.index(to, x, 4);
            kb.store(acc, to, 0);
        });
    }

    /// Whole windows over `plane` (`padded_hw` wide): four outputs at a time when the
    /// column stride is 1 or 2 and the row has at least four, else one at a time.
    fn emit_windowed(&self, kb: &mut Kb, w: &Windowed, plane: Value, dst: Value) {
        let (sh, wp) = (w.stride.0, w.padded_hw.1);
        kb.for_range(self.out_hw.0, |kb, oh| {
            let row = kb.index(plane, oh, (sh * wp * 4) as i64);
            self.emit_row(kb, w, row, dst, oh, w.kernel);
        });
    }

    /// Output row `oh` from the `kh x kw` windows whose first row starts at `row`.
    fn emit_row(&self, kb: &mut Kb, w: &Windowed, row: Value, dst: Value, oh: Value, (kh, kw): (usize, usize)) {
        let out_w = self.out_hw.1;
        let sw = w.stride.1;
        let wp = w.padded_hw.1;
        let vector = self.vector(w);
        let divisor_cols = w.divisors.as_ref().map(|_| {
            let data = kb.data();
            kb.offset(data, (self.out_hw.0 * 4) as i64)
        });
        let out_row = kb.index(dst, oh, (out_w * 4) as i64);
        let row_divisor = w.divisors.as_ref().map(|_| {
            let data = kb.data();
            let addr = kb.index(data, oh, 4);
            kb.load_weight(F32, addr, 0)
        });
        let (ty, group) = if vector { (F32X4, 4) } else { (F32, 1) };
        let groups = out_w.div_ceil(group);
        kb.for_range(groups, |kb, g| {
            // The last group of four overlaps its predecessor rather than run past
            // the row.
            let first = kb.fb.ins().imul_imm_s(g, group as i64);
            let last = kb.iconst((out_w - group) as i64);
            let ow = kb.fb.ins().umin(first, last);
            let window = kb.index(row, ow, (sw * 4) as i64);
            let mut acc = None;
            for i in 0..kh {
                for j in 0..kw {
                    let offset = ((i * w.dilation.0 * wp + j * w.dilation.1) * 4) as i64;
                    let v = match (vector, sw) {
                        (false, _) | (true, 1) => kb.load(ty, window, offset),
                        _ => {
                            // Stride 2: elements 0, 2 of one load and 1, 3 of another
                            // three floats on (the last tap read is the last needed).
                            let a = kb.load(F32X4, window, offset);
                            let b = kb.load(F32X4, window, offset + 12);
                            evens(kb, a, b)
                        }
                    };
                    acc = Some(match acc {
                        Some(acc) => self.accumulate(kb, acc, v),
                        None => v,
                    });
                }
            }
            let mut acc = acc.expect("a window has a tap");
            if self.kind == PoolKind::Avg {
                let divisor = match (row_divisor, divisor_cols) {
                    (Some(r), Some(cols)) => {
                        let addr = kb.index(cols, ow, 4);
                        let c = kb.load_weight(ty, addr, 0);
                        let r = if ty == F32 { r } else { kb.fb.ins().splat(F32X4, r) };
                        kb.fb.ins().fmul(r, c)
                    }
                    _ => kb.constant(ty, (kh * kw) as f32),
                };
                acc = kb.fb.ins().fdiv(acc, divisor);
            }
            let out = kb.index(out_row, ow, 4);
            kb.store(acc, out, 0);
        });
    }

    /// Windows from the tables (adaptive bins), one output at a time.
    fn emit_tabled(&self, kb: &mut Kb, src: Value, dst: Value) {
        let (out_h, out_w) = self.out_hw;
        let in_w = self.in_hw.1;
        let data = kb.data();
        let cols_table = kb.offset(data, (out_h * 12) as i64);
        kb.for_range(out_h, |kb, oh| {
            let row_entry = kb.index(data, oh, 12);
            let row_start = kb.load_index(row_entry, 0);
            let row_len = kb.load_index(row_entry, 4);
            let row_divisor = kb.load_index(row_entry, 8);
            let first_row = kb.index(src, row_start, (in_w * 4) as i64);
            let out_row = kb.index(dst, oh, (out_w * 4) as i64);
            kb.for_range(out_w, |kb, ow| {
                let col_entry = kb.index(cols_table, ow, 12);
                let col_start = kb.load_index(col_entry, 0);
                let col_len = kb.load_index(col_entry, 4);
                let first = kb.index(first_row, col_start, 4);
                let acc_var = kb.fb.declare_var(F32);
                let init = self.initial(kb, F32);
                kb.fb.def_var(acc_var, init);
                kb.for_dynamic(row_len, |kb, i| {
                    let row = kb.index(first, i, (in_w * 4) as i64);
                    kb.for_dynamic(col_len, |kb, j| {
                        let addr = kb.index(row, j, 4);
                        let v = kb.load(F32, addr, 0);
                        let acc = kb.fb.use_var(acc_var);
                        let acc = self.accumulate(kb, acc, v);
                        kb.fb.def_var(acc_var, acc);
                    });
                });
                let mut acc = kb.fb.use_var(acc_var);
                if self.kind == PoolKind::Avg {
                    let col_divisor = kb.load_index(col_entry, 8);
                    let divisor = kb.fb.ins().imul(row_divisor, col_divisor);
                    let divisor = kb.fb.ins().fcvt_from_uint(F32, divisor);
                    acc = kb.fb.ins().fdiv(acc, divisor);
                }
                let out = kb.index(out_row, ow, 4);
                kb.store(acc, out, 0);
            });
        });
    }

    /// One output per plane: f32x4 partial results over the plane in four independent
    /// accumulators (one chain of adds waits out each add's latency: MobileNet v3's and
    /// EfficientNet's squeeze-and-excitation pools ran at 1.4 to 1.7 times ORT's time),
    /// then the accumulators and the lanes.
    fn emit_global(&self, kb: &mut Kb, src: Value, dst: Value) {
        const CHAINS: usize = 4;
        let count = self.in_hw.0 * self.in_hw.1;
        let vectors = count / 4;
        let mut acc = self.initial(kb, F32);
        if vectors > 0 {
            let vars: Vec<_> = (0..CHAINS)
                .map(|_| {
                    let var = kb.fb.declare_var(F32X4);
                    let init = self.initial(kb, F32X4);
                    kb.fb.def_var(var, init);
                    var
                })
                .collect();
            let rounds = vectors / CHAINS;
            kb.for_range(rounds, |kb, i| {
                let base = kb.index(src, i, 16 * CHAINS as i64);
                for (c, &var) in vars.iter().enumerate() {
                    let v = kb.load(F32X4, base, 16 * c as i64);
                    let a = kb.fb.use_var(var);
                    let a = self.accumulate(kb, a, v);
                    kb.fb.def_var(var, a);
                }
            });
            for (c, &var) in vars.iter().enumerate().take(vectors - rounds * CHAINS) {
                let v = kb.load(F32X4, src, (16 * (rounds * CHAINS + c)) as i64);
                let a = kb.fb.use_var(var);
                let a = self.accumulate(kb, a, v);
                kb.fb.def_var(var, a);
            }
            let mut partial = kb.fb.use_var(vars[0]);
            for &var in &vars[1..] {
                let next = kb.fb.use_var(var);
                partial = self.accumulate(kb, partial, next);
            }
            for lane in 0..4u8 {
                let v = kb.fb.ins().extractlane(partial, lane);
                acc = self.accumulate(kb, acc, v);
            }
        }
        for i in vectors * 4..count {
            let v = kb.load(F32, src, 4 * i as i64);
            acc = self.accumulate(kb, acc, v);
        }
        if self.kind == PoolKind::Avg {
            let divisor = kb.f32(count as f32);
            acc = kb.fb.ins().fdiv(acc, divisor);
        }
        kb.store(acc, dst, 0);
    }
}

/// Lanes 0 and 2 of `a` and 1 and 3 of `b` (`shufps` on x86-64).
fn evens(kb: &mut Kb, a: Value, b: Value) -> Value {
    const MASK: [u8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23, 28, 29, 30, 31];
    let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let a = kb.fb.ins().bitcast(cranelift_codegen::ir::types::I8X16, little, a);
    let b = kb.fb.ins().bitcast(cranelift_codegen::ir::types::I8X16, little, b);
    let mask = kb.fb.func.dfg.immediates.push(MASK.to_vec().into());
    let shuffled = kb.fb.ins().shuffle(a, b, mask);
    kb.fb.ins().bitcast(F32X4, little, shuffled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Pad;

    fn max_pool(pad: Pad) -> PoolKernel {
        let pool = Pool {
            kernel: Hw::square(3),
            stride: Hw::square(2),
            pad,
            dilation: Hw::square(1),
            ceil: false,
            count_pad: false,
        };
        let (h, w) = (
            crate::ir::shape::window_out_floor(16, 3, 2, pad.top + pad.bottom, 1).expect("fits"),
            crate::ir::shape::window_out_floor(16, 3, 2, pad.left + pad.right, 1).expect("fits"),
        );
        PoolKernel::window(PoolKind::Max, &pool, &[1, 8, 16, 16], (h, w)).with_simd(Some(Simd::Avx512))
    }

    /// The AVX-512 tiles take only the paddings they were tested on (symmetric, at most
    /// half the kernel); the others run on the f32x4 code, whatever the machine.
    #[test]
    fn avx512_tiles_take_only_the_paddings_they_were_tested_on() {
        assert!(max_pool(Pad::symmetric(Hw::square(1))).tiled().is_some());
        assert!(max_pool(Pad::symmetric(Hw::square(0))).tiled().is_some());
        let asymmetric = max_pool(Pad { top: 0, left: 1, bottom: 1, right: 1 });
        assert!(asymmetric.tiled().is_none() && asymmetric.tile_specs().is_empty());
        assert_eq!(asymmetric.algorithm(), "separable max, f32x4 rows");
        assert!(max_pool(Pad::symmetric(Hw::square(2))).tiled().is_none());
    }
}
