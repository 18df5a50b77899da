//! `--bisect`: after a failed check, the first pass run (a step, as `--stop-after` counts)
//! whose output no longer passes the job's rule against the original: the exact rule for a
//! rewrite, the lossy rule for a quantized or pruned result. The stages run again from the
//! original, through the same runner, stopped after k steps; what their preparations
//! computed (a pruning plan, calibration ranges) is reused, since the model each saw is the
//! same whatever k.

use anyhow::Result;

use super::stages::Lossy;
use super::Job;
use crate::check::{Outcome, Reference};
use crate::ir::Model;
use crate::passes::{run_stages, PassContext, PipelineOptions, PipelineReport, Stage};
use crate::report::{Bisect, CheckStatus};

/// Bisects when the check failed and the options ask for it.
pub fn when_failed(
    job: &Job,
    status: &CheckStatus,
    pipeline: &PipelineReport,
    lossy: &Lossy,
    reference: &Reference,
) -> Result<Option<Bisect>> {
    if !job.opts.bisect || !matches!(status, CheckStatus::Mismatch { .. }) {
        return Ok(None);
    }
    job.plan.cx.progress().step("bisecting over the steps");
    let found = bisect(
        job.original,
        &job.plan.stages,
        &job.opts.pipeline,
        &lossy.cx,
        &pipeline.steps,
        reference,
    )?;
    Ok(Some(match found {
        Some((step, pass)) => Bisect::FirstBadStep { step, pass },
        None => Bisect::NoSingleStep,
    }))
}

/// The first step (1-based, and its pass id) after which the result of `stages` on
/// `original` no longer passes against `reference`; `None` when every step passes. `cx` holds
/// what the stages' preparations computed.
pub fn bisect(
    original: &Model,
    stages: &[Stage],
    opts: &PipelineOptions,
    cx: &PassContext,
    steps: &[&'static str],
    reference: &Reference,
) -> Result<Option<(usize, &'static str)>> {
    let bad = |k: usize| -> Result<bool> {
        let o = PipelineOptions {
            stop_after: Some(k),
            ..opts.clone()
        };
        let mut m = original.clone();
        run_stages(&mut m, stages, &o, &mut cx.fork())?;
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
