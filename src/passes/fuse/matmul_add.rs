//! `fuse-matmul-add`: a 2-D MatMul by a constant followed by a constant bias becomes a Gemm.
//!
//! ```text
//!   a: [M, K] ─▶ MatMul(a, B[K, N]) ─▶ m ─▶ Add(m, c[N]) ─▶ y      ⇒      y = Gemm(a, B, c)
//! ```
//!
//! Preconditions: `a` has rank 2 by tract's inference (Gemm is 2-D only); B is an f32
//! initializer of rank 2; c is an f32 initializer of shape [N] or [1, N]; `m` is read only by
//! the Add and is not a graph output. Refuses otherwise. Top-level graph only.

use anyhow::Result;

use crate::ir::{DType, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{Changed, Pass, PassContext};

pub struct FuseMatMulAdd;

struct Found {
    matmul: NodeId,
    add: NodeId,
    a: ValueId,
    b: ValueId,
    c: ValueId,
    y: ValueId,
}

fn match_at(
    g: &Graph,
    add: NodeId,
    ranks: &dyn Fn(ValueId) -> Option<usize>,
) -> Result<Found, &'static str> {
    let an = g.node(add);
    let (Some(p), Some(q)) = (an.input(0), an.input(1)) else {
        return Err("not binary");
    };
    let is_mm = |v: ValueId| g.producer(v).filter(|&n| g.node(n).is("MatMul"));
    let (matmul, m, c) = match (is_mm(p), is_mm(q)) {
        (Some(n), _) => (n, p, q),
        (None, Some(n)) => (n, q, p),
        _ => return Err("not after a MatMul"),
    };
    if g.value(m).uses().len() != 1 || g.is_output(m) {
        return Err("the MatMul's output has other readers");
    }
    let mn = g.node(matmul);
    let (Some(a), Some(b)) = (mn.input(0), mn.input(1)) else {
        return Err("not binary");
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
        return Err("the bias is not one value per output column");
    }
    if ranks(a) != Some(2) {
        return Err("the MatMul's input is not known to be 2-D");
    }
    Ok(Found {
        matmul,
        add,
        a,
        b,
        c,
        y: an.output(0).ok_or("no output")?,
    })
}

impl Pass for FuseMatMulAdd {
    fn id(&self) -> &'static str {
        "fuse-matmul-add"
    }

    fn about(&self) -> &'static str {
        "turn a 2-D MatMul by a constant plus a constant bias into Gemm"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let g = &model.graph;
        let mut adds: Vec<NodeId> = g
            .node_ids()
            .filter(|&n| {
                g.node(n).is("Add")
                    && g.node(n)
                        .inputs()
                        .iter()
                        .flatten()
                        .any(|&v| g.producer(v).is_some_and(|p| g.node(p).is("MatMul")))
            })
            .collect();
        if adds.is_empty() {
            return Ok(Changed::No);
        }
        adds.sort();
        let facts = cx.facts(model);
        let g = &model.graph;
        let ranks = |v: ValueId| facts.rank(g.value(v).name());
        let mut found = Vec::new();
        for add in adds {
            match match_at(g, add, &ranks) {
                Ok(f) => found.push(f),
                Err(why) => cx.refuse("fuse-matmul-add", &g.node(add).name, "Add", why),
            }
        }
        let mut patch = Patch::new(&mut model.graph);
        for f in found {
            let name = patch.graph().node(f.matmul).name.clone();
            let gemm = patch.add_node(
                "Gemm",
                &format!("{name}_gemm"),
                &[Some(f.a), Some(f.b), Some(f.c)],
                1,
                vec![],
            )?;
            let out = patch.graph().node(gemm).output(0).unwrap();
            patch.replace_value_keeping_name(f.y, out)?;
            patch.remove_node(f.add)?;
            patch.remove_node(f.matmul)?;
        }
        Ok(Changed::from_count(patch.commit()?))
    }
}
