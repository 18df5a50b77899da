//! The element type of every value of a graph, known without running anything: what the
//! operator schemas fix (a type parameter shared with an input, one type of its own), what an
//! attribute sets (Cast's `to`, ConstantOfShape's `value`), what a body returns (If, Loop,
//! Scan), and otherwise what the file declares. Exports declare few inner values; lowering
//! precision must know the type of every one it touches, and what it makes must agree with what
//! a checker infers the same way.

use std::collections::HashMap;

use super::schemas::{schema, Tie};
use crate::ir::{AttrValue, DType, Def, Graph, NodeId, ValueId};

/// Element types by value.
pub type Types = HashMap<ValueId, DType>;

/// The element types of `g`'s values, its captures typed by `outer` (by name) where it knows
/// them; `opset` is the model's default-domain opset. Values whose type cannot be told are
/// absent.
pub fn infer(g: &Graph, outer: &HashMap<String, DType>, opset: i64) -> Types {
    let mut types = Types::new();
    for (v, value) in g.values() {
        let known = match value.def() {
            Def::Initializer => value.constant().map(|t| t.dtype()),
            Def::Capture => outer.get(value.name()).copied().or_else(|| g.dtype(v)),
            Def::Input | Def::SparseInitializer => g.dtype(v),
            Def::Node { .. } | Def::Declared => None,
        };
        if let Some(d) = known {
            types.insert(v, d);
        }
    }
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    for n in order {
        for (slot, out) in g.node(n).outputs().iter().enumerate() {
            let Some(out) = *out else { continue };
            let d = match g.node(n).has_bodies() {
                true => body_output(g, n, slot, &types, outer, opset),
                false => output_type(g, n, slot, &types, opset),
            };
            if let Some(d) = d.or_else(|| g.dtype(out)) {
                types.insert(out, d);
            }
        }
    }
    types
}

/// The element type output `slot` of `n` has by the rules of its operator, when they fix it.
fn output_type(g: &Graph, n: NodeId, slot: usize, types: &Types, opset: i64) -> Option<DType> {
    let node = g.node(n);
    if !node.in_standard_domain() {
        return None;
    }
    let formal = schema(node.op(), opset)?.output(slot)?;
    if let Some(only) = formal.only {
        return Some(only);
    }
    if let Tie::Param(t) = formal.tie {
        let tied = node.inputs().iter().enumerate().find_map(|(i, v)| {
            let f = schema(node.op(), opset)?.input(i)?;
            (f.tie == Tie::Param(t)).then(|| types.get(&(*v)?).copied())?
        });
        if tied.is_some() {
            return tied;
        }
    }
    set_by_attribute(g, n)
}

/// The type an attribute gives the output of `n`, for operators whose output type parameter
/// no input shares.
fn set_by_attribute(g: &Graph, n: NodeId) -> Option<DType> {
    let node = g.node(n);
    let attr_type = |name: &str| node.attr_i(name).map(|t| DType(t as i32));
    match node.op() {
        "Cast" => attr_type("to"),
        "Constant" => match node.attrs().first().map(|a| (a.name(), a.value())) {
            Some((_, AttrValue::Tensor(t))) => Some(t.dtype()),
            Some(("value_float" | "value_floats", _)) => Some(DType::F32),
            Some(("value_int" | "value_ints", _)) => Some(DType::I64),
            _ => None,
        },
        "ConstantOfShape" => Some(match node.attr("value").map(|a| a.value()) {
            Some(AttrValue::Tensor(t)) => t.dtype(),
            _ => DType::F32,
        }),
        "RandomNormal" | "RandomUniform" => attr_type("dtype").or(Some(DType::F32)),
        "RandomNormalLike" | "RandomUniformLike" | "EyeLike" => attr_type("dtype"),
        "Multinomial" => attr_type("dtype").or(Some(DType::I32)),
        _ => None,
    }
}

/// What an If, Loop or Scan returns in output `slot`: what its body declares there (a Loop's
/// body returns its condition first), or, where the body declares no type (exporters often
/// leave a branch's outputs untyped), what the body computes there from what it captures.
fn body_output(
    g: &Graph,
    n: NodeId,
    slot: usize,
    types: &Types,
    outer: &HashMap<String, DType>,
    opset: i64,
) -> Option<DType> {
    let node = g.node(n);
    if !node.in_standard_domain() {
        return None;
    }
    let skip = usize::from(node.is("Loop"));
    let body = node.attrs().iter().flat_map(|a| a.bodies()).next()?;
    let out = body.outputs().get(slot + skip)?;
    body.dtype(out.value).or_else(|| {
        let mut seen = outer.clone();
        seen.extend(
            (g.values()).filter_map(|(v, x)| Some((x.name().to_string(), *types.get(&v)?))),
        );
        infer(body, &seen, opset).get(&out.value).copied()
    })
}
