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
    println!(
        "{}: network {} is well-formed: {} layers, {} parameters, {} MACs",
        args.net.display(),
        graph.name,
        summary.layers.len(),
        cnnc::summary::thousands(summary.total_params),
        cnnc::summary::thousands(summary.total_macs)
    );
    Ok(())
}
