//! Calibration: the float model runs in tract on the samples with the values to quantize
//! exposed as extra outputs, and each value's statistics are accumulated as the samples
//! stream by: its extremes in a first pass, a fixed-bin histogram of its magnitudes in a
//! second (when the range method needs one). Only one sample's activations are held at a
//! time per worker, never all of them; the samples are split between two workers, one per
//! core, each with its own tract plan.

use std::collections::HashMap;

use anyhow::{Context, Result};

use super::ranges::{Method, Stats};
use crate::ir::Model;
use crate::progress::Progress;
use crate::runtime::{Binding, HostTensor, Runner};

/// Workers: one per core of the machines we run on, each with a tract plan of its own.
const WORKERS: usize = 2;

/// The statistics of every value in `values` over `samples` (each one value per model input,
/// in input order).
pub fn calibrate(
    model: &Model,
    values: &[String],
    samples: &[Vec<HostTensor>],
    method: Method,
    progress: &Progress,
) -> Result<HashMap<String, Stats>> {
    let passes = if method == Method::MinMax { 1 } else { 2 };
    let mut stats: HashMap<String, Stats> = HashMap::new();
    for pass in 0..passes {
        progress.step(&format!(
            "calibrating: {} sample(s), pass {} of {passes}",
            samples.len(),
            pass + 1
        ));
        let chunk = samples.len().div_ceil(WORKERS).max(1);
        let parts: Vec<Result<HashMap<String, Stats>>> = std::thread::scope(|s| {
            let workers: Vec<_> = samples
                .chunks(chunk)
                .map(|part| {
                    let known = &stats;
                    s.spawn(move || observe(model, values, part, pass, known))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| anyhow::bail!("a calibration worker panicked"))
                })
                .collect()
        });
        let mut merged: HashMap<String, Stats> = HashMap::new();
        for part in parts {
            for (name, st) in part? {
                merged.entry(name).or_default().merge(&st);
            }
        }
        if pass == 0 {
            stats = merged;
        } else {
            for (name, st) in merged {
                if let Some(s) = stats.get_mut(&name) {
                    s.hist = st.hist;
                    s.hist_max = st.hist_max;
                }
            }
        }
    }
    Ok(stats)
}

/// One worker's pass over `samples`: extremes in pass 0, histograms (over the extremes found
/// in pass 0, in `known`) after.
fn observe(
    model: &Model,
    values: &[String],
    samples: &[Vec<HostTensor>],
    pass: usize,
    known: &HashMap<String, Stats>,
) -> Result<HashMap<String, Stats>> {
    let mut out: HashMap<String, Stats> = HashMap::new();
    // A graph input is read off the sample itself; tract exposes only what nodes compute.
    let inputs: Vec<String> = crate::runtime::input_specs(model, &Binding::default())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let (fed, computed): (Vec<&String>, Vec<&String>) =
        values.iter().partition(|v| inputs.contains(v));
    let computed: Vec<String> = computed.into_iter().cloned().collect();
    let mut plans = Plans::new(model, &computed)?;
    for sample in samples {
        let results = plans
            .extras(sample)
            .context("the float model cannot run in tract for calibration")?;
        let seen = fed
            .iter()
            .map(|&name| {
                (
                    name,
                    &sample[inputs.iter().position(|i| i == name).unwrap()],
                )
            })
            .chain(computed.iter().zip(&results));
        for (name, t) in seen {
            let Some(v) = t.to_f32() else { continue };
            let st = out.entry(name.clone()).or_default();
            if pass == 0 {
                st.observe_extremes(&v);
                st.axis1.observe(&v, t.shape(), 1);
                st.last
                    .observe(&v, t.shape(), t.shape().len().saturating_sub(1));
            } else if let Some(k) = known.get(name) {
                if st.hist.is_empty() {
                    st.min = k.min;
                    st.max = k.max;
                }
                st.observe_histogram(&v);
            }
        }
    }
    Ok(out)
}

/// tract plans of one model that also return `extra` values, one plan per set of input
/// shapes: samples may differ in their dynamic dims.
pub struct Plans<'a> {
    model: &'a Model,
    extra: &'a [String],
    inputs: Vec<String>,
    built: Vec<(Vec<Vec<usize>>, Runner)>,
}

impl<'a> Plans<'a> {
    pub fn new(model: &'a Model, extra: &'a [String]) -> Result<Plans<'a>> {
        let inputs = crate::runtime::input_specs(model, &Binding::default())?
            .into_iter()
            .map(|s| s.name)
            .collect();
        Ok(Plans {
            model,
            extra,
            inputs,
            built: Vec::new(),
        })
    }

    /// The `extra` values of the model run on `sample` (one value per input, in order).
    pub fn extras(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let shapes: Vec<Vec<usize>> = sample.iter().map(|t| t.shape().to_vec()).collect();
        let at = match self.built.iter().position(|(s, _)| *s == shapes) {
            Some(i) => i,
            None => {
                let mut binding = Binding::default();
                for (name, shape) in self.inputs.iter().zip(&shapes) {
                    binding.input_shapes.insert(name.clone(), shape.clone());
                }
                let runner = Runner::new(self.model, &binding, self.extra)?;
                self.built.push((shapes, runner));
                self.built.len() - 1
            }
        };
        let mut out = self.built[at].1.run(sample)?;
        Ok(out.split_off(out.len() - self.extra.len()))
    }
}
