//! Model ⇒ ModelProto: nodes in a stable topological order, everything else as it was lifted.

use anyhow::{Context, Result};

use super::graph::{Graph, ValueId};
use super::Model;
use crate::onnx::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};

pub fn lower(model: &Model) -> Result<ModelProto> {
    let mut proto = model.rest().clone();
    proto.graph = Some(lower_graph(&model.graph)?);
    Ok(proto)
}

pub(super) fn lower_graph(g: &Graph) -> Result<GraphProto> {
    let name = |v: ValueId| g.value(v).name().to_string();
    let info = |v: ValueId| match g.value(v).info() {
        Some(i) => i.to_proto(&name(v)),
        None => ValueInfoProto {
            name: name(v),
            ..Default::default()
        },
    };
    let mut gp = g.rest().clone();
    gp.name = g.name().to_string();
    for n in g.topo_order()? {
        let node = g.node(n);
        let mut np: NodeProto = node.rest().clone();
        np.op_type = node.op().to_string();
        np.domain = node.domain().to_string();
        np.name = node.name().to_string();
        np.input = node
            .inputs()
            .iter()
            .map(|v| v.map(name).unwrap_or_default())
            .collect();
        np.output = node
            .outputs()
            .iter()
            .map(|v| v.map(name).unwrap_or_default())
            .collect();
        for attr in node.attrs() {
            let graphs = attr
                .bodies()
                .map(lower_graph)
                .collect::<Result<Vec<_>>>()
                .with_context(|| {
                    format!("in attribute '{}' of node '{}'", attr.name(), node.name())
                })?;
            np.attribute.push(attr.to_proto(graphs));
        }
        gp.node.push(np);
    }
    gp.input = g.inputs().iter().map(|&v| info(v)).collect();
    gp.initializer = g
        .initializers()
        .iter()
        .filter_map(|&v| g.value(v).initializer().map(|t| t.to_proto(&name(v))))
        .collect();
    gp.sparse_initializer = g
        .sparse_initializers()
        .iter()
        .filter_map(|&v| {
            let mut s = g.value(v).sparse_initializer()?.clone();
            if let Some(values) = s.values.as_mut() {
                values.name = name(v);
            }
            Some(s)
        })
        .collect();
    gp.output = g
        .outputs()
        .iter()
        .map(|o| o.info.to_proto(&name(o.value)))
        .collect();
    gp.value_info = g.value_info().iter().map(|&v| info(v)).collect();
    Ok(gp)
}
