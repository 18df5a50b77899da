//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[cfg(unix)]
pub mod external_dir;

/// The ONNX backend test corpus, when fetched by `fixtures/onnx-tests/fetch.sh`. In CI its
/// absence is an error, since the CI script fetches it; elsewhere the caller skips.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx-tests/data");
    if dir.join("node").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must fetch the conformance corpus first: fixtures/onnx-tests/fetch.sh");
    }
    eprintln!("skipped: conformance corpus not fetched (run fixtures/onnx-tests/fetch.sh)");
    None
}

/// Every `*.onnx` under `dir`, sorted so failures are reported in a stable order.
pub fn onnx_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "onnx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The onnxsmith binary built for this test run.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_onnxsmith"))
}

use onnxsmith::onnx::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

pub fn f32_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    info(name, 1, dims)
}

/// A tensor value of ONNX element type `elem_type` (1 f32, 7 i64, 9 bool, ...).
pub fn info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            denotation: String::new(),
                        })
                        .collect(),
                }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// Makes dim `axis` of a declared tensor value the symbol `sym` (`None`: unknown).
pub fn symbolic(v: &mut ValueInfoProto, axis: usize, sym: Option<&str>) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[axis].value =
            sym.map(|s| dimension::Value::DimParam(s.into()));
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A ModelProto with the given nodes, one f32[2,3] input `x` and one f32[2,3] output `y`.
pub fn model_with(nodes: Vec<NodeProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            input: vec![f32_info("x", &[2, 3])],
            output: vec![f32_info("y", &[2, 3])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model with an If whose branches read outer values by capture:
/// An If branch attribute `name` of `nodes`, returning their `r`, an f32[2,3].
pub fn branch(name: &str, nodes: Vec<NodeProto>) -> onnxsmith::onnx::proto::AttributeProto {
    graph_attr(
        name,
        GraphProto {
            name: format!("{name}_graph"),
            node: nodes,
            output: vec![f32_info("r", &[2, 3])],
            ..Default::default()
        },
    )
}

/// `a = Relu(x); y = If(c) { then: a + x } else { Neg(a) }`.
pub fn if_model() -> ModelProto {
    let mut iff = node("If", "if", &["c"], &["y"]);
    iff.attribute = vec![
        branch(
            "then_branch",
            vec![node("Add", "then_add", &["a", "x"], &["r"])],
        ),
        branch("else_branch", vec![node("Neg", "else_neg", &["a"], &["r"])]),
    ];
    let mut m = model_with(vec![node("Relu", "relu", &["x"], &["a"]), iff]);
    m.graph.as_mut().unwrap().input.push(info("c", 9, &[]));
    m
}

use onnxsmith::check::{compare_models, CheckOptions, Outcome};
use onnxsmith::ir::print::print_model;
use onnxsmith::ir::{DType, Dim, Model, Type};
use onnxsmith::passes::{run_pipeline, PipelineOptions, PipelineReport};

pub fn tensor(
    name: &str,
    dtype: i32,
    dims: &[i64],
    raw: Vec<u8>,
) -> onnxsmith::onnx::proto::TensorProto {
    onnxsmith::onnx::proto::TensorProto {
        name: name.into(),
        data_type: dtype,
        dims: dims.to_vec(),
        raw_data: raw.into(),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> onnxsmith::onnx::proto::TensorProto {
    tensor(
        name,
        1,
        dims,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn lift(p: ModelProto) -> Model {
    Model::from_proto(p).unwrap()
}

/// Runs only `passes` (ids) to a fixed point on a copy, with `--explain` on.
pub fn run_passes(model: &Model, passes: &[&str]) -> (Model, PipelineReport) {
    let mut m = model.clone();
    let opts = PipelineOptions {
        only: Some(passes.iter().map(|s| s.to_string()).collect()),
        explain: true,
        verify_each: true,
        ..Default::default()
    };
    let report = run_pipeline(&mut m, &opts).unwrap();
    (m, report)
}

/// Both models run in tract on the same seeded inputs and agree within the tolerance of a
/// pure rewrite (rtol 1e-4, atol 1e-5).
pub fn assert_same_outputs(original: &Model, result: &Model) {
    match compare_models(
        original,
        result,
        &CheckOptions {
            samples: 2,
            ..Default::default()
        },
    )
    .unwrap()
    {
        Outcome::Checked(r) => assert!(r.ok(), "outputs differ:\n{}", r.to_table()),
        Outcome::Unverified(why) => panic!("tract could not run the models: {why}"),
    }
}

/// The canonical printouts before and after, for one snapshot.
pub fn before_after(before: &Model, after: &Model) -> String {
    format!(
        "--- before\n{}--- after\n{}",
        print_model(before),
        print_model(after)
    )
}

pub fn count_op(m: &Model, op: &str) -> usize {
    onnxsmith::report::Summary::of(m)
        .ops
        .get(op)
        .copied()
        .unwrap_or(0)
}

/// A ModelProto with the given nodes, inputs, outputs and initializers (opset 17).
pub fn model_io(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<onnxsmith::onnx::proto::TensorProto>,
) -> ModelProto {
    let mut m = model_with(nodes);
    let g = m.graph.as_mut().unwrap();
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    m
}

/// Seeded values in [-1, 1) (a tiny LCG, so fixtures need no RNG crate state).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn attr_ints(name: &str, v: &[i64]) -> onnxsmith::onnx::proto::AttributeProto {
    onnxsmith::onnx::proto::AttributeProto {
        name: name.into(),
        r#type: onnxsmith::onnx::proto::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> onnxsmith::onnx::proto::AttributeProto {
    onnxsmith::onnx::proto::AttributeProto {
        name: name.into(),
        r#type: onnxsmith::onnx::proto::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> onnxsmith::onnx::proto::AttributeProto {
    onnxsmith::onnx::proto::AttributeProto {
        name: name.into(),
        r#type: onnxsmith::onnx::proto::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

pub fn attr_str(name: &str, v: &str) -> onnxsmith::onnx::proto::AttributeProto {
    onnxsmith::onnx::proto::AttributeProto {
        name: name.into(),
        r#type: onnxsmith::onnx::proto::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// Moves initializer `name` to the graph inputs (an f32 of `dims`): a value the caller may
/// override, which no rewrite may treat as a constant.
pub fn initializer_to_input(p: &mut ModelProto, name: &str, dims: &[i64]) {
    let g = p.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != name);
    g.input.push(f32_info(name, dims));
}

/// An int64 tensor of `dims` holding `v`.
pub fn i64_tensor(name: &str, dims: &[i64], v: &[i64]) -> onnxsmith::onnx::proto::TensorProto {
    tensor(
        name,
        7,
        dims,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// Runs `pass` alone on `model` and checks that it left the model as it was and said, under
/// `--explain`, why it kept an `op` node: a reason containing `reason`.
pub fn assert_refused(model: &Model, pass: &str, op: &str, reason: &str) -> PipelineReport {
    let (out, report) = run_passes(model, &[pass]);
    assert!(
        report.steps.is_empty(),
        "{pass} changed the model: {:?}",
        report.steps
    );
    assert_eq!(print_model(&out), print_model(model));
    let kept = format!("{pass}: kept {op} '");
    assert!(
        report
            .explain
            .iter()
            .any(|e| e.starts_with(&kept) && e.contains(reason)),
        "no {kept}...' with {reason:?} in {:#?}",
        report.explain
    );
    report
}

/// `--explain` gave a reason containing `needle`.
pub fn assert_explained(report: &PipelineReport, needle: &str) {
    assert!(
        report.explain.iter().any(|e| e.contains(needle)),
        "no reason containing {needle:?} in {:#?}",
        report.explain
    );
}

/// A `.npy` file of f32 (or f64 when `wide`) values in `shape`.
pub fn write_npy(path: &Path, shape: &[usize], wide: bool) {
    let n: usize = shape.iter().product();
    write_npy_values(path, shape, &values(n, 1), wide);
}

/// A `.npy` file of `data` in `shape`, as f32 (or f64 when `wide`).
pub fn write_npy_values(path: &Path, shape: &[usize], data: &[f32], wide: bool) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let descr = if wide { "<f8" } else { "<f4" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for &v in data {
        if wide {
            bytes.extend((v as f64).to_le_bytes());
        } else {
            bytes.extend(v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A body holding a copy of `g`'s nodes, initializers and outputs, named `{tag}_graph`, with
/// every name prefixed by `{tag}_` but those in `captured`, which it reads from outside.
fn body_of(g: &GraphProto, tag: &str, captured: &[String]) -> GraphProto {
    let rename = |s: &String| {
        if s.is_empty() || captured.contains(s) {
            s.clone()
        } else {
            format!("{tag}_{s}")
        }
    };
    let mut nodes = g.node.clone();
    for n in &mut nodes {
        n.name = format!("{tag}_{}", n.name);
        n.input = n.input.iter().map(rename).collect();
        n.output = n.output.iter().map(rename).collect();
    }
    let mut inits = g.initializer.clone();
    for t in &mut inits {
        t.name = rename(&t.name);
    }
    let mut outputs = g.output.clone();
    for o in &mut outputs {
        o.name = rename(&o.name);
    }
    GraphProto {
        name: format!("{tag}_graph"),
        node: nodes,
        initializer: inits,
        output: outputs,
        ..Default::default()
    }
}

fn graph_attr(name: &str, g: GraphProto) -> onnxsmith::onnx::proto::AttributeProto {
    use onnxsmith::onnx::proto::{attribute_proto::AttributeType, AttributeProto};
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Graph as i32,
        g: Some(g),
        ..Default::default()
    }
}

/// `p` computed inside both branches of an If on a new bool input `cond`: each branch holds a
/// copy of p's nodes and initializers, its names prefixed by `then_` or `else_`, and reads p's
/// graph inputs by capture; the If writes p's outputs.
pub fn in_an_if(mut p: ModelProto) -> ModelProto {
    let g = p.graph.as_mut().unwrap();
    let outer: Vec<String> = g.input.iter().map(|i| i.name.clone()).collect();
    let outs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut iff = node("If", "if", &["cond"], &outs);
    iff.attribute = vec![
        graph_attr("then_branch", body_of(g, "then", &outer)),
        graph_attr("else_branch", body_of(g, "else", &outer)),
    ];
    g.node = vec![iff];
    g.initializer.clear();
    g.input.push(info("cond", 9, &[]));
    p
}

/// Iterations of the Loops [`in_a_loop`] makes.
pub const TRIPS: i64 = 3;

/// `p`, which has one output, computed on each of [`TRIPS`] iterations of a Loop whose body
/// holds a copy of p's nodes and initializers, its names prefixed by `body_`. The body reads
/// p's graph inputs by capture, except `carried`: that one is loop-carried instead, starting
/// as the graph input and then each iteration's result (the body declares it with the graph
/// input's type, as exports do, although its shape may change). Without `carried`, the Loop
/// writes p's output stacked over the iterations.
pub fn in_a_loop(mut p: ModelProto, carried: Option<&str>) -> ModelProto {
    let g = p.graph.as_mut().unwrap();
    let captured: Vec<String> = (g.input.iter())
        .map(|i| i.name.clone())
        .filter(|n| Some(n.as_str()) != carried)
        .collect();
    let mut body = body_of(g, "body", &captured);
    let [out] = &mut g.output[..] else {
        panic!("in_a_loop wants a model with one output");
    };
    if let Some(type_proto::Value::TensorType(t)) =
        out.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        // Stacked, or of the last iteration's shape: not the one of p's output.
        t.shape = None;
    }
    body.output[0].r#type = out.r#type.clone();
    body.input = vec![info("body_iter", 7, &[]), info("body_cond", 9, &[])];
    body.output.insert(0, info("body_cond_out", 9, &[]));
    body.node.push(node(
        "Identity",
        "body_go_on",
        &["body_cond"],
        &["body_cond_out"],
    ));
    let mut inputs = vec!["trips".to_string(), String::new()];
    if let Some(c) = carried {
        let mut declared = g.input.iter().find(|i| i.name == c).unwrap().clone();
        declared.name = format!("body_{c}");
        body.input.push(declared);
        inputs.push(c.to_string());
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let mut lp = node("Loop", "loop", &inputs, &[&out.name]);
    lp.attribute = vec![graph_attr("body", body)];
    g.node = vec![lp];
    g.initializer = vec![i64_tensor("trips", &[], &[TRIPS])];
    p
}

/// tract runs no Loop, so a rewrite inside the body of the Loop of `before`'s main graph is
/// checked on the body alone: before and after, each run as a model of its own on the same
/// seeded inputs, its captures of their outer declared types and its iteration number and
/// condition scalars, once for each of `carried`, the dims its loop-carried value takes on
/// successive iterations (once only when it carries nothing).
pub fn assert_same_loop_bodies(before: &Model, after: &Model, carried: &[&[i64]]) {
    let runs: Vec<Option<&[i64]>> = if carried.is_empty() {
        vec![None]
    } else {
        carried.iter().map(|&d| Some(d)).collect()
    };
    for dims in runs {
        assert_same_outputs(
            &loop_body_alone(before, dims),
            &loop_body_alone(after, dims),
        );
    }
}

/// The body of the Loop of `m`'s main graph as a model of its own: its captures of their
/// outer declared types, its iteration number and condition scalars, its loop-carried value
/// (if any) of `dims`.
pub fn loop_body_alone(m: &Model, dims: Option<&[i64]>) -> Model {
    let g = &m.graph;
    let body = body(g, "Loop", "body");
    let mut inputs = vec![
        Type::tensor(DType::I64, vec![]),
        Type::tensor(DType::BOOL, vec![]),
    ];
    inputs.extend(body.inputs()[2..].iter().map(|&v| {
        let dims = dims.expect("a carried value without dims to check it at");
        Type::tensor(
            body.dtype(v).unwrap(),
            dims.iter().map(|&d| Dim::Known(d)).collect(),
        )
    }));
    let captures: Vec<(String, Type)> = (body.captures().iter())
        .map(|&v| {
            let name = body.value(v).name();
            (
                name.to_string(),
                g.ty(g.find(name).unwrap()).unwrap().clone(),
            )
        })
        .collect();
    m.of_body(body, &inputs, &captures).unwrap()
}

/// A tensor of `data_type` and `dims` whose bytes are in the file `location`, from `offset`,
/// `length` bytes.
pub fn external_tensor(
    name: &str,
    data_type: i32,
    dims: &[i64],
    location: &str,
    offset: u64,
    length: u64,
) -> onnxsmith::onnx::proto::TensorProto {
    use onnxsmith::onnx::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    onnxsmith::onnx::proto::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        data_location: DataLocation::External as i32,
        external_data: vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", length.to_string()),
        ],
        ..Default::default()
    }
}

/// The directory of real trained models `ONNXSMITH_REALMODELS` names, when it exists.
pub fn real_models_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("ONNXSMITH_REALMODELS")?);
    dir.is_dir().then_some(dir)
}

/// How a real model is checked: image models get a 64x64 input (their H and W are symbolic,
/// multiples of 32); the voice model takes 512-sample chunks at its real sample rate.
pub fn real_model_check(original: &Model) -> onnxsmith::check::CheckOptions {
    use onnxsmith::runtime::{input_specs, Binding, HostTensor};
    use rand::SeedableRng;
    let mut binding = Binding::default();
    for spec in input_specs(original, &binding).unwrap() {
        if spec.shape.len() == 4 && spec.shape[2] == 1 {
            binding
                .input_shapes
                .insert(spec.name.clone(), vec![1, 3, 64, 64]);
        }
        if spec.name == "input" && spec.shape.len() == 2 {
            binding.input_shapes.insert(spec.name.clone(), vec![1, 512]);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let inputs: Vec<HostTensor> = input_specs(original, &binding)
        .unwrap()
        .iter()
        .map(|s| {
            if s.name == "sr" {
                HostTensor::from_le_bytes(s.dtype, &s.shape, &16000i64.to_le_bytes()).unwrap()
            } else {
                HostTensor::random(s, &mut rng).unwrap()
            }
        })
        .collect();
    onnxsmith::check::CheckOptions {
        binding,
        inputs: onnxsmith::check::InputSource::Sets(vec![inputs]),
        ..Default::default()
    }
}

/// x[1,3,8,8] ─▶ Conv(W1[4,3,3,3], b1) ─▶ Relu ─▶ Conv(W2[2,4,1,1], b2) ─▶ GlobalAveragePool
/// ─▶ Flatten ─▶ Gemm(W3[5,2], b3, transB) ─▶ y[1,5].
pub fn conv_net(opset: i64) -> ModelProto {
    let mut c1 = node("Conv", "conv1", &["x", "W1", "b1"], &["c1"]);
    c1.attribute = vec![
        attr_ints("kernel_shape", &[3, 3]),
        attr_ints("pads", &[1; 4]),
    ];
    let mut c2 = node("Conv", "conv2", &["r1", "W2", "b2"], &["c2"]);
    c2.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let mut flat = node("Flatten", "flatten", &["p"], &["f"]);
    flat.attribute = vec![attr_int("axis", 1)];
    let mut gemm = node("Gemm", "fc", &["f", "W3", "b3"], &["y"]);
    gemm.attribute = vec![attr_int("transB", 1)];
    let mut m = model_io(
        vec![
            c1,
            node("Relu", "relu1", &["c1"], &["r1"]),
            c2,
            node("GlobalAveragePool", "pool", &["c2"], &["p"]),
            flat,
            gemm,
        ],
        vec![f32_info("x", &[1, 3, 8, 8])],
        vec![f32_info("y", &[1, 5])],
        vec![
            f32_tensor("W1", &[4, 3, 3, 3], &values(108, 1)),
            f32_tensor("b1", &[4], &values(4, 2)),
            f32_tensor("W2", &[2, 4, 1, 1], &values(8, 3)),
            f32_tensor("b2", &[2], &values(2, 4)),
            f32_tensor("W3", &[5, 2], &values(10, 5)),
            f32_tensor("b3", &[5], &values(5, 6)),
        ],
    );
    m.opset_import[0].version = opset;
    m
}

/// The subgraph of attribute `attr` of the first `op` node of `g`.
pub fn body<'g>(g: &'g onnxsmith::ir::Graph, op: &str, attr: &str) -> &'g onnxsmith::ir::Graph {
    let n = g.node_ids().find(|&n| g.node(n).is(op)).unwrap();
    g.node(n).attr(attr).unwrap().bodies().next().unwrap()
}
