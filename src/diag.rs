//! Diagnostics: a located message about the user's input, rendered with the source
//! line and the offending span underlined (codespan-reporting, the crate naga uses).

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config};

use crate::ir::Span;

/// One error about the user's program.
#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    pub message: String,
    pub span: Span,
    /// Text under the primary span: what was expected there.
    pub label: String,
    /// Other places worth showing (`first defined here`).
    pub secondary: Vec<(Span, String)>,
    /// `help:` and `note:` lines.
    pub notes: Vec<String>,
}

impl Diag {
    pub fn new(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diag {
        Diag { message: message.into(), span, label: label.into(), secondary: Vec::new(), notes: Vec::new() }
    }

    pub fn note(mut self, note: impl Into<String>) -> Diag {
        self.notes.push(note.into());
        self
    }

    pub fn secondary(mut self, span: Span, label: impl Into<String>) -> Diag {
        self.secondary.push((span, label.into()));
        self
    }
}

/// Renders diagnostics against their source as plain text (`error: ...`, then
/// `--> file:line:col`, the line, and the span underlined).
pub fn render(file_name: &str, source: &str, diags: &[Diag]) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config { chars: Chars::ascii(), ..Config::default() };
    let mut out = String::new();
    for diag in diags {
        let clamp = |span: &Span| {
            let end = span.end.min(source.len());
            let start = span.start.min(end);
            start..end
        };
        let mut labels = vec![Label::primary((), clamp(&diag.span)).with_message(&diag.label)];
        for (span, message) in &diag.secondary {
            labels.push(Label::secondary((), clamp(span)).with_message(message));
        }
        let diagnostic =
            Diagnostic::error().with_message(&diag.message).with_labels(labels).with_notes(diag.notes.clone());
        // Rendering only fails for a span outside the file, which `clamp` rules out;
        // fall back to the bare message all the same.
        if term::emit_to_string(&mut out, &config, &file, &diagnostic).is_err() {
            out.push_str(&format!("error: {}\n", diag.message));
        }
    }
    out
}
