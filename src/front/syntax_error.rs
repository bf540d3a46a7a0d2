//! Syntax errors that name the real problem: a small lexer of its own finds stray
//! characters, malformed numbers and unbalanced brackets before and around pest, and
//! pest's furthest attempt is turned into "expected X after Y, found Z" at the token that
//! does not fit, never listing Z among the expected.
//!
//! pest reports its error at the furthest *rule* it tried, which is often a token before
//! the mistake (`conv(8, 3) relu` fails "at" the `)`); its parse attempts know the
//! furthest position any token was tried at, and the tokens it wanted there, which is
//! what this layer reads.

use pest::error::{Error, ErrorVariant, InputLocation};

use super::parse::Rule;
use crate::diag::Diag;
use crate::ir::Span;

/// What kind of token the lexer saw.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A name or keyword.
    Word,
    Number,
    /// A quoted name (`"block1-0"`).
    Quoted,
    /// Punctuation: brackets, `,` `:` `;` `=` `+` `-` `*` `/` `|>`.
    Punct,
    Newline,
}

#[derive(Clone, Debug)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    span: Span,
}

/// Splits a program into tokens, up to the first character that cannot start one or the
/// first malformed number, which comes back as an error beside the tokens before it.
fn lex(source: &str) -> (Vec<Token<'_>>, Option<Diag>) {
    let mut tokens = Vec::new();
    match lex_into(source, &mut tokens) {
        Ok(()) => (tokens, None),
        Err(diag) => (tokens, Some(diag)),
    }
}

fn lex_into<'a>(source: &'a str, tokens: &mut Vec<Token<'a>>) -> Result<(), Diag> {
    let bytes = source.as_bytes();
    let mut at = 0;
    while at < source.len() {
        let c = source[at..].chars().next().expect("inside the string");
        let start = at;
        let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let kind = match c {
            ' ' | '\t' | '\r' => {
                at += 1;
                continue;
            }
            '#' => {
                at = source[at..].find('\n').map_or(source.len(), |n| at + n);
                continue;
            }
            '\n' => {
                at += 1;
                Kind::Newline
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while at < bytes.len() && word_char(bytes[at]) {
                    at += 1;
                }
                Kind::Word
            }
            c if c.is_ascii_digit() => {
                at = lex_number(source, at)?;
                Kind::Number
            }
            '"' => {
                let close = source[at + 1..].find(['"', '\n']).map(|n| at + 1 + n);
                match close {
                    Some(end) if bytes[end] == b'"' => at = end + 1,
                    _ => {
                        return Err(Diag::new("unterminated quoted name", at..at + 1, "this `\"` is not closed")
                            .note("a quoted name ends with `\"` on the same line"));
                    }
                }
                Kind::Quoted
            }
            '|' if source[at..].starts_with("|>") => {
                at += 2;
                Kind::Punct
            }
            '(' | ')' | '[' | ']' | '{' | '}' | ',' | ':' | ';' | '=' | '+' | '-' | '*' | '/' => {
                at += 1;
                Kind::Punct
            }
            _ => return Err(unexpected_character(source, at, c)),
        };
        tokens.push(Token { kind, text: &source[start..at], span: start..at });
    }
    Ok(())
}

/// Scans a number at `start`: digits, an optional fraction, an optional exponent. A
/// number run into letters, digits or dots beyond that (`0.5.1`, `1e`, `3x`) is an error
/// naming the whole run.
fn lex_number(source: &str, start: usize) -> Result<usize, Diag> {
    let bytes = source.as_bytes();
    let digits = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        at
    };
    let mut at = digits(start);
    let mut problem = None;
    if bytes.get(at) == Some(&b'.') {
        let after = digits(at + 1);
        if after == at + 1 {
            problem = Some("digits must follow the decimal point");
        }
        at = after;
    }
    if problem.is_none() && matches!(bytes.get(at), Some(b'e' | b'E')) {
        let mut exponent = at + 1;
        if matches!(bytes.get(exponent), Some(b'+' | b'-')) {
            exponent += 1;
        }
        let after = digits(exponent);
        if after == exponent {
            problem = Some("an exponent needs digits (`1e-5`)");
        }
        at = after;
    }
    let run_on = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    if problem.is_some() || bytes.get(at).is_some_and(|&b| run_on(b)) {
        let mut end = at;
        while end < bytes.len() && run_on(bytes[end]) {
            end += 1;
        }
        let text = &source[start..end];
        let detail = problem.unwrap_or(if text.matches('.').count() > 1 {
            "a number has at most one decimal point"
        } else {
            "a number is digits, an optional fraction and an optional exponent (`64`, `0.5`, `1e-5`)"
        });
        return Err(Diag::new(format!("malformed number `{text}`"), start..end, "not a number").note(detail));
    }
    Ok(at)
}

fn unexpected_character(source: &str, at: usize, c: char) -> Diag {
    let shown = if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", c as u32)
    } else if c.is_ascii() {
        format!("`{c}`")
    } else {
        format!("`{c}` (U+{:04X})", c as u32)
    };
    let diag = Diag::new(format!("unexpected character {shown}"), at..at + c.len_utf8(), "not part of any token");
    match c {
        '|' | '>' => diag.note("steps of a chain are joined by `|>`"),
        '\'' | '`' | '\u{201c}' | '\u{201d}' | '\u{2018}' | '\u{2019}' => {
            diag.note("names are written bare (`conv1`); quoted names use plain double quotes")
        }
        '.' => diag.note("`.` appears only inside numbers; weight names get their dots from the nesting"),
        _ if !source.is_char_boundary(at) => diag,
        _ => diag.note("a program is names, numbers, `#` comments and the punctuation ( ) [ ] { } , : ; = + - * / |>"),
    }
}

/// The first bracket that is closed by the wrong one or never closed: the opening
/// bracket (none for a closing bracket with nothing open) and where the scan gave up.
struct Unbalanced<'t, 'a> {
    opener: Option<&'t Token<'a>>,
    gave_up: Option<&'t Token<'a>>,
}

fn unbalanced<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<Unbalanced<'t, 'a>> {
    let mut open: Vec<&Token> = Vec::new();
    for token in tokens.iter().filter(|t| t.kind == Kind::Punct) {
        match token.text {
            "(" | "[" | "{" => open.push(token),
            ")" | "]" | "}" => match open.pop() {
                Some(opener) if closer_of(opener.text) == token.text => {}
                opener => return Some(Unbalanced { opener, gave_up: Some(token) }),
            },
            _ => {}
        }
    }
    open.pop().map(|opener| Unbalanced { opener: Some(opener), gave_up: None })
}

fn closer_of(opener: &str) -> &'static str {
    match opener {
        "(" => ")",
        "[" => "]",
        _ => "}",
    }
}

/// What an opening bracket belongs to, from the tokens before it.
fn bracket_owner(tokens: &[Token], index: usize) -> Option<String> {
    let before = |n: usize| index.checked_sub(n).and_then(|i| tokens.get(i));
    let text = |n: usize| before(n).map(|t| t.text);
    let opener = tokens[index].text;
    match opener {
        "{" => match (text(3), text(2), text(1)) {
            (_, Some("network"), Some(name)) => Some(format!("network `{name}`")),
            (_, _, Some("seq")) => Some("`seq`".into()),
            _ => {
                // `block NAME(...) {` or `repeat N {`: look back along the line.
                let line: Vec<&Token> = tokens[..index].iter().rev().take_while(|t| t.kind != Kind::Newline).collect();
                let first = line.last()?;
                match first.text {
                    "block" => line.iter().rev().nth(1).map(|name| format!("block `{}`", name.text)),
                    "repeat" => Some("`repeat`".into()),
                    _ => None,
                }
            }
        },
        "(" => match (text(2), text(1)) {
            (Some("block"), Some(name)) => Some(format!("the parameters of block `{name}`")),
            (_, Some(name)) if before(1)?.kind == Kind::Word => Some(format!("the arguments of `{name}`")),
            _ => None,
        },
        "[" => Some("the input's shape".into()),
        _ => None,
    }
}

/// Turns pest's failure into a located message about the actual mistake.
pub(super) fn explain(source: &str, error: &Error<Rule>) -> Diag {
    let (at, mut expected) = furthest_attempt(error);
    let (tokens, lex_error) = lex(source);
    // A stray character or malformed number up to where pest gave up is the mistake.
    if let Some(diag) = lex_error
        && diag.span.start <= at
    {
        return diag;
    }
    // The token that does not fit: the first one at or after the furthest attempt, or a
    // keyword where a name should be (pest tries past it, as a keyword looks like one).
    let mut found_index = tokens.iter().position(|t| t.span.end > at);
    // Attempts inside a token (`networks` fails `network` after its seventh letter) say
    // nothing about what could stand there: take pest's rules at the token's start.
    if let Some(token) = found_index.map(|i| &tokens[i])
        && at > token.span.start
    {
        expected = match &error.variant {
            ErrorVariant::ParsingError { positives, .. } => {
                positives.iter().filter_map(|r| rule_description(*r)).map(str::to_string).collect()
            }
            ErrorVariant::CustomError { .. } => Vec::new(),
        };
    }
    let before_at = found_index.unwrap_or(tokens.len());
    let keyword_as_name = before_at >= 2
        && is_keyword(tokens[before_at - 1].text)
        && matches!(tokens[before_at - 2].text, "network" | "block" | "input" | "output" | ",");
    if keyword_as_name {
        found_index = Some(before_at - 1);
    }
    let found = found_index.map(|i| &tokens[i]);
    let (found_text, span) = match found {
        None => ("end of file".to_string(), source.len()..source.len()),
        Some(t) if t.kind == Kind::Newline => ("end of line".to_string(), t.span.start..t.span.start),
        Some(t) if keyword_as_name => (format!("the keyword `{}`", t.text), t.span.clone()),
        Some(t) => (format!("`{}`", t.text), t.span.clone()),
    };
    let expected = if found_text.starts_with("the keyword") {
        Some("a name".to_string())
    } else {
        let before = &tokens[..found_index.unwrap_or(tokens.len())];
        // After `|>` (and any newlines) only a step can come, its label included.
        if before.iter().rev().find(|t| t.kind != Kind::Newline).is_some_and(|t| t.text == "|>") {
            Some("a newline or a step (an op, a block call or `seq`)".to_string())
        } else {
            describe_expected(expected, found, before.last())
        }
    };
    let before_found = &tokens[..found_index.unwrap_or(tokens.len())];

    if let Some(problem) = unbalanced(&tokens) {
        let opener_index = problem.opener.map(|o| tokens.iter().position(|t| std::ptr::eq(t, o)).expect("a token"));
        match (problem.opener, problem.gave_up) {
            (None, Some(closer)) if closer.span.start <= span.start => {
                let opener = match closer.text {
                    ")" => "(",
                    "]" => "[",
                    _ => "{",
                };
                return Diag::new(
                    format!("unexpected `{}`: no `{opener}` is open here", closer.text),
                    closer.span.clone(),
                    "nothing to close",
                );
            }
            (Some(opener), _) if opener.span.start < span.start.max(1) => {
                let owner = bracket_owner(&tokens, opener_index.expect("an opener"))
                    .map(|o| format!(" ({o})"))
                    .unwrap_or_default();
                let closer = closer_of(opener.text);
                let label = match expected.as_deref() {
                    Some(list) if opener.text != "{" && list.contains("`,`") => format!("expected `,` or `{closer}`"),
                    _ => format!("expected `{closer}`"),
                };
                let mut diag = Diag::new(
                    format!("unclosed `{}`{owner}: expected `{closer}`, found {found_text}", opener.text),
                    span,
                    label,
                )
                .secondary(opener.span.clone(), format!("this `{}` is not closed", opener.text));
                if let Some(closer) = problem.gave_up {
                    diag = diag.note(format!(
                        "the `{}` on line {} closes something else",
                        closer.text,
                        source[..closer.span.start].matches('\n').count() + 1
                    ));
                }
                return diag;
            }
            _ => {}
        }
    }

    let context = context_of(before_found, found);
    let expected = expected.unwrap_or_else(|| "something else".to_string());
    let mut diag =
        Diag::new(format!("expected {expected}{context}, found {found_text}"), span, format!("expected {expected}"));
    // Two steps on one line: the statement before was complete.
    let previous = before_found.last();
    if let (Some(prev), Some(found)) = (previous, found)
        && matches!(found.kind, Kind::Word | Kind::Number | Kind::Quoted)
        && (prev.text == ")" || prev.kind == Kind::Word || prev.text == "}")
        && expected.contains("a newline")
    {
        let starts_line =
            before_found.len() < 2 || matches!(before_found[before_found.len() - 2].text, "\n" | ";" | "{");
        diag = diag.note(if prev.kind == Kind::Word && starts_line && found.kind == Kind::Word {
            "`NAME: op(...)` names a layer and `NAME = ...` a tensor; a statement ends at `;` or a newline"
        } else {
            "a statement ends at `;` or a newline; `|>` passes its tensor on to the next step"
        });
    }
    if found.is_some_and(|t| t.text == "|>") && previous.is_some_and(|t| t.kind == Kind::Newline) {
        diag = diag.note("a chain continues on the next line only after a `|>` that ends the line");
    }
    diag
}

/// The furthest position any token was tried at, and what was wanted there.
fn furthest_attempt(error: &Error<Rule>) -> (usize, Vec<String>) {
    let location = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let Some(attempts) = error.parse_attempts() else {
        return (location, Vec::new());
    };
    let mut expected: Vec<String> = attempts.expected_tokens().iter().map(ToString::to_string).collect();
    for stack in attempts.call_stacks() {
        if let Some(rule) = stack.deepest.get_rule()
            && let Some(d) = rule_description(*rule)
        {
            expected.push(d.to_string());
        }
    }
    (attempts.max_position.max(location), expected)
}

fn rule_description(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::ident | Rule::arg_name | Rule::binding | Rule::label | Rule::label_word | Rule::quoted => "a name",
        Rule::network | Rule::kw_network => "`network`",
        Rule::block_def | Rule::kw_block => "`block`",
        Rule::param_list | Rule::param => "a parameter",
        Rule::input_decl | Rule::kw_input => "`input`",
        Rule::output_decl | Rule::kw_output => "`output`",
        Rule::repeat_stmt | Rule::kw_repeat => "`repeat`",
        Rule::body | Rule::chain_stmt | Rule::step | Rule::call => "a statement",
        Rule::seq | Rule::kw_seq => "`seq`",
        Rule::args => "`(`",
        Rule::arg => "an argument",
        Rule::expr | Rule::term | Rule::factor | Rule::group => "an expression",
        Rule::number | Rule::dim => "a number",
        Rule::add_op => "`+`",
        Rule::mul_op => "`*`",
        _ => return None,
    })
}

pub(super) fn is_keyword(word: &str) -> bool {
    matches!(word, "network" | "block" | "input" | "output" | "repeat" | "seq")
}

/// The expected tokens as a sentence fragment, without the token that was found; `None`
/// when nothing is left.
fn describe_expected(raw: Vec<String>, found: Option<&Token>, previous: Option<&Token>) -> Option<String> {
    let mut expected: Vec<String> = Vec::new();
    for token in raw {
        let text = match token.as_str() {
            "\n" => "a newline".to_string(),
            // The opening quote of a quoted layer name: "a statement" or a step says it.
            "\"" => continue,
            "BUILTIN_RULE" | "#" | " " | "\t" | "\r" => continue,
            t if t.contains("..") && t.len() > 2 => continue,
            // Single letters and `_` come from inside the name and number rules.
            t if t.len() == 1 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => continue,
            t if t.starts_with('`') || t.starts_with("a ") || t.starts_with("an ") || t == "end of file" => {
                t.to_string()
            }
            t => format!("`{t}`"),
        };
        expected.push(text);
    }
    expected.sort();
    expected.dedup();
    // What was found is never among the expected (a keyword fails its rule when a name
    // runs on, `networks`; a name fails `ident` when it is a keyword).
    if let Some(found) = found {
        let shown = format!("`{}`", found.text);
        expected.retain(|e| *e != shown);
        if found.kind == Kind::Newline {
            expected.retain(|e| e != "a newline");
        }
    }
    // A name could go on right after a name; that is not what went wrong.
    let after_name = previous.is_some_and(|p| p.kind == Kind::Word && !is_keyword(p.text));
    if after_name && found.is_none_or(|f| previous.is_some_and(|p| p.span.end == f.span.start)) {
        expected.retain(|e| e != "a name");
    }
    // Right after a step, the next statement needs a separator first.
    if expected.iter().any(|e| e == "`|>`") {
        expected.retain(|e| e != "a statement");
    }
    // After a name (not a keyword) comes no other name; and a keyword only starts a
    // statement or definition, after a separator or a brace.
    if previous.is_some_and(|p| p.kind == Kind::Word && !is_keyword(p.text)) {
        expected.retain(|e| e != "a name");
    }
    if previous.is_some_and(|p| !(p.kind == Kind::Newline || matches!(p.text, ";" | "{" | "}"))) {
        expected.retain(|e| !matches!(e.as_str(), "`network`" | "`block`" | "`input`" | "`output`" | "`repeat`"));
    }
    // An expression says it all: it can start with a name, a number, `(` or `-`.
    if expected.iter().any(|e| e == "an expression") {
        expected.retain(|e| !matches!(e.as_str(), "`(`" | "a name" | "a number" | "`-`"));
    }
    // Inside brackets a newline is only whitespace.
    if expected.iter().any(|e| matches!(e.as_str(), "`)`" | "`]`")) {
        expected.retain(|e| e != "a newline");
    }
    // A step: an op, a block call or `seq`.
    if expected.iter().any(|e| e == "a name") && expected.iter().any(|e| e == "`seq`") {
        expected.retain(|e| e != "a name" && e != "`seq`");
        expected.push("a step (an op, a block call or `seq`)".into());
    }
    // A statement can start with any of these; "a statement" says it once.
    if expected.iter().any(|e| e == "a statement") {
        expected.retain(|e| !matches!(e.as_str(), "`input`" | "`output`" | "`repeat`" | "`seq`" | "a name"));
    }
    // An expression's operators are noise next to what ends it.
    let operators = ["`+`", "`-`", "`*`", "`/`"];
    if expected.iter().any(|e| !operators.contains(&e.as_str())) {
        expected.retain(|e| !operators.contains(&e.as_str()));
    }
    // Newlines and `;` end statements alike (where a newline ends one).
    let ends_statement = expected.iter().any(|e| e == "`}`" || e == "`|>`" || e == "a statement");
    if expected.iter().any(|e| e == "a newline") && !expected.iter().any(|e| e == "`;`") && ends_statement {
        expected.push("`;`".into());
    }
    // Punctuation first, then keywords, then descriptions.
    expected.sort_by_key(|e| (e.starts_with('`') && e.len() > 4, !e.starts_with('`'), e.clone()));
    match expected.len() {
        0 => None,
        1 => Some(expected[0].clone()),
        n => Some(format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1])),
    }
}

/// "after the network name" and the like, from the tokens before the one that failed.
fn context_of(before: &[Token], found: Option<&Token>) -> String {
    // A newline after `|>`, `(` or `,` continues the statement: look past it.
    let trimmed = before.iter().rposition(|t| t.kind != Kind::Newline).map_or(0, |i| i + 1);
    let before = if trimmed > 0 && trimmed < before.len() && matches!(before[trimmed - 1].text, "|>" | "(" | ",") {
        &before[..trimmed]
    } else {
        before
    };
    let last = |n: usize| before.len().checked_sub(n).map(|i| &before[i]);
    let text = |n: usize| last(n).map(|t| t.text);
    let words = |n: usize| last(n).is_some_and(|t| t.kind == Kind::Word);
    let in_line_start = |n: usize| before.len() == n || last(n + 1).is_some_and(|t| t.kind == Kind::Newline);
    let context = match (text(2), text(1)) {
        (Some("network"), Some(name)) if words(1) => format!("the network name `{name}`"),
        (_, Some("network")) => "`network`".into(),
        (Some("block"), Some(name)) if words(1) => format!("the block name `{name}`"),
        (_, Some("block")) => "`block`".into(),
        (Some("input"), Some(name)) if words(1) => format!("the input name `{name}`"),
        (_, Some("input")) => "`input`".into(),
        (Some(name), Some(":")) if words(2) && last(3).is_some_and(|t| t.text == "input") => {
            format!("`input {name}:`")
        }
        (_, Some("output")) => "`output`".into(),
        (_, Some("repeat")) => "`repeat`".into(),
        (_, Some("seq")) => "`seq`".into(),
        (_, Some("|>")) => "`|>`".into(),
        (Some(name), Some("=")) if words(2) && in_line_start(2) => format!("`{name} =`"),
        (Some(name), Some("=")) if words(2) => format!("`{name}=`"),
        (Some(name), Some(":")) if words(2) => format!("the label `{name}:`"),
        (_, Some(",")) => "`,`".into(),
        (_, Some("(")) => "`(`".into(),
        (_, Some(")")) if found.is_some_and(|t| t.kind != Kind::Newline) => {
            // The end of a call: name it.
            let open = before.iter().rposition(|t| t.text == "(");
            match open.and_then(|i| i.checked_sub(1)).map(|i| &before[i]) {
                Some(name) if name.kind == Kind::Word => format!("`{}(...)`", name.text),
                _ => return String::new(),
            }
        }
        _ => return String::new(),
    };
    format!(" after {context}")
}
