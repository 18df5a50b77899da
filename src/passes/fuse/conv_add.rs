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
//! laid out so broadcasting puts it on the channel axis; operands in either order. Refuses
//! otherwise. Runs after `fuse-conv-bn`, so that a Conv's own bias exists to absorb the Add.
//! Runs inside subgraphs too.

use anyhow::Result;

use super::{after_conv, fold_into_conv, reads_conv, AfterConv};
use crate::ir::{Graph, NodeId, Patch, Tensor};
use crate::passes::{Look, Refusal, Rewrite};

pub struct FuseConvAdd;

impl Rewrite for FuseConvAdd {
    type Match = AfterConv;
    const ID: &'static str = "fuse-conv-add";
    const ABOUT: &'static str = "fold a per-channel constant Add after a Conv into its bias";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        reads_conv(g, n, "Add")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<AfterConv, Refusal> {
        after_conv(g, n)
    }

    fn apply(&self, patch: &mut Patch, m: AfterConv) -> Result<()> {
        let c = &m.conv;
        let bias: Vec<f32> = (0..c.channels).map(|o| c.bias_of(o) + m.k[o]).collect();
        let b = patch.add_initializer(
            &format!("{}_bias", c.weight_name),
            Tensor::from_f32(vec![c.channels as i64], &bias),
        )?;
        fold_into_conv(patch, &m, c.weight, Some(b))
    }
}
