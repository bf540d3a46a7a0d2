#!/usr/bin/env python3
"""The coefficients of the degree-5 exp polynomial in the AVX2 sigmoid/silu gate.

`src/backend/clif/kernels/x86.rs` (`emit_exp_gate_avx2`) computes exp(r) for r in
[-ln 2 / 2, ln 2 / 2] as 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3). This fits c2..c5 for
the smallest largest relative error (least squares on Chebyshev points, reweighted by
Lawson's method toward minimax), rounds them to f32, evaluates the polynomial in f32 as
the kernel does (Horner, then (q r) r + r + 1) on 200,001 points and prints the
coefficients and the largest relative error against exp in f64. Needs only numpy:

    .venv/bin/python tools/fit_exp.py
"""
import numpy as np

HALF = np.log(2) / 2
DEGREE = 5

k = np.arange(4000)
r = HALF * np.cos(np.pi * (k + 0.5) / len(k))
target = (np.exp(r) - 1 - r) / r**2
basis = np.vstack([r**j for j in range(DEGREE - 1)]).T
scale = r**2 / np.exp(r)  # residual in target -> relative error in exp
weights = np.ones_like(r)
for _ in range(200):
    w = scale * weights
    c = np.linalg.lstsq(basis * w[:, None], target * w, rcond=None)[0]
    error = np.abs((basis @ c - target) * scale)
    weights = np.sqrt(weights**2 * error / error.max() + 1e-30)

c32 = c.astype(np.float32)
x = np.linspace(-HALF, HALF, 200001).astype(np.float32)
q = np.float32(c32[-1])
for coefficient in c32[-2::-1]:
    q = (q * x + coefficient).astype(np.float32)
value = ((q * x).astype(np.float32) * x + x).astype(np.float32) + np.float32(1)
error = np.abs(value.astype(np.float64) / np.exp(x.astype(np.float64)) - 1).max()
print("c2..c5:", ", ".join(f"{float(v):.8e}" for v in c32))
print(f"largest relative error in f32: {error:.3g}")
