//! Seeing inside a network: every layer's feature maps and statistics
//! ([`activations`]), and which input pixels a prediction depends on ([`occlusion`]),
//! drawn with the colour maps of [`colormap`] into PNGs ([`png`]).

pub mod activations;
pub mod colormap;
pub mod occlusion;
pub mod png;
pub mod report;
