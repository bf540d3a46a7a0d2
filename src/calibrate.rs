//! Calibration for int8 ([`crate::precision`]): the range of each int8 layer's input,
//! measured by running the reference interpreter (f32) over sample inputs, and the
//! quantization chosen from it; saved as JSON (`cnnc calibrate`), read back and assigned
//! to a graph (`--precision int8 --calib FILE`).
//!
//! The layers are the graph's conv and linear layers whose reduction fits an i32 sum
//! ([`int8_layers`]), by their IR names, after the pass pipeline the graph went through
//! (calibrate and run at the same `-O` level; the default is the same). Each entry also
//! records the op and the layer's input shape (batch left out), and
//! [`Calibration::assign`] refuses a file whose layers are not exactly the graph's (a
//! file for another network, another input size, or a changed program), naming the
//! layers. The weights are not part of the check: a calibration made with other weights
//! is accepted, and is as good as its ranges are for them.
//!
//! Methods: `minmax` takes each input's smallest and largest value over all the
//! calibration inputs; `percentile P` takes the `100 - P` and `P` percentiles (from a
//! histogram of 65536 bins between the minimum and maximum, the bin edges outward), so
//! that rare outliers saturate instead of coarsening every other value's step.

use serde::{Deserialize, Serialize};

use crate::ir::{Graph, NodeId};
use crate::precision::{INT8_MAX_REDUCTION, Int8Input, Precision, reduction_length};
use crate::tensor::Tensor;

/// The `format` field of a calibration file.
pub const FORMAT: &str = "cnnc-calibration-1";

/// Histogram bins of the percentile method.
const BINS: usize = 1 << 16;

/// How the range of an input is chosen from the values seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The smallest and largest values.
    MinMax,
    /// The `100 - P` and `P` percentiles (P in (50, 100]).
    Percentile(f64),
}

impl Method {
    fn name(self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile {p}"),
        }
    }
}

/// A calibration file's contents.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// [`FORMAT`].
    pub format: String,
    /// The network's name (`network NAME`).
    pub network: String,
    /// How the ranges were chosen (`minmax`, `percentile 99.99`).
    pub method: String,
    /// Batch items run to measure them.
    pub items: usize,
    /// One entry per int8 layer, in the graph's topological order.
    pub layers: Vec<LayerCalibration>,
}

/// One layer's input range and quantization.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerCalibration {
    /// The layer's IR name.
    pub name: String,
    /// Its op (`conv`, `linear`).
    pub op: String,
    /// Its input's shape without the batch dimension.
    pub input_shape: Vec<usize>,
    /// The smallest and largest input values seen.
    pub min: f32,
    pub max: f32,
    /// The range chosen by the method (before it is widened to contain 0).
    pub low: f32,
    pub high: f32,
    /// The quantization: `q = clamp(round(x / scale) + zero_point, 0, 255)`.
    pub scale: f32,
    pub zero_point: u8,
}

/// The layers int8 applies to, in topological order: conv and linear layers whose
/// reduction is at most [`INT8_MAX_REDUCTION`], with their input's node.
pub fn int8_layers(graph: &Graph) -> Vec<(NodeId, NodeId)> {
    let order = graph.topo_order().unwrap_or_default();
    order
        .into_iter()
        .filter_map(|id| {
            let node = graph.node(id);
            let input = *graph.op_operands(id).first()?;
            let applies = Precision::Int8(Int8Input::new(1.0, 0)?).applies_to(&node.op)
                && reduction_length(&node.op, &graph.node(input).shape) <= INT8_MAX_REDUCTION;
            applies.then_some((id, input))
        })
        .collect()
}

/// Running statistics of one layer's input.
struct Stats {
    min: f32,
    max: f32,
    histogram: Vec<u64>,
    count: u64,
}

impl Stats {
    fn bin(&self, v: f32) -> usize {
        let width = (self.max as f64 - self.min as f64) / BINS as f64;
        if width <= 0.0 {
            return 0;
        }
        (((v as f64 - self.min as f64) / width) as usize).min(BINS - 1)
    }

    /// The lower edge of the first bin where the cumulative count reaches `fraction` of
    /// the values, and the upper edge of the last bin needed to reach `1 - fraction`
    /// from above.
    fn percentile_range(&self, upper: f64) -> (f32, f32) {
        let width = (self.max as f64 - self.min as f64) / BINS as f64;
        let edge = |bin: usize| (self.min as f64 + bin as f64 * width) as f32;
        let below = ((1.0 - upper) * self.count as f64).floor() as u64;
        let (mut seen, mut low) = (0u64, 0usize);
        for (i, &c) in self.histogram.iter().enumerate() {
            seen += c;
            if seen > below {
                low = i;
                break;
            }
        }
        let (mut seen, mut high) = (0u64, BINS - 1);
        for (i, &c) in self.histogram.iter().enumerate().rev() {
            seen += c;
            if seen > below {
                high = i;
                break;
            }
        }
        (edge(low).max(self.min), edge(high + 1).min(self.max))
    }
}

/// Runs the reference interpreter over `runs` (each one run's inputs, in
/// `graph.inputs` order, at the graph's batch) and measures every int8 layer's input.
/// NaN values are left out of the ranges; an infinity is an error (no finite range
/// holds it: the inputs or the weights are broken).
pub fn calibrate(graph: &Graph, runs: &[Vec<Tensor>], method: Method) -> Result<Calibration, String> {
    if let Method::Percentile(p) = method
        && !(p > 50.0 && p <= 100.0)
    {
        return Err(format!("--percentile {p}: expected a percentile above 50 and at most 100"));
    }
    if runs.is_empty() {
        return Err("no calibration inputs".into());
    }
    let layers = int8_layers(graph);
    if layers.is_empty() {
        return Err(format!("network `{}` has no conv or linear layer that int8 applies to", graph.name));
    }
    let mut stats: Vec<Stats> = layers
        .iter()
        .map(|_| Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, histogram: Vec::new(), count: 0 })
        .collect();
    let readers = |input: NodeId| layers.iter().enumerate().filter(move |(_, (_, i))| *i == input).map(|(k, _)| k);
    let mut infinite: Option<NodeId> = None;
    for run in runs {
        crate::interp::run_traced(graph, &graph.weights, run, &mut |id, value| {
            for k in readers(id) {
                let s = &mut stats[k];
                for &v in value.data.iter().filter(|v| !v.is_nan()) {
                    if v.is_infinite() {
                        infinite.get_or_insert(layers[k].0);
                    }
                    s.min = s.min.min(v);
                    s.max = s.max.max(v);
                    s.count += 1;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    }
    if let Some(id) = infinite {
        return Err(format!(
            "the input of layer `{}` holds an infinity: no finite range holds it",
            graph.node(id).name
        ));
    }
    if let Method::Percentile(_) = method {
        for s in &mut stats {
            s.histogram = vec![0; BINS];
        }
        for run in runs {
            crate::interp::run_traced(graph, &graph.weights, run, &mut |id, value| {
                for k in readers(id) {
                    let s = &mut stats[k];
                    for &v in value.data.iter().filter(|v| !v.is_nan()) {
                        let bin = s.bin(v);
                        s.histogram[bin] += 1;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        }
    }
    let items = runs.iter().map(|r| r.first().map_or(0, |t| t.shape.first().copied().unwrap_or(1))).sum();
    let mut entries = Vec::with_capacity(layers.len());
    for ((id, input), s) in layers.iter().zip(&stats) {
        let node = graph.node(*id);
        if s.count == 0 {
            return Err(format!("the input of layer `{}` held only NaN values", node.name));
        }
        let (low, high) = match method {
            Method::MinMax => (s.min, s.max),
            Method::Percentile(p) => s.percentile_range(p / 100.0),
        };
        let quant = Int8Input::from_range(low, high)
            .ok_or_else(|| format!("layer `{}`: the range [{low}, {high}] has no int8 quantization", node.name))?;
        entries.push(LayerCalibration {
            name: node.name.clone(),
            op: node.op.mnemonic().to_string(),
            input_shape: graph.node(*input).shape[1..].to_vec(),
            min: s.min,
            max: s.max,
            low,
            high,
            scale: quant.scale(),
            zero_point: quant.zero_point(),
        });
    }
    Ok(Calibration {
        format: FORMAT.into(),
        network: graph.name.clone(),
        method: method.name(),
        items,
        layers: entries,
    })
}

/// Layers listed in messages before the list is cut.
const LISTED: usize = 8;

fn listing(names: &[String]) -> String {
    let mut text = names.iter().take(LISTED).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > LISTED {
        text += &format!(" and {} more", names.len() - LISTED);
    }
    text
}

impl Calibration {
    /// Parses a calibration file's text.
    pub fn from_json(text: &str) -> Result<Calibration, String> {
        let calibration: Calibration =
            serde_json::from_str(text).map_err(|e| format!("not a cnnc calibration file: {e}"))?;
        if calibration.format != FORMAT {
            return Err(format!("format `{}` is not `{FORMAT}`", calibration.format));
        }
        Ok(calibration)
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a calibration serializes") + "\n"
    }

    /// Sets int8, with each layer's calibrated input quantization, on every int8 layer
    /// of the graph ([`int8_layers`]); the others stay as they are. Refuses a calibration
    /// that does not match the graph: another network, layers missing from it, layers
    /// it has that the graph does not, or another op or input shape; the messages name
    /// the layers. Returns how many layers took int8.
    pub fn assign(&self, graph: &mut Graph) -> Result<usize, String> {
        if self.network != graph.name {
            return Err(format!(
                "the calibration is for network `{}`, not `{}`: make one with `cnnc calibrate`",
                self.network, graph.name
            ));
        }
        let layers = int8_layers(graph);
        let mut missing = Vec::new();
        let mut changed = Vec::new();
        let mut assigned = Vec::new();
        for &(id, input) in &layers {
            let node = graph.node(id);
            let input_shape = &graph.node(input).shape[1..];
            match self.layers.iter().find(|l| l.name == node.name) {
                None => missing.push(node.name.clone()),
                Some(l) if l.op != node.op.mnemonic() || l.input_shape != input_shape => changed.push(format!(
                    "{} (calibrated as {} on [{}], here {} on [{}])",
                    node.name,
                    l.op,
                    dims(&l.input_shape),
                    node.op.mnemonic(),
                    dims(input_shape)
                )),
                Some(l) => {
                    let quant = Int8Input::new(l.scale, l.zero_point).ok_or_else(|| {
                        format!("layer `{}`: scale {} is not a positive finite number", l.name, l.scale)
                    })?;
                    assigned.push((id, quant));
                }
            }
        }
        let extra: Vec<String> = self
            .layers
            .iter()
            .filter(|l| !layers.iter().any(|&(id, _)| graph.node(id).name == l.name))
            .map(|l| l.name.clone())
            .collect();
        let stale = "the calibration is stale or for another network: run `cnnc calibrate` again";
        if !missing.is_empty() {
            return Err(format!("{stale}; it has no entry for layer(s) {}", listing(&missing)));
        }
        if !changed.is_empty() {
            return Err(format!("{stale}; these layers changed: {}", changed.join("; ")));
        }
        if !extra.is_empty() {
            return Err(format!("{stale}; this network has no int8 layer(s) {}", listing(&extra)));
        }
        for &(id, quant) in &assigned {
            graph.node_mut(id).precision = Precision::Int8(quant);
        }
        Ok(assigned.len())
    }
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}
