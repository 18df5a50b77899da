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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"


def binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "release" / "onnxsmith"
    if not exe.exists():
        sys.exit(f"{exe} is missing: run `cargo build --release` first")
    return str(exe)


def measure(cmd, repeat):
    """Runs cmd `repeat` times; returns (min wall seconds, max peak RSS in bytes)."""
    best, rss = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        err = p.stderr.read().decode()
        p.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(cmd)} failed: {err}")
        best = min(best, wall)
        rss = max(rss, usage.ru_maxrss * 1024)
    return best, rss


def machine():
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnx

    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
        f"Python {platform.python_version()}, onnx {onnx.__version__}, {rustc}."
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
    rows = [(name, *measure(cmd, repeat)) for name, cmd in tools]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    exe = binary()
    repeat = 2 if args.quick else 5
    sections = [roundtrip(exe, repeat)]
    text = "# Benchmark results\n\nRegenerate with `bench/.venv/bin/python bench/run.py` " \
        "(after `bash bench/setup.sh` and `cargo build --release`).\n\n" + machine() + "\n\n" + \
        "\n".join(sections)
    (ROOT / "bench" / "RESULTS.md").write_text(text)
    print(text)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
