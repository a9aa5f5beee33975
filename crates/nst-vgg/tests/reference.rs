//! VGG-19 activations against the PyTorch float64 reference, and weight-loading errors.

use nst_tensor::{test_device, Device, Tensor};
use nst_testdata::{rel_err, Reference};
use nst_vgg::{Layer, Pooling, Vgg19, VggError};

fn activations_match_reference(dev: &Device) {
    let r = Reference::load();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let names = [
        "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1",
    ];
    let layers: Vec<Layer> = names.iter().map(|n| n.parse().unwrap()).collect();
    let feats = vgg
        .features(&r.tensor_on("content_rgb", dev), &layers)
        .unwrap();
    for (name, f) in names.iter().zip(&feats) {
        let want = format!("act.content.{name}");
        assert_eq!(f.dims(), r.shape(&want), "{name} shape");
        let e = rel_err(&f.to_vec().unwrap(), r.values(&want));
        assert!(e <= 1e-4, "{name}: relative error {e:.2e}");
    }
}
test_device!(activations_match_reference);

#[test]
fn features_stop_at_the_deepest_requested_layer_and_keep_order() {
    let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Avg).unwrap();
    let img = nst_tensor::Tensor::full(100.0, &[1, 3, 20, 18], &Device::Cpu).unwrap();
    let layers: Vec<Layer> = ["pool2", "conv1_1"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let f = vgg.features(&img, &layers).unwrap();
    assert_eq!(f[0].dims(), &[1, 128, 5, 4]);
    assert_eq!(f[1].dims(), &[1, 64, 20, 18]);
}

#[test]
fn layer_names_parse_and_reject() {
    assert_eq!("relu4_2".parse::<Layer>().unwrap().name(), "relu4_2");
    let err = "relu6_1".parse::<Layer>().unwrap_err();
    assert!(err.to_string().contains("relu6_1"), "{err}");
    assert_eq!(nst_vgg::LAYER_NAMES.len(), 37);
}

#[test]
fn bad_weights_are_clear_errors() {
    let bytes = nst_vgg::weights::shipped().unwrap();
    // Truncated and corrupted files.
    for bad in [
        &bytes[..bytes.len() / 2],
        &bytes[..5],
        b"not a safetensors file at all".as_slice(),
    ] {
        let e = Vgg19::from_safetensors(bad, &Device::Cpu, Pooling::Max)
            .err()
            .expect("must fail");
        assert!(matches!(e, VggError::Format(_)), "{e}");
    }
    let mut corrupt = bytes.to_vec();
    corrupt[10] = b'{';
    assert!(Vgg19::from_safetensors(&corrupt, &Device::Cpu, Pooling::Max).is_err());
    // A file without conv3_2: the error names it.
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("conv3_2"))
        .collect();
    let partial = safetensors::serialize(kept, None).unwrap();
    let e = Vgg19::from_safetensors(&partial, &Device::Cpu, Pooling::Max)
        .err()
        .unwrap();
    assert!(e.to_string().contains("conv3_2"), "{e}");
    // A misshaped tensor: the error names it and both shapes.
    let bias = vec![0u8; 4 * 10];
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "conv1_1.bias")
        .collect();
    tensors.push((
        "conv1_1.bias".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10], &bias).unwrap(),
    ));
    let e = Vgg19::from_safetensors(
        &safetensors::serialize(tensors, None).unwrap(),
        &Device::Cpu,
        Pooling::Max,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("conv1_1.bias") && e.to_string().contains("[64]"),
        "{e}"
    );
    // A NaN in a codebook (and an infinite bias): refused at load, naming the tensor.
    for (name, dtype, shape, value) in [
        (
            "conv3_1.weight_codebook",
            safetensors::Dtype::F32,
            vec![256],
            f32::NAN,
        ),
        (
            "conv5_1.bias",
            safetensors::Dtype::F32,
            vec![512],
            f32::INFINITY,
        ),
    ] {
        let n: usize = shape.iter().product();
        let bad: Vec<u8> = (0..n)
            .flat_map(|i| if i == 7 { value } else { 0.5f32 }.to_le_bytes())
            .collect();
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != name)
            .collect();
        tensors.push((
            name.to_string(),
            safetensors::tensor::TensorView::new(dtype, shape, &bad).unwrap(),
        ));
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let e = Vgg19::from_safetensors(&bytes, &Device::Cpu, Pooling::Max)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("weights: tensor {name} has a non-finite value (element 7)")
        );
    }
    // A missing file.
    let e = Vgg19::from_file(
        std::path::Path::new("/nonexistent/vgg.safetensors"),
        &Device::Cpu,
        Pooling::Max,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("/nonexistent/vgg.safetensors"),
        "{e}"
    );
}

#[test]
fn float_weights_load_like_quantised_ones() {
    // Dequantise the shipped file into F16 + F32 tensors and check identical features.
    let st = safetensors::SafeTensors::deserialize(nst_vgg::weights::shipped().unwrap()).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = vec![];
    for (i, name) in nst_vgg::weights::conv_names().enumerate() {
        let codes = st.tensor(&format!("{name}.weight_codes")).unwrap();
        let book: Vec<f32> = st
            .tensor(&format!("{name}.weight_codebook"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let w: Vec<u8> = codes
            .data()
            .iter()
            .flat_map(|&c| book[c as usize].to_le_bytes())
            .collect();
        owned.push((
            format!("{name}.weight"),
            safetensors::Dtype::F32,
            codes.shape().to_vec(),
            w,
        ));
        let b = st.tensor(&format!("{name}.bias")).unwrap();
        // Store biases as F16 in half the layers to exercise that path.
        if i % 2 == 0 {
            let h: Vec<u8> = b
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            owned.push((
                format!("{name}.bias"),
                safetensors::Dtype::F16,
                b.shape().to_vec(),
                h,
            ));
        } else {
            owned.push((
                format!("{name}.bias"),
                safetensors::Dtype::F32,
                b.shape().to_vec(),
                b.data().to_vec(),
            ));
        }
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let a = Vgg19::from_safetensors(&bytes, &Device::Cpu, Pooling::Max).unwrap();
    let b = Vgg19::embedded(&Device::Cpu, Pooling::Max).unwrap();
    let img = nst_tensor::Tensor::full(90.0, &[1, 3, 16, 16], &Device::Cpu).unwrap();
    let l: Vec<Layer> = vec!["relu2_1".parse().unwrap()];
    let (fa, fb) = (a.features(&img, &l).unwrap(), b.features(&img, &l).unwrap());
    let e = rel_err(&fa[0].to_vec().unwrap(), &fb[0].to_vec().unwrap());
    assert!(e < 1e-3, "f16 biases change features by {e:.2e}");
}

/// Found by fuzzing: the safetensors parser's message quotes the file's header, so a hostile
/// file could put newlines and terminal escapes into our one-line error.
#[test]
fn header_errors_are_one_printable_line() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/weights/header_error_with_newline"
    );
    let e = nst_vgg::weights::load(&std::fs::read(path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("weights are not a valid safetensors file: "),
        "{e}"
    );
    assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
    assert!(e.chars().count() <= 400, "{} characters", e.chars().count());
}

/// An image too small for the deepest layer asked for is an error naming both, not a shape
/// mismatch deep in the network.
#[test]
fn features_refuse_an_image_too_small_for_the_deepest_layer() {
    let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Max).unwrap();
    let image = |side| Tensor::full(100.0, &[1, 3, side, side], &Device::Cpu).unwrap();
    let layers: Vec<Layer> = ["relu1_1", "relu5_1"].map(|n| n.parse().unwrap()).to_vec();
    let err = vgg.features(&image(15), &layers).err().unwrap();
    assert!(
        matches!(err, VggError::ImageTooSmall { min_side: 16, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "a 15×15 image is too small for VGG-19 up to relu5_1, which needs at least 16 px a side"
    );
    let features = vgg.features(&image(16), &layers).unwrap();
    assert_eq!(features[1].dims(), &[1, 512, 1, 1]);
}
