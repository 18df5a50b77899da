//! The one way passes change a graph. Every edit is checked: a value may only be replaced by
//! one of the same element type and compatible shape, nodes may only be removed once nothing
//! reads them, and graph input and output names never change.

use anyhow::{bail, Result};

use super::graph::{Attr, Def, Graph, NodeId, ValueId};
use super::tensor::{Dim, Tensor, Type};

/// Why value `b` of graph `gb` cannot stand in for value `a` of `ga`, if it cannot: their
/// declared element types differ or their known dims disagree.
pub fn type_clash(ga: &Graph, a: ValueId, gb: &Graph, b: ValueId) -> Option<String> {
    if let (Some(x), Some(y)) = (ga.dtype(a), gb.dtype(b)) {
        if x != y {
            return Some(format!("element types {x} and {y} differ"));
        }
    }
    if let (Some(x), Some(y)) = (ga.shape(a), gb.shape(b)) {
        if dims_clash(x, y) {
            return Some(format!("shapes {x:?} and {y:?} differ"));
        }
    }
    None
}

/// Whether two shapes differ in rank or in a dim both know.
fn dims_clash(x: &[Dim], y: &[Dim]) -> bool {
    x.len() != y.len()
        || x.iter()
            .zip(y)
            .any(|(p, q)| matches!((p, q), (Dim::Known(m), Dim::Known(n)) if m != n))
}

pub struct Patch<'g> {
    g: &'g mut Graph,
    /// Values that take over a graph output's name once the old value is gone.
    renames: Vec<(ValueId, String)>,
    /// Values that lost a reader; those left as unread initializers give their pages back at
    /// `commit`, so a replaced weight does not stay resident beside its replacement.
    unread: Vec<ValueId>,
    edits: usize,
}

impl<'g> Patch<'g> {
    pub fn new(g: &'g mut Graph) -> Patch<'g> {
        Patch {
            g,
            renames: Vec::new(),
            unread: Vec::new(),
            edits: 0,
        }
    }

    pub fn graph(&self) -> &Graph {
        self.g
    }

    /// Makes every reader of `old` read `new`. Fails when their declared element types differ
    /// or their known dims disagree. When `old` is a graph output, `new` takes its name at
    /// `commit`, so the interface keeps its names; that needs `new` to be an internal value.
    pub fn replace_value(&mut self, old: ValueId, new: ValueId) -> Result<()> {
        let g = &*self.g;
        let (on, nn) = (g.value(old).name(), g.value(new).name());
        if let Some(why) = type_clash(g, old, g, new) {
            bail!("cannot replace '{on}' with '{nn}': {why}");
        }
        if g.is_output(old) {
            if !self.is_internal(new) {
                bail!("cannot replace graph output '{on}' with '{nn}': that would rename the graph's interface");
            }
            self.renames.push((new, on.to_string()));
        }
        self.g.replace_all_uses(old, new);
        self.unread.push(old);
        self.edits += 1;
        Ok(())
    }

    /// Whether `v` is a node output that is not itself a graph output, so it may be renamed.
    pub fn is_internal(&self, v: ValueId) -> bool {
        matches!(self.g.value(v).def(), Def::Node { .. }) && !self.g.is_output(v)
    }

    pub fn remove_node(&mut self, n: NodeId) -> Result<()> {
        let inputs: Vec<ValueId> = self.g.node(n).inputs().iter().flatten().copied().collect();
        self.g.remove_node(n)?;
        self.unread.extend(inputs);
        self.edits += 1;
        Ok(())
    }

    pub fn remove_value(&mut self, v: ValueId) -> Result<()> {
        self.g.remove_value(v)?;
        self.edits += 1;
        Ok(())
    }

    /// Adds an initializer under a fresh name derived from `base`.
    pub fn add_initializer(&mut self, base: &str, t: Tensor) -> Result<ValueId> {
        let name = self.g.fresh_name(base);
        self.edits += 1;
        self.g.add_initializer(&name, t)
    }

    /// Makes every reader of `old` read the constant `t` instead; the constant takes `old`'s
    /// name once `old` is gone (the caller removes its producer). Fails when `old` is a graph
    /// output, or when the declared type of `old` disagrees with `t`.
    pub fn replace_with_initializer(&mut self, old: ValueId, t: Tensor) -> Result<ValueId> {
        let name = self.g.value(old).name().to_string();
        if self.g.is_output(old) {
            bail!("cannot turn graph output '{name}' into an initializer");
        }
        if let Some(d) = self.g.dtype(old) {
            if d != t.dtype() {
                bail!(
                    "cannot replace '{name}' ({d}) with a {} constant",
                    t.dtype()
                );
            }
        }
        let shape = t.dims().iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        if let Some(declared) = self.g.shape(old) {
            if dims_clash(declared, &shape) {
                bail!(
                    "cannot replace '{name}' ({declared:?}) with a constant of shape {:?}",
                    t.dims()
                );
            }
        }
        let v = self.add_initializer(&name, t)?;
        self.g.replace_all_uses(old, v);
        self.renames.push((v, name));
        self.edits += 1;
        Ok(v)
    }

    /// Replaces initializer `old` by `t`, whose dims or element type may differ, for every
    /// reader, keeping its name: for a rewrite that changes the extent or the type of a tensor
    /// together with everything that reads it (pruning channels, storing weights in 16 bits),
    /// where no reader may see the old one.
    pub fn resize_initializer(&mut self, old: ValueId, t: Tensor) -> Result<ValueId> {
        let name = self.g.value(old).name().to_string();
        if !matches!(self.g.value(old).def(), Def::Initializer) {
            bail!("cannot resize '{name}': it is not an initializer");
        }
        let v = self.add_initializer(&name, t)?;
        self.g.replace_all_uses(old, v);
        self.g.remove_value(old)?;
        self.g.rename_value(v, &name)?;
        self.edits += 1;
        Ok(v)
    }

    /// Declares the type `v` has after a rewrite changed its shape (pruning channels).
    pub fn set_type(&mut self, v: ValueId, ty: Type) {
        self.g.set_type(v, ty);
        self.edits += 1;
    }

    /// Adds a node of the default domain with one output per entry of `outputs`, each of the
    /// type the rewrite knows it to have (`None` where it does not), so that replacing another
    /// value by it is checked. Node and output names are fresh, derived from `name`.
    pub fn add_node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[Option<ValueId>],
        attrs: Vec<Attr>,
        outputs: &[Option<Type>],
    ) -> Result<NodeId> {
        let name = self.g.fresh_node_name(name);
        let outputs: Vec<(String, Option<Type>)> = outputs
            .iter()
            .enumerate()
            .map(|(i, ty)| (format!("{name}_output_{i}"), ty.clone()))
            .collect();
        // A fresh name is still fresh until the node is added: the call below keeps it.
        self.add_node_named(op, &name, inputs, attrs, &outputs)
    }

    /// [`Patch::add_node`] with each output named after its entry of `outputs` (made fresh)
    /// rather than after the node.
    pub fn add_node_named(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[Option<ValueId>],
        attrs: Vec<Attr>,
        outputs: &[(String, Option<Type>)],
    ) -> Result<NodeId> {
        let name = self.g.fresh_node_name(name);
        let outs: Vec<String> = outputs.iter().map(|(o, _)| self.g.fresh_name(o)).collect();
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.edits += 1;
        let n = self.g.add_node(op, "", &name, inputs, &outs, attrs)?;
        for (slot, (_, ty)) in outputs.iter().enumerate() {
            if let (Some(ty), Some(v)) = (ty, self.g.node(n).output(slot)) {
                self.g.set_type(v, ty.clone());
            }
        }
        Ok(n)
    }

    /// Takes the subgraph held by attribute `attr` of `n` and moves what it computes into this
    /// graph (see [`Graph::splice`]); returns the values now holding its outputs. `n` keeps
    /// running until the caller rewires its readers and removes it.
    pub fn splice_body(&mut self, n: NodeId, attr: &str) -> Result<Vec<ValueId>> {
        let body = self.g.take_body(n, attr)?;
        self.edits += 1;
        self.g.splice(body)
    }

    /// Like [`Patch::replace_value`], and `new` (a value this patch made) takes `old`'s name
    /// once `old` is gone, so the rewrite keeps the names the model was written with.
    pub fn replace_value_keeping_name(&mut self, old: ValueId, new: ValueId) -> Result<()> {
        let name = self.g.value(old).name().to_string();
        let was_output = self.g.is_output(old);
        self.replace_value(old, new)?;
        if !was_output {
            self.renames.push((new, name));
        }
        Ok(())
    }

    /// Names node `n` (node names are free text: nothing reads them but people and reports).
    pub fn set_node_name(&mut self, n: NodeId, name: &str) {
        self.g.set_node_name(n, name);
        self.edits += 1;
    }

    /// Sets attribute `attr` of `n`, replacing one of the same name.
    pub fn set_attr(&mut self, n: NodeId, attr: Attr) {
        self.g.set_attr(n, attr);
        self.edits += 1;
    }

    /// Makes input `slot` of `n` read `v` (`None` omits it), leaving its other inputs alone.
    pub fn set_input(&mut self, n: NodeId, slot: usize, v: Option<ValueId>) {
        let mut inputs = self.g.node(n).inputs().to_vec();
        if inputs.len() <= slot {
            inputs.resize(slot + 1, None);
        }
        inputs[slot] = v;
        self.set_inputs(n, &inputs);
    }

    /// Rewires all inputs of `n`. Trailing omitted inputs are dropped rather than written as
    /// empty names, which some runtimes (tract among them) do not accept.
    pub fn set_inputs(&mut self, n: NodeId, inputs: &[Option<ValueId>]) {
        let len = inputs
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        self.unread.extend(self.g.node(n).inputs().iter().flatten());
        self.g.set_inputs(n, &inputs[..len]);
        self.edits += 1;
    }

    /// Declares `v` of type `ty` in value_info, so that the file states it: for a consumer
    /// that must not infer a type itself (a strongly typed TensorRT network).
    pub fn declare(&mut self, v: ValueId, ty: Type) {
        self.g.set_type(v, ty);
        self.g.list_in_value_info(v);
        self.edits += 1;
    }

    /// Declares graph output `v` of type `ty` in the graph's interface: for a rewrite that
    /// changes the element type of what the graph returns (`--io-types low`).
    pub fn set_output_type(&mut self, v: ValueId, ty: Type) {
        self.g.set_output_type(v, ty);
        self.edits += 1;
    }

    /// Makes graph output `old` be `new`, a node output this patch made (a Cast at the
    /// interface), which takes `old`'s name now; `old` takes a fresh one and keeps its other
    /// readers, subgraph captures included. Unlike [`Patch::replace_value`], the element types
    /// may differ: the interface keeps the type it declares, and what reads `old` inside keeps
    /// reading it.
    pub fn move_output(&mut self, old: ValueId, new: ValueId) -> Result<()> {
        let name = self.g.value(old).name().to_string();
        if !self.g.is_output(old) || !self.is_internal(new) {
            bail!(
                "cannot move graph output '{name}' to '{}'",
                self.g.value(new).name()
            );
        }
        let fresh = self.g.fresh_name(&name);
        self.g.rename_value(old, &fresh)?;
        self.g.move_outputs(old, new);
        self.g.rename_value(new, &name)?;
        self.edits += 1;
        Ok(())
    }

    /// Puts `new` (computed from `old` by the nodes `keep`) between `old` and everything else
    /// that reads it: node inputs, subgraph captures and graph outputs move to `new`; `keep`
    /// goes on reading `old`. With `take_name`, `new` takes `old`'s name and `old` a fresh one,
    /// so that the value readers see keeps the name the model gave it (an interface name
    /// cannot move: a graph input keeps its own). The element types may differ: this is how a
    /// rewrite puts a Cast or a rounding step on a value.
    pub fn interpose(
        &mut self,
        old: ValueId,
        new: ValueId,
        keep: &[NodeId],
        take_name: bool,
    ) -> Result<()> {
        self.g.replace_all_uses(old, new);
        for &k in keep {
            let inputs: Vec<Option<ValueId>> = (self.g.node(k).inputs().iter())
                .map(|&i| if i == Some(new) { Some(old) } else { i })
                .collect();
            self.g.set_inputs(k, &inputs);
        }
        if take_name {
            if !matches!(self.g.value(old).def(), Def::Node { .. }) {
                bail!(
                    "cannot rename '{}': it is not a node output",
                    self.g.value(old).name()
                );
            }
            let name = self.g.value(old).name().to_string();
            let fresh = self.g.fresh_name(&name);
            self.g.rename_value(old, &fresh)?;
            self.g.rename_value(new, &name)?;
        }
        self.edits += 1;
        Ok(())
    }

    /// Applies pending renames; returns the number of edits made. A rename whose name is
    /// still taken (the old value was kept after all) leaves the fresh name in place.
    pub fn commit(self) -> Result<usize> {
        for &v in &self.unread {
            if self.g.contains_value(v) && self.g.value(v).uses().is_empty() {
                if let Some(t) = self.g.value(v).initializer() {
                    t.forget_resident();
                }
            }
        }
        for (v, name) in self.renames {
            if self.g.find(&name).is_none() {
                self.g.rename_value(v, &name)?;
            } else if self.g.is_output(v) {
                bail!("graph output '{name}' could not keep its name");
            }
        }
        Ok(self.edits)
    }
}
