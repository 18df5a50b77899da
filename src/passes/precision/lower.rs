//! `lower-precision`: weights stored and ops computed in 16 bits, Casts only where the
//! precision changes.
//!
//! ```text
//!   x:f32 ─▶ Conv(W:f32) ─▶ Relu ─▶ ReduceMean(4096 elements) ─▶ Mul(c) ─▶ y:f32
//!   ⇒
//!   x:f32 ─▶ Cast(f16) ─▶ Conv(W:f16) ─▶ Relu ─▶ Cast(f32) ─▶ ReduceMean ─▶ Cast(f16) ─▶ Mul(c:f16)
//!         ─▶ Cast(f32) ─▶ y:f32
//! ```
//!
//! Each float op goes to 16 bits unless a rule ([`super::rules`]), a measured range, the
//! accuracy search or `--exclude` keeps it in f32; what it computes is then declared in 16
//! bits, so every declared type agrees with its producer. The operator schemas decide what
//! must move together: the formals of one type parameter share a type (an Add's operands and
//! output), a formal the schema fixes keeps its type (Resize's `scales`), and an input whose
//! type parameter no output shares is read as it comes (a Shape reads f16 as well as f32).
//! A value read in another precision than its producer's is read through one Cast per value
//! and precision, shared by its readers; a constant is converted instead (once, in place when
//! no reader wants f32). Graph inputs and outputs keep their types unless `--io-types low`.
//!
//! Bodies of If, Loop and Scan are lowered too, after the graph holding them (a body reads
//! what its captured values became outside); their inputs and outputs keep their declared
//! types, as do the holder's own, so no declaration inside or around a body disagrees with
//! what computes it. A holder the search or `--exclude` names keeps its bodies in f32.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use bytes::Bytes;

use super::rules::{self, Why};
use super::schemas::{schema, Formal, Schema, Tie};
use super::types::{infer, Types};
use super::{Io, Kept, Kind, Lowered, PrecisionOptions, Ranges};
use crate::ir::{
    first_free, Attr, AttrValue, BodyFeed, DType, Def, Graph, NodeId, Patch, Slot, Tensor, Type,
    ValueId,
};
use crate::passes::union_find::UnionFind;
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::Facts;

pub struct LowerPrecision;

impl Pass for LowerPrecision {
    fn id(&self) -> &'static str {
        "lower-precision"
    }

    fn about(&self) -> &'static str {
        "store weights and compute in fp16/bf16, Casts only where the precision changes"
    }

    fn run(&self, model: &mut crate::ir::Model, cx: &mut PassContext) -> Result<Changed> {
        let opts = cx.get::<PrecisionOptions>().cloned().unwrap_or_default();
        let facts = cx.facts(model);
        let env = Env {
            opts,
            opset: model.opset("").unwrap_or(1),
            facts: &facts,
            kept: cx.get::<Kept>().cloned().unwrap_or_default(),
            ranges: cx.get::<Ranges>().cloned().unwrap_or_default(),
            exclude: cx.exclude.clone(),
        };
        let mut record = Lowered::default();
        let empty = HashMap::new();
        let n = lower(&mut model.graph, &env, "", (&empty, &empty), &mut record)?;
        cx.provide(record);
        Ok(Changed::from_count(n))
    }
}

/// What every graph is lowered by.
struct Env<'a> {
    opts: PrecisionOptions,
    opset: i64,
    facts: &'a Facts,
    /// Ops the search gave back to f32.
    kept: Kept,
    ranges: Ranges,
    exclude: Vec<String>,
}

impl Env<'_> {
    fn low(&self) -> DType {
        self.opts.kind.dtype()
    }

    /// Why node `name` (an `op`) stays in f32 by what the job was given: the user's
    /// exclusions, the search's choice.
    fn given(&self, name: &str, op: &str) -> Option<Why> {
        if self.exclude.iter().any(|e| e == name || e == op) {
            return Some(Why::new("excluded", "--exclude names it"));
        }
        self.kept.ops.get(name).cloned()
    }
}

/// How a node of a graph is lowered.
#[derive(Clone, Debug)]
enum Decision {
    Low,
    F32(Why),
    /// An If, Loop or Scan: its interface stays as declared.
    Holder,
}

/// Lowers `g` (named `path` in reports; "" for the main graph) and then the bodies it holds;
/// `outer` holds the element types of the values a body may capture, before and after the
/// graphs around it were lowered. Returns the edits made.
fn lower(
    g: &mut Graph,
    env: &Env,
    path: &str,
    outer: (&HashMap<String, DType>, &HashMap<String, DType>),
    record: &mut Lowered,
) -> Result<usize> {
    let main = path.is_empty();
    let old = infer(g, outer.0, env.opset);
    let mut before = outer.0.clone();
    before.extend(by_name(g, &old));
    let preview = Preview::of(g, &before, env);
    let decisions = decide(g, &old, env, main);
    let plan = Plan::of(g, &old, &decisions, env, (main, outer.1), &preview);
    for (n, d) in &decisions {
        let node = g.node(*n);
        let name = format!("{path}{}", node.name());
        match d {
            Decision::Low => record.low.push((name, node.op().to_string())),
            Decision::F32(why) => record.f32.push((name, node.op().to_string(), why.clone())),
            Decision::Holder => {}
        }
    }
    record.casts += plan.casts(g);
    // A new value is named once across the model: not as an outer value nor one inside.
    let mut reserved = g.all_names();
    reserved.extend(outer.0.keys().chain(outer.1.keys()).cloned());
    let mut done = plan.apply(g, env.opts.kind, &reserved)?;
    if env.opts.strongly_typed {
        done += declare_all(g, outer.1, env.opset)?;
    }
    for (&n, slots) in &preview.if_outputs {
        done += g.edit_bodies(n, &mut |body| declare_outputs(body, slots, env.low()))?;
    }
    // What the bodies see: the outer values' types before (by the names they have now) and
    // after lowering.
    let mut before = outer.0.clone();
    before.extend(by_name(g, &old));
    let mut after = outer.1.clone();
    after.extend(by_name(g, &infer(g, outer.1, env.opset)));
    let holders: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).has_bodies()).collect();
    for n in holders {
        let node = g.node(n);
        if let Some(why) = env.given(node.name(), node.op()) {
            let name = format!("{path}{}", node.name());
            record.f32.push((name, node.op().to_string(), why));
            continue;
        }
        let inner = format!("{path}{}/", node.name());
        let fed = fed_types(g, n, &old);
        done += g.edit_bodies(n, &mut |body| {
            let typed = declare_inputs(body, &fed)?;
            Ok(typed + lower(body, env, &inner, (&before, &after), record)?)
        })?;
    }
    Ok(done)
}

/// The element types a Loop's or Scan's body inputs take from the node (see
/// [`Graph::body_feeds`]); empty for an If, whose bodies have no inputs.
fn fed_types(g: &Graph, n: NodeId, old: &Types) -> Vec<Option<DType>> {
    let inputs = (g.node(n).attrs().iter())
        .flat_map(|a| a.bodies())
        .next()
        .map_or(0, |b| b.inputs().len());
    (g.body_feeds(n, inputs).into_iter())
        .map(|feed| match feed {
            BodyFeed::Made(d) => Some(d),
            BodyFeed::Input(v) => v.and_then(|v| old.get(&v).copied()),
        })
        .collect()
}

/// Declares the element type of each of `body`'s inputs that has none from `fed`: exporters
/// leave them untyped, and lowering must know which are f32 to convert them where a 16-bit
/// op reads them.
fn declare_inputs(body: &mut Graph, fed: &[Option<DType>]) -> Result<usize> {
    let untyped: Vec<(ValueId, DType)> = (body.inputs().iter().zip(fed))
        .filter(|(&v, _)| body.dtype(v).is_none())
        .filter_map(|(&v, d)| Some((v, (*d)?)))
        .collect();
    let mut patch = Patch::new(body);
    for (v, d) in untyped {
        let ty = retyped(patch.graph(), v, d);
        patch.set_type(v, ty);
    }
    patch.commit()
}

/// The types of `g`'s values by their names.
fn by_name(g: &Graph, types: &Types) -> Vec<(String, DType)> {
    (g.values())
        .filter_map(|(v, x)| Some((x.name().to_string(), *types.get(&v)?)))
        .collect()
}

/// Declares the body outputs at `slots` in the 16-bit type `low`: an If output every branch
/// makes in 16 bits is declared so, with no Cast on either side of the If.
fn declare_outputs(body: &mut Graph, slots: &[usize], low: DType) -> Result<usize> {
    let outputs: Vec<ValueId> = (slots.iter())
        .filter_map(|&k| body.outputs().get(k).map(|o| o.value))
        .collect();
    let mut patch = Patch::new(body);
    for y in outputs {
        let ty = retyped(patch.graph(), y, low);
        patch.set_output_type(y, ty);
    }
    patch.commit()
}

/// What lowering the bodies of `g`'s holders would make of what they share with `g`, found
/// before `g` is lowered (bodies are lowered after it): the captured constants every reader in
/// a body wants in 16 bits, and the If outputs every branch makes in 16 bits. Only saves
/// Casts: a body lowered otherwise still casts to whatever it is declared.
#[derive(Default)]
struct Preview {
    /// Captured values some body reads in 16 bits, and those some body reads in f32.
    captured_low: Vec<String>,
    captured_f32: Vec<String>,
    /// If ⇒ the output slots every branch makes in 16 bits.
    if_outputs: HashMap<NodeId, Vec<usize>>,
}

impl Preview {
    fn of(g: &Graph, outer: &HashMap<String, DType>, env: &Env) -> Preview {
        let mut preview = Preview::default();
        for n in g.node_ids().filter(|&n| g.node(n).has_bodies()) {
            let node = g.node(n);
            if env.given(node.name(), node.op()).is_some() {
                continue;
            }
            let mut outputs: Option<Vec<usize>> = None;
            for body in node.attrs().iter().flat_map(|a| a.bodies()) {
                let old = infer(body, outer, env.opset);
                let decisions = decide(body, &old, env, false);
                let plan = Plan::of(
                    body,
                    &old,
                    &decisions,
                    env,
                    (false, outer),
                    &Preview::default(),
                );
                preview.note_captures(body, &plan);
                let low: Vec<usize> = (body.outputs().iter().enumerate())
                    .filter(|(_, o)| body.producer(o.value).is_some())
                    .filter(|(_, o)| plan.new.get(&o.value) == Some(&env.low()))
                    .map(|(k, _)| k)
                    .collect();
                outputs = Some(match outputs {
                    None => low,
                    Some(o) => o.into_iter().filter(|k| low.contains(k)).collect(),
                });
            }
            let slots = outputs.unwrap_or_default();
            // If's outputs take bf16 only from opset 16: below, the branches cast back.
            let typed = schema(node.op(), env.opset)
                .and_then(|s| s.output(0))
                .is_some_and(|f| f.accepts(env.low()));
            if node.is("If") && typed && !slots.is_empty() {
                preview.if_outputs.insert(n, slots);
            }
        }
        preview
    }

    /// Which captured values `body` reads in 16 bits (through a conversion), and which as they
    /// are.
    fn note_captures(&mut self, body: &Graph, plan: &Plan) {
        for &c in body.captures() {
            let name = body.value(c).name().to_string();
            for u in body.value(c).uses() {
                let converted = plan.reads.iter().any(|r| {
                    r.2 == c && Slot::Input(r.1) == u.slot && r.0 == u.node && r.3 != DType::F32
                });
                if converted {
                    self.captured_low.push(name.clone());
                } else {
                    self.captured_f32.push(name.clone());
                }
            }
        }
    }

    /// Whether every body reading captured value `name` reads it in 16 bits.
    fn all_low(&self, name: &str) -> bool {
        self.captured_low.iter().any(|n| n == name) && !self.captured_f32.iter().any(|n| n == name)
    }
}

/// Declares the element type of every value `g`'s nodes make and do not declare yet (their
/// shape as declared, else unknown): a strongly typed consumer reads every precision off the
/// file. Returns the edits made.
fn declare_all(g: &mut Graph, outer: &HashMap<String, DType>, opset: i64) -> Result<usize> {
    let types = infer(g, outer, opset);
    let undeclared: Vec<(ValueId, Type)> = (g.values())
        .filter(|(v, x)| matches!(x.def(), Def::Node { .. }) && !g.value_info().contains(v))
        .filter(|(v, _)| !g.is_output(*v))
        .filter_map(|(v, _)| Some((v, retyped(g, v, *types.get(&v)?))))
        .collect();
    let mut patch = Patch::new(g);
    for (v, ty) in undeclared {
        patch.declare(v, ty);
    }
    patch.commit()
}

/// The decision for every float op of `g` and every holder.
fn decide(g: &Graph, old: &Types, env: &Env, main: bool) -> BTreeMap<NodeId, Decision> {
    let look = rules::Look {
        types: old,
        kind: env.opts.kind,
        opset: env.opset,
        facts: Some(env.facts),
        strongly_typed: env.opts.strongly_typed,
    };
    let by_rule = rules::kept(g, &look);
    let mut decisions = BTreeMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if node.has_bodies() {
            decisions.insert(n, Decision::Holder);
            continue;
        }
        if !rules::is_float_op(g, n, &look) {
            continue;
        }
        let measured = || main.then(|| env.ranges.why(g, n, env.opts.kind)).flatten();
        let why = (env.given(node.name(), node.op()))
            .or_else(|| by_rule.get(&n).cloned())
            .or_else(measured);
        decisions.insert(n, why.map_or(Decision::Low, Decision::F32));
    }
    demote_enclosed(g, old, &mut decisions);
    decisions
}

/// Keeps in f32 the regions of 16-bit ops without weights that f32 ops enclose: lowering one
/// would add a Cast on every edge in and out and store nothing smaller (the activations
/// between Convs that a bf16 opset keeps in f32, an op between two a rule keeps). A region
/// that reaches the graph's interface, a subgraph holder or a weight stays in 16 bits.
fn demote_enclosed(g: &Graph, old: &Types, decisions: &mut BTreeMap<NodeId, Decision>) {
    let is_f32 = |v: &&ValueId| old.get(*v) == Some(&DType::F32);
    let floats_in = |n: NodeId| g.node(n).inputs().iter().flatten().filter(is_f32).copied();
    let floats_out = |n: NodeId| g.node(n).outputs().iter().flatten().filter(is_f32).copied();
    let free = |n: NodeId, decisions: &BTreeMap<NodeId, Decision>| {
        matches!(decisions.get(&n), Some(Decision::Low))
            && floats_in(n).all(|v| g.value(v).constant().is_none())
    };
    let mut regions: UnionFind<NodeId> = UnionFind::new();
    let members: Vec<NodeId> = decisions
        .keys()
        .copied()
        .filter(|&n| free(n, decisions))
        .collect();
    for &n in &members {
        regions.join(n, n);
        for v in floats_out(n) {
            for u in g.value(v).uses().iter().filter(|u| free(u.node, decisions)) {
                regions.join(n, u.node);
            }
        }
    }
    // A region is open when an edge leaves it to anything but an f32 op.
    let f32_op =
        |n: Option<NodeId>| matches!(n.and_then(|n| decisions.get(&n)), Some(Decision::F32(_)));
    let mut open: Vec<NodeId> = Vec::new();
    for &n in &members {
        let inside =
            |m: NodeId, r: &mut UnionFind<NodeId>| free(m, decisions) && r.root(m) == r.root(n);
        let ins_closed = floats_in(n).all(|v| {
            let p = g.producer(v);
            p.is_some_and(|p| inside(p, &mut regions)) || f32_op(p)
        });
        let outs_closed = floats_out(n).all(|v| {
            !g.is_output(v)
                && g.value(v).uses().iter().all(|u| {
                    u.slot != Slot::Capture
                        && (inside(u.node, &mut regions) || f32_op(Some(u.node)))
                })
        });
        if !(ins_closed && outs_closed) {
            open.push(regions.root(n));
        }
    }
    for n in members {
        if !open.contains(&regions.root(n)) {
            let why = Why::new(
                "enclosed",
                "only f32 ops around it: 16 bits would only add Casts",
            );
            decisions.insert(n, Decision::F32(why));
        }
    }
}

/// What lowering one graph does, found on `&Graph` and applied through one patch.
#[derive(Default)]
struct Plan {
    /// Values that become 16-bit where they are made, with their new type.
    retyped: Vec<(ValueId, Type)>,
    /// Attributes that change with them (a Cast's `to`, a ConstantOfShape's `value`).
    attrs: Vec<(NodeId, Attr)>,
    /// f32 constants every reader wants in 16 bits: converted in place.
    weights: Vec<ValueId>,
    /// Other reads of a value in another type than it has: (reader, slot, value, wanted).
    reads: Vec<(NodeId, usize, ValueId, DType)>,
    /// Graph outputs to cast to their declared type, and the type.
    outputs: Vec<(ValueId, DType)>,
    /// Graph outputs whose declaration becomes 16-bit (`--io-types low`).
    declared: Vec<(ValueId, Type)>,
    /// The element type of every value once the plan is applied.
    new: Types,
}

impl Plan {
    fn of(
        g: &Graph,
        old: &Types,
        decisions: &BTreeMap<NodeId, Decision>,
        env: &Env,
        (main, outer_new): (bool, &HashMap<String, DType>),
        preview: &Preview,
    ) -> Plan {
        let mut plan = Plan::default();
        let io_low = main && env.opts.io == Io::Low;
        let mut new = starting_types(g, old, outer_new);
        if io_low {
            for &x in g
                .inputs()
                .iter()
                .filter(|&&x| old.get(&x) == Some(&DType::F32))
            {
                plan.retyped.push((x, retyped(g, x, env.low())));
                new.insert(x, env.low());
            }
        }
        for n in g.topo_order().unwrap_or_else(|_| g.node_ids().collect()) {
            let ties = Ties::of(g, n, old, &new, decisions.get(&n), env);
            for (slot, v) in g.node(n).inputs().iter().enumerate() {
                let Some(v) = *v else { continue };
                let want = ties.input(slot, v, old, &new);
                if let Some(w) = want.filter(|&w| Some(w) != new.get(&v).copied()) {
                    plan.reads.push((n, slot, v, w));
                }
            }
            let made = ties.outputs(g, n, old, &mut plan.attrs, env);
            for (y, ty) in made
                .into_iter()
                .chain(if_outputs(g, n, old, preview, env.low()))
            {
                new.insert(y, ty.dtype().expect("a tensor type"));
                plan.retyped.push((y, ty));
            }
        }
        plan.interface(g, old, &new, io_low, env.low());
        plan.convert_weights_in_place(g, preview);
        plan.new = new;
        plan
    }

    /// What the graph's outputs need: a Cast back to the declared type, or (`--io-types
    /// low`) a 16-bit declaration. An output declared without a type (a body's, as exporters
    /// often write them) keeps the type it had: its holder's output is typed by it, and may
    /// not take the 16-bit one (an If before opset 16 and bf16).
    fn interface(&mut self, g: &Graph, old: &Types, new: &Types, io_low: bool, low: DType) {
        for o in g.outputs() {
            let y = o.value;
            let declared =
                (o.info.ty.as_ref().and_then(Type::dtype)).or_else(|| old.get(&y).copied());
            let (Some(declared), Some(is)) = (declared, new.get(&y).copied()) else {
                continue;
            };
            if io_low && declared == DType::F32 && is == low {
                self.declared.push((y, retyped(g, y, low)));
            } else if io_low && declared == DType::F32 && g.producer(y).is_some() {
                self.outputs.push((y, low));
            } else if is != declared && is_float(Some(is)) && g.producer(y).is_some() {
                self.outputs.push((y, declared));
            }
        }
    }

    /// Moves the reads of f32 constants that every reader wants in 16 bits (bodies capturing
    /// them included, as `preview` foresees them) to a conversion in place; the others get a
    /// converted copy each, shared by their 16-bit readers.
    fn convert_weights_in_place(&mut self, g: &Graph, preview: &Preview) {
        let mut wanted: HashMap<ValueId, usize> = HashMap::new();
        for &(_, _, v, d) in &self.reads {
            if d != DType::F32 && g.value(v).constant().is_some() {
                *wanted.entry(v).or_default() += 1;
            }
        }
        for &v in g.initializers() {
            let captured = (g.value(v).uses().iter())
                .filter(|u| u.slot == Slot::Capture)
                .count();
            let f32_constant = g
                .value(v)
                .constant()
                .is_some_and(|t| t.dtype() == DType::F32);
            if captured > 0 && f32_constant && preview.all_low(g.value(v).name()) {
                *wanted.entry(v).or_default() += captured;
            }
        }
        let mut whole: Vec<ValueId> = (wanted.into_iter())
            .filter(|&(v, k)| k == g.value(v).uses().len() && !g.is_output(v))
            .map(|(v, _)| v)
            .collect();
        whole.sort();
        self.reads.retain(|r| whole.binary_search(&r.2).is_err());
        self.weights = whole;
    }

    /// Casts this plan adds (converted constants are not Casts).
    fn casts(&self, g: &Graph) -> usize {
        let mut keys: Vec<(ValueId, DType)> = (self.reads.iter())
            .filter(|r| g.value(r.2).constant().is_none())
            .map(|&(_, _, v, d)| (v, d))
            .chain(self.outputs.iter().copied())
            .collect();
        keys.sort();
        keys.dedup();
        keys.len()
    }

    fn apply(&self, g: &mut Graph, kind: Kind, reserved: &HashSet<String>) -> Result<usize> {
        let mut patch = Patch::new(g);
        for (v, ty) in &self.retyped {
            patch.set_type(*v, ty.clone());
        }
        for (n, attr) in &self.attrs {
            patch.set_attr(*n, attr.clone());
        }
        for (y, ty) in &self.declared {
            patch.set_output_type(*y, ty.clone());
        }
        for &w in &self.weights {
            let old = patch.graph().value(w).constant().expect("a constant");
            let t = lowered(old, kind);
            // Nothing reads the f32 weight any more: its pages of the mapped file can go, so
            // that converting a model holds its weights once, not once in each precision.
            old.forget_resident();
            patch.resize_initializer(w, t)?;
        }
        let mut made: HashMap<(ValueId, DType), ValueId> = HashMap::new();
        let reads = self
            .reads
            .iter()
            .map(|&(n, slot, v, d)| (Some((n, slot)), v, d));
        let outputs = self.outputs.iter().map(|&(y, d)| (None, y, d));
        for (reader, v, want) in reads.chain(outputs) {
            let from = match made.get(&(v, want)) {
                Some(&c) => c,
                None => {
                    let c = convert(&mut patch, v, want, kind, reserved)?;
                    made.insert((v, want), c);
                    c
                }
            };
            match reader {
                Some((n, slot)) => patch.set_input(n, slot, Some(from)),
                None => patch.move_output(v, from)?,
            }
        }
        patch.commit()
    }
}

/// The outputs of If `n` that `preview` found every branch makes in 16 bits, retyped.
fn if_outputs(
    g: &Graph,
    n: NodeId,
    old: &Types,
    preview: &Preview,
    low: DType,
) -> Vec<(ValueId, Type)> {
    let slots = preview.if_outputs.get(&n).map_or(&[][..], Vec::as_slice);
    (slots.iter())
        .filter_map(|&k| g.node(n).output(k))
        .filter(|y| old.get(y) == Some(&DType::F32))
        .map(|y| (y, retyped(g, y, low)))
        .collect()
}

/// The types values have before any op of `g` changes: what they were, captures as the
/// graphs around lowered them.
fn starting_types(g: &Graph, old: &Types, outer_new: &HashMap<String, DType>) -> Types {
    let mut new = old.clone();
    for (v, value) in g.values() {
        if let Some(&d) = (value.def() == Def::Capture)
            .then(|| outer_new.get(value.name()))
            .flatten()
        {
            new.insert(v, d);
        }
    }
    new
}

/// `v` in type `want`: a converted copy of a constant, or a Cast; its name is none of
/// `reserved` (the names outside this graph and inside its subgraphs).
fn convert(
    patch: &mut Patch,
    v: ValueId,
    want: DType,
    kind: Kind,
    reserved: &HashSet<String>,
) -> Result<ValueId> {
    let g = patch.graph();
    let suffix = if want == DType::F32 {
        "fp32"
    } else {
        kind.name()
    };
    let base = format!("{}_{suffix}", g.value(v).name());
    let name = first_free(&base, |c| reserved.contains(c) || g.find(c).is_some());
    if let Some(t) = g.value(v).constant().filter(|t| t.dtype() == DType::F32) {
        let t = lowered(t, kind);
        return patch.add_initializer(&name, t);
    }
    let ty = retyped(g, v, want);
    let cast = patch.add_node_named(
        "Cast",
        &format!("{}_to_{suffix}", g.value(v).name()),
        &[Some(v)],
        vec![Attr::int("to", want.0 as i64)],
        &[(name, Some(ty))],
    )?;
    Ok(patch
        .graph()
        .node(cast)
        .output(0)
        .expect("a Cast has an output"))
}

/// The type of `v` with element type `d`, its shape as declared.
fn retyped(g: &Graph, v: ValueId, d: DType) -> Type {
    Type::Tensor {
        dtype: d,
        shape: g.shape(v).map(<[_]>::to_vec),
    }
}

fn is_float(d: Option<DType>) -> bool {
    matches!(d, Some(DType::F32 | DType::F16 | DType::BF16))
}

/// An f32 tensor in 16 bits, rounded to nearest even, written once into a buffer of its
/// final size: the only copy is the output tensor.
pub fn lowered(t: &Tensor, kind: Kind) -> Tensor {
    use half::slice::HalfFloatSliceExt;
    let raw = t.f32_bytes().unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len() / 2);
    // In blocks: the bytes of a mapped file need not be aligned for f32, and a slice converts
    // with the CPU's vector instructions where it has them (F16C), element by element not.
    const BLOCK: usize = 1024;
    let (mut wide, mut f16s, mut bf16s) = (
        [0f32; BLOCK],
        [half::f16::ZERO; BLOCK],
        [half::bf16::ZERO; BLOCK],
    );
    for block in raw.chunks(4 * BLOCK) {
        let n = block.len() / 4;
        for (w, c) in wide.iter_mut().zip(block.chunks_exact(4)) {
            *w = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let bits: &[u16] = match kind {
            Kind::F16 => {
                f16s[..n].convert_from_f32_slice(&wide[..n]);
                f16s[..n].reinterpret_cast()
            }
            Kind::Bf16 => {
                bf16s[..n].convert_from_f32_slice(&wide[..n]);
                bf16s[..n].reinterpret_cast()
            }
        };
        out.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
    }
    Tensor::from_raw(kind.dtype(), t.dims().to_vec(), Bytes::from(out))
}

/// How one node's formals are typed after lowering: the type each of its type parameters
/// with an f32 member takes.
struct Ties {
    formals: Option<&'static Schema>,
    types: HashMap<&'static str, DType>,
    holder: bool,
}

impl Ties {
    fn of(
        g: &Graph,
        n: NodeId,
        old: &Types,
        new: &Types,
        decision: Option<&Decision>,
        env: &Env,
    ) -> Ties {
        let node = g.node(n);
        let formals = (node.in_standard_domain() && !node.has_bodies())
            .then(|| schema(node.op(), env.opset))
            .flatten();
        let mut ties = Ties {
            formals,
            types: HashMap::new(),
            holder: matches!(decision, Some(Decision::Holder)),
        };
        let Some(schema) = formals else {
            return ties;
        };
        let low = matches!(decision, Some(Decision::Low)).then(|| env.low());
        let (writing, reading): (Vec<_>, Vec<_>) = (members(g, n, schema).into_iter())
            .filter(|(_, m)| m.iter().any(|(v, _)| old.get(v) == Some(&DType::F32)))
            .partition(|(_, m)| m.iter().any(|(v, _)| g.producer(*v) == Some(n)));
        for (tie, members) in writing {
            ties.types.insert(tie, tie_type(g, n, &members, new, low));
        }
        // A parameter only inputs have goes to 16 bits with an op that writes 16 bits.
        let writes_low = low.is_some() && ties.types.values().any(|&d| Some(d) == low);
        for (tie, members) in reading {
            let low = low.filter(|_| writes_low);
            ties.types.insert(tie, tie_type(g, n, &members, new, low));
        }
        ties
    }

    /// The type input `slot` (reading `v`) must have: its type parameter's, or, for a holder,
    /// an op of another domain or a formal of a fixed type, the type it had.
    fn input(&self, slot: usize, v: ValueId, old: &Types, new: &Types) -> Option<DType> {
        let was = old.get(&v).copied();
        let formal = self.formals.and_then(|s| s.input(slot));
        match formal.map(|f| f.tie) {
            _ if self.holder => was,
            Some(Tie::Param(t)) if is_float(was) => self.types.get(t).copied().or(was),
            Some(Tie::Param(_)) => new.get(&v).copied(),
            _ if is_float(was) => was,
            _ => new.get(&v).copied(),
        }
    }

    /// The outputs of `n` that become 16-bit, with their types, adding the attributes that
    /// must change with them (a Cast's `to`, a ConstantOfShape's `value`) to `attrs`.
    fn outputs(
        &self,
        g: &Graph,
        n: NodeId,
        old: &Types,
        attrs: &mut Vec<(NodeId, Attr)>,
        env: &Env,
    ) -> Vec<(ValueId, Type)> {
        let Some(schema) = self.formals else {
            return Vec::new();
        };
        let node = g.node(n);
        let low = env.low();
        let mut out = Vec::new();
        for (slot, y) in node.outputs().iter().enumerate() {
            let Some(y) = *y else { continue };
            let Some(Tie::Param(t)) = schema.output(slot).map(|f| f.tie) else {
                continue;
            };
            if old.get(&y) != Some(&DType::F32) || self.types.get(t) != Some(&low) {
                continue;
            }
            match node.op() {
                "Cast" => attrs.push((n, Attr::int("to", low.0 as i64))),
                "ConstantOfShape" => attrs.push((n, fill_value(node, env.opts.kind))),
                _ => {}
            }
            out.push((y, retyped(g, y, low)));
        }
        out
    }
}

/// The 16-bit `value` of a ConstantOfShape (absent, it is an f32 zero).
fn fill_value(node: &crate::ir::Node, kind: Kind) -> Attr {
    let value = match node.attr("value").map(|a| a.value()) {
        Some(AttrValue::Tensor(t)) => lowered(t, kind),
        _ => lowered(&Tensor::from_f32(vec![1], &[0.0]), kind),
    };
    Attr::tensor("value", &value)
}

/// The type a type parameter of `n` takes, its members `members`; `low` is the 16-bit type
/// when `n` goes to 16 bits. A parameter an output shares takes `low` when every member
/// accepts it (an output no input shares only where an attribute sets it: Cast,
/// ConstantOfShape); one only inputs share is read as it comes when its live members already
/// agree on a type.
fn tie_type(
    g: &Graph,
    n: NodeId,
    members: &[(ValueId, Formal)],
    new: &Types,
    low: Option<DType>,
) -> DType {
    let accepts = |d: DType| members.iter().all(|(_, f)| f.accepts(d));
    let outputs = members
        .iter()
        .filter(|(v, _)| g.producer(*v) == Some(n))
        .count();
    let settable =
        outputs == members.len() && ["Cast", "ConstantOfShape"].contains(&g.node(n).op());
    if outputs > 0 {
        return match low {
            Some(l) if accepts(l) && (outputs < members.len() || settable) => l,
            _ => DType::F32,
        };
    }
    let live: Vec<DType> = (members.iter())
        .filter(|(v, _)| g.value(*v).constant().is_none())
        .filter_map(|(v, _)| new.get(v).copied())
        .collect();
    // A 16-bit op reads its inputs in 16 bits even where the schema would let a parameter
    // that no output shares keep the type it is fed: onnx's own inference and ONNX Runtime's
    // kernels tie more than the schemas say (RMSNormalization's output follows X, not only the
    // scale; Attention's mask must match Q).
    match (live.split_first(), low) {
        (_, Some(l)) if accepts(l) => l,
        (Some((&first, rest)), _) if rest.iter().all(|&d| d == first) && accepts(first) => first,
        _ => DType::F32,
    }
}

/// The values of `n`'s formals grouped by type parameter.
fn members(g: &Graph, n: NodeId, schema: &Schema) -> Vec<(&'static str, Vec<(ValueId, Formal)>)> {
    let node = g.node(n);
    let mut by_tie: Vec<(&'static str, Vec<(ValueId, Formal)>)> = Vec::new();
    let ins = (node.inputs().iter().enumerate()).map(|(i, v)| (*v, schema.input(i)));
    let outs = (node.outputs().iter().enumerate()).map(|(i, v)| (*v, schema.output(i)));
    for (v, f) in ins.chain(outs) {
        let (Some(v), Some(f)) = (v, f) else { continue };
        let Tie::Param(t) = f.tie else { continue };
        match by_tie.iter_mut().find(|(x, _)| *x == t) {
            Some((_, m)) => m.push((v, *f)),
            None => by_tie.push((t, vec![(v, *f)])),
        }
    }
    by_tie
}
