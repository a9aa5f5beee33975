//! A raw output pointer that parallel tasks share while each writes its own disjoint part.

/// A raw output pointer shared by tasks that write disjoint parts of it. Every use states
/// why the parts are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: only used for disjoint writes (conv::conv2d_forward_direct's column blocks,
// winograd::multiply_transformed's ξ bands,
// gram::gram_backward_in_place's column blocks).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    // A method (not field access) so closures capture the whole Send + Sync wrapper.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}
