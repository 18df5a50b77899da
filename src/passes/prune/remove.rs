//! prune-channels: the channels a [`Plan`] drops are removed physically, from every tensor
//! and shape that holds them.
//!
//! ```text
//! x ─ Conv(W1 [64,C,3,3], b1 [64]) ─ BN(γ,β,μ,σ² [64]) ─ Relu ─ Conv(W2 [128,64,1,1]) ─ y
//!   ⇒
//! x ─ Conv(W1 [48,C,3,3], b1 [48]) ─ BN(γ,β,μ,σ² [48]) ─ Relu ─ Conv(W2 [128,48,1,1]) ─ y
//! ```
//!
//! Each edit of the plan's [`Groups`] is applied where it stands: a producer's output rows, a
//! depthwise Conv's channels (and its `group`), a per-channel constant, a reader's input
//! columns (a block of them per channel after a Flatten), a shape constant, a declared dim.
//! Main graph only: the analysis leaves groups that reach a body alone.

use anyhow::{anyhow, Result};

use super::groups::{Edit, Groups, Layout, Sizes};
use crate::ir::{Attr, Dim, Model, NodeId, Patch, Slot, Tensor, Type};
use crate::passes::{Changed, Pass, PassContext};

/// What to remove: the groups of the graph as it is, and the channels each group keeps.
#[derive(Clone, Debug)]
pub struct Plan {
    pub groups: Groups,
    /// Per group, the channels it keeps, ascending.
    pub kept: Vec<Vec<usize>>,
}

impl Plan {
    /// The indices along a layout's axis that stay, or `None` when all do.
    fn kept(&self, l: &Layout) -> Option<Vec<usize>> {
        let k = l.kept(&self.kept);
        (k.len() != l.extent()).then_some(k)
    }
}

pub struct PruneChannels;

impl Pass for PruneChannels {
    fn id(&self) -> &'static str {
        "prune-channels"
    }

    fn about(&self) -> &'static str {
        "remove the channels a pruning plan drops from weights, biases, per-channel parameters and shapes"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let Some(plan) = cx.get::<Plan>().cloned() else {
            return Ok(Changed::No);
        };
        let mut p = Patch::new(&mut model.graph);
        let mut count = 0;
        for edit in &plan.groups.edits {
            if apply(&mut p, &plan, edit)? {
                count += 1;
            }
        }
        p.commit()?;
        Ok(Changed::from_count(count))
    }
}

fn apply(p: &mut Patch, plan: &Plan, edit: &Edit) -> Result<bool> {
    match edit {
        Edit::Out { node, group } => {
            let keep = &plan.kept[*group];
            let channels = plan.groups.groups[*group].channels;
            if keep.len() == channels {
                return Ok(false);
            }
            let (out, _) = crate::passes::channels::weight_axes(p.graph().node(*node));
            slice_input(p, *node, 1, out, keep)?;
            let bias = p.graph().node(*node).input(2);
            if let Some(b) = bias.and_then(|b| p.graph().value(b).constant()) {
                // A Gemm's C may be a scalar, which broadcasts and stays.
                if b.len() as usize == channels {
                    let axis = b.dims().len().saturating_sub(1);
                    slice_input(p, *node, 2, axis, keep)?;
                }
            }
        }
        Edit::Tied { node, layout } => {
            let Some(keep) = plan.kept(layout) else {
                return Ok(false);
            };
            slice_input(p, *node, 1, 0, &keep)?;
            if p.graph().node(*node).input(2).is_some() {
                slice_input(p, *node, 2, 0, &keep)?;
            }
            p.set_attr(*node, Attr::int("group", keep.len() as i64));
        }
        Edit::Param {
            node,
            slot,
            axis,
            layout,
        } => {
            let Some(keep) = plan.kept(layout) else {
                return Ok(false);
            };
            slice_input(p, *node, *slot, *axis, &keep)?;
        }
        Edit::In { node, layout } => {
            let Some(keep) = plan.kept(layout) else {
                return Ok(false);
            };
            let (_, input) = crate::passes::channels::weight_axes(p.graph().node(*node));
            slice_input(p, *node, 1, input, &keep)?;
        }
        Edit::Target {
            node,
            slot,
            index,
            layout,
        } => {
            let Some(keep) = plan.kept(layout) else {
                return Ok(false);
            };
            set_int(p, *node, None, *slot, *index, keep.len() as i64)?;
        }
        Edit::Slice {
            node,
            index,
            from,
            to,
            layout,
        } => {
            if plan.kept(layout).is_none() {
                return Ok(false);
            }
            let bounds = [
                ("starts", 1, layout.kept_before(*from, &plan.kept)),
                ("ends", 2, layout.kept_before(*to, &plan.kept)),
            ];
            for (attr, slot, at) in bounds {
                set_int(p, *node, Some(attr), slot, *index, at as i64)?;
            }
        }
        Edit::Split {
            node,
            parts,
            sizes,
            layout,
        } => {
            if plan.kept(layout).is_none() {
                return Ok(false);
            }
            let new: Vec<i64> = parts
                .iter()
                .map(|&(a, b)| {
                    (layout.kept_before(b, &plan.kept) - layout.kept_before(a, &plan.kept)) as i64
                })
                .collect();
            match sizes {
                Sizes::Attr => p.set_attr(*node, Attr::ints("split", &new)),
                Sizes::Input => {
                    let t = Tensor::from_i64(vec![new.len() as i64], &new);
                    if p.graph().node(*node).input(1).is_some() {
                        replace_input(p, *node, 1, t)?;
                    } else {
                        let name = format!("{}.split", p.graph().node(*node).name());
                        let v = p.add_initializer(&name, t)?;
                        p.set_input(*node, 1, Some(v));
                    }
                }
            }
        }
        Edit::Dim { value, layout } => {
            let Some(keep) = plan.kept(layout) else {
                return Ok(false);
            };
            let Some(Type::Tensor {
                dtype,
                shape: Some(shape),
            }) = p.graph().value(*value).info().and_then(|i| i.ty.clone())
            else {
                return Ok(false);
            };
            let mut shape = shape;
            if let Some(d @ Dim::Known(_)) = shape.get_mut(layout.axis) {
                *d = Dim::Known(keep.len() as i64);
                p.set_type(*value, Type::tensor(dtype, shape));
            }
        }
    }
    Ok(true)
}

/// Sets entry `index` of `n`'s integer list attribute `attr`, or of its constant input `slot`
/// when it has no such attribute, to `value`.
fn set_int(
    p: &mut Patch,
    n: NodeId,
    attr: Option<&str>,
    slot: usize,
    index: usize,
    value: i64,
) -> Result<()> {
    let node = p.graph().node(n);
    if let Some((name, list)) = attr.and_then(|a| Some((a, node.attr_ints(a)?))) {
        let mut list = list.to_vec();
        list[index] = value;
        p.set_attr(n, Attr::ints(name, &list));
        return Ok(());
    }
    let attr = attr.unwrap_or("shape");
    let v = node
        .input(slot)
        .ok_or_else(|| anyhow!("'{}' lost its {attr}", node.name()))?;
    let t = p
        .graph()
        .value(v)
        .constant()
        .ok_or_else(|| anyhow!("'{}': {attr} is no longer constant", node.name()))?;
    let mut ints = t
        .to_i64_vec()
        .ok_or_else(|| anyhow!("'{}': {attr} is not integers", node.name()))?;
    ints[index] = value;
    let new = if t.dtype() == crate::ir::DType::I32 {
        let raw: Vec<u8> = ints
            .iter()
            .flat_map(|&x| (x as i32).to_le_bytes())
            .collect();
        Tensor::from_raw(crate::ir::DType::I32, t.dims().to_vec(), raw.into())
    } else {
        Tensor::from_i64(t.dims().to_vec(), &ints)
    };
    replace_input(p, n, slot, new)
}

/// Input `slot` of `n`, a constant, sliced along `axis` to the indices `keep`.
fn slice_input(p: &mut Patch, n: NodeId, slot: usize, axis: usize, keep: &[usize]) -> Result<()> {
    let g = p.graph();
    let node = g.node(n);
    let v = node
        .input(slot)
        .ok_or_else(|| anyhow!("{} '{}' has no input {slot}", node.op(), node.name()))?;
    let t = g.value(v).constant().ok_or_else(|| {
        anyhow!(
            "input {slot} of {} '{}' is no longer a constant",
            node.op(),
            node.name()
        )
    })?;
    let sliced = slice_axis(t, axis, keep).ok_or_else(|| {
        anyhow!(
            "input {slot} of {} '{}' ({:?}) cannot be sliced along axis {axis}",
            node.op(),
            node.name(),
            t.dims()
        )
    })?;
    replace_input(p, n, slot, sliced)
}

/// Makes input `slot` of `n` read `t`: in place (keeping the name) when `n` is the constant's
/// only reader, as a new initializer when others still read the old one.
pub(super) fn replace_input(p: &mut Patch, n: NodeId, slot: usize, t: Tensor) -> Result<()> {
    let g = p.graph();
    let v = g.node(n).input(slot).expect("checked by the caller");
    let only_here = g
        .value(v)
        .uses()
        .iter()
        .all(|u| u.node == n && u.slot == Slot::Input(slot));
    if only_here && p.graph().value(v).initializer().is_some() {
        p.resize_initializer(v, t)?;
    } else {
        let name = g.value(v).name().to_string();
        let new = p.add_initializer(&name, t)?;
        p.set_input(n, slot, Some(new));
    }
    Ok(())
}

/// `t` with only the indices `keep` along `axis`; `None` when the axis is out of range or an
/// index past its end, or the payload does not agree with the dims.
pub fn slice_axis(t: &Tensor, axis: usize, keep: &[usize]) -> Option<Tensor> {
    let dims = t.dims();
    let extent = *dims.get(axis)? as usize;
    if keep.iter().any(|&k| k >= extent) {
        return None;
    }
    let width = (t.dtype().bits()? / 8) as usize;
    let raw = t.raw_bytes()?;
    if Some(raw.len() as u64) != t.dtype().byte_size(dims) || width == 0 {
        return None;
    }
    let inner: usize = dims[axis + 1..]
        .iter()
        .map(|&d| d as usize)
        .product::<usize>()
        * width;
    let outer: usize = dims[..axis].iter().map(|&d| d as usize).product();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        let base = o * extent * inner;
        for &k in keep {
            out.extend_from_slice(&raw[base + k * inner..base + (k + 1) * inner]);
        }
    }
    let mut new_dims = dims.to_vec();
    new_dims[axis] = keep.len() as i64;
    Some(Tensor::from_raw(t.dtype(), new_dims, out.into()))
}
