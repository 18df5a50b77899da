//! `fold-constants`: operators whose inputs are all constants are computed now, by tract.
//!
//! ```text
//!   w = const f32[64,3,3,3]                    
//!   s = const f32[64,1,1,1]          ⇒          ws = const f32[64,3,3,3]   (= w * s)
//!   ws = Mul(w, s) ─▶ Conv(x, ws)               Conv(x, ws)
//! ```
//!
//! The largest constant region is evaluated in one tract run; its frontier (the values read
//! from outside it) become initializers. Refuses: operators of non-standard domains (opaque);
//! nondeterministic operators; QuantizeLinear/DequantizeLinear (folding them would undo
//! quantization); nodes holding subgraphs; values that are graph outputs; and any folded value
//! larger than the constants it is computed from plus the fold limit (1 MiB by default,
//! `--fold-limit`), since folding Tile, Expand or ConstantOfShape can blow a file up. When tract
//! cannot evaluate the region as a whole, nodes are tried one by one and those it cannot run
//! are kept. Initializers that are graph inputs are not constants (a caller may override them).
//! Runs inside subgraphs too, on what a body computes from its own constants: a value it
//! captures from outside is not a constant there, whatever it is outside. Runs after
//! `fold-shape`, whose constants it propagates, and after `constant-to-initializer`.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use crate::ir::{Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{Changed, Pass, PassContext, NONDETERMINISTIC};
use crate::runtime::Evaluator;

pub struct FoldConstants {
    /// Bytes a folded value may exceed the constants it comes from by.
    pub limit: u64,
}

pub const DEFAULT_FOLD_LIMIT: u64 = 1 << 20;

/// Besides the nondeterministic ones: folding Q/DQ would undo quantization, and Constant has a
/// pass of its own.
const NEVER: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "Constant",
];

fn why_not(g: &Graph, n: NodeId) -> Option<&'static str> {
    let node = g.node(n);
    if !node.in_standard_domain() {
        return Some("operators outside the standard domains are opaque");
    }
    if NEVER.contains(&node.op()) || NONDETERMINISTIC.contains(&node.op()) {
        return Some("this operator is never folded");
    }
    if node.has_bodies() {
        return Some("it holds subgraphs");
    }
    if node.outputs().iter().flatten().any(|&v| g.is_output(v)) {
        return Some("its output is a graph output");
    }
    None
}

/// Nodes computable from constants alone, in topological order.
fn constant_region(g: &Graph) -> Result<Vec<NodeId>> {
    let mut region = Vec::new();
    let mut computed: HashSet<ValueId> = HashSet::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let ready = node
            .inputs()
            .iter()
            .flatten()
            .all(|&v| g.value(v).constant().is_some() || computed.contains(&v));
        if !ready || why_not(g, n).is_some() {
            continue;
        }
        computed.extend(node.outputs().iter().flatten());
        region.push(n);
    }
    Ok(region)
}

/// Bytes of the constants each region value is computed from.
fn source_bytes(g: &Graph, region: &[NodeId]) -> HashMap<ValueId, u64> {
    let mut sources: HashMap<ValueId, HashSet<ValueId>> = HashMap::new();
    for &n in region {
        let mut s = HashSet::new();
        for &v in g.node(n).inputs().iter().flatten() {
            match sources.get(&v) {
                Some(up) => s.extend(up.iter().copied()),
                None => {
                    s.insert(v);
                }
            }
        }
        for &o in g.node(n).outputs().iter().flatten() {
            sources.insert(o, s.clone());
        }
    }
    sources
        .into_iter()
        .map(|(v, s)| {
            let bytes = s
                .iter()
                .filter_map(|&c| g.value(c).constant())
                .map(Tensor::stored_bytes)
                .sum();
            (v, bytes)
        })
        .collect()
}

impl FoldConstants {
    /// Folds `g`'s constant region; the number of edits.
    fn fold(&self, eval: &Evaluator, g: &mut Graph, cx: &mut PassContext) -> Result<usize> {
        let graph = g;
        let g = &*graph;
        let region = constant_region(g)?;
        if region.is_empty() {
            return Ok(0);
        }
        let in_region: HashSet<NodeId> = region.iter().copied().collect();
        let frontier: Vec<ValueId> = region
            .iter()
            .flat_map(|&n| g.node(n).outputs().iter().flatten().copied())
            .filter(|&v| {
                g.value(v)
                    .uses()
                    .iter()
                    .any(|u| !in_region.contains(&u.node))
            })
            .collect();
        let mut folded: Vec<(ValueId, Tensor)> = Vec::new();
        match eval.evaluate(g, &region, &frontier) {
            Ok(values) => folded.extend(frontier.iter().copied().zip(values)),
            Err(_) => {
                // One by one: nodes whose inputs are initializers already.
                for &n in &region {
                    let node = g.node(n);
                    if !node
                        .inputs()
                        .iter()
                        .flatten()
                        .all(|&v| g.value(v).constant().is_some())
                    {
                        continue;
                    }
                    let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
                    match eval.evaluate(g, &[n], &outs) {
                        Ok(values) => folded.extend(outs.into_iter().zip(values)),
                        Err(e) => {
                            let why = format!("tract cannot evaluate it: {}", e.root_cause());
                            cx.refuse("fold-constants", node.name(), node.op(), &why);
                        }
                    }
                }
            }
        }
        let budget = source_bytes(g, &region);
        folded.retain(|(v, t)| {
            let allowed = budget.get(v).copied().unwrap_or(0) + self.limit;
            let keep = t.stored_bytes() <= allowed;
            if !keep {
                let n = g.producer(*v).unwrap();
                let why = format!(
                    "folding would store {} bytes, more than its {} bytes of inputs plus the fold limit",
                    t.stored_bytes(),
                    budget.get(v).copied().unwrap_or(0)
                );
                cx.refuse("fold-constants", g.node(n).name(), g.node(n).op(), &why);
            }
            keep
        });
        if folded.is_empty() {
            return Ok(0);
        }
        let mut patch = Patch::new(graph);
        for (v, t) in folded {
            patch.replace_with_initializer(v, t)?;
        }
        // The folded region is unread now, back to front; what is still read stays.
        for &n in region.iter().rev() {
            let node = patch.graph().node(n);
            let unread = node
                .outputs()
                .iter()
                .flatten()
                .all(|&v| patch.graph().value(v).uses().is_empty());
            if unread {
                patch.remove_node(n)?;
            }
        }
        patch.commit()
    }
}

impl Pass for FoldConstants {
    fn id(&self) -> &'static str {
        "fold-constants"
    }

    fn about(&self) -> &'static str {
        "compute operators whose inputs are all constants (through tract, within a size budget)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let eval = Evaluator::of(model);
        let n = model
            .graph
            .for_each_graph(&mut |g, _| self.fold(&eval, g, cx))?;
        Ok(Changed::from_count(n))
    }
}
