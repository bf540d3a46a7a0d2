//! The graph IR: one node per op, the inferred shape on every value, and on every
//! weighted op the dotted `state_dict` names of the tensors it reads.
//!
//! Invariants (checked by [`verify`]):
//! - The graph is acyclic. Every edge goes from an operand to its user and carries the
//!   operand's position; a node's operand positions are exactly `0..n`.
//! - `Op::Input` nodes have no operands and are listed, in order, in `Graph::inputs`;
//!   every other op has the operand count its kind needs (merge ops at least two), plus
//!   one when its epilogue has a residual.
//! - Values have rank 2 (`[N, F]`), 3 (`[N, C, L]`) or 4 (`[N, C, H, W]`), or rank 1
//!   (`[N]`, one scalar per sample: an `input x: []`); window and plane ops (conv, pools,
//!   batch_norm, lrn, ...) take rank 4 only, and a rank-1 value is read only by the
//!   elementwise ops (activations, dropout, identity, and add/mul of rank-1 operands):
//!   shape inference refuses the others; the rest take any rank their operands have.
//! - `Node::shape` is what [`shape::infer_node`] computes from the op's own operands'
//!   shapes (all operands but an epilogue's residual), batch dimension included: the
//!   op's output, pooled when the epilogue has a pool stage (only a conv's may). A
//!   residual has exactly the op's own output shape (the node's shape unless pooled).
//! - `Node::params` lists exactly the tensors `Op::param_shapes` asks for, in that order,
//!   with those shapes; no two nodes read the same parameter name.
//! - Every output names an existing node; output names are unique.
//! - A node's precision is one its op can run in (`Precision::applies_to`).

pub mod ops;
pub mod print;
pub mod shape;
pub mod verify;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;

pub use ops::{Activation, Conv, Epilogue, Hw, Op, Pad, ParamRole, Pool, PoolEpilogue, PoolKind};
pub use print::print;
pub use verify::verify;

/// A node's id; stays valid when other nodes are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex);

/// A byte range in the source the node came from, for diagnostics.
pub type Span = std::ops::Range<usize>;

/// A weight tensor an op reads: its role, its full dotted name and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub role: ParamRole,
    pub name: String,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// The layer's dotted path (`layer2.0.conv1`); for a weighted op, the prefix of its
    /// parameter names. Unnamed unweighted ops get a generated name (`relu_3`).
    pub name: String,
    /// The output shape, batch dimension first.
    pub shape: Vec<usize>,
    pub params: Vec<Param>,
    /// Where the op was written, if it came from source.
    pub span: Option<Span>,
    /// Work fused into the op's kernel; with `residual`, the last operand is the
    /// residual and the op's own operands are the ones before it.
    pub epilogue: Epilogue,
    /// The arithmetic the layer runs in ([`crate::precision`]): f32 unless a precision
    /// was assigned, and then only on the ops it applies to (verified).
    pub precision: crate::precision::Precision,
}

impl Node {
    /// A node for `op` with no epilogue and no source location.
    pub fn new(op: Op, name: impl Into<String>, shape: Vec<usize>, params: Vec<Param>) -> Node {
        Node {
            op,
            name: name.into(),
            shape,
            params,
            span: None,
            epilogue: Epilogue::default(),
            precision: Default::default(),
        }
    }
}

/// A named output of the network.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The network's name, from `network NAME`.
    pub name: String,
    graph: StableDiGraph<Node, usize>,
    /// The `Op::Input` nodes in declaration order.
    pub inputs: Vec<NodeId>,
    /// The outputs in order.
    pub outputs: Vec<Output>,
    /// The weight values, by parameter name, once bound (empty for a graph built from
    /// source alone). Passes that rewrite parameters rewrite these values with them.
    pub weights: crate::weights::Weights,
    /// Where every intermediate value lives at run time, once `plan_memory` ran. Any
    /// change to the graph's structure drops it (the plan must be made again).
    pub memory: Option<MemoryPlan>,
}

/// A value's place in the arena: `bytes` bytes from byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub offset: usize,
    pub bytes: usize,
}

/// The arena layout of a graph. Inputs and outputs are not in it: they live in the
/// caller's buffers (outputs one after another in `Graph::outputs` order).
/// Invariant: two values whose lifetimes overlap have disjoint slots, except a value
/// computed in place over an operand that dies at that node (same slot), and a value
/// computed in place in its channel slice of a concat (`in_concat`; its slot is that
/// slice of the concat's slot, at batch 1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    pub slots: std::collections::BTreeMap<NodeId, Slot>,
    /// Concat elimination: the values computed straight into their slice of a concat's
    /// slot, each mapped to that concat, which copies only its other operands.
    pub in_concat: std::collections::BTreeMap<NodeId, NodeId>,
    /// Size of the arena in bytes.
    pub arena_bytes: usize,
    /// Sum of the sizes of all planned values, for comparison.
    pub unplanned_bytes: usize,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a node reading `operands` in order.
    pub fn add_node(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        self.memory = None;
        let is_input = matches!(node.op, Op::Input { .. });
        let id = NodeId(self.graph.add_node(node));
        for (position, operand) in operands.iter().enumerate() {
            self.graph.add_edge(operand.0, id.0, position);
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.graph[id.0]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.graph.contains_node(id.0)
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// All node ids in insertion order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.graph.node_indices().map(NodeId).collect()
    }

    /// The node's operands in position order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> =
            self.graph.edges_directed(id.0, Direction::Incoming).map(|e| (*e.weight(), NodeId(e.source()))).collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The operands the op itself reads: all of them but an epilogue's residual and a
    /// gate (`Epilogue::gate`; the operand ahead of the op's own reads, multiplied in).
    pub fn op_operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut operands = self.operands(id);
        let epilogue = &self.node(id).epilogue;
        if epilogue.residual {
            operands.pop();
        }
        if epilogue.gate {
            operands.pop();
        }
        operands
    }

    /// The gate operand of a gated op (`Epilogue::gate`), if any.
    pub fn gate(&self, id: NodeId) -> Option<NodeId> {
        let epilogue = &self.node(id).epilogue;
        if !epilogue.gate {
            return None;
        }
        let operands = self.operands(id);
        operands.len().checked_sub(1 + usize::from(epilogue.residual)).map(|i| operands[i])
    }

    /// The residual operand of a fused epilogue, if any.
    pub fn residual(&self, id: NodeId) -> Option<NodeId> {
        if self.node(id).epilogue.residual { self.operands(id).last().copied() } else { None }
    }

    /// The operand positions as stored on the edges, sorted (used by `verify`).
    pub(crate) fn operand_positions(&self, id: NodeId) -> Vec<usize> {
        let mut positions: Vec<usize> =
            self.graph.edges_directed(id.0, Direction::Incoming).map(|e| *e.weight()).collect();
        positions.sort();
        positions
    }

    /// The nodes that read this node's value, each once, in id order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.graph.neighbors_directed(id.0, Direction::Outgoing).map(NodeId).collect();
        users.sort();
        users.dedup();
        users
    }

    /// Whether the node's value is a network output.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.iter().any(|o| o.node == id)
    }

    /// Adds an operand edge; the caller keeps positions `0..n` and shapes consistent.
    pub fn add_edge(&mut self, operand: NodeId, user: NodeId, position: usize) {
        self.memory = None;
        self.graph.add_edge(operand.0, user.0, position);
    }

    /// Replaces a node's operand edges with `operands`, at positions `0..n`. The caller
    /// keeps shapes and the epilogue's operands consistent.
    pub fn set_operands(&mut self, id: NodeId, operands: &[NodeId]) {
        self.memory = None;
        let edges: Vec<petgraph::stable_graph::EdgeIndex> =
            self.graph.edges_directed(id.0, Direction::Incoming).map(|e| e.id()).collect();
        for edge in edges {
            self.graph.remove_edge(edge);
        }
        for (position, operand) in operands.iter().enumerate() {
            self.graph.add_edge(operand.0, id.0, position);
        }
    }

    /// Removes a node and its edges. The caller keeps the graph consistent.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.memory = None;
        self.inputs.retain(|&i| i != id);
        self.graph.remove_node(id.0)
    }

    /// Makes every user of `old` (and every output naming it) read `new` instead.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        self.memory = None;
        let uses: Vec<(petgraph::stable_graph::EdgeIndex, NodeId, usize)> = self
            .graph
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (e.id(), NodeId(e.target()), *e.weight()))
            .collect();
        for (edge, user, position) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new.0, user.0, position);
        }
        for output in &mut self.outputs {
            if output.node == old {
                output.node = new;
            }
        }
    }

    /// A deterministic topological order: among the nodes whose operands are all placed,
    /// the one added first goes next. Returns `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut pending: std::collections::HashMap<NodeIndex, usize> =
            self.graph.node_indices().map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count())).collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> =
            pending.iter().filter(|(_, c)| **c == 0).map(|(n, _)| Reverse(*n)).collect();
        let mut order = Vec::with_capacity(pending.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(NodeId(n));
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let count = pending.get_mut(&e.target()).expect("edge target is a node");
                *count -= 1;
                if *count == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        (order.len() == self.graph.node_count()).then_some(order)
    }

    /// A copy of the graph without its weight values (nodes, edges, inputs, outputs and
    /// memory plan only), for analyses that must not duplicate the weights.
    pub fn structure(&self) -> Graph {
        Graph {
            name: self.name.clone(),
            graph: self.graph.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            weights: Default::default(),
            memory: self.memory.clone(),
        }
    }

    /// All parameters of the graph in topological order.
    pub fn params(&self) -> Vec<&Param> {
        let order = self.topo_order().unwrap_or_default();
        order.into_iter().flat_map(|id| self.node(id).params.iter()).collect()
    }
}
