//! The IR's deterministic text form: topological order, ids renumbered from 0, shapes
//! inline, one line per node. `cnnc ir`, the pass dumps and the snapshots print this.

use std::collections::HashMap;
use std::fmt::Write;

use super::shape::fmt_shape;
use super::{Graph, NodeId};
use crate::precision::Precision;

/// Prints the graph, e.g.
/// `%1 = conv(%0) out=64 kernel=7x7 stride=2x2 pad=3x3 bias=false : [1, 64, 112, 112]  # conv1 {conv1.weight}`.
/// A fused epilogue follows the attributes stage by stage, in the order it runs:
/// `-> relu -> add %3 -> relu -> max_pool kernel=2x2 stride=2x2 pad=0x0`; the shape is
/// the node's (pooled) output. A layer that does not run in f32 says so after its
/// attributes (`precision=bf16`).
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    let Some(order) = graph.topo_order() else {
        return format!("network {} <cyclic graph>\n", graph.name);
    };
    let numbers: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let _ = writeln!(out, "network {}", graph.name);
    for id in &order {
        let node = graph.node(*id);
        let mut operands: Vec<String> = graph.op_operands(*id).iter().map(|o| format!("%{}", numbers[o])).collect();
        // A gated op reads its input times the gate: `conv(%3 * %5)`.
        if let (Some(gate), Some(first)) = (graph.gate(*id), operands.first_mut()) {
            *first = format!("{first} * %{}", numbers[&gate]);
        }
        let _ = write!(out, "  %{} = {}", numbers[id], node.op.mnemonic());
        if !operands.is_empty() {
            let _ = write!(out, "({})", operands.join(", "));
        }
        let attributes = node.op.attributes();
        if !attributes.is_empty() {
            let _ = write!(out, " {attributes}");
        }
        if node.precision != Precision::F32 {
            let _ = write!(out, " precision={}", node.precision.name());
        }
        let epilogue = &node.epilogue;
        if let Some(activation) = epilogue.activation {
            let _ = write!(out, " -> {}", activation.name());
        }
        if let Some(residual) = graph.residual(*id) {
            let _ = write!(out, " -> add %{}", numbers[&residual]);
        }
        if let Some(activation) = epilogue.post_activation {
            let _ = write!(out, " -> {}", activation.name());
        }
        if let Some(pool) = &epilogue.pool {
            let op = pool.op();
            let _ = write!(out, " -> {} {}", op.mnemonic(), op.attributes());
        }
        let _ = write!(out, " : {}  # {}", fmt_shape(&node.shape), node.name);
        if !node.params.is_empty() {
            let names: Vec<&str> = node.params.iter().map(|p| p.name.as_str()).collect();
            let _ = write!(out, " {{{}}}", names.join(", "));
        }
        out.push('\n');
    }
    for output in &graph.outputs {
        let number = numbers.get(&output.node).map(|n| format!("%{n}")).unwrap_or_else(|| "%?".into());
        let _ = writeln!(out, "  output {} = {}", output.name, number);
    }
    out
}

/// Prints the memory plan, if the graph has one, with values numbered as [`print`]
/// numbers them: the arena's size against the sum of the intermediates, then each
/// planned value's byte range (`in %N`: computed in its channel slice of concat %N).
pub fn print_memory_plan(graph: &Graph) -> String {
    let mut out = String::new();
    let (Some(plan), Some(order)) = (&graph.memory, graph.topo_order()) else { return out };
    let numbers: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let _ =
        writeln!(out, "memory plan: arena {} bytes, intermediates {} bytes", plan.arena_bytes, plan.unplanned_bytes);
    for id in &order {
        if let Some(slot) = plan.slots.get(id) {
            let _ = write!(out, "  %{} at {}..{}", numbers[id], slot.offset, slot.offset + slot.bytes);
            let _ = match plan.in_concat.get(id) {
                Some(concat) => writeln!(out, " in %{}", numbers[concat]),
                None => writeln!(out),
            };
        }
    }
    out
}
