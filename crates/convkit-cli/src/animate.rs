//! `convkit animate`: conv_arithmetic-style animations of any layer (GIF, SVG, PNG, HTML), or the
//! whole gallery.

use crate::error::{CliError, CliResult};
use crate::layer::{Ints, Kind, Layer, PadArg};
use convkit::{PaddingMode, Rank};
use convkit_viz::html::{html, HtmlOptions};
use convkit_viz::raster::{gif, png, RasterOptions};
use convkit_viz::svg::{svg, SvgOptions};
use convkit_viz::{views, Request, View, VizError};
use std::path::{Path, PathBuf};

/// Draw a convolution the way conv_arithmetic does, for any layer.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input size H[,W].
    #[arg(long, value_name = "H[,W]", required_unless_present = "gallery")]
    pub input_size: Option<Ints>,
    /// Kernel size K or KH,KW.
    #[arg(long, value_name = "K|KH,KW", default_value = "3")]
    pub kernel: Ints,
    /// Stride S or SH,SW.
    #[arg(long, value_name = "S|SH,SW", default_value = "1")]
    pub stride: Ints,
    /// Padding: P, PH,PW or T,B,L,R, or same (PyTorch, stride 1), same-tf (TensorFlow SAME),
    /// valid.
    #[arg(
        long,
        value_name = "P|PH,PW|T,B,L,R|same|same-tf|valid",
        default_value = "0"
    )]
    pub padding: PadArg,
    /// Dilation D or DH,DW.
    #[arg(long, value_name = "D|DH,DW", default_value = "1")]
    pub dilation: Ints,
    /// Border mode for the padding (direct only): zeros, reflect, replicate, circular.
    #[arg(long, value_name = "MODE")]
    pub padding_mode: Option<PaddingMode>,
    /// Transposed only: extra rows/columns on the bottom/right of the output, A or AH,AW.
    #[arg(long, value_name = "A|AH,AW")]
    pub output_padding: Option<Ints>,
    /// Transposed only: wanted output size H,W; derives the output padding.
    #[arg(long, value_name = "H,W")]
    pub output_size: Option<Ints>,
    /// Draw a transposed convolution.
    #[arg(long)]
    pub transposed: bool,
    /// Input channels (depthwise-separable and grouped views).
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
    /// Output channels (depthwise-separable and grouped views).
    #[arg(long, default_value_t = 1)]
    pub out_channels: usize,
    /// Groups (grouped view).
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// View: auto, direct, transposed-as-direct, scatter, depthwise-separable,
    /// spatially-separable, grouped.
    #[arg(long, default_value = "auto")]
    pub view: View,
    /// Print values in the cells (small integers in, the reference engine's output out).
    #[arg(long)]
    pub numeric: bool,
    /// Output file: .gif, .svg, .png (one frame, see --frame) or .html (interactive page).
    #[arg(short, long, value_name = "FILE", required_unless_present = "gallery")]
    pub output: Option<PathBuf>,
    /// Write conv_arithmetic's 15 animations and the new views (GIF, SVG, HTML) and an
    /// index.html into DIR instead.
    #[arg(long, value_name = "DIR", conflicts_with = "output")]
    pub gallery: Option<PathBuf>,
    /// Cell size in pixels (default 24; 32 for HTML).
    #[arg(long)]
    pub cell_px: Option<u32>,
    /// Time per frame in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub delay_ms: u32,
    /// How many times the GIF plays (0 = forever).
    #[arg(long = "loop", default_value_t = 0)]
    pub loops: u16,
    /// Frame drawn for a .png output (0-based).
    #[arg(long, default_value_t = 0)]
    pub frame: usize,
}

fn viz_err(e: VizError) -> CliError {
    match e {
        VizError::Conv(c) => CliError::Conv(c),
        VizError::Io { path, source } => CliError::File {
            path,
            msg: source.to_string(),
        },
        other => CliError::Usage(other.to_string()),
    }
}

fn write(path: &Path, bytes: &[u8]) -> CliResult {
    crate::io::write_atomic(path, &[], |w| w.write_all(bytes))
}

/// Runs `convkit animate`.
pub fn run(args: Args) -> CliResult {
    if let Some(dir) = &args.gallery {
        let items = convkit_viz::write_gallery(dir).map_err(viz_err)?;
        let files: usize = items.iter().map(|i| i.files.len()).sum();
        println!(
            "wrote {} animations ({files} files) to {}; open {}",
            items.len(),
            dir.display(),
            dir.join("index.html").display()
        );
        return Ok(());
    }
    let (Some(input), Some(out)) = (args.input_size.as_ref(), args.output.as_ref()) else {
        return Err(CliError::Usage(
            "--input-size and -o are required (or use --gallery DIR)".into(),
        ));
    };
    let input = match input.0[..] {
        [n] => [n, n],
        [h, w] => [h, w],
        _ => {
            return Err(CliError::Usage(format!(
                "--input-size takes H or H,W, got {} values",
                input.0.len()
            )))
        }
    };
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !matches!(ext.as_str(), "gif" | "svg" | "png" | "html" | "htm") {
        return Err(CliError::Usage(format!(
            "{}: the output must end in .gif, .svg, .png or .html",
            out.display()
        )));
    }
    let kind = Kind {
        rank: Rank::Two,
        transposed: args.transposed,
    };
    let mut layer = Layer::new(
        kind,
        args.in_channels,
        args.out_channels,
        args.kernel.0.clone(),
    );
    layer.stride = args.stride.0.clone();
    layer.padding = args.padding.clone();
    layer.dilation = args.dilation.0.clone();
    layer.groups = args.groups;
    layer.padding_mode = args.padding_mode.unwrap_or_default();
    layer.output_padding = args.output_padding.as_ref().map(|v| v.0.clone());
    layer.output_size = args.output_size.as_ref().map(|v| v.0.clone());
    layer.bias = false;
    let spec = layer.build()?;
    let req = Request::new(spec, input)
        .view(args.view)
        .numeric(args.numeric);
    let scene = views::build(&req)?;
    let bytes = match ext.as_str() {
        "gif" => gif(
            &scene,
            &RasterOptions {
                cell_px: args.cell_px.unwrap_or(24),
                delay_ms: args.delay_ms,
                loops: (args.loops != 0).then_some(args.loops),
            },
        ),
        "png" => png(
            &scene,
            args.frame,
            &RasterOptions {
                cell_px: args.cell_px.unwrap_or(24),
                delay_ms: args.delay_ms,
                loops: None,
            },
        ),
        "svg" => svg(
            &scene,
            &SvgOptions {
                cell_px: args.cell_px.unwrap_or(24),
                delay_ms: args.delay_ms,
            },
        )
        .map(String::into_bytes),
        _ => html(
            &scene,
            &HtmlOptions {
                cell_px: args.cell_px.unwrap_or(32),
                delay_ms: args.delay_ms,
            },
        )
        .map(String::into_bytes),
    }
    .map_err(viz_err)?;
    write(out, &bytes)?;
    println!(
        "{}: {} frames ({}), {} bytes",
        out.display(),
        scene.frames.len(),
        scene.title,
        bytes.len()
    );
    Ok(())
}
