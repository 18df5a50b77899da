//! INT8 quantization, as a stage after simplification: calibrate (run the float model in
//! tract over the samples, streaming statistics), choose each activation's range (MinMax,
//! Percentile, Entropy), insert QuantizeLinear/DequantizeLinear (`quantize-qdq`), then
//! cleanup. The samples come from a directory of `.npy`/`.npz` files, or, only when asked,
//! from random data, which gives ranges that are not real; a share of them is held back for
//! the check, which judges the result against the float model by the lossy rule.

pub mod calibrate;
pub mod equalize;
pub mod opset;
pub mod pair_per_reader;
pub mod pairs;
pub mod pool;
pub mod qdq;
pub mod ranges;
pub mod residual_add;
pub mod share;
pub mod smooth;

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;

use self::qdq::{plan, Activations, BodyCalibration, Calibration, InsertQdq, Placement};
use self::ranges::Method;
use super::{
    run_stages, selected, PassContext, PipelineOptions, PipelineReport, Prepare, Rounds, Stage,
};
use crate::ir::{DType, Dim, Graph, Model, NodeId, Type, ValueId};
use crate::lossy::sensitivity::Local;
use crate::lossy::Samples;
use crate::progress::Progress;
use crate::runtime::{input_specs, Binding, HostTensor, Plans};

/// How to quantize.
#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub activations: Activations,
    pub placement: Placement,
    pub method: Method,
    /// When the check fails, return the most sensitive ops to float until it passes.
    pub fallback: bool,
    /// Cross-layer equalization of Conv pairs before calibration.
    pub equalize: bool,
    /// Shift each bias by the mean error its int8 weights add.
    pub bias_correction: bool,
    /// Move activation outliers into the weights of the MatMuls reading them (SmoothQuant).
    pub smooth: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            activations: Activations::Int8,
            placement: Placement::AroundOps,
            method: Method::Percentile(99.99),
            fallback: true,
            equalize: true,
            bias_correction: true,
            smooth: true,
        }
    }
}

/// The quantization stage: calibration ([`Calibrate`]), the opset raised where weights need
/// per-channel scales, Q/DQ inserted at the ops, then the placement rules of the target
/// (residual Adds, average pools, a pair per reader), then the float weights they replaced
/// removed.
pub fn stage() -> Stage {
    Stage {
        prepare: Some(Box::new(Calibrate)),
        once: vec![
            // First: the ops the later passes, the search and the report name.
            Box::new(super::names::NameOps),
            Box::new(opset::RaiseOpset),
            Box::new(InsertQdq),
            // After the ops: a residual Add is quantized when what it joins is.
            Box::new(residual_add::QuantizeResidualAdds),
            // After the Adds, whose outputs a pool may read.
            Box::new(pool::QuantizeAveragePools),
            // Last: every pair exists, and each extra reader gets its own.
            Box::new(pair_per_reader::PairPerReader),
        ],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
        ..Stage::new(
            "quantize",
            "last: after simplify (fused weights, constant shapes), pruning (it calibrates the pruned model) and equalization (it calibrates the equalized weights' activations)",
        )
    }
}

/// Pairs of a chain are swept at most this many times by cross-layer equalization.
const SWEEPS: usize = 8;

/// Cross-layer equalization: an exact float rewrite before calibration, swept over the Conv
/// pairs a bounded number of rounds (each round moves the pairs closer to equal ranges).
pub fn equalize_stage() -> Stage {
    Stage {
        fixed_point: vec![
            Box::new(equalize::EqualizeConvPairs),
            Box::new(super::cleanup::dce::DeadCode),
        ],
        rounds: Rounds::AtMost(SWEEPS),
        ..Stage::new(
            "equalize",
            "before quantization (with --quantize): calibration must see the equalized weights' activations",
        )
    }
}

/// SmoothQuant: activation outliers moved into the weights of the MatMuls that read them, an
/// exact float rewrite measured on the samples, before calibration.
pub fn smooth_stage() -> Stage {
    Stage {
        prepare: Some(Box::new(smooth::MeasureChannels)),
        once: vec![Box::new(smooth::SmoothActivations)],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
        ..Stage::new(
            "smooth",
            "before quantization (with --quantize, unless --no-smooth): calibration must see the smoothed activations",
        )
    }
}

/// The equalize stage on `model` (the simplified float model, before calibration).
pub fn equalize(model: &mut Model, opts: &PipelineOptions) -> Result<PipelineReport> {
    let mut cx = PassContext::new(opts.explain);
    run_stages(
        model,
        &selected(opts, vec![equalize_stage()])?,
        opts,
        &mut cx,
    )
}

/// The quantize stage's preparation: calibrates the model as the stages before it left it on
/// the [`Samples`] in the context, by the [`QuantOptions`] there; provides the
/// [`Calibration`].
pub struct Calibrate;

impl Prepare for Calibrate {
    fn id(&self) -> &'static str {
        "calibrate"
    }

    fn about(&self) -> &'static str {
        "run the float model in tract on the samples and choose each activation's range"
    }

    fn run(&self, model: &Model, cx: &mut PassContext) -> Result<()> {
        let opts = cx.get::<QuantOptions>().cloned().unwrap_or_default();
        let samples = cx.get::<Samples>().ok_or_else(|| {
            anyhow::anyhow!("quantization needs calibration data: --calib DIR (or --calib-random N, whose ranges are not real)")
        })?;
        let cal = calibration(model, &opts, samples, cx.progress())?;
        cx.provide(cal);
        cx.progress().step("inserting Q/DQ");
        Ok(())
    }
}

/// The quantization stage on a copy of `float` with `cal` provided (no calibration), the
/// ops `exclude` names kept float; the result and the context the stage ran with.
pub fn quantize(
    float: &Model,
    cal: &Calibration,
    exclude: &[String],
    opts: &PipelineOptions,
) -> Result<(Model, PipelineReport, PassContext)> {
    let mut cx = PassContext::new(opts.explain);
    cx.exclude = exclude.to_vec();
    cx.provide(cal.clone());
    cx.mark_prepared("quantize");
    let mut model = float.clone();
    let report = run_stages(&mut model, &selected(opts, vec![stage()])?, opts, &mut cx)?;
    Ok((model, report, cx))
}

/// What the quantization stage did, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct QuantReport {
    pub method: Method,
    pub activations: Activations,
    pub placement: Placement,
    pub calibration_samples: usize,
    pub held_back_samples: usize,
    /// Random data: the ranges are not real.
    pub random_calibration: bool,
    pub quantized: usize,
    /// Each quantizable op left in float, with why.
    pub left_float: Vec<(String, String)>,
    /// Whether at least half of the quantizable weight elements are in ops that compute in
    /// int8 (weight and activation): a model that passes only by staying float, or by keeping
    /// int8 weights that ops dequantize to run in float, has not been quantized.
    pub quantized_enough: bool,
    /// Share of the Conv/ConvTranspose/Gemm/MatMul weight elements in ops whose weight and
    /// activation are int8: what runs faster.
    pub int8_compute_share: f64,
    /// Share of those weight elements stored as int8, weight-only ops included: what is
    /// smaller.
    pub int8_weight_share: f64,
    /// Each quantized op's measured error, the relative L2 error (against the float model,
    /// on the held-back samples) it adds to what its input already had, worst first;
    /// measured when the check failed and the fallback searched.
    pub layer_errors: Vec<(String, f64)>,
    /// The ops the fallback took out of int8 (wholly, or only their activations: see
    /// `weights_only`), most sensitive first, and how many tries it took.
    pub fallback: Vec<String>,
    /// Of `fallback`, those whose weights stay int8 (only their activations are float).
    pub weights_only: Vec<String>,
    pub fallback_tries: usize,
    /// Below opset 13: whether the import was raised to 13 (weights per channel) or kept,
    /// and why (weights per tensor).
    pub opset: Option<opset::OpsetStep>,
    /// Cross-layer equalization was left out: the result checked better without it.
    pub equalization_dropped: bool,
}

/// Calibrates the simplified float `model` on `samples`: the ranges the stage is handed.
pub fn calibration(
    model: &Model,
    opts: &QuantOptions,
    samples: &Samples,
    progress: &Progress,
) -> Result<Calibration> {
    let g = &model.graph;
    let watch = watched(g, opts);
    let histogram = opts.method != Method::MinMax;
    let stats = calibrate::calibrate(model, &watch, &samples.calibration, histogram, progress)
        .with_context(|| {
            if samples.random {
                "calibration on random samples failed (a model may need real values, such as a sample rate or token ids): give real samples with --calib DIR"
            } else {
                "calibration failed"
            }
        })?;
    let means = stats
        .iter()
        .filter(|_| opts.bias_correction)
        .map(|(name, s)| {
            let m = qdq::Means {
                axis1: s.axis1.means(),
                last: s.last.means(),
            };
            (name.clone(), m)
        })
        .collect();
    let mut ranges: HashMap<String, (f32, f32)> = stats
        .into_iter()
        .filter(|(_, s)| s.seen > 0)
        .map(|(name, s)| {
            let t = s.threshold(opts.method);
            (name, (s.min.max(-t), s.max.min(t)))
        })
        .collect();
    if opts.placement == Placement::AroundOps {
        share::share_through_moves(g, &mut ranges);
    }
    Ok(Calibration {
        ranges,
        activations: opts.activations,
        placement: opts.placement,
        means,
        weights_only: Vec::new(),
        bodies: body_calibrations(model, opts, samples, progress)?,
    })
}

/// Each If body that holds quantizable ops, calibrated on what it really sees: the model
/// runs with each If's condition and the outer values its bodies read exposed, and each
/// sample's captured values feed the branch that sample takes, run as a model of its own
/// (and so on, for bodies within). A branch no sample takes is not calibrated, and stays
/// float. Loop bodies are not: tract cannot run a Loop.
fn body_calibrations(
    model: &Model,
    opts: &QuantOptions,
    samples: &Samples,
    progress: &Progress,
) -> Result<Vec<BodyCalibration>> {
    let g = &model.graph;
    let holders: Vec<NodeId> = g
        .node_ids()
        .filter(|&n| g.node(n).is("If") && holds_quantizable(g, n))
        .collect();
    if holders.is_empty() {
        return Ok(Vec::new());
    }
    branch_samples(model, &holders, samples)?
        .into_iter()
        .map(|((n, branch), taken)| {
            let node = g.node(n);
            progress.step(&format!(
                "calibrating the body {branch} of '{}'",
                node.name()
            ));
            let body = node.attr(branch).and_then(|a| a.bodies().next());
            let inner = body_model(model, body.expect("taken by a sample"), &taken[0])?;
            let inner_samples = Samples {
                calibration: taken,
                held_back: Vec::new(),
                random: samples.random,
            };
            Ok(BodyCalibration {
                node: node.name().to_string(),
                attr: branch.to_string(),
                cal: calibration(&inner, opts, &inner_samples, progress)?,
            })
        })
        .collect()
}

/// An If and one of its branches, with the values the branch's captures held on each sample
/// that took it.
type Taken = ((NodeId, &'static str), Vec<Vec<HostTensor>>);

/// Per (If, branch), in order: the values its captures held on each calibration sample that
/// took that branch. The model runs with each If's condition and the outer values its bodies
/// read exposed; a captured constant is read off the model, a graph input off the sample.
fn branch_samples(model: &Model, holders: &[NodeId], samples: &Samples) -> Result<Vec<Taken>> {
    let g = &model.graph;
    let fed: Vec<String> = input_specs(model, &Binding::default())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut names: Vec<String> = (holders.iter())
        .flat_map(|&n| {
            let node = g.node(n);
            node.input(0)
                .into_iter()
                .chain(node.captures().iter().copied())
        })
        .filter(|&v| g.value(v).constant().is_none())
        .map(|v| g.value(v).name().to_string())
        .filter(|v| !fed.contains(v))
        .collect();
    names.sort();
    names.dedup();
    let mut plans = Plans::new(model, &names)?;
    let mut taken: HashMap<(NodeId, &'static str), Vec<Vec<HostTensor>>> = HashMap::new();
    for sample in &samples.calibration {
        let values = plans.extras(sample)?;
        let value = |v: ValueId| -> Option<HostTensor> {
            let name = g.value(v).name();
            if let Some(t) = g.value(v).constant() {
                return HostTensor::from_constant(t);
            }
            Some(match fed.iter().position(|f| f == name) {
                Some(i) => sample[i].clone(),
                None => values[names.binary_search_by(|m| m.as_str().cmp(name)).ok()?].clone(),
            })
        };
        for &n in holders {
            let node = g.node(n);
            let cond = node.input(0).and_then(value).and_then(|t| t.to_f64());
            let Some(&[c]) = cond.as_deref() else {
                continue;
            };
            let branch = if c != 0.0 {
                "then_branch"
            } else {
                "else_branch"
            };
            let Some(body) = node.attr(branch).and_then(|a| a.bodies().next()) else {
                continue;
            };
            let captured: Option<Vec<HostTensor>> = (body.captures().iter())
                .map(|&v| g.find(body.value(v).name()).and_then(value))
                .collect();
            if let Some(captured) = captured {
                taken.entry((n, branch)).or_default().push(captured);
            }
        }
    }
    let mut taken: Vec<_> = taken.into_iter().collect();
    taken.sort_by_key(|((n, b), _)| (*n, *b));
    Ok(taken)
}

/// `body` as a model of its own, its captures inputs typed as `first` (one sample's values
/// of them) is.
fn body_model(model: &Model, body: &Graph, first: &[HostTensor]) -> Result<Model> {
    let types: Vec<(String, Type)> = (body.captures().iter().zip(first))
        .map(|(&v, t)| {
            let dims = vec![Dim::Unknown; t.shape().len()];
            let dtype = t.dtype().unwrap_or(DType::F32);
            (body.value(v).name().to_string(), Type::tensor(dtype, dims))
        })
        .collect();
    model.of_body(body, &[], &types)
}

/// Whether a body of node `n` holds a quantizable op, at any depth.
fn holds_quantizable(g: &Graph, n: NodeId) -> bool {
    fn any(b: &Graph) -> bool {
        b.node_ids().any(|m| {
            qdq::quantizable(b, m) || b.node(m).attrs().iter().flat_map(|a| a.bodies()).any(any)
        })
    }
    g.node(n).attrs().iter().flat_map(|a| a.bodies()).any(any)
}

/// The values calibration watches: the quantizable ops' inputs (and a Concat's inputs before
/// them), and, where the placement quantizes outputs, the ops' outputs and a Relu's after
/// them; with the channel sums bias correction needs.
fn watched(g: &Graph, opts: &QuantOptions) -> Vec<calibrate::Watch> {
    let ops: Vec<_> = g.node_ids().filter(|&n| qdq::quantizable(g, n)).collect();
    // The activation each op reads, and the second one of a product of two activations.
    let inputs: Vec<_> = (ops.iter())
        .flat_map(|&n| {
            let second = g
                .node(n)
                .input(1)
                .filter(|_| qdq::activations_product(g, n));
            g.node(n).input(0).into_iter().chain(second)
        })
        .collect();
    // A Concat's inputs too, to tell whether one scale can serve them all.
    let concatenated: Vec<_> = inputs
        .iter()
        .flat_map(|&x| qdq::concat_inputs(g, x))
        .collect();
    let inputs = inputs.into_iter().chain(concatenated);
    // Under Q/DQ around ops, an op's output (a residual Add's or an average pool's too), and a
    // Relu's after it, may be quantized too; at joins, the op's output.
    let adds_and_pools = g.node_ids().filter(|&n| {
        let node = g.node(n);
        opts.placement == Placement::AroundOps
            && (node.is("Add")
                && node
                    .inputs()
                    .iter()
                    .flatten()
                    .all(|&v| g.value(v).constant().is_none())
                || pool::POOLS.iter().any(|op| node.is(op)))
            && node
                .output(0)
                .is_some_and(|y| g.dtype(y).is_none_or(|d| d == DType::F32))
    });
    let outputs = ops
        .iter()
        .copied()
        .filter(|_| opts.placement != Placement::Inputs)
        .chain(adds_and_pools)
        .filter_map(|n| g.node(n).output(0))
        .flat_map(|y| {
            let relu = g
                .only_reader(y)
                .filter(|&r| opts.placement == Placement::AroundOps && g.node(r).is("Relu"))
                .and_then(|r| g.node(r).output(0));
            std::iter::once(y).chain(relu)
        });
    let mut values: Vec<_> = inputs
        .chain(outputs)
        .filter(|&v| g.value(v).constant().is_none() && !g.is_output(v))
        .collect();
    values.sort();
    values.dedup();
    // Bias correction wants a Conv input's mean per channel, a matrix product's per inner index.
    let read_as = |v, ops: &[&str]| {
        opts.bias_correction
            && g.value(v)
                .uses()
                .iter()
                .any(|u| ops.iter().any(|op| g.node(u.node).is(op)))
    };
    values
        .into_iter()
        .map(|v| calibrate::Watch {
            name: g.value(v).name().to_string(),
            axis1: read_as(v, &["Conv"]),
            last: read_as(v, &["Gemm", "MatMul"]),
        })
        .collect()
}

/// The quantized ops of `quantized` (those reading their weight through a DQ) as
/// [`crate::lossy::sensitivity`] measures them against `float`: the values each reads before
/// rounding (the float node's non-constant inputs, which the quantized model computes under
/// the same names ahead of their Q), and the value it writes.
pub fn measured(float: &Model, quantized: &Model) -> Vec<Local> {
    let (f, g) = (&float.graph, &quantized.graph);
    let by_name: HashMap<&str, NodeId> = f.node_ids().map(|n| (f.node(n).name(), n)).collect();
    let mut ops: Vec<Local> = g
        .node_ids()
        .filter(|&n| qdq::quantizable(g, n))
        .filter(|&n| g.node(n).input(1).is_some_and(|w| pairs::dequantized(g, w)))
        .filter_map(|n| {
            let node = f.node(*by_name.get(g.node(n).name())?);
            let inputs: Vec<String> = (node.inputs().iter().flatten())
                .filter(|&&v| f.value(v).constant().is_none())
                .map(|&v| f.value(v).name().to_string())
                .collect();
            let output = f.value(node.output(0)?).name().to_string();
            let known = inputs.iter().chain([&output]).all(|v| g.find(v).is_some());
            known.then(|| Local {
                op: node.name().to_string(),
                inputs,
                output,
            })
        })
        .collect();
    ops.sort();
    ops
}

/// The names of the ops of `quantized` that read their weight through a DQ, in the main graph
/// and in its bodies, sorted.
pub fn quantized_ops(quantized: &Model) -> Vec<String> {
    fn walk(g: &Graph, out: &mut Vec<String>) {
        for n in g.node_ids() {
            let node = g.node(n);
            if qdq::quantizable(g, n) && node.input(1).is_some_and(|w| pairs::dequantized(g, w)) {
                out.push(node.name().to_string());
            }
            for body in node.attrs().iter().flat_map(|a| a.bodies()) {
                walk(body, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&quantized.graph, &mut out);
    out.sort();
    out
}

/// The weight elements of each quantizable op of `model` (main graph and bodies), by name: what
/// keeping it in int8 is worth to the share that says the model is quantized.
pub fn weight_elements(model: &Model) -> HashMap<String, u64> {
    fn walk(g: &Graph, out: &mut HashMap<String, u64>) {
        for n in g.node_ids() {
            let node = g.node(n);
            let w = node.input(1).and_then(|w| g.value(w).constant());
            if let (true, Some(w)) = (qdq::quantizable(g, n), w) {
                out.insert(node.name().to_string(), w.len());
            }
            for body in node.attrs().iter().flat_map(|a| a.bodies()) {
                walk(body, out);
            }
        }
    }
    let mut out = HashMap::new();
    walk(&model.graph, &mut out);
    out
}

/// The report of the stage on `before` (the float model it was handed) and `after`.
pub fn report(
    before: &Model,
    after: &Model,
    opts: &QuantOptions,
    samples: &Samples,
    cx: &PassContext,
) -> QuantReport {
    let planned = plan(before, cx);
    let share = Int8Share::of(&after.graph);
    let weights_only = cx
        .get::<Calibration>()
        .map(|c| c.weights_only.clone())
        .unwrap_or_default();
    let left_float = planned
        .iter()
        .filter_map(|(n, why)| why.err().map(|w| (n.clone(), w.to_string())))
        .collect();
    QuantReport {
        method: opts.method,
        activations: opts.activations,
        placement: opts.placement,
        calibration_samples: samples.calibration.len(),
        held_back_samples: samples.held_back.len(),
        random_calibration: samples.random,
        quantized: planned
            .iter()
            .filter(|(n, w)| w.is_ok() && !weights_only.contains(n))
            .count(),
        left_float,
        quantized_enough: share.compute() >= 0.5,
        int8_compute_share: share.compute(),
        int8_weight_share: share.stored(),
        layer_errors: Vec::new(),
        fallback: Vec::new(),
        weights_only,
        fallback_tries: 0,
        opset: cx.get::<opset::OpsetStep>().cloned(),
        equalization_dropped: false,
    }
}

/// Weight elements of the quantizable ops, of the graph and its bodies: all of them, those
/// stored as int8 (read through a DequantizeLinear of an int8 constant), and of those the ones
/// whose op also reads its activation through a pair (an op that computes in int8).
#[derive(Default)]
struct Int8Share {
    all: u64,
    stored: u64,
    computed: u64,
}

impl Int8Share {
    fn of(g: &Graph) -> Int8Share {
        let mut share = Int8Share::default();
        share.add(g);
        share
    }

    fn add(&mut self, g: &Graph) {
        for n in g.node_ids() {
            for body in g.node(n).attrs().iter().flat_map(|a| a.bodies()) {
                self.add(body);
            }
            let Some(w) = g.node(n).input(1).filter(|_| qdq::quantizable(g, n)) else {
                continue;
            };
            if let Some(t) = g.value(w).constant() {
                self.all += t.len();
                continue;
            }
            let stored = g
                .producer(w)
                .filter(|&p| g.node(p).is("DequantizeLinear"))
                .and_then(|p| g.node(p).input(0))
                .and_then(|q| g.value(q).constant());
            let Some(t) = stored else { continue };
            self.all += t.len();
            if t.dtype() == DType::I8 {
                self.stored += t.len();
                let x = g.node(n).input(0);
                if x.is_some_and(|x| pairs::pair_source(g, x).is_some()) {
                    self.computed += t.len();
                }
            }
        }
    }

    fn share(&self, part: u64) -> f64 {
        if self.all == 0 {
            0.0
        } else {
            part as f64 / self.all as f64
        }
    }

    fn compute(&self) -> f64 {
        self.share(self.computed)
    }

    fn stored(&self) -> f64 {
        self.share(self.stored)
    }
}
