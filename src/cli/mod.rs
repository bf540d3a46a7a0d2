//! The `cnnc` command line: one file per subcommand, each declaring its arguments
//! (`Args`) and running them (`exec`); the argument groups several commands share are in
//! `args.rs`, the steps they share (reading a program, binding weights) in `common.rs`.
//! Argument parsing and printing only: the work is in the library.

mod args;
mod bench;
mod build;
mod calibrate;
mod check;
mod common;
mod explain;
mod graph;
mod import;
mod ir;
mod report;
mod run;
mod summary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::UserError;

#[derive(Parser)]
#[command(
    name = "cnnc",
    version,
    about = "Compile CNN architectures into inference code",
    after_help = "The .cnn language is described in docs/language.md (in the cnnc repository), \
                  the commands in README.md. Exit codes: 0 success, 1 an error in your input, 2 bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and infer shapes; exit 0, or 1 with located errors.
    Check(check::Args),
    /// Per layer: name, op, output shape, params, MACs, output bytes; totals.
    Summary(summary::Args),
    /// Print the IR as text (the form the snapshot tests hold).
    ///
    /// The IR after the pass pipeline of a target (--target): the generic one by default,
    /// which the reference interpreter runs; the cpu target's also fuses
    /// squeeze-and-excitation's multiply into the 1x1 conv after it (`cnnc ir net.cnn
    /// --target cpu --after fuse_gates`), the gpu target's pooling into convolutions
    /// (`cnnc ir net.cnn --target gpu --after fuse_pooling`).
    Ir(ir::Args),
    /// Run a network on its inputs (.npy, or PNG/JPEG images) and print its outputs.
    ///
    /// An image is decoded, converted to the input's channels (grayscale with PIL's
    /// weights, or RGB; alpha dropped) and resized to its height and width (bilinear),
    /// with a note on stderr whenever it was converted or resized; its pixels are then
    /// scaled to [0, 1] and normalized per channel as (x - mean) / std (--mean, --std).
    /// A .npy input is used as it is: float32 [N, C, H, W] or [C, H, W].
    Run(run::Args),
    /// Build artifacts: a native object and C header (--target cpu), WGSL kernels with
    /// their dispatch plan and weights (--target gpu), ONNX, the IR and the graph.
    Build(build::Args),
    /// Time a network: warm-up, repeated runs, median and min, GFLOP/s, peak memory.
    Bench(bench::Args),
    /// Measure each conv and linear layer's input range on sample inputs (the reference
    /// interpreter, in f32) and write the calibration `--precision int8 --calib` reads.
    Calibrate(calibrate::Args),
    /// Show which pixels of an image a class depends on: occlusion or RISE saliency,
    /// blended over the image as a PNG, with the raw map beside it as .npy.
    ///
    /// Occlusion: a window slides over the input (--window, --stride), filled with 0
    /// (--fill); each pixel gets the mean drop of the class's score (--score) over the
    /// windows covering it. RISE (--method rise): random smooth masks (--masks, --cells);
    /// each pixel gets the mean score of the copies that keep it less the mean of all.
    /// The copies run in batches (--batch) on the cpu target.
    Explain(explain::Args),
    /// Write a self-contained HTML page about a network: the graph as SVG (coloured by op
    /// kind, shaded by multiply-adds), the per-layer table with the cpu target's
    /// algorithms and measured times, and with --input the activations and saliency.
    Report(report::Args),
    /// Write the graph in Graphviz DOT (or SVG, through Graphviz's `dot`, for `-o FILE.svg`).
    Graph(graph::Args),
    /// Import an ONNX model as a .cnn program and safetensors weights (checked to
    /// elaborate to the imported graph); --check compares it with ONNX Runtime.
    Import(import::Args),
}

fn exec(command: &Command) -> Result<(), UserError> {
    match command {
        Command::Check(args) => check::exec(args),
        Command::Summary(args) => summary::exec(args),
        Command::Ir(args) => ir::exec(args),
        Command::Run(args) => run::exec(args),
        Command::Build(args) => build::exec(args),
        Command::Bench(args) => bench::exec(args),
        Command::Calibrate(args) => calibrate::exec(args),
        Command::Graph(args) => graph::exec(args),
        Command::Import(args) => import::exec(args),
        Command::Explain(args) => explain::exec(args),
        Command::Report(args) => report::exec(args),
    }
}

/// Mesa's Vulkan loader complains on stderr when XDG_RUNTIME_DIR is unset (common in
/// containers and CI); give it a private directory before any thread starts.
fn ensure_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    // One directory per user, reused across runs.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_else(|| "user".into());
    let dir = std::env::temp_dir().join(format!("cnnc-runtime-{uid}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

/// Prints clap's message for a command line it refused. A flag's value that does not
/// parse (`--cpu nonsense`, `--batch 0`) is an error in the user's input, exit 1, like
/// every other bad value; a command line of the wrong form (an unknown flag, a missing
/// argument, no command at all) is bad usage, exit 2; `--help` and `--version` succeed.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // Printing can only fail on a closed stream, and then there is no one to tell.
    let _ = error.print();
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8 => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

/// Parses the command line, runs the command, and turns its error into exit code 1
/// (clap's errors: see `usage_error`).
pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `cnnc run ... | head` into a panic on the next
    // print; a command-line tool should end quietly instead, as cat and grep do.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let uses_gpu = match &cli.command {
        Command::Run(args) => args.uses_gpu(),
        Command::Bench(args) => args.uses_gpu(),
        _ => false,
    };
    if uses_gpu {
        ensure_runtime_dir();
    }
    match exec(&cli.command) {
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
