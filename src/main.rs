//! The `cnnc` command line: argument parsing and output only; the work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cnnc::front::BuildOptions;
use cnnc::ir::Graph;
use cnnc::passes::{self, OptLevel};

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
    /// Turn the classifier into convolutions and output the class-score map for the
    /// --input-shape (the classifier slides over the image).
    #[arg(long)]
    fully_conv: bool,
    /// With --fully-conv: average the score map into one prediction per image.
    #[arg(long, requires = "fully_conv")]
    average: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    /// Input: FILE, or NAME=FILE for each of several inputs; .npy float32 [N,C,H,W] or [C,H,W], or an image.
    #[arg(long, required = true, value_name = "FILE")]
    input: Vec<String>,
    /// Output .npy (one output) or directory (several outputs, one NAME.npy each).
    #[arg(long, value_name = "Y.npy|DIR")]
    output: Option<PathBuf>,
    /// Executor: native code (cpu, the default), the GPU (gpu), or the reference interpreter.
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// Run on every listed target (e.g. cpu,gpu,reference) and report, layer by layer,
    /// each one's relative L2 error against the reference and the first layer where one
    /// disagrees beyond 1e-4 (exit status 1 then).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TARGETS")]
    compare: Vec<Target>,
    #[command(flatten)]
    opt: OptArgs,
    #[command(flatten)]
    threads: ThreadArgs,
    /// Print the K most likely classes of each batch item.
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Class names, one per line, for --top.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Per-channel mean for image inputs (default: ImageNet's for RGB, 0 otherwise).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation for image inputs (default: ImageNet's for RGB, 1 otherwise).
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    #[command(flatten)]
    shape: ShapeArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum BuildTarget {
    /// A relocatable object and a C header (Cranelift).
    Cpu,
    /// WGSL shader modules (NET.wgsl/), a dispatch plan (NET.plan.json) and the weights
    /// blob (NET.weights), loaded by `cnnc::gpu::GpuModel::load(DIR, NET)`.
    Gpu,
}

#[derive(clap::Args)]
struct BuildArgs {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    opt: OptArgs,
    #[arg(long, value_enum, default_value = "cpu")]
    target: BuildTarget,
    /// What to write (default for --target cpu: obj,header).
    #[arg(long, value_enum, value_delimiter = ',')]
    emit: Vec<Emit>,
    /// Build the object for another machine, e.g. aarch64-unknown-linux-gnu or
    /// x86_64-unknown-linux-gnu (baseline x86-64-v2); default: this machine's CPU.
    #[arg(long, value_name = "TRIPLE")]
    target_triple: Option<String>,
    /// x86-64 level of the object's code: only instructions of that level (default: this
    /// machine's CPU, or the triple's baseline, x86-64-v2).
    #[arg(long, value_enum)]
    cpu: Option<CpuArg>,
    /// Output directory.
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
    net: PathBuf,
    /// Weights as safetensors; random He-normal weights (--seed) when absent.
    #[arg(long, value_name = "FILE.safetensors")]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    opt: OptArgs,
    /// Executor to time.
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100000))]
    runs: u32,
    #[command(flatten)]
    threads: ThreadArgs,
    /// Also time every kernel (cpu target): time, share, GFLOP/s and the algorithm
    /// chosen, medians over the timed runs. (The gpu target always reports its
    /// per-dispatch times.)
    #[arg(long)]
    profile: bool,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(clap::Args)]
struct ThreadArgs {
    /// Threads that share each run on the cpu target (1 to 16; default: one per core, or
    /// one for networks under 20 M multiply-adds).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    threads: Option<u32>,
    /// x86-64 level of the cpu target's code (default: everything this CPU has).
    #[arg(long, value_enum)]
    cpu: Option<CpuArg>,
}

impl ThreadArgs {
    fn options(&self) -> cnnc::exec::ExecOptions {
        cnnc::exec::ExecOptions { threads: self.threads.map(|n| n as usize), cpu: self.cpu.map(CpuArg::level) }
    }
}

/// `--cpu`: an x86-64 micro-architecture level.
#[derive(Clone, Copy, ValueEnum)]
enum CpuArg {
    /// SSE4.2: 128-bit vectors (Cranelift's f32x4 code only).
    #[value(name = "x86-64-v2")]
    V2,
    /// AVX2 and FMA: 256-bit micro-kernels.
    #[value(name = "x86-64-v3")]
    V3,
    /// AVX-512: 512-bit micro-kernels.
    #[value(name = "x86-64-v4")]
    V4,
}

impl CpuArg {
    fn level(self) -> cnnc::backend::clif::CpuLevel {
        match self {
            CpuArg::V2 => cnnc::backend::clif::CpuLevel::X86_64V2,
            CpuArg::V3 => cnnc::backend::clif::CpuLevel::X86_64V3,
            CpuArg::V4 => cnnc::backend::clif::CpuLevel::X86_64V4,
        }
    }
}

#[derive(serde::Serialize)]
struct BenchReport {
    network: String,
    target: String,
    batch: usize,
    opt_level: String,
    macs: u64,
    threads: usize,
    compile_ms: f64,
    runs: u32,
    median_ms: f64,
    min_ms: f64,
    gflops: f64,
    peak_rss_mb: Option<f64>,
}

/// The process's peak resident memory, from /proc (Linux only).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One kernel's line in `bench --profile`.
#[derive(serde::Serialize)]
struct KernelProfile {
    kernel: String,
    algorithm: String,
    median_ms: f64,
    share: f64,
    gflops: f64,
    /// Multiply-adds the kernel does (a pooling conv counts its unpooled work).
    macs: u64,
}

/// `bench --profile`: every kernel's median time over the timed runs.
fn profile_cpu(
    args: &BenchArgs,
    graph: &cnnc::ir::Graph,
    inputs: &[cnnc::tensor::Tensor],
    options: &cnnc::exec::ExecOptions,
) -> Result<(), UserError> {
    let fail = |e: String| UserError(format!("error: {e}"));
    let codegen = cnnc::backend::clif::CodegenOptions { profile: true, cpu: options.cpu, ..Default::default() };
    let mut model = cnnc::backend::clif::compile_jit_with(graph, &codegen).map_err(fail)?;
    model.set_threads(cnnc::exec::threads_for(graph, options));
    for _ in 0..args.warmup {
        model.run(inputs).map_err(fail)?;
    }
    let kernels = model.kernels().to_vec();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
    for _ in 0..args.runs {
        for (index, (_, seconds)) in model.profile(inputs).map_err(fail)?.into_iter().enumerate() {
            if let Some(s) = samples.get_mut(index) {
                s.push(seconds * 1e3);
            }
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let total: f64 = medians.iter().sum();
    let rows: Vec<KernelProfile> = kernels
        .iter()
        .zip(&medians)
        .map(|(k, &ms)| KernelProfile {
            kernel: k.name.clone(),
            algorithm: k.algorithm.clone(),
            median_ms: ms,
            share: if total > 0.0 { ms / total } else { 0.0 },
            gflops: if ms > 0.0 { 2.0 * k.macs as f64 / (ms * 1e6) } else { 0.0 },
            macs: k.macs,
        })
        .collect();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| UserError(e.to_string()))?),
        Format::Table => {
            println!(
                "{} on cpu (batch {}, -O{}, {} thread{}): kernels, medians of {} runs",
                graph.name,
                graph.node(graph.inputs[0]).shape[0],
                args.opt.opt_level,
                model.threads(),
                if model.threads() == 1 { "" } else { "s" },
                args.runs
            );
            let width = rows.iter().map(|r| r.kernel.len()).max().unwrap_or(6).max(6);
            println!("  {:<width$}  {:>9}  {:>6}  {:>8}  algorithm", "kernel", "ms", "share", "GFLOP/s");
            for r in &rows {
                println!(
                    "  {:<width$}  {:>9.3}  {:>5.1}%  {:>8.1}  {}",
                    r.kernel,
                    r.median_ms,
                    100.0 * r.share,
                    r.gflops,
                    r.algorithm
                );
            }
            println!("  {:<width$}  {:>9.3}", "total", total);
        }
    }
    Ok(())
}

/// The median of samples (sorted in place); 0 for none.
fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

fn bench_command(args: &BenchArgs) -> Result<(), UserError> {
    let weights = WeightArgs {
        source: WeightSource { weights: args.weights.clone(), random_weights: args.weights.is_none() },
        seed: args.seed,
        allow_unused_weights: false,
    };
    let batch = args.shape.batch as usize;
    let mut graph = prepare(&args.net, &args.shape, batch, Some(&weights))?;
    let macs = cnnc::summary::summarize(&graph).total_macs;
    let inputs: Vec<cnnc::tensor::Tensor> =
        graph.inputs.iter().map(|&i| cnnc::weights::random_normal(&graph.node(i).shape, args.seed + 1)).collect();
    let network = graph.name.clone();
    let started = std::time::Instant::now();
    passes::optimize_for(&mut graph, args.opt.level(), args.target.to_exec().capabilities())?;
    if args.target == Target::Gpu {
        return bench_gpu_command(args, &graph, &inputs, macs);
    }
    // The thread count resolved once (the default depends on the network's size).
    let asked = args.threads.options();
    let threads = cnnc::exec::threads_for(&graph, &asked);
    let options = cnnc::exec::ExecOptions { threads: Some(threads), ..asked };
    if args.profile {
        if args.target != Target::Cpu {
            return Err(UserError("error: --profile times the kernels of the cpu target only".into()));
        }
        return profile_cpu(args, &graph, &inputs, &options);
    }
    let executor = cnnc::exec::compile_with(graph, args.target.to_exec(), &options)
        .map_err(|e| UserError(format!("error: {e}")))?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    for _ in 0..args.warmup {
        executor.run(&inputs).map_err(|e| UserError(format!("error: {e}")))?;
    }
    let mut times = Vec::new();
    for _ in 0..args.runs {
        let start = std::time::Instant::now();
        executor.run(&inputs).map_err(|e| UserError(format!("error: {e}")))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let median_ms = median(&mut times);
    let report = BenchReport {
        network,
        target: args.target.to_exec().name().to_string(),
        batch,
        opt_level: format!("-O{}", args.opt.opt_level),
        macs,
        threads: if args.target == Target::Cpu { threads } else { 1 },
        compile_ms,
        runs: args.runs,
        median_ms,
        min_ms: times[0],
        gflops: 2.0 * macs as f64 / (median_ms * 1e6),
        peak_rss_mb: peak_rss_mb(),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).map_err(|e| UserError(e.to_string()))?),
        Format::Table => {
            println!(
                "{} on {} (batch {}, {}, {} thread{}): {} MACs",
                report.network,
                report.target,
                report.batch,
                report.opt_level,
                report.threads,
                if report.threads == 1 { "" } else { "s" },
                cnnc::summary::thousands(report.macs)
            );
            println!("  compile  {:10.2} ms (passes and code generation)", report.compile_ms);
            println!("  median   {:10.3} ms over {} runs after {} warm-up", report.median_ms, report.runs, args.warmup);
            println!("  min      {:10.3} ms", report.min_ms);
            println!("  speed    {:10.2} GFLOP/s (2 x MACs / median)", report.gflops);
            if let Some(mb) = report.peak_rss_mb {
                println!("  peak RSS {mb:10.1} MB");
            }
        }
    }
    Ok(())
}

/// `bench --target gpu`: load, first run and warm runs apart, per-dispatch times where
/// the adapter has timestamp queries (`cnnc::gpu::bench_gpu`).
fn bench_gpu_command(
    args: &BenchArgs,
    graph: &cnnc::ir::Graph,
    inputs: &[cnnc::tensor::Tensor],
    macs: u64,
) -> Result<(), UserError> {
    let report =
        cnnc::gpu::bench_gpu(graph, inputs, args.warmup, args.runs).map_err(|e| UserError(format!("error: {e}")))?;
    let gflops = 2.0 * macs as f64 / (report.median_ms * 1e6);
    if args.format == Format::Json {
        let mut json = serde_json::to_value(&report).map_err(|e| UserError(e.to_string()))?;
        json["network"] = graph.name.clone().into();
        json["target"] = "gpu".into();
        json["batch"] = args.shape.batch.into();
        json["opt_level"] = format!("-O{}", args.opt.opt_level).into();
        json["macs"] = macs.into();
        json["gflops"] = gflops.into();
        println!("{}", serde_json::to_string_pretty(&json).map_err(|e| UserError(e.to_string()))?);
        return Ok(());
    }
    println!(
        "{} on gpu, {} (batch {}, -O{}): {} MACs, {} dispatches, {} pipelines",
        graph.name,
        report.adapter,
        args.shape.batch,
        args.opt.opt_level,
        cnnc::summary::thousands(macs),
        report.dispatches,
        report.pipelines
    );
    println!("  load      {:10.2} ms (kernels, weights upload, pipelines)", report.load_ms);
    println!("  first run {:10.3} ms", report.first_run_ms);
    println!(
        "  median    {:10.3} ms over {} warm runs after {} warm-up (wall)",
        report.median_ms, report.runs, report.warmup
    );
    println!("  min       {:10.3} ms", report.min_ms);
    println!("  speed     {gflops:10.2} GFLOP/s (2 x MACs / median)");
    match report.gpu_median_ms {
        Some(gpu_ms) => {
            println!("  on GPU    {gpu_ms:10.3} ms (sum of dispatches, median; timestamps {})", report.dispatch_timing);
            println!("  {:>10} {:>10}  {:<16} layer", "median ms", "min ms", "kernel");
            for dispatch in &report.dispatch_times {
                println!(
                    "  {:10.4} {:10.4}  {:<16} {}",
                    dispatch.median_ms, dispatch.min_ms, dispatch.template, dispatch.layer
                );
            }
        }
        None if report.timestamp_query => {
            println!("  no per-dispatch times: more dispatches than a query set holds (wall time only)")
        }
        None => println!("  no per-dispatch times: the adapter has no timestamp queries (wall time only)"),
    }
    Ok(())
}

#[derive(clap::Args, Clone)]
struct OptArgs {
    /// Optimization level: -O0 runs the IR as written, -O1/-O2 run the pass pipeline.
    #[arg(short = 'O', default_value = "2", value_parser = ["0", "1", "2"])]
    opt_level: String,
}

impl OptArgs {
    fn level(&self) -> OptLevel {
        match self.opt_level.as_str() {
            "0" => OptLevel::O0,
            "1" => OptLevel::O1,
            _ => OptLevel::O2,
        }
    }
}

#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
struct WeightSource {
    /// Weights as safetensors with PyTorch `state_dict` names.
    #[arg(long, value_name = "FILE.safetensors")]
    weights: Option<PathBuf>,
    /// He-normal random weights (for tests and benchmarks).
    #[arg(long)]
    random_weights: bool,
}

#[derive(clap::Args, Clone)]
struct WeightArgs {
    #[command(flatten)]
    source: WeightSource,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Accept tensors in the weights file that the network does not read.
    #[arg(long)]
    allow_unused_weights: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Target {
    /// Native code through Cranelift.
    Cpu,
    /// WGSL compute shaders through wgpu.
    Gpu,
    /// The reference interpreter: plain loops, the ground truth.
    Reference,
}

impl Target {
    fn to_exec(self) -> cnnc::exec::Target {
        match self {
            Target::Cpu => cnnc::exec::Target::Cpu,
            Target::Gpu => cnnc::exec::Target::Gpu,
            Target::Reference => cnnc::exec::Target::Reference,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Emit {
    Onnx,
    Ir,
    Dot,
    Obj,
    Header,
    Rust,
    Wgsl,
    Plan,
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
        /// Summarize the -O2 graph: its kernels, and the memory plan's arena against the
        /// sum of all intermediates.
        #[arg(long)]
        optimized: bool,
    },
    /// Print the IR as text (the form the snapshot tests hold).
    ///
    /// The IR after the pass pipeline of a target (--target): the generic one by default,
    /// which the reference interpreter and the cpu target run; the gpu target's also fuses
    /// pooling into convolutions (`cnnc ir net.cnn --target gpu --after fuse_pooling`).
    Ir {
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
    },
    /// Run a network on an input (.npy or PNG/JPEG image).
    Run(RunArgs),
    /// Build artifacts: today ONNX (`--emit onnx`), the IR and the graph.
    Build(BuildArgs),
    /// Time a network: warm-up, repeated runs, median and min, GFLOP/s, peak memory.
    Bench(BenchArgs),
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

/// Builds the graph the shape arguments ask for, binds weights if given, and applies
/// --fully-conv (after binding: the weights are reshaped at the declared size).
fn prepare(path: &Path, shape: &ShapeArgs, batch: usize, weights: Option<&WeightArgs>) -> Result<Graph, UserError> {
    let input_shape = shape.input_shape.as_deref().map(parse_input_shape).transpose()?;
    let options = BuildOptions { batch, input_shape: if shape.fully_conv { None } else { input_shape.clone() } };
    let mut graph = load(path, &options)?;
    if let Some(weights) = weights {
        bind_weights(&mut graph, weights)?;
    }
    if shape.fully_conv {
        let declared: Vec<usize> = graph.inputs.first().map(|&i| graph.node(i).shape[1..].to_vec()).unwrap_or_default();
        let target = input_shape.unwrap_or(declared);
        passes::make_fully_convolutional(&mut graph, &target, shape.average)
            .map_err(|e| UserError(format!("error: {}: --fully-conv: {e}", path.display())))?;
    }
    Ok(graph)
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
        Command::Summary { net, shape, format, optimized } => {
            let mut graph = prepare(&net, &shape, shape.batch as usize, None)?;
            let nodes_before = graph.node_count();
            if optimized {
                passes::optimize(&mut graph, OptLevel::O2)?;
            }
            let mut summary = cnnc::summary::summarize(&graph);
            if optimized {
                summary.optimized = Some(cnnc::summary::optimized_stats(&graph, nodes_before));
            }
            match format {
                Format::Table => print!("{}", cnnc::summary::render_table(&summary)),
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| UserError(e.to_string()))?)
                }
            }
        }
        Command::Ir { net, shape, opt, target, after, print_after_all } => {
            let mut graph = prepare(&net, &shape, shape.batch as usize, None)?;
            let mut pipeline = passes::pipeline_for(opt.level(), target.to_exec().capabilities());
            if let Some(after) = &after {
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
        }
        Command::Run(args) => run_command(&args)?,
        Command::Bench(args) => bench_command(&args)?,
        Command::Build(args) => build_command(&args)?,
        Command::Graph { net, shape, output } => {
            let graph = prepare(&net, &shape, shape.batch as usize, None)?;
            let dot = cnnc::graphviz::to_dot(&graph);
            write_graph(&dot, output.as_deref())?;
        }
    }
    Ok(())
}

/// Weights files larger than this are refused (VGG-16 in f32 is 553 MB).
const MAX_WEIGHTS_BYTES: u64 = 8 << 30;
/// Input tensors and images larger than this are refused.
const MAX_INPUT_BYTES: u64 = 2 << 30;

fn bind_weights(graph: &mut Graph, args: &WeightArgs) -> Result<(), UserError> {
    graph.weights = match &args.source.weights {
        Some(path) => {
            let bytes = read_limited(path, MAX_WEIGHTS_BYTES, "weights file")?;
            cnnc::weights::load_safetensors(&bytes, graph, args.allow_unused_weights)
                .map_err(|e| UserError(format!("error: {}: {e}", path.display())))?
        }
        None => cnnc::weights::random_weights(graph, args.seed),
    };
    Ok(())
}

/// Reads the inputs named on the command line, in `graph.inputs` order, conformed to
/// the declared `[C, H, W]`.
fn read_inputs(
    graph: &Graph,
    specs: &[String],
    mean: Option<&[f32]>,
    std: Option<&[f32]>,
) -> Result<Vec<cnnc::tensor::Tensor>, UserError> {
    let names: Vec<String> = graph.inputs.iter().map(|&id| graph.node(id).name.clone()).collect();
    let mut files: Vec<Option<PathBuf>> = vec![None; names.len()];
    for spec in specs {
        let (name, file) = match spec.split_once('=') {
            Some((name, file)) if names.iter().any(|n| n == name) => (name.to_string(), file),
            _ if names.len() == 1 => (names[0].clone(), spec.as_str()),
            _ => {
                return Err(UserError(format!(
                    "error: --input `{spec}`: this network has inputs {}; write NAME=FILE for each",
                    names.join(", ")
                )));
            }
        };
        let index = names.iter().position(|n| *n == name).expect("checked above");
        if files[index].replace(PathBuf::from(file)).is_some() {
            return Err(UserError(format!("error: input `{name}` is given twice")));
        }
    }
    let mut tensors = Vec::new();
    for ((name, file), &id) in names.iter().zip(&files).zip(&graph.inputs) {
        let Some(file) = file else {
            return Err(UserError(format!("error: no --input for input `{name}`")));
        };
        let chw = &graph.node(id).shape[1..];
        let bytes = read_limited(file, MAX_INPUT_BYTES, "input")?;
        let located = |e: &dyn std::fmt::Display| UserError(format!("error: {}: {e}", file.display()));
        let tensor = if file.extension().is_some_and(|e| e == "npy") {
            let tensor = cnnc::io::read_npy(&bytes).map_err(|e| located(&e))?;
            cnnc::io::conform_input(tensor, chw).map_err(|e| located(&e))?
        } else {
            if chw.len() != 3 {
                return Err(located(&format!("input `{name}` is {} values per item, not an image", chw[0])));
            }
            let c = chw[0];
            // ImageNet's statistics for RGB; other channel counts are only scaled to [0, 1].
            let default_mean = if c == 3 { cnnc::io::IMAGENET_MEAN.to_vec() } else { vec![0.0; c] };
            let default_std = if c == 3 { cnnc::io::IMAGENET_STD.to_vec() } else { vec![1.0; c] };
            let mean = mean.map(<[f32]>::to_vec).unwrap_or(default_mean);
            let std = std.map(<[f32]>::to_vec).unwrap_or(default_std);
            if mean.len() != c || std.len() != c || std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
                return Err(UserError(format!(
                    "error: --mean and --std need {c} values (positive std) for input `{name}`"
                )));
            }
            cnnc::io::load_image(&bytes, c, chw[1], chw[2], &mean, &std).map_err(|e| located(&e))?
        };
        tensors.push(tensor);
    }
    let batch = tensors[0].shape[0];
    if let Some(other) = tensors.iter().find(|t| t.shape[0] != batch) {
        return Err(UserError(format!("error: inputs have different batch sizes ({batch} and {})", other.shape[0])));
    }
    Ok(tensors)
}

fn not_built(what: &str) -> UserError {
    UserError(format!("error: {what} is not built yet in this version of cnnc"))
}

fn run_command(args: &RunArgs) -> Result<(), UserError> {
    let RunArgs { net, weights, input: specs, output, target, compare, opt, threads, top, labels, mean, std, shape } =
        args;
    let (net, output, level, labels) = (net.as_path(), output.as_deref(), opt.level(), labels.as_deref());
    let (mean, std, top) = (mean.as_deref(), std.as_deref(), *top);
    // Build once to learn the inputs, then again for the input files' batch.
    let probe = prepare(net, shape, 1, None)?;
    let inputs = read_inputs(&probe, specs, mean, std)?;
    let batch = inputs[0].shape[0];
    if shape.batch != 1 && shape.batch as usize != batch {
        return Err(UserError(format!("error: --batch {} but the input holds {batch} items", shape.batch)));
    }
    let mut graph = prepare(net, shape, batch, Some(weights))?;
    if !compare.is_empty() {
        // One graph for every target, so that each node's value can be compared: the
        // generic pipeline's, which every target runs (no pooling fused for the gpu).
        passes::optimize(&mut graph, level)?;
        let targets: Vec<cnnc::exec::Target> = compare.iter().map(|t| t.to_exec()).collect();
        let report = cnnc::compare::compare(&graph, &inputs, &targets).map_err(|e| UserError(format!("error: {e}")))?;
        print!("{report}");
        return match report.first_divergence() {
            None => Ok(()),
            Some(d) => Err(UserError(format!(
                "error: target {} first disagrees with the reference at layer `{}` (relative L2 error {:.2e})",
                d.target.name(),
                d.name,
                d.error
            ))),
        };
    }
    passes::optimize_for(&mut graph, level, target.to_exec().capabilities())?;
    let output_names: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let executor = cnnc::exec::compile_with(graph, target.to_exec(), &threads.options())
        .map_err(|e| UserError(format!("error: {e}")))?;
    let started = std::time::Instant::now();
    let outputs = executor.run(&inputs).map_err(|e| UserError(format!("error: {e}")))?;
    let elapsed = started.elapsed();
    let label_names = match labels {
        Some(path) => {
            let bytes = read_limited(path, 64 << 20, "labels file")?;
            Some(cnnc::io::read_labels(&String::from_utf8_lossy(&bytes)))
        }
        None => None,
    };
    for (name, tensor) in output_names.iter().zip(&outputs) {
        println!("{name}: {}", tensor.shape_string());
        match top {
            Some(k) if tensor.shape.len() == 2 || tensor.shape[2..].iter().all(|&d| d == 1) => {
                print_top(tensor, k, label_names.as_deref());
            }
            _ => {
                let shown: Vec<String> = tensor.data.iter().take(8).map(|v| format!("{v:.6}")).collect();
                println!("  [{}{}]", shown.join(", "), if tensor.len() > 8 { ", ..." } else { "" });
            }
        }
    }
    eprintln!("ran on target {} in {:.1} ms", target.to_exec().name(), elapsed.as_secs_f64() * 1e3);
    if let Some(path) = output {
        write_outputs(path, &output_names, &outputs)?;
    }
    Ok(())
}

/// Prints the K best classes of each batch item; scores that are not already
/// probabilities go through a softmax first.
fn print_top(tensor: &cnnc::tensor::Tensor, k: usize, labels: Option<&[String]>) {
    let n = tensor.shape[0];
    let classes = tensor.len() / n.max(1);
    for item in 0..n {
        let row = &tensor.data[item * classes..(item + 1) * classes];
        let sum: f32 = row.iter().sum();
        let probabilities: Vec<f32> = if row.iter().all(|&v| (0.0..=1.0).contains(&v)) && (sum - 1.0).abs() < 1e-3 {
            row.to_vec()
        } else {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let total: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / total) as f32).collect()
        };
        if n > 1 {
            println!("  item {item}:");
        }
        for (rank, (class, p)) in cnnc::io::top_k(&probabilities, k).into_iter().enumerate() {
            let name = labels.and_then(|l| l.get(class)).map(|s| format!("  {s}")).unwrap_or_default();
            println!("  {}. class {class:>4}  p={p:.4}{name}", rank + 1);
        }
    }
}

fn write_outputs(path: &Path, names: &[String], outputs: &[cnnc::tensor::Tensor]) -> Result<(), UserError> {
    let write = |file: &Path, tensor: &cnnc::tensor::Tensor| {
        std::fs::write(file, cnnc::io::write_npy(tensor))
            .map_err(|e| UserError(format!("error: cannot write {}: {e}", file.display())))
    };
    if outputs.len() == 1 {
        return write(path, &outputs[0]);
    }
    std::fs::create_dir_all(path).map_err(|e| UserError(format!("error: cannot create {}: {e}", path.display())))?;
    for (name, tensor) in names.iter().zip(outputs) {
        write(&path.join(format!("{name}.npy")), tensor)?;
    }
    Ok(())
}

fn build_command(args: &BuildArgs) -> Result<(), UserError> {
    let BuildArgs { net, weights, shape, opt, target, emit, target_triple, cpu, output: dir } = args;
    let default_emit = [Emit::Obj, Emit::Header];
    let emit: &[Emit] = if emit.is_empty() && *target == BuildTarget::Cpu { &default_emit } else { emit };
    if *target == BuildTarget::Gpu
        && emit.iter().any(|e| matches!(e, Emit::Obj | Emit::Header))
        && !args.emit.is_empty()
    {
        return Err(UserError("error: --emit obj,header are for --target cpu".into()));
    }
    if emit.contains(&Emit::Rust) {
        return Err(not_built("--emit rust (use the build-script API, cnnc::build::Model, from build.rs)"));
    }
    let mut graph = prepare(net, shape, shape.batch as usize, Some(weights))?;
    std::fs::create_dir_all(dir).map_err(|e| UserError(format!("error: cannot create {}: {e}", dir.display())))?;
    let write = |name: String, bytes: &[u8]| -> Result<(), UserError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| UserError(format!("error: cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    };
    // ONNX gets the network as written (with its own BatchNorm and dropout): it is the
    // independent oracle, so it should not inherit cnnc's rewrites.
    if emit.contains(&Emit::Onnx) {
        let model =
            cnnc::export::onnx::to_onnx(&graph, &graph.weights, false).map_err(|e| UserError(format!("error: {e}")))?;
        write(format!("{}.onnx", graph.name), &model)?;
    }
    // The pipeline of the backend built for: with --target cpu, --emit wgsl,plan write
    // kernels for the generic graph (the GPU runs it too, without fused pooling).
    let capabilities = match target {
        BuildTarget::Cpu => passes::Capabilities::GENERIC,
        BuildTarget::Gpu => passes::Capabilities::GPU,
    };
    passes::optimize_for(&mut graph, opt.level(), capabilities)?;
    if emit.contains(&Emit::Ir) {
        write(format!("{}.ir", graph.name), cnnc::ir::print(&graph).as_bytes())?;
    }
    if emit.contains(&Emit::Dot) {
        write(format!("{}.dot", graph.name), cnnc::graphviz::to_dot(&graph).as_bytes())?;
    }
    // The GPU artifacts go together: the plan references the modules and the weights blob.
    if (*target == BuildTarget::Gpu && args.emit.is_empty())
        || emit.iter().any(|e| matches!(e, Emit::Wgsl | Emit::Plan))
    {
        let name = graph.name.clone();
        let written = cnnc::gpu::write_artifacts(&graph, dir, &name).map_err(|e| UserError(format!("error: {e}")))?;
        for path in written {
            eprintln!("wrote {}", path.display());
        }
    }
    if emit.contains(&Emit::Obj) || emit.contains(&Emit::Header) {
        let started = std::time::Instant::now();
        let options =
            cnnc::backend::clif::CodegenOptions { verify: false, cpu: cpu.map(CpuArg::level), ..Default::default() };
        let artifacts =
            cnnc::backend::clif::compile_object_with(&graph, &graph.name, target_triple.as_deref(), &options)
                .map_err(|e| UserError(format!("error: {e}")))?;
        eprintln!("compiled {} to native code in {:.1} ms", graph.name, started.elapsed().as_secs_f64() * 1e3);
        if emit.contains(&Emit::Obj) {
            write(format!("{}.o", graph.name), &artifacts.object)?;
        }
        if emit.contains(&Emit::Header) {
            write(format!("{}.h", graph.name), artifacts.header.as_bytes())?;
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

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `cnnc run ... | head` into a panic on the next
    // print; a command-line tool should end quietly instead, as cat and grep do.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let uses_gpu = match &cli.command {
        Command::Run(args) => args.target == Target::Gpu || args.compare.contains(&Target::Gpu),
        Command::Bench(args) => args.target == Target::Gpu,
        _ => false,
    };
    if uses_gpu {
        ensure_runtime_dir();
    }
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
