//! Tiles for evaluating VGG-19 on an image too large to hold its activations at once, with
//! the same features as the whole image.
//!
//! A feature at layer l and position p depends only on the image pixels within its
//! receptive field. Each tile is a **core** (the tiles' cores partition the image) plus a
//! **halo** of image around it that covers the receptive field of every feature of the core,
//! so the features the tile computes for its core — up to the deepest layer — are exactly the
//! whole image's: the zero padding at a tile's inner edges only spoils features within the
//! halo, which no core reads. At the image's own edges the tile keeps the image's padding.
//!
//! For the pooling windows of a tile to be the whole image's, every core and halo starts at a
//! multiple of the deepest layer's stride `s` (16 at relu5_1, `Layer::min_input_side`); a
//! core's features at a layer of stride d (d divides s) are then rows `core.top/d ..
//! core.bottom/d` of the whole image's features, each in exactly one core. The halo
//! is the receptive field's reach past a block of s pixels, rounded up to a multiple of s:
//! 80 pixels at relu5_1 (a reach of 70 each side) and 40 at relu4_2 (38).

use crate::geometry::check_input_size;
use crate::layer::{Layer, LayerKind};
use crate::VggError;

/// A rectangle of rows and columns: `top..top + height`, `left..left + width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// One tile of an image: the pixels it runs the network on (`input`, core and halo) and the
/// part whose features it contributes (`core`), both in image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// The part of the image run through the network.
    pub input: Rect,
    /// The part of the image whose features this tile alone contributes.
    pub core: Rect,
}

impl Tile {
    /// Where the core's features lie in the tile's features at `layer` (which must not be
    /// deeper than the one the tiles were made for): rows and columns of the tile's own
    /// feature map. Empty where the core is narrower than the layer's stride.
    pub fn core_features(&self, layer: Layer) -> Rect {
        let d = layer.min_input_side();
        debug_assert!(
            self.input.top.is_multiple_of(d) && self.input.left.is_multiple_of(d),
            "{layer} is deeper than the layer these tiles were made for"
        );
        let along = |core_start: usize, core_len: usize, input_start: usize| {
            // Whole-image feature positions core_start/d .. (core_start + core_len)/d, floored
            // as the poolings floor; input_start is a multiple of d.
            let (from, to) = (core_start / d, (core_start + core_len) / d);
            (from - input_start / d, to - from)
        };
        let (top, height) = along(self.core.top, self.core.height, self.input.top);
        let (left, width) = along(self.core.left, self.core.width, self.input.left);
        Rect {
            top,
            left,
            height,
            width,
        }
    }
}

/// How far, in image pixels, the features of `deepest` reach past the block of
/// `deepest.min_input_side()` pixels they sit on: `(before, after)`. Worked out by walking
/// the network down from one position: a 3×3 convolution (padding 1) widens the span by one
/// position each side, a 2×2 pooling doubles it (and adds the window's second row).
pub fn receptive_reach(deepest: Layer) -> (usize, usize) {
    let (mut lo, mut hi) = (0i64, 0i64);
    for layer in Layer::all()
        .take(deepest.index() + 1)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        match layer.kind() {
            LayerKind::Conv(_) => (lo, hi) = (lo - 1, hi + 1),
            LayerKind::Pool => (lo, hi) = (2 * lo, 2 * hi + 1),
            LayerKind::Relu => {}
        }
    }
    let stride = deepest.min_input_side() as i64;
    ((-lo) as usize, (hi - (stride - 1)).max(0) as usize)
}

/// The halo around each core: the receptive reach, rounded up to the deepest layer's stride.
pub fn tile_halo(deepest: Layer) -> usize {
    let (before, after) = receptive_reach(deepest);
    before.max(after).next_multiple_of(deepest.min_input_side())
}

/// Tiles covering a `height × width` image for features up to `deepest`, with cores of at
/// most `core_side` pixels a side (rounded down to the deepest layer's stride, and at least
/// one stride), as even as the stride allows and never empty. One tile (the whole image)
/// where it fits in one core. Fails where the image is too small for `deepest`.
pub fn tiles(
    deepest: Layer,
    height: usize,
    width: usize,
    core_side: usize,
) -> Result<Vec<Tile>, VggError> {
    check_input_size(deepest, height, width)?;
    let stride = deepest.min_input_side();
    let blocks_per_core = (core_side / stride).max(1);
    let halo = tile_halo(deepest);
    let spans = |len: usize| -> Vec<(usize, usize, usize, usize)> {
        // The side in blocks of one stride (the last one may be partial), shared out as
        // evenly as whole blocks allow among as few cores as hold at most `blocks_per_core`
        // each: every core has at least one block, and at most `core_side` pixels.
        let blocks = len.div_ceil(stride);
        let n = blocks.div_ceil(blocks_per_core);
        let bound = |k: usize| {
            if k == n {
                len
            } else {
                k * blocks / n * stride
            }
        };
        (0..n)
            .map(|k| {
                let (start, end) = (bound(k), bound(k + 1));
                let (from, to) = (start.saturating_sub(halo), (end + halo).min(len));
                (start, end - start, from, to - from)
            })
            .collect()
    };
    let (rows, cols) = (spans(height), spans(width));
    Ok(rows
        .iter()
        .flat_map(|&(top, height, input_top, input_height)| {
            cols.iter()
                .map(move |&(left, width, input_left, input_width)| Tile {
                    input: Rect {
                        top: input_top,
                        left: input_left,
                        height: input_height,
                        width: input_width,
                    },
                    core: Rect {
                        top,
                        left,
                        height,
                        width,
                    },
                })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str) -> Layer {
        name.parse().unwrap()
    }

    #[test]
    fn the_reach_matches_a_hand_count() {
        // relu1_1: conv1_1 alone, one pixel each side.
        assert_eq!(receptive_reach(layer("relu1_1")), (1, 1));
        // relu2_1 at stride 2: conv2_1 (±1 at stride 2), pool1 ([2i, 2i+1]), conv1_2 and
        // conv1_1 (±1 each): [2i − 4, 2i + 1 + 4], i.e. 4 before and 4 past the pair.
        assert_eq!(receptive_reach(layer("relu2_1")), (4, 4));
        // relu5_1, from conv5_1 down: [−1, 1], pool4 [−2, 3], conv4_x [−6, 7], pool3
        // [−12, 15], conv3_x [−16, 19], pool2 [−32, 39], conv2_x [−34, 41], pool1 [−68, 83],
        // conv1_x [−70, 85]: 70 before 16i and 85 − 15 = 70 past 16i + 15.
        assert_eq!(receptive_reach(layer("relu5_1")), (70, 70));
        assert_eq!(tile_halo(layer("relu5_1")), 80);
        assert_eq!(receptive_reach(layer("relu4_2")), (38, 38));
        assert_eq!(tile_halo(layer("relu4_2")), 40);
    }

    #[test]
    fn cores_partition_the_image_at_every_layer() {
        let deepest = layer("relu5_1");
        let (h, w) = (203, 517);
        let tiles = tiles(deepest, h, w, 128).unwrap();
        assert_eq!(tiles.len(), 2 * 5);
        for l in ["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1"].map(layer) {
            let d = l.min_input_side();
            let mut covered = vec![0u8; (h / d) * (w / d)];
            for t in &tiles {
                let f = t.core_features(l);
                // Inside the tile's own feature map...
                assert!(f.top + f.height <= t.input.height / d);
                assert!(f.left + f.width <= t.input.width / d);
                // ...and, in whole-image positions, covering each feature once.
                let (top, left) = (f.top + t.input.top / d, f.left + t.input.left / d);
                for r in top..top + f.height {
                    for c in left..left + f.width {
                        covered[r * (w / d) + c] += 1;
                    }
                }
            }
            assert!(covered.iter().all(|&n| n == 1), "{l}: {covered:?}");
        }
        for t in &tiles {
            assert_eq!(
                (t.input.top % 16, t.input.left % 16, t.core.top % 16),
                (0, 0, 0)
            );
            assert!(t.core.top - t.input.top == 80 || t.input.top == 0);
            let bottom = t.core.top + t.core.height;
            let below = t.input.top + t.input.height - bottom;
            assert!(below == 80 || t.input.top + t.input.height == h);
        }
    }

    #[test]
    fn cores_are_never_empty_nor_over_the_side() {
        let deepest = layer("relu5_1");
        for (len, side) in [(17, 16), (17, 1), (511, 256), (1030, 1024), (4096, 1000)] {
            let tiles = tiles(deepest, len, 16, side).unwrap();
            let cores: Vec<usize> = tiles.iter().map(|t| t.core.height).collect();
            let side = (side / 16).max(1) * 16;
            assert!(
                cores.iter().all(|&c| c > 0 && c <= side),
                "{len} by {side}: {cores:?}"
            );
            assert_eq!(cores.iter().sum::<usize>(), len);
        }
        // 511 px by 256: two cores of 256 and 255 (16 and 15.9 blocks), not 240 and 271.
        let cores: Vec<usize> = tiles(deepest, 511, 16, 256)
            .unwrap()
            .iter()
            .map(|t| t.core.height)
            .collect();
        assert_eq!(cores, [256, 255]);
    }

    #[test]
    fn an_image_within_one_core_is_one_tile() {
        let t = tiles(layer("relu5_1"), 100, 60, 128).unwrap();
        let whole = Rect {
            top: 0,
            left: 0,
            height: 100,
            width: 60,
        };
        assert_eq!(
            t,
            [Tile {
                input: whole,
                core: whole
            }]
        );
        assert!(tiles(layer("relu5_1"), 10, 60, 128).is_err());
    }
}
