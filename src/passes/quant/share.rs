//! Ranges shared across values that runtimes move int8 through unchanged: around ops, the
//! values on either side of a move (a MaxPool, a Reshape, a nearest or linear Resize, ...)
//! and of a Concat of close ranges get one range, so that with equal scales and zero points
//! ONNX Runtime drops the DQ → op → Q around the move and moves int8 values.

use std::collections::HashMap;

use crate::ir::{Graph, NodeId, ValueId};
use crate::passes::union_find::UnionFind;

/// Ops whose output holds only values of their data input, moved or picked.
const MOVES: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Identity",
];

/// Whether `n` writes only values of its data input, or values between them: a [`MOVES`] op,
/// or a Resize that picks or interpolates linearly without extrapolating (a cubic one
/// overshoots, a crop-and-resize fills with a value of its own).
pub(crate) fn moves_values(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    if !node.in_standard_domain() {
        return false;
    }
    if node.is("Resize") {
        let mode = node.attr_s("mode").unwrap_or(b"nearest");
        let crop = node.attr_s("coordinate_transformation_mode") == Some(b"tf_crop_and_resize");
        return matches!(mode, b"nearest" | b"linear") && !crop;
    }
    MOVES.iter().any(|op| node.is(op))
}

/// How far apart the magnitudes of a Concat's inputs may be for them and its output to share
/// one range around ops, so that runtimes concatenate int8 values as they are: the smallest
/// then keeps at least 7 of int8's 8 bits. Farther apart, each keeps its own scale (and the
/// Concat requantizes), up to `qdq::CONCAT_SPREAD`, past which its reader stays float.
const CONCAT_CLOSE: f32 = 2.0;

/// Whether `n` is a Concat whose inputs are all calibrated, of magnitudes within
/// [`CONCAT_CLOSE`] of each other.
fn close_concat(g: &Graph, n: NodeId, ranges: &HashMap<String, (f32, f32)>) -> bool {
    let node = g.node(n);
    if !node.is("Concat") || !node.in_standard_domain() {
        return false;
    }
    let amax: Option<Vec<f32>> = node
        .inputs()
        .iter()
        .map(|v| {
            let &(lo, hi) = ranges.get(g.value((*v)?).name())?;
            Some(lo.abs().max(hi.abs()))
        })
        .collect();
    let Some(amax) = amax.filter(|a| a.len() >= 2) else {
        return false;
    };
    let (lo, hi) = amax
        .iter()
        .fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    lo > 0.0 && hi <= CONCAT_CLOSE * lo
}

/// Around ops, the values on either side of moves (a MaxPool between two quantized Convs, a
/// Reshape → Transpose → Reshape) and of a Concat of close ranges get one range, the union of those calibrated among them: with
/// equal scales and zero points, ONNX Runtime drops the DQ → op → Q around each move and moves
/// int8 values, and the union clips none of them. Values joined by moves are found as one set
/// (through values without a range of their own, and across branches).
pub fn share_through_moves(g: &Graph, ranges: &mut HashMap<String, (f32, f32)>) {
    let mut sets = UnionFind::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let Some(y) = node.output(0) else { continue };
        let sources: Vec<ValueId> = if moves_values(g, n) {
            node.input(0).into_iter().collect()
        } else if close_concat(g, n, ranges) {
            node.inputs().iter().flatten().copied().collect()
        } else {
            Vec::new()
        };
        for a in sources {
            sets.join(a, y);
        }
    }
    let members: Vec<ValueId> = sets.keys().collect();
    let mut union: HashMap<ValueId, (f32, f32)> = HashMap::new();
    for &v in &members {
        if let Some(&(lo, hi)) = ranges.get(g.value(v).name()) {
            let u = union.entry(sets.root(v)).or_insert((lo, hi));
            *u = (u.0.min(lo), u.1.max(hi));
        }
    }
    for v in members {
        let name = g.value(v).name();
        if ranges.contains_key(name) {
            let r = sets.root(v);
            ranges.insert(name.to_string(), union[&r]);
        }
    }
}
