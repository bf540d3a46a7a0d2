//! Exporters: a graph and its weights written in formats other tools read.
//!
//! - [`onnx`]: an ONNX model (opset 17) with the weights as initializers, run by ONNX
//!   Runtime as an independent oracle for the reference interpreter (`tests/oracle.rs`).

pub mod onnx;
