//! Samples for the lossy stages: read from a directory (`.npy` for a model of one input, `.npz`
//! with an array per input, or images with a stated preprocessing), checked against the
//! model's inputs, and split between calibration and the check, which must judge the result
//! on samples calibration did not see. Random samples only when asked: their ranges are not
//! those of real inputs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::images::Preprocess;
use crate::ir::{DType, Model};
use crate::runtime::{input_specs, Binding, HostTensor, InputSpec};

/// Where a job's samples come from (`--calib`, `--calib-random`, `--calib-samples`,
/// `--preprocess`).
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// A directory of samples.
    pub dir: Option<PathBuf>,
    /// Random samples, when there is no directory.
    pub random: Option<usize>,
    /// How image samples become inputs; images are refused without it.
    pub preprocess: Option<Preprocess>,
    /// At most this many samples calibrate.
    pub limit: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            dir: None,
            random: None,
            preprocess: None,
            limit: 100,
        }
    }
}

impl SampleOptions {
    /// Whether any samples are named.
    pub fn given(&self) -> bool {
        self.dir.is_some() || self.random.is_some()
    }
}

/// Samples for calibration and, held back from it, for the check.
pub struct Samples {
    pub calibration: Vec<Vec<HostTensor>>,
    pub held_back: Vec<Vec<HostTensor>>,
    /// Whether they are random data, whose ranges are not real.
    pub random: bool,
}

/// Samples held back for the check where the set allows it: fewer let a result pass on the
/// inputs it happened to see and fail on the next ones of the same kind.
pub const MIN_HELD_BACK: usize = 16;

/// How many of `n` samples are held back: at least [`MIN_HELD_BACK`] and a fifth, but never
/// more than half (calibration needs its share too).
pub fn held_back_count(n: usize) -> usize {
    MIN_HELD_BACK.max(n.div_ceil(5)).min(n / 2)
}

/// The samples `opts` names for `model`: from a directory, [`held_back_count`] of them,
/// spread evenly over the files in name order, held back for the check and the rest (at most
/// `opts.limit`) for calibration; random ones, `opts.random` for calibration and a quarter as
/// many others (at least [`MIN_HELD_BACK`]) for the check, their free dims bound to the sizes
/// real inputs have ([`realistic_binding`]).
pub fn read(model: &Model, opts: &SampleOptions) -> Result<Samples> {
    if let Some(dir) = &opts.dir {
        let specs = input_specs(model, &Binding::default())?;
        let all = read_dir(
            dir,
            &specs,
            &declared(model, &specs),
            opts.preprocess.as_ref(),
        )?;
        let n = all.len();
        let held = held_back_count(n);
        let (mut calibration, mut held_back) = (Vec::new(), Vec::new());
        for (i, s) in all.into_iter().enumerate() {
            // Sample i is held back where the running share of held-back samples steps up.
            if (i + 1) * held / n > i * held / n {
                held_back.push(s);
            } else if calibration.len() < opts.limit.max(1) {
                calibration.push(s);
            }
        }
        if held_back.is_empty() {
            held_back = calibration.clone();
        }
        return Ok(Samples {
            calibration,
            held_back,
            random: false,
        });
    }
    let Some(n) = opts.random else {
        bail!("quantization needs calibration data: --calib DIR (or --calib-random N, whose ranges are not real)");
    };
    let specs = input_specs(model, &realistic_binding(model))?;
    let random = |count: usize, seed: u64| -> Result<Vec<Vec<HostTensor>>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                specs
                    .iter()
                    .map(|s| HostTensor::random(s, &mut rng))
                    .collect()
            })
            .collect()
    };
    Ok(Samples {
        calibration: random(n.max(1), 1)?,
        held_back: random(n.div_ceil(4).max(MIN_HELD_BACK), 2)?,
        random: true,
    })
}

/// Free spatial dims of image inputs, when nothing else says, are bound to this size: a
/// classifier checked on 1×1 images proves nothing.
const IMAGE_SIZE: usize = 224;

/// Free sequence dims (the second of a [batch, steps] input) are bound to this length: a text
/// encoder checked on one token proves nothing.
const SEQUENCE_LENGTH: usize = 128;

/// The binding of free dims for inputs made up rather than read: spatial dims at the size the
/// model's `imgsz` metadata names (as detector exports write it), else [`IMAGE_SIZE`];
/// sequence dims at [`SEQUENCE_LENGTH`]; batch dims at 1.
pub fn realistic_binding(model: &Model) -> Binding {
    let hint: Vec<usize> = model
        .metadata("imgsz")
        .map(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| d.parse::<usize>().ok())
                .filter(|&d| d > 0)
                .collect()
        })
        .unwrap_or_default();
    Binding {
        spatial_dims: if hint.is_empty() {
            vec![IMAGE_SIZE]
        } else {
            hint
        },
        sequence_dim: Some(SEQUENCE_LENGTH),
        ..Binding::default()
    }
}

/// The samples of a directory: `.npy` files (one array, for a model of one input) or `.npz`
/// archives (one array per input, by name), in name order.
fn read_dir(
    dir: &Path,
    specs: &[InputSpec],
    declared: &[Vec<Option<usize>>],
    preprocess: Option<&Preprocess>,
) -> Result<Vec<Vec<HostTensor>>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the calibration directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read the calibration directory {}", dir.display()))?;
    files.retain(|p| p.is_file());
    files.sort();
    let mut sets = Vec::new();
    for f in &files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let set = match ext {
            "npy" => {
                if specs.len() != 1 {
                    bail!(
                        "{}: a .npy sample fits a model of one input; this one has {} ({}): use .npz files with an array per input",
                        f.display(),
                        specs.len(),
                        names(specs)
                    );
                }
                vec![crate::npy::read_npy(f)?]
            }
            "npz" => crate::npy::inputs_from_npz(f, specs)?,
            "jpg" | "jpeg" | "png" => {
                let Some(p) = preprocess else {
                    bail!(
                        "{}: image samples need --preprocess (for example 'imagenet') to become inputs",
                        f.display()
                    );
                };
                if specs.len() != 1 {
                    bail!(
                        "{}: an image sample fits a model of one input; this one has {} ({})",
                        f.display(),
                        specs.len(),
                        names(specs)
                    );
                }
                // The crop the model declares: its last two dims, or its middle two for NHWC.
                let d = &declared[0];
                let hw = match (d.len(), p.nhwc) {
                    (4, false) => d[2].zip(d[3]),
                    (4, true) => d[1].zip(d[2]),
                    _ => None,
                };
                let hw = hw.map(|(h, w)| (h as u32, w as u32));
                vec![p.load(f, hw)?]
            }
            _ => continue,
        };
        for ((t, s), d) in set.iter().zip(specs).zip(declared) {
            check_sample(f, t, s, d)?;
        }
        sets.push(set);
    }
    if sets.is_empty() {
        bail!(
            "{}: no .npy, .npz, .png or .jpg calibration samples",
            dir.display()
        );
    }
    Ok(sets)
}

/// Each input's declared dims, `None` where a dim is symbolic or unknown.
fn declared(model: &Model, specs: &[InputSpec]) -> Vec<Vec<Option<usize>>> {
    let g = &model.graph;
    specs
        .iter()
        .map(|s| {
            let dims = g.find(&s.name).and_then(|v| g.shape(v)).unwrap_or_default();
            dims.iter()
                .map(|d| match d {
                    crate::ir::Dim::Known(n) if *n >= 0 => Some(*n as usize),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn names(specs: &[InputSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether sample `t` from `file` can feed input `s`: its element type, and its rank and the
/// dims the model fixes (dynamic dims may differ from sample to sample).
fn check_sample(
    file: &Path,
    t: &HostTensor,
    s: &InputSpec,
    declared: &[Option<usize>],
) -> Result<()> {
    if t.dtype() != Some(s.dtype) {
        bail!(
            "{}: input '{}' needs {} values, the file holds {}",
            file.display(),
            s.name,
            s.dtype,
            t.dtype().unwrap_or(DType::UNDEFINED)
        );
    }
    if t.shape().len() != declared.len()
        || t.shape()
            .iter()
            .zip(declared)
            .any(|(&got, want)| want.is_some_and(|w| w != got))
    {
        let want: Vec<String> = declared
            .iter()
            .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
            .collect();
        bail!(
            "{}: input '{}' is [{}], the file holds {:?}",
            file.display(),
            s.name,
            want.join(", "),
            t.shape()
        );
    }
    Ok(())
}
