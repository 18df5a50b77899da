//! `fold-reshape-target`: a Reshape target computed from the input's own shape becomes a
//! constant, without freezing any dynamic dim.
//!
//! ```text
//!   s = Shape(x)                                    
//!   b = Unsqueeze(Gather(s, 0), [0])                
//!   t = Unsqueeze(Gather(s, 1), [0])          ⇒     y = Reshape(x, [0, 0, 12, 64])
//!   y = Reshape(x, Concat(b, t, [12], [64]))
//! ```
//!
//! A 0 in a Reshape target copies that dim from the input (opset 5+, unless `allowzero=1`),
//! so dims that are symbolic (batch, sequence) stay symbolic. Preconditions: every Concat part
//! is a constant int64 vector, `Unsqueeze(Gather(Shape(x), i), [0])`, or
//! `Slice(Shape(x), [i], [j])` (the flatten Paddle and others export, possibly through Casts
//! to int32/int64), of the Reshape's own
//! input with `i` equal to the part's position and, for the Slice, `j` within x's rank as tract
//! infers it; no constant part is 0 (it would be read as "copy"); `Shape` has no start/end.
//! Refuses otherwise. The Shape/Gather/Unsqueeze/Concat chain
//! is left to dead-code. Runs after `constant-to-initializer` and the forwarding passes, which
//! leave the chain's constants as initializers and its ops next to each other. Runs inside
//! subgraphs too.

use anyhow::Result;

use crate::ir::{Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{producer_op, Look, Refusal, Rewrite};

pub struct FoldReshapeTarget;

pub struct Found {
    reshape: NodeId,
    target: Vec<i64>,
}

/// The axes of an Unsqueeze: the attribute before opset 13, the second input after.
fn unsqueeze_axes(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let node = g.node(n);
    match node.input(1) {
        Some(a) => g.const_ints(a),
        None => node.attr_ints("axes").map(<[i64]>::to_vec),
    }
}

/// Whether `part` is `Unsqueeze(Gather(Shape(x), pos), [0])`.
fn copies_dim(g: &Graph, part: ValueId, x: ValueId, pos: usize) -> bool {
    let step = |v: ValueId, op: &str| g.producer(v).filter(|&n| g.node(n).is(op));
    let Some(unsq) = step(part, "Unsqueeze") else {
        return false;
    };
    if unsqueeze_axes(g, unsq).as_deref() != Some(&[0]) {
        return false;
    }
    let Some(gather) = g.node(unsq).input(0).and_then(|v| step(v, "Gather")) else {
        return false;
    };
    let gn = g.node(gather);
    if gn.attr_i("axis").unwrap_or(0) != 0 {
        return false;
    }
    let index = gn
        .input(1)
        .and_then(|i| g.value(i).constant())
        .and_then(|t| {
            let v = t.to_i64_vec()?;
            (t.dims().is_empty() && v.len() == 1).then(|| v[0])
        });
    if index != Some(pos as i64) {
        return false;
    }
    let Some(shape) = gn.input(0).and_then(|v| step(v, "Shape")) else {
        return false;
    };
    let sn = g.node(shape);
    sn.input(0) == Some(x) && sn.attr("start").is_none() && sn.attr("end").is_none()
}

/// The value under any Casts to int32 or int64: exact for dims, and some exporters wrap shape
/// arithmetic in them.
fn through_int_casts(g: &Graph, mut v: ValueId) -> ValueId {
    while let Some(n) = g.producer(v).filter(|&n| g.node(n).is("Cast")) {
        let node = g.node(n);
        match (node.attr_i("to"), node.input(0)) {
            (Some(6 | 7), Some(inner)) => v = inner,
            _ => break,
        }
    }
    v
}

/// How many dims `part` copies when it is `Slice(Shape(x), [at], [e])` (axes [0], step 1):
/// dims at..e of x itself, which needs x's rank, as tract infers it, to reach e.
fn copies_dims(
    g: &Graph,
    part: ValueId,
    x: ValueId,
    at: usize,
    rank: Option<usize>,
) -> Option<usize> {
    let slice = g
        .producer(through_int_casts(g, part))
        .filter(|&n| g.node(n).is("Slice"))?;
    let sn = g.node(slice);
    let shape = sn
        .input(0)
        .and_then(|v| g.producer(through_int_casts(g, v)))
        .filter(|&n| g.node(n).is("Shape"))?;
    let shn = g.node(shape);
    if shn.input(0) != Some(x) || shn.attr("start").is_some() || shn.attr("end").is_some() {
        return None;
    }
    let one = |slot: usize| -> Option<Option<i64>> {
        match sn.input(slot) {
            None => Some(None),
            Some(v) => match g.const_ints(v)?.as_slice() {
                [k] => Some(Some(*k)),
                _ => None,
            },
        }
    };
    let (start, end) = (one(1)??, one(2)??);
    if one(3)?.unwrap_or(0) != 0 || one(4)?.unwrap_or(1) != 1 {
        return None;
    }
    let ok = start == at as i64 && end > start && rank.is_some_and(|r| end as usize <= r);
    ok.then(|| (end - start) as usize)
}

fn match_at(g: &Graph, reshape: NodeId, look: &Look) -> Result<Found, &'static str> {
    let node = g.node(reshape);
    if node.attr_i("allowzero") == Some(1) {
        return Err("allowzero=1 reads 0 as a real dim");
    }
    let (Some(x), Some(shape)) = (node.input(0), node.input(1)) else {
        return Err("it has no target");
    };
    if g.value(shape).constant().is_some() {
        return Err("its target is already constant");
    }
    let concat = producer_op(g, shape, "Concat").ok_or("its target is not a Concat")?;
    let mut target = Vec::new();
    for (pos, part) in g.node(concat).inputs().iter().enumerate() {
        let part = part.ok_or("a Concat part is missing")?;
        if let Some(v) = g.const_ints(part) {
            if v.contains(&0) {
                return Err("a constant part holds 0, which would mean copy");
            }
            target.extend(v);
        } else if target.len() == pos && copies_dim(g, part, x, target.len()) {
            target.push(0);
        } else if let Some(n) = copies_dims(g, part, x, target.len(), look.rank(g, x)) {
            target.extend(std::iter::repeat_n(0, n));
        } else {
            return Err("a part is neither a constant nor the same dim of the input's own shape");
        }
    }
    Ok(Found { reshape, target })
}

impl Rewrite for FoldReshapeTarget {
    type Match = Found;
    const ID: &'static str = "fold-reshape-target";
    const ABOUT: &'static str =
        "replace Shape-computed Reshape targets with constants that copy dynamic dims";
    // Ranks are needed for the Slice form only.
    const NEEDS_FACTS: bool = true;

    fn applies(&self, model: &Model) -> bool {
        model.opset("").unwrap_or(1) >= 5
    }

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Reshape")
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        Ok(match_at(g, n, look)?)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        let base = format!("{}_target", patch.graph().node(f.reshape).name());
        let len = f.target.len() as i64;
        let t = patch.add_initializer(&base, Tensor::from_i64(vec![len], &f.target))?;
        patch.set_input(f.reshape, 1, Some(t));
        Ok(())
    }
}
