//! Writes the fuzzing seeds into `fuzz/seeds/<target>/` from the real inputs nst meets: the
//! shipped images re-encoded in every supported format and pixel layout (and cut short), the
//! shipped weights file cut short and bit-flipped in its header, small safetensors files
//! with each kind of defect, and typical command lines.
//!
//! `cargo run -p nst-fuzz --example make_seeds` (the seeds are committed; rerun only to
//! change them).

use nst_image::image::{self, DynamicImage, ImageFormat};
use safetensors::{tensor::TensorView, Dtype};
use std::io::Cursor;
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(format!("{ROOT}/fuzz/seeds/{target}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn image_seeds() {
    for (file, side) in [
        ("content_chelsea.png", 48),
        ("style_vangogh_starry_night.jpg", 97),
    ] {
        let img = image::open(Path::new(ROOT).join("examples").join(file))
            .unwrap()
            .thumbnail(side, side);
        let stem = file.split('_').next().unwrap();
        let layouts = [
            ("rgb8", DynamicImage::ImageRgb8(img.to_rgb8())),
            ("grey8", DynamicImage::ImageLuma8(img.to_luma8())),
            (
                "greyalpha8",
                DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
            ),
            ("rgba8", DynamicImage::ImageRgba8(img.to_rgba8())),
            ("rgb16", DynamicImage::ImageRgb16(img.to_rgb16())),
            ("grey16", DynamicImage::ImageLuma16(img.to_luma16())),
        ];
        for (layout, img) in &layouts {
            let png = encode(img, ImageFormat::Png);
            write("image", &format!("{stem}_{layout}.png"), &png);
        }
        let rgb = &layouts[0].1;
        let jpeg = encode(rgb, ImageFormat::Jpeg);
        let webp = encode(rgb, ImageFormat::WebP);
        write("image", &format!("{stem}.jpg"), &jpeg);
        write("image", &format!("{stem}.webp"), &webp);
        write(
            "image",
            &format!("{stem}_grey.jpg"),
            &encode(&layouts[1].1, ImageFormat::Jpeg),
        );
        // Cut short: a truncated file of each format.
        let png = encode(rgb, ImageFormat::Png);
        for (ext, bytes) in [("png", &png), ("jpg", &jpeg), ("webp", &webp)] {
            write(
                "image",
                &format!("{stem}_cut.{ext}"),
                &bytes[..bytes.len() / 2],
            );
        }
    }
}

/// (name, dtype, shape, little-endian data) of one tensor of a seed file.
type Tensor<'a> = (&'a str, Dtype, Vec<usize>, &'a [u8]);

fn weights_seeds() {
    let real = nst_vgg::weights::shipped().unwrap();
    let header_len = u64::from_le_bytes(real[..8].try_into().unwrap()) as usize;
    // The real file cut at places that matter: inside the length, the header, the data.
    for cut in [
        4,
        8,
        64,
        header_len / 2,
        header_len + 8,
        header_len + 8 + 4096,
    ] {
        write(
            "weights",
            &format!("real_cut_{cut}"),
            &real[..cut.min(64 << 10)],
        );
    }
    // Bit flips in the JSON header (names, dtypes, shapes, offsets), data cut at 16 KiB.
    for (i, at) in [9, 20, 100, header_len / 3, header_len / 2, header_len]
        .iter()
        .enumerate()
    {
        let mut bytes = real[..header_len + 8 + (16 << 10)].to_vec();
        bytes[*at] ^= 1 << (i % 8);
        write("weights", &format!("real_flip_{at}"), &bytes);
    }
    // Small files with one defect each.
    let f32s = |n: usize, v: f32| -> Vec<u8> { (0..n).flat_map(|_| v.to_le_bytes()).collect() };
    let tiny_conv = f32s(64 * 3 * 9, 0.01);
    let bias = f32s(64, 0.0);
    let codes = vec![3u8; 64 * 3 * 9];
    let book = f32s(256, 0.5);
    let nan_book = f32s(256, f32::NAN);
    let half_bias: Vec<u8> = (0..64).flat_map(|_| [0u8, 0x3c]).collect();
    let files: Vec<(&str, Vec<Tensor>)> = vec![
        (
            "only_conv1_1_f32",
            vec![
                ("conv1_1.weight", Dtype::F32, vec![64, 3, 3, 3], &tiny_conv),
                ("conv1_1.bias", Dtype::F32, vec![64], &bias),
            ],
        ),
        (
            "only_conv1_1_codes_f16_bias",
            vec![
                ("conv1_1.weight_codes", Dtype::U8, vec![64, 3, 3, 3], &codes),
                ("conv1_1.weight_codebook", Dtype::F32, vec![256], &book),
                ("conv1_1.bias", Dtype::F16, vec![64], &half_bias),
            ],
        ),
        (
            "wrong_shape",
            vec![
                ("conv1_1.weight", Dtype::F32, vec![3, 64, 3, 3], &tiny_conv),
                ("conv1_1.bias", Dtype::F32, vec![64], &bias),
            ],
        ),
        (
            "codes_as_f32",
            vec![
                (
                    "conv1_1.weight_codes",
                    Dtype::F32,
                    vec![16, 3, 3, 3],
                    &tiny_conv[..16 * 27 * 4],
                ),
                ("conv1_1.weight_codebook", Dtype::F32, vec![256], &book),
            ],
        ),
        (
            "nan_codebook",
            vec![
                ("conv1_1.weight_codes", Dtype::U8, vec![64, 3, 3, 3], &codes),
                ("conv1_1.weight_codebook", Dtype::F32, vec![256], &nan_book),
                ("conv1_1.bias", Dtype::F32, vec![64], &bias),
            ],
        ),
    ];
    for (name, tensors) in files {
        let views = tensors
            .into_iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(d, s, b).unwrap()));
        write(
            "weights",
            name,
            &safetensors::serialize(views, None).unwrap(),
        );
    }
}

fn args_seeds() {
    let lines: [&[&str]; 8] = [
        &["--size", "256", "--iters", "50"],
        &[
            "--style-layers",
            "relu1_1,relu2_1,relu3_1",
            "--style-layer-weights",
            "1,2,3",
        ],
        &[
            "--content-layers",
            "relu4_2,conv5_1",
            "--style-weight",
            "1e-2",
        ],
        &[
            "-s",
            "t.png",
            "--style-blend",
            "0.25,0.75",
            "--style-size",
            "300",
        ],
        &[
            "--optimizer",
            "adam",
            "--lr",
            "2.5",
            "--tv-weight",
            "0.1",
            "--scales",
            "3",
        ],
        &[
            "--preserve-colors",
            "luminance",
            "--pooling",
            "avg",
            "--init",
            "noise",
            "--seed",
            "7",
        ],
        &[
            "--device",
            "cpu",
            "--save-every",
            "10",
            "--report",
            "r.json",
        ],
        &["--style-layer-weights", "nan,1,1,1,1", "--size", "0"],
    ];
    for (i, l) in lines.iter().enumerate() {
        write("args", &format!("line_{i}"), l.join("\n").as_bytes());
    }
}

fn main() {
    image_seeds();
    weights_seeds();
    args_seeds();
    println!("wrote {ROOT}/fuzz/seeds/{{image,weights,args}}");
}
