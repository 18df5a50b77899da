//! Passes, and the staged pipeline they run in.
//!
//! A pass has a stable kebab-case id and lives in its own file, opened by a before ⇒ after
//! picture, its preconditions, the reasons it refuses and what must run before it. Most passes
//! are a [`Rewrite`]: a typed match found on `&Graph` at one anchor node, applied through one
//! checked [`Patch`], driven by the one loop in this file, which also carries every refusal to
//! `--explain`. Passes that look at the whole graph at once (common subexpressions, constant
//! folding, dead code) implement [`Pass`] themselves. A pass reports whether it changed the
//! graph; in debug and test builds that claim is confirmed against a hash of the canonical
//! printout.
//!
//! Patterns match binary operands in either order, through [`other_operand`] and
//! [`operand_where`]: a rewrite must not depend on `commute-constants` having run (a user may
//! select passes with `--passes`), which exists so that CSE sees `Add(c, x)` and `Add(x, c)` as
//! one.
//!
//! [`Patch`]: crate::ir::Patch

pub mod channels;
mod cleanup;
mod fold;
mod fuse;
pub mod names;
pub mod pipeline;
pub mod precision;
pub mod prune;
pub mod quant;
pub mod union_find;

pub use pipeline::{
    catalogue, run_pipeline, run_stages, run_stages_watched, selected, simplify_stage, PassStat,
    PipelineOptions, PipelineReport, Prepare, Rounds, Stage,
};

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use anyhow::Result;
use serde::Serialize;

use crate::ir::{Graph, Model, NodeId, Patch, Scope, ValueId};
use crate::progress::Progress;
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

/// What a pipeline run shares with its passes: the explanations they record, tract's facts
/// about the model as it is now, and whatever the job hands its stages (samples, options,
/// calibration ranges, a pruning plan, the progress display), stored by type, plus the names
/// and op types the user excluded. Open, so that tests and the library's callers can build
/// one; cheap to [`fork`](PassContext::fork), so that a stage can run again with one thing
/// changed.
#[derive(Clone, Default)]
pub struct PassContext {
    explain: Option<BTreeSet<String>>,
    /// Dropped whenever a pass changes the model.
    facts: Option<Rc<Facts>>,
    provided: HashMap<TypeId, Rc<dyn Any>>,
    /// Stages whose preparation has run (or whose result a caller provided).
    prepared: BTreeSet<&'static str>,
    /// Node names or op types no lossy stage may touch (`--exclude`).
    pub exclude: Vec<String>,
}

/// The progress display of a context that was given none.
static SILENT: Progress = Progress::silent();

impl PassContext {
    /// A context that keeps the reasons patterns did not fire when `explain` is set.
    pub fn new(explain: bool) -> PassContext {
        PassContext {
            explain: explain.then(BTreeSet::new),
            ..Default::default()
        }
    }

    /// A copy sharing everything provided, without the facts (a fork runs on another model).
    pub fn fork(&self) -> PassContext {
        PassContext {
            facts: None,
            ..self.clone()
        }
    }

    /// Hands `value` to the passes that ask for a `T`.
    pub fn provide<T: Any>(&mut self, value: T) {
        self.provided.insert(TypeId::of::<T>(), Rc::new(value));
    }

    /// The `T` the caller provided, if any.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.provided.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Whether stage `stage` needs no preparation: it ran, or the caller provided its result.
    pub fn is_prepared(&self, stage: &str) -> bool {
        self.prepared.contains(stage)
    }

    /// Records that what stage `stage` prepares is in the context.
    pub fn mark_prepared(&mut self, stage: &'static str) {
        self.prepared.insert(stage);
    }

    /// The progress display the job provided, or a silent one.
    pub fn progress(&self) -> &Progress {
        self.get::<Progress>().unwrap_or(&SILENT)
    }

    /// Whether the user excluded node `name` or its op type from lossy stages.
    pub fn excluded(&self, name: &str, op: &str) -> bool {
        self.exclude.iter().any(|e| e == name || e == op)
    }

    /// tract's facts about the main graph of `model`, inferred once per state of the model.
    pub fn facts(&mut self, model: &Model) -> Rc<Facts> {
        self.facts
            .get_or_insert_with(|| Rc::new(infer_facts(model)))
            .clone()
    }

    /// Drops the facts: the model changed.
    pub fn forget_facts(&mut self) {
        self.facts = None;
    }

    /// Records why a pattern did not fire (kept only under `--explain`).
    pub fn refuse(&mut self, pass: &str, node: &str, op: &str, why: &str) {
        if let Some(notes) = self.explain.as_mut() {
            notes.insert(format!("{pass}: kept {op} '{node}': {why}"));
        }
    }

    /// The reasons recorded so far, sorted.
    pub fn explained(&self) -> Vec<String> {
        self.explain.iter().flatten().cloned().collect::<Vec<_>>()
    }
}

pub trait Pass {
    /// Stable kebab-case id used by `--passes`, `--disable` and reports.
    fn id(&self) -> &'static str;
    /// One line for `--list-passes`.
    fn about(&self) -> &'static str;
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed>;
    /// What the report should say about the model once its stage is over (what the pass had
    /// to leave, and why); `None` for nothing.
    fn note(&self, _model: &Model, _cx: &mut PassContext) -> Option<Note> {
        None
    }
}

/// A pass's word for the report, as a heading and its lines.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    pub pass: &'static str,
    pub heading: String,
    pub lines: Vec<String>,
}

/// Why a pattern did not match at a node.
pub enum Refusal {
    /// The node is not this pattern at all: too common to report.
    NotMine,
    /// It nearly is, and this is what stops it (for `--explain`).
    Because(Cow<'static, str>),
    /// It would be, were the value read by this node alone; the node producing the value is
    /// cheap to repeat (a Pad, a scale, an Unsqueeze), so when every reader refuses for this
    /// reason, the driver gives each reader its own copy and matches them again (see
    /// [`copy_for_each_reader`]). The reason is for `--explain` when that does not happen.
    Shared(ValueId, Cow<'static, str>),
}

impl From<&'static str> for Refusal {
    fn from(why: &'static str) -> Refusal {
        Refusal::Because(Cow::Borrowed(why))
    }
}

impl From<String> for Refusal {
    fn from(why: String) -> Refusal {
        Refusal::Because(Cow::Owned(why))
    }
}

/// What a match may consult besides the graph.
pub struct Look<'a> {
    /// tract's facts, for a rewrite that asked for them: the values of the main graph and of
    /// its If, Loop and Scan bodies (see [`infer_facts`]).
    pub facts: Option<&'a Facts>,
    /// The model's default-domain opset.
    pub opset: i64,
}

impl Look<'_> {
    /// The rank of `v` of `g`: what tract proves, or else a constant's, or the rank the op
    /// producing `v` fixes whatever its input (a Reshape to a constant target, a Flatten, a
    /// Gemm). The facts leave the rank of a loop-carried value open (it may change from one
    /// iteration to the next) and know nothing of a value a rewrite made since they were
    /// inferred; these ops are where such values settle their ranks.
    pub fn rank(&self, g: &Graph, v: ValueId) -> Option<usize> {
        if let Some(r) = self.facts.and_then(|f| f.rank(g.value(v).name())) {
            return Some(r);
        }
        if let Some(t) = g.value(v).constant() {
            return Some(t.dims().len());
        }
        let node = g.node(g.producer(v)?);
        if !node.in_standard_domain() {
            return None;
        }
        match node.op() {
            "Flatten" | "Gemm" => Some(2),
            "Reshape" => {
                let target = g.value(node.input(1)?).constant()?;
                match target.dims() {
                    [len] => usize::try_from(*len).ok(),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// A rewrite: where its pattern may be anchored, how a match is found on `&Graph`, and how it
/// is applied through the patch. [`Pass`] is implemented for every rewrite by the one loop
/// below: every graph (innermost first, or the main graph only), anchors in node order, each
/// matched against the graph as the previous rewrites left it, refusals to `--explain` under
/// the rewrite's id.
pub trait Rewrite {
    type Match;
    const ID: &'static str;
    const ABOUT: &'static str;
    /// Whether the pattern is sought inside subgraph bodies too.
    const IN_BODIES: bool = true;
    /// Whether matching reads tract's facts (inferred only when some anchor exists).
    const NEEDS_FACTS: bool = false;
    /// Whether anchors are tried readers first (reverse topological order) instead of in node
    /// order: for a rewrite whose match at a reader reads through the producer, which
    /// rewriting the producer first would hide.
    const READERS_FIRST: bool = false;

    /// Whether the rewrite can apply to this model at all (an opset it needs, ...).
    fn applies(&self, _model: &Model) -> bool {
        true
    }
    /// Whether `n` may anchor a match: a cheap test on the node.
    fn anchors(&self, g: &Graph, n: NodeId) -> bool;
    fn find(&self, g: &Graph, n: NodeId, look: &Look) -> Result<Self::Match, Refusal>;
    fn apply(&self, patch: &mut Patch, m: Self::Match) -> Result<()>;
    /// See [`Pass::note`].
    fn note(&self, _model: &Model, _cx: &mut PassContext) -> Option<Note> {
        None
    }
}

impl<R: Rewrite> Pass for R {
    fn id(&self) -> &'static str {
        R::ID
    }

    fn about(&self) -> &'static str {
        R::ABOUT
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        if !self.applies(model) || !any_node(&model.graph, &|g, n| self.anchors(g, n)) {
            return Ok(Changed::No);
        }
        let facts = R::NEEDS_FACTS.then(|| cx.facts(model));
        let opset = model.opset("").unwrap_or(1);
        let n = model.graph.for_each_graph(&mut |g, scope| {
            if scope == Scope::Body && !R::IN_BODIES {
                return Ok(0);
            }
            let look = Look {
                facts: facts.as_deref(),
                opset,
            };
            let mut anchors: Vec<NodeId> = if R::READERS_FIRST {
                let mut order = g.topo_order()?;
                order.reverse();
                order
            } else {
                let mut all: Vec<NodeId> = g.node_ids().collect();
                all.sort();
                all
            };
            anchors.retain(|&n| self.anchors(g, n));
            let mut done = 0;
            // Readers refused only because they share a value: (value, reader, reason).
            let mut shared: Vec<(ValueId, NodeId, Cow<'static, str>)> = Vec::new();
            for n in anchors {
                // An earlier rewrite may have removed the node or taken its pattern apart.
                if !g.contains_node(n) || !self.anchors(g, n) {
                    continue;
                }
                match self.find(g, n, &look) {
                    Ok(m) => {
                        let mut patch = Patch::new(g);
                        self.apply(&mut patch, m)?;
                        done += patch.commit()?;
                    }
                    Err(Refusal::NotMine) => {}
                    Err(Refusal::Because(why)) => {
                        let node = g.node(n);
                        cx.refuse(R::ID, node.name(), node.op(), &why);
                    }
                    Err(Refusal::Shared(v, why)) => shared.push((v, n, why)),
                }
            }
            let mut values: Vec<ValueId> = shared.iter().map(|s| s.0).collect();
            values.sort();
            values.dedup();
            for v in values {
                let asked: Vec<NodeId> = shared.iter().filter(|s| s.0 == v).map(|s| s.1).collect();
                let copied = copy_for_each_reader(self, g, v, &asked, &look)?;
                if copied == 0 {
                    let kept = shared.iter().filter(|s| s.0 == v && g.contains_node(s.1));
                    for (_, n, why) in kept {
                        let node = g.node(*n);
                        cx.refuse(R::ID, node.name(), node.op(), why);
                    }
                }
                done += copied;
            }
            Ok(done)
        })?;
        Ok(Changed::from_count(n))
    }

    fn note(&self, model: &Model, cx: &mut PassContext) -> Option<Note> {
        Rewrite::note(self, model, cx)
    }
}

/// When every node reading `v` is in `asked` (each refused only because others read `v` too),
/// gives each reader but the first its own copy of `v`'s producer and applies `r` at every
/// reader. Before: the producer and k readers; after: k fused readers, one node fewer, and the
/// producer's work gone. Tried on a copy of the graph and kept only if every reader then
/// matches: a copy some reader would not absorb would add a node. Returns the edits made.
fn copy_for_each_reader<R: Rewrite>(
    r: &R,
    g: &mut Graph,
    v: ValueId,
    asked: &[NodeId],
    look: &Look,
) -> Result<usize> {
    let mut readers: Vec<NodeId> = g.value(v).uses().iter().map(|u| u.node).collect();
    readers.sort();
    let once = readers.windows(2).all(|w| w[0] != w[1]);
    let Some(p) = g.producer(v) else {
        return Ok(0);
    };
    let pn = g.node(p);
    let copyable = pn.in_standard_domain()
        && !pn.has_bodies()
        && !NONDETERMINISTIC.contains(&pn.op())
        && pn.outputs().iter().flatten().all(|&o| o == v);
    let all_asked = readers.len() > 1 && readers.iter().all(|n| asked.contains(n));
    if !once || !copyable || !all_asked || g.is_output(v) {
        return Ok(0);
    }
    let (op, name, inputs, attrs) = (
        pn.op().to_string(),
        pn.name().to_string(),
        pn.inputs().to_vec(),
        pn.attrs().to_vec(),
    );
    let ty = g.ty(v).cloned();
    let mut trial = g.clone();
    let mut patch = Patch::new(&mut trial);
    for &reader in &readers[1..] {
        let copy = patch.add_node(
            &op,
            &name,
            &inputs,
            attrs.clone(),
            std::slice::from_ref(&ty),
        )?;
        let out = patch.graph().node(copy).output(0);
        let inputs: Vec<Option<ValueId>> = (patch.graph().node(reader).inputs().iter())
            .map(|&i| if i == Some(v) { out } else { i })
            .collect();
        patch.set_inputs(reader, &inputs);
    }
    let mut done = patch.commit()?;
    for &reader in &readers {
        let Ok(m) = r.find(&trial, reader, look) else {
            return Ok(0);
        };
        let mut patch = Patch::new(&mut trial);
        r.apply(&mut patch, m)?;
        done += patch.commit()?;
    }
    *g = trial;
    Ok(done)
}

/// Why `v` is not read by one node alone, for `--explain`: that it is a graph output, or how
/// many reads it has and by which ops. `None` when one node reads it once.
pub fn shared_reads(g: &Graph, v: ValueId, what: &str) -> Option<String> {
    if g.is_output(v) {
        return Some(format!("{what} is also a graph output"));
    }
    let uses = g.value(v).uses();
    if uses.len() < 2 {
        return None;
    }
    let readers: Vec<String> = uses
        .iter()
        .take(4)
        .map(|u| format!("{} '{}'", g.node(u.node).op(), g.node(u.node).name()))
        .collect();
    let more = if uses.len() > 4 { ", ..." } else { "" };
    Some(format!(
        "{what} has other readers ({} reads: {}{more})",
        uses.len(),
        readers.join(", ")
    ))
}

/// The operand of binary node `n` other than `v`.
pub fn other_operand(g: &Graph, n: NodeId, v: ValueId) -> Option<ValueId> {
    let node = g.node(n);
    match (node.input(0), node.input(1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

/// The operands of binary node `n` as (the one `pick` accepts, the other), trying the first
/// operand first.
pub fn operand_where(
    g: &Graph,
    n: NodeId,
    pick: impl Fn(ValueId) -> bool,
) -> Option<(ValueId, ValueId)> {
    let node = g.node(n);
    let (a, b) = (node.input(0)?, node.input(1)?);
    if pick(a) {
        Some((a, b))
    } else if pick(b) {
        Some((b, a))
    } else {
        None
    }
}

/// The node producing `v`, when it is an `op`.
pub fn producer_op(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    g.producer(v).filter(|&n| g.node(n).is(op))
}

/// The single node reading `v`, when it is an `op` (see [`Graph::only_reader`]).
pub fn only_reader_op(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    g.only_reader(v).filter(|&n| g.node(n).is(op))
}

/// The value of a one-element f32 constant.
pub fn scalar(g: &Graph, v: Option<ValueId>) -> Option<f32> {
    let t = g.value(v?).constant()?;
    let vals = t.to_f32_vec()?;
    (vals.len() == 1).then(|| vals[0])
}

/// Whether `f` holds for some node of `g` or of a subgraph inside it: lets a pass that needs
/// tract's facts skip inferring them when its pattern cannot occur.
pub fn any_node(g: &Graph, f: &dyn Fn(&Graph, NodeId) -> bool) -> bool {
    g.node_ids().any(|n| {
        f(g, n)
            || g.node(n)
                .attrs()
                .iter()
                .flat_map(|a| a.bodies())
                .any(|b| any_node(b, f))
    })
}
