//! The conversion of a run of f32 values into the operands a bf16 or int8 layer's f32
//! kernels read (`crate::precision`): each value rounded to bf16 and kept as an f32, or
//! the int8 offset `q_x - zp` as an f32. One AVX-512 micro-kernel call per run
//! ([`OperandSpec`]), in place of the f32x4 Cranelift loop of `conv::copy_operand`, whose
//! division and integer rounding cost about 1 ns per value (the depthwise bands compute
//! a 3x3 output in a tenth of that).
//!
//! ```text
//! void convert(const float *from, float *to);
//! ```

use cranelift_codegen::ir::{InstBuilder, Value};
use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::Kb;
use super::int8::MAGIC;
use super::x86::{Simd, Ukernel};
use crate::precision::Precision;

/// The conversion of `count` values: whole vectors of 16 in a loop, the rest under a
/// mask (masked lanes are neither read nor written).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OperandSpec {
    pub count: usize,
    pub kind: OperandKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OperandKind {
    /// `round_bf16(x)`: `vcvtneps2bf16` (AVX512_BF16), widened back to f32.
    Bf16,
    /// `Int8Input::offset(x)`: `x / scale` (the scale as f32 bits) clamped to
    /// `[-zp, 255 - zp]` with a NaN kept (`vmaxps` and `vminps` return their second
    /// operand, the value, when either is NaN), rounded half to even by adding and
    /// taking off [`MAGIC`] (exact: the values are within 255 of 0). Clamping to integer
    /// bounds before rounding gives what rounding first gives.
    Int8 { scale: u32, zero_point: u8 },
}

impl OperandSpec {
    /// The conversion of `count` values for a layer of `precision` on `simd` vectors,
    /// where a micro-kernel does it: AVX-512 for int8, AVX-512 with AVX512_BF16
    /// (`bf16_host`) for bf16.
    pub fn for_layer(precision: Precision, simd: Simd, bf16_host: bool, count: usize) -> Option<OperandSpec> {
        let kind = match precision {
            Precision::F32 => return None,
            Precision::Bf16 if bf16_host => OperandKind::Bf16,
            Precision::Bf16 => return None,
            Precision::Int8(input) => {
                OperandKind::Int8 { scale: input.scale().to_bits(), zero_point: input.zero_point() }
            }
        };
        (simd == Simd::Avx512 && count >= 1).then_some(OperandSpec { count, kind })
    }
}

fn err(e: IcedError) -> String {
    format!("internal error: assembling an operand conversion: {e}")
}

/// Assembles an [`OperandSpec`].
pub(crate) fn assemble(spec: &OperandSpec) -> Result<Vec<u8>, String> {
    assert!(spec.count >= 1, "an empty operand conversion");
    let mut a = CodeAssembler::new(64).map_err(err)?;
    let (scale, least, most, magic) = (zmm16, zmm17, zmm18, zmm19);
    if let OperandKind::Int8 { scale: scale_bits, zero_point } = spec.kind {
        let zero_point = zero_point as f32;
        let constants = [scale_bits, (-zero_point).to_bits(), (255.0 - zero_point).to_bits(), MAGIC.to_bits()];
        for (register, value) in [scale, least, most, magic].into_iter().zip(constants) {
            a.mov(eax, value).map_err(err)?;
            a.vpbroadcastd(register, eax).map_err(err)?;
        }
    }
    let body = |a: &mut CodeAssembler, masked: bool| -> Result<(), String> {
        let from = zmmword_ptr(rdi);
        if masked { a.vmovups(zmm0.k1().z(), from) } else { a.vmovups(zmm0, from) }.map_err(err)?;
        match spec.kind {
            OperandKind::Bf16 => {
                a.vcvtneps2bf16(ymm0, zmm0).map_err(err)?;
                a.vpmovzxwd(zmm0, ymm0).map_err(err)?;
                a.vpslld(zmm0, zmm0, 16).map_err(err)?;
            }
            OperandKind::Int8 { .. } => {
                a.vdivps(zmm0, zmm0, scale).map_err(err)?;
                a.vmaxps(zmm0, least, zmm0).map_err(err)?;
                a.vminps(zmm0, most, zmm0).map_err(err)?;
                a.vaddps(zmm0, zmm0, magic).map_err(err)?;
                a.vsubps(zmm0, zmm0, magic).map_err(err)?;
            }
        }
        let to = zmmword_ptr(rsi);
        if masked { a.vmovups(to.k1(), zmm0) } else { a.vmovups(to, zmm0) }.map_err(err)
    };
    let advance = |a: &mut CodeAssembler| -> Result<(), String> {
        a.add(rdi, 64).map_err(err)?;
        a.add(rsi, 64).map_err(err)
    };
    super::x86::emit_lanes_512(&mut a, spec.count, rdx, &body, &advance)?;
    a.vzeroupper().map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(0).map_err(err)
}

/// Converts the `spec.count` values at `src` into `dst` (addresses) with the
/// micro-kernel `kb` defines for the layer.
pub(crate) fn convert(kb: &mut Kb, spec: &OperandSpec, src: Value, dst: Value) {
    let f = kb
        .tile_kernel(&Ukernel::Operands(spec.clone()))
        .expect("internal error: an operand conversion was not defined");
    kb.fb.ins().call(f, &[src, dst]);
}

#[cfg(test)]
mod tests {
    use super::super::emulate::{Emulator, Region};
    use super::*;
    use crate::precision::round_bf16;

    /// The bf16 conversion writes exactly `count` values, each `round_bf16`'s (ties,
    /// denormals, NaN, infinities, zeros), at every length around the vector width, and
    /// touches nothing else (the emulator's regions are exactly the runs).
    #[test]
    fn bf16_runs_round_as_round_bf16() {
        let specials = [
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x0000_0001),
            f32::from_bits(0x807f_ffff),
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            f32::MAX,
            1.0 / 3.0,
            -2.5625e-3,
        ];
        for count in [1, 7, 15, 16, 17, 33, 100] {
            let values: Vec<f32> = (0..count).map(|i| specials[i % specials.len()] * (1.0 + i as f32 / 64.0)).collect();
            let code = assemble(&OperandSpec { count, kind: OperandKind::Bf16 }).unwrap();
            let from: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut emulator = Emulator::new(&code);
            let from = emulator.map(Region::new(from));
            let to = emulator.map(Region::new(vec![0xab; 4 * count]));
            emulator.call(&[from, to]).unwrap();
            let out = emulator.region(to);
            for (i, x) in values.iter().enumerate() {
                let got = u32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap());
                assert_eq!(got, round_bf16(*x).to_bits(), "count {count}, value {i} ({x:e})");
            }
        }
    }
}
