//! `cnnc bench`: compile time, median and minimum run times, GFLOP/s, per-kernel profiles.

use std::path::PathBuf;

use cnnc::exec::median;
use cnnc::passes;

use super::args::{
    AutoContext, Format, MemoryArgs, OptArgs, PrecisionArgs, ShapeArgs, Target, ThreadArgs, WeightArgs, WeightSource,
};
use super::common::{UserError, prepare};

#[derive(clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Also time every kernel (cpu target): time, share, GFLOP/s and the algorithm
    /// chosen, medians over the timed runs. (The gpu target always reports its
    /// per-dispatch times.)
    #[arg(long)]
    profile: bool,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100000))]
    warmup: u32,
    #[command(flatten)]
    memory: MemoryArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(serde::Serialize)]
struct BenchReport {
    network: String,
    target: String,
    batch: usize,
    opt_level: String,
    /// Of the conv and linear layers (`--precision`).
    precision: String,
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
    args: &Args,
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
            let elide = cnnc::summary::elide;
            let width = rows.iter().map(|r| elide(&r.kernel).chars().count()).max().unwrap_or(6).max(6);
            println!("  {:<width$}  {:>9}  {:>6}  {:>8}  algorithm", "kernel", "ms", "share", "GFLOP/s");
            for r in &rows {
                println!(
                    "  {:<width$}  {:>9.3}  {:>5.1}%  {:>8.1}  {}",
                    elide(&r.kernel),
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

impl Args {
    /// Whether the command will open a GPU adapter.
    pub fn uses_gpu(&self) -> bool {
        self.target == Target::Gpu
    }
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let weights = WeightArgs {
        source: WeightSource { weights: args.weights.clone(), random_weights: args.weights.is_none() },
        memory: args.memory.clone(),
        seed: args.seed,
        allow_unused_weights: false,
        verbose: false,
    };
    let batch = args.shape.batch as usize;
    let mut graph = prepare(&args.net, &args.shape, batch, Some(&weights))?;
    let macs = cnnc::summary::summarize(&graph).total_macs;
    let inputs: Vec<cnnc::tensor::Tensor> =
        graph.inputs.iter().map(|&i| cnnc::weights::random_normal(&graph.node(i).shape, args.seed + 1)).collect();
    let network = graph.name.clone();
    let mut started = std::time::Instant::now();
    passes::optimize_for(&mut graph, args.opt.level(), args.target.to_exec().capabilities())?;
    args.precision.check()?;
    let precision = args.precision.name();
    if args.precision.reduced() {
        if args.target == Target::Gpu {
            return Err(UserError(format!("error: --precision {precision}: the gpu target runs f32 only")));
        }
        let context = AutoContext {
            net: &args.net,
            shape: &args.shape,
            weights: &weights,
            batch,
            level: args.opt.level(),
            mean: None,
            std: None,
            options: args.threads.options(),
        };
        let resolving = std::time::Instant::now();
        let assignment = args.precision.resolve(&context)?;
        // The passes and the code generation are timed, not the choice of precisions.
        started += resolving.elapsed();
        assignment.apply(&mut graph)?;
        if args.target == Target::Cpu
            && let Some(note) = args.precision.cpu_note()
        {
            eprintln!("{note}");
        }
    }
    if args.target == Target::Gpu {
        return bench_gpu_command(args, &graph, &inputs, macs);
    }
    // The thread count resolved once (the default depends on the network's size).
    let asked = args.threads.options();
    let threads = cnnc::exec::threads_for(&graph, &asked);
    // The graph carries each layer's precision: the executor takes it as it is.
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
        precision: precision.to_string(),
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
                "{} on {} (batch {}, {}, {} thread{}{}): {} MACs",
                report.network,
                report.target,
                report.batch,
                report.opt_level,
                report.threads,
                if report.threads == 1 { "" } else { "s" },
                if precision == "f32" { String::new() } else { format!(", {precision}") },
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
    args: &Args,
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
