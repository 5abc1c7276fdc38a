//! The oracle: convolution by its definition, plain loops, f64 accumulation.
//!
//! Never optimised; every fast path is tested against it, and it is tested against PyTorch
//! golden data. Direct and transposed convolution share one definition: a *tap* links one
//! input cell, one weight and one output cell, and
//!
//! * forward:      `y[out] += x[in] · w[tap]`
//! * grad input:   `dx[in] += dy[out] · w[tap]`
//! * grad weight:  `dw[tap] += x[in] · dy[out]`
//!
//! For a direct convolution `in = (n, c, oy·s + ky·d, ox·s + kx·d)` in the *padded* input
//! (padding modes are applied by padding first, as PyTorch does); for a transposed one
//! `out = (n, k, iy·s + ky·d − p_top, ix·s + kx·d − p_left)`, skipping cells outside the output.

use crate::border::{self, Border};
use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
use crate::spec::{Rank, ValidSpec};
use ndarray::{Array1, Array3, Array4, ArrayView1, ArrayView3, ArrayView4, Axis, Ix4};

/// A float type the engines accept (f32 for work, f64 for gradient checks).
pub trait Real: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// Widen to f64.
    fn to_f64(self) -> f64;
    /// Narrow from f64 (round to nearest).
    fn from_f64(v: f64) -> Self;
}
impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Which gradients [`backward`] should compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GradRequest {
    /// dL/dx.
    pub input: bool,
    /// dL/dw.
    pub weight: bool,
    /// dL/db.
    pub bias: bool,
}

impl GradRequest {
    /// All three gradients.
    pub fn all() -> Self {
        GradRequest {
            input: true,
            weight: true,
            bias: true,
        }
    }
}

/// The gradients asked for (the others are `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T> {
    /// dL/dx, shaped like the input.
    pub input: Option<Array4<T>>,
    /// dL/dw, shaped like the weight.
    pub weight: Option<Array4<T>>,
    /// dL/db, K values.
    pub bias: Option<Array1<T>>,
}

/// Checks the operands of a layer and resolves its geometry.
///
/// `bias` is optional even for a layer built with `bias = true` (a missing bias is zero, as in
/// `F.conv2d(bias=None)`); a bias given to a layer built with `bias = false` is an error.
pub fn check_operands(
    spec: &ValidSpec,
    x: &[usize],
    w: &[usize],
    bias: Option<usize>,
) -> Result<Geometry> {
    if x.len() != 4 {
        return Err(ConvError::RankMismatch {
            what: "input",
            got: x.len(),
            expected: 4,
        });
    }
    let geom = spec.geometry([x[0], x[1], x[2], x[3]])?;
    let ws = spec.weight_shape();
    if w != ws {
        return Err(ConvError::ShapeMismatch {
            what: "weight",
            got: w.to_vec(),
            expected: ws.to_vec(),
        });
    }
    match bias {
        Some(_) if !spec.has_bias() => {
            return Err(ConvError::Bias(
                "a bias was given to a layer built with bias = false",
            ))
        }
        Some(len) if len != spec.out_channels() => {
            return Err(ConvError::ShapeMismatch {
                what: "bias",
                got: vec![len],
                expected: vec![spec.out_channels()],
            })
        }
        _ => {}
    }
    Ok(geom)
}

/// Checks that `dy` has the layer's output shape.
pub fn check_grad_output(geom: &Geometry, dy: &[usize]) -> Result<()> {
    let want = geom.output_shape();
    if dy != want {
        return Err(ConvError::ShapeMismatch {
            what: "grad_output",
            got: dy.to_vec(),
            expected: want.to_vec(),
        });
    }
    Ok(())
}

/// One tap: flat indices of the input cell, weight and output cell it links.
#[derive(Debug, Clone, Copy)]
struct Tap {
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
}

/// Calls `f` for every tap of the layer. Direct layers index the padded input.
fn for_each_tap(g: &Geometry, mut f: impl FnMut(Tap)) {
    let s = &g.spec;
    let (groups, [kh, kw], [sh, sw], [dh, dw]) = (s.groups(), s.kernel(), s.stride(), s.dilation());
    let (cg, kg) = (g.c / groups, g.k / groups);
    for n in 0..g.n {
        for grp in 0..groups {
            for ci in 0..cg {
                for ko in 0..kg {
                    let (c, k) = (grp * cg + ci, grp * kg + ko);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            if s.is_transposed() {
                                let w = [c, ko, ky, kx];
                                for iy in 0..g.h {
                                    let oy = (iy * sh + ky * dh) as isize - g.pad[0] as isize;
                                    if oy < 0 || oy >= g.oh as isize {
                                        continue;
                                    }
                                    for ix in 0..g.w {
                                        let ox = (ix * sw + kx * dw) as isize - g.pad[2] as isize;
                                        if ox < 0 || ox >= g.ow as isize {
                                            continue;
                                        }
                                        let y = [n, k, oy as usize, ox as usize];
                                        f(Tap {
                                            x: [n, c, iy, ix],
                                            w,
                                            y,
                                        });
                                    }
                                }
                            } else {
                                let w = [k, ci, ky, kx];
                                for oy in 0..g.oh {
                                    for ox in 0..g.ow {
                                        let x = [n, c, oy * sh + ky * dh, ox * sw + kx * dw];
                                        f(Tap {
                                            x,
                                            w,
                                            y: [n, k, oy, ox],
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn widen<T: Real>(a: ArrayView4<T>) -> Array4<f64> {
    a.mapv(T::to_f64)
}

fn narrow<T: Real, D: ndarray::Dimension>(a: ndarray::Array<f64, D>) -> ndarray::Array<T, D> {
    a.mapv(T::from_f64)
}

/// The input as the taps see it: padded with the layer's border mode (direct), as is (transposed).
fn tap_input(g: &Geometry, x: ArrayView4<f64>) -> Array4<f64> {
    if g.spec.is_transposed() {
        x.to_owned()
    } else {
        border::pad(x, g.pad, Border::from(g.spec.padding_mode()))
    }
}

/// Forward pass of any layer (direct or transposed) on NCHW arrays. Weight in PyTorch's layout
/// ([`ValidSpec::weight_shape`]).
pub fn forward<T: Real>(
    spec: &ValidSpec,
    x: ArrayView4<T>,
    w: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
) -> Result<Array4<T>> {
    let g = check_operands(spec, x.shape(), w.shape(), bias.map(|b| b.len()))?;
    let xt = tap_input(&g, widen(x).view());
    let wf = widen(w);
    let mut y = Array4::<f64>::zeros(g.output_shape());
    for_each_tap(&g, |t| y[t.y] += xt[t.x] * wf[t.w]);
    if let Some(b) = bias {
        for (k, mut plane) in y.axis_iter_mut(Axis(1)).enumerate() {
            plane += b[k].to_f64();
        }
    }
    Ok(narrow(y))
}

/// Backward pass: the requested gradients of a loss L given `dy = dL/dy`.
pub fn backward<T: Real>(
    spec: &ValidSpec,
    x: ArrayView4<T>,
    w: ArrayView4<T>,
    dy: ArrayView4<T>,
    want: GradRequest,
) -> Result<Gradients<T>> {
    let g = check_operands(spec, x.shape(), w.shape(), None)?;
    check_grad_output(&g, dy.shape())?;
    let dyf = widen(dy);
    let input = if want.input {
        let wf = widen(w);
        let xt_shape = if spec.is_transposed() {
            g.input_shape()
        } else {
            [
                g.n,
                g.c,
                g.h + g.pad[0] + g.pad[1],
                g.w + g.pad[2] + g.pad[3],
            ]
        };
        let mut dxt = Array4::<f64>::zeros(xt_shape);
        for_each_tap(&g, |t| dxt[t.x] += dyf[t.y] * wf[t.w]);
        let dx = if spec.is_transposed() {
            dxt
        } else {
            border::pad_adjoint(
                dxt.view(),
                g.pad,
                Border::from(spec.padding_mode()),
                g.h,
                g.w,
            )
        };
        Some(narrow(dx))
    } else {
        None
    };
    let weight = if want.weight {
        let xt = tap_input(&g, widen(x).view());
        let mut dw = Array4::<f64>::zeros(spec.weight_shape());
        for_each_tap(&g, |t| dw[t.w] += xt[t.x] * dyf[t.y]);
        Some(narrow(dw))
    } else {
        None
    };
    let bias = want
        .bias
        .then(|| narrow(dyf.sum_axis(Axis(3)).sum_axis(Axis(2)).sum_axis(Axis(0))));
    Ok(Gradients {
        input,
        weight,
        bias,
    })
}

/// Views an (N, C, L) array as (N, C, 1, L).
pub fn as_4d<T>(x: ArrayView3<T>) -> ArrayView4<T> {
    x.insert_axis(Axis(2))
}

fn to_3d<T>(a: Array4<T>) -> Array3<T> {
    a.index_axis_move(Axis(2), 0)
}

fn check_rank_one(spec: &ValidSpec) -> Result<()> {
    if spec.rank() != Rank::One {
        return Err(ConvError::Unsupported(
            "the 1D entry points need a spec built with conv1d/conv_transpose1d".into(),
        ));
    }
    Ok(())
}

/// [`forward`] for 1D layers on (N, C, L) arrays; weight (K, C/g, k) or (C, K/g, k).
pub fn forward_1d<T: Real>(
    spec: &ValidSpec,
    x: ArrayView3<T>,
    w: ArrayView3<T>,
    bias: Option<ArrayView1<T>>,
) -> Result<Array3<T>> {
    check_rank_one(spec)?;
    forward(spec, as_4d(x), as_4d(w), bias).map(to_3d)
}

/// [`backward`] for 1D layers on (N, C, L) arrays.
pub fn backward_1d<T: Real>(
    spec: &ValidSpec,
    x: ArrayView3<T>,
    w: ArrayView3<T>,
    dy: ArrayView3<T>,
    want: GradRequest,
) -> Result<Gradients1d<T>> {
    check_rank_one(spec)?;
    let g = backward(spec, as_4d(x), as_4d(w), as_4d(dy), want)?;
    Ok(Gradients1d {
        input: g.input.map(to_3d),
        weight: g.weight.map(to_3d),
        bias: g.bias,
    })
}

/// Gradients of a 1D layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients1d<T> {
    /// dL/dx, (N, C, L).
    pub input: Option<Array3<T>>,
    /// dL/dw, (K, C/g, k) or (C, K/g, k).
    pub weight: Option<Array3<T>>,
    /// dL/db.
    pub bias: Option<Array1<T>>,
}

/// Converts a dynamic-rank array view to 4D, with a typed error for the wrong rank.
pub fn view4<'a, T>(
    a: ndarray::ArrayViewD<'a, T>,
    what: &'static str,
) -> Result<ArrayView4<'a, T>> {
    let nd = a.ndim();
    a.into_dimensionality::<Ix4>()
        .map_err(|_| ConvError::RankMismatch {
            what,
            got: nd,
            expected: 4,
        })
}
