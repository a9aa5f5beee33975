//! One file per op: the public method (forward) and the backward rule the tape calls.

pub(crate) mod checkpoint;
pub(crate) mod conv;
pub(crate) mod distance;
pub(crate) mod elementwise;
pub(crate) mod gram;
pub(crate) mod matmul;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod relu;
pub(crate) mod shape;
pub(crate) mod vector;
pub(crate) mod window;
