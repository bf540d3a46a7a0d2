//! The front end: source text → syntax tree → IR with shapes, or located diagnostics.

pub mod ast;
pub mod lower;
pub mod parse;
mod syntax_error;

pub use lower::{BuildOptions, lower};

use crate::diag::Diag;
use crate::ir::Graph;

/// Parses and elaborates a program from its bytes. Errors come back as diagnostics
/// against the (decoded) source.
pub fn compile_bytes(bytes: &[u8], options: &BuildOptions) -> Result<Graph, Vec<Diag>> {
    let source = parse::decode(bytes).map_err(|d| vec![d])?;
    compile_source(source, options)
}

/// Parses and elaborates a program.
pub fn compile_source(source: &str, options: &BuildOptions) -> Result<Graph, Vec<Diag>> {
    let program = parse::parse(source).map_err(|d| vec![d])?;
    let graph = lower(&program, options)?;
    debug_assert!(crate::ir::verify(&graph).is_ok(), "{:?}", crate::ir::verify(&graph));
    Ok(graph)
}
