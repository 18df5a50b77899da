//! Cleanup passes: identity and dropout elimination, dead code.

mod common;

use common::{
    assert_explained, assert_refused, assert_same_outputs, before_after, count_op, f32_info,
    f32_tensor, i64_tensor, lift, model_with, node, run_passes, tensor,
};
use onnxsmith::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, ModelProto, NodeProto,
};

fn with_attr(mut n: NodeProto, name: &str, i: i64) -> NodeProto {
    n.attribute.push(AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    });
    n
}

// ---- eliminate-identity ----

#[test]
fn eliminates_identity() {
    let m = lift(model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Identity", "id", &["a"], &["b"]),
        node("Neg", "neg", &["b"], &["y"]),
    ]));
    let (out, report) = run_passes(&m, &["eliminate-identity"]);
    assert_eq!(count_op(&out, "Identity"), 0);
    assert_eq!(report.passes[0].rewrites, 2, "one replace and one removal");
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn eliminates_identity_feeding_a_graph_output_keeping_its_name() {
    let m = lift(model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Identity", "id", &["a"], &["y"]),
    ]));
    let (out, _) = run_passes(&m, &["eliminate-identity"]);
    assert_eq!(count_op(&out, "Identity"), 0);
    let lowered = out.to_proto().unwrap().graph.unwrap();
    assert_eq!(lowered.node[0].output, ["y"]);
    assert_eq!(lowered.output[0].name, "y");
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_identity_between_graph_input_and_output() {
    let m = lift(model_with(vec![node("Identity", "id", &["x"], &["y"])]));
    let (out, report) = run_passes(&m, &["eliminate-identity"]);
    assert_eq!(count_op(&out, "Identity"), 1);
    assert_explained(&report, "kept Identity 'id'");
    assert_explained(&report, "interface");
}

#[test]
fn keeps_identity_when_its_input_is_already_a_graph_output() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["y"]),
        node("Identity", "id", &["y"], &["y2"]),
    ]);
    p.graph
        .as_mut()
        .unwrap()
        .output
        .push(f32_info("y2", &[2, 3]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-identity"]);
    assert_eq!(count_op(&out, "Identity"), 1);
    assert_same_outputs(&m, &out);
}

#[test]
fn eliminates_identity_inside_if_branches() {
    let mut p = common::if_model();
    // then: t = a + x; r = Identity(t)
    let g = p.graph.as_mut().unwrap();
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node[0].output[0] = "t".into();
    then.node.push(node("Identity", "then_id", &["t"], &["r"]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-identity"]);
    assert_eq!(count_op(&out, "Identity"), 0);
    insta::assert_snapshot!(before_after(&m, &out));
}

// ---- eliminate-dropout ----

#[test]
fn eliminates_inference_dropout() {
    let m = lift(model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Dropout", "drop", &["a"], &["b"]),
        node("Neg", "neg", &["b"], &["y"]),
    ]));
    let (out, _) = run_passes(&m, &["eliminate-dropout"]);
    assert_eq!(count_op(&out, "Dropout"), 0);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn eliminates_dropout_with_constant_false_training_mode_and_unread_mask() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Dropout", "drop", &["a", "ratio", "mode"], &["b", "mask"]),
        node("Neg", "neg", &["b"], &["y"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(f32_tensor("ratio", &[], &[0.5]));
    g.initializer.push(tensor("mode", 9, &[], vec![0]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-dropout", "dead-code"]);
    assert_eq!(count_op(&out, "Dropout"), 0);
    assert!(
        out.graph.find("mode").is_none(),
        "dead-code removes the unread initializers"
    );
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_dropout_whose_mask_is_read() {
    let mut p = model_with(vec![node("Dropout", "drop", &["x"], &["y", "mask"])]);
    let mask = common::info("mask", 9, &[2, 3]);
    p.graph.as_mut().unwrap().output.push(mask);
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-dropout"]);
    assert_eq!(count_op(&out, "Dropout"), 1);
    assert_explained(&report, "mask output is read");
}

#[test]
fn keeps_dropout_whose_training_mode_is_not_constant() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Dropout", "drop", &["a", "", "mode"], &["y"]),
    ]);
    let mode = common::info("mode", 9, &[]);
    p.graph.as_mut().unwrap().input.push(mode);
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-dropout"]);
    assert_eq!(count_op(&out, "Dropout"), 1);
    assert_explained(&report, "training_mode is not a constant false");
}

#[test]
fn keeps_training_dropout_of_old_opsets() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        with_attr(node("Dropout", "drop", &["a"], &["y"]), "is_test", 0),
    ]);
    p.opset_import[0].version = 6;
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-dropout"]);
    assert_eq!(count_op(&out, "Dropout"), 1);
    assert_explained(&report, "is_test is 0");
}

#[test]
fn keeps_dropout_between_graph_input_and_output() {
    let m = lift(model_with(vec![node("Dropout", "drop", &["x"], &["y"])]));
    assert_refused(&m, "eliminate-dropout", "Dropout", "interface");
}

// ---- dead-code ----

#[test]
fn removes_dead_nodes_initializers_and_value_info() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["y"]),
        node("Neg", "dead1", &["x"], &["t"]),
        node("Add", "dead2", &["t", "w"], &["u"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(f32_tensor("w", &[3], &[1.0, 2.0, 3.0]));
    g.initializer.push(f32_tensor("unused", &[1], &[4.0]));
    g.value_info.push(f32_info("t", &[2, 3]));
    g.value_info.push(f32_info("stale", &[7]));
    let m = lift(p);
    let (out, report) = run_passes(&m, &["dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    assert!(out.graph.initializers().is_empty());
    assert!(out.graph.value_info().is_empty());
    assert_eq!(
        report.rounds,
        [("simplify", 2)],
        "one round removes everything, the next confirms"
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_unread_custom_ops() {
    let mut custom = node("Log", "custom", &["x"], &["t"]);
    custom.domain = "com.example".into();
    let mut p = model_with(vec![node("Relu", "relu", &["x"], &["y"]), custom]);
    p.opset_import
        .push(onnxsmith::onnx::proto::OperatorSetIdProto {
            domain: "com.example".into(),
            version: 1,
        });
    let m = lift(p);
    let (out, report) = run_passes(&m, &["dead-code"]);
    assert_eq!(out.graph.node_count(), 2);
    assert_explained(&report, "custom operators are kept");
}

#[test]
fn keeps_graph_outputs_and_inputs() {
    let mut p = model_with(vec![node("Relu", "relu", &["x"], &["y"])]);
    p.graph
        .as_mut()
        .unwrap()
        .input
        .push(f32_info("unused_input", &[1]));
    let m = lift(p);
    let (out, report) = run_passes(&m, &["dead-code"]);
    assert_eq!(out.graph.inputs().len(), 2);
    assert_eq!(out.graph.node_count(), 1);
    assert!(report.steps.is_empty());
}

#[test]
fn dead_code_inside_bodies_frees_captured_values() {
    let mut p = common::if_model();
    // else: r = Neg(x) instead of Neg(a); then: r = x + x; `a` is then read by nothing.
    let g = p.graph.as_mut().unwrap();
    g.node[1].attribute[1].g.as_mut().unwrap().node[0].input[0] = "x".into();
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node[0].input = vec!["x".into(), "x".into()];
    then.node
        .push(node("Relu", "then_dead", &["a"], &["unused"]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["dead-code"]);
    assert_eq!(
        count_op(&out, "Relu"),
        0,
        "both the body's dead Relu and the outer producer of `a` go"
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
#[should_panic(expected = "outputs differ")]
fn the_numeric_check_catches_a_wrong_rewrite() {
    let relu = lift(model_with(vec![node("Relu", "f", &["x"], &["y"])]));
    let neg = lift(model_with(vec![node("Neg", "f", &["x"], &["y"])]));
    assert_same_outputs(&relu, &neg);
}

// ---- constant-to-initializer ----

#[test]
fn turns_constants_into_initializers() {
    use onnxsmith::onnx::proto::AttributeProto;
    let mut c1 = node("Constant", "c1", &[], &["k"]);
    c1.attribute.push(AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(f32_tensor("", &[3], &[1.0, 2.0, 3.0])),
        ..Default::default()
    });
    let mut c2 = node("Constant", "c2", &[], &["s"]);
    c2.attribute.push(AttributeProto {
        name: "value_float".into(),
        r#type: AttributeType::Float as i32,
        f: 0.5,
        ..Default::default()
    });
    let m = lift(model_with(vec![
        c1,
        c2,
        node("Mul", "mul", &["x", "k"], &["a"]),
        node("Mul", "mul2", &["a", "s"], &["y"]),
    ]));
    let (out, _) = run_passes(&m, &["constant-to-initializer"]);
    assert_eq!(count_op(&out, "Constant"), 0);
    assert_eq!(out.graph.initializers().len(), 2);
    assert!(
        out.graph.find("k").is_some() && out.graph.find("s").is_some(),
        "names are kept"
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_constant_that_is_a_graph_output() {
    use onnxsmith::onnx::proto::AttributeProto;
    let mut c = node("Constant", "c", &[], &["y"]);
    c.attribute.push(AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(f32_tensor("", &[2, 3], &[0.0; 6])),
        ..Default::default()
    });
    let mut p = model_with(vec![c]);
    p.graph.as_mut().unwrap().input.clear();
    assert_refused(
        &lift(p),
        "constant-to-initializer",
        "Constant",
        "graph output",
    );
}

#[test]
fn keeps_sparse_constants() {
    use onnxsmith::onnx::proto::{AttributeProto, SparseTensorProto};
    let mut c = node("Constant", "c", &[], &["k"]);
    c.attribute.push(AttributeProto {
        name: "sparse_value".into(),
        r#type: AttributeType::SparseTensor as i32,
        sparse_tensor: Some(SparseTensorProto {
            values: Some(f32_tensor("", &[1], &[1.0])),
            indices: Some(tensor("", 7, &[1], 0i64.to_le_bytes().to_vec())),
            dims: vec![6],
        }),
        ..Default::default()
    });
    let m = lift(model_with(vec![c, node("Relu", "relu", &["x"], &["y"])]));
    let (_, report) = run_passes(&m, &["constant-to-initializer"]);
    assert_explained(&report, "sparse constants are kept");
}

#[test]
fn keeps_constants_of_ir_3_models() {
    use onnxsmith::onnx::proto::AttributeProto;
    let mut c = node("Constant", "c", &[], &["k"]);
    c.attribute.push(AttributeProto {
        name: "value_float".into(),
        r#type: AttributeType::Float as i32,
        f: 2.0,
        ..Default::default()
    });
    let mut p = model_with(vec![c, node("Mul", "mul", &["x", "k"], &["y"])]);
    p.ir_version = 3;
    p.opset_import[0].version = 7;
    let (out, report) = run_passes(&lift(p), &["constant-to-initializer"]);
    assert_eq!(count_op(&out, "Constant"), 1);
    assert!(report.steps.is_empty());
}

// ---- cse ----

#[test]
fn merges_equal_initializers_and_equal_nodes() {
    let mut p = model_with(vec![
        node("Mul", "m1", &["x", "k1"], &["a"]),
        node("Mul", "m2", &["x", "k2"], &["b"]),
        node("Add", "add", &["a", "b"], &["y"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(f32_tensor("k1", &[3], &[1.0, 2.0, 3.0]));
    g.initializer.push(f32_tensor("k2", &[3], &[1.0, 2.0, 3.0]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["cse"]);
    assert_eq!(out.graph.initializers().len(), 1);
    assert_eq!(
        count_op(&out, "Mul"),
        1,
        "once the constants are one, the Muls are one"
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_initializers_that_differ() {
    let mut p = model_with(vec![
        node("Mul", "m1", &["x", "k1"], &["a"]),
        node("Mul", "m2", &["x", "k2"], &["b"]),
        node("Add", "add", &["a", "b"], &["y"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(f32_tensor("k1", &[3], &[1.0, 2.0, 3.0]));
    g.initializer.push(f32_tensor("k2", &[3], &[1.0, 2.0, 4.0]));
    let (out, report) = run_passes(&lift(p), &["cse"]);
    assert_eq!(out.graph.initializers().len(), 2);
    assert_eq!(count_op(&out, "Mul"), 2);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_nondeterministic_nodes_apart() {
    let mut r1 = node("RandomUniformLike", "r1", &["x"], &["a"]);
    r1.attribute.push(common::attr_int("dtype", 1));
    let mut r2 = r1.clone();
    r2.name = "r2".into();
    r2.output = vec!["b".into()];
    let m = lift(model_with(vec![
        r1,
        r2,
        node("Add", "add", &["a", "b"], &["y"]),
    ]));
    let (out, report) = run_passes(&m, &["cse"]);
    assert_eq!(count_op(&out, "RandomUniformLike"), 2);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_equal_nodes_that_feed_two_graph_outputs() {
    let mut p = model_with(vec![
        node("Relu", "r1", &["x"], &["y"]),
        node("Relu", "r2", &["x"], &["y2"]),
    ]);
    p.graph
        .as_mut()
        .unwrap()
        .output
        .push(f32_info("y2", &[2, 3]));
    assert_refused(&lift(p), "cse", "Relu", "two graph outputs");
}

#[test]
fn keeps_equal_custom_nodes_apart() {
    let mut c1 = node("Sample", "c1", &["x"], &["a"]);
    c1.domain = "com.example".into();
    let mut c2 = c1.clone();
    c2.name = "c2".into();
    c2.output = vec!["b".into()];
    let mut p = model_with(vec![c1, c2, node("Add", "add", &["a", "b"], &["y"])]);
    p.opset_import
        .push(onnxsmith::onnx::proto::OperatorSetIdProto {
            domain: "com.example".into(),
            version: 1,
        });
    let (out, _) = run_passes(&lift(p), &["cse"]);
    assert_eq!(out.graph.node_count(), 3);
}

// ---- eliminate-noop ----

#[test]
fn eliminates_noop_transpose_concat_pad_and_cast() {
    let mut t = node("Transpose", "t", &["a"], &["b"]);
    t.attribute.push(common::attr_ints("perm", &[0, 1]));
    let mut c = node("Concat", "c", &["b"], &["d"]);
    c.attribute.push(common::attr_int("axis", 0));
    let mut cast = node("Cast", "cast", &["x"], &["xc"]);
    cast.attribute.push(common::attr_int("to", 1));
    let mut p = model_with(vec![
        cast,
        node("Relu", "relu", &["xc"], &["a"]),
        t,
        c,
        node("Pad", "pad", &["d", "pads"], &["e"]),
        node("Neg", "neg", &["e"], &["y"]),
    ]);
    p.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(tensor("pads", 7, &[4], vec![0; 32]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-noop"]);
    assert_eq!(out.graph.node_count(), 2, "only Relu and Neg remain");
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_transposes_that_permute() {
    let mut t = node("Transpose", "t", &["a"], &["b"]);
    t.attribute.push(common::attr_ints("perm", &[1, 0]));
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        t,
        node("Neg", "neg", &["b"], &["y"]),
    ]);
    p.graph.as_mut().unwrap().output[0] = f32_info("y", &[3, 2]);
    let (out, report) = run_passes(&lift(p), &["eliminate-noop"]);
    assert_eq!(count_op(&out, "Transpose"), 1);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_casts_of_untrusted_inner_values() {
    // a comes from an operator nothing can analyse; its declared type says f32 but nothing
    // proves it, so the Cast stays.
    let mut opaque = node("Mystery", "mystery", &["x"], &["a"]);
    opaque.domain = "com.example".into();
    let mut cast = node("Cast", "cast", &["a"], &["b"]);
    cast.attribute.push(common::attr_int("to", 1));
    let mut p = model_with(vec![opaque, cast, node("Neg", "neg", &["b"], &["y"])]);
    p.opset_import
        .push(onnxsmith::onnx::proto::OperatorSetIdProto {
            domain: "com.example".into(),
            version: 1,
        });
    p.graph
        .as_mut()
        .unwrap()
        .value_info
        .push(f32_info("a", &[2, 3]));
    let (out, report) = run_passes(&lift(p), &["eliminate-noop"]);
    assert_eq!(count_op(&out, "Cast"), 1);
    assert!(report.steps.is_empty());
}

#[test]
fn eliminates_casts_tract_proves_redundant() {
    // Relu keeps x's f32, which tract proves; the Cast back to f32 does nothing.
    let mut cast = node("Cast", "cast", &["a"], &["b"]);
    cast.attribute.push(common::attr_int("to", 1));
    let m = lift(model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        cast,
        node("Neg", "neg", &["b"], &["y"]),
    ]));
    let (out, _) = run_passes(&m, &["eliminate-noop"]);
    assert_eq!(count_op(&out, "Cast"), 0);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_noop_between_graph_input_and_output() {
    let mut t = node("Transpose", "t", &["x"], &["y"]);
    t.attribute.push(common::attr_ints("perm", &[0, 1]));
    assert_refused(
        &lift(model_with(vec![t])),
        "eliminate-noop",
        "Transpose",
        "interface",
    );
}

/// y = Slice(x, starts, ends, axes) over x: f32[batch, 4, 6].
fn slice_model(starts: &[i64], ends: &[i64], axes: &[i64]) -> ModelProto {
    let mut x = f32_info("x", &[1, 4, 6]);
    let mut y = f32_info("y", &[1, 4, 6]);
    common::symbolic(&mut x, 0, Some("batch"));
    common::symbolic(&mut y, 0, Some("batch"));
    let n = starts.len() as i64;
    common::model_io(
        vec![node(
            "Slice",
            "slice",
            &["x", "starts", "ends", "axes"],
            &["y"],
        )],
        vec![x],
        vec![y],
        vec![
            i64_tensor("starts", &[n], starts),
            i64_tensor("ends", &[n], ends),
            i64_tensor("axes", &[n], axes),
        ],
    )
}

#[test]
fn eliminates_slices_of_whole_axes_even_symbolic_ones() {
    // Inside a Relu chain, so that the Slice's input is internal and its removal renames
    // nothing.
    for (ends, axes) in [
        (vec![i64::MAX], vec![0]),
        (vec![i32::MAX as i64, i64::MAX], vec![0, 2]),
    ] {
        let mut p = slice_model(&vec![0; ends.len()], &ends, &axes);
        let g = p.graph.as_mut().unwrap();
        g.node.insert(0, node("Relu", "relu", &["x"], &["r"]));
        g.node[1].input[0] = "r".into();
        let m = lift(p);
        let (out, _) = run_passes(&m, &["eliminate-noop", "dead-code"]);
        assert_eq!(count_op(&out, "Slice"), 0, "ends {ends:?} axes {axes:?}");
        if axes == [0] {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn eliminates_slices_of_whole_axes_inside_bodies_where_no_facts_reach() {
    // then-branch: r = Relu(Slice(a, [0], [INT64_MAX], [1])), a captured from the outer graph.
    let mut p = common::if_model();
    let g = p.graph.as_mut().unwrap();
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node = vec![
        node("Slice", "slice", &["a", "starts", "ends", "axes"], &["s"]),
        node("Relu", "relu_s", &["s"], &["r"]),
    ];
    then.initializer = vec![
        i64_tensor("starts", &[1], &[0]),
        i64_tensor("ends", &[1], &[i64::MAX]),
        i64_tensor("axes", &[1], &[1]),
    ];
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-noop", "dead-code"]);
    assert_eq!(count_op(&out, "Slice"), 0, "{:?}", report.explain);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_slices_that_do_not_take_whole_axes() {
    for (starts, ends) in [([1], [i64::MAX]), ([0], [3])] {
        let mut p = slice_model(&starts, &ends, &[2]);
        p.graph.as_mut().unwrap().output[0] = f32_info("y", &[1, 4, 3]);
        common::symbolic(&mut p.graph.as_mut().unwrap().output[0], 0, Some("batch"));
        let m = lift(p);
        let (out, _) = run_passes(&m, &["eliminate-noop"]);
        assert_eq!(
            count_op(&out, "Slice"),
            1,
            "starts {starts:?} ends {ends:?}"
        );
    }
}

#[test]
fn eliminates_shape_preserving_ops_and_neutral_arithmetic() {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Reshape", "reshape", &["a", "same_shape"], &["b"]),
        node(
            "Slice",
            "slice",
            &["b", "zero", "big", "zero", "one"],
            &["c"],
        ),
        node("Expand", "expand", &["c", "row"], &["d"]),
        node("Add", "add", &["zeros", "d"], &["e"]),
        node("Mul", "mul", &["e", "ones"], &["f"]),
        node("Div", "div", &["f", "ones"], &["g"]),
        node("Sub", "sub", &["g", "zeros"], &["h"]),
        node("Tile", "tile", &["h", "unit_repeats"], &["i"]),
        node("Neg", "neg", &["i"], &["y"]),
    ]);
    p.graph.as_mut().unwrap().initializer = vec![
        i64_tensor("same_shape", &[2], &[2, 3]),
        i64_tensor("zero", &[1], &[0]),
        i64_tensor("big", &[1], &[i64::MAX]),
        i64_tensor("one", &[1], &[1]),
        i64_tensor("row", &[2], &[1, 3]),
        i64_tensor("unit_repeats", &[2], &[1, 1]),
        f32_tensor("zeros", &[3], &[0.0; 3]),
        f32_tensor("ones", &[1], &[1.0]),
    ];
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-noop"]);
    assert_eq!(out.graph.node_count(), 2, "only Relu and Neg remain");
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_neutral_arithmetic_that_broadcasts_and_reversing_slices() {
    // zeros[4, 2, 3] + x grows x to [4, 2, 3]; a full Slice with step -1 reverses.
    let mut p = model_with(vec![
        node("Add", "add", &["x", "zeros"], &["a"]),
        node(
            "Slice",
            "slice",
            &["a", "minus_one", "low", "zero", "minus_one"],
            &["y"],
        ),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer = vec![
        f32_tensor("zeros", &[4, 2, 3], &[0.0; 24]),
        i64_tensor("minus_one", &[1], &[-1]),
        i64_tensor("low", &[1], &[i64::MIN]),
        i64_tensor("zero", &[1], &[0]),
    ];
    g.output = vec![f32_info("y", &[4, 2, 3])];
    let m = lift(p);
    let (out, report) = run_passes(&m, &["eliminate-noop"]);
    assert_eq!(out.graph.node_count(), 2);
    assert!(report.steps.is_empty());
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_arithmetic_with_other_constants() {
    let mut p = model_with(vec![node("Mul", "mul", &["x", "twos"], &["y"])]);
    p.graph.as_mut().unwrap().initializer = vec![f32_tensor("twos", &[1], &[2.0])];
    let (out, report) = run_passes(&lift(p), &["eliminate-noop"]);
    assert_eq!(count_op(&out, "Mul"), 1);
    assert!(report.steps.is_empty());
}

// ---- merge-transposes, merge-reshapes, commute-constants ----

fn transpose(name: &str, x: &str, y: &str, perm: Option<&[i64]>) -> NodeProto {
    let mut t = node("Transpose", name, &[x], &[y]);
    if let Some(p) = perm {
        t.attribute.push(common::attr_ints("perm", p));
    }
    t
}

fn transposes(p1: Option<&[i64]>, p2: Option<&[i64]>) -> onnxsmith::ir::Model {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        transpose("t1", "a", "b", p1),
        transpose("t2", "b", "c", p2),
        node("Neg", "neg", &["c"], &["y"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.input = vec![f32_info("x", &[2, 3, 4])];
    g.output = vec![f32_info("y", &[3, 4, 2])];
    lift(p)
}

#[test]
fn merges_consecutive_transposes() {
    let m = transposes(Some(&[2, 0, 1]), Some(&[2, 1, 0]));
    let (out, _) = run_passes(&m, &["merge-transposes", "dead-code"]);
    assert_eq!(count_op(&out, "Transpose"), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_transposes_with_implicit_perms() {
    assert_refused(
        &transposes(None, Some(&[1, 2, 0])),
        "merge-transposes",
        "Transpose",
        "a perm is implicit",
    );
}

fn reshapes(inner: NodeProto, target: &[i64]) -> onnxsmith::ir::Model {
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        inner,
        node("Reshape", "reshape", &["b", "target"], &["c"]),
        node("Neg", "neg", &["c"], &["y"]),
    ]);
    let g = p.graph.as_mut().unwrap();
    g.initializer = vec![
        i64_tensor("inner_target", &[3], &[3, 2, 1]),
        i64_tensor("target", &[target.len() as i64], target),
    ];
    g.output = vec![f32_info("y", &[6])];
    lift(p)
}

#[test]
fn merges_reshapes_after_reshaping_ops() {
    for inner in [
        node("Reshape", "inner", &["a", "inner_target"], &["b"]),
        with_attr(node("Flatten", "inner", &["a"], &["b"]), "axis", 0),
    ] {
        let m = reshapes(inner, &[-1]);
        let (out, _) = run_passes(&m, &["merge-reshapes", "dead-code"]);
        assert_eq!(out.graph.node_count(), 3, "Relu, Reshape, Neg");
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn keeps_reshapes_whose_target_copies_a_dim() {
    let inner = node("Reshape", "inner", &["a", "inner_target"], &["b"]);
    let (out, report) = run_passes(&reshapes(inner, &[0, -1]), &["merge-reshapes"]);
    assert_eq!(count_op(&out, "Reshape"), 2);
    assert_explained(&report, "copies a dim");
}

#[test]
fn moves_constants_second_so_cse_merges() {
    let mut p = model_with(vec![
        node("Add", "a1", &["k", "x"], &["a"]),
        node("Add", "a2", &["x", "k"], &["b"]),
        node("Mul", "mul", &["a", "b"], &["y"]),
    ]);
    p.graph.as_mut().unwrap().initializer = vec![f32_tensor("k", &[1], &[0.5])];
    let m = lift(p);
    let (out, _) = run_passes(&m, &["commute-constants", "cse"]);
    assert_eq!(count_op(&out, "Add"), 1);
    assert_same_outputs(&m, &out);
    // Sub does not commute.
    let mut p = model_with(vec![node("Sub", "sub", &["k", "x"], &["y"])]);
    p.graph.as_mut().unwrap().initializer = vec![f32_tensor("k", &[1], &[0.5])];
    let (_, report) = run_passes(&lift(p), &["commute-constants"]);
    assert!(report.steps.is_empty());
}

// ---- merge-squeezes, and Squeeze/Unsqueeze pairs that cancel ----

/// x[2, 3] ─▶ Relu ─▶ a ─▶ first(a, axes1) ─▶ b ─▶ second(b, axes2) ─▶ c ─▶ Neg ─▶ y, with
/// the axes as inputs (opset 17) or, at opset 11, as attributes.
fn squeezes(
    ops: [&str; 2],
    axes: [&[i64]; 2],
    y_dims: &[i64],
    opset: i64,
) -> onnxsmith::onnx::proto::ModelProto {
    let mut first = node(ops[0], "first", &["a", "axes1"], &["b"]);
    let mut second = node(ops[1], "second", &["b", "axes2"], &["c"]);
    let mut p = model_with(vec![]);
    let g = p.graph.as_mut().unwrap();
    if opset < 13 {
        for (n, a) in [(&mut first, axes[0]), (&mut second, axes[1])] {
            n.input.truncate(1);
            n.attribute.push(common::attr_ints("axes", a));
        }
    } else {
        g.initializer = vec![
            i64_tensor("axes1", &[axes[0].len() as i64], axes[0]),
            i64_tensor("axes2", &[axes[1].len() as i64], axes[1]),
        ];
    }
    g.node = vec![
        node("Relu", "relu", &["x"], &["a"]),
        first,
        second,
        node("Neg", "neg", &["c"], &["y"]),
    ];
    g.output = vec![f32_info("y", y_dims)];
    p.opset_import[0].version = opset;
    p
}

/// The two ops, their axes, and the result's dims.
type SqueezeCase<'a> = ([&'a str; 2], [&'a [i64]; 2], &'a [i64]);

#[test]
fn merges_unsqueezes_and_squeezes() {
    let cases: [SqueezeCase; 4] = [
        // [2, 3] ─▶ [1, 2, 3] ─▶ [1, 2, 1, 3]: axes [0, 2] of the result.
        (["Unsqueeze", "Unsqueeze"], [&[0], &[2]], &[1, 2, 1, 3]),
        // Negative axes, renumbered with the ranks tract infers: [2, 3, 1] ─▶ [2, 1, 3, 1].
        (["Unsqueeze", "Unsqueeze"], [&[-1], &[1]], &[2, 1, 3, 1]),
        // Back down: [2, 3] ─▶ [1, 2, 1, 3] ─▶ [2, 1, 3] ─▶ [2, 3] (axes 0 and 2 of the input).
        (["Unsqueeze", "Squeeze"], [&[0, 2], &[0]], &[2, 1, 3]),
        (["Squeeze", "Squeeze"], [&[0], &[1]], &[2, 3]),
    ];
    for (ops, axes, y) in cases {
        for opset in [11, 17] {
            let mut p = squeezes(ops, axes, y, opset);
            if ops[0] == "Squeeze" {
                // Squeeze∘Squeeze needs unit dims to take out: start from x[1, 2, 1, 3].
                p.graph.as_mut().unwrap().input = vec![f32_info("x", &[1, 2, 1, 3])];
            }
            let m = lift(p);
            let (out, report) = run_passes(&m, &["merge-squeezes", "dead-code"]);
            let merged = ops[0] == ops[1];
            assert_eq!(
                out.graph.node_count(),
                if merged { 3 } else { 4 },
                "{ops:?} {axes:?} opset {opset}: {:?}",
                report.explain
            );
            if merged && opset == 17 && axes[0] == [0] {
                insta::assert_snapshot!(
                    format!("merges_{}", ops[0].to_lowercase()),
                    before_after(&m, &out)
                );
            }
            assert_same_outputs(&m, &out);
        }
    }
}

#[test]
fn keeps_squeezes_whose_first_output_has_other_readers() {
    let mut p = squeezes(["Unsqueeze", "Unsqueeze"], [&[0], &[2]], &[1, 2, 1, 3], 17);
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Relu", "other", &["b"], &["z"]));
    g.output.push(f32_info("z", &[1, 2, 3]));
    let (out, report) = run_passes(&lift(p), &["merge-squeezes"]);
    assert_eq!(count_op(&out, "Unsqueeze"), 2);
    assert_explained(
        &report,
        "the first op's output has other readers (2 reads: Unsqueeze 'second', Relu 'other')",
    );
}

#[test]
fn merges_an_unsqueeze_read_by_two_unsqueezes_into_both() {
    let mut p = squeezes(["Unsqueeze", "Unsqueeze"], [&[0], &[2]], &[1, 2, 1, 3], 17);
    let g = p.graph.as_mut().unwrap();
    let mut third = node("Unsqueeze", "third", &["b", "axes3"], &["d"]);
    third.name = "third".into();
    g.node.push(third);
    g.initializer.push(i64_tensor("axes3", &[1], &[0]));
    g.output.push(f32_info("d", &[1, 1, 2, 3]));
    let m = lift(p);
    let (out, report) = run_passes(&m, &["merge-squeezes", "dead-code"]);
    assert_eq!(count_op(&out, "Unsqueeze"), 2);
    assert_eq!(m.graph.node_count() - out.graph.node_count(), 1);
    assert!(report.explain.is_empty(), "{:#?}", report.explain);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_squeezes_whose_axes_are_unknown() {
    // Axes computed at run time, and a Squeeze of every unit dim.
    let mut p = squeezes(["Unsqueeze", "Unsqueeze"], [&[0], &[2]], &[1, 2, 1, 3], 17);
    let g = p.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "axes2");
    g.input.push(common::info("axes2", 7, &[1]));
    let (out, report) = run_passes(&lift(p), &["merge-squeezes"]);
    assert_eq!(count_op(&out, "Unsqueeze"), 2);
    assert_explained(&report, "axes are not constant");

    let mut p = squeezes(["Squeeze", "Squeeze"], [&[0], &[1]], &[2, 3], 17);
    let g = p.graph.as_mut().unwrap();
    g.input = vec![f32_info("x", &[1, 2, 1, 3])];
    g.node[2].input.truncate(1);
    assert_refused(
        &lift(p),
        "merge-squeezes",
        "Squeeze",
        "axes are not constant",
    );
}

#[test]
fn eliminates_an_unsqueeze_that_undoes_a_squeeze() {
    for (ops, axes, x) in [
        (
            ["Squeeze", "Unsqueeze"],
            [&[1i64][..], &[-2][..]],
            &[2i64, 1, 3][..],
        ),
        (["Unsqueeze", "Squeeze"], [&[0, 2], &[2, 0]], &[2, 3]),
    ] {
        let mut p = squeezes(ops, axes, x, 17);
        p.graph.as_mut().unwrap().input = vec![f32_info("x", x)];
        let m = lift(p);
        let (out, report) = run_passes(&m, &["eliminate-noop", "dead-code"]);
        assert_eq!(out.graph.node_count(), 2, "{ops:?}: {:?}", report.explain);
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn keeps_an_unsqueeze_that_puts_back_other_axes() {
    let mut p = squeezes(["Squeeze", "Unsqueeze"], [&[1], &[0]], &[1, 2, 3], 17);
    p.graph.as_mut().unwrap().input = vec![f32_info("x", &[2, 1, 3])];
    let m = lift(p);
    let (out, _) = run_passes(&m, &["eliminate-noop"]);
    assert_eq!(out.graph.node_count(), 4);
}

#[test]
fn keeps_a_noop_whose_declared_output_type_clashes() {
    // A wrong declaration: the Identity's output claims i64. Removing it used to fail the pass.
    let mut p = model_with(vec![
        node("Relu", "relu", &["x"], &["a"]),
        node("Identity", "id", &["a"], &["b"]),
        node("Neg", "neg", &["b"], &["y"]),
    ]);
    let infos = &mut p.graph.as_mut().unwrap().value_info;
    infos.push(f32_info("a", &[2, 3]));
    infos.push(common::info("b", 7, &[2, 3]));
    assert_refused(
        &lift(p),
        "eliminate-identity",
        "Identity",
        "declared types of its input and output clash",
    );
}

#[test]
fn merges_unsqueezes_of_an_axis_past_any_rank_without_listing_it() {
    // Found by the coverage-guided fuzzer: an axis of 2^33 + 1 (invalid, so tract infers no
    // rank and nothing checks it) made the renumbering list every position up to it, and the
    // process ran out of memory. The merged op keeps the invalid axis, renumbered like any.
    let far = (1i64 << 33) + 1;
    let p = squeezes(
        ["Unsqueeze", "Unsqueeze"],
        [&[0, far], &[2]],
        &[1, 2, 1, 3],
        17,
    );
    let (out, _) = run_passes(&lift(p), &["merge-squeezes", "dead-code"]);
    assert_eq!(count_op(&out, "Unsqueeze"), 1);
    let printed = onnxsmith::ir::print::print_model(&out);
    assert!(
        printed.contains(&format!("[0, 2, {}]", far + 1)),
        "{printed}"
    );
}

/// `y = If(c) { then: (x + W1) + W2 } else { x + W2 }`, W1 and W2 initializers of the main
/// graph that the branches read by capture.
fn if_reading_outer_weights() -> onnxsmith::ir::Model {
    use common::branch;
    let mut iff = node("If", "if", &["c"], &["y"]);
    iff.attribute = vec![
        branch(
            "then_branch",
            vec![
                node("Add", "then_a", &["x", "W1"], &["t"]),
                node("Add", "then_b", &["t", "W2"], &["r"]),
            ],
        ),
        branch(
            "else_branch",
            vec![node("Add", "else_a", &["x", "W2"], &["r"])],
        ),
    ];
    let mut p = model_with(vec![iff]);
    let g = p.graph.as_mut().unwrap();
    g.input.push(common::info("c", 9, &[]));
    g.initializer = vec![
        common::f32_tensor("W1", &[2, 3], &common::values(6, 1)),
        common::f32_tensor("W2", &[2, 3], &common::values(6, 2)),
    ];
    lift(p)
}

#[test]
fn sinks_a_weight_one_branch_alone_reads_into_it() {
    let m = if_reading_outer_weights();
    let (out, report) = run_passes(&m, &["sink-captured-constants", "dead-code"]);
    assert_eq!(report.steps[0], "sink-captured-constants");
    let g = &out.graph;
    let outer: Vec<&str> = g
        .initializers()
        .iter()
        .map(|&v| g.value(v).name())
        .collect();
    assert_eq!(outer, ["W2"], "W2 is read by both branches: it stays");
    let then = common::body(g, "If", "then_branch");
    let inner: Vec<&str> = then
        .initializers()
        .iter()
        .map(|&v| then.value(v).name())
        .collect();
    assert_eq!(inner, ["W1"], "W1 keeps its name in the body");
    assert!(then
        .captures()
        .iter()
        .all(|&c| then.value(c).name() != "W1"));
    assert_same_outputs(&m, &out);
    insta::assert_snapshot!(before_after(&m, &out));
}

#[test]
fn keeps_a_weight_the_graph_itself_reads_too() {
    let m = if_reading_outer_weights();
    let mut p = m.to_proto().unwrap();
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Mul", "outer_mul", &["y", "W1"], &["z"]));
    g.output = vec![f32_info("z", &[2, 3])];
    let m = lift(p);
    let (out, report) = run_passes(&m, &["sink-captured-constants"]);
    assert!(report.steps.is_empty(), "{:?}", report.steps);
    assert_eq!(out.graph.initializers().len(), 2);
}
