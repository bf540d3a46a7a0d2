//! `cnnc import`: an ONNX model as a `.cnn` program and a safetensors weights file,
//! optionally checked against ONNX Runtime on the original model (`--check`).

use std::path::{Path, PathBuf};
use std::process::Command;

use cnnc::tensor::Tensor;

use super::common::{UserError, read_limited};

/// ONNX files larger than this are refused (protobuf's own limit is 2 GiB).
const MAX_MODEL_BYTES: u64 = 2 << 30;
/// The seed of `--check`'s random inputs.
const CHECK_SEED: u64 = 18;
/// The script that runs ONNX Runtime (the oracle tests' `tools/ort_run.py`).
const ORT_RUN: &str = include_str!("../../tools/ort_run.py");

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model to import.
    model: PathBuf,
    /// Where to write the program (default: the model's name with `.cnn`).
    #[arg(short, long, value_name = "NET.cnn")]
    output: Option<PathBuf>,
    /// Where to write the weights (default: the program's name with `.safetensors`).
    #[arg(long, value_name = "NET.safetensors")]
    weights_out: Option<PathBuf>,
    /// Run the imported program on the reference interpreter and the original model on
    /// ONNX Runtime (through Python: $CNNC_PYTHON, else ./.venv/bin/python, else
    /// python3) on the same random inputs, and print the relative L2 error per output.
    #[arg(long)]
    check: bool,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let bytes = read_limited(&args.model, MAX_MODEL_BYTES, "ONNX model")?;
    let imported = cnnc::import::import(&bytes)
        .map_err(|e| UserError(format!("error: {}: cannot import: {e}", args.model.display())))?;
    let program_path = args.output.clone().unwrap_or_else(|| args.model.with_extension("cnn"));
    let weights_path = args.weights_out.clone().unwrap_or_else(|| program_path.with_extension("safetensors"));
    std::fs::write(&program_path, &imported.program)
        .map_err(|e| UserError(format!("error: cannot write {}: {e}", program_path.display())))?;
    std::fs::write(&weights_path, cnnc::weights::save_safetensors(&imported.weights))
        .map_err(|e| UserError(format!("error: cannot write {}: {e}", weights_path.display())))?;
    println!(
        "{}: {} layers, {} weight tensors -> {} and {}",
        args.model.display(),
        imported.graph.node_count() - imported.graph.inputs.len(),
        imported.weights.tensors.len(),
        program_path.display(),
        weights_path.display()
    );
    if args.check {
        check(&args.model, &imported)?;
    }
    Ok(())
}

fn python() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("CNNC_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![PathBuf::from(".venv/bin/python"), PathBuf::from("python3")],
    };
    let mut tried = Vec::new();
    for python in candidates {
        match Command::new(&python).args(["-c", "import numpy, onnxruntime"]).output() {
            Ok(out) if out.status.success() => return Ok(python),
            _ => tried.push(python.display().to_string()),
        }
    }
    Err(format!(
        "ONNX Runtime is unavailable (tried {}; set CNNC_PYTHON to a Python with numpy and onnxruntime)",
        tried.join(", ")
    ))
}

/// Runs both sides on the same inputs and prints the relative L2 error of each output.
fn check(model: &Path, imported: &cnnc::import::Import) -> Result<(), UserError> {
    let python = python().map_err(|e| UserError(format!("error: --check: {e}")))?;
    let graph = &imported.graph;
    cnnc::budget::check(graph, None).map_err(|e| UserError(format!("error: --check: {e}")))?;
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| cnnc::weights::random_normal(&graph.node(id).shape, CHECK_SEED + i as u64))
        .collect();
    let dir = std::env::temp_dir().join(format!("cnnc-import-check-{}", std::process::id()));
    let result = (|| -> Result<Vec<(String, f64)>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let script = dir.join("ort_run.py");
        std::fs::write(&script, ORT_RUN).map_err(|e| e.to_string())?;
        let mut command = Command::new(&python);
        command.arg(&script).arg(model).arg(dir.join("out"));
        for (k, (name, tensor)) in imported.onnx_inputs.iter().zip(&inputs).enumerate() {
            let path = dir.join(format!("input{k}.npy"));
            std::fs::write(&path, cnnc::io::write_npy(tensor)).map_err(|e| e.to_string())?;
            command.arg(format!("{name}={}", path.display()));
        }
        let out = command.output().map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if !out.status.success() {
            return Err(format!("ONNX Runtime failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        let index: std::collections::HashMap<String, String> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("out/index.json")).map_err(|e| format!("no index.json: {e}"))?,
        )
        .map_err(|e| e.to_string())?;
        let ours =
            cnnc::interp::run(graph, &imported.weights, &inputs).map_err(|e| format!("the interpreter failed: {e}"))?;
        let mut errors = Vec::new();
        for ((onnx_name, output), value) in imported.onnx_outputs.iter().zip(&graph.outputs).zip(&ours) {
            let file = index.get(onnx_name).ok_or_else(|| format!("ONNX Runtime wrote no output `{onnx_name}`"))?;
            let bytes = std::fs::read(dir.join("out").join(file)).map_err(|e| e.to_string())?;
            let reference = cnnc::io::read_npy(&bytes).map_err(|e| e.to_string())?;
            if reference.shape != value.shape {
                return Err(format!(
                    "output `{}`: ONNX Runtime gives shape {}, the program {}",
                    output.name,
                    reference.shape_string(),
                    value.shape_string()
                ));
            }
            errors.push((output.name.clone(), cnnc::tensor::relative_l2(&value.data, &reference.data)));
        }
        Ok(errors)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let errors = result.map_err(|e| UserError(format!("error: --check: {e}")))?;
    for (name, e) in &errors {
        println!("check: output `{name}`: relative L2 error {e:.3e} (reference interpreter vs ONNX Runtime)");
    }
    Ok(())
}
