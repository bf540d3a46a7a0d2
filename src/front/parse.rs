//! Parsing: bytes → UTF-8 check → nesting check → pest → syntax tree. Never panics and
//! never recurses deeper than [`MAX_NESTING`] brackets or [`MAX_EXPR_DEPTH`] expression
//! levels, whatever the input.

use pest::Parser;
use pest::iterators::Pair;

use super::ast::*;
use crate::diag::Diag;
use crate::ir::Span;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/cnn.pest"]
struct CnnParser;

/// The deepest nesting of `(`, `[` and `{` a program may use. Real networks use a
/// handful; the limit keeps the recursive-descent parser and the elaborator far from
/// the end of the stack.
pub const MAX_NESTING: usize = 64;

/// The deepest expression tree a program may write: operators and unary `-` each add a
/// level. Elaboration evaluates expressions recursively.
pub const MAX_EXPR_DEPTH: usize = 128;

/// Decodes a file's bytes, pointing at the first invalid byte if they are not UTF-8.
pub fn decode(bytes: &[u8]) -> Result<&str, Diag> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        Diag::new(
            format!("the file is not valid UTF-8 (byte 0x{:02x} at offset {at})", bytes[at]),
            at..at,
            "invalid UTF-8 starts here",
        )
        .note("cnn programs are UTF-8 text")
    })
}

/// Parses a program.
pub fn parse(source: &str) -> Result<Program, Diag> {
    check_nesting(source)?;
    if source.trim_start_matches(|c: char| c.is_whitespace()).is_empty() || only_comments(source) {
        return Err(Diag::new("no network in this file", 0..0, "expected `network NAME { ... }`")
            .note("a program holds blocks and one `network NAME { ... }`; see docs/language.md"));
    }
    pest::set_error_detail(true);
    let mut pairs = CnnParser::parse(Rule::program, source).map_err(|e| super::syntax_error::explain(source, &e))?;
    let program_pair = pairs.next().ok_or_else(|| Diag::new("empty parse", 0..0, ""))?;
    let mut program = Program::default();
    for pair in program_pair.into_inner() {
        match pair.as_rule() {
            Rule::block_def => program.blocks.push(block_def(pair)?),
            Rule::network => program.networks.push(network(pair)?),
            _ => {}
        }
    }
    if program.networks.is_empty() {
        let end = source.len();
        return Err(Diag::new("no network in this file", end..end, "expected `network NAME { ... }`")
            .note("a program holds blocks and one `network NAME { ... }`"));
    }
    Ok(program)
}

fn only_comments(source: &str) -> bool {
    source.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

fn check_nesting(source: &str) -> Result<(), Diag> {
    let mut depth = 0usize;
    let mut in_comment = false;
    for (offset, c) in source.char_indices() {
        match c {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diag::new(
                        format!("brackets nested more than {MAX_NESTING} deep"),
                        offset..offset + 1,
                        "too deep here",
                    )
                    .note("flatten the structure with blocks or `repeat`"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    s.start()..s.end()
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident { name: pair.as_str().to_string(), span: span_of(&pair) }
}

fn block_def(pair: Pair<Rule>) -> Result<BlockDef, Diag> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_block);
    let name = ident(inner.next().expect("grammar: block name"));
    let mut params = Vec::new();
    let mut body_stmts = Vec::new();
    for p in inner {
        match p.as_rule() {
            Rule::param_list => {
                for param in p.into_inner() {
                    let mut parts = param.into_inner();
                    let name = ident(parts.next().expect("grammar: param name"));
                    let default = parts.next().map(expr).transpose()?;
                    params.push(ParamDef { name, default });
                }
            }
            Rule::body => body_stmts = body(p)?,
            _ => {}
        }
    }
    Ok(BlockDef { name, params, body: body_stmts, span })
}

fn network(pair: Pair<Rule>) -> Result<Network, Diag> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_network);
    let name = ident(inner.next().expect("grammar: network name"));
    let body_stmts = body(inner.next().expect("grammar: network body"))?;
    Ok(Network { name, body: body_stmts, span })
}

fn body(pair: Pair<Rule>) -> Result<Vec<Stmt>, Diag> {
    pair.into_inner().map(stmt).collect()
}

fn stmt(pair: Pair<Rule>) -> Result<Stmt, Diag> {
    let span = span_of(&pair);
    match pair.as_rule() {
        Rule::input_decl => {
            let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_input);
            let name = ident(inner.next().expect("grammar: input name"));
            let dims = inner.map(|d| (d.as_str().to_string(), span_of(&d))).collect();
            Ok(Stmt::Input { name, dims, span })
        }
        Rule::output_decl => {
            let names = pair.into_inner().filter(|p| p.as_rule() == Rule::ident).map(ident).collect();
            Ok(Stmt::Output { names, span })
        }
        Rule::repeat_stmt => {
            let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_repeat);
            let count = expr(inner.next().expect("grammar: repeat count"))?;
            let body_stmts = body(inner.next().expect("grammar: repeat body"))?;
            Ok(Stmt::Repeat { count, body: body_stmts, span })
        }
        Rule::chain_stmt => {
            let mut bindings = Vec::new();
            let mut steps = Vec::new();
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::binding => bindings = p.into_inner().map(ident).collect(),
                    Rule::step => steps.push(step(p)?),
                    _ => {}
                }
            }
            Ok(Stmt::Chain(Chain { bindings, steps, span }))
        }
        rule => Err(Diag::new(format!("internal: unexpected {rule:?}"), span, "")),
    }
}

fn step(pair: Pair<Rule>) -> Result<Step, Diag> {
    let span = span_of(&pair);
    let mut label = None;
    let mut label_is_ident = false;
    let mut kind = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::label => {
                let name = p.into_inner().next().expect("grammar: label name");
                label_is_ident = name.as_rule() == Rule::label_word && !super::syntax_error::is_keyword(name.as_str());
                let quoted = name.as_rule() == Rule::quoted;
                let mut label_ident = ident(name);
                if quoted {
                    label_ident.name = label_ident.name[1..label_ident.name.len() - 1].to_string();
                }
                label = Some(label_ident);
            }
            Rule::seq => {
                let mut inner = p.into_inner();
                let keyword = span_of(&inner.next().expect("grammar: seq keyword"));
                let body_stmts = body(inner.next().expect("grammar: seq body"))?;
                kind = Some(StepKind::Seq { body: body_stmts, keyword });
            }
            Rule::call => {
                let mut inner = p.into_inner();
                let name = ident(inner.next().expect("grammar: call name"));
                let args = inner.next().map(|a| a.into_inner().map(arg).collect::<Result<Vec<_>, _>>()).transpose()?;
                kind = Some(StepKind::Call { name, args });
            }
            _ => {}
        }
    }
    let kind = kind.ok_or_else(|| Diag::new("internal: empty step", span.clone(), ""))?;
    Ok(Step { label, label_is_ident, kind, span })
}

fn arg(pair: Pair<Rule>) -> Result<Arg, Diag> {
    let span = span_of(&pair);
    let mut keyword = None;
    let mut value = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::arg_name => keyword = Some(ident(p.into_inner().next().expect("grammar: arg name"))),
            Rule::expr => value = Some(expr(p)?),
            _ => {}
        }
    }
    let value = value.ok_or_else(|| Diag::new("internal: argument without value", span.clone(), ""))?;
    Ok(Arg { keyword, value, span })
}

fn expr(pair: Pair<Rule>) -> Result<Expr, Diag> {
    expr_with_depth(pair).map(|(e, _)| e)
}

/// Refuses an expression tree deeper than [`MAX_EXPR_DEPTH`] (`- - - ... 1`,
/// `1 + 1 + ... + 1`): elaboration evaluates it recursively.
fn deeper(depth: usize, span: &Span) -> Result<usize, Diag> {
    if depth > MAX_EXPR_DEPTH {
        return Err(Diag::new(
            format!("expression nested more than {MAX_EXPR_DEPTH} deep"),
            span.clone(),
            "too deep here",
        )
        .note("operators and unary `-` each add a level; split the arithmetic over block parameters"));
    }
    Ok(depth)
}

/// An expression and the depth of its tree.
fn expr_with_depth(pair: Pair<Rule>) -> Result<(Expr, usize), Diag> {
    let span = span_of(&pair);
    match pair.as_rule() {
        // expr and term are left-associative chains: operand (op operand)*.
        Rule::expr | Rule::term => {
            let mut inner = pair.into_inner();
            let (mut acc, mut depth) = expr_with_depth(inner.next().expect("grammar: operand"))?;
            while let Some(op) = inner.next() {
                let (rhs, rhs_depth) = expr_with_depth(inner.next().expect("grammar: right operand"))?;
                let op = match op.as_str() {
                    "+" => BinOp::Add,
                    "-" => BinOp::Sub,
                    "*" => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let span = acc.span.start..rhs.span.end;
                depth = deeper(depth.max(rhs_depth) + 1, &span)?;
                acc = Expr { kind: ExprKind::Binary(op, Box::new(acc), Box::new(rhs)), span };
            }
            Ok((acc, depth))
        }
        Rule::factor => {
            let parts: Vec<Pair<Rule>> = pair.into_inner().collect();
            let (negs, atom) = parts.split_at(parts.len() - 1);
            let (mut e, mut depth) = expr_with_depth(atom[0].clone())?;
            for neg in negs.iter().rev() {
                let span = neg.as_span().start()..e.span.end;
                depth = deeper(depth + 1, &(span.start..span.start + 1))?;
                e = Expr { kind: ExprKind::Neg(Box::new(e)), span };
            }
            Ok((e, depth))
        }
        Rule::group => {
            let mut items = Vec::new();
            let mut depth = 0;
            for part in pair.into_inner() {
                let (item, item_depth) = expr_with_depth(part)?;
                depth = depth.max(item_depth);
                items.push(item);
            }
            let kind = match items.len() {
                1 => return Ok((Expr { kind: items.pop().expect("one item").kind, span }, depth)),
                2 => {
                    let second = items.pop().expect("two items");
                    let first = items.pop().expect("two items");
                    ExprKind::Pair(Box::new(first), Box::new(second))
                }
                4 => {
                    let quad: [Expr; 4] = items.try_into().expect("four items");
                    ExprKind::Quad(Box::new(quad))
                }
                n => {
                    return Err(Diag::new(
                        format!("a tuple of {n} values"),
                        span,
                        "expected `(h, w)` or `(top, left, bottom, right)`",
                    )
                    .note("pairs are for kernel, stride, pad, dilation and output size; 4-tuples for pad"));
                }
            };
            let depth = deeper(depth + 1, &span)?;
            Ok((Expr { kind, span }, depth))
        }
        Rule::ident => Ok((Expr { kind: ExprKind::Name(pair.as_str().to_string()), span }, 1)),
        Rule::number => {
            let text = pair.as_str();
            if text.contains(['.', 'e', 'E']) {
                let value: f64 =
                    text.parse().map_err(|_| Diag::new(format!("`{text}` is not a number"), span.clone(), "here"))?;
                if !value.is_finite() {
                    return Err(Diag::new(format!("`{text}` is too large"), span, "not a finite number"));
                }
                Ok((Expr { kind: ExprKind::Float(value), span }, 1))
            } else {
                let value: i64 = text.parse().map_err(|_| {
                    Diag::new(format!("integer `{text}` is too large"), span.clone(), "at most 9223372036854775807")
                })?;
                Ok((Expr { kind: ExprKind::Int(value), span }, 1))
            }
        }
        rule => Err(Diag::new(format!("internal: unexpected {rule:?} in an expression"), span, "")),
    }
}
