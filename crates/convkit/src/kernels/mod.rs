//! Fast kernels, one module per algorithm. Each documents when it wins and why; each is
//! tested against [`crate::reference`].

pub mod depthwise;
