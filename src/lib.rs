//! cnnc compiles networks written in the cnn language into inference code.
//!
//! The pipeline, stage by stage:
//!
//! 1. [`front`]: the source is decoded, checked for sane nesting, parsed by pest into a
//!    syntax tree ([`front::ast`]) with byte spans, then elaborated ([`front::lower`]):
//!    blocks, `seq` and `repeat` are expanded, every layer gets its PyTorch `state_dict`
//!    name, op arguments are resolved and every value's shape is inferred.
//! 2. [`ir`]: the result is a [`ir::Graph`], a petgraph `StableDiGraph` with one node per
//!    op. Its invariants are written next to the type and checked by [`ir::verify`].
//!    [`ir::print`] is its deterministic text form.
//! 3. [`passes`]: the optimizing pipeline (`-O0/-O1/-O2`), each pass a plain function
//!    over the graph, `ir::verify` after each.
//! 4. [`interp`] (the reference), [`backend::clif`] (native code through Cranelift: JIT
//!    and object files) and [`backend::wgsl`] (WGSL through wgpu) execute the graph;
//!    [`exec`] puts them behind one interface and [`build`] embeds the native code in a
//!    Rust crate from its build script.
//! 5. [`summary`]: per-layer cost (parameters, MACs, bytes) of a graph; [`budget`]: the
//!    memory a network needs, checked against a limit before anything is allocated.
//!
//! Every error in a user's input is a [`diag::Diag`] with a span, rendered against the
//! source by [`diag::render`]; nothing a user writes makes the compiler panic.

pub mod auto_precision;
pub mod backend;
pub mod budget;
pub mod build_script;
pub mod calibrate;
pub mod compare;
pub mod diag;
pub mod exec;
pub mod explain;
pub mod export;
pub mod front;
pub mod graphviz;
pub mod import;
pub mod interp;
pub mod io;
pub mod ir;
pub mod passes;
pub mod precision;
pub mod summary;
pub mod tensor;
pub mod weights;

/// The GPU runtime: WGSL kernels run through wgpu.
pub use backend::wgsl as gpu;

/// The build-script API: `cnnc::build::Model::new("net.cnn").weights(..).compile()`.
pub use build_script as build;
