//! The `cnnc` command line: argument parsing and output only; the work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cnnc::front::BuildOptions;
use cnnc::ir::Graph;

#[derive(Parser)]
#[command(name = "cnnc", version, about = "Compile CNN architectures into inference code")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ShapeArgs {
    /// Batch size the network is built for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
    /// Build for another input size, written CxHxW (e.g. 3x384x384).
    #[arg(long, value_name = "CxHxW")]
    input_shape: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and infer shapes; exit 0, or 1 with located errors.
    Check { net: PathBuf },
    /// Per layer: name, op, output shape, params, MACs, output bytes; totals.
    Summary {
        net: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print the IR as text (the form the snapshot tests hold).
    Ir {
        net: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// Write the graph in Graphviz DOT (or SVG, through Graphviz's `dot`, for `-o FILE.svg`).
    Graph {
        net: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
        /// Output file (.dot or .svg); standard output if absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// An error in the user's input, already rendered; exit code 1.
struct UserError(String);

impl From<String> for UserError {
    fn from(s: String) -> Self {
        UserError(s)
    }
}

/// Source files larger than this are refused rather than read whole.
const MAX_SOURCE_BYTES: u64 = 16 << 20;

fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, UserError> {
    let describe = |e: std::io::Error| UserError(format!("error: cannot read {what} {}: {e}", path.display()));
    let metadata = std::fs::metadata(path).map_err(describe)?;
    if metadata.is_dir() {
        return Err(UserError(format!("error: {} is a directory, not a {what}", path.display())));
    }
    if metadata.len() > limit {
        return Err(UserError(format!(
            "error: {} is {} bytes; a {what} may be at most {limit}",
            path.display(),
            metadata.len()
        )));
    }
    std::fs::read(path).map_err(describe)
}

fn parse_input_shape(text: &str) -> Result<Vec<usize>, UserError> {
    let dims: Result<Vec<usize>, _> = text.split(['x', 'X', ',']).map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(dims) if !dims.is_empty() && dims.iter().all(|&d| (1..=1 << 24).contains(&d)) => Ok(dims),
        _ => Err(UserError(format!(
            "error: --input-shape `{text}` is not CxHxW with positive sizes (for example 3x224x224)"
        ))),
    }
}

fn build_options(shape: &ShapeArgs) -> Result<BuildOptions, UserError> {
    Ok(BuildOptions {
        batch: shape.batch as usize,
        input_shape: shape.input_shape.as_deref().map(parse_input_shape).transpose()?,
    })
}

fn load(path: &Path, options: &BuildOptions) -> Result<Graph, UserError> {
    let bytes = read_limited(path, MAX_SOURCE_BYTES, "program")?;
    let file_name = path.display().to_string();
    cnnc::front::compile_bytes(&bytes, options).map_err(|diags| {
        let source = String::from_utf8_lossy(&bytes);
        let mut text = cnnc::diag::render(&file_name, &source, &diags);
        if diags.len() > 1 {
            text += &format!("error: {} errors in {file_name}\n", diags.len());
        }
        UserError(text)
    })
}

fn run(cli: Cli) -> Result<(), UserError> {
    match cli.command {
        Command::Check { net } => {
            let graph = load(&net, &BuildOptions::default())?;
            let summary = cnnc::summary::summarize(&graph);
            println!(
                "{}: network {} is well-formed: {} layers, {} parameters, {} MACs",
                net.display(),
                graph.name,
                summary.layers.len(),
                cnnc::summary::thousands(summary.total_params),
                cnnc::summary::thousands(summary.total_macs)
            );
        }
        Command::Summary { net, shape, format } => {
            let graph = load(&net, &build_options(&shape)?)?;
            let summary = cnnc::summary::summarize(&graph);
            match format {
                Format::Table => print!("{}", cnnc::summary::render_table(&summary)),
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| UserError(e.to_string()))?)
                }
            }
        }
        Command::Ir { net, shape } => {
            let graph = load(&net, &build_options(&shape)?)?;
            print!("{}", cnnc::ir::print(&graph));
        }
        Command::Graph { net, shape, output } => {
            let graph = load(&net, &build_options(&shape)?)?;
            let dot = cnnc::graphviz::to_dot(&graph);
            write_graph(&dot, output.as_deref())?;
        }
    }
    Ok(())
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(UserError(message)) => {
            eprint!("{message}");
            if !message.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(1)
        }
    }
}
