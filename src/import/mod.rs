//! ONNX import: a model file to a `.cnn` program and its weights under the program's
//! own parameter names (`cnnc import`).
//!
//! - [`model`]: the protobuf parsed and checked, constants decoded within limits, shape
//!   arithmetic folded.
//! - [`ops`]: ONNX nodes (and the multi-node patterns exporters write) to IR nodes.
//! - [`write`]: the IR graph as program text, scopes from the layer names.
//!
//! The import checks itself: the written program is compiled and its IR text must equal
//! the imported graph's, so a program that would compute something else is never
//! returned. Anything the language cannot express is an [`ImportError`] naming the ONNX
//! node, its op and what is missing.

pub mod model;
pub mod ops;
pub mod write;

use std::fmt;

use onnx_protobuf::NodeProto;

use crate::front::{BuildOptions, compile_source};
use crate::ir::Graph;
use crate::weights::Weights;

/// Why a model cannot be imported; the message is complete and meant for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(pub String);

impl ImportError {
    pub fn new(message: impl Into<String>) -> ImportError {
        ImportError(message.into())
    }

    /// An error at an ONNX node: `node `NAME` (OP): what`.
    pub fn node(node: &NodeProto, what: impl Into<String>) -> ImportError {
        let name = if node.name.is_empty() {
            format!("with output `{}`", node.output.first().map(String::as_str).unwrap_or("?"))
        } else {
            format!("`{}`", node.name)
        };
        ImportError(format!("node {name} ({}): {}", node.op_type, what.into()))
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

/// An imported model: the program, its weights, and the graph the program compiles to.
pub struct Import {
    /// The `.cnn` program text.
    pub program: String,
    /// The weights under the program's parameter names.
    pub weights: Weights,
    /// The program compiled at the model's batch size (weights bound).
    pub graph: Graph,
    /// The model's batch size (its inputs' first dimension).
    pub batch: usize,
    /// The ONNX names of the model's inputs and outputs, in the graph's order.
    pub onnx_inputs: Vec<String>,
    pub onnx_outputs: Vec<String>,
}

/// Imports an ONNX model from its bytes.
pub fn import(bytes: &[u8]) -> Result<Import, ImportError> {
    let (model, opset) = model::parse(bytes)?;
    let graph_proto = model.graph.as_ref().expect("model::parse checks the graph");
    let mut imported = ops::import_graph(graph_proto, opset)?;
    let written = write::write(&imported.graph, &imported.free)
        .map_err(|e| ImportError::new(format!("cannot write the program: {e}")))?;
    // Final names: the writer's for the free nodes; then parameters and weights.
    for (id, name) in &written.names {
        imported.graph.node_mut(*id).name = name.clone();
    }
    let mut weights = Weights::default();
    let mut ids = imported.graph.node_ids();
    ids.sort();
    for id in ids {
        let Some(tensors) = imported.tensors.remove(&id) else { continue };
        let node = imported.graph.node(id);
        let mut params = Vec::new();
        for (role, tensor) in tensors {
            let name = role.name(&node.name);
            params.push(crate::ir::Param { role, name: name.clone(), shape: tensor.shape.clone() });
            if weights.tensors.insert(name.clone(), tensor).is_some() {
                return Err(ImportError::new(format!("two layers would both own the weight `{name}`")));
            }
        }
        imported.graph.node_mut(id).params = params;
    }
    let batch = imported.graph.inputs.first().map(|&i| imported.graph.node(i).shape[0]).unwrap_or(1);
    let want = crate::ir::print(&imported.graph);
    // The program with parameterized blocks if it checks, else the plain one.
    let (program, mut graph) = match check(&written.text, batch, &want) {
        Ok(graph) => (written.text, graph),
        Err(_) => {
            let graph = check(&written.plain, batch, &want).map_err(ImportError::new)?;
            (written.plain, graph)
        }
    };
    graph.weights = weights.clone();
    let initializers: std::collections::HashSet<&str> =
        graph_proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let onnx_inputs =
        graph_proto.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(|i| i.name.clone()).collect();
    let onnx_outputs = graph_proto.output.iter().map(|o| o.name.clone()).collect();
    Ok(Import { program, weights, graph, batch, onnx_inputs, onnx_outputs })
}

/// Compiles `program` and checks that it prints as `want`.
fn check(program: &str, batch: usize, want: &str) -> Result<Graph, String> {
    let graph = compile_source(program, &BuildOptions { batch, input_shape: None }).map_err(|diags| {
        let first = diags.first().map(|d| d.message.clone()).unwrap_or_default();
        format!("internal error: the written program does not compile ({first}):\n{program}")
    })?;
    let have = crate::ir::print(&graph);
    if want != have {
        let line = want.lines().zip(have.lines()).find(|(a, b)| a != b);
        return Err(format!(
            "internal error: the written program does not elaborate to the imported graph; first difference:\n  imported: {}\n  written:  {}",
            line.map(|l| l.0).unwrap_or("(length)"),
            line.map(|l| l.1).unwrap_or("(length)")
        ));
    }
    Ok(graph)
}

/// [`import`] under the name the node-test harness calls.
pub fn import_bytes(bytes: &[u8]) -> Result<Import, ImportError> {
    import(bytes)
}
