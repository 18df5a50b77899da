//! The job's stages: which of the pipeline's stages its options ask for, the context they
//! share (samples, options, the progress display), and what the lossy ones leave for the
//! check and the report (the model before each stage, their reports).

use anyhow::Result;

use super::Options;
use crate::check::{Outcome, Reference};
use crate::ir::Model;
use crate::lossy::Samples;
use crate::passes::precision::PrecisionReport;
use crate::passes::prune::compensate::CompensationReport;
use crate::passes::prune::{self, BnScales, PruneReport, Selection};
use crate::passes::quant::{self, QuantReport};
use crate::passes::{catalogue, run_stages_watched, selected, PassContext, PipelineReport, Stage};
use crate::progress::Progress;
use crate::report::Summary;

/// The stages a job runs and the context they start from.
pub struct Plan {
    pub stages: Vec<Stage>,
    pub cx: PassContext,
    /// The names of the stages the options ask for, in order.
    wanted: Vec<&'static str>,
}

impl Plan {
    /// The stages `opts` asks for, with the passes it selects, and a context holding what
    /// they need: the samples (read here, when a lossy stage asks for them), each stage's
    /// options, the exclusions, the BatchNormalization scales of the model as given (pruning
    /// may rank channels by them, and simplification fuses them away), the progress display.
    pub fn new(original: &Model, opts: &Options, progress: Progress) -> Result<Plan> {
        let read = opts.quantize.is_some()
            || (opts.prune.is_some() && opts.samples.dir.is_some())
            || (opts.precision.is_some() && opts.samples.given());
        let samples = read
            .then(|| crate::lossy::samples::read(original, &opts.samples))
            .transpose()?;
        let compensate = opts.prune.as_ref().is_some_and(|p| p.compensate) && samples.is_some();
        let equalize = opts.quantize.as_ref().is_some_and(|q| q.equalize);
        let smooth = opts.quantize.as_ref().is_some_and(|q| q.smooth);
        let wanted = |name: &str| match name {
            "simplify" => true,
            "prune" => opts.prune.is_some(),
            "compensate" => compensate,
            "equalize" => equalize,
            "smooth" => smooth,
            "quantize" => opts.quantize.is_some(),
            "precision" => opts.precision.is_some(),
            _ => false,
        };
        let all = catalogue(opts.pipeline.fold_limit);
        let stages = selected(
            &opts.pipeline,
            all.into_iter().filter(|s| wanted(s.name)).collect(),
        )?;
        let wanted = stages.iter().map(|s| s.name).collect();
        let mut cx = PassContext::new(opts.pipeline.explain);
        cx.exclude = opts.exclude.clone();
        cx.provide(progress);
        if let Some(s) = samples {
            cx.provide(s);
        }
        if let Some(p) = &opts.prune {
            cx.provide(p.clone());
            cx.provide(BnScales::of(original));
        }
        if let Some(q) = &opts.quantize {
            cx.provide(q.clone());
        }
        if let Some(p) = &opts.precision {
            cx.provide(p.clone());
        }
        Ok(Plan { stages, cx, wanted })
    }

    /// Fresh copies of the job's stages from `first` on (a search runs them again on the model
    /// `first` was handed), with every pass: the caller selects.
    pub fn stages_from(&self, first: &str, fold_limit: u64) -> Vec<Stage> {
        let at = self.wanted.iter().position(|&s| s == first);
        let names = &self.wanted[at.unwrap_or(self.wanted.len())..];
        (catalogue(fold_limit).into_iter())
            .filter(|s| names.contains(&s.name))
            .collect()
    }

    /// The samples the lossy stages calibrate on, if any.
    pub fn samples(&self) -> Option<&Samples> {
        self.cx.get::<Samples>()
    }

    /// Runs the stages on a copy of `original`, keeping the model before each lossy stage.
    pub fn transform(&self, original: &Model, opts: &Options) -> Result<Transformed> {
        let mut cx = self.cx.fork();
        let mut result = original.clone();
        let (mut before, mut param_bytes) = (Vec::new(), Vec::new());
        let (lossy, checked) = (opts.lossy(), opts.check.is_some());
        let pipeline = run_stages_watched(
            &mut result,
            &self.stages,
            &opts.pipeline,
            &mut cx,
            &mut |stage, model| {
                if lossy && stage != "simplify" {
                    param_bytes.push((stage, Summary::of(model).param_bytes()));
                    // The model before the precision stage serves its search alone, which
                    // only a check starts: kept without one, it would hold every f32 weight
                    // beside its 16-bit copy.
                    if checked || stage != "precision" {
                        before.push((stage, model.clone()));
                    }
                }
            },
        )?;
        let mut lossy = Lossy {
            before,
            param_bytes,
            cx,
            ..Lossy::default()
        };
        lossy.pruning = lossy.prune_report(opts, &result, &pipeline);
        lossy.quantization = lossy.quant_report(opts, &result);
        lossy.precision = lossy.precision_report(opts, &result);
        Ok(Transformed {
            result,
            pipeline,
            lossy,
        })
    }
}

/// What the stages made.
pub struct Transformed {
    pub result: Model,
    pub pipeline: PipelineReport,
    pub lossy: Lossy,
}

/// What the lossy stages leave for the check, the search and the report.
#[derive(Default)]
pub struct Lossy {
    /// The model before each stage after simplify, by stage (but the precision stage's
    /// without a check).
    before: Vec<(&'static str, Model)>,
    /// The bytes of the parameters before each stage after simplify, by stage.
    param_bytes: Vec<(&'static str, u64)>,
    /// The context once the stages ran: what their preparations computed.
    pub cx: PassContext,
    pub quantization: Option<QuantReport>,
    pub pruning: Option<PruneReport>,
    pub precision: Option<PrecisionReport>,
}

impl Lossy {
    /// The model as it was before stage `stage` ran, when it ran.
    pub fn before(&self, stage: &str) -> Option<&Model> {
        self.before
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, m)| m)
    }

    /// The model as it was once `stage` was over: before the next stage, or the result.
    fn after<'m>(&'m self, stage: &str, result: &'m Model) -> Option<&'m Model> {
        let at = self.before.iter().position(|(s, _)| *s == stage)?;
        Some(self.before.get(at + 1).map_or(result, |(_, m)| m))
    }

    fn prune_report(
        &self,
        opts: &Options,
        result: &Model,
        pipeline: &PipelineReport,
    ) -> Option<PruneReport> {
        let p = opts.prune.as_ref()?;
        let chosen = self.cx.get::<Selection>()?;
        let unpruned = self.before("prune")?;
        let last = if self.before("compensate").is_some() {
            "compensate"
        } else {
            "prune"
        };
        let pruned = self.after(last, result)?;
        Some(PruneReport {
            ratio: p.ratio,
            importance: p.importance,
            scope: p.scope,
            round_to: p.round_to,
            groups: chosen.groups.clone(),
            params_before: Summary::of(unpruned).param_count(),
            params_after: Summary::of(pruned).param_count(),
            macs_before: chosen.macs,
            macs_after: prune::macs(pruned),
            importance_fallbacks: chosen.fallbacks,
            compensation: self.cx.get::<CompensationReport>().cloned(),
            uncompensated: None,
            seconds: (pipeline.stage_time("prune") + pipeline.stage_time("compensate"))
                .as_secs_f64(),
        })
    }

    fn quant_report(&self, opts: &Options, result: &Model) -> Option<QuantReport> {
        let q = opts.quantize.as_ref()?;
        let samples = self.cx.get::<Samples>()?;
        Some(quant::report(
            self.before("quantize")?,
            result,
            q,
            samples,
            &self.cx,
        ))
    }

    fn precision_report(&self, opts: &Options, result: &Model) -> Option<PrecisionReport> {
        let p = opts.precision.as_ref()?;
        let bytes = self.param_bytes.iter().find(|(s, _)| *s == "precision")?.1;
        Some(PrecisionReport::of(bytes, result, p, &self.cx))
    }

    /// For a compensated pruning, how the pruned model agreed with the original before
    /// compensation, for the report.
    pub fn measure_uncompensated(
        &mut self,
        reference: &Reference,
        progress: &Progress,
    ) -> Result<()> {
        let Some(m) = self.before("compensate") else {
            return Ok(());
        };
        if self
            .pruning
            .as_ref()
            .is_none_or(|p| p.compensation.is_none())
        {
            return Ok(());
        }
        progress.step("checking the pruned model without compensation");
        if let Outcome::Checked(r) = reference.check(m)? {
            if let Some(p) = self.pruning.as_mut() {
                p.uncompensated = Some(r.agreement());
            }
        }
        Ok(())
    }
}
