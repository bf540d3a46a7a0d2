//! `cnnc build`: native objects and C headers, GPU artifacts, ONNX, the IR and the graph.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use cnnc::passes;

use super::args::{AutoContext, CpuArg, OptArgs, PrecisionArgs, ShapeArgs, WeightArgs};
use super::common::{UserError, not_built, prepare};

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum BuildTarget {
    /// A relocatable object and a C header (Cranelift).
    Cpu,
    /// WGSL shader modules (NET.wgsl/), a dispatch plan (NET.plan.json) and the weights
    /// blob (NET.weights), loaded by `cnnc::gpu::GpuModel::load(DIR, NET)`.
    Gpu,
}

#[derive(clap::Args)]
pub struct Args {
    net: PathBuf,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    opt: OptArgs,
    /// What to build for: native code (cpu) or the GPU's WGSL kernels (gpu).
    #[arg(long, value_enum, default_value = "cpu")]
    target: BuildTarget,
    /// What to write, comma-separated (default: obj,header for --target cpu;
    /// wgsl,plan for --target gpu).
    #[arg(long, value_enum, value_delimiter = ',')]
    emit: Vec<Emit>,
    /// Build the object for another machine, e.g. aarch64-unknown-linux-gnu or
    /// x86_64-unknown-linux-gnu (baseline x86-64-v2); default: this machine's CPU.
    #[arg(long, value_name = "TRIPLE")]
    target_triple: Option<String>,
    /// x86-64 level of the object's code: only instructions of that level (default: this
    /// machine's CPU, or the triple's baseline, x86-64-v2).
    #[arg(long, value_enum)]
    cpu: Option<CpuArg>,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Output directory.
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Emit {
    /// NET.onnx: the network as written (BatchNorm and dropout kept), with its weights.
    Onnx,
    /// NET.ir: the optimized IR as text.
    Ir,
    /// NET.dot: the optimized graph in Graphviz DOT.
    Dot,
    /// NET.o: a relocatable object (Cranelift).
    Obj,
    /// NET.h: the C header of the object's entry points.
    Header,
    /// Not built yet: embed from a build script with `cnnc::build::Model` instead.
    Rust,
    /// NET.wgsl/: one WGSL module per kernel, with the weights blob NET.weights.
    Wgsl,
    /// NET.plan.json: the GPU dispatch plan (written with the WGSL modules).
    Plan,
}

pub fn exec(args: &Args) -> Result<(), UserError> {
    let Args { net, weights, shape, opt, target, emit, target_triple, cpu, precision, output: dir } = args;
    precision.check()?;
    let default_emit = [Emit::Obj, Emit::Header];
    let emit: &[Emit] = if emit.is_empty() && *target == BuildTarget::Cpu { &default_emit } else { emit };
    if *target == BuildTarget::Gpu
        && emit.iter().any(|e| matches!(e, Emit::Obj | Emit::Header))
        && !args.emit.is_empty()
    {
        return Err(UserError("error: --emit obj,header are for --target cpu".into()));
    }
    if emit.contains(&Emit::Rust) {
        return Err(not_built("--emit rust (use the build-script API, cnnc::build::Model, from build.rs)"));
    }
    let mut graph = prepare(net, shape, shape.batch as usize, Some(weights))?;
    let staging = Staging::new(dir)?;
    let write = |name: String, bytes: &[u8]| -> Result<(), UserError> {
        let path = staging.path.join(name);
        std::fs::write(&path, bytes).map_err(|e| UserError(format!("error: cannot write {}: {e}", path.display())))
    };
    // ONNX gets the network as written (with its own BatchNorm and dropout): it is the
    // independent oracle, so it should not inherit cnnc's rewrites.
    if emit.contains(&Emit::Onnx) {
        let model =
            cnnc::export::onnx::to_onnx(&graph, &graph.weights, false).map_err(|e| UserError(format!("error: {e}")))?;
        write(format!("{}.onnx", graph.name), &model)?;
    }
    // The pipeline of the backend built for: with --target cpu, --emit wgsl,plan write
    // kernels for the generic graph (the GPU runs it too, without fused pooling).
    let capabilities = match target {
        BuildTarget::Cpu => passes::Capabilities::CPU,
        BuildTarget::Gpu => passes::Capabilities::GPU,
    };
    passes::optimize_for(&mut graph, opt.level(), capabilities)?;
    if precision.reduced() {
        if emit.iter().any(|e| matches!(e, Emit::Wgsl | Emit::Plan)) || *target == BuildTarget::Gpu {
            return Err(UserError(format!("error: --precision {}: the gpu target runs f32 only", precision.name())));
        }
        if precision.precision == super::args::PrecisionArg::Auto && target_triple.is_some() {
            return Err(UserError(
                "error: --precision auto times the layers on this machine: it cannot choose for --target-triple \
                 (choose here with --emit ir, or build for this machine)"
                    .into(),
            ));
        }
        let context = AutoContext {
            net,
            shape,
            weights,
            batch: shape.batch as usize,
            level: opt.level(),
            mean: None,
            std: None,
            options: cnnc::exec::ExecOptions { cpu: cpu.map(CpuArg::level), ..Default::default() },
        };
        // The IR, DOT and header outputs show each layer's precision.
        precision.resolve(&context)?.apply(&mut graph)?;
        if emit.iter().any(|e| matches!(e, Emit::Obj | Emit::Header))
            && let Some(note) = args.precision.cpu_note()
        {
            eprintln!("{note}");
        }
    }
    if emit.contains(&Emit::Ir) {
        write(format!("{}.ir", graph.name), cnnc::ir::print(&graph).as_bytes())?;
    }
    if emit.contains(&Emit::Dot) {
        write(format!("{}.dot", graph.name), cnnc::graphviz::to_dot(&graph).as_bytes())?;
    }
    // The GPU artifacts go together: the plan references the modules and the weights blob.
    if (*target == BuildTarget::Gpu && args.emit.is_empty())
        || emit.iter().any(|e| matches!(e, Emit::Wgsl | Emit::Plan))
    {
        let name = graph.name.clone();
        cnnc::gpu::write_artifacts(&graph, &staging.path, &name).map_err(|e| UserError(format!("error: {e}")))?;
    }
    if emit.contains(&Emit::Obj) || emit.contains(&Emit::Header) {
        let started = std::time::Instant::now();
        let options =
            cnnc::backend::clif::CodegenOptions { verify: false, cpu: cpu.map(CpuArg::level), ..Default::default() };
        let artifacts =
            cnnc::backend::clif::compile_object_with(&graph, &graph.name, target_triple.as_deref(), &options)
                .map_err(|e| UserError(format!("error: {e}")))?;
        eprintln!("compiled {} to native code in {:.1} ms", graph.name, started.elapsed().as_secs_f64() * 1e3);
        if emit.contains(&Emit::Obj) {
            write(format!("{}.o", graph.name), &artifacts.object)?;
        }
        if emit.contains(&Emit::Header) {
            write(format!("{}.h", graph.name), artifacts.header.as_bytes())?;
        }
    }
    for path in staging.commit()? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A build's outputs are written into a staging directory inside the output directory,
/// then moved into place together once every one is written: a build that fails (a
/// compile error, a full disk, an output that cannot be replaced) leaves the previous
/// artifacts as they were, never a new object beside an old header. Dropped without
/// [`Staging::commit`], it removes what it staged.
struct Staging {
    dir: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(dir: &Path) -> Result<Staging, UserError> {
        let failed = |what: &str, path: &Path, e: std::io::Error| {
            UserError(format!("error: cannot {what} {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| failed("create", dir, e))?;
        let path = dir.join(format!(".cnnc-build-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| failed("remove", &path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| failed("create", &path, e))?;
        Ok(Staging { dir: dir.to_path_buf(), path, committed: false })
    }

    /// Moves every staged file and directory into the output directory; returns their
    /// final paths. Checks first that each destination can be replaced (a file by a file,
    /// a directory by a directory), so that a refusal moves nothing.
    fn commit(mut self) -> Result<Vec<PathBuf>, UserError> {
        let failed = |what: &str, path: &Path, e: std::io::Error| {
            UserError(format!("error: cannot {what} {}: {e}", path.display()))
        };
        let mut staged: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(|e| failed("read", &self.path, e))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| failed("read", &self.path, e))?;
        staged.sort();
        let destination = |from: &Path| self.dir.join(from.file_name().expect("a directory entry has a name"));
        for from in &staged {
            let to = destination(from);
            if let Ok(existing) = std::fs::symlink_metadata(&to)
                && existing.is_dir() != from.is_dir()
            {
                let kind = if existing.is_dir() { "a directory" } else { "a file" };
                return Err(UserError(format!(
                    "error: cannot write {}: {kind} of that name is in the way (nothing was written)",
                    to.display()
                )));
            }
        }
        let mut written = Vec::new();
        for from in &staged {
            let to = destination(from);
            if from.is_dir() && to.exists() {
                std::fs::remove_dir_all(&to).map_err(|e| failed("replace", &to, e))?;
            }
            std::fs::rename(from, &to).map_err(|e| failed("write", &to, e))?;
            written.push(to);
        }
        self.committed = true;
        let _ = std::fs::remove_dir(&self.path);
        Ok(written)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
