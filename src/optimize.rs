//! The `optimize` job as one library call: load, passes, the check of the result against the
//! original, the staged write, bisect on a mismatch, and the report. The CLI is a thin layer
//! over [`optimize`]; [`optimize_model`] does the same on a model in memory. Nothing here
//! prints but the progress spinner.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::check::{
    both_at_once_fit, CheckOptions, CheckReport, Feed, InputSource, Outcome, Reference, Rule,
};
use crate::ir::Model;
use crate::passes::prune::{self, BnScales, PruneOptions, PruneReport};
use crate::passes::quant::qdq::{Calibration, Placement};
use crate::passes::quant::{self, QuantOptions, QuantReport, Samples};
use crate::passes::{run_pipeline, PipelineOptions, PipelineReport};
use crate::progress::Progress;
use crate::report::{Bisect, CheckStatus, Report, Seconds, Summary};

/// An `optimize` job on files.
#[derive(Clone, Debug)]
pub struct Request {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Where to write the report as JSON.
    pub report: Option<PathBuf>,
    /// Store tensors of 1 KiB or more in `<output>.data` (always done past 2 GiB).
    pub external_data: bool,
    pub options: Options,
}

/// How a job runs, on files or in memory.
#[derive(Clone, Debug)]
pub struct Options {
    pub pipeline: PipelineOptions,
    /// How the result is compared with the original; `None` does not compare.
    pub check: Option<CheckOptions>,
    /// Run the original and the result in tract one after the other (about half the memory,
    /// a slower check); chosen by itself when both at once would not fit.
    pub one_at_a_time: bool,
    /// On a mismatch, find the first pass run whose output disagrees.
    pub bisect: bool,
    /// No progress display.
    pub quiet: bool,
    /// Prune channels after simplifying.
    pub prune: Option<PruneOptions>,
    /// Quantize to int8 after simplifying (and pruning).
    pub quantize: Option<QuantOptions>,
    /// Node names or op types no lossy stage may touch.
    pub exclude: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pipeline: PipelineOptions::default(),
            check: Some(CheckOptions::default()),
            one_at_a_time: false,
            bisect: false,
            quiet: false,
            prune: None,
            quantize: None,
            exclude: Vec::new(),
        }
    }
}

/// What [`optimize_model`] gives back: the result, also after a mismatch (for a caller to
/// look at; [`Report::passed`] says whether to use it), and the report.
pub struct Optimized {
    pub model: Model,
    pub report: Report,
}

/// Optimizes `req.input` into `req.output`. The result is written only when it passed its
/// check (or was not checked); a mismatch is not an error but a report that did not pass, with
/// nothing written. Errors are bad input: a file that cannot be read or written, a model or
/// input file that makes no sense, a pass that failed.
pub fn optimize(req: &Request) -> Result<Report> {
    let total = Instant::now();
    let progress = Progress::new(req.options.quiet);
    progress.step("loading");
    let loaded = crate::load(&req.input)?;
    let load_time = total.elapsed();
    crate::ensure_not_input(&req.output, &req.input, &loaded.external_files)?;
    let save = crate::save_options(req.external_data);
    let job = run(&loaded.model, &req.options, &progress, |result| {
        let t = Instant::now();
        crate::stage(result, &req.output, save).map(|staged| (staged, t.elapsed()))
    })?;
    let (staged, save_time) = job.staged?;
    let mut report = job.report;
    report.input = Some(req.input.clone());
    report.output = Some(req.output.clone());
    report.before = report.before.with_file(&req.input)?;
    report.notes = loaded
        .warnings
        .iter()
        .map(|w| format!("warning: {w}"))
        .chain(report.notes)
        .collect();
    if report.passed() {
        staged.commit()?;
        report.after = report.after.with_file(&req.output)?;
    }
    report.seconds.load = load_time.as_secs_f64();
    report.seconds.save = save_time.as_secs_f64();
    report.seconds.total = total.elapsed().as_secs_f64();
    if let Some(path) = &req.report {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// [`optimize`] on a model in memory.
pub fn optimize_model(model: &Model, opts: &Options) -> Result<Optimized> {
    let total = Instant::now();
    let progress = Progress::new(opts.quiet);
    let job = run(model, opts, &progress, |_| ())?;
    let mut report = job.report;
    report.seconds.total = total.elapsed().as_secs_f64();
    Ok(Optimized {
        model: job.result,
        report,
    })
}

/// What a quantization kept for a second try: the simplified float model and its ranges.
struct Quantized {
    report: QuantReport,
    float: Model,
    calibration: Calibration,
    /// The simplified model before cross-layer equalization, when it changed something.
    unequalized: Option<Model>,
}

/// What pruning kept for the report: its summary, and the pruned model before compensation.
struct Pruned {
    report: PruneReport,
    uncompensated: Option<Model>,
}

/// What [`transform`] made: the result, the passes' report, and what the lossy stages kept.
type Transformed = (Model, PipelineReport, Option<Quantized>, Option<Pruned>);

/// The simplify pipeline, then, when asked, pruning and quantization of the simplified model
/// (calibrated on `samples`).
fn transform(
    original: &Model,
    opts: &Options,
    samples: Option<&Samples>,
    progress: &Progress,
) -> Result<Transformed> {
    let (mut float, mut report) = run_passes(original, &opts.pipeline)?;
    let mut pruned = None;
    if let Some(p) = &opts.prune {
        let t = Instant::now();
        progress.step("finding channel groups");
        let calibration = samples.map(|s| s.calibration.as_slice());
        let chosen = prune::select(&float, p, calibration, &BnScales::of(original))?;
        let plan = chosen.plan;
        progress.step("removing channels");
        let (mut result, more) = prune::prune(&float, plan.clone(), &opts.pipeline)?;
        report.extend(more);
        let (mut compensation, mut uncompensated) = (None, None);
        if let (true, Some(s)) = (p.compensate, samples) {
            progress.step("compensating for the removed channels");
            uncompensated = Some(result.clone());
            compensation = Some(prune::compensate::compensate(
                &float,
                &mut result,
                &plan,
                &s.calibration,
            )?);
        }
        let report = PruneReport {
            ratio: p.ratio,
            importance: p.importance,
            scope: p.scope,
            round_to: p.round_to,
            groups: chosen.groups,
            params_before: Summary::of(&float).param_count(),
            params_after: Summary::of(&result).param_count(),
            macs_before: chosen.macs,
            macs_after: prune::macs(&result),
            importance_fallbacks: chosen.fallbacks,
            compensation,
            uncompensated: None,
            seconds: t.elapsed().as_secs_f64(),
        };
        float = result;
        pruned = Some(Pruned {
            report,
            uncompensated,
        });
    }
    let (Some(q), Some(samples)) = (&opts.quantize, samples) else {
        return Ok((float, report, None, pruned));
    };
    let mut unequalized = None;
    if q.equalize {
        let plain = float.clone();
        let more = quant::equalize(&mut float, &opts.pipeline)?;
        unequalized = more.steps.contains(&"equalize-conv-pairs").then_some(plain);
        report.extend(more);
    }
    let calibration = quant::prepare(&float, q, samples, progress)?;
    progress.step("inserting Q/DQ");
    let (model, more, cx) = quant::quantize(&float, &calibration, &opts.exclude, &opts.pipeline)?;
    report.extend(more);
    let summary = quant::report(&float, &model, q, samples, &cx);
    Ok((
        model,
        report,
        Some(Quantized {
            report: summary,
            float,
            calibration,
            unequalized,
        }),
        pruned,
    ))
}

/// The samples the lossy stages calibrate on and are checked with: quantization's, or the
/// directory pruning was given.
fn lossy_samples(original: &Model, opts: &Options) -> Result<Option<Samples>> {
    if let Some(q) = &opts.quantize {
        return quant::samples(original, q).map(Some);
    }
    let Some(p) = opts.prune.as_ref().filter(|p| p.calib.is_some()) else {
        return Ok(None);
    };
    let q = QuantOptions {
        calib: p.calib.clone(),
        preprocess: p.preprocess.clone(),
        samples: p.samples,
        ..QuantOptions::default()
    };
    quant::samples(original, &q).map(Some)
}

/// Tries at most this many fallbacks before a quantized result is refused.
const FALLBACK_TRIES: usize = 6;

/// Once a fallback passes, tries at most this many of its float ops back in int8.
const PUT_BACK_TRIES: usize = 4;

/// After a quantized result failed its check: the most sensitive ops (by their measured
/// error) read float activations, 1, 2, 4, ... of them, until the result passes or the tries
/// run out, and then return to int8 one by one where it still passes
/// ([`quant::fewest_float`]). Their weights stay int8 (one scale over an activation is what
/// int8 loses most on, and per-channel weights rarely), except for TensorRT, which runs a
/// layer in int8 only with both inputs quantized; where that search finds nothing, it is run
/// again with those ops wholly float. The result that passed, with its check, if one did.
fn fall_back(
    q: &mut Quantized,
    result: &Model,
    failed: &CheckReport,
    opts: &Options,
    samples: &Samples,
    reference: &Reference,
    progress: &Progress,
) -> Result<Option<(Model, CheckStatus)>> {
    let quant_opts = opts.quantize.as_ref().expect("quantizing");
    // Equalization evens out weight ranges but can uneven a per-tensor activation's channels:
    // once the result failed, the model without it is quantized too, and the search goes on
    // from whichever checked better.
    let mut without = None;
    if let Some(plain) = q.unequalized.take() {
        progress.step("quantizing without cross-layer equalization, to compare");
        let calibration = quant::prepare(&plain, quant_opts, samples, progress)?;
        let (candidate, _, cx) =
            quant::quantize(&plain, &calibration, &opts.exclude, &opts.pipeline)?;
        let outcome = reference.check(&candidate)?;
        if let Outcome::Checked(r) = &outcome {
            if worst_cosine(r) > worst_cosine(failed) {
                q.report = quant::report(&plain, &candidate, quant_opts, samples, &cx);
                q.report.equalization_dropped = true;
                (q.float, q.calibration) = (plain, calibration);
                if r.ok() {
                    return Ok(Some((candidate, CheckStatus::from(outcome))));
                }
                without = Some(candidate);
            }
        }
    }
    let result = without.as_ref().unwrap_or(result);
    progress.step("measuring each quantized op's error");
    let errors = quant::layer_errors(&q.float, result, &samples.held_back)?;
    let ranked: Vec<String> = errors.iter().map(|(n, _)| n.clone()).collect();
    q.report.layer_errors = errors;
    let tiers: &[bool] = match quant_opts.placement {
        Placement::Inputs => &[false],
        _ => &[true, false],
    };
    let mut tries = 0;
    let mut found = None;
    for &weights_int8 in tiers {
        found = quant::fewest_float(&ranked, FALLBACK_TRIES, PUT_BACK_TRIES, |set| {
            tries += 1;
            let mut calibration = q.calibration.clone();
            let mut exclude = opts.exclude.clone();
            let what = if weights_int8 {
                calibration.weights_only = set.to_vec();
                "float activations"
            } else {
                exclude.extend(set.iter().cloned());
                "float"
            };
            progress.step(&format!("trying {} sensitive op(s) in {what}", set.len()));
            let (candidate, _, cx) =
                quant::quantize(&q.float, &calibration, &exclude, &opts.pipeline)?;
            let outcome = reference.check(&candidate)?;
            Ok(matches!(&outcome, Outcome::Checked(r) if r.ok())
                .then_some((candidate, outcome, cx)))
        })?;
        if found.is_some() {
            break;
        }
    }
    q.report.fallback_tries += tries;
    let Some((back, (candidate, outcome, cx))) = found else {
        return Ok(None);
    };
    let mut report = quant::report(&q.float, &candidate, quant_opts, samples, &cx);
    report.layer_errors = std::mem::take(&mut q.report.layer_errors);
    for (name, why) in &mut report.left_float {
        if back.contains(name) {
            *why = "returned to float: the check failed with it quantized".into();
        }
    }
    report.fallback = back;
    report.fallback_tries = q.report.fallback_tries;
    report.equalization_dropped = q.report.equalization_dropped;
    q.report = report;
    Ok(Some((candidate, CheckStatus::from(outcome))))
}

/// The lowest cosine over a check's outputs (0 for one that could not be compared).
fn worst_cosine(r: &CheckReport) -> f64 {
    r.outputs
        .iter()
        .map(|o| if o.mismatch.is_some() { 0.0 } else { o.cosine })
        .fold(f64::INFINITY, f64::min)
}

/// Runs the pipeline on a copy of `model`.
pub fn run_passes(model: &Model, opts: &PipelineOptions) -> Result<(Model, PipelineReport)> {
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
        let (m, _) = run_passes(original, &o)?;
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

/// A job's result, its report without the file parts, and what `stage` made of the result.
struct Job<S> {
    result: Model,
    report: Report,
    staged: S,
}

/// The job on a model: passes, check, bisect. `stage` gets the result while it is being
/// checked (to write it to a temporary file), so that the write costs no time of its own.
fn run<S: Send>(
    original: &Model,
    opts: &Options,
    progress: &Progress,
    stage: impl Fn(&Model) -> S + Sync,
) -> Result<Job<S>> {
    let before = Summary::of(original);
    let mut notes = Vec::new();
    // A quantized or pruned result is judged on samples calibration did not see (when there
    // are samples), by the lossy rule unless the user set its limits.
    let samples = lossy_samples(original, opts)?;
    let lossy = opts.quantize.is_some() || opts.prune.is_some();
    let lossy_check = opts.check.clone().filter(|_| lossy).map(|mut c| {
        if let Some(s) = &samples {
            c.inputs = InputSource::Sets(s.held_back.clone());
        }
        if matches!(c.rule, Rule::Exact(_)) {
            c.rule = Rule::lossy();
        }
        c
    });
    let check = lossy_check.as_ref().or(opts.check.as_ref());
    let first = check.map(|c| Feed::new(original, c)).transpose()?;
    let one_at_a_time =
        check.is_some() && (opts.one_at_a_time || !both_at_once_fit(before.param_bytes()));
    if one_at_a_time && !opts.one_at_a_time {
        notes.push("note: checking the original and the result one after the other, to fit in the memory available".to_string());
    }
    let reference = |c: &CheckOptions, feed: &Feed| Reference::run(original, c, feed.clone());
    progress.step("running passes");
    // Checking is the largest cost of `optimize`, so everything that can overlap does: the
    // original runs in tract on one thread while the passes run on this one; then the result
    // runs in tract here while another thread stages its write. Calibration and compensation
    // keep every core busy themselves, so before a lossy stage the original runs first, and
    // its tract plan is gone before theirs are built.
    let original_first = one_at_a_time || lossy;
    let (passes, pass_time, check_time, staged, reference, result_run) =
        std::thread::scope(|s| -> Result<_> {
            let checked = check.zip(first.as_ref());
            // One at a time, the original's tract plan is gone before the result's is built.
            let first_run = Instant::now();
            let original_done = checked
                .filter(|_| original_first)
                .map(|(c, feed)| reference(c, feed));
            let first_run = first_run.elapsed();
            let original_thread = checked
                .filter(|_| !original_first)
                .map(|(c, feed)| s.spawn(move || reference(c, feed)));
            let t = Instant::now();
            let passes = transform(original, opts, samples.as_ref(), progress);
            let pass_time = t.elapsed();
            let (staged, result_run) = match &passes {
                Ok((result, _, _, _)) => std::thread::scope(|s| {
                    let staged = s.spawn(|| stage(result));
                    if check.is_some() {
                        progress.step("checking the result against the original in tract");
                    }
                    let result_run = first.as_ref().map(|feed| feed.run(result));
                    let staged = staged
                        .join()
                        .map_err(|_| anyhow!("the thread writing the result panicked"));
                    (Some(staged), result_run)
                }),
                Err(_) => (None, None),
            };
            let reference = match original_done {
                Some(r) => Some(r),
                None => original_thread.map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("the thread running the original panicked"))?
                }),
            }
            .transpose()?;
            let check_time = if check.is_some() {
                t.elapsed() - pass_time + first_run
            } else {
                Duration::ZERO
            };
            Ok((passes, pass_time, check_time, staged, reference, result_run))
        })?;
    let (mut result, pipeline, mut quantized, mut pruned) = passes?;
    let mut staged =
        staged.ok_or_else(|| anyhow!("a result is staged once the passes succeed"))??;
    let t = Instant::now();
    let (status, bisected) = match (&reference, &first, result_run) {
        (Some(reference), Some(feed), Some(run)) => {
            let mut status = CheckStatus::from(reference.check_run(&result, feed, run)?);
            if let Some(p) = pruned.as_mut() {
                if let Some(m) = p.uncompensated.take() {
                    progress.step("checking the pruned model without compensation");
                    if let Outcome::Checked(r) = reference.check(&m)? {
                        p.report.uncompensated = Some(agreement(&r));
                    }
                }
            }
            let mut search = opts.quantize.as_ref().is_some_and(|q| q.fallback);
            // Returning ops to float cannot undo what pruning lost.
            if let (true, Some(q), true) = (search, quantized.as_ref(), pruned.is_some()) {
                if matches!(&status, CheckStatus::Mismatch { .. }) {
                    progress.step("checking the pruned float model");
                    if matches!(reference.check(&q.float)?, Outcome::Checked(r) if !r.ok()) {
                        notes.push("note: the pruned float model already fails the check: no op is returned to float; prune less or lower the limits".to_string());
                        search = false;
                    }
                }
            }
            if let (CheckStatus::Mismatch { report }, Some(q), Some(samples), true) =
                (&status, quantized.as_mut(), samples.as_ref(), search)
            {
                if let Some((better, passed)) =
                    fall_back(q, &result, report, opts, samples, reference, progress)?
                {
                    staged = stage(&better);
                    (result, status) = (better, passed);
                }
            }
            let bisected = match (&status, opts.bisect) {
                (CheckStatus::Mismatch { .. }, true) => Some(
                    match bisect(original, &opts.pipeline, &pipeline.steps, reference)? {
                        Some((step, pass)) => Bisect::FirstBadStep { step, pass },
                        None => Bisect::NoSingleStep,
                    },
                ),
                _ => None,
            };
            (status, bisected)
        }
        _ => (CheckStatus::Skipped, None),
    };
    let check_time = check_time + t.elapsed();
    let report = Report {
        input: None,
        output: None,
        before,
        after: Summary::of(&result),
        explain: opts.pipeline.explain,
        pipeline,
        check: status,
        seconds: Seconds {
            passes: pass_time.as_secs_f64(),
            check: check_time.as_secs_f64(),
            ..Seconds::default()
        },
        bisect: bisected,
        notes,
        quantization: quantized.map(|q| q.report),
        pruning: pruned.map(|p| p.report),
    };
    Ok(Job {
        result,
        report,
        staged,
    })
}

/// The least cosine over the outputs and the least top-1 agreement of those that have one.
fn agreement(r: &crate::check::CheckReport) -> (f64, Option<f64>) {
    let cosine = r
        .outputs
        .iter()
        .map(|o| o.cosine)
        .fold(f64::INFINITY, f64::min);
    let top1 = r.outputs.iter().filter_map(|o| o.top1).reduce(f64::min);
    (cosine, top1)
}

fn write_json(path: &std::path::Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    crate::onnx::write_atomic(path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())?;
        Ok(())
    })
}
