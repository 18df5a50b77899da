//! `fuse-gemm-bn`: an inference BatchNormalization of a 2-D product folds into a Gemm.
//!
//! ```text
//!   a ─▶ Gemm(a, B, C?; α, β, transA, transB) ─▶ m ─▶ BatchNormalization(γ, β', μ, σ², ε) ─▶ y
//!   a ─▶ MatMul(a, B[K, N]) ─▶ m ─▶ BatchNormalization(γ, β', μ, σ², ε) ─▶ y      (a is 2-D)
//!                                         ⇒
//!   y = Gemm(a, B · s, (β·C − μ) · s + β'; α, transA, transB)     s = γ / √(σ² + ε)
//! ```
//!
//! The product is [M, N] and the BatchNormalization's channels are its N columns, so `s`
//! scales B's columns (its rows under transB) and the map's shift becomes the bias. This is
//! the classifier head `Linear` then `BatchNorm1d`.
//!
//! Preconditions: B is an f32 initializer of rank 2; C is absent, or an f32 initializer of one
//! value per column or a single value; for a MatMul, `a` is 2-D by tract's facts (Gemm is 2-D
//! only, and a batched MatMul's channels are not its columns); `m` is read only by the
//! BatchNormalization and is not a graph output; the BatchNormalization is in inference mode
//! with f32 initializer parameters, one per column. Refuses otherwise, naming the reason under
//! `--explain`. B and C are never edited in place (they may be shared): the scaled copies are
//! new initializers. Runs inside subgraphs too, where only the Gemm form matches (facts, which
//! the MatMul form needs, cover the main graph). Runs after the cleanup passes, which expose
//! the product as the BatchNormalization's producer.

use anyhow::{Context, Result};

use crate::ir::{Attr, Graph, NodeId, Patch, Tensor, Type, ValueId};
use crate::passes::channels::{scale_runs, BnAffine};
use crate::passes::{shared_reads, Look, Refusal, Rewrite};

pub struct FuseGemmBn;

pub struct Found {
    product: NodeId,
    bn: NodeId,
    a: ValueId,
    b: Tensor,
    b_name: String,
    trans_b: bool,
    /// What the bias adds to each column before the map: β·C, or nothing.
    bias: Vec<f64>,
    affine: BnAffine,
    y: ValueId,
}

fn match_at(g: &Graph, bn: NodeId, look: &Look) -> Result<Found, Refusal> {
    const NOT_AFTER: &str = "its input is not produced by a Gemm or MatMul";
    let node = g.node(bn);
    let m = node.input(0).ok_or("it has no input")?;
    let product = g.producer(m).ok_or(NOT_AFTER)?;
    let pn = g.node(product);
    let gemm = pn.is("Gemm");
    if !gemm && !pn.is("MatMul") {
        return Err(NOT_AFTER.into());
    }
    if let Some(why) = shared_reads(g, m, "the product") {
        return Err(why.into());
    }
    let a = pn.input(0).ok_or("the product has no input")?;
    let b = pn.input(1).ok_or("the product has no weight")?;
    let bt = g
        .value(b)
        .constant()
        .filter(|t| t.dims().len() == 2 && t.f32_bytes().is_some())
        .ok_or("the weight is not a 2-D f32 initializer")?;
    let trans_b = gemm && pn.attr_i("transB") == Some(1);
    let columns = bt.dims()[if trans_b { 0 } else { 1 }] as usize;
    if !gemm && look.rank(g, a) != Some(2) {
        return Err("the MatMul's input is not known to be 2-D".into());
    }
    let bias = match pn.input(2).filter(|_| gemm) {
        None => vec![0.0; columns],
        Some(c) => {
            let beta = pn.attr_f("beta").unwrap_or(1.0) as f64;
            let ct = g
                .value(c)
                .constant()
                .filter(|t| t.len() == 1 || t.len() == columns as u64);
            let per_column = ct.filter(|t| matches!(t.dims(), [] | [_] | [1, _]));
            let values = per_column
                .and_then(Tensor::to_f32_vec)
                .ok_or("the bias is not an f32 initializer of one value per column")?;
            (0..columns)
                .map(|n| beta * values[n % values.len()] as f64)
                .collect()
        }
    };
    Ok(Found {
        product,
        bn,
        a,
        b: bt.clone(),
        b_name: g.value(b).name().to_string(),
        trans_b,
        bias,
        affine: BnAffine::of(g, bn, columns)?,
        y: node.output(0).ok_or("it has no output")?,
    })
}

fn rewrite(patch: &mut Patch, f: Found) -> Result<()> {
    let [rows, cols] = [f.b.dims()[0] as usize, f.b.dims()[1] as usize];
    let scaled = if f.trans_b {
        scale_runs(&f.b, &f.affine.scale, cols, &|r| r)
    } else {
        scale_runs(&f.b, &f.affine.scale, 1, &|r| r % cols)
    };
    let scaled = scaled.context("the matched weight cannot be scaled")?;
    let columns = if f.trans_b { rows } else { cols };
    let bias: Vec<f32> = (0..columns).map(|n| f.affine.bias(n, f.bias[n])).collect();
    let b = patch.add_initializer(&format!("{}_fused_bn", f.b_name), scaled)?;
    let c = patch.add_initializer(
        &format!("{}_fused_bn_bias", f.b_name),
        Tensor::from_f32(vec![columns as i64], &bias),
    )?;
    let inputs = [Some(f.a), Some(b), Some(c)];
    if patch.graph().node(f.product).is("Gemm") {
        patch.set_inputs(f.product, &inputs);
        patch.set_attr(f.product, Attr::float("beta", 1.0));
        let m = patch.graph().node(f.product).output(0).unwrap();
        patch.replace_value(f.y, m)?;
        patch.remove_node(f.bn)?;
    } else {
        let name = patch.graph().node(f.product).name().to_string();
        // [M, N]: the rows of `a` (2-D, as matched) by the columns of B.
        let ty = patch.graph().dtype(f.a).map(|d| {
            let m = patch
                .graph()
                .shape(f.a)
                .map_or(crate::ir::Dim::Unknown, |s| s[0].clone());
            Type::tensor(d, vec![m, crate::ir::Dim::Known(columns as i64)])
        });
        let gemm = patch.add_node("Gemm", &format!("{name}_gemm"), &inputs, vec![], &[ty])?;
        let out = patch.graph().node(gemm).output(0).unwrap();
        patch.replace_value_keeping_name(f.y, out)?;
        patch.remove_node(f.bn)?;
        patch.remove_node(f.product)?;
    }
    Ok(())
}

fn after_product(g: &Graph, n: NodeId) -> bool {
    g.node(n).is("BatchNormalization")
        && g.node(n)
            .input(0)
            .and_then(|v| g.producer(v))
            .is_some_and(|p| g.node(p).is("Gemm") || g.node(p).is("MatMul"))
}

impl Rewrite for FuseGemmBn {
    type Match = Found;
    const ID: &'static str = "fuse-gemm-bn";
    const ABOUT: &'static str =
        "fold an inference BatchNormalization of a 2-D Gemm or MatMul into a Gemm";
    const NEEDS_FACTS: bool = true;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        after_product(g, n)
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        match_at(g, n, look)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        rewrite(patch, f)
    }
}
