//! The command line: parse arguments, call the library, print the report.
//! Exit codes: 0 ok, 1 bad input or usage, 2 a failed check.
//!
//! The binary is one call to [`main`]; the Python package runs the same [`main`] for
//! `python -m onnxsmith`, and turns its keyword arguments into `optimize` flags for
//! [`parse_optimize`], so that both read every option, and its default, through one definition.

mod args;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{CommandFactory, Parser};

use crate::check::Outcome;
use crate::passes::{catalogue, PipelineOptions};
use crate::report::{human_bytes, Report};
use crate::{Options, Request, SaveOptions};
use args::{CheckArgs, Cli, Command, OptimizeArgs};

/// Runs the command line `args` (the program's name first) and returns its exit code. Usage
/// errors print clap's message, other errors `error: ...`, both to stderr.
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Rust's stdout is flushed when a Rust program exits, not when Python does: under
    // `python -m onnxsmith` a last line without a newline would be lost.
    let _ = std::io::stdout().flush();
    code
}

/// An `optimize` command line in the library's terms.
#[derive(Clone, Debug)]
pub struct OptimizeCommand {
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    /// Where to write the report as JSON.
    pub report: Option<PathBuf>,
    /// `--external-data`: tensors of 1 KiB or more go to `<output>.data`.
    pub external_data: bool,
    pub options: Options,
}

const NEEDS_PATHS: &str = "optimize needs an input model and -o OUTPUT (or --list-passes)";

impl OptimizeCommand {
    /// The job on files, which needs both paths.
    pub fn request(self) -> Result<Request> {
        let (Some(input), Some(output)) = (self.input, self.output) else {
            bail!(NEEDS_PATHS);
        };
        Ok(Request {
            input,
            output,
            report: self.report,
            external_data: self.external_data,
            options: self.options,
        })
    }
}

/// Parses the arguments of `onnxsmith optimize` (those after the subcommand's name) as the
/// CLI does, defaults and checks included. A usage error carries the message the CLI prints,
/// without its `error: ` prefix.
pub fn parse_optimize<I, T>(args: I) -> Result<OptimizeCommand>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let line = ["onnxsmith".into(), "optimize".into()]
        .into_iter()
        .chain(args.into_iter().map(Into::into));
    let cli = Cli::try_parse_from(line).map_err(|e| {
        let text = e.render().to_string();
        anyhow!(
            "{}",
            text.strip_prefix("error: ").unwrap_or(&text).trim_end()
        )
    })?;
    let Command::Optimize(args) = cli.command else {
        unreachable!("the line names the optimize subcommand");
    };
    if args.list_passes {
        bail!("--list-passes prints the passes and runs no job: use `onnxsmith optimize --list-passes`");
    }
    args.command()
}

impl OptimizeArgs {
    fn command(self) -> Result<OptimizeCommand> {
        Ok(OptimizeCommand {
            options: self.options()?,
            input: self.input,
            output: self.output,
            report: self.report,
            external_data: self.external_data,
        })
    }
}

/// The long names of `optimize`'s options, each with whether it takes a value (`false` for a
/// switch such as `--no-check`).
pub fn optimize_flags() -> Vec<(String, bool)> {
    let cli = Cli::command();
    let optimize = cli
        .find_subcommand("optimize")
        .expect("the CLI has an optimize subcommand");
    optimize
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_action().takes_values())))
        .collect()
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Inspect { model, json } => {
            let (summary, warnings) = crate::inspect(&model)?;
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
            warn(&crate::convert(&input, &output, external_data)?);
            Ok(0)
        }
        Command::Optimize(args) => optimize(*args),
        Command::Verify {
            a,
            b,
            check,
            allow_unverified,
        } => verify(&a, &b, &check, allow_unverified),
        Command::Zoo { name, output } => {
            let model = crate::zoo::build(&name)?;
            crate::files::save(&model, &output, SaveOptions::default())?;
            eprintln!("wrote {}", output.display());
            Ok(0)
        }
        Command::Demo { dir } => demo(&dir),
    }
}

fn verify(a: &Path, b: &Path, check: &CheckArgs, allow_unverified: bool) -> Result<u8> {
    let (outcome, warnings) = crate::verify(a, b, &check.options()?)?;
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

fn demo(dir: &Path) -> Result<u8> {
    let demo = crate::demo::prepare(dir)?;
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
    let optimized = finish(&crate::optimize(&demo.request)?)?;
    println!(
        "\nquantizing to int8 into {} (calibrated on random data: a demonstration, not real ranges):",
        demo.quantized.output.display()
    );
    let quantized = finish(&crate::optimize(&demo.quantized)?)?;
    println!(
        "\npruning 30% of the channels, then quantizing to int8, into {} (compensated and calibrated on the same random data):",
        demo.pruned.output.display()
    );
    let report = crate::optimize(&demo.pruned)?;
    let pruned = finish(&report)?;
    if report.passed() {
        demo_summary(&demo, &report)?;
    }
    Ok(optimized.max(quantized).max(pruned))
}

/// Size, MACs and tract latency of the original against the pruned int8 model.
fn demo_summary(demo: &crate::demo::Demo, report: &Report) -> Result<()> {
    let out = &demo.pruned.output;
    let size = crate::report::file_size(out)?;
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
        crate::demo::tract_latency(&demo.request.output, 5)?,
        crate::demo::tract_latency(out, 5)?,
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
    // Missing paths are reported before any option's error, as they always were.
    if args.input.is_none() || args.output.is_none() {
        bail!(NEEDS_PATHS);
    }
    finish(&crate::optimize(&args.command()?.request()?)?)
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
