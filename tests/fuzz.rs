//! Seeded fuzzing of the loader and the pipeline: damaged files must give an error, never a
//! panic. Each case is a small valid model damaged in its bytes (a few flipped, a range dropped
//! or repeated, the tail cut off), which mostly tests the decoder, or in its structure (a dim,
//! an element type, an attribute, an input name or an op changed, an initializer dropped or
//! cut short), which reaches the IR and the passes; whatever still loads is optimized and
//! written.

mod common;
mod gen;

use std::panic::{catch_unwind, AssertUnwindSafe};

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{f32_info, f32_tensor, model_io, node, values};
use onnxsmith::ir::Model;
use onnxsmith::onnx::proto::ModelProto;
use onnxsmith::passes::{run_pipeline, PipelineOptions};

/// Small models that between them reach most passes: Conv+BN+Relu, a Shape-computed Reshape,
/// arithmetic with constants, and an If with captures.
fn seeds() -> Vec<Vec<u8>> {
    let mut conv = node("Conv", "conv", &["x", "W"], &["c"]);
    conv.attribute
        .push(common::attr_ints("kernel_shape", &[3, 3]));
    let conv_bn = model_io(
        vec![
            conv,
            node(
                "BatchNormalization",
                "bn",
                &["c", "g", "b", "m", "v"],
                &["d"],
            ),
            node("Relu", "relu", &["d"], &["e"]),
            node("Shape", "shape", &["e"], &["s"]),
            node("Reshape", "reshape", &["e", "s"], &["f"]),
            node("Mul", "mul", &["f", "one"], &["y"]),
        ],
        vec![f32_info("x", &[1, 2, 5, 5])],
        vec![f32_info("y", &[1, 3, 3, 3])],
        vec![
            f32_tensor("W", &[3, 2, 3, 3], &values(54, 1)),
            f32_tensor("g", &[3], &values(3, 2)),
            f32_tensor("b", &[3], &values(3, 3)),
            f32_tensor("m", &[3], &values(3, 4)),
            f32_tensor("v", &[3], &[1.0, 2.0, 3.0]),
            f32_tensor("one", &[1], &[1.0]),
        ],
    );
    vec![conv_bn.encode_to_vec(), common::if_model().encode_to_vec()]
}

fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            break;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..4) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = rng.random(),
            2 => {
                let end = (at + rng.random_range(1..16)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let end = (at + rng.random_range(1..16)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
        }
    }
    if rng.random_range(0..8) == 0 {
        b.truncate(rng.random_range(0..b.len().max(1)));
    }
    b
}

const OPS: &[&str] = &[
    "Relu",
    "Add",
    "Mul",
    "Reshape",
    "Shape",
    "Conv",
    "BatchNormalization",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Gather",
    "Slice",
    "Concat",
    "Cast",
    "Flatten",
    "Pad",
    "If",
];

fn damage_structure(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut m = ModelProto::decode(seed).expect("seeds decode");
    let g = m.graph.as_mut().unwrap();
    let names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .chain(["".to_string(), "nowhere".to_string()])
        .collect();
    for _ in 0..rng.random_range(1..3) {
        let small = |rng: &mut ChaCha8Rng| rng.random_range(-3..6i64);
        match rng.random_range(0..8) {
            0 if !g.initializer.is_empty() => {
                let t = rng.random_range(0..g.initializer.len());
                let t = &mut g.initializer[t];
                match t.dims.len() {
                    0 => t.dims.push(small(rng)),
                    n => t.dims[rng.random_range(0..n)] = small(rng),
                }
            }
            1 if !g.initializer.is_empty() => {
                let t = rng.random_range(0..g.initializer.len());
                g.initializer[t].data_type = rng.random_range(0..18);
            }
            2 if !g.initializer.is_empty() => {
                let t = rng.random_range(0..g.initializer.len());
                let raw = &mut g.initializer[t].raw_data;
                *raw = raw.slice(..rng.random_range(0..raw.len().max(1)));
            }
            3 if !g.initializer.is_empty() => {
                let t = rng.random_range(0..g.initializer.len());
                g.initializer.remove(t);
            }
            4 => {
                let n = rng.random_range(0..g.node.len());
                let node = &mut g.node[n];
                if !node.input.is_empty() {
                    let i = rng.random_range(0..node.input.len());
                    node.input[i] = names[rng.random_range(0..names.len())].clone();
                }
            }
            5 => {
                let n = rng.random_range(0..g.node.len());
                g.node[n].op_type = OPS[rng.random_range(0..OPS.len())].to_string();
            }
            6 => {
                let n = rng.random_range(0..g.node.len());
                if let Some(a) = g.node[n].attribute.first_mut() {
                    a.i = small(rng);
                    if !a.ints.is_empty() {
                        let k = rng.random_range(0..a.ints.len());
                        a.ints[k] = small(rng);
                    }
                }
            }
            _ => {
                let io = if rng.random() {
                    &mut g.input
                } else {
                    &mut g.output
                };
                if let Some(info) = io.first_mut() {
                    *info = f32_info(&info.name, &[small(rng), small(rng)]);
                    if rng.random() {
                        *info = common::info(&info.name, rng.random_range(0..18), &[2, 3]);
                    }
                }
            }
        }
    }
    m.encode_to_vec()
}

/// Decodes, lifts, optimizes (no check) and lowers `bytes`; every step may fail, none may panic.
fn exercise(bytes: Vec<u8>) -> usize {
    let Ok(proto) = onnxsmith::onnx::decode_model(bytes.into(), "fuzz") else {
        return 0;
    };
    let Ok(mut model) = Model::from_proto(proto) else {
        return 1;
    };
    if run_pipeline(&mut model, &PipelineOptions::default()).is_err() {
        return 2;
    }
    let _ = model.to_proto().map(|p| p.encode_to_vec());
    3
}

/// Writes the seed corpus of the coverage-guided fuzzers (fuzz/seeds/): the two models above,
/// the external-data models below (one that loads, one whose locations are all refused) and a
/// few random valid graphs, which between them hold most ops the passes rewrite.
/// `ONNXSMITH_FUZZ_SEEDS=fuzz/seeds cargo test --test fuzz write_fuzz_seeds -- --ignored`
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::PathBuf::from(std::env::var("ONNXSMITH_FUZZ_SEEDS").expect("a directory"));
    std::fs::create_dir_all(&dir).unwrap();
    let named = ["conv_bn", "if"]
        .map(String::from)
        .into_iter()
        .zip(seeds())
        .chain([
            ("external".to_string(), external_seed()),
            (
                "external-refused".to_string(),
                external_seed_reading(REFUSED),
            ),
        ]);
    let generated = GENERATED_SEEDS
        .iter()
        .map(|&s| (format!("graph-{s}"), gen::graph(s).encode_to_vec()));
    for (name, bytes) in named.chain(generated) {
        std::fs::write(dir.join(format!("{name}.onnx")), bytes).unwrap();
    }
}

/// Differential-generator seeds whose graphs are small (a few KB) and varied.
const GENERATED_SEEDS: &[u64] = &[0, 1, 2, 3, 4, 5];

#[test]
fn damaged_models_give_errors_not_panics() {
    let seeds = seeds();
    let mut reached = [0usize; 4];
    let mut panics = Vec::new();
    for case in 0..3000u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(case);
        let seed = &seeds[case as usize % seeds.len()];
        let bytes = if case % 2 == 0 {
            mutate(seed, &mut rng)
        } else {
            damage_structure(seed, &mut rng)
        };
        match catch_unwind(AssertUnwindSafe(|| exercise(bytes))) {
            Ok(stage) => reached[stage] += 1,
            Err(_) => panics.push(case),
        }
    }
    eprintln!(
        "fuzz: {} rejected by the decoder, {} by the IR, {} by the pipeline, {} optimized",
        reached[0], reached[1], reached[2], reached[3]
    );
    assert!(panics.is_empty(), "cases that panicked: {panics:?}");
    assert!(
        reached[3] > 500,
        "too few cases reach the pipeline to test it: {reached:?}"
    );
}

#[test]
fn batch_normalization_of_a_rank_1_value_never_reaches_tract() {
    // Found by the fuzzer: tract's BatchNormalization reads the channel axis of a rank-1 input
    // out of bounds, and the process died of a segmentation fault in fact inference.
    let mut p = ModelProto::decode(&seeds()[0][..]).unwrap();
    p.graph.as_mut().unwrap().node[1].input[0] = "g".into();
    let m = Model::from_proto(p).unwrap();
    assert_eq!(exercise(m.to_proto().unwrap().encode_to_vec()), 3);
    let outcome = onnxsmith::check::compare_models(&m, &m, &Default::default()).unwrap();
    match outcome {
        onnxsmith::check::Outcome::Unverified(why) => {
            assert!(why.contains("BatchNormalization at node 'bn'"), "{why}");
            assert!(why.contains("rank 1"), "{why}");
        }
        other => panic!("expected unverified, got {other:?}"),
    }
}

#[test]
fn transpose_whose_perm_repeats_an_axis_never_reaches_tract() {
    // Found by the pipeline fuzzer: tract turns a Transpose into axis moves and, for a perm
    // that repeats an axis, grows that list until memory runs out, in shape inference already.
    let mut t = node("Transpose", "t", &["x"], &["y"]);
    t.attribute.push(common::attr_ints("perm", &[1, 2, 1]));
    let p = model_io(
        vec![t],
        vec![f32_info("x", &[1, 2, 3])],
        vec![f32_info("y", &[2, 3, 2])],
        vec![],
    );
    let m = Model::from_proto(p).unwrap();
    assert_eq!(exercise(m.to_proto().unwrap().encode_to_vec()), 3);
    let outcome = onnxsmith::check::compare_models(&m, &m, &Default::default()).unwrap();
    match outcome {
        onnxsmith::check::Outcome::Unverified(why) => {
            assert!(why.contains("Transpose at node 't'"), "{why}");
            assert!(why.contains("not a permutation"), "{why}");
        }
        other => panic!("expected unverified, got {other:?}"),
    }
}

#[test]
fn a_conv_inside_a_constant_cone_is_not_evaluated_with_it() {
    // Found by the pipeline fuzzer (fuzz/crashes/conv-of-a-folded-scalar.onnx): folding handed
    // tract a cone ending in a Conv of a scalar that a Mul computes, the guard saw no rank for
    // that input, and tract read the channel axis out of bounds (which only a build of tract
    // with debug assertions stops, so the test asks the evaluator directly). Evaluated alone,
    // once the Mul is folded, the Conv meets the guard.
    let mut conv = node("Conv", "conv", &["s", "W"], &["y"]);
    conv.attribute.push(common::attr_ints("kernel_shape", &[1]));
    let p = model_io(
        vec![node("Mul", "mul", &["a", "b"], &["s"]), conv],
        vec![f32_info("x", &[1])],
        vec![f32_info("y", &[1, 1, 1])],
        vec![
            f32_tensor("a", &[], &[2.0]),
            f32_tensor("b", &[], &[3.0]),
            f32_tensor("W", &[1, 1, 1], &[1.0]),
        ],
    );
    let mut m = Model::from_proto(p).unwrap();
    let g = &m.graph;
    let cone: Vec<_> = g.node_ids().collect();
    let y = g.outputs()[0].value;
    let refused = onnxsmith::runtime::Evaluator::of(&m)
        .evaluate(g, &cone, &[y])
        .unwrap_err();
    assert!(
        refused.to_string().contains("computed first"),
        "{refused:#}"
    );
    run_pipeline(&mut m, &PipelineOptions::default()).unwrap();
    let ops: Vec<String> = m
        .graph
        .node_ids()
        .map(|n| m.graph.node(n).op().to_string())
        .collect();
    assert_eq!(ops, ["Conv"], "the Mul folds, the Conv stays");
}

/// A model whose tensors are all external data, reached directly, through a link and a
/// directory link that stay inside, and from a Constant's attribute; its locations name files
/// of `common::external_dir`, which the `load` fuzz target lays out and resolves them against.
fn external_seed() -> Vec<u8> {
    external_seed_reading(["w.bin", "alias.bin", "d/w.bin", "sub/w.bin"])
}

/// Locations of `common::external_dir` that are refused: a FIFO, a chain of links leading
/// outside, a directory link leading outside, a link to a device.
const REFUSED: [&str; 4] = ["pipe", "hop.bin", "up/secret.bin", "zero"];

/// The model of [`external_seed`] with its three initializers and its Constant read from
/// `locations`.
fn external_seed_reading(locations: [&str; 4]) -> Vec<u8> {
    let at = |name: &str, location: &str, offset: u64| {
        common::external_tensor(name, 1, &[4], location, offset, 16)
    };
    let mut constant = node("Constant", "k", &[], &["k"]);
    constant
        .attribute
        .push(onnxsmith::onnx::proto::AttributeProto {
            name: "value".into(),
            r#type: 4,
            t: Some(at("", locations[3], 256)),
            ..Default::default()
        });
    model_io(
        vec![
            node("Add", "add_a", &["x", "a"], &["t1"]),
            node("Mul", "mul_b", &["t1", "b"], &["t2"]),
            node("Sub", "sub_c", &["t2", "c"], &["t3"]),
            constant,
            node("Add", "add_k", &["t3", "k"], &["y"]),
        ],
        vec![f32_info("x", &[4])],
        vec![f32_info("y", &[4])],
        vec![
            at("a", locations[0], 0),
            at("b", locations[1], 64),
            at("c", locations[2], 128),
        ],
    )
    .encode_to_vec()
}

/// Locations worth trying against `common::external_dir`: files inside, links that stay
/// inside, links and paths that lead out, special files, and names that are not there.
const LOCATIONS: &[&str] = &[
    "w.bin",
    "sub/w.bin",
    "alias.bin",
    "d/w.bin",
    "up/model/w.bin",
    "./w.bin",
    "outside.bin",
    "hop.bin",
    "up/secret.bin",
    "up",
    "zero",
    "pipe",
    "sub",
    ".",
    "",
    "/dev/zero",
    "../secret.bin",
    "d/../w.bin",
    "missing.bin",
];

/// Points one external tensor of `seed` at a random location, offset and length.
fn damage_external(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut m = ModelProto::decode(seed).expect("seeds decode");
    let g = m.graph.as_mut().unwrap();
    let constant = g.node[3].attribute[0].t.as_mut().unwrap();
    let mut tensors: Vec<_> = g.initializer.iter_mut().collect();
    tensors.push(constant);
    let t = tensors.swap_remove(rng.random_range(0..tensors.len()));
    t.external_data[0].value = LOCATIONS[rng.random_range(0..LOCATIONS.len())].into();
    match rng.random_range(0..4) {
        0 => t.external_data[1].value = rng.random_range(0..4200u64).to_string(),
        1 => t.external_data.truncate(1),
        2 => t.external_data[2].value = "-1".into(),
        _ => {}
    }
    m.encode_to_vec()
}

/// Damaged external references resolve to files inside the model's directory or are refused
/// with a message, never a panic; nothing outside is read and a FIFO is never waited on (the
/// test would hang). Half the cases change the references, half the bytes of the model.
#[test]
#[cfg(unix)]
fn external_references_resolve_inside_or_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let model_dir = common::external_dir::make(root.path())
        .canonicalize()
        .unwrap();
    let seed = external_seed();
    let mut proto = onnxsmith::onnx::decode_model(seed.clone().into(), "seed").unwrap();
    let files = onnxsmith::onnx::resolve_external_data(&mut proto, &model_dir, None).unwrap();
    assert_eq!(
        files.len(),
        4,
        "the seed reads its four locations: {files:?}"
    );
    assert_eq!(
        exercise(proto.encode_to_vec()),
        3,
        "the seed loads and optimizes"
    );
    let bytes = external_seed_reading(REFUSED);
    let mut proto = onnxsmith::onnx::decode_model(bytes.into(), "seed").unwrap();
    let e = onnxsmith::onnx::resolve_external_data(&mut proto, &model_dir, None).unwrap_err();
    assert!(format!("{e:#}").contains("'pipe' resolves to"), "{e:#}");
    let (mut resolved, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..2000u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(case);
        let bytes = if case % 2 == 0 {
            damage_external(&seed, &mut rng)
        } else {
            mutate(&seed, &mut rng)
        };
        let Ok(mut proto) = onnxsmith::onnx::decode_model(bytes.into(), "fuzz") else {
            continue;
        };
        let run = catch_unwind(AssertUnwindSafe(|| {
            let files = onnxsmith::onnx::resolve_external_data(&mut proto, &model_dir, None)?;
            let _ = Model::from_proto(proto.clone()).map(|m| m.to_proto());
            anyhow::Ok(files)
        }));
        match run {
            Err(_) => panics.push(case),
            Ok(Ok(files)) => {
                resolved += 1;
                for f in files {
                    let real = f.canonicalize().unwrap();
                    assert!(real.starts_with(&model_dir), "case {case} read {f:?}");
                    assert!(real.is_file(), "case {case} read {f:?}");
                }
            }
            Ok(Err(e)) => {
                refused += format!("{e:#}").contains("refused") as usize;
            }
        }
    }
    eprintln!("external: {resolved} resolved, {refused} refused for where they lead");
    assert!(panics.is_empty(), "cases that panicked: {panics:?}");
    assert!(resolved > 100 && refused > 100, "{resolved} {refused}");
}
