//! The report of a weights file that does not fit a network: a summary line with the
//! counts, the likeliest causes with their fixes, then the missing and unexpected tensors
//! side by side, one row per layer, each missing layer beside the unread layer of the
//! file whose tensors have the same shapes and the closest names.

use std::collections::BTreeMap;

use crate::ir::shape::fmt_shape;

/// Rows of the side-by-side listing shown when the caller does not ask for all of them.
pub const DEFAULT_ROWS: usize = 16;

/// One tensor on either side: its full name and shape (and, for the file's, the dtype).
pub struct Named<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub dtype: Option<String>,
}

/// A missing tensor and the unread one that most likely is it.
struct Pair {
    missing: usize,
    unexpected: usize,
    same_shape: bool,
}

/// Tensors of `wanted` and `candidates` paired one to one: by a dotted-prefix relation
/// first (`module.c.weight` for `c.weight`), then by equal shape, then by name distance;
/// pairs of another shape only for names one typo apart.
fn pair_up(missing: &[Named], unexpected: &[Named]) -> Vec<Pair> {
    // (rank, distance, missing, unexpected): smaller is better.
    let mut candidates: Vec<(u8, usize, usize, usize)> = Vec::new();
    for (m, wanted) in missing.iter().enumerate() {
        for (u, found) in unexpected.iter().enumerate() {
            let same_shape = wanted.shape == found.shape;
            let prefixed = prefix_relation(wanted.name, found.name).is_some();
            // Only names of the same kind of tensor (`weight` with `weight`) compare.
            let suffix = |n: &str| n.rsplit('.').next().unwrap_or(n).to_string();
            let distance = if prefixed { 0 } else { edit_distance(wanted.name, found.name) };
            let typo_limit = (wanted.name.chars().count() / 5).clamp(1, 3);
            let rank = if prefixed {
                0
            } else if same_shape && suffix(wanted.name) == suffix(found.name) {
                1
            } else if distance <= typo_limit {
                2
            } else {
                continue;
            };
            candidates.push((rank, distance, m, u));
        }
    }
    candidates.sort();
    let mut used_missing = vec![false; missing.len()];
    let mut used_unexpected = vec![false; unexpected.len()];
    let mut pairs = Vec::new();
    for (_, _, m, u) in candidates {
        if used_missing[m] || used_unexpected[u] {
            continue;
        }
        used_missing[m] = true;
        used_unexpected[u] = true;
        pairs.push(Pair { missing: m, unexpected: u, same_shape: missing[m].shape == unexpected[u].shape });
    }
    pairs.sort_by_key(|p| p.missing);
    pairs
}

/// `Some((true, prefix))` when `found` is `wanted` with an extra leading `prefix`,
/// `Some((false, prefix))` when `found` lacks the `prefix` that `wanted` has.
fn prefix_relation(wanted: &str, found: &str) -> Option<(bool, String)> {
    if found.len() > wanted.len() && found.ends_with(wanted) && found[..found.len() - wanted.len()].ends_with('.') {
        Some((true, found[..found.len() - wanted.len()].to_string()))
    } else if wanted.len() > found.len()
        && wanted.ends_with(found)
        && wanted[..wanted.len() - found.len()].ends_with('.')
    {
        Some((false, wanted[..wanted.len() - found.len()].to_string()))
    } else {
        None
    }
}

/// Levenshtein distance in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// A tensor's layer: its name without the last component (`layer1.0.conv1` of
/// `layer1.0.conv1.weight`).
fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(layer, _)| layer)
}

/// Whether a name is one cnnc gives an unnamed layer: an op or block name and a count
/// (`conv_0`, `basic_2`).
fn is_generated_name(component: &str) -> bool {
    component.rsplit_once('_').is_some_and(|(op, n)| {
        !op.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !op.ends_with('_')
    })
}

/// The hints that the pairs support, each once, most specific first.
fn hints(missing: &[Named], unexpected: &[Named], pairs: &[Pair], n_params: usize) -> Vec<String> {
    let mut hints = Vec::new();
    let mut prefixes: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut generated: Option<(String, String)> = None;
    let mut numbered: Option<(String, String)> = None;
    let mut nested: Option<(String, String)> = None;
    for pair in pairs {
        let (wanted, found) = (missing[pair.missing].name, unexpected[pair.unexpected].name);
        if let Some(relation) = prefix_relation(wanted, found) {
            *prefixes.entry(relation).or_default() += 1;
            continue;
        }
        let ours: Vec<&str> = wanted.split('.').collect();
        let theirs: Vec<&str> = found.split('.').collect();
        if ours.len() == theirs.len() {
            let differing: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
            if let [i] = differing[..] {
                let (a, b) = (ours[i], theirs[i]);
                let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
                if numeric(a) && numeric(b) {
                    numbered.get_or_insert((ours[..=i].join("."), theirs[..=i].join(".")));
                } else if is_generated_name(a) {
                    generated.get_or_insert((ours[..=i].join("."), theirs[..=i].join(".")));
                }
            }
        } else if ours.len().abs_diff(theirs.len()) == 1 {
            let (long, short) = if ours.len() > theirs.len() { (&ours, &theirs) } else { (&theirs, &ours) };
            let extra = (0..long.len()).find(|&i| {
                let mut rest = long.to_vec();
                rest.remove(i);
                rest == **short
            });
            if extra.is_some() {
                nested.get_or_insert((layer_of(wanted).to_string(), layer_of(found).to_string()));
            }
        }
    }
    for ((extra, prefix), count) in &prefixes {
        let names = if *count == 1 { "1 name".to_string() } else { format!("{count} names") };
        if *extra {
            let mut hint = format!("hint: {names} in the file start with an extra `{prefix}`");
            if prefix == "module." {
                hint += " (a model wrapped in nn.DataParallel or DistributedDataParallel saves so); \
                         save `model.module.state_dict()` instead, or strip the prefix";
            } else {
                hint += "; strip it from the file's names, or nest the layers in the network the same way";
            }
            hints.push(hint);
        } else {
            hints.push(format!(
                "hint: {names} in the file lack the prefix `{prefix}` that the network's layer names have; \
                 name the layers in the network as in the model that saved the file"
            ));
        }
    }
    if let Some((ours, theirs)) = generated {
        let op = ours.rsplit('.').next().and_then(|c| c.rsplit_once('_')).map_or("conv", |(op, _)| op).to_string();
        let theirs_last = theirs.rsplit('.').next().unwrap_or(&theirs);
        hints.push(format!(
            "hint: `{ours}` is the name cnnc gives an unnamed layer (the op and a count from 0 in its scope); \
             the file calls it `{theirs}`: name the layer in the program as the model does, `{theirs_last}: {op}(...)`"
        ));
    }
    if let Some((ours, theirs)) = numbered {
        hints.push(format!(
            "hint: the network's `{ours}` has the file's tensors of `{theirs}`: `seq` numbers every step from 0, \
             the steps without weights too (relu, pooling, dropout, flatten), as nn.Sequential does; \
             a step before it is missing or extra"
        ));
    }
    if let Some((ours, theirs)) = nested {
        hints.push(format!(
            "hint: the network's `{ours}` and the file's `{theirs}` nest differently: a block call's layers are \
             prefixed by its label (`NAME: block(...)`) or, inside `seq`, by its position; a `seq` label adds a level"
        ));
    }
    let n_missing = missing.len();
    let n_prefixed: usize = prefixes.values().sum();
    let n_same_shape = pairs
        .iter()
        .filter(|p| p.same_shape && prefix_relation(missing[p.missing].name, unexpected[p.unexpected].name).is_none())
        .filter(|p| missing[p.missing].name != unexpected[p.unexpected].name)
        .count();
    if n_missing * 2 > n_params && n_prefixed * 2 < n_missing && unexpected.len() * 2 > n_missing {
        let plainly = if n_same_shape * 2 >= n_missing {
            format!(
                "most of the network's tensors ({n_missing} of {n_params}) are not in the file under the names \
                 the network gives them, but {n_same_shape} have a tensor of the same shape there under another \
                 name: the layers are named differently (see the hints and the rows below)"
            )
        } else {
            format!(
                "most of the network's tensors ({n_missing} of {n_params}) are not in the file, and the file has \
                 {} that the network does not read: the file holds another architecture than the program \
                 describes (torchvision's GoogLeNet is not the 2014 paper's, for one); compare \
                 `cnnc summary NET.cnn` with the model's `state_dict()` names and shapes",
                unexpected.len()
            )
        };
        hints.insert(0, plainly);
    }
    hints
}

/// One side's layers, in order of first appearance: (layer, indices of its tensors).
fn layers(tensors: &[Named]) -> Vec<(String, Vec<usize>)> {
    let mut order: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let layer = layer_of(t.name);
        match order.iter_mut().find(|(l, _)| l == layer) {
            Some((_, members)) => members.push(i),
            None => order.push((layer.to_string(), vec![i])),
        }
    }
    order
}

fn cell(tensors: &[Named], layer: &str, members: &[usize]) -> String {
    let items: Vec<String> = members
        .iter()
        .map(|&i| {
            let t = &tensors[i];
            let short = if layer.is_empty() { t.name } else { &t.name[layer.len() + 1..] };
            let dtype = t.dtype.as_deref().filter(|d| *d != "F32").map(|d| format!(" {d}")).unwrap_or_default();
            format!("{short} {}{dtype}", fmt_shape(t.shape))
        })
        .collect();
    if layer.is_empty() { items.join(", ") } else { format!("{layer}: {}", items.join(", ")) }
}

/// The listing and hints for missing and unexpected tensors (either may be empty);
/// `max_rows` caps the side-by-side rows.
pub fn report(missing: &[Named], unexpected: &[Named], n_params: usize, max_rows: Option<usize>) -> String {
    let pairs = pair_up(missing, unexpected);
    let mut text = String::new();
    for hint in hints(missing, unexpected, &pairs, n_params) {
        text += "\n  ";
        text += &hint;
    }
    let partner_of_missing: BTreeMap<usize, usize> = pairs.iter().map(|p| (p.missing, p.unexpected)).collect();
    let unexpected_layers = layers(unexpected);
    let layer_index_of = |u: usize| {
        let layer = layer_of(unexpected[u].name);
        unexpected_layers.iter().position(|(l, _)| l == layer).expect("every tensor has a layer")
    };
    let mut shown = vec![false; unexpected_layers.len()];
    let mut rows: Vec<(String, String)> = Vec::new();
    for (layer, members) in layers(missing) {
        let partner = members.iter().find_map(|m| partner_of_missing.get(m)).map(|&u| layer_index_of(u));
        let right = match partner {
            Some(index) if !shown[index] => {
                shown[index] = true;
                // The file's tensors in the order of the network's they pair with.
                let (l, m) = &unexpected_layers[index];
                let mut m = m.clone();
                m.sort_by_key(|u| pairs.iter().find(|p| p.unexpected == *u).map_or(usize::MAX, |p| p.missing));
                cell(unexpected, l, &m)
            }
            Some(index) => format!("(with {})", unexpected_layers[index].0),
            None => String::new(),
        };
        rows.push((cell(missing, &layer, &members), right));
    }
    for (index, (layer, members)) in unexpected_layers.iter().enumerate() {
        if !shown[index] {
            rows.push((String::new(), cell(unexpected, layer, members)));
        }
    }
    let left_title = "the network reads (missing or mis-shaped)";
    let right_title = "the file has (unread or mis-shaped)";
    let width = rows.iter().map(|(l, _)| l.chars().count()).chain([left_title.len()]).max().unwrap_or(0).min(56);
    let (left_title, right_title) = match (missing.is_empty(), unexpected.is_empty()) {
        (false, false) => (left_title, right_title),
        (false, true) => (left_title, ""),
        (true, _) => ("", right_title),
    };
    let line = |left: &str, right: &str| {
        let row = if right.is_empty() {
            left.to_string()
        } else if missing.is_empty() {
            right.to_string()
        } else {
            format!("{left:<width$} | {right}")
        };
        format!("\n    {}", row.trim_end())
    };
    text += &format!("\n  {}", line(left_title, right_title).trim_start());
    let limit = max_rows.unwrap_or(usize::MAX);
    for (left, right) in rows.iter().take(limit) {
        text += &line(left, right);
    }
    if rows.len() > limit {
        text += &format!("\n    ... and {} more rows (--verbose lists them all)", rows.len() - limit);
    }
    let paired_other_shape = pairs.iter().filter(|p| !p.same_shape).count();
    if paired_other_shape > 0 {
        text += &format!("\n  ({paired_other_shape} of the pairs side by side differ in shape as well as in name)");
    }
    text
}
