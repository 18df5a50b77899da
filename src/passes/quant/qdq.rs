//! `quantize-qdq`: Conv, ConvTranspose, Gemm and MatMul by a constant read their activation
//! and their weights through QuantizeLinear/DequantizeLinear, in the standard QDQ format.
//!
//! ```text
//!   x ─▶ Conv(W, b) ─▶ y
//!                     ⇒
//!   x ─▶ QuantizeLinear(s_x, 0) ─▶ DequantizeLinear(s_x, 0) ─▶ Conv(DQ(W_q, s_w, 0; axis),
//!                                                                   DQ(b_q, s_x·s_w, 0)) ─▶ y
//! ```
//!
//! Weights are int8, symmetric, one scale per output channel on the axis where a weight keeps
//! them (Conv 0, ConvTranspose 1, Gemm 0 under transB and 1 otherwise, MatMul the last axis of
//! a constant 2-D B); per tensor below opset 13, where DequantizeLinear has no axis
//! (`quantize-opset-13`, run before, raises the import when it can). A bias of one value per
//! output channel becomes int32 with scale s_x · s_w (zero point 0; zero points of zeros are
//! one shared initializer per type and shape). An activation is quantized once, however many
//! ops read it: int8 symmetric with zero point 0 (what TensorRT requires) or uint8 with a zero
//! point, from its calibrated range. The pair sits on the op's inputs, so nothing is added on
//! graph outputs, no pair is orphaned and no Q follows a DQ; a Relu or Clip between two
//! convolutions is covered by the range of its own output. Around ops (`--target ort`), the
//! op's output is quantized too, absorbing a Relu after it under uint8, unless an op kept
//! float reads it. The placement rules that follow it in the stage add the rest of each
//! target's form: `quantize-residual-adds`, `quantize-average-pools`,
//! `quantize-pair-per-reader`.
//!
//! An op the check's fallback names in [`Calibration::weights_only`] keeps int8 weights and
//! reads and writes float activations (its bias stays float, shifted by bias correction).
//! For TensorRT (`--target tensorrt`) every bias stays float: its ONNX parser refuses a
//! DequantizeLinear of an int32 bias ("only activation types allowed as input to this layer").
//!
//! Refuses (the op stays float, with the reason in the quantization report): ops the user
//! excluded by name or op type; an activation without a calibrated range or that is not f32;
//! an activation that Concats values whose ranges are more than 16x apart;
//! a weight that is not an f32 initializer of a shape the op's axis needs; models below opset
//! 10, which lack the operators. Main graph only: bodies stay float, and the report says so.
//! Runs once, after the simplify stage (so it quantizes fused Conv+BN weights), and is
//! followed by dead-code, which removes the float weights.

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use super::pairs::{
    dequantize, dequantized, i8_tensor, pair_of, quantize_activation, quantize_output,
};
use crate::ir::{DType, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::channels::{conv_input_of_run, f32_weight, weight_axes, ConvKind};
use crate::passes::{scalar, Changed, Pass, PassContext};

/// The element type of quantized activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activations {
    /// Symmetric, zero point 0.
    Int8,
    /// Asymmetric, with a zero point: ONNX Runtime's fast path on CPUs without VNNI.
    Uint8,
}

/// Where Q/DQ pairs go, by the runtime that will run the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Placement {
    /// On the inputs of the quantized ops only: TensorRT's explicit form.
    Inputs,
    /// On their outputs too, so that each reads DQ and is read by Q: the pattern ONNX
    /// Runtime fuses into its QLinear kernels. With uint8 activations a Relu after the op is
    /// absorbed into the output's range.
    AroundOps,
    /// On the inputs of the quantized ops and of the residual Adds joining their results,
    /// whose branches are quantized where they are not yet: OpenVINO's form (as NNCF places
    /// its fake quantizers), which runs a Conv, its activation and the requantization of its
    /// result as one int8 kernel, so a Q/DQ on its output before the Relu would only add work.
    Joins,
}

/// What the quantization stage is handed: each activation's clipping range, by value name.
#[derive(Clone)]
pub struct Calibration {
    pub ranges: HashMap<String, (f32, f32)>,
    pub activations: Activations,
    pub placement: Placement,
    /// Each activation's mean per channel, by value name, for bias correction; empty when
    /// it is off.
    pub means: HashMap<String, Means>,
    /// Ops (by name) whose weights are int8 but whose activations stay float: the fallback's
    /// first step, since one scale over an activation is what int8 loses most on, and
    /// per-channel weights rarely.
    pub weights_only: Vec<String>,
    /// The subgraph bodies calibrated on the values they really see, each with its own
    /// ranges (a body's values have names of their own, and two branches may share some).
    pub bodies: Vec<BodyCalibration>,
}

/// The calibration of the body held by attribute `attr` of node `node`.
#[derive(Clone)]
pub struct BodyCalibration {
    pub node: String,
    pub attr: String,
    pub cal: Calibration,
}

impl Calibration {
    /// This calibration with `ops` reading float activations (their weights int8), in the
    /// main graph and in every body.
    pub fn with_weights_only(mut self, ops: &[String]) -> Calibration {
        self.weights_only = ops.to_vec();
        for b in &mut self.bodies {
            b.cal = b.cal.clone().with_weights_only(ops);
        }
        self
    }
}

/// Runs `f` on `g` with `cal` and, first, on every body `cal` calibrated, with its own
/// calibration: how each quantize pass reaches the bodies. Returns the edits summed.
pub fn for_each_calibrated(
    g: &mut Graph,
    cal: &Calibration,
    f: &mut dyn FnMut(&mut Graph, &Calibration) -> Result<usize>,
) -> Result<usize> {
    let mut done = 0;
    for b in &cal.bodies {
        let holder = g.node_ids().find(|&n| g.node(n).name() == b.node);
        if let Some(n) = holder {
            done += g.edit_body(n, &b.attr, |body| for_each_calibrated(body, &b.cal, f))?;
        }
    }
    Ok(done + f(g, cal)?)
}

/// An activation's mean per index of axis 1 (a Conv input's channels) and of its last axis
/// (a matrix product's inner dim), when calibration saw the same channels in every sample.
#[derive(Clone, Debug, Default)]
pub struct Means {
    pub axis1: Option<Vec<f32>>,
    pub last: Option<Vec<f32>>,
}

/// How far apart the magnitudes of a Concat's inputs may be for one scale to serve them all:
/// past it, the smallest keeps fewer than 8 of int8's levels (a detector's 0..1 scores
/// concatenated with its pixel boxes lose everything).
const CONCAT_SPREAD: f32 = 16.0;

/// The inputs of the Concat producing `x`, if one does.
pub fn concat_inputs(g: &Graph, x: ValueId) -> Vec<ValueId> {
    g.producer(x)
        .filter(|&p| g.node(p).is("Concat"))
        .map(|p| g.node(p).inputs().iter().flatten().copied().collect())
        .unwrap_or_default()
}

/// Whether `x` is a Concat whose inputs' calibrated magnitudes are more than
/// [`CONCAT_SPREAD`] apart (inputs that are all zeros, or not calibrated, aside).
fn concat_too_wide(g: &Graph, x: ValueId, cal: &Calibration) -> bool {
    let amax: Vec<f32> = concat_inputs(g, x)
        .into_iter()
        .filter_map(|v| {
            let (lo, hi) = match g.value(v).constant() {
                Some(t) => {
                    let v = t.to_f32_vec()?;
                    v.iter()
                        .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)))
                }
                None => *cal.ranges.get(g.value(v).name())?,
            };
            Some(lo.abs().max(hi.abs()))
        })
        .filter(|&a| a > 0.0)
        .collect();
    let (lo, hi) = amax
        .iter()
        .fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    amax.len() >= 2 && hi > CONCAT_SPREAD * lo
}

/// An op to quantize, as matched.
struct Layer {
    node: NodeId,
    x: ValueId,
    /// Its name, which outlives `x` when an absorbed Relu's output is removed.
    x_name: String,
    weight: ValueId,
    /// The axis of the weight holding output channels, when scales are per channel.
    axis: Option<usize>,
    bias: Option<ValueId>,
    /// Its weights int8, its input and output float ([`Calibration::weights_only`]).
    weights_only: bool,
}

/// A matrix product of two activations to quantize (attention's Q·Kᵀ and its weights·V):
/// both inputs read through pairs, no weight to store.
struct Product {
    node: NodeId,
    a: ValueId,
    b: ValueId,
}

/// An op as matched: with a constant weight, or a product of two activations.
enum Matched {
    Layer(Layer),
    Product(Product),
}

/// The ops quantization considers, in the main graph.
pub fn quantizable(g: &Graph, n: NodeId) -> bool {
    ["Conv", "ConvTranspose", "Gemm", "MatMul"]
        .iter()
        .any(|op| g.node(n).is(op))
}

/// Why `n`, a MatMul of two activations, stays float, or its match.
fn product(
    g: &Graph,
    n: NodeId,
    cal: &Calibration,
    cx: &PassContext,
) -> Result<Product, &'static str> {
    let node = g.node(n);
    if cx.excluded(node.name(), node.op()) {
        return Err("excluded by the user");
    }
    if cal.weights_only.iter().any(|w| w == node.name()) {
        return Err("returned to float: the check failed with its activations int8");
    }
    let (a, b) = (
        node.input(0).ok_or("it has no input")?,
        node.input(1).ok_or("it has no second input")?,
    );
    for v in [a, b] {
        if !cal.ranges.contains_key(g.value(v).name()) {
            return Err("an input has no calibrated f32 range");
        }
        if concat_too_wide(g, v, cal) {
            return Err(
                "an input is a Concat of ranges more than 16x apart, which one scale would ruin",
            );
        }
    }
    Ok(Product { node: n, a, b })
}

/// Why `n` (a quantizable op) stays float, or its match.
fn layer(
    g: &Graph,
    n: NodeId,
    cal: &Calibration,
    cx: &PassContext,
    opset: i64,
) -> Result<Layer, &'static str> {
    let node = g.node(n);
    if cx.excluded(node.name(), node.op()) {
        return Err("excluded by the user");
    }
    let x = node.input(0).ok_or("it has no input")?;
    if g.value(x).constant().is_some() {
        return Err("its input is a constant");
    }
    let weights_only = cal.weights_only.iter().any(|w| w == node.name());
    if !weights_only && !cal.ranges.contains_key(g.value(x).name()) {
        return Err("its input has no calibrated f32 range");
    }
    if !weights_only && concat_too_wide(g, x, cal) {
        return Err(
            "its input is a Concat of ranges more than 16x apart, which one scale would ruin",
        );
    }
    let (weight, w) = f32_weight(g, n)?;
    let rank = w.dims().len();
    if matches!(node.op(), "Conv" | "ConvTranspose") {
        ConvKind::of(g, n)
            .and_then(|k| k.out_channels(w.dims()))
            .ok_or("its weight does not split into its groups")?;
    } else if rank != 2 {
        return Err("its weight is not 2-D");
    }
    let (axis, _) = weight_axes(node);
    if rank <= axis {
        return Err("its weight has too few dims");
    }
    // A bias of one value per output channel can be int32; any other stays float.
    let channels = w.dims()[axis] as u64;
    let bias = match node.op() {
        "Conv" | "Gemm" => node.input(2).filter(|&b| {
            g.value(b).constant().is_some_and(|t| {
                t.dims().len() == 1 && t.len() == channels && t.f32_bytes().is_some()
            })
        }),
        _ => None,
    };
    // A ConvTranspose's channels repeat per group along its axis 1, so one scale per index
    // there covers every group's channel of that index: still one scale per column of W.
    Ok(Layer {
        node: n,
        x,
        x_name: g.value(x).name().to_string(),
        weight,
        axis: (opset >= 13).then_some(axis),
        bias,
        weights_only,
    })
}

/// Each quantizable op of the model, in the main graph and in its bodies, by name, and
/// whether it will be quantized (`Ok`) or why not: an op in a body no calibration sample
/// reached stays float, and says so.
pub fn plan(model: &Model, cx: &PassContext) -> Vec<(String, Result<(), &'static str>)> {
    let Some(cal) = cx.get::<Calibration>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    plan_graph(
        &model.graph,
        Some(cal),
        model.opset("").unwrap_or(1),
        cx,
        &mut out,
    );
    out
}

fn plan_graph(
    g: &Graph,
    cal: Option<&Calibration>,
    opset: i64,
    cx: &PassContext,
    out: &mut Vec<(String, Result<(), &'static str>)>,
) {
    match cal {
        Some(cal) => out.extend(
            matched(g, opset, cal, cx)
                .into_iter()
                .map(|(n, m)| (g.node(n).name().to_string(), m.map(|_| ()))),
        ),
        None => out.extend(
            (g.node_ids().filter(|&n| quantizable(g, n)))
                .map(|n| (g.node(n).name().to_string(), Err(UNCALIBRATED))),
        ),
    }
    for n in g.node_ids() {
        let node = g.node(n);
        for a in node.attrs() {
            for body in a.bodies() {
                let inner = cal.and_then(|c| {
                    let found = c
                        .bodies
                        .iter()
                        .find(|b| b.node == node.name() && b.attr == a.name());
                    found.map(|b| &b.cal)
                });
                plan_graph(body, inner, opset, cx, out);
            }
        }
    }
}

/// Why an op in a body stays float when its body was not calibrated.
const UNCALIBRATED: &str =
    "its body was not calibrated: no calibration sample reached it, or tract cannot run its Loop";

/// Each quantizable op of graph `g`, in topological order, with its match or why it stays
/// float.
fn matched(
    g: &Graph,
    opset: i64,
    cal: &Calibration,
    cx: &PassContext,
) -> Vec<(NodeId, Result<Matched, &'static str>)> {
    // A graph is acyclic once verified; an order that cannot be had matches nothing.
    let order = g.topo_order().unwrap_or_default();
    order
        .into_iter()
        .filter(|&n| quantizable(g, n))
        .map(|n| {
            let l = if opset < 10 {
                Err("the model's opset (below 10) has no QuantizeLinear")
            } else if activations_product(g, n) {
                product(g, n, cal, cx).map(Matched::Product)
            } else {
                layer(g, n, cal, cx, opset).map(Matched::Layer)
            };
            (n, l)
        })
        .collect()
}

/// Whether `n` is a MatMul of two activations (neither input a constant).
pub fn activations_product(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.is("MatMul")
        && [0, 1].iter().all(|&s| {
            node.input(s)
                .is_some_and(|v| g.value(v).constant().is_none())
        })
}

/// Per-channel (or, without an axis, per-tensor) symmetric int8 scales of `w`, its values
/// quantized with them, and what each dequantized value is off by (W_q · s − W).
fn quantize_weight(w: &Tensor, axis: Option<usize>) -> Option<(Vec<f32>, Vec<i8>, Vec<f32>)> {
    let values = w.to_f32_vec()?;
    let dims: Vec<usize> = w.dims().iter().map(|&d| d as usize).collect();
    let (channels, inner) = match axis {
        Some(a) => (dims[a], dims[a + 1..].iter().product::<usize>()),
        None => (1, values.len().max(1)),
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, &v) in values.iter().enumerate() {
        let c = channel_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    // A channel of zeros keeps a unit scale: its values quantize to 0 either way.
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q: Vec<i8> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    let error = values
        .iter()
        .zip(&q)
        .enumerate()
        .map(|(i, (&v, &q))| q as f32 * scales[channel_of(i)] - v)
        .collect();
    Some((scales, q, error))
}

/// Bias correction: the mean shift of each output channel of op `n` that its weight's
/// quantization error `error` causes, Σ (W_q − W) · E[x], with E[x] per input channel from
/// calibration. `None` when the op's mean input is not known or the op has no bias to take
/// the shift (a MatMul, a Gemm with transA or scaled terms).
fn weight_error_shift(
    g: &Graph,
    n: NodeId,
    w: &Tensor,
    error: &[f32],
    means: &Means,
) -> Option<Vec<f32>> {
    let node = g.node(n);
    let dims: Vec<usize> = w.dims().iter().map(|&d| d as usize).collect();
    let mut shift = vec![0f64; *dims.first()?];
    match node.op() {
        "Conv" => {
            let mean = means.axis1.as_ref()?;
            let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
            let (in_per_group, kernel) = (dims[1], dims[2..].iter().product::<usize>());
            let out_per_group = dims[0] / group;
            if mean.len() != in_per_group * group || kernel == 0 {
                return None;
            }
            for (r, run) in error.chunks_exact(kernel).enumerate() {
                let o = r / in_per_group;
                let c = conv_input_of_run(r, in_per_group, out_per_group);
                shift[o] += run.iter().map(|&e| e as f64).sum::<f64>() * mean[c] as f64;
            }
        }
        "Gemm" => {
            let unscaled = |a| node.attr_f(a).is_none_or(|v| v == 1.0);
            if node.attr_i("transA").unwrap_or(0) != 0 || !unscaled("alpha") || !unscaled("beta") {
                return None;
            }
            let mean = means.last.as_ref()?;
            let trans_b = node.attr_i("transB").unwrap_or(0) != 0;
            let (k, outs) = if trans_b {
                (dims[1], dims[0])
            } else {
                (dims[0], dims[1])
            };
            if mean.len() != k {
                return None;
            }
            shift = vec![0f64; outs];
            for (i, &e) in error.iter().enumerate() {
                let (row, col) = (i / dims[1], i % dims[1]);
                let (o, j) = if trans_b { (row, col) } else { (col, row) };
                shift[o] += e as f64 * mean[j] as f64;
            }
        }
        _ => return None,
    }
    Some(shift.into_iter().map(|v| v as f32).collect())
}

pub struct InsertQdq;

impl Pass for InsertQdq {
    fn id(&self) -> &'static str {
        "quantize-qdq"
    }

    fn about(&self) -> &'static str {
        "read Conv, ConvTranspose, Gemm and MatMul inputs and weights through int8 Q/DQ (when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(cal) = cx.get::<Calibration>().cloned() else {
            return Ok(Changed::No);
        };
        let opset = model.opset("").unwrap_or(1);
        let done = for_each_calibrated(&mut model.graph, &cal, &mut |g, cal| {
            insert(g, cal, opset, cx)
        })?;
        Ok(Changed::from_count(done))
    }
}

/// Quantizes the ops of graph `g` that `cal` calibrated; refusals go to `--explain`.
fn insert(g: &mut Graph, cal: &Calibration, opset: i64, cx: &mut PassContext) -> Result<usize> {
    let mut found = Vec::new();
    for (n, l) in matched(g, opset, cal, cx) {
        match l {
            Ok(l) => found.push(l),
            Err(why) => {
                let (name, op) = (g.node(n).name().to_string(), g.node(n).op().to_string());
                cx.refuse("quantize-qdq", &name, &op, why);
            }
        }
    }
    // Decided before any pair is made: an op processed later must still read float.
    let computes_int8 = |n: NodeId| {
        found.iter().any(|m| match m {
            Matched::Layer(l) => l.node == n && !l.weights_only,
            Matched::Product(p) => p.node == n,
        })
    };
    let kept_float: Vec<NodeId> = g
        .node_ids()
        .filter(|&n| quantizable(g, n) && !computes_int8(n))
        .collect();
    let mut patch = Patch::new(g);
    for m in &found {
        match m {
            Matched::Layer(l) => quantize_layer(&mut patch, l, cal, &kept_float)?,
            Matched::Product(p) => quantize_product(&mut patch, p, cal, &kept_float)?,
        }
    }
    patch.commit()
}

/// Quantizes product `p`: both its inputs read through pairs, and, around ops, its output.
fn quantize_product(
    patch: &mut Patch,
    p: &Product,
    cal: &Calibration,
    kept_float: &[NodeId],
) -> Result<()> {
    for (slot, v) in [(0, p.a), (1, p.b)] {
        let g = patch.graph();
        let read = g.node(p.node).input(slot).filter(|&x| dequantized(g, x));
        if read.is_some() {
            continue;
        }
        let dq = match pair_of(g, v) {
            Some((dq, _)) => dq,
            None => quantize_activation(patch, v, cal)?.0,
        };
        patch.set_input(p.node, slot, Some(dq));
    }
    quantize_output(patch, p.node, cal, kept_float)
}

/// The pair op `l` reads its activation through: the one its input already reads (made as
/// its producer's output, whose Relu it may have absorbed), the one an earlier reader of the
/// same value made, or a new one. `None` for an op that keeps float activations.
fn activation_pair(
    patch: &mut Patch,
    l: &Layer,
    cal: &Calibration,
) -> Result<Option<(ValueId, f32)>> {
    if l.weights_only {
        return Ok(None);
    }
    let g = patch.graph();
    let read = g.node(l.node).input(0).filter(|&x| dequantized(g, x));
    if let Some(p) = read.and_then(|x| Some((x, scalar(g, g.node(g.producer(x)?).input(1))?))) {
        return Ok(Some(p));
    }
    if let Some(p) = pair_of(g, l.x) {
        return Ok(Some(p));
    }
    quantize_activation(patch, l.x, cal).map(Some)
}

/// Quantizes op `l`: its activation (and, around ops, its output), its weight per channel,
/// its bias.
fn quantize_layer(
    patch: &mut Patch,
    l: &Layer,
    cal: &Calibration,
    kept_float: &[NodeId],
) -> Result<()> {
    let act = activation_pair(patch, l, cal)?;
    let g = patch.graph();
    let base = g.value(l.weight).name().to_string();
    let w = g.value(l.weight).constant().unwrap().clone();
    let Some((scales, q, error)) = quantize_weight(&w, l.axis) else {
        return Ok(());
    };
    let shift = cal
        .means
        .get(&l.x_name)
        .and_then(|m| weight_error_shift(g, l.node, &w, &error, m));
    drop(error);
    let channels = scales.len() as i64;
    let scale_t = match l.axis {
        Some(_) => Tensor::from_f32(vec![channels], &scales),
        None => Tensor::from_f32(vec![], &scales),
    };
    let q = i8_tensor(w.dims().to_vec(), &q);
    let dq_w = dequantize(patch, &base, q, scale_t, l.axis)?;
    patch.set_input(l.node, 1, Some(dq_w));
    if let Some((dq_x, _)) = act {
        patch.set_input(l.node, 0, Some(dq_x));
        quantize_output(patch, l.node, cal, kept_float)?;
    }
    // TensorRT's parser accepts a DequantizeLinear only of an activation type: its biases
    // stay float.
    let s_x = act
        .map(|(_, s)| s)
        .filter(|_| cal.placement != Placement::Inputs);
    quantize_bias(patch, l, &base, s_x, &scales, shift.as_deref())
}

/// The bias of op `l`, shifted back by the mean error its int8 weights add (`shift`; a Conv
/// without a bias gets one to take it), as int32 at scale s_x · s_w where the activation has
/// a scale `s_x`; float otherwise, or where int32 cannot hold it at that scale.
fn quantize_bias(
    patch: &mut Patch,
    l: &Layer,
    base: &str,
    s_x: Option<f32>,
    scales: &[f32],
    shift: Option<&[f32]>,
) -> Result<()> {
    let g = patch.graph();
    let bias = match (l.bias, shift) {
        (Some(b), _) => Some((
            g.value(b).name().to_string(),
            g.value(b)
                .constant()
                .and_then(Tensor::to_f32_vec)
                .unwrap_or_default(),
        )),
        (None, Some(shift)) if g.node(l.node).is("Conv") && g.node(l.node).input(2).is_none() => {
            Some((format!("{base}_bias"), vec![0.0; shift.len()]))
        }
        _ => None,
    };
    let Some((bname, mut bv)) = bias else {
        return Ok(());
    };
    if let Some(shift) = shift.filter(|s| s.len() == bv.len()) {
        for (b, d) in bv.iter_mut().zip(shift) {
            *b -= d;
        }
    }
    // Per channel with the weight's scales, or one scale for a per-tensor weight.
    let bscales: Vec<f32> = match (s_x, l.axis) {
        (None, _) => Vec::new(),
        (Some(s_x), Some(_)) => scales.iter().map(|&s| s_x * s).collect(),
        (Some(s_x), None) => vec![s_x * scales[0]],
    };
    let q: Option<Vec<i32>> = (!bscales.is_empty())
        .then(|| {
            bv.iter()
                .zip(bscales.iter().cycle())
                .map(|(&v, &s)| {
                    let q = (v / s).round();
                    (s > 0.0 && q.abs() < i32::MAX as f32).then_some(q as i32)
                })
                .collect()
        })
        .flatten();
    if let Some(q) = q {
        let raw: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        let qt = Tensor::from_raw(DType::I32, vec![q.len() as i64], raw.into());
        let dims = match l.axis {
            Some(_) => vec![bscales.len() as i64],
            None => vec![],
        };
        let scale = Tensor::from_f32(dims, &bscales);
        let dq_b = dequantize(patch, &bname, qt, scale, l.axis.map(|_| 0))?;
        patch.set_input(l.node, 2, Some(dq_b));
    } else if shift.is_some() {
        let t = Tensor::from_f32(vec![bv.len() as i64], &bv);
        let b = patch.add_initializer(&format!("{bname}_corrected"), t)?;
        patch.set_input(l.node, 2, Some(b));
    }
    Ok(())
}
