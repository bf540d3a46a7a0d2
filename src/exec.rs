//! Executors: one interface over the reference interpreter and the backends, so that
//! `run`, `bench` and the cross-target tests treat them alike.

use crate::ir::Graph;
use crate::passes::Capabilities;
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

    /// What the target's backend runs beyond the generic IR: the pass pipeline a graph
    /// compiled for it gets (`passes::optimize_for`). The CPU backend's tiles (pixels x
    /// channel blocks shared among threads) cannot take a pooling window; the GPU's
    /// direct convolution kernel can. The CPU's pointwise tiles take a gate (their
    /// weights scaled per image); the GPU's kernels do not. The reference interpreter gets the generic
    /// pipeline: it is the ground truth the others are compared with.
    pub fn capabilities(self) -> Capabilities {
        match self {
            Target::Cpu => Capabilities::CPU,
            Target::Reference => Capabilities::GENERIC,
            Target::Gpu => Capabilities::GPU,
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

impl Executor for crate::backend::clif::JitModel {
    fn target(&self) -> Target {
        Target::Cpu
    }
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        crate::backend::clif::JitModel::run(self, inputs)
    }
}

impl Executor for crate::backend::wgsl::GpuModel {
    fn target(&self) -> Target {
        Target::Gpu
    }
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        crate::backend::wgsl::GpuModel::run(self, inputs)
    }
}

/// How an executor runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    /// Threads of the CPU target per run; `None` chooses by the network's size
    /// ([`threads_for`]).
    pub threads: Option<usize>,
    /// The x86-64 level the CPU target compiles for (default: the host's CPU).
    pub cpu: Option<crate::backend::clif::CpuLevel>,
    /// The arithmetic of the layers that can run in it ([`crate::precision::assign`]):
    /// f32 by default, which leaves each layer at the precision the graph gives it. The
    /// reference target simulates bf16 exactly; the cpu target runs it as its f32
    /// kernels on bf16-rounded weights and inputs (the same results, at every CPU
    /// level); the gpu target runs f32 only. int8 is not set here but on the graph, from
    /// a calibration ([`crate::calibrate::Calibration::assign`]); both targets that run
    /// it then take the graph as it is.
    pub precision: crate::precision::Precision,
    /// Which kernels the cpu target runs bf16 layers on (by default the faster on this
    /// host, [`crate::backend::clif::Bf16Tiles`]).
    pub bf16_tiles: crate::backend::clif::Bf16Tiles,
}

/// The CPU target's threads unless told otherwise: one per core this process may use
/// (at most `MAX_THREADS`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(crate::backend::clif::MAX_THREADS)
}

/// Networks with fewer multiply-adds run on one thread by default: waking a second
/// thread and meeting at a barrier after every layer costs more than it saves (LeNet-5's
/// 0.4 M MACs take 30 microseconds on one core).
pub const PARALLEL_MIN_MACS: u64 = 20_000_000;

/// The median of timing samples (sorted in place); 0 for none. `bench` (cpu and gpu)
/// and `--precision auto` report medians of runs.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => 0.0,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

/// The CPU target's threads for a graph: as asked, else one per core for networks of
/// at least [`PARALLEL_MIN_MACS`] multiply-adds and one below.
pub fn threads_for(graph: &Graph, options: &ExecOptions) -> usize {
    options.threads.unwrap_or_else(|| {
        if crate::summary::summarize(graph).total_macs >= PARALLEL_MIN_MACS { default_threads() } else { 1 }
    })
}

/// Compiles a graph (optimized as the caller chose, weights bound) for a target. The
/// graph must be one the target runs: optimized with the generic pipeline or with the
/// target's own (`passes::optimize_for(graph, level, target.capabilities())`).
pub fn compile(graph: Graph, target: Target) -> Result<Box<dyn Executor>, String> {
    compile_with(graph, target, &ExecOptions::default())
}

/// Same, with the given options.
pub fn compile_with(mut graph: Graph, target: Target, options: &ExecOptions) -> Result<Box<dyn Executor>, String> {
    if options.precision.is_int8() {
        return Err("int8 takes a calibration: assign it to the graph (calibrate::Calibration::assign) and \
                    compile with precision f32 (the graph's own precisions)"
            .into());
    }
    if options.precision != crate::precision::Precision::F32 {
        if target == Target::Gpu {
            return Err(format!("--precision {}: the gpu target runs f32 only", options.precision));
        }
        crate::precision::assign(&mut graph, options.precision);
    }
    if target == Target::Gpu
        && let Some(node) = graph
            .node_ids()
            .into_iter()
            .map(|id| graph.node(id))
            .find(|n| n.precision != crate::precision::Precision::F32)
    {
        return Err(format!("--precision {}: the gpu target runs f32 only (layer `{}`)", node.precision, node.name));
    }
    match target {
        Target::Reference => Ok(Box::new(Reference { graph })),
        Target::Gpu => Ok(Box::new(crate::backend::wgsl::compile_gpu(&graph)?)),
        Target::Cpu => {
            let threads = threads_for(&graph, options);
            let codegen = crate::backend::clif::CodegenOptions {
                cpu: options.cpu,
                bf16_tiles: options.bf16_tiles,
                ..Default::default()
            };
            let mut model = crate::backend::clif::compile_jit_owned(graph, &codegen)?;
            model.set_threads(threads);
            Ok(Box::new(model))
        }
    }
}
