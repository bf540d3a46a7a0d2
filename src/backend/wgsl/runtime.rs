//! The wgpu runtime: device and queue, weights uploaded once, pipelines and bind groups
//! created once at load, one compute pass with every dispatch per inference.
//!
//! Any Vulkan, Metal or DX12 adapter serves (Mesa's lavapipe counts); `WGPU_BACKEND`
//! and the other wgpu environment variables choose among several. Device errors
//! (validation, out of memory) are caught with error scopes and returned as `Err`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU64;

use super::emit::{self, BufferId, ConvKernel, DeviceLimits, Plan};
use crate::ir::Graph;
use crate::tensor::Tensor;

/// A graph compiled for a GPU: its buffers, pipelines and bind groups, ready to run.
pub struct GpuModel {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    plan: Plan,
    activations: wgpu::Buffer,
    /// Kept alive for the bind groups that read them.
    _weights: Vec<wgpu::Buffer>,
    pipelines: Vec<wgpu::ComputePipeline>,
    dispatches: Vec<Dispatch>,
    /// Runs share the activations buffer: one at a time.
    running: std::sync::Mutex<()>,
}

struct Dispatch {
    pipeline: usize,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

fn instance() -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    // GL compute is not worth the trouble: Vulkan, Metal and DX12 only, unless
    // WGPU_BACKEND says otherwise.
    descriptor.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(descriptor.with_env())
}

fn request_adapter() -> Result<wgpu::Adapter, String> {
    let options =
        wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
    pollster::block_on(instance().request_adapter(&options)).map_err(|e| {
        format!(
            "no GPU adapter found ({e}): the GPU target needs a Vulkan, Metal or DX12 driver; \
             on Linux without a GPU, Mesa's lavapipe provides one (Debian packages \
             mesa-vulkan-drivers and libvulkan1)"
        )
    })
}

/// The optional features the first high-performance adapter offers.
pub(crate) fn adapter_features() -> Result<wgpu::Features, String> {
    Ok(request_adapter()?.features())
}

/// Whether a Vulkan, Metal or DX12 adapter is present.
pub fn adapter_available() -> bool {
    request_adapter().is_ok()
}

/// Choices for [`compile_gpu_with`]; the defaults are [`compile_gpu`]'s.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Lay the network out for the smaller of the device's limits and these (to
    /// exercise the splitting of large tensors over bindings and buffers on small
    /// networks).
    pub limits: Option<DeviceLimits>,
    /// The convolution kernel; by default the direct one on CPU adapters (lavapipe,
    /// where it is faster) and the tiled one on GPUs.
    pub conv_kernel: Option<ConvKernel>,
}

/// Compiles an optimized graph with bound weights (`graph.weights`) for the first
/// high-performance adapter: emits and validates its kernels, uploads its weights and
/// creates its pipelines.
pub fn compile_gpu(graph: &Graph) -> Result<GpuModel, String> {
    compile_gpu_with(graph, &GpuOptions::default())
}

/// [`compile_gpu`] with choices.
pub fn compile_gpu_with(graph: &Graph, options: &GpuOptions) -> Result<GpuModel, String> {
    let (device, queue) = open_device(wgpu::Features::empty())?;
    compile_gpu_on(graph, &device, &queue, options)
}

/// [`compile_gpu_with`] on a device the caller opened, e.g. in its own wgpu program:
/// the model lays itself out for `device.limits()` (lowered to `options.limits` where
/// given), keeps a handle to the device and queue (wgpu's handles are shared, so the
/// caller keeps using them) and submits its work to that queue. Only WebGPU's default
/// limits and no optional features are needed.
pub fn compile_gpu_on(
    graph: &Graph,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    options: &GpuOptions,
) -> Result<GpuModel, String> {
    let info = device.adapter_info();
    let limits = device_limits(device, options.limits.as_ref());
    let conv_kernel = options.conv_kernel.unwrap_or(if info.device_type == wgpu::DeviceType::Cpu {
        ConvKernel::Direct
    } else {
        ConvKernel::Tiled
    });
    let plan = emit::plan(graph, &limits, conv_kernel)?;
    // Check every weight before touching the device.
    let mut tensors = Vec::with_capacity(plan.weights.len());
    for placement in &plan.weights {
        let tensor = emit::placed_weight(graph, placement)?;
        tensors.push(tensor);
    }
    let placements = plan.weights.clone();
    let mut fill = |buffer: usize, write: &mut dyn FnMut(usize, &[u8])| -> Result<(), String> {
        for (placement, tensor) in placements.iter().zip(&tensors) {
            for segment in &placement.segments {
                if segment.buffer != BufferId::Weights(buffer) {
                    continue;
                }
                let values = &tensor.data[segment.first as usize..][..segment.count as usize];
                // In chunks, so that a 400 MB tensor does not need a 400 MB copy.
                let mut offset = segment.byte_offset as usize;
                for chunk in values.chunks(1 << 18) {
                    let bytes = f32_bytes(chunk);
                    write(offset, &bytes);
                    offset += bytes.len();
                }
            }
        }
        Ok(())
    };
    GpuModel::build(device.clone(), queue.clone(), info, plan, &mut fill)
}

/// The limits of `device`, lowered to `lower` where given.
pub(crate) fn device_limits(device: &wgpu::Device, lower: Option<&DeviceLimits>) -> DeviceLimits {
    let device_limits = device.limits();
    let mut limits = DeviceLimits {
        max_storage_buffer_binding_size: device_limits.max_storage_buffer_binding_size,
        max_buffer_size: device_limits.max_buffer_size,
        min_storage_buffer_offset_alignment: device_limits.min_storage_buffer_offset_alignment as u64,
        max_storage_buffers_per_shader_stage: device_limits.max_storage_buffers_per_shader_stage,
        max_compute_workgroups_per_dimension: device_limits.max_compute_workgroups_per_dimension,
    };
    if let Some(lower) = lower {
        limits = DeviceLimits {
            max_storage_buffer_binding_size: limits
                .max_storage_buffer_binding_size
                .min(lower.max_storage_buffer_binding_size),
            max_buffer_size: limits.max_buffer_size.min(lower.max_buffer_size),
            min_storage_buffer_offset_alignment: limits
                .min_storage_buffer_offset_alignment
                .max(lower.min_storage_buffer_offset_alignment),
            max_storage_buffers_per_shader_stage: limits
                .max_storage_buffers_per_shader_stage
                .min(lower.max_storage_buffers_per_shader_stage),
            max_compute_workgroups_per_dimension: limits
                .max_compute_workgroups_per_dimension
                .min(lower.max_compute_workgroups_per_dimension),
        };
    }
    limits
}

/// Opens the first high-performance adapter's device with all its limits and those of
/// `wanted_features` it offers.
pub(crate) fn open_device(wanted_features: wgpu::Features) -> Result<(wgpu::Device, wgpu::Queue), String> {
    let adapter = request_adapter()?;
    let descriptor = wgpu::DeviceDescriptor {
        label: Some("cnnc"),
        required_limits: adapter.limits(),
        required_features: adapter.features() & wanted_features,
        ..Default::default()
    };
    pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| format!("cannot open the GPU device: {e}"))
}

/// Writes the `k`th weights buffer's contents through `write(byte_offset, bytes)`.
pub(crate) type FillWeights<'a> = dyn FnMut(usize, &mut dyn FnMut(usize, &[u8])) -> Result<(), String> + 'a;

/// Runs `work` inside validation, out-of-memory and internal error scopes; the first
/// error caught becomes `Err`.
fn catching_errors<T>(device: &wgpu::Device, what: &str, work: impl FnOnce() -> T) -> Result<T, String> {
    let scopes = [wgpu::ErrorFilter::Validation, wgpu::ErrorFilter::OutOfMemory, wgpu::ErrorFilter::Internal]
        .map(|filter| device.push_error_scope(filter));
    let value = work();
    let mut first_error = None;
    for scope in scopes.into_iter().rev() {
        if let Some(error) = pollster::block_on(scope.pop()) {
            first_error.get_or_insert(error.to_string());
        }
    }
    match first_error {
        Some(error) => Err(format!("GPU error while {what}: {error}")),
        None => Ok(value),
    }
}

/// Little-endian bytes of `values`.
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl GpuModel {
    /// Creates the buffers, pipelines and bind groups of `plan`; `fill(k, write)` writes
    /// the `k`th weights buffer's contents through `write(byte_offset, bytes)`.
    pub(crate) fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: wgpu::AdapterInfo,
        plan: Plan,
        fill: &mut FillWeights<'_>,
    ) -> Result<GpuModel, String> {
        let (activations, weights) = catching_errors(&device, "uploading the weights", || {
            let activations = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cnnc activations"),
                size: plan.activation_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let weights: Vec<wgpu::Buffer> = plan
                .weight_buffer_bytes
                .iter()
                .map(|&size| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("cnnc weights"),
                        size,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: true,
                    })
                })
                .collect();
            (activations, weights)
        })?;
        {
            let mut views = Vec::with_capacity(weights.len());
            for buffer in &weights {
                views.push(buffer.get_mapped_range_mut(..).map_err(|e| format!("cannot map a weights buffer: {e}"))?);
            }
            for (index, view) in views.iter_mut().enumerate() {
                fill(index, &mut |offset, bytes| view.slice(offset..offset + bytes.len()).copy_from_slice(bytes))?;
            }
        }
        for buffer in &weights {
            buffer.unmap();
        }

        let (pipelines, dispatches) = catching_errors(&device, "creating the pipelines", || {
            let mut pipeline_of_source: HashMap<&str, usize> = HashMap::new();
            let mut layouts: HashMap<Vec<bool>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)> = HashMap::new();
            let mut pipelines = Vec::new();
            let mut dispatches = Vec::with_capacity(plan.kernels.len());
            for kernel in &plan.kernels {
                let access: Vec<bool> = kernel.bindings.iter().map(|b| b.read_only).collect();
                let (bind_group_layout, pipeline_layout) = layouts.entry(access.clone()).or_insert_with(|| {
                    let entries: Vec<wgpu::BindGroupLayoutEntry> = access
                        .iter()
                        .enumerate()
                        .map(|(index, &read_only)| wgpu::BindGroupLayoutEntry {
                            binding: index as u32,
                            visibility: wgpu::ShaderStages::COMPUTE,
                            ty: wgpu::BindingType::Buffer {
                                ty: wgpu::BufferBindingType::Storage { read_only },
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                            count: None,
                        })
                        .collect();
                    let bind_group_layout = device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
                    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: None,
                        bind_group_layouts: &[Some(&bind_group_layout)],
                        immediate_size: 0,
                    });
                    (bind_group_layout, pipeline_layout)
                });
                let pipeline = *pipeline_of_source.entry(kernel.source.as_str()).or_insert_with(|| {
                    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(&kernel.layer),
                        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(&kernel.source)),
                    });
                    pipelines.push(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&kernel.layer),
                        layout: Some(pipeline_layout),
                        module: &module,
                        entry_point: Some("main"),
                        compilation_options: Default::default(),
                        cache: None,
                    }));
                    pipelines.len() - 1
                });
                let entries: Vec<wgpu::BindGroupEntry> = kernel
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(index, binding)| wgpu::BindGroupEntry {
                        binding: index as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: match binding.buffer {
                                BufferId::Activations => &activations,
                                BufferId::Weights(k) => &weights[k],
                            },
                            offset: binding.offset,
                            size: NonZeroU64::new(binding.size),
                        }),
                    })
                    .collect();
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&kernel.layer),
                    layout: bind_group_layout,
                    entries: &entries,
                });
                dispatches.push(Dispatch { pipeline, bind_group, workgroups: kernel.workgroups });
            }
            (pipelines, dispatches)
        })?;

        Ok(GpuModel {
            device,
            queue,
            adapter,
            plan,
            activations,
            _weights: weights,
            pipelines,
            dispatches,
            running: std::sync::Mutex::new(()),
        })
    }

    /// The layout and kernels the model runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The adapter the model runs on, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }

    /// The number of distinct compute pipelines (kernels with the same text share one).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }

    /// Runs one inference: the inputs in `Graph::inputs` order, each of exactly its input
    /// node's shape (batch included); returns the outputs in `Graph::outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        Ok(self.run_with_timestamps(inputs, None)?.0)
    }

    /// The device and queue the model runs on.
    pub fn device(&self) -> (&wgpu::Device, &wgpu::Queue) {
        (&self.device, &self.queue)
    }

    /// [`GpuModel::run`], with the timestamps `queries` asks for: besides the outputs,
    /// the raw timestamp ticks (times `Queue::get_timestamp_period` nanoseconds) that
    /// bound every dispatch, in `TimestampQueries::pairs` order.
    pub(crate) fn run_with_timestamps(
        &self,
        inputs: &[Tensor],
        queries: Option<&TimestampQueries>,
    ) -> Result<(Vec<Tensor>, Vec<u64>), String> {
        if inputs.len() != self.plan.inputs.len() {
            return Err(format!(
                "network `{}` takes {} input(s), got {}",
                self.plan.network,
                self.plan.inputs.len(),
                inputs.len()
            ));
        }
        for (tensor, placement) in inputs.iter().zip(&self.plan.inputs) {
            if tensor.shape != placement.shape || tensor.data.len() != placement.shape.iter().product::<usize>() {
                return Err(format!(
                    "input `{}` must have shape {:?}, got {}",
                    placement.name,
                    placement.shape,
                    tensor.shape_string()
                ));
            }
        }
        let _running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let output_bytes: Vec<u64> =
            self.plan.outputs.iter().map(|p| 4 * p.shape.iter().product::<usize>() as u64).collect();
        let outputs_size = output_bytes.iter().sum::<u64>();
        let timestamp_bytes = queries.map_or(0, |q| 8 * q.count as u64);
        let staging_size = (outputs_size + timestamp_bytes).max(4);

        let staging = catching_errors(&self.device, "running the network", || {
            for (tensor, placement) in inputs.iter().zip(&self.plan.inputs) {
                let offset = placement.segments[0].byte_offset;
                if !tensor.data.is_empty() {
                    self.queue.write_buffer(&self.activations, offset, &f32_bytes(&tensor.data));
                }
            }
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cnnc outputs"),
                size: staging_size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let record = |pass: &mut wgpu::ComputePass, dispatch: &Dispatch| {
                pass.set_pipeline(&self.pipelines[dispatch.pipeline]);
                pass.set_bind_group(0, &dispatch.bind_group, &[]);
                let [x, y, z] = dispatch.workgroups;
                pass.dispatch_workgroups(x, y, z);
            };
            match queries {
                None => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("cnnc"),
                        timestamp_writes: None,
                    });
                    for dispatch in &self.dispatches {
                        record(&mut pass, dispatch);
                    }
                }
                // Timestamps between the dispatches of the one pass: n + 1 of them.
                Some(TimestampQueries { method: TimestampMethod::InsidePass, set, .. }) => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("cnnc"),
                        timestamp_writes: None,
                    });
                    pass.write_timestamp(set, 0);
                    for (index, dispatch) in self.dispatches.iter().enumerate() {
                        record(&mut pass, dispatch);
                        pass.write_timestamp(set, index as u32 + 1);
                    }
                }
                // One pass per dispatch, each with a start and an end timestamp.
                Some(TimestampQueries { method: TimestampMethod::PerPass, set, .. }) => {
                    for (index, dispatch) in self.dispatches.iter().enumerate() {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(&self.plan.kernels[index].layer),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: Some(2 * index as u32),
                                end_of_pass_write_index: Some(2 * index as u32 + 1),
                            }),
                        });
                        record(&mut pass, dispatch);
                    }
                }
            }
            if let Some(queries) = queries {
                encoder.resolve_query_set(&queries.set, 0..queries.count, &queries.resolved, 0);
                encoder.copy_buffer_to_buffer(&queries.resolved, 0, &staging, outputs_size, timestamp_bytes);
            }
            let mut staging_offset = 0;
            for (placement, &bytes) in self.plan.outputs.iter().zip(&output_bytes) {
                if bytes > 0 {
                    let source_offset = placement.segments[0].byte_offset;
                    encoder.copy_buffer_to_buffer(&self.activations, source_offset, &staging, staging_offset, bytes);
                }
                staging_offset += bytes;
            }
            self.queue.submit([encoder.finish()]);
            staging
        })?;

        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("GPU error while waiting for the network: {e}"))?;
        receiver
            .recv()
            .map_err(|_| "the GPU never finished the network".to_string())?
            .map_err(|e| format!("cannot read the outputs back: {e}"))?;
        let mut outputs = Vec::with_capacity(self.plan.outputs.len());
        let timestamps;
        {
            let view = staging.get_mapped_range(..).map_err(|e| format!("cannot read the outputs back: {e}"))?;
            let mut offset = 0usize;
            for (placement, &bytes) in self.plan.outputs.iter().zip(&output_bytes) {
                let data = view[offset..offset + bytes as usize]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                outputs.push(Tensor { shape: placement.shape.clone(), data });
                offset += bytes as usize;
            }
            timestamps = view[offset..offset + timestamp_bytes as usize]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
        }
        staging.unmap();
        Ok((outputs, timestamps))
    }
}

/// How [`TimestampQueries`] time the dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimestampMethod {
    /// `ComputePass::write_timestamp` between the dispatches of the one pass
    /// (`Features::TIMESTAMP_QUERY_INSIDE_PASSES`).
    InsidePass,
    /// One pass per dispatch with a start and an end timestamp
    /// (`Features::TIMESTAMP_QUERY` alone).
    PerPass,
}

/// A query set for timing every dispatch of a model, and the buffer its values are
/// resolved into.
pub(crate) struct TimestampQueries {
    pub method: TimestampMethod,
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    count: u32,
}

impl TimestampQueries {
    /// Queries for `model`'s dispatches, or `None` when its device has no timestamp
    /// queries or a query set cannot hold them all.
    pub fn new(model: &GpuModel) -> Option<TimestampQueries> {
        let features = model.device.features();
        let n = model.dispatches.len() as u32;
        let (method, count) = if features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            (TimestampMethod::InsidePass, n + 1)
        } else if features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            (TimestampMethod::PerPass, 2 * n)
        } else {
            return None;
        };
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return None;
        }
        let set = model.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("cnnc timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolved = model.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("cnnc timestamps"),
            size: 8 * count as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(TimestampQueries { method, set, resolved, count })
    }

    /// The (start, end) indices of every dispatch's timestamps.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = match self.method {
            TimestampMethod::InsidePass => self.count as usize - 1,
            TimestampMethod::PerPass => self.count as usize / 2,
        };
        (0..n).map(move |k| match self.method {
            TimestampMethod::InsidePass => (k, k + 1),
            TimestampMethod::PerPass => (2 * k, 2 * k + 1),
        })
    }
}
