//! `fold-shape`: Shape and Size of a value whose dims tract proves constant become constants.
//!
//! ```text
//!   x: f32[N, 64, 7, 7]                         
//!   s = Shape(x, start=1) ─▶ ...       ⇒        s = const i64[3] [64, 7, 7] ─▶ ...
//!   n = Size(y)  (y: f32[2, 3])                 n = const i64 6
//! ```
//!
//! Shapes come from tract's inference over the ops, with graph inputs' symbolic dims left
//! symbolic, never from declared value_info or declared output shapes (exports get those
//! wrong). A Shape whose selected dims depend on a symbol (the batch, a sequence length) is
//! kept, and `--explain` says so. Top-level graph only. `fold-constants` then folds whatever
//! computed from the new constants.

use anyhow::Result;

use crate::ir::{Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::static_shapes;

pub struct FoldShape;

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

impl Pass for FoldShape {
    fn id(&self) -> &'static str {
        "fold-shape"
    }

    fn about(&self) -> &'static str {
        "replace Shape and Size of values with statically known dims by constants"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let g = &model.graph;
        let candidates: Vec<NodeId> = {
            let mut c: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| g.node(n).is("Shape") || g.node(n).is("Size"))
                .collect();
            c.sort();
            c
        };
        if candidates.is_empty() {
            return Ok(Changed::No);
        }
        let shapes = static_shapes(model);
        let g = &model.graph;
        let mut found: Vec<(NodeId, ValueId, Tensor)> = Vec::new();
        for n in candidates {
            let node = g.node(n);
            let (Some(x), Some(out)) = (node.input(0), node.output(0)) else {
                continue;
            };
            if g.is_output(out) {
                cx.refuse(
                    "fold-shape",
                    &node.name,
                    &node.op,
                    "its output is a graph output",
                );
                continue;
            }
            let selected = shapes.get(g.value(x).name()).and_then(|dims| {
                let sel = if node.op == "Shape" {
                    select(dims, node.attr_i("start"), node.attr_i("end"))
                } else {
                    dims.clone()
                };
                sel.into_iter().collect::<Option<Vec<i64>>>()
            });
            let Some(sel) = selected else {
                cx.refuse(
                    "fold-shape",
                    &node.name,
                    &node.op,
                    "the input's dims depend on dynamic input dims",
                );
                continue;
            };
            let t = if node.op == "Shape" {
                Tensor::from_i64(vec![sel.len() as i64], &sel)
            } else {
                Tensor::from_i64(vec![], &[sel.iter().product()])
            };
            found.push((n, out, t));
        }
        let mut patch = Patch::new(&mut model.graph);
        for (n, out, t) in found {
            patch.replace_with_initializer(out, t)?;
            patch.remove_node(n)?;
        }
        Ok(Changed::from_count(patch.commit()?))
    }
}
