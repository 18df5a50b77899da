//! Per-channel facts shared by the rewrites that fold into, quantize or prune convolutions and
//! matrix products: where a weight's output channels lie, scaling a weight per channel, a
//! BatchNormalization as the affine map it computes, per-channel constants, and the Conv that
//! produces a value.

use crate::ir::{DType, Graph, Node, NodeId, Tensor, ValueId};
use crate::passes::{shared_reads, Refusal};

/// The axes of a Conv, ConvTranspose, Gemm or MatMul weight that hold its output and its input
/// channels.
pub fn weight_axes(node: &Node) -> (usize, usize) {
    match node.op() {
        "ConvTranspose" => (1, 0),
        "Gemm" if node.attr_i("transB") == Some(1) => (0, 1),
        "Gemm" | "MatMul" => (1, 0),
        _ => (0, 1),
    }
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
        if node.outputs()[1..].iter().flatten().any(|&v| g.is_read(v)) {
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

/// The weight (input 1) of `n`, when it is an f32 initializer whose payload agrees with its
/// dims: what a rewrite may scale, split or quantize.
pub fn f32_weight(g: &Graph, n: NodeId) -> Result<(ValueId, &Tensor), &'static str> {
    let weight = g.node(n).input(1).ok_or("it has no weight")?;
    let w = g
        .value(weight)
        .constant()
        .filter(|t| t.f32_bytes().is_some())
        .ok_or("its weight is not an f32 initializer")?;
    Ok((weight, w))
}

/// A Conv or ConvTranspose producing a value only one node reads, with f32 initializer
/// weights: what a rewrite needs to fold something into it.
pub struct ConvAt {
    pub conv: NodeId,
    pub kind: ConvKind,
    pub x: ValueId,
    pub weight: ValueId,
    pub weight_name: String,
    pub bias: Option<Vec<f32>>,
    /// The Conv's output.
    pub out: ValueId,
    pub channels: usize,
    /// Rank of the Conv's output (the weight's rank).
    pub rank: usize,
}

/// The refusal for values that simply are not a Conv's output: too common to report.
fn not_conv() -> Refusal {
    Refusal::NotMine
}

impl ConvAt {
    /// The Conv producing `v`, when a rewrite may fold into it.
    pub fn producing(g: &Graph, v: ValueId) -> Result<ConvAt, Refusal> {
        let conv = g.producer(v).ok_or_else(not_conv)?;
        let kind = ConvKind::of(g, conv).ok_or_else(not_conv)?;
        if let Some(why) = shared_reads(g, v, "the Conv's output") {
            return Err(why.into());
        }
        let cn = g.node(conv);
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
                    .ok_or(
                        "the Conv's bias is not an f32 initializer of one value per output channel",
                    )?,
            ),
        };
        Ok(ConvAt {
            conv,
            kind,
            x,
            weight,
            weight_name: g.value(weight).name().to_string(),
            bias,
            out: v,
            channels,
            rank: w.dims().len(),
        })
    }

    /// The bias of output channel `o` (0 without a bias).
    pub fn bias_of(&self, o: usize) -> f32 {
        self.bias.as_ref().map_or(0.0, |b| b[o])
    }
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

/// The input channel that run `r` of a Conv weight [C_out, C_in / group, k...] reads, a run
/// being one kernel: output channel o = r / (C_in / group) reads channel j = r % (C_in /
/// group) of its group.
pub fn conv_input_of_run(r: usize, in_per_group: usize, out_per_group: usize) -> usize {
    let (o, j) = (r / in_per_group, r % in_per_group);
    o / out_per_group * in_per_group + j
}

/// The shape of a Conv weight as (C_out, C_in / group, kernel size, group), when its dims
/// agree with `group`.
fn conv_layout(w: &Tensor, group: usize) -> Option<(usize, usize, usize, usize)> {
    let dims = w.dims();
    let (cout, in_per_group) = (*dims.first()? as usize, *dims.get(1)? as usize);
    let kernel = dims[2..].iter().product::<i64>() as usize;
    (group > 0 && cout.is_multiple_of(group) && in_per_group > 0).then_some(())?;
    Some((cout, in_per_group, kernel, group))
}

/// The largest magnitude among the weights of a Conv weight `w` that read each input channel:
/// one value per input channel (C_in = group · C_in / group).
pub fn conv_input_ranges(w: &Tensor, group: usize) -> Option<Vec<f64>> {
    let (cout, in_per_group, kernel, group) = conv_layout(w, group)?;
    let values = w.to_f32_vec()?;
    let mut range = vec![0f64; in_per_group * group];
    for (r, run) in values.chunks_exact(kernel.max(1)).enumerate() {
        let c = conv_input_of_run(r, in_per_group, cout / group);
        for &v in run {
            range[c] = range[c].max((v as f64).abs());
        }
    }
    Some(range)
}

/// `w`, a Conv weight, with every element multiplied by the factor of the input channel it
/// reads (`factor` has one value per input channel); `None` when the dims disagree.
pub fn scale_conv_inputs(w: &Tensor, group: usize, factor: &[f64]) -> Option<Tensor> {
    let (cout, in_per_group, kernel, group) = conv_layout(w, group)?;
    if factor.len() != in_per_group * group {
        return None;
    }
    let channel = |r: usize| conv_input_of_run(r, in_per_group, cout / group);
    scale_runs(w, factor, kernel, &channel)
}

/// The largest magnitude of each output channel's weights of a Conv weight `w`.
pub fn conv_output_ranges(w: &Tensor) -> Option<Vec<f64>> {
    let cout = *w.dims().first()? as usize;
    let values = w.to_f32_vec()?;
    if cout == 0 || values.is_empty() || !values.len().is_multiple_of(cout) {
        return None;
    }
    Some(
        values
            .chunks_exact(values.len() / cout)
            .map(|run| run.iter().fold(0f64, |m, &v| m.max((v as f64).abs())))
            .collect(),
    )
}
