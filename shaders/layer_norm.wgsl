// Layer normalization over one dimension of C values INNER apart, one invocation per
// position of the other dimensions: y = (x - mean) / sqrt(var + EPS) * weight + bias,
// the variance biased, mean and variance in two passes.
//
// Constants: TOTAL (= the product of the other dimensions), C (the normalized
// dimension), INNER (the product of the dimensions after it), EPS.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let base = (i / INNER) * C * INNER + i % INNER;
    var sum = 0.0;
    for (var c = 0u; c < C; c += 1u) {
        sum += load_x(base + c * INNER);
    }
    let mean = sum / f32(C);
    var squares = 0.0;
    for (var c = 0u; c < C; c += 1u) {
        let d = load_x(base + c * INNER) - mean;
        squares += d * d;
    }
    let inverse = 1.0 / sqrt(squares / f32(C) + EPS);
    for (var c = 0u; c < C; c += 1u) {
        let index = base + c * INNER;
        store_y(index, epilogue(index, (load_x(index) - mean) * inverse * load_weight(c) + load_bias(c)));
    }
}
