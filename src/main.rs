//! The command line: parse arguments, call the library, print the report.
//! Exit codes: 0 ok, 1 bad input or usage, 2 a failed check.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use onnxsmith::check::{self, CheckOptions, Outcome, Reference, Tolerance};
use onnxsmith::ir::Model;
use onnxsmith::passes::{pipeline, PipelineOptions, PipelineReport};
use onnxsmith::report::{human_bytes, Summary};
use onnxsmith::runtime::{input_specs, Binding, HostTensor};
use onnxsmith::{ExternalData, SaveOptions};

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
    Optimize(OptimizeArgs),
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

#[derive(Args, Clone)]
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
    /// Bytes a folded constant may exceed its inputs by (default 1048576).
    #[arg(long)]
    fold_limit: Option<u64>,
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
}

#[derive(Args, Clone)]
struct CheckArgs {
    /// Bind an input's shape, e.g. `input:1x3x224x224` (repeatable). Other symbolic dims are 1.
    #[arg(long = "input-shape")]
    input_shapes: Vec<String>,
    /// Input files, one `.npy` per model input in order.
    #[arg(long, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// One `.npz` holding an array per model input, by name.
    #[arg(long)]
    inputs_npz: Option<PathBuf>,
    /// Number of seeded input sets when no inputs are given.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = Tolerance::EXACT_REWRITE.rtol)]
    rtol: f64,
    #[arg(long, default_value_t = Tolerance::EXACT_REWRITE.atol)]
    atol: f64,
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

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Convert {
            input,
            output,
            external_data,
        } => {
            let loaded = load(&input)?;
            onnxsmith::ensure_not_input(&output, &input, &loaded.external_files)?;
            onnxsmith::save(&loaded.model, &output, save_options(external_data))?;
            Ok(0)
        }
        Command::Optimize(args) => optimize(&args),
        Command::Verify {
            a,
            b,
            check,
            allow_unverified,
        } => verify(&a, &b, &check, allow_unverified),
        Command::Zoo { name, output } => {
            let model = onnxsmith::zoo::build(&name)?;
            onnxsmith::save(&model, &output, SaveOptions::default())?;
            eprintln!("wrote {}", output.display());
            Ok(0)
        }
        Command::Demo { dir } => demo(&dir),
    }
}

fn save_options(external_data: bool) -> SaveOptions {
    SaveOptions {
        external: if external_data {
            ExternalData::Always
        } else {
            ExternalData::Auto
        },
        ..SaveOptions::default()
    }
}

fn load(path: &Path) -> Result<onnxsmith::Loaded> {
    let loaded = onnxsmith::load(path)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len())
}

fn inspect(path: &Path, json: bool) -> Result<u8> {
    let loaded = load(path)?;
    let mut summary = Summary::of(&loaded.model);
    summary.file_bytes = Some(file_size(path)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.to_table());
    }
    Ok(0)
}

/// A spinner on a terminal for steps that may take a while; silent when piped or quiet.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    fn step(&self, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_message(msg.to_string());
        }
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn check_options(model: &Model, args: &CheckArgs) -> Result<CheckOptions> {
    let mut binding = Binding::default();
    for spec in &args.input_shapes {
        binding.add_spec(spec)?;
    }
    let mut inputs = Vec::new();
    if !args.inputs.is_empty() || args.inputs_npz.is_some() {
        let specs = input_specs(model, &binding)?;
        let mut set: Vec<HostTensor> = Vec::new();
        if let Some(npz) = &args.inputs_npz {
            let arrays = onnxsmith::npy::read_npz(npz)?;
            for s in &specs {
                let t = arrays.iter().find(|(n, _)| n == &s.name).with_context(|| {
                    format!("{} has no array named '{}'", npz.display(), s.name)
                })?;
                set.push(t.1.clone());
            }
        } else {
            if args.inputs.len() != specs.len() {
                bail!(
                    "the model has {} inputs ({}) but {} --inputs files were given",
                    specs.len(),
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    args.inputs.len()
                );
            }
            for p in &args.inputs {
                set.push(onnxsmith::npy::read_npy(p)?);
            }
        }
        for (s, t) in specs.iter().zip(&set) {
            binding
                .input_shapes
                .insert(s.name.clone(), t.shape().to_vec());
        }
        inputs.push(set);
    }
    Ok(CheckOptions {
        binding,
        tolerance: Tolerance {
            rtol: args.rtol,
            atol: args.atol,
        },
        samples: args.samples,
        seed: args.seed,
        inputs,
    })
}

fn verify(a: &Path, b: &Path, args: &CheckArgs, allow_unverified: bool) -> Result<u8> {
    let ma = load(a)?.model;
    let mb = load(b)?.model;
    let opts = check_options(&ma, args)?;
    match onnxsmith::check::compare_models(&ma, &mb, &opts)? {
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

fn optimize(args: &OptimizeArgs) -> Result<u8> {
    if args.list_passes {
        for (i, p) in pipeline().iter().enumerate() {
            println!("{:>2}. {:<22} {}", i + 1, p.id(), p.about());
        }
        return Ok(0);
    }
    let (Some(input), Some(output)) = (&args.input, &args.output) else {
        bail!("optimize needs an input model and -o OUTPUT (or --list-passes)");
    };
    let progress = Progress::new(args.quiet);
    let total = Instant::now();
    progress.step("loading");
    let t = Instant::now();
    let loaded = load(input)?;
    let load_time = t.elapsed();
    onnxsmith::ensure_not_input(output, input, &loaded.external_files)?;
    let original = loaded.model;
    let opts = PipelineOptions {
        only: args.passes.clone(),
        disable: args.disable.clone(),
        stop_after: args.stop_after,
        verify_each: args.verify_each,
        explain: args.explain,
        fold_limit: args.fold_limit,
    };
    progress.step("running passes");
    let copts = check_options(&original, &args.check)?;
    let check = !args.no_check;
    let inputs = if check {
        check::inputs_for(&original, &copts)
    } else {
        Ok(Vec::new())
    };
    let mut before = Summary::of(&original);
    before.file_bytes = Some(file_size(input)?);
    let one_at_a_time =
        check && (args.check_one_at_a_time || !check::both_at_once_fit(before.param_bytes()));
    if one_at_a_time && !args.check_one_at_a_time {
        eprintln!("note: checking the original and the result one after the other, to fit in the memory available");
    }
    // Checking is the largest cost of `optimize`, so everything that can overlap does: the
    // original runs in tract on one thread while the passes run on this one; then the result
    // runs in tract here while another thread writes it to a temporary file, put in place only
    // once the check passes.
    let (optimized, pass_time, check_time, original_run, result_run, staged) =
        std::thread::scope(|s| {
            // One at a time, the original's tract plan is gone before the result's is built.
            let original_done =
                one_at_a_time.then(|| check::run_on(&original, &copts.binding, &inputs));
            let original_run = (check && !one_at_a_time)
                .then(|| s.spawn(|| check::run_on(&original, &copts.binding, &inputs)));
            let t = Instant::now();
            let optimized = onnxsmith::optimize::optimize(&original, &opts);
            let pass_time = t.elapsed();
            let (result_run, staged) = match &optimized {
                Ok((result, _)) => std::thread::scope(|s| {
                    let staged = s.spawn(|| {
                        let t = Instant::now();
                        let staged =
                            onnxsmith::stage(result, output, save_options(args.external_data));
                        (staged, t.elapsed())
                    });
                    if check {
                        progress.step("checking the result against the original in tract");
                    }
                    let result_run = check.then(|| check::run_on(result, &copts.binding, &inputs));
                    (
                        result_run,
                        Some(staged.join().expect("the writing thread panicked")),
                    )
                }),
                Err(_) => (None, None),
            };
            let original_run = original_done
                .or_else(|| original_run.map(|h| h.join().expect("the reference thread panicked")));
            let check_time = if check {
                t.elapsed() - pass_time
            } else {
                Duration::ZERO
            };
            (
                optimized,
                pass_time,
                check_time,
                original_run,
                result_run,
                staged,
            )
        });
    let (result, pipeline_report) = optimized?;
    let (staged, save_time) = staged.expect("a result is staged once the passes succeed");
    let staged = staged?;

    let mut check_json = json!({"status": "skipped"});
    let mut verdict = None;
    if let (Some(original_run), Some(result_run)) = (original_run, result_run) {
        let reference = Reference::from_run(&copts, inputs.unwrap_or_default(), original_run)?;
        let outcome = reference.judge(result_run)?;
        match &outcome {
            Outcome::Checked(report) if !report.ok() => {
                progress.done();
                print!("{}", report.to_table());
                println!("MISMATCH: the optimized model disagrees with the original; nothing was written");
                if args.bisect {
                    match onnxsmith::optimize::bisect(&original, &opts, &pipeline_report.steps, &reference)? {
                        Some((step, pass)) => println!(
                            "bisect: step {step} (pass '{pass}') is the first whose output disagrees; rerun with --stop-after {} to keep the good part",
                            step - 1
                        ),
                        None => println!("bisect: no single step reproduces the mismatch"),
                    }
                } else {
                    println!("rerun with --bisect to find the pass responsible");
                }
                if let Some(path) = &args.report {
                    let j = json!({"check": {"status": "mismatch", "report": report}, "pipeline": pipeline_report});
                    write_json(path, &j)?;
                }
                return Ok(2);
            }
            Outcome::Checked(report) => {
                check_json = json!({"status": "verified", "report": report});
            }
            Outcome::Unverified(reason) => {
                check_json = json!({"status": "unverified", "reason": reason});
            }
        }
        verdict = Some(outcome);
    }

    staged.commit()?;
    progress.done();

    let mut after = Summary::of(&result);
    after.file_bytes = Some(file_size(output)?);
    print!("{}", comparison_table(&before, &after));
    print!("{}", pass_table(&pipeline_report));
    if args.explain {
        println!("why patterns did not fire:");
        if pipeline_report.explain.is_empty() {
            println!("  (every pattern that matched fired)");
        }
        for e in &pipeline_report.explain {
            println!("  {e}");
        }
    }
    println!(
        "time: load {:.3} s, passes {:.3} s, check {:.3} s, save {:.3} s, total {:.3} s",
        load_time.as_secs_f64(),
        pass_time.as_secs_f64(),
        check_time.as_secs_f64(),
        save_time.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
    match &verdict {
        Some(Outcome::Checked(report)) => {
            print!("{}", report.to_table());
            println!("verified: outputs match the original in tract");
        }
        Some(Outcome::Unverified(reason)) => {
            println!("UNVERIFIED: {reason}");
            println!("the model was written, but nothing proves it computes what the original did");
        }
        None => println!("not checked (--no-check)"),
    }
    println!("wrote {}", output.display());
    if let Some(path) = &args.report {
        let j = json!({
            "input": input, "output": output,
            "before": before, "after": after,
            "pipeline": pipeline_report,
            "check": check_json,
            "seconds": {"load": load_time.as_secs_f64(), "passes": pass_time.as_secs_f64(),
                        "check": check_time.as_secs_f64(), "save": save_time.as_secs_f64()},
        });
        write_json(path, &j)?;
    }
    Ok(0)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    onnxsmith::onnx::write_atomic(path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())?;
        Ok(())
    })
}

fn comparison_table(before: &Summary, after: &Summary) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    writeln!(
        s,
        "{:<28} {:>12} {:>12} {:>8}",
        "", "before", "after", "change"
    )
    .unwrap();
    let row = |s: &mut String, name: &str, a: u64, b: u64| {
        let change = if a == 0 {
            "-".to_string()
        } else {
            format!("{:+.1}%", (b as f64 - a as f64) / a as f64 * 100.0)
        };
        writeln!(s, "{name:<28} {a:>12} {b:>12} {change:>8}").unwrap();
    };
    row(&mut s, "nodes", before.nodes as u64, after.nodes as u64);
    let mut ops: Vec<&String> = before.ops.keys().chain(after.ops.keys()).collect();
    ops.sort();
    ops.dedup();
    for op in ops {
        let a = before.ops.get(op).copied().unwrap_or(0) as u64;
        let b = after.ops.get(op).copied().unwrap_or(0) as u64;
        row(&mut s, &format!("  {op}"), a, b);
    }
    row(
        &mut s,
        "parameters",
        before.param_count(),
        after.param_count(),
    );
    if let (Some(a), Some(b)) = (before.file_bytes, after.file_bytes) {
        writeln!(
            s,
            "{:<28} {:>12} {:>12}",
            "file size",
            human_bytes(a),
            human_bytes(b)
        )
        .unwrap();
    }
    s
}

fn pass_table(r: &PipelineReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    writeln!(
        s,
        "{:<24} {:>5} {:>9} {:>10}",
        "pass", "runs", "rewrites", "time (ms)"
    )
    .unwrap();
    for p in &r.passes {
        writeln!(
            s,
            "{:<24} {:>5} {:>9} {:>10.2}",
            p.id,
            p.runs,
            p.rewrites,
            p.time.as_secs_f64() * 1e3
        )
        .unwrap();
    }
    let rounds: Vec<String> = r
        .rounds
        .iter()
        .map(|(stage, n)| format!("{stage} {n} round(s)"))
        .collect();
    writeln!(
        s,
        "{}, {} changing step(s)",
        rounds.join(", "),
        r.steps.len()
    )
    .unwrap();
    for note in &r.notes {
        const SHOWN: usize = 8;
        writeln!(s, "{}", note.heading).unwrap();
        for k in note.lines.iter().take(SHOWN) {
            writeln!(s, "  {k}").unwrap();
        }
        if note.lines.len() > SHOWN {
            writeln!(
                s,
                "  ... and {} more (all in --report)",
                note.lines.len() - SHOWN
            )
            .unwrap();
        }
    }
    s
}

fn demo(dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let original = dir.join("resnet50.onnx");
    let roundtrip = dir.join("resnet50.roundtrip.onnx");
    let optimized = dir.join("resnet50.opt.onnx");

    let t = Instant::now();
    let model = onnxsmith::zoo::resnet50()?;
    onnxsmith::save(&model, &original, SaveOptions::default())?;
    println!(
        "built ResNet-50 into {} ({}) in {:.2} s",
        original.display(),
        human_bytes(file_size(&original)?),
        t.elapsed().as_secs_f64()
    );
    let loaded = load(&original)?;
    onnxsmith::save(&loaded.model, &roundtrip, SaveOptions::default())?;
    if std::fs::read(&original)? != std::fs::read(&roundtrip)? {
        bail!("the round trip changed the file: lift and lower are not lossless");
    }
    println!("round trip {} is byte-identical\n", roundtrip.display());
    print!("{}", Summary::of(&loaded.model).to_table());
    println!("\noptimizing into {}:", optimized.display());
    let args = OptimizeArgs {
        input: Some(original),
        output: Some(optimized),
        list_passes: false,
        passes: None,
        disable: Vec::new(),
        stop_after: None,
        explain: false,
        fold_limit: None,
        verify_each: false,
        no_check: false,
        check_one_at_a_time: false,
        bisect: false,
        report: Some(dir.join("report.json")),
        external_data: false,
        quiet: false,
        check: CheckArgs {
            input_shapes: Vec::new(),
            inputs: Vec::new(),
            inputs_npz: None,
            samples: 1,
            seed: 0,
            rtol: Tolerance::EXACT_REWRITE.rtol,
            atol: Tolerance::EXACT_REWRITE.atol,
        },
    };
    optimize(&args)
}
