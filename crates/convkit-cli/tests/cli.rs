//! End-to-end tests of the `convkit` binary: `.npy` round trips against the library's
//! reference engine, every error path (one line on stderr, non-zero status), atomic outputs,
//! `explain` and `tour`.

use assert_cmd::Command;
use convkit::{reference, ConvSpec, GradRequest, Padding, PaddingMode, ValidSpec};
use ndarray::{Array, Array1, Array3, Array4, ArrayD, Dimension, ShapeBuilder};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn convkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_convkit"))
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
fn rand_array<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim> {
    let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    Array::from_shape_simple_fn(shape, || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

fn save<D: Dimension>(dir: &TempDir, name: &str, a: &Array<f32, D>) -> PathBuf {
    let p = dir.path().join(name);
    a.write_npy(fs::File::create(&p).unwrap()).unwrap();
    p
}

fn load(p: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(fs::File::open(p).unwrap()).unwrap()
}

/// The file written by the CLI must match the reference result to f32 precision: within
/// 1e-5 × max(1, max |reference|). (Under `--algo reference`, and today under `auto` too, the
/// two are bit-identical; a faster engine behind `auto` accumulates differently.)
fn assert_same(p: &Path, want: ArrayD<f32>) {
    let got = load(p);
    assert_eq!(got.shape(), want.shape(), "{}", p.display());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5 * scale, "{}: max error {err:e}", p.display());
}

/// Bit-for-bit equality, for `--algo reference`.
fn assert_identical(p: &Path, want: ArrayD<f32>) {
    assert_eq!(load(p), want, "{}", p.display());
}

/// Runs the CLI expecting success.
fn ok(args: &[&str]) -> String {
    let out = convkit().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI expecting failure: non-zero status, exactly one line on stderr, in the
/// `convkit: error:` format, containing `needle`.
fn fails(args: &[&str], needle: &str) -> String {
    let out = convkit().args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr:?}"
    );
    assert!(stderr.ends_with('\n'));
    assert!(stderr.starts_with("convkit: error: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty());
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Forward and all three gradients through the CLI, compared with the reference.
#[allow(clippy::too_many_arguments)]
fn round_trip_2d(
    cmd: &str,
    spec: ValidSpec,
    x_shape: [usize; 4],
    flags: &[&str],
    bias: bool,
    seed: u64,
) {
    let dir = TempDir::new().unwrap();
    let x = rand_array(x_shape, seed);
    let w = rand_array(spec.weight_shape(), seed + 1);
    let b = rand_array(spec.out_channels(), seed + 2);
    let geom = spec.geometry(x_shape).unwrap();
    let dy = rand_array(geom.output_shape(), seed + 3);
    let (xp, wp, bp, dyp) = (
        save(&dir, "x.npy", &x),
        save(&dir, "w.npy", &w),
        save(&dir, "b.npy", &b),
        save(&dir, "dy.npy", &dy),
    );
    let out = |n: &str| dir.path().join(n);
    let (y, dx, dw, db) = (out("y.npy"), out("dx.npy"), out("dw.npy"), out("db.npy"));
    let mut args = vec![cmd, "--input", s(&xp), "--weight", s(&wp)];
    if bias {
        args.extend(["--bias", s(&bp)]);
    }
    args.extend(flags);
    args.extend(["--output", s(&y), "--grad-output", s(&dyp)]);
    args.extend(["--grad-input", s(&dx), "--grad-weight", s(&dw)]);
    args.extend(["--grad-bias", s(&db)]);
    ok(&args);

    let want_y = reference::forward(&spec, x.view(), w.view(), bias.then_some(b.view())).unwrap();
    let g = reference::backward(&spec, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap();
    assert_same(&y, want_y.into_dyn());
    assert_same(&dx, g.input.unwrap().into_dyn());
    assert_same(&dw, g.weight.unwrap().into_dyn());
    assert_same(&db, g.bias.unwrap().into_dyn());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".convkit-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn conv2d_forward_backward_match_reference() {
    let spec = ConvSpec::conv2d(4, 6, [3, 2])
        .stride([2, 1])
        .padding_sides([1, 0, 2, 1])
        .dilation([1, 2])
        .groups(2)
        .build()
        .unwrap();
    round_trip_2d(
        "conv2d",
        spec,
        [2, 4, 9, 8],
        &[
            "--stride",
            "2,1",
            "--padding",
            "1,0,2,1",
            "--dilation",
            "1,2",
            "--groups",
            "2",
        ],
        true,
        1,
    );
}

#[test]
fn conv2d_without_bias_and_symmetric_padding() {
    let spec = ConvSpec::conv2d(3, 5, 3)
        .padding([1, 2])
        .bias(false)
        .build()
        .unwrap();
    round_trip_2d(
        "conv2d",
        spec,
        [1, 3, 7, 6],
        &["--padding", "1,2"],
        false,
        2,
    );
}

#[test]
fn conv2d_every_padding_mode() {
    for (mode, name) in [
        (PaddingMode::Zeros, "zeros"),
        (PaddingMode::Reflect, "reflect"),
        (PaddingMode::Replicate, "replicate"),
        (PaddingMode::Circular, "circular"),
    ] {
        let spec = ConvSpec::conv2d(2, 3, 3)
            .padding_sides([2, 1, 0, 2])
            .padding_mode(mode)
            .stride(2)
            .build()
            .unwrap();
        round_trip_2d(
            "conv2d",
            spec,
            [2, 2, 6, 5],
            &[
                "--padding",
                "2,1,0,2",
                "--padding-mode",
                name,
                "--stride",
                "2",
            ],
            true,
            3,
        );
    }
}

#[test]
fn conv2d_padding_rules() {
    for (rule, flag, stride) in [
        (Padding::Same, "same", 1),
        (Padding::SameTf, "same-tf", 2),
        (Padding::Valid, "valid", 1),
    ] {
        let spec = ConvSpec::conv2d(2, 2, [4, 3])
            .padding_rule(rule)
            .stride(stride)
            .dilation(2)
            .build()
            .unwrap();
        let st = stride.to_string();
        round_trip_2d(
            "conv2d",
            spec,
            [1, 2, 9, 8],
            &["--padding", flag, "--stride", &st, "--dilation", "2"],
            true,
            4,
        );
    }
}

#[test]
fn depthwise_with_multiplier() {
    let spec = ConvSpec::conv2d(3, 6, 3)
        .groups(3)
        .padding(1)
        .build()
        .unwrap();
    round_trip_2d(
        "conv2d",
        spec,
        [1, 3, 5, 5],
        &["--groups", "3", "--padding", "1"],
        true,
        5,
    );
}

#[test]
fn conv_transpose2d_forward_backward_match_reference() {
    let spec = ConvSpec::conv_transpose2d(4, 6, [3, 4])
        .stride([2, 3])
        .padding([1, 0])
        .output_padding([1, 2])
        .groups(2)
        .build()
        .unwrap();
    round_trip_2d(
        "conv-transpose2d",
        spec,
        [2, 4, 4, 3],
        &[
            "--stride",
            "2,3",
            "--padding",
            "1,0",
            "--output-padding",
            "1,2",
            "--groups",
            "2",
        ],
        true,
        6,
    );
}

#[test]
fn conv_transpose2d_output_size_and_dilation() {
    let spec = ConvSpec::conv_transpose2d(2, 3, 3)
        .stride(2)
        .padding(1)
        .dilation(2)
        .output_size([12, 11])
        .build()
        .unwrap();
    round_trip_2d(
        "conv-transpose2d",
        spec,
        [1, 2, 5, 5],
        &[
            "--stride",
            "2",
            "--padding",
            "1",
            "--dilation",
            "2",
            "--output-size",
            "12,11",
        ],
        false,
        7,
    );
}

/// 1D: the CLI's (N, C, L) files against the reference's 1D entry points.
fn round_trip_1d(cmd: &str, spec: ValidSpec, x_shape: [usize; 3], flags: &[&str], seed: u64) {
    let dir = TempDir::new().unwrap();
    let ws = spec.weight_shape_dyn();
    let x = rand_array(x_shape, seed);
    let w = rand_array([ws[0], ws[1], ws[2]], seed + 1);
    let b: Array1<f32> = rand_array(spec.out_channels(), seed + 2);
    let g = spec
        .geometry([x_shape[0], x_shape[1], 1, x_shape[2]])
        .unwrap();
    let dy: Array3<f32> = rand_array([g.n, g.k, g.ow], seed + 3);
    let (xp, wp, bp, dyp) = (
        save(&dir, "x.npy", &x),
        save(&dir, "w.npy", &w),
        save(&dir, "b.npy", &b),
        save(&dir, "dy.npy", &dy),
    );
    let out = |n: &str| dir.path().join(n);
    let (y, dx, dw, db) = (out("y.npy"), out("dx.npy"), out("dw.npy"), out("db.npy"));
    let mut args = vec![cmd, "--input", s(&xp), "--weight", s(&wp), "--bias", s(&bp)];
    args.extend(flags);
    args.extend(["--output", s(&y), "--grad-output", s(&dyp)]);
    args.extend([
        "--grad-input",
        s(&dx),
        "--grad-weight",
        s(&dw),
        "--grad-bias",
        s(&db),
    ]);
    ok(&args);
    let want = reference::forward_1d(&spec, x.view(), w.view(), Some(b.view())).unwrap();
    let grads =
        reference::backward_1d(&spec, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap();
    assert_same(&y, want.into_dyn());
    assert_same(&dx, grads.input.unwrap().into_dyn());
    assert_same(&dw, grads.weight.unwrap().into_dyn());
    assert_same(&db, grads.bias.unwrap().into_dyn());
}

#[test]
fn conv1d_forward_backward_match_reference() {
    let spec = ConvSpec::conv1d(4, 6, 3)
        .stride(2)
        .padding_sides([0, 0, 2, 1])
        .dilation(2)
        .groups(2)
        .build()
        .unwrap();
    round_trip_1d(
        "conv1d",
        spec,
        [2, 4, 11],
        &[
            "--stride",
            "2",
            "--padding",
            "2,1",
            "--dilation",
            "2",
            "--groups",
            "2",
        ],
        10,
    );
    let spec = ConvSpec::conv1d(2, 2, 4)
        .padding(2)
        .padding_mode(PaddingMode::Circular)
        .build()
        .unwrap();
    round_trip_1d(
        "conv1d",
        spec,
        [1, 2, 7],
        &["--padding", "2", "--padding-mode", "circular"],
        11,
    );
}

#[test]
fn conv_transpose1d_forward_backward_match_reference() {
    let spec = ConvSpec::conv_transpose1d(4, 2, 4)
        .stride(3)
        .padding(1)
        .output_padding(2)
        .groups(2)
        .build()
        .unwrap();
    round_trip_1d(
        "conv-transpose1d",
        spec,
        [2, 4, 5],
        &[
            "--stride",
            "3",
            "--padding",
            "1",
            "--output-padding",
            "2",
            "--groups",
            "2",
        ],
        12,
    );
}

#[test]
fn backward_only_and_partial_gradients() {
    let dir = TempDir::new().unwrap();
    let spec = ConvSpec::conv2d(2, 3, 3).bias(false).build().unwrap();
    let x: Array4<f32> = rand_array([1, 2, 5, 5], 20);
    let w: Array4<f32> = rand_array([3, 2, 3, 3], 21);
    let dy: Array4<f32> = rand_array([1, 3, 3, 3], 22);
    let (xp, wp, dyp) = (
        save(&dir, "x.npy", &x),
        save(&dir, "w.npy", &w),
        save(&dir, "dy.npy", &dy),
    );
    let dw = dir.path().join("dw.npy");
    ok(&[
        "conv2d",
        "--input",
        s(&xp),
        "--weight",
        s(&wp),
        "--grad-output",
        s(&dyp),
        "--grad-weight",
        s(&dw),
    ]);
    let want = reference::backward(
        &spec,
        x.view(),
        w.view(),
        dy.view(),
        GradRequest {
            weight: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same(&dw, want.weight.unwrap().into_dyn());
    assert!(!dir.path().join("y.npy").exists());
}

#[test]
fn float64_input_is_accepted() {
    let dir = TempDir::new().unwrap();
    let x: Array4<f32> = rand_array([1, 1, 4, 4], 30);
    let w: Array4<f32> = rand_array([1, 1, 2, 2], 31);
    let x64 = x.mapv(|v| v as f64);
    let xp = dir.path().join("x64.npy");
    x64.write_npy(fs::File::create(&xp).unwrap()).unwrap();
    let wp = save(&dir, "w.npy", &w);
    let y = dir.path().join("y.npy");
    ok(&[
        "conv2d",
        "--input",
        s(&xp),
        "--weight",
        s(&wp),
        "--output",
        s(&y),
        "--algo",
        "reference",
    ]);
    let spec = ConvSpec::conv2d(1, 1, 2).bias(false).build().unwrap();
    let want = reference::forward(&spec, x.view(), w.view(), None).unwrap();
    assert_identical(&y, want.into_dyn());
}

/// A hand-written `.npy` (format 1.0) with the given dtype descriptor and raw data.
fn raw_npy(dir: &TempDir, name: &str, descr: &str, shape: &str, data: &[u8]) -> PathBuf {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    let p = dir.path().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// A small valid setup for the error tests: x (1, 2, 5, 5), w (3, 2, 3, 3), b (3).
struct Setup {
    dir: TempDir,
    x: PathBuf,
    w: PathBuf,
    b: PathBuf,
    y: PathBuf,
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let x = save(&dir, "x.npy", &rand_array([1, 2, 5, 5], 40));
    let w = save(&dir, "w.npy", &rand_array([3, 2, 3, 3], 41));
    let b = save(&dir, "b.npy", &rand_array(3, 42));
    let y = dir.path().join("y.npy");
    Setup { dir, x, w, b, y }
}

impl Setup {
    fn args<'a>(&'a self, cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![cmd, "--input", s(&self.x), "--weight", s(&self.w)];
        v.extend(extra);
        v
    }
    fn fwd<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = self.args("conv2d", extra);
        v.extend(["--output", s(&self.y)]);
        v
    }
}

#[test]
fn error_missing_file() {
    let t = setup();
    let missing = t.dir.path().join("nope.npy");
    let mut a = vec!["conv2d", "--input", s(&missing), "--weight", s(&t.w)];
    a.extend(["--output", s(&t.y)]);
    fails(&a, "nope.npy");
    assert!(!t.y.exists());
}

#[test]
fn error_wrong_dtypes() {
    let t = setup();
    let i64_bytes: Vec<u8> = (0..50i64).flat_map(|v| v.to_le_bytes()).collect();
    let p = raw_npy(&t.dir, "i8.npy", "<i8", "(1, 2, 5, 5)", &i64_bytes);
    let mut a = vec![
        "conv2d",
        "--input",
        s(&p),
        "--weight",
        s(&t.w),
        "--output",
        s(&t.y),
    ];
    fails(&a, "unsupported dtype '<i8'");
    let be: Vec<u8> = (0..50).flat_map(|v| (v as f32).to_be_bytes()).collect();
    let p = raw_npy(&t.dir, "be.npy", ">f4", "(1, 2, 5, 5)", &be);
    a[2] = s(&p);
    fails(&a, "unsupported dtype '>f4'");
    let half = vec![0u8; 100];
    let p = raw_npy(&t.dir, "f2.npy", "<f2", "(1, 2, 5, 5)", &half);
    a[2] = s(&p);
    fails(&a, "unsupported dtype '<f2'");
    let p = t.dir.path().join("garbage.npy");
    fs::write(&p, b"this is not numpy\n").unwrap();
    a[2] = s(&p);
    fails(&a, "not a readable .npy file");
    let p = raw_npy(&t.dir, "short.npy", "<f4", "(1, 2, 5, 5)", &[0u8; 12]);
    a[2] = s(&p);
    fails(&a, "short.npy");
    assert!(!t.y.exists());
}

#[test]
fn error_wrong_rank() {
    let t = setup();
    let x3 = save(&t.dir, "x3.npy", &rand_array([1, 2, 5], 50));
    let mut a = vec![
        "conv2d",
        "--input",
        s(&x3),
        "--weight",
        s(&t.w),
        "--output",
        s(&t.y),
    ];
    fails(&a, "input must have 4 dimensions");
    // A 4D input to conv1d.
    a[0] = "conv1d";
    a[2] = s(&t.x);
    fails(&a, "input must have 3 dimensions");
    // A 2D bias.
    let b2 = save(&t.dir, "b2.npy", &rand_array([3, 1], 51));
    fails(
        &t.fwd(&["--bias", s(&b2)]),
        "bias must have 1 dimension (K,)",
    );
    // A wrong-length bias.
    let b4 = save(&t.dir, "b4.npy", &rand_array(4, 52));
    fails(
        &t.fwd(&["--bias", s(&b4)]),
        "bias has shape [4], expected [3]",
    );
}

#[test]
fn error_channel_mismatch() {
    let t = setup();
    fails(
        &t.fwd(&["--groups", "2"]),
        "input has 2 channels but weight (3, 2, 3, 3) with groups 2 expects 4",
    );
    // Transposed: the weight's first axis is the input channels.
    let mut a = t.args("conv-transpose2d", &[]);
    a.extend(["--output", s(&t.y)]);
    fails(
        &a,
        "input has 2 channels but weight (3, 2, 3, 3) with groups 1 expects 3",
    );
    // Channels not divisible by groups.
    let w = save(&t.dir, "w4.npy", &rand_array([3, 1, 3, 3], 53));
    let mut a = vec![
        "conv2d",
        "--input",
        s(&t.x),
        "--weight",
        s(&w),
        "--groups",
        "2",
    ];
    a.extend(["--output", s(&t.y)]);
    fails(&a, "out_channels (3) is not divisible by groups (2)");
}

#[test]
fn error_bad_flag_values() {
    let t = setup();
    fails(&t.fwd(&["--stride", "a"]), "--stride");
    fails(
        &t.fwd(&["--stride", "0"]),
        "stride height must be at least 1",
    );
    fails(
        &t.fwd(&["--stride", "1,2,3"]),
        "stride takes one value or two",
    );
    fails(
        &t.fwd(&["--padding", "1,2,3"]),
        "padding takes P, PH,PW or T,B,L,R",
    );
    fails(&t.fwd(&["--padding", "sam"]), "same-tf");
    fails(
        &t.fwd(&["--padding-mode", "mirror"]),
        "unknown padding mode 'mirror'",
    );
    fails(&t.fwd(&["--groups", "0"]), "groups must be at least 1");
    fails(&t.fwd(&["--groups", "-1"]), "'-1'");
    fails(&t.fwd(&["--algo", "fastest"]), "--algo");
    fails(
        &t.fwd(&["--padding", "same", "--stride", "2"]),
        "padding 'same' needs stride 1",
    );
    fails(
        &t.fwd(&["--dilation", "5"]),
        "kernel extent 11 on the height axis is larger than the padded input (5)",
    );
    fails(
        &t.fwd(&["--padding", "5", "--padding-mode", "reflect"]),
        "reflect padding of 5",
    );
    fails(
        &t.fwd(&["--output-padding", "1"]),
        "transposed convolutions only",
    );
    fails(&t.fwd(&["--bogus"]), "unexpected argument '--bogus'");
    fails(&["conv2d", "--input", s(&t.x)], "--weight");
    fails(&["conv3d"], "unrecognized subcommand 'conv3d'");
}

#[test]
fn error_padding_mode_on_transposed() {
    let t = setup();
    let w = save(&t.dir, "wt.npy", &rand_array([2, 3, 3, 3], 60));
    for cmd in ["conv-transpose2d", "conv-transpose1d"] {
        let (x, w) = if cmd == "conv-transpose1d" {
            (
                save(&t.dir, "x1.npy", &rand_array([1, 2, 5], 61)),
                save(&t.dir, "w1.npy", &rand_array([2, 3, 3], 62)),
            )
        } else {
            (t.x.clone(), w.clone())
        };
        let a = vec![
            cmd,
            "--input",
            s(&x),
            "--weight",
            s(&w),
            "--padding-mode",
            "reflect",
            "--output",
            s(&t.y),
        ];
        fails(
            &a,
            "transposed convolution supports the zeros padding mode only",
        );
    }
    // Output padding must be smaller than stride or dilation.
    let a = vec![
        "conv-transpose2d",
        "--input",
        s(&t.x),
        "--weight",
        s(&w),
        "--stride",
        "2",
        "--output-padding",
        "2",
        "--output",
        s(&t.y),
    ];
    fails(&a, "output_padding 2 on the height axis must be smaller");
    let a = vec![
        "conv-transpose2d",
        "--input",
        s(&t.x),
        "--weight",
        s(&w),
        "--stride",
        "2",
        "--output-size",
        "20,20",
        "--output",
        s(&t.y),
    ];
    fails(&a, "requested output size 20");
    assert!(!t.y.exists());
}

#[test]
fn error_output_over_an_input() {
    let t = setup();
    let before = fs::read(&t.x).unwrap();
    let a = t.args("conv2d", &["--output", s(&t.x)]);
    fails(&a, "would overwrite the input");
    let a = t.args("conv2d", &["--bias", s(&t.b), "--output", s(&t.b)]);
    fails(&a, "would overwrite the input");
    // The same file through another spelling of its path.
    let other = t.dir.path().join(".").join("w.npy");
    let a = t.args("conv2d", &["--output", s(&other)]);
    fails(&a, "would overwrite the input");
    let dy = save(&t.dir, "dy.npy", &rand_array([1, 3, 3, 3], 70));
    let a = t.args("conv2d", &["--grad-output", s(&dy), "--grad-input", s(&dy)]);
    fails(&a, "would overwrite the input");
    assert_eq!(fs::read(&t.x).unwrap(), before);
}

#[test]
fn error_flag_combinations() {
    let t = setup();
    fails(&t.args("conv2d", &[]), "nothing to do");
    let dx = t.dir.path().join("dx.npy");
    fails(
        &t.args("conv2d", &["--grad-input", s(&dx)]),
        "--grad-input needs --grad-output",
    );
    let dy = save(&t.dir, "dy.npy", &rand_array([1, 3, 3, 3], 80));
    fails(
        &t.args("conv2d", &["--grad-output", s(&dy)]),
        "--grad-output needs at least one",
    );
    fails(
        &t.args(
            "conv2d",
            &[
                "--output",
                s(&dx),
                "--grad-output",
                s(&dy),
                "--grad-input",
                s(&dx),
            ],
        ),
        "--output and --grad-input name the same file",
    );
    let bad_dy = save(&t.dir, "bad_dy.npy", &rand_array([1, 3, 4, 3], 81));
    fails(
        &t.args(
            "conv2d",
            &["--grad-output", s(&bad_dy), "--grad-input", s(&dx)],
        ),
        "grad output has shape (1, 3, 4, 3), expected the layer's output shape (1, 3, 3, 3)",
    );
    assert!(!dx.exists());
}

#[test]
fn outputs_are_atomic() {
    let t = setup();
    fs::write(&t.y, b"previous contents").unwrap();
    // A failure (after parsing, during validation) leaves the old output untouched.
    fails(&t.fwd(&["--dilation", "9"]), "kernel extent");
    assert_eq!(fs::read(&t.y).unwrap(), b"previous contents");
    // A failure in the backward pass leaves the forward output untouched too.
    let bad_dy = save(&t.dir, "bad_dy.npy", &rand_array([1, 3, 4, 3], 90));
    let dx = t.dir.path().join("dx.npy");
    fails(
        &t.fwd(&["--grad-output", s(&bad_dy), "--grad-input", s(&dx)]),
        "grad output has shape",
    );
    assert_eq!(fs::read(&t.y).unwrap(), b"previous contents");
    // Success replaces it.
    ok(&t.fwd(&[]));
    assert_eq!(load(&t.y).shape(), &[1, 3, 3, 3]);
    // An output in a folder that does not exist fails cleanly.
    let nowhere = t.dir.path().join("no_such_dir").join("y.npy");
    fails(&t.args("conv2d", &["--output", s(&nowhere)]), "no_such_dir");
    let names: Vec<String> = fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".convkit-")),
        "temp files left: {names:?}"
    );
}

#[test]
fn explain_one_layer_text_and_json() {
    let text = ok(&[
        "explain",
        "--in-channels",
        "16",
        "--out-channels",
        "32",
        "--kernel",
        "3",
        "--input-size",
        "32,32",
        "--padding",
        "1",
        "--no-bias",
    ]);
    assert!(
        text.contains("nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)"),
        "{text}"
    );
    assert!(
        text.contains("(1, 16, 32, 32) -> (1, 32, 32, 32)"),
        "{text}"
    );
    assert!(text.contains("4,608"), "{text}");
    assert!(text.contains("4,718,592"), "{text}"); // 32·32·32·16·9 MACs
    assert!(text.contains("nn.ConvTranspose2d(32, 16, kernel_size=3, padding=1, bias=False)"));

    let json = ok(&[
        "explain",
        "--in-channels",
        "1",
        "--out-channels",
        "1",
        "--kernel",
        "3",
        "--stride",
        "2",
        "--transposed",
        "--input-size",
        "2,2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let l = &v["layers"][0];
    // The seed's transposed example: 2x2 -> 5x5.
    assert_eq!(l["output_shape"], serde_json::json!([1, 1, 5, 5]));
    assert_eq!(l["params"], 10);
    assert_eq!(l["macs"], 36);
    assert!(l["receptive_field"].is_null());
    let d = &l["equivalent"]["Direct"];
    assert_eq!(d["zero_insertion"], serde_json::json!([1, 1]));
    assert_eq!(d["padding"], serde_json::json!([2, 2, 2, 2]));
    assert_eq!(d["stretched_input"], serde_json::json!([3, 3]));
}

#[test]
fn explain_dilated_receptive_field_and_1d() {
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "explain",
        "--in-channels",
        "1",
        "--out-channels",
        "1",
        "--kernel",
        "3",
        "--dilation",
        "2",
        "--input-size",
        "7,7",
        "--json",
    ]))
    .unwrap();
    let l = &v["layers"][0];
    assert_eq!(l["output_shape"], serde_json::json!([1, 1, 3, 3]));
    assert_eq!(l["receptive_field"]["size"], serde_json::json!([5, 5]));
    let text = ok(&[
        "explain",
        "--dims",
        "1",
        "--in-channels",
        "4",
        "--out-channels",
        "8",
        "--kernel",
        "5",
        "--padding",
        "same",
        "--input-size",
        "100",
        "--batch",
        "2",
    ]);
    assert!(
        text.contains("nn.Conv1d(4, 8, kernel_size=5, padding='same')"),
        "{text}"
    );
    assert!(text.contains("(2, 4, 100) -> (2, 8, 100)"), "{text}");
}

#[test]
fn explain_stack_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stack.toml");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["explain", "--stack", s(&root), "--json"])).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 6);
    assert_eq!(
        layers[5]["output_shape"],
        serde_json::json!([1, 16, 64, 64])
    );
    // stem 3x3 → down 3x3 s2 → dilated 3x3 d2: r = 1 + 2 + 2·1 + 4·2 = 13.
    assert_eq!(
        layers[2]["receptive_field"]["size"],
        serde_json::json!([13, 13])
    );
    assert_eq!(
        layers[2]["receptive_field"]["jump"],
        serde_json::json!([2, 2])
    );

    let dir = TempDir::new().unwrap();
    let json = dir.path().join("s.json");
    fs::write(
        &json,
        r#"{"input": [1, 2, 10], "layers": [
            {"kind": "conv1d", "in_channels": 2, "out_channels": 4, "kernel": 3, "stride": 2},
            {"kind": "conv_transpose1d", "out_channels": 2, "kernel": 3, "stride": 2}]}"#,
    )
    .unwrap();
    let text = ok(&["explain", "--stack", s(&json)]);
    assert!(text.contains("(1, 2, 10) -> (1, 4, 4)"), "{text}");
    assert!(text.contains("(1, 4, 4) -> (1, 2, 9)"), "{text}");

    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        "input = [1, 3, 8, 8]\n[[layer]]\nout_channels = 4\nkernel = 3\nstrid = 2\n",
    )
    .unwrap();
    fails(&["explain", "--stack", s(&bad)], "strid");
    fs::write(
        &bad,
        "input = [1, 3, 8, 8]\n[[layer]]\nout_channels = 4\nkernel = 9\n",
    )
    .unwrap();
    fails(&["explain", "--stack", s(&bad)], "kernel extent 9");
    fs::write(
        &bad,
        "input = [1, 3, 8, 8]\n[[layer]]\nout_channels = 4\nkernel = 3\n[[layer]]\nin_channels = 5\nout_channels = 4\nkernel = 1\n",
    )
    .unwrap();
    fails(
        &["explain", "--stack", s(&bad)],
        "layer 2 expects 5 input channels",
    );
    fs::write(
        &bad,
        "input = [1, 3, 8, 8]\n[[layer]]\nkind = \"conv3d\"\nout_channels = 4\nkernel = 3\n",
    )
    .unwrap();
    fails(
        &["explain", "--stack", s(&bad)],
        "unknown layer kind 'conv3d'",
    );
    fails(&["explain", "--in-channels", "3"], "--out-channels");
    fails(
        &["explain", "--stack", s(&bad), "--in-channels", "3"],
        "cannot be used with",
    );
}

#[test]
fn tour_runs_and_reports_the_seed_numbers() {
    let dir = TempDir::new().unwrap();
    let files = dir.path().join("tour");
    let out = ok(&["tour", "--out", s(&files)]);
    for f in [
        "index.html",
        "test_image.png",
        "sobel_x.png",
        "sobel_y.png",
        "sobel_magnitude.png",
        "gallery/index.html",
        "gallery/no_padding_no_strides.gif",
        "gallery/padding_strides_odd_transposed.gif",
        "gallery/dilation.svg",
    ] {
        assert!(files.join(f).is_file(), "tour did not write {f}");
    }
    assert!(
        out.contains("faster"),
        "tour output lacks the speed section:\n{out}"
    );
    for needle in [
        "nn.Conv2d(3, 8, kernel_size=3)",
        "padding_mode='reflect'",
        "padding_mode='circular'",
        "dilation=2",
        "nn.ConvTranspose2d",
        "groups=4",
        "depthwise separable",
        "nn.Conv1d",
        "4,608",
        "656",
        "9 weights as one 3x3 pass, 6 as two 1D passes; results equal: yes",
        "(1, 1, 2, 2) -> (1, 1, 5, 5)",
        "kernel flipped: max diff 0.0e0",
    ] {
        assert!(out.contains(needle), "tour output lacks {needle:?}:\n{out}");
    }
    // Same seed, same numbers (the time column and the speed section aside).
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .take_while(|l| !l.starts_with("speed:"))
            .map(|l| match l.strip_suffix(" ms") {
                Some(r) => r
                    .trim_end()
                    .rsplit_once(' ')
                    .map_or(r, |(a, _)| a)
                    .trim_end()
                    .to_string(),
                None => l.trim_end().to_string(),
            })
            .collect()
    };
    assert_eq!(strip(&out), strip(&ok(&["tour", "--no-files"])));
}

#[test]
fn algo_reference_is_the_reference_bit_for_bit() {
    let dir = TempDir::new().unwrap();
    let spec = ConvSpec::conv_transpose2d(2, 4, 3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    let x: Array4<f32> = rand_array([1, 2, 4, 5], 100);
    let w: Array4<f32> = rand_array(spec.weight_shape(), 101);
    let (xp, wp) = (save(&dir, "x.npy", &x), save(&dir, "w.npy", &w));
    let y = dir.path().join("y.npy");
    let args = [
        "--input",
        s(&xp),
        "--weight",
        s(&wp),
        "--stride",
        "2",
        "--padding",
        "1",
    ];
    let mut a = vec!["conv-transpose2d"];
    a.extend(args);
    a.extend(["--algo", "reference", "--output", s(&y)]);
    ok(&a);
    let want = reference::forward(&spec, x.view(), w.view(), None).unwrap();
    assert_identical(&y, want.into_dyn());
}

/// `--algo subpixel` and `--algo col2im` run a transposed layer and agree with the
/// reference; both refuse a direct layer with one clear line naming the algorithm.
#[test]
fn transposed_algorithms_are_selectable() {
    let dir = TempDir::new().unwrap();
    let x: Array4<f32> = rand_array([1, 8, 6, 7], 80);
    let w: Array4<f32> = rand_array([8, 4, 3, 3], 81);
    let (xp, wp) = (save(&dir, "x.npy", &x), save(&dir, "w.npy", &w));
    let spec = ConvSpec::conv_transpose2d(8, 4, 3)
        .stride(2)
        .padding(1)
        .output_padding(1)
        .bias(false)
        .build()
        .unwrap();
    let want = reference::forward(&spec, x.view(), w.view(), None).unwrap();
    for algo in ["subpixel", "col2im"] {
        let y = dir.path().join(format!("y_{algo}.npy"));
        ok(&[
            "conv-transpose2d",
            "--input",
            s(&xp),
            "--weight",
            s(&wp),
            "--stride",
            "2",
            "--padding",
            "1",
            "--output-padding",
            "1",
            "--algo",
            algo,
            "--output",
            s(&y),
        ]);
        assert_same(&y, want.clone().into_dyn());
    }
    let wd: Array4<f32> = rand_array([4, 8, 3, 3], 82);
    let wdp = save(&dir, "wd.npy", &wd);
    for algo in ["subpixel", "col2im"] {
        let y = dir.path().join("y_bad.npy");
        fails(
            &[
                "conv2d",
                "--input",
                s(&xp),
                "--weight",
                s(&wdp),
                "--algo",
                algo,
                "--output",
                s(&y),
            ],
            algo,
        );
    }
}

/// `--algo direct` and `--algo winograd` run a 3×3 layer and agree with the reference;
/// Winograd refuses a strided layer with one clear line.
#[test]
fn direct_and_winograd_are_selectable() {
    let dir = TempDir::new().unwrap();
    let x: Array4<f32> = rand_array([1, 16, 9, 11], 70);
    let w: Array4<f32> = rand_array([16, 16, 3, 3], 71);
    let (xp, wp) = (save(&dir, "x.npy", &x), save(&dir, "w.npy", &w));
    let spec = ConvSpec::conv2d(16, 16, 3)
        .padding(1)
        .bias(false)
        .build()
        .unwrap();
    let want = reference::forward(&spec, x.view(), w.view(), None).unwrap();
    for algo in ["direct", "winograd"] {
        let y = dir.path().join(format!("y_{algo}.npy"));
        ok(&[
            "conv2d",
            "--input",
            s(&xp),
            "--weight",
            s(&wp),
            "--padding",
            "1",
            "--algo",
            algo,
            "--output",
            s(&y),
        ]);
        // Winograd's documented tolerance is looser than f32 rounding of a direct sum.
        let got = load(&y);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale, "{algo}: max error {err:e}");
    }
    let y = dir.path().join("y_bad.npy");
    fails(
        &[
            "conv2d",
            "--input",
            s(&xp),
            "--weight",
            s(&wp),
            "--stride",
            "2",
            "--algo",
            "winograd",
            "--output",
            s(&y),
        ],
        "winograd",
    );
}
