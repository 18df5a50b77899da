//! `merge-reshapes`: a Reshape of a value that only a reshaping op produced reads that op's
//! input instead.
//!
//! ```text
//!   t = Reshape | Flatten | Squeeze | Unsqueeze (x, ...)      ⇒      y = Reshape(x, s)
//!   y = Reshape(t, s)
//! ```
//!
//! These ops keep the elements in order and change only the shape, so the last Reshape alone
//! decides the result. Refuses when `s` is not a constant or holds a 0 that copies a dim of
//! `t` (without `allowzero=1`), since that dim may differ in x. The inner op is left to
//! dead-code once nothing else reads it. Runs after `fold-reshape-target` of the round before,
//! which makes Shape-computed targets constant. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Graph, NodeId, Patch, ValueId};
use crate::passes::{Look, Refusal, Rewrite};

pub struct MergeReshapes;

const RESHAPING: &[&str] = &["Reshape", "Flatten", "Squeeze", "Unsqueeze"];

impl Rewrite for MergeReshapes {
    /// The Reshape and the value it reads instead.
    type Match = (NodeId, ValueId);
    const ID: &'static str = "merge-reshapes";
    const ABOUT: &'static str =
        "let a Reshape read past the Reshape, Flatten, Squeeze or Unsqueeze before it";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Reshape")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<(NodeId, ValueId), Refusal> {
        let node = g.node(n);
        let inner = node
            .input(0)
            .and_then(|t| g.producer(t))
            .filter(|&p| RESHAPING.iter().any(|op| g.node(p).is(op)))
            .ok_or(Refusal::NotMine)?;
        let target = node
            .input(1)
            .and_then(|s| g.const_ints(s))
            .ok_or("its target is not a constant")?;
        if node.attr_i("allowzero") != Some(1) && target.contains(&0) {
            return Err("its target copies a dim (0) of the value it reshapes".into());
        }
        Ok((n, g.node(inner).input(0).ok_or(Refusal::NotMine)?))
    }

    fn apply(&self, patch: &mut Patch, (n, x): (NodeId, ValueId)) -> Result<()> {
        patch.set_input(n, 0, Some(x));
        Ok(())
    }
}
