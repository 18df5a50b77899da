//! The `optimize` job as one library call, in named phases:
//!
//! ```text
//!   load ─▶ transform ─▶ check ─▶ restore ─▶ bisect ─▶ write ─▶ report
//!           (stages)    (tract,   (lossy:    (on a      (staged during
//!                       vs the    give ops   failed     the check; put in
//!                       original) back)      check)     place if it passed)
//! ```
//!
//! The CLI is a thin layer over [`optimize`]; [`optimize_model`] does the same on a model in
//! memory. Nothing here prints but the progress display.

mod bisect;
mod restore;
mod restore_precision;
mod stages;
mod verdict;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use self::stages::Transformed;
use self::verdict::Checked;
use crate::check::CheckOptions;
use crate::files;
use crate::ir::Model;
use crate::lossy::SampleOptions;
use crate::passes::precision::PrecisionOptions;
use crate::passes::prune::PruneOptions;
use crate::passes::quant::QuantOptions;
use crate::passes::{run_pipeline, PipelineOptions, PipelineReport};
use crate::progress::Progress;
use crate::report::{CheckStatus, Report, Seconds, Summary};

pub use self::bisect::bisect;

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
    /// The samples lossy stages calibrate on and are checked with.
    pub samples: SampleOptions,
    /// Prune channels after simplifying.
    pub prune: Option<PruneOptions>,
    /// Quantize to int8 after simplifying (and pruning).
    pub quantize: Option<QuantOptions>,
    /// Store weights and compute in 16 bits, last.
    pub precision: Option<PrecisionOptions>,
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
            samples: SampleOptions::default(),
            prune: None,
            quantize: None,
            precision: None,
            exclude: Vec::new(),
        }
    }
}

impl Options {
    /// Whether a stage changes the numbers on purpose: the result is then judged by the lossy
    /// rule, on held-back samples.
    pub fn lossy(&self) -> bool {
        self.quantize.is_some() || self.prune.is_some() || self.precision.is_some()
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
    let loaded = files::load(&req.input)?;
    let load_time = total.elapsed();
    files::ensure_not_input(&req.output, &req.input, &loaded.external_files)?;
    let save = files::save_options(req.external_data);
    let done = Job::new(&loaded.model, &req.options, progress)?.run(|result| {
        let t = Instant::now();
        files::stage(result, &req.output, save).map(|staged| (staged, t.elapsed()))
    })?;
    let (staged, save_time) = done.staged?;
    let mut report = done.report;
    report.input = Some(req.input.clone());
    report.output = Some(req.output.clone());
    report.before = report.before.with_file(&req.input)?;
    report.notes = (loaded.warnings.iter())
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
    let done = Job::new(model, opts, progress)?.run(|_| ())?;
    let mut report = done.report;
    report.seconds.total = total.elapsed().as_secs_f64();
    Ok(Optimized {
        model: done.result,
        report,
    })
}

/// Runs the simplify stage on a copy of `model`.
pub fn run_passes(model: &Model, opts: &PipelineOptions) -> Result<(Model, PipelineReport)> {
    let mut out = model.clone();
    let report = run_pipeline(&mut out, opts)?;
    Ok((out, report))
}

/// A job on a model: its stages and the context they share, and how its result is checked.
struct Job<'a> {
    original: &'a Model,
    opts: &'a Options,
    plan: stages::Plan,
    /// How the result is checked: the options' check, by the lossy rule on held-back samples
    /// when a stage is lossy.
    check: Option<CheckOptions>,
}

/// What a job made: the result, its report without the file parts, and what `stage` made of
/// the result.
struct Done<S> {
    result: Model,
    report: Report,
    staged: S,
}

impl<'a> Job<'a> {
    /// Reads the samples the lossy stages need and builds the stage list.
    fn new(original: &'a Model, opts: &'a Options, progress: Progress) -> Result<Job<'a>> {
        let plan = stages::Plan::new(original, opts, progress)?;
        let check = verdict::check_options(opts, plan.samples());
        Ok(Job {
            original,
            opts,
            plan,
            check,
        })
    }

    /// What the check runs for `m`: `m` itself, or, for a 16-bit result tract cannot run as it
    /// is (bf16, 16-bit inputs), an equivalent it can.
    fn checkable<'m>(&self, m: &'m Model) -> Result<std::borrow::Cow<'m, Model>> {
        match &self.opts.precision {
            Some(p) => crate::passes::precision::emulate::checked_form(m, p),
            None => Ok(std::borrow::Cow::Borrowed(m)),
        }
    }

    /// Transform and check (overlapped), then, on a failed check, restore and bisect.
    fn run<S: Send>(self, stage: impl Fn(&Model) -> S + Sync) -> Result<Done<S>> {
        let before = Summary::of(self.original);
        let checked = verdict::transform_and_check(&self, &stage)?;
        let Checked {
            transformed,
            mut staged,
            reference,
            result_run,
            mut notes,
            pass_time,
            check_time,
        } = checked;
        let Transformed {
            mut result,
            pipeline,
            mut lossy,
            ..
        } = transformed;
        let t = Instant::now();
        let (status, bisected) = match (reference, result_run) {
            (Some(reference), Some((feed, run))) => {
                let outcome = reference.check_run(&*self.checkable(&result)?, &feed, run)?;
                let mut status = CheckStatus::from(outcome);
                lossy.measure_uncompensated(&reference, self.plan.cx.progress())?;
                // Precision first: it is the last stage, and its search keeps the stages
                // before; when even f32 everywhere it touched fails, int8's search runs, its
                // candidates lowered again.
                let restored = match restore_precision::restore(
                    &self,
                    &mut lossy,
                    &result,
                    &mut status,
                    &reference,
                )? {
                    Some(m) => Some(m),
                    None => restore::restore(
                        &self,
                        &mut lossy,
                        &pipeline,
                        &result,
                        &mut status,
                        &reference,
                        &mut notes,
                    )?,
                };
                if let Some(better) = restored {
                    staged = stage(&better);
                    result = better;
                }
                let bisected = bisect::when_failed(&self, &status, &pipeline, &lossy, &reference)?;
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
            explain: self.opts.pipeline.explain,
            pipeline,
            check: status,
            seconds: Seconds {
                passes: pass_time.as_secs_f64(),
                check: check_time.as_secs_f64(),
                ..Seconds::default()
            },
            bisect: bisected,
            notes,
            quantization: lossy.quantization,
            pruning: lossy.pruning,
            precision: lossy.precision,
        };
        Ok(Done {
            result,
            report,
            staged,
        })
    }
}

fn write_json(path: &std::path::Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    crate::onnx::write_atomic(path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())?;
        Ok(())
    })
}
