//! `NST_CUDA_PROFILE=1`: the table of time per operation, on the emulator (a test binary of
//! its own, since the setting is read once per process).

use nst_cuda::{profile, Gpu};
use nst_params::Conv2dParams;

#[test]
fn profile_counts_each_operation_by_name() {
    std::env::set_var("NST_CUDA_PROFILE", "1");
    let g = match Gpu::emulated() {
        Ok(g) => g,
        Err(why) if std::env::var_os("NST_REQUIRE_EMULATOR").is_some() => {
            panic!("NST_REQUIRE_EMULATOR is set but {why}")
        }
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    assert!(profile::enabled());
    let x = g.upload(&[1.0, -2.0, 3.0, -4.0]).unwrap();
    for _ in 0..3 {
        g.relu(&x).unwrap();
    }
    g.dot(&x, &x).unwrap();
    // A 2→3 channel 3×3 convolution on 4×5 on the im2col path: its SGEMM is named by shape.
    let c = Conv2dParams {
        batch: 1,
        in_channels: 2,
        in_h: 4,
        in_w: 5,
        out_channels: 3,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        pad: 1,
    };
    let input = g.upload(&vec![0.5; c.input_len()]).unwrap();
    let weights = g.upload(&vec![0.25; c.weight_len()]).unwrap();
    g.clone()
        .with_library_convolutions(false)
        .conv2d(
            (&input, &weights, None),
            &c,
            false,
            nst_params::Layout::Nchw,
        )
        .unwrap();

    let table = profile::report(50).unwrap();
    eprintln!("{table}");
    assert_eq!(calls_in(&table, "relu_forward"), 3);
    assert_eq!(calls_in(&table, "reduce_partial"), 1);
    assert_eq!(calls_in(&table, "reduce_finish"), 1);
    assert_eq!(calls_in(&table, "im2col"), 1);
    // Output channels × patch length × output positions.
    assert_eq!(calls_in(&table, "sgemm 3×18×20"), 1);
    assert!(table.starts_with("GPU time per operation"), "{table}");
    // The second line sums the rows by kind: the SGEMM, and the five kernel launches.
    let kinds = table.lines().nth(1).unwrap();
    assert!(kinds.starts_with("by kind: "), "{table}");
    assert!(
        kinds.contains(" ms SGEMM") && kinds.contains(" ms nst's kernels"),
        "{table}"
    );
    assert!(
        !kinds.contains("convolution forward"),
        "no cuDNN call was made: {table}"
    );

    profile::reset();
    g.relu(&x).unwrap();
    let table = profile::report(50).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(calls_in(&table, "relu_forward"), 1);
}

/// The call count in `table`'s row for `name`.
fn calls_in(table: &str, name: &str) -> u64 {
    let line = table
        .lines()
        .find(|l| l.ends_with(&format!("× {name}")))
        .unwrap_or_else(|| panic!("no row for {name} in\n{table}"));
    let before = line.rsplit_once(" × ").unwrap().0;
    before.split_whitespace().last().unwrap().parse().unwrap()
}
