use super::naive::filter_naive;
use super::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize % n
    }
}

const BORDERS: [FilterBorder; 6] = [
    FilterBorder::Constant(0.0),
    FilterBorder::Constant(7.5),
    FilterBorder::Reflect101,
    FilterBorder::Reflect,
    FilterBorder::Replicate,
    FilterBorder::Circular,
];

fn random_kernel(rng: &mut Rng, kh: usize, kw: usize) -> Kernel {
    Kernel::new(
        kh,
        kw,
        (0..kh * kw).map(|_| rng.next() * 2.0 - 1.0).collect(),
    )
    .unwrap()
}

fn check_close(got: &[f32], want: &[f64], scale: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 * scale.max(1.0),
            "{what}: index {i}: got {g}, want {w}"
        );
    }
}

/// Every path, every border, every ISA, u8 and f32, 1 and 3 channels, dilation 1–2,
/// images smaller than the kernel: the engine equals the f64 oracle.
#[test]
fn engine_matches_oracle() {
    let mut rng = Rng(7);
    let sizes = [
        (1, 1),
        (1, 5),
        (4, 1),
        (5, 7),
        (8, 6),
        (3, 2),
        (17, 33),
        (9, 140),
    ];
    let kernels = [(1, 1), (3, 3), (1, 4), (5, 2), (4, 4), (7, 5)];
    for (case, &(h, w)) in sizes.iter().enumerate() {
        for &(kh, kw) in &kernels {
            let c = if case % 2 == 0 { 1 } else { 3 };
            let d = 1 + (case + kh) % 2;
            let border = BORDERS[(case + kw) % BORDERS.len()];
            let px: Vec<u8> = (0..h * w * c).map(|_| rng.below(256) as u8).collect();
            let pf: Vec<f32> = px.iter().map(|&v| v as f32 / 3.0 - 20.0).collect();
            let k2 = random_kernel(&mut rng, kh, kw);
            let col: Vec<f64> = (0..kh).map(|_| rng.next() - 0.5).collect();
            let row: Vec<f64> = (0..kw).map(|_| rng.next() - 0.5).collect();
            let k1 = Kernel::outer(&col, &row).unwrap();
            for (k, path) in [
                (&k2, PathChoice::Direct),
                (&k1, PathChoice::Separable),
                (&k1, PathChoice::Direct),
            ] {
                let opts = FilterOptions {
                    border,
                    dilation: d,
                    path,
                    rank: None,
                };
                let plan = FilterPlan::new(&FilterOp::Linear(k.clone()), &opts).unwrap();
                let what = format!("{h}x{w}x{c} k{kh}x{kw} d{d} {border} {path:?}");
                let want_u8 = filter_naive(
                    &px.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                    (h, w, c),
                    k,
                    d,
                    border,
                );
                let want_f = filter_naive(
                    &pf.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                    (h, w, c),
                    k,
                    d,
                    border,
                );
                for isa in Isa::available() {
                    let p = plan.clone().with_isa(isa).unwrap();
                    let got = p.run_alloc(&Image::new(&px, w, h, c).unwrap()).unwrap();
                    check_close(&got, &want_u8, 255.0 * kh as f64 * kw as f64, &what);
                    let got = p.run_alloc(&Image::new(&pf, w, h, c).unwrap()).unwrap();
                    check_close(&got, &want_f, 100.0 * kh as f64 * kw as f64, &what);
                }
            }
        }
    }
}

/// The engine splits tall images into bands on several threads: results must not depend on
/// the thread count (bit for bit).
#[test]
fn bands_and_threads_do_not_change_results() {
    let mut rng = Rng(3);
    let (h, w) = (157, 61);
    let px: Vec<f32> = (0..h * w).map(|_| rng.next() as f32).collect();
    let img = Image::new(&px, w, h, 1).unwrap();
    let k2 = random_kernel(&mut rng, 5, 3);
    let k1 = Kernel::outer(&[1.0, -2.0, 0.5], &[0.25, 1.0, 3.0, -1.0]).unwrap();
    for (k, path) in [(k2, PathChoice::Direct), (k1, PathChoice::Separable)] {
        let plan = FilterPlan::new(
            &FilterOp::Linear(k),
            &FilterOptions {
                path,
                border: FilterBorder::Reflect,
                ..Default::default()
            },
        )
        .unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let four = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let a = one.install(|| plan.run_alloc(&img).unwrap());
        let b = four.install(|| plan.run_alloc(&img).unwrap());
        assert_eq!(a, b);
    }
}

/// Separable two-pass equals the 2D path on integer kernels and images (both exact in f32).
#[test]
fn separable_equals_2d_exactly_on_integers() {
    let mut rng = Rng(11);
    for name in ["sobel-x", "sobel-y", "scharr-x", "prewitt-y", "box:3"] {
        let op = KernelSpec::parse(name).unwrap().resolve(Depth::U8).unwrap();
        let FilterOp::Linear(k) = op.clone() else {
            panic!()
        };
        // Box has fractional weights; scale it to integers for the exactness check.
        let k = if name.starts_with("box") {
            Kernel::new(3, 3, k.data().iter().map(|v| (v * 9.0).round()).collect()).unwrap()
        } else {
            k
        };
        let px: Vec<u8> = (0..23 * 31 * 3).map(|_| rng.below(256) as u8).collect();
        let img = Image::new(&px, 31, 23, 3).unwrap();
        for border in BORDERS {
            let run = |path| {
                let o = FilterOptions {
                    border,
                    path,
                    ..Default::default()
                };
                let plan = FilterPlan::new(&FilterOp::Linear(k.clone()), &o).unwrap();
                plan.run_alloc(&img).unwrap()
            };
            let sep = run(PathChoice::Separable);
            assert_eq!(sep, run(PathChoice::Direct), "{name} {border}");
        }
    }
}

/// The factorisation drives the path: rank-1 kernels go separable, small rank-2 ones stay 2D.
#[test]
fn path_choice_follows_the_factorisation() {
    let plan = |s: &str| {
        let op = KernelSpec::parse(s).unwrap().resolve(Depth::F32).unwrap();
        FilterPlan::new(&op, &FilterOptions::default())
            .unwrap()
            .parts()[0]
            .clone()
    };
    // Every one is rank 1; `auto` runs the 3×3s in 2D (zero columns skipped: 6 or 9 MACs
    // beat 5 or 6 in two passes, see `separable_is_cheaper`) and the larger ones separable.
    let sep = Path::Separable { pairs: 1 };
    for (s, path, macs_2d, macs_sep) in [
        ("sobel-x", Path::Direct2D, 6, 5),
        ("sobel-y", Path::Direct2D, 9, 6),
        ("scharr-x", Path::Direct2D, 6, 5),
        ("prewitt-x", Path::Direct2D, 6, 5),
        ("box:3", Path::Direct2D, 9, 6),
        ("gaussian:sigma=1,size=5", sep, 25, 10),
        ("gaussian:sigma=2", sep, 289, 34),
    ] {
        let p = plan(s);
        assert_eq!(p.rank, 1, "{s}");
        assert_eq!(p.path, path, "{s}");
        assert_eq!((p.macs_2d, p.macs_separable), (macs_2d, macs_sep), "{s}");
        let want = if path == sep { macs_sep } else { macs_2d };
        assert_eq!(p.macs_per_pixel, want, "{s}");
    }
    let sobel = plan("sobel-x");
    assert_eq!((sobel.weights_2d, sobel.weights_separable), (9, 6));
    // A separable literal is detected as such (and, being 3×3, runs in 2D).
    let lit = plan("[[1,2,1],[2,4,2],[1,2,1]]");
    assert_eq!((lit.rank, lit.path), (1, Path::Direct2D));
    assert_eq!(lit.weights_separable, 6);
    let lap = plan("laplacian");
    assert_eq!(lap.path, Path::Direct2D);
    assert_eq!(lap.macs_per_pixel, 9);
    // Tall boxes: running sums down the columns, prefix sums across (O(1) per pixel).
    let b = plan("box:31");
    assert_eq!((b.rank, b.path, b.macs_per_pixel), (1, Path::BoxSums, 4));
    assert_eq!(plan("[[2,2],[2,2],[2,2],[2,2]]").path, Path::BoxSums);
    let zero = plan("[[0,0],[0,0]]");
    assert_eq!((zero.rank, zero.path), (0, Path::Direct2D));
    // Laplacian: rank 2, 2·(3+3) = 12 > 9, so 2D.
    assert_eq!(lap.rank, 2);
    assert_eq!(lap.weights_separable, 12);
    // LoG 13×13: rank 2, 2·26 = 52 < 169, so two pairs.
    let log = plan("laplacian-of-gaussian:sigma=1.5");
    assert_eq!((log.rows, log.rank), (13, 2));
    assert_eq!(log.path, Path::Separable { pairs: 2 });
    assert_eq!(log.macs_per_pixel, 52);
    // Random 7×7: full rank, 2D.
    let mut rng = Rng(21);
    let k = random_kernel(&mut rng, 7, 7);
    let p = FilterPlan::new(&FilterOp::Linear(k), &FilterOptions::default()).unwrap();
    assert_eq!((p.parts()[0].rank, p.parts()[0].path), (7, Path::Direct2D));
}

/// Rank r > 1 as r pairs equals the 2D path and the oracle (LoG is exactly rank 2; a random
/// 5×4 kernel forced separable runs as 4 pairs).
#[test]
fn rank_r_pairs_equal_the_2d_filter() {
    let mut rng = Rng(17);
    let (h, w) = (29, 23);
    let px: Vec<f32> = (0..h * w * 3).map(|_| rng.next() as f32 * 255.0).collect();
    let img = Image::new(&px, w, h, 3).unwrap();
    let log = KernelSpec::parse("log:sigma=1.2")
        .unwrap()
        .resolve(Depth::F32)
        .unwrap();
    let rnd = FilterOp::Linear(random_kernel(&mut rng, 5, 4));
    for (op, pairs) in [(log, 2), (rnd, 4)] {
        let FilterOp::Linear(k) = &op else { panic!() };
        let want = filter_naive(
            &px.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            (h, w, 3),
            k,
            1,
            FilterBorder::Reflect,
        );
        let run = |path| {
            let o = FilterOptions {
                path,
                border: FilterBorder::Reflect,
                ..Default::default()
            };
            let plan = FilterPlan::new(&op, &o).unwrap();
            (plan.parts()[0].path, plan.run_alloc(&img).unwrap())
        };
        let (p, sep) = run(PathChoice::Separable);
        assert_eq!(p, Path::Separable { pairs });
        let (_, d2) = run(PathChoice::Direct);
        let scale = 255.0 * k.data().iter().map(|v| v.abs()).sum::<f64>();
        check_close(&sep, &want, scale, "separable");
        check_close(&d2, &want, scale, "2D");
    }
}

/// `rank: Some(r)` runs the best rank-r approximation and reports its error.
#[test]
fn forced_low_rank_reports_its_error() {
    let mut rng = Rng(23);
    let k = random_kernel(&mut rng, 7, 7);
    let op = FilterOp::Linear(k.clone());
    let opts = |r| FilterOptions {
        rank: Some(r),
        ..Default::default()
    };
    let p1 = FilterPlan::new(&op, &opts(1)).unwrap();
    let i1 = &p1.parts()[0];
    assert_eq!(i1.path, Path::Separable { pairs: 1 });
    let e1 = i1.approx_error.unwrap();
    assert!(e1 > 0.1, "a random kernel is far from rank 1: {e1}");
    let e3 = FilterPlan::new(&op, &opts(3)).unwrap().parts()[0]
        .approx_error
        .unwrap();
    assert!(e3 < e1);
    let e7 = FilterPlan::new(&op, &opts(7)).unwrap().parts()[0]
        .approx_error
        .unwrap();
    assert!(e7 < 1e-12, "full rank is exact: {e7}");
    assert!(p1.explain().contains("rank-1 approximation"));
    assert!(FilterPlan::new(&op, &opts(8)).is_err());
    // The rank-1 run equals the oracle on the rank-1 approximation.
    let sv = &i1.singular_values;
    assert_eq!(sv.len(), 7);
    let (h, w) = (12, 15);
    let px: Vec<f32> = (0..h * w).map(|_| rng.next() as f32).collect();
    let got = p1.run_alloc(&Image::new(&px, w, h, 1).unwrap()).unwrap();
    let f = crate::separable::low_rank(k.to_array().view(), 1).unwrap();
    let approx = f.reconstruct();
    let ka = Kernel::new(7, 7, approx.iter().copied().collect()).unwrap();
    let want = filter_naive(
        &px.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        (h, w, 1),
        &ka,
        1,
        FilterBorder::Reflect101,
    );
    check_close(&got, &want, 50.0, "rank-1 approximation");
}

#[test]
fn sobel_magnitude_is_hypot_of_the_gradients() {
    let mut rng = Rng(5);
    let (h, w) = (13, 10);
    let px: Vec<u8> = (0..h * w).map(|_| rng.below(256) as u8).collect();
    let img = Image::new(&px, w, h, 1).unwrap();
    let run = |s: &str| {
        let op = KernelSpec::parse(s).unwrap().resolve(Depth::U8).unwrap();
        FilterPlan::new(&op, &FilterOptions::default())
            .unwrap()
            .run_alloc(&img)
            .unwrap()
    };
    let (gx, gy, m) = (run("sobel-x"), run("sobel-y"), run("sobel"));
    for i in 0..h * w {
        assert_eq!(m[i], gx[i].hypot(gy[i]));
    }
}

/// The oracle agrees with the crate's convolution reference (PyTorch semantics) where the two
/// coincide: odd kernels, `same` padding, zeros / reflect-101 / replicate / circular.
#[test]
fn oracle_agrees_with_the_convolution_reference() {
    use crate::spec::{ConvSpec, PaddingMode};
    use ndarray::Array4;
    let mut rng = Rng(9);
    let (h, w) = (6, 7);
    let x: Vec<f64> = (0..h * w).map(|_| rng.next()).collect();
    let k = random_kernel(&mut rng, 3, 5);
    for (mode, border) in [
        (PaddingMode::Zeros, FilterBorder::Constant(0.0)),
        (PaddingMode::Reflect, FilterBorder::Reflect101),
        (PaddingMode::Replicate, FilterBorder::Replicate),
        (PaddingMode::Circular, FilterBorder::Circular),
    ] {
        let spec = ConvSpec::conv2d(1, 1, (3, 5))
            .padding((1, 2))
            .padding_mode(mode)
            .bias(false)
            .build()
            .unwrap();
        let xa = Array4::from_shape_vec((1, 1, h, w), x.clone()).unwrap();
        let wa = Array4::from_shape_vec((1, 1, 3, 5), k.data().to_vec()).unwrap();
        let y = crate::reference::forward(&spec, xa.view(), wa.view(), None).unwrap();
        let ours = filter_naive(&x, (h, w, 1), &k, 1, border);
        for (a, b) in y.iter().zip(&ours) {
            assert!((a - b).abs() < 1e-12, "{border}");
        }
    }
}

#[test]
fn bad_options_are_errors() {
    let op = KernelSpec::parse("sobel-x")
        .unwrap()
        .resolve(Depth::U8)
        .unwrap();
    let o = |f: fn(&mut FilterOptions)| {
        let mut o = FilterOptions::default();
        f(&mut o);
        FilterPlan::new(&op, &o)
    };
    assert!(o(|o| o.dilation = 0).is_err());
    assert!(o(|o| o.rank = Some(0)).is_err());
    assert!(o(|o| o.dilation = 1 << 20).is_err());
    let lap = KernelSpec::parse("laplacian")
        .unwrap()
        .resolve(Depth::U8)
        .unwrap();
    let plan = FilterPlan::new(&lap, &FilterOptions::default()).unwrap();
    let px = [0u8; 12];
    let img = Image::new(&px, 4, 3, 1).unwrap();
    assert!(plan.run(&img, &mut [0.0; 11]).is_err());
    assert!(Image::new(&px, 5, 3, 1).is_err());
    assert!(Image::new(&px[..0], 0, 3, 1).is_err());
    for b in ["mirror", "constant:x", "constant:inf"] {
        assert!(FilterBorder::parse(b).is_err(), "{b}");
    }
    assert_eq!(
        FilterBorder::parse("constant:2.5").unwrap(),
        FilterBorder::Constant(2.5)
    );
    assert_eq!(FilterBorder::parse("wrap").unwrap(), FilterBorder::Circular);
}

#[test]
fn saturation_rounds_half_to_even() {
    assert_eq!(saturate_u8(2.5), 2);
    assert_eq!(saturate_u8(3.5), 4);
    assert_eq!(saturate_u8(-0.6), 0);
    assert_eq!(saturate_u8(255.5), 255);
    assert_eq!(saturate_u8(f32::NAN), 0);
    assert_eq!(saturate_u16(70000.0), 65535);
    assert_eq!(saturate_u16(1.5), 2);
}

/// Box kernels on the running-sum path equal the oracle on every border, ISA and band split;
/// on u8 images the sums are exact, so the result is the correctly rounded mean.
#[test]
fn box_sums_match_the_oracle() {
    let mut rng = Rng(29);
    for (h, w, c) in [(37, 11, 1), (6, 9, 3), (3, 4, 1), (130, 17, 2)] {
        let px: Vec<u8> = (0..h * w * c).map(|_| rng.below(256) as u8).collect();
        let pf: Vec<f64> = px.iter().map(|&v| v as f64).collect();
        for (kh, kw) in [(4, 1), (5, 7), (9, 4), (31, 31)] {
            let k = kernels::box_kernel(kw, kh).unwrap();
            for border in BORDERS {
                let opts = FilterOptions {
                    border,
                    ..Default::default()
                };
                let plan = FilterPlan::new(&FilterOp::Linear(k.clone()), &opts).unwrap();
                assert_eq!(plan.parts()[0].path, Path::BoxSums);
                let want = filter_naive(&pf, (h, w, c), &k, 1, border);
                for isa in Isa::available() {
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let p = plan.clone().with_isa(isa).unwrap();
                        let got = pool
                            .install(|| p.run_alloc(&Image::new(&px, w, h, c).unwrap()))
                            .unwrap();
                        let what = format!("{h}x{w}x{c} box {kh}x{kw} {border} {isa:?}");
                        check_close(&got, &want, 255.0, &what);
                        if border != FilterBorder::Constant(7.5) {
                            // Integer sums: exactly the mean, rounded once.
                            for (g, e) in got.iter().zip(&want) {
                                assert_eq!(*g, *e as f32, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Outputs over 16 MiB are written with non-temporal stores; they must equal the oracle.
#[test]
fn large_outputs_with_streaming_stores_match_the_oracle() {
    let mut rng = Rng(31);
    let (h, w) = (2050, 2048);
    let px: Vec<f32> = (0..h * w).map(|_| rng.next() as f32).collect();
    let pf: Vec<f64> = px.iter().map(|&v| v as f64).collect();
    let img = Image::new(&px, w, h, 1).unwrap();
    let k2 = random_kernel(&mut rng, 3, 3);
    let k1 = kernels::sobel_x();
    for (k, path) in [(k2, PathChoice::Direct), (k1, PathChoice::Separable)] {
        let opts = FilterOptions {
            path,
            ..Default::default()
        };
        let plan = FilterPlan::new(&FilterOp::Linear(k.clone()), &opts).unwrap();
        let want = filter_naive(&pf, (h, w, 1), &k, 1, FilterBorder::Reflect101);
        for isa in Isa::available() {
            let got = plan.clone().with_isa(isa).unwrap().run_alloc(&img).unwrap();
            check_close(&got, &want, 10.0, &format!("{path:?} {isa:?}"));
        }
    }
}

/// f32 images run the separable row pass in place on the image rows (edges from short padded
/// buffers), u8 images through a widened padded copy: on the same integral pixels the two must
/// agree bit for bit, for every border, ISA, channel count and width around the kernel's.
#[test]
fn in_place_f32_row_pass_equals_the_padded_path() {
    let mut rng = Rng(41);
    for (h, w, c) in [
        (9, 5, 1),
        (7, 6, 3),
        (12, 40, 1),
        (5, 33, 2),
        (6, 4, 1),
        (3, 2, 3),
    ] {
        let px: Vec<u8> = (0..h * w * c).map(|_| rng.below(256) as u8).collect();
        let pf: Vec<f32> = px.iter().map(|&v| v as f32).collect();
        for (kh, kw) in [(3, 3), (1, 5), (5, 1), (3, 7)] {
            let col: Vec<f64> = (0..kh).map(|_| rng.next() * 2.0 - 1.0).collect();
            let mut row: Vec<f64> = (0..kw).map(|_| rng.next() * 2.0 - 1.0).collect();
            row[kw / 2] = 0.0; // a skipped zero tap
            let k = Kernel::outer(&col, &row).unwrap();
            for border in BORDERS {
                for dilation in [1, 2] {
                    let opts = FilterOptions {
                        border,
                        dilation,
                        path: PathChoice::Separable,
                        ..Default::default()
                    };
                    let plan = FilterPlan::new(&FilterOp::Linear(k.clone()), &opts).unwrap();
                    for isa in Isa::available() {
                        let p = plan.clone().with_isa(isa).unwrap();
                        let a = p.run_alloc(&Image::new(&px, w, h, c).unwrap()).unwrap();
                        let b = p.run_alloc(&Image::new(&pf, w, h, c).unwrap()).unwrap();
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&a),
                            bits(&b),
                            "{h}x{w}x{c} {kh}x{kw} d={dilation} {border} {isa:?}"
                        );
                    }
                }
            }
        }
    }
}
