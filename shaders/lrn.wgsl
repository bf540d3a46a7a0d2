// Local response normalization as PyTorch's LocalResponseNorm, one output value per
// invocation: the window over channels is c - SIZE/2 ..= c + (SIZE-1)/2, clipped to the
// channels (the zero padding adds nothing), and
// y = x / (K + ALPHA * (sum of squares) / SIZE)^BETA.
//
// Constants: TOTAL, C, INNER (the product of the dimensions after the channels), SIZE,
// ALPHA, BETA, K.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let c = (i / INNER) % C;
    let first_index = i - c * INNER;
    let first = max(i32(c) - i32(SIZE / 2u), 0);
    let last = min(i32(c) + i32((SIZE - 1u) / 2u), i32(C) - 1);
    var sum_of_squares = 0.0;
    for (var j = first; j <= last; j += 1) {
        let v = load_x(first_index + u32(j) * INNER);
        sum_of_squares += v * v;
    }
    let a = load_x(i);
    store_y(i, epilogue(i, a / pow(K + ALPHA * sum_of_squares / f32(SIZE), BETA)));
}
