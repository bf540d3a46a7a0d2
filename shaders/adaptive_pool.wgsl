// Adaptive average pooling with PyTorch's bins, one output value per invocation: output
// oh averages input rows floor(oh*H/OH) .. ceil((oh+1)*H/OH) (likewise for columns).
// Global average pooling is the case OH = OW = 1.
//
// Constants: TOTAL, H, W, OH, OW.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let ow = i % OW;
    let oh = (i / OW) % OH;
    let plane = i / (OW * OH);
    let h0 = oh * H / OH;
    let h1 = ((oh + 1u) * H + OH - 1u) / OH;
    let w0 = ow * W / OW;
    let w1 = ((ow + 1u) * W + OW - 1u) / OW;
    var sum = 0.0;
    for (var ih = h0; ih < h1; ih += 1u) {
        for (var iw = w0; iw < w1; iw += 1u) {
            sum += load_x((plane * H + ih) * W + iw);
        }
    }
    store_y(i, epilogue(i, sum / f32((h1 - h0) * (w1 - w0))));
}
