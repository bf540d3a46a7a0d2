//! Published figures: learnable parameter totals, MACs, and VGG-16's per-layer sizes.

use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::summary::{Summary, summarize};

fn summary_of(relative: &str) -> Summary {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let graph = compile_bytes(&bytes, &BuildOptions::default()).unwrap_or_else(|_| panic!("{path} compiles"));
    summarize(&graph)
}

#[test]
fn learnable_parameter_totals_match_the_published_ones() {
    for (file, total) in [
        ("examples/vgg16.cnn", 138_357_544),
        ("examples/resnet18.cnn", 11_689_512),
        ("examples/resnet18_cifar.cnn", 11_173_962),
        ("examples/resnet34.cnn", 21_797_672),
        ("examples/resnet50.cnn", 25_557_032),
        ("examples/alexnet.cnn", 61_100_840),
        ("examples/squeezenet1_1.cnn", 1_235_496),
        ("examples/allcnn_c.cnn", 1_369_738),
        ("examples/densenet121.cnn", 7_978_856),
        // torchvision's efficient and later networks (issue 15), totals as torchvision counts them.
        ("examples/googlenet.cnn", 6_624_904),
        ("examples/resnext50_32x4d.cnn", 25_028_904),
        ("examples/mnasnet1_0.cnn", 4_383_312),
        ("examples/mobilenet_v2.cnn", 3_504_872),
        ("examples/mobilenet_v3_small.cnn", 2_542_856),
        ("examples/mobilenet_v3_large.cnn", 5_483_032),
        ("examples/efficientnet_b0.cnn", 5_288_548),
        ("examples/shufflenet_v2_x1_0.cnn", 2_278_604),
        ("examples/regnet_y_400mf.cnn", 4_344_144),
        ("examples/convnext_tiny.cnn", 28_589_128),
    ] {
        assert_eq!(summary_of(file).total_params, total, "{file}");
    }
}

#[test]
fn inception_module_macs() {
    // 28x28x256 input. Naive: 1x1 128, 3x3 192, 5x5 96 (+ a 3x3 max pool, no MACs).
    assert_eq!(summary_of("tests/programs/inception_naive_256.cnn").total_macs, 854_196_224);
    // With 64-channel 1x1 bottlenecks; the lecture slide's "358M" is a slip: its six
    // terms sum to 271M.
    assert_eq!(summary_of("tests/programs/inception_bottleneck_256.cnn").total_macs, 271_351_808);
}

#[test]
fn vgg16_layer_sizes_and_macs() {
    let summary = summary_of("examples/vgg16.cnn");
    let convs: Vec<&Vec<usize>> = summary.layers.iter().filter(|l| l.op == "conv").map(|l| &l.shape).collect();
    let expected_channels_size = [
        (64, 224),
        (64, 224),
        (128, 112),
        (128, 112),
        (256, 56),
        (256, 56),
        (256, 56),
        (512, 28),
        (512, 28),
        (512, 28),
        (512, 14),
        (512, 14),
        (512, 14),
    ];
    assert_eq!(convs.len(), 13);
    for (shape, (c, s)) in convs.iter().zip(expected_channels_size) {
        assert_eq!(**shape, vec![1, c, s, s]);
    }
    // The lecture table's first row: 224x224x64 = 3.2M values.
    assert_eq!(convs[0].iter().product::<usize>(), 3_211_264);
    let last_pool = summary.layers.iter().rfind(|l| l.op == "max_pool").unwrap();
    assert_eq!(last_pool.shape, vec![1, 512, 7, 7]);
    // About 15.5 GMACs.
    assert_eq!(summary.total_macs, 15_470_264_320);
}

/// A conv that pools in its epilogue (the GPU pipeline) still does its unpooled work.
#[test]
fn fused_pooling_keeps_the_multiply_adds() {
    use cnnc::passes::{Capabilities, OptLevel, optimize_for};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vgg16.cnn");
    let source = std::fs::read(path).unwrap();
    let graph = cnnc::front::compile_bytes(&source, &cnnc::front::BuildOptions::default()).unwrap();
    let total = |capabilities| {
        let mut graph = graph.clone();
        optimize_for(&mut graph, OptLevel::O2, capabilities).unwrap();
        graph.node_ids().into_iter().map(|id| cnnc::summary::macs(&graph, id)).sum::<u64>()
    };
    assert_eq!(total(Capabilities::GPU), total(Capabilities::GENERIC));
    assert_eq!(total(Capabilities::GENERIC), summary_of("examples/vgg16.cnn").total_macs);
}
