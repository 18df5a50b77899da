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

use super::{forward_blocker, remove_forward, Forward};
use crate::ir::{Graph, Model};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct EliminateDropout;

fn find(g: &Graph, opset: i64, cx: &mut PassContext) -> Vec<Forward> {
    let mut found = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if !node.is("Dropout") {
            continue;
        }
        let (Some(input), Some(output)) = (node.input(0), node.output(0)) else {
            continue;
        };
        let mut refuse = |why: &str| cx.refuse("eliminate-dropout", &node.name, "Dropout", why);
        if let Some(mask) = node.output(1) {
            if !g.value(mask).uses().is_empty() || g.is_output(mask) {
                refuse("its mask output is read");
                continue;
            }
        }
        if let Some(mode) = node.input(2) {
            let constant_false = g
                .value(mode)
                .constant()
                .and_then(|t| t.raw_bytes())
                .is_some_and(|b| b.iter().all(|&x| x == 0));
            if !constant_false {
                refuse("training_mode is not a constant false");
                continue;
            }
        }
        if opset < 7 && node.attr_i("is_test") == Some(0) {
            refuse("is_test is 0 (training)");
            continue;
        }
        match forward_blocker(g, input, output) {
            None => found.push(Forward {
                node: n,
                input,
                output,
            }),
            Some(why) => refuse(why),
        }
    }
    found.sort_by_key(|f| f.node);
    found
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
        let n = for_each_graph(&mut model.graph, &mut |g| {
            let mut done = 0;
            while let Some(f) = find(g, opset, cx).into_iter().next() {
                // The unread mask goes with the node.
                done += remove_forward(g, f)?;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
