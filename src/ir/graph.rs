//! The graph itself: operators in a private petgraph, values in a side table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use super::tensor::{DType, Dim, Tensor, Type};
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::{
    AttributeProto, GraphProto, NodeProto, SparseTensorProto, ValueInfoProto,
};

/// Handle of an operator. Stays valid while the node exists, whatever else is removed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(NodeIndex<u32>);

/// Handle of a value. Never reused within a graph.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ValueId(u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What defines a value. Exactly one thing does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Def {
    /// A graph input (possibly with a default, when an initializer shares its name).
    Input,
    Initializer,
    SparseInitializer,
    /// A value of an enclosing graph, read by this subgraph.
    Capture,
    /// Output `slot` of `node`.
    Node {
        node: NodeId,
        slot: usize,
    },
    /// Named only in `value_info`: nothing defines it and nothing may read it.
    Declared,
}

/// Where a value is read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Use {
    pub node: NodeId,
    pub slot: Slot,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Slot {
    Input(usize),
    /// Read by one of the node's subgraphs.
    Capture,
}

/// Which graph a pass is looking at: the main graph, or a body of a node (at any depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Main,
    Body,
}

/// Declared type and documentation of a value, as in a `ValueInfoProto`.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct ValueInfo {
    pub ty: Option<Type>,
    /// doc_string and metadata_props; name and type are cleared.
    pub rest: ValueInfoProto,
}

impl ValueInfo {
    pub fn of(ty: Type) -> ValueInfo {
        ValueInfo {
            ty: Some(ty),
            rest: ValueInfoProto::default(),
        }
    }

    pub fn from_proto(mut p: ValueInfoProto) -> ValueInfo {
        let ty = p.r#type.take().map(Type::from_proto);
        p.name.clear();
        ValueInfo { ty, rest: p }
    }

    pub fn to_proto(&self, name: &str) -> ValueInfoProto {
        let mut p = self.rest.clone();
        p.name = name.to_string();
        p.r#type = self.ty.as_ref().map(Type::to_proto);
        p
    }
}

/// What feeds an input of a Loop's or Scan's body (see [`Graph::body_feeds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFeed {
    /// A value the node makes itself, of this element type.
    Made(DType),
    /// One of the node's inputs (`None` where it is left out).
    Input(Option<ValueId>),
}

#[derive(Clone, Debug)]
pub struct Value {
    name: String,
    def: Def,
    /// Declared type (input, initializer-less value_info entry, ...). Graph outputs carry their
    /// own declaration in [`Graph::outputs`].
    info: Option<ValueInfo>,
    init: Option<Tensor>,
    sparse: Option<SparseTensorProto>,
    uses: Vec<Use>,
}

impl Value {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn def(&self) -> Def {
        self.def
    }
    /// The constant this value holds, for initializers and inputs with a default.
    pub fn initializer(&self) -> Option<&Tensor> {
        self.init.as_ref()
    }
    pub fn sparse_initializer(&self) -> Option<&SparseTensorProto> {
        self.sparse.as_ref()
    }
    pub fn uses(&self) -> &[Use] {
        &self.uses
    }
    /// The constant a node may fold: an initializer that is not a graph input (an input's
    /// default can be overridden by the caller).
    pub fn constant(&self) -> Option<&Tensor> {
        match self.def {
            Def::Initializer => self.init.as_ref(),
            _ => None,
        }
    }
    pub fn ty(&self) -> Option<&Type> {
        self.info.as_ref().and_then(|i| i.ty.as_ref())
    }
    pub fn info(&self) -> Option<&ValueInfo> {
        self.info.as_ref()
    }
}

/// An attribute's value, typed. Two equal values are the same attribute value, whatever
/// their encoding (common-subexpression elimination keys nodes on them): floats compare by
/// their bits, tensors by element type, dims and payload. Subgraph-valued attributes hold
/// their bodies beside the value (see [`Attr::bodies`]), so their values say only which kind
/// they are; anything we do not model (sparse tensors, type protos, lists of tensors, an
/// attribute without a type) is kept as its encoded proto.
#[derive(Clone, Debug)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(Vec<u8>),
    Strings(Vec<Vec<u8>>),
    Tensor(Box<Tensor>),
    Graph,
    Graphs,
    Opaque(Vec<u8>),
}

impl PartialEq for AttrValue {
    fn eq(&self, other: &AttrValue) -> bool {
        use AttrValue::*;
        match (self, other) {
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Ints(a), Ints(b)) => a == b,
            (Floats(a), Floats(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (String(a), String(b)) => a == b,
            (Strings(a), Strings(b)) => a == b,
            (Tensor(a), Tensor(b)) => a.same_content(b),
            (Graph, Graph) | (Graphs, Graphs) => true,
            (Opaque(a), Opaque(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for AttrValue {}

impl std::hash::Hash for AttrValue {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            AttrValue::Int(v) => v.hash(h),
            AttrValue::Float(v) => v.to_bits().hash(h),
            AttrValue::Ints(v) => v.hash(h),
            AttrValue::Floats(v) => v.iter().for_each(|x| x.to_bits().hash(h)),
            AttrValue::String(v) => v.hash(h),
            AttrValue::Strings(v) => v.hash(h),
            AttrValue::Tensor(t) => t.digest().hash(h),
            AttrValue::Graph | AttrValue::Graphs => {}
            AttrValue::Opaque(v) => v.hash(h),
        }
    }
}

/// A named attribute of a node.
#[derive(Clone, Debug)]
pub struct Attr {
    name: String,
    value: AttrValue,
    /// The subgraphs of a graph-valued attribute: one for `Graph`, any number for `Graphs`.
    bodies: Vec<Graph>,
    /// What the value does not model (type, doc_string, ref_attr_name); the value's own field,
    /// the name and the subgraphs cleared.
    rest: AttributeProto,
}

impl Attr {
    fn new(name: &str, value: AttrValue) -> Attr {
        let ty = match &value {
            AttrValue::Int(_) => AttributeType::Int,
            AttrValue::Float(_) => AttributeType::Float,
            AttrValue::Ints(_) => AttributeType::Ints,
            AttrValue::Floats(_) => AttributeType::Floats,
            AttrValue::String(_) => AttributeType::String,
            AttrValue::Strings(_) => AttributeType::Strings,
            AttrValue::Tensor(_) => AttributeType::Tensor,
            AttrValue::Graph => AttributeType::Graph,
            AttrValue::Graphs => AttributeType::Graphs,
            AttrValue::Opaque(_) => AttributeType::Undefined,
        };
        Attr {
            name: name.to_string(),
            value,
            bodies: Vec::new(),
            rest: AttributeProto {
                r#type: ty as i32,
                ..Default::default()
            },
        }
    }
    pub fn int(name: &str, v: i64) -> Attr {
        Attr::new(name, AttrValue::Int(v))
    }
    pub fn float(name: &str, v: f32) -> Attr {
        Attr::new(name, AttrValue::Float(v))
    }
    pub fn ints(name: &str, v: &[i64]) -> Attr {
        Attr::new(name, AttrValue::Ints(v.to_vec()))
    }
    pub fn string(name: &str, v: &str) -> Attr {
        Attr::new(name, AttrValue::String(v.as_bytes().to_vec()))
    }
    pub fn tensor(name: &str, t: &Tensor) -> Attr {
        Attr::new(name, AttrValue::Tensor(Box::new(t.clone())))
    }

    /// Splits a decoded attribute into its typed value and the rest; `lift` turns the
    /// subgraphs it returns into bodies.
    pub(super) fn from_proto(mut a: AttributeProto) -> (Attr, Vec<GraphProto>) {
        let name = std::mem::take(&mut a.name);
        let mut graphs = Vec::new();
        let value = match a.r#type() {
            AttributeType::Int => AttrValue::Int(std::mem::take(&mut a.i)),
            AttributeType::Float => AttrValue::Float(std::mem::take(&mut a.f)),
            AttributeType::Ints => AttrValue::Ints(std::mem::take(&mut a.ints)),
            AttributeType::Floats => AttrValue::Floats(std::mem::take(&mut a.floats)),
            AttributeType::String => AttrValue::String(std::mem::take(&mut a.s).to_vec()),
            AttributeType::Strings => AttrValue::Strings(
                std::mem::take(&mut a.strings)
                    .into_iter()
                    .map(|s| s.to_vec())
                    .collect(),
            ),
            AttributeType::Tensor if a.t.is_some() => {
                AttrValue::Tensor(Box::new(Tensor::from_proto(a.t.take().unwrap())))
            }
            AttributeType::Graph if a.g.is_some() => {
                graphs.push(a.g.take().unwrap());
                AttrValue::Graph
            }
            AttributeType::Graphs => {
                graphs = std::mem::take(&mut a.graphs);
                AttrValue::Graphs
            }
            _ => {
                // Kept whole: lowering writes `rest` back as it was read.
                let encoded = prost::Message::encode_to_vec(&a);
                return (
                    Attr {
                        name,
                        value: AttrValue::Opaque(encoded),
                        bodies: Vec::new(),
                        rest: a,
                    },
                    graphs,
                );
            }
        };
        let attr = Attr {
            name,
            value,
            bodies: Vec::new(),
            rest: a,
        };
        (attr, graphs)
    }

    /// The attribute as written, with its lowered subgraphs.
    pub(super) fn to_proto(&self, graphs: Vec<GraphProto>) -> AttributeProto {
        let mut a = self.rest.clone();
        a.name = self.name.clone();
        match &self.value {
            AttrValue::Int(v) => a.i = *v,
            AttrValue::Float(v) => a.f = *v,
            AttrValue::Ints(v) => a.ints = v.clone(),
            AttrValue::Floats(v) => a.floats = v.clone(),
            AttrValue::String(v) => a.s = v.clone().into(),
            AttrValue::Strings(v) => a.strings = v.iter().map(|s| s.clone().into()).collect(),
            AttrValue::Tensor(t) => a.t = Some(t.to_proto(&t.proto().name)),
            AttrValue::Graph => a.g = graphs.into_iter().next(),
            AttrValue::Graphs => a.graphs = graphs,
            AttrValue::Opaque(_) => {}
        }
        a
    }

    pub(super) fn set_bodies(&mut self, bodies: Vec<Graph>) {
        self.bodies = bodies;
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn value(&self) -> &AttrValue {
        &self.value
    }
    pub fn as_int(&self) -> Option<i64> {
        match self.value {
            AttrValue::Int(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f32> {
        match self.value {
            AttrValue::Float(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_ints(&self) -> Option<&[i64]> {
        match &self.value {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            AttrValue::String(v) => Some(v),
            _ => None,
        }
    }
    /// How the printer shows a value we do not model.
    pub(super) fn describe_opaque(&self) -> String {
        let a = &self.rest;
        match a.r#type() {
            AttributeType::Tensors => format!("{} tensors", a.tensors.len()),
            _ if !a.ref_attr_name.is_empty() => format!("@{}", a.ref_attr_name),
            other => format!("<{}>", other.as_str_name()),
        }
    }

    /// Whether the value refers to an attribute of the enclosing function instead of holding one.
    pub fn is_reference(&self) -> bool {
        !self.rest.ref_attr_name.is_empty()
    }
    pub fn bodies(&self) -> impl Iterator<Item = &Graph> {
        self.bodies.iter()
    }
    pub(super) fn bodies_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.bodies.iter_mut()
    }
    pub(super) fn take_bodies(&mut self) -> Vec<Graph> {
        std::mem::take(&mut self.bodies)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    op: String,
    domain: String,
    name: String,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
    attrs: Vec<Attr>,
    /// Values of this graph read inside the node's subgraphs, in first-use order.
    captures: Vec<ValueId>,
    /// doc_string, overload, metadata_props, device configurations; the modelled fields cleared.
    rest: NodeProto,
    /// Insertion order, which lowering follows where dependencies allow.
    seq: u64,
}

impl Node {
    pub fn op(&self) -> &str {
        &self.op
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn attrs(&self) -> &[Attr] {
        &self.attrs
    }
    pub(super) fn rest(&self) -> &NodeProto {
        &self.rest
    }
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }
    pub fn captures(&self) -> &[ValueId] {
        &self.captures
    }
    /// The input in `slot`, if present and not the empty name.
    pub fn input(&self, slot: usize) -> Option<ValueId> {
        self.inputs.get(slot).copied().flatten()
    }
    pub fn output(&self, slot: usize) -> Option<ValueId> {
        self.outputs.get(slot).copied().flatten()
    }
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name() == name)
    }
    pub fn attr_i(&self, name: &str) -> Option<i64> {
        self.attr(name)?.as_int()
    }
    pub fn attr_f(&self, name: &str) -> Option<f32> {
        self.attr(name)?.as_float()
    }
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name)?.as_ints()
    }
    pub fn attr_s(&self, name: &str) -> Option<&[u8]> {
        self.attr(name)?.as_bytes()
    }
    pub fn has_bodies(&self) -> bool {
        self.attrs.iter().any(|a| !a.bodies.is_empty())
    }
    /// The op as reports show it: qualified by its domain outside the default one.
    pub fn qualified_op(&self) -> String {
        if self.domain.is_empty() || self.domain == "ai.onnx" {
            self.op.clone()
        } else {
            format!("{}::{}", self.domain, self.op)
        }
    }
    /// `op` in the default domain.
    pub fn is(&self, op: &str) -> bool {
        self.op == op && (self.domain.is_empty() || self.domain == "ai.onnx")
    }
    /// Whether the operator belongs to a domain the ONNX standard defines, whose operators are
    /// pure functions of their inputs with a published meaning (all but the random ones): the
    /// default domain and `ai.onnx.ml`. Anything else is opaque to us.
    pub fn in_standard_domain(&self) -> bool {
        standard_domain(&self.domain)
    }
}

/// See [`Node::in_standard_domain`].
pub fn standard_domain(domain: &str) -> bool {
    matches!(domain, "" | "ai.onnx" | "ai.onnx.ml")
}

#[derive(Clone, Copy, Debug)]
struct Edge {
    value: ValueId,
    slot: Slot,
}

/// A graph output: the value and the declaration the graph's interface gives it.
#[derive(Clone, Debug)]
pub struct Output {
    pub value: ValueId,
    pub info: ValueInfo,
}

/// One (sub)graph. See the module documentation of `ir` for the contract.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    dag: StableDiGraph<Node, Edge>,
    values: Vec<Option<Value>>,
    names: HashMap<String, ValueId>,
    inputs: Vec<ValueId>,
    outputs: Vec<Output>,
    initializers: Vec<ValueId>,
    sparse_initializers: Vec<ValueId>,
    value_info: Vec<ValueId>,
    captures: Vec<ValueId>,
    name: String,
    /// doc_string, quantization_annotation, metadata_props; the modelled fields cleared.
    rest: GraphProto,
    next_seq: u64,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Default::default()
        }
    }

    // ---- reading ----

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn rest(&self) -> &GraphProto {
        &self.rest
    }

    pub(super) fn set_rest(&mut self, rest: GraphProto) {
        self.rest = rest;
    }

    pub fn value(&self, v: ValueId) -> &Value {
        self.values[v.index()]
            .as_ref()
            .expect("ValueId of a removed value")
    }

    pub(super) fn value_mut(&mut self, v: ValueId) -> &mut Value {
        self.values[v.index()]
            .as_mut()
            .expect("ValueId of a removed value")
    }

    pub fn contains_value(&self, v: ValueId) -> bool {
        self.values.get(v.index()).is_some_and(|x| x.is_some())
    }

    pub fn values(&self) -> impl Iterator<Item = (ValueId, &Value)> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (ValueId(i as u32), v)))
    }

    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    pub fn node(&self, n: NodeId) -> &Node {
        &self.dag[n.0]
    }

    pub fn contains_node(&self, n: NodeId) -> bool {
        self.dag.contains_node(n.0)
    }

    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// Nodes in no particular order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.dag.node_indices().map(NodeId)
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    pub fn initializers(&self) -> &[ValueId] {
        &self.initializers
    }

    pub fn sparse_initializers(&self) -> &[ValueId] {
        &self.sparse_initializers
    }

    pub fn value_info(&self) -> &[ValueId] {
        &self.value_info
    }

    pub fn captures(&self) -> &[ValueId] {
        &self.captures
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|o| o.value == v)
    }

    /// The node that produces `v`, if a node does.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).def {
            Def::Node { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The best declared type of `v`: its own declaration, else the graph output's.
    pub fn ty(&self, v: ValueId) -> Option<&Type> {
        self.value(v).ty().or_else(|| {
            self.outputs
                .iter()
                .find(|o| o.value == v)
                .and_then(|o| o.info.ty.as_ref())
        })
    }

    pub fn dtype(&self, v: ValueId) -> Option<DType> {
        self.ty(v).and_then(Type::dtype)
    }

    pub fn shape(&self, v: ValueId) -> Option<&[Dim]> {
        self.ty(v).and_then(Type::shape)
    }

    /// Whether anything reads `v`: a node, a subgraph, or the graph's interface.
    pub fn is_read(&self, v: ValueId) -> bool {
        !self.value(v).uses().is_empty() || self.is_output(v)
    }

    /// The one node reading `v`, when exactly one node reads it (once) and it is not a graph
    /// output: the condition for a rewrite to absorb `v` into that reader.
    pub fn only_reader(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).uses() {
            [u] if !self.is_output(v) => Some(u.node),
            _ => None,
        }
    }

    /// The integers a constant holds (shapes, axes, pads, indices), when `v` is an int32 or
    /// int64 constant.
    pub fn const_ints(&self, v: ValueId) -> Option<Vec<i64>> {
        self.value(v).constant()?.to_i64_vec()
    }

    /// Nodes in a deterministic topological order that keeps insertion order wherever
    /// dependencies allow (so a graph that was read in order is written in the same order).
    /// Fails on a cycle, naming a node on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indegree: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.dag.node_indices() {
            let d = self.dag.edges_directed(n, Direction::Incoming).count();
            if d == 0 {
                ready.push(Reverse((self.dag[n].seq, n.index())));
            }
            indegree.insert(n, d);
        }
        let mut order = Vec::with_capacity(self.dag.node_count());
        while let Some(Reverse((_, i))) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(NodeId(n));
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                let d = indegree.get_mut(&t).unwrap();
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse((self.dag[t].seq, t.index())));
                }
            }
        }
        if order.len() != self.dag.node_count() {
            let stuck = self
                .dag
                .node_indices()
                .filter(|n| indegree[n] > 0)
                .min_by_key(|n| self.dag[*n].seq)
                .unwrap();
            let node = &self.dag[stuck];
            bail!(
                "the graph has a cycle through node '{}' ({})",
                node.name,
                node.op
            );
        }
        Ok(order)
    }

    // ---- building ----

    fn new_value(&mut self, name: &str, def: Def) -> Result<ValueId> {
        if let Some(&existing) = self.names.get(name) {
            let what = match self.value(existing).def {
                Def::Node { node, .. } => {
                    let n = self.node(node);
                    format!("an output of node '{}' ({})", n.name, n.op)
                }
                Def::Input => "a graph input".into(),
                Def::Initializer => "an initializer".into(),
                Def::SparseInitializer => "a sparse initializer".into(),
                Def::Capture => "a value of the enclosing graph".into(),
                Def::Declared => "a value_info entry".into(),
            };
            bail!("duplicate value name '{name}': it is already {what}");
        }
        let id = ValueId(self.values.len() as u32);
        self.values.push(Some(Value {
            name: name.to_string(),
            def,
            info: None,
            init: None,
            sparse: None,
            uses: Vec::new(),
        }));
        self.names.insert(name.to_string(), id);
        Ok(id)
    }

    pub(super) fn add_input(&mut self, name: &str, info: ValueInfo) -> Result<ValueId> {
        let v = self.new_value(name, Def::Input)?;
        self.value_mut(v).info = Some(info);
        self.inputs.push(v);
        Ok(v)
    }

    /// Adds an initializer. When a graph input of the same name exists, the tensor becomes its
    /// default value (IR < 4 style) and the input keeps its place.
    pub(super) fn add_initializer(&mut self, name: &str, tensor: Tensor) -> Result<ValueId> {
        if let Some(v) = self.find(name) {
            let value = self.value_mut(v);
            if value.def == Def::Input && value.init.is_none() {
                value.init = Some(tensor);
                self.initializers.push(v);
                return Ok(v);
            }
        }
        let v = self.new_value(name, Def::Initializer)?;
        self.value_mut(v).init = Some(tensor);
        self.initializers.push(v);
        Ok(v)
    }

    pub(super) fn add_sparse_initializer(
        &mut self,
        name: &str,
        t: SparseTensorProto,
    ) -> Result<ValueId> {
        let v = self.new_value(name, Def::SparseInitializer)?;
        self.value_mut(v).sparse = Some(t);
        self.sparse_initializers.push(v);
        Ok(v)
    }

    /// A value read from the enclosing graph.
    pub(super) fn add_capture(&mut self, name: &str) -> Result<ValueId> {
        let v = self.new_value(name, Def::Capture)?;
        self.captures.push(v);
        Ok(v)
    }

    /// Lists `v` in value_info (its declaration goes in `Value::info`), or creates a
    /// declaration-only value when nothing of that name exists.
    pub(super) fn add_value_info(&mut self, name: &str, info: ValueInfo) -> Result<ValueId> {
        let v = match self.find(name) {
            Some(v) => v,
            None => self.new_value(name, Def::Declared)?,
        };
        if self.value_info.contains(&v) {
            bail!("value_info lists '{name}' twice");
        }
        let value = self.value_mut(v);
        if value.def != Def::Input || value.info.is_none() {
            value.info = Some(info);
        }
        self.value_info.push(v);
        Ok(v)
    }

    pub(super) fn add_output(&mut self, value: ValueId, info: ValueInfo) {
        self.outputs.push(Output { value, info });
    }

    /// Adds a node. Its outputs get fresh values named `output_names` ("" for an omitted
    /// optional output).
    pub(super) fn add_node(
        &mut self,
        op: &str,
        domain: &str,
        name: &str,
        inputs: &[Option<ValueId>],
        output_names: &[&str],
        attrs: Vec<Attr>,
    ) -> Result<NodeId> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let n = NodeId(self.dag.add_node(Node {
            op: op.to_string(),
            domain: domain.to_string(),
            name: name.to_string(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            attrs,
            captures: Vec::new(),
            rest: NodeProto::default(),
            seq,
        }));
        let mut outs = Vec::with_capacity(output_names.len());
        for (slot, out) in output_names.iter().enumerate() {
            if out.is_empty() {
                outs.push(None);
                continue;
            }
            match self.new_value(out, Def::Node { node: n, slot }) {
                Ok(v) => outs.push(Some(v)),
                Err(e) => {
                    for v in outs.into_iter().flatten() {
                        self.drop_value(v);
                    }
                    self.dag.remove_node(n.0);
                    return Err(e.context(format!("node '{name}' ({op})")));
                }
            }
        }
        self.dag[n.0].outputs = outs;
        self.set_inputs(n, inputs);
        Ok(n)
    }

    fn link(&mut self, v: ValueId, to: NodeId, slot: Slot) {
        self.value_mut(v).uses.push(Use { node: to, slot });
        if let Def::Node { node, .. } = self.value(v).def {
            self.dag.add_edge(node.0, to.0, Edge { value: v, slot });
        }
    }

    fn unlink(&mut self, v: ValueId, from: NodeId, slot: Slot) {
        let value = self.value_mut(v);
        if let Some(i) = value
            .uses
            .iter()
            .position(|u| *u == Use { node: from, slot })
        {
            value.uses.remove(i);
        }
        if let Def::Node { node, .. } = self.value(v).def {
            let edge = self
                .dag
                .edges_connecting(node.0, from.0)
                .find(|e| e.weight().value == v && e.weight().slot == slot)
                .map(|e| e.id());
            if let Some(e) = edge {
                self.dag.remove_edge(e);
            }
        }
    }

    /// Replaces all inputs of `n`.
    pub(super) fn set_inputs(&mut self, n: NodeId, inputs: &[Option<ValueId>]) {
        let old = std::mem::take(&mut self.dag[n.0].inputs);
        for (slot, v) in old.iter().enumerate() {
            if let Some(v) = v {
                self.unlink(*v, n, Slot::Input(slot));
            }
        }
        for (slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.link(*v, n, Slot::Input(slot));
            }
        }
        self.dag[n.0].inputs = inputs.to_vec();
    }

    /// Records that `n`'s subgraphs read `v` (a value of this graph).
    pub(super) fn add_node_capture(&mut self, n: NodeId, v: ValueId) {
        if !self.dag[n.0].captures.contains(&v) {
            self.dag[n.0].captures.push(v);
            self.link(v, n, Slot::Capture);
        }
    }

    /// Points every reader of `old` (node inputs, subgraph captures, graph outputs) at `new`.
    /// Subgraphs that captured `old` by name are renamed to capture `new`.
    pub(super) fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        if old == new {
            return;
        }
        let uses = self.value(old).uses.clone();
        let new_name = self.value(new).name.clone();
        let old_name = self.value(old).name.clone();
        for u in uses {
            self.unlink(old, u.node, u.slot);
            match u.slot {
                Slot::Input(i) => {
                    self.dag[u.node.0].inputs[i] = Some(new);
                    self.link(new, u.node, u.slot);
                }
                Slot::Capture => {
                    self.dag[u.node.0].captures.retain(|&c| c != old);
                    self.rename_in_bodies(u.node, &old_name, &new_name);
                    self.add_node_capture(u.node, new);
                }
            }
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Makes every subgraph of `n` capture `new` where it captured `old`.
    fn rename_in_bodies(&mut self, n: NodeId, old: &str, new: &str) {
        for attr in &mut self.dag[n.0].attrs {
            for body in attr.bodies_mut() {
                body.rename_capture(old, new);
            }
        }
    }

    /// Renames a captured outer value throughout this subgraph and the subgraphs within it.
    fn rename_capture(&mut self, old: &str, new: &str) {
        let Some(v) = self.find(old) else { return };
        if self.value(v).def != Def::Capture {
            return;
        }
        if let Some(existing) = self.find(new) {
            self.replace_all_uses(v, existing);
            self.captures.retain(|&c| c != v);
            self.drop_value(v);
        } else {
            self.names.remove(old);
            self.names.insert(new.to_string(), v);
            self.value_mut(v).name = new.to_string();
        }
        let users: Vec<NodeId> = self
            .value(self.find(new).unwrap())
            .uses
            .iter()
            .filter(|u| u.slot == Slot::Capture)
            .map(|u| u.node)
            .collect();
        for n in users {
            self.rename_in_bodies(n, old, new);
        }
    }

    /// Renames an internal value; subgraphs that capture it follow.
    pub(super) fn rename_value(&mut self, v: ValueId, name: &str) -> Result<()> {
        if self.find(name).is_some() {
            bail!(
                "cannot rename '{}' to '{name}': the name is taken",
                self.value(v).name
            );
        }
        let old = std::mem::replace(&mut self.value_mut(v).name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), v);
        let readers: Vec<NodeId> = self
            .value(v)
            .uses
            .iter()
            .filter(|u| u.slot == Slot::Capture)
            .map(|u| u.node)
            .collect();
        for n in readers {
            self.rename_in_bodies(n, &old, name);
        }
        Ok(())
    }

    /// Sets the type `v` is known to have, without declaring it in value_info: what a rewrite
    /// states about the values it makes, for [`crate::ir::Patch`]'s checks.
    pub(super) fn set_type(&mut self, v: ValueId, ty: Type) {
        let value = self.value_mut(v);
        match value.info.as_mut() {
            Some(info) => info.ty = Some(ty),
            None => value.info = Some(ValueInfo::of(ty)),
        }
    }

    /// Lists `v` in value_info (its declaration is its type), if it is not listed yet.
    pub(super) fn list_in_value_info(&mut self, v: ValueId) {
        if !self.value_info.contains(&v) {
            self.value_info.push(v);
        }
    }

    /// Declares graph output `v` of type `ty` in the graph's interface.
    pub(super) fn set_output_type(&mut self, v: ValueId, ty: Type) {
        for o in self.outputs.iter_mut().filter(|o| o.value == v) {
            o.info.ty = Some(ty.clone());
        }
    }

    /// Makes the graph outputs held by `old` be held by `new` instead.
    pub(super) fn move_outputs(&mut self, old: ValueId, new: ValueId) {
        for o in self.outputs.iter_mut().filter(|o| o.value == old) {
            o.value = new;
        }
    }

    /// Sets attribute `attr` of `n`, replacing one of the same name.
    pub(super) fn set_node_name(&mut self, n: NodeId, name: &str) {
        self.dag[n.0].name = name.to_string();
    }

    pub(super) fn set_attr(&mut self, n: NodeId, attr: Attr) {
        let attrs = &mut self.dag[n.0].attrs;
        match attrs.iter_mut().find(|a| a.name() == attr.name()) {
            Some(a) => *a = attr,
            None => attrs.push(attr),
        }
    }

    /// Takes the single subgraph of attribute `attr` of `n`.
    pub(super) fn take_body(&mut self, n: NodeId, attr: &str) -> Result<Graph> {
        let node = &mut self.dag[n.0];
        let body = node
            .attrs
            .iter_mut()
            .find(|a| a.name() == attr && a.value == AttrValue::Graph)
            .and_then(|a| a.take_bodies().pop());
        body.with_context(|| format!("node '{}' has no subgraph '{attr}'", node.name))
    }

    /// Runs `f` on the subgraph held by attribute `attr` of `n` (a graph-valued attribute's
    /// only graph), then keeps `n`'s captures in step with what its subgraphs still read:
    /// how a pass edits one body it chose (through a [`crate::ir::Patch`] on it).
    pub fn edit_body<T>(
        &mut self,
        n: NodeId,
        attr: &str,
        f: impl FnOnce(&mut Graph) -> Result<T>,
    ) -> Result<T> {
        let name = self.dag[n.0].name.clone();
        let body = self.dag[n.0]
            .attrs
            .iter_mut()
            .find(|a| a.name() == attr && a.value == AttrValue::Graph)
            .and_then(|a| a.bodies.first_mut())
            .with_context(|| format!("node '{name}' has no subgraph '{attr}'"))?;
        let out = f(body)?;
        self.sync_captures(n);
        Ok(out)
    }

    /// Runs `f` on this graph and, first, on every subgraph inside it (innermost first),
    /// keeping each node's captures in step with what its subgraphs still read. `f` edits
    /// through a [`crate::ir::Patch`]; its counts are summed.
    pub fn for_each_graph(
        &mut self,
        f: &mut dyn FnMut(&mut Graph, Scope) -> Result<usize>,
    ) -> Result<usize> {
        self.visit(Scope::Main, f)
    }

    fn visit(
        &mut self,
        scope: Scope,
        f: &mut dyn FnMut(&mut Graph, Scope) -> Result<usize>,
    ) -> Result<usize> {
        let mut total = 0;
        let holders: Vec<NodeId> = self
            .node_ids()
            .filter(|&n| self.node(n).has_bodies())
            .collect();
        for n in holders {
            let mut inner = 0;
            for attr in &mut self.dag[n.0].attrs {
                for body in attr.bodies_mut() {
                    inner += body.visit(Scope::Body, f)?;
                }
            }
            if inner > 0 {
                self.sync_captures(n);
            }
            total += inner;
        }
        Ok(total + f(self, scope)?)
    }

    /// What feeds each of the `inputs` inputs of a body of node `n`: the node's last inputs, in
    /// order (a Loop's carried values; a Scan's states and scanned inputs, after an opset-8
    /// Scan's sequence lengths), except a Loop's first two, its iteration count and condition,
    /// which the Loop makes (an i64 and a bool scalar).
    pub fn body_feeds(&self, n: NodeId, inputs: usize) -> Vec<BodyFeed> {
        let node = self.node(n);
        let first = node.inputs().len().saturating_sub(inputs);
        (0..inputs)
            .map(|i| match i {
                0 if node.is("Loop") => BodyFeed::Made(DType::I64),
                1 if node.is("Loop") => BodyFeed::Made(DType::BOOL),
                _ => BodyFeed::Input(node.input(first + i)),
            })
            .collect()
    }

    /// Runs `f` on each subgraph node `n` holds, in attribute order, then drops the captures
    /// of `n` they no longer read: for a pass that walks outer graphs first, since what a body
    /// sees of the values it captures depends on what was done to them outside.
    pub fn edit_bodies(
        &mut self,
        n: NodeId,
        f: &mut dyn FnMut(&mut Graph) -> Result<usize>,
    ) -> Result<usize> {
        let mut total = 0;
        for attr in &mut self.dag[n.0].attrs {
            for body in attr.bodies_mut() {
                total += f(body)?;
            }
        }
        if total > 0 {
            self.sync_captures(n);
        }
        Ok(total)
    }

    /// Drops captures of `n` that none of its subgraphs reads any more.
    pub(super) fn sync_captures(&mut self, n: NodeId) {
        let still: Vec<String> = self.dag[n.0]
            .attrs
            .iter()
            .flat_map(|a| a.bodies())
            .flat_map(|b| b.captures().iter().map(|&c| b.value(c).name().to_string()))
            .collect();
        for v in self.dag[n.0].captures.clone() {
            if !still.iter().any(|s| s == &self.value(v).name) {
                self.dag[n.0].captures.retain(|&c| c != v);
                self.unlink(v, n, Slot::Capture);
            }
        }
    }

    /// Removes a node and its output values. Its outputs must no longer be read.
    pub(super) fn remove_node(&mut self, n: NodeId) -> Result<()> {
        let node = &self.dag[n.0];
        for v in node.outputs.iter().flatten() {
            if !self.value(*v).uses.is_empty() || self.is_output(*v) {
                bail!(
                    "cannot remove node '{}' ({}): its output '{}' is still read",
                    node.name,
                    node.op,
                    self.value(*v).name
                );
            }
        }
        self.set_inputs(n, &[]);
        for v in self.dag[n.0].captures.clone() {
            self.unlink(v, n, Slot::Capture);
        }
        let node = self.dag.remove_node(n.0).unwrap();
        for v in node.outputs.into_iter().flatten() {
            self.value_info.retain(|&x| x != v);
            self.drop_value(v);
        }
        Ok(())
    }

    /// Removes a value nothing reads: an initializer, a declaration, or an unread input
    /// of a subgraph-free graph. Graph inputs and outputs are the interface and stay.
    pub(super) fn remove_value(&mut self, v: ValueId) -> Result<()> {
        let value = self.value(v);
        if !value.uses.is_empty() || self.is_output(v) {
            bail!("cannot remove value '{}': it is still read", value.name);
        }
        match value.def {
            Def::Initializer | Def::SparseInitializer | Def::Declared | Def::Capture => {}
            Def::Input | Def::Node { .. } => bail!(
                "cannot remove value '{}': it is a graph input or a node output",
                value.name
            ),
        }
        self.initializers.retain(|&x| x != v);
        self.sparse_initializers.retain(|&x| x != v);
        self.value_info.retain(|&x| x != v);
        self.captures.retain(|&x| x != v);
        self.drop_value(v);
        Ok(())
    }

    fn drop_value(&mut self, v: ValueId) {
        if let Some(value) = self.values[v.index()].take() {
            self.names.remove(&value.name);
        }
    }

    /// Moves everything `body` computes (a subgraph without inputs, such as an If branch, of a
    /// node of this graph) into this graph, and returns, for each of the body's outputs, the
    /// value of this graph that now holds it. Captures become the outer values they name; the
    /// body's values keep their names unless a name is taken here or inside a subgraph here,
    /// in which case they get fresh ones (subgraphs capturing them follow).
    pub(super) fn splice(&mut self, mut body: Graph) -> Result<Vec<ValueId>> {
        if !body.inputs.is_empty() {
            bail!("cannot splice subgraph '{}': it has inputs", body.name);
        }
        let mut taken = HashSet::new();
        self.collect_names(&mut taken);
        let mut free = |name: &str| {
            let name = first_free(name, |n| taken.contains(n));
            taken.insert(name.clone());
            name
        };
        let mut map: HashMap<ValueId, ValueId> = HashMap::new();
        for &c in &body.captures {
            let name = &body.value(c).name;
            let outer = self.find(name).with_context(|| {
                format!("subgraph '{}' reads '{name}', which is not here", body.name)
            })?;
            map.insert(c, outer);
        }
        for &v in &body.initializers {
            let value = body.value(v);
            let t = value.init.clone().context("initializer without a tensor")?;
            map.insert(v, self.add_initializer(&free(&value.name), t)?);
        }
        for &v in &body.sparse_initializers {
            let value = body.value(v);
            let t = value
                .sparse
                .clone()
                .context("sparse initializer without a tensor")?;
            map.insert(v, self.add_sparse_initializer(&free(&value.name), t)?);
        }
        for n in body.topo_order()? {
            let node = &mut body.dag[n.0];
            let attrs = std::mem::take(&mut node.attrs);
            let (op, domain, rest) = (node.op.clone(), node.domain.clone(), node.rest.clone());
            let name = self.fresh_node_name(&node.name);
            let node = &body.dag[n.0];
            let inputs: Vec<Option<ValueId>> =
                node.inputs.iter().map(|i| i.map(|v| map[&v])).collect();
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|o| o.map_or(String::new(), |v| free(&body.value(v).name)))
                .collect();
            let outs_ref: Vec<&str> = outs.iter().map(String::as_str).collect();
            let m = self.add_node(&op, &domain, &name, &inputs, &outs_ref, attrs)?;
            self.dag[m.0].rest = rest;
            for (old, new) in node.outputs.iter().zip(&self.dag[m.0].outputs.clone()) {
                if let (Some(old), Some(new)) = (old, new) {
                    map.insert(*old, *new);
                    self.value_mut(*new).info = body.value(*old).info.clone();
                }
            }
            for &c in &node.captures {
                let outer = map[&c];
                self.add_node_capture(m, outer);
                let (was, is) = (body.value(c).name.clone(), self.value(outer).name.clone());
                if was != is {
                    self.rename_in_bodies(m, &was, &is);
                }
            }
        }
        for &v in &body.value_info {
            if let Some(&mapped) = map.get(&v) {
                if !self.value_info.contains(&mapped) && self.value(mapped).info.is_some() {
                    self.value_info.push(mapped);
                }
            }
        }
        Ok(body.outputs.iter().map(|o| map[&o.value]).collect())
    }

    /// A graph of its own computing `outputs` with copies of `nodes` (in an order where each
    /// runs after what it reads) from the constants they read: the region to evaluate when
    /// folding. Every input of `nodes` must be a constant or an output of `nodes`.
    pub fn extract(&self, nodes: &[NodeId], outputs: &[ValueId]) -> Result<Graph> {
        let mut sub = Graph::new("extracted");
        for &n in nodes {
            for &v in self.node(n).inputs.iter().flatten() {
                if let Some(t) = self.value(v).constant() {
                    if sub.find(self.value(v).name()).is_none() {
                        sub.add_initializer(self.value(v).name(), t.clone())?;
                    }
                }
            }
        }
        for &n in nodes {
            let node = self.node(n);
            let name = |v: &Option<ValueId>| v.map(|v| self.value(v).name().to_string());
            let ins: Vec<Option<ValueId>> = node
                .inputs
                .iter()
                .map(|v| name(v).map(|n| sub.find(&n).context("a region input is not a constant")))
                .map(Option::transpose)
                .collect::<Result<_>>()?;
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|v| name(v).unwrap_or_default())
                .collect();
            let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
            sub.add_node(
                &node.op,
                &node.domain,
                &node.name,
                &ins,
                &outs,
                node.attrs.clone(),
            )?;
        }
        for &v in outputs {
            let id = sub
                .find(self.value(v).name())
                .context("an extracted output is not computed by the extracted nodes")?;
            sub.add_output(id, ValueInfo::default());
        }
        Ok(sub)
    }

    /// Every value name of this graph and of the subgraphs inside it: what a new value here
    /// must not be named (ONNX names a value once across a graph and its subgraphs).
    pub fn all_names(&self) -> HashSet<String> {
        let mut names = HashSet::new();
        self.collect_names(&mut names);
        names
    }

    /// Every value name of this graph and of the subgraphs inside it.
    fn collect_names(&self, into: &mut HashSet<String>) {
        into.extend(self.names.keys().cloned());
        for node in self.dag.node_weights() {
            for body in node.attrs.iter().flat_map(Attr::bodies) {
                body.collect_names(into);
            }
        }
    }

    /// A node name not used by any node of this graph, derived from `base`.
    pub fn fresh_node_name(&self, base: &str) -> String {
        first_free(base, |n| self.dag.node_weights().any(|x| x.name == n))
    }

    /// A name not used by any value of this graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        first_free(base, |n| self.names.contains_key(n))
    }

    pub(super) fn set_node_rest(&mut self, n: NodeId, rest: NodeProto) {
        self.dag[n.0].rest = rest;
    }
}

/// `base`, or `base_1`, `base_2`, ... : the first that `taken` does not claim.
pub fn first_free(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken(n))
        .unwrap()
}
