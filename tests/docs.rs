//! The documentation stays true: every program in docs/language.md compiles, every op
//! the compiler knows has a row in its operator table, and the README's links resolve
//! inside the repository.

use std::path::Path;

use cnnc::front::{BuildOptions, compile_source};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The fenced code blocks of a Markdown text.
fn code_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn every_program_in_the_language_reference_compiles() {
    let programs: Vec<String> =
        code_blocks(&read("docs/language.md")).into_iter().filter(|b| b.contains("network ")).collect();
    assert!(programs.len() >= 5, "only {} programs", programs.len());
    for program in programs {
        if let Err(diags) = compile_source(&program, &BuildOptions::default()) {
            panic!("does not compile: {diags:?}\n{program}");
        }
    }
}

#[test]
fn the_readme_tour_compiles() {
    let readme = read("README.md");
    let tour = code_blocks(&readme).into_iter().find(|b| b.contains("network tiny")).expect("the tour");
    compile_source(&tour, &BuildOptions::default()).unwrap_or_else(|d| panic!("{d:?}\n{tour}"));
}

#[test]
fn every_op_has_a_row_in_the_operator_table() {
    let reference = read("docs/language.md");
    let table = &reference[reference.find("## Operators").expect("an Operators section")..];
    for op in cnnc::front::lower::OP_NAMES {
        assert!(table.contains(&format!("| `{op}`")), "docs/language.md has no row for `{op}`");
    }
}

#[test]
fn readme_links_resolve_inside_the_repository() {
    let readme = read("README.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for (start, _) in readme.match_indices("](") {
        let rest = &readme[start + 2..];
        let target = &rest[..rest.find(')').expect("a closed link")];
        if target.starts_with("http://") || target.starts_with("https://") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(!path.starts_with(".."), "README links outside the repository: {target}");
        assert!(root.join(path).exists(), "README links to missing {target}");
        checked += 1;
    }
    assert!(checked >= 1, "no relative links found");
    // Paths written in backticks that name the repository's files exist too.
    for path in ["docs/language.md", "examples/digits.cnn", "tools/test.sh", "examples/embed_c/"] {
        assert!(readme.contains(path), "README no longer mentions {path}");
        assert!(root.join(path).exists(), "README mentions missing {path}");
    }
    assert!(!readme.contains("../shared"), "README points outside the repository");
}
