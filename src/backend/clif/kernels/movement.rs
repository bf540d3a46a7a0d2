//! Kernels that move values without computing: a channel slice (`chunk`/`split`'s
//! parts), `channel_shuffle` and `permute`. Whole planes move with f32x4 copies; a
//! permutation that changes the innermost dimension gathers one float at a time.

use cranelift_codegen::ir::{InstBuilder, Value};

use super::{F32, Kb, Loc};

/// Which input channel each output channel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelMap {
    /// Output channel `c` is input channel `start + c`.
    Slice { start: usize },
    /// Output channel `i * groups + j` is input channel `j * (C / groups) + i`.
    Shuffle { groups: usize },
}

/// Copies whole channel planes: output `[N, out_channels, ...]` from input `in_shape`
/// (`[N, in_channels, ...]`) by `map`, the planes shared by the parts.
pub(crate) fn emit_channel_planes(
    kb: &mut Kb,
    map: ChannelMap,
    in_shape: &[usize],
    out_channels: usize,
    x: Loc,
    out: Loc,
) {
    let (batch, in_channels) = (in_shape[0], in_shape[1]);
    let inner: usize = in_shape[2..].iter().product();
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let plane_bytes = (inner * 4) as i64;
    kb.for_share(batch * out_channels, |kb, plane| {
        let n = kb.fb.ins().udiv_imm_u(plane, out_channels as i64);
        let c = kb.fb.ins().urem_imm_u(plane, out_channels as i64);
        let channel = match map {
            ChannelMap::Slice { start } => kb.fb.ins().iadd_imm_s(c, start as i64),
            ChannelMap::Shuffle { groups } => {
                let i = kb.fb.ins().udiv_imm_u(c, groups as i64);
                let j = kb.fb.ins().urem_imm_u(c, groups as i64);
                let j_planes = kb.fb.ins().imul_imm_s(j, (in_channels / groups) as i64);
                kb.fb.ins().iadd(j_planes, i)
            }
        };
        let n_planes = kb.fb.ins().imul_imm_s(n, in_channels as i64);
        let from_plane = kb.fb.ins().iadd(n_planes, channel);
        let from = kb.index(src, from_plane, plane_bytes);
        let to = kb.index(dst, plane, plane_bytes);
        kb.copy_floats(from, to, inner);
    });
}

/// `torch.permute` of a tensor of `in_shape`: after merging the output dimensions that
/// stay neighbours in the input, a loop nest over the output (the outermost dimension
/// shared by the parts) whose innermost run is a plain copy when it is contiguous in the
/// input, else a gather.
pub(crate) fn emit_permute(kb: &mut Kb, in_shape: &[usize], perm: &[usize], x: Loc, out: Loc) {
    let (dims, strides) = merged_permutation(in_shape, perm);
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let total: usize = dims.iter().product();
    if dims.len() == 1 {
        // The identity on the data.
        kb.on_last_part(|kb| kb.copy_floats(src, dst, total));
        return;
    }
    if dims.len() == 2 {
        let out_stride = (dims[1] * 4) as i64;
        kb.for_share(dims[0], |kb, i| {
            let from = kb.index(src, i, 4 * strides[0] as i64);
            let to = kb.index(dst, i, out_stride);
            emit_permute_level(kb, &dims, &strides, 1, from, to);
        });
        return;
    }
    // The two outermost dimensions together are shared by the parts (the batch alone
    // is often 1).
    let out_stride1 = (dims[2..].iter().product::<usize>() * 4) as i64;
    kb.for_share(dims[0] * dims[1], |kb, k| {
        let i0 = kb.fb.ins().udiv_imm_u(k, dims[1] as i64);
        let i1 = kb.fb.ins().urem_imm_u(k, dims[1] as i64);
        let from = kb.index(src, i0, 4 * strides[0] as i64);
        let from = kb.index(from, i1, 4 * strides[1] as i64);
        let to = kb.index(dst, k, out_stride1);
        emit_permute_level(kb, &dims, &strides, 2, from, to);
    });
}

fn emit_permute_level(kb: &mut Kb, dims: &[usize], strides: &[usize], d: usize, src: Value, dst: Value) {
    if d + 1 == dims.len() {
        let (count, stride) = (dims[d], strides[d]);
        if stride == 1 {
            kb.copy_floats(src, dst, count);
        } else {
            kb.for_range(count, |kb, i| {
                let from = kb.index(src, i, 4 * stride as i64);
                let to = kb.index(dst, i, 4);
                let v = kb.load(F32, from, 0);
                kb.store(v, to, 0);
            });
        }
        return;
    }
    let out_stride = (dims[d + 1..].iter().product::<usize>() * 4) as i64;
    kb.for_range(dims[d], |kb, i| {
        let from = kb.index(src, i, 4 * strides[d] as i64);
        let to = kb.index(dst, i, out_stride);
        emit_permute_level(kb, dims, strides, d + 1, from, to);
    });
}

/// The output dimensions of a permutation and each one's input stride (in floats),
/// with size-1 dimensions dropped and neighbours merged where the input walks them
/// contiguously too.
pub(crate) fn merged_permutation(in_shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let rank = in_shape.len();
    let mut in_strides = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * in_shape[d + 1];
    }
    let mut dims: Vec<usize> = Vec::new();
    let mut strides: Vec<usize> = Vec::new();
    for &d in perm {
        let (size, stride) = (in_shape[d], in_strides[d]);
        if size == 1 {
            continue;
        }
        match (dims.last_mut(), strides.last_mut()) {
            (Some(last_size), Some(last_stride)) if *last_stride == stride * size => {
                *last_size *= size;
                *last_stride = stride;
            }
            _ => {
                dims.push(size);
                strides.push(stride);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        strides.push(1);
    }
    (dims, strides)
}

#[cfg(test)]
mod tests {
    use super::merged_permutation;

    #[test]
    fn channels_last_is_a_transpose_per_image() {
        // [2, 3, 4, 5] -> [2, 4, 5, 3]: per image, a [20, 3] gather from [3, 20].
        assert_eq!(merged_permutation(&[2, 3, 4, 5], &[0, 2, 3, 1]), (vec![2, 20, 3], vec![60, 1, 20]));
        // The identity merges into one run; size-1 dimensions vanish.
        assert_eq!(merged_permutation(&[1, 3, 4, 5], &[0, 1, 2, 3]), (vec![60], vec![1]));
        assert_eq!(merged_permutation(&[1, 3, 1, 5], &[0, 2, 3, 1]), (vec![5, 3], vec![1, 5]));
    }
}
