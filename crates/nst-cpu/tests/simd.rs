//! The AVX2 paths give bit for bit what the baseline paths give (its own process: it switches
//! them off and on for the whole process).

use nst_cpu::{simd, winograd, Conv2dParams};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Every way of writing the output, on shapes with whole rows of 8 tiles, rows that end in a
/// partial group, lane groups across two tile rows, and edges on all sides.
#[test]
fn winograd_avx2_matches_the_baseline_exactly() {
    let mut rng = StdRng::seed_from_u64(5);
    for p in [
        Conv2dParams::same_3x3(1, 3, 64, 64, 8),
        Conv2dParams::same_3x3(1, 5, 21, 45, 6),
        Conv2dParams::same_3x3(1, 4, 37, 131, 3),
        Conv2dParams::same_3x3(1, 2, 5, 7, 2),
    ] {
        let x: Vec<f32> = (0..p.input_len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w: Vec<f32> = (0..p.weight_len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let b: Vec<f32> = (0..p.out_channels)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let start: Vec<f32> = (0..p.output_len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let run = |avx2: bool| {
            simd::set_enabled(avx2);
            let (mut y, mut relu, mut acc) = (
                vec![0.0; p.output_len()],
                vec![0.0; p.output_len()],
                start.clone(),
            );
            winograd::conv3x3_forward(&p, &x, &w, Some(&b), false, &mut y);
            winograd::conv3x3_forward(&p, &x, &w, Some(&b), true, &mut relu);
            winograd::conv3x3_accumulate(&p, &x, &w, &mut acc);
            simd::set_enabled(true);
            [y, relu, acc].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        };
        assert_eq!(run(true), run(false), "{p:?}");
    }
}
