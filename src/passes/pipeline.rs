//! The pipeline: stages in order, each with its reason, and the one runner every stage runs
//! through, lossless or lossy.
//!
//! ```text
//!   simplify ─▶ prune ─▶ compensate ─▶ equalize ─▶ smooth ─▶ quantize ─▶ precision
//!   (always)    (--prune)  (--prune with samples)  (--quantize)         (--precision)
//! ```
//!
//! A stage is an optional preparation (a pruning plan, calibration ranges: computed on the
//! model as the stages before it left it, handed to its passes through the context), passes
//! that run once in order, then passes run together to a fixed point (its cleanup). The job
//! picks the stages its options ask for from [`catalogue`]; `--passes`, `--disable`,
//! `--stop-after`, `--verify-each` and `--explain` reach every pass of every stage, because
//! every stage runs through [`run_stages`].

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{cleanup, fold, fuse, precision, prune, quant, Changed, Note, Pass, PassContext};
use crate::ir::{print::print_model, verify::verify, Model};

/// One stage of the pipeline.
pub struct Stage {
    pub name: &'static str,
    /// Why the stage stands where it does (`--list-passes` shows it).
    pub reason: &'static str,
    /// What the stage computes before its passes run.
    pub prepare: Option<Box<dyn Prepare>>,
    pub once: Vec<Box<dyn Pass>>,
    pub fixed_point: Vec<Box<dyn Pass>>,
    pub rounds: Rounds,
}

impl Stage {
    /// A stage of passes only, its cleanup run to a fixed point.
    pub fn new(name: &'static str, reason: &'static str) -> Stage {
        Stage {
            name,
            reason,
            prepare: None,
            once: Vec::new(),
            fixed_point: Vec::new(),
            rounds: Rounds::FixedPoint,
        }
    }

    pub fn passes(&self) -> impl Iterator<Item = &dyn Pass> {
        self.once
            .iter()
            .chain(&self.fixed_point)
            .map(|p| p.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.once.is_empty() && self.fixed_point.is_empty()
    }
}

/// How many rounds a stage's fixed-point passes may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// Until nothing changes; reaching [`MAX_ROUNDS`] is an error that names the last pass
    /// that changed the graph.
    FixedPoint,
    /// At most this many: an iterative method (equalization) whose every round is exact, and
    /// which may approach its fixed point without reaching it.
    AtMost(usize),
}

/// What a stage computes before its passes, on the model as the stages before it left it,
/// and hands them through the context: a pruning plan, calibration ranges. Timed and reported
/// under its id like a pass; never counted as a step (it does not change the model).
pub trait Prepare {
    fn id(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn run(&self, model: &Model, cx: &mut PassContext) -> Result<()>;
}

/// The passes of the simplify fixed point, in order. Each place has its reason.
fn simplify(fold_limit: u64) -> Vec<Box<dyn Pass>> {
    vec![
        // Constants first, so every later pattern finds them as initializers, in the body
        // that reads them.
        Box::new(cleanup::constant::ConstantToInitializer),
        Box::new(cleanup::sink_constants::SinkCapturedConstants),
        // Forwarding nodes next: removing them exposes each value's real producer to every
        // pattern that follows.
        Box::new(cleanup::identity::EliminateIdentity),
        Box::new(cleanup::dropout::EliminateDropout),
        Box::new(cleanup::noop::EliminateNoop),
        // Chains of layout ops collapse to their last link; what becomes the identity is
        // removed by eliminate-noop in the next round.
        Box::new(cleanup::merge_transpose::MergeTransposes),
        Box::new(cleanup::merge_reshape::MergeReshapes),
        Box::new(cleanup::merge_squeeze::MergeSqueezes),
        // One operand order for commutative ops, so that CSE sees equal nodes as equal.
        Box::new(cleanup::commute::CommuteConstants),
        // Merging equal constants and nodes before fusing means each pattern is seen once.
        Box::new(cleanup::cse::Cse),
        // Shape arithmetic folds before fusions so they see plain Reshapes.
        Box::new(fold::reshape_target::FoldReshapeTarget),
        // Static dims become constants, which constant folding then propagates.
        Box::new(fold::shape::FoldShape),
        // Constant subexpressions next: fusions then meet constants, not the ops computing them.
        Box::new(fold::constant::FoldConstants { limit: fold_limit }),
        // Conditions that folding made constant: the branch taken joins the graph, where the
        // next round's folding reaches it.
        Box::new(fold::constant_if::InlineConstantIf),
        // Fusions work on the cleaned graph and leave their old constants for dead-code.
        Box::new(fuse::conv_bn::FuseConvBn),
        Box::new(fuse::gemm_bn::FuseGemmBn),
        // Padding joins the Conv itself, so the Conv sits right after its producer again.
        Box::new(fuse::pad_conv::FusePadConv),
        // A scale of the input then reaches the Conv's weights.
        Box::new(fuse::mul_conv::FuseMulConv),
        // After BN fusion, so a Conv's own bias exists to absorb the Add.
        Box::new(fuse::conv_mul::FuseConvMul),
        Box::new(fuse::conv_add::FuseConvAdd),
        Box::new(fuse::layer_norm::FuseLayerNorm),
        Box::new(fuse::gelu::FuseGelu),
        Box::new(fuse::matmul_add::FuseMatMulAdd),
        // Last: everything above leaves unread nodes and initializers behind.
        Box::new(cleanup::dce::DeadCode),
    ]
}

/// The simplify stage: every later stage works on the simplest equivalent graph, so pruning
/// and quantization see fused Conv+BN weights and constant shapes, and count what is really
/// computed.
pub fn simplify_stage(fold_limit: u64) -> Stage {
    Stage {
        fixed_point: simplify(fold_limit),
        ..Stage::new(
            "simplify",
            "first: rewrites that keep the outputs exact, run together to a fixed point, so that every later stage sees fused weights and constant shapes",
        )
    }
}

/// Every stage the pipeline can hold, in order; a job runs those its options ask for.
pub fn catalogue(fold_limit: u64) -> Vec<Stage> {
    vec![
        simplify_stage(fold_limit),
        prune::stage(),
        prune::compensate_stage(),
        quant::equalize_stage(),
        quant::smooth_stage(),
        quant::stage(),
        precision::stage(),
    ]
}

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Run only these passes (in pipeline order).
    pub only: Option<Vec<String>>,
    pub disable: Vec<String>,
    /// Stop after this many pass runs that changed the graph (to bisect a bad rewrite).
    pub stop_after: Option<usize>,
    /// Check the IR's invariants after every pass (always on in debug builds).
    pub verify_each: bool,
    pub explain: bool,
    /// Bytes a folded constant may exceed its inputs by.
    pub fold_limit: u64,
}

impl Default for PipelineOptions {
    fn default() -> PipelineOptions {
        PipelineOptions {
            only: None,
            disable: Vec::new(),
            stop_after: None,
            verify_each: false,
            explain: false,
            fold_limit: fold::constant::DEFAULT_FOLD_LIMIT,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PassStat {
    pub id: &'static str,
    pub stage: &'static str,
    pub runs: usize,
    pub rewrites: usize,
    #[serde(serialize_with = "secs")]
    pub time: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PipelineReport {
    /// Every pass run, and every stage's preparation, by stage.
    pub passes: Vec<PassStat>,
    /// Every pass run that changed the graph, in order: the steps `--stop-after` counts.
    pub steps: Vec<&'static str>,
    /// Rounds of each stage's fixed point, by stage.
    pub rounds: Vec<(&'static str, usize)>,
    pub explain: Vec<String>,
    /// What passes had to say once their stage was over.
    pub notes: Vec<Note>,
}

impl PipelineReport {
    /// What pass `id` had to say at the end of its stage.
    pub fn note(&self, id: &str) -> Option<&Note> {
        self.notes.iter().find(|n| n.pass == id)
    }

    /// Wall time spent in `stage`, its preparation included.
    pub fn stage_time(&self, stage: &str) -> Duration {
        self.passes
            .iter()
            .filter(|p| p.stage == stage)
            .map(|p| p.time)
            .sum()
    }
}

/// Rounds before giving up on reaching a fixed point.
pub const MAX_ROUNDS: usize = 32;

/// `stages` with only the passes `opts` selects, checking that every name it gives is a pass
/// of some stage of the [`catalogue`]. A stage left without passes is left out whole,
/// preparation included.
pub fn selected(opts: &PipelineOptions, stages: Vec<Stage>) -> Result<Vec<Stage>> {
    let all = catalogue(opts.fold_limit);
    let mut known: Vec<&str> = all
        .iter()
        .flat_map(|s| s.passes().map(|p| p.id()))
        .collect();
    known.sort();
    known.dedup();
    for name in opts.only.iter().flatten().chain(&opts.disable) {
        if known.binary_search(&name.as_str()).is_err() {
            bail!("unknown pass '{name}' (known: {})", known.join(", "));
        }
    }
    let keep = |id: &str| {
        opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == id))
            && !opts.disable.iter().any(|x| x == id)
    };
    Ok(stages
        .into_iter()
        .map(|mut s| {
            s.once.retain(|p| keep(p.id()));
            s.fixed_point.retain(|p| keep(p.id()));
            s
        })
        .filter(|s| !s.is_empty())
        .collect())
}

/// Runs the simplify stage with the passes `opts` selects.
pub fn run_pipeline(model: &mut Model, opts: &PipelineOptions) -> Result<PipelineReport> {
    let mut cx = PassContext::new(opts.explain);
    let stages = selected(opts, vec![simplify_stage(opts.fold_limit)])?;
    run_stages(model, &stages, opts, &mut cx)
}

/// Runs `stages` on `model` with the context `cx` (which a caller may have handed what its
/// stages need).
pub fn run_stages(
    model: &mut Model,
    stages: &[Stage],
    opts: &PipelineOptions,
    cx: &mut PassContext,
) -> Result<PipelineReport> {
    run_stages_watched(model, stages, opts, cx, &mut |_, _| {})
}

/// [`run_stages`], calling `before` with each stage's name and the model as it is before the
/// stage (and its preparation) runs: a caller keeps what it will compare with later.
pub fn run_stages_watched(
    model: &mut Model,
    stages: &[Stage],
    opts: &PipelineOptions,
    cx: &mut PassContext,
    before: &mut dyn FnMut(&'static str, &Model),
) -> Result<PipelineReport> {
    let mut runner = Runner {
        opts,
        stats: Vec::new(),
        steps: Vec::new(),
    };
    let mut rounds = Vec::new();
    let mut notes = Vec::new();
    for stage in stages {
        before(stage.name, model);
        let ran = runner.stage(stage, model, cx)?;
        rounds.push((stage.name, ran.rounds));
        if ran.stopped {
            break;
        }
        notes.extend(stage.passes().filter_map(|p| p.note(model, cx)));
    }
    Ok(PipelineReport {
        passes: runner.stats,
        steps: runner.steps,
        rounds,
        explain: cx.explained(),
        notes,
    })
}

/// Pass runs and their bookkeeping, across stages.
struct Runner<'a> {
    opts: &'a PipelineOptions,
    stats: Vec<PassStat>,
    steps: Vec<&'static str>,
}

/// How a stage's run ended.
struct StageRun {
    rounds: usize,
    /// `--stop-after` was reached: no later pass runs.
    stopped: bool,
}

/// Why the pipeline stopped early.
struct StopAfter;

impl Runner<'_> {
    /// The preparation (unless the context already holds what it computes), the passes that
    /// run once, then the fixed point.
    fn stage(
        &mut self,
        stage: &Stage,
        model: &mut Model,
        cx: &mut PassContext,
    ) -> Result<StageRun> {
        if let Some(prep) = stage
            .prepare
            .as_ref()
            .filter(|_| !cx.is_prepared(stage.name))
        {
            let t = Instant::now();
            prep.run(model, cx)
                .with_context(|| format!("stage '{}': {} failed", stage.name, prep.id()))?;
            cx.mark_prepared(stage.name);
            let stat = self.stat(stage.name, prep.id());
            stat.runs += 1;
            stat.time += t.elapsed();
        }
        for pass in &stage.once {
            if self.run(stage.name, pass.as_ref(), model, cx)?.is_err() {
                return Ok(StageRun {
                    rounds: 0,
                    stopped: true,
                });
            }
        }
        let mut round = 0;
        while !stage.fixed_point.is_empty() {
            match stage.rounds {
                Rounds::AtMost(n) if round == n => break,
                Rounds::FixedPoint if round == MAX_ROUNDS => bail!(
                    "stage '{}' did not reach a fixed point in {MAX_ROUNDS} rounds; the last pass that changed the graph was '{}'",
                    stage.name,
                    self.steps.last().copied().unwrap_or("none")
                ),
                _ => {}
            }
            round += 1;
            let mut changed = false;
            for pass in &stage.fixed_point {
                match self.run(stage.name, pass.as_ref(), model, cx)? {
                    Ok(c) => changed |= c,
                    Err(StopAfter) => {
                        return Ok(StageRun {
                            rounds: round,
                            stopped: true,
                        })
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Ok(StageRun {
            rounds: round,
            stopped: false,
        })
    }

    fn stat(&mut self, stage: &'static str, id: &'static str) -> &mut PassStat {
        let i = match self
            .stats
            .iter()
            .position(|s| s.id == id && s.stage == stage)
        {
            Some(i) => i,
            None => {
                self.stats.push(PassStat {
                    id,
                    stage,
                    runs: 0,
                    rewrites: 0,
                    time: Duration::ZERO,
                });
                self.stats.len() - 1
            }
        };
        &mut self.stats[i]
    }

    /// One pass run: timed, verified (always in debug builds; in release under
    /// `--verify-each`), its claim to have changed the graph confirmed in debug builds, and
    /// counted as a step when it changed the graph.
    fn run(
        &mut self,
        stage: &'static str,
        pass: &dyn Pass,
        model: &mut Model,
        cx: &mut PassContext,
    ) -> Result<Result<bool, StopAfter>> {
        let paranoid = cfg!(debug_assertions);
        let before = paranoid.then(|| digest(model));
        let t = Instant::now();
        let changed = pass
            .run(model, cx)
            .with_context(|| format!("pass '{}' failed", pass.id()))?;
        let stat = self.stat(stage, pass.id());
        stat.time += t.elapsed();
        stat.runs += 1;
        if self.opts.verify_each || paranoid {
            verify(model).with_context(|| format!("pass '{}' broke the IR", pass.id()))?;
        }
        if let Some(before) = before {
            let moved = digest(model) != before;
            if moved != matches!(changed, Changed::Yes(_)) {
                bail!(
                    "pass '{}' reported {changed:?} but the graph {}",
                    pass.id(),
                    if moved { "changed" } else { "did not change" }
                );
            }
        }
        let Changed::Yes(n) = changed else {
            return Ok(Ok(false));
        };
        cx.forget_facts();
        self.stat(stage, pass.id()).rewrites += n;
        self.steps.push(pass.id());
        if self.opts.stop_after.is_some_and(|s| self.steps.len() >= s) {
            return Ok(Err(StopAfter));
        }
        Ok(Ok(true))
    }
}

fn digest(model: &Model) -> u64 {
    let mut h = crate::ir::ContentHash::new();
    h.write(print_model(model).as_bytes());
    // The printout leaves node names out (they mean nothing to the computation), but a pass
    // may change only them (`name-ops`).
    hash_node_names(&model.graph, &mut h);
    h.finish()
}

fn hash_node_names(g: &crate::ir::Graph, h: &mut crate::ir::ContentHash) {
    for n in g.node_ids() {
        let node = g.node(n);
        h.write(node.name().as_bytes());
        h.write(&[0]);
        for body in node.attrs().iter().flat_map(|a| a.bodies()) {
            hash_node_names(body, h);
        }
    }
}
