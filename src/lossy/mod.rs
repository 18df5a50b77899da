//! What the lossy stages (pruning, quantization, lower precision) share: their samples and
//! the held-back split the check judges on ([`samples`], [`images`]), how much error each op
//! adds ([`sensitivity`]), and the search that gives the most sensitive ops back until the
//! result passes its check ([`search`]). None of it changes a model: the stages do, through
//! the pipeline.

pub mod images;
pub mod samples;
pub mod search;
pub mod sensitivity;

pub use samples::{SampleOptions, Samples};
