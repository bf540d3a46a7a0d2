//! `cnnc calibrate`: measure each int8 layer's input range on sample inputs with the
//! reference interpreter and write the calibration file `--precision int8` reads.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use cnnc::calibrate::Method;
use cnnc::passes;

use super::args::{OptArgs, ShapeArgs, WeightArgs};
use super::common::{MAX_INPUT_BYTES, UserError, check_budget, prepare};

/// Calibration inputs (images and .npy files) a directory may hold.
const MAX_FILES: usize = 100_000;

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    /// The calibration inputs: a directory of images (PNG, JPEG) and .npy files, or one
    /// .npy float32 batch [N, C, H, W] (or an image); each item runs once.
    #[arg(long, required = true, value_name = "DIR|X.npy")]
    inputs: PathBuf,
    /// Where to write the calibration (default: NET with the extension .calib.json).
    #[arg(short = 'o', long, value_name = "NET.calib.json")]
    output: Option<PathBuf>,
    /// How each layer's input range is chosen: the smallest and largest values seen
    /// (minmax), or the percentiles --percentile and 100 minus it (percentile).
    #[arg(long, value_enum, default_value = "minmax")]
    method: MethodArg,
    /// The percentile of --method percentile (above 50, at most 100).
    #[arg(long, default_value_t = 99.99, value_name = "P")]
    percentile: f64,
    /// Per-channel mean for image inputs (as `cnnc run --mean`).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "M[,M,M]")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation for image inputs (as `cnnc run --std`).
    #[arg(long, value_delimiter = ',', value_name = "S[,S,S]")]
    std: Option<Vec<f32>>,
    #[command(flatten)]
    opt: OptArgs,
    #[command(flatten)]
    shape: ShapeArgs,
}

/// `--method`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum MethodArg {
    /// The smallest and largest values seen.
    Minmax,
    /// The --percentile and 100 - --percentile percentiles.
    Percentile,
}

/// The input files of a directory, sorted: images and .npy files.
fn input_files(dir: &Path) -> Result<Vec<PathBuf>, UserError> {
    let failed = |e: std::io::Error| UserError(format!("error: cannot read directory {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let path = entry.map_err(failed)?.path();
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && matches!(extension.as_deref(), Some("png" | "jpg" | "jpeg" | "npy")) {
            files.push(path);
            if files.len() > MAX_FILES {
                return Err(UserError(format!(
                    "error: {} holds more than {MAX_FILES} inputs; calibrate on a sample",
                    dir.display()
                )));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(UserError(format!("error: {} holds no images (.png, .jpg) or .npy files", dir.display())));
    }
    Ok(files)
}

/// The calibration inputs of a network (the graph `probe`, at batch 1, with one input):
/// a directory of images and .npy files (sorted by name) or one file, read as `cnnc
/// run --input` reads them (images resized and normalized with `mean` and `std`), split
/// into one run per batch item. `--precision auto --calib-inputs` reads them the same
/// way.
pub(super) fn read_calibration_inputs(
    probe: &cnnc::ir::Graph,
    inputs: &Path,
    mean: Option<&[f32]>,
    std: Option<&[f32]>,
) -> Result<Vec<Vec<cnnc::tensor::Tensor>>, UserError> {
    let files = if inputs.is_dir() { input_files(inputs)? } else { vec![inputs.to_path_buf()] };
    // One run per batch item, on the graph built for batch 1.
    let mut runs = Vec::new();
    let mut bytes = 0u64;
    for file in &files {
        let spec = [file.display().to_string()];
        let batch = super::run::read_inputs(probe, &spec, mean, std)?;
        let tensor = batch.into_iter().next().expect("one input");
        // Every item is kept (the percentile method runs them twice): at most as much
        // as one input file may hold.
        bytes += 4 * tensor.data.len() as u64;
        if bytes > MAX_INPUT_BYTES {
            return Err(UserError(format!(
                "error: {}: the calibration inputs exceed {} MiB; calibrate on a sample",
                inputs.display(),
                MAX_INPUT_BYTES >> 20
            )));
        }
        let item: usize = tensor.shape[1..].iter().product();
        for data in tensor.data.chunks(item.max(1)) {
            let mut shape = tensor.shape.clone();
            shape[0] = 1;
            runs.push(vec![cnnc::tensor::Tensor { shape, data: data.to_vec() }]);
        }
    }
    Ok(runs)
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let method = match args.method {
        MethodArg::Minmax => Method::MinMax,
        MethodArg::Percentile => Method::Percentile(args.percentile),
    };
    if let Method::Percentile(p) = method
        && !(p > 50.0 && p <= 100.0)
    {
        return Err(UserError(format!("error: --percentile {p}: expected a number above 50 and at most 100")));
    }
    let net = args.net.as_path();
    let probe = prepare(net, &args.shape, 1, None)?;
    if probe.inputs.len() != 1 {
        return Err(UserError(format!(
            "error: {}: calibrate takes networks with one input (this one has {})",
            net.display(),
            probe.inputs.len()
        )));
    }
    check_budget(net, &probe, args.weights.memory.max_memory)?;
    let runs = read_calibration_inputs(&probe, &args.inputs, args.mean.as_deref(), args.std.as_deref())?;
    let mut graph = prepare(net, &args.shape, 1, Some(&args.weights))?;
    // The generic pipeline, which the cpu and reference targets run.
    passes::optimize(&mut graph, args.opt.level())?;
    let started = std::time::Instant::now();
    let calibration = cnnc::calibrate::calibrate(&graph, &runs, method)
        .map_err(|e| UserError(format!("error: {}: {e}", net.display())))?;
    let output = args.output.clone().unwrap_or_else(|| net.with_extension("calib.json"));
    std::fs::write(&output, calibration.to_json())
        .map_err(|e| UserError(format!("error: cannot write {}: {e}", output.display())))?;
    eprintln!(
        "calibrated {} int8 layers of {} on {} items ({}) in {}; wrote {}",
        calibration.layers.len(),
        graph.name,
        calibration.items,
        calibration.method,
        super::run::duration_text(started.elapsed()),
        output.display()
    );
    Ok(())
}
