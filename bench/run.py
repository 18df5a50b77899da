#!/usr/bin/env python3
"""Regenerates bench/RESULTS.md: every benchmark, side by side with the tools users run today,
in one run on this machine. Usage: bench/.venv/bin/python bench/run.py [--quick]

Needs the release binary (cargo build --release) and bench/.venv (bench/setup.sh)."""
import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, measure  # noqa: E402

WORK = ROOT / "bench" / "work"


def machine():
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    versions = ", ".join(f"{p} {md.version(p)}" for p in [
        "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxoptimizer", "openvino", "polygraphy"])
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
        f"Python {platform.python_version()}, {rustc}. Tools: {versions}."
    )


def roundtrip(exe, repeat):
    """Load + save of the built-in ResNet-50 against `cp` and Python's onnx.save(onnx.load(f))."""
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "resnet50.onnx"
    subprocess.run([exe, "zoo", "resnet50", "-o", str(src)], check=True, capture_output=True)
    size = src.stat().st_size
    dst = str(WORK / "roundtrip.onnx")
    py = "import onnx,sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
    tools = [
        ("cp", ["cp", str(src), dst]),
        ("onnxsmith convert", [exe, "convert", str(src), "-o", dst]),
        ("python onnx.save(onnx.load(f))", [sys.executable, "-c", py, str(src), dst]),
    ]
    rows = [(name, *measure(cmd, repeat)[:2]) for name, cmd in tools]
    base = dict((n, (t, r)) for n, t, r in rows)
    ours_t = base["onnxsmith convert"][0]
    cp_t = base["cp"][0]
    out = [
        "## Load + save round trip (issue: foundation)",
        "",
        f"Built-in ResNet-50, {size / 2**20:.1f} MiB, page cache warm; wall time is the minimum of "
        f"{repeat} runs of the whole process, peak RSS the maximum.",
        "",
        "| tool | wall (s) | vs onnxsmith | peak RSS (MiB) | RSS / file size |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t, r in rows:
        out.append(
            f"| {name} | {t:.3f} | {t / ours_t:.2f}x | {r / 2**20:.1f} | {r / size:.2f} |"
        )
    py_t = base["python onnx.save(onnx.load(f))"][0]
    ours_r = base["onnxsmith convert"][1]
    out += [
        "",
        f"- onnxsmith / cp: {ours_t / cp_t:.2f}x (target: at most 3x)",
        f"- python / onnxsmith: {py_t / ours_t:.1f}x (target: at least 5x)",
        f"- onnxsmith peak RSS / file size: {ours_r / size:.2f} (target: at most 1.3)",
        "",
    ]
    return "\n".join(out)


def benchmark_models(exe, realmodels):
    """The models the comparison runs on: built-in ResNet-50, the generated BERT and
    MobileNetV2, and the real models when their directory is given."""
    WORK.mkdir(parents=True, exist_ok=True)
    resnet = WORK / "resnet50.onnx"
    subprocess.run([exe, "zoo", "resnet50", "-o", str(resnet)], check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "models.py"), str(WORK)], check=True,
                   capture_output=True)
    models = [resnet, WORK / "bert2.onnx", WORK / "mobilenetv2.onnx"]
    if realmodels and Path(realmodels).is_dir():
        models += sorted(Path(realmodels).glob("*.onnx"))
    return models


def optimizer_section(results):
    import compare

    charts = compare.charts(results, ROOT / "bench" / "charts")
    lines = [
        "## Graph optimizers side by side",
        "",
        "Each tool optimizes the same file; `onnxsmith` includes its tract check of the result, "
        "`onnxsmith --no-check` does not (onnxsim, onnxslim, onnxoptimizer and polygraphy check "
        "nothing by default; ORT's offline optimizer is a Python process that loads ONNX Runtime). "
        "Max abs diff compares each output with the original in ONNX Runtime on the same seeded "
        "inputs. Latency: ONNX Runtime CPU, 2 threads, batch 1, median of 30 after 5 warm-ups, "
        "the original and every tool's output measured round-robin.",
        "",
    ]
    lines += [f"![{c.stem}](charts/{c.name})" for c in charts]
    lines += ["", "### Targets", "", "| model | onnxsmith nodes | fewest nodes of the others (tool) | met | "
              "max abs diff of onnxsmith's output |", "|---|---:|---|---|---:|"]
    for r in results:
        rows = {x["tool"]: x for x in r["rows"] if "error" not in x}
        ours = rows.get("onnxsmith")
        others = [x for t, x in rows.items() if not t.startswith("onnxsmith") and t != "original"]
        if not ours or not others:
            continue
        best = min(others, key=lambda x: x["nodes"])
        met = "yes" if ours["nodes"] <= best["nodes"] else "**no**"
        lines.append(f"| {r['model']} | {ours['nodes']} | {best['nodes']} ({best['tool']}) | {met} | {ours['diff']:.1e} |")
    resnet = next((r for r in results if r["model"] == "resnet50"), None)
    if resnet:
        rows = {x["tool"]: x for x in resnet["rows"] if "error" not in x}
        nc, ck = rows["onnxsmith --no-check"], rows["onnxsmith"]
        lines += ["", "ResNet-50 speed targets:", ""]
        for tool, factor in [("onnxsim", 10), ("onnxslim", 5), ("ort-basic", 1)]:
            if tool in rows:
                ratio = rows[tool]["time"] / nc["time"]
                lines.append(f"- `optimize --no-check` vs {tool}: {ratio:.1f}x faster (target: at least {factor}x): "
                             f"{'met' if ratio >= factor else '**not met**'}")
        if "onnxsim" in rows:
            ratio = rows["onnxsim"]["time"] / ck["time"]
            lines.append(f"- `optimize` with the tract check vs onnxsim: {ratio:.1f}x faster (target: at least 5x): "
                         f"{'met' if ratio >= 5 else '**not met**'}")
            lat = ck["latency"] / rows["onnxsim"]["latency"]
            lines.append(f"- ORT latency of our output / onnxsim's: {lat:.3f} (target: at most 1.02): "
                         f"{'met' if lat <= 1.02 else '**not met**'}")
        lines.append(f"- peak RSS of `optimize --no-check` / file size: {nc['rss'] / resnet['bytes']:.2f} (target: at most 1.5): "
                     f"{'met' if nc['rss'] / resnet['bytes'] <= 1.5 else '**not met**'}")
    lines += ["", compare.markdown(results)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the round trip, fewer repetitions")
    ap.add_argument("--realmodels", default=os.environ.get("ONNXSMITH_REALMODELS"),
                    help="directory of real models to include (default: $ONNXSMITH_REALMODELS)")
    args = ap.parse_args()
    exe = binary()
    repeat = 2 if args.quick else 5
    sections = [roundtrip(exe, repeat)]
    if not args.quick:
        import compare

        results = [compare.compare_model(m, exe, log=lambda s: print(s, file=sys.stderr))
                   for m in benchmark_models(exe, args.realmodels)]
        sections.append(optimizer_section(results))
        import quant

        sections.append(quant.section(100))
        if args.realmodels and Path(args.realmodels).is_dir():
            import realistic

            sections.append(realistic.run_section(args.realmodels))
    text = "# Benchmark results\n\nRegenerate with `bench/.venv/bin/python bench/run.py` " \
        "(after `bash bench/setup.sh` and `cargo build --release`; set ONNXSMITH_REALMODELS to " \
        "include the real models).\n\n" + machine() + "\n\n" + "\n".join(sections)
    (ROOT / "bench" / "RESULTS.md").write_text(text)
    print(text)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
