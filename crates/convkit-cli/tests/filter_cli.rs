//! End-to-end tests of `convkit filter`: images and .npy in and out, batches, errors.

use assert_cmd::Command;
use convkit::filter::{
    saturate_u8, Depth, FilterBorder, FilterOptions, FilterPlan, Image, KernelSpec,
};
use ndarray::{Array2, Array3, ArrayD};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::path::Path;

fn convkit() -> Command {
    Command::cargo_bin("convkit").expect("the convkit binary")
}

fn pattern(w: u32, h: u32, c: u32) -> Vec<u8> {
    (0..w * h * c)
        .map(|i| ((i * 37 + (i / 7) * 11) % 251) as u8)
        .collect()
}

/// The library's answer for `spec` on u8 data, saturated to u8.
fn expected_u8(spec: &str, data: &[u8], w: usize, h: usize, c: usize, border: &str) -> Vec<u8> {
    let op = KernelSpec::parse(spec).unwrap().resolve(Depth::U8).unwrap();
    let opts = FilterOptions {
        border: FilterBorder::parse(border).unwrap(),
        ..Default::default()
    };
    let plan = FilterPlan::new(&op, &opts).unwrap();
    let y = plan.run_alloc(&Image::new(data, w, h, c).unwrap()).unwrap();
    y.into_iter().map(saturate_u8).collect()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("convkit: error: "), "{err:?}");
    err
}

#[test]
fn png_in_png_out_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (23u32, 17u32);
    let px = pattern(w, h, 3);
    let inp = dir.path().join("in.png");
    image::RgbImage::from_raw(w, h, px.clone())
        .unwrap()
        .save(&inp)
        .unwrap();
    let out = dir.path().join("out.png");
    convkit()
        .args([
            "filter",
            "-k",
            "gaussian:sigma=1.3",
            "--border",
            "replicate",
        ])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let got = image::open(&out).unwrap().to_rgb8().into_raw();
    let want = expected_u8(
        "gaussian:sigma=1.3",
        &px,
        w as usize,
        h as usize,
        3,
        "replicate",
    );
    assert_eq!(got, want);
}

#[test]
fn alpha_is_passed_through_and_16_bit_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (9u32, 8u32);
    let px = pattern(w, h, 4);
    let inp = dir.path().join("rgba.png");
    image::RgbaImage::from_raw(w, h, px.clone())
        .unwrap()
        .save(&inp)
        .unwrap();
    let out = dir.path().join("o.png");
    convkit()
        .args(["filter", "-k", "sharpen"])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let got = image::open(&out).unwrap().to_rgba8().into_raw();
    let colour: Vec<u8> = px.chunks(4).flat_map(|p| p[..3].to_vec()).collect();
    let want = expected_u8("sharpen", &colour, w as usize, h as usize, 3, "reflect-101");
    for (i, (g, src)) in got.chunks(4).zip(px.chunks(4)).enumerate() {
        assert_eq!(g[3], src[3], "alpha of pixel {i}");
        assert_eq!(&g[..3], &want[i * 3..i * 3 + 3]);
    }
    // 16-bit gray stays 16-bit.
    let g16: Vec<u16> = (0..w * h).map(|i| (i * 811 % 65536) as u16).collect();
    let inp16 = dir.path().join("g16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, g16)
        .unwrap()
        .save(&inp16)
        .unwrap();
    let out16 = dir.path().join("g16_out.png");
    convkit()
        .args(["filter", "-k", "box:3"])
        .arg(&inp16)
        .arg("-o")
        .arg(&out16)
        .assert()
        .success();
    assert!(matches!(
        image::open(&out16).unwrap(),
        image::DynamicImage::ImageLuma16(_)
    ));
}

#[test]
fn npy_in_npy_out_keeps_signed_results() {
    let dir = tempfile::tempdir().unwrap();
    let a = Array2::from_shape_fn((11, 13), |(y, x)| ((x * x + 3 * y) % 17) as f32 - 8.0);
    let inp = dir.path().join("a.npy");
    let mut f = std::fs::File::create(&inp).unwrap();
    a.write_npy(&mut f).unwrap();
    let out = dir.path().join("b.npy");
    convkit()
        .args([
            "filter",
            "-k",
            "[[1,0,-1],[2,0,-2],[1,0,-1]]",
            "--border",
            "zeros",
        ])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let b = ArrayD::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(b.shape(), &[11, 13]);
    // Interior: correlation with [[1,0,-1],...] = 4 · (x[c−1] − x[c+1]) along a row pattern.
    let k = [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
    for y in 0..11usize {
        for x in 0..13usize {
            let mut e = 0.0f32;
            for (i, kr) in k.iter().enumerate() {
                for (j, kv) in kr.iter().enumerate() {
                    let (yy, xx) = (y as isize + i as isize - 1, x as isize + j as isize - 1);
                    if (0..11).contains(&yy) && (0..13).contains(&xx) {
                        e += kv * a[[yy as usize, xx as usize]];
                    }
                }
            }
            assert_eq!(b[[y, x]], e, "({y}, {x})");
        }
    }
    assert!(b.iter().any(|&v| v < 0.0), "signed results kept");
    // HWC uint8 in, --format f32 out.
    let c = Array3::from_shape_fn((5, 6, 3), |(y, x, ch)| (y * 40 + x * 7 + ch) as u8);
    let inp = dir.path().join("c.npy");
    c.write_npy(std::fs::File::create(&inp).unwrap()).unwrap();
    let out = dir.path().join("c_out.npy");
    convkit()
        .args(["filter", "-k", "sobel-y", "--format", "f32"])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let d = ArrayD::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(d.shape(), &[5, 6, 3]);
    // Interior rows: sobel-y of a ramp 40·y is 4 · 2 · 40 = 320.
    assert_eq!(d[[2, 3, 1]], 320.0);
}

#[test]
fn float_tiff_output_keeps_signed_values() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (8u32, 6u32);
    let inp = dir.path().join("g.png");
    image::GrayImage::from_raw(w, h, pattern(w, h, 1))
        .unwrap()
        .save(&inp)
        .unwrap();
    let out_dir = dir.path().join("o");
    convkit()
        .args(["filter", "-k", "sobel-x", "--format", "f32", "--out-dir"])
        .arg(&out_dir)
        .arg(&inp)
        .assert()
        .success();
    let tif = out_dir.join("g.tiff");
    let mut dec = tiff::decoder::Decoder::new(std::fs::File::open(&tif).unwrap()).unwrap();
    let tiff::decoder::DecodingResult::F32(v) = dec.read_image().unwrap() else {
        panic!("float TIFF expected")
    };
    assert_eq!(v.len(), (w * h) as usize);
    assert!(v.iter().any(|&x| x < 0.0));
    // Reading the float TIFF back through convkit works too.
    convkit()
        .args(["filter", "-k", "box:1", "--format", "f32"])
        .arg(&tif)
        .arg("-o")
        .arg(dir.path().join("again.npy"))
        .assert()
        .success();
}

#[test]
fn a_bad_file_in_a_batch_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for name in ["a.png", "c.png"] {
        image::GrayImage::from_raw(5, 4, pattern(5, 4, 1))
            .unwrap()
            .save(src.join(name))
            .unwrap();
    }
    std::fs::write(src.join("b.png"), b"not a png").unwrap();
    let out = dir.path().join("out");
    let res = convkit()
        .args(["filter", "-k", "emboss", "--out-dir"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("b.png"), "{err}");
    assert!(err.contains("1 of 3 files failed"), "{err}");
    assert!(out.join("a.png").exists() && out.join("c.png").exists());
    assert!(!out.join("b.png").exists());
}

#[test]
fn inputs_are_never_overwritten_without_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("x.png");
    let px = pattern(6, 5, 1);
    image::GrayImage::from_raw(6, 5, px.clone())
        .unwrap()
        .save(&inp)
        .unwrap();
    let before = std::fs::read(&inp).unwrap();
    let res = convkit()
        .args(["filter", "-k", "box:3", "-o"])
        .arg(&inp)
        .arg(&inp)
        .output()
        .unwrap();
    let err = one_line_error(&res);
    assert!(err.contains("refusing to overwrite"), "{err}");
    // --out-dir pointing at the input's own folder is refused the same way.
    let res = convkit()
        .args(["filter", "-k", "box:3", "--out-dir"])
        .arg(dir.path())
        .arg(&inp)
        .output()
        .unwrap();
    one_line_error(&res);
    assert_eq!(std::fs::read(&inp).unwrap(), before);
    // --in-place does it, and conflicts with -o.
    convkit()
        .args(["filter", "-k", "box:3", "--in-place"])
        .arg(&inp)
        .assert()
        .success();
    let got = image::open(&inp).unwrap().to_luma8().into_raw();
    assert_eq!(got, expected_u8("box:3", &px, 6, 5, 1, "reflect-101"));
    let res = convkit()
        .args(["filter", "-k", "box:3", "--in-place", "-o", "y.png"])
        .arg(&inp)
        .output()
        .unwrap();
    one_line_error(&res);
}

#[test]
fn errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("x.png");
    image::GrayImage::from_raw(4, 4, pattern(4, 4, 1))
        .unwrap()
        .save(&inp)
        .unwrap();
    let o = |p: &str| dir.path().join(p);
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["-k".into(), "nope".into(), "-o".into(), o("a.png").into()],
        vec![
            "-k".into(),
            "[[1,2],[3]]".into(),
            "-o".into(),
            o("a.png").into(),
        ],
        vec![
            "-k".into(),
            "box:3".into(),
            "--border".into(),
            "mirror".into(),
            "-o".into(),
            o("a.png").into(),
        ],
        vec![
            "-k".into(),
            "box:3".into(),
            "--dilation".into(),
            "0".into(),
            "-o".into(),
            o("a.png").into(),
        ],
        vec![
            "-k".into(),
            "box:3".into(),
            "--rank".into(),
            "4".into(),
            "-o".into(),
            o("a.png").into(),
        ],
        vec![
            "-k".into(),
            "sobel".into(),
            "--format".into(),
            "f32".into(),
            "-o".into(),
            o("a.png").into(),
        ],
        vec!["-k".into(), "box:3".into(), "-o".into(), o("a.xyz").into()],
        vec!["-k".into(), "box:3".into()],
    ];
    for args in cases {
        let res = convkit()
            .arg("filter")
            .arg(&inp)
            .args(&args)
            .output()
            .unwrap();
        one_line_error(&res);
    }
    let res = convkit()
        .args(["filter", "-k", "box:3", "-o"])
        .arg(o("b.png"))
        .arg(o("missing.png"))
        .output()
        .unwrap();
    let err = one_line_error(&res);
    assert!(err.contains("missing.png"), "{err}");
    assert!(!Path::new(&o("b.png")).exists());
}

#[test]
fn explain_and_kernel_files() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("x.png");
    let px = pattern(10, 9, 1);
    image::GrayImage::from_raw(10, 9, px.clone())
        .unwrap()
        .save(&inp)
        .unwrap();
    let res = convkit()
        .args(["filter", "-k", "sobel-x", "--explain", "-o"])
        .arg(dir.path().join("e.png"))
        .arg(&inp)
        .output()
        .unwrap();
    assert!(res.status.success());
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("rank 1"), "{text}");
    assert!(text.contains("weights: 2D 9, separable 6"), "{text}");
    assert!(
        text.contains("MACs per pixel: 6 (2D 6, separable 5"),
        "{text}"
    );
    assert!(text.contains("path: direct 2D"), "{text}");
    // --rank on a full-rank kernel reports the approximation error.
    let res = convkit()
        .args([
            "filter",
            "-k",
            "[[1,2,3],[4,5,6],[7,8,10]]",
            "--rank",
            "1",
            "--explain",
            "-o",
        ])
        .arg(dir.path().join("r.png"))
        .arg(&inp)
        .output()
        .unwrap();
    assert!(res.status.success());
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("rank-1 approximation: Frobenius error"),
        "{text}"
    );
    // Kernel from a text file and from an .npy file give the literal's result.
    let txt = dir.path().join("k.txt");
    std::fs::write(&txt, "# emboss\n-2 -1 0\n-1 1 1\n0 1 2\n").unwrap();
    let npy = dir.path().join("k.npy");
    let k = Array2::from_shape_vec(
        (3, 3),
        vec![-2.0f32, -1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 1.0, 2.0],
    )
    .unwrap();
    k.write_npy(std::fs::File::create(&npy).unwrap()).unwrap();
    let want = expected_u8("emboss", &px, 10, 9, 1, "reflect-101");
    for (i, kf) in [txt, npy].iter().enumerate() {
        let out = dir.path().join(format!("k{i}.png"));
        convkit()
            .args(["filter", "-k"])
            .arg(kf)
            .arg(&inp)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        assert_eq!(image::open(&out).unwrap().to_luma8().into_raw(), want);
    }
}
