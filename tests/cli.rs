//! The command line's contract: exit codes (0 ok, 1 user error, 2 usage) and outputs.

use std::path::Path;
use std::process::{Command, Output};

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn cnn_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_example() {
    let examples = cnn_files("examples");
    assert!(examples.len() >= 20, "only {} examples", examples.len());
    for file in examples {
        let out = cnnc(&["check", &file]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn check_rejects_every_broken_program_with_a_location() {
    for file in cnn_files("tests/broken") {
        let out = cnnc(&["check", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(&format!("{file}:")), "{file}: no file:line:col in\n{stderr}");
        assert!(stderr.contains('^'), "{file}: nothing underlined in\n{stderr}");
    }
}

#[test]
fn usage_errors_exit_2_and_input_errors_exit_1() {
    assert_eq!(cnnc(&[]).status.code(), Some(2));
    assert_eq!(cnnc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(cnnc(&["check", "--no-such-flag", "examples/lenet5.cnn"]).status.code(), Some(2));
    assert_eq!(cnnc(&["check", "--help"]).status.code(), Some(0));
    // A flag's value that does not parse is the user's input, as a program is.
    let batch = cnnc(&["summary", "examples/lenet5.cnn", "--batch", "0"]);
    assert_eq!(batch.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&batch.stderr).contains("--batch"));
    let missing = cnnc(&["check", "no/such/file.cnn"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.cnn"));
    assert_eq!(cnnc(&["check", "examples"]).status.code(), Some(1));
    let bad_shape = cnnc(&["summary", "examples/lenet5.cnn", "--input-shape", "3xfoo"]);
    assert_eq!(bad_shape.status.code(), Some(1));
}

#[test]
fn summary_json_and_batch() {
    let out = cnnc(&["summary", "examples/lenet5.cnn", "--batch", "4", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total_params"], 61_706);
    // MACs scale with the batch.
    assert_eq!(json["total_macs"], 4 * 416_520);
    assert_eq!(json["layers"][0]["shape"], serde_json::json!([4, 6, 28, 28]));
}

#[test]
fn summary_with_another_input_shape() {
    let out = cnnc(&["summary", "examples/allcnn_c.cnn", "--input-shape", "3x64x64", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layers"][0]["shape"], serde_json::json!([1, 96, 64, 64]));
    // Too small an input for the network is a located shape error.
    let out = cnnc(&["summary", "examples/allcnn_c.cnn", "--input-shape", "3x8x8"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn graph_writes_dot() {
    let out = cnnc(&["graph", "examples/inception3a.cnn"]);
    assert_eq!(out.status.code(), Some(0));
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.starts_with("digraph \"inception3a\""));
    assert!(dot.contains("inception3a.branch2.2"));
    assert!(dot.contains("->"));
    // Boxes coloured by kind (a conv in blue), the largest layer fully opaque.
    assert!(dot.contains("color=\"#4e79a7\", fillcolor=\"#4e79a7"), "{dot}");
    assert!(dot.contains("ff\", fontcolor=\"#ffffff\""), "{dot}");
}

/// Without Graphviz, `graph -o x.svg` lays the graph out itself and says so.
#[test]
fn graph_writes_svg_without_graphviz() {
    let dir = std::env::temp_dir().join(format!("cnnc-cli-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("inception3a.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["graph", "examples/inception3a.cnn", "-o"])
        .arg(&svg)
        .env("CNNC_DOT", "/nonexistent/dot")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cnnc");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("laid out by cnnc"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    // As many boxes as the DOT form has nodes.
    let dot = String::from_utf8_lossy(&cnnc(&["graph", "examples/inception3a.cnn"]).stdout).into_owned();
    let nodes = dot.lines().filter(|l| l.trim_start().starts_with('n') && l.contains("[label=")).count();
    assert!(nodes > 10);
    assert_eq!(text.matches("<g class=\"node\"").count(), nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ir_is_deterministic() {
    let a = cnnc(&["ir", "examples/resnet18.cnn", "-O0"]);
    let b = cnnc(&["ir", "examples/resnet18.cnn", "-O0"]);
    assert_eq!(a.status.code(), Some(0));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).contains("layer2.0.downsample.1.running_var"));
}

#[test]
fn ir_shows_the_memory_plan_and_concat_elimination() {
    let out = cnnc(&["ir", "examples/squeezenet1_1.cnn"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory plan: arena"), "{text}");
    // Each fire module's two expand convs are computed in their slices of its concat.
    let placed = text.lines().filter(|line| line.contains(" in %")).count();
    assert_eq!(placed, 16, "{text}");
    // -O0 plans nothing.
    let out = cnnc(&["ir", "examples/squeezenet1_1.cnn", "-O0"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("memory plan"));
}

#[test]
fn ir_runs_the_pipeline_of_the_target() {
    let stdout = |args: &[&str]| {
        let output = cnnc(args);
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // The GPU fuses VGG-16's five 2x2 max pools into the convolutions before them.
    let gpu = stdout(&["ir", "examples/vgg16.cnn", "--target", "gpu"]);
    assert_eq!(gpu.matches("-> relu -> max_pool kernel=2x2 stride=2x2 pad=0x0").count(), 5, "{gpu}");
    assert!(!gpu.contains("= max_pool("), "{gpu}");
    let after = stdout(&["ir", "examples/vgg16.cnn", "--target", "gpu", "--after", "fuse_pooling"]);
    let rewritten = gpu.split("memory plan:").next().unwrap_or_default();
    assert_eq!(after, rewritten, "fuse_pooling is the GPU pipeline's last rewrite");
    // The CPU and the reference (the default) get the generic pipeline: no fused pools.
    let cpu = stdout(&["ir", "examples/vgg16.cnn", "--target", "cpu"]);
    assert_eq!(cpu.matches("= max_pool(").count(), 5, "{cpu}");
    assert!(!cpu.contains("-> max_pool"), "{cpu}");
    assert_eq!(stdout(&["ir", "examples/vgg16.cnn"]), cpu);
    let output = cnnc(&["ir", "examples/vgg16.cnn", "--target", "cpu", "--after", "fuse_pooling"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no pass `fuse_pooling` in the -O2 pipeline of target cpu"), "{stderr}");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn run_on_an_npy_input_writes_the_output() {
    let dir = temp_dir("run");
    let input = dir.join("x.npy");
    let x = cnnc::weights::random_normal(&[2, 1, 28, 28], 1);
    std::fs::write(&input, cnnc::io::write_npy(&x)).unwrap();
    let output = dir.join("y.npy");
    let out = cnnc(&[
        "run",
        "examples/lenet5.cnn",
        "--random-weights",
        "--seed",
        "3",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--top",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let y = cnnc::io::read_npy(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(y.shape, vec![2, 10]);
    // LeNet ends in softmax: rows sum to 1.
    for row in y.data.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("item 1:") && stdout.contains("1. class"), "{stdout}");
    // -O0 and -O2 agree through the command line too.
    let output0 = dir.join("y0.npy");
    let out = cnnc(&[
        "run",
        "examples/lenet5.cnn",
        "--random-weights",
        "--seed",
        "3",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output0.to_str().unwrap(),
        "-O0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let y0 = cnnc::io::read_npy(&std::fs::read(&output0).unwrap()).unwrap();
    assert!(cnnc::tensor::relative_l2(&y.data, &y0.data) <= 1e-5);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_inputs_and_weights_exit_1_with_a_message() {
    let dir = temp_dir("bad");
    let wrong_shape = dir.join("wrong.npy");
    std::fs::write(&wrong_shape, cnnc::io::write_npy(&cnnc::weights::random_normal(&[3, 28, 28], 1))).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let truncated = dir.join("truncated.safetensors");
    let graph =
        cnnc::front::compile_bytes(&std::fs::read("examples/lenet5.cnn").unwrap(), &Default::default()).unwrap();
    let good = cnnc::weights::save_safetensors(&cnnc::weights::random_weights(&graph, 1));
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let other = dir.join("other.safetensors");
    let resnet =
        cnnc::front::compile_bytes(&std::fs::read("examples/allcnn_c.cnn").unwrap(), &Default::default()).unwrap();
    std::fs::write(&other, cnnc::weights::save_safetensors(&cnnc::weights::random_weights(&resnet, 1))).unwrap();
    let input = dir.join("x.npy");
    std::fs::write(&input, cnnc::io::write_npy(&cnnc::weights::random_normal(&[1, 28, 28], 1))).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--random-weights", "--input", wrong_shape.to_str().unwrap()], "[3, 28, 28]"),
        (vec!["--weights", garbage.to_str().unwrap(), "--input", input.to_str().unwrap()], "garbage.safetensors"),
        (vec!["--weights", truncated.to_str().unwrap(), "--input", input.to_str().unwrap()], "truncated"),
        (
            vec!["--weights", other.to_str().unwrap(), "--input", input.to_str().unwrap()],
            "fc1: weight [120, 400], bias [120]",
        ),
        (vec!["--random-weights", "--input", "no/such.npy"], "no/such.npy"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["run", "examples/lenet5.cnn"];
        full.extend(args.iter().copied());
        let out = cnnc(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected `{expected}` in\n{stderr}");
    }
    // An image for an input that is not one ([C, L] here): its shape, and what to give.
    let rank3 = dir.join("rank3.cnn");
    std::fs::write(&rank3, "network r {\n    input x: [4, 10]\n    relu\n}\n").unwrap();
    let out = cnnc(&["run", rank3.to_str().unwrap(), "--random-weights", "--input", "examples/digits/3.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("per item, not an image ([C, H, W]): give it as a .npy file"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn build_emits_onnx_ir_and_dot() {
    let dir = temp_dir("build");
    let out = cnnc(&[
        "build",
        "examples/lenet5.cnn",
        "--random-weights",
        "--emit",
        "onnx,ir,dot",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["lenet5.onnx", "lenet5.ir", "lenet5.dot"] {
        assert!(dir.join(file).metadata().unwrap().len() > 0, "{file}");
    }
    // The default for --target cpu: a relocatable object and its C header.
    let out = cnnc(&["build", "examples/lenet5.cnn", "--random-weights", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let object = std::fs::read(dir.join("lenet5.o")).unwrap();
    assert_eq!(&object[..4], b"\x7fELF");
    let header = std::fs::read_to_string(dir.join("lenet5.h")).unwrap();
    assert!(header.contains("int lenet5_infer(const float *in, float *out, void *arena);"), "{header}");
    // An aarch64 object, checked not run.
    let out = cnnc(&[
        "build",
        "examples/lenet5.cnn",
        "--random-weights",
        "--target-triple",
        "aarch64-unknown-linux-gnu",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let object = std::fs::read(dir.join("lenet5.o")).unwrap();
    // e_machine 183 = EM_AARCH64.
    assert_eq!(u16::from_le_bytes([object[18], object[19]]), 183);
    // The GPU artifacts: modules, plan and weights blob (no adapter needed to write them).
    let out =
        cnnc(&["build", "examples/lenet5.cnn", "--random-weights", "--emit", "wgsl,plan", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("lenet5.plan.json").exists() && dir.join("lenet5.weights").exists());
    assert!(dir.join("lenet5.wgsl").join("kernel_000.wgsl").exists());
    // What is not built yet says so.
    let out =
        cnnc(&["build", "examples/lenet5.cnn", "--random-weights", "--emit", "rust", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fully_conv_and_optimized_summaries() {
    let out =
        cnnc(&["summary", "examples/vgg16.cnn", "--fully-conv", "--input-shape", "3x384x384", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.last().unwrap()["shape"], serde_json::json!([1, 1000, 6, 6]));
    let out = cnnc(&[
        "summary",
        "examples/vgg16.cnn",
        "--fully-conv",
        "--average",
        "--input-shape",
        "3x384x384",
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().last().unwrap()["shape"], serde_json::json!([1, 1000]));
    let out = cnnc(&["summary", "examples/resnet18.cnn", "--optimized", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let optimized = &json["optimized"];
    assert!(optimized["arena_bytes"].as_u64().unwrap() < optimized["intermediate_bytes"].as_u64().unwrap());
    assert!(optimized["nodes_after"].as_u64().unwrap() < optimized["nodes_before"].as_u64().unwrap());
}

#[test]
fn bench_reports_median_and_gflops() {
    let out = cnnc(&["bench", "examples/lenet5.cnn", "--runs", "5", "--warmup", "1", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["macs"], 416_520);
    assert!(json["median_ms"].as_f64().unwrap() >= json["min_ms"].as_f64().unwrap());
    assert!(json["gflops"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_profile_reports_each_kernels_multiply_adds() {
    let args = ["bench", "examples/lenet5.cnn", "--runs", "3", "--warmup", "1", "--profile", "--format", "json"];
    let out = cnnc(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let kernels: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let macs = |name: &str| kernels.iter().find(|k| k["kernel"] == name).map(|k| k["macs"].as_u64().unwrap());
    // conv1: 6 channels of 28x28 outputs, each over 1x5x5 inputs.
    assert_eq!(macs("conv1 (conv)"), Some(6 * 28 * 28 * 25));
    assert_eq!(macs("max_pool_0 (max_pool)"), Some(0));
    // bench/layers.py pairs cnnc's kernels with ORT's nodes by these counts.
    assert_eq!(kernels.iter().map(|k| k["macs"].as_u64().unwrap()).sum::<u64>(), 416_520);
}

#[test]
fn compare_runs_every_target_layer_by_layer() {
    let out = cnnc(&[
        "run",
        "examples/lenet5.cnn",
        "--random-weights",
        "--input",
        "examples/digits/3.png",
        "--input-shape",
        "1x28x28",
        "--compare",
        "cpu,reference",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("conv1") && stdout.contains("cpu: max error") && stdout.contains("agrees"), "{stdout}");
}

#[test]
fn help_names_the_language_reference_and_is_current() {
    let help = String::from_utf8_lossy(&cnnc(&["--help"]).stdout).to_string();
    assert!(help.contains("docs/language.md"), "{help}");
    let build = String::from_utf8_lossy(&cnnc(&["build", "--help"]).stdout).to_string();
    assert!(!build.contains("today ONNX"), "{build}");
    assert!(build.contains("a native object and C header") && build.contains("--batch"), "{build}");
    let run = String::from_utf8_lossy(&cnnc(&["run", "--help"]).stdout).to_string();
    for expected in ["resized", "(x - mean) / std", "NAME=FILE", "--verbose"] {
        assert!(run.contains(expected), "run --help lacks {expected}:\n{run}");
    }
}

/// A network with two outputs, written to `dir`.
fn two_output_network(dir: &Path) -> std::path::PathBuf {
    let net = dir.join("two.cnn");
    std::fs::write(&net, "network two {\n input x: [1, 4, 4]\n a = conv(2, 1)\n b = a |> relu\n output a, b\n}\n")
        .unwrap();
    net
}

#[test]
fn output_of_several_outputs_is_a_directory_or_name_equals_file() {
    let dir = temp_dir("outputs");
    let net = two_output_network(&dir);
    let input = dir.join("x.npy");
    std::fs::write(&input, cnnc::io::write_npy(&cnnc::weights::random_normal(&[1, 4, 4], 1))).unwrap();
    let run = |outputs: &[&str]| {
        let mut args = vec!["run", net.to_str().unwrap(), "--random-weights", "--input", input.to_str().unwrap()];
        for o in outputs {
            args.extend(["--output", o]);
        }
        cnnc(&args)
    };
    // A file name for two outputs is an error, and nothing is created under that name.
    let file_like = dir.join("y.npy");
    let out = run(&[file_like.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has 2 outputs (`a`, `b`)") && stderr.contains("NAME=FILE"), "{stderr}");
    assert!(!file_like.exists());
    // A directory gets one NAME.npy each.
    let out_dir = dir.join("results");
    assert_eq!(run(&[out_dir.to_str().unwrap()]).status.code(), Some(0));
    let a = cnnc::io::read_npy(&std::fs::read(out_dir.join("a.npy")).unwrap()).unwrap();
    let b = cnnc::io::read_npy(&std::fs::read(out_dir.join("b.npy")).unwrap()).unwrap();
    assert_eq!(a.shape, vec![1, 2, 4, 4]);
    assert!(a.data.iter().zip(&b.data).all(|(a, b)| *b == a.max(0.0)));
    // NAME=FILE for the outputs named.
    let (fa, fb) = (dir.join("first.npy"), dir.join("second.npy"));
    let spec_a = format!("a={}", fa.display());
    let spec_b = format!("b={}", fb.display());
    assert_eq!(run(&[&spec_a, &spec_b]).status.code(), Some(0));
    assert!(fa.exists() && fb.exists());
    let out = run(&[&spec_a, "c=z.npy"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&[&spec_a, &spec_a]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("output `a` twice"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_resized_or_converted_image_gets_a_note_and_run_shows_its_times() {
    let dir = temp_dir("image");
    let photo = dir.join("photo.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128])).save(&photo).unwrap();
    let out = cnnc(&["run", "examples/lenet5.cnn", "--random-weights", "--input", photo.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: ")
            && stderr.contains("resized from 64x48 to 28x28")
            && stderr.contains("RGB converted to grayscale"),
        "{stderr}"
    );
    // An image that fits the input as it is gets no note.
    let out = cnnc(&[
        "run",
        "examples/digits.cnn",
        "--weights",
        "examples/digits/digits.safetensors",
        "--input",
        "examples/digits/3.png",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("note:"), "{stderr}");
    // The compile time and a run time with a precision that shows it.
    assert!(stderr.contains("compiled for target cpu in ") && stderr.contains(", ran in "), "{stderr}");
    assert!(!stderr.contains(" 0.0 ms") && !stderr.contains(" 0 us"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_torch_save_file_and_mismatched_weights_say_what_to_do() {
    let dir = temp_dir("torch");
    let x = dir.join("x.npy");
    std::fs::write(&x, cnnc::io::write_npy(&cnnc::weights::random_normal(&[1, 28, 28], 1))).unwrap();
    let pt = dir.join("model.pt");
    std::fs::write(&pt, b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl....").unwrap();
    let out = cnnc(&["run", "examples/lenet5.cnn", "--weights", pt.to_str().unwrap(), "--input", x.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("written by `torch.save`"), "{stderr}");
    assert!(stderr.contains(&format!("torch.load('{}'", pt.display())), "{stderr}");
    assert!(stderr.contains(&dir.join("model.safetensors").display().to_string()), "{stderr}");
    // The network's layers beside another network's: counts, the plain cause, the rows.
    let other = dir.join("vgg.safetensors");
    let vgg = cnnc::front::compile_bytes(&std::fs::read("examples/vgg16.cnn").unwrap(), &Default::default()).unwrap();
    std::fs::write(&other, cnnc::weights::save_safetensors(&cnnc::weights::random_weights(&vgg, 1))).unwrap();
    let args = ["run", "examples/lenet5.cnn", "--weights", other.to_str().unwrap(), "--input", x.to_str().unwrap()];
    let out = cnnc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("10 missing, 32 unexpected"), "{stderr}");
    assert!(stderr.contains("another architecture"), "{stderr}");
    assert!(stderr.contains("more rows (--verbose lists them all)"), "{stderr}");
    let verbose = cnnc(&[&args[..], &["--verbose"]].concat());
    let verbose_err = String::from_utf8_lossy(&verbose.stderr);
    assert!(!verbose_err.contains("more rows") && verbose_err.contains("classifier.6"), "{verbose_err}");
    std::fs::remove_dir_all(dir).ok();
}
