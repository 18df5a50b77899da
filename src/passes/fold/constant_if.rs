//! `inline-constant-if`: an If whose condition is a constant is replaced by the branch it
//! always takes.
//!
//! ```text
//!   c = const true
//!   y = If(c) then { t = Relu(x) ─▶ t }          ⇒        y = Relu(x)
//!             else { e = Neg(x)  ─▶ e }
//! ```
//!
//! The condition becomes constant once shape folding proves a dim (exports test the batch size
//! or the rank of a state input this way). The taken branch's nodes, initializers and nested
//! subgraphs move into the enclosing graph; its captures become the outer values they name; a
//! value whose name is taken gets a fresh one. Values computed in the branch take the If's output
//! names. Refuses when the condition is not a one-element
//! constant, when the branch's output count differs from the If's, when a declared type of a
//! branch output clashes with the If output's, and when a graph output would have to take the
//! name of a value that is not computed inside the branch (a captured value or a branch
//! initializer, which keep their own names). Runs after `fold-constants` and `fold-shape`,
//! which make conditions constant. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{type_clash, AttrValue, DType, Def, Graph, NodeId, Patch, ValueId};
use crate::passes::{Look, Refusal, Rewrite};

pub struct InlineConstantIf;

/// The branch attribute `n` always takes, or why it cannot be known or inlined.
fn taken_branch(g: &Graph, n: NodeId) -> Result<&'static str, &'static str> {
    let node = g.node(n);
    let cond = node.input(0).ok_or("it has no condition")?;
    let t = g
        .value(cond)
        .constant()
        .ok_or("its condition is not a constant")?;
    let raw = t.raw_bytes().filter(|_| t.dtype() == DType::BOOL);
    let [c] = raw.as_deref().ok_or("its condition is not a bool")? else {
        return Err("its condition does not hold exactly one element");
    };
    let branch = if *c != 0 {
        "then_branch"
    } else {
        "else_branch"
    };
    let body = node
        .attr(branch)
        .filter(|a| *a.value() == AttrValue::Graph)
        .and_then(|a| a.bodies().next())
        .ok_or("it lacks the branch it takes")?;
    if body.outputs().len() != node.outputs().len() {
        return Err("the branch's output count differs from the If's");
    }
    let mut renamed: Vec<ValueId> = Vec::new();
    for (o, y) in body.outputs().iter().zip(node.outputs()) {
        let Some(y) = *y else { continue };
        if type_clash(g, y, body, o.value).is_some() {
            return Err("a branch output's declared type clashes with the If output's");
        }
        if g.is_output(y) {
            let computed = matches!(body.value(o.value).def(), Def::Node { .. });
            if !computed || renamed.contains(&o.value) {
                return Err(
                    "a graph output would take the name of a value not computed in the branch",
                );
            }
            renamed.push(o.value);
        }
    }
    Ok(branch)
}

impl Rewrite for InlineConstantIf {
    /// The If and the branch attribute it takes.
    type Match = (NodeId, &'static str);
    const ID: &'static str = "inline-constant-if";
    const ABOUT: &'static str = "replace an If whose condition is constant by the branch it takes";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("If")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<(NodeId, &'static str), Refusal> {
        Ok((n, taken_branch(g, n)?))
    }

    fn apply(&self, patch: &mut Patch, (n, branch): (NodeId, &'static str)) -> Result<()> {
        let outs = patch.splice_body(n, branch)?;
        let ys: Vec<Option<ValueId>> = patch.graph().node(n).outputs().to_vec();
        let mut named = Vec::new();
        for (y, new) in ys.into_iter().zip(outs) {
            let Some(y) = y else { continue };
            // Values the branch computed take the If's output names; captured values and
            // initializers keep their own.
            if patch.is_internal(new) && !named.contains(&new) {
                named.push(new);
                patch.replace_value_keeping_name(y, new)?;
            } else {
                patch.replace_value(y, new)?;
            }
        }
        patch.remove_node(n)
    }
}
