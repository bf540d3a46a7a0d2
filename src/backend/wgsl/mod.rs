//! The GPU backend: WGSL compute shaders specialized from the templates in `shaders/`,
//! validated by naga, run through wgpu.
//!
//! [`emit::plan`] turns an optimized graph into a [`emit::Plan`]: buffer layout and one
//! specialized, naga-validated kernel per node. [`runtime`] creates the device, uploads
//! the weights, builds every pipeline once and runs all dispatches of an inference in
//! one compute pass. [`artifacts`] writes a plan to disk (modules, dispatch plan,
//! weights) and [`GpuModel::load`] runs it without the source. [`bench`] times a model
//! (`cnnc bench --target gpu`). A user's own wgpu program passes its device and queue to
//! [`compile_gpu_on`] or [`GpuModel::load_on`]; [`wgpu`] is re-exported so that it can
//! name the same version.

pub mod artifacts;
pub mod bench;
pub mod emit;
pub mod runtime;

pub use artifacts::{ArtifactPlan, write_artifacts, write_artifacts_with};
pub use bench::{DispatchTime, GpuBenchOptions, GpuBenchReport, bench_gpu, bench_gpu_with};
pub use emit::{ConvKernel, DeviceLimits, Kernel, Plan, plan, validate_wgsl};
pub use runtime::{GpuModel, GpuOptions, adapter_available, compile_gpu, compile_gpu_on, compile_gpu_with};
pub use wgpu;
