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
//! disagree in length. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Attr, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct MergeTransposes;

fn match_at(g: &Graph, n: NodeId) -> Result<Option<(ValueId, Vec<i64>)>, &'static str> {
    let node = g.node(n);
    let Some(inner) = node
        .input(0)
        .and_then(|t| g.producer(t))
        .filter(|&p| g.node(p).is("Transpose"))
    else {
        return Ok(None);
    };
    let (Some(p), Some(r)) = (g.node(inner).attr_ints("perm"), node.attr_ints("perm")) else {
        return Err("a perm is implicit");
    };
    if p.len() != r.len() || r.iter().any(|&i| i < 0 || i as usize >= p.len()) {
        return Err("the perms do not compose");
    }
    let q = r.iter().map(|&i| p[i as usize]).collect();
    let x = g
        .node(inner)
        .input(0)
        .ok_or("the inner Transpose has no input")?;
    Ok(Some((x, q)))
}

impl Pass for MergeTransposes {
    fn id(&self) -> &'static str {
        "merge-transposes"
    }

    fn about(&self) -> &'static str {
        "compose consecutive Transposes into one"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let mut nodes: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| g.node(n).is("Transpose"))
                .collect();
            nodes.sort();
            let mut found = Vec::new();
            for n in nodes {
                match match_at(g, n) {
                    Ok(Some(f)) => found.push((n, f)),
                    Ok(None) => {}
                    Err(why) => cx.refuse("merge-transposes", &g.node(n).name, "Transpose", why),
                }
            }
            // One merge per chain link a round: an outer node that is itself merged into is
            // handled on the next round, from its new input.
            let mut patch = Patch::new(g);
            let mut rewired: Vec<NodeId> = Vec::new();
            for (n, (x, q)) in found {
                let inner = patch
                    .graph()
                    .node(n)
                    .input(0)
                    .and_then(|t| patch.graph().producer(t));
                if inner.is_some_and(|i| rewired.contains(&i)) {
                    continue;
                }
                patch.set_inputs(n, &[Some(x)]);
                patch.set_attr(n, Attr::ints("perm", &q));
                rewired.push(n);
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
