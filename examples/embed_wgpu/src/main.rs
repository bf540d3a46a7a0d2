//! A wgpu program that runs a network built by `cnnc build NET --target gpu -o DIR` on
//! a device it opened itself, and prints the outputs one value per line.
//!
//! Usage: `embed_wgpu DIR [INPUT.f32]`. DIR holds one `NAME.plan.json` (with
//! `NAME.wgsl/` and `NAME.weights`); the input is a raw native-endian float32 file of
//! exactly the network's input size (batch included); without one, a deterministic
//! input is made up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cnnc::gpu::GpuModel;
use cnnc::tensor::Tensor;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("embed_wgpu: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: embed_wgpu DIR [INPUT.f32]")?);
    let input_file = args.next().map(PathBuf::from);
    let name = plan_name(&dir)?;

    // The program's own wgpu setup: any adapter, WebGPU's default limits (what
    // `cnnc build --target gpu` lays the network out for), no optional features. The
    // same device and queue could serve the program's other work too.
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::PRIMARY; // Vulkan, Metal, DX12
    let instance = wgpu::Instance::new(descriptor.with_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .map_err(|e| format!("no GPU adapter: {e}"))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("embed_wgpu"),
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))
    .map_err(|e| format!("cannot open the device: {e}"))?;
    eprintln!("adapter: {}", adapter.get_info().name);

    let model = GpuModel::load_on(&dir, &name, &device, &queue)?;
    let [input_placement] = &model.plan().inputs[..] else {
        return Err(format!("{name} takes {} inputs; this example feeds one", model.plan().inputs.len()));
    };
    let shape = input_placement.shape.clone();
    let len: usize = shape.iter().product();
    let data = match &input_file {
        Some(path) => read_f32(path, len)?,
        None => (0..len).map(deterministic_input).collect(),
    };
    let input = Tensor::new(shape, data).ok_or("the input does not have the network's size")?;
    for output in model.run(&[input])? {
        for value in &output.data {
            println!("{value:?}");
        }
    }
    Ok(())
}

/// The `NAME` of the one `NAME.plan.json` in `dir`.
fn plan_name(dir: &Path) -> Result<String, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let file_name = entry.map_err(|e| e.to_string())?.file_name();
        if let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".plan.json")) {
            names.push(name.to_string());
        }
    }
    match &names[..] {
        [name] => Ok(name.clone()),
        [] => Err(format!("no NAME.plan.json in {} (cnnc build NET --target gpu -o DIR writes one)", dir.display())),
        _ => Err(format!("several plans in {}: {names:?}", dir.display())),
    }
}

/// Exactly `len` native-endian float32 values from `path`.
fn read_f32(path: &Path, len: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() != 4 * len {
        return Err(format!("{}: expected exactly {len} float32 values", path.display()));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_ne_bytes(b.try_into().expect("4 bytes"))).collect())
}

/// The made-up input: a smooth pattern in [-1, 1], the same on every machine.
fn deterministic_input(i: usize) -> f32 {
    ((i % 97) as f32 / 48.0) - 1.0
}
