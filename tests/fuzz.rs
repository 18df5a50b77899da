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

/// Writes the seed corpus of the coverage-guided fuzzers (fuzz/seeds/): the two models above
/// and a few random valid graphs, which between them hold most ops the passes rewrite.
/// `ONNXSMITH_FUZZ_SEEDS=fuzz/seeds cargo test --test fuzz write_fuzz_seeds -- --ignored`
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::PathBuf::from(std::env::var("ONNXSMITH_FUZZ_SEEDS").expect("a directory"));
    std::fs::create_dir_all(&dir).unwrap();
    let named = ["conv_bn", "if"].map(String::from).into_iter().zip(seeds());
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
