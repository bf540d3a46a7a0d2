//! Code generators. Each takes an optimized, verified graph with its memory plan and
//! bound weights: `clif` emits native code through Cranelift (JIT and object files),
//! `wgsl` emits WGSL compute shaders run through wgpu.

pub mod clif;
pub mod wgsl;
