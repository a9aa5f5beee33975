//! Whether ops record themselves on the autodiff tape (per thread).

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with gradient recording switched off on this thread: results never require a
/// gradient and hold no references to their inputs. Nests, and restores the previous state
/// even if `f` panics.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_recording(false, f)
}

/// Runs `f` with gradients recorded, whatever the caller's mode (PyTorch's `enable_grad`): a
/// checkpoint's recomputation inside a backward pass, or a function that always needs its
/// gradient. Nests, and restores the previous state even if `f` panics.
pub fn with_grad<R>(f: impl FnOnce() -> R) -> R {
    with_recording(true, f)
}

/// Runs `f` with recording set to `enabled`, restoring the previous state afterwards (also
/// when `f` panics).
fn with_recording<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// True unless inside [`no_grad`].
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}
