// Max or average pooling over a window, PyTorch's way, one output value per invocation.
// The window starts at oh*SH - PT (it may start in the padding) and is clipped to the
// padded input; max pooling takes the maximum of the real positions (NaN wins), average
// pooling divides their sum by their count, or with COUNT_PAD by the clipped window's
// size. Global max pooling is the case of a window as large as the input. A dilated
// pooling (DH or DW above 1) takes KH x KW taps DH and DW apart instead; its average
// divides by the number of real taps, or with COUNT_PAD of taps inside the padded input.
//
// Constants: TOTAL, H, W, OH, OW, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, IS_MAX, COUNT_PAD.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let ow = i % OW;
    let oh = (i / OW) % OH;
    let plane = i / (OW * OH);
    let h_start = i32(oh * SH) - i32(PT);
    let w_start = i32(ow * SW) - i32(PL);
    let h_end = min(h_start + i32(KH), i32(H + PB));
    let w_end = min(w_start + i32(KW), i32(W + PR));
    let h0 = max(h_start, 0);
    let w0 = max(w_start, 0);
    let h1 = min(h_end, i32(H));
    let w1 = min(w_end, i32(W));
    var best = negative_infinity();
    var sum = 0.0;
    if (DH != 1u || DW != 1u) {
        var real_rows = 0;
        var padded_rows = 0;
        var real_cols = 0;
        var padded_cols = 0;
        for (var tw = 0; tw < i32(KW); tw += 1) {
            let iw = w_start + tw * i32(DW);
            if (iw >= 0 && iw < i32(W)) {
                real_cols += 1;
            }
            if (iw >= -i32(PL) && iw < i32(W + PR)) {
                padded_cols += 1;
            }
        }
        for (var th = 0; th < i32(KH); th += 1) {
            let ih = h_start + th * i32(DH);
            if (ih >= -i32(PT) && ih < i32(H + PB)) {
                padded_rows += 1;
            }
            if (ih < 0 || ih >= i32(H)) {
                continue;
            }
            real_rows += 1;
            for (var tw = 0; tw < i32(KW); tw += 1) {
                let iw = w_start + tw * i32(DW);
                if (iw < 0 || iw >= i32(W)) {
                    continue;
                }
                let v = load_x((plane * H + u32(ih)) * W + u32(iw));
                if (v > best || v != v) {
                    best = v;
                }
                sum += v;
            }
        }
        var dilated = best;
        if (!IS_MAX) {
            var count = real_rows * real_cols;
            if (COUNT_PAD) {
                count = padded_rows * padded_cols;
            }
            dilated = sum / f32(count);
        }
        store_y(i, epilogue(i, dilated));
        return;
    }
    for (var ih = h0; ih < h1; ih += 1) {
        for (var iw = w0; iw < w1; iw += 1) {
            let v = load_x((plane * H + u32(ih)) * W + u32(iw));
            if (v > best || v != v) {
                best = v;
            }
            sum += v;
        }
    }
    var result = best;
    if (!IS_MAX) {
        var count = max(h1 - h0, 0) * max(w1 - w0, 0);
        if (COUNT_PAD) {
            count = (h_end - h_start) * (w_end - w_start);
        }
        result = sum / f32(count);
    }
    store_y(i, epilogue(i, result));
}
