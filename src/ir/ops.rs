//! The operators of the IR and their attributes, already resolved (no defaults left).

use std::fmt;

/// A pair of sizes for the two spatial dimensions, height first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hw {
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub fn new(h: usize, w: usize) -> Hw {
        Hw { h, w }
    }
    pub fn square(n: usize) -> Hw {
        Hw { h: n, w: n }
    }
}

impl fmt::Display for Hw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

/// Padding of a window op, per side. `same` padding may be asymmetric (the odd pixel
/// goes to the bottom/right, as ONNX's `SAME_UPPER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pad {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pad {
    pub fn symmetric(hw: Hw) -> Pad {
        Pad { top: hw.h, left: hw.w, bottom: hw.h, right: hw.w }
    }
    pub fn is_zero(&self) -> bool {
        *self == Pad::symmetric(Hw::square(0))
    }
}

impl fmt::Display for Pad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.top == self.bottom && self.left == self.right {
            write!(f, "{}x{}", self.top, self.left)
        } else {
            write!(f, "{},{},{},{}", self.top, self.left, self.bottom, self.right)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub out_channels: usize,
    pub kernel: Hw,
    pub stride: Hw,
    pub pad: Pad,
    pub dilation: Hw,
    pub groups: usize,
    pub bias: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kernel: Hw,
    pub stride: Hw,
    pub pad: Pad,
    /// The taps of a window are `dilation` apart (PyTorch's `MaxPool2d(dilation=)`;
    /// for average pooling ONNX's `AveragePool` `dilations`, which PyTorch lacks).
    pub dilation: Hw,
    /// PyTorch's `ceil_mode`; the output shape on the node already accounts for it.
    pub ceil: bool,
    /// Average pooling only: whether padded positions count in the divisor.
    pub count_pad: bool,
}

/// An elementwise activation: a standalone op (`Op::Activation`) or a stage of another
/// op's epilogue. Everything an activation is lives here and in its match arms: its
/// name and attributes in the language and the IR text, and (in the interpreter, the
/// ONNX exporter and the backends) its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu {
        slope: f64,
    },
    Sigmoid,
    Tanh,
    /// `hardtanh(min, max)` (nn.Hardtanh): `min(max(x, min), max)`, NaN passing
    /// through; `relu6` is `Clamp { min: 0, max: 6 }`. Invariant: `min < max`.
    Clamp {
        min: f64,
        max: f64,
    },
    /// nn.Hardswish: `x * relu6(x + 3) / 6`.
    HardSwish,
    /// nn.Hardsigmoid: `relu6(x + 3) / 6`.
    HardSigmoid,
    /// ONNX's `HardSigmoid(alpha, beta)`: `min(max(alpha * x + beta, 0), 1)`, NaN passing
    /// through (`hardsigmoid(alpha=, beta=)`; ONNX's defaults are 0.2 and 0.5).
    /// Invariant: `alpha` and `beta` finite.
    HardSigmoidAffine {
        alpha: f64,
        beta: f64,
    },
    /// nn.SiLU: `x * sigmoid(x)`.
    Silu,
    /// nn.GELU: `x * Phi(x)` with the normal CDF through erf, or with
    /// `approximate='tanh'` when `tanh`.
    Gelu {
        tanh: bool,
    },
    /// `torch.erf`: the error function (ONNX's `Erf`).
    Erf,
}

impl Activation {
    /// The activation an op computes, if it is one.
    pub fn of(op: &Op) -> Option<Activation> {
        match op {
            Op::Activation(activation) => Some(*activation),
            _ => None,
        }
    }

    /// The activation's name in the IR text: `relu6` for `Clamp { 0, 6 }`, else the
    /// op's name in the language.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Clamp { min, max } if *min == 0.0 && *max == 6.0 => "relu6",
            Activation::Clamp { .. } => "hardtanh",
            Activation::HardSwish => "hardswish",
            Activation::HardSigmoid | Activation::HardSigmoidAffine { .. } => "hardsigmoid",
            Activation::Silu => "silu",
            Activation::Gelu { .. } => "gelu",
            Activation::Erf => "erf",
        }
    }

    /// The attributes in the IR text (empty for none).
    pub fn attributes(&self) -> String {
        match self {
            Activation::LeakyRelu { slope } => format!("slope={slope}"),
            Activation::Clamp { min, max } if !(*min == 0.0 && *max == 6.0) => format!("min={min} max={max}"),
            Activation::Gelu { tanh: true } => "tanh=true".into(),
            Activation::HardSigmoidAffine { alpha, beta } => format!("alpha={alpha} beta={beta}"),
            _ => String::new(),
        }
    }

    /// The name with its attributes, as an epilogue prints it: `leaky_relu(slope=0.2)`.
    pub fn name(&self) -> String {
        let attributes = self.attributes();
        if attributes.is_empty() { self.mnemonic().into() } else { format!("{}({attributes})", self.mnemonic()) }
    }
}

/// What a kernel does to its result before storing it, in this order: `activation`,
/// then `+ residual` (the node's last operand, of the kernel's own output shape), then
/// `post_activation`, then `pool`; and one stage before the op, `gate`. Written by
/// `fuse_epilogues` and, for backends that can run them, `fuse_pooling` and
/// `fuse_gates`; empty as elaborated.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Epilogue {
    /// The op's input multiplied first by a gate of one value per image and input
    /// channel, `[N, C, 1, 1]` (squeeze-and-excitation's `x * s` before the 1x1 conv that
    /// reads it), rounded to f32 as a `mul` would: the operand right after the op's own
    /// (before any residual). Written by `fuse_gates` for backends that run it.
    /// Invariant (`ir::verify`): only a conv of one group takes one, on a 4-D input,
    /// and the gate's shape is `[N, C, 1, 1]` for that input's `N` and `C`.
    pub gate: bool,
    pub activation: Option<Activation>,
    pub residual: bool,
    pub post_activation: Option<Activation>,
    /// Pooling over the kernel's values after everything above.
    /// Invariant (`ir::verify`): only a conv carries one, and the node's shape is then
    /// the POOLED shape (`shape::infer_node`); its residual, if any, has the conv's own
    /// output shape, since the add comes before the pooling.
    pub pool: Option<PoolEpilogue>,
}

impl Epilogue {
    pub fn is_empty(&self) -> bool {
        *self == Epilogue::default()
    }
}

/// A windowed max or average pooling run as the last stage of an epilogue: exactly the
/// `max_pool`/`avg_pool` op it replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolEpilogue {
    pub kind: PoolKind,
    pub window: Pool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

impl PoolEpilogue {
    /// The pooling an op computes, if it is a windowed one (global and adaptive pools
    /// are not).
    pub fn of(op: &Op) -> Option<PoolEpilogue> {
        match op {
            Op::MaxPool(window) => Some(PoolEpilogue { kind: PoolKind::Max, window: window.clone() }),
            Op::AvgPool(window) => Some(PoolEpilogue { kind: PoolKind::Avg, window: window.clone() }),
            _ => None,
        }
    }

    /// The standalone op that computes the same pooling: shape inference, the
    /// interpreter and the printer go through it, so that the fused stage and the op
    /// cannot drift apart.
    pub fn op(&self) -> Op {
        match self.kind {
            PoolKind::Max => Op::MaxPool(self.window.clone()),
            PoolKind::Avg => Op::AvgPool(self.window.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A network input; `name` is the name written after `input`.
    Input {
        name: String,
    },
    Conv(Conv),
    Linear {
        out_features: usize,
        bias: bool,
    },
    BatchNorm {
        eps: f64,
    },
    /// An elementwise activation.
    Activation(Activation),
    /// Softmax over dimension 1.
    Softmax,
    MaxPool(Pool),
    AvgPool(Pool),
    GlobalAvgPool,
    GlobalMaxPool,
    AdaptiveAvgPool {
        out: Hw,
    },
    Dropout {
        p: f64,
    },
    Dropout2d {
        p: f64,
    },
    /// torchvision's `StochasticDepth`: the identity at inference, like dropout.
    StochasticDepth {
        p: f64,
    },
    Flatten,
    /// `x.reshape(N, *shape)`: the same values in row-major order under another shape,
    /// the batch kept (`shape` is the output's dimensions after the batch).
    Reshape {
        shape: Vec<usize>,
    },
    /// `nn.Identity`: the value itself.
    Identity,
    /// `x.mean(dims, keepdim)`: the mean over `dims` (ascending, distinct, never the
    /// batch), which stay as size 1 when `keepdim`, else go.
    Mean {
        dims: Vec<usize>,
        keepdim: bool,
    },
    /// Elementwise sum of its operands, broadcasting size-1 dimensions.
    Add,
    /// Elementwise product of its operands, broadcasting size-1 dimensions.
    Mul,
    /// Concatenation along dimension 1.
    Concat,
    Lrn {
        size: usize,
        alpha: f64,
        beta: f64,
        k: f64,
    },
    /// Per-channel `x * scale + shift` (dimension 1): a BatchNorm with nothing to fold
    /// into, after `fold_batchnorm`.
    ScaleShift,
    /// Channels `start .. start + len` of dimension 1: one part of `chunk` or `split`.
    Slice {
        start: usize,
        len: usize,
    },
    /// torchvision's `channel_shuffle`: output channel `i * groups + j` is input channel
    /// `j * (C / groups) + i`.
    ChannelShuffle {
        groups: usize,
    },
    /// `torch.permute`: output dimension `d` is input dimension `perm[d]`.
    Permute {
        perm: Vec<usize>,
    },
    /// Layer normalization over one dimension, `axis`: the last (`nn.LayerNorm`) or 1
    /// (torchvision's `LayerNorm2d`), with an elementwise affine `weight` and `bias`.
    LayerNorm {
        eps: f64,
        axis: usize,
    },
    /// `nn.LayerNorm(x.shape[-dims:], eps)`: layer normalization over the last `dims`
    /// dimensions together (`dims >= 2`; one is `LayerNorm`), with an elementwise affine
    /// `weight` and `bias` of those dimensions' shape.
    LayerNormLast {
        eps: f64,
        dims: usize,
    },
    /// A learned per-channel multiplier of shape `[C, 1, 1]` (ConvNeXt's `layer_scale`),
    /// named by the layer's path itself.
    Scale,
}

/// What a weight tensor is for; its name suffix in a `state_dict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamRole {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
    Scale,
    Shift,
    /// A bare `nn.Parameter` of the layer: its name is the layer's path, no suffix.
    Parameter,
}

impl ParamRole {
    pub fn suffix(self) -> &'static str {
        match self {
            ParamRole::Weight => "weight",
            ParamRole::Bias => "bias",
            ParamRole::RunningMean => "running_mean",
            ParamRole::RunningVar => "running_var",
            ParamRole::Scale => "scale",
            ParamRole::Shift => "shift",
            ParamRole::Parameter => "",
        }
    }

    /// The parameter's name in the `state_dict` for the layer at `path`.
    pub fn name(self, path: &str) -> String {
        match self.suffix() {
            "" => path.to_string(),
            suffix => format!("{path}.{suffix}"),
        }
    }

    /// Whether the parameter is learned by gradient descent (counted in "learnable
    /// parameters"); BatchNorm's running statistics are buffers, not parameters.
    pub fn is_learnable(self) -> bool {
        matches!(self, ParamRole::Weight | ParamRole::Bias | ParamRole::Parameter)
    }
}

impl Op {
    /// The op's name as written in the language.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv(_) => "conv",
            Op::Linear { .. } => "linear",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Activation(activation) => activation.mnemonic(),
            Op::Softmax => "softmax",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::GlobalMaxPool => "global_max_pool",
            Op::AdaptiveAvgPool { .. } => "adaptive_avg_pool",
            Op::Dropout { .. } => "dropout",
            Op::Dropout2d { .. } => "dropout2d",
            Op::StochasticDepth { .. } => "stochastic_depth",
            Op::Flatten => "flatten",
            Op::Reshape { .. } => "reshape",
            Op::Identity => "identity",
            Op::Mean { .. } => "mean",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Concat => "concat",
            Op::Lrn { .. } => "lrn",
            Op::ScaleShift => "scale_shift",
            Op::Slice { .. } => "slice",
            Op::ChannelShuffle { .. } => "channel_shuffle",
            Op::Permute { .. } => "permute",
            Op::LayerNorm { .. } | Op::LayerNormLast { .. } => "layer_norm",
            Op::Scale => "scale",
        }
    }

    /// The parameter tensors the op reads, with their shapes, given its input shape.
    pub fn param_shapes(&self, input: &[usize]) -> Vec<(ParamRole, Vec<usize>)> {
        match self {
            Op::Conv(c) => {
                let in_channels = input.get(1).copied().unwrap_or(0);
                let mut v = vec![(
                    ParamRole::Weight,
                    vec![c.out_channels, in_channels / c.groups.max(1), c.kernel.h, c.kernel.w],
                )];
                if c.bias {
                    v.push((ParamRole::Bias, vec![c.out_channels]));
                }
                v
            }
            Op::Linear { out_features, bias } => {
                // nn.Linear acts on the last dimension, whatever the rank.
                let in_features = input.last().copied().unwrap_or(0);
                let mut v = vec![(ParamRole::Weight, vec![*out_features, in_features])];
                if *bias {
                    v.push((ParamRole::Bias, vec![*out_features]));
                }
                v
            }
            Op::BatchNorm { .. } => {
                let c = input.get(1).copied().unwrap_or(0);
                vec![
                    (ParamRole::Weight, vec![c]),
                    (ParamRole::Bias, vec![c]),
                    (ParamRole::RunningMean, vec![c]),
                    (ParamRole::RunningVar, vec![c]),
                ]
            }
            Op::ScaleShift => {
                let c = input.get(1).copied().unwrap_or(0);
                vec![(ParamRole::Scale, vec![c]), (ParamRole::Shift, vec![c])]
            }
            Op::LayerNormLast { dims, .. } => {
                let trailing = input[input.len().saturating_sub(*dims)..].to_vec();
                vec![(ParamRole::Weight, trailing.clone()), (ParamRole::Bias, trailing)]
            }
            Op::LayerNorm { axis, .. } => {
                let c = input.get(*axis).copied().unwrap_or(0);
                vec![(ParamRole::Weight, vec![c]), (ParamRole::Bias, vec![c])]
            }
            Op::Scale => {
                let c = input.get(1).copied().unwrap_or(0);
                vec![(ParamRole::Parameter, vec![c, 1, 1])]
            }
            _ => Vec::new(),
        }
    }

    /// Whether the op reads weights (and so owns a name prefix in the `state_dict`).
    pub fn is_weighted(&self) -> bool {
        matches!(
            self,
            Op::Conv(_)
                | Op::Linear { .. }
                | Op::BatchNorm { .. }
                | Op::ScaleShift
                | Op::LayerNorm { .. }
                | Op::LayerNormLast { .. }
                | Op::Scale
        )
    }

    /// Whether the op takes a variable number of operands.
    pub fn is_merge(&self) -> bool {
        matches!(self, Op::Add | Op::Mul | Op::Concat)
    }

    /// The op's attributes in the IR's text form (empty for ops without any).
    pub fn attributes(&self) -> String {
        match self {
            Op::Input { name } => name.clone(),
            Op::Conv(c) => {
                let mut s = format!("out={} kernel={} stride={} pad={}", c.out_channels, c.kernel, c.stride, c.pad);
                if c.dilation != Hw::square(1) {
                    s += &format!(" dilation={}", c.dilation);
                }
                if c.groups != 1 {
                    s += &format!(" groups={}", c.groups);
                }
                if !c.bias {
                    s += " bias=false";
                }
                s
            }
            Op::Linear { out_features, bias } => {
                format!("out={}{}", out_features, if *bias { "" } else { " bias=false" })
            }
            Op::BatchNorm { eps } => format!("eps={eps:e}"),
            Op::Activation(activation) => activation.attributes(),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let mut s = format!("kernel={} stride={} pad={}", p.kernel, p.stride, p.pad);
                if p.dilation != Hw::square(1) {
                    s += &format!(" dilation={}", p.dilation);
                }
                if p.ceil {
                    s += " ceil=true";
                }
                if p.count_pad && matches!(self, Op::AvgPool(_)) {
                    s += " count_pad=true";
                }
                s
            }
            Op::AdaptiveAvgPool { out } => format!("out={out}"),
            Op::Dropout { p } | Op::Dropout2d { p } | Op::StochasticDepth { p } => format!("p={p}"),
            Op::Lrn { size, alpha, beta, k } => format!("size={size} alpha={alpha:e} beta={beta} k={k}"),
            Op::Slice { start, len } => format!("start={start} len={len}"),
            Op::ChannelShuffle { groups } => format!("groups={groups}"),
            Op::Permute { perm } => {
                format!("perm={}", perm.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
            }
            Op::LayerNorm { eps, axis } => format!("eps={eps:e} axis={axis}"),
            Op::LayerNormLast { eps, dims } => format!("eps={eps:e} dims={dims}"),
            Op::Reshape { shape } => {
                format!("shape={}", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
            }
            Op::Mean { dims, keepdim } => {
                format!("dims={} keepdim={keepdim}", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
            }
            _ => String::new(),
        }
    }
}
