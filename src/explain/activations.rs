//! `run --dump-activations DIR`: every layer's value as pictures and statistics.
//!
//! The values come from the reference interpreter's traced run
//! ([`crate::interp::run_traced`]) of the graph as the caller optimized it (the generic
//! pipeline: at `-O2` a convolution's node holds its fused batch norm and activation, at
//! `-O0` every layer as written has its own node). The interpreter is the ground truth
//! and gives every node's value without a second compilation; each value is drawn and
//! measured as it is computed and then dropped, so the dump needs no more memory than the
//! run.
//!
//! Per node, in topological order (the inputs first):
//! - a value `[N, C, H, W]` becomes a grid of feature maps of the first batch item, one
//!   tile per channel, each channel normalized by its own finite minimum and maximum,
//!   through [`VIRIDIS`]; at most `max_tiles` channels are shown, those with the largest
//!   mean absolute value (in channel order), and the index lists which;
//! - a value `[N, F]` (after `flatten` or `linear`) becomes a strip of cells, the first
//!   item's F values normalized together (at most [`MAX_VECTOR_VALUES`] drawn);
//! - any other rank is only measured;
//! - a 4-D value is always read as `[N, C, H, W]`: a channels-last value (ConvNeXt's
//!   blocks between their `permute`s at `-O0`; `-O2` folds them away) is drawn as H
//!   tiles of W x C;
//! - a convolution reading a network input with 3 channels also gets its filters as RGB
//!   tiles (1 channel: through the colour map), each filter normalized on its own.
//!
//! `stats.json` measures the whole batch: finite minimum, maximum and mean, NaN and
//! infinity counts, and the channels (dimension 1) that are zero in every item ("dead").
//! `index.json` lists every file written, per layer.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::colormap::{ColorMap, VIRIDIS};
use super::png::{channel_grid, encode_png, filter_grid, vector_strip};
use crate::ir::{Graph, NodeId, Op, ParamRole};
use crate::tensor::Tensor;

/// The most feature maps drawn per layer unless asked otherwise.
pub const DEFAULT_MAX_TILES: usize = 64;
/// The most values of a vector drawn in its strip.
pub const MAX_VECTOR_VALUES: usize = 4096;

/// Statistics of one node's value over the whole batch.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerStats {
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    /// The smallest finite value (`None` when no value is finite).
    pub min: Option<f64>,
    /// The largest finite value.
    pub max: Option<f64>,
    /// The mean of the finite values (accumulated in f64).
    pub mean: Option<f64>,
    /// Channels (dimension 1) in the value; 1 for a rank-1 value.
    pub channels: usize,
    /// Channels whose every value, in every batch item, is exactly zero.
    pub dead_channels: usize,
    /// `dead_channels / channels`.
    pub dead_fraction: f64,
    pub nan_count: usize,
    pub inf_count: usize,
}

/// Measures a node's value.
pub fn layer_stats(name: &str, op: &str, value: &Tensor) -> LayerStats {
    let (mut min, mut max, mut sum, mut finite) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64, 0usize);
    let (mut nan_count, mut inf_count) = (0, 0);
    for &v in &value.data {
        if v.is_nan() {
            nan_count += 1;
        } else if v.is_infinite() {
            inf_count += 1;
        } else {
            min = min.min(v);
            max = max.max(v);
            sum += f64::from(v);
            finite += 1;
        }
    }
    let batch = value.shape.first().copied().unwrap_or(1).max(1);
    let channels = if value.shape.len() >= 2 { value.shape[1] } else { 1 };
    let plane = value.len() / (batch * channels).max(1);
    let dead_channels = (0..channels)
        .filter(|&c| {
            (0..batch).all(|n| {
                let start = (n * channels + c) * plane;
                value.data[start..start + plane].iter().all(|&v| v == 0.0)
            })
        })
        .count();
    LayerStats {
        name: name.to_string(),
        op: op.to_string(),
        shape: value.shape.clone(),
        min: (finite > 0).then_some(f64::from(min)),
        max: (finite > 0).then_some(f64::from(max)),
        mean: (finite > 0).then(|| sum / finite as f64),
        channels,
        dead_channels,
        dead_fraction: if channels == 0 { 0.0 } else { dead_channels as f64 / channels as f64 },
        nan_count,
        inf_count,
    }
}

/// The channels of a grid when at most `max_tiles` fit: all of them, or the `max_tiles`
/// with the largest mean absolute (finite) value in the item, ties to the lower channel,
/// listed in channel order.
pub fn channels_shown(item: &[f32], channels: usize, max_tiles: usize) -> Vec<usize> {
    if channels <= max_tiles {
        return (0..channels).collect();
    }
    let plane = item.len() / channels.max(1);
    let energy: Vec<f64> = (0..channels)
        .map(|c| item[c * plane..(c + 1) * plane].iter().filter(|v| v.is_finite()).map(|&v| f64::from(v.abs())).sum())
        .collect();
    let mut order: Vec<usize> = (0..channels).collect();
    order.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]).then(a.cmp(&b)));
    order.truncate(max_tiles);
    order.sort_unstable();
    order
}

/// What a layer's picture shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Picture {
    /// A grid of feature maps; `channels_shown` lists the channels drawn.
    Channels { file: String, channels_shown: Vec<usize>, channels_total: usize },
    /// A strip of a vector's first `values_shown` values.
    Vector { file: String, values_shown: usize, values_total: usize },
    /// Not drawn (rank other than 2 or 4); only in the statistics.
    None,
}

/// One layer of the index.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    /// Position in topological order (also the files' prefix).
    pub index: usize,
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    pub picture: Picture,
    /// The filters' picture, for a convolution that reads a 1- or 3-channel input.
    pub filters: Option<String>,
}

/// `index.json`: the files written and what they show.
#[derive(Clone, Debug, Serialize)]
pub struct Index {
    pub network: String,
    /// Where the values come from.
    pub source: String,
    /// The batch item drawn (the statistics cover the whole batch).
    pub item: usize,
    pub batch: usize,
    pub colormap: String,
    pub max_tiles: usize,
    pub stats_file: String,
    pub layers: Vec<IndexEntry>,
}

/// What `dump_activations` wrote.
#[derive(Clone, Debug)]
pub struct Dump {
    pub index: Index,
    pub stats: Vec<LayerStats>,
    /// Every file written, `index.json` and `stats.json` included.
    pub files: Vec<PathBuf>,
}

/// A file name from a layer name: characters other than ASCII letters, digits, `.`, `_`
/// and `-` become `_`; long names are cut (the index keeps the full name).
pub fn file_stem(index: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(80)
        .collect();
    format!("{index:03}-{clean}")
}

/// The filters of `id` when it is a convolution reading a network input of 1 or 3
/// channels: `(weight values, out channels, in channels, kh, kw)`.
fn input_filters(graph: &Graph, id: NodeId) -> Option<(&[f32], usize, usize, usize, usize)> {
    let node = graph.node(id);
    if !matches!(node.op, Op::Conv(_)) {
        return None;
    }
    let reads_input = graph.op_operands(id).iter().any(|o| matches!(graph.node(*o).op, Op::Input { .. }));
    let param = node.params.iter().find(|p| p.role == ParamRole::Weight)?;
    let weight = graph.weights.get(&param.name)?;
    match weight.shape[..] {
        [o, i @ (1 | 3), kh, kw] if reads_input && weight.len() == o * i * kh * kw => {
            Some((&weight.data, o, i, kh, kw))
        }
        _ => None,
    }
}

/// Runs `graph` on the reference interpreter and writes every node's pictures,
/// `stats.json` and `index.json` into `dir` (created if missing). `graph` must have its
/// weights bound; `max_tiles` is at least 1.
pub fn dump_activations(graph: &Graph, inputs: &[Tensor], dir: &Path, max_tiles: usize) -> Result<Dump, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut write = |file: &str, bytes: &[u8]| -> Result<(), String> {
        let path = dir.join(file);
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        files.push(path);
        Ok(())
    };
    let (index, stats) = render_activations(graph, inputs, max_tiles, &mut write)?;
    write("stats.json", to_json(&stats).as_bytes())?;
    write("index.json", to_json(&index).as_bytes())?;
    Ok(Dump { index, stats, files })
}

/// Where [`render_activations`] hands each picture: `(file name, PNG bytes)`.
pub type Emit<'a> = dyn FnMut(&str, &[u8]) -> Result<(), String> + 'a;

/// Runs `graph` on the reference interpreter and hands every node's pictures to
/// `emit(file name, PNG bytes)` as they are drawn; returns the index and the statistics
/// (which [`dump_activations`] writes as JSON).
pub fn render_activations(
    graph: &Graph,
    inputs: &[Tensor],
    max_tiles: usize,
    emit: &mut Emit<'_>,
) -> Result<(Index, Vec<LayerStats>), String> {
    let map: &ColorMap = &VIRIDIS;
    let max_tiles = max_tiles.max(1);
    let mut stats = Vec::new();
    let mut layers = Vec::new();
    let mut failure: Option<String> = None;
    let mut observe = |id: NodeId, value: &Tensor| {
        if failure.is_some() {
            return;
        }
        let node = graph.node(id);
        let index = layers.len();
        let stem = file_stem(index, &node.name);
        let op = node.op.mnemonic();
        stats.push(layer_stats(&node.name, op, value));
        let mut step = || -> Result<IndexEntry, String> {
            let batch = value.shape.first().copied().unwrap_or(1).max(1);
            let item = &value.data[..value.len() / batch];
            let picture = match value.shape[..] {
                [_, c, h, w] if c * h * w > 0 => {
                    let shown = channels_shown(item, c, max_tiles);
                    let file = format!("{stem}.png");
                    emit(&file, &encode_png(&channel_grid(item, h, w, &shown, map))?)?;
                    Picture::Channels { file, channels_shown: shown, channels_total: c }
                }
                [_, f] if f > 0 => {
                    let shown = f.min(MAX_VECTOR_VALUES);
                    let file = format!("{stem}.png");
                    emit(&file, &encode_png(&vector_strip(&item[..shown], map))?)?;
                    Picture::Vector { file, values_shown: shown, values_total: f }
                }
                _ => Picture::None,
            };
            let filters = match input_filters(graph, id) {
                Some((weight, o, i, kh, kw)) => {
                    let file = format!("{stem}.filters.png");
                    emit(&file, &encode_png(&filter_grid(weight, o, i, kh, kw, map))?)?;
                    Some(file)
                }
                None => None,
            };
            Ok(IndexEntry {
                index,
                name: node.name.clone(),
                op: op.to_string(),
                shape: value.shape.clone(),
                picture,
                filters,
            })
        };
        match step() {
            Ok(entry) => layers.push(entry),
            Err(e) => failure = Some(e),
        }
    };
    crate::interp::run_traced(graph, &graph.weights, inputs, &mut observe).map_err(|e| e.to_string())?;
    if let Some(e) = failure {
        return Err(e);
    }
    let index = Index {
        network: graph.name.clone(),
        source: "reference interpreter (interp::run_traced) on the graph after the -O level's generic pipeline".into(),
        item: 0,
        batch: inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1),
        colormap: map.name.to_string(),
        max_tiles,
        stats_file: "stats.json".into(),
        layers,
    };
    Ok((index, stats))
}

/// Pretty JSON of plain data, newline-terminated.
pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("plain data serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_dead_channels_and_non_finite_values() {
        // [2, 3, 1, 2]: channel 1 is zero in both items, channel 2 only in the first.
        let data = vec![1.0, -2.0, 0.0, 0.0, 0.0, 0.0, f32::NAN, 3.0, 0.0, 0.0, f32::INFINITY, 0.5];
        let value = Tensor::new(vec![2, 3, 1, 2], data).unwrap();
        let s = layer_stats("x", "relu", &value);
        assert_eq!((s.channels, s.dead_channels, s.nan_count, s.inf_count), (3, 1, 1, 1));
        assert_eq!((s.min, s.max), (Some(-2.0), Some(3.0)));
        assert!((s.mean.unwrap() - 2.5 / 10.0).abs() < 1e-12);
    }

    #[test]
    fn the_strongest_channels_are_shown_in_order() {
        let item = [0.0, 0.0, 5.0, 5.0, -9.0, 1.0, 0.1, 0.1];
        assert_eq!(channels_shown(&item, 4, 2), vec![1, 2]);
        assert_eq!(channels_shown(&item, 4, 8), vec![0, 1, 2, 3]);
        assert_eq!(file_stem(7, "layer1.0/conv 1"), "007-layer1.0_conv_1");
    }
}
