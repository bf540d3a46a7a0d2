//! The GPU backend against the reference interpreter, and naga on every emitted kernel.
//!
//! For every `examples/*.cnn` and `tests/programs/*.cnn`, optimized with the GPU's O2
//! pipeline (pooling fused into convolutions, `fuse_pooling`) with random weights and
//! inputs from fixed seeds: the outputs of the WGSL kernels run through wgpu must match
//! the interpreter's on the same graph (relative L2 error <= 1e-4 on every output, the
//! same argmax in every batch row) on every run.
//! Every network runs at batch 1 and at batch 4 with the direct convolution kernel (the
//! default on CPU adapters); the small ones (inputs of at most 32x32, i.e. the CIFAR and
//! LeNet networks, and the test programs) also at batch 1 with the tiled kernel (the
//! default on GPUs). The interpreter runs once per network and batch. Besides: VGG-16
//! (its 411 MB fc weight spans several bindings), LeNet-5 laid out for tiny limits
//! (every large tensor split over bindings and buffers), unoptimized graphs (batch
//! norms, dropouts, no memory plan), deterministic sweeps of convolution shapes and
//! epilogues and of fused poolings (overlapping windows too, which the pass leaves
//! alone) on both kernels, and bad inputs.
//!
//! Batch 4 runs once, batch 1 twice (the second run's check, that a run leaves nothing
//! behind that disturbs the next, does not need repeating at batch 4). Measured with
//! lavapipe (the software Vulkan driver CI uses, a few GFLOP/s) on 2 shared cores: the
//! whole file took 286 s, against 196 s with the ImageNet networks at batch 1 only; the
//! batch-4 runs of the ImageNet networks (GPU and interpreter) add about 20 s each at most
//! (ResNet-50 25 s) and VGG-16's about 50 s. The worst error is 2.4e-6 (AlexNet,
//! batch 4).
//!
//! Without an adapter the GPU tests print a loud skip line and pass, unless
//! `CNNC_REQUIRE_GPU=1` (CI). `CNNC_GPU_FILTER=substring` limits the runs to the files
//! whose name holds it. The naga test needs no adapter. The GPU tests take turns on the
//! device (a lock), so the times they print are not disturbed by each other.

use std::path::PathBuf;
#[allow(dead_code)]
mod common;
use common::gpu_present;
use std::time::Instant;

use cnnc::backend::wgsl::{self, ConvKernel, DeviceLimits, GpuOptions};
use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::{Graph, Op, PoolEpilogue};
use cnnc::passes::{self, Capabilities, OptLevel};
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

const TOLERANCE: f64 = 1e-4;
const WEIGHT_SEED: u64 = 0x5eed;
const INPUT_SEED: u64 = 0x1e9;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.cnn` files of a directory of the repository, sorted, filtered by
/// `CNNC_GPU_FILTER`.
fn programs(directory: &str) -> Vec<(String, String)> {
    let filter = std::env::var("CNNC_GPU_FILTER").unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(directory))
        .expect("read the directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "cnn"))
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().contains(&filter)))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("read the program"))
        })
        .collect()
}

/// The source compiled at `batch`, bound to random weights, optimized at `level` with
/// the GPU's pipeline.
fn graph_at(source: &str, batch: usize, level: OptLevel) -> Result<Graph, String> {
    let mut graph = common::random_graph(source, batch, WEIGHT_SEED, OptLevel::O0)?;
    passes::optimize_for(&mut graph, level, Capabilities::GPU)?;
    Ok(graph)
}

/// The convolutions of a graph that pool in their epilogue.
fn fused_pools(graph: &Graph) -> usize {
    graph.node_ids().into_iter().filter(|&id| graph.node(id).epilogue.pool.is_some()).count()
}

fn optimized_graph(source: &str, batch: usize) -> Result<Graph, String> {
    graph_at(source, batch, OptLevel::O2)
}

fn random_inputs(graph: &Graph) -> Vec<Tensor> {
    common::random_inputs(graph, INPUT_SEED)
}

/// Whether a network is small enough for the tiled kernel's run too (inputs of at most
/// 32x32).
fn is_small(source: &str) -> bool {
    match compile_source(source, &BuildOptions::default()) {
        Ok(graph) => graph.inputs.iter().all(|&id| {
            let shape = &graph.node(id).shape;
            shape.iter().skip(2).product::<usize>() <= 32 * 32
        }),
        Err(_) => false,
    }
}

/// What one run found, for the report.
struct Outcome {
    error: f64,
    dispatches: usize,
    pipelines: usize,
    compile_seconds: f64,
    first_run_seconds: f64,
    /// The second run's time, where there was one.
    gpu_seconds: Option<f64>,
}

/// A graph's random inputs and the interpreter's outputs on them: computed once per
/// network and batch, shared by every GPU run compared with it.
struct Reference {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    seconds: f64,
}

fn reference(graph: &Graph) -> Result<Reference, String> {
    let inputs = random_inputs(graph);
    let started = Instant::now();
    let outputs = cnnc::interp::run(graph, &graph.weights, &inputs).map_err(|e| e.to_string())?;
    Ok(Reference { inputs, outputs, seconds: started.elapsed().as_secs_f64() })
}

/// The worst relative L2 error of `got` against `want`; `Err` beyond the tolerance or
/// on another argmax.
fn compare(graph: &Graph, got: &[Tensor], want: &[Tensor]) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for ((output, got), want) in graph.outputs.iter().zip(got).zip(want) {
        if got.shape != want.shape {
            return Err(format!("output `{}`: shape {:?}, expected {:?}", output.name, got.shape, want.shape));
        }
        let error = relative_l2(&got.data, &want.data);
        if error.is_nan() || error > TOLERANCE {
            return Err(format!("output `{}`: relative L2 error {error:.3e} > {TOLERANCE:e}", output.name));
        }
        if argmax_rows(got) != argmax_rows(want) {
            return Err(format!(
                "output `{}`: argmax {:?}, expected {:?} (relative L2 error {error:.3e})",
                output.name,
                argmax_rows(got),
                argmax_rows(want)
            ));
        }
        worst = worst.max(error);
    }
    Ok(worst)
}

/// Runs one network at one batch size on the GPU and compares the outputs with
/// `reference`; with `second_run`, runs and compares it once more (a run must leave
/// nothing behind that disturbs the next; the first run pays for the drivers' lazy work
/// and is timed apart).
fn check_against(
    graph: &Graph,
    reference: &Reference,
    options: &GpuOptions,
    second_run: bool,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let model = wgsl::compile_gpu_with(graph, options)?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let first = model.run(&reference.inputs)?;
    let first_run_seconds = started.elapsed().as_secs_f64();
    let mut error = compare(graph, &first, &reference.outputs).map_err(|e| format!("first run: {e}"))?;
    let mut gpu_seconds = None;
    if second_run {
        let started = Instant::now();
        let second = model.run(&reference.inputs)?;
        gpu_seconds = Some(started.elapsed().as_secs_f64());
        error = error.max(compare(graph, &second, &reference.outputs).map_err(|e| format!("second run: {e}"))?);
    }
    Ok(Outcome {
        error,
        dispatches: model.plan().kernels.len(),
        pipelines: model.pipeline_count(),
        compile_seconds,
        first_run_seconds,
        gpu_seconds,
    })
}

/// Runs one network at one batch size, optimized at O2, on the GPU and through the
/// interpreter; `Err` describes the disagreement.
fn check(source: &str, batch: usize, options: &GpuOptions) -> Result<Outcome, String> {
    check_graph(optimized_graph(source, batch)?, options)
}

fn check_graph(graph: Graph, options: &GpuOptions) -> Result<Outcome, String> {
    check_against(&graph, &reference(&graph)?, options, true)
}

/// "run 0.123s", or nothing without a second run.
fn second_run_time(outcome: &Outcome) -> String {
    outcome.gpu_seconds.map(|s| format!(", run {s:.3}s")).unwrap_or_default()
}

/// Checks every program of a directory at batch 1 (run twice) and 4 (run once: the
/// second run's check is batch 1's) with the direct kernel, and the small ones at batch 1
/// with the tiled kernel too; panics at the end listing every failure.
fn check_directory(directory: &str, test: &str, skip: &[&str]) {
    let Some(_gpu) = gpu_present(test) else { return };
    let started = Instant::now();
    let mut failures = Vec::new();
    for (name, source) in programs(directory) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        for batch in [1, 4] {
            // The tiled kernel (GPUs' default) at batch 1 on the small networks only: it is
            // twice as slow as the direct one on lavapipe, and convolution_variants_match and
            // the split test cover its shapes, batches and grids.
            let conv_kernels: &[ConvKernel] = if batch == 1 && is_small(&source) {
                &[ConvKernel::Direct, ConvKernel::Tiled]
            } else {
                &[ConvKernel::Direct]
            };
            let prepared = optimized_graph(&source, batch).and_then(|graph| Ok((reference(&graph)?, graph)));
            let (reference, graph) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    eprintln!("{name} batch {batch}: FAILED: {e}");
                    failures.push(format!("{name} batch {batch}: {e}"));
                    continue;
                }
            };
            for &conv_kernel in conv_kernels {
                let options = GpuOptions { conv_kernel: Some(conv_kernel), ..Default::default() };
                let run = format!("{name} batch {batch} {conv_kernel:?}");
                match check_against(&graph, &reference, &options, batch == 1) {
                    Ok(o) => eprintln!(
                        "{run}: relative L2 {:.2e}, {} dispatches ({} pipelines, {} fused pools), load {:.2}s, \
                         first run {:.3}s{}, interpreter {:.3}s",
                        o.error,
                        o.dispatches,
                        o.pipelines,
                        fused_pools(&graph),
                        o.compile_seconds,
                        o.first_run_seconds,
                        second_run_time(&o),
                        reference.seconds
                    ),
                    Err(e) => {
                        eprintln!("{run}: FAILED: {e}");
                        failures.push(format!("{run}: {e}"));
                    }
                }
            }
        }
    }
    eprintln!("{test}: {:.1}s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_kernel_of_every_network_validates_with_naga() {
    let mut failures = Vec::new();
    let mut kernels = 0;
    for directory in ["examples", "tests/programs"] {
        for (name, source) in programs(directory) {
            for batch in [1, 4] {
                let graph = match optimized_graph(&source, batch) {
                    Ok(graph) => graph,
                    Err(e) => {
                        failures.push(format!("{directory}/{name} batch {batch}: {e}"));
                        continue;
                    }
                };
                for conv_kernel in [ConvKernel::Direct, ConvKernel::Tiled] {
                    match wgsl::plan(&graph, &DeviceLimits::default(), conv_kernel) {
                        Ok(plan) => kernels += plan.kernels.len(),
                        Err(e) => failures.push(format!("{directory}/{name} batch {batch} {conv_kernel:?}: {e}")),
                    }
                }
            }
        }
    }
    eprintln!("{kernels} kernels validated");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn examples_match_the_reference() {
    // VGG-16 has a test of its own: it is the slowest, and the one with the 411 MB weight.
    check_directory("examples", "examples_match_the_reference", &["vgg16.cnn"]);
}

#[test]
fn programs_match_the_reference() {
    check_directory("tests/programs", "programs_match_the_reference", &[]);
}

/// VGG-16's batches (see the file's doc for their times).
const VGG16_BATCHES: [usize; 2] = [1, 4];

#[test]
fn vgg16_runs_with_its_large_weight_split_over_bindings() {
    let filter = std::env::var("CNNC_GPU_FILTER").unwrap_or_default();
    if !"vgg16.cnn".contains(&filter) {
        return;
    }
    let Some(_gpu) = gpu_present("vgg16_runs_with_its_large_weight_split_over_bindings") else { return };
    let source = std::fs::read_to_string(repo().join("examples/vgg16.cnn")).expect("read vgg16.cnn");
    let graph = optimized_graph(&source, 1).expect("vgg16 compiles");
    // Its five 2x2 max pools run inside the convolutions before them.
    assert_eq!(fused_pools(&graph), 5, "VGG-16 on the GPU pipeline");
    let plan = wgsl::plan(&graph, &DeviceLimits::default(), ConvKernel::Direct).expect("vgg16 plans");
    assert!(plan.kernels.iter().all(|k| k.template != "pool"), "no pooling dispatch is left");
    let fc1 = plan.kernels.iter().find(|k| k.template == "linear").expect("a linear layer");
    assert!(fc1.bindings.len() >= 6, "fc1's 411 MB weight must span several bindings: {:?}", fc1.bindings);
    drop(plan);
    // The batch-1 graph serves batch 1; the 138 M random weights are drawn once more for
    // the other batches rather than held twice.
    let mut batch1 = Some(graph);
    for batch in VGG16_BATCHES {
        let graph = match batch1.take() {
            Some(graph) if batch == 1 => graph,
            _ => optimized_graph(&source, batch).expect("vgg16 compiles"),
        };
        let reference = reference(&graph).unwrap_or_else(|e| panic!("vgg16 batch {batch}: {e}"));
        let outcome = check_against(&graph, &reference, &GpuOptions::default(), batch == 1)
            .unwrap_or_else(|e| panic!("vgg16 batch {batch}: {e}"));
        eprintln!(
            "vgg16 batch {batch}: relative L2 {:.2e}, load {:.2}s, first run {:.2}s{}, interpreter {:.2}s",
            outcome.error,
            outcome.compile_seconds,
            outcome.first_run_seconds,
            second_run_time(&outcome),
            reference.seconds
        );
    }
}

#[test]
fn tensors_split_over_small_bindings_and_buffers_still_match() {
    let Some(_gpu) = gpu_present("tensors_split_over_small_bindings_and_buffers_still_match") else { return };
    // LeNet-5's fc1 weight is 192,000 bytes: over bindings of at most 64 KiB and buffers
    // of at most 128 KiB it is cut in pieces, and so are its activations.
    let limits = DeviceLimits {
        max_storage_buffer_binding_size: 64 << 10,
        max_buffer_size: 128 << 10,
        min_storage_buffer_offset_alignment: 256,
        max_storage_buffers_per_shader_stage: 16,
        max_compute_workgroups_per_dimension: 64,
    };
    let source = std::fs::read_to_string(repo().join("examples/lenet5.cnn")).expect("read lenet5.cnn");
    let graph = optimized_graph(&source, 4).expect("lenet5 compiles");
    let plan = wgsl::plan(&graph, &limits, ConvKernel::Direct).expect("lenet5 plans");
    assert!(plan.weight_buffer_bytes.len() > 1, "{:?}", plan.weight_buffer_bytes);
    let fc1 = plan.kernels.iter().find(|k| k.layer == "fc1").expect("fc1");
    assert!(fc1.bindings.iter().filter(|b| b.read_only).count() > 3, "{:?}", fc1.bindings);
    assert!(plan.kernels.iter().any(|k| k.workgroups[1] > 1), "a two-dimensional grid");
    for batch in [1, 4] {
        for conv_kernel in [ConvKernel::Direct, ConvKernel::Tiled] {
            let options = GpuOptions { limits: Some(limits), conv_kernel: Some(conv_kernel) };
            check(&source, batch, &options).unwrap_or_else(|e| panic!("lenet5 batch {batch} {conv_kernel:?}: {e}"));
        }
    }
}

#[test]
fn unoptimized_graphs_match_too() {
    // At O0 the graph still has batch norms, dropouts and standalone activations, and
    // no memory plan: every value gets a slot of its own.
    let Some(_gpu) = gpu_present("unoptimized_graphs_match_too") else { return };
    let mut failures = Vec::new();
    let mut sources = programs("tests/programs");
    sources.extend(
        programs("examples").into_iter().filter(|(name, _)| ["lenet5.cnn", "nin.cnn"].contains(&name.as_str())),
    );
    for (name, source) in sources {
        match graph_at(&source, 2, OptLevel::O0).and_then(|graph| check_graph(graph, &GpuOptions::default())) {
            Ok(o) => eprintln!("{name} O0 batch 2: relative L2 {:.2e}", o.error),
            Err(e) => failures.push(format!("{name} O0 batch 2: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// A small deterministic generator (64-bit LCG), so the sweep is the same every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Whether a kernel of `k` taps `d` apart fits an input of `n` values padded by `p`
/// on each side.
fn reaches(k: usize, d: usize, p: usize, n: usize) -> bool {
    n + 2 * p > d * (k - 1)
}

/// A sweep case's program: `conv` (to `out_channels`) then `activation` on an input of
/// shape `input`, or with `residual` also a strided 1x1 shortcut of the input added and a
/// relu; `None` for a residual whose conv does not keep the shape (`same` is false).
fn sweep_program(
    input: [usize; 3],
    conv: &str,
    activation: &str,
    residual: bool,
    out_channels: usize,
    (sh, sw): (usize, usize),
    same: bool,
) -> Option<String> {
    let body = if !residual {
        format!("    y = x |> {conv} |> {activation}\n    output y\n")
    } else {
        if !same {
            return None;
        }
        let shortcut = format!("conv({out_channels}, 1, stride=({sh}, {sw}), pad=0, bias=false)");
        format!(
            "    a = x |> {conv} |> {activation}\n    b = x |> {shortcut}\n    \
             y = add(a, b) |> relu\n    output y\n"
        )
    };
    let [c, h, w] = input;
    Some(format!("network sweep {{\n    input x: [{c}, {h}, {w}]\n{body}}}\n"))
}

#[test]
fn convolution_variants_match() {
    // Shapes that stress the 8-channel x 4-column blocks of conv.wgsl: channel counts
    // that are not multiples of 8, groups, widths that are not multiples of 4, strides,
    // dilations, rectangular kernels, padding wider than the kernel reach, and every
    // epilogue (activation, residual, activation after the residual).
    let Some(_gpu) = gpu_present("convolution_variants_match") else { return };
    let mut rng = Lcg(0xc0417);
    let activations = ["relu", "leaky_relu(0.2)", "sigmoid", "tanh"];
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut fused_residuals = 0;
    while cases < 40 {
        let groups = [1, 1, 2, 3][rng.below(4)];
        let in_channels = groups * (1 + rng.below(6));
        let out_channels = groups * (1 + rng.below(12));
        let (kh, kw) = (1 + rng.below(5), 1 + rng.below(5));
        let (sh, sw) = (1 + rng.below(3), 1 + rng.below(3));
        let (dh, dw) = (1 + rng.below(2), 1 + rng.below(2));
        let (ph, pw) = (rng.below(kh + 1), rng.below(kw + 1));
        let (h, w) = (1 + rng.below(13), 1 + rng.below(13));
        if !reaches(kh, dh, ph, h) || !reaches(kw, dw, pw, w) {
            continue;
        }
        let bias = if rng.below(2) == 0 { "true" } else { "false" };
        let activation = activations[rng.below(activations.len())];
        let conv = format!(
            "conv({out_channels}, ({kh}, {kw}), stride=({sh}, {sw}), pad=({ph}, {pw}), \
             dilation=({dh}, {dw}), groups={groups}, bias={bias})"
        );
        // Every other case adds a residual: a 1x1 conv of the input to the same shape.
        let same = (kh - 1) * dh == 2 * ph && (kw - 1) * dw == 2 * pw;
        let Some(source) =
            sweep_program([in_channels, h, w], &conv, activation, cases % 2 == 1, out_channels, (sh, sw), same)
        else {
            continue;
        };
        cases += 1;
        let batch = 1 + rng.below(3);
        for conv_kernel in [ConvKernel::Direct, ConvKernel::Tiled] {
            let options = GpuOptions { conv_kernel: Some(conv_kernel), ..Default::default() };
            let result = optimized_graph(&source, batch).and_then(|graph| {
                if conv_kernel == ConvKernel::Direct {
                    fused_residuals += graph.node_ids().iter().filter(|&&id| graph.node(id).epilogue.residual).count();
                }
                check_graph(graph, &options)
            });
            if let Err(e) = result {
                failures.push(format!("{conv_kernel:?}, batch {batch}, {source}: {e}"));
            }
        }
    }
    eprintln!("{cases} convolution variants, {fused_residuals} with a fused residual");
    assert!(fused_residuals >= 20, "the sweep should exercise fused residuals");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn depthwise_variants_match() {
    // Depthwise convolutions run on depthwise.wgsl (one channel, 4 columns per
    // invocation): kernels 3, 5, 7 and rectangular ones, strides 1 and 2, dilation,
    // padding, widths that are not multiples of 4, every activation, and a fused
    // residual every other case.
    let Some(_gpu) = gpu_present("depthwise_variants_match") else { return };
    let mut rng = Lcg(0xd3e9);
    let activations = ["relu", "leaky_relu(0.2)", "sigmoid", "tanh"];
    let kernels = [(3, 3), (5, 5), (7, 7), (3, 5), (1, 1)];
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut fused_residuals = 0;
    while cases < 24 {
        let channels = 1 + rng.below(20);
        let (kh, kw) = kernels[rng.below(kernels.len())];
        let (sh, sw) = (1 + rng.below(2), 1 + rng.below(2));
        let (dh, dw) = if rng.below(4) == 0 { (2, 1 + rng.below(2)) } else { (1, 1) };
        let (ph, pw) = (rng.below(kh / 2 * dh + 1), rng.below(kw / 2 * dw + 1));
        let (h, w) = (1 + rng.below(24), 1 + rng.below(24));
        if !reaches(kh, dh, ph, h) || !reaches(kw, dw, pw, w) {
            continue;
        }
        let bias = if rng.below(2) == 0 { "true" } else { "false" };
        let activation = activations[rng.below(activations.len())];
        let conv = format!(
            "conv({channels}, ({kh}, {kw}), stride=({sh}, {sw}), pad=({ph}, {pw}), \
             dilation=({dh}, {dw}), groups={channels}, bias={bias})"
        );
        let same = (kh - 1) * dh == 2 * ph && (kw - 1) * dw == 2 * pw;
        let Some(source) = sweep_program([channels, h, w], &conv, activation, cases % 2 == 1, channels, (sh, sw), same)
        else {
            continue;
        };
        cases += 1;
        let batch = 1 + rng.below(3);
        let result = optimized_graph(&source, batch).and_then(|graph| {
            fused_residuals += graph.node_ids().iter().filter(|&&id| graph.node(id).epilogue.residual).count();
            let plan = wgsl::plan(&graph, &DeviceLimits::default(), ConvKernel::Direct)?;
            if !plan.kernels.iter().any(|k| k.template == "depthwise") {
                return Err("no depthwise kernel in the plan".into());
            }
            check_graph(graph, &GpuOptions::default())
        });
        if let Err(e) = result {
            failures.push(format!("batch {batch}, {source}: {e}"));
        }
    }
    eprintln!("{cases} depthwise variants, {fused_residuals} with a fused residual");
    assert!(fused_residuals >= 6, "the sweep should exercise fused residuals");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Fuses every windowed pool that is a conv's only user into the conv, as
/// `fuse_pooling` does but overlapping windows too (the pass leaves those alone for
/// speed; the kernel must still compute them right); returns how many it fused.
fn fuse_every_pool(graph: &mut Graph) -> usize {
    let mut fused = 0;
    for id in graph.topo_order().expect("acyclic") {
        if !graph.contains(id) {
            continue;
        }
        let users = graph.users(id);
        let node = graph.node(id);
        let [user] = users[..] else { continue };
        if !matches!(node.op, Op::Conv(_)) || node.epilogue.pool.is_some() || graph.is_output(id) {
            continue;
        }
        let Some(pool) = PoolEpilogue::of(&graph.node(user).op) else { continue };
        let shape = graph.node(user).shape.clone();
        graph.node_mut(id).epilogue.pool = Some(pool);
        graph.node_mut(id).shape = shape;
        graph.replace_all_uses(user, id);
        graph.remove_node(user);
        fused += 1;
    }
    passes::plan_memory(graph);
    fused
}

#[test]
fn fused_pooling_variants_match() {
    // Convolutions whose epilogue pools, on both kernel choices (the tiled one hands
    // them to the direct kernel): max and average, windows that overlap or not, padding
    // (per side, asymmetric, up to kernel - 1),
    // ceil mode, count_pad, blocks of 4 pooled columns that run past the output, channel
    // counts that are not multiples of 8, groups, and epilogues with a residual.
    let Some(_gpu) = gpu_present("fused_pooling_variants_match") else { return };
    let mut rng = Lcg(0x9001);
    let activations = ["relu", "leaky_relu(0.2)", "sigmoid", "tanh"];
    let mut failures = Vec::new();
    let (mut cases, mut overlapping, mut averages, mut residuals) = (0, 0, 0, 0);
    while cases < 40 {
        let groups = [1, 1, 2][rng.below(3)];
        let in_channels = groups * (1 + rng.below(4));
        let out_channels = groups * (1 + rng.below(10));
        let k = 1 + 2 * rng.below(2);
        let stride = 1 + rng.below(2);
        let (h, w) = (4 + rng.below(10), 4 + rng.below(10));
        let (pkh, pkw) = (1 + rng.below(3), 1 + rng.below(3));
        let (psh, psw) = (1 + rng.below(3), 1 + rng.below(3));
        // Each side's padding up to kernel - 1 (ONNX's range), independently.
        let pads = [rng.below(pkh), rng.below(pkw), rng.below(pkh), rng.below(pkw)];
        if (pkh, pkw, psh, psw) == (1, 1, 1, 1) {
            continue; // the identity, which eliminate_identities removes
        }
        let max = rng.below(2) == 0;
        let ceil = rng.below(2) == 0;
        let count_pad = rng.below(2) == 0;
        let activation = activations[rng.below(activations.len())];
        let conv = format!("conv({out_channels}, {k}, stride={stride}, pad={}, groups={groups})", k / 2);
        let pool = format!(
            "{}(({pkh}, {pkw}), stride=({psh}, {psw}), pad=({}, {}, {}, {}), ceil={ceil}{})",
            if max { "max_pool" } else { "avg_pool" },
            pads[0],
            pads[1],
            pads[2],
            pads[3],
            if max { String::new() } else { format!(", count_pad={count_pad}") }
        );
        let residual = cases % 3 == 2;
        let body = if residual {
            let shortcut = format!("conv({out_channels}, 1, stride={stride}, bias=false)");
            format!(
                "    a = x |> {conv} |> {activation}\n    b = x |> {shortcut}\n    y = add(a, b) |> relu |> {pool}\n"
            )
        } else {
            format!("    y = x |> {conv} |> {activation} |> {pool}\n")
        };
        let source = format!("network sweep {{\n    input x: [{in_channels}, {h}, {w}]\n{body}    output y\n}}\n");
        let batch = 1 + rng.below(2);
        let Ok(mut graph) = graph_at(&source, batch, OptLevel::O2) else { continue };
        fuse_every_pool(&mut graph);
        if fused_pools(&graph) != 1 {
            failures.push(format!("the pool did not fuse:\n{source}"));
            continue;
        }
        cases += 1;
        overlapping += usize::from(psh < pkh || psw < pkw);
        averages += usize::from(!max);
        residuals += usize::from(residual);
        for conv_kernel in [ConvKernel::Direct, ConvKernel::Tiled] {
            let options = GpuOptions { conv_kernel: Some(conv_kernel), ..Default::default() };
            if let Err(e) = check_graph(graph.clone(), &options) {
                failures.push(format!("{conv_kernel:?}, batch {batch}, {source}: {e}"));
            }
        }
    }
    eprintln!("{cases} fused poolings: {overlapping} overlapping, {averages} averages, {residuals} with a residual");
    assert!(overlapping >= 10 && averages >= 10 && residuals >= 10, "the sweep should cover every kind");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let Some(_gpu) = gpu_present("wrong_inputs_are_errors_not_panics") else { return };
    let source = std::fs::read_to_string(repo().join("examples/lenet5.cnn")).expect("read lenet5.cnn");
    let graph = optimized_graph(&source, 2).expect("lenet5 compiles");
    let model = wgsl::compile_gpu(&graph).expect("lenet5 compiles for the GPU");
    let wrong_shape = cnnc::weights::random_normal(&[1, 1, 28, 28], INPUT_SEED);
    let error = model.run(&[wrong_shape]).expect_err("a batch of 1 for a batch-2 model");
    assert!(error.contains("must have shape"), "{error}");
    let error = model.run(&[]).expect_err("no inputs");
    assert!(error.contains("takes 1 input"), "{error}");
    // The model still runs afterwards.
    model.run(&random_inputs(&graph)).expect("a good run after bad ones");
}
