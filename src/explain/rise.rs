//! RISE, randomized input sampling (Petsiuk, Das and Saenko, 2018): saliency from the
//! scores of many randomly masked copies of the image, forward passes only.
//!
//! Each mask is a coarse grid of `cells` x `cells` cells (one more row and column, for
//! the shift), each kept with probability `keep`, enlarged bilinearly to cells of
//! ceil(H / cells) x ceil(W / cells) pixels and shifted by a random offset within one
//! cell, so that masks are smooth and their edges fall anywhere. A masked copy keeps
//! `m * x + (1 - m) * fill` of each value. A pixel's saliency is the mean score of the
//! copies weighted by how much of the pixel each kept, minus the mean score of all
//! copies: `sum(s_i m_i) / sum(m_i) - mean(s)`. RISE's paper map is `sum(s_i m_i) / (N
//! keep)`; with the masks' expected sum N keep in place of the actual one this is the
//! same map less a constant, which makes it signed like the occlusion map (positive:
//! the class scores higher when the pixel is visible).
//!
//! The masks come from a ChaCha8 generator seeded by `seed`, so a map is reproducible.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::occlusion::{Classes, Fill, Saliency, Score, choose_classes, fill_values, run_copies};
use crate::exec::Executor;
use crate::tensor::Tensor;

/// How to sample masks.
#[derive(Clone, Copy, Debug)]
pub struct RiseOptions {
    /// Masked copies run.
    pub masks: usize,
    /// Cells per side of a mask's coarse grid.
    pub cells: usize,
    /// The probability that a cell is kept.
    pub keep: f32,
    pub fill: Fill,
    pub score: Score,
    pub seed: u64,
}

/// One `h` x `w` mask with values in [0, 1].
pub fn mask(rng: &mut ChaCha8Rng, h: usize, w: usize, cells: usize, keep: f32) -> Vec<f32> {
    let (cell_h, cell_w) = (h.div_ceil(cells), w.div_ceil(cells));
    // Grid points at multiples of the cell size; cells + 2 per side covers the shift.
    let side = cells + 2;
    let grid: Vec<f32> = (0..side * side).map(|_| if rng.random::<f32>() < keep { 1.0 } else { 0.0 }).collect();
    let (dy, dx) = (rng.random_range(0..cell_h), rng.random_range(0..cell_w));
    let mut values = Vec::with_capacity(h * w);
    for y in 0..h {
        let v = (y + dy) as f32 / cell_h as f32;
        let (i, fy) = (v.floor() as usize, v.fract());
        for x in 0..w {
            let u = (x + dx) as f32 / cell_w as f32;
            let (j, fx) = (u.floor() as usize, u.fract());
            let at = |r: usize, c: usize| grid[r.min(side - 1) * side + c.min(side - 1)];
            let top = at(i, j) * (1.0 - fx) + at(i, j + 1) * fx;
            let bottom = at(i + 1, j) * (1.0 - fx) + at(i + 1, j + 1) * fx;
            values.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    values
}

/// Computes RISE saliency for `input` (`[1, C, H, W]`) on `executor`, compiled for
/// `batch` items, whose one output holds class scores.
pub fn rise(
    executor: &dyn Executor,
    batch: usize,
    input: &Tensor,
    classes: &Classes,
    options: &RiseOptions,
) -> Result<Saliency, String> {
    let [1, c, h, w] = input.shape[..] else {
        return Err(format!("RISE takes one image [1, C, H, W], not {}", input.shape_string()));
    };
    let RiseOptions { masks, cells, keep, fill, score, seed } = *options;
    if masks == 0 || batch == 0 || cells == 0 || cells > h.min(w) {
        return Err(format!("RISE needs at least one mask, and 1 to {} cells per side for this input", h.min(w)));
    }
    if !(keep > 0.0 && keep < 1.0) {
        return Err(format!("the probability of keeping a cell must be between 0 and 1, not {keep}"));
    }
    let plane = h * w;
    let fill_values = fill_values(input, c, plane, fill);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Masks are drawn in order as the copies are made, and kept for the weighting.
    let mut drawn: Vec<Vec<f32>> = Vec::with_capacity(masks);
    let (all_scores, runs) = run_copies(executor, batch, input, masks, score, &mut |_, data| {
        let m = mask(&mut rng, h, w, cells, keep);
        for (ch, &f) in fill_values.iter().enumerate() {
            for (value, &keep) in data[ch * plane..(ch + 1) * plane].iter_mut().zip(&m) {
                *value = keep * *value + (1.0 - keep) * f;
            }
        }
        drawn.push(m);
    })?;
    let chosen = choose_classes(classes, &all_scores[0])?;
    let mut maps = Vec::with_capacity(chosen.len());
    for &class in &chosen {
        let mut weighted = vec![0.0f64; plane];
        let mut total = vec![0.0f64; plane];
        let mut mean = 0.0f64;
        for (m, scores) in drawn.iter().zip(&all_scores[1..]) {
            let s = f64::from(scores[class]);
            mean += s;
            for ((wsum, tsum), &kept) in weighted.iter_mut().zip(&mut total).zip(m) {
                *wsum += s * f64::from(kept);
                *tsum += f64::from(kept);
            }
        }
        mean /= masks as f64;
        maps.push(
            weighted.iter().zip(&total).map(|(ws, t)| if *t > 0.0 { (ws / t - mean) as f32 } else { 0.0 }).collect(),
        );
    }
    Ok(Saliency {
        height: h,
        width: w,
        base_scores: chosen.iter().map(|&k| all_scores[0][k]).collect(),
        classes: chosen,
        maps,
        windows: masks,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_smooth_and_keep_about_the_share_asked() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (h, w) = (32, 24);
        let mut sum = 0.0f64;
        for _ in 0..400 {
            let m = mask(&mut rng, h, w, 4, 0.5);
            assert_eq!(m.len(), h * w);
            assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
            // Neighbours differ by at most one cell's slope (1 / cell size).
            for y in 0..h {
                for x in 1..w {
                    assert!((m[y * w + x] - m[y * w + x - 1]).abs() <= 1.0 / 6.0 + 1e-6);
                }
            }
            sum += m.iter().map(|&v| f64::from(v)).sum::<f64>() / (h * w) as f64;
        }
        let share = sum / 400.0;
        assert!((share - 0.5).abs() < 0.03, "masks keep {share:.3} on average");
    }
}
