//! Normalizations: softmax over dimension 1, local response normalization (PyTorch's
//! `LocalResponseNorm`) and layer normalization over one dimension.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};

use super::{F32, F32X4, Kb, Loc};

/// Splits a shape into (batch, channels, positions per channel).
fn split(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// Softmax over dimension 1, for every other index: the maximum is subtracted before
/// exponentiating (`expf`), then each value is divided by the sum.
pub(crate) fn emit_softmax(kb: &mut Kb, shape: &[usize], x: Loc, out: Loc) {
    let (batch, channels, inner) = split(shape);
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let channel_stride = (inner * 4) as i64;
    let expf = kb.math.expf;
    kb.for_range(batch, |kb, n| {
        let src_n = kb.index(src, n, channel_stride * channels as i64);
        let dst_n = kb.index(dst, n, channel_stride * channels as i64);
        kb.for_range(inner, |kb, s| {
            let src = kb.index(src_n, s, 4);
            let dst = kb.index(dst_n, s, 4);
            let max_var = kb.fb.declare_var(F32);
            let minus_infinity = kb.f32(f32::NEG_INFINITY);
            kb.fb.def_var(max_var, minus_infinity);
            kb.for_range(channels, |kb, c| {
                let addr = kb.index(src, c, channel_stride);
                let v = kb.load(F32, addr, 0);
                let max = kb.fb.use_var(max_var);
                let greater = kb.fb.ins().fcmp(FloatCC::GreaterThan, v, max);
                let max = kb.fb.ins().select(greater, v, max);
                kb.fb.def_var(max_var, max);
            });
            let max = kb.fb.use_var(max_var);
            let sum_var = kb.fb.declare_var(F32);
            let zero = kb.f32(0.0);
            kb.fb.def_var(sum_var, zero);
            kb.for_range(channels, |kb, c| {
                let from = kb.index(src, c, channel_stride);
                let v = kb.load(F32, from, 0);
                let shifted = kb.fb.ins().fsub(v, max);
                let e = kb.call1(expf, shifted);
                let to = kb.index(dst, c, channel_stride);
                kb.store(e, to, 0);
                let sum = kb.fb.use_var(sum_var);
                let sum = kb.fb.ins().fadd(sum, e);
                kb.fb.def_var(sum_var, sum);
            });
            let sum = kb.fb.use_var(sum_var);
            kb.for_range(channels, |kb, c| {
                let addr = kb.index(dst, c, channel_stride);
                let e = kb.load(F32, addr, 0);
                let y = kb.fb.ins().fdiv(e, sum);
                kb.store(y, addr, 0);
            });
        });
    });
}

/// Local response normalization: `b = a / (k + alpha/size * sum of squares)^beta`, the
/// sum over channels `c - size/2 ..= c + (size-1)/2` clipped to the tensor (PyTorch's
/// zero padding). Vectorized over the positions of a channel.
pub(crate) struct Lrn {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

pub(crate) fn emit_lrn(kb: &mut Kb, lrn: &Lrn, shape: &[usize], x: Loc, out: Loc) {
    let (batch, channels, inner) = split(shape);
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let channel_stride = (inner * 4) as i64;
    kb.for_range(batch, |kb, n| {
        let src_n = kb.index(src, n, channel_stride * channels as i64);
        let dst_n = kb.index(dst, n, channel_stride * channels as i64);
        kb.for_range(channels, |kb, c| {
            // The window's first channel and its length.
            let before = kb.fb.ins().iadd_imm_s(c, -((lrn.size / 2) as i64));
            let zero = kb.iconst(0);
            let first = kb.fb.ins().smax(before, zero);
            let after = kb.fb.ins().iadd_imm_s(c, ((lrn.size - 1) / 2) as i64);
            let last_channel = kb.iconst(channels as i64 - 1);
            let last = kb.fb.ins().smin(after, last_channel);
            let len = kb.fb.ins().isub(last, first);
            let len = kb.fb.ins().iadd_imm_s(len, 1);
            let window = kb.index(src_n, first, channel_stride);
            let center = kb.index(src_n, c, channel_stride);
            let out = kb.index(dst_n, c, channel_stride);
            let vectors = inner / 4;
            kb.for_range(vectors, |kb, i| {
                let offset = kb.fb.ins().imul_imm_s(i, 16);
                let window = kb.fb.ins().iadd(window, offset);
                let center = kb.fb.ins().iadd(center, offset);
                let out = kb.fb.ins().iadd(out, offset);
                emit_lrn_values(kb, lrn, F32X4, window, len, channel_stride, center, out);
            });
            for i in vectors * 4..inner {
                let window = kb.offset(window, 4 * i as i64);
                let center = kb.offset(center, 4 * i as i64);
                let out = kb.offset(out, 4 * i as i64);
                emit_lrn_values(kb, lrn, F32, window, len, channel_stride, center, out);
            }
        });
    });
}

/// One LRN output value (or four, for F32X4) at `out`.
#[allow(clippy::too_many_arguments)]
fn emit_lrn_values(
    kb: &mut Kb,
    lrn: &Lrn,
    ty: Type,
    window: Value,
    len: Value,
    channel_stride: i64,
    center: Value,
    out: Value,
) {
    let sum_var = kb.fb.declare_var(ty);
    let zero = kb.constant(ty, 0.0);
    kb.fb.def_var(sum_var, zero);
    kb.for_dynamic(len, |kb, j| {
        let addr = kb.index(window, j, channel_stride);
        let v = kb.load(ty, addr, 0);
        let sum = kb.fb.use_var(sum_var);
        let sum = kb.mul_add(v, v, sum);
        kb.fb.def_var(sum_var, sum);
    });
    let sum = kb.fb.use_var(sum_var);
    let scale = kb.constant(ty, (lrn.alpha / lrn.size as f64) as f32);
    let k = kb.constant(ty, lrn.k as f32);
    let base = kb.mul_add(sum, scale, k);
    let power = if lrn.beta == 0.75 {
        // base^0.75 = sqrt(base) * sqrt(sqrt(base)), no libm call.
        let root = kb.fb.ins().sqrt(base);
        let fourth_root = kb.fb.ins().sqrt(root);
        kb.fb.ins().fmul(root, fourth_root)
    } else if lrn.beta == 0.5 {
        kb.fb.ins().sqrt(base)
    } else if lrn.beta == 1.0 {
        base
    } else {
        let powf = kb.math.powf;
        let beta = kb.f32(lrn.beta as f32);
        kb.map_lanes(base, |kb, b| {
            let call = kb.fb.ins().call(powf, &[b, beta]);
            kb.fb.inst_results(call)[0]
        })
    };
    let a = kb.load(ty, center, 0);
    let y = kb.fb.ins().fdiv(a, power);
    kb.store(y, out, 0);
}

/// Layer normalization over one dimension of `count` values, for each of `outer` x
/// `inner` positions (`[outer, count, inner]`): `y = (x - mean) / sqrt(var + eps) *
/// weight + bias`, the variance biased, mean and variance in two passes. The data holds
/// `weight` then `bias`, `count` floats each.
pub(crate) struct LayerNorm {
    pub outer: usize,
    pub count: usize,
    pub inner: usize,
    pub eps: f64,
}

pub(crate) fn emit_layer_norm(kb: &mut Kb, ln: &LayerNorm, x: Loc, out: Loc) {
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let data = kb.data();
    let row_bytes = (ln.count * ln.inner * 4) as i64;
    if ln.inner == 1 {
        // The normalized values are contiguous (the last dimension): f32x4 along them.
        kb.for_share(ln.outer, |kb, row| {
            let src = kb.index(src, row, row_bytes);
            let dst = kb.index(dst, row, row_bytes);
            emit_layer_norm_row(kb, ln, src, dst, data);
        });
        return;
    }
    // Dimension 1 of [N, C, H, W]: four positions at a time, the channels `inner` apart.
    let vectors = ln.inner / 4;
    let channel_stride = (ln.inner * 4) as i64;
    kb.for_share(ln.outer * vectors, |kb, block| {
        let n = kb.fb.ins().udiv_imm_u(block, vectors as i64);
        let v = kb.fb.ins().urem_imm_u(block, vectors as i64);
        let base = kb.fb.ins().imul_imm_s(n, row_bytes);
        let position = kb.fb.ins().imul_imm_s(v, 16);
        let offset = kb.fb.ins().iadd(base, position);
        let src = kb.fb.ins().iadd(src, offset);
        let dst = kb.fb.ins().iadd(dst, offset);
        emit_layer_norm_strided(kb, ln, F32X4, src, dst, channel_stride, data);
    });
    if !ln.inner.is_multiple_of(4) {
        kb.on_last_part(|kb| {
            kb.for_range(ln.outer, |kb, n| {
                for s in vectors * 4..ln.inner {
                    let base = kb.fb.ins().imul_imm_s(n, row_bytes);
                    let base = kb.fb.ins().iadd_imm_s(base, 4 * s as i64);
                    let src = kb.fb.ins().iadd(src, base);
                    let dst = kb.fb.ins().iadd(dst, base);
                    emit_layer_norm_strided(kb, ln, F32, src, dst, channel_stride, data);
                }
            });
        });
    }
}

/// The sum of the four lanes of an f32x4.
fn lane_sum(kb: &mut Kb, v: Value) -> Value {
    let lanes: Vec<Value> = (0..4u8).map(|lane| kb.fb.ins().extractlane(v, lane)).collect();
    let low = kb.fb.ins().fadd(lanes[0], lanes[1]);
    let high = kb.fb.ins().fadd(lanes[2], lanes[3]);
    kb.fb.ins().fadd(low, high)
}

/// Sums `f(value)` over a contiguous row of `count` floats: f32x4 steps, then single
/// floats.
fn row_sum(kb: &mut Kb, src: Value, count: usize, f: impl Fn(&mut Kb, Value) -> Value) -> Value {
    let vector_var = kb.fb.declare_var(F32X4);
    let zero = kb.constant(F32X4, 0.0);
    kb.fb.def_var(vector_var, zero);
    kb.for_range(count / 4, |kb, i| {
        let addr = kb.index(src, i, 16);
        let v = kb.load(F32X4, addr, 0);
        let term = f(kb, v);
        let acc = kb.fb.use_var(vector_var);
        let acc = kb.fb.ins().fadd(acc, term);
        kb.fb.def_var(vector_var, acc);
    });
    let acc = kb.fb.use_var(vector_var);
    let mut sum = lane_sum(kb, acc);
    for i in count / 4 * 4..count {
        let v = kb.load(F32, src, 4 * i as i64);
        let term = f(kb, v);
        sum = kb.fb.ins().fadd(sum, term);
    }
    sum
}

fn emit_layer_norm_row(kb: &mut Kb, ln: &LayerNorm, src: Value, dst: Value, data: Value) {
    let inverse_count = kb.f32(1.0 / ln.count as f32);
    let sum = row_sum(kb, src, ln.count, |_, v| v);
    let mean = kb.fb.ins().fmul(sum, inverse_count);
    let mean_v = kb.fb.ins().splat(F32X4, mean);
    let squares = row_sum(kb, src, ln.count, |kb, v| {
        let m = if kb.fb.func.dfg.value_type(v) == F32 { mean } else { mean_v };
        let d = kb.fb.ins().fsub(v, m);
        kb.fb.ins().fmul(d, d)
    });
    let var = kb.fb.ins().fmul(squares, inverse_count);
    let eps = kb.f32(ln.eps as f32);
    let var = kb.fb.ins().fadd(var, eps);
    let root = kb.fb.ins().sqrt(var);
    let one = kb.f32(1.0);
    let inverse = kb.fb.ins().fdiv(one, root);
    let inverse_v = kb.fb.ins().splat(F32X4, inverse);
    let bias = kb.offset(data, 4 * ln.count as i64);
    kb.map_floats(ln.count, &[src, data, bias], dst, |kb, ty, v| {
        let (m, inv) = if ty == F32 { (mean, inverse) } else { (mean_v, inverse_v) };
        let d = kb.fb.ins().fsub(v[0], m);
        let normalized = kb.fb.ins().fmul(d, inv);
        kb.mul_add(normalized, v[1], v[2])
    });
}

/// One position's (or four neighbouring positions', for F32X4) normalization over
/// `count` values `stride` bytes apart.
fn emit_layer_norm_strided(kb: &mut Kb, ln: &LayerNorm, ty: Type, src: Value, dst: Value, stride: i64, data: Value) {
    let sum_of = |kb: &mut Kb, f: &dyn Fn(&mut Kb, Value) -> Value| {
        let var = kb.fb.declare_var(ty);
        let zero = kb.constant(ty, 0.0);
        kb.fb.def_var(var, zero);
        kb.for_range(ln.count, |kb, c| {
            let addr = kb.index(src, c, stride);
            let v = kb.load(ty, addr, 0);
            let term = f(kb, v);
            let acc = kb.fb.use_var(var);
            let acc = kb.fb.ins().fadd(acc, term);
            kb.fb.def_var(var, acc);
        });
        kb.fb.use_var(var)
    };
    let inverse_count = kb.constant(ty, 1.0 / ln.count as f32);
    let sum = sum_of(kb, &|_, v| v);
    let mean = kb.fb.ins().fmul(sum, inverse_count);
    let squares = sum_of(kb, &|kb, v| {
        let d = kb.fb.ins().fsub(v, mean);
        kb.fb.ins().fmul(d, d)
    });
    let var = kb.fb.ins().fmul(squares, inverse_count);
    let eps = kb.constant(ty, ln.eps as f32);
    let var = kb.fb.ins().fadd(var, eps);
    let root = kb.fb.ins().sqrt(var);
    let one = kb.constant(ty, 1.0);
    let inverse = kb.fb.ins().fdiv(one, root);
    kb.for_range(ln.count, |kb, c| {
        let from = kb.index(src, c, stride);
        let v = kb.load(ty, from, 0);
        let weight_addr = kb.index(data, c, 4);
        let weight = kb.load_weight(F32, weight_addr, 0);
        let bias = kb.load_weight(F32, weight_addr, 4 * ln.count as i64);
        let (weight, bias) =
            if ty == F32 { (weight, bias) } else { (kb.fb.ins().splat(F32X4, weight), kb.fb.ins().splat(F32X4, bias)) };
        let d = kb.fb.ins().fsub(v, mean);
        let normalized = kb.fb.ins().fmul(d, inverse);
        let y = kb.mul_add(normalized, weight, bias);
        let to = kb.index(dst, c, stride);
        kb.store(y, to, 0);
    });
}
