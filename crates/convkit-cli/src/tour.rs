//! `convkit tour`: every kind of convolution in the seed, run on built-in data (a generated
//! test image and seeded random tensors), with its spec, shapes, cost, receptive field and
//! time, followed by the seed's own comparisons, checked numerically.

use crate::engine::{self, Algo};
use crate::error::CliResult;
use crate::layer::{shape_str, thousands, user_shape};
use convkit::arith::{analyze_stack, depthwise_separable_params, spatially_separable_params};
use convkit::dwsep::{DepthwiseSeparable, MacCounts};
use convkit::separable;
use convkit::{ConvSpec, Equivalent, PaddingMode, Rank, ValidSpec};
use ndarray::{array, s, Array1, Array2, Array4, ArrayView4, Zip};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `convkit tour`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seed of the random tensors.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Side of the generated test image (pixels).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=1024))]
    pub size: u64,
    /// Folder for the tour's pictures: the conv_arithmetic-style gallery, the Sobel images of
    /// the test image and a report page (index.html) linking them.
    #[arg(long, default_value = "convkit-tour")]
    pub out: PathBuf,
    /// Print the report only; write no files.
    #[arg(long)]
    pub no_files: bool,
}

/// SplitMix64 (Steele et al. 2014): a tiny, seedable generator, so the tour needs no crate
/// and prints the same numbers everywhere.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: [usize; 4], scale: f32) -> Array4<f32> {
        Array4::from_shape_simple_fn(shape, || self.uniform() * scale)
    }
}

/// A 3-channel `size`×`size` test image in [0, 1]: a diagonal gradient, a disc, a square and
/// a checkerboard patch, so edges of every orientation appear.
fn test_image(size: usize) -> Array4<f32> {
    let n = size as f32;
    Array4::from_shape_fn((1, 3, size, size), |(_, c, y, x)| {
        let (fy, fx) = (y as f32 / n, x as f32 / n);
        let mut v = 0.25 * (fx + fy);
        let (dy, dx) = (fy - 0.35, fx - 0.35);
        if dy * dy + dx * dx < 0.04 {
            v = 0.9;
        }
        if (0.55..0.85).contains(&fy) && (0.5..0.8).contains(&fx) {
            v = 0.1;
        }
        if fy > 0.15 && fy < 0.4 && fx > 0.65 && fx < 0.9 && ((y / 4 + x / 4) % 2 == 0) {
            v = 1.0;
        }
        match c {
            0 => v,
            1 => 0.8 * v + 0.1,
            _ => 1.0 - v,
        }
    })
}

/// One line of the report.
struct Row {
    kind: String,
    pytorch: String,
    input: String,
    output: String,
    params: u64,
    macs: u64,
    rf: String,
    time_ms: f64,
    notes: Vec<String>,
}

/// Runs a single layer through the engine and measures it.
struct Ran {
    y: Array4<f32>,
    row: Row,
}

fn run_layer(
    kind: &str,
    spec: ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    b: Option<&Array1<f32>>,
) -> CliResult<Ran> {
    let shape = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let report = analyze_stack(&[spec], shape)?.remove(0);
    let (y, time_ms) = best_of(|| engine::forward(&spec, x, w, b.map(|b| b.view()), Algo::Auto))?;
    let rank = spec.rank();
    Ok(Ran {
        row: Row {
            kind: kind.into(),
            pytorch: report.pytorch.clone(),
            input: shape_str(&user_shape(rank, shape)),
            output: shape_str(&user_shape(rank, report.geometry.output_shape())),
            params: report.params as u64,
            macs: report.macs,
            rf: match report.receptive_field {
                Some(rf) if rank == Rank::Two => format!("{}x{}", rf.size[0], rf.size[1]),
                Some(rf) => rf.size[1].to_string(),
                None => "-".into(),
            },
            time_ms,
            notes: Vec::new(),
        },
        y,
    })
}

/// Runs `f` three times and returns its result with the fastest time in milliseconds (the
/// first run pays for page faults and cold caches).
fn best_of<T>(mut f: impl FnMut() -> CliResult<T>) -> CliResult<(T, f64)> {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let v = f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        out = Some(v);
    }
    Ok((out.expect("ran three times"), best))
}

fn max_abs_diff(a: ArrayView4<f32>, b: ArrayView4<f32>) -> f32 {
    let mut m = 0f32;
    Zip::from(a)
        .and(b)
        .for_each(|x, y| m = m.max((x - y).abs()));
    m
}

/// The direct convolution equivalent to a transposed one (Dumoulin & Visin §4): zeros inserted
/// between input cells, padding d(k−1)−p (+ output_padding), kernel flipped and its in/out axes
/// swapped, stride 1. Returns `None` when the equivalent needs cropping (negative padding).
fn transposed_as_direct(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
) -> CliResult<Option<Array4<f32>>> {
    let g = spec.geometry([x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]])?;
    let Equivalent::Direct {
        padding,
        dilation,
        stretched_input,
        ..
    } = g.equivalent()
    else {
        return Ok(None);
    };
    if padding.iter().any(|&p| p < 0) {
        return Ok(None);
    }
    let st = spec.stride();
    let mut xs = Array4::<f32>::zeros((g.n, g.c, stretched_input[0], stretched_input[1]));
    xs.slice_mut(s![.., .., ..;st[0], ..;st[1]]).assign(&x);
    let groups = spec.groups();
    let (cg, kg) = (g.c / groups, g.k / groups);
    let [kh, kw] = spec.kernel();
    let wd = Array4::from_shape_fn((g.k, cg, kh, kw), |(k, c, a, b)| {
        let gi = k / kg;
        w[[gi * cg + c, k % kg, kh - 1 - a, kw - 1 - b]]
    });
    let direct = ConvSpec::conv2d(g.c, g.k, [kh, kw])
        .padding_sides(padding.map(|p| p as usize))
        .dilation(dilation)
        .groups(groups)
        .bias(false)
        .build()?;
    Ok(Some(engine::forward(
        &direct,
        xs.view(),
        wd.view(),
        None,
        Algo::Auto,
    )?))
}

/// Runs `convkit tour`.
pub fn run(args: Args) -> CliResult {
    let size = args.size as usize;
    let mut rng = Rng(args.seed);
    let img = test_image(size);
    let mut rows: Vec<Row> = Vec::new();

    let rand_w = |rng: &mut Rng, spec: &ValidSpec| {
        let ws = spec.weight_shape();
        let fan_in = (ws[1] * ws[2] * ws[3]) as f32;
        rng.tensor(ws, 1.0 / fan_in.sqrt())
    };

    // Standard, and padded with each mode.
    let std3 = ConvSpec::conv2d(3, 8, 3).build()?;
    let w3 = rand_w(&mut rng, &std3);
    let b3 = Array1::from_shape_fn(8, |_| rng.uniform() * 0.1);
    rows.push(run_layer("standard", std3, img.view(), w3.view(), Some(&b3))?.row);

    let zeros = ConvSpec::conv2d(3, 8, 3).padding(1).build()?;
    let padded_zeros = run_layer("padded, zeros", zeros, img.view(), w3.view(), Some(&b3))?;
    let y_zeros = padded_zeros.y.clone();
    rows.push(padded_zeros.row);
    for mode in [
        PaddingMode::Reflect,
        PaddingMode::Replicate,
        PaddingMode::Circular,
    ] {
        let spec = ConvSpec::conv2d(3, 8, 3)
            .padding(1)
            .padding_mode(mode)
            .build()?;
        let mut r = run_layer(
            &format!("padded, {mode}"),
            spec,
            img.view(),
            w3.view(),
            Some(&b3),
        )?;
        let inner = s![.., .., 1..size - 1, 1..size - 1];
        let interior = max_abs_diff(r.y.slice(inner), y_zeros.slice(inner));
        let all = max_abs_diff(r.y.view(), y_zeros.view());
        r.row.notes.push(format!(
            "vs zeros: interior max diff {interior:.1e}, border max diff {all:.3}"
        ));
        rows.push(r.row);
    }
    let same = ConvSpec::conv2d(3, 8, [3, 4])
        .padding_rule(convkit::Padding::Same)
        .build()?;
    let w34 = rand_w(&mut rng, &same);
    let mut r = run_layer("padded, 'same' 3x4", same, img.view(), w34.view(), None)?;
    let p = same.resolved_padding(size, size);
    r.row.notes.push(format!(
        "even kernel: padding top {}, bottom {}, left {}, right {} (extra cell bottom/right)",
        p[0], p[1], p[2], p[3]
    ));
    rows.push(r.row);

    // Strided and dilated.
    let strided = ConvSpec::conv2d(3, 8, 3).stride(2).padding(1).build()?;
    rows.push(run_layer("strided", strided, img.view(), w3.view(), Some(&b3))?.row);
    let dilated = ConvSpec::conv2d(3, 8, 3).dilation(2).build()?;
    let mut r = run_layer(
        "dilated (atrous)",
        dilated,
        img.view(),
        w3.view(),
        Some(&b3),
    )?;
    r.row
        .notes
        .push("9 weights see a 5x5 field (the seed's kernel 3, dilation 2)".into());
    rows.push(r.row);

    // Transposed: the seed's 2x2 -> 5x5, and a 2x upsampler checked against its direct form.
    let seed_down = ConvSpec::conv2d(1, 1, 3).stride(2).bias(false).build()?;
    let seed_up = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride(2)
        .bias(false)
        .build()?;
    let xd = rng.tensor([1, 1, 5, 5], 1.0);
    let wd = rng.tensor([1, 1, 3, 3], 1.0);
    let down = run_layer("strided (seed 5x5)", seed_down, xd.view(), wd.view(), None)?;
    let mut up = run_layer(
        "transposed (seed 2x2)",
        seed_up,
        down.y.view(),
        wd.view(),
        None,
    )?;
    up.row.notes.push(format!(
        "restores the 5x5 shape, not the values: max |x - up(down(x))| = {:.2}",
        max_abs_diff(xd.view(), up.y.view())
    ));
    rows.push(down.row);
    rows.push(up.row);

    let tr = ConvSpec::conv_transpose2d(8, 3, 3)
        .stride(2)
        .padding(1)
        .output_padding(1)
        .build()?;
    let half = size / 2;
    let xt = rng.tensor([1, 8, half, half], 1.0);
    let wt = rand_w(&mut rng, &tr);
    let mut r = run_layer("transposed", tr, xt.view(), wt.view(), None)?;
    if let Some(direct) = transposed_as_direct(&tr, xt.view(), wt.view())? {
        r.row.notes.push(format!(
            "= direct conv on the zero-inserted input, kernel flipped: max diff {:.1e}",
            max_abs_diff(r.y.view(), direct.view())
        ));
    }
    rows.push(r.row);

    // Grouped and depthwise.
    let x16 = rng.tensor([1, 16, half, half], 1.0);
    let grouped = ConvSpec::conv2d(16, 32, 3).padding(1).groups(4).build()?;
    let wg = rand_w(&mut rng, &grouped);
    rows.push(run_layer("grouped (g=4)", grouped, x16.view(), wg.view(), None)?.row);
    let dw = ConvSpec::conv2d(16, 16, 3)
        .padding(1)
        .groups(16)
        .bias(false)
        .build()?;
    let wdw = rand_w(&mut rng, &dw);
    let dw_run = run_layer("depthwise", dw, x16.view(), wdw.view(), None)?;
    let dw2 = ConvSpec::conv2d(16, 32, 3).padding(1).groups(16).build()?;
    let wdw2 = rand_w(&mut rng, &dw2);
    rows.push(dw_run.row);
    rows.push(run_layer("depthwise (m=2)", dw2, x16.view(), wdw2.view(), None)?.row);

    // Depthwise separable (convkit::dwsep): depthwise 3x3 then pointwise 1x1, versus the
    // standard 3x3 it replaces, which it equals once its weights are folded together.
    let block = DepthwiseSeparable::builder(16, 32, 3).padding(1).build()?;
    let (dws, pws) = (*block.depthwise(), *block.pointwise());
    let wdws = rand_w(&mut rng, &dws);
    let wpw = rand_w(&mut rng, &pws);
    let block_in = [1, 16, half, half];
    let stack = analyze_stack(&[dws, pws], block_in)?;
    let (yb, block_ms) = best_of(|| {
        let mid = engine::forward(&dws, x16.view(), wdws.view(), None, Algo::Auto)?;
        engine::forward(&pws, mid.view(), wpw.view(), None, Algo::Auto)
    })?;
    let sep_rf = stack[1].receptive_field.map(|r| r.size).unwrap_or([0, 0]);
    let macs = block.macs(block_in)?;
    rows.push(Row {
        kind: "depthwise separable".into(),
        pytorch: format!("{}  ->  {}", dws.pytorch(), pws.pytorch()),
        input: shape_str(&block_in),
        output: shape_str(yb.shape()),
        params: block.param_count() as u64,
        macs: macs.total,
        rf: format!("{}x{}", sep_rf[0], sep_rf[1]),
        time_ms: block_ms,
        notes: Vec::new(),
    });
    let standard = *block.standard_equivalent();
    let (w_folded, _) = block.fold_into_standard(wdws.view(), None, wpw.view(), None)?;
    let mut r = run_layer(
        "standard it replaces",
        standard,
        x16.view(),
        w_folded.view(),
        None,
    )?;
    r.row.notes.push(format!(
        "with the block's weights folded in (rank <= m per input channel): max diff {:.1e}",
        max_abs_diff(r.y.view(), yb.view())
    ));
    rows.push(r.row);

    // Spatially separable: Sobel as one 3x3 pass, and factorised (convkit::separable) into
    // [1,2,1]ᵀ·[1,0,-1] run as a vertical then a horizontal 1D pass.
    let gray = img.slice(s![.., 0..1, .., ..]).to_owned();
    let sobel2 = array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
    let sobel = Array4::from_shape_fn((1, 1, 3, 3), |(_, _, a, b)| sobel2[[a, b]] as f32);
    let s2d = ConvSpec::conv2d(1, 1, 3).padding(1).bias(false).build()?;
    let r2d = run_layer(
        "spatially separable: Sobel",
        s2d,
        gray.view(),
        sobel.view(),
        None,
    )?;
    let f = separable::factorize(sobel2.view())?;
    let (two_pass, two_ms) = best_of(|| {
        Ok(separable::conv2d_two_pass_spec(
            &s2d,
            gray.view(),
            &f,
            None,
        )?)
    })?;
    let sobel_diff = max_abs_diff(r2d.y.view(), two_pass.view());
    let factors = f
        .terms
        .first()
        .map(|t| format!("col {:?} x row {:?}", t.col, t.row))
        .unwrap_or_default();
    rows.push(r2d.row);
    rows.push(Row {
        kind: "  as two 1D passes".into(),
        pytorch: format!("rank {} kernel = {factors} (convkit::separable)", f.rank),
        input: shape_str(gray.shape()),
        output: shape_str(two_pass.shape()),
        params: f.weights_separable() as u64,
        macs: (two_pass.len() * f.weights_separable()) as u64,
        rf: "3x3".into(),
        time_ms: two_ms,
        notes: vec![format!("max |2D - two-pass| = {sobel_diff:.1e}")],
    });

    // 1D.
    let c1 = ConvSpec::conv1d(4, 8, 5).padding(2).build()?;
    let x1 = rng.tensor([1, 4, 1, 4 * size], 1.0);
    let w1 = rand_w(&mut rng, &c1);
    rows.push(run_layer("1D", c1, x1.view(), w1.view(), None)?.row);
    let t1 = ConvSpec::conv_transpose1d(8, 4, 4)
        .stride(2)
        .padding(1)
        .build()?;
    let x1t = rng.tensor([1, 8, 1, 2 * size], 1.0);
    let w1t = rand_w(&mut rng, &t1);
    rows.push(run_layer("1D transposed", t1, x1t.view(), w1t.view(), None)?.row);

    print_table(&rows, size, args.seed);
    print_comparisons(sobel_diff, macs, block_in)?;
    let speed = print_speed(&mut rng)?;
    if !args.no_files {
        let sobel_y_k = sobel.clone().permuted_axes([0, 1, 3, 2]).to_owned();
        let gy = engine::forward(&s2d, gray.view(), sobel_y_k.view(), None, Algo::Auto)?;
        write_files(&args.out, &img, &r2d.y, &gy, &rows, &speed)?;
    }
    Ok(())
}

/// One line of the speed section: a layer timed on the fast engine and on the reference.
struct Speed {
    what: String,
    fast_ms: f64,
    reference_ms: f64,
}

/// convkit's fast engines next to the naive reference (f64 loops) on small real layers.
fn print_speed(rng: &mut Rng) -> CliResult<Vec<Speed>> {
    let layers = [
        (
            "3x3 conv 32->32 on 28x28",
            ConvSpec::conv2d(32, 32, 3).padding(1).build()?,
            false,
        ),
        (
            "1x1 conv 64->64 on 28x28",
            ConvSpec::conv2d(64, 64, 1).build()?,
            false,
        ),
        (
            "3x3 depthwise 64 on 28x28",
            ConvSpec::conv2d(64, 64, 3).padding(1).groups(64).build()?,
            false,
        ),
        (
            "4x4 s2 transposed 32->16 on 14x14",
            ConvSpec::conv_transpose2d(32, 16, 4)
                .stride(2)
                .padding(1)
                .build()?,
            false,
        ),
        (
            "backward (dx + dw) of the 3x3 conv",
            ConvSpec::conv2d(32, 32, 3).padding(1).build()?,
            true,
        ),
    ];
    println!("\nspeed: convkit's engines vs the naive reference (best of 3 runs)");
    let mut out = Vec::new();
    for (what, spec, bwd) in layers {
        let side = if spec.is_transposed() { 14 } else { 28 };
        let input = [1, spec.in_channels(), side, side];
        let x = rng.tensor(input, 1.0);
        let w = rng.tensor(spec.weight_shape(), 0.1);
        let (fast, reference) = if bwd {
            let dy = rng.tensor(spec.geometry(input)?.output_shape(), 1.0);
            let want = convkit::GradRequest {
                input: true,
                weight: true,
                bias: false,
            };
            let run = |a| {
                best_of(|| engine::backward(&spec, x.view(), w.view(), dy.view(), want, a))
                    .map(|r| r.1)
            };
            (run(Algo::Auto)?, run(Algo::Reference)?)
        } else {
            let run =
                |a| best_of(|| engine::forward(&spec, x.view(), w.view(), None, a)).map(|r| r.1);
            (run(Algo::Auto)?, run(Algo::Reference)?)
        };
        println!(
            "  {what:<36} convkit {fast:8.3} ms   reference {reference:9.3} ms   {:6.0}x faster",
            reference / fast.max(1e-6)
        );
        out.push(Speed {
            what: what.into(),
            fast_ms: fast,
            reference_ms: reference,
        });
    }
    println!("  (`convkit bench` and scripts/compare.py measure the real-size suites against PyTorch and ONNX Runtime)");
    Ok(out)
}

/// Writes a grayscale PNG of `plane`, scaled so that max |v| maps to white (signed results
/// such as Sobel show their magnitude).
fn write_plane_png(path: &Path, plane: ndarray::ArrayView2<f32>, protect: &[&Path]) -> CliResult {
    let (h, w) = plane.dim();
    let max = plane.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    let px: Vec<u8> = plane
        .iter()
        .map(|v| (v.abs() / max * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let img = image::GrayImage::from_raw(w as u32, h as u32, px)
        .ok_or_else(|| crate::error::CliError::file(path, "image size"))?;
    crate::io::write_atomic(path, protect, |f| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        f.write_all(buf.get_ref())
    })
}

/// Writes the gallery, the Sobel images and a report page into `dir`.
fn write_files(
    dir: &Path,
    img: &Array4<f32>,
    gx: &Array4<f32>,
    gy: &Array4<f32>,
    rows: &[Row],
    speed: &[Speed],
) -> CliResult {
    use crate::error::CliError;
    std::fs::create_dir_all(dir).map_err(|e| CliError::file(dir, e))?;
    let gallery = convkit_viz::gallery::write_gallery(&dir.join("gallery"))
        .map_err(|e| CliError::file(&dir.join("gallery"), e))?;
    let (h, w) = (img.shape()[2], img.shape()[3]);
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
        .map(|(y, x, c)| (img[[0, c, y, x]] * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let input_png = dir.join("test_image.png");
    let rgb_img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| CliError::file(&input_png, "image size"))?;
    crate::io::write_atomic(&input_png, &[], |f| {
        let mut buf = std::io::Cursor::new(Vec::new());
        rgb_img
            .write_to(&mut buf, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        f.write_all(buf.get_ref())
    })?;
    let mag = Zip::from(gx.slice(s![0, 0, .., ..]))
        .and(gy.slice(s![0, 0, .., ..]))
        .map_collect(|a, b| (a * a + b * b).sqrt());
    write_plane_png(&dir.join("sobel_x.png"), gx.slice(s![0, 0, .., ..]), &[])?;
    write_plane_png(&dir.join("sobel_y.png"), gy.slice(s![0, 0, .., ..]), &[])?;
    write_plane_png(&dir.join("sobel_magnitude.png"), mag.view(), &[])?;
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>convkit tour</title>\n\
         <style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:2px 8px;text-align:right}\
         td:first-child,th:first-child{text-align:left}td{white-space:nowrap}img{image-rendering:pixelated;width:192px;margin:4px}</style>\n\
         <h1>convkit tour</h1>\n<h2>Every convolution of the seed</h2>\n<table><tr><th>kind<th>input<th>output\
         <th>params<th>MACs<th>RF<th>ms</tr>\n",
    );
    for r in rows {
        html += &format!(
            "<tr><td>{}<br><small><code>{}</code></small><td>{}<td>{}<td>{}<td>{}<td>{}<td>{:.3}</tr>\n",
            esc(r.kind.trim()),
            esc(&r.pytorch),
            esc(&r.input),
            esc(&r.output),
            r.params,
            r.macs,
            esc(&r.rf),
            r.time_ms
        );
    }
    html += "</table>\n<h2>Sobel on the test image (two 1D passes = the 3x3 kernel)</h2>\n\
             <img src=test_image.png alt=input><img src=sobel_x.png alt=sobel-x>\
             <img src=sobel_y.png alt=sobel-y><img src=sobel_magnitude.png alt=magnitude>\n\
             <h2>Speed against the naive reference</h2>\n<table>";
    for sp in speed {
        html += &format!(
            "<tr><td>{}<td>{:.3} ms<td>reference {:.3} ms<td>{:.0}x</tr>\n",
            esc(&sp.what),
            sp.fast_ms,
            sp.reference_ms,
            sp.reference_ms / sp.fast_ms.max(1e-6)
        );
    }
    html += &format!(
        "</table>\n<h2>Animations</h2>\n<p><a href=gallery/index.html>The gallery</a>: conv_arithmetic's \
         configurations, their transposed counterparts and the new views ({} animations).</p>\n",
        gallery.len()
    );
    let page = dir.join("index.html");
    crate::io::write_atomic(&page, &[], |f| f.write_all(html.as_bytes()))?;
    println!(
        "\nwrote {} (the report), the Sobel images and {} animations in {}",
        page.display(),
        gallery.len(),
        dir.join("gallery").display()
    );
    Ok(())
}

fn print_table(rows: &[Row], size: usize, seed: u64) {
    println!(
        "convkit tour: every convolution of the seed on built-in data \
         ({size}x{size} test image, random tensors with seed {seed})"
    );
    println!("engine: --algo auto, today {}\n", Algo::Auto.describe());
    let wk = rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
    let shapes: Vec<String> = rows
        .iter()
        .map(|r| format!("{} -> {}", r.input, r.output))
        .collect();
    let wsh = shapes.iter().map(|s| s.len()).max().unwrap_or(5).max(5);
    let params: Vec<String> = rows.iter().map(|r| thousands(r.params)).collect();
    let macs: Vec<String> = rows.iter().map(|r| thousands(r.macs)).collect();
    let wp = params.iter().map(|s| s.len()).max().unwrap_or(6).max(6);
    let wm = macs.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<wk$}  {:<wsh$}  {:>wp$}  {:>wm$}  {:>5}  {:>9}",
        "kind", "input -> output", "params", "MACs", "RF", "time"
    );
    println!("{}", "-".repeat(wk + wsh + wp + wm + 5 + 9 + 10));
    for (i, r) in rows.iter().enumerate() {
        println!(
            "{:<wk$}  {:<wsh$}  {:>wp$}  {:>wm$}  {:>5}  {:>6.2} ms",
            r.kind, shapes[i], params[i], macs[i], r.rf, r.time_ms
        );
        println!("{:wk$}  {}", "", r.pytorch);
        for n in &r.notes {
            println!("{:wk$}  {}", "", n);
        }
    }
}

fn print_comparisons(sobel_diff: f32, macs: MacCounts, block_in: [usize; 4]) -> CliResult {
    let p = depthwise_separable_params(16, 32, [3, 3], 1)?;
    let (full, sep) = spatially_separable_params([3, 3]);
    println!("\nthe seed's comparisons");
    println!(
        "  depthwise separable, 16 -> 32 channels, 3x3: standard 16x32x3x3 = {} params; \
         depthwise 16x3x3 = {} + pointwise 16x32 = {} -> {} ({:.1}x fewer)",
        thousands(p.standard as u64),
        p.depthwise,
        p.pointwise,
        p.separable(),
        p.standard as f64 / p.separable() as f64
    );
    println!(
        "    and per forward pass on {}: {} MACs instead of {} ({:.1}x fewer)",
        shape_str(&block_in),
        thousands(macs.total),
        thousands(macs.standard),
        macs.standard as f64 / macs.total.max(1) as f64
    );
    println!(
        "  spatially separable Sobel [1,2,1]^T [1,0,-1]: {full} weights as one 3x3 pass, \
         {sep} as two 1D passes; results equal: {}",
        equal_text(sobel_diff)
    );
    // Which classic kernels are separable: the rank of each (SVD / exact integer test).
    let gauss1 = [1.0, 4.0, 6.0, 4.0, 1.0];
    let kernels = [
        (
            "Sobel-x 3x3",
            array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
        ),
        (
            "Scharr-x 3x3",
            array![[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]],
        ),
        (
            "Gaussian 5x5",
            Array2::from_shape_fn((5, 5), |(i, j)| gauss1[i] * gauss1[j] / 256.0),
        ),
        ("box 3x3", Array2::from_elem((3, 3), 1.0 / 9.0)),
        (
            "Laplacian 3x3",
            array![[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
        ),
    ];
    for (name, k) in kernels {
        let f = separable::factorize(k.view())?;
        let verdict = if f.rank <= 1 {
            format!(
                "rank 1: separable, {} weights instead of {}",
                f.weights_separable(),
                f.weights_2d()
            )
        } else {
            let best = separable::low_rank(k.view(), 1)?;
            format!(
                "rank {}: not separable; best rank-1 approximation has error {:.3} (Frobenius)",
                f.rank,
                best.error()
            )
        };
        println!("    {name:<14} {verdict}");
    }
    Ok(())
}

/// Whether two results on the [0, 1] test image agree: exactly, or up to the rounding of the
/// f32 intermediate between the two passes (a few ulps of values ≤ 4).
fn equal_text(diff: f32) -> String {
    if diff == 0.0 {
        "yes, bit for bit".into()
    } else if diff <= 1e-5 {
        format!("yes, up to f32 rounding of the intermediate (max diff {diff:.1e})")
    } else {
        format!("NO (max diff {diff:.1e})")
    }
}
