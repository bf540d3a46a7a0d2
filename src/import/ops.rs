//! ONNX nodes to IR nodes: one arm per ONNX op, and the multi-node patterns exporters
//! write for ops ONNX lacks (SiLU, GELU, Hardsigmoid, channel shuffle, PyTorch's
//! LocalResponseNorm, `linear` on more than two dimensions, `layer_norm2d`), matched
//! forward from their first node and imported as one IR node named after their last.
//!
//! Each IR node gets a name: our exporter's node names are the IR's layer paths and are
//! kept; a PyTorch name (`/layer1/layer1.0/relu/Relu`) gives the layer's scope
//! (`layer1.0`) and leaves the name within it to the writer ([`Imported::free`]).

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{GraphProto, NodeProto, tensor_proto::DataType, type_proto};

use super::ImportError;
use super::model::{self, Const, Data, attr, attr_float, attr_int, attr_ints, attr_string};
use crate::ir::shape::{infer, same_pad};
use crate::ir::{Activation, Conv, Graph, Hw, Node, NodeId, Op, Output, Pad, ParamRole, Pool};
use crate::tensor::Tensor;

/// Most graph inputs' dimensions; larger is refused before anything is allocated.
const MAX_DIM: i64 = 1 << 24;

/// The imported graph before the writer has named every layer.
pub struct Imported {
    pub graph: Graph,
    /// Nodes whose name is only a scope: the writer picks the name within it.
    pub free: HashMap<NodeId, String>,
    /// Each weighted node's tensors by role, named once the node's name is final.
    pub tensors: HashMap<NodeId, Vec<(ParamRole, Tensor)>>,
}

#[derive(Clone)]
enum Val {
    Node(NodeId),
    Const(Const),
}

struct Importer<'m> {
    nodes: &'m [NodeProto],
    opset: i64,
    values: HashMap<String, Val>,
    /// How many node inputs and graph outputs read each value.
    uses: HashMap<&'m str, usize>,
    /// Index of the node reading each value, when one node reads it.
    reader: HashMap<&'m str, usize>,
    /// The node computing each value.
    producer: HashMap<&'m str, usize>,
    done: Vec<bool>,
    out: Imported,
    names: HashSet<String>,
    graph_outputs: HashSet<&'m str>,
}

fn err(node: &NodeProto, what: impl Into<String>) -> ImportError {
    ImportError::node(node, what)
}

/// A node out of scope by design: dimension 0 of every tensor is the batch, and a cnnc
/// program describes one sample (its code runs any batch size), so an op that mixes
/// dimension 0 with the others, reduces over it or indexes something by it has no
/// program. `what` says how this node does.
fn mixes_batch(node: &NodeProto, what: impl std::fmt::Display) -> ImportError {
    err(
        node,
        format!(
            "{what}: it mixes the batch (dimension 0) with the other dimensions, out of scope by design (a cnnc program describes one sample and runs any batch size)"
        ),
    )
}

/// Converts the model's graph.
pub fn import_graph(g: &GraphProto, opset: i64) -> Result<Imported, ImportError> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    let mut reader = HashMap::new();
    let mut producer = HashMap::new();
    for (i, node) in g.node.iter().enumerate() {
        for output in node.output.iter().filter(|s| !s.is_empty()) {
            producer.insert(output.as_str(), i);
        }
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            *uses.entry(input.as_str()).or_default() += 1;
            reader.insert(input.as_str(), i);
        }
    }
    for o in &g.output {
        *uses.entry(o.name.as_str()).or_default() += 1;
    }
    let mut im = Importer {
        nodes: &g.node,
        opset,
        values: HashMap::new(),
        uses,
        reader,
        producer,
        done: vec![false; g.node.len()],
        out: Imported {
            graph: Graph::new(sanitize_ident(&g.name, "net")),
            free: HashMap::new(),
            tensors: HashMap::new(),
        },
        names: HashSet::new(),
        graph_outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
    };
    for t in &g.initializer {
        let c = model::tensor(t).map_err(ImportError::new)?;
        im.values.insert(t.name.clone(), Val::Const(c));
    }
    for input in &g.input {
        if im.values.contains_key(&input.name) {
            continue; // an initializer listed as an input (IR version < 4)
        }
        let Some(type_proto::Value::TensorType(t)) = input.type_.value.as_ref() else {
            return Err(ImportError::new(format!("graph input `{}` is not a tensor", input.name)));
        };
        if t.elem_type != DataType::FLOAT as i32 {
            return Err(ImportError::new(format!("graph input `{}` is not float32", input.name)));
        }
        let dims: Vec<i64> = t
            .shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                _ => -1,
            })
            .collect();
        if dims.contains(&0) {
            let why = format!(
                "its input `{}` of shape {dims:?} is zero-size (it holds no values), which cnnc does not compute",
                input.name
            );
            return Err(match g.node.iter().find(|n| n.input.contains(&input.name)) {
                Some(node) => err(node, why),
                None => ImportError::new(format!("graph input `{}`: {why}", input.name)),
            });
        }
        // A symbolic batch (`dynamic_axes`) is imported at 1: the program holds no batch.
        let mut dims = dims;
        if let Some(first) = dims.first_mut()
            && *first < 0
        {
            *first = 1;
        }
        if !(1..=4).contains(&dims.len()) || dims.iter().any(|&d| !(1..=MAX_DIM).contains(&d)) {
            return Err(ImportError::new(format!(
                "graph input `{}` has shape {dims:?}; cnnc needs [N, C, H, W], [N, C, L], [N, F] or [N], static but for N (-1: a symbolic dimension)",
                input.name
            )));
        }
        let name = sanitize_ident(&input.name, "input");
        if !im.names.insert(name.clone()) {
            return Err(ImportError::new(format!("two graph inputs are named `{name}`")));
        }
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let id = im.out.graph.add_node(Node::new(Op::Input { name: name.clone() }, name, shape, vec![]), &[]);
        im.values.insert(input.name.clone(), Val::Node(id));
    }
    if im.out.graph.inputs.is_empty() {
        return Err(ImportError::new("the graph has no input"));
    }
    im.check_batch(g)?;
    // Constants first: they read nothing, and torch.onnx places them just before their
    // reader, which may be past the start of a pattern that needs them.
    for i in 0..g.node.len() {
        if g.node[i].op_type == "Constant" && g.node[i].input.is_empty() {
            im.node(i)?;
        }
    }
    for i in 0..g.node.len() {
        if !im.done[i] {
            im.node(i)?;
        }
    }
    im.name_leaf_modules();
    for o in &g.output {
        // An output that is an input itself (an `Identity` or `Dropout` of it): an
        // `identity` node gives it a tensor of its own to name.
        if let Some(Val::Node(id)) = im.values.get(&o.name)
            && matches!(im.out.graph.node(*id).op, Op::Input { .. })
        {
            let id = *id;
            let node = NodeProto { op_type: "Identity".into(), output: vec![o.name.clone()], ..Default::default() };
            let copy = im.add(&node, None, Op::Identity, &[id], vec![])?;
            im.values.insert(o.name.clone(), Val::Node(copy));
        }
        match im.values.get(&o.name) {
            Some(Val::Node(id)) => {
                // `output` is a keyword, and the name the language gives a network's result.
                // A lone output whose name is no identifier (torch.onnx's `191`) is the
                // network's result, `output`.
                let plain = o.name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && o.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let name = if o.name == "output" || (g.output.len() == 1 && !plain) {
                    "output".to_string()
                } else {
                    sanitize_ident(&o.name, "output")
                };
                im.out.graph.outputs.push(Output { name, node: *id });
            }
            Some(Val::Const(_)) => {
                return Err(ImportError::new(format!("graph output `{}` is a constant", o.name)));
            }
            None => return Err(ImportError::new(format!("graph output `{}` is computed by no node", o.name))),
        }
    }
    if im.out.graph.outputs.is_empty() {
        return Err(ImportError::new("the graph has no output"));
    }
    Ok(im.out)
}

/// `name` if it is an identifier of the language, else a cleaned-up one.
pub fn sanitize_ident(name: &str, fallback: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    s = s.trim_matches('_').to_string();
    if s.is_empty() {
        s = fallback.to_string();
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) || super::write::is_reserved(&s) {
        s = format!("{fallback}_{s}");
    }
    s
}

/// The layer scope of a PyTorch node name: `/layer1/layer1.0/relu/Relu` -> `layer1.0`
/// plus the module's own name `relu`; the segments name modules by their attribute or
/// by their full path.
fn torch_path(name: &str) -> Vec<String> {
    if name.len() > MAX_PATH_CHARS || name.matches(['/', '.']).count() > MAX_PATH_DEPTH {
        return Vec::new();
    }
    let segments: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    // A Sequential's child appears as `block.0` after `block`: the part past the
    // previous segment is the child's name.
    let mut path: Vec<String> = Vec::new();
    let mut previous: Option<&str> = None;
    for s in &segments[..segments.len().saturating_sub(1)] {
        if s.is_empty() {
            continue;
        }
        match previous.and_then(|p| s.strip_prefix(p)).and_then(|rest| rest.strip_prefix('.')) {
            Some(rest) => path.extend(rest.split('.').map(String::from)),
            None => path.extend(s.split('.').map(String::from)),
        }
        previous = Some(s);
    }
    path.retain(|p| !p.is_empty() && !p.contains(char::is_whitespace));
    path
}

/// Longest layer path kept from a model (longer names, and deeper ones, are left for
/// the writer to choose).
const MAX_PATH_CHARS: usize = 512;
const MAX_PATH_DEPTH: usize = 32;

fn is_layer_path(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PATH_CHARS
        && name.split('.').count() <= MAX_PATH_DEPTH
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

impl<'m> Importer<'m> {
    /// A node left free in the scope of a PyTorch module (`layer1.0.relu`, from
    /// `/layer1/layer1.0/relu/Relu`) is that module's op when the module is a leaf (no
    /// other layer lives inside it) and computes nothing else: it takes the module's
    /// path as its name. Ops of a container's `forward` (`/layer1/layer1.0/Add`) stay
    /// free in the container's scope.
    fn name_leaf_modules(&mut self) {
        let graph = &self.out.graph;
        // Every proper prefix of a layer path is a container.
        let mut containers: HashSet<String> = HashSet::new();
        let named = graph
            .node_ids()
            .into_iter()
            .filter(|id| !self.out.free.contains_key(id))
            .map(|id| graph.node(id).name.clone());
        for path in self.out.free.values().cloned().chain(named) {
            for (k, c) in path.char_indices() {
                if c == '.' {
                    containers.insert(path[..k].to_string());
                }
            }
        }
        let mut count: HashMap<&str, usize> = HashMap::new();
        for m in self.out.free.values() {
            *count.entry(m.as_str()).or_default() += 1;
        }
        let mut ids: Vec<NodeId> = self.out.free.keys().copied().collect();
        ids.sort();
        let mut renamed = Vec::new();
        for id in ids {
            let module = &self.out.free[&id];
            let container = containers.contains(module);
            if module.is_empty()
                || container
                || count[module.as_str()] != 1
                || self.names.contains(module)
                || !is_layer_path(module)
            {
                continue;
            }
            renamed.push((id, module.clone()));
        }
        for (id, module) in renamed {
            self.names.insert(module.clone());
            self.out.free.remove(&id);
            self.out.graph.node_mut(id).name = module;
        }
    }

    /// Dimension 0 of every tensor is the batch: an input whose dimension 0 differs from
    /// the first input's has no batch axis (ONNX broadcasts it against the others' last
    /// dimensions), which a program of one sample cannot express. Refused at the first
    /// node reading it.
    fn check_batch(&self, g: &GraphProto) -> Result<(), ImportError> {
        let graph = &self.out.graph;
        let first = graph.node(graph.inputs[0]);
        for &id in &graph.inputs[1..] {
            let input = graph.node(id);
            if input.shape[0] == first.shape[0] {
                continue;
            }
            let onnx_name = self
                .values
                .iter()
                .find(|(_, v)| matches!(v, Val::Node(n) if *n == id))
                .map(|(k, _)| k.as_str())
                .unwrap_or_default();
            let why = format!(
                "its input `{onnx_name}` of shape {:?} has no batch axis: its dimension 0 differs from the batch ({}) of `{}` {:?}, and a cnnc program describes one sample (dimension 0 of every tensor is the batch)",
                input.shape, first.shape[0], first.name, first.shape
            );
            return Err(match g.node.iter().find(|n| n.input.iter().any(|i| i == onnx_name)) {
                Some(node) => err(node, why),
                None => ImportError::new(format!("graph input `{onnx_name}`: {why}")),
            });
        }
        Ok(())
    }

    fn node_ref(&self, i: usize) -> &'m NodeProto {
        &self.nodes[i]
    }

    /// The one node reading `value`, if exactly one node does and it is no graph output.
    fn sole_reader(&self, value: &str) -> Option<usize> {
        (self.uses.get(value) == Some(&1) && !self.graph_outputs.contains(value))
            .then(|| self.reader.get(value).copied())
            .flatten()
    }

    fn input(&self, node: &NodeProto, i: usize) -> Result<&Val, ImportError> {
        let name =
            node.input.get(i).filter(|s| !s.is_empty()).ok_or_else(|| err(node, format!("input {i} is missing")))?;
        self.values.get(name).ok_or_else(|| err(node, format!("input `{name}` is computed by no node before it")))
    }

    fn dynamic(&self, node: &NodeProto, i: usize) -> Result<NodeId, ImportError> {
        match self.input(node, i)? {
            Val::Node(id) => Ok(*id),
            Val::Const(_) => Err(err(node, format!("input {i} is a constant; cnnc needs a computed tensor there"))),
        }
    }

    fn constant(&self, node: &NodeProto, i: usize, what: &str) -> Result<Const, ImportError> {
        match self.input(node, i)? {
            Val::Const(c) => Ok(c.clone()),
            Val::Node(_) => Err(err(node, format!("{what} (input {i}) must be a constant initializer"))),
        }
    }

    fn opt_constant(&self, node: &NodeProto, i: usize) -> Option<Const> {
        match node.input.get(i).filter(|s| !s.is_empty()).and_then(|n| self.values.get(n)) {
            Some(Val::Const(c)) => Some(c.clone()),
            _ => None,
        }
    }

    fn shape(&self, id: NodeId) -> Vec<usize> {
        self.out.graph.node(id).shape.clone()
    }

    fn set(&mut self, node: &NodeProto, output: usize, val: Val) -> Result<(), ImportError> {
        let name = node.output.get(output).ok_or_else(|| err(node, format!("output {output} is missing")))?;
        self.values.insert(name.clone(), val);
        Ok(())
    }

    /// The IR name for a node: its ONNX name when that is a layer path not yet taken;
    /// else a scope (from a PyTorch name, or the `hint` path) with the name left free.
    fn name_for(&mut self, onnx_name: &str, hint: Option<&str>) -> (String, Option<String>) {
        let hint = hint.filter(|h| is_layer_path(h));
        if let Some(h) = hint
            && !self.names.contains(h)
        {
            self.names.insert(h.to_string());
            return (h.to_string(), None);
        }
        if is_layer_path(onnx_name) && !self.names.contains(onnx_name) {
            self.names.insert(onnx_name.to_string());
            return (onnx_name.to_string(), None);
        }
        let scope = if onnx_name.starts_with('/') { torch_path(onnx_name).join(".") } else { String::new() };
        // The module's own name is the scope's last part: the op lives in its parent
        // unless the module is a container of several ops.
        (String::new(), Some(scope))
    }

    /// Adds an IR node named after ONNX node `named` (and `hint`, a weight's path).
    fn add(
        &mut self,
        named: &NodeProto,
        hint: Option<&str>,
        op: Op,
        operands: &[NodeId],
        tensors: Vec<(ParamRole, Tensor)>,
    ) -> Result<NodeId, ImportError> {
        let shapes: Vec<Vec<usize>> = operands.iter().map(|&o| self.shape(o)).collect();
        let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let shape = infer(&op, &refs).map_err(|e| err(named, format!("cannot be expressed: {}", e.message)))?;
        let expected = op.param_shapes(refs.first().copied().unwrap_or(&[]));
        for ((role, want), (_, have)) in expected.iter().zip(&tensors) {
            if *want != have.shape {
                return Err(err(
                    named,
                    format!(
                        "its {} has shape {}, expected {}",
                        role.suffix(),
                        have.shape_string(),
                        crate::ir::shape::fmt_shape(want)
                    ),
                ));
            }
        }
        if expected.len() != tensors.len() {
            return Err(err(named, "its weights do not fit the layer"));
        }
        let (name, scope) = self.name_for(&named.name, hint);
        let id = self.out.graph.add_node(Node::new(op, name, shape, vec![]), operands);
        if let Some(scope) = scope {
            self.out.free.insert(id, scope);
        }
        if !tensors.is_empty() {
            self.out.tensors.insert(id, tensors);
        }
        Ok(id)
    }

    fn float_tensor(c: &Const, shape: Vec<usize>) -> Tensor {
        Tensor { shape, data: c.floats() }
    }

    /// The layer path a weight's name gives (`layer1.0.conv1.weight` -> `layer1.0.conv1`).
    fn weight_path(c: &Const, suffix: &str) -> Option<String> {
        let origin = c.origin.as_deref()?;
        if suffix.is_empty() {
            return Some(origin.to_string());
        }
        origin.strip_suffix(&format!(".{suffix}")).map(String::from)
    }

    fn node(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        self.done[i] = true;
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(err(node, format!("operators of domain `{}` are not supported", node.domain)));
        }
        let op = node.op_type.as_str();
        // Constants first: a node whose inputs are all constant is folded.
        if op == "Constant" {
            let c = if let Some(a) = attr(node, "value") {
                model::tensor(&a.t).map_err(|e| err(node, e))?
            } else if let Some(a) = attr(node, "value_float") {
                Const::f32(vec![], vec![a.f])
            } else if let Some(a) = attr(node, "value_int") {
                Const::i64(vec![], vec![a.i])
            } else if let Some(a) = attr(node, "value_ints") {
                Const::i64(vec![a.ints.len()], a.ints.clone())
            } else if let Some(a) = attr(node, "value_floats") {
                Const::f32(vec![a.floats.len()], a.floats.clone())
            } else {
                return Err(err(node, "a Constant without a value cnnc reads (value, value_float(s), value_int(s))"));
            };
            return self.set(node, 0, Val::Const(c));
        }
        let inputs: Vec<Option<&Val>> =
            node.input.iter().map(|n| if n.is_empty() { None } else { self.values.get(n) }).collect();
        if let Some(missing) = node.input.iter().zip(&inputs).find(|(n, v)| !n.is_empty() && v.is_none()) {
            return Err(err(
                node,
                format!("input `{}` is computed by no node before it (missing initializer?)", missing.0),
            ));
        }
        if op == "Shape" {
            let Some(Some(Val::Node(id))) = inputs.first() else {
                return Err(err(node, "Shape of a constant or of nothing"));
            };
            let dims: Vec<i64> = self.shape(*id).iter().map(|&d| d as i64).collect();
            let start = attr_int(node, "start", 0);
            let end = attr_int(node, "end", dims.len() as i64);
            let clamp = |v: i64| -> usize {
                let r = dims.len() as i64;
                (if v < 0 { v + r } else { v }).clamp(0, r) as usize
            };
            let (s, e) = (clamp(start), clamp(end));
            let picked = dims[s..e.max(s)].to_vec();
            return self.set(node, 0, Val::Const(Const::i64(vec![picked.len()], picked)));
        }
        if !inputs.is_empty() && inputs.iter().all(|v| matches!(v, None | Some(Val::Const(_)))) {
            let consts: Vec<Option<&Const>> = inputs
                .iter()
                .map(|v| match v {
                    Some(Val::Const(c)) => Some(c),
                    _ => None,
                })
                .collect();
            return match model::fold(node, &consts, self.opset).map_err(|e| err(node, e))? {
                Some(results) => {
                    for (k, c) in results.into_iter().enumerate() {
                        self.set(node, k, Val::Const(c))?;
                    }
                    Ok(())
                }
                None => Err(err(node, "computes on constants only, and cnnc cannot fold this op")),
            };
        }
        match op {
            "Identity" | "Dropout" => {
                if node.output.len() > 1
                    && node.output[1..].iter().any(|o| !o.is_empty() && self.uses.contains_key(o.as_str()))
                {
                    return Err(err(node, "its mask output is used (training mode)"));
                }
                let v = self.input(node, 0)?.clone();
                self.set(node, 0, v)
            }
            "Conv" => self.conv(node),
            "MaxPool" | "AveragePool" => self.pool(node),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.rank4(node)?;
                let op = if op == "GlobalAveragePool" { Op::GlobalAvgPool } else { Op::GlobalMaxPool };
                let id = self.add(node, None, op, &[x], vec![])?;
                self.set(node, 0, Val::Node(id))
            }
            "ReduceMean" | "ReduceMax" => self.reduce(node),
            "BatchNormalization" => self.batch_norm(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(i),
            "Flatten" => {
                let x = self.dynamic(node, 0)?;
                let rank = self.shape(x).len();
                let axis = attr_int(node, "axis", 1);
                if model::axis(axis, rank) != Some(1) {
                    return Err(mixes_batch(node, format!("Flatten at axis {axis} of a rank-{rank} tensor")));
                }
                let id = self.add(node, None, Op::Flatten, &[x], vec![])?;
                self.set(node, 0, Val::Node(id))
            }
            "Reshape" => self.reshape(i),
            "Relu" => self.activation(node, Activation::Relu),
            "LeakyRelu" => {
                let slope = shortest(attr_float(node, "alpha", 0.01));
                self.activation(node, Activation::LeakyRelu { slope })
            }
            "Sigmoid" => self.sigmoid(i),
            "Tanh" => self.activation(node, Activation::Tanh),
            "HardSwish" => self.activation(node, Activation::HardSwish),
            "HardSigmoid" => {
                let (alpha, beta) = (attr_float(node, "alpha", 0.2), attr_float(node, "beta", 0.5));
                if !(alpha.is_finite() && beta.is_finite()) {
                    return Err(err(node, format!("HardSigmoid with alpha={alpha}, beta={beta}")));
                }
                self.activation(node, hard_sigmoid(alpha, beta))
            }
            "Erf" => self.activation(node, Activation::Erf),
            // float32 like float32 (every computed tensor is): the identity; a constant
            // takes the element type of a constant `like`.
            "CastLike" => {
                let v = match (self.input(node, 0)?.clone(), self.input(node, 1)?) {
                    (Val::Const(c), Val::Const(like)) if matches!(like.data, Data::I64(_)) => {
                        let ints = c.ints().ok_or_else(|| err(node, "a CastLike of fractions to integers"))?;
                        Val::Const(Const { dims: c.dims.clone(), data: Data::I64(ints), origin: c.origin.clone() })
                    }
                    (Val::Const(c), _) => Val::Const(Const { data: Data::F32(c.floats()), ..c }),
                    (v, _) => v,
                };
                self.set(node, 0, v)
            }
            "Clip" => self.clip(node),
            "Gelu" => {
                let tanh = match attr_string(node, "approximate").as_deref() {
                    None | Some("none") => false,
                    Some("tanh") => true,
                    Some(other) => return Err(err(node, format!("Gelu with approximate=\"{other}\""))),
                };
                self.activation(node, Activation::Gelu { tanh })
            }
            "Softmax" => {
                let x = self.dynamic(node, 0)?;
                let rank = self.shape(x).len();
                let default = if self.opset >= 13 { -1 } else { 1 };
                let axis = model::axis(attr_int(node, "axis", default), rank);
                // Before opset 13, Softmax flattens the dimensions from `axis` on.
                let axis = match axis {
                    Some(axis) if axis >= 1 && (self.opset >= 13 || axis + 1 == rank) => axis,
                    Some(0) => return Err(mixes_batch(node, "Softmax over dimension 0")),
                    _ => {
                        return Err(err(
                            node,
                            "Softmax over several dimensions (before opset 13, from `axis` on) is not expressible",
                        ));
                    }
                };
                // Over another dimension than 1: that dimension swapped with 1 around it.
                let x = self.swap_with_dim1(node, x, axis)?;
                let id = self.add(node, None, Op::Softmax, &[x], vec![])?;
                let id = self.swap_with_dim1(node, id, axis)?;
                self.set(node, 0, Val::Node(id))
            }
            "Add" | "Mul" => self.arith(i),
            "Div" => self.div(i),
            "Concat" if node.input.len() == 1 => {
                // torch.cat of a one-element list: the identity.
                let v = self.input(node, 0)?.clone();
                self.set(node, 0, v)
            }
            "Concat" => {
                let mut operands = Vec::new();
                for k in 0..node.input.len() {
                    operands.push(self.dynamic(node, k)?);
                }
                let rank = operands.first().map(|&o| self.shape(o).len()).unwrap_or(0);
                let axis = match model::axis(attr_int(node, "axis", 1), rank) {
                    Some(0) => return Err(mixes_batch(node, "Concat along dimension 0")),
                    Some(axis) => axis,
                    None => return Err(err(node, format!("axis {} out of range", attr_int(node, "axis", 1)))),
                };
                // Along another dimension than 1: each operand's dimension swapped with 1.
                let mut swapped = Vec::new();
                for operand in operands {
                    swapped.push(self.swap_with_dim1(node, operand, axis)?);
                }
                let id = self.add(node, None, Op::Concat, &swapped, vec![])?;
                let id = self.swap_with_dim1(node, id, axis)?;
                self.set(node, 0, Val::Node(id))
            }
            "Slice" => self.slice(i),
            "Split" => self.split(node),
            "Transpose" => self.transpose(i),
            "LayerNormalization" => self.layer_norm(node, None),
            "LRN" => {
                let x = self.rank4(node)?;
                let size = attr_int(node, "size", 0);
                if size <= 0 || size % 2 == 0 {
                    return Err(err(
                        node,
                        format!(
                            "LRN with size {size}: ONNX centres even windows unlike PyTorch's LocalResponseNorm; only odd sizes are imported"
                        ),
                    ));
                }
                let op = Op::Lrn {
                    size: size as usize,
                    alpha: shortest(attr_float(node, "alpha", 1e-4)),
                    beta: shortest(attr_float(node, "beta", 0.75)),
                    k: shortest(attr_float(node, "bias", 1.0)),
                };
                let id = self.add(node, None, op, &[x], vec![])?;
                self.set(node, 0, Val::Node(id))
            }
            _ => Err(err(node, "this op is not supported by cnnc import")),
        }
    }

    /// `x` with dimensions 1 and `axis` exchanged (a `permute`), or `x` itself when
    /// `axis` is 1: how an op of the language that works along dimension 1 (softmax,
    /// concat) runs along another.
    fn swap_with_dim1(&mut self, node: &NodeProto, x: NodeId, axis: usize) -> Result<NodeId, ImportError> {
        if axis == 1 {
            return Ok(x);
        }
        let mut perm: Vec<usize> = (0..self.shape(x).len()).collect();
        perm.swap(1, axis);
        self.add(node, None, Op::Permute { perm }, &[x], vec![])
    }

    fn rank4(&self, node: &NodeProto) -> Result<NodeId, ImportError> {
        let x = self.dynamic(node, 0)?;
        let shape = self.shape(x);
        if shape.len() != 4 {
            return Err(err(node, format!("needs a 4-D [N, C, H, W] input, got {shape:?}")));
        }
        Ok(x)
    }

    fn activation(&mut self, node: &NodeProto, a: Activation) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        let id = self.add(node, None, Op::Activation(a), &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    /// Two-element spatial attribute (default `d`), refusing other ranks.
    fn hw_attr(node: &NodeProto, name: &str, default: usize) -> Result<Hw, ImportError> {
        match attr_ints(node, name) {
            None => Ok(Hw::square(default)),
            Some(v) if v.len() == 2 && v.iter().all(|&x| (1..=MAX_DIM).contains(&x)) => {
                Ok(Hw::new(v[0] as usize, v[1] as usize))
            }
            Some(v) => Err(err(node, format!("`{name}` = {v:?}: cnnc takes two positive values (2-D only)"))),
        }
    }

    /// The padding of a window op from `pads` or `auto_pad`.
    fn pads(node: &NodeProto, input: &[usize], kernel: Hw, stride: Hw, dilation: Hw) -> Result<Pad, ImportError> {
        let auto = attr_string(node, "auto_pad").unwrap_or_default();
        let hw = Hw::new(input[2], input[3]);
        match auto.as_str() {
            "" | "NOTSET" => match attr_ints(node, "pads") {
                None => Ok(Pad::symmetric(Hw::square(0))),
                Some(p) if p.len() == 4 && p.iter().all(|&x| (0..=MAX_DIM).contains(&x)) => {
                    Ok(Pad { top: p[0] as usize, left: p[1] as usize, bottom: p[2] as usize, right: p[3] as usize })
                }
                Some(p) => Err(err(node, format!("pads {p:?}: cnnc takes four non-negative values (2-D only)"))),
            },
            "VALID" => Ok(Pad::symmetric(Hw::square(0))),
            "SAME_UPPER" => Ok(same_pad(hw, kernel, stride, dilation)),
            // The odd pixel at the top/left: `(top, left, bottom, right)` with the sides swapped.
            "SAME_LOWER" => {
                let p = same_pad(hw, kernel, stride, dilation);
                Ok(Pad { top: p.bottom, left: p.right, bottom: p.top, right: p.left })
            }
            other => Err(err(node, format!("auto_pad={other}"))),
        }
    }

    fn conv(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let x = self.rank4(node)?;
        let w = self.constant(node, 1, "the weight")?;
        if w.dims.len() != 4 {
            return Err(err(node, format!("weight of shape {:?}; cnnc imports 2-D convolutions", w.dims)));
        }
        let b = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => Some(self.constant(node, 2, "the bias")?),
            None => None,
        };
        let kernel = Hw::new(w.dims[2], w.dims[3]);
        if let Some(k) = attr_ints(node, "kernel_shape")
            && k != [w.dims[2] as i64, w.dims[3] as i64]
        {
            return Err(err(node, format!("kernel_shape {k:?} disagrees with the weight's shape {:?}", w.dims)));
        }
        let stride = Self::hw_attr(node, "strides", 1)?;
        let dilation = Self::hw_attr(node, "dilations", 1)?;
        let input = self.shape(x);
        let pad = Self::pads(node, &input, kernel, stride, dilation)?;
        let groups = attr_int(node, "group", 1);
        if groups < 1 || groups > input[1] as i64 {
            return Err(err(node, format!("group = {groups}")));
        }
        let conv =
            Conv { out_channels: w.dims[0], kernel, stride, pad, dilation, groups: groups as usize, bias: b.is_some() };
        let mut tensors = vec![(ParamRole::Weight, Self::float_tensor(&w, w.dims.clone()))];
        if let Some(b) = &b {
            tensors.push((ParamRole::Bias, Self::float_tensor(b, vec![b.len()])));
        }
        let hint = Self::weight_path(&w, "weight");
        let id = self.add(node, hint.as_deref(), Op::Conv(conv), &[x], tensors)?;
        self.set(node, 0, Val::Node(id))
    }

    fn pool(&mut self, onnx_node: &NodeProto) -> Result<(), ImportError> {
        let x = self.dynamic(onnx_node, 0)?;
        let rank = self.shape(x).len();
        if rank != 3 && rank != 4 {
            return Err(err(
                onnx_node,
                format!("needs a 4-D [N, C, H, W] or 3-D [N, C, L] input, got {:?}", self.shape(x)),
            ));
        }
        // 1-D pooling on [N, C, L]: the node with its one-axis attributes as the 1 x k
        // window of the 2-D pooling over [N, C, 1, L].
        let flat;
        let node = if rank == 3 {
            let mut n = onnx_node.clone();
            for a in &mut n.attribute {
                match a.name.as_str() {
                    "kernel_shape" | "strides" | "dilations" if a.ints.len() == 1 => a.ints.insert(0, 1),
                    "pads" if a.ints.len() == 2 => a.ints = vec![0, a.ints[0], 0, a.ints[1]],
                    "kernel_shape" | "strides" | "dilations" | "pads" => {
                        return Err(err(onnx_node, format!("`{}` = {:?} on a 3-D input", a.name, a.ints)));
                    }
                    _ => {}
                }
            }
            flat = n;
            &flat
        } else {
            onnx_node
        };
        if node.output.len() > 1 && node.output[1..].iter().any(|o| !o.is_empty()) {
            return Err(err(node, "MaxPool's Indices output is not supported"));
        }
        let kernel = match attr_ints(node, "kernel_shape") {
            Some(_) => Self::hw_attr(node, "kernel_shape", 1)?,
            None => return Err(err(node, "kernel_shape is missing")),
        };
        let stride = Self::hw_attr(node, "strides", 1)?;
        let dilation = Self::hw_attr(node, "dilations", 1)?;
        if attr_int(node, "storage_order", 0) != 0 {
            return Err(err(node, "storage_order=1"));
        }
        let input = crate::ir::shape::as_4d(&self.shape(x));
        let pad = Self::pads(node, &input, kernel, stride, dilation)?;
        if pad.top.max(pad.bottom) >= kernel.h || pad.left.max(pad.right) >= kernel.w {
            return Err(err(node, format!("pool padding {pad} not smaller than the kernel {kernel}")));
        }
        if rank == 3
            && pad.left != pad.right
            && crate::ir::shape::same_pad(Hw::new(1, input[3]), kernel, stride, dilation) != pad
        {
            return Err(err(
                node,
                format!("1-D pads [{}, {}] differ, which cnnc writes only as `same`", pad.left, pad.right),
            ));
        }
        let p = Pool {
            kernel,
            stride,
            pad,
            dilation,
            ceil: attr_int(node, "ceil_mode", 0) != 0,
            count_pad: attr_int(node, "count_include_pad", 0) != 0,
        };
        let whole = rank == 4 && kernel == Hw::new(input[2], input[3]) && stride == kernel && pad.is_zero();
        let op = match node.op_type.as_str() {
            "MaxPool" => Op::MaxPool(p),
            // One window over the whole map: our exporter's adaptive_avg_pool(1).
            _ if whole => Op::AdaptiveAvgPool { out: Hw::square(1) },
            _ => Op::AvgPool(p),
        };
        let id = self.add(node, None, op, &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    fn reduce(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        let rank = self.shape(x).len();
        let listed =
            if self.opset >= 18 { self.opt_constant(node, 1).and_then(|c| c.ints()) } else { attr_ints(node, "axes") }
                .unwrap_or_default();
        // No axes: every dimension (unless `noop_with_empty_axes`, the identity).
        if listed.is_empty() && attr_int(node, "noop_with_empty_axes", 0) != 0 {
            let v = self.input(node, 0)?.clone();
            return self.set(node, 0, v);
        }
        let mut axes: Vec<usize> = if listed.is_empty() {
            (0..rank).collect()
        } else {
            listed
                .iter()
                .map(|&a| model::axis(a, rank).ok_or_else(|| err(node, format!("axes {listed:?} out of range"))))
                .collect::<Result<_, _>>()?
        };
        axes.sort_unstable();
        axes.dedup();
        if axes.first() == Some(&0) {
            return Err(mixes_batch(node, format!("{} over axes {axes:?} reduces dimension 0", node.op_type)));
        }
        let keepdim = attr_int(node, "keepdims", 1) != 0;
        if node.op_type == "ReduceMean" && (rank != 4 || axes != [2, 3]) {
            let id = self.add(node, None, Op::Mean { dims: axes, keepdim }, &[x], vec![])?;
            return self.set(node, 0, Val::Node(id));
        }
        if rank != 4 || axes != [2, 3] {
            return Err(err(
                node,
                format!("{} over axes {axes:?}; cnnc reduces over H and W (2, 3) only", node.op_type),
            ));
        }
        let op = if node.op_type == "ReduceMean" { Op::GlobalAvgPool } else { Op::GlobalMaxPool };
        let id = self.add(node, None, op, &[x], vec![])?;
        let id = if !keepdim {
            let mut flat = node.clone();
            flat.name = String::new();
            if let Some((scope, _)) = node.name.rsplit_once('/') {
                flat.name = format!("{scope}/Flatten");
            }
            self.add(&flat, None, Op::Flatten, &[id], vec![])?
        } else {
            id
        };
        self.set(node, 0, Val::Node(id))
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        if attr_int(node, "training_mode", 0) != 0
            || node.output.iter().skip(1).any(|o| !o.is_empty() && self.uses.contains_key(o.as_str()))
        {
            return Err(err(node, "BatchNormalization in training mode is not supported"));
        }
        let c = self.shape(x).get(1).copied().unwrap_or(0);
        let mut tensors = Vec::new();
        let roles = [ParamRole::Weight, ParamRole::Bias, ParamRole::RunningMean, ParamRole::RunningVar];
        let what = ["the scale", "the bias", "the mean", "the variance"];
        let mut hint = None;
        for (k, role) in roles.into_iter().enumerate() {
            let t = self.constant(node, k + 1, what[k])?;
            if t.len() != c {
                return Err(err(node, format!("{} has {} values for {c} channels", what[k], t.len())));
            }
            if hint.is_none() {
                hint = Self::weight_path(&t, role.suffix());
            }
            tensors.push((role, Self::float_tensor(&t, vec![c])));
        }
        let eps = shortest(attr_float(node, "epsilon", 1e-5));
        let id = self.add(node, hint.as_deref(), Op::BatchNorm { eps }, &[x], tensors)?;
        self.set(node, 0, Val::Node(id))
    }

    fn gemm(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        if self.shape(x).len() != 2 {
            return Err(err(node, "Gemm on a tensor that is not 2-D"));
        }
        if attr_int(node, "transA", 0) != 0 {
            return Err(mixes_batch(node, "Gemm with transA=1 multiplies along dimension 0"));
        }
        let (alpha, beta) = (attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0));
        let w = self.constant(node, 1, "the weight")?;
        if w.dims.len() != 2 {
            return Err(err(node, format!("weight of shape {:?}", w.dims)));
        }
        let w = if attr_int(node, "transB", 0) != 0 {
            w
        } else {
            model::transpose(&w, &[1, 0]).map_err(|e| err(node, e))?
        };
        // `alpha * (x W^T) + beta * C`: alpha folds into the weight, beta into the bias.
        let w = if alpha == 1.0 { w } else { scaled(&w, alpha) };
        let out = w.dims[0];
        let b = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => {
                let b = self.constant(node, 2, "the bias")?;
                // C broadcasts to [batch, out]: one value per output ([out], [1, out]) or
                // one for all (a scalar, [1], [1, 1]), expanded.
                let per_output = b.dims.last() == Some(&out) && b.len() == out;
                let one = b.len() == 1;
                if b.dims.len() == 2 && b.dims[0] > 1 {
                    return Err(mixes_batch(node, format!("C of shape {:?} adds a bias row per sample", b.dims)));
                }
                if b.dims.len() > 2 || !(per_output || one) {
                    return Err(err(
                        node,
                        format!(
                            "C of shape {:?} for {out} outputs; cnnc adds one bias per output (C of shape [{out}], [1, {out}] or a scalar)",
                            b.dims
                        ),
                    ));
                }
                let b = if one && !per_output {
                    Const { dims: vec![out], data: Data::F32(vec![b.floats()[0]; out]), origin: b.origin.clone() }
                } else {
                    b
                };
                Some(if beta == 1.0 { b } else { scaled(&b, beta) })
            }
            None => None,
        };
        self.linear(node, x, w, b)
    }

    fn linear(&mut self, named: &NodeProto, x: NodeId, w: Const, b: Option<Const>) -> Result<(), ImportError> {
        let out = w.dims[0];
        let mut tensors = vec![(ParamRole::Weight, Self::float_tensor(&w, w.dims.clone()))];
        if let Some(b) = &b {
            tensors.push((ParamRole::Bias, Self::float_tensor(b, vec![out])));
        }
        let hint = Self::weight_path(&w, "weight").or_else(|| b.as_ref().and_then(|b| Self::weight_path(b, "bias")));
        let id =
            self.add(named, hint.as_deref(), Op::Linear { out_features: out, bias: b.is_some() }, &[x], tensors)?;
        self.set(named, 0, Val::Node(id))
    }

    /// `MatMul(x, W)` with a constant `[F, out]` weight, and an `Add` of a `[out]` bias
    /// after it when that is the product's only reader: a `linear` on the last dimension.
    /// A weight of rank 1 is `linear(1)` and a `reshape` that drops the last dimension; one
    /// of rank 3 or 4 whose leading dimensions broadcast over the batch (1) is one `linear`
    /// when the others are 1 too, else one `linear` per channel (dimension 1 of a 4-D
    /// product) on that channel's `slice` of `x` (or on `x` when it has one channel),
    /// joined by a `concat`.
    fn matmul(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let x = self.dynamic(node, 0)?;
        let w = self.constant(node, 1, "the weight (a MatMul of two computed tensors is not supported)")?;
        let xs = self.shape(x);
        match w.dims.len() {
            2 => {}
            1 => return self.matmul_vector(node, x, &w),
            3 | 4 => return self.matmul_stacked(node, x, &w),
            _ => {
                return Err(err(
                    node,
                    format!("weight of shape {:?}; cnnc imports MatMul weights of rank 1 to 4", w.dims),
                ));
            }
        }
        if xs.len() < 2 {
            return Err(err(node, format!("MatMul of an input of shape {xs:?}")));
        }
        let wt = model::transpose(&w, &[1, 0]).map_err(|e| err(node, e))?;
        let out = wt.dims[0];
        if let Some(j) = node.output.first().and_then(|o| self.sole_reader(o))
            && self.nodes[j].op_type == "Add"
        {
            let add = self.node_ref(j);
            let other = if add.input[0] == node.output[0] { 1 } else { 0 };
            if let Some(b) = self.opt_constant(add, other)
                && b.len() == out
                && b.dims.last() == Some(&out)
            {
                self.done[j] = true;
                return self.linear(add, x, wt, Some(b));
            }
        }
        self.linear(node, x, wt, None)
    }

    /// `MatMul(x [N, ..., F], w [F])`: `linear(1, bias=false)` then `reshape` to `[N, ...]`.
    fn matmul_vector(&mut self, node: &NodeProto, x: NodeId, w: &Const) -> Result<(), ImportError> {
        let xs = self.shape(x);
        if !(3..=5).contains(&xs.len()) {
            return Err(err(
                node,
                format!(
                    "MatMul of {xs:?} by a vector of shape {:?} leaves a tensor of rank {}; cnnc imports it on inputs of rank 3 or 4 (dimension 0 is the batch)",
                    w.dims,
                    xs.len().saturating_sub(1)
                ),
            ));
        }
        let k = w.dims[0];
        let linear = Op::Linear { out_features: 1, bias: false };
        let product = self.add_part(node, linear, x, vec![(ParamRole::Weight, Self::float_tensor(w, vec![1, k]))])?;
        let shape = xs[1..xs.len() - 1].to_vec();
        let id = self.add(node, None, Op::Reshape { shape }, &[product], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    /// `MatMul(x, w)` with `w` of rank 3 or 4, `[..., F, out]`: the stacked dimensions of
    /// `w` aligned with those of `x` from the right (ONNX's broadcast); dimension 0, the
    /// batch, must be 1 in `w`; dimension 1 of a 4-D `x` may be per channel.
    fn matmul_stacked(&mut self, node: &NodeProto, x: NodeId, w: &Const) -> Result<(), ImportError> {
        let xs = self.shape(x);
        let r = xs.len();
        let (f, out) = (w.dims[w.dims.len() - 2], w.dims[w.dims.len() - 1]);
        if w.dims.len() > r {
            return Err(mixes_batch(
                node,
                format!(
                    "MatMul of {xs:?} by a weight of shape {:?} of higher rank: the weight's leading dimension becomes dimension 0 of the product",
                    w.dims
                ),
            ));
        }
        // The weight's stacked dimensions, aligned to x's dimensions 0..r-2.
        let mut stacked = vec![1; r - w.dims.len()];
        stacked.extend_from_slice(&w.dims[..w.dims.len() - 2]);
        if stacked[0] != 1 {
            return Err(mixes_batch(
                node,
                format!(
                    "MatMul by a weight of shape {:?}: its dimension 0 ({}) is indexed by dimension 0 of the input (only a leading 1 is expressible)",
                    w.dims, stacked[0]
                ),
            ));
        }
        let per_channel = stacked.iter().skip(1).any(|&d| d != 1);
        let k = |c: usize| -> Tensor {
            // Slice c of the stack, transposed to nn.Linear's [out, F].
            let floats = w.floats();
            let part = Const::f32(vec![f, out], floats[c * f * out..(c + 1) * f * out].to_vec());
            let t = model::transpose(&part, &[1, 0]).expect("a 2-D constant transposes");
            Self::float_tensor(&t, vec![out, f])
        };
        if !per_channel {
            let t = k(0);
            let hint = Self::weight_path(w, "weight");
            let id = self.add(
                node,
                hint.as_deref(),
                Op::Linear { out_features: out, bias: false },
                &[x],
                vec![(ParamRole::Weight, t)],
            )?;
            return self.set(node, 0, Val::Node(id));
        }
        let channels = stacked[1];
        if r != 4 || !(xs[1] == channels || xs[1] == 1) {
            return Err(err(
                node,
                format!(
                    "MatMul of {xs:?} by a weight of shape {:?}: cnnc imports a weight per channel (dimension 1) of a 4-D product only",
                    w.dims
                ),
            ));
        }
        // The slices first and together: the writer writes them as one `split`.
        let mut inputs = Vec::new();
        for c in 0..channels {
            inputs.push(if xs[1] == 1 { x } else { self.add_part(node, Op::Slice { start: c, len: 1 }, x, vec![])? });
        }
        let mut parts = Vec::new();
        for (c, &xc) in inputs.iter().enumerate() {
            let linear = Op::Linear { out_features: out, bias: false };
            parts.push(self.add_part(node, linear, xc, vec![(ParamRole::Weight, k(c))])?);
        }
        let id = self.add(node, None, Op::Concat, &parts, vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    /// A node of `node`'s expansion other than its result: left to the writer to name, in
    /// the scope `node`'s name gives (as the parts of a `Split`).
    fn add_part(
        &mut self,
        node: &NodeProto,
        op: Op,
        x: NodeId,
        tensors: Vec<(ParamRole, Tensor)>,
    ) -> Result<NodeId, ImportError> {
        let unnamed = NodeProto { op_type: node.op_type.clone(), output: node.output.clone(), ..Default::default() };
        let id = self.add(&unnamed, None, op, &[x], tensors)?;
        let scope = if is_layer_path(&node.name) {
            node.name.rsplit_once('.').map(|(scope, _)| scope.to_string()).unwrap_or_default()
        } else if node.name.starts_with('/') {
            torch_path(&node.name).join(".")
        } else {
            String::new()
        };
        self.out.free.insert(id, scope);
        Ok(id)
    }

    fn clip(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let (min, max) = if self.opset >= 11 {
            let get = |k: usize| -> Result<Option<f32>, ImportError> {
                match node.input.get(k).filter(|s| !s.is_empty()) {
                    None => Ok(None),
                    Some(_) => self
                        .opt_constant(node, k)
                        .and_then(|c| c.scalar())
                        .map(Some)
                        .ok_or_else(|| err(node, format!("bound {k} is not a constant scalar"))),
                }
            };
            (get(1)?, get(2)?)
        } else {
            (attr(node, "min").map(|a| a.f), attr(node, "max").map(|a| a.f))
        };
        let a = match (min, max) {
            // No bounds: the identity.
            (None, None) => {
                let v = self.input(node, 0)?.clone();
                return self.set(node, 0, v);
            }
            (Some(0.0), None) => Activation::Relu,
            (Some(lo), Some(hi)) if lo < hi && lo.is_finite() && hi.is_finite() => {
                Activation::Clamp { min: shortest(lo), max: shortest(hi) }
            }
            _ => {
                return Err(err(
                    node,
                    format!("Clip to [{min:?}, {max:?}] is not expressible (cnnc has relu, relu6 and hardtanh)"),
                ));
            }
        };
        let x = self.dynamic(node, 0)?;
        // Our exporter's hardsigmoid: Add(x, 3) -> Clip(0, 6) -> Div(6) is matched at the Add.
        let id = self.add(node, None, Op::Activation(a), &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    /// `Sigmoid(x)` read once, by `Mul(x, sigmoid)`: SiLU.
    fn sigmoid(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        // `x` by value: names differ where an identity (`x * 1`) stands between.
        let x_value = self.dynamic(node, 0)?;
        let is_x = |name: Option<&String>| matches!(name.and_then(|n| self.values.get(n)), Some(Val::Node(id)) if *id == x_value);
        if let Some(j) = node.output.first().and_then(|o| self.sole_reader(o))
            && self.nodes[j].op_type == "Mul"
        {
            let mul = self.node_ref(j);
            let s = &node.output[0];
            if (mul.input[0] == *s && is_x(mul.input.get(1)))
                || (mul.input.get(1) == Some(s) && is_x(mul.input.first()))
            {
                let x = self.dynamic(node, 0)?;
                self.done[j] = true;
                let id = self.add(mul, None, Op::Activation(Activation::Silu), &[x], vec![])?;
                return self.set(mul, 0, Val::Node(id));
            }
        }
        self.activation(node, Activation::Sigmoid)
    }

    /// A chain `first -> ... ` of single-reader nodes with these op types; the indices.
    fn chain(&self, first: usize, ops: &[&str]) -> Option<Vec<usize>> {
        let mut chain = vec![first];
        let mut at = first;
        for op in ops {
            let next = self.nodes[at].output.first().and_then(|o| self.sole_reader(o))?;
            if self.nodes[next].op_type != *op {
                return None;
            }
            chain.push(next);
            at = next;
        }
        Some(chain)
    }

    /// The scalar constant operand of a binary node whose other operand is `value`.
    fn scalar_with(&self, node: &NodeProto, value: &str) -> Option<f32> {
        let other = match node.input.iter().position(|n| n == value)? {
            0 => 1,
            1 => 0,
            _ => return None,
        };
        self.opt_constant(node, other).and_then(|c| c.scalar())
    }

    /// Add and Mul: of two computed tensors, `add`/`mul` (our exporter's chains of
    /// several operands merged back); by a `[C, 1, 1]` initializer, `scale`; the start
    /// of a pattern (`x + 3` of hardsigmoid, `x * x` of LRN, `x * 0.5` of GELU).
    fn arith(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let is_add = node.op_type == "Add";
        let a = self.input(node, 0)?.clone();
        let b = self.input(node, 1)?.clone();
        match (&a, &b) {
            (Val::Node(x), Val::Node(y)) => {
                if !is_add && x == y && self.square_pattern(i, *x)? {
                    return Ok(());
                }
                let mut operands = Vec::new();
                for (k, &v) in [*x, *y].iter().enumerate() {
                    // Our exporter writes `add(a, b, c)` as Add(Add(a, b) "name/add_1", c) "name".
                    let inner = &self.out.graph.node(v);
                    let merged = k == 0
                        && inner.op == (if is_add { Op::Add } else { Op::Mul })
                        && inner.name.starts_with(&format!("{}/", node.name))
                        && self.uses.get(node.input[0].as_str()) == Some(&1);
                    if merged {
                        operands.extend(self.out.graph.operands(v));
                        self.out.graph.remove_node(v);
                        self.out.free.remove(&v);
                    } else {
                        operands.push(v);
                    }
                }
                let op = if is_add { Op::Add } else { Op::Mul };
                // An inner link of a chain keeps its ONNX name (`name/add_1`) until merged.
                let chain_link = node.name.contains('/')
                    && node
                        .name
                        .rsplit_once('/')
                        .is_some_and(|(_, s)| s.starts_with(if is_add { "add_" } else { "mul_" }));
                let id = if chain_link {
                    let shapes: Vec<Vec<usize>> = operands.iter().map(|&o| self.shape(o)).collect();
                    let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
                    let shape = infer(&op, &refs).map_err(|e| err(node, e.message))?;
                    let id = self.out.graph.add_node(Node::new(op, node.name.clone(), shape, vec![]), &operands);
                    self.out.free.insert(id, String::new());
                    id
                } else {
                    self.add(node, None, op, &operands, vec![])?
                };
                self.set(node, 0, Val::Node(id))
            }
            (Val::Node(x), Val::Const(c)) | (Val::Const(c), Val::Node(x)) => {
                let x = *x;
                let shape = self.shape(x);
                let scalar = c.scalar();
                // `x * 1` and `x + 0` (the `alpha` of Swish's expansion): `x` itself.
                if scalar == Some(if is_add { 0.0 } else { 1.0 }) {
                    return self.set(node, 0, Val::Node(x));
                }
                if is_add && scalar == Some(3.0) && self.hardsigmoid_pattern(i, x)? {
                    return Ok(());
                }
                if !is_add && scalar == Some(0.5) && self.gelu_half_pattern(i, x)? {
                    return Ok(());
                }
                if !is_add
                    && let Some(alpha) = scalar
                    && self.hard_sigmoid_affine_pattern(i, x, alpha)?
                {
                    return Ok(());
                }
                if !is_add && shape.len() == 4 && c.dims == [shape[1], 1, 1] {
                    let t = Self::float_tensor(c, c.dims.clone());
                    let hint = c.origin.clone();
                    let id = self.add(node, hint.as_deref(), Op::Scale, &[x], vec![(ParamRole::Parameter, t)])?;
                    return self.set(node, 0, Val::Node(id));
                }
                Err(err(
                    node,
                    format!(
                        "{} by a constant of shape {:?} is not expressible (cnnc adds and multiplies computed tensors, or scales channels by a [C, 1, 1] parameter)",
                        node.op_type, c.dims
                    ),
                ))
            }
            _ => unreachable!("all-constant nodes are folded"),
        }
    }

    fn div(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let x = self.dynamic(node, 0)?;
        let d = self.opt_constant(node, 1).and_then(|c| c.scalar());
        if let Some(d) = d
            && (d - std::f32::consts::SQRT_2).abs() < 1e-4
            && self.gelu_erf_pattern(i, x)?
        {
            return Ok(());
        }
        Err(err(node, "Div is not expressible here (only inside the patterns of GELU and hardsigmoid)"))
    }

    /// Our exporter's (and PyTorch's) hardsigmoid: `Div(Clip(Add(x, 3), 0, 6), 6)`.
    fn hardsigmoid_pattern(&mut self, i: usize, x: NodeId) -> Result<bool, ImportError> {
        let Some(chain) = self.chain(i, &["Clip", "Div"]) else { return Ok(false) };
        let (clip, div) = (self.node_ref(chain[1]), self.node_ref(chain[2]));
        let bound = |k: usize| self.opt_constant(clip, k).and_then(|c| c.scalar());
        if bound(1) != Some(0.0)
            || bound(2) != Some(6.0)
            || self.scalar_with(div, &clip.output[0]) != Some(6.0)
            || div.input[0] != clip.output[0]
        {
            return Ok(false);
        }
        self.done[chain[1]] = true;
        self.done[chain[2]] = true;
        let id = self.add(div, None, Op::Activation(Activation::HardSigmoid), &[x], vec![])?;
        self.set(div, 0, Val::Node(id))?;
        Ok(true)
    }

    /// ONNX's HardSigmoid as its function body expands it: `Mul(x, alpha) -> Add(beta) ->
    /// Min(1) -> Max(0)` (or `Max(0)` first), from the `Mul` at `i`.
    fn hard_sigmoid_affine_pattern(&mut self, i: usize, x: NodeId, alpha: f32) -> Result<bool, ImportError> {
        let chain = match self.chain(i, &["Add", "Min", "Max"]) {
            Some(chain) => chain,
            None => match self.chain(i, &["Add", "Max", "Min"]) {
                Some(chain) => chain,
                None => return Ok(false),
            },
        };
        let out = |k: usize| self.nodes[chain[k]].output[0].clone();
        let beta = self.scalar_with(self.node_ref(chain[1]), &out(0));
        let (min_at, max_at) = if self.nodes[chain[2]].op_type == "Min" { (2, 3) } else { (3, 2) };
        let one = self.scalar_with(self.node_ref(chain[min_at]), &out(min_at - 1));
        let zero = self.scalar_with(self.node_ref(chain[max_at]), &out(max_at - 1));
        let Some(beta) = beta else { return Ok(false) };
        if one != Some(1.0) || zero != Some(0.0) || !alpha.is_finite() || !beta.is_finite() {
            return Ok(false);
        }
        self.pattern(&chain, chain[3], Op::Activation(hard_sigmoid(alpha, beta)), x)
    }

    /// GELU through erf from its `Div(x, sqrt 2)` node `d`: `Erf -> Add(1)`, then
    /// either `Mul(x, .) -> Mul(0.5)` (PyTorch) or `Mul(Mul(x, 0.5), .)` (our exporter).
    /// The member nodes, the last one, and `x`'s value name.
    fn gelu_erf_members(&self, d: usize) -> Option<(Vec<usize>, usize)> {
        let chain = self.chain(d, &["Erf", "Add", "Mul"])?;
        let x_name = self.nodes[d].input.first()?.clone();
        let (add, mul) = (self.node_ref(chain[2]), self.node_ref(chain[3]));
        let sqrt2 = self.opt_constant(&self.nodes[d], 1).and_then(|c| c.scalar())?;
        if (sqrt2 - std::f32::consts::SQRT_2).abs() > 1e-4
            || self.scalar_with(add, &self.nodes[chain[1]].output[0]) != Some(1.0)
        {
            return None;
        }
        let other = if mul.input[0] == add.output[0] { mul.input.get(1)? } else { mul.input.first()? };
        let mut members = chain.clone();
        if *other == x_name {
            let c = self.chain(chain[3], &["Mul"])?;
            if self.scalar_with(self.node_ref(c[1]), &mul.output[0]) != Some(0.5) {
                return None;
            }
            members.push(c[1]);
            Some((members, c[1]))
        } else {
            let h = *self.producer.get(other.as_str())?;
            let half = self.node_ref(h);
            if half.op_type != "Mul"
                || self.sole_reader(other) != Some(chain[3])
                || self.scalar_with(half, &x_name) != Some(0.5)
            {
                return None;
            }
            members.push(h);
            Some((members, chain[3]))
        }
    }

    /// Imports the pattern whose members are `members`, as `op` on `x`, named after `last`.
    fn pattern(&mut self, members: &[usize], last: usize, op: Op, x: NodeId) -> Result<bool, ImportError> {
        for &k in members {
            self.done[k] = true;
        }
        let last = self.node_ref(last);
        let id = self.add(last, None, op, &[x], vec![])?;
        self.set(last, 0, Val::Node(id))?;
        Ok(true)
    }

    fn gelu_erf_pattern(&mut self, d: usize, x: NodeId) -> Result<bool, ImportError> {
        match self.gelu_erf_members(d) {
            Some((members, last)) => self.pattern(&members, last, Op::Activation(Activation::Gelu { tanh: false }), x),
            None => Ok(false),
        }
    }

    /// `Mul(x, 0.5)` met before the rest of an erf GELU: find its `Div` and match there.
    fn gelu_half_pattern(&mut self, h: usize, x: NodeId) -> Result<bool, ImportError> {
        let find = || -> Option<usize> {
            let m1 = self.sole_reader(&self.nodes[h].output[0])?;
            let mul = self.node_ref(m1);
            let other = if mul.input[0] == self.nodes[h].output[0] { mul.input.get(1)? } else { mul.input.first()? };
            let add = *self.producer.get(other.as_str())?;
            let erf = *self
                .producer
                .get(self.nodes[add].input.first()?.as_str())
                .or_else(|| self.nodes[add].input.get(1).and_then(|n| self.producer.get(n.as_str())))?;
            let d = *self.producer.get(self.nodes[erf].input.first()?.as_str())?;
            (self.nodes[d].op_type == "Div").then_some(d)
        };
        let Some(d) = find() else { return Ok(false) };
        match self.gelu_erf_members(d) {
            Some((members, last)) if members.contains(&h) => {
                self.pattern(&members, last, Op::Activation(Activation::Gelu { tanh: false }), x)
            }
            _ => Ok(false),
        }
    }

    /// `Mul(x, x)`: our exporter's tanh GELU, or its PyTorch LocalResponseNorm.
    fn square_pattern(&mut self, i: usize, x: NodeId) -> Result<bool, ImportError> {
        let x_name = self.nodes[i].input[0].clone();
        let near = |v: Option<f32>, want: f64| v.is_some_and(|v| (v as f64 - want).abs() < 1e-6 * want.abs().max(1.0));
        if let Some(c) = self.chain(i, &["Mul", "Mul", "Add", "Mul", "Tanh", "Add", "Mul"]) {
            let n = |k: usize| self.node_ref(c[k]);
            let out = |k: usize| self.nodes[c[k]].output[0].clone();
            let ok = n(1).input.contains(&x_name)
                && near(self.scalar_with(n(2), &out(1)), 0.044715)
                && n(3).input.contains(&x_name)
                && near(self.scalar_with(n(4), &out(3)), (2.0 / std::f64::consts::PI).sqrt())
                && self.scalar_with(n(6), &out(5)) == Some(1.0);
            if ok {
                let fin = n(7);
                let other = if fin.input[0] == out(6) { fin.input.get(1) } else { fin.input.first() };
                if let Some(&h) = other.and_then(|o| self.producer.get(o.as_str()))
                    && self.nodes[h].op_type == "Mul"
                    && self.scalar_with(self.node_ref(h), &x_name) == Some(0.5)
                    && self.sole_reader(&self.nodes[h].output[0]) == Some(c[7])
                {
                    let mut members = c.clone();
                    members.push(h);
                    return self.pattern(&members, c[7], Op::Activation(Activation::Gelu { tanh: true }), x);
                }
            }
        }
        if let Some(c) = self.chain(i, &["Reshape", "Pad", "AveragePool", "Reshape", "Mul", "Add", "Pow", "Div"]) {
            let n = |k: usize| self.node_ref(c[k]);
            let out = |k: usize| self.nodes[c[k]].output[0].clone();
            let size = attr_ints(n(3), "kernel_shape").and_then(|k| k.first().copied()).unwrap_or(0);
            let pads = self.opt_constant(n(2), 1).and_then(|p| p.ints()).unwrap_or_default();
            let want_pads = [0, 0, size / 2, 0, 0, 0, (size - 1) / 2, 0];
            let alpha = self.scalar_with(n(5), &out(4));
            let k = self.scalar_with(n(6), &out(5));
            let beta = self.opt_constant(n(7), 1).and_then(|b| b.scalar());
            if size > 0
                && pads == want_pads
                && n(8).input[0] == x_name
                && n(8).input.get(1) == Some(&out(7))
                && let (Some(alpha), Some(k), Some(beta)) = (alpha, k, beta)
            {
                let op = Op::Lrn { size: size as usize, alpha: shortest(alpha), beta: shortest(beta), k: shortest(k) };
                return self.pattern(&c, c[8], op, x);
            }
        }
        Ok(false)
    }

    fn reshape(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let x = self.dynamic(node, 0)?;
        let shape = self.constant(node, 1, "the target shape (a shape computed at run time is not supported)")?;
        let input = self.shape(x);
        let target = shape.ints().ok_or_else(|| err(node, "the target shape is not integers"))?;
        let dims = model::resolve_reshape(&input, &target).map_err(|e| err(node, e))?;
        if input.len() >= 2 && dims.len() == 2 && dims[0] == input[0] {
            let id = self.add(node, None, Op::Flatten, &[x], vec![])?;
            return self.set(node, 0, Val::Node(id));
        }
        // Channel shuffle: [N, g, C/g, H, W], Transpose(0, 2, 1, 3, 4), back to [N, C, H, W].
        if input.len() == 4
            && dims.len() == 5
            && dims[0] == input[0]
            && dims[3..] == input[2..]
            && let Some(c) = self.chain(i, &["Transpose", "Reshape"])
        {
            let perm = attr_ints(self.node_ref(c[1]), "perm");
            let back = self.opt_constant(self.node_ref(c[2]), 1).and_then(|s| s.ints());
            let back =
                back.and_then(|b| model::resolve_reshape(&[dims[0], dims[2], dims[1], dims[3], dims[4]], &b).ok());
            if perm.as_deref() == Some(&[0, 2, 1, 3, 4]) && back.as_deref() == Some(&input[..]) {
                return self.pattern(&c, c[2], Op::ChannelShuffle { groups: dims[1] }, x).map(|_| ());
            }
        }
        if dims.first() != input.first() {
            return Err(mixes_batch(node, format!("Reshape from {input:?} to {dims:?} changes dimension 0")));
        }
        if !(2..=4).contains(&dims.len()) {
            return Err(err(
                node,
                format!("Reshape from {input:?} to {dims:?} is not expressible (cnnc reshapes to rank 2, 3 or 4)"),
            ));
        }
        let id = self.add(node, None, Op::Reshape { shape: dims[1..].to_vec() }, &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    fn transpose(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let x = self.dynamic(node, 0)?;
        let rank = self.shape(x).len();
        let perm: Vec<usize> = match attr_ints(node, "perm") {
            Some(p) => p
                .iter()
                .map(|&d| model::axis(d, rank).ok_or_else(|| err(node, format!("perm {p:?}"))))
                .collect::<Result<_, _>>()?,
            None => (0..rank).rev().collect(),
        };
        // Our exporter's layer_norm2d: Transpose(0, 2, 3, 1) -> LayerNormalization -> Transpose(0, 3, 1, 2).
        if rank == 4
            && perm == [0, 2, 3, 1]
            && let Some(c) = self.chain(i, &["LayerNormalization", "Transpose"])
            && attr_ints(self.node_ref(c[2]), "perm").as_deref() == Some(&[0, 3, 1, 2])
            && model::axis(attr_int(self.node_ref(c[1]), "axis", -1), 4) == Some(3)
        {
            self.done[c[1]] = true;
            self.done[c[2]] = true;
            let ln = self.node_ref(c[1]);
            let last = self.node_ref(c[2]);
            return self.layer_norm_on(ln, last, x, 1);
        }
        let id = self.add(node, None, Op::Permute { perm }, &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    fn layer_norm(&mut self, node: &NodeProto, _: Option<()>) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        let shape = self.shape(x);
        let rank = shape.len();
        match model::axis(attr_int(node, "axis", -1), rank) {
            Some(axis) if axis + 1 == rank => self.layer_norm_on(node, node, x, rank - 1),
            // Over the last dimensions from `axis` on: `layer_norm(dims=)`.
            Some(axis) if axis >= 1 => {
                if node.output.iter().skip(1).any(|o| !o.is_empty() && self.uses.contains_key(o.as_str())) {
                    return Err(saved_for_training(node));
                }
                let trailing = shape[axis..].to_vec();
                let count: usize = trailing.iter().product();
                let w = self.constant(node, 1, "the scale")?;
                let b = self.constant(node, 2, "the bias (LayerNormalization without one is not supported)")?;
                if w.len() != count || b.len() != count {
                    return Err(err(
                        node,
                        format!("scale or bias of {} / {} values for the {count} of {trailing:?}", w.len(), b.len()),
                    ));
                }
                let eps = shortest(attr_float(node, "epsilon", 1e-5));
                let tensors = vec![
                    (ParamRole::Weight, Self::float_tensor(&w, trailing.clone())),
                    (ParamRole::Bias, Self::float_tensor(&b, trailing)),
                ];
                let hint = Self::weight_path(&w, "weight");
                let op = Op::LayerNormLast { eps, dims: rank - axis };
                let id = self.add(node, hint.as_deref(), op, &[x], tensors)?;
                self.set(node, 0, Val::Node(id))
            }
            Some(_) => Err(mixes_batch(node, "LayerNormalization from axis 0")),
            None => Err(err(node, format!("axis {} out of range", attr_int(node, "axis", -1)))),
        }
    }

    fn layer_norm_on(&mut self, ln: &NodeProto, last: &NodeProto, x: NodeId, axis: usize) -> Result<(), ImportError> {
        if ln.output.iter().skip(1).any(|o| !o.is_empty() && self.uses.contains_key(o.as_str())) {
            return Err(saved_for_training(ln));
        }
        let c = self.shape(x)[axis];
        let w = self.constant(ln, 1, "the scale")?;
        let b = self.constant(ln, 2, "the bias (LayerNormalization without one is not supported)")?;
        if w.len() != c || b.len() != c {
            return Err(err(ln, format!("scale or bias of {} / {} values for {c} features", w.len(), b.len())));
        }
        let eps = shortest(attr_float(ln, "epsilon", 1e-5));
        let tensors = vec![
            (ParamRole::Weight, Self::float_tensor(&w, vec![c])),
            (ParamRole::Bias, Self::float_tensor(&b, vec![c])),
        ];
        let hint = Self::weight_path(&w, "weight");
        let id = self.add(last, hint.as_deref(), Op::LayerNorm { eps, axis }, &[x], tensors)?;
        self.set(last, 0, Val::Node(id))
    }

    fn slice(&mut self, i: usize) -> Result<(), ImportError> {
        let node = self.node_ref(i);
        let x = self.dynamic(node, 0)?;
        let shape = self.shape(x);
        let list = |k: usize, name: &str| -> Result<Option<Vec<i64>>, ImportError> {
            if self.opset >= 10 {
                match node.input.get(k).filter(|s| !s.is_empty()) {
                    None => Ok(None),
                    Some(_) => Ok(Some(
                        self.opt_constant(node, k)
                            .and_then(|c| c.ints())
                            .ok_or_else(|| err(node, format!("{name} must be constant integers")))?,
                    )),
                }
            } else {
                Ok(attr_ints(node, name))
            }
        };
        let starts = list(1, "starts")?.unwrap_or_default();
        let ends = list(2, "ends")?.unwrap_or_default();
        let axes = list(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = list(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
        if starts.len() != 1
            || ends.len() != 1
            || axes.len() != 1
            || steps != [1]
            || model::axis(axes[0], shape.len()) != Some(1)
        {
            return Err(err(node, "Slice other than a range of channels (one axis, 1, step 1) is not expressible"));
        }
        let c = shape[1] as i64;
        let clamp = |v: i64| (if v < 0 { v + c } else { v }).clamp(0, c) as usize;
        let (s, e) = (clamp(starts[0]), clamp(ends[0]));
        if e <= s {
            return Err(err(node, "an empty Slice"));
        }
        let id = self.add(node, None, Op::Slice { start: s, len: e - s }, &[x], vec![])?;
        self.set(node, 0, Val::Node(id))
    }

    fn split(&mut self, node: &NodeProto) -> Result<(), ImportError> {
        let x = self.dynamic(node, 0)?;
        let shape = self.shape(x);
        match model::axis(attr_int(node, "axis", 0), shape.len()) {
            Some(1) => {}
            Some(0) => return Err(mixes_batch(node, "Split along dimension 0")),
            _ => return Err(err(node, "Split along a dimension other than 1 (channels) is not expressible")),
        }
        let c = shape[1];
        let parts = node.output.len();
        let sizes: Vec<usize> = match if self.opset >= 13 {
            self.opt_constant(node, 1).and_then(|s| s.ints())
        } else {
            attr_ints(node, "split")
        } {
            Some(s) => s.iter().map(|&v| usize::try_from(v).unwrap_or(0)).collect(),
            None if parts > 0 => {
                let each = c.div_ceil(parts);
                (0..parts).map(|k| each.min(c.saturating_sub(k * each))).collect()
            }
            None => Vec::new(),
        };
        if sizes.len() != parts || sizes.contains(&0) || sizes.iter().sum::<usize>() != c {
            return Err(err(node, format!("split sizes {sizes:?} do not divide {c} channels into {parts} parts")));
        }
        let mut start = 0;
        for (k, &len) in sizes.iter().enumerate() {
            let mut part = node.clone();
            part.name = if is_layer_path(&node.name) { format!("{}.{k}", node.name) } else { String::new() };
            let id = self.add(&part, None, Op::Slice { start, len }, &[x], vec![])?;
            if !is_layer_path(&node.name) {
                let scope = if node.name.starts_with('/') { torch_path(&node.name).join(".") } else { String::new() };
                self.out.free.insert(id, scope);
            }
            self.set(node, k, Val::Node(id))?;
            start += len;
        }
        Ok(())
    }
}

/// LayerNormalization's `Mean` and `InvStdDev` outputs in use: the ONNX operator's schema
/// documents them as "Saved mean used during training to speed up gradient computation"
/// and "Saved inverse standard deviation used during training to speed up gradient
/// computation"; training mode is out of scope.
fn saved_for_training(node: &NodeProto) -> ImportError {
    err(
        node,
        "its Mean and InvStdDev outputs are used, which ONNX documents as saved for training (\"Saved mean used during training to speed up gradient computation\"); training mode is out of scope",
    )
}

/// ONNX's `HardSigmoid(alpha, beta)`: PyTorch's `hardsigmoid` for alpha = 1/6 and beta =
/// 0.5 (torch.onnx's export of nn.Hardsigmoid), else `hardsigmoid(alpha=, beta=)`.
fn hard_sigmoid(alpha: f32, beta: f32) -> Activation {
    // 1/6 in f32 reads back as 1/6, as it was written.
    let sixth = (alpha - 1.0 / 6.0).abs() <= 1e-7;
    if sixth && beta == 0.5 {
        Activation::HardSigmoid
    } else {
        let alpha = if sixth { 1.0 / 6.0 } else { shortest(alpha) };
        Activation::HardSigmoidAffine { alpha, beta: shortest(beta) }
    }
}

/// A float constant times `factor` (Gemm's alpha and beta, folded), keeping its origin.
fn scaled(c: &Const, factor: f32) -> Const {
    Const {
        dims: c.dims.clone(),
        data: Data::F32(c.floats().iter().map(|v| v * factor).collect()),
        origin: c.origin.clone(),
    }
}

/// The f64 a float attribute was written as: the shortest decimal that rounds to the f32
/// (`1e-5f32` -> `1e-5`, not `9.99999974737875e-6`).
pub fn shortest(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}
