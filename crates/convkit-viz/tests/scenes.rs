//! Frames model tests: frame counts and panel sizes for conv_arithmetic's 15 configurations,
//! raster order, the overlap map against the reference engine, numerical mode against the
//! reference engine, hover relations and errors.

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas

use convkit::{reference, ConvError, ConvSpec};
use convkit_viz::gallery::{entries, CONV_ARITHMETIC};
use convkit_viz::views::overlap_counts;
use convkit_viz::{build, CellKind, Request, Scene, View};
use ndarray::Array4;

fn panel<'a>(s: &'a Scene, id: &str) -> &'a convkit_viz::Panel {
    &s.panels[s.panel_index(id).unwrap_or_else(|| panic!("no panel {id}"))]
}

fn value(s: &Scene, id: &str, r: usize, c: usize) -> f64 {
    panel(s, id)
        .cell(r, c)
        .text
        .as_deref()
        .map(|t| t.parse::<f64>().unwrap())
        .unwrap_or(0.0)
}

#[test]
fn direct_configurations_have_one_frame_per_output_cell() {
    for c in &CONV_ARITHMETIC {
        let s = build(&c.direct().unwrap()).unwrap();
        assert_eq!(s.name, c.name);
        assert_eq!(s.frames.len(), c.o * c.o, "{}", c.name);
        let out = panel(&s, "output");
        assert_eq!((out.rows, out.cols), (c.o, c.o), "{}", c.name);
        let inp = panel(&s, "input");
        assert_eq!((inp.rows, inp.cols), (c.i + 2 * c.p, c.i + 2 * c.p));
        assert_eq!(inp.count(CellKind::Input), c.i * c.i);
        assert_eq!(
            inp.count(CellKind::Padding),
            (c.i + 2 * c.p).pow(2) - c.i * c.i
        );
        let oi = s.panel_index("output").unwrap();
        for (n, f) in s.frames.iter().enumerate() {
            // Raster order, and the footprint shades only the k·k real taps (every d-th cell).
            assert_eq!(f.focus, vec![[oi, n / c.o, n % c.o]]);
            let ii = s.panel_index("input").unwrap();
            let taps: Vec<_> = f.highlights.iter().filter(|h| h[0] == ii).collect();
            assert_eq!(taps.len(), c.k * c.k);
            let (oy, ox) = (n / c.o, n % c.o);
            for h in taps {
                let (dy, dx) = (h[1] - oy * c.s, h[2] - ox * c.s);
                assert_eq!((dy % c.d, dx % c.d), (0, 0));
                assert!(dy / c.d < c.k && dx / c.d < c.k);
            }
        }
    }
}

#[test]
fn transposed_configurations_have_one_frame_per_output_cell() {
    for c in &CONV_ARITHMETIC[..7] {
        let req = c.transposed().unwrap();
        let s = build(&req).unwrap();
        assert_eq!(s.name, format!("{}_transposed", c.name));
        // The transposed layer maps o×o back to i×i.
        assert_eq!(s.frames.len(), c.i * c.i, "{}", s.name);
        let out = panel(&s, "output");
        assert_eq!((out.rows, out.cols), (c.i, c.i));
        // Equivalent direct convolution: (o−1)s+1 stretched, k−1−p each side, + a bottom/right.
        let a = req.spec.geometry([1, 1, c.o, c.o]).unwrap().output_padding[0];
        let side = (c.o - 1) * c.s + 1 + 2 * (c.k - 1 - c.p) + a;
        let inp = panel(&s, "input");
        assert_eq!((inp.rows, inp.cols), (side, side), "{}", s.name);
        assert_eq!(inp.count(CellKind::Input), c.o * c.o);
        assert_eq!(
            inp.count(CellKind::Zero),
            ((c.o - 1) * c.s + 1).pow(2) - c.o * c.o
        );
        assert_eq!(
            inp.count(CellKind::OutputPadding),
            side * side - (side - a).pow(2)
        );
        assert_eq!(a, usize::from(c.name == "padding_strides_odd"));
        let k = panel(&s, "kernel");
        // The flipped kernel: tap 1 (PyTorch's w[0,0]) is drawn bottom-right.
        assert_eq!(k.cell(c.k - 1, c.k - 1).text.as_deref(), Some("1"));
        assert_eq!(
            k.cell(0, 0).text.as_deref(),
            Some((c.k * c.k).to_string().as_str())
        );
        let scatter = build(&req.clone().view(View::Scatter)).unwrap();
        assert_eq!(scatter.frames.len(), c.o * c.o, "one frame per input cell");
    }
}

#[test]
fn fifteen_conv_arithmetic_names_lead_the_gallery() {
    let names: Vec<String> = entries()
        .unwrap()
        .iter()
        .map(|r| build(r).unwrap().name)
        .collect();
    let mut want: Vec<String> = CONV_ARITHMETIC.iter().map(|c| c.name.to_string()).collect();
    want.extend(
        CONV_ARITHMETIC[..7]
            .iter()
            .map(|c| format!("{}_transposed", c.name)),
    );
    assert_eq!(names[..15], want[..]);
    assert!(names.contains(&"dilation".to_string()));
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "names are unique");
}

/// Overlap counts must equal a transposed convolution of ones by ones (the reference engine).
#[test]
fn overlap_map_equals_a_direct_count() {
    let mut specs: Vec<(ConvSpec, [usize; 2])> = vec![
        (ConvSpec::conv_transpose2d(1, 1, 3).stride(2), [4, 4]),
        (
            ConvSpec::conv_transpose2d(1, 1, 4).stride(2).padding(1),
            [4, 4],
        ),
        (
            ConvSpec::conv_transpose2d(1, 1, [3, 2])
                .stride([2, 3])
                .dilation([2, 1])
                .output_padding([1, 2]),
            [3, 4],
        ),
        (
            ConvSpec::conv_transpose2d(1, 1, 5).stride(3).padding(2),
            [3, 3],
        ),
    ];
    for c in &CONV_ARITHMETIC[..7] {
        specs.push((*c.transposed().unwrap().spec.spec(), [c.o, c.o]));
    }
    for (spec, input) in specs {
        let spec = spec.bias(false).build().unwrap();
        let counts = overlap_counts(&spec, input).unwrap();
        let x = Array4::<f64>::ones((1, 1, input[0], input[1]));
        let w = Array4::<f64>::ones(spec.weight_shape());
        let y = reference::forward(&spec, x.view(), w.view(), None).unwrap();
        let g = spec.geometry([1, 1, input[0], input[1]]).unwrap();
        assert_eq!((counts.len(), counts[0].len()), (g.oh, g.ow));
        for r in 0..g.oh {
            for c in 0..g.ow {
                assert_eq!(counts[r][c] as f64, y[[0, 0, r, c]], "{spec} at ({r},{c})");
            }
        }
        // The drawn heat map shows the same counts.
        let s = build(&Request::new(spec, input).view(View::Scatter)).unwrap();
        let heat = panel(&s, "overlap");
        for r in 0..g.oh {
            for c in 0..g.ow {
                assert_eq!(heat.cell(r, c).level, Some(counts[r][c]));
            }
        }
        assert_eq!(s.heat_max, *counts.iter().flatten().max().unwrap());
    }
}

#[test]
fn checkerboard_when_kernel_not_divisible_by_stride() {
    let k3 = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride(2)
        .build()
        .unwrap();
    let m = overlap_counts(&k3, [4, 4]).unwrap();
    // Interior rows alternate 1-2-1 / 2-4-2: the 2D checkerboard of Odena et al.
    assert_eq!(&m[2][2..7], &[4, 2, 4, 2, 4]);
    assert_eq!(&m[3][2..7], &[2, 1, 2, 1, 2]);
    let k4 = ConvSpec::conv_transpose2d(1, 1, 4)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    let m = overlap_counts(&k4, [4, 4]).unwrap();
    for row in &m[1..7] {
        assert!(
            row[1..7].iter().all(|&v| v == 4),
            "even overlap inside: {row:?}"
        );
    }
}

#[test]
fn numerical_direct_matches_conv_arithmetic_figure() {
    let spec = ConvSpec::conv2d(1, 1, 3).bias(false).build().unwrap();
    let s = build(&Request::new(spec, [5, 5]).numeric(true)).unwrap();
    let want = [[12.0, 12.0, 17.0], [10.0, 17.0, 19.0], [9.0, 6.0, 14.0]];
    for (r, row) in want.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            assert_eq!(value(&s, "output", r, c), *v);
        }
    }
    assert!(s.frames[0].note.ends_with("= 12"), "{}", s.frames[0].note);
}

/// Running the drawn equivalent direct convolution (stretched input, flipped kernel, stride 1)
/// over the drawn numbers must give the reference engine's transposed output.
#[test]
fn numerical_transposed_as_direct_reproduces_the_reference() {
    let mut reqs: Vec<Request> = CONV_ARITHMETIC[..7]
        .iter()
        .map(|c| c.transposed().unwrap())
        .collect();
    let odd = ConvSpec::conv_transpose2d(1, 1, [3, 2])
        .stride([2, 3])
        .padding([1, 0])
        .dilation([1, 2])
        .output_padding([1, 1])
        .bias(false)
        .build()
        .unwrap();
    reqs.push(Request::new(odd, [3, 4]));
    for req in reqs {
        let s = build(&req.clone().numeric(true)).unwrap();
        let [dh, dw] = req.spec.dilation();
        let [kh, kw] = req.spec.kernel();
        let out = panel(&s, "output");
        for oy in 0..out.rows {
            for ox in 0..out.cols {
                let mut acc = 0.0;
                for ky in 0..kh {
                    for kx in 0..kw {
                        acc += value(&s, "input", oy + ky * dh, ox + kx * dw)
                            * value(&s, "kernel", ky, kx);
                    }
                }
                assert_eq!(acc, value(&s, "output", oy, ox), "{} ({oy},{ox})", s.name);
            }
        }
    }
}

#[test]
fn numerical_separable_views_are_consistent() {
    // Spatially separable: the 1×kw pass over the drawn intermediate gives the drawn output.
    let spec = ConvSpec::conv2d(1, 1, 3)
        .padding(1)
        .stride(2)
        .bias(false)
        .build()
        .unwrap();
    let s = build(
        &Request::new(spec, [5, 6])
            .view(View::SpatiallySeparable)
            .numeric(true),
    )
    .unwrap();
    let out = panel(&s, "output");
    for oy in 0..out.rows {
        for ox in 0..out.cols {
            let acc: f64 = (0..3)
                .map(|kx| value(&s, "mid", oy, ox * 2 + kx) * value(&s, "kernel_row", 0, kx))
                .sum();
            assert_eq!(acc, value(&s, "output", oy, ox));
        }
    }
    // The 2D kernel drawn is the outer product of the two 1D kernels (Sobel).
    for r in 0..3 {
        for c in 0..3 {
            assert_eq!(
                value(&s, "kernel", r, c),
                value(&s, "kernel_col", r, 0) * value(&s, "kernel_row", 0, c)
            );
        }
    }
    // Depthwise separable: the drawn 1×1 mixing of the drawn depthwise maps.
    let spec = ConvSpec::conv2d(3, 2, 3).bias(false).build().unwrap();
    let s = build(
        &Request::new(spec, [4, 4])
            .view(View::DepthwiseSeparable)
            .numeric(true),
    )
    .unwrap();
    assert_eq!(s.frames.len(), 4);
    for k in 0..2 {
        for oy in 0..2 {
            for ox in 0..2 {
                let acc: f64 = (0..3)
                    .map(|c| value(&s, &format!("mid{c}"), oy, ox) * value(&s, "pointwise", k, c))
                    .sum();
                assert_eq!(acc, value(&s, &format!("output{k}"), oy, ox));
            }
        }
    }
    assert!(s
        .caption
        .iter()
        .any(|l| l.contains("= 27 + pointwise") && l.contains("→ 33")));
    assert!(s.caption.iter().any(|l| l.contains("= 54")));
}

#[test]
fn grouped_view_feeds_each_output_from_its_group_only() {
    let spec = ConvSpec::conv2d(4, 6, 3)
        .groups(2)
        .bias(false)
        .build()
        .unwrap();
    let s = build(&Request::new(spec, [4, 4]).view(View::Grouped)).unwrap();
    assert_eq!(s.frames.len(), 6 * 2 * 2);
    assert_eq!(s.lines.len(), 6 * 2);
    for f in &s.frames {
        let out_panel = &s.panels[f.focus[0][0]];
        let k: usize = out_panel.id["output".len()..].parse().unwrap();
        for h in &f.highlights {
            let id = &s.panels[h[0]].id;
            if let Some(c) = id.strip_prefix("input") {
                let c: usize = c.parse().unwrap();
                assert_eq!(
                    c / 2,
                    k / 3,
                    "output {k} must only read its group's channels"
                );
            }
        }
    }
    assert!(s
        .caption
        .iter()
        .any(|l| l.contains("= 108 vs 216 ungrouped")));
}

#[test]
fn hover_lights_taps_and_fed_outputs() {
    let c = CONV_ARITHMETIC[5]; // padding_strides: 5×5, k3, s2, p1 → 3×3
    let s = build(&c.direct().unwrap()).unwrap();
    let (ii, oi) = (
        s.panel_index("input").unwrap(),
        s.panel_index("output").unwrap(),
    );
    let map = s.hover_map();
    let out11 = map.iter().find(|h| h.cell == [oi, 1, 1]).unwrap();
    assert_eq!(out11.frame, Some(4));
    let taps: Vec<_> = out11.lights.iter().filter(|l| l[0] == ii).collect();
    assert_eq!(taps.len(), 9);
    // The weights used light up on hover but are not shaded in the animation.
    let ki = s.panel_index("kernel").unwrap();
    assert_eq!(out11.lights.iter().filter(|l| l[0] == ki).count(), 9);
    assert!(s
        .frames
        .iter()
        .all(|f| f.highlights.iter().all(|h| h[0] != ki)));
    assert_eq!(s.frames[4].weights.len(), 9);
    assert!(taps
        .iter()
        .all(|t| (2..5).contains(&t[1]) && (2..5).contains(&t[2])));
    // Input (1,1) is padded cell (2,2): rows 2 belong to outputs 0 and 1 on each axis.
    let in11 = map.iter().find(|h| h.cell == [ii, 2, 2]).unwrap();
    let fed: Vec<_> = in11.lights.iter().filter(|l| l[0] == oi).collect();
    assert_eq!(
        fed,
        vec![&[oi, 0, 0], &[oi, 0, 1], &[oi, 1, 0], &[oi, 1, 1]]
    );
}

#[test]
fn bad_parameters_give_the_specs_error() {
    let k5 = ConvSpec::conv2d(1, 1, 5).build().unwrap();
    assert_eq!(
        build(&Request::new(k5, [2, 2])).unwrap_err(),
        k5.geometry([1, 1, 2, 2]).unwrap_err()
    );
    assert!(matches!(
        build(&Request::new(k5, [0, 4])).unwrap_err(),
        ConvError::Zero { .. }
    ));
    let crop = ConvSpec::conv_transpose2d(1, 1, 3)
        .padding(3)
        .build()
        .unwrap();
    assert!(matches!(
        build(&Request::new(crop, [1, 1])).unwrap_err(),
        ConvError::EmptyOutput { .. }
    ));
    let direct = ConvSpec::conv2d(1, 1, 3).build().unwrap();
    assert!(matches!(
        build(&Request::new(direct, [5, 5]).view(View::Scatter)).unwrap_err(),
        ConvError::Unsupported(_)
    ));
    let t = ConvSpec::conv_transpose2d(1, 1, 3).build().unwrap();
    assert!(matches!(
        build(&Request::new(t, [3, 3]).view(View::Grouped)).unwrap_err(),
        ConvError::Unsupported(_)
    ));
    let wide = ConvSpec::conv2d(16, 32, 3).build().unwrap();
    assert!(matches!(
        build(&Request::new(wide, [5, 5]).view(View::DepthwiseSeparable)).unwrap_err(),
        ConvError::Unsupported(_)
    ));
    assert!(matches!(
        build(&Request::new(direct, [500, 5])).unwrap_err(),
        ConvError::Unsupported(_)
    ));
}

mod random_layers {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any small layer: the scene builds exactly when the spec accepts the input, has one
        /// frame per output cell (per input cell for the scatter view), and in numerical mode
        /// the drawn equivalent direct convolution reproduces the reference transposed output.
        #[test]
        fn scenes_follow_the_spec(
            i in (1usize..6, 1usize..6),
            k in (1usize..4, 1usize..4),
            s in (1usize..4, 1usize..4),
            p in (0usize..3, 0usize..3),
            d in (1usize..3, 1usize..3),
            transposed in any::<bool>(),
            a in (0usize..2, 0usize..2),
        ) {
            let base = if transposed {
                ConvSpec::conv_transpose2d(1, 1, [k.0, k.1])
                    .output_padding([a.0.min(s.0.max(d.0) - 1), a.1.min(s.1.max(d.1) - 1)])
            } else {
                ConvSpec::conv2d(1, 1, [k.0, k.1])
            };
            let spec = base
                .stride([s.0, s.1])
                .padding([p.0, p.1])
                .dilation([d.0, d.1])
                .bias(false)
                .build()
                .unwrap();
            let geom = spec.geometry([1, 1, i.0, i.1]);
            let req = Request::new(spec, [i.0, i.1]).numeric(true);
            let scene = build(&req);
            match geom {
                Err(e) => prop_assert_eq!(scene.unwrap_err(), e),
                Ok(g) => {
                    let scene = scene.unwrap();
                    prop_assert_eq!(scene.frames.len(), g.oh * g.ow);
                    let out = panel(&scene, "output");
                    prop_assert_eq!((out.rows, out.cols), (g.oh, g.ow));
                    let x = views_input(i);
                    let w = convkit_viz::views::demo_weight(spec.weight_shape());
                    let y = reference::forward(&spec, x.view(), w.view(), None).unwrap();
                    for r in 0..g.oh {
                        for c in 0..g.ow {
                            prop_assert_eq!(value(&scene, "output", r, c), y[[0, 0, r, c]] as f64);
                        }
                    }
                    if transposed {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let mut acc = 0.0;
                                for ky in 0..k.0 {
                                    for kx in 0..k.1 {
                                        acc += value(&scene, "input", oy + ky * d.0, ox + kx * d.1)
                                            * value(&scene, "kernel", ky, kx);
                                    }
                                }
                                prop_assert_eq!(acc, value(&scene, "output", oy, ox));
                            }
                        }
                        let sc = build(&req.clone().view(View::Scatter)).unwrap();
                        prop_assert_eq!(sc.frames.len(), i.0 * i.1);
                    }
                }
            }
        }
    }

    fn views_input(i: (usize, usize)) -> Array4<f32> {
        convkit_viz::views::demo_input(1, i.0, i.1)
    }
}
