//! The check's rules and the inputs it feeds: the exact and the lossy rule, larger bindings
//! for models that cannot run with their symbolic dims at 1, and seeded integer inputs.

mod common;

use common::{attr_ints, f32_info, info, lift, model_io, node, tensor};
use onnxsmith::check::{compare, CheckOptions, InputSource, LossyLimits, Outcome, Reference, Rule};
use onnxsmith::ir::DType;
use onnxsmith::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use onnxsmith::onnx::proto::{type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
use onnxsmith::runtime::HostTensor;

fn logits(v: &[f32]) -> Vec<Vec<HostTensor>> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    vec![vec![HostTensor::from_le_bytes(
        DType::F32,
        &[1, v.len()],
        &bytes,
    )
    .unwrap()]]
}

fn judge(expected: &[f32], got: &[f32], rule: Rule) -> onnxsmith::check::OutputDiff {
    let names = ["logits".to_string()];
    let r = compare(&names, &logits(expected), &logits(got), rule);
    r.outputs[0].clone()
}

const EXPECTED: [f32; 6] = [0.1, 2.0, -1.0, 0.5, 3.0, -0.3];

#[test]
fn lossy_rule_passes_a_slightly_perturbed_output() {
    let got: Vec<f32> = EXPECTED.iter().map(|x| x * 1.01 + 0.005).collect();
    let d = judge(&EXPECTED, &got, Rule::lossy());
    assert!(d.ok, "{d:?}");
    assert_eq!(d.top1, Some(1.0));
    // The exact rule refuses the same output.
    let d = judge(&EXPECTED, &got, Rule::default());
    assert!(!d.ok);
    assert!(d.violation.unwrap().contains("past the tolerance"));
}

#[test]
fn lossy_rule_fails_below_the_cosine_limit() {
    let got = [2.0, 0.1, -1.0, 0.5, 3.0, 1.0];
    let d = judge(&EXPECTED, &got, Rule::lossy());
    assert!(d.cosine < 0.99 && !d.ok, "{d:?}");
    assert!(d.violation.unwrap().starts_with("cosine"));
    // A limit the user lowers lets it pass.
    let loose = Rule::Lossy(LossyLimits {
        min_cosine: 0.5,
        ..Default::default()
    });
    assert!(judge(&EXPECTED, &got, loose).ok);
}

#[test]
fn lossy_rule_fails_below_the_top1_limit() {
    // Close as a whole, but the largest logit moved to another class.
    let got = [0.1, 2.95, -1.0, 0.5, 2.9, -0.3];
    let d = judge(&EXPECTED, &got, Rule::lossy());
    assert!(d.cosine > 0.9 && d.top1 == Some(0.0), "{d:?}");
    let limits = Rule::Lossy(LossyLimits {
        min_cosine: 0.9,
        ..Default::default()
    });
    let d = judge(&EXPECTED, &got, limits);
    assert!(
        !d.ok
            && d.violation
                .as_deref()
                .is_some_and(|v| v.starts_with("top-1")),
        "{d:?}"
    );
}

#[test]
fn lossy_rule_judges_max_error_when_limited() {
    let got: Vec<f32> = EXPECTED.iter().map(|x| x * 1.01).collect();
    let limited = |m| {
        Rule::Lossy(LossyLimits {
            max_error: Some(m),
            ..Default::default()
        })
    };
    assert!(judge(&EXPECTED, &got, limited(0.1)).ok);
    let d = judge(&EXPECTED, &got, limited(1e-3));
    assert!(!d.ok && d.violation.unwrap().starts_with("max error"));
}

/// A tensor value whose dims are names (symbolic) or numbers.
fn sym_info(name: &str, dims: &[&str]) -> ValueInfoProto {
    let dim = |d: &str| Dimension {
        value: Some(match d.parse::<i64>() {
            Ok(n) => dimension::Value::DimValue(n),
            Err(_) => dimension::Value::DimParam(d.into()),
        }),
        denotation: String::new(),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(|d| dim(d)).collect(),
                }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// A detector's shape in small: one branch pooled twice and upsampled back, concatenated with
/// the input. At H = W = 1 the pooled branch is empty and the Concat cannot line up.
fn upsampled_branch_model() -> onnxsmith::ir::Model {
    let pool = |name: &str, x: &str, y: &str| {
        let mut n = node("MaxPool", name, &[x], &[y]);
        n.attribute = vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ];
        n
    };
    let mut concat = node("Concat", "concat", &["x", "up"], &["y"]);
    concat.attribute = vec![common::attr_int("axis", 1)];
    lift(model_io(
        vec![
            pool("pool1", "x", "p1"),
            pool("pool2", "p1", "p2"),
            node("Resize", "up", &["p2", "", "scales"], &["up"]),
            concat,
        ],
        vec![sym_info("x", &["N", "1", "H", "W"])],
        vec![sym_info("y", &["N", "2", "H", "W"])],
        vec![common::f32_tensor("scales", &[4], &[1.0, 1.0, 4.0, 4.0])],
    ))
}

#[test]
fn a_model_that_fails_at_size_1_is_checked_at_a_larger_spatial_size() {
    let m = upsampled_branch_model();
    let reference = Reference::new(&m, &CheckOptions::default()).unwrap();
    match reference.check(&m).unwrap() {
        Outcome::Checked(r) => {
            assert!(r.ok(), "{}", r.to_table());
            assert_eq!(r.inputs.spatial_dims, [32]);
            assert_eq!(r.inputs.shapes[0].shape, [1, 1, 32, 32], "N stays 1");
            assert!(r.inputs.first_binding_failed.is_some());
            let table = r.to_table();
            assert!(
                table.contains("x 1x1x32x32; free spatial dims bound to 32"),
                "{table}"
            );
        }
        Outcome::Unverified(why) => panic!("unverified: {why}"),
    }
    // The result of the passes is run at the size the original ran at.
    let (optimized, _) = onnxsmith::optimize::run_passes(&m, &Default::default()).unwrap();
    assert!(matches!(reference.check(&optimized).unwrap(), Outcome::Checked(r) if r.ok()));
    // A shape the user fixes is not second-guessed.
    let mut opts = CheckOptions::default();
    opts.binding.add_spec("x:1x1x2x2").unwrap();
    let reference = Reference::new(&m, &opts).unwrap();
    assert!(matches!(
        reference.check(&m).unwrap(),
        Outcome::Unverified(_)
    ));
}

#[test]
fn the_optimize_job_checks_at_the_larger_size_too() {
    let m = upsampled_branch_model();
    let done = onnxsmith::optimize_model(
        &m,
        &onnxsmith::Options {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    match &done.report.check {
        onnxsmith::report::CheckStatus::Verified { report } => {
            assert_eq!(report.inputs.spatial_dims, [32])
        }
        other => panic!("{other:?}"),
    }
}

/// `y = Reshape(x, [sr, 3])` for x of 6 values: only sr = 2 works, and seeded integers are 0
/// or 1, like a sample rate fed random data.
fn sample_rate_model() -> onnxsmith::ir::Model {
    let mut concat = node("Concat", "shape", &["sr1", "three"], &["shape"]);
    concat.attribute = vec![common::attr_int("axis", 0)];
    lift(model_io(
        vec![
            node("Unsqueeze", "unsqueeze", &["sr", "axes"], &["sr1"]),
            concat,
            node("Reshape", "reshape", &["x", "shape"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3]), info("sr", 7, &[])],
        vec![f32_info("y", &[2, 3])],
        vec![
            tensor("axes", 7, &[1], 0i64.to_le_bytes().to_vec()),
            tensor("three", 7, &[1], 3i64.to_le_bytes().to_vec()),
        ],
    ))
}

#[test]
fn an_integer_input_fed_seeded_values_is_named_in_the_unverified_reason() {
    let m = sample_rate_model();
    match onnxsmith::check::compare_models(&m, &m, &CheckOptions::default()).unwrap() {
        Outcome::Unverified(why) => {
            assert!(why.contains("'sr'"), "{why}");
            assert!(
                why.contains("--inputs") && why.contains("--inputs-npz"),
                "{why}"
            );
        }
        Outcome::Checked(r) => panic!("expected unverified:\n{}", r.to_table()),
    }
    // Given a real value, it runs.
    let x = HostTensor::from_le_bytes(DType::F32, &[2, 3], &[0u8; 24]).unwrap();
    let sr = HostTensor::from_le_bytes(DType::I64, &[], &2i64.to_le_bytes()).unwrap();
    let opts = CheckOptions {
        inputs: InputSource::Sets(vec![vec![x, sr]]),
        ..Default::default()
    };
    assert!(matches!(
        onnxsmith::check::compare_models(&m, &m, &opts).unwrap(),
        Outcome::Checked(r) if r.ok()
    ));
}
