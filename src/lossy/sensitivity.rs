//! How much error each op of a lossy result adds: the result and the model it was made from
//! run on the same samples with each op's output (and the value it read) exposed, and each op
//! is charged the relative L2 error of its output less that of its input. Ranking by the
//! output's error alone would put the last layers first, since every error upstream reaches
//! them; an early layer that adds much harms everything after it.

use anyhow::Result;

use crate::ir::Model;
use crate::runtime::{HostTensor, Plans};

/// An op to measure: its name, the value it writes, and the value it reads that both models
/// compute (`None` where what it reads carries no error, such as a graph input).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Measured {
    pub op: String,
    pub output: String,
    pub input: Option<String>,
}

/// The error each of `ops` adds in `candidate` against `reference` on `samples`, worst first
/// (ties by name): ‖c − r‖ / ‖r‖ of its output less that of its input, at least 0. Both
/// models run once per sample with those values exposed.
pub fn added_errors(
    reference: &Model,
    candidate: &Model,
    mut ops: Vec<Measured>,
    samples: &[Vec<HostTensor>],
) -> Result<Vec<(String, f64)>> {
    ops.sort();
    let mut names: Vec<String> = ops
        .iter()
        .flat_map(|m| std::iter::once(m.output.clone()).chain(m.input.clone()))
        .collect();
    names.sort();
    names.dedup();
    let mut sums = vec![(0f64, 0f64); names.len()];
    let (mut reference_plans, mut candidate_plans) = (
        Plans::new(reference, &names)?,
        Plans::new(candidate, &names)?,
    );
    let values = |t: Vec<HostTensor>| -> Vec<Vec<f32>> {
        t.iter().map(|t| t.to_f32().unwrap_or_default()).collect()
    };
    for sample in samples {
        let r = values(reference_plans.extras(sample)?);
        let c = values(candidate_plans.extras(sample)?);
        for (k, (a, b)) in r.iter().zip(&c).enumerate() {
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
    let mut errors: Vec<(String, f64)> = ops
        .into_iter()
        .map(|m| {
            let before = m.input.as_deref().map_or(0.0, error);
            (m.op, (error(&m.output) - before).max(0.0))
        })
        .collect();
    errors.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(errors)
}
