//! After a 16-bit result failed its check: the ops whose 16-bit computation adds the most
//! error go back to f32, through the shared search of [`crate::lossy::search`] (one tier:
//! f32), until the result passes. Ops are ranked by [`local_errors`]: each 16-bit op of the
//! result (its checked form: the bf16 emulation) against the same op in f32 on the same
//! inputs. Each candidate is the precision stage run again through the pipeline, on the model
//! it was handed, with the ops to keep named in its context ([`Kept`]); its preparation
//! (ranges) is reused. Ops inside bodies cannot be measured one by one: their holders follow
//! the measured ops in the ranking, each standing for its bodies.

use anyhow::Result;

use super::stages::Lossy;
use super::Job;
use crate::check::{Outcome, Reference};
use crate::ir::Model;
use crate::lossy::search::{self, Restored};
use crate::lossy::sensitivity::{local_errors, Local};
use crate::lossy::Samples;
use crate::passes::precision::rules::Why;
use crate::passes::precision::{self, Kept, Lowered, PrecisionReport};
use crate::passes::{run_stages, selected, PassContext, PipelineOptions};
use crate::report::CheckStatus;

/// Runs the search when the 16-bit `result` failed its check and the options allow it; the
/// result that passed, with `status` and the precision report updated, if one did.
pub fn restore(
    job: &Job,
    lossy: &mut Lossy,
    result: &Model,
    status: &mut CheckStatus,
    reference: &Reference,
) -> Result<Option<Model>> {
    let (CheckStatus::Mismatch { .. }, Some(opts)) = (&*status, job.opts.precision.as_ref()) else {
        return Ok(None);
    };
    let Some(before) = lossy.before("precision").cloned() else {
        return Ok(None);
    };
    if !opts.fallback {
        return Ok(None);
    }
    let progress = job.plan.cx.progress();
    progress.step("measuring each 16-bit op's error");
    let sets = match lossy.cx.get::<Samples>() {
        Some(s) => s.held_back.clone(),
        None => reference
            .feed()
            .sets()
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
    };
    let checked = job.checkable(result)?;
    let lowered = lossy.cx.get::<Lowered>().cloned().unwrap_or_default();
    let ops = measured(&before, result, &checked, &lowered);
    let errors = local_errors(&before, &checked, ops, &sets)?;
    let mut ranked: Vec<String> = errors.iter().map(|(n, _)| n.clone()).collect();
    let unmeasured: Vec<String> = holders(&lowered).filter(|h| !ranked.contains(h)).collect();
    ranked.extend(unmeasured);
    let mut tries = 0;
    let weights = crate::passes::quant::weight_elements(&before);
    let worth = |op: &str| weights.get(op).copied().unwrap_or(0) as f64;
    // One way back only: f32.
    let found = search::restore(&ranked, &worth, false, &mut tries, |_, set| {
        progress.step(&format!("trying {} sensitive op(s) in f32", set.len()));
        let (candidate, cx) = rerun(job, &lossy.cx, &before, set, &errors)?;
        let outcome = reference.check(&*job.checkable(&candidate)?)?;
        Ok(matches!(&outcome, Outcome::Checked(r) if r.ok()).then_some((candidate, outcome, cx)))
    })?;
    let mut report = lossy.precision.take();
    let passed = match found {
        Some(Restored { whole, found, .. }) => {
            let (candidate, outcome, cx) = found;
            let bytes = crate::report::Summary::of(&before).param_bytes();
            let mut r = PrecisionReport::of(bytes, &candidate, opts, &cx);
            r.fallback = whole;
            report = Some(r);
            *status = CheckStatus::from(outcome);
            Some(candidate)
        }
        None => None,
    };
    if let Some(r) = report.as_mut() {
        r.layer_errors = errors;
        r.fallback_tries = tries;
    }
    lossy.precision = report;
    Ok(passed)
}

/// The 16-bit ops of the main graph of `result` as the sensitivity measures them: what each
/// reads in `checked` (the model the check runs for the result, where a value keeps its
/// name) at the places its f32 form in `before` reads a non-constant, and what it writes.
fn measured(before: &Model, result: &Model, checked: &Model, lowered: &Lowered) -> Vec<Local> {
    let (f, r, c) = (&before.graph, &result.graph, &checked.graph);
    let find = |g: &crate::ir::Graph, name: &str| g.node_ids().find(|&n| g.node(n).name() == name);
    let mut ops = Vec::new();
    for (name, _) in lowered.low.iter().filter(|(n, _)| !n.contains('/')) {
        let (Some(fnode), Some(rnode), Some(cnode)) = (find(f, name), find(r, name), find(c, name))
        else {
            continue;
        };
        let inputs: Option<Vec<String>> = (f.node(fnode).inputs().iter().enumerate())
            .filter(|(_, v)| v.is_some_and(|v| f.value(v).constant().is_none()))
            .map(|(i, _)| Some(c.value(c.node(cnode).input(i)?).name().to_string()))
            .collect();
        let output = r
            .node(rnode)
            .output(0)
            .map(|y| r.value(y).name().to_string());
        if let (Some(inputs), Some(output)) = (inputs, output) {
            if c.find(&output).is_some() {
                ops.push(Local {
                    op: name.clone(),
                    inputs,
                    output,
                });
            }
        }
    }
    ops
}

/// The holders (in the main graph) of bodies that hold 16-bit ops.
fn holders(lowered: &Lowered) -> impl Iterator<Item = String> + '_ {
    let mut names: Vec<String> = (lowered.low.iter())
        .filter_map(|(n, _)| n.split_once('/').map(|(h, _)| h.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names.into_iter()
}

/// The precision stage, through the pipeline, on `before` with the ops `set` names kept in
/// f32; the result and the context it ran with.
fn rerun(
    job: &Job,
    prepared: &PassContext,
    before: &Model,
    set: &[String],
    errors: &[(String, f64)],
) -> Result<(Model, PassContext)> {
    let mut cx = prepared.fork();
    let why = |name: &String| {
        let err = errors.iter().find(|(n, _)| n == name).map(|e| e.1);
        let detail = match err {
            Some(e) => format!("the check failed with it in 16 bits (its own error {e:.4})"),
            None => "the check failed with its bodies in 16 bits".to_string(),
        };
        (name.clone(), Why::new("sensitivity", detail))
    };
    cx.provide(Kept {
        ops: set.iter().map(why).collect(),
    });
    let opts = PipelineOptions {
        stop_after: None,
        ..job.opts.pipeline.clone()
    };
    let stages = selected(&opts, vec![precision::stage()])?;
    let mut model = before.clone();
    run_stages(&mut model, &stages, &opts, &mut cx)?;
    Ok((model, cx))
}
