//! `fuse-gelu`: the exact GELU written out with Erf becomes one Gelu node (opset 20+).
//!
//! ```text
//!   d = Div(x, √2)  (or Mul(x, 1/√2))
//!   a = Add(Erf(d), 1)                                   ⇒      y = Gelu(x)
//!   y = Mul(Mul(x, a), 0.5)   or   Mul(Mul(x, 0.5), a)   or   Mul(x, Mul(a, 0.5))
//! ```
//!
//! Exports write GELU as x · ½ · (1 + erf(x / √2)), multiplied in any order; operands of Add
//! and Mul may come in either order. The constants must be one-element f32 values within 1e-4
//! of √2, 1/√2, 1 and ½; every intermediate value is read only by the next node of the pattern
//! and is not a graph output. Refuses below opset 20, where Gelu does not exist, and otherwise
//! when the pattern is incomplete. Runs after `fold-constants`, which leaves the constants as
//! initializers. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Graph, NodeId, Patch, ValueId};
use crate::passes::{
    only_reader_op, other_operand, producer_op, scalar, shared_reads, Look, Refusal, Rewrite,
};

pub struct FuseGelu;

pub struct Found {
    x: ValueId,
    out: ValueId,
    nodes: Vec<NodeId>,
    name: String,
}

fn near(v: Option<f32>, want: f32) -> bool {
    v.is_some_and(|v| (v - want).abs() <= 1e-4 * want.abs().max(1.0))
}

/// Whether `n` is `Mul(v, ½)` in either order.
fn halves(g: &Graph, n: NodeId, v: ValueId) -> bool {
    g.node(n).is("Mul") && near(scalar(g, other_operand(g, n, v)), 0.5)
}

fn match_at(g: &Graph, erf: NodeId) -> Result<Found, Refusal> {
    const INCOMPLETE: &str = "the nodes around it do not form x · ½ · (1 + erf(x / √2))";
    // The one node reading intermediate `v`, when it is an `op`; other readers are named.
    let next = |v: ValueId, op: &str| -> Result<NodeId, Refusal> {
        if let Some(why) = shared_reads(g, v, &format!("its intermediate '{}'", g.value(v).name()))
        {
            return Err(why.into());
        }
        Ok(only_reader_op(g, v, op).ok_or(INCOMPLETE)?)
    };
    let node = g.node(erf);
    let d = node.input(0).ok_or(INCOMPLETE)?;
    let e = node.output(0).ok_or(INCOMPLETE)?;
    let scale = g.producer(d).ok_or(INCOMPLETE)?;
    let sn = g.node(scale);
    let x = sn.input(0).ok_or(INCOMPLETE)?;
    let by = scalar(g, sn.input(1));
    let scaled = (sn.is("Div") && near(by, std::f32::consts::SQRT_2))
        || (sn.is("Mul") && near(by, std::f32::consts::FRAC_1_SQRT_2));
    if !scaled {
        return Err(INCOMPLETE.into());
    }
    next(d, "Erf")?;
    let add = next(e, "Add")?;
    if !near(scalar(g, other_operand(g, add, e)), 1.0) {
        return Err(INCOMPLETE.into());
    }
    let a = g.node(add).output(0).ok_or(INCOMPLETE)?;
    let m1 = next(a, "Mul")?;
    let m1_out = g.node(m1).output(0).ok_or(INCOMPLETE)?;
    let partner = other_operand(g, m1, a).ok_or(INCOMPLETE)?;
    let (nodes, out) = if partner == x {
        // Mul(Mul(x, a), ½)
        let m2 = next(m1_out, "Mul")?;
        if !halves(g, m2, m1_out) {
            return Err(INCOMPLETE.into());
        }
        (vec![m1, m2], g.node(m2).output(0))
    } else if near(scalar(g, Some(partner)), 0.5) {
        // Mul(x, Mul(a, ½))
        let m2 = next(m1_out, "Mul")?;
        if other_operand(g, m2, m1_out) != Some(x) {
            return Err(INCOMPLETE.into());
        }
        (vec![m1, m2], g.node(m2).output(0))
    } else {
        // Mul(Mul(x, ½), a)
        let h = producer_op(g, partner, "Mul").ok_or(INCOMPLETE)?;
        if !halves(g, h, x) {
            return Err(INCOMPLETE.into());
        }
        next(partner, "Mul")?;
        (vec![h, m1], Some(m1_out))
    };
    let mut all = vec![scale, erf, add];
    all.extend(nodes);
    Ok(Found {
        x,
        out: out.ok_or(INCOMPLETE)?,
        nodes: all,
        name: node.name().to_string(),
    })
}

impl Rewrite for FuseGelu {
    type Match = Found;
    const ID: &'static str = "fuse-gelu";
    const ABOUT: &'static str = "replace x · ½ · (1 + erf(x / √2)) by Gelu (opset 20+)";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Erf")
    }

    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Found, Refusal> {
        let found = match_at(g, n)?;
        if look.opset < 20 {
            return Err("Gelu needs opset 20 or later".into());
        }
        Ok(found)
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        let ty = patch.graph().ty(f.x).cloned();
        let gelu = patch.add_node(
            "Gelu",
            &format!("{}_gelu", f.name),
            &[Some(f.x)],
            vec![],
            &[ty],
        )?;
        let y = patch.graph().node(gelu).output(0).unwrap();
        patch.replace_value_keeping_name(f.out, y)?;
        for n in f.nodes.into_iter().rev() {
            patch.remove_node(n)?;
        }
        Ok(())
    }
}
