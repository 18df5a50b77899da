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
