//! Pixels: frames rasterised with tiny-skia (no anti-aliasing, so every colour is exact), text
//! from the public-domain 8×8 bitmap font of `font8x8`, GIF encoding with the `gif` crate.

use crate::layout::{wrap, Layout, SWATCH};
use crate::scene::{
    ascii, CellKind, CellRef, Rgb, Scene, BACKGROUND, GRID, SHADE, SHADE_ALPHA, TEXT,
};
use crate::VizError;
use std::collections::HashMap;
use tiny_skia::{Paint, PathBuilder, Pixmap, Rect, Stroke, StrokeDash, Transform};

/// Options of the pixel renderers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RasterOptions {
    /// Cell size in pixels (a minimum: cells grow to fit their text).
    pub cell_px: u32,
    /// Delay between GIF frames, in milliseconds (GIF stores hundredths of a second).
    pub delay_ms: u32,
    /// How many times the GIF plays; `None` loops forever.
    pub loops: Option<u16>,
}

impl Default for RasterOptions {
    fn default() -> Self {
        RasterOptions {
            cell_px: 24,
            delay_ms: 500,
            loops: None,
        }
    }
}

/// Glyph width of the bitmap font.
pub const CHAR_W: f32 = 8.0;
/// Line height of the bitmap font (8 px glyphs + 3 px leading).
pub const LINE_H: f32 = 11.0;
/// Smallest cell size accepted.
pub const MIN_CELL_PX: u32 = 8;
/// Largest cell size accepted.
pub const MAX_CELL_PX: u32 = 128;

/// An RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width × height × 3` bytes, row-major.
    pub rgb: Vec<u8>,
}

impl Image {
    /// The colour at `(x, y)`.
    pub fn pixel(&self, x: u32, y: u32) -> Rgb {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// The cell size actually used: at least `cell_px`, wide enough for the longest cell text.
pub fn effective_cell_px(scene: &Scene, cell_px: u32) -> u32 {
    let longest = scene
        .panels
        .iter()
        .flat_map(|p| p.cells.iter())
        .filter_map(|c| c.text.as_ref().map(|t| t.chars().count()))
        .max()
        .unwrap_or(0) as u32;
    cell_px.max(longest * CHAR_W as u32 + 6)
}

/// The pixel layout the raster renderers use for `scene`.
pub fn layout(scene: &Scene, opts: &RasterOptions) -> Result<Layout, VizError> {
    check_options(opts)?;
    Ok(Layout::new(
        scene,
        effective_cell_px(scene, opts.cell_px) as f32,
        CHAR_W,
        LINE_H,
        ascii,
    ))
}

fn check_options(opts: &RasterOptions) -> Result<(), VizError> {
    if !(MIN_CELL_PX..=MAX_CELL_PX).contains(&opts.cell_px) {
        return Err(VizError::Options(format!(
            "cell size must be between {MIN_CELL_PX} and {MAX_CELL_PX} pixels, got {}",
            opts.cell_px
        )));
    }
    if opts.delay_ms < 20 || opts.delay_ms > 655_350 {
        return Err(VizError::Options(format!(
            "frame delay must be between 20 ms and 655350 ms, got {}",
            opts.delay_ms
        )));
    }
    Ok(())
}

/// Centre pixel of a cell (for tests and tools).
pub fn cell_centre(
    scene: &Scene,
    opts: &RasterOptions,
    cell: CellRef,
) -> Result<(u32, u32), VizError> {
    let l = layout(scene, opts)?;
    let [x, y, w, h] = l.cell_rect(scene, cell);
    Ok(((x + w / 2.0) as u32, (y + h / 2.0) as u32))
}

fn paint(c: Rgb, alpha: f32) -> Paint<'static> {
    let mut p = Paint {
        anti_alias: false,
        ..Paint::default()
    };
    p.set_color_rgba8(c[0], c[1], c[2], (alpha * 255.0).round() as u8);
    p
}

fn rect_path(r: [f32; 4]) -> Option<tiny_skia::Path> {
    // Strokes on pixel centres give crisp 1-px lines without anti-aliasing.
    Rect::from_xywh(r[0] + 0.5, r[1] + 0.5, r[2], r[3]).map(PathBuilder::from_rect)
}

/// Draws `text` (ASCII; others become '?') with its top-left at `(x, y)`.
fn draw_text(pm: &mut Pixmap, text: &str, x: f32, y: f32, colour: Rgb) {
    let (w, h) = (pm.width() as i64, pm.height() as i64);
    let px = pm.pixels_mut();
    let c = tiny_skia::ColorU8::from_rgba(colour[0], colour[1], colour[2], 255).premultiply();
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (gy, row) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if row & (1 << gx) != 0 {
                    let xx = x as i64 + (i * 8 + gx) as i64;
                    let yy = y as i64 + gy as i64;
                    if xx >= 0 && yy >= 0 && xx < w && yy < h {
                        px[(yy * w + xx) as usize] = c;
                    }
                }
            }
        }
    }
}

/// The parts of the picture that never change: cells, lines, labels, legend, caption.
fn render_base(scene: &Scene, l: &Layout) -> Result<Pixmap, VizError> {
    let mut pm = Pixmap::new(l.width, l.height)
        .ok_or_else(|| VizError::Options(format!("image {}×{} is too large", l.width, l.height)))?;
    pm.fill(tiny_skia::Color::from_rgba8(
        BACKGROUND[0],
        BACKGROUND[1],
        BACKGROUND[2],
        255,
    ));
    for line in &scene.lines {
        let (a, b) = (l.point(line.from), l.point(line.to));
        let mut pb = PathBuilder::new();
        pb.move_to(a[0], a[1]);
        pb.line_to(b[0], b[1]);
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width: 2.0,
                ..Stroke::default()
            };
            pm.stroke_path(
                &path,
                &paint(line.colour, 1.0),
                &stroke,
                Transform::identity(),
                None,
            );
        }
    }
    let solid = Stroke {
        width: 1.0,
        ..Stroke::default()
    };
    let dashed = Stroke {
        width: 1.0,
        dash: StrokeDash::new(vec![3.0, 3.0], 0.0),
        ..Stroke::default()
    };
    for (pi, p) in scene.panels.iter().enumerate() {
        for r in 0..p.rows {
            for c in 0..p.cols {
                let cell = p.cell(r, c);
                let rect = l.cell_rect(scene, [pi, r, c]);
                if let (Some(fill), Some(rr)) = (
                    scene.cell_fill(cell),
                    Rect::from_xywh(rect[0], rect[1], rect[2], rect[3]),
                ) {
                    pm.fill_rect(rr, &paint(fill, 1.0), Transform::identity(), None);
                }
            }
        }
        for dash in [false, true] {
            for r in 0..p.rows {
                for c in 0..p.cols {
                    let cell = p.cell(r, c);
                    if cell.kind.dashed() != dash {
                        continue;
                    }
                    if let Some(path) = rect_path(l.cell_rect(scene, [pi, r, c])) {
                        let s = if dash { &dashed } else { &solid };
                        pm.stroke_path(&path, &paint(GRID, 1.0), s, Transform::identity(), None);
                    }
                }
            }
        }
        for r in 0..p.rows {
            for c in 0..p.cols {
                let cell = p.cell(r, c);
                if let Some(t) = &cell.text {
                    let t = ascii(t);
                    let rect = l.cell_rect(scene, [pi, r, c]);
                    let tw = t.chars().count() as f32 * CHAR_W;
                    draw_text(
                        &mut pm,
                        &t,
                        (rect[0] + (rect[2] - tw) / 2.0 + 1.0).floor(),
                        (rect[1] + (rect[3] - 8.0) / 2.0 + 1.0).floor(),
                        cell.kind.text_colour(),
                    );
                }
            }
        }
        let [lx, ly] = l.label_pos(scene, pi);
        draw_text(&mut pm, &ascii(&p.label), lx, ly, TEXT);
    }
    for (kind, [x, y]) in &l.legend {
        let sw = Rect::from_xywh(*x, *y, SWATCH, SWATCH);
        let fill = match kind {
            CellKind::Heat => Some(crate::scene::heat_colour(scene.heat_max, scene.heat_max)),
            k => k.fill(),
        };
        if let (Some(fill), Some(sw)) = (fill, sw) {
            pm.fill_rect(sw, &paint(fill, 1.0), Transform::identity(), None);
        }
        if let Some(path) = rect_path([*x, *y, SWATCH, SWATCH]) {
            let s = if kind.dashed() { &dashed } else { &solid };
            pm.stroke_path(&path, &paint(GRID, 1.0), s, Transform::identity(), None);
        }
        draw_text(&mut pm, kind.legend(), x + SWATCH + 4.0, y + 2.0, TEXT);
    }
    for (line, y) in &l.caption {
        draw_text(&mut pm, line, l.margin, *y, TEXT);
    }
    Ok(pm)
}

/// Draws frame `i`'s shading and note onto a copy of the base.
fn render_on(scene: &Scene, l: &Layout, base: &Pixmap, i: usize) -> Pixmap {
    let mut pm = base.clone();
    let f = &scene.frames[i];
    let shade = paint(SHADE, SHADE_ALPHA);
    let mut seen = std::collections::HashSet::new();
    for h in &f.highlights {
        if !seen.insert(*h) {
            continue;
        }
        let r = l.cell_rect(scene, *h);
        if let Some(rr) = Rect::from_xywh(r[0], r[1], r[2], r[3]) {
            pm.fill_rect(rr, &shade, Transform::identity(), None);
        }
    }
    for (k, line) in wrap(&ascii(&f.note), l.wrap).iter().enumerate() {
        draw_text(
            &mut pm,
            line,
            l.margin,
            l.note_y + k as f32 * l.line_h,
            TEXT,
        );
    }
    pm
}

fn to_image(pm: &Pixmap) -> Image {
    // Every pixel is opaque (white background), so premultiplied equals straight RGB.
    let rgb = pm
        .pixels()
        .iter()
        .flat_map(|p| [p.red(), p.green(), p.blue()])
        .collect();
    Image {
        width: pm.width(),
        height: pm.height(),
        rgb,
    }
}

/// Renders frame `frame` of `scene`.
pub fn render(scene: &Scene, frame: usize, opts: &RasterOptions) -> Result<Image, VizError> {
    if frame >= scene.frames.len() {
        return Err(VizError::Options(format!(
            "frame {frame} does not exist (the animation has {} frames, numbered from 0)",
            scene.frames.len()
        )));
    }
    let l = layout(scene, opts)?;
    let base = render_base(scene, &l)?;
    Ok(to_image(&render_on(scene, &l, &base, frame)))
}

/// Renders every frame.
pub fn render_all(scene: &Scene, opts: &RasterOptions) -> Result<Vec<Image>, VizError> {
    let l = layout(scene, opts)?;
    let base = render_base(scene, &l)?;
    Ok((0..scene.frames.len())
        .map(|i| to_image(&render_on(scene, &l, &base, i)))
        .collect())
}

/// One frame as a PNG file.
pub fn png(scene: &Scene, frame: usize, opts: &RasterOptions) -> Result<Vec<u8>, VizError> {
    let img = render(scene, frame, opts)?;
    let mut pm = Pixmap::new(img.width, img.height)
        .ok_or_else(|| VizError::Options("empty image".into()))?;
    for (dst, src) in pm.pixels_mut().iter_mut().zip(img.rgb.chunks_exact(3)) {
        *dst = tiny_skia::ColorU8::from_rgba(src[0], src[1], src[2], 255).premultiply();
    }
    pm.encode_png().map_err(|e| VizError::Encode(e.to_string()))
}

/// The whole animation as a GIF: one global palette of the exact colours drawn (no
/// dithering), each frame after the first cropped to the rectangle that changed.
pub fn gif(scene: &Scene, opts: &RasterOptions) -> Result<Vec<u8>, VizError> {
    let frames = render_all(scene, opts)?;
    let first = frames
        .first()
        .ok_or_else(|| VizError::Options("the animation has no frames".into()))?;
    let (w, h) = (first.width, first.height);
    if w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(VizError::Options(format!(
            "image {w}×{h} is too large for GIF"
        )));
    }
    // One palette entry is kept for "unchanged since the previous frame" (transparent), so
    // the part of a frame's rectangle that did not change compresses to long runs.
    let mut index: HashMap<Rgb, u8> = HashMap::new();
    let mut palette = Vec::new();
    let mut fits = true;
    'outer: for f in &frames {
        for px in f.rgb.chunks_exact(3) {
            let c = [px[0], px[1], px[2]];
            if !index.contains_key(&c) {
                if index.len() == 255 {
                    fits = false;
                    break 'outer;
                }
                index.insert(c, index.len() as u8);
                palette.extend_from_slice(&c);
            }
        }
    }
    let transparent = index.len() as u8;
    palette.extend_from_slice(&[0, 0, 0]);
    let enc_err = |e: gif::EncodingError| VizError::Encode(e.to_string());
    let mut out = Vec::new();
    {
        let global: &[u8] = if fits { &palette } else { &[] };
        let mut enc = gif::Encoder::new(&mut out, w as u16, h as u16, global).map_err(enc_err)?;
        enc.set_repeat(match opts.loops {
            None => gif::Repeat::Infinite,
            Some(n) => gif::Repeat::Finite(n),
        })
        .map_err(enc_err)?;
        let delay = (opts.delay_ms / 10).max(2) as u16;
        let mut prev: Option<&Image> = None;
        for f in &frames {
            let (x0, y0, x1, y1) = match prev {
                None => (0, 0, w, h),
                Some(p) => changed_rect(p, f).unwrap_or((0, 0, 1, 1)),
            };
            let (fw, fh) = ((x1 - x0) as u16, (y1 - y0) as u16);
            let mut frame = if fits {
                let mut buf = Vec::with_capacity(fw as usize * fh as usize);
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = ((y * w + x) * 3) as usize;
                        let c = [f.rgb[i], f.rgb[i + 1], f.rgb[i + 2]];
                        let same = prev.is_some_and(|p| p.rgb[i..i + 3] == c);
                        buf.push(if same { transparent } else { index[&c] });
                    }
                }
                gif::Frame {
                    width: fw,
                    height: fh,
                    buffer: buf.into(),
                    transparent: prev.map(|_| transparent),
                    ..gif::Frame::default()
                }
            } else {
                let mut sub = Vec::with_capacity(fw as usize * fh as usize * 3);
                for y in y0..y1 {
                    let row = ((y * w + x0) * 3) as usize..((y * w + x1) * 3) as usize;
                    sub.extend_from_slice(&f.rgb[row]);
                }
                gif::Frame::from_rgb_speed(fw, fh, &sub, 10)
            };
            frame.left = x0 as u16;
            frame.top = y0 as u16;
            frame.delay = delay;
            frame.dispose = gif::DisposalMethod::Keep;
            enc.write_frame(&frame).map_err(enc_err)?;
            prev = Some(f);
        }
    }
    Ok(out)
}

/// Bounding rectangle `(x0, y0, x1, y1)` (exclusive ends) of the pixels that differ.
fn changed_rect(a: &Image, b: &Image) -> Option<(u32, u32, u32, u32)> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..a.height {
        for x in 0..a.width {
            let i = ((y * a.width + x) * 3) as usize;
            if a.rgb[i..i + 3] != b.rgb[i..i + 3] {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
    }
    (x1 > 0).then_some((x0, y0, x1, y1))
}
