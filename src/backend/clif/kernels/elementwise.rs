//! Elementwise kernels: standalone activations, per-channel scale-shift, broadcasting
//! `add` and `mul`, `concat`, and copies. All of them sweep memory in order with f32x4
//! loads and stores and finish with single floats, so an output may be the very memory
//! of its first operand (the memory plan runs these ops in place).

use cranelift_codegen::ir::{InstBuilder, Value};

use super::{F32, F32X4, Kb, Loc};
use crate::ir::{Activation, Epilogue};

/// `out = activation(x)` over `count` floats (this part's share).
pub(crate) fn emit_activation(kb: &mut Kb, activation: Activation, x: Loc, out: Loc, count: usize) {
    let src = kb.addr(x);
    let dst = kb.addr(out);
    share_floats(kb, count, |kb, offset, len| {
        let src = kb.fb.ins().iadd(src, offset);
        let dst = kb.fb.ins().iadd(dst, offset);
        kb.map_floats(len, &[src], dst, |kb, _, v| kb.activation(activation, v[0]));
    });
}

/// Copies `count` floats (identity ops: flatten, dropout; this part's share); nothing
/// when in place.
pub(crate) fn emit_copy(kb: &mut Kb, x: Loc, out: Loc, count: usize) {
    if x == out {
        return;
    }
    let src = kb.addr(x);
    let dst = kb.addr(out);
    share_copy(kb, src, dst, count);
}

/// Copies `count` floats from `src` to `dst`, this part's share.
fn share_copy(kb: &mut Kb, src: Value, dst: Value, count: usize) {
    share_floats(kb, count, |kb, offset, len| {
        let src = kb.fb.ins().iadd(src, offset);
        let dst = kb.fb.ins().iadd(dst, offset);
        kb.copy_floats(src, dst, len);
    });
}

/// Floats under which one part does a whole elementwise sweep.
const SHARED_MIN_FLOATS: usize = 8192;
/// Slices a larger sweep is cut into for the parts to share.
const SLICES: usize = 16;

/// Emits `body(byte offset, floats)` over this part's share of `count` floats: equal
/// slices (multiples of 8 floats) shared by the parts, the remainder on the last part;
/// all on the last part when the sweep is short.
fn share_floats(kb: &mut Kb, count: usize, body: impl Fn(&mut Kb, Value, usize)) {
    if count < SHARED_MIN_FLOATS {
        kb.on_last_part(|kb| {
            let zero = kb.iconst(0);
            body(kb, zero, count)
        });
        return;
    }
    let len = count.div_ceil(SLICES).div_ceil(8) * 8;
    let (slices, rest) = (count / len, count % len);
    kb.for_share(slices, |kb, i| {
        let offset = kb.fb.ins().imul_imm_s(i, 4 * len as i64);
        body(kb, offset, len)
    });
    if rest > 0 {
        kb.on_last_part(|kb| {
            let offset = kb.iconst(4 * (slices * len) as i64);
            body(kb, offset, rest)
        });
    }
}

/// `out[n, c, i] = x[n, c, i] * scale[c] + shift[c]`, then the epilogue's activation.
/// The data holds `scale` then `shift`, `channels` floats each.
pub(crate) fn emit_scale_shift(kb: &mut Kb, shape: &[usize], x: Loc, out: Loc, epilogue: &Epilogue) {
    let (batch, channels) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let data = kb.data();
    let shift_offset = 4 * channels as i64;
    if inner == 1 {
        // [N, C]: the channels are contiguous, so scale and shift load as vectors.
        kb.for_share(batch, |kb, n| {
            let row_src = kb.index(src, n, 4 * channels as i64);
            let row_dst = kb.index(dst, n, 4 * channels as i64);
            // `data` and `data + shift` are read alongside the row, in step.
            let shift = kb.offset(data, shift_offset);
            kb.map_floats(channels, &[row_src, data, shift], row_dst, |kb, _, v| {
                let y = kb.mul_add(v[0], v[1], v[2]);
                kb.epilogue(epilogue, y, None)
            });
        });
        return;
    }
    kb.for_share(batch * channels, |kb, plane| {
        let channel = kb.fb.ins().urem_imm_u(plane, channels as i64);
        let scale_addr = kb.index(data, channel, 4);
        let scale = kb.load_weight(F32, scale_addr, 0);
        let shift = kb.load_weight(F32, scale_addr, shift_offset);
        let scale_v = kb.fb.ins().splat(F32X4, scale);
        let shift_v = kb.fb.ins().splat(F32X4, shift);
        let plane_src = kb.index(src, plane, 4 * inner as i64);
        let plane_dst = kb.index(dst, plane, 4 * inner as i64);
        kb.map_floats(inner, &[plane_src], plane_dst, |kb, ty, v| {
            let (s, t) = if ty == F32 { (scale, shift) } else { (scale_v, shift_v) };
            let y = kb.mul_add(v[0], s, t);
            kb.epilogue(epilogue, y, None)
        });
    });
}

/// Whether a broadcasting op adds or multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Combine {
    Add,
    Mul,
}

/// The output's dimensions after merging neighbours that every operand walks
/// contiguously (or broadcasts along both), with each operand's element strides.
fn collapse(out_shape: &[usize], operand_shapes: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let rank = out_shape.len();
    let strides: Vec<Vec<usize>> = operand_shapes
        .iter()
        .map(|shape| {
            let mut strides = vec![0; rank];
            let mut step = 1;
            for d in (0..rank).rev() {
                strides[d] = if shape[d] == 1 { 0 } else { step };
                step *= shape[d];
            }
            strides
        })
        .collect();
    // Dimensions of size 1 carry nothing.
    let keep: Vec<usize> = (0..rank).filter(|&d| out_shape[d] != 1).collect();
    let mut dims: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); operand_shapes.len()];
    for &d in &keep {
        let mergeable = !dims.is_empty()
            && strides.iter().zip(&merged).all(|(s, m)| m.last().copied() == Some(s[d] * out_shape[d]));
        if mergeable {
            *dims.last_mut().expect("not empty") *= out_shape[d];
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                *m.last_mut().expect("not empty") = s[d];
            }
        } else {
            dims.push(out_shape[d]);
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                m.push(s[d]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        for m in &mut merged {
            m.push(0);
        }
    }
    (dims, merged)
}

/// `out = x0 (op) x1 (op) ...` left to right, broadcasting size-1 dimensions, then the
/// epilogue's activation. The parts share the outermost of the collapsed dimensions; a
/// shape that collapses to one dimension runs on one part.
pub(crate) fn emit_broadcast(
    kb: &mut Kb,
    combine: Combine,
    out_shape: &[usize],
    operands: &[(Loc, &[usize])],
    out: Loc,
    epilogue: &Epilogue,
) {
    let shapes: Vec<&[usize]> = operands.iter().map(|(_, s)| *s).collect();
    let (dims, strides) = collapse(out_shape, &shapes);
    let bases: Vec<Value> = operands.iter().map(|(loc, _)| kb.addr(*loc)).collect();
    let dst = kb.addr(out);
    let inner = *dims.last().expect("at least one dimension");
    let mut run = |kb: &mut Kb, srcs: &[Value], dst: Value| {
        // The innermost dimension: operands walk it (stride 1) or broadcast (stride 0).
        let broadcast: Vec<Option<(Value, Value)>> = srcs
            .iter()
            .zip(&strides)
            .map(|(&src, s)| {
                (*s.last().expect("strides per dimension") == 0).then(|| {
                    let scalar = kb.load(F32, src, 0);
                    (scalar, kb.fb.ins().splat(F32X4, scalar))
                })
            })
            .collect();
        let walking: Vec<Value> = srcs.iter().zip(&broadcast).filter(|(_, b)| b.is_none()).map(|(s, _)| *s).collect();
        if walking.is_empty() {
            // Every operand broadcasts along the innermost dimension: one value, repeated.
            let values: Vec<Value> = broadcast.iter().map(|b| b.expect("broadcast").0).collect();
            let value = fold(kb, combine, &values);
            let value = kb.epilogue(epilogue, value, None);
            let vector = kb.fb.ins().splat(F32X4, value);
            kb.map_floats(inner, &[], dst, |_, ty, _| if ty == F32 { value } else { vector });
            return;
        }
        kb.map_floats(inner, &walking, dst, |kb, ty, walked| {
            let is_scalar = ty == F32;
            let mut next = walked.iter();
            let values: Vec<Value> = broadcast
                .iter()
                .map(|b| match b {
                    Some((scalar, vector)) => {
                        if is_scalar {
                            *scalar
                        } else {
                            *vector
                        }
                    }
                    None => *next.next().expect("one walked value per walking operand"),
                })
                .collect();
            let value = fold(kb, combine, &values);
            kb.epilogue(epilogue, value, None)
        });
    };
    if dims.len() > 1 {
        emit_outer(kb, &dims, &strides, 0, bases, dst, &mut run);
    } else {
        kb.on_last_part(|kb| emit_outer(kb, &dims, &strides, 0, bases, dst, &mut run));
    }
}

fn fold(kb: &mut Kb, combine: Combine, values: &[Value]) -> Value {
    let mut acc = values[0];
    for &v in &values[1..] {
        acc = match combine {
            Combine::Add => kb.fb.ins().fadd(acc, v),
            Combine::Mul => kb.fb.ins().fmul(acc, v),
        };
    }
    acc
}

/// Loops over the dimensions before the innermost one, calling `inner` with every
/// operand's and the output's address at the start of an innermost run.
fn emit_outer(
    kb: &mut Kb,
    dims: &[usize],
    strides: &[Vec<usize>],
    d: usize,
    srcs: Vec<Value>,
    dst: Value,
    inner: &mut dyn FnMut(&mut Kb, &[Value], Value),
) {
    if d + 1 == dims.len() {
        inner(kb, &srcs, dst);
        return;
    }
    let out_stride: usize = dims[d + 1..].iter().product();
    let body = |kb: &mut Kb, i: Value| {
        let srcs: Vec<Value> = srcs
            .iter()
            .zip(strides)
            .map(|(&s, st)| if st[d] == 0 { s } else { kb.index(s, i, 4 * st[d] as i64) })
            .collect();
        let dst = kb.index(dst, i, 4 * out_stride as i64);
        emit_outer(kb, dims, strides, d + 1, srcs, dst, inner);
    };
    // The parts share the outermost dimension (a squeeze-and-excitation gate's
    // `[N * C, H * W]`: whole channel planes each); each value is computed as by one part.
    if d == 0 { kb.for_share(dims[d], body) } else { kb.for_range(dims[d], body) }
}

/// Concatenation along dimension 1: per batch element, each operand's block in turn,
/// every copy shared by the parts. Operands the memory plan computed in their slice of
/// the output already (concat elimination, batch 1: the operand's place is the slice's)
/// are not copied.
pub(crate) fn emit_concat(kb: &mut Kb, batch: usize, operands: &[(Loc, usize)], out: Loc) {
    let total: usize = operands.iter().map(|(_, floats)| floats).sum();
    let dst = kb.addr(out);
    let mut offset = 0usize;
    let mut copies = Vec::new();
    for &(loc, floats) in operands {
        let in_place = batch == 1 && loc == Loc { offset: out.offset + 4 * offset, ..out };
        if !in_place {
            copies.push((kb.addr(loc), floats, offset));
        }
        offset += floats;
    }
    kb.for_range(batch, |kb, n| {
        let row = kb.index(dst, n, 4 * total as i64);
        for &(src, floats, offset) in &copies {
            let from = kb.index(src, n, 4 * floats as i64);
            let to = kb.offset(row, 4 * offset as i64);
            share_copy(kb, from, to, floats);
        }
    });
}
