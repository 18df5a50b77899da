//! `dead-code`: remove what no graph output depends on.
//!
//! ```text
//!   x ─▶ A ─▶ out (graph output)           x ─▶ A ─▶ out
//!   x ─▶ B ─▶ t ─▶ C ─▶ u (read by nothing) ⇒
//!   initializer w (read by nothing)          (B, C, w and stale value_info entries gone)
//! ```
//!
//! Graph inputs and outputs are the interface and always stay. Refuses to remove operators of
//! non-standard domains even when unread: a custom op may have effects the runtime relies on.
//! Runs inside subgraphs (innermost first), dropping captures a body no longer reads, so the
//! enclosing graph can then drop their producers. Runs last in its stage: every pass before it
//! leaves unread nodes and initializers behind.

use std::collections::HashSet;

use anyhow::Result;

use crate::ir::{Def, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{Changed, Pass, PassContext};

pub struct DeadCode;

/// What is dead; nodes listed readers first, so they can be removed front to back. A removed
/// node's value_info entries go with it.
struct Dead {
    nodes: Vec<NodeId>,
    values: Vec<ValueId>,
}

/// Whether nothing but the nodes in `dead` reads `v`.
fn unread(g: &Graph, v: ValueId, dead: &HashSet<NodeId>) -> bool {
    !g.is_output(v) && g.value(v).uses().iter().all(|u| dead.contains(&u.node))
}

fn find(g: &Graph, cx: &mut PassContext) -> Result<Dead> {
    let mut dead_nodes: HashSet<NodeId> = HashSet::new();
    let mut nodes = Vec::new();
    // Readers come after producers in topological order, so walking it backwards sees every
    // reader's fate before its producer's.
    for n in g.topo_order()?.into_iter().rev() {
        let node = g.node(n);
        if !node
            .outputs()
            .iter()
            .flatten()
            .all(|&v| unread(g, v, &dead_nodes))
        {
            continue;
        }
        if !node.in_standard_domain() {
            cx.refuse(
                "dead-code",
                node.name(),
                &node.qualified_op(),
                "custom operators are kept even when unread",
            );
            continue;
        }
        dead_nodes.insert(n);
        nodes.push(n);
    }
    let values = g
        .values()
        .filter(|(v, value)| {
            matches!(
                value.def(),
                Def::Initializer | Def::SparseInitializer | Def::Capture | Def::Declared
            ) && unread(g, *v, &dead_nodes)
        })
        .map(|(v, _)| v)
        .collect();
    Ok(Dead { nodes, values })
}

impl Pass for DeadCode {
    fn id(&self) -> &'static str {
        "dead-code"
    }

    fn about(&self) -> &'static str {
        "remove nodes, initializers and value_info that no graph output depends on"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = model.graph.for_each_graph(&mut |g, _| {
            let dead = find(g, cx)?;
            let mut patch = Patch::new(g);
            for n in dead.nodes {
                patch.remove_node(n)?;
            }
            for v in dead.values {
                patch.remove_value(v)?;
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
