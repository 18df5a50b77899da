//! Building Q/DQ pairs, and finding those built: what every placement rule of the quantize
//! stage shares. An activation's pair is `x ─▶ QuantizeLinear ─▶ DequantizeLinear ─▶ readers`,
//! its scale and zero point from its calibrated range; a constant's is a DequantizeLinear of
//! the quantized constant. The rules after `quantize-qdq` find the pairs it made in the graph
//! itself ([`pair_of`], [`pair_source`], [`kept_float`]), not in state kept between passes.

use anyhow::Result;

use super::pool::POOLS;
use super::qdq::{quantizable, Activations, Calibration, Placement};
use super::share::moves_values;
use crate::ir::{Attr, DType, Graph, NodeId, Patch, Tensor, Type, ValueId};
use crate::passes::scalar;

/// The pair quantizing activation `x`, as its DQ's output and scale: a QuantizeLinear reading
/// `x` whose output a DequantizeLinear reads.
pub fn pair_of(g: &Graph, x: ValueId) -> Option<(ValueId, f32)> {
    g.value(x).uses().iter().find_map(|u| {
        let q = g.node(u.node);
        if !q.is("QuantizeLinear") || q.input(0) != Some(x) {
            return None;
        }
        let dq = g
            .value(q.output(0)?)
            .uses()
            .iter()
            .find(|r| g.node(r.node).is("DequantizeLinear"))?
            .node;
        let dq = g.node(dq);
        Some((dq.output(0)?, scalar(g, dq.input(1))?))
    })
}

/// The value a DequantizeLinear output `dq_out` carries in float: `x` of x ─▶ Q ─▶ DQ.
pub fn pair_source(g: &Graph, dq_out: ValueId) -> Option<ValueId> {
    let dq = g
        .producer(dq_out)
        .filter(|&d| g.node(d).is("DequantizeLinear"))?;
    let q = g
        .producer(g.node(dq).input(0)?)
        .filter(|&q| g.node(q).is("QuantizeLinear"))?;
    g.node(q).input(0)
}

/// The quantizable ops that read a float activation (kept float, or with int8 weights only):
/// their producers' outputs must stay float (see [`reaches_float`]).
pub fn kept_float(g: &Graph) -> Vec<NodeId> {
    g.node_ids()
        .filter(|&n| quantizable(g, n) && !g.node(n).input(0).is_some_and(|x| dequantized(g, x)))
        .collect()
}

/// The value whose range quantizes the output of op `n` under `placement`, and the Relu that
/// range absorbs, if any; `None` when the output stays float (a graph output, a capture, no
/// range, or read by an op kept float, which must read float values).
fn output_site(
    g: &Graph,
    n: NodeId,
    cal: &Calibration,
    kept_float: &[NodeId],
) -> Option<(ValueId, Option<NodeId>)> {
    if cal.placement != Placement::AroundOps {
        return None;
    }
    let y = g.node(n).output(0)?;
    // The Q's clamp stands in for the Relu only where the range starts at 0 (a range shared
    // through a move could reach below it).
    let absorbed = g.only_reader(y).filter(|&r| {
        g.node(r).is("Relu")
            && cal.activations == Activations::Uint8
            && g.node(r)
                .output(0)
                .and_then(|o| cal.ranges.get(g.value(o).name()))
                .is_some_and(|&(lo, _)| lo >= 0.0)
    });
    let site = match absorbed {
        Some(r) => g.node(r).output(0)?,
        None => y,
    };
    let plain_reads = g
        .value(site)
        .uses()
        .iter()
        .all(|u| matches!(u.slot, crate::ir::Slot::Input(_)));
    let quantizable = !g.is_output(site)
        && plain_reads
        && !reaches_float(g, site, kept_float)
        && cal.ranges.contains_key(g.value(site).name());
    quantizable.then_some((site, absorbed))
}

/// Whether an op of `kept_float` reads `v`, directly or through ops that would carry a Q/DQ
/// on `v` into it unchanged in kind (a Relu, a Clip, a move, an average pool): an op kept
/// float must read float values, not the rounding of its producer's int8 output.
pub fn reaches_float(g: &Graph, v: ValueId, kept_float: &[NodeId]) -> bool {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        for u in g.value(v).uses() {
            if kept_float.contains(&u.node) {
                return true;
            }
            let node = g.node(u.node);
            let passes_on = ["Relu", "Clip"].iter().chain(POOLS).any(|op| node.is(op))
                || moves_values(g, u.node);
            if passes_on {
                stack.extend(node.outputs().iter().flatten().copied());
            }
        }
    }
    false
}

/// Around ops, the output of `n` is quantized and every reader reads its DQ (an absorbed Relu
/// removed, its clamp being the Q's zero point). The site may be quantized already, as the
/// input of an op processed before.
pub fn quantize_output(
    patch: &mut Patch,
    n: NodeId,
    cal: &Calibration,
    kept_float: &[NodeId],
) -> Result<()> {
    let Some((site, absorbed)) = output_site(patch.graph(), n, cal, kept_float) else {
        return Ok(());
    };
    let done = match pair_of(patch.graph(), site) {
        Some(done) => done,
        None => quantize_activation(patch, site, cal)?,
    };
    let g = patch.graph();
    let y = g.node(n).output(0).unwrap();
    let readers: Vec<crate::ir::Use> = g.value(site).uses().to_vec();
    let q = g.producer(g.node(g.producer(done.0).unwrap()).input(0).unwrap());
    for u in readers {
        if Some(u.node) == q {
            continue;
        }
        if let crate::ir::Slot::Input(slot) = u.slot {
            patch.set_input(u.node, slot, Some(done.0));
        }
    }
    if let Some(relu) = absorbed {
        let q = q.expect("the output's Q");
        patch.set_input(q, 0, Some(y));
        patch.remove_node(relu)?;
    }
    Ok(())
}

pub fn i8_tensor(dims: Vec<i64>, v: &[i8]) -> Tensor {
    Tensor::from_raw(
        DType::I8,
        dims,
        v.iter().map(|&x| x as u8).collect::<Vec<u8>>().into(),
    )
}

/// A zero point of zeros, of `dtype` and shape `dims`. Those of weights, biases and symmetric
/// activations are all zeros: one initializer of each type and shape serves every Q and DQ
/// that needs it (a ResNet-50 would otherwise carry 0.15 MB of them).
pub fn zeros(patch: &mut Patch, dtype: DType, dims: &[i64]) -> Result<ValueId> {
    let name = match dims {
        [] => format!("zero_point_{dtype}"),
        [n, ..] => format!("zero_point_{dtype}_{n}"),
    };
    let bytes = dtype.byte_size(dims).unwrap_or(0) as usize;
    let g = patch.graph();
    let shared = g.find(&name).filter(|&v| {
        g.value(v).constant().is_some_and(|t| {
            t.dtype() == dtype
                && t.dims() == dims
                && t.raw_bytes().is_some_and(|r| r.iter().all(|&b| b == 0))
        })
    });
    match shared {
        Some(z) => Ok(z),
        None => patch.add_initializer(
            &name,
            Tensor::from_raw(dtype, dims.to_vec(), vec![0u8; bytes].into()),
        ),
    }
}

/// Adds `DequantizeLinear(q, scale, 0)` of constants; returns its output.
pub fn dequantize(
    patch: &mut Patch,
    base: &str,
    q: Tensor,
    scale: Tensor,
    axis: Option<usize>,
) -> Result<ValueId> {
    let dims: Vec<crate::ir::Dim> = q.dims().iter().map(|&d| crate::ir::Dim::Known(d)).collect();
    let z = zeros(patch, q.dtype(), scale.dims())?;
    let q = patch.add_initializer(&format!("{base}_quantized"), q)?;
    let s = patch.add_initializer(&format!("{base}_scale"), scale)?;
    let attrs = axis
        .map(|a| vec![Attr::int("axis", a as i64)])
        .unwrap_or_default();
    let n = patch.add_node_named(
        "DequantizeLinear",
        &format!("{base}_dequantize"),
        &[Some(q), Some(s), Some(z)],
        attrs,
        &[(
            format!("{base}_dequantized"),
            Some(Type::tensor(DType::F32, dims)),
        )],
    )?;
    Ok(patch.graph().node(n).output(0).unwrap())
}

/// Scale and zero point of an activation over `range`.
pub fn activation_params(range: (f32, f32), kind: Activations) -> (f32, Tensor) {
    let (lo, hi) = (range.0.min(0.0), range.1.max(0.0));
    match kind {
        Activations::Int8 => {
            let amax = lo.abs().max(hi);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            (scale, i8_tensor(vec![], &[0]))
        }
        Activations::Uint8 => {
            let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
            (scale, Tensor::from_raw(DType::U8, vec![], vec![zp].into()))
        }
    }
}

/// Adds Q → DQ of activation `x`; returns the DQ's output and the scale. The readers of `x`
/// are left to the caller.
pub fn quantize_activation(
    patch: &mut Patch,
    x: ValueId,
    cal: &Calibration,
) -> Result<(ValueId, f32)> {
    add_pair(patch, x, cal, false)
}

/// [`quantize_activation`], with a zero point initializer of its own when `own` (else a zero
/// point of zeros is shared).
pub fn add_pair(
    patch: &mut Patch,
    x: ValueId,
    cal: &Calibration,
    own: bool,
) -> Result<(ValueId, f32)> {
    let name = patch.graph().value(x).name().to_string();
    let (scale, zp) = activation_params(cal.ranges[&name], cal.activations);
    let ty = patch.graph().ty(x).cloned();
    let q_ty = ty
        .as_ref()
        .and_then(|t| Some(Type::tensor(zp.dtype(), t.shape()?.to_vec())));
    let s = patch.add_initializer(&format!("{name}_scale"), Tensor::from_f32(vec![], &[scale]))?;
    let z = match zp.raw_bytes() {
        Some(r) if !own && r.iter().all(|&b| b == 0) => zeros(patch, zp.dtype(), zp.dims())?,
        _ => patch.add_initializer(&format!("{name}_zero_point"), zp)?,
    };
    // Named for what they hold: `x_quantized` the int8 values, `x_dequantized` the float ones.
    let q = patch.add_node_named(
        "QuantizeLinear",
        &format!("{name}_quantize"),
        &[Some(x), Some(s), Some(z)],
        vec![],
        &[(format!("{name}_quantized"), q_ty)],
    )?;
    let q = patch.graph().node(q).output(0);
    let dq = patch.add_node_named(
        "DequantizeLinear",
        &format!("{name}_dequantize"),
        &[q, Some(s), Some(z)],
        vec![],
        &[(format!("{name}_dequantized"), ty)],
    )?;
    Ok((patch.graph().node(dq).output(0).unwrap(), scale))
}

/// Whether `v` is the output of a DequantizeLinear.
pub fn dequantized(g: &Graph, v: ValueId) -> bool {
    g.producer(v)
        .is_some_and(|p| g.node(p).is("DequantizeLinear"))
}
