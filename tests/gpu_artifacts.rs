//! GPU build artifacts: LeNet-5 and ResNet-18, optimized at O2 with random weights, are
//! written to a directory (`write_artifacts`), loaded back without their source
//! (`GpuModel::load`) and run; the outputs must match the reference interpreter's
//! (relative L2 error <= 1e-4, same argmax). Also: what is written, bad artifacts, and
//! models compiled and loaded on a device the caller opened (`compile_gpu_on`,
//! `GpuModel::load_on`) with WebGPU's default limits.
//!
//! Without an adapter the GPU tests print a loud skip line and pass, unless
//! `CNNC_REQUIRE_GPU=1` (CI). Writing needs no adapter.

use std::path::PathBuf;
#[allow(dead_code)]
mod common;
use common::{gpu_present, own_device};
use std::time::Instant;

use cnnc::backend::wgsl::{self, ArtifactPlan, ConvKernel, DeviceLimits, GpuModel};
use cnnc::ir::Graph;
use cnnc::passes::OptLevel;
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

const TOLERANCE: f64 = 1e-4;
const WEIGHT_SEED: u64 = 0x5eed;
const INPUT_SEED: u64 = 0x1e9;

fn example(name: &str, batch: usize) -> Graph {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    let source = std::fs::read_to_string(&path).expect("read the example");
    common::random_graph(&source, batch, WEIGHT_SEED, OptLevel::O2).expect("the example compiles")
}

fn random_inputs(graph: &Graph) -> Vec<Tensor> {
    common::random_inputs(graph, INPUT_SEED)
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-gpu-artifacts-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Writes, loads and runs `example` at `batch`; compares with the interpreter.
fn round_trip(example_name: &str, batch: usize, test: &str) {
    let Some(_gpu) = gpu_present(test) else { return };
    let graph = example(example_name, batch);
    let inputs = random_inputs(&graph);
    let dir = scratch(test);
    let name = example_name.trim_end_matches(".cnn");
    let started = Instant::now();
    let written = wgsl::write_artifacts(&graph, &dir, name).expect("write the artifacts");
    let write_seconds = started.elapsed().as_secs_f64();
    assert!(written.iter().all(|p| p.exists()), "{written:?}");
    let started = Instant::now();
    let model = GpuModel::load(&dir, name).expect("load the artifacts");
    let load_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let got = model.run(&inputs).expect("run");
    let run_seconds = started.elapsed().as_secs_f64();
    let want = cnnc::interp::run(&graph, &graph.weights, &inputs).expect("reference");
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got.shape, want.shape);
        let error = relative_l2(&got.data, &want.data);
        assert!(error <= TOLERANCE, "{example_name}: relative L2 error {error:.3e}");
        assert_eq!(argmax_rows(got), argmax_rows(want), "{example_name}: argmax");
    }
    eprintln!(
        "{example_name} batch {batch}: {} files, write {write_seconds:.2} s, load {load_seconds:.2} s, \
         run {run_seconds:.2} s, {} dispatches, {} pipelines",
        written.len(),
        model.plan().kernels.len(),
        model.pipeline_count()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lenet5_artifacts_round_trip() {
    round_trip("lenet5.cnn", 1, "lenet5_artifacts_round_trip");
}

#[test]
fn lenet5_artifacts_round_trip_batch4() {
    round_trip("lenet5.cnn", 4, "lenet5_artifacts_round_trip_batch4");
}

#[test]
fn resnet18_artifacts_round_trip() {
    round_trip("resnet18.cnn", 1, "resnet18_artifacts_round_trip");
}

/// Needs no adapter: the files, the plan's contents, every module valid WGSL on its own.
#[test]
fn artifacts_are_self_contained() {
    let graph = example("lenet5.cnn", 1);
    let dir = scratch("self_contained");
    let written = wgsl::write_artifacts(&graph, &dir, "lenet5").expect("write");
    let plan_text = std::fs::read_to_string(dir.join("lenet5.plan.json")).expect("the plan");
    let plan: ArtifactPlan = serde_json::from_str(&plan_text).expect("the plan parses");
    assert!(!plan.dispatches.is_empty());
    let weights_len = std::fs::metadata(dir.join("lenet5.weights")).expect("the weights").len();
    assert_eq!(weights_len, plan.weight_buffers.iter().map(|r| r.bytes).sum::<u64>());
    for dispatch in &plan.dispatches {
        let source = std::fs::read_to_string(dir.join(&dispatch.module)).expect("the module");
        assert!(source.starts_with("// kernel "), "{}", dispatch.module);
        wgsl::validate_wgsl(&source).expect("valid WGSL");
        assert!(dispatch.workgroups.iter().all(|&n| n >= 1));
    }
    let modules = written.iter().filter(|p| p.extension().is_some_and(|e| e == "wgsl")).count();
    assert!(modules >= 1 && modules <= plan.dispatches.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_artifacts_are_errors() {
    let graph = example("lenet5.cnn", 1);
    let dir = scratch("bad");
    let missing = GpuModel::load(&dir, "lenet5").err().expect("no plan is an error");
    assert!(missing.contains("lenet5.plan.json"), "{missing}");
    wgsl::write_artifacts(&graph, &dir, "lenet5").expect("write");
    // A truncated weights file.
    let weights = dir.join("lenet5.weights");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let truncated = GpuModel::load(&dir, "lenet5").err().expect("a truncated weights file is an error");
    assert!(truncated.contains("shorter") || truncated.contains("adapter"), "{truncated}");
    // A broken plan.
    std::fs::write(dir.join("lenet5.plan.json"), "{").expect("write");
    let broken = GpuModel::load(&dir, "lenet5").err().expect("a broken plan is an error");
    assert!(broken.contains("not a cnnc GPU plan"), "{broken}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks `got` against the interpreter on `graph` and `inputs`.
fn assert_matches_reference(what: &str, graph: &Graph, inputs: &[Tensor], got: &[Tensor]) {
    let want = cnnc::interp::run(graph, &graph.weights, inputs).expect("reference");
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got.shape, want.shape);
        let error = relative_l2(&got.data, &want.data);
        assert!(error <= TOLERANCE, "{what}: relative L2 error {error:.3e}");
        assert_eq!(argmax_rows(got), argmax_rows(want), "{what}: argmax");
    }
}

#[test]
fn models_run_on_the_callers_device() {
    let Some(_gpu) = gpu_present("models_run_on_the_callers_device") else { return };
    let (device, queue) = own_device();
    let graph = example("lenet5.cnn", 2);
    let inputs = random_inputs(&graph);

    // From the graph.
    let compiled = wgsl::compile_gpu_on(&graph, &device, &queue, &wgsl::GpuOptions::default()).expect("compile_gpu_on");
    assert!(compiled.device().0 == &device, "the model must run on the caller's device");
    assert_matches_reference("compile_gpu_on", &graph, &inputs, &compiled.run(&inputs).expect("run"));

    // From the artifacts; the same device and queue serve both models.
    let dir = scratch("callers_device");
    wgsl::write_artifacts(&graph, &dir, "lenet5").expect("write");
    let loaded = GpuModel::load_on(&dir, "lenet5", &device, &queue).expect("load_on");
    assert!(loaded.device().0 == &device);
    assert_matches_reference("load_on", &graph, &inputs, &loaded.run(&inputs).expect("run"));
    assert_matches_reference("compile_gpu_on, again", &graph, &inputs, &compiled.run(&inputs).expect("run"));

    // A plan laid out for more than the device offers is refused, not run.
    let greedy = DeviceLimits {
        max_storage_buffers_per_shader_stage: device.limits().max_storage_buffers_per_shader_stage + 1,
        ..DeviceLimits::default()
    };
    wgsl::write_artifacts_with(&graph, &dir, "greedy", &greedy, ConvKernel::Direct).expect("write");
    let error = GpuModel::load_on(&dir, "greedy", &device, &queue).err().expect("too much for the device");
    assert!(error.contains("needs device limits"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
