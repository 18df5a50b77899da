//! `fold-shape`: Shape and Size of a value whose dims tract proves constant become constants,
//! and so do the known dims picked out of a partly dynamic shape.
//!
//! ```text
//!   x: f32[N, 64, 7, 7]
//!   s = Shape(x, start=1) ─▶ ...       ⇒        s = const i64[3] [64, 7, 7] ─▶ ...
//!   n = Size(y)  (y: f32[2, 3])                 n = const i64 6
//!   c = Gather(Shape(x), 1)                     c = const i64 64
//!   h = Slice(Shape(x), [2], [4])               h = const i64[2] [7, 7]
//! ```
//!
//! Shapes come from tract's inference over the ops, with graph inputs' symbolic dims left
//! symbolic, never from declared value_info or declared output shapes (exports get those
//! wrong). A selection that includes a dim depending on a symbol (the batch, a sequence length)
//! is kept; [`kept`] lists those left at the end, with the dims that stopped them, for the
//! default report. Gather and Slice fold only with constant indices on axis 0
//! of a Shape's output. Runs inside If, Loop and Scan bodies too, whose facts come from each
//! body analysed with its captures typed as they are outside (see `runtime::infer_facts`): in a
//! loop, what is computed from captures folds, and what is computed from a loop-carried value
//! or a scan slice, whose shape may change from one iteration to the next, is kept. Runs after
//! the cleanup passes, so that the Gather or Slice reads the Shape directly. `fold-constants`
//! then folds whatever computed from the new constants; the Shape itself is left to dead-code
//! once nothing reads it.

use anyhow::Result;

use crate::ir::{Dim, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{producer_op, Look, Note, PassContext, Refusal, Rewrite};
use crate::runtime::Facts;

pub struct FoldShape;

pub struct Found {
    node: NodeId,
    out: ValueId,
    value: Tensor,
}

/// The dims `Shape(start, end)` selects, clamped as the operator defines.
fn select(dims: &[Option<i64>], start: Option<i64>, end: Option<i64>) -> Vec<Option<i64>> {
    let r = dims.len() as i64;
    let clamp = |i: i64| if i < 0 { (i + r).max(0) } else { i.min(r) } as usize;
    let (s, e) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(r)));
    if s >= e {
        Vec::new()
    } else {
        dims[s..e].to_vec()
    }
}

/// The positions a one-axis Slice of a vector of length `len` reads, clamped as the operator
/// defines for both step signs.
fn slice_positions(len: i64, start: i64, end: i64, step: i64) -> Vec<i64> {
    let norm = |i: i64| if i < 0 { i + len } else { i };
    let (mut i, end) = if step > 0 {
        (norm(start).clamp(0, len), norm(end).clamp(0, len))
    } else {
        // max then min, not clamp: for an empty vector the range is empty, not a panic.
        (
            norm(start).max(0).min(len - 1),
            norm(end).max(-1).min(len - 1),
        )
    };
    let mut out = Vec::new();
    while (step > 0 && i < end) || (step < 0 && i > end) {
        out.push(i);
        i += step;
    }
    out
}

/// The value `n` computes, as `(dims of the result, elements)`, or why it cannot be known.
fn evaluate(g: &Graph, n: NodeId, facts: &Facts) -> Result<(Vec<i64>, Vec<i64>), &'static str> {
    const DYNAMIC: &str = "the input's dims depend on dynamic input dims";
    // In a loop body this is the usual reason, hence the hint.
    const NO_RANK: &str = "tract cannot infer the input's rank (a loop-carried value's shape \
        may change per iteration, so it is known by its element type alone)";
    let node = g.node(n);
    let x = node.input(0).ok_or("it has no input")?;
    let dims_of = |v: ValueId| facts.dims(g.value(v).name()).ok_or(NO_RANK);
    let known = |sel: Vec<Option<i64>>| sel.into_iter().collect::<Option<Vec<i64>>>();
    let shape_of = |s: ValueId| -> Result<Vec<Option<i64>>, &'static str> {
        let p = producer_op(g, s, "Shape").ok_or("its data is not a Shape")?;
        let shape = g.node(p);
        let dims = dims_of(shape.input(0).ok_or("Shape without input")?)?;
        Ok(select(&dims, shape.attr_i("start"), shape.attr_i("end")))
    };
    match node.op() {
        "Shape" => {
            let sel = known(select(
                &dims_of(x)?,
                node.attr_i("start"),
                node.attr_i("end"),
            ))
            .ok_or(DYNAMIC)?;
            Ok((vec![sel.len() as i64], sel))
        }
        "Size" => {
            let all = known(dims_of(x)?).ok_or(DYNAMIC)?;
            Ok((vec![], vec![all.iter().product()]))
        }
        "Gather" => {
            if node.attr_i("axis").unwrap_or(0) != 0 {
                return Err("it gathers on an axis other than 0");
            }
            let dims = shape_of(x)?;
            let idx = node.input(1).ok_or("it has no indices")?;
            let t = g
                .value(idx)
                .constant()
                .ok_or("its indices are not constant")?;
            let positions = t.to_i64_vec().ok_or("its indices are not integers")?;
            let len = dims.len() as i64;
            let mut sel = Vec::new();
            for i in positions {
                let i = if i < 0 { i + len } else { i };
                sel.push(
                    *dims
                        .get(usize::try_from(i).map_err(|_| "index out of range")?)
                        .ok_or("index out of range")?,
                );
            }
            Ok((t.dims().to_vec(), known(sel).ok_or(DYNAMIC)?))
        }
        "Slice" => {
            let dims = shape_of(x)?;
            let arg = |i: usize| -> Result<Option<Vec<i64>>, &'static str> {
                match node.input(i) {
                    None => Ok(None),
                    Some(v) => g
                        .const_ints(v)
                        .map(Some)
                        .ok_or("its bounds are not constant"),
                }
            };
            let (Some(starts), Some(ends)) = (arg(1)?, arg(2)?) else {
                return Err("it takes its bounds from attributes (opset < 10)");
            };
            let axes = arg(3)?.unwrap_or(vec![0]);
            let steps = arg(4)?.unwrap_or(vec![1]);
            if starts.len() != 1 || ends.len() != 1 || !matches!(axes[..], [0] | [-1]) {
                return Err("it does not slice exactly one axis");
            }
            let step = *steps.first().filter(|&&s| s != 0).ok_or("bad step")?;
            let sel: Vec<Option<i64>> =
                slice_positions(dims.len() as i64, starts[0], ends[0], step)
                    .into_iter()
                    .map(|i| dims[i as usize])
                    .collect();
            Ok((vec![sel.len() as i64], known(sel).ok_or(DYNAMIC)?))
        }
        _ => Err("not a shape read"),
    }
}

/// Whether `n` reads a Shape's output (the other candidates are Shape and Size themselves).
fn reads_shape(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    (node.is("Gather") || node.is("Slice"))
        && node
            .input(0)
            .and_then(|v| g.producer(v))
            .is_some_and(|p| g.node(p).is("Shape"))
}

/// Every Shape and Size left in the main graph, each with why it could not become a constant:
/// the dims of its input that are not known numbers (a symbol such as the batch, or `?` where
/// tract proves nothing), or another reason. Lines for the default report.
fn kept(g: &Graph, facts: &Facts) -> Vec<String> {
    let mut nodes: Vec<NodeId> = g
        .node_ids()
        .filter(|&n| g.node(n).is("Shape") || g.node(n).is("Size"))
        .collect();
    nodes.sort();
    nodes
        .into_iter()
        .map(|n| {
            let node = g.node(n);
            let input = node.input(0).map(|x| g.value(x).name()).unwrap_or("");
            let why = match facts.shape(input) {
                Some(dims) => {
                    let whole = node.is("Size");
                    let (start, end) = if whole {
                        (None, None)
                    } else {
                        (node.attr_i("start"), node.attr_i("end"))
                    };
                    let positions: Vec<Option<i64>> = (0..dims.len() as i64).map(Some).collect();
                    let open: Vec<String> = select(&positions, start, end)
                        .into_iter()
                        .flatten()
                        .filter(|&i| !matches!(dims[i as usize], Dim::Known(_)))
                        .map(|i| format!("{i} ({})", dims[i as usize]))
                        .collect();
                    let shown: Vec<String> = dims.iter().map(Dim::to_string).collect();
                    let out = node.output(0).filter(|&o| g.is_output(o));
                    if open.is_empty() && out.is_some() {
                        format!("[{}]: known, but read as a graph output", shown.join(", "))
                    } else if open.is_empty() {
                        format!("[{}]: known", shown.join(", "))
                    } else {
                        let dims = if open.len() == 1 { "dim" } else { "dims" };
                        format!(
                            "[{}]: {dims} {} not constant",
                            shown.join(", "),
                            open.join(", ")
                        )
                    }
                }
                None => "whose rank tract cannot infer".to_string(),
            };
            format!("{} '{}' of '{input}' {why}", node.op(), node.name())
        })
        .collect()
}

fn shape_read(g: &Graph, n: NodeId) -> bool {
    g.node(n).is("Shape") || g.node(n).is("Size")
}

impl Rewrite for FoldShape {
    type Match = Found;
    const ID: &'static str = "fold-shape";
    const ABOUT: &'static str =
        "replace Shape and Size of values with statically known dims by constants";
    const NEEDS_FACTS: bool = true;
    // A Gather or Slice of a Shape reads the dims through the Shape, even a Shape that cannot
    // fold as a whole.
    const READERS_FIRST: bool = true;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        shape_read(g, n) || reads_shape(g, n)
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        let out = g.node(n).output(0).ok_or(Refusal::NotMine)?;
        if g.is_output(out) {
            return Err("its output is a graph output".into());
        }
        let facts = look.facts.ok_or(Refusal::NotMine)?;
        let (dims, values) = evaluate(g, n, facts)?;
        Ok(Found {
            node: n,
            out,
            value: Tensor::from_i64(dims, &values),
        })
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        patch.replace_with_initializer(f.out, f.value)?;
        patch.remove_node(f.node)
    }

    fn note(&self, model: &Model, cx: &mut PassContext) -> Option<Note> {
        let g = &model.graph;
        if !g.node_ids().any(|n| shape_read(g, n)) {
            return None;
        }
        let lines = kept(g, &cx.facts(model));
        Some(Note {
            pass: Self::ID,
            heading: format!(
                "{} Shape/Size op(s) kept, with the dims they read:",
                lines.len()
            ),
            lines,
        })
    }
}
