//! Building a graph from nothing: the loader's and the zoo's way in. A graph that exists is
//! changed only through a [`crate::ir::Patch`].

use anyhow::Result;

use super::graph::{Attr, Graph, NodeId, ValueId, ValueInfo};
use super::tensor::Tensor;

pub struct GraphBuilder {
    g: Graph,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            g: Graph::new(name),
        }
    }

    pub fn input(&mut self, name: &str, info: ValueInfo) -> Result<ValueId> {
        self.g.add_input(name, info)
    }

    pub fn initializer(&mut self, name: &str, t: Tensor) -> Result<ValueId> {
        self.g.add_initializer(name, t)
    }

    /// A node whose outputs get the values named `outputs` ("" for an omitted one).
    pub fn node(
        &mut self,
        op: &str,
        domain: &str,
        name: &str,
        inputs: &[Option<ValueId>],
        outputs: &[&str],
        attrs: Vec<Attr>,
    ) -> Result<NodeId> {
        self.g.add_node(op, domain, name, inputs, outputs, attrs)
    }

    pub fn output(&mut self, v: ValueId, info: ValueInfo) {
        self.g.add_output(v, info);
    }

    pub fn graph(&self) -> &Graph {
        &self.g
    }

    pub fn finish(self) -> Graph {
        self.g
    }
}
