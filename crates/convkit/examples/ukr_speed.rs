//! FMA peak per ISA level as `convkit bench` measures it (best of many short trials, robust to
//! a loaded machine): `cargo run --release -p convkit --example ukr_speed`.
use convkit::kernels::{peak, Isa};

fn main() {
    for isa in Isa::available_levels() {
        if let Some(p) = peak::measure(isa, 2) {
            println!(
                "{isa}: {:.1} GFLOP/s per core, {:.1} on 2 threads",
                p.per_core_gflops, p.total_gflops
            );
        }
    }
}
