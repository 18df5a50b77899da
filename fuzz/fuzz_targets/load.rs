//! Bytes → decode → resolve external data → lift → verify → lower → encode. Every step may
//! refuse the input; none may panic, and a model that lifts must verify, lower and lift again.
//!
//! External data resolves against a fixed model directory laid out once per process (links
//! that stay inside and lead outside, a FIFO, a device, subdirectories: see
//! tests/common/external_dir.rs), as the CLI resolves it against the model file's directory.
//! A location the fuzzer invents is read, refused or missing; whatever is read must lie inside
//! that directory, and a FIFO must never be waited on (libFuzzer reports a timeout).
#![no_main]

#[path = "../../tests/common/external_dir.rs"]
mod external_dir;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use onnxsmith::ir::{verify::verify, Model};
use onnxsmith::onnx::{decode_model, resolve_external_data};
use prost::Message;

/// The model directory external data resolves against, with every link resolved.
fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("onnxsmith-fuzz-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        external_dir::make(&root).canonicalize().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut proto) = decode_model(data.to_vec().into(), "fuzz input") else {
        return;
    };
    let Ok(files) = resolve_external_data(&mut proto, model_dir(), None) else {
        return;
    };
    for f in files {
        let real = f.canonicalize().expect("a file read still resolves");
        assert!(real.starts_with(model_dir()), "read {f:?}, outside");
        assert!(real.is_file(), "read {f:?}, not a regular file");
    }
    let Ok(model) = Model::from_proto(proto) else {
        return;
    };
    verify(&model).expect("a lifted model verifies");
    let lowered = model.to_proto().expect("a lifted model lowers");
    let bytes = lowered.encode_to_vec();
    let again = decode_model(bytes.into(), "lowered").expect("a lowered model decodes");
    Model::from_proto(again).expect("a lowered model lifts again");
});
