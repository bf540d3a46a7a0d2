#!/usr/bin/env python3
"""cnnc against ONNX Runtime layer by layer, on the same weights, batch and threads.

`cnnc build --emit onnx` writes the model with random weights (fixed seed); ONNX Runtime
(all graph optimizations on, its profiler on) runs it, and `cnnc bench --profile --format
json` times cnnc's kernels. Each cnnc convolution or linear layer is paired with the ORT
node that does the same multiply-adds, give or take ORT's padding of output channels to
blocks of 16 (ORT fuses BatchNorm, activations and residual adds into its convolutions
and names a fused node after the last node it swallowed, so names do not match); pools
pair in order. With `--precision int8`, both sides run int8 with the calibration
`bench/compare_int8.py` makes (the same N(0, 1) images for `cnnc calibrate` and ORT's
`quantize_static`, QDQ, per-channel; needs a Python with onnx), and ORT's QLinearConv and
QGemm nodes, whose profile omits the weights' shapes but which keep the layer's name,
pair with cnnc's layers by name. Prints a Markdown table per layer (medians, ratio cnnc / ORT, the time of
what did not pair on each side) and one per cnnc algorithm. Run from the repository root:

    .venv/bin/python bench/layers.py resnet50 [--batch 1] [--threads 1] [--runs 20]
    PYTHON bench/layers.py resnet50 --precision int8   # PYTHON with onnx, as compare_int8.py

ORT's profiler adds a little time per node; the totals of both sides are printed next to
each other, and `bench/compare.py` gives the end-to-end ratios without profilers.
"""
import argparse, json, math, os, pathlib, re, subprocess, sys, tempfile

ORT_CHILD = r"""
import collections, json, sys
import numpy as np, onnxruntime as ort
model, threads, runs, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.enable_profiling = True
options.profile_file_prefix = prefix
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feed = {i.name: np.random.default_rng(1).standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
for _ in range(2):
    session.run(None, feed)
for _ in range(runs):
    session.run(None, feed)
events = json.load(open(session.end_profiling()))
nodes = collections.OrderedDict()
for e in events:
    if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
        continue
    node = nodes.setdefault(e["name"][: -len("_kernel_time")], {"op": e["args"].get("op_name"), "times": [],
                                                                 "inputs": e["args"].get("input_type_shape", []),
                                                                 "outputs": e["args"].get("output_type_shape", [])})
    node["times"].append(e["dur"] / 1e3)
print(json.dumps([dict(name=name, **node) for name, node in nodes.items()]))
"""


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def shape(entry):
    return next(iter(entry.values()))


def ort_macs(node):
    """Multiply-adds of an ORT Conv/Gemm node from its weight and output shapes."""
    if node["op"] not in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul") or len(node["inputs"]) < 2:
        return None
    weight, out = shape(node["inputs"][1]), shape(node["outputs"][0])
    if node["op"] in ("Gemm", "FusedGemm", "MatMul"):
        # The weight holds in x out values in either orientation.
        return math.prod(out) * math.prod(weight) // out[-1]
    return out[0] * weight[0] * math.prod(weight[1:]) * math.prod(out[2:4])


def kind(kernel):
    op = kernel["kernel"].rsplit("(", 1)[-1].rstrip(")")
    if op in ("conv", "linear"):
        return "mac"
    return "pool" if op.endswith("pool") else "other"


def quantize(args, source, model, tmp):
    """The int8 pair of `compare_int8.py`: cnnc's calibration file and ORT's QDQ model,
    from the same calibration images."""
    import numpy as np, onnx
    from compare_int8 import QUANTIZE_CHILD
    dims = [d.dim_value for d in onnx.load(model, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    calib = tmp / "calib.npy"
    items = -(-args.calib_items // dims[0]) * dims[0]
    np.save(calib, np.random.default_rng(args.seed).standard_normal([items, *dims[1:]]).astype(np.float32))
    calib_json = tmp / "net.calib.json"
    subprocess.run([args.cnnc, "calibrate", source, "--random-weights", "--seed", "0", "--inputs", str(calib), "-o",
                    str(calib_json)], check=True, capture_output=True)
    quantized = str(tmp / "int8.onnx")
    subprocess.run([sys.executable, "-c", QUANTIZE_CHILD, model, str(tmp / "pre.onnx"), quantized, str(calib)],
                   check=True, capture_output=True)
    return quantized, calib_json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("net")
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--precision", choices=["f32", "int8"], default="f32")
    parser.add_argument("--calib-items", type=int, default=8, help="N(0, 1) calibration images (int8)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the calibration images (int8)")
    args = parser.parse_args()
    source = f"examples/{args.net}.cnn" if not args.net.endswith(".cnn") else args.net
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.cnnc, "build", source, "--random-weights", "--seed", "0", "--batch", str(args.batch),
                        "--emit", "onnx", "-o", tmp], check=True, stderr=subprocess.DEVNULL)
        name = json.loads(subprocess.run([args.cnnc, "summary", source, "--format", "json"], check=True,
                                         capture_output=True, text=True).stdout)["network"]
        model = str(pathlib.Path(tmp) / f"{name}.onnx")
        precision = []
        if args.precision == "int8":
            model, calib_json = quantize(args, source, model, pathlib.Path(tmp))
            precision = ["--precision", "int8", "--calib", str(calib_json)]
        out = subprocess.run([sys.executable, "-c", ORT_CHILD, model, str(args.threads), str(args.runs),
                              str(pathlib.Path(tmp) / "ort")], check=True, capture_output=True, text=True)
        ort_nodes = json.loads(out.stdout)
        out = subprocess.run([args.cnnc, "bench", source, "--seed", "0", "--batch", str(args.batch), "--threads",
                              str(args.threads), "--runs", str(args.runs), "--profile", "--format", "json",
                              *precision], check=True, capture_output=True, text=True)
    kernels = json.loads(out.stdout)
    for node in ort_nodes:
        node["ms"] = median(node["times"])
        node["macs"] = ort_macs(node)
        node["used"] = False
    rows = []
    for kernel in kernels:
        match = None
        if kind(kernel) == "mac" and args.precision == "int8":
            # ORT's profile omits the prepacked int8 weights' shapes; its quantized nodes
            # keep the layer's name (QLinearConv `conv1_token_1`, QGemm `fc`).
            layer = kernel["kernel"].rsplit(" (", 1)[0]
            same = lambda n: n["op"] in ("QLinearConv", "QGemm") and re.sub(r"_token_\d+$", "", n["name"]) == layer
            match = next((n for n in ort_nodes if not n["used"] and same(n)), None)
        elif kind(kernel) == "mac":
            # ORT may pad a layer's output channels to its block of 16 (and its
            # multiply-adds with them).
            close = lambda macs: macs is not None and kernel["macs"] <= macs <= kernel["macs"] * 1.02
            match = next((n for n in ort_nodes if not n["used"] and close(n["macs"])), None)
        elif kind(kernel) == "pool":
            match = next((n for n in ort_nodes if not n["used"] and "Pool" in (n["op"] or "")), None)
        if match is not None:
            match["used"] = True
        rows.append((kernel, match))
    print(f"\n### {args.net}, batch {args.batch}, {args.threads} thread(s), {args.precision}: cnnc kernels against ORT "
          "nodes\n")
    print("| layer | cnnc algorithm | cnnc ms | ORT node | ORT ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kernel, match in rows:
        if match is None:
            continue
        print(f"| {kernel['kernel']} | {kernel['algorithm']} | {kernel['median_ms']:.3f} | {match['name']} "
              f"({match['op']}) | {match['ms']:.3f} | **{kernel['median_ms'] / match['ms']:.2f}** |")
    paired_c = sum(k["median_ms"] for k, m in rows if m is not None)
    paired_o = sum(m["ms"] for _, m in rows if m is not None)
    rest_c = [k for k, m in rows if m is None and k["median_ms"] > 0]
    rest_o = [n for n in ort_nodes if not n["used"]]
    print(f"| paired layers | | {paired_c:.3f} | | {paired_o:.3f} | **{paired_c / paired_o:.2f}** |")
    print(f"| not paired | {', '.join(k['kernel'] for k in rest_c)} | {sum(k['median_ms'] for k in rest_c):.3f} "
          f"| {', '.join(n['name'] + ' (' + n['op'] + ')' for n in rest_o)} | {sum(n['ms'] for n in rest_o):.3f} | |")
    total_c = sum(k["median_ms"] for k in kernels)
    total_o = sum(n["ms"] for n in ort_nodes)
    print(f"| total | | {total_c:.3f} | | {total_o:.3f} | **{total_c / total_o:.2f}** |")
    # The paired layers by cnnc's algorithm (up to its first comma).
    groups = {}
    for kernel, match in rows:
        if match is not None:
            group = groups.setdefault(kernel["algorithm"].split(",")[0], [0, 0.0, 0.0, 0])
            group[0] += 1
            group[1] += kernel["median_ms"]
            group[2] += match["ms"]
            group[3] += kernel["macs"]
    print(f"\n| cnnc algorithm | layers | cnnc ms | cnnc GFLOP/s | ORT ms | ORT GFLOP/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (count, c_ms, o_ms, macs) in sorted(groups.items(), key=lambda g: -g[1][1]):
        gflops = lambda ms: f"{2 * macs / (ms * 1e6):.0f}" if macs else "-"
        print(f"| {name} | {count} | {c_ms:.3f} | {gflops(c_ms)} | {o_ms:.3f} | {gflops(o_ms)} | **{c_ms / o_ms:.2f}** |")


if __name__ == "__main__":
    main()
