//! conv_arithmetic-style pictures of any convolution.
