//! `mean` over any dimensions but the batch (`x.mean(dims, keepdim)`): one output value
//! per step, the sum of its reduced values in row-major order times `1 / count`. The
//! data holds two tables of u32 byte offsets: per output value the offset of its first
//! input value, then per reduced position its offset from there. A simple kernel, not a
//! fast one: networks reduce small maps (the pools cover H and W).

use cranelift_codegen::ir::InstBuilder;

use super::{F32, Kb, Loc};

/// The reduction's sizes; the tables are the kernel's data.
pub(crate) struct Mean {
    /// Output values.
    pub outputs: usize,
    /// Input values per output value.
    pub count: usize,
}

impl Mean {
    /// The kernel for `shape` reduced over `dims`, with its tables (little-endian bytes).
    pub(crate) fn new(shape: &[usize], dims: &[usize]) -> (Mean, Vec<u8>) {
        let mut strides = vec![4usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        let offsets = |axes: &[usize]| -> Vec<u32> {
            let mut offsets = vec![0u32];
            for &a in axes {
                let mut next = Vec::with_capacity(offsets.len() * shape[a]);
                for &o in &offsets {
                    for i in 0..shape[a] {
                        next.push(o + (i * strides[a]) as u32);
                    }
                }
                offsets = next;
            }
            offsets
        };
        let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
        let bases = offsets(&kept);
        let reduced = offsets(dims);
        let mean = Mean { outputs: bases.len(), count: reduced.len() };
        (mean, bases.iter().chain(&reduced).flat_map(|o| o.to_le_bytes()).collect())
    }
}

pub(crate) fn emit_mean(kb: &mut Kb, mean: &Mean, x: Loc, out: Loc) {
    let src = kb.addr(x);
    let dst = kb.addr(out);
    let data = kb.data();
    let count = mean.count;
    let inverse = 1.0 / count as f32;
    let reduced = kb.offset(data, 4 * mean.outputs as i64);
    kb.for_share(mean.outputs, |kb, o| {
        let entry = kb.index(data, o, 4);
        let base = kb.load_index(entry, 0);
        let first = kb.fb.ins().iadd(src, base);
        let sum = kb.fb.declare_var(F32);
        let zero = kb.f32(0.0);
        kb.fb.def_var(sum, zero);
        kb.for_range(count, |kb, r| {
            let entry = kb.index(reduced, r, 4);
            let offset = kb.load_index(entry, 0);
            let addr = kb.fb.ins().iadd(first, offset);
            let v = kb.load(F32, addr, 0);
            let acc = kb.fb.use_var(sum);
            let acc = kb.fb.ins().fadd(acc, v);
            kb.fb.def_var(sum, acc);
        });
        let total = kb.fb.use_var(sum);
        let scale = kb.f32(inverse);
        let value = kb.fb.ins().fmul(total, scale);
        let addr = kb.index(dst, o, 4);
        kb.store(value, addr, 0);
    });
}
