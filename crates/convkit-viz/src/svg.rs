//! One compact SVG per animation, animated with SMIL: the static picture is drawn once (cells of
//! a kind merged into one path), and each frame is a hidden group of shade squares made visible
//! for its time slot by a `<set>` timed off a looping clock, so browsers play it as the GIF.

use crate::layout::{wrap, Layout, SWATCH};
use crate::scene::{heat_colour, CellKind, Rgb, Scene, GRID, SHADE, SHADE_ALPHA, TEXT};
use crate::VizError;
use std::fmt::Write as _;

/// Options of the SVG renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvgOptions {
    /// Cell size in pixels (a minimum: cells grow to fit their text).
    pub cell_px: u32,
    /// Time per frame in milliseconds.
    pub delay_ms: u32,
}

impl Default for SvgOptions {
    fn default() -> Self {
        SvgOptions {
            cell_px: 24,
            delay_ms: 500,
        }
    }
}

/// Width of a character of the 12 px monospace font (0.6 em).
pub const CHAR_W: f32 = 7.2;
/// Line height.
pub const LINE_H: f32 = 15.0;

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn class(kind: CellKind) -> &'static str {
    match kind {
        CellKind::Input => "i",
        CellKind::Output => "o",
        CellKind::Padding => "p",
        CellKind::Zero => "z",
        CellKind::OutputPadding => "q",
        CellKind::Kernel => "k",
        CellKind::Mid => "m",
        CellKind::Heat => "x",
    }
}

/// A square subpath.
fn square(d: &mut String, x: f32, y: f32, s: f32) {
    let _ = write!(d, "M{x} {y}h{s}v{s}h-{s}z");
}

/// Renders `scene` as an animated SVG document.
pub fn svg(scene: &Scene, opts: &SvgOptions) -> Result<String, VizError> {
    if !(8..=128).contains(&opts.cell_px) {
        return Err(VizError::Options(format!(
            "cell size must be between 8 and 128 pixels, got {}",
            opts.cell_px
        )));
    }
    if opts.delay_ms < 20 {
        return Err(VizError::Options(format!(
            "frame delay must be at least 20 ms, got {}",
            opts.delay_ms
        )));
    }
    let longest = scene
        .panels
        .iter()
        .flat_map(|p| p.cells.iter())
        .filter_map(|c| c.text.as_ref().map(|t| t.chars().count()))
        .max()
        .unwrap_or(0) as f32;
    let cs = (opts.cell_px as f32).max((longest * CHAR_W + 6.0).ceil());
    let l = Layout::new(scene, cs, CHAR_W, LINE_H, |s| s.to_string());
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="monospace" font-size="12">"#,
        w = l.width,
        h = l.height
    );
    let _ = write!(o, "<title>{}</title>", escape(&scene.title));
    let _ = write!(
        o,
        "<style>.i{{fill:{}}}.o{{fill:{}}}.z{{fill:{}}}.q{{fill:{}}}.k{{fill:{}}}.m{{fill:{}}}\
         .g{{fill:none;stroke:{g}}}.d{{fill:none;stroke:{g};stroke-dasharray:3 3}}\
         .h{{fill:{};fill-opacity:{}}}text{{fill:{}}}.w{{fill:#fff}}.c{{text-anchor:middle;dominant-baseline:central}}</style>",
        hex(crate::scene::INPUT),
        hex(crate::scene::OUTPUT),
        hex(crate::scene::ZERO),
        hex(crate::scene::OUTPUT_PADDING),
        hex(crate::scene::KERNEL),
        hex(crate::scene::MID),
        hex(SHADE),
        SHADE_ALPHA,
        hex(TEXT),
        g = hex(GRID),
    );
    o.push_str(r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    for line in &scene.lines {
        let (a, b) = (l.point(line.from), l.point(line.to));
        let _ = write!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"/>"#,
            a[0],
            a[1],
            b[0],
            b[1],
            hex(line.colour)
        );
    }
    // Fills, one path per kind (heat cells each with their own colour).
    for kind in [
        CellKind::Input,
        CellKind::Output,
        CellKind::Zero,
        CellKind::OutputPadding,
        CellKind::Kernel,
        CellKind::Mid,
    ] {
        let mut d = String::new();
        for (pi, p) in scene.panels.iter().enumerate() {
            for r in 0..p.rows {
                for c in 0..p.cols {
                    if p.cell(r, c).kind == kind {
                        let [x, y, s, _] = l.cell_rect(scene, [pi, r, c]);
                        square(&mut d, x, y, s);
                    }
                }
            }
        }
        if !d.is_empty() {
            let _ = write!(o, r#"<path class="{}" d="{d}"/>"#, class(kind));
        }
    }
    let (mut solid, mut dashed) = (String::new(), String::new());
    for (pi, p) in scene.panels.iter().enumerate() {
        for r in 0..p.rows {
            for c in 0..p.cols {
                let cell = p.cell(r, c);
                let [x, y, s, _] = l.cell_rect(scene, [pi, r, c]);
                if cell.kind == CellKind::Heat {
                    let _ = write!(
                        o,
                        r#"<rect x="{x}" y="{y}" width="{s}" height="{s}" fill="{}"/>"#,
                        hex(heat_colour(cell.level.unwrap_or(0), scene.heat_max))
                    );
                }
                square(
                    if cell.kind.dashed() {
                        &mut dashed
                    } else {
                        &mut solid
                    },
                    x + 0.5,
                    y + 0.5,
                    s,
                );
            }
        }
    }
    if !solid.is_empty() {
        let _ = write!(o, r#"<path class="g" d="{solid}"/>"#);
    }
    if !dashed.is_empty() {
        let _ = write!(o, r#"<path class="d" d="{dashed}"/>"#);
    }
    for (pi, p) in scene.panels.iter().enumerate() {
        for r in 0..p.rows {
            for c in 0..p.cols {
                let cell = p.cell(r, c);
                if let Some(t) = &cell.text {
                    let [x, y, s, _] = l.cell_rect(scene, [pi, r, c]);
                    let light = cell.kind.text_colour() != TEXT;
                    let _ = write!(
                        o,
                        r#"<text class="c{}" x="{}" y="{}">{}</text>"#,
                        if light { " w" } else { "" },
                        x + s / 2.0,
                        y + s / 2.0,
                        escape(t)
                    );
                }
            }
        }
        let [lx, ly] = l.label_pos(scene, pi);
        let _ = write!(
            o,
            r#"<text x="{lx}" y="{}">{}</text>"#,
            ly + 11.0,
            escape(&p.label)
        );
    }
    for (kind, [x, y]) in &l.legend {
        let fill = match kind {
            CellKind::Heat => format!(
                r#" fill="{}""#,
                hex(heat_colour(scene.heat_max, scene.heat_max))
            ),
            k if k.fill().is_none() => r#" fill="none""#.to_string(),
            k => format!(r#" class="{}""#, class(*k)),
        };
        let _ = write!(
            o,
            r#"<rect x="{x}" y="{y}" width="{SWATCH}" height="{SWATCH}"{fill}/><rect class="{}" x="{}" y="{}" width="{SWATCH}" height="{SWATCH}"/><text x="{}" y="{}">{}</text>"#,
            if kind.dashed() { "d" } else { "g" },
            x + 0.5,
            y + 0.5,
            x + SWATCH + 4.0,
            y + SWATCH,
            kind.legend()
        );
    }
    for (line, y) in &l.caption {
        let _ = write!(
            o,
            r#"<text x="{}" y="{}">{}</text>"#,
            l.margin,
            y + 11.0,
            escape(line)
        );
    }
    // The clock: an animation that restarts when it ends; each frame is timed off its begin.
    let n = scene.frames.len();
    let d = opts.delay_ms as f64 / 1000.0;
    let _ = write!(
        o,
        r#"<rect width="0" height="0"><animate id="clk" attributeName="x" from="0" to="0" begin="0s;clk.end" dur="{}s"/></rect>"#,
        n as f64 * d
    );
    for (i, f) in scene.frames.iter().enumerate() {
        let mut dd = String::new();
        let mut seen = std::collections::HashSet::new();
        for h in &f.highlights {
            if seen.insert(*h) {
                let [x, y, s, _] = l.cell_rect(scene, *h);
                square(&mut dd, x, y, s);
            }
        }
        let _ = write!(
            o,
            r#"<g visibility="hidden"><set attributeName="visibility" to="visible" begin="clk.begin+{}s" dur="{d}s"/><path class="h" d="{dd}"/>"#,
            i as f64 * d
        );
        for (k, line) in wrap(&f.note, l.wrap).iter().enumerate() {
            let _ = write!(
                o,
                r#"<text x="{}" y="{}">{}</text>"#,
                l.margin,
                l.note_y + k as f32 * l.line_h + 11.0,
                escape(line)
            );
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>\n");
    Ok(o)
}
