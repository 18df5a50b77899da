//! The intermediate representation every pass reads and rewrites.
//!
//! # The contract
//!
//! A [`Model`] is one top-level [`Graph`] plus the model envelope (`rest`: ir_version, opset
//! imports, producer, doc strings, metadata, functions, training info), which passes read but
//! rarely touch.
//!
//! A graph holds **operators** as nodes of a petgraph `StableDiGraph` that no code outside this
//! module sees; an edge carries one value from the producing node to one input slot (or the
//! subgraph captures) of a consumer. Handles are newtypes: a [`NodeId`] stays valid until its node
//! is removed, whatever else is removed; a [`ValueId`] is never reused within a graph.
//!
//! **Values** live in a side table. Each has a name unique in its graph, exactly one definition
//! ([`Def`]: graph input, initializer, sparse initializer, capture from the enclosing graph, one
//! output slot of one node, or — for stale `value_info` entries only — a declaration nobody may
//! read), an optional declared [`Type`] whose shape is made of [`Dim::Known`], [`Dim::Sym`] and
//! [`Dim::Unknown`], and the list of its reads. The graph's inputs, outputs, initializers and
//! value_info are explicit ordered lists.
//!
//! **Names.** Graph input and output names are the model's interface and are never changed.
//! Internal names are kept where a value survives a rewrite; new ones come from
//! [`Graph::fresh_name`], which is deterministic.
//!
//! **Constants** are [`Tensor`]s holding their payload as `bytes::Bytes`. Loading maps the file,
//! so a payload is a slice of the mapping; moving a tensor never copies it.
//!
//! **Subgraphs** (If, Loop, Scan bodies) are graphs owned by their node's attribute. A body names
//! the outer values it reads as captures ([`Def::Capture`]), and the node lists the same values in
//! its captures, so dead-code elimination and ordering see those reads. A pass either handles
//! subgraphs or leaves them untouched, and says which in its header.
//!
//! **Opaque operators.** Operators of domains we do not know, and any operator we cannot
//! evaluate, are kept exactly as read: never folded, never deleted because we could not run them.
//!
//! **Lossless.** Lifting then lowering without passes gives back the same model: every field we
//! do not model rides along in a `rest` proto, and nodes are written in their original order
//! wherever dependencies allow. The ONNX backend test corpus is the proof (tests/roundtrip.rs).
//!
//! **Invariants** are listed and checked in [`verify`].

mod graph;
mod lift;
mod lower;
mod patch;
pub mod print;
mod tensor;
pub mod verify;

pub use graph::{Attr, Def, Graph, Node, NodeId, Output, Slot, Use, Value, ValueId, ValueInfo};
pub use patch::{type_clash, Patch};
pub use tensor::{DType, Dim, Fnv as ContentHash, Tensor, Type};

use anyhow::Result;

use crate::onnx::proto::ModelProto;

/// A model: its main graph and everything else the file held.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    /// The ModelProto without its graph.
    pub rest: ModelProto,
}

impl Model {
    /// Lifts a decoded model and checks the invariants.
    pub fn from_proto(proto: ModelProto) -> Result<Model> {
        let model = lift::lift(proto)?;
        verify::verify(&model)?;
        Ok(model)
    }

    pub fn to_proto(&self) -> Result<ModelProto> {
        lower::lower(self)
    }

    /// The imported opset version of `domain` ("" and "ai.onnx" are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| {
            if d == "ai.onnx" {
                String::new()
            } else {
                d.to_string()
            }
        };
        let want = norm(domain);
        self.rest
            .opset_import
            .iter()
            .find(|o| norm(&o.domain) == want)
            .map(|o| o.version)
    }
}
