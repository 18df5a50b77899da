//! The command line: parse arguments, call the library, print the report.
//! Exit codes: 0 ok, 1 bad input or usage, 2 a failed check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use onnxsmith::report::{human_bytes, Summary};
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
    /// Write a built-in model.
    Zoo {
        /// One of: resnet50.
        name: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Build the built-in ResNet-50, round-trip it and show what it holds.
    Demo {
        /// Where to put the files.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
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
            convert(&input, &output, external_data)?;
            Ok(0)
        }
        Command::Zoo { name, output } => {
            let model = onnxsmith::zoo::build(&name)?;
            onnxsmith::save(&model, &output, SaveOptions::default())?;
            eprintln!("wrote {}", output.display());
            Ok(0)
        }
        Command::Demo { dir } => demo(&dir),
    }
}

fn load(path: &Path) -> Result<onnxsmith::Loaded> {
    let loaded = onnxsmith::load(path)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
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

fn convert(input: &Path, output: &Path, external_data: bool) -> Result<()> {
    let loaded = load(input)?;
    onnxsmith::ensure_not_input(output, input, &loaded.external_files)?;
    let opts = SaveOptions {
        external: if external_data {
            ExternalData::Always
        } else {
            ExternalData::Auto
        },
        ..SaveOptions::default()
    };
    onnxsmith::save(&loaded.model, output, opts)
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len())
}

fn demo(dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let original = dir.join("resnet50.onnx");
    let roundtrip = dir.join("resnet50.roundtrip.onnx");

    let t = Instant::now();
    let model = onnxsmith::zoo::resnet50()?;
    onnxsmith::save(&model, &original, SaveOptions::default())?;
    println!(
        "built ResNet-50 into {} ({}) in {:.2} s",
        original.display(),
        human_bytes(file_size(&original)?),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    convert(&original, &roundtrip, false)?;
    println!(
        "round-tripped it into {} in {:.2} s",
        roundtrip.display(),
        t.elapsed().as_secs_f64()
    );
    let a = std::fs::read(&original)?;
    let b = std::fs::read(&roundtrip)?;
    if a != b {
        bail!("the round trip changed the file: lift and lower are not lossless");
    }
    println!("round trip is byte-identical\n");
    inspect(&roundtrip, false)
}
