//! `quantize-residual-adds`: an Add joining two quantized values (a residual connection: a
//! block's quantized output and its quantized input) reads both through their
//! DequantizeLinear, the pattern OpenVINO and ONNX Runtime run as an int8 add.
//!
//! ```text
//!   a ─▶ Q ─▶ DQ ─▶ Conv ─▶ y ─┐                a ─▶ Q ─▶ DQ ─▶ Conv ─▶ y ─▶ Q ─▶ DQ ─┐
//!   r ─▶ Q ─▶ DQ ─▶ ...        ├─▶ Add ─▶ s  ⇒  r ─▶ Q ─▶ DQ ─────────────────────────┴─▶ Add ─▶ s ─▶ Q ─▶ DQ
//!   r ─────────────────────────┘                (around ops: the Add's output quantized too)
//! ```
//!
//! A branch counts as quantized when it is read through a DQ already, or has a Q/DQ pair. For
//! OpenVINO (`--target openvino`, NNCF's form) a branch that is the result of a quantized op
//! and has a calibrated range is quantized here, when the other branch is quantized or such a
//! result too. Around ops (`--target ort`) the Add is a quantized op like the others: its
//! output is quantized (absorbing a Relu after it under uint8), unless an op kept float reads
//! it. Not for TensorRT (inputs only). Refuses an Add the user excluded. Runs after
//! `quantize-qdq`, whose pairs it finds in the graph; in calibrated bodies too.

use anyhow::Result;

use super::pairs::{dequantized, kept_float, pair_of, quantize_activation, quantize_output};
use super::qdq::{for_each_calibrated, quantizable, Calibration, Placement};
use crate::ir::{Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{Changed, Pass, PassContext};

pub struct QuantizeResidualAdds;

impl Pass for QuantizeResidualAdds {
    fn id(&self) -> &'static str {
        "quantize-residual-adds"
    }

    fn about(&self) -> &'static str {
        "read both branches of an Add of quantized values through Q/DQ; around ops, quantize its output (when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(cal) = cx.get::<Calibration>().cloned() else {
            return Ok(Changed::No);
        };
        if cal.placement == Placement::Inputs {
            return Ok(Changed::No);
        }
        let done = for_each_calibrated(&mut model.graph, &cal, &mut |g, cal| join(g, cal, cx))?;
        Ok(Changed::from_count(done))
    }
}

/// Quantizes the residual Adds of graph `g`.
fn join(g: &mut Graph, cal: &Calibration, cx: &mut PassContext) -> Result<usize> {
    let joins = joins(g, cal, cx);
    let kept_float = kept_float(g);
    let mut patch = Patch::new(g);
    for n in joins {
        for slot in [0, 1] {
            // Read afresh: quantizing an earlier Add's output may have rewired this one.
            let g = patch.graph();
            let Some(v) = g.node(n).input(slot).filter(|&v| !dequantized(g, v)) else {
                continue;
            };
            let dq = match pair_of(g, v) {
                Some((dq, _)) => dq,
                None => quantize_activation(&mut patch, v, cal)?.0,
            };
            patch.set_input(n, slot, Some(dq));
        }
        // ONNX Runtime runs DQ, DQ → Add → Q as one int8 add. Before a Relu that symmetric
        // int8 cannot absorb too: an int8 add and the Relu between a DQ and a Q cost less
        // than a float add reading two DQs (ResNet-50 in ONNX Runtime: 1.87x against 1.64x).
        if cal.placement == Placement::AroundOps {
            quantize_output(&mut patch, n, cal, &kept_float)?;
        }
    }
    patch.commit()
}

/// The Adds both of whose inputs are quantized or, for OpenVINO, quantizable here, in node
/// order; those the user excluded are refused.
fn joins(g: &Graph, cal: &Calibration, cx: &mut PassContext) -> Vec<NodeId> {
    // The results of ops that compute in int8: they read their activation and weight via DQ.
    let result = |v: ValueId| {
        g.producer(v).is_some_and(|p| {
            let node = g.node(p);
            quantizable(g, p)
                && [0, 1]
                    .iter()
                    .all(|&s| node.input(s).is_some_and(|x| dequantized(g, x)))
        })
    };
    let joinable = |v: ValueId| {
        dequantized(g, v)
            || pair_of(g, v).is_some()
            || (cal.placement == Placement::Joins
                && result(v)
                && cal.ranges.contains_key(g.value(v).name()))
    };
    let mut joins: Vec<NodeId> = g
        .node_ids()
        .filter(|&n| {
            let node = g.node(n);
            node.is("Add")
                && node.input(0).is_some_and(joinable)
                && node.input(1).is_some_and(joinable)
        })
        .collect();
    joins.sort();
    joins.retain(|&n| {
        let node = g.node(n);
        let excluded = cx.excluded(node.name(), "Add");
        if excluded {
            let name = node.name().to_string();
            cx.refuse(
                "quantize-residual-adds",
                &name,
                "Add",
                "excluded by the user",
            );
        }
        !excluded
    });
    joins
}
