//! The command line's definition (clap) and its translation into the library's options.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::check::{CheckOptions, InputSource, LossyLimits, Rule, ScaledTolerance};
use crate::lossy::images::Preprocess;
use crate::lossy::SampleOptions;
use crate::passes::precision::{Io, Kind, PrecisionOptions};
use crate::passes::prune::{Importance, PruneOptions, Scope};
use crate::passes::quant::qdq::{Activations, Placement};
use crate::passes::quant::ranges::Method;
use crate::passes::quant::QuantOptions;
use crate::passes::PipelineOptions;
use crate::runtime::Binding;
use crate::Options;

#[derive(Parser)]
#[command(name = "onnxsmith", version, about = "A compiler for ONNX models")]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Show a model's interface, opsets, operators, parameters and subgraphs.
    Inspect {
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read and write a model without changing it (the proof that nothing is lost).
    Convert {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Store tensors of 1 KiB or more in `<output>.data` (always done past 2 GiB).
        #[arg(long)]
        external_data: bool,
    },
    /// Rewrite a model with the pass pipeline, check it against the original, write it.
    Optimize(Box<OptimizeArgs>),
    /// Run two models on the same inputs and compare their outputs.
    Verify {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        check: CheckArgs,
        /// Exit 0 even when tract cannot run a model (the verdict still says "unverified").
        #[arg(long)]
        allow_unverified: bool,
    },
    /// Write a built-in model.
    Zoo {
        /// One of: resnet50.
        name: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Build the built-in ResNet-50, optimize and check it, and show the report.
    Demo {
        /// Where to put the files.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub(super) struct OptimizeArgs {
    pub(super) input: Option<PathBuf>,
    #[arg(short, long)]
    pub(super) output: Option<PathBuf>,
    /// List the pipeline's passes in order and exit.
    #[arg(long)]
    pub(super) list_passes: bool,
    /// Run only these passes (comma-separated ids), in pipeline order.
    #[arg(long, value_delimiter = ',')]
    passes: Option<Vec<String>>,
    /// Skip these passes.
    #[arg(long, value_delimiter = ',')]
    disable: Vec<String>,
    /// Stop after N pass runs that changed the graph.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Say why each pattern did not fire.
    #[arg(long)]
    explain: bool,
    /// Bytes a folded constant may exceed its inputs by.
    #[arg(long, default_value_t = PipelineOptions::default().fold_limit)]
    fold_limit: u64,
    /// Check the IR's invariants after every pass.
    #[arg(long)]
    verify_each: bool,
    /// Do not compare the result with the original.
    #[arg(long)]
    no_check: bool,
    /// Run the original and the result in tract one after the other: about half the memory
    /// and a slower check. Chosen by itself when both at once would not fit in the memory
    /// available.
    #[arg(long)]
    check_one_at_a_time: bool,
    /// On a mismatch, name the first pass run whose output disagrees.
    #[arg(long)]
    bisect: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub(super) report: Option<PathBuf>,
    /// Store tensors of 1 KiB or more in `<output>.data`.
    #[arg(long)]
    pub(super) external_data: bool,
    /// No progress display.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    quant: QuantArgs,
    #[command(flatten)]
    prune: PruneArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
}

impl OptimizeArgs {
    /// The job's options. Paths are the caller's business: the CLI needs both, an in-memory
    /// job neither.
    pub(super) fn options(&self) -> Result<Options> {
        let lossy = self.quant.quantize.is_some() || self.precision.precision.is_some();
        if self.quant.calib.is_some() && !lossy && self.prune.prune.is_none() {
            bail!("--calib is for --quantize, --precision and --prune: give one of them");
        }
        if self.quant.calib_random.is_some() && !lossy {
            bail!("--calib-random is for --quantize and --precision: give one of them");
        }
        Ok(Options {
            pipeline: PipelineOptions {
                only: self.passes.clone(),
                disable: self.disable.clone(),
                stop_after: self.stop_after,
                verify_each: self.verify_each,
                explain: self.explain,
                fold_limit: self.fold_limit,
            },
            check: (!self.no_check).then(|| self.check.options()).transpose()?,
            one_at_a_time: self.check_one_at_a_time,
            bisect: self.bisect,
            quiet: self.quiet,
            samples: self.quant.samples()?,
            prune: self.prune.options(&self.quant)?,
            quantize: self.quant.options()?,
            precision: self.precision.options(&self.quant)?,
            exclude: self.quant.exclude.clone(),
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PruneImportance {
    /// Mean |w| of the weights making a channel.
    L1,
    /// |gamma| of the BatchNormalization after the Conv making it.
    BnScale,
    /// Mean |x| on the --calib samples.
    Activation,
}

#[derive(Clone, Copy, ValueEnum)]
enum PruneScope {
    /// Every group gives up the same share.
    Uniform,
    /// The least important channels of the whole model go.
    Global,
}

#[derive(Args)]
struct PruneArgs {
    /// Remove this share (0 < RATIO < 1) of the channels of each dependency group, checked
    /// against the original by the lossy rule; with --calib, the removed channels' contribution
    /// is compensated.
    #[arg(long)]
    prune: Option<f64>,
    /// How channels are ranked.
    #[arg(long, value_enum, default_value = "l1", requires = "prune")]
    prune_importance: PruneImportance,
    /// How the ratio is shared among groups.
    #[arg(long, value_enum, default_value = "uniform", requires = "prune")]
    prune_scope: PruneScope,
    /// Kept channel counts are multiples of N, so kernels stay fast.
    #[arg(long, default_value_t = PruneOptions::default().round_to, requires = "prune")]
    prune_round_to: usize,
    /// Keep every channel made by this node name or op type (repeatable).
    #[arg(long, requires = "prune")]
    prune_exclude: Vec<String>,
    /// Do not fold the removed channels' contribution into the next layers.
    #[arg(long, requires = "prune")]
    no_compensate: bool,
}

impl PruneArgs {
    fn options(&self, quant: &QuantArgs) -> Result<Option<PruneOptions>> {
        let Some(ratio) = self.prune else {
            return Ok(None);
        };
        if !(ratio > 0.0 && ratio < 1.0) {
            bail!("--prune {ratio}: the ratio must lie strictly between 0 and 1");
        }
        if self.prune_round_to == 0 {
            bail!("--prune-round-to must be at least 1");
        }
        let importance = match self.prune_importance {
            PruneImportance::L1 => Importance::L1,
            PruneImportance::BnScale => Importance::BnScale,
            PruneImportance::Activation => Importance::Activation,
        };
        if importance == Importance::Activation && quant.calib.is_none() {
            bail!("--prune-importance activation needs calibration samples: give --calib DIR");
        }
        Ok(Some(PruneOptions {
            ratio,
            importance,
            scope: match self.prune_scope {
                PruneScope::Uniform => Scope::Uniform,
                PruneScope::Global => Scope::Global,
            },
            round_to: self.prune_round_to,
            exclude: self.prune_exclude.clone(),
            compensate: !self.no_compensate,
        }))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    Fp16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoTypes {
    /// As the model declares them: a drop-in replacement.
    Keep,
    /// In the 16-bit type: callers feed and read 16-bit tensors, no Cast at the interface.
    Low,
}

#[derive(Args)]
struct PrecisionArgs {
    /// Store weights and compute in 16 bits, last (after simplifying, pruning and quantizing:
    /// what int8 leaves float), checked against the float model by the lossy rule. Ops stay in
    /// f32 by rule (shape arithmetic, long sums, squares, random ops), by range with --calib,
    /// and where the check fails (unless --no-fallback).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// The element type of the graph's inputs and outputs under --precision.
    #[arg(long, value_enum, default_value = "keep", requires = "precision")]
    io_types: IoTypes,
}

impl PrecisionArgs {
    fn options(&self, quant: &QuantArgs) -> Result<Option<PrecisionOptions>> {
        let Some(precision) = self.precision else {
            return Ok(None);
        };
        // Measured on ONNX Runtime 1.32: its CPU kernels have no bf16 form of Conv, MatMul,
        // Gemm, Add, Mul, Relu or Sigmoid (only data movement), so a bf16 file does not load.
        if matches!((precision, quant.target), (Precision::Bf16, Target::Ort)) {
            bail!("--precision bf16 is for --target openvino or tensorrt: ONNX Runtime's CPU kernels compute nothing in bf16 (Conv, MatMul, Add, Relu... have no bf16 kernel), so the file would not load there; for ONNX Runtime use --precision fp16");
        }
        Ok(Some(PrecisionOptions {
            kind: match precision {
                Precision::Fp16 => Kind::F16,
                Precision::Bf16 => Kind::Bf16,
            },
            io: match self.io_types {
                IoTypes::Keep => Io::Keep,
                IoTypes::Low => Io::Low,
            },
            fallback: !quant.no_fallback,
            strongly_typed: matches!(quant.target, Target::Tensorrt),
        }))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Quantize {
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum CalibMethod {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// Q/DQ around every quantized op, the pattern ONNX Runtime fuses into QLinear kernels.
    Ort,
    /// Q/DQ on op inputs and on both branches of residual Adds, as OpenVINO fuses them.
    Openvino,
    /// Q/DQ on op inputs only, int8 with zero point 0 everywhere.
    Tensorrt,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActivationType {
    /// Symmetric, zero point 0 (what TensorRT requires).
    Int8,
    /// Asymmetric: ONNX Runtime's fast path on CPUs without VNNI.
    Uint8,
}

#[derive(Args)]
struct QuantArgs {
    /// Quantize after simplifying, checked against the float model by the lossy rule.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// A directory of calibration samples for --quantize, --precision and --prune: `.npy`
    /// (one-input models) or `.npz` (an array per input, by name).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibrate on N random samples instead: the ranges are not those of real inputs.
    #[arg(long, conflicts_with = "calib")]
    calib_random: Option<usize>,
    /// How an activation's range is chosen.
    #[arg(long, value_enum, default_value = "percentile")]
    calib_method: CalibMethod,
    /// The percentile of magnitudes kept, for `--calib-method percentile`.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// At most this many samples calibrate.
    #[arg(long, default_value_t = SampleOptions::default().limit)]
    calib_samples: usize,
    /// The element type of quantized activations.
    #[arg(long, value_enum, default_value = "int8")]
    activations: ActivationType,
    /// The runtime the quantized model is for, which decides where Q/DQ go.
    #[arg(long, value_enum, default_value = "ort")]
    target: Target,
    /// Leave this node name or op type in float (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// When the quantized (or 16-bit) result fails its check, refuse it instead of returning
    /// the most sensitive ops to float until it passes.
    #[arg(long)]
    no_fallback: bool,
    /// No cross-layer equalization of consecutive Convs before calibration.
    #[arg(long)]
    no_cle: bool,
    /// No correction of each bias for the mean error its int8 weights add.
    #[arg(long)]
    no_bias_correction: bool,
    /// Do not move activation outliers into the weights of the MatMuls reading them
    /// (SmoothQuant) before calibration.
    #[arg(long)]
    no_smooth: bool,
    /// How calibration images (.png, .jpg) become inputs: `imagenet` (shorter side 256, center
    /// crop to the model's size or 224, /255, ImageNet mean and std, RGB, NCHW) or `none`,
    /// then `,key=value` changes: resize=N, crop=N|HxW, scale=S, mean=a:b:c, std=a:b:c,
    /// order=rgb|bgr, layout=nchw|nhwc.
    #[arg(long, requires = "calib")]
    preprocess: Option<String>,
}

impl QuantArgs {
    fn options(&self) -> Result<Option<QuantOptions>> {
        if self.quantize.is_none() {
            return Ok(None);
        }
        let activations = match self.activations {
            ActivationType::Int8 => Activations::Int8,
            ActivationType::Uint8 => Activations::Uint8,
        };
        if matches!(self.target, Target::Tensorrt) && activations == Activations::Uint8 {
            bail!("--target tensorrt needs int8 activations with zero point 0: drop --activations uint8");
        }
        Ok(Some(QuantOptions {
            activations,
            placement: match self.target {
                Target::Ort => Placement::AroundOps,
                Target::Openvino => Placement::Joins,
                Target::Tensorrt => Placement::Inputs,
            },
            method: match self.calib_method {
                CalibMethod::Minmax => Method::MinMax,
                CalibMethod::Percentile => Method::Percentile(self.percentile),
                CalibMethod::Entropy => Method::Entropy,
            },
            fallback: !self.no_fallback,
            equalize: !self.no_cle,
            bias_correction: !self.no_bias_correction,
            smooth: !self.no_smooth,
        }))
    }

    /// Where the samples of the lossy stages come from.
    fn samples(&self) -> Result<SampleOptions> {
        Ok(SampleOptions {
            dir: self.calib.clone(),
            random: self.calib_random,
            limit: self.calib_samples,
            preprocess: self
                .preprocess
                .as_deref()
                .map(Preprocess::parse)
                .transpose()?,
        })
    }
}

#[derive(Args)]
pub(super) struct CheckArgs {
    /// Bind an input's shape, e.g. `input:1x3x224x224` (repeatable). Other symbolic dims are 1.
    #[arg(long = "input-shape")]
    input_shapes: Vec<String>,
    /// Input files, one `.npy` per model input in order.
    #[arg(long, num_args = 1.., conflicts_with = "inputs_npz")]
    inputs: Vec<PathBuf>,
    /// One `.npz` holding an array per model input, by name.
    #[arg(long)]
    inputs_npz: Option<PathBuf>,
    /// Number of seeded input sets when no inputs are given.
    #[arg(long, default_value_t = CheckOptions::default().samples)]
    samples: usize,
    #[arg(long, default_value_t = CheckOptions::default().seed)]
    seed: u64,
    /// Exact rule: relative tolerance.
    #[arg(long, default_value_t = ScaledTolerance::default().rtol)]
    rtol: f64,
    /// Exact rule: absolute tolerance, times the output's largest magnitude.
    #[arg(long, default_value_t = ScaledTolerance::default().atol)]
    atol: f64,
    #[arg(long, conflicts_with_all = ["rtol", "atol"], help = lossy_help("least cosine similarity per output", LossyLimits::default().min_cosine))]
    min_cosine: Option<f64>,
    #[arg(long, conflicts_with_all = ["rtol", "atol"], help = lossy_help("least share of rows whose argmax agrees", LossyLimits::default().min_top1))]
    min_top1: Option<f64>,
    /// Judge by the lossy rule: largest |a - b| per output, as a share of its largest
    /// magnitude [default: not limited].
    #[arg(long, conflicts_with_all = ["rtol", "atol"])]
    max_error: Option<f64>,
}

fn lossy_help(what: &str, default: f64) -> String {
    format!("Judge by the lossy rule: {what} [default: {default}]")
}

impl CheckArgs {
    pub(super) fn options(&self) -> Result<CheckOptions> {
        let mut binding = Binding::default();
        for spec in &self.input_shapes {
            binding.add_spec(spec)?;
        }
        let rule =
            if self.min_cosine.is_some() || self.min_top1.is_some() || self.max_error.is_some() {
                let d = LossyLimits::default();
                Rule::Lossy(LossyLimits {
                    min_cosine: self.min_cosine.unwrap_or(d.min_cosine),
                    min_top1: self.min_top1.unwrap_or(d.min_top1),
                    max_error: self.max_error.or(d.max_error),
                })
            } else {
                Rule::Exact(ScaledTolerance {
                    rtol: self.rtol,
                    atol: self.atol,
                })
            };
        let inputs = match (&self.inputs_npz, self.inputs.is_empty()) {
            (Some(npz), _) => InputSource::Npz(npz.clone()),
            (None, false) => InputSource::Npy(self.inputs.clone()),
            (None, true) => InputSource::Seeded,
        };
        Ok(CheckOptions {
            binding,
            rule,
            samples: self.samples,
            seed: self.seed,
            inputs,
        })
    }
}
