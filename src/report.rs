//! What a model holds, for `inspect` and the before/after tables (interface, opsets, op
//! histogram, parameters by dtype, subgraphs), and the report of an `optimize` job: one typed
//! struct that `--report` writes as JSON and the CLI prints as tables.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::check::{CheckReport, Outcome};
use crate::ir::{Graph, Model};
use crate::passes::PipelineReport;

#[derive(Serialize, Clone, Debug)]
pub struct Port {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Params {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Subgraph {
    /// `node/attribute`, nested with `>` for subgraphs within subgraphs.
    pub path: String,
    pub op: String,
    pub nodes: usize,
    pub captures: Vec<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Nodes of the main graph and all subgraphs.
    pub nodes: usize,
    /// op (with domain when not the default) ⇒ count, subgraphs included.
    pub ops: BTreeMap<String, usize>,
    pub params: BTreeMap<String, Params>,
    pub subgraphs: Vec<Subgraph>,
    pub functions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

impl Summary {
    pub fn of(model: &Model) -> Summary {
        let g = &model.graph;
        let port = |v| Port {
            name: g.value(v).name().to_string(),
            ty: g.ty(v).map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
        };
        let mut s = Summary {
            ir_version: model.ir_version(),
            producer: model.producer(),
            opsets: model
                .opsets()
                .map(|(d, v)| (if d.is_empty() { "ai.onnx" } else { d }.to_string(), v))
                .collect(),
            inputs: g.inputs().iter().map(|&v| port(v)).collect(),
            outputs: g.outputs().iter().map(|o| port(o.value)).collect(),
            nodes: 0,
            ops: BTreeMap::new(),
            params: BTreeMap::new(),
            subgraphs: Vec::new(),
            functions: model
                .functions()
                .map(|(d, name)| format!("{d}::{name}"))
                .collect(),
            file_bytes: None,
        };
        s.walk(g, "");
        s
    }

    fn walk(&mut self, g: &Graph, prefix: &str) {
        for &v in g.initializers() {
            if let Some(t) = g.value(v).initializer() {
                let p = self.params.entry(t.dtype().short()).or_default();
                p.count += t.len();
                p.bytes += t.stored_bytes();
            }
        }
        for n in g.topo_order().unwrap_or_else(|_| g.node_ids().collect()) {
            let node = g.node(n);
            self.nodes += 1;
            let op = node.qualified_op();
            *self.ops.entry(op.clone()).or_default() += 1;
            for a in node.attrs() {
                for (i, body) in a.bodies().enumerate() {
                    let mut path = format!("{prefix}{}/{}", node.name(), a.name());
                    if a.bodies().count() > 1 {
                        path.push_str(&format!("[{i}]"));
                    }
                    self.subgraphs.push(Subgraph {
                        path: path.clone(),
                        op: op.clone(),
                        nodes: body.node_count(),
                        captures: body
                            .captures()
                            .iter()
                            .map(|&c| body.value(c).name().to_string())
                            .collect(),
                    });
                    self.walk(body, &format!("{path} > "));
                }
            }
        }
    }

    /// This summary with the size of the file it was read from or written to.
    pub fn with_file(mut self, path: &Path) -> Result<Summary> {
        self.file_bytes = Some(file_size(path)?);
        Ok(self)
    }

    pub fn param_count(&self) -> u64 {
        self.params.values().map(|p| p.count).sum()
    }

    /// Bytes of all constant tensors, of every type.
    pub fn param_bytes(&self) -> u64 {
        self.params.values().map(|p| p.bytes).sum()
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        writeln!(
            out,
            "ir_version {}   opsets: {}",
            self.ir_version,
            opsets.join(", ")
        )
        .unwrap();
        if !self.producer.is_empty() {
            writeln!(out, "producer   {}", self.producer).unwrap();
        }
        if let Some(b) = self.file_bytes {
            writeln!(out, "file       {}", human_bytes(b)).unwrap();
        }
        for (title, ports) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(out, "{title}:").unwrap();
            for p in ports {
                writeln!(out, "  {:<32} {}", p.name, p.ty).unwrap();
            }
        }
        writeln!(out, "nodes: {}", self.nodes).unwrap();
        let mut ops: Vec<(&String, &usize)> = self.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            writeln!(out, "  {op:<32} {n:>6}").unwrap();
        }
        writeln!(out, "parameters: {}", self.param_count()).unwrap();
        for (dtype, p) in &self.params {
            writeln!(
                out,
                "  {dtype:<8} {:>12} values {:>12}",
                p.count,
                human_bytes(p.bytes)
            )
            .unwrap();
        }
        if !self.subgraphs.is_empty() {
            writeln!(out, "subgraphs:").unwrap();
            for s in &self.subgraphs {
                let caps = if s.captures.is_empty() {
                    String::new()
                } else {
                    format!(", captures {}", s.captures.join(", "))
                };
                writeln!(out, "  {} ({}): {} nodes{caps}", s.path, s.op, s.nodes).unwrap();
            }
        }
        if !self.functions.is_empty() {
            writeln!(out, "functions: {}", self.functions.join(", ")).unwrap();
        }
        out
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

pub fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len())
}

/// What an `optimize` job did, as `--report` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The files, when the job read and wrote files rather than models in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    pub before: Summary,
    /// The result, written or (after a mismatch) refused.
    pub after: Summary,
    pub pipeline: PipelineReport,
    /// Whether the passes were asked why patterns did not fire (listed in `pipeline.explain`).
    pub explain: bool,
    pub check: CheckStatus,
    pub seconds: Seconds,
    /// Present when bisecting was asked for and the check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bisect: Option<Bisect>,
    /// Loader warnings and notes on how the job ran, each prefixed `warning:` or `note:`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the quantization stage did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::passes::quant::QuantReport>,
    /// What the pruning stage did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruning: Option<crate::passes::prune::PruneReport>,
    /// What the precision stage did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::passes::precision::PrecisionReport>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum CheckStatus {
    Verified {
        report: CheckReport,
    },
    /// tract cannot run the original or the result; the model is written all the same.
    Unverified {
        reason: String,
    },
    /// The result disagrees with the original; nothing is written.
    Mismatch {
        report: CheckReport,
    },
    Skipped,
}

impl From<Outcome> for CheckStatus {
    fn from(outcome: Outcome) -> CheckStatus {
        match outcome {
            Outcome::Checked(report) if report.ok() => CheckStatus::Verified { report },
            Outcome::Checked(report) => CheckStatus::Mismatch { report },
            Outcome::Unverified(reason) => CheckStatus::Unverified { reason },
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Seconds {
    pub load: f64,
    pub passes: f64,
    pub check: f64,
    pub save: f64,
    pub total: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Bisect {
    /// The first pass run (1-based, as `--stop-after` counts) whose output disagrees.
    FirstBadStep {
        step: usize,
        pass: &'static str,
    },
    NoSingleStep,
}

impl Report {
    /// Whether the result passed its check (or was not checked): a mismatch writes nothing.
    pub fn passed(&self) -> bool {
        !matches!(self.check, CheckStatus::Mismatch { .. })
    }

    /// Everything the CLI prints on stdout after a job, from the tables to the verdict.
    pub fn to_text(&self) -> String {
        if !self.passed() {
            return self.verdict();
        }
        let mut s = self.comparison_table();
        s += &self.pass_table();
        s += &self.pruning_lines();
        s += &self.quantization_lines();
        s += &self.precision_lines();
        s += &self.explain_lines();
        s += &self.time_line();
        s += &self.verdict();
        if let Some(out) = &self.output {
            writeln!(s, "wrote {}", out.display()).unwrap();
        }
        s
    }

    /// What quantization did: how much is int8, what stayed float and why.
    pub fn quantization_lines(&self) -> String {
        let Some(q) = &self.quantization else {
            return String::new();
        };
        let mut s = String::new();
        if !q.quantized_enough {
            s += "NOT QUANTIZED: fewer than half of the weight elements are in ops that compute in int8\n";
        }
        if q.random_calibration {
            s += "WARNING: calibrated on random data: the ranges are not those of real inputs\n";
        }
        let checked = match self.check {
            CheckStatus::Skipped => "not checked".to_string(),
            _ => format!("checked on {} held back", q.held_back_samples),
        };
        writeln!(
            s,
            "quantized {} op(s) ({:?} activations, {:?} ranges over {} sample(s), {checked}); weights in int8 ops: {:.0}%, stored int8: {:.0}%",
            q.quantized,
            q.activations,
            q.method,
            q.calibration_samples,
            q.int8_compute_share * 100.0,
            q.int8_weight_share * 100.0
        )
        .unwrap();
        for (name, why) in q.left_float.iter().filter(|(n, _)| !q.fallback.contains(n)) {
            writeln!(s, "  left float: '{name}': {why}").unwrap();
        }
        if q.fallback_tries > 0 {
            s += &search_lines(q);
        }
        if q.equalization_dropped {
            s += "  cross-layer equalization left out: the result checked better without it\n";
        }
        s
    }

    /// What lowering precision did, when it ran.
    pub fn precision_lines(&self) -> String {
        self.precision
            .as_ref()
            .map(precision_text)
            .unwrap_or_default()
    }

    /// What pruning did: channels per group, what was left and why, parameters and MACs.
    pub fn pruning_lines(&self) -> String {
        let Some(p) = &self.pruning else {
            return String::new();
        };
        let mut s = String::new();
        let pruned = p.groups.iter().filter(|g| g.kept < g.channels).count();
        writeln!(
            s,
            "pruned {pruned} of {} channel group(s) ({:?} importance, {:?} scope, ratio {}, kept counts multiples of {}):",
            p.groups.len(),
            p.importance,
            p.scope,
            p.ratio,
            p.round_to
        )
        .unwrap();
        for g in &p.groups {
            match &g.left {
                Some(why) => writeln!(
                    s,
                    "  left   {:<40} {:>5} channels: {why}",
                    g.name, g.channels
                ),
                None if g.kept == g.channels => writeln!(
                    s,
                    "  whole  {:<40} {:>5} channels: the ratio removes none at multiples of {}",
                    g.name, g.channels, p.round_to
                ),
                None => writeln!(
                    s,
                    "  pruned {:<40} {:>5} -> {:<5} ({} producer(s))",
                    g.name, g.channels, g.kept, g.producers
                ),
            }
            .unwrap();
        }
        let ratio = |a: u64, b: u64| if a == 0 { 0.0 } else { b as f64 / a as f64 };
        writeln!(
            s,
            "  parameters {} -> {} ({:.1}%), MACs {} -> {} ({:.1}%, free dims at 1); {:.2} s",
            p.params_before,
            p.params_after,
            100.0 * ratio(p.params_before, p.params_after),
            p.macs_before,
            p.macs_after,
            100.0 * ratio(p.macs_before, p.macs_after),
            p.seconds
        )
        .unwrap();
        if p.importance_fallbacks > 0 {
            writeln!(
                s,
                "  {} group(s) ranked by L1: no importance of the asked kind is known for them",
                p.importance_fallbacks
            )
            .unwrap();
        }
        if let Some(c) = &p.compensation {
            writeln!(
                s,
                "  compensated on {} sample(s): {} reader(s) bias-corrected, {} refitted by least squares",
                c.samples, c.bias_corrected, c.refitted
            )
            .unwrap();
            for (name, why) in &c.skipped {
                writeln!(s, "    not compensated: '{name}': {why}").unwrap();
            }
        }
        if let Some((cos, top1)) = p.uncompensated {
            let top1 = top1.map_or(String::new(), |t| format!(", top-1 {:.1}%", t * 100.0));
            writeln!(s, "  without compensation: cosine {cos:.5}{top1}").unwrap();
        }
        s
    }

    fn mismatch_lines(&self) -> String {
        let mut s = String::from("MISMATCH: the optimized model disagrees with the original");
        s += if self.output.is_some() {
            "; nothing was written\n"
        } else {
            "\n"
        };
        match &self.bisect {
            Some(Bisect::FirstBadStep { step, pass }) => writeln!(
                s,
                "bisect: step {step} (pass '{pass}') is the first whose output disagrees; rerun with --stop-after {} to keep the good part",
                step - 1
            )
            .unwrap(),
            Some(Bisect::NoSingleStep) => {
                s += "bisect: no single step reproduces the mismatch\n";
            }
            None if self.pruning.is_some() && self.quantization.is_none() => {
                s += &self.pruning_lines();
                s += "pruning without fine-tuning loses too much here: prune less (--prune), give --calib samples for compensation, exclude groups with --prune-exclude, or lower --min-cosine\n";
            }
            None if self.precision.is_some() => {
                s += &self.precision_lines();
                let searched = self.precision.as_ref().is_some_and(|p| p.fallback_tries > 0);
                s += if searched {
                    "the result fails its check even with every 16-bit op given back to f32: this is not a precision problem (check the model, the other stages, or the limits)\n"
                } else {
                    "16 bits lose too much here: keep sensitive ops in f32 with --exclude NAME|OPTYPE, give --calib samples so ranges are measured, or lower --min-cosine\n"
                };
            }
            None if self.quantization.is_some() => {
                s += &self.quantization_lines();
                let searched = self.quantization.as_ref().is_some_and(|q| q.fallback_tries > 0);
                s += if searched {
                    "the result fails its check even with every quantized op given back to float: this is not an int8 problem (check the float model, the pruning, or the limits)\n"
                } else {
                    "int8 loses too much here: keep sensitive ops float with --exclude NAME|OPTYPE, calibrate on more representative samples, or lower --min-cosine\n"
                };
            }
            None => s += "rerun with --bisect to find the pass responsible\n",
        }
        s
    }

    /// Nodes, op counts, parameters and file size, before and after.
    pub fn comparison_table(&self) -> String {
        let (before, after) = (&self.before, &self.after);
        let mut s = String::new();
        writeln!(
            s,
            "{:<28} {:>12} {:>12} {:>8}",
            "", "before", "after", "change"
        )
        .unwrap();
        let row = |s: &mut String, name: &str, a: u64, b: u64| {
            let change = if a == 0 {
                "-".to_string()
            } else {
                format!("{:+.1}%", (b as f64 - a as f64) / a as f64 * 100.0)
            };
            writeln!(s, "{name:<28} {a:>12} {b:>12} {change:>8}").unwrap();
        };
        row(&mut s, "nodes", before.nodes as u64, after.nodes as u64);
        let mut ops: Vec<&String> = before.ops.keys().chain(after.ops.keys()).collect();
        ops.sort();
        ops.dedup();
        for op in ops {
            let a = before.ops.get(op).copied().unwrap_or(0) as u64;
            let b = after.ops.get(op).copied().unwrap_or(0) as u64;
            row(&mut s, &format!("  {op}"), a, b);
        }
        row(
            &mut s,
            "parameters",
            before.param_count(),
            after.param_count(),
        );
        if let (Some(a), Some(b)) = (before.file_bytes, after.file_bytes) {
            writeln!(
                s,
                "{:<28} {:>12} {:>12}",
                "file size",
                human_bytes(a),
                human_bytes(b)
            )
            .unwrap();
        }
        s
    }

    /// Per pass runs, rewrites and time; the Shape/Size ops kept and the dims they read.
    pub fn pass_table(&self) -> String {
        let r = &self.pipeline;
        let mut s = String::new();
        writeln!(
            s,
            "{:<24} {:>5} {:>9} {:>10}",
            "pass", "runs", "rewrites", "time (ms)"
        )
        .unwrap();
        for p in &r.passes {
            writeln!(
                s,
                "{:<24} {:>5} {:>9} {:>10.2}",
                p.id,
                p.runs,
                p.rewrites,
                p.time.as_secs_f64() * 1e3
            )
            .unwrap();
        }
        let rounds: Vec<String> = r
            .rounds
            .iter()
            .map(|(stage, n)| format!("{stage}: fixed point after {n} round(s)"))
            .collect();
        writeln!(
            s,
            "{}, {} changing step(s)",
            rounds.join(", "),
            r.steps.len()
        )
        .unwrap();
        for note in &r.notes {
            const SHOWN: usize = 8;
            writeln!(s, "{}", note.heading).unwrap();
            for k in note.lines.iter().take(SHOWN) {
                writeln!(s, "  {k}").unwrap();
            }
            if note.lines.len() > SHOWN {
                writeln!(
                    s,
                    "  ... and {} more (all in --report)",
                    note.lines.len() - SHOWN
                )
                .unwrap();
            }
        }
        s
    }

    /// Why patterns did not fire, when that was asked for.
    pub fn explain_lines(&self) -> String {
        if !self.explain {
            return String::new();
        }
        let mut s = String::from("why patterns did not fire:\n");
        if self.pipeline.explain.is_empty() {
            s += "  (every pattern that matched fired)\n";
        }
        for e in &self.pipeline.explain {
            writeln!(s, "  {e}").unwrap();
        }
        s
    }

    pub fn time_line(&self) -> String {
        let t = &self.seconds;
        format!(
            "time: load {:.3} s, passes {:.3} s, check {:.3} s, save {:.3} s, total {:.3} s\n",
            t.load, t.passes, t.check, t.save, t.total
        )
    }

    /// The check's table and what it means for the written model.
    pub fn verdict(&self) -> String {
        match &self.check {
            CheckStatus::Verified { report } => format!(
                "{}verified: outputs match the original in tract\n",
                report.to_table()
            ),
            CheckStatus::Unverified { reason } => format!(
                "UNVERIFIED: {reason}\n{}\n",
                if self.output.is_some() {
                    "the model was written, but nothing proves it computes what the original did"
                } else {
                    "nothing proves the result computes what the original did"
                }
            ),
            CheckStatus::Mismatch { report } => {
                format!("{}{}", report.to_table(), self.mismatch_lines())
            }
            CheckStatus::Skipped => "not checked (--no-check)\n".to_string(),
        }
    }
}

/// What lowering precision did: ops in 16 bits and in f32 (with why), weights, sizes.
fn precision_text(p: &crate::passes::precision::PrecisionReport) -> String {
    let mut s = String::new();
    if !p.lowered_enough {
        s += "NOT LOWERED: fewer than half of the Conv/Gemm/MatMul weight elements are 16-bit\n";
    }
    let emulated = if p.emulated {
        " (checked by emulation: an f32 model rounded to the 16-bit type at the same places, since tract runs no bf16 and not every fp16 op)"
    } else {
        ""
    };
    writeln!(
        s,
        "{}: {} op(s) in 16 bits, {} in f32, {} Cast(s); Conv/Gemm/MatMul weights 16-bit: {:.0}%; constants {} -> {}{emulated}",
        p.kind,
        p.low_ops,
        p.f32_ops.len(),
        p.casts,
        p.weight_share * 100.0,
        human_bytes(p.param_bytes_before),
        human_bytes(p.param_bytes_after),
    )
    .unwrap();
    if p.range_samples > 0 {
        writeln!(s, "  ranges measured on {} sample(s)", p.range_samples).unwrap();
    }
    if let Some(note) = &p.range_note {
        writeln!(s, "  {note}").unwrap();
    }
    for (name, op, why) in &p.f32_ops {
        writeln!(s, "  f32: {op} '{name}': {why}").unwrap();
    }
    if p.fallback_tries > 0 {
        writeln!(
            s,
            "  the check failed in 16 bits; {} op(s) returned to f32 after {} check(s); each 16-bit op, most sensitive first:",
            p.fallback.len(),
            p.fallback_tries
        )
        .unwrap();
        for (name, err) in &p.layer_errors {
            let now = if p.fallback.contains(name) {
                "f32"
            } else {
                "16-bit"
            };
            writeln!(s, "    {name:<40} {err:>9.4}  {now}").unwrap();
        }
    }
    s
}

/// What the search did after the fully quantized result failed its check: how many checks,
/// what it gave back, and each measured op with the error it adds by itself and where it ended.
fn search_lines(q: &crate::passes::quant::QuantReport) -> String {
    let mut s = String::new();
    let (returned, what) = match q.weights_only.len() {
        0 => (q.fallback.len(), "returned to float"),
        n => (n, "read float activations (their weights int8)"),
    };
    writeln!(
        s,
        "  the check failed fully quantized; {returned} op(s) {what} after {} check(s); each quantized op, most sensitive first (error: how far it alone takes the outputs, 1 - worst cosine):",
        q.fallback_tries
    )
    .unwrap();
    writeln!(s, "    {:<40} {:>10}  now", "op", "error").unwrap();
    for (name, err) in &q.layer_errors {
        let now = if q.weights_only.contains(name) {
            "float activations, int8 weights: the check failed with its activations int8"
        } else if q.fallback.contains(name) {
            "float: the check failed with it quantized"
        } else {
            "int8"
        };
        writeln!(s, "    {name:<40} {err:>10.3e}  {now}").unwrap();
    }
    s
}
