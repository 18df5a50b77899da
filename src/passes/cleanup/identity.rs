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
//! a body's outputs are its interface in the same way. Runs after `constant-to-initializer`,
//! first of the rest: every pattern after it sees a value's real producer.

use anyhow::Result;

use super::{forward, remove_forwarding, Forward};
use crate::ir::{Graph, NodeId, Patch};
use crate::passes::{Look, Refusal, Rewrite};

pub struct EliminateIdentity;

impl Rewrite for EliminateIdentity {
    type Match = Forward;
    const ID: &'static str = "eliminate-identity";
    const ABOUT: &'static str = "remove Identity nodes; their readers read the input";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Identity")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<Forward, Refusal> {
        forward(g, n, g.node(n).input(0).ok_or(Refusal::NotMine)?)
    }

    fn apply(&self, patch: &mut Patch, f: Forward) -> Result<()> {
        remove_forwarding(patch, f)
    }
}
