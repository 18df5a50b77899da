//! `onnxsmith._native`: the library's `optimize` job and command line, for the Python package
//! in `python/onnxsmith`. Options arrive as `optimize` command-line flags, which
//! [`onnxsmith::cli::parse_optimize`] reads through the CLI's own definition, so every option
//! and default is the CLI's. Jobs run with the GIL released.

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList};

use onnxsmith::cli::{parse_optimize, OptimizeCommand};
use onnxsmith::ir::Model;
use onnxsmith::onnx::proto::tensor_proto::DataLocation;
use onnxsmith::onnx::proto::{AttributeProto, ModelProto, NodeProto};
use onnxsmith::report::Report;
use onnxsmith::{ExternalData, SaveOptions};

create_exception!(
    onnxsmith,
    Error,
    PyException,
    "Bad input or usage: the message is the one the onnxsmith CLI prints."
);

fn error(e: anyhow::Error) -> PyErr {
    Error::new_err(format!("{e:#}"))
}

/// What a job hands back: the report as `--report` writes it (JSON), whether it passed its
/// check (a mismatch writes nothing), and what the CLI prints after a job.
type Outcome = (String, bool, String);

fn outcome(report: &Report) -> PyResult<Outcome> {
    let json = serde_json::to_string_pretty(report).map_err(|e| error(e.into()))?;
    Ok((json, report.passed(), report.to_text()))
}

/// Runs the command line `args` (the program's name first); returns its exit code.
#[pyfunction]
fn main(py: Python<'_>, args: Vec<OsString>) -> u8 {
    py.detach(|| onnxsmith::cli::main(args))
}

/// The long names of `optimize`'s options, each with whether it takes a value.
#[pyfunction]
fn optimize_flags() -> Vec<(String, bool)> {
    onnxsmith::cli::optimize_flags()
}

/// The `optimize` job on files: `args` is an `onnxsmith optimize` command line (input, `-o`
/// output and flags), run as the CLI runs it.
#[pyfunction]
fn optimize_file(py: Python<'_>, args: Vec<String>) -> PyResult<Outcome> {
    let request = parse_optimize(args)
        .and_then(OptimizeCommand::request)
        .map_err(error)?;
    let report = py.detach(|| onnxsmith::optimize(&request)).map_err(error)?;
    outcome(&report)
}

/// The `optimize` job on a serialized model, with the options of `optimize` flags `args`.
/// The result goes to `output` when given (its external data as the CLI writes it), else it
/// comes back serialized. Nothing comes back or is written when the check failed.
///
/// The model comes as the one item of the list `boxed`, which the job empties: where the caller
/// holds no other reference, the serialized model is freed as soon as the result no longer
/// reads it, before the result is encoded.
#[pyfunction]
fn optimize_bytes<'py>(
    py: Python<'py>,
    boxed: Bound<'py, PyList>,
    output: Option<PathBuf>,
    args: Vec<String>,
) -> PyResult<(Option<Bound<'py, PyBytes>>, Outcome)> {
    let data: PyBackedBytes = boxed.get_item(0)?.extract()?;
    boxed.del_item(0)?;
    let command = parse_optimize(args).map_err(error)?;
    if command.external_data && output.is_none() {
        return Err(Error::new_err(
            "external_data is for a result written to a file: give output=",
        ));
    }
    let job = py.detach(|| job_in_memory(data, output.as_deref(), &command));
    let (result, report) = job.map_err(error)?;
    let bytes = match result {
        Some(proto) => Some(serialize(py, &proto)?),
        None => None,
    };
    Ok((bytes, outcome(&report)?))
}

/// Decodes `data` (its tensors stay slices of the Python bytes object), runs the job, and
/// writes the result to `output` or lowers it for serializing. No result when the check
/// failed or it was written.
fn job_in_memory(
    data: PyBackedBytes,
    output: Option<&Path>,
    command: &OptimizeCommand,
) -> anyhow::Result<(Option<ModelProto>, Report)> {
    let input = data.as_ptr_range();
    let mut proto = onnxsmith::onnx::decode_model(Bytes::from_owner(data), "the model")?;
    refuse_external_data(&mut proto)?;
    let model = Model::from_proto(proto)?;
    let done = onnxsmith::optimize_model(&model, &command.options)?;
    drop(model);
    let mut report = done.report;
    let mut result = None;
    if report.passed() {
        match output {
            Some(path) => {
                let external = if command.external_data {
                    ExternalData::Always
                } else {
                    ExternalData::Auto
                };
                let opts = SaveOptions {
                    external,
                    ..SaveOptions::default()
                };
                onnxsmith::save(&done.model, path, opts)?;
                report.output = Some(path.to_path_buf());
                report.after = report.after.with_file(path)?;
            }
            None => {
                let mut proto = done.model.to_proto()?;
                drop(done.model);
                own_bytes(&mut proto, input)?;
                result = Some(proto);
            }
        }
    }
    if let Some(path) = &command.report {
        let text = serde_json::to_string_pretty(&report)?;
        onnxsmith::onnx::write_atomic(path, |w| {
            std::io::Write::write_all(w, text.as_bytes())?;
            Ok(())
        })?;
    }
    Ok((result, report))
}

/// Copies onto the heap every byte field of `proto` that is a slice of the serialized input (at
/// `input`), so that nothing holds the input any longer. Else, where rewrites replaced most
/// weights (each Conv taking its BatchNormalization), the input, the new weights and the
/// encoded result would all be held at once.
fn own_bytes(proto: &mut ModelProto, input: Range<*const u8>) -> anyhow::Result<()> {
    let mut own = |b: &mut Bytes| {
        if input.contains(&b.as_ptr()) {
            *b = Bytes::copy_from_slice(b);
        }
    };
    onnxsmith::onnx::for_each_tensor(proto, &mut |t| {
        own(&mut t.raw_data);
        t.string_data.iter_mut().for_each(&mut own);
        Ok(())
    })?;
    let graphs = proto.graph.iter_mut().chain(
        proto
            .training_info
            .iter_mut()
            .flat_map(|t| t.initialization.iter_mut().chain(t.algorithm.iter_mut())),
    );
    for g in graphs {
        own_attributes(&mut g.node, &mut own);
    }
    for f in &mut proto.functions {
        own_attributes(&mut f.node, &mut own);
        for a in &mut f.attribute_proto {
            own_attribute(a, &mut own);
        }
    }
    Ok(())
}

/// The string attributes of `nodes`, and of the nodes of their subgraphs (tensor attributes
/// are [`onnxsmith::onnx::for_each_tensor`]'s).
fn own_attributes(nodes: &mut [NodeProto], own: &mut impl FnMut(&mut Bytes)) {
    for a in nodes.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
        own_attribute(a, own);
    }
}

fn own_attribute(a: &mut AttributeProto, own: &mut impl FnMut(&mut Bytes)) {
    own(&mut a.s);
    a.strings.iter_mut().for_each(&mut *own);
    for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
        own_attributes(&mut g.node, own);
    }
}

/// Tensors in external files cannot be reached from a model in memory: their paths are
/// relative to a directory it does not know.
fn refuse_external_data(proto: &mut ModelProto) -> anyhow::Result<()> {
    onnxsmith::onnx::for_each_tensor(proto, &mut |t| {
        if t.data_location == DataLocation::External as i32 {
            anyhow::bail!(
                "tensor '{}' is stored in an external data file, which a model in memory cannot \
                 reach: pass the model's path instead (onnxsmith.optimize(\"model.onnx\", ...))",
                t.name
            );
        }
        Ok(())
    })
}

/// Protobuf's limit on one message: a larger result must go to a file with external data.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// Encodes `proto` straight into a new Python bytes object (no second copy on the heap),
/// with the GIL released while encoding.
fn serialize<'py>(py: Python<'py>, proto: &ModelProto) -> PyResult<Bound<'py, PyBytes>> {
    let len = proto.encoded_len();
    if len >= PROTOBUF_LIMIT {
        return Err(Error::new_err(format!(
            "the result needs {len} bytes, past the 2 GiB one protobuf can hold: give output= \
             to write it with external data"
        )));
    }
    PyBytes::new_with(py, len, |buf| {
        py.detach(|| {
            let mut out: &mut [u8] = buf;
            proto.encode(&mut out)
        })
        .map_err(|e| Error::new_err(format!("protobuf encoding failed: {e}")))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(optimize_flags, m)?)?;
    m.add_function(wrap_pyfunction!(optimize_file, m)?)?;
    m.add_function(wrap_pyfunction!(optimize_bytes, m)?)?;
    Ok(())
}
