//! Original-versus-result comparison, used by `optimize`, `verify` and the tests.
//!
//! The reference model runs once on seeded (or the user's) inputs; every candidate is run on
//! the same inputs and judged output by output by a [`Rule`]: [`Rule::Exact`] for rewrites that
//! must not change the numbers, [`Rule::Lossy`] (cosine similarity, top-1 agreement, max error)
//! for results that change them on purpose (quantization, pruning). A model tract cannot run is
//! "unverified", never "ok".
//!
//! Symbolic dims are bound to 1 first, the cheapest run. Some models only run at real sizes (a
//! detector whose upsampled branch must line up with a pooled one), so when the original
//! cannot run that way, larger spatial sizes are tried before it is called unverified; every
//! candidate then runs at the size the original ran at.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

mod judge;

pub use judge::{OutputDiff, PartDiff, PART_AXIS_MAX, PART_GAP};

use crate::ir::{DType, Model};
use crate::runtime::{
    feedable_inputs, has_free_spatial_dims, input_specs, Binding, HostTensor, InputSpec, Runner,
    Unrunnable, WORKERS,
};

/// Element-wise closeness scaled to the output: |a - b| <= atol * scale + rtol * |a|, where
/// scale is the output's largest finite magnitude, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ScaledTolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Default for ScaledTolerance {
    /// What a pure rewrite must meet: fp32 rounding of a reordered sum or a fused weight.
    fn default() -> Self {
        ScaledTolerance {
            rtol: 1e-4,
            atol: 1e-5,
        }
    }
}

/// Limits for a result that is not meant to be exact, per output.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LossyLimits {
    /// Least cosine similarity between the original's and the result's values.
    pub min_cosine: f64,
    /// Least share of rows whose argmax agrees, for [batch, classes] outputs.
    pub min_top1: f64,
    /// Largest |a - b| as a share of the output's scale; `None` leaves it unjudged, since
    /// int8 and pruning move single values far while the output as a whole stays close.
    pub max_error: Option<f64>,
}

impl Default for LossyLimits {
    fn default() -> Self {
        LossyLimits {
            min_cosine: 0.99,
            min_top1: 0.9,
            max_error: None,
        }
    }
}

/// How a candidate's outputs are judged against the original's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum Rule {
    Exact(ScaledTolerance),
    Lossy(LossyLimits),
}

impl Default for Rule {
    fn default() -> Self {
        Rule::Exact(ScaledTolerance::default())
    }
}

impl Rule {
    /// The lossy rule with its default limits, for stages that change the numbers on purpose.
    pub fn lossy() -> Rule {
        Rule::Lossy(LossyLimits::default())
    }

    /// The rule and its limits, in words.
    pub fn describe(&self) -> String {
        match self {
            Rule::Exact(t) => format!(
                "exact rule: |a - b| <= atol * scale + rtol * |a|, rtol {:e}, atol {:e}",
                t.rtol, t.atol
            ),
            Rule::Lossy(l) => {
                let max_error = l
                    .max_error
                    .map_or("max error not limited".to_string(), |m| {
                        format!("max error <= {m:e} * scale")
                    });
                format!(
                    "lossy rule: cosine >= {}, top-1 >= {:.1}%, {max_error}",
                    l.min_cosine,
                    l.min_top1 * 100.0
                )
            }
        }
    }
}

/// Where a check's inputs come from.
#[derive(Clone, Debug, Default)]
pub enum InputSource {
    /// `samples` sets of seeded values shaped after the binding.
    #[default]
    Seeded,
    /// One `.npy` file per model input, in input order.
    Npy(Vec<PathBuf>),
    /// One `.npz` archive with an array per model input, by name.
    Npz(PathBuf),
    /// Input sets in memory, each one value per model input in input order.
    Sets(Vec<Vec<HostTensor>>),
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub binding: Binding,
    pub rule: Rule,
    /// Number of seeded input sets, when the user gives none.
    pub samples: usize,
    pub seed: u64,
    pub inputs: InputSource,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            binding: Binding::default(),
            rule: Rule::default(),
            samples: 1,
            seed: 0,
            inputs: InputSource::Seeded,
        }
    }
}

/// A model input and the shape a check ran it with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputShape {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The shapes a check fed the models, and why, when they are not the first ones tried.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BoundInputs {
    pub shapes: Vec<InputShape>,
    /// What free spatial dims were bound to, when binding them to 1 failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spatial_dims: Vec<usize>,
    /// Why the original could not run with free dims bound to 1, when larger ones were used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_binding_failed: Option<String>,
    /// Sets of other shapes than the first's (the samples' dynamic dims differ).
    #[serde(skip_serializing_if = "is_zero")]
    pub other_shapes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BoundInputs {
    fn describe(&self) -> String {
        let mut s = self
            .shapes
            .iter()
            .map(|i| format!("{} {}", i.name, dims_text(&i.shape)))
            .collect::<Vec<_>>()
            .join(", ");
        if self.other_shapes > 0 {
            write!(
                s,
                " (the first sample's; {} other shape(s))",
                self.other_shapes
            )
            .unwrap();
        }
        if let Some(why) = &self.first_binding_failed {
            write!(
                s,
                "; free spatial dims bound to {}, since with them at 1 the original failed: {why}",
                dims_text(&self.spatial_dims)
            )
            .unwrap();
        }
        s
    }
}

fn dims_text(dims: &[usize]) -> String {
    if dims.is_empty() {
        return "scalar".into();
    }
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub samples: usize,
    pub rule: Rule,
    pub inputs: BoundInputs,
    pub outputs: Vec<OutputDiff>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.outputs.iter().all(|o| o.ok)
    }

    /// The lowest cosine over the outputs, their parts and their samples (0 for an output
    /// that could not be compared): how far the worst of what the check judges is from 1.
    pub fn worst_cosine(&self) -> f64 {
        self.outputs
            .iter()
            .map(|o| {
                if o.mismatch.is_some() {
                    return 0.0;
                }
                let parts = o
                    .parts
                    .iter()
                    .flat_map(|p| [Some(p.cosine), p.worst_sample]);
                std::iter::once(Some(o.cosine))
                    .chain(std::iter::once(o.worst_sample))
                    .chain(parts)
                    .flatten()
                    .fold(f64::INFINITY, f64::min)
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// The least cosine over the outputs and the least top-1 agreement of those that have
    /// one.
    pub fn agreement(&self) -> (f64, Option<f64>) {
        let cosine = self
            .outputs
            .iter()
            .map(|o| o.cosine)
            .fold(f64::INFINITY, f64::min);
        let top1 = self.outputs.iter().filter_map(|o| o.top1).reduce(f64::min);
        (cosine, top1)
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        writeln!(
            s,
            "{:<28} {:>11} {:>11} {:>10} {:>10} {:>10} {:>7} {:>7} {:>9}  verdict",
            "output", "max abs", "max rel", "cosine", "worst", "1 in 100", "top-1", "seqs", "scale"
        )
        .unwrap();
        let share = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.1}%", t * 100.0));
        let cos = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.6}"));
        for o in &self.outputs {
            let verdict = match (&o.mismatch, &o.violation, o.ok) {
                (Some(m), _, _) => format!("MISMATCH ({m})"),
                (None, _, true) => "ok".to_string(),
                (None, Some(v), false) => format!("MISMATCH ({v})"),
                (None, None, false) => "MISMATCH".to_string(),
            };
            writeln!(
                s,
                "{:<28} {:>11.3e} {:>11.3e} {:>10.6} {:>10} {:>10} {:>7} {:>7} {:>9.3}  {verdict}",
                o.name,
                o.max_abs,
                o.max_rel,
                o.cosine,
                cos(o.worst_sample),
                cos(o.expected_worst),
                share(o.top1),
                share(o.sequences),
                o.scale
            )
            .unwrap();
            for p in &o.parts {
                writeln!(
                    s,
                    "  part {:<22} {:>35.6} {:>10} {:>10} {:>7}",
                    p.label,
                    p.cosine,
                    cos(p.worst_sample),
                    cos(p.expected_worst),
                    share(p.top1)
                )
                .unwrap();
            }
        }
        if !self.inputs.shapes.is_empty() {
            writeln!(s, "inputs: {}", self.inputs.describe()).unwrap();
        }
        writeln!(s, "({} sample(s); {})", self.samples, self.rule.describe()).unwrap();
        s
    }
}

/// The verdict of a comparison.
#[derive(Clone, Debug)]
pub enum Outcome {
    Checked(CheckReport),
    /// tract cannot run one of the models; the reason names the op and node.
    Unverified(String),
}

/// What a model computed: its output names and, per input set, its output values.
pub struct Outputs {
    names: Vec<String>,
    values: Vec<Vec<HostTensor>>,
}

/// Peak memory of a check per byte of weights with the original and the result planned in tract
/// at the same time, rounded up from ResNet-50's 8.4 (a plan holds a few copies of each weight,
/// converted and packed).
const BOTH_AT_ONCE_PER_WEIGHT_BYTE: u64 = 9;

/// Whether planning the original and the result in tract at the same time is expected to fit
/// in the memory the system has available now (assumed so where that cannot be read).
pub fn both_at_once_fit(weight_bytes: u64) -> bool {
    available_memory()
        .is_none_or(|avail| weight_bytes.saturating_mul(BOTH_AT_ONCE_PER_WEIGHT_BYTE) <= avail)
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Spatial sizes tried, in order, when free dims bound to 1 fail: small multiples of the usual
/// detector stride of 32 first (cheap to run), then the common classifier and detector sizes.
const RETRY_SPATIAL_SIZES: [usize; 5] = [32, 64, 224, 320, 640];

/// The inputs a check feeds every model, at one binding. Known before any model runs (they
/// follow the declared inputs, which a rewrite never changes), so the original and a
/// candidate can run at the same time.
#[derive(Clone)]
pub struct Feed {
    binding: Binding,
    sets: Result<Vec<Vec<HostTensor>>, Unrunnable>,
    inputs: BoundInputs,
    /// Integer and bool inputs given seeded values, which a model may not accept.
    seeded_integers: Vec<String>,
}

impl Feed {
    /// The first feed of a check on `model`: the user's inputs (read from their files, their
    /// shapes binding the inputs' dims), or seeded sets at the options' binding. An unreadable
    /// file, or one that does not fit the model's inputs, is an error naming it.
    pub fn new(model: &Model, opts: &CheckOptions) -> Result<Feed> {
        let given = match &opts.inputs {
            InputSource::Seeded => return Ok(Feed::seeded(model, opts, opts.binding.clone())),
            InputSource::Sets(sets) => sets.clone(),
            InputSource::Npy(paths) => {
                vec![crate::npy::inputs_from_npy(
                    paths,
                    &input_specs(model, &opts.binding)?,
                )?]
            }
            InputSource::Npz(path) => {
                vec![crate::npy::inputs_from_npz(
                    path,
                    &input_specs(model, &opts.binding)?,
                )?]
            }
        };
        let mut binding = opts.binding.clone();
        let specs = input_specs(model, &binding)?;
        if let Some(first) = given.first() {
            for (s, t) in specs.iter().zip(first) {
                binding
                    .input_shapes
                    .insert(s.name.clone(), t.shape().to_vec());
            }
        }
        let mut distinct: Vec<Vec<&[usize]>> = given
            .iter()
            .map(|set| set.iter().map(|t| t.shape()).collect())
            .collect();
        distinct.sort();
        distinct.dedup();
        let inputs = BoundInputs {
            shapes: shapes_of(&input_specs(model, &binding)?),
            other_shapes: distinct.len().saturating_sub(1),
            ..Default::default()
        };
        drop(distinct);
        Ok(Feed {
            binding,
            sets: Ok(given),
            inputs,
            seeded_integers: Vec::new(),
        })
    }

    fn seeded(model: &Model, opts: &CheckOptions, binding: Binding) -> Feed {
        let specs = feedable_inputs(model, &binding);
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let sets = specs.clone().and_then(|specs| {
            (0..opts.samples.max(1))
                .map(|_| {
                    specs
                        .iter()
                        .map(|spec| HostTensor::random(spec, &mut rng))
                        .collect::<Result<Vec<_>>>()
                        .map_err(|e| Unrunnable(format!("cannot make seeded inputs: {e:#}")))
                })
                .collect()
        });
        let specs = specs.unwrap_or_default();
        let seeded_integers = specs
            .iter()
            .filter(|s| ![DType::F16, DType::BF16, DType::F32, DType::F64].contains(&s.dtype))
            .map(|s| s.name.clone())
            .collect();
        let inputs = BoundInputs {
            shapes: shapes_of(&specs),
            spatial_dims: binding.spatial_dims.clone(),
            ..BoundInputs::default()
        };
        Feed {
            binding,
            sets,
            inputs,
            seeded_integers,
        }
    }

    /// The input sets, when they could be made.
    pub fn sets(&self) -> Option<&[Vec<HostTensor>]> {
        self.sets.as_deref().ok()
    }

    /// Runs `model` in tract on every input set. Sets of one shape share a plan, split between
    /// the workers; sets whose dynamic dims differ (text lines of different widths, sentences
    /// of different lengths) get a plan per shape, each worker taking whole shapes.
    pub fn run(&self, model: &Model) -> Result<Outputs> {
        let sets = self.sets.as_ref().map_err(|e| e.clone())?;
        let mut groups: Vec<ShapeGroup> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let shapes: Vec<&[usize]> = set.iter().map(|t| t.shape()).collect();
            match groups.iter_mut().find(|g| g.shapes == shapes) {
                Some(g) => g.members.push(i),
                None => groups.push(ShapeGroup {
                    shapes,
                    members: vec![i],
                }),
            }
        }
        let plan = |g: &ShapeGroup| -> Result<Runner> {
            let mut binding = self.binding.clone();
            for (spec, shape) in input_specs(model, &self.binding)?.iter().zip(&g.shapes) {
                binding
                    .input_shapes
                    .insert(spec.name.clone(), shape.to_vec());
            }
            Runner::new(model, &binding, &[])
        };
        // One shape, the usual case: its sets split between the workers, one plan shared.
        // Several: each worker takes whole shapes, planning one at a time.
        let (names, done): (Vec<String>, Vec<Vec<Ran>>) = if let [group] = groups.as_slice() {
            let runner = plan(group)?;
            let chunk = group.members.len().div_ceil(WORKERS).max(1);
            let parts: Vec<&[usize]> = group.members.chunks(chunk).collect();
            let done = in_workers(&parts, |part| {
                part.iter()
                    .map(|&i| Ok((i, runner.run(&sets[i])?)))
                    .collect::<Result<Vec<_>>>()
            })?;
            (runner.outputs, done)
        } else {
            let shares: Vec<Vec<&ShapeGroup>> = (0..WORKERS)
                .map(|w| groups.iter().skip(w).step_by(WORKERS).collect())
                .collect();
            let done = in_workers(&shares, |share| {
                let (mut out, mut names) = (Vec::new(), Vec::new());
                for g in share {
                    let runner = plan(g)?;
                    for &i in &g.members {
                        out.push((i, runner.run(&sets[i])?));
                    }
                    names = runner.outputs;
                }
                Ok((out, names))
            })?;
            let names = done.iter().map(|(_, n)| n).find(|n| !n.is_empty()).cloned();
            let done = done.into_iter().map(|(out, _)| out).collect();
            (names.unwrap_or_default(), done)
        };
        let mut values: Vec<Option<Vec<HostTensor>>> = vec![None; sets.len()];
        for (i, out) in done.into_iter().flatten() {
            values[i] = Some(out);
        }
        Ok(Outputs {
            names,
            values: values
                .into_iter()
                .map(|v| v.expect("every set ran"))
                .collect(),
        })
    }

    /// The feeds to try after this one failed on `model`: its declared spatial size (an
    /// `imgsz` in its metadata, as detector exports write) first, then the common sizes. None
    /// when the user fixed the inputs or no free dim is spatial, where they would change nothing.
    fn retries(&self, model: &Model, opts: &CheckOptions, failure: &str) -> Vec<Feed> {
        if !matches!(opts.inputs, InputSource::Seeded)
            || !has_free_spatial_dims(model, &self.binding)
        {
            return Vec::new();
        }
        let hint = model
            .metadata("imgsz")
            .map(|v| {
                v.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|d| d.parse::<usize>().ok())
                    .filter(|&d| d > 0)
                    .collect::<Vec<_>>()
            })
            .filter(|sizes| !sizes.is_empty());
        hint.into_iter()
            .chain(RETRY_SPATIAL_SIZES.map(|n| vec![n]))
            .map(|sizes| {
                let mut feed = Feed::seeded(model, opts, self.binding.with_spatial_dims(sizes));
                feed.inputs.first_binding_failed = Some(failure.to_string());
                feed
            })
            .collect()
    }
}

/// An input set's index and the outputs the model computed on it.
type Ran = (usize, Vec<HostTensor>);

/// Input sets of one shape, by their indices: one tract plan runs them all.
struct ShapeGroup<'a> {
    shapes: Vec<&'a [usize]>,
    members: Vec<usize>,
}

/// Runs `work` on each of `jobs` on a thread of its own; the results in order.
fn in_workers<J: Sync, T: Send>(
    jobs: &[J],
    work: impl Fn(&J) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|j| s.spawn(|| work(j))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a tract worker panicked")))
            })
            .collect()
    })
}

fn shapes_of(specs: &[InputSpec]) -> Vec<InputShape> {
    specs
        .iter()
        .map(|s| InputShape {
            name: s.name.clone(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// Why a run failed, when it is tract that cannot run the model; other errors are passed on.
fn unrunnable(e: anyhow::Error) -> Result<String> {
    Ok(e.downcast::<Unrunnable>()?.0)
}

/// The original model's inputs and outputs, computed once and reused for every candidate.
pub struct Reference {
    rule: Rule,
    feed: Feed,
    /// Why the original cannot be run, when it cannot.
    outputs: Result<Outputs, String>,
}

impl Reference {
    pub fn new(original: &Model, opts: &CheckOptions) -> Result<Reference> {
        Reference::run(original, opts, Feed::new(original, opts)?)
    }

    /// Runs the original on `first`, or when tract cannot run it there, on the larger
    /// bindings [`Feed`] knows to try. An original that runs on none makes every check
    /// "unverified", with a reason that says what was tried.
    pub fn run(original: &Model, opts: &CheckOptions, first: Feed) -> Result<Reference> {
        let failure = match first.run(original) {
            Ok(outputs) => {
                return Ok(Reference {
                    rule: opts.rule,
                    feed: first,
                    outputs: Ok(outputs),
                })
            }
            Err(e) => unrunnable(e)?,
        };
        let mut tried = Vec::new();
        for feed in first.retries(original, opts, &failure) {
            match feed.run(original) {
                Ok(outputs) => {
                    return Ok(Reference {
                        rule: opts.rule,
                        feed,
                        outputs: Ok(outputs),
                    })
                }
                Err(e) => {
                    unrunnable(e)?;
                    tried.push(dims_text(&feed.binding.spatial_dims));
                }
            }
        }
        let mut reason = failure;
        if !tried.is_empty() {
            write!(
                reason,
                " (with free dims bound to 1; free spatial dims bound to {} failed too: \
                 give --input-shape)",
                tried.join(", ")
            )
            .unwrap();
        }
        if !first.seeded_integers.is_empty() {
            write!(
                reason,
                "; integer or bool input(s) {} were fed seeded values (0 or 1), which this model \
                 may not accept: give real ones with --inputs or --inputs-npz",
                first
                    .seeded_integers
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .unwrap();
        }
        Ok(Reference {
            rule: opts.rule,
            feed: first,
            outputs: Err(reason),
        })
    }

    /// The inputs the original ran on.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// This reference on at most `n` of its input sets, all of one shape (the most common),
    /// without running the original again: a cheaper check for many candidates that only
    /// need to be told apart (each shape costs a tract plan per candidate).
    pub fn few(&self, n: usize) -> Reference {
        let mut feed = self.feed.clone();
        let mut keep: Vec<usize> = Vec::new();
        if let Ok(sets) = &self.feed.sets {
            let shape = |i: usize| {
                sets[i]
                    .iter()
                    .map(|t| t.shape().to_vec())
                    .collect::<Vec<_>>()
            };
            let mut best = (0, 0);
            for i in 0..sets.len() {
                let count = (0..sets.len()).filter(|&j| shape(j) == shape(i)).count();
                if count > best.1 {
                    best = (i, count);
                }
            }
            keep = (0..sets.len())
                .filter(|&j| shape(j) == shape(best.0))
                .take(n)
                .collect();
        }
        if let Ok(sets) = feed.sets.as_mut() {
            *sets = keep.iter().map(|&i| sets[i].clone()).collect();
        }
        let outputs = self
            .outputs
            .as_ref()
            .map_err(Clone::clone)
            .map(|o| Outputs {
                names: o.names.clone(),
                values: keep.iter().map(|&i| o.values[i].clone()).collect(),
            });
        Reference {
            rule: self.rule,
            feed,
            outputs,
        }
    }

    /// Runs `candidate` on the reference inputs and compares.
    pub fn check(&self, candidate: &Model) -> Result<Outcome> {
        // With nothing to compare against, running the candidate would be wasted.
        match self.expected() {
            Ok(_) => self.judge(self.feed.run(candidate)),
            Err(reason) => Ok(Outcome::Unverified(reason)),
        }
    }

    /// Judges `got`, the candidate's run on `feed` made while the reference ran, or runs the
    /// candidate again when the original had to run on another feed.
    pub fn check_run(
        &self,
        candidate: &Model,
        feed: &Feed,
        got: Result<Outputs>,
    ) -> Result<Outcome> {
        if feed.binding == self.feed.binding {
            self.judge(got)
        } else {
            self.check(candidate)
        }
    }

    /// The original's outputs, or why every candidate is unverified when it could not run.
    fn expected(&self) -> Result<&Outputs, String> {
        self.outputs
            .as_ref()
            .map_err(|reason| format!("original: {reason}"))
    }

    /// Compares a candidate's outputs on the reference inputs, computed elsewhere.
    pub fn judge(&self, got: Result<Outputs>) -> Result<Outcome> {
        let expected = match self.expected() {
            Ok(o) => o,
            Err(reason) => return Ok(Outcome::Unverified(reason)),
        };
        let got = match got {
            Ok(o) => o,
            Err(e) => return Ok(Outcome::Unverified(format!("result: {}", unrunnable(e)?))),
        };
        let mut report = compare(&expected.names, &expected.values, &got.values, self.rule);
        report.inputs = self.feed.inputs.clone();
        Ok(Outcome::Checked(report))
    }
}

/// Checks `b` against `a` on the options' inputs.
pub fn compare_models(a: &Model, b: &Model, opts: &CheckOptions) -> Result<Outcome> {
    Reference::new(a, opts)?.check(b)
}

/// Compares per output across all samples.
pub fn compare(
    names: &[String],
    expected: &[Vec<HostTensor>],
    got: &[Vec<HostTensor>],
    rule: Rule,
) -> CheckReport {
    let outputs = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let e: Vec<&HostTensor> = expected.iter().map(|s| &s[i]).collect();
            let g: Vec<&HostTensor> = got.iter().map(|s| &s[i]).collect();
            judge::judge(name, &e, &g, &rule)
        })
        .collect();
    CheckReport {
        samples: expected.len(),
        rule,
        inputs: BoundInputs::default(),
        outputs,
    }
}
