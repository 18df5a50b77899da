//! Passes and the one ordered pipeline.
//!
//! A pass has a stable kebab-case id and lives in its own file, opened by a before ⇒ after
//! picture, its preconditions and the reasons it refuses. Matching reads `&Graph` and returns a
//! typed match; rewriting consumes the match and edits through one checked [`Patch`]. A pass
//! reports whether it changed the graph; in debug and test builds that claim is confirmed
//! against a hash of the canonical printout.
//!
//! [`Patch`]: crate::ir::Patch

mod cleanup;
mod fold;
mod fuse;

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::ir::{print::print_model, verify::verify, Attr, Graph, Model, NodeId};
use crate::runtime::{infer_facts, Facts};

/// Operators whose result differs from run to run: never merged, never folded.
pub const NONDETERMINISTIC: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
];

/// Whether a pass changed the graph, and how many rewrites it made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes(usize),
    No,
}

impl Changed {
    pub fn from_count(n: usize) -> Changed {
        if n == 0 {
            Changed::No
        } else {
            Changed::Yes(n)
        }
    }
}

/// What passes may record besides their edits, and what they share.
#[derive(Default)]
pub struct PassContext {
    explain: Option<BTreeSet<String>>,
    /// tract's facts about the model as it is now; dropped whenever a pass changes it.
    facts: Option<Rc<Facts>>,
}

impl PassContext {
    /// tract's facts about the main graph of `model`, inferred once per state of the model.
    pub fn facts(&mut self, model: &Model) -> Rc<Facts> {
        self.facts
            .get_or_insert_with(|| Rc::new(infer_facts(model)))
            .clone()
    }

    /// Records why a pattern did not fire (kept only under `--explain`).
    pub fn refuse(&mut self, pass: &str, node: &str, op: &str, why: &str) {
        if let Some(notes) = self.explain.as_mut() {
            notes.insert(format!("{pass}: kept {op} '{node}': {why}"));
        }
    }
}

pub trait Pass {
    /// Stable kebab-case id used by `--passes`, `--disable` and reports.
    fn id(&self) -> &'static str;
    /// One line for `--list-passes`.
    fn about(&self) -> &'static str;
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed>;
}

/// The pipeline, in order, with the default fold limit.
pub fn pipeline() -> Vec<Box<dyn Pass>> {
    pipeline_with(fold::constant::DEFAULT_FOLD_LIMIT)
}

/// The pipeline, in order. Each place has its reason.
pub fn pipeline_with(fold_limit: u64) -> Vec<Box<dyn Pass>> {
    vec![
        // Constants first, so every later pattern finds them as initializers.
        Box::new(cleanup::constant::ConstantToInitializer),
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

/// Which graph a pass is looking at: facts inferred by tract describe the main graph only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Main,
    Body,
}

/// Whether `f` holds for some node of `g` or of a subgraph inside it: lets a pass that needs
/// tract's facts skip inferring them when its pattern cannot occur.
pub fn any_node(g: &Graph, f: &dyn Fn(&Graph, NodeId) -> bool) -> bool {
    g.node_ids().any(|n| {
        f(g, n)
            || g.node(n)
                .attrs
                .iter()
                .flat_map(Attr::bodies)
                .any(|b| any_node(b, f))
    })
}

/// Runs `f` on the model's main graph `g` and, first, on every subgraph inside it (innermost
/// first), keeping each node's captures in step with what its subgraphs still read. Returns the
/// total of `f`'s counts.
pub fn for_each_graph(
    g: &mut Graph,
    f: &mut dyn FnMut(&mut Graph, Scope) -> Result<usize>,
) -> Result<usize> {
    visit(g, Scope::Main, f)
}

fn visit(
    g: &mut Graph,
    scope: Scope,
    f: &mut dyn FnMut(&mut Graph, Scope) -> Result<usize>,
) -> Result<usize> {
    let mut total = 0;
    let holders: Vec<_> = g.node_ids().filter(|&n| g.node(n).has_bodies()).collect();
    for n in holders {
        let mut inner = 0;
        for attr in &mut g.node_mut(n).attrs {
            for body in attr.bodies_mut() {
                inner += visit(body, Scope::Body, f)?;
            }
        }
        if inner > 0 {
            g.sync_captures(n);
        }
        total += inner;
    }
    Ok(total + f(g, scope)?)
}

#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    /// Run only these passes (in pipeline order).
    pub only: Option<Vec<String>>,
    pub disable: Vec<String>,
    /// Stop after this many pass runs that changed the graph (to bisect a bad rewrite).
    pub stop_after: Option<usize>,
    /// Check the IR's invariants after every pass (always on in debug builds).
    pub verify_each: bool,
    pub explain: bool,
    /// Bytes a folded constant may exceed its inputs by (default 1 MiB).
    pub fold_limit: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PassStat {
    pub id: &'static str,
    pub runs: usize,
    pub rewrites: usize,
    #[serde(serialize_with = "secs")]
    pub time: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineReport {
    pub passes: Vec<PassStat>,
    /// Every pass run that changed the graph, in order: the steps `--stop-after` counts.
    pub steps: Vec<&'static str>,
    pub rounds: usize,
    pub explain: Vec<String>,
    /// When fold-shape ran: each Shape and Size left in the main graph, and why.
    pub kept_shapes: Vec<String>,
}

/// Rounds before giving up on reaching a fixed point.
const MAX_ROUNDS: usize = 32;

/// The ids of the passes `opts` selects, checking that every name it gives exists.
pub fn selected(opts: &PipelineOptions) -> Result<Vec<Box<dyn Pass>>> {
    let all = pipeline_with(
        opts.fold_limit
            .unwrap_or(fold::constant::DEFAULT_FOLD_LIMIT),
    );
    let known: Vec<&str> = all.iter().map(|p| p.id()).collect();
    for name in opts.only.iter().flatten().chain(&opts.disable) {
        if !known.contains(&name.as_str()) {
            bail!("unknown pass '{name}' (known: {})", known.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|p| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|x| x == p.id()))
        })
        .filter(|p| !opts.disable.iter().any(|x| x == p.id()))
        .collect())
}

/// Runs the selected passes to a fixed point.
pub fn run_pipeline(model: &mut Model, opts: &PipelineOptions) -> Result<PipelineReport> {
    let passes = selected(opts)?;
    let mut cx = PassContext {
        explain: opts.explain.then(BTreeSet::new),
        facts: None,
    };
    let mut stats: Vec<PassStat> = passes
        .iter()
        .map(|p| PassStat {
            id: p.id(),
            runs: 0,
            rewrites: 0,
            time: Duration::ZERO,
        })
        .collect();
    let mut steps = Vec::new();
    let paranoid = cfg!(debug_assertions);
    let mut rounds = 0;
    'rounds: loop {
        if rounds == MAX_ROUNDS {
            bail!(
                "the pipeline did not reach a fixed point in {MAX_ROUNDS} rounds; the last pass that changed the graph was '{}'",
                steps.last().copied().unwrap_or("none")
            );
        }
        rounds += 1;
        let mut changed_this_round = false;
        for (pass, stat) in passes.iter().zip(stats.iter_mut()) {
            let before = paranoid.then(|| digest(model));
            let t = Instant::now();
            let changed = pass
                .run(model, &mut cx)
                .with_context(|| format!("pass '{}' failed", pass.id()))?;
            stat.time += t.elapsed();
            stat.runs += 1;
            if opts.verify_each || paranoid {
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
            if let Changed::Yes(n) = changed {
                cx.facts = None;
                stat.rewrites += n;
                steps.push(pass.id());
                changed_this_round = true;
                if opts.stop_after.is_some_and(|s| steps.len() >= s) {
                    break 'rounds;
                }
            }
        }
        if !changed_this_round {
            break;
        }
    }
    let g = &model.graph;
    let shape_ops = g
        .node_ids()
        .any(|n| g.node(n).is("Shape") || g.node(n).is("Size"));
    let kept_shapes = if shape_ops && passes.iter().any(|p| p.id() == "fold-shape") {
        fold::shape::kept(&model.graph, &cx.facts(model))
    } else {
        Vec::new()
    };
    Ok(PipelineReport {
        passes: stats,
        steps,
        rounds,
        kept_shapes,
        explain: cx
            .explain
            .map(|e| e.into_iter().collect())
            .unwrap_or_default(),
    })
}

fn digest(model: &Model) -> u64 {
    let mut h = crate::ir::ContentHash::new();
    h.write(print_model(model).as_bytes());
    h.finish()
}
