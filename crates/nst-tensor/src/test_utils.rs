//! Running one test on every device: [`test_device!`](crate::test_device) turns a function
//! `fn name(dev: &Device) -> …` into the tests `name::cpu`, `name::cuda` and
//! `name::cuda_emulated`, and `name::cuda_nhwc` and `name::cuda_emulated_nhwc` on the same
//! devices keeping their activations NHWC ([`Device::with_layout`]; the emulator then with its
//! stand-in for cuDNN, which NHWC needs) (candle-core's `test_device!` and dfdx's
//! `TestDevice` are the models).
//!
//! `cuda_emulated` runs the CUDA backend — its storage, every kernel, every cuBLAS call's
//! arguments — on the CPU through the emulator ([`Device::cuda_emulated`]), so the CUDA code
//! path is tested on machines without a GPU. `cuda` runs on a real GPU when one can be opened.
//! Where a device cannot be used (no GPU; no `g++` for the emulator), its test passes after
//! writing a `SKIPPED` line with the reason straight to the terminal — past the test
//! harness's output capture — so a run without a GPU says so:
//!
//! ```text
//! test gradients::cuda ... SKIPPED gradients::cuda: CUDA is not available: no NVIDIA driver found (libcuda.so could not be loaded)
//! ok
//! ```
//!
//! Set `NST_REQUIRE_CUDA=1` to make a missing GPU fail the `cuda` tests instead (the GPU check
//! script does), and `NST_REQUIRE_EMULATOR=1` likewise for the emulator (CI does). A build
//! without the `cuda` feature fails them too: it has no CUDA backend, which is not what a
//! run that sets them wants to hear by way of skipped tests.

use crate::{Device, Layout};
use std::fmt::Debug;
use std::io::Write;

/// Defines the tests `<name>::cpu`, `<name>::cuda`, `<name>::cuda_emulated`,
/// `<name>::cuda_nhwc` and `<name>::cuda_emulated_nhwc` that call `name(&device)`. `name` returns
/// `()` or a `Result` whose error is `Debug`.
///
/// ```
/// use nst_tensor::{test_device, Device, Tensor, TensorError};
///
/// fn doubles(dev: &Device) -> Result<(), TensorError> {
///     let x = Tensor::from_vec(vec![1.0, 2.0], &[2], dev)?;
///     assert_eq!(x.scale(2.0)?.to_vec()?, vec![2.0, 4.0]);
///     Ok(())
/// }
/// test_device!(doubles);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! test_device {
    ($name:ident) => {
        $crate::__paste_device_tests!($name);
    };
}

/// Implementation detail of [`test_device!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __paste_device_tests {
    ($name:ident) => {
        #[allow(non_snake_case)]
        mod $name {
            #[test]
            fn cpu() {
                $crate::test_utils::Outcome::check(super::$name(&$crate::Device::Cpu));
            }
            $crate::__device_test_half!($name, cuda, cuda_or_skip);
            $crate::__device_test_half!($name, cuda_emulated, emulator_or_skip);
            $crate::__device_test_half!($name, cuda_nhwc, cuda_nhwc_or_skip);
            $crate::__device_test_half!($name, cuda_emulated_nhwc, emulated_nhwc_or_skip);
        }
    };
}

/// Implementation detail of [`test_device!`]: the test `$half` that runs `$name` on the
/// device `test_utils::$open` gives, or reports itself skipped.
#[doc(hidden)]
#[macro_export]
macro_rules! __device_test_half {
    ($name:ident, $half:ident, $open:ident) => {
        #[test]
        fn $half() {
            let test = concat!(module_path!(), "::", stringify!($half));
            if let Some(dev) = $crate::test_utils::$open(test) {
                $crate::test_utils::Outcome::check(super::$name(&dev));
            }
        }
    };
}

/// CUDA device 0, or `None` after reporting the test as skipped (see the module docs).
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    device_or_skip(test, Device::cuda(0), "NST_REQUIRE_CUDA")
}

/// The CUDA emulator, or `None` after reporting the test as skipped.
pub fn emulator_or_skip(test: &str) -> Option<Device> {
    device_or_skip(test, Device::cuda_emulated(), "NST_REQUIRE_EMULATOR")
}

/// CUDA device 0 keeping activations NHWC, or `None` after reporting the test as skipped
/// (also where the GPU has no cuDNN, which NHWC needs).
pub fn cuda_nhwc_or_skip(test: &str) -> Option<Device> {
    device_or_skip(test, nhwc(Device::cuda(0)), "NST_REQUIRE_CUDA")
}

/// The CUDA emulator with its stand-in convolution library, keeping activations NHWC, or
/// `None` after reporting the test as skipped.
pub fn emulated_nhwc_or_skip(test: &str) -> Option<Device> {
    device_or_skip(
        test,
        nhwc(Device::cuda_emulated_with_library()),
        "NST_REQUIRE_EMULATOR",
    )
}

/// The device keeping activations NHWC, or why it cannot.
fn nhwc(device: crate::Result<Device>) -> crate::Result<Device> {
    let device = device?.with_layout(Layout::Nhwc);
    if device.layout() == Layout::Nhwc {
        Ok(device)
    } else {
        Err(crate::TensorError::CudaUnavailable {
            reason: "NHWC activations need cuDNN, which did not load".into(),
        })
    }
}

/// `require` names the variable that turns a skip into a failure.
fn device_or_skip(test: &str, device: crate::Result<Device>, require: &str) -> Option<Device> {
    match device {
        Ok(dev) => Some(dev),
        Err(e) if std::env::var_os(require).is_some() => panic!("{require} is set but {e}"),
        Err(e) => {
            // Straight to the process's stderr: `eprintln!` would be captured by the harness
            // and shown only for failing tests.
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {e}");
            None
        }
    }
}

/// What a device test may return.
pub trait Outcome {
    /// Panics (fails the test) on an error.
    fn check(self);
}

impl Outcome for () {
    fn check(self) {}
}

impl<E: Debug> Outcome for Result<(), E> {
    fn check(self) {
        if let Err(e) = self {
            panic!("{e:?}");
        }
    }
}
