//! Folding passes.

mod common;

use common::{
    assert_same_outputs, attr_int, before_after, count_op, f32_info, lift, model_io, node,
    run_passes, tensor,
};
use onnxsmith::onnx::proto::ModelProto;

fn i64_tensor(name: &str, dims: &[i64], v: &[i64]) -> onnxsmith::onnx::proto::TensorProto {
    tensor(
        name,
        7,
        dims,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), i0)), Unsqueeze(Gather(Shape(x), i1)), [2], [3]))
/// with x: f32[batch, 4, 6] and y: f32[batch, 4, 2, 3].
fn reshape_model(i0: i64, i1: i64, tail: &[i64]) -> ModelProto {
    let mut nodes = vec![node("Shape", "shape", &["x"], &["s"])];
    for k in 0..2 {
        let mut gather = node(
            "Gather",
            &format!("gather{k}"),
            &["s", &format!("i{k}")],
            &[&format!("g{k}")],
        );
        gather.attribute.push(attr_int("axis", 0));
        nodes.push(gather);
        nodes.push(node(
            "Unsqueeze",
            &format!("unsq{k}"),
            &[&format!("g{k}"), "zero"],
            &[&format!("u{k}")],
        ));
    }
    let mut concat = node("Concat", "concat", &["u0", "u1", "tail"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    nodes.push(concat);
    nodes.push(node("Reshape", "reshape", &["x", "target"], &["y"]));
    let mut x = f32_info("x", &[1, 4, 6]);
    let mut y = f32_info("y", &[1, 4, 2, 3]);
    for v in [&mut x, &mut y] {
        if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape.as_mut().unwrap().dim[0].value = Some(
                onnxsmith::onnx::proto::tensor_shape_proto::dimension::Value::DimParam(
                    "batch".into(),
                ),
            );
        }
    }
    model_io(
        nodes,
        vec![x],
        vec![y],
        vec![
            i64_tensor("i0", &[], &[i0]),
            i64_tensor("i1", &[], &[i1]),
            i64_tensor("zero", &[1], &[0]),
            i64_tensor("tail", &[tail.len() as i64], tail),
        ],
    )
}

#[test]
fn folds_shape_computed_reshape_target_keeping_dims_dynamic() {
    let m = lift(reshape_model(0, 1, &[2, 3]));
    let (out, _) = run_passes(&m, &["fold-reshape-target", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1, "only the Reshape is left");
    let target = out.graph.initializers()[0];
    assert_eq!(
        out.graph
            .value(target)
            .constant()
            .unwrap()
            .to_i64_vec()
            .unwrap(),
        [0, 0, 2, 3]
    );
    let y = out.graph.outputs()[0].value;
    assert_eq!(
        out.graph.shape(y).unwrap()[0],
        onnxsmith::ir::Dim::Sym("batch".into())
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_reshape_target_that_moves_dims() {
    // dims 1 and 0 swapped: a 0 would copy the wrong dim.
    let m = lift(reshape_model(1, 0, &[2, 3]));
    let (out, report) = run_passes(&m, &["fold-reshape-target"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert!(
        report
            .explain
            .iter()
            .any(|e| e.contains("neither a constant nor the same dim")),
        "{:?}",
        report.explain
    );
}

#[test]
fn keeps_reshape_target_with_a_constant_zero() {
    let m = lift(reshape_model(0, 1, &[0, 6]));
    let (_, report) = run_passes(&m, &["fold-reshape-target"]);
    assert!(
        report.explain.iter().any(|e| e.contains("holds 0")),
        "{:?}",
        report.explain
    );
}

#[test]
fn keeps_reshape_with_allowzero() {
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    let last = g.node.len() - 1;
    g.node[last].attribute.push(attr_int("allowzero", 1));
    let (out, report) = run_passes(&lift(p), &["fold-reshape-target"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert!(
        report.explain.iter().any(|e| e.contains("allowzero")),
        "{:?}",
        report.explain
    );
}

#[test]
fn keeps_reshape_target_that_is_not_a_concat() {
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    let last = g.node.len() - 1;
    g.node[last].input[1] = "s".into();
    g.output[0] = f32_info("y", &[1, 4, 6]);
    let (_, report) = run_passes(&lift(p), &["fold-reshape-target"]);
    assert!(
        report.explain.iter().any(|e| e.contains("not a Concat")),
        "{:?}",
        report.explain
    );
}

// ---- fold-constants ----

fn f32_t(name: &str, dims: &[i64], v: &[f32]) -> onnxsmith::onnx::proto::TensorProto {
    common::f32_tensor(name, dims, v)
}

#[test]
fn folds_constant_subexpressions() {
    let p = model_io(
        vec![
            node("Mul", "scale", &["w", "s"], &["ws"]),
            node("Add", "shift", &["ws", "b"], &["k"]),
            node("Mul", "apply", &["x", "k"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![
            f32_t("w", &[3], &[1.0, 2.0, 3.0]),
            f32_t("s", &[], &[0.5]),
            f32_t("b", &[3], &[1.0, 1.0, 1.0]),
        ],
    );
    let m = lift(p);
    let (out, _) = run_passes(&m, &["fold-constants", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1);
    let k = out
        .graph
        .find("k")
        .expect("the folded value keeps its name");
    assert_eq!(
        out.graph.value(k).constant().unwrap().to_f32_vec().unwrap(),
        [1.5, 2.0, 2.5]
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_folds_that_would_bloat_the_file() {
    // Expand of a scalar to 2M floats (8 MB out of 4 bytes in), read by a non-constant Gather.
    let idx = common::info("idx", 7, &[2]);
    let p = model_io(
        vec![
            node("Expand", "expand", &["one", "shape"], &["big"]),
            node("Gather", "pick", &["big", "idx"], &["y"]),
        ],
        vec![idx],
        vec![f32_info("y", &[2, 2048])],
        vec![f32_t("one", &[], &[1.0]), {
            let v: Vec<u8> = [1024i64, 2048]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            tensor("shape", 7, &[2], v)
        }],
    );
    let m = lift(p);
    let (out, report) = run_passes(&m, &["fold-constants"]);
    assert_eq!(count_op(&out, "Expand"), 1);
    assert!(
        report.explain.iter().any(|e| e.contains("more than its")),
        "{:?}",
        report.explain
    );
    // A larger limit lets it through.
    let mut folded = m.clone();
    let opts = onnxsmith::passes::PipelineOptions {
        only: Some(vec!["fold-constants".into()]),
        fold_limit: Some(16 << 20),
        ..Default::default()
    };
    onnxsmith::passes::run_pipeline(&mut folded, &opts).unwrap();
    assert_eq!(count_op(&folded, "Expand"), 0);
}

#[test]
fn keeps_dequantize_linear_of_weights() {
    let p = model_io(
        vec![
            node("DequantizeLinear", "dq", &["q", "scale", "zp"], &["w"]),
            node("Mul", "mul", &["x", "w"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![
            tensor("q", 3, &[3], vec![1, 2, 3]),
            f32_t("scale", &[], &[0.1]),
            tensor("zp", 3, &[], vec![0]),
        ],
    );
    let (out, report) = run_passes(&lift(p), &["fold-constants"]);
    assert_eq!(count_op(&out, "DequantizeLinear"), 1);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_nodes_reading_overridable_initializers() {
    let mut p = model_io(
        vec![
            node("Mul", "scale", &["w", "s"], &["k"]),
            node("Mul", "apply", &["x", "k"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3]), f32_info("s", &[])],
        vec![f32_info("y", &[2, 3])],
        vec![f32_t("w", &[3], &[1.0, 2.0, 3.0]), f32_t("s", &[], &[0.5])],
    );
    p.ir_version = 8;
    let (out, report) = run_passes(&lift(p), &["fold-constants"]);
    assert_eq!(
        out.graph.node_count(),
        2,
        "s is a graph input with a default, not a constant"
    );
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_custom_ops_unfolded() {
    let mut custom = node("Scale", "custom", &["w"], &["k"]);
    custom.domain = "com.example".into();
    let mut p = model_io(
        vec![custom, node("Mul", "apply", &["x", "k"], &["y"])],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![f32_t("w", &[3], &[1.0, 2.0, 3.0])],
    );
    p.opset_import
        .push(onnxsmith::onnx::proto::OperatorSetIdProto {
            domain: "com.example".into(),
            version: 1,
        });
    let (out, report) = run_passes(&lift(p), &["fold-constants"]);
    assert_eq!(out.graph.node_count(), 2);
    assert!(report.steps.is_empty());
}

#[test]
fn keeps_constant_nodes_that_are_graph_outputs() {
    let p = model_io(
        vec![node("Mul", "scale", &["w", "s"], &["y"])],
        vec![],
        vec![f32_info("y", &[3])],
        vec![f32_t("w", &[3], &[1.0, 2.0, 3.0]), f32_t("s", &[], &[0.5])],
    );
    let (out, report) = run_passes(&lift(p), &["fold-constants"]);
    assert_eq!(out.graph.node_count(), 1);
    assert!(report.steps.is_empty());
}

// ---- fold-shape ----

/// y = Reshape(x, Concat(Shape(x, start=1) ...)): x: f32[batch, 4, 6] ─▶ Shape of a static slice.
fn shape_model(start: i64) -> ModelProto {
    let mut shape = node("Shape", "shape", &["x"], &["s"]);
    shape.attribute.push(attr_int("start", start));
    let mut concat = node("Concat", "concat", &["minus_one", "s"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    g.node = vec![
        shape,
        concat,
        node("Reshape", "reshape", &["x", "target"], &["y"]),
    ];
    g.initializer = vec![i64_tensor("minus_one", &[1], &[-1])];
    let mut y = f32_info("y", &[1, 4, 6]);
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        y.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[0].value = Some(
            onnxsmith::onnx::proto::tensor_shape_proto::dimension::Value::DimParam("batch".into()),
        );
    }
    g.output = vec![y];
    p
}

#[test]
fn folds_shape_of_static_dims_keeping_the_batch_dynamic() {
    let m = lift(shape_model(1));
    let (out, _) = run_passes(&m, &["fold-shape", "fold-constants", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1, "only the Reshape is left");
    let target = out
        .graph
        .node(out.graph.node_ids().next().unwrap())
        .input(1)
        .unwrap();
    assert_eq!(
        out.graph
            .value(target)
            .constant()
            .unwrap()
            .to_i64_vec()
            .unwrap(),
        [-1, 4, 6]
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_shape_of_dynamic_dims() {
    let m = lift(shape_model(0));
    let (out, report) = run_passes(&m, &["fold-shape"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert!(
        report
            .explain
            .iter()
            .any(|e| e.contains("depend on dynamic input dims")),
        "{:?}",
        report.explain
    );
}

#[test]
fn ignores_declared_shapes_of_inner_values() {
    // value_info claims x's Relu output is [1, 4, 6]; the batch is still dynamic.
    let mut p = shape_model(0);
    let g = p.graph.as_mut().unwrap();
    g.node.insert(0, node("Relu", "relu", &["x"], &["r"]));
    g.node[1].input[0] = "r".into();
    g.value_info.push(f32_info("r", &[1, 4, 6]));
    let (out, _) = run_passes(&lift(p), &["fold-shape"]);
    assert_eq!(count_op(&out, "Shape"), 1);
}

#[test]
fn keeps_shape_that_is_a_graph_output() {
    let mut p = shape_model(1);
    let g = p.graph.as_mut().unwrap();
    let s = common::info("s", 7, &[2]);
    g.output.push(s);
    let (out, report) = run_passes(&lift(p), &["fold-shape"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert!(
        report.explain.iter().any(|e| e.contains("graph output")),
        "{:?}",
        report.explain
    );
}

/// y = Reshape(x, Concat(Slice(Shape(x), [start], [end]), [-1])), x: f32[batch, 4, 6].
fn flatten_model(start: i64, end: i64) -> ModelProto {
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    let mut concat = node("Concat", "concat", &["head", "minus_one"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    g.node = vec![
        node("Shape", "shape", &["x"], &["s"]),
        node(
            "Slice",
            "slice",
            &["s", "starts", "ends", "axes"],
            &["head"],
        ),
        concat,
        node("Reshape", "reshape", &["x", "target"], &["y"]),
    ];
    g.initializer = vec![
        i64_tensor("starts", &[1], &[start]),
        i64_tensor("ends", &[1], &[end]),
        i64_tensor("axes", &[1], &[0]),
        i64_tensor("minus_one", &[1], &[-1]),
    ];
    let mut y = f32_info("y", &[1, 24]);
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        y.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[0].value = Some(
            onnxsmith::onnx::proto::tensor_shape_proto::dimension::Value::DimParam("batch".into()),
        );
        t.shape.as_mut().unwrap().dim[1].value = None;
    }
    g.output = vec![y];
    p
}

#[test]
fn folds_sliced_shape_flatten_target() {
    let m = lift(flatten_model(0, 1));
    let (out, _) = run_passes(&m, &["fold-reshape-target", "dead-code"]);
    assert_eq!(out.graph.node_count(), 1, "only the Reshape is left");
    let target = out
        .graph
        .node(out.graph.node_ids().next().unwrap())
        .input(1)
        .unwrap();
    assert_eq!(
        out.graph
            .value(target)
            .constant()
            .unwrap()
            .to_i64_vec()
            .unwrap(),
        [0, -1]
    );
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_sliced_shape_that_does_not_start_at_its_position() {
    let m = lift(flatten_model(1, 2));
    let (out, report) = run_passes(&m, &["fold-reshape-target"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert!(
        report
            .explain
            .iter()
            .any(|e| e.contains("neither a constant nor the same dim")),
        "{:?}",
        report.explain
    );
}
