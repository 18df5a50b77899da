//! Structured channel pruning, as a stage after simplification: find the dependency groups
//! ([`groups`]), rank each group's channels by importance (L1 of the weights making them, the
//! BatchNormalization scale they had before it was fused, or their mean activation on
//! calibration samples), choose how many each group keeps (the same share everywhere, or the
//! least important across the model), remove them ([`remove`]), then clean up. With
//! calibration samples, [`compensate`] folds what the removed channels contributed into the
//! readers' biases and refits the readers' weights.

pub mod compensate;
pub mod groups;
pub mod remove;

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use self::groups::Groups;
use self::remove::{Plan, PruneChannels};
use super::{run_stages, selected, PassContext, PipelineOptions, PipelineReport, Prepare, Stage};
use crate::ir::{Graph, Model, NodeId};
use crate::lossy::Samples;
use crate::runtime::{infer_facts, Facts, HostTensor};

/// How channels are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Importance {
    /// Mean |w| of the weights making a channel, summed over the group's producers.
    L1,
    /// |γ| of the BatchNormalization that followed a producer in the model as given.
    BnScale,
    /// Mean |x| of the channel on calibration samples.
    Activation,
}

/// How many channels each group gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Each group the same share.
    Uniform,
    /// The least important channels of the whole model, each group's importances divided by
    /// their mean so groups compare.
    Global,
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Share of each group's channels to remove.
    pub ratio: f64,
    pub importance: Importance,
    pub scope: Scope,
    /// Kept counts are multiples of this, so kernels stay fast.
    pub round_to: usize,
    /// Node names or op types whose channels stay.
    pub exclude: Vec<String>,
    /// Fold the removed channels' contribution into the readers (needs samples, which the
    /// job hands the stage: see [`crate::lossy::Samples`]).
    pub compensate: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            ratio: 0.3,
            importance: Importance::L1,
            scope: Scope::Uniform,
            round_to: 8,
            exclude: Vec::new(),
            compensate: true,
        }
    }
}

/// The pruning stage: a plan made on the simplified model ([`PlanPruning`]), its channels
/// removed once, then what they leave unread removed.
pub fn stage() -> Stage {
    Stage {
        prepare: Some(Box::new(PlanPruning)),
        once: vec![Box::new(PruneChannels)],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
        ..Stage::new(
            "prune",
            "after simplify, so groups see fused weights and constant shapes; before quantization, which calibrates the pruned model",
        )
    }
}

/// The compensation stage: the readers of removed channels absorb what those channels
/// contributed, measured on the samples ([`compensate::Compensate`]).
pub fn compensate_stage() -> Stage {
    Stage {
        once: vec![Box::new(compensate::Compensate)],
        fixed_point: vec![Box::new(super::cleanup::dce::DeadCode)],
        ..Stage::new(
            "compensate",
            "right after pruning, measured on the model the plan was made on (when pruning has samples)",
        )
    }
}

/// The model a pruning plan was made on, where every channel still exists: what compensation
/// measures, and what the report compares with.
pub struct Unpruned(pub Model);

/// The prune stage's preparation: finds the groups of the model as simplification left it,
/// ranks their channels and chooses what each keeps ([`select`]), from the [`PruneOptions`],
/// [`BnScales`] and (for importance by activation) [`Samples`] in the context. Provides the
/// [`Plan`] its pass removes, the [`Selection`] for the report and the [`Unpruned`] model.
pub struct PlanPruning;

impl Prepare for PlanPruning {
    fn id(&self) -> &'static str {
        "plan-pruning"
    }

    fn about(&self) -> &'static str {
        "find the channel groups, rank their channels, choose what each keeps"
    }

    fn run(&self, model: &Model, cx: &mut PassContext) -> Result<()> {
        let opts = cx
            .get::<PruneOptions>()
            .ok_or_else(|| anyhow::anyhow!("pruning was not given its options"))?;
        let samples = cx.get::<Samples>().map(|s| s.calibration.as_slice());
        let bn = cx.get::<BnScales>().cloned().unwrap_or_default();
        cx.progress().step("finding channel groups");
        let chosen = select(model, opts, samples, &bn)?;
        cx.provide(chosen.plan.clone());
        cx.provide(chosen);
        cx.provide(Unpruned(model.clone()));
        cx.progress().step("removing channels");
        Ok(())
    }
}

/// |γ| of each BatchNormalization that reads a Conv's output, by the Conv's name (which the
/// Conv keeps once the BatchNormalization is fused into it).
#[derive(Clone, Debug, Default)]
pub struct BnScales(pub HashMap<String, Vec<f64>>);

impl BnScales {
    pub fn of(model: &Model) -> BnScales {
        let g = &model.graph;
        let mut out = HashMap::new();
        for n in g.node_ids().filter(|&n| g.node(n).is("BatchNormalization")) {
            let node = g.node(n);
            let conv = node
                .input(0)
                .and_then(|x| g.producer(x))
                .filter(|&c| g.node(c).is("Conv") || g.node(c).is("ConvTranspose"));
            let gamma = node
                .input(1)
                .and_then(|v| g.value(v).constant())
                .and_then(|t| t.to_f32_vec());
            if let (Some(c), Some(gamma)) = (conv, gamma) {
                let scale = gamma.iter().map(|&x| (x as f64).abs()).collect();
                out.insert(g.node(c).name().to_string(), scale);
            }
        }
        BnScales(out)
    }
}

/// One group in the report.
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    /// The first producer's name.
    pub name: String,
    pub producers: usize,
    pub channels: usize,
    pub kept: usize,
    /// Why the group was left whole.
    pub left: Option<String>,
}

/// What the pruning stage did, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub ratio: f64,
    pub importance: Importance,
    pub scope: Scope,
    pub round_to: usize,
    pub groups: Vec<GroupReport>,
    pub params_before: u64,
    pub params_after: u64,
    /// Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul, free dims at 1.
    pub macs_before: u64,
    pub macs_after: u64,
    /// Importance fell back to L1 for this many groups (no BatchNormalization scale known).
    pub importance_fallbacks: usize,
    pub compensation: Option<compensate::CompensationReport>,
    /// Agreement with the original before compensation (cosine, top-1), when compensated.
    pub uncompensated: Option<(f64, Option<f64>)>,
    /// Wall time of the analysis, the ranking, the removal and the compensation.
    pub seconds: f64,
}

/// What [`select`] chose, and what it measured on the way.
#[derive(Clone)]
pub struct Selection {
    pub plan: Plan,
    pub groups: Vec<GroupReport>,
    /// Groups whose importance fell back to L1.
    pub fallbacks: usize,
    /// The model's MACs (see [`macs`]), from the facts the analysis inferred.
    pub macs: u64,
}

/// Chooses what each group keeps on the simplified `model`.
pub fn select(
    model: &Model,
    opts: &PruneOptions,
    samples: Option<&[Vec<HostTensor>]>,
    bn: &BnScales,
) -> Result<Selection> {
    let g = &model.graph;
    let facts = infer_facts(model);
    let mut found = groups::find(g, &facts, model.opset("").unwrap_or(1));
    for grp in &mut found.groups {
        if grp.left.is_some() {
            continue;
        }
        let hit = grp.producers.iter().find(|&&p| {
            let n = g.node(p);
            opts.exclude.iter().any(|e| e == n.name() || e == n.op())
        });
        if let Some(&p) = hit {
            grp.left = Some(format!("excluded: '{}'", g.node(p).name()));
        }
    }
    let (scores, fallbacks) = importance(model, &found, opts, samples, bn)?;
    let kept = choose(&found, &scores, opts);
    let reports = found
        .groups
        .iter()
        .zip(&kept)
        .map(|(grp, k)| GroupReport {
            name: grp.name.clone(),
            producers: grp.producers.len(),
            channels: grp.channels,
            kept: k.len(),
            left: grp.left.clone(),
        })
        .collect();
    Ok(Selection {
        plan: Plan {
            groups: found,
            kept,
        },
        groups: reports,
        fallbacks,
        macs: macs_with(model, &facts),
    })
}

/// Per group, one importance per channel (empty for groups left alone); and how many groups
/// fell back to L1.
fn importance(
    model: &Model,
    found: &Groups,
    opts: &PruneOptions,
    samples: Option<&[Vec<HostTensor>]>,
    bn: &BnScales,
) -> Result<(Vec<Vec<f64>>, usize)> {
    let g = &model.graph;
    let mut fallbacks = 0;
    let mut scores: Vec<Vec<f64>> = found
        .groups
        .iter()
        .map(|grp| {
            if grp.left.is_some() {
                return Vec::new();
            }
            if opts.importance == Importance::BnScale {
                let known: Vec<&Vec<f64>> = grp
                    .producers
                    .iter()
                    .filter_map(|&p| bn.0.get(g.node(p).name()))
                    .filter(|s| s.len() == grp.channels)
                    .collect();
                if !known.is_empty() {
                    return (0..grp.channels)
                        .map(|c| known.iter().map(|s| s[c]).sum())
                        .collect();
                }
                fallbacks += 1;
            }
            l1(g, &grp.producers, grp.channels)
        })
        .collect();
    if opts.importance == Importance::Activation {
        let samples = samples.ok_or_else(|| {
            anyhow::anyhow!("--prune-importance activation needs calibration samples (--calib DIR)")
        })?;
        let means = compensate::channel_means(model, found, samples)?;
        for (i, m) in means.into_iter().enumerate() {
            if let Some(m) = m.filter(|_| found.groups[i].left.is_none()) {
                scores[i] = m;
            } else if found.groups[i].left.is_none() {
                fallbacks += 1;
            }
        }
    }
    Ok((scores, fallbacks))
}

/// Sum over `producers` of the mean |w| of each output channel's weights.
fn l1(g: &Graph, producers: &[NodeId], channels: usize) -> Vec<f64> {
    let mut out = vec![0.0; channels];
    for &p in producers {
        let node = g.node(p);
        let Some(t) = node.input(1).and_then(|w| g.value(w).constant()) else {
            continue;
        };
        let Some(w) = t.to_f32_vec() else { continue };
        let dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
        let (axis, _) = crate::passes::channels::weight_axes(node);
        if dims.get(axis) != Some(&channels) {
            continue;
        }
        let inner: usize = dims[axis + 1..].iter().product();
        let per = (w.len() / channels).max(1) as f64;
        for (i, x) in w.iter().enumerate() {
            out[(i / inner) % channels] += (x.abs() as f64) / per;
        }
    }
    out
}

/// How many channels of `channels` stay when `ratio` of them go: the multiple of `round_to`
/// nearest to what the ratio leaves (halves keep more), never fewer than `round_to`. Rounding
/// down instead would take half of a 16-channel group for any ratio under one half.
pub fn keep_count(channels: usize, ratio: f64, round_to: usize) -> usize {
    let r = round_to.max(1);
    let want = channels as f64 * (1.0 - ratio);
    let k = ((want / r as f64).round() as usize * r).max(r);
    k.min(channels)
}

/// Per group, the channels kept: all for a group left alone; otherwise the most important,
/// as many as the scope gives.
fn choose(found: &Groups, scores: &[Vec<f64>], opts: &PruneOptions) -> Vec<Vec<usize>> {
    let prunable =
        |i: usize| found.groups[i].left.is_none() && scores[i].len() == found.groups[i].channels;
    let counts: Vec<usize> = match opts.scope {
        Scope::Uniform => (0..found.groups.len())
            .map(|i| {
                let c = found.groups[i].channels;
                if prunable(i) {
                    keep_count(c, opts.ratio, opts.round_to)
                } else {
                    c
                }
            })
            .collect(),
        Scope::Global => {
            let mut all: Vec<(f64, usize, usize)> = Vec::new();
            for i in (0..found.groups.len()).filter(|&i| prunable(i)) {
                let mean = scores[i].iter().sum::<f64>() / scores[i].len().max(1) as f64;
                let mean = if mean > 0.0 { mean } else { 1.0 };
                all.extend(scores[i].iter().enumerate().map(|(c, s)| (s / mean, i, c)));
            }
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut removed = vec![0usize; found.groups.len()];
            let drop = (all.len() as f64 * opts.ratio).round() as usize;
            for &(_, i, _) in &all[..drop.min(all.len())] {
                removed[i] += 1;
            }
            (0..found.groups.len())
                .map(|i| {
                    let c = found.groups[i].channels;
                    if prunable(i) {
                        keep_count(c, removed[i] as f64 / c as f64, opts.round_to)
                    } else {
                        c
                    }
                })
                .collect()
        }
    };
    (0..found.groups.len())
        .map(|i| {
            let c = found.groups[i].channels;
            if counts[i] >= c {
                return (0..c).collect();
            }
            let s = &scores[i];
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            let mut keep = order[..counts[i]].to_vec();
            keep.sort_unstable();
            keep
        })
        .collect()
}

/// The pruning stage on a copy of `model` with `plan` (no preparation).
pub fn prune(model: &Model, plan: Plan, opts: &PipelineOptions) -> Result<(Model, PipelineReport)> {
    let mut cx = PassContext::new(opts.explain);
    cx.provide(plan);
    cx.mark_prepared("prune");
    let mut out = model.clone();
    let report = run_stages(&mut out, &selected(opts, vec![stage()])?, opts, &mut cx)?;
    Ok((out, report))
}

/// Multiply-accumulates of the Conv, ConvTranspose, Gemm and MatMul ops of the main graph,
/// with free dims at 1.
pub fn macs(model: &Model) -> u64 {
    macs_with(model, &infer_facts(model))
}

fn macs_with(model: &Model, facts: &Facts) -> u64 {
    let g = &model.graph;
    let numel = |v: Option<crate::ir::ValueId>| -> Option<u64> {
        let dims = facts.dims(g.value(v?).name())?;
        Some(dims.iter().map(|d| d.unwrap_or(1).max(0) as u64).product())
    };
    let mut total = 0u64;
    for n in g.node_ids() {
        let node = g.node(n);
        let w = node
            .input(1)
            .and_then(|w| facts.dims(g.value(w).name()))
            .map(|d| {
                d.iter()
                    .map(|x| x.unwrap_or(1).max(0) as u64)
                    .collect::<Vec<u64>>()
            });
        let (Some(w), Some(out)) = (w, numel(node.output(0))) else {
            continue;
        };
        let per_output = match node.op() {
            // Each output element of a Conv sums C_in/group × kernel products.
            "Conv" if w.len() >= 3 => w[1..].iter().product::<u64>(),
            "ConvTranspose" if w.len() >= 3 => {
                let input = numel(node.input(0)).unwrap_or(0);
                total += input * w[1..].iter().product::<u64>();
                continue;
            }
            "Gemm" if w.len() == 2 => {
                if node.attr_i("transB") == Some(1) {
                    w[1]
                } else {
                    w[0]
                }
            }
            "MatMul" if w.len() >= 2 => w[w.len() - 2],
            _ => continue,
        };
        total += out * per_output;
    }
    total
}
