//! `quantize-pair-per-reader`: around ops with int8 activations, each reader of a quantized
//! value reads a Q/DQ pair of its own, with a zero point initializer of its own.
//!
//! ```text
//!   x ─▶ Q ─▶ DQ ─┬─▶ Conv                x ─┬─▶ Q ─▶ DQ  ─▶ Conv
//!                 └─▶ Add          ⇒        └─▶ Q' ─▶ DQ' ─▶ Add     (Q', DQ': zero point z')
//! ```
//!
//! ONNX Runtime runs int8 Q/DQ on x86 by turning each pair into uint8, and only where a Q has
//! one DQ with one reader; it also shares equal float scalars (the scales, not int8 zero
//! points) and then merges Qs whose inputs are the same. A value read by two quantized ops (a
//! block input, read by a Conv and a residual Add) would otherwise leave both in float: on
//! ResNet-50, 20 of its 53 Convs. Only for `--target ort` with int8 activations (uint8 pairs
//! need no conversion); last in the quantize stage, once every pair exists; in calibrated bodies too.

use anyhow::Result;

use super::pairs::{add_pair, pair_source};
use super::qdq::{for_each_calibrated, Activations, Calibration, Placement};
use crate::ir::{Graph, Model, Patch, Slot, ValueId};
use crate::passes::{Changed, Pass, PassContext};

pub struct PairPerReader;

impl Pass for PairPerReader {
    fn id(&self) -> &'static str {
        "quantize-pair-per-reader"
    }

    fn about(&self) -> &'static str {
        "around ops under int8, give each reader of a quantized value a Q/DQ pair of its own (when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(cal) = cx.get::<Calibration>() else {
            return Ok(Changed::No);
        };
        if cal.placement != Placement::AroundOps || cal.activations != Activations::Int8 {
            return Ok(Changed::No);
        }
        let done = for_each_calibrated(&mut model.graph, cal, &mut |g, cal| apart(g, cal))?;
        Ok(Changed::from_count(done))
    }
}

/// Gives each extra reader of a pair in graph `g` a pair of its own.
fn apart(g: &mut Graph, cal: &Calibration) -> Result<usize> {
    let mut pairs: Vec<ValueId> = g
        .node_ids()
        .filter(|&n| g.node(n).is("DequantizeLinear"))
        .filter_map(|n| g.node(n).output(0))
        .filter(|&v| pair_source(g, v).is_some())
        .collect();
    pairs.sort();
    let mut patch = Patch::new(g);
    for dq_out in pairs {
        let g = patch.graph();
        let Some(x) = pair_source(g, dq_out) else {
            continue;
        };
        let extra: Vec<_> = g.value(dq_out).uses().iter().skip(1).copied().collect();
        for u in extra {
            if let Slot::Input(slot) = u.slot {
                let (own, _) = add_pair(&mut patch, x, cal, true)?;
                patch.set_input(u.node, slot, Some(own));
            }
        }
    }
    patch.commit()
}
