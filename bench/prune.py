#!/usr/bin/env python3
"""Channel pruning measured: the built-in ResNet-50 pruned by 30% (alone, compensated, and then
quantized to int8), against the fp32 model: file size, MACs, ONNX Runtime and OpenVINO CPU
latency, agreement, and the time pruning takes against the check; then, when real models and
realistic inputs for them are given, each pruned at ratios 0.1 and 0.2 with and without
compensation. Every output goes through bench/interop.py (checker, ORT, OpenVINO).

    bench/.venv/bin/python bench/prune.py [--samples 64] [--data DIR] [--write]

DIR holds, per real model, `NAME/calib/` and `NAME/eval/` directories of `.npy`/`.npz` samples
(bench/realistic.py writes them); models are read from ONNXSMITH_REALMODELS. The ResNet-50
calibration samples are seeded random images (there is no image data set here): agreement on
them says nothing of task accuracy. With --write the section replaces the one of the same title
in bench/RESULTS.md."""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, measure, ort_session, write_section  # noqa: E402
from quant import agreement, latencies  # noqa: E402

WORK = ROOT / "bench" / "work-prune"
TITLE = "## Channel pruning"
MIB = 1024 * 1024


def interop(path):
    """bench/interop.py on a lossy result: the checker, then ONNX Runtime and OpenVINO agreeing
    with each other (not with the original, which a pruned model is not meant to equal)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "interop.py"), str(path), "--tol", "0.1"],
                       capture_output=True, text=True)
    return "pass" if r.returncode == 0 else "FAIL"


def run_ours(exe, src, out, args):
    """Wall time and the report of one optimize run; (None, None) when it failed."""
    report = out.with_suffix(".json")
    try:
        t, _, _ = measure([exe, "optimize", str(src), "-o", str(out), "-q", "--report", str(report), *args], 1)
    except RuntimeError as e:
        print(f"{src.name} {' '.join(args)}: {e}", file=sys.stderr)
        return None, None
    return t, json.loads(report.read_text())


def resnet_section(exe, samples):
    calib = WORK / "calib"
    calib.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(samples):
        np.save(calib / f"{i:04d}.npy", rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
    src = WORK / "resnet50.onnx"
    subprocess.run([exe, "zoo", "resnet50", "-o", str(src)], check=True, capture_output=True)
    fp32 = WORK / "resnet50.fp32.onnx"
    subprocess.run([exe, "optimize", str(src), "-o", str(fp32), "-q", "--no-check"], check=True, capture_output=True)
    loose = ["--min-cosine", "0", "--min-top1", "0"]
    variants = [
        ("`--prune 0.3` (L1, no samples, uncompensated)", ["--prune", "0.3", *loose]),
        ("`--prune 0.3 --calib` (compensated)", ["--prune", "0.3", "--calib", str(calib), *loose]),
        ("`--quantize int8 --activations uint8` (no pruning)",
         ["--quantize", "int8", "--activations", "uint8", "--calib", str(calib)]),
        ("`--prune 0.3 --quantize int8 --activations uint8`",
         ["--prune", "0.3", "--quantize", "int8", "--activations", "uint8", "--calib", str(calib)]),
    ]
    rows = []
    for label, args in variants:
        out = WORK / f"v{len(rows)}.onnx"
        t, rep = run_ours(exe, src, out, args)
        if rep is None:
            raise SystemExit(f"{label}: onnxsmith failed")
        rows.append((label, out, t, rep))
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    checks = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(8)]
    measured = latencies([fp32] + [out for _, out, _, _ in rows], x)
    base_ort, base_ov = measured[0]
    fp32_mib = fp32.stat().st_size / MIB
    lines = [
        "### ResNet-50",
        "",
        f"Built-in ResNet-50, fp32 after `optimize`: {fp32_mib:.1f} MiB, {base_ort * 1e3:.1f} ms in ONNX Runtime, "
        f"{base_ov * 1e3:.1f} ms in OpenVINO (batch 1, 2 threads, median of 30 runs per model taken round-robin "
        f"after 5 warm-ups). {samples} seeded random calibration samples (every fifth held back for the check). "
        "Agreement: worst cosine and top-1 against the fp32 model in ONNX Runtime on 8 other random inputs. "
        "Pruning time is the analysis, ranking, removal and compensation; check time is the tract check of "
        "the result. The uncompensated rows pass `--min-cosine 0 --min-top1 0` to be written at all.",
        "",
        "| variant | size (MiB) | size (MB) | MACs (G) | ORT speed-up | OpenVINO speed-up | cosine | top-1 | "
        "pruning (s) | check (s) | wall (s) | interop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    figures = {}
    for (label, out, t, rep), (ort_t, ov_t) in zip(rows, measured[1:]):
        cos, top1 = agreement(fp32, out, checks)
        p = rep.get("pruning") or {}
        macs = p.get("macs_after")
        prune_s = p.get("seconds")
        ok = interop(out)
        size = out.stat().st_size
        lines.append(
            f"| {label} | {size / MIB:.2f} | {size / 1e6:.2f} | {macs / 1e9 if macs else float('nan'):.2f} | "
            f"{base_ort / ort_t:.2f}x | {base_ov / ov_t:.2f}x | {cos:.4f} | {top1 * 100:.0f}% | "
            f"{prune_s if prune_s is not None else float('nan'):.2f} | {rep['seconds']['check']:.2f} | {t:.1f} | {ok} |")
        figures[label] = (size, base_ort / ort_t, base_ov / ov_t, prune_s, rep["seconds"]["check"], p)
    both = figures[variants[3][0]]
    alone = figures[variants[0][0]]
    p = both[5]
    lines += [
        "",
        f"- MACs {p['macs_before'] / 1e9:.2f} G -> {p['macs_after'] / 1e9:.2f} G "
        f"({p['macs_before'] / p['macs_after']:.2f}x fewer), parameters {p['params_before']} -> {p['params_after']}",
        f"- pruned + int8 (uint8 activations) file: {both[0] / MIB:.2f} MiB = {both[0] / 1e6:.2f} MB "
        f"(target: at most 12.5 MB, read as the source's unit, in which ResNet-50 is 98 MB, i.e. MiB): "
        f"{'met' if both[0] / MIB <= 12.5 else 'not met'}",
        f"- pruned + int8 ORT speed-up over fp32: {both[1]:.2f}x (target: at least 2.4x): "
        f"{'met' if both[1] >= 2.4 else 'not met'}; OpenVINO {both[2]:.2f}x",
        f"- `--prune 0.3` alone: ORT {alone[1]:.2f}x, OpenVINO {alone[2]:.2f}x; pruning {alone[3]:.2f} s vs "
        f"check {alone[4]:.2f} s (target: less than the check): {'met' if alone[3] < alone[4] else 'not met'}",
        "",
    ]
    return lines


def samples_of(d):
    return sorted(glob.glob(str(d / "*.npy")) + glob.glob(str(d / "*.npz")))


def ort_agreement(ref, path, files):
    """Worst cosine over outputs and samples, and top-1 agreement of [batch, classes] outputs."""
    s_ref, s = ort_session(ref), ort_session(path)
    names = [i.name for i in s_ref.get_inputs()]
    cos, top1 = [], []
    for f in files:
        if f.endswith(".npz"):
            z = np.load(f)
            feeds = {n: z[n] for n in names}
        else:
            feeds = {names[0]: np.load(f)}
        for a, b in zip(s_ref.run(None, feeds), s.run(None, feeds)):
            a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            denom = np.linalg.norm(a64) * np.linalg.norm(b64)
            cos.append(1.0 if denom == 0 else float(a64 @ b64 / denom))
            if a.ndim == 2 and a.shape[1] > 1:
                top1.append(float(np.mean(a.argmax(1) == b.argmax(1))))
    return min(cos), (float(np.mean(top1)) if top1 else None)


def real_section(exe, data, realmodels):
    lines = [
        "### Real models",
        "",
        "Each model pruned at ratios 0.1 and 0.2 (L1 importance, uniform, multiples of 8), calibrated and "
        "compensated on its `calib` samples, judged on its `eval` samples in ONNX Runtime: worst cosine over "
        "outputs and samples, and top-1 agreement for [batch, classes] outputs. Without compensation is "
        "`--no-compensate`. Groups: pruned / found.",
        "",
        "| model | ratio | groups | params | MACs | cosine (compensated) | cosine (none) | top-1 (comp.) | "
        "top-1 (none) | better | interop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for model in sorted(Path(realmodels).glob("*.onnx")):
        name = model.stem
        calib, evald = data / name / "calib", data / name / "eval"
        if not samples_of(calib) or not samples_of(evald):
            notes.append(f"- {name}: no realistic samples in {data / name}, skipped")
            continue
        for ratio in ["0.1", "0.2"]:
            res = {}
            for comp in [True, False]:
                out = WORK / f"{name}.{ratio}.{'c' if comp else 'n'}.onnx"
                args = ["--prune", ratio, "--calib", str(calib), "--min-cosine", "0", "--min-top1", "0"]
                if not comp:
                    args.append("--no-compensate")
                _, rep = run_ours(exe, model, out, args)
                if rep is None or not out.exists():
                    res[comp] = None
                    continue
                res[comp] = (out, rep, ort_agreement(model, out, samples_of(evald)))
            if not res.get(True) or not res.get(False):
                lines.append(f"| {name} | {ratio} | - | - | - | failed | failed | - | - | - | - |")
                continue
            out, rep, (c_cos, c_top) = res[True]
            _, _, (n_cos, n_top) = res[False]
            p = rep["pruning"]
            pruned = sum(1 for g in p["groups"] if g["kept"] < g["channels"])
            fmt = lambda v: "-" if v is None else f"{v * 100:.1f}%"  # noqa: E731
            better = c_top > n_top if c_top is not None else c_cos > n_cos
            if c_top is not None and c_top == n_top:
                better = c_cos > n_cos
            lines.append(
                f"| {name} | {ratio} | {pruned}/{len(p['groups'])} | {p['params_after'] / max(p['params_before'], 1):.1%} | "
                f"{p['macs_after'] / max(p['macs_before'], 1):.1%} | {c_cos:.4f} | {n_cos:.4f} | {fmt(c_top)} | "
                f"{fmt(n_top)} | {'yes' if better else 'no'} | {interop(out)} |")
    return lines + [""] + notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--data", type=Path, help="realistic samples per real model (NAME/calib, NAME/eval)")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    exe = binary()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    lines = [TITLE, ""]
    if not args.skip_resnet:
        lines += resnet_section(exe, args.samples)
    realmodels = os.environ.get("ONNXSMITH_REALMODELS")
    if args.data and realmodels:
        lines += real_section(exe, args.data, realmodels)
    shutil.rmtree(WORK, ignore_errors=True)
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
