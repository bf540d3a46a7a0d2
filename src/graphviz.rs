//! The IR as a Graphviz DOT graph: one box per op with its name and output shape,
//! filled with its kind's colour ([`kind_color`]) at an opacity that grows with its share
//! of the network's multiply-adds ([`mac_shading`]), as in `cnnc report`'s SVG.

use std::collections::HashMap;
use std::fmt::Write;

use crate::ir::shape::fmt_shape;
use crate::ir::{Graph, NodeId, Op};

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The colour of an op kind (Tableau 10): conv, linear, activation, pooling,
/// normalization, add/mul, softmax, data movement, input.
pub fn kind_color(op: &Op) -> &'static str {
    match op {
        Op::Input { .. } => "#bab0ac",
        Op::Conv(_) => "#4e79a7",
        Op::Linear { .. } => "#b07aa1",
        Op::Activation(_) => "#f28e2b",
        _ => match op.mnemonic() {
            m if m.contains("pool") => "#59a14f",
            m if m.contains("norm") || m.contains("scale") || m == "lrn" => "#edc948",
            "softmax" => "#e15759",
            "add" | "mul" => "#76b7b2",
            _ => "#9c755f",
        },
    }
}

/// The legend of [`kind_color`]: (label, colour).
pub const LEGEND: [(&str, &str); 9] = [
    ("input", "#bab0ac"),
    ("conv", "#4e79a7"),
    ("linear", "#b07aa1"),
    ("activation", "#f28e2b"),
    ("pooling", "#59a14f"),
    ("normalization", "#edc948"),
    ("add, mul", "#76b7b2"),
    ("softmax", "#e15759"),
    ("data movement", "#9c755f"),
];

/// A node's fill opacity for its share of the largest layer's multiply-adds: the square
/// root of the share, from 0.12 (none) to 1 (the largest), so small layers stay visible.
pub fn mac_shading(macs: u64, max_macs: u64) -> f64 {
    0.12 + 0.88 * (macs as f64 / max_macs.max(1) as f64).sqrt()
}

/// Renders the graph in DOT, nodes in topological order, numbered like `cnnc ir`.
pub fn to_dot(graph: &Graph) -> String {
    let order = graph.topo_order().unwrap_or_default();
    let numbers: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let max_macs = order.iter().map(|&id| crate::summary::macs(graph, id)).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(out, "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];");
    for id in &order {
        let node = graph.node(*id);
        let attributes = node.op.attributes();
        let mut label = format!("{}\\n{}", escape(&node.name), node.op.mnemonic());
        if !attributes.is_empty() && !matches!(node.op, Op::Input { .. }) {
            label += &format!(" {}", escape(&attributes));
        }
        label += &format!("\\n{}", fmt_shape(&node.shape));
        let extra = if matches!(node.op, Op::Input { .. }) { ", shape=ellipse" } else { "" };
        let macs = crate::summary::macs(graph, *id);
        let opacity = mac_shading(macs, max_macs);
        let color = kind_color(&node.op);
        let font = if opacity > 0.6 { "#ffffff" } else { "#111111" };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\"{extra}, color=\"{color}\", fillcolor=\"{color}{:02x}\", fontcolor=\"{font}\", tooltip=\"{} MACs\"];",
            numbers[id],
            label,
            (opacity * 255.0).round() as u8,
            crate::summary::thousands(macs)
        );
    }
    for id in &order {
        for operand in graph.operands(*id) {
            let _ = writeln!(out, "  n{} -> n{};", numbers[&operand], numbers[id]);
        }
    }
    for (i, output) in graph.outputs.iter().enumerate() {
        if let Some(n) = numbers.get(&output.node) {
            let _ = writeln!(out, "  out{i} [label=\"{}\", shape=ellipse];", escape(&output.name));
            let _ = writeln!(out, "  n{n} -> out{i};");
        }
    }
    out.push_str("}\n");
    out
}
