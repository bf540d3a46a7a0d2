// 2-D convolution as a tiled matrix product with workgroup memory (implicit GEMM), with
// the fused epilogue; the same sum as conv.wgsl:
// y[n, o, oh, ow] = b[o] + sum over k = (c, kh, kw) of w[o, k] * x[n, g*C_PER_G + c,
//     oh*SH + kh*DH - PT, ow*SW + kw*DW - PL], taps outside the input reading zero.
//
// Each workgroup computes a tile of 32 output channels (of one group; workgroup_id.z
// picks the group and the tile) by 32 output positions (batch, row and column
// flattened; workgroup_id.x and .y pick the tile). The reduction runs in chunks of KC
// values of k: the workgroup stages the chunk's 32 x KC weights and its KC x 32 input
// values (the im2col matrix, never stored) in workgroup memory, then every invocation
// accumulates a 4 x 4 block of the tile from there.
//
// Constants: C, H, W (input), O, OH, OW (output), KH, KW, SH, SW, DH, DW, PT, PL,
// C_PER_G, O_PER_G, K (= C_PER_G * KH * KW), POSITIONS (= batch * OH * OW),
// POSITION_TILES (= ceil(POSITIONS / 32)), CHANNEL_TILES (= ceil(O_PER_G / 32)).

const TILE: u32 = 32u;
const KC: u32 = 16u;

// Row kk of each holds chunk value k0 + kk for the tile's 32 channels or positions.
var<workgroup> weight_tile: array<f32, 512>;
var<workgroup> input_tile: array<f32, 512>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
) {
    let tile = workgroup.x + workgroup.y * num_workgroups.x;
    if (tile >= POSITION_TILES) {
        return;
    }
    let g = workgroup.z / CHANNEL_TILES;
    let o_base = (workgroup.z % CHANNEL_TILES) * TILE;
    let p_base = tile * TILE;
    // This invocation's block: channels 4*by .. 4*by+3, positions 4*bx .. 4*bx+3.
    let bx = lane % 8u;
    let by = lane / 8u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < K; k0 += KC) {
        // Stage the chunk: 512 weights and 512 inputs, 8 of each per invocation.
        for (var r = 0u; r < 8u; r += 1u) {
            let e = lane + r * WG;
            let kk = e / TILE;
            let column = e % TILE;
            let k = k0 + kk;
            let o = o_base + column;
            var w = 0.0;
            if (k < K && o < O_PER_G) {
                w = load_weight((g * O_PER_G + o) * K + k);
            }
            weight_tile[e] = w;
            let p = p_base + column;
            var v = 0.0;
            if (k < K && p < POSITIONS) {
                let c = k / (KH * KW);
                let kh = (k / KW) % KH;
                let kw = k % KW;
                let ow = p % OW;
                let oh = (p / OW) % OH;
                let n = p / (OW * OH);
                let ih = i32(oh * SH + kh * DH) - i32(PT);
                let iw = i32(ow * SW + kw * DW) - i32(PL);
                if (ih >= 0 && ih < i32(H) && iw >= 0 && iw < i32(W)) {
                    v = load_x(((n * C + g * C_PER_G + c) * H + u32(ih)) * W + u32(iw));
                }
            }
            input_tile[e] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KC; kk += 1u) {
            let row = kk * TILE;
            let xs = vec4<f32>(
                input_tile[row + 4u * bx],
                input_tile[row + 4u * bx + 1u],
                input_tile[row + 4u * bx + 2u],
                input_tile[row + 4u * bx + 3u],
            );
            acc0 += weight_tile[row + 4u * by] * xs;
            acc1 += weight_tile[row + 4u * by + 1u] * xs;
            acc2 += weight_tile[row + 4u * by + 2u] * xs;
            acc3 += weight_tile[row + 4u * by + 3u] * xs;
        }
        workgroupBarrier();
    }

    let sums = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i += 1u) {
        let o = o_base + 4u * by + i;
        if (o >= O_PER_G) {
            break;
        }
        let channel = g * O_PER_G + o;
        let bias = load_bias(channel);
        for (var j = 0u; j < 4u; j += 1u) {
            let p = p_base + 4u * bx + j;
            if (p < POSITIONS) {
                let ow = p % OW;
                let oh = (p / OW) % OH;
                let n = p / (OW * OH);
                let out_index = ((n * O + channel) * OH + oh) * OW + ow;
                store_y(out_index, epilogue(out_index, sums[i][j] + bias));
            }
        }
    }
}
