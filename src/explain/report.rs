//! `cnnc report`: one self-contained HTML page about a network: its graph as SVG
//! (coloured by op kind, shaded by multiply-adds), the per-layer table (shape,
//! parameters, MACs, bytes, the CPU backend's algorithm and measured time), and, for an
//! input, the activation pictures and the saliency map as `data:` URIs. The page loads
//! nothing from the network and runs no script.
//!
//! The graph is laid out here, without Graphviz: a node's rank is its longest path from
//! an input, ranks are rows, and nodes of a rank sit side by side in topological order;
//! an edge that skips ranks (a residual) bends out to the right of the nodes it passes.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::ir::{Graph, NodeId};

/// One row of the layer table.
#[derive(Clone, Debug, Default)]
pub struct LayerRow {
    pub name: String,
    /// The op, with its fused epilogue (`conv+relu`, `conv+add+relu`).
    pub op: String,
    pub shape: Vec<usize>,
    /// Every value the optimized layer stores: the page describes the compiled network,
    /// so a BatchNorm folded into a scale and shift counts its two vectors. (`cnnc
    /// summary`'s `LayerCost::params` counts PyTorch's learnable parameters of the
    /// network as written instead.)
    pub params: u64,
    pub macs: u64,
    pub output_bytes: u64,
    /// The CPU backend's algorithm for the node's kernel (none: no kernel of its own).
    pub algorithm: Option<String>,
    /// The kernel's median time in milliseconds.
    pub time_ms: Option<f64>,
}

/// A picture on the page: a caption and PNG bytes.
#[derive(Clone, Debug)]
pub struct Figure {
    pub caption: String,
    pub png: Vec<u8>,
}

/// Everything the page shows.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub title: String,
    /// Lines under the title: where the weights and timings come from.
    pub notes: Vec<String>,
    pub rows: Vec<LayerRow>,
    /// The activation pictures, in layer order (empty without an input).
    pub activations: Vec<Figure>,
    /// The saliency map(s), if computed.
    pub saliency: Vec<Figure>,
}

/// The op as the table and the graph show it: its mnemonic and its fused epilogue.
pub fn op_label(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    let e = &node.epilogue;
    // A gate multiplies the input first: `mul+conv+relu`.
    let mut label = if e.gate { format!("mul+{}", node.op.mnemonic()) } else { node.op.mnemonic().to_string() };
    let mut push = |part: &str| {
        label.push('+');
        label.push_str(part);
    };
    if let Some(a) = e.activation {
        push(a.mnemonic());
    }
    if e.residual {
        push("add");
    }
    if let Some(a) = e.post_activation {
        push(a.mnemonic());
    }
    if e.pool.is_some() {
        push("pool");
    }
    label
}

/// The table's rows for every node of `graph` in topological order, without timings.
pub fn layer_rows(graph: &Graph) -> Vec<LayerRow> {
    graph
        .topo_order()
        .unwrap_or_default()
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            LayerRow {
                name: node.name.clone(),
                op: op_label(graph, id),
                shape: node.shape.clone(),
                params: node.params.iter().map(|p| p.shape.iter().product::<usize>() as u64).sum(),
                macs: crate::summary::macs(graph, id),
                output_bytes: node.shape.iter().product::<usize>() as u64 * 4,
                algorithm: None,
                time_ms: None,
            }
        })
        .collect()
}

pub use crate::graphviz::kind_color;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const NODE_W: usize = 190;
const NODE_H: usize = 40;
const GAP_X: usize = 30;
const GAP_Y: usize = 26;
const MARGIN: usize = 20;
/// How far a rank-skipping edge bends out to the right.
const BEND: usize = 70;

/// The graph as SVG: one box per node, filled with its kind's colour at an opacity
/// that grows with its share of the multiply-adds (square root, from 0.12 to 1), and
/// `<title>` tooltips with the details.
pub fn graph_svg(graph: &Graph) -> String {
    let order = graph.topo_order().unwrap_or_default();
    let mut rank: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        let r = graph.operands(id).iter().filter_map(|o| rank.get(o)).map(|r| r + 1).max().unwrap_or(0);
        rank.insert(id, r);
    }
    let ranks = rank.values().max().map_or(0, |r| r + 1);
    let mut rows: Vec<Vec<NodeId>> = vec![Vec::new(); ranks];
    for &id in &order {
        rows[rank[&id]].push(id);
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let width = 2 * MARGIN + columns * NODE_W + (columns - 1) * GAP_X + BEND;
    let height = 2 * MARGIN + ranks * NODE_H + ranks.saturating_sub(1) * GAP_Y;
    let mut position: HashMap<NodeId, (usize, usize)> = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        let row_width = row.len() * NODE_W + row.len().saturating_sub(1) * GAP_X;
        let left = MARGIN + (columns * NODE_W + (columns - 1) * GAP_X - row_width) / 2;
        for (k, &id) in row.iter().enumerate() {
            position.insert(id, (left + k * (NODE_W + GAP_X), MARGIN + r * (NODE_H + GAP_Y)));
        }
    }
    let max_macs = order.iter().map(|&id| crate::summary::macs(graph, id)).max().unwrap_or(0).max(1);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" id="graph-svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"##
    );
    svg.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#666"/></marker></defs>"##,
    );
    svg.push('\n');
    for &id in &order {
        let (tx, ty) = position[&id];
        for operand in graph.operands(id) {
            let Some(&(sx, sy)) = position.get(&operand) else { continue };
            let span = rank[&id] - rank[&operand];
            let path = if span > 1 && sx == tx {
                let (x, y0, y1) = (sx + NODE_W, sy + NODE_H / 2, ty + NODE_H / 2);
                format!("M{x},{y0} C{},{y0} {},{y1} {x},{y1}", x + BEND, x + BEND)
            } else {
                let (x0, y0, x1, y1) = (sx + NODE_W / 2, sy + NODE_H, tx + NODE_W / 2, ty);
                let mid = (y0 + y1) / 2;
                format!("M{x0},{y0} C{x0},{mid} {x1},{mid} {x1},{y1}")
            };
            let _ = writeln!(
                svg,
                r##"<path d="{path}" fill="none" stroke="#666" stroke-width="1.2" marker-end="url(#arrow)"/>"##
            );
        }
    }
    for &id in &order {
        let node = graph.node(id);
        let (x, y) = position[&id];
        let macs = crate::summary::macs(graph, id);
        let opacity = crate::graphviz::mac_shading(macs, max_macs);
        let color = kind_color(&node.op);
        let label = op_label(graph, id);
        let shape: Vec<String> = node.shape.iter().map(usize::to_string).collect();
        // The end of a long name tells nodes apart (`…denselayer1.conv1`); the tooltip
        // holds the whole name.
        let count = node.name.chars().count();
        let short = if count > 28 {
            format!("…{}", node.name.chars().skip(count - 27).collect::<String>())
        } else {
            node.name.clone()
        };
        let text_color = if opacity > 0.6 { "#fff" } else { "#111" };
        let _ = writeln!(
            svg,
            r##"<g class="node" data-op="{op}"><title>{title}</title><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{color}" fill-opacity="{opacity:.3}" stroke="{color}" stroke-width="2"/><text x="{tx}" y="{ty1}" fill="{text_color}" font-weight="bold">{short}</text><text x="{tx}" y="{ty2}" fill="{text_color}">{label} [{shape}]</text></g>"##,
            op = escape(node.op.mnemonic()),
            title = escape(&format!(
                "{}: {label} -> [{}], {} MACs",
                node.name,
                shape.join(", "),
                crate::summary::thousands(macs)
            )),
            short = escape(&short),
            label = escape(&label),
            shape = shape.join("x"),
            tx = x + 8,
            ty1 = y + 16,
            ty2 = y + 32,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Standard base64 (RFC 4648, with padding), for `data:` URIs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn figure_html(figure: &Figure, class: &str) -> String {
    format!(
        r#"<figure class="{class}"><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>"#,
        caption = escape(&figure.caption),
        data = base64(&figure.png)
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#111;max-width:1400px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}.notes{color:#555}\
table{border-collapse:collapse;font-size:12px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}\
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}\
.graph{overflow:auto;max-height:900px;border:1px solid #ddd}.legend span{display:inline-block;margin-right:14px}\
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}\
.thumbs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figure img{image-rendering:pixelated;border:1px solid #ccc}\
.activation img{max-width:260px;max-height:260px;min-width:96px}.saliency img{max-width:448px}figcaption{font-size:11px;max-width:260px}";

/// The page.
pub fn render_html(report: &Report, graph: &Graph) -> String {
    let thousands = crate::summary::thousands;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&report.title)
    );
    let _ = writeln!(html, "<h1 id=\"title\">{}</h1>", escape(&report.title));
    for note in &report.notes {
        let _ = writeln!(html, "<p class=\"notes\">{}</p>", escape(note));
    }
    let total_macs: u64 = report.rows.iter().map(|r| r.macs).sum();
    let total_params: u64 = report.rows.iter().map(|r| r.params).sum();
    let total_ms: f64 = report.rows.iter().filter_map(|r| r.time_ms).sum();
    let _ = writeln!(
        html,
        "<p>{} layers, {} parameters, {} multiply-adds{}.</p>",
        report.rows.len(),
        thousands(total_params),
        thousands(total_macs),
        if total_ms > 0.0 {
            format!(", {total_ms:.3} ms on the cpu target (sum of kernel medians)")
        } else {
            String::new()
        }
    );

    html.push_str("<h2>Graph</h2>\n<p class=\"legend\">");
    for (label, color) in crate::graphviz::LEGEND {
        let _ = write!(html, "<span><i style=\"background:{color}\"></i>{label}</span>");
    }
    html.push_str("<span>shading: share of the multiply-adds</span></p>\n<div class=\"graph\" id=\"graph\">\n");
    html.push_str(&graph_svg(graph));
    html.push_str("</div>\n");

    html.push_str("<h2>Layers</h2>\n<table id=\"layers\"><thead><tr><th>#</th><th class=\"l\">layer</th><th class=\"l\">op</th><th class=\"l\">output</th><th>params</th><th>MACs</th><th>bytes</th><th class=\"l\">algorithm (cpu)</th><th>ms</th><th>share</th></tr></thead><tbody>\n");
    for (k, row) in report.rows.iter().enumerate() {
        let shape: Vec<String> = row.shape.iter().map(usize::to_string).collect();
        let share = match row.time_ms {
            Some(ms) if total_ms > 0.0 => format!("{:.1}%", 100.0 * ms / total_ms),
            _ => String::new(),
        };
        let _ = writeln!(
            html,
            "<tr><td>{k}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">[{}]</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{share}</td></tr>",
            escape(&row.name),
            escape(&row.op),
            shape.join(", "),
            thousands(row.params),
            thousands(row.macs),
            thousands(row.output_bytes),
            escape(row.algorithm.as_deref().unwrap_or("")),
            row.time_ms.map(|t| format!("{t:.4}")).unwrap_or_default(),
        );
    }
    html.push_str("</tbody></table>\n");

    if !report.activations.is_empty() {
        html.push_str("<h2>Activations</h2>\n<p class=\"notes\">Each channel normalized on its own (viridis: dark low, yellow high); at most 64 channels per layer, the strongest.</p>\n<div class=\"thumbs\" id=\"activations\">\n");
        for figure in &report.activations {
            html.push_str(&figure_html(figure, "activation"));
            html.push('\n');
        }
        html.push_str("</div>\n");
    }
    if !report.saliency.is_empty() {
        html.push_str("<h2>Saliency</h2>\n<div class=\"thumbs\" id=\"saliency\">\n");
        for figure in &report.saliency {
            html.push_str(&figure_html(figure, "saliency"));
            html.push('\n');
        }
        html.push_str("</div>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        // The test vectors of RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
