//! Fusion: rewrites that merge operators into fewer, equivalent ones.

pub mod conv_bn;
pub mod layer_norm;
