//! Calibration: the float model runs in tract on the samples with the values to quantize
//! exposed as extra outputs, and each value's statistics (extremes, a magnitude histogram,
//! per-channel sums where bias correction wants them) are accumulated as the samples stream
//! by, in one pass. Only one sample's activations are held at a time per worker, never all of
//! them; the samples are split between two workers, one per core. Samples of one set of input
//! shapes share one tract plan; when they differ in their dynamic dims, each worker takes whole
//! sets, with one plan of its own at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::ranges::Stats;
use crate::ir::Model;
use crate::progress::Progress;
use crate::runtime::{Binding, HostTensor, Runner, WORKERS};

/// A value calibration watches, and which of its channel sums to keep (for bias correction:
/// axis 1 for a Conv's input, the last axis for a matrix product's).
#[derive(Clone, Debug)]
pub struct Watch {
    pub name: String,
    pub axis1: bool,
    pub last: bool,
}

/// The statistics of every watched value over `samples` (each one value per model input, in
/// input order), with magnitude histograms when `histogram`.
pub fn calibrate(
    model: &Model,
    watch: &[Watch],
    samples: &[Vec<HostTensor>],
    histogram: bool,
    progress: &Progress,
) -> Result<Observed> {
    let inputs: Vec<String> = crate::runtime::input_specs(model, &Binding::default())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    // A graph input is read off the sample itself; tract exposes only what nodes compute.
    let computed: Vec<String> = watch
        .iter()
        .filter(|w| !inputs.contains(&w.name))
        .map(|w| w.name.clone())
        .collect();
    let sources: Vec<Source> = watch
        .iter()
        .map(|w| match inputs.iter().position(|i| *i == w.name) {
            Some(i) => Source::Input(i),
            None => Source::Computed(computed.iter().position(|c| *c == w.name).unwrap()),
        })
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    for sample in samples {
        let shapes: Vec<&[usize]> = sample.iter().map(|t| t.shape()).collect();
        match groups.iter_mut().find(|(s, _)| *s == shapes) {
            Some((_, group)) => group.push(sample),
            None => groups.push((shapes, vec![sample])),
        }
    }
    let done = AtomicUsize::new(0);
    let seen = Seen {
        watch,
        sources: &sources,
        histogram,
        progress,
        done: &done,
        total: samples.len(),
    };
    progress.step(&format!("calibrating: 0/{} sample(s)", samples.len()));
    let plan = |shapes: &[&[usize]]| {
        let mut binding = Binding::default();
        for (name, shape) in inputs.iter().zip(shapes) {
            binding.input_shapes.insert(name.clone(), shape.to_vec());
        }
        Runner::new(model, &binding, &computed)
            .context("the float model cannot run in tract for calibration")
    };
    let parts = match groups.as_slice() {
        // One set of input shapes, the usual case: both workers share its plan.
        [(shapes, group)] => {
            let runner = plan(shapes)?;
            let chunk = group.len().div_ceil(WORKERS).max(1);
            in_workers(
                group
                    .chunks(chunk)
                    .map(|part| {
                        let (runner, seen) = (&runner, &seen);
                        move || seen.observe(runner, part)
                    })
                    .collect(),
            )
        }
        // Several: each worker takes whole sets, with one plan of its own at a time.
        _ => in_workers(
            (0..WORKERS)
                .map(|w| {
                    let (plan, seen, groups) = (&plan, &seen, &groups);
                    move || {
                        let mut out = HashMap::new();
                        for (shapes, group) in groups.iter().skip(w).step_by(WORKERS) {
                            merge_into(&mut out, seen.observe(&plan(shapes)?, group)?);
                        }
                        Ok(out)
                    }
                })
                .collect(),
        ),
    };
    let mut stats = HashMap::new();
    for part in parts {
        merge_into(&mut stats, part?);
    }
    Ok(stats)
}

/// Statistics by value name.
type Observed = HashMap<String, Stats>;

fn merge_into(stats: &mut Observed, part: Observed) {
    for (name, st) in part {
        stats.entry(name).or_default().merge(&st);
    }
}

/// Runs each job on a thread of its own; their results in order.
fn in_workers<F: FnOnce() -> Result<Observed> + Send>(jobs: Vec<F>) -> Vec<Result<Observed>> {
    std::thread::scope(|s| {
        let workers: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| anyhow::bail!("a calibration worker panicked"))
            })
            .collect()
    })
}

/// Samples of one set of input shapes, which one plan runs.
type Group<'a> = (Vec<&'a [usize]>, Vec<&'a [HostTensor]>);

/// Where a watched value is read: a model input of the sample, or an extra output of the plan.
enum Source {
    Input(usize),
    Computed(usize),
}

/// What every worker shares.
struct Seen<'a> {
    watch: &'a [Watch],
    sources: &'a [Source],
    histogram: bool,
    progress: &'a Progress,
    done: &'a AtomicUsize,
    total: usize,
}

impl Seen<'_> {
    /// One worker's statistics over `samples`.
    fn observe(&self, runner: &Runner, samples: &[&[HostTensor]]) -> Result<Observed> {
        let mut out = Observed::new();
        let extras = self
            .sources
            .iter()
            .filter(|s| matches!(s, Source::Computed(_)))
            .count();
        for sample in samples {
            let mut results = runner
                .run(sample)
                .context("the float model cannot run in tract for calibration")?;
            let results = results.split_off(results.len() - extras);
            for (w, source) in self.watch.iter().zip(self.sources) {
                let t = match *source {
                    Source::Input(i) => &sample[i],
                    Source::Computed(i) => &results[i],
                };
                let Some(v) = t.f32_values() else { continue };
                let st = out.entry(w.name.clone()).or_default();
                st.observe(&v, self.histogram);
                st.rank = st.rank.max(t.shape().len());
                if w.axis1 {
                    st.axis1.observe(&v, t.shape(), 1);
                }
                if w.last {
                    st.last
                        .observe(&v, t.shape(), t.shape().len().saturating_sub(1));
                }
            }
            let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
            self.progress
                .step(&format!("calibrating: {done}/{} sample(s)", self.total));
        }
        Ok(out)
    }
}
