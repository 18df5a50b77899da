//! `fuse-conv-bn`: an inference BatchNormalization after a Conv or ConvTranspose folds into
//! its weights.
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ BatchNormalization(γ, β, μ, σ², ε) ─▶ y
//!                                  ⇒
//!   x ─▶ Conv(W', b') ─▶ y      s = γ / √(σ² + ε)   W' = W · s (per output channel)
//!                               b' = (b − μ) · s + β
//! ```
//!
//! A Conv's output channels are W's first axis; a ConvTranspose's are its second, repeated per
//! group (see `ConvKind`).
//!
//! Preconditions: W, b, γ, β, μ, σ² are f32 initializers (not graph inputs, which a caller
//! could override); `c` is read only by the BatchNormalization and is not a graph output; the
//! BatchNormalization is in inference mode (no `training_mode=1`, no extra outputs read).
//! Refuses otherwise, naming the reason under `--explain`. W is never edited in place (another
//! Conv may share it): W' and b' are new initializers, and dead-code removes the old ones.
//! Arithmetic is in f64, rounded once to f32. Runs inside subgraphs too.

use anyhow::{Context, Result};

use super::{BnAffine, ConvKind};
use crate::ir::{Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct FuseConvBn;

pub struct ConvBn {
    conv: NodeId,
    bn: NodeId,
    x: ValueId,
    /// Output of the BatchNormalization, which the fused Conv produces.
    y: ValueId,
    weight: Tensor,
    bias: Option<Vec<f32>>,
    affine: BnAffine,
    weight_name: String,
    kind: ConvKind,
}

fn f32_constant(g: &Graph, v: Option<ValueId>) -> Option<(Vec<f32>, Vec<i64>)> {
    let t = g.value(v?).constant()?;
    Some((t.to_f32_vec()?, t.dims().to_vec()))
}

/// Matches a Conv ⇒ BatchNormalization pair ending at `bn`.
fn match_at(g: &Graph, bn: NodeId) -> Result<ConvBn, &'static str> {
    let node = g.node(bn);
    let c = node.input(0).ok_or("it has no input")?;
    let conv = g.producer(c).ok_or("its input is not produced by a Conv")?;
    let cnode = g.node(conv);
    let kind = ConvKind::of(g, conv).ok_or("its input is not produced by a Conv")?;
    if g.value(c).uses().len() != 1 || g.is_output(c) {
        return Err("the Conv's output has other readers");
    }
    let y = node.output(0).ok_or("it has no output")?;
    let x = cnode.input(0).ok_or("the Conv has no input")?;
    let weight = cnode
        .input(1)
        .and_then(|w| g.value(w).constant())
        .filter(|t| t.f32_bytes().is_some())
        .ok_or("the Conv's weight is not an f32 initializer")?
        .clone();
    let bias = match cnode.input(2) {
        None => None,
        Some(b) => Some(
            f32_constant(g, Some(b))
                .ok_or("the Conv's bias is not an f32 initializer")?
                .0,
        ),
    };
    let cout = kind
        .out_channels(weight.dims())
        .ok_or("the Conv's weight has too few dims or does not split into its groups")?;
    let affine = BnAffine::of(g, bn, cout)?;
    if bias.as_ref().is_some_and(|b| b.len() != cout) {
        return Err("the Conv's bias does not have one value per output channel");
    }
    Ok(ConvBn {
        conv,
        bn,
        x,
        y,
        weight,
        bias,
        affine,
        weight_name: g.value(cnode.input(1).unwrap()).name().to_string(),
        kind,
    })
}

fn rewrite(g: &mut Graph, m: ConvBn) -> Result<usize> {
    let cout = m.affine.scale.len();
    let new_w = m
        .kind
        .scale_weight(&m.weight, &m.affine.scale)
        .context("the matched weight cannot be scaled")?;
    let new_b: Vec<f32> = (0..cout)
        .map(|o| {
            m.affine
                .bias(o, m.bias.as_ref().map_or(0.0, |b| b[o] as f64))
        })
        .collect();
    let mut patch = Patch::new(g);
    let w_id = patch.add_initializer(&format!("{}_fused_bn", m.weight_name), new_w)?;
    let b_id = patch.add_initializer(
        &format!("{}_fused_bn_bias", m.weight_name),
        Tensor::from_f32(vec![cout as i64], &new_b),
    )?;
    patch.set_inputs(m.conv, &[Some(m.x), Some(w_id), Some(b_id)]);
    let c = patch.graph().node(m.conv).output(0).unwrap();
    patch.replace_value(m.y, c)?;
    patch.remove_node(m.bn)?;
    patch.commit()
}

impl Pass for FuseConvBn {
    fn id(&self) -> &'static str {
        "fuse-conv-bn"
    }

    fn about(&self) -> &'static str {
        "fold an inference BatchNormalization into the Conv or ConvTranspose before it"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let mut done = 0;
            let mut bns: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| g.node(n).is("BatchNormalization"))
                .collect();
            bns.sort();
            for bn in bns {
                match match_at(g, bn) {
                    Ok(m) => done += rewrite(g, m)?,
                    Err(why) => {
                        let name = g.node(bn).name.clone();
                        cx.refuse("fuse-conv-bn", &name, "BatchNormalization", why);
                    }
                }
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
