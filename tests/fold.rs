//! Folding passes.

mod common;

use common::{
    assert_explained, assert_refused, assert_same_outputs, attr_int, before_after, count_op,
    f32_info, i64_tensor, lift, model_io, node, run_passes, tensor,
};
use onnxsmith::onnx::proto::{ModelProto, NodeProto};

/// Shape folding as the pipeline runs it: the folds, then what they leave dead.
const SHAPE_FOLD: &[&str] = &["fold-shape", "fold-constants", "dead-code"];

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
        common::symbolic(v, 0, Some("batch"));
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
    assert_explained(&report, "neither a constant nor the same dim");
}

#[test]
fn keeps_reshape_target_with_a_constant_zero() {
    let m = lift(reshape_model(0, 1, &[0, 6]));
    let (_, report) = run_passes(&m, &["fold-reshape-target"]);
    assert_explained(&report, "holds 0");
}

#[test]
fn keeps_reshape_with_allowzero() {
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    let last = g.node.len() - 1;
    g.node[last].attribute.push(attr_int("allowzero", 1));
    let (out, report) = run_passes(&lift(p), &["fold-reshape-target"]);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert_explained(&report, "allowzero");
}

#[test]
fn keeps_reshape_target_that_is_not_a_concat() {
    let mut p = reshape_model(0, 1, &[2, 3]);
    let g = p.graph.as_mut().unwrap();
    let last = g.node.len() - 1;
    g.node[last].input[1] = "s".into();
    g.output[0] = f32_info("y", &[1, 4, 6]);
    let (_, report) = run_passes(&lift(p), &["fold-reshape-target"]);
    assert_explained(&report, "not a Concat");
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
    assert_refused(&m, "fold-constants", "Expand", "more than its");
    // A larger limit lets it through.
    let mut folded = m.clone();
    let opts = onnxsmith::passes::PipelineOptions {
        only: Some(vec!["fold-constants".into()]),
        fold_limit: 16 << 20,
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

/// An If that always takes its then-branch (so the check runs it), which adds `k = Mul(k1, k2)`
/// to `a`; `k2` is a constant of the branch, `k1` one of the branch too, or of the main graph
/// (captured) when `captured`.
fn if_with_constant_work(captured: bool) -> ModelProto {
    let mut p = constant_if(&[1]);
    let g = p.graph.as_mut().unwrap();
    let k1 = common::f32_tensor("k1", &[2, 3], &common::values(6, 1));
    let k2 = common::f32_tensor("k2", &[2, 3], &common::values(6, 2));
    if captured {
        g.initializer.push(k1.clone());
    }
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node = vec![
        node("Mul", "then_mul", &["k1", "k2"], &["k"]),
        node("Add", "then_add", &["a", "k"], &["r"]),
    ];
    then.initializer = vec![k2];
    if !captured {
        then.initializer.push(k1);
    }
    p
}

#[test]
fn folds_constants_inside_if_branches() {
    let m = lift(if_with_constant_work(false));
    let (out, report) = run_passes(&m, &["fold-constants", "dead-code"]);
    assert_eq!(report.steps[0], "fold-constants");
    assert_eq!(count_op(&out, "Mul"), 0);
    assert_eq!(count_op(&out, "Add"), 1);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_branch_work_on_values_captured_from_outside() {
    // k1 is constant in the main graph, but inside the branch it is a capture.
    let m = lift(if_with_constant_work(true));
    let (out, _) = run_passes(&m, &["fold-constants"]);
    assert_eq!(count_op(&out, "Mul"), 1);
    assert_same_outputs(&m, &out);
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
    common::symbolic(&mut y, 0, Some("batch"));
    g.output = vec![y];
    p
}

#[test]
fn folds_shape_of_static_dims_keeping_the_batch_dynamic() {
    let m = lift(shape_model(1));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
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
    assert_explained(&report, "depend on dynamic input dims");
    // Also in the default report, naming the dim that stopped it.
    assert_eq!(
        report.note("fold-shape").unwrap().lines,
        ["Shape 'shape' of 'x' [batch, 4, 6]: dim 0 (batch) not constant"]
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
    assert_explained(&report, "graph output");
    assert_eq!(
        report.note("fold-shape").unwrap().lines,
        ["Shape 'shape' of 'x' [batch, 4, 6]: known, but read as a graph output"]
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
    common::symbolic(&mut y, 0, Some("batch"));
    common::symbolic(&mut y, 1, None);
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
    assert_refused(
        &m,
        "fold-reshape-target",
        "Reshape",
        "neither a constant nor the same dim",
    );
}

/// y = Reshape(x, Concat([-1], picked)), x: f32[batch, 4, 6], where `picked` reads dims of
/// Shape(x) through `pick` (a Gather or Slice node writing "picked").
fn picked_dims_model(
    pick: NodeProto,
    inits: Vec<onnxsmith::onnx::proto::TensorProto>,
) -> ModelProto {
    let mut p = shape_model(0);
    let g = p.graph.as_mut().unwrap();
    let mut concat = node("Concat", "concat", &["minus_one", "picked"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    g.node = vec![
        node("Shape", "shape", &["x"], &["s"]),
        pick,
        concat,
        node("Reshape", "reshape", &["x", "target"], &["y"]),
    ];
    g.initializer.extend(inits);
    p
}

fn gather_of_shape(indices: &[i64]) -> ModelProto {
    let mut gather = node("Gather", "gather", &["s", "idx"], &["picked"]);
    gather.attribute.push(attr_int("axis", 0));
    picked_dims_model(
        gather,
        vec![i64_tensor("idx", &[indices.len() as i64], indices)],
    )
}

fn slice_of_shape(start: i64, end: i64, step: i64) -> ModelProto {
    let slice = node(
        "Slice",
        "slice",
        &["s", "st", "en", "ax", "sp"],
        &["picked"],
    );
    picked_dims_model(
        slice,
        vec![
            i64_tensor("st", &[1], &[start]),
            i64_tensor("en", &[1], &[end]),
            i64_tensor("ax", &[1], &[0]),
            i64_tensor("sp", &[1], &[step]),
        ],
    )
}

fn folded_target(m: &onnxsmith::ir::Model) -> Vec<i64> {
    let g = &m.graph;
    let reshape = g.node_ids().find(|&n| g.node(n).is("Reshape")).unwrap();
    let target = g.node(reshape).input(1).unwrap();
    g.value(target).constant().unwrap().to_i64_vec().unwrap()
}

#[test]
fn folds_known_dims_gathered_from_a_dynamic_shape() {
    let m = lift(gather_of_shape(&[2, 1]));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    assert_eq!(out.graph.node_count(), 1, "only the Reshape is left");
    assert_eq!(folded_target(&out), [-1, 6, 4]);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn folds_known_dims_sliced_from_a_dynamic_shape() {
    for (start, end, step, want) in [(1, 3, 1, vec![-1, 4, 6]), (-1, 0, -1, vec![-1, 6, 4])] {
        let m = lift(slice_of_shape(start, end, step));
        let (out, _) = run_passes(&m, SHAPE_FOLD);
        assert_eq!(out.graph.node_count(), 1, "slice {start}:{end}:{step}");
        assert_eq!(folded_target(&out), want);
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn folds_a_reversed_slice_of_a_scalar_shape_to_nothing() {
    // Shape of a scalar is empty; slicing it backwards reads nothing (and must not panic).
    let mut p = slice_of_shape(-1, i64::MIN, -1);
    let g = p.graph.as_mut().unwrap();
    g.node[0].input[0] = "z".into();
    g.input.push(common::info("z", 1, &[]));
    g.output[0] = common::info("y", 1, &[24]);
    let m = lift(p);
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    assert_eq!(out.graph.node_count(), 1, "only the Reshape is left");
    // No tract comparison: tract itself rejects the original's reversed slice of an empty
    // vector ("end <= len"), which ONNX defines as empty.
    assert_eq!(folded_target(&out), [-1]);
}

#[test]
fn keeps_gathers_and_slices_that_read_a_dynamic_dim() {
    let (out, report) = run_passes(&lift(gather_of_shape(&[0])), &["fold-shape"]);
    assert_eq!(count_op(&out, "Gather"), 1);
    assert_explained(
        &report,
        "kept Gather 'gather': the input's dims depend on dynamic input dims",
    );
    let (out, report) = run_passes(&lift(slice_of_shape(0, 2, 1)), &["fold-shape"]);
    assert_eq!(count_op(&out, "Slice"), 1);
    assert_explained(
        &report,
        "kept Slice 'slice': the input's dims depend on dynamic input dims",
    );
}

#[test]
fn keeps_gathers_of_shapes_with_computed_indices() {
    let mut p = gather_of_shape(&[1]);
    let g = p.graph.as_mut().unwrap();
    g.node.insert(1, node("Abs", "abs", &["idx0"], &["idx"]));
    g.initializer[1].name = "idx0".into();
    assert_refused(
        &lift(p),
        "fold-shape",
        "Gather",
        "its indices are not constant",
    );
}

// ---- inline-constant-if ----

/// `common::if_model` with its condition a constant.
fn constant_if(cond: &[u8]) -> ModelProto {
    let mut p = common::if_model();
    let g = p.graph.as_mut().unwrap();
    g.input.retain(|i| i.name != "c");
    let dims: &[i64] = if cond.len() == 1 { &[] } else { &[2] };
    g.initializer.push(tensor("c", 9, dims, cond.to_vec()));
    p
}

#[test]
fn inlines_the_branch_an_if_always_takes() {
    for (cond, op) in [(1u8, "Add"), (0, "Neg")] {
        let m = lift(constant_if(&[cond]));
        let (out, report) = run_passes(&m, &["inline-constant-if", "dead-code"]);
        assert_eq!(report.steps[0], "inline-constant-if");
        assert_eq!(count_op(&out, "If"), 0);
        assert_eq!(count_op(&out, op), 1, "condition {cond}");
        assert_eq!(out.graph.node_count(), 2, "Relu and the branch's node");
        if cond == 1 {
            insta::assert_snapshot!(before_after(&m, &out));
        }
        assert_same_outputs(&m, &out);
    }
}

#[test]
fn inlines_branches_holding_ifs_that_capture_outer_values() {
    // The then-branch holds a second If (on the graph input d) whose branches read the outer
    // `a`: after inlining, that If reads `a` from the main graph.
    let mut p = constant_if(&[1]);
    let inner = common::if_model();
    let inner_if = inner.graph.as_ref().unwrap().node[1].clone();
    let mut inner_if = inner_if;
    inner_if.input[0] = "d".into();
    inner_if.output[0] = "r".into();
    let g = p.graph.as_mut().unwrap();
    let outer_if = &mut g.node[1];
    outer_if.attribute[0].g.as_mut().unwrap().node = vec![inner_if];
    g.input.push(common::info("d", 9, &[]));
    let m = lift(p);
    let (out, _) = run_passes(&m, &["inline-constant-if", "dead-code"]);
    assert_eq!(
        count_op(&out, "If"),
        1,
        "the inner If, now in the main graph"
    );
    assert_eq!(out.graph.node_count(), 2);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_ifs_whose_condition_is_not_one_constant() {
    let (out, report) = run_passes(&lift(common::if_model()), &["inline-constant-if"]);
    assert_eq!(count_op(&out, "If"), 1);
    assert_explained(&report, "its condition is not a constant");
    let (out, report) = run_passes(&lift(constant_if(&[1, 0])), &["inline-constant-if"]);
    assert_eq!(count_op(&out, "If"), 1);
    assert_explained(&report, "does not hold exactly one element");
}

#[test]
fn keeps_ifs_whose_branch_returns_a_captured_graph_output() {
    // The then-branch returns the outer `a` itself; y would have to be renamed to `a`.
    let mut p = constant_if(&[1]);
    let g = p.graph.as_mut().unwrap();
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node.clear();
    then.output[0].name = "a".into();
    let (out, report) = run_passes(&lift(p), &["inline-constant-if"]);
    assert_eq!(count_op(&out, "If"), 1);
    assert_explained(
        &report,
        "a graph output would take the name of a value not computed in the branch",
    );
}

#[test]
fn keeps_ifs_whose_branch_output_type_clashes() {
    let mut p = constant_if(&[1]);
    let g = p.graph.as_mut().unwrap();
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.output[0] = common::info("r", 7, &[2, 3]);
    assert_refused(
        &lift(p),
        "inline-constant-if",
        "If",
        "declared type clashes",
    );
}

#[test]
fn folds_known_dims_gathered_from_a_dynamic_shape_inside_an_if() {
    // The branches read x by capture: its dims come from the outer graph's facts.
    let m = lift(common::in_an_if(gather_of_shape(&[2, 1])));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    for op in ["Shape", "Gather", "Concat"] {
        assert_eq!(count_op(&out, op), 0, "{op} left");
    }
    assert_eq!(count_op(&out, "Reshape"), 2);
    insta::assert_snapshot!(before_after(&m, &out));
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_gathers_of_a_dynamic_dim_inside_an_if() {
    let m = lift(common::in_an_if(gather_of_shape(&[0])));
    let (out, report) = run_passes(&m, &["fold-shape"]);
    assert_eq!(count_op(&out, "Gather"), 2);
    assert_explained(
        &report,
        "fold-shape: kept Gather 'then_gather': the input's dims depend on dynamic input dims",
    );
}

/// An If on gather_of_shape whose branches both name their value h: Relu of x[batch, 4, 6] in
/// one and of the graph input `z` in the other.
fn branches_both_naming_h(z: onnxsmith::onnx::proto::ValueInfoProto) -> ModelProto {
    let mut p = common::in_an_if(gather_of_shape(&[2, 1]));
    let g = p.graph.as_mut().unwrap();
    for (branch, input) in g.node[0].attribute.iter_mut().zip(["x", "z"]) {
        let body = branch.g.as_mut().unwrap();
        for n in &mut body.node {
            for i in &mut n.input {
                if i == "x" {
                    *i = "h".into();
                }
            }
        }
        body.node.insert(0, node("Relu", "relu", &[input], &["h"]));
    }
    g.input.push(z);
    p
}

#[test]
fn keeps_shape_reads_of_a_name_the_two_branches_give_different_shapes() {
    // z[batch, 6, 4]: no fact about h may come from either branch.
    let mut z = f32_info("z", &[1, 6, 4]);
    common::symbolic(&mut z, 0, Some("batch"));
    let m = lift(branches_both_naming_h(z));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    assert_eq!(count_op(&out, "Gather"), 2);
    assert_same_outputs(&m, &out);
}

#[test]
fn keeps_shape_reads_of_a_name_a_branch_tract_cannot_analyse_defines_too() {
    // z of unknown rank leaves the else branch unanalysed, so only the then branch speaks of
    // h: its [batch, 4, 6] must not be read as the else branch's h.
    let mut z = f32_info("z", &[]);
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        z.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let m = lift(branches_both_naming_h(z));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    assert_eq!(count_op(&out, "Gather"), 2);
}

/// y = Reshape(t, Concat(Unsqueeze(Gather(Shape(t), i0)), Unsqueeze(Gather(Shape(t), i1)), [-1]))
/// in a Loop's body, with `t` what `source` computes from x: f32[x_dims] (dim 0 the symbol
/// `batch` when `batch`), and Unsqueeze's axes an attribute before opset 13 and an input from
/// it. x is captured, or loop-carried when `carried`.
fn reshape_chain_in_a_loop(
    opset: i64,
    x_dims: &[i64],
    batch: bool,
    source: NodeProto,
    picks: [i64; 2],
    carried: bool,
) -> ModelProto {
    let mut nodes = vec![source, node("Shape", "shape", &["t"], &["s"])];
    let mut inits = vec![i64_tensor("minus_one", &[1], &[-1])];
    for (k, i) in picks.into_iter().enumerate() {
        let mut gather = node(
            "Gather",
            &format!("gather{k}"),
            &["s", &format!("i{k}")],
            &[&format!("g{k}")],
        );
        gather.attribute.push(attr_int("axis", 0));
        nodes.push(gather);
        inits.push(i64_tensor(&format!("i{k}"), &[], &[i]));
        let g = format!("g{k}");
        let mut unsqueeze = if opset < 13 {
            node("Unsqueeze", &format!("unsq{k}"), &[&g], &[&format!("u{k}")])
        } else {
            node(
                "Unsqueeze",
                &format!("unsq{k}"),
                &[&g, "zero"],
                &[&format!("u{k}")],
            )
        };
        if opset < 13 {
            unsqueeze.attribute.push(common::attr_ints("axes", &[0]));
        }
        nodes.push(unsqueeze);
    }
    if opset >= 13 {
        inits.push(i64_tensor("zero", &[1], &[0]));
    }
    let mut concat = node("Concat", "concat", &["u0", "u1", "minus_one"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    nodes.push(concat);
    nodes.push(node("Reshape", "reshape", &["t", "target"], &["y"]));
    let mut x = f32_info("x", x_dims);
    if batch {
        common::symbolic(&mut x, 0, Some("batch"));
    }
    let mut p = model_io(nodes, vec![x], vec![f32_info("y", &[])], inits);
    p.opset_import[0].version = opset;
    common::in_a_loop(p, carried.then_some("x"))
}

fn transpose_of_x() -> NodeProto {
    let mut t = node("Transpose", "transpose", &["x"], &["t"]);
    t.attribute.push(common::attr_ints("perm", &[0, 2, 1]));
    t
}

#[test]
fn folds_shape_arithmetic_on_captures_inside_a_loop_at_every_opset() {
    for opset in [11, 13, 17] {
        // x: f32[2, 4, 6] is captured, so t = Transpose(x): f32[2, 6, 4] on every iteration:
        // its dims are known once the body is analysed with x typed as it is outside.
        let m = lift(reshape_chain_in_a_loop(
            opset,
            &[2, 4, 6],
            false,
            transpose_of_x(),
            [1, 2],
            false,
        ));
        let (out, _) = run_passes(&m, SHAPE_FOLD);
        for op in ["Shape", "Gather", "Unsqueeze", "Concat"] {
            assert_eq!(count_op(&out, op), 0, "{op} left at opset {opset}");
        }
        let g = &out.graph;
        let lp = g.node_ids().find(|&n| g.node(n).is("Loop")).unwrap();
        let body = g.node(lp).attrs()[0].bodies().next().unwrap();
        let reshape = body
            .node_ids()
            .find(|&n| body.node(n).is("Reshape"))
            .unwrap();
        let target = body.node(reshape).input(1).unwrap();
        assert_eq!(
            body.const_ints(target).unwrap(),
            [6, 4, -1],
            "opset {opset}"
        );
        insta::with_settings!({ snapshot_suffix => format!("opset{opset}") }, {
            insta::assert_snapshot!(before_after(&m, &out));
        });
        common::assert_same_loop_bodies(&m, &out, &[]);
    }
}

#[test]
fn keeps_shape_arithmetic_on_a_loop_carried_value() {
    for opset in [11, 13, 17] {
        // t = Concat(x, x) on axis 2 becomes the next x: [2, 4, 6], then [12, 4, 2] (dims 2
        // and 1 of [2, 4, 12], then the rest), then [4, 4, 12]. Typing x by its initial
        // value, or by the body's declaration of it, would fold the target to [12, 4, -1]
        // for every iteration.
        let mut doubled = node("Concat", "double", &["x", "x"], &["t"]);
        doubled.attribute.push(attr_int("axis", 2));
        let m = lift(reshape_chain_in_a_loop(
            opset,
            &[2, 4, 6],
            false,
            doubled,
            [2, 1],
            true,
        ));
        let (out, report) = run_passes(&m, SHAPE_FOLD);
        for op in ["Shape", "Gather", "Unsqueeze", "Concat"] {
            assert!(count_op(&out, op) > 0, "{op} folded at opset {opset}");
        }
        assert_explained(
            &report,
            "fold-shape: kept Gather 'body_gather0': tract cannot infer the input's rank (a \
             loop-carried value's shape may change per iteration",
        );
        common::assert_same_loop_bodies(&m, &out, &[&[2, 4, 6], &[12, 4, 2], &[4, 4, 12]]);
    }
}

#[test]
fn keeps_the_dynamic_part_of_shape_arithmetic_on_a_symbolic_capture_inside_a_loop() {
    for opset in [11, 13, 17] {
        // t: f32[batch, 6, 4]: the Gather of dim 1 folds to 6, that of the batch stays.
        let m = lift(reshape_chain_in_a_loop(
            opset,
            &[1, 4, 6],
            true,
            transpose_of_x(),
            [0, 1],
            false,
        ));
        let (out, report) = run_passes(&m, SHAPE_FOLD);
        assert_eq!(count_op(&out, "Gather"), 1, "opset {opset}");
        assert_eq!(count_op(&out, "Shape"), 1, "opset {opset}");
        assert_explained(
            &report,
            "fold-shape: kept Gather 'body_gather0': the input's dims depend on dynamic input dims",
        );
        common::assert_same_loop_bodies(&m, &out, &[]);
    }
}

/// A Scan over `seq: f32[3, 5]` with a state `s: f32[5]` (s + each row); its body also reshapes
/// `Transpose(x)` (when `of_state` is false, x: f32[2, 4, 6] captured) or the state itself by a
/// target computed from that value's Shape, Gather of dim `pick` and -1, and writes it per
/// iteration.
fn reshape_chain_in_a_scan(of_state: bool, pick: i64) -> ModelProto {
    use onnxsmith::onnx::proto::{attribute_proto::AttributeType, AttributeProto, GraphProto};
    let source = if of_state { "s" } else { "t" };
    let mut transpose = node("Transpose", "transpose", &["x"], &["t"]);
    transpose
        .attribute
        .push(common::attr_ints("perm", &[0, 2, 1]));
    let mut gather = node("Gather", "gather", &["shape", "pick"], &["g"]);
    gather.attribute.push(attr_int("axis", 0));
    let mut concat = node("Concat", "concat", &["u", "minus_one"], &["target"]);
    concat.attribute.push(attr_int("axis", 0));
    let body = GraphProto {
        name: "scan_body".into(),
        node: vec![
            node("Add", "next", &["s", "e"], &["s_next"]),
            transpose,
            node("Shape", "shape_of", &[source], &["shape"]),
            gather,
            node("Unsqueeze", "unsqueeze", &["g", "zero"], &["u"]),
            concat,
            node("Reshape", "reshape", &[source, "target"], &["r"]),
        ],
        initializer: vec![
            i64_tensor("pick", &[], &[pick]),
            i64_tensor("zero", &[1], &[0]),
            i64_tensor("minus_one", &[1], &[-1]),
        ],
        input: vec![f32_info("s", &[5]), f32_info("e", &[5])],
        output: vec![f32_info("s_next", &[5]), of_unknown_shape("r")],
        ..Default::default()
    };
    let mut scan = node("Scan", "scan", &["s0", "seq"], &["s_last", "rs"]);
    scan.attribute = vec![
        attr_int("num_scan_inputs", 1),
        AttributeProto {
            name: "body".into(),
            r#type: AttributeType::Graph as i32,
            g: Some(body),
            ..Default::default()
        },
    ];
    model_io(
        vec![scan],
        vec![
            f32_info("x", &[2, 4, 6]),
            f32_info("seq", &[3, 5]),
            f32_info("s0", &[5]),
        ],
        vec![f32_info("s_last", &[5]), of_unknown_shape("rs")],
        vec![],
    )
}

/// An f32 value of no declared shape.
fn of_unknown_shape(name: &str) -> onnxsmith::onnx::proto::ValueInfoProto {
    use onnxsmith::onnx::proto::type_proto;
    let mut v = f32_info(name, &[]);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    v
}

#[test]
fn folds_shape_arithmetic_on_captures_inside_a_scan() {
    let m = lift(reshape_chain_in_a_scan(false, 1));
    let (out, _) = run_passes(&m, SHAPE_FOLD);
    for op in ["Shape", "Gather", "Unsqueeze", "Concat"] {
        assert_eq!(count_op(&out, op), 0, "{op} left");
    }
    insta::assert_snapshot!(before_after(&m, &out));
    common::assert_same_outputs(&m, &out);
}

#[test]
fn keeps_shape_arithmetic_on_a_scan_state() {
    let m = lift(reshape_chain_in_a_scan(true, 0));
    let (out, report) = run_passes(&m, SHAPE_FOLD);
    assert_eq!(count_op(&out, "Shape"), 1);
    assert_explained(
        &report,
        "fold-shape: kept Gather 'gather': tract cannot infer the input's rank",
    );
    common::assert_same_outputs(&m, &out);
}
