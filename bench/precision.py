#!/usr/bin/env python3
"""Mixed precision side by side: onnxsmith `--precision fp16` (and bf16) against
onnxconverter-common's `convert_float_to_float16(keep_io_types=True)` (what onnxslim's
dtype="fp16" and ultralytics' half exports call) and its `auto_convert_mixed_precision` where it
finishes within the time limit. Three sections of bench/RESULTS.md:

- real models on realistic inputs (bench/realistic_tasks.py's models, inputs and task measures):
  onnx.checker (full), loads in ONNX Runtime and OpenVINO, the task measure in ONNX Runtime
  against the float model, the share of Conv/Gemm/MatMul weight elements stored in 16 bits,
  size, wall time, and what our own check said;
- the built-in ResNet-50: file size, top-1 agreement with fp32 on 20 photos, conversion time and
  peak RSS, and latency in ONNX Runtime and OpenVINO on this CPU;
- the ONNX backend conformance corpus (fixtures/onnx-tests/data): every model with a float
  tensor converted by each tool, counted by what became of it.

    bench/.venv/bin/python bench/precision.py [--exe PATH] [--sections real,resnet,corpus]
        [--models a,b] [--calib 40] [--eval 24] [--timeout 600] [--write]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, measure, ort_session, weighted_ops, write_section  # noqa: E402
from realistic import MODELS, cpu, run_tool, task_data, task_measures, tool_row  # noqa: E402
from realistic_tasks import cosine, specs  # noqa: E402

WORK = ROOT / "bench" / "work-precision"
TITLES = {
    "real": "## Mixed precision (fp16) of real models on realistic inputs",
    "resnet": "## Mixed precision (fp16) of ResNet-50",
    "corpus": "## Mixed precision (fp16) on the ONNX backend conformance corpus",
}

OCC_FP16 = """
import sys, onnx
from onnxconverter_common import float16
m = onnx.load(sys.argv[1])
onnx.save(float16.convert_float_to_float16(m, keep_io_types=True), sys.argv[2])
"""

# auto_convert_mixed_precision runs ONNX Runtime on one sample after each step and keeps what
# stays within rtol/atol of the float model; 1e-2 / 1e-3 as its documentation's example.
OCC_AUTO = """
import sys, numpy as np, onnx
from onnxconverter_common import auto_mixed_precision
m = onnx.load(sys.argv[1])
f = sys.argv[3]
if f.endswith(".npy"):
    inits = {t.name for t in m.graph.initializer}
    feed = {[i.name for i in m.graph.input if i.name not in inits][0]: np.load(f)}
else:
    feed = dict(np.load(f))
out = auto_mixed_precision.auto_convert_mixed_precision(m, feed, rtol=1e-2, atol=1e-3, keep_io_types=True)
onnx.save(out, sys.argv[2])
"""


def low_share(path):
    """Share of the Conv/ConvTranspose/Gemm/MatMul constant weight elements stored in fp16 or
    bf16 (read directly, or through a Cast), over the graph and its bodies."""
    import onnx

    low = total = 0
    for n, const, producer in weighted_ops(onnx.load(str(path))):
        name = n.input[1]
        p = producer(name)
        if p is not None and p.op_type in ("Cast", "DequantizeLinear"):
            name = p.input[0]
        t = const(name)
        if t is None:
            continue
        size = int(np.prod(t.dims))
        total += size
        if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            low += size
    return low / total if total else 0.0


PROBE = """
import json, sys
path, out = sys.argv[1], {}
try:
    import onnx
    onnx.checker.check_model(path, full_check=True)
    out["checker"] = "ok"
except Exception as e:
    out["checker"] = "fails: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:60]
try:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out["ort"] = "yes"
except Exception as e:
    out["ort"] = "no: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:90]
try:
    import openvino as ov
    ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1})
    out["openvino"] = "yes"
except Exception as e:
    out["openvino"] = "no: " + (str(e).strip().splitlines() or [type(e).__name__])[-1][:60]
print(json.dumps(out))
"""


def probe(path):
    """onnx.checker (full), ONNX Runtime and OpenVINO loading `path`, in a process of its own
    (a malformed file may crash a runtime)."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=600)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        crash = f"crashed (exit {p.returncode})"
        return {"checker": crash, "ort": "no: " + crash, "openvino": "no: " + crash}


def our_check(report):
    try:
        r = json.loads(Path(report).read_text())
    except (OSError, ValueError):
        return None
    check = r.get("check") or {}
    p = r.get("precision") or {}
    rep = check.get("report") or {}
    return dict(status=str(check.get("status", "?")), samples=rep.get("samples"), tries=p.get("fallback_tries"),
                f32=len(p.get("f32_ops") or []), low=p.get("low_ops"), rules=rules_of(p))


def rules_of(p):
    counts = {}
    for _, _, why in p.get("f32_ops") or []:
        counts[why["rule"]] = counts.get(why["rule"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


# ---------------------------------------------------------------------------------- real models


def tools(exe, calib, count):
    ours = [exe, "optimize", "-q", "--calib", str(calib), "--calib-samples", str(count)]
    py = sys.executable
    first = lambda: str(sorted(calib.iterdir())[0])  # noqa: E731
    return [
        ("onnxsmith fp16", True, "ort", lambda s, d, r: ours + ["--precision", "fp16", "--report", str(r), str(s),
                                                                "-o", str(d)]),
        # ONNX Runtime's CPU kernels compute nothing in bf16: bf16 is OpenVINO's here.
        ("onnxsmith bf16 --target openvino", True, "openvino",
         lambda s, d, r: ours + ["--precision", "bf16", "--target", "openvino", "--report", str(r), str(s),
                                 "-o", str(d)]),
        ("onnxconverter-common fp16", False, "ort", lambda s, d, r: [py, "-c", OCC_FP16, str(s), str(d)]),
        ("onnxconverter-common auto mixed", False, "ort",
         lambda s, d, r: [py, "-c", OCC_AUTO, str(s), str(d), first()]),
    ]


class OpenVinoSession:
    """An OpenVINO CPU model behind ONNX Runtime's `run(names, feed)`, at OpenVINO's default
    inference precision (bf16 on CPUs that have it)."""

    def __init__(self, path):
        import openvino as ov

        self.model = ov.Core().compile_model(str(path), "CPU")

    def run(self, names, feed):
        got = self.model(feed)
        ports = self.model.outputs if names is None else [self.model.output(n) for n in names]
        return [got[p] for p in ports]


def evaluate(name, calib_count, eval_count, exe, timeout, log):
    task = specs()[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    work = WORK / name
    src, calib, eval_in, ref, calib_count, eval_count = task_data(task, work, calib_count, eval_count, rng)
    rows = []
    for label, ours, runtime, cmd in tools(exe, calib, len(list(calib.iterdir()))):
        out, report = work / f"{len(rows)}.onnx", work / f"{len(rows)}.json"
        check = (lambda: our_check(report)) if ours else None
        row = tool_row(label, cmd(src, out, report), out, timeout, check, lambda s: log(f"  {name} {s}"))
        rows.append(row)
        if "note" in row:
            continue
        probed = probe(out)
        row.update(checker=probed["checker"], openvino=probed["openvino"], share=low_share(out),
                   size=out.stat().st_size)
        engine = {"ort": "ONNX Runtime", "openvino": "OpenVINO"}[runtime]
        if probed[runtime] != "yes":
            row["note"] = f"{engine} cannot load it: " + probed[runtime][4:]
            continue
        try:
            session = ort_session(out) if runtime == "ort" else OpenVinoSession(out)
            got = task.outputs(session, eval_in)
        except Exception as e:  # noqa: BLE001 - the reason is reported
            row["note"] = f"{engine} cannot run it: " + str(e).strip().splitlines()[0][:90]
            continue
        row.update(task_measures(task, ref, got))
    shutil.rmtree(work, ignore_errors=True)
    return dict(name=name, what=task.what, size=src.stat().st_size, rows=rows, calib=calib_count,
                eval=eval_count, judged=len(ref), unit=task.unit)


def usable(row):
    return "met" in row and row["met"] and row.get("checker") == "ok"


def real_section(results, total):
    lines = [
        TITLES["real"], "",
        "The models, inputs and task measures of bench/realistic.py (seeded inputs made here, judged in ONNX "
        "Runtime against the float model on other inputs of the same kind). Every tool converts the float "
        "model; onnxsmith gets the calibration files (`--calib`: ranges measured, every fifth sample held back "
        "for its check); onnxconverter-common 1.16.0's `convert_float_to_float16(keep_io_types=True)` gets the "
        "model alone, its `auto_convert_mixed_precision` one calibration sample (rtol 1e-2, atol 1e-3, "
        "keep_io_types) and the time limit. 16-bit weights = share of the Conv/Gemm/MatMul weight elements "
        "stored in fp16/bf16. Usable = loads in ONNX Runtime, passes onnx.checker (full) and meets the task "
        "target. Checks = how many checks onnxsmith's search ran; f32 ops = ops it kept in f32 (by rule, by "
        "range, by the search). ONNX Runtime's CPU kernels compute nothing in bf16, so bf16 is written for "
        "OpenVINO (`--target openvino`) and its task measure is taken in OpenVINO CPU at its default inference "
        "precision (bf16 on this CPU), against the float model in ONNX Runtime; usable then means it loads "
        "in OpenVINO.", "",
        f"CPU: {cpu()}. Whole run: {total / 60:.1f} min.", "",
    ]
    for r in results:
        unit = f", judged over {r['judged']} {r['unit']}" if r.get("unit") else ""
        lines += [f"### {r['name']} ({r['size'] / 1e6:.1f} MB; {r['what']}; {r['calib']} calibration, "
                  f"{r['eval']} evaluation samples{unit})", "",
                  "| tool | usable | task measure | target met | 16-bit weights | cosine mean | worst | checker | "
                  "OpenVINO loads | size (MB) | wall (s) | our check | f32 ops (why) |",
                  "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---|---|"]
        for row in r["rows"]:
            c = row.get("check")
            said = "—" if c is None else f"{c['status']}" + (f", {c['tries']} checks" if c.get("tries") else "")
            f32 = "—" if c is None else f"{c['f32']} ({c['rules'] or 'none'})"
            size = f"{row['size'] / 1e6:.2f}" if "size" in row else "—"
            share = f"{row['share'] * 100:.0f}%" if "share" in row else "—"
            if "met" not in row:
                lines.append(f"| {row['label']} | no | {row['note']} | no | {share} | — | — | "
                             f"{row.get('checker', '—')} | {row.get('openvino', '—')} | {size} | {row['wall']:.1f} | "
                             f"{said} | {f32} |")
                continue
            lines.append(f"| {row['label']} | {'yes' if usable(row) else 'no'} | {row['quality']} | "
                         f"{'yes' if row['met'] else 'no'} | {share} | {row['cos']:.4f} | {row['worst']:.4f} | "
                         f"{row['checker']} | {row['openvino']} | {size} | {row['wall']:.1f} | {said} | {f32} |")
        lines.append("")
    lines += ["### Summary", ""]
    for label in [row["label"] for row in results[0]["rows"]] if results else []:
        rows = [(r["name"], next(x for x in r["rows"] if x["label"] == label)) for r in results]
        ok = [n for n, x in rows if usable(x)]
        half = [n for n, x in rows if usable(x) and x.get("share", 0) >= 0.5]
        wall = sum(x["wall"] for _, x in rows)
        lines.append(f"- {label}: usable on {len(ok)} of {len(rows)} ({', '.join(ok) or 'none'}); of them with at "
                     f"least half the weights 16-bit: {len(half)}; wall {wall:.0f} s in all.")
    return "\n".join(lines + [""])


# ------------------------------------------------------------------------------------ ResNet-50


def imagenet(img):
    """Shorter side 256, centre crop 224, ImageNet mean/std, NCHW."""
    from PIL import Image

    h, w = img.shape[:2]
    s = 256 / min(h, w)
    im = Image.fromarray(img).resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
    a = np.asarray(im, np.float32) / 255.0
    y, x = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
    a = (a[y:y + 224, x:x + 224] - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return a.transpose(2, 0, 1)[None].astype(np.float32)


def twenty_photos():
    """20 inputs: each photo of bench/realistic_data.py as it is and mirrored, then crops."""
    import realistic_data as rd

    people, scenes = rd.photos()
    imgs = people + scenes
    out = [imagenet(i) for i in imgs] + [imagenet(i[:, ::-1].copy()) for i in imgs]
    return out[:20]


def latency(run, x, rounds=20, warm=3):
    for _ in range(warm):
        run(x)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        run(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def resnet_section(exe):
    import onnxruntime as ort  # noqa: F401 - fails early when missing
    import openvino as ov

    work = WORK / "resnet50"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src, ours, theirs = work / "resnet50.onnx", work / "ours.onnx", work / "occ.onnx"
    subprocess.run([exe, "zoo", "resnet50", "-o", str(src)], check=True, capture_output=True)
    fp32 = work / "fp32.onnx"
    subprocess.run([exe, "optimize", str(src), "-o", str(fp32), "-q", "--no-check"], check=True, capture_output=True)
    t_ours, rss_ours, _ = measure([exe, "optimize", str(src), "-o", str(ours), "-q", "--no-check",
                                   "--precision", "fp16"], 3)
    t_checked, rss_checked, _ = measure([exe, "optimize", str(src), "-o", str(ours), "-q", "--precision", "fp16"], 1)
    t_occ, rss_occ, _ = measure([sys.executable, "-c", OCC_FP16, str(src), str(theirs)], 3)
    xs = twenty_photos()
    runs = {}
    for label, path in [("fp32", fp32), ("onnxsmith fp16", ours), ("onnxconverter-common fp16", theirs)]:
        s = ort_session(path)
        runs[label] = [s.run(None, {"input": x})[0] for x in xs]
    top1 = lambda label: sum(int(a.argmax() == b.argmax()) for a, b in zip(runs["fp32"], runs[label]))  # noqa: E731
    cos = lambda label: min(cosine(a, b) for a, b in zip(runs["fp32"], runs[label]))  # noqa: E731
    x = xs[0]
    lat = {}
    for label, path in [("fp32", fp32), ("onnxsmith fp16", ours), ("onnxconverter-common fp16", theirs)]:
        s = ort_session(path)
        lat[("ort", label)] = latency(lambda x, s=s: s.run(None, {"input": x}), x)
        for hint in ("f32", "default"):
            cfg = {"INFERENCE_NUM_THREADS": 2} | ({"INFERENCE_PRECISION_HINT": "f32"} if hint == "f32" else {})
            c = ov.Core().compile_model(str(path), "CPU", cfg)
            lat[(f"ov {hint}", label)] = latency(lambda x, c=c: c([x]), x)
    size = {p: p.stat().st_size for p in (src, fp32, ours, theirs)}
    lines = [
        TITLES["resnet"], "",
        f"The built-in ResNet-50 (`onnxsmith zoo resnet50`, {size[src] / 1e6:.1f} MB; its weights are made "
        "in code, not trained, so agreement is what is measured, not accuracy). Inputs: 20 photos (those of "
        "bench/realistic_data.py, as they are and mirrored) at 224x224, ImageNet preprocessing. Times are "
        "the best of 3 whole processes (load, convert, write), peak RSS from /usr/bin/time.", "",
        f"CPU: {cpu()}.", "",
        "| | file (MB) | top-1 agreement with fp32 | worst cosine | conversion (s) | peak RSS (MB) | RSS / file |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| fp32 (simplified) | {size[fp32] / 1e6:.2f} | — | — | — | — | — |",
        f"| onnxsmith --precision fp16 --no-check | {size[ours] / 1e6:.2f} | {top1('onnxsmith fp16')}/20 | "
        f"{cos('onnxsmith fp16'):.6f} | {t_ours:.2f} | {rss_ours / 1e6:.0f} | {rss_ours / size[src]:.2f}x |",
        f"| onnxsmith --precision fp16 (checked in tract) | {size[ours] / 1e6:.2f} | same file | | {t_checked:.2f} | "
        f"{rss_checked / 1e6:.0f} | {rss_checked / size[src]:.2f}x |",
        f"| onnxconverter-common fp16 | {size[theirs] / 1e6:.2f} | {top1('onnxconverter-common fp16')}/20 | "
        f"{cos('onnxconverter-common fp16'):.6f} | {t_occ:.2f} | {rss_occ / 1e6:.0f} | {rss_occ / size[src]:.2f}x |",
        "",
        f"Conversion {t_occ / t_ours:.1f}x faster than onnxconverter-common without our check, "
        f"{t_occ / t_checked:.1f}x with it (RSS / file: against the {size[src] / 1e6:.0f} MB input).", "",
        "Latency, batch 1, median of 20 runs after 3, 2 threads (ms):", "",
        "| model | ONNX Runtime CPU | OpenVINO CPU, f32 inference precision | OpenVINO CPU, default precision |",
        "|---|---:|---:|---:|",
    ]
    for label in ("fp32", "onnxsmith fp16", "onnxconverter-common fp16"):
        lines.append(f"| {label} | {lat[('ort', label)]:.1f} | {lat[('ov f32', label)]:.1f} | "
                     f"{lat[('ov default', label)]:.1f} |")
    lines += ["", "ONNX Runtime's CPU kernels run fp16 slower than fp32: most ops have no fp16 kernel, and ONNX "
              "Runtime inserts Casts to float around them at load. fp16 files are for GPUs (TensorRT, CUDA, "
              "OpenVINO GPU) and for halving what is shipped; on CPUs OpenVINO decompresses fp16 weights and "
              "runs at its own inference precision (bf16 by default on CPUs that have it).", ""]
    shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- corpus


def has_float(path):
    import onnx

    m = onnx.load(str(path))
    floats = {onnx.TensorProto.FLOAT}
    typed = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    return any(v.type.tensor_type.elem_type in floats for v in typed) or any(
        t.data_type in floats for t in m.graph.initializer)


def passes_checker(path):
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        return True
    except Exception:  # noqa: BLE001
        return False


def corpus_outcome(path, load_ok, checker_ok):
    """What became of a converted file: 'ok', 'checker' (fails onnx.checker where the original
    passes it), 'as original' (fails it as the original does), 'ort' (does not load)."""
    import onnxruntime as ort

    if not passes_checker(path):
        return "checker" if checker_ok else "as original"
    if load_ok:
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 4
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001
            return "ort"
    return "ok"


def corpus_section(exe, timeout=60):
    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    data = ROOT / "fixtures" / "onnx-tests" / "data"
    files = sorted(data.rglob("*.onnx"))
    if not files:
        sys.exit(f"no corpus in {data}: run fixtures/onnx-tests/fetch.sh")
    counts = {t: {} for t in ("onnxsmith", "onnxconverter-common")}
    failures = {t: [] for t in counts}
    considered = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        for f in files:
            try:
                if not has_float(f):
                    continue
            except Exception:  # noqa: BLE001 - unreadable by onnx: not ours to judge
                continue
            considered += 1
            try:
                so = ort.SessionOptions()
                so.log_severity_level = 4
                ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
                load_ok = True
            except Exception:  # noqa: BLE001
                load_ok = False
            checker_ok = passes_checker(f)
            rel = str(f.relative_to(data))
            out.unlink(missing_ok=True)
            wall, code, err = run_tool([exe, "optimize", "-q", "--no-check", "--precision", "fp16", str(f),
                                        "-o", str(out)], timeout)
            what = "refused" if code != 0 or not out.exists() else corpus_outcome(out, load_ok, checker_ok)
            counts["onnxsmith"][what] = counts["onnxsmith"].get(what, 0) + 1
            if what in ("checker", "ort", "refused"):
                failures["onnxsmith"].append(f"{rel}: {what} {err}")
            out.unlink(missing_ok=True)
            try:
                onnx.save(float16.convert_float_to_float16(onnx.load(str(f)), keep_io_types=True), str(out))
                what = corpus_outcome(out, load_ok, checker_ok)
            except Exception as e:  # noqa: BLE001
                what, err = "refused", str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            counts["onnxconverter-common"][what] = counts["onnxconverter-common"].get(what, 0) + 1
            if what in ("checker", "ort"):
                failures["onnxconverter-common"].append(f"{rel}: {what}")
            counts.setdefault("original loads in ORT", {}).setdefault(load_ok, 0)
            counts["original loads in ORT"][load_ok] += 1
    lines = [
        TITLES["corpus"], "",
        f"Every model of the ONNX backend test corpus (onnx 1.22.0's node/, simple/, pytorch-*/, real/, light/) "
        f"with a float32 input, output, value or initializer: {considered} models, of which "
        f"{counts['original loads in ORT'].get(True, 0)} load in ONNX Runtime as they are. Each converted by "
        "`onnxsmith optimize --precision fp16 --no-check` and by onnxconverter-common's "
        "`convert_float_to_float16(keep_io_types=True)`, then onnx.checker (full) and, for the models whose "
        "original loads, ONNX Runtime (CPU) loading the result. A refusal is an exit with a message (ours "
        "name the op and reason) and counts apart from a broken file.", "",
        "| tool | converted, checker ok and loads | fails onnx.checker | fails it as the original does | "
        "does not load in ONNX Runtime | refused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tool in ("onnxsmith", "onnxconverter-common"):
        c = counts[tool]
        lines.append(f"| {tool} | {c.get('ok', 0)} | {c.get('checker', 0)} | {c.get('as original', 0)} | "
                     f"{c.get('ort', 0)} | {c.get('refused', 0)} |")
    lines.append("")
    for tool in ("onnxsmith",):
        if failures[tool]:
            lines += [f"{tool}: " + "; ".join(failures[tool][:40]), ""]
    bad = failures["onnxconverter-common"]
    if bad:
        lines += [f"onnxconverter-common's broken files ({len(bad)}), first 15: " + "; ".join(bad[:15]), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", help="the onnxsmith binary (default: the release build)")
    ap.add_argument("--sections", default="real,resnet,corpus")
    ap.add_argument("--models", default=",".join(n for n in specs()))
    ap.add_argument("--calib", type=int, default=40)
    ap.add_argument("--eval", type=int, default=24)
    ap.add_argument("--timeout", type=int, default=600, help="seconds a tool may take on one model")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    exe = args.exe or binary()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    sections = args.sections.split(",")
    if "real" in sections:
        t = time.perf_counter()
        names = [n for n in args.models.split(",") if n == "all-MiniLM-L6-v2" or (MODELS / f"{n}.onnx").exists()]
        results = []
        for n in names:
            results.append(evaluate(n, args.calib, args.eval, exe, args.timeout, log))
            log(real_section(results[-1:], 0))
        text = real_section(results, time.perf_counter() - t)
        print(text)
        if args.write:
            write_section(TITLES["real"], text)
    if "resnet" in sections:
        text = resnet_section(exe)
        print(text)
        if args.write:
            write_section(TITLES["resnet"], text)
    if "corpus" in sections:
        text = corpus_section(exe)
        print(text)
        if args.write:
            write_section(TITLES["corpus"], text)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
