//! The frames model: what every renderer draws, independent of pixels.
//!
//! A [`Scene`] is a set of static [`Panel`]s (grids of cells placed in *cell units*, each with
//! its label), static [`Line`]s, a caption, and one [`Frame`] per animation step. A frame only says
//! which cells are shaded (the kernel footprint, the current output cell) and which cells it
//! computes (its *focus*); the GIF, SVG and HTML renderers all read the same scene, so the
//! pictures agree with each other and with the numbers in the caption.

use serde::Serialize;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// conv_arithmetic's input blue.
pub const INPUT: Rgb = [38, 139, 210];
/// conv_arithmetic's output cyan.
pub const OUTPUT: Rgb = [42, 161, 152];
/// conv_arithmetic's footprint shade, drawn at [`SHADE_ALPHA`] opacity.
pub const SHADE: Rgb = [7, 54, 66];
/// Opacity of the footprint / current-cell shade (40%).
pub const SHADE_ALPHA: f32 = 0.4;
/// Intermediate maps (depthwise output, first separable pass).
pub const MID: Rgb = [108, 113, 196];
/// Kernel cells.
pub const KERNEL: Rgb = [255, 236, 179];
/// Zeros inserted between inputs (transposed convolution as a direct one).
pub const ZERO: Rgb = [238, 232, 213];
/// The extra `output_padding` border of a transposed convolution.
pub const OUTPUT_PADDING: Rgb = [250, 218, 196];
/// Grid lines and dashed padding.
pub const GRID: Rgb = [88, 110, 117];
/// Background.
pub const BACKGROUND: Rgb = [255, 255, 255];
/// Dark text.
pub const TEXT: Rgb = [0, 43, 54];
/// Light text (on filled cells).
pub const TEXT_LIGHT: Rgb = [255, 255, 255];
/// Colours of groups (grouped view) in order.
pub const GROUP_COLOURS: [Rgb; 5] = [
    [181, 137, 0],
    [211, 54, 130],
    [133, 153, 0],
    [203, 75, 22],
    [220, 50, 47],
];
/// Number of distinct heat-map shades (keeps the GIF palette small).
pub const HEAT_LEVELS: u32 = 12;

/// What a cell is; decides its fill and border.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    /// An input value (blue).
    Input,
    /// An output value (cyan).
    Output,
    /// Padding (or, for the scatter view, output cells cropped by padding): dashed, no fill.
    Padding,
    /// A zero inserted between inputs by a stride > 1 of a transposed convolution.
    Zero,
    /// The `output_padding` border of a transposed convolution (bottom/right).
    OutputPadding,
    /// A kernel weight.
    Kernel,
    /// An intermediate value (violet).
    Mid,
    /// A heat-map cell; its level is in [`Cell::level`].
    Heat,
}

impl CellKind {
    /// Whether the cell is drawn with a dashed border.
    pub fn dashed(self) -> bool {
        matches!(
            self,
            CellKind::Padding | CellKind::Zero | CellKind::OutputPadding
        )
    }

    /// Fill colour, or `None` for no fill. Heat cells need their level: see [`heat_colour`].
    pub fn fill(self) -> Option<Rgb> {
        match self {
            CellKind::Input => Some(INPUT),
            CellKind::Output => Some(OUTPUT),
            CellKind::Padding => None,
            CellKind::Zero => Some(ZERO),
            CellKind::OutputPadding => Some(OUTPUT_PADDING),
            CellKind::Kernel => Some(KERNEL),
            CellKind::Mid => Some(MID),
            CellKind::Heat => None,
        }
    }

    /// Text colour on this kind of cell.
    pub fn text_colour(self) -> Rgb {
        match self {
            CellKind::Input | CellKind::Output | CellKind::Mid => TEXT_LIGHT,
            _ => TEXT,
        }
    }

    /// Words for the legend.
    pub fn legend(self) -> &'static str {
        match self {
            CellKind::Input => "input",
            CellKind::Output => "output",
            CellKind::Padding => "padding",
            CellKind::Zero => "inserted zero",
            CellKind::OutputPadding => "output_padding",
            CellKind::Kernel => "kernel",
            CellKind::Mid => "intermediate",
            CellKind::Heat => "overlap count",
        }
    }
}

/// Colour of a heat-map cell: `count` of `max`, quantised to [`HEAT_LEVELS`] shades from pale
/// yellow to orange; 0 is the zero colour.
pub fn heat_colour(count: u32, max: u32) -> Rgb {
    if count == 0 || max == 0 {
        return ZERO;
    }
    let lo = [253.0, 236.0, 200.0];
    let hi = [203.0, 75.0, 22.0];
    let steps = HEAT_LEVELS - 1;
    let level = if max <= 1 {
        steps
    } else {
        ((count - 1) * steps + (max - 1) / 2) / (max - 1)
    };
    let t = level as f32 / steps as f32;
    [0, 1, 2].map(|i| (lo[i] + (hi[i] - lo[i]) * t).round() as u8)
}

/// One cell of a panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Kind (fill and border).
    pub kind: CellKind,
    /// Text printed in the cell (a value in numerical mode, a tap number, an overlap count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Heat-map count (heat cells only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
}

impl Cell {
    /// A cell of `kind` without text.
    pub fn new(kind: CellKind) -> Self {
        Cell {
            kind,
            text: None,
            level: None,
        }
    }
    /// A cell of `kind` with `text`.
    pub fn text(kind: CellKind, text: impl Into<String>) -> Self {
        Cell {
            kind,
            text: Some(text.into()),
            level: None,
        }
    }
}

/// A grid of cells placed in the scene (positions in cell units).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Panel {
    /// Short identifier (`"input"`, `"output"`, `"kernel"`, `"input1"` …).
    pub id: String,
    /// Label drawn above the panel (`"input"`, `"output"`, `"kernel (flipped 180°)"` …).
    pub label: String,
    /// Left edge, in cells.
    pub x: f32,
    /// Top edge, in cells.
    pub y: f32,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Logical coordinate of cell (0, 0), e.g. `[-1, -1]` for an input padded by 1.
    pub origin: [i64; 2],
    /// `rows × cols` cells in row-major order.
    pub cells: Vec<Cell>,
}

impl Panel {
    /// The cell at `(row, col)`.
    pub fn cell(&self, row: usize, col: usize) -> &Cell {
        &self.cells[row * self.cols + col]
    }
    /// Counts the cells of `kind`.
    pub fn count(&self, kind: CellKind) -> usize {
        self.cells.iter().filter(|c| c.kind == kind).count()
    }
}

/// A cell address in a scene: `[panel index, row, column]`.
pub type CellRef = [usize; 3];

/// A straight line between two points (cell units), e.g. a channel connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Start `[x, y]`.
    pub from: [f32; 2],
    /// End `[x, y]`.
    pub to: [f32; 2],
    /// Colour.
    pub colour: Rgb,
}

/// One animation step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    /// Cells shaded dark at 40%: the kernel footprint (only real taps under dilation) and the
    /// cell(s) computed.
    pub highlights: Vec<CellRef>,
    /// The weights used. Every frame of most views uses the whole kernel, so they are not
    /// shaded in the animation; hovering the computed cell lights them.
    pub weights: Vec<CellRef>,
    /// The cell(s) this frame computes (output cells; the input cell for the scatter view).
    pub focus: Vec<CellRef>,
    /// One line saying what happens (in numerical mode, the sum with its numbers).
    pub note: String,
}

/// Everything one animation shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    /// File-name stem (`"padding_strides"`).
    pub name: String,
    /// Human title.
    pub title: String,
    /// Width in cell units (panels and labels).
    pub width: f32,
    /// Height in cell units.
    pub height: f32,
    /// The grids.
    pub panels: Vec<Panel>,
    /// Static lines (drawn under the panels).
    pub lines: Vec<Line>,
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Caption lines: parameters and formulas with the numbers plugged in.
    pub caption: Vec<String>,
    /// The PyTorch expression that builds the layer.
    pub pytorch: String,
    /// Largest heat-map count (0 without a heat map).
    pub heat_max: u32,
}

/// What hovering one cell lights up (see [`Scene::hover_map`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hover {
    /// The hovered cell.
    pub cell: CellRef,
    /// The cells to light.
    pub lights: Vec<CellRef>,
    /// The frame to show, if the hovered cell is computed by one.
    pub frame: Option<usize>,
}

impl Scene {
    /// Index of the panel with `id`.
    pub fn panel_index(&self, id: &str) -> Option<usize> {
        self.panels.iter().position(|p| p.id == id)
    }

    /// Cell kinds present, in a fixed order, for the legend.
    pub fn legend(&self) -> Vec<CellKind> {
        use CellKind::*;
        [
            Input,
            Padding,
            Zero,
            OutputPadding,
            Kernel,
            Mid,
            Output,
            Heat,
        ]
        .into_iter()
        .filter(|k| self.panels.iter().any(|p| p.count(*k) > 0))
        .collect()
    }

    /// Fill colour of a cell.
    pub fn cell_fill(&self, cell: &Cell) -> Option<Rgb> {
        match cell.kind {
            CellKind::Heat => Some(heat_colour(cell.level.unwrap_or(0), self.heat_max)),
            k => k.fill(),
        }
    }

    /// For every cell that takes part in some frame: what hovering it lights up.
    ///
    /// A cell computed by a frame (in its focus) lights that frame's highlights: an output cell
    /// shows its input taps and the weights used. Any other cell lights every focus cell of the
    /// frames that use it: an input cell shows every output it feeds.
    pub fn hover_map(&self) -> Vec<Hover> {
        use std::collections::BTreeMap;
        let mut computed: BTreeMap<CellRef, (Vec<CellRef>, usize)> = BTreeMap::new();
        for (i, f) in self.frames.iter().enumerate() {
            for c in &f.focus {
                let e = computed.entry(*c).or_insert_with(|| (Vec::new(), i));
                e.0.extend(f.highlights.iter().chain(&f.weights).copied());
            }
        }
        let mut used: BTreeMap<CellRef, Vec<CellRef>> = BTreeMap::new();
        for f in &self.frames {
            for h in f.highlights.iter().chain(&f.weights) {
                if !computed.contains_key(h) {
                    used.entry(*h).or_default().extend(f.focus.iter().copied());
                }
            }
        }
        let mut out = Vec::with_capacity(computed.len() + used.len());
        for (cell, (mut lights, frame)) in computed {
            lights.sort_unstable();
            lights.dedup();
            out.push(Hover {
                cell,
                lights,
                frame: Some(frame),
            });
        }
        for (cell, mut lights) in used {
            lights.push(cell);
            lights.sort_unstable();
            lights.dedup();
            out.push(Hover {
                cell,
                lights,
                frame: None,
            });
        }
        out
    }
}

/// Replaces the non-ASCII symbols of captions by ASCII (for the bitmap font of the GIFs).
pub fn ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '⌊' => out.push_str("floor("),
            '⌋' => out.push(')'),
            '×' => out.push('x'),
            '−' => out.push('-'),
            '·' => out.push('*'),
            '→' => out.push_str("->"),
            '←' => out.push_str("<-"),
            '°' => out.push_str(" deg"),
            'Σ' => out.push_str("sum"),
            '≠' => out.push_str("!="),
            '…' => out.push_str("..."),
            'ᵢ' => out.push('i'),
            c if c.is_ascii() => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_colour_spans_the_ramp() {
        assert_eq!(heat_colour(0, 4), ZERO);
        assert_eq!(heat_colour(4, 4), [203, 75, 22]);
        assert_eq!(heat_colour(1, 4), [253, 236, 200]);
        assert_eq!(heat_colour(1, 1), [203, 75, 22]);
    }

    #[test]
    fn ascii_transliterates_formulas() {
        assert_eq!(ascii("⌊(5 − 3)/2⌋ + 1 × 2"), "floor((5 - 3)/2) + 1 x 2");
    }
}
