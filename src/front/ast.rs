//! The syntax tree of a `.cnn` file, with a byte span on everything a diagnostic may
//! point at.

use crate::ir::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub blocks: Vec<BlockDef>,
    pub networks: Vec<Network>,
}

#[derive(Clone, Debug)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<ParamDef>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamDef {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Stmt {
    /// `input NAME: [d, ...]`
    Input { name: Ident, dims: Vec<(String, Span)>, span: Span },
    /// `output a, b`
    Output { names: Vec<Ident>, span: Span },
    /// `repeat N { ... }`
    Repeat { count: Expr, body: Vec<Stmt>, span: Span },
    /// `[NAME, ... =] step |> step ...`
    Chain(Chain),
}

#[derive(Clone, Debug)]
pub struct Chain {
    /// The names bound to the result: none, one, or one per part of a multi-output op
    /// (`x1, x2 = chunk(2)`).
    pub bindings: Vec<Ident>,
    pub steps: Vec<Step>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// `NAME:`, `"NAME":` or a keyword (`block:`); a quoted label's name is the text
    /// between the quotes, its span includes them.
    pub label: Option<Ident>,
    /// Whether the label is an identifier, which also names the step's tensor; a quoted
    /// or keyword label only names the layer.
    pub label_is_ident: bool,
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StepKind {
    /// `seq { ... }`; the span is the `seq` keyword.
    Seq { body: Vec<Stmt>, keyword: Span },
    /// `name` or `name(args)`: an op, a block call, or (first in a chain) a tensor.
    Call { name: Ident, args: Option<Vec<Arg>> },
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub keyword: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Name(String),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Pair(Box<Expr>, Box<Expr>),
    /// `(top, left, bottom, right)`: the four sides of a `pad`.
    Quad(Box<[Expr; 4]>),
}
