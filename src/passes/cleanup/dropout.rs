//! `eliminate-dropout`: in inference, Dropout forwards its input.
//!
//! ```text
//!   x ─▶ Dropout(ratio, training_mode=false) ─▶ y ─▶ Relu     ⇒     x ─▶ Relu
//! ```
//!
//! Preconditions: the mask output (slot 1) is not read and not a graph output; `training_mode`
//! (opset 12+, slot 2) is absent or a constant false; before opset 7, `is_test` is not 0.
//! Refuses otherwise, and when removing it would rename the graph's interface (see
//! `eliminate-identity`). Runs inside subgraphs too.

use anyhow::Result;

use super::{remove_forwarding, Verdict};
use crate::ir::{Graph, Model, NodeId};
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::Facts;

pub struct EliminateDropout;

fn judge(g: &Graph, n: NodeId, opset: i64) -> Verdict {
    let node = g.node(n);
    if !node.is("Dropout") {
        return Verdict::NotMine;
    }
    if let Some(mask) = node.output(1) {
        if !g.value(mask).uses().is_empty() || g.is_output(mask) {
            return Verdict::Keep("its mask output is read");
        }
    }
    if let Some(mode) = node.input(2) {
        let constant_false = g
            .value(mode)
            .constant()
            .and_then(|t| t.raw_bytes())
            .is_some_and(|b| b.iter().all(|&x| x == 0));
        if !constant_false {
            return Verdict::Keep("training_mode is not a constant false");
        }
    }
    if opset < 7 && node.attr_i("is_test") == Some(0) {
        return Verdict::Keep("is_test is 0 (training)");
    }
    // The unread mask goes with the node.
    node.input(0).map_or(Verdict::NotMine, Verdict::Forwards)
}

impl Pass for EliminateDropout {
    fn id(&self) -> &'static str {
        "eliminate-dropout"
    }

    fn about(&self) -> &'static str {
        "remove inference-mode Dropout nodes whose mask is unread"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let opset = model.opset("").unwrap_or(1);
        remove_forwarding(model, self.id(), cx, &Facts::default(), &|g, n, _| {
            judge(g, n, opset)
        })
    }
}
