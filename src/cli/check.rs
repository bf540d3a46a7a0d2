//! `cnnc check`: parse, elaborate and infer shapes.

use std::path::PathBuf;

use cnnc::front::BuildOptions;

use super::common::{UserError, load};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let graph = load(&args.net, &BuildOptions::default())?;
    let summary = cnnc::summary::summarize(&graph);
    let memory = match cnnc::budget::need(&graph) {
        Ok(need) => format!("{} of memory to run", cnnc::budget::fmt_bytes(need.total)),
        Err(e) => e.to_string(),
    };
    println!(
        "{}: network {} is well-formed: {} layers, {} parameters, {} MACs; {memory}",
        args.net.display(),
        graph.name,
        summary.layers.len(),
        cnnc::summary::thousands(summary.total_params),
        cnnc::summary::thousands(summary.total_macs)
    );
    Ok(())
}
