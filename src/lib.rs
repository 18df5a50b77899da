//! onnxsmith: read an ONNX model, rewrite its graph, write a standard ONNX file, and prove the
//! numbers still agree.
//!
//! The library's public face is small: [`load`] a model (memory-mapped, external data resolved,
//! invariants checked), work on its [`ir::Model`], [`save`] it atomically; or run the whole
//! `optimize` job, checks and report included, with [`optimize()`] (on files) or
//! [`optimize_model`] (in memory). Every command of the CLI is one call here.

pub mod check;
pub mod cli;
pub mod demo;
pub mod ir;
pub mod npy;
pub mod onnx;
pub mod optimize;
pub mod passes;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod zoo;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use check::{CheckOptions, Outcome};
use ir::Model;
pub use onnx::{ExternalData, SaveOptions};
pub use optimize::{optimize, optimize_model, Optimized, Options, Request};
use report::Summary;

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

/// What `model` holds, with its size on disk, and the loader's warnings.
pub fn inspect(model: &Path) -> Result<(Summary, Vec<String>)> {
    let loaded = load(model)?;
    Ok((
        Summary::of(&loaded.model).with_file(model)?,
        loaded.warnings,
    ))
}

/// Reads `input` and writes it to `output` unchanged (external data in `<output>.data` when
/// asked, or past 2 GiB); returns the loader's warnings.
pub fn convert(input: &Path, output: &Path, external_data: bool) -> Result<Vec<String>> {
    let loaded = load(input)?;
    ensure_not_input(output, input, &loaded.external_files)?;
    save(&loaded.model, output, save_options(external_data))?;
    Ok(loaded.warnings)
}

/// Where tensors go: to `<output>.data` when asked for, else only past 2 GiB.
fn save_options(external_data: bool) -> SaveOptions {
    SaveOptions {
        external: if external_data {
            ExternalData::Always
        } else {
            ExternalData::Auto
        },
        ..SaveOptions::default()
    }
}

/// Runs the models in files `a` and `b` on the same inputs and compares `b`'s outputs with
/// `a`'s; returns the verdict and the loader's warnings.
pub fn verify(a: &Path, b: &Path, opts: &CheckOptions) -> Result<(Outcome, Vec<String>)> {
    let (la, lb) = (load(a)?, load(b)?);
    let outcome = check::compare_models(&la.model, &lb.model, opts)?;
    Ok((outcome, [la.warnings, lb.warnings].concat()))
}
