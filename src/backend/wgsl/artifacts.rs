//! GPU build artifacts: what `cnnc build NET --target gpu -o DIR` writes, and
//! [`GpuModel::load`], which runs them without the `.cnn` source.
//!
//! In `DIR`:
//!
//! - `NAME.wgsl/kernel_NNN.wgsl`: one file per distinct shader module (kernels with the
//!   same text share one), each a complete WGSL module with entry point `main`, so that
//!   any WGSL tool (naga, tint, a browser) checks it as it is; a concatenation would not
//!   be valid WGSL (every module declares `main` and its own bindings). Each starts with
//!   a `// kernel N: node LAYER (template)` comment line.
//! - `NAME.plan.json`: the dispatch plan ([`ArtifactPlan`]): the buffers, where every
//!   input and output lives, and per dispatch its module, bindings (buffer, byte offset,
//!   byte size, access) and workgroup counts.
//! - `NAME.weights`: the contents of the weights buffers one after another, little-endian
//!   f32 at the byte offsets the plan's bindings use; the plan gives each buffer's range.
//!
//! The layout is made for WebGPU's default limits (every adapter offers them) unless
//! [`write_artifacts_with`] is given others; `load` refuses a plan the device cannot
//! hold.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::emit::{self, Binding, BufferId, ConvKernel, DeviceLimits, Kernel, Placement, Plan};
use super::runtime::{GpuModel, device_limits, open_device};
use crate::ir::Graph;

/// The version of the artifact format `write_artifacts` writes and `load` reads.
pub const FORMAT_VERSION: u32 = 1;

/// A weights buffer's range in the `.weights` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRange {
    pub offset: u64,
    pub bytes: u64,
}

/// One dispatch: the module it runs, what it binds, how many workgroups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactDispatch {
    pub layer: String,
    pub template: String,
    /// A path relative to the plan's directory.
    pub module: String,
    pub bindings: Vec<Binding>,
    pub workgroups: [u32; 3],
}

/// `NAME.plan.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactPlan {
    pub format: u32,
    pub network: String,
    /// The limits the layout respects; the device must offer at least these.
    pub limits: DeviceLimits,
    pub conv_kernel: ConvKernel,
    pub activation_bytes: u64,
    /// The `.weights` file, relative to the plan's directory.
    pub weights_file: String,
    /// Per weights buffer, its range in the weights file (its size is `bytes`).
    pub weight_buffers: Vec<BlobRange>,
    /// Where every weight tensor lives (informative: the weights file already holds
    /// them laid out).
    pub weights: Vec<Placement>,
    /// In `Graph::inputs` order.
    pub inputs: Vec<Placement>,
    /// In `Graph::outputs` order.
    pub outputs: Vec<Placement>,
    /// In execution order.
    pub dispatches: Vec<ArtifactDispatch>,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> String {
    format!("cannot {what} {}: {error}", path.display())
}

/// Writes `NAME.wgsl/`, `NAME.plan.json` and `NAME.weights` into `dir` (created if
/// missing) for WebGPU's default limits and the direct convolution kernel; returns the
/// paths written.
pub fn write_artifacts(graph: &Graph, dir: &Path, name: &str) -> Result<Vec<PathBuf>, String> {
    write_artifacts_with(graph, dir, name, &DeviceLimits::default(), ConvKernel::default())
}

/// [`write_artifacts`] for given limits and convolution kernel.
pub fn write_artifacts_with(
    graph: &Graph,
    dir: &Path,
    name: &str,
    limits: &DeviceLimits,
    conv_kernel: ConvKernel,
) -> Result<Vec<PathBuf>, String> {
    let plan = emit::plan(graph, limits, conv_kernel)?;
    // The weights, checked before anything is written.
    let mut images: Vec<Vec<u8>> = plan.weight_buffer_bytes.iter().map(|&b| vec![0u8; b as usize]).collect();
    for placement in &plan.weights {
        let tensor = emit::placed_weight(graph, placement)?;
        for segment in &placement.segments {
            let BufferId::Weights(index) = segment.buffer else { continue };
            let values = &tensor.data[segment.first as usize..][..segment.count as usize];
            let image = &mut images[index][segment.byte_offset as usize..];
            for (bytes, value) in image.chunks_exact_mut(4).zip(values) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let mut written = Vec::new();
    let modules_dir_name = format!("{name}.wgsl");
    let modules_dir = dir.join(&modules_dir_name);
    if modules_dir.exists() {
        std::fs::remove_dir_all(&modules_dir).map_err(|e| io_error("replace", &modules_dir, e))?;
    }
    std::fs::create_dir_all(&modules_dir).map_err(|e| io_error("create", &modules_dir, e))?;
    let mut module_of_source: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut dispatches = Vec::with_capacity(plan.kernels.len());
    for (index, kernel) in plan.kernels.iter().enumerate() {
        let module = match module_of_source.get(kernel.source.as_str()) {
            Some(module) => module.clone(),
            None => {
                let file = format!("kernel_{:03}.wgsl", module_of_source.len());
                let path = modules_dir.join(&file);
                let text = format!("// kernel {index}: node {} ({})\n{}", kernel.layer, kernel.template, kernel.source);
                std::fs::write(&path, text).map_err(|e| io_error("write", &path, e))?;
                written.push(path);
                let module = format!("{modules_dir_name}/{file}");
                module_of_source.insert(kernel.source.as_str(), module.clone());
                module
            }
        };
        dispatches.push(ArtifactDispatch {
            layer: kernel.layer.clone(),
            template: kernel.template.to_string(),
            module,
            bindings: kernel.bindings.clone(),
            workgroups: kernel.workgroups,
        });
    }

    let weights_file = format!("{name}.weights");
    let weights_path = dir.join(&weights_file);
    let mut weight_buffers = Vec::with_capacity(images.len());
    {
        use std::io::Write;
        let file = std::fs::File::create(&weights_path).map_err(|e| io_error("create", &weights_path, e))?;
        let mut writer = std::io::BufWriter::new(file);
        let mut offset = 0u64;
        for image in &images {
            writer.write_all(image).map_err(|e| io_error("write", &weights_path, e))?;
            weight_buffers.push(BlobRange { offset, bytes: image.len() as u64 });
            offset += image.len() as u64;
        }
        writer.flush().map_err(|e| io_error("write", &weights_path, e))?;
    }
    written.push(weights_path);

    let artifact = ArtifactPlan {
        format: FORMAT_VERSION,
        network: plan.network.clone(),
        limits: plan.limits,
        conv_kernel: plan.conv_kernel,
        activation_bytes: plan.activation_bytes,
        weights_file,
        weight_buffers,
        weights: plan.weights.clone(),
        inputs: plan.inputs.clone(),
        outputs: plan.outputs.clone(),
        dispatches,
    };
    let plan_path = dir.join(format!("{name}.plan.json"));
    let json = serde_json::to_string_pretty(&artifact).map_err(|e| format!("cannot serialize the plan: {e}"))?;
    std::fs::write(&plan_path, json).map_err(|e| io_error("write", &plan_path, e))?;
    written.push(plan_path);
    Ok(written)
}

/// The template key of `TEMPLATES` named `name`.
fn template_key(name: &str) -> Result<&'static str, String> {
    emit::TEMPLATES
        .iter()
        .map(|(key, _)| *key)
        .find(|key| *key == name)
        .ok_or_else(|| format!("unknown kernel template `{name}`"))
}

impl GpuModel {
    /// Loads the artifacts `NAME.plan.json` (with its modules and weights) from `dir` on
    /// the first high-performance adapter; every module is validated by naga first.
    pub fn load(dir: &Path, name: &str) -> Result<GpuModel, String> {
        let (device, queue) = open_device(wgpu::Features::empty())?;
        GpuModel::load_on(dir, name, &device, &queue)
    }

    /// [`GpuModel::load`] on a device the caller opened, e.g. in its own wgpu program.
    /// The model keeps a handle to the device and queue (wgpu's handles are shared) and
    /// submits its work to that queue. The device must offer the limits the plan was
    /// laid out for (`cnnc build --target gpu` uses WebGPU's defaults, which
    /// `wgpu::Limits::default()` requests); no optional features are needed.
    pub fn load_on(dir: &Path, name: &str, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<GpuModel, String> {
        let plan_path = dir.join(format!("{name}.plan.json"));
        let text = std::fs::read_to_string(&plan_path).map_err(|e| io_error("read", &plan_path, e))?;
        let artifact: ArtifactPlan =
            serde_json::from_str(&text).map_err(|e| format!("{} is not a cnnc GPU plan: {e}", plan_path.display()))?;
        if artifact.format != FORMAT_VERSION {
            return Err(format!(
                "{} has format {}, this cnnc reads format {FORMAT_VERSION}",
                plan_path.display(),
                artifact.format
            ));
        }
        let mut sources: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut kernels = Vec::with_capacity(artifact.dispatches.len());
        for dispatch in &artifact.dispatches {
            if !sources.contains_key(&dispatch.module) {
                if dispatch.module.contains("..") || Path::new(&dispatch.module).is_absolute() {
                    return Err(format!("module path `{}` leaves the artifact directory", dispatch.module));
                }
                let path = dir.join(&dispatch.module);
                let source = std::fs::read_to_string(&path).map_err(|e| io_error("read", &path, e))?;
                emit::validate_wgsl(&source).map_err(|e| format!("{}: invalid WGSL:\n{e}", path.display()))?;
                sources.insert(dispatch.module.clone(), source);
            }
            kernels.push(Kernel {
                layer: dispatch.layer.clone(),
                template: template_key(&dispatch.template)?,
                source: sources[&dispatch.module].clone(),
                bindings: dispatch.bindings.clone(),
                workgroups: dispatch.workgroups,
            });
        }
        let weights_path = dir.join(&artifact.weights_file);
        let blob = std::fs::read(&weights_path).map_err(|e| io_error("read", &weights_path, e))?;
        for range in &artifact.weight_buffers {
            if range.offset.checked_add(range.bytes).is_none_or(|end| end > blob.len() as u64) {
                return Err(format!("{} is shorter than the plan says", weights_path.display()));
            }
        }
        let plan = Plan {
            network: artifact.network.clone(),
            limits: artifact.limits,
            conv_kernel: artifact.conv_kernel,
            activation_bytes: artifact.activation_bytes,
            weight_buffer_bytes: artifact.weight_buffers.iter().map(|r| r.bytes).collect(),
            weights: artifact.weights.clone(),
            inputs: artifact.inputs.clone(),
            outputs: artifact.outputs.clone(),
            kernels,
        };

        let have = device_limits(device, None);
        let need = &plan.limits;
        if have.max_storage_buffer_binding_size < need.max_storage_buffer_binding_size
            || have.max_buffer_size < need.max_buffer_size
            || have.min_storage_buffer_offset_alignment > need.min_storage_buffer_offset_alignment
            || have.max_storage_buffers_per_shader_stage < need.max_storage_buffers_per_shader_stage
            || have.max_compute_workgroups_per_dimension < need.max_compute_workgroups_per_dimension
        {
            return Err(format!("the plan needs device limits {need:?}, the adapter offers {have:?}"));
        }
        let ranges = artifact.weight_buffers.clone();
        let mut fill = |buffer: usize, write: &mut dyn FnMut(usize, &[u8])| -> Result<(), String> {
            let range = ranges[buffer];
            let bytes = &blob[range.offset as usize..(range.offset + range.bytes) as usize];
            for (k, chunk) in bytes.chunks(1 << 20).enumerate() {
                write(k << 20, chunk);
            }
            Ok(())
        };
        GpuModel::build(device.clone(), queue.clone(), device.adapter_info(), plan, &mut fill)
    }
}
