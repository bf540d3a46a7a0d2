//! `cnnc import`: every example round-trips through our ONNX exporter and back with the
//! same IR text, names included; malformed and unsupported models are refused with exit
//! code 1 and the node named; imported programs agree with ONNX Runtime on the original.
//!
//! The round trip compares the IR after `eliminate_identities` on both sides: ONNX's
//! `Identity` (what the exporter writes for dropout, and for an adaptive pool that keeps
//! the size) carries no dropout rate, and the importer drops it.
//!
//! The ONNX Runtime comparisons run through Python (`.venv/bin/python`, or
//! `CNNC_PYTHON`); without it they print a loud skip line and pass, unless `CI` is set
//! or `CNNC_REQUIRE_ORACLE=1`, as in tests/oracle.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::Graph;
use onnx_protobuf::{Message, ModelProto};

#[allow(dead_code)]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    v.sort();
    v
}

fn without_identities(mut graph: Graph) -> String {
    cnnc::passes::eliminate_identities(&mut graph);
    cnnc::ir::print(&graph)
}

/// The example's graph with random weights, and its ONNX export.
fn export(path: &Path) -> (Graph, Vec<u8>) {
    let source = std::fs::read_to_string(path).expect("readable");
    let mut graph = compile_source(&source, &BuildOptions::default()).expect("example compiles");
    graph.weights = cnnc::weights::random_weights(&graph, 7);
    let bytes = cnnc::export::onnx::to_onnx(&graph, &graph.weights, false).expect("exports");
    (graph, bytes)
}

#[test]
fn every_example_round_trips_with_the_same_ir_and_weights() {
    let mut failures = Vec::new();
    let mut examples = examples();
    assert!(examples.len() >= 30, "examples/ holds {} programs", examples.len());
    // And what examples do not use: asymmetric pads, `same` on pools, dilated pools,
    // rank-3 tensors, 1-D pools, reshape, erf and ONNX's hardsigmoid, one scalar per sample. (`mean.cnn` is not
    // here: its `mean(2, 3, keepdim=true)` imports as `global_avg_pool`.)
    for program in [
        "asymmetric_pads.cnn",
        "same_padding.cnn",
        "max_pool_dilation.cnn",
        "avg_pool_dilation.cnn",
        "rank3.cnn",
        "pool1d.cnn",
        "reshape.cnn",
        "onnx_elementwise.cnn",
        "layer_norm_dims.cnn",
        "scalars.cnn",
    ] {
        examples.push(repo().join("tests/programs").join(program));
    }
    for path in &examples {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (graph, bytes) = export(path);
        let imported = match cnnc::import::import(&bytes) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{name}: import failed: {e}"));
                continue;
            }
        };
        // The program text itself compiles to the same IR (not only the graph returned).
        let again = compile_source(&imported.program, &BuildOptions::default()).expect("the written program compiles");
        let (want, have) = (without_identities(graph.structure()), without_identities(again));
        if want != have {
            let line = want.lines().zip(have.lines()).find(|(a, b)| a != b);
            failures.push(format!("{name}: IR differs at {line:?}"));
            continue;
        }
        // Every weight arrives under the same name with the same values.
        for param in graph.params() {
            let original = &graph.weights.tensors[&param.name];
            match imported.weights.get(&param.name) {
                Some(t) if t == original => {}
                Some(_) => failures.push(format!("{name}: weight `{}` differs", param.name)),
                None => failures.push(format!("{name}: weight `{}` is missing", param.name)),
            }
        }
        assert_eq!(imported.weights.tensors.len(), graph.params().len(), "{name}: no extra weights");
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples do not round-trip:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

#[test]
fn asymmetric_pads_import_as_four_tuples_and_same() {
    let (_, bytes) = export(&repo().join("tests/programs/asymmetric_pads.cnn"));
    let program = cnnc::import::import(&bytes).expect("imports").program;
    for step in [
        "conv(6, 3, pad=(0, 1, 2, 1))",
        "max_pool(3, stride=2, pad=(2, 0, 1, 2))",
        "max_pool((2, 3), stride=1, pad=same)",
        "avg_pool(4, stride=3, pad=same, count_pad=true)",
    ] {
        assert!(program.contains(step), "no `{step}` in:\n{program}");
    }
}

#[test]
fn imported_resnet18_uses_parameterized_blocks_and_stays_short() {
    let example = std::fs::read_to_string(repo().join("examples/resnet18.cnn")).expect("readable");
    let (_, bytes) = export(&repo().join("examples/resnet18.cnn"));
    let program = cnnc::import::import(&bytes).expect("imports").program;
    // The basic unit and the downsampling unit, each once, with the width a parameter.
    assert_eq!(program.matches("\nblock ").count() + usize::from(program.starts_with("block ")), 2, "{program}");
    assert!(program.contains("(p1) {"), "{program}");
    let lines = program.lines().count();
    let limit = 2 * example.lines().count();
    assert!(lines <= limit, "{lines} lines, over twice examples/resnet18.cnn ({limit}):\n{program}");
}

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).output().expect("cnnc runs")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("cnnc-import-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cnnc import` on `bytes`; asserts exit code 1 with `expected` in the message.
fn refused(tmp: &Path, tag: &str, bytes: &[u8], expected: &[&str]) {
    let model = tmp.join(format!("{tag}.onnx"));
    std::fs::write(&model, bytes).expect("write");
    let out = cnnc(&["import", model.to_str().unwrap(), "-o", tmp.join(format!("{tag}.cnn")).to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{tag}: exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{tag}: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{tag}: expected `{e}` in:\n{stderr}");
    }
}

fn lenet() -> ModelProto {
    let (_, bytes) = export(&repo().join("examples/lenet5.cnn"));
    ModelProto::parse_from_bytes(&bytes).expect("parses")
}

#[test]
fn malformed_and_unsupported_models_exit_1_with_the_node_named() {
    let tmp = TempDir::new("bad");
    let good = lenet().write_to_bytes().expect("serializes");
    refused(&tmp.0, "empty", &[], &["empty"]);
    refused(&tmp.0, "truncated", &good[..good.len() / 3], &["cannot import"]);
    refused(&tmp.0, "random", &random_bytes(1, 4096), &["cannot import"]);

    let mut unsupported = lenet();
    let graph = unsupported.graph.as_mut().unwrap();
    let node = graph.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    node.op_type = "Elu".into();
    let name = node.name.clone();
    refused(
        &tmp.0,
        "unsupported",
        &unsupported.write_to_bytes().unwrap(),
        &[&format!("node `{name}` (Elu)"), "not supported"],
    );

    let mut missing = lenet();
    let graph = missing.graph.as_mut().unwrap();
    graph.initializer.retain(|t| t.name != "conv2.weight");
    refused(&tmp.0, "missing", &missing.write_to_bytes().unwrap(), &["node `conv2` (Conv)", "conv2.weight"]);

    let mut huge = lenet();
    let input = &mut huge.graph.as_mut().unwrap().input[0];
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = input.type_.as_mut().unwrap().value.as_mut() {
        t.shape.as_mut().unwrap().dim[2].value =
            Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(1 << 40));
    }
    refused(&tmp.0, "huge_input", &huge.write_to_bytes().unwrap(), &["graph input `image`"]);

    // A zero-size input (dimension 0 of 0, not a symbolic batch): refused at its reader.
    let mut empty = lenet();
    let input = &mut empty.graph.as_mut().unwrap().input[0];
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = input.type_.as_mut().unwrap().value.as_mut() {
        t.shape.as_mut().unwrap().dim[0].value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(0));
    }
    refused(&tmp.0, "zero_size", &empty.write_to_bytes().unwrap(), &["node `conv1` (Conv)", "zero-size"]);

    let mut deep = lenet();
    let relu = deep.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.name = vec!["a"; 5000].join(".");
    // Not a layer path cnnc keeps: the relu is named by the writer.
    let program = cnnc::import::import(&deep.write_to_bytes().unwrap()).expect("imports").program;
    assert!(!program.contains("a.a") && program.len() < 1000, "{program}");

    // Pool padding as large as the kernel (2): a bottom window of padding only.
    let mut padded = lenet();
    let pool = padded.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "MaxPool").unwrap();
    pool.attribute.retain(|a| a.name != "pads" && a.name != "auto_pad");
    let mut pads = onnx_protobuf::AttributeProto::new();
    pads.name = "pads".into();
    pads.type_ = onnx_protobuf::attribute_proto::AttributeType::INTS.into();
    pads.ints = vec![0, 0, 2, 0];
    pool.attribute.push(pads);
    let name = pool.name.clone();
    refused(
        &tmp.0,
        "pool_pad",
        &padded.write_to_bytes().unwrap(),
        &[&format!("node `{name}` (MaxPool)"), "not smaller than the kernel"],
    );
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// In-process: no input of these shapes panics the importer; each is an error or a model.
#[test]
fn corrupted_models_never_panic() {
    let good = lenet().write_to_bytes().expect("serializes");
    let mut refused = 0;
    for cut in (0..good.len()).step_by(good.len() / 97 + 1) {
        if cnnc::import::import(&good[..cut]).is_err() {
            refused += 1;
        }
    }
    for seed in 0..200u64 {
        let mut bytes = good.clone();
        let mut r = random_bytes(seed, 8);
        for k in 0..4 {
            let at = (u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize + k * 7919) % bytes.len();
            bytes[at] ^= r[4 + k] | 1;
            r.rotate_left(1);
        }
        let _ = cnnc::import::import(&bytes);
    }
    for seed in 0..100u64 {
        assert!(cnnc::import::import(&random_bytes(seed, 64 + seed as usize * 13)).is_err());
    }
    assert!(refused > 90, "{refused} truncations refused");
}

/// Tolerance of the reference interpreter against ONNX Runtime (the issue's 1e-5).
const TOLERANCE: f64 = 1e-5;

#[test]
fn imported_programs_agree_with_onnxruntime_on_the_original() {
    let Some(python) = common::onnxruntime_python() else { return };
    let tmp = TempDir::new("ort");
    let torch = tmp.0.join("torch_style.onnx");
    std::fs::write(&torch, torch_style::model().write_to_bytes().expect("serializes")).expect("write");
    let axes = tmp.0.join("other_axes.onnx");
    std::fs::write(&axes, torch_style::other_axes().write_to_bytes().expect("serializes")).expect("write");
    let mut models: Vec<(String, PathBuf)> = vec![("torch_style".into(), torch), ("other_axes".into(), axes)];
    for name in
        ["lenet5", "alexnet_original", "squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x1_0", "convnext_tiny"]
    {
        let (_, bytes) = export(&repo().join(format!("examples/{name}.cnn")));
        let model = tmp.0.join(format!("{name}.onnx"));
        std::fs::write(&model, &bytes).expect("write");
        models.push((name.to_string(), model));
    }
    for (name, model) in models {
        let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(["import", model.to_str().unwrap(), "--check"])
            .env("CNNC_PYTHON", &python)
            .output()
            .expect("cnnc runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        let errors: Vec<f64> = stdout
            .lines()
            .filter_map(|l| l.split("relative L2 error ").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(!errors.is_empty(), "{name}: no check line in\n{stdout}");
        eprintln!("{name}: relative L2 {errors:?}");
        assert!(errors.iter().all(|&e| e <= TOLERANCE), "{name}: {errors:?} over {TOLERANCE}");
        // The written files: a program that compiles and weights that bind to it.
        let program = std::fs::read_to_string(model.with_extension("cnn")).expect("program written");
        let graph = compile_source(&program, &BuildOptions::default()).expect("compiles");
        let weights = std::fs::read(model.with_extension("safetensors")).expect("weights written");
        cnnc::weights::load_safetensors(&weights, &graph, false).expect("the weights bind to the program");
    }
}

mod torch_style {
    //! A model written the way `torch.onnx.export` writes one: node names that are module
    //! scopes (`/layer1/layer1.0/relu/Relu`), a weight named `onnx::Conv_7` (BatchNorm
    //! folded by the exporter), and flatten as `Shape -> Gather -> Unsqueeze -> Concat ->
    //! Reshape`.
    use onnx_protobuf::attribute_proto::AttributeType;
    use onnx_protobuf::tensor_proto::DataType;
    use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
    use onnx_protobuf::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto, type_proto,
    };

    fn node(op: &str, name: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), type_: AttributeType::INTS.into(), ..Default::default() }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { name: name.into(), i: v, type_: AttributeType::INT.into(), ..Default::default() }
    }

    fn floats(name: &str, dims: &[i64], seed: u64) -> TensorProto {
        let n: i64 = dims.iter().product();
        let data = cnnc::weights::random_normal(&[n as usize], seed).data;
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::FLOAT as i32,
            float_data: data.iter().map(|v| v * 0.3).collect(),
            ..Default::default()
        }
    }

    fn int64s(name: &str, v: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: DataType::INT64 as i32,
            int64_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn info(name: &str, dims: &[i64]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|&d| Dimension { value: Some(dimension::Value::DimValue(d)), ..Default::default() })
            .collect();
        let tensor = type_proto::Tensor {
            elem_type: DataType::FLOAT as i32,
            shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
            ..Default::default()
        };
        ValueInfoProto {
            name: name.into(),
            type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }).into(),
            ..Default::default()
        }
    }

    pub fn model() -> ModelProto {
        let conv =
            |k: i64, pad: i64| vec![ints("kernel_shape", &[k, k]), ints("pads", &[pad; 4]), ints("strides", &[1, 1])];
        let nodes = vec![
            node("Conv", "/conv1/Conv", &["input", "conv1.weight", "conv1.bias"], "/conv1/Conv_output_0", conv(3, 1)),
            node("Relu", "/relu/Relu", &["/conv1/Conv_output_0"], "/relu/Relu_output_0", vec![]),
            node(
                "Conv",
                "/layer1/layer1.0/conv1/Conv",
                &["/relu/Relu_output_0", "onnx::Conv_7", "onnx::Conv_8"],
                "/layer1/layer1.0/conv1/Conv_output_0",
                conv(3, 1),
            ),
            node("Relu", "/layer1/layer1.0/relu/Relu", &["/layer1/layer1.0/conv1/Conv_output_0"], "r1", vec![]),
            node("Add", "/layer1/layer1.0/Add", &["r1", "/relu/Relu_output_0"], "sum", vec![]),
            node("Relu", "/layer1/layer1.0/relu_1/Relu", &["sum"], "r2", vec![]),
            NodeProto {
                op_type: "Split".into(),
                name: "/Split".into(),
                input: vec!["r2".into(), "halves".into()],
                output: vec!["lo".into(), "hi".into()],
                attribute: vec![int("axis", 1)],
                ..Default::default()
            },
            node("Concat", "/Concat_1", &["hi", "lo"], "swapped", vec![int("axis", 1)]),
            node(
                "MaxPool",
                "/maxpool/MaxPool",
                &["swapped"],
                "pooled",
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
            node("Shape", "/Shape", &["pooled"], "shape", vec![]),
            node(
                "Constant",
                "/Constant",
                &[],
                "zero",
                vec![AttributeProto {
                    name: "value".into(),
                    t: Some(TensorProto {
                        data_type: DataType::INT64 as i32,
                        int64_data: vec![0],
                        ..Default::default()
                    })
                    .into(),
                    type_: AttributeType::TENSOR.into(),
                    ..Default::default()
                }],
            ),
            node("Gather", "/Gather", &["shape", "zero"], "batch", vec![int("axis", 0)]),
            node("Unsqueeze", "/Unsqueeze", &["batch", "axes0"], "batch1", vec![]),
            node("Concat", "/Concat", &["batch1", "minus_one"], "target", vec![int("axis", 0)]),
            node("Reshape", "/Reshape", &["pooled", "target"], "flat", vec![]),
            node("Gemm", "/fc/Gemm", &["flat", "fc.weight", "fc.bias"], "logits", vec![int("transB", 1)]),
        ];
        let initializer = vec![
            floats("conv1.weight", &[4, 2, 3, 3], 1),
            floats("conv1.bias", &[4], 2),
            floats("onnx::Conv_7", &[4, 4, 3, 3], 3),
            floats("onnx::Conv_8", &[4], 4),
            floats("fc.weight", &[5, 64], 5),
            floats("fc.bias", &[5], 6),
            int64s("axes0", &[0]),
            int64s("minus_one", &[-1]),
            int64s("halves", &[2, 2]),
        ];
        // The batch exported as a symbolic dimension (`dynamic_axes`).
        let mut input = info("input", &[1, 2, 8, 8]);
        if let Some(type_proto::Value::TensorType(t)) = input.type_.as_mut().unwrap().value.as_mut() {
            t.shape.as_mut().unwrap().dim[0].value = Some(dimension::Value::DimParam("batch".into()));
        }
        let graph = GraphProto {
            name: "main_graph".into(),
            node: nodes,
            initializer,
            input: vec![input],
            output: vec![info("logits", &[1, 5])],
            ..Default::default()
        };
        opset17(graph)
    }

    /// `graph` as an IR-version-8, opset-17 model (what torch.onnx writes).
    fn opset17(graph: GraphProto) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17, ..Default::default() }],
            graph: Some(graph).into(),
            ..Default::default()
        }
    }

    /// Softmax and Concat along axes other than 1, on rank 4 (H and W) and rank 3 (L),
    /// which the import writes as a `permute` swapping the axis with 1 around the op.
    pub fn other_axes() -> ModelProto {
        let nodes = vec![
            node("Softmax", "/softmax_w", &["x"], "sw", vec![int("axis", -1)]),
            node("Softmax", "/softmax_h", &["x"], "sh", vec![int("axis", 2)]),
            node("Concat", "/concat_w", &["sw", "sh"], "cw", vec![int("axis", 3)]),
            node("Concat", "/concat_h", &["x", "sh"], "ch", vec![int("axis", -2)]),
            node("Relu", "/relu", &["seq"], "r", vec![]),
            node("Softmax", "/softmax_l", &["r"], "sl", vec![]),
            node("Concat", "/concat_l", &["seq", "sl", "r"], "cl", vec![int("axis", 2)]),
        ];
        let graph = GraphProto {
            name: "other_axes".into(),
            node: nodes,
            input: vec![info("x", &[2, 3, 4, 5]), info("seq", &[2, 3, 6])],
            output: vec![info("cw", &[2, 3, 4, 10]), info("ch", &[2, 3, 8, 5]), info("cl", &[2, 3, 18])],
            ..Default::default()
        };
        opset17(graph)
    }
}

#[test]
fn a_torch_style_model_imports_with_its_module_scopes() {
    let bytes = torch_style::model().write_to_bytes().expect("serializes");
    let imported = cnnc::import::import(&bytes).expect("imports");
    let program = &imported.program;
    // Weights named after the state_dict keep their names; the folded conv gets one from
    // its module scope; the constant shape arithmetic is folded into a flatten.
    for name in ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"] {
        assert!(imported.weights.get(name).is_some(), "{name} in {:?}\n{program}", imported.weights.tensors.keys());
    }
    // The folded conv is named after its module, a leaf module's op after the module,
    // and the ops of a container's forward (the residual add) are left unlabelled.
    assert!(imported.weights.get("layer1.0.conv1.weight").is_some(), "{program}");
    // A Split of channels is a chunk whose parts get names.
    for line in ["maxpool: max_pool(2)", "relu_1: relu", "    add(in)\n", "t1, t2 = chunk(2)", "concat(t2, t1)"] {
        assert!(program.contains(line), "`{line}` in\n{program}");
    }
    assert!(program.contains("flatten"), "{program}");
    assert!(program.contains("layer1: seq {"), "{program}");
    assert!(program.contains("output logits"), "{program}");
    let graph = compile_source(program, &BuildOptions::default()).expect("compiles");
    assert_eq!(graph.outputs[0].name, "logits");
}
