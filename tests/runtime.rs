//! The tract runtime: intermediate values can be exposed, symbolic dims bound.

mod common;

use common::{lift, model_with, node};
use onnxsmith::runtime::{input_specs, Binding, HostTensor, Runner};

#[test]
fn exposes_intermediate_values() {
    let m = lift(model_with(vec![
        node("Neg", "neg", &["x"], &["a"]),
        node("Relu", "relu", &["a"], &["y"]),
    ]));
    let runner = Runner::new(&m, &Binding::default(), &["a".to_string()]).unwrap();
    assert_eq!(runner.outputs, ["y", "a"]);
    let x: Vec<u8> = [1.0f32, -2.0, 3.0, -4.0, 5.0, -6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let spec = &runner.inputs[0];
    let out = runner
        .run(&[HostTensor::from_le_bytes(spec.dtype, &spec.shape, &x).unwrap()])
        .unwrap();
    assert_eq!(out[1].to_f64().unwrap(), [-1.0, 2.0, -3.0, 4.0, -5.0, 6.0]);
    assert_eq!(out[0].to_f64().unwrap(), [0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
}

#[test]
fn binds_symbolic_dims() {
    let m = onnxsmith::zoo::resnet50().unwrap();
    let specs = input_specs(&m, &Binding::default()).unwrap();
    assert_eq!(specs[0].shape, [1, 3, 224, 224], "N defaults to 1");
    let mut b = Binding::default();
    b.add_spec("input:2x3x64x64").unwrap();
    assert_eq!(input_specs(&m, &b).unwrap()[0].shape, [2, 3, 64, 64]);
    assert!(b.add_spec("input:2xthree").is_err());
}

#[test]
fn optimize_checks_both_at_once_or_one_at_a_time() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    let m = model_with(vec![
        node("Neg", "neg", &["x"], &["a"]),
        node("Identity", "id", &["a"], &["b"]),
        node("Relu", "relu", &["b"], &["y"]),
    ]);
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    for flags in [&[][..], &["--check-one-at-a-time"][..]] {
        let output = dir.path().join("o.onnx");
        let out = common::bin()
            .args(["optimize", "-q", "-o"])
            .arg(&output)
            .arg(&input)
            .args(flags)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {stdout}");
        assert!(
            stdout.contains("verified: outputs match"),
            "{flags:?}: {stdout}"
        );
        let written = onnxsmith::load(&output).unwrap().model;
        assert_eq!(common::count_op(&written, "Identity"), 0);
        // Nothing but the result is left beside it: no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        std::fs::remove_file(&output).unwrap();
    }
}

#[test]
fn a_check_too_big_for_memory_runs_one_model_at_a_time() {
    assert!(onnxsmith::check::both_at_once_fit(1 << 20));
    if std::fs::metadata("/proc/meminfo").is_ok() {
        assert!(!onnxsmith::check::both_at_once_fit(u64::MAX / 16));
    }
}
