//! One layer described by flag-like values, shared by the conv commands, `explain` and stack
//! files: parsing of `3` / `3,2` / `same` style values and their mapping onto a [`ConvSpec`].

use crate::error::{CliError, CliResult};
use convkit::{ConvSpec, Padding, PaddingMode, Rank, ValidSpec};
use std::fmt;
use std::str::FromStr;

/// A flag value: one or more comma-separated non-negative integers (`3`, `3,2`, `1,2,3,4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ints(pub Vec<usize>);

impl FromStr for Ints {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    format!("expected non-negative integers separated by commas, got '{s}'")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Ints)
    }
}

impl fmt::Display for Ints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|v| v.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// A padding value: amounts, or one of the rules `same`, `same-tf`, `valid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PadArg {
    /// `P`, `PH,PW` or `T,B,L,R` (1D: `P` or `L,R`).
    Values(Vec<usize>),
    /// PyTorch `padding='same'` (stride 1).
    Same,
    /// TensorFlow/Keras `SAME` (any stride).
    SameTf,
    /// No padding.
    Valid,
}

impl FromStr for PadArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "same" => Ok(PadArg::Same),
            "same-tf" | "same_tf" => Ok(PadArg::SameTf),
            "valid" => Ok(PadArg::Valid),
            _ => s.parse::<Ints>().map(|i| PadArg::Values(i.0)).map_err(|_| {
                format!("expected P, PH,PW, T,B,L,R, same, same-tf or valid, got '{s}'")
            }),
        }
    }
}

/// Which of the four layer kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// 1D or 2D.
    pub rank: Rank,
    /// Transposed convolution.
    pub transposed: bool,
}

impl Kind {
    /// The command / stack-file name of the kind (`conv2d`, `conv-transpose1d`, ...).
    pub fn name(self) -> &'static str {
        match (self.transposed, self.rank) {
            (false, Rank::Two) => "conv2d",
            (false, Rank::One) => "conv1d",
            (true, Rank::Two) => "conv-transpose2d",
            (true, Rank::One) => "conv-transpose1d",
        }
    }

    /// Number of dimensions of the input array: 4 (N, C, H, W) or 3 (N, C, L).
    pub fn ndim(self) -> usize {
        match self.rank {
            Rank::Two => 4,
            Rank::One => 3,
        }
    }
}

/// Everything that defines a layer, as given on the command line or in a stack file.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Kind of layer.
    pub kind: Kind,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// `k` or `kh,kw` (1D: `k`).
    pub kernel: Vec<usize>,
    /// `s` or `sh,sw`.
    pub stride: Vec<usize>,
    /// Padding amounts or rule.
    pub padding: PadArg,
    /// `d` or `dh,dw`.
    pub dilation: Vec<usize>,
    /// Groups.
    pub groups: usize,
    /// Border mode (direct only; the library rejects others on transposed layers).
    pub padding_mode: PaddingMode,
    /// Transposed only: `p` or `ph,pw`.
    pub output_padding: Option<Vec<usize>>,
    /// Transposed only: wanted output size `h,w` (1D: `l`).
    pub output_size: Option<Vec<usize>>,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Layer {
    /// A layer of `kind` with PyTorch's defaults (stride 1, no padding, bias).
    pub fn new(kind: Kind, in_channels: usize, out_channels: usize, kernel: Vec<usize>) -> Self {
        Layer {
            kind,
            in_channels,
            out_channels,
            kernel,
            stride: vec![1],
            padding: PadArg::Values(vec![0]),
            dilation: vec![1],
            groups: 1,
            padding_mode: PaddingMode::Zeros,
            output_padding: None,
            output_size: None,
            bias: true,
        }
    }

    /// Maps a scalar / pair onto `[h, w]` for this rank (1D: `[fill, v]`).
    fn pair(&self, what: &str, v: &[usize], fill: usize) -> CliResult<[usize; 2]> {
        match (self.kind.rank, v) {
            (Rank::Two, [a]) => Ok([*a, *a]),
            (Rank::Two, [a, b]) => Ok([*a, *b]),
            (Rank::One, [a]) => Ok([fill, *a]),
            (Rank::Two, _) => Err(CliError::Usage(format!(
                "{what} takes one value or two (height,width) for {}, got {}",
                self.kind.name(),
                v.len()
            ))),
            (Rank::One, _) => Err(CliError::Usage(format!(
                "{what} takes one value for {}, got {}",
                self.kind.name(),
                v.len()
            ))),
        }
    }

    /// Validates the layer into a [`ValidSpec`].
    pub fn build(&self) -> CliResult<ValidSpec> {
        let two = self.kind.rank == Rank::Two;
        let kernel = self.pair("kernel", &self.kernel, 1)?;
        let mut s = match (self.kind.transposed, two) {
            (false, true) => ConvSpec::conv2d(self.in_channels, self.out_channels, kernel),
            (false, false) => ConvSpec::conv1d(self.in_channels, self.out_channels, kernel[1]),
            (true, true) => ConvSpec::conv_transpose2d(self.in_channels, self.out_channels, kernel),
            (true, false) => {
                ConvSpec::conv_transpose1d(self.in_channels, self.out_channels, kernel[1])
            }
        };
        s.stride = self.pair("stride", &self.stride, 1)?;
        s.dilation = self.pair("dilation", &self.dilation, 1)?;
        s.padding = match (&self.padding, two) {
            (PadArg::Same, _) => Padding::Same,
            (PadArg::SameTf, _) => Padding::SameTf,
            (PadArg::Valid, _) => Padding::Valid,
            (PadArg::Values(v), true) => match v[..] {
                [p] => Padding::uniform(p),
                [ph, pw] => Padding::symmetric(ph, pw),
                [t, b, l, r] => Padding::Explicit([t, b, l, r]),
                _ => {
                    return Err(CliError::Usage(format!(
                        "padding takes P, PH,PW or T,B,L,R for {}, got {} values",
                        self.kind.name(),
                        v.len()
                    )))
                }
            },
            (PadArg::Values(v), false) => match v[..] {
                [p] => Padding::Explicit([0, 0, p, p]),
                [l, r] => Padding::Explicit([0, 0, l, r]),
                _ => {
                    return Err(CliError::Usage(format!(
                        "padding takes P or LEFT,RIGHT for {}, got {} values",
                        self.kind.name(),
                        v.len()
                    )))
                }
            },
        };
        s.groups = self.groups;
        s.padding_mode = self.padding_mode;
        s.bias = self.bias;
        if let Some(op) = &self.output_padding {
            if !self.kind.transposed {
                return Err(convkit::ConvError::OutputPaddingOnDirect.into());
            }
            s.output_padding = self.pair("output padding", op, 0)?;
        }
        if let Some(size) = &self.output_size {
            if !self.kind.transposed {
                return Err(convkit::ConvError::OutputPaddingOnDirect.into());
            }
            s.output_size = Some(self.pair("output size", size, 1)?);
        }
        Ok(s.build()?)
    }
}

/// Formats a shape as `(1, 3, 224, 224)`.
pub fn shape_str(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("({})", parts.join(", "))
}

/// The user-facing shape of an NCHW shape: 1D layers drop the unit height.
pub fn user_shape(rank: Rank, s: [usize; 4]) -> Vec<usize> {
    match rank {
        Rank::Two => s.to_vec(),
        Rank::One => vec![s[0], s[1], s[3]],
    }
}

/// A count with thousands separators: `4608` → `4,608`.
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!("3".parse::<Ints>().unwrap(), Ints(vec![3]));
        assert_eq!("1, 2".parse::<Ints>().unwrap(), Ints(vec![1, 2]));
        assert!("a".parse::<Ints>().is_err());
        assert!("-1".parse::<Ints>().is_err());
        assert_eq!("same-tf".parse::<PadArg>().unwrap(), PadArg::SameTf);
        assert_eq!(
            "1,2,3,4".parse::<PadArg>().unwrap(),
            PadArg::Values(vec![1, 2, 3, 4])
        );
        assert!("sam".parse::<PadArg>().is_err());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4608), "4,608");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn one_d_padding_sides() {
        let mut l = Layer::new(
            Kind {
                rank: Rank::One,
                transposed: false,
            },
            2,
            4,
            vec![3],
        );
        l.padding = PadArg::Values(vec![1, 2]);
        let v = l.build().unwrap();
        assert_eq!(v.output_hw(1, 10).unwrap(), [1, 11]);
        l.stride = vec![1, 2];
        assert!(l.build().is_err());
    }
}
