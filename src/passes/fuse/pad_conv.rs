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
//! graph output (several such ops reading one Pad each get their own copy of it from the
//! driver, `Refusal::Shared`); the op's `auto_pad` is NOTSET. Refuses otherwise; MaxPool is never fused (it
//! pads with −∞, not zero). Runs after `eliminate-noop` (a zero Pad is removed, not fused).
//! Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Attr, Graph, NodeId, Patch, ValueId};
use crate::passes::{shared_reads, Look, Refusal, Rewrite};

pub struct FusePadConv;

pub struct Found {
    op: NodeId,
    pad: NodeId,
    x: ValueId,
    pads: Vec<i64>,
    count_include_pad: bool,
}

/// Whether the Pad's fill value is zero.
fn pads_with_zero(g: &Graph, pad: NodeId) -> Result<bool, Refusal> {
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

fn match_at(g: &Graph, n: NodeId) -> Result<Found, Refusal> {
    let node = g.node(n);
    let p = node.input(0).ok_or(Refusal::NotMine)?;
    let pad = crate::passes::producer_op(g, p, "Pad").ok_or(Refusal::NotMine)?;
    if node.is("MaxPool") {
        return Err("MaxPool pads with -inf, not with the Pad's zeros".into());
    }
    if let Some(why) = shared_reads(g, p, "the Pad's output") {
        return Err(Refusal::Shared(p, why.into()));
    }
    let pn = g.node(pad);
    if pn.attr_s("mode").is_some_and(|m| m != b"constant") {
        return Err("the Pad is not in constant mode".into());
    }
    if !pads_with_zero(g, pad)? {
        return Err("the Pad's value is not zero".into());
    }
    if pn.input(3).is_some() {
        return Err("the Pad names its axes".into());
    }
    let pads = match pn.input(1) {
        Some(v) => g.const_ints(v).ok_or("the Pad's pads are not constant")?,
        None => pn.attr_ints("pads").ok_or("the Pad has no pads")?.to_vec(),
    };
    if node
        .attr_s("auto_pad")
        .is_some_and(|s| !s.is_empty() && s != b"NOTSET")
    {
        return Err("it pads automatically (auto_pad)".into());
    }
    let rank = pads.len() / 2;
    let spatial = match node.op() {
        "Conv" => node
            .input(1)
            .and_then(|w| g.value(w).constant())
            .map(|t| t.dims().len().saturating_sub(2))
            .ok_or("the Conv's weight is not a constant")?,
        _ => node.attr_ints("kernel_shape").map_or(0, <[i64]>::len),
    };
    if pads.len() % 2 != 0 || rank != spatial + 2 {
        return Err("the Pad's rank does not match the op's".into());
    }
    if pads.iter().any(|&v| v < 0) {
        return Err("the Pad crops (negative pads)".into());
    }
    if pads[0] != 0 || pads[1] != 0 || pads[rank] != 0 || pads[rank + 1] != 0 {
        return Err("the Pad pads the batch or channel axis".into());
    }
    let own = node.attr_ints("pads").map(<[i64]>::to_vec);
    let count_include_pad = node.attr_i("count_include_pad") == Some(1);
    if node.is("AveragePool")
        && !count_include_pad
        && own.as_ref().is_some_and(|o| o.iter().any(|&v| v != 0))
    {
        return Err("the AveragePool pads without counting padded zeros".into());
    }
    let own = own.unwrap_or(vec![0; 2 * spatial]);
    if own.len() != 2 * spatial {
        return Err("the op's pads do not match its rank".into());
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

impl Rewrite for FusePadConv {
    type Match = Found;
    const ID: &'static str = "fuse-pad-conv";
    const ABOUT: &'static str =
        "fold a constant-zero Pad into the padding of the Conv or AveragePool after it";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        ["Conv", "AveragePool", "MaxPool"]
            .iter()
            .any(|op| g.node(n).is(op))
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<Found, Refusal> {
        match_at(g, n)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        patch.set_input(f.op, 0, Some(f.x));
        patch.set_attr(f.op, Attr::ints("pads", &f.pads));
        if patch.graph().node(f.op).is("AveragePool") && !f.count_include_pad {
            patch.set_attr(f.op, Attr::int("count_include_pad", 1));
        }
        patch.remove_node(f.pad)
    }
}
