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
//! when the pattern is incomplete. Runs inside subgraphs too.

use anyhow::Result;

use super::{only_reader, producer_op, scalar};
use crate::ir::{Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct FuseGelu;

struct Found {
    x: ValueId,
    out: ValueId,
    nodes: Vec<NodeId>,
    name: String,
}

fn near(v: Option<f32>, want: f32) -> bool {
    v.is_some_and(|v| (v - want).abs() <= 1e-4 * want.abs().max(1.0))
}

/// The operand of binary node `n` other than `v`.
fn other(g: &Graph, n: NodeId, v: ValueId) -> Option<ValueId> {
    let node = g.node(n);
    match (node.input(0), node.input(1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

/// Whether `n` is `Mul(v, ½)` in either order.
fn halves(g: &Graph, n: NodeId, v: ValueId) -> bool {
    g.node(n).is("Mul") && near(scalar(g, other(g, n, v)), 0.5)
}

fn match_at(g: &Graph, erf: NodeId) -> Result<Found, &'static str> {
    const INCOMPLETE: &str = "the nodes around it do not form x · ½ · (1 + erf(x / √2))";
    let node = g.node(erf);
    let d = node.input(0).ok_or(INCOMPLETE)?;
    let e = node.output(0).ok_or(INCOMPLETE)?;
    let scale = g.producer(d).ok_or(INCOMPLETE)?;
    let sn = g.node(scale);
    let x = sn.input(0).ok_or(INCOMPLETE)?;
    let by = scalar(g, sn.input(1));
    let scaled = (sn.is("Div") && near(by, std::f32::consts::SQRT_2))
        || (sn.is("Mul") && near(by, std::f32::consts::FRAC_1_SQRT_2));
    if !scaled || only_reader(g, d, &node.op) != Some(erf) {
        return Err(INCOMPLETE);
    }
    let add = only_reader(g, e, "Add").ok_or(INCOMPLETE)?;
    if !near(scalar(g, other(g, add, e)), 1.0) {
        return Err(INCOMPLETE);
    }
    let a = g.node(add).output(0).ok_or(INCOMPLETE)?;
    let m1 = only_reader(g, a, "Mul").ok_or(INCOMPLETE)?;
    let m1_out = g.node(m1).output(0).ok_or(INCOMPLETE)?;
    let partner = other(g, m1, a).ok_or(INCOMPLETE)?;
    let (nodes, out) = if partner == x {
        // Mul(Mul(x, a), ½)
        let m2 = only_reader(g, m1_out, "Mul").ok_or(INCOMPLETE)?;
        if !halves(g, m2, m1_out) {
            return Err(INCOMPLETE);
        }
        (vec![m1, m2], g.node(m2).output(0))
    } else if near(scalar(g, Some(partner)), 0.5) {
        // Mul(x, Mul(a, ½))
        let m2 = only_reader(g, m1_out, "Mul").ok_or(INCOMPLETE)?;
        if other(g, m2, m1_out) != Some(x) {
            return Err(INCOMPLETE);
        }
        (vec![m1, m2], g.node(m2).output(0))
    } else {
        // Mul(Mul(x, ½), a)
        let h = producer_op(g, partner, "Mul").ok_or(INCOMPLETE)?;
        if !halves(g, h, x) || only_reader(g, partner, "Mul") != Some(m1) {
            return Err(INCOMPLETE);
        }
        (vec![h, m1], Some(m1_out))
    };
    let mut all = vec![scale, erf, add];
    all.extend(nodes);
    Ok(Found {
        x,
        out: out.ok_or(INCOMPLETE)?,
        nodes: all,
        name: node.name.clone(),
    })
}

impl Pass for FuseGelu {
    fn id(&self) -> &'static str {
        "fuse-gelu"
    }

    fn about(&self) -> &'static str {
        "replace x · ½ · (1 + erf(x / √2)) by Gelu (opset 20+)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let opset = model.opset("").unwrap_or(1);
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let mut erfs: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is("Erf")).collect();
            erfs.sort();
            let mut found = Vec::new();
            for n in erfs {
                let name = &g.node(n).name;
                match match_at(g, n) {
                    Ok(_) if opset < 20 => {
                        cx.refuse("fuse-gelu", name, "Erf", "Gelu needs opset 20 or later")
                    }
                    Ok(f) => found.push(f),
                    Err(why) => cx.refuse("fuse-gelu", name, "Erf", why),
                }
            }
            let mut patch = Patch::new(g);
            for f in found {
                let gelu =
                    patch.add_node("Gelu", &format!("{}_gelu", f.name), &[Some(f.x)], 1, vec![])?;
                let y = patch.graph().node(gelu).output(0).unwrap();
                patch.replace_value_keeping_name(f.out, y)?;
                for n in f.nodes.into_iter().rev() {
                    patch.remove_node(n)?;
                }
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
