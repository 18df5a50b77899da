//! The pipeline itself: stages, selection, stopping, the context stages are handed, notes.

mod common;

use anyhow::Result;
use common::{assert_same_outputs, count_op, lift, model_with, node, run_passes};
use onnxsmith::ir::{Graph, Model, NodeId, Patch};
use onnxsmith::passes::{
    catalogue, run_pipeline, run_stages, selected, simplify_stage, Changed, Look, Pass,
    PassContext, PipelineOptions, Prepare, Refusal, Rewrite, Stage,
};

#[test]
fn stop_after_counts_changing_steps() {
    let m = lift(model_with(vec![
        node("Identity", "id", &["x"], &["a"]),
        node("Dropout", "drop", &["a"], &["b"]),
        node("Relu", "relu", &["b"], &["y"]),
    ]));
    let mut one = m.clone();
    let opts = PipelineOptions {
        stop_after: Some(1),
        ..Default::default()
    };
    let report = run_pipeline(&mut one, &opts).unwrap();
    assert_eq!(report.steps, ["eliminate-identity"]);
    assert_eq!(count_op(&one, "Dropout"), 1);
    let (all, report) = run_passes(
        &m,
        &["eliminate-identity", "eliminate-dropout", "dead-code"],
    );
    assert_eq!(report.steps, ["eliminate-identity", "eliminate-dropout"]);
    assert_eq!(all.graph.node_count(), 1);
    assert_same_outputs(&m, &all);
}

#[test]
fn unknown_pass_names_are_an_error() {
    let mut m = lift(model_with(vec![node("Relu", "relu", &["x"], &["y"])]));
    let opts = PipelineOptions {
        disable: vec!["no-such-pass".into()],
        ..Default::default()
    };
    let err = run_pipeline(&mut m, &opts).unwrap_err().to_string();
    assert!(err.contains("unknown pass 'no-such-pass'"), "{err}");
}

#[test]
fn pass_ids_are_unique_and_selection_keeps_pipeline_order() {
    // Every stage's cleanup is dead-code, and the stages that name ops by name open with
    // name-ops; every other pass belongs to one stage only.
    let all = catalogue(PipelineOptions::default().fold_limit);
    let mut ids: Vec<&str> = all
        .iter()
        .flat_map(|s| s.passes().map(|p| p.id()))
        .filter(|&id| id != "dead-code" && id != "name-ops")
        .collect();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "simplify",
            "prune",
            "compensate",
            "equalize",
            "smooth",
            "quantize",
            "precision"
        ]
    );
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "{ids:?}");
    let opts = PipelineOptions {
        only: Some(vec!["dead-code".into(), "eliminate-identity".into()]),
        ..Default::default()
    };
    let kept: Vec<&str> = selected(&opts, vec![simplify_stage(opts.fold_limit)])
        .unwrap()
        .iter()
        .flat_map(|s| s.fixed_point.iter().map(|p| p.id()))
        .collect();
    assert_eq!(kept, ["eliminate-identity", "dead-code"]);
}

/// What a test stage is handed: the op its one rewrite turns every Relu into.
struct Replacement(&'static str);

/// A once-stage pass that reads its instruction from the context: every Relu becomes the
/// op the context names, behind an Identity that the stage's cleanup removes.
struct ReplaceRelu;

impl Pass for ReplaceRelu {
    fn id(&self) -> &'static str {
        "replace-relu"
    }
    fn about(&self) -> &'static str {
        "test stage"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let op = cx.get::<Replacement>().expect("the test provides it").0;
        let g = &mut model.graph;
        let relus: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).is("Relu")).collect();
        let mut patch = Patch::new(g);
        for n in relus {
            let x = patch.graph().node(n).input(0);
            let y = patch.graph().node(n).output(0).unwrap();
            let ty = patch.graph().ty(y).cloned();
            let m = patch.add_node(op, "replaced", &[x], vec![], std::slice::from_ref(&ty))?;
            let out = patch.graph().node(m).output(0);
            let id = patch.add_node("Identity", "wrap", &[out], vec![], &[ty])?;
            let wrapped = patch.graph().node(id).output(0).unwrap();
            patch.replace_value_keeping_name(y, wrapped)?;
            patch.remove_node(n)?;
        }
        Ok(Changed::from_count(patch.commit()?))
    }
}

#[test]
fn a_once_stage_reads_its_context_and_its_cleanup_runs_to_a_fixed_point() {
    let m = lift(model_with(vec![node("Relu", "relu", &["x"], &["y"])]));
    let opts = PipelineOptions::default();
    let cleanup = selected(
        &PipelineOptions {
            only: Some(vec!["eliminate-identity".into(), "dead-code".into()]),
            ..Default::default()
        },
        vec![simplify_stage(opts.fold_limit)],
    )
    .unwrap()
    .into_iter()
    .flat_map(|s| s.fixed_point)
    .collect();
    let stages = [Stage {
        once: vec![Box::new(ReplaceRelu)],
        fixed_point: cleanup,
        ..Stage::new("test", "a stage built by a test")
    }];
    let mut cx = PassContext::new(false);
    cx.provide(Replacement("Abs"));
    let mut out = m.clone();
    let report = run_stages(&mut out, &stages, &opts, &mut cx).unwrap();
    assert_eq!(report.steps, ["replace-relu", "eliminate-identity"]);
    assert_eq!(report.rounds, [("test", 2)]);
    assert_eq!(count_op(&out, "Abs"), 1);
    assert_eq!(out.graph.node_count(), 1, "the Identity went in cleanup");
    let y = out.graph.outputs()[0].value;
    assert_eq!(
        out.graph.value(y).name(),
        "y",
        "the interface keeps its names"
    );
}

/// A rewrite that refuses every Relu with a reason, to show refusals reach `--explain` under
/// the rewrite's id without the rewrite naming itself.
struct RefuseRelu;

impl Rewrite for RefuseRelu {
    type Match = ();
    const ID: &'static str = "refuse-relu";
    const ABOUT: &'static str = "test rewrite";
    fn anchors(&self, g: &Graph, n: NodeId) -> bool {
        g.node(n).is("Relu")
    }
    fn find(&self, _: &Graph, _: NodeId, _: &Look) -> Result<(), Refusal> {
        Err("because the test says so".into())
    }
    fn apply(&self, _: &mut Patch, _: ()) -> Result<()> {
        unreachable!("every match is refused")
    }
}

#[test]
fn refusals_carry_the_rewrite_id_to_explain() {
    let mut m = lift(model_with(vec![node("Relu", "relu", &["x"], &["y"])]));
    let stages = [Stage {
        once: vec![Box::new(RefuseRelu)],
        ..Stage::new("test", "a stage built by a test")
    }];
    let mut cx = PassContext::new(true);
    let report = run_stages(&mut m, &stages, &PipelineOptions::default(), &mut cx).unwrap();
    assert_eq!(
        report.explain,
        ["refuse-relu: kept Relu 'relu': because the test says so"]
    );
    assert!(report.steps.is_empty());
}

#[test]
fn bisect_names_the_first_step_that_changes_the_numbers() {
    use onnxsmith::check::{CheckOptions, Reference, Rule, ScaledTolerance};
    use onnxsmith::passes::PipelineOptions;
    // Identity (exact) then Conv+BN (fusing rounds the weights): with a zero tolerance the
    // fusion is the first step that disagrees.
    let mut conv = node("Conv", "conv", &["xi", "W"], &["c"]);
    conv.attribute = vec![common::attr_ints("kernel_shape", &[3, 3])];
    let bn = node(
        "BatchNormalization",
        "bn",
        &["c", "gamma", "beta", "mean", "var"],
        &["y"],
    );
    let positive = |seed| -> Vec<f32> { common::values(3, seed).iter().map(|v| 1.5 + v).collect() };
    let m = lift(common::model_io(
        vec![node("Identity", "id", &["x"], &["xi"]), conv, bn],
        vec![common::f32_info("x", &[1, 2, 5, 5])],
        vec![common::f32_info("y", &[1, 3, 3, 3])],
        vec![
            common::f32_tensor("W", &[3, 2, 3, 3], &common::values(54, 9)),
            common::f32_tensor("gamma", &[3], &positive(1)),
            common::f32_tensor("beta", &[3], &common::values(3, 2)),
            common::f32_tensor("mean", &[3], &common::values(3, 3)),
            common::f32_tensor("var", &[3], &positive(4)),
        ],
    ));
    let opts = PipelineOptions::default();
    let (_, report) = onnxsmith::optimize::run_passes(&m, &opts).unwrap();
    assert_eq!(report.steps[..2], ["eliminate-identity", "fuse-conv-bn"]);
    let exact = CheckOptions {
        rule: Rule::Exact(ScaledTolerance {
            rtol: 0.0,
            atol: 0.0,
        }),
        samples: 2,
        ..Default::default()
    };
    let reference = Reference::new(&m, &exact).unwrap();
    let stages = [simplify_stage(opts.fold_limit)];
    let bisect = |reference| {
        let cx = PassContext::default();
        onnxsmith::optimize::bisect(&m, &stages, &opts, &cx, &report.steps, reference).unwrap()
    };
    assert_eq!(bisect(&reference), Some((2, "fuse-conv-bn")));
    // Within the rewrite tolerance nothing is wrong.
    let reference = Reference::new(&m, &CheckOptions::default()).unwrap();
    assert_eq!(bisect(&reference), None);
}

/// A preparation that counts its runs in what it provides.
struct CountRuns;

impl Prepare for CountRuns {
    fn id(&self) -> &'static str {
        "count-runs"
    }
    fn about(&self) -> &'static str {
        "test preparation"
    }
    fn run(&self, _: &Model, cx: &mut PassContext) -> Result<()> {
        let n = cx.get::<usize>().copied().unwrap_or(0);
        cx.provide(n + 1);
        Ok(())
    }
}

/// A pass that leaves the model importing no opset for the operators it uses.
struct DropOpsets;

impl Pass for DropOpsets {
    fn id(&self) -> &'static str {
        "drop-opsets"
    }
    fn about(&self) -> &'static str {
        "test pass that breaks the IR"
    }
    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<Changed> {
        *model = Model::new(model.graph.clone(), model.ir_version(), &[], "test");
        Ok(Changed::Yes(1))
    }
}

#[test]
fn a_stage_prepares_once_and_its_passes_are_verified() {
    let m = lift(model_with(vec![node("Relu", "relu", &["x"], &["y"])]));
    let stage = || Stage {
        prepare: Some(Box::new(CountRuns)),
        once: vec![Box::new(DropOpsets)],
        ..Stage::new("lossy", "a stage built by a test")
    };
    let opts = PipelineOptions {
        verify_each: true,
        ..Default::default()
    };
    let mut cx = PassContext::new(false);
    let err = run_stages(&mut m.clone(), &[stage()], &opts, &mut cx).unwrap_err();
    assert!(
        format!("{err:#}").contains("pass 'drop-opsets' broke the IR"),
        "{err:#}"
    );
    assert_eq!(cx.get::<usize>(), Some(&1));
    // The context remembers that the stage was prepared: it is not prepared again.
    let stage = Stage {
        once: vec![Box::new(ReplaceRelu)],
        ..stage()
    };
    cx.provide(Replacement("Abs"));
    let report = run_stages(&mut m.clone(), &[stage], &opts, &mut cx).unwrap();
    assert_eq!(cx.get::<usize>(), Some(&1), "prepared already");
    assert_eq!(report.steps, ["replace-relu"]);
    assert!(report.passes.iter().all(|p| p.id != "count-runs"));
}
