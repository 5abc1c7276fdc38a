//! `convkit filter`: filter images (or `.npy` arrays) with a named or custom kernel.

use crate::error::{CliError, CliResult};
use crate::io::{read_npy, write_atomic, write_npy};
use convkit::filter::{
    saturate_u16, saturate_u8, Depth, FilterBorder, FilterOp, FilterOptions, FilterPlan, Image,
    Kernel, KernelSpec, PathChoice, Sample, BORDER_HELP, KERNEL_NAMES,
};
use image::{DynamicImage, ImageFormat};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::io::{Cursor, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const AFTER_HELP: &str = "\
Semantics are OpenCV's filter2D: correlation (like PyTorch conv2d), output the size of the \
input, anchor at the kernel centre (rows/2, cols/2).

Kernels (-k): sobel-x, sobel-y, sobel (gradient magnitude), scharr-x, scharr-y, prewitt-x, \
prewitt-y, gaussian:sigma=S[,size=N] (OpenCV's getGaussianKernel; without a size OpenCV's \
GaussianBlur rule, which depends on the image depth), box:N[,M] (normalised, N columns x M \
rows), laplacian, laplacian-of-gaussian:sigma=S[,size=N], sharpen, emboss, a literal such as \
'[[1,2,1],[0,0,0],[-1,-2,-1]]', or a file: .npy (2D float) or text/JSON (one row per line, or \
a [[..],[..]] literal).

Borders (--border): zeros, constant:V (OpenCV BORDER_CONSTANT); reflect-101 (the default; \
OpenCV BORDER_REFLECT_101 = BORDER_DEFAULT = PyTorch 'reflect'); reflect (OpenCV \
BORDER_REFLECT, the edge pixel repeats); replicate (BORDER_REPLICATE = PyTorch 'replicate'); \
circular (BORDER_WRAP = PyTorch 'circular').

Images: PNG, JPEG, TIFF, WebP (gray, gray+alpha, RGB, RGBA; 8/16-bit; float TIFF) and .npy \
(2D gray or HxWxC, uint8 / uint16 / float32 / float64; every channel is filtered). Alpha is \
passed through untouched. Output type (--format): auto keeps the input's sample type; u8 and \
u16 round half to even and clamp (OpenCV's saturate_cast), so negative results (Sobel) become \
0; f32 keeps signed results and needs a .npy or .tiff output (--out-dir picks .tiff for \
images). Outputs are written atomically and never over an input unless --in-place.";

/// Filter images with a kernel (OpenCV filter2D semantics, separable when it pays).
#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Input images or .npy files; a directory means every image and .npy file inside it.
    #[arg(required = true, value_name = "IN")]
    inputs: Vec<PathBuf>,
    /// Output file (one input only).
    #[arg(short, long, value_name = "OUT", conflicts_with_all = ["out_dir", "in_place"])]
    output: Option<PathBuf>,
    /// Output folder (created if missing); outputs keep the input file names.
    #[arg(long, value_name = "DIR", conflicts_with = "in_place")]
    out_dir: Option<PathBuf>,
    /// Kernel: a name (sobel-x, gaussian:sigma=2, box:5, ...), a literal, or a file.
    #[arg(short, long, value_name = "KERNEL", help = format!("Kernel: {KERNEL_NAMES}, or a .npy/text file"))]
    kernel: String,
    /// Border rule.
    #[arg(long, default_value = "reflect-101", help = format!("Border: {BORDER_HELP}"))]
    border: String,
    /// Spacing between kernel taps (dilated / atrous filter).
    #[arg(long, default_value_t = 1, value_name = "D")]
    dilation: usize,
    /// Approximate the kernel by its best rank-R separable form and report the error.
    #[arg(long, value_name = "R")]
    rank: Option<usize>,
    /// Output sample type.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Force the separable or the direct 2D path (default: the cheaper one).
    #[arg(long, value_enum, default_value_t = PathArg::Auto)]
    path: PathArg,
    /// Print the plan: rank, 2D vs separable weights, MACs per pixel, chosen path.
    #[arg(long)]
    explain: bool,
    /// Overwrite each input with its result.
    #[arg(long)]
    in_place: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long, value_name = "N")]
    threads: Option<usize>,
}

/// Output sample type.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// The input's sample type.
    Auto,
    /// 8-bit, rounded and clamped to 0..=255.
    U8,
    /// 16-bit, rounded and clamped to 0..=65535.
    U16,
    /// 32-bit float, signed results kept (.npy or .tiff).
    F32,
}

/// Implementation path.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PathArg {
    /// The cheaper of separable and 2D.
    Auto,
    /// Rank-1 pairs of 1D passes.
    Separable,
    /// Direct 2D filter.
    #[value(name = "2d")]
    Direct,
}

/// Runs `convkit filter`.
pub fn run(args: Args) -> CliResult {
    let spec = kernel_spec(&args.kernel)?;
    let opts = FilterOptions {
        border: FilterBorder::parse(&args.border)?,
        dilation: args.dilation,
        path: match args.path {
            PathArg::Auto => PathChoice::Auto,
            PathArg::Separable => PathChoice::Separable,
            PathArg::Direct => PathChoice::Direct,
        },
        rank: args.rank,
    };
    // Validate the kernel and options once, before touching any file.
    FilterPlan::new(&spec.resolve(Depth::F32)?, &opts)?;
    if args.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let inputs = expand_inputs(&args.inputs)?;
    let jobs = plan_outputs(&args, &inputs)?;
    let work = || process_all(&args, &spec, &opts, &inputs, &jobs);
    match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot start {n} threads: {e}")))?
            .install(work),
        None => work(),
    }
}

fn process_all(
    args: &Args,
    spec: &KernelSpec,
    opts: &FilterOptions,
    inputs: &[PathBuf],
    jobs: &[PathBuf],
) -> CliResult {
    let protect: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    let bar = if inputs.len() > 1 && std::io::stderr().is_terminal() {
        let b =
            ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {wide_msg}")
                .expect("a valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let plans: Mutex<HashMap<&'static str, FilterPlan>> = Mutex::new(HashMap::new());
    let failed: Vec<String> = inputs
        .par_iter()
        .zip(jobs)
        .filter_map(|(input, output)| {
            let protect: Vec<&Path> = protect
                .iter()
                .copied()
                .filter(|p| !(args.in_place && *p == input.as_path()))
                .collect();
            let r = filter_one(args, spec, opts, &plans, input, output, &protect);
            bar.inc(1);
            match r {
                Ok(()) => None,
                Err(e) => {
                    let msg = e.to_string();
                    // A single input's error is printed once, by main.
                    if inputs.len() > 1 {
                        bar.suspend(|| eprintln!("convkit: error: {msg}"));
                    }
                    Some(msg)
                }
            }
        })
        .collect();
    bar.finish_and_clear();
    match failed.len() {
        0 => Ok(()),
        1 if inputs.len() == 1 => Err(CliError::Usage(failed[0].clone())),
        n => Err(CliError::Usage(format!(
            "{n} of {} files failed (see above)",
            inputs.len()
        ))),
    }
}

/// `-k`: a name or literal, else a file.
fn kernel_spec(s: &str) -> CliResult<KernelSpec> {
    let parsed = KernelSpec::parse(s);
    if parsed.is_ok() || s.trim_start().starts_with('[') {
        return Ok(parsed?);
    }
    let path = Path::new(s);
    if !path.is_file() {
        return Ok(parsed?);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let a = read_npy(path)?;
        if a.ndim() != 2 {
            return Err(CliError::file(
                path,
                format!("a kernel must be 2D, got shape {:?}", a.shape()),
            ));
        }
        let (r, c) = (a.shape()[0], a.shape()[1]);
        let data = a.iter().map(|&v| v as f64).collect();
        return Ok(KernelSpec::Fixed(
            Kernel::new(r, c, data).map_err(|e| CliError::file(path, e))?,
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError::file(path, e))?;
    Ok(KernelSpec::Fixed(
        Kernel::parse_text(&text).map_err(|e| CliError::file(path, e))?,
    ))
}

const EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "tif", "tiff", "webp", "npy", "pgm"];

fn ext_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Inputs with directories expanded (their image and .npy files, sorted, not recursive).
fn expand_inputs(inputs: &[PathBuf]) -> CliResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError::file(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && EXTENSIONS.contains(&ext_of(f).as_str()))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(CliError::file(p, "no image or .npy files in this folder"));
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The output path of every input, checked for clashes.
fn plan_outputs(args: &Args, inputs: &[PathBuf]) -> CliResult<Vec<PathBuf>> {
    let outs: Vec<PathBuf> = if args.in_place {
        inputs.to_vec()
    } else if let Some(o) = &args.output {
        if inputs.len() != 1 {
            return Err(CliError::Usage(format!(
                "-o takes one input, got {}; use --out-dir DIR for several",
                inputs.len()
            )));
        }
        vec![o.clone()]
    } else if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| CliError::file(dir, e))?;
        inputs
            .iter()
            .map(|i| {
                let ext = ext_of(i);
                let ext = if args.format == Format::F32
                    && !matches!(ext.as_str(), "npy" | "tif" | "tiff")
                {
                    "tiff".to_string()
                } else {
                    ext
                };
                let stem = i.file_stem().unwrap_or(i.as_os_str());
                let mut name = stem.to_os_string();
                name.push(".");
                name.push(ext);
                dir.join(name)
            })
            .collect()
    } else {
        return Err(CliError::Usage(
            "give an output: -o OUT, --out-dir DIR, or --in-place".into(),
        ));
    };
    let mut seen = HashSet::new();
    for o in &outs {
        let key = std::path::absolute(o).unwrap_or_else(|_| o.clone());
        if !seen.insert(key) {
            return Err(CliError::file(o, "two inputs would write this same output"));
        }
    }
    Ok(outs)
}

/// Decoded samples.
enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

/// An image or array: `h × w × c` interleaved, the last channel alpha when `alpha`.
struct Raster {
    w: usize,
    h: usize,
    c: usize,
    alpha: bool,
    data: Samples,
}

impl Raster {
    fn depth(&self) -> Depth {
        match self.data {
            Samples::U8(_) => Depth::U8,
            Samples::U16(_) => Depth::U16,
            Samples::F32(_) => Depth::F32,
        }
    }
}

fn filter_one(
    args: &Args,
    spec: &KernelSpec,
    opts: &FilterOptions,
    plans: &Mutex<HashMap<&'static str, FilterPlan>>,
    input: &Path,
    output: &Path,
    protect: &[&Path],
) -> CliResult {
    let raster = read_raster(input)?;
    let depth = raster.depth();
    let key = match depth {
        Depth::U8 => "8-bit",
        Depth::U16 => "16-bit",
        Depth::F32 => "float",
    };
    let plan = {
        let mut plans = plans.lock().unwrap_or_else(|e| e.into_inner());
        match plans.get(key) {
            Some(p) => p.clone(),
            None => {
                let op: FilterOp = spec.resolve(depth)?;
                let p = FilterPlan::new(&op, opts)?;
                if args.explain {
                    print!("plan for {key} images:\n{}", p.explain());
                    let _ = std::io::stdout().flush();
                }
                plans.insert(key, p.clone());
                p
            }
        }
    };
    let cc = raster.c - usize::from(raster.alpha);
    let filtered = match &raster.data {
        Samples::U8(d) => run_plan(&plan, d, &raster, cc),
        Samples::U16(d) => run_plan(&plan, d, &raster, cc),
        Samples::F32(d) => run_plan(&plan, d, &raster, cc),
    }
    .map_err(|e| CliError::file(input, e))?;
    let out_depth = match args.format {
        Format::Auto => depth,
        Format::U8 => Depth::U8,
        Format::U16 => Depth::U16,
        Format::F32 => Depth::F32,
    };
    let result = assemble(&raster, &filtered, cc, out_depth);
    write_raster(output, &result, protect)
}

/// Filters the colour channels (all but alpha) into an `h × w × cc` f32 buffer.
fn run_plan<T: Sample>(
    plan: &FilterPlan,
    data: &[T],
    r: &Raster,
    cc: usize,
) -> convkit::Result<Vec<f32>> {
    if cc == r.c {
        return plan.run_alloc(&Image::new(data, r.w, r.h, r.c)?);
    }
    let colour: Vec<T> = data
        .chunks_exact(r.c)
        .flat_map(|px| px[..cc].iter().copied())
        .collect();
    plan.run_alloc(&Image::new(&colour, r.w, r.h, cc)?)
}

/// The output raster: filtered colour converted to `depth`, alpha carried over (rescaled only
/// when the integer depth changes).
fn assemble(src: &Raster, colour: &[f32], cc: usize, depth: Depth) -> Raster {
    let n = src.w * src.h;
    let alpha: Option<Vec<f32>> = src.alpha.then(|| {
        let c = src.c;
        let scale = match (src.depth(), depth) {
            (Depth::U8, Depth::U16) => 257.0,
            (Depth::U16, Depth::U8) => 1.0 / 257.0,
            _ => 1.0,
        };
        (0..n)
            .map(|i| {
                let a = match &src.data {
                    Samples::U8(d) => d[i * c + cc] as f32,
                    Samples::U16(d) => d[i * c + cc] as f32,
                    Samples::F32(d) => d[i * c + cc],
                };
                a * scale
            })
            .collect()
    });
    let c = src.c;
    let sample = |i: usize| -> f32 {
        let (p, ch) = (i / c, i % c);
        match &alpha {
            Some(a) if ch == cc => a[p],
            _ => colour[p * cc + ch],
        }
    };
    let total = n * c;
    let data = match depth {
        Depth::U8 => Samples::U8(
            (0..total)
                .into_par_iter()
                .map(|i| saturate_u8(sample(i)))
                .collect(),
        ),
        Depth::U16 => Samples::U16(
            (0..total)
                .into_par_iter()
                .map(|i| saturate_u16(sample(i)))
                .collect(),
        ),
        Depth::F32 => Samples::F32((0..total).into_par_iter().map(sample).collect()),
    };
    Raster {
        w: src.w,
        h: src.h,
        c,
        alpha: src.alpha,
        data,
    }
}

fn read_raster(path: &Path) -> CliResult<Raster> {
    if ext_of(path) == "npy" {
        return read_npy_raster(path);
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| CliError::file(path, e))?
        .with_guessed_format()
        .map_err(|e| CliError::file(path, e))?;
    let img = match reader.decode() {
        Ok(img) => img,
        Err(e) => {
            // The image crate has no gray float TIFF; read those with the tiff crate.
            if matches!(ext_of(path).as_str(), "tif" | "tiff") {
                if let Some(r) = read_gray_float_tiff(path) {
                    return Ok(r);
                }
            }
            return Err(CliError::file(
                path,
                format!("cannot decode the image: {e}"),
            ));
        }
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, alpha, data) = match img {
        DynamicImage::ImageLuma8(b) => (1, false, Samples::U8(b.into_raw())),
        DynamicImage::ImageLumaA8(b) => (2, true, Samples::U8(b.into_raw())),
        DynamicImage::ImageRgb8(b) => (3, false, Samples::U8(b.into_raw())),
        DynamicImage::ImageRgba8(b) => (4, true, Samples::U8(b.into_raw())),
        DynamicImage::ImageLuma16(b) => (1, false, Samples::U16(b.into_raw())),
        DynamicImage::ImageLumaA16(b) => (2, true, Samples::U16(b.into_raw())),
        DynamicImage::ImageRgb16(b) => (3, false, Samples::U16(b.into_raw())),
        DynamicImage::ImageRgba16(b) => (4, true, Samples::U16(b.into_raw())),
        DynamicImage::ImageRgb32F(b) => (3, false, Samples::F32(b.into_raw())),
        DynamicImage::ImageRgba32F(b) => (4, true, Samples::F32(b.into_raw())),
        other => (4, true, Samples::U8(other.to_rgba8().into_raw())),
    };
    Ok(Raster {
        w,
        h,
        c,
        alpha,
        data,
    })
}

fn read_gray_float_tiff(path: &Path) -> Option<Raster> {
    let f = std::fs::File::open(path).ok()?;
    let mut dec = tiff::decoder::Decoder::new(std::io::BufReader::new(f)).ok()?;
    if dec.colortype().ok()? != tiff::ColorType::Gray(32) {
        return None;
    }
    let (w, h) = dec.dimensions().ok()?;
    match dec.read_image().ok()? {
        tiff::decoder::DecodingResult::F32(v) => Some(Raster {
            w: w as usize,
            h: h as usize,
            c: 1,
            alpha: false,
            data: Samples::F32(v),
        }),
        _ => None,
    }
}

fn read_npy_raster(path: &Path) -> CliResult<Raster> {
    let bytes = std::fs::read(path).map_err(|e| CliError::file(path, e))?;
    let (shape, data) = match ArrayD::<u8>::read_npy(&bytes[..]) {
        Ok(a) => (a.shape().to_vec(), Samples::U8(into_vec(a))),
        Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<u16>::read_npy(&bytes[..]) {
            Ok(a) => (a.shape().to_vec(), Samples::U16(into_vec(a))),
            Err(ReadNpyError::WrongDescriptor(_)) => {
                let a = read_npy(path)?;
                (a.shape().to_vec(), Samples::F32(into_vec(a)))
            }
            Err(e) => {
                return Err(CliError::file(
                    path,
                    format!("not a readable .npy file: {e}"),
                ))
            }
        },
        Err(e) => {
            return Err(CliError::file(
                path,
                format!("not a readable .npy file: {e}"),
            ))
        }
    };
    let (h, w, c) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c] if (1..=4).contains(&c) => (h, w, c),
        _ => {
            return Err(CliError::file(
                path,
                format!("expected a 2D (H, W) or (H, W, C≤4) array, got shape {shape:?}"),
            ))
        }
    };
    if h == 0 || w == 0 {
        return Err(CliError::file(path, "the array is empty"));
    }
    Ok(Raster {
        w,
        h,
        c,
        alpha: false,
        data,
    })
}

fn into_vec<T: Clone>(a: ArrayD<T>) -> Vec<T> {
    if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().cloned().collect()
    }
}

fn write_raster(path: &Path, r: &Raster, protect: &[&Path]) -> CliResult {
    let ext = ext_of(path);
    if ext == "npy" {
        let shape = if r.c == 1 {
            IxDyn(&[r.h, r.w])
        } else {
            IxDyn(&[r.h, r.w, r.c])
        };
        let npy_err = |e: ndarray::ShapeError| CliError::file(path, e);
        return match &r.data {
            Samples::U8(d) => {
                let a = ArrayD::from_shape_vec(shape, d.clone()).map_err(npy_err)?;
                write_atomic(path, protect, |w| {
                    a.write_npy(w).map_err(std::io::Error::other)
                })
            }
            Samples::U16(d) => {
                let a = ArrayD::from_shape_vec(shape, d.clone()).map_err(npy_err)?;
                write_atomic(path, protect, |w| {
                    a.write_npy(w).map_err(std::io::Error::other)
                })
            }
            Samples::F32(d) => {
                let a = ArrayD::from_shape_vec(shape, d.clone()).map_err(npy_err)?;
                write_npy(path, a.view(), protect)
            }
        };
    }
    let format = ImageFormat::from_extension(&ext).ok_or_else(|| {
        CliError::file(
            path,
            "unknown output type (use .png, .jpg, .tiff, .webp or .npy)",
        )
    })?;
    let (w, h) = (r.w as u32, r.h as u32);
    let bad_depth = |what: &str| {
        CliError::file(
            path,
            format!("{format:?} cannot hold {what} samples; choose --format or another output type (.tiff, .npy)"),
        )
    };
    let img: DynamicImage = match (&r.data, r.c) {
        (Samples::U8(d), 1) => image::GrayImage::from_raw(w, h, d.clone()).map(Into::into),
        (Samples::U8(d), 2) => image::GrayAlphaImage::from_raw(w, h, d.clone()).map(Into::into),
        (Samples::U8(d), 3) => image::RgbImage::from_raw(w, h, d.clone()).map(Into::into),
        (Samples::U8(d), 4) => image::RgbaImage::from_raw(w, h, d.clone()).map(Into::into),
        (Samples::U16(d), 1) => {
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::U16(d), 2) => {
            image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::U16(d), 3) => {
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::U16(d), 4) => {
            image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::F32(d), 1) if format == ImageFormat::Tiff => {
            let mut buf = Cursor::new(Vec::new());
            tiff::encoder::TiffEncoder::new(&mut buf)
                .and_then(|mut e| e.write_image::<tiff::encoder::colortype::Gray32Float>(w, h, d))
                .map_err(|e| CliError::file(path, e))?;
            let bytes = buf.into_inner();
            return write_atomic(path, protect, |out| out.write_all(&bytes));
        }
        (Samples::F32(d), 3) if format == ImageFormat::Tiff => {
            image::Rgb32FImage::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::F32(d), 4) if format == ImageFormat::Tiff => {
            image::Rgba32FImage::from_raw(w, h, d.clone()).map(Into::into)
        }
        (Samples::F32(_), 2) if format == ImageFormat::Tiff => {
            return Err(CliError::file(
                path,
                "float gray+alpha TIFF is not supported; use .npy",
            ))
        }
        (Samples::F32(_), _) => return Err(bad_depth("float")),
        _ => None,
    }
    .ok_or_else(|| CliError::file(path, "internal error: image buffer size mismatch"))?;
    if matches!(r.data, Samples::U16(_)) && !matches!(format, ImageFormat::Png | ImageFormat::Tiff)
    {
        return Err(bad_depth("16-bit"));
    }
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .map_err(|e| CliError::file(path, format!("cannot encode: {e}")))?;
    let bytes = buf.into_inner();
    write_atomic(path, protect, |out| out.write_all(&bytes))
}
