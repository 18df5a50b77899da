//! The intermediate representation every pass reads and rewrites.
//!
//! # The contract
//!
//! A [`Model`] is one top-level [`Graph`] plus the model envelope (ir_version, opset imports,
//! producer, doc strings, metadata, functions, training info), which passes read through
//! accessors; the only part they change is an opset import ([`Model::set_opset`]).
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
//! **Changes.** A graph that exists changes only through a [`Patch`]: `Graph`'s mutators and
//! `Node`'s fields are private to this module, so every edit is one the patch checks (a value
//! replaced only by one of the same element type and compatible shape, a node removed only
//! once nothing reads it, interface names kept). A rewrite states the types of the values it
//! makes, so the check has something to compare. A graph made from nothing (the loader, the
//! zoo) is built with a [`GraphBuilder`]. Walking into subgraphs with
//! [`Graph::for_each_graph`] keeps their holders' captures in step.
//!
//! **Attributes** are typed ([`AttrValue`]), equal when their values are, so passes compare
//! and hash them without protobuf.
//!
//! **Invariants** are listed and checked in [`verify`].

mod build;
mod graph;
mod lift;
mod lower;
mod patch;
pub mod print;
mod tensor;
pub mod verify;

pub use build::GraphBuilder;
pub use graph::{
    first_free, standard_domain, Attr, AttrValue, BodyFeed, Def, Graph, Node, NodeId, Output,
    Scope, Slot, Use, Value, ValueId, ValueInfo,
};
pub use patch::{type_clash, Patch};
pub use tensor::{DType, Dim, Fnv as ContentHash, Tensor, Type};

use anyhow::{ensure, Context, Result};

use crate::onnx::proto::{ModelProto, OperatorSetIdProto};

/// A model: its main graph and everything else the file held.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    /// The ModelProto without its graph.
    rest: ModelProto,
}

/// "" and "ai.onnx" are the same domain.
fn same_domain(a: &str, b: &str) -> bool {
    fn norm(d: &str) -> &str {
        if d == "ai.onnx" {
            ""
        } else {
            d
        }
    }
    norm(a) == norm(b)
}

impl Model {
    /// Lifts a decoded model and checks the invariants.
    pub fn from_proto(proto: ModelProto) -> Result<Model> {
        let model = lift::lift(proto)?;
        verify::verify(&model)?;
        Ok(model)
    }

    /// A new model of `graph` importing `opsets` (domain, version).
    pub fn new(graph: Graph, ir_version: i64, opsets: &[(&str, i64)], producer: &str) -> Model {
        Model {
            graph,
            rest: ModelProto {
                ir_version,
                opset_import: opsets
                    .iter()
                    .map(|&(domain, version)| OperatorSetIdProto {
                        domain: domain.to_string(),
                        version,
                    })
                    .collect(),
                producer_name: producer.to_string(),
                producer_version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
        }
    }

    pub fn to_proto(&self) -> Result<ModelProto> {
        lower::lower(self)
    }

    /// A model of this one's envelope whose main graph is a copy of `body` (a subgraph of
    /// this model), its own inputs of the types `inputs` gives in order (what its node feeds
    /// it, not what the body declares) and the outer values it captures made graph inputs of
    /// the given types: a body as tract can analyse or run it on its own.
    pub fn of_body(
        &self,
        body: &Graph,
        inputs: &[Type],
        captures: &[(String, Type)],
    ) -> Result<Model> {
        let mut graph = lower::lower_graph(body)?;
        ensure!(
            inputs.len() == graph.input.len(),
            "{} types for the {} inputs of body '{}'",
            inputs.len(),
            graph.input.len(),
            body.name()
        );
        for (input, ty) in graph.input.iter_mut().zip(inputs) {
            input.r#type = Some(ty.to_proto());
        }
        graph.input.extend(
            captures
                .iter()
                .map(|(name, ty)| ValueInfo::of(ty.clone()).to_proto(name)),
        );
        Model::from_proto(ModelProto {
            graph: Some(graph),
            ..self.rest.clone()
        })
    }

    /// A model of this one's envelope holding node `n` of its main graph alone: its constant
    /// inputs as initializers, the others as graph inputs of `types` (in input order), its
    /// outputs as graph outputs. What an op computes on given inputs, run by itself.
    pub fn of_node(&self, n: NodeId, types: &[Type]) -> Result<Model> {
        let g = &self.graph;
        let node = g.node(n);
        let mut b = GraphBuilder::new(node.name());
        let mut inputs = Vec::new();
        let mut types = types.iter();
        for v in node.inputs() {
            let Some(v) = *v else {
                inputs.push(None);
                continue;
            };
            let value = g.value(v);
            if let Some(found) = b.graph().find(value.name()) {
                inputs.push(Some(found));
                continue;
            }
            let made = match value.constant() {
                Some(t) => b.initializer(value.name(), t.clone())?,
                None => {
                    let ty = types.next().cloned().with_context(|| {
                        format!(
                            "no type given for '{}', read by '{}'",
                            value.name(),
                            node.name()
                        )
                    })?;
                    b.input(value.name(), ValueInfo::of(ty))?
                }
            };
            inputs.push(Some(made));
        }
        let outputs: Vec<String> = (node.outputs().iter())
            .map(|o| o.map_or(String::new(), |o| g.value(o).name().to_string()))
            .collect();
        let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let m = b.node(
            node.op(),
            node.domain(),
            node.name(),
            &inputs,
            &names,
            node.attrs().to_vec(),
        )?;
        for (slot, o) in node.outputs().iter().enumerate() {
            let (Some(o), Some(made)) = (o, b.graph().node(m).output(slot)) else {
                continue;
            };
            let info = g.value(*o).info().cloned().unwrap_or_else(|| ValueInfo {
                ty: g.ty(*o).cloned(),
                rest: Default::default(),
            });
            b.output(made, info);
        }
        Ok(Model {
            graph: b.finish(),
            rest: self.rest.clone(),
        })
    }

    /// The envelope without the graph, for lowering.
    pub(crate) fn rest(&self) -> &ModelProto {
        &self.rest
    }

    /// The imported opset version of `domain` ("" and "ai.onnx" are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.opsets()
            .find(|(d, _)| same_domain(d, domain))
            .map(|(_, v)| v)
    }

    /// Every opset import, as written: (domain, version).
    pub fn opsets(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        self.rest
            .opset_import
            .iter()
            .map(|o| (o.domain.as_str(), o.version))
    }

    /// Imports `domain` at `version`, replacing the import of that domain if there is one.
    pub fn set_opset(&mut self, domain: &str, version: i64) {
        let imports = &mut self.rest.opset_import;
        match imports.iter_mut().find(|o| same_domain(&o.domain, domain)) {
            Some(o) => o.version = version,
            None => imports.push(OperatorSetIdProto {
                domain: domain.to_string(),
                version,
            }),
        }
    }

    pub fn ir_version(&self) -> i64 {
        self.rest.ir_version
    }

    /// Producer name and version, as one string.
    pub fn producer(&self) -> String {
        format!("{} {}", self.rest.producer_name, self.rest.producer_version)
            .trim()
            .to_string()
    }

    /// The value of metadata entry `key`, if the model has one.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.rest
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The model-local functions, as (domain, name).
    pub fn functions(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.rest
            .functions
            .iter()
            .map(|f| (f.domain.as_str(), f.name.as_str()))
    }
}
