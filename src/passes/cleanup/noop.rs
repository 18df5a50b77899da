//! `eliminate-noop`: operators that provably return their input unchanged are removed.
//!
//! ```text
//!   Transpose(x, perm=[0,1,2,...])   Concat(x)   Pad(x, pads=0...)   Cast(x: T, to=T)
//!                                       ⇒  x
//! ```
//!
//! Each case is decided from the node alone: the identity permutation, a single Concat input,
//! pads that are all zero (a constant), a Cast to the type its input already has when that input
//! is an initializer or a graph input (declared types of inner values are not trusted).
//! Refuses when removing the node would rename the graph's interface (see
//! `eliminate-identity`). Runs inside subgraphs too.

use anyhow::Result;

use super::{remove_forwarding, Verdict};
use crate::ir::{Def, Graph, Model, NodeId};
use crate::passes::{Changed, Pass, PassContext};

pub struct EliminateNoop;

/// Whether `n` returns its first input unchanged.
fn is_noop(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Some(x) = node.input(0) else { return false };
    if node.is("Transpose") {
        return node
            .attr_ints("perm")
            .is_some_and(|p| p.iter().enumerate().all(|(i, &v)| v == i as i64));
    }
    if node.is("Concat") {
        return node.inputs().len() == 1;
    }
    if node.is("Pad") {
        let pads = match node.input(1) {
            Some(p) => g.value(p).constant().and_then(|t| t.to_i64_vec()),
            None => node.attr_ints("pads").map(<[i64]>::to_vec),
        };
        return pads.is_some_and(|p| p.iter().all(|&v| v == 0));
    }
    if node.is("Cast") {
        let trusted = matches!(g.value(x).def(), Def::Initializer | Def::Input);
        return trusted
            && node
                .attr_i("to")
                .is_some_and(|to| g.dtype(x).is_some_and(|d| d.0 as i64 == to));
    }
    false
}

impl Pass for EliminateNoop {
    fn id(&self) -> &'static str {
        "eliminate-noop"
    }

    fn about(&self) -> &'static str {
        "remove identity Transposes, single-input Concats, zero Pads and same-type Casts"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        remove_forwarding(model, self.id(), cx, &|g, n| {
            if is_noop(g, n) {
                Verdict::Forwards
            } else {
                Verdict::NotMine
            }
        })
    }
}
