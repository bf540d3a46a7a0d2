//! The IR of every example after each pass of the generic `-O2` pipeline, as insta
//! snapshots (`pass_snapshots__{pass}@{example}.snap`, plus `source` for the IR as
//! written; the `plan_memory` snapshot lists the memory plan under the IR), and after the
//! GPU pipeline's own pass (`pass_snapshots__gpu_fuse_pooling@{example}.snap`); and
//! idempotence on both pipelines: each pass, run again right after it first ran in the
//! pipeline, reports no change and changes nothing.

use std::collections::HashMap;
#[allow(dead_code)]
mod common;
use common::cnn_files;
use std::path::Path;

use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::ir::print::print_memory_plan;
use cnnc::ir::{Graph, print};
use cnnc::passes::{self, Capabilities, OptLevel};
use cnnc::weights::random_weights;

fn compile(path: &Path) -> Graph {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    compile_bytes(&bytes, &BuildOptions::default()).unwrap_or_else(|d| panic!("{}: {d:?}", path.display()))
}

/// The IR text, followed by the memory plan when there is one.
fn print_with_memory_plan(graph: &Graph) -> String {
    print(graph) + &print_memory_plan(graph)
}

#[test]
fn ir_after_each_pass() {
    insta::glob!("../examples", "*.cnn", |path| {
        let mut graph = compile(path);
        let mut snapshots = vec![("source".to_string(), print(&graph))];
        // A pass that runs twice in the pipeline gets a numbered second snapshot.
        let mut runs: HashMap<String, usize> = HashMap::new();
        passes::run_pipeline(&mut graph, &passes::pipeline(OptLevel::O2), &mut |name, graph| {
            let count = runs.entry(name.to_string()).or_default();
            *count += 1;
            let snapshot_name = if *count == 1 { name.to_string() } else { format!("{name}_{count}") };
            snapshots.push((snapshot_name, print_with_memory_plan(graph)));
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (name, text) in snapshots {
            insta::assert_snapshot!(name, text);
        }
    });
}

#[test]
fn ir_after_fuse_pooling_on_the_gpu_pipeline() {
    insta::glob!("../examples", "*.cnn", |path| {
        let mut graph = compile(path);
        let mut pipeline = passes::pipeline_for(OptLevel::O2, Capabilities::GPU);
        let position = pipeline.iter().position(|p| p.name == "fuse_pooling").expect("the GPU pipeline pools");
        pipeline.truncate(position + 1);
        passes::run_pipeline(&mut graph, &pipeline, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        insta::assert_snapshot!("gpu_fuse_pooling", print(&graph));
    });
}

/// Runs the `-O2` pipeline for `capabilities` on the program with random weights and,
/// right after each pass, runs that pass again on a copy; returns what the second run
/// changed.
fn second_runs_that_change_something(path: &Path, capabilities: Capabilities) -> Vec<String> {
    let mut graph = compile(path);
    graph.weights = random_weights(&graph, 7);
    let pipeline = passes::pipeline_for(OptLevel::O2, capabilities);
    let mut problems = Vec::new();
    let result = passes::run_pipeline(&mut graph, &pipeline, &mut |name, graph| {
        let pass = pipeline.iter().find(|p| p.name == name).expect("the callback names a pipeline pass");
        let mut again = graph.clone();
        let what = format!("{} ({capabilities:?}): {name}", path.display());
        if (pass.run)(&mut again) {
            problems.push(format!("{what}: a second run reports a change"));
        }
        let (before, after) = (print_with_memory_plan(graph), print_with_memory_plan(&again));
        if before != after {
            problems.push(format!("{what}: a second run changes the IR from\n{before}to\n{after}"));
        }
        if graph.weights.tensors != again.weights.tensors {
            problems.push(format!("{what}: a second run changes the weights"));
        }
    });
    if let Err(e) = result {
        problems.push(format!("{}: {e}", path.display()));
    }
    problems
}

#[test]
fn every_pass_is_idempotent_right_after_it_runs() {
    let mut files = cnn_files("examples");
    files.extend(cnn_files("tests/programs"));
    let problems: Vec<String> = files
        .iter()
        .flat_map(|path| [Capabilities::GENERIC, Capabilities::GPU].map(|c| second_runs_that_change_something(path, c)))
        .flatten()
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
