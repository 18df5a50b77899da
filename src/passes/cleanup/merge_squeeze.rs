//! `merge-squeezes`: an Unsqueeze of an Unsqueeze, or a Squeeze of a Squeeze, becomes one op.
//!
//! ```text
//!   t = Unsqueeze(x, [0])     x: [4, 5]                ⇒     y = Unsqueeze(x, [0, 2])
//!   y = Unsqueeze(t, [2])     y: [1, 4, 1, 5]
//!   t = Squeeze(x, [0])       x: [1, 4, 1, 5]          ⇒     y = Squeeze(x, [0, 2])
//!   y = Squeeze(t, [1])       y: [4, 5]
//! ```
//!
//! Each op's axes index the larger of its two ranks (a Squeeze's input, an Unsqueeze's output),
//! so the pair's axes combine in the frame of the larger end: those of the op at that end as
//! they are, the other op's renumbered past them. Refuses when an op's axes are not constants,
//! are absent (a Squeeze of every unit dim, which depends on the shape), or are negative with
//! the rank unknown (tract's facts give it in the main graph), and when `t` has other readers
//! (merging would remove nothing). The inner op is left to dead-code. An Unsqueeze undoing a
//! Squeeze, or the reverse, is `eliminate-noop`'s. Runs inside subgraphs too.

use anyhow::Result;

use super::squeeze_axes;
use crate::ir::{Attr, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{any_node, for_each_graph, Changed, Pass, PassContext, Scope};
use crate::runtime::Facts;

pub struct MergeSqueezes;

struct Merge {
    outer: NodeId,
    x: ValueId,
    axes: Vec<i64>,
}

/// The positions of a frame left after taking out `taken` (sorted), picked by `picks`.
fn renumber(taken: &[i64], picks: &[i64]) -> Vec<i64> {
    let free: Vec<i64> = (0..)
        .filter(|i| !taken.contains(i))
        .take(picks.iter().max().map_or(0, |&m| m as usize + 1))
        .collect();
    picks.iter().map(|&p| free[p as usize]).collect()
}

fn match_at(g: &Graph, n: NodeId, facts: Option<&Facts>) -> Result<Option<Merge>, &'static str> {
    let node = g.node(n);
    let Some(t) = node.input(0) else {
        return Ok(None);
    };
    let Some(inner) = g.producer(t).filter(|&p| g.node(p).op == node.op) else {
        return Ok(None);
    };
    if g.value(t).uses().len() != 1 || g.is_output(t) {
        return Err("the first op's output has other readers");
    }
    let x = g.node(inner).input(0).ok_or("the first op has no input")?;
    let y = node.output(0).ok_or("it has no output")?;
    let rank = |v: ValueId| facts.and_then(|f| f.rank(g.value(v).name()));
    const AXES: &str = "an op's axes are not constant, absent, or negative with the rank unknown";
    // (the op at the larger end, its rank), (the other op, its rank)
    let (big, small) = if node.is("Unsqueeze") {
        ((n, rank(y)), (inner, rank(t)))
    } else {
        ((inner, rank(x)), (n, rank(t)))
    };
    let taken = squeeze_axes(g, big.0, big.1).ok_or(AXES)?;
    let picks = squeeze_axes(g, small.0, small.1).ok_or(AXES)?;
    let mut axes = [taken.clone(), renumber(&taken, &picks)].concat();
    axes.sort_unstable();
    Ok(Some(Merge { outer: n, x, axes }))
}

fn merge(patch: &mut Patch, m: Merge) -> Result<()> {
    let node = patch.graph().node(m.outer);
    if node.input(1).is_some() {
        let base = format!("{}_axes", node.name);
        let axes =
            patch.add_initializer(&base, Tensor::from_i64(vec![m.axes.len() as i64], &m.axes))?;
        patch.set_inputs(m.outer, &[Some(m.x), Some(axes)]);
    } else {
        patch.set_attr(m.outer, Attr::ints("axes", &m.axes));
        patch.set_inputs(m.outer, &[Some(m.x)]);
    }
    Ok(())
}

/// Whether Squeeze or Unsqueeze `n` reads one of its own kind.
fn is_pair(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    (node.is("Squeeze") || node.is("Unsqueeze"))
        && node
            .input(0)
            .and_then(|t| g.producer(t))
            .is_some_and(|p| g.node(p).op == node.op)
}

impl Pass for MergeSqueezes {
    fn id(&self) -> &'static str {
        "merge-squeezes"
    }

    fn about(&self) -> &'static str {
        "merge an Unsqueeze of an Unsqueeze, or a Squeeze of a Squeeze, into one"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        // The facts the match may need cost a tract analysis: not worth it for nothing.
        if !any_node(&model.graph, &is_pair) {
            return Ok(Changed::No);
        }
        let facts = cx.facts(model);
        let n = for_each_graph(&mut model.graph, &mut |g, scope| {
            let facts = (scope == Scope::Main).then_some(&*facts);
            let mut nodes: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| g.node(n).is("Squeeze") || g.node(n).is("Unsqueeze"))
                .collect();
            nodes.sort();
            let mut patch = Patch::new(g);
            // One at a time against the graph as it is now: in a chain of three, the second
            // merge reads what the first made.
            for n in nodes {
                match match_at(patch.graph(), n, facts) {
                    Ok(Some(m)) => merge(&mut patch, m)?,
                    Ok(None) => {}
                    Err(why) => {
                        let node = patch.graph().node(n);
                        cx.refuse("merge-squeezes", &node.name, &node.op, why);
                    }
                }
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
