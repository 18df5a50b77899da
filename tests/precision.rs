//! Mixed precision: what goes to 16 bits and what stays f32 (a test per rule, fires and
//! refuses), Cast placement, the interface, bodies, the shapes onnxconverter-common breaks on,
//! bf16 emulation, the accuracy search, and every rewrite's numbers through tract.

mod common;

use std::collections::HashMap;

use common::{
    attr_int, attr_ints, before_after, bin, conv_net, f32_info, f32_tensor, i64_tensor, in_a_loop,
    in_an_if, info, lift, model_io, node, values, write_npy_values,
};
use onnxsmith::check::{compare_models, CheckOptions, LossyLimits, Outcome, Rule};
use onnxsmith::ir::{DType, Graph, Model};
use onnxsmith::lossy::SampleOptions;
use onnxsmith::onnx::proto::ModelProto;
use onnxsmith::passes::precision::emulate::checked_form;
use onnxsmith::passes::precision::schemas::{schema, Tie};
use onnxsmith::passes::precision::{self, types, Io, Kind, Lowered, PrecisionOptions};
use onnxsmith::passes::{run_stages, selected, PassContext, PipelineOptions};
use onnxsmith::report::CheckStatus;
use onnxsmith::{optimize_model, Options};

/// The precision stage alone on `m` (no samples: no ranges), with the IR verified after every
/// pass; the result and what `lower-precision` recorded.
fn lower_with(m: &Model, opts: PrecisionOptions) -> (Model, Lowered) {
    let mut cx = PassContext::new(true);
    cx.provide(opts);
    let mut out = m.clone();
    let po = PipelineOptions {
        verify_each: true,
        ..Default::default()
    };
    run_stages(&mut out, &[precision::stage()], &po, &mut cx).unwrap();
    assert_typed_consistently(&out);
    (out, cx.get::<Lowered>().cloned().unwrap())
}

fn lower(m: &Model) -> (Model, Lowered) {
    lower_with(m, PrecisionOptions::default())
}

/// The rule that kept op `name` in f32, or `None` when it went to 16 bits.
fn rule_of<'a>(l: &'a Lowered, name: &str) -> Option<&'a str> {
    if l.low.iter().any(|(n, _)| n == name) {
        return None;
    }
    let kept = l.f32.iter().find(|(n, _, _)| n == name);
    Some(
        kept.unwrap_or_else(|| panic!("'{name}' was not judged: {l:#?}"))
            .2
            .rule,
    )
}

/// `after` (lowered with `opts`), as the check runs it, agrees with `before` in tract on
/// seeded inputs within what 16 bits allow.
fn assert_close_with(before: &Model, after: &Model, opts: &PrecisionOptions) {
    let checked = checked_form(after, opts).unwrap();
    let limits = LossyLimits {
        min_cosine: 0.999,
        min_top1: 0.9,
        max_error: Some(0.02),
    };
    let check = CheckOptions {
        rule: Rule::Lossy(limits),
        samples: 3,
        ..Default::default()
    };
    match compare_models(before, &checked, &check).unwrap() {
        Outcome::Checked(r) => assert!(r.ok(), "{}", r.to_table()),
        Outcome::Unverified(why) => panic!("tract could not run the models: {why}"),
    }
}

fn assert_close(before: &Model, after: &Model) {
    assert_close_with(before, after, &PrecisionOptions::default());
}

/// What a checker would say: every declared type agrees with what its producer makes, and
/// the formals of one type parameter of every op share one type, in every graph.
fn assert_typed_consistently(m: &Model) {
    fn check(g: &Graph, opset: i64, outer: &HashMap<String, DType>) {
        let t = types::infer(g, outer, opset);
        for (v, value) in g.values() {
            let (Some(declared), Some(made)) = (g.dtype(v), t.get(&v)) else {
                continue;
            };
            assert_eq!(
                declared,
                *made,
                "'{}' is declared {declared} but made {made}",
                value.name()
            );
        }
        for o in g.outputs() {
            let declared = o.info.ty.as_ref().and_then(|t| t.dtype());
            if let (Some(d), Some(m)) = (declared, t.get(&o.value)) {
                assert_eq!(d, *m, "output '{}'", g.value(o.value).name());
            }
        }
        let mut names = outer.clone();
        names.extend(
            g.values()
                .filter_map(|(v, x)| Some((x.name().to_string(), *t.get(&v)?))),
        );
        for n in g.node_ids() {
            let node = g.node(n);
            if let Some(s) = schema(node.op(), opset).filter(|_| node.in_standard_domain()) {
                let mut ties: HashMap<&str, DType> = HashMap::new();
                let ins = node
                    .inputs()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, s.input(i)));
                let outs = node
                    .outputs()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, s.output(i)));
                for (v, f) in ins.chain(outs) {
                    let (Some(v), Some(f)) = (v, f) else { continue };
                    let (Tie::Param(p), Some(&d)) = (f.tie, t.get(&v)) else {
                        continue;
                    };
                    // The schemas record which float types a formal takes.
                    assert!(
                        !matches!(d, DType::F16 | DType::BF16) || f.accepts(d),
                        "{} '{}' takes no {d} at opset {opset}",
                        node.op(),
                        node.name()
                    );
                    let first = *ties.entry(p).or_insert(d);
                    assert_eq!(
                        first,
                        d,
                        "{} '{}': {p} holds {first} and {d}",
                        node.op(),
                        node.name()
                    );
                }
            }
            for body in node.attrs().iter().flat_map(|a| a.bodies()) {
                check(body, opset, &names);
            }
        }
    }
    check(&m.graph, m.opset("").unwrap(), &HashMap::new());
}

/// The element type of the value named `name` (declared or an initializer's).
fn dtype_of(m: &Model, name: &str) -> DType {
    let g = &m.graph;
    let v = g.find(name).unwrap_or_else(|| panic!("no value '{name}'"));
    g.value(v)
        .constant()
        .map(|t| t.dtype())
        .or(g.dtype(v))
        .unwrap()
}

fn casts(m: &Model) -> usize {
    common::count_op(m, "Cast")
}

#[test]
fn lowers_a_conv_net_keeping_its_interface() {
    let m = lift(conv_net(17));
    let (out, l) = lower(&m);
    for w in ["W1", "b1", "W2", "W3", "b3"] {
        assert_eq!(dtype_of(&out, w), DType::F16, "{w}");
    }
    assert!(l.f32.is_empty(), "{:#?}", l.f32);
    assert_eq!(dtype_of(&out, "x"), DType::F32);
    assert_eq!(dtype_of(&out, "y"), DType::F32);
    // One Cast in, one out: nowhere else does the precision change.
    assert_eq!((casts(&out), l.casts), (2, 2));
    assert_eq!(precision::weight_share(&out.graph), 1.0);
    assert_close(&m, &out);
    insta::assert_snapshot!(before_after(&m, &out));
}

#[test]
fn io_types_low_declares_the_interface_in_16_bits() {
    let m = lift(conv_net(17));
    let opts = PrecisionOptions {
        io: Io::Low,
        ..Default::default()
    };
    let (out, _) = lower_with(&m, opts.clone());
    assert_eq!(dtype_of(&out, "x"), DType::F16);
    assert_eq!(dtype_of(&out, "y"), DType::F16);
    assert_eq!(casts(&out), 0);
    assert_close_with(&m, &out, &opts);
}

/// x[2,3] ─▶ Relu ─▶ Reshape(to Shape(x) computed in float: Cast ─▶ Mul(1) ─▶ Cast) ─▶ y.
#[test]
fn shape_arithmetic_stays_f32() {
    let mut to_float = node("Cast", "shape_to_float", &["s"], &["sf"]);
    to_float.attribute = vec![attr_int("to", 1)];
    let mut to_int = node("Cast", "shape_to_int", &["sm"], &["si"]);
    to_int.attribute = vec![attr_int("to", 7)];
    let m = lift(model_io(
        vec![
            node("Relu", "relu", &["x"], &["r"]),
            node("Shape", "shape", &["x"], &["s"]),
            to_float,
            node("Mul", "scale_shape", &["sf", "one"], &["sm"]),
            to_int,
            node("Reshape", "reshape", &["r", "si"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![f32_tensor("one", &[], &[1.0])],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "shape_to_float"), Some("shape-arithmetic"));
    assert_eq!(rule_of(&l, "scale_shape"), Some("shape-arithmetic"));
    assert_eq!(rule_of(&l, "relu"), None);
    assert_eq!(dtype_of(&out, "one"), DType::F32);
    assert_close(&m, &out);
}

/// y = Cast<int64>(Floor(x · 300)), z = Relu(x): an index computed in float.
#[test]
fn values_read_as_integers_keep_their_producers_f32() {
    let mut to_int = node("Cast", "to_index", &["fl"], &["y"]);
    to_int.attribute = vec![attr_int("to", 7)];
    let m = lift(model_io(
        vec![
            node("Mul", "scale", &["x", "k"], &["s"]),
            node("Floor", "floor", &["s"], &["fl"]),
            to_int,
            node("Relu", "relu", &["x"], &["z"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![info("y", 7, &[2, 3]), f32_info("z", &[2, 3])],
        vec![f32_tensor("k", &[], &[300.0])],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "scale"), Some("read-as-integer"));
    assert_eq!(rule_of(&l, "floor"), Some("read-as-integer"));
    assert_eq!(rule_of(&l, "relu"), None);
    assert_close(&m, &out);
}

/// ReduceMean over `n` elements of the last axis of x[2, n].
fn reduce_mean_over(n: i64) -> Model {
    let mut mean = node("ReduceMean", "mean", &["x"], &["y"]);
    mean.attribute = vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)];
    lift(model_io(
        vec![mean],
        vec![f32_info("x", &[2, n])],
        vec![f32_info("y", &[2, 1])],
        vec![],
    ))
}

#[test]
fn long_sums_stay_f32_and_short_ones_do_not() {
    let long = reduce_mean_over(512);
    let (out, l) = lower(&long);
    assert_eq!(rule_of(&l, "mean"), Some("long-sum"));
    assert_eq!(casts(&out), 0);
    let short = reduce_mean_over(8);
    let (out, l) = lower(&short);
    assert_eq!(rule_of(&l, "mean"), None);
    assert_close(&short, &out);
}

/// RMS norm built from ops: x / Sqrt(ReduceMean(Pow(x, 2)) + ε) · γ.
#[test]
fn squares_and_the_statistics_on_them_stay_f32() {
    let mut mean = node("ReduceMean", "mean", &["sq"], &["ms"]);
    mean.attribute = vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)];
    let m = lift(model_io(
        vec![
            node("Pow", "square", &["x", "two"], &["sq"]),
            mean,
            node("Add", "add_eps", &["ms", "eps"], &["mse"]),
            node("Sqrt", "root", &["mse"], &["rms"]),
            node("Div", "normalize", &["x", "rms"], &["n"]),
            node("Mul", "gamma", &["n", "g"], &["y"]),
        ],
        vec![f32_info("x", &[2, 8])],
        vec![f32_info("y", &[2, 8])],
        vec![
            f32_tensor("two", &[], &[2.0]),
            f32_tensor("eps", &[], &[1e-6]),
            f32_tensor("g", &[8], &values(8, 3)),
        ],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "square"), Some("square"));
    for n in ["mean", "add_eps", "root"] {
        assert_eq!(rule_of(&l, n), Some("statistics"), "{n}");
    }
    assert_eq!(rule_of(&l, "normalize"), None);
    assert_eq!(rule_of(&l, "gamma"), None);
    assert_eq!(dtype_of(&out, "eps"), DType::F32);
    assert_close(&m, &out);
}

#[test]
fn random_ops_stay_f32() {
    let m = lift(model_io(
        vec![
            node("RandomUniformLike", "noise", &["x"], &["u"]),
            node("Add", "add", &["x", "u"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    ));
    let (_, l) = lower(&m);
    assert_eq!(rule_of(&l, "noise"), Some("random"));
    assert_eq!(rule_of(&l, "add"), None);
}

/// An attention mask of -1e9 and an ε of 1e-12 do not fit fp16; 0.5 beside 1e-12 does.
#[test]
fn constants_past_the_range_keep_their_readers_f32() {
    let m = lift(model_io(
        vec![
            node("Add", "mask", &["x", "neg"], &["a"]),
            node("Mul", "tiny", &["a", "eps"], &["b"]),
            node("Mul", "mixed", &["b", "some"], &["y"]),
        ],
        vec![f32_info("x", &[2, 2])],
        vec![f32_info("y", &[2, 2])],
        vec![
            f32_tensor("neg", &[2], &[0.0, -1e9]),
            f32_tensor("eps", &[], &[1e-12]),
            f32_tensor("some", &[2], &[1e-12, 0.5]),
        ],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "mask"), Some("constant-range"));
    assert_eq!(rule_of(&l, "tiny"), Some("constant-range"));
    assert_eq!(rule_of(&l, "mixed"), None);
    assert_eq!(dtype_of(&out, "some"), DType::F16);
}

#[test]
fn bf16_goes_only_where_the_opset_has_it() {
    let m = lift(conv_net(17));
    let opts = PrecisionOptions {
        kind: Kind::Bf16,
        ..Default::default()
    };
    let (out, l) = lower_with(&m, opts.clone());
    // Conv takes bf16 from opset 22; Relu and Gemm from 13/14. A Relu between two f32 Convs
    // would only add Casts.
    assert_eq!(rule_of(&l, "conv1"), Some("no-16-bit-form"));
    assert_eq!(rule_of(&l, "relu1"), Some("enclosed"));
    assert_eq!(rule_of(&l, "fc"), None);
    assert_eq!(dtype_of(&out, "W1"), DType::F32);
    assert_eq!(dtype_of(&out, "W3"), DType::BF16);
    assert_close_with(&m, &out, &opts);
    let (out22, l22) = lower_with(&lift(conv_net(22)), opts.clone());
    assert_eq!(rule_of(&l22, "conv1"), None);
    assert_eq!(dtype_of(&out22, "W1"), DType::BF16);
}

/// Emulation rounds as the 16-bit type does (nearest, ties to even), range included, with f32
/// ops tract runs.
fn assert_emulation_rounds_like(kind: Kind, xs: &[f32]) {
    let mut to = node("Cast", "down", &["x"], &["h"]);
    to.attribute = vec![attr_int("to", kind.dtype().0 as i64)];
    let mut back = node("Cast", "up", &["h"], &["y"]);
    back.attribute = vec![attr_int("to", 1)];
    let n = xs.len() as i64;
    let mut p = model_io(
        vec![to, back],
        vec![f32_info("x", &[n])],
        vec![f32_info("y", &[n])],
        vec![],
    );
    p.opset_import[0].version = 21;
    let m = lift(p);
    let opts = PrecisionOptions {
        kind,
        ..Default::default()
    };
    let emulated = checked_form(&m, &opts).unwrap().into_owned();
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    let shape = [xs.len()];
    let x = onnxsmith::runtime::HostTensor::from_le_bytes(DType::F32, &shape, &bytes).unwrap();
    let runner = onnxsmith::runtime::Runner::new(&emulated, &Default::default(), &[]).unwrap();
    let got = runner.run(&[x]).unwrap()[0].to_f32().unwrap();
    let want: Vec<f32> = xs.iter().map(|&x| kind.round(x)).collect();
    assert_eq!(got, want, "{kind}");
}

#[test]
fn emulation_rounds_like_bf16_and_fp16() {
    // Ties to even (down, then up), values rounding either way.
    let tie = |bits: i32| 2f32.powi(-bits);
    let common = [std::f32::consts::PI, -std::f32::consts::E, 1e-3, 0.0];
    let bf16 = [1.0, 1.0 + tie(8), 1.0 + 3.0 * tie(8)];
    assert_emulation_rounds_like(Kind::Bf16, &[&bf16[..], &common].concat());
    // fp16's range too: 65,519 rounds to its largest, 65,520 and past are infinite, and
    // below 2^-14 its values are multiples of 2^-24.
    let fp16 = [
        1.0,
        1.0 + tie(11),
        1.0 + 3.0 * tie(11),
        65519.0,
        65520.0,
        -7e4,
        3.3e-6,
        1e-8,
    ];
    assert_emulation_rounds_like(Kind::F16, &[&fp16[..], &common].concat());
}

/// An op of another domain runs as written: f32 in, f32 out.
#[test]
fn ops_of_other_domains_stay_f32() {
    let mut custom = node("Scale", "custom", &["r"], &["y"]);
    custom.domain = "com.example".into();
    let mut p = model_io(
        vec![node("Relu", "relu", &["x"], &["r"]), custom],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    );
    p.opset_import
        .push(onnxsmith::onnx::proto::OperatorSetIdProto {
            domain: "com.example".into(),
            version: 1,
        });
    let (out, l) = lower(&lift(p));
    assert_eq!(rule_of(&l, "custom"), Some("opaque"));
    assert_eq!(rule_of(&l, "relu"), None);
    let g = &out.graph;
    let custom = g
        .node_ids()
        .find(|&n| g.node(n).name() == "custom")
        .unwrap();
    let read = g.node(custom).input(0).unwrap();
    assert_eq!(g.dtype(read), Some(DType::F32));
}

/// onnxconverter-common #306, #272, #208: Resize scales turned fp16, which the schema types
/// as float alone.
#[test]
fn resize_scales_stay_f32() {
    let mut resize = node("Resize", "resize", &["r", "", "scales"], &["y"]);
    resize.attribute = vec![common::attr_str("mode", "nearest")];
    let m = lift(model_io(
        vec![node("Relu", "relu", &["x"], &["r"]), resize],
        vec![f32_info("x", &[1, 2, 3, 3])],
        vec![f32_info("y", &[1, 2, 6, 6])],
        vec![f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "resize"), None);
    assert_eq!(dtype_of(&out, "scales"), DType::F32);
    assert_close(&m, &out);
}

/// onnxconverter-common #320, #331: a Cast to float whose `to` was not patched, so that it
/// wrote float where float16 was declared.
#[test]
fn a_cast_to_float_writes_the_16_bit_type_it_is_declared() {
    let mut cast = node("Cast", "to_float", &["ids"], &["f"]);
    cast.attribute = vec![attr_int("to", 1)];
    let m = lift(model_io(
        vec![cast, node("Add", "add", &["f", "x"], &["y"])],
        vec![info("ids", 7, &[2, 3]), f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "to_float"), None);
    let g = &out.graph;
    let cast = g
        .node_ids()
        .find(|&n| g.node(n).name() == "to_float")
        .unwrap();
    assert_eq!(g.node(cast).attr_i("to"), Some(DType::F16.0 as i64));
    assert_close(&m, &out);
}

/// onnxconverter-common #208: with the interface kept, its Casts came out of topological
/// order. Here the output is also read inside the graph.
#[test]
fn casts_are_written_in_topological_order() {
    let m = lift(model_io(
        vec![
            node("Relu", "relu", &["x"], &["y"]),
            node("Neg", "neg", &["y"], &["z"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3]), f32_info("z", &[2, 3])],
        vec![],
    ));
    let (out, _) = lower(&m);
    let proto = out.to_proto().unwrap();
    let g = proto.graph.unwrap();
    let mut known: Vec<String> = g.input.iter().map(|i| i.name.clone()).collect();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            assert!(
                known.contains(i),
                "'{}' reads '{i}' before it is made",
                n.name
            );
        }
        known.extend(n.output.iter().cloned());
    }
    assert_eq!(casts(&out), 3);
    assert_close(&m, &out);
}

/// onnxconverter-common #304: an initializer read by an op kept in f32 and by a 16-bit one
/// got one type for both. Each reader reads its own type.
#[test]
fn a_constant_shared_by_both_precisions_is_typed_for_each_reader() {
    let m = lift(model_io(
        vec![
            node("Add", "mask", &["x", "c"], &["a"]),
            node("Mul", "low", &["a", "c"], &["y"]),
        ],
        vec![f32_info("x", &[2, 2])],
        vec![f32_info("y", &[2, 2])],
        vec![f32_tensor("c", &[2], &[0.5, 2.0])],
    ));
    let opts = PrecisionOptions::default();
    let mut cx = PassContext::new(false);
    cx.provide(opts);
    cx.exclude = vec!["mask".into()];
    let mut out = m.clone();
    run_stages(
        &mut out,
        &[precision::stage()],
        &PipelineOptions::default(),
        &mut cx,
    )
    .unwrap();
    assert_typed_consistently(&out);
    assert_eq!(dtype_of(&out, "c"), DType::F32);
    assert_eq!(dtype_of(&out, "c_fp16"), DType::F16);
    assert_close(&m, &out);
}

/// x ─▶ Pad ─▶ Conv ─▶ y.
fn pad_conv() -> ModelProto {
    let mut pad = node("Pad", "pad", &["x", "pads"], &["p"]);
    pad.attribute = vec![common::attr_str("mode", "reflect")];
    let mut conv = node("Conv", "conv", &["p", "W"], &["y"]);
    conv.attribute = vec![attr_ints("kernel_shape", &[3, 3])];
    model_io(
        vec![pad, conv],
        vec![f32_info("x", &[1, 2, 6, 6])],
        vec![f32_info("y", &[1, 2, 6, 6])],
        vec![
            i64_tensor("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]),
            f32_tensor("W", &[2, 2, 3, 3], &values(36, 7)),
        ],
    )
}

/// The VAD failure: onnxconverter-common declared a float16 Pad output inside an If where
/// float is declared. Bodies are lowered, every declaration agreeing with its producer, and
/// the If keeps its interface.
#[test]
fn bodies_of_an_if_are_lowered_and_typed_right() {
    let m = lift(in_an_if(pad_conv()));
    let (out, l) = lower(&m);
    assert!(
        l.low.iter().any(|(n, _)| n == "if/then_conv"),
        "{:#?}",
        l.low
    );
    assert!(
        l.low.iter().any(|(n, _)| n == "if/else_pad"),
        "{:#?}",
        l.low
    );
    assert_eq!(dtype_of(&out, "y"), DType::F32);
    assert_close(&m, &out);
}

#[test]
fn loop_bodies_are_lowered_and_typed_right() {
    let m = lift(in_a_loop(pad_conv(), None));
    let (out, l) = lower(&m);
    assert!(
        l.low.iter().any(|(n, _)| n == "loop/body_conv"),
        "{:#?}",
        l.low
    );
    let checked = checked_form(&out, &PrecisionOptions::default()).unwrap();
    let body = |m: &Model| common::loop_body_alone(m, None);
    let f32_form = PrecisionOptions::default();
    assert_close_with(&body(&m), &body(&checked), &f32_form);
}

#[test]
fn cancels_only_exact_cast_pairs() {
    let cast = |name: &str, from: &str, to: i64, out: &str| {
        let mut c = node("Cast", name, &[from], &[out]);
        c.attribute = vec![attr_int("to", to)];
        c
    };
    let mut p = model_io(
        vec![
            cast("down", "x", 10, "h"),
            cast("up", "h", 1, "w"),
            cast("down_again", "w", 10, "h2"),
            cast("up_again", "h2", 1, "y"),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    );
    p.graph.as_mut().unwrap().value_info = vec![info("h", 10, &[2, 3]), info("w", 1, &[2, 3])];
    let m = lift(p);
    let mut out = m.clone();
    let opts = PipelineOptions {
        only: Some(vec!["cancel-casts".into(), "dead-code".into()]),
        explain: true,
        verify_each: true,
        ..Default::default()
    };
    let stages = selected(&opts, vec![precision::stage()]).unwrap();
    let report = run_stages(&mut out, &stages, &opts, &mut PassContext::new(true)).unwrap();
    // f16 → f32 → f16 is exact and goes; x (f32) → f16 → f32 rounds and stays.
    assert_eq!(casts(&out), 2);
    assert_eq!(report.steps, vec!["cancel-casts", "dead-code"]);
    common::assert_explained(&report, "rounds its value");
    assert_close(&m, &out);
}

/// x ─▶ Mul(200) ─▶ Mul(400) ─▶ Div(400) ─▶ y: the middle value passes fp16's range.
fn overflowing() -> Model {
    lift(model_io(
        vec![
            node("Mul", "up1", &["x", "a"], &["u"]),
            node("Mul", "up2", &["u", "b"], &["v"]),
            node("Div", "down", &["v", "b"], &["y"]),
        ],
        vec![f32_info("x", &[4, 8])],
        vec![f32_info("y", &[4, 8])],
        vec![
            f32_tensor("a", &[], &[200.0]),
            f32_tensor("b", &[], &[400.0]),
        ],
    ))
}

fn precision_job(m: &Model, samples: SampleOptions) -> onnxsmith::Optimized {
    optimize_model(
        m,
        &Options {
            quiet: true,
            samples,
            precision: Some(PrecisionOptions::default()),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn the_search_gives_the_overflowing_op_back_to_f32() {
    let done = precision_job(&overflowing(), SampleOptions::default());
    let text = done.report.to_text();
    assert!(
        matches!(done.report.check, CheckStatus::Verified { .. }),
        "{text}"
    );
    let p = done.report.precision.unwrap();
    assert!(p.fallback.contains(&"up2".to_string()), "{text}");
    assert!(p.fallback_tries > 0 && p.fallback_tries <= 6, "{text}");
    assert!(!p.fallback.contains(&"up1".to_string()), "{text}");
}

#[test]
fn measured_ranges_keep_the_producer_of_a_large_value_f32() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let data: Vec<f32> = values(32, i).iter().map(|v| v * 3.0).collect();
        write_npy_values(
            &dir.path().join(format!("{i:02}.npy")),
            &[4, 8],
            &data,
            false,
        );
    }
    let samples = SampleOptions {
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let done = precision_job(&overflowing(), samples);
    let text = done.report.to_text();
    assert!(
        matches!(done.report.check, CheckStatus::Verified { .. }),
        "{text}"
    );
    let p = done.report.precision.unwrap();
    assert_eq!(p.fallback_tries, 0, "{text}");
    let up2 = p.f32_ops.iter().find(|(n, _, _)| n == "up2");
    assert_eq!(up2.map(|o| o.2.rule), Some("range"), "{text}");
    assert!(p.range_samples > 0);
}

#[test]
fn what_int8_leaves_float_runs_in_16_bits() {
    let mut p = conv_net(17);
    let g = p.graph.as_mut().unwrap();
    g.output[0].name = "logits".into();
    g.node.last_mut().unwrap().output[0] = "logits".into();
    g.node.push(node("Sigmoid", "sigmoid", &["logits"], &["y"]));
    g.output.push(f32_info("y", &[1, 5]));
    let m = lift(p);
    let done = optimize_model(
        &m,
        &Options {
            quiet: true,
            samples: SampleOptions {
                random: Some(16),
                ..Default::default()
            },
            quantize: Some(Default::default()),
            precision: Some(PrecisionOptions::default()),
            ..Default::default()
        },
    )
    .unwrap();
    let text = done.report.to_text();
    assert!(done.report.passed(), "{text}");
    let p = done.report.precision.as_ref().unwrap();
    let rule = |name: &str| p.f32_ops.iter().find(|o| o.0 == name).map(|o| o.2.rule);
    assert_eq!(rule("conv1"), Some("quantized"), "{text}");
    assert_eq!(rule("sigmoid"), None, "{text}");
    assert_typed_consistently(&done.model);
}

#[test]
fn the_command_line_lowers_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("m.onnx"), dir.path().join("m16.onnx"));
    std::fs::write(&input, prost::Message::encode_to_vec(&conv_net(17))).unwrap();
    let out = bin()
        .args(["optimize", "--quiet", "--precision", "fp16", "-o"])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("fp16: 6 op(s) in 16 bits, 0 in f32, 2 Cast(s)"),
        "{text}"
    );
    assert!(text.contains("weights 16-bit: 100%"), "{text}");
    assert!(text.contains("checked by emulation"), "{text}");
    let written = onnxsmith::files::load(&output).unwrap().model;
    assert_eq!(dtype_of(&written, "W1"), DType::F16);
    let list = bin().args(["optimize", "--list-passes"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for id in ["measure-ranges", "lower-precision", "cancel-casts"] {
        assert!(list.contains(id), "{list}");
    }
}

/// onnxconverter-common #308: weights in external data were left unconverted. They are read
/// from the mapped file and written converted, into the output's external data.
#[test]
fn external_data_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("m.onnx"), dir.path().join("m16.onnx"));
    let mut p = conv_net(17);
    let w: Vec<u8> = values(108, 1)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("m.data"), &w).unwrap();
    let g = p.graph.as_mut().unwrap();
    g.initializer[0] = common::external_tensor("W1", 1, &[4, 3, 3, 3], "m.data", 0, 432);
    std::fs::write(&input, prost::Message::encode_to_vec(&p)).unwrap();
    let out = bin()
        .args([
            "optimize",
            "--quiet",
            "--precision",
            "fp16",
            "--external-data",
            "-o",
        ])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = onnxsmith::files::load(&output).unwrap().model;
    let w1 = written.graph.value(written.graph.find("W1").unwrap());
    let t = w1.constant().unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.raw_bytes().unwrap().len(), 216);
}

/// A network inside both branches of an If, its weight an initializer of the main graph both
/// read by capture (as exporters write a network chosen by sample rate): the weight is
/// converted once, outside, and the If returns what its branches make in 16 bits, with no
/// Cast on either side of it.
#[test]
fn weights_captured_by_branches_are_converted_once() {
    let mut p = in_an_if(pad_conv());
    let g = p.graph.as_mut().unwrap();
    g.initializer
        .push(f32_tensor("W", &[2, 2, 3, 3], &values(36, 7)));
    for a in &mut g.node[0].attribute {
        let body = a.g.as_mut().unwrap();
        body.initializer.retain(|t| !t.name.ends_with("_W"));
        for n in &mut body.node {
            for i in &mut n.input {
                if i.ends_with("_W") {
                    *i = "W".into();
                }
            }
        }
    }
    let m = lift(p);
    let (out, _) = lower(&m);
    assert_eq!(dtype_of(&out, "W"), DType::F16);
    let g = &out.graph;
    let iff = g.node_ids().find(|&n| g.node(n).is("If")).unwrap();
    for body in g.node(iff).attrs().iter().flat_map(|a| a.bodies()) {
        let casts: Vec<&str> = (body.node_ids())
            .filter(|&n| body.node(n).is("Cast"))
            .map(|n| body.node(n).name())
            .collect();
        // x, a graph input, is read in fp16 by the Pad: one Cast per branch, and no other.
        assert_eq!(casts.len(), 1, "{casts:?}");
        let y = body.outputs()[0].value;
        assert_eq!(body.dtype(y), Some(DType::F16));
    }
    assert_eq!(casts(&out), 3);
    assert_close(&m, &out);
}

/// Every real model (when `ONNXSMITH_REALMODELS` names them) lowers to fp16 with every type
/// consistent, bodies included, and its emulation agrees with the original in tract.
#[test]
fn real_models_lower_typed_consistently_and_agree() {
    let Some(dir) = common::real_models_dir() else {
        eprintln!("skipped: set ONNXSMITH_REALMODELS to a directory filled by fetch-dev.sh");
        return;
    };
    for path in common::onnx_files(&dir) {
        let original = onnxsmith::load(&path).unwrap().model;
        let (simplified, _) =
            onnxsmith::optimize::run_passes(&original, &PipelineOptions::default()).unwrap();
        let (lowered, l) = lower(&simplified);
        assert!(!l.low.is_empty(), "{}: nothing lowered", path.display());
        let checked = checked_form(&lowered, &PrecisionOptions::default()).unwrap();
        let mut opts = common::real_model_check(&original);
        opts.rule = Rule::lossy();
        match compare_models(&original, &checked, &opts).unwrap() {
            Outcome::Checked(r) => assert!(r.ok(), "{}:\n{}", path.display(), r.to_table()),
            Outcome::Unverified(why) => eprintln!("{}: unverified: {why}", path.display()),
        }
    }
}

/// If takes bf16 outputs only from opset 16: below it, a branch that computes in bf16 casts
/// back to f32 before it returns, and the If stays f32 (`onnx.checker` refuses it otherwise).
#[test]
fn an_if_returns_bf16_only_from_opset_16() {
    let opts = PrecisionOptions {
        kind: Kind::Bf16,
        ..Default::default()
    };
    let if_output = |opset: i64| {
        let mut p = in_an_if(conv_net(opset));
        p.opset_import[0].version = opset;
        let m = lift(p);
        let (out, l) = lower_with(&m, opts.clone());
        assert!(!l.low.is_empty(), "the branches' Gemm is bf16 at {opset}");
        let g = &out.graph;
        let iff = g.node_ids().find(|&n| g.node(n).is("If")).unwrap();
        for body in g.node(iff).attrs().iter().flat_map(|a| a.bodies()) {
            let y = body.outputs()[0].value;
            let declared = g.dtype(g.node(iff).output(0).unwrap());
            assert_eq!(body.dtype(y), declared, "branch and If agree at {opset}");
        }
        if opset == 15 {
            assert_close_with(&m, &out, &opts);
        }
        g.dtype(g.node(iff).output(0).unwrap())
    };
    assert_eq!(if_output(15), Some(DType::F32));
    assert_eq!(if_output(16), Some(DType::BF16));
}

/// The search measures each 16-bit op alone on the values the result computes. A Reshape's
/// shape computed from a Shape comes out of tract as symbolic dims: it is fed to the op alone
/// as the int64 ONNX declares (it was fed as f32 and the measure failed).
#[test]
fn an_op_measured_alone_reads_a_computed_shape_as_int64() {
    use onnxsmith::lossy::sensitivity::{local_errors, Local};
    use onnxsmith::runtime::HostTensor;
    let m = lift(model_io(
        vec![
            node("Shape", "shape", &["x"], &["s"]),
            node("Reshape", "reshape", &["x", "s"], &["r"]),
            node("Relu", "relu", &["r"], &["y"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    ));
    let bytes: Vec<u8> = values(6, 1).iter().flat_map(|v| v.to_le_bytes()).collect();
    let x = HostTensor::from_le_bytes(DType::F32, &[2, 3], &bytes).unwrap();
    let op = |name: &str, inputs: &[&str], output: &str| Local {
        op: name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: output.into(),
    };
    let ops = vec![op("reshape", &["x", "s"], "r"), op("relu", &["r"], "y")];
    let errors = local_errors(&m, &m, ops, &[vec![x]]).unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|(_, e)| *e == 0.0), "{errors:?}");
}

/// bf16 for ONNX Runtime is refused before anything is read or written: its CPU kernels run
/// no bf16 arithmetic, so the file would not load. OpenVINO's target takes it.
#[test]
fn bf16_for_onnx_runtime_is_refused_and_for_openvino_written() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("m.onnx"), dir.path().join("bf.onnx"));
    std::fs::write(&input, prost::Message::encode_to_vec(&conv_net(22))).unwrap();
    let run = |target: &str| {
        bin()
            .args([
                "optimize",
                "--quiet",
                "--precision",
                "bf16",
                "--target",
                target,
            ])
            .arg("-o")
            .arg(&output)
            .arg(&input)
            .output()
            .unwrap()
    };
    let refused = run("ort");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--precision bf16 is for --target openvino or tensorrt"),
        "{err}"
    );
    assert!(!output.exists(), "nothing written");
    let written = run("openvino");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stdout)
    );
    let m = onnxsmith::files::load(&output).unwrap().model;
    assert_eq!(dtype_of(&m, "W1"), DType::BF16);
}

/// x ─▶ Gemm ─▶ Relu ─▶ y, at `opset`.
fn gemm_relu(opset: i64) -> ModelProto {
    let mut gemm = node("Gemm", "fc", &["x", "W", "b"], &["h"]);
    gemm.attribute = vec![attr_int("transB", 1)];
    let mut p = model_io(
        vec![gemm, node("Relu", "relu", &["h"], &["y"])],
        vec![f32_info("x", &[1, 4])],
        vec![f32_info("y", &[1, 3])],
        vec![
            f32_tensor("W", &[3, 4], &values(12, 1)),
            f32_tensor("b", &[3], &values(3, 2)),
        ],
    );
    p.opset_import[0].version = opset;
    p
}

/// Exporters leave a branch's outputs untyped; a branch whose values became bf16 must still
/// return what it returned (f32), for an If before opset 16 cannot return bf16, and the
/// graph around must read the If's outputs as what they are: inferred from the branch, not
/// guessed (the silero VAD at opset 15: onnx.checker refused the file).
#[test]
fn untyped_branch_outputs_keep_the_type_they_had() {
    let mut inner = in_an_if(gemm_relu(15));
    let g = inner.graph.as_mut().unwrap();
    g.node[0].input[0] = "inner_cond".into();
    g.input.last_mut().unwrap().name = "inner_cond".into();
    let mut p = in_an_if(inner);
    fn untype(g: &mut onnxsmith::onnx::proto::GraphProto) {
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(body) = a.g.as_mut() {
                    body.output.iter_mut().for_each(|o| o.r#type = None);
                    untype(body);
                }
            }
        }
    }
    untype(p.graph.as_mut().unwrap());
    let m = lift(p);
    let opts = PrecisionOptions {
        kind: Kind::Bf16,
        ..Default::default()
    };
    let (out, l) = lower_with(&m, opts.clone());
    assert!(!l.low.is_empty(), "the Gemm and Relu inside are bf16");
    assert_typed_consistently(&out);
    // Each branch returns f32, as its values compute it.
    fn branches_return_f32(g: &Graph, outer: &HashMap<String, DType>) {
        let t = types::infer(g, outer, 15);
        let mut names = outer.clone();
        names.extend((g.values()).filter_map(|(v, x)| Some((x.name().to_string(), *t.get(&v)?))));
        for n in g.node_ids() {
            for body in g.node(n).attrs().iter().flat_map(|a| a.bodies()) {
                let inner = types::infer(body, &names, 15);
                for o in body.outputs() {
                    assert_eq!(
                        inner.get(&o.value),
                        Some(&DType::F32),
                        "a branch returns f32"
                    );
                }
                branches_return_f32(body, &names);
            }
        }
    }
    branches_return_f32(&out.graph, &HashMap::new());
    assert_close_with(&m, &out, &opts);
}

/// `own-output-type`: LayerNormalization writing its Mean (training exports do) chooses that
/// output's type itself (`stash_type`), which no input carries: it stays f32. Without the
/// Mean, the same op is lowered.
#[test]
fn an_op_choosing_an_output_type_itself_stays_f32() {
    let ln = |outputs: &[&str]| {
        let mut p = model_io(
            vec![node("LayerNormalization", "ln", &["x", "g", "b"], outputs)],
            vec![f32_info("x", &[2, 4])],
            outputs.iter().map(|o| f32_info(o, &[2, 4])).collect(),
            vec![
                f32_tensor("g", &[4], &values(4, 1)),
                f32_tensor("b", &[4], &values(4, 2)),
            ],
        );
        p.graph.as_mut().unwrap().output[1..]
            .iter_mut()
            .for_each(|o| *o = f32_info(&o.name, &[2, 1]));
        lift(p)
    };
    // In bf16, which its Mean's type parameter takes (fp16 it does not: no-16-bit-form).
    let bf16 = PrecisionOptions {
        kind: Kind::Bf16,
        ..Default::default()
    };
    let (_, l) = lower_with(&ln(&["y", "mean"]), bf16);
    assert_eq!(rule_of(&l, "ln"), Some("own-output-type"));
    let (out, l) = lower(&ln(&["y"]));
    assert_eq!(rule_of(&l, "ln"), None);
    assert_typed_consistently(&out);
}

/// `f32-function`: MeanVarianceNormalization's ONNX function computes with f32 constants.
#[test]
fn mean_variance_normalization_stays_f32() {
    let m = lift(model_io(
        vec![node("MeanVarianceNormalization", "mvn", &["x"], &["y"])],
        vec![f32_info("x", &[1, 2, 3, 3])],
        vec![f32_info("y", &[1, 2, 3, 3])],
        vec![],
    ));
    let (_, l) = lower(&m);
    assert_eq!(rule_of(&l, "mvn"), Some("f32-function"));
}

/// A 16-bit op reads every float input in 16 bits, also one whose type parameter no output
/// shares: RMSNormalization's output follows its scale by the schema but its X by onnx's
/// inference, and the checker refused X left f32 beside a 16-bit scale.
#[test]
fn a_16_bit_op_reads_an_input_only_parameter_in_16_bits() {
    let mut p = model_io(
        vec![node("RMSNormalization", "rms", &["x", "g"], &["y"])],
        vec![f32_info("x", &[2, 4])],
        vec![f32_info("y", &[2, 4])],
        vec![f32_tensor("g", &[4], &values(4, 1))],
    );
    p.opset_import[0].version = 23;
    let (out, l) = lower(&lift(p));
    assert_eq!(rule_of(&l, "rms"), None);
    let g = &out.graph;
    let rms = g
        .node_ids()
        .find(|&n| g.node(n).is("RMSNormalization"))
        .unwrap();
    let x = g.node(rms).input(0).unwrap();
    assert_eq!(g.dtype(x), Some(DType::F16), "X is read in fp16");
}

/// A Constant node's value has the type its attribute holds: a 16-bit op reading it reads
/// it converted (the checker refused an Add of an fp16 value and an f32 Constant).
#[test]
fn a_constant_node_is_read_converted() {
    let mut c = node("Constant", "c", &[], &["k"]);
    c.attribute = vec![onnxsmith::onnx::proto::AttributeProto {
        name: "value".into(),
        r#type: onnxsmith::onnx::proto::attribute_proto::AttributeType::Tensor as i32,
        t: Some(f32_tensor("k", &[3], &[1.0, 2.0, 3.0])),
        ..Default::default()
    }];
    let m = lift(model_io(
        vec![c, node("Add", "add", &["x", "k"], &["y"])],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y", &[2, 3])],
        vec![],
    ));
    let (out, l) = lower(&m);
    assert_eq!(rule_of(&l, "add"), None);
    let g = &out.graph;
    let add = g.node_ids().find(|&n| g.node(n).is("Add")).unwrap();
    let k = g.node(add).input(1).unwrap();
    let t = types::infer(g, &HashMap::new(), 13);
    assert_eq!(t.get(&k), Some(&DType::F16), "the Constant is read in fp16");
    assert_close(&m, &out);
}

/// A Loop body's inputs that the export leaves untyped take the types the Loop feeds them,
/// so a 16-bit op in the body reads a carried f32 value converted (it read it as it came,
/// and the checker refused the mixed types).
#[test]
fn untyped_loop_body_inputs_take_the_types_the_loop_feeds() {
    let mut p = in_a_loop(pad_conv(), Some("x"));
    let g = p.graph.as_mut().unwrap();
    let body = g.node[0].attribute[0].g.as_mut().unwrap();
    body.input.iter_mut().for_each(|i| i.r#type = None);
    let (out, l) = lower(&lift(p));
    assert!(
        l.low.iter().any(|(n, _)| n == "loop/body_pad"),
        "{:#?}",
        l.low
    );
    let body = common::body(&out.graph, "Loop", "body");
    let pad = body.node_ids().find(|&n| body.node(n).is("Pad")).unwrap();
    assert_eq!(
        body.dtype(body.node(pad).input(0).unwrap()),
        Some(DType::F16)
    );
    assert_eq!(
        body.dtype(body.inputs()[2]),
        Some(DType::F32),
        "the carried x is declared"
    );
    assert_typed_consistently(&out);
}

/// A value converted both outside a body and inside it (a graph input the body captures and
/// an outer op reads) gets a name of its own in each: ONNX names a value once across a graph
/// and its bodies (the checker refused `delta_fp16` made twice).
#[test]
fn a_value_converted_inside_and_outside_a_body_is_named_once() {
    let mut p = in_a_loop(pad_conv(), None);
    let g = p.graph.as_mut().unwrap();
    g.node.push(node("Relu", "outer_relu", &["x"], &["z"]));
    g.output.push(f32_info("z", &[1, 2, 6, 6]));
    let (out, l) = lower(&lift(p));
    assert!(l.low.iter().any(|(n, _)| n == "outer_relu"), "{:#?}", l.low);
    let mut names = Vec::new();
    fn collect(g: &Graph, into: &mut Vec<String>) {
        for (_, v) in g.values() {
            if v.def() != onnxsmith::ir::Def::Capture {
                into.push(v.name().to_string());
            }
        }
        for n in g.node_ids() {
            for b in g.node(n).attrs().iter().flat_map(|a| a.bodies()) {
                collect(b, into);
            }
        }
    }
    collect(&out.graph, &mut names);
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "every value is named once: {names:?}");
}
