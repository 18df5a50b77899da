//! Channel pruning: the groups found per op kind, every reason a group is left alone, the
//! exactness property (removing channels computes what the original computes with the
//! readers' weights for those channels zeroed) on ResNet-50, a MobileNet-style net and a net
//! with Concat, squeeze-excite and Flatten→Gemm, compensation, the report and determinism.

mod common;

use common::{assert_same_outputs, before_after, bin, write_npy_values};
use onnxsmith::check::{compare_models, CheckOptions, Outcome};
use onnxsmith::ir::{Attr, DType, Dim, Model, Patch, Tensor, ValueId};
use onnxsmith::lossy::SampleOptions;
use onnxsmith::optimize::run_passes;
use onnxsmith::passes::channels::weight_axes;
use onnxsmith::passes::prune::groups::Edit;
use onnxsmith::passes::prune::remove::{slice_axis, Plan};
use onnxsmith::passes::prune::{self, BnScales, GroupReport, PruneOptions, Scope};
use onnxsmith::passes::PipelineOptions;
use onnxsmith::report::CheckStatus;
use onnxsmith::zoo::Builder;
use onnxsmith::{optimize_model, Options};

fn n() -> Dim {
    Dim::Sym("N".into())
}

fn conv(
    b: &mut Builder,
    x: ValueId,
    name: &str,
    cin: usize,
    cout: usize,
    k: i64,
    group: usize,
) -> ValueId {
    let per = cin / group;
    let w = b.normal(
        cout * per * (k * k) as usize,
        (2.0 / (per as f32 * (k * k) as f32)).sqrt(),
    );
    let w = b
        .init(
            &format!("{name}.weight"),
            vec![cout as i64, per as i64, k, k],
            &w,
        )
        .unwrap();
    let bias = b.normal(cout, 0.1);
    let bias = b
        .init(&format!("{name}.bias"), vec![cout as i64], &bias)
        .unwrap();
    let mut attrs = vec![
        Attr::ints("kernel_shape", &[k, k]),
        Attr::ints("pads", &[k / 2; 4]),
    ];
    if group > 1 {
        attrs.push(Attr::int("group", group as i64));
    }
    b.op("Conv", name, &[x, w, bias], attrs).unwrap()
}

fn bn(b: &mut Builder, x: ValueId, name: &str, c: usize) -> ValueId {
    let gamma = b.uniform(c, 0.5, 1.5);
    let beta = b.normal(c, 0.1);
    let mean = b.normal(c, 0.1);
    let var = b.uniform(c, 0.5, 1.5);
    let ids: Vec<ValueId> = [
        ("weight", gamma),
        ("bias", beta),
        ("running_mean", mean),
        ("running_var", var),
    ]
    .into_iter()
    .map(|(p, v)| b.init(&format!("{name}.{p}"), vec![c as i64], &v).unwrap())
    .collect();
    b.op(
        "BatchNormalization",
        name,
        &[x, ids[0], ids[1], ids[2], ids[3]],
        vec![],
    )
    .unwrap()
}

fn relu6(b: &mut Builder, x: ValueId, name: &str) -> ValueId {
    let lo = b.init(&format!("{name}.min"), vec![], &[0.0]).unwrap();
    let hi = b.init(&format!("{name}.max"), vec![], &[6.0]).unwrap();
    b.op("Clip", name, &[x, lo, hi], vec![]).unwrap()
}

fn head(b: &mut Builder, x: ValueId, c: usize, classes: usize) {
    let p = b.op("GlobalAveragePool", "pool", &[x], vec![]).unwrap();
    let f = b
        .op("Flatten", "flatten", &[p], vec![Attr::int("axis", 1)])
        .unwrap();
    gemm(b, f, "fc", c, classes, "logits");
}

fn gemm(b: &mut Builder, x: ValueId, name: &str, k: usize, m: usize, out: &str) {
    let w = b.normal(m * k, (1.0 / k as f32).sqrt());
    let w = b
        .init(&format!("{name}.weight"), vec![m as i64, k as i64], &w)
        .unwrap();
    let bias = b.normal(m, 0.1);
    let bias = b
        .init(&format!("{name}.bias"), vec![m as i64], &bias)
        .unwrap();
    let node = b
        .graph
        .node(
            "Gemm",
            "",
            name,
            &[Some(x), Some(w), Some(bias)],
            &[out],
            vec![Attr::int("transB", 1)],
        )
        .unwrap();
    let y = b.graph.graph().node(node).output(0).unwrap();
    b.output(y, DType::F32, vec![n(), Dim::Known(m as i64)]);
}

/// A MobileNetV2-style net: stem, inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1
/// project, BatchNormalization and Relu6 between, a residual Add where shapes allow), head.
fn mobilenet() -> Model {
    let mut b = Builder::new("mobilenet", 17, 7);
    let x = image(&mut b, "x", n(), 3, 32);
    let mut h = conv(&mut b, x, "stem", 3, 16, 3, 1);
    h = bn(&mut b, h, "stem.bn", 16);
    h = relu6(&mut b, h, "stem.act");
    let mut cin = 16;
    for (i, &(cout, expand)) in [(16, 4), (16, 4), (24, 4)].iter().enumerate() {
        let name = format!("block{i}");
        let wide = cin * expand;
        let mut y = conv(&mut b, h, &format!("{name}.expand"), cin, wide, 1, 1);
        y = bn(&mut b, y, &format!("{name}.expand.bn"), wide);
        y = relu6(&mut b, y, &format!("{name}.expand.act"));
        y = conv(&mut b, y, &format!("{name}.dw"), wide, wide, 3, wide);
        y = bn(&mut b, y, &format!("{name}.dw.bn"), wide);
        y = relu6(&mut b, y, &format!("{name}.dw.act"));
        y = conv(&mut b, y, &format!("{name}.project"), wide, cout, 1, 1);
        y = bn(&mut b, y, &format!("{name}.project.bn"), cout);
        h = if cin == cout {
            b.op("Add", &format!("{name}.add"), &[h, y], vec![])
                .unwrap()
        } else {
            y
        };
        cin = cout;
    }
    let y = conv(&mut b, h, "last", cin, 64, 1, 1);
    let y = relu6(&mut b, y, "last.act");
    head(&mut b, y, 64, 10);
    b.finish("test")
}

/// Two branches concatenated, a Conv reading the Concat, squeeze-excite scaling its output,
/// then Flatten of a 4×4 map into a Gemm.
fn concat_se() -> Model {
    let mut b = Builder::new("concat_se", 17, 11);
    let x = image(&mut b, "x", n(), 3, 8);
    let l = conv(&mut b, x, "left", 3, 16, 3, 1);
    let l = b.op("Relu", "left.act", &[l], vec![]).unwrap();
    let r = conv(&mut b, x, "right", 3, 16, 1, 1);
    let r = b.op("Sigmoid", "right.act", &[r], vec![]).unwrap();
    let c = b
        .op("Concat", "cat", &[l, r], vec![Attr::int("axis", 1)])
        .unwrap();
    let h = conv(&mut b, c, "mix", 32, 32, 3, 1);
    let h = b.op("Relu", "mix.act", &[h], vec![]).unwrap();
    let s = b.op("GlobalAveragePool", "se.pool", &[h], vec![]).unwrap();
    let s = conv(&mut b, s, "se.reduce", 32, 8, 1, 1);
    let s = b.op("Relu", "se.act", &[s], vec![]).unwrap();
    let s = conv(&mut b, s, "se.expand", 8, 32, 1, 1);
    let s = b.op("Sigmoid", "se.gate", &[s], vec![]).unwrap();
    let h = b.op("Mul", "se.scale", &[h, s], vec![]).unwrap();
    let h = b
        .op(
            "MaxPool",
            "down",
            &[h],
            vec![
                Attr::ints("kernel_shape", &[2, 2]),
                Attr::ints("strides", &[2, 2]),
            ],
        )
        .unwrap();
    let f = b
        .op("Flatten", "flatten", &[h], vec![Attr::int("axis", 1)])
        .unwrap();
    gemm(&mut b, f, "fc", 32 * 16, 10, "logits");
    b.finish("test")
}

fn opts(ratio: f64, round_to: usize) -> PruneOptions {
    PruneOptions {
        ratio,
        round_to,
        ..Default::default()
    }
}

/// The simplified model and the plan `opts` makes for it.
fn plan(m: &Model, opts: &PruneOptions) -> (Model, Plan, Vec<GroupReport>) {
    let (simplified, _) = run_passes(m, &PipelineOptions::default()).unwrap();
    let chosen = prune::select(&simplified, opts, None, &BnScales::of(m)).unwrap();
    let (plan, reports) = (chosen.plan, chosen.groups);
    (simplified, plan, reports)
}

/// `m` with every reader's weights for the channels `plan` removes set to zero.
fn zero_readers(m: &Model, plan: &Plan) -> Model {
    let mut out = m.clone();
    let mut p = Patch::new(&mut out.graph);
    for e in &plan.groups.edits {
        let Edit::In { node, layout } = e else {
            continue;
        };
        let keep = layout.kept(&plan.kept);
        let g = p.graph();
        let nd = g.node(*node);
        let (_, axis) = weight_axes(nd);
        let w = nd.input(1).unwrap();
        let t = g.value(w).constant().unwrap();
        let dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
        let inner: usize = dims[axis + 1..].iter().product();
        let mut v = t.to_f32_vec().unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            if !keep.contains(&((i / inner) % dims[axis])) {
                *x = 0.0;
            }
        }
        let zeroed = Tensor::from_f32(t.dims().to_vec(), &v);
        p.resize_initializer(w, zeroed).unwrap();
    }
    p.commit().unwrap();
    out
}

fn pruned_groups(reports: &[GroupReport]) -> usize {
    reports.iter().filter(|g| g.kept < g.channels).count()
}

/// Pruning physically equals zeroing the readers' weights, and does change the outputs.
fn assert_exact(m: &Model, opts: &PruneOptions) -> (Model, Vec<GroupReport>) {
    let (simplified, plan, reports) = plan(m, opts);
    assert!(pruned_groups(&reports) > 0, "nothing pruned: {reports:#?}");
    let (pruned, _) = prune::prune(&simplified, plan.clone(), &PipelineOptions::default()).unwrap();
    onnxsmith::ir::verify::verify(&pruned).unwrap();
    assert_same_outputs(&zero_readers(&simplified, &plan), &pruned);
    match compare_models(&simplified, &pruned, &CheckOptions::default()).unwrap() {
        Outcome::Checked(r) => assert!(!r.ok(), "pruning changed nothing:\n{}", r.to_table()),
        Outcome::Unverified(why) => panic!("{why}"),
    }
    (pruned, reports)
}

#[test]
fn pruning_resnet50_equals_zeroing_the_readers_weights() {
    let m = onnxsmith::zoo::resnet50().unwrap();
    let (pruned, reports) = assert_exact(&m, &opts(0.3, 8));
    // Every Conv group and the residual stream of each stage are pruned; the classifier,
    // which reaches the graph output, is not.
    assert_eq!(pruned_groups(&reports), reports.len() - 1, "{reports:#?}");
    let fc = reports.iter().find(|g| g.name == "/fc/Gemm").unwrap();
    assert!(fc
        .left
        .as_deref()
        .unwrap()
        .contains("graph output 'logits'"));
    let stream = reports.iter().find(|g| g.channels == 2048).unwrap();
    assert_eq!((stream.producers, stream.kept), (4, 1432));
    assert!(reports.iter().all(|g| g.kept % 8 == 0));
    assert!(prune::macs(&pruned) < prune::macs(&m) * 6 / 10);
}

#[test]
fn pruning_a_mobilenet_keeps_depthwise_channels_tied() {
    let m = mobilenet();
    let (pruned, reports) = assert_exact(&m, &opts(0.5, 4));
    // The residual stream of blocks 0 and 1 (stem, two projects) is one group.
    let stream = reports
        .iter()
        .find(|g| g.name == "/stem")
        .or_else(|| reports.iter().find(|g| g.producers == 3));
    assert_eq!(stream.map(|g| g.producers), Some(3), "{reports:#?}");
    // A depthwise Conv's group attribute follows its channels.
    let g = &pruned.graph;
    let dw = g
        .node_ids()
        .find(|&n| g.node(n).name() == "block0.dw")
        .unwrap();
    let w = g
        .value(g.node(dw).input(1).unwrap())
        .constant()
        .unwrap()
        .dims()
        .to_vec();
    assert_eq!(g.node(dw).attr_i("group"), Some(w[0]));
    assert_eq!(w[0], 32);
}

#[test]
fn pruning_through_concat_squeeze_excite_and_flatten_is_exact() {
    let m = concat_se();
    let (pruned, reports) = assert_exact(&m, &opts(0.5, 4));
    // left and right are pruned on their own; the SE expand joins mix's group.
    let by = |name: &str| reports.iter().find(|g| g.name == name).unwrap();
    assert_eq!((by("left").kept, by("right").kept), (8, 8));
    assert_eq!(by("mix").producers, 2);
    assert_eq!(by("mix").kept, 16);
    // The Gemm reads 16 kept channels × 16 positions.
    let g = &pruned.graph;
    let fc = g.node_ids().find(|&n| g.node(n).name() == "fc").unwrap();
    let w = g.value(g.node(fc).input(1).unwrap()).constant().unwrap();
    assert_eq!(w.dims(), &[10, 16 * 16]);
}

#[test]
fn prune_before_after_snapshot() {
    let mut b = Builder::new("small", 17, 3);
    let x = image(&mut b, "x", n(), 2, 4);
    let h = conv(&mut b, x, "c1", 2, 4, 3, 1);
    let h = bn(&mut b, h, "bn1", 4);
    let h = b.op("Relu", "act", &[h], vec![]).unwrap();
    head(&mut b, h, 4, 3);
    let m = b.finish("test");
    let (simplified, plan, _) = plan(&m, &opts(0.5, 1));
    let (pruned, _) = prune::prune(&simplified, plan, &PipelineOptions::default()).unwrap();
    insta::assert_snapshot!(before_after(&simplified, &pruned));
}

/// The report of the group whose first producer is `name` in `m` (not simplified).
fn group_of(m: &Model, name: &str, opts: &PruneOptions) -> GroupReport {
    prune::select(m, opts, None, &BnScales::default())
        .unwrap()
        .groups
        .into_iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no group made by '{name}'"))
}

/// x ─ Conv c1 (8) ─ Relu ─ [`tail`] ─ …, with the rest of the graph written by `tail`,
/// which returns the value to end in Conv c2 and the graph output.
fn with_tail(tail: impl FnOnce(&mut Builder, ValueId) -> ValueId) -> Model {
    let mut b = Builder::new("t", 17, 5);
    let x = image4(&mut b, "x", 3);
    let h = conv(&mut b, x, "c1", 3, 8, 3, 1);
    let h = b.op("Relu", "act", &[h], vec![]).unwrap();
    let y = tail(&mut b, h);
    b.output(y, DType::F32, vec![]);
    b.finish("test")
}

/// A graph input f32[batch, C, S, S].
fn image(b: &mut Builder, name: &str, batch: Dim, c: i64, s: i64) -> ValueId {
    let shape = vec![batch, Dim::Known(c), Dim::Known(s), Dim::Known(s)];
    b.input(name, DType::F32, shape).unwrap()
}

/// A graph input f32[1, C, 4, 4].
fn image4(b: &mut Builder, name: &str, c: i64) -> ValueId {
    image(b, name, Dim::Known(1), c, 4)
}

fn end_conv(b: &mut Builder, h: ValueId, cin: usize) -> ValueId {
    conv(b, h, "c2", cin, 4, 1, 1)
}

fn assert_left(m: &Model, why: &str) {
    let g = group_of(m, "c1", &opts(0.5, 2));
    let left = g
        .left
        .unwrap_or_else(|| panic!("group c1 was pruned, expected it left: {why}"));
    assert!(left.contains(why), "left for '{left}', expected '{why}'");
    assert_eq!(g.kept, g.channels);
}

#[test]
fn a_plain_chain_is_pruned() {
    let m = with_tail(|b, h| end_conv(b, h, 8));
    let g = group_of(&m, "c1", &opts(0.5, 2));
    assert_eq!((g.left, g.kept), (None, 4));
}

#[test]
fn a_group_reaching_a_graph_output_is_left() {
    assert_left(&with_tail(|_, h| h), "reaches graph output");
}

#[test]
fn a_group_read_by_an_op_the_analysis_cannot_rewrite_is_left() {
    let m = with_tail(|b, h| {
        let t = b
            .op(
                "Transpose",
                "t",
                &[h],
                vec![Attr::ints("perm", &[0, 2, 3, 1])],
            )
            .unwrap();
        let t = b
            .op(
                "Transpose",
                "t2",
                &[t],
                vec![Attr::ints("perm", &[0, 3, 1, 2])],
            )
            .unwrap();
        end_conv(b, t, 8)
    });
    assert_left(
        &m,
        "read by Transpose 't', which the analysis cannot rewrite",
    );
}

#[test]
fn a_group_read_by_an_opaque_op_is_left() {
    let m = with_tail(|b, h| {
        let n = b
            .graph
            .node(
                "Custom",
                "com.example",
                "custom",
                &[Some(h)],
                &["cu"],
                vec![],
            )
            .unwrap();
        let c = b.graph.graph().node(n).output(0).unwrap();
        end_conv(b, c, 8)
    });
    assert_left(&m, "which the analysis does not open");
}

#[test]
fn a_group_read_by_a_grouped_conv_is_left() {
    let m = with_tail(|b, h| conv(b, h, "c2", 8, 8, 3, 2));
    assert_left(&m, "grouped Conv");
}

#[test]
fn a_group_whose_count_a_reshape_fixes_is_left() {
    let m = with_tail(|b, h| {
        let shape = b
            .graph
            .initializer("shape", Tensor::from_i64(vec![5], &[1, 2, 4, 4, 4]))
            .unwrap();
        let r = b.op("Reshape", "r", &[h, shape], vec![]).unwrap();
        b.op("ReduceSum", "sum", &[r], vec![]).unwrap()
    });
    assert_left(&m, "fixes a channel count");
}

#[test]
fn a_group_joined_with_a_value_it_does_not_follow_is_left() {
    let mut b = Builder::new("t", 17, 5);
    let x = image4(&mut b, "x", 3);
    let skip = image4(&mut b, "skip", 8);
    let h = conv(&mut b, x, "c1", 3, 8, 3, 1);
    let h = b.op("Add", "add", &[h, skip], vec![]).unwrap();
    let y = end_conv(&mut b, h, 8);
    b.output(y, DType::F32, vec![]);
    assert_left(&b.finish("test"), "joins it with 'skip'");
}

#[test]
fn a_group_whose_channel_count_is_read_by_shape_is_left() {
    let m = with_tail(|b, h| {
        let s = b.op("Shape", "shape", &[h], vec![]).unwrap();
        let c = b
            .op("Cast", "cast", &[s], vec![Attr::int("to", 1)])
            .unwrap();
        let _ = end_conv(b, h, 8);
        c
    });
    assert_left(&m, "channel count is read by Shape 'shape'");
}

#[test]
fn a_group_read_inside_a_subgraph_is_left() {
    assert_left(&if_reading_group(), "read inside a subgraph of If 'if'");
}

/// x ─ Conv c1 ─ h, read by both branches of an If.
fn if_reading_group() -> Model {
    use common::{attr_ints, f32_info, f32_tensor, model_io, node, values};
    use onnxsmith::onnx::proto::{attribute_proto::AttributeType, AttributeProto, GraphProto};
    let mut c1 = node("Conv", "c1", &["x", "w1", "b1"], &["h"]);
    c1.attribute = vec![attr_ints("kernel_shape", &[1, 1])];
    let branch = |name: &str| GraphProto {
        name: name.into(),
        node: vec![node(
            "Identity",
            &format!("{name}.id"),
            &["h"],
            &[&format!("{name}.out")],
        )],
        output: vec![f32_info(&format!("{name}.out"), &[1, 8, 4, 4])],
        ..Default::default()
    };
    let mut iff = node("If", "if", &["cond"], &["y"]);
    iff.attribute = ["then_branch", "else_branch"]
        .iter()
        .map(|a| AttributeProto {
            name: a.to_string(),
            r#type: AttributeType::Graph as i32,
            g: Some(branch(a)),
            ..Default::default()
        })
        .collect();
    let cond = common::tensor("cond", 9, &[], vec![1]);
    common::lift(model_io(
        vec![c1, iff],
        vec![f32_info("x", &[1, 3, 4, 4])],
        vec![f32_info("y", &[1, 8, 4, 4])],
        vec![
            f32_tensor("w1", &[8, 3, 1, 1], &values(24, 1)),
            f32_tensor("b1", &[8], &values(8, 2)),
            cond,
        ],
    ))
}

#[test]
fn an_excluded_group_is_left() {
    let m = with_tail(|b, h| end_conv(b, h, 8));
    let mut o = opts(0.5, 2);
    o.exclude = vec!["c1".into()];
    let g = group_of(&m, "c1", &o);
    assert!(g.left.unwrap().contains("excluded"));
    o.exclude = vec!["Conv".into()];
    assert!(group_of(&m, "c1", &o).left.is_some());
}

#[test]
fn channels_laid_out_differently_are_not_joined() {
    // Concat(a, b) scaled by one Conv's 16 channels: the split differs, so all are left.
    let mut b = Builder::new("t", 17, 5);
    let x = image4(&mut b, "x", 3);
    let l = conv(&mut b, x, "c1", 3, 8, 1, 1);
    let r = conv(&mut b, x, "c3", 3, 8, 1, 1);
    let cat = b
        .op("Concat", "cat", &[l, r], vec![Attr::int("axis", 1)])
        .unwrap();
    let s = conv(&mut b, x, "c4", 3, 16, 1, 1);
    let h = b.op("Mul", "mul", &[cat, s], vec![]).unwrap();
    let y = end_conv(&mut b, h, 16);
    b.output(y, DType::F32, vec![]);
    assert_left(&b.finish("test"), "laid out differently");
}

#[test]
fn resize_passes_channels_when_its_channel_scale_is_one() {
    let resized = |channel_scale: f32| {
        with_tail(|b, h| {
            let roi = b.init("roi", vec![0], &[]).unwrap();
            let scales = b
                .init("scales", vec![4], &[1.0, channel_scale, 2.0, 2.0])
                .unwrap();
            let r = b.op("Resize", "up", &[h, roi, scales], vec![]).unwrap();
            let c = if channel_scale == 1.0 { 8 } else { 16 };
            end_conv(b, r, c)
        })
    };
    let g = group_of(&resized(1.0), "c1", &opts(0.5, 2));
    assert_eq!((g.left, g.kept), (None, 4));
    assert_left(&resized(2.0), "may change the channel axis");
}

#[test]
fn global_scope_prunes_the_least_important_channels_across_groups() {
    let m = mobilenet();
    let mut o = opts(0.3, 4);
    o.scope = Scope::Global;
    let (simplified, plan, reports) = plan(&m, &o);
    let total: usize = reports
        .iter()
        .filter(|g| g.left.is_none())
        .map(|g| g.channels)
        .sum();
    let kept: usize = reports
        .iter()
        .filter(|g| g.left.is_none())
        .map(|g| g.kept)
        .sum();
    let removed = (total - kept) as f64 / total as f64;
    assert!((0.15..0.45).contains(&removed), "removed {removed}");
    // Not the same share everywhere.
    let shares: Vec<f64> = reports
        .iter()
        .filter(|g| g.left.is_none())
        .map(|g| g.kept as f64 / g.channels as f64)
        .collect();
    assert!(
        shares.iter().any(|&s| (s - shares[0]).abs() > 1e-9),
        "{shares:?}"
    );
    let (pruned, _) = prune::prune(&simplified, plan.clone(), &PipelineOptions::default()).unwrap();
    assert_same_outputs(&zero_readers(&simplified, &plan), &pruned);
}

#[test]
fn keep_counts_round_to_multiples() {
    // The nearest multiple of the rounding, never below one multiple.
    assert_eq!(prune::keep_count(64, 0.3, 8), 48);
    assert_eq!(prune::keep_count(64, 0.4, 8), 40);
    assert_eq!(prune::keep_count(16, 0.1, 8), 16);
    assert_eq!(prune::keep_count(2048, 0.3, 8), 1432);
    assert_eq!(prune::keep_count(8, 0.9, 8), 8);
    assert_eq!(prune::keep_count(10, 0.5, 1), 5);
    assert_eq!(prune::keep_count(6, 0.5, 8), 6);
}

#[test]
fn slicing_keeps_the_chosen_indices_of_an_axis() {
    let t = Tensor::from_f32(vec![2, 3], &[0., 1., 2., 3., 4., 5.]);
    let s = slice_axis(&t, 1, &[0, 2]).unwrap();
    assert_eq!(
        (s.dims(), s.to_f32_vec().unwrap()),
        (&[2i64, 2][..], vec![0., 2., 3., 5.])
    );
    assert!(slice_axis(&t, 1, &[3]).is_none());
    assert!(slice_axis(&t, 2, &[0]).is_none());
}

/// x ─ Conv(3→16, 3×3) ─ Relu ─ Conv(16→16, 1×1) ─ Relu ─ pool ─ Flatten ─ Gemm, with a
/// calibration directory of `count` seeded samples.
fn compensation_fixture(dir: &std::path::Path, count: usize) -> Model {
    let mut b = Builder::new("comp", 17, 21);
    let x = image(&mut b, "x", n(), 3, 8);
    let h = conv(&mut b, x, "c1", 3, 16, 3, 1);
    let h = b.op("Relu", "a1", &[h], vec![]).unwrap();
    let h = conv(&mut b, h, "c2", 16, 16, 1, 1);
    let h = b.op("Relu", "a2", &[h], vec![]).unwrap();
    head(&mut b, h, 16, 10);
    for i in 0..count {
        let mut g = Builder::new("data", 17, 1000 + i as u64);
        let v: Vec<f32> = g.normal(3 * 64, 1.0).iter().map(|x| x + 0.5).collect();
        write_npy_values(&dir.join(format!("{i:03}.npy")), &[1, 3, 8, 8], &v, false);
    }
    b.finish("test")
}

#[test]
fn compensation_is_measurably_better_than_none() {
    let dir = tempfile::tempdir().unwrap();
    let m = compensation_fixture(dir.path(), 40);
    let run = |compensate: bool| {
        optimize_model(
            &m,
            &Options {
                quiet: true,
                prune: Some(PruneOptions {
                    ratio: 0.5,
                    round_to: 2,
                    compensate,
                    ..Default::default()
                }),
                samples: SampleOptions {
                    dir: Some(dir.path().to_path_buf()),
                    ..Default::default()
                },
                check: Some(CheckOptions {
                    rule: onnxsmith::check::Rule::Lossy(onnxsmith::check::LossyLimits {
                        min_cosine: 0.0,
                        min_top1: 0.0,
                        max_error: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let cosine = |o: &onnxsmith::Optimized| match &o.report.check {
        CheckStatus::Verified { report } => report.outputs[0].cosine,
        other => panic!("{other:?}"),
    };
    let with = run(true);
    let without = run(false);
    let p = with.report.pruning.as_ref().unwrap();
    let c = p.compensation.as_ref().unwrap();
    assert!(c.bias_corrected >= 2 && c.refitted >= 1, "{c:?}");
    let (uncompensated, _) = p.uncompensated.unwrap();
    assert!((uncompensated - cosine(&without)).abs() < 1e-9);
    assert!(
        cosine(&with) > cosine(&without) + 0.01,
        "compensated {} vs not {}",
        cosine(&with),
        cosine(&without)
    );
    assert!(without.report.pruning.unwrap().compensation.is_none());
}

#[test]
fn pruning_is_deterministic_and_reported_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    onnxsmith::save(&mobilenet(), &input, Default::default()).unwrap();
    let run = |out: &str, report: &str| {
        let o = bin()
            .args(["optimize", input.to_str().unwrap(), "-o"])
            .arg(dir.path().join(out))
            .args([
                "--prune",
                "0.5",
                "--prune-round-to",
                "4",
                "--min-cosine",
                "0",
                "--min-top1",
                "0",
                "-q",
                "--report",
            ])
            .arg(dir.path().join(report))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = run("a.onnx", "a.json");
    run("b.onnx", "b.json");
    assert_eq!(
        std::fs::read(dir.path().join("a.onnx")).unwrap(),
        std::fs::read(dir.path().join("b.onnx")).unwrap()
    );
    assert!(text.contains("pruned") && text.contains("MACs"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a.json")).unwrap()).unwrap();
    let p = &json["pruning"];
    assert!(p["macs_after"].as_u64().unwrap() < p["macs_before"].as_u64().unwrap());
    assert!(p["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["left"].is_string()));
}

#[test]
fn bad_pruning_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    onnxsmith::save(&mobilenet(), &input, Default::default()).unwrap();
    for (args, needle) in [
        (vec!["--prune", "1.5"], "strictly between 0 and 1"),
        (
            vec!["--prune", "0.3", "--prune-importance", "activation"],
            "needs calibration samples",
        ),
        (
            vec!["--prune", "0.3", "--prune-round-to", "0"],
            "at least 1",
        ),
    ] {
        let o = bin()
            .args(["optimize", input.to_str().unwrap(), "-o"])
            .arg(dir.path().join("out.onnx"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!dir.path().join("out.onnx").exists());
    }
}

/// x ─ Conv c1 (4 channels, equal weights) ─ BN(γ, σ² per channel) ─ Relu ─ Conv c2 ─ y, with
/// channel 1's bias `bias1`, BN scale γ₁ and variance σ²₁.
fn ranked(gamma1: f32, var1: f32, bias1: f32) -> Model {
    let mut b = Builder::new("rank", 17, 9);
    let x = image4(&mut b, "x", 2);
    let w = b.init("c1.weight", vec![4, 2, 1, 1], &[0.5; 8]).unwrap();
    let bias = b.init("c1.bias", vec![4], &[0.0, bias1, 0.0, 0.0]).unwrap();
    let h = b
        .op(
            "Conv",
            "c1",
            &[x, w, bias],
            vec![Attr::ints("kernel_shape", &[1, 1])],
        )
        .unwrap();
    let params = [
        ("g", vec![1.0, gamma1, 0.9, 0.8]),
        ("b", vec![0.0; 4]),
        ("m", vec![0.0; 4]),
        ("v", vec![1.0, var1, 1.0, 1.0]),
    ];
    let ids: Vec<ValueId> = params
        .iter()
        .map(|(n, v)| b.init(n, vec![4], v).unwrap())
        .collect();
    let h = b
        .op(
            "BatchNormalization",
            "bn",
            &[h, ids[0], ids[1], ids[2], ids[3]],
            vec![],
        )
        .unwrap();
    let h = b.op("Relu", "act", &[h], vec![]).unwrap();
    let y = end_conv(&mut b, h, 4);
    b.output(y, DType::F32, vec![]);
    b.finish("test")
}

fn kept_with(
    m: &Model,
    importance: prune::Importance,
    samples: Option<&[Vec<onnxsmith::runtime::HostTensor>]>,
) -> Vec<usize> {
    let (simplified, _) = run_passes(m, &PipelineOptions::default()).unwrap();
    let o = PruneOptions {
        ratio: 0.25,
        round_to: 1,
        importance,
        ..Default::default()
    };
    let chosen = prune::select(&simplified, &o, samples, &BnScales::of(m)).unwrap();
    let (plan, reports) = (chosen.plan, chosen.groups);
    let at = reports.iter().position(|g| g.name == "c1").unwrap();
    plan.kept[at].clone()
}

#[test]
fn bn_scale_importance_reads_gamma_from_before_fusion() {
    // γ₁ tiny but σ²₁ tinier: once fused, channel 1 has the largest weights.
    let m = ranked(0.01, 1e-6, 0.0);
    assert_eq!(kept_with(&m, prune::Importance::L1, None), vec![0, 1, 2]);
    assert_eq!(
        kept_with(&m, prune::Importance::BnScale, None),
        vec![0, 2, 3]
    );
}

#[test]
fn activation_importance_drops_a_channel_that_never_fires() {
    use onnxsmith::runtime::{input_specs, Binding, HostTensor};
    use rand::SeedableRng;
    // Channel 1's bias keeps it below zero, so Relu silences it on every input.
    let m = ranked(1.0, 1.0, -100.0);
    let specs = input_specs(&m, &Binding::default()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let samples: Vec<Vec<HostTensor>> = (0..4)
        .map(|_| {
            specs
                .iter()
                .map(|s| HostTensor::random(s, &mut rng).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(kept_with(&m, prune::Importance::L1, None), vec![0, 1, 2]);
    assert_eq!(
        kept_with(&m, prune::Importance::Activation, Some(&samples)),
        vec![0, 2, 3]
    );
}

/// Two Convs concatenated, then the Concat cut again: by a Slice taking the second part and a
/// Split into both parts (`sizes` as given, `None` for equal parts).
fn concat_cut(opset: i64, split_sizes: Option<&[i64]>, slice: (i64, i64)) -> Model {
    let mut b = Builder::new("cut", opset, 13);
    let x = image(&mut b, "x", n(), 3, 4);
    let l = conv(&mut b, x, "c1", 3, 8, 3, 1);
    let l = b.op("Relu", "l.act", &[l], vec![]).unwrap();
    let r = conv(&mut b, x, "c3", 3, 8, 3, 1);
    let r = b.op("Relu", "r.act", &[r], vec![]).unwrap();
    let cat = b
        .op("Concat", "cat", &[l, r], vec![Attr::int("axis", 1)])
        .unwrap();
    let starts = b
        .graph
        .initializer("starts", Tensor::from_i64(vec![1], &[slice.0]))
        .unwrap();
    let ends = b
        .graph
        .initializer("ends", Tensor::from_i64(vec![1], &[slice.1]))
        .unwrap();
    let axes = b
        .graph
        .initializer("axes", Tensor::from_i64(vec![1], &[1]))
        .unwrap();
    let s = b
        .op("Slice", "slice", &[cat, starts, ends, axes], vec![])
        .unwrap();
    let clamp = |v: i64| (if v < 0 { v + 16 } else { v }).clamp(0, 16);
    let a = conv(
        &mut b,
        s,
        "a",
        (clamp(slice.1) - clamp(slice.0)) as usize,
        4,
        1,
        1,
    );
    let mut ins = vec![Some(cat)];
    let mut attrs = vec![Attr::int("axis", 1)];
    match (split_sizes, opset >= 13) {
        (Some(sz), true) => ins.push(Some(
            b.graph
                .initializer("split", Tensor::from_i64(vec![2], sz))
                .unwrap(),
        )),
        (Some(sz), false) => attrs.push(Attr::ints("split", sz)),
        (None, _) => {}
    }
    let node = b
        .graph
        .node("Split", "", "split", &ins, &["p0", "p1"], attrs)
        .unwrap();
    let (p0, p1) = {
        let g = b.graph.graph();
        (
            g.node(node).output(0).unwrap(),
            g.node(node).output(1).unwrap(),
        )
    };
    let c = conv(&mut b, p0, "b0", 8, 4, 1, 1);
    let d = conv(&mut b, p1, "b1", 8, 4, 1, 1);
    let y = b.op("Add", "join", &[c, d], vec![]).unwrap();
    let y = b.op("Add", "join2", &[y, a], vec![]).unwrap();
    b.output(y, DType::F32, vec![]);
    b.finish("test")
}

#[test]
fn slices_and_splits_at_concat_boundaries_are_rewritten() {
    for (opset, sizes, slice) in [
        (17, Some(&[8i64, 8][..]), (8, i64::MAX)),
        (17, None, (0, 8)),
        (11, Some(&[8i64, 8][..]), (-8, 16)),
    ] {
        let m = concat_cut(opset, sizes, slice);
        let (pruned, reports) = assert_exact(&m, &opts(0.5, 2));
        let by = |name: &str| reports.iter().find(|g| g.name == name).unwrap();
        assert_eq!((by("c1").kept, by("c3").kept), (4, 4), "{reports:#?}");
        let g = &pruned.graph;
        let split = g.node_ids().find(|&n| g.node(n).is("Split")).unwrap();
        let sizes = g
            .node(split)
            .attr_ints("split")
            .map(<[i64]>::to_vec)
            .or_else(|| g.const_ints(g.node(split).input(1)?));
        assert_eq!(sizes, Some(vec![4, 4]), "opset {opset}");
    }
}

#[test]
fn a_slice_or_split_through_a_groups_channels_leaves_it() {
    assert_left(
        &concat_cut(17, Some(&[4, 12]), (8, 16)),
        "Split 'split' cuts through a group's channels",
    );
    let m = concat_cut(17, Some(&[8, 8]), (2, 16));
    assert_left(&m, "Slice 'slice' cuts through a group's channels");
}

#[test]
fn compensation_finds_its_readers_when_nodes_have_no_names() {
    let dir = tempfile::tempdir().unwrap();
    let named = compensation_fixture(dir.path(), 12);
    let mut proto = named.to_proto().unwrap();
    for n in &mut proto.graph.as_mut().unwrap().node {
        n.name.clear();
    }
    let unnamed = Model::from_proto(proto).unwrap();
    let run = |m: &Model| {
        let o = optimize_model(
            m,
            &Options {
                quiet: true,
                prune: Some(PruneOptions {
                    ratio: 0.5,
                    round_to: 2,
                    ..Default::default()
                }),
                samples: SampleOptions {
                    dir: Some(dir.path().to_path_buf()),
                    ..Default::default()
                },
                check: None,
                ..Default::default()
            },
        )
        .unwrap();
        let c = o.report.pruning.unwrap().compensation.unwrap();
        (c.bias_corrected, c.refitted, o.model)
    };
    let (a, b, named_out) = run(&named);
    let (c, d, unnamed_out) = run(&unnamed);
    assert_eq!((a, b), (c, d));
    // The same weights, whatever the names.
    let weights = |m: &Model| {
        let g = &m.graph;
        let mut w: Vec<Vec<f32>> = g
            .node_ids()
            .filter_map(|n| g.value(g.node(n).input(1)?).constant()?.to_f32_vec())
            .collect();
        w.sort_by(|x, y| x.len().cmp(&y.len()).then(x.partial_cmp(y).unwrap()));
        w
    };
    assert_eq!(weights(&named_out), weights(&unnamed_out));
}

#[test]
fn flattened_parts_concatenated_are_left() {
    let mut b = Builder::new("flatcat", 17, 5);
    let x = image(&mut b, "x", n(), 3, 4);
    let l = conv(&mut b, x, "c1", 3, 8, 3, 1);
    let r = conv(&mut b, x, "c3", 3, 8, 3, 1);
    let fl = b
        .op("Flatten", "fl", &[l], vec![Attr::int("axis", 1)])
        .unwrap();
    let fr = b
        .op("Flatten", "fr", &[r], vec![Attr::int("axis", 1)])
        .unwrap();
    let cat = b
        .op("Concat", "cat", &[fl, fr], vec![Attr::int("axis", 1)])
        .unwrap();
    gemm(&mut b, cat, "fc", 256, 4, "logits");
    assert_left(
        &b.finish("test"),
        "Concat 'cat' concatenates channels laid out differently",
    );
}
