//! A user's PyTorch weights load with no renaming: for every example with a torchvision
//! counterpart, a safetensors file with exactly the keys, dtypes and shapes of
//! torchvision's `state_dict` (listed in tests/data/torchvision/*.keys, written by
//! tools/torchvision_keys.py with torchvision 0.29) binds strictly, `num_batches_tracked` (int64) included.
//!
//! Values are arbitrary here; that the values also mean the same (cnnc reproduces
//! PyTorch's outputs) was measured with torch installed, see the closing notes of the
//! reference issue. This test needs no torch.

use cnnc::front::{BuildOptions, compile_bytes};
use safetensors::tensor::{Dtype, TensorView};

struct Key {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

fn keys(model: &str) -> Vec<Key> {
    let path = format!("{}/tests/data/torchvision/{model}.keys", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split(' ');
            let name = parts.next().unwrap().to_string();
            let dtype = match parts.next().unwrap() {
                "float32" => Dtype::F32,
                "int64" => Dtype::I64,
                other => panic!("unexpected dtype {other}"),
            };
            let shape = parts.next().unwrap_or("");
            let shape = shape.split(',').filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect();
            Key { name, dtype, shape }
        })
        .collect()
}

fn safetensors_file(keys: &[Key]) -> Vec<u8> {
    let buffers: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            let n: usize = k.shape.iter().product();
            let width = if k.dtype == Dtype::I64 { 8 } else { 4 };
            // Small distinct values; int64 counters as PyTorch stores them.
            (0..n * width).map(|i| if width == 4 && i % 4 == 3 { 0x3c } else { 0 }).collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = keys
        .iter()
        .zip(&buffers)
        .map(|(k, b)| (k.name.clone(), TensorView::new(k.dtype, k.shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn torchvision_state_dicts_bind_to_the_examples() {
    for model in [
        "alexnet",
        "vgg16",
        "resnet18",
        "resnet34",
        "resnet50",
        "squeezenet1_1",
        "densenet121",
        "googlenet",
        "resnext50_32x4d",
        "mnasnet1_0",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "shufflenet_v2_x1_0",
        "regnet_y_400mf",
        "convnext_tiny",
    ] {
        let keys = keys(model);
        let bytes = safetensors_file(&keys);
        let path = format!("{}/examples/{model}.cnn", env!("CARGO_MANIFEST_DIR"));
        let graph = compile_bytes(&std::fs::read(path).unwrap(), &BuildOptions::default()).unwrap();
        let weights = cnnc::weights::load_safetensors(&bytes, &graph, false)
            .unwrap_or_else(|e| panic!("{model}: torchvision's keys do not bind:\n{e}"));
        let floats = keys.iter().filter(|k| k.dtype == Dtype::F32).count();
        assert_eq!(weights.tensors.len(), floats, "{model}");
    }
}

#[test]
fn resnet18_runs_from_a_torchvision_file_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("cnnc-tv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("resnet18.safetensors");
    std::fs::write(&weights, safetensors_file(&keys("resnet18"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "examples/resnet18.cnn", "--weights"])
        .arg(&weights)
        .args(["--input", "examples/images/orange.png", "--top", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(dir).ok();
}
