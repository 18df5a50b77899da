//! `commute-constants`: a commutative op with a constant first operand gets it second.
//!
//! ```text
//!   y = Add(c, x)      ⇒      y = Add(x, c)          (c constant, x not)
//! ```
//!
//! One canonical order lets common-subexpression elimination see `Add(c, x)` and `Add(x, c)`
//! as one (fusions match either order themselves: see `passes`). Only binary ops whose
//! result is the same, shape and values, in either order: Add, Mul, Max, Min, Equal, And, Or,
//! Xor, BitwiseAnd, BitwiseOr, BitwiseXor. Runs after `constant-to-initializer` (constants
//! are initializers by then) and before `cse`. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Graph, NodeId, Patch};
use crate::passes::{Look, Refusal, Rewrite};

pub struct CommuteConstants;

const COMMUTATIVE: &[&str] = &[
    "Add",
    "Mul",
    "Max",
    "Min",
    "Equal",
    "And",
    "Or",
    "Xor",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
];

impl Rewrite for CommuteConstants {
    type Match = NodeId;
    const ID: &'static str = "commute-constants";
    const ABOUT: &'static str = "put the constant operand of commutative binary ops second";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        let node = g.node(n);
        let constant = |v| g.value(v).constant().is_some();
        COMMUTATIVE.iter().any(|op| node.is(op))
            && node.inputs().len() == 2
            && matches!(
                (node.input(0), node.input(1)),
                (Some(a), Some(b)) if constant(a) && !constant(b)
            )
    }

    fn find(&self, _: &Graph, n: NodeId, _: &Look) -> Result<NodeId, Refusal> {
        Ok(n)
    }

    fn apply(&self, patch: &mut Patch, n: NodeId) -> Result<()> {
        let ins = patch.graph().node(n).inputs().to_vec();
        patch.set_inputs(n, &[ins[1], ins[0]]);
        Ok(())
    }
}
