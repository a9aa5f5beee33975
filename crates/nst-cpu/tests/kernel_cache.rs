//! Convolutions through a `KernelCache` give the same bits as without one, keep what they
//! computed, and follow the channel counts and `set_enabled`.
//!
//! One test function: `set_enabled` is process-wide, so the checks run in sequence.

use nst_cpu::conv::{
    conv2d_backward_input, conv2d_backward_input_accumulate, conv2d_forward, conv2d_relu_forward,
    Conv2dParams, ConvAlgorithm, Weights,
};
use nst_cpu::kernel_cache::{self, KernelCache};
use rand::{rngs::StdRng, Rng, SeedableRng};

const FASTEST: ConvAlgorithm = ConvAlgorithm::Fastest;

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Bytes of one slot's transformed kernels: 36 values per (input, output) channel pair.
fn slot_bytes(p: &Conv2dParams) -> usize {
    4 * 36 * p.in_channels * p.out_channels
}

/// Forward (plain and with ReLU), input gradient and accumulated input gradient of `p`, each
/// with plain weights and twice through `cache`: every result the same bits.
fn check_same_bits(p: &Conv2dParams, w: &[f32], cache: &KernelCache, rng: &mut StdRng) {
    let x = rand_vec(rng, p.input_len());
    let b = rand_vec(rng, p.out_channels);
    let dy = rand_vec(rng, p.output_len());
    let start = rand_vec(rng, p.input_len());
    let cached = Weights::cached(w, cache);
    type Run<'a> = Box<dyn Fn(Weights) -> Vec<f32> + 'a>;
    let runs: [(&str, Run); 4] = [
        (
            "forward",
            Box::new(|w| {
                let mut y = vec![0.0; p.output_len()];
                conv2d_forward(p, FASTEST, &x, w, Some(&b), &mut y);
                y
            }),
        ),
        (
            "forward + relu",
            Box::new(|w| {
                let mut y = vec![0.0; p.output_len()];
                conv2d_relu_forward(p, FASTEST, &x, w, Some(&b), &mut y);
                y
            }),
        ),
        (
            "input gradient",
            Box::new(|w| {
                let mut dx = vec![f32::NAN; p.input_len()];
                conv2d_backward_input(p, FASTEST, &dy, w, &mut dx);
                dx
            }),
        ),
        (
            "accumulated input gradient",
            Box::new(|w| {
                let mut dx = start.clone();
                conv2d_backward_input_accumulate(p, FASTEST, &dy, w, &mut dx);
                dx
            }),
        ),
    ];
    for (what, run) in &runs {
        let plain = run(w.into());
        for pass in ["first", "second"] {
            let got = run(cached);
            assert!(
                got.iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} ({pass} call through the cache) differs from plain weights"
            );
        }
    }
}

/// [`check_same_bits`], then the cache holds `slots` slots of `p`'s kernels, as
/// `cached_bytes` predicts.
fn check_filled(
    p: &Conv2dParams,
    w: &[f32],
    cache: &KernelCache,
    rng: &mut StdRng,
    slots: usize,
    what: &str,
) {
    check_same_bits(p, w, cache, rng);
    assert_eq!(cache.bytes(), slots * slot_bytes(p), "{what}");
    assert_eq!(
        cache.bytes(),
        kernel_cache::cached_bytes(p, FASTEST),
        "{what}"
    );
}

#[test]
fn the_cache_gives_the_same_bits_keeps_its_kernels_and_follows_shapes_and_the_switch() {
    let mut rng = StdRng::seed_from_u64(11);
    kernel_cache::set_enabled(true);

    // Winograd both ways (16 → 24 channels, and the gradient 24 → 16), odd sizes, 2 images.
    let p = Conv2dParams::same_3x3(2, 16, 13, 11, 24);
    let w = rand_vec(&mut rng, p.weight_len());
    let cache = KernelCache::new();
    check_filled(&p, &w, &cache, &mut rng, 2, "both slots");

    // The cache is what the second call used: weights changed in place behind its back
    // (which its owner must never do without `clear`) still give the old result. Other
    // weights (another address) paired with it by mistake are transformed afresh.
    let x = rand_vec(&mut rng, p.input_len());
    let forward = |w: Weights| {
        let mut y = vec![0.0; p.output_len()];
        conv2d_forward(&p, FASTEST, &x, w, None, &mut y);
        y
    };
    let reused = KernelCache::new();
    let mut v = w.clone();
    let before = forward(Weights::cached(&v, &reused));
    v.iter_mut().for_each(|value| *value *= 2.0);
    assert_eq!(forward(Weights::cached(&v, &reused)), before);
    assert_ne!(forward(v.as_slice().into()), before);
    let other: Vec<f32> = w.iter().map(|value| 2.0 * value).collect();
    assert_eq!(
        forward(Weights::cached(&other, &reused)),
        forward(other.as_slice().into())
    );

    // The same weights seen with other channel counts (a reshaped tensor) are transformed
    // afresh for them.
    let swapped = Conv2dParams::same_3x3(1, 24, 9, 10, 16);
    check_same_bits(&swapped, &w, &cache, &mut rng);
    assert_eq!(cache.bytes(), 2 * slot_bytes(&swapped));

    // conv1_1's shape: its forward goes by im2col (3 input channels, nothing cached), its
    // input gradient (64 → 3) by Winograd.
    let first = Conv2dParams::same_3x3(1, 3, 17, 12, 64);
    let w1 = rand_vec(&mut rng, first.weight_len());
    let cache1 = KernelCache::new();
    check_filled(&first, &w1, &cache1, &mut rng, 1, "gradient slot only");
    assert_eq!(kernel_cache::cached_bytes(&first, ConvAlgorithm::Im2col), 0);

    // `clear` empties it.
    let mut cleared = KernelCache::new();
    check_same_bits(&p, &w, &cleared, &mut rng);
    cleared.clear();
    assert_eq!(cleared.bytes(), 0);

    // Only convolutions of at most KEEP_MAX_TILES output tiles keep their kernels: 256×128
    // is 64×32 = 2048 tiles, 256×132 is 64×33. A cache used for a convolution too large to
    // keep drops what it held (an earlier, smaller size's kernels).
    assert_eq!(kernel_cache::KEEP_MAX_TILES, 2048);
    let largest_kept = Conv2dParams::same_3x3(1, 16, 256, 128, 16);
    let too_large = Conv2dParams::same_3x3(1, 16, 256, 132, 16);
    let w2 = rand_vec(&mut rng, largest_kept.weight_len());
    let cache2 = KernelCache::new();
    check_filled(&largest_kept, &w2, &cache2, &mut rng, 2, "2048 tiles");
    check_same_bits(&too_large, &w2, &cache2, &mut rng);
    assert_eq!(cache2.bytes(), 0, "too large to keep: the cache is emptied");
    assert_eq!(kernel_cache::cached_bytes(&too_large, FASTEST), 0);
    let two_images = Conv2dParams {
        batch: 2,
        ..largest_kept
    };
    assert_eq!(kernel_cache::cached_bytes(&two_images, FASTEST), 0);

    // Switched off: the same bits, and a cache drops its kernels at its next use.
    kernel_cache::set_enabled(false);
    check_same_bits(&p, &w, &cache, &mut rng);
    assert_eq!(cache.bytes(), 0, "a disabled cache keeps nothing");
    kernel_cache::set_enabled(true);
    check_same_bits(&p, &w, &cache, &mut rng);
    assert_eq!(cache.bytes(), 2 * slot_bytes(&p));
}
