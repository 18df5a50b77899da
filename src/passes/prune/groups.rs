//! Dependency groups: which channels must be removed together, and every edit removing them
//! takes. A read-only walk of the main graph in topological order.
//!
//! Each Conv, ConvTranspose, Gemm or MatMul whose weight is an f32 initializer *makes* a set of
//! channels: a group. A value carries a [`Layout`], the groups whose channels lie along its
//! channel axis, in order (a Concat lays several side by side; a Flatten turns each channel
//! into a block of elements). Ops that keep channels apart (activations, BatchNormalization,
//! pooling, Resize, Pad, per-channel constants) pass the layout on; a residual Add or a
//! squeeze-excite Mul joins two layouts into one, so their groups become one; Conv, Gemm and
//! MatMul *read* a layout and slice their weights' input axis. Anything else that reads
//! channels — a graph output, a Transpose, a Split or Slice, a Reshape that fixes a count, an
//! opaque op, a subgraph, a grouped Conv — leaves every group it sees alone, with the reason.
//!
//! The exactness this buys: removing a group's channels computes what the original computes
//! with every reader's weights for those channels set to zero.

use std::collections::HashMap;

use crate::ir::{Graph, NodeId, ValueId};
use crate::passes::union_find::UnionFind;
use crate::runtime::Facts;

/// A run of `len` channels of group `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub group: usize,
    pub len: usize,
}

/// Where a value's channels come from: the groups along its axis `axis`, each channel a run of
/// `block` consecutive elements (1 unless a Flatten folded spatial positions into the axis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub axis: usize,
    pub segs: Vec<Seg>,
    pub block: usize,
}

impl Layout {
    fn single(group: usize, len: usize, axis: usize) -> Layout {
        Layout {
            axis,
            segs: vec![Seg { group, len }],
            block: 1,
        }
    }

    /// Channels along the axis.
    pub fn channels(&self) -> usize {
        self.segs.iter().map(|s| s.len).sum()
    }

    /// Elements along the axis.
    pub fn extent(&self) -> usize {
        self.channels() * self.block
    }

    /// The indices along the axis that survive when group `g` keeps `kept[g]`.
    pub fn kept(&self, kept: &[Vec<usize>]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut offset = 0;
        for s in &self.segs {
            for &c in &kept[s.group] {
                let first = (offset + c) * self.block;
                out.extend(first..first + self.block);
            }
            offset += s.len;
        }
        out
    }
}

/// One rewrite pruning takes, at one node or value.
#[derive(Clone, Debug)]
pub enum Edit {
    /// A Conv, ConvTranspose, Gemm or MatMul makes the channels of `group`: its weight's
    /// output axis and its bias shrink.
    Out { node: NodeId, group: usize },
    /// A depthwise Conv passes channels through: its weight's first axis, its bias and its
    /// `group` attribute follow `layout`.
    Tied { node: NodeId, layout: Layout },
    /// Constant input `slot` holds one value per channel along its axis `axis`.
    Param {
        node: NodeId,
        slot: usize,
        axis: usize,
        layout: Layout,
    },
    /// A Conv, ConvTranspose, Gemm or MatMul reads the channels: its weight's input axis is
    /// sliced.
    In { node: NodeId, layout: Layout },
    /// Element `index` of the constant shape input `slot` is the axis's extent.
    Target {
        node: NodeId,
        slot: usize,
        index: usize,
        layout: Layout,
    },
    /// A value's declared dim along the layout's axis.
    Dim { value: ValueId, layout: Layout },
    /// A Slice taking segments `from..to` of `layout` along its axis, entry `index` of its
    /// starts and ends.
    Slice {
        node: NodeId,
        index: usize,
        from: usize,
        to: usize,
        layout: Layout,
    },
    /// A Split cutting `layout` at segment boundaries: `parts` are ranges of segments; its
    /// sizes are where `sizes` says.
    Split {
        node: NodeId,
        parts: Vec<(usize, usize)>,
        sizes: Sizes,
        layout: Layout,
    },
}

/// Where a Split's sizes are written once pruning changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// The `split` attribute (below opset 13), present or to be added.
    Attr,
    /// The constant input 1 (opset 13 and later), present or to be added.
    Input,
}

impl Layout {
    /// Channels kept in segments before segment `j`.
    pub fn kept_before(&self, j: usize, kept: &[Vec<usize>]) -> usize {
        self.segs[..j].iter().map(|s| kept[s.group].len()).sum()
    }

    /// The segments `from..to`, as a layout of their own.
    fn part(&self, from: usize, to: usize) -> Layout {
        Layout {
            segs: self.segs[from..to].to_vec(),
            ..self.clone()
        }
    }

    /// The segment index at channel offset `c`, when `c` is a boundary between segments.
    fn boundary(&self, c: i64) -> Option<usize> {
        let mut at = 0i64;
        for (j, s) in self.segs.iter().enumerate() {
            if at == c {
                return Some(j);
            }
            at += s.len as i64;
        }
        (at == c).then_some(self.segs.len())
    }
}

/// A dependency group, once the walk is over.
#[derive(Clone, Debug)]
pub struct Group {
    /// The first producer's node name.
    pub name: String,
    pub channels: usize,
    /// The nodes making these channels.
    pub producers: Vec<NodeId>,
    /// Values whose channels are exactly this group's, with their channel axis (for
    /// importance by activation).
    pub values: Vec<(ValueId, usize)>,
    /// Why the group may not be pruned.
    pub left: Option<String>,
}

/// The groups of a graph and the edits pruning them takes.
#[derive(Clone, Debug)]
pub struct Groups {
    pub groups: Vec<Group>,
    pub edits: Vec<Edit>,
}

/// A group being built (a class of `Walk::sets` once joined): channels, producers, reason to
/// leave it.
struct Raw {
    channels: usize,
    producers: Vec<NodeId>,
    left: Option<String>,
}

struct Walk<'a> {
    g: &'a Graph,
    facts: &'a Facts,
    /// The default-domain opset, which says where a Split keeps its sizes.
    opset: i64,
    raw: Vec<Raw>,
    /// Groups joined into one, each class's data held by its root.
    sets: UnionFind<usize>,
    layouts: HashMap<ValueId, Layout>,
    edits: Vec<Edit>,
}

/// Finds the dependency groups of `g`'s main graph, with `facts` for shapes, at default-domain
/// opset `opset`.
pub fn find(g: &Graph, facts: &Facts, opset: i64) -> Groups {
    let mut w = Walk {
        g,
        facts,
        opset,
        raw: Vec::new(),
        sets: UnionFind::new(),
        layouts: HashMap::new(),
        edits: Vec::new(),
    };
    let Ok(order) = g.topo_order() else {
        return Groups {
            groups: Vec::new(),
            edits: Vec::new(),
        };
    };
    for n in order {
        w.node(n);
    }
    for o in g.outputs() {
        let why = format!("it reaches graph output '{}'", g.value(o.value).name());
        w.leave_value(o.value, &why);
    }
    w.finish()
}

/// Whether an output of `n` past its first is read (a mask, indices, running statistics).
fn second_output_read(g: &Graph, n: NodeId) -> bool {
    g.node(n)
        .outputs()
        .iter()
        .skip(1)
        .flatten()
        .any(|&v| g.is_read(v))
}

/// Ops that compute each element from the element at the same place alone.
const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Mish",
    "Gelu",
    "Erf",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Identity",
    "Clip",
    "ThresholdedRelu",
    "Shrink",
];

/// Elementwise ops of two operands, broadcasting.
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum"];

/// Ops that pool each channel alone.
const POOL: &[&str] = &[
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
];

impl Walk<'_> {
    fn root(&mut self, i: usize) -> usize {
        self.sets.root(i)
    }

    fn new_group(
        &mut self,
        channels: usize,
        producer: Option<NodeId>,
        left: Option<String>,
    ) -> usize {
        let id = self.raw.len();
        self.raw.push(Raw {
            channels,
            producers: producer.into_iter().collect(),
            left,
        });
        id
    }

    fn leave(&mut self, group: usize, why: &str) {
        let r = self.root(group);
        self.raw[r].left.get_or_insert_with(|| why.to_string());
    }

    fn leave_layout(&mut self, l: &Layout, why: &str) {
        for s in &l.segs {
            self.leave(s.group, why);
        }
    }

    fn leave_value(&mut self, v: ValueId, why: &str) {
        if let Some(l) = self.layouts.get(&v).cloned() {
            self.leave_layout(&l, why);
        }
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return;
        }
        if self.raw[ra].channels != self.raw[rb].channels {
            let why = "it is joined with a value of another channel count";
            self.leave(ra, why);
            self.leave(rb, why);
            return;
        }
        let (producers, left) = (
            std::mem::take(&mut self.raw[rb].producers),
            self.raw[rb].left.take(),
        );
        self.sets.join(ra, rb);
        self.raw[ra].producers.extend(producers);
        if self.raw[ra].left.is_none() {
            self.raw[ra].left = left;
        }
    }

    /// Makes `a` and `b` carry the same channels. Layouts split differently (a Concat of
    /// other parts) cannot be joined: both are left.
    fn join(&mut self, a: &Layout, b: &Layout, why_node: &str) -> bool {
        let same_split = a.segs.len() == b.segs.len()
            && a.block == b.block
            && a.segs.iter().zip(&b.segs).all(|(x, y)| x.len == y.len);
        if !same_split {
            let why = format!("{why_node} joins it with channels laid out differently");
            self.leave_layout(a, &why);
            self.leave_layout(b, &why);
            return false;
        }
        for (x, y) in a.segs.iter().zip(&b.segs) {
            self.union(x.group, y.group);
        }
        true
    }

    fn describe(&self, n: NodeId) -> String {
        let node = self.g.node(n);
        format!("{} '{}'", node.op(), node.name())
    }

    fn dims(&self, v: ValueId) -> Option<Vec<Option<i64>>> {
        self.facts.dims(self.g.value(v).name()).or_else(|| {
            let shape = self.g.shape(v)?;
            Some(
                shape
                    .iter()
                    .map(|d| match d {
                        crate::ir::Dim::Known(k) => Some(*k),
                        _ => None,
                    })
                    .collect(),
            )
        })
    }

    fn rank(&self, v: ValueId) -> Option<usize> {
        self.dims(v).map(|d| d.len())
    }

    /// Gives `v` the layout `l`, declaring its dim edit; leaves the layout's groups when `v`
    /// has no such axis.
    fn set(&mut self, v: Option<ValueId>, l: Layout) {
        let Some(v) = v else { return };
        if self.rank(v).is_some_and(|r| r <= l.axis) {
            let why = format!(
                "'{}' has fewer dims than the analysis expects",
                self.g.value(v).name()
            );
            return self.leave_layout(&l, &why);
        }
        if self.g.value(v).info().and_then(|i| i.ty.as_ref()).is_some() {
            self.edits.push(Edit::Dim {
                value: v,
                layout: l.clone(),
            });
        }
        self.layouts.insert(v, l);
    }

    fn node(&mut self, n: NodeId) {
        let g = self.g;
        let node = g.node(n);
        let tracked: Vec<(usize, Layout)> = node
            .inputs()
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, self.layouts.get(&(*v)?)?.clone())))
            .collect();
        // A body reading a tracked value sees its channel count.
        for &c in node.captures() {
            let why = format!("it is read inside a subgraph of {}", self.describe(n));
            self.leave_value(c, &why);
        }
        if tracked.is_empty() {
            self.maybe_produce(n);
            return;
        }
        if !node.in_standard_domain() || node.has_bodies() {
            let why = format!(
                "it is read by {}, which the analysis does not open",
                self.describe(n)
            );
            for (_, l) in &tracked {
                self.leave_layout(l, &why);
            }
            return;
        }
        let op = node.op();
        let first = tracked[0].1.clone();
        let out = node.output(0);
        let refuse = |w: &mut Walk, why: String| {
            for (_, l) in &tracked {
                w.leave_layout(l, &why);
            }
        };
        match op {
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => {
                if tracked.iter().any(|(slot, _)| *slot != 0) {
                    let why = format!("it is a weight or bias of {}", self.describe(n));
                    return refuse(self, why);
                }
                self.consume(n, first);
            }
            _ if UNARY.contains(&op) || op == "Dropout" || op == "Cast" => {
                if second_output_read(g, n) {
                    return refuse(
                        self,
                        format!("{} has a second output that is read", self.describe(n)),
                    );
                }
                if tracked.iter().any(|(slot, _)| *slot != 0) {
                    return refuse(self, format!("it is a parameter of {}", self.describe(n)));
                }
                self.set(out, first);
            }
            "PRelu" | "BatchNormalization" | "InstanceNormalization" => {
                let normalization = op != "PRelu";
                if tracked.iter().any(|(slot, _)| *slot != 0)
                    || first.block != 1
                    || (normalization && first.axis != 1)
                {
                    return refuse(self, format!("it is a parameter of {}", self.describe(n)));
                }
                if op == "BatchNormalization"
                    && (node.attr_i("training_mode") == Some(1) || second_output_read(g, n))
                {
                    return refuse(
                        self,
                        format!("{} computes running statistics", self.describe(n)),
                    );
                }
                let params = match op {
                    "PRelu" => 1..2,
                    "BatchNormalization" => 1..5,
                    _ => 1..3,
                };
                for slot in params {
                    if !self.param(n, slot, &first) {
                        let why = format!(
                            "a parameter of {} is not one constant per channel",
                            self.describe(n)
                        );
                        return refuse(self, why);
                    }
                }
                self.set(out, first);
            }
            _ if BINARY.contains(&op) => self.elementwise(n, &tracked),
            _ if POOL.contains(&op) => {
                if first.block != 1 || first.axis != 1 || second_output_read(g, n) {
                    return refuse(
                        self,
                        format!(
                            "{} reads it in a way the analysis cannot follow",
                            self.describe(n)
                        ),
                    );
                }
                self.set(out, first);
            }
            "Resize" | "Upsample" | "Pad" => self.spatial(n, &tracked),
            "Concat" => self.concat(n),
            "Slice" | "Split" if tracked.iter().any(|(slot, _)| *slot != 0) => {
                refuse(self, format!("it is a parameter of {}", self.describe(n)))
            }
            "Slice" => self.slice(n, first),
            "Split" => self.split(n, first),
            "Flatten" | "Reshape" => self.flatten(n, first),
            "Squeeze" | "Unsqueeze" => self.squeeze(n, first),
            "Shape" => {
                let (start, end) = (node.attr_i("start").unwrap_or(0), node.attr_i("end"));
                let rank = self.rank(node.input(0).unwrap()).unwrap_or(0) as i64;
                let norm = |a: i64| if a < 0 { a + rank } else { a };
                let (s, e) = (norm(start), end.map_or(rank, norm));
                let axis = first.axis as i64;
                if axis < s || axis >= e {
                    return;
                }
                // Gathered dims other than the channel axis are fine.
                let dim = |i: i64| if i < 0 { e + i } else { s + i };
                let reads_only_other_dims = out.is_some_and(|o| {
                    !g.is_output(o)
                        && g.value(o).uses().iter().all(|u| {
                            let r = g.node(u.node);
                            r.is("Gather")
                                && u.slot == crate::ir::Slot::Input(0)
                                && r.input(1)
                                    .and_then(|i| g.const_ints(i))
                                    .is_some_and(|ix| ix.iter().all(|&i| dim(i) != axis))
                        })
                });
                if !reads_only_other_dims {
                    refuse(
                        self,
                        format!("its channel count is read by {}", self.describe(n)),
                    );
                }
            }
            _ => refuse(
                self,
                format!(
                    "it is read by {}, which the analysis cannot rewrite",
                    self.describe(n)
                ),
            ),
        }
    }

    /// The weight of `n` (input 1) when it is an f32 initializer read by no other input of
    /// `n`, with its dims.
    fn weight_dims(&self, n: NodeId) -> Option<Vec<i64>> {
        let w = self.g.node(n).input(1)?;
        let t = self.g.value(w).constant()?;
        t.f32_bytes()?;
        Some(t.dims().to_vec())
    }

    /// For a Conv-like op: its kind and group count.
    fn conv_group(&self, n: NodeId) -> usize {
        self.g.node(n).attr_i("group").unwrap_or(1).max(1) as usize
    }

    /// `n` makes channels, when its weight is one we can slice: a new group on its output.
    fn maybe_produce(&mut self, n: NodeId) {
        let node = self.g.node(n);
        let Some(dims) = self.weight_dims(n) else {
            return;
        };
        let out = node.output(0);
        let (channels, axis) = match node.op() {
            "Conv" if node.in_standard_domain() && self.conv_group(n) == 1 && dims.len() >= 3 => {
                (dims[0], 1)
            }
            "ConvTranspose"
                if node.in_standard_domain() && self.conv_group(n) == 1 && dims.len() >= 3 =>
            {
                (dims[1], 1)
            }
            "Gemm"
                if node.in_standard_domain() && dims.len() == 2 && self.gemm_bias_ok(n, &dims) =>
            {
                let m = if node.attr_i("transB") == Some(1) {
                    dims[0]
                } else {
                    dims[1]
                };
                (m, 1)
            }
            "MatMul" if node.in_standard_domain() && dims.len() == 2 => {
                let Some(rank) = out.and_then(|o| self.rank(o)).filter(|&r| r >= 2) else {
                    return;
                };
                (dims[1], rank - 1)
            }
            _ => return,
        };
        if node
            .input(2)
            .is_some_and(|b| self.g.value(b).constant().is_none())
        {
            return;
        }
        let group = self.new_group(channels as usize, Some(n), None);
        self.edits.push(Edit::Out { node: n, group });
        self.set(out, Layout::single(group, channels as usize, axis));
    }

    /// A Gemm's C is absent, a scalar or one constant per output column.
    fn gemm_bias_ok(&self, n: NodeId, dims: &[i64]) -> bool {
        let node = self.g.node(n);
        let m = if node.attr_i("transB") == Some(1) {
            dims[0]
        } else {
            dims[1]
        };
        match node.input(2) {
            None => true,
            Some(c) => self.g.value(c).constant().is_some_and(|t| {
                let d = t.dims();
                t.len() == 1 || (d.last() == Some(&m) && t.len() as i64 == m)
            }),
        }
    }

    /// `n` (Conv, ConvTranspose, Gemm, MatMul) reads the channels `l` on its input 0.
    fn consume(&mut self, n: NodeId, l: Layout) {
        let node = self.g.node(n);
        let what = self.describe(n);
        let Some(dims) = self.weight_dims(n) else {
            let why = format!("{what} has a weight that is not an f32 initializer");
            return self.leave_layout(&l, &why);
        };
        let x = node.input(0).unwrap();
        let rank = self.rank(x);
        let ok = match node.op() {
            "Conv" => {
                let groups = self.conv_group(n);
                let cin = l.extent() as i64;
                if l.axis != 1 || l.block != 1 {
                    false
                } else if groups == 1 {
                    true
                } else if groups as i64 == cin
                    && dims.first() == Some(&cin)
                    && dims.get(1) == Some(&1)
                {
                    // Depthwise: each channel is filtered alone; its output is the same channel.
                    if node
                        .input(2)
                        .is_some_and(|b| self.g.value(b).constant().is_none())
                    {
                        let why = format!("{what} has a bias that is not a constant");
                        return self.leave_layout(&l, &why);
                    }
                    self.edits.push(Edit::Tied {
                        node: n,
                        layout: l.clone(),
                    });
                    self.set(node.output(0), l);
                    return;
                } else {
                    let why =
                        format!("{what} is a grouped Conv whose groups fix its channel count");
                    return self.leave_layout(&l, &why);
                }
            }
            "ConvTranspose" => l.axis == 1 && l.block == 1 && self.conv_group(n) == 1,
            "Gemm" => {
                rank == Some(2)
                    && l.axis == 1
                    && node.attr_i("transA") != Some(1)
                    && dims.len() == 2
            }
            _ => rank.is_some_and(|r| l.axis + 1 == r) && dims.len() == 2,
        };
        if !ok {
            let why = format!("it is read by {what} along an axis the analysis cannot slice");
            return self.leave_layout(&l, &why);
        }
        self.edits.push(Edit::In { node: n, layout: l });
        self.maybe_produce(n);
    }

    /// Records that constant input `slot` of `n` broadcasts against the channels `l` of its
    /// output; false when it is not a constant, or varies along the channel axis without one
    /// value per channel.
    fn param(&mut self, n: NodeId, slot: usize, l: &Layout) -> bool {
        let g = self.g;
        let node = g.node(n);
        let Some(v) = node.input(slot) else {
            return true;
        };
        let Some(t) = g.value(v).constant() else {
            return false;
        };
        let out_rank = node.output(0).and_then(|o| self.rank(o));
        let dims = t.dims();
        // BatchNormalization, InstanceNormalization: one value per channel, rank 1.
        let const_axis = if matches!(node.op(), "BatchNormalization" | "InstanceNormalization") {
            Some(0)
        } else {
            // Right-aligned broadcasting against the output.
            out_rank.and_then(|r| (l.axis + dims.len()).checked_sub(r))
        };
        match const_axis {
            // A constant of too low a rank to reach the channel axis broadcasts along it.
            None => out_rank.is_some(),
            Some(a) if dims.len() <= a || dims[a] == 1 => {
                !matches!(node.op(), "BatchNormalization" | "InstanceNormalization")
            }
            Some(a) if dims[a] as usize == l.extent() => {
                self.edits.push(Edit::Param {
                    node: n,
                    slot,
                    axis: a,
                    layout: l.clone(),
                });
                true
            }
            Some(_) => false,
        }
    }

    fn elementwise(&mut self, n: NodeId, tracked: &[(usize, Layout)]) {
        match self.join_operands(n, tracked) {
            Ok(l) => self.set(self.g.node(n).output(0), l),
            // Every operand's channels are left, so none is pruned while another is not.
            Err(why) => {
                for (_, l) in tracked {
                    self.leave_layout(l, &why);
                }
            }
        }
    }

    /// The layout of an elementwise op's output: its tracked operands' layouts joined, its
    /// constants one value per channel (or none), its other operands flat along the channels.
    fn join_operands(&mut self, n: NodeId, tracked: &[(usize, Layout)]) -> Result<Layout, String> {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let out_rank = node
            .output(0)
            .and_then(|o| self.rank(o))
            .ok_or_else(|| format!("{what} has an output of unknown rank"))?;
        // Operands of lower rank line up from the right: their layouts' axes shift.
        let mut shifted = Vec::new();
        for (slot, l) in tracked {
            let rank = node.input(*slot).and_then(|v| self.rank(v));
            let rank = rank
                .filter(|&r| r <= out_rank)
                .ok_or_else(|| format!("{what} has operands of unknown rank"))?;
            shifted.push(Layout {
                axis: l.axis + out_rank - rank,
                ..l.clone()
            });
        }
        let l = shifted[0].clone();
        for other in &shifted[1..] {
            if other.axis != l.axis {
                return Err(format!("{what} joins it with channels on another axis"));
            }
            if !self.join(&l, other, &what) {
                return Err(format!(
                    "{what} joins it with channels laid out differently"
                ));
            }
        }
        for (slot, v) in node.inputs().iter().enumerate() {
            let Some(v) = *v else { continue };
            if self.layouts.contains_key(&v) {
                continue;
            }
            if g.value(v).constant().is_some() {
                if !self.param(n, slot, &l) {
                    return Err(format!(
                        "{what} has a constant that is not one value per channel"
                    ));
                }
                continue;
            }
            // A value the walk does not follow: fine when it does not vary along the channels.
            let flat =
                self.dims(v)
                    .is_some_and(|d| match (l.axis + d.len()).checked_sub(out_rank) {
                        None => true,
                        Some(a) => d.get(a) == Some(&Some(1)),
                    });
            if !flat {
                return Err(format!(
                    "{what} joins it with '{}', whose channels the analysis does not follow",
                    g.value(v).name()
                ));
            }
        }
        Ok(l)
    }

    /// Resize, Upsample, Pad: the channel axis must stay as it is.
    fn spatial(&mut self, n: NodeId, tracked: &[(usize, Layout)]) {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let l = tracked[0].1.clone();
        if tracked.iter().any(|(s, _)| *s != 0) || l.block != 1 {
            let why = format!("it is a parameter of {what}");
            for (_, l) in tracked {
                self.leave_layout(l, &why);
            }
            return;
        }
        let rank = self.rank(node.input(0).unwrap()).unwrap_or(0);
        let ints = |slot: usize| node.input(slot).and_then(|v| g.const_ints(v));
        let floats = |slot: usize| {
            node.input(slot)
                .and_then(|v| g.value(v).constant()?.to_f32_vec())
        };
        let ok = match node.op() {
            "Pad" => {
                let pads = node
                    .attr_ints("pads")
                    .map(<[i64]>::to_vec)
                    .or_else(|| ints(1));
                // An axes input that is not a constant could name any axis.
                let axes = match node.input(3) {
                    Some(a) => match g.const_ints(a) {
                        Some(a) => Some(a),
                        None => {
                            return self.leave_layout(
                                &l,
                                &format!("{what} pads axes that are not constants"),
                            )
                        }
                    },
                    None => None,
                };
                match (pads, axes) {
                    (Some(p), None) => {
                        p.len() == 2 * rank
                            && p.get(l.axis) == Some(&0)
                            && p.get(l.axis + rank) == Some(&0)
                    }
                    (Some(p), Some(axes)) => {
                        let k = axes.len();
                        axes.iter().enumerate().all(|(i, &a)| {
                            let a = if a < 0 { a + rank as i64 } else { a } as usize;
                            a != l.axis || (p.get(i) == Some(&0) && p.get(i + k) == Some(&0))
                        })
                    }
                    _ => false,
                }
            }
            _ => {
                // Upsample reads scales at input 1, Resize at input 2 (1 below opset 11 holds
                // scales too) and sizes at input 3.
                let scales_slot = if node.op() == "Upsample" || node.inputs().len() == 2 {
                    1
                } else {
                    2
                };
                // Cropping by a region of interest may move along the channel axis too.
                let crop_free =
                    node.attr_s("coordinate_transformation_mode") != Some(b"tf_crop_and_resize");
                if let Some(sizes) = node.input(3).filter(|_| node.op() == "Resize") {
                    match g.const_ints(sizes) {
                        Some(s)
                            if s.len() == rank
                                && s.get(l.axis) == Some(&(l.extent() as i64))
                                && node.attr_ints("axes").is_none()
                                && crop_free =>
                        {
                            self.edits.push(Edit::Target {
                                node: n,
                                slot: 3,
                                index: l.axis,
                                layout: l.clone(),
                            });
                            true
                        }
                        _ => false,
                    }
                } else {
                    let attr = node.attr("scales").and_then(|a| match a.value() {
                        crate::ir::AttrValue::Floats(f) => Some(f.clone()),
                        _ => None,
                    });
                    crop_free
                        && node.attr_ints("axes").is_none()
                        && attr
                            .or_else(|| floats(scales_slot))
                            .is_some_and(|s| s.len() == rank && s.get(l.axis) == Some(&1.0))
                }
            }
        };
        if !ok {
            let why = format!("{what} may change the channel axis");
            return self.leave_layout(&l, &why);
        }
        self.set(node.output(0), l);
    }

    fn concat(&mut self, n: NodeId) {
        let inputs: Vec<ValueId> = self.g.node(n).inputs().iter().flatten().copied().collect();
        match self.concat_layout(n, &inputs) {
            Ok(l) => self.set(self.g.node(n).output(0), l),
            Err(why) => {
                for v in inputs {
                    self.leave_value(v, &why);
                }
            }
        }
    }

    /// Along the channel axis, a Concat lays its inputs' channels side by side (channels the
    /// walk does not follow become a part of their own, left alone); along another axis, every
    /// input carries the same channels.
    fn concat_layout(&mut self, n: NodeId, inputs: &[ValueId]) -> Result<Layout, String> {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let rank =
            node.output(0)
                .and_then(|o| self.rank(o))
                .ok_or_else(|| format!("{what} has an output of unknown rank"))? as i64;
        // Concat had a default axis of 1 until opset 4, and none since.
        let axis = match node.attr_i("axis") {
            Some(a) => a,
            None if self.opset < 4 => 1,
            None => return Err(format!("{what} has no axis")),
        };
        let axis = if axis < 0 { axis + rank } else { axis } as usize;
        let tracked: Vec<Option<Layout>> = inputs
            .iter()
            .map(|v| self.layouts.get(v).cloned())
            .collect();
        let along = tracked.iter().flatten().any(|l| l.axis == axis);
        if !along {
            let first = tracked
                .iter()
                .flatten()
                .next()
                .cloned()
                .ok_or("no input is followed")?;
            if tracked
                .iter()
                .any(|t| t.as_ref().is_none_or(|l| l.axis != first.axis))
            {
                return Err(format!(
                    "{what} joins it with channels the analysis does not follow"
                ));
            }
            for l in tracked.iter().flatten().skip(1) {
                if !self.join(&first, l, &what) {
                    return Err(format!(
                        "{what} joins it with channels laid out differently"
                    ));
                }
            }
            return Ok(first);
        }
        let mut segs = Vec::new();
        for (v, t) in inputs.iter().zip(tracked) {
            match t {
                Some(l) if l.axis == axis && l.block == 1 => segs.extend(l.segs),
                Some(_) => {
                    return Err(format!("{what} concatenates channels laid out differently"))
                }
                None => {
                    let extent = self.dims(*v).and_then(|d| d.get(axis).copied().flatten());
                    let c = extent
                        .ok_or_else(|| format!("{what} joins it with an input of unknown size"))?;
                    let why = format!(
                        "its channels come from '{}', which the analysis does not follow",
                        g.value(*v).name()
                    );
                    let group = self.new_group(c as usize, None, Some(why));
                    segs.push(Seg {
                        group,
                        len: c as usize,
                    });
                }
            }
        }
        Ok(Layout {
            axis,
            segs,
            block: 1,
        })
    }

    /// Flatten, or a Reshape to [batch, channels × positions]: each channel becomes a block.
    fn flatten(&mut self, n: NodeId, l: Layout) {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let x = node.input(0).unwrap();
        let (Some(din), Some(dout)) = (self.dims(x), node.output(0).and_then(|o| self.dims(o)))
        else {
            return self.leave_layout(&l, &format!("{what} has shapes the analysis does not know"));
        };
        let tail: Option<i64> = din
            .get(l.axis + 1..)
            .and_then(|d| d.iter().copied().product());
        let flattened = l.block == 1
            && dout.len() == l.axis + 1
            && din.get(..l.axis) == dout.get(..l.axis)
            && tail.is_some();
        let Some(tail) = tail.filter(|_| flattened) else {
            return self.leave_layout(
                &l,
                &format!("{what} fixes a channel count the analysis cannot rewrite"),
            );
        };
        if node.is("Flatten") {
            if node.attr_i("axis").unwrap_or(1) != l.axis as i64 {
                return self
                    .leave_layout(&l, &format!("{what} folds the channels into another axis"));
            }
        } else {
            let target = node.input(1).and_then(|t| g.const_ints(t));
            let Some(target) = target.filter(|t| t.len() == dout.len()) else {
                return self
                    .leave_layout(&l, &format!("{what} has a target that is not a constant"));
            };
            let extent = (l.extent() as i64) * tail;
            match target[l.axis] {
                -1 => {}
                0 if tail == 1 => {}
                t if t == extent => self.edits.push(Edit::Target {
                    node: n,
                    slot: 1,
                    index: l.axis,
                    layout: Layout {
                        block: tail as usize,
                        ..l.clone()
                    },
                }),
                _ => {
                    return self.leave_layout(
                        &l,
                        &format!("{what} fixes a channel count the analysis cannot rewrite"),
                    )
                }
            }
            // Any other -1 would absorb the channels.
            if target
                .iter()
                .enumerate()
                .any(|(i, &t)| i != l.axis && (t == -1 || (t == 0 && i >= din.len())))
            {
                return self.leave_layout(
                    &l,
                    &format!("{what} fixes a channel count the analysis cannot rewrite"),
                );
            }
        }
        self.set(
            node.output(0),
            Layout {
                block: tail as usize,
                ..l
            },
        );
    }

    /// Squeeze/Unsqueeze of axes after the channel axis only.
    fn squeeze(&mut self, n: NodeId, l: Layout) {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let axes = node
            .attr_ints("axes")
            .map(<[i64]>::to_vec)
            .or_else(|| node.input(1).and_then(|a| g.const_ints(a)));
        let rank = if node.is("Squeeze") {
            self.rank(node.input(0).unwrap())
        } else {
            node.output(0).and_then(|o| self.rank(o))
        };
        let after = axes.zip(rank).is_some_and(|(axes, r)| {
            axes.iter()
                .all(|&a| (if a < 0 { a + r as i64 } else { a }) > l.axis as i64)
        });
        if !after
            || node
                .inputs()
                .iter()
                .skip(1)
                .flatten()
                .any(|v| self.layouts.contains_key(v))
        {
            return self.leave_layout(&l, &format!("{what} moves the channel axis"));
        }
        self.set(node.output(0), l);
    }

    /// A Slice passes the channels when it does not cut the channel axis, and takes whole
    /// segments (the parts of a Concat) when it cuts it at their boundaries, step 1.
    fn slice(&mut self, n: NodeId, l: Layout) {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let rank = self.rank(node.input(0).unwrap()).unwrap_or(0) as i64;
        let ints = |attr: &str, slot: usize| {
            node.attr_ints(attr)
                .map(<[i64]>::to_vec)
                .or_else(|| node.input(slot).and_then(|v| g.const_ints(v)))
        };
        let (Some(starts), Some(ends)) = (ints("starts", 1), ints("ends", 2)) else {
            return self.leave_layout(&l, &format!("{what} has bounds that are not constants"));
        };
        if node.input(3).is_some() && ints("axes", 3).is_none() {
            return self.leave_layout(&l, &format!("{what} has axes that are not constants"));
        }
        let axes = ints("axes", 3).unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = node.input(4).map(|v| g.const_ints(v));
        let norm = |a: i64| if a < 0 { a + rank } else { a };
        let Some(i) = axes.iter().position(|&a| norm(a) == l.axis as i64) else {
            return self.set(node.output(0), l);
        };
        let step = match &steps {
            None => Some(1),
            Some(s) => s.as_ref().and_then(|s| s.get(i).copied()),
        };
        let extent = l.extent() as i64;
        let clamp = |v: i64| (if v < 0 { v + extent } else { v }).clamp(0, extent);
        let cut = (starts.get(i), ends.get(i), step, l.block);
        let (Some(&s0), Some(&e0), Some(1), 1) = cut else {
            return self.leave_layout(
                &l,
                &format!("{what} takes channels in a way the analysis cannot follow"),
            );
        };
        match (l.boundary(clamp(s0)), l.boundary(clamp(e0))) {
            (Some(from), Some(to)) if from < to => {
                self.edits.push(Edit::Slice {
                    node: n,
                    index: i,
                    from,
                    to,
                    layout: l.clone(),
                });
                self.set(node.output(0), l.part(from, to));
            }
            _ => self.leave_layout(&l, &format!("{what} cuts through a group's channels")),
        }
    }

    /// A Split along another axis passes the channels to every part; along the channel axis,
    /// each part must be whole segments.
    fn split(&mut self, n: NodeId, l: Layout) {
        let g = self.g;
        let node = g.node(n);
        let what = self.describe(n);
        let rank = self.rank(node.input(0).unwrap()).unwrap_or(0) as i64;
        let axis = node.attr_i("axis").unwrap_or(0);
        let axis = if axis < 0 { axis + rank } else { axis };
        let outputs: Vec<Option<ValueId>> = node.outputs().to_vec();
        if axis != l.axis as i64 {
            for o in outputs {
                self.set(o, l.clone());
            }
            return;
        }
        let given = node
            .attr_ints("split")
            .map(<[i64]>::to_vec)
            .or_else(|| node.input(1).and_then(|v| g.const_ints(v)));
        if given.is_none() && (node.input(1).is_some() || node.attr("num_outputs").is_some()) {
            return self.leave_layout(&l, &format!("{what} has sizes the analysis cannot rewrite"));
        }
        let extent = l.extent() as i64;
        let count = outputs.len() as i64;
        let sizes = given.unwrap_or_else(|| {
            if count > 0 && extent % count == 0 {
                vec![extent / count; count as usize]
            } else {
                Vec::new()
            }
        });
        if sizes.len() != outputs.len() || l.block != 1 || sizes.iter().sum::<i64>() != extent {
            return self.leave_layout(
                &l,
                &format!("{what} takes channels in a way the analysis cannot follow"),
            );
        }
        let mut parts = Vec::new();
        let mut at = 0;
        for &size in &sizes {
            match (l.boundary(at), l.boundary(at + size)) {
                (Some(from), Some(to)) if from < to => parts.push((from, to)),
                _ => {
                    return self
                        .leave_layout(&l, &format!("{what} cuts through a group's channels"))
                }
            }
            at += size;
        }
        for (o, &(from, to)) in outputs.iter().zip(&parts) {
            self.set(*o, l.part(from, to));
        }
        self.edits.push(Edit::Split {
            node: n,
            parts,
            sizes: if self.opset >= 13 {
                Sizes::Input
            } else {
                Sizes::Attr
            },
            layout: l,
        });
    }

    fn finish(mut self) -> Groups {
        let roots: Vec<usize> = (0..self.raw.len()).map(|i| self.root(i)).collect();
        // Dense ids for roots, in order of first appearance, so output is deterministic.
        let mut dense: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for &r in &roots {
            if let std::collections::hash_map::Entry::Vacant(e) = dense.entry(r) {
                e.insert(groups.len());
                let raw = &self.raw[r];
                let mut producers = raw.producers.clone();
                producers.sort_by_key(|&p| self.g.node(p).name().to_string());
                let name = producers.first().map_or_else(
                    || "(outside)".to_string(),
                    |&p| self.g.node(p).name().to_string(),
                );
                let left = raw.left.clone().or_else(|| {
                    producers
                        .is_empty()
                        .then(|| "no op makes its channels".to_string())
                });
                groups.push(Group {
                    name,
                    channels: raw.channels,
                    producers,
                    values: Vec::new(),
                    left,
                });
            }
        }
        let remap = |l: &Layout| Layout {
            segs: l
                .segs
                .iter()
                .map(|s| Seg {
                    group: dense[&roots[s.group]],
                    len: s.len,
                })
                .collect(),
            ..l.clone()
        };
        let mut values: Vec<(ValueId, Layout)> =
            self.layouts.iter().map(|(v, l)| (*v, remap(l))).collect();
        values.sort_by_key(|(v, _)| v.index());
        for (v, l) in values {
            if let [s] = l.segs[..] {
                if l.block == 1 {
                    groups[s.group].values.push((v, l.axis));
                }
            }
        }
        let mut edits = std::mem::take(&mut self.edits);
        for e in &mut edits {
            match e {
                Edit::Out { group, .. } => *group = dense[&roots[*group]],
                Edit::Tied { layout, .. }
                | Edit::Param { layout, .. }
                | Edit::In { layout, .. }
                | Edit::Target { layout, .. }
                | Edit::Dim { layout, .. }
                | Edit::Slice { layout, .. }
                | Edit::Split { layout, .. } => *layout = remap(layout),
            }
        }
        Groups { groups, edits }
    }
}
