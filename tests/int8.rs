//! `--precision int8` (issue #19, first slice): the quantization's arithmetic (ties to
//! even, saturation, the zero point, all-zero channels, NaN and infinities), calibration
//! (a round trip through its file and the files it refuses), the reference interpreter's
//! simulation (it changes the outputs: the rounding is applied), the cpu target against
//! the simulation within 1e-6 relative L2 layer by layer on examples and random layers
//! (its integer sums are exact; what remains is the rounding order of the f32 layers
//! between), the command line (`calibrate`, `run`, `bench`, `build`, the refusals) and
//! the build-script API; and the trained digits model's held-out accuracy in int8.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnnc::calibrate::{Calibration, Method, calibrate, int8_layers};
use cnnc::interp;
use cnnc::ir::{Graph, Op};
use cnnc::passes::OptLevel;
use cnnc::precision::{Int8Input, Precision, quantize_weight, quantize_weights};
use cnnc::tensor::{Tensor, argmax_rows, relative_l2};

/// The cpu target against the interpreter's int8 simulation, per layer on the same
/// inputs (relative L2). The integer sums are exact on both sides and the rescaling is
/// rounded the same way, so the differences left are the last bits of the f32 layers
/// around them (and of sums past 2^24 in the f32 accumulators).
const INT8_TOLERANCE: f64 = 1e-6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(repo()).output().unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples").join(name)).unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-int8-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Batch-1 runs of random inputs (seeds from `seed`) for calibrating a batch-1 copy.
fn random_runs(graph: &Graph, count: u64, seed: u64) -> Vec<Vec<Tensor>> {
    (0..count).map(|k| common::random_inputs(graph, seed + 10 * k)).collect()
}

/// A graph with int8 assigned from a calibration on `runs` random items (calibrated at
/// batch 1, applied at the graph's batch).
fn int8_graph(source: &str, batch: usize, seed: u64, method: Method) -> (Graph, Graph) {
    let one = common::random_graph(source, 1, seed, OptLevel::O2).unwrap();
    let calibration = calibrate(&one, &random_runs(&one, 3, seed + 500), method).unwrap();
    let f32_graph = common::random_graph(source, batch, seed, OptLevel::O2).unwrap();
    let mut graph = f32_graph.clone();
    let layers = calibration.assign(&mut graph).unwrap();
    assert!(layers > 0);
    cnnc::ir::verify(&graph).unwrap();
    (f32_graph, graph)
}

#[test]
fn input_quantization_rounds_half_to_even_and_saturates() {
    let q = Int8Input::new(0.5, 10).unwrap();
    // x / 0.5 = 2.5 -> 2 (even), 3.5 -> 4, -2.5 -> -2: then + 10 and - 10.
    assert_eq!(q.offset(1.25), 2.0);
    assert_eq!(q.offset(1.75), 4.0);
    assert_eq!(q.offset(-1.25), -2.0);
    assert_eq!(q.offset(0.26), 1.0);
    // The real 0 is exactly the zero point.
    assert_eq!(q.offset(0.0), 0.0);
    assert_eq!(q.offset(-0.0), 0.0);
    // Saturation at q = 0 (offset -10) and q = 255 (offset 245), infinities too.
    assert_eq!(q.offset(-100.0), -10.0);
    assert_eq!(q.offset(1000.0), 245.0);
    assert_eq!(q.offset(f32::INFINITY), 245.0);
    assert_eq!(q.offset(f32::NEG_INFINITY), -10.0);
    assert_eq!(q.offset(f32::MAX), 245.0);
    // NaN stays NaN.
    assert!(q.offset(f32::NAN).is_nan());
    assert_eq!(q.dequantize(q.offset(1.75)), 2.0);
    // Scales must be positive and finite.
    assert!(Int8Input::new(0.0, 0).is_none());
    assert!(Int8Input::new(-1.0, 0).is_none());
    assert!(Int8Input::new(f32::NAN, 0).is_none());
    assert!(Int8Input::new(f32::INFINITY, 0).is_none());
}

#[test]
fn ranges_are_widened_to_contain_zero() {
    // [0, 2.55]: scale 0.01, zero point 0.
    let q = Int8Input::from_range(0.0, 2.55).unwrap();
    assert_eq!((q.scale(), q.zero_point()), (2.55 / 255.0, 0));
    // A positive range starts at 0, a negative one ends there (zero point 255).
    assert_eq!(Int8Input::from_range(1.0, 2.0).unwrap(), Int8Input::from_range(0.0, 2.0).unwrap());
    let negative = Int8Input::from_range(-3.0, -1.0).unwrap();
    assert_eq!(negative.zero_point(), 255);
    assert_eq!(negative.offset(0.0), 0.0);
    assert_eq!(negative.offset(-3.0), -255.0);
    // A symmetric range: -lo / scale is 127.5 but for the rounding of the scale (2/255
    // rounds up in f32, so 1 / scale = 127.49999...: zero point 127).
    let symmetric = Int8Input::from_range(-1.0, 1.0).unwrap();
    assert_eq!(symmetric.zero_point(), (1.0 / symmetric.scale()).round_ties_even() as u8);
    assert_eq!(symmetric.zero_point(), 127);
    // Every value of the range maps into it, its ends included.
    for &(lo, hi) in &[(-0.7f32, 3.1f32), (-5.0, 0.2), (0.0, 1e-3), (-1e4, 1e4)] {
        let q = Int8Input::from_range(lo, hi).unwrap();
        let zp = q.zero_point() as f32;
        for k in 0..=100 {
            let x = lo + (hi - lo) * k as f32 / 100.0;
            let level = q.offset(x) + zp;
            assert!((0.0..=255.0).contains(&level), "{x} in [{lo}, {hi}]: level {level}");
            assert!((q.dequantize(q.offset(x)) - x).abs() <= q.scale() * 0.5001 + 1e-6 * x.abs(), "{x}");
        }
    }
    // [0, 0] (a dead input): scale 1, zero point 0; not-finite or reversed ranges: none.
    assert_eq!(Int8Input::from_range(0.0, 0.0).unwrap(), Int8Input::new(1.0, 0).unwrap());
    assert!(Int8Input::from_range(1.0, 0.0).is_none());
    assert!(Int8Input::from_range(f32::NAN, 1.0).is_none());
    assert!(Int8Input::from_range(0.0, f32::INFINITY).is_none());
    assert!(Int8Input::from_range(-f32::MAX, f32::MAX).is_none());
}

#[test]
fn weights_are_symmetric_per_output_channel() {
    // Two channels of 4: max |w| 2.54 -> scale 0.02; an all-zero channel -> scale 1.
    let weight = [2.54, -1.27, 0.03, -0.05, 0.0, 0.0, 0.0, 0.0];
    let (q, scales) = quantize_weights(&weight, 2);
    assert_eq!(scales, vec![2.54 / 127.0, 1.0]);
    // 2.54 -> 127, -1.27 -> -63.5 -> -64 (even), 0.03 -> 1.5 -> 2, -0.05 -> -2.5 -> -2.
    assert_eq!(q[..4], [127.0, -64.0, 2.0, -2.0]);
    assert_eq!(q[4..], [0.0; 4]);
    // Never -128: the largest magnitude of either sign is 127.
    let (q, _) = quantize_weights(&[-3.0, 1.0, 2.9999], 1);
    assert_eq!(q, vec![-127.0, 42.0, 127.0]);
    assert_eq!(quantize_weight(-1000.0, 1.0), -127.0);
    assert_eq!(quantize_weight(0.5, 1.0), 0.0);
    assert_eq!(quantize_weight(1.5, 1.0), 2.0);
}

/// A conv layer in int8 by hand: `f32(sum * s_x * s_w) + bias`, with the padding's
/// zeros exact; the interpreter computes exactly that.
#[test]
fn the_interpreter_computes_the_integer_arithmetic() {
    let source = "network t {\n    input x: [1, 1, 3]\n    c: conv(2, (1, 3), pad=(0, 1))\n}\n";
    let mut graph = cnnc::front::compile_source(source, &Default::default()).unwrap();
    let weight = vec![0.5, -1.0, 0.25, 0.0, 0.0, 0.0];
    graph.weights.insert("c.weight", Tensor::new(vec![2, 1, 1, 3], weight.clone()).unwrap());
    graph.weights.insert("c.bias", Tensor::new(vec![2], vec![0.125, -3.0]).unwrap());
    let x = Tensor::new(vec![1, 1, 1, 3], vec![0.3, -0.2, 0.7]).unwrap();
    let input = Int8Input::from_range(-0.2, 0.7).unwrap();
    let id = graph.node_ids().into_iter().find(|&id| matches!(graph.node(id).op, Op::Conv(_))).unwrap();
    graph.node_mut(id).precision = Precision::Int8(input);
    let out = interp::run(&graph, &graph.weights, std::slice::from_ref(&x)).unwrap().remove(0);
    let (q, s_w) = quantize_weights(&weight, 2);
    let xq: Vec<f32> = x.data.iter().map(|&v| input.offset(v)).collect();
    let padded = [0.0, xq[0], xq[1], xq[2], 0.0];
    let m = input.scale() * s_w[0];
    for ow in 0..3 {
        let sum: f32 = (0..3).map(|k| padded[ow + k] * q[k]).sum();
        assert_eq!(sum.fract(), 0.0);
        assert_eq!(out.data[ow], sum * m + 0.125, "column {ow}");
        // The all-zero channel gives its bias.
        assert_eq!(out.data[3 + ow], -3.0);
    }
    // And the result is not f32's.
    graph.node_mut(id).precision = Precision::F32;
    let f32_out = interp::run(&graph, &graph.weights, &[x]).unwrap().remove(0);
    assert_ne!(f32_out.data[..3], out.data[..3]);
}

/// Calibration: its file round-trips; applied to the graph it came from, every int8
/// layer takes it; refused, naming the layers, for another network, a missing, extra or
/// changed layer, a bad scale, a file of another format.
#[test]
fn calibration_round_trips_and_refuses_what_does_not_match() {
    let graph = common::random_graph(&example("lenet5.cnn"), 1, 3, OptLevel::O2).unwrap();
    let calibration = calibrate(&graph, &random_runs(&graph, 2, 7), Method::MinMax).unwrap();
    assert_eq!(calibration.items, 2);
    assert_eq!(calibration.layers.len(), int8_layers(&graph).len());
    assert_eq!(calibration.layers.len(), 5);
    let text = calibration.to_json();
    let read = Calibration::from_json(&text).unwrap();
    assert_eq!(read, calibration);
    // The file's scales are the ones the ranges give.
    for layer in &read.layers {
        let q = Int8Input::from_range(layer.low, layer.high).unwrap();
        assert_eq!((q.scale(), q.zero_point()), (layer.scale, layer.zero_point), "{}", layer.name);
        assert!(layer.min <= layer.low && layer.high <= layer.max);
    }
    let mut assigned = graph.clone();
    assert_eq!(read.assign(&mut assigned).unwrap(), 5);
    // Applied at another batch size too.
    let mut batch4 = common::random_graph(&example("lenet5.cnn"), 4, 3, OptLevel::O2).unwrap();
    assert_eq!(read.assign(&mut batch4).unwrap(), 5);
    for id in assigned.node_ids() {
        let node = assigned.node(id);
        let entry = read.layers.iter().find(|l| l.name == node.name);
        match (node.precision, entry) {
            (Precision::Int8(q), Some(l)) => assert_eq!((q.scale(), q.zero_point()), (l.scale, l.zero_point)),
            (Precision::F32, None) => {}
            other => panic!("{}: {other:?}", node.name),
        }
    }
    let refused = |calibration: &Calibration, graph: &Graph, expected: &[&str]| {
        let error = calibration.assign(&mut graph.clone()).unwrap_err();
        for e in expected {
            assert!(error.contains(e), "expected `{e}` in: {error}");
        }
    };
    let mut other = read.clone();
    other.network = "resnet18".into();
    refused(&other, &graph, &["for network `resnet18`, not `lenet5`", "cnnc calibrate"]);
    let mut missing = read.clone();
    missing.layers.remove(1);
    refused(&missing, &graph, &["stale", "no entry for layer(s) `conv2`"]);
    let mut extra = read.clone();
    extra.layers[0].name = "conv9".into();
    refused(&extra, &graph, &["no entry for layer(s) `conv1`"]);
    let mut more = read.clone();
    let mut added = more.layers[0].clone();
    added.name = "conv9".into();
    more.layers.push(added);
    refused(&more, &graph, &["no int8 layer(s) `conv9`"]);
    // Another input size: every layer's input shape changed.
    let bigger = cnnc::front::compile_source(
        &example("lenet5.cnn"),
        &cnnc::front::BuildOptions { batch: 1, input_shape: Some(vec![1, 32, 32]) },
    );
    if let Ok(mut bigger) = bigger {
        bigger.weights = cnnc::weights::random_weights(&bigger, 3);
        cnnc::passes::optimize(&mut bigger, OptLevel::O2).unwrap();
        refused(&read, &bigger, &["changed", "conv1 (calibrated as conv on [1, 28, 28], here conv on [1, 32, 32])"]);
    }
    let mut bad_scale = read.clone();
    bad_scale.layers[2].scale = 0.0;
    refused(&bad_scale, &graph, &["scale 0 is not a positive finite number"]);
    assert!(Calibration::from_json("{}").unwrap_err().contains("not a cnnc calibration file"));
    let renamed = text.replace("cnnc-calibration-1", "cnnc-calibration-9");
    assert!(Calibration::from_json(&renamed).unwrap_err().contains("format"));
    assert!(Calibration::from_json("[1, 2").is_err());
    // Calibrating nothing, or with a nonsense percentile, is refused.
    assert!(calibrate(&graph, &[], Method::MinMax).is_err());
    assert!(calibrate(&graph, &random_runs(&graph, 1, 1), Method::Percentile(40.0)).is_err());
}

/// The percentile method narrows a range that one outlier widened: the outlier
/// saturates instead of coarsening every other value's step.
#[test]
fn the_percentile_method_cuts_outliers() {
    let source = "network t {\n    input x: [1, 100, 100]\n    c: conv(2, 3, pad=1)\n}\n";
    let graph = common::random_graph(source, 1, 2, OptLevel::O2).unwrap();
    let mut runs = random_runs(&graph, 1, 4);
    runs[0][0].data[17] = 1000.0;
    let minmax = calibrate(&graph, &runs, Method::MinMax).unwrap();
    let percentile = calibrate(&graph, &runs, Method::Percentile(99.99)).unwrap();
    let (a, b) = (&minmax.layers[0], &percentile.layers[0]);
    assert_eq!(a.max, 1000.0);
    assert_eq!(a.high, 1000.0);
    assert!(b.high < 10.0 && b.high > 2.0, "{b:?}");
    assert!(b.low < -2.0 && b.low > -10.0, "{b:?}");
    assert!(b.scale < a.scale / 50.0);
    assert_eq!(percentile.method, "percentile 99.99");
}

/// Examples on the cpu target in int8 against the simulation, layer by layer (the small
/// ones at every CPU level, one and two threads); int8 is far from f32. The errors
/// against f32 are printed (random weights; BENCHMARKS.md has them).
#[test]
fn cpu_int8_matches_the_simulation_on_examples() {
    for name in ["lenet5.cnn", "digits.cnn", "squeezenet1_1.cnn", "resnet18_cifar.cnn", "mobilenet_v2.cnn"] {
        let (f32_graph, graph) = int8_graph(&example(name), 2, 7, Method::MinMax);
        let inputs = common::random_inputs(&graph, 11);
        let small = name == "lenet5.cnn" || name == "digits.cnn";
        let levels = if small { common::cpu_levels() } else { vec![None] };
        let threads_tried: &[usize] = if small { &[1, 2] } else { &[2] };
        for cpu in levels {
            for &threads in threads_tried {
                let ((error, layer), end_to_end, against_f32) = common::cpu_layers_against_simulation(
                    &graph,
                    &f32_graph,
                    &inputs,
                    cpu,
                    threads,
                    Precision::F32,
                    Default::default(),
                );
                let level = cpu.map_or("host", |l| l.name());
                eprintln!(
                    "{name} cpu {level} {threads} thread(s): worst layer {error:.2e} ({layer}), end to end {end_to_end:.2e} \
                     against the int8 simulation, {against_f32:.2e} against f32"
                );
                assert!(error <= INT8_TOLERANCE, "{name} at {level}, {threads} threads: layer {layer}: {error:e}");
                assert!(against_f32 > 1e3 * INT8_TOLERANCE, "{name}: int8 is {against_f32:e} from f32");
            }
        }
    }
}

/// Random conv layers (kernel, stride, padding, dilation, groups, depthwise, odd sizes,
/// fused activations) and linear layers, calibrated on random inputs, on the cpu target
/// in int8 against the simulation, layer by layer.
#[test]
fn cpu_int8_matches_the_simulation_on_random_layers() {
    for (case, (source, batch)) in common::random_conv_linear_programs(40).into_iter().enumerate() {
        let case = case as u64;
        let method = if case.is_multiple_of(2) { Method::MinMax } else { Method::Percentile(99.9) };
        let (f32_graph, graph) = int8_graph(&source, batch, case, method);
        let inputs = common::random_inputs(&graph, case + 100);
        let ((error, layer), _, against_f32) = common::cpu_layers_against_simulation(
            &graph,
            &f32_graph,
            &inputs,
            None,
            2,
            Precision::F32,
            Default::default(),
        );
        assert!(error <= INT8_TOLERANCE, "case {case}: layer {layer}: {error:e}\n{source}");
        assert!(against_f32 > 10.0 * INT8_TOLERANCE, "case {case}: int8 {against_f32:e} from f32\n{source}");
    }
}

/// The cpu target's input quantization (Cranelift code, four lanes and one at a time)
/// is `Int8Input::offset`'s, special values included, at every CPU level: a 1x1 conv
/// of weights (1, 0, 0, 0) (q_w = 127 for channel 0, whose values are the specials; 4
/// input channels, so that the AVX2 integer tiles take it) gives `offset * 127 * m`,
/// bit for bit as the interpreter.
#[test]
fn the_cpu_target_quantizes_as_the_interpreter() {
    let q = Int8Input::new(0.5, 10).unwrap();
    let specials = [
        1.25,
        1.75,
        -1.25,
        0.0,
        -0.0,
        -100.0,
        1000.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        -f32::MAX,
        f32::from_bits(1),
        2.71,
        -4.999,
        127.25,
        127.75,
    ];
    let data: Vec<f32> = (0..35).map(|i| specials[i % specials.len()]).collect();
    let source = "network t {\n    input x: [4, 5, 7]\n    c: conv(1, 1, bias=false)\n}\n";
    let mut graph = cnnc::front::compile_source(source, &Default::default()).unwrap();
    graph.weights.insert("c.weight", Tensor::new(vec![1, 4, 1, 1], vec![1.0, 0.0, 0.0, 0.0]).unwrap());
    // Channel 0 holds the values, the other three zeros.
    let image = |data: &[f32]| {
        let planes: Vec<f32> = data.iter().copied().chain(std::iter::repeat_n(0.0, 3 * data.len())).collect();
        Tensor::new(vec![1, 4, 5, 7], planes).unwrap()
    };
    cnnc::passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let id = graph.node_ids().into_iter().find(|&id| matches!(graph.node(id).op, Op::Conv(_))).unwrap();
    graph.node_mut(id).precision = Precision::Int8(q);
    let input = image(&data);
    let expected = interp::run(&graph, &graph.weights, std::slice::from_ref(&input)).unwrap().remove(0);
    let m = q.scale() * (1.0 / 127.0);
    for (x, y) in data.iter().zip(&expected.data) {
        let want = q.offset(*x) * 127.0 * m;
        assert!(want.is_nan() && y.is_nan() || want == *y, "{x:e}: {y:e} vs {want:e}");
    }
    // With the NaN, the AVX2 level runs the f32 tiles (the integer tiles cannot hold
    // it); without, its integer tiles, which must saturate the same way.
    let finite: Vec<f32> = data.iter().map(|&x| if x.is_nan() { 0.75 } else { x }).collect();
    for data in [data, finite] {
        let input = image(&data);
        let expected = interp::run(&graph, &graph.weights, std::slice::from_ref(&input)).unwrap().remove(0);
        for cpu in common::cpu_levels() {
            let options = cnnc::exec::ExecOptions { threads: Some(1), cpu, ..Default::default() };
            let executor = cnnc::exec::compile_with(graph.clone(), cnnc::exec::Target::Cpu, &options).unwrap();
            let out = executor.run(std::slice::from_ref(&input)).unwrap().remove(0);
            for ((x, y), e) in data.iter().zip(&out.data).zip(&expected.data) {
                let same = if e.is_nan() { y.is_nan() } else { y == e };
                assert!(same, "{cpu:?}: {x:e} gave {y:e}, expected {e:e}");
            }
        }
    }
    // The gpu target refuses an int8 graph.
    let error = cnnc::exec::compile(graph, cnnc::exec::Target::Gpu).err().unwrap();
    assert!(error.contains("the gpu target runs f32 only"), "{error}");
}

/// Which integer tiles a check runs: AVX2's (x86-64-v3), or the host's AVX-512 VNNI
/// tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tiles {
    Avx2,
    Vnni,
}

impl Tiles {
    /// The kinds of integer tiles this machine runs.
    fn on_this_host() -> Vec<Tiles> {
        let mut tiles = Vec::new();
        if cnnc::backend::clif::CpuLevel::X86_64V3.host_has() {
            tiles.push(Tiles::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if cnnc::backend::clif::CpuLevel::X86_64V4.host_has() && std::arch::is_x86_feature_detected!("avx512vnni") {
            tiles.push(Tiles::Vnni);
        }
        tiles
    }
}

/// An int8 graph on the cpu target with `tiles` (`threads` threads), layer by layer
/// against the interpreter's simulation, each layer fed the cpu's values of its operands:
/// every int8 conv layer with one group (on AVX2, of 4 input channels or more), and every int8
/// linear layer of 4 input features or more (the rules of `ConvKernel::int8_tiles_apply`
/// and `LinearKernel::int8_tiles_apply`), must run on the integer tiles, every depthwise
/// one the bands take (`DepthwiseKernel::applies`) on the bands of the same vectors
/// (AVX2's or AVX-512's) over the quantized plane, and give the
/// simulation's values bit for bit (a NaN for a NaN) when its epilogue is exact in f32
/// (none, relu, clamp, a residual add); with another activation (sigmoid...), whose
/// code rounds differently from the interpreter's in the last bit, within
/// `INT8_TOLERANCE`. Returns how many layers were checked bit for bit (the depthwise ones
/// among them counted in `depthwise`) and within the
/// tolerance, or the first that failed.
fn integer_tiles_against_simulation(
    graph: &Graph,
    inputs: &[Tensor],
    threads: usize,
    tiles: Tiles,
    counts: Option<[&mut usize; 2]>,
) -> Result<(usize, usize), String> {
    use cnnc::backend::clif::{CodegenOptions, CpuLevel, compile_jit_with};
    use cnnc::ir::Activation;
    let nodes: Vec<_> =
        graph.topo_order().unwrap().into_iter().filter(|&id| !matches!(graph.node(id).op, Op::Input { .. })).collect();
    let (copy, positions) = cnnc::compare::with_every_node_as_output(graph, &nodes);
    let cpu = (tiles == Tiles::Avx2).then_some(CpuLevel::X86_64V3);
    let options = CodegenOptions { cpu, ..CodegenOptions::default() };
    let mut model = compile_jit_with(&copy, &options)?;
    model.set_threads(threads);
    let algorithms: Vec<(String, String)> =
        model.kernels().iter().map(|k| (k.name.clone(), k.algorithm.clone())).collect();
    let values = model.run(inputs)?;
    let cpu_of: std::collections::HashMap<_, &Tensor> =
        nodes.iter().zip(&positions).map(|(&id, &k)| (id, &values[k])).collect();
    let mut checked = (0, 0);
    let mut depthwise = 0;
    let mut pointwise = 0;
    let mut failure = None;
    interp::run_rewriting(graph, &graph.weights, inputs, &mut |id, value| {
        let Some(cpu) = cpu_of.get(&id) else { return };
        let node = graph.node(id);
        let x_shape = &graph.node(graph.op_operands(id)[0]).shape;
        // The kernel the layer must run on: the integer tiles, or the depthwise bands
        // (`DepthwiseKernel::applies`) over the quantized plane.
        // With VNNI the 1x1 layers on large planes run on the pointwise pixel tiles
        // ("pointwise, ... int8 tiles (vpdpbusd)"), the others on the integer tiles.
        let integer_tiles = if tiles == Tiles::Avx2 { "int8 integer tiles (vpmaddwd)" } else { "tiles (vpdpbusd)" };
        let integer_tiles = integer_tiles.to_string();
        let depthwise_bands = format!("depthwise, {} bands", if tiles == Tiles::Avx2 { "AVX2" } else { "AVX-512" });
        let expected = match &node.op {
            Op::Conv(conv)
                if conv.groups == x_shape[1]
                    && conv.out_channels == x_shape[1]
                    && conv.dilation.h == 1
                    && conv.dilation.w == 1
                    && conv.stride.w <= 2
                    && conv.kernel.h <= 11
                    && conv.kernel.w <= 11 =>
            {
                Some(&depthwise_bands)
            }
            Op::Conv(conv) if conv.groups == 1 && (x_shape[1] >= 4 || tiles == Tiles::Vnni) => Some(&integer_tiles),
            Op::Linear { .. } if x_shape.last().is_some_and(|&k| k >= 4) => Some(&integer_tiles),
            _ => None,
        };
        if let Some(expected) = expected.filter(|_| node.precision.is_int8() && failure.is_none()) {
            let prefix = format!("{} (", node.name);
            let algorithm = algorithms.iter().find(|(name, _)| name.starts_with(&prefix)).map(|(_, a)| a.as_str());
            let differ =
                cpu.data.iter().zip(&value.data).filter(|(c, v)| !(c.is_nan() && v.is_nan() || c == v)).count();
            let ep = &node.epilogue;
            let exact = [ep.activation, ep.post_activation]
                .iter()
                .all(|a| matches!(a, None | Some(Activation::Relu | Activation::Clamp { .. })));
            let error = relative_l2(&cpu.data, &value.data);
            let algorithm = algorithm.unwrap_or_default();
            let depthwise_int8 = algorithm.contains("int8 operands (exact in f32)");
            if !algorithm.contains(expected.as_str()) || expected == &depthwise_bands && !depthwise_int8 {
                failure = Some(format!("layer {}: not on `{expected}`: {algorithm:?}", node.name));
            } else if !exact {
                if error > INT8_TOLERANCE || error.is_nan() {
                    failure = Some(format!("layer {}: {error:e} from the simulation", node.name));
                }
                checked.1 += 1;
            } else if differ > 0 {
                let first = cpu.data.iter().zip(&value.data).position(|(c, v)| !(c.is_nan() && v.is_nan() || c == v));
                let first = first.map(|i| (i, cpu.data[i], value.data[i]));
                failure = Some(format!(
                    "layer {}: {differ} of {} values differ from the simulation (first: {first:?})",
                    node.name,
                    value.data.len()
                ));
            } else {
                checked.0 += 1;
                depthwise += usize::from(expected == &depthwise_bands);
                pointwise += usize::from(algorithm.starts_with("pointwise"));
            }
        }
        *value = (*cpu).clone();
    })
    .unwrap();
    if let Some([depthwise_count, pointwise_count]) = counts {
        *depthwise_count += depthwise;
        *pointwise_count += pointwise;
    }
    failure.map_or(Ok(checked), Err)
}

/// The integer tiles (`kernels/int8.rs`) are exact: AVX2's (x86-64-v3, also where
/// AVX-512 is the default) and, on a host with AVX512_VNNI, the AVX-512 VNNI tiles
/// (`vpdpbusd`). Every int8 conv (one group) and linear layer they run
/// gives the simulation's values bit for bit, on the examples (batch 2) and on the
/// random layers (odd channel and feature counts, partial tiles of pixels, rows and
/// channels, stride, padding, dilation, no epilogue, relu and sigmoid; batch 1 to 3),
/// with 1 and 2 threads. The other layers keep `INT8_TOLERANCE`
/// (`cpu_int8_matches_the_simulation_on_random_layers`).
#[test]
fn integer_tiles_match_the_simulation_bit_for_bit() {
    let kinds = Tiles::on_this_host();
    if kinds.is_empty() {
        eprintln!("skipped: this machine has no AVX2");
        return;
    }
    for tiles in kinds {
        let mut exact = 0;
        let mut close = 0;
        let mut depthwise = 0;
        let mut pointwise = 0;
        // The examples (batch 2), then the random layers.
        let examples = ["lenet5.cnn", "digits.cnn", "squeezenet1_1.cnn", "resnet18_cifar.cnn", "mobilenet_v2.cnn"]
            .map(|name| (name.to_string(), int8_graph(&example(name), 2, 7, Method::MinMax).1, 11));
        let random = common::random_conv_linear_programs(40).into_iter().enumerate().map(|(case, (source, batch))| {
            let case = case as u64;
            let method = if case.is_multiple_of(2) { Method::MinMax } else { Method::Percentile(99.9) };
            (format!("case {case}\n{source}"), int8_graph(&source, batch, case, method).1, case + 100)
        });
        for (label, graph, seed) in examples.into_iter().chain(random) {
            let inputs = common::random_inputs(&graph, seed);
            for threads in [1, 2] {
                let counts = Some([&mut depthwise, &mut pointwise]);
                let (e, c) = integer_tiles_against_simulation(&graph, &inputs, threads, tiles, counts)
                    .unwrap_or_else(|e| panic!("{tiles:?}, {threads} thread(s): {e}: {label}"));
                exact += e;
                close += c;
            }
        }
        eprintln!(
            "{tiles:?}: layer runs on the integer tiles or depthwise bands: {exact} bit for bit ({depthwise} \
             depthwise, {pointwise} on the pointwise pixel tiles), {close} (sigmoid) within {INT8_TOLERANCE:e}"
        );
        assert!(exact >= 100 && close >= 4, "{tiles:?}: too few layers ran on the integer tiles: {exact} and {close}");
        assert!(depthwise >= 20, "{tiles:?}: too few depthwise layers: {depthwise}");
        assert!(tiles == Tiles::Avx2 || pointwise >= 20, "{tiles:?}: too few pointwise layers: {pointwise}");
    }
}

/// An input with a NaN takes the f32 tiles (no integer holds a NaN), for that batch
/// element only (a conv; a linear layer's whole batch), whichever part's share of the
/// copy met it; the outputs that read it are NaN, the others exact, as in the
/// simulation. Saturated values (infinities, outliers) run on the integer tiles. On
/// AVX2's tiles and the VNNI tiles where the host has them.
#[test]
fn integer_tiles_keep_nan() {
    let kinds = Tiles::on_this_host();
    if kinds.is_empty() {
        eprintln!("skipped: this machine has no AVX2");
        return;
    }
    for tiles in kinds {
        let source = "network t {\n    input x: [5, 9, 11]\n    c: conv(19, 3, pad=1)\n    relu\n}\n";
        let (_, graph) = int8_graph(source, 3, 3, Method::MinMax);
        let mut inputs = common::random_inputs(&graph, 4);
        let plane = 9 * 11;
        let image = 5 * plane;
        // Batch element 1: a NaN in channel 4 (the odd last one); element 2: infinities
        // and a large value, which saturate.
        inputs[0].data[image + 4 * plane + 20] = f32::NAN;
        inputs[0].data[2 * image + 3] = f32::INFINITY;
        inputs[0].data[2 * image + plane + 50] = f32::NEG_INFINITY;
        inputs[0].data[2 * image + 2 * plane + 7] = 1e30;
        for threads in [1, 2] {
            let checked = integer_tiles_against_simulation(&graph, &inputs, threads, tiles, None).unwrap();
            assert_eq!(checked, (1, 0), "{tiles:?}");
        }
        let out = interp::run(&graph, &graph.weights, &inputs).unwrap().remove(0);
        let nans = out.data.iter().filter(|x| x.is_nan()).count();
        // The 3x3 window around one pixel (away from the border), in all 19 channels.
        assert_eq!(nans, 9 * 19, "the simulation's NaNs");

        // A 1x1 layer on a plane large enough for the pointwise pixel tiles with VNNI
        // (720 pixels, a partial last tile; 6 input channels, a partial last quad): the
        // NaN's pixel is NaN in every output channel, the rest exact.
        let source = "network t {\n    input x: [6, 24, 30]\n    c: conv(13, 1)\n    relu\n}\n";
        let (_, graph) = int8_graph(source, 3, 6, Method::MinMax);
        let mut wide = common::random_inputs(&graph, 7);
        let (plane, image) = (24 * 30, 6 * 24 * 30);
        wide[0].data[image + 5 * plane + 700] = f32::NAN;
        wide[0].data[2 * image + 9] = f32::INFINITY;
        for threads in [1, 2] {
            let checked = integer_tiles_against_simulation(&graph, &wide, threads, tiles, None).unwrap();
            assert_eq!(checked, (1, 0), "{tiles:?}");
        }
        let out = interp::run(&graph, &graph.weights, &wide).unwrap().remove(0);
        assert_eq!(out.data.iter().filter(|x| x.is_nan()).count(), 13, "the simulation's NaNs");

        // A linear layer (495 features, odd): the whole batch takes the f32 tiles when a
        // row has a NaN; that row's outputs are NaN.
        let source = "network t {\n    input x: [5, 9, 11]\n    flatten\n    fc: linear(21)\n}\n";
        let (_, graph) = int8_graph(source, 3, 5, Method::MinMax);
        for threads in [1, 2] {
            let checked = integer_tiles_against_simulation(&graph, &inputs, threads, tiles, None).unwrap();
            assert_eq!(checked, (1, 0));
        }
        let out = interp::run(&graph, &graph.weights, &inputs).unwrap().remove(0);
        assert_eq!(out.data.iter().filter(|x| x.is_nan()).count(), 21, "the simulation's NaNs");
    }
}

/// The trained digits model: calibrated on the ten sample images of
/// `examples/digits/` (0.png to 9.png; the training images are not in the repository),
/// top-1 accuracy on the 360 held-out images in f32 and in int8 on the cpu target and
/// in the interpreter (the same predictions); int8 loses at most one point.
#[test]
fn digits_keep_their_accuracy_in_int8() {
    let dir = temp_dir("digits");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for digit in 0..10 {
        let name = format!("{digit}.png");
        std::fs::copy(repo().join("examples/digits").join(&name), images.join(&name)).unwrap();
    }
    let calib = dir.join("digits.calib.json");
    let out = cnnc(&[
        "calibrate",
        "examples/digits.cnn",
        "--weights",
        "examples/digits/digits.safetensors",
        "--inputs",
        images.to_str().unwrap(),
        "-o",
        calib.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("calibrated 4 int8 layers of digits on 10 items"));
    let calibration = Calibration::from_json(&std::fs::read_to_string(&calib).unwrap()).unwrap();

    let read_npy =
        |name: &str| cnnc::io::read_npy(&std::fs::read(repo().join("examples/digits").join(name)).unwrap()).unwrap();
    let (x, y) = (read_npy("test_x.npy"), read_npy("test_y.npy"));
    let n = x.shape[0];
    let labels: Vec<usize> = y.data.iter().map(|&v| v as usize).collect();
    let source = std::fs::read(repo().join("examples/digits.cnn")).unwrap();
    let mut graph =
        cnnc::front::compile_bytes(&source, &cnnc::front::BuildOptions { batch: n, input_shape: None }).unwrap();
    let weights = std::fs::read(repo().join("examples/digits/digits.safetensors")).unwrap();
    graph.weights = cnnc::weights::load_safetensors(&weights, &graph, false).unwrap();
    cnnc::passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let mut int8 = graph.clone();
    assert_eq!(calibration.assign(&mut int8).unwrap(), 4);
    let correct = |graph: &Graph, target| {
        let executor = cnnc::exec::compile(graph.clone(), target).unwrap();
        let out = executor.run(std::slice::from_ref(&x)).unwrap().remove(0);
        let predicted = argmax_rows(&out);
        (predicted.iter().zip(&labels).filter(|(p, l)| p == l).count(), predicted, out)
    };
    let (f32_right, _, f32_out) = correct(&graph, cnnc::exec::Target::Cpu);
    let (cpu_right, cpu_predicted, cpu_out) = correct(&int8, cnnc::exec::Target::Cpu);
    let (ref_right, ref_predicted, ref_out) = correct(&int8, cnnc::exec::Target::Reference);
    let error = relative_l2(&ref_out.data, &f32_out.data);
    let agree = argmax_rows(&f32_out).iter().zip(&ref_predicted).filter(|(a, b)| a == b).count();
    eprintln!(
        "digits, {n} held-out images: f32 {f32_right} right, int8 {ref_right} right (cpu {cpu_right}); int8 agrees with \
         f32's top-1 on {agree}; relative L2 against f32 {error:.3e}; cpu against the simulation {:.2e}",
        relative_l2(&cpu_out.data, &ref_out.data)
    );
    // The sample images are 10 of the held-out ones (one per digit): the accuracy on the
    // other 350, which calibration did not see.
    let seen: Vec<usize> = (0..10)
        .map(|digit| {
            let bytes = std::fs::read(repo().join(format!("examples/digits/{digit}.png"))).unwrap();
            let (image, _) = cnnc::io::load_image_noted(&bytes, 1, 8, 8, &[0.0], &[1.0]).unwrap();
            let distance = |i: usize| {
                x.data[i * 64..(i + 1) * 64].iter().zip(&image.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
            };
            let nearest = (0..n).min_by(|&a, &b| distance(a).total_cmp(&distance(b))).unwrap();
            assert!(distance(nearest) <= 1.0 / 255.0, "{digit}.png is not a held-out image");
            nearest
        })
        .collect();
    let unseen = |predicted: &[usize]| (0..n).filter(|i| !seen.contains(i) && predicted[*i] == labels[*i]).count();
    eprintln!(
        "digits, the {} held-out images calibration did not see: f32 {} right, int8 {} right",
        n - 10,
        unseen(&argmax_rows(&f32_out)),
        unseen(&ref_predicted)
    );
    assert_eq!(cpu_predicted, ref_predicted);
    assert!(relative_l2(&cpu_out.data, &ref_out.data) <= INT8_TOLERANCE);
    assert!(error > 0.0);
    // At most one point of top-1 lost.
    assert!(100 * (f32_right - ref_right.min(f32_right)) <= n, "f32 {f32_right}, int8 {ref_right} of {n}");
    std::fs::remove_dir_all(dir).ok();
}

/// The command line: `calibrate` from an .npy batch, `run` in int8 on the cpu and
/// reference targets (they agree and differ from f32), `run --compare`, `bench`, `build`
/// (the IR and the header show the int8 layers), and every refusal, exit 1: int8
/// without --calib (naming `cnnc calibrate`), --calib without int8, a calibration of
/// another network (stale), one missing a layer (named), a broken file, the gpu target.
#[test]
fn the_command_line_runs_int8() {
    let dir = temp_dir("cli");
    let input = dir.join("x.npy");
    std::fs::write(&input, cnnc::io::write_npy(&cnnc::weights::random_normal(&[3, 1, 28, 28], 1))).unwrap();
    let calib = dir.join("lenet5.calib.json");
    let ok = |out: &Output| assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cnnc(&[
        "calibrate",
        "examples/lenet5.cnn",
        "--random-weights",
        "--inputs",
        input.to_str().unwrap(),
        "-o",
        calib.to_str().unwrap(),
        "--method",
        "percentile",
        "--percentile",
        "99.9",
    ]);
    ok(&out);
    let calibration = Calibration::from_json(&std::fs::read_to_string(&calib).unwrap()).unwrap();
    assert_eq!((calibration.items, calibration.layers.len()), (3, 5));
    let calib = calib.to_str().unwrap();

    let run = |extra: &[&str], output: &str| {
        let output = dir.join(output);
        let mut args =
            vec!["run", "examples/lenet5.cnn", "--random-weights", "--input", input.to_str().unwrap(), "--output"];
        args.push(output.to_str().unwrap());
        args.extend_from_slice(extra);
        (cnnc(&args), output)
    };
    let read = |path: &Path| cnnc::io::read_npy(&std::fs::read(path).unwrap()).unwrap();
    let (out, f32_path) = run(&["--target", "reference"], "f32.npy");
    ok(&out);
    let (out, reference_path) = run(&["--target", "reference", "--precision", "int8", "--calib", calib], "ref.npy");
    ok(&out);
    let (out, cpu_path) = run(&["--precision", "int8", "--calib", calib], "cpu.npy");
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: --precision int8 on the cpu target"));
    let (out, v2_path) = run(&["--precision", "int8", "--calib", calib, "--cpu", "x86-64-v2"], "v2.npy");
    ok(&out);
    let int8_y = read(&reference_path);
    let error = relative_l2(&int8_y.data, &read(&f32_path).data);
    eprintln!("lenet5 through `cnnc run --target reference`: int8 vs f32 relative L2 {error:.3e}");
    assert!(error > 1e-4);
    for path in [cpu_path, v2_path] {
        let cpu_error = relative_l2(&read(&path).data, &int8_y.data);
        assert!(cpu_error <= INT8_TOLERANCE, "{}: {cpu_error:e}", path.display());
    }
    let (out, _) = run(&["--precision", "int8", "--calib", calib, "--compare", "cpu,reference"], "unused.npy");
    ok(&out);

    let refused = |extra: &[&str], expected: &[&str]| {
        let (out, _) = run(extra, "refused.npy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{extra:?}: expected `{e}` in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    };
    refused(&["--precision", "int8"], &["--precision int8 needs --calib FILE", "cnnc calibrate"]);
    refused(&["--precision", "bf16", "--calib", calib], &["--calib is for --precision int8"]);
    refused(&["--precision", "int8", "--calib", calib, "--target", "gpu"], &["the gpu target runs f32 only"]);
    // A calibration of another network.
    let digits_calib = dir.join("digits.calib.json");
    let digits_input = dir.join("digits.npy");
    std::fs::write(&digits_input, cnnc::io::write_npy(&cnnc::weights::random_normal(&[2, 1, 8, 8], 1))).unwrap();
    ok(&cnnc(&[
        "calibrate",
        "examples/digits.cnn",
        "--random-weights",
        "--inputs",
        digits_input.to_str().unwrap(),
        "-o",
        digits_calib.to_str().unwrap(),
    ]));
    refused(
        &["--precision", "int8", "--calib", digits_calib.to_str().unwrap()],
        &["for network `digits`, not `lenet5`", "cnnc calibrate"],
    );
    // A layer missing from the file.
    let mut missing = calibration.clone();
    missing.layers.retain(|l| l.name != "fc2");
    let missing_path = dir.join("missing.calib.json");
    std::fs::write(&missing_path, missing.to_json()).unwrap();
    refused(&["--precision", "int8", "--calib", missing_path.to_str().unwrap()], &["stale", "`fc2`"]);
    let broken = dir.join("broken.calib.json");
    std::fs::write(&broken, "{\"format\": 3").unwrap();
    refused(&["--precision", "int8", "--calib", broken.to_str().unwrap()], &["not a cnnc calibration file"]);
    refused(&["--precision", "int8", "--calib", dir.join("absent.json").to_str().unwrap()], &["absent.json"]);
    // calibrate's own refusals.
    let out =
        cnnc(&["calibrate", "examples/lenet5.cnn", "--random-weights", "--inputs", dir.join("none").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let out = cnnc(&[
        "calibrate",
        "examples/lenet5.cnn",
        "--random-weights",
        "--inputs",
        input.to_str().unwrap(),
        "--method",
        "percentile",
        "--percentile",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--percentile 20"));

    for target in ["cpu", "reference"] {
        let bench = cnnc(&[
            "bench",
            "examples/lenet5.cnn",
            "--precision",
            "int8",
            "--calib",
            calib,
            "--runs",
            "1",
            "--target",
            target,
        ]);
        ok(&bench);
        assert!(String::from_utf8_lossy(&bench.stdout).contains(", int8)"));
    }
    let bench = cnnc(&["bench", "examples/lenet5.cnn", "--precision", "int8", "--calib", calib, "--target", "gpu"]);
    assert_eq!(bench.status.code(), Some(1));
    let bench = cnnc(&["bench", "examples/lenet5.cnn", "--precision", "int8"]);
    assert_eq!(bench.status.code(), Some(1));

    let build = |extra: &[&str]| {
        let mut args = vec!["build", "examples/lenet5.cnn", "--random-weights", "-o", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        cnnc(&args)
    };
    ok(&build(&["--precision", "int8", "--calib", calib, "--emit", "ir,header"]));
    let ir = std::fs::read_to_string(dir.join("lenet5.ir")).unwrap();
    assert_eq!(ir.matches("precision=int8").count(), 5, "{ir}");
    let header = std::fs::read_to_string(dir.join("lenet5.h")).unwrap();
    assert!(header.contains("`conv1` (conv): int8 (input scale"), "{header}");
    assert!(header.contains("`fc3` (linear): int8 (input scale"), "{header}");
    let out = build(&["--precision", "int8", "--emit", "header"]);
    assert_eq!(out.status.code(), Some(1));
    let out = build(&["--precision", "int8", "--calib", calib, "--target", "gpu"]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(dir).ok();
}

/// The build-script API builds int8 objects from a calibration file, and refuses one
/// for another network.
#[test]
fn the_build_script_api_takes_a_calibration() {
    let dir = temp_dir("api");
    let graph = common::random_graph(&example("lenet5.cnn"), 1, 1, OptLevel::O2).unwrap();
    let calibration = calibrate(&graph, &random_runs(&graph, 2, 3), Method::MinMax).unwrap();
    let path = dir.join("lenet5.calib.json");
    std::fs::write(&path, calibration.to_json()).unwrap();
    let model = cnnc::build::Model::new(repo().join("examples/lenet5.cnn"))
        .random_weights(1)
        .out_dir(&dir)
        .cargo_metadata(false);
    let compiled = model.clone().int8(&path).compile().unwrap();
    let header = std::fs::read_to_string(&compiled.header).unwrap();
    assert!(header.contains("(conv): int8"), "{header}");
    let mut other = calibration.clone();
    other.network = "other".into();
    std::fs::write(&path, other.to_json()).unwrap();
    let error = model.clone().int8(&path).compile().unwrap_err().to_string();
    assert!(error.contains("for network `other`"), "{error}");
    let error = model.precision(Precision::Int8(Int8Input::new(1.0, 0).unwrap())).compile().unwrap_err().to_string();
    assert!(error.contains(".int8("), "{error}");
    std::fs::remove_dir_all(dir).ok();
}

/// The figures of BENCHMARKS.md's "int8, first slice" table: for every example, random
/// weights (He-normal; BatchNorm statistics and affine parameters drawn as
/// `weights::random_weights` draws them, running variance U(0.5, 1.5)), calibrated
/// (minmax) on 4 random N(0, 1) images, then run on 16 other random images on the cpu
/// target in f32 and in int8: the relative L2 error of the outputs and the top-1
/// agreement. Slow (the interpreter calibrates the large networks): run it with
/// `cargo test --test int8 -- --ignored --nocapture`. It checks that int8 changes every
/// output and stays within 50% relative L2 of f32.
#[test]
#[ignore]
fn int8_against_f32_on_every_example() {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cnn"))
        .collect();
    names.sort();
    println!("| example | int8 layers | relative L2 vs f32 | top-1 agreement (16 images) |");
    println!("| --- | --- | --- | --- |");
    for name in names {
        let source = example(&name);
        let Ok(one) = common::random_graph(&source, 1, 7, OptLevel::O2) else { continue };
        if one.inputs.len() != 1 {
            continue;
        }
        let calibration = calibrate(&one, &random_runs(&one, 4, 500), Method::MinMax).unwrap();
        let f32_graph = common::random_graph(&source, 16, 7, OptLevel::O2).unwrap();
        let mut graph = f32_graph.clone();
        let layers = calibration.assign(&mut graph).unwrap();
        let inputs = common::random_inputs(&graph, 11);
        let run = |graph: &Graph| {
            let executor = cnnc::exec::compile(graph.clone(), cnnc::exec::Target::Cpu).unwrap();
            executor.run(&inputs).unwrap().remove(0)
        };
        let (a, b) = (run(&f32_graph), run(&graph));
        let error = relative_l2(&b.data, &a.data);
        let agree = if a.shape.len() == 2 {
            let same = argmax_rows(&a).iter().zip(&argmax_rows(&b)).filter(|(x, y)| x == y).count();
            format!("{same}/16")
        } else {
            "(not a classifier)".into()
        };
        println!("| {} | {layers} | {error:.2e} | {agree} |", name.trim_end_matches(".cnn"));
        assert!(error > 0.0 && error < 0.5, "{name}: {error:e}");
    }
}
