//! How much error each op of a lossy result adds by itself: the result runs on the samples
//! with each op's inputs and output exposed, and each op of the model it was made from runs
//! alone on exactly those inputs (as it was, in float), so that what upstream ops already
//! lost is not charged to it. The op's error is the relative L2 difference of the two
//! outputs over the samples: every op measured, none at zero by subtraction.

use anyhow::Result;

use crate::ir::{Dim, Model, NodeId, Type};
use crate::runtime::{input_specs, Binding, HostTensor, Plans, Runner};

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
            let expected = runner.run(&inputs)?;
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
