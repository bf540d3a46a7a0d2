//! `verify`: checks the invariants documented on [`Graph`](super::Graph). Run after
//! every pass in tests and debug builds; backends only take verified graphs.

use std::collections::HashSet;

use super::shape::{self, fmt_shape};
use super::{Activation, Graph, NodeId, Op};

/// Checks the graph's invariants; the error lists every violation found.
pub fn verify(graph: &Graph) -> Result<(), String> {
    let mut problems = Vec::new();
    if graph.topo_order().is_none() {
        return Err("the graph has a cycle".into());
    }
    let mut param_names = HashSet::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let positions = graph.operand_positions(id);
        if positions != (0..positions.len()).collect::<Vec<_>>() {
            problems.push(format!("{}: operand positions {:?} are not 0..n", node.name, positions));
        }
        match &node.op {
            Op::Input { .. } => {
                if !operands.is_empty() {
                    problems.push(format!("{}: an input has operands", node.name));
                }
                if !graph.inputs.contains(&id) {
                    problems.push(format!("{}: input node missing from Graph::inputs", node.name));
                }
            }
            op => {
                let own = graph.op_operands(id);
                let shapes: Vec<&[usize]> = own.iter().map(|o| graph.node(*o).shape.as_slice()).collect();
                if node.epilogue.pool.is_some() && !matches!(op, Op::Conv(_)) {
                    problems.push(format!(
                        "{}: a {} with a pooling epilogue (only convs take one)",
                        node.name,
                        op.mnemonic()
                    ));
                }
                let activations = [Activation::of(op), node.epilogue.activation, node.epilogue.post_activation];
                for activation in activations.into_iter().flatten() {
                    if let Activation::Clamp { min, max } = activation
                        && min.partial_cmp(&max) != Some(std::cmp::Ordering::Less)
                    {
                        problems.push(format!(
                            "{}: {} with min {min} not below max {max}",
                            node.name,
                            activation.name()
                        ));
                    }
                    if let Activation::HardSigmoidAffine { alpha, beta } = activation
                        && !(alpha.is_finite() && beta.is_finite())
                    {
                        problems.push(format!(
                            "{}: {} with a constant that is not finite",
                            node.name,
                            activation.name()
                        ));
                    }
                }
                if let Some(gate) = graph.gate(id) {
                    let x = shapes.first().copied().unwrap_or(&[]);
                    let gate_shape = &graph.node(gate).shape;
                    if !matches!(op, Op::Conv(c) if c.groups == 1) || x.len() != 4 {
                        problems.push(format!(
                            "{}: a gate on a {} (only a conv of one group takes one)",
                            node.name,
                            op.mnemonic()
                        ));
                    } else if *gate_shape != [x[0], x[1], 1, 1] {
                        problems.push(format!(
                            "{}: gate {} for an input {} (expected [N, C, 1, 1])",
                            node.name,
                            fmt_shape(gate_shape),
                            fmt_shape(x)
                        ));
                    }
                }
                // The residual is added before any pooling: it has the op's own output shape.
                let kernel_shape = match node.epilogue.pool {
                    Some(_) => shape::infer(op, &shapes).ok(),
                    None => Some(node.shape.clone()),
                };
                if let (Some(residual), Some(kernel_shape)) = (graph.residual(id), &kernel_shape)
                    && graph.node(residual).shape != *kernel_shape
                {
                    problems.push(format!(
                        "{}: residual {} but the output is {}",
                        node.name,
                        fmt_shape(&graph.node(residual).shape),
                        fmt_shape(kernel_shape)
                    ));
                }
                match shape::infer_node(op, &node.epilogue, &shapes) {
                    Ok(expected) if expected == node.shape => {}
                    Ok(expected) => problems.push(format!(
                        "{}: shape {} but its operands give {}",
                        node.name,
                        fmt_shape(&node.shape),
                        fmt_shape(&expected)
                    )),
                    Err(e) => problems.push(format!("{}: {}", node.name, e.message)),
                }
                let input_shape = shapes.first().copied().unwrap_or(&[]);
                let wanted = op.param_shapes(input_shape);
                let have: Vec<_> = node.params.iter().map(|p| (p.role, p.shape.clone())).collect();
                if wanted != have {
                    problems.push(format!("{}: params {:?} but the op reads {:?}", node.name, have, wanted));
                }
            }
        }
        if !node.precision.applies_to(&node.op) {
            problems.push(format!(
                "{}: a {} cannot run in {} (only conv and linear layers do)",
                node.name,
                node.op.mnemonic(),
                node.precision.name()
            ));
        }
        for param in &node.params {
            if !param_names.insert(param.name.clone()) {
                problems.push(format!("{}: parameter {} is read by two nodes", node.name, param.name));
            }
        }
    }
    for &input in &graph.inputs {
        if !graph.contains(input) {
            problems.push("Graph::inputs names a removed node".into());
        }
    }
    let mut output_names = HashSet::new();
    for output in &graph.outputs {
        if !graph.contains(output.node) {
            problems.push(format!("output {} names a removed node", output.name));
        }
        if !output_names.insert(output.name.clone()) {
            problems.push(format!("output name {} is used twice", output.name));
        }
    }
    if graph.outputs.is_empty() {
        problems.push("the graph has no outputs".into());
    }
    if let Some(plan) = &graph.memory {
        verify_memory_plan(graph, plan, &mut problems);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Checks a memory plan: every intermediate has a slot that holds it, inside the arena,
/// and two values alive at once never share bytes, except a value computed in place over
/// an operand that dies at that node.
fn verify_memory_plan(graph: &Graph, plan: &super::MemoryPlan, problems: &mut Vec<String>) {
    let Some(order) = graph.topo_order() else { return };
    let position: std::collections::HashMap<_, _> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut planned = Vec::new();
    for &id in &order {
        let node = graph.node(id);
        let in_arena = !matches!(node.op, Op::Input { .. }) && !graph.is_output(id);
        match (in_arena, plan.slots.get(&id)) {
            (true, None) => problems.push(format!("{}: no slot in the memory plan", node.name)),
            (false, Some(_)) => problems.push(format!("{}: an input or output has an arena slot", node.name)),
            (true, Some(slot)) => {
                if slot.bytes < 4 * node.shape.iter().product::<usize>() {
                    problems.push(format!("{}: slot of {} bytes is too small", node.name, slot.bytes));
                }
                if slot.offset + slot.bytes > plan.arena_bytes {
                    problems.push(format!("{}: slot ends past the arena", node.name));
                }
                let birth = position[&id];
                let death = graph.users(id).iter().map(|u| position[u]).max().unwrap_or(birth);
                planned.push((id, *slot, birth, death));
            }
            (false, None) => {}
        }
    }
    for (&member, &concat) in &plan.in_concat {
        verify_concat_slice(graph, plan, member, concat, problems);
    }
    // Whether `inner` is computed inside `outer`'s slot through a chain of concats.
    let inside = |mut inner: NodeId, outer: NodeId| {
        while let Some(&concat) = plan.in_concat.get(&inner) {
            if concat == outer {
                return true;
            }
            inner = concat;
        }
        false
    };
    for (i, &(a, slot_a, birth_a, death_a)) in planned.iter().enumerate() {
        for &(b, slot_b, birth_b, death_b) in &planned[i + 1..] {
            let disjoint_bytes =
                slot_a.offset + slot_a.bytes <= slot_b.offset || slot_b.offset + slot_b.bytes <= slot_a.offset;
            // `b` is born after `a` (topological order); they overlap in time unless `a`
            // died before `b` was computed.
            let overlap_in_time = birth_b <= death_a && birth_a <= death_b;
            let in_place = slot_a == slot_b
                && death_a == birth_b
                && graph.op_operands(b).first() == Some(&a)
                && crate::passes::plan_memory::can_run_in_place(&graph.node(b).op);
            if overlap_in_time && !disjoint_bytes && !in_place && !inside(a, b) && !inside(b, a) {
                problems.push(format!(
                    "{} and {} are alive together but share arena bytes",
                    graph.node(a).name,
                    graph.node(b).name
                ));
            }
        }
    }
}

/// Checks that a value the plan computes inside a concat's slot is an operand of that
/// concat, read once, at batch 1, and placed exactly at its channel slice.
fn verify_concat_slice(
    graph: &Graph,
    plan: &super::MemoryPlan,
    member: NodeId,
    concat: NodeId,
    problems: &mut Vec<String>,
) {
    if !graph.contains(member) || !graph.contains(concat) {
        problems.push("the memory plan places a removed node in a concat".to_string());
        return;
    }
    let (member_node, concat_node) = (graph.node(member), graph.node(concat));
    let operands = graph.operands(concat);
    let position = operands.iter().position(|&o| o == member);
    let once = operands.iter().filter(|&&o| o == member).count() == 1;
    if !matches!(concat_node.op, Op::Concat) || position.is_none() || !once || concat_node.shape.first() != Some(&1) {
        problems.push(format!(
            "{} is placed inside {}, which is not a batch-1 concat reading it once",
            member_node.name, concat_node.name
        ));
        return;
    }
    let offset = crate::passes::plan_memory::concat_offsets(graph, concat)[position.unwrap_or(0)];
    match (plan.slots.get(&member), plan.slots.get(&concat)) {
        (Some(m), Some(c)) if m.offset == c.offset + offset && m.offset + m.bytes <= c.offset + c.bytes => {}
        _ => problems.push(format!(
            "{} is not placed at its channel slice (byte {offset}) of {}'s slot",
            member_node.name, concat_node.name
        )),
    }
}
