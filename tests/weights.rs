//! Loading safetensors weights: strict binding with one complete error, dtype widening,
//! malformed files (never a panic), and deterministic random weights.

use std::collections::BTreeMap;

use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::Graph;
use cnnc::tensor::Tensor;
use cnnc::weights::{Weights, load_safetensors, random_normal, random_weights, save_safetensors};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

const SMALL: &str = "network t { input x: [3, 8, 8]; c: conv(4, 3); bn: batch_norm; flatten; fc: linear(2) }";

fn graph(source: &str) -> Graph {
    compile_source(source, &BuildOptions::default()).unwrap_or_else(|d| panic!("does not compile: {d:?}"))
}

/// A safetensors file of raw tensors: (name, dtype, shape, little-endian bytes).
fn file_of(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (*name, TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A safetensors file from a header written by hand and raw data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The error's text with runs of spaces (the listing's column padding) made one.
fn load_err(bytes: &[u8], graph: &Graph) -> String {
    match load_safetensors(bytes, graph, false) {
        Ok(_) => panic!("loaded, but should not"),
        Err(e) => squeeze(&e.to_string()),
    }
}

fn squeeze(text: &str) -> String {
    text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
}

fn expected_shapes(g: &Graph) -> BTreeMap<String, Vec<usize>> {
    g.params().into_iter().map(|p| (p.name.clone(), p.shape.clone())).collect()
}

#[test]
fn the_small_net_reads_what_pytorch_would_save() {
    let g = graph(SMALL);
    let shapes = expected_shapes(&g);
    let want: BTreeMap<String, Vec<usize>> = [
        ("c.weight", vec![4, 3, 3, 3]),
        ("c.bias", vec![4]),
        ("bn.weight", vec![4]),
        ("bn.bias", vec![4]),
        ("bn.running_mean", vec![4]),
        ("bn.running_var", vec![4]),
        ("fc.weight", vec![2, 144]),
        ("fc.bias", vec![2]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(shapes, want);
}

#[test]
fn save_then_load_round_trips() {
    let g = graph(SMALL);
    let weights = random_weights(&g, 7);
    let bytes = save_safetensors(&weights);
    let loaded = load_safetensors(&bytes, &g, false).unwrap();
    assert_eq!(loaded.tensors, weights.tensors);
}

#[test]
fn f16_bf16_and_f64_are_widened_to_f32() {
    let g = graph("network t { input x: [2]; fc: linear(2) }");
    let weight = [0.5f32, -1.25, 3.0, 0.0];
    let bias = [1.5f32, -2.0];
    let f16: Vec<u8> = weight.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = bias.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let bytes = file_of(&[("fc.weight", Dtype::F16, vec![2, 2], f16), ("fc.bias", Dtype::BF16, vec![2], bf16)]);
    let w = load_safetensors(&bytes, &g, false).unwrap();
    assert_eq!(w.get("fc.weight").unwrap(), &Tensor::new(vec![2, 2], weight.to_vec()).unwrap());
    assert_eq!(w.get("fc.bias").unwrap().data, bias);

    let f64s: Vec<u8> = weight.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect();
    let bytes =
        file_of(&[("fc.weight", Dtype::F64, vec![2, 2], f64s), ("fc.bias", Dtype::F32, vec![2], f32_bytes(&bias))]);
    let w = load_safetensors(&bytes, &g, false).unwrap();
    assert_eq!(w.get("fc.weight").unwrap().data, weight);
}

#[test]
fn num_batches_tracked_and_other_batch_norm_integers_are_ignored() {
    let g = graph(SMALL);
    let weights = random_weights(&g, 1);
    let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = weights
        .tensors
        .iter()
        .map(|(name, t)| (name.as_str(), Dtype::F32, t.shape.clone(), f32_bytes(&t.data)))
        .collect();
    tensors.push(("bn.num_batches_tracked", Dtype::I64, vec![], 1234i64.to_le_bytes().to_vec()));
    tensors.push(("bn.some_counter", Dtype::I32, vec![1], 5i32.to_le_bytes().to_vec()));
    let loaded = load_safetensors(&file_of(&tensors), &g, false).unwrap();
    assert_eq!(loaded.tensors, weights.tensors);
}

#[test]
fn one_error_lists_missing_unexpected_and_mis_shaped_tensors() {
    let g = graph(SMALL);
    let mut weights = random_weights(&g, 3);
    weights.tensors.remove("c.bias");
    let fc = weights.tensors.remove("fc.weight").unwrap();
    weights.insert("fc.weights", fc); // a typo: missing fc.weight, unexpected fc.weights
    weights.insert("bn.weight", Tensor::zeros(vec![5]));
    weights.insert("extra.thing", Tensor::zeros(vec![2, 2]));
    let text = load_err(&save_safetensors(&weights), &g);
    assert!(text.contains("network `t`"), "{text}");
    assert!(text.contains("2 missing, 2 unexpected, 1 mis-shaped"), "{text}");
    // One row per layer: the network's tensors on the left, the file's on the right.
    assert!(text.lines().any(|l| l.trim() == "c: bias [4]"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "fc: weight [2, 144] | fc: weights [2, 144]"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "| extra: thing [2, 2]"), "{text}");
    assert!(text.contains("mis-shaped `bn.weight`: the file has [5], the network expects [4]"), "{text}");
    assert!(!text.contains("--allow-unused-weights"), "only unexpected tensors get the hint: {text}");
}

#[test]
fn allow_unused_accepts_unexpected_tensors_only() {
    let g = graph(SMALL);
    let mut weights = random_weights(&g, 3);
    let expected = weights.tensors.clone();
    weights.insert("head.weight", Tensor::zeros(vec![3]));
    let bytes = save_safetensors(&weights);
    let text = load_err(&bytes, &g);
    assert!(text.contains("1 unexpected"), "{text}");
    assert!(text.contains("head: weight [3]"), "{text}");
    assert!(text.contains("--allow-unused-weights accepts the others"), "{text}");
    let loaded = load_safetensors(&bytes, &g, true).unwrap();
    assert_eq!(loaded.tensors, expected);

    // Missing tensors stay an error, and unexpected ones are then not listed.
    weights.tensors.remove("fc.bias");
    let text = squeeze(&load_safetensors(&save_safetensors(&weights), &g, true).unwrap_err().to_string());
    assert!(text.contains(": 1 missing (the network reads"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "fc: bias [2]"), "{text}");
    assert!(!text.contains("head.weight"), "{text}");
}

#[test]
fn a_module_prefix_from_data_parallel_gets_a_hint() {
    let g = graph(SMALL);
    let weights = random_weights(&g, 3);
    let mut prefixed = Weights::default();
    for (name, t) in &weights.tensors {
        prefixed.insert(format!("module.{name}"), t.clone());
    }
    let text = load_err(&save_safetensors(&prefixed), &g);
    assert!(text.contains("8 missing, 8 unexpected"), "{text}");
    assert!(text.contains("c: weight [4, 3, 3, 3], bias [4] | module.c: weight [4, 3, 3, 3], bias [4]"), "{text}");
    assert!(text.contains("8 names in the file start with an extra `module.`"), "{text}");
    assert!(text.contains("DataParallel"), "{text}");
}

#[test]
fn a_missing_prefix_gets_a_hint() {
    let g = graph("network t { input x: [3, 8, 8]; features: seq { conv(4, 3); relu }; flatten; fc: linear(2) }");
    let weights = random_weights(&g, 3);
    assert!(weights.get("features.0.weight").is_some());
    let mut stripped = Weights::default();
    for (name, t) in &weights.tensors {
        stripped.insert(name.strip_prefix("features.").unwrap_or(name), t.clone());
    }
    let text = load_err(&save_safetensors(&stripped), &g);
    assert!(text.contains("features.0: weight [4, 3, 3, 3], bias [4] | 0: weight [4, 3, 3, 3], bias [4]"), "{text}");
    assert!(text.contains("2 names in the file lack the prefix `features.`"), "{text}");
}

#[test]
fn a_transposed_linear_weight_gets_a_hint() {
    let g = graph(SMALL);
    let mut weights = random_weights(&g, 3);
    weights.insert("fc.weight", Tensor::zeros(vec![144, 2]));
    let text = load_err(&save_safetensors(&weights), &g);
    assert!(text.contains("mis-shaped `fc.weight`: the file has [144, 2], the network expects [2, 144]"), "{text}");
    assert!(text.contains("transposed?"), "{text}");
}

#[test]
fn an_unsupported_dtype_names_the_tensor_and_dtype() {
    let g = graph("network t { input x: [2]; fc: linear(2) }");
    let bytes = file_of(&[
        ("fc.weight", Dtype::I32, vec![2, 2], [1i32, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ("fc.bias", Dtype::F32, vec![2], f32_bytes(&[0.0, 0.0])),
    ]);
    let text = load_err(&bytes, &g);
    assert!(text.contains("unsupported dtype `fc.weight`: I32"), "{text}");
    assert!(text.contains("F32, F16, BF16 or F64"), "{text}");

    // A dtype safetensors does not know at all.
    let bytes = raw_file(r#"{"fc.bias":{"dtype":"F128","shape":[2],"data_offsets":[0,32]}}"#, &[0; 32]);
    let text = load_err(&bytes, &g);
    assert!(text.contains("tensor `fc.bias` has unknown dtype `F128`"), "{text}");
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let g = graph(SMALL);
    let good = save_safetensors(&random_weights(&g, 0));
    let f32_data = f32_bytes(&[1.0, 2.0]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "0 bytes long"),
        ("4 bytes", vec![1, 2, 3, 4], "4 bytes long"),
        (
            "header length 2^60",
            (1u64 << 60).to_le_bytes().iter().chain(b"{}").copied().collect(),
            "header length is 1152921504606846976",
        ),
        ("header past the end", raw_file("{}", b"")[..9].to_vec(), "only 1 bytes follow"),
        ("truncated data", good[..good.len() - 3].to_vec(), "outside the"),
        (
            "offsets out of range",
            raw_file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, &f32_data),
            "tensor `a` has data offsets [0, 16] outside the 8 bytes",
        ),
        (
            // Valid on their own, but summing to near usize::MAX: safetensors 0.8 alone
            // overflows (a panic in debug builds) when it adds the header length.
            "offsets near usize::MAX",
            raw_file(&near_usize_max_header(), &f32_data),
            "tensor `t0` has data offsets [0, 2305843009213693951] outside the 8 bytes",
        ),
        (
            "overlapping offsets",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &f32_data,
            ),
            "the data of tensors `a` and `b` overlap",
        ),
        (
            "a gap",
            raw_file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &f32_data),
            "bytes 0..4 of the data belong to no tensor",
        ),
        (
            "data left over",
            raw_file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &f32_data),
            "cover 4 bytes of data but the file holds 8",
        ),
        (
            "shape and offsets disagree",
            raw_file(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &f32_data),
            "tensor `a` of dtype F32 and shape [3] does not fit its 8 bytes",
        ),
        (
            "a shape whose size overflows",
            raw_file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}"#, &f32_data),
            "does not fit its 8 bytes",
        ),
        ("invalid JSON", raw_file(r#"{"a": {"dtype": "F32", "#, &f32_data), "not valid JSON"),
        ("not an object", raw_file("[1, 2]", b""), "not a JSON object"),
        (
            "not UTF-8",
            raw_file("{\"\u{e9}\": 1}", b"").iter().map(|&b| if b == 0xc3 { 0xff } else { b }).collect(),
            "not UTF-8",
        ),
        ("no dtype", raw_file(r#"{"a":{"shape":[2],"data_offsets":[0,8]}}"#, &f32_data), "tensor `a` has no dtype"),
        ("negative shape", raw_file(r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, &f32_data), "shape"),
        ("bad metadata", raw_file(r#"{"__metadata__":{"k":5}}"#, b""), "not a valid safetensors file"),
    ];
    for (what, bytes, needle) in cases {
        let text = load_err(&bytes, &g);
        assert!(text.contains("not a valid safetensors file"), "{what}: {text}");
        assert!(text.contains(needle), "{what}: {text}");
    }
}

/// Eight contiguous u8 tensors of 2^61 - 1 bytes each: 2^64 - 8 bytes of data in all.
fn near_usize_max_header() -> String {
    let size = (1u64 << 61) - 1;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#, i * size, (i + 1) * size)
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

#[test]
fn an_empty_file_binds_a_network_without_weights() {
    let g = graph("network t { input x: [3, 8, 8]; relu }");
    assert!(load_safetensors(&raw_file("{}", b""), &g, false).unwrap().tensors.is_empty());
    assert!(load_safetensors(&raw_file(r#"{"__metadata__":{"format":"pt"}}"#, b""), &g, false).is_ok());
}

#[test]
fn random_weights_are_deterministic_and_seed_dependent() {
    let g = graph(SMALL);
    let a = random_weights(&g, 42);
    let b = random_weights(&g, 42);
    let c = random_weights(&g, 43);
    assert_eq!(a.tensors, b.tensors);
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), c.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &a.tensors {
        assert_ne!(t, &c.tensors[name], "{name} does not depend on the seed");
        assert_eq!(t.shape, expected_shapes(&g)[name]);
        assert!(t.data.iter().all(|v| v.is_finite() && *v != 0.0), "{name}");
    }
    // Values depend on the name, not on where the layer sits in the network.
    let other = graph("network u { input x: [3, 8, 8]; first: conv(3, 3, pad=1); c: conv(4, 3); flatten }");
    let d = random_weights(&other, 42);
    assert_eq!(d.get("c.weight").unwrap(), a.get("c.weight").unwrap());
    assert_ne!(d.get("first.weight").unwrap().data[..81], a.get("c.weight").unwrap().data[..81]);
}

fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = values.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn random_weights_have_he_statistics() {
    let g = graph(
        "network t { input x: [64, 16, 16]; c: conv(128, 3, bias=false); bn: batch_norm; \
         global_avg_pool; flatten; fc: linear(10) }",
    );
    let w = random_weights(&g, 5);
    let conv = w.get("c.weight").unwrap();
    assert_eq!(conv.shape, vec![128, 64, 3, 3]);
    let (mean, std) = mean_std(&conv.data);
    let he = (2.0f64 / (64.0 * 9.0)).sqrt();
    assert!(mean.abs() < 0.01 * he * 10.0, "mean {mean}");
    assert!((std / he - 1.0).abs() < 0.02, "std {std}, expected {he}");

    let (_, fc_std) = mean_std(&w.get("fc.weight").unwrap().data);
    assert!((fc_std / (2.0f64 / 128.0).sqrt() - 1.0).abs() < 0.2, "fc std {fc_std}");
    let (_, bias_std) = mean_std(&w.get("fc.bias").unwrap().data);
    assert!(bias_std > 0.0 && bias_std < 0.05, "fc bias std {bias_std}");

    for name in ["bn.weight", "bn.running_var"] {
        assert!(w.get(name).unwrap().data.iter().all(|v| (0.5..1.5).contains(v)), "{name}");
    }
    let (_, mean_std_) = mean_std(&w.get("bn.running_mean").unwrap().data);
    assert!(mean_std_ > 0.03 && mean_std_ < 0.3, "running_mean std {mean_std_}");
}

#[test]
fn random_normal_is_standard_normal_and_deterministic() {
    let a = random_normal(&[4, 3, 32, 32], 9);
    assert_eq!(a.shape, vec![4, 3, 32, 32]);
    assert_eq!(a, random_normal(&[4, 3, 32, 32], 9));
    assert_ne!(a, random_normal(&[4, 3, 32, 32], 10));
    let (mean, std) = mean_std(&a.data);
    assert!(mean.abs() < 0.05, "mean {mean}");
    assert!((std - 1.0).abs() < 0.05, "std {std}");
    assert_eq!(random_normal(&[0, 3], 1).data.len(), 0);
}

/// The mismatch report for a file saved from a model whose layers are named otherwise.
fn mismatch_report(source: &str, rename: impl Fn(&str) -> String, verbose: bool) -> String {
    let g = graph(source);
    let mut renamed = Weights::default();
    for (name, t) in &random_weights(&g, 3).tensors {
        renamed.insert(rename(name), t.clone());
    }
    let rows = if verbose { None } else { Some(cnnc::weights::DEFAULT_LISTED_LAYERS) };
    match cnnc::weights::load_safetensors_listing(&save_safetensors(&renamed), &g, false, rows) {
        Ok(_) => panic!("loaded, but should not"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn layers_numbered_from_one_pair_by_shape_and_say_to_name_the_layer() {
    // PyTorch code often says conv1, conv2; unnamed layers here are conv_0, conv_1.
    let text = mismatch_report(
        "network t { input x: [1, 8, 8]; conv(4, 3); relu; conv(8, 3); flatten; linear(10) }",
        |name| {
            let (layer, rest) = name.split_once('.').unwrap();
            let (op, n) = layer.rsplit_once('_').unwrap();
            format!("{op}_{}.{rest}", n.parse::<usize>().unwrap() + 1)
        },
        false,
    );
    // conv_0.weight [4, 1, 3, 3] sits beside the file's conv_1.weight of the same shape,
    // not beside conv_2.weight [8, 4, 3, 3], a name closer by one letter.
    let flat = squeeze(&text);
    assert!(flat.contains("conv_0: weight [4, 1, 3, 3], bias [4] | conv_1: weight [4, 1, 3, 3], bias [4]"), "{text}");
    assert!(flat.contains("conv_1: weight [8, 4, 3, 3], bias [8] | conv_2: weight [8, 4, 3, 3], bias [8]"), "{text}");
    assert!(text.contains("name the layer in the program"), "{text}");
    insta::assert_snapshot!("weights_numbered_from_one", text);
}

#[test]
fn seq_positions_and_nesting_get_their_hints() {
    let seq = mismatch_report(
        "network t { input x: [1, 8, 8]; features: seq { conv(4, 3); relu; conv(8, 3) }; flatten; fc: linear(2) }",
        // The model had one more step before its second conv, which it calls features.3.
        |name| name.replace("features.2.", "features.3."),
        false,
    );
    assert!(seq.contains("the network's `features.2` has the file's tensors of `features.3`"), "{seq}");
    assert!(seq.contains("nn.Sequential"), "{seq}");
    let nested = mismatch_report(
        "block b() { conv1: conv(4, 3) }\nnetwork t { input x: [1, 8, 8]; layer1: seq { b() }; flatten; fc: linear(2) }",
        |name| name.replace("layer1.0.", "layer1."),
        false,
    );
    assert!(nested.contains("nest differently"), "{nested}");
    insta::assert_snapshot!("weights_seq_position", seq);
}

#[test]
fn another_architecture_is_said_plainly_and_the_list_is_cut_unless_verbose() {
    let source = "network t { input x: [3, 8, 8]; repeat 20 { conv(4, 1) }; flatten; fc: linear(2) }";
    let other = |name: &str| format!("backbone.{}x", name.replace('_', "."));
    let text = mismatch_report(source, other, false);
    assert!(text.contains("the weights do not match network `t`: 42 missing, 42 unexpected"), "{text}");
    assert!(text.contains("most of the network's tensors (42 of 42)"), "{text}");
    assert!(text.contains("another architecture"), "{text}");
    assert!(text.contains("more rows (--verbose lists them all)"), "{text}");
    let full = mismatch_report(source, other, true);
    assert!(!full.contains("more rows"), "{full}");
    assert!(full.lines().count() > text.lines().count() + 5);
}

#[test]
fn a_torch_save_file_is_recognised_with_the_conversion() {
    let g = graph(SMALL);
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl".to_vec();
    let text = load_err(&zip, &g);
    assert!(text.contains("a PyTorch file written by `torch.save` (a zip archive)"), "{text}");
    assert!(text.contains("safetensors.torch"), "{text}");
    assert!(text.contains("save_file(torch.load("), "{text}");
    let legacy = [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    assert!(load_err(&legacy, &g).contains("(a pickle)"));
}
