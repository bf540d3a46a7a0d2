//! No input of any kind makes the front end panic, hang or overflow the stack: it
//! answers with a located diagnostic.

use cnnc::diag::render;
use cnnc::front::{BuildOptions, compile_bytes};

fn errors_of(bytes: &[u8]) -> String {
    match compile_bytes(bytes, &BuildOptions::default()) {
        Ok(_) => panic!("compiled, but should not"),
        Err(diags) => render("input.cnn", &String::from_utf8_lossy(bytes), &diags),
    }
}

#[test]
fn empty_and_comment_only_files_say_no_network_at_1_1() {
    for source in ["", "   \n\n", "# just a comment\n# another\n"] {
        let text = errors_of(source.as_bytes());
        assert!(text.contains("no network"), "{text}");
        assert!(text.contains("input.cnn:1:1"), "{text}");
    }
}

#[test]
fn invalid_utf8_points_at_the_first_bad_byte() {
    let text = errors_of(b"network n {\n  input x: [3, 8, 8]\n  re\xfflu\n}\n");
    assert!(text.contains("not valid UTF-8"), "{text}");
    assert!(text.contains("input.cnn:3:5"), "{text}");
}

#[test]
fn binary_garbage_is_a_parse_error() {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x7f).collect();
    let _ = errors_of(&bytes);
    let _ = errors_of(b"\0\0\0\0network");
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for (open, close) in [("(", ")"), ("{", "}"), ("[", "]")] {
        let source =
            format!("network n {{ input x: [1, 4, 4]; relu{} }}", open.repeat(100_000) + &close.repeat(100_000));
        let text = errors_of(source.as_bytes());
        assert!(text.contains("nested more than"), "{text}");
    }
    let seqs = "seq { ".repeat(100_000) + &"} ".repeat(100_000);
    let text = errors_of(format!("network n {{ input x: [1, 4, 4]\n {seqs} }}").as_bytes());
    assert!(text.contains("nested more than"), "{text}");
}

#[test]
fn a_megabyte_on_one_line() {
    let mut source = String::from("network n { input x: [1, 4, 4]; ");
    source.push_str(&"relu; ".repeat(180_000));
    source.push('}');
    // Valid: 180,000 relus (1.08 MB) on one line.
    let graph = compile_bytes(source.as_bytes(), &BuildOptions::default()).expect("valid program");
    assert_eq!(graph.node_count(), 180_001);
    let long_name = "a".repeat(1 << 20);
    let text = errors_of(format!("network n {{ input x: [1, 4, 4]; {long_name} }}").as_bytes());
    assert!(text.contains("unknown name"), "{}", &text[..text.len().min(300)]);
}

#[test]
fn exponential_expansion_is_cut_off() {
    let source = "block b1() { relu; relu }\n".to_string()
        + &(2..40).map(|i| format!("block b{i}() {{ b{}(); b{}() }}\n", i - 1, i - 1)).collect::<String>()
        + "network n { input x: [1, 4, 4]; b39() }";
    let text = errors_of(source.as_bytes());
    assert!(text.contains("more than"), "{text}");
    let text = errors_of(b"network n { input x: [1, 4, 4]; repeat 1000000000000 { relu } }");
    assert!(text.contains("more than"), "{text}");
}

#[test]
fn huge_numbers_are_errors() {
    for source in [
        "network n { input x: [3, 8, 8]; conv(99999999999999999999999, 3) }",
        "network n { input x: [3, 8, 8]; conv(9223372036854775807, 3) }",
        "network n { input x: [99999999, 99999999, 99999999] }",
        "block b(a) { conv(a * a * a * a, 1) }\nnetwork n { input x: [3, 8, 8]; b(1000000) }",
        "network n { input x: [3, 8, 8]; dropout(1e999) }",
    ] {
        let _ = errors_of(source.as_bytes());
    }
}

#[test]
fn truncations_of_a_real_program_never_panic() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resnet18.cnn")).unwrap();
    let chars: Vec<(usize, char)> = source.char_indices().collect();
    for (i, _) in chars.iter().step_by(7) {
        let _ = compile_bytes(&source.as_bytes()[..*i], &BuildOptions::default());
        // And with one character dropped.
        let mut damaged = source.clone();
        damaged.remove(*i);
        let _ = compile_bytes(damaged.as_bytes(), &BuildOptions::default());
    }
}

mod token_soup {
    //! Random sequences of the language's own tokens (the inputs most likely to reach
    //! deep into the parser and the elaborator) never make the front end panic.
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "network",
        "block",
        "input",
        "output",
        "repeat",
        "seq",
        "in",
        "n",
        "x",
        "y",
        "conv",
        "linear",
        "relu",
        "add",
        "concat",
        "mul",
        "flatten",
        "batch_norm",
        "max_pool",
        "lrn",
        "same",
        "valid",
        "true",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        ",",
        ";",
        "\n",
        ":",
        "=",
        "|>",
        "+",
        "-",
        "*",
        "/",
        "0",
        "1",
        "3",
        "64",
        "1e9",
        "0.5",
        "#c\n",
        "pad",
        "stride",
        "groups",
        "a",
        "b",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn random_token_sequences_never_panic(indices in proptest::collection::vec(0..TOKENS.len(), 0..80)) {
            let source: String = indices.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join(" ");
            let _ = cnnc::front::compile_source(&source, &cnnc::front::BuildOptions::default());
        }

        #[test]
        fn random_networks_of_tokens_never_panic(indices in proptest::collection::vec(0..TOKENS.len(), 0..60)) {
            let body: String = indices.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join(" ");
            let source = format!("block b(a, b = 2) {{ {body} }}\nnetwork n {{ input x: [3, 16, 16]\n {body}\n b(4) }}");
            let _ = cnnc::front::compile_source(&source, &cnnc::front::BuildOptions::default());
        }
    }
}
