//! The model the check runs for a 16-bit result: its emulation, an f32 model rounded to the
//! 16-bit type wherever the result holds a 16-bit value. tract runs no bf16 at all, and its
//! fp16 kernels are slow on CPUs and incomplete (an fp16 Gemm with a bias fails to run);
//! emulation runs everywhere at f32 speed. It models what GPU runtimes do, 16-bit values
//! between ops and wider accumulation inside them.
//!
//! - `--io-types low`: first Casts at the interface, so that the check feeds and reads f32 as
//!   it does the original.
//! - Constants are widened (exactly); a Cast to the 16-bit type, and every op that writes a
//!   16-bit value, write f32 rounded to the type: for fp16 a Cast to fp16 and back; for bf16,
//!   which tract cannot hold, a Veltkamp split to its 8-bit significand, three ops tract runs
//!   in f32:
//!
//! ```text
//!   y:bf16 ⇒ y:f32 ─▶ t = y·(2¹⁶+1) ─▶ d = t − y ─▶ r = t − d (y rounded to 8 bits) ─▶ readers
//! ```
//!
//!   The split rounds to nearest; it overflows for |y| past about 5e33, which bf16 models
//!   do not reach in practice. A rounded value keeps the name the result gives it.

use std::borrow::Cow;

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
    let mut splitter = None;
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
                round(&mut patch, y, kind, &mut splitter)?;
            }
        }
    }
    patch.commit()
}

/// `y` rounded to `kind`, under `y`'s name, for every reader of `y`.
fn round(patch: &mut Patch, y: ValueId, kind: Kind, splitter: &mut Option<ValueId>) -> Result<()> {
    if kind == Kind::F16 {
        let shape = patch.graph().shape(y).map(<[_]>::to_vec);
        let (down, half) = cast(patch, y, DType::F16, None)?;
        let (up, r) = cast(patch, half, DType::F32, shape)?;
        return patch.interpose(y, r, &[down, up], true);
    }
    let name = patch.graph().value(y).name().to_string();
    let c = match *splitter {
        Some(c) => c,
        None => {
            let t = Tensor::from_f32(vec![], &[65537.0]);
            let c = patch.add_initializer("bf16_splitter", t)?;
            *splitter = Some(c);
            c
        }
    };
    let ty = patch.graph().ty(y).cloned();
    let mut step = |op: &str, a: ValueId, b: ValueId, tag: &str| -> Result<(NodeId, ValueId)> {
        let n = patch.add_node(
            op,
            &format!("{name}_{tag}"),
            &[Some(a), Some(b)],
            Vec::new(),
            std::slice::from_ref(&ty),
        )?;
        Ok((n, patch.graph().node(n).output(0).expect("an output")))
    };
    let (mul, t) = step("Mul", y, c, "bf16_t")?;
    let (sub, d) = step("Sub", t, y, "bf16_d")?;
    let (last, r) = step("Sub", t, d, "bf16")?;
    patch.interpose(y, r, &[mul, sub, last], true)
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
