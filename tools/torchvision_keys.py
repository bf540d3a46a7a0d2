#!/usr/bin/env python3
"""Writes tests/data/torchvision/<model>.keys: the keys, dtypes and shapes of
torchvision's state_dict for each example that has a torchvision counterpart.

tests/torchvision_names.rs checks that a safetensors file with exactly these entries
binds strictly to examples/<model>.cnn, so CI checks torchvision's names without torch.
Needs torch and torchvision (a multi-GB install, kept outside the repository and CI).
Usage: python tools/torchvision_keys.py [model ...]   (default: all of them)
"""
import pathlib, sys

import torchvision

# Model name -> the constructor's keyword arguments. GoogLeNet without its two
# training-only auxiliary classifiers, as examples/googlenet.cnn.
MODELS = {
    "alexnet": {},
    "vgg16": {},
    "resnet18": {},
    "resnet34": {},
    "resnet50": {},
    "squeezenet1_1": {},
    "densenet121": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "mobilenet_v3_large": {},
    "efficientnet_b0": {},
    "shufflenet_v2_x1_0": {},
    "mnasnet1_0": {},
    "regnet_y_400mf": {},
    "resnext50_32x4d": {},
    "convnext_tiny": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
}


def main():
    out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "torchvision"
    out.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or MODELS:
        kwargs = MODELS[name]
        model = getattr(torchvision.models, name)(**kwargs)
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "init_weights")
        lines = [f"# torchvision {torchvision.__version__} models.{name}({shown}).state_dict(): key dtype shape"]
        for key, tensor in model.state_dict().items():
            dtype = str(tensor.dtype).removeprefix("torch.")
            lines.append(f"{key} {dtype} {','.join(str(d) for d in tensor.shape)}")
        (out / f"{name}.keys").write_text("\n".join(lines) + "\n")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {len(lines) - 1} entries, {params:,} parameters")


if __name__ == "__main__":
    main()
