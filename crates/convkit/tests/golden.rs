//! The reference engine against PyTorch: every case in `tests/data/golden.{json,safetensors}`
//! (written by `scripts/gen_golden.py`) is rebuilt through the public `ConvSpec` builder and run
//! through `reference::forward` / `backward` (or their `_1d` forms), and every tensor (y, dx, dw,
//! db) is compared with PyTorch's.
//!
//! Tolerance: `|got − want| ≤ ATOL + RTOL·|want|` with `ATOL = RTOL = 1e-5`. Both sides start
//! from the same f32 inputs and accumulate in f64 (PyTorch runs in float64), so they differ only
//! by summation order (~1e-16 relative) and the final rounding to f32 (½ ulp, ~6e-8 relative).
//! The values are O(1) sums of at most a few hundred products of numbers in [−1, 1], so an
//! absolute 1e-5 is about 100 f32 ulps at magnitude 1: loose enough for any correct f32 engine
//! (the same data can check fast paths that accumulate in f32), tight enough that any indexing,
//! padding or flipping mistake (an O(0.1) error) fails.

use convkit::backward;
use convkit::plan::{self, Algo};
use convkit::reference::{self, GradRequest};
use convkit::{ConvSpec, Padding, PaddingMode, ValidSpec};
use ndarray::{ArrayD, ArrayView1, ArrayViewD, Dimension, Ix1, Ix3, Ix4, IxDyn};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::HashMap;

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-5;

const JSON: &str = include_str!("data/golden.json");
const TENSORS: &[u8] = include_bytes!("data/golden.safetensors");

#[derive(Debug, Deserialize)]
struct GoldenFile {
    seed: u64,
    torch_version: String,
    cases: Vec<Case>,
    /// Layers PyTorch refuses (no tensors); convkit must refuse them too.
    rejects: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PaddingJson {
    Explicit([usize; 4]),
    Valid,
    Same,
    SameTf,
}

#[derive(Debug, Clone, Deserialize)]
struct Case {
    key: String,
    name: String,
    rank: u8,
    transposed: bool,
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: PaddingJson,
    padding_mode: String,
    groups: usize,
    bias: bool,
    output_padding: [usize; 2],
    output_size: Option<[usize; 2]>,
    input_shape: Vec<usize>,
    /// Rejected layers only: PyTorch's error message.
    #[serde(default)]
    error: Option<String>,
}

impl Case {
    fn one_d(&self) -> bool {
        self.rank == 1
    }
    fn mode(&self) -> PaddingMode {
        self.padding_mode
            .parse()
            .expect("padding mode in golden.json")
    }

    /// The spec, built the way a user would write it (1D layers with scalar arguments,
    /// symmetric padding with the PyTorch-style shorthand).
    fn spec(&self) -> convkit::Result<ValidSpec> {
        let [kh, kw] = self.kernel;
        let mut s = match (self.rank, self.transposed) {
            (1, false) => ConvSpec::conv1d(self.in_channels, self.out_channels, kw),
            (1, true) => ConvSpec::conv_transpose1d(self.in_channels, self.out_channels, kw),
            (2, false) => ConvSpec::conv2d(self.in_channels, self.out_channels, [kh, kw]),
            (2, true) => ConvSpec::conv_transpose2d(self.in_channels, self.out_channels, [kh, kw]),
            (r, _) => panic!("{}: bad rank {r}", self.name),
        };
        s = if self.one_d() {
            s.stride(self.stride[1]).dilation(self.dilation[1])
        } else {
            s.stride(self.stride).dilation(self.dilation)
        };
        s = match self.padding {
            PaddingJson::Explicit([t, b, l, r]) if t == b && l == r => {
                if self.one_d() {
                    s.padding(l)
                } else {
                    s.padding([t, l])
                }
            }
            PaddingJson::Explicit(sides) => s.padding_sides(sides),
            PaddingJson::Valid => s.padding_rule(Padding::Valid),
            PaddingJson::Same => s.padding_rule(Padding::Same),
            PaddingJson::SameTf => s.padding_rule(Padding::SameTf),
        };
        s = s
            .padding_mode(self.mode())
            .groups(self.groups)
            .bias(self.bias);
        if self.output_padding != [0, 0] {
            s = if self.one_d() {
                s.output_padding(self.output_padding[1])
            } else {
                s.output_padding(self.output_padding)
            };
        }
        if let Some(size) = self.output_size {
            s = if self.one_d() {
                s.output_size(size[1])
            } else {
                s.output_size(size)
            };
        }
        s.build()
    }
}

struct Golden {
    file: GoldenFile,
    tensors: SafeTensors<'static>,
}

fn load() -> Golden {
    let file: GoldenFile = serde_json::from_str(JSON).expect("golden.json parses");
    let tensors = SafeTensors::deserialize(TENSORS).expect("golden.safetensors parses");
    Golden { file, tensors }
}

impl Golden {
    fn get(&self, case: &Case, what: &str) -> Option<ArrayD<f32>> {
        let t = self.tensors.tensor(&format!("{}.{what}", case.key)).ok()?;
        assert_eq!(t.dtype(), Dtype::F32, "{}.{what}", case.key);
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(ArrayD::from_shape_vec(IxDyn(t.shape()), vals).expect("tensor shape"))
    }
    fn req(&self, case: &Case, what: &str) -> ArrayD<f32> {
        self.get(case, what)
            .unwrap_or_else(|| panic!("{}: tensor {what} missing", case.name))
    }
}

/// Compares two tensors; on failure, names the worst element.
fn compare(what: &str, got: ArrayViewD<f32>, want: ArrayViewD<f32>) -> Result<f64, String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, PyTorch {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let mut worst: Option<(Vec<usize>, f32, f32, f64)> = None;
    let mut bad = 0usize;
    let mut max_err = 0.0f64;
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let (g64, w64) = (g as f64, w as f64);
        let err = (g64 - w64).abs();
        let tol = ATOL + RTOL * w64.abs();
        // `!(err <= tol)` also catches NaN.
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / tol
        };
        max_err = max_err.max(if err.is_nan() { f64::INFINITY } else { err });
        if ratio > 1.0 || !g.is_finite() {
            bad += 1;
        }
        if worst.as_ref().is_none_or(|w| ratio > w.3) {
            worst = Some((idx.slice().to_vec(), g, w, ratio));
        }
    }
    if bad > 0 {
        let (idx, g, w, _) = worst.expect("non-empty");
        return Err(format!(
            "{what}: {bad} of {} elements out of tolerance; worst at {idx:?}: got {g}, PyTorch {w}, |diff| {:.3e} > {:.3e}",
            want.len(),
            (g as f64 - w as f64).abs(),
            ATOL + RTOL * (w as f64).abs()
        ));
    }
    Ok(max_err)
}

fn d4(a: &ArrayD<f32>) -> ndarray::ArrayView4<'_, f32> {
    a.view().into_dimensionality::<Ix4>().expect("4D tensor")
}
fn d3(a: &ArrayD<f32>) -> ndarray::ArrayView3<'_, f32> {
    a.view().into_dimensionality::<Ix3>().expect("3D tensor")
}
fn d1(a: &ArrayD<f32>) -> ArrayView1<'_, f32> {
    a.view().into_dimensionality::<Ix1>().expect("1D tensor")
}

/// Runs `check` on every case, collecting failures; panics with all of them at the end.
fn for_every_case(what: &str, check: impl Fn(&Golden, &Case) -> Result<f64, String>) {
    let g = load();
    let mut failures = Vec::new();
    let mut max_err = 0.0f64;
    for case in &g.file.cases {
        match check(&g, case) {
            Ok(e) => max_err = max_err.max(e),
            Err(msg) => failures.push(format!("{}: {msg}", case.name)),
        }
    }
    println!(
        "{what}: {} golden cases (PyTorch {}, seed {}), largest |diff| {max_err:.3e}",
        g.file.cases.len(),
        g.file.torch_version,
        g.file.seed
    );
    assert!(
        failures.is_empty(),
        "{} of {} golden cases fail {what}:\n{}",
        failures.len(),
        g.file.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_forward_matches_pytorch() {
    for_every_case("forward", |g, case| {
        let spec = case.spec().map_err(|e| format!("spec rejected: {e}"))?;
        let (x, w, b, y) = (
            g.req(case, "x"),
            g.req(case, "w"),
            g.get(case, "b"),
            g.req(case, "y"),
        );
        if x.shape() != case.input_shape.as_slice() {
            return Err(format!("x has shape {:?} in the data file", x.shape()));
        }
        if w.shape() != spec.weight_shape_dyn().as_slice() {
            return Err(format!(
                "weight_shape_dyn {:?}, PyTorch weight {:?}",
                spec.weight_shape_dyn(),
                w.shape()
            ));
        }
        // The shape formula against PyTorch's output shape.
        let x4 = if case.one_d() {
            reference::as_4d(d3(&x))
        } else {
            d4(&x)
        };
        let geom = spec
            .geometry(x4.dim().into())
            .map_err(|e| format!("geometry rejected: {e}"))?;
        let mut want_shape = geom.output_shape().to_vec();
        if case.one_d() {
            want_shape.remove(2);
        }
        if want_shape != y.shape() {
            return Err(format!(
                "geometry output shape {want_shape:?}, PyTorch {:?}",
                y.shape()
            ));
        }
        let got = if case.one_d() {
            reference::forward_1d(&spec, d3(&x), d3(&w), b.as_ref().map(d1))
                .map_err(|e| format!("forward_1d failed: {e}"))?
                .into_dyn()
        } else {
            reference::forward(&spec, d4(&x), d4(&w), b.as_ref().map(d1))
                .map_err(|e| format!("forward failed: {e}"))?
                .into_dyn()
        };
        compare("y", got.view(), y.view())
    });
}

#[test]
fn golden_backward_matches_pytorch() {
    for_every_case("backward", |g, case| {
        let spec = case.spec().map_err(|e| format!("spec rejected: {e}"))?;
        let (x, w, dy) = (g.req(case, "x"), g.req(case, "w"), g.req(case, "dy"));
        let want = GradRequest {
            input: true,
            weight: true,
            bias: case.bias,
        };
        let (dx, dw, db) = if case.one_d() {
            let gr = reference::backward_1d(&spec, d3(&x), d3(&w), d3(&dy), want)
                .map_err(|e| format!("backward_1d failed: {e}"))?;
            (
                gr.input.map(|a| a.into_dyn()),
                gr.weight.map(|a| a.into_dyn()),
                gr.bias,
            )
        } else {
            let gr = reference::backward(&spec, d4(&x), d4(&w), d4(&dy), want)
                .map_err(|e| format!("backward failed: {e}"))?;
            (
                gr.input.map(|a| a.into_dyn()),
                gr.weight.map(|a| a.into_dyn()),
                gr.bias,
            )
        };
        let dx = dx.ok_or("dx requested but not returned")?;
        let dw = dw.ok_or("dw requested but not returned")?;
        let mut err = compare("dx", dx.view(), g.req(case, "dx").view())?;
        err = err.max(compare("dw", dw.view(), g.req(case, "dw").view())?);
        match (db, g.get(case, "db")) {
            (Some(got), Some(want)) => {
                err = err.max(compare("db", got.into_dyn().view(), want.view())?);
            }
            (None, None) => {}
            (got, want) => {
                return Err(format!(
                    "db returned: {}, in the data file: {}",
                    got.is_some(),
                    want.is_some()
                ))
            }
        }
        Ok(err)
    });
}

/// The planned (fast, f32) forward path with `Algo::Auto` against the same PyTorch outputs, at
/// the same f32 tolerance: whatever algorithm the plan picks for each layer (implicit GEMM,
/// 1×1 GEMM, direct, Winograd, depthwise kernel, sub-pixel phases or GEMM + col2im for
/// transposed layers) must agree.
#[test]
fn golden_planned_forward_matches_pytorch() {
    for_every_case("planned forward", |g, case| {
        let spec = case.spec().map_err(|e| format!("spec rejected: {e}"))?;
        let (x, w, b, y) = (
            g.req(case, "x"),
            g.req(case, "w"),
            g.get(case, "b"),
            g.req(case, "y"),
        );
        let (x4, w4) = if case.one_d() {
            (reference::as_4d(d3(&x)), reference::as_4d(d3(&w)))
        } else {
            (d4(&x), d4(&w))
        };
        let got = plan::forward(&spec, x4, w4, b.as_ref().map(d1), Algo::Auto)
            .map_err(|e| format!("plan::forward failed: {e}"))?;
        let got = if case.one_d() {
            got.index_axis_move(ndarray::Axis(2), 0).into_dyn()
        } else {
            got.into_dyn()
        };
        compare("y", got.view(), y.view())
    });
}

/// Both transposed algorithms, forced (`Algo::Subpixel` and `Algo::Col2im`), against the same
/// PyTorch outputs on every transposed case (1D and 2D, output padding, groups, dilation), at
/// the same f32 tolerance: `Auto` picks one of them per layer, so both must agree.
#[test]
fn golden_transposed_algorithms_match_pytorch() {
    for algo in [Algo::Subpixel, Algo::Col2im] {
        for_every_case(algo.name(), |g, case| {
            if !case.transposed {
                return Ok(0.0);
            }
            let spec = case.spec().map_err(|e| format!("spec rejected: {e}"))?;
            let (x, w, b, y) = (
                g.req(case, "x"),
                g.req(case, "w"),
                g.get(case, "b"),
                g.req(case, "y"),
            );
            let (x4, w4) = if case.one_d() {
                (reference::as_4d(d3(&x)), reference::as_4d(d3(&w)))
            } else {
                (d4(&x), d4(&w))
            };
            let got = plan::forward(&spec, x4, w4, b.as_ref().map(d1), algo)
                .map_err(|e| format!("{algo}: plan::forward failed: {e}"))?;
            let got = if case.one_d() {
                got.index_axis_move(ndarray::Axis(2), 0).into_dyn()
            } else {
                got.into_dyn()
            };
            compare("y", got.view(), y.view())
        });
    }
    let transposed = load().file.cases.iter().filter(|c| c.transposed).count();
    assert!(
        transposed >= 100,
        "only {transposed} transposed golden cases"
    );
}

/// The fast backward (`convkit::backward::backward` with `Algo::Auto`: sub-pixel / direct plans
/// for dx, implicit-GEMM weight gradients, the depthwise kernel's own backward) against the same
/// PyTorch gradients, at the same f32 tolerance.
#[test]
fn golden_fast_backward_matches_pytorch() {
    for_every_case("fast backward", |g, case| {
        let spec = case.spec().map_err(|e| format!("spec rejected: {e}"))?;
        let (x, w, dy) = (g.req(case, "x"), g.req(case, "w"), g.req(case, "dy"));
        let (x4, w4, dy4) = if case.one_d() {
            (
                reference::as_4d(d3(&x)),
                reference::as_4d(d3(&w)),
                reference::as_4d(d3(&dy)),
            )
        } else {
            (d4(&x), d4(&w), d4(&dy))
        };
        let want = GradRequest {
            input: true,
            weight: true,
            bias: case.bias,
        };
        let gr = backward::backward(&spec, x4, w4, dy4, want, Algo::Auto)
            .map_err(|e| format!("backward::backward failed: {e}"))?;
        let squeeze = |a: ndarray::Array4<f32>| {
            if case.one_d() {
                a.index_axis_move(ndarray::Axis(2), 0).into_dyn()
            } else {
                a.into_dyn()
            }
        };
        let dx = squeeze(gr.input.ok_or("dx requested but not returned")?);
        let dw = squeeze(gr.weight.ok_or("dw requested but not returned")?);
        let mut err = compare("dx", dx.view(), g.req(case, "dx").view())?;
        err = err.max(compare("dw", dw.view(), g.req(case, "dw").view())?);
        if let (Some(got), Some(want)) = (gr.bias, g.get(case, "db")) {
            err = err.max(compare("db", got.into_dyn().view(), want.view())?);
        }
        Ok(err)
    });
}

/// The data set cannot silently shrink or lose an option: count the cases and require every
/// option (and the combinations the issue names) at least once.
#[test]
fn golden_covers_every_option() {
    let g = load();
    let cases = &g.file.cases;
    assert!(
        cases.len() >= 300,
        "only {} golden cases (need ≥ 300)",
        cases.len()
    );
    let mut names = std::collections::HashSet::new();
    for c in cases {
        assert!(
            names.insert(c.name.as_str()),
            "duplicate case name {}",
            c.name
        );
    }
    let size = |c: &Case, ax: usize| -> usize {
        if c.one_d() {
            if ax == 0 {
                1
            } else {
                c.input_shape[2]
            }
        } else {
            c.input_shape[2 + ax]
        }
    };
    let explicit = |c: &Case| match c.padding {
        PaddingJson::Explicit(p) => Some(p),
        _ => None,
    };
    let asym = |c: &Case| explicit(c).is_some_and(|[t, b, l, r]| t != b || l != r);
    let reflect_at_limit = |c: &Case| {
        c.mode() == PaddingMode::Reflect
            && explicit(c).is_some_and(|p| {
                (0..2).any(|ax| p[2 * ax].max(p[2 * ax + 1]) == size(c, ax) - 1 && size(c, ax) > 1)
            })
    };
    let circular_at_limit = |c: &Case| {
        c.mode() == PaddingMode::Circular
            && explicit(c)
                .is_some_and(|p| (0..2).any(|ax| p[2 * ax].max(p[2 * ax + 1]) == size(c, ax)))
    };
    let depthwise = |c: &Case| !c.transposed && c.groups == c.in_channels && c.groups > 1;
    let strided = |c: &Case| c.stride.iter().any(|&s| s > 1);
    let dilated = |c: &Case| c.dilation.iter().any(|&d| d > 1);
    #[allow(clippy::type_complexity)]
    let checks: Vec<(&str, Box<dyn Fn(&Case) -> bool>)> = vec![
        ("conv2d", Box::new(|c| c.rank == 2 && !c.transposed)),
        ("conv1d", Box::new(|c| c.rank == 1 && !c.transposed)),
        (
            "conv_transpose2d",
            Box::new(|c| c.rank == 2 && c.transposed),
        ),
        (
            "conv_transpose1d",
            Box::new(|c| c.rank == 1 && c.transposed),
        ),
        (
            "odd sizes",
            Box::new(|c| c.input_shape[2..].iter().any(|&s| s % 2 == 1 && s > 1)),
        ),
        (
            "non-square kernel",
            Box::new(|c| c.rank == 2 && c.kernel[0] != c.kernel[1]),
        ),
        (
            "non-square stride",
            Box::new(|c| c.rank == 2 && c.stride[0] != c.stride[1]),
        ),
        (
            "non-square dilation",
            Box::new(|c| c.rank == 2 && c.dilation[0] != c.dilation[1]),
        ),
        ("even kernel", Box::new(|c| c.kernel[1] % 2 == 0)),
        ("asymmetric padding", Box::new(|c| !c.transposed && asym(c))),
        (
            "asymmetric 1D padding",
            Box::new(|c| c.one_d() && !c.transposed && asym(c)),
        ),
        (
            "asymmetric padding + border mode",
            Box::new(|c| asym(c) && c.mode() != PaddingMode::Zeros),
        ),
        (
            "zeros",
            Box::new(|c| {
                c.mode() == PaddingMode::Zeros && explicit(c).is_some_and(|p| p != [0; 4])
            }),
        ),
        ("reflect", Box::new(|c| c.mode() == PaddingMode::Reflect)),
        (
            "replicate",
            Box::new(|c| c.mode() == PaddingMode::Replicate),
        ),
        ("circular", Box::new(|c| c.mode() == PaddingMode::Circular)),
        ("reflect pad = size − 1", Box::new(reflect_at_limit)),
        ("circular pad = size", Box::new(circular_at_limit)),
        (
            "1D reflect",
            Box::new(|c| c.one_d() && c.mode() == PaddingMode::Reflect),
        ),
        (
            "1D circular",
            Box::new(|c| c.one_d() && c.mode() == PaddingMode::Circular),
        ),
        (
            "border mode with stride",
            Box::new(|c| c.mode() != PaddingMode::Zeros && strided(c)),
        ),
        ("valid", Box::new(|c| c.padding == PaddingJson::Valid)),
        ("same", Box::new(|c| c.padding == PaddingJson::Same)),
        (
            "same, even kernel",
            Box::new(|c| c.padding == PaddingJson::Same && c.kernel[1] % 2 == 0),
        ),
        (
            "same, dilated",
            Box::new(|c| c.padding == PaddingJson::Same && dilated(c)),
        ),
        (
            "same + border mode",
            Box::new(|c| c.padding == PaddingJson::Same && c.mode() != PaddingMode::Zeros),
        ),
        (
            "same_tf, stride 2",
            Box::new(|c| c.padding == PaddingJson::SameTf && c.stride[1] == 2),
        ),
        (
            "same_tf, stride 3",
            Box::new(|c| c.padding == PaddingJson::SameTf && c.stride.contains(&3)),
        ),
        (
            "same_tf + border mode",
            Box::new(|c| c.padding == PaddingJson::SameTf && c.mode() != PaddingMode::Zeros),
        ),
        (
            "1D same_tf",
            Box::new(|c| c.one_d() && c.padding == PaddingJson::SameTf),
        ),
        (
            "dilation with stride",
            Box::new(|c| !c.transposed && dilated(c) && strided(c)),
        ),
        (
            "groups (not depthwise)",
            Box::new(|c| !c.transposed && c.groups > 1 && !depthwise(c)),
        ),
        (
            "depthwise",
            Box::new(|c| depthwise(c) && c.out_channels == c.in_channels),
        ),
        (
            "depthwise with multiplier",
            Box::new(|c| depthwise(c) && c.out_channels > c.in_channels),
        ),
        ("1D depthwise", Box::new(|c| c.one_d() && depthwise(c))),
        (
            "transposed with padding",
            Box::new(|c| c.transposed && explicit(c).is_some_and(|p| p != [0; 4])),
        ),
        (
            "transposed with output_padding",
            Box::new(|c| c.transposed && c.output_padding != [0, 0]),
        ),
        (
            "transposed output_padding ≥ stride (< dilation)",
            Box::new(|c| {
                c.transposed
                    && (0..2).any(|a| c.output_padding[a] >= c.stride[a] && c.output_padding[a] > 0)
            }),
        ),
        (
            "transposed with groups",
            Box::new(|c| c.transposed && c.groups > 1),
        ),
        (
            "transposed with groups and output_padding",
            Box::new(|c| c.transposed && c.groups > 1 && c.output_padding != [0, 0]),
        ),
        (
            "transposed with dilation",
            Box::new(|c| c.transposed && dilated(c)),
        ),
        (
            "transposed with output_size",
            Box::new(|c| c.transposed && c.output_size.is_some()),
        ),
        (
            "1D transposed with output_size",
            Box::new(|c| c.one_d() && c.transposed && c.output_size.is_some()),
        ),
        (
            "1D transposed with output_padding",
            Box::new(|c| c.one_d() && c.transposed && c.output_padding != [0, 0]),
        ),
        (
            "transposed per-side crop",
            Box::new(|c| c.transposed && asym(c)),
        ),
        ("batch > 1", Box::new(|c| c.input_shape[0] > 1)),
        (
            "batch > 1, 1D",
            Box::new(|c| c.one_d() && c.input_shape[0] > 1),
        ),
        (
            "batch > 1, transposed",
            Box::new(|c| c.transposed && c.input_shape[0] > 1),
        ),
        ("bias", Box::new(|c| c.bias)),
        ("no bias", Box::new(|c| !c.bias)),
        ("no bias, transposed", Box::new(|c| c.transposed && !c.bias)),
        (
            "1x1 input",
            Box::new(|c| c.input_shape[2..].iter().all(|&s| s == 1)),
        ),
    ];
    let missing: Vec<&str> = checks
        .iter()
        .filter(|(_, f)| !cases.iter().any(f))
        .map(|(n, _)| *n)
        .collect();
    assert!(missing.is_empty(), "golden data lacks: {missing:?}");
    for (what, f) in &checks {
        println!("{what}: {} cases", cases.iter().filter(|c| f(c)).count());
    }
}

/// Every layer PyTorch refuses (bad groups, `same` with stride, bad output_padding or
/// output_size, border modes or `same` on transposed layers, kernel larger than the padded
/// input, reflect/circular pads beyond the input, transposed outputs cropped away, and the
/// random draws PyTorch refused) is an error in convkit too, from `build` or `geometry`.
#[test]
fn golden_pytorch_rejections_are_errors() {
    let g = load();
    assert!(
        g.file.rejects.len() >= 30,
        "only {} rejected layers",
        g.file.rejects.len()
    );
    let mut accepted = Vec::new();
    for c in &g.file.rejects {
        let torch = c.error.as_deref().unwrap_or("?");
        let shape = &c.input_shape;
        let input = if c.one_d() {
            [shape[0], shape[1], 1, shape[2]]
        } else {
            [shape[0], shape[1], shape[2], shape[3]]
        };
        match c.spec().and_then(|s| s.geometry(input)) {
            Ok(geom) => accepted.push(format!(
                "{}: convkit gives output {:?}, PyTorch says: {torch}",
                c.name,
                geom.output_shape()
            )),
            Err(e) => println!("{}: {e}  (PyTorch: {torch})", c.name),
        }
    }
    assert!(
        accepted.is_empty(),
        "convkit accepts {} layers PyTorch rejects:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}

/// Every tensor in the safetensors file belongs to a case in the JSON file and vice versa.
#[test]
fn golden_files_agree() {
    let g = load();
    let mut per_case: HashMap<&str, usize> = HashMap::new();
    for name in g.tensors.names() {
        let (key, _) = name.split_once('.').expect("key.tensor");
        *per_case.entry(key).or_default() += 1;
    }
    assert_eq!(per_case.len(), g.file.cases.len());
    for c in &g.file.cases {
        let n = per_case.get(c.key.as_str()).copied().unwrap_or(0);
        let want = if c.bias { 8 } else { 6 };
        assert_eq!(n, want, "{}: {n} tensors, expected {want}", c.name);
    }
}
