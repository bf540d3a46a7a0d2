//! Seeing inside a network (`src/explain/`): the occlusion saliency of the trained
//! digits model lies on the strokes of the held-out digits, the activation dump's
//! statistics equal values computed here from the interpreter's traced run, its
//! pictures have the sizes their layout gives, and bad input to `explain` and
//! `run --dump-activations` exits 1 with a message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnnc::exec::Target;
use cnnc::explain::activations::{Picture, dump_activations};
use cnnc::explain::occlusion::{Classes, Fill, Options, Score, occlusion};
use cnnc::explain::rise::{RiseOptions, rise};
use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::ir::Graph;
use cnnc::passes::{self, OptLevel};
use cnnc::tensor::{Tensor, relative_l2};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(repo()).output().unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-explain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The held-out digits, `[360, 1, 8, 8]` with values x/16 in [0, 1].
fn held_out() -> Tensor {
    cnnc::io::read_npy(&read(&repo().join("examples/digits/test_x.npy"))).unwrap()
}

/// The digits model at `batch`, trained weights bound, optimized (-O2).
fn digits(batch: usize) -> Graph {
    let source = read(&repo().join("examples/digits.cnn"));
    let mut graph = compile_bytes(&source, &BuildOptions { batch, input_shape: None }).unwrap();
    let weights = read(&repo().join("examples/digits/digits.safetensors"));
    graph.weights = cnnc::weights::load_safetensors(&weights, &graph, false).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    graph
}

fn item(x: &Tensor, n: usize) -> Tensor {
    let size = x.len() / x.shape[0];
    let mut shape = x.shape.clone();
    shape[0] = 1;
    Tensor::new(shape, x.data[n * size..(n + 1) * size].to_vec()).unwrap()
}

/// On every held-out image, the occlusion map of the predicted class (2x2 windows,
/// stride 1, filled with 0, the class's logit), computed on the CPU backend at batch 50
/// (49 windows and the image), is larger on average over the stroke pixels (value at
/// least 0.5) than over the background (value 0). The same maps from the reference
/// interpreter agree within 1e-4 (relative L2) on the first 20 images.
#[test]
fn occlusion_highlights_the_strokes_of_every_held_out_digit() {
    let x = held_out();
    let n = x.shape[0];
    assert_eq!(x.shape, vec![n, 1, 8, 8]);
    let batch = 50;
    let graph = digits(batch);
    let cpu = cnnc::exec::compile(graph.clone(), Target::Cpu).unwrap();
    let reference = cnnc::exec::compile(graph, Target::Reference).unwrap();
    let options = Options { window: 2, stride: 1, fill: Fill::Zero, score: Score::Output };
    let mut failures = Vec::new();
    let mut margins = Vec::new();
    for k in 0..n {
        let image = item(&x, k);
        let saliency = occlusion(cpu.as_ref(), batch, &image, &Classes::Top(1), &options).unwrap();
        assert_eq!((saliency.windows, saliency.runs), (49, 1));
        let map = &saliency.maps[0];
        let (stroke, background) = stroke_and_background(&image, map);
        margins.push(stroke - background);
        if stroke <= background {
            failures.push(format!("image {k}: stroke {stroke:.3} <= background {background:.3}"));
        }
        if k < 20 {
            let exact = occlusion(reference.as_ref(), batch, &image, &Classes::Top(1), &options).unwrap();
            assert_eq!(exact.classes, saliency.classes, "image {k}: the reference predicts another class");
            let error = relative_l2(map, &exact.maps[0]);
            assert!(error < 1e-4, "image {k}: cpu map differs from the reference's by {error:.2e}");
        }
    }
    let smallest = margins.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = margins.iter().sum::<f64>() / n as f64;
    eprintln!("stroke minus background saliency over {n} images: mean {mean:.3}, smallest {smallest:.3}");
    assert!(failures.is_empty(), "{} of {n} images:\n{}", failures.len(), failures.join("\n"));
}

/// The mean saliency over a digit's stroke pixels (value at least 0.5) and over its
/// background (value 0).
fn stroke_and_background(image: &Tensor, map: &[f32]) -> (f64, f64) {
    let mean_where = |keep: &dyn Fn(f32) -> bool| {
        let values: Vec<f64> =
            image.data.iter().zip(map).filter(|(v, _)| keep(**v)).map(|(_, s)| f64::from(*s)).collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    (mean_where(&|v| v >= 0.5), mean_where(&|v| v == 0.0))
}

/// RISE on the held-out digits (1,000 masks of 4x4 cells, kept with probability 0.5,
/// filled with 0, the predicted class's logit): the map is larger over the strokes than
/// over the background on every image, and the CPU's maps equal the reference
/// interpreter's within 1e-4 on the first 5 images.
#[test]
fn rise_highlights_the_strokes_of_every_held_out_digit() {
    let x = held_out();
    let n = x.shape[0];
    let batch = 125;
    let graph = digits(batch);
    let cpu = cnnc::exec::compile(graph.clone(), Target::Cpu).unwrap();
    let reference = cnnc::exec::compile(graph, Target::Reference).unwrap();
    let options = RiseOptions { masks: 1000, cells: 4, keep: 0.5, fill: Fill::Zero, score: Score::Output, seed: 7 };
    let mut failures = Vec::new();
    let mut margins = Vec::new();
    for k in 0..n {
        let image = item(&x, k);
        let saliency = rise(cpu.as_ref(), batch, &image, &Classes::Top(1), &options).unwrap();
        assert_eq!(saliency.runs, 9);
        let map = &saliency.maps[0];
        let (stroke, background) = stroke_and_background(&image, map);
        margins.push(stroke - background);
        if stroke <= background {
            failures.push(format!("image {k}: stroke {stroke:.3} <= background {background:.3}"));
        }
        if k < 5 {
            let exact = rise(reference.as_ref(), batch, &image, &Classes::Top(1), &options).unwrap();
            let error = relative_l2(map, &exact.maps[0]);
            assert!(error < 1e-4, "image {k}: cpu map differs from the reference's by {error:.2e}");
        }
    }
    let smallest = margins.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = margins.iter().sum::<f64>() / n as f64;
    eprintln!("RISE: stroke minus background saliency over {n} images: mean {mean:.3}, smallest {smallest:.3}");
    assert!(failures.is_empty(), "{} of {n} images:\n{}", failures.len(), failures.join("\n"));
}

/// Statistics computed here, independently of `layer_stats`, from one traced value.
struct Expected {
    min: f64,
    max: f64,
    mean: f64,
    dead: usize,
    nan: usize,
    inf: usize,
}

fn expected_stats(value: &Tensor) -> Expected {
    let finite: Vec<f64> = value.data.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)).collect();
    let (n, c) = (value.shape[0], value.shape[1]);
    let per_channel = value.len() / (n * c);
    let mut live = vec![false; c];
    for (i, v) in value.data.iter().enumerate() {
        if *v != 0.0 {
            live[(i / per_channel) % c] = true;
        }
    }
    Expected {
        min: finite.iter().copied().fold(f64::INFINITY, f64::min),
        max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        mean: finite.iter().sum::<f64>() / finite.len() as f64,
        dead: live.iter().filter(|l| !**l).count(),
        nan: value.data.iter().filter(|v| v.is_nan()).count(),
        inf: value.data.iter().filter(|v| v.is_infinite()).count(),
    }
}

/// The dump of four held-out digits: every file the index lists exists, `stats.json`
/// equals the statistics computed here from `interp::run_traced`'s values, and every
/// picture has the size of its layout (8x8 maps as 32-pixel tiles with 1-pixel gaps,
/// vectors as rows of 32 cells of 8 pixels).
#[test]
fn activation_dump_of_digits_matches_the_traced_values() {
    let x = held_out();
    let four = Tensor::new(vec![4, 1, 8, 8], x.data[..4 * 64].to_vec()).unwrap();
    let graph = digits(4);
    let dir = scratch("dump");
    let dump = dump_activations(&graph, std::slice::from_ref(&four), &dir, 64).unwrap();

    let mut traced: HashMap<String, Tensor> = HashMap::new();
    cnnc::interp::run_traced(&graph, &graph.weights, std::slice::from_ref(&four), &mut |id, value| {
        traced.insert(graph.node(id).name.clone(), value.clone());
    })
    .unwrap();
    let names: Vec<&str> = dump.index.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["image", "conv1", "conv2", "max_pool_0", "flatten_0", "fc1", "fc2"]);

    // stats.json, read back from the file.
    let stats: serde_json::Value = serde_json::from_slice(&read(&dir.join("stats.json"))).unwrap();
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), names.len());
    let mut dead_somewhere = 0;
    for entry in stats {
        let name = entry["name"].as_str().unwrap();
        let want = expected_stats(&traced[name]);
        let close = |key: &str, value: f64| {
            let got = entry[key].as_f64().unwrap_or_else(|| panic!("{name}: no {key}"));
            assert!((got - value).abs() <= 1e-9 * value.abs().max(1.0), "{name}: {key} {got} != {value}");
        };
        close("min", want.min);
        close("max", want.max);
        close("mean", want.mean);
        assert_eq!(entry["dead_channels"].as_u64(), Some(want.dead as u64), "{name}");
        assert_eq!(entry["nan_count"].as_u64(), Some(want.nan as u64), "{name}");
        assert_eq!(entry["inf_count"].as_u64(), Some(want.inf as u64), "{name}");
        dead_somewhere += want.dead;
    }
    eprintln!("dead channels over the dump's layers: {dead_somewhere}");

    // Every listed file exists and decodes to the size its layout gives.
    let size = |file: &str| image::image_dimensions(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected_sizes = [
        ("image", (34, 34)),        // 1 tile of 8 values x 4 pixels, 1-pixel gaps
        ("conv1", (133, 133)),      // 16 tiles: 4 x 4
        ("conv2", (199, 199)),      // 32 tiles: 6 x 6
        ("max_pool_0", (199, 199)), // 32 tiles of 4x4 values x 8 pixels: 6 x 6
        ("flatten_0", (256, 128)),  // 512 values: 16 rows of 32 cells
        ("fc1", (256, 16)),
        ("fc2", (80, 8)),
    ];
    for (layer, (name, dimensions)) in dump.index.layers.iter().zip(expected_sizes) {
        assert_eq!(layer.name, name);
        let file = match &layer.picture {
            Picture::Channels { file, channels_shown, channels_total } => {
                assert_eq!(channels_shown, &(0..*channels_total).collect::<Vec<_>>(), "{name}: all channels fit");
                file
            }
            Picture::Vector { file, values_shown, values_total } => {
                assert_eq!(values_shown, values_total);
                file
            }
            Picture::None => panic!("{name}: no picture"),
        };
        assert_eq!(size(file), dimensions, "{name}: {file}");
    }
    // conv1 reads the 1-channel input: its 16 3x3 filters, 33-pixel tiles (11 per weight).
    assert_eq!(dump.index.layers[1].filters.as_deref(), Some("001-conv1.filters.png"));
    assert_eq!(size("001-conv1.filters.png"), (137, 137));
    // The first item's brightest input pixel is the colour map's last colour.
    let input = image::open(dir.join("000-image.png")).unwrap().to_rgb8();
    let first = &four.data[..64];
    let brightest = (0..64).max_by(|&a, &b| first[a].total_cmp(&first[b]).then(b.cmp(&a))).unwrap();
    let (px, py) = (1 + (brightest % 8) * 4, 1 + (brightest / 8) * 4);
    assert_eq!(input.get_pixel(px as u32, py as u32).0, cnnc::explain::colormap::VIRIDIS.color(1.0));
    for file in &dump.files {
        assert!(file.is_file(), "{} missing", file.display());
    }
    let index: serde_json::Value = serde_json::from_slice(&read(&dir.join("index.json"))).unwrap();
    assert_eq!(index["layers"].as_array().unwrap().len(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A layer with more channels than the cap shows the strongest 64 of them in channel
/// order; a convolution over 3 input channels gets its filters as RGB tiles.
#[test]
fn wide_layers_are_capped_and_rgb_filters_drawn() {
    let source = b"network wide {\n input image: [3, 6, 6]\n conv1: conv(100, 3, pad=1)\n}\n";
    let mut graph = compile_bytes(source, &BuildOptions { batch: 1, input_shape: None }).unwrap();
    graph.weights = cnnc::weights::random_weights(&graph, 3);
    let input = cnnc::weights::random_normal(&[1, 3, 6, 6], 5);
    let dir = scratch("wide");
    let dump = dump_activations(&graph, std::slice::from_ref(&input), &dir, 64).unwrap();
    let conv = dump.index.layers.iter().find(|l| l.name == "conv1").unwrap();
    let value = cnnc::interp::run(&graph, &graph.weights, std::slice::from_ref(&input)).unwrap().remove(0);
    let Picture::Channels { channels_shown, channels_total, file } = &conv.picture else { panic!("no grid") };
    assert_eq!((*channels_total, channels_shown.len()), (100, 64));
    assert!(channels_shown.windows(2).all(|w| w[0] < w[1]), "not in channel order");
    // No channel left out is stronger than one shown.
    let energy = |c: usize| value.data[c * 36..(c + 1) * 36].iter().map(|v| f64::from(v.abs())).sum::<f64>();
    let weakest_shown = channels_shown.iter().map(|&c| energy(c)).fold(f64::INFINITY, f64::min);
    let strongest_left = (0..100).filter(|c| !channels_shown.contains(c)).map(energy).fold(0.0, f64::max);
    assert!(weakest_shown >= strongest_left, "{weakest_shown} < {strongest_left}");
    // 64 tiles of 6x6 values x 6 pixels in an 8 x 8 grid.
    assert_eq!(image::image_dimensions(dir.join(file)).unwrap(), (8 * 36 + 9, 8 * 36 + 9));
    // 100 RGB filters of 3x3 weights x 11 pixels in a 10 x 10 grid.
    let filters = conv.filters.as_ref().expect("filters of a 3-channel input's convolution");
    assert_eq!(image::image_dimensions(dir.join(filters)).unwrap(), (10 * 33 + 11, 10 * 33 + 11));
    let _ = std::fs::remove_dir_all(&dir);
}

const DIGITS: [&str; 4] = ["examples/digits.cnn", "--weights", "examples/digits/digits.safetensors", "--input"];

fn explain(extra: &[&str]) -> Output {
    let mut args = vec!["explain"];
    args.extend_from_slice(&DIGITS);
    args.extend_from_slice(&["examples/digits/3.png", "--mean", "0", "--std", "1"]);
    args.extend_from_slice(extra);
    cnnc(&args)
}

fn assert_user_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in:\n{stderr}");
}

#[test]
fn explain_writes_the_picture_and_the_raw_map() {
    let dir = scratch("cli");
    let picture = dir.join("saliency.png");
    let output = explain(&["--window", "2", "--stride", "1", "-o", picture.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("class 3:"), "{stdout}");
    // 8x8 enlarged 32 times; the raw map is [8, 8] float32.
    assert_eq!(image::image_dimensions(&picture).unwrap(), (256, 256));
    let raw = cnnc::io::read_npy(&read(&dir.join("saliency.npy"))).unwrap();
    assert_eq!(raw.shape, vec![8, 8]);
    assert!(raw.data.iter().any(|&v| v > 0.0));
    // --top 2 writes one pair of files per class.
    let output = explain(&["--top", "2", "-o", picture.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.join("saliency.class3.png").is_file() && dir.join("saliency.class3.npy").is_file());
    // RISE writes the same pair.
    let rise_picture = dir.join("rise.png");
    let output = explain(&["--method", "rise", "--masks", "200", "-o", rise_picture.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RISE: 200 masks"));
    assert_eq!(cnnc::io::read_npy(&read(&dir.join("rise.npy"))).unwrap().shape, vec![8, 8]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_exits_1_with_a_message() {
    let dir = scratch("bad");
    let picture = dir.join("s.png");
    let picture = picture.to_str().unwrap();
    assert_user_error(&explain(&["--class", "10", "-o", picture]), "--class 10: the network has 10 classes");
    assert_user_error(&explain(&["--top", "11", "-o", picture]), "only 10 classes");
    assert_user_error(&explain(&["--window", "9", "-o", picture]), "--window 9 is larger than the 8x8 input");
    assert_user_error(&explain(&["-o", "/no/such/dir/s.png"]), "the directory /no/such/dir does not exist");
    // A directory under a plain file cannot exist.
    let under_file = format!("{}/s.png", repo().join("Cargo.toml").display());
    assert_user_error(&explain(&["-o", &under_file]), "cannot write");
    assert_user_error(&explain(&["-o", dir.to_str().unwrap()]), "is a directory");
    assert_user_error(&explain(&["--stride", "0", "-o", picture]), "--stride");
    assert_user_error(&explain(&["--method", "rise", "--cells", "9", "-o", picture]), "--cells 9 is more than the 8x8");
    // run --dump-activations into a path under a plain file.
    let mut args = vec!["run"];
    args.extend_from_slice(&DIGITS);
    args.extend_from_slice(&["examples/digits/3.png", "--dump-activations", &under_file]);
    assert_user_error(&cnnc(&args), "--dump-activations: cannot create");
    assert!(!Path::new(picture).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_dump_activations_writes_the_index() {
    let dir = scratch("run");
    let target = dir.join("acts");
    let mut args = vec!["run"];
    args.extend_from_slice(&DIGITS);
    args.extend_from_slice(&["examples/digits/7.png", "--mean", "0", "--std", "1", "--top", "1"]);
    args.extend_from_slice(&["--dump-activations", target.to_str().unwrap()]);
    let output = cnnc(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("class    7"));
    let index: serde_json::Value = serde_json::from_slice(&read(&target.join("index.json"))).unwrap();
    for layer in index["layers"].as_array().unwrap() {
        if let Some(file) = layer["picture"]["file"].as_str() {
            assert!(target.join(file).is_file(), "{file}");
        }
    }
    assert!(target.join("stats.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cnnc report` on the digits model with an image: one page, no external resource,
/// one graph box and one table row per node of the -O2 graph, every picture a PNG in a
/// `data:` URI (the 7 layers, conv1's filters and the saliency map).
#[test]
fn report_is_one_self_contained_page() {
    let dir = scratch("report");
    let page = dir.join("report.html");
    let mut args = vec!["report"];
    args.extend_from_slice(&DIGITS);
    args.extend_from_slice(&["examples/digits/3.png", "--mean", "0", "--std", "1", "--runs", "2"]);
    args.extend_from_slice(&["-o", page.to_str().unwrap()]);
    let output = cnnc(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let html = String::from_utf8(read(&page)).unwrap();
    let nodes = html.matches("<g class=\"node\"").count();
    let rows = html.split("<tbody>").nth(1).unwrap().matches("<tr>").count();
    assert_eq!((nodes, rows), (7, 7));
    for id in ["id=\"graph\"", "id=\"layers\"", "id=\"activations\"", "id=\"saliency\""] {
        assert!(html.contains(id), "no {id}");
    }
    let pictures: Vec<&str> = html.split("src=\"data:image/png;base64,").skip(1).collect();
    assert_eq!(pictures.len(), 9);
    // Every picture starts with PNG's signature, 89 50 4E 47 0D 0A 1A 0A in base64.
    assert!(pictures.iter().all(|p| p.starts_with("iVBORw0KGgo")));
    // Nothing is fetched: no other URL in a src or href.
    assert_eq!(html.matches("http").count(), html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count());
    assert!(!html.contains("href=") && !html.contains("<script"), "a link to fetch or a script");
    // The conv layers ran on the cpu target: their rows name an algorithm and a time.
    let conv_rows: Vec<&str> = html.split("<tr>").filter(|r| r.contains(">conv+relu<")).collect();
    assert_eq!(conv_rows.len(), 2);
    for row in conv_rows {
        let cells: Vec<&str> =
            row.split("<td").map(|c| c.split('>').nth(1).unwrap_or("").trim_end_matches("</td")).collect();
        assert!(!cells[8].is_empty() && cells[9].parse::<f64>().is_ok(), "no algorithm or time in {row}");
    }
    // Bad input: the output directory does not exist.
    assert_user_error(
        &cnnc(&["report", "examples/digits.cnn", "-o", "/no/such/dir/r.html"]),
        "the directory /no/such/dir does not exist",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The digits report in a real browser: `tools/report_screenshot.sh` opens it in
/// headless Chromium, which must lay out every graph box and table row and decode every
/// picture, and writes a screenshot. Runs where `chromium` is installed (Debian's
/// package); elsewhere it says so and passes, unless CNNC_REQUIRE_CHROMIUM=1.
#[test]
fn report_renders_in_headless_chromium() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join("chromium").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(std::env::var_os("CNNC_REQUIRE_CHROMIUM").is_none(), "CNNC_REQUIRE_CHROMIUM is set but no chromium");
        eprintln!("skipped: no chromium on PATH (apt-get install chromium)");
        return;
    }
    let dir = scratch("chromium");
    let page = dir.join("report.html");
    let mut args = vec!["report"];
    args.extend_from_slice(&DIGITS);
    args.extend_from_slice(&["examples/digits/3.png", "--mean", "0", "--std", "1", "--runs", "1"]);
    args.extend_from_slice(&["-o", page.to_str().unwrap()]);
    let output = cnnc(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shot = dir.join("report.png");
    let output =
        Command::new("bash").arg(repo().join("tools/report_screenshot.sh")).args([&page, &shot]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#""nodes":7,"rows":7,"activations":8,"saliency":1,"images":9,"decoded":9"#), "{stdout}");
    let (width, height) = image::image_dimensions(&shot).unwrap();
    assert_eq!((width, height), (1400, 1800));
    let _ = std::fs::remove_dir_all(&dir);
}

/// ResNet-18 (random weights, 64x64 input so the interpreter is quick): every node of
/// the -O2 graph is drawn, the 512-channel layers show 64 channels, conv1's 64 RGB
/// filters of 7x7 are drawn in an 8 x 8 grid of 35-pixel tiles, and the statistics
/// equal those computed here from the traced values.
#[test]
fn resnet18_dump_caps_wide_layers_and_draws_rgb_filters() {
    let source = read(&repo().join("examples/resnet18.cnn"));
    let options = BuildOptions { batch: 1, input_shape: Some(vec![3, 64, 64]) };
    let mut graph = compile_bytes(&source, &options).unwrap();
    graph.weights = cnnc::weights::random_weights(&graph, 1);
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let input = cnnc::weights::random_normal(&[1, 3, 64, 64], 2);
    let dir = scratch("resnet18");
    let dump = dump_activations(&graph, std::slice::from_ref(&input), &dir, 64).unwrap();
    let mut traced: HashMap<String, Tensor> = HashMap::new();
    cnnc::interp::run_traced(&graph, &graph.weights, std::slice::from_ref(&input), &mut |id, value| {
        traced.insert(graph.node(id).name.clone(), value.clone());
    })
    .unwrap();
    assert_eq!(dump.index.layers.len(), traced.len());
    for (layer, stats) in dump.index.layers.iter().zip(&dump.stats) {
        let want = expected_stats(&traced[&layer.name]);
        assert_eq!((stats.dead_channels, stats.nan_count, stats.inf_count), (want.dead, want.nan, want.inf));
        assert!((stats.mean.unwrap() - want.mean).abs() <= 1e-9 * want.mean.abs().max(1.0), "{}", layer.name);
        assert_eq!((stats.min, stats.max), (Some(want.min), Some(want.max)), "{}", layer.name);
        if let Picture::Channels { channels_shown, channels_total, .. } = &layer.picture {
            assert_eq!(channels_shown.len(), (*channels_total).min(64), "{}", layer.name);
        }
    }
    let wide = dump.index.layers.iter().filter(|l| l.shape.get(1) == Some(&512) && l.shape.len() == 4).count();
    assert!(wide >= 4, "only {wide} layers of 512 channels");
    let conv1 = dump.index.layers.iter().find(|l| l.name == "conv1").unwrap();
    let filters = conv1.filters.as_ref().expect("conv1 reads the RGB input");
    assert_eq!(image::image_dimensions(dir.join(filters)).unwrap(), (8 * 35 + 9, 8 * 35 + 9));
    let _ = std::fs::remove_dir_all(&dir);
}
