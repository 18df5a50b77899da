#!/usr/bin/env python3
"""Side by side: onnxsmith against the graph optimizers users run today, on the same files, in
one run. Imported by bench/run.py, which writes bench/RESULTS.md; runnable alone too:

    python bench/compare.py MODEL.onnx ...

For each model and tool: wall time (min of 3 runs of the whole process), peak RSS, node count,
op histogram, file size, max abs difference of the outputs against the original in ONNX Runtime
on seeded inputs, and ONNX Runtime CPU latency of the output (2 threads, batch 1, median of 30
after 5 warm-up runs, all of a model's outputs measured round-robin). Tools are a list of (name, command) so later tasks add rows."""
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VENV_BIN, binary, make_inputs, max_abs_diff, measure, ort_session  # noqa: E402

PY = sys.executable
ONNXOPTIMIZER = "import onnx,onnxoptimizer,sys; onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1])), sys.argv[2])"
ORT_BASIC = ("import onnxruntime as ort,sys; so=ort.SessionOptions(); "
             "so.graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC; "
             "so.optimized_model_filepath=sys.argv[2]; "
             "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])")


def check_flags(feeds_npz):
    return ["--inputs-npz", str(feeds_npz)]


def optimize_tools(exe):
    """(name, function(input, output, feeds_npz) -> argv). onnxsmith comes first: ratios are
    against it."""
    return [
        ("onnxsmith", lambda i, o, f: [exe, "optimize", i, "-o", o, "--quiet", *check_flags(f)]),
        ("onnxsmith --no-check", lambda i, o, f: [exe, "optimize", i, "-o", o, "--quiet", "--no-check"]),
        ("onnxsim", lambda i, o, f: [str(VENV_BIN / "onnxsim"), i, o]),
        ("onnxslim", lambda i, o, f: [str(VENV_BIN / "onnxslim"), i, o]),
        ("onnxoptimizer", lambda i, o, f: [PY, "-c", ONNXOPTIMIZER, i, o]),
        ("ort-basic", lambda i, o, f: [PY, "-c", ORT_BASIC, i, o]),
        ("polygraphy", lambda i, o, f: [str(VENV_BIN / "polygraphy"), "surgeon", "sanitize", i,
                                        "--fold-constants", "-o", o]),
    ]


def op_histogram(path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    hist = collections.Counter()

    def walk(g):
        for n in g.node:
            hist[n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(m.graph)
    return hist


def latencies(paths, feeds, runs=30, warmup=5):
    """Median latency of each model, measured round-robin (one run of each in turn) so drift in
    the machine's speed hits every tool alike."""
    sessions = [ort_session(p) for p in paths]
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    times = [[] for _ in paths]
    for _ in range(runs):
        for s, ts in zip(sessions, times):
            t = time.perf_counter()
            s.run(None, feeds)
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def compare_model(model, exe, repeat=3, log=print):
    name = Path(model).stem
    feeds = make_inputs(model, name)
    work = Path(tempfile.mkdtemp(prefix="onnxsmith-bench-"))
    npz = work / "inputs.npz"
    np.savez(npz, **feeds)
    expected = ort_session(model).run(None, feeds)
    rows = [{
        "tool": "original", "nodes": sum(op_histogram(model).values()), "ops": op_histogram(model),
        "bytes": Path(model).stat().st_size, "diff": 0.0, "path": str(model),
    }]
    for tool, argv in optimize_tools(exe):
        out = work / f"{tool.replace(' ', '_')}.onnx"
        row = {"tool": tool}
        try:
            row["time"], row["rss"], _ = measure(argv(str(model), str(out), npz), repeat)
            row["ops"] = op_histogram(out)
            row["nodes"] = sum(row["ops"].values())
            row["bytes"] = out.stat().st_size + sum(p.stat().st_size for p in work.glob(out.name + ".*"))
            row["diff"] = max_abs_diff(expected, ort_session(out).run(None, feeds))
            row["path"] = str(out)
        except Exception as e:  # noqa: BLE001
            row["error"] = " ".join(str(e).split())[:160]
        log(f"  {name:<22} {tool:<22} " + (f"error: {row['error']}" if "error" in row else
            f"{row['time']:.2f} s, {row['nodes']} nodes, diff {row['diff']:.1e}"))
        rows.append(row)
    ok = [r for r in rows if "path" in r]
    for r, t in zip(ok, latencies([r["path"] for r in ok], feeds)):
        r["latency"] = t
    return {"model": name, "bytes": Path(model).stat().st_size, "rows": rows}


def markdown(results):
    out = []
    for r in results:
        rows = {x["tool"]: x for x in r["rows"]}
        ours = rows["onnxsmith"]
        out += [f"### {r['model']} ({r['bytes'] / 2**20:.1f} MiB)", "",
                "| tool | time (s) | time / onnxsmith | peak RSS (MiB) | RSS / file | nodes | file (MiB) "
                "| max abs diff | ORT latency (ms) | latency / onnxsmith |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["rows"]:
            if "error" in x:
                out.append(f"| {x['tool']} | failed: {x['error']} | | | | | | | | |")
                continue
            t = x.get("time")
            rel = lambda a, b: f"{a / b:.2f}x" if a is not None and b else "-"  # noqa: E731
            out.append(
                f"| {x['tool']} | {t:.3f} | {rel(t, ours.get('time'))} | "
                f"{x['rss'] / 2**20:.0f} | {x['rss'] / r['bytes']:.2f} | " if t is not None else
                f"| {x['tool']} | - | - | - | - | ")
            out[-1] += (f"{x['nodes']} | {x['bytes'] / 2**20:.1f} | {x['diff']:.1e} | "
                        f"{x['latency'] * 1e3:.2f} | {rel(x['latency'], ours.get('latency'))} |")
        ops = sorted(set().union(*(x.get("ops", {}).keys() for x in r["rows"])))
        out += ["", "<details><summary>op histogram</summary>", "",
                "| op | " + " | ".join(x["tool"] for x in r["rows"]) + " |",
                "|---|" + "---:|" * len(r["rows"])]
        for op in ops:
            out.append(f"| {op} | " + " | ".join(str(x.get("ops", {}).get(op, "-")) for x in r["rows"]) + " |")
        out += ["", "</details>", ""]
    return "\n".join(out)


def charts(results, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    tools = [t for t, _ in optimize_tools("x")]
    files = []
    for key, title, unit, scale in [("time", "Tool wall time", "s", 1), ("bytes", "Output file size", "MiB", 2**-20),
                                    ("latency", "ORT CPU latency of the output", "ms", 1e3)]:
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(tools)
        for i, tool in enumerate(tools):
            vals = []
            for r in results:
                row = next((x for x in r["rows"] if x["tool"] == tool), {})
                vals.append(row.get(key, 0) * scale if "error" not in row else 0)
            ax.bar(np.arange(len(results)) + i * width, vals, width, label=tool)
        ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2)
        ax.set_xticklabels([r["model"] for r in results], fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title)
        if key == "time":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        path = outdir / f"{key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
    return files


if __name__ == "__main__":
    exe = binary()
    res = [compare_model(m, exe) for m in sys.argv[1:]]
    print(markdown(res))
