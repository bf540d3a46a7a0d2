//! Perceptual colour maps as small tables of control points, linearly interpolated.
//!
//! The control points are matplotlib's `viridis` and `inferno` sampled at ten evenly
//! spaced positions (the values R's `viridisLite` prints for `viridis(10)` and
//! `inferno(10)`). Linear interpolation between them stays within a few units of the
//! full 256-entry tables, which is more than a picture of feature maps needs. Both maps
//! rise monotonically in lightness, so a brighter colour always means a larger value,
//! also in grayscale print.

/// A colour map: control points at evenly spaced positions from 0 to 1.
#[derive(Clone, Copy, Debug)]
pub struct ColorMap {
    /// The map's name, as written in the JSON files.
    pub name: &'static str,
    points: &'static [[u8; 3]],
}

/// matplotlib's viridis (dark blue, green, yellow): feature maps.
pub const VIRIDIS: ColorMap = ColorMap {
    name: "viridis",
    points: &[
        [0x44, 0x01, 0x54],
        [0x48, 0x28, 0x78],
        [0x3e, 0x4a, 0x89],
        [0x31, 0x68, 0x8e],
        [0x26, 0x82, 0x8e],
        [0x1f, 0x9e, 0x89],
        [0x35, 0xb7, 0x79],
        [0x6d, 0xcd, 0x59],
        [0xb4, 0xde, 0x2c],
        [0xfd, 0xe7, 0x25],
    ],
};

/// matplotlib's inferno (black, purple, orange, pale yellow): saliency heat maps.
pub const INFERNO: ColorMap = ColorMap {
    name: "inferno",
    points: &[
        [0x00, 0x00, 0x04],
        [0x1b, 0x0c, 0x42],
        [0x4b, 0x0c, 0x6b],
        [0x78, 0x1c, 0x6d],
        [0xa5, 0x2c, 0x60],
        [0xcf, 0x44, 0x46],
        [0xed, 0x69, 0x25],
        [0xfb, 0x9a, 0x06],
        [0xf7, 0xd0, 0x3c],
        [0xfc, 0xff, 0xa4],
    ],
};

/// The colour of a value that is NaN or infinite in a picture: pure magenta, which
/// neither map contains.
pub const NOT_FINITE: [u8; 3] = [0xff, 0x00, 0xff];

impl ColorMap {
    /// The colour of `t` in [0, 1] (clamped); NaN gets [`NOT_FINITE`].
    pub fn color(&self, t: f32) -> [u8; 3] {
        if t.is_nan() {
            return NOT_FINITE;
        }
        let t = t.clamp(0.0, 1.0);
        let segments = self.points.len() - 1;
        let position = t * segments as f32;
        let index = (position.floor() as usize).min(segments - 1);
        let fraction = position - index as f32;
        let (a, b) = (self.points[index], self.points[index + 1]);
        std::array::from_fn(|k| (f32::from(a[k]) + (f32::from(b[k]) - f32::from(a[k])) * fraction).round() as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative luminance (Rec. 709 weights on the 8-bit values).
    fn luminance(c: [u8; 3]) -> f32 {
        0.2126 * f32::from(c[0]) + 0.7152 * f32::from(c[1]) + 0.0722 * f32::from(c[2])
    }

    #[test]
    fn ends_are_the_tables_ends_and_lightness_rises() {
        for map in [VIRIDIS, INFERNO] {
            assert_eq!(map.color(0.0), map.points[0]);
            assert_eq!(map.color(1.0), *map.points.last().unwrap());
            assert_eq!(map.color(-3.0), map.points[0]);
            assert_eq!(map.color(7.0), *map.points.last().unwrap());
            assert_eq!(map.color(f32::NAN), NOT_FINITE);
            let mut previous = -1.0;
            for step in 0..=100 {
                let l = luminance(map.color(step as f32 / 100.0));
                assert!(l >= previous - 0.5, "{}: lightness falls at {step}%", map.name);
                previous = l;
            }
        }
    }
}
