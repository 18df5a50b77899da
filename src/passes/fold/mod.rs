//! Folding: rewrites that compute at compile time what the graph would compute at run time.

pub mod constant;
pub mod constant_if;
pub mod reshape_target;
pub mod shape;
