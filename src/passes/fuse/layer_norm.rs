//! `fuse-layer-norm`: a layer normalization written out op by op becomes LayerNormalization
//! (opset 17+).
//!
//! ```text
//!   m = ReduceMean(x, axes=[-1])                 
//!   d = Sub(x, m)                                
//!   v = ReduceMean(Pow(d, 2), axes=[-1])     ⇒     y = LayerNormalization(x, γ, β, axis=-1, epsilon=ε)
//!   n = Div(d, Sqrt(Add(v, ε)))                  
//!   y = Add(Mul(n, γ), β)                        
//! ```
//!
//! Preconditions: the model imports opset 17 or newer (older opsets lack the op; the pass
//! leaves them alone); both ReduceMeans reduce the last axis only and keep dims; the exponent is
//! the constant 2 and ε a constant scalar; γ and β, where the Mul and the Add are there, are
//! constant f32 vectors of one length; without either (an untrained model whose ones and
//! zeros no-op elimination removed, or `elementwise_affine=False`), the normalized axis's
//! length is known from tract's facts (or a graph input's declaration) and γ = 1, β = 0 are
//! written out; every intermediate value is read only inside the pattern. Mul and Add operands
//! may come in either order. Refuses otherwise. Runs after `eliminate-noop`, which removes a
//! Mul by ones or an Add of zeros, and after `fold-constants`, which leaves ε and γ as
//! initializers. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Attr, Def, Dim, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{
    only_reader_op, other_operand, producer_op, scalar, shared_reads, Look, Refusal, Rewrite,
};

pub struct FuseLayerNorm;

pub struct Found {
    x: ValueId,
    gamma: Option<ValueId>,
    beta: Option<ValueId>,
    /// The length of the normalized axis.
    axis: usize,
    epsilon: f32,
    /// The value the fused node produces.
    out: ValueId,
    /// Every node of the pattern, removed after the rewrite.
    nodes: Vec<NodeId>,
    name: String,
}

/// Whether a ReduceMean averages over the last axis only, keeping dims.
fn last_axis_mean(g: &Graph, n: NodeId, rank: Option<usize>) -> bool {
    let node = g.node(n);
    let axes = match node.input(1) {
        Some(a) => g.const_ints(a),
        None => node.attr_ints("axes").map(<[i64]>::to_vec),
    };
    let last = match axes.as_deref() {
        Some([-1]) => true,
        Some([a]) => rank.is_some_and(|r| *a == r as i64 - 1),
        _ => false,
    };
    last && node.attr_i("keepdims").unwrap_or(1) == 1
}

fn f32_vector(g: &Graph, v: ValueId) -> bool {
    g.value(v)
        .constant()
        .is_some_and(|t| t.to_f32_vec().is_some() && t.dims().len() == 1)
}

/// Matches the pattern whose Div is `div`.
fn match_at(g: &Graph, div: NodeId, look: &Look) -> Result<Found, Refusal> {
    let dn = g.node(div);
    let (d, std) = (
        dn.input(0).ok_or("no input")?,
        dn.input(1).ok_or("no input")?,
    );
    // Most Divs are not layer norms; only near-misses are worth a note.
    let sub = producer_op(g, d, "Sub").ok_or(Refusal::NotMine)?;
    let (x, m) = (
        g.node(sub).input(0).ok_or("no input")?,
        g.node(sub).input(1).ok_or("no input")?,
    );
    let rank = g.shape(x).map(<[_]>::len);
    let mean = producer_op(g, m, "ReduceMean").ok_or("the Sub does not subtract a ReduceMean")?;
    if g.node(mean).input(0) != Some(x) || !last_axis_mean(g, mean, rank) {
        return Err("the mean is not over the last axis of the same input".into());
    }
    let sqrt = producer_op(g, std, "Sqrt").ok_or("its denominator is not a Sqrt")?;
    let add_eps = producer_op(g, g.node(sqrt).input(0).ok_or("no input")?, "Add")
        .ok_or("the Sqrt does not read an Add")?;
    let aen = g.node(add_eps);
    let (var, epsilon) = match (aen.input(0), aen.input(1)) {
        (Some(a), b) if scalar(g, b).is_some() => (a, scalar(g, b).unwrap()),
        (a, Some(b)) if scalar(g, a).is_some() => (b, scalar(g, a).unwrap()),
        _ => return Err("epsilon is not a constant scalar".into()),
    };
    let var_mean = producer_op(g, var, "ReduceMean").ok_or("the variance is not a ReduceMean")?;
    if !last_axis_mean(g, var_mean, rank) {
        return Err("the variance is not over the last axis".into());
    }
    let pow = producer_op(g, g.node(var_mean).input(0).ok_or("no input")?, "Pow")
        .ok_or("the variance does not square")?;
    if g.node(pow).input(0) != Some(d) || scalar(g, g.node(pow).input(1)) != Some(2.0) {
        return Err("the variance does not square the centred input".into());
    }
    // Every intermediate is read only inside the pattern.
    let private = [
        m,
        g.node(pow).output(0).ok_or("no output")?,
        var,
        g.node(add_eps).output(0).ok_or("no output")?,
        std,
    ];
    let outside = |v: ValueId| format!("its intermediate '{}'", g.value(v).name());
    if let Some(why) = private
        .iter()
        .find_map(|&v| shared_reads(g, v, &outside(v)))
    {
        return Err(why.into());
    }
    let d_readers: Vec<NodeId> = g.value(d).uses().iter().map(|u| u.node).collect();
    if g.is_output(d) || d_readers.len() != 2 {
        let why = shared_reads(g, d, &outside(d));
        let why = why.unwrap_or_else(|| format!("{} is read once", outside(d)));
        return Err(format!("{why}; only the Pow and the Div may read it").into());
    }
    if !d_readers.contains(&pow) || !d_readers.contains(&div) {
        return Err("the centred input is not what the Pow and the Div read".into());
    }
    let n = dn.output(0).ok_or("no output")?;
    let mut nodes = vec![mean, sub, pow, var_mean, add_eps, sqrt, div];
    // The affine part is optional: `elementwise_affine=False` exports none, and no-op
    // elimination removes a Mul by ones and an Add of zeros before this pass sees them.
    let mut out = n;
    let mut affine = |op: &str, nodes: &mut Vec<NodeId>| -> Option<ValueId> {
        let k = only_reader_op(g, out, op)?;
        let v = other_operand(g, k, out).filter(|&v| f32_vector(g, v))?;
        out = g.node(k).output(0)?;
        nodes.push(k);
        Some(v)
    };
    let gamma = affine("Mul", &mut nodes);
    let beta = affine("Add", &mut nodes);
    let len = |v: ValueId| g.value(v).constant().map(|t| t.len() as usize);
    let axis = match (gamma.and_then(len), beta.and_then(len)) {
        (Some(a), Some(b)) if a != b => return Err("scale and bias differ in length".into()),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => last_dim(g, x, look)
            .ok_or("it has no scale or bias, and the normalized axis's length is not known")?,
    };
    Ok(Found {
        x,
        gamma,
        beta,
        axis,
        epsilon,
        out,
        nodes,
        name: g.node(div).name().to_string(),
    })
}

/// The length of `x`'s last axis, as tract proves it (or as declared, for a graph input).
fn last_dim(g: &Graph, x: ValueId, look: &Look) -> Option<usize> {
    let shape = match look.facts {
        Some(f) => f.shape(g.value(x).name()),
        None if g.value(x).def() == Def::Input => g.shape(x),
        None => None,
    };
    match shape?.last()? {
        Dim::Known(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

impl Rewrite for FuseLayerNorm {
    type Match = Found;
    const ID: &'static str = "fuse-layer-norm";
    const ABOUT: &'static str =
        "fuse a decomposed layer normalization into LayerNormalization (opset 17+)";
    // The axis length of a normalization without scale or bias.
    const NEEDS_FACTS: bool = true;

    fn applies(&self, model: &Model) -> bool {
        model.opset("").unwrap_or(1) >= 17
    }

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Div")
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        match_at(g, n, look)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        // The bias is optional in ONNX, but some runtimes (tract among them) need it present:
        // a zero bias costs a few bytes and runs everywhere. The scale is required.
        let mut filled = |v: Option<ValueId>, what: &str, fill: f32| match v {
            Some(v) => Ok(v),
            None => patch.add_initializer(
                &format!("{}_{what}", f.name),
                Tensor::from_f32(vec![f.axis as i64], &vec![fill; f.axis]),
            ),
        };
        let gamma = filled(f.gamma, "unit_scale", 1.0)?;
        let beta = filled(f.beta, "zero_bias", 0.0)?;
        // The normalized value has the type of the normalized input.
        let ty = patch.graph().ty(f.x).cloned();
        let ln = patch.add_node(
            "LayerNormalization",
            &format!("{}_layer_norm", f.name),
            &[Some(f.x), Some(gamma), Some(beta)],
            vec![Attr::int("axis", -1), Attr::float("epsilon", f.epsilon)],
            &[ty],
        )?;
        let y = patch.graph().node(ln).output(0).unwrap();
        patch.replace_value_keeping_name(f.out, y)?;
        for n in f.nodes.iter().rev() {
            patch.remove_node(*n)?;
        }
        Ok(())
    }
}
