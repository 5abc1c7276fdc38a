//! `convkit explain`: what a layer or a stack of layers does to a shape, what it costs, what it
//! sees, and how transposed and direct convolutions relate.
//!
//! A stack file (TOML or JSON, chosen by extension) looks like:
//!
//! ```toml
//! input = [1, 3, 224, 224]          # N, C, H, W (1D: N, C, L)
//! [[layer]]
//! name = "stem"                     # optional
//! kind = "conv2d"                   # conv2d (default), conv1d, conv-transpose2d, conv-transpose1d
//! in_channels = 3                   # optional: defaults to the previous layer's output channels
//! out_channels = 64
//! kernel = 7                        # k or [kh, kw]
//! stride = 2                        # optional, s or [sh, sw]
//! padding = 3                       # optional: p, [ph, pw], [t, b, l, r], "same", "same-tf", "valid"
//! dilation = 1                      # optional
//! groups = 1                        # optional
//! bias = true                       # optional
//! padding_mode = "zeros"            # optional: zeros, reflect, replicate, circular
//! output_padding = 1                # transposed only, optional
//! output_size = [112, 112]          # transposed only, optional
//! ```
//!
//! JSON uses the same keys, with the layers under `"layers"` (or `"layer"`).

use crate::error::{CliError, CliResult};
use crate::layer::{shape_str, thousands, user_shape, Ints, Kind, Layer, PadArg};
use convkit::arith::{analyze_stack, LayerReport};
use convkit::{ConvSpec, Equivalent, PaddingMode, Rank, ValidSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const STACK_HELP: &str = "\
Stack file (TOML, or JSON by .json extension):
  input = [1, 3, 224, 224]     # N, C, H, W (1D: N, C, L)
  [[layer]]                    # JSON: \"layers\": [ {...}, ... ]
  name = \"stem\"                # optional
  kind = \"conv2d\"              # conv2d (default), conv1d, conv-transpose2d, conv-transpose1d
  in_channels = 3              # optional after the first layer (previous output channels)
  out_channels = 64
  kernel = 7                   # k or [kh, kw]
  stride = 2                   # optional: s or [sh, sw]
  padding = 3                  # optional: p, [ph, pw], [t, b, l, r], \"same\", \"same-tf\", \"valid\"
  dilation = 1                 # optional: d or [dh, dw]
  groups = 1                   # optional
  bias = true                  # optional
  padding_mode = \"zeros\"       # optional: zeros, reflect, replicate, circular (direct only)
  output_padding = 1           # optional, transposed only
  output_size = [112, 112]     # optional, transposed only
Example: examples/stack.toml";

/// Flags of `convkit explain`: one layer from flags, or `--stack FILE`.
#[derive(Debug, clap::Args)]
#[command(after_help = STACK_HELP)]
pub struct Args {
    /// A stack of layers in a TOML or JSON file (schema below).
    #[arg(long, value_name = "FILE")]
    pub stack: Option<PathBuf>,
    /// Input channels C.
    #[arg(long, required_unless_present = "stack", conflicts_with = "stack")]
    pub in_channels: Option<usize>,
    /// Output channels K.
    #[arg(long, required_unless_present = "stack", conflicts_with = "stack")]
    pub out_channels: Option<usize>,
    /// Kernel size: K or KH,KW.
    #[arg(
        long,
        value_name = "K|KH,KW",
        required_unless_present = "stack",
        conflicts_with = "stack"
    )]
    pub kernel: Option<Ints>,
    /// Input spatial size: H,W (1D: L).
    #[arg(
        long,
        value_name = "H,W",
        required_unless_present = "stack",
        conflicts_with = "stack"
    )]
    pub input_size: Option<Ints>,
    /// Batch size N.
    #[arg(long, default_value_t = 1, conflicts_with = "stack")]
    pub batch: usize,
    /// Spatial dimensions: 2 (Conv2d) or 1 (Conv1d).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2), conflicts_with = "stack")]
    pub dims: u8,
    /// A transposed convolution (ConvTranspose).
    #[arg(long, conflicts_with = "stack")]
    pub transposed: bool,
    /// Stride: S or SH,SW.
    #[arg(
        long,
        default_value = "1",
        value_name = "S|SH,SW",
        conflicts_with = "stack"
    )]
    pub stride: Ints,
    /// Padding: P, PH,PW, T,B,L,R, same, same-tf or valid.
    #[arg(
        long,
        default_value = "0",
        value_name = "P|PH,PW|T,B,L,R|same|same-tf|valid",
        conflicts_with = "stack"
    )]
    pub padding: PadArg,
    /// Dilation: D or DH,DW.
    #[arg(
        long,
        default_value = "1",
        value_name = "D|DH,DW",
        conflicts_with = "stack"
    )]
    pub dilation: Ints,
    /// Groups.
    #[arg(long, default_value_t = 1, conflicts_with = "stack")]
    pub groups: usize,
    /// Border mode: zeros, reflect, replicate, circular (direct only).
    #[arg(
        long,
        default_value = "zeros",
        value_name = "MODE",
        conflicts_with = "stack"
    )]
    pub padding_mode: PaddingMode,
    /// Transposed only: output padding P or PH,PW.
    #[arg(long, value_name = "P|PH,PW", conflicts_with = "stack")]
    pub output_padding: Option<Ints>,
    /// Transposed only: wanted output size H,W (1D: L).
    #[arg(long, value_name = "H,W", conflicts_with = "stack")]
    pub output_size: Option<Ints>,
    /// The layer has no bias.
    #[arg(long, conflicts_with = "stack")]
    pub no_bias: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A stack file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    /// Input shape: [N, C, H, W] or [N, C, L].
    input: Vec<usize>,
    /// The layers, in order.
    #[serde(rename = "layers", alias = "layer")]
    layers: Vec<LayerDef>,
}

/// One layer in a stack file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerDef {
    name: Option<String>,
    kind: Option<String>,
    in_channels: Option<usize>,
    out_channels: usize,
    kernel: OneOrMany,
    stride: Option<OneOrMany>,
    padding: Option<PadValue>,
    dilation: Option<OneOrMany>,
    groups: Option<usize>,
    bias: Option<bool>,
    padding_mode: Option<String>,
    output_padding: Option<OneOrMany>,
    output_size: Option<OneOrMany>,
}

/// `3` or `[3, 2]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<usize> {
        match self {
            OneOrMany::One(v) => vec![*v],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `1`, `[1, 2]` or `"same"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PadValue {
    Ints(OneOrMany),
    Rule(String),
}

fn parse_kind(s: &str) -> CliResult<Kind> {
    let (rank, transposed) = match s.replace('_', "-").as_str() {
        "conv2d" => (Rank::Two, false),
        "conv1d" => (Rank::One, false),
        "conv-transpose2d" => (Rank::Two, true),
        "conv-transpose1d" => (Rank::One, true),
        _ => {
            return Err(CliError::Usage(format!(
                "unknown layer kind '{s}' (expected conv2d, conv1d, conv-transpose2d or conv-transpose1d)"
            )))
        }
    };
    Ok(Kind { rank, transposed })
}

/// Named, validated layers, their rank and the NCHW input shape.
type Stack = (Vec<(Option<String>, ValidSpec)>, Rank, [usize; 4]);

/// Reads and validates a stack file into layers and an NCHW input shape.
fn load_stack(path: &Path) -> CliResult<Stack> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::file(path, e))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let file: StackFile = if is_json {
        serde_json::from_str(&text).map_err(|e| CliError::file(path, e))?
    } else {
        toml::from_str(&text).map_err(|e| CliError::file(path, e.message()))?
    };
    if file.layers.is_empty() {
        return Err(CliError::file(path, "the stack has no layers"));
    }
    let mut layers = Vec::new();
    let mut rank = None;
    let mut channels = file.input.get(1).copied().unwrap_or(0);
    for (i, d) in file.layers.iter().enumerate() {
        let at = |e: CliError| CliError::file(path, format!("layer {}: {e}", i + 1));
        let kind = parse_kind(d.kind.as_deref().unwrap_or("conv2d")).map_err(at)?;
        if rank.is_some_and(|r| r != kind.rank) {
            return Err(at(CliError::Usage("a stack mixes 1D and 2D layers".into())));
        }
        rank = Some(kind.rank);
        let mut l = Layer::new(
            kind,
            d.in_channels.unwrap_or(channels),
            d.out_channels,
            d.kernel.to_vec(),
        );
        if let Some(v) = &d.stride {
            l.stride = v.to_vec();
        }
        if let Some(v) = &d.dilation {
            l.dilation = v.to_vec();
        }
        l.padding = match &d.padding {
            None => PadArg::Values(vec![0]),
            Some(PadValue::Ints(v)) => PadArg::Values(v.to_vec()),
            Some(PadValue::Rule(r)) => r
                .parse::<PadArg>()
                .map_err(|e| at(CliError::Usage(format!("padding: {e}"))))?,
        };
        l.groups = d.groups.unwrap_or(1);
        l.bias = d.bias.unwrap_or(true);
        if let Some(m) = &d.padding_mode {
            l.padding_mode = m.parse().map_err(|e: String| at(CliError::Usage(e)))?;
        }
        l.output_padding = d.output_padding.as_ref().map(OneOrMany::to_vec);
        l.output_size = d.output_size.as_ref().map(OneOrMany::to_vec);
        let spec = l.build().map_err(at)?;
        channels = spec.out_channels();
        layers.push((d.name.clone(), spec));
    }
    let rank = rank.unwrap_or(Rank::Two);
    let input = match (rank, &file.input[..]) {
        (Rank::Two, [n, c, h, w]) => [*n, *c, *h, *w],
        (Rank::One, [n, c, l]) => [*n, *c, 1, *l],
        (Rank::Two, _) => {
            return Err(CliError::file(
                path,
                "input must be [N, C, H, W] for a 2D stack",
            ))
        }
        (Rank::One, _) => {
            return Err(CliError::file(
                path,
                "input must be [N, C, L] for a 1D stack",
            ))
        }
    };
    Ok((layers, rank, input))
}

/// Builds the one layer given by flags and its input shape.
fn flag_layer(a: &Args) -> CliResult<(ValidSpec, Rank, [usize; 4])> {
    let rank = if a.dims == 1 { Rank::One } else { Rank::Two };
    let kind = Kind {
        rank,
        transposed: a.transposed,
    };
    // clap enforces these unless --stack, which is handled before.
    let missing = |f: &str| CliError::Usage(format!("--{f} is required without --stack"));
    let in_ch = a.in_channels.ok_or_else(|| missing("in-channels"))?;
    let out_ch = a.out_channels.ok_or_else(|| missing("out-channels"))?;
    let kernel = a.kernel.clone().ok_or_else(|| missing("kernel"))?;
    let size = a.input_size.clone().ok_or_else(|| missing("input-size"))?;
    let mut l = Layer::new(kind, in_ch, out_ch, kernel.0);
    l.stride = a.stride.0.clone();
    l.padding = a.padding.clone();
    l.dilation = a.dilation.0.clone();
    l.groups = a.groups;
    l.padding_mode = a.padding_mode;
    l.output_padding = a.output_padding.as_ref().map(|v| v.0.clone());
    l.output_size = a.output_size.as_ref().map(|v| v.0.clone());
    l.bias = !a.no_bias;
    let spec = l.build()?;
    let input = match (rank, &size.0[..]) {
        (Rank::Two, [h, w]) => [a.batch, in_ch, *h, *w],
        (Rank::Two, [s]) => [a.batch, in_ch, *s, *s],
        (Rank::One, [len]) => [a.batch, in_ch, 1, *len],
        _ => {
            return Err(CliError::Usage(format!(
                "--input-size takes H,W for 2D or L for 1D, got {}",
                size
            )))
        }
    };
    Ok((spec, rank, input))
}

/// Runs `convkit explain`.
pub fn run(a: Args) -> CliResult {
    let (layers, rank, input) = match &a.stack {
        Some(p) => load_stack(p)?,
        None => {
            let (s, r, i) = flag_layer(&a)?;
            (vec![(None, s)], r, i)
        }
    };
    let specs: Vec<ValidSpec> = layers.iter().map(|(_, s)| *s).collect();
    let reports = analyze_stack(&specs, input)?;
    let names: Vec<Option<String>> = layers.into_iter().map(|(n, _)| n).collect();
    if a.json {
        let v = to_json(&reports, &names, rank, input);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| CliError::Usage(e.to_string()))?
        );
    } else {
        print!("{}", to_text(&reports, &names, rank));
    }
    Ok(())
}

/// `a×b` for 2D, `b` for 1D.
fn hw<T: std::fmt::Display>(rank: Rank, v: [T; 2]) -> String {
    match rank {
        Rank::Two => format!("{}x{}", v[0], v[1]),
        Rank::One => format!("{}", v[1]),
    }
}

/// Per-side amounts, named (`top 1, bottom 2, left 1, right 2`; 1D: `left, right`).
fn sides<T: std::fmt::Display + Copy>(rank: Rank, p: [T; 4]) -> String {
    match rank {
        Rank::Two => format!(
            "top {}, bottom {}, left {}, right {}",
            p[0], p[1], p[2], p[3]
        ),
        Rank::One => format!("left {}, right {}", p[2], p[3]),
    }
}

/// The other side of the transposed ↔ direct equivalence, in words and as a PyTorch layer.
pub fn equivalence_text(r: &LayerReport) -> String {
    let g = &r.geometry;
    let s = &g.spec;
    let rank = s.rank();
    match g.equivalent() {
        Equivalent::Direct {
            zero_insertion,
            padding,
            dilation,
            stretched_input,
            ..
        } => {
            let zeros = match (rank, zero_insertion) {
                (Rank::One, [_, z]) | (Rank::Two, [z, _]) if z == zero_insertion[1] => {
                    format!("{z} zero{}", if z == 1 { "" } else { "s" })
                }
                (_, [a, b]) => format!("{a} (rows) / {b} (columns) zeros"),
            };
            let mut t = format!(
                "= direct conv on the input with {zeros} inserted between cells ({} -> {}), ",
                hw(rank, [g.h, g.w]),
                hw(rank, stretched_input),
            );
            if padding.iter().all(|&p| p >= 0) {
                t += &format!("padded {}", sides(rank, padding));
            } else {
                t += &format!("padded (negative = cropped) {}", sides(rank, padding));
            }
            t += ", kernel flipped 180° with in/out swapped, stride 1";
            if padding.iter().all(|&p| p >= 0) {
                let p = padding.map(|v| v as usize);
                let mut d = match rank {
                    Rank::Two => ConvSpec::conv2d(g.c, g.k, s.kernel()),
                    Rank::One => ConvSpec::conv1d(g.c, g.k, s.kernel()[1]),
                };
                d = d
                    .padding_sides(p)
                    .dilation(dilation)
                    .groups(s.groups())
                    .bias(s.has_bias());
                if let Ok(v) = d.build() {
                    t += &format!(": {}", v.pytorch());
                }
            }
            t
        }
        Equivalent::Transposed {
            stride,
            padding,
            output_padding,
            dilation,
        } => {
            let symmetric = padding[0] == padding[1] && padding[2] == padding[3];
            let mut t = String::from("dL/dx = ");
            let spec = match rank {
                Rank::Two => ConvSpec::conv_transpose2d(g.k, g.c, s.kernel()),
                Rank::One => ConvSpec::conv_transpose1d(g.k, g.c, s.kernel()[1]),
            }
            .stride(stride)
            .padding_sides(padding)
            .output_padding(output_padding)
            .dilation(dilation)
            .groups(s.groups())
            .bias(false)
            .build();
            match spec {
                Ok(v) if symmetric => t += &format!("{}(dL/dy)", v.pytorch()),
                _ => {
                    t += &format!(
                        "transposed conv of dL/dy, stride {}, cropping {}, output_padding {}, dilation {}",
                        hw(rank, stride),
                        sides(rank, padding),
                        hw(rank, output_padding),
                        hw(rank, dilation)
                    );
                }
            }
            if s.padding_mode() != PaddingMode::Zeros {
                t += &format!(
                    ", then the {} border folded back onto the input (the padding's adjoint)",
                    s.padding_mode()
                );
            }
            t
        }
    }
}

fn to_text(reports: &[LayerReport], names: &[Option<String>], rank: Rank) -> String {
    let mut out = String::new();
    let (mut params, mut macs) = (0u64, 0u64);
    for (i, r) in reports.iter().enumerate() {
        let g = &r.geometry;
        let s = &g.spec;
        let name = names[i]
            .as_ref()
            .map(|n| format!(" {n}:"))
            .unwrap_or_default();
        out += &format!("layer {}{name} {}\n", i + 1, r.pytorch);
        let row = |k: &str, v: String| format!("  {k:<16} {v}\n");
        out += &row(
            "shape",
            format!(
                "{} -> {}",
                shape_str(&user_shape(rank, g.input_shape())),
                shape_str(&user_shape(rank, g.output_shape()))
            ),
        );
        let pad_label = if s.is_transposed() {
            "cropping"
        } else {
            "padding"
        };
        let mut pad = sides(rank, g.pad);
        if s.is_transposed() && g.output_padding != [0, 0] {
            pad += &format!(", output_padding {}", hw(rank, g.output_padding));
        }
        if !s.is_transposed() && s.padding_mode() != PaddingMode::Zeros {
            pad += &format!(" ({})", s.padding_mode());
        }
        out += &row(pad_label, pad);
        let bias = if s.has_bias() { s.out_channels() } else { 0 };
        out += &row(
            "params",
            format!(
                "{} (weights {} = {}, bias {})",
                thousands(r.params as u64),
                thousands(s.weight_count() as u64),
                shape_str(&s.weight_shape_dyn()),
                bias
            ),
        );
        out += &row(
            "MACs",
            format!("{} (FLOPs {})", thousands(r.macs), thousands(g.flops())),
        );
        out += &row(
            "receptive field",
            match r.receptive_field {
                Some(rf) => format!(
                    "{}, jump {}, start {}",
                    hw(rank, rf.size),
                    hw(rank, rf.jump),
                    match rank {
                        Rank::Two => format!("({}, {})", rf.start[0], rf.start[1]),
                        Rank::One => rf.start[1].to_string(),
                    }
                ),
                None => "not defined through a transposed layer (fractional)".into(),
            },
        );
        let label = if s.is_transposed() {
            "equivalent"
        } else {
            "gradient"
        };
        out += &row(label, equivalence_text(r));
        params = params.saturating_add(r.params as u64);
        macs = macs.saturating_add(r.macs);
    }
    if reports.len() > 1 {
        out += &format!(
            "total: {} params, {} MACs\n",
            thousands(params),
            thousands(macs)
        );
    }
    out
}

fn to_json(
    reports: &[LayerReport],
    names: &[Option<String>],
    rank: Rank,
    input: [usize; 4],
) -> Value {
    let layers: Vec<Value> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let g = &r.geometry;
            let s = &g.spec;
            json!({
                "name": names[i],
                "pytorch": r.pytorch,
                "transposed": s.is_transposed(),
                "input_shape": user_shape(rank, g.input_shape()),
                "output_shape": user_shape(rank, g.output_shape()),
                "padding": g.pad,
                "padding_mode": s.padding_mode(),
                "output_padding": g.output_padding,
                "weight_shape": s.weight_shape_dyn(),
                "weights": s.weight_count(),
                "params": r.params,
                "macs": r.macs,
                "flops": g.flops(),
                "receptive_field": r.receptive_field,
                "equivalent": g.equivalent(),
                "equivalent_text": equivalence_text(r),
            })
        })
        .collect();
    json!({
        "input_shape": user_shape(rank, input),
        "layers": layers,
        "total_params": reports.iter().map(|r| r.params as u64).sum::<u64>(),
        "total_macs": reports.iter().map(|r| r.macs).fold(0u64, u64::saturating_add),
    })
}
