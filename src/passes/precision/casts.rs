//! `cancel-casts`: a Cast that changes nothing, or one that undoes a widening Cast, is
//! removed, and only when that is exact.
//!
//! ```text
//!   x:f16 ─▶ Cast(f32) ─▶ Cast(f16) ─▶ y     ⇒   x ─▶ y      (f16 → f32 is exact, and back)
//!   x:f16 ─▶ Cast(f16) ─▶ y                  ⇒   x ─▶ y
//!   x:f32 ─▶ Cast(f16) ─▶ Cast(f32) ─▶ y     kept: it rounds x to fp16
//! ```
//!
//! Element types are read off declarations and Casts (lowering declares every value it
//! retypes). Refuses when the type of x is not known, or when y is a graph output that x
//! cannot stand for (x is itself a graph input or a constant). Runs inside bodies too.

use anyhow::Result;

use crate::ir::{DType, Graph, NodeId, Patch, ValueId};
use crate::passes::{Look, Refusal, Rewrite};

pub struct CancelCasts;

/// The Cast to remove, its output, and the value its readers read instead.
pub struct Cancel {
    cast: NodeId,
    out: ValueId,
    source: ValueId,
}

impl Rewrite for CancelCasts {
    type Match = Cancel;
    const ID: &'static str = "cancel-casts";
    const ABOUT: &'static str =
        "remove Casts that change nothing or exactly undo a widening Cast (never f32 -> f16 -> f32)";

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        let node = g.node(n);
        node.is("Cast") && node.input(0).is_some() && node.output(0).is_some()
    }

    fn find(&self, g: &Graph, n: NodeId, _look: &Look) -> Result<Cancel, Refusal> {
        let node = g.node(n);
        let (x, out) = (
            node.input(0).expect("anchored"),
            node.output(0).expect("anchored"),
        );
        let to = cast_to(g, n).ok_or("the Cast has no target type")?;
        let from = element_type(g, x).ok_or("the type of its input is not known")?;
        let source = if from == to {
            x
        } else {
            let inner = g.producer(x).filter(|&p| g.node(p).is("Cast"));
            let inner = inner.ok_or(Refusal::NotMine)?;
            let w = g.node(inner).input(0).ok_or(Refusal::NotMine)?;
            let exact = element_type(g, w) == Some(to) && widens(to, from);
            if !exact {
                return Err("the Cast pair rounds its value: removing it would change it".into());
            }
            w
        };
        let internal = matches!(g.value(source).def(), crate::ir::Def::Node { .. });
        if g.is_output(out) && (!internal || g.is_output(source)) {
            return Err(
                "its output is a graph output that the value it reads cannot stand for".into(),
            );
        }
        Ok(Cancel {
            cast: n,
            out,
            source,
        })
    }

    fn apply(&self, patch: &mut Patch, m: Cancel) -> Result<()> {
        patch.replace_value(m.out, m.source)?;
        patch.remove_node(m.cast)
    }
}

fn cast_to(g: &Graph, n: NodeId) -> Option<DType> {
    g.node(n).attr_i("to").map(|t| DType(t as i32))
}

/// The element type of `v`: declared, a constant's, or the target of the Cast making it.
fn element_type(g: &Graph, v: ValueId) -> Option<DType> {
    if let Some(t) = g.value(v).constant() {
        return Some(t.dtype());
    }
    let cast = g.producer(v).filter(|&p| g.node(p).is("Cast"));
    cast.and_then(|c| cast_to(g, c)).or_else(|| g.dtype(v))
}

/// Whether every value of `narrow` is exactly a value of `wide`.
pub fn widens(narrow: DType, wide: DType) -> bool {
    matches!(
        (narrow, wide),
        (DType::F16 | DType::BF16, DType::F32 | DType::F64) | (DType::F32, DType::F64)
    )
}
