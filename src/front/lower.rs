//! Elaboration: the syntax tree → the IR. Expands blocks, `seq` and `repeat`, names
//! every layer as PyTorch's `state_dict` would, resolves op arguments, and infers shapes.
//! Keeps going after a name or shape error (the value becomes "poisoned" and later
//! uses stay quiet), so one run reports every independent error.

use std::collections::{HashMap, HashSet};

use super::ast::*;
use crate::diag::Diag;
use crate::ir::shape::{self, fmt_shape, same_pad};
use crate::ir::{Activation, Conv, Graph, Hw, Node, NodeId, Op, Output, Pad, Param, Pool, Span};

/// How to build the network: the batch and, optionally, a different input size.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub batch: usize,
    /// Replaces the declared `[C, H, W]` of the first input.
    pub input_shape: Option<Vec<usize>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { batch: 1, input_shape: None }
    }
}

/// The most nodes one program may expand to; stops `repeat 1000000000` and
/// exponentially nested block calls with an error instead of exhausting memory.
pub const MAX_NODES: usize = 200_000;

/// The most statements, steps and `repeat` iterations one elaboration may visit. Steps
/// after an error add no node (their values are poisoned), so [`MAX_NODES`] alone would
/// let `repeat 1000000000 { typo }` spin; this bound holds whatever errors came before.
pub const MAX_STEPS: usize = 4 * MAX_NODES;

/// The ops of the language, for name resolution and suggestions.
pub const OP_NAMES: &[&str] = &[
    "conv",
    "linear",
    "batch_norm",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "relu6",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "silu",
    "gelu",
    "erf",
    "softmax",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "dropout",
    "dropout2d",
    "stochastic_depth",
    "flatten",
    "reshape",
    "identity",
    "mean",
    "add",
    "mul",
    "concat",
    "lrn",
    "chunk",
    "split",
    "channel_shuffle",
    "permute",
    "layer_norm",
    "layer_norm2d",
    "scale",
];

/// The ops that make several tensors, one per name of the statement's binding.
const MULTI_OUTPUT_OPS: &[&str] = &["chunk", "split"];

/// A tensor during elaboration: a node, or `None` once an error made it unknown.
type Value = Option<NodeId>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FrameKind {
    Network,
    Block,
    Seq,
}

struct Frame {
    kind: FrameKind,
    /// Weight prefix of the layers inside ("" at network level).
    prefix: String,
    tensors: HashMap<String, (Value, Span)>,
    /// Block parameters (Block frames only).
    ints: HashMap<String, i64>,
    /// `in` (Block frames only).
    input: Option<Value>,
    /// The current tensor: `None` before anything produced one.
    current: Option<Value>,
    /// Per-op counters for unnamed layers outside `seq`.
    counters: HashMap<String, usize>,
    /// The next position inside a `seq`.
    position: usize,
    /// How many `repeat`s directly enclose the statements being elaborated.
    repeat_depth: usize,
    /// The multi-output step of the last statement, when it left no current tensor
    /// (`x1, x2 = chunk(2)`).
    parts_at: Option<Span>,
}

impl Frame {
    fn new(kind: FrameKind, prefix: String, current: Option<Value>) -> Frame {
        Frame {
            kind,
            prefix,
            tensors: HashMap::new(),
            ints: HashMap::new(),
            input: None,
            current,
            counters: HashMap::new(),
            position: 0,
            repeat_depth: 0,
            parts_at: None,
        }
    }
}

/// Elaborates the program's network into a graph, or returns every error found.
pub fn lower(program: &Program, options: &BuildOptions) -> Result<Graph, Vec<Diag>> {
    let mut diags = Vec::new();
    let mut blocks: HashMap<&str, &BlockDef> = HashMap::new();
    for block in &program.blocks {
        if OP_NAMES.contains(&block.name.name.as_str()) {
            diags.push(Diag::new(
                format!("block `{}` has the name of an op", block.name.name),
                block.name.span.clone(),
                "choose another name",
            ));
        } else if let Some(previous) = blocks.insert(&block.name.name, block) {
            diags.push(
                Diag::new(
                    format!("block `{}` is defined twice", block.name.name),
                    block.name.span.clone(),
                    "second definition",
                )
                .secondary(previous.name.span.clone(), "first defined here"),
            );
        }
    }
    if program.networks.len() > 1 {
        let second = &program.networks[1];
        diags.push(
            Diag::new("a file holds one network", second.name.span.clone(), "second network")
                .secondary(program.networks[0].name.span.clone(), "first network here"),
        );
    }
    let Some(network) = program.networks.first() else {
        diags.push(Diag::new("no network in this file", 0..0, "expected `network NAME { ... }`"));
        return Err(diags);
    };
    let mut lowerer = Lowerer {
        blocks,
        graph: Graph::new(network.name.name.clone()),
        diags,
        frames: vec![Frame::new(FrameKind::Network, String::new(), None)],
        call_stack: Vec::new(),
        options: options.clone(),
        param_owners: HashMap::new(),
        outputs_declared: None,
        too_big: false,
        steps: 0,
        error_places: HashSet::new(),
    };
    lowerer.statements(&network.body);
    lowerer.finish(network);
    if lowerer.diags.is_empty() {
        return Ok(lowerer.graph);
    }
    Err(lowerer.diags)
}

struct Lowerer<'a> {
    blocks: HashMap<&'a str, &'a BlockDef>,
    graph: Graph,
    diags: Vec<Diag>,
    frames: Vec<Frame>,
    call_stack: Vec<&'a str>,
    options: BuildOptions,
    /// Which layer owns each weight prefix, to catch collisions.
    param_owners: HashMap<String, Span>,
    outputs_declared: Option<Span>,
    /// Set once a limit ([`MAX_NODES`], [`MAX_STEPS`]) is hit: elaboration stops.
    too_big: bool,
    /// Statements, steps and `repeat` iterations visited so far.
    steps: usize,
    /// The places that already have a diagnostic.
    error_places: HashSet<(usize, usize)>,
}

/// The kinds of argument an op takes.
#[derive(Clone, Copy, PartialEq)]
enum ArgKind {
    Int,
    IntOrPair,
    Pad,
    Float,
    Bool,
}

/// An argument value after evaluation.
#[derive(Clone, Debug, PartialEq)]
enum ArgValue {
    Int(i64),
    Pair(i64, i64),
    /// `(top, left, bottom, right)`, for `pad` only.
    Quad([i64; 4]),
    Float(f64),
    Bool(bool),
    Same,
}

struct ArgSpec {
    name: &'static str,
    kind: ArgKind,
    required: bool,
}

const fn req(name: &'static str, kind: ArgKind) -> ArgSpec {
    ArgSpec { name, kind, required: true }
}
const fn opt(name: &'static str, kind: ArgKind) -> ArgSpec {
    ArgSpec { name, kind, required: false }
}

fn op_spec(op: &str) -> &'static [ArgSpec] {
    use ArgKind::*;
    const CONV: &[ArgSpec] = &[
        req("out", Int),
        req("kernel", IntOrPair),
        opt("stride", IntOrPair),
        opt("pad", Pad),
        opt("dilation", IntOrPair),
        opt("groups", Int),
        opt("bias", Bool),
    ];
    const LINEAR: &[ArgSpec] = &[req("out", Int), opt("bias", Bool)];
    const BATCH_NORM: &[ArgSpec] = &[opt("eps", Float)];
    const LEAKY_RELU: &[ArgSpec] = &[opt("slope", Float)];
    const MAX_POOL: &[ArgSpec] = &[
        req("kernel", IntOrPair),
        opt("stride", IntOrPair),
        opt("pad", Pad),
        opt("ceil", Bool),
        opt("dilation", IntOrPair),
    ];
    const AVG_POOL: &[ArgSpec] = &[
        req("kernel", IntOrPair),
        opt("stride", IntOrPair),
        opt("pad", Pad),
        opt("ceil", Bool),
        opt("count_pad", Bool),
        opt("dilation", IntOrPair),
    ];
    const ADAPTIVE: &[ArgSpec] = &[req("out", IntOrPair)];
    const DROPOUT: &[ArgSpec] = &[opt("p", Float)];
    const STOCHASTIC_DEPTH: &[ArgSpec] = &[req("p", Float)];
    const HARDTANH: &[ArgSpec] = &[opt("min", Float), opt("max", Float)];
    const GELU: &[ArgSpec] = &[opt("tanh", Bool)];
    const HARDSIGMOID: &[ArgSpec] = &[opt("alpha", Float), opt("beta", Float)];
    const LRN: &[ArgSpec] = &[opt("size", Int), opt("alpha", Float), opt("beta", Float), opt("k", Float)];
    const CHUNK: &[ArgSpec] = &[req("chunks", Int)];
    const GROUPS: &[ArgSpec] = &[req("groups", Int)];
    const EPS: &[ArgSpec] = &[opt("eps", Float)];
    const LAYER_NORM: &[ArgSpec] = &[opt("eps", Float), opt("dims", Int)];
    match op {
        "conv" => CONV,
        "linear" => LINEAR,
        "batch_norm" => BATCH_NORM,
        "leaky_relu" => LEAKY_RELU,
        "max_pool" => MAX_POOL,
        "avg_pool" => AVG_POOL,
        "adaptive_avg_pool" => ADAPTIVE,
        "dropout" | "dropout2d" => DROPOUT,
        "stochastic_depth" => STOCHASTIC_DEPTH,
        "hardtanh" => HARDTANH,
        "gelu" => GELU,
        "hardsigmoid" => HARDSIGMOID,
        "lrn" => LRN,
        "chunk" => CHUNK,
        "channel_shuffle" => GROUPS,
        "layer_norm" => LAYER_NORM,
        "layer_norm2d" => EPS,
        _ => &[],
    }
}

/// Bound arguments of one op call, by name.
struct Args {
    values: HashMap<&'static str, (ArgValue, Span)>,
}

impl Args {
    fn int(&self, name: &str, default: i64) -> i64 {
        match self.values.get(name) {
            Some((ArgValue::Int(v), _)) => *v,
            _ => default,
        }
    }
    fn hw(&self, name: &str, default: Hw) -> Hw {
        match self.values.get(name) {
            Some((ArgValue::Int(v), _)) => Hw::square(*v as usize),
            Some((ArgValue::Pair(h, w), _)) => Hw::new(*h as usize, *w as usize),
            _ => default,
        }
    }
    /// An explicit `pad`: an integer, a pair `(h, w)` or `(top, left, bottom, right)`;
    /// zero when absent (`same` is resolved by the caller, which knows the input).
    fn pad(&self) -> Pad {
        match self.values.get("pad") {
            Some((ArgValue::Quad([t, l, b, r]), _)) => {
                Pad { top: *t as usize, left: *l as usize, bottom: *b as usize, right: *r as usize }
            }
            _ => Pad::symmetric(self.hw("pad", Hw::square(0))),
        }
    }
    fn float(&self, name: &str, default: f64) -> f64 {
        match self.values.get(name) {
            Some((ArgValue::Float(v), _)) => *v,
            Some((ArgValue::Int(v), _)) => *v as f64,
            _ => default,
        }
    }
    fn bool(&self, name: &str, default: bool) -> bool {
        match self.values.get(name) {
            Some((ArgValue::Bool(v), _)) => *v,
            _ => default,
        }
    }
    /// Where an argument was written, if it was.
    fn span(&self, name: &str) -> Option<Span> {
        self.values.get(name).map(|(_, span)| span.clone())
    }
    fn is_same_pad(&self) -> bool {
        matches!(self.values.get("pad"), Some((ArgValue::Same, _)))
    }
}

/// The largest size argument accepted (channels, kernel, stride...).
const MAX_SIZE_ARG: i64 = 1 << 24;

impl<'a> Lowerer<'a> {
    fn frame(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("the network frame is never popped")
    }

    /// Records a diagnostic. A mistake inside a block body is met once per call, and one
    /// mistake can break two rules at one place (a label in `repeat` also collides with
    /// itself): only the first diagnostic at each place is kept, so a mistake inside
    /// `repeat 1000000000` costs one diagnostic, not one per copy.
    fn error(&mut self, diag: Diag) {
        if self.error_places.insert((diag.span.start, diag.span.end)) {
            self.diags.push(diag);
        }
    }

    /// Counts one unit of elaboration work; false (and an error, once) past [`MAX_STEPS`].
    fn spend(&mut self, span: &Span) -> bool {
        if self.too_big {
            return false;
        }
        self.steps += 1;
        if self.steps > MAX_STEPS {
            self.too_big = true;
            self.error(
                Diag::new(
                    format!("the network expands to more than {MAX_STEPS} steps"),
                    span.clone(),
                    "while expanding this",
                )
                .note(format!(
                    "`repeat` counts and nested block calls multiply; at most {MAX_NODES} layers are allowed"
                )),
            );
            return false;
        }
        true
    }

    fn statements(&mut self, statements: &'a [Stmt]) {
        for statement in statements {
            if !self.spend(statement_span(statement)) {
                return;
            }
            self.statement(statement);
        }
    }

    fn statement(&mut self, statement: &'a Stmt) {
        match statement {
            Stmt::Input { name, dims, span } => self.input(name, dims, span),
            Stmt::Output { names, span } => self.output(names, span),
            Stmt::Repeat { count, body, .. } => {
                let Some(n) = self.eval_int(count) else { return };
                if n < 1 {
                    self.error(Diag::new(
                        format!("repeat count must be at least 1, got {n}"),
                        count.span.clone(),
                        "expected a positive count",
                    ));
                    return;
                }
                self.frame().repeat_depth += 1;
                for _ in 0..n {
                    if !self.spend(&count.span) {
                        break;
                    }
                    self.statements(body);
                }
                self.frame().repeat_depth -= 1;
            }
            Stmt::Chain(chain) => self.chain(chain),
        }
    }

    fn input(&mut self, name: &Ident, dims: &[(String, Span)], span: &Span) {
        if self.frame().kind != FrameKind::Network {
            self.error(Diag::new(
                "`input` is a network-level statement",
                span.clone(),
                "not allowed inside a block or seq",
            ));
            return;
        }
        let mut shape = vec![self.options.batch];
        let mut ok = true;
        for (text, dim_span) in dims {
            match text.parse::<usize>() {
                Ok(d) if d >= 1 && d as i64 <= MAX_SIZE_ARG => shape.push(d),
                _ => {
                    self.error(Diag::new(
                        format!("input dimension `{text}` must be between 1 and {MAX_SIZE_ARG}"),
                        dim_span.clone(),
                        "invalid size",
                    ));
                    ok = false;
                }
            }
        }
        if ok
            && self.graph.inputs.is_empty()
            && let Some(override_shape) = &self.options.input_shape
        {
            if override_shape.len() != dims.len() {
                self.error(Diag::new(
                    format!(
                        "--input-shape has {} dimensions but input `{}` declares {}",
                        override_shape.len(),
                        name.name,
                        dims.len()
                    ),
                    span.clone(),
                    "declared here",
                ));
                ok = false;
            } else {
                shape = std::iter::once(self.options.batch).chain(override_shape.iter().copied()).collect();
            }
        }
        if ok && dims.len() > 3 {
            self.error(Diag::new(
                format!("an input is [C, H, W], [C, L], [F] or [] (a scalar), not {} dimensions", dims.len()),
                span.clone(),
                "expected at most 3 dimensions",
            ));
            ok = false;
        }
        if ok && shape::checked_elements(&shape).is_none() {
            self.error(Diag::new(
                format!("input {} is too large", fmt_shape(&shape)),
                span.clone(),
                "too many elements",
            ));
            ok = false;
        }
        let value = if ok {
            let node = Node {
                op: Op::Input { name: name.name.clone() },
                name: name.name.clone(),
                shape,
                params: Vec::new(),
                span: Some(span.clone()),
                epilogue: Default::default(),
                precision: Default::default(),
            };
            Some(self.add_node(node, &[]))
        } else {
            None
        };
        self.bind(name, value);
        self.frame().current = Some(value);
    }

    fn output(&mut self, names: &[Ident], span: &Span) {
        if self.frame().kind != FrameKind::Network {
            self.error(Diag::new(
                "`output` is a network-level statement",
                span.clone(),
                "not allowed inside a block or seq",
            ));
            return;
        }
        if let Some(previous) = self.outputs_declared.clone() {
            self.error(
                Diag::new("`output` may appear once", span.clone(), "second `output`")
                    .secondary(previous, "first `output` here"),
            );
            return;
        }
        self.outputs_declared = Some(span.clone());
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name.name.clone()) {
                self.error(Diag::new(
                    format!("`{}` is listed twice", name.name),
                    name.span.clone(),
                    "duplicate output",
                ));
                continue;
            }
            if let Some(Some(node)) = self.lookup_tensor(name) {
                self.graph.outputs.push(Output { name: name.name.clone(), node });
            }
        }
    }

    /// Checks the end of the network: outputs exist.
    fn finish(&mut self, network: &Network) {
        if self.too_big {
            return;
        }
        if self.graph.inputs.is_empty() && self.diags.is_empty() {
            self.error(
                Diag::new(
                    format!("network `{}` has no input", network.name.name),
                    network.name.span.clone(),
                    "no `input` declared",
                )
                .note("declare one, e.g. `input image: [3, 224, 224]`"),
            );
            return;
        }
        if self.outputs_declared.is_none() {
            match self.frames.first().map(|f| (f.current, f.parts_at.clone())) {
                Some((Some(Some(node)), _)) => {
                    self.graph.outputs.push(Output { name: "output".to_string(), node });
                }
                Some((None, Some(parts_at))) => self.error(
                    Diag::new("the network ends with several tensors", parts_at, "the last statement makes these")
                        .note("declare the outputs: `output a, b`"),
                ),
                _ => {}
            }
        }
    }

    fn add_node(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        if self.graph.node_count() >= MAX_NODES && !self.too_big {
            self.too_big = true;
            let span = node.span.clone().unwrap_or(0..0);
            self.error(Diag::new(
                format!("the network expands to more than {MAX_NODES} layers"),
                span,
                "while expanding this",
            ));
        }
        self.graph.add_node(node, operands)
    }

    fn is_callable(&self, name: &str) -> bool {
        OP_NAMES.contains(&name) || self.blocks.contains_key(name)
    }

    /// Binds a tensor name in the innermost frame.
    fn bind(&mut self, name: &Ident, value: Value) {
        if self.is_callable(&name.name) || name.name == "in" {
            let what = if name.name == "in" {
                "`in`, the block's input"
            } else if OP_NAMES.contains(&name.name.as_str()) {
                "an op"
            } else {
                "a block"
            };
            self.error(Diag::new(
                format!("tensor name `{}` is already {what}", name.name),
                name.span.clone(),
                "choose another name",
            ));
            return;
        }
        let frame = self.frame();
        if let Some((_, previous)) = frame.tensors.get(&name.name) {
            let previous = previous.clone();
            self.error(
                Diag::new(
                    format!("`{}` is defined twice in this scope", name.name),
                    name.span.clone(),
                    "second definition",
                )
                .secondary(previous, "first defined here"),
            );
            return;
        }
        frame.tensors.insert(name.name.clone(), (value, name.span.clone()));
    }

    /// Finds a tensor by name, walking out through `seq` frames up to the nearest block
    /// or the network. Reports an error and returns `None` if there is none.
    fn lookup_tensor(&mut self, name: &Ident) -> Option<Value> {
        for frame in self.frames.iter().rev() {
            if name.name == "in" {
                if let Some(input) = frame.input {
                    return Some(input);
                }
            } else if let Some((value, _)) = frame.tensors.get(&name.name) {
                return Some(*value);
            }
            if frame.kind == FrameKind::Block {
                break;
            }
        }
        let diag = if name.name == "in" {
            Diag::new("`in` is only defined inside a block", name.span.clone(), "not inside a block")
                .note("at network level, name the input (`input x: [...]`) and use that name")
        } else {
            let candidates = self.visible_tensor_names();
            let mut diag = Diag::new(
                format!("unknown tensor `{}`", short(&name.name)),
                name.span.clone(),
                "not defined in this scope",
            );
            if let Some(s) = suggest(&name.name, candidates.iter().map(String::as_str)) {
                diag = diag.note(format!("help: did you mean `{s}`?"));
            }
            diag
        };
        self.error(diag);
        None
    }

    fn visible_tensor_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for frame in self.frames.iter().rev() {
            names.extend(frame.tensors.keys().cloned());
            if frame.input.is_some() {
                names.push("in".to_string());
            }
            if frame.kind == FrameKind::Block {
                break;
            }
        }
        names.sort();
        names
    }

    fn lookup_int(&self, name: &str) -> Option<i64> {
        for frame in self.frames.iter().rev() {
            if let Some(v) = frame.ints.get(name) {
                return Some(*v);
            }
            if frame.kind == FrameKind::Block {
                break;
            }
        }
        None
    }

    fn chain(&mut self, chain: &'a Chain) {
        let mut steps: &[Step] = &chain.steps;
        let mut current: Option<Value> = self.frame().current;
        // A bare name that is no op or block, first in the chain, is the source tensor.
        if let Some(first) = steps.first()
            && let (None, StepKind::Call { name, args: None }) = (&first.label, &first.kind)
            && !self.is_callable(&name.name)
        {
            let known = name.name == "in" || self.visible_tensor_names().contains(&name.name);
            if known || steps.len() > 1 {
                current = Some(self.lookup_tensor(name).unwrap_or(None));
            } else {
                self.unknown_callable(name);
                current = Some(None);
            }
            steps = &steps[1..];
        }
        // A multi-output op in the middle was reported; the names then say nothing new.
        let mut misplaced_parts = false;
        for (index, step) in steps.iter().enumerate() {
            if !self.spend(&step.span) {
                return;
            }
            if let Some(name) = multi_output_op(step) {
                if index + 1 == steps.len() {
                    let values = self.multi_output(step, name, current, &chain.bindings);
                    for (binding, value) in chain.bindings.iter().zip(values) {
                        self.bind(binding, value);
                    }
                    let frame = self.frame();
                    frame.current = None;
                    frame.parts_at = Some(step.span.clone());
                    return;
                }
                self.error(
                    Diag::new(
                        format!("`{}` makes several tensors, so it must end the statement", name.name),
                        step.span.clone(),
                        "a step follows it",
                    )
                    .note(format!(
                        "name its parts, e.g. `a, b = {}(2)`, then continue from one: `b |> ...`",
                        name.name
                    )),
                );
                self.step_name(&step.label, &name.name);
                current = Some(None);
                misplaced_parts = true;
                continue;
            }
            current = Some(self.step(step, current));
        }
        let value = current.unwrap_or(None);
        match chain.bindings.as_slice() {
            [] => {}
            [binding] => self.bind(binding, value),
            bindings if misplaced_parts => {
                for binding in bindings {
                    self.bind(binding, None);
                }
            }
            bindings => {
                let step_name = match chain.steps.last().map(|s| &s.kind) {
                    Some(StepKind::Call { name, .. }) => format!("`{}`", name.name),
                    _ => "this statement".to_string(),
                };
                self.error(
                    Diag::new(
                        format!("{} names are bound, but {step_name} makes one tensor", bindings.len()),
                        bindings_span(bindings),
                        "several names",
                    )
                    .note("only `chunk` and `split`, as the last step, make several tensors"),
                );
                for binding in bindings {
                    self.bind(binding, None);
                }
            }
        }
        self.frame().current = Some(value);
    }

    /// A multi-output step (`chunk`, `split`) ending a statement: one `slice` node per
    /// part, each bound to its name. Returns one value per name (poisoned on error).
    fn multi_output(&mut self, step: &'a Step, name: &Ident, current: Option<Value>, bindings: &[Ident]) -> Vec<Value> {
        let poisoned = vec![None; bindings.len()];
        let (_, path) = self.step_name(&step.label, &name.name);
        if let Some(label) = &step.label {
            self.error(
                Diag::new(
                    format!("`{}` has no weights, so its layer needs no name", name.name),
                    label.span.clone(),
                    "remove this label",
                )
                .note("name the tensors it makes instead: `a, b = ...`"),
            );
            return poisoned;
        }
        let input = self.need_current(current, &name.span);
        let args = step_args(step);
        let sizes_arg = match name.name.as_str() {
            "chunk" => self.bind_args("chunk", &name.span, args).map(|a| SizesArg::Chunks(a.int("chunks", 1) as usize)),
            _ => self.int_list_args("split", &name.span, args, 1).map(SizesArg::Sizes),
        };
        let (Some(input), Some(sizes_arg)) = (input, sizes_arg) else { return poisoned };
        let input_shape = self.graph.node(input).shape.clone();
        if input_shape.len() < 2 {
            self.error(Diag::new(
                format!("`{}` splits dimension 1, but its input is {}", name.name, fmt_shape(&input_shape)),
                step.span.clone(),
                "no dimension 1",
            ));
            return poisoned;
        }
        let channels = input_shape[1];
        let sizes: Vec<usize> = match sizes_arg {
            SizesArg::Chunks(chunks) => {
                // torch.chunk: parts of ceil(C / chunks), the last smaller; fewer parts
                // than asked when that leaves nothing for the last ones.
                let size = channels.div_ceil(chunks);
                let sizes: Vec<usize> = (0..channels.div_ceil(size)).map(|i| size.min(channels - i * size)).collect();
                if sizes.len() != chunks {
                    self.error(
                        Diag::new(
                            format!("chunk({chunks}) of {channels} channels makes {} parts, not {chunks}", sizes.len()),
                            step.span.clone(),
                            format!("parts of {size} channels"),
                        )
                        .note("torch.chunk makes parts of ceil(C / chunks) channels; use `split` for other sizes"),
                    );
                    return poisoned;
                }
                sizes
            }
            SizesArg::Sizes(sizes) => {
                let sum = sizes.iter().try_fold(0usize, |acc, s| acc.checked_add(*s));
                if sum != Some(channels) {
                    let listed: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
                    self.error(Diag::new(
                        format!(
                            "split({}) needs sizes that sum to the {channels} channels of {}",
                            listed.join(", "),
                            fmt_shape(&input_shape)
                        ),
                        step.span.clone(),
                        match sum {
                            Some(sum) => format!("these sum to {sum}"),
                            None => "these overflow".to_string(),
                        },
                    ));
                    return poisoned;
                }
                sizes
            }
        };
        if sizes.len() != bindings.len() {
            let example: Vec<String> = (0..sizes.len()).map(|i| format!("x{}", i + 1)).collect();
            let (message, span, label) = if bindings.is_empty() {
                (
                    format!("`{}` makes {} tensors, and they need names", name.name, sizes.len()),
                    step.span.clone(),
                    "its parts are not named".to_string(),
                )
            } else {
                (
                    format!("`{}` makes {} tensors, but {} names are bound", name.name, sizes.len(), bindings.len()),
                    bindings_span(bindings),
                    format!("{} names", bindings.len()),
                )
            };
            self.error(Diag::new(message, span, label).note(format!("write `{} = ...`", example.join(", "))));
            return poisoned;
        }
        let mut start = 0;
        let mut values = Vec::new();
        for (index, len) in sizes.into_iter().enumerate() {
            values.push(self.finish_node(step, Op::Slice { start, len }, format!("{path}.{index}"), &[input]));
            start += len;
        }
        values
    }

    /// Binds a list of positional integer arguments (`split`, `permute`), each at least
    /// `min`.
    fn int_list_args(&mut self, op_name: &str, name_span: &Span, args: &[Arg], min: i64) -> Option<Vec<usize>> {
        if args.is_empty() {
            let example = match op_name {
                "permute" => "permute(0, 2, 3, 1)",
                "reshape" => "reshape(16, 7, 7)",
                "mean" => "mean(2, 3, keepdim=true)",
                _ => "split(24, 40)",
            };
            self.error(
                Diag::new(format!("`{op_name}` needs a list of integers"), name_span.clone(), "no arguments")
                    .note(format!("e.g. `{example}`")),
            );
            return None;
        }
        let mut values = Vec::new();
        let mut ok = true;
        for arg in args {
            if let Some(keyword) = &arg.keyword {
                self.error(Diag::new(
                    format!("`{op_name}` takes integers, not keyword arguments"),
                    keyword.span.clone(),
                    "unexpected keyword",
                ));
                ok = false;
                continue;
            }
            match self.eval_int(&arg.value) {
                Some(v) if (min..=MAX_SIZE_ARG).contains(&v) => values.push(v as usize),
                Some(v) => {
                    self.error(Diag::new(
                        format!("`{op_name}` arguments must be between {min} and {MAX_SIZE_ARG}, got {v}"),
                        arg.value.span.clone(),
                        "out of range",
                    ));
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(values)
    }

    /// The name of the step being elaborated, and its full dotted path.
    fn step_name(&mut self, label: &Option<Ident>, op_name: &str) -> (String, String) {
        let frame = self.frame();
        let local = if frame.kind == FrameKind::Seq {
            let position = frame.position;
            frame.position += 1;
            label.as_ref().map(|l| l.name.clone()).unwrap_or_else(|| position.to_string())
        } else if let Some(label) = label {
            label.name.clone()
        } else {
            let counter = frame.counters.entry(op_name.to_string()).or_insert(0);
            let name = format!("{op_name}_{counter}");
            *counter += 1;
            name
        };
        let path = if frame.prefix.is_empty() { local.clone() } else { format!("{}.{}", frame.prefix, local) };
        (local, path)
    }

    fn step(&mut self, step: &'a Step, current: Option<Value>) -> Value {
        if let Some(label) = &step.label
            && self.frame().repeat_depth > 0
        {
            self.error(
                Diag::new(
                    format!("layer name `{}:` inside `repeat`", label.name),
                    label.span.clone(),
                    "every copy would get this name",
                )
                .note("name the layers after the repeat, or wrap the repeat in a named `seq`"),
            );
        }
        if let Some(label) = &step.label
            && !step.label_is_ident
            && (label.name.is_empty() || label.name.contains(|c: char| c == '.' || c.is_whitespace() || c.is_control()))
        {
            self.error(
                Diag::new(
                    format!("layer name \"{}\" is not a name", label.name.escape_default()),
                    label.span.clone(),
                    if label.name.is_empty() { "empty" } else { "contains `.` or white space" },
                )
                .note("a quoted layer name is one non-empty part of a parameter's dotted path"),
            );
        }
        let result = match &step.kind {
            StepKind::Seq { body, keyword } => {
                let (_, path) = self.step_name(&step.label, "seq");
                let input = self.need_current(current, keyword);
                self.claim_prefix(&path, &step_name_span(step));
                let mut frame = Frame::new(FrameKind::Seq, path, Some(input));
                frame.repeat_depth = 0;
                self.frames.push(frame);
                self.statements(body);
                let frame = self.frames.pop().expect("pushed above");
                self.frame_result(frame, "seq")
            }
            StepKind::Call { name, args } => {
                if OP_NAMES.contains(&name.name.as_str()) {
                    self.op(step, name, args.as_deref().unwrap_or(&[]), current)
                } else if let Some(block) = self.blocks.get(name.name.as_str()).copied() {
                    self.block_call(step, block, name, args.as_deref().unwrap_or(&[]), current)
                } else {
                    self.unknown_callable(name);
                    // Keep the seq numbering in step with what the user meant.
                    self.step_name(&step.label, &name.name);
                    None
                }
            }
        };
        if let Some(label) = &step.label {
            // A label equal to an op or block name names the layer only (torchvision has
            // `transition1.conv`); it cannot name a tensor, or `NAME |>` would be ambiguous.
            if !self.is_callable(&label.name) && step.label_is_ident {
                self.bind(label, result);
            }
        }
        result
    }

    fn unknown_callable(&mut self, name: &Ident) {
        let tensors = self.visible_tensor_names();
        let is_tensor = tensors.contains(&name.name);
        let mut diag = if is_tensor {
            Diag::new(
                format!("`{}` is a tensor, not an op or block", name.name),
                name.span.clone(),
                "a tensor can only start a chain",
            )
            .note(format!("help: write `{} |> ...` at the start of the statement", name.name))
        } else {
            Diag::new(
                format!("unknown name `{}`", short(&name.name)),
                name.span.clone(),
                "not an op, block or tensor in scope",
            )
        };
        if !is_tensor {
            let names: Vec<&str> = OP_NAMES.iter().copied().chain(self.blocks.keys().copied()).collect();
            if let Some(s) = suggest(&name.name, names.into_iter()) {
                diag = diag.note(format!("help: did you mean `{s}`?"));
            }
        }
        self.error(diag);
    }

    /// The tensor a step consumes; an error if there is none yet.
    fn need_current(&mut self, current: Option<Value>, span: &Span) -> Value {
        match current {
            Some(value) => value,
            None if self.frame().parts_at.is_some() => {
                let parts_at = self.frame().parts_at.clone().expect("checked");
                self.error(
                    Diag::new("no tensor to apply this to", span.clone(), "which of the parts?")
                        .secondary(parts_at, "the statement before makes several tensors")
                        .note("start the chain with one of their names, e.g. `x2 |> ...`"),
                );
                None
            }
            None => {
                self.error(
                    Diag::new("no tensor to apply this to", span.clone(), "nothing comes before this")
                        .note("declare an input first (`input image: [3, 224, 224]`) or start the chain with a tensor (`x |> ...`)"),
                );
                None
            }
        }
    }

    /// Records that a layer owns a weight prefix; two layers with one prefix would
    /// read the same weights.
    fn claim_prefix(&mut self, path: &str, span: &Span) {
        if let Some(previous) = self.param_owners.get(path) {
            let previous = previous.clone();
            self.error(
                Diag::new(format!("two layers are both named `{path}`"), span.clone(), "second layer with this name")
                    .secondary(previous, "first layer with this name")
                    .note("their weights would collide; rename one of them"),
            );
        } else {
            self.param_owners.insert(path.to_string(), span.clone());
        }
    }

    fn block_call(
        &mut self,
        step: &'a Step,
        block: &'a BlockDef,
        name: &Ident,
        args: &'a [Arg],
        current: Option<Value>,
    ) -> Value {
        let (_, path) = self.step_name(&step.label, &block.name.name);
        let input = self.need_current(current, &name.span);
        if self.call_stack.contains(&block.name.name.as_str()) {
            self.error(Diag::new(
                format!("block `{}` calls itself (through {})", block.name.name, self.call_stack.join(" -> ")),
                name.span.clone(),
                "recursive call",
            ));
            return None;
        }
        if self.call_stack.len() >= super::parse::MAX_NESTING {
            self.error(Diag::new("block calls nested too deep", name.span.clone(), "here"));
            return None;
        }
        // Bind the block's integer parameters: positional, then keyword, then defaults.
        let mut bound: HashMap<String, i64> = HashMap::new();
        let mut ok = true;
        let mut seen_keyword = false;
        for (index, arg) in args.iter().enumerate() {
            let param = match &arg.keyword {
                Some(keyword) => {
                    seen_keyword = true;
                    match block.params.iter().find(|p| p.name.name == keyword.name) {
                        Some(p) => p,
                        None => {
                            let names: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
                            self.error(
                                Diag::new(
                                    format!("block `{}` has no parameter `{}`", block.name.name, keyword.name),
                                    keyword.span.clone(),
                                    "unknown parameter",
                                )
                                .note(format!("its parameters are: {}", names.join(", "))),
                            );
                            ok = false;
                            continue;
                        }
                    }
                }
                None => {
                    if seen_keyword {
                        self.error(Diag::new(
                            "positional argument after a keyword argument",
                            arg.span.clone(),
                            "move it before the keyword arguments",
                        ));
                        ok = false;
                        continue;
                    }
                    match block.params.get(index) {
                        Some(p) => p,
                        None => {
                            self.error(
                                Diag::new(
                                    format!(
                                        "block `{}` takes {} arguments, got {}",
                                        block.name.name,
                                        block.params.len(),
                                        args.len()
                                    ),
                                    arg.span.clone(),
                                    "unexpected argument",
                                )
                                .secondary(block.name.span.clone(), "block defined here"),
                            );
                            ok = false;
                            break;
                        }
                    }
                }
            };
            if bound.contains_key(&param.name.name) {
                self.error(Diag::new(
                    format!("parameter `{}` is given twice", param.name.name),
                    arg.span.clone(),
                    "given again here",
                ));
                ok = false;
                continue;
            }
            match self.eval_int(&arg.value) {
                Some(v) => {
                    bound.insert(param.name.name.clone(), v);
                }
                None => ok = false,
            }
        }
        // Defaults see the parameters before them.
        let mut defaults_frame = Frame::new(FrameKind::Block, String::new(), None);
        for param in &block.params {
            if let Some(v) = bound.get(&param.name.name) {
                defaults_frame.ints.insert(param.name.name.clone(), *v);
                continue;
            }
            match &param.default {
                Some(default) => {
                    self.frames.push(defaults_frame);
                    let v = self.eval_int(default);
                    defaults_frame = self.frames.pop().expect("pushed above");
                    match v {
                        Some(v) => {
                            defaults_frame.ints.insert(param.name.name.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                None => {
                    if ok {
                        self.error(
                            Diag::new(
                                format!("block `{}` needs argument `{}`", block.name.name, param.name.name),
                                name.span.clone(),
                                format!("missing `{}`", param.name.name),
                            )
                            .secondary(param.name.span.clone(), "parameter declared here"),
                        );
                    }
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        self.claim_prefix(&path, &step_name_span(step));
        let mut frame = Frame::new(FrameKind::Block, path, Some(input));
        frame.ints = defaults_frame.ints;
        frame.input = Some(input);
        self.frames.push(frame);
        self.call_stack.push(&block.name.name);
        self.statements(&block.body);
        self.call_stack.pop();
        let frame = self.frames.pop().expect("pushed above");
        self.frame_result(frame, "block")
    }

    /// The value a finished `seq` or block call gives: its current tensor. An error when
    /// its last statement bound several names (which one would it be?).
    fn frame_result(&mut self, frame: Frame, what: &str) -> Value {
        match (frame.current, frame.parts_at) {
            (Some(value), _) => value,
            (None, Some(parts_at)) => {
                self.error(
                    Diag::new(
                        format!("a {what} cannot end with several tensors"),
                        parts_at,
                        format!("the {what}'s last statement makes these"),
                    )
                    .note("end it with one tensor, e.g. `concat(x1, x2)`"),
                );
                None
            }
            (None, None) => None,
        }
    }

    /// Evaluates an integer expression; reports and returns `None` on error.
    fn eval_int(&mut self, expr: &Expr) -> Option<i64> {
        match self.eval(expr)? {
            ArgValue::Int(v) => Some(v),
            ArgValue::Pair(..) | ArgValue::Quad(..) => {
                self.error(Diag::new(
                    "expected an integer, found a tuple",
                    expr.span.clone(),
                    "pairs are for kernel, stride, pad, dilation and output size",
                ));
                None
            }
            _ => {
                self.error(Diag::new("expected an integer", expr.span.clone(), "not an integer"));
                None
            }
        }
    }

    fn eval(&mut self, expr: &Expr) -> Option<ArgValue> {
        match &expr.kind {
            ExprKind::Int(v) => Some(ArgValue::Int(*v)),
            ExprKind::Float(v) => Some(ArgValue::Float(*v)),
            ExprKind::Name(name) => match name.as_str() {
                "true" => Some(ArgValue::Bool(true)),
                "false" => Some(ArgValue::Bool(false)),
                "same" => Some(ArgValue::Same),
                "valid" => Some(ArgValue::Int(0)),
                _ => match self.lookup_int(name) {
                    Some(v) => Some(ArgValue::Int(v)),
                    None => {
                        let mut diag = Diag::new(
                            format!("unknown name `{name}`"),
                            expr.span.clone(),
                            "not a parameter of this block",
                        );
                        let mut candidates: Vec<String> = Vec::new();
                        for frame in self.frames.iter().rev() {
                            candidates.extend(frame.ints.keys().cloned());
                            if frame.kind == FrameKind::Block {
                                break;
                            }
                        }
                        if let Some(s) = suggest(name, candidates.iter().map(String::as_str)) {
                            diag = diag.note(format!("help: did you mean `{s}`?"));
                        }
                        self.error(diag);
                        None
                    }
                },
            },
            ExprKind::Neg(inner) => match self.eval(inner)? {
                ArgValue::Int(v) => Some(ArgValue::Int(v.checked_neg().unwrap_or(i64::MAX))),
                ArgValue::Float(v) => Some(ArgValue::Float(-v)),
                _ => {
                    self.error(Diag::new("`-` applies to numbers only", expr.span.clone(), "not a number"));
                    None
                }
            },
            ExprKind::Binary(op, lhs, rhs) => {
                let a = self.eval_int(lhs);
                let b = self.eval_int(rhs);
                let (a, b) = (a?, b?);
                let result = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div => {
                        if b == 0 {
                            self.error(Diag::new("division by zero", rhs.span.clone(), "this is 0"));
                            return None;
                        }
                        // Floor division, as the language says (Python's `//`).
                        a.checked_div(b).map(|q| if a % b != 0 && ((a < 0) != (b < 0)) { q - 1 } else { q })
                    }
                };
                match result {
                    Some(v) => Some(ArgValue::Int(v)),
                    None => {
                        self.error(Diag::new(
                            "integer overflow",
                            expr.span.clone(),
                            "the result does not fit in 64 bits",
                        ));
                        None
                    }
                }
            }
            ExprKind::Pair(a, b) => {
                let a = self.eval_int(a);
                let b = self.eval_int(b);
                Some(ArgValue::Pair(a?, b?))
            }
            ExprKind::Quad(items) => {
                let values: Vec<Option<i64>> = items.iter().map(|item| self.eval_int(item)).collect();
                let [t, l, b, r] = [values[0], values[1], values[2], values[3]];
                Some(ArgValue::Quad([t?, l?, b?, r?]))
            }
        }
    }

    /// Binds an op's arguments to its spec: positional, then keyword; no unknown or
    /// repeated keywords; required ones present; values of the right kind and range.
    fn bind_args(&mut self, op_name: &str, name_span: &Span, args: &[Arg]) -> Option<Args> {
        let spec = op_spec(op_name);
        let mut values: HashMap<&'static str, (ArgValue, Span)> = HashMap::new();
        let mut ok = true;
        let mut seen_keyword = false;
        for (index, arg) in args.iter().enumerate() {
            let spec_entry = match &arg.keyword {
                Some(keyword) => {
                    seen_keyword = true;
                    match spec.iter().find(|s| s.name == keyword.name) {
                        Some(s) => s,
                        None => {
                            let names: Vec<&str> = spec.iter().map(|s| s.name).collect();
                            let mut diag = Diag::new(
                                format!("`{op_name}` has no argument `{}`", keyword.name),
                                keyword.span.clone(),
                                "unknown keyword",
                            );
                            diag = if names.is_empty() {
                                diag.note(format!("`{op_name}` takes no arguments"))
                            } else {
                                diag.note(format!("its arguments are: {}", names.join(", ")))
                            };
                            if let Some(s) = suggest(&keyword.name, names.into_iter()) {
                                diag = diag.note(format!("help: did you mean `{s}`?"));
                            }
                            self.error(diag);
                            ok = false;
                            continue;
                        }
                    }
                }
                None => {
                    if seen_keyword {
                        self.error(Diag::new(
                            "positional argument after a keyword argument",
                            arg.span.clone(),
                            "move it before the keyword arguments",
                        ));
                        ok = false;
                        continue;
                    }
                    match spec.get(index) {
                        Some(s) => s,
                        None => {
                            let diag = if spec.is_empty() {
                                Diag::new(
                                    format!("`{op_name}` takes no arguments"),
                                    arg.span.clone(),
                                    "unexpected argument",
                                )
                            } else {
                                Diag::new(
                                    format!("`{op_name}` takes at most {} arguments, got {}", spec.len(), args.len()),
                                    arg.span.clone(),
                                    "unexpected argument",
                                )
                                .note(format!(
                                    "its arguments are: {}",
                                    spec.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                                ))
                            };
                            self.error(diag);
                            ok = false;
                            break;
                        }
                    }
                }
            };
            if values.contains_key(spec_entry.name) {
                self.error(Diag::new(
                    format!("argument `{}` is given twice", spec_entry.name),
                    arg.span.clone(),
                    "given again here",
                ));
                ok = false;
                continue;
            }
            match self.check_arg(op_name, spec_entry, &arg.value) {
                Some(v) => {
                    values.insert(spec_entry.name, (v, arg.value.span.clone()));
                }
                None => ok = false,
            }
        }
        for s in spec {
            if s.required && !values.contains_key(s.name) && ok {
                let all: Vec<&str> = spec.iter().map(|s| s.name).collect();
                self.error(
                    Diag::new(
                        format!("`{op_name}` needs argument `{}`", s.name),
                        name_span.clone(),
                        format!("missing `{}`", s.name),
                    )
                    .note(format!("usage: {op_name}({})", all.join(", "))),
                );
                ok = false;
            }
        }
        ok.then_some(Args { values })
    }

    fn check_arg(&mut self, op_name: &str, spec: &ArgSpec, expr: &Expr) -> Option<ArgValue> {
        let value = self.eval(expr)?;
        let span = expr.span.clone();
        // Sizes: `out`, `kernel`, `stride`, `dilation`, `groups`, `size` are >= 1; `pad` >= 0.
        let min = if spec.name == "pad" { 0 } else { 1 };
        let in_range = |v: i64| v >= min && v <= MAX_SIZE_ARG;
        let range_error = |v: i64| {
            Diag::new(
                format!("`{op_name}` argument `{}` must be between {min} and {MAX_SIZE_ARG}, got {v}", spec.name),
                span.clone(),
                "out of range",
            )
        };
        let kind_error = |what: &str| {
            Diag::new(
                format!("`{op_name}` argument `{}` must be {what}", spec.name),
                span.clone(),
                format!("expected {what}"),
            )
        };
        match (spec.kind, value) {
            (ArgKind::Int, ArgValue::Int(v)) | (ArgKind::IntOrPair | ArgKind::Pad, ArgValue::Int(v)) => {
                if in_range(v) {
                    Some(ArgValue::Int(v))
                } else {
                    self.error(range_error(v));
                    None
                }
            }
            (ArgKind::IntOrPair | ArgKind::Pad, ArgValue::Pair(a, b)) => {
                for v in [a, b] {
                    if !in_range(v) {
                        self.error(range_error(v));
                        return None;
                    }
                }
                Some(ArgValue::Pair(a, b))
            }
            (ArgKind::Pad, ArgValue::Quad(sides)) => {
                for v in sides {
                    if !in_range(v) {
                        self.error(range_error(v));
                        return None;
                    }
                }
                Some(ArgValue::Quad(sides))
            }
            (ArgKind::Pad, ArgValue::Same) => Some(ArgValue::Same),
            (ArgKind::Float, ArgValue::Float(v)) => self.check_float(op_name, spec.name, v, &span),
            (ArgKind::Float, ArgValue::Int(v)) => self.check_float(op_name, spec.name, v as f64, &span),
            (ArgKind::Bool, ArgValue::Bool(b)) => Some(ArgValue::Bool(b)),
            (kind, _) => {
                let what = match kind {
                    ArgKind::Int => "an integer",
                    ArgKind::IntOrPair => "an integer or a pair `(h, w)`",
                    ArgKind::Pad => "an integer, a pair `(h, w)`, `(top, left, bottom, right)`, `same` or `valid`",
                    ArgKind::Float => "a number",
                    ArgKind::Bool => "`true` or `false`",
                };
                self.error(kind_error(what));
                None
            }
        }
    }

    fn check_float(&mut self, op_name: &str, name: &str, v: f64, span: &Span) -> Option<ArgValue> {
        let ok = match name {
            "p" => (0.0..1.0).contains(&v),
            "eps" => v > 0.0 && v.is_finite(),
            "alpha" if op_name != "hardsigmoid" => v > 0.0 && v.is_finite(),
            _ => v.is_finite(),
        };
        if ok {
            Some(ArgValue::Float(v))
        } else {
            let expected = match name {
                "p" => "a probability in [0, 1)",
                "eps" => "a positive number",
                "alpha" if op_name != "hardsigmoid" => "a positive number",
                _ => "a finite number",
            };
            self.error(Diag::new(
                format!("`{op_name}` argument `{name}` must be {expected}, got {v}"),
                span.clone(),
                "out of range",
            ));
            None
        }
    }

    fn op(&mut self, step: &'a Step, name: &Ident, args: &'a [Arg], current: Option<Value>) -> Value {
        let op_name = name.name.as_str();
        let (_, path) = self.step_name(&step.label, op_name);
        if matches!(op_name, "add" | "mul" | "concat") {
            return self.merge(step, name, args, current, path);
        }
        let input = self.need_current(current, &name.span);
        if op_name == "permute" {
            let perm = self.int_list_args(op_name, &name.span, args, 0)?;
            return self.finish_node(step, Op::Permute { perm }, path, &[input?]);
        }
        if op_name == "mean" {
            return self.mean(step, name, args, input, path);
        }
        if op_name == "reshape" {
            let shape = self.int_list_args(op_name, &name.span, args, 1)?;
            return self.finish_node(step, Op::Reshape { shape }, path, &[input?]);
        }
        let args = self.bind_args(op_name, &name.span, args)?;
        let input = input?;
        let input_shape = self.graph.node(input).shape.clone();
        let op = self.build_op(op_name, &args, &input_shape, &name.span)?;
        self.finish_node(step, op, path, &[input])
    }

    /// `mean(d1, d2, ..., keepdim=false)`: the dimensions as integers, then the keyword.
    fn mean(&mut self, step: &'a Step, name: &Ident, args: &'a [Arg], input: Value, path: String) -> Value {
        let (keywords, positional): (Vec<&Arg>, Vec<&Arg>) = args.iter().partition(|a| a.keyword.is_some());
        let positional: Vec<Arg> = positional.into_iter().cloned().collect();
        let dims = self.int_list_args("mean", &name.span, &positional, 1);
        let mut keepdim = Some(false);
        for arg in keywords {
            let keyword = arg.keyword.as_ref().expect("partitioned on the keyword");
            if keyword.name != "keepdim" {
                self.error(
                    Diag::new(
                        format!("`mean` has no argument `{}`", keyword.name),
                        keyword.span.clone(),
                        "unknown argument",
                    )
                    .note("its arguments are: the dimensions, then keepdim"),
                );
                keepdim = None;
                continue;
            }
            match self.eval(&arg.value) {
                Some(ArgValue::Bool(b)) => keepdim = keepdim.map(|_| b),
                Some(_) => {
                    self.error(Diag::new(
                        "`mean` argument `keepdim` must be `true` or `false`",
                        arg.value.span.clone(),
                        "expected `true` or `false`",
                    ));
                    keepdim = None;
                }
                None => keepdim = None,
            }
        }
        let (mut dims, keepdim, input) = (dims?, keepdim?, input?);
        dims.sort_unstable();
        self.finish_node(step, Op::Mean { dims, keepdim }, path, &[input])
    }

    /// The `pad` of a window op: explicit, or `same` (ONNX's `SAME_UPPER`: the odd pixel
    /// at the bottom/right), which needs the 4-D input's size.
    fn resolve_pad(
        &mut self,
        op_name: &str,
        args: &Args,
        input_shape: &[usize],
        span: &Span,
        (kernel, stride, dilation): (Hw, Hw, Hw),
    ) -> Option<Pad> {
        if !args.is_same_pad() {
            return Some(args.pad());
        }
        // A pool on [N, C, L]: `same` along L.
        if input_shape.len() == 3 && op_name != "conv" {
            return Some(same_pad(Hw::new(1, input_shape[2]), kernel, stride, dilation));
        }
        if input_shape.len() != 4 {
            self.error(Diag::new(
                format!("{op_name} expects a 4-D [N, C, H, W] tensor, got {}", fmt_shape(input_shape)),
                span.clone(),
                "here",
            ));
            return None;
        }
        Some(same_pad(Hw::new(input_shape[2], input_shape[3]), kernel, stride, dilation))
    }

    fn build_op(&mut self, op_name: &str, args: &Args, input_shape: &[usize], span: &Span) -> Option<Op> {
        let window = |args: &Args| -> (Hw, Hw, Hw) {
            let kernel = args.hw("kernel", Hw::square(1));
            let stride = args.hw("stride", if op_name == "conv" { Hw::square(1) } else { kernel });
            let dilation = args.hw("dilation", Hw::square(1));
            (kernel, stride, dilation)
        };
        Some(match op_name {
            "conv" => {
                let (kernel, stride, dilation) = window(args);
                let pad = self.resolve_pad(op_name, args, input_shape, span, (kernel, stride, dilation))?;
                Op::Conv(Conv {
                    out_channels: args.int("out", 1) as usize,
                    kernel,
                    stride,
                    pad,
                    dilation,
                    groups: args.int("groups", 1) as usize,
                    bias: args.bool("bias", true),
                })
            }
            "linear" => Op::Linear { out_features: args.int("out", 1) as usize, bias: args.bool("bias", true) },
            "batch_norm" => Op::BatchNorm { eps: args.float("eps", 1e-5) },
            "relu" => Op::Activation(Activation::Relu),
            "leaky_relu" => Op::Activation(Activation::LeakyRelu { slope: args.float("slope", 0.01) }),
            "sigmoid" => Op::Activation(Activation::Sigmoid),
            "tanh" => Op::Activation(Activation::Tanh),
            "relu6" => Op::Activation(Activation::Clamp { min: 0.0, max: 6.0 }),
            "hardtanh" => {
                let (min, max) = (args.float("min", -1.0), args.float("max", 1.0));
                if min >= max {
                    let at = args.span("max").or_else(|| args.span("min")).unwrap_or_else(|| span.clone());
                    self.error(
                        Diag::new(
                            format!("`hardtanh` needs `min` < `max`, got min={min} and max={max}"),
                            at,
                            "not above `min`",
                        )
                        .note("nn.Hardtanh(min_val, max_val) requires max_val > min_val"),
                    );
                    return None;
                }
                Op::Activation(Activation::Clamp { min, max })
            }
            "hardswish" => Op::Activation(Activation::HardSwish),
            // PyTorch's formula unless a constant is given, then ONNX's `alpha * x + beta`.
            "hardsigmoid" if args.values.is_empty() => Op::Activation(Activation::HardSigmoid),
            "hardsigmoid" => Op::Activation(Activation::HardSigmoidAffine {
                alpha: args.float("alpha", 1.0 / 6.0),
                beta: args.float("beta", 0.5),
            }),
            "silu" => Op::Activation(Activation::Silu),
            "gelu" => Op::Activation(Activation::Gelu { tanh: args.bool("tanh", false) }),
            "erf" => Op::Activation(Activation::Erf),
            "softmax" => Op::Softmax,
            "max_pool" | "avg_pool" => {
                // `dilation`: PyTorch's for max_pool, ONNX's (opset 19) for avg_pool.
                let (mut kernel, mut stride, mut dilation) = window(args);
                if input_shape.len() == 3 {
                    // 1-D pooling along L of [N, C, L]: single integers, the window 1 x k.
                    for name in ["kernel", "stride", "pad", "dilation"] {
                        if let Some((ArgValue::Pair(..) | ArgValue::Quad(..), at)) = args.values.get(name) {
                            self.error(
                                Diag::new(
                                    format!("`{op_name}` on [N, C, L] takes a single integer `{name}`, along L"),
                                    at.clone(),
                                    "a tuple",
                                )
                                .note("1-D pooling: nn.MaxPool1d / nn.AvgPool1d"),
                            );
                            return None;
                        }
                    }
                    (kernel, stride, dilation) = (Hw::new(1, kernel.w), Hw::new(1, stride.w), Hw::new(1, dilation.w));
                }
                let pad = self.resolve_pad(op_name, args, input_shape, span, (kernel, stride, dilation))?;
                let pad = if input_shape.len() == 3 { Pad { top: 0, bottom: 0, ..pad } } else { pad };
                let pool = Pool {
                    kernel,
                    stride,
                    pad,
                    dilation,
                    ceil: args.bool("ceil", false),
                    count_pad: args.bool("count_pad", false),
                };
                if op_name == "max_pool" { Op::MaxPool(pool) } else { Op::AvgPool(pool) }
            }
            "global_avg_pool" => Op::GlobalAvgPool,
            "global_max_pool" => Op::GlobalMaxPool,
            "adaptive_avg_pool" => Op::AdaptiveAvgPool { out: args.hw("out", Hw::square(1)) },
            "dropout" => Op::Dropout { p: args.float("p", 0.5) },
            "dropout2d" => Op::Dropout2d { p: args.float("p", 0.5) },
            "stochastic_depth" => Op::StochasticDepth { p: args.float("p", 0.0) },
            "flatten" => Op::Flatten,
            "identity" => Op::Identity,
            "lrn" => Op::Lrn {
                size: args.int("size", 5) as usize,
                alpha: args.float("alpha", 1e-4),
                beta: args.float("beta", 0.75),
                k: args.float("k", 2.0),
            },
            "channel_shuffle" => Op::ChannelShuffle { groups: args.int("groups", 1) as usize },
            // `dims=k`: nn.LayerNorm over the last k dimensions together.
            "layer_norm" => match args.int("dims", 1) {
                1 => Op::LayerNorm { eps: args.float("eps", 1e-5), axis: input_shape.len().saturating_sub(1) },
                dims => Op::LayerNormLast { eps: args.float("eps", 1e-5), dims: dims.max(0) as usize },
            },
            "layer_norm2d" => {
                if input_shape.len() != 4 {
                    self.error(Diag::new(
                        format!("layer_norm2d expects a 4-D [N, C, H, W] tensor, got {}", fmt_shape(input_shape)),
                        span.clone(),
                        "here",
                    ));
                    return None;
                }
                Op::LayerNorm { eps: args.float("eps", 1e-5), axis: 1 }
            }
            "scale" => Op::Scale,
            other => {
                self.error(Diag::new(format!("internal: no builder for `{other}`"), span.clone(), ""));
                return None;
            }
        })
    }

    fn merge(&mut self, step: &'a Step, name: &Ident, args: &'a [Arg], current: Option<Value>, path: String) -> Value {
        let op = match name.name.as_str() {
            "add" => Op::Add,
            "mul" => Op::Mul,
            _ => Op::Concat,
        };
        if args.is_empty() {
            self.error(Diag::new(format!("`{}` needs operands", name.name), step.span.clone(), "no operands").note(
                format!("write `{}(x)` to combine the current tensor with x, or `{}(a, b, ...)`", name.name, name.name),
            ));
            return None;
        }
        let mut operands: Vec<Value> = Vec::new();
        if args.len() == 1 {
            operands.push(self.need_current(current, &name.span));
        }
        let mut ok = true;
        for arg in args {
            if let Some(keyword) = &arg.keyword {
                self.error(Diag::new(
                    format!("`{}` takes tensors, not keyword arguments", name.name),
                    keyword.span.clone(),
                    "unexpected keyword",
                ));
                ok = false;
                continue;
            }
            match &arg.value.kind {
                ExprKind::Name(tensor) => {
                    let ident = Ident { name: tensor.clone(), span: arg.value.span.clone() };
                    match self.lookup_tensor(&ident) {
                        Some(v) => operands.push(v),
                        None => ok = false,
                    }
                }
                _ => {
                    self.error(Diag::new(
                        format!("`{}` operands are tensor names", name.name),
                        arg.value.span.clone(),
                        "expected a tensor name",
                    ));
                    ok = false;
                }
            }
        }
        if !ok || operands.iter().any(|o| o.is_none()) {
            return None;
        }
        let operands: Vec<NodeId> = operands.into_iter().flatten().collect();
        self.finish_node(step, op, path, &operands)
    }

    /// Infers the node's shape, names its parameters and adds it; a shape error is
    /// reported against the step and poisons the value.
    fn finish_node(&mut self, step: &Step, op: Op, path: String, operands: &[NodeId]) -> Value {
        let shapes: Vec<Vec<usize>> = operands.iter().map(|o| self.graph.node(*o).shape.clone()).collect();
        let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let shape = match shape::infer(&op, &shape_refs) {
            Ok(shape) => shape,
            Err(e) => {
                let operand_shapes: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
                let mut diag = Diag::new(
                    format!("layer `{path}`: {}", e.message),
                    step.span.clone(),
                    format!("{} of {}", op.mnemonic(), operand_shapes.join(" and ")),
                );
                if let Some(help) = e.help {
                    diag = diag.note(format!("help: {help}"));
                }
                self.error(diag);
                return None;
            }
        };
        let params: Vec<Param> = op
            .param_shapes(&shapes[0])
            .into_iter()
            .map(|(role, shape)| Param { role, name: role.name(&path), shape })
            .collect();
        if op.is_weighted() {
            self.claim_prefix(&path, &step_name_span(step));
        }
        let node = Node {
            op,
            name: path,
            shape,
            params,
            span: Some(step.span.clone()),
            epilogue: Default::default(),
            precision: Default::default(),
        };
        Some(self.add_node(node, operands))
    }
}

/// The arguments of a call step (none for `seq`).
fn step_args(step: &Step) -> &[Arg] {
    match &step.kind {
        StepKind::Call { args, .. } => args.as_deref().unwrap_or(&[]),
        StepKind::Seq { .. } => &[],
    }
}

/// The op name of a step that makes several tensors (`chunk`, `split`), if it is one.
fn multi_output_op(step: &Step) -> Option<&Ident> {
    match &step.kind {
        StepKind::Call { name, .. } if MULTI_OUTPUT_OPS.contains(&name.name.as_str()) => Some(name),
        _ => None,
    }
}

/// The span covering a statement's bound names.
fn bindings_span(bindings: &[Ident]) -> Span {
    let start = bindings.first().map_or(0, |b| b.span.start);
    let end = bindings.last().map_or(start, |b| b.span.end);
    start..end
}

/// How a multi-output op divides the channels.
enum SizesArg {
    Chunks(usize),
    Sizes(Vec<usize>),
}

/// Where a step's layer name is: its label, or the whole step.
fn statement_span(statement: &Stmt) -> &Span {
    match statement {
        Stmt::Input { span, .. } | Stmt::Output { span, .. } | Stmt::Repeat { span, .. } => span,
        Stmt::Chain(chain) => &chain.span,
    }
}

fn step_name_span(step: &Step) -> Span {
    step.label.as_ref().map(|l| l.span.clone()).unwrap_or_else(|| step.span.clone())
}

/// A name shortened for messages (the source line shows it whole).
fn short(name: &str) -> String {
    if name.chars().count() <= 40 { name.to_string() } else { name.chars().take(37).collect::<String>() + "..." }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub fn suggest<'n>(name: &str, candidates: impl Iterator<Item = &'n str>) -> Option<&'n str> {
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(name, candidate);
        if distance <= 2.max(name.len() / 3) && best.is_none_or(|(d, c)| (distance, candidate) < (d, c)) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}
