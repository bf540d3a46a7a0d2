//! Cross-target comparison, layer by layer: the reference interpreter, the CPU backend
//! and the GPU backend run the same optimized graph, and every node's value is compared.
//!
//! The interpreter gives every node's value through [`crate::interp::run_traced`]. The
//! backends keep only outputs, so each compiles a copy of the graph whose outputs are
//! every node (outputs live outside the arena, so no value is overwritten); the copy's
//! memory plan is made again. The report lists, in topological order, each node's
//! relative L2 error per target against the reference, and the first node where a
//! target exceeds the tolerance.

use std::collections::HashMap;
use std::fmt;

use crate::exec::Target;
use crate::ir::{Graph, NodeId, Op, Output};
use crate::tensor::{Tensor, relative_l2};

/// The relative L2 error beyond which a target disagrees with the reference.
pub const TOLERANCE: f64 = 1e-4;

/// One node of the comparison.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    /// Relative L2 error against the reference, per compared target (in
    /// [`CompareReport::targets`] order).
    pub errors: Vec<f64>,
}

/// The first node where a target disagrees with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub target: Target,
    /// Index into [`CompareReport::nodes`].
    pub node: usize,
    pub name: String,
    pub error: f64,
}

/// Every node's error per target, in topological order.
#[derive(Clone, Debug)]
pub struct CompareReport {
    pub network: String,
    /// The targets compared with the reference (the reference itself excluded).
    pub targets: Vec<Target>,
    pub nodes: Vec<NodeReport>,
    pub tolerance: f64,
}

/// Whether `error` is beyond `tolerance` (NaN is).
fn exceeds(error: f64, tolerance: f64) -> bool {
    error.is_nan() || error > tolerance
}

impl CompareReport {
    /// The first node (in topological order) where any target exceeds the tolerance,
    /// with the target; for a tie on that node, the target listed first.
    pub fn first_divergence(&self) -> Option<Divergence> {
        self.nodes.iter().enumerate().find_map(|(index, node)| {
            node.errors.iter().zip(&self.targets).find(|(e, _)| exceeds(**e, self.tolerance)).map(|(e, t)| Divergence {
                target: *t,
                node: index,
                name: node.name.clone(),
                error: *e,
            })
        })
    }

    /// The first node where `target` exceeds the tolerance.
    pub fn first_divergence_of(&self, target: Target) -> Option<Divergence> {
        let column = self.targets.iter().position(|t| *t == target)?;
        self.nodes.iter().enumerate().find_map(|(index, node)| {
            let error = node.errors[column];
            exceeds(error, self.tolerance).then(|| Divergence { target, node: index, name: node.name.clone(), error })
        })
    }

    /// The largest error of each target over all nodes.
    pub fn max_errors(&self) -> Vec<f64> {
        (0..self.targets.len()).map(|k| self.nodes.iter().map(|n| n.errors[k]).fold(0.0, f64::max)).collect()
    }

    /// Whether every target agrees with the reference on every node.
    pub fn agrees(&self) -> bool {
        self.first_divergence().is_none()
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elide = crate::summary::elide;
        let name_width = self.nodes.iter().map(|n| elide(&n.name).len()).max().unwrap_or(4).max(4);
        let op_width = self.nodes.iter().map(|n| n.op.len()).max().unwrap_or(2).max(2);
        writeln!(
            f,
            "network {}: relative L2 error against the reference, tolerance {:e}",
            self.network, self.tolerance
        )?;
        write!(f, "{:>4}  {:<name_width$}  {:<op_width$}", "#", "node", "op")?;
        for target in &self.targets {
            write!(f, "  {:>10}", target.name())?;
        }
        writeln!(f)?;
        for (index, node) in self.nodes.iter().enumerate() {
            write!(f, "{index:>4}  {:<name_width$}  {:<op_width$}", elide(&node.name), node.op)?;
            for error in &node.errors {
                let mark = if *error <= self.tolerance { ' ' } else { '!' };
                write!(f, "  {error:>9.2e}{mark}")?;
            }
            writeln!(f)?;
        }
        for (target, error) in self.targets.iter().zip(self.max_errors()) {
            write!(f, "{}: max error {error:.2e}", target.name())?;
            match self.first_divergence_of(*target) {
                Some(d) => writeln!(f, ", FIRST DIVERGENCE at node {} `{}` ({:.2e})", d.node, d.name, d.error)?,
                None => writeln!(f, ", agrees")?,
            }
        }
        Ok(())
    }
}

/// The nodes compared, in topological order: every node but the inputs.
fn compared_nodes(graph: &Graph) -> Result<Vec<NodeId>, String> {
    let order = graph.topo_order().ok_or_else(|| format!("graph `{}` has a cycle", graph.name))?;
    Ok(order.into_iter().filter(|&id| !matches!(graph.node(id).op, Op::Input { .. })).collect())
}

/// A copy of `graph` whose outputs are its own outputs followed by every node of
/// `nodes`, each under a unique name, with a fresh memory plan. Returns the copy and,
/// per node of `nodes`, its output's index.
pub fn with_every_node_as_output(graph: &Graph, nodes: &[NodeId]) -> (Graph, Vec<usize>) {
    let mut copy = graph.clone();
    let mut taken: std::collections::HashSet<String> = copy.outputs.iter().map(|o| o.name.clone()).collect();
    let mut positions = Vec::with_capacity(nodes.len());
    for (k, &id) in nodes.iter().enumerate() {
        let mut name = format!("__compare_{k}_{}", graph.node(id).name);
        while taken.contains(&name) {
            name.push('_');
        }
        taken.insert(name.clone());
        positions.push(copy.outputs.len());
        copy.outputs.push(Output { name, node: id });
    }
    if copy.memory.is_some() {
        crate::passes::plan_memory(&mut copy);
    }
    (copy, positions)
}

/// Runs `graph` (optimized, weights bound) on the reference interpreter and on every
/// target of `targets` (the reference among them is ignored), and compares every node's
/// value with the reference's. Every target runs this one graph, so it should come from
/// the generic pipeline (`passes::optimize`): a target's own pipeline (the GPU's fused
/// pooling) would leave the others nodes they cannot run.
pub fn compare(graph: &Graph, inputs: &[Tensor], targets: &[Target]) -> Result<CompareReport, String> {
    let graphs: Vec<(Target, Graph)> = targets
        .iter()
        .filter(|t| **t != Target::Reference)
        .fold(Vec::new(), |mut seen: Vec<Target>, t| {
            if !seen.contains(t) {
                seen.push(*t);
            }
            seen
        })
        .into_iter()
        .map(|t| (t, graph.clone()))
        .collect();
    compare_graphs(graph, inputs, &graphs)
}

/// [`compare`] with a graph of its own per target (the same network; for tests that
/// corrupt one target's copy). Node ids must match `reference`'s.
pub fn compare_graphs(
    reference: &Graph,
    inputs: &[Tensor],
    targets: &[(Target, Graph)],
) -> Result<CompareReport, String> {
    let nodes = compared_nodes(reference)?;
    let mut expected: HashMap<NodeId, Tensor> = HashMap::new();
    crate::interp::run_traced(reference, &reference.weights, inputs, &mut |id, value| {
        expected.insert(id, value.clone());
    })
    .map_err(|e| format!("reference: {e}"))?;

    let mut columns = Vec::with_capacity(targets.len());
    for (target, graph) in targets {
        let (copy, positions) = with_every_node_as_output(graph, &nodes);
        let outputs = match target {
            Target::Reference => crate::interp::run(&copy, &copy.weights, inputs).map_err(|e| e.to_string()),
            Target::Cpu => crate::backend::clif::compile_jit(&copy).and_then(|model| model.run(inputs)),
            Target::Gpu => crate::backend::wgsl::compile_gpu(&copy).and_then(|model| model.run(inputs)),
        }
        .map_err(|e| format!("{}: {e}", target.name()))?;
        let errors: Vec<f64> = nodes
            .iter()
            .zip(&positions)
            .map(|(id, &position)| {
                let want = &expected[id];
                let got = &outputs[position];
                if got.shape != want.shape || got.data.len() != want.data.len() {
                    f64::INFINITY
                } else {
                    relative_l2(&got.data, &want.data)
                }
            })
            .collect();
        columns.push(errors);
    }

    let node_reports = nodes
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let node = reference.node(id);
            NodeReport {
                name: node.name.clone(),
                op: node.op.mnemonic().to_string(),
                shape: node.shape.clone(),
                errors: columns.iter().map(|c| c[k]).collect(),
            }
        })
        .collect();
    Ok(CompareReport {
        network: reference.name.clone(),
        targets: targets.iter().map(|(t, _)| *t).collect(),
        nodes: node_reports,
        tolerance: TOLERANCE,
    })
}
