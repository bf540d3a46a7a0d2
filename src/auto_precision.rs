//! `--precision auto --max-error E`: per conv and linear layer, the fastest precision
//! (f32, bf16, int8) that keeps the whole network's error on calibration inputs within
//! a budget the user states, chosen from measurement.
//!
//! The choice, in two steps that can be run apart:
//!
//! 1. [`measure_times`]: the graph is compiled for the cpu target three times, every
//!    layer that can take it in f32, in bf16 and in int8 (from the calibration), and
//!    each conv and linear layer's kernel is timed by the profiler (`bench --profile`'s
//!    timings), in interleaved rounds (one run of each of the three models in turn); the
//!    medians are kept. A precision the cpu level cannot compile is no candidate (its
//!    reason is kept for the report).
//! 2. [`choose`]: for each layer, the reduced precisions that are faster than its f32
//!    kernel by at least [`MIN_SAVING`] of its time, by the medians and in at least
//!    [`MIN_FASTER_ROUNDS`] of the paired rounds (on a shared machine the medians alone
//!    let noise pass a kernel that is no faster), are its candidates. Each candidate's error is measured
//!    with that layer alone reduced ("error alone"); candidates alone over the budget are
//!    dropped. The rest are taken greedily, in order of milliseconds saved per unit of
//!    error (no error first; ties by the time saved, then by layer order, bf16 before
//!    int8): each one that makes its layer faster than its current precision is tried
//!    on the whole network with every choice kept so far, and kept when the network's
//!    measured error stays within the budget. The final assignment's error is thus a
//!    measurement, at most the budget by construction. The choice is deterministic given
//!    the same timings ([`Timings`] can be built by hand, which the tests do).
//!
//! The error is measured on the cpu target (which the tests hold to the interpreter's
//! exact simulation of bf16 and int8 within 1e-6 relative L2), on every calibration
//! input, against the same graph in f32 on the cpu target: with [`Metric::L2`], the
//! relative L2 error of all the outputs together; with [`Metric::Top1`], the fraction
//! of inputs whose argmax (of a one-output classifier) changes.
//!
//! A budget of 0 keeps every layer in f32 unless reducing it changes no output at all.
//! Nothing here turns reduced precision on by itself: the default everywhere is f32.

use std::collections::BTreeMap;
use std::fmt;

use crate::backend::clif::{CodegenOptions, CpuLevel};
use crate::calibrate::Calibration;
use crate::exec::median;
use crate::ir::{Graph, NodeId};
use crate::precision::Precision;
use crate::tensor::{Tensor, argmax_rows, relative_l2};

/// A reduced precision is a candidate for a layer only when its kernel is faster than
/// the f32 kernel by at least this fraction of the f32 time.
pub const MIN_SAVING: f64 = 0.05;

/// How the error of an assignment is measured against f32 on the calibration inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// The relative L2 error of the network's outputs (all of them, all inputs).
    #[default]
    L2,
    /// The fraction of inputs whose top-1 class changes (a network with one output of
    /// class scores, `[N, K]` or `[N, K, 1, 1]`).
    Top1,
}

impl Metric {
    /// `l2` or `top1`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::Top1 => "top1",
        }
    }
}

/// The three precisions a layer may take, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    F32,
    Bf16,
    Int8,
}

impl Kind {
    /// Every kind, f32 first.
    pub const ALL: [Kind; 3] = [Kind::F32, Kind::Bf16, Kind::Int8];

    /// `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::F32 => "f32",
            Kind::Bf16 => "bf16",
            Kind::Int8 => "int8",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What [`choose`] and [`measure_times`] need besides the graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The cpu level the code is compiled for (default: the host's).
    pub cpu: Option<CpuLevel>,
    /// Threads of each run (default: [`crate::exec::threads_for`]'s choice).
    pub threads: Option<usize>,
    /// The error allowed.
    pub max_error: f64,
    /// How the error is measured.
    pub metric: Metric,
}

/// Each layer's kernel time in each precision, from [`measure_times`] (or made by hand).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Per conv or linear layer (by IR name): milliseconds in f32, bf16 and int8
    /// ([`Kind`] order); `None` where the layer cannot run in that precision.
    pub layers: BTreeMap<String, [Option<f64>; 3]>,
    /// The whole network's kernels, summed, with every layer in each precision.
    pub totals: [Option<f64>; 3],
    /// Why a precision could not be timed at all (it does not compile for the cpu level).
    pub unavailable: Vec<(Kind, String)>,
    /// The layers and reduced precisions whose kernel was not faster than f32 in enough
    /// of the paired rounds ([`MIN_FASTER_ROUNDS`]), whatever the medians say: no
    /// candidates.
    pub unsteady: Vec<(String, Kind)>,
}

/// One layer's row in the report.
#[derive(Clone, Debug)]
pub struct LayerChoice {
    /// The layer's IR name.
    pub name: String,
    /// Its op (`conv`, `linear`).
    pub op: String,
    /// The precision chosen.
    pub kind: Kind,
    /// Its kernel's milliseconds in each precision (`None`: cannot run it).
    pub times_ms: [Option<f64>; 3],
    /// The network's error with this layer alone in bf16 or int8 (`None`: not measured,
    /// because that precision is not faster for this layer or cannot run it).
    pub alone_error: [Option<f64>; 3],
    /// Whether that precision was found not faster than f32 for this layer (by the
    /// medians or the paired rounds).
    pub not_faster: [bool; 3],
}

impl LayerChoice {
    /// The kernel's time in f32 and in the precision chosen.
    pub fn f32_and_chosen_ms(&self) -> (Option<f64>, Option<f64>) {
        (self.times_ms[0], self.times_ms[self.kind.index()])
    }
}

/// The outcome of [`choose`]: a precision per conv and linear layer and the figures
/// behind it.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The network's name.
    pub network: String,
    /// One row per conv and linear layer, in topological order.
    pub layers: Vec<LayerChoice>,
    /// The int8 quantization of each layer that can take int8 (from the calibration).
    int8: BTreeMap<String, Precision>,
    /// The budget and the metric.
    pub max_error: f64,
    pub metric: Metric,
    /// The error of the final assignment, as measured (0 when every layer is f32).
    pub error: f64,
    /// Calibration inputs (items) the error was measured on.
    pub items: usize,
    /// Assignments measured on the whole network (layers alone and greedy steps).
    pub trials: usize,
    /// The network's kernels in f32, summed, and the estimate for the assignment (f32
    /// minus the time each reduced layer saves).
    pub f32_total_ms: Option<f64>,
    pub chosen_total_ms: Option<f64>,
    /// Precisions that could not be timed, with the reason.
    pub unavailable: Vec<(Kind, String)>,
}

impl Choice {
    /// How many layers took each precision ([`Kind`] order).
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for layer in &self.layers {
            counts[layer.kind.index()] += 1;
        }
        counts
    }

    /// Sets the chosen precision on every conv and linear layer of `graph` (the same
    /// network, optimized at the same level, at any batch); every other layer keeps its
    /// precision. A layer of the choice that the graph does not have is an error.
    pub fn apply(&self, graph: &mut Graph) -> Result<(), String> {
        let assignment: BTreeMap<&str, Kind> = self.layers.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        apply_kinds(graph, &assignment, &self.int8)
    }
}

/// Sets each named layer's precision; `int8` holds the calibrated quantization of the
/// layers that can take it.
fn apply_kinds(
    graph: &mut Graph,
    assignment: &BTreeMap<&str, Kind>,
    int8: &BTreeMap<String, Precision>,
) -> Result<(), String> {
    let mut found = 0;
    for id in graph.node_ids() {
        let name = graph.node(id).name.clone();
        let Some(&kind) = assignment.get(name.as_str()) else { continue };
        found += 1;
        graph.node_mut(id).precision = match kind {
            Kind::F32 => Precision::F32,
            Kind::Bf16 => Precision::Bf16,
            Kind::Int8 => *int8.get(&name).ok_or_else(|| format!("layer `{name}` has no int8 calibration"))?,
        };
    }
    if found != assignment.len() {
        let missing: Vec<&str> = assignment
            .keys()
            .copied()
            .filter(|name| !graph.node_ids().into_iter().any(|id| graph.node(id).name == *name))
            .collect();
        return Err(format!(
            "the precision choice is for another graph: no layer(s) {}",
            missing.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The conv and linear layers of a graph, in topological order.
pub fn layers(graph: &Graph) -> Vec<NodeId> {
    graph
        .topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&id| Precision::Bf16.applies_to(&graph.node(id).op))
        .collect()
}

/// Each int8 layer's quantization from the calibration (checked against the graph:
/// [`Calibration::assign`]'s errors).
fn int8_precisions(graph: &Graph, calibration: &Calibration) -> Result<BTreeMap<String, Precision>, String> {
    let mut quantized = graph.clone();
    calibration.assign(&mut quantized)?;
    Ok(quantized
        .node_ids()
        .into_iter()
        .map(|id| quantized.node(id))
        .filter(|n| n.precision.is_int8())
        .map(|n| (n.name.clone(), n.precision))
        .collect())
}

/// The graph with every layer that can take `kind` in it.
fn uniform(graph: &Graph, kind: Kind, calibration: &Calibration) -> Result<Graph, String> {
    let mut graph = graph.clone();
    match kind {
        Kind::F32 => {
            crate::precision::assign(&mut graph, Precision::F32);
        }
        Kind::Bf16 => {
            crate::precision::assign(&mut graph, Precision::Bf16);
        }
        Kind::Int8 => {
            crate::precision::assign(&mut graph, Precision::F32);
            calibration.assign(&mut graph)?;
        }
    }
    Ok(graph)
}

/// Profiled rounds: two untimed runs of each model, then rounds of one profiled run of
/// each (f32, bf16, int8, one after another, so that a change in the machine's load
/// falls on all three alike), at least 9 and until 0.5 s have passed, at most 60.
const WARMUP_RUNS: usize = 2;
const MIN_ROUNDS: usize = 9;
const MAX_ROUNDS: usize = 60;
const MIN_SECONDS: f64 = 0.5;

/// A reduced precision counts as faster for a layer only when its kernel beat the f32
/// kernel by [`MIN_SAVING`] in at least this fraction of the rounds (a paired test: on
/// a shared machine, medians alone let noise pick a kernel that is not faster).
pub const MIN_FASTER_ROUNDS: f64 = 0.8;

/// Times every conv and linear layer of `graph` (optimized for the cpu target, weights
/// bound, at the batch it will run at) in f32, bf16 and int8 on the cpu target: with
/// every layer in one precision, each layer's kernel over interleaved profiled rounds on
/// random inputs; the medians are kept, and a reduced precision whose kernel was not
/// faster by [`MIN_SAVING`] in [`MIN_FASTER_ROUNDS`] of the rounds is marked unsteady
/// ([`Timings::unsteady`]: no candidate).
pub fn measure_times(graph: &Graph, calibration: &Calibration, options: &Options) -> Result<Timings, String> {
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &i)| crate::weights::random_normal(&graph.node(i).shape, 1 + k as u64))
        .collect();
    let exec_options = crate::exec::ExecOptions { threads: options.threads, cpu: options.cpu, ..Default::default() };
    let threads = crate::exec::threads_for(graph, &exec_options);
    let names: Vec<(String, String)> = layers(graph)
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            (node.name.clone(), format!("{} ({})", node.name, node.op.mnemonic()))
        })
        .collect();
    let mut timings = Timings::default();
    // Each precision's model, and the kernel index of each layer that runs in it.
    let mut models: Vec<(Kind, crate::backend::clif::JitModel, Vec<Option<usize>>)> = Vec::new();
    for kind in Kind::ALL {
        let uniform = uniform(graph, kind, calibration)?;
        let codegen = CodegenOptions { profile: true, cpu: options.cpu, ..Default::default() };
        let mut model = match crate::backend::clif::compile_jit_with(&uniform, &codegen) {
            Ok(model) => model,
            // f32 must compile; a reduced precision the cpu level cannot run is no candidate.
            Err(e) if kind != Kind::F32 => {
                timings.unavailable.push((kind, e));
                continue;
            }
            Err(e) => return Err(e),
        };
        model.set_threads(threads);
        for _ in 0..WARMUP_RUNS {
            model.run(&inputs)?;
        }
        let kernels: Vec<Option<usize>> = names
            .iter()
            .map(|(name, kernel)| {
                let node = uniform.node_ids().into_iter().map(|id| uniform.node(id)).find(|n| n.name == *name)?;
                if kind_of(node.precision) != kind {
                    return None;
                }
                model.kernels().iter().position(|k| k.name == *kernel)
            })
            .collect();
        models.push((kind, model, kernels));
    }
    // samples[model][layer][round], and each model's total per round.
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); names.len()]; models.len()];
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && started.elapsed().as_secs_f64() < MIN_SECONDS) {
        for (m, (_, model, kernels)) in models.iter().enumerate() {
            let times = model.profile(&inputs)?;
            totals[m].push(times.iter().map(|(_, s)| s * 1e3).sum());
            for (layer, index) in kernels.iter().enumerate() {
                if let Some(&(_, seconds)) = index.and_then(|i| times.get(i)) {
                    samples[m][layer].push(seconds * 1e3);
                }
            }
        }
        rounds += 1;
    }
    for (m, (kind, _, _)) in models.iter().enumerate() {
        timings.totals[kind.index()] = Some(median(&mut totals[m].clone()));
    }
    for (layer, (name, _)) in names.iter().enumerate() {
        let mut times = [None; 3];
        for (m, (kind, _, _)) in models.iter().enumerate() {
            let s = &samples[m][layer];
            if s.len() == rounds {
                times[kind.index()] = Some(median(&mut s.clone()));
            }
        }
        // The paired test, against the f32 model (always the first).
        for (m, (kind, _, _)) in models.iter().enumerate().skip(1) {
            let (reduced, f32s) = (&samples[m][layer], &samples[0][layer]);
            if reduced.len() != rounds || f32s.len() != rounds {
                continue;
            }
            let faster = reduced.iter().zip(f32s).filter(|(r, f)| **r <= **f * (1.0 - MIN_SAVING)).count();
            if (faster as f64) < MIN_FASTER_ROUNDS * rounds as f64 {
                timings.unsteady.push((name.clone(), *kind));
            }
        }
        timings.layers.insert(name.clone(), times);
    }
    Ok(timings)
}

fn kind_of(precision: Precision) -> Kind {
    match precision {
        Precision::F32 => Kind::F32,
        Precision::Bf16 => Kind::Bf16,
        Precision::Int8(_) => Kind::Int8,
    }
}

/// Runs assignments of one graph on the calibration inputs and measures their error
/// against f32.
struct ErrorMeter<'a> {
    graph: &'a Graph,
    runs: &'a [Vec<Tensor>],
    int8: &'a BTreeMap<String, Precision>,
    exec: crate::exec::ExecOptions,
    metric: Metric,
    reference: Vec<Vec<Tensor>>,
    trials: usize,
}

impl<'a> ErrorMeter<'a> {
    fn new(
        graph: &'a Graph,
        runs: &'a [Vec<Tensor>],
        int8: &'a BTreeMap<String, Precision>,
        options: &Options,
    ) -> Result<ErrorMeter<'a>, String> {
        if runs.is_empty() {
            return Err("no calibration inputs to measure the error on".into());
        }
        if options.metric == Metric::Top1 {
            let classifier = graph.outputs.len() == 1
                && graph.outputs.first().is_some_and(|o| {
                    let shape = &graph.node(o.node).shape;
                    shape.len() == 2 || shape.len() > 2 && shape[2..].iter().all(|&d| d == 1)
                });
            if !classifier {
                return Err(
                    "--budget-metric top1 needs a network with one output of class scores ([N, K]); use l2".into()
                );
            }
        }
        let exec = crate::exec::ExecOptions { threads: options.threads, cpu: options.cpu, ..Default::default() };
        let mut meter =
            ErrorMeter { graph, runs, int8, exec, metric: options.metric, reference: Vec::new(), trials: 0 };
        let mut f32_graph = graph.clone();
        crate::precision::assign(&mut f32_graph, Precision::F32);
        meter.reference = meter.outputs(f32_graph)?;
        Ok(meter)
    }

    fn outputs(&self, graph: Graph) -> Result<Vec<Vec<Tensor>>, String> {
        let executor = crate::exec::compile_with(graph, crate::exec::Target::Cpu, &self.exec)?;
        self.runs.iter().map(|run| executor.run(run)).collect()
    }

    /// The error of an assignment (every layer not named stays f32).
    fn error(&mut self, assignment: &BTreeMap<&str, Kind>) -> Result<f64, String> {
        if assignment.values().all(|&k| k == Kind::F32) {
            return Ok(0.0);
        }
        let mut graph = self.graph.clone();
        crate::precision::assign(&mut graph, Precision::F32);
        apply_kinds(&mut graph, assignment, self.int8)?;
        self.trials += 1;
        let outputs = self.outputs(graph)?;
        Ok(measure(self.metric, &outputs, &self.reference))
    }

    fn items(&self) -> usize {
        self.runs.iter().map(|run| run.first().and_then(|t| t.shape.first().copied()).unwrap_or(1)).sum()
    }
}

/// The items of a batch of inputs (`[N, ...]` or one item without the batch
/// dimension, conformed to the one input of `graph`, a batch-1 graph) as batch-1 runs.
pub fn runs_of_items(graph: &Graph, batch: Tensor) -> Result<Vec<Vec<Tensor>>, String> {
    let [input] = graph.inputs[..] else {
        return Err(format!("the network has {} inputs; this takes networks with one", graph.inputs.len()));
    };
    let chw = graph.node(input).shape[1..].to_vec();
    let batch = crate::io::conform_input(batch, &chw).map_err(|e| e.to_string())?;
    let item: usize = chw.iter().product();
    Ok(batch
        .data
        .chunks(item.max(1))
        .map(|data| {
            let mut shape = vec![1];
            shape.extend_from_slice(&chw);
            vec![Tensor { shape, data: data.to_vec() }]
        })
        .collect())
}

/// The error of `outputs` against `reference` (each one run's outputs).
pub fn measure(metric: Metric, outputs: &[Vec<Tensor>], reference: &[Vec<Tensor>]) -> f64 {
    match metric {
        Metric::L2 => {
            let flat = |runs: &[Vec<Tensor>]| -> Vec<f32> {
                runs.iter().flat_map(|run| run.iter().flat_map(|t| t.data.iter().copied())).collect()
            };
            relative_l2(&flat(outputs), &flat(reference))
        }
        Metric::Top1 => {
            let (mut changed, mut items) = (0usize, 0usize);
            for (run, reference) in outputs.iter().zip(reference) {
                let (a, b) = (argmax_rows(&run[0]), argmax_rows(&reference[0]));
                // A NaN output has no class: it counts as changed.
                let nan_rows = |t: &Tensor| {
                    let k = t.len() / a.len().max(1);
                    (0..a.len()).map(|i| t.data[i * k..(i + 1) * k].iter().any(|v| v.is_nan())).collect::<Vec<_>>()
                };
                let nan = nan_rows(&run[0]);
                changed += a.iter().zip(&b).zip(&nan).filter(|((x, y), n)| x != y || **n).count();
                items += a.len();
            }
            changed as f64 / items.max(1) as f64
        }
    }
}

/// Chooses a precision per conv and linear layer of `graph` (optimized with the
/// generic pipeline, weights bound, at the batch of `runs`) within `options.max_error`,
/// from `timings` (see the module documentation). `runs` are the calibration inputs,
/// each one run's inputs in `graph.inputs` order.
pub fn choose(
    graph: &Graph,
    calibration: &Calibration,
    runs: &[Vec<Tensor>],
    timings: &Timings,
    options: &Options,
) -> Result<Choice, String> {
    let budget = options.max_error;
    if !(budget.is_finite() && budget >= 0.0) {
        return Err(format!("--max-error {budget}: expected a number at least 0"));
    }
    if options.metric == Metric::Top1 && budget > 1.0 {
        return Err(format!("--max-error {budget}: with --budget-metric top1 it is a fraction of inputs, 0 to 1"));
    }
    let int8 = int8_precisions(graph, calibration)?;
    let mut meter = ErrorMeter::new(graph, runs, &int8, options)?;
    let mut rows: Vec<LayerChoice> = layers(graph)
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            let mut times = timings.layers.get(&node.name).copied().unwrap_or([None; 3]);
            if !int8.contains_key(&node.name) {
                times[Kind::Int8.index()] = None;
            }
            LayerChoice {
                name: node.name.clone(),
                op: node.op.mnemonic().to_string(),
                kind: Kind::F32,
                times_ms: times,
                alone_error: [None; 3],
                not_faster: [false; 3],
            }
        })
        .collect();
    // Each faster reduced precision of each layer, with its error alone.
    struct Candidate {
        layer: usize,
        kind: Kind,
        saving: f64,
        error: f64,
    }
    let mut candidates = Vec::new();
    for (index, row) in rows.iter_mut().enumerate() {
        let Some(f32_ms) = row.times_ms[0] else { continue };
        for kind in [Kind::Bf16, Kind::Int8] {
            let Some(ms) = row.times_ms[kind.index()] else { continue };
            if ms > f32_ms * (1.0 - MIN_SAVING) || timings.unsteady.iter().any(|(n, k)| *n == row.name && *k == kind) {
                row.not_faster[kind.index()] = true;
                continue;
            }
            let alone = BTreeMap::from([(row.name.as_str(), kind)]);
            let error = meter.error(&alone)?;
            row.alone_error[kind.index()] = Some(error);
            if error <= budget {
                candidates.push(Candidate { layer: index, kind, saving: f32_ms - ms, error });
            }
        }
    }
    let ratio = |c: &Candidate| if c.error > 0.0 { c.saving / c.error } else { f64::INFINITY };
    candidates.sort_by(|a, b| {
        ratio(b)
            .total_cmp(&ratio(a))
            .then(b.saving.total_cmp(&a.saving))
            .then(a.layer.cmp(&b.layer))
            .then(a.kind.cmp(&b.kind))
    });
    let mut kinds: Vec<Kind> = vec![Kind::F32; rows.len()];
    let mut error = 0.0;
    let time = |layer: usize, kind: Kind| rows[layer].times_ms[kind.index()].unwrap_or(f64::INFINITY);
    for candidate in &candidates {
        let current = kinds[candidate.layer];
        if time(candidate.layer, candidate.kind) >= time(candidate.layer, current) {
            continue;
        }
        let mut trial = kinds.clone();
        trial[candidate.layer] = candidate.kind;
        let assignment: BTreeMap<&str, Kind> =
            rows.iter().zip(&trial).filter(|(_, k)| **k != Kind::F32).map(|(r, &k)| (r.name.as_str(), k)).collect();
        // With one layer reduced, its error alone is the network's.
        let trial_error = if assignment.len() == 1 { candidate.error } else { meter.error(&assignment)? };
        if trial_error <= budget {
            kinds = trial;
            error = trial_error;
        }
    }
    for (row, &kind) in rows.iter_mut().zip(&kinds) {
        row.kind = kind;
    }
    let f32_total_ms = timings.totals[0];
    let saved: f64 = rows
        .iter()
        .filter(|r| r.kind != Kind::F32)
        .map(|r| r.times_ms[0].unwrap_or(0.0) - r.times_ms[r.kind.index()].unwrap_or(0.0))
        .sum();
    let (items, trials) = (meter.items(), meter.trials);
    drop(meter);
    Ok(Choice {
        network: graph.name.clone(),
        layers: rows,
        int8,
        max_error: budget,
        metric: options.metric,
        error,
        items,
        trials,
        f32_total_ms,
        chosen_total_ms: f32_total_ms.map(|t| t - saved),
        unavailable: timings.unavailable.clone(),
    })
}

impl fmt::Display for Choice {
    /// The per-layer report, in the style of `cnnc bench --profile`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [f32s, bf16s, int8s] = self.counts();
        writeln!(
            f,
            "{}: --precision auto, {} error at most {:e} on {} calibration item{}: {f32s} f32, {bf16s} bf16, {int8s} int8",
            self.network,
            self.metric.name(),
            self.max_error,
            self.items,
            if self.items == 1 { "" } else { "s" }
        )?;
        let elide = crate::summary::elide;
        let width = self.layers.iter().map(|l| elide(&l.name).chars().count()).max().unwrap_or(5).max(5);
        let ms = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.3}"));
        // The error alone where measured; otherwise why not: slower, or cannot run.
        let err = |l: &LayerChoice, kind: Kind| match l.alone_error[kind.index()] {
            Some(e) => format!("{e:.2e}"),
            None if l.not_faster[kind.index()] => "not faster".to_string(),
            None => "n/a".to_string(),
        };
        writeln!(
            f,
            "  {:<width$}  {:<6}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
            "layer", "op", "precision", "f32 ms", "bf16 ms", "int8 ms", "chosen ms", "bf16 err", "int8 err"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "  {:<width$}  {:<6}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
                elide(&l.name),
                l.op,
                l.kind.name(),
                ms(l.times_ms[0]),
                ms(l.times_ms[1]),
                ms(l.times_ms[2]),
                ms(l.f32_and_chosen_ms().1),
                err(l, Kind::Bf16),
                err(l, Kind::Int8),
            )?;
        }
        writeln!(
            f,
            "  error {:.3e} measured ({} metric, budget {:e}); kernels {} ms in f32 -> {} ms estimated; {} assignment{} measured",
            self.error,
            self.metric.name(),
            self.max_error,
            ms(self.f32_total_ms),
            ms(self.chosen_total_ms),
            self.trials,
            if self.trials == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "  (err: the network's error with that layer alone reduced, measured where that precision's kernel is at least \
             {}% faster than f32's, by the medians and in {}% of the interleaved runs; not faster: it is not)",
            (MIN_SAVING * 100.0) as u32,
            (MIN_FASTER_ROUNDS * 100.0) as u32
        )?;
        for (kind, reason) in &self.unavailable {
            writeln!(f, "  {} is not available on this cpu level: {reason}", kind.name())?;
        }
        Ok(())
    }
}
