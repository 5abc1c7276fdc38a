//! Renderer tests: pixel colours at known cells, GIF frames decoded back, SVG parsed, the
//! gallery written.

use convkit_viz::gallery::{entries, CONV_ARITHMETIC};
use convkit_viz::html::{html, HtmlOptions};
use convkit_viz::raster::{self, cell_centre, gif, render, render_all, RasterOptions};
use convkit_viz::scene::{Rgb, INPUT, OUTPUT, OUTPUT_PADDING, SHADE, SHADE_ALPHA, ZERO};
use convkit_viz::svg::{svg, SvgOptions};
use convkit_viz::{build, Scene, VizError};

const WHITE: Rgb = [255, 255, 255];

fn shaded(c: Rgb) -> Rgb {
    [0, 1, 2]
        .map(|i| (c[i] as f32 * (1.0 - SHADE_ALPHA) + SHADE[i] as f32 * SHADE_ALPHA).round() as u8)
}

fn close(a: Rgb, b: Rgb) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 2)
}

fn colour_at(s: &Scene, frame: usize, panel: &str, r: usize, c: usize) -> Rgb {
    let opts = RasterOptions::default();
    let img = render(s, frame, &opts).unwrap();
    let (x, y) = cell_centre(s, &opts, [s.panel_index(panel).unwrap(), r, c]).unwrap();
    // A little above the centre, away from any text in the cell.
    img.pixel(x, y - 7)
}

#[track_caller]
fn assert_colour(got: Rgb, want: Rgb) {
    assert!(close(got, want), "got {got:?}, want {want:?}");
}

#[test]
fn colours_at_known_cells() {
    // padding_strides, frame 0: the footprint covers padded rows/cols 0..3.
    let s = build(&CONV_ARITHMETIC[5].direct().unwrap()).unwrap();
    assert_colour(colour_at(&s, 0, "input", 1, 1), shaded(INPUT));
    assert_colour(colour_at(&s, 0, "input", 0, 0), shaded(WHITE)); // a padding tap
    assert_colour(colour_at(&s, 0, "input", 4, 4), INPUT);
    assert_colour(colour_at(&s, 0, "input", 6, 6), WHITE); // padding, no fill
    assert_colour(colour_at(&s, 0, "output", 0, 0), shaded(OUTPUT));
    assert_colour(colour_at(&s, 0, "output", 2, 2), OUTPUT);
    // Frame 8 (last, raster order): output (2,2) and the bottom-right footprint.
    assert_colour(colour_at(&s, 8, "output", 2, 2), shaded(OUTPUT));
    assert_colour(colour_at(&s, 8, "output", 0, 0), OUTPUT);
    assert_colour(colour_at(&s, 8, "input", 5, 5), shaded(INPUT));
    assert_colour(colour_at(&s, 8, "input", 1, 1), INPUT);

    // dilation: only every 2nd cell of the 5×5 footprint is shaded.
    let s = build(&CONV_ARITHMETIC[7].direct().unwrap()).unwrap();
    assert_colour(colour_at(&s, 0, "input", 0, 0), shaded(INPUT));
    assert_colour(colour_at(&s, 0, "input", 0, 1), INPUT);
    assert_colour(colour_at(&s, 0, "input", 1, 1), INPUT);
    assert_colour(colour_at(&s, 0, "input", 2, 4), shaded(INPUT));
    assert_colour(colour_at(&s, 4, "input", 1, 1), shaded(INPUT));

    // padding_strides_odd transposed: inserted zeros and the output_padding border.
    let s = build(&CONV_ARITHMETIC[6].transposed().unwrap()).unwrap();
    assert_colour(colour_at(&s, 0, "input", 1, 1), shaded(INPUT));
    assert_colour(colour_at(&s, 0, "input", 1, 2), shaded(ZERO));
    assert_colour(colour_at(&s, 0, "input", 4, 2), ZERO);
    assert_colour(colour_at(&s, 0, "input", 7, 3), OUTPUT_PADDING);
    assert_colour(colour_at(&s, 0, "input", 3, 7), OUTPUT_PADDING);
    assert_colour(colour_at(&s, 35, "input", 7, 7), shaded(OUTPUT_PADDING));
    assert_colour(colour_at(&s, 0, "input", 0, 0), shaded(WHITE));
}

#[test]
fn frame_sizes_are_constant_and_match_the_layout() {
    let opts = RasterOptions::default();
    for req in entries().unwrap().iter().take(15) {
        let s = build(req).unwrap();
        let l = raster::layout(&s, &opts).unwrap();
        let frames = render_all(&s, &opts).unwrap();
        assert_eq!(frames.len(), s.frames.len());
        for f in &frames {
            assert_eq!((f.width, f.height), (l.width, l.height), "{}", s.name);
        }
        assert!(
            l.width < 600 && l.height < 800,
            "{} is {}×{}",
            s.name,
            l.width,
            l.height
        );
    }
}

/// Decodes a GIF and composites its frames (sub-rectangles with transparency) to full RGB.
fn decode_gif(bytes: &[u8]) -> (u16, u16, Vec<Vec<u8>>, gif::Repeat) {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut d = opts.read_info(bytes).unwrap();
    let (w, h) = (d.width(), d.height());
    let mut canvas = vec![0u8; w as usize * h as usize * 3];
    let mut out = Vec::new();
    while let Some(f) = d.read_next_frame().unwrap() {
        assert!(f.delay >= 2);
        for y in 0..f.height as usize {
            for x in 0..f.width as usize {
                let s = (y * f.width as usize + x) * 4;
                if f.buffer[s + 3] == 0 {
                    continue;
                }
                let t = ((y + f.top as usize) * w as usize + x + f.left as usize) * 3;
                canvas[t..t + 3].copy_from_slice(&f.buffer[s..s + 3]);
            }
        }
        out.push(canvas.clone());
    }
    let repeat = d.repeat();
    (w, h, out, repeat)
}

#[test]
fn gif_frames_decode_to_the_rendered_frames() {
    for (i, opts) in [
        RasterOptions::default(),
        RasterOptions {
            cell_px: 16,
            delay_ms: 100,
            loops: Some(2),
        },
    ]
    .iter()
    .enumerate()
    {
        for req in [
            CONV_ARITHMETIC[5].direct().unwrap(),
            CONV_ARITHMETIC[6].transposed().unwrap(),
        ] {
            let s = build(&req).unwrap();
            let bytes = gif(&s, opts).unwrap();
            let (w, h, frames, repeat) = decode_gif(&bytes);
            let want = render_all(&s, opts).unwrap();
            assert_eq!(frames.len(), s.frames.len());
            assert_eq!((w as u32, h as u32), (want[0].width, want[0].height));
            for (got, want) in frames.iter().zip(&want) {
                assert!(got == &want.rgb, "{}: a decoded frame differs", s.name);
            }
            let want_repeat = if i == 0 {
                gif::Repeat::Infinite
            } else {
                gif::Repeat::Finite(2)
            };
            assert_eq!(repeat, want_repeat);
        }
    }
}

#[test]
fn png_is_a_png_of_the_frame() {
    let s = build(&CONV_ARITHMETIC[0].direct().unwrap()).unwrap();
    let bytes = raster::png(&s, 3, &RasterOptions::default()).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(matches!(
        raster::png(&s, 4, &RasterOptions::default()),
        Err(VizError::Options(_))
    ));
}

#[test]
fn bad_options_are_errors() {
    let s = build(&CONV_ARITHMETIC[0].direct().unwrap()).unwrap();
    let bad = RasterOptions {
        cell_px: 2,
        ..RasterOptions::default()
    };
    assert!(matches!(gif(&s, &bad), Err(VizError::Options(_))));
    let bad = RasterOptions {
        delay_ms: 5,
        ..RasterOptions::default()
    };
    assert!(matches!(gif(&s, &bad), Err(VizError::Options(_))));
    let bad = SvgOptions {
        cell_px: 1000,
        ..SvgOptions::default()
    };
    assert!(matches!(svg(&s, &bad), Err(VizError::Options(_))));
}

#[test]
fn svg_parses_and_animates_every_frame() {
    for req in entries().unwrap() {
        let s = build(&req).unwrap();
        let text = svg(&s, &SvgOptions::default()).unwrap();
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{}: SVG does not parse: {e}", s.name));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert!(root.attribute("width").is_some());
        let groups: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("g") && n.attribute("visibility") == Some("hidden"))
            .collect();
        assert_eq!(groups.len(), s.frames.len(), "{}", s.name);
        for (i, g) in groups.iter().enumerate() {
            let set = g.children().find(|n| n.has_tag_name("set")).unwrap();
            assert_eq!(set.attribute("to"), Some("visible"));
            let begin = format!("clk.begin+{}s", i as f64 * 0.5);
            assert_eq!(set.attribute("begin"), Some(begin.as_str()));
        }
        let texts: String = root
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        // Captions are wrapped at spaces.
        let squash = |t: &str| t.replace(' ', "");
        assert!(squash(&texts).contains(&squash(&s.pytorch)), "{}", s.name);
        assert!(
            text.len() < 60_000,
            "{} SVG is {} bytes",
            s.name,
            text.len()
        );
    }
}

#[test]
fn html_page_is_self_contained() {
    let s = build(&CONV_ARITHMETIC[5].direct().unwrap()).unwrap();
    let page = html(&s, &HtmlOptions::default()).unwrap();
    assert!(page.contains("nn.Conv2d(1, 1, kernel_size=3, stride=2, padding=1, bias=False)"));
    for forbidden in ["http://", "https://", "<link", "src=\""] {
        assert!(!page.contains(forbidden), "page must not load {forbidden}");
    }
    let start = page.find("id=\"convkit-data\">").unwrap() + "id=\"convkit-data\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
    assert_eq!(data["scene"]["frames"].as_array().unwrap().len(), 9);
    assert!(!data["hover"].as_array().unwrap().is_empty());
}

#[test]
fn gallery_writes_every_file_small() {
    let dir = std::env::temp_dir().join(format!("convkit-viz-gallery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let items = convkit_viz::write_gallery(&dir).unwrap();
    assert_eq!(items.len(), entries().unwrap().len());
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for c in &CONV_ARITHMETIC {
        assert!(dir.join(format!("{}.gif", c.name)).is_file());
        assert!(dir.join(format!("{}.svg", c.name)).is_file());
    }
    for c in &CONV_ARITHMETIC[..7] {
        assert!(dir.join(format!("{}_transposed.gif", c.name)).is_file());
    }
    for it in &items {
        assert_eq!(it.files.len(), 3);
        for f in &it.files {
            let len = std::fs::metadata(dir.join(f)).unwrap().len();
            assert!(len < 150_000, "{f} is {len} bytes");
            assert!(index.contains(&format!("href=\"{f}\"")), "index links {f}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
