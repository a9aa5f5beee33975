//! Convolution forward (Winograd where it applies, and im2col for comparison) and
//! input-gradient for the VGG-19 layer shapes at 256² and 512².
//! Throughput is reported in elements/s where one element is one FLOP, so criterion's
//! "Gelem/s" reads as GFLOP/s.
//!
//! Run: `cargo bench -p nst-benches --bench conv` (unset OPENBLAS_CORETYPE for --features openblas).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nst_benches::vgg19_convs;
use nst_cpu::conv::{conv2d_backward_input, conv2d_forward, ConvAlgorithm};
use std::time::Duration;

fn conv(c: &mut Criterion) {
    for size in [256, 512] {
        let mut group = c.benchmark_group(format!("conv{size}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (name, p) in vgg19_convs(size) {
            let x: Vec<f32> = (0..p.input_len()).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..p.weight_len()).map(|i| (i % 5) as f32 * 0.01).collect();
            let mut y = vec![0.0; p.output_len()];
            let mut dx = vec![0.0; p.input_len()];
            group.throughput(Throughput::Elements(p.flops() as u64));
            group.bench_function(BenchmarkId::new("forward", &name), |b| {
                b.iter(|| conv2d_forward(&p, ConvAlgorithm::Fastest, &x, &w, None, &mut y))
            });
            // im2col + GEMM, to compare with the Winograd path that `forward` takes.
            group.bench_function(BenchmarkId::new("forward_im2col", &name), |b| {
                b.iter(|| conv2d_forward(&p, ConvAlgorithm::Im2col, &x, &w, None, &mut y))
            });
            group.bench_function(BenchmarkId::new("input_grad", &name), |b| {
                b.iter(|| conv2d_backward_input(&p, ConvAlgorithm::Fastest, &y, &w, &mut dx))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
