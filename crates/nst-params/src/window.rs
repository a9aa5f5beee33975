//! A rectangle copied between two stacks of planes: a crop (a tile of an image, the core of a
//! tile's features) or its inverse, pasting a tile back (a crop's gradient, a tile's image
//! gradient added into the whole image's).

/// `dst[p, dst_top + i, dst_left + j] = src[p, src_top + i, src_left + j]` (or `+=`) for every
/// plane `p < planes`, `i < size.0`, `j < size.1`; `src` is `planes × src_size` values and
/// `dst` `planes × dst_size`, each plane row-major. Sizes and origins are `(rows, columns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2dParams {
    /// Batch size times channels: every plane is copied alike.
    pub planes: usize,
    /// Rows and columns of a source plane.
    pub src_size: (usize, usize),
    /// Rows and columns of a destination plane.
    pub dst_size: (usize, usize),
    /// The window's first row and column in the source.
    pub src_origin: (usize, usize),
    /// The window's first row and column in the destination.
    pub dst_origin: (usize, usize),
    /// Rows and columns of the window.
    pub size: (usize, usize),
}

impl Window2dParams {
    /// The `size` window at `origin` of planes of `src_size`, into planes of exactly its size.
    pub fn crop(
        planes: usize,
        src_size: (usize, usize),
        origin: (usize, usize),
        size: (usize, usize),
    ) -> Self {
        Self {
            planes,
            src_size,
            dst_size: size,
            src_origin: origin,
            dst_origin: (0, 0),
            size,
        }
    }

    /// The copy back: the same window from the destination into the source (a crop's
    /// gradient is its output's gradient pasted at the crop's origin).
    pub fn reversed(&self) -> Self {
        Self {
            planes: self.planes,
            src_size: self.dst_size,
            dst_size: self.src_size,
            src_origin: self.dst_origin,
            dst_origin: self.src_origin,
            size: self.size,
        }
    }

    /// Whether the window lies inside both sides' planes.
    pub fn fits(&self) -> bool {
        let inside = |(rows, cols): (usize, usize), (top, left): (usize, usize)| {
            top.checked_add(self.size.0).is_some_and(|end| end <= rows)
                && left.checked_add(self.size.1).is_some_and(|end| end <= cols)
        };
        inside(self.src_size, self.src_origin) && inside(self.dst_size, self.dst_origin)
    }

    /// Elements of the source.
    pub fn src_len(&self) -> usize {
        self.planes * self.src_size.0 * self.src_size.1
    }

    /// Elements of the destination.
    pub fn dst_len(&self) -> usize {
        self.planes * self.dst_size.0 * self.dst_size.1
    }

    /// Elements copied.
    pub fn window_len(&self) -> usize {
        self.planes * self.size.0 * self.size.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_fits_only_inside_its_source() {
        let crop = Window2dParams::crop(2, (5, 7), (1, 3), (4, 4));
        assert!(crop.fits());
        assert_eq!(
            (crop.src_len(), crop.dst_len(), crop.window_len()),
            (70, 32, 32)
        );
        assert!(!Window2dParams::crop(2, (5, 7), (2, 3), (4, 4)).fits());
        assert!(!Window2dParams::crop(2, (5, 7), (1, 4), (4, 4)).fits());
        assert!(!Window2dParams::crop(1, (5, 7), (usize::MAX, 0), (1, 1)).fits());
    }

    #[test]
    fn reversing_swaps_the_sides() {
        let crop = Window2dParams::crop(3, (5, 7), (1, 3), (4, 2));
        let back = crop.reversed();
        assert_eq!((back.src_size, back.dst_size), ((4, 2), (5, 7)));
        assert_eq!((back.src_origin, back.dst_origin), ((0, 0), (1, 3)));
        assert!(back.fits());
        assert_eq!(back.reversed(), crop);
    }
}
