//! `fuse-pad-conv`: a constant-zero Pad before a Conv or AveragePool becomes the op's own
//! padding.
//!
//! ```text
//!   x ─▶ Pad(pads=[0,0,1,1, 0,0,1,1], 0) ─▶ p ─▶ Conv(W, pads=[0,0,0,0]) ─▶ y
//!                                  ⇒
//!   x ─▶ Conv(W, pads=[1,1,1,1]) ─▶ y
//! ```
//!
//! Zero padding is what a Conv's `pads` add, so the two compose by adding the Pad's spatial
//! amounts to the Conv's. An AveragePool takes them when it counts padded zeros in its average
//! (`count_include_pad=1`), or when it has no padding of its own, in which case it starts
//! counting them. Preconditions: Pad mode `constant` with value 0, constant non-negative pads
//! that leave batch and channel axes alone, no `axes` input; `p` read only by the op and not a
//! graph output; the op's `auto_pad` is NOTSET. Refuses otherwise; MaxPool is never fused (it
//! pads with −∞, not zero). Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Attr, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct FusePadConv;

struct Found {
    op: NodeId,
    pad: NodeId,
    x: ValueId,
    pads: Vec<i64>,
    count_include_pad: bool,
}

/// Whether the Pad's fill value is zero.
fn pads_with_zero(g: &Graph, pad: NodeId) -> Result<bool, &'static str> {
    let node = g.node(pad);
    match node.input(2) {
        Some(v) => {
            let t = g
                .value(v)
                .constant()
                .ok_or("the Pad's value is not a constant")?;
            Ok(t.raw_bytes().is_some_and(|b| b.iter().all(|&x| x == 0)))
        }
        None => Ok(node.attr_f("value").unwrap_or(0.0) == 0.0),
    }
}

/// The refusal for ops that simply do not follow a Pad: too common to report.
const NOT_PADDED: &str = "its input is not a Pad's output";

fn match_at(g: &Graph, n: NodeId) -> Result<Found, &'static str> {
    let node = g.node(n);
    let p = node.input(0).ok_or(NOT_PADDED)?;
    let pad = g
        .producer(p)
        .filter(|&q| g.node(q).is("Pad"))
        .ok_or(NOT_PADDED)?;
    if node.is("MaxPool") {
        return Err("MaxPool pads with -inf, not with the Pad's zeros");
    }
    if g.value(p).uses().len() != 1 || g.is_output(p) {
        return Err("the Pad's output has other readers");
    }
    let pn = g.node(pad);
    let mode = pn.attr("mode").map(|a| a.proto.s.to_vec());
    if mode.is_some_and(|m| m != b"constant") {
        return Err("the Pad is not in constant mode");
    }
    if !pads_with_zero(g, pad)? {
        return Err("the Pad's value is not zero");
    }
    if pn.input(3).is_some() {
        return Err("the Pad names its axes");
    }
    let pads = match pn.input(1) {
        Some(v) => g.const_ints(v).ok_or("the Pad's pads are not constant")?,
        None => pn.attr_ints("pads").ok_or("the Pad has no pads")?.to_vec(),
    };
    if node
        .attr("auto_pad")
        .is_some_and(|a| !a.proto.s.is_empty() && &a.proto.s[..] != b"NOTSET")
    {
        return Err("it pads automatically (auto_pad)");
    }
    let rank = pads.len() / 2;
    let spatial = match node.op.as_str() {
        "Conv" => node
            .input(1)
            .and_then(|w| g.value(w).constant())
            .map(|t| t.dims().len().saturating_sub(2))
            .ok_or("the Conv's weight is not a constant")?,
        _ => node.attr_ints("kernel_shape").map_or(0, <[i64]>::len),
    };
    if pads.len() % 2 != 0 || rank != spatial + 2 {
        return Err("the Pad's rank does not match the op's");
    }
    if pads.iter().any(|&v| v < 0) {
        return Err("the Pad crops (negative pads)");
    }
    if pads[0] != 0 || pads[1] != 0 || pads[rank] != 0 || pads[rank + 1] != 0 {
        return Err("the Pad pads the batch or channel axis");
    }
    let own = node.attr_ints("pads").map(<[i64]>::to_vec);
    let count_include_pad = node.attr_i("count_include_pad") == Some(1);
    if node.is("AveragePool")
        && !count_include_pad
        && own.as_ref().is_some_and(|o| o.iter().any(|&v| v != 0))
    {
        return Err("the AveragePool pads without counting padded zeros");
    }
    let own = own.unwrap_or(vec![0; 2 * spatial]);
    if own.len() != 2 * spatial {
        return Err("the op's pads do not match its rank");
    }
    let begins = &pads[2..rank];
    let ends = &pads[rank + 2..];
    let merged: Vec<i64> = begins
        .iter()
        .chain(ends)
        .zip(&own)
        .map(|(a, b)| a + b)
        .collect();
    Ok(Found {
        op: n,
        pad,
        x: pn.input(0).ok_or("the Pad has no input")?,
        pads: merged,
        count_include_pad,
    })
}

impl Pass for FusePadConv {
    fn id(&self) -> &'static str {
        "fuse-pad-conv"
    }

    fn about(&self) -> &'static str {
        "fold a constant-zero Pad into the padding of the Conv or AveragePool after it"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let mut ops: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| {
                    ["Conv", "AveragePool", "MaxPool"]
                        .iter()
                        .any(|op| g.node(n).is(op))
                })
                .collect();
            ops.sort();
            let mut found = Vec::new();
            for n in ops {
                match match_at(g, n) {
                    Ok(f) => found.push(f),
                    Err(NOT_PADDED) => {}
                    Err(why) => {
                        let node = g.node(n);
                        cx.refuse("fuse-pad-conv", &node.name, &node.op, why);
                    }
                }
            }
            let mut patch = Patch::new(g);
            for f in found {
                let mut inputs = patch.graph().node(f.op).inputs().to_vec();
                inputs[0] = Some(f.x);
                patch.set_inputs(f.op, &inputs);
                patch.set_attr(f.op, Attr::ints("pads", &f.pads));
                if patch.graph().node(f.op).is("AveragePool") && !f.count_include_pad {
                    patch.set_attr(f.op, Attr::int("count_include_pad", 1));
                }
                patch.remove_node(f.pad)?;
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
