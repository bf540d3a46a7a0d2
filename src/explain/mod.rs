//! Seeing inside a network: every layer's feature maps and statistics
//! ([`activations`]), which input pixels a prediction depends on ([`occlusion`],
//! [`rise`]), drawn with the colour maps of [`colormap`] into PNGs ([`png`]), and a
//! self-contained HTML page about a network ([`report`]).

pub mod activations;
pub mod colormap;
pub mod occlusion;
pub mod png;
pub mod report;
pub mod rise;
