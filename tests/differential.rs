//! Differential testing of the pipeline: random valid graphs (tests/gen) go through the
//! default pipeline, with the IR verifier after every pass, and each result is compared with
//! its original in tract under the exact rule. Seeds 0..N, N from `ONNXSMITH_DIFF_N` (1,000
//! by default; `fuzz/differential.sh N` runs more), starting at `ONNXSMITH_DIFF_START`.
//! Every failure is reported with its seed, and the test goes on to collect them all.

mod common;
mod gen;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use onnxsmith::check::{CheckOptions, Outcome, Reference};
use onnxsmith::ir::{print::print_model, Model};
use onnxsmith::onnx::proto::{type_proto::Value, ModelProto};
use onnxsmith::optimize::{bisect, run_passes};
use onnxsmith::passes::{simplify_stage, PassContext, PipelineOptions};

/// Share of graphs tract may fail to run before the generator counts as broken.
const MAX_SKIPPED: f64 = 0.05;

enum Verdict {
    Verified,
    Skipped(String),
    Failed(String),
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {s}"))
        })
        .unwrap_or(default)
}

fn one(proto: ModelProto) -> Verdict {
    let original = match Model::from_proto(proto) {
        Ok(m) => m,
        Err(e) => return Verdict::Failed(format!("lift: {e:#}")),
    };
    let opts = PipelineOptions {
        verify_each: true,
        ..Default::default()
    };
    let (result, report) = match run_passes(&original, &opts) {
        Ok(r) => r,
        Err(e) => return Verdict::Failed(format!("pipeline: {e:#}")),
    };
    let check = CheckOptions {
        samples: 1,
        ..Default::default()
    };
    let outcome = Reference::new(&original, &check).and_then(|r| Ok((r.check(&result)?, r)));
    match outcome {
        Err(e) => Verdict::Failed(format!("check: {e:#}")),
        Ok((Outcome::Unverified(why), _)) => Verdict::Skipped(why),
        Ok((Outcome::Checked(r), _)) if r.ok() => Verdict::Verified,
        Ok((Outcome::Checked(r), reference)) => {
            let stages = [simplify_stage(opts.fold_limit)];
            let cx = PassContext::default();
            let first = bisect(&original, &stages, &opts, &cx, &report.steps, &reference)
                .map(|b| b.map_or("none found".into(), |(k, id)| format!("step {k}, {id}")));
            Verdict::Failed(format!(
                "outputs differ (first bad pass: {})\n{}",
                first.unwrap_or_else(|e| format!("bisect failed: {e:#}")),
                r.to_table()
            ))
        }
    }
}

/// [`one`] of the graph `make` returns, with a panic anywhere (the generator's too) a failure.
fn guarded(make: impl FnOnce() -> ModelProto) -> Verdict {
    catch_unwind(AssertUnwindSafe(|| one(make()))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Verdict::Failed(format!("panic: {msg}"))
    })
}

/// What a failure or skip is, to tell whether a smaller graph still shows the same one.
fn class(v: &Verdict) -> Option<String> {
    let head = |s: &str| {
        s.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>()
    };
    match v {
        Verdict::Verified => None,
        Verdict::Skipped(why) => Some(format!("skipped: {}", head(why))),
        Verdict::Failed(why) => Some(format!("failed: {}", head(why))),
    }
}

/// Shrinks the graph of seed `ONNXSMITH_DIFF_MINIMIZE` greedily while it fails (or is
/// skipped) the same way: drops graph outputs, then bypasses nodes (their readers read the
/// node's first input instead), and prints what is left after dead code. A tool for turning
/// a failure into a regression test:
/// `ONNXSMITH_DIFF_MINIMIZE=17 cargo test --test differential minimize -- --ignored --nocapture`;
/// with `ONNXSMITH_DIFF_SAVE=DIR` it also writes what is left, before and after the pipeline.
#[test]
#[ignore]
fn minimize() {
    let seed = env("ONNXSMITH_DIFF_MINIMIZE", 0);
    let mut best = gen::graph(seed);
    let target = class(&guarded(|| best.clone())).expect("this seed passes");
    let same = |p: &ModelProto| class(&guarded(|| p.clone())).as_ref() == Some(&target);
    // Bypassing a node changes the shapes behind it: keep only the outputs' element types.
    let mut shapeless = best.clone();
    for o in &mut shapeless.graph.as_mut().unwrap().output {
        if let Some(Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape = None;
        }
    }
    if same(&shapeless) {
        best = shapeless;
    }
    let mut progress = true;
    while progress {
        progress = false;
        for i in (0..best.graph.as_ref().unwrap().output.len()).rev() {
            let mut p = best.clone();
            p.graph.as_mut().unwrap().output.remove(i);
            if !p.graph.as_ref().unwrap().output.is_empty() && same(&p) {
                (best, progress) = (p, true);
            }
        }
        for i in (0..best.graph.as_ref().unwrap().node.len()).rev() {
            let mut p = best.clone();
            let g = p.graph.as_mut().unwrap();
            let n = g.node.remove(i);
            let (Some(from), Some(to)) = (n.output.first(), n.input.first()) else {
                continue;
            };
            // Reading a constant instead would make a graph of constants: another case.
            let constant = g.initializer.iter().any(|t| t.name == *to)
                || g.node
                    .iter()
                    .any(|m| m.op_type == "Constant" && m.output.contains(to));
            if constant {
                continue;
            }
            for m in &mut g.node {
                for input in &mut m.input {
                    if input == from {
                        input.clone_from(to);
                    }
                }
            }
            for o in &mut g.output {
                if o.name == *from {
                    o.name.clone_from(to);
                }
            }
            if same(&p) {
                (best, progress) = (p, true);
            }
        }
    }
    let mut m = Model::from_proto(best).unwrap();
    let opts = PipelineOptions {
        only: Some(vec!["dead-code".into()]),
        ..Default::default()
    };
    onnxsmith::passes::run_pipeline(&mut m, &opts).unwrap();
    println!("{target}\n{}", print_model(&m));
    // To tell a wrong rewrite from a tract bug, the graph and its optimized form can be run
    // elsewhere (fuzz/ort_compare.py runs both in ONNX Runtime).
    if let Ok(dir) = std::env::var("ONNXSMITH_DIFF_SAVE") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        let (optimized, _) = run_passes(&m, &PipelineOptions::default()).unwrap();
        for (model, name) in [(&m, "original"), (&optimized, "optimized")] {
            let path = dir.join(format!("seed-{seed}.{name}.onnx"));
            onnxsmith::save(model, &path, Default::default()).unwrap();
        }
    }
}

#[test]
fn random_graphs_survive_the_pipeline() {
    let n = env("ONNXSMITH_DIFF_N", 1000);
    let start = env("ONNXSMITH_DIFF_START", 0);
    let t = Instant::now();
    let (mut verified, mut skipped, mut failed) = (0, Vec::new(), Vec::new());
    for seed in start..start + n {
        match guarded(|| gen::graph(seed)) {
            Verdict::Verified => verified += 1,
            Verdict::Skipped(why) => skipped.push((seed, why)),
            Verdict::Failed(why) => failed.push((seed, why)),
        }
    }
    println!(
        "differential: {n} generated (seeds {start}..{}), {verified} verified, {} skipped, {} failed, {:.1} s",
        start + n,
        skipped.len(),
        failed.len(),
        t.elapsed().as_secs_f64()
    );
    for (seed, why) in skipped.iter().take(10) {
        println!("skipped seed {seed}: {why}");
    }
    let report: Vec<String> = failed
        .iter()
        .map(|(seed, why)| format!("seed {seed}: {why}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        report.join("\n")
    );
    assert!(
        skipped.len() as f64 <= MAX_SKIPPED * n as f64,
        "{} of {n} graphs could not run in tract: the generator makes invalid graphs",
        skipped.len()
    );
}
