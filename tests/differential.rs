//! Differential tests of the passes: the reference interpreter on the IR as written and on
//! the `-O1` IR of the generic pipeline, the `-O2` IR of the CPU's (the generic one and
//! gates fused into 1x1 convs, which runs every generic pass) and the `-O2` IR of the
//! GPU's (fused pooling) gives the same outputs (relative L2 at most 1e-5, the same argmax per row of
//! 2-D outputs), on random weights and inputs, for every example network and every
//! program of `tests/programs`, at batch 1 and 2. Also checks that every optimized graph
//! verifies, that its memory plan replays (no value is overwritten while it is still to
//! be read) and that the arena is no larger than the intermediates.
//!
//! To keep the run near a minute, batch 2 skips `-O1` ([`levels`]) and the largest
//! networks ([`BATCH_2_LIMIT`]); `CNNC_DIFFERENTIAL_FULL=1` runs the whole matrix.

use std::path::Path;
use std::time::Instant;

#[allow(dead_code)]
mod common;
use common::{cnn_files, replay_memory_plan};

use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::interp;
use cnnc::ir::{Graph, Op, Slot, verify};
use cnnc::passes::{self, Capabilities, OptLevel};
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};
use cnnc::weights::{random_normal, random_weights};

/// The largest relative L2 error an optimized graph's output may have.
const TOLERANCE: f64 = 1e-5;

/// The seed of the random weights; inputs use `SEED + 1 + input index`.
const SEED: u64 = 20_240_611;

fn display_name(path: &Path) -> String {
    let parent = path.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
    format!("{parent}/{}", path.file_name().unwrap_or_default().to_string_lossy())
}

/// Builds the program at `batch`.
fn build(path: &Path, batch: usize) -> Result<Graph, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let options = BuildOptions { batch, ..BuildOptions::default() };
    compile_bytes(&bytes, &options).map_err(|diags| format!("does not compile: {diags:?}"))
}

/// Multiply-adds of the convolutions and linear layers: each output value of a weighted
/// layer takes one per weight of its output channel.
fn multiply_adds(graph: &Graph) -> usize {
    graph
        .node_ids()
        .into_iter()
        .map(|id| graph.node(id))
        .filter(|node| matches!(node.op, Op::Conv(_) | Op::Linear { .. }))
        .map(|node| node.shape.iter().product::<usize>() * node.params[0].shape[1..].iter().product::<usize>())
        .sum()
}

/// Whether `CNNC_DIFFERENTIAL_FULL` asks for every level at every batch size.
fn full_matrix() -> bool {
    std::env::var_os("CNNC_DIFFERENTIAL_FULL").is_some()
}

/// Networks above this many multiply-adds at batch 1 (VGG-16, ResNet-34 and -50) run at
/// batch 1 only, unless `CNNC_DIFFERENTIAL_FULL` is set: at batch 2 they would take
/// about a minute together, and batch handling is covered by the smaller networks
/// (ResNet-18, DenseNet-121, GoogLeNet, ...).
const BATCH_2_LIMIT: usize = 3_000_000_000;

/// Random N(0, 1) inputs for every input of the graph, in `graph.inputs` order.
fn random_inputs(graph: &Graph) -> Vec<Tensor> {
    graph.inputs.iter().enumerate().map(|(i, id)| random_normal(&graph.node(*id).shape, SEED + 1 + i as u64)).collect()
}

/// Compares the outputs of an optimized graph with the reference outputs; returns one
/// line per disagreement.
fn compare_outputs(what: &str, graph: &Graph, reference: &[Tensor], optimized: &[Tensor]) -> Vec<String> {
    if reference.len() != optimized.len() {
        return vec![format!("{what}: {} outputs, the unoptimized graph has {}", optimized.len(), reference.len())];
    }
    let mut problems = Vec::new();
    for ((output, expected), actual) in graph.outputs.iter().zip(reference).zip(optimized) {
        if expected.shape != actual.shape {
            problems.push(format!(
                "{what}: output {} has shape {}, expected {}",
                output.name,
                actual.shape_string(),
                expected.shape_string()
            ));
            continue;
        }
        let error = relative_l2(&actual.data, &expected.data);
        let within = error <= TOLERANCE; // false for NaN
        if !within {
            problems.push(format!("{what}: output {} differs, relative L2 {error:.3e} > {TOLERANCE:e}", output.name));
        }
        if expected.shape.len() == 2 && argmax_rows(expected) != argmax_rows(actual) {
            problems.push(format!(
                "{what}: output {} argmax {:?}, expected {:?}",
                output.name,
                argmax_rows(actual),
                argmax_rows(expected)
            ));
        }
    }
    problems
}

/// The pipelines checked at a batch size: optimization level and target capabilities.
/// `-O1` runs a prefix of `-O2`'s pipeline, so at batch 2 only `-O2` is checked (one
/// interpreter run fewer per program) unless `CNNC_DIFFERENTIAL_FULL` is set. The CPU's
/// `-O2` (the generic one plus `fuse_gates`) and the GPU's (plus `fuse_pooling`) are
/// checked at every batch size.
fn levels(batch: usize) -> Vec<(OptLevel, Capabilities)> {
    let mut levels = vec![(OptLevel::O2, Capabilities::CPU), (OptLevel::O2, Capabilities::GPU)];
    if batch == 1 || full_matrix() {
        levels.insert(0, (OptLevel::O1, Capabilities::GENERIC));
    }
    levels
}

/// Checks one program, built at one batch size with weights bound; returns the problems
/// found and, at the CPU's `-O2`, the memory plan's (arena, sum of intermediates) in
/// bytes.
fn check_program(name: &str, original: &Graph, batch: usize) -> (Vec<String>, Option<(usize, usize)>) {
    let inputs = random_inputs(original);
    let reference = match interp::run(original, &original.weights, &inputs) {
        Ok(outputs) => outputs,
        Err(e) => return (vec![format!("{name} batch {batch} -O0: the interpreter failed: {e}")], None),
    };
    let mut problems = Vec::new();
    let mut memory = None;
    for (level, capabilities) in levels(batch) {
        let pipeline = match capabilities {
            Capabilities::GPU => " (GPU pipeline)",
            Capabilities::CPU => " (CPU pipeline)",
            _ => "",
        };
        let what = format!("{name} batch {batch} {level:?}{pipeline}");
        let mut optimized = original.clone();
        if let Err(e) = passes::optimize_for(&mut optimized, level, capabilities) {
            problems.push(format!("{what}: {e}"));
            continue;
        }
        if let Err(e) = verify(&optimized) {
            problems.push(format!("{what}: the optimized graph does not verify:\n{e}"));
            continue;
        }
        if level == OptLevel::O2 {
            if let Err(e) = replay_memory_plan(&optimized) {
                problems.push(format!("{what}: the memory plan does not replay:\n{e}"));
            }
            match &optimized.memory {
                None => problems.push(format!("{what}: no memory plan")),
                Some(plan) => {
                    if plan.arena_bytes > plan.unplanned_bytes {
                        problems.push(format!(
                            "{what}: the arena ({} bytes) is larger than the sum of the intermediates ({} bytes)",
                            plan.arena_bytes, plan.unplanned_bytes
                        ));
                    }
                    if capabilities == Capabilities::CPU {
                        memory = Some((plan.arena_bytes, plan.unplanned_bytes));
                    }
                }
            }
        }
        match interp::run(&optimized, &optimized.weights, &inputs) {
            Ok(outputs) => problems.extend(compare_outputs(&what, original, &reference, &outputs)),
            Err(e) => problems.push(format!("{what}: the interpreter failed: {e}")),
        }
    }
    (problems, memory)
}

#[test]
fn optimized_graphs_compute_what_the_source_says() {
    let started = Instant::now();
    let mut files = cnn_files("examples");
    files.extend(cnn_files("tests/programs"));
    assert!(files.len() > 20, "expected the examples and tests/programs, found {files:?}");
    let mut problems = Vec::new();
    for path in &files {
        let name = display_name(path);
        let at_batch_1 = match build(path, 1) {
            Ok(graph) => graph,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        // Weights do not depend on the batch size.
        let weights = random_weights(&at_batch_1, SEED);
        let batches = if multiply_adds(&at_batch_1) <= BATCH_2_LIMIT || full_matrix() { 2 } else { 1 };
        for batch in 1..=batches {
            let file_started = Instant::now();
            let mut graph = match build(path, batch) {
                Ok(graph) => graph,
                Err(e) => {
                    problems.push(format!("{name} batch {batch}: {e}"));
                    continue;
                }
            };
            graph.weights = weights.clone();
            let (found, memory) = check_program(&name, &graph, batch);
            let memory = match memory {
                Some((arena, sum)) => format!(
                    "arena {arena:>11} B vs {sum:>11} B summed ({:5.1}%)",
                    100.0 * arena as f64 / sum.max(1) as f64
                ),
                None => "no memory plan".into(),
            };
            println!(
                "{name:<42} batch {batch}: {memory}, {:6.2} s{}",
                file_started.elapsed().as_secs_f64(),
                if found.is_empty() { "" } else { "  FAILED" }
            );
            problems.extend(found);
        }
    }
    println!("{} programs in {:.1} s", files.len(), started.elapsed().as_secs_f64());
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn resnet18_memory_plan_reuses_space() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/resnet18.cnn");
    let mut graph = compile_bytes(&std::fs::read(path).unwrap(), &BuildOptions::default()).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    verify(&graph).unwrap();
    let plan = graph.memory.as_ref().expect("-O2 plans memory");
    assert!(
        plan.arena_bytes < plan.unplanned_bytes,
        "arena {} bytes, intermediates {} bytes",
        plan.arena_bytes,
        plan.unplanned_bytes
    );
}

/// A copy of the graph, planned at `-O2`, whose second conv's slot is moved onto its
/// input's slot: the conv would overwrite the input it is still reading.
fn conv_planned_over_its_input() -> Graph {
    let source = "network n { input x: [2, 6, 6]; a: conv(4, 3, pad=1); b: conv(4, 3, pad=1); c: conv(4, 3, pad=1) }";
    let mut graph = cnnc::front::compile_source(source, &BuildOptions::default()).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let by_name = |name: &str| graph.node_ids().into_iter().find(|id| graph.node(*id).name == name).unwrap();
    let (a, b) = (by_name("a"), by_name("b"));
    let plan = graph.memory.as_mut().unwrap();
    let slot_a: Slot = plan.slots[&a];
    plan.slots.insert(b, slot_a);
    graph
}

#[test]
fn memory_plan_replay_catches_a_conv_writing_over_its_input() {
    let error = replay_memory_plan(&conv_planned_over_its_input()).unwrap_err();
    assert!(error.contains("b (conv) writes over the bytes of its operand a"), "{error}");
}

#[test]
fn verify_rejects_a_conv_planned_over_its_input() {
    assert!(verify(&conv_planned_over_its_input()).is_err());
}

/// A fire module (SqueezeNet) before a conv: the two expand convs are computed in their
/// channel slices of the concat, which then has no kernel.
const FIRE: &str = "network fire {
    input x: [8, 6, 6]
    s = squeeze: conv(4, 1) |> relu
    e1 = s |> expand1x1: conv(5, 1) |> relu
    e3 = s |> expand3x3: conv(3, 3, pad=1) |> relu
    concat(e1, e3)
    head: conv(2, 1)
}";

fn planned(source: &str, batch: usize) -> Graph {
    let options = BuildOptions { batch, ..BuildOptions::default() };
    let mut graph = cnnc::front::compile_source(source, &options).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    graph
}

fn node_named(graph: &Graph, name: &str) -> cnnc::ir::NodeId {
    graph.node_ids().into_iter().find(|id| graph.node(*id).name == name).unwrap()
}

#[test]
fn concat_operands_are_computed_in_their_slices() {
    let graph = planned(FIRE, 1);
    verify(&graph).unwrap();
    replay_memory_plan(&graph).unwrap();
    let plan = graph.memory.as_ref().unwrap();
    let concat = graph.node_ids().into_iter().find(|id| matches!(graph.node(*id).op, Op::Concat)).unwrap();
    let (e1, e3) = (node_named(&graph, "expand1x1"), node_named(&graph, "expand3x3"));
    assert_eq!(plan.in_concat.get(&e1), Some(&concat));
    assert_eq!(plan.in_concat.get(&e3), Some(&concat));
    // expand1x1 holds channels 0..5 of the concat, expand3x3 channels 5..8, of 6x6 planes.
    assert_eq!(plan.slots[&e1].offset, plan.slots[&concat].offset);
    assert_eq!(plan.slots[&e3].offset, plan.slots[&concat].offset + 4 * 5 * 36);
    assert!(cnnc::passes::plan_memory::concat_is_free(&graph, concat));
    assert_eq!(cnnc::summary::optimized_stats(&graph, 0).eliminated_concats, 1);
}

#[test]
fn concats_at_batch_2_copy() {
    // At batch 2 each channel slice is two pieces, one per image: the concat copies.
    let graph = planned(FIRE, 2);
    replay_memory_plan(&graph).unwrap();
    assert!(graph.memory.as_ref().unwrap().in_concat.is_empty());
}

#[test]
fn a_concat_operand_off_its_slice_is_caught() {
    let mut graph = planned(FIRE, 1);
    let e3 = node_named(&graph, "expand3x3");
    graph.memory.as_mut().unwrap().slots.get_mut(&e3).unwrap().offset += 4;
    let error = verify(&graph).unwrap_err();
    assert!(error.contains("expand3x3 is not placed at its channel slice"), "{error}");
    let error = replay_memory_plan(&graph).unwrap_err();
    assert!(error.contains("writes over the bytes of its operand expand3x3"), "{error}");
}
