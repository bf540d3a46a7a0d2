#!/usr/bin/env python3
"""cnnc int8 against ONNX Runtime int8 and OpenVINO, on the same weights, the same
calibration images, batch and machine, in one run.

For each network, with the weights `cnnc build --random-weights --seed 0` draws:
- calibration: `--calib-items` N(0, 1) images (seed `--seed`, 8 by default) written to one
  .npy; `cnnc calibrate` (minmax) reads that file, and ONNX Runtime's
  `CalibrationDataReader` feeds the same images to `quantize_static`;
- ONNX Runtime int8: the f32 model (`cnnc build --emit onnx`) preprocessed with
  `quant_pre_process` (the documented first step: shape inference and graph
  optimization), then `quantize_static` with the QDQ format, per-channel weights, QUInt8
  activations, QInt8 weights and the MinMax method (`reduce_range` off, ORT's default);
- timing, each in a child process, alternating, `--repeat` rounds (each engine keeps its
  best median of `--runs` runs, as `bench/compare.py` does, whose child code this reuses):
  cnnc f32 and int8 (`cnnc bench --precision f32`, `--precision int8 --calib`), ORT f32 and
  int8 (all graph optimizations on), and when the `openvino` package imports, OpenVINO f32
  (`INFERENCE_PRECISION_HINT=f32`), OpenVINO with its default precision (the hint unset),
  and OpenVINO on ORT's QDQ model (OpenVINO's int8 path: it runs the quantized
  convolutions in int8), 1 and 2 threads;
- accuracy: `--eval-items` other N(0, 1) images (seed `--seed` + 1), run in f32 and int8
  by cnnc (`cnnc run`), by ORT and by OpenVINO on the QDQ model: the relative L2 distance
  of each int8 output from the same engine's f32 output over the whole batch
  (||y_int8 - y_f32|| / ||y_f32||), and how many top-1 classes agree; plus cnnc f32
  against ORT f32, which checks that both run the same weights.

Needs a Python with numpy, onnx, onnxruntime and sympy (ORT's quantization tools import
onnx, and `quant_pre_process` sympy; tools/setup-python.sh's `.venv` has neither) and
optionally openvino. Run from the repository root:

    PYTHON -m pip install onnx onnxruntime sympy openvino   # once
    PYTHON bench/compare_int8.py [--batch 1 8] [--threads 1 2] [--runs 10] [--repeat 3] [net ...]

Prints, per batch size, a Markdown table of medians (ms) per engine and thread count,
the ratios cnnc int8 / ORT int8 and cnnc int8 / OpenVINO default (below 1.0: cnnc is
faster), then the accuracy table.
"""
import argparse, json, os, pathlib, subprocess, sys, tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare import ORT_CHILD, OV_CHILD, best, have_openvino  # noqa: E402  (one copy of the timing code)

DEFAULT = ["squeezenet1_1", "resnet18", "resnet50", "vgg16"]

QUANTIZE_CHILD = r"""
import sys
import numpy as np, onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
model, prepared, quantized, calib = sys.argv[1:5]
quant_pre_process(model, prepared)
images = np.load(calib)
graph_input = onnx.load(prepared, load_external_data=False).graph.input[0]
batch = graph_input.type.tensor_type.shape.dim[0].dim_value
assert len(images) % batch == 0, f"{len(images)} calibration images do not split into batches of {batch}"

class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{graph_input.name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.items, None)

quantize_static(prepared, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
"""

# Runs a model on a .npy of images in batches of the model's own batch size and saves
# the outputs (the first output) as one .npy.
RUN_CHILD = r"""
import sys
import numpy as np
engine, model, images, out = sys.argv[1:5]
x = np.load(images)
outputs = []
if engine == "ort":
    import onnxruntime as ort
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    run = lambda chunk: session.run(None, {name: chunk})[0]
else:
    import openvino as ov
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"} if engine == "ov-f32" else {})
    batch = list(compiled.inputs[0].get_shape())[0]
    request = compiled.create_infer_request()
    run = lambda chunk: request.infer({0: chunk})[compiled.outputs[0]].copy()
for i in range(0, len(x), batch):
    outputs.append(run(x[i:i + batch]))
np.save(out, np.concatenate(outputs))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure each engine this many times, alternating, and keep each one's best median")
    parser.add_argument("--calib-items", type=int, default=8, help="N(0, 1) calibration images")
    parser.add_argument("--eval-items", type=int, default=8, help="other N(0, 1) images for the accuracy columns")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the calibration images (+1: evaluation)")
    parser.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even when installed")
    parser.add_argument("--no-accuracy", action="store_true", help="time only")
    parser.add_argument("nets", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    missing = subprocess.run([sys.executable, "-c", "import numpy, onnx, onnxruntime.quantization, sympy"],
                             capture_output=True, text=True)
    if missing.returncode != 0:
        sys.exit(f"compare_int8.py needs numpy, onnx, onnxruntime and sympy in {sys.executable} (ORT's "
                 f"quantization tools import onnx, and quant_pre_process sympy): "
                 f"{missing.stderr.strip().splitlines()[-1]}")
    args.openvino = not args.no_openvino and have_openvino()
    for batch in args.batch:
        if args.calib_items % batch or args.eval_items % batch:
            parser.error(f"--calib-items and --eval-items must be multiples of the batch ({batch})")
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for batch in args.batch:
        rows = []
        for net in args.nets:
            rows.append(measure(args, net, batch))
            print(f"{net}, batch {batch}: done, load average {os.getloadavg()}", file=sys.stderr)
        print_tables(args, batch, rows)


def cnnc(args, *argv, capture=True):
    return subprocess.run([args.cnnc, *argv], check=True, capture_output=capture, text=True)


def child(script, *argv):
    """Runs a child script with this Python and returns its stdout (exits with its
    error's last lines when it fails)."""
    out = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"a child process failed ({' '.join(map(str, argv))}):\n"
                 + "\n".join(out.stderr.strip().splitlines()[-5:]))
    return out.stdout


def measure(args, net, batch):
    """Every engine on one network at one batch size: timings per thread count, accuracy."""
    source = f"examples/{net}.cnn"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        cnnc(args, "build", source, "--random-weights", "--seed", "0", "--batch", str(batch), "--emit", "onnx", "-o",
             str(tmp))
        name = json.loads(cnnc(args, "summary", source, "--format", "json").stdout)["network"]
        model = tmp / f"{name}.onnx"
        import onnx  # the shape only; the quantization runs in a child
        dims = [d.dim_value for d in onnx.load(str(model), load_external_data=False).graph.input[0]
                .type.tensor_type.shape.dim]
        calib, evaluation = tmp / "calib.npy", tmp / "eval.npy"
        np.save(calib, np.random.default_rng(args.seed).standard_normal([args.calib_items, *dims[1:]])
                .astype(np.float32))
        np.save(evaluation, np.random.default_rng(args.seed + 1).standard_normal([args.eval_items, *dims[1:]])
                .astype(np.float32))
        calib_json = tmp / f"{net}.calib.json"
        cnnc(args, "calibrate", source, "--random-weights", "--seed", "0", "--inputs", str(calib), "-o",
             str(calib_json))
        quantized = tmp / f"{name}.int8.onnx"
        child(QUANTIZE_CHILD, model, tmp / f"{name}.pre.onnx", quantized, calib)

        accuracy = None if args.no_accuracy else measure_accuracy(args, source, model, quantized, calib_json,
                                                                    evaluation, tmp)
        # Engines by column name: a function of the thread count that returns a timing.
        bench = ["bench", source, "--seed", "0", "--batch", str(batch), "--runs", str(args.runs), "--warmup",
                 str(args.warmup), "--format", "json"]
        ort_child = lambda path: lambda t: json.loads(child(ORT_CHILD, path, t, args.runs, args.warmup, "x"))
        ov_child = lambda path, precision: lambda t: json.loads(child(OV_CHILD, path, t, args.runs, args.warmup,
                                                                      precision))
        engines = {
            "cnnc f32": lambda t: json.loads(cnnc(args, *bench, "--threads", str(t), "--precision", "f32").stdout),
            "cnnc int8": lambda t: json.loads(cnnc(args, *bench, "--threads", str(t), "--precision", "int8",
                                                   "--calib", str(calib_json)).stdout),
            "ORT f32": ort_child(model),
            "ORT int8": ort_child(quantized),
        }
        if args.openvino:
            engines["OV f32"] = ov_child(model, "f32")
            engines["OV default"] = ov_child(model, "default")
            engines["OV int8 (QDQ)"] = ov_child(quantized, "default")
        results = {engine: {} for engine in engines}
        for _ in range(args.repeat):
            for threads in args.threads:
                for engine, run in engines.items():
                    best(results[engine], threads, run(threads))
    return net, results, accuracy


def relative_l2(y, reference):
    return float(np.linalg.norm((y - reference).ravel()) / np.linalg.norm(reference.ravel()))


def top1_agreement(y, reference):
    y, reference = y.reshape(len(y), -1), reference.reshape(len(reference), -1)
    return int((y.argmax(1) == reference.argmax(1)).sum()), len(y)


def measure_accuracy(args, source, model, quantized, calib_json, evaluation, tmp):
    """int8 against f32 on the evaluation images, per engine."""
    out = {}
    for precision, extra in (("f32", []), ("int8", ["--precision", "int8", "--calib", str(calib_json)])):
        path = tmp / f"cnnc_{precision}.npy"
        cnnc(args, "run", source, "--random-weights", "--seed", "0", "--input", str(evaluation), "--output",
             str(path), *extra)
        out[f"cnnc {precision}"] = np.load(path)
    runs = [("ORT f32", "ort", model), ("ORT int8", "ort", quantized)]
    if args.openvino:
        runs += [("OV f32", "ov-f32", model), ("OV int8 (QDQ)", "ov", quantized)]
    for label, engine, path in runs:
        child(RUN_CHILD, engine, path, evaluation, tmp / "y.npy")
        out[label] = np.load(tmp / "y.npy")
    pairs = [("cnnc int8", "cnnc f32"), ("ORT int8", "ORT f32"), ("cnnc f32", "ORT f32")]
    if args.openvino:
        pairs += [("OV int8 (QDQ)", "OV f32"), ("OV f32", "ORT f32")]
    return {f"{a} vs {b}": (relative_l2(out[a], out[b]), top1_agreement(out[a], out[b])) for a, b in pairs}


def print_tables(args, batch, rows):
    engines = list(rows[0][1])
    print(f"\n### Batch {batch}: median ms (best of {args.repeat} rounds of {args.runs} runs)\n")
    header = ["model", "threads", *engines, "cnnc int8 / ORT int8"]
    if "OV default" in engines:
        header += ["cnnc int8 / OV default", "cnnc int8 / OV int8"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for net, results, _ in rows:
        for t in args.threads:
            ms = {engine: results[engine][t]["median_ms"] for engine in engines}
            cells = [net, str(t), *(f"{ms[e]:.2f}" for e in engines), f"**{ms['cnnc int8'] / ms['ORT int8']:.2f}**"]
            if "OV default" in engines:
                cells += [f"**{ms['cnnc int8'] / ms['OV default']:.2f}**",
                          f"**{ms['cnnc int8'] / ms['OV int8 (QDQ)']:.2f}**"]
            print("| " + " | ".join(cells) + " |", flush=True)
    if "OV default" in engines:
        precision = rows[0][1]["OV default"][args.threads[0]]["precision"]
        print(f"\n(OpenVINO's default precision on this machine: {precision})")
    if rows[0][2] is None:
        return
    pairs = list(rows[0][2])
    print(f"\n### Accuracy: relative L2 (top-1 agreement) on {args.eval_items} other N(0, 1) images\n")
    print("| model | " + " | ".join(pairs) + " |")
    print("|" + " --- |" * (len(pairs) + 1))
    for net, _, accuracy in rows:
        cells = [f"{e:.2e} ({a}/{n})" for e, (a, n) in (accuracy[p] for p in pairs)]
        print(f"| {net} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
