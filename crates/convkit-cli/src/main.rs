//! The `convkit` command-line tool: a thin layer over the `convkit` and `convkit-viz` crates.
//!
//! Each subcommand lives in its own module exposing `Args` (clap) and `run(args) -> CliResult`.

mod error;
mod filter;
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
    /// Filter images with a kernel (Sobel, Gaussian, box, custom...), OpenCV semantics.
    Filter(filter::Args),
}

fn main() {
    let cli = Cli::parse();
    let result: error::CliResult = match cli.command {
        Command::Filter(a) => filter::run(a),
    };
    if let Err(e) = result {
        eprintln!("convkit: error: {e}");
        std::process::exit(1);
    }
}
