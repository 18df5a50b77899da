//! `constant-to-initializer`: a Constant node becomes the initializer it always was.
//!
//! ```text
//!   c = Constant{value=t} ─▶ Mul(x, c)      ⇒      initializer c = t ─▶ Mul(x, c)
//! ```
//!
//! Covers `value`, `value_float(s)`, `value_int(s)` and `value_string(s)`. Refuses a
//! `sparse_value` (kept as written), an attribute that refers to a function's attribute, and a
//! Constant whose output is a graph output (an initializer cannot stand in for it everywhere),
//! and models of IR version < 4, where initializers must also be graph inputs.
//! Runs inside subgraphs too: a body may hold initializers of its own. Later passes then see
//! every constant in one place.

use anyhow::Result;
use bytes::Bytes;

use crate::ir::{DType, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::TensorProto;
use crate::passes::{for_each_graph, Changed, Pass, PassContext};

pub struct ConstantToInitializer;

struct Found {
    node: NodeId,
    output: ValueId,
    tensor: Tensor,
}

/// The tensor a Constant node stands for, or why it is kept.
fn constant_value(g: &Graph, n: NodeId) -> Result<Tensor, &'static str> {
    let node = g.node(n);
    let [attr] = node.attrs.as_slice() else {
        return Err("it does not have exactly one value attribute");
    };
    let a = &attr.proto;
    if !a.ref_attr_name.is_empty() {
        return Err("its value refers to a function attribute");
    }
    let from = |dtype: DType, dims: Vec<i64>, raw: Vec<u8>| {
        Tensor::from_raw(dtype, dims, Bytes::from(raw))
    };
    let le = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let lef = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    Ok(match (a.name.as_str(), a.r#type()) {
        ("value", AttributeType::Tensor) => match &a.t {
            Some(t) => Tensor::from_proto(t.clone()),
            None => return Err("its value attribute holds no tensor"),
        },
        ("value_float", _) => from(DType::F32, vec![], lef(&[a.f])),
        ("value_floats", _) => from(DType::F32, vec![a.floats.len() as i64], lef(&a.floats)),
        ("value_int", _) => from(DType::I64, vec![], le(&[a.i])),
        ("value_ints", _) => from(DType::I64, vec![a.ints.len() as i64], le(&a.ints)),
        ("value_string", _) | ("value_strings", _) => {
            let strings = if a.name == "value_string" {
                vec![a.s.clone()]
            } else {
                a.strings.clone()
            };
            let dims = if a.name == "value_string" {
                vec![]
            } else {
                vec![strings.len() as i64]
            };
            Tensor::from_proto(TensorProto {
                dims,
                data_type: DType::STRING.0,
                string_data: strings,
                ..Default::default()
            })
        }
        ("sparse_value", _) => return Err("sparse constants are kept as written"),
        _ => return Err("its value attribute is not one we know"),
    })
}

fn find(g: &Graph, cx: &mut PassContext) -> Vec<Found> {
    let mut found = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if !node.is("Constant") {
            continue;
        }
        let Some(output) = node.output(0) else {
            continue;
        };
        if g.is_output(output) {
            cx.refuse(
                "constant-to-initializer",
                &node.name,
                "Constant",
                "its output is a graph output",
            );
            continue;
        }
        match constant_value(g, n) {
            Ok(tensor) => found.push(Found {
                node: n,
                output,
                tensor,
            }),
            Err(why) => cx.refuse("constant-to-initializer", &node.name, "Constant", why),
        }
    }
    found.sort_by_key(|f| f.node);
    found
}

impl Pass for ConstantToInitializer {
    fn id(&self) -> &'static str {
        "constant-to-initializer"
    }

    fn about(&self) -> &'static str {
        "turn Constant nodes into initializers"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        if model.rest.ir_version < 4 {
            // Before IR 4 every initializer must also be a graph input, which would widen the
            // model's interface.
            return Ok(Changed::No);
        }
        let n = for_each_graph(&mut model.graph, &mut |g, _| {
            let found = find(g, cx);
            let mut patch = Patch::new(g);
            for f in found {
                patch.replace_with_initializer(f.output, f.tensor)?;
                patch.remove_node(f.node)?;
            }
            patch.commit()
        })?;
        Ok(Changed::from_count(n))
    }
}
