//! Builds LeNet-5's GPU artifacts with `cnnc build --target gpu`, builds and runs
//! `examples/embed_wgpu` (a wgpu program that opens its own device and hands it to
//! `GpuModel::load_on`) on them, and compares what it prints with the reference
//! interpreter on the same graph (as written, not optimized), weights and input:
//! relative L2 error <= 1e-4 and the same argmax in every batch row.
//!
//! The example is its own crate, built in the same target directory as
//! `examples/embed_rust` (`target/embed_rust`) with the same profile, so most of cnnc's
//! dependencies (wgpu, naga, Cranelift, image, ...) are compiled once for both examples.
//! cnnc itself and a dozen small crates are compiled once more (about 13 s on 2 cores):
//! embed_rust builds cnnc as a build dependency, where `object` gets the features of
//! both cranelift-object and psm's build script, and everything above it (psm, pest,
//! cnnc) another hash. Without an adapter the test prints a loud skip line and passes,
//! unless `CNNC_REQUIRE_GPU=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod common;
use common::gpu_present;

use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

const SEED: u64 = 11;
const TOLERANCE: f64 = 1e-4;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cnnc build examples/lenet5.cnn --target gpu` at `batch` into a fresh `dir`.
fn build_artifacts(dir: &Path, batch: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let output = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .arg("build")
        .arg(repo().join("examples/lenet5.cnn"))
        .args(["--target", "gpu", "--random-weights", "--seed", &SEED.to_string()])
        .args(["--batch", &batch.to_string(), "-o"])
        .arg(dir)
        .output()
        .expect("run cnnc build");
    assert!(output.status.success(), "cnnc build failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Runs the example (built first if needed) with `args` and parses one float per line.
fn run_example(args: &[&Path]) -> Vec<f32> {
    let output = common::example_cargo("embed_wgpu", "run").arg("--").args(args).output().expect("cannot run cargo");
    common::printed_floats(&output, "cargo run in examples/embed_wgpu")
}

fn check(got: &[f32], expected: &Tensor) -> f64 {
    assert_eq!(got.len(), expected.len(), "the example printed {} values, expected {}", got.len(), expected.len());
    let error = relative_l2(got, &expected.data);
    assert!(error <= TOLERANCE, "relative L2 {error:e} > {TOLERANCE:e}\ngot {got:?}\nexpected {:?}", expected.data);
    let got = Tensor::new(expected.shape.clone(), got.to_vec()).expect("same length");
    assert_eq!(argmax_rows(&got), argmax_rows(expected));
    error
}

#[test]
fn embedded_gpu_lenet5_matches_the_interpreter() {
    let Some(_gpu) = gpu_present("embedded_gpu_lenet5_matches_the_interpreter") else { return };
    let scratch: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("embed_wgpu_test");

    // Batch 1, the example's own made-up input (`deterministic_input` in its main.rs).
    let started = std::time::Instant::now();
    let dir = scratch.join("batch1");
    build_artifacts(&dir, 1);
    let made_up: Vec<f32> = (0..784).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let error = check(&run_example(&[&dir]), &common::lenet5_reference(1, SEED, &made_up));
    eprintln!("batch 1: relative L2 {error:.2e} (with the example's build: {:.1} s)", started.elapsed().as_secs_f64());

    // Batch 3, an input from a file.
    let dir = scratch.join("batch3");
    build_artifacts(&dir, 3);
    let input = cnnc::weights::random_normal(&[3, 1, 28, 28], 7);
    let file = scratch.join("input.f32");
    let bytes: Vec<u8> = input.data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    std::fs::write(&file, bytes).expect("write the input");
    let error = check(&run_example(&[&dir, &file]), &common::lenet5_reference(3, SEED, &input.data));
    eprintln!("batch 3: relative L2 {error:.2e}");
    let _ = std::fs::remove_dir_all(&scratch);
}
