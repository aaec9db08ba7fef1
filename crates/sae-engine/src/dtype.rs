//! Element types of weights and activations, and their conversion to f32.

use half::{bf16, f16};

/// Floating-point element types the engine reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (f32's exponent, 8-bit mantissa).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name as used by torch / safetensors docs ("f32", "f16", "bf16").
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses "f32", "float32", "F32", "bf16", "bfloat16", "f16", "float16", "half".
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().trim_start_matches("torch.") {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// The matching safetensors dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// The engine dtype of a safetensors dtype, if it is a float type we accept.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts little-endian elements of `dtype` in `src` into `dst`.
/// `src.len()` must be `dst.len() * dtype.size()`. Works on unaligned bytes,
/// which matters because safetensors and npy data offsets need not be aligned.
pub fn convert_to_f32(dtype: DType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * dtype.size());
    match dtype {
        DType::F32 => {
            if let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(src) {
                dst.copy_from_slice(s);
            } else {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        DType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

/// Converts f32 values into little-endian bytes of `dtype` (round to nearest even).
pub fn convert_from_f32(dtype: DType, src: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(src).to_vec(),
        DType::F16 => src
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => src
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_each_dtype() {
        let vals = [0.0f32, 1.5, -2.25, 3.0e-3, 65504.0];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let bytes = convert_from_f32(dt, &vals);
            assert_eq!(bytes.len(), vals.len() * dt.size());
            let mut back = vec![0f32; vals.len()];
            convert_to_f32(dt, &bytes, &mut back);
            for (a, b) in vals.iter().zip(&back) {
                let tol = match dt {
                    DType::F32 => 0.0,
                    DType::F16 => a.abs() * 1e-3,
                    DType::BF16 => a.abs() * 8e-3,
                };
                assert!((a - b).abs() <= tol, "{dt}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn unaligned_f32() {
        let vals = [1.0f32, -7.5];
        let mut bytes = vec![0u8];
        bytes.extend(convert_from_f32(DType::F32, &vals));
        let mut back = [0f32; 2];
        convert_to_f32(DType::F32, &bytes[1..], &mut back);
        assert_eq!(back, vals);
    }
}
