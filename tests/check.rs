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

/// A tensor of `shape` from `f(index of each element)`, as one sample.
fn tensor_from(shape: &[usize], f: impl Fn(usize) -> f32) -> HostTensor {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = (0..n).flat_map(|i| f(i).to_le_bytes()).collect();
    HostTensor::from_le_bytes(DType::F32, shape, &bytes).unwrap()
}

/// A pseudo-random value in [0, 1) for index `i` and seed `s`.
fn hash01(i: usize, s: usize) -> f32 {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (s as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((x >> 40) % 10_000) as f32 / 10_000.0
}

/// A YOLO-style head [1, 6, 64]: rows 0–3 box coordinates in pixels, rows 4–5 class scores in
/// 0..1, for sample `s`; `scores` maps the float model's scores to the candidate's.
fn head(s: usize, scores: &dyn Fn(f32) -> f32) -> HostTensor {
    tensor_from(&[1, 6, 64], |i| {
        let (row, cell) = (i / 64, i % 64);
        if row < 4 {
            50.0 + 300.0 * hash01(cell * 4 + row, s)
        } else {
            scores(hash01(cell * 2 + row, s + 100).powi(3))
        }
    })
}

#[test]
fn destroyed_scores_fail_however_well_the_boxes_agree() {
    let names = ["output0".to_string()];
    let float: Vec<Vec<HostTensor>> = (0..16).map(|s| vec![head(s, &|v| v)]).collect();
    // One int8 scale over boxes and scores: every score rounds to 0.
    let ruined: Vec<Vec<HostTensor>> = (0..16).map(|s| vec![head(s, &|_| 0.0)]).collect();
    let r = compare(&names, &float, &ruined, Rule::lossy());
    let d = &r.outputs[0];
    assert!(
        d.cosine > 0.999,
        "one cosine over the tensor hides it: {d:?}"
    );
    assert!(!d.ok, "{}", r.to_table());
    let v = d.violation.as_deref().unwrap();
    assert!(v.contains("axis 1 [4..5]"), "{v}");
    assert_eq!(d.parts.len(), 2, "boxes and scores");
    // Scores that keep their values (a little noise) pass.
    let kept: Vec<Vec<HostTensor>> = (0..16)
        .map(|s| vec![head(s, &|v| v * 1.01 + 0.001)])
        .collect();
    let r = compare(&names, &float, &kept, Rule::lossy());
    assert!(r.ok(), "{}", r.to_table());
}

/// A [1, 40, 5] sequence of class scores for sample `s`: at each step a best class (0.6)
/// ahead of a runner-up (0.45); where `flip` says, the two swap.
fn sequence(s: usize, flip: &dyn Fn(usize, usize) -> bool) -> HostTensor {
    tensor_from(&[1, 40, 5], |i| {
        let (step, class) = (i / 5, i % 5);
        let (best, next) = ((step + s) % 5, (step + s + 1) % 5);
        let (best, next) = if flip(s, step) {
            (next, best)
        } else {
            (best, next)
        };
        if class == best {
            0.6
        } else if class == next {
            0.45
        } else {
            0.01
        }
    })
}

#[test]
fn a_sequence_whose_steps_flip_fails_on_its_classes() {
    let names = ["probs".to_string()];
    let float: Vec<Vec<HostTensor>> = (0..16).map(|s| vec![sequence(s, &|_, _| false)]).collect();
    // One step in four samples of sixteen changes class: a small share of the values.
    let flipped: Vec<Vec<HostTensor>> = (0..16)
        .map(|s| vec![sequence(s, &|s, step| s % 5 == 0 && step == 3)])
        .collect();
    let r = compare(&names, &float, &flipped, Rule::lossy());
    let d = &r.outputs[0];
    assert!(d.top1.unwrap() > 0.9, "{d:?}");
    assert_eq!(d.sequences, Some(12.0 / 16.0));
    assert!(
        d.violation
            .as_deref()
            .is_some_and(|v| v.starts_with("sequences")),
        "{}",
        r.to_table()
    );
}

#[test]
fn the_worst_sample_counts_and_a_quiet_one_is_judged_in_the_whole() {
    let names = ["y".to_string()];
    let sample = |s: usize, scale: f32, noise: f32| {
        vec![tensor_from(&[1, 64], |i| {
            scale * (hash01(i, s) - 0.5) + noise * (hash01(i, s + 50) - 0.5)
        })]
    };
    let float: Vec<Vec<HostTensor>> = (0..16).map(|s| sample(s, 1.0, 0.0)).collect();
    // Fifteen samples agree closely; one is far off.
    let one_bad: Vec<Vec<HostTensor>> = (0..16)
        .map(|s| sample(s, 1.0, if s == 7 { 0.35 } else { 0.01 }))
        .collect();
    let r = compare(&names, &float, &one_bad, Rule::lossy());
    let d = &r.outputs[0];
    assert!(d.cosine > 0.99, "the mean hides it: {d:?}");
    assert!(
        d.violation
            .as_deref()
            .is_some_and(|v| v.starts_with("worst sample")),
        "{}",
        r.to_table()
    );
    // A near-silent sample with relatively large noise is not judged on its own.
    let quiet = |s: usize| if s == 7 { 0.01 } else { 1.0 };
    let float: Vec<Vec<HostTensor>> = (0..16).map(|s| sample(s, quiet(s), 0.0)).collect();
    let noisy: Vec<Vec<HostTensor>> = (0..16)
        .map(|s| {
            vec![tensor_from(&[1, 64], |i| {
                quiet(s) * (hash01(i, s) - 0.5) + 0.01 * (hash01(i, s + 50) - 0.5)
            })]
        })
        .collect();
    let r = compare(&names, &float, &noisy, Rule::lossy());
    assert!(r.ok(), "{}", r.to_table());
}

#[test]
fn values_of_one_scale_are_one_part() {
    // Four channels within 16x of each other: no parts, whatever their sizes.
    let names = ["y".to_string()];
    let t = |s: usize| {
        vec![tensor_from(&[1, 4, 8], |i| {
            let c = i / 8;
            (1 << (c as i32)) as f32 * (hash01(i, s) - 0.5)
        })]
    };
    let float: Vec<Vec<HostTensor>> = (0..4).map(t).collect();
    let r = compare(&names, &float, &float, Rule::lossy());
    assert!(r.outputs[0].parts.is_empty(), "{:?}", r.outputs[0].parts);
    assert!(r.ok());
}

#[test]
fn a_tail_of_errors_fails_on_the_worst_of_a_hundred_expected() {
    // Sixteen samples: twelve nearly exact, four whose error grows to 1 - cos = 0.009. Each one
    // passes (worst 0.991), but a tail that long reaches past 0.01 within a hundred samples.
    let names = ["y".to_string()];
    let errors = [0.003, 0.005, 0.007, 0.009];
    let float: Vec<Vec<HostTensor>> = (0..16)
        .map(|_| vec![tensor_from(&[1, 2], |i| [1.0, 0.0][i])])
        .collect();
    let got: Vec<Vec<HostTensor>> = (0..16)
        .map(|s| {
            let e: f64 = if s < 12 { 1e-6 } else { errors[s - 12] };
            // cos = 1 / sqrt(1 + r²) = 1 - e.
            let r = ((1.0 / (1.0 - e)).powi(2) - 1.0).sqrt() as f32;
            vec![tensor_from(&[1, 2], |i| [1.0, r][i])]
        })
        .collect();
    let r = compare(&names, &float, &got, Rule::lossy());
    let d = &r.outputs[0];
    assert!(d.worst_sample.unwrap() > 0.99, "{}", r.to_table());
    assert!(d.expected_worst.unwrap() < 0.99, "{}", r.to_table());
    assert!(
        d.violation
            .as_deref()
            .is_some_and(|v| v.contains("worst of 100")),
        "{}",
        r.to_table()
    );
}
