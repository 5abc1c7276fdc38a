//! `convkit conv2d | conv-transpose2d | conv1d | conv-transpose1d`: run one layer on `.npy`
//! files, forward and/or backward.
//!
//! The layer's channels, kernel size and groups come from the weight's shape and `--groups`
//! (PyTorch layouts: conv `(K, C/g, kh, kw)`, transposed `(C, K/g, kh, kw)`; 1D drops kh).

use crate::engine::{self, Algo};
use crate::error::{CliError, CliResult};
use crate::io;
use crate::layer::{shape_str, Ints, Kind, Layer, PadArg};
use convkit::{ConvError, GradRequest, PaddingMode, Rank};
use ndarray::{Array4, ArrayD, ArrayView4, Axis, Ix1, Ix4};
use std::path::{Path, PathBuf};

/// Flags shared by the four convolution commands.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input .npy (float32 or float64): (N, C, H, W) for 2D, (N, C, L) for 1D.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Weight .npy in PyTorch's layout: conv (K, C/g, kh, kw), transposed (C, K/g, kh, kw);
    /// 1D drops kh.
    #[arg(long, value_name = "FILE")]
    pub weight: PathBuf,
    /// Bias .npy of K values (optional).
    #[arg(long, value_name = "FILE")]
    pub bias: Option<PathBuf>,
    /// Stride: S or SH,SW (1D: S).
    #[arg(long, default_value = "1", value_name = "S|SH,SW")]
    pub stride: Ints,
    /// Padding: P, PH,PW or T,B,L,R (1D: P or LEFT,RIGHT), or same (PyTorch, stride 1),
    /// same-tf (TensorFlow SAME, any stride), valid.
    #[arg(
        long,
        default_value = "0",
        value_name = "P|PH,PW|T,B,L,R|same|same-tf|valid"
    )]
    pub padding: PadArg,
    /// Dilation: D or DH,DW (1D: D).
    #[arg(long, default_value = "1", value_name = "D|DH,DW")]
    pub dilation: Ints,
    /// Groups: C and K must both be divisible by it (C = groups: depthwise).
    #[arg(long, default_value_t = 1, value_name = "G")]
    pub groups: usize,
    /// Border mode for the padding (direct convolutions only): zeros, reflect, replicate,
    /// circular.
    #[arg(long, value_name = "MODE")]
    pub padding_mode: Option<PaddingMode>,
    /// Transposed only: extra rows/columns on the bottom/right of the output, P or PH,PW.
    #[arg(long, value_name = "P|PH,PW")]
    pub output_padding: Option<Ints>,
    /// Transposed only: wanted output size H,W (1D: L); derives the output padding.
    #[arg(long, value_name = "H,W")]
    pub output_size: Option<Ints>,
    /// Where to write the forward output .npy (float32).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Backward: dL/dy .npy, shaped like the output.
    #[arg(long, value_name = "FILE")]
    pub grad_output: Option<PathBuf>,
    /// Backward: where to write dL/dx.
    #[arg(long, value_name = "FILE")]
    pub grad_input: Option<PathBuf>,
    /// Backward: where to write dL/dw.
    #[arg(long, value_name = "FILE")]
    pub grad_weight: Option<PathBuf>,
    /// Backward: where to write dL/db.
    #[arg(long, value_name = "FILE")]
    pub grad_bias: Option<PathBuf>,
    /// Engine: auto (fastest correct) or reference (the oracle).
    #[arg(long, value_enum, default_value_t = Algo::Auto)]
    pub algo: Algo,
}

/// `conv2d`.
pub const CONV2D: Kind = Kind {
    rank: Rank::Two,
    transposed: false,
};
/// `conv-transpose2d`.
pub const CONV_TRANSPOSE2D: Kind = Kind {
    rank: Rank::Two,
    transposed: true,
};
/// `conv1d`.
pub const CONV1D: Kind = Kind {
    rank: Rank::One,
    transposed: false,
};
/// `conv-transpose1d`.
pub const CONV_TRANSPOSE1D: Kind = Kind {
    rank: Rank::One,
    transposed: true,
};

/// Runs one convolution command.
pub fn run(kind: Kind, args: Args) -> CliResult {
    let outputs = check_outputs(&args)?;
    let mut inputs: Vec<&Path> = vec![&args.input, &args.weight];
    inputs.extend(args.bias.as_deref());
    inputs.extend(args.grad_output.as_deref());
    for (flag, out) in &outputs {
        if let Some(inp) = inputs.iter().find(|i| io::same_file(out, i)) {
            return Err(CliError::file(
                out,
                format!(
                    "--{flag} would overwrite the input {} (choose another output path)",
                    inp.display()
                ),
            ));
        }
    }

    let x = read_tensor(&args.input, "input", kind.ndim())?;
    let w = read_tensor(&args.weight, "weight", kind.ndim())?;
    let b = match &args.bias {
        Some(p) => Some(
            read_tensor(p, "bias", 1)?
                .into_dimensionality::<Ix1>()
                .expect("rank checked"),
        ),
        None => None,
    };
    let x4 = to_4d(&x);
    let w4 = to_4d(&w);

    if args.groups == 0 {
        return Err(ConvError::Zero { what: "groups" }.into());
    }
    let (in_ch, out_ch) = {
        let ws = w4.shape();
        let mul = |v: usize| {
            v.checked_mul(args.groups)
                .ok_or(ConvError::Overflow { what: "channels" })
        };
        if kind.transposed {
            (ws[0], mul(ws[1])?)
        } else {
            (mul(ws[1])?, ws[0])
        }
    };
    if x4.shape()[1] != in_ch {
        return Err(CliError::Usage(format!(
            "input has {} channels but weight {} with groups {} expects {in_ch}",
            x4.shape()[1],
            shape_str(w.shape()),
            args.groups
        )));
    }
    let ws = w4.shape();
    let mut layer = Layer::new(kind, in_ch, out_ch, vec![ws[2], ws[3]]);
    if kind.rank == Rank::One {
        layer.kernel = vec![ws[3]];
    }
    layer.stride = args.stride.0.clone();
    layer.padding = args.padding.clone();
    layer.dilation = args.dilation.0.clone();
    layer.groups = args.groups;
    layer.padding_mode = args.padding_mode.unwrap_or_default();
    layer.output_padding = args.output_padding.as_ref().map(|v| v.0.clone());
    layer.output_size = args.output_size.as_ref().map(|v| v.0.clone());
    layer.bias = b.is_some();
    let spec = layer.build()?;

    // Compute everything first, write afterwards: a failure leaves every output untouched.
    let mut results: Vec<(&Path, ArrayD<f32>)> = Vec::new();
    if let Some(out) = &args.output {
        let y = engine::forward(&spec, x4, w4, b.as_ref().map(|b| b.view()), args.algo)?;
        results.push((out, from_4d(y, kind.rank)));
    }
    if let Some(dy_path) = &args.grad_output {
        let dy = read_tensor(dy_path, "grad output", kind.ndim())?;
        let want = GradRequest {
            input: args.grad_input.is_some(),
            weight: args.grad_weight.is_some(),
            bias: args.grad_bias.is_some(),
        };
        let g =
            engine::backward(&spec, x4, w4, to_4d(&dy), want, args.algo).map_err(|e| match e {
                CliError::Conv(ConvError::ShapeMismatch {
                    what: "grad_output",
                    got,
                    expected,
                }) => CliError::file(
                    dy_path,
                    format!(
                        "grad output has shape {}, expected the layer's output shape {}",
                        shape_str(&user_dims(&got, kind.rank)),
                        shape_str(&user_dims(&expected, kind.rank))
                    ),
                ),
                e => e,
            })?;
        if let (Some(p), Some(a)) = (&args.grad_input, g.input) {
            results.push((p, from_4d(a, kind.rank)));
        }
        if let (Some(p), Some(a)) = (&args.grad_weight, g.weight) {
            results.push((p, from_4d(a, kind.rank)));
        }
        if let (Some(p), Some(a)) = (&args.grad_bias, g.bias) {
            results.push((p, a.into_dyn()));
        }
    }
    for (path, a) in &results {
        io::write_npy(path, a.view(), &inputs)?;
    }
    Ok(())
}

/// Checks that the flags ask for something and that no two outputs share a path.
fn check_outputs(args: &Args) -> CliResult<Vec<(&'static str, &Path)>> {
    let grads: Vec<(&'static str, &Path)> = [
        ("grad-input", &args.grad_input),
        ("grad-weight", &args.grad_weight),
        ("grad-bias", &args.grad_bias),
    ]
    .into_iter()
    .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
    .collect();
    match (args.grad_output.is_some(), grads.is_empty()) {
        (true, true) => {
            return Err(CliError::Usage(
                "--grad-output needs at least one of --grad-input, --grad-weight, --grad-bias"
                    .into(),
            ))
        }
        (false, false) => {
            return Err(CliError::Usage(format!(
                "--{} needs --grad-output (the gradient of the loss w.r.t. the output)",
                grads[0].0
            )))
        }
        _ => {}
    }
    let mut outputs: Vec<(&'static str, &Path)> = Vec::new();
    outputs.extend(args.output.as_deref().map(|p| ("output", p)));
    outputs.extend(grads);
    if outputs.is_empty() {
        return Err(CliError::Usage(
            "nothing to do: give --output, or --grad-output with --grad-input/--grad-weight/--grad-bias"
                .into(),
        ));
    }
    for (i, (fa, a)) in outputs.iter().enumerate() {
        for (fb, b) in &outputs[i + 1..] {
            if normalized(a) == normalized(b) {
                return Err(CliError::Usage(format!(
                    "--{fa} and --{fb} name the same file {}",
                    a.display()
                )));
            }
        }
    }
    Ok(outputs)
}

/// An absolute form of a path that may not exist yet (its folder resolved).
fn normalized(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), p.file_name()) {
        (Ok(d), Some(f)) => d.join(f),
        _ => p.to_path_buf(),
    }
}

/// Reads an `.npy` and checks its number of dimensions.
fn read_tensor(path: &Path, what: &str, ndim: usize) -> CliResult<ArrayD<f32>> {
    let a = io::read_npy(path)?;
    if a.ndim() != ndim {
        let layout = match (what, ndim) {
            ("bias", _) => "(K,)",
            ("weight", 4) => "(out, in/groups, kh, kw) or transposed (in, out/groups, kh, kw)",
            ("weight", _) => "(out, in/groups, k) or transposed (in, out/groups, k)",
            (_, 4) => "(N, C, H, W)",
            _ => "(N, C, L)",
        };
        return Err(CliError::file(
            path,
            format!(
                "{what} must have {ndim} dimension{} {layout}, got {} with shape {}",
                if ndim == 1 { "" } else { "s" },
                a.ndim(),
                shape_str(a.shape())
            ),
        ));
    }
    Ok(a)
}

/// Views a 4D array, or a 3D (N, C, L) one as (N, C, 1, L).
fn to_4d(a: &ArrayD<f32>) -> ArrayView4<'_, f32> {
    let v = a.view();
    let v = if v.ndim() == 3 {
        v.insert_axis(Axis(2))
    } else {
        v
    };
    v.into_dimensionality::<Ix4>()
        .expect("rank checked by read_tensor")
}

/// Back to the user's rank: 1D results drop the unit height.
fn from_4d(a: Array4<f32>, rank: Rank) -> ArrayD<f32> {
    match rank {
        Rank::Two => a.into_dyn(),
        Rank::One => a.index_axis_move(Axis(2), 0).into_dyn(),
    }
}

/// An NCHW shape as the user sees it.
fn user_dims(s: &[usize], rank: Rank) -> Vec<usize> {
    match (rank, s) {
        (Rank::One, [n, c, _, l]) => vec![*n, *c, *l],
        _ => s.to_vec(),
    }
}
