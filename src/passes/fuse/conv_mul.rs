//! `fuse-conv-mul`: a per-channel constant multiplying a Conv's (or ConvTranspose's) output
//! scales its weights, along the output-channel axis of each (see `ConvKind`).
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ Mul(c, k) ─▶ y        ⇒        x ─▶ Conv(W · k, b · k) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []   (scaled per output channel)
//! ```
//!
//! Preconditions and refusals as for `fuse-conv-add`. W is never edited in place (it may be
//! shared); the scaled copy is a new initializer. Runs inside subgraphs too.

use anyhow::{Context, Result};

use super::fuse_after_conv;
use crate::ir::{Model, Tensor};
use crate::passes::{Changed, Pass, PassContext};

pub struct FuseConvMul;

impl Pass for FuseConvMul {
    fn id(&self) -> &'static str {
        "fuse-conv-mul"
    }

    fn about(&self) -> &'static str {
        "fold a per-channel constant Mul after a Conv into its weights"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        fuse_after_conv(model, "Mul", self.id(), cx, &|patch, m, k| {
            let factor: Vec<f64> = k.iter().map(|&k| k as f64).collect();
            let scaled = patch
                .graph()
                .value(m.weight)
                .constant()
                .and_then(|w| m.kind.scale_weight(w, &factor))
                .context("the matched weight cannot be scaled")?;
            let wid = patch.add_initializer(&format!("{}_scaled", m.weight_name), scaled)?;
            let bid = match &m.bias {
                Some(b) => {
                    let scaled: Vec<f32> = b.iter().zip(k).map(|(b, k)| b * k).collect();
                    Some(patch.add_initializer(
                        &format!("{}_scaled_bias", m.weight_name),
                        Tensor::from_f32(vec![m.channels as i64], &scaled),
                    )?)
                }
                None => None,
            };
            Ok((wid, bid))
        })
    }
}
