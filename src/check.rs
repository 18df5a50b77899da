//! Original-versus-result comparison, used by `optimize`, `verify` and the tests.
//!
//! The reference model runs once on seeded (or the user's) inputs; every candidate is run on
//! the same inputs and compared output by output: max abs and rel difference, cosine similarity,
//! top-1 agreement for [batch, classes] outputs. A model tract cannot run is "unverified",
//! never "ok".

use std::fmt::Write;

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::ir::Model;
use crate::runtime::{feedable_inputs, Binding, HostTensor, Runner, Unrunnable};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// What a pure rewrite must meet.
    pub const EXACT_REWRITE: Tolerance = Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
    };
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub binding: Binding,
    pub tolerance: Tolerance,
    /// Number of seeded input sets, when the user gives none.
    pub samples: usize,
    pub seed: u64,
    /// The user's input sets; each is one value per model input, in input order.
    pub inputs: Vec<Vec<HostTensor>>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            binding: Binding::default(),
            tolerance: Tolerance::EXACT_REWRITE,
            samples: 1,
            seed: 0,
            inputs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputDiff {
    pub name: String,
    pub max_abs: f64,
    pub max_rel: f64,
    pub cosine: f64,
    /// Share of rows whose argmax agrees, for [batch, classes] outputs.
    pub top1: Option<f64>,
    pub ok: bool,
    /// Set when the outputs cannot be compared element by element (shape or type differ).
    pub mismatch: Option<String>,
    /// What atol is multiplied by: the output's largest magnitude, at least 1.
    pub scale: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub samples: usize,
    pub tolerance: Tolerance,
    pub outputs: Vec<OutputDiff>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.outputs.iter().all(|o| o.ok)
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        writeln!(
            s,
            "{:<28} {:>11} {:>11} {:>10} {:>7} {:>9}  verdict",
            "output", "max abs", "max rel", "cosine", "top-1", "scale"
        )
        .unwrap();
        for o in &self.outputs {
            let top1 = o
                .top1
                .map_or("-".to_string(), |t| format!("{:.1}%", t * 100.0));
            let verdict = match (&o.mismatch, o.ok) {
                (Some(m), _) => format!("MISMATCH ({m})"),
                (None, true) => "ok".to_string(),
                (None, false) => "MISMATCH".to_string(),
            };
            writeln!(
                s,
                "{:<28} {:>11.3e} {:>11.3e} {:>10.6} {:>7} {:>9.3}  {verdict}",
                o.name, o.max_abs, o.max_rel, o.cosine, top1, o.scale
            )
            .unwrap();
        }
        writeln!(
            s,
            "({} sample(s); |a - b| <= atol * scale + rtol * |a|, rtol {:e}, atol {:e})",
            self.samples, self.tolerance.rtol, self.tolerance.atol
        )
        .unwrap();
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

/// Runs `model` in tract on every input set.
pub fn run_all(model: &Model, binding: &Binding, inputs: &[Vec<HostTensor>]) -> Result<Outputs> {
    let runner = Runner::new(model, binding, &[])?;
    let values = inputs
        .iter()
        .map(|set| runner.run(set))
        .collect::<Result<_>>()?;
    Ok(Outputs {
        names: runner.outputs,
        values,
    })
}

/// [`run_all`] on the sets from [`inputs_for`]; without them, unrunnable for the same reason.
pub fn run_on(
    model: &Model,
    binding: &Binding,
    inputs: &Result<Vec<Vec<HostTensor>>, Unrunnable>,
) -> Result<Outputs> {
    run_all(model, binding, inputs.as_ref().map_err(|e| e.clone())?)
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

/// The input sets a check feeds every model: the user's, or `samples` seeded sets shaped after
/// `model`'s declared inputs, which a rewrite never changes. Known before any model runs, so
/// the original and a candidate can run at the same time.
pub fn inputs_for(model: &Model, opts: &CheckOptions) -> Result<Vec<Vec<HostTensor>>, Unrunnable> {
    if !opts.inputs.is_empty() {
        return Ok(opts.inputs.clone());
    }
    let specs = feedable_inputs(model, &opts.binding)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    (0..opts.samples.max(1))
        .map(|_| {
            specs
                .iter()
                .map(|spec| HostTensor::random(spec, &mut rng))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Unrunnable(format!("cannot make seeded inputs: {e:#}")))
        })
        .collect()
}

/// The original model's inputs and outputs, computed once and reused for every candidate.
pub struct Reference {
    opts: CheckOptions,
    inputs: Vec<Vec<HostTensor>>,
    /// Why the original cannot be run, when it cannot.
    outputs: Result<Outputs, String>,
}

impl Reference {
    pub fn new(original: &Model, opts: &CheckOptions) -> Result<Reference> {
        let inputs = inputs_for(original, opts);
        let outputs = run_on(original, &opts.binding, &inputs);
        Reference::from_run(opts, inputs.unwrap_or_default(), outputs)
    }

    /// A reference from the original's outputs on `inputs`, computed elsewhere (on another
    /// thread, while the passes run). An unrunnable original makes every check "unverified".
    pub fn from_run(
        opts: &CheckOptions,
        inputs: Vec<Vec<HostTensor>>,
        outputs: Result<Outputs>,
    ) -> Result<Reference> {
        let outputs = match outputs {
            Ok(o) => Ok(o),
            Err(e) => Err(e.downcast::<Unrunnable>()?.0),
        };
        Ok(Reference {
            opts: opts.clone(),
            inputs,
            outputs,
        })
    }

    /// Runs `candidate` on the reference inputs and compares.
    pub fn check(&self, candidate: &Model) -> Result<Outcome> {
        // With nothing to compare against, running the candidate would be wasted.
        match self.expected() {
            Ok(_) => self.judge(run_all(candidate, &self.opts.binding, &self.inputs)),
            Err(verdict) => Ok(verdict),
        }
    }

    /// The original's outputs, or the verdict every candidate gets when it could not run.
    fn expected(&self) -> Result<&Outputs, Outcome> {
        self.outputs
            .as_ref()
            .map_err(|reason| Outcome::Unverified(format!("original: {reason}")))
    }

    /// Compares a candidate's outputs on the reference inputs, computed elsewhere.
    pub fn judge(&self, got: Result<Outputs>) -> Result<Outcome> {
        let expected = match self.expected() {
            Ok(o) => o,
            Err(verdict) => return Ok(verdict),
        };
        let got = match got {
            Ok(o) => o,
            Err(e) => {
                let u = e.downcast::<Unrunnable>()?;
                return Ok(Outcome::Unverified(format!("result: {}", u.0)));
            }
        };
        Ok(Outcome::Checked(compare(
            &expected.names,
            &expected.values,
            &got.values,
            self.opts.tolerance,
        )))
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
    tol: Tolerance,
) -> CheckReport {
    let outputs = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut acc = Acc::default();
            let mut mismatch = None;
            for (e, g) in expected.iter().zip(got) {
                let (e, g) = (&e[i], &g[i]);
                if e.shape() != g.shape() {
                    mismatch = Some(format!("shape {:?} vs {:?}", e.shape(), g.shape()));
                    continue;
                }
                match (e.to_f64(), g.to_f64()) {
                    (Some(ev), Some(gv)) => acc.add(&ev, &gv, e.shape(), tol),
                    _ if e.same_as(g) => {}
                    _ => mismatch = Some("non-numeric values differ".into()),
                }
            }
            acc.finish(name, mismatch)
        })
        .collect();
    CheckReport {
        samples: expected.len(),
        tolerance: tol,
        outputs,
    }
}

#[derive(Default)]
struct Acc {
    scale: f64,
    max_abs: f64,
    max_rel: f64,
    dot: f64,
    ee: f64,
    gg: f64,
    violations: usize,
    rows: usize,
    rows_agree: usize,
    classified: bool,
}

impl Acc {
    fn add(&mut self, e: &[f64], g: &[f64], shape: &[usize], tol: Tolerance) {
        // An element passes when |a - b| <= atol * max(1, scale) + rtol * |a|, where scale is the
        // largest finite magnitude in this output: fp32 rounding differences (a fused weight,
        // a reordered sum) are relative to the values that flow through the network, so a
        // logit near zero next to logits of 25 carries the error of 25, not of 0.
        let scale = e
            .iter()
            .filter(|x| x.is_finite())
            .fold(1.0f64, |m, x| m.max(x.abs()));
        self.scale = self.scale.max(scale);
        for (&x, &y) in e.iter().zip(g) {
            if x.is_nan() && y.is_nan() || x == y {
                self.dot += if x.is_finite() { x * y } else { 0.0 };
                self.ee += if x.is_finite() { x * x } else { 0.0 };
                self.gg += if y.is_finite() { y * y } else { 0.0 };
                continue;
            }
            let d = (x - y).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            self.max_abs = self.max_abs.max(d);
            self.max_rel = self.max_rel.max(d / x.abs().max(f64::MIN_POSITIVE));
            if d > tol.atol * scale + tol.rtol * x.abs() {
                self.violations += 1;
            }
            self.dot += x * y;
            self.ee += x * x;
            self.gg += y * y;
        }
        if let [rows, classes] = shape {
            if *classes > 1 {
                self.classified = true;
                for r in 0..*rows {
                    let row = |v: &[f64]| argmax(&v[r * classes..(r + 1) * classes]);
                    self.rows += 1;
                    if row(e) == row(g) {
                        self.rows_agree += 1;
                    }
                }
            }
        }
    }

    fn finish(self, name: &str, mismatch: Option<String>) -> OutputDiff {
        let cosine = if self.ee == 0.0 && self.gg == 0.0 {
            1.0
        } else {
            self.dot / (self.ee.sqrt() * self.gg.sqrt()).max(f64::MIN_POSITIVE)
        };
        OutputDiff {
            name: name.to_string(),
            max_abs: self.max_abs,
            max_rel: self.max_rel,
            cosine,
            top1: self
                .classified
                .then(|| self.rows_agree as f64 / self.rows.max(1) as f64),
            ok: self.violations == 0 && mismatch.is_none(),
            mismatch,
            scale: self.scale,
        }
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
