// Fully connected layer with the fused epilogue: y[n, o] = b[o] + sum over f of
// w[o, f] * x[n, f].
//
// One workgroup per output value: its invocations stride over the features, so that
// neighbouring invocations read neighbouring weights, and their partial sums are added
// in workgroup memory. Workgroups run along workgroup_id.x and .y.
//
// Constants: F (input features), O (output features), ROWS (= batch * O).

var<workgroup> partial_sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
) {
    let row = workgroup.x + workgroup.y * num_workgroups.x;
    if (row >= ROWS) {
        return;
    }
    let o = row % O;
    let n = row / O;
    var acc = 0.0;
    for (var f = lane; f < F; f += WG) {
        acc += load_x(n * F + f) * load_weight(o * F + f);
    }
    partial_sums[lane] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial_sums[lane] += partial_sums[lane + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        store_y(row, epilogue(row, partial_sums[0] + load_bias(o)));
    }
}
