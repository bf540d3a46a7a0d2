//! Reduced precision: what `--precision bf16` means, exactly, and where it applies.
//!
//! A layer's precision is a field of its node ([`crate::ir::Node::precision`]), so that
//! a later per-layer choice (`--precision auto`) needs no new representation; `f32`
//! everywhere is the default and the IR text mentions a precision only when it is not
//! f32. [`assign`] sets one precision on every layer it applies to.
//!
//! **bf16** (the arithmetic of AVX-512 BF16's `vcvtne2ps2bf16` and `vdpbf16ps`), for a
//! conv or linear layer:
//! - its weights are rounded to bf16 (8 bits of significand, f32's exponent range);
//! - its input activations are rounded to bf16 where the layer reads them (the value
//!   other layers read stays f32);
//! - the products of two bf16 values are exact in f32 and are accumulated in f32;
//! - the bias and the fused epilogue (activations, residual add) run in f32, as does
//!   every other layer (pooling, normalization, elementwise, softmax...).
//!
//! Where it runs: the reference interpreter simulates it exactly; the cpu target
//! rounds the weights when it packs them and each bf16 layer's input as it copies it
//! into its scratch buffer, then runs its f32 kernels (direct tiles; no Winograd,
//! pointwise or depthwise kernels for a bf16 layer), which gives bf16's results at
//! every CPU level but not yet its speed: the AVX512_BF16 micro-kernels
//! (`vdpbf16ps`, in `backend/clif/kernels/bf16.rs`) are built and tested but not wired
//! in. The gpu target runs f32 only and refuses bf16.
//!
//! The rounding ([`round_bf16`]) is round-to-nearest-even on the 16 bits dropped. A
//! denormal f32 becomes a zero of its sign (the instructions treat denormal inputs as
//! zero and never produce bf16 denormals), a NaN stays a NaN (made quiet, its sign and
//! high payload bits kept), an infinity stays infinite, and a finite value whose
//! rounding passes the largest bf16 becomes an infinity of its sign. The hardware also
//! flushes denormal partial sums to zero; the reference interpreter does not (a
//! difference far below 1e-30 in absolute terms), and it accumulates in its own order, so
//! the native code is compared with it by relative L2 error like any f32 kernel.

use std::fmt;

use crate::ir::{Graph, Op};

/// The arithmetic a layer runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE single precision throughout.
    #[default]
    F32,
    /// Weights and input activations rounded to bf16, f32 accumulation and epilogue.
    Bf16,
}

impl Precision {
    /// The name on the command line and in the IR text.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses `f32` or `bf16`.
    pub fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision `{text}` (expected f32 or bf16)")),
        }
    }

    /// Whether a layer of this op can run in this precision: f32 everything, bf16 the
    /// layers whose work is a dot product of weights and inputs (conv and linear).
    pub fn applies_to(self, op: &Op) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => matches!(op, Op::Conv(_) | Op::Linear { .. }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sets `precision` on every layer it applies to ([`Precision::applies_to`]); the
/// others run in f32. Returns how many layers took it.
pub fn assign(graph: &mut Graph, precision: Precision) -> usize {
    let mut count = 0;
    for id in graph.node_ids() {
        let node = graph.node_mut(id);
        node.precision = if precision.applies_to(&node.op) { precision } else { Precision::F32 };
        count += usize::from(node.precision == precision);
    }
    count
}

/// Rounds an f32 to the nearest bf16 (ties to even), returned as the f32 of equal
/// value; denormals become signed zeros and NaNs quiet NaNs (see the module docs).
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xffff_0000);
    }
    if bits & 0x7f80_0000 == 0 {
        // Zero or denormal.
        return f32::from_bits(bits & 0x8000_0000);
    }
    // Adding 0x7fff plus the lowest kept bit rounds half to even; an infinity has no
    // low bits and stays, the largest finite values carry into the exponent (infinity).
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// Rounds every value of a slice to bf16 in place.
pub fn round_slice_bf16(values: &mut [f32]) {
    for v in values {
        *v = round_bf16(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        let r = |bits: u32| round_bf16(f32::from_bits(bits)).to_bits();
        assert_eq!(r(0x3f80_0000), 0x3f80_0000);
        // Below, at and above the halfway point, with an even and an odd kept bit.
        assert_eq!(r(0x3f80_7fff), 0x3f80_0000);
        assert_eq!(r(0x3f80_8000), 0x3f80_0000);
        assert_eq!(r(0x3f80_8001), 0x3f81_0000);
        assert_eq!(r(0x3f81_8000), 0x3f82_0000);
        assert_eq!(r(0xbf81_8000), 0xbf82_0000);
        // A carry into the exponent.
        assert_eq!(r(0x3fff_ff00), 0x4000_0000);
    }

    #[test]
    fn special_values() {
        let r = |x: f32| round_bf16(x).to_bits();
        assert_eq!(r(f32::INFINITY), f32::INFINITY.to_bits());
        assert_eq!(r(f32::NEG_INFINITY), f32::NEG_INFINITY.to_bits());
        assert_eq!(r(f32::MAX), f32::INFINITY.to_bits());
        assert_eq!(r(-f32::MAX), f32::NEG_INFINITY.to_bits());
        assert_eq!(r(f32::from_bits(1)), 0);
        assert_eq!(r(-f32::from_bits(0x007f_ffff)), 0x8000_0000);
        assert_eq!(r(-0.0), 0x8000_0000);
        // The smallest normal stays.
        assert_eq!(r(f32::MIN_POSITIVE), f32::MIN_POSITIVE.to_bits());
        // A NaN whose payload lies in the dropped bits stays a (quiet) NaN.
        let nan = round_bf16(f32::from_bits(0x7f80_0001));
        assert!(nan.is_nan());
        assert_eq!(nan.to_bits(), 0x7fc0_0000);
    }

    #[test]
    fn every_rounded_value_is_a_bf16_and_the_nearest() {
        let mut state = 0x1234_5678u32;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = f32::from_bits(state);
            if !x.is_finite() || x.abs() < f32::MIN_POSITIVE || x.abs() > 1e38 {
                continue;
            }
            let y = round_bf16(x);
            assert_eq!(y.to_bits() & 0xffff, 0);
            // The neighbours one bf16 ulp either side are no nearer.
            let ulp = f32::from_bits(y.abs().to_bits() + 0x1_0000) - y.abs();
            let err = (x as f64 - y as f64).abs();
            assert!(err <= ulp as f64 / 2.0, "{x:e} -> {y:e}");
        }
    }
}
