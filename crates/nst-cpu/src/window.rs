//! A rectangle copied (or added) from one stack of planes into another: cropping a tile out of
//! an image or features, and pasting a tile's gradient back. See [`Window2dParams`].

pub use nst_params::Window2dParams;
use rayon::prelude::*;

/// `dst`'s window = `src`'s window (`accumulate`: `+=`); the rest of `dst` is left as it is.
/// Planes are copied in parallel, each a row at a time.
pub fn copy_window(p: &Window2dParams, src: &[f32], dst: &mut [f32], accumulate: bool) {
    assert!(p.fits(), "copy_window: the window {p:?} is outside a side");
    assert_eq!(src.len(), p.src_len(), "copy_window: source length");
    assert_eq!(dst.len(), p.dst_len(), "copy_window: destination length");
    let (src_plane, dst_plane) = (p.src_size.0 * p.src_size.1, p.dst_size.0 * p.dst_size.1);
    if p.window_len() == 0 {
        return;
    }
    let (rows, cols) = p.size;
    dst.par_chunks_mut(dst_plane)
        .zip(src.par_chunks(src_plane))
        .for_each(|(dst, src)| {
            for i in 0..rows {
                let from = (p.src_origin.0 + i) * p.src_size.1 + p.src_origin.1;
                let to = (p.dst_origin.0 + i) * p.dst_size.1 + p.dst_origin.1;
                let (from, to) = (&src[from..][..cols], &mut dst[to..][..cols]);
                if accumulate {
                    to.iter_mut().zip(from).for_each(|(d, s)| *d += s);
                } else {
                    to.copy_from_slice(from);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_adds_the_window_of_every_plane() {
        // Two 3×4 planes holding 0..24; the 2×2 window at row 1, column 2 of each.
        let src: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let crop = Window2dParams::crop(2, (3, 4), (1, 2), (2, 2));
        let mut out = vec![0.0; 8];
        copy_window(&crop, &src, &mut out, false);
        assert_eq!(out, [6.0, 7.0, 10.0, 11.0, 18.0, 19.0, 22.0, 23.0]);
        // Pasted back into planes of ones, added: only the window changes.
        let mut back = vec![1.0; 24];
        copy_window(&crop.reversed(), &out, &mut back, true);
        let changed: Vec<usize> = (0..24).filter(|&i| back[i] != 1.0).collect();
        assert_eq!(changed, [6, 7, 10, 11, 18, 19, 22, 23]);
        assert!(changed.iter().all(|&i| back[i] == src[i] + 1.0));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn refuses_a_window_outside_the_source() {
        let crop = Window2dParams::crop(1, (3, 4), (2, 2), (2, 2));
        copy_window(&crop, &[0.0; 12], &mut [0.0; 4], false);
    }
}
