//! `cnnc report`: a self-contained HTML page about a network (graph, per-layer costs and
//! the CPU backend's algorithms and times; with an input, activations and saliency).

use std::path::PathBuf;

use cnnc::explain::report::{Figure, Report, layer_rows, render_html};
use cnnc::passes;

use super::args::{MemoryArgs, ShapeArgs, ThreadArgs, WeightArgs, WeightSource};
use super::common::{UserError, prepare};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    /// Weights as safetensors; without, He-normal random weights time the layers (and
    /// the activations show what random weights make of the input).
    #[arg(long, value_name = "FILE.safetensors")]
    weights: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Accept tensors in the weights file that the network does not read.
    #[arg(long)]
    allow_unused_weights: bool,
    #[command(flatten)]
    memory: MemoryArgs,
    /// An image or .npy to run: adds the activation pictures and the occlusion saliency
    /// of the top class (when the output is class scores).
    #[arg(long, value_name = "FILE")]
    input: Option<String>,
    /// Per-channel mean for an image input (as for `run`).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "M[,M,M]")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation for an image input (as for `run`).
    #[arg(long, value_delimiter = ',', value_name = "S[,S,S]")]
    std: Option<Vec<f32>>,
    /// Timed runs per kernel (the table shows medians).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    #[command(flatten)]
    threads: ThreadArgs,
    /// The page to write.
    #[arg(short = 'o', long = "output", value_name = "FILE.html")]
    output: PathBuf,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let fail = |e: String| UserError(format!("error: {e}"));
    let net = args.net.as_path();
    super::explain::check_writable(&args.output)?;
    let weights = WeightArgs {
        source: WeightSource { weights: args.weights.clone(), random_weights: args.weights.is_none() },
        memory: args.memory.clone(),
        seed: args.seed,
        allow_unused_weights: args.allow_unused_weights,
        verbose: false,
    };
    let shape = ShapeArgs { batch: 1, input_shape: None, fully_conv: false, average: false };
    let mut graph = prepare(net, &shape, 1, Some(&weights))?;
    let inputs = match &args.input {
        Some(input) => {
            let inputs = super::run::read_inputs(
                &graph,
                std::slice::from_ref(input),
                args.mean.as_deref(),
                args.std.as_deref(),
            )?;
            if inputs[0].shape[0] != 1 {
                return Err(UserError(format!(
                    "error: {input}: report takes one image, the file holds {}",
                    inputs[0].shape[0]
                )));
            }
            Some(inputs)
        }
        None => None,
    };
    // The cpu target's pipeline is the generic one, which the interpreter's dump runs too.
    passes::optimize_for(&mut graph, passes::OptLevel::O2, cnnc::exec::Target::Cpu.capabilities())?;
    let mut rows = layer_rows(&graph);

    // Per-kernel medians, on the input or on random values of the input's shape.
    let timing_inputs: Vec<cnnc::tensor::Tensor> = match &inputs {
        Some(inputs) => inputs.clone(),
        None => graph
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &id)| cnnc::weights::random_normal(&graph.node(id).shape, 1000 + k as u64))
            .collect(),
    };
    let options = args.threads.options();
    let codegen = cnnc::backend::clif::CodegenOptions { profile: true, cpu: options.cpu, ..Default::default() };
    let mut model = cnnc::backend::clif::compile_jit_with(&graph, &codegen).map_err(fail)?;
    model.set_threads(cnnc::exec::threads_for(&graph, &options));
    model.run(&timing_inputs).map_err(fail)?;
    let kernels = model.kernels().to_vec();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
    for _ in 0..args.runs {
        for (index, (_, seconds)) in model.profile(&timing_inputs).map_err(fail)?.into_iter().enumerate() {
            if let Some(s) = samples.get_mut(index) {
                s.push(seconds * 1e3);
            }
        }
    }
    let threads = model.threads();
    drop(model);
    for (kernel, times) in kernels.iter().zip(&mut samples) {
        // Kernels are named `layer (op)`.
        let layer = kernel.name.rsplit_once(" (").map_or(kernel.name.as_str(), |(name, _)| name);
        if let Some(row) = rows.iter_mut().find(|r| r.name == layer && r.algorithm.is_none()) {
            times.sort_by(f64::total_cmp);
            row.algorithm = Some(kernel.algorithm.clone());
            row.time_ms = times.get(times.len() / 2).copied();
        }
    }

    let mut report = Report {
        title: format!("{} ({})", graph.name, net.display()),
        notes: vec![
            match &args.weights {
                Some(path) => format!("Weights: {}.", path.display()),
                None => format!("Weights: He-normal random (seed {}); no --weights given.", args.seed),
            },
            format!(
                "The graph after the cpu target's -O2 pipeline (batch norm folded, activations and residual adds fused). \
                 Times: medians of {} profiled runs on {threads} thread(s) of this machine.",
                args.runs
            ),
        ],
        rows,
        ..Default::default()
    };

    if let Some(inputs) = &inputs {
        let mut pictures: Vec<(String, Vec<u8>)> = Vec::new();
        let (index, stats) = cnnc::explain::activations::render_activations(
            &graph,
            inputs,
            cnnc::explain::activations::DEFAULT_MAX_TILES,
            &mut |file, bytes| {
                pictures.push((file.to_string(), bytes.to_vec()));
                Ok(())
            },
        )
        .map_err(fail)?;
        let mut png_of: std::collections::HashMap<String, Vec<u8>> = pictures.into_iter().collect();
        for (layer, stat) in index.layers.iter().zip(&stats) {
            let shape: Vec<String> = layer.shape.iter().map(usize::to_string).collect();
            let range = match (stat.min, stat.max, stat.mean) {
                (Some(lo), Some(hi), Some(mean)) => format!("min {lo:.3}, max {hi:.3}, mean {mean:.3}"),
                _ => "no finite values".into(),
            };
            let caption = format!(
                "{} [{}]: {range}, {} of {} channels dead, {} NaN, {} inf",
                layer.name,
                shape.join("x"),
                stat.dead_channels,
                stat.channels,
                stat.nan_count,
                stat.inf_count
            );
            if let Some(file) = &layer.filters
                && let Some(png) = png_of.remove(file)
            {
                report.activations.push(Figure { caption: format!("{}: filters", layer.name), png });
            }
            let file = match &layer.picture {
                cnnc::explain::activations::Picture::Channels { file, .. }
                | cnnc::explain::activations::Picture::Vector { file, .. } => file,
                cnnc::explain::activations::Picture::None => continue,
            };
            if let Some(png) = png_of.remove(file) {
                report.activations.push(Figure { caption, png });
            }
        }
        saliency(net, &shape, &weights, &graph, &inputs[0], args, &mut report)?;
    }
    let html = render_html(&report, &graph);
    std::fs::write(&args.output, html)
        .map_err(|e| UserError(format!("error: cannot write {}: {e}", args.output.display())))?;
    println!(
        "wrote {} ({} layers, {} activation pictures, {} saliency maps)",
        args.output.display(),
        report.rows.len(),
        report.activations.len(),
        report.saliency.len()
    );
    Ok(())
}

/// The occlusion saliency of the top class, with `explain`'s defaults, when the network
/// has one input that is an image and one output of class scores; otherwise a note.
fn saliency(
    net: &std::path::Path,
    shape: &ShapeArgs,
    weights: &WeightArgs,
    graph: &cnnc::ir::Graph,
    image: &cnnc::tensor::Tensor,
    args: &Args,
    report: &mut Report,
) -> Result<(), UserError> {
    use cnnc::explain::occlusion::{self, Classes, Fill, Options, Score};
    let scores = match &graph.outputs[..] {
        [only] => {
            let s = &graph.node(only.node).shape;
            s.len() >= 2 && s[2..].iter().all(|&d| d == 1)
        }
        _ => false,
    };
    let [1, c, h, w] = image.shape[..] else { return Ok(()) };
    if graph.inputs.len() != 1 || !scores {
        report.notes.push("No saliency map: it needs one image input and one output of class scores.".into());
        return Ok(());
    }
    let window = occlusion::default_window(h, w);
    let options = Options { window, stride: (window / 2).max(1), fill: Fill::Zero, score: Score::Output };
    let windows = occlusion::window_positions(h, window, options.stride).len()
        * occlusion::window_positions(w, window, options.stride).len();
    let batch = 16.min(windows + 1);
    let mut batched = prepare(net, &ShapeArgs { batch: batch as u32, ..shape.clone() }, batch, Some(weights))?;
    passes::optimize_for(&mut batched, passes::OptLevel::O2, cnnc::exec::Target::Cpu.capabilities())?;
    let executor = cnnc::exec::compile_with(batched, cnnc::exec::Target::Cpu, &args.threads.options())
        .map_err(|e| UserError(format!("error: {e}")))?;
    let saliency = occlusion::occlusion(executor.as_ref(), batch, image, &Classes::Top(1), &options)
        .map_err(|e| UserError(format!("error: {e}")))?;
    let is_image = args.input.as_deref().is_some_and(|i| !i.to_ascii_lowercase().ends_with(".npy"));
    let (mean, std) = super::explain::normalization(c, args.mean.as_deref(), args.std.as_deref());
    let pixels = occlusion::display_pixels(&image.data, c, h, w, is_image.then_some((mean.as_slice(), std.as_slice())));
    for ((class, base), map) in saliency.classes.iter().zip(&saliency.base_scores).zip(&saliency.maps) {
        let picture = cnnc::explain::png::saliency_overlay(&pixels, h, w, map, &cnnc::explain::colormap::INFERNO);
        let png = cnnc::explain::png::encode_png(&picture).map_err(|e| UserError(format!("error: {e}")))?;
        report.saliency.push(Figure {
            caption: format!(
                "class {class} (output {base:.3}): occlusion, {window}x{window} windows, stride {}, filled with 0; \
                 brighter = larger drop of the class's output",
                options.stride
            ),
            png,
        });
    }
    Ok(())
}
