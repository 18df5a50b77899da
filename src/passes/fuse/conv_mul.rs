//! `fuse-conv-mul`: a per-channel constant multiplying a Conv's (or ConvTranspose's) output
//! scales its weights, along the output-channel axis of each (see `ConvKind`).
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ Mul(c, k) ─▶ y        ⇒        x ─▶ Conv(W · k, b · k) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []   (scaled per output channel)
//! ```
//!
//! Preconditions and refusals as for `fuse-conv-add`. W is never edited in place (it may be
//! shared); the scaled copy is a new initializer. Runs after `fuse-conv-bn` (each would do,
//! but one fold per Conv keeps the weights rounded once). Runs inside subgraphs too.

use anyhow::{Context, Result};

use super::{after_conv, fold_into_conv, reads_conv, AfterConv};
use crate::ir::{Graph, NodeId, Patch, Tensor};
use crate::passes::{Look, Refusal, Rewrite};

pub struct FuseConvMul;

impl Rewrite for FuseConvMul {
    type Match = AfterConv;
    const ID: &'static str = "fuse-conv-mul";
    const ABOUT: &'static str = "fold a per-channel constant Mul after a Conv into its weights";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        reads_conv(g, n, "Mul")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<AfterConv, Refusal> {
        after_conv(g, n)
    }

    fn apply(&self, patch: &mut Patch, m: AfterConv) -> Result<()> {
        let c = &m.conv;
        let factor: Vec<f64> = m.k.iter().map(|&k| k as f64).collect();
        let scaled = patch
            .graph()
            .value(c.weight)
            .constant()
            .and_then(|w| c.kind.scale_weight(w, &factor))
            .context("the matched weight cannot be scaled")?;
        let w = patch.add_initializer(&format!("{}_scaled", c.weight_name), scaled)?;
        let b = match &c.bias {
            Some(b) => {
                let scaled: Vec<f32> = b.iter().zip(&m.k).map(|(b, k)| b * k).collect();
                Some(patch.add_initializer(
                    &format!("{}_scaled_bias", c.weight_name),
                    Tensor::from_f32(vec![c.channels as i64], &scaled),
                )?)
            }
            None => None,
        };
        fold_into_conv(patch, &m, w, b)
    }
}
