//! `optimize` as a library call: run the pipeline, check the result against the original, and
//! when it disagrees, find the first pass run that broke it.

use anyhow::Result;

use crate::check::{Outcome, Reference};
use crate::ir::Model;
use crate::passes::{run_pipeline, PipelineOptions, PipelineReport};

/// Runs the pipeline on a copy of `model`.
pub fn optimize(model: &Model, opts: &PipelineOptions) -> Result<(Model, PipelineReport)> {
    let mut out = model.clone();
    let report = run_pipeline(&mut out, opts)?;
    Ok((out, report))
}

/// The first pass run (1-based step and pass id) after which the result no longer matches the
/// reference, found by bisecting over `--stop-after`. `None` when every step matches.
pub fn bisect(
    original: &Model,
    opts: &PipelineOptions,
    steps: &[&'static str],
    reference: &Reference,
) -> Result<Option<(usize, &'static str)>> {
    let bad = |k: usize| -> Result<bool> {
        let mut o = opts.clone();
        o.stop_after = Some(k);
        let (m, _) = optimize(original, &o)?;
        Ok(matches!(reference.check(&m)?, Outcome::Checked(r) if !r.ok()))
    };
    if steps.is_empty() || !bad(steps.len())? {
        return Ok(None);
    }
    // Invariant: step `hi` is bad, step `lo` is good (0 = the original, good by definition).
    let (mut lo, mut hi) = (0, steps.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if bad(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some((hi, steps[hi - 1])))
}
