//! The command line's contract: exit codes (0 ok, 1 user error, 2 usage) and outputs.

use std::path::Path;
use std::process::{Command, Output};

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn cnn_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_example() {
    let examples = cnn_files("examples");
    assert!(examples.len() >= 20, "only {} examples", examples.len());
    for file in examples {
        let out = cnnc(&["check", &file]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn check_rejects_every_broken_program_with_a_location() {
    for file in cnn_files("tests/broken") {
        let out = cnnc(&["check", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(&format!("{file}:")), "{file}: no file:line:col in\n{stderr}");
        assert!(stderr.contains('^'), "{file}: nothing underlined in\n{stderr}");
    }
}

#[test]
fn usage_errors_exit_2_and_input_errors_exit_1() {
    assert_eq!(cnnc(&[]).status.code(), Some(2));
    assert_eq!(cnnc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(cnnc(&["summary", "examples/lenet5.cnn", "--batch", "0"]).status.code(), Some(2));
    let missing = cnnc(&["check", "no/such/file.cnn"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.cnn"));
    assert_eq!(cnnc(&["check", "examples"]).status.code(), Some(1));
    let bad_shape = cnnc(&["summary", "examples/lenet5.cnn", "--input-shape", "3xfoo"]);
    assert_eq!(bad_shape.status.code(), Some(1));
}

#[test]
fn summary_json_and_batch() {
    let out = cnnc(&["summary", "examples/lenet5.cnn", "--batch", "4", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total_params"], 61_706);
    // MACs scale with the batch.
    assert_eq!(json["total_macs"], 4 * 416_520);
    assert_eq!(json["layers"][0]["shape"], serde_json::json!([4, 6, 28, 28]));
}

#[test]
fn summary_with_another_input_shape() {
    let out = cnnc(&["summary", "examples/allcnn_c.cnn", "--input-shape", "3x64x64", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layers"][0]["shape"], serde_json::json!([1, 96, 64, 64]));
    // Too small an input for the network is a located shape error.
    let out = cnnc(&["summary", "examples/allcnn_c.cnn", "--input-shape", "3x8x8"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn graph_writes_dot() {
    let out = cnnc(&["graph", "examples/inception3a.cnn"]);
    assert_eq!(out.status.code(), Some(0));
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.starts_with("digraph \"inception3a\""));
    assert!(dot.contains("inception3a.branch2.2"));
    assert!(dot.contains("->"));
}

#[test]
fn ir_is_deterministic() {
    let a = cnnc(&["ir", "examples/resnet18.cnn", "-O0"]);
    let b = cnnc(&["ir", "examples/resnet18.cnn", "-O0"]);
    assert_eq!(a.status.code(), Some(0));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).contains("layer2.0.downsample.1.running_var"));
}
