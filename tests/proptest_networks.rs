//! Property test of the passes and the backends: random valid networks, written as
//! `.cnn` source, compute the same outputs in the reference interpreter before and after
//! `-O2`, the CPU pipeline's (the generic one and fused gates) and the GPU's (fused
//! pooling), (relative L2 at most 1e-5), and the CPU backend's code for its `-O2` graph, on one and two
//! threads, computes the interpreter's (at most 1e-4), on random weights and inputs. An
//! eighth as many networks run on the GPU (lavapipe here) through the GPU pipeline
//! against the interpreter (at most 1e-4).
//!
//! A network is generated as data (an input shape and a list of layer descriptions) and
//! rendered to source by tracking the current shape, so proptest shrinks the list and the
//! numbers in it. The renderer keeps every subset valid: it adapts a layer to the shape
//! it meets (groups that divide the channels, kernels that fit) and skips a layer that
//! cannot apply (a pool after `flatten`, a merge with no tensor of a compatible shape).
//! A failure prints the source of the smallest failing network found.

use std::fmt::Write;

#[allow(dead_code)]
mod common;
use common::replay_memory_plan;

use cnnc::front::{BuildOptions, compile_source};
use cnnc::interp;
use cnnc::ir::verify;
use cnnc::passes::{self, Capabilities, OptLevel};
use cnnc::tensor::{Tensor, relative_l2};
use cnnc::weights::{Weights, random_normal, random_weights};
use proptest::prelude::*;

/// The largest relative L2 error an optimized graph's output may have.
const TOLERANCE: f64 = 1e-5;

/// The largest height or width a layer may produce (keeps the interpreter fast).
const MAX_SIDE: usize = 20;

/// The most channels (or features) a `concat` may produce: repeated concats of a tensor
/// with itself would otherwise double them each time.
const MAX_CHANNELS: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Activation {
    Relu,
    LeakyRelu,
    Sigmoid,
    Tanh,
    Relu6,
    /// `hardtanh(min=-0.5, max=1)`: bounds that random values cross on both sides.
    Hardtanh,
    HardSwish,
    HardSigmoid,
    Silu,
    Gelu,
    GeluTanh,
}

#[derive(Clone, Copy, Debug)]
enum ConvPad {
    Pixels(usize, usize),
    Same,
    Valid,
}

/// One layer as generated; the renderer adapts its numbers to the shape it meets.
#[derive(Clone, Debug)]
enum Layer {
    Conv {
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: ConvPad,
        dilation: (usize, usize),
        /// Picks one of the divisors of the input channels.
        groups: usize,
        bias: bool,
        /// One group per input channel and as many outputs (a depthwise convolution,
        /// which the backends run on kernels of their own): `out_channels` and `groups`
        /// are then ignored.
        depthwise: bool,
    },
    BatchNorm {
        eps: Option<f64>,
    },
    Activation(Activation),
    Dropout {
        spatial: bool,
    },
    StochasticDepth,
    Pool {
        max: bool,
        kernel: (usize, usize),
        stride: Option<(usize, usize)>,
        pad: (usize, usize),
        /// More padding at the bottom and right than at the top and left (asymmetric).
        extra: (usize, usize),
        ceil: bool,
        count_pad: bool,
    },
    /// `None`: the input's own size (every bin one pixel).
    AdaptiveAvgPool {
        out: Option<(usize, usize)>,
    },
    GlobalPool {
        max: bool,
    },
    Lrn {
        size: usize,
    },
    /// `add` or `mul` of the current tensor and earlier tensors of a broadcast-compatible
    /// shape, each picked by index among the candidates.
    Merge {
        multiply: bool,
        picks: Vec<usize>,
        current_last: bool,
    },
    /// Branches from the current tensor, joined by `concat`; an empty branch is the
    /// current tensor itself. Layers in a branch keep the spatial size.
    Branches(Vec<Vec<Layer>>),
    /// A chain from the current tensor whose result nothing uses.
    DeadBranch(Vec<Layer>),
    Flatten,
    /// Flattens first when the current tensor is a feature map.
    Linear {
        out_features: usize,
        bias: bool,
    },
    Softmax,
    /// Makes the current tensor an output of the network too.
    ExtraOutput,
    /// `channel_shuffle` with one of the divisors of the channels, picked by index.
    ChannelShuffle {
        groups: usize,
    },
    /// `layer_norm2d` on feature maps, `layer_norm` on feature vectors.
    Normalize,
    /// `scale` (feature maps).
    Scale,
    /// ConvNeXt's sandwich: channels-last, `layer_norm`, `linear` (with a relu or not),
    /// and back.
    ChannelsLast {
        out_features: usize,
        relu: bool,
    },
    /// `a, b, ... = chunk(n)` (or `split` where torch.chunk would make fewer parts);
    /// every part is offered to later merges, the picked one continues.
    Chunk {
        chunks: usize,
        pick: usize,
    },
}

#[derive(Clone, Debug)]
struct Network {
    input: [usize; 3],
    body: Vec<Layer>,
    head: Vec<Layer>,
}

/// How a layer may change the shape.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Any valid layer.
    Free,
    /// The rank and, for feature maps, the height and width stay (inside a `concat` branch).
    KeepSpatial,
    /// Any valid layer, and its result is not offered to later merges.
    Dead,
}

fn hw((h, w): (usize, usize)) -> String {
    if h == w { h.to_string() } else { format!("({h}, {w})") }
}

/// Output size of a convolution along one dimension (floor division).
fn window_floor(input: usize, kernel: usize, stride: usize, pad_total: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    (input + pad_total >= span).then(|| (input + pad_total - span) / stride + 1)
}

/// PyTorch's `ceil_mode` output size (`before` and `after` the padding of each side).
fn window_ceil(input: usize, kernel: usize, stride: usize, (before, after): (usize, usize)) -> Option<usize> {
    if input + before + after < kernel {
        return None;
    }
    let mut out = (input + before + after - kernel).div_ceil(stride) + 1;
    if (out - 1) * stride >= input + before {
        out -= 1;
    }
    Some(out)
}

/// The shape `add`/`mul` makes of two shapes (batch left out), if they broadcast.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a.len() != b.len() {
        return None;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Adapts a convolution to a `[c, h, w]` input; returns its source text and output shape.
fn render_conv(layer: &Layer, shape: &[usize], mode: Mode) -> Option<(String, Vec<usize>)> {
    let Layer::Conv { out_channels, kernel, stride, pad, dilation, groups, bias, depthwise } = *layer else {
        unreachable!()
    };
    let [c, h, w] = *shape else { return None };
    let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
    let groups = if depthwise { c } else { divisors[groups % divisors.len()] };
    let out_channels = if depthwise { c } else { out_channels.div_ceil(groups) * groups };
    let (stride, pad) = if mode == Mode::KeepSpatial { ((1, 1), ConvPad::Same) } else { (stride, pad) };
    let pad_pixels = match pad {
        ConvPad::Pixels(ph, pw) => (ph, pw),
        ConvPad::Same | ConvPad::Valid => (0, 0),
    };
    let same = matches!(pad, ConvPad::Same);
    // Without `same` padding, drop the dilation, then shrink the kernel, until the window
    // fits in the padded input.
    let fit_dim = |input: usize, kernel: usize, dilation: usize, pad: usize| -> (usize, usize) {
        let room = input + 2 * pad;
        if same || dilation * (kernel - 1) < room { (kernel, dilation) } else { (kernel.min(room), 1) }
    };
    let (kh, dh) = fit_dim(h, kernel.0, dilation.0, pad_pixels.0);
    let (kw, dw) = fit_dim(w, kernel.1, dilation.1, pad_pixels.1);
    let (out_h, out_w) = if same {
        (h.div_ceil(stride.0), w.div_ceil(stride.1))
    } else {
        (window_floor(h, kh, stride.0, 2 * pad_pixels.0, dh)?, window_floor(w, kw, stride.1, 2 * pad_pixels.1, dw)?)
    };
    if out_h > MAX_SIDE || out_w > MAX_SIDE {
        return None;
    }
    let mut text = format!("conv({out_channels}, {}", hw((kh, kw)));
    if stride != (1, 1) {
        write!(text, ", stride={}", hw(stride)).unwrap();
    }
    match pad {
        ConvPad::Same => text.push_str(", pad=same"),
        ConvPad::Valid => text.push_str(", pad=valid"),
        ConvPad::Pixels(0, 0) => {}
        ConvPad::Pixels(ph, pw) => write!(text, ", pad={}", hw((ph, pw))).unwrap(),
    }
    if (dh, dw) != (1, 1) {
        write!(text, ", dilation={}", hw((dh, dw))).unwrap();
    }
    if groups != 1 {
        write!(text, ", groups={groups}").unwrap();
    }
    if !bias {
        text.push_str(", bias=false");
    }
    text.push(')');
    Some((text, vec![out_channels, out_h, out_w]))
}

/// Adapts a pooling layer to a `[c, h, w]` input; returns its source text and output shape.
fn render_pool(layer: &Layer, shape: &[usize], mode: Mode) -> Option<(String, Vec<usize>)> {
    let Layer::Pool { max, kernel, stride, pad, extra, ceil, count_pad } = *layer else { unreachable!() };
    let [c, h, w] = *shape else { return None };
    let (kernel, stride, pad, ceil) = if mode == Mode::KeepSpatial {
        // An odd kernel, stride 1 and half-kernel padding keep the size.
        let odd = |k: usize| if k.is_multiple_of(2) { k - 1 } else { k };
        let kernel = (odd(kernel.0), odd(kernel.1));
        let half = (kernel.0 / 2, kernel.1 / 2);
        (kernel, Some((1, 1)), (half, half), false)
    } else {
        (kernel, stride, (pad, (pad.0 + extra.0, pad.1 + extra.1)), ceil)
    };
    // Each side's padding at most kernel - 1 (ONNX's range); the window must fit.
    let fit_dim = |input: usize, kernel: usize, (before, after): (usize, usize)| -> (usize, (usize, usize)) {
        let kernel = if input + before.min(kernel - 1) + after.min(kernel - 1) >= kernel { kernel } else { input };
        (kernel, (before.min(kernel - 1), after.min(kernel - 1)))
    };
    let (kh, ph) = fit_dim(h, kernel.0, (pad.0.0, pad.1.0));
    let (kw, pw) = fit_dim(w, kernel.1, (pad.0.1, pad.1.1));
    let (sh, sw) = stride.unwrap_or((kh, kw));
    let (out_h, out_w) = if ceil {
        (window_ceil(h, kh, sh, ph)?, window_ceil(w, kw, sw, pw)?)
    } else {
        (window_floor(h, kh, sh, ph.0 + ph.1, 1)?, window_floor(w, kw, sw, pw.0 + pw.1, 1)?)
    };
    let mut text = format!("{}({}", if max { "max_pool" } else { "avg_pool" }, hw((kh, kw)));
    if let Some(stride) = stride {
        write!(text, ", stride={}", hw(stride)).unwrap();
    }
    if ph.0 != ph.1 || pw.0 != pw.1 {
        write!(text, ", pad=({}, {}, {}, {})", ph.0, pw.0, ph.1, pw.1).unwrap();
    } else if (ph.0, pw.0) != (0, 0) {
        write!(text, ", pad={}", hw((ph.0, pw.0))).unwrap();
    }
    if ceil {
        text.push_str(", ceil=true");
    }
    if count_pad && !max {
        text.push_str(", count_pad=true");
    }
    text.push(')');
    Some((text, vec![c, out_h, out_w]))
}

/// The source text and output shape of a single-op layer on `shape` (batch left out),
/// or `None` when it does not apply there.
fn render_step(layer: &Layer, shape: &[usize], mode: Mode) -> Option<(String, Vec<usize>)> {
    let feature_map = shape.len() == 3;
    let step = match layer {
        Layer::Conv { .. } => render_conv(layer, shape, mode)?,
        Layer::Pool { .. } => render_pool(layer, shape, mode)?,
        Layer::BatchNorm { eps: None } => ("batch_norm".into(), shape.to_vec()),
        Layer::BatchNorm { eps: Some(eps) } => (format!("batch_norm({eps:e})"), shape.to_vec()),
        Layer::Activation(activation) => {
            let text = match activation {
                Activation::Relu => "relu",
                Activation::LeakyRelu => "leaky_relu(0.2)",
                Activation::Sigmoid => "sigmoid",
                Activation::Tanh => "tanh",
                Activation::Relu6 => "relu6",
                Activation::Hardtanh => "hardtanh(min=-0.5, max=1)",
                Activation::HardSwish => "hardswish",
                Activation::HardSigmoid => "hardsigmoid",
                Activation::Silu => "silu",
                Activation::Gelu => "gelu",
                Activation::GeluTanh => "gelu(tanh=true)",
            };
            (text.into(), shape.to_vec())
        }
        Layer::Dropout { spatial: true } if feature_map => ("dropout2d".into(), shape.to_vec()),
        Layer::StochasticDepth => ("stochastic_depth(0.3)".into(), shape.to_vec()),
        Layer::Dropout { .. } => ("dropout(0.3)".into(), shape.to_vec()),
        Layer::AdaptiveAvgPool { out } if feature_map => {
            let out = out.unwrap_or((shape[1], shape[2]));
            (format!("adaptive_avg_pool({})", hw(out)), vec![shape[0], out.0, out.1])
        }
        Layer::GlobalPool { max } if feature_map => {
            let text = if *max { "global_max_pool" } else { "global_avg_pool" };
            (text.into(), vec![shape[0], 1, 1])
        }
        Layer::Lrn { size } if feature_map => (format!("lrn({size})"), shape.to_vec()),
        Layer::Flatten => ("flatten".into(), vec![shape.iter().product()]),
        Layer::Linear { out_features, bias } => {
            let flatten = if feature_map { "flatten |> " } else { "" };
            let bias = if *bias { "" } else { ", bias=false" };
            (format!("{flatten}linear({out_features}{bias})"), vec![*out_features])
        }
        Layer::Softmax => ("softmax".into(), shape.to_vec()),
        Layer::ChannelShuffle { groups } if feature_map => {
            let divisors: Vec<usize> = (1..=shape[0]).filter(|d| shape[0].is_multiple_of(*d)).collect();
            (format!("channel_shuffle({})", divisors[groups % divisors.len()]), shape.to_vec())
        }
        Layer::Normalize if feature_map => ("layer_norm2d(eps=1e-3)".into(), shape.to_vec()),
        Layer::Normalize => ("layer_norm".into(), shape.to_vec()),
        Layer::Scale if feature_map => ("scale".into(), shape.to_vec()),
        Layer::ChannelsLast { out_features, relu } if feature_map => {
            let relu = if *relu { " |> relu" } else { "" };
            (
                format!("permute(0, 2, 3, 1) |> layer_norm |> linear({out_features}){relu} |> permute(0, 3, 1, 2)"),
                vec![*out_features, shape[1], shape[2]],
            )
        }
        _ => return None,
    };
    let keeps_spatial = step.1.len() == shape.len() && (!feature_map || step.1[1..] == shape[1..]);
    (mode != Mode::KeepSpatial || keeps_spatial).then_some(step)
}

/// Renders a network to source, tracking the shape of every tensor.
struct Renderer {
    statements: String,
    /// The tensors later merges may read, with their shapes (batch left out); `x` first.
    tensors: Vec<(String, Vec<usize>)>,
    /// Every named tensor's shape, for the outputs.
    shapes: std::collections::HashMap<String, Vec<usize>>,
    extra_outputs: Vec<String>,
    /// The tensor the last statement defined.
    last_defined: Option<String>,
    next_name: usize,
}

impl Renderer {
    /// Writes `NAME = SOURCE |> STEP` (or `NAME = STEP` for a merge) and returns NAME.
    fn statement(&mut self, source: Option<&str>, step: &str, shape: Vec<usize>, mode: Mode) -> String {
        let name = format!("t{}", self.next_name);
        self.next_name += 1;
        match source {
            Some(source) => writeln!(self.statements, "    {name} = {source} |> {step}").unwrap(),
            None => writeln!(self.statements, "    {name} = {step}").unwrap(),
        }
        if mode != Mode::Dead {
            self.tensors.push((name.clone(), shape.clone()));
        }
        self.shapes.insert(name.clone(), shape);
        self.last_defined = Some(name.clone());
        name
    }

    /// Applies a layer to the tensor `current`; returns the new current tensor.
    fn layer(&mut self, layer: &Layer, current: String, mode: Mode) -> String {
        let shape = self.shapes[&current].clone();
        match layer {
            Layer::Merge { multiply, picks, current_last } => {
                let mut operands = vec![current.clone()];
                let mut merged = shape.clone();
                for pick in picks {
                    let candidates: Vec<(String, Vec<usize>)> = self
                        .tensors
                        .iter()
                        .filter_map(|(name, s)| broadcast(&merged, s).map(|out| (name.clone(), out)))
                        .collect();
                    if candidates.is_empty() {
                        break;
                    }
                    let (name, out) = candidates[pick % candidates.len()].clone();
                    operands.push(name);
                    merged = out;
                }
                let keeps_spatial = shape.len() != 3 || merged[1..] == shape[1..];
                if operands.len() < 2 || (mode == Mode::KeepSpatial && !keeps_spatial) {
                    return current;
                }
                if *current_last {
                    operands.rotate_left(1);
                }
                let op = if *multiply { "mul" } else { "add" };
                self.statement(None, &format!("{op}({})", operands.join(", ")), merged, mode)
            }
            Layer::Branches(branches) => {
                let mut results = Vec::new();
                for branch in branches {
                    let mut branch_current = current.clone();
                    for layer in branch {
                        branch_current = self.layer(layer, branch_current, Mode::KeepSpatial);
                    }
                    results.push(branch_current);
                }
                if results.len() < 2 {
                    results.insert(0, current.clone());
                }
                let mut joined = self.shapes[&results[0]].clone();
                joined[0] = results.iter().map(|name| self.shapes[name][0]).sum();
                if joined[0] > MAX_CHANNELS {
                    // The branches stay, unused.
                    return current;
                }
                self.statement(None, &format!("concat({})", results.join(", ")), joined, mode)
            }
            Layer::DeadBranch(layers) => {
                let mut branch_current = current.clone();
                for layer in layers {
                    branch_current = self.layer(layer, branch_current, Mode::Dead);
                }
                current
            }
            Layer::Chunk { chunks, pick } => {
                let channels = shape[0];
                let chunks = (*chunks).min(channels);
                if chunks < 2 {
                    return current;
                }
                // torch.chunk's parts; a split with the same sizes where they are fewer.
                let size = channels.div_ceil(chunks);
                let sizes: Vec<usize> = (0..channels.div_ceil(size)).map(|i| size.min(channels - i * size)).collect();
                let op = if sizes.len() == chunks {
                    format!("chunk({chunks})")
                } else {
                    format!("split({})", sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
                };
                let names: Vec<String> = (0..sizes.len()).map(|i| format!("t{}", self.next_name + i)).collect();
                self.next_name += sizes.len();
                writeln!(self.statements, "    {} = {current} |> {op}", names.join(", ")).unwrap();
                for (name, size) in names.iter().zip(&sizes) {
                    let mut part = shape.clone();
                    part[0] = *size;
                    if mode != Mode::Dead {
                        self.tensors.push((name.clone(), part.clone()));
                    }
                    self.shapes.insert(name.clone(), part);
                }
                // The statement leaves no current tensor: the network's end names its output.
                self.last_defined = None;
                names[pick % names.len()].clone()
            }
            Layer::ExtraOutput => {
                if current != "x" && !self.extra_outputs.contains(&current) {
                    self.extra_outputs.push(current.clone());
                }
                current
            }
            _ => match render_step(layer, &shape, mode) {
                Some((step, shape)) => self.statement(Some(&current), &step, shape, mode),
                None => current,
            },
        }
    }
}

impl Network {
    /// The network's source and its outputs' shapes (batch left out), in order.
    fn render(&self) -> (String, Vec<Vec<usize>>) {
        let input = self.input.to_vec();
        let mut renderer = Renderer {
            statements: String::new(),
            tensors: vec![("x".into(), input.clone())],
            shapes: [("x".to_string(), input)].into_iter().collect(),
            extra_outputs: Vec::new(),
            last_defined: None,
            next_name: 0,
        };
        let mut current = "x".to_string();
        for layer in self.body.iter().chain(&self.head) {
            current = renderer.layer(layer, current, Mode::Free);
        }
        if current == "x" {
            current = renderer.statement(Some("x"), "relu", renderer.shapes["x"].clone(), Mode::Free);
        }
        let mut outputs = renderer.extra_outputs.clone();
        outputs.retain(|name| *name != current);
        outputs.push(current.clone());
        let [c, h, w] = self.input;
        let mut source = format!("network random {{\n    input x: [{c}, {h}, {w}]\n{}", renderer.statements);
        if outputs.len() > 1 || renderer.last_defined.as_ref() != Some(&current) {
            writeln!(source, "    output {}", outputs.join(", ")).unwrap();
        }
        source.push_str("}\n");
        let shapes = outputs.iter().map(|name| renderer.shapes[name].clone()).collect();
        (source, shapes)
    }
}

/// What a comparison found when it found no difference.
#[derive(Debug, PartialEq)]
enum Checked {
    Agree,
    /// The unoptimized graph's outputs overflow; the case says nothing.
    Overflowed,
}

/// Compiles the source at `batch`, binds random weights, optimizes a copy at `-O2` with
/// the CPU's pipeline and one with the GPU's, and compares the interpreter's outputs;
/// the error says what differs.
fn check_equivalence(
    source: &str,
    expected_shapes: &[Vec<usize>],
    batch: usize,
    weight_seed: u64,
    input_seed: u64,
) -> Result<Checked, String> {
    let options = BuildOptions { batch, ..BuildOptions::default() };
    let mut original = compile_source(source, &options).map_err(|diags| format!("does not compile: {diags:?}"))?;
    let shapes: Vec<Vec<usize>> = original.outputs.iter().map(|o| original.node(o.node).shape.clone()).collect();
    let expected: Vec<Vec<usize>> =
        expected_shapes.iter().map(|s| std::iter::once(batch).chain(s.iter().copied()).collect()).collect();
    if shapes != expected {
        return Err(format!("the front end infers output shapes {shapes:?}, the generator {expected:?}"));
    }
    original.weights = random_weights(&original, weight_seed);
    let inputs: Vec<Tensor> = original
        .inputs
        .iter()
        .enumerate()
        .map(|(i, id)| random_normal(&original.node(*id).shape, input_seed.wrapping_add(i as u64)))
        .collect();
    let reference = interp::run(&original, &original.weights, &inputs).map_err(|e| format!("-O0 run: {e}"))?;
    // Products of products (`mul(t, t, t)` twice) overflow f32; nothing to compare then.
    if reference.iter().any(|t| t.data.iter().any(|v| !v.is_finite() || v.abs() > 1e30)) {
        return Ok(Checked::Overflowed);
    }
    let mut failures = Vec::new();
    for (capabilities, level) in [(Capabilities::CPU, "-O2 (CPU pipeline)"), (Capabilities::GPU, "-O2 (GPU pipeline)")]
    {
        let mut optimized = original.clone();
        passes::optimize_for(&mut optimized, OptLevel::O2, capabilities)?;
        verify(&optimized).map_err(|e| format!("the {level} graph does not verify:\n{e}"))?;
        replay_memory_plan(&optimized).map_err(|e| format!("the {level} memory plan does not replay:\n{e}"))?;
        let actual = interp::run(&optimized, &optimized.weights, &inputs).map_err(|e| format!("{level} run: {e}"))?;
        failures.extend(compare(&original, level, &reference, &actual, TOLERANCE)?);
        if capabilities == Capabilities::CPU {
            // The CPU backend runs its -O2 graph (concat elimination, fused epilogues
            // and gates, its kernels) on one and on two threads.
            let mut jit = cnnc::backend::clif::compile_jit(&optimized).map_err(|e| format!("CPU backend: {e}"))?;
            for threads in [1, 2] {
                jit.set_threads(threads);
                let native = jit.run(&inputs).map_err(|e| format!("CPU backend run: {e}"))?;
                failures.extend(compare(
                    &original,
                    &format!("cpu, {threads} threads"),
                    &actual,
                    &native,
                    CPU_TOLERANCE,
                )?);
            }
        }
    }
    if failures.is_empty() {
        return Ok(Checked::Agree);
    }
    // An output that nearly cancels out (a single logit close to zero, say, or a layer
    // norm over values that are nearly equal) can move by more than the tolerance when
    // the folded weights are rounded to f32, or an activation is computed to within an
    // ulp of f32. Such a failure is excused when rounding noise alone, in the weights and
    // in every layer's value, moves the unoptimized graph's output as far.
    let sensitivity = |position: usize| -> f64 {
        (0..3u64)
            .map(|sample| {
                let perturbed = perturb(&original.weights, sample);
                let mut rewrite = |id: cnnc::ir::NodeId, value: &mut Tensor| {
                    perturb_values(&mut value.data, sample ^ (id.0.index() as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                };
                interp::run_rewriting(&original, &perturbed, &inputs, &mut rewrite)
                    .map(|outputs| relative_l2(&outputs[position].data, &reference[position].data))
                    .unwrap_or(f64::INFINITY)
            })
            .fold(0.0, f64::max)
    };
    let unexplained: Vec<String> = failures
        .into_iter()
        .filter_map(|(position, message, error)| {
            let noise = sensitivity(position);
            let excused = error <= NOISE_FACTOR * noise; // false for NaN
            (!excused).then(|| format!("{message}; f32 rounding of the weights and values moves it by {noise:.3e}"))
        })
        .collect();
    if unexplained.is_empty() { Ok(Checked::Agree) } else { Err(unexplained.join("\n")) }
}

/// The largest relative L2 error of the CPU backend against the interpreter (f32 sums
/// against f64), as in `tests/cpu_backend.rs`.
const CPU_TOLERANCE: f64 = 1e-4;

/// The outputs of `actual` (named `what`) that differ from `expected` by more than
/// `tolerance`: (position, message, error). Different shapes are an error.
fn compare(
    graph: &cnnc::ir::Graph,
    what: &str,
    expected: &[Tensor],
    actual: &[Tensor],
    tolerance: f64,
) -> Result<Vec<(usize, String, f64)>, String> {
    if expected.len() != actual.len() {
        return Err(format!("{what}: {} outputs, expected {}", actual.len(), expected.len()));
    }
    let mut failures = Vec::new();
    for (position, ((output, expected), actual)) in graph.outputs.iter().zip(expected).zip(actual).enumerate() {
        if expected.shape != actual.shape {
            return Err(format!(
                "{what}: output {} has shape {}, expected {}",
                output.name,
                actual.shape_string(),
                expected.shape_string()
            ));
        }
        let error = relative_l2(&actual.data, &expected.data);
        let within = error <= tolerance; // false for NaN
        if !within {
            failures.push((
                position,
                format!("{what}: output {}: relative L2 {error:.3e} > {tolerance:e}", output.name),
                error,
            ));
        }
    }
    Ok(failures)
}

/// How many times the effect of rounding noise a difference may be and still count as
/// rounding (see `check_equivalence`).
const NOISE_FACTOR: f64 = 10.0;

/// The weights with every value moved by one part in 2^23 up or down (about twice the
/// rounding error of f32), the direction drawn from `sample`, the name and the index.
fn perturb(weights: &Weights, sample: u64) -> Weights {
    let mut perturbed = weights.clone();
    for (name, tensor) in &mut perturbed.tensors {
        let seed =
            name.bytes().fold(0x9e37_79b9_7f4a_7c15 ^ sample, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        perturb_values(&mut tensor.data, seed);
    }
    perturbed
}

/// Moves every value by one part in 2^23 up or down, the directions drawn from `seed`.
fn perturb_values(values: &mut [f32], seed: u64) {
    let mut state = seed | 1;
    for value in values {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let direction = if state & 1 == 0 { 1.0 } else { -1.0 };
        *value = (*value as f64 * (1.0 + direction * f64::powi(2.0, -23))) as f32;
    }
}

fn pair(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![range.clone().prop_map(|n| (n, n)), (range.clone(), range)]
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Relu),
        Just(Activation::LeakyRelu),
        Just(Activation::Sigmoid),
        Just(Activation::Tanh),
        Just(Activation::Relu6),
        Just(Activation::Hardtanh),
        Just(Activation::HardSwish),
        Just(Activation::HardSigmoid),
        Just(Activation::Silu),
        Just(Activation::Gelu),
        Just(Activation::GeluTanh),
    ]
}

fn conv() -> impl Strategy<Value = Layer> {
    let pad = prop_oneof![
        3 => pair(0..=2).prop_map(|(h, w)| ConvPad::Pixels(h, w)),
        1 => Just(ConvPad::Same),
        1 => Just(ConvPad::Valid),
    ];
    let dilation = prop_oneof![3 => Just((1, 1)), 1 => pair(1..=3)];
    (1usize..=12, pair(1..=5), pair(1..=3), pad, dilation, 0usize..4, any::<bool>()).prop_map(
        |(out_channels, kernel, stride, pad, dilation, groups, bias)| Layer::Conv {
            out_channels,
            kernel,
            stride,
            pad,
            dilation,
            groups,
            bias,
            depthwise: false,
        },
    )
}

/// Depthwise convolutions: square kernels 3, 5 and 7 (ConvNeXt's), strides 1 and 2,
/// padding up to half the kernel (or `same`).
fn depthwise() -> impl Strategy<Value = Layer> {
    let kernel = prop_oneof![Just(3usize), Just(5), Just(7)];
    let pad = prop_oneof![3 => (0usize..=3).prop_map(|p| ConvPad::Pixels(p, p)), 1 => Just(ConvPad::Same)];
    (kernel, pair(1..=2), pad, any::<bool>()).prop_map(|(k, stride, pad, bias)| {
        let pad = match pad {
            ConvPad::Pixels(p, _) => ConvPad::Pixels(p.min(k / 2), p.min(k / 2)),
            other => other,
        };
        Layer::Conv { out_channels: 1, kernel: (k, k), stride, pad, dilation: (1, 1), groups: 0, bias, depthwise: true }
    })
}

fn batch_norm() -> impl Strategy<Value = Layer> {
    prop_oneof![Just(None), Just(Some(1e-3)), Just(Some(0.1))].prop_map(|eps| Layer::BatchNorm { eps })
}

fn pool() -> impl Strategy<Value = Layer> {
    (
        any::<bool>(),
        pair(1..=4),
        proptest::option::of(pair(1..=3)),
        pair(0..=2),
        pair(0..=1),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(max, kernel, stride, pad, extra, ceil, count_pad)| Layer::Pool {
            max,
            kernel,
            stride,
            pad,
            extra,
            ceil,
            count_pad,
        })
}

fn merge() -> impl Strategy<Value = Layer> {
    (any::<bool>(), proptest::collection::vec(0usize..8, 1..=2), any::<bool>())
        .prop_map(|(multiply, picks, current_last)| Layer::Merge { multiply, picks, current_last })
}

/// Layers on feature maps, without branches.
fn feature_layer() -> BoxedStrategy<Layer> {
    prop_oneof![
        6 => conv(),
        2 => depthwise(),
        3 => batch_norm(),
        4 => activation().prop_map(Layer::Activation),
        1 => any::<bool>().prop_map(|spatial| Layer::Dropout { spatial }),
        1 => Just(Layer::StochasticDepth),
        3 => pool(),
        1 => proptest::option::of(pair(1..=6)).prop_map(|out| Layer::AdaptiveAvgPool { out }),
        1 => any::<bool>().prop_map(|max| Layer::GlobalPool { max }),
        1 => (1usize..=5).prop_map(|size| Layer::Lrn { size }),
        2 => merge(),
        1 => Just(Layer::ExtraOutput),
        1 => (0usize..4).prop_map(|groups| Layer::ChannelShuffle { groups }),
        1 => Just(Layer::Normalize),
        1 => Just(Layer::Scale),
        1 => (1usize..=12, any::<bool>()).prop_map(|(out_features, relu)| Layer::ChannelsLast { out_features, relu }),
        1 => (2usize..=4, 0usize..4).prop_map(|(chunks, pick)| Layer::Chunk { chunks, pick }),
    ]
    .boxed()
}

/// Layers on `[N, F]` tensors, without branches.
fn feature_vector_layer() -> BoxedStrategy<Layer> {
    prop_oneof![
        4 => (1usize..=16, any::<bool>()).prop_map(|(out_features, bias)| Layer::Linear { out_features, bias }),
        2 => batch_norm(),
        2 => activation().prop_map(Layer::Activation),
        1 => Just(Layer::Dropout { spatial: false }),
        1 => merge(),
        1 => Just(Layer::Softmax),
        1 => Just(Layer::ExtraOutput),
        1 => Just(Layer::Normalize),
        1 => (2usize..=4, 0usize..4).prop_map(|(chunks, pick)| Layer::Chunk { chunks, pick }),
    ]
    .boxed()
}

fn with_branches(leaf: BoxedStrategy<Layer>) -> impl Strategy<Value = Layer> {
    let chain = proptest::collection::vec(leaf.clone(), 0..=3);
    prop_oneof![
        12 => leaf,
        2 => proptest::collection::vec(chain.clone(), 1..=3).prop_map(Layer::Branches),
        1 => chain.prop_map(Layer::DeadBranch),
    ]
}

fn network() -> impl Strategy<Value = Network> {
    let input = (1usize..=6, 4usize..=12, 4usize..=12).prop_map(|(c, h, w)| [c, h, w]);
    let body = proptest::collection::vec(with_branches(feature_layer()), 0..=10);
    let head = prop_oneof![
        1 => Just(Vec::new()),
        3 => (
            prop_oneof![Just(Layer::Flatten), (1usize..=16, any::<bool>()).prop_map(|(out_features, bias)| Layer::Linear { out_features, bias })],
            proptest::collection::vec(with_branches(feature_vector_layer()), 0..=5),
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            }),
    ];
    (input, body, head).prop_map(|(input, body, head)| Network { input, body, head })
}

/// The configuration of a property: `PROPTEST_CASES` (default 1024) networks divided by
/// `share`. `PROPTEST_CASES=100000 cargo test --test proptest_networks` searches longer.
fn config(share: u32) -> ProptestConfig {
    let cases: u32 = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1024);
    ProptestConfig {
        cases: (cases / share).max(1),
        // Failing cases are kept as plain tests below, not in a regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn o2_computes_what_o0_computes(
        network in network(),
        batch in 1usize..=2,
        weight_seed in any::<u64>(),
        input_seed in any::<u64>(),
    ) {
        let (source, shapes) = network.render();
        match check_equivalence(&source, &shapes, batch, weight_seed, input_seed) {
            Ok(Checked::Agree) => {}
            Ok(Checked::Overflowed) => return Err(TestCaseError::reject("the outputs overflow")),
            Err(e) => prop_assert!(false, "{e}\nbatch {batch}, weight seed {weight_seed}, input seed {input_seed}, source:\n{source}"),
        }
    }
}

/// The renderer keeps programs valid when layers are left out or do not fit: every
/// shrunk network must still compile.
#[test]
fn renderer_adapts_layers_to_the_shape() {
    let network = Network {
        input: [3, 4, 5],
        body: vec![
            Layer::Conv {
                out_channels: 5,
                kernel: (7, 3),
                stride: (1, 2),
                pad: ConvPad::Pixels(0, 1),
                dilation: (3, 2),
                groups: 1,
                bias: false,
                depthwise: false,
            },
            Layer::Pool {
                max: false,
                kernel: (4, 4),
                stride: None,
                pad: (2, 2),
                extra: (0, 0),
                ceil: true,
                count_pad: true,
            },
            Layer::Branches(vec![vec![Layer::GlobalPool { max: true }], vec![]]),
            Layer::Merge { multiply: true, picks: vec![3], current_last: true },
        ],
        head: vec![Layer::Linear { out_features: 4, bias: true }, Layer::Softmax],
    };
    let (source, shapes) = network.render();
    let checked = check_equivalence(&source, &shapes, 2, 1, 2).unwrap_or_else(|e| panic!("{e}\n{source}"));
    assert_eq!(checked, Checked::Agree);
}

/// Found by CI: a layer norm over five values that are all close to 0.5 (a sigmoid of
/// small numbers) amplifies an ulp of the sigmoid into 1.4e-4 of its output, on any
/// backend. The CPU backend's sigmoid is within an ulp; the failure must be excused by
/// the rounding noise of the layers' values, not only of the weights.
#[test]
fn layer_norm_of_nearly_equal_values_is_as_sensitive_as_its_rounding_noise() {
    let source = "network random {
    input x: [5, 5, 9]
    t0 = x |> adaptive_avg_pool(1)
    t1 = t0 |> conv(1, 1, bias=false)
    t2 = t0 |> conv(5, 1, pad=same)
    t3 = mul(t2, t2, t0)
    t4 = t3 |> sigmoid
    t5 = t4 |> permute(0, 2, 3, 1) |> layer_norm |> linear(3) |> permute(0, 3, 1, 2)
}
";
    let checked = check_equivalence(source, &[vec![3, 1, 1]], 1, 5478037913017826227, 16669153973880910524)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked, Checked::Agree);
}

/// The largest relative L2 error of the GPU backend against the interpreter, as in
/// `tests/gpu_backend.rs`.
const GPU_TOLERANCE: f64 = 1e-4;

/// Runs the GPU pipeline's `-O2` graph of a random network on the GPU (one device for the whole run,
/// opened as a user's program opens one) against the interpreter on the same graph.
fn check_gpu(source: &str, batch: usize, weight_seed: u64, input_seed: u64) -> Result<Checked, String> {
    static DEVICE: std::sync::OnceLock<(cnnc::gpu::wgpu::Device, cnnc::gpu::wgpu::Queue)> = std::sync::OnceLock::new();
    let (device, queue) = DEVICE.get_or_init(common::own_device);
    let options = BuildOptions { batch, ..BuildOptions::default() };
    let mut graph = compile_source(source, &options).map_err(|diags| format!("does not compile: {diags:?}"))?;
    graph.weights = random_weights(&graph, weight_seed);
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, id)| random_normal(&graph.node(*id).shape, input_seed.wrapping_add(i as u64)))
        .collect();
    passes::optimize_for(&mut graph, OptLevel::O2, Capabilities::GPU)?;
    let expected = interp::run(&graph, &graph.weights, &inputs).map_err(|e| format!("-O2 run: {e}"))?;
    if expected.iter().any(|t| t.data.iter().any(|v| !v.is_finite() || v.abs() > 1e30)) {
        return Ok(Checked::Overflowed);
    }
    let model = cnnc::backend::wgsl::compile_gpu_on(&graph, device, queue, &Default::default())
        .map_err(|e| format!("GPU backend: {e}"))?;
    let actual = model.run(&inputs).map_err(|e| format!("GPU run: {e}"))?;
    let failures = compare(&graph, "gpu", &expected, &actual, GPU_TOLERANCE)?;
    if failures.is_empty() {
        Ok(Checked::Agree)
    } else {
        Err(failures.into_iter().map(|(_, message, _)| message).collect::<Vec<_>>().join("\n"))
    }
}

proptest! {
    // An eighth of the interpreter's cases: each one builds its pipelines on lavapipe.
    #![proptest_config(config(8))]

    #[test]
    fn gpu_computes_what_the_interpreter_computes(
        network in network(),
        batch in 1usize..=2,
        weight_seed in any::<u64>(),
        input_seed in any::<u64>(),
    ) {
        // Asked once: looking for an adapter costs more than a case. (The lock
        // `gpu_present` returns is for binaries with several GPU tests; this has one.)
        static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*PRESENT.get_or_init(|| common::gpu_present("gpu_computes_what_the_interpreter_computes").is_some()) {
            return Ok(());
        }
        let (source, _) = network.render();
        match check_gpu(&source, batch, weight_seed, input_seed) {
            Ok(Checked::Agree) => {}
            Ok(Checked::Overflowed) => return Err(TestCaseError::reject("the outputs overflow")),
            Err(e) => prop_assert!(false, "{e}\nbatch {batch}, weight seed {weight_seed}, input seed {input_seed}, source:\n{source}"),
        }
    }
}
