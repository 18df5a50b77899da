//! Model files: loading (with what the loader noticed), staging and saving (atomic), and the
//! guard that keeps a job from overwriting its own input. Above the IR, since a file is read
//! into an [`ir::Model`](crate::ir::Model); below the job and the library's face, which both
//! call down into it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ir::Model;
use crate::onnx::{self, ExternalData, SaveOptions};

/// A loaded model with what the loader noticed.
pub struct Loaded {
    pub model: Model,
    /// Things worth telling the user that do not stop us (unknown domains or opset versions).
    pub warnings: Vec<String>,
    /// External-data files the model reads, which a save must never overwrite.
    pub external_files: Vec<PathBuf>,
}

/// Newest opset of each standard domain that our schema knows; newer ones are passed through
/// with a warning.
const KNOWN_OPSETS: &[(&str, i64)] = &[
    ("", 23),
    ("ai.onnx.ml", 5),
    ("ai.onnx.training", 1),
    ("ai.onnx.preview.training", 1),
];

pub fn load(path: &Path) -> Result<Loaded> {
    let (proto, external_files) = onnx::load_model(path)?;
    let model = Model::from_proto(proto).with_context(|| format!("{}", path.display()))?;
    let mut warnings = Vec::new();
    let local_domains: Vec<&str> = model.functions().map(|(d, _)| d).collect();
    for (written, version) in model.opsets() {
        let domain = if written == "ai.onnx" { "" } else { written };
        match KNOWN_OPSETS.iter().find(|(d, _)| *d == domain) {
            Some((_, newest)) if version > *newest => warnings.push(format!(
                "{}: opset {} {version} is newer than the {newest} we know; its operators are kept as they are",
                path.display(),
                if domain.is_empty() { "ai.onnx" } else { domain },
            )),
            Some(_) => {}
            None if local_domains.contains(&domain) => {}
            None => warnings.push(format!(
                "{}: domain '{written}' is not a standard ONNX domain; its operators are kept opaque",
                path.display(),
            )),
        }
    }
    Ok(Loaded {
        model,
        warnings,
        external_files,
    })
}

/// Lowers and writes `model` to `path` atomically.
pub fn save(model: &Model, path: &Path, opts: SaveOptions) -> Result<()> {
    stage(model, path, opts)?.commit()
}

/// Lowers and writes `model` beside `path`, to be put in place by `commit` (or deleted when
/// dropped): the result can be written while it is still being checked.
pub fn stage(model: &Model, path: &Path, opts: SaveOptions) -> Result<onnx::Staged> {
    onnx::stage_model(model.to_proto()?, path, opts)
}

/// Refuses to write `output` when it is `input` or one of the files `input` reads.
pub fn ensure_not_input(output: &Path, input: &Path, input_files: &[PathBuf]) -> Result<()> {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    let out = canon(output);
    let data_name = output
        .file_name()
        .map(|n| output.with_file_name(format!("{}.data", n.to_string_lossy())));
    let out_data = data_name.as_deref().and_then(canon);
    for f in std::iter::once(input).chain(input_files.iter().map(PathBuf::as_path)) {
        let f_c = canon(f);
        if f_c.is_some() && (f_c == out || f_c == out_data) {
            anyhow::bail!(
                "refusing to write {}: it would overwrite the input file {}",
                output.display(),
                f.display()
            );
        }
    }
    Ok(())
}

/// Where tensors go: to `<output>.data` when asked for, else only past 2 GiB.
pub fn save_options(external_data: bool) -> SaveOptions {
    SaveOptions {
        external: if external_data {
            ExternalData::Always
        } else {
            ExternalData::Auto
        },
        ..SaveOptions::default()
    }
}
