//! Built-in models made in code, for the demo, the tests and the benchmarks. Weights come from a
//! seeded generator, so every build of a model is byte-identical.

mod builder;
mod resnet;

use anyhow::{bail, Result};

use crate::ir::Model;

pub use builder::Builder;
pub use resnet::resnet50;

/// The names `onnxsmith zoo` accepts.
pub const MODELS: &[&str] = &["resnet50"];

pub fn build(name: &str) -> Result<Model> {
    match name {
        "resnet50" => resnet50(),
        other => bail!(
            "unknown built-in model '{other}' (known: {})",
            MODELS.join(", ")
        ),
    }
}
