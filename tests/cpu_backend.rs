//! The Cranelift CPU backend against the reference interpreter: one program, several
//! executors.
//!
//! - Every `examples/*.cnn` at batch 1 and 4, random weights and inputs from fixed seeds,
//!   the reference interpreter run once on the O2 graph and three executors compared with
//!   it (relative L2 error <= 1e-4 per output, the same argmax per row): the JIT; the
//!   object file and header, linked with `cc` into `examples/embed_c/main.c` (run on one
//!   thread, and on two through `NAME_infer_part` and a pthread barrier, which must give
//!   the same bits); the Rust
//!   wrapper, built by `cnnc::build` in `examples/embed_rust`'s build script (the example
//!   network, batch and weight seed passed in environment variables, so each one is a
//!   build-script rerun and a relink) and run by its `network` binary. Failures are
//!   collected and reported together, the JIT's with the first node whose value diverges.
//!   Batch 4 for every example, VGG-16 and the AlexNets included: their reference runs at
//!   batch 4 took 8.7 s and 3 s each (the whole file 5.3 min, of which the reference runs
//!   81 s, the JIT 18 s, C 36 s, the Rust wrapper 143 s, measured warm on the 2-core
//!   development machine while other work ran on it).
//! - Every `tests/programs/*.cnn` plus the small programs below (one per op variant) at
//!   batch 1 and 3 (and at -O0), through the JIT.
//! - An AArch64 object is produced and checked.
//! - Every example runs with its input, output and arena against `PROT_NONE` pages.
//! - Timings: ResNet-50's compile time, ResNet-18's JIT run against the interpreter's.
//!
//! `CNNC_CPU_FILTER=substring` limits the example runs to matching file names. The first
//! run builds `examples/embed_rust`, with cnnc as its build dependency, in
//! `target/embed_rust` (minutes, once). Benchmarks of code generator variants are
//! `#[ignore]`d: `cargo test --test cpu_backend bench -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cnnc::backend::clif;
use cnnc::ir::{Graph, Op, Output};
use cnnc::passes::OptLevel;
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

#[allow(dead_code)]
mod common;

const TOLERANCE: f64 = 1e-4;
const WEIGHT_SEED: u64 = 0x5eed;
const INPUT_SEED: u64 = 0x1e9;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn filter() -> String {
    std::env::var("CNNC_CPU_FILTER").unwrap_or_default()
}

fn compile(source: &str, batch: usize, level: OptLevel) -> Result<Graph, String> {
    common::random_graph(source, batch, WEIGHT_SEED, level)
}

fn optimized(source: &str, batch: usize) -> Result<Graph, String> {
    compile(source, batch, OptLevel::O2)
}

fn random_inputs(graph: &Graph) -> Vec<Tensor> {
    common::random_inputs(graph, INPUT_SEED)
}

/// Compares outputs one by one; the largest relative error, or the disagreements.
fn compare(graph: &Graph, got: &[Tensor], reference: &[Tensor]) -> Result<f64, String> {
    let mut problems = Vec::new();
    let mut max_error = 0.0f64;
    if got.len() != reference.len() {
        return Err(format!("{} outputs, the reference has {}", got.len(), reference.len()));
    }
    for ((output, a), b) in graph.outputs.iter().zip(got).zip(reference) {
        if a.shape != b.shape {
            problems.push(format!("output `{}`: shape {} vs {}", output.name, a.shape_string(), b.shape_string()));
            continue;
        }
        let error = relative_l2(&a.data, &b.data);
        max_error = max_error.max(error);
        if error.is_nan() || error > TOLERANCE {
            problems.push(format!("output `{}`: relative L2 error {error:.3e} > {TOLERANCE:e}", output.name));
        }
        let (ours, theirs) = (argmax_rows(a), argmax_rows(b));
        if ours != theirs {
            problems.push(format!("output `{}`: argmax per row {ours:?}, the reference {theirs:?}", output.name));
        }
    }
    if problems.is_empty() { Ok(max_error) } else { Err(problems.join("; ")) }
}

/// The first node, in topological order, whose JIT value disagrees with the reference:
/// every node becomes an output (outputs live outside the arena, so nothing is
/// overwritten) and memory is planned again.
fn first_bad_node(graph: &Graph, inputs: &[Tensor]) -> String {
    let mut traced = graph.clone();
    let order = traced.topo_order().unwrap_or_default();
    for &id in &order {
        if !traced.is_output(id) && !matches!(traced.node(id).op, Op::Input { .. }) {
            traced.outputs.push(Output { name: format!("__trace_{}", id.0.index()), node: id });
        }
    }
    cnnc::passes::plan_memory(&mut traced);
    let reference = match cnnc::interp::run(&traced, &traced.weights, inputs) {
        Ok(r) => r,
        Err(e) => return format!("(tracing: the interpreter failed: {e})"),
    };
    let got = match clif::compile_jit(&traced).and_then(|m| m.run(inputs)) {
        Ok(g) => g,
        Err(e) => return format!("(tracing: the JIT failed: {e})"),
    };
    for &id in &order {
        let Some(p) = traced.outputs.iter().position(|o| o.node == id) else { continue };
        let error = relative_l2(&got[p].data, &reference[p].data);
        if error.is_nan() || error > TOLERANCE {
            let node = traced.node(id);
            return format!(
                "first diverging node: `{}` ({} {}, epilogue {:?}): relative L2 error {error:.3e}",
                node.name,
                node.op.mnemonic(),
                node.op.attributes(),
                node.epilogue
            );
        }
    }
    "every node agrees when traced".into()
}

/// JIT against the interpreter on one graph: the largest relative error.
fn check_graph(graph: &Graph) -> Result<f64, String> {
    let inputs = random_inputs(graph);
    let reference = cnnc::interp::run(graph, &graph.weights, &inputs).map_err(|e| format!("interpreter: {e}"))?;
    let (got, _) = run_jit(graph, &inputs)?;
    compare(graph, &got, &reference).map_err(|e| format!("{e}; {}", first_bad_node(graph, &inputs)))
}

fn cnn_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the directory exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string()
}

/// One executor's outputs for an example, with what it measured, or why it failed.
type Executed = Result<(Vec<Tensor>, String), String>;

/// An executor bound to one example's graph and inputs.
type Execute<'a> = Box<dyn Fn() -> Executed + 'a>;

/// Every example at batch 1 and 4, one reference run each, against the three ways to run
/// native code: the JIT, the object file linked into C (skipped, loudly, without a C
/// compiler outside CI), the Rust wrapper.
#[test]
fn examples_match_the_reference() {
    let cc = c_compiler();
    let tmp = TempDir::new("examples");
    let mut failures = Vec::new();
    let mut worst: std::collections::BTreeMap<&str, (f64, String)> = Default::default();
    for path in cnn_files(&repo().join("examples")) {
        let name = stem(&path);
        if !name.contains(&filter()) {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable");
        for batch in [1, 4] {
            let graph = match optimized(&source, batch) {
                Ok(graph) => graph,
                Err(e) => {
                    failures.push(format!("{name} batch {batch}: {e}"));
                    continue;
                }
            };
            let inputs = random_inputs(&graph);
            let started = Instant::now();
            let reference = match cnnc::interp::run(&graph, &graph.weights, &inputs) {
                Ok(reference) => reference,
                Err(e) => {
                    failures.push(format!("{name} batch {batch}: the interpreter failed: {e}"));
                    continue;
                }
            };
            let mut line = format!("{name} batch {batch}: reference {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
            let mut executors: Vec<(&str, Execute)> = vec![("JIT", Box::new(|| run_jit(&graph, &inputs)))];
            if let Some(cc) = &cc {
                executors.push(("C", Box::new(|| run_c(cc, &graph, &name, &inputs, &tmp.0))));
            }
            executors.push(("Rust", Box::new(|| run_rust(&path, batch, &graph, &inputs, &tmp.0))));
            for (label, execute) in executors {
                let outcome = execute().and_then(|(got, measured)| {
                    compare(&graph, &got, &reference).map(|error| (error, measured)).map_err(|e| match label {
                        "JIT" => format!("{e}; {}", first_bad_node(&graph, &inputs)),
                        _ => e,
                    })
                });
                match outcome {
                    Ok((error, measured)) => {
                        line += &format!("; {label} {error:.1e} ({measured})");
                        let worst = worst.entry(label).or_insert((0.0, String::new()));
                        if error >= worst.0 {
                            *worst = (error, format!("{name} batch {batch}"));
                        }
                    }
                    Err(e) => failures.push(format!("{name} batch {batch} through {label}: {e}")),
                }
            }
            println!("{line}");
        }
    }
    // Leave the example crate built for its defaults (LeNet-5), not holding the last
    // network's object, archive and binary (1.6 GB for VGG-16).
    let rebuild = common::embed_rust_cargo("build").args(["--bin", "network"]).output().expect("run cargo");
    assert!(rebuild.status.success(), "rebuilding examples/embed_rust: {}", String::from_utf8_lossy(&rebuild.stderr));
    for (label, (error, case)) in &worst {
        println!("largest relative L2 error through {label}: {error:.2e} ({case})");
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// The outputs of the JIT.
fn run_jit(graph: &Graph, inputs: &[Tensor]) -> Executed {
    let started = Instant::now();
    let model = clif::compile_jit(graph)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let got = model.run(inputs)?;
    Ok((got, format!("compile {compile_ms:.0} ms, run {:.1} ms", started.elapsed().as_secs_f64() * 1e3)))
}

/// The outputs of the object file, linked with `cc` into `examples/embed_c/main.c` and
/// run on the inputs written to a file; its files are removed afterwards.
fn run_c(cc: &str, graph: &Graph, name: &str, inputs: &[Tensor], dir: &Path) -> Executed {
    let started = Instant::now();
    let artifacts = clif::compile_object(graph, name, None)?;
    let object_ms = started.elapsed().as_secs_f64() * 1e3;
    for declaration in [
        format!("int {name}_infer(const float *in, float *out, void *arena);"),
        format!("size_t {name}_arena_bytes(void);"),
        format!("int {name}_infer_part(const float *in, float *out, void *arena, size_t part, size_t parts,"),
    ] {
        if !artifacts.header.contains(&declaration) {
            return Err(format!("the header does not declare `{declaration}`"));
        }
    }
    let object = dir.join(format!("{name}.o"));
    let header = dir.join(format!("{name}.h"));
    let (program, input_path, output_path) = (dir.join(name), dir.join("input.f32"), dir.join("output.f32"));
    let threaded_path = dir.join("output2.f32");
    std::fs::write(&object, &artifacts.object).expect("write the object");
    std::fs::write(&header, &artifacts.header).expect("write the header");
    let object_kib = artifacts.object.len() >> 10;
    drop(artifacts);
    common::write_f32_file(&input_path, &inputs.iter().flat_map(|t| t.data.iter().copied()).collect::<Vec<f32>>());
    let started = Instant::now();
    let build = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-I"])
        .arg(dir)
        .arg(format!("-DMODEL={name}"))
        .arg(format!("-DMODEL_HEADER=\"{name}.h\""))
        .arg(repo().join("examples/embed_c/main.c"))
        .arg(&object)
        .args(["-lm", "-o"])
        .arg(&program)
        .output()
        .expect("run the C compiler");
    let link_ms = started.elapsed().as_secs_f64() * 1e3;
    let run = build.status.success().then(|| Command::new(&program).arg(&input_path).arg(&output_path).output());
    // The same run on two threads through `NAME_infer_part` and a pthread barrier.
    let threaded =
        build.status.success().then(|| Command::new(&program).arg(&input_path).arg(&threaded_path).arg("2").output());
    let floats = common::read_f32_file(&output_path);
    let threaded_floats = common::read_f32_file(&threaded_path);
    for file in [&object, &header, &program, &input_path, &output_path, &threaded_path] {
        let _ = std::fs::remove_file(file);
    }
    if !build.status.success() {
        return Err(format!("cc failed:\n{}", String::from_utf8_lossy(&build.stderr)));
    }
    let run = run.expect("built").expect("run the C program");
    if !run.status.success() {
        return Err(format!("the C program failed ({}):\n{}", run.status, String::from_utf8_lossy(&run.stderr)));
    }
    let threaded = threaded.expect("built").expect("run the C program on two threads");
    if !threaded.status.success() {
        let stderr = String::from_utf8_lossy(&threaded.stderr);
        return Err(format!("the C program on two threads failed ({}):\n{stderr}", threaded.status));
    }
    // Threads share out the same tiles: bit for bit the one-thread result.
    let (one, two) = (floats.clone()?, threaded_floats?);
    if one.iter().map(|x| x.to_bits()).ne(two.iter().map(|x| x.to_bits())) {
        return Err("the C program's output on two threads differs from one thread's".into());
    }
    let measured = format!("object {object_kib} KiB in {object_ms:.0} ms, cc {link_ms:.0} ms");
    Ok((split_outputs(graph, &floats?)?, measured))
}

/// The outputs of the Rust wrapper: `examples/embed_rust`'s build script compiles the
/// example with `cnnc::build` at this batch size and weight seed (the same weights as
/// `optimized`'s), and its `network` binary runs it on the inputs written to a file.
fn run_rust(source: &Path, batch: usize, graph: &Graph, inputs: &[Tensor], dir: &Path) -> Executed {
    let (input_path, output_path) = (dir.join("input.f32"), dir.join("output.f32"));
    common::write_f32_file(&input_path, &inputs.iter().flat_map(|t| t.data.iter().copied()).collect::<Vec<f32>>());
    let started = Instant::now();
    let run = common::embed_rust_cargo("run")
        .env("EMBED_RUST_NETWORK", source)
        .env("EMBED_RUST_BATCH", batch.to_string())
        .env("EMBED_RUST_SEED", WEIGHT_SEED.to_string())
        .args(["--bin", "network", "--"])
        .arg(&input_path)
        .arg(&output_path)
        .output()
        .expect("run cargo");
    let build_and_run_ms = started.elapsed().as_secs_f64() * 1e3;
    let floats = common::read_f32_file(&output_path);
    for file in [&input_path, &output_path] {
        let _ = std::fs::remove_file(file);
    }
    if !run.status.success() {
        return Err(format!(
            "cargo run --bin network in examples/embed_rust failed ({}):\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    Ok((split_outputs(graph, &floats?)?, format!("build script, link and run {build_and_run_ms:.0} ms")))
}

/// The graph's outputs, one after another in `floats` (the embedding examples' output).
fn split_outputs(graph: &Graph, floats: &[f32]) -> Result<Vec<Tensor>, String> {
    let mut outputs = Vec::new();
    let mut rest = floats;
    for output in &graph.outputs {
        let shape = graph.node(output.node).shape.clone();
        let n: usize = shape.iter().product();
        if rest.len() < n {
            return Err(format!("{} floats written, the outputs have more", floats.len()));
        }
        outputs.push(Tensor { shape, data: rest[..n].to_vec() });
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(format!("{} floats written, {} more than the outputs", floats.len(), rest.len()));
    }
    Ok(outputs)
}

/// Small programs, one per op variant the examples may not reach.
const OP_PROGRAMS: &[(&str, &str)] = &[
    (
        "conv_variants",
        "network conv_variants {
            input x: [5, 13, 11]
            c1 = x |> conv(7, 3, pad=1) |> relu                       # 7 channels: a partial block
            c2 = c1 |> conv(7, 3, pad=1) |> add(c1) |> leaky_relu(0.1)  # residual, post-activation
            c3 = c2 |> conv(12, (3, 5), stride=(2, 1), pad=(1, 2), dilation=(1, 2)) |> sigmoid
            c4 = c3 |> conv(12, 1, groups=3) |> tanh                  # grouped 1x1
            c5 = c4 |> conv(12, 3, groups=12, pad=1, bias=false)      # depthwise
            c6 = c5 |> conv(20, 2, stride=3)                          # rows and columns left over
            c7 = c6 |> conv(9, 3, pad=2, dilation=2)                  # 2x2: partial tiles
            output c7, c3
        }",
    ),
    (
        "merges",
        "network merges {
            input x: [6, 5, 5]
            a = x |> conv(6, 1)
            b = x |> conv(6, 3, pad=1) |> relu
            s3 = add(a, b, x)                                        # three operands
            g = x |> global_avg_pool                                 # [N, 6, 1, 1]
            m = mul(s3, g)                                           # broadcasting both ways
            m2 = mul(g, s3)
            t = add(m, m2) |> relu                                   # activation fused into add
            cat = concat(t, a, x)
            sm = cat |> softmax                                      # softmax over 4-D
            output sm, t
        }",
    ),
    (
        "pools_and_lrn",
        "network pools_and_lrn {
            input x: [7, 11, 9]
            l1 = x |> lrn(4)                                         # even size
            l2 = x |> lrn(3, alpha=1e-3, beta=0.6, k=1.5)            # beta through powf
            p1 = l1 |> max_pool(3, stride=2, pad=1, ceil=true)
            p2 = l2 |> avg_pool((3, 2), stride=(2, 3), pad=1, ceil=true, count_pad=true)
            p3 = x |> avg_pool(2, stride=1)                          # whole windows
            a = x |> adaptive_avg_pool((4, 5))                       # uneven bins
            m = x |> global_max_pool
            output p1, p2, p3, a, m
        }",
    ),
    (
        "linear_heads",
        "network linear_heads {
            input x: [37]
            h = x |> linear(13) |> tanh
            r = h |> linear(13) |> add(h) |> relu                    # residual on a linear
            y = r |> linear(6, bias=false) |> softmax
            z = r |> linear(3) |> sigmoid
            output y, z
        }",
    ),
    (
        "outputs",
        "network outputs {
            input x: [4, 6, 6]
            a = x |> relu                                            # an output read later
            b = a |> conv(4, 3, pad=1) |> max_pool(2) |> flatten
            output x, a, b                                           # the input is an output too
        }",
    ),
    (
        "structural",
        "network structural {
            input x: [7, 5, 3]
            a, b = x |> split(3, 4)
            p, q, r = x |> chunk(3)                                  # 3, 3, 1 channels
            n = x |> permute(0, 3, 1, 2) |> layer_norm |> linear(6) |> relu  # last dim 5: a tail
            m = x |> permute(2, 0, 3, 1) |> linear(3, bias=false)   # the batch moves
            s = concat(r, a, q, p) |> layer_norm2d |> scale |> channel_shuffle(5)  # 15 positions
            v = x |> flatten |> layer_norm(eps=1e-3)                 # [N, 105]
            output b, p, n, m, s, v
        }",
    ),
];

#[test]
fn programs_match_the_reference() {
    let mut programs: Vec<(String, String)> = cnn_files(&repo().join("tests/programs"))
        .into_iter()
        .map(|p| (stem(&p), std::fs::read_to_string(&p).expect("readable")))
        .collect();
    programs.extend(OP_PROGRAMS.iter().map(|(n, s)| (n.to_string(), s.to_string())));
    let mut failures = Vec::new();
    for (name, source) in &programs {
        for batch in [1, 3] {
            match optimized(source, batch).and_then(|g| check_graph(&g)) {
                Ok(max_error) => println!("{name} batch {batch}: max relative L2 {max_error:.2e}"),
                Err(e) => failures.push(format!("{name} batch {batch}: {e}")),
            }
        }
        // The backend also takes unoptimized graphs (batch norm, dropout, no fusion).
        match compile(source, 2, OptLevel::O0).and_then(|g| check_graph(&g)) {
            Ok(max_error) => println!("{name} -O0 batch 2: max relative L2 {max_error:.2e}"),
            Err(e) => failures.push(format!("{name} -O0 batch 2: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join(format!("examples/{name}.cnn"))).expect("the example exists")
}

/// The median of `runs` timings of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

#[test]
fn compile_and_run_times() {
    let graph = optimized(&example("resnet50"), 1).expect("resnet50 compiles");
    let started = Instant::now();
    let model = clif::compile_jit(&graph).expect("resnet50 JIT-compiles");
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let options = clif::CodegenOptions { verify: false, ..Default::default() };
    let started = Instant::now();
    drop(clif::compile_jit_with(&graph, &options).expect("resnet50 JIT-compiles"));
    let unverified_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "resnet50: JIT compile {compile_ms:.0} ms ({unverified_ms:.0} ms without Cranelift's verifier), arena {} MiB",
        model.arena_bytes() >> 20
    );
    // Generous, for loaded CI machines; the figure above is what counts.
    assert!(unverified_ms < 5000.0, "compiling resnet50 took {unverified_ms:.0} ms");

    let graph = optimized(&example("resnet18"), 1).expect("resnet18 compiles");
    let inputs = random_inputs(&graph);
    let model = clif::compile_jit(&graph).expect("resnet18 JIT-compiles");
    model.run(&inputs).expect("runs");
    let jit_ms = median_ms(5, || {
        model.run(&inputs).expect("runs");
    });
    let reference_ms = median_ms(1, || {
        cnnc::interp::run(&graph, &graph.weights, &inputs).expect("the reference runs");
    });
    println!(
        "resnet18 batch 1: JIT {jit_ms:.1} ms (one thread), reference {reference_ms:.0} ms ({} threads): {:.0}x",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        reference_ms / jit_ms
    );
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("cnnc-cpu-{}-{nanos}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a C compiler is here; without one the C test is skipped, loudly, unless `CI`
/// is set.
fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    match Command::new(&cc).arg("--version").output() {
        Ok(out) if out.status.success() => Some(cc),
        _ if std::env::var_os("CI").is_some() => panic!("no C compiler (`{cc}`) on a CI machine"),
        _ => {
            eprintln!("SKIPPED: no C compiler (`{cc}`); the object-file test did not run");
            None
        }
    }
}

/// The ELF machine of an object file (`e_machine`, little-endian targets).
fn elf_machine(object: &[u8]) -> u16 {
    assert_eq!(&object[..4], b"\x7fELF", "an ELF file");
    u16::from_le_bytes([object[18], object[19]])
}

#[test]
fn objects_for_other_targets() {
    let graph = optimized(&example("lenet5"), 1).expect("compiles");
    let mut objects = Vec::new();
    match clif::compile_object(&graph, "lenet5", Some("aarch64-unknown-linux-gnu")) {
        Ok(aarch64) => {
            assert_eq!(elf_machine(&aarch64.object), 183, "EM_AARCH64");
            objects.push(aarch64.object);
        }
        // Cranelift's AArch64 backend is a cargo feature of cranelift-codegen (`arm64`).
        Err(e) if e.contains("disabled") && std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: the AArch64 object: {e}");
        }
        Err(e) => panic!("an AArch64 object: {e}"),
    }
    let x86_64 = clif::compile_object(&graph, "lenet5", Some("x86_64-unknown-linux-gnu")).expect("an x86-64 object");
    assert_eq!(elf_machine(&x86_64.object), 62, "EM_X86_64");
    objects.push(x86_64.object);
    for object in &objects {
        let text = String::from_utf8_lossy(object);
        assert!(text.contains("lenet5_infer") && text.contains("lenet5_arena_bytes"), "the entry points are named");
    }
    let error = clif::compile_object(&graph, "3lenet", None).expect_err("not a C identifier");
    assert!(error.contains("cannot name C functions"), "{error}");
}

/// Memory from `mmap` with inaccessible pages on both sides of `bytes` usable bytes,
/// which start right after the first guard page (`at_end: false`) or end right before
/// the second (`at_end: true`).
#[cfg(target_os = "linux")]
mod guarded {
    use std::ffi::c_void;

    unsafe extern "C" {
        fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut c_void;
        fn mprotect(addr: *mut c_void, len: usize, prot: i32) -> i32;
        fn munmap(addr: *mut c_void, len: usize) -> i32;
    }

    const PROT_NONE: i32 = 0;
    const PROT_READ_WRITE: i32 = 1 | 2;
    const MAP_PRIVATE_ANONYMOUS: i32 = 0x02 | 0x20;
    const PAGE: usize = 4096;

    pub struct Guarded {
        base: *mut u8,
        len: usize,
        pub ptr: *mut u8,
    }

    impl Guarded {
        pub fn new(bytes: usize, at_end: bool) -> Guarded {
            let inner = bytes.div_ceil(PAGE).max(1) * PAGE;
            let len = inner + 2 * PAGE;
            // SAFETY: a fresh private anonymous mapping; the guard pages are then made
            // inaccessible and only the pages between them are handed out.
            unsafe {
                let base = mmap(std::ptr::null_mut(), len, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0);
                assert!(base as isize != -1, "mmap failed");
                let base = base.cast::<u8>();
                assert_eq!(mprotect(base.cast(), PAGE, PROT_NONE), 0);
                assert_eq!(mprotect(base.add(PAGE + inner).cast(), PAGE, PROT_NONE), 0);
                let ptr = if at_end { base.add(PAGE + inner - bytes) } else { base.add(PAGE) };
                Guarded { base, len, ptr }
            }
        }
    }

    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`.
            unsafe { munmap(self.base.cast(), self.len) };
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn generated_code_stays_inside_its_buffers() {
    use guarded::Guarded;
    let mut failures = Vec::new();
    // Every example at batch 1, every program at batch 3.
    let mut cases: Vec<(String, String, usize)> = Vec::new();
    for path in cnn_files(&repo().join("examples")) {
        cases.push((stem(&path), std::fs::read_to_string(&path).expect("readable"), 1));
    }
    for path in cnn_files(&repo().join("tests/programs")) {
        cases.push((stem(&path), std::fs::read_to_string(&path).expect("readable"), 3));
    }
    cases.extend(OP_PROGRAMS.iter().map(|(n, s)| (n.to_string(), s.to_string(), 3)));
    for (name, source, batch) in cases {
        if !name.contains(&filter()) {
            continue;
        }
        let graph = optimized(&source, batch).expect("compiles");
        let inputs = random_inputs(&graph);
        let model = clif::compile_jit(&graph).expect("JIT-compiles");
        let expected: Vec<f32> = model.run(&inputs).expect("runs").into_iter().flat_map(|t| t.data).collect();
        let input_data: Vec<f32> = inputs.iter().flat_map(|t| t.data.iter().copied()).collect();
        for at_end in [false, true] {
            let input = Guarded::new(4 * model.input_floats(), at_end);
            let output = Guarded::new(4 * model.output_floats(), at_end);
            let arena = Guarded::new(model.arena_bytes(), at_end);
            // SAFETY: each mapping holds its buffer's bytes from `ptr`; a stray access
            // outside them faults (and fails the test run) instead of passing silently.
            let got = unsafe {
                std::ptr::copy_nonoverlapping(input_data.as_ptr(), input.ptr.cast::<f32>(), input_data.len());
                let status = model.run_raw(input.ptr.cast(), output.ptr.cast(), arena.ptr);
                assert_eq!(status, 0);
                std::slice::from_raw_parts(output.ptr.cast::<f32>(), model.output_floats()).to_vec()
            };
            if got != expected {
                failures.push(format!(
                    "{name}: a guarded run (buffers at the {} of their pages) differs",
                    if at_end { "end" } else { "start" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Code generator variants on whole networks at batch 1 (`--ignored`).
#[test]
#[ignore]
fn bench_networks() {
    use clif::{ClifOptLevel, CodegenOptions, MicroKernel};
    let base = CodegenOptions { verify: false, ..CodegenOptions::default() };
    let variants: Vec<(&str, CodegenOptions)> = vec![
        ("default", base.clone()),
        ("opt_level speed", CodegenOptions { opt_level: ClifOptLevel::Speed, ..base.clone() }),
        ("no fma", CodegenOptions { fma: false, ..base.clone() }),
        ("conv 2 vectors", CodegenOptions { conv_vectors: 2, ..base.clone() }),
        ("conv 3 vectors", CodegenOptions { conv_vectors: 3, ..base.clone() }),
        ("weight operands", CodegenOptions { micro_kernel: MicroKernel::WeightOperands, ..base.clone() }),
    ];
    for network in ["resnet18", "vgg16", "resnet50", "googlenet", "densenet121", "alexnet"] {
        if !network.contains(&filter()) {
            continue;
        }
        let graph = optimized(&example(network), 1).expect("compiles");
        let inputs = random_inputs(&graph);
        for (label, options) in &variants {
            let started = Instant::now();
            let model = clif::compile_jit_with(&graph, options).expect("JIT compiles");
            let compile_ms = started.elapsed().as_secs_f64() * 1e3;
            model.run(&inputs).expect("runs");
            let run_ms = median_ms(5, || {
                model.run(&inputs).expect("runs");
            });
            println!("{network:12} {label:16} compile {compile_ms:6.0} ms, run {run_ms:7.1} ms");
        }
    }
}

/// Code generator variants on single layers (`--ignored`), in GFLOP/s.
#[test]
#[ignore]
fn bench_layers() {
    use clif::{CodegenOptions, MicroKernel};
    let layers = [
        ("3x3 64ch 56x56", "network l { input x: [64, 56, 56]\n conv(64, 3, pad=1); relu }", 64 * 64 * 9 * 56 * 56),
        ("3x3 256ch 14x14", "network l { input x: [256, 14, 14]\n conv(256, 3, pad=1); relu }", 256 * 256 * 9 * 196),
        ("1x1 256->64 56x56", "network l { input x: [256, 56, 56]\n conv(64, 1) }", 256 * 64 * 56 * 56),
        ("1x1 1024->512 14x14", "network l { input x: [1024, 14, 14]\n conv(512, 1) }", 1024 * 512 * 196),
        ("3x3 512ch 7x7", "network l { input x: [512, 7, 7]\n conv(512, 3, pad=1) }", 512 * 512 * 9 * 49),
        (
            "7x7/2 3->64 224",
            "network l { input x: [3, 224, 224]\n conv(64, 7, stride=2, pad=3) }",
            3 * 64 * 49 * 112 * 112,
        ),
        ("fc 25088->4096", "network l { input x: [25088]\n linear(4096) }", 25088 * 4096),
    ];
    let base = CodegenOptions { verify: false, ..CodegenOptions::default() };
    let mut variants: Vec<(String, CodegenOptions)> = Vec::new();
    for style in [MicroKernel::Shared, MicroKernel::WeightOperands] {
        for vectors in [2, 3] {
            let options =
                CodegenOptions { micro_kernel: style, conv_vectors: vectors, linear_vectors: vectors, ..base.clone() };
            variants.push((format!("{style:?} x{vectors}"), options));
        }
    }
    for (name, source, macs) in layers {
        let graph = optimized(source, 1).expect("compiles");
        let inputs = random_inputs(&graph);
        for (label, options) in &variants {
            let model = clif::compile_jit_with(&graph, options).expect("JIT compiles");
            let ms = median_ms(7, || {
                model.run(&inputs).expect("runs");
            });
            println!("{name:20} {label:20} {ms:8.2} ms {:6.1} GFLOP/s", 2.0 * macs as f64 / ms / 1e6);
        }
    }
}

/// Per-kernel times of a network at batch 1, the slowest first (`--ignored`;
/// `CNNC_CPU_FILTER` picks the network, resnet50 by default).
#[test]
#[ignore]
fn bench_profile() {
    let network = match filter().as_str() {
        "" => "resnet50".to_string(),
        name => name.to_string(),
    };
    let graph = optimized(&example(&network), 1).expect("compiles");
    let inputs = random_inputs(&graph);
    let options = clif::CodegenOptions { verify: false, profile: true, ..Default::default() };
    let model = clif::compile_jit_with(&graph, &options).expect("JIT compiles");
    model.run(&inputs).expect("runs");
    let mut totals: Vec<(String, f64)> = model.profile(&inputs).expect("profiles");
    for _ in 0..4 {
        for (total, (_, seconds)) in totals.iter_mut().zip(model.profile(&inputs).expect("profiles")) {
            total.1 += seconds;
        }
    }
    let sum: f64 = totals.iter().map(|(_, s)| s).sum::<f64>() / 5.0;
    let mut by_op: std::collections::BTreeMap<String, f64> = Default::default();
    for (name, seconds) in &totals {
        let op = name.rsplit('(').next().unwrap_or_default().trim_end_matches(')').to_string();
        *by_op.entry(op).or_default() += seconds / 5.0;
    }
    println!("{network}: {:.1} ms in kernels", sum * 1e3);
    for (op, seconds) in &by_op {
        println!("  {op:14} {:7.2} ms", seconds * 1e3);
    }
    totals.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, seconds) in totals.iter().take(25) {
        println!("  {name:50} {:7.2} ms", seconds / 5.0 * 1e3);
    }
}
