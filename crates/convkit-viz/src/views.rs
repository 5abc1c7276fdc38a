//! Builds a [`Scene`] for a layer: every size from [`ValidSpec::geometry`] and
//! [`convkit::Geometry::equivalent`], every value from [`convkit::reference::forward`], every
//! parameter count from [`ValidSpec`] and [`convkit::arith`].

use crate::scene::{Cell, CellKind, CellRef, Frame, Line, Panel, Scene, GROUP_COLOURS};
use convkit::border::{self, Border};
use convkit::geometry::Equivalent;
use convkit::{arith, reference, ConvError, ConvSpec, Padding, Result, ValidSpec};
use ndarray::Array4;

/// Which picture of the layer to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum View {
    /// [`View::Direct`] for a direct layer, [`View::TransposedAsDirect`] for a transposed one.
    #[default]
    Auto,
    /// conv_arithmetic's picture: the kernel slides over the (padded) input, one frame per
    /// output cell.
    Direct,
    /// A transposed layer as its equivalent direct convolution (Dumoulin & Visin §4): inputs
    /// spread `s` apart with zeros, padded `d(k−1)−p` (+ output_padding bottom/right), the kernel
    /// flipped, stride 1.
    TransposedAsDirect,
    /// A transposed layer as a scatter: each input cell times the whole kernel, added into the
    /// output at offset `i·s`; one frame per input cell; with the overlap-count heat map.
    Scatter,
    /// Depthwise separable: C maps, one kernel each, then 1×1 kernels mixing C into K.
    DepthwiseSeparable,
    /// Spatially separable: a `k_h×1` pass then a `1×k_w` pass, beside the 2D kernel.
    SpatiallySeparable,
    /// Grouped: which input channels feed which output channels, one frame per output cell of
    /// every output channel.
    Grouped,
}

impl View {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            View::Auto => "auto",
            View::Direct => "direct",
            View::TransposedAsDirect => "transposed-as-direct",
            View::Scatter => "scatter",
            View::DepthwiseSeparable => "depthwise-separable",
            View::SpatiallySeparable => "spatially-separable",
            View::Grouped => "grouped",
        }
    }
}

impl std::str::FromStr for View {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => View::Auto,
            "direct" => View::Direct,
            "transposed-as-direct" | "equivalent" => View::TransposedAsDirect,
            "scatter" => View::Scatter,
            "depthwise-separable" | "dwsep" => View::DepthwiseSeparable,
            "spatially-separable" | "separable" => View::SpatiallySeparable,
            "grouped" => View::Grouped,
            _ => {
                return Err(format!(
                    "unknown view '{s}' (expected auto, direct, transposed-as-direct, scatter, \
                     depthwise-separable, spatially-separable or grouped)"
                ))
            }
        })
    }
}

/// What to animate: a validated layer, an input size and a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The layer.
    pub spec: ValidSpec,
    /// Input `[h, w]`.
    pub input: [usize; 2],
    /// Which picture.
    pub view: View,
    /// Print values in the cells (small integers in, reference engine out).
    pub numeric: bool,
    /// File-name stem and title; derived from the view when `None`.
    pub name: Option<String>,
}

impl Request {
    /// A request with the automatic view, no numbers and a derived name.
    pub fn new(spec: ValidSpec, input: [usize; 2]) -> Self {
        Request {
            spec,
            input,
            view: View::Auto,
            numeric: false,
            name: None,
        }
    }
    /// Sets the view.
    pub fn view(mut self, view: View) -> Self {
        self.view = view;
        self
    }
    /// Sets numerical mode.
    pub fn numeric(mut self, numeric: bool) -> Self {
        self.numeric = numeric;
        self
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Most channels a multi-channel view draws (more would not fit a picture).
pub const MAX_CHANNELS: usize = 8;
/// Most cells per panel side drawn (larger layers make unreadable, huge animations).
pub const MAX_SIDE: usize = 64;

/// Builds the scene for a request: checks the layer on the input (the spec's own errors), then
/// lays out the chosen view.
pub fn build(req: &Request) -> Result<Scene> {
    let spec = &req.spec;
    let [h, w] = req.input;
    // The spec's own validation of the input comes first, so bad parameters give its error.
    let geom = spec.geometry([1, spec.in_channels(), h, w])?;
    let side = [geom.h, geom.w, geom.oh, geom.ow]
        .into_iter()
        .chain(spec.kernel())
        .chain(spec.dilated_kernel())
        .max()
        .unwrap_or(0);
    if side > MAX_SIDE {
        return Err(ConvError::Unsupported(format!(
            "animations draw at most {MAX_SIDE} cells per side; this layer needs {side}"
        )));
    }
    let view = match (req.view, spec.is_transposed()) {
        (View::Auto, false) => View::Direct,
        (View::Auto, true) => View::TransposedAsDirect,
        (v, _) => v,
    };
    let needs_transposed = matches!(view, View::TransposedAsDirect | View::Scatter);
    if needs_transposed != spec.is_transposed() {
        return Err(ConvError::Unsupported(format!(
            "the {} view needs a {} convolution",
            view.name(),
            if needs_transposed {
                "transposed"
            } else {
                "direct (not transposed)"
            }
        )));
    }
    let mut scene = match view {
        View::Auto | View::Direct => direct(spec, &geom, req.numeric)?,
        View::TransposedAsDirect => transposed_as_direct(spec, &geom, req.numeric)?,
        View::Scatter => scatter(spec, &geom, req.numeric)?,
        View::DepthwiseSeparable => depthwise_separable(spec, &geom, req.numeric)?,
        View::SpatiallySeparable => spatially_separable(spec, &geom, req.numeric)?,
        View::Grouped => grouped(spec, &geom, req.numeric)?,
    };
    scene.pytorch = spec.pytorch();
    if let Some(n) = &req.name {
        scene.name = n.clone();
    }
    Ok(scene)
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// Input of conv_arithmetic's numerical figure (Dumoulin & Visin 2016, fig. 1.1).
const CA_INPUT: [[i32; 5]; 5] = [
    [3, 3, 2, 1, 0],
    [0, 0, 1, 3, 1],
    [3, 1, 2, 2, 3],
    [2, 0, 0, 2, 2],
    [2, 0, 0, 0, 1],
];
/// Kernel of the same figure.
const CA_KERNEL: [[i32; 3]; 3] = [[0, 1, 2], [2, 2, 0], [0, 1, 2]];

/// Small integer input `(1, c, h, w)`: conv_arithmetic's figure for a 5×5 first channel,
/// otherwise a fixed pattern of 0..3.
pub fn demo_input(c: usize, h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, c, h, w), |(_, ch, y, x)| {
        if ch == 0 && h == 5 && w == 5 {
            CA_INPUT[y][x] as f32
        } else {
            ((3 * y + 2 * x + 5 * ch + 1) % 4) as f32
        }
    })
}

/// Small integer weights of `shape`: conv_arithmetic's 3×3 kernel for the first one, otherwise
/// a fixed pattern of 0..2.
pub fn demo_weight(shape: [usize; 4]) -> Array4<f32> {
    Array4::from_shape_fn(shape, |(a, b, ky, kx)| {
        if a == 0 && b == 0 && shape[2] == 3 && shape[3] == 3 {
            CA_KERNEL[ky][kx] as f32
        } else {
            ((2 * ky + kx + a + b) % 3) as f32
        }
    })
}

/// A value as printed in a cell: integers without a decimal point.
pub fn fmt_value(v: f32) -> String {
    if (v - v.round()).abs() < 1e-4 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// The same spatial layer with one input and one output channel and no bias.
fn single_channel(spec: &ValidSpec) -> Result<ValidSpec> {
    let s = *spec.spec();
    ConvSpec {
        in_channels: 1,
        out_channels: 1,
        groups: 1,
        bias: false,
        ..s
    }
    .build()
}

// ---------------------------------------------------------------------------------------------
// Text

fn dims(p: [usize; 2]) -> String {
    format!("{}×{}", p[0], p[1])
}

fn pair(p: [usize; 2]) -> String {
    if p[0] == p[1] {
        format!("{}", p[0])
    } else {
        format!("({}, {})", p[0], p[1])
    }
}

fn sides(p: [usize; 4]) -> String {
    if p.iter().all(|&v| v == p[0]) {
        format!("{}", p[0])
    } else if p[0] == p[1] && p[2] == p[3] {
        format!("({}, {})", p[0], p[2])
    } else {
        format!("top {} bottom {} left {} right {}", p[0], p[1], p[2], p[3])
    }
}

/// Per-axis formula lines: one line when both axes have the same numbers, else one per axis.
fn per_axis(lines: [String; 2], same: bool) -> Vec<String> {
    if same {
        vec![lines[0].clone()]
    } else {
        let [a, b] = lines;
        vec![format!("height: {a}"), format!("width: {b}")]
    }
}

/// Direct output size with its numbers (Dumoulin & Visin relationship 15).
fn direct_formula(
    i: usize,
    pb: usize,
    pa: usize,
    k: usize,
    s: usize,
    d: usize,
    o: usize,
) -> String {
    let num = (i + pb + pa) as i64 - (d * (k - 1)) as i64 - 1;
    debug_assert_eq!((num / s as i64 + 1) as usize, o);
    if pb == pa {
        format!(
            "o = ⌊(i + 2p − d(k−1) − 1)/s⌋ + 1 = ⌊({i} + 2·{pb} − {d}·({k}−1) − 1)/{s}⌋ + 1 = {o}"
        )
    } else {
        format!(
            "o = ⌊(i + p₁ + p₂ − d(k−1) − 1)/s⌋ + 1 = ⌊({i} + {pb} + {pa} − {d}·({k}−1) − 1)/{s}⌋ + 1 = {o}"
        )
        .replace('₁', "_b")
        .replace('₂', "_a")
    }
}

/// Transposed output size with its numbers (PyTorch ConvTranspose2d; D&V relationship 14).
#[allow(clippy::too_many_arguments)]
fn transposed_formula(
    i: usize,
    pb: usize,
    pa: usize,
    k: usize,
    s: usize,
    d: usize,
    a: usize,
    o: usize,
) -> String {
    let v = ((i - 1) * s + d * (k - 1) + a + 1) as i64 - (pb + pa) as i64;
    debug_assert_eq!(v, o as i64);
    if pb == pa {
        format!(
            "o = (i − 1)·s − 2p + d(k−1) + a + 1 = ({i} − 1)·{s} − 2·{pb} + {d}·({k}−1) + {a} + 1 = {o}"
        )
    } else {
        format!(
            "o = (i − 1)·s − p_b − p_a + d(k−1) + a + 1 = ({i} − 1)·{s} − {pb} − {pa} + {d}·({k}−1) + {a} + 1 = {o}"
        )
    }
}

fn direct_caption(spec: &ValidSpec, g: &convkit::Geometry) -> Vec<String> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let p = g.pad;
    let mut lines = vec![format!(
        "input {}, kernel {}, stride {}, padding {}, dilation {} → output {}",
        dims([g.h, g.w]),
        dims([kh, kw]),
        pair([sh, sw]),
        if spec.padding_mode() == convkit::PaddingMode::Zeros {
            sides(p)
        } else {
            format!("{} ({})", sides(p), spec.padding_mode())
        },
        pair([dh, dw]),
        dims([g.oh, g.ow])
    )];
    let f = [
        direct_formula(g.h, p[0], p[1], kh, sh, dh, g.oh),
        direct_formula(g.w, p[2], p[3], kw, sw, dw, g.ow),
    ];
    let same = f[0] == f[1];
    lines.extend(per_axis(f, same));
    lines
}

fn transposed_caption(spec: &ValidSpec, g: &convkit::Geometry) -> Vec<String> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let p = g.pad;
    let a = g.output_padding;
    let mut lines = vec![format!(
        "transposed: input {}, kernel {}, stride {}, padding {}, dilation {}, output_padding {} → output {}",
        dims([g.h, g.w]),
        dims([kh, kw]),
        pair([sh, sw]),
        sides(p),
        pair([dh, dw]),
        pair(a),
        dims([g.oh, g.ow])
    )];
    let f = [
        transposed_formula(g.h, p[0], p[1], kh, sh, dh, a[0], g.oh),
        transposed_formula(g.w, p[2], p[3], kw, sw, dw, a[1], g.ow),
    ];
    let same = f[0] == f[1];
    lines.extend(per_axis(f, same));
    lines
}

fn weights_line(spec: &ValidSpec) -> String {
    let ws = spec.weight_shape();
    format!(
        "weights {}·{}·{}·{} = {} (+{} bias) = {} parameters",
        ws[0],
        ws[1],
        ws[2],
        ws[3],
        spec.weight_count(),
        spec.param_count() - spec.weight_count(),
        spec.param_count()
    )
}

// ---------------------------------------------------------------------------------------------
// Layout helpers

/// Accumulates panels and frames.
struct Builder {
    panels: Vec<Panel>,
    lines: Vec<Line>,
    frames: Vec<Frame>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            panels: Vec::new(),
            lines: Vec::new(),
            frames: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn panel(
        &mut self,
        id: impl Into<String>,
        label: impl Into<String>,
        x: f32,
        y: f32,
        rows: usize,
        cols: usize,
        origin: [i64; 2],
        cell: impl FnMut(usize, usize) -> Cell,
    ) -> usize {
        let mut cell = cell;
        let mut cells = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                cells.push(cell(r, c));
            }
        }
        self.panels.push(Panel {
            id: id.into(),
            label: label.into(),
            x,
            y,
            rows,
            cols,
            origin,
            cells,
        });
        self.panels.len() - 1
    }

    fn all(&self, p: usize) -> Vec<CellRef> {
        let pn = &self.panels[p];
        (0..pn.rows)
            .flat_map(|r| (0..pn.cols).map(move |c| [p, r, c]))
            .collect()
    }

    fn finish(self, name: &str, title: String, caption: Vec<String>, heat_max: u32) -> Scene {
        let mut width: f32 = 0.0;
        let mut height: f32 = 0.0;
        for p in &self.panels {
            width = width.max(p.x + p.cols as f32);
            height = height.max(p.y + p.rows as f32);
        }
        Scene {
            name: name.to_string(),
            title,
            width,
            height,
            panels: self.panels,
            lines: self.lines,
            frames: self.frames,
            caption,
            pytorch: String::new(),
            heat_max,
        }
    }
}

/// Sum `a·b + …` with its numbers, or `0` for no terms.
fn sum_note(target: String, terms: &[(f32, f32)], value: f32) -> String {
    if terms.is_empty() {
        return format!("{target} = 0");
    }
    let body: Vec<String> = terms
        .iter()
        .map(|(a, b)| format!("{}·{}", fmt_value(*a), fmt_value(*b)))
        .collect();
    format!("{target} = {} = {}", body.join(" + "), fmt_value(value))
}

/// Kernel cell text: the tap number in PyTorch's order (1-based), or the weight.
fn tap_label(ky: usize, kx: usize, kw: usize) -> String {
    format!("{}", ky * kw + kx + 1)
}

// ---------------------------------------------------------------------------------------------
// Views

fn direct(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let [pt, pb, pl, pr] = g.pad;
    let (ph, pw) = (g.h + pt + pb, g.w + pl + pr);
    // Numbers: the padded input as the reference engine sees it, and its output.
    let values = if numeric {
        let one = single_channel(spec)?;
        let x = demo_input(1, g.h, g.w);
        let wt = demo_weight(one.weight_shape());
        let y = reference::forward(&one, x.view(), wt.view(), None)?;
        let xp = border::pad(x.view(), g.pad, Border::from(spec.padding_mode()));
        Some((xp, wt, y))
    } else {
        None
    };
    let mut b = Builder::new();
    let out_x = (pw as f32 - g.ow as f32) / 2.0;
    let out = b.panel(
        "output",
        "output",
        out_x.max(0.0),
        1.0,
        g.oh,
        g.ow,
        [0, 0],
        |r, c| match &values {
            Some((_, _, y)) => Cell::text(CellKind::Output, fmt_value(y[[0, 0, r, c]])),
            None => Cell::new(CellKind::Output),
        },
    );
    let in_y = 1.0 + g.oh as f32 + 2.0;
    let in_x = (-out_x).max(0.0);
    let inp = b.panel(
        "input",
        "input",
        in_x,
        in_y,
        ph,
        pw,
        [-(pt as i64), -(pl as i64)],
        |r, c| {
            let inside = r >= pt && r < pt + g.h && c >= pl && c < pl + g.w;
            let kind = if inside {
                CellKind::Input
            } else {
                CellKind::Padding
            };
            match &values {
                Some((xp, _, _)) => Cell::text(kind, fmt_value(xp[[0, 0, r, c]])),
                None => Cell::new(kind),
            }
        },
    );
    let ker = b.panel(
        "kernel",
        "kernel",
        in_x + pw as f32 + 1.5,
        in_y,
        kh,
        kw,
        [0, 0],
        |r, c| match &values {
            Some((_, wt, _)) => Cell::text(CellKind::Kernel, fmt_value(wt[[0, 0, r, c]])),
            None => Cell::text(CellKind::Kernel, tap_label(r, c, kw)),
        },
    );
    let kernel_cells = b.all(ker);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut hl = Vec::with_capacity(kh * kw * 2 + 1);
            let mut terms = Vec::new();
            for ky in 0..kh {
                for kx in 0..kw {
                    let (r, c) = (oy * sh + ky * dh, ox * sw + kx * dw);
                    hl.push([inp, r, c]);
                    if let Some((xp, wt, _)) = &values {
                        terms.push((xp[[0, 0, r, c]], wt[[0, 0, ky, kx]]));
                    }
                }
            }
            let weights = kernel_cells.clone();
            hl.push([out, oy, ox]);
            let note = match &values {
                Some((_, _, y)) => sum_note(format!("y[{oy},{ox}]"), &terms, y[[0, 0, oy, ox]]),
                None => {
                    let (r0, c0) = ((oy * sh) as i64 - pt as i64, (ox * sw) as i64 - pl as i64);
                    format!(
                        "output ({oy}, {ox}) ← input rows {r0}…{}, cols {c0}…{}",
                        r0 + (dh * (kh - 1)) as i64,
                        c0 + (dw * (kw - 1)) as i64
                    )
                }
            };
            b.frames.push(Frame {
                highlights: hl,
                weights,
                focus: vec![[out, oy, ox]],
                note,
            });
        }
    }
    let mut caption = direct_caption(spec, g);
    caption.push(weights_line(spec));
    let title = format!(
        "Convolution: {} input, {} kernel, stride {}, padding {}, dilation {}",
        dims([g.h, g.w]),
        dims([kh, kw]),
        pair([sh, sw]),
        sides(g.pad),
        pair([dh, dw])
    );
    Ok(b.finish("convolution", title, caption, 0))
}

/// The stretched, padded input of a transposed layer's equivalent direct convolution.
struct Stretched {
    /// Padding `[top, bottom, left, right]` of the stretched input (negative crops).
    pad: [i64; 4],
    /// Size after zero insertion `(i−1)·s+1`.
    size: [usize; 2],
    /// Panel size.
    rows: usize,
    cols: usize,
}

fn stretched(g: &convkit::Geometry) -> Result<Stretched> {
    match g.equivalent() {
        Equivalent::Direct {
            padding,
            stretched_input,
            ..
        } => {
            let rows = stretched_input[0] as i64 + padding[0] + padding[1];
            let cols = stretched_input[1] as i64 + padding[2] + padding[3];
            if rows <= 0 || cols <= 0 {
                return Err(ConvError::Unsupported(
                    "the equivalent direct convolution has an empty input".into(),
                ));
            }
            Ok(Stretched {
                pad: padding,
                size: stretched_input,
                rows: rows as usize,
                cols: cols as usize,
            })
        }
        Equivalent::Transposed { .. } => Err(ConvError::Unsupported(
            "the transposed-as-direct view needs a transposed convolution".into(),
        )),
    }
}

fn transposed_as_direct(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let st = stretched(g)?;
    let a = g.output_padding;
    let values = if numeric {
        let one = single_channel(spec)?;
        let x = demo_input(1, g.h, g.w);
        let wt = demo_weight(one.weight_shape());
        let y = reference::forward(&one, x.view(), wt.view(), None)?;
        Some((x, wt, y))
    } else {
        None
    };
    // Kind and input index of a cell of the stretched, padded grid.
    let cell_of = |r: usize, c: usize| -> (CellKind, Option<(usize, usize)>) {
        let (y, x) = (r as i64 - st.pad[0], c as i64 - st.pad[2]);
        let outside_y = y < 0 || y >= st.size[0] as i64;
        let outside_x = x < 0 || x >= st.size[1] as i64;
        if outside_y || outside_x {
            // The last `a` rows/columns are output padding (only added bottom/right).
            let op = (r + a[0] >= st.rows && y >= st.size[0] as i64)
                || (c + a[1] >= st.cols && x >= st.size[1] as i64);
            (
                if op {
                    CellKind::OutputPadding
                } else {
                    CellKind::Padding
                },
                None,
            )
        } else if !(y as usize).is_multiple_of(sh) || !(x as usize).is_multiple_of(sw) {
            (CellKind::Zero, None)
        } else {
            (CellKind::Input, Some((y as usize / sh, x as usize / sw)))
        }
    };
    let mut b = Builder::new();
    let out_x = (st.cols as f32 - g.ow as f32) / 2.0;
    let out = b.panel(
        "output",
        "output",
        out_x.max(0.0),
        1.0,
        g.oh,
        g.ow,
        [0, 0],
        |r, c| match &values {
            Some((_, _, y)) => Cell::text(CellKind::Output, fmt_value(y[[0, 0, r, c]])),
            None => Cell::new(CellKind::Output),
        },
    );
    let in_y = 1.0 + g.oh as f32 + 2.0;
    let in_x = (-out_x).max(0.0);
    let inp = b.panel(
        "input",
        "input",
        in_x,
        in_y,
        st.rows,
        st.cols,
        [-st.pad[0], -st.pad[2]],
        |r, c| {
            let (kind, src) = cell_of(r, c);
            match (&values, src) {
                (Some((x, _, _)), Some((iy, ix))) => Cell::text(kind, fmt_value(x[[0, 0, iy, ix]])),
                _ => Cell::new(kind),
            }
        },
    );
    // The kernel of the equivalent convolution is the transposed layer's, rotated 180°.
    let ker = b.panel(
        "kernel",
        "flipped kernel",
        in_x + st.cols as f32 + 1.5,
        in_y,
        kh,
        kw,
        [0, 0],
        |r, c| {
            let (fy, fx) = (kh - 1 - r, kw - 1 - c);
            match &values {
                Some((_, wt, _)) => Cell::text(CellKind::Kernel, fmt_value(wt[[0, 0, fy, fx]])),
                None => Cell::text(CellKind::Kernel, tap_label(fy, fx, kw)),
            }
        },
    );
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut hl = Vec::new();
            let mut weights = Vec::new();
            let mut terms = Vec::new();
            for ky in 0..kh {
                for kx in 0..kw {
                    let (r, c) = (oy + ky * dh, ox + kx * dw);
                    hl.push([inp, r, c]);
                    weights.push([ker, ky, kx]);
                    if let (Some((x, wt, _)), (_, Some((iy, ix)))) = (&values, cell_of(r, c)) {
                        terms.push((x[[0, 0, iy, ix]], wt[[0, 0, kh - 1 - ky, kw - 1 - kx]]));
                    }
                }
            }
            hl.push([out, oy, ox]);
            let note = match &values {
                Some((_, _, y)) => sum_note(format!("y[{oy},{ox}]"), &terms, y[[0, 0, oy, ox]]),
                None => format!(
                    "output ({oy}, {ox}): stride-1 convolution with the flipped kernel; \
                     zeros and padding add nothing"
                ),
            };
            b.frames.push(Frame {
                highlights: hl,
                weights,
                focus: vec![[out, oy, ox]],
                note,
            });
        }
    }
    let mut caption = transposed_caption(spec, g);
    let [ph, pw] = [0, 1].map(|ax| spec.dilated_kernel()[ax] as i64 - 1 - g.pad[2 * ax] as i64);
    caption.push(format!(
        "as a direct convolution: {} zero(s) between inputs → {}, padding d(k−1)−p = {}{}, \
         kernel flipped, stride 1",
        pair([sh - 1, sw - 1]),
        dims(st.size),
        if ph == pw {
            format!("{ph}")
        } else {
            format!("({ph}, {pw})")
        },
        if a != [0, 0] {
            format!(" + output_padding {} bottom/right", pair(a))
        } else {
            String::new()
        }
    ));
    caption.push(weights_line(spec));
    let title = format!(
        "Transposed convolution as a direct one: {} input, {} kernel, stride {}, padding {}",
        dims([g.h, g.w]),
        dims([kh, kw]),
        pair([sh, sw]),
        sides(g.pad)
    );
    Ok(b.finish("transposed_convolution", title, caption, 0))
}

/// Overlap counts of a transposed layer: how many (input cell, tap) pairs land on each output
/// cell. Odena et al. (2016): uneven when k is not divisible by s (the checkerboard).
pub fn overlap_counts(spec: &ValidSpec, input: [usize; 2]) -> Result<Vec<Vec<u32>>> {
    let g = spec.geometry([1, spec.in_channels(), input[0], input[1]])?;
    if !spec.is_transposed() {
        return Err(ConvError::Unsupported(
            "overlap counts are defined for transposed convolutions".into(),
        ));
    }
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let mut m = vec![vec![0u32; g.ow]; g.oh];
    for iy in 0..g.h {
        for ix in 0..g.w {
            for ky in 0..kh {
                for kx in 0..kw {
                    let r = (iy * sh + ky * dh) as i64 - g.pad[0] as i64;
                    let c = (ix * sw + kx * dw) as i64 - g.pad[2] as i64;
                    if r >= 0 && c >= 0 && (r as usize) < g.oh && (c as usize) < g.ow {
                        m[r as usize][c as usize] += 1;
                    }
                }
            }
        }
    }
    Ok(m)
}

fn scatter(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let ext = spec.dilated_kernel();
    let (pt, pl) = (g.pad[0], g.pad[2]);
    // The uncropped canvas: every product lands on it; padding crops its border.
    let full = [(g.h - 1) * sh + ext[0], (g.w - 1) * sw + ext[1]];
    let (rows, cols) = (full[0].max(pt + g.oh), full[1].max(pl + g.ow));
    let counts = overlap_counts(spec, [g.h, g.w])?;
    let heat_max = counts.iter().flatten().copied().max().unwrap_or(0);
    let values = if numeric {
        let one = single_channel(spec)?;
        let x = demo_input(1, g.h, g.w);
        let wt = demo_weight(one.weight_shape());
        let y = reference::forward(&one, x.view(), wt.view(), None)?;
        Some((x, wt, y))
    } else {
        None
    };
    let kept = |r: usize, c: usize| r >= pt && r < pt + g.oh && c >= pl && c < pl + g.ow;
    let mut b = Builder::new();
    let out = b.panel(
        "output",
        if g.pad == [0; 4] {
            "output".to_string()
        } else {
            "output (dashed: cropped by padding)".to_string()
        },
        0.0,
        1.0,
        rows,
        cols,
        [-(pt as i64), -(pl as i64)],
        |r, c| {
            if !kept(r, c) {
                return Cell::new(CellKind::Padding);
            }
            match &values {
                Some((_, _, y)) => {
                    Cell::text(CellKind::Output, fmt_value(y[[0, 0, r - pt, c - pl]]))
                }
                None => Cell::new(CellKind::Output),
            }
        },
    );
    let heat_x = cols as f32 + 1.5 + pl as f32;
    let heat = b.panel(
        "overlap",
        "overlap count",
        heat_x,
        1.0 + pt as f32,
        g.oh,
        g.ow,
        [0, 0],
        |r, c| Cell {
            kind: CellKind::Heat,
            text: Some(counts[r][c].to_string()),
            level: Some(counts[r][c]),
        },
    );
    let in_y = 1.0 + rows as f32 + 2.0;
    let in_x = ((cols as f32 - g.w as f32) / 2.0).max(0.0).floor();
    let inp = b.panel(
        "input",
        "input",
        in_x,
        in_y,
        g.h,
        g.w,
        [0, 0],
        |r, c| match &values {
            Some((x, _, _)) => Cell::text(CellKind::Input, fmt_value(x[[0, 0, r, c]])),
            None => Cell::new(CellKind::Input),
        },
    );
    let ker = b.panel(
        "kernel",
        "kernel",
        in_x + g.w as f32 + 1.5,
        in_y,
        kh,
        kw,
        [0, 0],
        |r, c| match &values {
            Some((_, wt, _)) => Cell::text(CellKind::Kernel, fmt_value(wt[[0, 0, r, c]])),
            None => Cell::text(CellKind::Kernel, tap_label(r, c, kw)),
        },
    );
    let kernel_cells = b.all(ker);
    for iy in 0..g.h {
        for ix in 0..g.w {
            let mut hl = vec![[inp, iy, ix]];
            let weights = kernel_cells.clone();
            for ky in 0..kh {
                for kx in 0..kw {
                    let (r, c) = (iy * sh + ky * dh, ix * sw + kx * dw);
                    hl.push([out, r, c]);
                    if kept(r, c) {
                        hl.push([heat, r - pt, c - pl]);
                    }
                }
            }
            let note = match &values {
                Some((x, _, _)) => format!(
                    "x[{iy},{ix}] = {} times the kernel, added at offset ({}, {})",
                    fmt_value(x[[0, 0, iy, ix]]),
                    (iy * sh) as i64 - pt as i64,
                    (ix * sw) as i64 - pl as i64
                ),
                None => format!(
                    "input ({iy}, {ix}) × kernel → added at offset ({}, {})",
                    (iy * sh) as i64 - pt as i64,
                    (ix * sw) as i64 - pl as i64
                ),
            };
            b.frames.push(Frame {
                highlights: hl,
                weights,
                focus: vec![[inp, iy, ix]],
                note,
            });
        }
    }
    let mut caption = transposed_caption(spec, g);
    let uneven = !kh.is_multiple_of(sh) || !kw.is_multiple_of(sw);
    caption.push(format!(
        "overlap: each output cell receives 1…{heat_max} products; k {} divisible by s{}",
        if uneven { "not" } else { "is" },
        if uneven {
            " → uneven overlap: the checkerboard of Odena et al. (2016)"
        } else {
            " → even overlap away from the border"
        }
    ));
    caption.push(weights_line(spec));
    let title = format!(
        "Transposed convolution as a scatter: {} input, {} kernel, stride {}, padding {}",
        dims([g.h, g.w]),
        dims([kh, kw]),
        pair([sh, sw]),
        sides(g.pad)
    );
    Ok(b.finish("transposed_scatter", title, caption, heat_max))
}

fn check_channels(what: &str, n: usize) -> Result<()> {
    if n > MAX_CHANNELS {
        return Err(ConvError::Unsupported(format!(
            "the picture draws at most {MAX_CHANNELS} {what}; got {n}"
        )));
    }
    Ok(())
}

/// Padded-input cells of one channel.
fn padded_cell<'a>(
    g: &'a convkit::Geometry,
    xp: Option<&'a Array4<f32>>,
    ch: usize,
) -> impl Fn(usize, usize) -> Cell + 'a {
    move |r, c| {
        let [pt, _, pl, _] = g.pad;
        let inside = r >= pt && r < pt + g.h && c >= pl && c < pl + g.w;
        let kind = if inside {
            CellKind::Input
        } else {
            CellKind::Padding
        };
        match xp {
            Some(xp) => Cell::text(kind, fmt_value(xp[[0, ch, r, c]])),
            None => Cell::new(kind),
        }
    }
}

fn value_cell(kind: CellKind, a: Option<&Array4<f32>>, idx: [usize; 4]) -> Cell {
    match a {
        Some(a) => Cell::text(kind, fmt_value(a[idx])),
        None => Cell::new(kind),
    }
}

fn depthwise_separable(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let (c_in, k_out) = (spec.in_channels(), spec.out_channels());
    check_channels("input channels", c_in)?;
    check_channels("output channels", k_out)?;
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let s = *spec.spec();
    // The two halves, built by the library so their shapes and counts are its own.
    let dw_spec = ConvSpec {
        out_channels: c_in,
        groups: c_in,
        bias: false,
        ..s
    }
    .build()?;
    let pw_spec = ConvSpec::conv2d(c_in, k_out, 1).bias(false).build()?;
    let gd = dw_spec.geometry([1, c_in, g.h, g.w])?;
    let params = arith::depthwise_separable_params(c_in, k_out, [kh, kw], 1)?;
    let values = if numeric {
        let x = demo_input(c_in, g.h, g.w);
        let w1 = demo_weight(dw_spec.weight_shape());
        let w2 = demo_weight(pw_spec.weight_shape());
        let mid = reference::forward(&dw_spec, x.view(), w1.view(), None)?;
        let y = reference::forward(&pw_spec, mid.view(), w2.view(), None)?;
        let xp = border::pad(x.view(), gd.pad, Border::from(spec.padding_mode()));
        Some((xp, w1, mid, w2, y))
    } else {
        None
    };
    let [pt, pb, pl, pr] = gd.pad;
    let (ph, pw) = (g.h + pt + pb, g.w + pl + pr);
    let mut b = Builder::new();
    let step = (pw.max(kw) as f32 + 1.0).max(4.0);
    // Wide enough for the labels above small maps.
    let out_step = (gd.ow as f32 + 1.0).max(4.0);
    // Rows, top to bottom: outputs, pointwise weights beside the depthwise outputs, inputs,
    // depthwise kernels.
    let outs: Vec<usize> = (0..k_out)
        .map(|k| {
            b.panel(
                format!("output{k}"),
                format!("out {k}"),
                k as f32 * out_step,
                1.0,
                gd.oh,
                gd.ow,
                [0, 0],
                |r, c| {
                    value_cell(
                        CellKind::Output,
                        values.as_ref().map(|v| &v.4),
                        [0, k, r, c],
                    )
                },
            )
        })
        .collect();
    let mid_y = 1.0 + gd.oh as f32 + 2.0;
    let mids: Vec<usize> = (0..c_in)
        .map(|c| {
            b.panel(
                format!("mid{c}"),
                format!("dw {c}"),
                c as f32 * step,
                mid_y,
                gd.oh,
                gd.ow,
                [0, 0],
                |r, cc| value_cell(CellKind::Mid, values.as_ref().map(|v| &v.2), [0, c, r, cc]),
            )
        })
        .collect();
    let pwx = (c_in as f32 * step).max(k_out as f32 * out_step) + 0.5;
    let pwp = b.panel(
        "pointwise",
        format!("1×1 weights {k_out}×{c_in}"),
        pwx,
        mid_y,
        k_out,
        c_in,
        [0, 0],
        |r, c| match &values {
            Some(v) => Cell::text(CellKind::Kernel, fmt_value(v.3[[r, c, 0, 0]])),
            None => Cell::new(CellKind::Kernel),
        },
    );
    let in_y = mid_y + gd.oh.max(k_out) as f32 + 2.0;
    let ins: Vec<usize> = (0..c_in)
        .map(|c| {
            b.panel(
                format!("input{c}"),
                format!("in {c}"),
                c as f32 * step,
                in_y,
                ph,
                pw,
                [-(pt as i64), -(pl as i64)],
                padded_cell(&gd, values.as_ref().map(|v| &v.0), c),
            )
        })
        .collect();
    let ker_y = in_y + ph as f32 + 2.0;
    let kers: Vec<usize> = (0..c_in)
        .map(|c| {
            b.panel(
                format!("kernel{c}"),
                format!("k {c}"),
                c as f32 * step,
                ker_y,
                kh,
                kw,
                [0, 0],
                |r, cc| match &values {
                    Some(v) => Cell::text(CellKind::Kernel, fmt_value(v.1[[c, 0, r, cc]])),
                    None => Cell::text(CellKind::Kernel, tap_label(r, cc, kw)),
                },
            )
        })
        .collect();
    let pw_cells = b.all(pwp);
    for oy in 0..gd.oh {
        for ox in 0..gd.ow {
            let mut hl = Vec::new();
            let mut weights = Vec::new();
            for c in 0..c_in {
                for ky in 0..kh {
                    for kx in 0..kw {
                        hl.push([ins[c], oy * sh + ky * dh, ox * sw + kx * dw]);
                        weights.push([kers[c], ky, kx]);
                    }
                }
                hl.push([mids[c], oy, ox]);
            }
            weights.extend(pw_cells.iter().copied());
            let focus: Vec<CellRef> = outs.iter().map(|&o| [o, oy, ox]).collect();
            hl.extend(focus.iter().copied());
            let note = match &values {
                Some(v) => {
                    let terms: Vec<(f32, f32)> = (0..c_in)
                        .map(|c| (v.2[[0, c, oy, ox]], v.3[[0, c, 0, 0]]))
                        .collect();
                    sum_note(format!("out0[{oy},{ox}]"), &terms, v.4[[0, 0, oy, ox]])
                }
                None => format!(
                    "({oy}, {ox}): each map filtered by its own kernel, then mixed by 1×1 weights"
                ),
            };
            b.frames.push(Frame {
                highlights: hl,
                weights,
                focus,
                note,
            });
        }
    }
    let mut caption = vec![format!(
        "depthwise separable: {c_in} channels → depthwise {} (one kernel per channel) → pointwise 1×1 → {k_out} channels",
        dims([kh, kw])
    )];
    caption.extend(direct_caption(&dw_spec, &gd).into_iter().skip(1));
    caption.push(format!(
        "parameters: depthwise C·kh·kw = {c_in}·{kh}·{kw} = {} + pointwise C·K = {c_in}·{k_out} = {} → {}",
        params.depthwise,
        params.pointwise,
        params.separable()
    ));
    caption.push(format!(
        "standard convolution C·K·kh·kw = {c_in}·{k_out}·{kh}·{kw} = {} ({:.0}% more)",
        params.standard,
        100.0 * (params.standard as f64 / params.separable() as f64 - 1.0)
    ));
    let title = format!(
        "Depthwise separable convolution: {c_in} → {k_out} channels, {} kernel",
        dims([kh, kw])
    );
    caption.push(format!(
        "two layers: {}; {}",
        dw_spec.pytorch(),
        pw_spec.pytorch()
    ));
    Ok(b.finish("depthwise_separable", title, caption, 0))
}

fn spatially_separable(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let [pt, pb, pl, pr] = g.pad;
    let (ph, pw) = (g.h + pt + pb, g.w + pl + pr);
    // Pass 1: kh×1 down the columns of the padded input; pass 2: 1×kw along the rows.
    let s = *spec.spec();
    let one = |kernel: [usize; 2], stride: [usize; 2], dil: [usize; 2]| {
        ConvSpec {
            in_channels: 1,
            out_channels: 1,
            groups: 1,
            bias: false,
            kernel,
            stride,
            dilation: dil,
            padding: Padding::Valid,
            ..s
        }
        .build()
    };
    let pass1 = one([kh, 1], [sh, 1], [dh, 1])?;
    let pass2 = one([1, kw], [1, sw], [1, dw])?;
    let full = single_channel(spec)?;
    let g1 = pass1.geometry([1, 1, ph, pw])?;
    let g2 = pass2.geometry([1, 1, g1.oh, g1.ow])?;
    debug_assert_eq!([g2.oh, g2.ow], [g.oh, g.ow]);
    let values = if numeric {
        // Sobel for 3×3 (the seed's example), otherwise small integers.
        let col: Vec<f32> = if kh == 3 {
            vec![1.0, 2.0, 1.0]
        } else {
            (0..kh).map(|i| (i % 3 + 1) as f32).collect()
        };
        let row: Vec<f32> = if kw == 3 {
            vec![1.0, 0.0, -1.0]
        } else {
            (0..kw).map(|i| 1.0 - (i % 3) as f32).collect()
        };
        let x = demo_input(1, g.h, g.w);
        let xp = border::pad(x.view(), g.pad, Border::from(spec.padding_mode()));
        let wc = Array4::from_shape_fn((1, 1, kh, 1), |(_, _, i, _)| col[i]);
        let wr = Array4::from_shape_fn((1, 1, 1, kw), |(_, _, _, j)| row[j]);
        let w2d = Array4::from_shape_fn((1, 1, kh, kw), |(_, _, i, j)| col[i] * row[j]);
        let mid = reference::forward(&pass1, xp.view(), wc.view(), None)?;
        let y = reference::forward(&full, x.view(), w2d.view(), None)?;
        Some((xp, wc, wr, w2d, mid, y))
    } else {
        None
    };
    let mut b = Builder::new();
    let out = b.panel(
        "output",
        "output",
        ((pw - g.ow) / 2) as f32,
        1.0,
        g.oh,
        g.ow,
        [0, 0],
        |r, c| {
            value_cell(
                CellKind::Output,
                values.as_ref().map(|v| &v.5),
                [0, 0, r, c],
            )
        },
    );
    let mid_y = 1.0 + g.oh as f32 + 2.0;
    let mid = b.panel(
        "mid",
        format!("after the {kh}×1 pass"),
        0.0,
        mid_y,
        g1.oh,
        g1.ow,
        [0, -(pl as i64)],
        |r, c| {
            let kind = if c >= pl && c < pl + g.w {
                CellKind::Mid
            } else {
                CellKind::Padding
            };
            value_cell(kind, values.as_ref().map(|v| &v.4), [0, 0, r, c])
        },
    );
    let in_y = mid_y + g1.oh as f32 + 2.0;
    let inp = b.panel(
        "input",
        "input",
        0.0,
        in_y,
        ph,
        pw,
        [-(pt as i64), -(pl as i64)],
        padded_cell(g, values.as_ref().map(|v| &v.0), 0),
    );
    let kx0 = pw as f32 + 1.5;
    let k2d = b.panel(
        "kernel",
        format!("{kh}×{kw} kernel"),
        kx0,
        in_y,
        kh,
        kw,
        [0, 0],
        |r, c| match &values {
            Some(v) => Cell::text(CellKind::Kernel, fmt_value(v.3[[0, 0, r, c]])),
            None => Cell::text(CellKind::Kernel, tap_label(r, c, kw)),
        },
    );
    let kcol = b.panel(
        "kernel_col",
        format!("{kh}×1"),
        kx0 + kw as f32 + 1.5,
        in_y,
        kh,
        1,
        [0, 0],
        |r, _| match &values {
            Some(v) => Cell::text(CellKind::Kernel, fmt_value(v.1[[0, 0, r, 0]])),
            None => Cell::text(CellKind::Kernel, format!("a{}", r + 1)),
        },
    );
    let krow = b.panel(
        "kernel_row",
        format!("1×{kw}"),
        kx0 + kw as f32 + 3.0,
        in_y,
        1,
        kw,
        [0, 0],
        |_, c| match &values {
            Some(v) => Cell::text(CellKind::Kernel, fmt_value(v.2[[0, 0, 0, c]])),
            None => Cell::text(CellKind::Kernel, format!("b{}", c + 1)),
        },
    );
    let (all2d, allc, allr) = (b.all(k2d), b.all(kcol), b.all(krow));
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut hl = Vec::new();
            for ky in 0..kh {
                for kx in 0..kw {
                    hl.push([inp, oy * sh + ky * dh, ox * sw + kx * dw]);
                }
            }
            let mut terms = Vec::new();
            for kx in 0..kw {
                let c = ox * sw + kx * dw;
                hl.push([mid, oy, c]);
                if let Some(v) = &values {
                    terms.push((v.4[[0, 0, oy, c]], v.2[[0, 0, 0, kx]]));
                }
            }
            let weights: Vec<CellRef> = all2d.iter().chain(&allc).chain(&allr).copied().collect();
            hl.push([out, oy, ox]);
            let note = match &values {
                Some(v) => sum_note(format!("y[{oy},{ox}]"), &terms, v.5[[0, 0, oy, ox]]),
                None => format!(
                    "({oy}, {ox}): {kw} column sums of the {kh}×1 pass, weighted by the 1×{kw} kernel"
                ),
            };
            b.frames.push(Frame {
                highlights: hl,
                weights,
                focus: vec![[out, oy, ox]],
                note,
            });
        }
    }
    let (two_d, sep) = arith::spatially_separable_params([kh, kw]);
    let mut caption = vec![format!(
        "spatially separable: {kh}×{kw} kernel = ({kh}×1 column) × (1×{kw} row); pass 1 down the columns, pass 2 along the rows"
    )];
    caption.extend(direct_caption(spec, g).into_iter().skip(1));
    caption.push(format!(
        "weights: 2D kh·kw = {kh}·{kw} = {two_d}; two 1D passes kh + kw = {kh} + {kw} = {sep}"
    ));
    // Exact multiply counts: pass 1 fills the whole intermediate map, pass 2 the output.
    let (n2d, n1, n2) = (
        g.oh * g.ow * kh * kw,
        g1.oh * g1.ow * kh,
        g2.oh * g2.ow * kw,
    );
    caption.push(format!(
        "multiplies: 2D {}·{}·{kh}·{kw} = {n2d}; two passes {}·{}·{kh} + {}·{}·{kw} = {}",
        g.oh,
        g.ow,
        g1.oh,
        g1.ow,
        g2.oh,
        g2.ow,
        n1 + n2
    ));
    let title = format!(
        "Spatially separable convolution: {} kernel as {kh}×1 then 1×{kw}",
        dims([kh, kw])
    );
    Ok(b.finish("spatially_separable", title, caption, 0))
}

fn grouped(spec: &ValidSpec, g: &convkit::Geometry, numeric: bool) -> Result<Scene> {
    let (c_in, k_out, groups) = (spec.in_channels(), spec.out_channels(), spec.groups());
    check_channels("input channels", c_in)?;
    check_channels("output channels", k_out)?;
    let [kh, kw] = spec.kernel();
    let [sh, sw] = spec.stride();
    let [dh, dw] = spec.dilation();
    let (cg, kg) = (c_in / groups, k_out / groups);
    let unbiased = ConvSpec {
        bias: false,
        ..*spec.spec()
    }
    .build()?;
    let dense = ConvSpec {
        groups: 1,
        bias: false,
        ..*spec.spec()
    }
    .build()?;
    let values = if numeric {
        let x = demo_input(c_in, g.h, g.w);
        let wt = demo_weight(unbiased.weight_shape());
        let y = reference::forward(&unbiased, x.view(), wt.view(), None)?;
        let xp = border::pad(x.view(), g.pad, Border::from(spec.padding_mode()));
        Some((xp, wt, y))
    } else {
        None
    };
    let [pt, pb, pl, pr] = g.pad;
    let (ph, pw) = (g.h + pt + pb, g.w + pl + pr);
    let step = (pw as f32 + 1.0).max(5.0);
    let total_in = c_in as f32 * step - 1.0;
    // Wide enough for the labels ("out 0 (g0)") above small maps.
    let out_step = (g.ow as f32 + 1.0).max(5.0);
    let total_out = k_out as f32 * out_step - 1.0;
    let (in_x0, out_x0) = if total_in >= total_out {
        (0.0, ((total_in - total_out) / 2.0).floor())
    } else {
        (((total_out - total_in) / 2.0).floor(), 0.0)
    };
    let mut b = Builder::new();
    let outs: Vec<usize> = (0..k_out)
        .map(|k| {
            b.panel(
                format!("output{k}"),
                format!("out {k} (g{})", k / kg),
                out_x0 + k as f32 * out_step,
                1.0,
                g.oh,
                g.ow,
                [0, 0],
                |r, c| {
                    value_cell(
                        CellKind::Output,
                        values.as_ref().map(|v| &v.2),
                        [0, k, r, c],
                    )
                },
            )
        })
        .collect();
    let in_y = 1.0 + g.oh as f32 + 4.0;
    let ins: Vec<usize> = (0..c_in)
        .map(|c| {
            b.panel(
                format!("input{c}"),
                format!("in {c} (g{})", c / cg),
                in_x0 + c as f32 * step,
                in_y,
                ph,
                pw,
                [-(pt as i64), -(pl as i64)],
                padded_cell(g, values.as_ref().map(|v| &v.0), c),
            )
        })
        .collect();
    for (k, &ok) in outs.iter().enumerate() {
        let grp = k / kg;
        let o = &b.panels[ok];
        let from = [o.x + o.cols as f32 / 2.0, o.y + o.rows as f32];
        for ci in 0..cg {
            let p = &b.panels[ins[grp * cg + ci]];
            let to = [p.x + p.cols as f32 / 2.0, p.y - 1.0];
            b.lines.push(Line {
                from,
                to,
                colour: GROUP_COLOURS[grp % GROUP_COLOURS.len()],
            });
        }
    }
    for k in 0..k_out {
        let grp = k / kg;
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut hl = Vec::new();
                let mut terms = Vec::new();
                for ci in 0..cg {
                    let c = grp * cg + ci;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (r, cc) = (oy * sh + ky * dh, ox * sw + kx * dw);
                            hl.push([ins[c], r, cc]);
                            if let Some((xp, wt, _)) = &values {
                                terms.push((xp[[0, c, r, cc]], wt[[k, ci, ky, kx]]));
                            }
                        }
                    }
                }
                hl.push([outs[k], oy, ox]);
                let note = match &values {
                    Some((_, _, y)) => {
                        sum_note(format!("out{k}[{oy},{ox}]"), &terms, y[[0, k, oy, ox]])
                    }
                    None => format!(
                        "out {k} ({oy}, {ox}) ← input channels {}…{} (group {grp})",
                        grp * cg,
                        grp * cg + cg - 1
                    ),
                };
                b.frames.push(Frame {
                    highlights: hl,
                    weights: Vec::new(),
                    focus: vec![[outs[k], oy, ox]],
                    note,
                });
            }
        }
    }
    let mut caption = vec![format!(
        "grouped: {c_in} → {k_out} channels in {groups} groups; each output channel sees C/g = {cg} input channel(s)"
    )];
    caption.extend(direct_caption(spec, g).into_iter().skip(1));
    caption.push(format!(
        "weights K·(C/g)·kh·kw = {k_out}·{cg}·{kh}·{kw} = {} vs {} ungrouped (÷{groups})",
        unbiased.weight_count(),
        dense.weight_count()
    ));
    let title = format!("Grouped convolution: {c_in} → {k_out} channels, {groups} groups");
    Ok(b.finish("grouped", title, caption, 0))
}
