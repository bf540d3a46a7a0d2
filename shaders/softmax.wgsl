// Softmax over dimension 1, one invocation per (n, inner position): the maximum is
// subtracted before exponentiating.
//
// Constants: TOTAL (= batch * INNER), C (the softmax dimension), INNER (the product of
// the dimensions after it).

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let n = i / INNER;
    let s = i % INNER;
    let base = n * C * INNER + s;
    var largest = negative_infinity();
    for (var c = 0u; c < C; c += 1u) {
        largest = max(largest, load_x(base + c * INNER));
    }
    var sum = 0.0;
    for (var c = 0u; c < C; c += 1u) {
        sum += exp(load_x(base + c * INNER) - largest);
    }
    for (var c = 0u; c < C; c += 1u) {
        let index = base + c * INNER;
        store_y(index, epilogue(index, exp(load_x(index) - largest) / sum));
    }
}
