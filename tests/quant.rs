//! INT8 quantization: the structure of what it writes, its numbers against a reference
//! computed here, the range methods on known distributions, and bad calibration data.

mod common;

use std::path::Path;

use common::{
    attr_int, attr_ints, attr_str, before_after, bin, conv_net, f32_info, f32_tensor, i64_tensor,
    lift, model_io, node, values, write_npy, write_npy_values,
};
use onnxsmith::ir::{DType, Graph, Model, NodeId};
use onnxsmith::lossy::SampleOptions;
use onnxsmith::onnx::proto::ModelProto;
use onnxsmith::passes::quant::qdq::{Activations, Placement};
use onnxsmith::passes::quant::ranges::{Method, Stats};
use onnxsmith::passes::quant::QuantOptions;
use onnxsmith::passes::PipelineOptions;
use onnxsmith::report::CheckStatus;
use onnxsmith::{optimize_model, Options};

fn quantize(m: &Model, activations: Activations, exclude: &[&str]) -> onnxsmith::Optimized {
    quantize_for(m, activations, Placement::AroundOps, exclude)
}

fn quantize_for(
    m: &Model,
    activations: Activations,
    placement: Placement,
    exclude: &[&str],
) -> onnxsmith::Optimized {
    let opts = QuantOptions {
        activations,
        placement,
        ..Default::default()
    };
    quantize_with(m, opts, exclude)
}

/// `n` random calibration samples (and a quarter as many others held back).
fn random(n: usize) -> SampleOptions {
    SampleOptions {
        random: Some(n),
        ..Default::default()
    }
}

/// The samples of directory `dir`.
fn from_dir(dir: &Path) -> SampleOptions {
    SampleOptions {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

/// Quantizes `m` calibrated on 16 random samples; the result must pass its check.
fn quantize_with(m: &Model, opts: QuantOptions, exclude: &[&str]) -> onnxsmith::Optimized {
    quantize_on(m, opts, random(16), exclude)
}

/// Quantizes `m` calibrated on 16 random samples, unchecked: for tests of where Q/DQ go, on
/// fixtures whose accuracy at an aggressive percentile is beside the point.
fn quantize_unchecked(m: &Model, opts: QuantOptions) -> onnxsmith::Optimized {
    optimize_model(
        m,
        &Options {
            quiet: true,
            check: None,
            samples: random(16),
            quantize: Some(opts),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Quantizes `m` calibrated on `samples`; the result must pass its check.
fn quantize_on(
    m: &Model,
    opts: QuantOptions,
    samples: SampleOptions,
    exclude: &[&str],
) -> onnxsmith::Optimized {
    let done = optimize_model(
        m,
        &Options {
            quiet: true,
            samples,
            quantize: Some(opts),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        matches!(done.report.check, CheckStatus::Verified { .. }),
        "{}",
        done.report.to_text()
    );
    done
}

fn ops(g: &Graph, op: &str) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is(op)).collect();
    v.sort();
    v
}

/// The DequantizeLinear producing input `slot` of `n`.
fn dq_of(g: &Graph, n: NodeId, slot: usize) -> Option<NodeId> {
    let v = g.node(n).input(slot)?;
    g.producer(v).filter(|&p| g.node(p).is("DequantizeLinear"))
}

fn constant_of(g: &Graph, n: NodeId, slot: usize) -> &onnxsmith::ir::Tensor {
    g.value(g.node(n).input(slot).unwrap()).constant().unwrap()
}

/// Q/DQ form pairs: every Q is read, by DequantizeLinear only; every DQ reads a Q or a
/// constant; no Q or DQ output is a graph output; no Q reads a DQ that reads a Q.
fn assert_well_formed(g: &Graph) {
    for q in ops(g, "QuantizeLinear") {
        let out = g.node(q).output(0).unwrap();
        assert!(!g.is_output(out), "a Q on a graph output");
        let readers = g.value(out).uses();
        assert!(!readers.is_empty(), "an orphan Q");
        assert!(readers
            .iter()
            .all(|u| g.node(u.node).is("DequantizeLinear")));
        let x = g.node(q).input(0).unwrap();
        let fed_by_dq = g
            .producer(x)
            .is_some_and(|p| g.node(p).is("DequantizeLinear"));
        assert!(!fed_by_dq, "a Q -> DQ -> Q chain");
    }
    for dq in ops(g, "DequantizeLinear") {
        let out = g.node(dq).output(0).unwrap();
        assert!(!g.is_output(out), "a DQ on a graph output");
        assert!(!g.value(out).uses().is_empty(), "an orphan DQ");
        let x = g.node(dq).input(0).unwrap();
        let from_q = g
            .producer(x)
            .is_some_and(|p| g.node(p).is("QuantizeLinear"));
        assert!(from_q || g.value(x).constant().is_some());
    }
}

#[test]
fn every_weight_is_int8_per_channel_with_zero_points_0_at_opset_13() {
    let m = lift(conv_net(13));
    let done = quantize(&m, Activations::Int8, &[]);
    let g = &done.model.graph;
    for (op, axis) in [("Conv", 0), ("Gemm", 0)] {
        for n in ops(g, op) {
            let w = dq_of(g, n, 1).expect("the weight is dequantized");
            assert_eq!(g.node(w).attr_i("axis"), Some(axis), "{op}");
            assert_eq!(constant_of(g, w, 0).dtype(), DType::I8);
            let zp = constant_of(g, w, 2);
            assert_eq!(zp.dtype(), DType::I8);
            assert!(
                zp.raw_bytes().unwrap().iter().all(|&b| b == 0),
                "zero point 0"
            );
            let channels = constant_of(g, w, 0).dims()[axis as usize];
            assert_eq!(
                constant_of(g, w, 1).dims(),
                [channels],
                "one scale per channel"
            );
            let b = dq_of(g, n, 2).expect("the bias is dequantized");
            assert_eq!(constant_of(g, b, 0).dtype(), DType::I32);
            let x = dq_of(g, n, 0).expect("the activation is dequantized");
            let azp = constant_of(g, x, 2);
            assert_eq!(azp.dtype(), DType::I8);
            assert_eq!(azp.raw_bytes().unwrap()[..], [0], "symmetric activations");
        }
    }
    assert_well_formed(g);
    // TensorRT's rules: opset 13 or later, int8 with zero point 0 everywhere.
    assert!(done.model.opset("").unwrap() >= 13);
    for q in ops(g, "QuantizeLinear")
        .into_iter()
        .chain(ops(g, "DequantizeLinear"))
    {
        let zp = constant_of(g, q, 2);
        assert!(matches!(zp.dtype(), DType::I8 | DType::I32));
        assert!(zp.raw_bytes().unwrap().iter().all(|&b| b == 0));
    }
    // Q and DQ outputs are named for what they hold.
    for (op, suffix) in [
        ("QuantizeLinear", "_quantized"),
        ("DequantizeLinear", "_dequantized"),
    ] {
        for n in ops(g, op) {
            let out = g.value(g.node(n).output(0).unwrap()).name();
            assert!(out.ends_with(suffix), "{out}");
        }
    }
    // Zero points of zeros are shared: one per type and shape (small_net reads no activation
    // twice, so no reader has a pair of its own).
    let mut zero_points: Vec<_> = ops(g, "QuantizeLinear")
        .into_iter()
        .chain(ops(g, "DequantizeLinear"))
        .map(|n| g.node(n).input(2).unwrap())
        .collect();
    zero_points.sort();
    zero_points.dedup();
    let mut kinds: Vec<_> = zero_points
        .iter()
        .map(|&z| {
            let t = g.value(z).constant().unwrap();
            (t.dtype(), t.dims().to_vec())
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(zero_points.len(), kinds.len(), "{kinds:?}");
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.quantized, 3);
    assert!(q.left_float.is_empty());
    assert_eq!(q.int8_weight_share, 1.0);
    assert!(q.random_calibration);
}

/// `conv_net(opset)` with a Softmax over `axis` of its [1, 5] output.
fn small_net_softmax(opset: i64, axis: i64) -> ModelProto {
    let mut m = conv_net(opset);
    let g = m.graph.as_mut().unwrap();
    let fc = g.node.iter_mut().find(|n| n.name == "fc").unwrap();
    fc.output[0] = "logits".into();
    let mut softmax = node("Softmax", "softmax", &["logits"], &["y"]);
    softmax.attribute = vec![attr_int("axis", axis)];
    g.node.push(softmax);
    m
}

fn opset_step(done: &onnxsmith::Optimized) -> onnxsmith::passes::quant::opset::OpsetStep {
    let q = done.report.quantization.as_ref().unwrap();
    q.opset.clone().expect("the opset step is reported")
}

#[test]
fn below_opset_13_the_import_is_raised_when_every_op_reads_the_same() {
    // Before 13, Softmax flattens at `axis`; over the last axis that is the same as at 13.
    for m in [conv_net(11), small_net_softmax(11, 1)] {
        let done = quantize(&lift(m), Activations::Int8, &[]);
        let g = &done.model.graph;
        assert_eq!(done.model.opset(""), Some(13));
        for n in ops(g, "Conv") {
            let w = dq_of(g, n, 1).expect("the weight is dequantized");
            assert_eq!(g.node(w).attr_i("axis"), Some(0), "per channel once raised");
        }
        let step = opset_step(&done);
        assert!(step.raised && step.declared == 11 && step.kept_because.is_none());
        assert_well_formed(g);
    }
}

#[test]
fn below_opset_13_weights_are_per_tensor_when_an_op_reads_differently_at_13() {
    // Softmax over axis 0 of [1, 5] normalizes all five values before 13, one at a time at 13.
    let done = quantize(&lift(small_net_softmax(11, 0)), Activations::Int8, &[]);
    let g = &done.model.graph;
    assert!(!ops(g, "DequantizeLinear").is_empty());
    for dq in ops(g, "DequantizeLinear") {
        assert!(g.node(dq).attr("axis").is_none(), "no axis before opset 13");
        assert!(constant_of(g, dq, 1).dims().is_empty(), "one scale");
    }
    assert_eq!(done.model.opset(""), Some(11));
    let step = opset_step(&done);
    assert!(!step.raised);
    let why = step.kept_because.unwrap();
    assert!(why.contains("Softmax 'softmax'"), "{why}");
    assert!(done.report.to_text().contains("weights per tensor"));
    assert_well_formed(g);
}

#[test]
fn uint8_activations_carry_a_zero_point_and_absorb_a_relu() {
    let m = lift(conv_net(13));
    let done = quantize(&m, Activations::Uint8, &[]);
    let g = &done.model.graph;
    let qs = ops(g, "QuantizeLinear");
    // x, the Relu's output (its Q clamps at the zero point in its place), conv2's output,
    // the pool's and the Gemm's input; the Gemm's output is a graph output and stays float.
    assert_eq!(qs.len(), 5, "one per distinct activation");
    for q in qs {
        assert_eq!(constant_of(g, q, 2).dtype(), DType::U8);
    }
    assert!(ops(g, "Relu").is_empty(), "the Relu is absorbed");
    assert_well_formed(g);
}

#[test]
fn around_ops_each_quantized_op_reads_dq_and_is_read_by_q() {
    let m = lift(conv_net(13));
    let done = quantize(&m, Activations::Int8, &[]);
    let g = &done.model.graph;
    for n in ops(g, "Conv") {
        let y = g.node(n).output(0).unwrap();
        let readers = g.value(y).uses();
        assert!(
            readers.iter().all(|u| g.node(u.node).is("QuantizeLinear")),
            "every reader of a Conv's output is its Q"
        );
    }
    assert_eq!(
        ops(g, "Relu").len(),
        1,
        "int8 symmetric cannot stand in for a Relu"
    );
    assert_well_formed(g);
}

#[test]
fn around_ops_an_average_pool_reading_a_dq_is_quantized() {
    let m = lift(conv_net(13));
    for (activations, placement, around) in [
        (Activations::Int8, Placement::AroundOps, true),
        (Activations::Uint8, Placement::AroundOps, true),
        (Activations::Int8, Placement::Joins, false),
        (Activations::Int8, Placement::Inputs, false),
    ] {
        let done = quantize_for(&m, activations, placement, &[]);
        let g = &done.model.graph;
        let pool = ops(g, "GlobalAveragePool")[0];
        let p = g.node(pool).output(0).unwrap();
        let read_by_q = g
            .value(p)
            .uses()
            .iter()
            .all(|u| g.node(u.node).is("QuantizeLinear"));
        assert_eq!(dq_of(g, pool, 0).is_some(), around, "{placement:?}");
        assert_eq!(read_by_q, around, "{activations:?} {placement:?}");
        assert_well_formed(g);
    }
}

#[test]
fn for_tensorrt_q_dq_sit_on_op_inputs_only() {
    let m = lift(conv_net(13));
    let done = quantize_for(&m, Activations::Int8, Placement::Inputs, &[]);
    let g = &done.model.graph;
    // x, the Relu's output and the Gemm's input.
    assert_eq!(ops(g, "QuantizeLinear").len(), 3);
    for n in ops(g, "Conv") {
        let y = g.node(n).output(0).unwrap();
        assert!(g
            .value(y)
            .uses()
            .iter()
            .all(|u| !g.node(u.node).is("QuantizeLinear")));
    }
    // TensorRT parses a DequantizeLinear only of an activation type: int8 with zero point 0,
    // never an int32 bias.
    for n in ops(g, "DequantizeLinear")
        .into_iter()
        .chain(ops(g, "QuantizeLinear"))
    {
        let zp = constant_of(g, n, 2);
        assert_eq!(zp.dtype(), DType::I8, "only int8 is quantized");
        assert!(
            zp.raw_bytes().unwrap().iter().all(|&b| b == 0),
            "zero point 0"
        );
    }
    for n in ops(g, "Conv").into_iter().chain(ops(g, "Gemm")) {
        if let Some(b) = g.node(n).input(2) {
            let b = g.value(b).constant().expect("a float bias initializer");
            assert_eq!(b.dtype(), DType::F32);
        }
    }
    assert_well_formed(g);
}

#[test]
fn excluded_ops_stay_float_and_are_reported() {
    let m = lift(conv_net(13));
    let done = quantize(&m, Activations::Int8, &["Gemm", "conv2"]);
    let g = &done.model.graph;
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.quantized, 1);
    let names: Vec<&str> = q.left_float.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["conv2", "fc"]);
    assert!(q.left_float.iter().all(|(_, why)| why.contains("excluded")));
    for n in ops(g, "Gemm") {
        assert_eq!(constant_of(g, n, 1).dtype(), DType::F32);
    }
    assert!(q.int8_weight_share > 0.0 && q.int8_weight_share < 1.0);
}

/// One 1x1 Conv: the QDQ model's output, run in tract, against the same computation done
/// here with the scales the model holds.
#[test]
fn a_quantized_conv_computes_what_its_scales_say() {
    let mut conv = node("Conv", "conv", &["x", "W", "b"], &["y"]);
    conv.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let (w, b) = (values(8, 7), values(2, 8));
    let p = model_io(
        vec![conv],
        vec![f32_info("x", &[1, 4, 3, 3])],
        vec![f32_info("y", &[1, 2, 3, 3])],
        vec![
            f32_tensor("W", &[2, 4, 1, 1], &w),
            f32_tensor("b", &[2], &b),
        ],
    );
    let m = lift(p);
    // The bias as it is: its correction is checked on its own.
    let opts = QuantOptions {
        bias_correction: false,
        ..Default::default()
    };
    let done = quantize_with(&m, opts, &[]);
    let g = &done.model.graph;
    let conv = ops(g, "Conv")[0];
    let scale = |dq: NodeId| constant_of(g, dq, 1).to_f32_vec().unwrap();
    let s_x = scale(dq_of(g, conv, 0).unwrap())[0];
    let s_w = scale(dq_of(g, conv, 1).unwrap());
    // Independently: symmetric int8 with those scales, round half away from zero as ONNX
    // QuantizeLinear rounds half to even; the inputs here avoid exact halves.
    let q = |v: f32, s: f32| (v / s).round().clamp(-127.0, 127.0) * s;
    let x: Vec<f32> = values(36, 9).iter().map(|v| v * 0.8).collect();
    let mut want = vec![0f32; 18];
    for o in 0..2 {
        let bias = (b[o] / (s_x * s_w[o])).round() * s_x * s_w[o];
        for p in 0..9 {
            let acc: f32 = (0..4)
                .map(|c| q(x[c * 9 + p], s_x) * q(w[o * 4 + c], s_w[o]))
                .sum();
            want[o * 9 + p] = acc + bias;
        }
    }
    let input = onnxsmith::runtime::HostTensor::from_le_bytes(
        DType::F32,
        &[1, 4, 3, 3],
        &x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut binding = onnxsmith::runtime::Binding::default();
    binding.input_shapes.insert("x".into(), vec![1, 4, 3, 3]);
    let runner = onnxsmith::runtime::Runner::new(&done.model, &binding, &[]).unwrap();
    let got = runner.run(&[input]).unwrap()[0].to_f64().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f32 - w).abs() < 1e-4, "got {got:?}, want {want:?}");
    }
}

#[test]
fn range_methods_on_known_distributions() {
    // Uniform in [-1, 1]: the extremes are 1, half the magnitudes lie below 0.5.
    let uniform: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0 - 1.0).collect();
    let mut st = Stats::default();
    st.observe(&uniform, true);
    assert!((st.threshold(Method::MinMax) - 1.0).abs() < 1e-6);
    assert!((st.threshold(Method::Percentile(50.0)) - 0.5).abs() < 2e-3);
    assert!((st.threshold(Method::Percentile(100.0)) - 1.0).abs() < 1e-3);
    // A narrow bulk with rare far outliers: entropy and a percentile clip the outliers,
    // MinMax does not.
    let mut spiky: Vec<f32> = values(100_000, 3).iter().map(|v| v * 0.1).collect();
    spiky.extend([50.0, -50.0]);
    let mut st = Stats::default();
    st.observe(&spiky, true);
    assert_eq!(st.threshold(Method::MinMax), 50.0);
    let entropy = st.threshold(Method::Entropy);
    assert!(entropy < 5.0, "entropy threshold {entropy}");
    assert!(entropy > 0.05, "entropy threshold {entropy}");
    assert!(st.threshold(Method::Percentile(99.9)) < 1.0);
}

#[test]
fn one_pass_histograms_agree_with_one_shot_whatever_the_order() {
    // Samples whose magnitudes grow (each one widens the range several times), split between
    // two workers and merged, against all values seen at once.
    let all: Vec<f32> = values(60_000, 7)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / 10_000) as f32 * 3.0))
        .collect();
    let mut once = Stats::default();
    once.observe(&all, true);
    let (mut a, mut b) = (Stats::default(), Stats::default());
    for (k, sample) in all.chunks(10_000).enumerate() {
        if k % 2 == 0 { &mut a } else { &mut b }.observe(sample, true);
    }
    let mut streamed = Stats::default();
    streamed.merge(&b);
    streamed.merge(&a);
    assert_eq!(streamed.seen, once.seen);
    assert_eq!(
        streamed.threshold(Method::MinMax),
        once.threshold(Method::MinMax)
    );
    // Widening merges bins, so a streamed threshold may land one coarse bin off.
    let width = 2.0 * once.amax() / 2048.0;
    for method in [
        Method::Percentile(99.0),
        Method::Percentile(99.99),
        Method::Entropy,
    ] {
        let (s, o) = (streamed.threshold(method), once.threshold(method));
        assert!(
            (s - o).abs() <= width,
            "{method:?}: streamed {s}, at once {o}"
        );
        assert!(s > 0.0 && s <= once.amax());
    }
    // Infinities and NaNs are not values to cover.
    let mut odd = Stats::default();
    odd.observe(&[f32::NAN, f32::INFINITY, -2.0, 1.0], true);
    assert_eq!((odd.seen, odd.min, odd.max), (2, -2.0, 1.0));
    assert_eq!(odd.threshold(Method::Percentile(100.0)), 2.0);
}

/// `optimize --quantize int8 --calib DIR` on the small net; (exit code, stderr).
fn quantize_cli(dir: &Path) -> (Option<i32>, String) {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("m.onnx");
    onnxsmith::save(&lift(conv_net(13)), &input, Default::default()).unwrap();
    let out = bin()
        .args(["optimize", "-q", "--quantize", "int8", "--calib"])
        .arg(dir)
        .arg("-o")
        .arg(work.path().join("o.onnx"))
        .arg(&input)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn calibrates_on_a_directory_of_npy_samples() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        write_npy(&dir.path().join(format!("{i}.npy")), &[1, 3, 8, 8], false);
    }
    let (code, err) = quantize_cli(dir.path());
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn bad_calibration_data_is_refused_naming_the_file_and_input() {
    let empty = tempfile::tempdir().unwrap();
    let (code, err) = quantize_cli(empty.path());
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no .npy, .npz, .png or .jpg calibration samples"),
        "{err}"
    );

    let wrong_type = tempfile::tempdir().unwrap();
    write_npy(&wrong_type.path().join("a.npy"), &[1, 3, 8, 8], true);
    let (code, err) = quantize_cli(wrong_type.path());
    assert_eq!(code, Some(1));
    assert!(
        err.contains("a.npy") && err.contains("'x'") && err.contains("f32"),
        "{err}"
    );

    let wrong_shape = tempfile::tempdir().unwrap();
    write_npy(&wrong_shape.path().join("b.npy"), &[3, 8, 8], false);
    let (code, err) = quantize_cli(wrong_shape.path());
    assert_eq!(code, Some(1));
    assert!(err.contains("b.npy") && err.contains("'x'"), "{err}");

    let unreadable = tempfile::tempdir().unwrap();
    std::fs::write(unreadable.path().join("c.npy"), b"not numpy").unwrap();
    let (code, err) = quantize_cli(unreadable.path());
    assert_eq!(code, Some(1));
    assert!(err.contains("c.npy"), "{err}");

    let missing = Path::new("/nonexistent/calibration");
    let (code, err) = quantize_cli(missing);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/calibration"), "{err}");
}

#[test]
fn quantization_needs_calibration_data() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("m.onnx");
    onnxsmith::save(&lift(conv_net(13)), &input, Default::default()).unwrap();
    let out = bin()
        .args(["optimize", "-q", "--quantize", "int8", "-o"])
        .arg(work.path().join("o.onnx"))
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--calib"));
}

/// x ─▶ ConvA (channel 0 offset by 1000) ─▶ ConvB (reads channel 1 only) ─▶ y: one scale for
/// A's output cannot hold both channels, so int8 ruins what B reads.
fn ruined_by_one_scale() -> Model {
    ruined_by_one_scale_through(vec![], "a")
}

/// [`ruined_by_one_scale`] with `between` (reading `a`, writing `b_in`) between the Convs.
fn ruined_by_one_scale_through(
    between: Vec<onnxsmith::onnx::proto::NodeProto>,
    b_in: &str,
) -> Model {
    let mut a = node("Conv", "convA", &["x", "WA", "bA"], &["a"]);
    a.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let mut b = node("Conv", "convB", &[b_in, "WB"], &["y"]);
    b.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let mut nodes = vec![a];
    nodes.extend(between);
    nodes.push(b);
    lift(model_io(
        nodes,
        vec![f32_info("x", &[1, 2, 16, 16])],
        vec![f32_info("y", &[1, 1, 16, 16])],
        vec![
            f32_tensor("WA", &[2, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0]),
            f32_tensor("bA", &[2], &[1000.0, 0.0]),
            f32_tensor("WB", &[1, 2, 1, 1], &[0.0, 1.0]),
        ],
    ))
}

/// The Conv named `name` of `g`.
fn conv_named(g: &Graph, name: &str) -> NodeId {
    ops(g, "Conv")
        .into_iter()
        .find(|&n| g.node(n).name() == name)
        .unwrap()
}

#[test]
fn the_fallback_reads_the_activation_int8_ruins_in_float_and_keeps_its_weights_int8() {
    let m = ruined_by_one_scale();
    let done = quantize(&m, Activations::Int8, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.fallback, ["convB"], "{}", done.report.to_text());
    assert_eq!(q.weights_only, ["convB"]);
    assert_eq!(q.layer_errors[0].0, "convB", "the worst layer first");
    assert!(q.layer_errors[0].1 > 0.5, "{:?}", q.layer_errors);
    assert_eq!(q.quantized, 1);
    assert_eq!(q.int8_weight_share, 1.0);
    assert!(done.report.to_text().contains("float activations"));
    let g = &done.model.graph;
    let b = conv_named(g, "convB");
    let w = dq_of(g, b, 1).expect("convB's weights stay int8");
    assert_eq!(constant_of(g, w, 0).dtype(), DType::I8);
    assert!(dq_of(g, b, 0).is_none(), "and it reads a float input");
    assert_well_formed(g);
}

#[test]
fn an_op_kept_float_reads_float_through_a_relu() {
    // convA's output is quantized around ops unless an op kept float reads it, here through
    // a Relu that symmetric int8 cannot absorb: convB must see the float values.
    let m = ruined_by_one_scale_through(vec![node("Relu", "relu", &["a"], &["r"])], "r");
    let done = quantize(&m, Activations::Int8, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.weights_only, ["convB"], "{}", done.report.to_text());
    let g = &done.model.graph;
    let relu = ops(g, "Relu")[0];
    assert!(dq_of(g, relu, 0).is_none(), "the Relu reads convA in float");
    let excluded = quantize(&m, Activations::Int8, &["convB"]);
    let g = &excluded.model.graph;
    let relu = ops(g, "Relu")[0];
    assert!(
        dq_of(g, relu, 0).is_none(),
        "and so for an op the user excluded"
    );
    assert_well_formed(g);
}

#[test]
fn for_tensorrt_the_fallback_returns_the_layer_to_float() {
    let m = ruined_by_one_scale();
    let done = quantize_for(&m, Activations::Int8, Placement::Inputs, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.fallback, ["convB"], "{}", done.report.to_text());
    assert!(q.weights_only.is_empty());
    let g = &done.model.graph;
    assert_wholly_float(g, "convB");
    assert_well_formed(g);
}

/// Conv `name` of `g` has a float weight and reads a float input.
fn assert_wholly_float(g: &Graph, name: &str) {
    let c = conv_named(g, name);
    assert_eq!(
        constant_of(g, c, 1).dtype(),
        DType::F32,
        "{name} stays float"
    );
    assert!(dq_of(g, c, 0).is_none(), "and reads a float input");
}

/// x ─▶ Conv(W[1,2,1,1]) ─▶ y, with W's weight for x's channel 0 at 1000: the per-channel
/// scale that keeps 1000 rounds the weight for channel 1, 0.3, to 0. Calibrated and checked
/// on samples whose channel 0 is 0, so float y is 0.3 · x₁ and int8 weights ruin the Conv
/// whatever its activation does.
fn ruined_by_its_weights() -> (Model, tempfile::TempDir) {
    let mut c = node("Conv", "conv", &["x", "W"], &["y"]);
    c.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let m = lift(model_io(
        vec![c],
        vec![f32_info("x", &[1, 2, 4, 4])],
        vec![f32_info("y", &[1, 1, 4, 4])],
        vec![f32_tensor("W", &[1, 2, 1, 1], &[1000.0, 0.3])],
    ));
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        let mut x = values(32, i + 1);
        x[..16].fill(0.0);
        write_npy_values(
            &dir.path().join(format!("{i}.npy")),
            &[1, 2, 4, 4],
            &x,
            false,
        );
    }
    (m, dir)
}

#[test]
fn the_fallback_returns_a_layer_its_int8_weights_ruin_to_float() {
    let (m, dir) = ruined_by_its_weights();
    let done = quantize_on(&m, QuantOptions::default(), from_dir(dir.path()), &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert_eq!(q.fallback, ["conv"], "{}", done.report.to_text());
    assert!(q.weights_only.is_empty(), "float activations did not pass");
    assert_wholly_float(&done.model.graph, "conv");
    assert!(q
        .left_float
        .iter()
        .any(|(n, why)| n == "conv" && why.contains("returned to float")));
}

#[test]
fn without_the_fallback_a_ruined_result_is_refused() {
    let m = ruined_by_one_scale();
    let done = optimize_model(
        &m,
        &Options {
            quiet: true,
            samples: random(16),
            quantize: Some(QuantOptions {
                fallback: false,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!done.report.passed());
    assert!(matches!(done.report.check, CheckStatus::Mismatch { .. }));
}

/// `optimize --quantize int8 --calib DIR --preprocess SPEC` on the small net (input 8x8).
fn quantize_images(dir: &Path, spec: Option<&str>) -> (Option<i32>, String) {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("m.onnx");
    onnxsmith::save(&lift(conv_net(13)), &input, Default::default()).unwrap();
    let mut cmd = bin();
    cmd.args(["optimize", "-q", "--quantize", "int8", "--calib"])
        .arg(dir);
    if let Some(spec) = spec {
        cmd.args(["--preprocess", spec]);
    }
    let out = cmd
        .arg("-o")
        .arg(work.path().join("o.onnx"))
        .arg(&input)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + seed) as u8,
            (y * 5 + seed * 3) as u8,
            ((x + y) * 3) as u8,
        ])
    });
    img.save(path).unwrap();
}

#[test]
fn calibrates_on_images_with_a_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_png(&dir.path().join(format!("{i}.png")), 20 + i, 12, i);
    }
    let (code, err) = quantize_images(dir.path(), Some("imagenet,resize=10"));
    assert_eq!(code, Some(0), "{err}");
    // Without a preprocessing, an image is not an input.
    let (code, err) = quantize_images(dir.path(), None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("0.png") && err.contains("--preprocess"),
        "{err}"
    );
    // A crop larger than the resized image is refused, naming the file.
    let (code, err) = quantize_images(dir.path(), Some("imagenet,resize=4"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains(".png") && err.contains("smaller than"),
        "{err}"
    );
}

#[test]
fn imagenet_preprocessing_normalizes_and_lays_out_channels() {
    use onnxsmith::lossy::images::Preprocess;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.png");
    image::RgbImage::from_pixel(6, 4, image::Rgb([255, 0, 128]))
        .save(&path)
        .unwrap();
    let p = Preprocess::parse("imagenet,resize=4,crop=2x3").unwrap();
    let t = p.load(&path, None).unwrap();
    assert_eq!(t.shape(), [1, 3, 2, 3]);
    let v = t.to_f32().unwrap();
    let want = [
        (1.0 - 0.485) / 0.229,
        (0.0 - 0.456) / 0.224,
        (128.0 / 255.0 - 0.406) / 0.225,
    ];
    for c in 0..3 {
        for &x in &v[c * 6..(c + 1) * 6] {
            assert!(
                (x - want[c]).abs() < 1e-5,
                "channel {c}: {x} vs {}",
                want[c]
            );
        }
    }
    let bgr = Preprocess::parse("none,order=bgr,layout=nhwc").unwrap();
    let t = bgr.load(&path, None).unwrap();
    assert_eq!(t.shape(), [1, 4, 6, 3]);
    assert_eq!(t.to_f32().unwrap()[..3], [128.0, 0.0, 255.0]);
    assert!(Preprocess::parse("imagenet,mean=1:2").is_err());
    assert!(Preprocess::parse("vgg").is_err());
}

/// x ─▶ Conv(Wa) ─┐
///                ├─▶ Concat ─▶ Conv(Wc) ─▶ y, with Wb `spread` times Wa's magnitude.
/// x ─▶ Conv(Wb) ─┘
fn concat_net(spread: f32) -> Model {
    let conv = |name: &str, x: &str, w: &str, y: &str| {
        let mut c = node("Conv", name, &[x, w], &[y]);
        c.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
        c
    };
    let mut cat = node("Concat", "cat", &["a", "b"], &["ab"]);
    cat.attribute = vec![attr_int("axis", 1)];
    let wb: Vec<f32> = values(6, 8).iter().map(|v| v * spread).collect();
    lift(model_io(
        vec![
            conv("conv_a", "x", "Wa", "a"),
            conv("conv_b", "x", "Wb", "b"),
            cat,
            conv("conv_c", "ab", "Wc", "y"),
        ],
        vec![f32_info("x", &[1, 3, 4, 4])],
        vec![f32_info("y", &[1, 2, 4, 4])],
        vec![
            f32_tensor("Wa", &[2, 3, 1, 1], &values(6, 7)),
            f32_tensor("Wb", &[2, 3, 1, 1], &wb),
            f32_tensor("Wc", &[2, 4, 1, 1], &values(8, 9)),
        ],
    ))
}

#[test]
fn a_concat_of_ranges_far_apart_is_read_in_float() {
    let done = quantize(&concat_net(1000.0), Activations::Int8, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    let (name, why) = &q.left_float[0];
    assert_eq!((q.left_float.len(), name.as_str()), (1, "conv_c"));
    assert!(why.contains("Concat"), "{why}");
    let g = &done.model.graph;
    let c = ops(g, "Conv")
        .into_iter()
        .find(|&n| g.node(n).name() == "conv_c")
        .unwrap();
    assert!(dq_of(g, c, 0).is_none(), "conv_c reads the Concat in float");
    assert_well_formed(g);
}

/// The scales of the Qs of each input of the Concat of `g` and of its output.
fn concat_scales(g: &Graph) -> (Vec<f32>, f32) {
    let scale_of_q_reading = |v| {
        let q = g
            .value(v)
            .uses()
            .iter()
            .map(|u| u.node)
            .find(|&n| g.node(n).is("QuantizeLinear"))
            .expect("a Q reads it");
        constant_of(g, q, 1).to_f32_vec().unwrap()[0]
    };
    let cat = ops(g, "Concat")[0];
    // The Concat reads its inputs through their DQs.
    let inputs = (0..2)
        .map(|slot| {
            let dq = dq_of(g, cat, slot).expect("a quantized input");
            let q = g.producer(g.node(dq).input(0).unwrap()).unwrap();
            scale_of_q_reading(g.node(q).input(0).unwrap())
        })
        .collect();
    (inputs, scale_of_q_reading(g.node(cat).output(0).unwrap()))
}

#[test]
fn a_concat_of_close_ranges_shares_one_scale() {
    let done = quantize(&concat_net(1.0), Activations::Int8, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert!(q.left_float.is_empty(), "{:?}", q.left_float);
    assert_eq!(q.quantized, 3);
    let (inputs, output) = concat_scales(&done.model.graph);
    assert!(inputs.iter().all(|&s| s == output), "{inputs:?} {output}");
    // Ranges 2-16x apart keep a scale each, and the Concat's reader is still quantized.
    let done = quantize(&concat_net(8.0), Activations::Int8, &[]);
    let q = done.report.quantization.as_ref().unwrap();
    assert!(q.left_float.is_empty(), "{:?}", q.left_float);
    let (inputs, output) = concat_scales(&done.model.graph);
    assert!(inputs[0] < inputs[1] / 2.0, "{inputs:?} {output}");
}

/// x[1,2,5,5] ─▶ Conv(W1[4,2,3,3], b1) ─▶ `act` ─▶ Conv(W2[4,1,3,3], depthwise) ─▶ Relu
/// ─▶ Conv(W3[3,4,1,1]) ─▶ y, W1's output channels of very different magnitudes.
fn conv_chain(act: &str) -> Model {
    let conv = |name: &str, ins: &[&str], y: &str, k: i64, group: i64| {
        let mut c = node("Conv", name, ins, &[y]);
        c.attribute = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[k / 2; 4]),
            attr_int("group", group),
        ];
        c
    };
    let mut nodes = vec![conv("conv1", &["x", "W1", "b1"], "c1", 3, 1)];
    let mut inits = vec![];
    match act {
        "Clip6" => {
            nodes.push(node("Clip", "act", &["c1", "lo", "hi"], &["a1"]));
            inits.push(f32_tensor("lo", &[], &[0.0]));
            inits.push(f32_tensor("hi", &[], &[6.0]));
        }
        op => nodes.push(node(op, "act", &["c1"], &["a1"])),
    }
    nodes.extend([
        conv("conv2", &["a1", "W2"], "c2", 3, 4),
        node("Relu", "relu2", &["c2"], &["a2"]),
        conv("conv3", &["a2", "W3"], "y", 1, 1),
    ]);
    let magnitude = [1.0, 20.0, 0.05, 3.0];
    let w1: Vec<f32> = values(72, 11)
        .iter()
        .enumerate()
        .map(|(i, v)| v * magnitude[i / 18])
        .collect();
    inits.extend([
        f32_tensor("W1", &[4, 2, 3, 3], &w1),
        f32_tensor("b1", &[4], &values(4, 12)),
        f32_tensor("W2", &[4, 1, 3, 3], &values(36, 13)),
        f32_tensor("W3", &[3, 4, 1, 1], &values(12, 14)),
    ]);
    lift(model_io(
        nodes,
        vec![f32_info("x", &[1, 2, 5, 5])],
        vec![f32_info("y", &[1, 3, 5, 5])],
        inits,
    ))
}

fn equalized(m: &Model) -> (Model, onnxsmith::passes::PipelineReport) {
    let mut out = m.clone();
    let opts = onnxsmith::passes::PipelineOptions {
        explain: true,
        verify_each: true,
        ..Default::default()
    };
    let report = onnxsmith::passes::quant::equalize(&mut out, &opts).unwrap();
    (out, report)
}

fn weight_of<'g>(g: &'g Graph, conv: &str) -> &'g onnxsmith::ir::Tensor {
    let n = ops(g, "Conv")
        .into_iter()
        .find(|&n| g.node(n).name() == conv)
        .unwrap();
    constant_of(g, n, 1)
}

#[test]
fn equalization_evens_out_channel_ranges_and_computes_the_same() {
    use onnxsmith::passes::channels::{conv_input_ranges, conv_output_ranges};
    for act in ["Relu", "LeakyRelu"] {
        let m = conv_chain(act);
        let (out, report) = equalized(&m);
        assert!(report.steps.contains(&"equalize-conv-pairs"));
        // Both pairs: conv3 changes only through the second.
        for conv in ["conv1", "conv2", "conv3"] {
            let w = |m: &Model| weight_of(&m.graph, conv).raw_bytes().unwrap().to_vec();
            assert_ne!(w(&out), w(&m), "{conv} rescaled");
        }
        common::assert_same_outputs(&m, &out);
        let g = &out.graph;
        let r1 = conv_output_ranges(weight_of(g, "conv1")).unwrap();
        let r2 = conv_input_ranges(weight_of(g, "conv2"), 4).unwrap();
        // Before, conv1's channels spanned 400x; after, each matches conv2's reader of it.
        let before = conv_output_ranges(weight_of(&m.graph, "conv1")).unwrap();
        let spread = |r: &[f64]| {
            r.iter().cloned().fold(0f64, f64::max) / r.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(&before) > 100.0);
        assert!(spread(&r1) < spread(&before) / 10.0, "{r1:?}");
        // Sweeps stop once every factor is within 1% of 1: each range within about 2%.
        for (a, b) in r1.iter().zip(&r2) {
            assert!((a - b).abs() <= 0.03 * a.max(*b), "{r1:?} vs {r2:?}");
        }
        // However many rounds rescaled a weight, its name says so once.
        let rounds = report
            .rounds
            .iter()
            .find(|(s, _)| *s == "equalize")
            .unwrap()
            .1;
        assert!(rounds > 2, "{rounds}");
        for conv in ["conv1", "conv2", "conv3"] {
            let n = ops(g, "Conv")
                .into_iter()
                .find(|&n| g.node(n).name() == conv)
                .unwrap();
            let w = g.value(g.node(n).input(1).unwrap()).name();
            assert_eq!(w.matches("_equalized").count(), 1, "{w}");
        }
    }
}

#[test]
fn equalization_stops_at_a_bounded_clip() {
    let m = conv_chain("Clip6");
    let (out, report) = equalized(&m);
    let w = |m: &Model| weight_of(&m.graph, "conv1").raw_bytes().unwrap().to_vec();
    assert_eq!(w(&out), w(&m), "conv1 is not rescaled through Relu6");
    assert!(
        report
            .explain
            .iter()
            .any(|e| e.contains("equalize-conv-pairs: kept Conv 'conv2'") && e.contains("bounded")),
        "{:#?}",
        report.explain
    );
}

#[test]
fn bias_correction_shifts_each_bias_by_the_mean_weight_error() {
    // Two 1x1 Convs on x whose channels are constant 2 and 5 in every sample, so E[x] is
    // known; conv_a has a bias, conv_b has none and gets one.
    let w: Vec<f32> = vec![1.0, 0.3037, -0.61, 0.77];
    let b = [0.25f32, -0.5];
    let mut ca = node("Conv", "conv_a", &["x", "W", "b"], &["ya"]);
    ca.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let mut cb = node("Conv", "conv_b", &["x", "W"], &["yb"]);
    cb.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let m = lift(model_io(
        vec![ca, cb],
        vec![f32_info("x", &[1, 2, 2, 2])],
        vec![f32_info("ya", &[1, 2, 2, 2]), f32_info("yb", &[1, 2, 2, 2])],
        vec![
            f32_tensor("W", &[2, 2, 1, 1], &w),
            f32_tensor("b", &[2], &b),
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = [2.0f32, 5.0].iter().flat_map(|&c| [c; 4]).collect();
    for i in 0..3 {
        write_npy_values(
            &dir.path().join(format!("s{i}.npy")),
            &[1, 2, 2, 2],
            &x,
            false,
        );
    }
    let run = |correct: bool| {
        let done = optimize_model(
            &m,
            &Options {
                quiet: true,
                samples: from_dir(dir.path()),
                quantize: Some(QuantOptions {
                    bias_correction: correct,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let g = done.model.graph.clone();
        ["conv_a", "conv_b"].map(|name| {
            let n = ops(&g, "Conv")
                .into_iter()
                .find(|&n| g.node(n).name() == name)
                .unwrap();
            dq_of(&g, n, 2).map(|dq| {
                let q = constant_of(&g, dq, 0).raw_bytes().unwrap().to_vec();
                let s = constant_of(&g, dq, 1).to_f32_vec().unwrap();
                let q: Vec<i32> = q
                    .chunks(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let got: Vec<f32> = q.iter().zip(&s).map(|(&q, &s)| q as f32 * s).collect();
                (got, s)
            })
        })
    };
    // The reference: per-channel symmetric int8 weights, their error against W, times E[x].
    let shift: Vec<f32> = (0..2)
        .map(|o| {
            let row = &w[o * 2..o * 2 + 2];
            let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            row.iter()
                .zip([2.0f32, 5.0])
                .map(|(&v, mean)| ((v / s).round() * s - v) * mean)
                .sum()
        })
        .collect();
    assert!(
        shift.iter().all(|d| d.abs() > 1e-4),
        "the fixture has an error to correct"
    );
    let [a, bias_b] = run(true);
    let (a, scale) = a.expect("conv_a's bias is int32");
    let (got_b, scale_b) = bias_b.expect("conv_b gets a bias");
    for o in 0..2 {
        assert!(
            (a[o] - (b[o] - shift[o])).abs() <= scale[o],
            "{a:?} {shift:?}"
        );
        assert!(
            (got_b[o] + shift[o]).abs() <= scale_b[o],
            "{got_b:?} {shift:?}"
        );
    }
    let [a, bias_b] = run(false);
    let (a, scale) = a.unwrap();
    assert!(bias_b.is_none(), "no bias added without the correction");
    for o in 0..2 {
        assert!((a[o] - b[o]).abs() <= scale[o] / 2.0 + 1e-7);
    }
}

#[test]
fn calibration_over_samples_streams_histograms_into_percentile_ranges() {
    // x uniform in [-1, 1) over samples split between both workers: half its magnitudes lie
    // below 0.5, while its extremes are near 1.
    let m = lift(conv_net(13));
    let samples: Vec<Vec<onnxsmith::runtime::HostTensor>> = (0..6)
        .map(|i| {
            let x = values(192, 20 + i);
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            vec![
                onnxsmith::runtime::HostTensor::from_le_bytes(DType::F32, &[1, 3, 8, 8], &bytes)
                    .unwrap(),
            ]
        })
        .collect();
    let watch = [onnxsmith::passes::quant::calibrate::Watch {
        name: "x".into(),
        axis1: true,
        last: false,
    }];
    let stats = onnxsmith::passes::quant::calibrate::calibrate(
        &m,
        &watch,
        &samples,
        true,
        &onnxsmith::progress::Progress::new(true),
    )
    .unwrap();
    let x = &stats["x"];
    assert_eq!(x.seen, 6 * 192);
    assert_eq!(x.axis1.means().map(|m| m.len()), Some(3));
    assert_eq!(x.last.means(), None);
    assert!(x.threshold(Method::MinMax) > 0.95);
    let p50 = x.threshold(Method::Percentile(50.0));
    assert!((p50 - 0.5).abs() < 0.1, "the median magnitude is {p50}");
}

/// A 1x1 Conv `name` of `x` by `w` into `y`.
fn conv1x1(name: &str, x: &str, w: &str, y: &str) -> onnxsmith::onnx::proto::NodeProto {
    let mut c = node("Conv", name, &[x, w], &[y]);
    c.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    c
}

/// x ─▶ Conv ─▶ Relu ─▶ r ─▶ `middle` ─▶ p ─▶ Conv ─▶ y: 1x1 Convs of 3 to 4 and 4 to 2
/// channels, their weights seeded from `seed`, beside `inits` for `middle`.
fn between_two_convs(
    middle: Vec<onnxsmith::onnx::proto::NodeProto>,
    x_dims: &[i64],
    y_dims: &[i64],
    inits: Vec<onnxsmith::onnx::proto::TensorProto>,
    seed: u64,
) -> Model {
    let mut nodes = vec![
        conv1x1("conv1", "x", "W1", "c1"),
        node("Relu", "relu", &["c1"], &["r"]),
    ];
    nodes.extend(middle);
    nodes.push(conv1x1("conv2", "p", "W2", "y"));
    let mut all = vec![
        f32_tensor("W1", &[4, 3, 1, 1], &values(12, seed)),
        f32_tensor("W2", &[2, 4, 1, 1], &values(8, seed + 1)),
    ];
    all.extend(inits);
    lift(model_io(
        nodes,
        vec![f32_info("x", x_dims)],
        vec![f32_info("y", y_dims)],
        all,
    ))
}

/// x ─▶ Conv ─▶ Relu ─▶ r ─▶ Conv ─▶ c ─▶ Add(c, r) ─▶ Relu ─▶ Conv ─▶ y: a residual block.
fn residual_net() -> Model {
    lift(model_io(
        vec![
            conv1x1("conv1", "x", "W1", "c1"),
            node("Relu", "relu1", &["c1"], &["r"]),
            conv1x1("conv2", "r", "W2", "c"),
            node("Add", "add", &["c", "r"], &["s"]),
            node("Relu", "relu2", &["s"], &["a"]),
            conv1x1("conv3", "a", "W3", "y"),
        ],
        vec![f32_info("x", &[1, 3, 4, 4])],
        vec![f32_info("y", &[1, 2, 4, 4])],
        vec![
            f32_tensor("W1", &[4, 3, 1, 1], &values(12, 15)),
            f32_tensor("W2", &[4, 4, 1, 1], &values(16, 16)),
            f32_tensor("W3", &[2, 4, 1, 1], &values(8, 17)),
        ],
    ))
}

#[test]
fn a_residual_add_reads_both_branches_through_dq_except_for_tensorrt() {
    let m = residual_net();
    for (placement, both) in [
        (Placement::AroundOps, true),
        (Placement::Joins, true),
        (Placement::Inputs, false),
    ] {
        let done = quantize_for(&m, Activations::Int8, placement, &[]);
        let g = &done.model.graph;
        let add = ops(g, "Add")[0];
        let dq = [0, 1].map(|slot| dq_of(g, add, slot).is_some());
        assert_eq!(dq, [both; 2], "{placement:?}");
        assert_well_formed(g);
    }
}

#[test]
fn around_ops_a_maxpool_between_quantized_convs_moves_one_scale() {
    let mut pool = node("MaxPool", "pool", &["r"], &["p"]);
    pool.attribute = vec![attr_ints("kernel_shape", &[2, 2])];
    let m = between_two_convs(vec![pool], &[1, 3, 6, 6], &[1, 2, 5, 5], vec![], 31);
    for activations in [Activations::Int8, Activations::Uint8] {
        // At the 99th percentile the pooled maxima would clip higher than the values pooled.
        let opts = QuantOptions {
            activations,
            method: Method::Percentile(99.0),
            ..Default::default()
        };
        let done = quantize_unchecked(&m, opts);
        let g = &done.model.graph;
        let pool = ops(g, "MaxPool")[0];
        let conv2 = ops(g, "Conv")[1];
        // The parameters (scale, zero point) of the DQ before a reader's input `slot`.
        let params = |n, slot| {
            let dq = dq_of(g, n, slot).expect("read through a DQ");
            (constant_of(g, dq, 1).clone(), constant_of(g, dq, 2).clone())
        };
        match activations {
            // uint8 absorbs the Relu, so the MaxPool reads conv1's quantized output.
            Activations::Uint8 => assert_eq!(params(pool, 0), params(conv2, 0)),
            // int8 keeps the Relu in float between conv1's Q/DQ and the MaxPool.
            Activations::Int8 => assert!(dq_of(g, pool, 0).is_none()),
        }
        assert_well_formed(g);
    }
}

#[test]
fn around_ops_a_chain_of_moves_is_read_and_read_from_at_one_scale() {
    // x ─▶ Conv ─▶ Relu ─▶ Reshape ─▶ Slice ─▶ Reshape ─▶ Conv: the values between the moves
    // are calibrated by no one, and the Slice keeps only part of what the Relu wrote.
    let m = between_two_convs(
        vec![
            node("Reshape", "flat", &["r", "flat_to"], &["f"]),
            node("Slice", "half", &["f", "starts", "ends", "axes"], &["h"]),
            node("Reshape", "back", &["h", "back_to"], &["p"]),
        ],
        &[1, 3, 4, 4],
        &[1, 2, 2, 4],
        vec![
            i64_tensor("flat_to", &[3], &[1, 4, 16]),
            i64_tensor("starts", &[1], &[0]),
            i64_tensor("ends", &[1], &[8]),
            i64_tensor("axes", &[1], &[2]),
            i64_tensor("back_to", &[4], &[1, 4, 2, 4]),
        ],
        33,
    );
    let opts = QuantOptions {
        activations: Activations::Uint8,
        method: Method::Percentile(99.0),
        ..Default::default()
    };
    let done = quantize_unchecked(&m, opts);
    let g = &done.model.graph;
    let params = |n, slot| {
        let dq = dq_of(g, n, slot).expect("read through a DQ");
        (constant_of(g, dq, 1).clone(), constant_of(g, dq, 2).clone())
    };
    let flat = ops(g, "Reshape")[0];
    let conv2 = ops(g, "Conv")[1];
    assert_eq!(params(flat, 0), params(conv2, 0));
    assert_well_formed(g);
}

#[test]
fn ranges_are_shared_through_a_resize_only_where_it_cannot_overshoot() {
    // Relu ─▶ r ─▶ Resize ─▶ p: a cubic Resize overshoots below 0, and sharing its range would
    // lift the zero point of the Q standing in for the Relu, letting negatives through.
    for mode in ["cubic", "linear"] {
        let mut resize = node("Resize", "up", &["r", "", "scales"], &["p"]);
        resize.attribute = vec![attr_str("mode", mode)];
        let scales = f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        let m = between_two_convs(vec![resize], &[1, 3, 4, 4], &[1, 2, 8, 8], vec![scales], 35);
        let opts = QuantOptions {
            activations: Activations::Uint8,
            method: Method::MinMax,
            ..Default::default()
        };
        let samples = onnxsmith::lossy::samples::read(&m, &random(8)).unwrap();
        let quiet = onnxsmith::progress::Progress::new(true);
        let cal = onnxsmith::passes::quant::calibration(&m, &opts, &samples, &quiet).unwrap();
        let (r, u) = (cal.ranges["r"], cal.ranges["p"]);
        if mode == "cubic" {
            assert!(u.0 < 0.0, "the cubic Resize overshoots: {u:?}");
            assert_eq!(r.0, 0.0, "the Relu's range keeps its floor");
        } else {
            assert_eq!(r, u);
        }
    }
}

/// The search against a check that passes when the ops in `needed` are given back: the set
/// it settles on and the sets it tried, in order.
fn search(needed: &[&str]) -> (Option<Vec<String>>, Vec<Vec<String>>) {
    let ranked: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let mut tried = Vec::new();
    let found = onnxsmith::lossy::search::fewest(&ranked, &|_| 0.0, None, |back| {
        tried.push(back.to_vec());
        Ok(needed
            .iter()
            .all(|n| back.iter().any(|f| f == n))
            .then_some(()))
    })
    .unwrap();
    (found.map(|(set, ())| set), tried)
}

#[test]
fn the_search_bisects_the_ranking_then_puts_back_what_it_overshot() {
    // c is the op int8 ruins, ranked third: all five pass, the bisection settles on a..c,
    // then b and a go back (c cannot).
    let (found, tried) = search(&["c"]);
    assert_eq!(found, Some(vec!["c".to_string()]));
    let sizes: Vec<usize> = tried.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 2, 3, 2, 2, 1], "{tried:?}");
    // The most sensitive op alone suffices: found by halving, nothing to put back.
    let (found, tried) = search(&["a"]);
    assert_eq!(found, Some(vec!["a".to_string()]));
    assert_eq!(tried.iter().map(Vec::len).collect::<Vec<_>>(), [5, 2, 1]);
    // Two ops needed together stay together.
    let (found, _) = search(&["b", "d"]);
    assert_eq!(found, Some(vec!["b".to_string(), "d".to_string()]));
    // A check that fails with every op given back ends the search at once.
    let (found, tried) = search(&["z"]);
    assert_eq!((found, tried.len()), (None, 1));
}

#[test]
fn the_search_gives_back_wholly_only_what_the_mild_way_cannot_save() {
    // b's int8 weights ruin the result (only giving it back wholly helps); d needs its
    // activations float (mildly, or wholly).
    let ranked: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let mut tries = 0;
    let found =
        onnxsmith::lossy::search::restore(&ranked, &|_| 0.0, true, &mut tries, |mild, whole| {
            let has = |set: &[String], n: &str| set.iter().any(|x| x == n);
            let b_ok = has(whole, "b");
            let d_ok = has(mild, "d") || has(whole, "d");
            Ok((b_ok && d_ok).then_some(()))
        })
        .unwrap()
        .expect("found");
    assert_eq!(found.whole, ["b"]);
    assert_eq!(found.mild, ["d"]);
    assert_eq!(found.tries, tries);
    // Without a mild way, every op is given back wholly.
    let mut tries = 0;
    let found =
        onnxsmith::lossy::search::restore(&ranked, &|_| 0.0, false, &mut tries, |mild, whole| {
            assert!(mild.is_empty());
            Ok(whole.iter().any(|n| n == "c").then_some(()))
        })
        .unwrap()
        .expect("found");
    assert_eq!((found.mild.len(), found.whole), (0, vec!["c".to_string()]));
}

#[test]
fn the_search_costs_a_check_per_halving_of_a_long_ranking() {
    let ranked: Vec<String> = (0..1000).map(|i| format!("op{i:04}")).collect();
    let mut checks = 0;
    // Ops ranked 0..=370 must be given back (the ranking is right here).
    let found = onnxsmith::lossy::search::fewest(&ranked, &|_| 0.0, None, |back| {
        checks += 1;
        Ok((back.len() > 370).then_some(()))
    })
    .unwrap();
    assert_eq!(found.map(|(s, _)| s.len()), Some(371));
    // One for all of them, ten halvings, four tries to put an op back (each refused).
    assert_eq!(checks, 1 + 10 + 4);
}

#[test]
fn ranges_leave_out_nans_and_survive_subnormals() {
    let mut st = Stats::default();
    st.observe(&[f32::NAN, -2.0, 1.0], true);
    assert_eq!((st.seen, st.min, st.max), (2, -2.0, 1.0));
    assert!((st.threshold(Method::Percentile(50.0)) - 1.0).abs() < 2e-3);
    // Magnitudes too small for a histogram's bins are zeros to it, not a hang.
    let mut tiny = Stats::default();
    tiny.observe(&[1e-40, -1e-41, 0.0], true);
    assert_eq!(tiny.seen, 3);
    for method in [Method::MinMax, Method::Percentile(99.0), Method::Entropy] {
        assert!(tiny.threshold(method) <= 1e-40, "{method:?}");
    }
}

#[test]
fn around_ops_a_residual_add_is_quantized_with_its_relu_absorbed_where_it_can_be() {
    let m = residual_net();
    for activations in [Activations::Uint8, Activations::Int8] {
        let done = quantize_for(&m, activations, Placement::AroundOps, &[]);
        let g = &done.model.graph;
        let add = ops(g, "Add")[0];
        let s = g.node(add).output(0).unwrap();
        let readers: Vec<&str> = g
            .value(s)
            .uses()
            .iter()
            .map(|u| g.node(u.node).op())
            .collect();
        match activations {
            // The Add's Q clamps at its zero point: relu2 is gone, and the Add is int8.
            Activations::Uint8 => {
                assert_eq!(readers, ["QuantizeLinear"]);
                assert_eq!(ops(g, "Relu").len(), 0);
            }
            // Symmetric int8 keeps relu2, which reads the int8 Add through its DQ.
            Activations::Int8 => {
                assert_eq!(readers, ["QuantizeLinear"]);
                let relu = ops(g, "Relu")
                    .into_iter()
                    .find(|&r| g.node(r).name() == "relu2")
                    .expect("relu2 stays");
                assert!(dq_of(g, relu, 0).is_some());
            }
        }
        assert_well_formed(g);
    }
}

/// The activation DQs of `g` (those reading a Q) and their readers' op types.
fn activation_dq_readers(g: &Graph) -> Vec<(NodeId, Vec<String>)> {
    ops(g, "DequantizeLinear")
        .into_iter()
        .filter(|&dq| g.value(g.node(dq).input(0).unwrap()).constant().is_none())
        .map(|dq| {
            let out = g.node(dq).output(0).unwrap();
            let readers = g.value(out).uses().iter();
            (
                dq,
                readers.map(|u| g.node(u.node).op().to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn around_ops_int8_gives_each_reader_a_pair_with_a_zero_point_of_its_own() {
    // r is read by conv2 and the Add: ONNX Runtime runs an int8 pair on x86 only where its
    // Q has one DQ with one reader, and merges Qs whose inputs are the same.
    let m = residual_net();
    let done = quantize(&m, Activations::Int8, &[]);
    let g = &done.model.graph;
    let dqs = activation_dq_readers(g);
    assert!(dqs.iter().all(|(_, r)| r.len() == 1), "{dqs:?}");
    let r = g.find("r").unwrap();
    let qs: Vec<NodeId> = g.value(r).uses().iter().map(|u| u.node).collect();
    assert_eq!(qs.len(), 2, "one Q per reader of r");
    let [a, b] = [qs[0], qs[1]].map(|q| {
        assert!(g.node(q).is("QuantizeLinear"));
        g.node(q).input(2).unwrap()
    });
    assert_ne!(a, b, "their zero points are initializers of their own");
    assert_well_formed(g);
    // Under uint8 ONNX Runtime needs no such pairs: one Q, one DQ, read by both.
    let done = quantize(&m, Activations::Uint8, &[]);
    let dqs = activation_dq_readers(&done.model.graph);
    assert!(dqs.iter().any(|(_, r)| r.len() == 2), "{dqs:?}");
}

#[test]
fn for_openvino_only_op_inputs_and_residual_branches_are_quantized() {
    let m = residual_net();
    let done = quantize_for(&m, Activations::Int8, Placement::Joins, &[]);
    let g = &done.model.graph;
    // x, r (read by conv2 and the Add), a, and conv2's result c for the Add; conv1's result
    // c1 goes through its Relu in float.
    let mut quantized: Vec<&str> = ops(g, "QuantizeLinear")
        .into_iter()
        .map(|q| g.value(g.node(q).input(0).unwrap()).name())
        .collect();
    quantized.sort();
    assert_eq!(quantized, ["a", "c", "r", "x"]);
    assert_well_formed(g);
}

/// conv1 ─▶ Relu ─▶ r ─┬─▶ conv2 ─▶ c ─▶ Add(c, r) ─▶ Relu ─▶ GlobalAveragePool ─▶ Flatten ─▶ Gemm
///                     └──────────────────┘
/// Every placement rule has a place here: a residual Add, a value (r) read by two quantized
/// ops, an average pool, a move (Flatten), a Gemm head.
fn placement_net() -> Model {
    lift(model_io(
        vec![
            conv1x1("conv1", "x", "W1", "c1"),
            node("Relu", "relu1", &["c1"], &["r"]),
            conv1x1("conv2", "r", "W2", "c"),
            node("Add", "add", &["c", "r"], &["s"]),
            node("Relu", "relu2", &["s"], &["a"]),
            node("GlobalAveragePool", "gap", &["a"], &["p"]),
            node("Flatten", "flat", &["p"], &["f"]),
            node("Gemm", "fc", &["f", "Wf", "bf"], &["y"]),
        ],
        vec![f32_info("x", &[1, 3, 4, 4])],
        vec![f32_info("y", &[1, 2])],
        vec![
            f32_tensor("W1", &[4, 3, 1, 1], &values(12, 15)),
            f32_tensor("W2", &[4, 4, 1, 1], &values(16, 16)),
            f32_tensor("Wf", &[4, 2], &values(8, 17)),
            f32_tensor("bf", &[2], &values(2, 18)),
        ],
    ))
}

/// The Q/DQ placement of each target on [`placement_net`], as a golden printout.
fn placement_snapshot(placement: Placement) -> String {
    let m = placement_net();
    let opts = QuantOptions {
        placement,
        ..Default::default()
    };
    let done = quantize_with(&m, opts, &[]);
    assert_well_formed(&done.model.graph);
    before_after(&m, &done.model)
}

#[test]
fn golden_placement_for_ort() {
    insta::assert_snapshot!(placement_snapshot(Placement::AroundOps));
}

#[test]
fn golden_placement_for_openvino() {
    insta::assert_snapshot!(placement_snapshot(Placement::Joins));
}

#[test]
fn golden_placement_for_tensorrt() {
    insta::assert_snapshot!(placement_snapshot(Placement::Inputs));
}

/// Quantizes `m` on 16 random samples with the passes `pipeline` selects; the check is left
/// to the caller.
fn quantize_selected(
    m: &Model,
    pipeline: PipelineOptions,
    exclude: &[&str],
) -> onnxsmith::Optimized {
    optimize_model(
        m,
        &Options {
            quiet: true,
            samples: random(16),
            quantize: Some(QuantOptions::default()),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            pipeline,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The DequantizeLinear outputs of activations that more than one node reads.
fn shared_pairs(g: &Graph) -> usize {
    ops(g, "DequantizeLinear")
        .into_iter()
        .filter_map(|dq| g.node(dq).output(0))
        .filter(|&v| g.value(v).uses().len() > 1)
        .count()
}

#[test]
fn disable_reaches_a_placement_rule() {
    let m = placement_net();
    let all = quantize_selected(&m, PipelineOptions::default(), &[]);
    assert_eq!(shared_pairs(&all.model.graph), 0, "a pair per reader");
    let without = quantize_selected(
        &m,
        PipelineOptions {
            disable: vec!["quantize-pair-per-reader".into()],
            ..Default::default()
        },
        &[],
    );
    assert!(
        shared_pairs(&without.model.graph) > 0,
        "r's pair is shared by conv2 and the Add"
    );
    assert!(!without
        .report
        .pipeline
        .steps
        .contains(&"quantize-pair-per-reader"));
}

#[test]
fn passes_selects_lossy_passes_alone() {
    let m = lift(model_io(
        vec![
            node("Identity", "id", &["x"], &["i"]),
            conv1x1("conv", "i", "W", "y"),
        ],
        vec![f32_info("x", &[1, 3, 4, 4])],
        vec![f32_info("y", &[1, 2, 4, 4])],
        vec![f32_tensor("W", &[2, 3, 1, 1], &values(6, 3))],
    ));
    let done = quantize_selected(
        &m,
        PipelineOptions {
            only: Some(vec!["quantize-qdq".into()]),
            ..Default::default()
        },
        &[],
    );
    let g = &done.model.graph;
    assert_eq!(ops(g, "Identity").len(), 1, "simplify's passes did not run");
    assert!(dq_of(g, ops(g, "Conv")[0], 0).is_some(), "quantize-qdq ran");
    assert_eq!(done.report.pipeline.steps, ["quantize-qdq"]);
}

#[test]
fn stop_after_stops_inside_the_quantize_stage() {
    let m = placement_net();
    let all = quantize_selected(&m, PipelineOptions::default(), &[]);
    let steps = &all.report.pipeline.steps;
    let at = steps.iter().position(|&s| s == "quantize-qdq").unwrap() + 1;
    let stopped = quantize_selected(
        &m,
        PipelineOptions {
            stop_after: Some(at),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(stopped.report.pipeline.steps, steps[..at]);
    let g = &stopped.model.graph;
    assert!(dq_of(g, ops(g, "Conv")[0], 0).is_some(), "quantize-qdq ran");
    // conv2's output reaches the Add through its pair; r, quantized as conv2's input, not yet.
    let add = ops(g, "Add")[0];
    assert!(dq_of(g, add, 0).is_some());
    assert!(dq_of(g, add, 1).is_none(), "the residual rule did not run");
}

#[test]
fn explain_says_why_a_lossy_pass_kept_an_op() {
    let m = placement_net();
    let done = quantize_selected(
        &m,
        PipelineOptions {
            explain: true,
            ..Default::default()
        },
        &["conv1", "add"],
    );
    let explain = &done.report.pipeline.explain;
    for line in [
        "quantize-qdq: kept Conv 'conv1': excluded by the user",
        "quantize-residual-adds: kept Add 'add': excluded by the user",
    ] {
        assert!(
            explain.iter().any(|e| e == line),
            "{line} not in {explain:?}"
        );
    }
}

#[test]
fn bisect_names_the_quantization_step_that_ruins_the_result() {
    let m = ruined_by_one_scale();
    let done = optimize_model(
        &m,
        &Options {
            quiet: true,
            bisect: true,
            samples: random(16),
            quantize: Some(QuantOptions {
                fallback: false,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!done.report.passed());
    assert_eq!(
        done.report.bisect,
        Some(onnxsmith::report::Bisect::FirstBadStep {
            step: done
                .report
                .pipeline
                .steps
                .iter()
                .position(|&s| s == "quantize-qdq")
                .unwrap()
                + 1,
            pass: "quantize-qdq"
        }),
        "{}",
        done.report.to_text()
    );
}

#[test]
fn list_passes_shows_every_stage_with_its_reason_and_passes() {
    let out = bin().args(["optimize", "--list-passes"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "simplify: first:",
        "prune: after simplify",
        "compensate: right after pruning",
        "equalize: before quantization",
        "smooth: before quantization",
        "quantize: last:",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    for id in [
        "plan-pruning",
        "prune-channels",
        "compensate-pruning",
        "equalize-conv-pairs",
        "measure-channels",
        "smooth-activations",
        "calibrate",
        "quantize-opset-13",
        "quantize-qdq",
        "quantize-residual-adds",
        "quantize-average-pools",
        "quantize-pair-per-reader",
    ] {
        assert!(text.contains(id), "{id} not in\n{text}");
    }
}

/// Attention in small: q = x·Wq, k = x·Wk, p = Softmax(q·kᵀ), y = p·x (the last two are
/// products of two activations).
fn attention_net() -> Model {
    let mut t = node("Transpose", "kt", &["k"], &["kT"]);
    t.attribute = vec![attr_ints("perm", &[0, 2, 1])];
    let mut sm = node("Softmax", "softmax", &["s"], &["p"]);
    sm.attribute = vec![attr_int("axis", -1)];
    lift(model_io(
        vec![
            node("MatMul", "q_proj", &["x", "Wq"], &["q"]),
            node("MatMul", "k_proj", &["x", "Wk"], &["k"]),
            t,
            node("MatMul", "scores", &["q", "kT"], &["s"]),
            sm,
            node("MatMul", "mix", &["p", "x"], &["y"]),
        ],
        vec![f32_info("x", &[1, 6, 8])],
        vec![f32_info("y", &[1, 6, 8])],
        vec![
            f32_tensor("Wq", &[8, 8], &values(64, 41)),
            f32_tensor("Wk", &[8, 8], &values(64, 42)),
        ],
    ))
}

#[test]
fn a_product_of_two_activations_reads_both_through_pairs() {
    let m = attention_net();
    let done = quantize_unchecked(&m, QuantOptions::default());
    let g = &done.model.graph;
    let product = |name: &str| {
        g.node_ids()
            .find(|&n| g.node(n).name() == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    for name in ["scores", "mix"] {
        let n = product(name);
        assert!(
            dq_of(g, n, 0).is_some() && dq_of(g, n, 1).is_some(),
            "{name}"
        );
    }
    // The Softmax between them stays float, reading the scores' pair.
    assert!(ops(g, "Softmax").iter().all(|&s| dq_of(g, s, 0).is_some()));
    assert_well_formed(g);
    // Excluded, a product reads float inputs.
    let done = optimize_model(
        &m,
        &Options {
            quiet: true,
            check: None,
            samples: random(16),
            quantize: Some(QuantOptions::default()),
            exclude: vec!["scores".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let g = &done.model.graph;
    let n = g
        .node_ids()
        .find(|&n| g.node(n).name() == "scores")
        .unwrap();
    assert!(dq_of(g, n, 0).is_none() && dq_of(g, n, 1).is_none());
    let q = done.report.quantization.unwrap();
    assert!(q
        .left_float
        .iter()
        .any(|(n, why)| n == "scores" && why.contains("excluded")));
}

/// x ─▶ LayerNormalization(γ, β) ─▶ h ─▶ MatMul(W) ─▶ y, x of shape `dims`, channel 3 of h made
/// `outlier` times larger than the others by γ; with `residual`, h is also added to y.
fn smoothable(dims: &[i64], outlier: f32, residual: bool) -> Model {
    let k = *dims.last().unwrap() as usize;
    let gamma: Vec<f32> = (0..k).map(|j| if j == 3 { outlier } else { 1.0 }).collect();
    let mut ln = node("LayerNormalization", "ln", &["x", "gamma", "beta"], &["h"]);
    ln.attribute = vec![attr_int("axis", -1)];
    let mut nodes = vec![ln, node("MatMul", "proj", &["h", "W"], &["p"])];
    nodes.push(if residual {
        node("Add", "residual", &["p", "h"], &["y"])
    } else {
        node("Identity", "out", &["p"], &["y"])
    });
    lift(model_io(
        nodes,
        vec![f32_info("x", dims)],
        vec![f32_info("y", dims)],
        vec![
            f32_tensor("gamma", &[k as i64], &gamma),
            f32_tensor("beta", &[k as i64], &values(k, 51)),
            f32_tensor("W", &[k as i64, k as i64], &values(k * k, 52)),
        ],
    ))
}

/// The smooth stage alone on `m`, calibrated on 16 random samples.
fn smoothed(m: &Model) -> (Model, onnxsmith::passes::PipelineReport) {
    use onnxsmith::passes::{run_stages, selected, PassContext};
    let opts = PipelineOptions {
        explain: true,
        ..Default::default()
    };
    let mut cx = PassContext::new(true);
    cx.provide(onnxsmith::lossy::samples::read(m, &random(16)).unwrap());
    let stages = selected(&opts, vec![onnxsmith::passes::quant::smooth_stage()]).unwrap();
    let mut out = m.clone();
    let report = run_stages(&mut out, &stages, &opts, &mut cx).unwrap();
    (out, report)
}

#[test]
fn smoothing_folds_an_outlier_channel_into_the_layer_norm_and_the_weights() {
    let m = smoothable(&[1, 6, 8], 40.0, false);
    let (out, report) = smoothed(&m);
    assert_eq!(
        report.steps,
        ["smooth-activations", "dead-code"],
        "{:?}",
        report.explain
    );
    let g = &out.graph;
    let ln = ops(g, "LayerNormalization")[0];
    let gamma = constant_of(g, ln, 1).to_f32_vec().unwrap();
    assert!(
        gamma[3] < 40.0 / 2.0,
        "the outlier's scale moved out of the norm: {gamma:?}"
    );
    assert_eq!(ops(g, "Mul").len(), 0, "folded, no Mul added");
    common::assert_same_outputs(&m, &out);
    insta::assert_snapshot!(before_after(&m, &out));
}

#[test]
fn smoothing_divides_by_a_mul_where_a_residual_also_reads_the_activation() {
    let m = smoothable(&[1, 6, 8], 40.0, true);
    let (out, _) = smoothed(&m);
    let g = &out.graph;
    assert_eq!(
        ops(g, "Mul").len(),
        1,
        "the residual keeps the norm's own output"
    );
    let ln = ops(g, "LayerNormalization")[0];
    assert_eq!(constant_of(g, ln, 1).to_f32_vec().unwrap()[3], 40.0);
    common::assert_same_outputs(&m, &out);
}

#[test]
fn smoothing_leaves_even_channels_and_flat_inputs() {
    // Channels within 4x of their median: nothing to even out.
    let (out, report) = smoothed(&smoothable(&[1, 6, 8], 2.0, false));
    assert!(report.steps.is_empty(), "{:?}", report.steps);
    assert!(
        report.explain.iter().any(|e| e.contains("within 4x")),
        "{:?}",
        report.explain
    );
    assert_eq!(ops(&out.graph, "Mul").len(), 0);
    // A [batch, channels] input is a CNN's head, not a sequence.
    let (_, report) = smoothed(&smoothable(&[6, 8], 40.0, false));
    assert!(report.steps.is_empty());
    assert!(
        report.explain.iter().any(|e| e.contains("rank below 3")),
        "{:?}",
        report.explain
    );
}

/// `small_net` with conv1 and the Relu unnamed and the Gemm named as conv2 is.
fn ill_named_net() -> Model {
    let mut p = conv_net(13);
    for n in &mut p.graph.as_mut().unwrap().node {
        match n.name.as_str() {
            "conv1" | "relu1" => n.name.clear(),
            "fc" => n.name = "conv2".into(),
            _ => {}
        }
    }
    lift(p)
}

fn names(g: &Graph, op: &str) -> Vec<String> {
    ops(g, op)
        .into_iter()
        .map(|n| g.node(n).name().to_string())
        .collect()
}

#[test]
fn name_ops_names_unnamed_ops_and_second_ops_of_a_name() {
    let m = ill_named_net();
    let all = quantize_selected(&m, PipelineOptions::default(), &[]);
    let at = all
        .report
        .pipeline
        .steps
        .iter()
        .position(|&s| s == "name-ops")
        .expect("name-ops ran")
        + 1;
    let named = quantize_selected(
        &m,
        PipelineOptions {
            stop_after: Some(at),
            ..Default::default()
        },
        &[],
    );
    let g = &named.model.graph;
    assert_eq!(names(g, "Conv"), ["Conv_0", "conv2"]);
    assert_eq!(names(g, "Relu"), ["Relu_1"]);
    assert_eq!(
        names(g, "Gemm"),
        ["conv2_1"],
        "the second 'conv2' is renamed"
    );
    common::assert_same_outputs(&m, &named.model);
    // The printout leaves names out: the snapshot lists them beside it.
    let listed = |g: &Graph| {
        g.node_ids()
            .map(|n| format!("{} {:?}\n", g.node(n).op(), g.node(n).name()))
            .collect::<String>()
    };
    insta::assert_snapshot!(format!(
        "{}--- names before\n{}--- names after\n{}",
        before_after(&m, &named.model),
        listed(&m.graph),
        listed(g)
    ));
}

#[test]
fn a_name_from_name_ops_is_one_exclude_takes() {
    let m = ill_named_net();
    let done = quantize_selected(&m, PipelineOptions::default(), &["Conv_0"]);
    let g = &done.model.graph;
    let convs = ops(g, "Conv");
    assert!(dq_of(g, convs[0], 0).is_none(), "Conv_0 was excluded");
    assert!(dq_of(g, convs[1], 0).is_some(), "conv2 was quantized");
}

#[test]
fn name_ops_leaves_a_model_whose_names_are_its_own() {
    let m = lift(conv_net(13));
    let all = quantize_selected(&m, PipelineOptions::default(), &[]);
    assert_eq!(names(&all.model.graph, "Conv"), ["conv1", "conv2"]);
    assert_eq!(names(&all.model.graph, "Gemm"), ["fc"]);
}
