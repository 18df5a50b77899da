//! The `optimize` job as a library call, without the CLI: on files and in memory, and a
//! mismatch that writes nothing.

mod common;

use common::{count_op, lift, model_with, node};
use onnxsmith::check::{CheckOptions, LossyLimits, Rule};
use onnxsmith::report::{Bisect, CheckStatus};
use onnxsmith::{Options, Request};
use prost::Message;

/// `y = Relu(Neg(x))` with an Identity between them for the passes to remove.
fn model() -> onnxsmith::onnx::proto::ModelProto {
    model_with(vec![
        node("Neg", "neg", &["x"], &["a"]),
        node("Identity", "id", &["a"], &["b"]),
        node("Relu", "relu", &["b"], &["y"]),
    ])
}

/// A rule no result can meet: cosine similarity is at most 1.
fn impossible() -> Options {
    Options {
        check: Some(CheckOptions {
            rule: Rule::Lossy(LossyLimits {
                min_cosine: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        }),
        bisect: true,
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn optimizes_a_file_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::write(&input, model().encode_to_vec()).unwrap();
    let request = Request {
        input: input.clone(),
        output: dir.path().join("o.onnx"),
        report: Some(dir.path().join("report.json")),
        external_data: false,
        options: Options {
            quiet: true,
            ..Default::default()
        },
    };
    let report = onnxsmith::optimize(&request).unwrap();
    assert!(report.passed());
    assert!(
        matches!(&report.check, CheckStatus::Verified { report } if report.ok()),
        "{:?}",
        report.check
    );
    assert_eq!(report.before.ops["Identity"], 1);
    assert!(!report.after.ops.contains_key("Identity"));
    assert!(report.after.file_bytes.is_some());
    let written = onnxsmith::load(&request.output).unwrap().model;
    assert_eq!(count_op(&written, "Identity"), 0);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["check"]["status"], "verified");
    assert_eq!(json["check"]["report"]["rule"]["rule"], "exact");
    assert_eq!(
        json["check"]["report"]["inputs"]["shapes"][0]["shape"],
        serde_json::json!([2, 3])
    );
    for key in ["input", "output", "before", "after", "pipeline", "seconds"] {
        assert!(json.get(key).is_some(), "no '{key}' in {json}");
    }
    assert!(json.get("bisect").is_none());
    assert!(report.to_text().contains("verified: outputs match"));
}

#[test]
fn a_mismatch_writes_nothing_and_is_bisected() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::write(&input, model().encode_to_vec()).unwrap();
    let request = Request {
        input,
        output: dir.path().join("o.onnx"),
        report: Some(dir.path().join("report.json")),
        external_data: false,
        options: impossible(),
    };
    let report = onnxsmith::optimize(&request).unwrap();
    assert!(!report.passed());
    assert!(matches!(report.check, CheckStatus::Mismatch { .. }));
    assert_eq!(
        report.bisect,
        Some(Bisect::FirstBadStep {
            step: 1,
            pass: report.pipeline.steps[0]
        })
    );
    assert!(!request.output.exists(), "a mismatch must write nothing");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["check"]["status"], "mismatch");
    assert_eq!(json["bisect"]["result"], "first_bad_step");
    let text = report.to_text();
    assert!(
        text.contains("MISMATCH") && text.contains("cosine"),
        "{text}"
    );
    // The input, the report and nothing else: no temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn the_cli_maps_a_mismatch_to_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::write(&input, model().encode_to_vec()).unwrap();
    let output = dir.path().join("o.onnx");
    let out = common::bin()
        .args(["optimize", "-q", "--min-cosine", "1.5", "-o"])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("lossy rule: cosine >= 1.5"), "{stdout}");
    assert!(!output.exists());
    // The exact and the lossy rule cannot be asked for at once.
    let out = common::bin()
        .args(["optimize", "--min-cosine", "0.9", "--rtol", "0.1", "-o"])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn optimizes_a_model_in_memory() {
    let m = lift(model());
    let done = onnxsmith::optimize_model(
        &m,
        &Options {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(done.report.passed());
    assert!(matches!(done.report.check, CheckStatus::Verified { .. }));
    assert!(done.report.input.is_none() && done.report.after.file_bytes.is_none());
    assert_eq!(count_op(&done.model, "Identity"), 0);
    // Unchecked, the result comes back all the same.
    let done = onnxsmith::optimize_model(
        &m,
        &Options {
            check: None,
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(done.report.check, CheckStatus::Skipped));
    // A mismatch returns the refused result with a report that did not pass.
    let done = onnxsmith::optimize_model(&m, &impossible()).unwrap();
    assert!(!done.report.passed());
    assert_eq!(count_op(&done.model, "Identity"), 0);
}
