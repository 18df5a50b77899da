//! The end-to-end demo's files: the built-in ResNet-50, written, read back and written again
//! to prove the round trip lossless, then optimized, quantized, and pruned and quantized by
//! the ordinary job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lossy::SampleOptions;
use crate::optimize::{Options, Request};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::passes::prune::PruneOptions;
use crate::passes::quant::QuantOptions;
use crate::report::{file_size, Summary};
use crate::runtime::{input_specs, Binding, HostTensor, Runner};
use crate::SaveOptions;

/// Random samples the demo's int8 model is calibrated on.
const RANDOM_SAMPLES: usize = 32;

pub struct Demo {
    pub model: PathBuf,
    pub model_bytes: u64,
    pub build_time: Duration,
    /// The model as read back and written again: byte-identical to `model`.
    pub roundtrip: PathBuf,
    /// What the model read back holds.
    pub summary: Summary,
    /// The job that optimizes it, reporting to `report.json` beside it.
    pub request: Request,
    /// The job that quantizes it to int8, calibrated on random data (there are no images to
    /// calibrate on here): its ranges are not real, and the report says so.
    pub quantized: Request,
    /// The job that prunes 30% of its channels, compensates on the same random samples and
    /// quantizes the pruned model to int8.
    pub pruned: Request,
}

/// Builds ResNet-50 into `dir` and proves its round trip byte-identical.
pub fn prepare(dir: &Path) -> Result<Demo> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let model = dir.join("resnet50.onnx");
    let roundtrip = dir.join("resnet50.roundtrip.onnx");
    let t = Instant::now();
    crate::files::save(&crate::zoo::resnet50()?, &model, SaveOptions::default())?;
    let build_time = t.elapsed();
    let loaded = crate::files::load(&model)?;
    crate::files::save(&loaded.model, &roundtrip, SaveOptions::default())?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    if read(&model)? != read(&roundtrip)? {
        bail!("the round trip changed the file: lift and lower are not lossless");
    }
    Ok(Demo {
        model_bytes: file_size(&model)?,
        build_time,
        roundtrip,
        summary: Summary::of(&loaded.model),
        request: Request {
            input: model.clone(),
            output: dir.join("resnet50.opt.onnx"),
            report: Some(dir.join("report.json")),
            external_data: false,
            options: Options::default(),
        },
        quantized: Request {
            input: model.clone(),
            output: dir.join("resnet50.int8.onnx"),
            report: Some(dir.join("report.int8.json")),
            external_data: false,
            options: Options {
                samples: random_samples(),
                quantize: Some(QuantOptions::default()),
                ..Options::default()
            },
        },
        pruned: Request {
            input: model.clone(),
            output: dir.join("resnet50.pruned-int8.onnx"),
            report: Some(dir.join("report.pruned-int8.json")),
            external_data: false,
            options: Options {
                samples: random_samples(),
                prune: Some(PruneOptions {
                    ratio: 0.3,
                    ..PruneOptions::default()
                }),
                quantize: Some(QuantOptions::default()),
                ..Options::default()
            },
        },
        model,
    })
}

/// The demo's calibration: random data, a demonstration whose ranges are not real.
fn random_samples() -> SampleOptions {
    SampleOptions {
        random: Some(RANDOM_SAMPLES),
        ..SampleOptions::default()
    }
}

/// The median wall time of `runs` runs of the model at `path` in tract, batch 1, on seeded
/// inputs, after one warm-up run.
pub fn tract_latency(path: &Path, runs: usize) -> Result<Duration> {
    let model = crate::files::load(path)?.model;
    let binding = Binding::default();
    let specs = input_specs(&model, &binding)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let inputs = specs
        .iter()
        .map(|s| HostTensor::random(s, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    let runner = Runner::new(&model, &binding, &[])?;
    runner.run(&inputs)?;
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            runner.run(&inputs).map(|_| t.elapsed())
        })
        .collect::<Result<_>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}
