//! `cnnc bench --target gpu`: load time, first run and warm runs of a model on the GPU,
//! and per-dispatch times from timestamp queries where the adapter has them.
//!
//! Three numbers are kept apart because they answer different questions: the load
//! (kernels emitted and validated, weights uploaded, pipelines created: what a program
//! pays once), the first inference (drivers compile lazily, caches are cold) and the
//! warm runs (median and min of wall time, from the inputs' upload to the outputs read
//! back). Per-dispatch times come from a separate set of runs with timestamp queries
//! (inside the one compute pass with `TIMESTAMP_QUERY_INSIDE_PASSES`, else one pass per
//! dispatch with `TIMESTAMP_QUERY`), so that the queries do not disturb the wall times.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::runtime::{GpuOptions, TimestampMethod, TimestampQueries, adapter_features, compile_gpu_on, open_device};
use crate::exec::median;
use crate::ir::Graph;
use crate::tensor::Tensor;

/// One dispatch's GPU time over the timed runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DispatchTime {
    /// The node the kernel computes.
    pub layer: String,
    /// The `shaders/` template it was specialized from.
    pub template: String,
    pub median_ms: f64,
    pub min_ms: f64,
}

/// What [`bench_gpu`] measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GpuBenchReport {
    /// The adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    pub adapter: String,
    /// Whether the adapter offers `Features::TIMESTAMP_QUERY` and
    /// `Features::TIMESTAMP_QUERY_INSIDE_PASSES` (whether or not they were used).
    pub timestamp_query: bool,
    pub timestamp_query_inside_passes: bool,
    /// How the per-dispatch times were taken: "inside one pass", "one pass per
    /// dispatch", or "none" (wall time only: no timestamp queries, or more dispatches
    /// than a query set holds).
    pub dispatch_timing: String,
    pub dispatches: usize,
    pub pipelines: usize,
    /// Emitting and validating the kernels, uploading the weights, creating the
    /// pipelines and bind groups.
    pub load_ms: f64,
    /// The first inference, wall time.
    pub first_run_ms: f64,
    pub warmup: u32,
    pub runs: u32,
    /// Wall time of the warm runs (after `warmup` untimed ones).
    pub median_ms: f64,
    pub min_ms: f64,
    /// The sum of the dispatch times, median over the timed runs; `None` without
    /// timestamps.
    pub gpu_median_ms: Option<f64>,
    /// Per dispatch, in execution order; empty without timestamps.
    pub dispatch_times: Vec<DispatchTime>,
}

/// Choices for [`bench_gpu_with`].
#[derive(Clone, Copy, Debug)]
pub struct GpuBenchOptions {
    /// Untimed runs after the first.
    pub warmup: u32,
    /// Timed runs (at least 1); as many again with timestamps where the adapter has them.
    pub runs: u32,
    /// Time the dispatches with one pass each (`TIMESTAMP_QUERY` alone) even where the
    /// adapter could write timestamps inside the one pass.
    pub one_pass_per_dispatch: bool,
}

/// Benchmarks an optimized graph with bound weights on the first high-performance
/// adapter: loads it, runs it once (timed apart), `warmup` untimed times, then `runs`
/// timed times, and where the adapter has timestamp queries `runs` more times with them.
/// Needs `runs >= 1`.
pub fn bench_gpu(graph: &Graph, inputs: &[Tensor], warmup: u32, runs: u32) -> Result<GpuBenchReport, String> {
    bench_gpu_with(graph, inputs, &GpuBenchOptions { warmup, runs, one_pass_per_dispatch: false })
}

/// [`bench_gpu`] with choices.
pub fn bench_gpu_with(graph: &Graph, inputs: &[Tensor], options: &GpuBenchOptions) -> Result<GpuBenchReport, String> {
    let GpuBenchOptions { warmup, runs, one_pass_per_dispatch } = *options;
    if runs == 0 {
        return Err("the benchmark needs at least one timed run".to_string());
    }
    let wanted = if one_pass_per_dispatch {
        wgpu::Features::TIMESTAMP_QUERY
    } else {
        wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
    };
    let (device, queue) = open_device(wanted)?;
    let features = adapter_features()?;

    let started = Instant::now();
    let model = compile_gpu_on(graph, &device, &queue, &GpuOptions::default())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    model.run(inputs)?;
    let first_run_ms = started.elapsed().as_secs_f64() * 1e3;
    for _ in 0..warmup {
        model.run(inputs)?;
    }
    let mut wall = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let started = Instant::now();
        model.run(inputs)?;
        wall.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let min_ms = wall.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ms = median(&mut wall);

    let queries = TimestampQueries::new(&model);
    let mut dispatch_times = Vec::new();
    let mut gpu_median_ms = None;
    if let Some(queries) = &queries {
        let period_ns = f64::from(queue.get_timestamp_period());
        let n = model.plan().kernels.len();
        let mut per_dispatch: Vec<Vec<f64>> = vec![Vec::with_capacity(runs as usize); n];
        let mut totals = Vec::with_capacity(runs as usize);
        for _ in 0..runs {
            let (_, ticks) = model.run_with_timestamps(inputs, Some(queries))?;
            let mut total = 0.0;
            for (times, (start, end)) in per_dispatch.iter_mut().zip(queries.pairs()) {
                // Timestamps may wrap or be reordered on some drivers: a negative span
                // counts as zero.
                let ms = ticks[end].saturating_sub(ticks[start]) as f64 * period_ns / 1e6;
                times.push(ms);
                total += ms;
            }
            totals.push(total);
        }
        for (kernel, times) in model.plan().kernels.iter().zip(&mut per_dispatch) {
            let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
            dispatch_times.push(DispatchTime {
                layer: kernel.layer.clone(),
                template: kernel.template.to_string(),
                median_ms: median(times),
                min_ms,
            });
        }
        gpu_median_ms = Some(median(&mut totals));
    }
    Ok(GpuBenchReport {
        adapter: model.adapter_name(),
        timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        timestamp_query_inside_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
        dispatch_timing: match queries.map(|q| q.method) {
            Some(TimestampMethod::InsidePass) => "inside one pass",
            Some(TimestampMethod::PerPass) => "one pass per dispatch",
            None => "none",
        }
        .to_string(),
        dispatches: model.plan().kernels.len(),
        pipelines: model.pipeline_count(),
        load_ms,
        first_run_ms,
        warmup,
        runs,
        median_ms,
        min_ms,
        gpu_median_ms,
        dispatch_times,
    })
}
