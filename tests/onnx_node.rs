//! ONNX's own backend node tests for the CNN operators, through `cnnc import`.
//!
//! `tests/data/onnx_node/` holds the tests `tools/onnx_node_cases.py` generated from the
//! `onnx` package's case generators (the operators `cnnc import` is meant to read, float32
//! data of rank at most 4; parameters as initializers). Every test either imports, and
//! then its outputs match the test's expected outputs on the reference interpreter
//! (relative L2 at most 1e-5), on the CPU backend at -O2 and on the GPU backend at -O2
//! with the GPU's passes (at most 1e-4, f32 sums; the GPU run needs an adapter, see
//! `common::gpu_present`), or
//! is refused with a message naming the node and its operator. The count that imports
//! may only grow: `IMPORTED_AT_LEAST` is what the importer reached when it was last
//! raised. Each refusal is printed with its reason (`--nocapture`), the list of what the
//! language cannot express yet.
//!
//! Scope, at 122 of 182 importing. The design rule: **dimension 0 of every ONNX tensor is
//! the batch; a cnnc program describes one sample and its code runs any batch size.** A
//! rank-1 tensor `[N]` is one scalar per sample (`input x: []`, elementwise ops only). The
//! 60 refusals are each out of scope by that rule or by the (no training mode),
//! and the test fails on a refusal outside these categories (matched by a phrase of the
//! message, [`OUT_OF_SCOPE`]):
//! - (a) 40, ops that mix dimension 0 with the others or reduce over it: Concat, Split,
//!   Softmax, LayerNormalization or ReduceMean at or over axis 0 (the 1-D Concat and
//!   Split tests, MeanVarianceNormalization's expansion, ReduceMean over every axis),
//!   Flatten at an axis other than 1, a Reshape that changes dimension 0, Gemm's
//!   `transA` or a bias row per sample (C of shape `[M, N]`), a MatMul whose weight's
//!   leading dimension is not 1 (`test_matmul_3d`) or is the product's dimension 0 (a
//!   rank-1 input by a stacked weight, `test_matmul_1d_3d`);
//! - (b) 4, a runtime input without a batch axis used beside batched ones: `y` of shape
//!   `[5]` broadcast against `x` of `[3, 4, 5]` (`test_add_bcast`, `test_mul_bcast`),
//!   GroupNormalization's expansion with its scale and bias as `[C]` inputs;
//! - (c) 13, LayerNormalization's `Mean` and `InvStdDev` outputs in use: the operator's
//!   schema documents them as "Saved mean used during training to speed up gradient
//!   computation" and "Saved inverse standard deviation used during training to speed up
//!   gradient computation" (onnx 1.23), training mode; the 6 LayerNormalization tests
//!   from axis 0 are counted in (a);
//! - (d) 3, zero-size tensors (`test_reshape_allowzero_reordered`, and the two
//!   `test_split_zero_size_splits`, which split a `[0]` input along dimension 0).
//!
//! Integer tensors are not generated.

use std::path::{Path, PathBuf};

#[allow(dead_code)]
mod common;

use cnnc::backend::wgsl;
use cnnc::passes::{self, Capabilities, OptLevel};
use cnnc::tensor::{Tensor, relative_l2};
use protobuf::Message;

/// Tests that import and pass; raise it when the importer learns more.
const IMPORTED_AT_LEAST: usize = 122;

/// The categories a refusal may fall in, each by a phrase of its message, with what the
/// category is. A refusal matching none is a failure: everything else is in scope.
const OUT_OF_SCOPE: [(&str, &str); 4] = [
    ("mixes the batch (dimension 0)", "(a) mixes dimension 0 with the others or reduces over it"),
    ("has no batch axis", "(b) a runtime input without a batch axis beside batched ones"),
    ("saved for training", "(c) LayerNormalization's Mean and InvStdDev outputs, saved for training"),
    ("zero-size", "(d) zero-size tensors"),
];

const REFERENCE_TOLERANCE: f64 = 1e-5;
const CPU_TOLERANCE: f64 = 1e-4;
const GPU_TOLERANCE: f64 = 1e-4;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_node");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("tests/data/onnx_node").map(|e| e.expect("a directory entry").path()).collect();
    cases.sort();
    cases
}

fn npy(path: &Path) -> Tensor {
    cnnc::io::read_npy(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The model's runtime inputs (not initializers) in file order: `input_<i>.npy` follows it.
fn runtime_inputs(model: &[u8]) -> Vec<String> {
    let model = onnx_protobuf::ModelProto::parse_from_bytes(model).expect("the generator wrote a valid model");
    let graph = model.graph.as_ref().expect("a graph");
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(|i| i.name.clone()).collect()
}

/// Runs one test: `Ok(None)` when it imports and matches, `Ok(Some(reason))` when the
/// import refuses it, `Err` when it imports and computes something else.
fn check(case: &Path, gpu: bool) -> Result<Option<String>, String> {
    let bytes = std::fs::read(case.join("model.onnx")).map_err(|e| e.to_string())?;
    let imported = match cnnc::import::import(&bytes) {
        Ok(imported) => imported,
        Err(e) => return Ok(Some(e.to_string())),
    };
    let order = runtime_inputs(&bytes);
    let mut inputs = Vec::new();
    for name in &imported.onnx_inputs {
        let position =
            order.iter().position(|n| n == name).ok_or_else(|| format!("the import names an input `{name}`"))?;
        inputs.push(npy(&case.join(format!("input_{position}.npy"))));
    }
    let expected: Vec<Tensor> = (0..imported.onnx_outputs.len())
        .map(|i| case.join(format!("output_{i}.npy")))
        .take_while(|p| p.exists())
        .map(|p| npy(&p))
        .collect();
    if expected.len() != imported.onnx_outputs.len() {
        return Err(format!("{} outputs imported, the test has {}", imported.onnx_outputs.len(), expected.len()));
    }
    let graph = imported.graph;
    let compare = |what: &str, got: &[Tensor], tolerance: f64| -> Result<(), String> {
        for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
            if got.shape != want.shape {
                return Err(format!("{what}: output {i} has shape {:?}, expected {:?}", got.shape, want.shape));
            }
            let error = relative_l2(&got.data, &want.data);
            if error.is_nan() || error > tolerance {
                return Err(format!("{what}: output {i}: relative L2 {error:.3e} > {tolerance:e}"));
            }
        }
        Ok(())
    };
    let reference = cnnc::interp::run(&graph, &graph.weights, &inputs).map_err(|e| format!("reference: {e}"))?;
    compare("reference", &reference, REFERENCE_TOLERANCE)?;
    let mut optimized = graph.clone();
    passes::optimize(&mut optimized, OptLevel::O2).map_err(|e| format!("-O2: {e}"))?;
    let jit = cnnc::backend::clif::compile_jit(&optimized).map_err(|e| format!("cpu: {e}"))?;
    let native = jit.run(&inputs).map_err(|e| format!("cpu run: {e}"))?;
    compare("cpu", &native, CPU_TOLERANCE)?;
    if gpu {
        let mut for_gpu = graph.clone();
        passes::optimize_for(&mut for_gpu, OptLevel::O2, Capabilities::GPU).map_err(|e| format!("gpu -O2: {e}"))?;
        let model = wgsl::compile_gpu(&for_gpu).map_err(|e| format!("gpu: {e}"))?;
        let on_gpu = model.run(&inputs).map_err(|e| format!("gpu run: {e}"))?;
        compare("gpu", &on_gpu, GPU_TOLERANCE)?;
    }
    Ok(None)
}

#[test]
fn onnx_node_tests_import_and_match_or_are_refused_by_name() {
    let mut imported = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    let gpu = common::gpu_present("onnx_node_tests_import_and_match_or_are_refused_by_name");
    for case in cases() {
        let name = case.file_name().expect("a name").to_string_lossy().into_owned();
        match check(&case, gpu.is_some()) {
            Ok(None) => imported.push(name),
            Ok(Some(reason)) => refused.push((name, reason)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!(
        "imported and matching{}: {} of {}",
        if gpu.is_some() { " (reference, cpu and gpu)" } else { " (reference and cpu; no GPU)" },
        imported.len(),
        imported.len() + refused.len() + failures.len()
    );
    let mut counts = [0usize; OUT_OF_SCOPE.len()];
    for (name, reason) in &refused {
        let reason = reason.lines().next().unwrap_or_default();
        println!("refused {name}: {reason}");
        match OUT_OF_SCOPE.iter().position(|(phrase, _)| reason.contains(phrase)) {
            Some(k) => counts[k] += 1,
            None => failures.push(format!("{name}: refused, and not for a reason out of scope: {reason}")),
        }
    }
    for ((_, category), count) in OUT_OF_SCOPE.iter().zip(counts) {
        println!("out of scope {category}: {count}");
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    assert!(
        imported.len() >= IMPORTED_AT_LEAST,
        "only {} node tests import, fewer than the {IMPORTED_AT_LEAST} that did",
        imported.len()
    );
}
