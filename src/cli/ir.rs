//! `cnnc ir`: the IR as text, after the pass pipeline of a target.

use std::path::PathBuf;

use cnnc::passes;

use super::args::{OptArgs, ShapeArgs, Target};
use super::common::{UserError, prepare};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    opt: OptArgs,
    /// Whose pass pipeline to run: the passes depend on what the target's backend can
    /// run (reference and cpu: the generic pipeline; gpu: plus fuse_pooling at -O2).
    #[arg(long, value_enum, default_value = "reference")]
    target: Target,
    /// Print the IR after this pass of the pipeline (and stop there).
    #[arg(long, value_name = "PASS", conflicts_with = "print_after_all")]
    after: Option<String>,
    /// Print the IR before the passes and after every pass.
    #[arg(long)]
    print_after_all: bool,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let Args { net, shape, opt, target, after, print_after_all } = args;
    let print_after_all = *print_after_all;
    let mut graph = prepare(net, shape, shape.batch as usize, None)?;
    let mut pipeline = passes::pipeline_for(opt.level(), target.to_exec().capabilities());
    if let Some(after) = after {
        let Some(position) = pipeline.iter().position(|p| p.name == after.as_str()) else {
            let names: Vec<&str> = pipeline.iter().map(|p| p.name).collect();
            return Err(UserError(format!(
                "error: no pass `{after}` in the -O{} pipeline of target {}; it runs: {}",
                opt.opt_level,
                target.to_exec().name(),
                if names.is_empty() { "no passes".to_string() } else { names.join(", ") }
            )));
        };
        pipeline.truncate(position + 1);
    }
    if print_after_all {
        println!("; before any pass");
        print!("{}", cnnc::ir::print(&graph));
    }
    passes::run_pipeline(&mut graph, &pipeline, &mut |name, graph| {
        if print_after_all {
            println!("; after {name}");
            print!("{}{}", cnnc::ir::print(graph), cnnc::ir::print::print_memory_plan(graph));
        }
    })?;
    if !print_after_all {
        // The memory plan too, once planned: where concat elimination shows.
        print!("{}{}", cnnc::ir::print(&graph), cnnc::ir::print::print_memory_plan(&graph));
    }
    Ok(())
}
