//! ONNX Runtime as an independent oracle for the reference interpreter.
//!
//! For every `examples/*.cnn` and `tests/programs/*.cnn`, at batch 1 and 2, with random weights and inputs from fixed
//! seeds: the interpreter's outputs must match ONNX Runtime's run of the exported model
//! (relative L2 error <= 1e-4 on every output, the same argmax in every batch row). The
//! model is exported with every intermediate value as an extra output, so a failure names
//! the first node, in topological order, whose value diverges.
//!
//! ONNX Runtime runs in Python: `.venv/bin/python tools/ort_run.py` (create the venv with
//! `tools/setup-python.sh`; `CNNC_PYTHON` names another interpreter). Without it the test
//! prints a loud skip line and passes, unless `CI` is set or `CNNC_REQUIRE_ORACLE=1`.
//! `CNNC_ORACLE_FILTER=substring` limits the run to the examples whose file name holds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::Op;
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

#[allow(dead_code)]
mod common;

const TOLERANCE: f64 = 1e-4;
const WEIGHT_SEED: u64 = 0x5eed;
const INPUT_SEED: u64 = 0x1e9;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary directory removed when dropped (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("cnnc-oracle-{}-{nanos}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run (one example at one batch size) found.
struct Outcome {
    /// The largest relative error over the outputs.
    max_output_error: f64,
    /// The largest relative error over all node values, and the node.
    max_node_error: (f64, String),
    ort_seconds: f64,
    interp_seconds: f64,
}

/// Runs one example at one batch size; `Err` describes the disagreement.
fn check(python: &Path, source: &str, batch: usize, tmp: &Path) -> Result<Outcome, String> {
    let graph = compile_source(source, &BuildOptions { batch, input_shape: None })
        .map_err(|d| format!("does not compile: {:?}", d.first().map(|d| &d.message)))?;
    let weights = cnnc::weights::random_weights(&graph, WEIGHT_SEED);
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| cnnc::weights::random_normal(&graph.node(id).shape, INPUT_SEED + i as u64))
        .collect();

    // ONNX Runtime first: it writes every node's value to a file, which the interpreter's
    // trace is then compared against one node at a time (nothing big is held twice).
    let model = tmp.join(format!("model_b{batch}.onnx"));
    let bytes = cnnc::export::onnx::to_onnx(&graph, &weights, true).map_err(|e| format!("export failed: {e}"))?;
    std::fs::write(&model, &bytes).map_err(|e| format!("cannot write {}: {e}", model.display()))?;
    drop(bytes);
    let out_dir = tmp.join(format!("ort_b{batch}"));
    let mut command = Command::new(python);
    command.arg(repo().join("tools/ort_run.py")).arg(&model).arg(&out_dir);
    for (&id, tensor) in graph.inputs.iter().zip(&inputs) {
        let Op::Input { name } = &graph.node(id).op else { unreachable!("graph inputs are input nodes") };
        let path = tmp.join(format!("input{}_b{batch}.npy", id.0.index()));
        std::fs::write(&path, cnnc::io::write_npy(tensor)).map_err(|e| format!("cannot write input: {e}"))?;
        command.arg(format!("{name}={}", path.display()));
    }
    let started = Instant::now();
    let result = command.output().map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let ort_seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&model);
    if !result.status.success() {
        return Err(format!("onnxruntime failed:\n{}", String::from_utf8_lossy(&result.stderr)));
    }
    let index_text = std::fs::read_to_string(out_dir.join("index.json")).map_err(|e| format!("no index.json: {e}"))?;
    let index: HashMap<String, String> =
        serde_json::from_str(&index_text).map_err(|e| format!("bad index.json: {e}"))?;
    let read = |name: &str| -> Result<Tensor, String> {
        let file = index.get(name).ok_or_else(|| format!("onnxruntime wrote no output `{name}`"))?;
        let bytes = std::fs::read(out_dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
        cnnc::io::read_npy(&bytes).map_err(|e| format!("{file}: {e}"))
    };

    // The interpreter, comparing each node's value as it is produced.
    let mut node_errors: Vec<(String, &'static str, Result<f64, String>)> = Vec::new();
    let started = Instant::now();
    let outputs = cnnc::interp::run_traced(&graph, &weights, &inputs, &mut |id, value| {
        let node = graph.node(id);
        // Inputs are not compared; neither is a node whose name the exporter could not
        // give its value (taken by an output of another node, or by a weight).
        let name_is_other_output = graph.outputs.iter().any(|o| o.name == node.name && o.node != id);
        if matches!(node.op, Op::Input { .. }) || name_is_other_output || !index.contains_key(&node.name) {
            return;
        }
        let error = read(&node.name).and_then(|ort| {
            if ort.shape != value.shape {
                Err(format!(
                    "shape {} from onnxruntime, {} from the interpreter",
                    ort.shape_string(),
                    value.shape_string()
                ))
            } else {
                Ok(relative_l2(&ort.data, &value.data))
            }
        });
        node_errors.push((node.name.clone(), node.op.mnemonic(), error));
    })
    .map_err(|e| format!("the interpreter failed: {e}"))?;
    let interp_seconds = started.elapsed().as_secs_f64();

    // The verdict is on the outputs; the node values say where a divergence starts.
    let mut problems = Vec::new();
    let mut max_output_error = 0.0f64;
    for (output, value) in graph.outputs.iter().zip(&outputs) {
        let ort = read(&output.name)?;
        if ort.shape != value.shape {
            problems.push(format!(
                "output `{}`: shape {} from onnxruntime, {} from the interpreter",
                output.name,
                ort.shape_string(),
                value.shape_string()
            ));
            continue;
        }
        let error = relative_l2(&ort.data, &value.data);
        max_output_error = max_output_error.max(error);
        if error.is_nan() || error > TOLERANCE {
            problems.push(format!("output `{}`: relative L2 error {error:.3e} > {TOLERANCE:e}", output.name));
        }
        let (a, b) = (argmax_rows(&ort), argmax_rows(value));
        if a != b {
            problems.push(format!(
                "output `{}`: argmax per row {a:?} from onnxruntime, {b:?} from the interpreter",
                output.name
            ));
        }
    }
    let mut max_node_error = (0.0f64, String::new());
    let mut first_bad = None;
    for (name, op, error) in &node_errors {
        match error {
            Ok(e) if !e.is_nan() && *e <= TOLERANCE => {
                if *e > max_node_error.0 {
                    max_node_error = (*e, name.clone());
                }
            }
            _ => {
                if first_bad.is_none() {
                    let what = match error {
                        Ok(e) => format!("relative L2 error {e:.3e}"),
                        Err(message) => message.clone(),
                    };
                    first_bad = Some(format!("first diverging node: `{name}` ({op}): {what}"));
                }
            }
        }
    }
    if problems.is_empty() {
        if let Some(bad) = first_bad {
            // Outputs agree but an intermediate does not: still a disagreement to look at.
            problems.push(format!("outputs agree, but an intermediate value does not; {bad}"));
        }
    } else {
        problems.push(first_bad.unwrap_or_else(|| "every intermediate value is within tolerance".to_string()));
    }
    if problems.is_empty() {
        Ok(Outcome { max_output_error, max_node_error, ort_seconds, interp_seconds })
    } else {
        Err(problems.join("\n    "))
    }
}

/// The examples, and the small programs of tests/programs that exercise what the
/// examples do not (uneven adaptive pools, ceil and count_pad pooling, even-size LRN,
/// asymmetric `same` padding, groups, dilation, broadcasting, several outputs).
fn examples() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["examples", "tests/programs"] {
        let dir = repo().join(dir);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "cnn"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

#[test]
fn interpreter_matches_onnxruntime_on_every_example() {
    let Some(python) = common::onnxruntime_python() else { return };
    let filter = std::env::var("CNNC_ORACLE_FILTER").ok();
    let files: Vec<PathBuf> = examples()
        .into_iter()
        .filter(|p| filter.as_deref().is_none_or(|f| p.file_name().is_some_and(|n| n.to_string_lossy().contains(f))))
        .collect();
    assert!(!files.is_empty(), "no examples/*.cnn matched");

    let started = Instant::now();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for batch in [1, 2] {
            let tmp = TempDir::new(&name);
            match check(&python, &source, batch, &tmp.0) {
                Ok(o) => println!(
                    "oracle {name:>20} batch {batch}: outputs max rel err {:.2e}; worst node {:.2e} (`{}`); ort {:.1}s, interp {:.1}s",
                    o.max_output_error, o.max_node_error.0, o.max_node_error.1, o.ort_seconds, o.interp_seconds
                ),
                Err(why) => {
                    println!("oracle {name:>20} batch {batch}: FAILED\n    {why}");
                    failures.push(format!("{name} (batch {batch}):\n    {why}"));
                }
            }
        }
    }
    println!("oracle: {} example(s) in {:.1}s", files.len(), started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {} runs disagree with ONNX Runtime:\n  {}",
        failures.len(),
        files.len() * 2,
        failures.join("\n  ")
    );
}
