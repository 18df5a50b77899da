//! The model the check runs for a 16-bit result: its emulation, an f32 model rounded to the
//! 16-bit type wherever the result holds a 16-bit value. tract runs no bf16 at all, and its
//! fp16 kernels are slow on CPUs and incomplete (an fp16 Gemm with a bias fails to run);
//! emulation runs everywhere at f32 speed. It models what GPU runtimes do, 16-bit values
//! between ops and wider accumulation inside them.
//!
//! - `--io-types low`: first Casts at the interface, so that the check feeds and reads f32 as
//!   it does the original.
//! - Constants are widened (exactly); a Cast to the 16-bit type, and every op that writes a
//!   16-bit value, write f32 rounded to the type by f32 arithmetic (tract's casts to fp16 are
//!   many times slower than the model itself): a Veltkamp split to the type's significand,
//!
//! ```text
//!   y:bf16 ⇒ y:f32 ─▶ t = y·(2¹⁶+1) ─▶ d = t − y ─▶ r = t − d (y rounded to 8 bits) ─▶ readers
//! ```
//!
//!   (2¹³+1 and 11 bits for fp16), then for fp16 its range: infinite from 65,520, subnormal
//!   below 2⁻¹⁴. The split rounds to nearest; it overflows for |y| past about 4e34, which
//!   16-bit models do not reach. A rounded value keeps the name the result gives it.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::Result;

use super::{Io, Kind, PrecisionOptions};
use crate::ir::{Attr, AttrValue, DType, Graph, Model, NodeId, Patch, Tensor, Type, ValueId};

/// What the check runs for `result`, lowered with `opts`.
pub fn checked_form<'m>(result: &'m Model, opts: &PrecisionOptions) -> Result<Cow<'m, Model>> {
    let mut m = result.clone();
    if opts.io == Io::Low {
        wrap_interface(&mut m.graph, opts.kind.dtype())?;
    }
    m.graph
        .for_each_graph(&mut |g, _| emulate_graph(g, opts.kind))?;
    Ok(Cow::Owned(m))
}

/// Graph inputs and outputs of type `low` become f32, read and written through Casts.
fn wrap_interface(g: &mut Graph, low: DType) -> Result<usize> {
    let mut patch = Patch::new(g);
    let inputs: Vec<ValueId> = (patch.graph().inputs().iter().copied())
        .filter(|&x| patch.graph().dtype(x) == Some(low))
        .collect();
    for x in inputs {
        let shape = patch.graph().shape(x).map(<[_]>::to_vec);
        patch.set_type(
            x,
            Type::Tensor {
                dtype: DType::F32,
                shape: shape.clone(),
            },
        );
        let (cast, y) = cast(&mut patch, x, low, shape)?;
        patch.interpose(x, y, &[cast], false)?;
    }
    let outputs: Vec<ValueId> = (patch.graph().outputs().iter())
        .filter(|o| o.info.ty.as_ref().and_then(Type::dtype) == Some(low))
        .map(|o| o.value)
        .collect();
    for y in outputs {
        let shape = patch.graph().shape(y).map(<[_]>::to_vec);
        let (_, wide) = cast(&mut patch, y, DType::F32, shape.clone())?;
        patch.set_output_type(
            y,
            Type::Tensor {
                dtype: DType::F32,
                shape,
            },
        );
        patch.move_output(y, wide)?;
    }
    patch.commit()
}

/// A Cast of `v` to `to`: the node and its output.
fn cast(
    patch: &mut Patch,
    v: ValueId,
    to: DType,
    shape: Option<Vec<crate::ir::Dim>>,
) -> Result<(NodeId, ValueId)> {
    let name = patch.graph().value(v).name().to_string();
    let n = patch.add_node(
        "Cast",
        &format!("{name}_cast"),
        &[Some(v)],
        vec![Attr::int("to", to.0 as i64)],
        &[Some(Type::Tensor { dtype: to, shape })],
    )?;
    Ok((
        n,
        patch
            .graph()
            .node(n)
            .output(0)
            .expect("a Cast has an output"),
    ))
}

/// Every `kind` value of `g` in f32, rounded to `kind` where it is made.
fn emulate_graph(g: &mut Graph, kind: Kind) -> Result<usize> {
    let low = kind.dtype();
    let mut patch = Patch::new(g);
    let weights: Vec<ValueId> = (patch.graph().initializers().iter().copied())
        .filter(|&v| {
            patch
                .graph()
                .value(v)
                .constant()
                .is_some_and(|t| t.dtype() == low)
        })
        .collect();
    for w in weights {
        let t = widened(patch.graph().value(w).constant().expect("a constant"));
        patch.resize_initializer(w, t)?;
    }
    let order = patch.graph().topo_order()?;
    let mut constants = Constants::default();
    for n in order {
        let g = patch.graph();
        let node = g.node(n);
        let cast_low = node.is("Cast") && node.attr_i("to") == Some(low.0 as i64);
        let fill = match node.attr("value").map(|a| a.value()) {
            Some(AttrValue::Tensor(t)) if node.is("ConstantOfShape") && t.dtype() == low => {
                Some(widened(t))
            }
            _ => None,
        };
        let outs: Vec<ValueId> = (node.outputs().iter().flatten())
            .filter(|&&y| cast_low || g.dtype(y) == Some(low))
            .copied()
            .collect();
        if cast_low {
            patch.set_attr(n, Attr::int("to", DType::F32.0 as i64));
        }
        if let Some(t) = &fill {
            patch.set_attr(n, Attr::tensor("value", t));
        }
        for y in outs {
            let shape = patch.graph().shape(y).map(<[_]>::to_vec);
            patch.set_type(
                y,
                Type::Tensor {
                    dtype: DType::F32,
                    shape,
                },
            );
            if fill.is_none() {
                round(&mut patch, y, kind, &mut constants)?;
            }
        }
    }
    patch.commit()
}

/// The scalar constants of the rounding programs of one graph, each made once.
#[derive(Default)]
struct Constants(HashMap<u32, ValueId>);

impl Constants {
    fn get(&mut self, patch: &mut Patch, x: f32) -> Result<ValueId> {
        if let Some(&c) = self.0.get(&x.to_bits()) {
            return Ok(c);
        }
        let c = patch.add_initializer("rounding", Tensor::from_f32(vec![], &[x]))?;
        self.0.insert(x.to_bits(), c);
        Ok(c)
    }
}

/// `y` rounded to `kind`, under `y`'s name, for every reader of `y`, by f32 arithmetic tract
/// runs fast (its casts to fp16 are slow): a Veltkamp split to the type's significand (11 bits
/// for fp16, 8 for bf16); for fp16 then its range, a multiple of 2^-24 below 2^-14 (its
/// subnormals) and infinite past 65,504. bf16 shares f32's range.
fn round(patch: &mut Patch, y: ValueId, kind: Kind, constants: &mut Constants) -> Result<()> {
    let name = patch.graph().value(y).name().to_string();
    let ty = patch.graph().ty(y).cloned();
    let mut readers = Vec::new();
    let mut step = |patch: &mut Patch, op: &str, ins: &[ValueId], out: Option<Type>| {
        let ins: Vec<Option<ValueId>> = ins.iter().map(|&v| Some(v)).collect();
        let n = patch.add_node(
            op,
            &format!("{name}_{}", kind.name()),
            &ins,
            Vec::new(),
            &[out],
        )?;
        if ins.contains(&Some(y)) {
            readers.push(n);
        }
        anyhow::Ok(patch.graph().node(n).output(0).expect("an output"))
    };
    let split = match kind {
        Kind::F16 => 8193.0,
        Kind::Bf16 => 65537.0,
    };
    let c = constants.get(patch, split)?;
    let t = step(patch, "Mul", &[y, c], ty.clone())?;
    let d = step(patch, "Sub", &[t, y], ty.clone())?;
    let mut r = step(patch, "Sub", &[t, d], ty.clone())?;
    if kind == Kind::F16 {
        let bool_ty = ty.as_ref().map(|t| Type::Tensor {
            dtype: DType::BOOL,
            shape: t.shape().map(<[_]>::to_vec),
        });
        let a = step(patch, "Abs", &[r], ty.clone())?;
        // Below 2^-14 a multiple of 2^-24: adding 0.75 leaves that spacing.
        let (normal, shift) = (
            constants.get(patch, kind.normal())?,
            constants.get(patch, 0.75)?,
        );
        let tiny = step(patch, "Less", &[a, normal], bool_ty.clone())?;
        let s = step(patch, "Add", &[r, shift], ty.clone())?;
        let q = step(patch, "Sub", &[s, shift], ty.clone())?;
        let sub = step(patch, "Where", &[tiny, q, r], ty.clone())?;
        // Past the largest (the next 11-bit value is 65,536) infinite, with r's sign.
        let (max, inf) = (
            constants.get(patch, kind.max())?,
            constants.get(patch, f32::INFINITY)?,
        );
        let over = step(patch, "Greater", &[a, max], bool_ty)?;
        let infinite = step(patch, "Mul", &[r, inf], ty.clone())?;
        r = step(patch, "Where", &[over, infinite, sub], ty)?;
    }
    patch.interpose(y, r, &readers, true)
}

/// A 16-bit tensor as f32, exactly.
fn widened(t: &Tensor) -> Tensor {
    let raw = t.raw_bytes().unwrap_or_default();
    let values: Vec<f32> = (raw.chunks_exact(2))
        .map(|c| {
            let bits = u16::from_le_bytes([c[0], c[1]]);
            match t.dtype() {
                DType::BF16 => half::bf16::from_bits(bits).to_f32(),
                _ => half::f16::from_bits(bits).to_f32(),
            }
        })
        .collect();
    Tensor::from_f32(t.dims().to_vec(), &values)
}
