//! `merge-transposes`: a Transpose of a Transpose becomes one Transpose.
//!
//! ```text
//!   t = Transpose(x, perm=p)                    ⇒      y = Transpose(x, perm=q)
//!   y = Transpose(t, perm=r)                           q[i] = p[r[i]]
//! ```
//!
//! The outer node reads x directly; the inner one is left to dead-code once nothing else reads
//! it, and a composition that is the identity is left to `eliminate-noop`. Refuses when either
//! node has no explicit `perm` (the default reverses axes, which needs the rank) or the perms
//! disagree in length. Each Transpose is matched against the graph as the merge before it left
//! it, so a chain collapses in one run. Runs after the forwarding passes, which expose the
//! inner Transpose. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Attr, Graph, NodeId, Patch, ValueId};
use crate::passes::{producer_op, Look, Refusal, Rewrite};

pub struct MergeTransposes;

pub struct Found {
    outer: NodeId,
    x: ValueId,
    perm: Vec<i64>,
}

impl Rewrite for MergeTransposes {
    type Match = Found;
    const ID: &'static str = "merge-transposes";
    const ABOUT: &'static str = "compose consecutive Transposes into one";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Transpose")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<Found, Refusal> {
        let node = g.node(n);
        let t = node.input(0).ok_or(Refusal::NotMine)?;
        let inner = producer_op(g, t, "Transpose").ok_or(Refusal::NotMine)?;
        let (Some(p), Some(r)) = (g.node(inner).attr_ints("perm"), node.attr_ints("perm")) else {
            return Err("a perm is implicit".into());
        };
        if p.len() != r.len() || r.iter().any(|&i| i < 0 || i as usize >= p.len()) {
            return Err("the perms do not compose".into());
        }
        let x = g
            .node(inner)
            .input(0)
            .ok_or("the inner Transpose has no input")?;
        Ok(Found {
            outer: n,
            x,
            perm: r.iter().map(|&i| p[i as usize]).collect(),
        })
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        patch.set_inputs(f.outer, &[Some(f.x)]);
        patch.set_attr(f.outer, Attr::ints("perm", &f.perm));
        Ok(())
    }
}
