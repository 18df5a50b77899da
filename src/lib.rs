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
pub mod files;
pub mod ir;
pub mod lossy;
pub mod npy;
pub mod onnx;
pub mod optimize;
pub mod passes;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod zoo;

use std::path::Path;

use anyhow::Result;

use check::{CheckOptions, Outcome};
pub use files::{ensure_not_input, load, save, stage, Loaded};
pub use onnx::{ExternalData, SaveOptions};
pub use optimize::{optimize, optimize_model, Optimized, Options, Request};
use report::Summary;

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
    save(&loaded.model, output, files::save_options(external_data))?;
    Ok(loaded.warnings)
}

/// Runs the models in files `a` and `b` on the same inputs and compares `b`'s outputs with
/// `a`'s; returns the verdict and the loader's warnings.
pub fn verify(a: &Path, b: &Path, opts: &CheckOptions) -> Result<(Outcome, Vec<String>)> {
    let (la, lb) = (load(a)?, load(b)?);
    let outcome = check::compare_models(&la.model, &lb.model, opts)?;
    Ok((outcome, [la.warnings, lb.warnings].concat()))
}
