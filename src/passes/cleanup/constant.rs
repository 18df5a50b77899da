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
//! every constant in one place. Runs first: nothing needs to run before it.

use anyhow::Result;
use bytes::Bytes;

use crate::ir::{AttrValue, DType, Graph, Model, NodeId, Patch, Tensor, ValueId};
use crate::passes::{Look, Refusal, Rewrite};

pub struct ConstantToInitializer;

pub struct Found {
    node: NodeId,
    output: ValueId,
    tensor: Tensor,
}

/// The tensor a Constant node stands for, or why it is kept.
fn constant_value(g: &Graph, n: NodeId) -> Result<Tensor, &'static str> {
    let node = g.node(n);
    let [attr] = node.attrs() else {
        return Err("it does not have exactly one value attribute");
    };
    if attr.is_reference() {
        return Err("its value refers to a function attribute");
    }
    let le = |v: &[i64]| Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    let lef = |v: &[f32]| Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    Ok(match (attr.name(), attr.value()) {
        ("value", AttrValue::Tensor(t)) => (**t).clone(),
        ("value", _) => return Err("its value attribute holds no tensor"),
        ("value_float", AttrValue::Float(f)) => Tensor::from_raw(DType::F32, vec![], lef(&[*f])),
        ("value_floats", AttrValue::Floats(v)) => {
            Tensor::from_raw(DType::F32, vec![v.len() as i64], lef(v))
        }
        ("value_int", AttrValue::Int(i)) => Tensor::from_raw(DType::I64, vec![], le(&[*i])),
        ("value_ints", AttrValue::Ints(v)) => {
            Tensor::from_raw(DType::I64, vec![v.len() as i64], le(v))
        }
        ("value_string", AttrValue::String(s)) => Tensor::from_strings(vec![], vec![s.clone()]),
        ("value_strings", AttrValue::Strings(v)) => {
            Tensor::from_strings(vec![v.len() as i64], v.clone())
        }
        ("sparse_value", _) => return Err("sparse constants are kept as written"),
        _ => return Err("its value attribute is not one we know"),
    })
}

impl Rewrite for ConstantToInitializer {
    type Match = Found;
    const ID: &'static str = "constant-to-initializer";
    const ABOUT: &'static str = "turn Constant nodes into initializers";

    fn applies(&self, model: &Model) -> bool {
        // Before IR 4 every initializer must also be a graph input, which would widen the
        // model's interface.
        model.ir_version() >= 4
    }

    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Constant")
    }

    fn find(&self, g: &Graph, n: NodeId, _: &Look) -> Result<Found, Refusal> {
        let output = g.node(n).output(0).ok_or(Refusal::NotMine)?;
        if g.is_output(output) {
            return Err("its output is a graph output".into());
        }
        Ok(Found {
            node: n,
            output,
            tensor: constant_value(g, n)?,
        })
    }

    fn apply(&self, patch: &mut Patch, f: Found) -> Result<()> {
        patch.replace_with_initializer(f.output, f.tensor)?;
        patch.remove_node(f.node)
    }
}
