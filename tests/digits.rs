//! The trained digits model (`examples/digits.cnn`, weights and held-out split in
//! `examples/digits/`, written by `tools/train_digits.py`): compiled for the CPU and run
//! by the reference interpreter, it classifies the held-out images exactly as often
//! correctly as the training script measured, and the README's command prints the right
//! digit for an image.

use std::path::{Path, PathBuf};
use std::process::Command;

use cnnc::exec::Target;
use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::passes::{self, OptLevel};
use cnnc::tensor::{Tensor, argmax_rows};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn npy(name: &str) -> Tensor {
    let path = repo().join("examples/digits").join(name);
    cnnc::io::read_npy(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The count of correct predictions in `accuracy.txt` (`0.9889 356/360`).
fn reported_accuracy() -> (usize, usize) {
    let text = String::from_utf8(read(&repo().join("examples/digits/accuracy.txt"))).unwrap();
    let fraction = text.split_whitespace().nth(1).expect("accuracy.txt: `ACCURACY CORRECT/TOTAL`");
    let (correct, total) = fraction.split_once('/').expect("CORRECT/TOTAL");
    (correct.parse().unwrap(), total.parse().unwrap())
}

#[test]
fn held_out_accuracy_equals_the_training_scripts() {
    let x = npy("test_x.npy");
    let y = npy("test_y.npy");
    let n = x.shape[0];
    assert_eq!(x.shape, vec![n, 1, 8, 8]);
    assert_eq!(y.shape, vec![n]);
    let labels: Vec<usize> = y.data.iter().map(|&v| v as usize).collect();
    let (correct, total) = reported_accuracy();
    assert_eq!(total, n, "accuracy.txt counts {total} images, test_x.npy holds {n}");

    let source = read(&repo().join("examples/digits.cnn"));
    let mut graph = compile_bytes(&source, &BuildOptions { batch: n, input_shape: None }).unwrap();
    let weights = read(&repo().join("examples/digits/digits.safetensors"));
    graph.weights = cnnc::weights::load_safetensors(&weights, &graph, false).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();

    for target in [Target::Cpu, Target::Reference] {
        let executor = cnnc::exec::compile(graph.clone(), target).unwrap();
        let outputs = executor.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(outputs[0].shape, vec![n, 10]);
        let predicted = argmax_rows(&outputs[0]);
        let right = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        assert_eq!(
            right,
            correct,
            "{}: {right}/{n} correct, tools/train_digits.py measured {correct}/{total}",
            target.name()
        );
    }
}

/// The README's command: `cnnc run examples/digits.cnn --weights ... --input
/// examples/digits/3.png --mean 0 --std 1 --top 3 --labels ...`.
#[test]
fn readme_command_prints_the_digit() {
    for digit in [3, 7] {
        let image = format!("examples/digits/{digit}.png");
        let output = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(["run", "examples/digits.cnn", "--weights", "examples/digits/digits.safetensors"])
            .args(["--input", &image, "--mean", "0", "--std", "1", "--top", "3"])
            .args(["--labels", "examples/digits/labels.txt"])
            .current_dir(repo())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{image}: exit {:?}\n{stdout}{stderr}", output.status);
        let lines: Vec<&str> =
            stdout.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
        assert_eq!(lines.len(), 3, "{image}: expected 3 ranked classes:\n{stdout}");
        let first: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(first[..3], ["1.", "class", &digit.to_string()], "{image}: top class is not {digit}:\n{stdout}");
    }
}
