//! The IR: canonical printing, graph editing, determinism and file-level round trips.

mod common;

use onnxsmith::ir::Patch;

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
    let iff = g.node_ids().find(|&n| g.node(n).op() == "If").unwrap();
    assert_eq!(g.node(iff).captures(), &[a, g.find("x").unwrap()][..]);
    assert!(g
        .value(a)
        .uses()
        .iter()
        .any(|u| u.node == iff && u.slot == Slot::Capture));
    let then = common::body(g, "If", "then_branch");
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
    let mut patch = Patch::new(g);
    patch.replace_value(a, x).unwrap();
    patch.remove_node(relu).unwrap();
    patch.commit().unwrap();
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
    let err = Patch::new(&mut m.graph)
        .remove_node(relu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("output 'a' is still read"), "{err}");
}

#[test]
fn a_new_node_of_another_shape_cannot_replace_a_value() {
    use onnxsmith::ir::{DType, Dim, Type};
    let mut m = lift(common::model_with(vec![common::node(
        "Relu",
        "relu",
        &["x"],
        &["y"],
    )]));
    let g = &mut m.graph;
    let (x, y) = (g.find("x").unwrap(), g.find("y").unwrap());
    let mut patch = Patch::new(g);
    let wrong = Type::tensor(DType::F32, vec![Dim::Known(3), Dim::Known(2)]);
    let n = patch
        .add_node("Transpose", "t", &[Some(x)], vec![], &[Some(wrong)])
        .unwrap();
    let t = patch.graph().node(n).output(0).unwrap();
    let err = patch.replace_value(y, t).unwrap_err().to_string();
    assert!(err.contains("shapes") && err.contains("differ"), "{err}");
    // The same node declared with the right shape may stand in for y.
    let right = Type::tensor(DType::F32, vec![Dim::Known(2), Dim::Known(3)]);
    let n = patch
        .add_node("Relu", "r", &[Some(x)], vec![], &[Some(right)])
        .unwrap();
    let r = patch.graph().node(n).output(0).unwrap();
    patch.replace_value(y, r).unwrap();
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
    let mut patch = Patch::new(&mut m.graph);
    patch
        .add_initializer("big", Tensor::from_raw(DType::F32, vec![len], big))
        .unwrap();
    patch.commit().unwrap();
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

#[test]
fn a_staged_model_is_in_place_only_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let m = onnxsmith::zoo::resnet50().unwrap();
    let p = dir.path().join("out.onnx");
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let staged = onnxsmith::stage(&m, &p, SaveOptions::default()).unwrap();
    assert!(!p.exists(), "staged, not yet in place");
    // Unnamed until committed where the file system allows it, else one temporary name.
    let during = listing();
    assert!(
        during.is_empty() || (during.len() == 1 && during[0].ends_with(".tmp")),
        "{during:?}"
    );
    drop(staged);
    assert!(listing().is_empty(), "dropped uncommitted: {:?}", listing());

    let opts = SaveOptions {
        external: ExternalData::Always,
        ..SaveOptions::default()
    };
    onnxsmith::stage(&m, &p, opts).unwrap().commit().unwrap();
    assert_eq!(listing(), ["out.onnx", "out.onnx.data"]);
    assert_eq!(
        print_model(&onnxsmith::load(&p).unwrap().model),
        print_model(&m)
    );
}

/// Resident size in KiB of this process's mappings of `path`, from /proc/self/smaps.
#[cfg(target_os = "linux")]
fn resident_kib_of(path: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.canonicalize().unwrap().to_string_lossy().into_owned();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.ends_with(&name);
        } else if inside && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

#[cfg(target_os = "linux")]
#[test]
fn a_forgotten_payload_leaves_memory_and_stays_readable() {
    use onnxsmith::ir::Tensor;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.onnx");
    let values: Vec<f32> = (0..1 << 20).map(|i| i as f32).collect();
    let m = lift(common::model_io(
        vec![common::node("Add", "add", &["x", "w"], &["y"])],
        vec![common::f32_info("x", &[1 << 20])],
        vec![common::f32_info("y", &[1 << 20])],
        vec![Tensor::from_f32(vec![1 << 20], &values).to_proto("w")],
    ));
    onnxsmith::save(&m, &p, SaveOptions::default()).unwrap();

    let loaded = onnxsmith::load(&p).unwrap().model;
    let w = loaded.graph.find("w").unwrap();
    let t = loaded.graph.value(w).initializer().unwrap();
    assert_eq!(
        t.to_f32_vec().unwrap(),
        values,
        "reading maps every page in"
    );
    let before = resident_kib_of(&p);
    assert!(before >= 4000, "{before} KiB resident after reading 4 MiB");
    t.forget_resident();
    let after = resident_kib_of(&p);
    assert!(after < 64, "{after} KiB still resident");
    assert_eq!(
        t.to_f32_vec().unwrap(),
        values,
        "the pages come back from the file"
    );

    // A payload on the heap is never touched: dropping its pages would zero it.
    let heap = Tensor::from_f32(vec![1 << 20], &values);
    heap.forget_resident();
    assert_eq!(heap.to_f32_vec().unwrap(), values);
}
