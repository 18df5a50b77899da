//! `fuse-conv-mul`: a per-channel constant multiplying a Conv's output scales its weights.
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ Mul(c, k) ─▶ y        ⇒        x ─▶ Conv(W · k, b · k) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []   (scaled per output channel)
//! ```
//!
//! Preconditions and refusals as for `fuse-conv-add`. W is never edited in place (it may be
//! shared); the scaled copy is a new initializer. Runs inside subgraphs too.

use anyhow::Result;

use super::{conv_before, per_channel, ConvBefore};
use crate::ir::{Model, NodeId, Patch, Tensor};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct FuseConvMul;

impl Pass for FuseConvMul {
    fn id(&self) -> &'static str {
        "fuse-conv-mul"
    }

    fn about(&self) -> &'static str {
        "fold a per-channel constant Mul after a Conv into its weights"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g| {
            let mut done = 0;
            let mut muls: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is("Mul")).collect();
            muls.sort();
            for mul in muls {
                let m: Result<(ConvBefore, Vec<f32>), &str> = conv_before(g, mul).and_then(|m| {
                    let k = per_channel(g, m.constant, m.channels, m.rank)?;
                    Ok((m, k))
                });
                let (m, k) = match m {
                    Ok(m) => m,
                    Err(why) => {
                        if why != super::NOT_AFTER_CONV {
                            let name = g.node(mul).name.clone();
                            cx.refuse("fuse-conv-mul", &name, "Mul", why);
                        }
                        continue;
                    }
                };
                let w = g
                    .value(m.weight)
                    .constant()
                    .and_then(Tensor::to_f32_vec)
                    .unwrap_or_default();
                let per = w.len() / m.channels;
                let scaled: Vec<f32> = w.iter().enumerate().map(|(i, &v)| v * k[i / per]).collect();
                let dims = g
                    .value(m.weight)
                    .constant()
                    .map(|t| t.dims().to_vec())
                    .unwrap_or_default();
                let mut patch = Patch::new(g);
                let wid = patch.add_initializer(
                    &format!("{}_scaled", m.weight_name),
                    Tensor::from_f32(dims, &scaled),
                )?;
                let bid = match &m.bias {
                    Some(b) => {
                        let scaled: Vec<f32> = b.iter().zip(&k).map(|(b, k)| b * k).collect();
                        Some(patch.add_initializer(
                            &format!("{}_scaled_bias", m.weight_name),
                            Tensor::from_f32(vec![m.channels as i64], &scaled),
                        )?)
                    }
                    None => None,
                };
                patch.set_inputs(m.conv, &[Some(m.x), Some(wid), bid]);
                patch.replace_value(m.out, m.conv_out)?;
                patch.remove_node(mul)?;
                done += patch.commit()?;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
