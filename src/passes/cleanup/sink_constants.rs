//! `sink-captured-constants`: an initializer that one subgraph body alone reads moves into
//! that body.
//!
//! ```text
//!   initializer W ──(captured)──▶ If { then: Conv(x, W) }
//!                                ⇒
//!   If { then: initializer W ─▶ Conv(x, W) }
//! ```
//!
//! Exporters keep the weights of a network that lives in a branch (one per sample rate) in
//! the enclosing graph; inside the body they are captures, which no pattern can read as
//! constants. Moved in, the body's fusions and quantization see its weights as its own. The
//! tensor is not copied (its bytes are shared) and keeps its name. Refuses an initializer
//! that the graph itself also reads, or that two bodies read (moving it into both would
//! store it twice), and models of IR version < 4 (initializers must then be graph inputs).
//! Runs in bodies too, innermost first, so a weight sinks one level per round. Runs right
//! after `constant-to-initializer`: every later pattern then finds it where it is used.

use anyhow::Result;

use crate::ir::{Graph, Model, NodeId, Patch, Scope, Slot, ValueId};
use crate::passes::{Changed, Pass, PassContext};

pub struct SinkCapturedConstants;

/// An initializer to move: the value, the node holding the body that reads it, and the
/// attribute holding that body.
struct Sink {
    value: ValueId,
    holder: NodeId,
    attr: String,
}

impl Pass for SinkCapturedConstants {
    fn id(&self) -> &'static str {
        "sink-captured-constants"
    }

    fn about(&self) -> &'static str {
        "move an initializer that one subgraph body alone reads into that body"
    }

    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<Changed> {
        if model.ir_version() < 4 {
            return Ok(Changed::No);
        }
        let n = model.graph.for_each_graph(&mut |g, _: Scope| {
            let mut done = 0;
            for s in sinks(g) {
                done += sink(g, s)?;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}

/// The initializers of `g` that exactly one body of one node reads, and nothing else.
fn sinks(g: &Graph) -> Vec<Sink> {
    let mut out = Vec::new();
    for &v in g.initializers() {
        let uses = g.value(v).uses();
        let holder = match uses {
            [u] if u.slot == Slot::Capture => u.node,
            _ => continue,
        };
        let name = g.value(v).name();
        let readers: Vec<&str> = g
            .node(holder)
            .attrs()
            .iter()
            .filter(|a| {
                a.bodies()
                    .any(|b| b.find(name).is_some_and(|c| b.captures().contains(&c)))
            })
            .map(|a| a.name())
            .collect();
        let graph_valued = g
            .node(holder)
            .attr(readers.first().copied().unwrap_or_default());
        if let ([attr], Some(a)) = (readers.as_slice(), graph_valued) {
            if a.bodies().count() == 1 {
                out.push(Sink {
                    value: v,
                    holder,
                    attr: attr.to_string(),
                });
            }
        }
    }
    out
}

/// Moves `s` into its body, where its capture becomes an initializer of the same name, then
/// removes it from `g`.
fn sink(g: &mut Graph, s: Sink) -> Result<usize> {
    let name = g.value(s.value).name().to_string();
    let tensor = g
        .value(s.value)
        .initializer()
        .expect("an initializer")
        .clone();
    let inner = g.edit_body(s.holder, &s.attr, |body| {
        let capture = body.find(&name).expect("the body captures it");
        let mut patch = Patch::new(body);
        let own = patch.add_initializer(&name, tensor)?;
        patch.replace_value_keeping_name(capture, own)?;
        patch.remove_value(capture)?;
        patch.commit()
    })?;
    let mut patch = Patch::new(g);
    patch.remove_value(s.value)?;
    Ok(inner + patch.commit()?)
}
