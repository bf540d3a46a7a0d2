//! The reference interpreter against hand-computed cases: every expected number below is
//! written out with its arithmetic, not produced by running code. Two larger checks
//! follow: random convolutions against a naive seven-loop convolution, and VGG-16 at
//! batch 1 on random weights (timed).

use cnnc::front::{BuildOptions, compile_source};
use cnnc::interp::{self, InterpError};
use cnnc::ir::{Graph, NodeId, Op, Pad, ParamRole};
use cnnc::tensor::Tensor;
use cnnc::weights::Weights;

fn compile(source: &str) -> Graph {
    compile_batch(source, 1)
}

fn compile_batch(source: &str, batch: usize) -> Graph {
    compile_source(source, &BuildOptions { batch, input_shape: None })
        .unwrap_or_else(|diags| panic!("test program does not compile: {diags:?}\n{source}"))
}

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).expect("data length matches shape")
}

fn weights(entries: &[(&str, &[usize], &[f32])]) -> Weights {
    let mut w = Weights::default();
    for (name, shape, data) in entries {
        w.insert(*name, tensor(shape, data));
    }
    w
}

/// Runs a one-input graph and returns its outputs.
fn run(graph: &Graph, w: &Weights, input: Tensor) -> Vec<Tensor> {
    interp::run(graph, w, &[input]).unwrap_or_else(|e| panic!("interpreter failed: {e}"))
}

/// Runs a one-input, one-output program and returns the output.
fn run_single(source: &str, w: &Weights, input: Tensor) -> Tensor {
    let graph = compile(source);
    let mut outputs = run(&graph, w, input);
    assert_eq!(outputs.len(), 1);
    outputs.remove(0)
}

#[track_caller]
fn assert_close(actual: &Tensor, shape: &[usize], expected: &[f32]) {
    assert_eq!(actual.shape, shape, "shape");
    assert_eq!(actual.data.len(), expected.len());
    for (i, (a, e)) in actual.data.iter().zip(expected).enumerate() {
        let tolerance = 1e-5 * e.abs().max(1.0);
        assert!((a - e).abs() <= tolerance, "element {i}: got {a}, expected {e}\nall: {:?}", actual.data);
    }
}

fn node_named(graph: &Graph, name: &str) -> NodeId {
    graph.node_ids().into_iter().find(|id| graph.node(*id).name == name).unwrap_or_else(|| panic!("no node `{name}`"))
}

// ---------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------

#[test]
fn lecture_example_binary_image() {
    let source = "network t {\n input x: [1, 5, 5]\n c: conv(1, 3, bias=false)\n}";
    #[rustfmt::skip]
    let image = [
        1.0, 1.0, 1.0, 0.0, 0.0,
        0.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 0.0, 1.0, 1.0, 1.0,
        0.0, 0.0, 1.0, 1.0, 0.0,
        0.0, 1.0, 1.0, 0.0, 0.0,
    ];
    let kernel = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
    let w = weights(&[("c.weight", &[1, 1, 3, 3], &kernel)]);
    let out = run_single(source, &w, tensor(&[1, 1, 5, 5], &image));
    // Each output is the sum of the window's four corners and its centre:
    // (0,0): 1+1+0+1 + 1 = 4   (0,1): 1+0+0+1 + 1 = 3   (0,2): 1+0+1+1 + 1 = 4
    // (1,0): 0+1+0+1 + 0 = 2   (1,1): 1+1+0+1 + 1 = 4   (1,2): 1+0+1+0 + 1 = 3
    // (2,0): 0+1+0+1 + 0 = 2   (2,1): 0+1+1+0 + 1 = 3   (2,2): 1+1+1+0 + 1 = 4
    assert_close(&out, &[1, 1, 3, 3], &[4.0, 3.0, 4.0, 2.0, 4.0, 3.0, 2.0, 3.0, 4.0]);
}

#[test]
fn output_sizes_in_node_shapes_and_results() {
    // (input size, conv arguments, kernel, expected output size)
    let cases = [
        (4, "conv(1, 3)", 3, 2),           // (4 - 3 + 0)/1 + 1 = 2
        (5, "conv(1, 4, pad=2)", 4, 6),    // (5 - 4 + 4)/1 + 1 = 6
        (5, "conv(1, 3, stride=2)", 3, 2), // (5 - 3 + 0)/2 + 1 = 2
    ];
    for (size, conv, kernel, expected) in cases {
        let source = format!("network t {{\n input x: [1, {size}, {size}]\n c: {conv}\n}}");
        let graph = compile(&source);
        assert_eq!(graph.node(node_named(&graph, "c")).shape, [1, 1, expected, expected], "{conv}");
        let ones = vec![1.0; kernel * kernel];
        let w = weights(&[("c.weight", &[1, 1, kernel, kernel], &ones), ("c.bias", &[1], &[0.0])]);
        let out = run(&graph, &w, Tensor { shape: vec![1, 1, size, size], data: vec![1.0; size * size] });
        assert_eq!(out[0].shape, [1, 1, expected, expected], "{conv}");
    }

    // With an all-ones 5x5 input and an all-ones 4x4 kernel, pad 2, each output counts
    // the real pixels under the window: output row i covers input rows i-2 ..= i+1,
    // clipped to 0..=4, so 2, 3, 4, 4, 3, 2 rows (same for columns), and
    // out[i][j] = rows[i] * cols[j].
    let source = "network t {\n input x: [1, 5, 5]\n c: conv(1, 4, pad=2, bias=false)\n}";
    let w = weights(&[("c.weight", &[1, 1, 4, 4], &[1.0; 16])]);
    let out = run_single(source, &w, tensor(&[1, 1, 5, 5], &[1.0; 25]));
    let counts = [2.0, 3.0, 4.0, 4.0, 3.0, 2.0];
    let expected: Vec<f32> = counts.iter().flat_map(|r| counts.iter().map(move |c| r * c)).collect();
    assert_close(&out, &[1, 1, 6, 6], &expected);
}

#[test]
fn conv_with_bias_and_batch_of_two() {
    // 1x1 convolution, 2 -> 1 channels: y = 2*a - b + 0.5, batch of 2 with 1x2 pixels.
    let source = "network t {\n input x: [2, 1, 2]\n c: conv(1, 1)\n}";
    let w = weights(&[("c.weight", &[1, 2, 1, 1], &[2.0, -1.0]), ("c.bias", &[1], &[0.5])]);
    let graph = compile_batch(source, 2);
    // Sample 0: a = [1, 2], b = [3, 5] -> [2-3+0.5, 4-5+0.5] = [-0.5, -0.5]
    // Sample 1: a = [4, 0], b = [1, -2] -> [8-1+0.5, 0+2+0.5] = [7.5, 2.5]
    let input = tensor(&[2, 2, 1, 2], &[1.0, 2.0, 3.0, 5.0, 4.0, 0.0, 1.0, -2.0]);
    let out = run(&graph, &w, input);
    assert_close(&out[0], &[2, 1, 1, 2], &[-0.5, -0.5, 7.5, 2.5]);
}

#[test]
fn grouped_conv() {
    // 4 input channels, 4 outputs, groups=2: outputs 0,1 read channels 0,1; outputs 2,3
    // read channels 2,3. Weight [4, 2, 1, 1] = [[1,2],[3,4],[5,6],[7,8]], x = [1,2,3,4]:
    // out0 = 1*1 + 2*2 = 5      out1 = 3*1 + 4*2 = 11
    // out2 = 5*3 + 6*4 = 39     out3 = 7*3 + 8*4 = 53
    let source = "network t {\n input x: [4, 1, 1]\n c: conv(4, 1, groups=2, bias=false)\n}";
    let w = weights(&[("c.weight", &[4, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])]);
    let out = run_single(source, &w, tensor(&[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
    assert_close(&out, &[1, 4, 1, 1], &[5.0, 11.0, 39.0, 53.0]);

    // Depthwise 3x3 with padding 1 (groups = channels = 2) on 2x2 planes:
    // channel 0 = [[1,2],[3,4]] with an all-ones kernel: every output sums the whole
    // plane, 1+2+3+4 = 10; channel 1 = [[5,6],[7,8]] with only the centre tap = 2:
    // out = 2*x = [10, 12, 14, 16].
    let source = "network t {\n input x: [2, 2, 2]\n c: conv(2, 3, pad=1, groups=2, bias=false)\n}";
    let mut kernel = vec![1.0; 9];
    kernel.extend([0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
    let w = weights(&[("c.weight", &[2, 1, 3, 3], &kernel)]);
    let out = run_single(source, &w, tensor(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]));
    assert_close(&out, &[1, 2, 2, 2], &[10.0, 10.0, 10.0, 10.0, 10.0, 12.0, 14.0, 16.0]);
}

#[test]
fn dilated_conv() {
    // 5x5 input x[i][j] = 5i + j + 1; 3x3 kernel, dilation 2: the taps sit at rows and
    // columns 0, 2, 4, and the output is (5 - 2*2 - 1)/1 + 1 = 1 pixel.
    // Kernel [[1,0,2],[0,10,0],[3,0,4]]:
    // 1*x[0][0] + 2*x[0][4] + 10*x[2][2] + 3*x[4][0] + 4*x[4][4]
    //   = 1*1 + 2*5 + 10*13 + 3*21 + 4*25 = 1 + 10 + 130 + 63 + 100 = 304
    let source = "network t {\n input x: [1, 5, 5]\n c: conv(1, 3, dilation=2, bias=false)\n}";
    let kernel = [1.0, 0.0, 2.0, 0.0, 10.0, 0.0, 3.0, 0.0, 4.0];
    let w = weights(&[("c.weight", &[1, 1, 3, 3], &kernel)]);
    let input: Vec<f32> = (1..=25).map(|v| v as f32).collect();
    let out = run_single(source, &w, tensor(&[1, 1, 5, 5], &input));
    assert_close(&out, &[1, 1, 1, 1], &[304.0]);

    // Dilation 2 with pad 1, all-ones kernel: output (5 + 2 - 5)/1 + 1 = 3. Output
    // (0,0) taps rows/cols -1, 1, 3; the real ones are x[1][1] + x[1][3] + x[3][1] +
    // x[3][3] = 7 + 9 + 17 + 19 = 52. Output (1,1) taps rows/cols 0, 2, 4: the sum of
    // x[i][j] for i, j in {0, 2, 4} = 3*(5*(0+2+4)) + 3*(0+2+4) + 9 = 90 + 18 + 9 = 117.
    let source = "network t {\n input x: [1, 5, 5]\n c: conv(1, 3, dilation=2, pad=1, bias=false)\n}";
    let w = weights(&[("c.weight", &[1, 1, 3, 3], &[1.0; 9])]);
    let out = run_single(source, &w, tensor(&[1, 1, 5, 5], &input));
    assert_eq!(out.shape, [1, 1, 3, 3]);
    assert_eq!(out.data[0], 52.0);
    assert_eq!(out.data[4], 117.0);
}

#[test]
fn asymmetric_same_padding_with_stride_2() {
    // 4x4 input, kernel 3, stride 2, pad=same: total = (ceil(4/2) - 1)*2 + 3 - 4 = 1,
    // so top/left 0 and bottom/right 1; output 2x2.
    let source = "network t {\n input x: [1, 4, 4]\n c: conv(1, 3, stride=2, pad=same, bias=false)\n}";
    let graph = compile(source);
    let conv = graph.node(node_named(&graph, "c"));
    match &conv.op {
        Op::Conv(c) => assert_eq!(c.pad, Pad { top: 0, left: 0, bottom: 1, right: 1 }),
        other => panic!("not a conv: {other:?}"),
    }
    assert_eq!(conv.shape, [1, 1, 2, 2]);
    // x[i][j] = 4i + j + 1, all-ones kernel. Windows: rows/cols 0..=2 and 2..=4 (4 is
    // padding). Row i summed over cols 0..=2: 12i + 6; over cols 2..=3: 8i + 7.
    // (0,0): rows 0..=2, cols 0..=2: 6 + 18 + 30 = 54
    // (0,1): rows 0..=2, cols 2..=3: 7 + 15 + 23 = 45
    // (1,0): rows 2..=3, cols 0..=2: 30 + 42 = 72
    // (1,1): rows 2..=3, cols 2..=3: 23 + 31 = 54
    // (Symmetric padding would have given (0,0) = 1 + 2 + 5 + 6 = 14.)
    let w = weights(&[("c.weight", &[1, 1, 3, 3], &[1.0; 9])]);
    let input: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let out = run(&graph, &w, tensor(&[1, 1, 4, 4], &input));
    assert_close(&out[0], &[1, 1, 2, 2], &[54.0, 45.0, 72.0, 54.0]);
}

// ---------------------------------------------------------------------------------------
// Linear, batch norm, activations, dropout
// ---------------------------------------------------------------------------------------

#[test]
fn linear_layer() {
    // W = [[1,2,3],[4,5,6]], b = [0.5, -1], x = [1, 0, -1]:
    // y0 = 1 - 3 + 0.5 = -1.5, y1 = 4 - 6 - 1 = -3
    let source = "network t {\n input x: [3, 1, 1]\n flatten\n fc: linear(2)\n}";
    let w = weights(&[("fc.weight", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), ("fc.bias", &[2], &[0.5, -1.0])]);
    let out = run_single(source, &w, tensor(&[1, 3, 1, 1], &[1.0, 0.0, -1.0]));
    assert_close(&out, &[1, 2], &[-1.5, -3.0]);
}

#[test]
fn dropout_and_dropout2d_are_the_identity() {
    let source = "network t {\n input x: [2, 2, 2]\n dropout(0.9)\n dropout2d(0.7)\n flatten\n dropout\n}";
    let data = [1.0, -2.0, 3.5, 0.0, -0.25, 7.0, 8.0, -9.0];
    let out = run_single(source, &Weights::default(), tensor(&[1, 2, 2, 2], &data));
    assert_eq!(out, tensor(&[1, 8], &data));
}

#[test]
fn batch_norm_4d_with_running_statistics() {
    // eps = 1 so that sqrt(var + eps) is exact: channel 0 var 3 -> 2, channel 1 var 15 -> 4.
    // weight [2, 0.5], bias [1, -1], mean [2, 2].
    // channel 0: (x - 2)/2 * 2 + 1 = x - 1       channel 1: (x - 2)/4 * 0.5 - 1
    // sample 0: c0 [1, 3] -> [0, 2];   c1 [-2, 6] -> [-4/4*0.5 - 1, 4/4*0.5 - 1] = [-1.5, -0.5]
    // sample 1: c0 [5, -1] -> [4, -2]; c1 [10, 2] -> [8/4*0.5 - 1, 0 - 1] = [0, -1]
    let source = "network t {\n input x: [2, 1, 2]\n bn: batch_norm(eps=1)\n}";
    let graph = compile_batch(source, 2);
    let w = weights(&[
        ("bn.weight", &[2], &[2.0, 0.5]),
        ("bn.bias", &[2], &[1.0, -1.0]),
        ("bn.running_mean", &[2], &[2.0, 2.0]),
        ("bn.running_var", &[2], &[3.0, 15.0]),
    ]);
    let input = tensor(&[2, 2, 1, 2], &[1.0, 3.0, -2.0, 6.0, 5.0, -1.0, 10.0, 2.0]);
    let out = run(&graph, &w, input);
    assert_close(&out[0], &[2, 2, 1, 2], &[0.0, 2.0, -1.5, -0.5, 4.0, -2.0, 0.0, -1.0]);
}

#[test]
fn batch_norm_2d_with_running_statistics() {
    // [N, F] = [1, 3], eps = 1: sqrt(var + 1) = sqrt(0+1), sqrt(3+1), sqrt(8+1) = 1, 2, 3.
    // weight [1, 2, 3], bias [0, 1, 0], mean [1, 0, -1], x = [4, 6, 2]:
    // f0: (4-1)/1*1 + 0 = 3     f1: (6-0)/2*2 + 1 = 7     f2: (2+1)/3*3 + 0 = 3
    let source = "network t {\n input x: [3, 1, 1]\n flatten\n bn: batch_norm(eps=1)\n}";
    let w = weights(&[
        ("bn.weight", &[3], &[1.0, 2.0, 3.0]),
        ("bn.bias", &[3], &[0.0, 1.0, 0.0]),
        ("bn.running_mean", &[3], &[1.0, 0.0, -1.0]),
        ("bn.running_var", &[3], &[0.0, 3.0, 8.0]),
    ]);
    let out = run_single(source, &w, tensor(&[1, 3, 1, 1], &[4.0, 6.0, 2.0]));
    assert_close(&out, &[1, 3], &[3.0, 7.0, 3.0]);

    // The default eps = 1e-5: var 1 -> (x - mean) / sqrt(1.00001). With x - mean = 1,
    // 1/sqrt(1.00001) = 1 - 0.5e-5 + ... = 0.999995 (to 1e-11).
    let source = "network t {\n input x: [1, 1, 1]\n flatten\n bn: batch_norm\n}";
    let w = weights(&[
        ("bn.weight", &[1], &[1.0]),
        ("bn.bias", &[1], &[0.0]),
        ("bn.running_mean", &[1], &[0.0]),
        ("bn.running_var", &[1], &[1.0]),
    ]);
    let out = run_single(source, &w, tensor(&[1, 1, 1, 1], &[1.0]));
    assert_close(&out, &[1, 1], &[0.999995]);
}

#[test]
fn elementwise_activations() {
    // relu: [-2, 0, 3] -> [0, 0, 3]
    // leaky_relu(0.5): [-2, 0, 3] -> [-1, 0, 3]
    // sigmoid(0) = 1/(1+1) = 0.5; sigmoid(ln 3) = 1/(1 + 1/3) = 0.75; sigmoid(-ln 3) = 0.25
    // tanh(0) = 0; tanh(ln 2) = (2 - 1/2)/(2 + 1/2) = 0.6; tanh(-ln 2) = -0.6
    let x = tensor(&[1, 3, 1, 1], &[-2.0, 0.0, 3.0]);
    let program = |op: &str| format!("network t {{\n input x: [3, 1, 1]\n {op}\n}}");
    let out = run_single(&program("relu"), &Weights::default(), x.clone());
    assert_close(&out, &[1, 3, 1, 1], &[0.0, 0.0, 3.0]);
    let out = run_single(&program("leaky_relu(0.5)"), &Weights::default(), x);
    assert_close(&out, &[1, 3, 1, 1], &[-1.0, 0.0, 3.0]);

    let ln3 = 3.0f32.ln();
    let out = run_single(&program("sigmoid"), &Weights::default(), tensor(&[1, 3, 1, 1], &[0.0, ln3, -ln3]));
    assert_close(&out, &[1, 3, 1, 1], &[0.5, 0.75, 0.25]);
    let ln2 = 2.0f32.ln();
    let out = run_single(&program("tanh"), &Weights::default(), tensor(&[1, 3, 1, 1], &[0.0, ln2, -ln2]));
    assert_close(&out, &[1, 3, 1, 1], &[0.0, 0.6, -0.6]);
}

/// Like `assert_close`, where NaN must meet NaN and an infinity the same infinity.
#[track_caller]
fn assert_close_special(actual: &Tensor, expected: &[f32]) {
    assert_eq!(actual.data.len(), expected.len());
    for (i, (a, e)) in actual.data.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() {
            a.is_nan()
        } else if e.is_infinite() {
            a == e
        } else {
            (a - e).abs() <= 1e-6 * e.abs().max(1.0)
        };
        assert!(ok, "element {i}: got {a}, expected {e}\nall: {:?}", actual.data);
    }
}

/// Runs `op` alone over one channel of the values `x`.
fn activation_of(op: &str, x: &[f32]) -> Tensor {
    let source = format!("network t {{\n input x: [1, 1, {}]\n {op}\n}}", x.len());
    run_single(&source, &Weights::default(), tensor(&[1, 1, 1, x.len()], x))
}

#[test]
fn clamping_activations_with_their_edges() {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    // relu6 = min(max(x, 0), 6); NaN passes through (PyTorch's clamp propagates it).
    let out = activation_of("relu6", &[-1.0, 0.0, 3.0, 6.0, 7.0, nan, inf, -inf]);
    assert_close_special(&out, &[0.0, 0.0, 3.0, 6.0, 6.0, nan, 6.0, 0.0]);
    // hardtanh defaults to [-1, 1]; the bounds themselves are kept.
    let out = activation_of("hardtanh", &[-1.5, -1.0, 0.5, 1.0, 1.5]);
    assert_close_special(&out, &[-1.0, -1.0, 0.5, 1.0, 1.0]);
    let out = activation_of("hardtanh(min=-2, max=0.5)", &[-3.0, -2.0, 0.25, 0.5, 1.0, nan]);
    assert_close_special(&out, &[-2.0, -2.0, 0.25, 0.5, 0.5, nan]);
    // hardsigmoid = relu6(x + 3) / 6: -4 -> 0, -3 -> 0, 0 -> 3/6, 1.5 -> 4.5/6 = 0.75,
    // 3 -> 6/6, 4 -> 1; inf -> 1, -inf -> 0.
    let x = [-4.0, -3.0, 0.0, 1.5, 3.0, 4.0, inf, -inf, nan];
    let out = activation_of("hardsigmoid", &x);
    assert_close_special(&out, &[0.0, 0.0, 0.5, 0.75, 1.0, 1.0, 1.0, 0.0, nan]);
    // hardswish = x * relu6(x + 3) / 6: -4 -> -4 * 0 = 0, -3 -> 0, 0 -> 0,
    // 1.5 -> 1.5 * 4.5 / 6 = 1.125, 3 -> 3 * 6 / 6 = 3, 4 -> 4, inf -> inf;
    // -inf -> -inf * 0 = NaN (as PyTorch's formula and ONNX Runtime's HardSwish).
    let out = activation_of("hardswish", &x);
    assert_close_special(&out, &[0.0, 0.0, 0.0, 1.125, 3.0, 4.0, inf, nan, nan]);
    let out = activation_of("hardswish", &[-1.5]);
    // -1.5 * 1.5 / 6 = -0.375
    assert_close_special(&out, &[-0.375]);
}

#[test]
fn smooth_activations_with_their_edges() {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    // silu = x * sigmoid(x): sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25 (see above);
    // inf -> inf / (1 + 0) = inf; -inf -> -inf / (1 + inf) = NaN, as PyTorch's
    // x / (1 + exp(-x)) and ONNX Runtime's x * Sigmoid(x) (-inf * 0).
    let ln3 = 3.0f32.ln();
    let out = activation_of("silu", &[0.0, ln3, -ln3, inf, -inf, nan]);
    assert_close_special(&out, &[0.0, 0.75 * ln3, -0.25 * ln3, inf, nan, nan]);
    // gelu = x * Phi(x), Phi the standard normal CDF: Phi(1) = 0.8413447461,
    // Phi(2) = 0.9772498681 (tables), Phi(-x) = 1 - Phi(x), so gelu(1) = 0.8413447461,
    // gelu(-1) = -(1 - 0.8413447461) = -0.1586552539, gelu(2) = 1.9544997361,
    // gelu(-2) = -2 * 0.0227501319 = -0.0455002639; inf -> inf; -inf -> -inf * 0 = NaN.
    let out = activation_of("gelu", &[0.0, 1.0, -1.0, 2.0, -2.0, inf, -inf, nan]);
    let expected = [0.0, 0.841_344_8, -0.158_655_25, 1.954_499_7, -0.045_500_264, inf, nan, nan];
    assert_close_special(&out, &expected);
    // gelu(tanh=true) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), PyTorch's formula,
    // which stays within 2e-4 of the exact form at 1 and 2 here.
    let approx =
        |x: f64| (0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())) as f32;
    let out = activation_of("gelu(tanh=true)", &[0.0, 1.0, -1.0, 2.0, inf, nan]);
    assert_close_special(&out, &[0.0, approx(1.0), approx(-1.0), approx(2.0), inf, nan]);
    assert!((approx(1.0) - 0.841_344_8).abs() < 2e-4 && (approx(2.0) - 1.954_499_7).abs() < 2e-4);
}

#[test]
fn stochastic_depth_is_the_identity() {
    let out = activation_of("stochastic_depth(0.2)", &[-1.0, 0.5, 2.0]);
    assert_close_special(&out, &[-1.0, 0.5, 2.0]);
}

#[test]
fn softmax_over_channels() {
    // 2-D: e^0 : e^ln2 : e^ln5 = 1 : 2 : 5, sum 8 -> [1/8, 2/8, 5/8]. Adding 1000 to every
    // logit changes nothing (and would overflow exp without subtracting the max).
    let source = "network t {\n input x: [3, 1, 1]\n flatten\n softmax\n}";
    let (ln2, ln5) = (2.0f32.ln(), 5.0f32.ln());
    let out = run_single(source, &Weights::default(), tensor(&[1, 3, 1, 1], &[0.0, ln2, ln5]));
    assert_close(&out, &[1, 3], &[0.125, 0.25, 0.625]);
    let out = run_single(source, &Weights::default(), tensor(&[1, 3, 1, 1], &[1000.0, 1000.0, 1000.0]));
    assert_close(&out, &[1, 3], &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]);

    // 4-D: independently per pixel. Pixel 0: channels [0, 0] -> [0.5, 0.5];
    // pixel 1: [0, ln 3] -> 1 : 3 -> [0.25, 0.75]. Layout [c0p0, c0p1, c1p0, c1p1].
    let source = "network t {\n input x: [2, 1, 2]\n softmax\n}";
    let ln3 = 3.0f32.ln();
    let out = run_single(source, &Weights::default(), tensor(&[1, 2, 1, 2], &[0.0, 0.0, 0.0, ln3]));
    assert_close(&out, &[1, 2, 1, 2], &[0.5, 0.25, 0.5, 0.75]);

    // Rows sum to 1 on arbitrary values, per (n, h, w).
    let source = "network t {\n input x: [5, 2, 3]\n softmax\n}";
    let graph = compile_batch(source, 2);
    let data: Vec<f32> = (0..60).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
    let out = run(&graph, &Weights::default(), tensor(&[2, 5, 2, 3], &data));
    for n in 0..2 {
        for pixel in 0..6 {
            let sum: f32 = (0..5).map(|c| out[0].data[(n * 5 + c) * 6 + pixel]).sum();
            assert!((sum - 1.0).abs() < 1e-6, "sum {sum}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------

#[test]
fn max_pool_padding_is_negative_infinity() {
    // x = -[[1,2,3],[4,5,6],[7,8,9]], kernel 2, stride 2, pad 1: output (3+2-2)/2 + 1 = 2.
    // Windows cover rows/cols {-1, 0} and {1, 2}; -1 is padding.
    // (0,0): {x00} = -1       (0,1): {x01, x02} = max(-2, -3) = -2
    // (1,0): {x10, x20} = -4  (1,1): {x11, x12, x21, x22} = -5
    // (Zero padding would have given 0 everywhere but (1,1).)
    let source = "network t {\n input x: [1, 3, 3]\n max_pool(2, stride=2, pad=1)\n}";
    let input: Vec<f32> = (1..=9).map(|v| -(v as f32)).collect();
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 2, 2], &[-1.0, -2.0, -4.0, -5.0]);
}

#[test]
fn avg_pool_padding_excluded_unless_count_pad() {
    let input: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // [[1,2,3],[4,5,6],[7,8,9]]

    // Kernel 2, stride 2, pad 1 (windows {-1,0} and {1,2} as above):
    // count_pad=false: (0,0) 1/1 = 1; (0,1) (2+3)/2 = 2.5; (1,0) (4+7)/2 = 5.5;
    //                  (1,1) (5+6+8+9)/4 = 7
    // count_pad=true: every window fits in the padded 5x5, divisor 4:
    //                  1/4 = 0.25; 5/4 = 1.25; 11/4 = 2.75; 28/4 = 7
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(2, stride=2, pad=1)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 2, 2], &[1.0, 2.5, 5.5, 7.0]);
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(2, stride=2, pad=1, count_pad=true)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 2, 2], &[0.25, 1.25, 2.75, 7.0]);

    // Kernel 3, stride 1, pad 1 on the same input: 3x3 output.
    // count_pad=false: corners average 4 pixels, edges 6, the centre 9:
    //   (0,0) (1+2+4+5)/4 = 3        (0,1) (1+2+3+4+5+6)/6 = 3.5   (0,2) (2+3+5+6)/4 = 4
    //   (1,0) (1+2+4+5+7+8)/6 = 4.5  (1,1) 45/9 = 5                (1,2) (2+3+5+6+8+9)/6 = 5.5
    //   (2,0) (4+5+7+8)/4 = 6        (2,1) (4+5+6+7+8+9)/6 = 6.5   (2,2) (5+6+8+9)/4 = 7
    // count_pad=true: the same sums over 9: 12/9, 21/9, 16/9, 27/9, 45/9, 33/9, 24/9, 39/9, 28/9
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(3, stride=1, pad=1)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 3, 3], &[3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]);
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(3, stride=1, pad=1, count_pad=true)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    let sums = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
    let expected: Vec<f32> = sums.iter().map(|s| s / 9.0).collect();
    assert_close(&out, &[1, 1, 3, 3], &expected);
}

#[test]
fn ceil_mode_pooling_clips_the_last_window() {
    // 5x5 input x[i][j] = 5i + j + 1, kernel 2, stride 2, ceil=true:
    // ceil((5 - 2)/2) + 1 = 3; the last window starts at 4 < 5, so 3x3. Windows:
    // rows/cols {0,1}, {2,3}, {4} (clipped).
    let input: Vec<f32> = (1..=25).map(|v| v as f32).collect();
    let graph = compile("network t {\n input x: [1, 5, 5]\n p: max_pool(2, ceil=true)\n}");
    assert_eq!(graph.node(node_named(&graph, "p")).shape, [1, 1, 3, 3]);
    // Max: the window's last row r and column c: 5r + c + 1 with r, c in {1, 3, 4}:
    // 7, 9, 10 / 17, 19, 20 / 22, 24, 25
    let out = run(&graph, &Weights::default(), tensor(&[1, 1, 5, 5], &input));
    assert_close(&out[0], &[1, 1, 3, 3], &[7.0, 9.0, 10.0, 17.0, 19.0, 20.0, 22.0, 24.0, 25.0]);

    // Average over the clipped windows:
    // (0,0) (1+2+6+7)/4 = 4       (0,1) (3+4+8+9)/4 = 6        (0,2) (5+10)/2 = 7.5
    // (1,0) (11+12+16+17)/4 = 14  (1,1) (13+14+18+19)/4 = 16   (1,2) (15+20)/2 = 17.5
    // (2,0) (21+22)/2 = 21.5      (2,1) (23+24)/2 = 23.5       (2,2) 25/1 = 25
    // With pad 0, count_pad=true divides by the window clipped to the (unpadded) input:
    // the same numbers.
    let expected = [4.0, 6.0, 7.5, 14.0, 16.0, 17.5, 21.5, 23.5, 25.0];
    for count_pad in ["false", "true"] {
        let source = format!("network t {{\n input x: [1, 5, 5]\n avg_pool(2, ceil=true, count_pad={count_pad})\n}}");
        let out = run_single(&source, &Weights::default(), tensor(&[1, 1, 5, 5], &input));
        assert_close(&out, &[1, 1, 3, 3], &expected);
    }

    // A 1x6 row [1..6], kernel (1,3), stride (1,2), pad (0,1), ceil=true:
    // width ceil((6 + 2 - 3)/2) + 1 = 4; last start (4-1)*2 = 6 < 6 + 1, so 4 windows,
    // starting at -1, 1, 3, 5 on the input. The padded input spans -1 ..= 6.
    //   [-1, 2): real {1, 2} = 3, padded size 3    -> true 3/3 = 1,   false 3/2 = 1.5
    //   [ 1, 4): {2, 3, 4} = 9                       -> 9/3 = 3 both
    //   [ 3, 6): {4, 5, 6} = 15                      -> 15/3 = 5 both
    //   [ 5, 8) clipped to the padded end 7: [5, 7), padded size 2, real {6}
    //                                               -> true 6/2 = 3,   false 6/1 = 6
    let row = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let pool = "avg_pool((1, 3), stride=(1, 2), pad=(0, 1), ceil=true";
    let source = format!("network t {{\n input x: [1, 1, 6]\n {pool}, count_pad=true)\n}}");
    let out = run_single(&source, &Weights::default(), tensor(&[1, 1, 1, 6], &row));
    assert_close(&out, &[1, 1, 1, 4], &[1.0, 3.0, 5.0, 3.0]);
    let source = format!("network t {{\n input x: [1, 1, 6]\n {pool})\n}}");
    let out = run_single(&source, &Weights::default(), tensor(&[1, 1, 1, 6], &row));
    assert_close(&out, &[1, 1, 1, 4], &[1.5, 3.0, 5.0, 6.0]);
}

#[test]
fn asymmetric_pool_padding_and_padding_up_to_the_kernel() {
    let negatives: Vec<f32> = (1..=9).map(|v| -(v as f32)).collect(); // -[[1,2,3],[4,5,6],[7,8,9]]
    let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();

    // Kernel 2, stride 2, pad (top 1, left 0, bottom 0, right 1): H (3+1-2)/2+1 = 2, W 2.
    // Rows {-1, 0} -> {0} and {1, 2}; columns {0, 1} and {2, 3} -> {2}.
    // (0,0) max(-1, -2) = -1; (0,1) -3; (1,0) max(-4, -5, -7, -8) = -4; (1,1) max(-6, -9) = -6
    let source = "network t {\n input x: [1, 3, 3]\n max_pool(2, stride=2, pad=(1, 0, 0, 1))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &negatives));
    assert_close(&out, &[1, 1, 2, 2], &[-1.0, -3.0, -4.0, -6.0]);

    // Kernel 3, stride 2, pad 2 = kernel - 1 (ONNX allows it): (3+4-3)/2+1 = 3 windows per
    // dimension, starting at -2, 0, 2: real rows {0}, {0, 1, 2}, {2}, the same columns.
    // Max: (0,0) x00 = -1, (0,1) row 0 = -1, (0,2) x02 = -3, (1,0) column 0 = -1, (1,1) -1,
    // (1,2) column 2 = -3, (2,0) x20 = -7, (2,1) row 2 = -7, (2,2) -9.
    let source = "network t {\n input x: [1, 3, 3]\n max_pool(3, stride=2, pad=2)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &negatives));
    assert_close(&out, &[1, 1, 3, 3], &[-1.0, -1.0, -3.0, -1.0, -1.0, -3.0, -7.0, -7.0, -9.0]);
    // Average of 1..9 over the same windows: sums 1, 6, 3 / 12, 45, 18 / 7, 24, 9 over the
    // real pixels 1, 3, 1 / 3, 9, 3 / 1, 3, 1 = 1..9; with count_pad every window lies in
    // the padded 7x7 input whole, so all divide by 9.
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(3, stride=2, pad=2)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 3, 3], &input);
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(3, stride=2, pad=2, count_pad=true)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    let sums = [1.0, 6.0, 3.0, 12.0, 45.0, 18.0, 7.0, 24.0, 9.0];
    let expected: Vec<f32> = sums.iter().map(|s| s / 9.0).collect();
    assert_close(&out, &[1, 1, 3, 3], &expected);

    // pad=same on a pool, kernel 2, stride 1: total 1, the odd pixel at the bottom/right
    // (pad 0, 0, 1, 1), 3x3 output; window (i, j) covers rows {i, i+1}, columns {j, j+1}.
    // count_pad=false: (1+2+4+5)/4 = 3, (2+3+5+6)/4 = 4, (3+6)/2 = 4.5, 6, 7, (6+9)/2 = 7.5,
    //                  (7+8)/2 = 7.5, (8+9)/2 = 8.5, 9/1 = 9
    // count_pad=true: the padded input is 4x4, every window whole: the sums over 4.
    let graph = compile("network t {\n input x: [1, 3, 3]\n p: avg_pool(2, stride=1, pad=same)\n}");
    let pool = graph.node(node_named(&graph, "p"));
    assert_eq!(pool.op.attributes(), "kernel=2x2 stride=1x1 pad=0,0,1,1");
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(2, stride=1, pad=same)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 3, 3], &[3.0, 4.0, 4.5, 6.0, 7.0, 7.5, 7.5, 8.5, 9.0]);
    let source = "network t {\n input x: [1, 3, 3]\n avg_pool(2, stride=1, pad=same, count_pad=true)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 3, 3], &[3.0, 4.0, 2.25, 6.0, 7.0, 3.75, 3.75, 4.25, 2.25]);
}

#[test]
fn max_pool_dilation_takes_taps_apart() {
    // The row [1, 5, 2, 4, 3], kernel (1, 2), dilation (1, 2): taps j and j + 2.
    // No padding: (5 - 3) + 1 = 3 windows: max(1, 2) = 2, max(5, 4) = 5, max(2, 3) = 3.
    let row = [1.0, 5.0, 2.0, 4.0, 3.0];
    let source = "network t {\n input x: [1, 1, 5]\n max_pool((1, 2), stride=1, dilation=(1, 2))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 3], &[2.0, 5.0, 3.0]);
    // Left and right padding 1: (5 + 2 - 3) + 1 = 5 windows from -1: taps {-1, 1} = 5,
    // {0, 2} = 2, {1, 3} = 5, {2, 4} = 3, {3, 5} = 4 (the padding never wins).
    let source = "network t {\n input x: [1, 1, 5]\n max_pool((1, 2), stride=1, pad=(0, 1, 0, 1), dilation=(1, 2))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 5], &[5.0, 2.0, 5.0, 3.0, 4.0]);
}

#[test]
fn avg_pool_dilation_averages_taps_apart() {
    // The row [1, 5, 2, 4, 3], kernel (1, 2), dilation (1, 2): taps j and j + 2.
    // No padding: 3 windows: (1+2)/2 = 1.5, (5+4)/2 = 4.5, (2+3)/2 = 2.5.
    let row = [1.0, 5.0, 2.0, 4.0, 3.0];
    let source = "network t {\n input x: [1, 1, 5]\n avg_pool((1, 2), stride=1, dilation=(1, 2))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 3], &[1.5, 4.5, 2.5]);
    // Left and right padding 1: 5 windows from -1: taps {-1, 1}, {0, 2}, {1, 3}, {2, 4},
    // {3, 5}. count_pad=false averages the real taps: 5, 1.5, 4.5, 2.5, 4.
    let source = "network t {\n input x: [1, 1, 5]\n avg_pool((1, 2), stride=1, pad=(0, 1, 0, 1), dilation=(1, 2))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 5], &[5.0, 1.5, 4.5, 2.5, 4.0]);
    // count_pad=true: every tap lies in the padded input [-1, 6): all divide by 2.
    let source = "network t {\n input x: [1, 1, 5]\n avg_pool((1, 2), stride=1, pad=(0, 1, 0, 1), count_pad=true, dilation=(1, 2))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 5], &[2.5, 1.5, 4.5, 2.5, 2.0]);
    // ceil=true, kernel 2, dilation 3 (span 4), stride 2, no padding: ceil((5 - 4)/2) + 1
    // = 2 windows, taps {0, 3} and {2, 5}; the second has one real tap (2) and one past
    // the padded input, so even count_pad divides it by 1: (1+4)/2 = 2.5, 2.
    let source = "network t {\n input x: [1, 1, 5]\n avg_pool((1, 2), stride=(1, 2), ceil=true, count_pad=true, dilation=(1, 3))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &row));
    assert_close(&out, &[1, 1, 1, 2], &[2.5, 2.0]);
}

#[test]
fn conv_asymmetric_padding() {
    // A 1x1x3x3 input 1..9, a 2x2 kernel of ones, pad (top 0, left 1, bottom 1, right 0):
    // H (3+1-2)+1 = 3, W 3; output (i, j) sums rows {i, i+1} and columns {j-1, j} of the
    // input, out of range = 0:
    // (0,0) 1+4 = 5, (0,1) 1+2+4+5 = 12, (0,2) 2+3+5+6 = 16,
    // (1,0) 4+7 = 11, (1,1) 4+5+7+8 = 24, (1,2) 5+6+8+9 = 28,
    // (2,0) 7, (2,1) 7+8 = 15, (2,2) 8+9 = 17.
    let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let source = "network t {\n input x: [1, 3, 3]\n c: conv(1, 2, pad=(0, 1, 1, 0), bias=false)\n}";
    let w = weights(&[("c.weight", &[1, 1, 2, 2], &[1.0; 4])]);
    let out = run_single(source, &w, tensor(&[1, 1, 3, 3], &input));
    assert_close(&out, &[1, 1, 3, 3], &[5.0, 12.0, 16.0, 11.0, 24.0, 28.0, 7.0, 15.0, 17.0]);
}

#[test]
fn adaptive_avg_pool_uneven_bins() {
    // 5 -> 3: bin i spans floor(5i/3) .. ceil(5(i+1)/3): [0,2), [1,4), [3,5).
    // Row [1, 2, 4, 8, 16]: (1+2)/2 = 1.5, (2+4+8)/3 = 14/3, (8+16)/2 = 12.
    let source = "network t {\n input x: [1, 1, 5]\n adaptive_avg_pool((1, 3))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 5], &[1.0, 2.0, 4.0, 8.0, 16.0]));
    assert_close(&out, &[1, 1, 1, 3], &[1.5, 14.0 / 3.0, 12.0]);

    // 5x5 -> 3x3 on x[i][j] = 5i + j + 1: the mean of an affine function over a box is its
    // value at the box's mean index; bin mean indices 0.5, 2, 3.5. out[a][b] =
    // 5*m[a] + m[b] + 1: 4, 5.5, 7 / 11.5, 13, 14.5 / 19, 20.5, 22.
    let source = "network t {\n input x: [1, 5, 5]\n adaptive_avg_pool(3)\n}";
    let input: Vec<f32> = (1..=25).map(|v| v as f32).collect();
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 5, 5], &input));
    assert_close(&out, &[1, 1, 3, 3], &[4.0, 5.5, 7.0, 11.5, 13.0, 14.5, 19.0, 20.5, 22.0]);

    // Upsampling 2 -> 3: bins [0,1), [0,2), [1,2): row [2, 6] -> [2, 4, 6].
    let source = "network t {\n input x: [1, 1, 2]\n adaptive_avg_pool((1, 3))\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 2], &[2.0, 6.0]));
    assert_close(&out, &[1, 1, 1, 3], &[2.0, 4.0, 6.0]);
}

#[test]
fn global_pools() {
    // Channel 0 [[1,2],[3,-4]]: mean 2/4 = 0.5, max 3. Channel 1 [[-1,-2],[-3,-4]]:
    // mean -10/4 = -2.5, max -1.
    let input = tensor(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, -4.0, -1.0, -2.0, -3.0, -4.0]);
    let source = "network t {\n input x: [2, 2, 2]\n global_avg_pool\n}";
    let out = run_single(source, &Weights::default(), input.clone());
    assert_close(&out, &[1, 2, 1, 1], &[0.5, -2.5]);
    let source = "network t {\n input x: [2, 2, 2]\n global_max_pool\n}";
    let out = run_single(source, &Weights::default(), input);
    assert_close(&out, &[1, 2, 1, 1], &[3.0, -1.0]);
}

// ---------------------------------------------------------------------------------------
// LRN
// ---------------------------------------------------------------------------------------

#[test]
fn lrn_odd_size() {
    // Channels x = [1, 2, 3, 4] at pixel 0 (zeros at pixel 1); squares [1, 4, 9, 16].
    // size 3: window c-1 ..= c+1 (zero padded), b = a / (k + alpha * sum/size)^beta with
    // alpha = 3, beta = 1, k = 1: b = a / (1 + sum).
    //   c0: 0+1+4 = 5 -> 1/6     c1: 1+4+9 = 14 -> 2/15
    //   c2: 4+9+16 = 29 -> 3/30  c3: 9+16+0 = 25 -> 4/26
    // Pixel 1 is all zeros: 0 / 1 = 0.
    let source = "network t {\n input x: [4, 1, 2]\n lrn(size=3, alpha=3, beta=1, k=1)\n}";
    let input = tensor(&[1, 4, 1, 2], &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    let out = run_single(source, &Weights::default(), input);
    assert_close(&out, &[1, 4, 1, 2], &[1.0 / 6.0, 0.0, 2.0 / 15.0, 0.0, 0.1, 0.0, 4.0 / 26.0, 0.0]);
}

#[test]
fn lrn_even_size() {
    // size 2: PyTorch pads size/2 = 1 channel before and (size-1)/2 = 0 after, so the
    // window of channel c is c-1 ..= c. alpha = 2, beta = 0.5, k = 1:
    // b = a / sqrt(1 + 2 * sum/2) = a / sqrt(1 + sum).
    //   c0: 0+1 = 1 -> 1/sqrt(2)     c1: 1+4 = 5 -> 2/sqrt(6)
    //   c2: 4+9 = 13 -> 3/sqrt(14)   c3: 9+16 = 25 -> 4/sqrt(26)
    // (A centred window c ..= c+1 would have given c0 = 1/sqrt(6).)
    let source = "network t {\n input x: [4, 1, 1]\n lrn(size=2, alpha=2, beta=0.5, k=1)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
    let expected = [1.0 / 2.0f32.sqrt(), 2.0 / 6.0f32.sqrt(), 3.0 / 14.0f32.sqrt(), 4.0 / 26.0f32.sqrt()];
    assert_close(&out, &[1, 4, 1, 1], &expected);
}

// ---------------------------------------------------------------------------------------
// Merges and outputs
// ---------------------------------------------------------------------------------------

#[test]
fn broadcasting_mul_and_add() {
    // x: channel 0 [[1,2],[3,4]], channel 1 [[5,6],[7,8]]; s = global_avg_pool(x) =
    // [2.5, 6.5] as [1, 2, 1, 1].
    // x * s: channel 0 [2.5, 5, 7.5, 10]; channel 1 [32.5, 39, 45.5, 52].
    let input = tensor(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let expected = [2.5, 5.0, 7.5, 10.0, 32.5, 39.0, 45.5, 52.0];
    for merge in ["x |> mul(s)", "mul(s, x)"] {
        let source = format!("network t {{\n input x: [2, 2, 2]\n s = x |> global_avg_pool\n {merge}\n}}");
        let out = run_single(&source, &Weights::default(), input.clone());
        assert_close(&out, &[1, 2, 2, 2], &expected);
    }
    // Three operands: x + s + x = 2x + s: channel 0 [4.5, 6.5, 8.5, 10.5];
    // channel 1 [16.5, 18.5, 20.5, 22.5].
    let source = "network t {\n input x: [2, 2, 2]\n s = x |> global_avg_pool\n add(x, s, x)\n}";
    let out = run_single(source, &Weights::default(), input);
    assert_close(&out, &[1, 2, 2, 2], &[4.5, 6.5, 8.5, 10.5, 16.5, 18.5, 20.5, 22.5]);
}

#[test]
fn concat_keeps_operand_order() {
    // x = [-1, 2] (one channel, 1x2); a = relu(x) = [0, 2]; b = leaky_relu(x, 0.5) =
    // [-0.5, 2]. concat(b, x, a) = channels b, x, a.
    let source = "network t {\n input x: [1, 1, 2]\n a = x |> relu\n b = x |> leaky_relu(0.5)\n concat(b, x, a)\n}";
    let out = run_single(source, &Weights::default(), tensor(&[1, 1, 1, 2], &[-1.0, 2.0]));
    assert_close(&out, &[1, 3, 1, 2], &[-0.5, 2.0, -1.0, 2.0, 0.0, 2.0]);

    // Batch 2 with 2-D operands: each sample's rows are joined in order.
    // x sample 0 = [1, -2], sample 1 = [-3, 4]; relu: [1, 0], [0, 4].
    let source = "network t {\n input x: [2, 1, 1]\n f = x |> flatten\n r = f |> relu\n concat(r, f)\n}";
    let graph = compile_batch(source, 2);
    let out = run(&graph, &Weights::default(), tensor(&[2, 2, 1, 1], &[1.0, -2.0, -3.0, 4.0]));
    assert_close(&out[0], &[2, 4], &[1.0, 0.0, 1.0, -2.0, 0.0, 4.0, -3.0, 4.0]);
}

#[test]
fn multiple_outputs_in_declared_order() {
    let source =
        "network t {\n input x: [1, 1, 2]\n a = x |> relu\n b = x |> tanh\n c = x |> sigmoid\n output c, a, b\n}";
    let graph = compile(source);
    let names: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["c", "a", "b"]);
    // x = [0, -1]: sigmoid [0.5, 1/(1+e)], relu [0, 0], tanh [0, -tanh 1]
    let out = run(&graph, &Weights::default(), tensor(&[1, 1, 1, 2], &[0.0, -1.0]));
    assert_eq!(out.len(), 3);
    assert_close(&out[0], &[1, 1, 1, 2], &[0.5, 1.0 / (1.0 + std::f32::consts::E)]);
    assert_close(&out[1], &[1, 1, 1, 2], &[0.0, 0.0]);
    assert_close(&out[2], &[1, 1, 1, 2], &[0.0, -(1.0f32.tanh())]);
}

#[test]
fn run_traced_observes_every_node_in_topological_order() {
    let source = "network t {\n input x: [1, 1, 2]\n a = x |> relu\n b = x |> tanh\n add(a, b)\n}";
    let graph = compile(source);
    let mut seen = Vec::new();
    let out = interp::run_traced(&graph, &Weights::default(), &[tensor(&[1, 1, 1, 2], &[1.0, -1.0])], &mut |id, t| {
        seen.push((id, t.clone()));
    })
    .expect("runs");
    let order: Vec<NodeId> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(order, graph.topo_order().unwrap());
    for (id, value) in &seen {
        assert_eq!(value.shape, graph.node(*id).shape);
    }
    // The last node is the output: relu [1, 0] + tanh [tanh 1, -tanh 1].
    assert_eq!(seen.last().unwrap().1, out[0]);
    assert_close(&out[0], &[1, 1, 1, 2], &[1.0 + 1.0f32.tanh(), -(1.0f32.tanh())]);
}

// ---------------------------------------------------------------------------------------
// Structural ops: chunk, split, channel_shuffle, permute, layer_norm, linear on 4-D, scale
// ---------------------------------------------------------------------------------------

#[test]
fn chunk_of_an_odd_channel_count_and_split() {
    // Channel c holds 2c and 2c + 1. chunk(3) of 7 channels: parts of ceil(7/3) = 3
    // channels, the last one 1 (torch.chunk): channels 0..3, 3..6 and 6.
    let source = "network t {\n input x: [7, 1, 2]\n a, b, c = chunk(3)\n d, e = x |> split(2, 5)\n \
                  output a, b, c, d, e\n}";
    let graph = compile(source);
    let input = tensor(&[1, 7, 1, 2], &(0..14).map(|v| v as f32).collect::<Vec<_>>());
    let out = run(&graph, &Weights::default(), input);
    assert_close(&out[0], &[1, 3, 1, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_close(&out[1], &[1, 3, 1, 2], &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    assert_close(&out[2], &[1, 1, 1, 2], &[12.0, 13.0]);
    // split(2, 5): channels 0..2 and 2..7.
    assert_close(&out[3], &[1, 2, 1, 2], &[0.0, 1.0, 2.0, 3.0]);
    assert_close(&out[4], &[1, 5, 1, 2], &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0]);
}

#[test]
fn chunk_at_batch_two_takes_each_images_channels() {
    // Image n, channel c holds 10n + c; chunk(2) of 4 channels.
    let source = "network t {\n input x: [4, 1, 1]\n a, b = chunk(2)\n output a, b\n}";
    let graph = compile_batch(source, 2);
    let input = tensor(&[2, 4, 1, 1], &[0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]);
    let out = run(&graph, &Weights::default(), input);
    assert_close(&out[0], &[2, 2, 1, 1], &[0.0, 1.0, 10.0, 11.0]);
    assert_close(&out[1], &[2, 2, 1, 1], &[2.0, 3.0, 12.0, 13.0]);
}

#[test]
fn channel_shuffle_index_mapping() {
    // Output channel i*g + j is input channel j*(C/g) + i. C = 6, g = 2 (C/g = 3):
    // o0 <- 0, o1 <- 3, o2 <- 1, o3 <- 4, o4 <- 2, o5 <- 5.
    // g = 3 (C/g = 2): o0 <- 0, o1 <- 2, o2 <- 4, o3 <- 1, o4 <- 3, o5 <- 5.
    let source = "network t {\n input x: [6, 1, 2]\n a = x |> channel_shuffle(2)\n \
                  b = x |> channel_shuffle(3)\n output a, b\n}";
    let graph = compile(source);
    // Channel c holds 10c and 10c + 1.
    let input: Vec<f32> = (0..6).flat_map(|c| [10.0 * c as f32, 10.0 * c as f32 + 1.0]).collect();
    let out = run(&graph, &Weights::default(), tensor(&[1, 6, 1, 2], &input));
    let expect = |order: [usize; 6]| -> Vec<f32> {
        order.iter().flat_map(|&c| [10.0 * c as f32, 10.0 * c as f32 + 1.0]).collect()
    };
    assert_close(&out[0], &[1, 6, 1, 2], &expect([0, 3, 1, 4, 2, 5]));
    assert_close(&out[1], &[1, 6, 1, 2], &expect([0, 2, 4, 1, 3, 5]));
}

#[test]
fn permute_to_channels_last() {
    // x[0, c, h, w] = 6c + 3h + w; out[0, h, w, c] = x[0, c, h, w], in (h, w, c) order.
    let source = "network t {\n input x: [2, 2, 3]\n permute(0, 2, 3, 1)\n}";
    let out =
        run_single(source, &Weights::default(), tensor(&[1, 2, 2, 3], &(0..12).map(|v| v as f32).collect::<Vec<_>>()));
    assert_close(&out, &[1, 2, 3, 2], &[0.0, 6.0, 1.0, 7.0, 2.0, 8.0, 3.0, 9.0, 4.0, 10.0, 5.0, 11.0]);
}

#[test]
fn layer_norm_over_the_last_dimension() {
    // [1, 2, 3, 4]: mean 2.5, deviations -1.5, -0.5, 0.5, 1.5, biased variance
    // (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; with eps = 0.75, sqrt(1.25 + 0.75) = sqrt(2).
    // Normalized: -1.5/sqrt2 = -1.06066017, -0.5/sqrt2 = -0.35355339, then +0.35355339,
    // +1.06066017; times weight [1, 2, 1, 1] plus bias [0, 0, 0, 0.5].
    let source = "network t {\n input x: [4]\n ln: layer_norm(eps=0.75)\n}";
    let w = weights(&[("ln.weight", &[4], &[1.0, 2.0, 1.0, 1.0]), ("ln.bias", &[4], &[0.0, 0.0, 0.0, 0.5])]);
    let out = run_single(source, &w, tensor(&[1, 4], &[1.0, 2.0, 3.0, 4.0]));
    assert_close(&out, &[1, 4], &[-1.060_660_2, -std::f32::consts::FRAC_1_SQRT_2, 0.353_553_4, 1.560_660_2]);
}

#[test]
fn layer_norm2d_normalizes_each_pixel_over_channels() {
    // Channel 0 = [1, 5], channel 1 = [3, 1]. Pixel 0: [1, 3], mean 2, variance 1, so
    // -+1/sqrt(1 + 1e-5) = -+0.99999500; pixel 1: [5, 1], mean 3, variance 4, so
    // +-2/sqrt(4 + 1e-5) = +-0.99999875. Weight [1, 2], bias [0, 1] per channel.
    let source = "network t {\n input x: [2, 1, 2]\n ln: layer_norm2d\n}";
    let w = weights(&[("ln.weight", &[2], &[1.0, 2.0]), ("ln.bias", &[2], &[0.0, 1.0])]);
    let out = run_single(source, &w, tensor(&[1, 2, 1, 2], &[1.0, 5.0, 3.0, 1.0]));
    assert_close(&out, &[1, 2, 1, 2], &[-0.999995, 0.99999875, 1.0 + 2.0 * 0.999995, 1.0 - 2.0 * 0.99999875]);
}

#[test]
fn linear_on_channels_last_then_scale_named_by_its_path() {
    // Channel 0 = [1, 5], channel 1 = [3, 1]. Channels-last, linear(1) with weight
    // [1, 10] and bias 0.5 per pixel: 1 + 30 + 0.5 = 31.5 and 5 + 10 + 0.5 = 15.5; back
    // to [1, 1, 1, 2], times the layer scale 2: 63 and 31.
    let source = "network t {\n input x: [2, 1, 2]\n permute(0, 2, 3, 1)\n fc: linear(1)\n \
                  permute(0, 3, 1, 2)\n layer_scale: scale\n}";
    let graph = compile(source);
    let names: Vec<&str> = graph.params().into_iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["fc.weight", "fc.bias", "layer_scale"]);
    // The scale is a learnable parameter, counted with the linear's 3.
    assert_eq!(cnnc::summary::summarize(&graph).total_params, 4);
    let w = weights(&[
        ("fc.weight", &[1, 2], &[1.0, 10.0]),
        ("fc.bias", &[1], &[0.5]),
        ("layer_scale", &[1, 1, 1], &[2.0]),
    ]);
    let out = run(&graph, &w, tensor(&[1, 2, 1, 2], &[1.0, 5.0, 3.0, 1.0]));
    assert_close(&out[0], &[1, 1, 1, 2], &[63.0, 31.0]);
}

#[test]
fn quoted_and_keyword_labels_name_layers() {
    let source = "block b() {\n block: seq { conv(2, 1) }\n}\nnetwork t {\n input x: [2, 4, 4]\n \
                  trunk: seq { \"block1-0\": b() }\n}";
    let graph = compile(source);
    let names: Vec<&str> = graph.params().into_iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["trunk.block1-0.block.0.weight", "trunk.block1-0.block.0.bias"]);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn errors_are_returned_not_panicked() {
    let source = "network t {\n input x: [1, 5, 5]\n c: conv(1, 3)\n}";
    let graph = compile(source);
    let good = weights(&[("c.weight", &[1, 1, 3, 3], &[1.0; 9]), ("c.bias", &[1], &[0.0])]);
    let input = Tensor::zeros(vec![1, 1, 5, 5]);
    assert!(interp::run(&graph, &good, std::slice::from_ref(&input)).is_ok());

    // Wrong input shape: the message names both shapes.
    let Err(InterpError(message)) = interp::run(&graph, &good, &[Tensor::zeros(vec![1, 1, 4, 4])]) else {
        panic!("a wrong input shape must fail");
    };
    assert!(message.contains("[1, 1, 5, 5]") && message.contains("[1, 1, 4, 4]"), "{message}");

    // Wrong number of inputs.
    assert!(interp::run(&graph, &good, &[]).is_err());
    assert!(interp::run(&graph, &good, &[input.clone(), input.clone()]).is_err());

    // An input whose data does not match its shape.
    let broken = Tensor { shape: vec![1, 1, 5, 5], data: vec![0.0; 3] };
    assert!(interp::run(&graph, &good, &[broken]).is_err());

    // Missing weight: the message names it.
    let missing = weights(&[("c.weight", &[1, 1, 3, 3], &[1.0; 9])]);
    let err = interp::run(&graph, &missing, std::slice::from_ref(&input)).unwrap_err();
    assert!(err.to_string().contains("c.bias"), "{err}");

    // Mis-shaped weight.
    let misshaped = weights(&[("c.weight", &[1, 1, 2, 2], &[1.0; 4]), ("c.bias", &[1], &[0.0])]);
    let err = interp::run(&graph, &misshaped, std::slice::from_ref(&input)).unwrap_err();
    assert!(err.to_string().contains("c.weight") && err.to_string().contains("[1, 1, 3, 3]"), "{err}");

    // A weight whose data is shorter than its shape says.
    let mut short = good.clone();
    short.insert("c.weight", Tensor { shape: vec![1, 1, 3, 3], data: vec![1.0; 2] });
    assert!(interp::run(&graph, &short, std::slice::from_ref(&input)).is_err());

    // A graph whose stored shape disagrees with its operands is refused, not indexed.
    let mut tampered = graph.clone();
    let conv = node_named(&tampered, "c");
    tampered.node_mut(conv).shape = vec![1, 1, 9, 9];
    assert!(interp::run(&tampered, &good, &[input]).is_err());
}

// ---------------------------------------------------------------------------------------
// Random convolutions against a naive implementation
// ---------------------------------------------------------------------------------------

/// A small deterministic generator (Knuth's MMIX LCG); `next` gives uniform [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The convolution straight from its definition, one output value at a time.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &Tensor,
    w: &Tensor,
    b: &[f32],
    stride: (usize, usize),
    pad_top_left: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    out_hw: (usize, usize),
) -> Vec<f32> {
    let (n_batch, in_c, in_h, in_w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (out_c, c_per_group, k_h, k_w) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let mut out = Vec::new();
    for n in 0..n_batch {
        for (o, bias) in b.iter().enumerate() {
            let group = o / (out_c / groups);
            for oh in 0..out_hw.0 {
                for ow in 0..out_hw.1 {
                    let mut sum = *bias as f64;
                    for c in 0..c_per_group {
                        for kh in 0..k_h {
                            for kw in 0..k_w {
                                let ih = (oh * stride.0 + kh * dilation.0) as i64 - pad_top_left.0 as i64;
                                let iw = (ow * stride.1 + kw * dilation.1) as i64 - pad_top_left.1 as i64;
                                if ih < 0 || iw < 0 || ih >= in_h as i64 || iw >= in_w as i64 {
                                    continue;
                                }
                                let ci = group * c_per_group + c;
                                let xv = x.data[((n * in_c + ci) * in_h + ih as usize) * in_w + iw as usize];
                                let wv = w.data[((o * c_per_group + c) * k_h + kh) * k_w + kw];
                                sum += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out.push(sum as f32);
                }
            }
        }
    }
    out
}

#[test]
fn random_convolutions_match_the_naive_definition() {
    // (channels, height, width, conv arguments)
    let cases = [
        (3, 7, 9, "conv(4, 3)"),
        (4, 8, 8, "conv(6, (3, 2), stride=(2, 1), pad=(1, 2))"),
        (6, 9, 7, "conv(4, 3, stride=2, pad=same, groups=2)"),
        (4, 10, 11, "conv(8, 3, dilation=(2, 3), pad=2, groups=4)"),
        (2, 6, 6, "conv(3, 5, stride=3, pad=same)"),
        (3, 5, 5, "conv(2, 1, stride=2)"),
        (2, 4, 12, "conv(2, (1, 4), stride=(1, 3), pad=(0, 3))"),
    ];
    let mut rng = Lcg(12345);
    for (c, h, w, conv) in cases {
        let source = format!("network t {{\n input x: [{c}, {h}, {w}]\n k: {conv}\n}}");
        let graph = compile_batch(&source, 2);
        let node = graph.node(node_named(&graph, "k"));
        let Op::Conv(attrs) = &node.op else { panic!("not a conv") };
        let weight_shape = node.params[0].shape.clone();
        let weight = Tensor::new(weight_shape.clone(), rng.fill(weight_shape.iter().product(), 1.0)).unwrap();
        let bias = rng.fill(attrs.out_channels, 1.0);
        let input = Tensor::new(vec![2, c, h, w], rng.fill(2 * c * h * w, 1.0)).unwrap();
        let mut ws = Weights::default();
        ws.insert("k.weight", weight.clone());
        ws.insert("k.bias", Tensor::new(vec![attrs.out_channels], bias.clone()).unwrap());
        let out = run(&graph, &ws, input.clone());
        let expected = naive_conv(
            &input,
            &weight,
            &bias,
            (attrs.stride.h, attrs.stride.w),
            (attrs.pad.top, attrs.pad.left),
            (attrs.dilation.h, attrs.dilation.w),
            attrs.groups,
            (node.shape[2], node.shape[3]),
        );
        assert_eq!(out[0].data.len(), expected.len(), "{conv}");
        for (a, e) in out[0].data.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{conv}: {a} vs {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// VGG-16
// ---------------------------------------------------------------------------------------

/// He-style random weights for every parameter of the graph: weights uniform in
/// +-sqrt(6 / fan_in) (variance 2 / fan_in), biases uniform in +-0.01, batch-norm
/// statistics neutral.
fn random_weights(graph: &Graph, seed: u64) -> Weights {
    let mut rng = Lcg(seed);
    let mut w = Weights::default();
    for param in graph.params() {
        let n: usize = param.shape.iter().product();
        let data = match param.role {
            ParamRole::Weight if param.shape.len() > 1 => {
                let fan_in: usize = param.shape[1..].iter().product();
                rng.fill(n, (6.0 / fan_in as f32).sqrt())
            }
            ParamRole::Weight | ParamRole::RunningVar | ParamRole::Scale | ParamRole::Parameter => vec![1.0; n],
            ParamRole::Bias => rng.fill(n, 0.01),
            ParamRole::RunningMean | ParamRole::Shift => vec![0.0; n],
        };
        w.insert(param.name.clone(), Tensor::new(param.shape.clone(), data).unwrap());
    }
    w
}

#[test]
fn vgg16_batch_1_on_random_weights() {
    let path = format!("{}/examples/vgg16.cnn", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).expect("examples/vgg16.cnn");
    let graph = compile(&source);
    let w = random_weights(&graph, 7);
    let mut rng = Lcg(99);
    let input = Tensor::new(vec![1, 3, 224, 224], rng.fill(3 * 224 * 224, 1.0)).unwrap();

    // Keep the first convolution's output to spot-check it against its definition.
    let first_conv = node_named(&graph, "features.0");
    let mut first_conv_out = None;
    let start = std::time::Instant::now();
    let out = interp::run_traced(&graph, &w, std::slice::from_ref(&input), &mut |id, t| {
        if id == first_conv {
            first_conv_out = Some(t.clone());
        }
    })
    .expect("VGG-16 runs");
    let elapsed = start.elapsed();
    eprintln!("VGG-16 batch 1 in the reference interpreter: {:.2} s", elapsed.as_secs_f64());

    assert_eq!(out.len(), 1);
    assert_eq!(out[0].shape, [1, 1000]);
    assert!(out[0].data.iter().all(|v| v.is_finite()));
    let mean = out[0].data.iter().map(|v| *v as f64).sum::<f64>() / 1000.0;
    let spread = out[0].data.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
    assert!(spread > 1e-8, "the logits should differ from each other (variance {spread})");

    // features.0: conv(64, 3, pad=1) on [1, 3, 224, 224]; check corners and the middle.
    let conv_out = first_conv_out.expect("observed features.0");
    let weight = w.get("features.0.weight").unwrap();
    let bias = w.get("features.0.bias").unwrap();
    for (o, oh, ow) in [(0, 0, 0), (5, 0, 223), (63, 223, 0), (17, 223, 223), (40, 100, 57)] {
        let mut sum = bias.data[o] as f64;
        for c in 0..3 {
            for kh in 0..3 {
                for kw in 0..3 {
                    let (ih, iw) = (oh as i64 + kh as i64 - 1, ow as i64 + kw as i64 - 1);
                    if (0..224).contains(&ih) && (0..224).contains(&iw) {
                        let xv = input.data[(c * 224 + ih as usize) * 224 + iw as usize] as f64;
                        sum += xv * weight.data[((o * 3 + c) * 3 + kh) * 3 + kw] as f64;
                    }
                }
            }
        }
        let got = conv_out.data[(o * 224 + oh) * 224 + ow];
        assert!((got as f64 - sum).abs() <= 1e-5 * sum.abs().max(1.0), "features.0 [{o}, {oh}, {ow}]: {got} vs {sum}");
    }
}
