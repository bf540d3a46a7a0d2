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

/// Elaborates on a thread and fails if it takes longer than `limit`.
fn errors_within(source: &str, limit: std::time::Duration) -> String {
    let (done, result) = std::sync::mpsc::channel();
    let input = source.to_string();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(errors_of(input.as_bytes()));
    });
    let text = result.recv_timeout(limit).unwrap_or_else(|_| panic!("took more than {limit:?}: {source}"));
    eprintln!("{:.0} ms: {source}", started.elapsed().as_secs_f64() * 1e3);
    text
}

/// Issue 17, finding 1: steps after an error add no node (their values are poisoned),
/// so the node limit alone let `repeat 1000000000` spin or grow without bound.
#[test]
fn the_expansion_limit_holds_after_errors() {
    let limit = std::time::Duration::from_secs(60);
    for source in [
        // A typo before the repeat poisons the current tensor: no node is ever added.
        "network n { input x: [3, 8, 8]; typo; repeat 1000000000 { relu } }",
        // An error inside: one diagnostic per copy, before.
        "network n { input x: [3, 8, 8]; repeat 1000000000 { rleu } }",
        "network n { repeat 1000000000 { relu } }",
        "block b() { typo }\nnetwork n { input x: [3, 8, 8]; repeat 1000000000 { b() } }",
        "network n { input x: [3, 8, 8]; repeat 1000000000 { repeat 1000000000 { } } }",
        "network n { input x: [3, 8, 8]; conv(-1, 3); repeat 1000000000 { conv(8, 3, pad=1) } }",
    ] {
        let text = errors_within(source, limit);
        assert!(text.contains("more than"), "{source}\n{text}");
        // Each place is reported once, not once per copy.
        assert!(text.matches("error").count() < 10, "{source}\n{text}");
    }
}

/// Finding 5: unary minus had no nesting limit; long operator chains neither.
#[test]
fn deep_expressions_are_refused_not_a_stack_overflow() {
    for expr in ["- ".repeat(30_000) + "1", "1 + ".repeat(100_000) + "1", "2 * ".repeat(100_000) + "1"] {
        let source = format!("network n {{ input x: [1, 4, 4]; conv({expr}, 3) }}");
        let text = errors_of(source.as_bytes());
        assert!(text.contains("expression nested more than 128 deep"), "{}", &text[..text.len().min(400)]);
    }
    let text =
        errors_of(format!("network n {{ input x: [1, 4, 4]; repeat {}1 {{ relu }} }}", "-".repeat(200)).as_bytes());
    assert!(text.contains("nested more than"), "{text}");
    // Within the limit, expressions evaluate as before.
    let source = format!("network n {{ input x: [1, 4, 4]; conv({}2, 1) }}", "- ".repeat(100));
    let graph = compile_bytes(source.as_bytes(), &BuildOptions::default()).expect("100 minus signs are fine");
    assert_eq!(graph.node(graph.outputs[0].node).shape, vec![1, 2, 4, 4]);
}

/// Finding 4: fixed-width formatting of a name of 65,536+ characters panicked.
#[test]
fn layer_names_of_any_length_format_in_tables() {
    let name = "a".repeat(70_000);
    let source = format!("network n {{ input x: [1, 4, 4]; {name}: conv(2, 3, pad=1); relu }}");
    let mut graph = compile_bytes(source.as_bytes(), &BuildOptions::default()).expect("valid");
    let table = cnnc::summary::render_table(&cnnc::summary::summarize(&graph));
    assert!(table.lines().all(|l| l.len() < 200), "{}", &table[..table.len().min(400)]);
    assert!(table.contains("aaa...aaa"), "{table}");
    graph.weights = cnnc::weights::random_weights(&graph, 1);
    let input = cnnc::tensor::Tensor::zeros(vec![1, 1, 4, 4]);
    let report = cnnc::compare::compare(&graph, &[input], &[cnnc::exec::Target::Reference]).unwrap();
    let text = report.to_string();
    assert!(text.lines().all(|l| l.len() < 200), "{}", &text[..text.len().min(400)]);
    assert_eq!(cnnc::summary::elide("short.name"), "short.name");
    assert_eq!(cnnc::summary::elide(&name).len(), cnnc::summary::NAME_COLUMN_CHARS);
}

/// Finding 3: a string that is no target triple panicked inside Cranelift.
#[test]
fn invalid_target_triples_are_errors() {
    let mut graph =
        compile_bytes(b"network n { input x: [1, 4, 4]; conv(2, 3) }", &BuildOptions::default()).expect("valid");
    graph.weights = cnnc::weights::random_weights(&graph, 1);
    cnnc::passes::optimize(&mut graph, cnnc::passes::OptLevel::O2).unwrap();
    for triple in ["nonsense-unknown-linux", "", "x86_64-unknown-linux-gnu-extra-parts", "riscv64gc-unknown-linux-gnu"]
    {
        let Err(text) = cnnc::backend::clif::compile_object(&graph, "n", Some(triple)) else {
            panic!("`{triple}` compiled")
        };
        assert!(text.contains("triple") || text.contains("target"), "{triple}: {text}");
    }
    assert!(cnnc::backend::clif::compile_object(&graph, "n", Some("aarch64-unknown-linux-gnu")).is_ok());
}

/// Finding 2: the memory a network needs is known before anything is allocated, with
/// checked arithmetic, and refused past a limit with the size and the flag named.
#[test]
fn the_memory_budget_refuses_huge_networks_before_allocating() {
    for source in [
        "network n { input x: [3, 65536, 65536] }",
        "network n { input x: [3, 64, 64]; flatten; linear(16777216) }",
        "network n { input x: [16777216]; linear(16777216); linear(16777216) }",
    ] {
        let graph = compile_bytes(source.as_bytes(), &BuildOptions::default()).expect("valid, but huge");
        let need = cnnc::budget::need(&graph).unwrap();
        assert!(need.total > 8 << 30, "{source}: {need:?}");
        let text = cnnc::budget::check(&graph, Some(8 << 30)).unwrap_err().to_string();
        assert!(text.contains("--max-memory") && text.contains("GiB"), "{text}");
        assert!(text.contains("more than the limit of 8.0 GiB"), "{text}");
    }
    // The examples fit, and their figures add up.
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resnet18.cnn")).unwrap();
    let graph = compile_bytes(&bytes, &BuildOptions::default()).unwrap();
    let need = cnnc::budget::check(&graph, Some(1 << 30)).unwrap();
    // 11,689,512 parameters and BatchNorm's running statistics.
    assert!((46_000_000..48_000_000).contains(&need.weights), "{need:?}");
    assert_eq!(
        need.total,
        need.weights + need.packed_weights + need.activations + need.inputs + need.outputs + need.code
    );
    assert_eq!(need.inputs, 4 * 3 * 224 * 224);
    assert_eq!(need.outputs, 4 * 1000);
}

#[test]
fn sizes_parse_in_binary_units() {
    use cnnc::budget::parse_size;
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("16G"), Ok(16 << 30));
    assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("2T"), Ok(2 << 40));
    for bad in ["", "G", "-1G", "0", "1Q", "1e999", "99999999999T"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}
