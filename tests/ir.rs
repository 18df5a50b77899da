//! The IR: canonical printing, graph editing, determinism and file-level round trips.

mod common;

use onnxsmith::ir::print::print_model;
use onnxsmith::ir::{Model, Slot};
use onnxsmith::{ExternalData, SaveOptions};

fn lift(p: onnxsmith::onnx::proto::ModelProto) -> Model {
    Model::from_proto(p).unwrap()
}

#[test]
fn resnet50_printout() {
    let m = onnxsmith::zoo::resnet50().unwrap();
    insta::assert_snapshot!(print_model(&m));
}

#[test]
fn if_with_captures_printout_survives_lower_and_lift() {
    let m = lift(common::if_model());
    let text = print_model(&m);
    insta::assert_snapshot!(text);
    assert_eq!(print_model(&lift(m.to_proto().unwrap())), text);
}

#[test]
fn printout_ignores_value_names() {
    let mut renamed = common::if_model();
    let g = renamed.graph.as_mut().unwrap();
    g.node[0].output[0] = "zzz".into();
    for a in &mut g.node[1].attribute {
        let body = a.g.as_mut().unwrap();
        for i in &mut body.node[0].input {
            if i == "a" {
                *i = "zzz".into();
            }
        }
    }
    assert_eq!(
        print_model(&lift(renamed)),
        print_model(&lift(common::if_model()))
    );
}

#[test]
fn captures_are_explicit_and_keep_outer_nodes_alive() {
    let m = lift(common::if_model());
    let g = &m.graph;
    let a = g.find("a").unwrap();
    let iff = g.node_ids().find(|&n| g.node(n).op == "If").unwrap();
    assert_eq!(g.node(iff).captures(), &[a, g.find("x").unwrap()][..]);
    assert!(g
        .value(a)
        .uses()
        .iter()
        .any(|u| u.node == iff && u.slot == Slot::Capture));
    let then = g
        .node(iff)
        .attr("then_branch")
        .unwrap()
        .bodies()
        .next()
        .unwrap();
    let names: Vec<&str> = then
        .captures()
        .iter()
        .map(|&c| then.value(c).name())
        .collect();
    assert_eq!(names, ["a", "x"]);
}

#[test]
fn replacing_a_captured_value_renames_it_inside_bodies() {
    let mut m = lift(common::if_model());
    let g = &mut m.graph;
    let (a, x) = (g.find("a").unwrap(), g.find("x").unwrap());
    let relu = g.producer(a).unwrap();
    g.replace_all_uses(a, x);
    g.remove_node(relu).unwrap();
    onnxsmith::ir::verify::verify(&m).unwrap();
    let text = print_model(&m);
    assert!(!text.contains("Relu"), "{text}");
    let lowered = m.to_proto().unwrap();
    let body = lowered.graph.as_ref().unwrap().node[0].attribute[0]
        .g
        .as_ref()
        .unwrap();
    assert_eq!(
        body.node[0].input,
        ["x", "x"],
        "the then-branch now reads x twice"
    );
    lift(lowered);
}

#[test]
fn removing_a_node_that_is_still_read_is_refused() {
    let mut m = lift(common::if_model());
    let a = m.graph.find("a").unwrap();
    let relu = m.graph.producer(a).unwrap();
    let err = m.graph.remove_node(relu).unwrap_err().to_string();
    assert!(err.contains("output 'a' is still read"), "{err}");
}

/// Node names in the order lowering writes them.
fn written_order(m: &Model) -> Vec<String> {
    m.to_proto()
        .unwrap()
        .graph
        .unwrap()
        .node
        .into_iter()
        .map(|n| n.name)
        .collect()
}

#[test]
fn lowering_keeps_node_order_where_dependencies_allow() {
    let m = lift(common::model_with(vec![
        common::node("Relu", "r1", &["x"], &["a"]),
        common::node("Neg", "n1", &["x"], &["b"]),
        common::node("Add", "add", &["a", "b"], &["y"]),
    ]));
    assert_eq!(written_order(&m), ["r1", "n1", "add"]);
}

#[test]
fn unsorted_graph_is_written_sorted() {
    let m = lift(common::model_with(vec![
        common::node("Add", "add", &["a", "b"], &["y"]),
        common::node("Relu", "r1", &["x"], &["a"]),
        common::node("Neg", "n1", &["x"], &["b"]),
    ]));
    assert_eq!(written_order(&m), ["r1", "n1", "add"]);
}

#[test]
fn same_input_gives_byte_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    for p in [&a, &b] {
        let st = common::bin()
            .args(["zoo", "resnet50", "-o"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (c, d) = (dir.path().join("c.onnx"), dir.path().join("d.onnx"));
    for p in [&c, &d] {
        let st = common::bin()
            .arg("convert")
            .arg(&a)
            .arg("-o")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let c_bytes = std::fs::read(&c).unwrap();
    assert_eq!(c_bytes, std::fs::read(&d).unwrap());
    assert_eq!(
        c_bytes,
        std::fs::read(&a).unwrap(),
        "our own files round-trip to the same bytes"
    );
}

#[test]
fn external_data_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = onnxsmith::zoo::resnet50().unwrap();
    let p = dir.path().join("r.onnx");
    let opts = SaveOptions {
        external: ExternalData::Always,
        ..SaveOptions::default()
    };
    onnxsmith::save(&m, &p, opts).unwrap();
    let model_size = std::fs::metadata(&p).unwrap().len();
    let data_size = std::fs::metadata(dir.path().join("r.onnx.data"))
        .unwrap()
        .len();
    assert!(model_size < 200_000, "graph only: {model_size} bytes");
    assert!(data_size > 100_000_000, "weights: {data_size} bytes");
    let back = onnxsmith::load(&p).unwrap();
    assert_eq!(back.external_files, [dir.path().join("r.onnx.data")]);
    assert_eq!(print_model(&back.model), print_model(&m));
    // Converting back to one file inlines everything again.
    let single = dir.path().join("single.onnx");
    onnxsmith::save(&back.model, &single, SaveOptions::default()).unwrap();
    let again = onnxsmith::load(&single).unwrap();
    assert!(again.external_files.is_empty());
    assert_eq!(print_model(&again.model), print_model(&m));
}

#[test]
fn models_past_2_gib_go_external_by_themselves() {
    use onnxsmith::ir::{DType, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let mut m = lift(common::model_with(vec![common::node(
        "Identity",
        "id",
        &["x"],
        &["y"],
    )]));
    // Zeroed pages are not touched until written, so this costs disk, not memory.
    let big = bytes::Bytes::from(vec![0u8; (2usize << 30) + 4096]);
    let len = (big.len() / 4) as i64;
    m.graph
        .add_initializer("big", Tensor::from_raw(DType::F32, vec![len], big))
        .unwrap();
    let p = dir.path().join("big.onnx");
    onnxsmith::save(&m, &p, SaveOptions::default()).unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 4096);
    let data = dir.path().join("big.onnx.data");
    assert_eq!(std::fs::metadata(&data).unwrap().len(), (2u64 << 30) + 4096);
    let back = onnxsmith::load(&p).unwrap();
    let t = back
        .model
        .graph
        .value(back.model.graph.find("big").unwrap())
        .initializer()
        .unwrap();
    assert_eq!(t.dims(), [len]);
    assert_eq!(t.stored_bytes(), (2u64 << 30) + 4096);
}
