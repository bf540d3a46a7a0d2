//! Native code through Cranelift: a JIT for `cnnc run` and relocatable objects with a C
//! header for embedding.
//!
//! The code generator (`codegen.rs`) is written once, generic over
//! `cranelift_module::Module`; `jit.rs` and `object.rs` are thin wrappers over
//! `cranelift-jit` and `cranelift-object`. It takes an optimized graph (`passes::optimize`
//! at O2: no batch norm or dropout left, epilogues fused, a memory plan) with bound
//! weights, and emits one function per node (`kernels/`) plus `infer`, which runs them
//! in topological order over the planned arena, and `infer_part`, the same run shared
//! by several threads (each kernel does its part's share, then all meet at a barrier;
//! `threads.rs` is the JIT's pool). Shapes are constants in the code;
//! weights are packed for the kernels at build time into read-only data.
//!
//! Invariant: the generated code reads and writes only its buffers (input, output,
//! arena) and its own read-only data.

mod codegen;
mod jit;
mod kernels;
mod object;
mod threads;

pub use codegen::{
    Bf16Tiles, ClifOptLevel, CodegenOptions, CpuLevel, KernelInfo, host_has_bf16, host_prefers_bf16_tiles,
};
pub use jit::{JitModel, MAX_JIT_KERNELS, MAX_THREADS, compile_jit, compile_jit_owned, compile_jit_with};
pub use kernels::MicroKernel;
pub use object::{ObjectArtifacts, compile_object, compile_object_with};
