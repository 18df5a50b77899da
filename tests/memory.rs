//! Converting a model keeps its input memory-mapped: the process's peak resident memory while
//! `convert` reads and rewrites a model with external data stays well under the size of that
//! data. Alone in its test binary, since the peak is the whole process's.

mod common;

use common::{f32_info, model_io, node};
use onnxsmith::ir::Model;
use onnxsmith::onnx::proto::TensorProto;
use onnxsmith::{ExternalData, SaveOptions};

/// Large enough that the process's own memory (a few tens of MiB) is small beside it.
const WEIGHT_BYTES: usize = 256 << 20;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn convert_keeps_the_input_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.onnx"), dir.path().join("out.onnx"));
    {
        let n = WEIGHT_BYTES / 4;
        let w = TensorProto {
            name: "w".into(),
            data_type: 1,
            dims: vec![n as i64],
            raw_data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            ..Default::default()
        };
        let proto = model_io(
            vec![node("Add", "add", &["x", "w"], &["y"])],
            vec![f32_info("x", &[n as i64])],
            vec![f32_info("y", &[n as i64])],
            vec![w],
        );
        let opts = SaveOptions {
            external: ExternalData::Always,
            ..Default::default()
        };
        onnxsmith::save(&Model::from_proto(proto).unwrap(), &input, opts).unwrap();
    }
    // Resets the peak to what is resident now (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    onnxsmith::convert(&input, &output, true).unwrap();
    let grew = status_bytes("VmHWM:") - before;
    assert!(
        grew < WEIGHT_BYTES as u64 / 2,
        "converting {} MiB of external data raised the peak resident memory by {} MiB",
        WEIGHT_BYTES >> 20,
        grew >> 20
    );
    let data = std::fs::read(output.with_file_name("out.onnx.data")).unwrap();
    let original = std::fs::read(input.with_file_name("in.onnx.data")).unwrap();
    assert!(
        data == original,
        "the external data changed in the conversion"
    );
}
