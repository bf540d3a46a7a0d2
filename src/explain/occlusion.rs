//! Occlusion saliency (Zeiler and Fergus, 2014): which parts of an image a class score
//! depends on, from forward passes only.
//!
//! A window of `window` x `window` pixels slides over the input with `stride` (one more
//! position at the far edge when the stride does not land there, so every pixel is
//! covered); each position gives a copy of the input with the window filled
//! ([`Fill::Zero`]: the value 0, which after normalization is the dataset's mean colour,
//! or black for inputs that are only scaled to [0, 1]; [`Fill::Mean`]: each channel's
//! mean over this image). The copies run in batches on any executor (the CLI compiles
//! the CPU backend at a batch size), the unoccluded image as the first item. A window's
//! saliency is the drop of the class's score, unoccluded minus occluded ([`Score`]); a
//! pixel's saliency is the mean over the windows that cover it. Positive values mark
//! pixels the class needs; negative ones, pixels that speak against it.

use crate::exec::Executor;
use crate::tensor::Tensor;

/// What fills an occluding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// The value 0 (the normalization's mean; black when inputs are only scaled).
    Zero,
    /// Each channel's mean over the image.
    Mean,
}

/// Which number of the output the saliency measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// The network's output for the class as it is (a logit, or a probability when the
    /// network ends with a softmax).
    Output,
    /// The softmax of the output row, for networks that end with logits.
    Softmax,
}

/// How to occlude.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub window: usize,
    pub stride: usize,
    pub fill: Fill,
    pub score: Score,
}

/// The default window for an `h` x `w` image: an eighth of the smaller side, at least 2
/// pixels (but no more than the side); the default stride is half the window.
pub fn default_window(h: usize, w: usize) -> usize {
    (h.min(w) / 8).max(2).min(h.min(w)).max(1)
}

/// A window's start positions along a side of `size`: 0, stride, 2 stride, ... and
/// `size - window` when the stride does not land there. Empty when the window does not
/// fit.
pub fn window_positions(size: usize, window: usize, stride: usize) -> Vec<usize> {
    if window == 0 || window > size || stride == 0 {
        return Vec::new();
    }
    let last = size - window;
    let mut positions: Vec<usize> = (0..=last).step_by(stride).collect();
    if positions.last() != Some(&last) {
        positions.push(last);
    }
    positions
}

/// The saliency maps of an image.
#[derive(Clone, Debug)]
pub struct Saliency {
    pub height: usize,
    pub width: usize,
    /// The classes measured, in the order of `maps`.
    pub classes: Vec<usize>,
    /// The unoccluded image's score per class (in `classes` order).
    pub base_scores: Vec<f32>,
    /// Per class, `height * width` values: each pixel's mean score drop.
    pub maps: Vec<Vec<f32>>,
    /// Changed copies run: occluded windows, or RISE's masks.
    pub windows: usize,
    /// Executor runs (batches).
    pub runs: usize,
}

/// Which classes to explain.
#[derive(Clone, Debug)]
pub enum Classes {
    /// These classes.
    Given(Vec<usize>),
    /// The `k` best of the unoccluded image (by the chosen score).
    Top(usize),
}

pub(crate) fn scores(row: &[f32], score: Score) -> Vec<f32> {
    match score {
        Score::Output => row.to_vec(),
        Score::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / total) as f32).collect()
        }
    }
}

/// The classes `classes` asks for, given the unoccluded image's scores.
pub(crate) fn choose_classes(classes: &Classes, base: &[f32]) -> Result<Vec<usize>, String> {
    let n_classes = base.len();
    match classes {
        Classes::Given(list) => match list.iter().find(|&&k| k >= n_classes) {
            Some(bad) => Err(format!(
                "class {bad} does not exist: the network has {n_classes} classes (0 to {})",
                n_classes.saturating_sub(1)
            )),
            None => Ok(list.clone()),
        },
        Classes::Top(k) => {
            Ok(crate::io::top_k(base, (*k).clamp(1, n_classes)).into_iter().map(|(class, _)| class).collect())
        }
    }
}

/// The value each channel of an occluded region is filled with: 0, or the channel's mean
/// over the image (`input` holds `c` planes of `plane` values).
pub(crate) fn fill_values(input: &Tensor, c: usize, plane: usize, fill: Fill) -> Vec<f32> {
    (0..c)
        .map(|ch| match fill {
            Fill::Zero => 0.0,
            Fill::Mean => {
                let values = &input.data[ch * plane..(ch + 1) * plane];
                (values.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64) as f32
            }
        })
        .collect()
}

/// Runs the input and `copies` changed copies of it (`change(k, values)` edits copy k's
/// `[C, H, W]` values in place) through `executor`, compiled for `batch` items, and
/// returns each item's scores (the input's first) and the number of runs. The last
/// batch is padded with the unchanged input.
pub(crate) fn run_copies(
    executor: &dyn Executor,
    batch: usize,
    input: &Tensor,
    copies: usize,
    score: Score,
    change: &mut dyn FnMut(usize, &mut [f32]),
) -> Result<(Vec<Vec<f32>>, usize), String> {
    let items = copies + 1;
    let size = input.len();
    let mut all_scores: Vec<Vec<f32>> = Vec::with_capacity(items);
    let mut runs = 0;
    for first in (0..items).step_by(batch) {
        let mut data = Vec::with_capacity(batch * size);
        for item in first..first + batch {
            let start = data.len();
            data.extend_from_slice(&input.data);
            if (1..items).contains(&item) {
                change(item - 1, &mut data[start..start + size]);
            }
        }
        let mut shape = input.shape.clone();
        shape[0] = batch;
        let tensor = Tensor::new(shape, data).expect("batch copies of the input");
        let outputs = executor.run(std::slice::from_ref(&tensor))?;
        runs += 1;
        let [output] = &outputs[..] else {
            return Err(format!("saliency needs a network with one output, this one has {}", outputs.len()));
        };
        let per_item = output.len() / batch;
        let is_scores = output.shape.first() == Some(&batch) && output.shape[2..].iter().all(|&d| d == 1);
        if !is_scores || per_item == 0 {
            return Err(format!("the output {} is not one row of class scores per item", output.shape_string()));
        }
        for item in first..(first + batch).min(items) {
            let row = &output.data[(item - first) * per_item..(item - first + 1) * per_item];
            all_scores.push(scores(row, score));
        }
    }
    Ok((all_scores, runs))
}

/// Computes occlusion saliency for `input` (`[1, C, H, W]`) on `executor`, compiled for
/// `batch` items of the same shape, whose one output holds `[batch, classes]` scores
/// (or `[batch, classes, 1, 1]`).
pub fn occlusion(
    executor: &dyn Executor,
    batch: usize,
    input: &Tensor,
    classes: &Classes,
    options: &Options,
) -> Result<Saliency, String> {
    let [1, c, h, w] = input.shape[..] else {
        return Err(format!("occlusion takes one image [1, C, H, W], not {}", input.shape_string()));
    };
    let Options { window, stride, fill, score } = *options;
    if window > h || window > w || window == 0 {
        return Err(format!("the window ({window}x{window}) does not fit in the {h}x{w} input"));
    }
    if stride == 0 || batch == 0 {
        return Err("the stride and the batch must be at least 1".into());
    }
    let rows = window_positions(h, window, stride);
    let columns = window_positions(w, window, stride);
    let windows: Vec<(usize, usize)> = rows.iter().flat_map(|&y| columns.iter().map(move |&x| (y, x))).collect();
    let plane = h * w;
    let fill_values = fill_values(input, c, plane, fill);

    // Item 0 is the unoccluded image, item k + 1 the image with window k filled.
    let (all_scores, runs) = run_copies(executor, batch, input, windows.len(), score, &mut |k, data| {
        let (y0, x0) = windows[k];
        for (ch, &value) in fill_values.iter().enumerate() {
            for y in y0..y0 + window {
                let row = ch * plane + y * w;
                data[row + x0..row + x0 + window].fill(value);
            }
        }
    })?;
    let base = &all_scores[0];
    let chosen = choose_classes(classes, base)?;
    let mut maps = Vec::with_capacity(chosen.len());
    for &class in &chosen {
        let mut sum = vec![0.0f64; plane];
        let mut count = vec![0u32; plane];
        for (k, &(y0, x0)) in windows.iter().enumerate() {
            let drop = f64::from(base[class]) - f64::from(all_scores[k + 1][class]);
            for y in y0..y0 + window {
                for x in x0..x0 + window {
                    sum[y * w + x] += drop;
                    count[y * w + x] += 1;
                }
            }
        }
        maps.push(sum.iter().zip(&count).map(|(s, &n)| (s / f64::from(n.max(1))) as f32).collect());
    }
    Ok(Saliency {
        height: h,
        width: w,
        base_scores: chosen.iter().map(|&k| base[k]).collect(),
        classes: chosen,
        maps,
        windows: windows.len(),
        runs,
    })
}

/// The image a saliency map is drawn over: one item's `[C, H, W]` values as RGB in
/// [0, 1]. With the normalization the values went through (`mean`, `std` per channel),
/// it is undone (`x * std + mean`), giving the pixels as read; without, the values are
/// stretched from their minimum and maximum. One channel is gray; of other counts than 1
/// and 3, the first channel is shown as gray.
pub fn display_pixels(
    item: &[f32],
    c: usize,
    h: usize,
    w: usize,
    normalization: Option<(&[f32], &[f32])>,
) -> Vec<[f32; 3]> {
    let plane = h * w;
    let channel = |ch: usize, i: usize| -> f32 {
        let v = item[ch * plane + i];
        match normalization {
            Some((mean, std)) if mean.len() == c && std.len() == c => v * std[ch] + mean[ch],
            _ => v,
        }
    };
    let mut values: Vec<[f32; 3]> = (0..plane)
        .map(|i| if c == 3 { [channel(0, i), channel(1, i), channel(2, i)] } else { [channel(0, i); 3] })
        .collect();
    if normalization.is_none() {
        let finite = values.iter().flatten().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        for pixel in &mut values {
            *pixel = pixel.map(|v| if v.is_finite() { (v - lo) / span } else { 0.0 });
        }
    }
    for pixel in &mut values {
        *pixel = pixel.map(|v| v.clamp(0.0, 1.0));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "network" whose class 0 is the sum of the top-left 2x2 pixels and class 1 the
    /// sum of the whole image, at any batch.
    struct Sums;

    impl Executor for Sums {
        fn target(&self) -> crate::exec::Target {
            crate::exec::Target::Reference
        }
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
            let x = &inputs[0];
            let (n, plane) = (x.shape[0], x.shape[2] * x.shape[3]);
            let w = x.shape[3];
            let mut out = Vec::new();
            for item in x.data.chunks(plane) {
                out.push(item[0] + item[1] + item[w] + item[w + 1]);
                out.push(item.iter().sum());
            }
            Ok(vec![Tensor::new(vec![n, 2], out).unwrap()])
        }
    }

    #[test]
    fn the_map_marks_what_the_score_reads() {
        let input = Tensor::new(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
        let options = Options { window: 2, stride: 2, fill: Fill::Zero, score: Score::Output };
        for batch in [1, 3, 16] {
            let saliency = occlusion(&Sums, batch, &input, &Classes::Given(vec![0, 1]), &options).unwrap();
            assert_eq!((saliency.windows, saliency.runs), (4, 5usize.div_ceil(batch)));
            assert_eq!(saliency.base_scores, vec![4.0, 16.0]);
            // Class 0: only the top-left window lowers the score, by 4.
            let expected: Vec<f32> = (0..16).map(|i| if i % 4 < 2 && i / 4 < 2 { 4.0 } else { 0.0 }).collect();
            assert_eq!(saliency.maps[0], expected);
            // Class 1: every window lowers it by 4.
            assert_eq!(saliency.maps[1], vec![4.0; 16]);
        }
        let top = occlusion(&Sums, 2, &input, &Classes::Top(1), &options).unwrap();
        assert_eq!(top.classes, vec![1]);
        let error = occlusion(&Sums, 2, &input, &Classes::Given(vec![2]), &options).unwrap_err();
        assert!(error.contains("class 2 does not exist"), "{error}");
        let too_big = Options { window: 5, ..options };
        assert!(occlusion(&Sums, 2, &input, &Classes::Top(1), &too_big).is_err());
    }

    #[test]
    fn windows_cover_every_pixel() {
        assert_eq!(window_positions(8, 2, 1), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(window_positions(224, 28, 14).len(), 15);
        assert_eq!(window_positions(10, 4, 4), vec![0, 4, 6]);
        assert_eq!(window_positions(4, 4, 3), vec![0]);
        assert!(window_positions(4, 5, 1).is_empty());
        assert_eq!(default_window(8, 8), 2);
        assert_eq!(default_window(224, 224), 28);
        assert_eq!(default_window(1, 5), 1);
    }
}
