//! The memory-bound kernels of an iteration at 512²: 2×2 max pooling forward and backward
//! (pool1 … pool4 of VGG-19) and the one-bit ReLU masks (packed after each convolution of the
//! forward pass, applied to each gradient of the backward pass), on the largest of their
//! shapes. Throughput is in bytes read and written, so criterion's "GiB/s" compares with the
//! machine's memory bandwidth.
//!
//! Run: `cargo bench -p nst-benches --bench memory_bound`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nst_cpu::pool::{max_pool_backward, max_pool_forward, Pool2dParams};
use nst_cpu::relu::{relu_mask_apply, relu_mask_pack, relu_mask_words};
use std::time::Duration;

/// pool1 … pool4 at 512²: (channels, input side).
const POOLS: [(usize, usize); 4] = [(64, 512), (128, 256), (256, 128), (512, 64)];

fn memory_bound(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_bound512");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (i, (channels, side)) in POOLS.into_iter().enumerate() {
        let p = Pool2dParams {
            planes: channels,
            in_h: side,
            in_w: side,
        };
        let name = format!("pool{}", i + 1);
        // Values with ties and every winner position, as after a ReLU.
        let x: Vec<f32> = (0..p.input_len())
            .map(|i| ((i * 7919) % 13) as f32 - 4.0)
            .map(|v| v.max(0.0))
            .collect();
        let (mut y, mut argmax) = (vec![0.0; p.output_len()], vec![0u8; p.output_len()]);
        let mut dx = vec![0.0; p.input_len()];
        let bytes = 4 * p.input_len() + 5 * p.output_len();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::new("max_pool_forward", &name), |b| {
            b.iter(|| max_pool_forward(&p, &x, &mut y, &mut argmax))
        });
        group.bench_function(BenchmarkId::new("max_pool_backward", &name), |b| {
            b.iter(|| max_pool_backward(&p, &y, &argmax, &mut dx))
        });
    }
    // conv1_x's output, the largest tensor of the network.
    let len = 64 * 512 * 512;
    let y: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
    let mut bits = vec![0u32; relu_mask_words(len)];
    let mut dy = y.clone();
    group.throughput(Throughput::Bytes((4 * len + len / 8) as u64));
    group.bench_function(BenchmarkId::new("relu_mask_pack", "conv1_x"), |b| {
        b.iter(|| relu_mask_pack(&y, &mut bits))
    });
    group.throughput(Throughput::Bytes((8 * len + len / 8) as u64));
    group.bench_function(BenchmarkId::new("relu_mask_apply", "conv1_x"), |b| {
        b.iter(|| relu_mask_apply(&bits, &mut dy))
    });
    // For scale: a plain copy of the same tensor (the memory system's speed).
    let mut out = vec![0.0f32; len];
    group.throughput(Throughput::Bytes((8 * len) as u64));
    group.bench_function(BenchmarkId::new("copy", "conv1_x"), |b| {
        b.iter(|| out.copy_from_slice(&y))
    });
    group.finish();
}

criterion_group!(benches, memory_bound);
criterion_main!(benches);
