//! The kernels, one Cranelift function per node, and the helpers they share: counted
//! loops, loads and stores, f32x4 arithmetic, activations and fused epilogues.
//!
//! Every kernel takes the three buffers of `infer` (input, output, arena) and reaches its
//! operands at byte offsets baked into the code; shapes are constants. Loads and stores
//! are unaligned (`movups`) and never trap: every address a kernel forms lies inside the
//! value it reads or writes, which the loop bounds below guarantee (no over-reading tail,
//! no vector that straddles the end of a tensor).

pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod elementwise;
pub(crate) mod normalize;
pub(crate) mod pointwise;
pub(crate) mod pool;
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

/// The C math functions kernels call (imported as `expf`, `tanhf`, `powf`).
pub(crate) struct MathFns {
    pub expf: FuncRef,
    pub tanhf: FuncRef,
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
                let expf = self.math.expf;
                let exp = self.map_lanes(x, |kb, v| {
                    let negated = kb.fb.ins().fneg(v);
                    kb.call1(expf, negated)
                });
                let one = self.constant(ty, 1.0);
                let denominator = self.fb.ins().fadd(one, exp);
                self.fb.ins().fdiv(one, denominator)
            }
            Activation::Tanh => {
                let tanhf = self.math.tanhf;
                self.map_lanes(x, |kb, v| kb.call1(tanhf, v))
            }
        }
    }

    /// A fused epilogue on a computed value: activation, `+ residual` (loaded with the
    /// value's type from `residual`, an address and a byte offset), post-activation.
    pub fn epilogue(&mut self, epilogue: &Epilogue, x: Value, residual: Option<(Value, i64)>) -> Value {
        let mut x = x;
        if let Some(activation) = epilogue.activation {
            x = self.activation(activation, x);
        }
        if let Some((addr, offset)) = residual {
            let ty = self.fb.func.dfg.value_type(x);
            let r = self.load(ty, addr, offset);
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
