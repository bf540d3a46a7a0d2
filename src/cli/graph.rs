//! `cnnc graph`: the graph in Graphviz DOT, or SVG through Graphviz's `dot`.

use std::path::{Path, PathBuf};

use super::args::ShapeArgs;
use super::common::{UserError, prepare};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Output file (.dot or .svg); standard output if absent.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let graph = prepare(&args.net, &args.shape, args.shape.batch as usize, None)?;
    let dot = cnnc::graphviz::to_dot(&graph);
    write_graph(&dot, args.output.as_deref())
}

fn write_graph(dot: &str, output: Option<&Path>) -> Result<(), UserError> {
    let Some(path) = output else {
        print!("{dot}");
        return Ok(());
    };
    let write_error = |e: std::io::Error| UserError(format!("error: cannot write {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "svg") {
        use std::io::Write;
        let mut child = std::process::Command::new("dot")
            .args(["-Tsvg", "-o"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                UserError(format!(
                    "error: SVG output needs Graphviz's `dot` program ({e}); install graphviz or write a .dot file"
                ))
            })?;
        child.stdin.take().expect("piped stdin").write_all(dot.as_bytes()).map_err(write_error)?;
        let status = child.wait().map_err(write_error)?;
        if !status.success() {
            return Err(UserError(format!("error: `dot -Tsvg` failed with {status}")));
        }
        return Ok(());
    }
    std::fs::write(path, dot).map_err(write_error)
}
