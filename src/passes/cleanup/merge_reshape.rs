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
//! dead-code once nothing else reads it. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct MergeReshapes;

const RESHAPING: &[&str] = &["Reshape", "Flatten", "Squeeze", "Unsqueeze"];

fn match_at(g: &Graph, n: NodeId) -> Result<Option<ValueId>, &'static str> {
    let node = g.node(n);
    let Some(inner) = node
        .input(0)
        .and_then(|t| g.producer(t))
        .filter(|&p| RESHAPING.iter().any(|op| g.node(p).is(op)))
    else {
        return Ok(None);
    };
    let target = node
        .input(1)
        .and_then(|s| g.const_ints(s))
        .ok_or("its target is not a constant")?;
    if node.attr_i("allowzero") != Some(1) && target.contains(&0) {
        return Err("its target copies a dim (0) of the value it reshapes");
    }
    Ok(g.node(inner).input(0))
}

impl Pass for MergeReshapes {
    fn id(&self) -> &'static str {
        "merge-reshapes"
    }

    fn about(&self) -> &'static str {
        "let a Reshape read past the Reshape, Flatten, Squeeze or Unsqueeze before it"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let mut nodes: Vec<NodeId> =
                g.node_ids().filter(|&n| g.node(n).is("Reshape")).collect();
            nodes.sort();
            let mut found = Vec::new();
            for n in nodes {
                match match_at(g, n) {
                    Ok(Some(x)) => found.push((n, x)),
                    Ok(None) => {}
                    Err(why) => cx.refuse("merge-reshapes", &g.node(n).name, "Reshape", why),
                }
            }
            let mut patch = Patch::new(g);
            for (n, x) in found {
                let mut inputs = patch.graph().node(n).inputs().to_vec();
                inputs[0] = Some(x);
                patch.set_inputs(n, &inputs);
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
