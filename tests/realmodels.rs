//! Real trained models (from `../shared/realmodels/fetch-dev.sh DIR`, pointed to by
//! `ONNXSMITH_REALMODELS`): each optimizes, and the result matches the original in tract on
//! inputs shaped as each model documents. Skips with a message when the models are absent.

mod common;

use onnxsmith::check::{Outcome, Reference};
use onnxsmith::passes::PipelineOptions;

#[test]
fn real_models_optimize_and_stay_equal() {
    let Some(dir) = common::real_models_dir() else {
        eprintln!("skipped: set ONNXSMITH_REALMODELS to a directory filled by fetch-dev.sh");
        return;
    };
    let files = common::onnx_files(&dir);
    assert!(!files.is_empty(), "no models in {}", dir.display());
    for path in files {
        let original = onnxsmith::load(&path).unwrap().model;
        let (optimized, _) =
            onnxsmith::optimize::run_passes(&original, &PipelineOptions::default()).unwrap();
        let opts = common::real_model_check(&original);
        match Reference::new(&original, &opts)
            .unwrap()
            .check(&optimized)
            .unwrap()
        {
            Outcome::Checked(r) => assert!(r.ok(), "{}:\n{}", path.display(), r.to_table()),
            Outcome::Unverified(why) => panic!("{}: unverified: {why}", path.display()),
        }
        eprintln!("{}: optimized and verified", path.display());
    }
}
