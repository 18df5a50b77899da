//! `quantize-average-pools`: around ops, an average pool that reads a quantized value through
//! its DequantizeLinear is quantized itself.
//!
//! ```text
//!   ... ─▶ DQ ─▶ GlobalAveragePool ─▶ p ─▶ Gemm   ⇒   ... ─▶ DQ ─▶ GlobalAveragePool ─▶ p ─▶ Q ─▶ DQ ─▶ Gemm
//! ```
//!
//! ONNX Runtime runs DQ → pool → Q as one int8 pool (its QLinear pooling), where a float pool
//! would dequantize its whole input first. An average lies between the values it averages (or
//! 0, for padding), so the pool's output range is calibrated like any activation. Only for
//! `--target ort`; refuses a pool the user excluded, or whose output an op kept float reads
//! (it must read float values). Runs after `quantize-residual-adds`, whose outputs a pool may
//! read. Main graph only.

use anyhow::Result;

use super::pairs::{dequantized, kept_float, quantize_output};
use super::qdq::{for_each_calibrated, Calibration, Placement};
use crate::ir::{Graph, Model, NodeId, Patch};
use crate::passes::{Changed, Pass, PassContext};

/// The average pools, whose outputs lie between their inputs' values (or 0, for padding).
pub const POOLS: &[&str] = &["GlobalAveragePool", "AveragePool"];

pub struct QuantizeAveragePools;

impl Pass for QuantizeAveragePools {
    fn id(&self) -> &'static str {
        "quantize-average-pools"
    }

    fn about(&self) -> &'static str {
        "around ops, quantize the output of an average pool that reads a DQ (when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(cal) = cx.get::<Calibration>().cloned() else {
            return Ok(Changed::No);
        };
        if cal.placement != Placement::AroundOps {
            return Ok(Changed::No);
        }
        let done = for_each_calibrated(&mut model.graph, &cal, &mut |g, cal| pools(g, cal, cx))?;
        Ok(Changed::from_count(done))
    }
}

/// Quantizes the average pools of graph `g` that read a DQ.
fn pools(g: &mut Graph, cal: &Calibration, cx: &mut PassContext) -> Result<usize> {
    let order = g.topo_order().unwrap_or_default();
    let pools: Vec<NodeId> = order
        .into_iter()
        .filter(|&n| {
            let node = g.node(n);
            POOLS.iter().any(|op| node.is(op)) && node.input(0).is_some_and(|x| dequantized(g, x))
        })
        .collect();
    let mut quantized = Vec::new();
    for n in pools {
        let node = g.node(n);
        if cx.excluded(node.name(), node.op()) {
            let (name, op) = (node.name().to_string(), node.op().to_string());
            cx.refuse("quantize-average-pools", &name, &op, "excluded by the user");
        } else {
            quantized.push(n);
        }
    }
    let kept_float = kept_float(g);
    let mut patch = Patch::new(g);
    for n in quantized {
        quantize_output(&mut patch, n, cal, &kept_float)?;
    }
    patch.commit()
}
