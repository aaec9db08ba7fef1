//! Gemma Scope (Google DeepMind): JumpReLU SAEs, no b_dec subtraction, no normalization.
//!
//! - Gemma Scope (Gemma 2): `params.npz` with `W_enc` [d, L], `W_dec` [L, d], `b_enc` [L],
//!   `b_dec` [d], `threshold` [L] (float32), no config file.
//! - Gemma Scope 2 (Gemma 3): `params.safetensors` with lowercase `w_enc` [d, L], `w_dec`
//!   [L, d], `b_enc`, `b_dec`, `threshold`, and a `config.json` beside it
//!   (`architecture: "jump_relu"`, `model_name`, `hf_hook_point_in`, and for transcoders
//!   `hf_hook_point_out` plus an `affine_skip_connection` tensor).
//!
//! The encoder is `relu(x . W_enc + b_enc)` masked by `pre > threshold`: the canonical JumpReLU.

use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::mapped::MappedSafetensors;
use crate::io::npy::NpyDtype;
use crate::matrix::Matrix;
use crate::sae::{Activation, Format, Normalization, Sae, SaeMeta};

use super::common::{
    bytes_to_f32, check_finite, check_matrix_shape, check_scaling_factor, dims_from_biases,
    f64_bytes_to_f32, layer_from_hook, map_str, matrix_from_bytes, matrix_from_tensor,
    vector_from_tensor, Cfg, Stored,
};
use super::npz::{Npz, NpzArray};

/// Loads `params.npz` or `params.safetensors` (a file, or a directory holding one).
pub fn load(path: &Path) -> Result<Sae> {
    let file = weights_file(path)?;
    let is_npz = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    if is_npz {
        load_npz(&file)
    } else {
        load_safetensors(&file)
    }
}

/// The weights file of a Gemma Scope directory or file path.
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for name in ["params.npz", "params.safetensors"] {
        let p = path.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::missing(
        path,
        "params.npz or params.safetensors (Gemma Scope weights)",
    ))
}

/// Layer and a descriptive hook from path components like `layer_12/width_16k/average_l0_71`
/// or `resid_post/layer_12_width_16k_l0_medium`.
fn hook_from_path(path: &Path) -> (Option<String>, Option<i64>) {
    let mut layer = None;
    let mut site = None;
    for comp in path.components() {
        let c = comp.as_os_str().to_string_lossy();
        if let Some(rest) = c.strip_prefix("layer_") {
            let digits: String = rest.chars().take_while(|ch| ch.is_ascii_digit()).collect();
            if let Ok(n) = digits.parse::<i64>() {
                layer = Some(n);
            }
        }
        for s in ["resid_post", "attn_out", "mlp_out"] {
            if c.contains(s) {
                site = Some(s);
            }
        }
        if c.contains("gemma-scope") {
            for (k, s) in [
                ("-res", "resid_post"),
                ("-mlp", "mlp_out"),
                ("-att", "attn_out"),
            ] {
                if c.contains(k) {
                    site = Some(s);
                }
            }
        }
    }
    let hook = match (layer, site) {
        (Some(l), Some(s)) => Some(format!("blocks.{l}.hook_{s}")),
        _ => None,
    };
    (hook, layer)
}

fn meta(source: &Path, dtype: DType) -> SaeMeta {
    let (hook_name, hook_layer) = hook_from_path(source);
    SaeMeta {
        format: Format::GemmaScope,
        source: source.to_path_buf(),
        architecture: "jumprelu".into(),
        hook_name,
        hook_layer,
        model_name: None,
        dtype,
        conventions: Vec::new(),
        warnings: Vec::new(),
    }
}

fn assemble(
    meta: SaeMeta,
    w_enc: Matrix,
    w_dec: Matrix,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    threshold: Vec<f32>,
) -> Result<Sae> {
    let sae = Sae {
        meta,
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold: Some(threshold),
        activation: Activation::JumpRelu,
        subtract_b_dec: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    sae.validate()?;
    Ok(sae)
}

// ---------------------------------------------------------------- params.npz

fn npz_member<'a>(npz: &'a Npz, name: &str) -> Result<&'a NpzArray> {
    let lower = name.to_ascii_lowercase();
    npz.get(name).or_else(|| npz.get(&lower)).ok_or_else(|| {
        Error::missing(
            npz.path(),
            format!("array `{name}` (members: {})", npz.names().join(", ")),
        )
    })
}

fn npz_vector(npz: &Npz, name: &str, len: usize) -> Result<Vec<f32>> {
    let a = npz_member(npz, name)?;
    let h = &a.header;
    if h.shape != [len] {
        return Err(Error::shape(npz.path(), name, &h.shape, format!("[{len}]")));
    }
    let v = match (h.dtype, h.dtype.float()) {
        (_, Some(dt)) => bytes_to_f32(dt, a.bytes.as_slice()),
        (NpyDtype::F64, None) => f64_bytes_to_f32(a.bytes.as_slice()),
        (other, None) => {
            return Err(Error::dtype(
                npz.path(),
                name,
                format!("{other:?}"),
                "a float array (f32, f16, bf16 or f64)",
            ))
        }
    };
    check_finite(npz.path(), name, &v)?;
    Ok(v)
}

fn npz_matrix(npz: &Npz, name: &str, l: usize, d: usize, stored: Stored) -> Result<Matrix> {
    let a = npz_member(npz, name)?;
    let h = &a.header;
    let dtype = h.dtype.float().ok_or_else(|| {
        Error::dtype(
            npz.path(),
            name,
            format!("{:?}", h.dtype),
            "f32, f16 or bf16",
        )
    })?;
    // A Fortran-ordered [d, L] array is a C-ordered [L, d] one: handled by the layout.
    let layout = check_matrix_shape(npz.path(), name, &h.shape, l, d, stored, h.fortran_order)?;
    matrix_from_bytes(npz.path(), name, a.bytes.clone(), dtype, l, d, layout)
}

fn load_npz(file: &Path) -> Result<Sae> {
    let npz = Npz::open(file)?;
    let shape = |n: &str| npz_member(&npz, n).map(|a| a.header.shape.clone());
    let (be, bd) = (shape("b_enc")?, shape("b_dec")?);
    let (l, d) = dims_from_biases(file, ("b_enc", &be), ("b_dec", &bd))?;
    let w_enc = npz_matrix(&npz, "W_enc", l, d, Stored::DimByLatents)?;
    let w_dec = npz_matrix(&npz, "W_dec", l, d, Stored::LatentsByDim)?;
    let b_enc = npz_vector(&npz, "b_enc", l)?;
    let b_dec = npz_vector(&npz, "b_dec", d)?;
    let threshold = npz_vector(&npz, "threshold", l)?;
    if let Some(sf) = npz.get("scaling_factor") {
        let n = sf.header.numel();
        check_scaling_factor(file, &npz_vector(&npz, "scaling_factor", n)?)?;
    }
    assemble(
        meta(file, w_enc.dtype()),
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold,
    )
}

// ---------------------------------------------------------- params.safetensors

fn load_safetensors(file: &Path) -> Result<Sae> {
    let st = MappedSafetensors::open(file)?;
    let cfg_path = file.with_file_name("config.json");
    let cfg = if cfg_path.is_file() {
        Some(Cfg::read(&cfg_path)?)
    } else {
        None
    };
    if let Some(cfg) = &cfg {
        if let Some(arch) = cfg.str_opt("architecture")? {
            if arch != "jump_relu" && arch != "jumprelu" {
                return Err(Error::format(
                    &cfg.path,
                    format!("architecture `{arch}` is not supported (expected jump_relu)"),
                ));
            }
        }
        let hin = cfg.str_opt("hf_hook_point_in")?;
        if let Some(hout) = cfg.str_opt("hf_hook_point_out")? {
            if Some(hout) != hin {
                return Err(Error::format(
                    &cfg.path,
                    format!(
                        "this is a transcoder (reads `{}`, writes `{hout}`); transcoders are not supported",
                        hin.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    if st.contains("affine_skip_connection") || st.contains("W_skip") {
        return Err(Error::format(
            file,
            "has a skip connection (a skip transcoder); transcoders are not supported",
        ));
    }
    // Gemma Scope 2 names are lowercase; accept the Gemma Scope 1 spelling as well.
    let get = |lower: &str, upper: &str| st.get(lower).or_else(|| st.get(upper));
    let need = |lower: &str, upper: &str| {
        get(lower, upper).ok_or_else(|| {
            Error::missing(
                file,
                format!("tensor `{lower}` (tensors: {})", st.names().join(", ")),
            )
        })
    };
    let t_we = need("w_enc", "W_enc")?;
    let t_wd = need("w_dec", "W_dec")?;
    let t_be = need("b_enc", "b_enc")?;
    let t_bd = need("b_dec", "b_dec")?;
    let t_th = need("threshold", "threshold")?;
    if t_wd.shape.len() == 3 {
        return Err(Error::format(
            file,
            "w_dec is 3-D: a cross-layer transcoder (CLT), which is not supported",
        ));
    }
    let (l, d) = dims_from_biases(file, ("b_enc", &t_be.shape), ("b_dec", &t_bd.shape))?;
    let w_enc = matrix_from_tensor(file, &t_we, l, d, Stored::DimByLatents)?;
    let w_dec = matrix_from_tensor(file, &t_wd, l, d, Stored::LatentsByDim)?;
    let b_enc = vector_from_tensor(file, &t_be, l)?;
    let b_dec = vector_from_tensor(file, &t_bd, d)?;
    let threshold = vector_from_tensor(file, &t_th, l)?;
    let mut m = meta(file, w_enc.dtype());
    if let Some(cfg) = &cfg {
        m.model_name = map_str(&cfg.obj, "model_name");
        if let Some(h) = map_str(&cfg.obj, "hf_hook_point_in") {
            m.hook_layer = layer_from_hook(&h).or(m.hook_layer);
            // Keep the TransformerLens-style name derived from the path when there is one;
            // otherwise report the HF module path as the hook.
            if m.hook_name.is_none() {
                m.hook_name = Some(h);
            }
        }
    }
    assemble(m, w_enc, w_dec, b_enc, b_dec, threshold)
}
