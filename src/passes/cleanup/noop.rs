//! `eliminate-noop`: operators that provably return one of their inputs unchanged are removed.
//!
//! ```text
//!   Transpose(x, perm=[0,1,2,...])   Concat(x)   Pad(x, pads=0...)   Tile(x, 1...)   Split(x)
//!   Cast(x: T, to=T)   Reshape / Expand / Flatten / Slice(x) to x's own shape
//!   x + 0   0 + x   x - 0   x * 1   1 * x   x / 1   (the result having x's shape)
//!   Unsqueeze(Squeeze(x, a), a)   Squeeze(Unsqueeze(x, a), a)
//!                                       ⇒  x
//! ```
//!
//! Decided from the node alone where its attributes say it (the identity permutation, one
//! Concat input, constant zero pads, constant unit repeats, a Split with one output), and from
//! tract's facts otherwise: a Cast to the type its input is proven to have (in subgraphs, only
//! an initializer's or graph input's type counts), a Reshape, Expand or Flatten whose result
//! is proven to have its input's shape, a Slice with positive steps likewise, and arithmetic
//! with a constant of zeros or ones whose result keeps the other operand's shape (a broadcast
//! that grows it is real work), and an Unsqueeze putting back exactly the axes a Squeeze took
//! out, or the reverse (negative axes need the rank, which only the main graph's facts give).
//! Declared types of inner values are never trusted. Refuses when
//! removing the node would rename the graph's interface (see `eliminate-identity`). Runs
//! inside subgraphs too.

use anyhow::Result;

use super::{remove_forwarding, squeeze_axes, Verdict};
use crate::ir::{DType, Def, Graph, Model, NodeId, Tensor, ValueId};
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::Facts;

pub struct EliminateNoop;

/// Whether every element of `t` is 1 (`one`) or 0, in `t`'s own encoding.
fn is_splat(t: &Tensor, one: bool) -> bool {
    let unit: &[u8] = match (t.dtype(), one) {
        (DType::F32, true) => &[0, 0, 0x80, 0x3f],
        (DType::F64, true) => &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
        (DType::F16, true) => &[0, 0x3c],
        (DType::BF16, true) => &[0x80, 0x3f],
        (DType::I64 | DType::U64, true) => &[1, 0, 0, 0, 0, 0, 0, 0],
        (DType::I32 | DType::U32, true) => &[1, 0, 0, 0],
        (DType::I16 | DType::U16, true) => &[1, 0],
        (DType::I8 | DType::U8, true) => &[1],
        (DType::STRING | DType::BOOL, _) => return false,
        (_, false) => &[0],
        _ => return false,
    };
    t.raw_bytes()
        .is_some_and(|raw| !raw.is_empty() && raw.chunks(unit.len()).all(|c| c == unit))
}

/// The value `n` returns unchanged, if it provably does.
fn forwarded(g: &Graph, n: NodeId, facts: Option<&Facts>) -> Option<ValueId> {
    let node = g.node(n);
    let x = node.input(0)?;
    let y = node.output(0)?;
    let name = |v: ValueId| g.value(v).name();
    let keeps_shape = |x: ValueId| facts.is_some_and(|f| f.same_shape(name(x), name(y)));
    let yes = |cond: bool| cond.then_some(x);
    match node.op.as_str() {
        _ if !node.domain.is_empty() && node.domain != "ai.onnx" => None,
        "Transpose" => yes(node
            .attr_ints("perm")
            .is_some_and(|p| p.iter().enumerate().all(|(i, &v)| v == i as i64))),
        "Concat" => yes(node.inputs().len() == 1),
        "Split" => yes(node.outputs().len() == 1),
        "Pad" => {
            let pads = match node.input(1) {
                Some(p) => g.const_ints(p),
                None => node.attr_ints("pads").map(<[i64]>::to_vec),
            };
            yes(pads.is_some_and(|p| p.iter().all(|&v| v == 0)))
        }
        "Tile" => yes(node
            .input(1)
            .and_then(|r| g.const_ints(r))
            .is_some_and(|r| r.iter().all(|&v| v == 1))),
        "Cast" => {
            let trusted = matches!(g.value(x).def(), Def::Initializer | Def::Input);
            let from = if trusted {
                g.dtype(x)
            } else {
                facts.and_then(|f| f.dtype(name(x)))
            };
            let to = node.attr_i("to")?;
            yes(from.is_some_and(|d| d.0 as i64 == to))
        }
        "Reshape" | "Expand" | "Flatten" => yes(keeps_shape(x)),
        "Slice" => {
            let steps_positive = match node.input(4) {
                Some(s) => g.const_ints(s).is_some_and(|s| s.iter().all(|&v| v > 0)),
                None => true,
            };
            yes(steps_positive && keeps_shape(x))
        }
        "Squeeze" | "Unsqueeze" => {
            // Unsqueeze(Squeeze(x, a), a) and Squeeze(Unsqueeze(x, a), a): both name axes of
            // the larger rank (the Squeeze's input, the Unsqueeze's output).
            let undone = if node.is("Squeeze") {
                "Unsqueeze"
            } else {
                "Squeeze"
            };
            let p = g.producer(x).filter(|&p| g.node(p).is(undone))?;
            let larger = if node.is("Squeeze") { x } else { y };
            let rank = facts.and_then(|f| f.rank(name(larger)));
            let same = squeeze_axes(g, p, rank)? == squeeze_axes(g, n, rank)?;
            same.then(|| g.node(p).input(0))?
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let one = matches!(node.op.as_str(), "Mul" | "Div");
            let commutes = matches!(node.op.as_str(), "Add" | "Mul");
            let b = node.input(1)?;
            let neutral = |v: ValueId| g.value(v).constant().is_some_and(|t| is_splat(t, one));
            if neutral(b) && keeps_shape(x) {
                Some(x)
            } else if commutes && neutral(x) && keeps_shape(b) {
                Some(b)
            } else {
                None
            }
        }
        _ => None,
    }
}

impl Pass for EliminateNoop {
    fn id(&self) -> &'static str {
        "eliminate-noop"
    }

    fn about(&self) -> &'static str {
        "remove nodes that return an input unchanged: identity Transposes, zero Pads, same-type Casts, x+0, x*1, ..."
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let facts = cx.facts(model);
        remove_forwarding(
            model,
            self.id(),
            cx,
            &facts,
            &|g, n, facts| match forwarded(g, n, facts) {
                Some(x) => Verdict::Forwards(x),
                None => Verdict::NotMine,
            },
        )
    }
}
