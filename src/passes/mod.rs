//! Inference passes over the IR: plain functions `fn(&mut Graph) -> bool` (true when they
//! changed something), run in an explicit order. Each pass's doc says what it rewrites and
//! what it leaves alone; `ir::verify` runs after every pass in tests and debug builds.

pub mod convert_fc_to_conv;
pub mod eliminate_dead_nodes;
pub mod eliminate_identities;
pub mod fold_batchnorm;
pub mod fuse_epilogues;
pub mod plan_memory;

pub use convert_fc_to_conv::{convert_fc_to_conv, make_fully_convolutional};
pub use eliminate_dead_nodes::eliminate_dead_nodes;
pub use eliminate_identities::eliminate_identities;
pub use fold_batchnorm::fold_batchnorm;
pub use fuse_epilogues::fuse_epilogues;
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
    Pass { name: "fuse_epilogues", run: fuse_epilogues },
    Pass { name: "plan_memory", run: plan_memory },
];

/// The passes of an optimization level, in order.
pub fn pipeline(level: OptLevel) -> Vec<Pass> {
    let by_name = |name: &str| *ALL_PASSES.iter().find(|p| p.name == name).expect("pass exists");
    match level {
        OptLevel::O0 => Vec::new(),
        // Identities go first: a dropout between a conv and its BatchNorm would hide the
        // pattern fold_batchnorm looks for. Dead nodes last, to sweep what folding left.
        OptLevel::O1 => {
            vec![by_name("eliminate_identities"), by_name("fold_batchnorm"), by_name("eliminate_dead_nodes")]
        }
        // Fusion after folding (a BatchNorm between a conv and its ReLU would block it);
        // memory planning last, over the final graph.
        OptLevel::O2 => vec![
            by_name("eliminate_identities"),
            by_name("fold_batchnorm"),
            by_name("eliminate_dead_nodes"),
            by_name("fuse_epilogues"),
            by_name("plan_memory"),
        ],
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

/// Optimizes a graph at the given level.
pub fn optimize(graph: &mut Graph, level: OptLevel) -> Result<(), String> {
    run_pipeline(graph, &pipeline(level), &mut |_, _| {})
}
