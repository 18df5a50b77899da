//! The check phase: the original runs in tract once (its reference), the result runs on the
//! same inputs, and the rule judges. Checking is the largest cost of `optimize`, so
//! everything that can overlap does: the original runs on one thread while the stages run on
//! this one; then the result runs here while another thread stages its write. Calibration and
//! compensation keep every core busy themselves, so before a lossy stage the original runs
//! first, and its tract plan is gone before theirs are built.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::stages::Transformed;
use super::{Job, Options};
use crate::check::{both_at_once_fit, CheckOptions, Feed, InputSource, Outputs, Reference, Rule};
use crate::ir::Model;
use crate::lossy::samples::MIN_HELD_BACK;
use crate::lossy::Samples;
use crate::progress::Progress;
use crate::report::Summary;

/// How a job's result is checked: as the options say, but a lossy result (quantized, pruned)
/// by the lossy rule unless the user set its limits, on the samples calibration did not see
/// when there are samples.
pub fn check_options(opts: &Options, samples: Option<&Samples>) -> Option<CheckOptions> {
    let mut c = opts.check.clone()?;
    if opts.lossy() {
        if let Some(s) = samples {
            c.inputs = InputSource::Sets(s.held_back.clone());
        }
        if matches!(c.rule, Rule::Exact(_)) {
            c.rule = Rule::lossy();
        }
    }
    Some(c)
}

/// What the transform and check phase made.
pub struct Checked<S> {
    pub transformed: Transformed,
    pub staged: S,
    /// The original's run, when the job checks.
    pub reference: Option<Reference>,
    /// The inputs the result ran on, and its outputs there.
    pub result_run: Option<(Feed, Result<Outputs>)>,
    pub notes: Vec<String>,
    pub pass_time: Duration,
    pub check_time: Duration,
}

/// Runs the stages and the original's reference (beside them, or first), then the result in
/// tract beside `stage`.
pub fn transform_and_check<S: Send>(
    job: &Job,
    stage: &(impl Fn(&Model) -> S + Sync),
) -> Result<Checked<S>> {
    let check = job.check.as_ref();
    let feed = check.map(|c| Feed::new(job.original, c)).transpose()?;
    let mut notes = Vec::new();
    if let (true, Some(s)) = (job.check.is_some() && job.opts.lossy(), job.plan.samples()) {
        if s.held_back.len() < MIN_HELD_BACK {
            notes.push(format!(
                "note: the result was checked on {} held-back sample(s), fewer than {MIN_HELD_BACK}: a verdict on so few is weak; give at least {} samples",
                s.held_back.len(),
                2 * MIN_HELD_BACK
            ));
        }
    }
    let fits = both_at_once_fit(Summary::of(job.original).param_bytes());
    let one_at_a_time = check.is_some() && (job.opts.one_at_a_time || !fits);
    if one_at_a_time && !job.opts.one_at_a_time {
        notes.push("note: checking the original and the result one after the other, to fit in the memory available".to_string());
    }
    let progress = job.plan.cx.progress();
    progress.step("running passes");
    let original_first = one_at_a_time || job.opts.lossy();
    let checked = check.zip(feed.as_ref());
    let reference =
        |(c, feed): (&CheckOptions, &Feed)| Reference::run(job.original, c, feed.clone());
    let (transformed, staged, run, reference, pass_time, check_time) = std::thread::scope(|s| {
        let first = Instant::now();
        let done_first = checked.filter(|_| original_first).map(reference);
        let first_time = first.elapsed();
        let beside = checked
            .filter(|_| !original_first)
            .map(|c| s.spawn(move || reference(c)));
        let t = Instant::now();
        let transformed = job.plan.transform(job.original, job.opts);
        let pass_time = t.elapsed();
        let staged = match &transformed {
            // Without a check, nothing runs: no emulation to build (it widens every weight).
            Ok(tr) => Some(
                match feed {
                    Some(_) => job.checkable(&tr.result),
                    None => Ok(std::borrow::Cow::Borrowed(&tr.result)),
                }
                .map(|checked| {
                    stage_while_running(&tr.result, &checked, stage, feed.as_ref(), progress)
                }),
            ),
            Err(_) => None,
        };
        let reference = match done_first {
            Some(r) => Some(r),
            None => beside.map(|h| {
                h.join()
                    .map_err(|_| anyhow!("the thread running the original panicked"))?
            }),
        }
        .transpose()?;
        let check_time = match check {
            Some(_) => t.elapsed() - pass_time + first_time,
            None => Duration::ZERO,
        };
        let transformed = transformed?;
        let (staged, run) =
            staged.ok_or_else(|| anyhow!("a result is staged once the stages succeed"))??;
        anyhow::Ok((transformed, staged?, run, reference, pass_time, check_time))
    })?;
    Ok(Checked {
        transformed,
        staged,
        reference,
        result_run: feed.zip(run),
        notes,
        pass_time,
        check_time,
    })
}

/// Stages `result` on another thread while what the check runs for it (`checked`) runs in
/// tract on `feed` here.
fn stage_while_running<S: Send>(
    result: &Model,
    checked: &Model,
    stage: &(impl Fn(&Model) -> S + Sync),
    feed: Option<&Feed>,
    progress: &Progress,
) -> (Result<S>, Option<Result<Outputs>>) {
    std::thread::scope(|s| {
        let staged = s.spawn(|| stage(result));
        if feed.is_some() {
            progress.step("checking the result against the original in tract");
        }
        let run = feed.map(|feed| feed.run(checked));
        let staged = staged
            .join()
            .map_err(|_| anyhow!("the thread writing the result panicked"));
        (staged, run)
    })
}
