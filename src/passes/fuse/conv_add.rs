//! `fuse-conv-add`: a per-channel constant added after a Conv becomes the Conv's bias.
//!
//! ```text
//!   x ─▶ Conv(W, b?) ─▶ c ─▶ Add(c, k) ─▶ y        ⇒        x ─▶ Conv(W, b + k) ─▶ y
//!   k: f32 constant of shape [1, C, 1, 1], [C, 1, 1], [1] or []
//! ```
//!
//! Preconditions: W (and b) are f32 initializers; `c` is read only by the Add and is not a
//! graph output; `k` is an f32 initializer holding one value per output channel (or one value),
//! laid out so broadcasting puts it on the channel axis. Refuses otherwise. Runs inside
//! subgraphs too.

use anyhow::Result;

use super::{conv_before, per_channel, ConvBefore};
use crate::ir::{Model, NodeId, Patch, Tensor};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct FuseConvAdd;

impl Pass for FuseConvAdd {
    fn id(&self) -> &'static str {
        "fuse-conv-add"
    }

    fn about(&self) -> &'static str {
        "fold a per-channel constant Add after a Conv into its bias"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g| {
            let mut done = 0;
            let mut adds: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is("Add")).collect();
            adds.sort();
            for add in adds {
                let m: Result<(ConvBefore, Vec<f32>), &str> = conv_before(g, add).and_then(|m| {
                    let k = per_channel(g, m.constant, m.channels, m.rank)?;
                    Ok((m, k))
                });
                let (m, k) = match m {
                    Ok(m) => m,
                    Err(why) => {
                        if why != super::NOT_AFTER_CONV {
                            let name = g.node(add).name.clone();
                            cx.refuse("fuse-conv-add", &name, "Add", why);
                        }
                        continue;
                    }
                };
                let bias: Vec<f32> = (0..m.channels)
                    .map(|o| m.bias.as_ref().map_or(0.0, |b| b[o]) + k[o])
                    .collect();
                let mut patch = Patch::new(g);
                let b = patch.add_initializer(
                    &format!("{}_bias", m.weight_name),
                    Tensor::from_f32(vec![m.channels as i64], &bias),
                )?;
                patch.set_inputs(m.conv, &[Some(m.x), Some(m.weight), Some(b)]);
                patch.replace_value(m.out, m.conv_out)?;
                patch.remove_node(add)?;
                done += patch.commit()?;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
