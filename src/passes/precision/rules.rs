//! What stays float32 by rule: ops whose results 16 bits cannot hold, whatever the inputs.
//! Each rule is general (it reads the op, its constants and the shapes tract infers, never a
//! model's names), and each has its tests in `tests/precision.rs`.
//!
//! | rule                | keeps in f32                                                    | because                                                        |
//! |---------------------|-----------------------------------------------------------------|----------------------------------------------------------------|
//! | `opaque`            | ops of other domains, ops the schemas do not know               | they run as written; their types are theirs                    |
//! | `no-16-bit-form`    | ops whose schema at the model's opset has no such type (Range before 27, CumSum before 14, Conv in bf16 before 22, NonMaxSuppression) | `onnx.checker` and runtimes refuse them             |
//! | `shape-arithmetic`  | float ops computing from shapes only (Shape → Cast → Mul → Floor) | integers past 2,048 are not exact in fp16 (Resize sizes, Range bounds) |
//! | `read-as-integer`   | producers of a value a Cast to an integer type reads (through Floor, Ceil, Round) | the same: an index or a count must stay exact |
//! | `long-sum`          | ReduceSum/Mean/L1/LogSum, GlobalAverage/LpPool, Instance/Group/MeanVariance/Lp normalization, CumSum over more than [`LONG_SUM`] elements or an extent not known; LayerNormalization whose `stash_type` is not float | sums of 256 values of magnitude 256 already pass fp16's largest, 65,504 |
//! | `square`            | Pow with a constant exponent above 1, Mul(x, x), ReduceSumSquare, ReduceL2, ReduceProd, ReduceLogSumExp | x² passes 65,504 from \|x\| = 256 |
//! | `statistics`        | what computes on a kept sum or square up to the op that applies it to an activation (Add ε → Sqrt of a norm) | ε and small variances vanish in fp16 |
//! | `random`            | RandomNormal/Uniform(Like), Multinomial, Bernoulli              | their distribution is defined in the type they were given      |
//! | `own-output-type`   | ops writing an f32 output whose type parameter no input carries (LinearAttention's state, LayerNormalization's Mean), Cast and ConstantOfShape aside | the op chooses that type itself: lowering could declare one and make another |
//! | `f32-function`      | MeanVarianceNormalization                                       | its ONNX function computes with f32 constants: onnx.checker refuses it in 16 bits |
//! | `constant-range`    | ops reading a float constant with a finite value past the type's largest, or whose non-zero values all lie below its smallest | the constant would become ±inf or 0 |
//! | `quantized`         | Quantize/DequantizeLinear, the ops between them, weighted ops reading an int8 weight (not under `--target tensorrt` at opsets 19 to 22, where Q/DQ take 16-bit scales) | int8 islands stay as the quantize stage wrote them (what QDQ fusers match) |
//!
//!
//! Beside the rules, lowering keeps in f32 a region of ops without weights that f32 ops
//! enclose (`enclosed`): it would only add a Cast on every edge in and out.
//!
//! Softmax and LayerNormalization (with its default `stash_type`, which makes its statistics
//! float) are not kept: they normalize internally. Subgraph holders keep their interface in
//! f32; their bodies are lowered on their own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::types::Types;
use super::{schemas, Kind};
use crate::ir::{DType, Graph, NodeId, ValueId};
use crate::passes::NONDETERMINISTIC;
use crate::runtime::Facts;

/// Why an op stays in f32: the rule (or `excluded`, `range`, `sensitivity`) and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Why {
    pub rule: &'static str,
    pub detail: String,
}

impl Why {
    pub fn new(rule: &'static str, detail: impl Into<String>) -> Why {
        Why {
            rule,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Sums over more elements than this stay in f32 (see `long-sum`).
pub const LONG_SUM: u64 = 256;

/// What the rules read besides the graph.
pub struct Look<'a> {
    /// The element types of the graph's values before lowering.
    pub types: &'a Types,
    pub kind: Kind,
    pub opset: i64,
    /// tract's facts, for the extents of reductions.
    pub facts: Option<&'a Facts>,
    /// For a strongly typed consumer (TensorRT): at opsets 19 to 22, where Q/DQ take 16-bit scales,
    /// int8 islands go to 16 bits too (int8 compute with fp16 around it, TensorRT's usual
    /// build).
    pub strongly_typed: bool,
}

impl Look<'_> {
    fn is_f32(&self, v: ValueId) -> bool {
        self.types.get(&v) == Some(&DType::F32)
    }
}

/// The ops of `g` that stay in f32 by rule, with why. Only float ops are judged: those with
/// an f32 value in a formal that could be 16-bit.
pub fn kept(g: &Graph, look: &Look) -> BTreeMap<NodeId, Why> {
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    let float: Vec<NodeId> = (order.iter().copied())
        .filter(|&n| is_float_op(g, n, look))
        .collect();
    let mut kept = BTreeMap::new();
    let shaped = shape_derived(g, &order);
    let integral = read_as_integer(g, &order, look);
    let mut ranges = ConstantRanges::default();
    for &n in &float {
        let why = (single(g, n, look))
            .or_else(|| {
                let node = g.node(n);
                let ins: Vec<ValueId> = node.inputs().iter().flatten().copied().collect();
                let derived = ins.iter().filter(|&&v| g.value(v).constant().is_none());
                let mut derived = derived.peekable();
                (derived.peek().is_some() && derived.all(|v| shaped.contains(v)))
                    .then(|| Why::new("shape-arithmetic", "computes from shapes only"))
            })
            .or_else(|| {
                let outs = g.node(n).outputs().iter().flatten();
                outs.clone().any(|v| integral.contains(v)).then(|| {
                    Why::new(
                        "read-as-integer",
                        "a Cast to an integer type reads what it computes",
                    )
                })
            })
            .or_else(|| ranges.check(g, n, look));
        if let Some(why) = why {
            kept.insert(n, why);
        }
    }
    statistics(g, &float, look, &mut kept);
    kept
}

/// Whether `n` computes on floats that could be 16-bit: an f32 value in a formal of a type
/// parameter, or in one the schema fixes (an op whose whole form is float32).
pub fn is_float_op(g: &Graph, n: NodeId, look: &Look) -> bool {
    let node = g.node(n);
    let ins = node.inputs().iter().enumerate();
    let outs = node.outputs().iter().enumerate();
    let any_f32 = ins
        .chain(outs)
        .any(|(_, v)| v.is_some_and(|v| look.is_f32(v)));
    any_f32 && !node.has_bodies()
}

/// The rules that read one op alone.
fn single(g: &Graph, n: NodeId, look: &Look) -> Option<Why> {
    let node = g.node(n);
    let Some(schema) = node
        .in_standard_domain()
        .then(|| schemas::schema(node.op(), look.opset))
        .flatten()
    else {
        return Some(Why::new(
            "opaque",
            "not a default-domain op this opset knows",
        ));
    };
    if let Some(why) = no_16_bit_form(g, n, schema, look) {
        return Some(why);
    }
    if NONDETERMINISTIC.contains(&node.op()) {
        return Some(Why::new("random", "a random op"));
    }
    if let Some(why) = own_output_type(g, n, schema, look) {
        return Some(why);
    }
    if F32_FUNCTIONS.contains(&node.op()) {
        return Some(Why::new(
            "f32-function",
            format!("{}'s ONNX function computes with f32 constants", node.op()),
        ));
    }
    // Opsets 19 to 22 tie a DequantizeLinear's output to its scale's type; from 23 an
    // attribute sets it, which lowering does not write.
    let qdq_in_16_bits = look.strongly_typed && (19..23).contains(&look.opset);
    if let Some(why) = quantized(g, n).filter(|_| !qdq_in_16_bits) {
        return Some(why);
    }
    square(g, n).or_else(|| long_sum(g, n, look))
}

/// Ops whose ONNX function body computes with f32 constants (MeanVarianceNormalization's
/// exponent and ε): onnx.checker infers its body and refuses it in 16 bits.
const F32_FUNCTIONS: [&str; 1] = ["MeanVarianceNormalization"];

/// An op writing an f32 output whose type parameter no input carries (LinearAttention's
/// state, LayerNormalization's Mean): which type it takes is the op's own choice, which the
/// schema does not say (onnx infers LinearAttention's state as its query's type), so lowering
/// the op could leave it declared one type and made another. Cast and ConstantOfShape, whose
/// output type an attribute sets (and lowering rewrites), are not such ops.
fn own_output_type(g: &Graph, n: NodeId, schema: &schemas::Schema, look: &Look) -> Option<Why> {
    let node = g.node(n);
    if ["Cast", "ConstantOfShape"].contains(&node.op()) {
        return None;
    }
    // An input the node has (an optional one it leaves out carries nothing).
    let carried = |t: &'static str| {
        (node.inputs().iter().enumerate()).any(|(i, v)| {
            v.is_some()
                && schema
                    .input(i)
                    .is_some_and(|f| f.tie == schemas::Tie::Param(t))
        })
    };
    let own = (node.outputs().iter().enumerate()).find(|(slot, y)| {
        let param = schema.output(*slot).map(|f| f.tie);
        y.is_some_and(|y| look.is_f32(y))
            && matches!(param, Some(schemas::Tie::Param(t)) if !carried(t))
    })?;
    Some(Why::new(
        "own-output-type",
        format!(
            "{} chooses the type of its output {} itself",
            node.op(),
            own.0
        ),
    ))
}

/// An op with an f32 value in a type parameter that does not accept the 16-bit type, or
/// with none in a type parameter at all (every float formal fixed to f32).
fn no_16_bit_form(g: &Graph, n: NodeId, schema: &schemas::Schema, look: &Look) -> Option<Why> {
    let node = g.node(n);
    let low = look.kind.dtype();
    let formals = (node.inputs().iter().enumerate())
        .map(|(i, v)| (*v, schema.input(i)))
        .chain((node.outputs().iter().enumerate()).map(|(i, v)| (*v, schema.output(i))));
    let mut convertible = false;
    for (v, f) in formals {
        let (Some(v), Some(f)) = (v, f) else { continue };
        if !look.is_f32(v) || !matches!(f.tie, schemas::Tie::Param(_)) {
            continue;
        }
        if !f.accepts(low) {
            return Some(Why::new(
                "no-16-bit-form",
                format!(
                    "{} has no {} form at opset {}",
                    node.op(),
                    look.kind,
                    look.opset
                ),
            ));
        }
        convertible = true;
    }
    (!convertible).then(|| {
        Why::new(
            "no-16-bit-form",
            format!("{}'s schema types its float formals as float32", node.op()),
        )
    })
}

/// Quantize/DequantizeLinear, the ops between them (reading a DequantizeLinear and read only
/// by QuantizeLinears: what QDQ fusers make one int8 op of), and weighted ops reading an int8
/// weight (TensorRT's form, Q/DQ on inputs only). A float op merely reading a dequantized
/// activation is not one of them: it goes to 16 bits like any other.
fn quantized(g: &Graph, n: NodeId) -> Option<Why> {
    let node = g.node(n);
    let is = |v: Option<ValueId>, op: &str| {
        v.and_then(|v| g.producer(v))
            .is_some_and(|p| g.node(p).is(op))
    };
    let qdq = node.is("QuantizeLinear") || node.is("DequantizeLinear");
    let reads_dq = node.inputs().iter().any(|&v| is(v, "DequantizeLinear"));
    let uses: Vec<_> = (node.outputs().iter().flatten())
        .flat_map(|&v| g.value(v).uses())
        .collect();
    let feeds_q = !uses.is_empty() && uses.iter().all(|u| g.node(u.node).is("QuantizeLinear"));
    let int8_weight =
        WEIGHTED.iter().any(|op| node.is(op)) && is(node.input(1), "DequantizeLinear");
    (qdq || (reads_dq && feeds_q) || int8_weight).then(|| {
        Why::new(
            "quantized",
            "int8 Q/DQ and the ops between them keep what quantization wrote",
        )
    })
}

/// Squares and what grows faster than x itself.
fn square(g: &Graph, n: NodeId) -> Option<Why> {
    let node = g.node(n);
    let grows = match node.op() {
        "ReduceSumSquare" | "ReduceL2" | "ReduceProd" | "ReduceLogSumExp" => true,
        "Pow" => {
            crate::passes::scalar(g, node.input(1)).is_none_or(|p| p > 1.0)
                || g.value(node.input(1)?).constant().is_none()
        }
        "Mul" => node.input(0).is_some() && node.input(0) == node.input(1),
        _ => false,
    };
    grows.then(|| {
        Why::new(
            "square",
            format!("{} grows past fp16's range first", node.op()),
        )
    })
}

/// Sums over long or unknown extents.
fn long_sum(g: &Graph, n: NodeId, look: &Look) -> Option<Why> {
    let node = g.node(n);
    let axes = summed_axes(g, n, look)?;
    let x = g.value(node.input(0)?).name();
    let dims = look.facts.and_then(|f| f.dims(x));
    let extent = dims.as_ref().and_then(|dims| {
        let rank = dims.len() as i64;
        let axes = axes.resolve(rank)?;
        let mut count: u64 = 1;
        for a in axes {
            count = count.checked_mul(u64::try_from((*dims.get(a)?)?).ok()?)?;
        }
        Some(count / axes_divisor(g, n))
    });
    match extent {
        Some(e) if e <= LONG_SUM => None,
        Some(e) => Some(Why::new(
            "long-sum",
            format!("{} sums {e} elements (more than {LONG_SUM})", node.op()),
        )),
        None => Some(Why::new(
            "long-sum",
            format!("{} sums over an extent not known", node.op()),
        )),
    }
}

/// Which axes an op sums over.
enum Axes {
    All,
    List(Vec<i64>),
    From(i64),
}

impl Axes {
    fn resolve(&self, rank: i64) -> Option<Vec<usize>> {
        let norm = |a: i64| usize::try_from(if a < 0 { a + rank } else { a }).ok();
        match self {
            Axes::All => Some((0..rank as usize).collect()),
            Axes::List(l) => l.iter().map(|&a| norm(a)).collect(),
            Axes::From(a) => Some((norm(*a)?..rank as usize).collect()),
        }
    }
}

/// The axes `n` sums over, when it is an op that sums.
fn summed_axes(g: &Graph, n: NodeId, look: &Look) -> Option<Axes> {
    let node = g.node(n);
    let listed = |at_opset: i64| -> Option<Axes> {
        let given = if look.opset >= at_opset {
            node.input(1).and_then(|v| g.const_ints(v))
        } else {
            node.attr_ints("axes").map(<[i64]>::to_vec)
        };
        match given {
            Some(l) if !l.is_empty() => Some(Axes::List(l)),
            _ if node.attr_i("noop_with_empty_axes") == Some(1) => Some(Axes::List(Vec::new())),
            _ => Some(Axes::All),
        }
    };
    match node.op() {
        "ReduceSum" => listed(13),
        "ReduceMean" | "ReduceL1" | "ReduceLogSum" => listed(18),
        "GlobalAveragePool" | "GlobalLpPool" | "InstanceNormalization" => Some(Axes::From(2)),
        "MeanVarianceNormalization" => Some(Axes::List(
            node.attr_ints("axes")
                .map_or(vec![0, 2, 3], <[i64]>::to_vec),
        )),
        "LpNormalization" => Some(Axes::List(vec![node.attr_i("axis").unwrap_or(-1)])),
        "GroupNormalization" if node.attr_i("stash_type") != Some(1) => Some(Axes::From(1)),
        "LayerNormalization" if node.attr_i("stash_type").unwrap_or(1) != 1 => {
            Some(Axes::From(node.attr_i("axis").unwrap_or(-1)))
        }
        "CumSum" => Some(Axes::List(g.const_ints(node.input(1)?)?)),
        _ => None,
    }
}

/// GroupNormalization sums each group of channels apart.
fn axes_divisor(g: &Graph, n: NodeId) -> u64 {
    let node = g.node(n);
    match node.op() {
        "GroupNormalization" => node.attr_i("num_groups").map_or(1, |k| k.max(1) as u64),
        _ => 1,
    }
}

/// Ops computing on a kept sum or square (a reduction of it, or an elementwise op whose other
/// operands are constants), up to the op that combines it with another activation.
fn statistics(g: &Graph, float: &[NodeId], look: &Look, kept: &mut BTreeMap<NodeId, Why>) {
    let mut stats: HashSet<ValueId> = HashSet::new();
    for &n in float {
        let node = g.node(n);
        let inputs: Vec<ValueId> = (node.inputs().iter().flatten())
            .filter(|&&v| g.value(v).constant().is_none() && look.is_f32(v))
            .copied()
            .collect();
        let on_stats = matches!(inputs.as_slice(), [v] if stats.contains(v));
        let follows = on_stats && STATISTIC_OPS.contains(&node.op()) && !kept.contains_key(&n);
        if follows {
            kept.insert(
                n,
                Why::new("statistics", "computes on a sum or square kept in f32"),
            );
        }
        let source = kept
            .get(&n)
            .is_some_and(|w| matches!(w.rule, "square" | "long-sum" | "statistics"));
        if source {
            stats.extend(node.outputs().iter().flatten());
        }
    }
}

/// Ops that carry a statistic on: reductions, and elementwise ops of one activation.
const STATISTIC_OPS: &[&str] = &[
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Clip",
    "Sqrt",
    "Reciprocal",
    "Pow",
    "Abs",
    "Neg",
    "Log",
    "Exp",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Flatten",
];

/// Values computed from shapes alone (Shape, Size and what computes only on them and on
/// constants); ConstantOfShape makes values, not a shape, from one.
fn shape_derived(g: &Graph, order: &[NodeId]) -> HashSet<ValueId> {
    let mut derived = HashSet::new();
    for &n in order {
        let node = g.node(n);
        let from_shapes = match node.op() {
            "Shape" | "Size" => true,
            "ConstantOfShape" => false,
            _ => {
                let mut live = (node.inputs().iter().flatten())
                    .filter(|&&v| g.value(v).constant().is_none())
                    .peekable();
                live.peek().is_some() && live.all(|v| derived.contains(v))
            }
        };
        if from_shapes && !node.has_bodies() {
            derived.extend(node.outputs().iter().flatten());
        }
    }
    derived
}

/// Float values that a Cast to an integer (or bool) type reads, directly or through rounding
/// ops (Floor, Ceil, Round).
fn read_as_integer(g: &Graph, order: &[NodeId], look: &Look) -> HashSet<ValueId> {
    let mut integral: HashSet<ValueId> = HashSet::new();
    for &n in order.iter().rev() {
        let node = g.node(n);
        let to_integer = node.is("Cast")
            && node
                .attr_i("to")
                .is_some_and(|t| !FLOAT_TYPES.contains(&DType(t as i32)));
        let rounds = ["Floor", "Ceil", "Round"].iter().any(|op| node.is(op))
            && node.output(0).is_some_and(|y| integral.contains(&y));
        if to_integer || rounds {
            integral.extend(node.input(0).filter(|&v| look.is_f32(v)));
        }
    }
    integral
}

/// Ops whose second input is a weight.
const WEIGHTED: [&str; 4] = ["Conv", "ConvTranspose", "Gemm", "MatMul"];

const FLOAT_TYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

/// What each float constant holds, judged once.
#[derive(Default)]
struct ConstantRanges {
    judged: HashMap<ValueId, Option<String>>,
}

impl ConstantRanges {
    /// `constant-range`, when `n` reads a constant the 16-bit type cannot hold.
    fn check(&mut self, g: &Graph, n: NodeId, look: &Look) -> Option<Why> {
        let node = g.node(n);
        for &v in node.inputs().iter().flatten() {
            let Some(t) = g.value(v).constant().filter(|t| t.dtype() == DType::F32) else {
                continue;
            };
            let verdict = self
                .judged
                .entry(v)
                .or_insert_with(|| out_of_range(t, look.kind));
            if let Some(what) = verdict {
                let name = g.value(v).name();
                return Some(Why::new("constant-range", format!("'{name}' {what}")));
            }
        }
        None
    }
}

/// How `t` does not fit `kind`, if it does not: a finite value past its largest, or non-zero
/// values all below its smallest.
fn out_of_range(t: &crate::ir::Tensor, kind: Kind) -> Option<String> {
    // Read in place: a copy of every weight would double what lowering holds.
    let raw = t.f32_bytes()?;
    let (max, tiny) = (kind.max(), kind.smallest());
    let mut nonzero = false;
    let mut all_tiny = true;
    for c in raw.chunks_exact(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let a = x.abs();
        if a.is_finite() && a > max {
            return Some(format!("holds {x:e}, past {kind}'s largest {max}"));
        }
        if a != 0.0 {
            nonzero = true;
            all_tiny &= a < tiny;
        }
    }
    (nonzero && all_tiny).then(|| format!("holds only values below {kind}'s smallest, {tiny:e}"))
}
