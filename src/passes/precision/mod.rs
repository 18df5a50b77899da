//! Mixed precision (`--precision fp16|bf16`), as a stage after simplification, pruning and
//! quantization: measure each value's range on the samples when there are some
//! (`measure-ranges`), store weights and compute in 16 bits except where a rule, a range or
//! the user keeps an op in f32 (`lower-precision`), then remove the Casts that cancel exactly
//! (`cancel-casts`) and what nothing reads. The lossy check judges the result; when it fails,
//! the accuracy search (`crate::optimize`) gives the most sensitive ops back to f32 through
//! [`Kept`], running this stage again.
//!
//! tract runs no bf16 and not every fp16 op: a result is checked as its emulation
//! ([`emulate`]), an f32 model rounded to the 16-bit type wherever the result holds a 16-bit
//! value.

pub mod casts;
pub mod emulate;
pub mod lower;
pub mod ranges;
pub mod rules;
pub mod schemas;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

pub use self::ranges::{MeasureRanges, Ranges};
use self::rules::Why;
use super::{cleanup, Stage};
use crate::ir::{DType, Graph, Model, Tensor, ValueId};

/// The 16-bit type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    F16,
    Bf16,
}

impl Kind {
    pub fn dtype(self) -> DType {
        match self {
            Kind::F16 => DType::F16,
            Kind::Bf16 => DType::BF16,
        }
    }

    /// The name flags and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::F16 => "fp16",
            Kind::Bf16 => "bf16",
        }
    }

    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Kind::F16 => 65504.0,
            Kind::Bf16 => f32::from_bits(0x7f7f_0000),
        }
    }

    /// The smallest positive value (subnormal).
    pub fn smallest(self) -> f32 {
        match self {
            Kind::F16 => 2f32.powi(-24),
            Kind::Bf16 => 2f32.powi(-133),
        }
    }

    /// The smallest positive normal value.
    pub fn normal(self) -> f32 {
        match self {
            Kind::F16 => 2f32.powi(-14),
            Kind::Bf16 => f32::MIN_POSITIVE,
        }
    }

    /// `x` rounded to this type (nearest, ties to even), as its bits.
    pub fn bits(self, x: f32) -> u16 {
        match self {
            Kind::F16 => half::f16::from_f32(x).to_bits(),
            Kind::Bf16 => half::bf16::from_f32(x).to_bits(),
        }
    }

    /// `x` rounded to this type and back.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Kind::F16 => half::f16::from_f32(x).to_f32(),
            Kind::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The element types of the graph's inputs and outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// As the model declares them (f32): a drop-in replacement.
    #[default]
    Keep,
    /// In 16 bits: no Cast at the interface, for callers that feed and read 16-bit tensors.
    Low,
}

/// How to lower precision.
#[derive(Clone, Debug)]
pub struct PrecisionOptions {
    pub kind: Kind,
    pub io: Io,
    /// When the check fails, return the most sensitive ops to f32 until it passes.
    pub fallback: bool,
    /// Declare every value's type (`--target tensorrt`: a strongly typed network).
    pub strongly_typed: bool,
}

impl Default for PrecisionOptions {
    fn default() -> Self {
        PrecisionOptions {
            kind: Kind::F16,
            io: Io::Keep,
            fallback: true,
            strongly_typed: false,
        }
    }
}

/// The ops the accuracy search gave back to f32 (by node name), with why.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    pub ops: BTreeMap<String, Why>,
}

/// What `lower-precision` did, for the report: ops in 16 bits and in f32 (with why, by
/// `body/node` path for ops inside bodies), and the Casts it added.
#[derive(Clone, Debug, Default)]
pub struct Lowered {
    pub low: Vec<(String, String)>,
    pub f32: Vec<(String, String, Why)>,
    pub casts: usize,
}

/// The precision stage.
pub fn stage() -> Stage {
    Stage {
        prepare: Some(Box::new(MeasureRanges)),
        once: vec![
            // First: the search keeps ops in f32 by name.
            Box::new(crate::passes::names::NameOps),
            Box::new(lower::LowerPrecision),
        ],
        fixed_point: vec![
            Box::new(casts::CancelCasts),
            Box::new(cleanup::dce::DeadCode),
        ],
        ..Stage::new(
            "precision",
            "last (with --precision): after quantize, so what int8 leaves float runs in 16 bits; its ranges are measured on the model as the stages before left it",
        )
    }
}

/// What the precision stage did, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PrecisionReport {
    pub kind: Kind,
    pub io: Io,
    /// The check ran an f32 model rounded to the 16-bit type at the same places (tract runs no
    /// bf16, and not every fp16 op).
    pub emulated: bool,
    pub strongly_typed: bool,
    /// Ops computing in 16 bits.
    pub low_ops: usize,
    /// Ops left in f32: (name, op, why).
    pub f32_ops: Vec<(String, String, Why)>,
    pub casts: usize,
    /// Share of the Conv/ConvTranspose/Gemm/MatMul weight elements stored in 16 bits.
    pub weight_share: f64,
    /// At least half of those weight elements are 16-bit.
    pub lowered_enough: bool,
    /// Bytes of constants before and after the stage.
    pub param_bytes_before: u64,
    pub param_bytes_after: u64,
    /// Samples the ranges were measured on (0: none measured), and why not when they were
    /// not.
    pub range_samples: usize,
    pub range_note: Option<String>,
    /// Each 16-bit op's measured error, worst first, when the check failed and the search ran.
    pub layer_errors: Vec<(String, f64)>,
    /// Ops the search gave back to f32, most sensitive first, and the checks it took.
    pub fallback: Vec<String>,
    pub fallback_tries: usize,
}

impl PrecisionReport {
    /// The report of the stage on a model whose parameters took `param_bytes_before` when it
    /// was handed over, and `after`, from what its passes left in the context.
    pub fn of(
        param_bytes_before: u64,
        after: &Model,
        opts: &PrecisionOptions,
        cx: &crate::passes::PassContext,
    ) -> PrecisionReport {
        let lowered = cx.get::<Lowered>().cloned().unwrap_or_default();
        let ranges = cx.get::<Ranges>();
        let share = weight_share(&after.graph);
        PrecisionReport {
            kind: opts.kind,
            io: opts.io,
            emulated: true,
            strongly_typed: opts.strongly_typed,
            low_ops: lowered.low.len(),
            f32_ops: lowered.f32,
            casts: lowered.casts,
            weight_share: share,
            lowered_enough: share >= 0.5,
            param_bytes_before,
            param_bytes_after: crate::report::Summary::of(after).param_bytes(),
            range_samples: ranges.map_or(0, |r| r.samples),
            range_note: ranges.and_then(|r| r.note.clone()),
            layer_errors: Vec::new(),
            fallback: Vec::new(),
            fallback_tries: 0,
        }
    }
}

/// Ops whose second input is a weight.
const WEIGHTED: [&str; 4] = ["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// The share of the weight elements of `g`'s (and its bodies') weighted ops that are stored
/// in 16 bits. A body's weights are often constants of the graph around it, read by capture.
pub fn weight_share(g: &Graph) -> f64 {
    fn count<'g>(g: &'g Graph, outer: &HashMap<&'g str, &'g Tensor>, all: &mut u64, low: &mut u64) {
        let mut seen = outer.clone();
        seen.extend(
            (g.initializers().iter())
                .filter_map(|&v| Some((g.value(v).name(), g.value(v).constant()?))),
        );
        for n in g.node_ids() {
            let node = g.node(n);
            for body in node.attrs().iter().flat_map(|a| a.bodies()) {
                count(body, &seen, all, low);
            }
            if !WEIGHTED.iter().any(|op| node.is(op)) {
                continue;
            }
            if let Some(t) = node.input(1).and_then(|w| weight(g, w, &seen)) {
                *all += t.len();
                if matches!(t.dtype(), DType::F16 | DType::BF16) {
                    *low += t.len();
                }
            }
        }
    }
    let (mut all, mut low) = (0, 0);
    count(g, &HashMap::new(), &mut all, &mut low);
    if all == 0 {
        0.0
    } else {
        low as f64 / all as f64
    }
}

/// The stored tensor behind weight `w`: a constant (of this graph, or one around it it
/// captures), or what a Cast or DequantizeLinear reads.
fn weight<'g>(
    g: &Graph,
    w: ValueId,
    constants: &HashMap<&'g str, &'g Tensor>,
) -> Option<&'g Tensor> {
    let stored = |v: ValueId| constants.get(g.value(v).name()).copied();
    if let Some(t) = stored(w) {
        return Some(t);
    }
    let node = g.node(g.producer(w)?);
    (node.is("Cast") || node.is("DequantizeLinear"))
        .then(|| stored(node.input(0)?))
        .flatten()
}
