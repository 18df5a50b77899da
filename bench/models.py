#!/usr/bin/env python3
"""Deterministic benchmark models, written the way exporters write them (nothing fused).

    python bench/models.py OUTDIR

writes bert2.onnx (a 2-layer BERT-base encoder as torch.onnx.export emits it without fusion)
and mobilenetv2.onnx (depthwise 3x3, Clip 0..6 with min/max inputs, unfused BatchNormalization).
The built-in ResNet-50 comes from `onnxsmith zoo resnet50`. Weights come from a seeded generator,
so every run writes the same bytes."""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class G:
    """A tiny graph builder that names things the way PyTorch's exporter does."""

    def __init__(self, seed):
        self.nodes, self.inits, self.rng, self.n = [], [], np.random.default_rng(seed), 0

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, arr):
        # Exporters emit a fresh Constant node per use, so equal constants appear many times.
        self.n += 1
        out = f"/Constant_{self.n}_output_0"
        self.nodes.append(helper.make_node("Constant", [], [out], name=f"/Constant_{self.n}",
                                           value=numpy_helper.from_array(np.asarray(arr))))
        return out

    def op(self, op, inputs, scope, n_out=1, **attrs):
        self.n += 1
        name = f"{scope}/{op}_{self.n}"
        outs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def normal(self, shape, std):
        return (self.rng.standard_normal(shape) * std).astype(np.float32)


def bert2(path, layers=2, hidden=768, heads=12, ffn=3072, vocab=30522, max_pos=512):
    g = G(7)
    f32 = np.float32
    ids, mask = "input_ids", "attention_mask"
    word = g.init("embeddings.word_embeddings.weight", g.normal((vocab, hidden), 0.02))
    pos = g.init("embeddings.position_embeddings.weight", g.normal((max_pos, hidden), 0.02))
    typ = g.init("embeddings.token_type_embeddings.weight", g.normal((2, hidden), 0.02))
    pos_ids = g.init("embeddings.position_ids", np.arange(max_pos, dtype=np.int64)[None, :])
    type_ids = g.init("embeddings.token_type_ids", np.zeros((1, max_pos), dtype=np.int64))

    def seq_len(x, scope):
        shape = g.op("Shape", [x], scope)
        return g.op("Unsqueeze", [g.op("Gather", [shape, g.const(np.array(1, np.int64))], scope, axis=0),
                                  g.const(np.array([0], np.int64))], scope)

    def layer_norm(x, prefix, scope):
        w = g.init(f"{prefix}.weight", (1 + g.normal((hidden,), 0.05)).astype(f32))
        b = g.init(f"{prefix}.bias", g.normal((hidden,), 0.02))
        mean = g.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
        d = g.op("Sub", [x, mean], scope)
        var = g.op("ReduceMean", [g.op("Pow", [d, g.const(np.array(2.0, f32))], scope)], scope,
                   axes=[-1], keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(np.array(1e-12, f32))], scope)], scope)
        return g.op("Add", [g.op("Mul", [g.op("Div", [d, std], scope), w], scope), b], scope)

    def linear(x, prefix, din, dout, scope):
        w = g.init(f"{prefix}.weight_t", g.normal((din, dout), 0.02))
        b = g.init(f"{prefix}.bias", g.normal((dout,), 0.02))
        return g.op("Add", [b, g.op("MatMul", [x, w], scope)], scope)

    def dropout(x, scope):
        return g.op("Dropout", [x, g.const(np.array(0.1, f32)), g.const(np.array(False))], scope)

    sc = "/embeddings"
    s = seq_len(ids, sc)
    zero = g.const(np.array([0], np.int64))
    one = g.const(np.array([1], np.int64))
    p_ids = g.op("Slice", [pos_ids, zero, s, one, one], sc)
    t_ids = g.op("Slice", [type_ids, zero, s, one, one], sc)
    e = g.op("Add", [g.op("Gather", [word, ids], sc), g.op("Gather", [typ, t_ids], sc)], sc)
    e = g.op("Add", [e, g.op("Gather", [pos, p_ids], sc)], sc)
    h = dropout(layer_norm(e, "embeddings.LayerNorm", sc), sc)

    sc = "/extended_mask"
    m = g.op("Unsqueeze", [g.op("Unsqueeze", [mask, g.const(np.array([1], np.int64))], sc),
                           g.const(np.array([2], np.int64))], sc)
    m = g.op("Cast", [m], sc, to=TensorProto.FLOAT)
    m = g.op("Mul", [g.op("Sub", [g.const(np.array(1.0, f32)), m], sc),
                     g.const(np.array(-10000.0, f32))], sc)

    dh = hidden // heads
    for li in range(layers):
        sc = f"/encoder/layer.{li}"
        pre = f"encoder.layer.{li}"
        h = g.op("Identity", [h], sc)

        def heads_view(x, perm):
            shape = g.op("Shape", [x], sc)
            b = g.op("Unsqueeze", [g.op("Gather", [shape, g.const(np.array(0, np.int64))], sc, axis=0),
                                   g.const(np.array([0], np.int64))], sc)
            t = g.op("Unsqueeze", [g.op("Gather", [shape, g.const(np.array(1, np.int64))], sc, axis=0),
                                   g.const(np.array([0], np.int64))], sc)
            target = g.op("Concat", [b, t, g.const(np.array([heads], np.int64)),
                                     g.const(np.array([dh], np.int64))], sc, axis=0)
            return g.op("Transpose", [g.op("Reshape", [x, target], sc)], sc, perm=perm)

        q = heads_view(linear(h, f"{pre}.attention.self.query", hidden, hidden, sc), [0, 2, 1, 3])
        k = heads_view(linear(h, f"{pre}.attention.self.key", hidden, hidden, sc), [0, 2, 3, 1])
        v = heads_view(linear(h, f"{pre}.attention.self.value", hidden, hidden, sc), [0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k], sc), g.const(np.array(np.sqrt(dh), f32))], sc)
        probs = dropout(g.op("Softmax", [g.op("Add", [scores, m], sc)], sc, axis=-1), sc)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], sc)], sc, perm=[0, 2, 1, 3])
        shape = g.op("Shape", [ctx], sc)
        b = g.op("Unsqueeze", [g.op("Gather", [shape, g.const(np.array(0, np.int64))], sc, axis=0),
                               g.const(np.array([0], np.int64))], sc)
        t = g.op("Unsqueeze", [g.op("Gather", [shape, g.const(np.array(1, np.int64))], sc, axis=0),
                               g.const(np.array([0], np.int64))], sc)
        target = g.op("Concat", [b, t, g.const(np.array([hidden], np.int64))], sc, axis=0)
        ctx = g.op("Reshape", [ctx, target], sc)
        a = dropout(linear(ctx, f"{pre}.attention.output.dense", hidden, hidden, sc), sc)
        h = layer_norm(g.op("Add", [a, h], sc), f"{pre}.attention.output.LayerNorm", sc)
        x = linear(h, f"{pre}.intermediate.dense", hidden, ffn, sc)
        erf = g.op("Erf", [g.op("Div", [x, g.const(np.array(1.4142135381698608, f32))], sc)], sc)
        x = g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const(np.array(1.0, f32))], sc)], sc),
                         g.const(np.array(0.5, f32))], sc)
        x = dropout(linear(x, f"{pre}.output.dense", ffn, hidden, sc), sc)
        h = layer_norm(g.op("Add", [x, h], sc), f"{pre}.output.LayerNorm", sc)
    g.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"], name="/output/Identity"))
    graph = helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        g.inits)
    save(graph, path, 17)


def mobilenetv2(path):
    g = G(11)
    f32 = np.float32

    def conv_bn_clip(x, cin, cout, k, stride, groups, prefix, clip=True):
        w = g.init(f"{prefix}.0.weight", g.normal((cout, cin // groups, k, k), np.sqrt(2.0 / (cin // groups * k * k))))
        y = g.op("Conv", [x, w], f"/{prefix}", dilations=[1, 1], group=groups, kernel_shape=[k, k],
                 pads=[k // 2] * 4, strides=[stride, stride])
        bn = [g.init(f"{prefix}.1.{n}", v) for n, v in [
            ("weight", g.rng.uniform(0.5, 1.5, cout).astype(f32)), ("bias", g.normal((cout,), 0.1)),
            ("running_mean", g.normal((cout,), 0.1)), ("running_var", g.rng.uniform(0.5, 1.5, cout).astype(f32))]]
        y = g.op("BatchNormalization", [y] + bn, f"/{prefix}", epsilon=1e-5, momentum=0.9)
        if clip:
            y = g.op("Clip", [y, g.const(np.array(0.0, f32)), g.const(np.array(6.0, f32))], f"/{prefix}")
        return y

    x = "input"
    h = conv_bn_clip(x, 3, 32, 3, 2, 1, "features.0")
    cin, idx = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}.conv"
            hid = cin * t
            y = h
            if t != 1:
                y = conv_bn_clip(y, cin, hid, 1, 1, 1, f"{p}.0")
            y = conv_bn_clip(y, hid, hid, 3, stride, hid, f"{p}.1")
            y = conv_bn_clip(y, hid, c, 1, 1, 1, f"{p}.2", clip=False)
            if stride == 1 and cin == c:
                y = g.op("Add", [h, y], f"/features.{idx}")
            h, cin, idx = y, c, idx + 1
    h = conv_bn_clip(h, cin, 1280, 1, 1, 1, "features.18")
    h = g.op("GlobalAveragePool", [h], "/pool")
    h = g.op("Flatten", [h], "/flatten", axis=1)
    w = g.init("classifier.1.weight", g.normal((1000, 1280), np.sqrt(1.0 / 1280)))
    b = g.init("classifier.1.bias", g.normal((1000,), 0.01))
    g.nodes.append(helper.make_node("Gemm", [h, w, b], ["logits"], name="/classifier/Gemm", transB=1))
    graph = helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], g.inits)
    save(graph, path, 13)


def save(graph, path, opset):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="pytorch", producer_version="2.3.1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    bert2(out / "bert2.onnx")
    mobilenetv2(out / "mobilenetv2.onnx")
    print(f"wrote {out / 'bert2.onnx'} and {out / 'mobilenetv2.onnx'}")
