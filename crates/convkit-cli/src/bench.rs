//! `convkit bench`: times the fast engine on a suite of layers (median of several runs after
//! a warm-up), reporting ms, GFLOP/s and the share of the machine's FMA peak, which it
//! measures first with a short FMA-throughput loop per ISA level.

use crate::error::{CliError, CliResult};
use clap::ValueEnum;
use convkit::kernels::{peak, Isa};
use convkit::plan::{Algo, Plan};
use convkit::{ConvSpec, GradRequest, ValidSpec};
use ndarray::{Array1, Array4};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Built-in suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// The 11 dense layers of issue 3 (ResNet, MobileNetV2 pointwise, ASPP, ResNeXt, conv1d).
    Dense,
    /// Depthwise layers (MobileNetV2 3×3, stride 2, a 5×5 with multiplier 2), with bytes/s.
    Depthwise,
    /// Transposed layers (DCGAN 4×4 s2, U-Net 2×2 s2, 3×3 s2 with output padding).
    Transposed,
    /// Backward passes (grad input + grad weight) of dense, depthwise and transposed layers.
    Backward,
    /// Every convolution suite above (dense, depthwise, transposed, backward).
    All,
    /// Image filtering (issue 6's table: Sobel, Gaussian, box, random 7×7 on 1080p gray/RGB u8
    /// and 4096² f32); compare with OpenCV through scripts/compare_filters.py.
    Filters,
}

/// Arguments of `convkit bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Built-in suite to run (ignored with --shapes).
    #[arg(long, value_enum, default_value = "dense")]
    suite: Suite,
    /// A JSON array of layers in the suite schema (see `--print-suite`).
    #[arg(long)]
    shapes: Option<PathBuf>,
    /// Worker threads (default: rayon's global pool, which honours RAYON_NUM_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Algorithm (auto, reference, implicit-gemm, gemm1x1, depthwise, subpixel, col2im, ...; backward
    /// rows run the fast backward unless this is `reference`).
    #[arg(long, default_value = "auto")]
    algo: String,
    /// Timed runs per layer (the median is reported).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Microkernel ISA level (default: the widest available).
    #[arg(long)]
    isa: Option<String>,
    /// Print the selected suite as JSON (the `--shapes` schema) and exit.
    #[arg(long)]
    print_suite: bool,
    /// Skip the FMA peak measurement (no % of peak in the output).
    #[arg(long)]
    no_peak: bool,
}

fn default_pass() -> String {
    "forward".into()
}

/// One layer of a suite (the schema of `--shapes`; conv1d rows give `l` and 1-element lists).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Row name.
    pub name: String,
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height (2D).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<usize>,
    /// Input width (2D).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<usize>,
    /// Input length (1D).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<usize>,
    /// Output channels.
    pub k: usize,
    /// Kernel size per spatial axis.
    pub kernel: Vec<usize>,
    /// Stride per axis.
    pub stride: Vec<usize>,
    /// Symmetric padding per axis.
    pub padding: Vec<usize>,
    /// Dilation per axis.
    pub dilation: Vec<usize>,
    /// Groups.
    pub groups: usize,
    /// Transposed convolution.
    #[serde(default)]
    pub transposed: bool,
    /// Output padding per axis (transposed only).
    #[serde(default)]
    pub output_padding: Vec<usize>,
    /// `forward`, or `backward` (grad input + grad weight from a given grad output).
    #[serde(default = "default_pass")]
    pub pass: String,
}

/// One result row of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Layer name.
    pub name: String,
    /// Median wall time of one forward pass, ms.
    pub median_ms: f64,
    /// Fastest run, ms.
    pub min_ms: f64,
    /// Useful GFLOP/s at the median (2·MACs / time, padded taps counted as work).
    pub gflops: f64,
    /// CPU time of the whole process per run, ms (Linux; all threads). On a shared machine
    /// this is what one run costs without the waits for a core; with one thread it estimates
    /// the undisturbed wall time.
    pub cpu_ms: Option<f64>,
    /// Percentage of the measured FMA peak for the thread count (if measured).
    pub peak_pct: Option<f64>,
    /// `forward` or `backward`.
    pub pass: String,
    /// Depthwise rows: bytes of input + output + weights moved once, per second (GB/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbytes_per_s: Option<f64>,
    /// Depthwise rows: median time over the time to stream those bytes once at the measured
    /// memory bandwidth for that working-set size (the issue's target is ≤ 1.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_ratio: Option<f64>,
    /// Forward rows: MiB the heap's peak grew by while the plan ran, over the operands and the
    /// plan (packed weights) already allocated (per-thread workspaces kept from an earlier row
    /// of the same process are not counted again; `compare.py` runs each row in its own
    /// process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_extra_mib: Option<f64>,
    /// Forward rows: the plan's bound for that growth, MiB: per-thread workspaces × threads
    /// + run scratch (issue 3: peak ≤ operands + packed weights + bounded workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bound_mib: Option<f64>,
    /// Algorithm the plan chose.
    pub algo: String,
    /// Microkernel ISA level.
    pub isa: Option<String>,
    /// Threads used.
    pub threads: usize,
}

#[allow(clippy::too_many_arguments)]
fn row2d(
    name: &str,
    n: usize,
    c: usize,
    hw: usize,
    k: usize,
    kern: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
) -> Shape {
    Shape {
        name: name.into(),
        n,
        c,
        h: Some(hw),
        w: Some(hw),
        l: None,
        k,
        kernel: vec![kern; 2],
        stride: vec![s; 2],
        padding: vec![p; 2],
        dilation: vec![d; 2],
        groups: g,
        transposed: false,
        output_padding: vec![0, 0],
        pass: default_pass(),
    }
}

/// The dense suite of issue 3.
pub fn dense_suite() -> Vec<Shape> {
    vec![
        row2d("resnet_3x3_c64_56", 1, 64, 56, 64, 3, 1, 1, 1, 1),
        row2d("resnet_1x1_c256_56", 1, 256, 56, 64, 1, 1, 0, 1, 1),
        row2d("resnet_stem_7x7_s2", 1, 3, 224, 64, 7, 2, 3, 1, 1),
        row2d("resnet_3x3_c256_14", 1, 256, 14, 256, 3, 1, 1, 1, 1),
        row2d("resnet_3x3_c64_56_b8", 8, 64, 56, 64, 3, 1, 1, 1, 1),
        row2d("resnet_1x1_s2_c512_28", 1, 512, 28, 1024, 1, 2, 0, 1, 1),
        row2d("mbv2_pw_1x1_c144_24_56", 1, 144, 56, 24, 1, 1, 0, 1, 1),
        row2d("aspp_dil6_c256_32", 1, 256, 32, 256, 3, 1, 6, 6, 1),
        row2d("aspp_dil12_c256_32", 1, 256, 32, 256, 3, 1, 12, 12, 1),
        row2d("resnext_g32_c128_56", 1, 128, 56, 128, 3, 1, 1, 1, 32),
        Shape {
            name: "conv1d_k3_c512_l3000".into(),
            n: 1,
            c: 512,
            h: None,
            w: None,
            l: Some(3000),
            k: 512,
            kernel: vec![3],
            stride: vec![1],
            padding: vec![1],
            dilation: vec![1],
            groups: 1,
            transposed: false,
            output_padding: vec![0],
            pass: default_pass(),
        },
    ]
}

/// The depthwise suite of issue 4.
pub fn depthwise_suite() -> Vec<Shape> {
    vec![
        row2d("mbv2_dw_3x3_c144_56", 1, 144, 56, 144, 3, 1, 1, 1, 144),
        row2d("mbv2_dw_3x3_s2_c96_112", 1, 96, 112, 96, 3, 2, 1, 1, 96),
        row2d("mbv2_dw_3x3_c576_14", 1, 576, 14, 576, 3, 1, 1, 1, 576),
        row2d("dw_5x5_m2_c32_112", 1, 32, 112, 64, 5, 1, 2, 1, 32),
    ]
}

/// The transposed suite of issue 4.
pub fn transposed_suite() -> Vec<Shape> {
    let t = |name: &str, c: usize, hw: usize, k: usize, kern: usize, p: usize, op: usize| Shape {
        transposed: true,
        output_padding: vec![op, op],
        ..row2d(name, 1, c, hw, k, kern, 2, p, 1, 1)
    };
    vec![
        t("dcgan_tconv_4x4_s2_c128_32", 128, 32, 64, 4, 1, 0),
        t("unet_tconv_2x2_s2_c128_64", 128, 64, 64, 2, 0, 0),
        t("tconv_3x3_s2_op1_c64_56", 64, 56, 32, 3, 1, 1),
    ]
}

/// The backward suite of issue 4: the dense anchors, then every depthwise and transposed row.
pub fn backward_suite() -> Vec<Shape> {
    let dense = dense_suite();
    let pick = |name: &str| dense.iter().find(|s| s.name == name).cloned();
    [
        "resnet_3x3_c64_56",
        "resnet_3x3_c64_56_b8",
        "resnet_1x1_c256_56",
        "aspp_dil6_c256_32",
        "resnext_g32_c128_56",
    ]
    .into_iter()
    .filter_map(pick)
    .chain(depthwise_suite())
    .chain(transposed_suite())
    .map(|s| Shape {
        pass: "backward".into(),
        ..s
    })
    .collect()
}

fn suite(s: Suite) -> Vec<Shape> {
    match s {
        Suite::Dense => dense_suite(),
        Suite::Depthwise => depthwise_suite(),
        Suite::Transposed => transposed_suite(),
        Suite::Backward => backward_suite(),
        Suite::All => [
            dense_suite(),
            depthwise_suite(),
            transposed_suite(),
            backward_suite(),
        ]
        .concat(),
        Suite::Filters => Vec::new(),
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// The spec and input shape of a suite row.
pub fn layer(s: &Shape) -> CliResult<(ValidSpec, [usize; 4])> {
    let bad = |what: &str| usage(format!("shape '{}': {what}", s.name));
    if s.pass != "forward" && s.pass != "backward" {
        return Err(bad(&format!(
            "pass '{}' is neither 'forward' nor 'backward'",
            s.pass
        )));
    }
    let pair = |v: &[usize], what: &str, one_d: bool| -> CliResult<[usize; 2]> {
        match (v, one_d) {
            ([a], true) => Ok([1, *a]),
            ([a], false) => Ok([*a, *a]),
            ([a, b], false) => Ok([*a, *b]),
            _ => Err(bad(&format!(
                "{what} needs {} values",
                if one_d { "1" } else { "1 or 2" }
            ))),
        }
    };
    let (one_d, h, w) = match (s.h, s.w, s.l) {
        (Some(h), Some(w), None) => (false, h, w),
        (None, None, Some(l)) => (true, 1, l),
        _ => return Err(bad("give either h and w (2D) or l (1D)")),
    };
    let kernel = pair(&s.kernel, "kernel", one_d)?;
    let stride = pair(&s.stride, "stride", one_d)?;
    let dilation = pair(&s.dilation, "dilation", one_d)?;
    let [ph, pw] = pair(&s.padding, "padding", one_d)?;
    let base = match (one_d, s.transposed) {
        (false, false) => ConvSpec::conv2d(s.c, s.k, kernel),
        (false, true) => ConvSpec::conv_transpose2d(s.c, s.k, kernel),
        (true, false) => ConvSpec::conv1d(s.c, s.k, kernel[1]),
        (true, true) => ConvSpec::conv_transpose1d(s.c, s.k, kernel[1]),
    };
    let mut spec = base
        .stride(stride)
        .dilation(dilation)
        .padding_sides([
            if one_d { 0 } else { ph },
            if one_d { 0 } else { ph },
            pw,
            pw,
        ])
        .groups(s.groups);
    if s.transposed && !s.output_padding.is_empty() {
        spec = spec.output_padding(pair(&s.output_padding, "output_padding", one_d)?);
    }
    let spec = spec.build()?;
    let input = [s.n, s.c, h, w];
    spec.geometry(input)?;
    Ok((spec, input))
}

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// CPU nanoseconds used so far by every thread of this process (Linux `schedstat`), or `None`
/// where that is not available.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Times `f`: warm-up (at least 2 runs and ~0.2 s), then `runs` timed calls; returns
/// (median ms, min ms, process CPU ms per run).
fn time_runs(runs: usize, mut f: impl FnMut() -> CliResult) -> CliResult<(f64, f64, Option<f64>)> {
    let start = Instant::now();
    let mut warm = 0;
    while warm < 2 || (start.elapsed().as_secs_f64() < 0.2 && warm < 50) {
        f()?;
        warm += 1;
    }
    let mut times = Vec::with_capacity(runs);
    let cpu0 = process_cpu_ns();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_ms = match (cpu0, process_cpu_ns()) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1e6 / runs.max(1) as f64),
        _ => None,
    };
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((median(&mut times), min_ms, cpu_ms))
}

/// Memory bandwidth (GB/s, bytes read + written) of a copy over a working set of `bytes`,
/// split over the pool's threads, best of several runs: the speed limit of a memory-bound
/// layer of that size.
///
/// Each run is one parallel region in which every thread copies its own share `REPS` times
/// (the working set stays as warm as a layer's operands between its runs), so the per-call
/// cost of starting the threads (~20 µs) is spread over the copies rather than counted as
/// memory time: timed as one parallel copy per call, a 3.6 MB working set measured 70 GB/s
/// on one Zen 5 core, where a plain copy on the calling thread moves 124 GB/s.
fn copy_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    const REPS: usize = 8;
    let threads = rayon::current_num_threads().max(1);
    let n = (bytes / 8).max(1024);
    let per = n.div_ceil(threads);
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t = Instant::now();
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .with_max_len(1)
            .for_each(|(d, s)| {
                for _ in 0..REPS {
                    // (black_box: every copy is made, none folded into another.)
                    d.copy_from_slice(std::hint::black_box(s));
                    std::hint::black_box(&mut *d);
                }
            });
        best = best.min(t.elapsed().as_secs_f64() / REPS as f64);
    }
    (2 * 4 * n) as f64 / best / 1e9
}

/// Times one layer: a forward pass through a plan, or a backward pass (grad input + grad
/// weight) through `convkit::backward`.
fn time_layer(s: &Shape, algo: Algo, isa: Isa, runs: usize, threads: usize) -> CliResult<Row> {
    let (spec, input) = layer(s)?;
    let ws = spec.weight_shape();
    let w = Array4::from_shape_vec(ws, fill(ws.iter().product(), 2)).expect("sized");
    let b = Array1::from(fill(spec.out_channels(), 3));
    let x = Array4::from_shape_vec(input, fill(input.iter().product(), 1)).expect("sized");
    let geom = spec.geometry(input)?;
    let out = geom.output_shape();
    let mut memory = None;
    let (timing, flops, algo_name, isa_name) = if s.pass == "backward" {
        let dy = Array4::from_shape_vec(out, fill(out.iter().product(), 4)).expect("sized");
        let want = GradRequest {
            input: true,
            weight: true,
            bias: false,
        };
        let t = time_runs(runs, || {
            convkit::backward::backward(&spec, x.view(), w.view(), dy.view(), want, algo)?;
            Ok(())
        })?;
        let name = if algo == Algo::Reference {
            "reference"
        } else {
            "backward"
        };
        (t, 2 * geom.flops(), name.to_string(), Some(isa.to_string()))
    } else {
        let mut y = Array4::<f32>::zeros(out);
        let plan = Plan::with_isa(&spec, input, w.view(), Some(b.view()), algo, isa)?;
        // The plan (packed weights) and every operand exist before the peak is reset, so the
        // peak's growth is what running adds: per-thread workspaces and run scratch.
        let base = reset_peak_heap();
        let t = time_runs(runs, || Ok(plan.run(x.view(), y.view_mut())?))?;
        memory = base.zip(peak_heap()).map(|(b, p)| {
            (
                p.saturating_sub(b) as f64 / MIB,
                (convkit::plan::workspace_holders(threads) * plan.workspace_bytes()
                    + plan.scratch_bytes()) as f64
                    / MIB,
            )
        });
        (
            t,
            geom.flops(),
            plan.algo().to_string(),
            plan.isa().map(|i| i.to_string()),
        )
    };
    let (median_ms, min_ms, cpu_ms) = timing;
    let (gbytes_per_s, stream_ratio) = if spec.is_depthwise() && s.pass == "forward" {
        let bytes = 4
            * (input.iter().product::<usize>()
                + out.iter().product::<usize>()
                + ws.iter().product::<usize>());
        let stream_ms = bytes as f64 / (copy_bandwidth(bytes) * 1e9) * 1e3;
        (
            Some(bytes as f64 / (median_ms * 1e-3) / 1e9),
            Some(median_ms / stream_ms),
        )
    } else {
        (None, None)
    };
    Ok(Row {
        name: s.name.clone(),
        median_ms,
        min_ms,
        gflops: flops as f64 / (median_ms * 1e-3) / 1e9,
        cpu_ms,
        peak_pct: None,
        pass: s.pass.clone(),
        gbytes_per_s,
        stream_ratio,
        peak_extra_mib: memory.map(|m| m.0),
        memory_bound_mib: memory.map(|m| m.1),
        algo: algo_name,
        isa: isa_name,
        threads,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resets the heap's peak to its current size and returns that size, bytes (the CLI's
/// counting global allocator).
fn reset_peak_heap() -> Option<usize> {
    crate::ALLOC.reset_peak_usage();
    Some(crate::ALLOC.current_usage())
}

/// The heap's peak size since the last reset, bytes.
fn peak_heap() -> Option<usize> {
    Some(crate::ALLOC.peak_usage())
}

/// `convkit bench --suite filters`: the image-filter table (wall medians and CPU time).
fn run_filters(args: &Args) -> CliResult {
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    if threads == 0 {
        return Err(usage("--threads must be at least 1"));
    }
    println!(
        "{:<20} {:<22} {:<14} {:>10} {:>10} {:>10} {:>9}",
        "image", "case", "path", "median ms", "min ms", "cpu ms", "Mpix/s"
    );
    let rows = convkit::filter::bench::bench_suite(threads, "");
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "{:<20} {:<22} {:<14} {:>10.3} {:>10.3} {:>10} {:>9.1}",
            r.image,
            r.case,
            r.path,
            r.median_ms,
            r.min_ms,
            r.cpu_ms.map_or("-".into(), |c| format!("{c:.3}")),
            r.mpix_per_s
        );
        json.push(serde_json::json!({
            "name": format!("{} / {}", r.image, r.case),
            "median_ms": r.median_ms,
            "min_ms": r.min_ms,
            "cpu_ms": r.cpu_ms,
            "mpix_per_s": r.mpix_per_s,
            "algo": r.path,
            "threads": r.threads,
        }));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json).map_err(|e| usage(e.to_string()))?;
        crate::io::write_atomic(path, &[], |w| writeln!(w, "{text}"))?;
    }
    Ok(())
}

/// Runs `convkit bench`.
pub fn run(args: Args) -> CliResult {
    if args.suite == Suite::Filters && args.shapes.is_none() {
        return run_filters(&args);
    }
    let shapes = match &args.shapes {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| CliError::file(p, e))?;
            let v: Vec<Shape> = serde_json::from_str(&text).map_err(|e| CliError::file(p, e))?;
            if v.is_empty() {
                return Err(CliError::file(p, "no layers in the file"));
            }
            v
        }
        None => suite(args.suite),
    };
    if args.print_suite {
        let text = serde_json::to_string_pretty(&shapes).map_err(|e| usage(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    for s in &shapes {
        layer(s)?;
    }
    let algo: Algo = args.algo.parse().map_err(usage)?;
    let isa = match &args.isa {
        Some(s) => {
            let i: Isa = s.parse().map_err(usage)?;
            if !i.available() {
                return Err(usage(format!("this CPU has no {i}")));
            }
            i
        }
        None => Isa::best(),
    };
    if args.threads == Some(0) {
        return Err(usage("--threads must be at least 1"));
    }
    // `--threads N` sizes rayon's global pool, so that layers are timed the way a program
    // calls them (from a thread outside the pool). A private pool entered with `install`
    // runs the timing loop on one of its own workers, and a short layer (0.2 ms) then
    // finishes before the other worker wakes up: measured at one thread's speed on two.
    // Only when the global pool already exists does a private pool stand in.
    let pool = match args.threads {
        Some(t) => match rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            Ok(()) => None,
            Err(_) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| usage(format!("cannot start {t} threads: {e}")))?,
            ),
        },
        None => None,
    };
    let threads = pool
        .as_ref()
        .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
    let peak = (!args.no_peak).then(|| {
        let mut best: Option<peak::Peak> = None;
        for level in Isa::available_levels()
            .into_iter()
            .filter(|&i| i != Isa::Scalar)
        {
            let Some(p) = peak::measure(level, threads) else {
                continue;
            };
            println!(
                "FMA peak {:>6}: {:7.1} GFLOP/s per core, {:7.1} GFLOP/s on {} threads",
                level.name(),
                p.per_core_gflops,
                p.total_gflops,
                p.threads
            );
            if best.is_none_or(|b| p.total_gflops > b.total_gflops) {
                best = Some(p);
            }
        }
        best.map_or(0.0, |b| b.total_gflops)
    });
    println!(
        "{:<30} {:>8} {:>14} {:>7} {:>10} {:>10} {:>10} {:>9} {:>7}  memory-bound",
        "layer", "pass", "algo", "isa", "median ms", "min ms", "cpu ms", "GFLOP/s", "% peak"
    );
    let mut rows = Vec::new();
    for s in &shapes {
        let mut row = match &pool {
            Some(p) => p.install(|| time_layer(s, algo, isa, args.runs, threads))?,
            None => time_layer(s, algo, isa, args.runs, threads)?,
        };
        row.peak_pct = peak.filter(|&p| p > 0.0).map(|p| 100.0 * row.gflops / p);
        println!(
            "{:<30} {:>8} {:>14} {:>7} {:>10.3} {:>10.3} {:>10} {:>9.1} {:>7}  {}",
            row.name,
            row.pass,
            row.algo,
            row.isa.as_deref().unwrap_or("-"),
            row.median_ms,
            row.min_ms,
            row.cpu_ms.map_or("-".into(), |c| format!("{c:.3}")),
            row.gflops,
            row.peak_pct.map_or("-".into(), |p| format!("{p:.0}%")),
            match (row.gbytes_per_s, row.stream_ratio) {
                (Some(g), Some(r)) => format!("{g:.1} GB/s, {r:.2}x the streaming time"),
                _ => String::new(),
            } + &match (row.peak_extra_mib, row.memory_bound_mib) {
                (Some(e), Some(b)) => format!("  run +{e:.1} MiB (bound {b:.1})"),
                _ => String::new(),
            }
        );
        rows.push(row);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| usage(e.to_string()))?;
        crate::io::write_atomic(path, &[], |w| writeln!(w, "{text}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_valid_and_round_trip() {
        let all = suite(Suite::All);
        assert_eq!(dense_suite().len(), 11);
        assert_eq!(depthwise_suite().len(), 4);
        assert_eq!(transposed_suite().len(), 3);
        assert_eq!(backward_suite().len(), 12);
        assert!(backward_suite().iter().all(|s| s.pass == "backward"));
        for s in &all {
            layer(s).unwrap();
        }
        let text = serde_json::to_string(&all).unwrap();
        let back: Vec<Shape> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.len(), all.len());
        let (spec, input) = layer(&back[10]).unwrap();
        assert_eq!(input, [1, 512, 1, 3000]);
        assert_eq!(spec.kernel(), [1, 3]);
    }

    #[test]
    fn issue_schema_parses_and_bad_rows_are_errors() {
        let text = r#"[{"name": "x", "n": 1, "c": 64, "h": 56, "w": 56, "k": 64, "kernel": [3, 3],
            "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
            "transposed": false, "output_padding": [0, 0], "pass": "forward"}]"#;
        let v: Vec<Shape> = serde_json::from_str(text).unwrap();
        assert!(layer(&v[0]).is_ok());
        let mut bwd = v[0].clone();
        bwd.pass = "backward".into();
        assert!(layer(&bwd).is_ok());
        let mut bad = v[0].clone();
        bad.pass = "sideways".into();
        assert!(layer(&bad).is_err());
        let mut bad = v[0].clone();
        bad.l = Some(5);
        assert!(layer(&bad).is_err());
        let mut bad = v[0].clone();
        bad.groups = 5;
        assert!(layer(&bad).is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
