//! Windows of images and features: [`Tensor::crop`] (differentiable: its gradient is the
//! output's gradient pasted into zeros at the crop's place) and [`Tensor::add_window`] (a
//! tile's result added into the whole's, recorded on no tape). Tiled evaluation cuts an
//! image into tiles and the features of each tile into the part it alone computes exactly.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::tensor::NodeRef;
use crate::{Result, Tensor, TensorError};
use nst_params::Window2dParams;

/// The window `size` at `origin` of `[N, C, H, W]`, or why it is not inside.
fn window_of(
    x: &Tensor,
    origin: (usize, usize),
    size: (usize, usize),
    op: &'static str,
) -> Result<Window2dParams> {
    let &[n, c, h, w] = x.dims() else {
        return Err(TensorError::Invalid {
            op,
            reason: format!("expects a tensor [N, C, H, W], got {:?}", x.dims()),
        });
    };
    let p = Window2dParams::crop(n * c, (h, w), origin, size);
    if !p.fits() {
        return Err(TensorError::Invalid {
            op,
            reason: format!(
                "the {}×{} window at row {}, column {} is not inside {h}×{w}",
                size.0, size.1, origin.0, origin.1
            ),
        });
    }
    Ok(p)
}

impl Tensor {
    /// Rows `top..top + height` and columns `left..left + width` of every plane of
    /// `[N, C, H, W]` → `[N, C, height, width]`.
    pub fn crop(&self, top: usize, left: usize, height: usize, width: usize) -> Result<Tensor> {
        let p = window_of(self, (top, left), (height, width), "crop")?;
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let mut y = Storage::full(0.0, p.dst_len(), self.device())?;
        self.storage().copy_window(&mut y, &p, false)?;
        Ok(Tensor::from_op(y, &[n, c, height, width], &[self], || {
            Op::Crop { x: self.node(), p }
        }))
    }

    /// This tensor with `patch` (`[N, C, h, w]`) added into rows `top..top + h` and columns
    /// `left..left + w` of every plane: a tile's gradient gathered into the whole image's.
    /// Takes `self` so that its buffer is reused where nothing else holds it. Records
    /// nothing on the tape, so neither tensor may need a gradient while gradients are
    /// recorded.
    pub fn add_window(self, patch: &Tensor, top: usize, left: usize) -> Result<Tensor> {
        if Tensor::will_record(&[&self, patch]) {
            return Err(TensorError::Invalid {
                op: "add_window",
                reason: "records no gradient: call it on constants or under no_grad".into(),
            });
        }
        let &[n, c, h, w] = patch.dims() else {
            return Err(TensorError::Invalid {
                op: "add_window",
                reason: format!("expects a patch [N, C, H, W], got {:?}", patch.dims()),
            });
        };
        let p = window_of(&self, (top, left), (h, w), "add_window")?.reversed();
        if self.dims()[..2] != [n, c] {
            return Err(TensorError::ShapeMismatch {
                op: "add_window",
                lhs: self.dims().to_vec(),
                rhs: patch.dims().to_vec(),
            });
        }
        let shape = self.dims().to_vec();
        let mut whole = self.into_storage()?;
        patch.storage().copy_window(&mut whole, &p, true)?;
        Ok(Tensor::from_storage(whole, &shape))
    }
}

/// ∂L/∂x of a crop: the output's gradient in the crop's place, zeros around it.
pub(crate) fn crop_backward(
    x: &NodeRef,
    p: &Window2dParams,
    dy: &Storage,
) -> Result<Vec<InputGrad>> {
    let mut dx = Storage::full(0.0, p.src_len(), dy.device())?;
    dy.copy_window(&mut dx, &p.reversed(), false)?;
    Ok(vec![(x.clone(), dx)])
}
