//! Builds and runs `examples/embed_rust` (a crate whose `build.rs` compiles LeNet-5 with
//! `cnnc::build` and links it) as a user would, `cargo run`, and compares what it prints
//! with the reference interpreter on the same graph, weights and input.
//!
//! The example is its own crate (not a workspace member), built with its own target
//! directory under ours (`target/embed_rust`, see `common::embed_rust_cargo`), so reruns
//! are incremental; the first run compiles cnnc and its dependencies once more, as a build
//! dependency. Every other example network goes through the same crate's `network`
//! binary in `tests/cpu_backend.rs`.

use std::path::Path;

use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

#[allow(dead_code)]
mod common;

const SEED: u64 = 1;

/// Runs the example (built first if needed) with `args` and parses one float per line.
fn run_example(args: &[&Path]) -> Vec<f32> {
    let output = common::embed_rust_cargo("run").arg("--").args(args).output().expect("cannot run cargo");
    common::printed_floats(&output, "cargo run in examples/embed_rust")
}

fn check(got: &[f32], expected: &Tensor) {
    assert_eq!(got.len(), expected.len(), "the example printed {} values, expected {}", got.len(), expected.len());
    let error = relative_l2(got, &expected.data);
    assert!(error <= 1e-4, "relative L2 {error:e} > 1e-4\ngot {got:?}\nexpected {:?}", expected.data);
    let got = Tensor::new(expected.shape.clone(), got.to_vec()).expect("same length");
    assert_eq!(argmax_rows(&got), argmax_rows(expected));
}

#[test]
fn embedded_lenet5_matches_the_interpreter() {
    // An input from a file.
    let input = cnnc::weights::random_normal(&[1, 1, 28, 28], 7);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("embed_rust_test");
    std::fs::create_dir_all(&dir).expect("create the test directory");
    let file = dir.join("input.f32");
    common::write_f32_file(&file, &input.data);
    check(&run_example(&[&file]), &common::lenet5_reference(1, SEED, &input.data));

    // The example's own made-up input (`deterministic_input` in its main.rs).
    let made_up: Vec<f32> = (0..784).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    check(&run_example(&[]), &common::lenet5_reference(1, SEED, &made_up));
}
