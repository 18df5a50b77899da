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
//! is proven to have its input's shape, a Slice with positive steps likewise (or one that
//! takes whole axes from 0 to an end no dim reaches, such as INT64_MAX, even over symbolic
//! dims), and arithmetic
//! with a constant of zeros or ones whose result keeps the other operand's shape (a broadcast
//! that grows it is real work), and an Unsqueeze putting back exactly the axes a Squeeze took
//! out, or the reverse (negative axes need the rank, which only facts give: the main graph's and
//! its bodies', except for loop-carried values, whose rank may change per iteration).
//! Declared types of inner values are never trusted. Refuses when
//! removing the node would rename the graph's interface (see `eliminate-identity`), and says
//! so under `--explain` where the node would be a no-op but for a shape or type tract does not
//! prove. Runs after `constant-to-initializer` (constant pads, repeats and neutral operands
//! are initializers by then). Runs inside subgraphs too.

use anyhow::Result;

use super::{forward, remove_forwarding, squeeze_axes, Forward};
use crate::ir::{DType, Def, Graph, NodeId, Patch, Tensor, ValueId};
use crate::passes::{Look, Refusal, Rewrite};

pub struct EliminateNoop;

const OPS: &[&str] = &[
    "Transpose",
    "Concat",
    "Split",
    "Pad",
    "Tile",
    "Cast",
    "Reshape",
    "Expand",
    "Flatten",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Add",
    "Sub",
    "Mul",
    "Div",
];

/// Said when what would make the node a no-op holds but tract's facts do not prove its result
/// keeps its input's shape (a value computed from a loop-carried one, whose shape the facts
/// leave open, or a broadcast that grows it).
const SHAPE_UNPROVEN: &str = "tract does not prove its result has its input's shape";

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

/// The value `n` returns unchanged, if it provably does. A node that plainly does work is not
/// ours; one that would be a no-op but for what cannot be proven says why.
fn forwarded(
    g: &Graph,
    n: NodeId,
    facts: Option<&crate::runtime::Facts>,
) -> Result<ValueId, Refusal> {
    let node = g.node(n);
    let x = node.input(0).ok_or(Refusal::NotMine)?;
    let y = node.output(0).ok_or(Refusal::NotMine)?;
    let name = |v: ValueId| g.value(v).name();
    let keeps_shape = |x: ValueId| facts.is_some_and(|f| f.same_shape(name(x), name(y)));
    // The shape is the only open question: unproven is a near miss, proven different is not
    // a no-op at all.
    let shape_kept = |x: ValueId| -> Result<ValueId, Refusal> {
        match facts.map(|f| (f.shape(name(x)), f.shape(name(y)))) {
            _ if keeps_shape(x) => Ok(x),
            Some((Some(a), Some(b)))
                if a.iter()
                    .chain(b)
                    .all(|d| matches!(d, crate::ir::Dim::Known(_))) =>
            {
                Err(Refusal::NotMine)
            }
            _ => Err(SHAPE_UNPROVEN.into()),
        }
    };
    let yes = |cond: bool| if cond { Ok(x) } else { Err(Refusal::NotMine) };
    match node.op() {
        "Transpose" => yes(node
            .attr_ints("perm")
            .is_some_and(|p| p.iter().enumerate().all(|(i, &v)| v == i as i64))),
        "Concat" => yes(node.inputs().len() == 1),
        "Split" => yes(node.outputs().len() == 1),
        "Pad" => {
            let pads = match node.input(1) {
                Some(p) => g.const_ints(p).ok_or("its pads are not constant")?,
                None => node.attr_ints("pads").ok_or(Refusal::NotMine)?.to_vec(),
            };
            yes(pads.iter().all(|&v| v == 0))
        }
        "Tile" => {
            let r = node.input(1).ok_or(Refusal::NotMine)?;
            let r = g.const_ints(r).ok_or("its repeats are not constant")?;
            yes(r.iter().all(|&v| v == 1))
        }
        "Cast" => {
            let trusted = matches!(g.value(x).def(), Def::Initializer | Def::Input);
            let from = if trusted {
                g.dtype(x)
            } else {
                facts.and_then(|f| f.dtype(name(x)))
            };
            let to = node.attr_i("to").ok_or(Refusal::NotMine)?;
            match from {
                Some(d) => yes(d.0 as i64 == to),
                None => Err("its input's element type is not proven".into()),
            }
        }
        "Reshape" | "Expand" | "Flatten" => shape_kept(x),
        "Slice" => {
            let steps_positive = match node.input(4) {
                Some(s) => g.const_ints(s).is_some_and(|s| s.iter().all(|&v| v > 0)),
                None => true,
            };
            if !steps_positive {
                return Err(Refusal::NotMine);
            }
            if takes_whole_axes(g, n) {
                return Ok(x);
            }
            shape_kept(x)
        }
        "Squeeze" | "Unsqueeze" => {
            // Unsqueeze(Squeeze(x, a), a) and Squeeze(Unsqueeze(x, a), a): both name axes of
            // the larger rank (the Squeeze's input, the Unsqueeze's output).
            let undone = if node.is("Squeeze") {
                "Unsqueeze"
            } else {
                "Squeeze"
            };
            let p = crate::passes::producer_op(g, x, undone).ok_or(Refusal::NotMine)?;
            let larger = if node.is("Squeeze") { x } else { y };
            let rank = facts.and_then(|f| f.rank(name(larger)));
            let axes = |n| {
                squeeze_axes(g, n, rank).ok_or(
                    "an op's axes are not constant, absent, or negative with the rank unknown",
                )
            };
            if axes(p)? != axes(n)? {
                return Err(Refusal::NotMine);
            }
            g.node(p).input(0).ok_or(Refusal::NotMine)
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let one = matches!(node.op(), "Mul" | "Div");
            let commutes = matches!(node.op(), "Add" | "Mul");
            let b = node.input(1).ok_or(Refusal::NotMine)?;
            let neutral = |v: ValueId| g.value(v).constant().is_some_and(|t| is_splat(t, one));
            if neutral(b) {
                shape_kept(x)
            } else if commutes && neutral(x) {
                shape_kept(b)
            } else {
                Err(Refusal::NotMine)
            }
        }
        _ => Err(Refusal::NotMine),
    }
}

/// Whether Slice `n` (opset 10+) provably takes every axis it names whole, whatever the
/// input's dims: start 0, step 1 and an end no dim can reach (exporters write INT64_MAX or
/// INT32_MAX for "to the end"), so that it holds for symbolic dims too.
fn takes_whole_axes(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let arg = |i: usize| node.input(i).map(|v| g.const_ints(v));
    let (Some(Some(starts)), Some(Some(ends))) = (arg(1), arg(2)) else {
        return false;
    };
    let steps_one = match arg(4) {
        None => true,
        Some(steps) => steps.is_some_and(|s| s.iter().all(|&v| v == 1)),
    };
    let axes_known = !matches!(arg(3), Some(None));
    steps_one
        && axes_known
        && starts.len() == ends.len()
        && starts.iter().all(|&s| s == 0)
        && ends.iter().all(|&e| e >= i32::MAX as i64)
}

impl Rewrite for EliminateNoop {
    type Match = Forward;
    const ID: &'static str = "eliminate-noop";
    const ABOUT: &'static str = "remove nodes that return an input unchanged: identity Transposes, zero Pads, same-type Casts, x+0, x*1, ...";
    const NEEDS_FACTS: bool = true;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        OPS.iter().any(|op| g.node(n).is(op))
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Forward, Refusal> {
        forward(g, n, forwarded(g, n, look.facts)?)
    }

    fn apply(&self, patch: &mut Patch, f: Forward) -> Result<()> {
        remove_forwarding(patch, f)
    }
}
