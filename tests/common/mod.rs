//! Helpers shared by the test files that include this module (`mod common;`).

use cnnc::ir::{Graph, NodeId, Op};

/// Replays the memory plan in the order the backends run the graph (topological), with
/// an owner for every 4-byte word of the arena: each value a node reads must still own
/// its bytes when the node runs, and a node may only write over an operand's bytes when
/// it computes elementwise in place over exactly that operand's slot (an activation,
/// scale-shift, flatten, dropout or same-shape merge over its first operand, or a fused
/// residual add over the residual). Independent of `ir::verify`'s pairwise check.
pub fn replay_memory_plan(graph: &Graph) -> Result<(), String> {
    let plan = graph.memory.as_ref().ok_or("no memory plan")?;
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let elements = |id: NodeId| graph.node(id).shape.iter().product::<usize>();
    let mut owner: Vec<Option<NodeId>> = vec![None; plan.arena_bytes.div_ceil(4)];
    let mut problems = Vec::new();
    for id in order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        for &operand in &operands {
            let Some(slot) = plan.slots.get(&operand) else { continue };
            let words = slot.offset / 4..slot.offset / 4 + elements(operand);
            if let Some(other) = owner[words].iter().find(|o| **o != Some(operand)) {
                let other = other.map(|o| graph.node(o).name.clone()).unwrap_or_else(|| "nothing".into());
                problems.push(format!(
                    "{} reads {}, whose bytes hold {other} by then",
                    node.name,
                    graph.node(operand).name
                ));
            }
        }
        let Some(slot) = plan.slots.get(&id) else { continue };
        let n = elements(id);
        if slot.offset % 4 != 0 || slot.bytes < 4 * n || slot.offset + slot.bytes > plan.arena_bytes {
            problems.push(format!("{}: slot {slot:?} does not hold {n} floats inside the arena", node.name));
            continue;
        }
        let words = slot.offset / 4..slot.offset / 4 + n;
        for (position, &operand) in operands.iter().enumerate() {
            let Some(operand_slot) = plan.slots.get(&operand) else { continue };
            let operand_words = operand_slot.offset / 4..operand_slot.offset / 4 + elements(operand);
            if operand_words.start >= words.end || words.start >= operand_words.end {
                continue;
            }
            let is_residual = graph.residual(id) == Some(operand) && position == operands.len() - 1;
            let elementwise = match node.op {
                Op::Relu
                | Op::LeakyRelu { .. }
                | Op::Sigmoid
                | Op::Tanh
                | Op::ScaleShift
                | Op::Flatten
                | Op::Dropout { .. }
                | Op::Dropout2d { .. } => position == 0,
                Op::Add | Op::Mul => position == 0 && graph.node(operand).shape == node.shape,
                _ => false,
            };
            if operand_words != words || !(elementwise || is_residual) {
                problems.push(format!(
                    "{} ({}) writes over the bytes of its operand {} without computing in place over it",
                    node.name,
                    node.op.mnemonic(),
                    graph.node(operand).name
                ));
            }
        }
        for word in words {
            owner[word] = Some(id);
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}
