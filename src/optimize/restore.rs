//! After a quantized result failed its check: the most sensitive ops are given back, through
//! the shared search of [`crate::lossy::search`], until the result passes. Each candidate is
//! the quantize stage run again through the pipeline, on the float model it was handed, with
//! what it is given changed (ops that read float activations, ops excluded).

use anyhow::Result;

use super::stages::Lossy;
use super::Job;
use crate::check::{Outcome, Reference};
use crate::ir::Model;
use crate::lossy::search::{self, Restored};
use crate::lossy::sensitivity::{local_errors, output_impacts, IMPACT_MAX_OPS};
use crate::lossy::Samples;
use crate::passes::quant::qdq::{Calibration, Placement};
use crate::passes::quant::{self, QuantOptions};
use crate::passes::{run_stages, selected, PassContext, PipelineOptions, PipelineReport};
use crate::report::CheckStatus;

/// Runs the search when the quantized `result` failed its check and the options allow it;
/// the result that passed, with `status` and the quantization report updated, if one did.
pub fn restore(
    job: &Job,
    lossy: &mut Lossy,
    pipeline: &PipelineReport,
    result: &Model,
    status: &mut CheckStatus,
    reference: &Reference,
    notes: &mut Vec<String>,
) -> Result<Option<Model>> {
    let (CheckStatus::Mismatch { report: failed }, Some(q)) =
        (&*status, job.opts.quantize.as_ref())
    else {
        return Ok(None);
    };
    let (Some(float), Some(samples), Some(cal)) = (
        lossy.before("quantize").cloned(),
        lossy.cx.get::<Samples>(),
        lossy.cx.get::<Calibration>().cloned(),
    ) else {
        return Ok(None);
    };
    if !q.fallback {
        return Ok(None);
    }
    let progress = job.plan.cx.progress();
    // Returning ops to float cannot undo what pruning lost.
    if job.opts.prune.is_some() {
        progress.step("checking the pruned float model");
        if matches!(reference.check(&float)?, Outcome::Checked(r) if !r.ok()) {
            notes.push("note: the pruned float model already fails the check: no op is returned to float; prune less or lower the limits".to_string());
            return Ok(None);
        }
    }
    let mut search = Search {
        job,
        q,
        samples,
        float,
        cal,
        report: lossy
            .quantization
            .take()
            .expect("a quantized job has its report"),
    };
    let mut worst = failed.worst_cosine();
    let mut failing = result.clone();
    if let Some(plain) = unequalized(lossy, pipeline) {
        match search.without_equalization(plain, reference, &mut worst)? {
            Compared::Passed(m, s) => {
                *status = s;
                lossy.quantization = Some(search.report);
                return Ok(Some(m));
            }
            Compared::Better(m) => failing = m,
            Compared::Worse => {}
        }
    }
    let found = search.give_back(&failing, reference)?;
    let passed = found.map(|(m, s)| {
        *status = s;
        m
    });
    lossy.quantization = Some(search.report);
    Ok(passed)
}

/// The model before equalization, when equalization changed it.
fn unequalized(lossy: &Lossy, pipeline: &PipelineReport) -> Option<Model> {
    let changed = pipeline.steps.contains(&"equalize-conv-pairs");
    changed.then(|| lossy.before("equalize").cloned()).flatten()
}

/// What the search works from and reports into.
struct Search<'a> {
    job: &'a Job<'a>,
    q: &'a QuantOptions,
    samples: &'a Samples,
    /// The float model the quantize stage was handed.
    float: Model,
    cal: Calibration,
    report: quant::QuantReport,
}

/// How the model quantized without cross-layer equalization checked.
enum Compared {
    Passed(Model, CheckStatus),
    Better(Model),
    Worse,
}

impl Search<'_> {
    /// Equalization evens out weight ranges but can uneven a per-tensor activation's
    /// channels: once the result failed, the model without it is quantized too (calibrated
    /// afresh), and the search goes on from whichever checked better.
    fn without_equalization(
        &mut self,
        plain: Model,
        reference: &Reference,
        worst: &mut f64,
    ) -> Result<Compared> {
        let progress = self.job.plan.cx.progress();
        progress.step("quantizing without cross-layer equalization, to compare");
        let plain = self.smoothed(plain)?;
        let (candidate, cx) = self.quantize(&plain, None, &self.job.opts.exclude)?;
        let outcome = reference.check(&*self.job.checkable(&candidate)?)?;
        let Outcome::Checked(r) = &outcome else {
            return Ok(Compared::Worse);
        };
        if r.worst_cosine() <= *worst {
            return Ok(Compared::Worse);
        }
        *worst = r.worst_cosine();
        self.report = quant::report(&plain, &candidate, self.q, self.samples, &cx);
        self.report.equalization_dropped = true;
        self.cal = cx.get::<Calibration>().cloned().expect("calibrated");
        self.float = plain;
        if r.ok() {
            return Ok(Compared::Passed(candidate, CheckStatus::from(outcome)));
        }
        Ok(Compared::Better(candidate))
    }

    /// Ranks the quantized ops of `failing` by the error each adds, then searches each tier
    /// (float activations with int8 weights, then wholly float; wholly float only for
    /// TensorRT, which runs a layer in int8 only with both inputs quantized).
    fn give_back(
        &mut self,
        failing: &Model,
        reference: &Reference,
    ) -> Result<Option<(Model, CheckStatus)>> {
        let progress = self.job.plan.cx.progress();
        progress.step("measuring each quantized op's error");
        let errors = self.sensitivity(failing, reference)?;
        let ranked: Vec<String> = errors.iter().map(|(n, _)| n.clone()).collect();
        // TensorRT runs a layer in int8 only with both inputs quantized: no mild way there.
        let mild = self.q.placement != Placement::Inputs;
        let mut tries = self.report.fallback_tries;
        let weights = quant::weight_elements(&self.float);
        let worth = |op: &str| weights.get(op).copied().unwrap_or(0) as f64;
        let found = search::restore(&ranked, &worth, mild, &mut tries, |mild, whole| {
            let cal = self.cal.clone().with_weights_only(mild);
            let mut exclude = self.job.opts.exclude.clone();
            exclude.extend(whole.iter().cloned());
            progress.step(&format!(
                "trying {} op(s) with float activations and {} in float",
                mild.len(),
                whole.len()
            ));
            let (candidate, cx) = self.quantize(&self.float, Some(cal), &exclude)?;
            let outcome = reference.check(&*self.job.checkable(&candidate)?)?;
            Ok(matches!(&outcome, Outcome::Checked(r) if r.ok())
                .then_some((candidate, outcome, cx)))
        })?;
        self.report.fallback_tries = tries;
        self.report.layer_errors = errors;
        let Some(Restored {
            mild, whole, found, ..
        }) = found
        else {
            return Ok(None);
        };
        let (candidate, outcome, cx) = found;
        self.record(&candidate, &cx, [mild, whole].concat());
        Ok(Some((candidate, CheckStatus::from(outcome))))
    }

    /// Each quantized op of `failing` with what it costs: its impact at the outputs when it
    /// alone is quantized, or, for models of very many ops, the error it adds by itself.
    fn sensitivity(&self, failing: &Model, reference: &Reference) -> Result<Vec<(String, f64)>> {
        let ops = quant::quantized_ops(failing);
        // What tract runs: the candidates themselves, or their emulation under --precision.
        let checked = self.job.checkable(failing)?;
        if ops.len() > IMPACT_MAX_OPS {
            let measured = quant::measured(&self.float, failing);
            return local_errors(&self.float, &checked, measured, &self.samples.held_back);
        }
        let failing = &*checked;
        let progress = self.job.plan.cx.progress();
        let with = |exclude: Vec<String>| -> Result<Model> {
            let exclude = [self.job.opts.exclude.clone(), exclude].concat();
            let (candidate, _) = self.quantize(&self.float, Some(self.cal.clone()), &exclude)?;
            Ok(self.job.checkable(&candidate)?.into_owned())
        };
        output_impacts(
            &ops,
            reference,
            failing,
            progress,
            |op| with(ops.iter().filter(|o| *o != op).cloned().collect()),
            |op| with(vec![op.to_string()]),
        )
    }

    /// The report of the candidate that passed, keeping what the search measured.
    fn record(&mut self, candidate: &Model, cx: &PassContext, back: Vec<String>) {
        let mut report = quant::report(&self.float, candidate, self.q, self.samples, cx);
        report.layer_errors = std::mem::take(&mut self.report.layer_errors);
        for (name, why) in &mut report.left_float {
            if back.contains(name) {
                *why = "returned to float: the check failed with it quantized".into();
            }
        }
        report.fallback = back;
        report.fallback_tries = self.report.fallback_tries;
        report.equalization_dropped = self.report.equalization_dropped;
        self.report = report;
    }

    /// `float` through the smooth stage, when the options ask for it: what the quantize stage
    /// would have been handed.
    fn smoothed(&self, float: Model) -> Result<Model> {
        if !self.q.smooth {
            return Ok(float);
        }
        let opts = PipelineOptions {
            stop_after: None,
            ..self.job.opts.pipeline.clone()
        };
        let stages = selected(&opts, vec![quant::smooth_stage()])?;
        let mut model = float;
        run_stages(&mut model, &stages, &opts, &mut self.job.plan.cx.fork())?;
        Ok(model)
    }

    /// The quantize stage, through the pipeline, on `float` with `cal` (or calibrated afresh)
    /// and `exclude`; the result and the context it ran with.
    fn quantize(
        &self,
        float: &Model,
        cal: Option<Calibration>,
        exclude: &[String],
    ) -> Result<(Model, PassContext)> {
        let mut cx = self.job.plan.cx.fork();
        cx.exclude = exclude.to_vec();
        if let Some(cal) = cal {
            cx.provide(cal);
            cx.mark_prepared("quantize");
        }
        let opts = PipelineOptions {
            stop_after: None,
            ..self.job.opts.pipeline.clone()
        };
        // The stages after quantize run again too (what int8 leaves float goes to 16 bits).
        let stages = selected(
            &opts,
            self.job.plan.stages_from("quantize", opts.fold_limit),
        )?;
        let mut model = float.clone();
        run_stages(&mut model, &stages, &opts, &mut cx)?;
        Ok((model, cx))
    }
}
