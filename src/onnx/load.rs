//! Reading a model: the file is memory-mapped and decoded in place, so tensor payloads are
//! slices of the mapping (`Bytes`), not heap copies. External data is resolved the same way.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use prost::Message;

use super::external::for_each_tensor;
use super::mapping::map_file;
use super::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};

/// Loads `path`, resolving external data relative to its directory. Also returns the
/// external-data files read.
pub fn load_model(path: &Path) -> Result<(ModelProto, Vec<PathBuf>)> {
    let bytes = map_file(path)?;
    let mut model = decode_model(bytes, &path.display().to_string())?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let files = resolve_external_data(&mut model, dir)
        .with_context(|| format!("{}: cannot resolve external data", path.display()))?;
    Ok((model, files))
}

/// Decodes a model held in memory. `what` names it in errors.
pub fn decode_model(bytes: Bytes, what: &str) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("{what}: the file is empty, not an ONNX model");
    }
    let len = bytes.len();
    let model = ModelProto::decode(bytes).map_err(|e| {
        anyhow!(
            "{what}: not a valid ONNX protobuf ({len} bytes; truncated, corrupt or not ONNX): {e}"
        )
    })?;
    if model.graph.is_none() {
        bail!("{what}: decodes as protobuf but is not an ONNX model: it has no graph");
    }
    if model.ir_version <= 0 {
        bail!(
            "{what}: decodes as protobuf but is not an ONNX model: ir_version is {}",
            model.ir_version
        );
    }
    Ok(model)
}

fn resolve_external_data(model: &mut ModelProto, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: HashMap<String, Bytes> = HashMap::new();
    for_each_tensor(model, &mut |t| resolve_tensor(t, dir, &mut files))?;
    let mut paths: Vec<PathBuf> = files.keys().map(|k| dir.join(k)).collect();
    paths.sort();
    Ok(paths)
}

fn resolve_tensor(
    t: &mut TensorProto,
    dir: &Path,
    files: &mut HashMap<String, Bytes>,
) -> Result<()> {
    if t.data_location != DataLocation::External as i32 {
        return Ok(());
    }
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let name = &t.name;
    let location = entry("location")
        .ok_or_else(|| anyhow!("tensor '{name}' is stored externally but names no location"))?
        .to_string();
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    anyhow!("tensor '{name}': external-data {key} '{v}' is not a number")
                })
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    let rel = Path::new(&location);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!(
            "tensor '{name}': external-data location '{location}' must be a relative path inside the model's directory"
        );
    }
    if !files.contains_key(&location) {
        let path = dir.join(rel);
        let data = map_file(&path).with_context(|| {
            format!("tensor '{name}': external-data file '{location}' is missing or unreadable")
        })?;
        files.insert(location.clone(), data);
    }
    let data = &files[&location];
    let size = data.len() as u64;
    let length = length.unwrap_or(size.saturating_sub(offset));
    let end = offset.checked_add(length).filter(|&end| end <= size).ok_or_else(|| {
        anyhow!(
            "tensor '{name}': external data '{location}' offset {offset} length {length} is out of range (the file is {size} bytes)"
        )
    })?;
    if let Some(expected) = super::dense_bytes(t.data_type, &t.dims) {
        if expected != length {
            bail!(
                "tensor '{name}': external data '{location}' holds {length} bytes but {} {:?} needs {expected}",
                super::element_name(t.data_type),
                t.dims
            );
        }
    }
    t.raw_data = data.slice(offset as usize..end as usize);
    t.data_location = DataLocation::Default as i32;
    t.external_data.clear();
    Ok(())
}
