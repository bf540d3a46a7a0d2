//! The kernels, one Cranelift function per node, and the helpers they share: counted
//! loops, loads and stores, f32x4 arithmetic, activations and fused epilogues.
//!
//! Every kernel takes the three buffers of `infer` (input, output, arena) and reaches its
//! operands at byte offsets baked into the code; shapes are constants. Loads and stores
//! are unaligned (`movups`) and never trap: every address a kernel forms lies inside the
//! value it reads or writes, which the loop bounds below guarantee (no over-reading tail,
//! no vector that straddles the end of a tensor).

pub(crate) mod bf16;
pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod elementwise;
#[cfg(test)]
mod emulate;
pub(crate) mod int8;
pub(crate) mod movement;
pub(crate) mod normalize;
pub(crate) mod operands;
pub(crate) mod pointwise;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod winograd;
pub(crate) mod x86;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    FuncRef, InstBuilder, MemFlagsData, SigRef, StackSlot, StackSlotData, StackSlotKind, Type, Value, types,
};
use cranelift_frontend::FunctionBuilder;

use crate::ir::{Activation, Epilogue};

pub(crate) const F32: Type = types::F32;
pub(crate) const F32X4: Type = types::F32X4;
pub(crate) const I32: Type = types::I32;

/// The buffer a value lives in while the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Base {
    /// The caller's input buffer: the inputs one after another in `Graph::inputs` order.
    Input,
    /// The caller's output buffer: the outputs one after another in `Graph::outputs` order.
    Output,
    /// The arena: the memory plan's slots, then the kernels' scratch space.
    Arena,
}

/// A value's place: a buffer and a byte offset into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    pub base: Base,
    pub offset: usize,
}

/// The C math functions kernels call (imported as `expf`, `powf`); the activations
/// compute exp, tanh and erf without calls.
pub(crate) struct MathFns {
    pub expf: FuncRef,
    pub powf: FuncRef,
}

/// Flags of an access to an activation buffer: in bounds by construction, maybe unaligned.
fn buffer_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags of an access to the weights: also never written while the model runs.
fn weight_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

/// How the convolution micro-kernel feeds its multiply-adds (see `conv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MicroKernel {
    /// One broadcast input value per pixel and one weight vector per block, shared by
    /// the multiply-adds that use them.
    Shared,
    /// Weight vectors loaded by each multiply-add (a memory operand on x86-64).
    WeightOperands,
    /// The input value broadcast afresh for each multiply-add.
    SplatPerFma,
}

/// A kernel being built: the function builder and what every kernel needs to hand.
pub(crate) struct Kb<'a> {
    pub fb: FunctionBuilder<'a>,
    pub ptr: Type,
    /// Whether `fma` lowers to one instruction on the target (else: multiply, then add).
    pub fma: bool,
    pub micro_kernel: MicroKernel,
    /// The input, output and arena pointers.
    pub bases: [Value; 3],
    /// Which share of the work this call does, of how many (see [`Kb::for_share`]).
    pub part: Value,
    pub parts: Value,
    /// The barrier every part calls at once (`sync(sync_ctx)`), and its signature.
    pub sync: Value,
    pub sync_ctx: Value,
    pub sync_sig: SigRef,
    pub math: MathFns,
    /// The address of the kernel's read-only data (packed weights, tables), if any.
    pub data: Option<Value>,
    /// The vectors of the machine-code micro-kernels, when the target has them, and
    /// those defined for this kernel's tiles (`x86`).
    pub simd: Option<x86::Simd>,
    pub tiles: Vec<(x86::Ukernel, FuncRef)>,
    /// The stack buffer the micro-kernels store their tiles to, once created.
    pub tile_slot: Option<StackSlot>,
}

impl<'a> Kb<'a> {
    /// The address of a value.
    pub fn addr(&mut self, loc: Loc) -> Value {
        let base = match loc.base {
            Base::Input => self.bases[0],
            Base::Output => self.bases[1],
            Base::Arena => self.bases[2],
        };
        self.offset(base, loc.offset as i64)
    }

    /// The machine-code micro-kernel for a tile, if one was defined.
    pub fn tile_kernel(&self, spec: &x86::Ukernel) -> Option<FuncRef> {
        self.tiles.iter().find(|(s, _)| s == spec).map(|&(_, f)| f)
    }

    /// The address of the micro-kernels' tile buffer (`TILE_BUFFER_BYTES`, 64-aligned).
    pub fn tile_buffer(&mut self) -> Value {
        let slot = match self.tile_slot {
            Some(slot) => slot,
            None => {
                let data = StackSlotData::new(StackSlotKind::ExplicitSlot, x86::TILE_BUFFER_BYTES as u32, 6);
                let slot = self.fb.create_sized_stack_slot(data);
                self.tile_slot = Some(slot);
                slot
            }
        };
        self.fb.ins().stack_addr(self.ptr, slot, 0)
    }

    /// The kernel's data pointer; kernels ask only when they defined data.
    pub fn data(&self) -> Value {
        self.data.expect("the kernel has read-only data")
    }

    pub fn iconst(&mut self, value: i64) -> Value {
        self.fb.ins().iconst(self.ptr, value)
    }

    /// `base + bytes`, folded away when `bytes` is 0.
    pub fn offset(&mut self, base: Value, bytes: i64) -> Value {
        if bytes == 0 { base } else { self.fb.ins().iadd_imm_s(base, bytes) }
    }

    /// `base + index * scale` (bytes).
    pub fn index(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let scaled = self.fb.ins().imul_imm_s(index, scale);
        self.fb.ins().iadd(base, scaled)
    }

    pub fn f32(&mut self, value: f32) -> Value {
        self.fb.ins().f32const(value)
    }

    /// A constant of type `ty` (F32 or F32X4) with every lane `value`.
    pub fn constant(&mut self, ty: Type, value: f32) -> Value {
        let scalar = self.f32(value);
        if ty == F32 { scalar } else { self.fb.ins().splat(ty, scalar) }
    }

    pub fn load(&mut self, ty: Type, addr: Value, offset: i64) -> Value {
        self.fb.ins().load(ty, buffer_flags(), addr, offset_i32(offset))
    }

    /// A load from the read-only weights.
    pub fn load_weight(&mut self, ty: Type, addr: Value, offset: i64) -> Value {
        self.fb.ins().load(ty, weight_flags(), addr, offset_i32(offset))
    }

    pub fn store(&mut self, value: Value, addr: Value, offset: i64) {
        self.fb.ins().store(buffer_flags(), value, addr, offset_i32(offset));
    }

    /// `a * b + c`, fused when the target has FMA.
    pub fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.fb.ins().fma(a, b, c)
        } else {
            let product = self.fb.ins().fmul(a, b);
            self.fb.ins().fadd(product, c)
        }
    }

    /// Emits `body(i)` for `i` in `0..count` (an integer of pointer type): nothing for 0,
    /// straight-line code for 1, else a bottom-tested loop.
    pub fn for_range(&mut self, count: usize, body: impl FnOnce(&mut Self, Value)) {
        match count {
            0 => {}
            1 => {
                let zero = self.iconst(0);
                body(self, zero);
            }
            _ => {
                let var = self.fb.declare_var(self.ptr);
                let zero = self.iconst(0);
                self.fb.def_var(var, zero);
                let head = self.fb.create_block();
                let exit = self.fb.create_block();
                self.fb.ins().jump(head, &[]);
                self.fb.switch_to_block(head);
                let i = self.fb.use_var(var);
                body(self, i);
                let next = self.fb.ins().iadd_imm_s(i, 1);
                self.fb.def_var(var, next);
                let more = self.fb.ins().icmp_imm_u(IntCC::UnsignedLessThan, next, count as i64);
                self.fb.ins().brif(more, head, &[], exit, &[]);
                self.fb.seal_block(head);
                self.fb.switch_to_block(exit);
                self.fb.seal_block(exit);
            }
        }
    }

    /// Emits `body(i)` for this part's share of `0..count`: the `i` from
    /// `count * part / parts` up to `count * (part + 1) / parts`. Every part running the
    /// same kernel together covers `0..count` once.
    pub fn for_share(&mut self, count: usize, body: impl FnOnce(&mut Self, Value)) {
        if count == 0 {
            return;
        }
        let total = self.iconst(count as i64);
        let start = self.fb.ins().imul(total, self.part);
        let start = self.fb.ins().udiv(start, self.parts);
        let next = self.fb.ins().iadd_imm_s(self.part, 1);
        let end = self.fb.ins().imul(total, next);
        let end = self.fb.ins().udiv(end, self.parts);
        let len = self.fb.ins().isub(end, start);
        self.for_dynamic(len, |kb, i| {
            let i = kb.fb.ins().iadd(start, i);
            body(kb, i)
        });
    }

    /// Emits `body` for one part only (the last one, which `for_share` gives the
    /// largest share's end).
    pub fn on_last_part(&mut self, body: impl FnOnce(&mut Self)) {
        let last = self.fb.ins().iadd_imm_s(self.part, 1);
        let is_last = self.fb.ins().icmp(IntCC::Equal, last, self.parts);
        self.when(is_last, body);
    }

    /// Emits `body` under `condition` (an `icmp` result).
    pub fn when(&mut self, condition: Value, body: impl FnOnce(&mut Self)) {
        let then = self.fb.create_block();
        let done = self.fb.create_block();
        self.fb.ins().brif(condition, then, &[], done, &[]);
        self.fb.switch_to_block(then);
        self.fb.seal_block(then);
        body(self);
        self.fb.ins().jump(done, &[]);
        self.fb.switch_to_block(done);
        self.fb.seal_block(done);
    }

    /// Emits `then` when `condition` (an `icmp` result) holds, else `otherwise`.
    pub fn when_else(&mut self, condition: Value, then: impl FnOnce(&mut Self), otherwise: impl FnOnce(&mut Self)) {
        let then_block = self.fb.create_block();
        let else_block = self.fb.create_block();
        let done = self.fb.create_block();
        self.fb.ins().brif(condition, then_block, &[], else_block, &[]);
        self.fb.switch_to_block(then_block);
        self.fb.seal_block(then_block);
        then(self);
        self.fb.ins().jump(done, &[]);
        self.fb.switch_to_block(else_block);
        self.fb.seal_block(else_block);
        otherwise(self);
        self.fb.ins().jump(done, &[]);
        self.fb.switch_to_block(done);
        self.fb.seal_block(done);
    }

    /// Waits until every part has reached this point (nothing when there is one part).
    pub fn sync(&mut self) {
        let many = self.fb.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, self.parts, 1);
        self.when(many, |kb| {
            kb.fb.ins().call_indirect(kb.sync_sig, kb.sync, &[kb.sync_ctx]);
        });
    }

    /// Emits `body(i)` for `i` in `0..count` where `count` is only known at run time
    /// (it may be 0): a top-tested loop.
    pub fn for_dynamic(&mut self, count: Value, body: impl FnOnce(&mut Self, Value)) {
        let var = self.fb.declare_var(self.ptr);
        let zero = self.iconst(0);
        self.fb.def_var(var, zero);
        let head = self.fb.create_block();
        let body_block = self.fb.create_block();
        let exit = self.fb.create_block();
        self.fb.ins().jump(head, &[]);
        self.fb.switch_to_block(head);
        let i = self.fb.use_var(var);
        let more = self.fb.ins().icmp(IntCC::UnsignedLessThan, i, count);
        self.fb.ins().brif(more, body_block, &[], exit, &[]);
        self.fb.switch_to_block(body_block);
        self.fb.seal_block(body_block);
        body(self, i);
        let next = self.fb.ins().iadd_imm_s(i, 1);
        self.fb.def_var(var, next);
        self.fb.ins().jump(head, &[]);
        self.fb.seal_block(head);
        self.fb.switch_to_block(exit);
        self.fb.seal_block(exit);
    }

    /// Applies `f` to each lane of an f32x4 (or to an f32) and reassembles the vector.
    pub fn map_lanes(&mut self, value: Value, mut f: impl FnMut(&mut Self, Value) -> Value) -> Value {
        if self.fb.func.dfg.value_type(value) == F32 {
            return f(self, value);
        }
        let mut result = value;
        for lane in 0..4u8 {
            let scalar = self.fb.ins().extractlane(value, lane);
            let mapped = f(self, scalar);
            result = self.fb.ins().insertlane(result, mapped, lane);
        }
        result
    }

    /// Calls a one-argument C math function on a scalar.
    pub fn call1(&mut self, function: FuncRef, x: Value) -> Value {
        let call = self.fb.ins().call(function, &[x]);
        self.fb.inst_results(call)[0]
    }

    /// Lanes where `x < 0` as a mask of the type of `x` (all ones or zero per lane).
    fn negative_mask(&mut self, x: Value) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        let zero = self.constant(ty, 0.0);
        let mask = self.fb.ins().fcmp(FloatCC::LessThan, x, zero);
        self.fb.ins().bitcast(ty, MemFlagsData::new(), mask)
    }

    /// An activation on an f32 or an f32x4, with the interpreter's semantics (NaN passes
    /// through relu and leaky relu).
    pub fn activation(&mut self, activation: Activation, x: Value) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        match activation {
            Activation::Relu => {
                if ty == F32 {
                    let zero = self.f32(0.0);
                    let negative = self.fb.ins().fcmp(FloatCC::LessThan, x, zero);
                    self.fb.ins().select(negative, zero, x)
                } else {
                    let mask = self.negative_mask(x);
                    self.fb.ins().band_not(x, mask)
                }
            }
            Activation::LeakyRelu { slope } => {
                let slope = self.constant(ty, slope as f32);
                let scaled = self.fb.ins().fmul(x, slope);
                if ty == F32 {
                    let zero = self.f32(0.0);
                    let negative = self.fb.ins().fcmp(FloatCC::LessThan, x, zero);
                    self.fb.ins().select(negative, scaled, x)
                } else {
                    let mask = self.negative_mask(x);
                    self.fb.ins().bitselect(mask, scaled, x)
                }
            }
            Activation::Sigmoid => {
                let negated = self.fb.ins().fneg(x);
                let exp = self.exp(negated);
                let one = self.constant(ty, 1.0);
                let denominator = self.fb.ins().fadd(one, exp);
                self.fb.ins().fdiv(one, denominator)
            }
            Activation::Tanh => self.tanh(x),
            Activation::Clamp { min, max } => self.clamp(x, min as f32, max as f32),
            Activation::HardSwish => {
                let gate = self.hard_sigmoid(x);
                self.fb.ins().fmul(x, gate)
            }
            Activation::HardSigmoid => self.hard_sigmoid(x),
            Activation::HardSigmoidAffine { alpha, beta } => {
                let alpha = self.constant(ty, alpha as f32);
                let beta = self.constant(ty, beta as f32);
                let affine = self.mul_add(x, alpha, beta);
                self.clamp(affine, 0.0, 1.0)
            }
            Activation::Erf => self.erf(x),
            Activation::Silu => {
                // x / (1 + exp(-x)), PyTorch's formula.
                let negated = self.fb.ins().fneg(x);
                let exp = self.exp(negated);
                let one = self.constant(ty, 1.0);
                let denominator = self.fb.ins().fadd(one, exp);
                self.fb.ins().fdiv(x, denominator)
            }
            Activation::Gelu { tanh } => {
                let t = if tanh {
                    // tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))
                    let square = self.fb.ins().fmul(x, x);
                    let kappa = self.constant(ty, 0.044715);
                    let one = self.constant(ty, 1.0);
                    let factor = self.mul_add(square, kappa, one);
                    let sum = self.fb.ins().fmul(x, factor);
                    let beta = self.constant(ty, (2.0 / std::f64::consts::PI).sqrt() as f32);
                    let inner = self.fb.ins().fmul(sum, beta);
                    self.tanh(inner)
                } else {
                    let scale = self.constant(ty, std::f32::consts::FRAC_1_SQRT_2);
                    let scaled = self.fb.ins().fmul(x, scale);
                    self.erf(scaled)
                };
                // 0.5 * x * (1 + t)
                let one = self.constant(ty, 1.0);
                let plus_one = self.fb.ins().fadd(t, one);
                let half = self.constant(ty, 0.5);
                let x_half = self.fb.ins().fmul(x, half);
                self.fb.ins().fmul(x_half, plus_one)
            }
        }
    }

    /// tanh in single precision without calls (Cephes' `tanhf`, within 2e-7): for
    /// `|x| <= 0.5493` an odd polynomial, above it `1 - 2 / (exp(2|x|) + 1)` with the
    /// sign of `x`; both are computed and the lane picks one. NaN passes through (the
    /// polynomial's side), tanh(+-inf) is +-1.
    fn tanh(&mut self, x: Value) -> Value {
        const POLYNOMIAL: [f64; 5] =
            [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1];
        let ty = self.fb.func.dfg.value_type(x);
        let z = self.fb.ins().fmul(x, x);
        let p = self.polynomial(z, &POLYNOMIAL);
        let pz = self.fb.ins().fmul(p, z);
        let small = self.mul_add(pz, x, x);
        let magnitude = self.fb.ins().fabs(x);
        let twice = self.fb.ins().fadd(magnitude, magnitude);
        let exp = self.exp(twice);
        let one = self.constant(ty, 1.0);
        let two = self.constant(ty, 2.0);
        let exp_plus_one = self.fb.ins().fadd(exp, one);
        let quotient = self.fb.ins().fdiv(two, exp_plus_one);
        let large = self.fb.ins().fsub(one, quotient);
        // The sign of x (`fcopysign` has no f32x4 lowering on x86-64).
        let negative = self.fb.ins().fneg(large);
        let zero = self.constant(ty, 0.0);
        let large = self.select_where(FloatCC::LessThan, x, zero, negative, large);
        let threshold = self.constant(ty, 0.5493);
        self.select_where(FloatCC::GreaterThan, magnitude, threshold, large, small)
    }

    /// `then` where `a cc b` holds, else `otherwise`, lane by lane (an f32 or an f32x4).
    fn select_where(&mut self, cc: FloatCC, a: Value, b: Value, then: Value, otherwise: Value) -> Value {
        let ty = self.fb.func.dfg.value_type(a);
        let condition = self.fb.ins().fcmp(cc, a, b);
        if ty == F32 {
            self.fb.ins().select(condition, then, otherwise)
        } else {
            let mask = self.fb.ins().bitcast(ty, MemFlagsData::new(), condition);
            self.fb.ins().bitselect(mask, then, otherwise)
        }
    }

    /// `x` limited to `[min, max]` by comparisons, so that NaN passes through (as the
    /// interpreter's and PyTorch's clamp; Cranelift's `fmin`/`fmax` would too, but cost
    /// more on x86-64).
    fn clamp(&mut self, x: Value, min: f32, max: f32) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        let low = self.constant(ty, min);
        let high = self.constant(ty, max);
        let raised = self.select_where(FloatCC::LessThan, x, low, low, x);
        self.select_where(FloatCC::GreaterThan, raised, high, high, raised)
    }

    /// `relu6(x + 3) / 6`.
    fn hard_sigmoid(&mut self, x: Value) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        let three = self.constant(ty, 3.0);
        let shifted = self.fb.ins().fadd(x, three);
        let clamped = self.clamp(shifted, 0.0, 6.0);
        let sixth = self.constant(ty, 1.0 / 6.0);
        self.fb.ins().fmul(clamped, sixth)
    }

    /// erf in single precision without calls: `x` clamped to [-4, 4] (erf is +-1 in f32
    /// beyond), then a rational function, odd over even, of degree 13 over 8 (the
    /// approximation of Eigen and XLA; at most 4.2e-7 from erf over the floats, exactly
    /// +-1 at +-4). NaN passes through.
    fn erf(&mut self, x: Value) -> Value {
        const NUMERATOR: [f64; 7] = [
            -2.72614225801306e-10,
            2.77068142495902e-08,
            -2.10102402082508e-06,
            -5.69250639462346e-05,
            -7.34990630326855e-04,
            -2.95459980854025e-03,
            -1.60960333262415e-02,
        ];
        const DENOMINATOR: [f64; 5] = [
            -1.45660718464996e-05,
            -2.13374055278905e-04,
            -1.68282697438203e-03,
            -7.37332916720468e-03,
            -1.42647390514189e-02,
        ];
        let x = self.clamp(x, -4.0, 4.0);
        let square = self.fb.ins().fmul(x, x);
        let p = self.polynomial(square, &NUMERATOR);
        let p = self.fb.ins().fmul(x, p);
        let q = self.polynomial(square, &DENOMINATOR);
        self.fb.ins().fdiv(p, q)
    }

    /// exp in single precision without calls (Cephes' `expf`, within 2 ulp): `x = n ln 2
    /// + r` with `n` an integer and `|r| <= ln 2 / 2` (`ln 2` in two parts, so `r` is
    /// exact), `exp(r)` by a degree-7 polynomial, times `2^n` built in the exponent bits.
    /// Above 88 it is inf (exp(88.72) is the largest float), below -87 zero (the
    /// subnormals are left out), NaN passes through: so `1 / (1 + exp(-x))` and
    /// `x / (1 + exp(-x))` give `expf`'s answers at the ends, NaN for silu(-inf) included.
    fn exp(&mut self, x: Value) -> Value {
        const HIGH: f32 = 88.0;
        const LOW: f32 = -87.0;
        const POLYNOMIAL: [f64; 6] =
            [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
        let ty = self.fb.func.dfg.value_type(x);
        let int_ty = if ty == F32 { I32 } else { types::I32X4 };
        let clamped = self.clamp(x, LOW, HIGH);
        // n = floor(x log2(e) + 1/2): truncation, less one where it rounded up.
        let log2e = self.constant(ty, std::f32::consts::LOG2_E);
        let half = self.constant(ty, 0.5);
        let t = self.mul_add(clamped, log2e, half);
        let truncated = self.fb.ins().fcvt_to_sint_sat(int_ty, t);
        let truncated = self.fb.ins().fcvt_from_sint(ty, truncated);
        let one = self.constant(ty, 1.0);
        let zero = self.constant(ty, 0.0);
        let rounded_up = self.select_where(FloatCC::GreaterThan, truncated, t, one, zero);
        let n = self.fb.ins().fsub(truncated, rounded_up);
        // r = x - n ln 2, with ln 2 = 0.693359375 - 2.12194440e-4 (the first part exact
        // in a few bits, so n times it is exact).
        let ln2_high = self.constant(ty, -355.0 / 512.0);
        let ln2_low = self.constant(ty, 2.121_944_4e-4);
        let r = self.mul_add(n, ln2_high, clamped);
        let r = self.mul_add(n, ln2_low, r);
        let p = self.polynomial(r, &POLYNOMIAL);
        let r2 = self.fb.ins().fmul(r, r);
        let r_plus_one = self.fb.ins().fadd(r, one);
        let exp_r = self.mul_add(p, r2, r_plus_one);
        // 2^n: (n + 127) << 23 as the bits of a float.
        let n = self.fb.ins().fcvt_to_sint_sat(int_ty, n);
        let bias = if ty == F32 {
            self.fb.ins().iconst(I32, 127)
        } else {
            let scalar = self.fb.ins().iconst(I32, 127);
            self.fb.ins().splat(int_ty, scalar)
        };
        let biased = self.fb.ins().iadd(n, bias);
        let bits = self.fb.ins().ishl_imm_u(biased, 23);
        let scale = self.fb.ins().bitcast(ty, MemFlagsData::new(), bits);
        let value = self.fb.ins().fmul(exp_r, scale);
        let infinity = self.constant(ty, f32::INFINITY);
        let value = self.select_where(FloatCC::GreaterThan, x, clamped, infinity, value);
        self.select_where(FloatCC::LessThan, x, clamped, zero, value)
    }

    /// `c[0] * x^(n-1) + ... + c[n-1]` by Horner's rule.
    fn polynomial(&mut self, x: Value, coefficients: &[f64]) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        let mut acc = self.constant(ty, coefficients[0] as f32);
        for &c in &coefficients[1..] {
            let c = self.constant(ty, c as f32);
            acc = self.mul_add(acc, x, c);
        }
        acc
    }

    /// A fused epilogue on a computed value: activation, `+ residual` (loaded with the
    /// value's type from `residual`, an address and a byte offset), post-activation.
    pub fn epilogue(&mut self, epilogue: &Epilogue, x: Value, residual: Option<(Value, i64)>) -> Value {
        let residual = residual.map(|(addr, offset)| {
            let ty = self.fb.func.dfg.value_type(x);
            self.load(ty, addr, offset)
        });
        self.epilogue_of(epilogue, x, residual)
    }

    /// [`Self::epilogue`] with the residual as a value of `x`'s type.
    pub fn epilogue_of(&mut self, epilogue: &Epilogue, x: Value, residual: Option<Value>) -> Value {
        let mut x = x;
        if let Some(activation) = epilogue.activation {
            x = self.activation(activation, x);
        }
        if let Some(r) = residual {
            x = self.fb.ins().fadd(x, r);
        }
        if let Some(activation) = epilogue.post_activation {
            x = self.activation(activation, x);
        }
        x
    }

    /// Copies `count` floats from `src` to `dst` (addresses; the ranges do not overlap
    /// or are equal): f32x4 steps, then single floats.
    pub fn copy_floats(&mut self, src: Value, dst: Value, count: usize) {
        self.map_floats(count, &[src], dst, |_, _, values| values[0]);
    }

    /// Copies `count` floats from `src` to `dst`, each rounded to bf16 (`dst` may equal
    /// `src`).
    pub fn copy_floats_bf16(&mut self, src: Value, dst: Value, count: usize) {
        self.map_floats(count, &[src], dst, |kb, _, values| kb.round_bf16(values[0]));
    }

    /// `precision::round_bf16` on an F32 or F32X4 value, in integer operations on its
    /// bits: to nearest even by adding `0x7fff` plus the lowest kept bit and clearing
    /// the low 16 bits; zeros and denormals to a zero of their sign; NaN made quiet.
    pub fn round_bf16(&mut self, x: Value) -> Value {
        let ty = self.fb.func.dfg.value_type(x);
        let int_ty = if ty == F32 { I32 } else { types::I32X4 };
        let flags = MemFlagsData::new();
        let bits = self.fb.ins().bitcast(int_ty, flags, x);
        let constant = |kb: &mut Self, value: u32| {
            let scalar = kb.fb.ins().iconst(I32, value as i64);
            if ty == F32 { scalar } else { kb.fb.ins().splat(int_ty, scalar) }
        };
        let one = constant(self, 1);
        let bias = constant(self, 0x7fff);
        let high = constant(self, 0xffff_0000);
        let quiet = constant(self, 0x0040_0000);
        let sign = constant(self, 0x8000_0000);
        let magnitude = constant(self, 0x7fff_ffff);
        let exponent = constant(self, 0x7f80_0000);
        let zero = constant(self, 0);
        let lowest_kept = self.fb.ins().ushr_imm_u(bits, 16);
        let lowest_kept = self.fb.ins().band(lowest_kept, one);
        let sum = self.fb.ins().iadd(bits, bias);
        let sum = self.fb.ins().iadd(sum, lowest_kept);
        let rounded = self.fb.ins().band(sum, high);
        let nan = self.fb.ins().bor(bits, quiet);
        let nan = self.fb.ins().band(nan, high);
        let signed_zero = self.fb.ins().band(bits, sign);
        let abs = self.fb.ins().band(bits, magnitude);
        // Both sides are non-negative as signed integers.
        let is_nan = self.fb.ins().icmp(IntCC::SignedGreaterThan, abs, exponent);
        let exponent_bits = self.fb.ins().band(bits, exponent);
        let is_small = self.fb.ins().icmp(IntCC::Equal, exponent_bits, zero);
        let result = if ty == F32 {
            let r = self.fb.ins().select(is_small, signed_zero, rounded);
            self.fb.ins().select(is_nan, nan, r)
        } else {
            let r = self.fb.ins().bitselect(is_small, signed_zero, rounded);
            self.fb.ins().bitselect(is_nan, nan, r)
        };
        self.fb.ins().bitcast(ty, flags, result)
    }

    /// Writes `count` zeros from `dst`.
    pub fn zero_floats(&mut self, dst: Value, count: usize) {
        self.map_floats(count, &[], dst, |kb, ty, _| kb.constant(ty, 0.0));
    }

    /// `dst[i] = f(ty, [srcs[0][i], srcs[1][i], ...])` for `i` in `0..count`: four at a
    /// time with `ty` F32X4, then one at a time with `ty` F32 for the last `count % 4`.
    /// `f` builds a value of type `ty`. Elementwise and in order, so `dst` may equal a
    /// source (in place).
    pub fn map_floats(
        &mut self,
        count: usize,
        srcs: &[Value],
        dst: Value,
        mut f: impl FnMut(&mut Self, Type, &[Value]) -> Value,
    ) {
        let vectors = count / 4;
        // Unrolled by two when the count allows: the loop overhead is then paid once per
        // 8 floats.
        let unroll = if vectors >= 2 && vectors.is_multiple_of(2) { 2 } else { 1 };
        self.for_range(vectors / unroll, |kb, i| {
            let byte = kb.fb.ins().imul_imm_s(i, 16 * unroll as i64);
            let srcs: Vec<Value> = srcs.iter().map(|&s| kb.fb.ins().iadd(s, byte)).collect();
            let dst = kb.fb.ins().iadd(dst, byte);
            for u in 0..unroll {
                let offset = 16 * u as i64;
                let values: Vec<Value> = srcs.iter().map(|&s| kb.load(F32X4, s, offset)).collect();
                let value = f(kb, F32X4, &values);
                kb.store(value, dst, offset);
            }
        });
        for i in vectors * 4..count {
            let offset = 4 * i as i64;
            let values: Vec<Value> = srcs.iter().map(|&s| self.load(F32, s, offset)).collect();
            let value = f(self, F32, &values);
            self.store(value, dst, offset);
        }
    }

    /// Loads an i32 table entry and widens it to the pointer type.
    pub fn load_index(&mut self, addr: Value, offset: i64) -> Value {
        let value = self.fb.ins().load(I32, weight_flags(), addr, offset_i32(offset));
        self.fb.ins().uextend(self.ptr, value)
    }
}

/// A byte offset as Cranelift's 32-bit immediate. Tensors are limited to 2^36 elements by
/// the front end, but the codegen refuses (earlier) any value over 2 GiB, so this fits.
fn offset_i32(offset: i64) -> i32 {
    i32::try_from(offset).expect("offsets are checked to fit in 31 bits before codegen")
}
