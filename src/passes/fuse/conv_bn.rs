//! `fuse-conv-bn`: an inference BatchNormalization after a Conv or ConvTranspose folds into
//! its weights.
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ BatchNormalization(γ, β, μ, σ², ε) ─▶ y
//!                                  ⇒
//!   x ─▶ Conv(W', b') ─▶ y      s = γ / √(σ² + ε)   W' = W · s (per output channel)
//!                               b' = (b − μ) · s + β
//! ```
//!
//! A Conv's output channels are W's first axis; a ConvTranspose's are its second, repeated per
//! group (see `ConvKind`).
//!
//! Preconditions: W, b, γ, β, μ, σ² are f32 initializers (not graph inputs, which a caller
//! could override); `c` is read only by the BatchNormalization and is not a graph output; the
//! BatchNormalization is in inference mode (no `training_mode=1`, no extra outputs read).
//! Refuses otherwise, naming the reason under `--explain`. W is never edited in place (another
//! Conv may share it): W' and b' are new initializers, and dead-code removes the old ones.
//! Arithmetic is in f64, rounded once to f32. Runs after the cleanup passes, which expose the
//! Conv as the BatchNormalization's producer. Runs inside subgraphs too.

use anyhow::{Context, Result};

use crate::ir::{Graph, NodeId, Patch, Tensor, ValueId};
use crate::passes::channels::{BnAffine, ConvAt, ConvKind};
use crate::passes::{Look, Refusal, Rewrite};

pub struct FuseConvBn;

pub struct ConvBn {
    conv: ConvAt,
    bn: NodeId,
    /// Output of the BatchNormalization, which the fused Conv produces.
    y: ValueId,
    affine: BnAffine,
}

impl Rewrite for FuseConvBn {
    type Match = ConvBn;
    const ID: &'static str = "fuse-conv-bn";
    const ABOUT: &'static str =
        "fold an inference BatchNormalization into the Conv or ConvTranspose before it";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("BatchNormalization")
    }

    fn find(&self, g: &Graph, bn: NodeId, _: &Look) -> Result<ConvBn, Refusal> {
        const NOT_AFTER: &str = "its input is not produced by a Conv";
        let node = g.node(bn);
        let c = node.input(0).ok_or("it has no input")?;
        let produced = g.producer(c).and_then(|p| ConvKind::of(g, p));
        produced.ok_or(NOT_AFTER)?;
        let conv = ConvAt::producing(g, c)?;
        let affine = BnAffine::of(g, bn, conv.channels)?;
        Ok(ConvBn {
            conv,
            bn,
            y: node.output(0).ok_or("it has no output")?,
            affine,
        })
    }

    fn apply(&self, patch: &mut Patch, m: ConvBn) -> Result<()> {
        let c = &m.conv;
        let weight = patch.graph().value(c.weight).constant();
        let new_w = weight
            .and_then(|w| c.kind.scale_weight(w, &m.affine.scale))
            .context("the matched weight cannot be scaled")?;
        let new_b: Vec<f32> = (0..c.channels)
            .map(|o| m.affine.bias(o, c.bias_of(o) as f64))
            .collect();
        let w = patch.add_initializer(&format!("{}_fused_bn", c.weight_name), new_w)?;
        let b = patch.add_initializer(
            &format!("{}_fused_bn_bias", c.weight_name),
            Tensor::from_f32(vec![c.channels as i64], &new_b),
        )?;
        patch.set_inputs(c.conv, &[Some(c.x), Some(w), Some(b)]);
        patch.replace_value(m.y, c.out)?;
        patch.remove_node(m.bn)
    }
}
