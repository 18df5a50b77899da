//! `fuse-matmul-add`: a 2-D MatMul by a constant followed by a constant bias becomes a Gemm.
//!
//! ```text
//!   a: [M, K] ─▶ MatMul(a, B[K, N]) ─▶ m ─▶ Add(m, c[N]) ─▶ y      ⇒      y = Gemm(a, B, c)
//!
//!   x: [N, C, 1, 1] ─▶ Reshape(x, [0, -1]) ─▶ MatMul(B) ─▶ Add(c)  ⇒  Reshape(x, [0, -1]) ─▶ Gemm
//! ```
//!
//! The second form is a classifier head as exported without Flatten (PyTorch's
//! `x.view(x.size(0), -1)`, whose Shape→Gather→Unsqueeze→Concat target `fold-reshape-target`
//! makes `[0, -1]` first). Preconditions: `a` has rank 2 (Gemm is 2-D only), by tract's
//! inference or because a Reshape to a two-element constant target, a Flatten or a Gemm makes
//! it; B is an f32 initializer of rank 2; c an f32 initializer of shape [N] or [1, N] (tract
//! 0.23 evaluates an f64 Gemm wrongly, so the result could not be checked); `m` is read only by the Add and is not a graph output; operands in either order.
//! Refuses otherwise. Runs after `fuse-gemm-bn` (a BatchNormalization after the MatMul folds
//! first). Runs inside subgraphs too, where tract's facts reach If, Loop and Scan bodies but
//! leave loop-carried values' ranks open (see `runtime::infer_facts`), and the op producing `a`
//! can give its rank anywhere.

use anyhow::Result;

use crate::ir::{DType, Dim, Graph, NodeId, Patch, Type, ValueId};
use crate::passes::{operand_where, producer_op, shared_reads, Look, Refusal, Rewrite};

pub struct FuseMatMulAdd;

pub struct Found {
    matmul: NodeId,
    add: NodeId,
    a: ValueId,
    b: ValueId,
    c: ValueId,
    y: ValueId,
    /// The product's type, [M, N].
    ty: Option<Type>,
}

fn match_at(g: &Graph, add: NodeId, look: &Look) -> Result<Found, Refusal> {
    let is_mm = |v: ValueId| producer_op(g, v, "MatMul").is_some();
    let (m, c) = operand_where(g, add, is_mm).ok_or(Refusal::NotMine)?;
    let matmul = g.producer(m).ok_or(Refusal::NotMine)?;
    if let Some(why) = shared_reads(g, m, "the MatMul's output") {
        return Err(why.into());
    }
    let mn = g.node(matmul);
    let (Some(a), Some(b)) = (mn.input(0), mn.input(1)) else {
        return Err("the MatMul is not binary".into());
    };
    let bt = g
        .value(b)
        .constant()
        .filter(|t| t.dtype() == DType::F32 && t.dims().len() == 2);
    let bt = bt.ok_or("the MatMul's second operand is not a 2-D f32 initializer")?;
    let n = bt.dims()[1];
    let ct = g.value(c).constant().filter(|t| t.dtype() == DType::F32);
    let ct = ct.ok_or("the bias is not an f32 initializer")?;
    if !(ct.dims() == [n] || ct.dims() == [1, n]) {
        return Err("the bias is not one value per output column".into());
    }
    if look.rank(g, a) != Some(2) {
        return Err("the MatMul's input is not known to be 2-D".into());
    }
    let rows = look
        .facts
        .and_then(|f| f.shape(g.value(a).name()))
        .map_or(Dim::Unknown, |s| s[0].clone());
    Ok(Found {
        matmul,
        add,
        a,
        b,
        c,
        y: g.node(add).output(0).ok_or("it has no output")?,
        ty: Some(Type::tensor(DType::F32, vec![rows, Dim::Known(n)])),
    })
}

impl Rewrite for FuseMatMulAdd {
    type Match = Found;
    const ID: &'static str = "fuse-matmul-add";
    const ABOUT: &'static str = "turn a 2-D MatMul by a constant plus a constant bias into Gemm";
    const NEEDS_FACTS: bool = true;

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Add")
            && g.node(n)
                .inputs()
                .iter()
                .flatten()
                .any(|&v| producer_op(g, v, "MatMul").is_some())
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        match_at(g, n, look)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        let name = patch.graph().node(f.matmul).name().to_string();
        let gemm = patch.add_node(
            "Gemm",
            &format!("{name}_gemm"),
            &[Some(f.a), Some(f.b), Some(f.c)],
            vec![],
            &[f.ty],
        )?;
        let out = patch.graph().node(gemm).output(0).unwrap();
        patch.replace_value_keeping_name(f.y, out)?;
        patch.remove_node(f.add)?;
        patch.remove_node(f.matmul)
    }
}
