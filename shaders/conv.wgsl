// Direct 2-D convolution (cross-correlation, as PyTorch) with the fused epilogue and,
// when the epilogue pools, the pooling:
// y[n, o, oh, ow] = b[o] + sum over c, kh, kw of
//     w[o, c, kh, kw] * x[n, g*C_PER_G + c, oh*SH + kh*DH - PT, ow*SW + kw*DW - PL]
// where g = o / O_PER_G and taps outside the input read zero; then each stored value is
// the max or the average of epilogue(y) over its pooling window.
//
// Each invocation computes 8 consecutive output channels (of one group) at 4
// consecutive stored columns, with the 32 sums in eight vec4 registers: per kernel tap
// it loads 4 inputs and 8 weights for 32 multiply-adds. The sums are named variables,
// not an array, so that no driver keeps them in memory. The invocations of a workgroup
// share their channels (workgroup_id.z picks the block), so their weight loads are
// uniform. Blocks of columns run along workgroup_id.x and .y. In a group whose channel
// count is not a multiple of 8, the last block repeats its last channel and does not
// store the copies.
//
// Pooling: stored value (qh, qw) pools the conv values of rows qh*PSH - PPT + ph and
// columns qw*PSW - PPL + pw for ph < PKH, pw < PKW, as pool.wgsl does: positions outside
// the conv's CH x CW output take no part in a max; an average divides by the positions
// inside it, or with COUNT_PAD by the window clipped to the padded output. For each
// window position the invocation computes the conv at its 4 windows' columns (the same
// 32 sums), applies the epilogue and folds the values into 8 vec4 running maxima or
// sums: every value a window needs is computed by the invocation that reduces it.
// Overlapping windows (stride < kernel) compute their shared values once per window.
// Without pooling the window is the single value stored (PKH = PKW = PSH = PSW = 1, no
// padding, POOL_MAX, CH x CW = OH x OW).
//
// Constants: C, H, W (input), O, OH, OW (stored output), CH, CW (the conv's output),
// KH, KW, SH, SW, DH, DW, PT, PL, C_PER_G, O_PER_G, OW_BLOCKS (= ceil(OW / 4)), BLOCKS
// (= batch * OH * OW_BLOCKS), PKH, PKW, PSH, PSW, PPT, PPL, PPB, PPR, POOL_MAX,
// COUNT_PAD.

// Folds 4 values into 4 running maxima (NaN wins, as in PyTorch) or sums; lanes outside
// their window keep theirs.
fn pool_fold(acc: vec4<f32>, v: vec4<f32>, in_window: vec4<bool>) -> vec4<f32> {
    if (POOL_MAX) {
        return select(acc, v, in_window & (v > acc | v != v));
    }
    return acc + select(vec4<f32>(0.0), v, in_window);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
) {
    let block = (workgroup.x + workgroup.y * num_workgroups.x) * WG + lane;
    if (block >= BLOCKS) {
        return;
    }
    let ow0 = (block % OW_BLOCKS) * 4u;
    let oh = (block / OW_BLOCKS) % OH;
    let n = block / (OW_BLOCKS * OH);
    let blocks_per_group = (O_PER_G + 7u) / 8u;
    let g = workgroup.z / blocks_per_group;
    let o0 = g * O_PER_G + (workgroup.z % blocks_per_group) * 8u;
    let o_last = g * O_PER_G + O_PER_G - 1u;

    // The channel of each register, and where its weights start.
    var channels = array<u32, 8>();
    for (var j = 0u; j < 8u; j += 1u) {
        channels[j] = min(o0 + j, o_last);
    }
    let w0 = channels[0] * C_PER_G * KH * KW;
    let w1 = channels[1] * C_PER_G * KH * KW;
    let w2 = channels[2] * C_PER_G * KH * KW;
    let w3 = channels[3] * C_PER_G * KH * KW;
    let w4 = channels[4] * C_PER_G * KH * KW;
    let w5 = channels[5] * C_PER_G * KH * KW;
    let w6 = channels[6] * C_PER_G * KH * KW;
    let w7 = channels[7] * C_PER_G * KH * KW;

    // The running maxima or sums of the 32 stored values.
    let pool_start = select(0.0, negative_infinity(), POOL_MAX);
    var pooled = array<vec4<f32>, 8>();
    for (var j = 0u; j < 8u; j += 1u) {
        pooled[j] = vec4<f32>(pool_start);
    }
    // The windows' first conv row, and the first conv column of each of the 4 windows.
    let ch0 = i32(oh * PSH) - i32(PPT);
    let cw0 = vec4<i32>(i32(ow0 * PSW) - i32(PPL)) + vec4<i32>(0, 1, 2, 3) * i32(PSW);

    for (var ph = 0u; ph < PKH; ph += 1u) {
        let ch = ch0 + i32(ph);
        if (ch < 0 || ch >= i32(CH)) {
            continue;
        }
        for (var pw = 0u; pw < PKW; pw += 1u) {
            let cw = cw0 + vec4<i32>(i32(pw));
            // Window positions in the padding, and columns past the output, take no part.
            let in_window = cw >= vec4<i32>(0) & cw < vec4<i32>(i32(CW));
            if (!any(in_window)) {
                continue;
            }
            var acc0 = vec4<f32>(load_bias(channels[0]));
            var acc1 = vec4<f32>(load_bias(channels[1]));
            var acc2 = vec4<f32>(load_bias(channels[2]));
            var acc3 = vec4<f32>(load_bias(channels[3]));
            var acc4 = vec4<f32>(load_bias(channels[4]));
            var acc5 = vec4<f32>(load_bias(channels[5]));
            var acc6 = vec4<f32>(load_bias(channels[6]));
            var acc7 = vec4<f32>(load_bias(channels[7]));

            // Input row of the conv row at tap 0, and input columns of the 4 conv columns.
            let ih0 = ch * i32(SH) - i32(PT);
            let iw_base = cw * i32(SW) - vec4<i32>(i32(PL));
            for (var c = 0u; c < C_PER_G; c += 1u) {
                let x_plane = (n * C + g * C_PER_G + c) * H * W;
                for (var kh = 0u; kh < KH; kh += 1u) {
                    let ih = ih0 + i32(kh * DH);
                    if (ih < 0 || ih >= i32(H)) {
                        continue;
                    }
                    let x_row = x_plane + u32(ih) * W;
                    let tap_row = (c * KH + kh) * KW;
                    for (var kw = 0u; kw < KW; kw += 1u) {
                        let iw = iw_base + vec4<i32>(i32(kw * DW));
                        let inside = iw >= vec4<i32>(0) & iw < vec4<i32>(i32(W));
                        let column = vec4<u32>(clamp(iw, vec4<i32>(0), vec4<i32>(i32(W) - 1)));
                        let loaded = vec4<f32>(
                            load_x(x_row + column.x),
                            load_x(x_row + column.y),
                            load_x(x_row + column.z),
                            load_x(x_row + column.w),
                        );
                        let xs = select(vec4<f32>(0.0), loaded, inside);
                        let tap = tap_row + kw;
                        acc0 += load_weight(w0 + tap) * xs;
                        acc1 += load_weight(w1 + tap) * xs;
                        acc2 += load_weight(w2 + tap) * xs;
                        acc3 += load_weight(w3 + tap) * xs;
                        acc4 += load_weight(w4 + tap) * xs;
                        acc5 += load_weight(w5 + tap) * xs;
                        acc6 += load_weight(w6 + tap) * xs;
                        acc7 += load_weight(w7 + tap) * xs;
                    }
                }
            }
            // The epilogue of each conv value (indexed in the conv's own output, as its
            // residual is), folded into its window.
            let sums = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
            let conv_column = vec4<u32>(clamp(cw, vec4<i32>(0), vec4<i32>(i32(CW) - 1)));
            for (var j = 0u; j < 8u; j += 1u) {
                let conv_row = ((n * O + channels[j]) * CH + u32(ch)) * CW;
                let values = vec4<f32>(
                    epilogue(conv_row + conv_column.x, sums[j].x),
                    epilogue(conv_row + conv_column.y, sums[j].y),
                    epilogue(conv_row + conv_column.z, sums[j].z),
                    epilogue(conv_row + conv_column.w, sums[j].w),
                );
                pooled[j] = pool_fold(pooled[j], values, in_window);
            }
        }
    }

    // An average's divisor per window, as pool.wgsl computes it.
    let h_end = min(ch0 + i32(PKH), i32(CH + PPB));
    let h_inside = max(min(h_end, i32(CH)) - max(ch0, 0), 0);
    let w_end = min(cw0 + vec4<i32>(i32(PKW)), vec4<i32>(i32(CW + PPR)));
    let w_inside = max(min(w_end, vec4<i32>(i32(CW))) - max(cw0, vec4<i32>(0)), vec4<i32>(0));
    var count = f32(h_inside) * vec4<f32>(w_inside);
    if (COUNT_PAD) {
        count = f32(h_end - ch0) * vec4<f32>(w_end - cw0);
    }
    for (var j = 0u; j < 8u; j += 1u) {
        if (o0 + j > o_last) {
            break;
        }
        var result = pooled[j];
        if (!POOL_MAX) {
            result = result / count;
        }
        for (var p = 0u; p < 4u; p += 1u) {
            if (ow0 + p < OW) {
                let out_index = ((n * O + o0 + j) * OH + oh) * OW + ow0 + p;
                store_y(out_index, result[p]);
            }
        }
    }
}
