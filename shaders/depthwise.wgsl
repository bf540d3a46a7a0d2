// Depthwise convolution (groups = input channels = output channels): each invocation
// computes 4 consecutive output columns of one row of one channel's plane, with the
// channel's KH x KW taps in registers. Taps that fall in the padding are skipped.
// Element i of the output is ((n * C + c) * OH + oh) * OW + ow; weights are
// [C, 1, KH, KW].
//
// Constants: TOTAL (planes x OH x OW_BLOCKS), C, H, W, OH, OW, KH, KW, KHW (KH * KW),
// SH, SW, DH, DW, PT, PL, OW_BLOCKS.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let block = i % OW_BLOCKS;
    let oh = (i / OW_BLOCKS) % OH;
    let plane = i / (OW_BLOCKS * OH);
    let c = plane % C;
    var taps: array<f32, KHW>;
    for (var t = 0u; t < KHW; t += 1u) {
        taps[t] = load_weight(c * KHW + t);
    }
    let ow0 = block * 4u;
    var acc = vec4<f32>(load_bias(c));
    for (var kh = 0u; kh < KH; kh += 1u) {
        let ih = i32(oh * SH + kh * DH) - i32(PT);
        if (ih < 0 || ih >= i32(H)) {
            continue;
        }
        let row = (plane * H + u32(ih)) * W;
        for (var kw = 0u; kw < KW; kw += 1u) {
            let tap = taps[kh * KW + kw];
            for (var q = 0u; q < 4u; q += 1u) {
                let iw = i32((ow0 + q) * SW + kw * DW) - i32(PL);
                if (iw >= 0 && iw < i32(W)) {
                    acc[q] += load_x(row + u32(iw)) * tap;
                }
            }
        }
    }
    let first = (plane * OH + oh) * OW;
    for (var q = 0u; q < 4u; q += 1u) {
        if (ow0 + q < OW) {
            let index = first + ow0 + q;
            store_y(index, epilogue(index, acc[q]));
        }
    }
}
