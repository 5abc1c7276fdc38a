#!/usr/bin/env python3
"""convkit vs PyTorch (oneDNN) vs ONNX Runtime (MLAS) on the same layers, in the same run.

For each thread count, each layer is timed by the three engines one after the other
(convkit through `convkit bench --shapes <one layer> --json`), so a change in machine load hits
all three alike. Every engine: warm-up, then the median (and minimum) of --runs runs.

Prints one table per thread count (ms, ratio convkit / best of the others) and writes a bar
chart PNG. Besides wall-clock medians and minima it reports process CPU time per run: on a
machine shared with other jobs, CPU time excludes the waits for a core, so at one thread it is
the fairest estimate of undisturbed speed (at two threads idle-spinning workers inflate it).
Usage:

    scripts/compare.py --threads 1 2 [--suite dense|depthwise|transposed|backward|all
                       | --shapes FILE.json] [--runs 15]

Backward rows time PyTorch autograd's grad input + grad weight (ONNX Runtime has no backward:
its column reads nan and the ratio is against PyTorch).
                       [--convkit target/release/convkit] [--png compare.png] [--json out.json]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def timed(fn, runs, warm_s=0.2):
    """Warm-up (>= 2 calls and ~warm_s seconds), then `runs` timed calls:
    (median ms, min ms, process CPU ms per call)."""
    t0 = time.perf_counter()
    n = 0
    while n < 2 or (time.perf_counter() - t0 < warm_s and n < 50):
        fn()
        n += 1
    ts = []
    c0 = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    cpu = (time.process_time() - c0) * 1e3 / runs
    return statistics.median(ts), min(ts), cpu


def dims(row):
    """(is_1d, spatial input dims, kernel, stride, padding, dilation) of a suite row."""
    one_d = "l" in row and row.get("l") is not None
    sp = [row["l"]] if one_d else [row["h"], row["w"]]
    nd = len(sp)

    def pair(v):
        return list(v) * nd if len(v) == 1 else list(v)

    return one_d, sp, pair(row["kernel"]), pair(row["stride"]), pair(row["padding"]), pair(row["dilation"])


def flops(row):
    one_d, sp, k, s, p, d = dims(row)
    out = [(i + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for i, kk, ss, pp, dd in zip(sp, k, s, p, d)]
    taps = int(np.prod(k))
    mult = 2 if row.get("pass") == "backward" else 1  # grad input + grad weight
    if row.get("transposed"):
        return mult * 2 * row["n"] * int(np.prod(sp)) * row["c"] * (row["k"] // row["groups"]) * taps
    return mult * 2 * row["n"] * int(np.prod(out)) * row["k"] * (row["c"] // row["groups"]) * taps


def data(row):
    rng = np.random.default_rng(0)
    one_d, sp, k, *_ = dims(row)
    x = rng.standard_normal([row["n"], row["c"]] + sp).astype(np.float32)
    if row.get("transposed"):
        wshape = [row["c"], row["k"] // row["groups"]] + k
    else:
        wshape = [row["k"], row["c"] // row["groups"]] + k
    w = rng.standard_normal(wshape).astype(np.float32) * 0.1
    b = rng.standard_normal([row["k"]]).astype(np.float32)
    return x, w, b


def torch_time(row, threads, runs):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    one_d, sp, k, s, p, d = dims(row)
    x, w, b = (torch.from_numpy(a) for a in data(row))
    g = row["groups"]
    if row.get("transposed"):
        op = row.get("output_padding") or [0] * len(sp)
        f = F.conv_transpose1d if one_d else F.conv_transpose2d
        fn = lambda: f(x, w, b, stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    else:
        f = F.conv1d if one_d else F.conv2d
        fn = lambda: f(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    if row.get("pass") == "backward":
        # Autograd's grad input + grad weight (as convkit's backward rows), one graph reused.
        x.requires_grad_(True)
        w.requires_grad_(True)
        y = fn()
        dy = torch.randn_like(y)
        return timed(lambda: torch.autograd.grad(y, [x, w], dy, retain_graph=True), runs)
    with torch.inference_mode():
        return timed(fn, runs)


def ort_time(row, threads, runs):
    """ONNX Runtime's inference session (forward only: `None` for backward rows)."""
    if row.get("pass") == "backward":
        return None
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    one_d, sp, k, s, p, d = dims(row)
    x, w, b = data(row)
    attrs = dict(kernel_shape=k, strides=s, pads=p + p, dilations=d, group=row["groups"])
    op = "Conv"
    if row.get("transposed"):
        op = "ConvTranspose"
        opad = row.get("output_padding") or [0] * len(sp)
        if any(opad):
            attrs["output_padding"] = opad
    node = helper.make_node(op, ["X", "W", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return timed(lambda: sess.run(None, {"X": x}), runs)


def convkit_time(exe, row, threads, runs, peak=False):
    with tempfile.TemporaryDirectory() as tmp:
        shapes = os.path.join(tmp, "shape.json")
        out = os.path.join(tmp, "out.json")
        with open(shapes, "w") as f:
            json.dump([row], f)
        cmd = [exe, "bench", "--shapes", shapes, "--threads", str(threads), "--json", out,
               "--runs", str(runs)]
        if not peak:
            cmd.append("--no-peak")
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.exit(f"convkit bench failed: {res.stderr.strip()}")
        with open(out) as f:
            r = json.load(f)[0]
        peaks = [float(m) for m in re.findall(r"([\d.]+) GFLOP/s on \d+ threads", res.stdout)]
        return r, (max(peaks) if peaks else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--suite", choices=["dense", "depthwise", "transposed", "backward", "all"],
                    default="dense")
    ap.add_argument("--shapes", help="JSON array of layers (convkit bench schema)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--convkit", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "convkit"))
    ap.add_argument("--png", default="compare.png")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    if not os.path.exists(a.convkit):
        sys.exit(f"{a.convkit} not found: build it with `cargo build --release -p convkit-cli`")
    if a.shapes:
        with open(a.shapes) as f:
            rows = json.load(f)
    else:
        res = subprocess.run([a.convkit, "bench", "--suite", a.suite, "--print-suite"],
                             capture_output=True, text=True, check=True)
        rows = json.loads(res.stdout)

    results = {}
    for t in a.threads:
        table = []
        peak = None
        for i, row in enumerate(rows):
            ck, pk = convkit_time(a.convkit, row, t, a.runs, peak=(i == 0))
            peak = peak or pk
            tm, tmin, tcpu = torch_time(row, t, a.runs)
            o = ort_time(row, t, a.runs)
            om, omin, ocpu = o if o else (float("nan"),) * 3
            best = min(tm, om) if o else tm
            best_min = min(tmin, omin) if o else tmin
            best_cpu = min(tcpu, ocpu) if o else tcpu
            name = row["name"] + (" (bwd)" if row.get("pass") == "backward" else "")
            table.append(dict(name=name, algo=ck["algo"], convkit_ms=ck["median_ms"],
                              convkit_min_ms=ck["min_ms"], torch_ms=tm, torch_min_ms=tmin,
                              ort_ms=om, ort_min_ms=omin, convkit_cpu_ms=ck.get("cpu_ms"),
                              torch_cpu_ms=tcpu, ort_cpu_ms=ocpu, ratio=ck["median_ms"] / best,
                              ratio_cpu=(ck["cpu_ms"] / best_cpu) if ck.get("cpu_ms") else None,
                              ratio_min=ck["min_ms"] / best_min, gflops=ck["gflops"],
                              peak_pct=(100 * flops(row) / (ck["min_ms"] * 1e6) / peak) if peak else None))
        results[t] = dict(peak_gflops=peak, rows=table)
        print(f"\n== {t} thread(s); FMA peak {peak or float('nan'):.1f} GFLOP/s; medians of {a.runs} runs (min in brackets) ==")
        print(f"{'layer':<32} {'algo':>13} {'convkit ms':>17} {'torch ms':>17} {'ORT ms':>17} {'ratio':>6} {'r(min)':>6} {'%peak':>6}"
              f"  | cpu ms/run: {'convkit':>8} {'torch':>8} {'ORT':>8} {'ratio':>6}")
        for r in table:
            pk = f"{r['peak_pct']:.0f}%" if r["peak_pct"] is not None else "-"
            cpu = "-" if r["ratio_cpu"] is None else (
                f"{r['convkit_cpu_ms']:8.3f} {r['torch_cpu_ms']:8.3f} {r['ort_cpu_ms']:8.3f} {r['ratio_cpu']:6.2f}")
            print(f"{r['name']:<32} {r['algo']:>13} {r['convkit_ms']:8.3f} [{r['convkit_min_ms']:6.3f}] "
                  f"{r['torch_ms']:8.3f} [{r['torch_min_ms']:6.3f}] {r['ort_ms']:8.3f} [{r['ort_min_ms']:6.3f}] "
                  f"{r['ratio']:6.2f} {r['ratio_min']:6.2f} {pk:>6}  |             {cpu}")
        worst = max(r["ratio"] for r in table)
        print(f"worst ratio convkit / min(torch, ORT): {worst:.2f} (median), "
              f"{max(r['ratio_min'] for r in table):.2f} (min)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(results), 1, figsize=(12, 4.5 * len(results)), squeeze=False)
        for ax, (t, res) in zip(axes[:, 0], results.items()):
            names = [r["name"] for r in res["rows"]]
            xs = np.arange(len(names))
            wdt = 0.27
            for j, (key, label, color) in enumerate([("convkit_ms", "convkit", "#268bd2"),
                                                     ("torch_ms", "PyTorch", "#dc322f"),
                                                     ("ort_ms", "ONNX Runtime", "#859900")]):
                ax.bar(xs + (j - 1) * wdt, [r[key] for r in res["rows"]], wdt, label=label, color=color)
            ax.set_yscale("log")
            ax.set_ylabel("median ms (log)")
            ax.set_title(f"{t} thread(s)")
            ax.set_xticks(xs)
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
        print(f"chart: {a.png}")
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)


if __name__ == "__main__":
    main()
