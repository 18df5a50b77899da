//! `name-ops`: before quantizing or lowering precision, every op without a name of its own
//! gets one.
//!
//! ```text
//!   Conv ""  ─▶ Relu ""  ─▶ Conv ""   ─▶ Conv "head"  ─▶ Conv "head"
//!                                ⇒
//!   Conv "Conv_0" ─▶ Relu "Relu_1" ─▶ Conv "Conv_2" ─▶ Conv "head" ─▶ Conv "head_1"
//! ```
//!
//! Why: the quantize and precision stages know an op by its name: their searches return ops
//! to float by name, `--exclude` takes names, and the reports list them. ONNX does not ask node names
//! to exist or differ, and unnamed ops are common in hand-built and converted models; two
//! ops sharing a name would be returned to float together, and a report row without a name
//! tells the user nothing to exclude. A name is the op type and its place among the model's
//! nodes (bodies included, innermost first), so the same model always gets the same names and
//! a name from one run's report can be passed to the next run's `--exclude`. A name some
//! node already has is kept for the first node that has it. Runs first in the quantize and
//! precision stages, and only there: other stages keep a model's names as they were.

use std::collections::HashSet;

use anyhow::Result;

use crate::ir::{first_free, Graph, Model, Patch, Scope};
use crate::passes::{Changed, Pass, PassContext};

pub struct NameOps;

impl Pass for NameOps {
    fn id(&self) -> &'static str {
        "name-ops"
    }

    fn about(&self) -> &'static str {
        "give every unnamed op (and every second op of a name) a name of its own before quantizing or lowering precision"
    }

    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<Changed> {
        let mut taken = HashSet::new();
        model.graph.for_each_graph(&mut |g, _: Scope| {
            g.node_ids().for_each(|n| {
                taken.insert(g.node(n).name().to_string());
            });
            Ok(0)
        })?;
        let mut place = 0usize;
        let mut seen = HashSet::new();
        let n = model
            .graph
            .for_each_graph(&mut |g, _: Scope| name_graph(g, &mut taken, &mut seen, &mut place))?;
        Ok(Changed::from_count(n))
    }
}

/// Names the ops of `g` that have no name, or one an earlier op in the walk already had.
/// `taken` holds every name in the model, `seen` the names already kept, `place` counts the
/// nodes walked so far.
fn name_graph(
    g: &mut Graph,
    taken: &mut HashSet<String>,
    seen: &mut HashSet<String>,
    place: &mut usize,
) -> Result<usize> {
    let nodes: Vec<_> = g.node_ids().collect();
    let mut p = Patch::new(g);
    for n in nodes {
        let node = p.graph().node(n);
        let name = node.name().to_string();
        *place += 1;
        if !name.is_empty() && seen.insert(name.clone()) {
            continue;
        }
        let base = match name.as_str() {
            "" => format!("{}_{}", node.op(), *place - 1),
            _ => name,
        };
        let fresh = first_free(&base, |c| taken.contains(c));
        taken.insert(fresh.clone());
        seen.insert(fresh.clone());
        p.set_node_name(n, &fresh);
    }
    p.commit()
}
