//! Bad input gives exit code 1 and a message naming the problem, never a panic; the input file
//! is never overwritten.

mod common;

use std::path::{Path, PathBuf};

use common::{bin, f32_info, model_with, node};
use onnxsmith::onnx::proto::{
    tensor_proto::DataLocation, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use prost::Message;
use rand::{Rng, SeedableRng};

/// Runs `inspect` on `path`; returns (exit code, stderr).
fn inspect(path: &Path) -> (i32, String) {
    let out = bin().arg("inspect").arg(path).output().unwrap();
    (
        out.status.code().expect("killed by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_rejected(path: &Path, needle: &str) {
    let (code, err) = inspect(path);
    assert_eq!(
        code,
        1,
        "{}: expected exit 1, got {code}: {err}",
        path.display()
    );
    assert!(
        err.contains(needle),
        "{}: expected the message to mention {needle:?}, got: {err}",
        path.display()
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn good_model() -> Vec<u8> {
    model_with(vec![node("Relu", "relu", &["x"], &["y"])]).encode_to_vec()
}

#[test]
fn missing_file() {
    assert_rejected(
        Path::new("/nonexistent/model.onnx"),
        "cannot open /nonexistent/model.onnx",
    );
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    assert_rejected(&p, "empty");
}

#[test]
fn truncated_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = good_model();
    let p = dir.path().join("full.onnx");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(inspect(&p).0, 0, "the untruncated model must load");
    // Every proper prefix is broken: the opset import is the last field written.
    for cut in 0..bytes.len() {
        let p = dir.path().join(format!("cut{cut}.onnx"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let (code, err) = inspect(&p);
        assert_eq!(code, 1, "cut at {cut}: {err}");
        assert!(
            err.contains(&*p.to_string_lossy()),
            "cut at {cut} must name the file: {err}"
        );
    }
}

#[test]
fn random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for i in 0..64 {
        let len = rng.random_range(1..4096);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let p = dir.path().join(format!("junk{i}.onnx"));
        std::fs::write(&p, junk).unwrap();
        let (code, err) = inspect(&p);
        assert_eq!(code, 1, "junk {i}: {err}");
        assert!(
            err.contains("not a valid ONNX protobuf") || err.contains("not an ONNX model"),
            "junk {i}: {err}"
        );
    }
}

#[test]
fn wrong_message_type() {
    let dir = tempfile::tempdir().unwrap();
    let t = TensorProto {
        dims: vec![2, 2],
        data_type: 1,
        float_data: vec![1.0, 2.0, 3.0, 4.0],
        name: "t".into(),
        ..Default::default()
    };
    let p = dir.path().join("tensor.onnx");
    std::fs::write(&p, t.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a valid ONNX protobuf") || err.contains("not an ONNX model"),
        "{err}"
    );
    let g = model_with(vec![node("Relu", "relu", &["x"], &["y"])])
        .graph
        .unwrap();
    let p = dir.path().join("graph.onnx");
    std::fs::write(&p, g.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn node_reads_missing_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    std::fs::write(
        &p,
        model_with(vec![node("Add", "add", &["x", "ghost"], &["y"])]).encode_to_vec(),
    )
    .unwrap();
    assert_rejected(
        &p,
        "node 'add' (Add) reads 'ghost', which no node, graph input or initializer produces",
    );
}

#[test]
fn duplicate_value_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model_with(vec![
        node("Relu", "a", &["x"], &["y"]),
        node("Relu", "b", &["x"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "duplicate value name 'y'");
    let m = model_with(vec![
        node("Relu", "a", &["x"], &["x"]),
        node("Relu", "b", &["x"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "duplicate value name 'x': it is already a graph input");
}

#[test]
fn value_info_listed_twice_is_accepted_keeping_the_first() {
    // Some simplifiers write an entry twice; value_info only declares, so this is not an error.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![
        node("Relu", "a", &["x"], &["h"]),
        node("Neg", "b", &["h"], &["y"]),
    ]);
    let g = m.graph.as_mut().unwrap();
    g.value_info = vec![f32_info("h", &[2, 3]), f32_info("h", &[2, 3])];
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let (code, err) = inspect(&p);
    assert_eq!(code, 0, "{err}");
    let model = onnxsmith::load(&p).unwrap().model;
    assert_eq!(model.graph.value_info().len(), 1);
}

#[test]
fn cycle() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model_with(vec![
        node("Add", "first", &["x", "b"], &["a"]),
        node("Relu", "second", &["a"], &["b"]),
        node("Relu", "out", &["a"], &["y"]),
    ]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "cycle through node 'first' (Add)");
}

#[test]
fn missing_opset_import() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![node("Relu", "relu", &["x"], &["y"])]);
    m.opset_import.clear();
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "imports no opset");
}

#[test]
fn unknown_domain_and_future_opset_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut relu = node("Relu", "relu", &["x"], &["t"]);
    relu.domain = String::new();
    let mut custom = node("Frobnicate", "custom", &["t"], &["y"]);
    custom.domain = "com.example".into();
    let mut m = model_with(vec![relu, custom]);
    m.opset_import[0].version = 99;
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = bin().arg("inspect").arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains("opset ai.onnx 99"),
        "{err}"
    );
    assert!(
        err.contains("domain 'com.example' is not a standard ONNX domain"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("com.example::Frobnicate"));
}

#[test]
fn facts_tract_cannot_infer_leave_stderr_to_warnings() {
    // An input declared without a rank gives tract nothing to start from; the passes that ask
    // it for facts go on without them and must not print its error.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let mut m = model_with(vec![node("Relu", "relu", &["x"], &["y"])]);
    let x = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(onnxsmith::onnx::proto::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = bin()
        .args(["optimize", "--no-check", "-q", "-o"])
        .arg(dir.path().join("o.onnx"))
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for line in err.lines() {
        assert!(
            line.starts_with("warning"),
            "unexpected stderr line: {line}"
        );
    }
}

/// A model whose single initializer lives in `w.bin` at `offset` with `length` bytes.
fn external_model(dir: &Path, offset: &str, length: &str) -> PathBuf {
    let mut m = model_with(vec![node("Add", "add", &["x", "w"], &["y"])]);
    let g = m.graph.as_mut().unwrap();
    let entry = |k: &str, v: &str| StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    };
    g.initializer.push(TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: 1,
        data_location: DataLocation::External as i32,
        external_data: vec![
            entry("location", "w.bin"),
            entry("offset", offset),
            entry("length", length),
        ],
        ..Default::default()
    });
    g.input.push(f32_info("unused", &[1]));
    let p = dir.join("m.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

#[test]
fn external_data_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = external_model(dir.path(), "0", "24");
    assert_rejected(&p, "external-data file 'w.bin' is missing or unreadable");
}

#[test]
fn external_data_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), [0u8; 30]).unwrap();
    let p = external_model(dir.path(), "16", "24");
    assert_rejected(
        &p,
        "offset 16 length 24 is out of range (the file is 30 bytes)",
    );
    let p = external_model(dir.path(), "0", "20");
    assert_rejected(&p, "holds 20 bytes but f32 [2, 3] needs 24");
    let p = external_model(dir.path(), "0", "24");
    assert_eq!(inspect(&p).0, 0, "a correct reference loads");
}

#[test]
fn external_data_outside_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let p = external_model(dir.path(), "0", "24");
    let mut m = onnxsmith::onnx::proto::ModelProto::decode(&*std::fs::read(&p).unwrap()).unwrap();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.external_data[0].value = "../w.bin".into();
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_rejected(&p, "must be a relative path inside the model's directory");
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let bytes = good_model();
    std::fs::write(&p, &bytes).unwrap();
    let out = bin()
        .arg("convert")
        .arg(&p)
        .arg("-o")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would overwrite the input file"));
    assert_eq!(std::fs::read(&p).unwrap(), bytes, "the input is untouched");
}

#[test]
fn usage_errors_exit_1() {
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin().args(["convert", "only-input.onnx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output"));
}

/// External data reached through symbolic links and special files (`common::external_dir`
/// lays out the model's directory). Nothing outside the model's directory is ever read,
/// nothing but a regular file is opened for reading, and a refused model writes nothing.
#[cfg(unix)]
mod external_links {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::common::{bin, external_dir, external_tensor, model_with, node};
    use onnxsmith::onnx::proto::ModelProto;
    use prost::Message;

    /// A fresh external_dir layout: (its root, kept alive; ROOT/model canonical).
    fn layout() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let model_dir = external_dir::make(root.path()).canonicalize().unwrap();
        (root, model_dir)
    }

    /// Writes `model_dir/m.onnx`, whose initializer `w` (f32 [2, 3]) is the first 24 bytes of
    /// `location`.
    fn model_reading(model_dir: &Path, location: &str) -> PathBuf {
        let mut m = model_with(vec![node("Add", "add", &["x", "w"], &["y"])]);
        m.graph.as_mut().unwrap().initializer.push(external_tensor(
            "w",
            1,
            &[2, 3],
            location,
            0,
            24,
        ));
        let p = model_dir.join("m.onnx");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        p
    }

    /// Runs `cmd`, failing the test if it has not finished within a minute (a FIFO opened
    /// for reading would wait for a writer for ever). Returns (exit code, stderr).
    fn run_bounded(mut cmd: Command) -> (i32, String) {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{cmd:?} was still running after a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status.code().expect("killed by a signal"), err)
    }

    /// `inspect`, `convert` and `optimize --no-check` all refuse `model` with exit 1 and a
    /// message that names the model file and contains `needle`; neither writes anything.
    fn assert_refused_everywhere(model: &Path, needle: &str) {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.onnx");
        let mut inspect = bin();
        inspect.arg("inspect").arg(model);
        let mut convert = bin();
        convert.arg("convert").arg(model).arg("-o").arg(&out);
        let mut optimize = bin();
        optimize
            .args(["optimize", "--no-check", "-q", "-o"])
            .arg(&out)
            .arg(model);
        for cmd in [inspect, convert, optimize] {
            let what = format!("{cmd:?}");
            let (code, err) = run_bounded(cmd);
            assert_eq!(code, 1, "{what}: expected exit 1: {err}");
            assert!(
                err.contains(needle),
                "{what}: expected {needle:?} in: {err}"
            );
            assert!(err.contains(&*model.to_string_lossy()), "{what}: {err}");
            assert!(!err.contains("panicked"), "{err}");
            let written: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
            assert!(written.is_empty(), "{what} wrote {written:?}");
        }
    }

    fn outside(location: &str, resolved: &Path, model_dir: &Path) -> String {
        format!(
            "tensor 'w': external-data location '{location}' resolves to {}, outside the model's directory {}: refused",
            resolved.display(),
            model_dir.display()
        )
    }

    #[test]
    fn a_file_link_leading_outside_is_refused() {
        let (_root, model_dir) = layout();
        let secret = model_dir.parent().unwrap().join("secret.bin");
        // outside.bin links straight out; hop.bin links to outside.bin, a link inside.
        for location in ["outside.bin", "hop.bin"] {
            let m = model_reading(&model_dir, location);
            assert_refused_everywhere(&m, &outside(location, &secret, &model_dir));
        }
    }

    #[test]
    fn a_directory_link_leading_outside_is_refused() {
        let (_root, model_dir) = layout();
        let secret = model_dir.parent().unwrap().join("secret.bin");
        let m = model_reading(&model_dir, "up/secret.bin");
        assert_refused_everywhere(&m, &outside("up/secret.bin", &secret, &model_dir));
        let m = model_reading(&model_dir, "./up/secret.bin");
        assert_refused_everywhere(&m, &outside("./up/secret.bin", &secret, &model_dir));
    }

    #[test]
    fn a_device_is_refused_by_link_or_by_absolute_path() {
        let (_root, model_dir) = layout();
        let m = model_reading(&model_dir, "zero");
        assert_refused_everywhere(&m, &outside("zero", Path::new("/dev/zero"), &model_dir));
        let m = model_reading(&model_dir, "/dev/zero");
        assert_refused_everywhere(
            &m,
            "tensor 'w': external-data location '/dev/zero' must be a relative path inside the model's directory",
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let (_root, model_dir) = layout();
        let m = model_reading(&model_dir, "pipe");
        assert_refused_everywhere(
            &m,
            &format!(
                "tensor 'w': external-data location 'pipe' resolves to {}, a FIFO, not a regular file: refused",
                model_dir.join("pipe").display()
            ),
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let (_root, model_dir) = layout();
        for (location, resolved) in [("sub", "sub"), ("d", "sub"), (".", "")] {
            let m = model_reading(&model_dir, location);
            let resolved = if resolved.is_empty() {
                model_dir.clone()
            } else {
                model_dir.join(resolved)
            };
            assert_refused_everywhere(
                &m,
                &format!(
                    "tensor 'w': external-data location '{location}' resolves to {}, a directory, not a regular file: refused",
                    resolved.display()
                ),
            );
        }
    }

    /// A link whose target lies inside the model's directory is followed: it reads nothing the
    /// model could not name directly. What counts is where the path ends up, so even a way out
    /// and back in (`up/model/...`) is accepted.
    #[test]
    fn a_link_that_stays_inside_is_followed() {
        let (_root, model_dir) = layout();
        let w = std::fs::read(model_dir.join("w.bin")).unwrap();
        let sub_w = std::fs::read(model_dir.join("sub/w.bin")).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.onnx");
        for (location, bytes) in [
            ("alias.bin", &w),
            ("d/w.bin", &sub_w),
            ("up/model/w.bin", &w),
        ] {
            let m = model_reading(&model_dir, location);
            let mut cmd = bin();
            cmd.arg("convert").arg(&m).arg("-o").arg(&out);
            let (code, err) = run_bounded(cmd);
            assert_eq!(code, 0, "{location}: {err}");
            let written = ModelProto::decode(&*std::fs::read(&out).unwrap()).unwrap();
            let t = &written.graph.unwrap().initializer[0];
            assert_eq!(&t.raw_data[..], &bytes[..24], "{location}");
        }
    }

    /// A model file that is itself a link (a Hugging Face cache: `snapshots/rev/m.onnx` leads
    /// into `blobs/`, and so does its data) reads data beside the file it leads to; data that
    /// leads anywhere else is still refused.
    #[test]
    fn a_model_that_is_a_link_reads_data_beside_the_file_it_leads_to() {
        use std::os::unix::fs::symlink;
        let (root, model_dir) = layout();
        let blobs = root.path().join("blobs");
        let snapshot = root.path().join("snapshots/rev");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::copy(model_dir.join("w.bin"), blobs.join("h2")).unwrap();
        let m = model_reading(&model_dir, "m.onnx_data");
        std::fs::copy(&m, blobs.join("h1")).unwrap();
        symlink(blobs.join("h1"), snapshot.join("m.onnx")).unwrap();
        symlink(blobs.join("h2"), snapshot.join("m.onnx_data")).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let mut cmd = bin();
        let out = out_dir.path().join("out.onnx");
        cmd.arg("convert")
            .arg(snapshot.join("m.onnx"))
            .arg("-o")
            .arg(&out);
        let (code, err) = run_bounded(cmd);
        assert_eq!(code, 0, "{err}");
        // Data beside neither the link nor the file it leads to stays out of reach.
        std::fs::remove_file(snapshot.join("m.onnx_data")).unwrap();
        symlink(root.path().join("secret.bin"), snapshot.join("m.onnx_data")).unwrap();
        let mut cmd = bin();
        cmd.arg("convert")
            .arg(snapshot.join("m.onnx"))
            .arg("-o")
            .arg(&out);
        let (code, err) = run_bounded(cmd);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("outside the model's directory"), "{err}");
    }

    /// The output and its `.data` file are written beside their paths and renamed over them:
    /// a symbolic link there is replaced by the new file, and what it pointed to is untouched.
    #[test]
    fn an_output_or_data_path_that_is_a_link_is_replaced_not_written_through() {
        let (_root, model_dir) = layout();
        // 1 KiB or more, so --external-data moves it to out.onnx.data.
        let mut m = model_with(vec![node("Add", "add", &["x", "w"], &["y"])]);
        m.graph.as_mut().unwrap().input[0] = super::f32_info("x", &[2, 256]);
        m.graph.as_mut().unwrap().output[0] = super::f32_info("y", &[2, 256]);
        m.graph.as_mut().unwrap().initializer.push(external_tensor(
            "w",
            1,
            &[2, 256],
            "w.bin",
            0,
            2048,
        ));
        let input = model_dir.join("big.onnx");
        std::fs::write(&input, m.encode_to_vec()).unwrap();
        let victims = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.onnx");
        let out_data = out_dir.path().join("out.onnx.data");
        for command in ["convert", "optimize"] {
            for link in [&out, &out_data] {
                let victim = victims.path().join("victim");
                std::fs::write(&victim, b"keep me").unwrap();
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(&victim, link).unwrap();
                let mut cmd = bin();
                match command {
                    "convert" => cmd.arg("convert"),
                    _ => cmd.args(["optimize", "--no-check", "-q"]),
                };
                cmd.arg(&input).arg("--external-data").arg("-o").arg(&out);
                let (code, err) = run_bounded(cmd);
                assert_eq!(code, 0, "{command}, {}: {err}", link.display());
                assert_eq!(std::fs::read(&victim).unwrap(), b"keep me", "{command}");
                for p in [&out, &out_data] {
                    let kind = std::fs::symlink_metadata(p).unwrap().file_type();
                    assert!(kind.is_file(), "{command}: {} is {kind:?}", p.display());
                }
                let back = onnxsmith::load(&out).unwrap();
                assert_eq!(
                    back.external_files,
                    std::slice::from_ref(&out_data),
                    "{command}"
                );
            }
        }
    }
}
