//! Writes that fail or are cut short: the target holds nothing or the previous file, never a
//! partial one; no temporary file is left behind; the input is byte-for-byte unchanged.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{bin, f32_info, f32_tensor, model_io, node};
use onnxsmith::ir::ContentHash;

/// A model of `mib` MiB: y = x + w over one large constant.
fn big_model(dir: &Path, mib: usize) -> PathBuf {
    let n = mib << 18;
    let p = model_io(
        vec![node("Add", "add", &["x", "w"], &["y"])],
        vec![f32_info("x", &[n as i64])],
        vec![f32_info("y", &[n as i64])],
        vec![f32_tensor("w", &[n as i64], &vec![0.5; n])],
    );
    let path = dir.join("in.onnx");
    let model = onnxsmith::ir::Model::from_proto(p).unwrap();
    onnxsmith::save(&model, &path, Default::default()).unwrap();
    path
}

fn hash(path: &Path) -> u64 {
    let mut h = ContentHash::new();
    h.write(&std::fs::read(path).unwrap());
    h.finish()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_output_path_under_a_regular_file_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_model(dir.path(), 1);
    let before = hash(&input);
    std::fs::write(dir.path().join("file"), b"not a directory").unwrap();
    let out = bin()
        .arg("convert")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("file/out.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file/out.onnx"), "{err}");
    assert_eq!(hash(&input), before);
    assert_eq!(listing(dir.path()), ["file", "in.onnx"]);
}

/// Runs `convert input -o output` with the file size limit at `limit` bytes.
fn convert_limited(input: &Path, output: &Path, limit: u64) -> std::process::Output {
    let mut cmd = bin();
    cmd.arg("convert").arg(input).arg("-o").arg(output);
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_write_past_the_file_size_limit_leaves_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_model(dir.path(), 4);
    let before = hash(&input);
    let target = dir.path().join("out.onnx");
    // First with nothing at the target, then with a previous file there.
    for previous in [None, Some(b"the previous file".to_vec())] {
        if let Some(p) = &previous {
            std::fs::write(&target, p).unwrap();
        }
        let out = convert_limited(&input, &target, 1 << 20);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot write"), "{err}");
        match &previous {
            None => assert!(!target.exists(), "a partial file was left"),
            Some(p) => assert_eq!(&std::fs::read(&target).unwrap(), p),
        }
        assert_eq!(hash(&input), before);
        let mut want = vec!["in.onnx".to_string()];
        if previous.is_some() {
            want.push("out.onnx".into());
        }
        assert_eq!(listing(dir.path()), want, "a temporary file was left");
    }
}

#[test]
fn a_write_killed_at_any_point_leaves_nothing_or_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_model(dir.path(), 256);
    let before = hash(&input);
    let target = dir.path().join("out.onnx");
    let previous = b"the previous file".to_vec();
    let mut whole = None;
    for delay_ms in [0, 5, 20, 50, 100, 200, 400, 800] {
        std::fs::write(&target, &previous).unwrap();
        let mut child = bin()
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&target)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let now = std::fs::read(&target).unwrap();
        if status.success() {
            // It finished first: the whole new file is there.
            let h = hash(&target);
            assert_eq!(*whole.get_or_insert(h), h);
            assert_eq!(h, before, "convert writes back the same bytes");
        } else {
            assert!(
                now == previous || hash(&target) == before,
                "killed after {delay_ms} ms: the target holds a partial file"
            );
        }
        assert_eq!(hash(&input), before);
        assert_eq!(
            listing(dir.path()),
            ["in.onnx", "out.onnx"],
            "killed after {delay_ms} ms: a temporary file was left"
        );
    }
}
