//! Fusion passes.

mod common;

use common::{
    assert_explained, assert_refused, assert_same_outputs, attr_int, attr_ints, before_after,
    count_op, f32_info, f32_tensor, i64_tensor, lift, model_io, node, run_passes, values,
};
use onnxsmith::onnx::proto::{ModelProto, NodeProto};

fn conv(inputs: &[&str], out: &str) -> NodeProto {
    let mut n = node("Conv", "conv", inputs, &[out]);
    n.attribute = vec![
        attr_ints("kernel_shape", &[3, 3]),
        attr_ints("pads", &[1, 1, 1, 1]),
    ];
    n
}

fn bn_params(c: usize) -> Vec<onnxsmith::onnx::proto::TensorProto> {
    let pos = |seed| {
        values(c, seed)
            .iter()
            .map(|v| 1.0 + 0.4 * v)
            .collect::<Vec<_>>()
    };
    vec![
        f32_tensor("gamma", &[c as i64], &pos(1)),
        f32_tensor("beta", &[c as i64], &values(c, 2)),
        f32_tensor("mean", &[c as i64], &values(c, 3)),
        f32_tensor("var", &[c as i64], &pos(4)),
    ]
}

/// x[1,2,5,5] ─▶ Conv(W[3,2,3,3], b?) ─▶ c ─▶ BatchNormalization ─▶ y, plus `extra` nodes.
fn conv_bn(with_bias: bool, extra: Vec<NodeProto>, extra_outputs: Vec<&str>) -> ModelProto {
    let mut inits = vec![f32_tensor("W", &[3, 2, 3, 3], &values(54, 9))];
    let mut conv_inputs = vec!["x", "W"];
    if with_bias {
        inits.push(f32_tensor("B", &[3], &values(3, 10)));
        conv_inputs.push("B");
    }
    inits.extend(bn_params(3));
    let mut nodes = vec![
        conv(&conv_inputs, "c"),
        node(
            "BatchNormalization",
            "bn",
            &["c", "gamma", "beta", "mean", "var"],
            &["y"],
        ),
    ];
    nodes.extend(extra);
    let mut outputs = vec![f32_info("y", &[1, 3, 5, 5])];
    outputs.extend(extra_outputs.iter().map(|o| f32_info(o, &[1, 3, 5, 5])));
    model_io(nodes, vec![f32_info("x", &[1, 2, 5, 5])], outputs, inits)
}

#[test]
fn fuses_conv_bn() {
    let m = lift(conv_bn(false, vec![], vec![]));
    let (out, _) = run_passes(&m, &["fuse-conv-bn", "dead-code"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 0);
    assert_eq!(
        out.graph.initializers().len(),
        2,
        "only the fused weight and bias remain"
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_conv_bn_with_conv_bias() {
    let m = lift(conv_bn(true, vec![], vec![]));
    let (out, _) = run_passes(&m, &["fuse-conv-bn", "dead-code"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 0);
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_grouped_conv_transpose_bn() {
    // W[4, 3, 3, 3] with 2 groups: 6 output channels, each group's 3 along W's second axis.
    let mut ct = node("ConvTranspose", "ct", &["x", "W", "B"], &["c"]);
    ct.attribute = vec![
        attr_ints("kernel_shape", &[3, 3]),
        attr_ints("pads", &[1, 1, 1, 1]),
        attr_int("group", 2),
    ];
    let bn = node(
        "BatchNormalization",
        "bn",
        &["c", "gamma", "beta", "mean", "var"],
        &["y"],
    );
    let mut inits = vec![
        f32_tensor("W", &[4, 3, 3, 3], &values(108, 9)),
        f32_tensor("B", &[6], &values(6, 10)),
    ];
    inits.extend(bn_params(6));
    let m = lift(model_io(
        vec![ct, bn],
        vec![f32_info("x", &[1, 4, 5, 5])],
        vec![f32_info("y", &[1, 6, 5, 5])],
        inits,
    ));
    let (out, _) = run_passes(&m, &["fuse-conv-bn", "dead-code"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 0);
    assert_eq!(count_op(&out, "ConvTranspose"), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_conv_bn_when_conv_output_has_two_users() {
    let m = lift(conv_bn(
        false,
        vec![node("Relu", "relu", &["c"], &["z"])],
        vec!["z"],
    ));
    let (out, report) = run_passes(&m, &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(
        &report,
        "the Conv's output has other readers (2 reads: BatchNormalization 'bn', Relu 'relu')",
    );
}

#[test]
fn keeps_conv_bn_when_conv_output_is_a_graph_output() {
    let p = conv_bn(false, vec![], vec!["c"]);
    assert_refused(
        &lift(p),
        "fuse-conv-bn",
        "BatchNormalization",
        "the Conv's output is also a graph output",
    );
}

#[test]
fn keeps_conv_bn_in_training_mode() {
    let mut p = conv_bn(false, vec![], vec![]);
    p.graph.as_mut().unwrap().node[1]
        .attribute
        .push(attr_int("training_mode", 1));
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "training mode");
}

#[test]
fn keeps_conv_bn_when_weight_is_a_graph_input() {
    let mut p = conv_bn(false, vec![], vec![]);
    common::initializer_to_input(&mut p, "W", &[3, 2, 3, 3]);
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "weight is not an f32 initializer");
}

#[test]
fn keeps_conv_bn_when_statistics_are_inputs() {
    let mut p = conv_bn(false, vec![], vec![]);
    common::initializer_to_input(&mut p, "mean", &[3]);
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "parameters are not f32 initializers");
}

#[test]
fn keeps_conv_bn_whose_weight_payload_is_longer_than_its_dims() {
    // A damaged file: W claims [3, 2, 3, 3] but holds 58 values. Scaling used to index a
    // fourth channel's factor and panic.
    let mut p = conv_bn(false, vec![], vec![]);
    let w = &mut p.graph.as_mut().unwrap().initializer[0];
    w.raw_data = [&w.raw_data[..], &[0u8; 16]].concat().into();
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn", "fuse-conv-mul"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "weight is not an f32 initializer");
}

#[test]
fn keeps_conv_transpose_bn_whose_channels_do_not_split_into_groups() {
    // W[3, 2, 3, 3] with group 2: 3 input channels cannot be split in two.
    let mut ct = node("ConvTranspose", "ct", &["x", "W"], &["c"]);
    ct.attribute = vec![attr_ints("kernel_shape", &[3, 3]), attr_int("group", 2)];
    let mut p = conv_bn(false, vec![], vec![]);
    p.graph.as_mut().unwrap().node[0] = ct;
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "does not split into its groups");
}

#[test]
fn keeps_bn_not_after_a_conv() {
    let mut p = conv_bn(false, vec![], vec![]);
    let g = p.graph.as_mut().unwrap();
    g.node[0] = node("Relu", "relu", &["x"], &["c"]);
    g.input[0] = f32_info("x", &[1, 3, 5, 5]);
    let (out, report) = run_passes(&lift(p), &["fuse-conv-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "not produced by a Conv");
}

#[test]
fn keeps_conv_bn_whose_statistics_do_not_match_the_channels() {
    let mut p = conv_bn(false, vec![], vec![]);
    let g = p.graph.as_mut().unwrap();
    for t in g
        .initializer
        .iter_mut()
        .filter(|t| ["gamma", "beta", "mean", "var"].contains(&t.name.as_str()))
    {
        *t = f32_tensor(&t.name.clone(), &[1], &[1.0]);
    }
    assert_refused(
        &lift(p),
        "fuse-conv-bn",
        "BatchNormalization",
        "one value per output channel",
    );
}

// ---- fuse-gemm-bn ----

/// x[2, 4] ─▶ `product`(x, B, C?) ─▶ m ─▶ BatchNormalization ─▶ y[2, 3]; B is [4, 3], or [3, 4]
/// under transB; C, when given, has dims `c_dims`.
fn gemm_bn(product: NodeProto, trans_b: bool, c_dims: Option<&[i64]>) -> ModelProto {
    let b_dims: &[i64] = if trans_b { &[3, 4] } else { &[4, 3] };
    let mut inits = vec![f32_tensor("B", b_dims, &values(12, 5))];
    if let Some(dims) = c_dims {
        let n = dims.iter().product::<i64>() as usize;
        inits.push(f32_tensor("C", dims, &values(n, 6)));
    }
    inits.extend(bn_params(3));
    model_io(
        vec![
            product,
            node(
                "BatchNormalization",
                "bn",
                &["m", "gamma", "beta", "mean", "var"],
                &["y"],
            ),
        ],
        vec![f32_info("x", &[2, 4])],
        vec![f32_info("y", &[2, 3])],
        inits,
    )
}

fn gemm(trans_b: bool, with_c: bool) -> NodeProto {
    let inputs: &[&str] = if with_c {
        &["x", "B", "C"]
    } else {
        &["x", "B"]
    };
    let mut n = node("Gemm", "gemm", inputs, &["m"]);
    n.attribute = vec![
        attr_int("transB", trans_b as i64),
        common::attr_float("alpha", 0.5),
        common::attr_float("beta", 2.0),
    ];
    n
}

#[test]
fn fuses_gemm_bn() {
    let cases: [(bool, Option<&[i64]>); 4] = [
        (false, Some(&[3])),
        (true, Some(&[1, 3])),
        (true, None),
        (false, Some(&[])),
    ];
    for (trans_b, c) in cases {
        let m = lift(gemm_bn(gemm(trans_b, c.is_some()), trans_b, c));
        let (out, report) = run_passes(&m, &["fuse-gemm-bn", "dead-code"]);
        assert_eq!(
            out.graph.node_count(),
            1,
            "transB {trans_b}, C {c:?}: {:?}",
            report.explain
        );
        if !trans_b && c == Some(&[3]) {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn fuses_a_2d_matmul_and_bn_into_gemm() {
    let m = lift(gemm_bn(
        node("MatMul", "mm", &["x", "B"], &["m"]),
        false,
        None,
    ));
    let (out, _) = run_passes(&m, &["fuse-gemm-bn", "dead-code"]);
    assert_eq!(count_op(&out, "Gemm"), 1);
    assert_eq!(out.graph.node_count(), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_matmul_bn_that_is_not_2d() {
    // x[2, 3, 4] · B[4, 3]: the BatchNormalization's channels are the 3 rows, not the columns.
    let mut p = gemm_bn(node("MatMul", "mm", &["x", "B"], &["m"]), false, None);
    let g = p.graph.as_mut().unwrap();
    g.input[0] = f32_info("x", &[2, 3, 4]);
    g.output[0] = f32_info("y", &[2, 3, 3]);
    let m = lift(p);
    let (out, report) = run_passes(&m, &["fuse-gemm-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "not known to be 2-D");
}

#[test]
fn keeps_gemm_bn_whose_bias_is_per_row() {
    let m = lift(gemm_bn(gemm(false, true), false, Some(&[2, 1])));
    let (out, report) = run_passes(&m, &["fuse-gemm-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "not an f32 initializer of one value per column");
}

#[test]
fn keeps_gemm_bn_whose_weight_is_an_input() {
    let mut p = gemm_bn(gemm(false, false), false, None);
    common::initializer_to_input(&mut p, "B", &[4, 3]);
    let (out, report) = run_passes(&lift(p), &["fuse-gemm-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "weight is not a 2-D f32 initializer");
}

#[test]
fn keeps_gemm_bn_when_the_product_has_other_readers_or_bn_trains() {
    let mut p = gemm_bn(gemm(false, false), false, None);
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Relu", "relu", &["m"], &["z"]));
    g.output.push(f32_info("z", &[2, 3]));
    let (out, report) = run_passes(&lift(p), &["fuse-gemm-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "the product has other readers (2 reads: ");

    let mut p = gemm_bn(gemm(false, false), false, None);
    p.graph.as_mut().unwrap().node[1]
        .attribute
        .push(attr_int("training_mode", 1));
    let (out, report) = run_passes(&lift(p), &["fuse-gemm-bn"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 1);
    assert_explained(&report, "training mode");
}

#[test]
fn fuses_the_built_in_resnet50() {
    let m = onnxsmith::zoo::resnet50().unwrap();
    let (out, _) = run_passes(&m, &["fuse-conv-bn", "dead-code"]);
    assert_eq!(count_op(&out, "BatchNormalization"), 0);
    assert_eq!(out.graph.node_count(), 175 - 53);
    assert_same_outputs(&m, &out);
}

// ---- fuse-layer-norm ----

/// x[2,4,8] ─▶ the decomposed layer norm exporters write ─▶ y.
fn layer_norm_model(opset: i64, with_bias: bool, eps_as_input: bool) -> ModelProto {
    let mut nodes = vec![
        {
            let mut n = node("ReduceMean", "mean", &["x"], &["m"]);
            n.attribute.push(attr_ints("axes", &[-1]));
            n
        },
        node("Sub", "sub", &["x", "m"], &["d"]),
        node("Pow", "pow", &["d", "two"], &["p"]),
        {
            let mut n = node("ReduceMean", "var", &["p"], &["v"]);
            n.attribute.push(attr_ints("axes", &[-1]));
            n
        },
        node("Add", "add_eps", &["v", "eps"], &["ve"]),
        node("Sqrt", "sqrt", &["ve"], &["s"]),
        node("Div", "div", &["d", "s"], &["n"]),
        node(
            "Mul",
            "mul",
            &["gamma", "n"],
            &[if with_bias { "g" } else { "y" }],
        ),
    ];
    if with_bias {
        nodes.push(node("Add", "add_bias", &["g", "beta"], &["y"]));
    }
    let mut inits = vec![
        f32_tensor("two", &[], &[2.0]),
        f32_tensor(
            "gamma",
            &[8],
            &values(8, 5)
                .iter()
                .map(|v| 1.0 + 0.3 * v)
                .collect::<Vec<_>>(),
        ),
        f32_tensor("beta", &[8], &values(8, 6)),
    ];
    let mut inputs = vec![f32_info("x", &[2, 4, 8])];
    if eps_as_input {
        inputs.push(f32_info("eps", &[]));
    } else {
        inits.push(f32_tensor("eps", &[], &[1e-5]));
    }
    let mut m = model_io(nodes, inputs, vec![f32_info("y", &[2, 4, 8])], inits);
    m.opset_import[0].version = opset;
    m
}

#[test]
fn fuses_layer_norm() {
    let m = lift(layer_norm_model(17, true, false));
    let (out, _) = run_passes(&m, &["fuse-layer-norm", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert_eq!(count_op(&out, "LayerNormalization"), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_layer_norm_without_bias() {
    let m = lift(layer_norm_model(17, false, false));
    let (out, _) = run_passes(&m, &["fuse-layer-norm", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert_same_outputs(&m, &out);
}

/// The decomposed layer norm with its Mul by γ removed, and its Add of β too unless
/// `with_bias`: the `elementwise_affine=False` export, or what no-op elimination leaves of
/// an untrained one.
fn layer_norm_without_scale(with_bias: bool) -> ModelProto {
    let mut p = layer_norm_model(17, with_bias, false);
    let g = p.graph.as_mut().unwrap();
    g.node.retain(|n| n.name != "mul");
    g.initializer.retain(|t| t.name != "gamma");
    match g.node.iter_mut().find(|n| n.name == "add_bias") {
        Some(add) => add.input[0] = "n".into(),
        None => g.node.iter_mut().find(|n| n.name == "div").unwrap().output[0] = "y".into(),
    }
    p
}

#[test]
fn fuses_layer_norm_without_scale_or_bias() {
    for with_bias in [false, true] {
        let m = lift(layer_norm_without_scale(with_bias));
        let (out, _) = run_passes(&m, &["fuse-layer-norm", "dead-code"]);
        assert_eq!(out.graph.node_count(), 1, "bias {with_bias}");
        assert_eq!(count_op(&out, "LayerNormalization"), 1);
        if !with_bias {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn fuses_an_untrained_layer_norm_after_noop_elimination() {
    let mut p = layer_norm_model(17, true, false);
    let g = p.graph.as_mut().unwrap();
    for t in g.initializer.iter_mut() {
        match t.name.as_str() {
            "gamma" => *t = f32_tensor("gamma", &[8], &[1.0; 8]),
            "beta" => *t = f32_tensor("beta", &[8], &[0.0; 8]),
            _ => {}
        }
    }
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-noop", "fuse-layer-norm", "dead-code"]);
    assert_eq!(
        report.steps[0], "eliminate-noop",
        "the ones and zeros go first"
    );
    assert_eq!(out.graph.node_count(), 1);
    assert_eq!(count_op(&out, "LayerNormalization"), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_layer_norm_without_scale_whose_axis_length_is_unknown() {
    let mut p = layer_norm_without_scale(false);
    let g = p.graph.as_mut().unwrap();
    g.input[0] = f32_info("x", &[2, 4, -1]);
    g.output[0] = f32_info("y", &[2, 4, -1]);
    assert_refused(
        &lift(p),
        "fuse-layer-norm",
        "Div",
        "normalized axis's length is not known",
    );
}

#[test]
fn keeps_layer_norm_before_opset_17() {
    let m = lift(layer_norm_model(14, true, false));
    let (out, report) = run_passes(&m, &["fuse-layer-norm"]);
    assert_eq!(count_op(&out, "LayerNormalization"), 0);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_layer_norm_whose_epsilon_is_not_constant() {
    let m = lift(layer_norm_model(17, true, true));
    let (out, report) = run_passes(&m, &["fuse-layer-norm"]);
    assert_eq!(count_op(&out, "LayerNormalization"), 0);
    assert_explained(&report, "epsilon is not a constant");
}

/// `p` with value `v` (of dims `dims`) read also by Relu 'spy', whose output is a graph output.
fn read_also_by_a_spy(p: &mut ModelProto, v: &str, dims: &[i64]) {
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Relu", "spy", &[v], &["z"]));
    g.output.push(f32_info("z", dims));
}

#[test]
fn keeps_layer_norm_whose_intermediate_is_read_elsewhere() {
    let mut p = layer_norm_model(17, true, false);
    read_also_by_a_spy(&mut p, "v", &[2, 4, 1]);
    let (out, report) = run_passes(&lift(p), &["fuse-layer-norm"]);
    assert_eq!(count_op(&out, "LayerNormalization"), 0);
    assert_explained(
        &report,
        "its intermediate 'v' has other readers (2 reads: Add 'add_eps', Relu 'spy')",
    );
}

#[test]
fn keeps_layer_norm_over_another_axis() {
    let mut p = layer_norm_model(17, true, false);
    let g = p.graph.as_mut().unwrap();
    g.node[0].attribute[0] = attr_ints("axes", &[1]);
    let (out, report) = run_passes(&lift(p), &["fuse-layer-norm"]);
    assert_eq!(count_op(&out, "LayerNormalization"), 0);
    assert_explained(&report, "last axis");
}

#[test]
fn fuses_layer_norm_whose_scale_is_an_input_keeping_the_mul() {
    // A scale the caller may override is not folded: the normalization fuses with a unit
    // scale, and the Mul by the input (then the Add) stay after it.
    let mut p = layer_norm_model(17, true, false);
    common::initializer_to_input(&mut p, "gamma", &[8]);
    let m = lift(p);
    let (out, _) = run_passes(&m, &["fuse-layer-norm", "dead-code"]);
    assert_eq!(count_op(&out, "LayerNormalization"), 1);
    assert_eq!(count_op(&out, "Mul"), 1);
    assert_eq!(count_op(&out, "Add"), 1);
    assert_same_outputs(&m, &out);
}

// ---- fuse-conv-add and fuse-conv-mul ----

/// x[1,2,5,5] ─▶ Conv(W) ─▶ c ─▶ op(c, k) ─▶ y, with k of the given shape.
fn conv_then(op: &str, k_dims: &[i64], k: &[f32], constant_first: bool) -> ModelProto {
    let inputs = if constant_first {
        ["k", "c"]
    } else {
        ["c", "k"]
    };
    model_io(
        vec![conv(&["x", "W"], "c"), node(op, "op", &inputs, &["y"])],
        vec![f32_info("x", &[1, 2, 5, 5])],
        vec![f32_info("y", &[1, 3, 5, 5])],
        vec![
            f32_tensor("W", &[3, 2, 3, 3], &values(54, 9)),
            f32_tensor("k", k_dims, k),
        ],
    )
}

#[test]
fn fuses_conv_add_into_the_bias() {
    let m = lift(conv_then("Add", &[1, 3, 1, 1], &[0.5, -1.0, 2.0], false));
    let (out, _) = run_passes(&m, &["fuse-conv-add", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_conv_add_with_the_constant_first_and_a_scalar() {
    let m = lift(conv_then("Add", &[], &[0.25], true));
    let (out, _) = run_passes(&m, &["fuse-conv-add", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_conv_add_that_is_not_per_channel() {
    let m = lift(conv_then(
        "Add",
        &[1, 1, 1, 5],
        &[1.0, 2.0, 3.0, 4.0, 5.0],
        false,
    ));
    let (out, report) = run_passes(&m, &["fuse-conv-add"]);
    assert_eq!(count_op(&out, "Add"), 1);
    assert_explained(&report, "not one value per output channel");
}

#[test]
fn keeps_conv_add_whose_operand_is_an_input() {
    let mut p = conv_then("Add", &[1, 3, 1, 1], &[0.5, -1.0, 2.0], false);
    common::initializer_to_input(&mut p, "k", &[1, 3, 1, 1]);
    let (out, report) = run_passes(&lift(p), &["fuse-conv-add"]);
    assert_eq!(count_op(&out, "Add"), 1);
    assert_explained(&report, "not a constant");
}

#[test]
fn keeps_conv_add_when_conv_output_has_two_users() {
    let mut p = conv_then("Add", &[1, 3, 1, 1], &[0.5, -1.0, 2.0], false);
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Relu", "relu", &["c"], &["z"]));
    g.output.push(f32_info("z", &[1, 3, 5, 5]));
    let (out, report) = run_passes(&lift(p), &["fuse-conv-add"]);
    assert_eq!(count_op(&out, "Add"), 1);
    assert_explained(&report, "other readers");
}

#[test]
fn fuses_conv_mul_into_the_weights() {
    let m = lift(conv_then("Mul", &[3, 1, 1], &[0.5, -1.0, 2.0], false));
    let (out, _) = run_passes(&m, &["fuse-conv-mul", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_mul_and_add_after_a_grouped_conv_transpose() {
    // W[4, 3, 3, 3] with 2 groups: 6 output channels along W's second axis, per group.
    let mut ct = node("ConvTranspose", "ct", &["x", "W"], &["c"]);
    ct.attribute = vec![attr_ints("kernel_shape", &[3, 3]), attr_int("group", 2)];
    let m = lift(model_io(
        vec![
            ct,
            node("Mul", "mul", &["c", "k"], &["d"]),
            node("Add", "add", &["d", "k"], &["y"]),
        ],
        vec![f32_info("x", &[1, 4, 5, 5])],
        vec![f32_info("y", &[1, 6, 7, 7])],
        vec![
            f32_tensor("W", &[4, 3, 3, 3], &values(108, 9)),
            f32_tensor("k", &[6, 1, 1], &[0.5, -1.0, 2.0, 1.5, -0.25, 3.0]),
        ],
    ));
    let (out, _) = run_passes(&m, &["fuse-conv-mul", "fuse-conv-add", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1, "only the ConvTranspose is left");
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_conv_mul_that_is_not_per_channel() {
    let m = lift(conv_then("Mul", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0], false));
    let (out, report) = run_passes(&m, &["fuse-conv-mul"]);
    assert_eq!(count_op(&out, "Mul"), 1);
    assert_explained(&report, "not one value per output channel");
}

#[test]
fn keeps_conv_mul_whose_weight_is_an_input() {
    let mut p = conv_then("Mul", &[3, 1, 1], &[0.5, -1.0, 2.0], false);
    common::initializer_to_input(&mut p, "W", &[3, 2, 3, 3]);
    assert_refused(
        &lift(p),
        "fuse-conv-mul",
        "Mul",
        "weight is not an f32 initializer",
    );
}

// ---- fuse-matmul-add ----

/// x[2,4] ─▶ MatMul(B[4,3]) ─▶ m ─▶ Add(c) ─▶ y[2,3], x of the given shape.
fn matmul_add(x_dims: &[i64], y_dims: &[i64], c_dims: &[i64]) -> ModelProto {
    let c_len: i64 = c_dims.iter().product();
    model_io(
        vec![
            node("MatMul", "mm", &["x", "B"], &["m"]),
            node("Add", "add", &["m", "c"], &["y"]),
        ],
        vec![f32_info("x", x_dims)],
        vec![f32_info("y", y_dims)],
        vec![
            f32_tensor("B", &[4, 3], &values(12, 3)),
            f32_tensor("c", c_dims, &values(c_len as usize, 4)),
        ],
    )
}

#[test]
fn fuses_matmul_add_into_gemm() {
    let m = lift(matmul_add(&[2, 4], &[2, 3], &[3]));
    let (out, _) = run_passes(&m, &["fuse-matmul-add"]);
    assert_eq!(count_op(&out, "Gemm"), 1);
    assert_eq!(out.graph.node_count(), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_matmul_add_of_3d_inputs() {
    let m = lift(matmul_add(&[2, 5, 4], &[2, 5, 3], &[3]));
    let (out, report) = run_passes(&m, &["fuse-matmul-add"]);
    assert_eq!(count_op(&out, "Gemm"), 0);
    assert_explained(&report, "not known to be 2-D");
}

#[test]
fn keeps_matmul_add_whose_bias_is_not_per_column() {
    let m = lift(matmul_add(&[2, 4], &[2, 3], &[2, 3]));
    let (out, report) = run_passes(&m, &["fuse-matmul-add"]);
    assert_eq!(count_op(&out, "Gemm"), 0);
    assert_explained(&report, "one value per output column");
}

#[test]
fn keeps_matmul_add_whose_weight_is_an_input() {
    let mut p = matmul_add(&[2, 4], &[2, 3], &[3]);
    common::initializer_to_input(&mut p, "B", &[4, 3]);
    let (out, report) = run_passes(&lift(p), &["fuse-matmul-add"]);
    assert_eq!(count_op(&out, "Gemm"), 0);
    assert_explained(&report, "not a 2-D f32 initializer");
}

#[test]
fn keeps_matmul_add_when_the_product_is_read_elsewhere() {
    let mut p = matmul_add(&[2, 4], &[2, 3], &[3]);
    read_also_by_a_spy(&mut p, "m", &[2, 3]);
    assert_refused(
        &lift(p),
        "fuse-matmul-add",
        "Add",
        "the MatMul's output has other readers (2 reads: Add 'add', Relu 'spy')",
    );
}

// ---- fuse-mul-conv ----

/// x[1,4,5,5] ─▶ `op`(x, k) ─▶ s ─▶ Conv(W[6, 4 / group, 3, 3], b, group) ─▶ y.
fn scaled_conv(op: &str, k_dims: &[i64], k: &[f32], group: i64) -> ModelProto {
    let mut c = conv(&["s", "W", "B"], "y");
    c.attribute.push(attr_int("group", group));
    let per_group = 4 / group;
    model_io(
        vec![node(op, "scale", &["x", "k"], &["s"]), c],
        vec![f32_info("x", &[1, 4, 5, 5])],
        vec![f32_info("y", &[1, 6, 5, 5])],
        vec![
            f32_tensor(
                "W",
                &[6, per_group, 3, 3],
                &values(54 * per_group as usize, 9),
            ),
            f32_tensor("B", &[6], &values(6, 10)),
            f32_tensor("k", k_dims, k),
        ],
    )
}

#[test]
fn fuses_a_scale_before_a_conv_into_its_weights() {
    let per_channel = [0.5, -1.0, 2.0, 1.5];
    for (op, dims, k, group) in [
        ("Mul", &[1, 4, 1, 1][..], &per_channel[..], 1),
        ("Mul", &[][..], &[0.25][..], 1),
        ("Div", &[4, 1, 1][..], &per_channel[..], 1),
        ("Mul", &[4, 1, 1][..], &per_channel[..], 2),
    ] {
        let m = lift(scaled_conv(op, dims, k, group));
        let (out, _) = run_passes(&m, &["fuse-mul-conv", "dead-code"]);
        assert_eq!(out.graph.node_count(), 1, "{op} {dims:?} group {group}");
        if op == "Mul" && group == 2 {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn fuses_a_scale_before_a_grouped_conv_transpose() {
    // W[4, 3, 3, 3] with 2 groups: input channels along W's first axis.
    let mut ct = node("ConvTranspose", "ct", &["s", "W"], &["y"]);
    ct.attribute = vec![attr_ints("kernel_shape", &[3, 3]), attr_int("group", 2)];
    let m = lift(model_io(
        vec![node("Mul", "scale", &["k", "x"], &["s"]), ct],
        vec![f32_info("x", &[1, 4, 5, 5])],
        vec![f32_info("y", &[1, 6, 7, 7])],
        vec![
            f32_tensor("W", &[4, 3, 3, 3], &values(108, 9)),
            f32_tensor("k", &[1, 4, 1, 1], &[0.5, -1.0, 2.0, 1.5]),
        ],
    ));
    let (out, _) = run_passes(&m, &["fuse-mul-conv", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_a_scale_before_a_conv_that_is_read_elsewhere() {
    let mut p = scaled_conv("Mul", &[], &[0.25], 1);
    read_also_by_a_spy(&mut p, "s", &[1, 4, 5, 5]);
    assert_refused(
        &lift(p),
        "fuse-mul-conv",
        "Conv",
        "the scaled value has other readers (2 reads: Conv 'conv', Relu 'spy')",
    );
}

/// x ─▶ Mul(x, k) ─▶ s read by two Convs, `second` the other one's weight, summed into y.
fn scale_read_by_two_convs(second: &str) -> ModelProto {
    let mut p = scaled_conv("Mul", &[1, 4, 1, 1], &[0.5, -1.0, 2.0, 1.5], 1);
    let g = p.graph.as_mut().unwrap();
    g.node[1].output[0] = "y1".into();
    let mut c2 = conv(&["s", second], "y2");
    c2.name = "conv2".into();
    g.node.push(c2);
    g.node.push(node("Add", "sum", &["y1", "y2"], &["y"]));
    g.initializer
        .push(f32_tensor("W2", &[6, 4, 3, 3], &values(216, 11)));
    if second == "V" {
        g.input.push(f32_info("V", &[6, 4, 3, 3]));
    }
    p
}

#[test]
fn fuses_a_scale_read_by_two_convs_into_both() {
    let m = lift(scale_read_by_two_convs("W2"));
    let (out, report) = run_passes(&m, &["fuse-mul-conv", "dead-code"]);
    assert_eq!(count_op(&out, "Mul"), 0);
    assert_eq!(m.graph.node_count() - out.graph.node_count(), 1);
    assert!(report.explain.is_empty(), "{:#?}", report.explain);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_a_scale_read_by_two_convs_when_one_cannot_take_it() {
    // The second Conv's weight is an input: a copy of the Mul for it would stay, so none is
    // made.
    let m = lift(scale_read_by_two_convs("V"));
    assert_refused(
        &m,
        "fuse-mul-conv",
        "Conv",
        "the scaled value has other readers (2 reads: Conv 'conv', Conv 'conv2')",
    );
}

#[test]
fn keeps_a_scale_before_a_conv_that_is_not_per_channel() {
    // One value per column of the image: it does not commute with the kernel.
    let p = scaled_conv("Mul", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0], 1);
    assert_refused(&lift(p), "fuse-mul-conv", "Conv", "per input channel");
}

#[test]
fn keeps_a_scale_before_a_conv_whose_weight_is_an_input() {
    let mut p = scaled_conv("Mul", &[], &[0.25], 1);
    common::initializer_to_input(&mut p, "W", &[6, 4, 3, 3]);
    assert_refused(
        &lift(p),
        "fuse-mul-conv",
        "Conv",
        "weight is not an f32 initializer",
    );
}

#[test]
fn keeps_a_division_of_a_constant_by_the_input() {
    // k / x is not a scale of x.
    let mut p = scaled_conv("Div", &[], &[0.25], 1);
    p.graph.as_mut().unwrap().node[0].input = vec!["k".into(), "x".into()];
    assert_refused(&lift(p), "fuse-mul-conv", "Conv", "not a constant");
}

#[test]
fn keeps_a_division_by_zero() {
    let p = scaled_conv("Div", &[4, 1, 1], &[1.0, 0.0, 2.0, 3.0], 1);
    assert_refused(&lift(p), "fuse-mul-conv", "Conv", "divides by zero");
}

// ---- fuse-pad-conv ----

/// x[1,2,5,5] ─▶ Pad(pads, value) ─▶ p ─▶ `op` ─▶ y, with `op` reading p first.
fn pad_then(op: NodeProto, pads: &[i64], value: f32, y_dims: &[i64]) -> ModelProto {
    let mut inits = vec![
        i64_tensor("pads", &[pads.len() as i64], pads),
        f32_tensor("value", &[], &[value]),
    ];
    if op.op_type == "Conv" {
        inits.push(f32_tensor("W", &[3, 2, 3, 3], &values(54, 9)));
    }
    model_io(
        vec![node("Pad", "pad", &["x", "pads", "value"], &["p"]), op],
        vec![f32_info("x", &[1, 2, 5, 5])],
        vec![f32_info("y", y_dims)],
        inits,
    )
}

fn pool(op: &str, attrs: Vec<onnxsmith::onnx::proto::AttributeProto>) -> NodeProto {
    let mut n = node(op, "pool", &["p"], &["y"]);
    n.attribute = vec![attr_ints("kernel_shape", &[3, 3])];
    n.attribute.extend(attrs);
    n
}

#[test]
fn fuses_zero_pad_into_conv() {
    let m = lift(pad_then(
        conv(&["p", "W"], "y"),
        &[0, 0, 1, 2, 0, 0, 0, 1],
        0.0,
        &[1, 3, 6, 8],
    ));
    let (out, _) = run_passes(&m, &["fuse-pad-conv", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn fuses_zero_pad_into_average_pool_counting_padded_zeros() {
    let m = lift(pad_then(
        pool("AveragePool", vec![]),
        &[0, 0, 1, 1, 0, 0, 1, 1],
        0.0,
        &[1, 2, 5, 5],
    ));
    let (out, _) = run_passes(&m, &["fuse-pad-conv", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_pads_that_do_not_compose() {
    let cases = [
        (
            pad_then(
                pool("MaxPool", vec![]),
                &[0, 0, 1, 1, 0, 0, 1, 1],
                0.0,
                &[1, 2, 5, 5],
            ),
            "MaxPool pads with -inf",
        ),
        (
            pad_then(
                conv(&["p", "W"], "y"),
                &[0, 0, 1, 1, 0, 0, 1, 1],
                1.0,
                &[1, 3, 7, 7],
            ),
            "value is not zero",
        ),
        (
            pad_then(
                conv(&["p", "W"], "y"),
                &[0, 1, 0, 0, 0, 0, 0, 0],
                0.0,
                &[1, 3, 5, 5],
            ),
            "batch or channel axis",
        ),
        (
            pad_then(
                pool("AveragePool", vec![attr_ints("pads", &[1, 1, 1, 1])]),
                &[0, 0, 1, 1, 0, 0, 1, 1],
                0.0,
                &[1, 2, 7, 7],
            ),
            "without counting padded zeros",
        ),
    ];
    for (p, why) in cases {
        let (out, report) = run_passes(&lift(p), &["fuse-pad-conv"]);
        assert_eq!(count_op(&out, "Pad"), 1, "{why}");
        assert_explained(&report, why);
    }
}

/// x ─▶ Pad ─▶ p read by a 3x3 Conv (writing y) and, second, by `other` (writing z[z_dims]).
fn pad_read_twice(other: NodeProto, z_dims: &[i64]) -> ModelProto {
    let mut p = pad_then(
        conv(&["p", "W"], "y"),
        &[0, 0, 1, 1, 0, 0, 1, 1],
        0.0,
        &[1, 3, 7, 7],
    );
    let g = p.graph.as_mut().unwrap();
    g.node.push(other);
    g.output.push(f32_info("z", z_dims));
    p
}

#[test]
fn fuses_a_pad_read_by_two_convs_into_both() {
    let mut c2 = conv(&["p", "W"], "z");
    c2.name = "conv2".into();
    let m = lift(pad_read_twice(c2, &[1, 3, 7, 7]));
    let (out, report) = run_passes(&m, &["fuse-pad-conv", "dead-code"]);
    assert_eq!(count_op(&out, "Pad"), 0);
    assert_eq!((m.graph.node_count(), out.graph.node_count()), (3, 2));
    assert!(report.explain.is_empty(), "{:#?}", report.explain);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_a_pad_read_by_a_conv_and_another_op() {
    let mut max = pool("MaxPool", vec![]);
    max.output[0] = "z".into();
    assert_refused(
        &lift(pad_read_twice(max, &[1, 2, 5, 5])),
        "fuse-pad-conv",
        "Conv",
        "the Pad's output has other readers (2 reads: Conv 'conv', MaxPool 'pool')",
    );
}

// ---- fuse-gelu ----

/// x · ½ · (1 + erf(x / √2)) written the way `order` says, at `opset`, with ½ as `half`.
fn gelu_model(order: u8, opset: i64, half: f32) -> ModelProto {
    let tail = match order {
        0 => vec![
            node("Mul", "m1", &["x", "a"], &["m"]),
            node("Mul", "m2", &["m", "half"], &["y"]),
        ],
        1 => vec![
            node("Mul", "h", &["half", "x"], &["m"]),
            node("Mul", "m1", &["a", "m"], &["y"]),
        ],
        _ => vec![
            node("Mul", "m1", &["a", "half"], &["m"]),
            node("Mul", "m2", &["x", "m"], &["y"]),
        ],
    };
    let mut nodes = vec![
        node("Div", "div", &["x", "sqrt2"], &["d"]),
        node("Erf", "erf", &["d"], &["e"]),
        node("Add", "add", &["one", "e"], &["a"]),
    ];
    nodes.extend(tail);
    let mut p = model_io(
        nodes,
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![
            f32_tensor("sqrt2", &[], &[std::f32::consts::SQRT_2]),
            f32_tensor("one", &[], &[1.0]),
            f32_tensor("half", &[1], &[half]),
        ],
    );
    p.opset_import[0].version = opset;
    p
}

#[test]
fn fuses_erf_gelu_in_every_order() {
    for order in 0..3 {
        let m = lift(gelu_model(order, 20, 0.5));
        let (out, _) = run_passes(&m, &["fuse-gelu", "dead-code"]);
        assert_eq!(out.graph.node_count(), 1, "order {order}");
        assert_eq!(count_op(&out, "Gelu"), 1);
        if order == 0 {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn keeps_erf_gelu_before_opset_20_and_near_misses() {
    let (out, report) = run_passes(&lift(gelu_model(0, 17, 0.5)), &["fuse-gelu"]);
    assert_eq!(count_op(&out, "Erf"), 1);
    assert_explained(&report, "Gelu needs opset 20");
    assert_refused(
        &lift(gelu_model(1, 20, 0.6)),
        "fuse-gelu",
        "Erf",
        "do not form",
    );
}

#[test]
fn keeps_erf_gelu_whose_intermediate_is_read_elsewhere() {
    let mut p = gelu_model(0, 20, 0.5);
    read_also_by_a_spy(&mut p, "e", &[2, 3]);
    assert_refused(
        &lift(p),
        "fuse-gelu",
        "Erf",
        "its intermediate 'e' has other readers (2 reads: Add 'add', Relu 'spy')",
    );
}

#[test]
fn fuses_a_pad_as_wide_as_the_kernel() {
    // From a differential-test case: Pad(1 each side) ─▶ Conv(k=1, stride 2); fused, the
    // Conv pads as much as its kernel is wide, and reads the same positions.
    let mut c = node("Conv", "conv", &["p", "W"], &["y"]);
    c.attribute = vec![attr_ints("kernel_shape", &[1]), attr_ints("strides", &[2])];
    let m = lift(model_io(
        vec![node("Pad", "pad", &["x", "pads"], &["p"]), c],
        vec![f32_info("x", &[1, 2, 7])],
        vec![f32_info("y", &[1, 3, 5])],
        vec![
            i64_tensor("pads", &[6], &[0, 0, 1, 0, 0, 1]),
            f32_tensor("W", &[3, 2, 1], &values(6, 3)),
        ],
    ));
    let (out, _) = run_passes(&m, &["fuse-pad-conv", "dead-code"]);
    assert_eq!(count_op(&out, "Pad"), 0);
    assert_same_outputs(&m, &out);
}

// ---- Reshape→MatMul→Add heads ----

/// How a head builds its Reshape target.
#[derive(Clone, Copy)]
enum Target {
    /// `Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])`, as PyTorch exports `x.view(x.size(0), -1)`.
    ShapeChain,
    /// A constant `[0, -1]`.
    CopyBatch,
    /// A constant `[N, -1]` for a static batch N.
    Fixed,
}

/// One classifier head: x[N, C, 1, 1] (or [N, C]) ─▶ Reshape(target) ─▶ MatMul(B[C, 3]) ─▶
/// Add(c) ─▶ y[N, 3], at `opset`, the bias of `c_dims` first or second, the batch symbolic
/// unless `Target::Fixed`; inside both branches of an If (capturing x) when `in_if`.
struct Head {
    opset: i64,
    x_dims: &'static [i64],
    target: Target,
    bias_first: bool,
    c_dims: &'static [i64],
    in_if: bool,
}

impl Head {
    fn nodes(&self, inits: &mut Vec<onnxsmith::onnx::proto::TensorProto>) -> Vec<NodeProto> {
        let c = self.x_dims[1];
        let mut out = Vec::new();
        let target = match self.target {
            Target::ShapeChain => {
                out.push(node("Shape", "shape", &["x"], &["s"]));
                inits.push(i64_tensor("zero", &[], &[0]));
                out.push(node("Gather", "gather", &["s", "zero"], &["b"]));
                let unsq = if self.opset >= 13 {
                    inits.push(i64_tensor("axes", &[1], &[0]));
                    node("Unsqueeze", "unsqueeze", &["b", "axes"], &["b1"])
                } else {
                    let mut u = node("Unsqueeze", "unsqueeze", &["b"], &["b1"]);
                    u.attribute.push(attr_ints("axes", &[0]));
                    u
                };
                out.push(unsq);
                inits.push(i64_tensor("rest", &[1], &[-1]));
                let mut cat = node("Concat", "concat", &["b1", "rest"], &["t"]);
                cat.attribute.push(attr_int("axis", 0));
                out.push(cat);
                "t"
            }
            Target::CopyBatch => {
                inits.push(i64_tensor("t", &[2], &[0, -1]));
                "t"
            }
            Target::Fixed => {
                inits.push(i64_tensor("t", &[2], &[self.x_dims[0], -1]));
                "t"
            }
        };
        out.push(node("Reshape", "reshape", &["x", target], &["r"]));
        inits.push(f32_tensor("B", &[c, 3], &values(3 * c as usize, 7)));
        out.push(node("MatMul", "mm", &["r", "B"], &["m"]));
        let len: i64 = self.c_dims.iter().product();
        inits.push(f32_tensor("c", self.c_dims, &values(len as usize, 8)));
        let ops = if self.bias_first {
            ["c", "m"]
        } else {
            ["m", "c"]
        };
        out.push(node("Add", "add", &ops, &["y"]));
        out
    }

    fn model(&self) -> ModelProto {
        let mut inits = Vec::new();
        let mut x = f32_info("x", self.x_dims);
        let mut y = f32_info("y", &[self.x_dims[0], 3]);
        if !matches!(self.target, Target::Fixed) {
            common::symbolic(&mut x, 0, Some("N"));
            common::symbolic(&mut y, 0, Some("N"));
        }
        let nodes = self.nodes(&mut inits);
        let mut p = model_io(nodes, vec![x], vec![y], inits);
        if self.in_if {
            p = common::in_an_if(p);
        }
        p.opset_import[0].version = self.opset;
        p
    }
}

const TARGETS: [Target; 3] = [Target::ShapeChain, Target::CopyBatch, Target::Fixed];

/// Nodes of every graph of `m`, bodies included.
fn all_nodes(m: &onnxsmith::ir::Model) -> usize {
    onnxsmith::report::Summary::of(m).nodes
}

#[test]
fn fuses_reshape_matmul_add_heads_into_gemm_at_every_opset_and_inside_ifs() {
    let mut case = 0;
    for opset in [11, 13, 17] {
        for target in TARGETS {
            for x_dims in [&[1, 8, 1, 1][..], &[1, 8][..]] {
                for in_if in [false, true] {
                    case += 1;
                    let h = Head {
                        opset,
                        x_dims,
                        target,
                        bias_first: case % 2 == 0,
                        c_dims: if case % 3 == 0 { &[3] } else { &[1, 3] },
                        in_if,
                    };
                    let m = lift(h.model());
                    let (out, _) = run_pipeline_default(&m);
                    let at = format!("case {case}: opset {opset}, x {x_dims:?}, in If {in_if}");
                    for op in ["MatMul", "Add", "Shape", "Gather", "Unsqueeze", "Concat"] {
                        assert_eq!(count_op(&out, op), 0, "{op} left in {at}");
                    }
                    let gemms = if in_if { 2 } else { 1 };
                    assert_eq!(count_op(&out, "Gemm"), gemms, "{at}");
                    // Reshaping x[N, 8] to [N, 8] does nothing, which the facts of an If's
                    // body prove as well as the main graph's.
                    let reshapes = if x_dims.len() == 2 { 0 } else { gemms };
                    assert_eq!(count_op(&out, "Reshape"), reshapes, "{at}");
                    assert_same_outputs(&m, &out);
                }
            }
        }
    }
}

/// The whole default pipeline, with `--explain`.
fn run_pipeline_default(
    m: &onnxsmith::ir::Model,
) -> (onnxsmith::ir::Model, onnxsmith::passes::PipelineReport) {
    let mut out = m.clone();
    let opts = onnxsmith::passes::PipelineOptions {
        explain: true,
        verify_each: true,
        ..Default::default()
    };
    let report = onnxsmith::passes::run_pipeline(&mut out, &opts).unwrap();
    (out, report)
}

#[test]
fn fuses_a_reshape_matmul_add_head_inside_an_if_at_opset_11() {
    let h = Head {
        opset: 11,
        x_dims: &[1, 8, 1, 1],
        target: Target::ShapeChain,
        bias_first: true,
        c_dims: &[3],
        in_if: true,
    };
    let m = lift(h.model());
    let (out, _) = run_passes(&m, &["fold-reshape-target", "fuse-matmul-add", "dead-code"]);
    // Each branch: Shape, Gather, Unsqueeze, Concat, Reshape, MatMul, Add ⇒ Reshape, Gemm.
    assert_eq!((all_nodes(&m), all_nodes(&out)), (15, 5));
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

/// An If whose branches compute MatMul(x, B) + c straight from the captured x[N, 8].
fn matmul_add_of_a_capture() -> ModelProto {
    let mut p = Head {
        opset: 13,
        x_dims: &[1, 8],
        target: Target::CopyBatch,
        bias_first: false,
        c_dims: &[3],
        in_if: true,
    }
    .model();
    let iff = &mut p.graph.as_mut().unwrap().node[0];
    for branch in &mut iff.attribute {
        let body = branch.g.as_mut().unwrap();
        body.node.retain(|n| n.op_type != "Reshape");
        let mm = body
            .node
            .iter_mut()
            .find(|n| n.op_type == "MatMul")
            .unwrap();
        mm.input[0] = "x".into();
    }
    p
}

#[test]
fn fuses_matmul_add_in_a_body_whose_capture_is_2d_outside() {
    let m = lift(matmul_add_of_a_capture());
    let (out, _) = run_passes(&m, &["fuse-matmul-add"]);
    assert_eq!((count_op(&out, "Gemm"), count_op(&out, "MatMul")), (2, 0));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_matmul_add_in_a_body_whose_capture_has_no_known_rank() {
    let mut p = matmul_add_of_a_capture();
    let x = &mut p.graph.as_mut().unwrap().input[0];
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let (out, report) = run_passes(&lift(p), &["fuse-matmul-add"]);
    assert_eq!(count_op(&out, "Gemm"), 0);
    assert_explained(
        &report,
        "fuse-matmul-add: kept Add 'then_add': the MatMul's input is not known to be 2-D",
    );
}
