//! Lift then lower is lossless: over the whole ONNX backend test corpus, the re-read ModelProto
//! equals the original field by field.

mod common;

use bytes::Bytes;
use onnxsmith::ir::Model;
use onnxsmith::onnx::decode_model;
use onnxsmith::onnx::proto::ModelProto;
use prost::Message;

/// Names the first top-level field that differs, to make a failure readable.
fn first_difference(a: &ModelProto, b: &ModelProto) -> String {
    let (ga, gb) = (
        a.graph.clone().unwrap_or_default(),
        b.graph.clone().unwrap_or_default(),
    );
    let checks: [(&str, bool); 8] = [
        ("nodes", ga.node == gb.node),
        ("initializers", ga.initializer == gb.initializer),
        ("inputs", ga.input == gb.input),
        ("outputs", ga.output == gb.output),
        ("value_info", ga.value_info == gb.value_info),
        (
            "sparse_initializers",
            ga.sparse_initializer == gb.sparse_initializer,
        ),
        (
            "graph envelope",
            ga.name == gb.name && ga.doc_string == gb.doc_string,
        ),
        ("model envelope", {
            let (mut x, mut y) = (a.clone(), b.clone());
            x.graph = None;
            y.graph = None;
            x == y
        }),
    ];
    checks
        .iter()
        .filter(|(_, same)| !same)
        .map(|(what, _)| *what)
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn corpus_round_trips_field_by_field() {
    let Some(dir) = common::corpus_dir() else {
        return;
    };
    let files = common::onnx_files(&dir);
    assert!(
        files.len() > 1500,
        "expected the whole corpus, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    let mut subgraph_models = 0;
    for path in &files {
        let bytes = Bytes::from(std::fs::read(path).unwrap());
        let original = decode_model(bytes, &path.display().to_string()).unwrap();
        let model = match Model::from_proto(original.clone()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: lift failed: {e:#}", path.display()));
                continue;
            }
        };
        if model
            .graph
            .node_ids()
            .any(|n| model.graph.node(n).has_bodies())
        {
            subgraph_models += 1;
        }
        let lowered = model.to_proto().unwrap();
        let reread = ModelProto::decode(Bytes::from(lowered.encode_to_vec())).unwrap();
        // Encoded bytes, not `==`: NaN constants must compare equal to themselves.
        if reread.encode_to_vec() != original.encode_to_vec() {
            failures.push(format!(
                "{}: differs in {}",
                path.display(),
                first_difference(&original, &reread)
            ));
        }
    }
    eprintln!(
        "round-tripped {} corpus models ({} with subgraphs), {} failures",
        files.len(),
        subgraph_models,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
