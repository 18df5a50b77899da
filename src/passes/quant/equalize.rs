//! `equalize-conv-pairs`: cross-layer equalization (Nagel et al., 2019). Two convolutions in a
//! row, through an activation that commutes with positive scaling, trade a factor per channel
//! so that the channel's weights span the same range in both.
//!
//! ```text
//!   x ─▶ Conv(W1, b1) ─▶ [Relu | LeakyRelu | Clip(0, ∞)] ─▶ Conv(W2, b2) ─▶ y
//!                     ⇒
//!   x ─▶ Conv(W1 / s, b1 / s) ─▶ [same] ─▶ Conv(W2 · s, b2) ─▶ y
//!        s_i = √(r1_i / r2_i), r1_i = max |W1[i, …]|, r2_i = max |W2[·, i, …]|
//! ```
//!
//! Output channel i of the first and input channel i of the second then both span √(r1_i ·
//! r2_i): per-channel int8 weights of the first lose nothing, and the second's weights (per
//! output channel, over all input channels) stop being dominated by one wide input channel —
//! what ruins depthwise-heavy networks. f(x / s) = f(x) / s for s > 0 holds for the
//! activations above, so the float model computes the same values (up to rounding once in
//! f32). The second Conv may be grouped or depthwise: its input channel i is read by the
//! kernels of i's group. A Clip with a finite upper bound (Relu6) does not commute with a
//! scale per channel and stops the rewrite.
//!
//! Preconditions: both are Conv with f32 initializer weights (the first's bias, if any, an
//! f32 initializer of one value per channel); the first's output, and the activation's, are
//! read only by the next node and are no graph outputs; the second reads the chain as its
//! data input. Refuses otherwise (under `--explain`). New initializers replace the weights
//! (another node may share them); dead-code drops the old. Runs before calibration, on the
//! simplified model (BatchNormalization already folded), only when quantizing; pairs are
//! taken in node order, each reading the weights the pairs before it left; equalizing one
//! pair of a chain unevens the next, so the caller sweeps until every factor is within 1% of
//! 1 (or a few sweeps are spent).

use anyhow::{Context, Result};

use crate::ir::{Graph, NodeId, Patch, Tensor, ValueId};
use crate::passes::channels::{conv_input_ranges, conv_output_ranges, scale_conv_inputs};
use crate::passes::channels::{ConvAt, ConvKind};
use crate::passes::{scalar, Look, Refusal, Rewrite};

pub struct EqualizeConvPairs;

/// Factors this close to 1 leave a pair as it is: equalizing a pair unevens its neighbours
/// in a chain, so sweeps repeat until every pair is even to within this.
pub const EVEN: f64 = 0.01;

pub struct ConvPair {
    first: ConvAt,
    second: NodeId,
    /// Input channel i of the second is scaled by s_i, output channel i of the first by 1/s_i.
    factors: Vec<f64>,
}

/// Whether activation `n` commutes with a positive scale: f(x / s) = f(x) / s.
fn commutes_with_scale(g: &Graph, n: NodeId) -> Result<(), Refusal> {
    let node = g.node(n);
    match node.op() {
        "Relu" | "LeakyRelu" if node.in_standard_domain() => Ok(()),
        "Clip" if node.in_standard_domain() => {
            // Bounds are attributes before opset 11 and inputs after; only [0, ∞) commutes.
            let lo = node
                .attr_f("min")
                .or_else(|| scalar(g, node.input(1)))
                .unwrap_or(f32::MIN);
            let hi = node
                .attr_f("max")
                .or_else(|| scalar(g, node.input(2)))
                .unwrap_or(f32::MAX);
            let bounded_input = node.input(1).is_some_and(|v| scalar(g, Some(v)).is_none())
                || node.input(2).is_some_and(|v| scalar(g, Some(v)).is_none());
            if lo == 0.0 && (hi == f32::MAX || hi == f32::INFINITY) && !bounded_input {
                Ok(())
            } else {
                Err(
                    "the Clip between them is bounded, which no scale per channel commutes with"
                        .into(),
                )
            }
        }
        _ => Err(Refusal::NotMine),
    }
}

impl Rewrite for EqualizeConvPairs {
    type Match = ConvPair;
    const ID: &'static str = "equalize-conv-pairs";
    const ABOUT: &'static str =
        "even out per-channel weight ranges of consecutive Convs through a Relu (cross-layer equalization, when quantizing)";
    const IN_BODIES: bool = false;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Conv")
    }

    fn find(&self, g: &Graph, second: NodeId, _: &Look) -> Result<ConvPair, Refusal> {
        let node = g.node(second);
        let mut v: ValueId = node.input(0).ok_or(Refusal::NotMine)?;
        let producer = g.producer(v).ok_or(Refusal::NotMine)?;
        if !g.node(producer).is("Conv") {
            commutes_with_scale(g, producer)?;
            if g.only_reader(v) != Some(second) || g.is_output(v) {
                return Err("the activation's output has other readers".into());
            }
            v = g.node(producer).input(0).ok_or(Refusal::NotMine)?;
            let conv = g.producer(v).ok_or(Refusal::NotMine)?;
            if !g.node(conv).is("Conv") {
                return Err(Refusal::NotMine);
            }
        }
        let first = ConvAt::producing(g, v)?;
        if !matches!(first.kind, ConvKind::Conv) || g.is_output(v) {
            return Err("the first Conv's output is a graph output".into());
        }
        if node.input(1).and_then(|w| g.value(w).constant()).is_none() {
            return Err("the second Conv's weight is not an initializer".into());
        }
        let w1 = g.value(first.weight).constant().expect("ConvAt checked it");
        let w2 = crate::passes::channels::f32_weight(g, second)?.1;
        let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
        let r1 = conv_output_ranges(w1).ok_or("the first Conv's weight has no channels")?;
        let r2 = conv_input_ranges(w2, group)
            .filter(|r| r.len() == r1.len())
            .ok_or("the second Conv's input channels are not the first's output channels")?;
        let factors: Vec<f64> = r1
            .iter()
            .zip(&r2)
            .map(|(&a, &b)| {
                let s = (a / b).sqrt();
                // A channel of zeros on either side has nothing to even out.
                if s.is_finite() && s > 0.0 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        if factors.iter().all(|&s| (s - 1.0).abs() < EVEN) {
            return Err("the ranges are already even".into());
        }
        Ok(ConvPair {
            first,
            second,
            factors,
        })
    }

    fn apply(&self, patch: &mut Patch, m: ConvPair) -> Result<()> {
        let g = patch.graph();
        let c = &m.first;
        let inverse: Vec<f64> = m.factors.iter().map(|s| 1.0 / s).collect();
        let w1 = g.value(c.weight).constant();
        let new_w1 = w1
            .and_then(|w| c.kind.scale_weight(w, &inverse))
            .context("the first weight cannot be scaled")?;
        let second = g.node(m.second);
        let group = second.attr_i("group").unwrap_or(1).max(1) as usize;
        let w2v = second.input(1).context("the second Conv has no weight")?;
        let w2_name = g.value(w2v).name().to_string();
        let new_w2 = g
            .value(w2v)
            .constant()
            .and_then(|w| scale_conv_inputs(w, group, &m.factors))
            .context("the second weight cannot be scaled")?;
        let w1 = patch.add_initializer(&equalized(&c.weight_name, ""), new_w1)?;
        let b1 = match &c.bias {
            Some(b) => {
                let scaled: Vec<f32> = b
                    .iter()
                    .zip(&inverse)
                    .map(|(&b, &s)| (b as f64 * s) as f32)
                    .collect();
                let t = Tensor::from_f32(vec![scaled.len() as i64], &scaled);
                Some(patch.add_initializer(&equalized(&c.weight_name, "_bias"), t)?)
            }
            None => None,
        };
        let w2 = patch.add_initializer(&equalized(&w2_name, ""), new_w2)?;
        patch.set_inputs(c.conv, &[Some(c.x), Some(w1), b1]);
        patch.set_input(m.second, 1, Some(w2));
        Ok(())
    }
}

/// The name of equalized weight `name` (with `suffix`): rounds of equalization rescale the same
/// weights, and a suffix per round would lengthen their names each time (a ResNet-50's
/// weights ended in four of them).
fn equalized(name: &str, suffix: &str) -> String {
    let stem = name.find("_equalized").map_or(name, |i| &name[..i]);
    format!("{stem}_equalized{suffix}")
}
