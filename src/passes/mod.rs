//! Inference passes over the IR: plain functions `fn(&mut Graph) -> bool` (true when they
//! changed something), run in an explicit order. Each pass's doc says what it rewrites and
//! what it leaves alone; `ir::verify` runs after every pass in tests and debug builds.
//!
//! Pipelines are target-aware: a fusion that only some backends can run is in the
//! pipeline of those backends only. A backend states what it runs beyond the generic IR
//! as [`Capabilities`] (`exec::Target::capabilities`); [`pipeline`] and [`optimize`] are
//! the generic pipeline (the reference interpreter),
//! [`pipeline_for`] and [`optimize_for`] a backend's.

pub mod convert_fc_to_conv;
pub mod eliminate_dead_nodes;
pub mod eliminate_identities;
pub mod fold_batchnorm;
pub mod fold_channels_last;
pub mod fuse_epilogues;
pub mod fuse_gates;
pub mod fuse_pooling;
pub mod plan_memory;

pub use convert_fc_to_conv::{convert_fc_to_conv, make_fully_convolutional};
pub use eliminate_dead_nodes::eliminate_dead_nodes;
pub use eliminate_identities::eliminate_identities;
pub use fold_batchnorm::fold_batchnorm;
pub use fold_channels_last::fold_channels_last;
pub use fuse_epilogues::fuse_epilogues;
pub use fuse_gates::fuse_gates;
pub use fuse_pooling::fuse_pooling;
pub use plan_memory::plan_memory;

use crate::ir::{self, Graph};

/// A named pass.
#[derive(Clone, Copy)]
pub struct Pass {
    pub name: &'static str,
    pub run: fn(&mut Graph) -> bool,
}

/// How much to optimize: `-O0` runs the IR as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum OptLevel {
    O0,
    O1,
    #[default]
    O2,
}

/// Every pass, for `--after NAME`.
pub const ALL_PASSES: &[Pass] = &[
    Pass { name: "eliminate_identities", run: eliminate_identities },
    Pass { name: "fold_batchnorm", run: fold_batchnorm },
    Pass { name: "eliminate_dead_nodes", run: eliminate_dead_nodes },
    Pass { name: "convert_fc_to_conv", run: convert_fc_to_conv },
    Pass { name: "fold_channels_last", run: fold_channels_last },
    Pass { name: "fuse_epilogues", run: fuse_epilogues },
    Pass { name: "fuse_gates", run: fuse_gates },
    Pass { name: "fuse_pooling", run: fuse_pooling },
    Pass { name: "plan_memory", run: plan_memory },
];

/// What a backend can run beyond the generic IR, which decides the passes of its
/// pipeline. Stated per fused form rather than per backend, so that the passes need not
/// know the backends: a new backend lists what it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Convolutions whose epilogue pools (`ir::PoolEpilogue`, written by `fuse_pooling`).
    pub fused_pooling: bool,
    /// 1x1 convolutions that multiply their input by a per-image, per-channel gate
    /// (`ir::Epilogue::gate`, written by `fuse_gates`).
    pub gated_convolutions: bool,
}

impl Capabilities {
    /// The generic IR only: what every executor runs. The reference interpreter runs
    /// anything, but gets this pipeline so that `cnnc ir` and the ground truth show the
    /// network without backend-specific rewrites.
    pub const GENERIC: Capabilities = Capabilities { fused_pooling: false, gated_convolutions: false };
    /// The CPU backend: gated pointwise convolutions (the weights scaled per image).
    pub const CPU: Capabilities = Capabilities { fused_pooling: false, gated_convolutions: true };
    /// The GPU backend: fused pooling in its direct convolution kernel.
    pub const GPU: Capabilities = Capabilities { fused_pooling: true, gated_convolutions: false };
}

/// The passes of an optimization level, in order: the generic pipeline.
pub fn pipeline(level: OptLevel) -> Vec<Pass> {
    pipeline_for(level, Capabilities::GENERIC)
}

/// The passes of an optimization level for a backend that runs `capabilities`, in order.
pub fn pipeline_for(level: OptLevel, capabilities: Capabilities) -> Vec<Pass> {
    let by_name = |name: &str| *ALL_PASSES.iter().find(|p| p.name == name).expect("pass exists");
    match level {
        OptLevel::O0 => Vec::new(),
        // Identities go first: a dropout between a conv and its BatchNorm would hide the
        // pattern fold_batchnorm looks for. Dead nodes last, to sweep what folding left.
        OptLevel::O1 => {
            vec![by_name("eliminate_identities"), by_name("fold_batchnorm"), by_name("eliminate_dead_nodes")]
        }
        // Fusion after folding (a BatchNorm between a conv and its ReLU would block it);
        // pooling after the elementwise fusions (the ReLU between a conv and its pool must
        // be in the conv's epilogue first, or the conv's sole user is the ReLU); memory
        // planning last, over the final graph. The channels-last sandwich folds before
        // fusion, so that its 1x1 convs take their activations.
        OptLevel::O2 => {
            let mut passes = vec![
                by_name("eliminate_identities"),
                by_name("fold_batchnorm"),
                by_name("eliminate_dead_nodes"),
                by_name("fold_channels_last"),
                by_name("fuse_epilogues"),
            ];
            if capabilities.gated_convolutions {
                passes.push(by_name("fuse_gates"));
            }
            if capabilities.fused_pooling {
                passes.push(by_name("fuse_pooling"));
            }
            passes.push(by_name("plan_memory"));
            passes
        }
    }
}

/// Runs the passes in order, verifying after each one in debug builds, and calls
/// `after(pass name, graph)` after each (for `--print-after-all`).
pub fn run_pipeline(graph: &mut Graph, passes: &[Pass], after: &mut dyn FnMut(&str, &Graph)) -> Result<(), String> {
    for pass in passes {
        (pass.run)(graph);
        if cfg!(debug_assertions) || cfg!(test) {
            ir::verify(graph).map_err(|e| format!("internal error: the IR is invalid after {}:\n{e}", pass.name))?;
        }
        after(pass.name, graph);
    }
    Ok(())
}

/// Optimizes a graph at the given level with the generic pipeline.
pub fn optimize(graph: &mut Graph, level: OptLevel) -> Result<(), String> {
    optimize_for(graph, level, Capabilities::GENERIC)
}

/// Optimizes a graph at the given level for a backend that runs `capabilities`.
pub fn optimize_for(graph: &mut Graph, level: OptLevel, capabilities: Capabilities) -> Result<(), String> {
    run_pipeline(graph, &pipeline_for(level, capabilities), &mut |_, _| {})
}
