//! Visiting every tensor a model holds, wherever it sits: initializers, sparse initializers,
//! tensor attributes, nested graph attributes, functions and training graphs. Loading uses it to
//! resolve external data, saving to move large tensors out.

use super::proto::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, SparseTensorProto,
    TensorProto,
};

pub fn for_each_tensor(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(g) = model.graph.as_mut() {
        graph(g, f)?;
    }
    for func in &mut model.functions {
        function(func, f)?;
    }
    for ti in &mut model.training_info {
        for g in [ti.initialization.as_mut(), ti.algorithm.as_mut()]
            .into_iter()
            .flatten()
        {
            graph(g, f)?;
        }
    }
    Ok(())
}

fn function(
    func: &mut FunctionProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for n in &mut func.node {
        node(n, f)?;
    }
    for a in &mut func.attribute_proto {
        attribute(a, f)?;
    }
    Ok(())
}

fn graph(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for t in &mut g.initializer {
        f(t)?;
    }
    for s in &mut g.sparse_initializer {
        sparse(s, f)?;
    }
    for n in &mut g.node {
        node(n, f)?;
    }
    Ok(())
}

fn node(
    n: &mut NodeProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for a in &mut n.attribute {
        attribute(a, f)?;
    }
    Ok(())
}

fn attribute(
    a: &mut AttributeProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(t) = a.t.as_mut() {
        f(t)?;
    }
    for t in &mut a.tensors {
        f(t)?;
    }
    if let Some(s) = a.sparse_tensor.as_mut() {
        sparse(s, f)?;
    }
    for s in &mut a.sparse_tensors {
        sparse(s, f)?;
    }
    if let Some(g) = a.g.as_mut() {
        graph(g, f)?;
    }
    for g in &mut a.graphs {
        graph(g, f)?;
    }
    Ok(())
}

fn sparse(
    s: &mut SparseTensorProto,
    f: &mut dyn FnMut(&mut TensorProto) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for t in [s.values.as_mut(), s.indices.as_mut()]
        .into_iter()
        .flatten()
    {
        f(t)?;
    }
    Ok(())
}
