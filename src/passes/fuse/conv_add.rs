//! `fuse-conv-add`: a per-channel constant added after a Conv (or ConvTranspose) becomes its
//! bias.
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ Add(c, k) ─▶ y        ⇒        x ─▶ Conv(W, b + k) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []
//! ```
//!
//! Preconditions: W (and b) are f32 initializers; `c` is read only by the Add and is not a
//! graph output; `k` is an f32 initializer holding one value per output channel (or one value),
//! laid out so broadcasting puts it on the channel axis. Refuses otherwise. Runs inside
//! subgraphs too.

use anyhow::Result;

use super::fuse_after_conv;
use crate::ir::{Model, Tensor};
use crate::passes::{Changed, Pass, PassContext};

pub struct FuseConvAdd;

impl Pass for FuseConvAdd {
    fn id(&self) -> &'static str {
        "fuse-conv-add"
    }

    fn about(&self) -> &'static str {
        "fold a per-channel constant Add after a Conv into its bias"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        fuse_after_conv(model, "Add", self.id(), cx, &|patch, m, k| {
            let bias: Vec<f32> = (0..m.channels)
                .map(|o| m.bias.as_ref().map_or(0.0, |b| b[o]) + k[o])
                .collect();
            let b = patch.add_initializer(
                &format!("{}_bias", m.weight_name),
                Tensor::from_f32(vec![m.channels as i64], &bias),
            )?;
            Ok((m.weight, Some(b)))
        })
    }
}
