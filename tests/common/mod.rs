//! Helpers shared by the test files that include this module (`mod common;`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

use cnnc::backend::wgsl;
use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::{Graph, NodeId, Op};
use cnnc::passes::plan_memory::concat_offsets;
use cnnc::passes::{OptLevel, optimize};
use cnnc::tensor::Tensor;

/// Replays the memory plan in the order the backends run the graph (topological), with
/// an owner for every 4-byte word of the arena: each value a node reads must still own
/// its bytes when the node runs, and a node may only write over an operand's bytes when
/// it computes elementwise in place over exactly that operand's slot (an activation,
/// scale-shift, scale, flatten, dropout or same-shape merge over its first operand, or a fused
/// residual add over the residual), or when a concat finds an operand already computed
/// at its channel slice (concat elimination: the operand's words then stay readable while
/// the concat owns them). Independent of `ir::verify`'s pairwise check.
pub fn replay_memory_plan(graph: &Graph) -> Result<(), String> {
    let plan = graph.memory.as_ref().ok_or("no memory plan")?;
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let elements = |id: NodeId| graph.node(id).shape.iter().product::<usize>();
    let mut owner: Vec<Option<NodeId>> = vec![None; plan.arena_bytes.div_ceil(4)];
    let mut problems = Vec::new();
    for id in order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        for &operand in &operands {
            let Some(slot) = plan.slots.get(&operand) else { continue };
            let words = slot.offset / 4..slot.offset / 4 + elements(operand);
            // A value computed inside a concat's slot is still there while the concat
            // (or the concat that holds that one) owns the words.
            let holds = |owner: NodeId| {
                let mut value = operand;
                loop {
                    if value == owner {
                        return true;
                    }
                    match plan.in_concat.get(&value) {
                        Some(&concat) => value = concat,
                        None => return false,
                    }
                }
            };
            let Some(owners) = owner.get(words) else {
                problems.push(format!("{} reads {} past the arena's end", node.name, graph.node(operand).name));
                continue;
            };
            if let Some(other) = owners.iter().find(|o| !o.is_some_and(holds)) {
                let other = other.map(|o| graph.node(o).name.clone()).unwrap_or_else(|| "nothing".into());
                problems.push(format!(
                    "{} reads {}, whose bytes hold {other} by then",
                    node.name,
                    graph.node(operand).name
                ));
            }
        }
        let Some(slot) = plan.slots.get(&id) else { continue };
        let n = elements(id);
        if slot.offset % 4 != 0 || slot.bytes < 4 * n || slot.offset + slot.bytes > plan.arena_bytes {
            problems.push(format!("{}: slot {slot:?} does not hold {n} floats inside the arena", node.name));
            continue;
        }
        let words = slot.offset / 4..slot.offset / 4 + n;
        for (position, &operand) in operands.iter().enumerate() {
            let Some(operand_slot) = plan.slots.get(&operand) else { continue };
            let operand_words = operand_slot.offset / 4..operand_slot.offset / 4 + elements(operand);
            if operand_words.start >= words.end || words.start >= operand_words.end {
                continue;
            }
            let is_residual = graph.residual(id) == Some(operand) && position == operands.len() - 1;
            // Concat elimination: the operand was computed in its slice of the concat.
            if plan.in_concat.get(&operand) == Some(&id) {
                let start = words.start + concat_offsets(graph, id)[position] / 4;
                if operand_words == (start..start + elements(operand)) {
                    continue;
                }
            }
            let elementwise = match node.op {
                Op::Activation(_)
                | Op::ScaleShift
                | Op::Scale
                | Op::Flatten
                | Op::Reshape { .. }
                | Op::Identity
                | Op::Dropout { .. }
                | Op::Dropout2d { .. }
                | Op::StochasticDepth { .. } => position == 0,
                Op::Add | Op::Mul => position == 0 && graph.node(operand).shape == node.shape,
                _ => false,
            };
            if operand_words != words || !(elementwise || is_residual) {
                problems.push(format!(
                    "{} ({}) writes over the bytes of its operand {} without computing in place over it",
                    node.name,
                    node.op.mnemonic(),
                    graph.node(operand).name
                ));
            }
        }
        for word in words {
            owner[word] = Some(id);
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// wgpu's Vulkan loader warns when XDG_RUNTIME_DIR is unset; give it a private one.
pub fn quiet_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            let dir = std::env::temp_dir().join(format!("cnnc-gpu-xdg-{}", std::process::id()));
            if std::fs::create_dir_all(&dir).is_ok() {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                }
                // SAFETY: called once, before this test binary starts any wgpu thread.
                unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
            }
        }
    });
}

/// Held by every test that runs on the GPU: one software device at a time gets all the
/// cores (lavapipe runs a dispatch on every core), and the times printed mean something.
pub static GPU: Mutex<()> = Mutex::new(());

/// The GPU, for the calling test: the lock, if there is an adapter. Without one, fails
/// under `CNNC_REQUIRE_GPU=1` and otherwise says loudly that the test skips.
pub fn gpu_present(test: &str) -> Option<MutexGuard<'static, ()>> {
    quiet_environment();
    let guard = GPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if wgsl::adapter_available() {
        return Some(guard);
    }
    if std::env::var("CNNC_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: no GPU adapter, and CNNC_REQUIRE_GPU=1 requires one (install mesa-vulkan-drivers)");
    }
    eprintln!("\n!!!!! SKIPPED {test}: no GPU adapter (Vulkan, Metal or DX12) found. !!!!!\n");
    None
}

/// A device of the caller's own, as a user's wgpu program opens it: WebGPU's default
/// limits, no optional features.
pub fn own_device() -> (wgpu::Device, wgpu::Queue) {
    use cnnc::gpu::wgpu;
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(descriptor.with_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("an adapter (gpu_present found one)");
    let descriptor = wgpu::DeviceDescriptor { required_limits: wgpu::Limits::default(), ..Default::default() };
    pollster::block_on(adapter.request_device(&descriptor)).expect("a device")
}

/// The `.cnn` files of a directory of the crate, sorted.
pub fn cnn_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cnn"))
        .collect();
    files.sort();
    files
}

/// `cargo SUBCOMMAND --offline --quiet` in `examples/embed_rust` (a crate of its own, with
/// cnnc as a build dependency), with its own target directory under ours
/// (`target/embed_rust`): cnnc is compiled there once, later builds rerun only the
/// example's build script and relink. The build script's settings
/// (`EMBED_RUST_NETWORK`, `EMBED_RUST_BATCH`, `EMBED_RUST_SEED`) start unset.
pub fn embed_rust_cargo(subcommand: &str) -> std::process::Command {
    let mut command = example_cargo("embed_rust", subcommand);
    command.env_remove("EMBED_RUST_NETWORK").env_remove("EMBED_RUST_BATCH").env_remove("EMBED_RUST_SEED");
    command
}

/// `cargo SUBCOMMAND --offline --quiet` in `examples/NAME`, built in `target/embed_rust`
/// (shared by the embedding examples, so that cnnc and its dependencies build once).
pub fn example_cargo(name: &str, subcommand: &str) -> std::process::Command {
    let target_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/tmp has a parent").join("embed_rust");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name))
        .env("CARGO_TARGET_DIR", target_dir)
        .args([subcommand, "--offline", "--quiet"]);
    command
}

/// The floats a run printed, one per line; panics with its output when it failed or
/// printed anything else.
pub fn printed_floats(output: &std::process::Output, what: &str) -> Vec<f32> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed ({}):\n{stderr}\n{stdout}", output.status);
    stdout
        .lines()
        .map(|line| line.trim().parse::<f32>().unwrap_or_else(|e| panic!("not a float: {line:?} ({e})\n{stdout}")))
        .collect()
}

/// Writes floats as raw native-endian float32, the format of the embedding examples.
pub fn write_f32_file(path: &Path, data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Reads a raw native-endian float32 file.
pub fn read_f32_file(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{}: {} bytes, not whole float32 values", path.display(), bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A program compiled at `batch`, bound to random weights drawn from `weight_seed` and
/// optimized at `level`; the first diagnostic when it does not compile.
pub fn random_graph(source: &str, batch: usize, weight_seed: u64, level: OptLevel) -> Result<Graph, String> {
    let mut graph = compile_source(source, &BuildOptions { batch, ..Default::default() })
        .map_err(|d| format!("does not compile: {:?}", d.first().map(|d| &d.message)))?;
    graph.weights = cnnc::weights::random_weights(&graph, weight_seed);
    optimize(&mut graph, level)?;
    Ok(graph)
}

/// Random normal values for every input of `graph`, drawn from `seed`, `seed + 1`, ...
pub fn random_inputs(graph: &Graph, seed: u64) -> Vec<Tensor> {
    graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &id)| cnnc::weights::random_normal(&graph.node(id).shape, seed + k as u64))
        .collect()
}

/// The reference for the embedding examples: LeNet-5 as written, at `batch`, in the
/// interpreter with the random weights that `seed` draws (those `cnnc build
/// --random-weights --seed SEED` and the examples' build scripts bind), on `input`.
pub fn lenet5_reference(batch: usize, seed: u64, input: &[f32]) -> Tensor {
    let source =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lenet5.cnn")).expect("examples/lenet5.cnn");
    let graph =
        cnnc::front::compile_bytes(&source, &BuildOptions { batch, ..Default::default() }).expect("lenet5 compiles");
    let weights = cnnc::weights::random_weights(&graph, seed);
    let shape = graph.node(graph.inputs[0]).shape.clone();
    let input = Tensor::new(shape, input.to_vec()).expect("the input has the network's size");
    let mut outputs = cnnc::interp::run(&graph, &weights, &[input]).expect("the interpreter runs lenet5");
    assert_eq!(outputs.len(), 1);
    outputs.remove(0)
}

/// The Python with numpy and onnxruntime that the ONNX Runtime oracle runs in:
/// `$CNNC_PYTHON`, else the repository's `.venv` (tools/setup-python.sh). Without one,
/// `None` after a loud skip message, or a panic where the oracle is required (CI, or
/// `CNNC_REQUIRE_ORACLE=1`).
pub fn onnxruntime_python() -> Option<PathBuf> {
    let python = match std::env::var_os("CNNC_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    let why = match std::process::Command::new(&python).args(["-c", "import numpy, onnxruntime"]).output() {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => format!(
            "{} cannot import numpy and onnxruntime: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {}: {e}", python.display()),
    };
    let required = std::env::var_os("CI").is_some() || std::env::var("CNNC_REQUIRE_ORACLE").is_ok_and(|v| v == "1");
    if required {
        panic!("the ONNX Runtime oracle is required (CI or CNNC_REQUIRE_ORACLE=1) but unavailable: {why}");
    }
    eprintln!("\n!!!! SKIPPED: ONNX Runtime oracle unavailable ({why}); run tools/setup-python.sh !!!!\n");
    None
}

/// `count` random one-conv-one-linear programs in the style of the property tests
/// (kernel, stride, padding, dilation, groups, depthwise, 1x1, odd sizes, a fused relu
/// or sigmoid), each with its batch size: the same sequence on every call, for the tests
/// that check reduced precisions layer by layer.
pub fn random_conv_linear_programs(count: usize) -> Vec<(String, usize)> {
    let mut state = 0x9e37_79b9u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n) as usize
    };
    (0..count)
        .map(|_| {
            let groups = [1, 1, 1, 2, 0][next(5)];
            let c = [1, 3, 4, 8, 16, 17][next(6)] * groups.max(1);
            let (c, groups) = if groups == 0 { (c, c) } else { (c, groups) }; // 0: depthwise
            let o = if groups == c { c } else { [5, 16, 24, 33, 64][next(5)] * groups };
            let k = [1, 1, 3, 5][next(4)];
            let stride = [1, 1, 2][next(3)];
            let pad = [0, 1, 2][next(3)];
            let dilation = [1, 1, 2][next(3)];
            let (h, w) = (9 + next(8), 9 + next(12));
            let activation = ["", "    relu\n", "    sigmoid\n"][next(3)];
            let source = format!(
                "network t {{\n    input x: [{c}, {h}, {w}]\n    c1: conv({o}, {k}, stride={stride}, pad={pad}, dilation={dilation}, groups={groups})\n{activation}    flatten\n    fc: linear({})\n}}\n",
                1 + next(20)
            );
            (source, 1 + next(3))
        })
        .collect()
}

/// The cpu target at each level this machine runs (the host's own features first).
pub fn cpu_levels() -> Vec<Option<cnnc::backend::clif::CpuLevel>> {
    use cnnc::backend::clif::CpuLevel;
    let mut levels = vec![None];
    levels.extend(
        [CpuLevel::X86_64V2, CpuLevel::X86_64V3, CpuLevel::X86_64V4].into_iter().filter(|l| l.host_has()).map(Some),
    );
    levels
}

/// A reduced-precision graph (`simulated`, its layers' precisions assigned) on the cpu
/// target, asked for `precision` (f32: the graph's own precisions), layer by layer
/// against the interpreter's simulation, each layer given the cpu's values of its
/// operands: (the worst layer's relative L2 error and its name, the end-to-end error of
/// the outputs against the simulation, and against `f32_graph`'s run).
///
/// Why layer by layer: rounding to bf16 or int8 is a step function, so the last-bit
/// differences of f32 accumulation order move a few activations across a rounding
/// boundary, and deep networks amplify those: in bf16 SqueezeNet's output differs from
/// the simulation by 3.8e-4 end to end while every layer, on the same inputs, agrees
/// within 1e-6.
pub fn cpu_layers_against_simulation(
    simulated: &Graph,
    f32_graph: &Graph,
    inputs: &[Tensor],
    cpu: Option<cnnc::backend::clif::CpuLevel>,
    threads: usize,
    precision: cnnc::precision::Precision,
    bf16_tiles: cnnc::backend::clif::Bf16Tiles,
) -> ((f64, String), f64, f64) {
    let nodes: Vec<NodeId> = simulated
        .topo_order()
        .unwrap()
        .into_iter()
        .filter(|&id| !matches!(simulated.node(id).op, Op::Input { .. }))
        .collect();
    let (copy, positions) = cnnc::compare::with_every_node_as_output(simulated, &nodes);
    let options = cnnc::exec::ExecOptions { threads: Some(threads), cpu, precision, bf16_tiles };
    let executor = cnnc::exec::compile_with(copy, cnnc::exec::Target::Cpu, &options).unwrap();
    let cpu_values = executor.run(inputs).unwrap();
    let cpu_of: std::collections::HashMap<_, &Tensor> =
        nodes.iter().zip(&positions).map(|(&id, &k)| (id, &cpu_values[k])).collect();
    let mut worst = (0.0f64, String::new());
    cnnc::interp::run_rewriting(simulated, &simulated.weights, inputs, &mut |id, value| {
        if let Some(cpu) = cpu_of.get(&id) {
            let error = cnnc::tensor::relative_l2(&cpu.data, &value.data);
            if error > worst.0 || worst.1.is_empty() {
                worst = (error, simulated.node(id).name.clone());
            }
            *value = (*cpu).clone();
        }
    })
    .unwrap();
    let outputs = &cpu_values[..simulated.outputs.len()];
    let against = |reference: Vec<Tensor>| {
        reference.iter().zip(outputs).map(|(r, c)| cnnc::tensor::relative_l2(&c.data, &r.data)).fold(0.0, f64::max)
    };
    let end_to_end = against(cnnc::interp::run(simulated, &simulated.weights, inputs).unwrap());
    let against_f32 = against(cnnc::interp::run(f32_graph, &f32_graph.weights, inputs).unwrap());
    (worst, end_to_end, against_f32)
}
