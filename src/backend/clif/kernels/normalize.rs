//! Normalizations across channels: softmax over dimension 1 and local response
//! normalization (PyTorch's `LocalResponseNorm`).

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
