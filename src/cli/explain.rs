//! `cnnc explain`: which pixels of an image a class depends on (occlusion saliency),
//! drawn over the image as a PNG, with the raw map as `.npy` beside it.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use cnnc::explain::occlusion::{self, Classes, Fill, Options, Score};
use cnnc::explain::rise::RiseOptions;
use cnnc::passes;

use super::args::{ShapeArgs, ThreadArgs, WeightArgs};
use super::common::{UserError, prepare};

/// `--method`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub enum Method {
    /// Slide a window over the image, fill it, and measure the score's drop.
    Occlusion,
    /// RISE: many random smooth masks; a pixel's saliency is the mean score of the
    /// copies that keep it, less the mean of all (--masks, --cells, --mask-seed).
    Rise,
}

/// `--fill`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub enum FillArg {
    /// The value 0: the normalization's mean colour (black for inputs only scaled to [0, 1]).
    Zero,
    /// Each channel's mean over the image.
    Mean,
}

/// `--score`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub enum ScoreArg {
    /// The network's output for the class (a logit, or a probability after a softmax).
    Output,
    /// The softmax of the outputs: the class's probability, for networks ending in logits.
    Softmax,
}

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    /// The image (PNG, JPEG) or a .npy [1, C, H, W] / [C, H, W] to explain.
    #[arg(long, value_name = "FILE")]
    input: String,
    /// The class to explain (default: the network's top class for the image).
    #[arg(long, value_name = "K", conflicts_with = "top")]
    class: Option<usize>,
    /// Explain the K best classes; with K > 1 each gets its own files, NAME.classN.png.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
    top: Option<u32>,
    /// How the saliency is computed.
    #[arg(long, value_enum, default_value = "occlusion")]
    method: Method,
    /// Side of the square occluding window in input pixels (default: an eighth of the
    /// image's smaller side, at least 2).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    window: Option<u32>,
    /// Step between windows in pixels (default: half the window).
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u32).range(1..))]
    stride: Option<u32>,
    /// RISE: masked copies run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    masks: u32,
    /// RISE: cells per side of a mask's random grid (default 7, at most the image's
    /// smaller side).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    cells: Option<u32>,
    /// RISE: seed of the masks.
    #[arg(long, default_value_t = 0)]
    mask_seed: u64,
    /// What fills the window (or, for RISE, what a mask lets show through).
    #[arg(long, value_enum, default_value = "zero")]
    fill: FillArg,
    /// Which number's drop is measured.
    #[arg(long, value_enum, default_value = "output")]
    score: ScoreArg,
    /// Occluded copies per run of the compiled network.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Per-channel mean for image inputs (as for `run`; default ImageNet's for 3 channels,
    /// 0 for 1 channel).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "M[,M,M]")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation for image inputs (as for `run`).
    #[arg(long, value_delimiter = ',', value_name = "S[,S,S]")]
    std: Option<Vec<f32>>,
    #[command(flatten)]
    threads: ThreadArgs,
    /// The picture to write: the map blended over the image (PNG); the raw map, float32
    /// [H, W] of mean score drops, goes beside it with the extension .npy.
    #[arg(short = 'o', long = "output", value_name = "FILE.png")]
    output: PathBuf,
}

/// The most occluded copies one `explain` runs (a 224x224 image with 1-pixel windows and
/// stride 1 would be 50,176 forward passes).
const MAX_WINDOWS: usize = 16_384;

/// Fails early, before any network runs, when `path` cannot be written: its directory
/// is missing, not a directory, or refuses a new file.
pub(super) fn check_writable(path: &Path) -> Result<(), UserError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fail = |why: String| UserError(format!("error: cannot write {}: {why}", path.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    if !dir.is_dir() {
        return Err(fail(format!("the directory {} does not exist", dir.display())));
    }
    if path.is_dir() {
        return Err(fail("it is a directory; give a file name such as saliency.png".into()));
    }
    let probe = dir.join(format!(".cnnc-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(fail(format!("the directory {} is not writable ({e})", dir.display()))),
    }
}

/// The per-channel mean and standard deviation an image input of `c` channels is
/// normalized with (as `run` does): the ones given, else ImageNet's for 3 channels and
/// none (0 and 1) otherwise.
pub(super) fn normalization(c: usize, mean: Option<&[f32]>, std: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let default_mean = if c == 3 { cnnc::io::IMAGENET_MEAN.to_vec() } else { vec![0.0; c] };
    let default_std = if c == 3 { cnnc::io::IMAGENET_STD.to_vec() } else { vec![1.0; c] };
    (mean.map_or(default_mean, <[f32]>::to_vec), std.map_or(default_std, <[f32]>::to_vec))
}

/// The files for class `class`: `output` itself when one class is explained, else
/// `STEM.classN.EXT`; and the `.npy` beside it.
fn files_for(output: &Path, class: usize, several: bool) -> (PathBuf, PathBuf) {
    let picture = if several {
        let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let extension = output.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "png".into());
        output.with_file_name(format!("{stem}.class{class}.{extension}"))
    } else {
        output.to_path_buf()
    };
    let raw = picture.with_extension("npy");
    (picture, raw)
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let Args {
        net,
        weights,
        input,
        class,
        top,
        method,
        window,
        stride,
        fill,
        score,
        masks,
        cells,
        mask_seed,
        batch,
        mean,
        std,
        threads,
        output,
    } = args;
    let net = net.as_path();
    if output.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        return Err(UserError(format!(
            "error: -o {}: name the picture (FILE.png); the raw map is written beside it as FILE.npy",
            output.display()
        )));
    }
    check_writable(output)?;
    let shape = ShapeArgs { batch: 1, input_shape: None, fully_conv: false, average: false };
    let probe = prepare(net, &shape, 1, None)?;
    if probe.inputs.len() != 1 {
        return Err(UserError(format!("error: {}: explain takes networks with one input", net.display())));
    }
    let classes_out = match &probe.outputs[..] {
        [only] => {
            let s = &probe.node(only.node).shape;
            (s.len() >= 2 && s[2..].iter().all(|&d| d == 1)).then_some(s[1])
        }
        _ => None,
    };
    let Some(n_classes) = classes_out else {
        return Err(UserError(format!(
            "error: {}: explain needs a network with one output of class scores [N, K] (or [N, K, 1, 1])",
            net.display()
        )));
    };
    let wanted = match (class, top) {
        (Some(k), _) if *k >= n_classes => {
            return Err(UserError(format!(
                "error: --class {k}: the network has {n_classes} classes, numbered 0 to {}",
                n_classes - 1
            )));
        }
        (Some(k), _) => Classes::Given(vec![*k]),
        (None, Some(k)) if *k as usize > n_classes => {
            return Err(UserError(format!("error: --top {k}: the network has only {n_classes} classes")));
        }
        (None, top) => Classes::Top(top.map_or(1, |k| k as usize)),
    };
    let chw = probe.node(probe.inputs[0]).shape[1..].to_vec();
    let [c, h, w] = chw[..] else {
        return Err(UserError(format!("error: {}: explain needs an image input [C, H, W]", net.display())));
    };
    let window = window.map_or_else(|| occlusion::default_window(h, w), |s| s as usize);
    if window > h || window > w {
        return Err(UserError(format!("error: --window {window} is larger than the {h}x{w} input image")));
    }
    let stride = stride.map_or((window / 2).max(1), |t| t as usize);

    let inputs = super::run::read_inputs(&probe, std::slice::from_ref(input), mean.as_deref(), std.as_deref())?;
    let image = &inputs[0];
    if image.shape[0] != 1 {
        return Err(UserError(format!("error: {input}: explain takes one image, the file holds {}", image.shape[0])));
    }
    // The normalization an image went through, to show its pixels as read.
    let is_image = !input.to_ascii_lowercase().ends_with(".npy");
    let normalization = is_image.then(|| normalization(c, mean.as_deref(), std.as_deref()));

    let options = Options {
        window,
        stride,
        fill: if *fill == FillArg::Zero { Fill::Zero } else { Fill::Mean },
        score: if *score == ScoreArg::Output { Score::Output } else { Score::Softmax },
    };
    let cells = cells.map_or(7.min(h.min(w)), |n| n as usize);
    if *method == Method::Rise && cells > h.min(w) {
        return Err(UserError(format!(
            "error: --cells {cells} is more than the {h}x{w} input image has pixels per side"
        )));
    }
    let rise = RiseOptions {
        masks: *masks as usize,
        cells,
        keep: 0.5,
        fill: options.fill,
        score: options.score,
        seed: *mask_seed,
    };
    let copies = match method {
        Method::Occlusion => {
            let windows = occlusion::window_positions(h, window, stride).len()
                * occlusion::window_positions(w, window, stride).len();
            if windows > MAX_WINDOWS {
                return Err(UserError(format!(
                    "error: --window {window} --stride {stride} makes {windows} occluded copies of the {h}x{w} \
                     image; at most {MAX_WINDOWS} are run: take a larger stride"
                )));
            }
            windows
        }
        Method::Rise => rise.masks,
    };
    let batch = (*batch as usize).min(copies + 1);
    let compile_started = std::time::Instant::now();
    let mut graph = prepare(net, &ShapeArgs { batch: batch as u32, ..shape }, batch, Some(weights))?;
    let target = cnnc::exec::Target::Cpu;
    passes::optimize_for(&mut graph, passes::OptLevel::O2, target.capabilities())?;
    let executor =
        cnnc::exec::compile_with(graph, target, &threads.options()).map_err(|e| UserError(format!("error: {e}")))?;
    let compiled = compile_started.elapsed();
    let started = std::time::Instant::now();
    let saliency = match method {
        Method::Occlusion => occlusion::occlusion(executor.as_ref(), batch, image, &wanted, &options),
        Method::Rise => cnnc::explain::rise::rise(executor.as_ref(), batch, image, &wanted, &rise),
    }
    .map_err(|e| UserError(format!("error: {e}")))?;
    let elapsed = started.elapsed();

    let pixels = occlusion::display_pixels(
        &image.data,
        c,
        h,
        w,
        normalization.as_ref().map(|(m, s)| (m.as_slice(), s.as_slice())),
    );
    let several = saliency.classes.len() > 1;
    for ((class, base), map) in saliency.classes.iter().zip(&saliency.base_scores).zip(&saliency.maps) {
        let (picture_file, raw_file) = files_for(output, *class, several);
        let picture = cnnc::explain::png::saliency_overlay(&pixels, h, w, map, &cnnc::explain::colormap::INFERNO);
        let png = cnnc::explain::png::encode_png(&picture).map_err(|e| UserError(format!("error: {e}")))?;
        let raw = cnnc::tensor::Tensor::new(vec![h, w], map.clone()).expect("h * w values");
        for (file, bytes) in [(&picture_file, png), (&raw_file, cnnc::io::write_npy(&raw))] {
            std::fs::write(file, bytes)
                .map_err(|e| UserError(format!("error: cannot write {}: {e}", file.display())))?;
        }
        let peak = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        println!(
            "class {class}: score {base:.4}, largest saliency {peak:.4}; wrote {} and {}",
            picture_file.display(),
            raw_file.display()
        );
        if peak <= 0.0 {
            eprintln!("note: no pixel has a positive saliency for class {class}; the picture shows no heat");
        }
    }
    let fill_text = if *fill == FillArg::Zero { "0" } else { "the channel means" };
    let what = match method {
        Method::Occlusion => {
            format!("occlusion: {copies} windows of {window}x{window} (stride {stride}, fill {fill_text})")
        }
        Method::Rise => format!("RISE: {copies} masks of {cells}x{cells} cells (seed {mask_seed}, fill {fill_text})"),
    };
    eprintln!(
        "{what}, {} runs at batch {batch} on the cpu target: compiled in {}, ran in {}",
        saliency.runs,
        super::run::duration_text(compiled),
        super::run::duration_text(elapsed)
    );
    Ok(())
}
