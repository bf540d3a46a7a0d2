//! `cnnc bench --target gpu` and `cnnc::gpu::bench_gpu`: load, first run and warm runs
//! reported apart; per-dispatch times from timestamp queries where the adapter has them
//! (one per dispatch, in the plan's order, min <= median, a positive total), none and
//! said so where it has not. On LeNet-5, small enough for any driver.
//!
//! Without an adapter the GPU tests print a loud skip line and pass, unless
//! `CNNC_REQUIRE_GPU=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod common;
use common::gpu_present;

use cnnc::front::{BuildOptions, compile_source};
use cnnc::gpu::{GpuBenchOptions, GpuBenchReport, bench_gpu_with};
use cnnc::passes::{Capabilities, OptLevel, optimize_for};

fn lenet5() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lenet5.cnn")
}

/// The names of LeNet-5's kernels at O2 in the GPU's pipeline (which fuses the 2x2 max
/// pools into the convolutions before them), in execution order.
const LENET5_LAYERS: [&str; 6] = ["conv1", "conv2", "fc1", "fc2", "fc3", "softmax_0"];

/// What every report must satisfy, with or without timestamps.
fn check_report(report: &GpuBenchReport, runs: u32) {
    assert_eq!(report.runs, runs);
    assert_eq!(report.dispatches, LENET5_LAYERS.len());
    assert!(report.pipelines >= 1 && report.pipelines <= report.dispatches);
    assert!(report.load_ms > 0.0 && report.first_run_ms > 0.0, "{report:?}");
    assert!(report.min_ms > 0.0 && report.min_ms <= report.median_ms, "{report:?}");
    if report.timestamp_query {
        assert_ne!(report.dispatch_timing, "none", "{report:?}");
        let layers: Vec<&str> = report.dispatch_times.iter().map(|d| d.layer.as_str()).collect();
        assert_eq!(layers, LENET5_LAYERS);
        for dispatch in &report.dispatch_times {
            assert!(dispatch.min_ms >= 0.0 && dispatch.min_ms <= dispatch.median_ms, "{dispatch:?}");
        }
        let total = report.gpu_median_ms.expect("a GPU total with timestamps");
        assert!(total > 0.0, "{report:?}");
        // The convolutions are the work: they cannot all take no time.
        assert!(report.dispatch_times.iter().any(|d| d.template == "conv" && d.median_ms > 0.0), "{report:?}");
    } else {
        assert_eq!(report.dispatch_timing, "none");
        assert!(report.dispatch_times.is_empty() && report.gpu_median_ms.is_none(), "{report:?}");
    }
}

#[test]
fn bench_cli_reports_first_run_apart_and_dispatch_times() {
    let Some(_gpu) = gpu_present("bench_cli_reports_first_run_apart_and_dispatch_times") else { return };
    let bench = |format: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .arg("bench")
            .arg(lenet5())
            .args(["--target", "gpu", "--runs", "3", "--warmup", "1", "--format", format])
            .output()
            .expect("run cnnc bench");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "cnnc bench failed:\n{}", String::from_utf8_lossy(&output.stderr));
        stdout
    };

    let json: serde_json::Value = serde_json::from_str(&bench("json")).expect("bench --format json prints JSON");
    assert_eq!(json["network"], "lenet5");
    assert_eq!(json["target"], "gpu");
    assert_eq!(json["batch"], 1);
    assert!(json["gflops"].as_f64().is_some_and(|g| g > 0.0), "{json}");
    let report: GpuBenchReport = serde_json::from_value(json.clone()).expect("the report's fields");
    check_report(&report, 3);
    eprintln!("{}", serde_json::to_string(&json).expect("print"));

    let table = bench("table");
    eprintln!("{table}");
    for line in ["lenet5 on gpu", "load ", "first run ", "median ", "min "] {
        assert!(table.contains(line), "no `{line}` in:\n{table}");
    }
    if report.timestamp_query {
        assert!(table.contains("sum of dispatches") && table.contains("fc1"), "{table}");
    } else {
        assert!(table.contains("no per-dispatch times"), "{table}");
    }
}

#[test]
fn one_pass_per_dispatch_times_every_dispatch_too() {
    // Adapters with TIMESTAMP_QUERY but without TIMESTAMP_QUERY_INSIDE_PASSES get one
    // pass per dispatch; lavapipe has both, so the fallback is forced here.
    let Some(_gpu) = gpu_present("one_pass_per_dispatch_times_every_dispatch_too") else { return };
    let source = std::fs::read_to_string(lenet5()).expect("read lenet5.cnn");
    let mut graph = compile_source(&source, &BuildOptions { batch: 2, ..Default::default() }).expect("compiles");
    graph.weights = cnnc::weights::random_weights(&graph, 5);
    optimize_for(&mut graph, OptLevel::O2, Capabilities::GPU).expect("optimizes");
    let inputs = [cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 6)];
    let options = GpuBenchOptions { warmup: 0, runs: 2, one_pass_per_dispatch: true };
    let report = bench_gpu_with(&graph, &inputs, &options).expect("bench");
    check_report(&report, 2);
    if report.timestamp_query {
        assert_eq!(report.dispatch_timing, "one pass per dispatch");
    }
}

#[test]
fn zero_runs_is_an_error() {
    // Checked before any device is opened: needs no adapter.
    let source = std::fs::read_to_string(lenet5()).expect("read lenet5.cnn");
    let mut graph = compile_source(&source, &BuildOptions::default()).expect("compiles");
    graph.weights = cnnc::weights::random_weights(&graph, 5);
    let options = GpuBenchOptions { warmup: 0, runs: 0, one_pass_per_dispatch: false };
    let error = bench_gpu_with(&graph, &[], &options).expect_err("no timed run");
    assert!(error.contains("at least one timed run"), "{error}");
}
