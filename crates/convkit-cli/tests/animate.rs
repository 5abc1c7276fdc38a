//! `convkit animate` end to end: files written for every format, one-line errors.

use std::process::{Command, Output};
use tempfile::TempDir;

fn convkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(args)
        .output()
        .expect("run convkit")
}

/// A fresh temporary folder, removed when dropped (at the end of the test).
fn tmp() -> TempDir {
    TempDir::new().expect("temporary folder")
}

#[test]
fn writes_every_format() {
    let dir = tmp();
    let layer = [
        "animate",
        "--input-size",
        "5",
        "--kernel",
        "3",
        "--stride",
        "2",
        "--padding",
        "1",
    ];
    let cases: [(&str, &[u8]); 4] = [
        ("a.gif", b"GIF89a"),
        ("a.png", b"\x89PNG"),
        ("a.svg", b"<svg"),
        ("a.html", b"<!DOCTYPE html>"),
    ];
    for (name, magic) in cases {
        let path = dir.path().join(name);
        let mut args = layer.to_vec();
        let p = path.to_str().unwrap();
        args.extend(["-o", p]);
        let out = convkit(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("9 frames"));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(magic), "{name}");
    }
    // Transposed, non-square, scatter view, numerical mode.
    let p = dir.path().join("t.svg");
    let out = convkit(&[
        "animate",
        "--transposed",
        "--input-size",
        "3,2",
        "--kernel",
        "3,2",
        "--stride",
        "2,1",
        "--output-padding",
        "1,0",
        "--view",
        "scatter",
        "--numeric",
        "-o",
        p.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 frames"));
}

#[test]
fn errors_are_one_line() {
    let tmp = tmp();
    let gif = tmp.path().join("e.gif");
    let g = gif.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["animate", "--input-size", "2", "--kernel", "5", "-o", g],
            "kernel extent 5 on the height axis is larger than the padded input (2)",
        ),
        (
            &[
                "animate",
                "--input-size",
                "4",
                "--transposed",
                "--stride",
                "2",
                "--output-padding",
                "2",
                "-o",
                g,
            ],
            "output_padding 2 on the height axis must be smaller",
        ),
        (
            &[
                "animate",
                "--input-size",
                "4",
                "--output-padding",
                "1",
                "-o",
                g,
            ],
            "output_padding and output_size apply to transposed convolutions only",
        ),
        (
            &["animate", "--input-size", "4", "--view", "scatter", "-o", g],
            "the scatter view needs a transposed convolution",
        ),
        (
            &["animate", "--input-size", "4", "-o", "x.txt"],
            "the output must end in .gif, .svg, .png or .html",
        ),
    ];
    for (args, msg) in cases {
        let out = convkit(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("convkit: error: "), "{err}");
        assert!(err.contains(msg), "{err}");
    }
    assert!(!gif.exists(), "no file is written on error");
}

#[test]
fn gallery_writes_the_conv_arithmetic_names() {
    let tmp = tmp();
    let dir = tmp.path().join("gallery");
    let out = convkit(&["animate", "--gallery", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "no_padding_no_strides.gif",
        "no_padding_no_strides_transposed.gif",
        "padding_strides_odd_transposed.svg",
        "dilation.gif",
        "index.html",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
}
