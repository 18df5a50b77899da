//! `fuse-mul-conv`: a scalar or per-input-channel constant multiplying (or dividing) a Conv's
//! (or ConvTranspose's) input scales its weights along their input-channel axis.
//!
//! ```text
//!   x ─▶ Mul(x, k) ─▶ s ─▶ Conv(s, W, b?) ─▶ y        ⇒        x ─▶ Conv(x, W · k, b?) ─▶ y
//!   x ─▶ Div(x, k) ─▶ s ─▶ Conv(s, W, b?) ─▶ y        ⇒        x ─▶ Conv(x, W / k, b?) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []   (C = the Conv's input channels)
//! ```
//!
//! A convolution is linear in its input and its zero padding is unchanged by scaling, so a
//! scale of input channel c moves onto every weight that reads channel c: a Conv's weight is
//! [C_out, C_in / group, k...] (group g's outputs read its slice of inputs), a ConvTranspose's
//! [C_in, C_out / group, k...]. The bias is not touched. MobileNetV3-style backbones carry
//! one such Mul per block.
//!
//! Preconditions: W is an f32 initializer (not a graph input) whose dims split into the groups;
//! `k` an f32 initializer of one value per input channel (or one value), laid out on the
//! channel axis; a Mul's operands in either order, a Div's constant second (x / k; no zero in
//! k); `s` read only by the Conv and not a graph output (several Convs reading one scale each get
//! their own copy of it from the driver, `Refusal::Shared`). Refuses otherwise. W is never edited in
//! place (it may be shared). Runs after `fuse-pad-conv` (a Pad between the two goes first) and
//! `fold-constants` (k is an initializer by then). Runs inside subgraphs too.

use anyhow::{Context, Result};

use crate::ir::{Graph, NodeId, Patch, Tensor, ValueId};
use crate::passes::channels::{f32_weight, per_channel, scale_runs, ConvKind};
use crate::passes::{operand_where, shared_reads, Look, Refusal, Rewrite};

pub struct FuseMulConv;

pub struct Found {
    conv: NodeId,
    kind: ConvKind,
    /// The scaling node, and the value it scales.
    scale: NodeId,
    x: ValueId,
    weight: ValueId,
    /// One factor per input channel.
    factor: Vec<f64>,
}

/// Input channels of a weight of `kind` with `dims`.
fn in_channels(kind: ConvKind, dims: &[i64], group: usize) -> Option<usize> {
    match kind {
        ConvKind::Conv => dims.get(1).map(|&d| d as usize * group),
        ConvKind::Transpose { .. } => dims.first().map(|&d| d as usize),
    }
}

fn match_at(g: &Graph, conv: NodeId) -> Result<Found, Refusal> {
    let node = g.node(conv);
    let kind = ConvKind::of(g, conv).ok_or(Refusal::NotMine)?;
    let s = node.input(0).ok_or(Refusal::NotMine)?;
    let scale = g
        .producer(s)
        .filter(|&p| g.node(p).is("Mul") || g.node(p).is("Div"))
        .ok_or(Refusal::NotMine)?;
    let constant = |v: ValueId| g.value(v).constant().is_some();
    let (k, x) = if g.node(scale).is("Mul") {
        operand_where(g, scale, constant)
    } else {
        let sn = g.node(scale);
        sn.input(1).filter(|&k| constant(k)).zip(sn.input(0))
    }
    .ok_or("its input is scaled by a value that is not a constant")?;
    if let Some(why) = shared_reads(g, s, "the scaled value") {
        return Err(Refusal::Shared(s, why.into()));
    }
    let (weight, w) = f32_weight(g, conv)?;
    let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
    let splits = kind.out_channels(w.dims()).is_some_and(|c| c % group == 0);
    let channels = in_channels(kind, w.dims(), group)
        .filter(|_| splits && w.dims().len() >= 3)
        .ok_or("its weight has too few dims or does not split into its groups")?;
    let k = per_channel(g, k, channels, w.dims().len())
        .map_err(|_| "the scale is not one constant f32 value per input channel")?;
    if g.node(scale).is("Div") && k.contains(&0.0) {
        return Err("it divides by zero".into());
    }
    let div = g.node(scale).is("Div");
    Ok(Found {
        conv,
        kind,
        scale,
        x,
        weight,
        factor: k
            .iter()
            .map(|&k| if div { 1.0 / k as f64 } else { k as f64 })
            .collect(),
    })
}

/// `w` with each element scaled by the factor of the input channel it reads.
fn scale_inputs(kind: ConvKind, w: &Tensor, factor: &[f64], group: usize) -> Option<Tensor> {
    let dims = w.dims();
    let kernel: usize = dims[2..].iter().map(|&d| d as usize).product();
    match kind {
        // Runs of one kernel, enumerating (output o, input j of o's group).
        ConvKind::Conv => {
            let (cout, per_group) = (dims[0] as usize, dims[1] as usize);
            let outs_per_group = cout / group;
            let channel = |r: usize| (r / per_group) / outs_per_group * per_group + r % per_group;
            scale_runs(w, factor, kernel, &channel)
        }
        // Runs of every output's kernel, one input channel each.
        ConvKind::Transpose { .. } => scale_runs(w, factor, dims[1] as usize * kernel, &|r| r),
    }
}

impl Rewrite for FuseMulConv {
    type Match = Found;
    const ID: &'static str = "fuse-mul-conv";
    const ABOUT: &'static str =
        "fold a per-input-channel constant Mul or Div before a Conv into its weights";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        ConvKind::of(g, n).is_some()
            && g.node(n)
                .input(0)
                .and_then(|s| g.producer(s))
                .is_some_and(|p| g.node(p).is("Mul") || g.node(p).is("Div"))
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<Found, Refusal> {
        match_at(g, n)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        let g = patch.graph();
        let group = g.node(f.conv).attr_i("group").unwrap_or(1).max(1) as usize;
        let name = g.value(f.weight).name().to_string();
        let scaled = g
            .value(f.weight)
            .constant()
            .and_then(|w| scale_inputs(f.kind, w, &f.factor, group))
            .context("the matched weight cannot be scaled")?;
        let w = patch.add_initializer(&format!("{name}_input_scaled"), scaled)?;
        patch.set_input(f.conv, 0, Some(f.x));
        patch.set_input(f.conv, 1, Some(w));
        patch.remove_node(f.scale)
    }
}
