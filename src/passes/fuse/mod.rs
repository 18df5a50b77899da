//! Fusion: rewrites that merge operators into fewer, equivalent ones.

pub mod conv_add;
pub mod conv_bn;
pub mod conv_mul;
pub mod gelu;
pub mod gemm_bn;
pub mod layer_norm;
pub mod matmul_add;
pub mod pad_conv;

use anyhow::Result;

use crate::ir::{DType, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{for_each_graph, Changed, PassContext};

/// The single node reading `v`, when it is an `op` and `v` is not a graph output.
pub fn only_reader(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    let uses = g.value(v).uses();
    (uses.len() == 1 && !g.is_output(v) && g.node(uses[0].node).is(op)).then(|| uses[0].node)
}

/// The node producing `v`, when it is an `op`.
pub fn producer_op(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    g.producer(v).filter(|&n| g.node(n).is(op))
}

/// The value of a one-element f32 constant.
pub fn scalar(g: &Graph, v: Option<ValueId>) -> Option<f32> {
    let t = g.value(v?).constant()?;
    let vals = t.to_f32_vec()?;
    (vals.len() == 1).then(|| vals[0])
}

/// Makes a Conv's new weight and optional bias from a match and the per-channel values.
pub type FoldIntoConv =
    dyn Fn(&mut Patch, &ConvBefore, &[f32]) -> Result<(ValueId, Option<ValueId>)>;

/// Folds every `op(conv_output, per-channel constant)` into its Conv, in every graph: `fold`
/// makes the new weight and bias (as initializers) from the match and the constant's values.
pub fn fuse_after_conv(
    model: &mut Model,
    op: &str,
    pass: &str,
    cx: &mut PassContext,
    fold: &FoldIntoConv,
) -> Result<Changed> {
    let n = for_each_graph(&mut model.graph, &mut |g, _| {
        let mut done = 0;
        let mut nodes: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is(op)).collect();
        nodes.sort();
        for n in nodes {
            let matched = conv_before(g, n).and_then(|m| {
                let k = per_channel(g, m.constant, m.channels, m.rank)?;
                Ok((m, k))
            });
            let (m, k) = match matched {
                Ok(found) => found,
                Err(why) => {
                    if why != NOT_AFTER_CONV {
                        let name = g.node(n).name.clone();
                        cx.refuse(pass, &name, op, why);
                    }
                    continue;
                }
            };
            let mut patch = Patch::new(g);
            let (w, b) = fold(&mut patch, &m, &k)?;
            patch.set_inputs(m.conv, &[Some(m.x), Some(w), b]);
            patch.replace_value(m.out, m.conv_out)?;
            patch.remove_node(n)?;
            done += patch.commit()?;
        }
        Ok(done)
    })?;
    Ok(Changed::from_count(n))
}

/// Where a convolution's output channels lie in its weight: a Conv's are the first axis; a
/// ConvTranspose's are the second, repeated per group (its weight is [C_in, C_out / group, k...]).
#[derive(Clone, Copy, Debug)]
pub enum ConvKind {
    Conv,
    Transpose { group: usize },
}

impl ConvKind {
    pub fn of(g: &Graph, n: NodeId) -> Option<ConvKind> {
        let node = g.node(n);
        if node.is("Conv") {
            Some(ConvKind::Conv)
        } else if node.is("ConvTranspose") {
            let group = node.attr_i("group").unwrap_or(1).max(1) as usize;
            Some(ConvKind::Transpose { group })
        } else {
            None
        }
    }

    pub fn out_channels(self, dims: &[i64]) -> Option<usize> {
        match self {
            ConvKind::Conv => dims.first().map(|&d| d as usize),
            ConvKind::Transpose { group } => {
                let cin = *dims.first()? as usize;
                cin.is_multiple_of(group).then_some(())?;
                dims.get(1).map(|&d| d as usize * group)
            }
        }
    }

    /// `w`, a weight of this kind of convolution, with every element multiplied by the factor
    /// of the output channel it feeds (see [`scale_runs`]). `None` unless `w` is f32 with a
    /// payload its dims agree with and `factor` has one value per output channel.
    pub fn scale_weight(self, w: &Tensor, factor: &[f64]) -> Option<Tensor> {
        let dims = w.dims();
        if self.out_channels(dims)? != factor.len() || factor.is_empty() {
            return None;
        }
        // The weight is a sequence of runs of elements that feed one output channel: a Conv's
        // whole [C_in / group, k...] block, a ConvTranspose's kernel.
        let numel = w.len() as usize;
        match self {
            ConvKind::Conv => scale_runs(w, factor, numel / factor.len(), &|r| r),
            ConvKind::Transpose { group } => {
                let (cin, per_group) = (dims[0] as usize, dims[1] as usize);
                let kernel = numel / (cin * per_group).max(1);
                let in_per_group = cin / group;
                let channel = |r: usize| r / per_group / in_per_group * per_group + r % per_group;
                scale_runs(w, factor, kernel, &channel)
            }
        }
    }
}

/// `w`, an f32 tensor whose payload agrees with its dims, with run `r` of `run` consecutive
/// elements multiplied by `factor[channel(r)]`, each product computed in f64 and rounded once.
/// Reads the payload straight into one new buffer, so a large weight is never held twice more.
pub fn scale_runs(
    w: &Tensor,
    factor: &[f64],
    run: usize,
    channel: &dyn Fn(usize) -> usize,
) -> Option<Tensor> {
    let raw = w.f32_bytes()?;
    let mut out = vec![0u8; raw.len()];
    if run > 0 {
        let runs = raw.chunks_exact(4 * run).zip(out.chunks_exact_mut(4 * run));
        for (r, (src, dst)) in runs.enumerate() {
            let f = *factor.get(channel(r))?;
            for (x, y) in src.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
                let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64;
                y.copy_from_slice(&((x * f) as f32).to_le_bytes());
            }
        }
    }
    Some(Tensor::from_raw(DType::F32, w.dims().to_vec(), out.into()))
}

/// An inference BatchNormalization as the per-channel affine map it computes:
/// y = (x − μ) · s + β with s = γ / √(σ² + ε), in f64.
pub struct BnAffine {
    pub scale: Vec<f64>,
    mean: Vec<f64>,
    beta: Vec<f64>,
}

impl BnAffine {
    /// Reads the BatchNormalization at `bn` for `channels` channels. Refuses training mode,
    /// read running-statistics outputs, and parameters that are not f32 initializers of one
    /// value per channel.
    pub fn of(g: &Graph, bn: NodeId, channels: usize) -> Result<BnAffine, &'static str> {
        let node = g.node(bn);
        if node.attr_i("training_mode") == Some(1) {
            return Err("it is in training mode");
        }
        if node.outputs()[1..]
            .iter()
            .flatten()
            .any(|&v| !g.value(v).uses().is_empty() || g.is_output(v))
        {
            return Err("its running-statistics outputs are read");
        }
        let mut params: [Vec<f64>; 4] = Default::default();
        for (i, p) in params.iter_mut().enumerate() {
            let v = node
                .input(i + 1)
                .and_then(|v| g.value(v).constant())
                .and_then(Tensor::to_f32_vec)
                .ok_or("its parameters are not f32 initializers")?;
            if v.len() != channels {
                return Err("its parameters do not have one value per output channel");
            }
            *p = v.into_iter().map(f64::from).collect();
        }
        let [gamma, beta, mean, var] = params;
        let eps = node.attr_f("epsilon").unwrap_or(1e-5) as f64;
        let scale = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect();
        Ok(BnAffine { scale, mean, beta })
    }

    /// What a bias `b` of channel `o` becomes when the map folds into the op before it.
    pub fn bias(&self, o: usize, b: f64) -> f32 {
        ((b - self.mean[o]) * self.scale[o] + self.beta[o]) as f32
    }
}

/// A binary node whose one operand is a Conv's (or ConvTranspose's) sole output and whose
/// other is a constant.
pub struct ConvBefore {
    pub conv: NodeId,
    pub kind: ConvKind,
    pub x: ValueId,
    pub weight: ValueId,
    pub weight_name: String,
    pub bias: Option<Vec<f32>>,
    pub conv_out: ValueId,
    /// The binary node's other operand.
    pub constant: ValueId,
    /// The binary node's output.
    pub out: ValueId,
    pub channels: usize,
    /// Rank of the Conv's output (weight rank).
    pub rank: usize,
}

/// The refusal for binary nodes that simply do not follow a Conv: too common to report.
pub const NOT_AFTER_CONV: &str = "neither operand is a Conv output";

/// Matches `op(conv_output, constant)` in either order at `n`.
pub fn conv_before(g: &Graph, n: NodeId) -> Result<ConvBefore, &'static str> {
    let node = g.node(n);
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return Err(NOT_AFTER_CONV);
    };
    let is_conv = |v: ValueId| g.producer(v).filter(|&p| ConvKind::of(g, p).is_some());
    let (conv, conv_out, constant) = match (is_conv(a), is_conv(b)) {
        (Some(c), _) => (c, a, b),
        (None, Some(c)) => (c, b, a),
        _ => return Err(NOT_AFTER_CONV),
    };
    if g.value(conv_out).uses().len() != 1 || g.is_output(conv_out) {
        return Err("the Conv's output has other readers");
    }
    let cn = g.node(conv);
    let kind = ConvKind::of(g, conv).ok_or(NOT_AFTER_CONV)?;
    let x = cn.input(0).ok_or("the Conv has no input")?;
    let weight = cn.input(1).ok_or("the Conv has no weight")?;
    let w = g
        .value(weight)
        .constant()
        .filter(|t| t.f32_bytes().is_some())
        .ok_or("the Conv's weight is not an f32 initializer")?;
    let channels = kind
        .out_channels(w.dims())
        .ok_or("the Conv's weight has too few dims or does not split into its groups")?;
    let bias = match cn.input(2) {
        None => None,
        Some(b) => Some(
            g.value(b)
                .constant()
                .and_then(|t| t.to_f32_vec())
                .filter(|v| v.len() == channels)
                .ok_or("the Conv's bias is not an f32 initializer")?,
        ),
    };
    Ok(ConvBefore {
        conv,
        kind,
        x,
        weight,
        weight_name: g.value(weight).name().to_string(),
        bias,
        conv_out,
        constant,
        out: node.output(0).ok_or("it has no output")?,
        channels,
        rank: w.dims().len(),
    })
}

/// One value per output channel from a constant that broadcasts along the channel axis of a
/// rank-`rank` Conv output: shape [], [1], [C, 1, ..., 1] or [1, C, 1, ..., 1].
pub fn per_channel(
    g: &Graph,
    v: ValueId,
    channels: usize,
    rank: usize,
) -> Result<Vec<f32>, &'static str> {
    let t = g
        .value(v)
        .constant()
        .ok_or("the other operand is not a constant")?;
    let values = t.to_f32_vec().ok_or("the other operand is not f32")?;
    let dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
    if values.len() == 1 && dims.len() <= rank {
        return Ok(vec![values[0]; channels]);
    }
    // Right-aligned against [N, C, spatial...]: the channel axis is rank - 2 from the end.
    let from_end = rank - 1;
    let ok = dims.len() >= from_end
        && dims.len() <= rank
        && dims.iter().rev().enumerate().all(|(i, &d)| {
            if i == from_end - 1 {
                d == channels
            } else {
                d == 1
            }
        });
    if ok && values.len() == channels {
        Ok(values)
    } else {
        Err("the constant is not one value per output channel")
    }
}
