//! conv_arithmetic-style pictures of any convolution.
//!
//! Dumoulin & Visin's animations (vdumoulin/conv_arithmetic) are how most people learn
//! convolution arithmetic; this crate draws them for *any* layer, with the words "input" and
//! "output" on the drawing, the output-size formula with its numbers in a caption, non-square
//! inputs, kernels and strides, and views the originals cannot show: transposed convolution as a
//! scatter with its overlap (checkerboard) map, depthwise separable, spatially separable and
//! grouped convolution, and a numerical mode.
//!
//! Every number comes from the `convkit` library's public API: sizes from
//! [`convkit::ValidSpec::geometry`] and [`convkit::Geometry::equivalent`], values from
//! [`convkit::reference::forward`], parameter counts from [`convkit::ValidSpec`] and
//! [`convkit::arith`].
//!
//! * [`scene`]: the frames model ([`Scene`]: panels of cells, one [`Frame`] per step).
//! * [`views`]: builds a scene for a [`Request`] (layer + input size + [`View`]).
//! * [`raster`]: PNG frames and palette GIFs; [`svg`]: one animated (SMIL) SVG;
//!   [`html`]: a self-contained interactive page; [`gallery`]: the 15 conv_arithmetic
//!   configurations and the new views.
//!
//! ```
//! use convkit::ConvSpec;
//! use convkit_viz::{views, Request};
//! let spec = ConvSpec::conv2d(1, 1, 3).stride(2).padding(1).build().unwrap();
//! let scene = views::build(&Request::new(spec, [5, 5])).unwrap();
//! assert_eq!(scene.frames.len(), 9); // one frame per output cell of the 3×3 output
//! ```

#![warn(missing_docs)]

pub mod gallery;
pub mod html;
pub mod layout;
pub mod raster;
pub mod scene;
pub mod svg;
pub mod views;

pub use gallery::{write_gallery, GalleryItem};
pub use raster::RasterOptions;
pub use scene::{Cell, CellKind, CellRef, Frame, Panel, Scene};
pub use views::{build, Request, View};

use convkit::ConvError;

/// Everything drawing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// The layer itself is invalid (the spec's own error).
    #[error("{0}")]
    Conv(#[from] ConvError),
    /// Rendering options out of range.
    #[error("{0}")]
    Options(String),
    /// An encoder failed.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}
