//! Cross-target, layer-by-layer comparison (`cnnc::compare`): on ResNet-18 and the
//! Inception 3a block every target agrees with the reference on every node, and a
//! deliberately corrupted kernel (one conv's weights negated in the copy one target
//! compiles) is named as the first divergence.
//!
//! The CPU parts always run. The GPU parts follow tests/gpu_backend.rs: without an
//! adapter they print a loud skip line and pass, unless `CNNC_REQUIRE_GPU=1`.

use std::path::PathBuf;
#[allow(dead_code)]
mod common;
use common::gpu_present;
use std::sync::MutexGuard;
use std::time::Instant;

use cnnc::compare::{compare, compare_graphs};
use cnnc::exec::Target;
use cnnc::ir::{Graph, Op, ParamRole};
use cnnc::passes::OptLevel;
use cnnc::tensor::Tensor;

const WEIGHT_SEED: u64 = 0x5eed;
const INPUT_SEED: u64 = 0x1e9;

fn example(name: &str) -> Graph {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    let source = std::fs::read_to_string(&path).expect("read the example");
    common::random_graph(&source, 1, WEIGHT_SEED, OptLevel::O2).expect("the example compiles")
}

fn random_inputs(graph: &Graph) -> Vec<Tensor> {
    common::random_inputs(graph, INPUT_SEED)
}

/// The CPU always; the GPU when there is an adapter (holding its lock).
fn targets(test: &str) -> (Vec<Target>, Option<MutexGuard<'static, ()>>) {
    let gpu = gpu_present(test);
    let mut targets = vec![Target::Cpu];
    if gpu.is_some() {
        targets.push(Target::Gpu);
    }
    (targets, gpu)
}

fn all_agree(example_name: &str, test: &str) {
    let graph = example(example_name);
    let inputs = random_inputs(&graph);
    let (targets, _gpu) = targets(test);
    let started = Instant::now();
    let report = compare(&graph, &inputs, &targets).expect("compare");
    eprintln!("{report}\n{example_name}: compared in {:.1} s", started.elapsed().as_secs_f64());
    assert!(report.nodes.len() >= 4, "{report}");
    assert!(report.agrees(), "{example_name}: a target disagrees:\n{report}");
}

#[test]
fn resnet18_all_targets_agree() {
    all_agree("resnet18.cnn", "resnet18_all_targets_agree");
}

#[test]
fn inception3a_all_targets_agree() {
    all_agree("inception3a.cnn", "inception3a_all_targets_agree");
}

/// A copy of `graph` with the weight tensor of the conv named `layer` negated, and the
/// conv's name.
fn corrupted(graph: &Graph, layer: &str) -> Graph {
    let mut copy = graph.clone();
    let id = copy
        .node_ids()
        .into_iter()
        .find(|&id| copy.node(id).name == layer && matches!(copy.node(id).op, Op::Conv(_)))
        .unwrap_or_else(|| panic!("no conv `{layer}` in the optimized graph"));
    let param = copy.node(id).params.iter().find(|p| p.role == ParamRole::Weight).expect("a conv weight").name.clone();
    let tensor = copy.weights.tensors.get_mut(&param).expect("the weight is bound");
    for value in &mut tensor.data {
        *value = -*value;
    }
    copy
}

/// A conv in the middle of ResNet-18: negated for `target` only, it must be the first
/// node the report names.
fn corrupted_kernel_is_found(target: Target) {
    let graph = example("resnet18.cnn");
    let inputs = random_inputs(&graph);
    let layer = "layer3.0.conv2";
    let mut others: Vec<(Target, Graph)> = vec![(target, corrupted(&graph, layer))];
    // A healthy target beside it, which must agree everywhere.
    let healthy = if target == Target::Cpu { Target::Reference } else { Target::Cpu };
    others.push((healthy, graph.clone()));
    let started = Instant::now();
    let report = compare_graphs(&graph, &inputs, &others).expect("compare");
    eprintln!("{report}\ncompared in {:.1} s", started.elapsed().as_secs_f64());
    let divergence = report.first_divergence().expect("the corruption is found");
    assert_eq!(divergence.target, target, "{report}");
    assert_eq!(divergence.name, layer, "{report}");
    assert!(report.first_divergence_of(healthy).is_none(), "{report}");
    // Every node before it agrees on the corrupted target.
    assert!(report.nodes[..divergence.node].iter().all(|n| n.errors[0] <= report.tolerance), "{report}");
    assert!(report.to_string().contains(&format!("FIRST DIVERGENCE at node {} `{layer}`", divergence.node)));
}

#[test]
fn corrupted_cpu_kernel_is_found() {
    corrupted_kernel_is_found(Target::Cpu);
}

#[test]
fn corrupted_gpu_kernel_is_found() {
    let Some(_gpu) = gpu_present("corrupted_gpu_kernel_is_found") else { return };
    corrupted_kernel_is_found(Target::Gpu);
}
