//! Real trained models (from `../shared/realmodels/fetch-dev.sh DIR`, pointed to by
//! `ONNXSMITH_REALMODELS`): each optimizes, and the result matches the original in tract on
//! inputs shaped as each model documents. Skips with a message when the models are absent.

mod common;

use std::path::PathBuf;

use onnxsmith::check::{CheckOptions, InputSource, Outcome, Reference};
use onnxsmith::passes::PipelineOptions;
use onnxsmith::runtime::{input_specs, Binding, HostTensor};
use rand::SeedableRng;

fn models_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("ONNXSMITH_REALMODELS")?);
    dir.is_dir().then_some(dir)
}

#[test]
fn real_models_optimize_and_stay_equal() {
    let Some(dir) = models_dir() else {
        eprintln!("skipped: set ONNXSMITH_REALMODELS to a directory filled by fetch-dev.sh");
        return;
    };
    let files = common::onnx_files(&dir);
    assert!(!files.is_empty(), "no models in {}", dir.display());
    for path in files {
        let original = onnxsmith::load(&path).unwrap().model;
        let (optimized, _) =
            onnxsmith::optimize::run_passes(&original, &PipelineOptions::default()).unwrap();
        // Image models get a 64x64 input (their H and W are symbolic, multiples of 32); the
        // voice model takes 512-sample chunks at its real sample rate.
        let mut binding = Binding::default();
        for spec in input_specs(&original, &binding).unwrap() {
            if spec.shape.len() == 4 && spec.shape[2] == 1 {
                binding
                    .input_shapes
                    .insert(spec.name.clone(), vec![1, 3, 64, 64]);
            }
            if spec.name == "input" && spec.shape.len() == 2 {
                binding.input_shapes.insert(spec.name.clone(), vec![1, 512]);
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let inputs: Vec<HostTensor> = input_specs(&original, &binding)
            .unwrap()
            .iter()
            .map(|s| {
                if s.name == "sr" {
                    HostTensor::from_le_bytes(s.dtype, &s.shape, &16000i64.to_le_bytes()).unwrap()
                } else {
                    HostTensor::random(s, &mut rng).unwrap()
                }
            })
            .collect();
        let opts = CheckOptions {
            binding,
            inputs: InputSource::Sets(vec![inputs]),
            ..Default::default()
        };
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
