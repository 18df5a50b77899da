//! `cse`: common-subexpression elimination, for constants and for nodes.
//!
//! ```text
//!   w1 = const [1,2,3]                      w1 = const [1,2,3]
//!   w2 = const [1,2,3]   (same content)      a = Mul(x, w1)
//!   a = Mul(x, w1)                     ⇒     (b's readers read a)
//!   b = Mul(x, w2)
//! ```
//!
//! Initializers with equal element type, shape and bytes become one ("parameter sharing").
//! Then two nodes with the same op, domain, attributes and inputs become one. Refuses nodes that
//! hold subgraphs, nodes of non-standard domains (we cannot know they are pure), and
//! nondeterministic ops (random generators, Dropout in training, Multinomial); refuses a merge
//! that would need two graph outputs to become one value. Graph inputs are never merged. Runs
//! inside subgraphs too. Runs after `commute-constants`, so operand order does not hide an
//! equal node.

use std::collections::HashMap;

use anyhow::Result;

use crate::ir::{AttrValue, Def, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{Changed, Pass, PassContext, NONDETERMINISTIC};

pub struct Cse;

/// Element type, shape and the first bytes of a payload.
type BucketKey = (i32, Vec<i64>, Vec<u8>);

/// Pairs (duplicate, kept) of initializers with equal content.
fn equal_initializers(g: &Graph) -> Vec<(ValueId, ValueId)> {
    // Bucket by type, shape and the first bytes, then compare whole payloads within a bucket:
    // random weights differ early, so full comparisons are rare.
    let mut buckets: HashMap<BucketKey, Vec<(ValueId, bytes::Bytes)>> = HashMap::new();
    let mut pairs = Vec::new();
    for &v in g.initializers() {
        let value = g.value(v);
        let Some(t) = value.constant() else { continue };
        if g.is_output(v) {
            continue;
        }
        let Some(raw) = t.raw_bytes() else { continue };
        let key = (
            t.dtype().0,
            t.dims().to_vec(),
            raw[..raw.len().min(64)].to_vec(),
        );
        let bucket = buckets.entry(key).or_default();
        match bucket.iter().find(|(_, b)| *b == raw) {
            Some(&(kept, _)) => pairs.push((v, kept)),
            None => bucket.push((v, raw)),
        }
    }
    pairs
}

/// The identity of a node's computation: op, domain, attributes (sorted by name; subgraphs
/// are not compared, see [`mergeable`]), inputs.
type NodeKey<'g> = (
    &'g str,
    &'g str,
    Vec<(&'g str, &'g AttrValue)>,
    &'g [Option<ValueId>],
);

fn key(g: &Graph, n: NodeId) -> NodeKey<'_> {
    let node = g.node(n);
    let mut attrs: Vec<_> = node.attrs().iter().map(|a| (a.name(), a.value())).collect();
    attrs.sort_by_key(|(name, _)| *name);
    (node.op(), node.domain(), attrs, node.inputs())
}

/// Why a node may not be merged with an equal one.
fn mergeable(g: &Graph, n: NodeId) -> Result<(), &'static str> {
    let node = g.node(n);
    if node.has_bodies() {
        return Err("it holds subgraphs");
    }
    if !node.in_standard_domain() {
        return Err("custom operators may not be pure");
    }
    if NONDETERMINISTIC.contains(&node.op()) {
        return Err("it is nondeterministic");
    }
    Ok(())
}

/// The first pair (duplicate, kept) of equal nodes, in topological order. Nodes equal to one
/// before them but not mergeable are said under `--explain`.
fn equal_nodes(g: &Graph, cx: &mut PassContext) -> Result<Option<(NodeId, NodeId)>> {
    let mut seen: HashMap<NodeKey, NodeId> = HashMap::new();
    for n in g.topo_order()? {
        let k = key(g, n);
        match seen.get(&k) {
            Some(&kept) => {
                if let Err(why) = mergeable(g, n) {
                    let node = g.node(n);
                    cx.refuse("cse", node.name(), node.op(), why);
                    continue;
                }
                let (dup, keep) = (g.node(n), g.node(kept));
                let clash = dup
                    .outputs()
                    .iter()
                    .zip(keep.outputs())
                    .any(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => g.is_output(*a) && g.is_output(*b),
                        (Some(_), None) => true,
                        _ => false,
                    });
                if clash {
                    cx.refuse(
                        "cse",
                        dup.name(),
                        dup.op(),
                        "merging it would join two graph outputs or drop an output",
                    );
                    continue;
                }
                return Ok(Some((n, kept)));
            }
            None => {
                seen.insert(k, n);
            }
        }
    }
    Ok(None)
}

fn merge_nodes(g: &mut Graph, dup: NodeId, kept: NodeId) -> Result<usize> {
    let pairs: Vec<(ValueId, ValueId)> = g
        .node(dup)
        .outputs()
        .iter()
        .zip(g.node(kept).outputs())
        .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
        .collect();
    let mut patch = Patch::new(g);
    for (a, b) in pairs {
        // When the duplicate feeds a graph output, the kept value takes its name; when the kept
        // one does, the duplicate's readers simply read it.
        if patch.graph().is_output(a) && !patch.is_internal(b) {
            continue;
        }
        patch.replace_value(a, b)?;
    }
    if patch
        .graph()
        .node(dup)
        .outputs()
        .iter()
        .flatten()
        .all(|&v| patch.graph().value(v).uses().is_empty() && !patch.graph().is_output(v))
    {
        patch.remove_node(dup)?;
    }
    patch.commit()
}

impl Pass for Cse {
    fn id(&self) -> &'static str {
        "cse"
    }

    fn about(&self) -> &'static str {
        "merge equal initializers and equal nodes"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let n = model.graph.for_each_graph(&mut |g, _| {
            let mut done = 0;
            let pairs = equal_initializers(g);
            if !pairs.is_empty() {
                let mut patch = Patch::new(g);
                for (dup, kept) in pairs {
                    debug_assert!(matches!(patch.graph().value(kept).def(), Def::Initializer));
                    patch.replace_value(dup, kept)?;
                    patch.remove_value(dup)?;
                }
                done += patch.commit()?;
            }
            while let Some((dup, kept)) = equal_nodes(g, cx)? {
                let edits = merge_nodes(g, dup, kept)?;
                if edits == 0 {
                    break;
                }
                done += edits;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }
}
