//! The corpus tests: every example's IR and summary, and every broken program's
//! diagnostics, as insta snapshots (accept changes with `cargo insta review`).

use std::path::Path;

use cnnc::front::{BuildOptions, compile_bytes};

fn display_name(path: &Path) -> String {
    // Snapshots must not depend on where the checkout lives.
    let parent =
        path.parent().and_then(|p| p.file_name()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{}/{}", parent, path.file_name().unwrap().to_string_lossy())
}

#[test]
fn examples_ir() {
    insta::glob!("../examples", "*.cnn", |path| {
        let bytes = std::fs::read(path).unwrap();
        let graph = compile_bytes(&bytes, &BuildOptions::default()).unwrap_or_else(|diags| {
            let source = String::from_utf8_lossy(&bytes);
            panic!("{}", cnnc::diag::render(&display_name(path), &source, &diags))
        });
        cnnc::ir::verify(&graph).unwrap();
        insta::assert_snapshot!(cnnc::ir::print(&graph));
    });
}

#[test]
fn examples_summary() {
    insta::glob!("../examples", "*.cnn", |path| {
        let bytes = std::fs::read(path).unwrap();
        let graph = compile_bytes(&bytes, &BuildOptions::default()).expect("examples compile");
        insta::assert_snapshot!(cnnc::summary::render_table(&cnnc::summary::summarize(&graph)));
    });
}

#[test]
fn test_programs_compile_and_verify() {
    insta::glob!("programs", "*.cnn", |path| {
        let bytes = std::fs::read(path).unwrap();
        let graph = compile_bytes(&bytes, &BuildOptions::default()).unwrap_or_else(|diags| {
            let source = String::from_utf8_lossy(&bytes);
            panic!("{}", cnnc::diag::render(&display_name(path), &source, &diags))
        });
        cnnc::ir::verify(&graph).unwrap();
        insta::assert_snapshot!(cnnc::ir::print(&graph));
    });
}

/// Every broken program fails with at least one located diagnostic; the rendered text
/// (file:line:col, the source line, the underline, what was expected) is snapshotted.
#[test]
fn broken_programs_diagnostics() {
    let mut count = 0;
    insta::glob!("broken", "*.cnn", |path| {
        count += 1;
        let bytes = std::fs::read(path).unwrap();
        let diags = match compile_bytes(&bytes, &BuildOptions::default()) {
            Ok(_) => panic!("{} compiled but should not", path.display()),
            Err(diags) => diags,
        };
        assert!(!diags.is_empty());
        let source = String::from_utf8_lossy(&bytes);
        let name = display_name(path);
        let rendered = cnnc::diag::render(&name, &source, &diags);
        assert!(rendered.contains(&format!("{name}:")), "no location in:\n{rendered}");
        insta::assert_snapshot!(rendered);
    });
    assert!(count >= 30, "the broken corpus has {count} programs; keep at least 30");
}
