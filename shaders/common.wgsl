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

// `v` limited to [lo, hi] by comparisons: NaN passes through, as in PyTorch (WGSL's
// `clamp` leaves NaN to the implementation).
fn clamp_nan(v: f32, lo: f32, hi: f32) -> f32 {
    let raised = select(v, lo, v < lo);
    return select(raised, hi, raised > hi);
}

fn hardsigmoid(v: f32) -> f32 {
    return clamp_nan(v + 3.0, 0.0, 6.0) * (1.0 / 6.0);
}

fn hardswish(v: f32) -> f32 {
    return v * hardsigmoid(v);
}

// x / (1 + exp(-x)), PyTorch's formula.
fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// WGSL has no erf: x clamped to [-4, 4] (erf is +-1 in f32 beyond), then a rational
// function, odd over even, of degree 13 over 8 (Eigen's and XLA's single-precision erf;
// at most 4.2e-7 from erf, exactly +-1 at +-4). NaN passes through.
fn erf_approx(v: f32) -> f32 {
    let x = clamp_nan(v, -4.0, 4.0);
    let x2 = x * x;
    var p = -2.72614225801306e-10;
    p = p * x2 + 2.77068142495902e-08;
    p = p * x2 - 2.10102402082508e-06;
    p = p * x2 - 5.69250639462346e-05;
    p = p * x2 - 7.34990630326855e-04;
    p = p * x2 - 2.95459980854025e-03;
    p = p * x2 - 1.60960333262415e-02;
    var q = -1.45660718464996e-05;
    q = q * x2 - 2.13374055278905e-04;
    q = q * x2 - 1.68282697438203e-03;
    q = q * x2 - 7.37332916720468e-03;
    q = q * x2 - 1.42647390514189e-02;
    return x * p / q;
}

// nn.GELU(): x * 0.5 * (1 + erf(x / sqrt(2))).
fn gelu_erf(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}

// nn.GELU(approximate='tanh'): 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))).
fn gelu_tanh(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh_clamped(0.79788456080286536 * (v + 0.044715 * v * v * v)));
}

fn negative_infinity() -> f32 {
    return bitcast<f32>(0xff800000u);
}
