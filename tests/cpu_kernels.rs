//! The CPU backend's kernel variants, each against the reference or against a variant
//! checked against it:
//! - threads: every example and feature program, run by several threads sharing each
//!   layer (`infer_part`), gives bit for bit the result of one thread (`infer`), which
//!   `tests/cpu_backend.rs` checks against the reference interpreter. Bitwise, because
//!   threads only share out the same tiles: each output value is computed by the same
//!   instructions either way. Thread counts 2 and 3 (uneven shares), batch 1 and 2
//!   (padded convolutions synchronize per batch element). The threads run the model
//!   compiled from a graph given up (`compile_jit_owned`, which frees each layer's
//!   weights once packed). `CNNC_CPU_FILTER=NAME` restricts the networks.
//! - micro-kernels: random convolutions and linear layers (channels, kernel, stride,
//!   padding, dilation, groups, batch; a fifth of them pointwise, for the pixel-lane
//!   tiles, and a fifth 3x3 stride-1 with 32 to 48 channels, odd and even sizes and
//!   sometimes a fused residual, for the Winograd kernel; proptest, shrinking to the
//!   smallest failing layer) through the default code (the AVX-512 machine-code tiles
//!   and Winograd where the host has AVX-512F, F(4x4) on the larger planes; 3x3
//!   stride-1 layers also with Winograd off and with each of F(2x2) and F(4x4) forced,
//!   on AVX-512 and on AVX2;
//!   a sixth depthwise, for the depthwise bands, and a few depthwise and pointwise
//!   layers with epilogues of every activation and MobileNet's shapes, which assert
//!   that they run on the bands and pixel tiles of each ISA the host has),
//!   the AVX2 code (`x86-64-v3`, where the host has AVX2, and the default where it has
//!   no AVX-512: direct tiles, pointwise pixel tiles, depthwise bands and Winograd on
//!   16-pixel GEMM tiles) and the
//!   portable f32x4
//!   tiles, each on 1 and 2 threads, against the interpreter: relative L2 at most 1e-4
//!   (the backends' tolerance; f32 against f64 accumulation).
//! - CPU levels: an object built with `--cpu x86-64-v2|v3|v4` holds only instructions of
//!   that level (decoded with iced-x86 and classified by the CPUID feature they need),
//!   and the v3 and v4 objects do use their vectors.

#[allow(dead_code)]
mod common;

use cnnc::backend::clif::{CodegenOptions, CpuLevel, compile_jit_with};
use cnnc::front::{BuildOptions, compile_source};
use cnnc::ir::Graph;
use cnnc::passes::{OptLevel, optimize};
use cnnc::tensor::{Tensor, relative_l2};
use proptest::prelude::*;

const TOLERANCE: f64 = 1e-4;

fn bits(tensors: &[Tensor]) -> Vec<Vec<u32>> {
    tensors.iter().map(|t| t.data.iter().map(|x| x.to_bits()).collect()).collect()
}

fn check(name: &str, source: &str, batch: usize) -> Result<(), String> {
    let mut graph = compile_source(source, &BuildOptions { batch, input_shape: None })
        .map_err(|d| format!("{name}: does not compile: {:?}", d.first().map(|d| &d.message)))?;
    graph.weights = cnnc::weights::random_weights(&graph, 7);
    optimize(&mut graph, OptLevel::O2)?;
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| cnnc::weights::random_normal(&graph.node(id).shape, 100 + i as u64))
        .collect();
    let single = bits(&cnnc::backend::clif::compile_jit(&graph)?.run(&inputs)?);
    // Several threads on the model compiled from a graph given up (`cnnc run` and `bench`
    // compile so, freeing each layer's weights once packed): the same code.
    let mut model = cnnc::backend::clif::compile_jit_owned(graph, &CodegenOptions::default())?;
    for threads in [2, 3] {
        model.set_threads(threads);
        // Twice: the second run reuses the pool.
        for run in 0..2 {
            let got = bits(&model.run(&inputs)?);
            if got != single {
                let differing: usize =
                    got.iter().zip(&single).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count()).sum();
                return Err(format!(
                    "{name} batch {batch}: {threads} threads (run {run}) differ from one thread in {differing} values"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn threads_share_layers_without_changing_results() {
    let filter = std::env::var("CNNC_CPU_FILTER").unwrap_or_default();
    let mut failures = Vec::new();
    let mut files = common::cnn_files("examples");
    files.extend(common::cnn_files("tests/programs"));
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if !name.contains(&filter) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        // The big ImageNet models at batch 1 only: they cost seconds per run here.
        let big = [
            "vgg16",
            "alexnet",
            "alexnet_original",
            "resnet50",
            "densenet121",
            "googlenet",
            "googlenet_paper",
            "resnet34",
            "resnext50_32x4d",
            "convnext_tiny",
        ]
        .contains(&name.as_str());
        let batches: &[usize] = if big { &[1] } else { &[1, 2] };
        for &batch in batches {
            match check(&name, &source, batch) {
                Ok(()) => println!("{name} batch {batch}: identical on 1, 2 and 3 threads"),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One layer under test, rendered as a program.
#[derive(Clone, Debug)]
struct Layer {
    batch: usize,
    in_channels: usize,
    hw: (usize, usize),
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    /// The activation after the convolution, if any (fused into its epilogue).
    activation: Option<&'static str>,
    /// A linear layer on the flattened input instead of a convolution.
    linear: bool,
    /// `add(x)` and `post_activation` after it (a fused residual epilogue; the output
    /// must have the input's shape).
    residual: bool,
    post_activation: &'static str,
}

/// Every activation, those that pointwise tiles apply in registers and the others.
const ACTIVATIONS: &[&str] = &[
    "relu",
    "leaky_relu(0.1)",
    "sigmoid",
    "tanh",
    "relu6",
    "hardtanh(min=-0.5, max=1)",
    "hardswish",
    "hardsigmoid",
    "silu",
    "gelu",
    "gelu(tanh=true)",
];

/// Relu half of the time (the common case), else any activation.
fn activation() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("relu"), proptest::sample::select(ACTIVATIONS)]
}

impl Layer {
    fn source(&self) -> String {
        let (c, (h, w)) = (self.in_channels, self.hw);
        let body = if self.linear {
            format!("flatten\n    linear({})", self.out_channels)
        } else {
            format!(
                "conv({}, ({}, {}), stride=({}, {}), pad=({}, {}), dilation=({}, {}), groups={})",
                self.out_channels * self.groups,
                self.kernel.0,
                self.kernel.1,
                self.stride.0,
                self.stride.1,
                self.pad.0,
                self.pad.1,
                self.dilation.0,
                self.dilation.1,
                self.groups
            )
        };
        let activation = self.activation.map(|a| format!("\n    {a}")).unwrap_or_default();
        let residual =
            if self.residual { format!("\n    add(x)\n    {}", self.post_activation) } else { String::new() };
        format!(
            "network layer {{\n    input x: [{}, {h}, {w}]\n    {body}{activation}{residual}\n}}\n",
            c * self.groups
        )
    }
}

fn any_layer() -> impl Strategy<Value = Layer> {
    (
        (1usize..=3, 1usize..=20, (1usize..=12, 1usize..=12), 1usize..=80),
        ((1usize..=5, 1usize..=5), (1usize..=3, 1usize..=3), (0usize..=2, 0usize..=2), (1usize..=2, 1usize..=2)),
        (
            prop_oneof![3 => Just(1usize), 1 => 2usize..=4],
            proptest::option::of(activation()),
            prop_oneof![5 => Just(false), 1 => Just(true)],
        ),
    )
        .prop_map(
            |(
                (batch, in_channels, hw, out_channels),
                (kernel, stride, pad, dilation),
                (groups, activation, linear),
            )| Layer {
                batch,
                in_channels,
                hw,
                out_channels,
                kernel,
                stride,
                pad,
                dilation,
                groups,
                activation,
                linear,
                residual: false,
                post_activation: "relu",
            },
        )
        // The window must fit the padded input.
        .prop_filter("the window fits", |l| {
            l.linear
                || (l.hw.0 + 2 * l.pad.0 > l.dilation.0 * (l.kernel.0 - 1)
                    && l.hw.1 + 2 * l.pad.1 > l.dilation.1 * (l.kernel.1 - 1))
        })
}

/// Pointwise layers (1x1, stride 1, no padding, one group), which have kernels of their
/// own, on planes up to 40x40 (several 64-pixel tiles, shared by the threads), with
/// every activation before and after a residual add.
fn pointwise_layer() -> impl Strategy<Value = Layer> {
    (
        (1usize..=3, 1usize..=40, (1usize..=40, 1usize..=40), 1usize..=40),
        (proptest::option::of(activation()), any::<bool>(), activation()),
    )
        .prop_map(|((batch, in_channels, hw, out_channels), (activation, residual, post_activation))| Layer {
            batch,
            in_channels,
            hw,
            out_channels: if residual { in_channels } else { out_channels },
            kernel: (1, 1),
            stride: (1, 1),
            pad: (0, 0),
            dilation: (1, 1),
            groups: 1,
            activation,
            linear: false,
            residual,
            post_activation,
        })
}

/// 3x3 stride-1 convolutions with the channels (32 and more on both sides, or 16 to 31
/// inputs where F(4x4) runs the layer) and tiles (36 and more 2x2 output tiles) that
/// select the Winograd kernel on AVX-512 and AVX2 (the smaller inputs take the direct
/// kernel otherwise), on planes up to
/// 40x40 (from about 21x21 outputs on, 36 or more 4x4 tiles: F(4x4) by default): sizes
/// of every remainder modulo 2 and 4 (partial tiles at the right and bottom edges), rows
/// of fewer than four tiles, padding 0 and 1, and with padding 1 and as many outputs as
/// inputs, sometimes a fused `ACTIVATION; add(x); ACTIVATION`.
fn winograd_layer() -> impl Strategy<Value = Layer> {
    (
        (1usize..=2, 16usize..=48, (1usize..=40, 1usize..=40), 32usize..=48, 0usize..=1),
        (proptest::option::of(activation()), any::<bool>(), activation()),
    )
        .prop_map(|((batch, in_channels, hw, out_channels, pad), (activation, residual, post_activation))| {
            let residual = residual && pad == 1;
            Layer {
                batch,
                in_channels,
                hw,
                out_channels: if residual { in_channels } else { out_channels },
                kernel: (3, 3),
                stride: (1, 1),
                pad: (pad, pad),
                dilation: (1, 1),
                groups: 1,
                activation,
                linear: false,
                residual,
                post_activation,
            }
        })
        .prop_filter("the window fits, 36 tiles or more", |l| {
            let (oh, ow) = (l.hw.0 + 2 * l.pad.0, l.hw.1 + 2 * l.pad.1);
            oh >= 3 && ow >= 3 && (oh - 2).div_ceil(2) * (ow - 2).div_ceil(2) >= 36
        })
}

/// Depthwise convolutions (groups = channels, one channel per group), which have
/// kernels of their own on AVX-512 and AVX2: kernels 1x1 to 7x7 and (3, 5), strides 1 and 2 on
/// each axis, padding up to half the kernel, channel counts below and past 16, planes up
/// to 40 wide (rows of one to three vectors, partial last ones), two images; with
/// "same" padding at stride 1 sometimes a fused residual; any activation before and after
/// it (relus and the add run in the micro-kernel's registers, the others per band).
fn depthwise_layer() -> impl Strategy<Value = Layer> {
    (
        (1usize..=2, 1usize..=40, (1usize..=40, 1usize..=40)),
        (
            prop_oneof![Just((3usize, 3usize)), Just((5, 5)), Just((7, 7)), Just((1, 1)), Just((3, 5))],
            (1usize..=2, 1usize..=2),
        ),
        (0usize..=3, 0usize..=3, proptest::option::of(activation()), any::<bool>(), activation()),
    )
        .prop_map(|((batch, channels, hw), (kernel, stride), (pad_h, pad_w, activation, residual, post_activation))| {
            let pad = (pad_h.min(kernel.0 / 2), pad_w.min(kernel.1 / 2));
            let residual = residual && stride == (1, 1) && pad == (kernel.0 / 2, kernel.1 / 2);
            Layer {
                batch,
                in_channels: 1,
                hw,
                out_channels: 1,
                kernel,
                stride,
                pad,
                dilation: (1, 1),
                groups: channels,
                activation,
                linear: false,
                residual,
                post_activation,
            }
        })
        .prop_filter("the window fits", |l| l.hw.0 + 2 * l.pad.0 >= l.kernel.0 && l.hw.1 + 2 * l.pad.1 >= l.kernel.1)
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![3 => any_layer(), 1 => pointwise_layer(), 1 => winograd_layer(), 1 => depthwise_layer()]
}

/// The layer through the default code generator and the portable one, against the
/// interpreter.
fn check_layer(layer: &Layer) -> Result<(), String> {
    let winograd_shape = layer.kernel == (3, 3) && layer.stride == (1, 1) && !layer.linear;
    let depthwise = layer.in_channels == 1 && layer.out_channels == 1 && !layer.linear;
    check_source(&layer.source(), layer.batch, winograd_shape, depthwise)
}

/// A program through the code generator's variants, on 1 and 2 threads, against the
/// interpreter (`winograd_shape`: also with Winograd off and each variant forced;
/// `depthwise`: also on the direct tiles rather than the depthwise bands).
fn check_source(source: &str, batch: usize, winograd_shape: bool, depthwise: bool) -> Result<(), String> {
    check_scaled(source, batch, winograd_shape, depthwise, 1.0)
}

/// The program compiled at `batch`, with random weights (seed 11), optimized at -O2.
fn optimized_graph(source: &str, batch: usize) -> Result<Graph, String> {
    let mut graph = compile_source(source, &BuildOptions { batch, input_shape: None })
        .map_err(|d| format!("does not compile: {:?}\n{source}", d.first().map(|d| &d.message)))?;
    graph.weights = cnnc::weights::random_weights(&graph, 11);
    optimize(&mut graph, OptLevel::O2)?;
    Ok(graph)
}

/// For each vector ISA the host has ("AVX-512" by default, "AVX2" at x86-64-v3, which an
/// AVX-512 host runs too), the algorithm of the graph's first kernel.
fn first_kernel_per_host_isa(graph: &Graph) -> Vec<(&'static str, String)> {
    let mut isas = Vec::new();
    if CpuLevel::X86_64V4.host_has() {
        isas.push(("AVX-512", CodegenOptions::default()));
    }
    if CpuLevel::X86_64V3.host_has() {
        isas.push(("AVX2", CodegenOptions { cpu: Some(CpuLevel::X86_64V3), ..CodegenOptions::default() }));
    }
    isas.into_iter()
        .map(|(isa, options)| (isa, compile_jit_with(graph, &options).unwrap().kernels()[0].algorithm.clone()))
        .collect()
}

/// [`check_source`] with the input (standard normal) times `scale`: a large scale takes
/// the activations' arguments past their clamps (exp's at -88 and 87 for sigmoid and
/// silu).
fn check_scaled(source: &str, batch: usize, winograd_shape: bool, depthwise: bool, scale: f32) -> Result<(), String> {
    let graph = optimized_graph(source, batch)?;
    let mut inputs = vec![cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 12)];
    inputs[0].data.iter_mut().for_each(|x| *x *= scale);
    let reference = cnnc::interp::run(&graph, &graph.weights, &inputs).map_err(|e| e.to_string())?;
    let mut variants = vec![
        ("default", CodegenOptions::default()),
        ("f32x4", CodegenOptions { wide: false, ..CodegenOptions::default() }),
    ];
    // The direct AVX-512 tiles on the shapes that select Winograd by default, and both
    // Winograd variants whichever the default picks.
    if winograd_shape {
        variants.push(("direct", CodegenOptions { winograd: false, ..CodegenOptions::default() }));
        variants.push(("winograd F(2x2)", CodegenOptions { winograd_f4: Some(false), ..CodegenOptions::default() }));
        variants.push(("winograd F(4x4)", CodegenOptions { winograd_f4: Some(true), ..CodegenOptions::default() }));
    }
    if depthwise {
        variants.push(("direct depthwise", CodegenOptions { depthwise: false, ..CodegenOptions::default() }));
    }
    // The AVX2 tiles, where this CPU runs them (the default is AVX-512 where it has it).
    if CpuLevel::X86_64V3.host_has() {
        let v3 = CodegenOptions { cpu: Some(CpuLevel::X86_64V3), ..CodegenOptions::default() };
        variants.push(("x86-64-v3", v3.clone()));
        // Both Winograd variants on AVX2 too (the defaults above are AVX2's on a host
        // without AVX-512).
        if winograd_shape && CpuLevel::X86_64V4.host_has() {
            variants.push(("x86-64-v3 winograd F(2x2)", CodegenOptions { winograd_f4: Some(false), ..v3.clone() }));
            variants.push(("x86-64-v3 winograd F(4x4)", CodegenOptions { winograd_f4: Some(true), ..v3 }));
        }
    }
    for (variant, options) in variants {
        let mut model = compile_jit_with(&graph, &options)?;
        for threads in [1, 2] {
            model.set_threads(threads);
            let got = model.run(&inputs)?;
            let error = relative_l2(&got[0].data, &reference[0].data);
            // NaN fails too.
            if error.is_nan() || error > TOLERANCE {
                return Err(format!("{variant} code, {threads} thread(s): relative L2 {error:.3e}\n{source}"));
            }
        }
    }
    Ok(())
}

/// [`check_scaled`] at input scales 1 and 200 (past exp's clamps for sigmoid and silu),
/// panicking on a failure; then the optimized graph, for assertions on the kernels chosen.
fn check_at_two_scales(source: &str, batch: usize, depthwise: bool) -> Graph {
    if let Err(e) = check_source(source, batch, false, depthwise) {
        panic!("{e}");
    }
    if let Err(e) = check_scaled(source, batch, false, depthwise, 200.0) {
        panic!("input times 200: {e}");
    }
    optimized_graph(source, batch).unwrap()
}

/// Each one-layer program (a network body, a batch) checked at two scales
/// ([`check_at_two_scales`]), then `expect(isa, algorithm, source)` asserted on the
/// algorithm its kernel got on each host ISA.
fn check_programs(programs: &[(&str, usize)], expect: impl Fn(&str, &str, &str)) {
    for &(body, batch) in programs {
        let source = format!("network layer {{\n    {body}\n}}\n");
        let graph = check_at_two_scales(&source, batch, false);
        for (isa, algorithm) in first_kernel_per_host_isa(&graph) {
            expect(isa, &algorithm, &source);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn micro_kernels_compute_what_the_interpreter_computes(layer in layer()) {
        if let Err(e) = check_layer(&layer) {
            prop_assert!(false, "{e}\nbatch {}", layer.batch);
        }
    }
}

/// Layers whose weights pass the direct kernel's one-pass threshold (512 KiB of packed
/// weights), where the threads share the blocks of output channels, each cut into runs
/// of pixels: full blocks and a tail, strided rows, a residual, two images.
#[test]
fn layers_with_large_weights_share_their_blocks() {
    let layer = |in_channels, hw, out_channels, kernel, stride, pad, batch, residual| Layer {
        kernel,
        stride,
        pad,
        batch,
        in_channels,
        hw,
        out_channels,
        dilation: (1, 1),
        groups: 1,
        activation: Some("relu"),
        linear: false,
        residual,
        post_activation: "relu",
    };
    let layers = [
        layer(144, (11, 11), 112, (3, 3), (2, 2), (1, 1), 1, false),
        layer(1400, (9, 9), 100, (1, 1), (2, 2), (0, 0), 2, false),
        layer(130, (7, 7), 130, (3, 3), (1, 1), (1, 1), 1, true),
    ];
    for layer in &layers {
        if let Err(e) = check_layer(layer) {
            panic!("{e}");
        }
    }
}

/// The Winograd kernel on each ISA the host has (AVX-512 by default, AVX2 at x86-64-v3),
/// both variants forced and the default, against the interpreter (within `TOLERANCE`),
/// and 2 and 3 threads bit for bit as one: ResNet's 7x7 outputs (16 2x2 tiles, which
/// Winograd runs on AVX2 only, by default F(2x2)), a 14x14 layer with a fused residual
/// (F(4x4) by default on AVX2), a 23x21 plane of partial tiles and more than one GEMM
/// tile and block of channels with partial ones (16-pixel tiles on AVX2, 6 channels;
/// with 4x4 tiles of fewer than 9 pixels, 12), two images.
#[test]
fn winograd_runs_on_each_host_isa() {
    let programs = [
        ("input x: [40, 7, 7]\n    conv(40, 3, pad=1)\n    relu", 1, Some(2)),
        ("input x: [32, 14, 14]\n    conv(32, 3, pad=1)\n    relu\n    add(x)\n    relu", 1, Some(4)),
        ("input x: [33, 25, 23]\n    conv(45, 3)\n    leaky_relu(0.1)", 2, Some(4)),
    ];
    let mut isas: Vec<(&str, CodegenOptions)> = Vec::new();
    if CpuLevel::X86_64V4.host_has() {
        isas.push(("AVX-512", CodegenOptions::default()));
    }
    if CpuLevel::X86_64V3.host_has() {
        isas.push(("AVX2", CodegenOptions { cpu: Some(CpuLevel::X86_64V3), ..CodegenOptions::default() }));
    }
    for (body, batch, avx2_default) in programs {
        let source = format!("network wino {{\n    {body}\n}}\n");
        let graph = optimized_graph(&source, batch).unwrap();
        let inputs = vec![cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 12)];
        let reference = cnnc::interp::run(&graph, &graph.weights, &inputs).unwrap();
        for (isa, options) in &isas {
            for f4 in [None, Some(false), Some(true)] {
                let options = CodegenOptions { winograd_f4: f4, ..options.clone() };
                let mut model = compile_jit_with(&graph, &options).unwrap();
                let algorithm = model.kernels()[0].algorithm.clone();
                // The 7x7 layer runs directly on AVX-512 (fewer than 36 tiles), whichever
                // variant is forced: forcing one chooses between them where Winograd applies.
                let m = match (f4, *isa) {
                    (Some(f4), _) => Some(if f4 { 4 } else { 2 }),
                    (None, "AVX2") => avx2_default,
                    (None, _) => None,
                };
                let expected = m.map(|m| format!("winograd F({m}x{m},3x3)"));
                let winograd = algorithm.starts_with("winograd");
                if *isa == "AVX-512" && body.contains("[40, 7, 7]") {
                    assert!(!winograd, "{isa}: {algorithm}\n{source}");
                } else if let Some(expected) = expected {
                    assert!(algorithm.starts_with(&expected), "{isa} {f4:?}: {algorithm}\n{source}");
                } else {
                    assert!(winograd, "{isa} {f4:?}: {algorithm}\n{source}");
                }
                if winograd {
                    assert!(algorithm.contains(&format!("{isa} pixel tiles")), "{isa}: {algorithm}");
                }
                model.set_threads(1);
                let single = model.run(&inputs).unwrap();
                let error = relative_l2(&single[0].data, &reference[0].data);
                assert!(error <= TOLERANCE, "{isa} {algorithm}: relative L2 {error:.3e}\n{source}");
                for threads in [2, 3] {
                    model.set_threads(threads);
                    let got = model.run(&inputs).unwrap();
                    assert!(
                        bits(&got) == bits(&single),
                        "{isa} {algorithm}: {threads} threads differ from one\n{source}"
                    );
                }
            }
        }
    }
}

/// Depthwise layers whose epilogue the micro-kernel cannot run in registers (an
/// activation other than relu on AVX-512; tanh and gelu on AVX2) apply it per band
/// through the shared activations, with a residual (the others, in registers, too); and MobileNet v2's shapes (112 to 7 pixels wide, strides 1 and 2, relu and
/// relu6) and a MobileNet v3 one (5x5 stride 2, hardswish).
#[test]
fn depthwise_layers_fuse_any_epilogue() {
    let programs = [
        ("input x: [19, 21, 37]\n    conv(19, 3, pad=1, groups=19)\n    sigmoid", 2),
        ("input x: [5, 9, 33]\n    conv(5, 5, pad=2, groups=5)\n    leaky_relu(0.2)\n    add(x)\n    tanh", 1),
        ("input x: [3, 20, 20]\n    conv(3, 7, stride=2, pad=3, groups=3)\n    tanh", 1),
        ("input x: [32, 112, 112]\n    conv(32, 3, pad=1, groups=32)\n    relu", 1),
        ("input x: [24, 113, 57]\n    conv(24, 3, stride=2, pad=1, groups=24)\n    relu", 1),
        ("input x: [40, 7, 7]\n    conv(40, 3, pad=1, groups=40)\n    relu\n    add(x)", 2),
        ("input x: [96, 14, 14]\n    conv(96, 3, pad=1, groups=96)\n    relu6", 1),
        ("input x: [16, 57, 57]\n    conv(16, 5, stride=2, pad=2, groups=16)\n    hardswish", 1),
        // EfficientNet's: silu (and sigmoid) in registers, at scales 1 and 200
        // (arguments past exp's clamps); on AVX-512 through the gate pass when alone.
        ("input x: [24, 29, 29]\n    conv(24, 3, pad=1, groups=24)\n    silu", 1),
        ("input x: [12, 30, 31]\n    conv(12, 5, stride=2, pad=2, groups=12)\n    silu", 2),
        ("input x: [6, 9, 19]\n    conv(6, 3, pad=1, groups=6)\n    silu\n    add(x)\n    sigmoid", 1),
        ("input x: [5, 11, 17]\n    conv(5, 3, pad=1, groups=5)\n    relu\n    add(x)\n    silu", 1),
        // A leaky relu (k2 on AVX-512) between bands of masked loads; two groups of
        // vectors with a partial last one under the gate (on AVX-512 the taps and the
        // stride-2 permutations loaded again after the gate's constants took their
        // registers; 25 taps from memory); EfficientNet's 7x7 planes, rows narrower than
        // a vector.
        ("input x: [7, 12, 40]\n    conv(7, 3, pad=1, groups=7)\n    leaky_relu(0.1)\n    add(x)\n    relu6", 2),
        ("input x: [4, 9, 70]\n    conv(4, 3, stride=2, pad=1, groups=4)\n    sigmoid", 1),
        ("input x: [3, 10, 40]\n    conv(3, 3, pad=1, groups=3)\n    silu", 2),
        ("input x: [3, 11, 75]\n    conv(3, 5, pad=2, groups=3)\n    silu", 1),
        ("input x: [20, 7, 7]\n    conv(20, 5, pad=2, groups=20)\n    silu", 2),
    ];
    for (body, batch) in programs {
        let source = format!("network dw {{\n    {body}\n}}\n");
        let graph = check_at_two_scales(&source, batch, true);
        // Where the host has AVX-512 or AVX2, the layer runs on that ISA's depthwise
        // bands (by default, and the AVX2 ones at x86-64-v3 on an AVX-512 host too), with
        // the epilogue in registers exactly when it is made of relus and a residual.
        for (isa, algorithm) in first_kernel_per_host_isa(&graph) {
            assert!(algorithm.starts_with(&format!("depthwise, {isa} bands")), "{algorithm}\n{source}");
            // Every activation but tanh runs in registers; on AVX-512 sigmoid and silu only
            // as the whole epilogue.
            let gate = body.contains("sigmoid") || body.contains("silu");
            let in_registers = !(body.contains("tanh") || isa == "AVX-512" && gate && body.contains("add"));
            assert_eq!(!algorithm.contains("per band"), in_registers, "{algorithm}\n{source}");
        }
    }
}

/// Pointwise layers run on the pixel-lane tiles of each ISA the host has (AVX-512 by
/// default, AVX2 at x86-64-v3), against the interpreter: MobileNet shapes (a 56x56
/// expansion with relu6, whose plane splits into whole tiles, and a 7x7 projection,
/// whose tiles are fewer than the blocks' and end in a partial one), and a plane of 437
/// pixels with a partial last tile and a residual between two activations; 16 inputs
/// (blocks outermost on AVX2) with a tail block and a residual on two threads.
#[test]
fn pointwise_layers_run_on_the_pixel_tiles() {
    let programs = [
        ("input x: [16, 56, 56]\n    conv(96, 1)\n    relu6", 1),
        // 16 inputs or fewer: the blocks run outermost (a tail block of 4), tiles shared.
        ("input x: [16, 40, 40]\n    conv(16, 1)\n    add(x)", 2),
        ("input x: [96, 7, 7]\n    conv(24, 1)", 2),
        ("input x: [24, 19, 23]\n    conv(24, 1)\n    hardswish\n    add(x)\n    leaky_relu(0.1)", 1),
        // EfficientNet's silu and squeeze-excitation sigmoid (in AVX2's registers only),
        // whole and partial vectors, at scales 1 and 200 (past exp's clamps).
        ("input x: [16, 28, 28]\n    conv(96, 1)\n    silu", 1),
        ("input x: [24, 19, 23]\n    conv(24, 1)\n    silu\n    add(x)\n    sigmoid", 2),
        ("input x: [40, 1, 13]\n    conv(10, 1)\n    sigmoid", 1),
    ];
    for (body, batch) in programs {
        let source = format!("network pw {{\n    {body}\n}}\n");
        let graph = check_at_two_scales(&source, batch, false);
        for (isa, algorithm) in first_kernel_per_host_isa(&graph) {
            // Sigmoid and silu run in registers on AVX-512 only as the whole epilogue.
            let gate = body.contains("sigmoid") || body.contains("silu");
            let tiles = isa == "AVX2" || !(gate && body.contains("add"));
            assert_eq!(algorithm.starts_with(&format!("pointwise, {isa} pixel tiles")), tiles, "{algorithm}\n{source}");
        }
    }
}

/// Pointwise layers on small planes with long reductions (at least 384 input channels, a
/// multiple of 4) run on AVX-512 with the reduction in four fixed pieces the threads
/// share, summed after a sync with the epilogue: tail blocks, partial tiles, a residual
/// between two activations, sigmoid, batch 1 to 3; the same values, bit for bit, on 1 to
/// 5 threads (the pieces do not depend on the thread count); 390 inputs (not a multiple
/// of 4) and AVX2 keep the blocks shared.
#[test]
fn long_pointwise_reductions_on_small_planes_share_their_pieces() {
    let programs = [
        ("input x: [384, 14, 14]\n    conv(64, 1)", 1),
        ("input x: [400, 9, 11]\n    conv(400, 1)\n    relu6\n    add(x)\n    hardswish", 3),
        ("input x: [388, 5, 5]\n    conv(20, 1)\n    sigmoid", 2),
        ("input x: [390, 7, 7]\n    conv(24, 1)", 2),
    ];
    check_programs(&programs, |isa, algorithm, source| {
        assert!(algorithm.starts_with(&format!("pointwise, {isa} pixel tiles")), "{algorithm}\n{source}");
        let shared = isa == "AVX-512" && !source.contains("390");
        assert_eq!(algorithm.contains("reduction shared"), shared, "{algorithm}\n{source}");
    });
    for (body, batch) in programs {
        let source = format!("network layer {{\n    {body}\n}}\n");
        let graph = optimized_graph(&source, batch).unwrap();
        let inputs = vec![cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 12)];
        let mut model = compile_jit_with(&graph, &CodegenOptions::default()).unwrap();
        let single = model.run(&inputs).unwrap();
        for threads in 2..=5 {
            model.set_threads(threads);
            let got = model.run(&inputs).unwrap();
            let same = got[0].data.iter().zip(&single[0].data).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{threads} threads differ from one\n{source}");
        }
    }
}

/// Pointwise layers on small planes whose last 16-pixel tile is mostly empty (7x7 and
/// 5x5) run on AVX2 with the batch's planes joined into one (copied into scratch and
/// back): batch 2, 3 (a joined plane that ends in a partial tile) and 8, blocks of
/// channels full and partial, an activation in the tiles, a residual add and a
/// post-activation applied on the way back, on 1 and 2 threads, at input scales 1 and
/// 200. Batch 1 and the small channel counts keep the per-image tiles.
#[test]
fn pointwise_layers_on_small_planes_join_the_images() {
    let joined = [
        ("input x: [160, 7, 7]\n    conv(96, 1)\n    hardswish", 2),
        ("input x: [96, 7, 7]\n    conv(160, 1)", 3),
        ("input x: [112, 7, 7]\n    conv(112, 1)\n    silu\n    add(x)\n    sigmoid", 8),
        ("input x: [100, 5, 5]\n    conv(100, 1)\n    add(x)", 3),
    ];
    let per_image =
        [("input x: [160, 7, 7]\n    conv(96, 1)\n    relu6", 1), ("input x: [24, 7, 7]\n    conv(16, 1)", 8)];
    for (programs, joins) in [(&joined[..], true), (&per_image[..], false)] {
        check_programs(programs, |isa, algorithm, source| {
            // Sigmoid and silu beside a residual run on the channel-lane tiles on AVX-512.
            if isa == "AVX-512" && (source.contains("sigmoid") || source.contains("silu")) && source.contains("add") {
                assert!(algorithm.starts_with("direct"), "{algorithm}\n{source}");
                return;
            }
            assert!(algorithm.starts_with(&format!("pointwise, {isa} pixel tiles")), "{algorithm}\n{source}");
            // Only AVX2 joins the images.
            assert_eq!(algorithm.contains("images joined"), joins && isa == "AVX2", "{algorithm}\n{source}");
        });
    }
}

/// Pointwise layers with long reductions on planes whose tiles run outermost run on AVX2
/// in parts of at most 192 input channels, each part adding to the sums the one before
/// stored, the last applying the epilogue: 2, 3 and 5 parts of uneven lengths, a plane
/// that ends in a partial tile (14x14, 11x13), a partial block of output channels, every
/// kind of epilogue (sigmoid and silu through the gate pass), joined images (7x7 at
/// batch 8), on 1 and 2 threads, at input scales 1 and 200.
#[test]
fn long_pointwise_reductions_run_in_parts() {
    let programs = [
        ("input x: [385, 14, 14]\n    conv(64, 1)", 1),
        ("input x: [576, 11, 13]\n    conv(97, 1)\n    silu", 2),
        ("input x: [200, 12, 12]\n    conv(200, 1)\n    relu6\n    add(x)\n    leaky_relu(0.1)", 1),
        ("input x: [960, 7, 7]\n    conv(160, 1)\n    sigmoid", 8),
        ("input x: [193, 16, 8]\n    conv(193, 1)\n    add(x)", 2),
    ];
    check_programs(&programs, |isa, algorithm, source| {
        // Sigmoid and silu beside a residual run on the channel-lane tiles on AVX-512.
        if isa == "AVX-512" && (source.contains("sigmoid") || source.contains("silu")) && source.contains("add") {
            assert!(algorithm.starts_with("direct"), "{algorithm}\n{source}");
            return;
        }
        assert!(algorithm.starts_with(&format!("pointwise, {isa} pixel tiles")), "{algorithm}\n{source}");
        // Only AVX2 cuts the reduction.
        assert_eq!(algorithm.contains("reduction in"), isa == "AVX2", "{algorithm}\n{source}");
    });
}

/// A 1x1 convolution on a 1x1 map (squeeze-and-excitation's two layers after the global
/// pool) runs as a fully connected layer over the batch, on the channel-lane GEMM tiles
/// of each host ISA: batch 1, a partial tile of rows (3) and two full ones (8), partial
/// blocks of output channels, every epilogue the gate uses and a residual add, at input
/// scales 1 and 200.
#[test]
fn one_by_one_maps_run_as_linear_layers_over_the_batch() {
    let programs = [
        ("input x: [72, 1, 1]\n    conv(24, 1)\n    relu", 1),
        ("input x: [24, 1, 1]\n    conv(72, 1)\n    hardsigmoid", 3),
        ("input x: [40, 1, 1]\n    conv(10, 1)\n    silu", 8),
        ("input x: [37, 1, 1]\n    conv(37, 1)\n    sigmoid\n    add(x)\n    relu6", 8),
        ("input x: [19, 1, 1]\n    conv(53, 1)", 3),
    ];
    check_programs(&programs, |isa, algorithm, source| {
        assert!(algorithm.starts_with(&format!("gemm, {isa} tiles")), "{isa}: {algorithm}\n{source}");
    });
}

/// The direct tiles (AVX2 and AVX-512) apply sigmoid and silu in registers where the
/// activation is the whole epilogue (EfficientNet's 3x3/s2 stem): whole and partial
/// tiles and blocks, at scales 1 and 200 (past exp's clamps); with a residual the f32x4
/// store applies it.
#[test]
fn direct_tiles_apply_sigmoid_and_silu_in_registers() {
    let programs = [
        ("input x: [3, 30, 30]\n    conv(32, 3, stride=2, pad=1)\n    silu", 1, true),
        ("input x: [5, 13, 11]\n    conv(20, 3, stride=2, pad=(0, 1, 1, 0))\n    sigmoid", 2, true),
        ("input x: [4, 9, 9]\n    conv(12, 5, pad=2, dilation=2)\n    silu", 1, true),
        ("input x: [8, 9, 9]\n    conv(8, 3, pad=1)\n    silu\n    add(x)", 1, false),
    ];
    for (body, batch, in_registers) in programs {
        let source = format!("network direct {{\n    {body}\n}}\n");
        let graph = check_at_two_scales(&source, batch, false);
        for (isa, algorithm) in first_kernel_per_host_isa(&graph) {
            assert!(algorithm.starts_with("direct"), "{algorithm}\n{source}");
            let want = in_registers;
            assert_eq!(algorithm.ends_with("activation in registers"), want, "{isa}: {algorithm}\n{source}");
        }
    }
}

/// Sigmoid and silu in registers (on AVX2, and on AVX-512 through the gate pass) give
/// NaN exactly where the interpreter does (a NaN input spreads through a pointwise
/// layer's pixel and a depthwise layer's window), and elsewhere its values within the
/// tolerance: inputs of scale 50 with NaN in every seventeenth pixel of the first
/// channel, pointwise and depthwise layers.
#[test]
fn register_sigmoid_and_silu_keep_nans() {
    if !CpuLevel::X86_64V3.host_has() {
        return;
    }
    let programs = [
        "input x: [8, 9, 13]\n    conv(16, 1)\n    silu",
        "input x: [8, 9, 13]\n    conv(8, 1)\n    sigmoid\n    add(x)\n    silu",
        "input x: [7, 10, 19]\n    conv(7, 3, pad=1, groups=7)\n    silu",
        "input x: [7, 10, 19]\n    conv(7, 3, stride=2, pad=1, groups=7)\n    sigmoid",
        "input x: [3, 10, 19]\n    conv(16, 3, stride=2, pad=1)\n    silu",
    ];
    for body in programs {
        let source = format!("network nans {{\n    {body}\n}}\n");
        let graph = optimized_graph(&source, 1).unwrap();
        let shape = graph.node(graph.inputs[0]).shape.clone();
        let plane = shape[2] * shape[3];
        let mut input = cnnc::weights::random_normal(&shape, 12);
        for (i, x) in input.data.iter_mut().enumerate() {
            *x = if i < plane && i % 17 == 3 { f32::NAN } else { *x * 50.0 };
        }
        let inputs = vec![input];
        let reference = cnnc::interp::run(&graph, &graph.weights, &inputs).unwrap();
        let mut isas = vec![("AVX2", CodegenOptions { cpu: Some(CpuLevel::X86_64V3), ..CodegenOptions::default() })];
        if CpuLevel::X86_64V4.host_has() {
            isas.push(("AVX-512", CodegenOptions::default()));
        }
        for (isa, options) in isas {
            let model = compile_jit_with(&graph, &options).unwrap();
            let algorithm = &model.kernels()[0].algorithm;
            // On AVX-512 the gate runs sigmoid or silu alone after a pointwise, depthwise
            // or direct layer.
            let gate_pass = isa == "AVX-512" && !body.contains("add");
            if isa == "AVX2" || gate_pass {
                assert!(
                    algorithm.starts_with(&format!("pointwise, {isa} pixel tiles"))
                        || algorithm.starts_with(&format!("depthwise, {isa} bands"))
                        || algorithm.ends_with("activation in registers"),
                    "{algorithm}\n{source}"
                );
                assert!(!algorithm.contains("per band"), "{algorithm}\n{source}");
            }
            let got = model.run(&inputs).unwrap();
            check_nans(&got[0].data, &reference[0].data, &source);
        }
    }
}

/// NaN exactly where `want` has it, the other values within the tolerance.
fn check_nans(got: &[f32], want: &[f32], source: &str) {
    let nans: Vec<bool> = want.iter().map(|x| x.is_nan()).collect();
    assert!(nans.iter().any(|&n| n) && !nans.iter().all(|&n| n), "{source}");
    assert_eq!(got.iter().map(|x| x.is_nan()).collect::<Vec<_>>(), nans, "NaN positions\n{source}");
    let kept = |v: &[f32]| v.iter().zip(&nans).filter(|(_, n)| !**n).map(|(x, _)| *x).collect::<Vec<f32>>();
    let error = relative_l2(&kept(got), &kept(want));
    assert!(error <= TOLERANCE, "relative L2 {error:.3e}\n{source}");
}

/// Max pooling takes NaN wherever a window holds one, and otherwise the very maximum
/// (bit for bit), on the AVX-512 passes and the f32x4 ones, on 1 and 2 threads: NaNs in
/// every row and column position, windows clipped by padding and `ceil`, strides 1 and 2,
/// rows wider than a vector with a partial last one.
#[test]
fn max_pooling_keeps_nans_and_exact_maxima() {
    let source = "network pools {
        input x: [3, 13, 37]
        a = x |> max_pool(3, stride=2, pad=1)
        b = x |> max_pool(3, stride=1, pad=1)
        c = x |> max_pool(2)
        d = x |> max_pool((2, 3), stride=2, ceil=true)
        output a, b, c, d
    }";
    let mut graph = compile_source(source, &BuildOptions::default()).expect("compiles");
    optimize(&mut graph, OptLevel::O2).unwrap();
    let mut input = cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 5);
    // A NaN every 29 floats: through each row and column in turn.
    for value in input.data.iter_mut().step_by(29) {
        *value = f32::NAN;
    }
    let inputs = vec![input];
    let reference = cnnc::interp::run(&graph, &graph.weights, &inputs).unwrap();
    assert!(reference.iter().all(|t| t.data.iter().any(|v| v.is_nan())), "every output has NaNs");
    for (variant, options) in
        [("default", CodegenOptions::default()), ("f32x4", CodegenOptions { wide: false, ..CodegenOptions::default() })]
    {
        let mut model = compile_jit_with(&graph, &options).unwrap();
        for threads in [1, 2] {
            model.set_threads(threads);
            let got = model.run(&inputs).unwrap();
            for (output, (g, r)) in got.iter().zip(&reference).enumerate() {
                for (i, (x, y)) in g.data.iter().zip(&r.data).enumerate() {
                    let same = if y.is_nan() { x.is_nan() } else { x.to_bits() == y.to_bits() };
                    assert!(same, "{variant}, {threads} thread(s): output {output}[{i}] is {x}, the interpreter's {y}");
                }
            }
        }
    }
}

/// The executable sections of an ELF64 little-endian object.
fn code_sections(object: &[u8]) -> Vec<&[u8]> {
    let u16_at = |at: usize| u16::from_le_bytes(object[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(object[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&object[..4], b"\x7fELF", "not an ELF object");
    let (offset, entry, count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    (0..count)
        .map(|i| offset + i * entry)
        .filter(|&header| u64_at(header + 8) & 0x4 != 0) // SHF_EXECINSTR
        .map(|header| &object[u64_at(header + 24)..][..u64_at(header + 32)])
        .collect()
}

/// The CPUID features the object's instructions need, by name (`AVX512F`, `FMA`, ...).
fn cpuid_features(object: &[u8]) -> std::collections::BTreeSet<String> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut features = std::collections::BTreeSet::new();
    for code in code_sections(object) {
        let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
        for instruction in &mut decoder {
            for feature in instruction.cpuid_features() {
                features.insert(format!("{feature:?}"));
            }
        }
    }
    features
}

#[test]
fn objects_for_a_cpu_level_hold_only_its_instructions() {
    let source = std::fs::read_to_string(
        common::cnn_files("examples").into_iter().find(|p| p.ends_with("allcnn_c.cnn")).unwrap(),
    )
    .unwrap();
    let mut graph = compile_source(&source, &BuildOptions::default()).expect("compiles");
    graph.weights = cnnc::weights::random_weights(&graph, 3);
    optimize(&mut graph, OptLevel::O2).unwrap();
    let build = |level: CpuLevel| {
        let options = CodegenOptions { cpu: Some(level), verify: false, ..CodegenOptions::default() };
        let object =
            cnnc::backend::clif::compile_object_with(&graph, "net", Some("x86_64-unknown-linux-gnu"), &options)
                .expect("builds");
        cpuid_features(&object.object)
    };
    let v3_only = |f: &String| ["AVX", "AVX2", "FMA", "BMI1", "BMI2", "LZCNT", "F16C", "MOVBE"].contains(&f.as_str());
    let v4_only = |f: &String| f.starts_with("AVX512");

    let v2 = build(CpuLevel::X86_64V2);
    let beyond: Vec<&String> = v2.iter().filter(|f| v3_only(f) || v4_only(f)).collect();
    assert!(beyond.is_empty(), "x86-64-v2 object uses {beyond:?}");

    let v3 = build(CpuLevel::X86_64V3);
    let beyond: Vec<&String> = v3.iter().filter(|f| v4_only(f)).collect();
    assert!(beyond.is_empty(), "x86-64-v3 object uses {beyond:?}");
    assert!(v3.contains("AVX2") || v3.contains("FMA"), "x86-64-v3 object has no AVX2 tiles: {v3:?}");

    let v4 = build(CpuLevel::X86_64V4);
    assert!(v4.contains("AVX512F"), "x86-64-v4 object has no AVX-512 tiles: {v4:?}");
    println!("v2 {v2:?}\nv3 {v3:?}\nv4 {v4:?}");
}

/// The AVX2 depthwise bands store the partial last vector of a row whole where its 8
/// lanes end inside the plane (the lanes past the row read back and blended in, also in
/// the sigmoid/silu gate pass) and under a mask at the plane's end, and at stride 2 keep
/// their accumulators in `vshufps` order until the epilogue: rows of 1 to 29 pixels
/// (partial vectors in one group of two and after a whole group, narrower than the
/// lanes so that a vector spans several rows), strides 1 and 2, 3x3 and 5x5, batch 8 on
/// 1 and 2 threads (planes shared out between them), every kind of epilogue (none,
/// relu6 and hardswish in registers, sigmoid and silu alone in the gate pass, silu after
/// a residual, tanh per band), at scales 1 and 200, against the interpreter.
#[test]
fn depthwise_bands_store_partial_rows_whole() {
    let programs = [
        ("input x: [16, 14, 14]\n    conv(16, 3, pad=1, groups=16)\n    hardswish", 8),
        ("input x: [9, 14, 14]\n    conv(9, 3, pad=1, groups=9)\n    silu", 8),
        ("input x: [10, 28, 28]\n    conv(10, 3, pad=1, groups=10)\n    sigmoid", 2),
        ("input x: [10, 28, 28]\n    conv(10, 5, pad=2, groups=10)\n    relu6\n    add(x)", 2),
        ("input x: [12, 7, 7]\n    conv(12, 3, pad=1, groups=12)\n    silu\n    add(x)\n    silu", 8),
        ("input x: [12, 7, 7]\n    conv(12, 5, pad=2, groups=12)", 8),
        ("input x: [5, 9, 3]\n    conv(5, 3, pad=1, groups=5)\n    silu", 8),
        ("input x: [5, 11, 1]\n    conv(5, (3, 1), pad=(1, 0, 1, 0), groups=5)\n    relu\n    add(x)", 3),
        ("input x: [6, 13, 21]\n    conv(6, 3, pad=1, groups=6)\n    tanh\n    add(x)", 8),
        ("input x: [8, 57, 57]\n    conv(8, 5, stride=2, pad=2, groups=8)\n    silu", 2),
        ("input x: [8, 28, 28]\n    conv(8, 5, stride=2, pad=2, groups=8)\n    hardswish", 8),
        ("input x: [7, 14, 14]\n    conv(7, 3, stride=2, pad=1, groups=7)\n    sigmoid", 8),
        ("input x: [7, 15, 33]\n    conv(7, 3, stride=2, pad=1, groups=7)\n    relu6", 3),
        ("input x: [4, 10, 10]\n    conv(4, 3, stride=2, groups=4)", 8),
    ];
    for (body, batch) in programs {
        let source = format!("network dw {{\n    {body}\n}}\n");
        let graph = check_at_two_scales(&source, batch, true);
        for (isa, algorithm) in first_kernel_per_host_isa(&graph) {
            assert!(algorithm.starts_with(&format!("depthwise, {isa} bands")), "{algorithm}\n{source}");
        }
    }
}

/// Squeeze-and-excitation's multiply fused into the 1x1 conv that reads it
/// (`fuse_gates`, the CPU pipeline): the pointwise tiles read weights scaled per image
/// (on each host ISA, the gated kernel asserted), other kernels the input times the gate
/// from scratch (a gelu epilogue, on the channel-lane tiles). Against the interpreter on
/// the unfused graph, relative L2 at most 1e-4: batch 1, 3 and 4 (both copies of the
/// weights reused), full and partial blocks of output channels, rows of fewer than 4
/// weights, a residual, long reductions on small planes (on AVX-512 in the pieces the
/// threads share), on 1, 2 and 3 threads. In bf16 and int8 (the input times the
/// gate from scratch, then the reduced-precision kernel) the result is bit for bit the
/// unfused graph's on the CPU.
#[test]
fn gated_pointwise_layers_scale_their_weights_per_image() {
    use cnnc::passes::{Capabilities, optimize_for};
    use cnnc::precision::{Int8Input, Precision};
    let gate = "g = x |> global_avg_pool |> fc1: conv(8, 1) |> relu |> fc2: conv(C, 1) |> hardsigmoid";
    let programs: [(usize, &str, &str, usize); 8] = [
        (24, "12x12", "mul(g, x) |> conv(16, 1) |> relu6", 3),
        (40, "10x10", "mul(x, g) |> conv(10, 1)", 1),
        (96, "28x28", "mul(g, x) |> conv(24, 1)", 4),
        (16, "9x11", "mul(g, x) |> conv(16, 1) |> add(x) |> relu", 2),
        (32, "14x14", "mul(g, x) |> conv(18, 1) |> gelu", 3),
        (144, "17x15", "mul(g, x) |> conv(26, 1) |> silu", 2),
        // Long reductions on small planes: on AVX-512 in four pieces the threads share.
        (480, "14x14", "mul(g, x) |> conv(40, 1)", 3),
        (672, "7x7", "mul(g, x) |> conv(30, 1) |> relu6", 2),
    ];
    for (channels, hw, body, batch) in programs {
        let (h, w) = hw.split_once('x').unwrap();
        let source = format!(
            "network se {{\n    input x: [{channels}, {h}, {w}]\n    {}\n    {body}\n}}\n",
            gate.replace('C', &channels.to_string())
        );
        let mut plain = compile_source(&source, &BuildOptions { batch, input_shape: None }).unwrap();
        plain.weights = cnnc::weights::random_weights(&plain, 5);
        let mut gated = plain.clone();
        optimize(&mut plain, OptLevel::O2).unwrap();
        optimize_for(&mut gated, OptLevel::O2, Capabilities::CPU).unwrap();
        assert!(cnnc::ir::print(&gated).contains(" * %"), "not gated:\n{}", cnnc::ir::print(&gated));
        let inputs = vec![cnnc::weights::random_normal(&plain.node(plain.inputs[0]).shape, 6)];
        let reference = cnnc::interp::run(&plain, &plain.weights, &inputs).unwrap();
        let gated_reference = cnnc::interp::run(&gated, &gated.weights, &inputs).unwrap();
        let error = relative_l2(&gated_reference[0].data, &reference[0].data);
        assert!(error <= 1e-6, "{source}: the interpreter on the gated graph: {error:.3e}");
        let mut variants = vec![("default", CodegenOptions::default())];
        if CpuLevel::X86_64V3.host_has() {
            variants.push(("x86-64-v3", CodegenOptions { cpu: Some(CpuLevel::X86_64V3), ..CodegenOptions::default() }));
        }
        variants.push(("f32x4", CodegenOptions { wide: false, ..CodegenOptions::default() }));
        for (variant, options) in variants {
            let mut model = compile_jit_with(&gated, &options).unwrap();
            let proj = model.kernels().iter().find(|k| k.name.contains("(conv)") && !k.name.starts_with("fc")).unwrap();
            // gelu runs on the channel-lane tiles.
            let tiles = variant != "f32x4" && !body.contains("gelu");
            assert_eq!(proj.algorithm.contains("gated"), tiles, "{variant}: {}\n{source}", proj.algorithm);
            let shared = variant == "default" && CpuLevel::X86_64V4.host_has() && channels >= 384;
            assert_eq!(proj.algorithm.contains("reduction shared"), shared, "{variant}: {}\n{source}", proj.algorithm);
            for threads in [1, 2, 3] {
                model.set_threads(threads);
                let got = model.run(&inputs).unwrap();
                let error = relative_l2(&got[0].data, &reference[0].data);
                assert!(error <= TOLERANCE, "{variant}, {threads} threads: relative L2 {error:.3e}\n{source}");
            }
        }
        for precision in [Precision::Bf16, Precision::Int8(Int8Input::new(0.02, 128).unwrap())] {
            let (mut p, mut g) = (plain.clone(), gated.clone());
            cnnc::precision::assign(&mut p, precision);
            cnnc::precision::assign(&mut g, precision);
            let options = CodegenOptions::default();
            let want = bits(&compile_jit_with(&p, &options).unwrap().run(&inputs).unwrap());
            let got = bits(&compile_jit_with(&g, &options).unwrap().run(&inputs).unwrap());
            assert!(got == want, "{precision}: the gated graph differs from the unfused one\n{source}");
        }
    }
}

/// The generated code runs its kernels with denormals flushed to zero (MXCSR's FTZ and
/// DAZ), on one thread and on several, and gives the caller's MXCSR back: a 1x1 conv
/// without bias over denormal inputs (1e-40) gives exactly 0 (the interpreter, in full
/// IEEE arithmetic, a denormal), and MXCSR reads the same before and after each run.
#[test]
#[cfg(target_arch = "x86_64")]
fn kernels_flush_denormals_and_give_the_mxcsr_back() {
    #[allow(deprecated)]
    fn mxcsr() -> u32 {
        // SAFETY: reading MXCSR has no preconditions on x86-64.
        unsafe { std::arch::x86_64::_mm_getcsr() }
    }
    let source = "network d {\n    input x: [16, 9, 9]\n    conv(8, 1, bias=false)\n}\n";
    let mut graph = compile_source(source, &BuildOptions { batch: 2, input_shape: None }).unwrap();
    graph.weights = cnnc::weights::random_weights(&graph, 3);
    optimize(&mut graph, OptLevel::O2).unwrap();
    let mut input = cnnc::weights::random_normal(&graph.node(graph.inputs[0]).shape, 4);
    input.data.iter_mut().for_each(|x| *x *= 1e-40);
    assert!(input.data.iter().any(|x| x.is_subnormal()));
    let reference = cnnc::interp::run(&graph, &graph.weights, std::slice::from_ref(&input)).unwrap();
    assert!(reference[0].data.iter().any(|x| *x != 0.0), "the interpreter keeps denormals");
    let before = mxcsr();
    for options in [CodegenOptions::default(), CodegenOptions { wide: false, ..CodegenOptions::default() }] {
        let mut model = compile_jit_with(&graph, &options).unwrap();
        for threads in [1, 2] {
            model.set_threads(threads);
            let got = model.run(std::slice::from_ref(&input)).unwrap();
            assert!(got[0].data.iter().all(|x| *x == 0.0), "{threads} threads: denormals were not flushed");
            assert_eq!(mxcsr(), before, "the caller's MXCSR changed");
        }
    }
}
