//! Embedding a network in a Rust program from its `build.rs`, in the style of `cc` and
//! `prost-build`:
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), cnnc::build::Error> {
//!     cnnc::build::Model::new("net.cnn").weights("net.safetensors").compile()?;
//!     Ok(())
//! }
//! ```
//!
//! ```ignore
//! // src/main.rs: the wrapper is a module named after the model (`network NAME`).
//! include!(concat!(env!("OUT_DIR"), "/net.rs"));
//! let output = net::infer(&input); // &[f32; INPUT_LEN] -> [f32; OUTPUT_LEN]
//! ```
//!
//! [`Model::compile`] builds the graph (optimized at O2, weights bound), compiles it to an
//! object file with the Cranelift backend (`NAME.o`, and the C header `NAME.h`), archives
//! the object into `libcnnc_NAME.a` (written here, so no `ar` program is needed), tells
//! Cargo to link it (and libm) and to rerun the build script when the network or the
//! weights change, and writes `NAME.rs`: a module `NAME` with the shapes as constants, the
//! `extern "C"` declarations, a `Model` that owns an aligned arena and safe `infer`
//! functions with fixed-size arrays (one input and one output) or checked slices.
//!
//! Without [`Model::target_triple`], a build for the host (Cargo's `TARGET` equal to its
//! `HOST`) uses every CPU feature of the building machine, as `cnnc build` does; when the
//! binary runs on other machines, pass the target triple (`std::env::var("TARGET")`) to
//! get baseline CPU features. A cross build uses Cargo's `TARGET` on its own.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::front::BuildOptions;
use crate::ir::{Graph, Op};

/// A build-script failure, with a message for the user (several lines for source
/// diagnostics). `Debug` prints the message as is, so `fn main() -> Result<(), Error>`
/// shows it readably.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[derive(Clone, Debug)]
enum WeightSource {
    None,
    File(PathBuf),
    Random(u64),
}

/// A network to compile and link into the crate whose build script this is.
#[derive(Clone, Debug)]
pub struct Model {
    source: PathBuf,
    weights: WeightSource,
    name: Option<String>,
    batch: usize,
    out_dir: Option<PathBuf>,
    target_triple: Option<String>,
    cargo_metadata: bool,
    precision: crate::precision::Precision,
    calibration: Option<PathBuf>,
    auto: Option<AutoPrecision>,
}

/// What [`Model::auto_precision`] chooses within.
#[derive(Clone, Debug)]
struct AutoPrecision {
    max_error: f64,
    inputs: PathBuf,
    metric: crate::auto_precision::Metric,
}

/// What [`Model::compile`] wrote.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The model's name: the wrapper module, the C symbols' prefix and the files' stem.
    pub name: String,
    /// `OUT_DIR/NAME.o`.
    pub object: PathBuf,
    /// `OUT_DIR/NAME.h`.
    pub header: PathBuf,
    /// `OUT_DIR/libcnnc_NAME.a`.
    pub archive: PathBuf,
    /// `OUT_DIR/NAME.rs`, the wrapper to `include!`.
    pub wrapper: PathBuf,
    /// The shape of every input, batch first.
    pub input_shapes: Vec<Vec<usize>>,
    /// The shape of every output, batch first.
    pub output_shapes: Vec<Vec<usize>>,
    /// Bytes of scratch memory one inference needs.
    pub arena_bytes: usize,
}

impl Model {
    /// The network in the `.cnn` file at `source` (relative paths are relative to the
    /// crate's directory, where Cargo runs build scripts).
    pub fn new(source: impl AsRef<Path>) -> Model {
        Model {
            source: source.as_ref().to_path_buf(),
            weights: WeightSource::None,
            name: None,
            batch: 1,
            out_dir: None,
            target_triple: None,
            cargo_metadata: true,
            precision: crate::precision::Precision::F32,
            calibration: None,
            auto: None,
        }
    }

    /// Binds the weights in a safetensors file (strictly: every parameter present, with
    /// its shape, and nothing else).
    pub fn weights(mut self, path: impl AsRef<Path>) -> Model {
        self.weights = WeightSource::File(path.as_ref().to_path_buf());
        self
    }

    /// Binds deterministic random weights (`cnnc::weights::random_weights(graph, seed)`,
    /// the same as `cnnc build --random-weights --seed SEED`).
    pub fn random_weights(mut self, seed: u64) -> Model {
        self.weights = WeightSource::Random(seed);
        self
    }

    /// The name of the module, the C symbols and the files (a Rust and C identifier);
    /// the network's own name (`network NAME`) by default.
    pub fn name(mut self, name: impl Into<String>) -> Model {
        self.name = Some(name.into());
        self
    }

    /// The batch size, fixed at build time (1 by default).
    pub fn batch(mut self, batch: usize) -> Model {
        self.batch = batch;
        self
    }

    /// Where to write the files (Cargo's `OUT_DIR` by default).
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Model {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Compiles for this target triple with its baseline CPU features (see the module
    /// documentation for the default).
    pub fn target_triple(mut self, triple: impl Into<String>) -> Model {
        self.target_triple = Some(triple.into());
        self
    }

    /// The arithmetic of the conv and linear layers (`--precision`; f32 by default; see
    /// [`crate::precision`]). The header lists the layers that do not run in f32.
    pub fn precision(mut self, precision: crate::precision::Precision) -> Model {
        self.precision = precision;
        self
    }

    /// Runs the conv and linear layers in int8 (`--precision int8 --calib FILE`), with
    /// the input quantization of the calibration file `NET.calib.json` made by `cnnc
    /// calibrate` for this network (see [`crate::calibrate`]; a file that does not match
    /// the network is an error naming the layers). Replaces [`Model::precision`].
    pub fn int8(mut self, calibration: impl AsRef<Path>) -> Model {
        self.calibration = Some(calibration.as_ref().to_path_buf());
        self.precision = crate::precision::Precision::F32;
        self.auto = None;
        self
    }

    /// Chooses each conv and linear layer's precision (`--precision auto --max-error E
    /// --calib FILE --calib-inputs X.npy`, see [`crate::auto_precision`]): the fastest of
    /// f32, bf16 and int8, timed on the machine that runs the build script, that keeps
    /// the network's relative L2 error against f32 (or, with [`Model::budget_metric`],
    /// the fraction of top-1 changes) on the inputs at most `max_error`. `calibration`
    /// is the file `cnnc calibrate` made for this network; `inputs` an .npy float32
    /// batch `[N, C, H, W]` (or `[C, H, W]`), usually the calibration's own inputs.
    /// The report is printed as `cargo:warning` lines when the cargo metadata is on.
    /// Replaces [`Model::precision`] and [`Model::int8`]; refused for a cross build
    /// (the timings are this machine's).
    pub fn auto_precision(mut self, max_error: f64, calibration: impl AsRef<Path>, inputs: impl AsRef<Path>) -> Model {
        self.calibration = Some(calibration.as_ref().to_path_buf());
        self.precision = crate::precision::Precision::F32;
        let metric = self.auto.as_ref().map_or_else(Default::default, |a| a.metric);
        self.auto = Some(AutoPrecision { max_error, inputs: inputs.as_ref().to_path_buf(), metric });
        self
    }

    /// How [`Model::auto_precision`] measures the error: relative L2 (the default) or the
    /// fraction of inputs whose top-1 class changes. Call it after `auto_precision`.
    pub fn budget_metric(mut self, metric: crate::auto_precision::Metric) -> Model {
        if let Some(auto) = &mut self.auto {
            auto.metric = metric;
        }
        self
    }

    /// Whether to print the `cargo:` lines that link the archive and rerun the build
    /// script (on by default; off to only write the files).
    pub fn cargo_metadata(mut self, on: bool) -> Model {
        self.cargo_metadata = on;
        self
    }

    /// Builds, writes and links the model; see the module documentation.
    pub fn compile(&self) -> Result<Compiled, Error> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("OUT_DIR").map(PathBuf::from).ok_or_else(|| {
                Error::new("cnnc::build: OUT_DIR is not set: call this from a build script, or set .out_dir(..)")
            })?,
        };
        if self.batch == 0 {
            return Err(Error::new("cnnc::build: the batch size must be at least 1"));
        }
        let mut graph = self.graph()?;
        if self.precision.is_int8() {
            return Err(Error::new("cnnc::build: int8 takes a calibration: use .int8(\"NET.calib.json\")"));
        }
        crate::precision::assign(&mut graph, self.precision);
        let triple = self.triple();
        if let Some(auto) = &self.auto {
            if triple.is_some() {
                return Err(Error::new(
                    "cnnc::build: auto_precision times the layers on this machine: it cannot choose for another target",
                ));
            }
            let choice = self.choose(auto, &graph)?;
            if self.cargo_metadata {
                for line in choice.to_string().lines() {
                    println!("cargo:warning={line}");
                }
            }
            choice.apply(&mut graph).map_err(|e| Error::new(format!("cnnc::build: {e}")))?;
        } else if let Some(path) = &self.calibration {
            let failed = |e: String| Error::new(format!("cnnc::build: {}: {e}", path.display()));
            let bytes = crate::io::read_file(path, 64 << 20, "calibration file").map_err(|e| failed(e.to_string()))?;
            let text = String::from_utf8(bytes).map_err(|_| failed("the calibration file is not UTF-8 text".into()))?;
            crate::calibrate::Calibration::from_json(&text).and_then(|c| c.assign(&mut graph)).map_err(failed)?;
        }
        let name = self.name.clone().unwrap_or_else(|| graph.name.clone());
        if !is_identifier(&name) || is_rust_keyword(&name) {
            return Err(Error::new(format!(
                "cnnc::build: `{name}` cannot name the model's module and C symbols: use letters, digits and `_`, \
                 not starting with a digit (set another with .name(..))"
            )));
        }
        let artifacts = crate::backend::clif::compile_object(&graph, &name, triple.as_deref())
            .map_err(|e| Error::new(format!("cnnc::build: {}: {e}", self.source.display())))?;
        let arena_bytes = header_arena_bytes(&artifacts.header, &name).unwrap_or_else(|| arena_bytes(&graph));

        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Error::new(format!("cnnc::build: cannot create {}: {e}", out_dir.display())))?;
        let write = |file: String, bytes: &[u8]| -> Result<PathBuf, Error> {
            let path = out_dir.join(file);
            std::fs::write(&path, bytes)
                .map_err(|e| Error::new(format!("cnnc::build: cannot write {}: {e}", path.display())))?;
            Ok(path)
        };
        let apple = triple_or_target(triple.as_deref()).is_some_and(|t| t.contains("apple"));
        let symbol = |s: &str| if apple { format!("_{name}{s}") } else { format!("{name}{s}") };
        let archive_bytes =
            archive(&format!("{name}.o"), &artifacts.object, &[symbol("_infer"), symbol("_arena_bytes")]);
        let object = write(format!("{name}.o"), &artifacts.object)?;
        let header = write(format!("{name}.h"), artifacts.header.as_bytes())?;
        let archive = write(format!("libcnnc_{name}.a"), &archive_bytes)?;
        let input_shapes: Vec<Vec<usize>> = graph.inputs.iter().map(|&id| graph.node(id).shape.clone()).collect();
        let output_shapes: Vec<Vec<usize>> = graph.outputs.iter().map(|o| graph.node(o.node).shape.clone()).collect();
        let wrapper = write(format!("{name}.rs"), wrapper(&graph, &name, arena_bytes, &self.source).as_bytes())?;

        if self.cargo_metadata {
            println!("cargo:rustc-link-search=native={}", out_dir.display());
            println!("cargo:rustc-link-lib=static=cnnc_{name}");
            if !std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows") {
                println!("cargo:rustc-link-lib=m");
            }
            println!("cargo:rerun-if-changed={}", self.source.display());
            if let WeightSource::File(path) = &self.weights {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            if let Some(path) = &self.calibration {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        Ok(Compiled { name, object, header, archive, wrapper, input_shapes, output_shapes, arena_bytes })
    }

    /// The triple to compile for: the one given, else Cargo's `TARGET` when it is not the
    /// host, else `None` (the host with its CPU features).
    fn triple(&self) -> Option<String> {
        if let Some(triple) = &self.target_triple {
            return Some(triple.clone());
        }
        match (std::env::var("TARGET"), std::env::var("HOST")) {
            (Ok(target), Ok(host)) if target != host => Some(target),
            _ => None,
        }
    }

    /// `auto_precision`: timed on `graph` (at the model's batch), errors measured at
    /// batch 1 on the inputs.
    fn choose(&self, auto: &AutoPrecision, graph: &Graph) -> Result<crate::auto_precision::Choice, Error> {
        let path = self.calibration.as_ref().expect("auto_precision sets it");
        let failed = |e: String| Error::new(format!("cnnc::build: {}: {e}", path.display()));
        let bytes = crate::io::read_file(path, 64 << 20, "calibration file").map_err(|e| failed(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| failed("the calibration file is not UTF-8 text".into()))?;
        let calibration = crate::calibrate::Calibration::from_json(&text).map_err(failed)?;
        let one = if self.batch == 1 { graph.clone() } else { self.graph_at(1)? };
        let inputs_failed = |e: String| Error::new(format!("cnnc::build: {}: {e}", auto.inputs.display()));
        let bytes = crate::io::read_file(&auto.inputs, MAX_INPUTS_BYTES, "calibration inputs")
            .map_err(|e| inputs_failed(e.to_string()))?;
        let batch = crate::io::read_npy(&bytes).map_err(|e| inputs_failed(e.to_string()))?;
        let runs = crate::auto_precision::runs_of_items(&one, batch).map_err(inputs_failed)?;
        let options =
            crate::auto_precision::Options { cpu: None, threads: None, max_error: auto.max_error, metric: auto.metric };
        let timings = crate::auto_precision::measure_times(graph, &calibration, &options).map_err(failed)?;
        crate::auto_precision::choose(&one, &calibration, &runs, &timings, &options)
            .map_err(|e| Error::new(format!("cnnc::build: auto_precision: {e}")))
    }

    /// The graph: parsed, weights bound, optimized at O2.
    fn graph(&self) -> Result<Graph, Error> {
        self.graph_at(self.batch)
    }

    /// The graph at a batch size.
    fn graph_at(&self, batch: usize) -> Result<Graph, Error> {
        let path = &self.source;
        let bytes =
            std::fs::read(path).map_err(|e| Error::new(format!("cnnc::build: cannot read {}: {e}", path.display())))?;
        let options = BuildOptions { batch, input_shape: None };
        let file_name = path.display().to_string();
        let mut graph = crate::front::compile_bytes(&bytes, &options).map_err(|diags| {
            let source = String::from_utf8_lossy(&bytes);
            Error::new(crate::diag::render(&file_name, &source, &diags))
        })?;
        graph.weights = match &self.weights {
            WeightSource::None => {
                return Err(Error::new(format!(
                    "cnnc::build: {file_name}: no weights: call .weights(\"FILE.safetensors\") or .random_weights(SEED)"
                )));
            }
            WeightSource::Random(seed) => crate::weights::random_weights(&graph, *seed),
            WeightSource::File(weights) => {
                let bytes = std::fs::read(weights)
                    .map_err(|e| Error::new(format!("cnnc::build: cannot read {}: {e}", weights.display())))?;
                crate::weights::load_safetensors(&bytes, &graph, false)
                    .map_err(|e| Error::new(format!("cnnc::build: {}: {e}", weights.display())))?
            }
        };
        crate::passes::optimize_for(&mut graph, crate::passes::OptLevel::O2, crate::passes::Capabilities::CPU)
            .map_err(|e| Error::new(format!("cnnc::build: {file_name}: {e}")))?;
        if graph.memory.is_none() {
            crate::passes::plan_memory(&mut graph);
        }
        Ok(graph)
    }
}

/// The largest .npy file of inputs [`Model::auto_precision`] reads.
const MAX_INPUTS_BYTES: u64 = 1 << 30;

/// The given triple or Cargo's `TARGET`.
fn triple_or_target(triple: Option<&str>) -> Option<String> {
    triple.map(str::to_string).or_else(|| std::env::var("TARGET").ok())
}

/// The arena size the object reports, from the header's `#define NAME_ARENA_BYTES N`.
fn header_arena_bytes(header: &str, name: &str) -> Option<usize> {
    let prefix = format!("#define {}_ARENA_BYTES ", name.to_ascii_uppercase());
    header.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// The memory plan's total (the fallback for the above).
fn arena_bytes(graph: &Graph) -> usize {
    graph.memory.as_ref().map_or(0, |m| m.arena_bytes)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name != "_"
}

fn is_rust_keyword(name: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
        "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self",
        "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract",
        "become", "box", "do", "final", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
    ];
    KEYWORDS.contains(&name)
}

/// A static library (`ar` archive, GNU/System V format with a symbol index, which ELF and
/// COFF linkers read) holding one object that defines `symbols`.
fn archive(member: &str, object: &[u8], symbols: &[String]) -> Vec<u8> {
    fn header(out: &mut Vec<u8>, name: &str, size: usize) {
        let text = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, 644);
        debug_assert_eq!(text.len(), 60);
        out.extend_from_slice(text.as_bytes());
    }
    fn pad(out: &mut Vec<u8>) {
        if out.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    // The member name, `NAME.o/`, must fit in 16 bytes without a long-name table.
    let member_name = if member.len() < 16 { format!("{member}/") } else { "cnnc.o/".to_string() };
    let mut index = Vec::new();
    index.extend_from_slice(&(symbols.len() as u32).to_be_bytes());
    let names_len: usize = symbols.iter().map(|s| s.len() + 1).sum();
    let index_len = 4 + 4 * symbols.len() + names_len;
    // The object's header follows the magic, the index's header and the (even) index.
    let object_offset = 8 + 60 + index_len + index_len % 2;
    for _ in symbols {
        index.extend_from_slice(&(object_offset as u32).to_be_bytes());
    }
    for symbol in symbols {
        index.extend_from_slice(symbol.as_bytes());
        index.push(0);
    }
    let mut out = b"!<arch>\n".to_vec();
    header(&mut out, "/", index.len());
    out.extend_from_slice(&index);
    pad(&mut out);
    debug_assert_eq!(out.len(), object_offset);
    header(&mut out, &member_name, object.len());
    out.extend_from_slice(object);
    pad(&mut out);
    out
}

/// A Rust string literal for `s` (Debug quoting is valid Rust for any string).
fn literal(s: &str) -> String {
    format!("{s:?}")
}

fn shape_literal(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// The Rust wrapper module.
fn wrapper(graph: &Graph, name: &str, arena_bytes: usize, source: &Path) -> String {
    let inputs: Vec<(String, Vec<usize>)> = graph
        .inputs
        .iter()
        .map(|&id| {
            let node = graph.node(id);
            let input_name = match &node.op {
                Op::Input { name } => name.clone(),
                _ => node.name.clone(),
            };
            (input_name, node.shape.clone())
        })
        .collect();
    let outputs: Vec<(String, Vec<usize>)> =
        graph.outputs.iter().map(|o| (o.name.clone(), graph.node(o.node).shape.clone())).collect();
    let floats = |shape: &Vec<usize>| shape.iter().product::<usize>();
    let input_len: usize = inputs.iter().map(|(_, s)| floats(s)).sum();
    let output_len: usize = outputs.iter().map(|(_, s)| floats(s)).sum();
    let single = inputs.len() == 1 && outputs.len() == 1;
    // Up to 16 KiB of output is returned by value, more in a box.
    let boxed = output_len > 4096;

    let mut s = String::new();
    let mut w = |line: &str| {
        s.push_str(line);
        s.push('\n');
    };
    w(&format!("// Generated by cnnc::build from {}; do not edit.", literal(&source.display().to_string())));
    w(&format!(
        "/// Network `{}` compiled to native code by cnnc (Cranelift), batch size fixed at build time.",
        graph.name
    ));
    w("///");
    w("/// Tensors are `f32`, row-major (NCHW), batch first; several inputs (outputs) lie one after");
    w("/// another in one buffer, in declaration order.");
    w("#[allow(dead_code, clippy::all)]");
    w(&format!("pub mod {name} {{"));
    w("    mod ffi {");
    w("        unsafe extern \"C\" {");
    w(&format!(
        "            pub fn {name}_infer(input: *const f32, output: *mut f32, arena: *mut ::core::ffi::c_void) -> ::core::ffi::c_int;"
    ));
    w(&format!("            pub fn {name}_arena_bytes() -> usize;"));
    w("        }");
    w("    }");
    w("");
    w(&format!(
        "    /// The batch size the model was compiled for.\n    pub const BATCH: usize = {};",
        inputs.first().and_then(|(_, s)| s.first()).copied().unwrap_or(1)
    ));
    let names = |list: &[(String, Vec<usize>)]| list.iter().map(|(n, _)| literal(n)).collect::<Vec<_>>().join(", ");
    let shapes = |list: &[(String, Vec<usize>)]| {
        list.iter().map(|(_, s)| format!("&{}", shape_literal(s))).collect::<Vec<_>>().join(", ")
    };
    w(&format!(
        "    /// The inputs' names, in order.\n    pub const INPUT_NAMES: [&str; {}] = [{}];",
        inputs.len(),
        names(&inputs)
    ));
    w(&format!(
        "    /// The inputs' shapes, in order.\n    pub const INPUT_SHAPES: [&[usize]; {}] = [{}];",
        inputs.len(),
        shapes(&inputs)
    ));
    w(&format!(
        "    /// The outputs' names, in order.\n    pub const OUTPUT_NAMES: [&str; {}] = [{}];",
        outputs.len(),
        names(&outputs)
    ));
    w(&format!(
        "    /// The outputs' shapes, in order.\n    pub const OUTPUT_SHAPES: [&[usize]; {}] = [{}];",
        outputs.len(),
        shapes(&outputs)
    ));
    if let [(_, shape)] = inputs.as_slice() {
        w(&format!(
            "    /// The input's shape.\n    pub const INPUT_SHAPE: [usize; {}] = {};",
            shape.len(),
            shape_literal(shape)
        ));
    }
    if let [(_, shape)] = outputs.as_slice() {
        w(&format!(
            "    /// The output's shape.\n    pub const OUTPUT_SHAPE: [usize; {}] = {};",
            shape.len(),
            shape_literal(shape)
        ));
    }
    w(&format!("    /// Floats in the input buffer (all inputs).\n    pub const INPUT_LEN: usize = {input_len};"));
    w(&format!("    /// Floats in the output buffer (all outputs).\n    pub const OUTPUT_LEN: usize = {output_len};"));
    w(&format!(
        "    /// Bytes of scratch memory one inference needs.\n    pub const ARENA_BYTES: usize = {arena_bytes};"
    ));
    w("");
    w("    #[derive(Clone, Copy)]");
    w("    #[repr(C, align(64))]");
    w("    struct Line([u8; 64]);");
    w("");
    w("    /// The compiled network with its own scratch memory; one per thread (it is `Send`).");
    w("    pub struct Model {");
    w("        arena: ::std::vec::Vec<Line>,");
    w("    }");
    w("");
    w("    impl Default for Model {");
    w("        fn default() -> Self {");
    w("            Self::new()");
    w("        }");
    w("    }");
    w("");
    w("    impl Model {");
    w("        /// Allocates the arena (64-byte aligned).");
    w("        pub fn new() -> Model {");
    w(&format!("            // SAFETY: `{name}_arena_bytes` only returns a constant."));
    w(&format!("            let bytes = unsafe {{ ffi::{name}_arena_bytes() }};"));
    w("            Model { arena: ::std::vec![Line([0; 64]); bytes.div_ceil(64).max(1)] }");
    w("        }");
    w("");
    w("        /// Runs the network on `input` (`INPUT_LEN` floats) into `output` (`OUTPUT_LEN`");
    w("        /// floats); an error names the buffer whose length is wrong.");
    w(
        "        pub fn infer_slices(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), ::std::string::String> {",
    );
    w("            if input.len() != INPUT_LEN {");
    w(
        "                return Err(::std::format!(\"the input has {} floats, the model reads {}\", input.len(), INPUT_LEN));",
    );
    w("            }");
    w("            if output.len() != OUTPUT_LEN {");
    w(
        "                return Err(::std::format!(\"the output has {} floats, the model writes {}\", output.len(), OUTPUT_LEN));",
    );
    w("            }");
    w(&format!("            // SAFETY: the buffers have the lengths `{name}_infer` reads and writes, the arena"));
    w("            // at least the bytes it asked for, and the output is not aliased.");
    w(&format!(
        "            let status = unsafe {{ ffi::{name}_infer(input.as_ptr(), output.as_mut_ptr(), self.arena.as_mut_ptr().cast()) }};"
    ));
    w("            assert_eq!(status, 0, \"the compiled network failed\");");
    w("            Ok(())");
    w("        }");
    if single {
        let ret =
            if boxed { format!("::std::boxed::Box<[f32; {output_len}]>") } else { format!("[f32; {output_len}]") };
        let make = if boxed {
            format!("::std::vec![0.0f32; {output_len}].into_boxed_slice().try_into().expect(\"length\")")
        } else {
            format!("[0.0f32; {output_len}]")
        };
        w("");
        w("        /// Runs the network on one input tensor and returns the output tensor.");
        w(&format!("        pub fn infer(&mut self, input: &[f32; {input_len}]) -> {ret} {{"));
        w(&format!("            let mut output: {ret} = {make};"));
        w("            self.infer_into(input, &mut output);");
        w("            output");
        w("        }");
        w("");
        w("        /// Runs the network on one input tensor into `output`.");
        w(&format!(
            "        pub fn infer_into(&mut self, input: &[f32; {input_len}], output: &mut [f32; {output_len}]) {{"
        ));
        w("            self.infer_slices(&input[..], &mut output[..]).expect(\"the lengths are fixed\");");
        w("        }");
        w("    }");
        w("");
        w("    /// Runs the network once, with a fresh arena (keep a [`Model`] to reuse one).");
        w(&format!("    pub fn infer(input: &[f32; {input_len}]) -> {ret} {{"));
        w("        Model::new().infer(input)");
        w("    }");
    } else {
        w("");
        w("        /// Runs the network on its inputs, one slice each (`INPUT_SHAPES` order and sizes),");
        w("        /// and returns its outputs (`OUTPUT_SHAPES`); panics when a slice has the wrong");
        w("        /// length or there is not one per input.");
        w("        pub fn infer(&mut self, inputs: &[&[f32]]) -> ::std::vec::Vec<::std::vec::Vec<f32>> {");
        w("            assert_eq!(inputs.len(), INPUT_SHAPES.len(), \"the model has {} inputs\", INPUT_SHAPES.len());");
        w("            let mut input = ::std::vec::Vec::with_capacity(INPUT_LEN);");
        w("            for ((data, shape), name) in inputs.iter().zip(INPUT_SHAPES).zip(INPUT_NAMES) {");
        w("                let len: usize = shape.iter().product();");
        w(
            "                assert_eq!(data.len(), len, \"input `{}` has {} floats, the model reads {}\", name, data.len(), len);",
        );
        w("                input.extend_from_slice(data);");
        w("            }");
        w("            let mut output = ::std::vec![0.0f32; OUTPUT_LEN];");
        w("            self.infer_slices(&input, &mut output).expect(\"the lengths are checked\");");
        w("            let mut outputs = ::std::vec::Vec::with_capacity(OUTPUT_SHAPES.len());");
        w("            let mut rest = &output[..];");
        w("            for shape in OUTPUT_SHAPES {");
        w("                let (head, tail) = rest.split_at(shape.iter().product());");
        w("                outputs.push(head.to_vec());");
        w("                rest = tail;");
        w("            }");
        w("            outputs");
        w("        }");
        w("    }");
        w("");
        w("    /// Runs the network once, with a fresh arena (keep a [`Model`] to reuse one).");
        w("    pub fn infer(inputs: &[&[f32]]) -> ::std::vec::Vec<::std::vec::Vec<f32>> {");
        w("        Model::new().infer(inputs)");
        w("    }");
    }
    w("}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let bytes = archive("net.o", b"abc", &["net_infer".into(), "net_arena_bytes".into()]);
        assert!(bytes.starts_with(b"!<arch>\n/               0           0     0     644     "));
        assert_eq!(bytes.len() % 2, 0);
        let index_len = 4 + 8 + "net_infer".len() + 1 + "net_arena_bytes".len() + 1;
        let offset = 8 + 60 + index_len + index_len % 2;
        assert_eq!(&bytes[8 + 60..8 + 64], &2u32.to_be_bytes());
        assert_eq!(&bytes[8 + 64..8 + 68], &(offset as u32).to_be_bytes());
        assert_eq!(&bytes[offset..offset + 6], b"net.o/");
        assert_eq!(&bytes[offset + 60..offset + 63], b"abc");
    }

    #[test]
    fn names() {
        assert!(is_identifier("lenet5") && !is_identifier("5net") && !is_identifier("a-b") && !is_identifier("_"));
        assert!(is_rust_keyword("fn") && !is_rust_keyword("net"));
    }
}
