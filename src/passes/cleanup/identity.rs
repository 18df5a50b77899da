//! `eliminate-identity`: an Identity forwards its input; its readers can read the input.
//!
//! ```text
//!   x ─▶ Identity ─▶ y ─▶ Relu          x ─▶ Relu
//!                                  ⇒
//!   x ─▶ Identity ─▶ out (graph output)  x renamed to out, when x is a node's internal output
//! ```
//!
//! Refuses when `out` is a graph output and `x` is a graph input, initializer, capture or
//! another graph output: the graph's interface names never change. Runs inside subgraphs too;
//! a body's outputs are its interface in the same way.

use anyhow::Result;

use super::{forward_blocker, remove_forward, Forward};
use crate::ir::{Graph, Model};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct EliminateIdentity;

/// Every Identity that can go, and the reasons the others stay.
fn find(g: &Graph, cx: &mut PassContext) -> Vec<Forward> {
    let mut found = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if !node.is("Identity") {
            continue;
        }
        let (Some(input), Some(output)) = (node.input(0), node.output(0)) else {
            continue;
        };
        match forward_blocker(g, input, output) {
            None => found.push(Forward {
                node: n,
                input,
                output,
            }),
            Some(why) => cx.refuse("eliminate-identity", &node.name, "Identity", why),
        }
    }
    found.sort_by_key(|f| f.node);
    found
}

impl Pass for EliminateIdentity {
    fn id(&self) -> &'static str {
        "eliminate-identity"
    }

    fn about(&self) -> &'static str {
        "remove Identity nodes; their readers read the input"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g| {
            let mut done = 0;
            // One at a time: removing one can make the next one's output a renamed interface.
            while let Some(f) = find(g, cx).into_iter().next() {
                done += remove_forward(g, f)?;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
