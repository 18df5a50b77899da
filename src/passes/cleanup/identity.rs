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

use super::{remove_forwarding, Verdict};
use crate::ir::Model;
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::Facts;

pub struct EliminateIdentity;

impl Pass for EliminateIdentity {
    fn id(&self) -> &'static str {
        "eliminate-identity"
    }

    fn about(&self) -> &'static str {
        "remove Identity nodes; their readers read the input"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        remove_forwarding(model, self.id(), cx, &Facts::default(), &|g, n, _| match g
            .node(n)
            .input(0)
        {
            Some(x) if g.node(n).is("Identity") => Verdict::Forwards(x),
            _ => Verdict::NotMine,
        })
    }
}
