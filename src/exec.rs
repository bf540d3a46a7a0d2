//! Executors: one interface over the reference interpreter and the backends, so that
//! `run`, `bench` and the cross-target tests treat them alike.

use crate::ir::Graph;
use crate::tensor::Tensor;

/// Where a network runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Native code through Cranelift.
    Cpu,
    /// WGSL compute shaders through wgpu.
    Gpu,
    /// The reference interpreter: plain loops, the ground truth.
    Reference,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Gpu => "gpu",
            Target::Reference => "reference",
        }
    }
}

/// A network compiled for one target, ready to run.
pub trait Executor {
    fn target(&self) -> Target;
    /// Runs on inputs in `Graph::inputs` order; returns outputs in `Graph::outputs` order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String>;
}

struct Reference {
    graph: Graph,
}

impl Executor for Reference {
    fn target(&self) -> Target {
        Target::Reference
    }
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        crate::interp::run(&self.graph, &self.graph.weights, inputs).map_err(|e| e.to_string())
    }
}

/// Compiles a graph (optimized as the caller chose, weights bound) for a target.
pub fn compile(graph: Graph, target: Target) -> Result<Box<dyn Executor>, String> {
    match target {
        Target::Reference => Ok(Box::new(Reference { graph })),
        Target::Cpu | Target::Gpu => {
            Err(format!("--target {} is not built yet in this version of cnnc; use --target reference", target.name()))
        }
    }
}
