//! Weights: the tensors a network reads, by dotted `state_dict` name.
//!
//! - [`load_safetensors`] reads a safetensors file (as `safetensors.torch.save_file(
//!   model.state_dict(), path)` writes it) and binds it strictly to a graph, the way
//!   PyTorch's `load_state_dict(strict=True)` does: one error lists every missing,
//!   unexpected and mis-shaped tensor.
//! - [`save_safetensors`] writes weights as f32 (for tests and tools).
//! - [`random_weights`] and [`random_normal`] make deterministic random tensors from a seed.
//!
//! A weights file is never trusted: every size, offset and count in it is checked against
//! the file's length before anything is sliced or allocated, so a malformed file is a
//! [`WeightsError`], never a panic or a huge allocation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::ir::shape::fmt_shape;
use crate::ir::{Graph, Op, ParamRole};
use crate::tensor::Tensor;

mod mismatch;

/// Layers listed on each side of a weights mismatch unless all are asked for.
pub const DEFAULT_LISTED_LAYERS: usize = mismatch::DEFAULT_ROWS;

/// The weight tensors of a network, keyed by full parameter name
/// (`layer2.0.downsample.1.running_var`). Bound to a graph: every parameter the graph
/// reads is present with the shape the graph expects.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }
}

/// A weights file that cannot be read or does not fit the network. The message is complete
/// and meant for the user (several lines when several tensors are wrong); it names neither
/// the file nor says "error", which the caller adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsError(pub String);

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WeightsError {}

fn malformed(what: impl fmt::Display) -> WeightsError {
    WeightsError(format!("not a valid safetensors file: {what}"))
}

/// One tensor of a validated file: its dtype and shape, and its bytes.
struct Entry<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

/// The dtype names a safetensors header may hold (the `Dtype` variants of safetensors 0.8)
/// with their sizes in bits.
const DTYPES: [(&str, u64); 22] = [
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("F8_E4M3FNUZ", 8),
    ("F8_E5M2FNUZ", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
];

/// Checks the header of a safetensors file before the safetensors crate sees it.
///
/// What the safetensors crate (0.8, `SafeTensors::read_metadata`) validates itself: the
/// 8-byte length prefix is present, the header is at most 100 MB and lies inside the
/// buffer, is UTF-8 and JSON of the right form, every dtype is known, the tensors' offsets
/// are contiguous from 0 (no overlap, no gap), each tensor's byte size equals its shape's
/// element count times its dtype size (with overflow checks), and the data ends exactly at
/// the end of the file.
///
/// What it does not, and this function adds: it computes `buffer_end + 8 + header_len`
/// unchecked, so a header whose offsets reach near `usize::MAX` makes a debug build panic
/// on overflow; here every offset is checked against the data length first. The rest is
/// checked here again only to name the offending tensor in the message (the crate's
/// errors mostly do not).
fn check_header(bytes: &[u8]) -> Result<(), WeightsError> {
    let Some(prefix) = bytes.get(..8) else {
        return Err(malformed(format!(
            "the file is {} bytes long, shorter than the 8-byte header length that starts every safetensors file",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let rest = (bytes.len() - 8) as u64;
    if header_len > rest
        && let Some(kind) = torch_save_format(bytes)
    {
        return Err(WeightsError(format!(
            "this is a PyTorch file written by `torch.save` ({kind}), not safetensors; convert it once with\n  \
             python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('FILE.pt', map_location='cpu'), 'FILE.safetensors')\"\n\
             (for a whole pickled model rather than a state_dict, save `model.state_dict()`)"
        )));
    }
    if header_len > rest {
        return Err(malformed(format!(
            "the header length is {header_len} bytes but only {rest} bytes follow (the file is truncated or not safetensors)"
        )));
    }
    let header = &bytes[8..8 + header_len as usize];
    let data_len = rest - header_len;
    let text = std::str::from_utf8(header).map_err(|e| malformed(format!("the header is not UTF-8 ({e})")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| malformed(format!("the header is not valid JSON ({e})")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(malformed("the header is not a JSON object"));
    };
    // (start, end, name) of every tensor, to check the layout once all are read.
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| malformed(format!("tensor `{name}` {what}"));
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("has no dtype"))?;
        let Some(&(_, bits)) = DTYPES.iter().find(|(n, _)| *n == dtype) else {
            return Err(bad(&format!("has unknown dtype `{dtype}`")));
        };
        let shape: Vec<u64> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("has no shape, or a shape that is not a list of non-negative integers"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.iter().map(|x| x.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("has no data_offsets, or data_offsets that are not two non-negative integers"))?;
        let (start, end) = (offsets[0], offsets[1]);
        if start > end || end > data_len {
            return Err(bad(&format!(
                "has data offsets [{start}, {end}] outside the {data_len} bytes of data in the file (truncated?)"
            )));
        }
        let size = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(bits))
            .map(|b| b.div_ceil(8));
        if size != Some(end - start) {
            let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
            return Err(bad(&format!(
                "of dtype {dtype} and shape [{}] does not fit its {} bytes of data",
                dims.join(", "),
                end - start
            )));
        }
        spans.push((start, end, name));
    }
    spans.sort_unstable();
    let mut at = 0u64;
    let mut previous: Option<&str> = None;
    for &(start, end, name) in &spans {
        if start < at {
            return Err(malformed(format!(
                "the data of tensors `{}` and `{name}` overlap",
                previous.expect("overlap needs a previous tensor")
            )));
        }
        if start > at {
            return Err(malformed(format!("bytes {at}..{start} of the data belong to no tensor")));
        }
        at = end;
        previous = Some(name);
    }
    if at != data_len {
        return Err(malformed(format!(
            "the tensors cover {at} bytes of data but the file holds {data_len} bytes after the header"
        )));
    }
    Ok(())
}

/// What `torch.save` wrote, recognised by its first bytes: a zip archive (PyTorch 1.6 and
/// later) or a bare pickle (the legacy format, protocol 2 and up).
fn torch_save_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"PK\x03\x04") {
        Some("a zip archive")
    } else if bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|p| (2..=5).contains(p)) {
        Some("a pickle")
    } else {
        None
    }
}

/// Reads and validates a file into its tensors (by name, unconverted).
fn read_file(bytes: &[u8]) -> Result<BTreeMap<String, Entry<'_>>, WeightsError> {
    check_header(bytes)?;
    // The crate validates the layout again (see `check_header`), so the slices it hands
    // out are in bounds.
    let file = SafeTensors::deserialize(bytes).map_err(|e| match e {
        SafeTensorError::HeaderTooLarge => malformed("the header is larger than the 100 MB safetensors allows"),
        e => malformed(e),
    })?;
    Ok(file
        .iter()
        .map(|(name, view)| {
            (name.to_string(), Entry { dtype: view.dtype(), shape: view.shape().to_vec(), data: view.data() })
        })
        .collect())
}

/// The tensor as f32: f32 as is, f16, bf16 and f64 converted; `None` for other dtypes.
fn to_f32(entry: &Entry) -> Option<Vec<f32>> {
    let data = entry.data;
    Some(match entry.dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        Dtype::F16 => {
            data.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32()).collect()
        }
        Dtype::BF16 => {
            data.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32()).collect()
        }
        Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        _ => return None,
    })
}

fn is_integer(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::I16
            | Dtype::U16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64
    )
}

/// Reads a safetensors file (as written by `safetensors.torch.save_file(model.state_dict(), ...)`)
/// and binds it strictly to the graph.
///
/// Every parameter of `graph.params()` must be in the file with the shape the graph
/// expects, as f32, f16, bf16 or f64 (converted to f32). BatchNorm's
/// `num_batches_tracked`, and any other integer tensor under a BatchNorm layer's name, is
/// ignored. Any other tensor the graph does not read is an error unless `allow_unused`.
/// All problems are reported together in one error: the counts, hints when names in the
/// file look like misnamed expected ones (a `module.` prefix, a missing prefix, layers
/// numbered from 1, `seq` positions, nesting), then the missing and unexpected tensors
/// side by side per layer (`mismatch`).
pub fn load_safetensors(bytes: &[u8], graph: &Graph, allow_unused: bool) -> Result<Weights, WeightsError> {
    load_safetensors_listing(bytes, graph, allow_unused, Some(DEFAULT_LISTED_LAYERS))
}

/// [`load_safetensors`], with the error's side-by-side listing of missing and unexpected
/// tensors capped at `max_rows` layers (`None`: all of them, for `--verbose`).
pub fn load_safetensors_listing(
    bytes: &[u8],
    graph: &Graph,
    allow_unused: bool,
    max_rows: Option<usize>,
) -> Result<Weights, WeightsError> {
    let file = read_file(bytes)?;
    let params = graph.params();
    let expected: HashMap<&str, &[usize]> = params.iter().map(|p| (p.name.as_str(), p.shape.as_slice())).collect();
    let batch_norms: BTreeSet<&str> = graph
        .node_ids()
        .into_iter()
        .map(|id| graph.node(id))
        .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
        .map(|n| n.name.as_str())
        .collect();

    let mut weights = Weights::default();
    let mut unexpected: Vec<(&str, &Entry)> = Vec::new();
    for (name, entry) in &file {
        if expected.contains_key(name.as_str()) {
            continue;
        }
        let ignored = name == "num_batches_tracked"
            || name.ends_with(".num_batches_tracked")
            || (is_integer(entry.dtype) && name.rsplit_once('.').is_some_and(|(layer, _)| batch_norms.contains(layer)));
        if !ignored {
            unexpected.push((name, entry));
        }
    }

    let mut missing: Vec<(&str, &[usize])> = Vec::new();
    // The network's side and the file's side of the listing.
    let mut wanted: Vec<mismatch::Named> = Vec::new();
    let mut offered: Vec<mismatch::Named> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut mis_shaped = 0;
    let mut bad_dtype = 0;
    for param in &params {
        let Some(entry) = file.get(&param.name) else {
            missing.push((&param.name, &param.shape));
            wanted.push(mismatch::Named { name: &param.name, shape: &param.shape, dtype: None });
            continue;
        };
        if entry.shape != param.shape {
            mis_shaped += 1;
            // Listed on both sides: the file's tensor may be another layer's (layers
            // numbered from 1, a step missing in a `seq`).
            wanted.push(mismatch::Named { name: &param.name, shape: &param.shape, dtype: None });
            offered.push(mismatch::Named {
                name: &param.name,
                shape: &entry.shape,
                dtype: Some(entry.dtype.to_string()),
            });
            let mut line = format!(
                "mis-shaped `{}`: the file has {}, the network expects {}",
                param.name,
                fmt_shape(&entry.shape),
                fmt_shape(&param.shape)
            );
            if entry.shape.len() == 2
                && param.shape.len() == 2
                && entry.shape[0] == param.shape[1]
                && entry.shape[1] == param.shape[0]
            {
                line += " (transposed? PyTorch stores a linear layer's weight as [out_features, in_features])";
            } else if entry.shape.iter().product::<usize>() == param.shape.iter().product::<usize>() {
                line += " (the same number of values, in another shape)";
            }
            problems.push(line);
            continue;
        }
        match to_f32(entry) {
            Some(data) => weights.insert(param.name.clone(), Tensor { shape: param.shape.clone(), data }),
            None => {
                bad_dtype += 1;
                problems.push(format!(
                    "unsupported dtype `{}`: {}; weights must be F32, F16, BF16 or F64",
                    param.name, entry.dtype
                ));
            }
        }
    }

    let report_unexpected = !allow_unused && !unexpected.is_empty();
    if missing.is_empty() && problems.is_empty() && !report_unexpected {
        return Ok(weights);
    }

    let mut counts = Vec::new();
    if !missing.is_empty() {
        counts.push(format!("{} missing", missing.len()));
    }
    if report_unexpected {
        counts.push(format!("{} unexpected", unexpected.len()));
    }
    if mis_shaped > 0 {
        counts.push(format!("{mis_shaped} mis-shaped"));
    }
    if bad_dtype > 0 {
        counts.push(format!("{bad_dtype} of an unsupported dtype"));
    }
    let network = if graph.name.is_empty() { "the network".to_string() } else { format!("network `{}`", graph.name) };
    let mut text = format!(
        "the weights do not match {network}: {} (the network reads {} tensors, the file has {})",
        counts.join(", "),
        params.len(),
        file.len()
    );
    if report_unexpected {
        offered.extend(unexpected.iter().map(|(name, entry)| mismatch::Named {
            name,
            shape: &entry.shape,
            dtype: Some(entry.dtype.to_string()),
        }));
    }
    if !missing.is_empty() || report_unexpected {
        text += &mismatch::report(&wanted, &offered, params.len(), max_rows);
    }
    for line in &problems {
        text += "\n  ";
        text += line;
    }
    if report_unexpected && missing.is_empty() && problems.is_empty() {
        text += "\n  (the network finds every tensor it reads; --allow-unused-weights accepts the others)";
    }
    Err(WeightsError(text))
}

/// Writes weights as a safetensors file of f32 tensors (for tests and tools).
///
/// # Panics
/// If a tensor's data length disagrees with its shape (a `Tensor` built by hand wrongly).
pub fn save_safetensors(weights: &Weights) -> Vec<u8> {
    let bytes: Vec<(&String, &Tensor, Vec<u8>)> = weights
        .tensors
        .iter()
        .map(|(name, t)| (name, t, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(name, t, data)| {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), data)
            .unwrap_or_else(|e| panic!("tensor `{name}` has data that disagrees with its shape: {e}"));
        (name.as_str(), view)
    });
    safetensors::serialize(views, None).expect("f32 tensors with consistent shapes serialize")
}

/// FNV-1a, 64 bits: a stable hash of a parameter name (unlike `std`'s hashers, it never
/// changes between Rust versions).
fn fnv1a(text: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A ChaCha8 generator keyed by the seed, a stream tag and a hash of a name.
fn rng_for(seed: u64, tag: u64, name: &str) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&tag.to_le_bytes());
    key[16..24].copy_from_slice(&fnv1a(name).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

const TAG_WEIGHTS: u64 = 1;
const TAG_NORMAL: u64 = 2;

/// He-normal weights for every parameter of the graph, deterministic in (seed, parameter
/// name): conv and linear weights N(0, 2/fan_in) (fan_in = in_channels/groups x kernel
/// area, or in_features), their biases N(0, 0.01²); BatchNorm and layer_norm weight
/// U(0.5, 1.5), bias N(0, 0.1²), running_mean N(0, 0.1²), running_var U(0.5, 1.5); a
/// `scale`'s multipliers U(0.5, 1.5). Each tensor has its own
/// generator, so the values do not depend on the order of the layers.
pub fn random_weights(graph: &Graph, seed: u64) -> Weights {
    let mut weights = Weights::default();
    for id in graph.topo_order().unwrap_or_default() {
        let node = graph.node(id);
        // Normalizations and scales: weights near 1, biases near 0.
        let batch_norm = matches!(
            node.op,
            Op::BatchNorm { .. } | Op::ScaleShift | Op::LayerNorm { .. } | Op::LayerNormLast { .. } | Op::Scale
        );
        for param in &node.params {
            let mut rng = rng_for(seed, TAG_WEIGHTS, &param.name);
            let n: usize = param.shape.iter().product();
            let data = match (batch_norm, param.role) {
                (false, ParamRole::Weight) => {
                    let fan_in: usize = param.shape.iter().skip(1).product();
                    normal(&mut rng, n, (2.0 / fan_in.max(1) as f32).sqrt())
                }
                (false, _) => normal(&mut rng, n, 0.01),
                (true, ParamRole::Bias | ParamRole::RunningMean | ParamRole::Shift) => normal(&mut rng, n, 0.1),
                (true, ParamRole::Weight | ParamRole::RunningVar | ParamRole::Scale | ParamRole::Parameter) => {
                    (0..n).map(|_| rng.random_range(0.5f32..1.5)).collect()
                }
            };
            weights.insert(param.name.clone(), Tensor { shape: param.shape.clone(), data });
        }
    }
    weights
}

/// `n` values drawn from N(0, std²).
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| std * rng.sample::<f32, _>(StandardNormal)).collect()
}

/// A tensor of N(0, 1) values, deterministic in the seed (used for random inputs); a
/// different stream from [`random_weights`]' with the same seed.
pub fn random_normal(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rng_for(seed, TAG_NORMAL, "");
    let data = normal(&mut rng, shape.iter().product(), 1.0);
    Tensor { shape: shape.to_vec(), data }
}
