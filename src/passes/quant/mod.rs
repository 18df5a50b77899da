//! INT8 quantization, as a stage after simplification: calibrate (run the float model in
//! tract over the samples, streaming statistics), choose each activation's range (MinMax,
//! Percentile, Entropy), insert QuantizeLinear/DequantizeLinear (`quantize-qdq`), then
//! cleanup. The samples come from a directory of `.npy`/`.npz` files, or, only when asked,
//! from random data, which gives ranges that are not real; a share of them is held back for
//! the check, which judges the result against the float model by the lossy rule.

pub mod calibrate;
pub mod equalize;
pub mod images;
pub mod opset;
pub mod qdq;
pub mod ranges;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use self::qdq::{plan, Activations, Calibration, InsertQdq, Placement};
use self::ranges::Method;
use super::{PassContext, Stage};
use crate::ir::{DType, Graph, Model, NodeId, ValueId};
use crate::progress::Progress;
use crate::runtime::{input_specs, Binding, HostTensor, InputSpec};

/// How to quantize.
#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub activations: Activations,
    pub placement: Placement,
    pub method: Method,
    /// A directory of calibration samples.
    pub calib: Option<PathBuf>,
    /// Random calibration samples, when there is no directory.
    pub random: Option<usize>,
    /// At most this many samples calibrate.
    pub samples: usize,
    /// When the check fails, return the most sensitive ops to float until it passes.
    pub fallback: bool,
    /// How image samples become inputs; images are refused without it.
    pub preprocess: Option<images::Preprocess>,
    /// Cross-layer equalization of Conv pairs before calibration.
    pub equalize: bool,
    /// Shift each bias by the mean error its int8 weights add.
    pub bias_correction: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            activations: Activations::Int8,
            placement: Placement::AroundOps,
            method: Method::Percentile(99.99),
            calib: None,
            random: None,
            samples: 100,
            fallback: true,
            preprocess: None,
            equalize: true,
            bias_correction: true,
        }
    }
}

/// The quantization stage: Q/DQ inserted once, then the float weights they replaced removed.
pub fn stage() -> Stage {
    Stage {
        name: "quantize",
        reason: "after simplify, so that quantization sees fused weights and constant shapes",
        once: vec![Box::new(opset::RaiseOpset), Box::new(InsertQdq)],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
    }
}

/// Samples for calibration and, held back from it, for the check.
pub struct Samples {
    pub calibration: Vec<Vec<HostTensor>>,
    pub held_back: Vec<Vec<HostTensor>>,
    /// Whether they are random data, whose ranges are not real.
    pub random: bool,
}

/// The samples `opts` names for `model`: from a directory, every fifth one (at least one,
/// when there are two or more) held back for the check and the rest (at most `opts.samples`)
/// for calibration; random ones, `opts.random` for calibration and a quarter as many others
/// for the check.
pub fn samples(model: &Model, opts: &QuantOptions) -> Result<Samples> {
    let specs = input_specs(model, &Binding::default())?;
    if let Some(dir) = &opts.calib {
        let all = read_dir(
            dir,
            &specs,
            &declared(model, &specs),
            opts.preprocess.as_ref(),
        )?;
        let held = if all.len() >= 2 {
            all.len().div_ceil(5)
        } else {
            0
        };
        let (mut calibration, mut held_back) = (Vec::new(), Vec::new());
        for (i, s) in all.into_iter().enumerate() {
            if i % 5 == 4 && held_back.len() < held {
                held_back.push(s);
            } else if calibration.len() < opts.samples.max(1) {
                calibration.push(s);
            }
        }
        if held_back.is_empty() {
            held_back = calibration.clone();
        }
        return Ok(Samples {
            calibration,
            held_back,
            random: false,
        });
    }
    let Some(n) = opts.random else {
        bail!("quantization needs calibration data: --calib DIR (or --calib-random N, whose ranges are not real)");
    };
    let random = |count: usize, seed: u64| -> Result<Vec<Vec<HostTensor>>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                specs
                    .iter()
                    .map(|s| HostTensor::random(s, &mut rng))
                    .collect()
            })
            .collect()
    };
    Ok(Samples {
        calibration: random(n.max(1), 1)?,
        held_back: random(n.div_ceil(4).max(1), 2)?,
        random: true,
    })
}

/// The samples of a directory: `.npy` files (one array, for a model of one input) or `.npz`
/// archives (one array per input, by name), in name order.
fn read_dir(
    dir: &Path,
    specs: &[InputSpec],
    declared: &[Vec<Option<usize>>],
    preprocess: Option<&images::Preprocess>,
) -> Result<Vec<Vec<HostTensor>>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the calibration directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read the calibration directory {}", dir.display()))?;
    files.retain(|p| p.is_file());
    files.sort();
    let mut sets = Vec::new();
    for f in &files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let set = match ext {
            "npy" => {
                if specs.len() != 1 {
                    bail!(
                        "{}: a .npy sample fits a model of one input; this one has {} ({}): use .npz files with an array per input",
                        f.display(),
                        specs.len(),
                        names(specs)
                    );
                }
                vec![crate::npy::read_npy(f)?]
            }
            "npz" => crate::npy::inputs_from_npz(f, specs)?,
            "jpg" | "jpeg" | "png" => {
                let Some(p) = preprocess else {
                    bail!(
                        "{}: image samples need --preprocess (for example 'imagenet') to become inputs",
                        f.display()
                    );
                };
                if specs.len() != 1 {
                    bail!(
                        "{}: an image sample fits a model of one input; this one has {} ({})",
                        f.display(),
                        specs.len(),
                        names(specs)
                    );
                }
                // The crop the model declares: its last two dims, or its middle two for NHWC.
                let d = &declared[0];
                let hw = match (d.len(), p.nhwc) {
                    (4, false) => d[2].zip(d[3]),
                    (4, true) => d[1].zip(d[2]),
                    _ => None,
                };
                let hw = hw.map(|(h, w)| (h as u32, w as u32));
                vec![p.load(f, hw)?]
            }
            _ => continue,
        };
        for ((t, s), d) in set.iter().zip(specs).zip(declared) {
            check_sample(f, t, s, d)?;
        }
        sets.push(set);
    }
    if sets.is_empty() {
        bail!(
            "{}: no .npy, .npz, .png or .jpg calibration samples",
            dir.display()
        );
    }
    Ok(sets)
}

/// Each input's declared dims, `None` where a dim is symbolic or unknown.
fn declared(model: &Model, specs: &[InputSpec]) -> Vec<Vec<Option<usize>>> {
    let g = &model.graph;
    specs
        .iter()
        .map(|s| {
            let dims = g.find(&s.name).and_then(|v| g.shape(v)).unwrap_or_default();
            dims.iter()
                .map(|d| match d {
                    crate::ir::Dim::Known(n) if *n >= 0 => Some(*n as usize),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn names(specs: &[InputSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether sample `t` from `file` can feed input `s`: its element type, and its rank and the
/// dims the model fixes (dynamic dims may differ from sample to sample).
fn check_sample(
    file: &Path,
    t: &HostTensor,
    s: &InputSpec,
    declared: &[Option<usize>],
) -> Result<()> {
    if t.dtype() != Some(s.dtype) {
        bail!(
            "{}: input '{}' needs {} values, the file holds {}",
            file.display(),
            s.name,
            s.dtype,
            t.dtype().unwrap_or(DType::UNDEFINED)
        );
    }
    if t.shape().len() != declared.len()
        || t.shape()
            .iter()
            .zip(declared)
            .any(|(&got, want)| want.is_some_and(|w| w != got))
    {
        let want: Vec<String> = declared
            .iter()
            .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
            .collect();
        bail!(
            "{}: input '{}' is [{}], the file holds {:?}",
            file.display(),
            s.name,
            want.join(", "),
            t.shape()
        );
    }
    Ok(())
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
    /// Whether at least half of the quantizable weight elements are int8: a model that passes
    /// only by staying float has not been quantized.
    pub quantized_enough: bool,
    /// Share of the Conv/ConvTranspose/Gemm/MatMul weight elements stored as int8.
    pub int8_weight_share: f64,
    /// Subgraph bodies hold quantizable ops, which stay float.
    pub bodies_left_float: bool,
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
pub fn prepare(
    model: &Model,
    opts: &QuantOptions,
    samples: &Samples,
    progress: &Progress,
) -> Result<Calibration> {
    let g = &model.graph;
    let ops: Vec<_> = g.node_ids().filter(|&n| qdq::quantizable(g, n)).collect();
    let inputs: Vec<_> = ops.iter().filter_map(|&n| g.node(n).input(0)).collect();
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
                || qdq::POOLS.iter().any(|op| node.is(op)))
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
    let watch: Vec<calibrate::Watch> = values
        .into_iter()
        .map(|v| calibrate::Watch {
            name: g.value(v).name().to_string(),
            axis1: read_as(v, &["Conv"]),
            last: read_as(v, &["Gemm", "MatMul"]),
        })
        .collect();
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
        share_through_moves(g, &mut ranges);
    }
    Ok(Calibration {
        ranges,
        activations: opts.activations,
        placement: opts.placement,
        means,
        weights_only: Vec::new(),
    })
}

/// The fewest of `ranked` (op names, most sensitive first) to keep in float for `passes` to
/// hold: the 1, 2, 4, ... most sensitive until a set passes (at most `tries` sets), then each
/// op of that set back in int8, least sensitive first, wherever it still passes (at most
/// `put_back` more tries: doubling overshoots). The set, and what `passes` returned for it.
pub fn fewest_float<T>(
    ranked: &[String],
    tries: usize,
    put_back: usize,
    mut passes: impl FnMut(&[String]) -> Result<Option<T>>,
) -> Result<Option<(Vec<String>, T)>> {
    let mut found = None;
    for attempt in 0..tries {
        let count = (1usize << attempt).min(ranked.len());
        if let Some(t) = passes(&ranked[..count])? {
            found = Some((ranked[..count].to_vec(), t));
            break;
        }
        if count == ranked.len() {
            break;
        }
    }
    let Some((mut set, mut passed)) = found else {
        return Ok(None);
    };
    // One op alone in float is the least there is: with none, the result already failed.
    let candidates: Vec<String> = set.iter().rev().cloned().collect();
    for name in candidates.iter().take(put_back) {
        if set.len() == 1 {
            break;
        }
        let fewer: Vec<String> = set.iter().filter(|n| *n != name).cloned().collect();
        if let Some(t) = passes(&fewer)? {
            (set, passed) = (fewer, t);
        }
    }
    Ok(Some((set, passed)))
}

/// Ops whose output holds only values of their data input, moved or picked.
const MOVES: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Identity",
];

/// Whether `n` writes only values of its data input, or values between them: a [`MOVES`] op,
/// or a Resize that picks or interpolates linearly without extrapolating (a cubic one
/// overshoots, a crop-and-resize fills with a value of its own).
pub(crate) fn moves_values(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    if !node.in_standard_domain() {
        return false;
    }
    if node.is("Resize") {
        let mode = node.attr_s("mode").unwrap_or(b"nearest");
        let crop = node.attr_s("coordinate_transformation_mode") == Some(b"tf_crop_and_resize");
        return matches!(mode, b"nearest" | b"linear") && !crop;
    }
    MOVES.iter().any(|op| node.is(op))
}

/// How far apart the magnitudes of a Concat's inputs may be for them and its output to share
/// one range around ops, so that runtimes concatenate int8 values as they are: the smallest
/// then keeps at least 7 of int8's 8 bits. Farther apart, each keeps its own scale (and the
/// Concat requantizes), up to `qdq::CONCAT_SPREAD`, past which its reader stays float.
const CONCAT_CLOSE: f32 = 2.0;

/// Whether `n` is a Concat whose inputs are all calibrated, of magnitudes within
/// [`CONCAT_CLOSE`] of each other.
fn close_concat(g: &Graph, n: NodeId, ranges: &HashMap<String, (f32, f32)>) -> bool {
    let node = g.node(n);
    if !node.is("Concat") || !node.in_standard_domain() {
        return false;
    }
    let amax: Option<Vec<f32>> = node
        .inputs()
        .iter()
        .map(|v| {
            let &(lo, hi) = ranges.get(g.value((*v)?).name())?;
            Some(lo.abs().max(hi.abs()))
        })
        .collect();
    let Some(amax) = amax.filter(|a| a.len() >= 2) else {
        return false;
    };
    let (lo, hi) = amax
        .iter()
        .fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    lo > 0.0 && hi <= CONCAT_CLOSE * lo
}

/// Around ops, the values on either side of moves (a MaxPool between two quantized Convs, a
/// Reshape → Transpose → Reshape) and of a Concat of close ranges get one range, the union of those calibrated among them: with
/// equal scales and zero points, ONNX Runtime drops the DQ → op → Q around each move and moves
/// int8 values, and the union clips none of them. Values joined by moves are found as one set
/// (through values without a range of their own, and across branches).
fn share_through_moves(g: &Graph, ranges: &mut HashMap<String, (f32, f32)>) {
    let mut parent: HashMap<ValueId, ValueId> = HashMap::new();
    fn root(parent: &mut HashMap<ValueId, ValueId>, v: ValueId) -> ValueId {
        let p = *parent.get(&v).unwrap_or(&v);
        if p == v {
            return v;
        }
        let r = root(parent, p);
        parent.insert(v, r);
        r
    }
    let edges: Vec<(ValueId, ValueId)> = g
        .node_ids()
        .flat_map(|n| {
            let node = g.node(n);
            let y = node.output(0);
            let sources: Vec<ValueId> = if moves_values(g, n) {
                node.input(0).into_iter().collect()
            } else if close_concat(g, n, ranges) {
                node.inputs().iter().flatten().copied().collect()
            } else {
                Vec::new()
            };
            sources.into_iter().filter_map(move |a| Some((a, y?)))
        })
        .collect();
    for (a, b) in edges {
        parent.entry(a).or_insert(a);
        parent.entry(b).or_insert(b);
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent.insert(ra.max(rb), ra.min(rb));
        }
    }
    let members: Vec<ValueId> = parent.keys().copied().collect();
    let mut union: HashMap<ValueId, (f32, f32)> = HashMap::new();
    for &v in &members {
        if let Some(&(lo, hi)) = ranges.get(g.value(v).name()) {
            let r = root(&mut parent, v);
            let u = union.entry(r).or_insert((lo, hi));
            *u = (u.0.min(lo), u.1.max(hi));
        }
    }
    for v in members {
        let name = g.value(v).name();
        if ranges.contains_key(name) {
            let r = root(&mut parent, v);
            ranges.insert(name.to_string(), union[&r]);
        }
    }
}

/// Cross-layer equalization of `model` (the simplified float model, before calibration):
/// an exact float rewrite, so that calibration sees the ranges the int8 model will have.
/// Pairs of a chain are swept at most this many times.
const SWEEPS: usize = 8;

pub fn equalize(model: &mut Model, opts: &super::PipelineOptions) -> Result<super::PipelineReport> {
    let stage = || Stage {
        name: "equalize",
        reason: "before calibration, which must see the equalized weights' activations",
        once: vec![Box::new(equalize::EqualizeConvPairs)],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
    };
    let mut report = super::PipelineReport::default();
    let mut rounds = 0;
    for _ in 0..SWEEPS {
        let mut cx = PassContext::new(opts.explain);
        let sweep = super::run_stages(model, &[stage()], opts, &mut cx)?;
        let changed = !sweep.steps.is_empty();
        // The sweeps are one stage to the report: each pass's runs and rewrites summed.
        for stat in sweep.passes {
            match report.passes.iter_mut().find(|p| p.id == stat.id) {
                Some(p) => {
                    p.runs += stat.runs;
                    p.rewrites += stat.rewrites;
                    p.time += stat.time;
                }
                None => report.passes.push(stat),
            }
        }
        rounds += sweep.rounds.iter().map(|(_, r)| r).sum::<usize>();
        report.steps.extend(sweep.steps);
        report.explain.extend(sweep.explain);
        if !changed {
            break;
        }
    }
    report.rounds.push(("equalize", rounds));
    report.explain.sort();
    report.explain.dedup();
    Ok(report)
}

/// The quantization stage on a copy of the float model, with `cal` and the ops `exclude`
/// names kept float; the result and the context the stage ran with.
pub fn quantize(
    float: &Model,
    cal: &Calibration,
    exclude: &[String],
    opts: &super::PipelineOptions,
) -> Result<(Model, super::PipelineReport, PassContext)> {
    let mut cx = PassContext::new(opts.explain);
    cx.exclude = exclude.to_vec();
    cx.provide(cal.clone());
    let mut model = float.clone();
    let report = super::run_stages(&mut model, &[stage()], opts, &mut cx)?;
    Ok((model, report, cx))
}

/// The error each quantized op adds, on `samples`: the relative L2 error ‖q − f‖ / ‖f‖ of
/// its output against the float model's, less that of its input (0 for a graph input), worst
/// first. Ranking by the output's error alone would put the last layers first, since every
/// error upstream reaches them; an early layer that adds much harms everything after it.
/// Both models run once per sample with those values exposed (the quantized model keeps the
/// names of the values its Q/DQ pairs read).
pub fn layer_errors(
    float: &Model,
    quantized: &Model,
    samples: &[Vec<HostTensor>],
) -> Result<Vec<(String, f64)>> {
    let g = &quantized.graph;
    let inputs: Vec<String> = input_specs(quantized, &Binding::default())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let known = |v: &str| float.graph.find(v).is_some() && quantized.graph.find(v).is_some();
    // Each op with its output and the float value its quantized input was read from.
    let mut layers: Vec<(String, String, Option<String>)> = g
        .node_ids()
        .filter(|&n| qdq::quantizable(g, n))
        .filter_map(|n| {
            let dq = |slot| {
                let v = g.node(n).input(slot)?;
                g.producer(v).filter(|&p| g.node(p).is("DequantizeLinear"))
            };
            dq(1)?;
            let y = g.value(g.node(n).output(0)?).name().to_string();
            // x ─▶ Q ─▶ DQ ─▶ op: x is the value both models compute.
            let x = dq(0)
                .and_then(|d| g.node(d).input(0))
                .and_then(|q| g.producer(q))
                .and_then(|q| g.node(q).input(0))
                .map(|x| g.value(x).name().to_string())
                .filter(|x| !inputs.contains(x) && known(x));
            Some((g.node(n).name().to_string(), y, x))
        })
        .filter(|(_, y, _)| known(y))
        .collect();
    layers.sort();
    let mut names: Vec<String> = layers
        .iter()
        .flat_map(|(_, y, x)| std::iter::once(y.clone()).chain(x.clone()))
        .collect();
    names.sort();
    names.dedup();
    let mut sums = vec![(0f64, 0f64); names.len()];
    let (mut float_plans, mut quantized_plans) = (
        calibrate::Plans::new(float, &names)?,
        calibrate::Plans::new(quantized, &names)?,
    );
    let values = |t: Vec<HostTensor>| -> Vec<Vec<f32>> {
        t.iter().map(|t| t.to_f32().unwrap_or_default()).collect()
    };
    for sample in samples {
        let f = values(float_plans.extras(sample)?);
        let q = values(quantized_plans.extras(sample)?);
        for (k, (a, b)) in f.iter().zip(&q).enumerate() {
            for (x, y) in a.iter().zip(b) {
                sums[k].0 += ((x - y) as f64).powi(2);
                sums[k].1 += (*x as f64).powi(2);
            }
        }
    }
    let error = |v: &str| {
        let (d, n) = sums[names.binary_search_by(|m| m.as_str().cmp(v)).unwrap()];
        (d / n.max(f64::MIN_POSITIVE)).sqrt()
    };
    let mut errors: Vec<(String, f64)> = layers
        .into_iter()
        .map(|(name, y, x)| {
            let before = x.as_deref().map_or(0.0, error);
            (name, (error(&y) - before).max(0.0))
        })
        .collect();
    errors.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(errors)
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
    let share = int8_share(&after.graph);
    let weights_only = cx
        .get::<Calibration>()
        .map(|c| c.weights_only.clone())
        .unwrap_or_default();
    let g = &before.graph;
    let left_float = planned
        .iter()
        .filter_map(|(n, why)| {
            why.err()
                .map(|w| (g.node(*n).name().to_string(), w.to_string()))
        })
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
            .filter(|(n, w)| w.is_ok() && !weights_only.iter().any(|o| o == g.node(*n).name()))
            .count(),
        left_float,
        quantized_enough: share >= 0.5,
        int8_weight_share: share,
        bodies_left_float: bodies_hold_quantizable(g),
        layer_errors: Vec::new(),
        fallback: Vec::new(),
        weights_only,
        fallback_tries: 0,
        opset: cx.get::<opset::OpsetStep>().cloned(),
        equalization_dropped: false,
    }
}

/// Share of the weight elements of quantizable ops stored as int8 (read through a
/// DequantizeLinear of an int8 constant).
fn int8_share(g: &Graph) -> f64 {
    let (mut int8, mut all) = (0u64, 0u64);
    for n in g.node_ids().filter(|&n| qdq::quantizable(g, n)) {
        let Some(w) = g.node(n).input(1) else {
            continue;
        };
        if let Some(t) = g.value(w).constant() {
            all += t.len();
            continue;
        }
        let stored = g
            .producer(w)
            .filter(|&p| g.node(p).is("DequantizeLinear"))
            .and_then(|p| g.node(p).input(0))
            .and_then(|q| g.value(q).constant());
        if let Some(t) = stored {
            all += t.len();
            if t.dtype() == DType::I8 {
                int8 += t.len();
            }
        }
    }
    if all == 0 {
        0.0
    } else {
        int8 as f64 / all as f64
    }
}

fn bodies_hold_quantizable(g: &Graph) -> bool {
    g.node_ids().any(|n| {
        g.node(n)
            .attrs()
            .iter()
            .flat_map(|a| a.bodies())
            .any(|b| b.node_ids().any(|m| qdq::quantizable(b, m)) || bodies_hold_quantizable(b))
    })
}
