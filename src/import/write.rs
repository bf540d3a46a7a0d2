//! The program writer: an imported graph as `.cnn` text that elaborates back to it,
//! names included.
//!
//! Layer paths become nested scopes: `layer1.0.conv1` is `conv1` inside the scope `0`
//! inside `layer1`. A scope whose layers are numbered (`features.0`, `features.1`, ...)
//! is a `seq`; a scope with named layers and generated names (`relu_0`, `add_0`) that
//! reads one tensor from outside becomes a `block` (identical bodies share one block);
//! any other scope is a `seq` with labels. A step is labelled only when the language
//! would not give it its name by itself (its position in a `seq`, `op_N` elsewhere).
//! A tensor read other than as the current tensor is bound to a name (its label when
//! that is an identifier, else `tN`); a value used outside the scope it is computed in
//! must be that scope's result, or the writer refuses.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::front::lower::OP_NAMES;
use crate::ir::{Activation, Graph, Hw, NodeId, Op, Pad};

/// Most scopes a layer name may nest (the language nests brackets 64 deep).
const MAX_DEPTH: usize = 32;

/// A name cut to 80 characters for messages.
fn short(name: &str) -> String {
    if name.chars().count() > 80 {
        format!("{}...", name.chars().take(77).collect::<String>())
    } else {
        name.to_string()
    }
}

/// The language's keywords.
const KEYWORDS: &[&str] =
    &["network", "block", "input", "output", "repeat", "seq", "in", "true", "false", "same", "valid"];

/// Whether `name` cannot be a tensor name (a keyword or an op).
pub fn is_reserved(name: &str) -> bool {
    KEYWORDS.contains(&name) || OP_NAMES.contains(&name)
}

fn is_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The written program and the names the writer gave the free nodes.
pub struct Written {
    /// The program with structurally identical blocks merged into blocks with integer
    /// parameters; [`Written::plain`] if that merging fails its check.
    pub text: String,
    /// The program with one block per distinct body.
    pub plain: String,
    pub names: HashMap<NodeId, String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Network,
    Block,
    Seq,
}

enum Item {
    Node(NodeId),
    /// The parts of one `split`/`chunk`, and the local name of the split (None: free).
    Parts(Vec<NodeId>, Option<String>),
    Scope(usize),
}

struct Scope {
    path: Vec<String>,
    items: Vec<Item>,
    kind: Kind,
}

struct Frame {
    kind: Kind,
    bindings: HashMap<NodeId, String>,
    names: HashSet<String>,
    input: Option<NodeId>,
    current: Option<NodeId>,
    counters: HashMap<String, usize>,
    position: usize,
}

impl Frame {
    fn new(kind: Kind, current: Option<NodeId>) -> Frame {
        Frame {
            kind,
            bindings: HashMap::new(),
            names: HashSet::new(),
            input: None,
            current,
            counters: HashMap::new(),
            position: 0,
        }
    }
}

struct Writer<'g> {
    graph: &'g Graph,
    free: &'g HashMap<NodeId, String>,
    scopes: Vec<Scope>,
    /// Values read other than as the next step's current tensor.
    needs_name: HashSet<NodeId>,
    /// Values whose binding a step read by name.
    referenced: HashSet<NodeId>,
    /// Every layer-name part in the graph: generated names avoid them.
    words: HashSet<String>,
    generated: usize,
    blocks: Vec<(String, String)>,
    names: HashMap<NodeId, String>,
    frames: Vec<Frame>,
}

/// Writes `graph` as a program; `free` gives the scope of nodes whose name the writer
/// chooses.
pub fn write(graph: &Graph, free: &HashMap<NodeId, String>) -> Result<Written, String> {
    // Twice: the second time binds only the values a step read by name (a value read
    // as a block's `in` needs none).
    let (_, referenced) = write_pass(graph, free, None)?;
    let (written, _) = write_pass(graph, free, Some(&referenced))?;
    Ok(written)
}

fn write_pass(
    graph: &Graph,
    free: &HashMap<NodeId, String>,
    keep: Option<&HashSet<NodeId>>,
) -> Result<(Written, HashSet<NodeId>), String> {
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let body: Vec<NodeId> =
        order.iter().copied().filter(|&id| !matches!(graph.node(id).op, Op::Input { .. })).collect();
    let mut w = Writer {
        graph,
        free,
        scopes: vec![Scope { path: vec![], items: vec![], kind: Kind::Network }],
        needs_name: HashSet::new(),
        referenced: HashSet::new(),
        words: HashSet::new(),
        generated: 0,
        blocks: Vec::new(),
        names: HashMap::new(),
        frames: Vec::new(),
    };
    for id in &order {
        let name = &graph.node(*id).name;
        let scope = free.get(id).unwrap_or(name);
        if name.split('.').count().max(scope.split('.').count()) > MAX_DEPTH {
            return Err(format!("layer `{}` is nested more than {MAX_DEPTH} scopes deep", short(name)));
        }
        w.words.extend(name.split('.').map(String::from));
    }
    w.build_scopes(&body)?;
    w.analyse_uses(&order);
    if let Some(keep) = keep {
        w.needs_name.retain(|id| keep.contains(id) || graph.is_output(*id));
    }
    // Scopes of the same structure (ops and local names, not sizes) may share a block.
    let signatures: Vec<String> = (0..w.scopes.len()).map(|s| w.signature(s)).collect();
    let mut repeated: HashMap<&str, usize> = HashMap::new();
    for sig in &signatures {
        *repeated.entry(sig.as_str()).or_default() += 1;
    }
    for s in 1..w.scopes.len() {
        w.scopes[s].kind = w.choose_kind(s, repeated[signatures[s].as_str()] > 1);
    }

    let mut frame = Frame::new(Kind::Network, None);
    let mut header = String::new();
    for &id in &graph.inputs {
        let node = graph.node(id);
        let Op::Input { name } = &node.op else { return Err("a graph input is not an input node".into()) };
        let dims: Vec<String> = node.shape[1..].iter().map(|d| d.to_string()).collect();
        let _ = writeln!(header, "    input {name}: [{}]", dims.join(", "));
        frame.bindings.insert(id, name.clone());
        frame.names.insert(name.clone());
        frame.current = Some(id);
    }
    w.frames.push(frame);
    let mut text = String::new();
    w.emit_items(0, 1, &mut text)?;
    let root = w.frames.pop().expect("pushed above");
    // Outputs: the last statement's tensor as `output`, or an `output` line.
    let outputs = &graph.outputs;
    let implicit = outputs.len() == 1 && outputs[0].name == "output" && root.current == Some(outputs[0].node);
    if !implicit {
        let mut names = Vec::new();
        for o in outputs {
            match root.bindings.get(&o.node) {
                Some(n) if *n == o.name => names.push(n.clone()),
                _ => return Err(format!("output `{}` cannot be named at the network's level", o.name)),
            }
        }
        let _ = writeln!(text, "    output {}", names.join(", "));
    }
    let network = format!("network {} {{\n{header}\n{text}}}\n", graph.name);
    let assemble = |blocks: &[Block], network: &str| -> String {
        let mut program = String::new();
        for b in blocks {
            let _ = writeln!(program, "block {}({}) {{\n{}}}\n", b.name, b.params.join(", "), b.body);
        }
        program + network
    };
    let blocks: Vec<Block> =
        w.blocks.iter().map(|(name, body)| Block { name: name.clone(), params: vec![], body: body.clone() }).collect();
    let plain = assemble(&blocks, &network);
    let (blocks, network_compact) = parameterize(blocks, network, &w.words);
    let text = assemble(&blocks, &network_compact);
    Ok((Written { text, plain, names: w.names }, w.referenced))
}

/// The layer path of a node's scope, and its local name (None: free).
fn split_name(name: &str) -> (Vec<String>, String) {
    let mut parts: Vec<String> = name.split('.').map(String::from).collect();
    let local = parts.pop().unwrap_or_default();
    (parts, local)
}

impl Writer<'_> {
    fn scope_of(&self, id: NodeId) -> (Vec<String>, Option<String>) {
        match self.free.get(&id) {
            Some(scope) if scope.is_empty() => (vec![], None),
            Some(scope) => (scope.split('.').map(String::from).collect(), None),
            None => {
                let (path, local) = split_name(&self.graph.node(id).name);
                (path, Some(local))
            }
        }
    }

    fn build_scopes(&mut self, body: &[NodeId]) -> Result<(), String> {
        let mut stack: Vec<usize> = vec![0];
        let mut seen: HashSet<Vec<String>> = HashSet::new();
        let mut i = 0;
        while i < body.len() {
            let id = body[i];
            let (item, path, consumed) = if let Op::Slice { .. } = self.graph.node(id).op {
                self.parts(body, i)?
            } else {
                let (path, _) = self.scope_of(id);
                (Item::Node(id), path, 1)
            };
            // Close the scopes that are not prefixes of `path`, open the missing ones.
            while let Some(&top) = stack.last() {
                let p = &self.scopes[top].path;
                if p.len() <= path.len() && path[..p.len()] == p[..] {
                    break;
                }
                stack.pop();
            }
            let depth = self.scopes[*stack.last().expect("root stays")].path.len();
            for d in depth..path.len() {
                let sub = path[..=d].to_vec();
                if !seen.insert(sub.clone()) {
                    return Err(format!(
                        "the layers of `{}` are not consecutive in the graph's order; the language writes a scope in one piece",
                        sub.join(".")
                    ));
                }
                let index = self.scopes.len();
                self.scopes.push(Scope { path: sub, items: vec![], kind: Kind::Seq });
                let parent = *stack.last().expect("root stays");
                self.scopes[parent].items.push(Item::Scope(index));
                stack.push(index);
            }
            let top = *stack.last().expect("root stays");
            self.scopes[top].items.push(item);
            i += consumed;
        }
        Ok(())
    }

    /// A run of slices of one tensor that partition its channels: one `split`.
    fn parts(&self, body: &[NodeId], i: usize) -> Result<(Item, Vec<String>, usize), String> {
        let first = body[i];
        let operand = self.graph.operands(first);
        let channels = self.graph.node(operand[0]).shape[1];
        let mut ids = Vec::new();
        let mut next = 0;
        for &id in &body[i..] {
            match self.graph.node(id).op {
                Op::Slice { start, len } if start == next && self.graph.operands(id) == operand => {
                    ids.push(id);
                    next += len;
                    if next == channels {
                        break;
                    }
                }
                _ => break,
            }
        }
        let name = &self.graph.node(first).name;
        if next != channels {
            return Err(format!("slice `{name}` is not one of parts that cover every channel (a split or chunk)"));
        }
        if self.free.contains_key(&first) {
            let (path, _) = self.scope_of(first);
            return Ok((Item::Parts(ids.clone(), None), path, ids.len()));
        }
        let (split_path, last) = split_name(name);
        for (k, &id) in ids.iter().enumerate() {
            let want = format!("{}.{k}", split_path.join("."));
            if self.graph.node(id).name != want {
                return Err(format!(
                    "slice `{}` should be named `{want}` as part {k} of a split",
                    self.graph.node(id).name
                ));
            }
        }
        let _ = last;
        let (scope, local) = split_name(&split_path.join("."));
        Ok((Item::Parts(ids.clone(), Some(local)), scope, ids.len()))
    }

    fn analyse_uses(&mut self, order: &[NodeId]) {
        let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        for &id in order {
            let users = self.graph.users(id);
            let mut reads = 0;
            let mut adjacent_first = false;
            for &u in &users {
                for (k, &o) in self.graph.op_operands(u).iter().enumerate() {
                    if o == id {
                        reads += 1;
                        adjacent_first = k == 0 && position[&u] == position[&id] + 1;
                    }
                }
            }
            if self.graph.is_output(id) || reads != 1 || !adjacent_first {
                self.needs_name.insert(id);
            }
        }
    }

    fn scope_nodes(&self, s: usize, out: &mut Vec<NodeId>) {
        for item in &self.scopes[s].items {
            match item {
                Item::Node(id) => out.push(*id),
                Item::Parts(ids, _) => out.extend(ids),
                Item::Scope(t) => self.scope_nodes(*t, out),
            }
        }
    }

    /// The scope's structure: its items' ops and local names, its sub-scopes'
    /// structures; no sizes.
    fn signature(&self, s: usize) -> String {
        let mut sig = String::new();
        for item in &self.scopes[s].items {
            match item {
                Item::Node(id) => {
                    let local = self.scope_of(*id).1.unwrap_or_default();
                    let _ = write!(sig, "{}:{local};", self.graph.node(*id).op.mnemonic());
                }
                Item::Parts(ids, local) => {
                    let _ = write!(sig, "parts{}:{};", ids.len(), local.as_deref().unwrap_or(""));
                }
                Item::Scope(t) => {
                    let local = self.scopes[*t].path.last().map(String::as_str).unwrap_or("");
                    let _ = write!(sig, "{local}{{{}}};", self.signature(*t));
                }
            }
        }
        sig
    }

    fn choose_kind(&self, s: usize, repeated: bool) -> Kind {
        let auto_like = |local: &str| -> bool {
            local
                .rsplit_once('_')
                .is_some_and(|(w, n)| !w.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        };
        let named_auto = self.scopes[s].items.iter().any(|item| match item {
            Item::Node(id) => !self.free.contains_key(id) && auto_like(&split_name(&self.graph.node(*id).name).1),
            Item::Parts(_, Some(local)) => !local.chars().all(|c| c.is_ascii_digit()),
            Item::Parts(_, None) => false,
            Item::Scope(t) => auto_like(self.scopes[*t].path.last().map(String::as_str).unwrap_or("")),
        });
        // A repeated scope with a named layer (not only numbered ones) may be a block.
        let named = self.scopes[s].items.iter().any(|item| match item {
            Item::Node(id) => self.scope_of(*id).1.is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit())),
            Item::Parts(_, local) => local.as_deref().is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit())),
            Item::Scope(t) => self.scopes[*t].path.last().is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit())),
        });
        if !(named_auto || (repeated && named)) {
            return Kind::Seq;
        }
        let mut nodes = Vec::new();
        self.scope_nodes(s, &mut nodes);
        let inside: HashSet<NodeId> = nodes.iter().copied().collect();
        let Some(input) = nodes.first().and_then(|&n| self.graph.op_operands(n).first().copied()) else {
            return Kind::Seq;
        };
        let single_input =
            nodes.iter().all(|&n| self.graph.op_operands(n).iter().all(|o| inside.contains(o) || *o == input));
        // A value used after the scope must be its result.
        let last = *nodes.last().expect("a scope has nodes");
        let escapes = nodes.iter().any(|&n| n != last && self.graph.users(n).iter().any(|u| !inside.contains(u)));
        if single_input && !escapes && !inside.contains(&input) { Kind::Block } else { Kind::Seq }
    }

    fn fresh_name(&mut self) -> String {
        loop {
            self.generated += 1;
            let name = format!("t{}", self.generated);
            if !self.words.contains(&name) {
                return name;
            }
        }
    }

    /// The name under which `v` is visible from the innermost frame.
    fn name_of(&mut self, v: NodeId, user: &str) -> Result<String, String> {
        let n = self.frames.len();
        for k in (0..n).rev() {
            let frame = &self.frames[k];
            let found = frame.bindings.get(&v).cloned().or_else(|| (frame.input == Some(v)).then(|| "in".to_string()));
            if let Some(name) = found {
                if self.frames[k + 1..].iter().any(|f| f.names.contains(&name)) {
                    break;
                }
                if name != "in" {
                    self.referenced.insert(v);
                }
                return Ok(name);
            }
            if frame.kind == Kind::Block {
                break;
            }
        }
        Err(format!(
            "`{user}` reads `{}`, which is not visible there (it is computed inside another scope and is not its result)",
            self.graph.node(v).name
        ))
    }

    fn result_of(&self, item: &Item) -> Option<NodeId> {
        match item {
            Item::Node(id) => Some(*id),
            Item::Parts(..) => None,
            Item::Scope(t) => self.scopes[*t].items.last().and_then(|i| self.result_of(i)),
        }
    }

    fn input_of(&self, item: &Item) -> Option<NodeId> {
        match item {
            Item::Node(id) => self.graph.op_operands(*id).first().copied(),
            Item::Parts(ids, _) => ids.first().and_then(|id| self.graph.op_operands(*id).first().copied()),
            Item::Scope(t) => self.scopes[*t].items.first().and_then(|i| self.input_of(i)),
        }
    }

    /// The local name the frame gives an unlabelled step of `word`, and advances.
    fn auto_name(&mut self, word: &str, labelled: bool) -> String {
        let frame = self.frames.last_mut().expect("a frame");
        if frame.kind == Kind::Seq {
            let p = frame.position;
            frame.position += 1;
            p.to_string()
        } else if labelled {
            String::new()
        } else {
            let c = frame.counters.entry(word.to_string()).or_insert(0);
            *c += 1;
            format!("{word}_{}", *c - 1)
        }
    }

    fn peek_auto(&self, word: &str) -> String {
        let frame = self.frames.last().expect("a frame");
        if frame.kind == Kind::Seq {
            frame.position.to_string()
        } else {
            format!("{word}_{}", frame.counters.get(word).copied().unwrap_or(0))
        }
    }

    fn emit_items(&mut self, s: usize, depth: usize, out: &mut String) -> Result<(), String> {
        let indent = "    ".repeat(depth);
        let count = self.scopes[s].items.len();
        for index in 0..count {
            let item = &self.scopes[s].items[index];
            let (input, result) = (self.input_of(item), self.result_of(item));
            let is_last = index + 1 == count;
            enum What {
                Node(NodeId),
                Parts(Vec<NodeId>, Option<String>),
                Scope(usize),
            }
            let what = match item {
                Item::Node(id) => What::Node(*id),
                Item::Parts(ids, local) => What::Parts(ids.clone(), local.clone()),
                Item::Scope(t) => What::Scope(*t),
            };
            // The step's text and word, and its local name (None: free).
            let (word, step, local, user_name) = match &what {
                What::Node(id) => {
                    let node = self.graph.node(*id);
                    let (_, local) = self.scope_of(*id);
                    let (word, args) = self.op_text(*id)?;
                    (word.clone(), args, local, node.name.clone())
                }
                What::Parts(ids, local) => {
                    let sizes: Vec<usize> = ids
                        .iter()
                        .map(|id| match self.graph.node(*id).op {
                            Op::Slice { len, .. } => len,
                            _ => 0,
                        })
                        .collect();
                    let total: usize = sizes.iter().sum();
                    let each = total.div_ceil(sizes.len());
                    let is_chunk = sizes.iter().enumerate().all(|(k, &l)| l == each.min(total - k * each))
                        && local.as_deref().is_none_or(|l| !l.starts_with("split_"));
                    let step = if is_chunk {
                        format!("chunk({})", sizes.len())
                    } else {
                        format!("split({})", sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
                    };
                    (if is_chunk { "chunk" } else { "split" }.to_string(), step, local.clone(), String::new())
                }
                What::Scope(t) => {
                    let t = *t;
                    let local = self.scopes[t].path.last().cloned();
                    let name = self.scopes[t].path.join(".");
                    match self.scopes[t].kind {
                        Kind::Block => {
                            let mut frame = Frame::new(Kind::Block, input);
                            frame.input = input;
                            self.frames.push(frame);
                            // A block body sees none of the caller's names: its own
                            // generated names start again (and identical bodies match).
                            let outer = std::mem::replace(&mut self.generated, 0);
                            let mut body = String::new();
                            let r = self.emit_items(t, 1, &mut body);
                            self.generated = outer;
                            self.frames.pop();
                            r?;
                            let path = self.scopes[t].path.clone();
                            let block = self.block_name(&path, body);
                            (block.clone(), block, local, name)
                        }
                        _ => ("seq".to_string(), String::new(), local, name),
                    }
                }
            };
            // Label, position and the node's final name.
            let auto = self.peek_auto(&word);
            let label = match &local {
                Some(l) if *l != auto => {
                    if matches!(what, What::Parts(..)) {
                        return Err(format!("the split `{l}` would be named `{auto}` here; a split takes no label"));
                    }
                    self.auto_name(&word, true);
                    Some(l.clone())
                }
                _ => {
                    let name = self.auto_name(&word, false);
                    if let What::Node(id) = what
                        && local.is_none()
                    {
                        let scope = self.scopes[s].path.join(".");
                        self.names.insert(id, if scope.is_empty() { name.clone() } else { format!("{scope}.{name}") });
                    }
                    if let What::Parts(ids, None) = &what {
                        let scope = self.scopes[s].path.join(".");
                        let path = if scope.is_empty() { name } else { format!("{scope}.{name}") };
                        for (k, id) in ids.iter().enumerate() {
                            self.names.insert(*id, format!("{path}.{k}"));
                        }
                    }
                    None
                }
            };
            let label_binds = label.as_ref().is_some_and(|l| is_ident(l) && !is_reserved(l) && !self.is_block(l));
            let label_text = label.as_ref().map(|l| {
                if is_ident(l) && !KEYWORDS.contains(&l.as_str()) { format!("{l}: ") } else { format!("\"{l}\": ") }
            });

            // Source and operands.
            let current = self.frames.last().expect("a frame").current;
            let user = if user_name.is_empty() { "a split".to_string() } else { user_name.clone() };
            let mut step = step;
            let mut source = String::new();
            if let What::Node(id) = what
                && self.graph.node(id).op.is_merge()
            {
                let operands = self.graph.op_operands(id);
                let mut names = Vec::new();
                let implicit = operands.len() == 2 && Some(operands[0]) == current;
                for &o in operands.iter().skip(if implicit { 1 } else { 0 }) {
                    names.push(self.name_of(o, &user)?);
                }
                step = format!("{word}({})", names.join(", "));
            } else if let Some(input) = input
                && Some(input) != current
            {
                source = format!("{} |> ", self.name_of(input, &user)?);
            }

            // Bindings: parts always; a result read elsewhere at the outermost level
            // where it is a statement's result.
            let mut binding = String::new();
            let root = self.frames.len() == 1;
            if let What::Parts(ids, _) = &what {
                let mut names = Vec::new();
                for id in ids {
                    let name = self.output_or_fresh(*id, root);
                    self.bind(*id, name.clone());
                    names.push(name);
                }
                binding = format!("{} = ", names.join(", "));
            } else if let Some(r) = result
                && self.needs_name.contains(&r)
                && (root || !is_last)
            {
                let output_name = self.graph.outputs.iter().find(|o| o.node == r).map(|o| o.name.clone());
                let label_name = label.clone().filter(|_| label_binds);
                match (root.then_some(output_name).flatten(), label_name) {
                    (Some(o), Some(l)) if o == l => self.bind(r, l),
                    // The network's result is `output` by itself (a keyword: no binding).
                    (Some(o), _) if o == "output" => {}
                    (Some(o), _) => {
                        binding = format!("{o} = ");
                        self.bind(r, o);
                    }
                    (None, Some(l)) => self.bind(r, l),
                    (None, None) => {
                        let name = self.fresh_name();
                        binding = format!("{name} = ");
                        self.bind(r, name);
                    }
                }
            }
            if label_binds && let (Some(l), Some(_)) = (&label, result) {
                self.frames.last_mut().expect("a frame").names.insert(l.clone());
            }

            match what {
                What::Scope(t) if self.scopes[t].kind != Kind::Block => {
                    let _ = writeln!(out, "{indent}{binding}{source}{}seq {{", label_text.unwrap_or_default());
                    self.frames.push(Frame::new(Kind::Seq, input));
                    let r = self.emit_items(t, depth + 1, out);
                    self.frames.pop();
                    r?;
                    let _ = writeln!(out, "{indent}}}");
                }
                _ => {
                    let _ = writeln!(out, "{indent}{binding}{source}{}{step}", label_text.unwrap_or_default());
                }
            }
            self.frames.last_mut().expect("a frame").current = result;
        }
        Ok(())
    }

    fn is_block(&self, name: &str) -> bool {
        self.blocks.iter().any(|(n, _)| n == name)
    }

    fn bind(&mut self, id: NodeId, name: String) {
        let frame = self.frames.last_mut().expect("a frame");
        frame.names.insert(name.clone());
        frame.bindings.insert(id, name);
    }

    fn output_or_fresh(&mut self, id: NodeId, root: bool) -> String {
        match self.graph.outputs.iter().find(|o| o.node == id) {
            Some(o) if root => o.name.clone(),
            _ => self.fresh_name(),
        }
    }

    /// The block with this body (a new one named after the scope's path, unless an
    /// identical body has one already).
    fn block_name(&mut self, path: &[String], body: String) -> String {
        if let Some((name, _)) = self.blocks.iter().find(|(_, b)| *b == body) {
            return name.clone();
        }
        let base: String = path
            .iter()
            .map(|p| p.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>())
            .collect::<Vec<_>>()
            .join("_");
        let base =
            if base.starts_with(|c: char| c.is_ascii_digit()) || base.is_empty() { format!("b_{base}") } else { base };
        let mut name = format!("{base}_block");
        let mut n = 2;
        while self.words.contains(&name) || self.is_block(&name) || is_reserved(&name) {
            name = format!("{base}_block{n}");
            n += 1;
        }
        self.blocks.push((name.clone(), body));
        name
    }

    /// The op's word in the language and its step text.
    fn op_text(&self, id: NodeId) -> Result<(String, String), String> {
        let node = self.graph.node(id);
        let input = self.graph.op_operands(id).first().map(|&o| self.graph.node(o).shape.clone()).unwrap_or_default();
        let bad = |what: &str| format!("layer `{}`: {what}", node.name);
        // On [N, C, L] a pool's window is 1 x k: written as `k`.
        let rank3 = input.len() == 3;
        let hw = |v: Hw| {
            if v.h == v.w || (rank3 && v.h <= 1) { v.w.to_string() } else { format!("({}, {})", v.h, v.w) }
        };
        // Symmetric pads as `n` or `(h, w)`; asymmetric ones as `same` where they are the
        // input's `same` padding (SAME_UPPER), else `(top, left, bottom, right)`.
        let pad = |p: Pad, kernel: Hw, stride: Hw, dilation: Hw| -> Option<String> {
            if p.is_zero() {
                None
            } else if p.top == p.bottom && p.left == p.right {
                Some(hw(Hw::new(p.top, p.left)))
            } else if rank3 && p.top == 0 && p.bottom == 0 {
                // Along L only: `same` or nothing the language writes.
                let same = crate::ir::shape::same_pad(Hw::new(1, input[2]), kernel, stride, dilation) == p;
                Some(if same {
                    "same".to_string()
                } else {
                    format!("({}, {}, {}, {})", p.top, p.left, p.bottom, p.right)
                })
            } else if input.len() == 4
                && crate::ir::shape::same_pad(Hw::new(input[2], input[3]), kernel, stride, dilation) == p
            {
                Some("same".to_string())
            } else {
                Some(format!("({}, {}, {}, {})", p.top, p.left, p.bottom, p.right))
            }
        };
        let mut args: Vec<String> = Vec::new();
        let word: &str = match &node.op {
            Op::Conv(c) => {
                args.push(c.out_channels.to_string());
                args.push(hw(c.kernel));
                if c.stride != Hw::square(1) {
                    args.push(format!("stride={}", hw(c.stride)));
                }
                if let Some(p) = pad(c.pad, c.kernel, c.stride, c.dilation) {
                    args.push(format!("pad={p}"));
                }
                if c.dilation != Hw::square(1) {
                    args.push(format!("dilation={}", hw(c.dilation)));
                }
                if c.groups != 1 {
                    args.push(format!("groups={}", c.groups));
                }
                if !c.bias {
                    args.push("bias=false".into());
                }
                "conv"
            }
            Op::Linear { out_features, bias } => {
                args.push(out_features.to_string());
                if !bias {
                    args.push("bias=false".into());
                }
                "linear"
            }
            Op::BatchNorm { eps } => {
                if *eps != 1e-5 {
                    args.push(format!("eps={}", num(*eps)?));
                }
                "batch_norm"
            }
            Op::Activation(a) => match a {
                Activation::LeakyRelu { slope } => {
                    if *slope != 0.01 {
                        args.push(format!("slope={}", num(*slope)?));
                    }
                    "leaky_relu"
                }
                Activation::Clamp { min, max } if !(*min == 0.0 && *max == 6.0) => {
                    if *min != -1.0 || *max != 1.0 {
                        args.push(format!("min={}", num(*min)?));
                        args.push(format!("max={}", num(*max)?));
                    }
                    "hardtanh"
                }
                Activation::Gelu { tanh: true } => {
                    args.push("tanh=true".into());
                    "gelu"
                }
                Activation::HardSigmoidAffine { alpha, beta } => {
                    args.push(format!("alpha={}", num(*alpha)?));
                    if *beta != 0.5 {
                        args.push(format!("beta={}", num(*beta)?));
                    }
                    "hardsigmoid"
                }
                other => other.mnemonic(),
            },
            Op::MaxPool(p) | Op::AvgPool(p) => {
                args.push(hw(p.kernel));
                if p.stride != p.kernel {
                    args.push(format!("stride={}", hw(p.stride)));
                }
                if let Some(text) = pad(p.pad, p.kernel, p.stride, p.dilation) {
                    args.push(format!("pad={text}"));
                }
                if p.dilation != Hw::square(1) {
                    args.push(format!("dilation={}", hw(p.dilation)));
                }
                if p.ceil {
                    args.push("ceil=true".into());
                }
                if p.count_pad && matches!(node.op, Op::AvgPool(_)) {
                    args.push("count_pad=true".into());
                }
                node.op.mnemonic()
            }
            Op::AdaptiveAvgPool { out } => {
                args.push(hw(*out));
                "adaptive_avg_pool"
            }
            Op::Dropout { p } | Op::Dropout2d { p } | Op::StochasticDepth { p } => {
                args.push(format!("p={}", num(*p)?));
                node.op.mnemonic()
            }
            Op::Lrn { size, alpha, beta, k } => {
                args.push(format!("size={size}"));
                args.push(format!("alpha={}", num(*alpha)?));
                args.push(format!("beta={}", num(*beta)?));
                args.push(format!("k={}", num(*k)?));
                "lrn"
            }
            Op::ChannelShuffle { groups } => {
                args.push(groups.to_string());
                "channel_shuffle"
            }
            Op::Permute { perm } => {
                args.extend(perm.iter().map(|d| d.to_string()));
                "permute"
            }
            Op::Reshape { shape } => {
                args.extend(shape.iter().map(|d| d.to_string()));
                "reshape"
            }
            Op::Mean { dims, keepdim } => {
                args.extend(dims.iter().map(|d| d.to_string()));
                if *keepdim {
                    args.push("keepdim=true".into());
                }
                "mean"
            }
            Op::LayerNormLast { eps, dims } => {
                if *eps != 1e-5 {
                    args.push(format!("eps={}", num(*eps)?));
                }
                args.push(format!("dims={dims}"));
                "layer_norm"
            }
            Op::LayerNorm { eps, axis } => {
                if *eps != 1e-5 {
                    args.push(format!("eps={}", num(*eps)?));
                }
                if *axis + 1 == input.len() {
                    "layer_norm"
                } else if *axis == 1 && input.len() == 4 {
                    "layer_norm2d"
                } else {
                    return Err(bad("layer normalization over this dimension is not expressible"));
                }
            }
            Op::ScaleShift | Op::Input { .. } | Op::Slice { .. } => {
                return Err(bad(&format!("{} is not an op of the language", node.op.mnemonic())));
            }
            op => op.mnemonic(),
        };
        let step = if args.is_empty() { word.to_string() } else { format!("{word}({})", args.join(", ")) };
        Ok((word.to_string(), step))
    }
}

/// A number as the language writes it (no exponent: the grammar's decimals).
fn num(x: f64) -> Result<String, String> {
    if !x.is_finite() {
        return Err(format!("the value {x} cannot be written in a program"));
    }
    Ok(format!("{x}"))
}

/// A block definition being written.
struct Block {
    name: String,
    params: Vec<String>,
    body: String,
}

/// The byte ranges of the integer literals in `text` (not in names, decimals or quotes).
fn int_tokens(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'"';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == bytes.len() || !word(bytes[i]) {
                out.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The text with its integer literals replaced by `#`, and the literals.
fn template(text: &str) -> (String, Vec<String>) {
    let mut t = String::new();
    let mut values = Vec::new();
    let mut at = 0;
    for (a, b) in int_tokens(text) {
        t.push_str(&text[at..a]);
        t.push('#');
        values.push(text[a..b].to_string());
        at = b;
    }
    t.push_str(&text[at..]);
    (t, values)
}

/// Rewrites every line that ends in a call of `old` to call `new(args)`.
fn rewrite_calls(text: &str, old: &str, new: &str, args: &[String]) -> String {
    let call = if args.is_empty() { new.to_string() } else { format!("{new}({})", args.join(", ")) };
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (content, newline) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        match content.strip_suffix(old) {
            Some(prefix) if prefix.is_empty() || prefix.ends_with([' ', ':']) => {
                out.push_str(prefix);
                out.push_str(&call);
                out.push_str(newline);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// Merges blocks whose bodies differ only in integer literals into one block with a
/// parameter per literal that varies (literals that vary together share one), and
/// rewrites the calls. Inner blocks are merged first, so that the calls in outer bodies
/// then differ only in their arguments.
fn parameterize(mut blocks: Vec<Block>, mut network: String, words: &HashSet<String>) -> (Vec<Block>, String) {
    loop {
        let templates: Vec<(String, Vec<String>)> = blocks.iter().map(|b| template(&b.body)).collect();
        let group: Option<Vec<usize>> = (0..blocks.len()).find_map(|i| {
            if !blocks[i].params.is_empty() {
                return None;
            }
            let members: Vec<usize> = (i..blocks.len())
                .filter(|&j| blocks[j].params.is_empty() && templates[j].0 == templates[i].0)
                .collect();
            (members.len() > 1).then_some(members)
        });
        let Some(members) = group else { break };
        let values: Vec<&Vec<String>> = members.iter().map(|&m| &templates[m].1).collect();
        // One parameter per distinct column of varying values.
        let mut columns: Vec<Vec<String>> = Vec::new();
        let mut slot: Vec<Option<usize>> = Vec::new();
        for k in 0..values[0].len() {
            let column: Vec<String> = values.iter().map(|v| v[k].clone()).collect();
            if column.iter().all(|v| *v == column[0]) {
                slot.push(None);
            } else if let Some(p) = columns.iter().position(|c| *c == column) {
                slot.push(Some(p));
            } else {
                columns.push(column);
                slot.push(Some(columns.len() - 1));
            }
        }
        let mut names = Vec::new();
        let mut n = 1;
        while names.len() < columns.len() {
            let name = format!("p{n}");
            if !words.contains(&name) {
                names.push(name);
            }
            n += 1;
        }
        let first = members[0];
        let body = &blocks[first].body;
        let mut new_body = String::new();
        let mut at = 0;
        for ((a, b), s) in int_tokens(body).into_iter().zip(&slot) {
            new_body.push_str(&body[at..a]);
            match s {
                Some(p) => new_body.push_str(&names[*p]),
                None => new_body.push_str(&body[a..b]),
            }
            at = b;
        }
        new_body.push_str(&body[at..]);
        let new_name = blocks[first].name.clone();
        for (j, &m) in members.iter().enumerate() {
            let args: Vec<String> = columns.iter().map(|c| c[j].clone()).collect();
            let old = blocks[m].name.clone();
            network = rewrite_calls(&network, &old, &new_name, &args);
            for b in blocks.iter_mut() {
                b.body = rewrite_calls(&b.body, &old, &new_name, &args);
            }
        }
        blocks[first].body = new_body;
        blocks[first].params = names;
        let mut k = 0;
        blocks.retain(|_| {
            k += 1;
            !members[1..].contains(&(k - 1))
        });
    }
    (blocks, network)
}
