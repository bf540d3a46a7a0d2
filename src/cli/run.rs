//! `cnnc run`: run a network on .npy or image inputs, print the outputs and top classes.

use std::path::PathBuf;

use cnnc::ir::Graph;
use cnnc::passes;

use super::args::{AutoContext, OptArgs, PrecisionArgs, ShapeArgs, Target, ThreadArgs, WeightArgs};
use super::common::{MAX_INPUT_BYTES, UserError, check_budget, prepare, read_limited};

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    /// Input: FILE, or NAME=FILE for each of several inputs; .npy float32 [N,C,H,W] or [C,H,W], or an image.
    #[arg(long, required = true, value_name = "FILE")]
    input: Vec<String>,
    /// Where to write the outputs as .npy: a file (Y.npy) for a network with one output;
    /// a directory (one NAME.npy per output; created when it does not exist, and then
    /// its name may not end in .npy); or NAME=FILE, repeated, for the outputs named.
    #[arg(long, value_name = "Y.npy|DIR|NAME=FILE")]
    output: Vec<String>,
    /// Executor: native code (cpu, the default), the GPU (gpu), or the reference interpreter.
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// Run on every listed target (e.g. cpu,gpu,reference) and report, layer by layer,
    /// each one's relative L2 error against the reference and the first layer where one
    /// disagrees beyond 1e-4 (exit status 1 then).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TARGETS")]
    compare: Vec<Target>,
    #[command(flatten)]
    opt: OptArgs,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Print the K most likely classes of each batch item.
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Class names, one per line, for --top.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Per-channel mean for image inputs, subtracted after scaling pixels to [0, 1]
    /// (default: ImageNet's 0.485,0.456,0.406 for 3 channels, 0 for 1 channel).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "M[,M,M]")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation for image inputs, divided by after subtracting the
    /// mean: each value is (pixel/255 - mean) / std (default: ImageNet's
    /// 0.229,0.224,0.225 for 3 channels, 1 for 1 channel).
    #[arg(long, value_delimiter = ',', value_name = "S[,S,S]")]
    std: Option<Vec<f32>>,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Write every layer's feature maps (PNG grids, at most 64 channels each), a
    /// stats.json (min, max, mean, dead channels, NaN and infinity counts) and an
    /// index.json into DIR, from the reference interpreter's run of the graph at the -O
    /// level (-O0 shows every layer as written); pictures of the first batch item.
    #[arg(long, value_name = "DIR", conflicts_with = "compare")]
    dump_activations: Option<PathBuf>,
}

/// Reads the inputs named on the command line, in `graph.inputs` order, conformed to
/// the declared `[C, H, W]`.
pub(super) fn read_inputs(
    graph: &Graph,
    specs: &[String],
    mean: Option<&[f32]>,
    std: Option<&[f32]>,
) -> Result<Vec<cnnc::tensor::Tensor>, UserError> {
    let names: Vec<String> = graph.inputs.iter().map(|&id| graph.node(id).name.clone()).collect();
    let mut files: Vec<Option<PathBuf>> = vec![None; names.len()];
    for spec in specs {
        let (name, file) = match spec.split_once('=') {
            Some((name, file)) if names.iter().any(|n| n == name) => (name.to_string(), file),
            _ if names.len() == 1 => (names[0].clone(), spec.as_str()),
            _ => {
                return Err(UserError(format!(
                    "error: --input `{spec}`: this network has inputs {}; write NAME=FILE for each",
                    names.join(", ")
                )));
            }
        };
        let index = names.iter().position(|n| *n == name).expect("checked above");
        if files[index].replace(PathBuf::from(file)).is_some() {
            return Err(UserError(format!("error: input `{name}` is given twice")));
        }
    }
    let mut tensors = Vec::new();
    for ((name, file), &id) in names.iter().zip(&files).zip(&graph.inputs) {
        let Some(file) = file else {
            return Err(UserError(format!("error: no --input for input `{name}`")));
        };
        let chw = &graph.node(id).shape[1..];
        let bytes = read_limited(file, MAX_INPUT_BYTES, "input")?;
        let located = |e: &dyn std::fmt::Display| UserError(format!("error: {}: {e}", file.display()));
        let tensor = if file.extension().is_some_and(|e| e == "npy") {
            let tensor = cnnc::io::read_npy(&bytes).map_err(|e| located(&e))?;
            cnnc::io::conform_input(tensor, chw).map_err(|e| located(&e))?
        } else {
            if chw.len() != 3 {
                let dims: Vec<String> = chw.iter().map(usize::to_string).collect();
                return Err(located(&format!(
                    "input `{name}` is [{}] per item, not an image ([C, H, W]): give it as a .npy file",
                    dims.join(", ")
                )));
            }
            let c = chw[0];
            // ImageNet's statistics for RGB; other channel counts are only scaled to [0, 1].
            let default_mean = if c == 3 { cnnc::io::IMAGENET_MEAN.to_vec() } else { vec![0.0; c] };
            let default_std = if c == 3 { cnnc::io::IMAGENET_STD.to_vec() } else { vec![1.0; c] };
            let mean = mean.map(<[f32]>::to_vec).unwrap_or(default_mean);
            let std = std.map(<[f32]>::to_vec).unwrap_or(default_std);
            if mean.len() != c || std.len() != c || std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
                return Err(UserError(format!(
                    "error: --mean and --std need {c} values (positive std) for input `{name}`"
                )));
            }
            let (tensor, note) =
                cnnc::io::load_image_noted(&bytes, c, chw[1], chw[2], &mean, &std).map_err(|e| located(&e))?;
            // Say so whenever the image is not what the input declares.
            if let Some(note) = note {
                eprintln!("note: {}: {note}, for input `{name}` [{c}, {}, {}]", file.display(), chw[1], chw[2]);
            }
            tensor
        };
        tensors.push(tensor);
    }
    let batch = tensors[0].shape[0];
    if let Some(other) = tensors.iter().find(|t| t.shape[0] != batch) {
        return Err(UserError(format!("error: inputs have different batch sizes ({batch} and {})", other.shape[0])));
    }
    Ok(tensors)
}

impl Args {
    /// Whether the command will open a GPU adapter.
    pub fn uses_gpu(&self) -> bool {
        self.target == Target::Gpu || self.compare.contains(&Target::Gpu)
    }
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let Args {
        net,
        weights,
        input: specs,
        output,
        target,
        compare,
        opt,
        threads,
        precision,
        top,
        labels,
        mean,
        std,
        shape,
        dump_activations,
    } = args;
    precision.check()?;
    if precision.reduced() && (*target == Target::Gpu || compare.contains(&Target::Gpu)) {
        return Err(UserError(format!("error: --precision {}: the gpu target runs f32 only", precision.name())));
    }
    let (net, level, labels) = (net.as_path(), opt.level(), labels.as_deref());
    let (mean, std, top) = (mean.as_deref(), std.as_deref(), *top);
    // Build once to learn the inputs, then again for the input files' batch.
    let probe = prepare(net, shape, 1, None)?;
    // Before the inputs are read: an image is resized to the network's input size.
    check_budget(net, &probe, weights.memory.max_memory)?;
    let inputs = read_inputs(&probe, specs, mean, std)?;
    let batch = inputs[0].shape[0];
    if shape.batch != 1 && shape.batch as usize != batch {
        return Err(UserError(format!("error: --batch {} but the input holds {batch} items", shape.batch)));
    }
    let mut graph = prepare(net, shape, batch, Some(weights))?;
    let context = AutoContext { net, shape, weights, batch, level, mean, std, options: threads.options() };
    let assignment = precision.resolve(&context)?;
    if !compare.is_empty() {
        // One graph for every target, so that each node's value can be compared: the
        // generic pipeline's, which every target runs (no pooling fused for the gpu).
        passes::optimize(&mut graph, level)?;
        assignment.apply(&mut graph)?;
        if compare.contains(&Target::Cpu)
            && let Some(note) = args.precision.cpu_note()
        {
            eprintln!("{note}");
        }
        let targets: Vec<cnnc::exec::Target> = compare.iter().map(|t| t.to_exec()).collect();
        let report = cnnc::compare::compare(&graph, &inputs, &targets).map_err(|e| UserError(format!("error: {e}")))?;
        print!("{report}");
        return match report.first_divergence() {
            None => Ok(()),
            Some(d) => Err(UserError(format!(
                "error: target {} first disagrees with the reference at layer `{}` (relative L2 error {:.2e})",
                d.target.name(),
                d.name,
                d.error
            ))),
        };
    }
    let output_names: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let destinations = output_files(output, &output_names)?;
    if let Some(dir) = dump_activations {
        dump(&graph, level, &assignment, &inputs, dir)?;
    }
    let compile_started = std::time::Instant::now();
    passes::optimize_for(&mut graph, level, target.to_exec().capabilities())?;
    // The graph carries each layer's precision: the executor takes it as it is.
    assignment.apply(&mut graph)?;
    let options = threads.options();
    if *target == Target::Cpu
        && let Some(note) = args.precision.cpu_note()
    {
        eprintln!("{note}");
    }
    let executor =
        cnnc::exec::compile_with(graph, target.to_exec(), &options).map_err(|e| UserError(format!("error: {e}")))?;
    let compiled = compile_started.elapsed();
    let started = std::time::Instant::now();
    let outputs = executor.run(&inputs).map_err(|e| UserError(format!("error: {e}")))?;
    let elapsed = started.elapsed();
    let label_names = match labels {
        Some(path) => {
            let bytes = read_limited(path, 64 << 20, "labels file")?;
            Some(cnnc::io::read_labels(&String::from_utf8_lossy(&bytes)))
        }
        None => None,
    };
    for (name, tensor) in output_names.iter().zip(&outputs) {
        println!("{name}: {}", tensor.shape_string());
        match top {
            Some(k) if tensor.shape.len() == 2 || tensor.shape[2..].iter().all(|&d| d == 1) => {
                print_top(tensor, k, label_names.as_deref());
            }
            _ => {
                let shown: Vec<String> = tensor.data.iter().take(8).map(|v| format!("{v:.6}")).collect();
                println!("  [{}{}]", shown.join(", "), if tensor.len() > 8 { ", ..." } else { "" });
            }
        }
    }
    eprintln!(
        "compiled for target {} in {}, ran in {} (one run; `cnnc bench` times many)",
        target.to_exec().name(),
        duration_text(compiled),
        duration_text(elapsed)
    );
    write_outputs(destinations, &outputs)?;
    Ok(())
}

/// `--dump-activations DIR`: the reference interpreter's run of the graph after the
/// generic pipeline at `level`, at `--precision` (simulated), on a copy of the graph (the
/// target's own pipeline may fuse differently).
fn dump(
    graph: &Graph,
    level: passes::OptLevel,
    assignment: &super::args::Assignment,
    inputs: &[cnnc::tensor::Tensor],
    dir: &std::path::Path,
) -> Result<(), UserError> {
    let started = std::time::Instant::now();
    let mut traced = graph.clone();
    passes::optimize(&mut traced, level)?;
    assignment.apply(&mut traced)?;
    let dump = cnnc::explain::activations::dump_activations(
        &traced,
        inputs,
        dir,
        cnnc::explain::activations::DEFAULT_MAX_TILES,
    )
    .map_err(|e| UserError(format!("error: --dump-activations: {e}")))?;
    eprintln!(
        "wrote {} layers' activations ({} files, index.json) to {} in {}",
        dump.index.layers.len(),
        dump.files.len(),
        dir.display(),
        duration_text(started.elapsed())
    );
    Ok(())
}

/// Prints the K best classes of each batch item; scores that are not already
/// probabilities go through a softmax first.
fn print_top(tensor: &cnnc::tensor::Tensor, k: usize, labels: Option<&[String]>) {
    let n = tensor.shape[0];
    let classes = tensor.len() / n.max(1);
    for item in 0..n {
        let row = &tensor.data[item * classes..(item + 1) * classes];
        let sum: f32 = row.iter().sum();
        let probabilities: Vec<f32> = if row.iter().all(|&v| (0.0..=1.0).contains(&v)) && (sum - 1.0).abs() < 1e-3 {
            row.to_vec()
        } else {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let total: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / total) as f32).collect()
        };
        if n > 1 {
            println!("  item {item}:");
        }
        for (rank, (class, p)) in cnnc::io::top_k(&probabilities, k).into_iter().enumerate() {
            let name = labels.and_then(|l| l.get(class)).map(|s| format!("  {s}")).unwrap_or_default();
            println!("  {}. class {class:>4}  p={p:.4}{name}", rank + 1);
        }
    }
}

/// A duration with the precision it deserves: `1.24 s`, `35.2 ms`, `2.41 ms`, `87 us`.
pub(super) fn duration_text(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs_f64();
    match seconds {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 0.01 => format!("{:.1} ms", s * 1e3),
        s if s >= 0.001 => format!("{:.2} ms", s * 1e3),
        s => format!("{:.0} us", s * 1e6),
    }
}

/// Where each output goes (by index), from the --output arguments: one file for a
/// single output, a directory, or NAME=FILE per output. Checked before anything runs.
fn output_files(specs: &[String], names: &[String]) -> Result<Vec<(usize, PathBuf)>, UserError> {
    let outputs = || names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let mut files = Vec::new();
    let named: Vec<Option<(&str, &str)>> =
        specs.iter().map(|s| s.split_once('=').filter(|(name, _)| names.iter().any(|n| n == name))).collect();
    if !specs.is_empty() && named.iter().all(Option::is_some) {
        for (name, file) in named.into_iter().flatten() {
            let index = names.iter().position(|n| n == name).expect("checked above");
            if files.iter().any(|(i, _)| *i == index) {
                return Err(UserError(format!("error: --output names output `{name}` twice")));
            }
            files.push((index, PathBuf::from(file)));
        }
        return Ok(files);
    }
    match specs {
        [] => Ok(files),
        [path] => {
            let path = PathBuf::from(path);
            let is_dir = path.is_dir();
            if names.len() == 1 {
                let file = if is_dir { path.join(format!("{}.npy", names[0])) } else { path };
                return Ok(vec![(0, file)]);
            }
            if !is_dir && (path.exists() || path.extension().is_some()) {
                return Err(UserError(format!(
                    "error: --output {}: this network has {} outputs ({}); give a directory (one NAME.npy \
                     each) or NAME=FILE for each output",
                    path.display(),
                    names.len(),
                    outputs()
                )));
            }
            Ok(names.iter().enumerate().map(|(i, n)| (i, path.join(format!("{n}.npy")))).collect())
        }
        _ => Err(UserError(format!(
            "error: --output is given {} times; name the outputs, NAME=FILE each, from {}",
            specs.len(),
            outputs()
        ))),
    }
}

fn write_outputs(files: Vec<(usize, PathBuf)>, outputs: &[cnnc::tensor::Tensor]) -> Result<(), UserError> {
    for (index, file) in files {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| UserError(format!("error: cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&file, cnnc::io::write_npy(&outputs[index]))
            .map_err(|e| UserError(format!("error: cannot write {}: {e}", file.display())))?;
    }
    Ok(())
}
