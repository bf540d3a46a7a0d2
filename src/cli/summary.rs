//! `cnnc summary`: parameters, multiply-adds and bytes per layer.

use std::path::PathBuf;

use cnnc::passes::{self, OptLevel};

use super::args::{Format, ShapeArgs};
use super::common::{UserError, error, prepare};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Summarize the -O2 graph: its kernels, and the memory plan's arena against the
    /// sum of all intermediates.
    #[arg(long)]
    optimized: bool,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let mut graph = prepare(&args.net, &args.shape, args.shape.batch as usize, None)?;
    let nodes_before = graph.node_count();
    if args.optimized {
        passes::optimize(&mut graph, OptLevel::O2)?;
    }
    let mut summary = cnnc::summary::summarize(&graph);
    if args.optimized {
        summary.optimized = Some(cnnc::summary::optimized_stats(&graph, nodes_before));
    }
    summary.memory = Some(cnnc::budget::need(&graph).map_err(error)?);
    match args.format {
        Format::Table => print!("{}", cnnc::summary::render_table(&summary)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary).map_err(error)?),
    }
    Ok(())
}
