// Shared by every cnnc kernel: the flat invocation index and the activations.
//
// The emitter puts this file after the kernel's generated prelude (its constants, its
// bindings, the `load_*`/`store_*` accessors and `epilogue`) and before the kernel
// template. Kernels that run one invocation per output value use a one-dimensional
// index spread over a two-dimensional grid of workgroups, because one grid dimension
// holds at most 65535 workgroups.

const WG: u32 = 64u;

fn flat_index(gid: vec3<u32>, num_workgroups: vec3<u32>) -> u32 {
    return gid.x + gid.y * num_workgroups.x * WG;
}

// NaN passes through, as in PyTorch.
fn relu(v: f32) -> f32 {
    return select(v, 0.0, v < 0.0);
}

fn leaky_relu(v: f32, slope: f32) -> f32 {
    return select(v, v * slope, v < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// tanh(15) rounds to 1 in f32; clamping keeps drivers that compute tanh through
// exp(2v) away from inf / inf.
fn tanh_clamped(v: f32) -> f32 {
    return tanh(clamp(v, -15.0, 15.0));
}

fn negative_infinity() -> f32 {
    return bitcast<f32>(0xff800000u);
}
