//! The IR's invariants, checked after loading, after every pass in tests and debug builds, and
//! in release under `--verify-each`.
//!
//! 1. Acyclic: the operators of every graph can be ordered so each runs after what it reads.
//! 2. Defined once: every value has exactly one definition (graph input, initializer, sparse
//!    initializer, capture, or one output slot of one node), and names are unique in a graph.
//! 3. Consistent links: every value a node reads (as an input or through a subgraph capture)
//!    exists and lists that read among its uses, and every recorded use is a real read.
//!    Declaration-only values are never read. Graph outputs name live values.
//! 4. Captures resolve: a subgraph's captured names exist in the graph of the node that holds it,
//!    and that node lists them among its captures.
//! 5. Types present: initializers have an element type; top-level inputs and outputs declare one.
//! 6. Opsets declared: every operator's domain has an opset import.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::graph::{Def, Graph, Slot, Use};
use super::tensor::DType;
use super::Model;

pub fn verify(model: &Model) -> Result<()> {
    verify_graph(&model.graph, true)?;
    let mut domains = HashSet::new();
    collect_domains(&model.graph, &mut domains);
    for d in domains {
        if model.opset(&d).is_none() {
            let shown = if d.is_empty() {
                "ai.onnx (default)"
            } else {
                &d
            };
            bail!("operators of domain '{shown}' are used but the model imports no opset for it");
        }
    }
    Ok(())
}

fn collect_domains(g: &Graph, out: &mut HashSet<String>) {
    for n in g.node_ids() {
        let node = g.node(n);
        let d = if node.domain() == "ai.onnx" {
            ""
        } else {
            node.domain()
        };
        out.insert(d.to_string());
        for a in node.attrs() {
            for b in a.bodies() {
                collect_domains(b, out);
            }
        }
    }
}

pub fn verify_graph(g: &Graph, top: bool) -> Result<()> {
    g.topo_order()?;
    let mut seen = HashSet::new();
    for (v, value) in g.values() {
        if g.find(value.name()) != Some(v) || !seen.insert(value.name()) {
            bail!("value name '{}' is not unique", value.name());
        }
        if let Def::Node { node, slot } = value.def() {
            if !g.contains_node(node) || g.node(node).output(slot) != Some(v) {
                bail!(
                    "value '{}' claims a producer that does not output it",
                    value.name()
                );
            }
        }
        if value.def() == Def::Declared && !value.uses().is_empty() {
            bail!("'{}' is read but nothing produces it", value.name());
        }
        for u in value.uses() {
            let ok = g.contains_node(u.node)
                && match u.slot {
                    Slot::Input(i) => g.node(u.node).input(i) == Some(v),
                    Slot::Capture => g.node(u.node).captures().contains(&v),
                };
            if !ok {
                bail!("value '{}' records a use that is not a read", value.name());
            }
        }
        if value
            .initializer()
            .is_some_and(|t| t.dtype() == DType::UNDEFINED)
        {
            bail!("initializer '{}' has no element type", value.name());
        }
    }
    for n in g.node_ids() {
        let node = g.node(n);
        let here = || format!("node '{}' ({})", node.name(), node.op());
        for (i, v) in node.inputs().iter().enumerate() {
            if let Some(v) = v {
                if !g.contains_value(*v) {
                    bail!("{} reads a value that no longer exists", here());
                }
                let u = Use {
                    node: n,
                    slot: Slot::Input(i),
                };
                if !g.value(*v).uses().contains(&u) {
                    bail!(
                        "{} reads '{}' without a recorded use",
                        here(),
                        g.value(*v).name()
                    );
                }
            }
        }
        for (slot, v) in node.outputs().iter().enumerate() {
            if let Some(v) = v {
                if !g.contains_value(*v) || g.value(*v).def() != (Def::Node { node: n, slot }) {
                    bail!("{} has an output it does not define", here());
                }
            }
        }
        let captured: HashSet<&str> = node.captures().iter().map(|&c| g.value(c).name()).collect();
        for attr in node.attrs() {
            for body in attr.bodies() {
                verify_graph(body, false)
                    .with_context(|| format!("in attribute '{}' of {}", attr.name(), here()))?;
                for &c in body.captures() {
                    let name = body.value(c).name();
                    if !captured.contains(name) {
                        bail!(
                            "a subgraph of {} reads '{name}', which the node does not capture",
                            here()
                        );
                    }
                }
            }
        }
    }
    for o in g.outputs() {
        if !g.contains_value(o.value) {
            bail!("a graph output names a value that no longer exists");
        }
    }
    if top {
        for &v in g.inputs() {
            if g.dtype(v).is_none() && g.ty(v).is_none() {
                bail!("graph input '{}' declares no type", g.value(v).name());
            }
        }
        for o in g.outputs() {
            if o.info.ty.is_none() {
                bail!(
                    "graph output '{}' declares no type",
                    g.value(o.value).name()
                );
            }
        }
    }
    Ok(())
}
