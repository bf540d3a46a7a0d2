//! `cnnc graph`: the graph in Graphviz DOT, or SVG: through Graphviz's `dot` where it is
//! installed, else cnnc's own layered layout (`cnnc report`'s), with a note saying so.
//! Both colour the boxes by op kind and shade them by their share of the multiply-adds.

use std::path::{Path, PathBuf};

use super::args::ShapeArgs;
use super::common::{UserError, prepare};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Output file (.dot or .svg); standard output if absent. SVG is laid out by
    /// Graphviz's `dot` when it is installed, else by cnnc itself (one row per depth).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let graph = prepare(&args.net, &args.shape, args.shape.batch as usize, None)?;
    let dot = cnnc::graphviz::to_dot(&graph);
    write_graph(&graph, &dot, args.output.as_deref())
}

fn write_graph(graph: &cnnc::ir::Graph, dot: &str, output: Option<&Path>) -> Result<(), UserError> {
    let Some(path) = output else {
        print!("{dot}");
        return Ok(());
    };
    let write_error = |e: std::io::Error| UserError(format!("error: cannot write {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "svg") {
        use std::io::Write;
        let spawned = std::process::Command::new(graphviz_dot())
            .args(["-Tsvg", "-o"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("note: Graphviz's `dot` is not installed; the SVG is laid out by cnnc (one row per depth)");
                return std::fs::write(path, cnnc::explain::report::graph_svg(graph)).map_err(write_error);
            }
            Err(e) => return Err(UserError(format!("error: cannot run Graphviz's `dot`: {e}"))),
        };
        child.stdin.take().expect("piped stdin").write_all(dot.as_bytes()).map_err(write_error)?;
        let status = child.wait().map_err(write_error)?;
        if !status.success() {
            return Err(UserError(format!("error: `dot -Tsvg` failed with {status}")));
        }
        return Ok(());
    }
    std::fs::write(path, dot).map_err(write_error)
}

/// Graphviz's `dot` program: `$CNNC_DOT` when set (the tests point it at a missing
/// program to exercise the built-in layout), else `dot` on the PATH.
fn graphviz_dot() -> std::ffi::OsString {
    std::env::var_os("CNNC_DOT").unwrap_or_else(|| "dot".into())
}
