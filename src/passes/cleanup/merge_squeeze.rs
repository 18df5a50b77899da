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
//! (merging would remove nothing) unless every one is such a pair, in which case the driver
//! gives each its own copy of the inner op (`Refusal::Shared`). The inner op is left to dead-code. An Unsqueeze undoing a
//! Squeeze, or the reverse, is `eliminate-noop`'s. Runs after the forwarding passes, which
//! expose the inner op. Runs inside subgraphs too.

use anyhow::Result;

use super::squeeze_axes;
use crate::ir::{Attr, Graph, NodeId, Patch, Tensor, ValueId};
use crate::passes::{shared_reads, Look, Refusal, Rewrite};

pub struct MergeSqueezes;

pub struct Merge {
    outer: NodeId,
    x: ValueId,
    axes: Vec<i64>,
}

/// The positions of a frame left after taking out `taken` (sorted), picked by `picks`.
/// Counted, not listed: where the rank is unknown an axis is not range-checked, and listing
/// the free positions up to an axis of 2^33 took all memory.
fn renumber(taken: &[i64], picks: &[i64]) -> Vec<i64> {
    picks
        .iter()
        .map(|&p| {
            taken
                .iter()
                .fold(p, |at, &t| if t <= at { at + 1 } else { at })
        })
        .collect()
}

fn match_at(g: &Graph, n: NodeId, look: &Look) -> Result<Merge, Refusal> {
    let node = g.node(n);
    let t = node.input(0).ok_or(Refusal::NotMine)?;
    let inner = g
        .producer(t)
        .filter(|&p| g.node(p).op() == node.op())
        .ok_or(Refusal::NotMine)?;
    if let Some(why) = shared_reads(g, t, "the first op's output") {
        return Err(Refusal::Shared(t, why.into()));
    }
    let x = g.node(inner).input(0).ok_or("the first op has no input")?;
    let y = node.output(0).ok_or("it has no output")?;
    let rank = |v: ValueId| look.rank(g, v);
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
    Ok(Merge { outer: n, x, axes })
}

fn merge(patch: &mut Patch, m: Merge) -> Result<()> {
    let node = patch.graph().node(m.outer);
    if node.input(1).is_some() {
        let base = format!("{}_axes", node.name());
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
            .is_some_and(|p| g.node(p).op() == node.op())
}

impl Rewrite for MergeSqueezes {
    type Match = Merge;
    const ID: &'static str = "merge-squeezes";
    const ABOUT: &'static str =
        "merge an Unsqueeze of an Unsqueeze, or a Squeeze of a Squeeze, into one";
    const NEEDS_FACTS: bool = true;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        is_pair(g, n)
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Merge, Refusal> {
        match_at(g, n, look)
    }

    fn apply(&self, patch: &mut Patch, m: Merge) -> Result<()> {
        merge(patch, m)
    }
}
