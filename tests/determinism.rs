//! The same input and flags give byte-identical output: across runs, with and without the
//! check (which runs on other threads while the result is written), and whether the process
//! may use one core or all of them.

mod common;

use std::path::Path;
use std::process::Command;

use common::{attr_ints, bin, f32_info, f32_tensor, model_io, node, values};
use onnxsmith::onnx::proto::ModelProto;

/// Four Conv ⇒ BatchNormalization ⇒ Relu blocks behind an Identity: several passes fire, and
/// every fused weight is a new initializer whose name and bytes must not vary.
fn blocks() -> ModelProto {
    let (mut nodes, mut inits) = (vec![node("Identity", "id", &["x"], &["h0"])], Vec::new());
    for i in 0..4 {
        let cin = if i == 0 { 3 } else { 8 };
        let (w, h, c, b) = (
            format!("w{i}"),
            format!("h{i}"),
            format!("c{i}"),
            format!("b{i}"),
        );
        let mut conv = node("Conv", &format!("conv{i}"), &[&h, &w], &[&c]);
        conv.attribute = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1; 4]),
        ];
        nodes.push(conv);
        let bn: Vec<String> = ["gamma", "beta", "mean", "var"]
            .iter()
            .map(|p| format!("{p}{i}"))
            .collect();
        let mut ins: Vec<&str> = vec![&c];
        ins.extend(bn.iter().map(String::as_str));
        nodes.push(node("BatchNormalization", &format!("bn{i}"), &ins, &[&b]));
        let next = if i == 3 {
            "y".to_string()
        } else {
            format!("h{}", i + 1)
        };
        nodes.push(node("Relu", &format!("relu{i}"), &[&b], &[&next]));
        inits.push(f32_tensor(
            &w,
            &[8, cin, 3, 3],
            &values(8 * cin as usize * 9, i),
        ));
        for (k, p) in bn.iter().enumerate() {
            let v: Vec<f32> = values(8, 10 * i + k as u64)
                .iter()
                .map(|v| if k == 0 || k == 3 { 1.0 + 0.5 * v } else { *v })
                .collect();
            inits.push(f32_tensor(p, &[8], &v));
        }
    }
    model_io(
        nodes,
        vec![f32_info("x", &[1, 3, 16, 16])],
        vec![f32_info("y", &[1, 8, 16, 16])],
        inits,
    )
}

/// Runs `optimize` on `input` into `out`, on one core when `one_core`, and returns the bytes.
fn optimize(input: &Path, out: &Path, check: bool, one_core: bool) -> Vec<u8> {
    let mut cmd = if one_core {
        // Where taskset is missing, the run is as in any other case: still a valid repeat.
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(env!("CARGO_BIN_EXE_onnxsmith"));
        if Command::new("taskset").arg("-V").output().is_err() {
            c = bin();
        }
        c
    } else {
        bin()
    };
    cmd.arg("optimize")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--quiet");
    if !check {
        cmd.arg("--no-check");
    }
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(out).unwrap()
}

#[test]
fn optimize_output_is_the_same_bytes_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("blocks.onnx");
    let model = onnxsmith::ir::Model::from_proto(blocks()).unwrap();
    onnxsmith::save(&model, &input, Default::default()).unwrap();
    let out = dir.path().join("out.onnx");
    let first = optimize(&input, &out, true, false);
    let optimized = onnxsmith::load(&out).unwrap().model;
    assert_eq!(
        common::count_op(&optimized, "BatchNormalization"),
        0,
        "the passes ran"
    );
    for (check, one_core) in [(true, false), (false, false), (true, true), (false, true)] {
        let again = optimize(&input, &out, check, one_core);
        assert!(
            again == first,
            "check {check}, one core {one_core}: the output differs from the first run"
        );
    }
}
