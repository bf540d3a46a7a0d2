//! `verify`: checks the invariants documented on [`Graph`](super::Graph). Run after
//! every pass in tests and debug builds; backends only take verified graphs.

use std::collections::HashSet;

use super::shape::{self, fmt_shape};
use super::{Graph, Op};

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
                if let Some(residual) = graph.residual(id)
                    && graph.node(residual).shape != node.shape
                {
                    problems.push(format!(
                        "{}: residual {} but the output is {}",
                        node.name,
                        fmt_shape(&graph.node(residual).shape),
                        fmt_shape(&node.shape)
                    ));
                }
                let shapes: Vec<&[usize]> = own.iter().map(|o| graph.node(*o).shape.as_slice()).collect();
                match shape::infer(op, &shapes) {
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
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}
