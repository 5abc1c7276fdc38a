//! The `convkit` command-line tool: a thin layer over the `convkit` and `convkit-viz` crates.
//!
//! Each subcommand lives in its own module exposing `Args` (clap) and `run(args) -> CliResult`.

mod animate;
mod bench;
mod conv;
mod engine;
mod error;
mod explain;
mod filter;
mod io;
mod layer;
mod tour;

use clap::{Parser, Subcommand};

/// The system allocator, counting live and peak heap bytes so that `convkit bench` can report
/// each plan's peak memory (two relaxed atomics per allocation).
#[global_allocator]
static ALLOC: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// convkit: every convolution of deep learning, exact PyTorch semantics, fast on CPU.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time the fast engine on a suite of layers (ms, GFLOP/s, % of FMA peak).
    Bench(bench::Args),
    /// Run nn.Conv2d (forward and/or backward) on .npy files.
    Conv2d(conv::Args),
    /// Run nn.ConvTranspose2d (forward and/or backward) on .npy files.
    ConvTranspose2d(conv::Args),
    /// Run nn.Conv1d (forward and/or backward) on .npy files.
    Conv1d(conv::Args),
    /// Run nn.ConvTranspose1d (forward and/or backward) on .npy files.
    ConvTranspose1d(conv::Args),
    /// Explain a layer or a stack: shapes, parameters, MACs, receptive field, equivalences.
    Explain(explain::Args),
    /// Run every kind of convolution in the seed on built-in data and report.
    Tour(tour::Args),
    /// Draw a convolution as conv_arithmetic does (GIF, SVG, PNG, interactive HTML).
    Animate(animate::Args),
    /// Filter images with a kernel (Sobel, Gaussian, box, custom...), OpenCV semantics.
    Filter(filter::Args),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help shown when no subcommand is given.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => fail(&clap_message(&e), 2),
    };
    let result: error::CliResult = match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Conv2d(a) => conv::run(conv::CONV2D, a),
        Command::ConvTranspose2d(a) => conv::run(conv::CONV_TRANSPOSE2D, a),
        Command::Conv1d(a) => conv::run(conv::CONV1D, a),
        Command::ConvTranspose1d(a) => conv::run(conv::CONV_TRANSPOSE1D, a),
        Command::Explain(a) => explain::run(a),
        Command::Tour(a) => tour::run(a),
        Command::Animate(a) => animate::run(a),
        Command::Filter(a) => filter::run(a),
    };
    if let Err(e) = result {
        fail(&e.to_string(), 1);
    }
}

/// Prints `convkit: error: MSG` on one line of stderr and exits with `code`.
fn fail(msg: &str, code: i32) -> ! {
    let one_line: Vec<&str> = msg.split_whitespace().collect();
    eprintln!("convkit: error: {}", one_line.join(" "));
    std::process::exit(code);
}

/// A clap error as one line: its message without the usage block and tips.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let kept: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    kept.join(" ")
        .trim_start_matches("error:")
        .trim()
        .to_string()
}
