//! The IR as a Graphviz DOT graph: one box per op with its name and output shape.

use std::collections::HashMap;
use std::fmt::Write;

use crate::ir::shape::fmt_shape;
use crate::ir::{Graph, NodeId, Op};

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders the graph in DOT, nodes in topological order, numbered like `cnnc ir`.
pub fn to_dot(graph: &Graph) -> String {
    let order = graph.topo_order().unwrap_or_default();
    let numbers: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(out, "  node [shape=box, style=rounded, fontname=\"Helvetica\"];");
    for id in &order {
        let node = graph.node(*id);
        let attributes = node.op.attributes();
        let mut label = format!("{}\\n{}", escape(&node.name), node.op.mnemonic());
        if !attributes.is_empty() && !matches!(node.op, Op::Input { .. }) {
            label += &format!(" {}", escape(&attributes));
        }
        label += &format!("\\n{}", fmt_shape(&node.shape));
        let extra = if matches!(node.op, Op::Input { .. }) { ", shape=ellipse" } else { "" };
        let _ = writeln!(out, "  n{} [label=\"{}\"{}];", numbers[id], label, extra);
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
