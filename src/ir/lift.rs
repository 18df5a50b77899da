//! ModelProto ⇒ Model. Everything we do not model rides along in the `rest` protos, so
//! lowering gives back the same model.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::graph::{Attr, Graph, ValueId, ValueInfo};
use super::tensor::Tensor;
use super::Model;
use crate::onnx::proto::{GraphProto, ModelProto};

pub fn lift(mut proto: ModelProto) -> Result<Model> {
    let gp = proto.graph.take().context("the model has no graph")?;
    let graph = lift_graph(gp, &|_| false)?;
    Ok(Model { graph, rest: proto })
}

/// `outer` says whether a name is visible from an enclosing graph (always false at the top).
fn lift_graph(mut gp: GraphProto, outer: &dyn Fn(&str) -> bool) -> Result<Graph> {
    let mut g = Graph::new(&std::mem::take(&mut gp.name));
    for vi in std::mem::take(&mut gp.input) {
        let name = vi.name.clone();
        g.add_input(&name, ValueInfo::from_proto(vi))?;
    }
    for t in std::mem::take(&mut gp.initializer) {
        let name = t.name.clone();
        if name.is_empty() {
            bail!("an initializer has no name");
        }
        g.add_initializer(&name, Tensor::from_proto(t))?;
    }
    for s in std::mem::take(&mut gp.sparse_initializer) {
        let name = s
            .values
            .as_ref()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        if name.is_empty() {
            bail!("a sparse initializer has no name");
        }
        g.add_sparse_initializer(&name, s)?;
    }

    // Outputs first, inputs second: a graph is meant to be sorted, but reading it in two
    // passes also accepts one that is not, and lets verification report a cycle by name.
    let mut pending = Vec::new();
    for mut np in std::mem::take(&mut gp.node) {
        let outputs = std::mem::take(&mut np.output);
        let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let n = g.add_node(
            &std::mem::take(&mut np.op_type),
            &std::mem::take(&mut np.domain),
            &std::mem::take(&mut np.name),
            &[],
            &outs,
            Vec::new(),
        )?;
        let inputs = std::mem::take(&mut np.input);
        let attrs = std::mem::take(&mut np.attribute);
        g.set_node_rest(n, np);
        pending.push((n, inputs, attrs));
    }

    let local: HashSet<String> = g.values().map(|(_, v)| v.name().to_string()).collect();
    let visible = |name: &str| local.contains(name) || outer(name);
    for (n, inputs, attrs) in pending {
        let describe = |g: &Graph| {
            let node = g.node(n);
            format!("node '{}' ({})", node.name(), node.op())
        };
        let mut lifted = Vec::with_capacity(attrs.len());
        for a in attrs {
            let (mut attr, graphs) = Attr::from_proto(a);
            let mut bodies = Vec::with_capacity(graphs.len());
            for body in graphs {
                bodies.push(lift_graph(body, &visible).with_context(|| {
                    format!("in attribute '{}' of {}", attr.name(), describe(&g))
                })?);
            }
            attr.set_bodies(bodies);
            lifted.push(attr);
        }
        let captured: Vec<String> = lifted
            .iter()
            .flat_map(|a| a.bodies())
            .flat_map(|b| b.captures().iter().map(|&c| b.value(c).name().to_string()))
            .collect();
        for attr in lifted {
            g.set_attr(n, attr);
        }

        let mut ids = Vec::with_capacity(inputs.len());
        for name in &inputs {
            if name.is_empty() {
                ids.push(None);
            } else {
                ids.push(Some(resolve(&mut g, name, outer).with_context(|| {
                    format!(
                        "{} reads '{name}', which no node, graph input or initializer produces",
                        describe(&g)
                    )
                })?));
            }
        }
        g.set_inputs(n, &ids);
        for name in captured {
            let v = resolve(&mut g, &name, outer).with_context(|| {
                format!(
                    "a subgraph of {} reads '{name}', which nothing produces",
                    describe(&g)
                )
            })?;
            g.add_node_capture(n, v);
        }
    }

    for vi in std::mem::take(&mut gp.output) {
        let name = vi.name.clone();
        let v = resolve(&mut g, &name, outer)
            .with_context(|| format!("graph output '{name}' is produced by nothing"))?;
        g.add_output(v, ValueInfo::from_proto(vi));
    }
    // value_info only declares; some tools write an entry twice. The first one is kept.
    let mut declared = HashSet::new();
    for vi in std::mem::take(&mut gp.value_info) {
        let name = vi.name.clone();
        if declared.insert(name.clone()) {
            g.add_value_info(&name, ValueInfo::from_proto(vi))?;
        }
    }
    g.set_rest(gp);
    Ok(g)
}

/// A value of this graph by name, or a new capture when an enclosing graph has it.
fn resolve(g: &mut Graph, name: &str, outer: &dyn Fn(&str) -> bool) -> Result<ValueId> {
    if let Some(v) = g.find(name) {
        return Ok(v);
    }
    if outer(name) {
        return g.add_capture(name);
    }
    bail!("unknown value '{name}'")
}
