//! Multithreaded runs of the CPU backend: every example and feature program, run by
//! several threads sharing each layer (`infer_part`), gives bit for bit the result of one
//! thread (`infer`), which `tests/cpu_backend.rs` checks against the reference
//! interpreter. Bitwise, because threads only share out the same tiles: each output
//! value is computed by the same instructions either way.
//!
//! Thread counts 2 and 3 (uneven shares), batch 1 and 2 (padded convolutions synchronize
//! per batch element). `CNNC_CPU_FILTER=NAME` restricts the networks.

mod common;

use cnnc::front::{BuildOptions, compile_source};
use cnnc::passes::{OptLevel, optimize};
use cnnc::tensor::Tensor;

fn bits(tensors: &[Tensor]) -> Vec<Vec<u32>> {
    tensors.iter().map(|t| t.data.iter().map(|x| x.to_bits()).collect()).collect()
}

fn check(name: &str, source: &str, batch: usize) -> Result<(), String> {
    let mut graph = compile_source(source, &BuildOptions { batch, input_shape: None })
        .map_err(|d| format!("{name}: does not compile: {:?}", d.first().map(|d| &d.message)))?;
    graph.weights = cnnc::weights::random_weights(&graph, 7);
    optimize(&mut graph, OptLevel::O2)?;
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| cnnc::weights::random_normal(&graph.node(id).shape, 100 + i as u64))
        .collect();
    let mut model = cnnc::backend::clif::compile_jit(&graph)?;
    let single = bits(&model.run(&inputs)?);
    for threads in [2, 3] {
        model.set_threads(threads);
        // Twice: the second run reuses the pool.
        for run in 0..2 {
            let got = bits(&model.run(&inputs)?);
            if got != single {
                let differing: usize =
                    got.iter().zip(&single).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count()).sum();
                return Err(format!(
                    "{name} batch {batch}: {threads} threads (run {run}) differ from one thread in {differing} values"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn threads_share_layers_without_changing_results() {
    let filter = std::env::var("CNNC_CPU_FILTER").unwrap_or_default();
    let mut failures = Vec::new();
    let mut files = common::cnn_files("examples");
    files.extend(common::cnn_files("tests/programs"));
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if !name.contains(&filter) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        // The big ImageNet models at batch 1 only: they cost seconds per run here.
        let big = ["vgg16", "alexnet", "alexnet_original", "resnet50", "densenet121", "googlenet", "resnet34"]
            .contains(&name.as_str());
        let batches: &[usize] = if big { &[1] } else { &[1, 2] };
        for &batch in batches {
            match check(&name, &source, batch) {
                Ok(()) => println!("{name} batch {batch}: identical on 1, 2 and 3 threads"),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
