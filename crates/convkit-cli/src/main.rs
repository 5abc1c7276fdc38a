//! The `convkit` command-line tool: a thin layer over the `convkit` and `convkit-viz` crates.
//!
//! Each subcommand lives in its own module exposing `Args` (clap) and `run(args) -> CliResult`.

mod bench;
mod error;
mod io;

use clap::{Parser, Subcommand};

/// convkit: every convolution of deep learning, exact PyTorch semantics, fast on CPU.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time the fast engine on a suite of layers (ms, GFLOP/s, % of FMA peak).
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result: error::CliResult = match cli.command {
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("convkit: error: {e}");
        std::process::exit(1);
    }
}
