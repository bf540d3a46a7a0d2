//! The passes: small before/after cases through one `check_pass` helper, idempotence on
//! every example, and the optimized IR of every example as snapshots.

use cnnc::front::{BuildOptions, compile_bytes, compile_source};
use cnnc::ir::{Graph, print, verify};
use cnnc::passes::{self, ALL_PASSES, Capabilities, OptLevel};

fn compile(source: &str) -> Graph {
    compile_source(source, &BuildOptions::default()).unwrap_or_else(|d| panic!("{d:?}"))
}

/// Runs `pass` on the program and compares the IR text after it with `expected`
/// (leading whitespace of each line ignored); a second run must report no change.
fn check_pass(pass: fn(&mut Graph) -> bool, source: &str, expected: &str) {
    let mut graph = compile(source);
    let before = print(&graph);
    let changed = pass(&mut graph);
    verify(&graph).unwrap();
    let after = print(&graph);
    let normalize = |s: &str| s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
    assert_eq!(normalize(&after), normalize(expected), "before:\n{before}");
    assert_eq!(changed, before != after, "the pass's change report disagrees with the IR");
    assert!(!pass(&mut graph), "second run changed the IR again:\n{}", print(&graph));
}

#[test]
fn identities_go_away() {
    check_pass(
        passes::eliminate_identities,
        "network n { input x: [3, 8, 8]; conv(4, 3); dropout2d; relu; adaptive_avg_pool(6); flatten; dropout(0.2); linear(2) }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=0x0 : [1, 4, 6, 6]  # conv_0 {conv_0.weight, conv_0.bias}
        %2 = relu(%1) : [1, 4, 6, 6]  # relu_0
        %3 = flatten(%2) : [1, 144]  # flatten_0
        %4 = linear(%3) out=2 : [1, 2]  # linear_0 {linear_0.weight, linear_0.bias}
        output output = %4",
    );
}

#[test]
fn an_adaptive_pool_that_averages_stays() {
    check_pass(
        passes::eliminate_identities,
        "network n { input x: [3, 8, 8]; adaptive_avg_pool(4) }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = adaptive_avg_pool(%0) out=4x4 : [1, 3, 4, 4]  # adaptive_avg_pool_0
        output output = %1",
    );
}

#[test]
fn identity_that_is_an_output_keeps_the_output_name() {
    check_pass(
        passes::eliminate_identities,
        "network n { input x: [3, 8, 8]; y: relu; z: dropout; output z }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = relu(%0) : [1, 3, 8, 8]  # y
        output z = %1",
    );
}

#[test]
fn batchnorm_folds_into_conv_and_linear() {
    check_pass(
        passes::fold_batchnorm,
        "network n { input x: [3, 8, 8]; c: conv(4, 3, bias=false); bn: batch_norm; relu; flatten; fc: linear(5); bn1d: batch_norm }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=0x0 : [1, 4, 6, 6]  # c {c.weight, c.bias}
        %2 = relu(%1) : [1, 4, 6, 6]  # relu_0
        %3 = flatten(%2) : [1, 144]  # flatten_0
        %4 = linear(%3) out=5 : [1, 5]  # fc {fc.weight, fc.bias}
        output output = %4",
    );
}

#[test]
fn batchnorm_becomes_scale_shift_when_it_cannot_fold() {
    check_pass(
        passes::fold_batchnorm,
        "network n { input x: [3, 8, 8]; c: conv(4, 3); bn: batch_norm; add(c) }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=0x0 : [1, 4, 6, 6]  # c {c.weight, c.bias}
        %2 = scale_shift(%1) : [1, 4, 6, 6]  # bn {bn.scale, bn.shift}
        %3 = add(%2, %1) : [1, 4, 6, 6]  # add_0
        output output = %3",
    );
    check_pass(
        passes::fold_batchnorm,
        "network n { input x: [3, 8, 8]; relu; bn: batch_norm }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = relu(%0) : [1, 3, 8, 8]  # relu_0
        %2 = scale_shift(%1) : [1, 3, 8, 8]  # bn {bn.scale, bn.shift}
        output output = %2",
    );
}

#[test]
fn activations_and_residual_adds_fuse_into_the_conv() {
    check_pass(
        passes::fuse_epilogues,
        "network n { input x: [4, 8, 8]; a: conv(4, 3, pad=1); relu; b: conv(4, 3, pad=1); add(x); relu }",
        "network n
        %0 = input x : [1, 4, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=1x1 -> relu : [1, 4, 8, 8]  # a {a.weight, a.bias}
        %2 = conv(%1) out=4 kernel=3x3 stride=1x1 pad=1x1 -> add %0 -> relu : [1, 4, 8, 8]  # b {b.weight, b.bias}
        output output = %2",
    );
}

#[test]
fn fusion_stops_at_values_used_twice_and_at_broadcasting_adds() {
    check_pass(
        passes::fuse_epilogues,
        "network n { input x: [4, 8, 8]; a: conv(4, 1); r = a |> relu; s = add(a, r)
                     g = x |> global_avg_pool; b = x |> conv(4, 1) |> add(g); output s, b }",
        "network n
        %0 = input x : [1, 4, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # a {a.weight, a.bias}
        %2 = relu(%1) : [1, 4, 8, 8]  # relu_0
        %3 = add(%1, %2) : [1, 4, 8, 8]  # add_0
        %4 = global_avg_pool(%0) : [1, 4, 1, 1]  # global_avg_pool_0
        %5 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # conv_0 {conv_0.weight, conv_0.bias}
        %6 = add(%5, %4) : [1, 4, 8, 8]  # add_1
        output s = %3
        output b = %6",
    );
}

/// The GPU pipeline's fusions in its order: the elementwise ones, then pooling.
fn fuse_epilogues_then_pooling(graph: &mut Graph) -> bool {
    let fused = passes::fuse_epilogues(graph);
    passes::fuse_pooling(graph) | fused
}

#[test]
fn a_pool_after_a_conv_and_its_relu_fuses_into_the_conv() {
    check_pass(
        fuse_epilogues_then_pooling,
        "network n { input x: [3, 8, 8]; c: conv(4, 3, pad=1); relu; max_pool(2) }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=1x1 -> relu -> max_pool kernel=2x2 stride=2x2 pad=0x0 : [1, 4, 4, 4]  # c {c.weight, c.bias}
        output output = %1",
    );
}

#[test]
fn an_average_pool_fuses_after_a_residual_add() {
    // The residual keeps the conv's own 7x7 shape; the node takes the pooled 4x4.
    check_pass(
        fuse_epilogues_then_pooling,
        "network n { input x: [4, 7, 7]; b: conv(4, 3, pad=1); add(x); relu; avg_pool(2, pad=1, ceil=true, count_pad=true) }",
        "network n
        %0 = input x : [1, 4, 7, 7]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=1x1 -> add %0 -> relu -> avg_pool kernel=2x2 stride=2x2 pad=1x1 ceil=true count_pad=true : [1, 4, 4, 4]  # b {b.weight, b.bias}
        output output = %1",
    );
}

#[test]
fn pooling_stays_apart_from_shared_and_output_values_and_unless_windowed_and_disjoint() {
    check_pass(
        passes::fuse_pooling,
        "network n { input x: [4, 8, 8]
            a: conv(4, 1); p = a |> max_pool(2); q = a |> relu
            b: conv(4, 1); r = b |> max_pool(2)
            g = x |> conv(4, 1) |> global_max_pool
            h = x |> conv(4, 1) |> adaptive_avg_pool(2)
            o = x |> conv(4, 1) |> max_pool(3, stride=2)
            s = x |> max_pool(2)
            output p, q, b, r, g, h, o, s }",
        "network n
        %0 = input x : [1, 4, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # a {a.weight, a.bias}
        %2 = max_pool(%1) kernel=2x2 stride=2x2 pad=0x0 : [1, 4, 4, 4]  # max_pool_0
        %3 = relu(%1) : [1, 4, 8, 8]  # relu_0
        %4 = conv(%3) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # b {b.weight, b.bias}
        %5 = max_pool(%4) kernel=2x2 stride=2x2 pad=0x0 : [1, 4, 4, 4]  # max_pool_1
        %6 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # conv_0 {conv_0.weight, conv_0.bias}
        %7 = global_max_pool(%6) : [1, 4, 1, 1]  # global_max_pool_0
        %8 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # conv_1 {conv_1.weight, conv_1.bias}
        %9 = adaptive_avg_pool(%8) out=2x2 : [1, 4, 2, 2]  # adaptive_avg_pool_0
        %10 = conv(%0) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 8, 8]  # conv_2 {conv_2.weight, conv_2.bias}
        %11 = max_pool(%10) kernel=3x3 stride=2x2 pad=0x0 : [1, 4, 3, 3]  # max_pool_2
        %12 = max_pool(%0) kernel=2x2 stride=2x2 pad=0x0 : [1, 4, 4, 4]  # max_pool_3
        output p = %2
        output q = %3
        output b = %4
        output r = %5
        output g = %7
        output h = %9
        output o = %11
        output s = %12",
    );
}

#[test]
fn nothing_fuses_after_a_pool_in_the_epilogue() {
    // Once the pool is in the conv's epilogue, the relu after it cannot join (the
    // epilogue's activations run before the pooling), nor can a BatchNorm fold.
    check_pass(
        fuse_epilogues_then_pooling,
        "network n { input x: [3, 8, 8]; c: conv(4, 3, pad=1); avg_pool(2); relu }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = conv(%0) out=4 kernel=3x3 stride=1x1 pad=1x1 -> avg_pool kernel=2x2 stride=2x2 pad=0x0 : [1, 4, 4, 4]  # c {c.weight, c.bias}
        %2 = relu(%1) : [1, 4, 4, 4]  # relu_0
        output output = %2",
    );
    let mut graph = compile("network n { input x: [3, 8, 8]; c: conv(4, 3, pad=1); max_pool(2); bn: batch_norm }");
    assert!(passes::fuse_pooling(&mut graph));
    passes::fold_batchnorm(&mut graph);
    verify(&graph).unwrap();
    assert!(print(&graph).contains("= scale_shift("), "{}", print(&graph));
}

#[test]
fn verify_checks_the_pooled_shape_and_the_residual_shape() {
    let mut graph = compile("network n { input x: [4, 8, 8]; c: conv(4, 3, pad=1); add(x); max_pool(2) }");
    passes::optimize_for(&mut graph, OptLevel::O2, Capabilities::GPU).unwrap();
    let conv = graph.node_ids().into_iter().find(|&id| graph.node(id).name == "c").unwrap();
    assert!(graph.node(conv).epilogue.pool.is_some(), "{}", print(&graph));
    let mut unpooled = graph.clone();
    unpooled.node_mut(conv).shape = vec![1, 4, 8, 8];
    let error = verify(&unpooled).unwrap_err();
    assert!(error.contains("c: shape [1, 4, 8, 8] but its operands give [1, 4, 4, 4]"), "{error}");
    let mut on_a_pool = compile("network n { input x: [4, 8, 8]; p: max_pool(2) }");
    let pool = on_a_pool.node_ids().into_iter().find(|&id| on_a_pool.node(id).name == "p").unwrap();
    on_a_pool.node_mut(pool).epilogue.pool = graph.node(conv).epilogue.pool.clone();
    on_a_pool.node_mut(pool).shape = vec![1, 4, 2, 2];
    let error = verify(&on_a_pool).unwrap_err();
    assert!(error.contains("only convs take one"), "{error}");
}

#[test]
fn vgg16_fuses_its_five_pools_on_the_gpu_pipeline_only() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vgg16.cnn");
    let source = std::fs::read(path).unwrap();
    let mut generic = compile_bytes(&source, &BuildOptions::default()).unwrap();
    passes::optimize(&mut generic, OptLevel::O2).unwrap();
    let text = print(&generic);
    assert_eq!(text.matches("= max_pool(").count(), 5, "{text}");
    assert!(!text.contains("-> max_pool"), "{text}");
    let mut gpu = compile_bytes(&source, &BuildOptions::default()).unwrap();
    passes::optimize_for(&mut gpu, OptLevel::O2, Capabilities::GPU).unwrap();
    let text = print(&gpu);
    assert_eq!(text.matches("-> relu -> max_pool kernel=2x2 stride=2x2").count(), 5, "{text}");
    assert!(!text.contains("= max_pool("), "{text}");
    assert_eq!(gpu.node_count() + 5, generic.node_count());
}

#[test]
fn dead_branches_go_away() {
    check_pass(
        passes::eliminate_dead_nodes,
        "network n { input x: [3, 8, 8]; a = x |> conv(4, 1); b = x |> relu; output b }",
        "network n
        %0 = input x : [1, 3, 8, 8]  # x
        %1 = relu(%0) : [1, 3, 8, 8]  # relu_0
        output b = %1",
    );
}

fn examples() -> Vec<std::path::PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_pass_is_idempotent_on_every_example() {
    for path in examples() {
        for capabilities in [Capabilities::GENERIC, Capabilities::CPU, Capabilities::GPU] {
            let mut graph = compile_bytes(&std::fs::read(&path).unwrap(), &BuildOptions::default()).unwrap();
            passes::optimize_for(&mut graph, OptLevel::O2, capabilities).unwrap();
            for pass in ALL_PASSES {
                // Passes outside the pipeline (convert_fc_to_conv, and fuse_pooling or
                // fuse_gates where the pipeline leaves them out) get their first run here.
                (pass.run)(&mut graph);
                verify(&graph).unwrap();
                assert!(!(pass.run)(&mut graph), "{} changed {} on a second run", pass.name, path.display());
            }
        }
    }
}

#[test]
fn resnet18_at_o2_has_no_batchnorm_no_dropout_and_fused_residual_adds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resnet18.cnn");
    let mut graph = compile_bytes(&std::fs::read(path).unwrap(), &BuildOptions::default()).unwrap();
    passes::optimize(&mut graph, OptLevel::O2).unwrap();
    let text = print(&graph);
    assert!(!text.contains("batch_norm") && !text.contains("dropout"), "{text}");
    // Every residual add ran inside the conv before it (8 basic blocks).
    assert!(!text.contains("= add("), "{text}");
    assert_eq!(text.matches("-> add %").count(), 8, "{text}");
}

#[test]
fn examples_ir_after_o2() {
    insta::glob!("../examples", "*.cnn", |path| {
        let mut graph = compile_bytes(&std::fs::read(path).unwrap(), &BuildOptions::default()).unwrap();
        passes::optimize(&mut graph, OptLevel::O2).unwrap();
        insta::assert_snapshot!(print(&graph));
    });
}

#[test]
fn a_gate_fuses_into_the_one_by_one_conv_that_reads_it() {
    // `p` reads x * g and has fewer outputs (6) than x has pixels (16): fused. `q` has
    // 16 outputs, `r` is 3x3, and `s` shares its mul with a relu: they stay.
    check_pass(
        passes::fuse_gates,
        "network n { input x: [8, 4, 4]; g = x |> global_avg_pool |> conv(8, 1) |> sigmoid; \
         y = mul(x, g) |> p: conv(6, 1); a = mul(g, x) |> q: conv(16, 1); b = mul(g, x) |> r: conv(4, 3, pad=1); \
         m = mul(g, x); c = m |> s: conv(4, 1); d = m |> relu; output y, a, b, c, d }",
        "network n
        %0 = input x : [1, 8, 4, 4]  # x
        %1 = global_avg_pool(%0) : [1, 8, 1, 1]  # global_avg_pool_0
        %2 = conv(%1) out=8 kernel=1x1 stride=1x1 pad=0x0 : [1, 8, 1, 1]  # conv_0 {conv_0.weight, conv_0.bias}
        %3 = sigmoid(%2) : [1, 8, 1, 1]  # sigmoid_0
        %4 = conv(%0 * %3) out=6 kernel=1x1 stride=1x1 pad=0x0 : [1, 6, 4, 4]  # p {p.weight, p.bias}
        %5 = mul(%3, %0) : [1, 8, 4, 4]  # mul_1
        %6 = conv(%5) out=16 kernel=1x1 stride=1x1 pad=0x0 : [1, 16, 4, 4]  # q {q.weight, q.bias}
        %7 = mul(%3, %0) : [1, 8, 4, 4]  # mul_2
        %8 = conv(%7) out=4 kernel=3x3 stride=1x1 pad=1x1 : [1, 4, 4, 4]  # r {r.weight, r.bias}
        %9 = mul(%3, %0) : [1, 8, 4, 4]  # mul_3
        %10 = conv(%9) out=4 kernel=1x1 stride=1x1 pad=0x0 : [1, 4, 4, 4]  # s {s.weight, s.bias}
        %11 = relu(%9) : [1, 8, 4, 4]  # relu_0
        output y = %4
        output a = %6
        output b = %8
        output c = %10
        output d = %11",
    );
}

#[test]
fn a_gate_keeps_the_residual_last_and_verify_checks_its_shape() {
    // RegNet's block: the gated 1x1 conv also adds the block's input.
    let source = "network n { input x: [8, 6, 6]; g = x |> global_avg_pool |> conv(8, 1) |> sigmoid; \
                  mul(g, x) |> conv(8, 1) |> add(x) |> relu }";
    let mut graph = compile(source);
    passes::optimize_for(&mut graph, OptLevel::O2, Capabilities::CPU).unwrap();
    let text = print(&graph);
    assert!(text.contains("= conv(%0 * %2) out=8 kernel=1x1 stride=1x1 pad=0x0 -> add %0 -> relu"), "{text}");
    let conv = graph.node_ids().into_iter().find(|&id| graph.gate(id).is_some()).unwrap();
    // A gate of the wrong shape: the pool's input instead of its output.
    let mut wrong = graph.clone();
    let operands = wrong.operands(conv);
    wrong.set_operands(conv, &[operands[0], operands[0], operands[2]]);
    let error = verify(&wrong).unwrap_err();
    assert!(error.contains("gate [1, 8, 6, 6] for an input [1, 8, 6, 6]"), "{error}");
}
