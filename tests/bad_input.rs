//! Bad input gives exit code 1 and a message naming the problem, never a panic; the input file
//! is never overwritten.

mod common;

use std::path::Path;

use common::{bin, f32_info, model_with, node};
use onnxsmith::onnx::proto::{
    tensor_proto::DataLocation, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use prost::Message;
use rand::{Rng, SeedableRng};

/// Runs `inspect` on `path`; returns (exit code, stderr).
fn inspect(path: &Path) -> (i32, String) {
    let out = bin().arg("inspect").arg(path).output().unwrap();
    (
        out.status.code().expect("killed by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_rejected(path: &Path, needle: &str) {
    let (code, err) = inspect(path);
    assert_eq!(
        code,
        1,
        "{}: expected exit 1, got {code}: {err}",
        path.display()
    );
    assert!(
        err.contains(needle),
        "{}: expected the message to mention {needle:?}, got: {err}",
        path.display()
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn good_model() -> Vec<u8> {
    model_with(vec![node("Relu", "relu", &["x"], &["y"])]).encode_to_vec()
}

#[test]
fn missing_file() {
    assert_rejected(
        Path::new("/nonexistent/model.onnx"),
        "cannot open /nonexistent/model.onnx",
    );
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    assert_rejected(&p, "empty");
}

#[test]
fn truncated_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = good_model();
    let p = dir.path().join("full.onnx");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(inspect(&p).0, 0, "the untruncated model must load");
    // Every proper prefix is broken: the opset import is the last field written.
    for cut in 0..bytes.len() {
        let p = dir.path().join(format!("cut{cut}.onnx"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let (code, err) = inspect(&p);
        assert_eq!(code, 1, "cut at {cut}: {err}");
        assert!(
            err.contains(&*p.to_string_lossy()),
            "cut at {cut} must name the file: {err}"
        );
    }
}

#[test]
fn random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for i in 0..64 {
        let len = rng.random_range(1..4096);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let p = dir.path().join(format!("junk{i}.onnx"));
        std::fs::write(&p, junk).unwrap();
        let (code, err) = inspect(&p);
        assert_eq!(code, 1, "junk {i}: {err}");
        assert!(
            err.contains("not a valid ONNX protobuf") || err.contains("not an ONNX model"),
            "junk {i}: {err}"
        );
    }
}

#[test]
fn wrong_message_type() {
    let dir = tempfile::tempdir().unwrap();
    let t = TensorProto {
        dims: vec![2, 2],
        data_type: 1,
        float_data: vec![1.0, 2.0, 3.0, 4.0],
        name: "t".into(),
        ..Default::default()
    };
    let p = dir.path().join("tensor.onnx");
    std::fs::write(&p, t.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a valid ONNX protobuf") || err.contains("not an ONNX model"),
        "{err}"
    );
    let g = model_with(vec![node("Relu", "relu", &["x"], &["y"])])
        .graph
        .unwrap();
    let p = dir.path().join("graph.onnx");
    std::fs::write(&p, g.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn node_reads_missing_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    std::fs::write(
        &p,
        model_with(vec![node("Add", "add", &["x", "ghost"], &["y"])]).encode_to_vec(),
    )
    .unwrap();
    assert_rejected(
        &p,
        "node 'add' (Add) reads 'ghost', which no node, graph input or initializer produces",
    );
}

#[test]
fn duplicate_value_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model_with(vec![
        node("Relu", "a", &["x"], &["y"]),
        node("Relu", "b", &["x"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "duplicate value name 'y'");
    let m = model_with(vec![
        node("Relu", "a", &["x"], &["x"]),
        node("Relu", "b", &["x"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "duplicate value name 'x': it is already a graph input");
}

#[test]
fn value_info_listed_twice_is_accepted_keeping_the_first() {
    // Some simplifiers write an entry twice; value_info only declares, so this is not an error.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![
        node("Relu", "a", &["x"], &["h"]),
        node("Neg", "b", &["h"], &["y"]),
    ]);
    let g = m.graph.as_mut().unwrap();
    g.value_info = vec![f32_info("h", &[2, 3]), f32_info("h", &[2, 3])];
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 0, "{err}");
    let model = onnxsmith::load(&p).unwrap().model;
    assert_eq!(model.graph.value_info().len(), 1);
}

#[test]
fn cycle() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model_with(vec![
        node("Add", "first", &["x", "b"], &["a"]),
        node("Relu", "second", &["a"], &["b"]),
        node("Relu", "out", &["a"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "cycle through node 'first' (Add)");
}

#[test]
fn missing_opset_import() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![node("Relu", "relu", &["x"], &["y"])]);
    m.opset_import.clear();
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "imports no opset");
}

#[test]
fn unknown_domain_and_future_opset_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut relu = node("Relu", "relu", &["x"], &["t"]);
    relu.domain = String::new();
    let mut custom = node("Frobnicate", "custom", &["t"], &["y"]);
    custom.domain = "com.example".into();
    let mut m = model_with(vec![relu, custom]);
    m.opset_import[0].version = 99;
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = bin().arg("inspect").arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains("opset ai.onnx 99"),
        "{err}"
    );
    assert!(
        err.contains("domain 'com.example' is not a standard ONNX domain"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("com.example::Frobnicate"));
}

#[test]
fn facts_tract_cannot_infer_leave_stderr_to_warnings() {
    // An input declared without a rank gives tract nothing to start from; the passes that ask
    // it for facts go on without them and must not print its error.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![node("Relu", "relu", &["x"], &["y"])]);
    let x = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = bin()
        .args(["optimize", "--no-check", "-q", "-o"])
        .arg(dir.path().join("o.onnx"))
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for line in err.lines() {
        assert!(
            line.starts_with("warning"),
            "unexpected stderr line: {line}"
        );
    }
}

/// A model whose single initializer lives in `w.bin` at `offset` with `length` bytes.
fn external_model(dir: &Path, offset: &str, length: &str) -> std::path::PathBuf {
    let mut m = model_with(vec![node("Add", "add", &["x", "w"], &["y"])]);
    let g = m.graph.as_mut().unwrap();
    let entry = |k: &str, v: &str| StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    };
    g.initializer.push(TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: 1,
        data_location: DataLocation::External as i32,
        external_data: vec![
            entry("location", "w.bin"),
            entry("offset", offset),
            entry("length", length),
        ],
        ..Default::default()
    });
    g.input.push(f32_info("unused", &[1]));
    let p = dir.join("m.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

#[test]
fn external_data_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = external_model(dir.path(), "0", "24");
    assert_rejected(&p, "external-data file 'w.bin' is missing or unreadable");
}

#[test]
fn external_data_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), [0u8; 30]).unwrap();
    let p = external_model(dir.path(), "16", "24");
    assert_rejected(
        &p,
        "offset 16 length 24 is out of range (the file is 30 bytes)",
    );
    let p = external_model(dir.path(), "0", "20");
    assert_rejected(&p, "holds 20 bytes but f32 [2, 3] needs 24");
    let p = external_model(dir.path(), "0", "24");
    assert_eq!(inspect(&p).0, 0, "a correct reference loads");
}

#[test]
fn external_data_outside_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let p = external_model(dir.path(), "0", "24");
    let mut m = onnxsmith::onnx::proto::ModelProto::decode(&*std::fs::read(&p).unwrap()).unwrap();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.external_data[0].value = "../w.bin".into();
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "must be a relative path inside the model's directory");
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let bytes = good_model();
    std::fs::write(&p, &bytes).unwrap();
    let out = bin()
        .arg("convert")
        .arg(&p)
        .arg("-o")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would overwrite the input file"));
    assert_eq!(std::fs::read(&p).unwrap(), bytes, "the input is untouched");
}

#[test]
fn usage_errors_exit_1() {
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin().args(["convert", "only-input.onnx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output"));
}
