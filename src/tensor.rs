//! A dense float32 tensor in row-major (C) order, PyTorch's layout.

use crate::ir::shape::fmt_shape;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and data; `None` if the sizes disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        (n == data.len()).then_some(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn shape_string(&self) -> String {
        fmt_shape(&self.shape)
    }
}

/// Relative L2 error `|a - b| / |b|` (with `b` the reference), computed in f64.
pub fn relative_l2(a: &[f32], reference: &[f32]) -> f64 {
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (x, y) in a.iter().zip(reference) {
        let d = *x as f64 - *y as f64;
        diff += d * d;
        norm += (*y as f64) * (*y as f64);
    }
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// Index of the largest value of each row of a `[N, K]` tensor (first one on ties).
pub fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let n = t.shape.first().copied().unwrap_or(1).max(1);
    let k = t.len() / n;
    (0..n)
        .map(|i| {
            let row = &t.data[i * k..(i + 1) * k];
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}
