//! `commute-constants`: a commutative op with a constant first operand gets it second.
//!
//! ```text
//!   y = Add(c, x)      ⇒      y = Add(x, c)          (c constant, x not)
//! ```
//!
//! One canonical order lets common-subexpression elimination see `Add(c, x)` and `Add(x, c)`
//! as one, and every later pattern look for constants in one place. Only binary ops whose
//! result is the same, shape and values, in either order: Add, Mul, Max, Min, Equal, And, Or,
//! Xor, BitwiseAnd, BitwiseOr, BitwiseXor. Runs inside subgraphs too.

use anyhow::Result;

use crate::ir::{Model, NodeId, Patch};
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

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

impl Pass for CommuteConstants {
    fn id(&self) -> &'static str {
        "commute-constants"
    }

    fn about(&self) -> &'static str {
        "put the constant operand of commutative binary ops second"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<Changed> {
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let constant = |v| g.value(v).constant().is_some();
            let mut found: Vec<NodeId> = g
                .node_ids()
                .filter(|&n| {
                    let node = g.node(n);
                    COMMUTATIVE.iter().any(|op| node.is(op))
                        && node.inputs().len() == 2
                        && matches!(
                            (node.input(0), node.input(1)),
                            (Some(a), Some(b)) if constant(a) && !constant(b)
                        )
                })
                .collect();
            found.sort();
            let mut patch = Patch::new(g);
            for n in found {
                let ins = patch.graph().node(n).inputs().to_vec();
                patch.set_inputs(n, &[ins[1], ins[0]]);
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
