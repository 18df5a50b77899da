//! `quantize-opset-13`: a model below opset 13, about to be quantized, imports the default
//! domain at 13 instead, when every default-domain op in it (bodies included) means the same
//! at 13 as at the opset it declares.
//!
//! ```text
//!   opset_import { "" : 11 }  Conv, Relu, Softmax(axis = last), ...
//!                     ⇒
//!   opset_import { "" : 13 }  the same nodes, unchanged
//! ```
//!
//! Why: DequantizeLinear has an `axis` only from opset 13, and per-tensor weight scales ruin
//! depthwise convolutions, whose channels differ by orders of magnitude. Whether an op reads
//! the same is decided by a table of the opset from which each op's definition is what it is
//! at 13 (later versions that only added element types count as the same; versions that moved
//! an attribute to an input, changed a default or the meaning of an attribute do not), plus
//! a few ops that read the same under a condition on the node (Softmax over the last axis,
//! Resize without the mode 13 removed). An op not in the table keeps the model where it is.
//!
//! Refuses (the weights are then quantized per tensor, and the quantization report says
//! why): an op that reads differently at 13, or that the table does not know; model-local
//! functions, whose own imports would have to move too; IR versions below 7, which opset 13
//! needs. Runs first in the quantize stage after `name-ops`, and only when quantizing.

use anyhow::Result;
use serde::Serialize;

use crate::ir::{Graph, Model, NodeId};
use crate::passes::quant::qdq::Calibration;
use crate::passes::{Changed, Note, Pass, PassContext};
use crate::runtime::Facts;

/// The opset DequantizeLinear first has an `axis` in.
pub const PER_AXIS: i64 = 13;

/// For each default-domain op, the first opset from which it reads as it does at 13. Bumps
/// that only added element types (13 added bfloat16 to most ops) are not changes; widening
/// what is allowed (negative axes at 11) is not either, since a model valid before reads the
/// same after.
const SAME_AT_13_SINCE: &[(&str, i64)] = &[
    ("Abs", 6),
    ("Acos", 7),
    ("Acosh", 9),
    ("Add", 7),
    ("And", 7),
    ("ArgMax", 1),
    ("ArgMin", 1),
    ("Asin", 7),
    ("Asinh", 9),
    ("Atan", 7),
    ("Atanh", 9),
    // 10 added ceil_mode, 11 the pads of auto_pad.
    ("AveragePool", 11),
    // 9 dropped `spatial`.
    ("BatchNormalization", 9),
    ("Cast", 6),
    ("Ceil", 6),
    ("Celu", 12),
    // 11 moved min and max from attributes to inputs.
    ("Clip", 11),
    ("Concat", 4),
    ("Constant", 1),
    ("ConstantOfShape", 9),
    // 11 defined the pads of auto_pad.
    ("Conv", 11),
    // 11 redefined the output shape under auto_pad and output_padding.
    ("ConvTranspose", 11),
    ("Cos", 7),
    ("Cosh", 9),
    ("CumSum", 11),
    ("DepthToSpace", 1),
    ("DequantizeLinear", 10),
    ("Div", 7),
    // 12 moved ratio to an input and added training_mode.
    ("Dropout", 12),
    ("Einsum", 12),
    ("Elu", 6),
    ("Equal", 7),
    ("Erf", 9),
    ("Exp", 6),
    ("Expand", 8),
    ("Flatten", 1),
    ("Floor", 6),
    ("GRU", 7),
    ("Gather", 1),
    ("GatherElements", 11),
    ("GatherND", 11),
    ("Gemm", 7),
    ("GlobalAveragePool", 1),
    ("GlobalMaxPool", 1),
    ("Greater", 7),
    ("GreaterOrEqual", 12),
    ("HardSigmoid", 6),
    ("Identity", 1),
    ("If", 1),
    ("InstanceNormalization", 6),
    ("IsInf", 10),
    ("IsNaN", 9),
    ("LRN", 1),
    ("LSTM", 7),
    ("LeakyRelu", 6),
    ("Less", 7),
    ("LessOrEqual", 12),
    ("Log", 6),
    // 11 made the condition optional and changed the scan outputs' shapes.
    ("Loop", 11),
    ("MatMul", 1),
    ("Max", 8),
    // 10 added ceil_mode and dilations, 11 the pads of auto_pad.
    ("MaxPool", 11),
    ("Mean", 8),
    ("MeanVarianceNormalization", 9),
    ("Min", 8),
    ("Mod", 10),
    ("Mul", 7),
    ("Neg", 6),
    ("NonZero", 9),
    ("Not", 1),
    ("Or", 7),
    ("PRelu", 9),
    // 11 moved pads and the constant to inputs.
    ("Pad", 11),
    ("Pow", 12),
    ("QuantizeLinear", 10),
    ("RNN", 7),
    ("Range", 11),
    ("Reciprocal", 6),
    ("ReduceL1", 1),
    ("ReduceL2", 1),
    ("ReduceLogSum", 1),
    ("ReduceLogSumExp", 1),
    ("ReduceMax", 1),
    ("ReduceMean", 1),
    ("ReduceMin", 1),
    ("ReduceProd", 1),
    ("ReduceSumSquare", 1),
    ("Relu", 6),
    ("Reshape", 5),
    ("Round", 11),
    ("Scan", 9),
    ("ScatterElements", 11),
    ("ScatterND", 11),
    ("Selu", 6),
    ("Shape", 1),
    ("Sigmoid", 6),
    ("Sign", 9),
    ("Sin", 7),
    ("Sinh", 9),
    ("Size", 1),
    // 10 moved starts, ends and axes to inputs.
    ("Slice", 10),
    ("Softplus", 1),
    ("Softsign", 1),
    ("SpaceToDepth", 1),
    ("Sqrt", 6),
    ("Sub", 7),
    ("Sum", 8),
    ("Tan", 7),
    ("Tanh", 6),
    ("ThresholdedRelu", 10),
    ("Tile", 6),
    // 10 moved k to an input, 11 added largest and sorted.
    ("TopK", 11),
    ("Transpose", 1),
    ("Where", 9),
    ("Xor", 7),
];

/// Why node `n` of `g` would read differently at opset 13 than at `opset`, if it would.
/// `facts` are tract's, for the main graph and the bodies it can analyse.
fn changes_at_13(g: &Graph, n: NodeId, opset: i64, facts: Option<&Facts>) -> Option<String> {
    let node = g.node(n);
    if !node.in_standard_domain() || node.domain() == "ai.onnx.ml" {
        // Other domains are versioned by their own imports, which stay.
        return None;
    }
    let op = node.op();
    let differs = || {
        Some(format!(
            "{op} '{}' reads differently at opset 13",
            node.name()
        ))
    };
    match op {
        // Before 13 they flatten the input to 2-D at `axis` (default 1) and normalize over
        // the whole inner block; from 13 over `axis` alone (default -1). The same only when
        // the axis is the last one.
        "Softmax" | "LogSoftmax" | "Hardmax" => {
            let x = node.input(0)?;
            let rank = facts.and_then(|f| f.rank(g.value(x).name()));
            let axis = node.attr_i("axis").unwrap_or(1);
            match rank {
                Some(r) if axis == r as i64 - 1 || axis == -1 => None,
                _ => differs(),
            }
        }
        // 13 removed the mode tf_half_pixel_for_nn and made scales optional; 11 is
        // otherwise the same.
        "Resize" => {
            let mode = node.attr_s("coordinate_transformation_mode");
            (opset < 11 || mode == Some(b"tf_half_pixel_for_nn".as_slice())).then(differs)?
        }
        _ => match SAME_AT_13_SINCE.iter().find(|(o, _)| *o == op) {
            Some(&(_, since)) if since <= opset => None,
            Some(_) => differs(),
            None => Some(format!(
                "{op} '{}' is not known to read the same at opset 13",
                node.name()
            )),
        },
    }
}

/// The first reason, in node order over the graph and its bodies, why `model` cannot import
/// opset 13 without changing its meaning.
pub fn blocker(model: &Model, facts: Option<&Facts>) -> Option<String> {
    let opset = model.opset("").unwrap_or(1);
    if model.ir_version() < 7 {
        return Some(format!(
            "IR version {} is below 7, which opset 13 needs",
            model.ir_version()
        ));
    }
    if model.functions().next().is_some() {
        return Some("the model has local functions with their own opset imports".into());
    }
    fn walk(g: &Graph, opset: i64, facts: Option<&Facts>) -> Option<String> {
        let mut nodes: Vec<NodeId> = g.node_ids().collect();
        nodes.sort();
        nodes.into_iter().find_map(|n| {
            changes_at_13(g, n, opset, facts).or_else(|| {
                let node = g.node(n);
                node.attrs()
                    .iter()
                    .flat_map(|a| a.bodies())
                    .find_map(|b| walk(b, opset, facts))
            })
        })
    }
    walk(&model.graph, opset, facts)
}

/// What the pass did, for the quantization report.
#[derive(Clone, Debug, Serialize)]
pub struct OpsetStep {
    pub declared: i64,
    /// Whether the import was raised to 13.
    pub raised: bool,
    /// Why it was not, when it was not.
    pub kept_because: Option<String>,
}

pub struct RaiseOpset;

impl Pass for RaiseOpset {
    fn id(&self) -> &'static str {
        "quantize-opset-13"
    }

    fn about(&self) -> &'static str {
        "import opset 13 below it, when every op reads the same there (when quantizing)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let declared = model.opset("").unwrap_or(1);
        if cx.get::<Calibration>().is_none() || declared >= PER_AXIS {
            return Ok(Changed::No);
        }
        let facts = cx.facts(model);
        let why = blocker(model, Some(&facts));
        let raised = why.is_none();
        if raised {
            model.set_opset("", PER_AXIS);
        }
        cx.provide(OpsetStep {
            declared,
            raised,
            kept_because: why,
        });
        Ok(if raised { Changed::Yes(1) } else { Changed::No })
    }

    fn note(&self, _model: &Model, cx: &mut PassContext) -> Option<Note> {
        let step = cx.get::<OpsetStep>()?;
        let line = match &step.kept_because {
            None => format!(
                "opset {} raised to 13 (every op reads the same there): weights per channel",
                step.declared
            ),
            Some(why) => format!("opset {} kept ({why}): weights per tensor", step.declared),
        };
        Some(Note {
            pass: self.id(),
            heading: "quantization opset".into(),
            lines: vec![line],
        })
    }
}
