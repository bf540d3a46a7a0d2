//! `--precision bf16` (issue #19, first slice): the reference interpreter's simulation
//! is exact (a bf16 layer computes what an f32 layer computes on bf16-rounded weights
//! and inputs, bit for bit), it changes the outputs (the rounding is applied; the
//! relative L2 error against f32 is printed per example, not asserted), the IR says
//! which layers run in bf16 and `verify` refuses bf16 elsewhere; the cpu target's bf16
//! layers (f32 kernels on rounded operands, at every CPU level this machine runs)
//! match the simulation within the CPU tolerance, 1e-4 relative L2, on examples and on
//! random conv and linear layers, and are far from f32; the gpu target refuses bf16
//! with a clear error and exit status 1. The AVX512_BF16 micro-kernels are tested in
//! `src/backend/clif/kernels/bf16.rs` (on an emulator).

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use cnnc::backend::clif::Bf16Tiles;
use cnnc::interp;
use cnnc::ir::{Graph, Op, verify};
use cnnc::passes::OptLevel;
use cnnc::precision::{Precision, assign, round_bf16};
use cnnc::tensor::{Tensor, relative_l2};

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).unwrap()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-bf16-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether every user of a node's value is a bf16 layer: then rounding the value itself
/// is the same as each user rounding it at its input.
fn only_bf16_users(graph: &Graph, id: cnnc::ir::NodeId) -> bool {
    let users = graph.users(id);
    !users.is_empty()
        && users.iter().all(|&u| {
            let user = graph.node(u);
            user.precision == Precision::Bf16 && graph.residual(u) != Some(id)
        })
}

/// The examples (small enough for the interpreter), at -O2 with random weights: the
/// bf16 run is the f32 run on rounded weights and inputs, exactly, where each value that
/// a bf16 layer reads is read by bf16 layers only (else a value would be both rounded
/// and not); the error against f32 is reported for every one.
#[test]
fn the_simulation_is_f32_on_rounded_operands() {
    let mut exact_checked = 0;
    for name in ["lenet5.cnn", "digits.cnn", "squeezenet1_1.cnn", "resnet18_cifar.cnn", "mobilenet_v2.cnn", "nin.cnn"] {
        let f32_graph = common::random_graph(&example(name), 1, 7, OptLevel::O2).unwrap();
        let inputs = common::random_inputs(&f32_graph, 11);
        let mut graph = f32_graph.clone();
        let layers = assign(&mut graph, Precision::Bf16);
        verify(&graph).unwrap();
        let convs = graph.node_ids().into_iter().filter(|&id| Precision::Bf16.applies_to(&graph.node(id).op)).count();
        assert_eq!(layers, convs, "{name}: every conv and linear layer takes bf16");
        assert!(layers > 0, "{name}");
        let f32_out = interp::run(&f32_graph, &f32_graph.weights, &inputs).unwrap();
        let bf16_out = interp::run(&graph, &graph.weights, &inputs).unwrap();
        let error = relative_l2(&bf16_out[0].data, &f32_out[0].data);
        eprintln!("{name}: interpreter bf16 vs f32, relative L2 {error:.3e} ({layers} bf16 layers)");
        assert!(error > 0.0, "{name}: bf16 changed nothing: the rounding is not applied");

        let exact = graph.node_ids().into_iter().all(|id| {
            let users = graph.users(id);
            let reads =
                users.iter().any(|&u| graph.node(u).precision == Precision::Bf16 && graph.residual(u) != Some(id));
            !reads || only_bf16_users(&graph, id)
        });
        if !exact {
            continue;
        }
        // f32 on rounded weights, with every value a bf16 layer reads rounded.
        let mut rounded = f32_graph.weights.clone();
        for id in graph.node_ids() {
            let node = graph.node(id);
            if node.precision != Precision::Bf16 {
                continue;
            }
            for param in &node.params {
                if param.role == cnnc::ir::ParamRole::Weight {
                    let tensor = rounded.tensors.get_mut(&param.name).unwrap();
                    cnnc::precision::round_slice_bf16(&mut tensor.data);
                }
            }
        }
        let simulated = interp::run_rewriting(&f32_graph, &rounded, &inputs, &mut |id, value| {
            if only_bf16_users(&graph, id) {
                cnnc::precision::round_slice_bf16(&mut value.data);
            }
        })
        .unwrap();
        for (a, b) in simulated.iter().zip(&bf16_out) {
            let same = a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: the bf16 run is not f32 on rounded operands");
        }
        exact_checked += 1;
    }
    assert!(exact_checked >= 3, "only {exact_checked} examples checked exactly");
}

/// Only conv and linear layers take bf16; the IR text says which, and only then;
/// `verify` refuses bf16 on any other layer.
#[test]
fn only_conv_and_linear_round() {
    only_conv_and_linear_round_on(common::random_graph(&example("lenet5.cnn"), 2, 3, OptLevel::O0).unwrap());
}

fn only_conv_and_linear_round_on(mut graph: Graph) {
    assign(&mut graph, Precision::Bf16);
    for id in graph.node_ids() {
        let node = graph.node(id);
        let weighted = matches!(node.op, Op::Conv(_) | Op::Linear { .. });
        assert_eq!(node.precision == Precision::Bf16, weighted, "{}", node.name);
    }
    let text = cnnc::ir::print(&graph);
    for line in text.lines().filter(|l| l.contains(" = ")) {
        let weighted = line.contains("= conv(") || line.contains("= linear(");
        assert_eq!(line.contains(" precision=bf16"), weighted, "{line}");
    }
    // f32 prints as before: no precision in the text.
    assign(&mut graph, Precision::F32);
    assert!(!cnnc::ir::print(&graph).contains("precision="));
    // verify refuses bf16 on a layer that cannot run it.
    let other = graph.node_ids().into_iter().find(|&id| !Precision::Bf16.applies_to(&graph.node(id).op)).unwrap();
    graph.node_mut(other).precision = Precision::Bf16;
    let error = verify(&graph).unwrap_err();
    assert!(error.contains("cannot run in bf16"), "{error}");
}

/// A single conv on values chosen to round: ties to even, denormals to zero, NaN kept.
#[test]
fn a_layer_reads_rounded_inputs_and_weights() {
    let source = example("lenet5.cnn");
    let mut graph = common::random_graph(&source, 1, 5, OptLevel::O2).unwrap();
    let mut inputs = common::random_inputs(&graph, 1);
    // Inputs whose rounding is visible: 1 + 2^-8 (a tie, rounds to 1), denormals.
    for (i, v) in inputs[0].data.iter_mut().enumerate() {
        *v = match i % 3 {
            0 => 1.0 + 2f32.powi(-8),
            1 => f32::from_bits(0x0000_1234),
            _ => *v,
        };
    }
    let f32_out = interp::run(&graph, &graph.weights, &inputs).unwrap();
    let mut rounded_inputs = inputs.clone();
    for v in &mut rounded_inputs[0].data {
        *v = round_bf16(*v);
    }
    assert!(rounded_inputs[0].data.iter().step_by(3).all(|&v| v == 1.0));
    assign(&mut graph, Precision::Bf16);
    let a = interp::run(&graph, &graph.weights, &inputs).unwrap();
    let b = interp::run(&graph, &graph.weights, &rounded_inputs).unwrap();
    // Rounding an input that a bf16 layer reads first changes nothing more.
    assert_eq!(a[0].data, b[0].data);
    assert_ne!(a[0].data, f32_out[0].data);
    // A NaN in the input stays a NaN through the bf16 conv.
    inputs[0].data[0] = f32::NAN;
    let nan = interp::run(&graph, &graph.weights, &inputs).unwrap();
    assert!(nan[0].data.iter().any(|v| v.is_nan()));
    let _: &Tensor = &nan[0];
}

/// The cpu target's tolerance against the reference (relative L2).
const CPU_TOLERANCE: f64 = 1e-4;

/// The cpu target's bf16 layer by layer against the interpreter's
/// ([`common::cpu_layers_against_simulation`]), on `graph` rounded to bf16 and asked for
/// bf16.
fn cpu_layers_against_reference(
    graph: &Graph,
    inputs: &[Tensor],
    cpu: Option<cnnc::backend::clif::CpuLevel>,
    threads: usize,
    tiles: Bf16Tiles,
) -> ((f64, String), f64, f64) {
    let mut simulated = graph.clone();
    assign(&mut simulated, Precision::Bf16);
    common::cpu_layers_against_simulation(&simulated, graph, inputs, cpu, threads, Precision::Bf16, tiles)
}

/// The kernels a bf16 check runs on this host: the f32 kernels over rounded operands
/// always, the `vdpbf16ps` tiles too where the host has them (whichever the host's
/// default is, `Bf16Tiles::Auto`).
fn bf16_kernels() -> Vec<Bf16Tiles> {
    let mut kinds = vec![Bf16Tiles::Never];
    if vdpbf16ps_host() {
        kinds.push(Bf16Tiles::Always);
    }
    kinds
}

/// Whether this host runs the `vdpbf16ps` tiles (AVX-512 and AVX512_BF16).
fn vdpbf16ps_host() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cnnc::backend::clif::host_has_bf16() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Examples on the cpu target in bf16 against the interpreter's bf16, layer by layer
/// (the small ones at every CPU level, on one and two threads); the rounding is applied (the outputs are far
/// further from f32's). The end-to-end error is printed.
#[test]
fn cpu_bf16_matches_the_simulation_on_examples() {
    for name in ["lenet5.cnn", "digits.cnn", "squeezenet1_1.cnn", "resnet18_cifar.cnn", "mobilenet_v2.cnn"] {
        let graph = common::random_graph(&example(name), 2, 7, OptLevel::O2).unwrap();
        let inputs = common::random_inputs(&graph, 11);
        // Every CPU level and thread count on the small ones, the host on two threads on
        // the others.
        let small = name == "lenet5.cnn" || name == "digits.cnn";
        let levels = if small { common::cpu_levels() } else { vec![None] };
        let threads_tried: &[usize] = if small { &[1, 2] } else { &[2] };
        for cpu in levels {
            // The `vdpbf16ps` tiles run only for the host (no level named).
            let kernels = if cpu.is_none() { bf16_kernels() } else { vec![Bf16Tiles::Never] };
            for &threads in threads_tried {
                for &tiles in &kernels {
                    let ((error, layer), end_to_end, against_f32) =
                        cpu_layers_against_reference(&graph, &inputs, cpu, threads, tiles);
                    let level = cpu.map_or("host", |l| l.name());
                    eprintln!(
                        "{name} cpu {level} {threads} thread(s) {tiles:?}: worst layer {error:.2e} ({layer}), end to \
                         end {end_to_end:.2e} against bf16, {against_f32:.2e} against f32"
                    );
                    assert!(
                        error <= CPU_TOLERANCE,
                        "{name} at {level} {tiles:?}, {threads} threads: {layer}: {error:e}"
                    );
                    assert!(against_f32 > 10.0 * error, "{name} at {level}: bf16 {error:e}, f32 {against_f32:e}");
                }
            }
        }
    }
}

/// Pointwise layers on planes large enough for the pixel-lane `vdpbf16ps` tiles (where
/// the host has them): an odd count of input channels (the last pair's high half zero),
/// partial blocks of output channels, a residual add with relu, a sigmoid, no bias; on
/// one and two threads, batch 2, against the simulation layer by layer.
#[test]
fn cpu_bf16_pointwise_layers_match_the_simulation() {
    let source = "block residual() {\n    c: conv(22, 1)\n    add(in)\n    relu\n}\n\
                  network pw {\n    input x: [37, 48, 48]\n    p: conv(22, 1)\n    q: residual()\n    \
                  s: conv(23, 1)\n    sigmoid\n    t: conv(16, 1, bias=false)\n}\n";
    let graph = common::random_graph(source, 2, 3, OptLevel::O2).unwrap();
    let inputs = common::random_inputs(&graph, 5);
    for threads in [1, 2] {
        for tiles in bf16_kernels() {
            let ((error, layer), _, against_f32) = cpu_layers_against_reference(&graph, &inputs, None, threads, tiles);
            assert!(error <= CPU_TOLERANCE, "{threads} threads {tiles:?}: layer {layer}: {error:e}");
            assert!(against_f32 > 10.0 * error, "{threads} threads: bf16 {error:e}, f32 {against_f32:e}");
        }
    }
}

/// Random conv layers (kernel, stride, padding, dilation, groups, depthwise, 1x1 with
/// and without padding, odd sizes, fused epilogues) and linear layers, in the style of
/// the property tests, on the cpu target in bf16 against the simulation, layer by layer.
#[test]
fn cpu_bf16_matches_the_simulation_on_random_layers() {
    for (case, (source, batch)) in common::random_conv_linear_programs(40).into_iter().enumerate() {
        let case = case as u64;
        let graph = match common::random_graph(&source, batch, case, OptLevel::O2) {
            Ok(graph) => graph,
            Err(e) => panic!("case {case} does not compile: {e}\n{source}"),
        };
        let inputs = common::random_inputs(&graph, case + 100);
        for tiles in bf16_kernels() {
            let ((error, layer), _, against_f32) = cpu_layers_against_reference(&graph, &inputs, None, 2, tiles);
            assert!(error <= CPU_TOLERANCE, "case {case} {tiles:?}: layer {layer}: {error:e}\n{source}");
            assert!(against_f32 > 10.0 * error, "case {case}: bf16 {error:e}, f32 {against_f32:e}\n{source}");
        }
    }
}

/// The command line: `run` in bf16 on the cpu and reference targets (the two agree and
/// differ from f32), at `--cpu x86-64-v2` too, `run --compare cpu,reference`, `bench`,
/// `build` (the header lists the bf16 layers; `--emit ir` shows them); the gpu target
/// refuses bf16; an unknown precision is a user error.
#[test]
fn the_command_line_runs_bf16() {
    let dir = temp_dir("cli");
    let input = dir.join("x.npy");
    std::fs::write(&input, cnnc::io::write_npy(&cnnc::weights::random_normal(&[1, 1, 28, 28], 1))).unwrap();
    let run = |extra: &[&str], output: &str| {
        let output = dir.join(output);
        let mut args =
            vec!["run", "examples/lenet5.cnn", "--random-weights", "--input", input.to_str().unwrap(), "--output"];
        args.push(output.to_str().unwrap());
        args.extend_from_slice(extra);
        (cnnc(&args), output)
    };
    let read = |path: &Path| cnnc::io::read_npy(&std::fs::read(path).unwrap()).unwrap();
    let ok = |out: &Output| assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (out, f32_path) = run(&["--target", "reference"], "f32.npy");
    ok(&out);
    let (out, reference_path) = run(&["--target", "reference", "--precision", "bf16"], "bf16.npy");
    ok(&out);
    let (out, cpu_path) = run(&["--precision", "bf16"], "cpu.npy");
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: --precision bf16 on the cpu target"));
    let (out, v2_path) = run(&["--precision", "bf16", "--cpu", "x86-64-v2"], "v2.npy");
    ok(&out);
    let (f32_y, bf16_y) = (read(&f32_path), read(&reference_path));
    let error = relative_l2(&bf16_y.data, &f32_y.data);
    eprintln!("lenet5 through `cnnc run --target reference`: bf16 vs f32 relative L2 {error:.3e}");
    assert!(error > 0.0);
    for path in [cpu_path, v2_path] {
        let cpu_error = relative_l2(&read(&path).data, &bf16_y.data);
        assert!(cpu_error <= CPU_TOLERANCE && cpu_error * 10.0 < error, "{}: {cpu_error:e}", path.display());
    }
    let (out, _) = run(&["--precision", "bf16", "--compare", "cpu,reference"], "unused.npy");
    ok(&out);

    let refused = |extra: &[&str], expected: &str| {
        let (out, _) = run(extra, "refused.npy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    };
    refused(&["--precision", "bf16", "--target", "gpu"], "the gpu target runs f32 only");
    refused(&["--precision", "bf16", "--compare", "gpu,reference"], "the gpu target runs f32 only");
    refused(&["--precision", "fp8"], "fp8");

    for target in ["cpu", "reference"] {
        let bench = cnnc(&["bench", "examples/lenet5.cnn", "--precision", "bf16", "--runs", "1", "--target", target]);
        ok(&bench);
        assert!(String::from_utf8_lossy(&bench.stdout).contains(", bf16)"));
    }
    let bench = cnnc(&["bench", "examples/lenet5.cnn", "--precision", "bf16", "--target", "gpu"]);
    assert_eq!(bench.status.code(), Some(1));

    let build = |extra: &[&str]| {
        let mut args = vec!["build", "examples/lenet5.cnn", "--random-weights", "-o", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        cnnc(&args)
    };
    ok(&build(&["--precision", "bf16", "--emit", "ir,header"]));
    let ir = std::fs::read_to_string(dir.join("lenet5.ir")).unwrap();
    assert_eq!(ir.matches("precision=bf16").count(), 5, "{ir}");
    let header = std::fs::read_to_string(dir.join("lenet5.h")).unwrap();
    assert!(header.contains("/*   `conv1` (conv): bf16 */"), "{header}");
    assert!(header.contains("/*   `fc3` (linear): bf16 */"), "{header}");
    ok(&build(&["--emit", "header"]));
    let header = std::fs::read_to_string(dir.join("lenet5.h")).unwrap();
    assert!(!header.contains("bf16"), "{header}");
    let out = build(&["--precision", "bf16", "--target", "gpu"]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(dir).ok();
}

/// The kernels a bf16 layer runs on: the `vdpbf16ps` tiles where this CPU has
/// AVX512_BF16, they outpace its FMAs (AMD cores, `Bf16Tiles::Auto`) and no `--cpu` level
/// is named, the f32 kernels over rounded operands otherwise (the profile's algorithm
/// column says which).
#[test]
fn the_vdpbf16ps_tiles_run_where_the_host_has_them() {
    let profile = |extra: &[&str]| {
        let mut args = vec!["bench", "examples/resnet18_cifar.cnn", "--precision", "bf16", "--runs", "1", "--profile"];
        args.extend_from_slice(extra);
        let out = cnnc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let host = profile(&[]);
    let layers = |text: &str, algorithm: &str| {
        text.lines().filter(|l| (l.contains("(conv)") || l.contains("(linear)")) && l.contains(algorithm)).count()
    };
    let convs_and_linear = host.lines().filter(|l| l.contains("(conv)") || l.contains("(linear)")).count();
    assert!(convs_and_linear >= 10, "{host}");
    let tiles = vdpbf16ps_host() && cnnc::backend::clif::host_prefers_bf16_tiles();
    if tiles {
        assert_eq!(layers(&host, "bf16 tiles (vdpbf16ps)"), convs_and_linear, "{host}");
        let named = profile(&["--cpu", "x86-64-v4"]);
        assert_eq!(layers(&named, "vdpbf16ps"), 0, "{named}");
        assert_eq!(layers(&named, "bf16 operands"), convs_and_linear, "{named}");
    } else {
        assert_eq!(layers(&host, "vdpbf16ps"), 0, "{host}");
        assert_eq!(layers(&host, "bf16 operands"), convs_and_linear, "{host}");
    }
}

/// The build-script API builds bf16 objects, the header listing the bf16 layers.
#[test]
fn the_build_script_api_takes_a_precision() {
    let dir = temp_dir("api");
    let model = cnnc::build::Model::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lenet5.cnn"))
        .random_weights(1)
        .out_dir(&dir)
        .cargo_metadata(false);
    let compiled = model.clone().precision(Precision::Bf16).compile().unwrap();
    let header = std::fs::read_to_string(&compiled.header).unwrap();
    assert!(header.contains("(conv): bf16"), "{header}");
    let compiled = model.precision(Precision::F32).compile().unwrap();
    assert!(!std::fs::read_to_string(&compiled.header).unwrap().contains("bf16"));
    std::fs::remove_dir_all(dir).ok();
}

/// The cpu target's rounding (Cranelift integer code, four lanes and one at a time) is
/// `round_bf16`'s, special values included: a 1x1 conv of weight 1 passes each rounded
/// input through (a zero's sign aside: the accumulator starts at +0).
#[test]
fn the_cpu_target_rounds_as_round_bf16() {
    let specials = [
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        -(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
        f32::from_bits(0x0000_0001),
        -f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        2.71,
        -0.0,
        65504.5,
    ];
    // 5 rows of 7: whole vectors and a scalar tail in every row.
    let data: Vec<f32> = (0..35).map(|i| specials[i % specials.len()]).collect();
    let source = "network t {\n    input x: [1, 5, 7]\n    c: conv(1, 1, bias=false)\n}\n";
    let mut graph = cnnc::front::compile_source(source, &Default::default()).unwrap();
    graph.weights.insert("c.weight", Tensor::new(vec![1, 1, 1, 1], vec![1.0]).unwrap());
    cnnc::passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let input = Tensor::new(vec![1, 1, 5, 7], data.clone()).unwrap();
    for cpu in common::cpu_levels() {
        for bf16_tiles in bf16_kernels() {
            let options = cnnc::exec::ExecOptions { threads: Some(1), cpu, precision: Precision::Bf16, bf16_tiles };
            let executor = cnnc::exec::compile_with(graph.clone(), cnnc::exec::Target::Cpu, &options).unwrap();
            let out = executor.run(std::slice::from_ref(&input)).unwrap().remove(0);
            for (x, y) in data.iter().zip(&out.data) {
                let expected = round_bf16(*x);
                let same = if expected.is_nan() { y.is_nan() } else { *y == expected };
                assert!(
                    same,
                    "{cpu:?} {bf16_tiles:?}: {x:e} ({:#010x}) gave {y:e}, expected {expected:e}",
                    x.to_bits()
                );
            }
        }
    }
}
