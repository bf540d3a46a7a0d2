//! The argument groups several commands share, each defined once and flattened in.

use std::path::PathBuf;

use clap::ValueEnum;

use cnnc::passes::OptLevel;

use super::common::UserError;

/// The network's shape: batch, another input size, and the fully convolutional form.
#[derive(clap::Args, Clone)]
pub struct ShapeArgs {
    /// Batch size the network is built for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Build for another input size, written CxHxW (e.g. 3x384x384).
    #[arg(long, value_name = "CxHxW")]
    pub input_shape: Option<String>,
    /// Turn the classifier into convolutions and output the class-score map for the
    /// --input-shape (the classifier slides over the image).
    #[arg(long)]
    pub fully_conv: bool,
    /// With --fully-conv: average the score map into one prediction per image.
    #[arg(long, requires = "fully_conv")]
    pub average: bool,
}

/// `-O0|-O1|-O2`.
#[derive(clap::Args, Clone)]
pub struct OptArgs {
    /// Optimization level: -O0 runs the IR as written, -O1/-O2 run the pass pipeline.
    #[arg(short = 'O', default_value = "2", value_parser = ["0", "1", "2"])]
    pub opt_level: String,
}

impl OptArgs {
    pub fn level(&self) -> OptLevel {
        match self.opt_level.as_str() {
            "0" => OptLevel::O0,
            "1" => OptLevel::O1,
            _ => OptLevel::O2,
        }
    }
}

/// Where the weights come from: a file, or random.
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct WeightSource {
    /// Weights as safetensors with PyTorch `state_dict` names.
    #[arg(long, value_name = "FILE.safetensors")]
    pub weights: Option<PathBuf>,
    /// He-normal random weights (for tests and benchmarks).
    #[arg(long)]
    pub random_weights: bool,
}

/// `--max-memory`: the budget `run`, `build` and `bench` check a network against before
/// binding its weights or allocating anything.
#[derive(clap::Args, Clone)]
pub struct MemoryArgs {
    /// Refuse networks that need more memory than SIZE (bytes, or with K, M, G, T: 512M,
    /// 16G). Default: half of the smaller of physical memory and the address-space limit.
    #[arg(long, value_name = "SIZE", value_parser = cnnc::budget::parse_size)]
    pub max_memory: Option<u64>,
}

/// The weights and how strictly they bind.
#[derive(clap::Args, Clone)]
pub struct WeightArgs {
    #[command(flatten)]
    pub source: WeightSource,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Accept tensors in the weights file that the network does not read.
    #[arg(long)]
    pub allow_unused_weights: bool,
    /// List every missing and unexpected tensor when the weights do not match (the
    /// list is otherwise cut after 16 layers).
    #[arg(long)]
    pub verbose: bool,
}

/// The cpu target's threads and instruction set.
#[derive(clap::Args)]
pub struct ThreadArgs {
    /// Threads that share each run on the cpu target (1 to 16; default: one per core, or
    /// one for networks under 20 M multiply-adds).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub threads: Option<u32>,
    /// x86-64 level of the cpu target's code (default: everything this CPU has).
    #[arg(long, value_enum)]
    pub cpu: Option<CpuArg>,
}

impl ThreadArgs {
    pub fn options(&self) -> cnnc::exec::ExecOptions {
        cnnc::exec::ExecOptions {
            threads: self.threads.map(|n| n as usize),
            cpu: self.cpu.map(CpuArg::level),
            ..Default::default()
        }
    }
}

/// `--precision`: the arithmetic of the conv and linear layers, `--calib`, the
/// calibration int8 takes, and `--max-error`, `--calib-inputs` and `--budget-metric`,
/// the budget `--precision auto` chooses within.
#[derive(clap::Args, Clone)]
pub struct PrecisionArgs {
    /// Arithmetic of the conv and linear layers: f32; bf16 (weights and each layer's
    /// input rounded to bf16, f32 accumulation and epilogue); int8 (weights s8 per
    /// output channel, each layer's input u8 with the scale and zero point of --calib,
    /// exact integer sums, f32 rescaling and epilogue); or auto (per layer, the fastest
    /// of the three, measured, that keeps the network within --max-error on
    /// --calib-inputs; prints a per-layer report). Every other layer runs in f32. The
    /// cpu and reference targets run them; the gpu target runs f32 only.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// With --precision int8 or auto: the calibration file, made by `cnnc calibrate` for
    /// this network (at the same -O level and input size).
    #[arg(long, value_name = "NET.calib.json")]
    pub calib: Option<PathBuf>,
    /// With --precision auto: the error allowed against f32 on --calib-inputs: the
    /// relative L2 error of the outputs (--budget-metric l2), or the fraction of inputs
    /// whose top-1 class changes (top1).
    #[arg(long, value_name = "E", allow_negative_numbers = true)]
    pub max_error: Option<f64>,
    /// With --precision auto: the inputs the error is measured on, read as `cnnc
    /// calibrate --inputs` reads them (a directory of images and .npy files, or one .npy
    /// batch); usually the calibration's own inputs.
    #[arg(long, value_name = "DIR|X.npy")]
    pub calib_inputs: Option<PathBuf>,
    /// With --precision auto: how the error is measured (default l2).
    #[arg(long, value_enum, value_name = "l2|top1")]
    pub budget_metric: Option<BudgetMetric>,
}

/// `--budget-metric`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum BudgetMetric {
    /// Relative L2 error of the outputs against f32.
    L2,
    /// Fraction of inputs whose top-1 class changes.
    Top1,
}

/// What `--precision auto` needs from the command to measure: the network as the
/// command builds it.
pub struct AutoContext<'a> {
    pub net: &'a std::path::Path,
    pub shape: &'a ShapeArgs,
    pub weights: &'a WeightArgs,
    /// The batch the network runs at (the timings are taken at it).
    pub batch: usize,
    pub level: OptLevel,
    /// Image normalization of the calibration inputs (`run --mean/--std`).
    pub mean: Option<&'a [f32]>,
    pub std: Option<&'a [f32]>,
    pub options: cnnc::exec::ExecOptions,
}

/// The precisions resolved from the flags, ready to set on graphs: once per command,
/// so that `auto` measures once.
pub enum Assignment {
    F32,
    Bf16,
    Int8(Box<cnnc::calibrate::Calibration>, PathBuf),
    Auto(Box<cnnc::auto_precision::Choice>),
}

impl Assignment {
    /// Sets the precisions on an optimized graph of the network (the same -O level as
    /// the calibration; int8's file must match it: exit 1 naming the layers that do
    /// not). f32 leaves the graph as it is.
    pub fn apply(&self, graph: &mut cnnc::ir::Graph) -> Result<(), UserError> {
        match self {
            Assignment::F32 => {}
            Assignment::Bf16 => {
                cnnc::precision::assign(graph, cnnc::precision::Precision::Bf16);
            }
            Assignment::Int8(calibration, path) => {
                calibration.assign(graph).map_err(|e| UserError(format!("error: {}: {e}", path.display())))?;
            }
            Assignment::Auto(choice) => choice.apply(graph).map_err(|e| UserError(format!("error: {e}")))?,
        }
        Ok(())
    }
}

impl PrecisionArgs {
    /// `f32`, `bf16`, `int8` or `auto`.
    pub fn name(&self) -> &'static str {
        match self.precision {
            PrecisionArg::F32 => "f32",
            PrecisionArg::Bf16 => "bf16",
            PrecisionArg::Int8 => "int8",
            PrecisionArg::Auto => "auto",
        }
    }

    /// Whether the layers may run in another precision than f32.
    pub fn reduced(&self) -> bool {
        self.precision != PrecisionArg::F32
    }

    /// Checks the flags before anything runs: int8 needs --calib; auto needs --calib,
    /// --max-error and --calib-inputs (all missing ones named at once); --calib is for
    /// int8 and auto only, the budget's flags for auto only.
    pub fn check(&self) -> Result<(), UserError> {
        let make = "make one with `cnnc calibrate NET --weights W --inputs DIR|X.npy -o NET.calib.json`";
        match self.precision {
            PrecisionArg::Int8 if self.calib.is_none() => {
                return Err(UserError(format!("error: --precision int8 needs --calib FILE: {make}")));
            }
            PrecisionArg::F32 | PrecisionArg::Bf16 if self.calib.is_some() => {
                return Err(UserError(format!("error: --calib is for --precision int8 or auto, not {}", self.name())));
            }
            PrecisionArg::Auto => {
                let mut missing = Vec::new();
                if self.max_error.is_none() {
                    missing.push("--max-error E (the error allowed against f32)".to_string());
                }
                if self.calib.is_none() {
                    missing.push(format!("--calib FILE ({make})"));
                }
                if self.calib_inputs.is_none() {
                    missing.push("--calib-inputs DIR|X.npy (the inputs the error is measured on)".to_string());
                }
                if !missing.is_empty() {
                    return Err(UserError(format!("error: --precision auto needs {}", missing.join(", "))));
                }
            }
            _ => {}
        }
        if self.precision != PrecisionArg::Auto {
            for (flag, given) in [
                ("--max-error", self.max_error.is_some()),
                ("--calib-inputs", self.calib_inputs.is_some()),
                ("--budget-metric", self.budget_metric.is_some()),
            ] {
                if given {
                    return Err(UserError(format!(
                        "error: {flag} is for --precision auto, not {} (add --precision auto)",
                        self.name()
                    )));
                }
            }
        }
        if let Some(e) = self.max_error {
            let top1 = self.budget_metric == Some(BudgetMetric::Top1);
            if !(e.is_finite() && e >= 0.0) || (top1 && e > 1.0) {
                let range = if top1 { "a fraction of inputs, 0 to 1, with --budget-metric top1" } else { "at least 0" };
                return Err(UserError(format!("error: --max-error {e}: expected {range}")));
            }
        }
        Ok(())
    }

    /// Resolves the flags: reads int8's calibration, or for auto measures the network
    /// built as `context` says and chooses (printing the report on stderr).
    pub fn resolve(&self, context: &AutoContext) -> Result<Assignment, UserError> {
        self.check()?;
        Ok(match self.precision {
            PrecisionArg::F32 => Assignment::F32,
            PrecisionArg::Bf16 => Assignment::Bf16,
            PrecisionArg::Int8 => {
                let path = self.calib.clone().expect("checked above");
                Assignment::Int8(Box::new(read_calibration(&path)?), path)
            }
            PrecisionArg::Auto => Assignment::Auto(Box::new(self.choose(context)?)),
        })
    }

    /// `--precision auto`: the timings at the command's batch, the errors at batch 1 on
    /// the calibration inputs.
    fn choose(&self, context: &AutoContext) -> Result<cnnc::auto_precision::Choice, UserError> {
        use super::common::prepare;
        let path = self.calib.as_deref().expect("checked");
        let calibration = read_calibration(path)?;
        let located = |e: String| UserError(format!("error: {}: {e}", path.display()));
        let probe = prepare(context.net, context.shape, 1, None)?;
        if probe.inputs.len() != 1 {
            return Err(UserError(format!(
                "error: {}: --precision auto takes networks with one input (this one has {})",
                context.net.display(),
                probe.inputs.len()
            )));
        }
        let inputs = self.calib_inputs.as_deref().expect("checked");
        let runs = super::calibrate::read_calibration_inputs(&probe, inputs, context.mean, context.std)?;
        let mut graph = prepare(context.net, context.shape, 1, Some(context.weights))?;
        cnnc::passes::optimize(&mut graph, context.level)?;
        let timing_graph = if context.batch == 1 {
            graph.clone()
        } else {
            let mut g = prepare(context.net, context.shape, context.batch, Some(context.weights))?;
            cnnc::passes::optimize(&mut g, context.level)?;
            g
        };
        let options = cnnc::auto_precision::Options {
            cpu: context.options.cpu,
            threads: context.options.threads,
            max_error: self.max_error.expect("checked"),
            metric: match self.budget_metric {
                Some(BudgetMetric::Top1) => cnnc::auto_precision::Metric::Top1,
                _ => cnnc::auto_precision::Metric::L2,
            },
        };
        let started = std::time::Instant::now();
        let timings = cnnc::auto_precision::measure_times(&timing_graph, &calibration, &options).map_err(located)?;
        let choice = cnnc::auto_precision::choose(&graph, &calibration, &runs, &timings, &options)
            .map_err(|e| UserError(format!("error: --precision auto: {e}")))?;
        eprint!("{choice}");
        eprintln!("  chosen in {}", super::run::duration_text(started.elapsed()));
        Ok(choice)
    }

    /// The note `run`, `bench` and `build` print when the cpu target runs bf16 or int8.
    pub fn cpu_note(&self) -> Option<String> {
        match self.precision {
            PrecisionArg::F32 | PrecisionArg::Auto => None,
            PrecisionArg::Bf16 if cnnc::backend::clif::host_prefers_bf16_tiles() => Some(
                "note: --precision bf16 on the cpu target: the conv and linear layers round their weights and \
                 inputs to bf16 and run on the vdpbf16ps tiles of this CPU (AVX512_BF16; the depthwise layers on \
                 the f32 depthwise kernels over the rounded operands); with --cpu, all of them on the f32 kernels \
                 over the rounded operands (the same results, not bf16's speed)"
                    .to_string(),
            ),
            PrecisionArg::Bf16 if cnnc::backend::clif::host_has_bf16() => Some(
                "note: --precision bf16 on the cpu target: the conv and linear layers round their weights and \
                 inputs to bf16 and run on the f32 kernels over the rounded operands: this CPU has AVX512_BF16, \
                 but its two FMA units outpace its vdpbf16ps (bf16's results at f32's speed)"
                    .to_string(),
            ),
            PrecisionArg::Bf16 => Some(
                "note: --precision bf16 on the cpu target: this CPU has no AVX512_BF16, so the conv and linear \
                 layers round their weights and inputs to bf16 and run on the f32 kernels (bf16's results, not \
                 its speed)"
                    .to_string(),
            ),
            PrecisionArg::Int8 => Some(
                "note: --precision int8 on the cpu target: the conv and linear layers quantize their weights and \
                 inputs and sum the integers exactly; on AVX-512 hosts with VNNI the convs of one group and the \
                 linear layers run on vpdpbusd tiles; on AVX2 hosts (or --cpu x86-64-v3) the convs of one group and 4 \
                 or more input channels and the linear layers run on integer tiles; depthwise convs on the depthwise \
                 kernels over quantized planes; the others on the f32 kernels, with int8's results but not its speed"
                    .to_string(),
            ),
        }
    }
}

/// Reads a calibration file (at most 64 MiB).
pub fn read_calibration(path: &std::path::Path) -> Result<cnnc::calibrate::Calibration, UserError> {
    let bytes =
        cnnc::io::read_file(path, 64 << 20, "calibration file").map_err(|e| UserError(format!("error: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| UserError(format!("error: {}: the calibration file is not UTF-8 text", path.display())))?;
    cnnc::calibrate::Calibration::from_json(&text).map_err(|e| UserError(format!("error: {}: {e}", path.display())))
}

/// `--precision f32|bf16|int8`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum PrecisionArg {
    /// IEEE single precision.
    F32,
    /// bfloat16 weights and layer inputs, f32 accumulation.
    Bf16,
    /// s8 weights, u8 layer inputs (calibrated), exact integer sums (needs --calib).
    Int8,
    /// Per layer, the fastest that keeps the network within --max-error (needs --calib,
    /// --max-error and --calib-inputs).
    Auto,
}

/// `--cpu`: an x86-64 micro-architecture level.
#[derive(Clone, Copy, ValueEnum)]
pub enum CpuArg {
    /// SSE4.2: 128-bit vectors (Cranelift's f32x4 code only).
    #[value(name = "x86-64-v2")]
    V2,
    /// AVX2 and FMA: 256-bit micro-kernels.
    #[value(name = "x86-64-v3")]
    V3,
    /// AVX-512: 512-bit micro-kernels.
    #[value(name = "x86-64-v4")]
    V4,
}

impl CpuArg {
    pub fn level(self) -> cnnc::backend::clif::CpuLevel {
        match self {
            CpuArg::V2 => cnnc::backend::clif::CpuLevel::X86_64V2,
            CpuArg::V3 => cnnc::backend::clif::CpuLevel::X86_64V3,
            CpuArg::V4 => cnnc::backend::clif::CpuLevel::X86_64V4,
        }
    }
}

/// An executor: `--target` of `run`, `bench` and `ir`, and `run --compare`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub enum Target {
    /// Native code through Cranelift.
    Cpu,
    /// WGSL compute shaders through wgpu.
    Gpu,
    /// The reference interpreter: plain loops, the ground truth.
    Reference,
}

impl Target {
    pub fn to_exec(self) -> cnnc::exec::Target {
        match self {
            Target::Cpu => cnnc::exec::Target::Cpu,
            Target::Gpu => cnnc::exec::Target::Gpu,
            Target::Reference => cnnc::exec::Target::Reference,
        }
    }
}

/// `--format` of `summary` and `bench`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Table,
    Json,
}
