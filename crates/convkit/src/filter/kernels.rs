//! Named image kernels and the kernel spec language of `convkit filter -k`.
//!
//! All kernels are *correlation* kernels, the convention of OpenCV's `filter2D` and of
//! PyTorch's `conv2d`: `y[r, c] = Σ k[i, j] · x[r + i − ay, c + j − ax]` with the anchor at the
//! kernel centre `(ay, ax) = (rows / 2, cols / 2)` (OpenCV's default anchor `(-1, -1)`).
//!
//! Spec grammar (`KernelSpec::parse`):
//! * `sobel-x`, `sobel-y`, `sobel` (gradient magnitude √(gx² + gy²)), `scharr-x`, `scharr-y`,
//!   `prewitt-x`, `prewitt-y`, `laplacian`, `sharpen`, `emboss`;
//! * `gaussian:sigma=S[,size=N]`: OpenCV's `getGaussianKernel`; without a size, OpenCV's
//!   `GaussianBlur` rule `N = round(S · (u8 ? 6 : 8) + 1) | 1` (it depends on the image depth);
//! * `box:N[,M]`: normalised box, N columns × M rows (OpenCV's `Size(width, height)`; M = N
//!   when omitted);
//! * `laplacian-of-gaussian:sigma=S[,size=N]` (alias `log`): `g'' ⊗ g + g ⊗ g''`, rank 2;
//! * a literal `[[1,2,1],[0,0,0],[-1,-2,-1]]` (rows of numbers; also accepted from a file).

use crate::error::{ConvError, Result};
use std::fmt;

/// A dense 2D correlation kernel in row-major f64 (`rows × cols`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
    /// Exact rank-1 factors `(column, row)` when the kernel was built from them
    /// (kernel = column ⊗ row), so the separable path uses them verbatim.
    factors: Option<(Vec<f64>, Vec<f64>)>,
}

impl Kernel {
    /// A kernel from row-major data; every dimension ≥ 1 and every weight finite.
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(ConvError::Zero {
                what: "kernel size",
            });
        }
        if data.len() != rows * cols {
            return Err(ConvError::ShapeMismatch {
                what: "kernel data",
                got: vec![data.len()],
                expected: vec![rows * cols],
            });
        }
        if let Some(v) = data.iter().find(|v| !v.is_finite()) {
            return Err(ConvError::Unsupported(format!(
                "kernel weights must be finite, got {v}"
            )));
        }
        Ok(Kernel {
            rows,
            cols,
            data,
            factors: None,
        })
    }

    /// The outer product `col ⊗ row` (a `col.len() × row.len()` kernel), remembered as exact
    /// separable factors.
    pub fn outer(col: &[f64], row: &[f64]) -> Result<Self> {
        let data = col
            .iter()
            .flat_map(|&c| row.iter().map(move |&r| c * r))
            .collect();
        let mut k = Kernel::new(col.len(), row.len(), data)?;
        k.factors = Some((col.to_vec(), row.to_vec()));
        Ok(k)
    }

    /// Number of kernel rows (height).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of kernel columns (width).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row-major weights.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// Weight at `(r, c)`.
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    /// The exact separable factors this kernel was built from, if any.
    pub fn factors(&self) -> Option<(&[f64], &[f64])> {
        self.factors
            .as_ref()
            .map(|(c, r)| (c.as_slice(), r.as_slice()))
    }

    /// The kernel as an `ndarray` matrix (for factorisation).
    pub fn to_array(&self) -> ndarray::Array2<f64> {
        ndarray::Array2::from_shape_vec((self.rows, self.cols), self.data.clone())
            .expect("rows * cols == data.len() is an invariant")
    }

    /// Sum of all weights.
    pub fn sum(&self) -> f64 {
        self.data.iter().sum()
    }

    /// Parses a literal `[[a,b,...],[...],...]` (JSON-like; a bare `[a,b,c]` is one row) or the
    /// text form: one kernel row per line, numbers separated by spaces, commas or tabs, `#`
    /// starting a comment.
    pub fn parse_text(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.starts_with('[') {
            return parse_literal(t);
        }
        let mut rows: Vec<Vec<f64>> = Vec::new();
        for (ln, line) in t.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let row = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|s| parse_num(s).map_err(|e| bad(format!("line {}: {e}", ln + 1))))
                .collect::<Result<Vec<f64>>>()?;
            rows.push(row);
        }
        from_rows(rows)
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for r in 0..self.rows {
            if r > 0 {
                write!(f, ",")?;
            }
            write!(f, "[")?;
            for c in 0..self.cols {
                if c > 0 {
                    write!(f, ",")?;
                }
                write!(f, "{}", self.at(r, c))?;
            }
            write!(f, "]")?;
        }
        write!(f, "]")
    }
}

fn bad(msg: impl Into<String>) -> ConvError {
    ConvError::Unsupported(format!("bad kernel: {}", msg.into()))
}

fn parse_num(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad(format!("{:?} is not a number", s.trim())))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(format!("{s} is not finite")))
    }
}

fn from_rows(rows: Vec<Vec<f64>>) -> Result<Kernel> {
    if rows.is_empty() || rows[0].is_empty() {
        return Err(bad("empty kernel"));
    }
    let cols = rows[0].len();
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
        return Err(bad(format!(
            "row {} has {} values, row 1 has {cols}",
            i + 1,
            r.len()
        )));
    }
    let n = rows.len();
    Kernel::new(n, cols, rows.into_iter().flatten().collect())
}

/// Parses `[[..],[..]]` or `[..]` by hand (no JSON dependency in the library).
fn parse_literal(t: &str) -> Result<Kernel> {
    let inner = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| bad("unbalanced brackets"))?
        .trim();
    if !inner.starts_with('[') {
        // A single row.
        let row = split_numbers(inner)?;
        return from_rows(vec![row]);
    }
    let mut rows = Vec::new();
    let mut rest = inner;
    loop {
        rest = rest.trim_start();
        let body = rest
            .strip_prefix('[')
            .ok_or_else(|| bad("expected '[' starting a row"))?;
        let end = body.find(']').ok_or_else(|| bad("unbalanced brackets"))?;
        if body[..end].contains('[') {
            return Err(bad("kernels are 2D: at most two levels of brackets"));
        }
        rows.push(split_numbers(&body[..end])?);
        rest = body[end + 1..].trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| bad("expected ',' between rows"))?;
    }
    from_rows(rows)
}

fn split_numbers(s: &str) -> Result<Vec<f64>> {
    if s.trim().is_empty() {
        return Err(bad("empty row"));
    }
    s.split(',').map(parse_num).collect()
}

/// The sample depth of the image a kernel is built for; only OpenCV's Gaussian size rule
/// depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// 8-bit integer samples.
    U8,
    /// 16-bit integer samples.
    U16,
    /// Floating-point samples.
    F32,
}

/// What `-k` asked for, before the image depth is known.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelSpec {
    /// A fixed kernel.
    Fixed(Kernel),
    /// The Sobel gradient magnitude √(gx² + gy²).
    SobelMagnitude,
    /// `gaussian:sigma=S[,size=N]`.
    Gaussian {
        /// Standard deviation in pixels (> 0, or 0 with an explicit size: OpenCV's default).
        sigma: f64,
        /// Kernel size (odd); `None` uses OpenCV's rule.
        size: Option<usize>,
    },
    /// `laplacian-of-gaussian:sigma=S[,size=N]`.
    LaplacianOfGaussian {
        /// Standard deviation in pixels (> 0).
        sigma: f64,
        /// Kernel size (odd); `None` uses `round(8σ + 1) | 1`.
        size: Option<usize>,
    },
}

/// A resolved filter: one linear kernel, or the magnitude of two.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    /// `y = k ⋆ x`.
    Linear(Kernel),
    /// `y = √((kx ⋆ x)² + (ky ⋆ x)²)`.
    Magnitude(Kernel, Kernel),
}

/// The names `KernelSpec::parse` knows, for help texts.
pub const KERNEL_NAMES: &str = "sobel-x, sobel-y, sobel (magnitude), scharr-x, scharr-y, \
prewitt-x, prewitt-y, gaussian:sigma=S[,size=N], box:N[,M], laplacian, \
laplacian-of-gaussian:sigma=S[,size=N], sharpen, emboss, or a literal like [[1,2,1],[0,0,0],[-1,-2,-1]]";

impl KernelSpec {
    /// Parses a kernel spec (see the module docs). File paths are the caller's business.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with('[') {
            return Ok(KernelSpec::Fixed(Kernel::parse_text(s)?));
        }
        let (name, params) = match s.split_once(':') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (s, None),
        };
        let name = name.to_ascii_lowercase();
        let no_params = |k: Kernel| -> Result<KernelSpec> {
            match params {
                None => Ok(KernelSpec::Fixed(k)),
                Some(_) => Err(bad(format!("{name} takes no parameters"))),
            }
        };
        match name.as_str() {
            "sobel-x" | "sobel_x" => no_params(sobel_x()),
            "sobel-y" | "sobel_y" => no_params(sobel_x_t(sobel_x())),
            "sobel" => match params {
                None => Ok(KernelSpec::SobelMagnitude),
                Some(_) => Err(bad("sobel takes no parameters")),
            },
            "scharr-x" | "scharr_x" => no_params(Kernel::outer(&[3.0, 10.0, 3.0], &DERIV)?),
            "scharr-y" | "scharr_y" => no_params(Kernel::outer(&DERIV, &[3.0, 10.0, 3.0])?),
            "prewitt-x" | "prewitt_x" => no_params(Kernel::outer(&[1.0; 3], &DERIV)?),
            "prewitt-y" | "prewitt_y" => no_params(Kernel::outer(&DERIV, &[1.0; 3])?),
            "laplacian" => no_params(Kernel::new(
                3,
                3,
                vec![0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0],
            )?),
            "sharpen" => no_params(Kernel::new(
                3,
                3,
                vec![0.0, -1.0, 0.0, -1.0, 5.0, -1.0, 0.0, -1.0, 0.0],
            )?),
            "emboss" => no_params(Kernel::new(
                3,
                3,
                vec![-2.0, -1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 1.0, 2.0],
            )?),
            "box" => {
                let p = params.ok_or_else(|| bad("box needs a size: box:N[,M]"))?;
                let mut it = p.split(',');
                let n = parse_size(it.next().unwrap_or(""), "box width")?;
                let m = match it.next() {
                    Some(m) => parse_size(m, "box height")?,
                    None => n,
                };
                if it.next().is_some() {
                    return Err(bad("box takes at most two sizes: box:N[,M]"));
                }
                Ok(KernelSpec::Fixed(box_kernel(n, m)?))
            }
            "gaussian" | "gauss" | "laplacian-of-gaussian" | "log" => {
                let p = params.ok_or_else(|| bad(format!("{name} needs sigma=S[,size=N]")))?;
                let (mut sigma, mut size) = (None, None);
                for kv in p.split(',') {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad(format!("expected key=value, got {kv:?}")))?;
                    match k.trim() {
                        "sigma" | "s" => sigma = Some(parse_num(v)?),
                        "size" | "n" => size = Some(parse_size(v, "size")?),
                        other => return Err(bad(format!("unknown parameter {other:?}"))),
                    }
                }
                let sigma = sigma.ok_or_else(|| bad(format!("{name} needs sigma=S")))?;
                if sigma < 0.0 || (sigma == 0.0 && size.is_none()) {
                    return Err(bad(format!(
                        "sigma must be > 0 (or 0 with an explicit size), got {sigma}"
                    )));
                }
                if let Some(n) = size {
                    if n % 2 == 0 {
                        return Err(bad(format!("{name} size must be odd, got {n}")));
                    }
                }
                if name.starts_with('g') {
                    Ok(KernelSpec::Gaussian { sigma, size })
                } else if sigma == 0.0 {
                    Err(bad("laplacian-of-gaussian needs sigma > 0"))
                } else {
                    Ok(KernelSpec::LaplacianOfGaussian { sigma, size })
                }
            }
            _ => Err(bad(format!(
                "unknown kernel {s:?}; expected a file or one of: {KERNEL_NAMES}"
            ))),
        }
    }

    /// The filter for an image of the given depth.
    pub fn resolve(&self, depth: Depth) -> Result<FilterOp> {
        Ok(match self {
            KernelSpec::Fixed(k) => FilterOp::Linear(k.clone()),
            KernelSpec::SobelMagnitude => FilterOp::Magnitude(sobel_x(), sobel_x_t(sobel_x())),
            KernelSpec::Gaussian { sigma, size } => {
                let n = checked_size(size.unwrap_or_else(|| gaussian_size(*sigma, depth)))?;
                let g = gaussian_1d(n, *sigma);
                FilterOp::Linear(Kernel::outer(&g, &g)?)
            }
            KernelSpec::LaplacianOfGaussian { sigma, size } => {
                let n = checked_size(size.unwrap_or_else(|| gaussian_size(*sigma, Depth::F32)))?;
                FilterOp::Linear(laplacian_of_gaussian(n, *sigma)?)
            }
        })
    }
}

/// Sizes derived from σ obey the same limit as explicit ones.
fn checked_size(n: usize) -> Result<usize> {
    if n > MAX_SIZE {
        return Err(bad(format!(
            "sigma gives a {n}-tap kernel, more than {MAX_SIZE}; use a smaller sigma"
        )));
    }
    Ok(n)
}

/// Largest kernel side the spec language accepts.
const MAX_SIZE: usize = 4095;

fn parse_size(s: &str, what: &str) -> Result<usize> {
    let n: usize = s.trim().parse().map_err(|_| {
        bad(format!(
            "{what} must be a positive integer, got {:?}",
            s.trim()
        ))
    })?;
    if n == 0 || n > MAX_SIZE {
        return Err(bad(format!("{what} must be in 1..={MAX_SIZE}, got {n}")));
    }
    Ok(n)
}

/// `[-1, 0, 1]`: the central difference (correlation form).
const DERIV: [f64; 3] = [-1.0, 0.0, 1.0];

/// OpenCV's `Sobel(dx=1, dy=0, ksize=3)` kernel: `[1,2,1]ᵀ ⊗ [-1,0,1]`.
pub fn sobel_x() -> Kernel {
    Kernel::outer(&[1.0, 2.0, 1.0], &DERIV).expect("a fixed 3x3 kernel")
}

fn sobel_x_t(k: Kernel) -> Kernel {
    let (c, r) = k.factors().expect("built from factors");
    Kernel::outer(r, c).expect("a fixed 3x3 kernel")
}

/// Normalised `n`-wide, `m`-tall box kernel (OpenCV `blur`/`boxFilter(normalize=true)`).
pub fn box_kernel(n: usize, m: usize) -> Result<Kernel> {
    Kernel::outer(&vec![1.0 / m as f64; m], &vec![1.0 / n as f64; n])
}

/// OpenCV `GaussianBlur`'s size for `ksize = (0, 0)`: `cvRound(σ·(u8 ? 3 : 4)·2 + 1) | 1`.
pub fn gaussian_size(sigma: f64, depth: Depth) -> usize {
    let f = if depth == Depth::U8 { 3.0 } else { 4.0 };
    // `as usize` saturates for huge σ, which `resolve` then rejects.
    ((sigma * f * 2.0 + 1.0).round_ties_even() as usize) | 1
}

/// OpenCV `getGaussianKernel(n, σ)`: the small fixed tables for odd `n ≤ 7` and `σ ≤ 0`,
/// otherwise `exp(−x²/2σ²)` normalised to sum 1, with `σ = 0.3·((n−1)/2 − 1) + 0.8` when
/// `σ ≤ 0`.
pub fn gaussian_1d(n: usize, sigma: f64) -> Vec<f64> {
    if sigma <= 0.0 {
        let fixed: &[f64] = match n {
            1 => &[1.0],
            3 => &[0.25, 0.5, 0.25],
            5 => &[0.0625, 0.25, 0.375, 0.25, 0.0625],
            7 => &[
                0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
            ],
            _ => &[],
        };
        if !fixed.is_empty() {
            return fixed.to_vec();
        }
    }
    let s = if sigma > 0.0 {
        sigma
    } else {
        ((n as f64 - 1.0) * 0.5 - 1.0) * 0.3 + 0.8
    };
    let c = (n as f64 - 1.0) / 2.0;
    let g: Vec<f64> = (0..n)
        .map(|i| {
            let x = i as f64 - c;
            (-(x * x) / (2.0 * s * s)).exp()
        })
        .collect();
    let sum: f64 = g.iter().sum();
    g.into_iter().map(|v| v / sum).collect()
}

/// The Laplacian of Gaussian as the rank-2 sum `g'' ⊗ g + g ⊗ g''` of sampled 1D kernels
/// (the separable form scipy's `gaussian_laplace` uses): `g` normalised to sum 1 and
/// `g''(x) = (x²/σ⁴ − 1/σ²)·g(x)` shifted to sum 0, so flat regions give exactly 0.
pub fn laplacian_of_gaussian(n: usize, sigma: f64) -> Result<Kernel> {
    let g = gaussian_1d(n, sigma);
    let c = (n as f64 - 1.0) / 2.0;
    let s2 = sigma * sigma;
    let mut d2: Vec<f64> = g
        .iter()
        .enumerate()
        .map(|(i, &gi)| {
            let x = i as f64 - c;
            (x * x / (s2 * s2) - 1.0 / s2) * gi
        })
        .collect();
    let mean = d2.iter().sum::<f64>() / n as f64;
    d2.iter_mut().for_each(|v| *v -= mean);
    let data = (0..n)
        .flat_map(|r| {
            let (g, d2) = (&g, &d2);
            (0..n).map(move |c| d2[r] * g[c] + g[r] * d2[c])
        })
        .collect();
    Kernel::new(n, n, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_text() {
        let k = Kernel::parse_text("[[1,2,1],[0,0,0],[-1,-2,-1]]").unwrap();
        assert_eq!((k.rows(), k.cols()), (3, 3));
        assert_eq!(k.at(2, 1), -2.0);
        let t = Kernel::parse_text("# a comment\n1 2 1\n0, 0, 0\n-1\t-2 -1\n").unwrap();
        assert_eq!(t.data(), k.data());
        let row = Kernel::parse_text("[1, 0.5, -1e-1]").unwrap();
        assert_eq!((row.rows(), row.cols()), (1, 3));
        assert_eq!(row.at(0, 2), -0.1);
        assert_eq!(Kernel::parse_text(&k.to_string()).unwrap(), k);
        for bad in [
            "[[1,2],[3]]",
            "[[1,x]]",
            "[]",
            "[[1,2]",
            "[[[1]]]",
            "1 2\n3",
            "[[nan]]",
        ] {
            assert!(Kernel::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn named_kernels() {
        let op = KernelSpec::parse("sobel-x")
            .unwrap()
            .resolve(Depth::U8)
            .unwrap();
        let FilterOp::Linear(k) = op else { panic!() };
        assert_eq!(k.data(), &[-1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0]);
        let FilterOp::Linear(k) = KernelSpec::parse("scharr-y")
            .unwrap()
            .resolve(Depth::F32)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(k.at(0, 1), -10.0);
        assert_eq!(k.at(2, 0), 3.0);
        let FilterOp::Linear(b) = KernelSpec::parse("box:5,3")
            .unwrap()
            .resolve(Depth::U8)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((b.rows(), b.cols()), (3, 5));
        assert!((b.sum() - 1.0).abs() < 1e-12);
        assert!(matches!(
            KernelSpec::parse("sobel")
                .unwrap()
                .resolve(Depth::U8)
                .unwrap(),
            FilterOp::Magnitude(..)
        ));
        for s in [
            "laplacian",
            "sharpen",
            "emboss",
            "prewitt-x",
            "prewitt-y",
            "scharr-x",
        ] {
            assert!(KernelSpec::parse(s).is_ok(), "{s}");
        }
        for s in [
            "sobel-z",
            "box",
            "box:0",
            "box:3,4,5",
            "gaussian",
            "gaussian:sigma=-1",
            "gaussian:sigma=1,size=4",
            "gaussian:sigma=1,foo=2",
            "sharpen:2",
            "log:sigma=0,size=5",
        ] {
            assert!(KernelSpec::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn gaussian_matches_opencv_rules() {
        // cv2.GaussianBlur(ksize=(0,0), sigmaX=1.5): 11 taps for u8, 13 for float.
        assert_eq!(gaussian_size(1.5, Depth::U8), 11);
        assert_eq!(gaussian_size(1.5, Depth::F32), 13);
        assert_eq!(gaussian_size(1.0, Depth::U8), 7);
        assert_eq!(gaussian_1d(5, 0.0), vec![0.0625, 0.25, 0.375, 0.25, 0.0625]);
        // cv2.getGaussianKernel(5, 1.0).ravel()
        let g = gaussian_1d(5, 1.0);
        let cv = [0.05448868, 0.24420134, 0.40261995, 0.24420134, 0.05448868];
        for (a, b) in g.iter().zip(cv) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }

    #[test]
    fn log_sums_to_zero_and_is_symmetric() {
        let k = laplacian_of_gaussian(9, 1.2).unwrap();
        assert!(k.sum().abs() < 1e-12);
        for r in 0..9 {
            for c in 0..9 {
                assert!((k.at(r, c) - k.at(c, r)).abs() < 1e-15);
                assert!((k.at(r, c) - k.at(8 - r, c)).abs() < 1e-15);
            }
        }
        assert!(k.at(4, 4) < 0.0, "negative centre");
    }
}
