//! The gallery: conv_arithmetic's 15 animations (8 direct, 7 transposed) under their original
//! file names, plus the views they cannot show, as GIF, SVG and interactive HTML, with an
//! `index.html`.

use crate::html::{html, HtmlOptions};
use crate::raster::{gif, RasterOptions};
use crate::svg::{escape, svg, SvgOptions};
use crate::views::{build, Request, View};
use crate::VizError;
use convkit::{ConvSpec, Result as ConvResult};
use std::path::Path;

/// One of conv_arithmetic's configurations, as Dumoulin & Visin give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// conv_arithmetic's file-name stem.
    pub name: &'static str,
    /// Input size i.
    pub i: usize,
    /// Output size o.
    pub o: usize,
    /// Padding p.
    pub p: usize,
    /// Kernel size k.
    pub k: usize,
    /// Stride s.
    pub s: usize,
    /// Dilation d.
    pub d: usize,
}

const fn cfg(
    name: &'static str,
    i: usize,
    o: usize,
    p: usize,
    k: usize,
    s: usize,
    d: usize,
) -> Config {
    Config {
        name,
        i,
        o,
        p,
        k,
        s,
        d,
    }
}

/// conv_arithmetic's eight direct configurations (i, o, p, k, s, d); the first seven are also
/// drawn transposed.
pub const CONV_ARITHMETIC: [Config; 8] = [
    cfg("no_padding_no_strides", 4, 2, 0, 3, 1, 1),
    cfg("arbitrary_padding_no_strides", 5, 6, 2, 4, 1, 1),
    cfg("same_padding_no_strides", 5, 5, 1, 3, 1, 1),
    cfg("full_padding_no_strides", 5, 7, 2, 3, 1, 1),
    cfg("no_padding_strides", 5, 2, 0, 3, 2, 1),
    cfg("padding_strides", 5, 3, 1, 3, 2, 1),
    cfg("padding_strides_odd", 6, 3, 1, 3, 2, 1),
    cfg("dilation", 7, 3, 0, 3, 1, 2),
];

impl Config {
    /// The direct layer, on an `i × i` input.
    pub fn direct(&self) -> ConvResult<Request> {
        let spec = ConvSpec::conv2d(1, 1, self.k)
            .stride(self.s)
            .padding(self.p)
            .dilation(self.d)
            .bias(false)
            .build()?;
        Ok(Request::new(spec, [self.i, self.i]).name(self.name))
    }

    /// The transposed layer that maps the direct layer's `o × o` output back to `i × i`
    /// (output_padding derived from the requested size, as with PyTorch's `output_size`).
    pub fn transposed(&self) -> ConvResult<Request> {
        let base = ConvSpec::conv_transpose2d(1, 1, self.k)
            .stride(self.s)
            .padding(self.p)
            .dilation(self.d)
            .bias(false);
        // The library derives the output padding from the wanted size; the layer is then built
        // with it explicitly so that its PyTorch line (`output_padding=…`) gives i×i by itself.
        let a = base
            .output_size(self.i)
            .build()?
            .geometry([1, 1, self.o, self.o])?
            .output_padding;
        let spec = base.output_padding(a).build()?;
        Ok(Request::new(spec, [self.o, self.o]).name(format!("{}_transposed", self.name)))
    }
}

/// Every gallery entry: the 15 conv_arithmetic animations first, then the new views.
pub fn entries() -> ConvResult<Vec<Request>> {
    let mut v = Vec::new();
    for c in &CONV_ARITHMETIC {
        v.push(c.direct()?);
    }
    for c in &CONV_ARITHMETIC[..7] {
        v.push(c.transposed()?);
    }
    for c in &CONV_ARITHMETIC[..7] {
        let t = c.transposed()?;
        let name = format!("{}_transposed_scatter", c.name);
        v.push(t.view(View::Scatter).name(name));
    }
    let t = |k: usize, s: usize, p: usize| {
        ConvSpec::conv_transpose2d(1, 1, k)
            .stride(s)
            .padding(p)
            .bias(false)
            .build()
    };
    v.push(
        Request::new(t(3, 2, 0)?, [4, 4])
            .view(View::Scatter)
            .name("checkerboard_k3_s2"),
    );
    v.push(
        Request::new(t(4, 2, 1)?, [4, 4])
            .view(View::Scatter)
            .name("even_overlap_k4_s2"),
    );
    let k3 = ConvSpec::conv2d(1, 1, 3).bias(false).build()?;
    v.push(
        Request::new(k3, [5, 5])
            .numeric(true)
            .name("numerical_no_padding_no_strides"),
    );
    let k3s2 = ConvSpec::conv2d(1, 1, 3)
        .stride(2)
        .padding(1)
        .bias(false)
        .build()?;
    v.push(
        Request::new(k3s2, [5, 5])
            .numeric(true)
            .name("numerical_padding_strides"),
    );
    let nonsq = ConvSpec::conv2d(1, 1, [3, 2])
        .stride([2, 1])
        .padding([1, 0])
        .bias(false)
        .build()?;
    v.push(Request::new(nonsq, [5, 7]).name("non_square"));
    let dws = ConvSpec::conv2d(3, 4, 3).bias(false).build()?;
    v.push(
        Request::new(dws, [5, 5])
            .view(View::DepthwiseSeparable)
            .name("depthwise_separable"),
    );
    v.push(
        Request::new(k3, [5, 5])
            .view(View::SpatiallySeparable)
            .numeric(true)
            .name("spatially_separable"),
    );
    let grp = ConvSpec::conv2d(4, 4, 3).groups(2).bias(false).build()?;
    v.push(
        Request::new(grp, [4, 4])
            .view(View::Grouped)
            .name("grouped"),
    );
    Ok(v)
}

/// One written gallery entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GalleryItem {
    /// File-name stem (`padding_strides`).
    pub name: String,
    /// Human title.
    pub title: String,
    /// Number of frames.
    pub frames: usize,
    /// The files written for it, relative to the gallery folder.
    pub files: Vec<String>,
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), VizError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| VizError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Writes the gallery into `dir` (created if missing): for every entry `NAME.gif`, `NAME.svg`
/// and `NAME.html`, then `index.html` linking them. Returns what was written.
pub fn write_gallery(dir: &Path) -> Result<Vec<GalleryItem>, VizError> {
    std::fs::create_dir_all(dir).map_err(|source| VizError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut items = Vec::new();
    for req in entries()? {
        let scene = build(&req)?;
        let name = scene.name.clone();
        let files = vec![
            format!("{name}.gif"),
            format!("{name}.svg"),
            format!("{name}.html"),
        ];
        write_file(dir, &files[0], &gif(&scene, &RasterOptions::default())?)?;
        write_file(
            dir,
            &files[1],
            svg(&scene, &SvgOptions::default())?.as_bytes(),
        )?;
        write_file(
            dir,
            &files[2],
            html(&scene, &HtmlOptions::default())?.as_bytes(),
        )?;
        items.push(GalleryItem {
            name,
            title: scene.title.clone(),
            frames: scene.frames.len(),
            files,
        });
    }
    write_file(dir, "index.html", index(&items).as_bytes())?;
    Ok(items)
}

/// The gallery's index page.
fn index(items: &[GalleryItem]) -> String {
    let mut body = String::new();
    for it in items {
        body.push_str(&format!(
            "<figure><a href=\"{n}.html\"><img src=\"{n}.gif\" alt=\"{t}\"></a><figcaption><b>{n}</b><br>{t}<br>{f} frames · <a href=\"{n}.gif\">GIF</a> · <a href=\"{n}.svg\">SVG</a> · <a href=\"{n}.html\">interactive</a></figcaption></figure>\n",
            n = escape(&it.name),
            t = escape(&it.title),
            f = it.frames
        ));
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>convkit gallery</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#002b36}}
figure{{display:inline-block;vertical-align:top;margin:0 1em 1.5em 0;max-width:420px}}
img{{max-width:400px;border:1px solid #eee8d5}}figcaption{{font-size:12px}}</style></head>
<body><h1>convkit gallery</h1>
<p>conv_arithmetic's animations (Dumoulin &amp; Visin, 2016) redrawn by convkit for any layer, with the views they cannot show.
Input blue, output cyan, the kernel footprint and the current output cell shaded; padding dashed. Click a picture for its interactive page.</p>
{body}</body></html>
"#
    )
}
