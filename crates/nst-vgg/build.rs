//! `NST_EMBED_WEIGHTS=0` at build time leaves the 20 MB of weights out of the binaries: they
//! then read `weights/vgg19.safetensors` at run time (see `weights::shipped`). Only the
//! binaries copied to a GPU machine are built that way (`scripts/device-build.sh`): a device
//! run carries at most 64 MiB, and each test binary would otherwise embed its own copy.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(nst_weights_external)");
    println!("cargo::rerun-if-env-changed=NST_EMBED_WEIGHTS");
    if std::env::var("NST_EMBED_WEIGHTS").is_ok_and(|v| v == "0") {
        println!("cargo::rustc-cfg=nst_weights_external");
    }
}
