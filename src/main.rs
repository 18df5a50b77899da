//! The command line: parse arguments, call the library, print the report.
//! Exit codes: 0 ok, 1 bad input or usage, 2 a failed check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use onnxsmith::check::{CheckOptions, InputSource, LossyLimits, Outcome, Rule, ScaledTolerance};
use onnxsmith::lossy::images::Preprocess;
use onnxsmith::lossy::SampleOptions;
use onnxsmith::passes::prune::{Importance, PruneOptions, Scope};
use onnxsmith::passes::quant::qdq::{Activations, Placement};
use onnxsmith::passes::quant::ranges::Method;
use onnxsmith::passes::quant::QuantOptions;
use onnxsmith::passes::{catalogue, PipelineOptions};
use onnxsmith::report::{human_bytes, Report};
use onnxsmith::runtime::Binding;
use onnxsmith::{Options, Request, SaveOptions};

#[derive(Parser)]
#[command(name = "onnxsmith", version, about = "A compiler for ONNX models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct OptimizeArgs {
    input: Option<PathBuf>,
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// List the pipeline's passes in order and exit.
    #[arg(long)]
    list_passes: bool,
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
    report: Option<PathBuf>,
    /// Store tensors of 1 KiB or more in `<output>.data`.
    #[arg(long)]
    external_data: bool,
    /// No progress display.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    quant: QuantArgs,
    #[command(flatten)]
    prune: PruneArgs,
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
    /// A directory of calibration samples for --quantize and --prune: `.npy` (one-input
    /// models) or `.npz` (an array per input, by name).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibrate on N random samples instead: the ranges are not those of real inputs.
    #[arg(long, requires = "quantize", conflicts_with = "calib")]
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
    /// When the quantized result fails its check, refuse it instead of returning the most
    /// sensitive ops to float until it passes.
    #[arg(long)]
    no_fallback: bool,
    /// No cross-layer equalization of consecutive Convs before calibration.
    #[arg(long)]
    no_cle: bool,
    /// No correction of each bias for the mean error its int8 weights add.
    #[arg(long)]
    no_bias_correction: bool,
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
struct CheckArgs {
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
    fn options(&self) -> Result<CheckOptions> {
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

fn main() -> ExitCode {
    // Past the file size limit, a write should fail with an error we report and clean up
    // after, not kill the process (the default for SIGXFSZ).
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Inspect { model, json } => {
            let (summary, warnings) = onnxsmith::inspect(&model)?;
            warn(&warnings);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.to_table());
            }
            Ok(0)
        }
        Command::Convert {
            input,
            output,
            external_data,
        } => {
            warn(&onnxsmith::convert(&input, &output, external_data)?);
            Ok(0)
        }
        Command::Optimize(args) => optimize(*args),
        Command::Verify {
            a,
            b,
            check,
            allow_unverified,
        } => {
            let (outcome, warnings) = onnxsmith::verify(&a, &b, &check.options()?)?;
            warn(&warnings);
            match outcome {
                Outcome::Checked(report) => {
                    print!("{}", report.to_table());
                    if report.ok() {
                        println!("ok: {} and {} agree", a.display(), b.display());
                        Ok(0)
                    } else {
                        println!("MISMATCH: {} and {} disagree", a.display(), b.display());
                        Ok(2)
                    }
                }
                Outcome::Unverified(reason) => {
                    println!("unverified: {reason}");
                    Ok(if allow_unverified { 0 } else { 2 })
                }
            }
        }
        Command::Zoo { name, output } => {
            let model = onnxsmith::zoo::build(&name)?;
            onnxsmith::save(&model, &output, SaveOptions::default())?;
            eprintln!("wrote {}", output.display());
            Ok(0)
        }
        Command::Demo { dir } => {
            let demo = onnxsmith::demo::prepare(&dir)?;
            println!(
                "built ResNet-50 into {} ({}) in {:.2} s",
                demo.model.display(),
                human_bytes(demo.model_bytes),
                demo.build_time.as_secs_f64()
            );
            println!(
                "round trip {} is byte-identical\n",
                demo.roundtrip.display()
            );
            print!("{}", demo.summary.to_table());
            println!("\noptimizing into {}:", demo.request.output.display());
            let optimized = finish(&onnxsmith::optimize(&demo.request)?)?;
            println!(
                "\nquantizing to int8 into {} (calibrated on random data: a demonstration, not real ranges):",
                demo.quantized.output.display()
            );
            let quantized = finish(&onnxsmith::optimize(&demo.quantized)?)?;
            println!(
                "\npruning 30% of the channels, then quantizing to int8, into {} (compensated and calibrated on the same random data):",
                demo.pruned.output.display()
            );
            let report = onnxsmith::optimize(&demo.pruned)?;
            let pruned = finish(&report)?;
            if report.passed() {
                demo_summary(&demo, &report)?;
            }
            Ok(optimized.max(quantized).max(pruned))
        }
    }
}

/// Size, MACs and tract latency of the original against the pruned int8 model.
fn demo_summary(demo: &onnxsmith::demo::Demo, report: &Report) -> Result<()> {
    let out = &demo.pruned.output;
    let size = onnxsmith::report::file_size(out)?;
    println!(
        "\nsize {} -> {} ({:.1}x smaller)",
        human_bytes(demo.model_bytes),
        human_bytes(size),
        demo.model_bytes as f64 / size as f64
    );
    if let Some(p) = &report.pruning {
        println!(
            "MACs {:.2} G -> {:.2} G ({:.1}x fewer)",
            p.macs_before as f64 / 1e9,
            p.macs_after as f64 / 1e9,
            p.macs_before as f64 / p.macs_after.max(1) as f64
        );
    }
    let (a, b) = (
        onnxsmith::demo::tract_latency(&demo.request.output, 5)?,
        onnxsmith::demo::tract_latency(out, 5)?,
    );
    println!(
        "tract latency, batch 1: fp32 {:.1} ms, pruned int8 {:.1} ms ({:.2}x; tract runs Q/DQ in float: int8 kernels are measured in ONNX Runtime and OpenVINO by bench/prune.py)",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}

fn optimize(args: OptimizeArgs) -> Result<u8> {
    if args.list_passes {
        print!("{}", list_passes());
        return Ok(0);
    }
    let (Some(input), Some(output)) = (args.input, args.output) else {
        bail!("optimize needs an input model and -o OUTPUT (or --list-passes)");
    };
    if args.quant.calib.is_some() && args.quant.quantize.is_none() && args.prune.prune.is_none() {
        bail!("--calib is for --quantize and --prune: give one of them");
    }
    let request = Request {
        input,
        output,
        report: args.report,
        external_data: args.external_data,
        options: Options {
            pipeline: PipelineOptions {
                only: args.passes,
                disable: args.disable,
                stop_after: args.stop_after,
                verify_each: args.verify_each,
                explain: args.explain,
                fold_limit: args.fold_limit,
            },
            check: (!args.no_check).then(|| args.check.options()).transpose()?,
            one_at_a_time: args.check_one_at_a_time,
            bisect: args.bisect,
            quiet: args.quiet,
            samples: args.quant.samples()?,
            prune: args.prune.options(&args.quant)?,
            quantize: args.quant.options()?,
            exclude: args.quant.exclude.clone(),
        },
    };
    finish(&onnxsmith::optimize(&request)?)
}

/// Every stage of the pipeline with its reason, its preparation and its passes, numbered in
/// the order they run.
fn list_passes() -> String {
    let mut s = String::new();
    let mut i = 0;
    for stage in catalogue(PipelineOptions::default().fold_limit) {
        s += &format!("{}: {}\n", stage.name, stage.reason);
        if let Some(p) = &stage.prepare {
            s += &format!("     {:<26} {} (prepares the stage)\n", p.id(), p.about());
        }
        for (pass, kind) in (stage.once.iter().map(|p| (p, "")))
            .chain(stage.fixed_point.iter().map(|p| (p, " [cleanup]")))
        {
            i += 1;
            s += &format!("{i:>3}. {:<26} {}{kind}\n", pass.id(), pass.about());
        }
    }
    s
}

/// Prints a job's report; exit code 2 when its check failed.
fn finish(report: &Report) -> Result<u8> {
    for note in &report.notes {
        eprintln!("{note}");
    }
    print!("{}", report.to_text());
    Ok(if report.passed() { 0 } else { 2 })
}
