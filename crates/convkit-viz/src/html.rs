//! A self-contained interactive page: the scene, its hover relations and every colour are
//! computed here and embedded as JSON; the page's script (`assets/page.js`, inlined) only draws
//! them. No network access, works from `file://`.

use crate::scene::{heat_colour, CellKind, Hover, Scene, GRID, SHADE, SHADE_ALPHA, TEXT};
use crate::VizError;
use serde::Serialize;
use std::collections::BTreeMap;

const SCRIPT: &str = include_str!("../assets/page.js");

/// Options of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtmlOptions {
    /// Cell size in CSS pixels.
    pub cell_px: u32,
    /// Time per frame at speed 1, in milliseconds.
    pub delay_ms: u32,
}

impl Default for HtmlOptions {
    fn default() -> Self {
        HtmlOptions {
            cell_px: 32,
            delay_ms: 600,
        }
    }
}

#[derive(Serialize)]
struct LegendEntry {
    kind: CellKind,
    text: &'static str,
}

#[derive(Serialize)]
struct PageData<'a> {
    scene: &'a Scene,
    hover: Vec<Hover>,
    cell_px: u32,
    delay_ms: u32,
    fills: BTreeMap<&'static str, String>,
    heat: Vec<String>,
    dashed: Vec<CellKind>,
    light_text: Vec<CellKind>,
    legend: Vec<LegendEntry>,
    grid: String,
    text: String,
    shade: String,
}

fn css(c: [u8; 3]) -> String {
    format!("rgb({},{},{})", c[0], c[1], c[2])
}

fn kind_name(k: CellKind) -> &'static str {
    match k {
        CellKind::Input => "input",
        CellKind::Output => "output",
        CellKind::Padding => "padding",
        CellKind::Zero => "zero",
        CellKind::OutputPadding => "output_padding",
        CellKind::Kernel => "kernel",
        CellKind::Mid => "mid",
        CellKind::Heat => "heat",
    }
}

const ALL_KINDS: [CellKind; 8] = [
    CellKind::Input,
    CellKind::Output,
    CellKind::Padding,
    CellKind::Zero,
    CellKind::OutputPadding,
    CellKind::Kernel,
    CellKind::Mid,
    CellKind::Heat,
];

/// The page's embedded data as JSON (what the script draws).
pub fn page_json(scene: &Scene, opts: &HtmlOptions) -> Result<String, VizError> {
    let data = PageData {
        scene,
        hover: scene.hover_map(),
        cell_px: opts.cell_px,
        delay_ms: opts.delay_ms,
        fills: ALL_KINDS
            .iter()
            .filter_map(|k| k.fill().map(|c| (kind_name(*k), css(c))))
            .collect(),
        heat: (0..=scene.heat_max)
            .map(|n| css(heat_colour(n, scene.heat_max)))
            .collect(),
        dashed: ALL_KINDS.iter().copied().filter(|k| k.dashed()).collect(),
        light_text: ALL_KINDS
            .iter()
            .copied()
            .filter(|k| k.text_colour() != TEXT)
            .collect(),
        legend: scene
            .legend()
            .into_iter()
            .map(|kind| LegendEntry {
                kind,
                text: kind.legend(),
            })
            .collect(),
        grid: css(GRID),
        text: css(TEXT),
        shade: format!(
            "rgba({},{},{},{})",
            SHADE[0], SHADE[1], SHADE[2], SHADE_ALPHA
        ),
    };
    serde_json::to_string(&data).map_err(|e| VizError::Encode(e.to_string()))
}

/// Renders the interactive page for `scene`.
pub fn html(scene: &Scene, opts: &HtmlOptions) -> Result<String, VizError> {
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
    // `</` inside a script element would end it; JSON allows the escaped form.
    let json = page_json(scene, opts)?.replace("</", "<\\/");
    let title = crate::svg::escape(&scene.title);
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #002b36; background: #fff; }}
h1 {{ font-size: 1.2em; }}
#controls {{ display: flex; gap: .5em; align-items: center; flex-wrap: wrap; margin: .5em 0; }}
#controls button {{ min-width: 4.5em; }}
#stage {{ display: block; border: 1px solid #eee8d5; }}
#note, #hover {{ font-family: monospace; min-height: 1.4em; }}
#caption {{ font-family: monospace; padding-left: 1.2em; }}
#legend span {{ margin-right: 1em; white-space: nowrap; }}
#legend i {{ display: inline-block; width: 12px; height: 12px; border: 1px solid #586e75; margin-right: .3em; vertical-align: -2px; }}
pre {{ background: #fdf6e3; padding: .5em; overflow-x: auto; }}
</style>
</head>
<body>
<h1 id="title">{title}</h1>
<div id="controls">
<button id="prev" title="previous frame">&#9664; step</button>
<button id="play">pause</button>
<button id="next" title="next frame">step &#9654;</button>
<input id="scrub" type="range" min="0" value="0" aria-label="frame">
<label>speed <select id="speed">
<option value="0.25">0.25×</option><option value="0.5">0.5×</option><option value="1" selected>1×</option><option value="2">2×</option><option value="4">4×</option>
</select></label>
<span id="counter"></span>
</div>
<canvas id="stage"></canvas>
<div id="note"></div>
<div id="hover"></div>
<div id="legend"></div>
<ul id="caption"></ul>
<pre id="pytorch"></pre>
<p>Hover an output cell to light its input taps and the weights used; hover an input cell to light every output it feeds.</p>
<script type="application/json" id="convkit-data">{json}</script>
<script>
{SCRIPT}
</script>
</body>
</html>
"#
    ))
}
