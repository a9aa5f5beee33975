//! Test support shared by the crates' integration tests: the reference values computed by an
//! independent PyTorch float64 implementation (`fixtures/reference/`, see its README), and
//! the relative-error metric the acceptance criteria use.

use nst_tensor::{Device, Tensor};
use std::collections::HashMap;

/// Directory holding `reference.safetensors`, `reference.json` and the two PNGs.
pub const REFERENCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/reference");

/// The reference fixture, loaded.
pub struct Reference {
    tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
    /// `reference.json`.
    pub json: serde_json::Value,
}

impl Reference {
    /// Loads the fixture (panics with a clear message if it is missing: tests only).
    pub fn load() -> Self {
        let bytes = std::fs::read(format!("{REFERENCE_DIR}/reference.safetensors"))
            .expect("fixtures/reference/reference.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, t)| {
                let data = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name, (data, t.shape().to_vec()))
            })
            .collect();
        let json = serde_json::from_str(
            &std::fs::read_to_string(format!("{REFERENCE_DIR}/reference.json")).unwrap(),
        )
        .unwrap();
        Self { tensors, json }
    }

    /// A stored tensor as a constant on the CPU.
    pub fn tensor(&self, name: &str) -> Tensor {
        self.tensor_on(name, &Device::Cpu)
    }

    /// A stored tensor as a constant on `device`.
    pub fn tensor_on(&self, name: &str, device: &Device) -> Tensor {
        Tensor::from_vec(self.values(name).to_vec(), self.shape(name), device).unwrap()
    }

    /// A stored tensor's values.
    pub fn values(&self, name: &str) -> &[f32] {
        &self.entry(name).0
    }

    /// A stored tensor's shape.
    pub fn shape(&self, name: &str) -> &[usize] {
        &self.entry(name).1
    }

    fn entry(&self, name: &str) -> &(Vec<f32>, Vec<usize>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }

    /// `json["scalars"][name]`.
    pub fn scalar(&self, name: &str) -> f64 {
        self.json["scalars"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("reference has no scalar {name}"))
    }
}

/// ‖a − b‖ / ‖b‖ computed in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// |a − b| / |b|.
pub fn rel_err_scalar(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}
