#!/usr/bin/env python3
"""cnnc against ONNX Runtime and OpenVINO on the same weights, batch and machine, in one run.

For each network: `cnnc build --emit onnx` writes the model with random weights (fixed
seed); ONNX Runtime (all graph optimizations on) times it with 1 and 2 threads in a child
process (session creation time and peak RSS included); when the `openvino` package is
installed (`.venv/bin/pip install openvino`; optional, not needed by the tests), OpenVINO
times the same ONNX file too, in f32 (`INFERENCE_PRECISION_HINT=f32`) and in its default
precision (bf16 on CPUs with AVX-512 BF16 or AMX); `cnnc bench --format json` times
cnnc's target on the same weights, with 1 and 2 threads. Prints one Markdown table per
batch size (batch 1 and 8 unless `--batch` says otherwise) with medians and the ratio
cnnc / ORT (below 1.0: cnnc is faster). The machine is shared, so each engine is measured
`--repeat` times (3), alternating with the other, and keeps its best median. Run from the
repository root:

    .venv/bin/python bench/compare.py [--target cpu] [--precision f32|bf16] [--batch 1 8] [--runs 10] [--repeat 3] [net ...]

`--precision bf16` times cnnc in bf16 (`cnnc bench --precision bf16`) against the same
engines, whose ONNX files stay f32: ORT in f32, OpenVINO in f32 and in its default.
"""
import argparse, json, os, pathlib, subprocess, sys, tempfile

DEFAULT = ["lenet5", "allcnn_c", "nin", "inception3a", "resnet18_cifar", "squeezenet1_1", "resnet18", "alexnet",
           "resnet50", "vgg16"]

ORT_CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
model, threads, runs, warmup, batch_input = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
start = time.perf_counter()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
create_ms = (time.perf_counter() - start) * 1e3
feed = {i.name: np.random.default_rng(1).standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
for _ in range(warmup):
    session.run(None, feed)
times = []
for _ in range(runs):
    t = time.perf_counter(); session.run(None, feed); times.append((time.perf_counter() - t) * 1e3)
times.sort()
median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
print(json.dumps({"median_ms": median, "min_ms": times[0], "create_ms": create_ms,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OV_CHILD = r"""
import json, resource, sys, time
import numpy as np, openvino as ov
model, threads, runs, warmup, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
core = ov.Core()
config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
if precision != "default":
    config["INFERENCE_PRECISION_HINT"] = precision
start = time.perf_counter()
compiled = core.compile_model(core.read_model(model), "CPU", config)
create_ms = (time.perf_counter() - start) * 1e3
request = compiled.create_infer_request()
feed = {i.get_any_name(): np.random.default_rng(1).standard_normal(list(i.get_shape())).astype(np.float32)
        for i in compiled.inputs}
for _ in range(warmup):
    request.infer(feed)
times = []
for _ in range(runs):
    t = time.perf_counter(); request.infer(feed); times.append((time.perf_counter() - t) * 1e3)
times.sort()
median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
print(json.dumps({"median_ms": median, "min_ms": times[0], "create_ms": create_ms,
                  "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def have_openvino():
    return subprocess.run([sys.executable, "-c", "import openvino"], capture_output=True).returncode == 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--precision", default="f32", choices=["f32", "bf16"], help="cnnc's precision")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure each engine this many times, alternating, and keep each one's best median")
    parser.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even when installed")
    parser.add_argument("nets", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    args.openvino = not args.no_openvino and have_openvino()
    env = dict(os.environ)
    # OPENBLAS settings some machines carry slow numpy down; ORT does not use them.
    for batch in args.batch:
        rows = [measure(args, net, batch, env) for net in args.nets]
        label = args.target if args.precision == "f32" else f"{args.target} {args.precision}"
        print_table(label, batch, [row for row in rows if row is not None])


def measure(args, net, batch, env):
    """ORT and cnnc on one network at one batch size, 1 and 2 threads each."""
    with tempfile.TemporaryDirectory() as tmp:
        source = f"examples/{net}.cnn"
        subprocess.run([args.cnnc, "build", source, "--random-weights", "--seed", "0", "--batch", str(batch),
                        "--emit", "onnx", "-o", tmp], check=True, stderr=subprocess.DEVNULL)
        name = json.loads(subprocess.run([args.cnnc, "summary", source, "--format", "json"], check=True,
                                         capture_output=True, text=True).stdout)["network"]
        model = str(pathlib.Path(tmp) / f"{name}.onnx")
        # The machine is shared: each engine runs `repeat` times, alternating with the
        # other, and keeps its best median (the same treatment for both).
        ort_results, cnnc, ov = {}, {}, {"f32": {}, "default": {}}
        for _ in range(args.repeat):
            if args.openvino:
                for precision in ("f32", "default"):
                    for threads in (1, 2):
                        out = subprocess.run([sys.executable, "-c", OV_CHILD, model, str(threads), str(args.runs),
                                              str(args.warmup), precision], check=True, capture_output=True,
                                             text=True, env=env)
                        best(ov[precision], threads, json.loads(out.stdout))
            for threads in (1, 2):
                out = subprocess.run([sys.executable, "-c", ORT_CHILD, model, str(threads), str(args.runs),
                                      str(args.warmup), "x"], check=True, capture_output=True, text=True, env=env)
                best(ort_results, threads, json.loads(out.stdout))
            for threads in (1, 2):
                out = subprocess.run([args.cnnc, "bench", source, "--seed", "0", "--batch", str(batch),
                                      "--target", args.target, "--threads", str(threads), "--runs", str(args.runs),
                                      "--warmup", str(args.warmup), "--precision", args.precision, "--format", "json"],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{net}: cnnc bench failed: {out.stderr.strip()}", file=sys.stderr)
                    return None
                best(cnnc, threads, json.loads(out.stdout))
    return net, cnnc, ort_results, ov


def best(results, threads, new):
    """Keeps the measurement with the lower median for `threads`."""
    if threads not in results or new["median_ms"] < results[threads]["median_ms"]:
        results[threads] = new


def print_table(target, batch, rows):
    print(f"\n## Batch {batch}\n")
    print(f"| model | GMACs | cnnc {target}, 1 thread | ORT, 1 thread | ratio | cnnc {target}, 2 threads "
          f"| ORT, 2 threads | ratio | cnnc compile | ORT session | cnnc peak RSS | ORT peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for net, c, o, _ in rows:
        cells = [net, f"{c[1]['macs'] / 1e9:.3f}"]
        for t in (1, 2):
            cells += [f"{c[t]['median_ms']:.3f} ms ({c[t]['gflops']:.0f} GFLOP/s)", f"{o[t]['median_ms']:.3f} ms",
                      f"**{c[t]['median_ms'] / o[t]['median_ms']:.2f}**"]
        cells += [f"{c[2]['compile_ms']:.1f} ms", f"{o[2]['create_ms']:.1f} ms", f"{c[2]['peak_rss_mb'] or 0:.0f} MB",
                  f"{o[2]['peak_rss_mb']:.0f} MB"]
        print("| " + " | ".join(cells) + " |", flush=True)
    if not any(ov["f32"] for _, _, _, ov in rows):
        return
    print(f"\n### Batch {batch}: OpenVINO on the same ONNX files\n")
    precision = next(ov["default"][2]["precision"] for _, _, _, ov in rows if ov["default"])
    print(f"| model | threads | cnnc {target} | OpenVINO f32 | ratio | OpenVINO default ({precision}) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for net, c, _, ov in rows:
        for t in (1, 2):
            f32, default = ov["f32"][t]["median_ms"], ov["default"][t]["median_ms"]
            print(f"| {net} | {t} | {c[t]['median_ms']:.3f} ms | {f32:.3f} ms | **{c[t]['median_ms'] / f32:.2f}** "
                  f"| {default:.3f} ms | **{c[t]['median_ms'] / default:.2f}** |", flush=True)

if __name__ == "__main__":
    main()
