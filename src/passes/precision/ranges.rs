//! What stays f32 by measurement: one instrumented float run over the calibration samples
//! records, for every float value the main graph's nodes compute (graph outputs aside), its
//! largest magnitude and its smallest non-zero one, and how many of its non-zero values lie
//! below the 16-bit type's normal range. A value past the type's largest (65,504 for fp16)
//! would become infinite, one mostly below its normal range (6.1e-5 for fp16) loses its
//! digits: their producers and their readers stay in f32. Streamed,
//! one sample at a time per worker; values inside bodies are not measured (tract runs a body
//! as one op).

use std::collections::HashMap;

use anyhow::Result;

use super::rules::Why;
use super::types::infer;
use super::{Kind, PrecisionOptions};
use crate::ir::{DType, Def, Graph, Model, NodeId};
use crate::lossy::Samples;
use crate::passes::{PassContext, Prepare};
use crate::runtime::{HostTensor, Plans, WORKERS};

/// What one value held over the samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub max_abs: f32,
    pub min_nonzero: f32,
    pub nonzero: u64,
    /// Non-zero values below the 16-bit type's normal range.
    pub below_normal: u64,
}

impl Default for Range {
    fn default() -> Range {
        Range {
            max_abs: 0.0,
            min_nonzero: f32::INFINITY,
            nonzero: 0,
            below_normal: 0,
        }
    }
}

impl Range {
    fn observe(&mut self, values: &[f32], normal: f32) {
        for &x in values {
            let a = x.abs();
            if !a.is_finite() || a == 0.0 {
                continue;
            }
            self.max_abs = self.max_abs.max(a);
            self.min_nonzero = self.min_nonzero.min(a);
            self.nonzero += 1;
            self.below_normal += u64::from(a < normal);
        }
    }

    fn merge(&mut self, o: &Range) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.min_nonzero = self.min_nonzero.min(o.min_nonzero);
        self.nonzero += o.nonzero;
        self.below_normal += o.below_normal;
    }
}

/// The measured ranges by value name, over `samples` samples; `note` says why nothing was
/// measured when nothing was.
#[derive(Clone, Debug, Default)]
pub struct Ranges {
    pub values: HashMap<String, Range>,
    pub samples: usize,
    pub note: Option<String>,
}

impl Ranges {
    /// Why node `n` of the main graph `g` stays in f32 by what its outputs held, or by what
    /// it reads: a value 16 bits cannot hold is made in f32 and read in f32, or the Cast
    /// between would lose it all the same.
    pub fn why(&self, g: &Graph, n: NodeId, kind: Kind) -> Option<Why> {
        let node = g.node(n);
        let made = node.outputs().iter().flatten().map(|&y| ("makes", y));
        let read = node.inputs().iter().flatten().map(|&x| ("reads", x));
        for (how, v) in made.chain(read) {
            let name = g.value(v).name();
            let Some(r) = self.values.get(name) else {
                continue;
            };
            if r.max_abs > kind.max() {
                let what = format!(
                    "{how} '{name}', which reaches {:e}, past {kind}'s {}",
                    r.max_abs,
                    kind.max()
                );
                return Some(Why::new("range", what));
            }
            if r.nonzero > 0 && 2 * r.below_normal > r.nonzero {
                let share = 100.0 * r.below_normal as f64 / r.nonzero as f64;
                let what = format!(
                    "{how} '{name}', {share:.0}% of whose non-zero values are below {kind}'s normal range ({:e}; the smallest is {:e})",
                    kind.normal(),
                    r.min_nonzero
                );
                return Some(Why::new("range", what));
            }
        }
        None
    }
}

/// The precision stage's preparation: measures the [`Ranges`] on the calibration samples in
/// the context, when it holds real ones (random data has no real ranges).
pub struct MeasureRanges;

impl Prepare for MeasureRanges {
    fn id(&self) -> &'static str {
        "measure-ranges"
    }

    fn about(&self) -> &'static str {
        "run the float model in tract on the samples and record each value's largest and smallest magnitude"
    }

    fn run(&self, model: &Model, cx: &mut PassContext) -> Result<()> {
        let kind = cx.get::<PrecisionOptions>().map_or(Kind::F16, |o| o.kind);
        let ranges = match cx.get::<Samples>() {
            None => Ranges::default(),
            Some(s) if s.random => Ranges {
                note: Some("random samples have no real ranges: none measured".into()),
                ..Ranges::default()
            },
            Some(s) => {
                cx.progress().step("measuring value ranges");
                measure(model, &s.calibration, kind).unwrap_or_else(|e| Ranges {
                    note: Some(format!("ranges not measured: {e:#}")),
                    ..Ranges::default()
                })
            }
        };
        cx.provide(ranges);
        Ok(())
    }
}

/// The ranges of every f32 value nodes of the main graph compute, over `samples`, split
/// between the workers.
pub fn measure(model: &Model, samples: &[Vec<HostTensor>], kind: Kind) -> Result<Ranges> {
    let g = &model.graph;
    let types = infer(g, &HashMap::new(), model.opset("").unwrap_or(1));
    let mut names: Vec<String> = (g.values())
        .filter(|(v, x)| matches!(x.def(), Def::Node { .. }) && !g.is_output(*v))
        .filter(|(v, _)| types.get(v) == Some(&DType::F32))
        .map(|(_, x)| x.name().to_string())
        .collect();
    names.sort();
    let chunk = samples.len().div_ceil(WORKERS).max(1);
    let parts: Vec<Result<HashMap<String, Range>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (samples.chunks(chunk))
            .map(|part| {
                let names = &names;
                s.spawn(move || observe(model, names, part, kind))
            })
            .collect();
        (workers.into_iter())
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| anyhow::bail!("a range worker panicked"))
            })
            .collect()
    });
    let mut values: HashMap<String, Range> = HashMap::new();
    for part in parts {
        for (name, r) in part? {
            values.entry(name).or_default().merge(&r);
        }
    }
    Ok(Ranges {
        values,
        samples: samples.len(),
        note: None,
    })
}

/// One worker's ranges over `samples`.
fn observe(
    model: &Model,
    names: &[String],
    samples: &[Vec<HostTensor>],
    kind: Kind,
) -> Result<HashMap<String, Range>> {
    let mut plans = Plans::new(model, names)?;
    let mut out: HashMap<String, Range> = HashMap::new();
    for sample in samples {
        for (name, t) in names.iter().zip(plans.extras(sample)?) {
            if let Some(v) = t.f32_values() {
                out.entry(name.clone())
                    .or_default()
                    .observe(&v, kind.normal());
            }
        }
    }
    Ok(out)
}
