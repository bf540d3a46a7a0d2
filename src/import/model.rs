//! Reading an ONNX file: the protobuf parsed and checked, constant tensors decoded
//! within limits, and the constant arithmetic that exporters leave in the graph (PyTorch's
//! `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` for a flatten, `Constant` nodes,
//! a transposed weight) folded into constants.
//!
//! Nothing here allocates by a number read from the file before checking it against the
//! bytes actually present or a fixed cap ([`MAX_FOLDED_ELEMENTS`]).

use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};
use protobuf::Enum;

use super::ImportError;

/// A folded constant (a shape, an index list) may have at most this many elements;
/// the weights are decoded from bytes present in the file and need no cap.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 16;

/// The opsets the importer reads (ONNX's default domain). Opsets 22 to 25 changed the
/// operators read here only by admitting more element types (bfloat16, the 8-, 4- and
/// 2-bit types); their float semantics are those of opset 21.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=25;

/// A constant tensor: an initializer, a `Constant` node's value, or a folded result.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
    /// The initializer it came from (through a transpose, say), for layer names.
    pub origin: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Const {
    pub fn f32(dims: Vec<usize>, data: Vec<f32>) -> Const {
        Const { dims, data: Data::F32(data), origin: None }
    }
    pub fn i64(dims: Vec<usize>, data: Vec<i64>) -> Const {
        Const { dims, data: Data::I64(data), origin: None }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }
    /// The values as integers (floats only when they are whole numbers).
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::F32(v) => v.iter().map(|&x| (x.fract() == 0.0 && x.abs() < 9e15).then_some(x as i64)).collect(),
        }
    }
    /// The values as floats.
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The single value of a one-element tensor, as a float.
    pub fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.floats()[0])
    }
}

/// Parses the bytes as an ONNX `ModelProto` and checks what the importer relies on: a
/// graph, a default-domain opset it knows.
pub fn parse(bytes: &[u8]) -> Result<(ModelProto, i64), ImportError> {
    if bytes.is_empty() {
        return Err(ImportError::new("the file is empty, not an ONNX model"));
    }
    let model = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| ImportError::new(format!("not an ONNX model (the protobuf does not parse: {e})")))?;
    if model.graph.is_none() {
        return Err(ImportError::new("not an ONNX model: it has no graph"));
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| ImportError::new("the model imports no opset of ONNX's default domain"))?;
    if !OPSETS.contains(&opset) {
        return Err(ImportError::new(format!(
            "the model uses opset {opset}; cnnc imports opsets {} to {}",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if let Some(other) = model.opset_import.iter().find(|o| !(o.domain.is_empty() || o.domain == "ai.onnx")) {
        let graph = model.graph.as_ref().expect("checked above");
        if let Some(node) = graph.node.iter().find(|n| n.domain == other.domain) {
            return Err(ImportError::node(
                node,
                format!("operators of domain `{}` are not supported (only ONNX's default domain)", node.domain),
            ));
        }
    }
    Ok((model, opset))
}

/// Element count of `dims`, refusing negative dimensions and overflow.
fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

/// Decodes a `TensorProto` (float, double, float16 or integer) into a [`Const`]; the
/// element count must match the data present.
pub fn tensor(t: &TensorProto) -> Result<Const, String> {
    if t.data_location.enum_value_or_default() == DataLocation::EXTERNAL || !t.external_data.is_empty() {
        return Err(format!("tensor `{}` keeps its data in an external file, which cnnc does not read", t.name));
    }
    let n = element_count(&t.dims).ok_or_else(|| format!("tensor `{}` has invalid dimensions {:?}", t.name, t.dims))?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let raw = &t.raw_data;
    let wrong = |have: usize| format!("tensor `{}` has {have} values for its {n} elements ({:?})", t.name, t.dims);
    let data_type = DataType::from_i32(t.data_type).unwrap_or(DataType::UNDEFINED);
    let from_raw = |width: usize| -> Result<bool, String> {
        if raw.is_empty() {
            return Ok(false);
        }
        if raw.len() / width != n || !raw.len().is_multiple_of(width) {
            return Err(wrong(raw.len() / width));
        }
        Ok(true)
    };
    let mut c = match data_type {
        DataType::FLOAT => {
            if from_raw(4)? {
                Const::f32(dims, raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            } else if t.float_data.len() == n {
                Const::f32(dims, t.float_data.clone())
            } else {
                return Err(wrong(t.float_data.len()));
            }
        }
        DataType::DOUBLE => {
            if from_raw(8)? {
                let v = raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32);
                Const::f32(dims, v.collect())
            } else if t.double_data.len() == n {
                Const::f32(dims, t.double_data.iter().map(|&x| x as f32).collect())
            } else {
                return Err(wrong(t.double_data.len()));
            }
        }
        DataType::FLOAT16 => {
            if from_raw(2)? {
                let v = raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32());
                Const::f32(dims, v.collect())
            } else if t.int32_data.len() == n {
                Const::f32(dims, t.int32_data.iter().map(|&x| half::f16::from_bits(x as u16).to_f32()).collect())
            } else {
                return Err(wrong(t.int32_data.len()));
            }
        }
        DataType::INT64 => {
            if from_raw(8)? {
                Const::i64(
                    dims,
                    raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
                )
            } else if t.int64_data.len() == n {
                Const::i64(dims, t.int64_data.clone())
            } else {
                return Err(wrong(t.int64_data.len()));
            }
        }
        DataType::INT32 | DataType::INT8 | DataType::UINT8 | DataType::INT16 | DataType::BOOL => {
            let width = match data_type {
                DataType::INT32 => 4,
                DataType::INT16 => 2,
                _ => 1,
            };
            if from_raw(width)? {
                let v = raw.chunks_exact(width).map(|b| match width {
                    4 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                    2 => i16::from_le_bytes([b[0], b[1]]) as i64,
                    _ if data_type == DataType::INT8 => b[0] as i8 as i64,
                    _ => b[0] as i64,
                });
                Const::i64(dims, v.collect())
            } else if t.int32_data.len() == n {
                Const::i64(dims, t.int32_data.iter().map(|&x| x as i64).collect())
            } else {
                return Err(wrong(t.int32_data.len()));
            }
        }
        other => return Err(format!("tensor `{}` has element type {other:?}, which cnnc does not read", t.name)),
    };
    c.origin = Some(t.name.clone());
    Ok(c)
}

/// An attribute of a node, by name.
pub fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i).unwrap_or(default)
}

pub fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map(|a| a.f).unwrap_or(default)
}

pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Broadcasts and applies `f` elementwise over two small constants (numpy rules).
fn broadcast(a: &Const, b: &Const, f: impl Fn(f64, f64) -> f64) -> Result<Const, String> {
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - d.len()).chain(d.iter().copied()).collect() };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut out = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        out.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims)),
        });
    }
    let n = out.iter().product::<usize>();
    if n > MAX_FOLDED_ELEMENTS {
        return Err(format!("a folded constant of {n} elements is too large"));
    }
    let (fa, fb) = (a.floats(), b.floats());
    let index = |dims: &[usize], mut flat: usize| -> usize {
        let mut idx = 0;
        let mut stride = 1;
        for k in (0..rank).rev() {
            let i = flat % out[k];
            flat /= out[k];
            if dims[k] != 1 {
                idx += i * stride;
            }
            stride *= dims[k];
        }
        idx
    };
    let values: Vec<f64> = (0..n).map(|i| f(fa[index(&da, i)] as f64, fb[index(&db, i)] as f64)).collect();
    Ok(match (&a.data, &b.data) {
        (Data::I64(_), Data::I64(_)) => Const::i64(out, values.iter().map(|&v| v as i64).collect()),
        _ => Const::f32(out, values.iter().map(|&v| v as f32).collect()),
    })
}

/// Transposes a constant by `perm`.
pub fn transpose(c: &Const, perm: &[usize]) -> Result<Const, String> {
    let rank = c.dims.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(format!("perm {perm:?} does not fit a tensor of rank {rank}"));
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| c.dims[p]).collect();
    let mut strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * c.dims[k + 1];
    }
    let n = c.len();
    let source_index = |mut flat: usize| -> usize {
        let mut idx = 0;
        for k in (0..rank).rev() {
            let i = flat % out_dims[k];
            flat /= out_dims[k];
            idx += i * strides[perm[k]];
        }
        idx
    };
    let data = match &c.data {
        Data::F32(v) => Data::F32((0..n).map(|i| v[source_index(i)]).collect()),
        Data::I64(v) => Data::I64((0..n).map(|i| v[source_index(i)]).collect()),
    };
    Ok(Const { dims: out_dims, data, origin: c.origin.clone() })
}

/// Normalizes a possibly negative axis against `rank`.
pub fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Folds a node whose inputs are all constants, if its op is one of the shape and
/// index ops exporters leave behind. `Ok(None)`: not a foldable op.
pub fn fold(node: &NodeProto, inputs: &[Option<&Const>], opset: i64) -> Result<Option<Vec<Const>>, String> {
    let get = |i: usize| -> Result<&Const, String> {
        inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    };
    let one = |c: Const| Ok(Some(vec![c]));
    match node.op_type.as_str() {
        "Identity" | "Dropout" => one(get(0)?.clone()),
        "Cast" => {
            let c = get(0)?;
            let to = DataType::from_i32(attr_int(node, "to", 1) as i32).unwrap_or(DataType::UNDEFINED);
            match to {
                DataType::FLOAT | DataType::DOUBLE | DataType::FLOAT16 => one(Const::f32(c.dims.clone(), c.floats())),
                DataType::INT64 | DataType::INT32 => {
                    one(Const::i64(c.dims.clone(), c.floats().iter().map(|&x| x as i64).collect()))
                }
                _ => Err(format!("Cast to {to:?} is not supported")),
            }
        }
        "CastLike" => {
            let (c, like) = (get(0)?, get(1)?);
            match like.data {
                Data::F32(_) => {
                    one(Const { dims: c.dims.clone(), data: Data::F32(c.floats()), origin: c.origin.clone() })
                }
                Data::I64(_) => one(Const::i64(c.dims.clone(), c.floats().iter().map(|&x| x as i64).collect())),
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let c = get(0)?;
            let axes = if opset >= 13 {
                match inputs.get(1).copied().flatten() {
                    Some(a) => a.ints().unwrap_or_default(),
                    None => Vec::new(),
                }
            } else {
                attr_ints(node, "axes").unwrap_or_default()
            };
            let mut dims = c.dims.clone();
            if node.op_type == "Unsqueeze" {
                let rank = dims.len() + axes.len();
                let mut axes: Vec<usize> =
                    axes.iter().map(|&a| axis(a, rank).ok_or("axis out of range")).collect::<Result<_, _>>()?;
                axes.sort_unstable();
                for a in axes {
                    dims.insert(a.min(dims.len()), 1);
                }
            } else if axes.is_empty() {
                dims.retain(|&d| d != 1);
            } else {
                let rank = dims.len();
                let mut axes: Vec<usize> =
                    axes.iter().map(|&a| axis(a, rank).ok_or("axis out of range")).collect::<Result<_, _>>()?;
                axes.sort_unstable();
                for a in axes.into_iter().rev() {
                    if dims[a] != 1 {
                        return Err(format!("cannot squeeze dimension {a} of size {}", dims[a]));
                    }
                    dims.remove(a);
                }
            }
            one(Const { dims, data: c.data.clone(), origin: c.origin.clone() })
        }
        "Concat" => {
            let rank = get(0)?.dims.len();
            let a = axis(attr_int(node, "axis", 0), rank.max(1)).ok_or("axis out of range")?;
            if rank > 1 && a != 0 {
                return Err("folding a Concat of constants along a dimension other than the first".into());
            }
            let mut ints = Vec::new();
            let mut floats = Vec::new();
            let mut all_int = true;
            for i in 0..inputs.len() {
                let c = get(i)?;
                all_int &= matches!(c.data, Data::I64(_));
                floats.extend(c.floats());
                ints.extend(c.ints().unwrap_or_default());
                if floats.len() > MAX_FOLDED_ELEMENTS {
                    return Err("a folded constant is too large".into());
                }
            }
            let mut dims = get(0)?.dims.clone();
            if dims.is_empty() {
                dims.push(0);
            }
            dims[0] = floats.len() / dims[1..].iter().product::<usize>().max(1);
            one(if all_int { Const::i64(dims, ints) } else { Const::f32(dims, floats) })
        }
        "Gather" => {
            let (data, indices) = (get(0)?, get(1)?);
            if data.dims.len() != 1 {
                return Err("folding a Gather of a constant of rank other than 1".into());
            }
            let n = data.len() as i64;
            let picked: Vec<usize> = indices
                .ints()
                .ok_or("indices are not integers")?
                .iter()
                .map(|&i| {
                    let i = if i < 0 { i + n } else { i };
                    (0..n).contains(&i).then_some(i as usize).ok_or("index out of range")
                })
                .collect::<Result<_, _>>()?;
            let data = match &data.data {
                Data::F32(v) => Data::F32(picked.iter().map(|&i| v[i]).collect()),
                Data::I64(v) => Data::I64(picked.iter().map(|&i| v[i]).collect()),
            };
            one(Const { dims: indices.dims.clone(), data, origin: None })
        }
        "Reshape" => {
            let (c, shape) = (get(0)?, get(1)?);
            let shape = shape.ints().ok_or("the shape is not integers")?;
            let dims = resolve_reshape(&c.dims, &shape)?;
            one(Const { dims, data: c.data.clone(), origin: c.origin.clone() })
        }
        "Transpose" => {
            let c = get(0)?;
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                Some(p) => p
                    .iter()
                    .map(|&p| usize::try_from(p).map_err(|_| "negative perm".to_string()))
                    .collect::<Result<_, _>>()?,
                None => (0..c.dims.len()).rev().collect(),
            };
            one(transpose(c, &perm)?)
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (get(0)?, get(1)?);
            let int = matches!((&a.data, &b.data), (Data::I64(_), Data::I64(_)));
            let c = match node.op_type.as_str() {
                "Add" => broadcast(a, b, |x, y| x + y)?,
                "Sub" => broadcast(a, b, |x, y| x - y)?,
                "Mul" => broadcast(a, b, |x, y| x * y)?,
                _ if int => broadcast(a, b, |x, y| if y == 0.0 { 0.0 } else { (x / y).floor() })?,
                _ => broadcast(a, b, |x, y| x / y)?,
            };
            one(c)
        }
        "Sqrt" => {
            let c = get(0)?;
            one(Const::f32(c.dims.clone(), c.floats().iter().map(|x| x.sqrt()).collect()))
        }
        _ => Ok(None),
    }
}

/// The dimensions a `Reshape` to `shape` gives a tensor of `dims` (0 copies, one -1
/// inferred).
pub fn resolve_reshape(dims: &[usize], shape: &[i64]) -> Result<Vec<usize>, String> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(*dims.get(i).ok_or("a 0 in the shape past the input's rank")?),
            s if s > 0 => out.push(usize::try_from(s).map_err(|_| "dimension too large")?),
            _ => return Err(format!("invalid shape {shape:?}")),
        }
    }
    let known = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("the shape overflows")?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {dims:?} to {shape:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {dims:?} ({total} elements) to {shape:?}"));
    }
    Ok(out)
}
