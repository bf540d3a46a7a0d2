//! What each layer costs: output shape, learnable parameters, multiply-accumulates
//! and output bytes, with totals. `cnnc summary` prints it as a table or JSON.

use serde::Serialize;

use crate::ir::shape::fmt_shape;
use crate::ir::{Graph, NodeId, Op};
use crate::passes::plan_memory::concat_is_free;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerCost {
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    /// Learnable parameters (weights and biases; BatchNorm's running statistics are
    /// buffers and not counted, as in PyTorch's `parameters()`).
    pub params: u64,
    /// Multiply-accumulates of convolutions and linear layers; 0 for other ops.
    pub macs: u64,
    /// Size of the output tensor in bytes (float32).
    pub output_bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub network: String,
    pub layers: Vec<LayerCost>,
    pub total_params: u64,
    pub total_macs: u64,
    pub total_output_bytes: u64,
    /// For an optimized graph: what the passes did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimized: Option<OptimizedStats>,
    /// The memory the network needs to run ([`crate::budget::need`]); filled in by the
    /// caller that wants it reported (`cnnc summary`), `None` from [`summarize`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::budget::MemoryNeed>,
}

/// What optimization made of a network.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OptimizedStats {
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Nodes that are kernels (everything but inputs and the concats the memory plan
    /// eliminated).
    pub kernels: usize,
    /// Concats with nothing left to copy: their operands are computed in their slices.
    pub eliminated_concats: usize,
    /// Kernels that carry a fused epilogue.
    pub fused_kernels: usize,
    /// The memory plan's arena, in bytes.
    pub arena_bytes: u64,
    /// The sum of all intermediates' sizes (what the arena would be without reuse).
    pub intermediate_bytes: u64,
}

/// Node, kernel and memory figures of an optimized graph.
pub fn optimized_stats(graph: &Graph, nodes_before: usize) -> OptimizedStats {
    let eliminated_concats = graph.node_ids().into_iter().filter(|&id| concat_is_free(graph, id)).count();
    let kernels = graph.node_ids().iter().filter(|&&id| !matches!(graph.node(id).op, Op::Input { .. })).count()
        - eliminated_concats;
    let fused_kernels = graph.node_ids().iter().filter(|&&id| !graph.node(id).epilogue.is_empty()).count();
    let (arena_bytes, intermediate_bytes) =
        graph.memory.as_ref().map(|m| (m.arena_bytes as u64, m.unplanned_bytes as u64)).unwrap_or((0, 0));
    OptimizedStats {
        nodes_before,
        nodes_after: graph.node_count(),
        kernels,
        eliminated_concats,
        fused_kernels,
        arena_bytes,
        intermediate_bytes,
    }
}

/// Multiply-accumulates of one node.
pub fn macs(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    // A conv whose epilogue pools computes every value of its unpooled shape.
    let unpooled = match node.epilogue.pool {
        Some(_) => {
            let operands: Vec<Vec<usize>> =
                graph.op_operands(id).iter().map(|&o| graph.node(o).shape.clone()).collect();
            let operands: Vec<&[usize]> = operands.iter().map(Vec::as_slice).collect();
            crate::ir::shape::infer(&node.op, &operands).ok()
        }
        None => None,
    };
    let out: u64 = unpooled.as_ref().unwrap_or(&node.shape).iter().map(|&d| d as u64).product();
    match &node.op {
        Op::Conv(c) => {
            let operands = graph.operands(id);
            let in_channels = graph.node(operands[0]).shape[1] as u64;
            // Saturating: a kernel of millions of taps (a hostile program) must not overflow.
            let taps = (c.kernel.h as u64).saturating_mul(c.kernel.w as u64);
            out.saturating_mul(in_channels / c.groups as u64).saturating_mul(taps)
        }
        Op::Linear { .. } => {
            let operands = graph.operands(id);
            out.saturating_mul(graph.node(operands[0]).shape.last().copied().unwrap_or(0) as u64)
        }
        _ => 0,
    }
}

/// Summarizes every node but the inputs, in topological order.
pub fn summarize(graph: &Graph) -> Summary {
    let mut layers = Vec::new();
    for id in graph.topo_order().unwrap_or_default() {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        let params = node
            .params
            .iter()
            .filter(|p| p.role.is_learnable())
            .map(|p| p.shape.iter().map(|&d| d as u64).product::<u64>())
            .sum();
        layers.push(LayerCost {
            name: node.name.clone(),
            op: node.op.mnemonic().to_string(),
            shape: node.shape.clone(),
            params,
            macs: macs(graph, id),
            output_bytes: 4 * node.shape.iter().map(|&d| d as u64).product::<u64>(),
        });
    }
    Summary {
        network: graph.name.clone(),
        total_params: layers.iter().map(|l| l.params).sum(),
        total_macs: layers.iter().fold(0u64, |total, l| total.saturating_add(l.macs)),
        total_output_bytes: layers.iter().map(|l| l.output_bytes).sum(),
        layers,
        optimized: None,
        memory: None,
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The widest a name column of a table gets; longer names are elided in the middle.
pub const NAME_COLUMN_CHARS: usize = 64;

/// `name` for a table column: unchanged up to [`NAME_COLUMN_CHARS`] characters, else its
/// start and end around `...` (the end tells layers of one block apart). Fixed-width
/// formatting panics on widths past 65,535, and a name can be longer.
pub fn elide(name: &str) -> std::borrow::Cow<'_, str> {
    let count = name.chars().count();
    if count <= NAME_COLUMN_CHARS {
        return std::borrow::Cow::Borrowed(name);
    }
    let keep = NAME_COLUMN_CHARS - 3;
    let head: String = name.chars().take(keep / 2).collect();
    let tail: String = name.chars().skip(count - (keep - keep / 2)).collect();
    std::borrow::Cow::Owned(format!("{head}...{tail}"))
}

/// The summary as an aligned text table.
pub fn render_table(summary: &Summary) -> String {
    let header = ["layer", "op", "output shape", "params", "MACs", "output bytes"];
    let mut rows: Vec<[String; 6]> = summary
        .layers
        .iter()
        .map(|l| {
            [
                elide(&l.name).into_owned(),
                l.op.clone(),
                fmt_shape(&l.shape),
                thousands(l.params),
                thousands(l.macs),
                thousands(l.output_bytes),
            ]
        })
        .collect();
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        thousands(summary.total_params),
        thousands(summary.total_macs),
        thousands(summary.total_output_bytes),
    ]);
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("network {}\n", summary.network);
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            // Text columns align left, numbers right.
            if i < 3 {
                s += &format!("{:<w$}", cell, w = widths[i]);
            } else {
                s += &format!("{:>w$}", cell, w = widths[i]);
            }
            if i + 1 < cells.len() {
                s += "  ";
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out += &line(&header.map(String::from));
    out += &line(&widths.map(|w| "-".repeat(w)));
    let last = rows.len() - 1;
    for (i, row) in rows.iter().enumerate() {
        if i == last {
            out += &line(&widths.map(|w| "-".repeat(w)));
        }
        out += &line(row);
    }
    if let Some(o) = &summary.optimized {
        out += &format!(
            "optimized: {} nodes -> {} ({} kernels, {} with fused epilogues{}); arena {} bytes for {} bytes of intermediates\n",
            o.nodes_before,
            o.nodes_after,
            o.kernels,
            o.fused_kernels,
            match o.eliminated_concats {
                0 => String::new(),
                n => format!(", {n} concats eliminated"),
            },
            thousands(o.arena_bytes),
            thousands(o.intermediate_bytes)
        );
    }
    if let Some(need) = &summary.memory {
        out +=
            &format!("memory to run: {} ({})\n", crate::budget::fmt_bytes(need.total), crate::budget::breakdown(need));
    }
    out
}
