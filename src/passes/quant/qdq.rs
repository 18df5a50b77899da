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
//! ops read it (but see one pair per reader, below): int8 symmetric with zero point 0 (what
//! TensorRT requires) or uint8 with a zero point, from its calibrated range. The Q/DQ
//! pair sits on the op's inputs only, so nothing is added on graph outputs, no pair is
//! orphaned and no Q follows a DQ; a Relu or Clip between two convolutions is covered by the
//! range of its own output. Around ops (`--target ort`), a residual Add of two quantized
//! values reads both through their DQ and is quantized itself like the ops it joins, so is
//! an average pool reading a DQ, and values joined by moves (MaxPool,
//! Reshape, Transpose, ..., a nearest or linear Resize) share one range, which calibration
//! gives them, so runtimes move int8 values through them; under int8, each reader of a
//! quantized value reads a pair of its own, the form in which ONNX Runtime runs int8 on x86
//! (`one_pair_per_reader`). For OpenVINO (`--target openvino`)
//! the pairs sit on inputs only, but a residual Add joining a quantized op's result reads both
//! branches through Q/DQ, quantizing the branch that was not.
//!
//! An op the check's fallback names in [`Calibration::weights_only`] keeps int8 weights and
//! reads and writes float activations (its bias stays float, shifted by bias correction).
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

use crate::ir::{Attr, DType, Graph, Model, NodeId, Patch, Tensor, Type, ValueId};
use crate::passes::channels::{conv_input_of_run, f32_weight, ConvKind};
use crate::passes::{Changed, Pass, PassContext};

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
}

/// An activation's mean per index of axis 1 (a Conv input's channels) and of its last axis
/// (a matrix product's inner dim), when calibration saw the same channels in every sample.
#[derive(Clone, Debug, Default)]
pub struct Means {
    pub axis1: Option<Vec<f32>>,
    pub last: Option<Vec<f32>>,
}

/// The value whose range quantizes the output of op `n` under `placement`, and the Relu that
/// range absorbs, if any; `None` when the output stays float (a graph output, a capture, no
/// range, or read by an op kept float, which must read float values).
fn output_site(
    g: &Graph,
    n: NodeId,
    cal: &Calibration,
    kept_float: &[NodeId],
) -> Option<(ValueId, Option<NodeId>)> {
    if cal.placement != Placement::AroundOps {
        return None;
    }
    let y = g.node(n).output(0)?;
    // The Q's clamp stands in for the Relu only where the range starts at 0 (a range shared
    // through a move could reach below it).
    let absorbed = g.only_reader(y).filter(|&r| {
        g.node(r).is("Relu")
            && cal.activations == Activations::Uint8
            && g.node(r)
                .output(0)
                .and_then(|o| cal.ranges.get(g.value(o).name()))
                .is_some_and(|&(lo, _)| lo >= 0.0)
    });
    let site = match absorbed {
        Some(r) => g.node(r).output(0)?,
        None => y,
    };
    let plain_reads = g
        .value(site)
        .uses()
        .iter()
        .all(|u| matches!(u.slot, crate::ir::Slot::Input(_)));
    let quantizable = !g.is_output(site)
        && plain_reads
        && !reaches_float(g, site, kept_float)
        && cal.ranges.contains_key(g.value(site).name());
    quantizable.then_some((site, absorbed))
}

/// Whether an op of `kept_float` reads `v`, directly or through ops that would carry a Q/DQ
/// on `v` into it unchanged in kind (a Relu, a Clip, a move, an average pool): an op kept
/// float must read float values, not the rounding of its producer's int8 output.
fn reaches_float(g: &Graph, v: ValueId, kept_float: &[NodeId]) -> bool {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        for u in g.value(v).uses() {
            if kept_float.contains(&u.node) {
                return true;
            }
            let node = g.node(u.node);
            let passes_on = ["Relu", "Clip"].iter().chain(POOLS).any(|op| node.is(op))
                || super::moves_values(g, u.node);
            if passes_on {
                stack.extend(node.outputs().iter().flatten().copied());
            }
        }
    }
    false
}

/// Around ops, the output of `n` is quantized and every reader reads its DQ (an absorbed Relu
/// removed, its clamp being the Q's zero point). The site may be quantized already, as the
/// input of an op processed before.
fn quantize_output(
    patch: &mut Patch,
    n: NodeId,
    cal: &Calibration,
    kept_float: &[NodeId],
    quantized: &mut HashMap<ValueId, (ValueId, f32)>,
) -> Result<()> {
    let Some((site, absorbed)) = output_site(patch.graph(), n, cal, kept_float) else {
        return Ok(());
    };
    let done = match quantized.get(&site) {
        Some(&done) => done,
        None => quantize_activation(patch, site, cal)?,
    };
    let g = patch.graph();
    let y = g.node(n).output(0).unwrap();
    let readers: Vec<crate::ir::Use> = g.value(site).uses().to_vec();
    let q = g.producer(g.node(g.producer(done.0).unwrap()).input(0).unwrap());
    for u in readers {
        if Some(u.node) == q {
            continue;
        }
        if let crate::ir::Slot::Input(slot) = u.slot {
            patch.set_input(u.node, slot, Some(done.0));
        }
    }
    if let Some(relu) = absorbed {
        let q = q.expect("the output's Q");
        patch.set_input(q, 0, Some(y));
        patch.remove_node(relu)?;
    }
    quantized.insert(site, done);
    Ok(())
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

/// The ops quantization considers, in the main graph.
pub fn quantizable(g: &Graph, n: NodeId) -> bool {
    ["Conv", "ConvTranspose", "Gemm", "MatMul"]
        .iter()
        .any(|op| g.node(n).is(op))
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
    let axis = match node.op() {
        "Conv" | "ConvTranspose" => {
            ConvKind::of(g, n)
                .and_then(|k| k.out_channels(w.dims()))
                .ok_or("its weight does not split into its groups")?;
            if node.is("Conv") {
                0
            } else {
                1
            }
        }
        "Gemm" if rank == 2 => {
            if node.attr_i("transB") == Some(1) {
                0
            } else {
                1
            }
        }
        "MatMul" if rank == 2 => 1,
        _ => return Err("its weight is not 2-D"),
    };
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

/// Each quantizable op of the main graph and whether it will be quantized (`Ok`) or why not.
pub fn plan(model: &Model, cx: &PassContext) -> Vec<(NodeId, Result<(), &'static str>)> {
    let Some(cal) = cx.get::<Calibration>() else {
        return Vec::new();
    };
    matched(model, cal, cx)
        .into_iter()
        .map(|(n, l)| (n, l.map(|_| ())))
        .collect()
}

/// Each quantizable op of the main graph, in topological order, with its match or why it
/// stays float.
fn matched(
    model: &Model,
    cal: &Calibration,
    cx: &PassContext,
) -> Vec<(NodeId, Result<Layer, &'static str>)> {
    let g = &model.graph;
    let opset = model.opset("").unwrap_or(1);
    // A graph is acyclic once verified; an order that cannot be had matches nothing.
    let order = g.topo_order().unwrap_or_default();
    order
        .into_iter()
        .filter(|&n| quantizable(g, n))
        .map(|n| {
            let l = if opset < 10 {
                Err("the model's opset (below 10) has no QuantizeLinear")
            } else {
                layer(g, n, cal, cx, opset)
            };
            (n, l)
        })
        .collect()
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

fn i8_tensor(dims: Vec<i64>, v: &[i8]) -> Tensor {
    Tensor::from_raw(
        DType::I8,
        dims,
        v.iter().map(|&x| x as u8).collect::<Vec<u8>>().into(),
    )
}

/// A zero point of zeros, of `dtype` and shape `dims`. Those of weights, biases and symmetric
/// activations are all zeros: one initializer of each type and shape serves every Q and DQ
/// that needs it (a ResNet-50 would otherwise carry 0.15 MB of them).
fn zeros(patch: &mut Patch, dtype: DType, dims: &[i64]) -> Result<ValueId> {
    let name = match dims {
        [] => format!("zero_point_{dtype}"),
        [n, ..] => format!("zero_point_{dtype}_{n}"),
    };
    let bytes = dtype.byte_size(dims).unwrap_or(0) as usize;
    let g = patch.graph();
    let shared = g.find(&name).filter(|&v| {
        g.value(v).constant().is_some_and(|t| {
            t.dtype() == dtype
                && t.dims() == dims
                && t.raw_bytes().is_some_and(|r| r.iter().all(|&b| b == 0))
        })
    });
    match shared {
        Some(z) => Ok(z),
        None => patch.add_initializer(
            &name,
            Tensor::from_raw(dtype, dims.to_vec(), vec![0u8; bytes].into()),
        ),
    }
}

/// Adds `DequantizeLinear(q, scale, 0)` of constants; returns its output.
fn dequantize(
    patch: &mut Patch,
    base: &str,
    q: Tensor,
    scale: Tensor,
    axis: Option<usize>,
) -> Result<ValueId> {
    let dims: Vec<crate::ir::Dim> = q.dims().iter().map(|&d| crate::ir::Dim::Known(d)).collect();
    let z = zeros(patch, q.dtype(), scale.dims())?;
    let q = patch.add_initializer(&format!("{base}_quantized"), q)?;
    let s = patch.add_initializer(&format!("{base}_scale"), scale)?;
    let attrs = axis
        .map(|a| vec![Attr::int("axis", a as i64)])
        .unwrap_or_default();
    let n = patch.add_node_named(
        "DequantizeLinear",
        &format!("{base}_dequantize"),
        &[Some(q), Some(s), Some(z)],
        attrs,
        &[(
            format!("{base}_dequantized"),
            Some(Type::tensor(DType::F32, dims)),
        )],
    )?;
    Ok(patch.graph().node(n).output(0).unwrap())
}

/// Scale and zero point of an activation over `range`.
fn activation_params(range: (f32, f32), kind: Activations) -> (f32, Tensor) {
    let (lo, hi) = (range.0.min(0.0), range.1.max(0.0));
    match kind {
        Activations::Int8 => {
            let amax = lo.abs().max(hi);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            (scale, i8_tensor(vec![], &[0]))
        }
        Activations::Uint8 => {
            let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
            (scale, Tensor::from_raw(DType::U8, vec![], vec![zp].into()))
        }
    }
}

/// Adds Q → DQ of activation `x`; returns the DQ's output and the scale. The readers of `x`
/// are left to the caller.
fn quantize_activation(patch: &mut Patch, x: ValueId, cal: &Calibration) -> Result<(ValueId, f32)> {
    add_pair(patch, x, cal, false)
}

/// [`quantize_activation`], with a zero point initializer of its own when `own` (else a zero
/// point of zeros is shared).
fn add_pair(patch: &mut Patch, x: ValueId, cal: &Calibration, own: bool) -> Result<(ValueId, f32)> {
    let name = patch.graph().value(x).name().to_string();
    let (scale, zp) = activation_params(cal.ranges[&name], cal.activations);
    let ty = patch.graph().ty(x).cloned();
    let q_ty = ty
        .as_ref()
        .and_then(|t| Some(Type::tensor(zp.dtype(), t.shape()?.to_vec())));
    let s = patch.add_initializer(&format!("{name}_scale"), Tensor::from_f32(vec![], &[scale]))?;
    let z = match zp.raw_bytes() {
        Some(r) if !own && r.iter().all(|&b| b == 0) => zeros(patch, zp.dtype(), zp.dims())?,
        _ => patch.add_initializer(&format!("{name}_zero_point"), zp)?,
    };
    // Named for what they hold: `x_quantized` the int8 values, `x_dequantized` the float ones.
    let q = patch.add_node_named(
        "QuantizeLinear",
        &format!("{name}_quantize"),
        &[Some(x), Some(s), Some(z)],
        vec![],
        &[(format!("{name}_quantized"), q_ty)],
    )?;
    let q = patch.graph().node(q).output(0);
    let dq = patch.add_node_named(
        "DequantizeLinear",
        &format!("{name}_dequantize"),
        &[q, Some(s), Some(z)],
        vec![],
        &[(format!("{name}_dequantized"), ty)],
    )?;
    Ok((patch.graph().node(dq).output(0).unwrap(), scale))
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
        let cal = &cal;
        let g = &model.graph;
        let mut layers = Vec::new();
        let mut refused = Vec::new();
        for (n, l) in matched(model, cal, cx) {
            match l {
                Ok(l) => layers.push(l),
                Err(why) => {
                    let node = g.node(n);
                    refused.push((node.name().to_string(), node.op().to_string(), why));
                }
            }
        }
        let kept_float: Vec<NodeId> = g
            .node_ids()
            .filter(|&n| {
                quantizable(g, n) && !layers.iter().any(|l| l.node == n && !l.weights_only)
            })
            .collect();
        for (name, op, why) in refused {
            cx.refuse(self.id(), &name, &op, why);
        }
        let mut patch = Patch::new(&mut model.graph);
        let mut quantized: HashMap<ValueId, (ValueId, f32)> = HashMap::new();
        for l in &layers {
            let act = match quantized.get(&l.x) {
                _ if l.weights_only => None,
                Some(&done) => Some(done),
                None => {
                    let done = quantize_activation(&mut patch, l.x, cal)?;
                    quantized.insert(l.x, done);
                    Some(done)
                }
            };
            let g = patch.graph();
            let base = g.value(l.weight).name().to_string();
            let w = g.value(l.weight).constant().unwrap().clone();
            let Some((scales, q, error)) = quantize_weight(&w, l.axis) else {
                continue;
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
            let dq_w = dequantize(
                &mut patch,
                &base,
                i8_tensor(w.dims().to_vec(), &q),
                scale_t,
                l.axis,
            )?;
            patch.set_input(l.node, 1, Some(dq_w));
            if let Some((dq_x, _)) = act {
                patch.set_input(l.node, 0, Some(dq_x));
                quantize_output(&mut patch, l.node, cal, &kept_float, &mut quantized)?;
            }
            // The bias, shifted back by the mean error the int8 weights add; a Conv without
            // one gets one to take the shift.
            let g = patch.graph();
            let bias = match (l.bias, &shift) {
                (Some(b), _) => Some((
                    g.value(b).name().to_string(),
                    g.value(b)
                        .constant()
                        .and_then(Tensor::to_f32_vec)
                        .unwrap_or_default(),
                )),
                (None, Some(shift))
                    if g.node(l.node).is("Conv") && g.node(l.node).input(2).is_none() =>
                {
                    Some((format!("{base}_bias"), vec![0.0; shift.len()]))
                }
                _ => None,
            };
            if let Some((bname, mut bv)) = bias {
                if let Some(shift) = shift.as_ref().filter(|s| s.len() == bv.len()) {
                    for (b, d) in bv.iter_mut().zip(shift) {
                        *b -= d;
                    }
                }
                // Per channel with the weight's scales, or one scale for a per-tensor weight;
                // int32 only where the activation has a scale.
                let bscales: Vec<f32> = match (act, l.axis) {
                    (None, _) => Vec::new(),
                    (Some((_, s_x)), Some(_)) => scales.iter().map(|&s| s_x * s).collect(),
                    (Some((_, s_x)), None) => vec![s_x * scales[0]],
                };
                let q: Option<Vec<i32>> = if bscales.is_empty() {
                    None
                } else {
                    bv.iter()
                        .zip(bscales.iter().cycle())
                        .map(|(&v, &s)| {
                            let q = (v / s).round();
                            (s > 0.0 && q.abs() < i32::MAX as f32).then_some(q as i32)
                        })
                        .collect()
                };
                // A bias too large for int32 at that scale stays float.
                if let Some(q) = q {
                    let n = q.len() as i64;
                    let raw: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let qt = Tensor::from_raw(DType::I32, vec![n], raw.into());
                    let k = bscales.len();
                    let dims = if l.axis.is_some() {
                        vec![k as i64]
                    } else {
                        vec![]
                    };
                    let scale = Tensor::from_f32(dims, &bscales);
                    let axis = l.axis.map(|_| 0);
                    let dq_b = dequantize(&mut patch, &bname, qt, scale, axis)?;
                    patch.set_input(l.node, 2, Some(dq_b));
                } else if shift.is_some() {
                    let n = bv.len() as i64;
                    let b = patch.add_initializer(
                        &format!("{bname}_corrected"),
                        Tensor::from_f32(vec![n], &bv),
                    )?;
                    patch.set_input(l.node, 2, Some(b));
                }
            }
        }
        if cal.placement != Placement::Inputs {
            let results: Vec<ValueId> = layers
                .iter()
                .filter(|l| !l.weights_only)
                .filter_map(|l| patch.graph().node(l.node).output(0))
                .collect();
            residual_adds(&mut patch, &mut quantized, &results, &kept_float, cal, cx)?;
        }
        if cal.placement == Placement::AroundOps {
            pools(&mut patch, &mut quantized, &kept_float, cal, cx)?;
        }
        if cal.placement == Placement::AroundOps && cal.activations == Activations::Int8 {
            let mut pairs: Vec<ValueId> = quantized.values().map(|&(dq, _)| dq).collect();
            pairs.sort();
            one_pair_per_reader(&mut patch, &pairs, cal)?;
        }
        Ok(Changed::from_count(patch.commit()?))
    }
}

/// Around ops with int8 activations, every reader of the DQ outputs `pairs` reads a Q → DQ
/// pair of its own, with a zero point initializer of its own. ONNX Runtime runs int8 Q/DQ
/// on x86 by turning each pair into uint8, and only where a Q has one DQ with one reader; it
/// also shares equal float scalars (the scales, not int8 zero points) and then merges Qs
/// whose inputs are the same. A value read by two quantized ops (a block input, read by a
/// Conv and a residual Add) would otherwise leave both in float: on ResNet-50, 20 of its 53
/// Convs.
fn one_pair_per_reader(patch: &mut Patch, pairs: &[ValueId], cal: &Calibration) -> Result<()> {
    for &dq_out in pairs {
        let g = patch.graph();
        let x = g
            .producer(dq_out)
            .and_then(|dq| g.node(dq).input(0))
            .and_then(|q| g.producer(q))
            .and_then(|q| g.node(q).input(0));
        let Some(x) = x else {
            continue;
        };
        let extra: Vec<crate::ir::Use> = g.value(dq_out).uses().iter().skip(1).copied().collect();
        for u in extra {
            if let crate::ir::Slot::Input(slot) = u.slot {
                let (own, _) = add_pair(patch, x, cal, true)?;
                patch.set_input(u.node, slot, Some(own));
            }
        }
    }
    Ok(())
}

/// The average pools, whose outputs lie between their inputs' values (or 0, for padding):
/// around ops they are quantized like the ops they follow.
pub const POOLS: &[&str] = &["GlobalAveragePool", "AveragePool"];

/// Around ops, an average pool that reads a quantized value through its DequantizeLinear is
/// quantized itself: ONNX Runtime runs DQ → pool → Q as one int8 pool (its QLinear pooling),
/// where a float pool would dequantize its whole input first.
fn pools(
    patch: &mut Patch,
    quantized: &mut HashMap<ValueId, (ValueId, f32)>,
    kept_float: &[NodeId],
    cal: &Calibration,
    cx: &PassContext,
) -> Result<()> {
    let g = patch.graph();
    let order = g.topo_order().unwrap_or_default();
    let pools: Vec<NodeId> = order
        .into_iter()
        .filter(|&n| {
            let node = g.node(n);
            POOLS.iter().any(|op| node.is(op))
                && !cx.excluded(node.name(), node.op())
                && node.input(0).is_some_and(|x| dequantized(g, x))
        })
        .collect();
    for n in pools {
        quantize_output(patch, n, cal, kept_float, quantized)?;
    }
    Ok(())
}

/// An Add joining two values that are both quantized (a residual connection: a block's
/// quantized output and its quantized input) reads both through their DequantizeLinear, the
/// pattern OpenVINO and ONNX Runtime run as an int8 add. Under [`Placement::Joins`] a branch
/// that is the result of a quantized op (in `results`) and not quantized yet is quantized
/// here, when the other branch is quantized or such a result too. Around ops, the Add's
/// output is quantized as well.
fn residual_adds(
    patch: &mut Patch,
    quantized: &mut HashMap<ValueId, (ValueId, f32)>,
    results: &[ValueId],
    kept_float: &[NodeId],
    cal: &Calibration,
    cx: &PassContext,
) -> Result<()> {
    let g = patch.graph();
    let mut joins: Vec<NodeId> = g
        .node_ids()
        .filter(|&n| g.node(n).is("Add") && !cx.excluded(g.node(n).name(), "Add"))
        .filter_map(|n| {
            let node = g.node(n);
            // Already read through a DQ, quantized as some op's input, or quantizable here.
            let joinable = |v: ValueId| {
                dequantized(g, v)
                    || quantized.contains_key(&v)
                    || (cal.placement == Placement::Joins
                        && results.contains(&v)
                        && cal.ranges.contains_key(g.value(v).name()))
            };
            let (a, b) = (node.input(0)?, node.input(1)?);
            (joinable(a) && joinable(b)).then_some(n)
        })
        .collect();
    joins.sort();
    for n in joins {
        for slot in [0, 1] {
            // Read afresh: quantizing an earlier Add's output may have rewired this one.
            let g = patch.graph();
            let Some(v) = g.node(n).input(slot) else {
                continue;
            };
            if dequantized(g, v) {
                continue;
            }
            let dq = match quantized.get(&v) {
                Some(&(dq, _)) => dq,
                None => {
                    let done = quantize_activation(patch, v, cal)?;
                    quantized.insert(v, done);
                    done.0
                }
            };
            patch.set_input(n, slot, Some(dq));
        }
        // Around ops, the Add is a quantized op like the others: ONNX Runtime runs
        // DQ, DQ → Add → Q as one int8 add. Before a Relu that symmetric int8 cannot absorb
        // too: an int8 add and the Relu between a DQ and a Q cost less than a float add
        // reading two DQs (ResNet-50 in ONNX Runtime: 1.87x over fp32 against 1.64x).
        if cal.placement == Placement::AroundOps {
            quantize_output(patch, n, cal, kept_float, quantized)?;
        }
    }
    Ok(())
}

/// Whether `v` is the output of a DequantizeLinear.
fn dequantized(g: &Graph, v: ValueId) -> bool {
    g.producer(v)
        .is_some_and(|p| g.node(p).is("DequantizeLinear"))
}
