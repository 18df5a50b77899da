//! How much each op of a lossy result costs, measured two ways:
//!
//! - [`output_impacts`]: each op made lossy alone, the rest of the model as it was, and each
//!   op given back alone from the fully lossy result, judged at the model's outputs by the
//!   check's own measure (the worst cosine over outputs, their parts and samples) on a few
//!   samples. What the check sees, so the ranking the search bisects over is the right one
//!   even where an op's own error says little (a last class convolution whose small logit
//!   error a sigmoid turns into lost detections) or where ops harm only together. Two
//!   candidates and two short runs per op.
//! - [`local_errors`]: the result runs on the samples with each op's inputs and output
//!   exposed, and each op of the model it was made from runs alone on exactly those inputs,
//!   so that what upstream ops already lost is not charged to it: the relative L2 difference
//!   of the two outputs. One run of the result for all ops: for models with too many ops to
//!   build a candidate for each.

use anyhow::{Context, Result};

use crate::check::{Outcome, Reference};
use crate::ir::{Dim, Model, NodeId, Type};
use crate::progress::Progress;
use crate::runtime::{input_specs, Binding, HostTensor, Plans, Runner};

/// Samples each op's impact is judged on: enough to see a destroyed part, few enough that
/// measuring n ops costs about as much as n/4 checks.
pub const IMPACT_SAMPLES: usize = 4;

/// Rankings of more ops than this use [`local_errors`]: each op's impact costs a candidate.
pub const IMPACT_MAX_OPS: usize = 256;

/// What each op costs at the outputs, two ways, on [`IMPACT_SAMPLES`] of `reference`'s
/// samples (of one shape), as 1 − the worst cosine the check sees: made lossy alone, the
/// rest of the model as it was (`alone(op)`); and how much the fully lossy result `failing`
/// gains when that op alone is given back (`without(op)`), which catches ops that only harm
/// together (a layer's two attention products). Each op's cost is the larger; worst first
/// (ties by name).
pub fn output_impacts(
    ops: &[String],
    reference: &Reference,
    failing: &Model,
    progress: &Progress,
    mut alone: impl FnMut(&str) -> Result<Model>,
    mut without: impl FnMut(&str) -> Result<Model>,
) -> Result<Vec<(String, f64)>> {
    let few = reference.few(IMPACT_SAMPLES);
    let distance = |m: &Model| -> Result<f64> {
        Ok(match few.check(m)? {
            Outcome::Checked(r) => (1.0 - r.worst_cosine()).clamp(0.0, 2.0),
            // A candidate tract cannot run is as far from the original as can be.
            Outcome::Unverified(_) => 2.0,
        })
    };
    let all = distance(failing)?;
    let mut impacts = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        progress.step(&format!(
            "measuring each op's impact: {}/{}",
            i + 1,
            ops.len()
        ));
        let harm = distance(&alone(op)?)?;
        let gain = all - distance(&without(op)?)?;
        let cost = harm.max(gain);
        impacts.push((op.clone(), if cost.is_nan() { 2.0 } else { cost }));
    }
    impacts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(impacts)
}

/// An op to measure: its name (in both models), the values it reads in the result as they
/// were before the result rounded them (x of x ─▶ Q ─▶ DQ ─▶ op, in the order of the op's
/// non-constant inputs), and the value it writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Local {
    pub op: String,
    pub inputs: Vec<String>,
    pub output: String,
}

/// The error each of `ops` adds in `candidate`, by itself, against how the same op of
/// `reference` computes on the same inputs; worst first (ties by name).
pub fn local_errors(
    reference: &Model,
    candidate: &Model,
    mut ops: Vec<Local>,
    samples: &[Vec<HostTensor>],
) -> Result<Vec<(String, f64)>> {
    ops.sort();
    // Graph inputs are read off the sample; tract exposes what nodes compute.
    let fed: Vec<String> = input_specs(candidate, &Binding::default())?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut names: Vec<String> = ops
        .iter()
        .flat_map(|l| l.inputs.iter().chain(std::iter::once(&l.output)).cloned())
        .filter(|v| !fed.contains(v))
        .collect();
    names.sort();
    names.dedup();
    let nodes: Vec<NodeId> = ops
        .iter()
        .map(|l| {
            let g = &reference.graph;
            g.node_ids()
                .find(|&n| g.node(n).name() == l.op)
                .ok_or_else(|| anyhow::anyhow!("op '{}' is not in the float model", l.op))
        })
        .collect::<Result<_>>()?;
    // Each op alone, planned once per set of input shapes it meets.
    let mut alone: Vec<Vec<(Vec<Vec<usize>>, Runner)>> = ops.iter().map(|_| Vec::new()).collect();
    let mut candidate_plans = Plans::new(candidate, &names)?;
    let mut sums = vec![(0f64, 0f64); ops.len()];
    for sample in samples {
        let values = candidate_plans.extras(sample)?;
        let value = |v: &str| match fed.iter().position(|f| f == v) {
            Some(i) => &sample[i],
            None => &values[names.binary_search_by(|m| m.as_str().cmp(v)).unwrap()],
        };
        for (k, l) in ops.iter().enumerate() {
            // The op as it was reads f32: a 16-bit input is fed as its exact f32 copy.
            let inputs: Vec<HostTensor> = l.inputs.iter().map(|v| value(v).widened()).collect();
            let runner = alone_at(reference, nodes[k], &inputs, &mut alone[k])?;
            let expected = runner
                .run(&inputs)
                .with_context(|| format!("op '{}' alone on inputs {:?}", l.op, l.inputs))?;
            let (Some(e), Some(g)) = (expected[0].to_f32(), value(&l.output).to_f32()) else {
                continue;
            };
            for (x, y) in e.iter().zip(&g) {
                sums[k].0 += ((x - y) as f64).powi(2);
                sums[k].1 += (*x as f64).powi(2);
            }
        }
    }
    let mut errors: Vec<(String, f64)> = ops
        .into_iter()
        .zip(sums)
        .map(|(l, (d, n))| (l.op, (d / n.max(f64::MIN_POSITIVE)).sqrt()))
        .collect();
    errors.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(errors)
}

/// The plan running op `n` of `reference` alone on inputs shaped like `inputs`, from `built`
/// or made and kept there.
fn alone_at<'b>(
    reference: &Model,
    n: NodeId,
    inputs: &[HostTensor],
    built: &'b mut Vec<(Vec<Vec<usize>>, Runner)>,
) -> Result<&'b Runner> {
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    if let Some(i) = built.iter().position(|(s, _)| *s == shapes) {
        return Ok(&built[i].1);
    }
    let types: Vec<Type> = inputs
        .iter()
        .map(|t| {
            let dims = t.shape().iter().map(|&d| Dim::Known(d as i64)).collect();
            Type::tensor(t.dtype().unwrap_or(crate::ir::DType::F32), dims)
        })
        .collect();
    let model = reference.of_node(n, &types)?;
    built.push((shapes, Runner::new(&model, &Binding::default(), &[])?));
    Ok(&built.last().expect("pushed").1)
}
