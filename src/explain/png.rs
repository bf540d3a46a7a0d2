//! Pictures of tensors: grids of per-channel tiles, filters as RGB tiles, vectors as
//! strips of cells, and PNG encoding through the `image` crate.
//!
//! Small maps are enlarged by an integer factor (nearest neighbour, so every value stays
//! one visible square) until a tile is at least [`MIN_TILE`] pixels across; maps larger
//! than [`MAX_TILE`] are subsampled (every k-th value) so that a grid of 64 tiles stays
//! a picture a browser opens at once.

use image::{ImageEncoder, RgbImage};

use super::colormap::{ColorMap, NOT_FINITE};

/// Tiles narrower than this are enlarged (by an integer factor).
pub const MIN_TILE: usize = 32;
/// Tiles wider than this are subsampled.
pub const MAX_TILE: usize = 256;
/// The gap between tiles, in pixels.
const GAP: usize = 1;
/// The colour of the gaps and of empty grid cells.
const BACKGROUND: [u8; 3] = [0xd8, 0xd8, 0xd8];

/// Encodes a picture as PNG.
pub fn encode_png(picture: &RgbImage) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(picture.as_raw(), picture.width(), picture.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode a PNG: {e}"))?;
    Ok(bytes)
}

/// How a `h` x `w` map is drawn: each value becomes `up` x `up` pixels, and every
/// `step`-th value is drawn (one of them is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileScale {
    pub up: usize,
    pub step: usize,
}

impl TileScale {
    /// The scale of a `h` x `w` map (sizes at least 1).
    pub fn of(h: usize, w: usize) -> TileScale {
        let largest = h.max(w).max(1);
        if largest > MAX_TILE {
            TileScale { up: 1, step: largest.div_ceil(MAX_TILE) }
        } else {
            TileScale { up: MIN_TILE.div_ceil(largest).max(1), step: 1 }
        }
    }

    /// The drawn size of `n` values along one side.
    pub fn pixels(self, n: usize) -> usize {
        n.div_ceil(self.step) * self.up
    }
}

/// The grid's columns and rows for `n` tiles: as square as possible, wider than tall.
pub fn grid_shape(n: usize) -> (usize, usize) {
    let columns = (n as f64).sqrt().ceil().max(1.0) as usize;
    (columns, n.div_ceil(columns).max(1))
}

/// Draws tiles of equal size `tile_h` x `tile_w` pixels in a grid; `draw(k, x, y)` gives
/// tile `k`'s pixel at (x, y).
fn grid(n: usize, tile_h: usize, tile_w: usize, draw: &dyn Fn(usize, usize, usize) -> [u8; 3]) -> RgbImage {
    let (columns, rows) = grid_shape(n);
    let width = columns * tile_w + (columns + 1) * GAP;
    let height = rows * tile_h + (rows + 1) * GAP;
    let mut picture = RgbImage::from_pixel(width as u32, height as u32, image::Rgb(BACKGROUND));
    for k in 0..n {
        let (x0, y0) = (GAP + (k % columns) * (tile_w + GAP), GAP + (k / columns) * (tile_h + GAP));
        for y in 0..tile_h {
            for x in 0..tile_w {
                picture.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(draw(k, x, y)));
            }
        }
    }
    picture
}

/// The range a plane is normalized by: its finite minimum and maximum.
fn finite_range(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `v` mapped to [0, 1] by the range `(lo, hi)`; a constant plane maps to 0, and a value
/// that is not finite to NaN (drawn as [`NOT_FINITE`]).
fn normalized(v: f32, (lo, hi): (f32, f32)) -> f32 {
    if !v.is_finite() {
        f32::NAN
    } else if hi > lo {
        (v - lo) / (hi - lo)
    } else {
        0.0
    }
}

/// A grid of the `channels` listed of one item's `[C, H, W]` values (`item` holds
/// C * H * W values), one tile per channel in the order given, each channel normalized
/// by its own finite minimum and maximum.
pub fn channel_grid(item: &[f32], h: usize, w: usize, channels: &[usize], map: &ColorMap) -> RgbImage {
    let scale = TileScale::of(h, w);
    let planes: Vec<&[f32]> = channels.iter().map(|&c| &item[c * h * w..(c + 1) * h * w]).collect();
    let ranges: Vec<(f32, f32)> = planes.iter().map(|p| finite_range(p)).collect();
    grid(channels.len(), scale.pixels(h), scale.pixels(w), &|k, x, y| {
        let (row, column) = ((y / scale.up) * scale.step, (x / scale.up) * scale.step);
        map.color(normalized(planes[k][row * w + column], ranges[k]))
    })
}

/// A grid of a convolution's filters `[O, I, kh, kw]` (`weight` holds O * I * kh * kw
/// values) for I = 3 (as RGB colours) or I = 1 (through `map`); each filter normalized
/// by its own finite minimum and maximum over all its input channels.
pub fn filter_grid(
    weight: &[f32],
    out_channels: usize,
    in_channels: usize,
    kh: usize,
    kw: usize,
    map: &ColorMap,
) -> RgbImage {
    let scale = TileScale::of(kh, kw);
    let per_filter = in_channels * kh * kw;
    let ranges: Vec<(f32, f32)> =
        (0..out_channels).map(|o| finite_range(&weight[o * per_filter..(o + 1) * per_filter])).collect();
    grid(out_channels, scale.pixels(kh), scale.pixels(kw), &|o, x, y| {
        let (row, column) = ((y / scale.up) * scale.step, (x / scale.up) * scale.step);
        let at = |i: usize| weight[o * per_filter + i * kh * kw + row * kw + column];
        if in_channels == 3 {
            let rgb: [f32; 3] = std::array::from_fn(|i| normalized(at(i), ranges[o]));
            if rgb.iter().any(|v| v.is_nan()) { NOT_FINITE } else { rgb.map(|v| (v * 255.0).round() as u8) }
        } else {
            map.color(normalized(at(0), ranges[o]))
        }
    })
}

/// Cells per row of a vector's strip.
pub const STRIP_COLUMNS: usize = 32;
/// Pixels per side of a vector's cell.
const CELL: usize = 8;

/// A vector drawn as rows of [`STRIP_COLUMNS`] cells of 8 x 8 pixels, left to right and
/// top to bottom, normalized by the vector's finite minimum and maximum; cells past the
/// end stay background.
pub fn vector_strip(values: &[f32], map: &ColorMap) -> RgbImage {
    let columns = STRIP_COLUMNS.min(values.len()).max(1);
    let rows = values.len().div_ceil(columns).max(1);
    let range = finite_range(values);
    let mut picture = RgbImage::from_pixel((columns * CELL) as u32, (rows * CELL) as u32, image::Rgb(BACKGROUND));
    for (k, &v) in values.iter().enumerate() {
        let color = map.color(normalized(v, range));
        let (x0, y0) = ((k % columns) * CELL, (k / columns) * CELL);
        for y in 0..CELL {
            for x in 0..CELL {
                picture.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(color));
            }
        }
    }
    picture
}

/// The smallest side of a saliency picture: smaller images are enlarged (nearest
/// neighbour) by an integer factor until their larger side reaches it.
pub const MIN_OVERLAY: usize = 256;

/// A saliency map blended over its image (`pixels`, RGB in [0, 1], `h * w` of them).
/// The map's positive values are scaled by its largest one and coloured through `map`
/// (negative values count as 0), then laid over the image with an opacity of
/// 0.35 + 0.5 * the scaled value, so the image shows through where the map is low.
pub fn saliency_overlay(pixels: &[[f32; 3]], h: usize, w: usize, saliency: &[f32], map: &ColorMap) -> RgbImage {
    let up = MIN_OVERLAY.div_ceil(h.max(w).max(1)).max(1);
    let peak = saliency.iter().copied().filter(|v| v.is_finite()).fold(0.0f32, f32::max);
    let mut picture = RgbImage::new((w * up) as u32, (h * up) as u32);
    for y in 0..h * up {
        for x in 0..w * up {
            let i = (y / up) * w + x / up;
            let heat = if peak > 0.0 && saliency[i].is_finite() { saliency[i].max(0.0) / peak } else { 0.0 };
            let color = map.color(heat);
            let alpha = 0.35 + 0.5 * heat;
            let blended: [u8; 3] = std::array::from_fn(|k| {
                let under = pixels[i][k].clamp(0.0, 1.0) * 255.0;
                (under * (1.0 - alpha) + f32::from(color[k]) * alpha).round() as u8
            });
            picture.put_pixel(x as u32, y as u32, image::Rgb(blended));
        }
    }
    picture
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::colormap::VIRIDIS;

    #[test]
    fn tiles_are_enlarged_or_subsampled() {
        assert_eq!(TileScale::of(8, 8), TileScale { up: 4, step: 1 });
        assert_eq!(TileScale::of(112, 112), TileScale { up: 1, step: 1 });
        assert_eq!(TileScale::of(600, 300), TileScale { up: 1, step: 3 });
        assert_eq!(TileScale::of(600, 300).pixels(600), 200);
        assert_eq!(grid_shape(64), (8, 8));
        assert_eq!(grid_shape(10), (4, 3));
        assert_eq!(grid_shape(1), (1, 1));
    }

    #[test]
    fn a_channel_is_normalized_on_its_own() {
        // Two 1x2 channels with different ranges: each one's minimum is the map's first
        // colour and its maximum the last.
        let item = [0.0, 1.0, -100.0, 100.0];
        let picture = channel_grid(&item, 1, 2, &[0, 1], &VIRIDIS);
        let scale = TileScale::of(1, 2);
        let tile = scale.pixels(2);
        assert_eq!(picture.width() as usize, 2 * tile + 3);
        let at = |k: usize, x: usize| picture.get_pixel((1 + k * (tile + 1) + x) as u32, 1).0;
        for k in 0..2 {
            assert_eq!(at(k, 0), VIRIDIS.color(0.0));
            assert_eq!(at(k, tile - 1), VIRIDIS.color(1.0));
        }
    }
}
