//! `eliminate-dropout`: in inference, Dropout forwards its input.
//!
//! ```text
//!   x ─▶ Dropout(ratio, training_mode=false) ─▶ y ─▶ Relu     ⇒     x ─▶ Relu
//! ```
//!
//! Preconditions: the mask output (slot 1) is not read and not a graph output; `training_mode`
//! (opset 12+, slot 2) is absent or a constant false; before opset 7, `is_test` is not 0.
//! Refuses otherwise, and when removing it would rename the graph's interface (see
//! `eliminate-identity`). Runs after `constant-to-initializer`, so a constant training_mode is
//! an initializer. Runs inside subgraphs too.

use anyhow::Result;

use super::{forward, remove_forwarding, Forward};
use crate::ir::{Graph, NodeId, Patch};
use crate::passes::{Look, Refusal, Rewrite};

pub struct EliminateDropout;

impl Rewrite for EliminateDropout {
    type Match = Forward;
    const ID: &'static str = "eliminate-dropout";
    const ABOUT: &'static str = "remove inference-mode Dropout nodes whose mask is unread";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Dropout")
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Forward, Refusal> {
        let node = g.node(n);
        if let Some(mask) = node.output(1) {
            if g.is_read(mask) {
                return Err("its mask output is read".into());
            }
        }
        if let Some(mode) = node.input(2) {
            let constant_false = g
                .value(mode)
                .constant()
                .and_then(|t| t.raw_bytes())
                .is_some_and(|b| b.iter().all(|&x| x == 0));
            if !constant_false {
                return Err("training_mode is not a constant false".into());
            }
        }
        if look.opset < 7 && node.attr_i("is_test") == Some(0) {
            return Err("is_test is 0 (training)".into());
        }
        // The unread mask goes with the node.
        forward(g, n, node.input(0).ok_or(Refusal::NotMine)?)
    }

    fn apply(&self, patch: &mut Patch, f: Forward) -> Result<()> {
        remove_forwarding(patch, f)
    }
}
