//! Fusion: rewrites that merge operators into fewer, equivalent ones.

pub mod conv_add;
pub mod conv_bn;
pub mod conv_mul;
pub mod gelu;
pub mod gemm_bn;
pub mod layer_norm;
pub mod matmul_add;
pub mod mul_conv;
pub mod pad_conv;

use anyhow::Result;

use crate::ir::{Graph, NodeId, Patch, ValueId};
use crate::passes::channels::{per_channel, ConvAt, ConvKind};
use crate::passes::{operand_where, Refusal};

/// `op(conv_output, k)` in either order, `k` a constant of one value per output channel.
pub struct AfterConv {
    pub conv: ConvAt,
    /// The binary node's output.
    pub out: ValueId,
    pub node: NodeId,
    /// The constant, one value per output channel.
    pub k: Vec<f32>,
}

/// Whether `n` is an `op` reading a Conv's output.
pub fn reads_conv(g: &Graph, n: NodeId, op: &str) -> bool {
    g.node(n).is(op)
        && g.node(n)
            .inputs()
            .iter()
            .flatten()
            .any(|&v| g.producer(v).is_some_and(|p| ConvKind::of(g, p).is_some()))
}

/// Matches `op(conv_output, k)` at `n`.
pub fn after_conv(g: &Graph, n: NodeId) -> Result<AfterConv, Refusal> {
    let is_conv = |v: ValueId| g.producer(v).is_some_and(|p| ConvKind::of(g, p).is_some());
    let (c, k) = operand_where(g, n, is_conv).ok_or(Refusal::NotMine)?;
    let conv = ConvAt::producing(g, c)?;
    let k = per_channel(g, k, conv.channels, conv.rank)?;
    Ok(AfterConv {
        conv,
        out: g.node(n).output(0).ok_or("it has no output")?,
        node: n,
        k,
    })
}

/// Makes the Conv of `m` compute `m`'s output with weight `w` and bias `b`.
pub fn fold_into_conv(
    patch: &mut Patch,
    m: &AfterConv,
    w: ValueId,
    b: Option<ValueId>,
) -> Result<()> {
    patch.set_inputs(m.conv.conv, &[Some(m.conv.x), Some(w), b]);
    patch.replace_value(m.out, m.conv.out)?;
    patch.remove_node(m.node)
}
