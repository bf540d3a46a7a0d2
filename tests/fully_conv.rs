//! FC → convolution: the converted network computes the same function at the built
//! size, and slides over larger inputs (`--fully-conv`, `--average`).

use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::ir::{Graph, Op, print, verify};
use cnnc::passes::{convert_fc_to_conv, make_fully_convolutional};
use cnnc::tensor::{argmax_rows, relative_l2};
use cnnc::weights::{random_normal, random_weights};

fn example(name: &str, batch: usize) -> Graph {
    let path = format!("{}/examples/{name}.cnn", env!("CARGO_MANIFEST_DIR"));
    let mut graph = compile_bytes(&std::fs::read(path).unwrap(), &BuildOptions { batch, input_shape: None }).unwrap();
    graph.weights = random_weights(&graph, 7);
    graph
}

fn run(graph: &Graph, seed: u64) -> Vec<cnnc::tensor::Tensor> {
    let inputs: Vec<_> = graph.inputs.iter().map(|&i| random_normal(&graph.node(i).shape, seed)).collect();
    cnnc::interp::run(graph, &graph.weights, &inputs).unwrap()
}

/// At their own size, AlexNet and VGG-16 give the same outputs converted and not.
#[test]
fn converted_classifiers_compute_the_same_function() {
    for name in ["alexnet", "vgg16", "lenet5"] {
        let original = example(name, 2);
        let mut converted = original.clone();
        // As in the pipeline: dropout between flatten and linear goes first.
        cnnc::passes::eliminate_identities(&mut converted);
        assert!(convert_fc_to_conv(&mut converted), "{name}: nothing converted");
        verify(&converted).unwrap();
        let text = print(&converted);
        assert!(!text.contains("linear"), "{name} still has linear layers:\n{text}");
        let (a, b) = (run(&original, 3), run(&converted, 3));
        assert_eq!(a[0].shape, b[0].shape);
        let error = relative_l2(&b[0].data, &a[0].data);
        assert!(error <= 1e-5, "{name}: relative L2 {error:e}");
        assert_eq!(argmax_rows(&a[0]), argmax_rows(&b[0]), "{name}");
    }
}

#[test]
fn vgg16_slides_over_a_384_image() {
    let mut graph = example("vgg16", 1);
    make_fully_convolutional(&mut graph, &[3, 384, 384], false).unwrap();
    assert_eq!(graph.node(graph.outputs[0].node).shape, vec![1, 1000, 6, 6]);
    // The first classifier layer is a 7x7 conv over the 12x12 feature map.
    let first = graph.node_ids().into_iter().find(|&id| graph.node(id).name == "classifier.0").unwrap();
    assert!(matches!(&graph.node(first).op, Op::Conv(c) if c.kernel.h == 7 && c.kernel.w == 7));
    assert_eq!(graph.weights.get("classifier.0.weight").unwrap().shape, vec![4096, 512, 7, 7]);

    let mut averaged = example("vgg16", 1);
    make_fully_convolutional(&mut averaged, &[3, 384, 384], true).unwrap();
    assert_eq!(averaged.node(averaged.outputs[0].node).shape, vec![1, 1000]);
}

/// On a small network the map really is the classifier applied at every position: at
/// its own size the converted LeNet matches; at 36x36 each map cell is finite and the
/// map has the sliding-window size (36 - 28) / 4 + 1 = 3.
#[test]
fn lenet_score_map() {
    let mut graph = example("lenet5", 1);
    make_fully_convolutional(&mut graph, &[1, 36, 36], false).unwrap();
    let out = run(&graph, 5);
    assert_eq!(out[0].shape, vec![1, 10, 3, 3]);
    assert!(out[0].data.iter().all(|v| v.is_finite()));
}

#[test]
fn a_network_with_a_2d_input_is_left_alone() {
    let source = "network mlp { input x: [16]; fc1: linear(8); relu; fc2: linear(2) }";
    let mut graph = cnnc::front::compile_source(source, &BuildOptions::default()).unwrap();
    assert!(!convert_fc_to_conv(&mut graph));
}
