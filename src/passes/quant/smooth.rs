//! `smooth-activations`: activation outliers moved into the weights of the matrix products
//! that read them (SmoothQuant, Xiao et al. 2023), before calibration. An exact float rewrite.
//!
//! ```text
//!   X ─▶ MatMul(W) ─▶ ...          ⇒   X ─▶ Mul(1/s) ─▶ MatMul(diag(s)·W) ─▶ ...
//!   X = LayerNorm(x; γ, β)         ⇒   X' = LayerNorm(x; γ/s, β/s) ─▶ MatMul(diag(s)·W)
//! ```
//!
//! A transformer's hidden states carry a few channels far larger than the rest; one int8
//! scale over them leaves the others a handful of levels. Dividing channel j by
//! s_j = √(max|X_j| / max|W_j|) (α = 0.5) and multiplying row j of each reader's weight by it
//! computes the same products, with the activation's channels evened out and the weights'
//! rows a little less even, which per-channel weight scales absorb. The 1/s folds into the
//! producer where it is a per-channel affine step read by these products alone (a
//! LayerNormalization's scale and bias; a decomposed LayerNorm's Mul by γ then Add of β);
//! elsewhere a Mul by 1/s is added (a residual path reading X keeps X).
//!
//! Matches an activation of rank 3 or more (a [batch, tokens, channels] sequence: not a CNN's
//! flattened head) read by MatMuls with a 2-D f32 weight, whose channel maxima the stage's
//! preparation measured on the samples. Refuses one whose largest channel is less than
//! [`SPREAD`] times the median (nothing to even out), an excluded reader. Main graph only.
//! Runs in its own stage after equalization and before quantization (`--no-smooth` leaves it
//! out), so that calibration sees the smoothed activations.

use std::collections::HashMap;

use anyhow::{anyhow, Result};

use super::calibrate::{calibrate, Watch};
use crate::ir::{Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::lossy::Samples;
use crate::passes::{Changed, Pass, PassContext, Prepare};

/// The largest channel must be this many times the median for smoothing to be worth a
/// rewrite: below, one scale already serves every channel.
pub const SPREAD: f32 = 4.0;

/// Each smoothable activation's largest magnitude per channel (last axis), by value name,
/// with the rank it had.
pub struct ChannelMaxima(pub HashMap<String, (Vec<f32>, usize)>);

/// An activation and the products that read it with a weight.
struct Group {
    x: ValueId,
    readers: Vec<NodeId>,
}

/// The activations of the main graph read by a MatMul with a 2-D f32 weight, with those
/// readers (excluded ones aside).
fn groups(g: &Graph, cx: &PassContext) -> Vec<Group> {
    let mut by_x: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if !node.is("MatMul") || cx.excluded(node.name(), node.op()) {
            continue;
        }
        let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
            continue;
        };
        let two_d = g
            .value(w)
            .constant()
            .is_some_and(|t| t.dims().len() == 2 && t.f32_bytes().is_some());
        if two_d && g.value(x).constant().is_none() {
            by_x.entry(x).or_default().push(n);
        }
    }
    let mut out: Vec<Group> = by_x
        .into_iter()
        .map(|(x, mut readers)| {
            readers.sort();
            Group { x, readers }
        })
        .collect();
    out.sort_by_key(|gr| gr.x);
    out
}

/// The smooth stage's preparation: the channel maxima of every activation a MatMul with a
/// weight reads, on the calibration samples (one run of the float model; none when the model
/// has no such activation).
pub struct MeasureChannels;

impl Prepare for MeasureChannels {
    fn id(&self) -> &'static str {
        "measure-channels"
    }

    fn about(&self) -> &'static str {
        "measure the largest magnitude of each channel of the activations matrix products read"
    }

    fn run(&self, model: &Model, cx: &mut PassContext) -> Result<()> {
        let g = &model.graph;
        let watch: Vec<Watch> = groups(g, cx)
            .iter()
            .map(|gr| Watch {
                name: g.value(gr.x).name().to_string(),
                axis1: false,
                last: true,
            })
            .collect();
        if watch.is_empty() {
            cx.provide(ChannelMaxima(HashMap::new()));
            return Ok(());
        }
        let samples = cx
            .get::<Samples>()
            .ok_or_else(|| anyhow!("smoothing needs calibration samples"))?;
        cx.progress().step("measuring activation channels");
        let stats = calibrate(model, &watch, &samples.calibration, false, cx.progress())?;
        let maxima = stats
            .into_iter()
            .filter_map(|(name, s)| {
                let m = s.last.maxima()?;
                Some((name, (m, s.rank)))
            })
            .collect();
        cx.provide(ChannelMaxima(maxima));
        Ok(())
    }
}

pub struct SmoothActivations;

impl Pass for SmoothActivations {
    fn id(&self) -> &'static str {
        "smooth-activations"
    }

    fn about(&self) -> &'static str {
        "move activation outliers into the weights of the MatMuls that read them (SmoothQuant; when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(ChannelMaxima(maxima)) = cx.get::<ChannelMaxima>() else {
            return Ok(Changed::No);
        };
        let g = &model.graph;
        let mut plans = Vec::new();
        let mut refused = Vec::new();
        for gr in groups(g, cx) {
            let name = g.value(gr.x).name();
            match factors(g, &gr, maxima.get(name)) {
                Ok(s) => plans.push((gr, s)),
                Err(why) => refused.push((gr.readers[0], why)),
            }
        }
        for (n, why) in refused {
            let (name, op) = (g.node(n).name().to_string(), g.node(n).op().to_string());
            cx.refuse(self.id(), &name, &op, why);
        }
        let mut patch = Patch::new(&mut model.graph);
        for (gr, s) in &plans {
            smooth(&mut patch, gr, s)?;
        }
        Ok(Changed::from_count(patch.commit()?))
    }
}

/// The factor s_j of each channel of group `gr`'s activation, or why it is left.
fn factors(
    g: &Graph,
    gr: &Group,
    maxima: Option<&(Vec<f32>, usize)>,
) -> Result<Vec<f32>, &'static str> {
    let (x_max, rank) = maxima.ok_or("its channels were not measured")?;
    if *rank < 3 {
        return Err("its input is not a sequence of vectors (rank below 3)");
    }
    let k = x_max.len();
    let mut w_max = vec![0f32; k];
    for &r in &gr.readers {
        let w = g
            .value(g.node(r).input(1).expect("matched"))
            .constant()
            .expect("matched");
        if w.dims()[0] as usize != k {
            return Err("its weight's rows do not match the activation's channels");
        }
        let cols = w.dims()[1] as usize;
        let values = w.to_f32_vec().ok_or("its weight is not f32")?;
        for (j, row) in values.chunks_exact(cols.max(1)).enumerate() {
            w_max[j] = row.iter().fold(w_max[j], |m, v| m.max(v.abs()));
        }
    }
    let mut sorted = x_max.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[k / 2];
    if !(median > 0.0 && sorted[k - 1] >= SPREAD * median) {
        return Err("its channels are within 4x of their median: nothing to even out");
    }
    Ok(x_max
        .iter()
        .zip(&w_max)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a / w).sqrt()
            } else {
                1.0
            }
        })
        .collect())
}

/// Rewrites group `gr` with factors `s`: each reader's weight rows times s, and the
/// activation divided by s, in its producer where that is exact, else by a Mul.
fn smooth(patch: &mut Patch, gr: &Group, s: &[f32]) -> Result<()> {
    for &r in &gr.readers {
        let g = patch.graph();
        let w = g.node(r).input(1).expect("matched");
        let t = g.value(w).constant().expect("matched").clone();
        let name = format!("{}_smoothed", g.value(w).name());
        let cols = t.dims()[1] as usize;
        let scaled: Vec<f32> = (t.to_f32_vec().expect("f32").iter().enumerate())
            .map(|(i, &v)| v * s[i / cols.max(1)])
            .collect();
        let new = patch.add_initializer(&name, Tensor::from_f32(t.dims().to_vec(), &scaled))?;
        patch.set_input(r, 1, Some(new));
    }
    let inverse: Vec<f32> = s.iter().map(|&f| 1.0 / f).collect();
    if fold_into_producer(patch, gr, &inverse)? {
        return Ok(());
    }
    let g = patch.graph();
    let x = gr.x;
    let base = g.value(x).name().to_string();
    let ty = g.ty(x).cloned();
    let k = inverse.len() as i64;
    let inv = patch.add_initializer(
        &format!("{base}_smooth"),
        Tensor::from_f32(vec![k], &inverse),
    )?;
    let mul = patch.add_node(
        "Mul",
        &format!("{base}_smooth"),
        &[Some(x), Some(inv)],
        vec![],
        &[ty],
    )?;
    let out = patch.graph().node(mul).output(0);
    for &r in &gr.readers {
        patch.set_input(r, 0, out);
    }
    Ok(())
}

/// Divides the activation of `gr` by s in its producer, when the producer is a per-channel
/// affine step whose output only `gr`'s readers read: a LayerNormalization's scale and bias,
/// or the Mul by γ and Add of β a decomposed LayerNorm ends with. Whether it did.
fn fold_into_producer(patch: &mut Patch, gr: &Group, inverse: &[f32]) -> Result<bool> {
    let g = patch.graph();
    let only_readers = g
        .value(gr.x)
        .uses()
        .iter()
        .all(|u| gr.readers.contains(&u.node));
    let Some(p) = g
        .producer(gr.x)
        .filter(|_| only_readers && !g.is_output(gr.x))
    else {
        return Ok(false);
    };
    let k = inverse.len() as i64;
    // The constant inputs to divide: (node, slot) pairs, each a 1-D f32 of k values.
    let per_channel = |n: NodeId, slot: usize| {
        let v = g.node(n).input(slot)?;
        let t = g.value(v).constant()?;
        (t.dims() == [k] && t.f32_bytes().is_some()).then_some((n, slot))
    };
    let targets: Option<Vec<(NodeId, usize)>> = match g.node(p).op() {
        "LayerNormalization" => {
            let bias = g.node(p).input(2).map(|_| per_channel(p, 2));
            let scale = per_channel(p, 1);
            match bias {
                Some(b) => scale.zip(b).map(|(a, b)| vec![a, b]),
                None => scale.map(|a| vec![a]),
            }
        }
        "Add" => affine_tail(g, p, &per_channel),
        _ => None,
    };
    let Some(targets) = targets else {
        return Ok(false);
    };
    for (n, slot) in targets {
        let g = patch.graph();
        let v = g.node(n).input(slot).expect("found");
        let name = format!("{}_smoothed", g.value(v).name());
        let values = g
            .value(v)
            .constant()
            .and_then(Tensor::to_f32_vec)
            .expect("f32");
        let divided: Vec<f32> = values.iter().zip(inverse).map(|(a, b)| a * b).collect();
        let new = patch.add_initializer(&name, Tensor::from_f32(vec![k], &divided))?;
        patch.set_input(n, slot, Some(new));
    }
    Ok(true)
}

/// For `add` = Add(Mul(u, γ), β) with γ and β per-channel constants and the Mul read by the
/// Add alone: the (node, slot) of γ and of β.
fn affine_tail(
    g: &Graph,
    add: NodeId,
    per_channel: &dyn Fn(NodeId, usize) -> Option<(NodeId, usize)>,
) -> Option<Vec<(NodeId, usize)>> {
    let (beta_slot, t) = [(1, 0), (0, 1)]
        .into_iter()
        .find(|&(b, _)| per_channel(add, b).is_some())?;
    let mul = g.producer(g.node(add).input(t)?)?;
    if !g.node(mul).is("Mul") || g.value(g.node(mul).output(0)?).uses().len() != 1 {
        return None;
    }
    let gamma = per_channel(mul, 1).or_else(|| per_channel(mul, 0))?;
    Some(vec![gamma, (add, beta_slot)])
}
