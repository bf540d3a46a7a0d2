//! Shape inference: the output shape of every op from its operands' shapes, with the
//! formulas of the language contract (`same`, `valid`, dilation, groups, `ceil`, adaptive bins).

use super::ops::{Epilogue, Hw, Op, Pad, Pool};

/// Why an op cannot take the shapes it was given. `message` names the shapes; `help`
/// suggests a fix where one is obvious.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeError {
    pub message: String,
    pub help: Option<String>,
}

impl ShapeError {
    fn new(message: impl Into<String>) -> ShapeError {
        ShapeError { message: message.into(), help: None }
    }
    fn with_help(mut self, help: impl Into<String>) -> ShapeError {
        self.help = Some(help.into());
        self
    }
}

/// Formats a shape as `[1, 3, 224, 224]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// The output size of a window op along one dimension with floor division, or `None`
/// when the window does not fit.
pub fn window_out_floor(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_total: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad_total)?;
    if padded < span || stride == 0 {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// PyTorch's `ceil_mode` output size: `ceil((i + 2p - d(k-1) - 1)/s) + 1`, minus one if
/// the last window would start past the input and its left padding.
pub fn window_out_ceil(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_before: usize,
    pad_after: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad_before)?.checked_add(pad_after)?;
    if padded < span || stride == 0 {
        return None;
    }
    let mut out = (padded - span).div_ceil(stride) + 1;
    if (out - 1) * stride >= input + pad_before {
        out -= 1;
    }
    Some(out)
}

/// Total `same` padding along one dimension: `max((ceil(i/s) - 1)*s + d(k-1) + 1 - i, 0)`.
pub fn same_pad_total(input: usize, kernel: usize, stride: usize, dilation: usize) -> usize {
    let out = input.div_ceil(stride.max(1));
    let needed = (out.saturating_sub(1)) * stride + dilation * (kernel.saturating_sub(1)) + 1;
    needed.saturating_sub(input)
}

/// `same` padding split as ONNX's `SAME_UPPER`: the odd pixel at the bottom/right.
pub fn same_pad(input: Hw, kernel: Hw, stride: Hw, dilation: Hw) -> Pad {
    let th = same_pad_total(input.h, kernel.h, stride.h, dilation.h);
    let tw = same_pad_total(input.w, kernel.w, stride.w, dilation.w);
    Pad { top: th / 2, left: tw / 2, bottom: th - th / 2, right: tw - tw / 2 }
}

fn expect_4d(op: &Op, shape: &[usize]) -> Result<(), ShapeError> {
    if shape.len() == 4 {
        return Ok(());
    }
    if shape.len() == 3 {
        return Err(ShapeError::new(format!(
            "{} needs [N, C, H, W]; its input {} is [N, C, L]",
            op.mnemonic(),
            fmt_shape(shape)
        ))
        .with_help(
            "a [N, C, L] tensor takes the elementwise ops, dropout, add, mul, concat, softmax, flatten, reshape, mean, linear, layer_norm, and max_pool and avg_pool along L",
        ));
    }
    Err(ShapeError::new(format!("{} expects a 4-D [N, C, H, W] tensor, got {}", op.mnemonic(), fmt_shape(shape))))
}

/// A `[N, C, L]` tensor as the `[N, C, 1, L]` map the window ops see (1-D pooling).
pub fn as_4d(shape: &[usize]) -> Vec<usize> {
    match shape {
        [n, c, l] => vec![*n, *c, 1, *l],
        _ => shape.to_vec(),
    }
}

fn pool_out(op: &Op, pool: &Pool, input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    // 1-D pooling: a window along L of `[N, C, L]`, the 2-D pool over `[N, C, 1, L]`.
    if input.len() == 3 {
        let flat = pool.kernel.h == 1
            && pool.stride.h == 1
            && pool.dilation.h == 1
            && pool.pad.top == 0
            && pool.pad.bottom == 0;
        if !flat {
            return Err(ShapeError::new(format!(
                "{} of {} [N, C, L] takes one window size (kernel {}, stride {}, pad {})",
                op.mnemonic(),
                fmt_shape(input),
                pool.kernel,
                pool.stride,
                pool.pad
            ))
            .with_help("on [N, C, L] the kernel, stride, pad and dilation are single integers, along L"));
        }
        let mut out = pool_out(op, pool, &as_4d(input))?;
        out.remove(2);
        return Ok(out);
    }
    expect_4d(op, input)?;
    // ONNX allows pads below the kernel: every window then holds at least one real pixel.
    if pool.pad.top.max(pool.pad.bottom) >= pool.kernel.h || pool.pad.left.max(pool.pad.right) >= pool.kernel.w {
        return Err(ShapeError::new(format!(
            "{} padding {}{} is not smaller than the kernel {}",
            op.mnemonic(),
            pool.pad,
            if pool.pad.top == pool.pad.bottom && pool.pad.left == pool.pad.right {
                ""
            } else {
                " (top, left, bottom, right)"
            },
            pool.kernel
        ))
        .with_help("pooling padding must be at most kernel - 1 on each side, so that every window sees the input"));
    }
    let (h, w) = if pool.ceil {
        (
            window_out_ceil(input[2], pool.kernel.h, pool.stride.h, pool.pad.top, pool.pad.bottom, pool.dilation.h),
            window_out_ceil(input[3], pool.kernel.w, pool.stride.w, pool.pad.left, pool.pad.right, pool.dilation.w),
        )
    } else {
        (
            window_out_floor(input[2], pool.kernel.h, pool.stride.h, pool.pad.top + pool.pad.bottom, pool.dilation.h),
            window_out_floor(input[3], pool.kernel.w, pool.stride.w, pool.pad.left + pool.pad.right, pool.dilation.w),
        )
    };
    match (h, w) {
        (Some(h), Some(w)) => Ok(vec![input[0], input[1], h, w]),
        _ => Err(ShapeError::new(format!(
            "{} kernel {} does not fit in the {}x{} input with padding {}; the output would be empty",
            op.mnemonic(),
            pool.kernel,
            input[2],
            input[3],
            pool.pad
        ))),
    }
}

/// Broadcasts operand shapes for `add` and `mul`: equal ranks, each dimension equal or 1.
fn broadcast(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let first = inputs[0];
    let mut out = first.to_vec();
    for (index, other) in inputs.iter().enumerate().skip(1) {
        if other.len() != out.len() {
            let error = ShapeError::new(format!(
                "{} operands have different ranks: {} and {} (operand {})",
                op.mnemonic(),
                fmt_shape(first),
                fmt_shape(other),
                index + 1
            ));
            return Err(if first.len() == 1 || other.len() == 1 {
                error.with_help(
                    "a rank-1 tensor is one scalar per sample (dimension 0 is the batch); it combines only with another such tensor",
                )
            } else {
                error
            });
        }
        for dim in 0..out.len() {
            let (a, b) = (out[dim], other[dim]);
            if a == b || b == 1 {
                continue;
            }
            if a == 1 {
                out[dim] = b;
                continue;
            }
            return Err(ShapeError::new(format!(
                "{} operands differ in dimension {}: {} and {} ({} vs {}, and neither is 1)",
                op.mnemonic(),
                dim,
                fmt_shape(first),
                fmt_shape(other),
                a,
                b
            )));
        }
    }
    Ok(out)
}

fn concat(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let first = inputs[0];
    if !(2..=4).contains(&first.len()) {
        return Err(ShapeError::new(format!("concat joins 2-D, 3-D or 4-D tensors, got {}", fmt_shape(first))));
    }
    let mut out = first.to_vec();
    for (index, other) in inputs.iter().enumerate().skip(1) {
        if other.len() != first.len() {
            return Err(ShapeError::new(format!(
                "{} operands have different ranks: {} and {} (operand {})",
                op.mnemonic(),
                fmt_shape(first),
                fmt_shape(other),
                index + 1
            )));
        }
        for dim in 0..first.len() {
            if dim != 1 && other[dim] != first[dim] {
                return Err(ShapeError::new(format!(
                    "concat operands differ in dimension {} ({}): {} and {} (operand {}); only dimension 1 may differ",
                    dim,
                    ["batch", "channels", "height", "width"].get(dim).unwrap_or(&"?"),
                    fmt_shape(first),
                    fmt_shape(other),
                    index + 1
                )));
            }
        }
        out[1] = out[1].checked_add(other[1]).ok_or_else(|| ShapeError::new("concat: channel count overflows"))?;
    }
    Ok(out)
}

/// The most elements one tensor may have (2^36 floats, 256 GiB): beyond any real
/// network, small enough that sizes computed from it never overflow.
pub const MAX_ELEMENTS: usize = 1 << 36;

/// The number of elements of a shape, or `None` past [`MAX_ELEMENTS`].
pub fn checked_elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS)
}

/// The output shape of `op` applied to operands of the given shapes.
pub fn infer(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let out = infer_unchecked(op, inputs)?;
    if checked_elements(&out).is_none() {
        return Err(ShapeError::new(format!(
            "{} would produce {}, more than {} elements",
            op.mnemonic(),
            fmt_shape(&out),
            MAX_ELEMENTS
        )));
    }
    Ok(out)
}

/// The shape of a node: its op's output ([`infer`]), pooled by its epilogue's pool
/// stage when it has one (the stage's standalone op applied to the op's output).
pub fn infer_node(op: &Op, epilogue: &Epilogue, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let out = infer(op, inputs)?;
    match &epilogue.pool {
        None => Ok(out),
        Some(pool) => infer(&pool.op(), &[&out]),
    }
}

fn infer_unchecked(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let arity_ok = match op {
        Op::Input { .. } => inputs.is_empty(),
        Op::Add | Op::Mul | Op::Concat => inputs.len() >= 2,
        _ => inputs.len() == 1,
    };
    if !arity_ok {
        return Err(ShapeError::new(format!("{} got {} operands", op.mnemonic(), inputs.len())));
    }
    let x = inputs.first().copied().unwrap_or(&[]);
    // A rank-1 value is one scalar per sample (dimension 0 is the batch): only the
    // elementwise ops read it.
    let elementwise = matches!(op, Op::Activation(_) | Op::Dropout { .. } | Op::Identity | Op::Add | Op::Mul);
    if !elementwise && let Some(scalars) = inputs.iter().find(|s| s.len() == 1) {
        return Err(ShapeError::new(format!(
            "{} of {}, one scalar per sample: it has no dimension past the batch",
            op.mnemonic(),
            fmt_shape(scalars)
        ))
        .with_help("only activations, dropout, identity, add and mul take a tensor of one scalar per sample"));
    }
    match op {
        Op::Input { .. } => Err(ShapeError::new("an input's shape is declared, not inferred")),
        Op::Conv(c) => {
            expect_4d(op, x)?;
            let in_channels = x[1];
            if c.groups == 0 || in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(ShapeError::new(format!(
                    "conv with groups={} needs input and output channels divisible by it; input {} has {} channels, output {}",
                    c.groups,
                    fmt_shape(x),
                    in_channels,
                    c.out_channels
                )));
            }
            let h = window_out_floor(x[2], c.kernel.h, c.stride.h, c.pad.top + c.pad.bottom, c.dilation.h);
            let w = window_out_floor(x[3], c.kernel.w, c.stride.w, c.pad.left + c.pad.right, c.dilation.w);
            match (h, w) {
                (Some(h), Some(w)) => Ok(vec![x[0], c.out_channels, h, w]),
                _ => Err(ShapeError::new(format!(
                    "conv kernel {} (dilation {}) does not fit in the {}x{} input {} with padding {}; the output would be empty",
                    c.kernel,
                    c.dilation,
                    x[2],
                    x[3],
                    fmt_shape(x),
                    c.pad
                ))),
            }
        }
        Op::Linear { out_features, .. } => {
            // nn.Linear: the last dimension becomes `out`, the others stay.
            if x.len() < 2 {
                return Err(ShapeError::new(format!("linear expects [N, ..., F], got {}", fmt_shape(x))));
            }
            let mut out = x.to_vec();
            *out.last_mut().expect("rank 2 or more") = *out_features;
            Ok(out)
        }
        Op::BatchNorm { .. } | Op::ScaleShift => {
            if x.len() != 2 && x.len() != 4 {
                return Err(ShapeError::new(format!(
                    "batch_norm expects [N, C, H, W] or [N, F], got {}",
                    fmt_shape(x)
                )));
            }
            Ok(x.to_vec())
        }
        Op::Activation(_) | Op::Dropout { .. } | Op::StochasticDepth { .. } | Op::Identity => Ok(x.to_vec()),
        Op::Mean { dims, keepdim } => {
            let ascending = dims.windows(2).all(|w| w[0] < w[1]);
            if dims.is_empty() || !ascending || dims[0] == 0 || dims.iter().any(|&d| d >= x.len()) {
                let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                return Err(ShapeError::new(format!(
                    "mean over dimensions ({}) of {}: name dimensions 1..{} of the input, each once",
                    dims.join(", "),
                    fmt_shape(x),
                    x.len().saturating_sub(1)
                ))
                .with_help("dimension 0 is the batch, which mean does not reduce"));
            }
            let out: Vec<usize> = (0..x.len())
                .filter_map(|d| match dims.contains(&d) {
                    false => Some(x[d]),
                    true => keepdim.then_some(1),
                })
                .collect();
            if out.len() < 2 {
                return Err(ShapeError::new(format!(
                    "mean over every dimension of {} but the batch leaves a tensor of rank 1",
                    fmt_shape(x)
                ))
                .with_help("keep the reduced dimensions with `keepdim=true`"));
            }
            Ok(out)
        }
        Op::Reshape { shape } => {
            let mut out = vec![x.first().copied().unwrap_or(0)];
            out.extend(shape);
            let per_image = |s: &[usize]| s.iter().skip(1).try_fold(1usize, |a, &d| a.checked_mul(d));
            if x.len() < 2 || !(2..=4).contains(&out.len()) {
                return Err(ShapeError::new(format!(
                    "reshape of {} to {}: the result has rank {}; reshape makes tensors of rank 2, 3 or 4",
                    fmt_shape(x),
                    fmt_shape(&out),
                    out.len()
                )));
            }
            if per_image(x).is_none() || per_image(x) != per_image(&out) {
                let count = |n: Option<usize>| n.map_or("too many".to_string(), |n| n.to_string());
                return Err(ShapeError::new(format!(
                    "reshape of {} to {}: {} values per image, not {}",
                    fmt_shape(x),
                    fmt_shape(&out),
                    count(per_image(&out)),
                    count(per_image(x))
                ))
                .with_help(
                    "the arguments are the dimensions after the batch; their product is the input's per image",
                ));
            }
            Ok(out)
        }
        Op::Dropout2d { .. } => {
            expect_4d(op, x)?;
            Ok(x.to_vec())
        }
        Op::Softmax => {
            if x.len() < 2 {
                return Err(ShapeError::new(format!("softmax needs a dimension 1, got {}", fmt_shape(x))));
            }
            Ok(x.to_vec())
        }
        Op::MaxPool(p) | Op::AvgPool(p) => pool_out(op, p, x),
        Op::GlobalAvgPool | Op::GlobalMaxPool => {
            expect_4d(op, x)?;
            Ok(vec![x[0], x[1], 1, 1])
        }
        Op::AdaptiveAvgPool { out } => {
            expect_4d(op, x)?;
            if out.h == 0 || out.w == 0 {
                return Err(ShapeError::new("adaptive_avg_pool output size must be at least 1"));
            }
            Ok(vec![x[0], x[1], out.h, out.w])
        }
        Op::Flatten => {
            if x.len() < 2 {
                return Err(ShapeError::new(format!("flatten needs [N, ...], got {}", fmt_shape(x))));
            }
            Ok(vec![x[0], x[1..].iter().product()])
        }
        Op::Add | Op::Mul => broadcast(op, inputs),
        Op::Concat => concat(op, inputs),
        Op::Lrn { size, .. } => {
            expect_4d(op, x)?;
            if *size == 0 {
                return Err(ShapeError::new("lrn size must be at least 1"));
            }
            Ok(x.to_vec())
        }
        Op::Slice { start, len } => {
            let channels = x.get(1).copied().unwrap_or(0);
            if x.len() < 2 || *len == 0 || start.checked_add(*len).is_none_or(|end| end > channels) {
                return Err(ShapeError::new(format!(
                    "slice of channels {start}..{} of {}",
                    start.saturating_add(*len),
                    fmt_shape(x)
                )));
            }
            let mut out = x.to_vec();
            out[1] = *len;
            Ok(out)
        }
        Op::ChannelShuffle { groups } => {
            expect_4d(op, x)?;
            if *groups == 0 || x[1] % groups != 0 {
                return Err(ShapeError::new(format!(
                    "channel_shuffle with groups={groups} needs the channels of {} divisible by it",
                    fmt_shape(x)
                )));
            }
            Ok(x.to_vec())
        }
        Op::Permute { perm } => {
            let mut seen = vec![false; x.len()];
            let valid =
                perm.len() == x.len() && perm.iter().all(|&d| d < x.len() && !std::mem::replace(&mut seen[d], true));
            if !valid {
                let dims: Vec<String> = perm.iter().map(|d| d.to_string()).collect();
                return Err(ShapeError::new(format!(
                    "permute({}) is not a permutation of the {} dimensions of {}",
                    dims.join(", "),
                    x.len(),
                    fmt_shape(x)
                ))
                .with_help(format!("name each of 0..{} once", x.len())));
            }
            Ok(perm.iter().map(|&d| x[d]).collect())
        }
        Op::LayerNormLast { dims, .. } => {
            if *dims < 2 || *dims >= x.len() {
                return Err(ShapeError::new(format!(
                    "layer_norm over the last {dims} dimensions of {}: name 2 to {} (never the batch)",
                    fmt_shape(x),
                    x.len().saturating_sub(1)
                )));
            }
            Ok(x.to_vec())
        }
        Op::LayerNorm { axis, .. } => {
            if x.len() < 2 || *axis == 0 || *axis >= x.len() {
                return Err(ShapeError::new(format!("layer_norm over dimension {axis} of {}", fmt_shape(x))));
            }
            Ok(x.to_vec())
        }
        Op::Scale => {
            expect_4d(op, x)?;
            Ok(x.to_vec())
        }
    }
}
