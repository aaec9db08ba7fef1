//! Decoder logit lens: what a latent writes, read through the model's unembedding.
//!
//! For latent i with unit decoder direction u, the token logits are `W_U (g * u)`: g is
//! the final norm's weight (RMSNorm scale; `1 + g` for Gemma, whose norm stores the
//! offset; a LayerNorm model's direction is centred first, as LayerNorm centres its
//! input), W_U the unembedding (`lm_head.weight`, or the token embeddings when the model
//! ties them: `tie_word_embeddings` in config.json, or no `lm_head.weight` saved). The
//! norm's 1/rms factor is one positive number per token and changes no ranking, and its
//! bias adds the same logits for every latent, so both are left out. This is the
//! standard logit lens applied to a direction instead of a residual.
//!
//! Weights are read from the model directory's safetensors files (one file or the
//! sharded `model-0000N-of-0000M.safetensors`), memory-mapped; the unembedding is
//! converted a block of rows at a time, so a large vocabulary is never copied whole.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::mapped::{MappedSafetensors, MappedTensor};
use crate::sae::Sae;

use super::tokenizer::Vocab;

/// Unembedding tensor names, untied first.
const UNEMBED: [&str; 2] = ["lm_head.weight", "embed_out.weight"];
/// Token-embedding names (the unembedding of tied models).
const EMBED: [&str; 3] = [
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "gpt_neox.embed_in.weight",
];
/// Final-norm weight names (a `.bias` beside one marks a LayerNorm).
const FINAL_NORM: [&str; 4] = [
    "model.norm.weight",
    "model.final_layernorm.weight",
    "transformer.ln_f.weight",
    "gpt_neox.final_layer_norm.weight",
];

/// One token and its logit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogit {
    /// Token id.
    pub token_id: i64,
    /// The token's text (with a tokenizer).
    pub token: Option<String>,
    /// The token's logit from the latent's decoder direction (see `method`).
    pub logit: f64,
}

/// One latent's promoted and suppressed tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentLens {
    /// Latent id.
    pub latent: usize,
    /// Highest logits first.
    pub promoted: Vec<TokenLogit>,
    /// Lowest logits first.
    pub suppressed: Vec<TokenLogit>,
}

/// The result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogitLensReport {
    /// The model folder read.
    pub model_dir: String,
    /// The tensor used as the unembedding, and whether it is the tied token embedding.
    pub unembedding: String,
    /// See `unembedding`.
    pub tied: bool,
    /// The final norm's weight tensor, if found.
    pub final_norm: Option<String>,
    /// What was computed, in words.
    pub method: String,
    /// Rows of the unembedding.
    pub vocab_size: usize,
    /// One entry per latent asked for.
    pub latents: Vec<LatentLens>,
}

/// The model directory's safetensors files, searched by tensor name.
struct ModelFiles {
    files: Vec<MappedSafetensors>,
}

impl ModelFiles {
    fn open(dir: &Path) -> Result<ModelFiles> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::missing(
                dir,
                "model weights (*.safetensors, e.g. model.safetensors) in the model directory",
            ));
        }
        let files = paths
            .iter()
            .map(|p| MappedSafetensors::open(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelFiles { files })
    }

    fn find(&self, names: &[&str]) -> Option<(MappedTensor, &Path)> {
        names.iter().find_map(|n| {
            self.files
                .iter()
                .find_map(|f| f.get(n).map(|t| (t, f.path())))
        })
    }
}

/// The model's config.json as JSON (an empty object when absent).
fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("config.json");
    if !p.exists() {
        return Ok(serde_json::json!({}));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("not valid JSON: {e}")))
}

/// Runs the lens for `latents` with `top` tokens each way. `vocab` decodes token ids
/// (e.g. the model directory's tokenizer.json).
pub fn logit_lens(
    sae: &Sae,
    model_dir: &Path,
    latents: &[usize],
    top: usize,
    vocab: Option<&Vocab>,
) -> Result<LogitLensReport> {
    super::check_latents(latents, sae.n_latents())?;
    if latents.is_empty() {
        return Err(Error::invalid("the logit lens needs at least one latent"));
    }
    let d = sae.d_in();
    let config = read_config(model_dir)?;
    let tie = config.get("tie_word_embeddings").and_then(|v| v.as_bool());
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let files = ModelFiles::open(model_dir)?;
    let untied = if tie == Some(true) {
        None
    } else {
        files.find(&UNEMBED)
    };
    let (w_u, w_path, tied) = match untied {
        Some((t, p)) => (t, p.to_path_buf(), false),
        None => match files.find(&EMBED) {
            Some((t, p)) => (t, p.to_path_buf(), true),
            None => {
                return Err(Error::missing(
                    model_dir,
                    format!(
                        "an unembedding tensor ({} or, for tied models, {})",
                        UNEMBED.join(", "),
                        EMBED.join(", ")
                    ),
                ))
            }
        },
    };
    if w_u.shape.len() != 2 || w_u.shape[1] != d {
        return Err(Error::shape(
            &w_path,
            &w_u.name,
            &w_u.shape,
            format!("[vocab, {d}] (the SAE's d_in)"),
        ));
    }
    let dt = w_u.float_dtype(&w_path)?;
    let vocab_size = w_u.shape[0];

    // The directions, through the final norm's weight.
    let norm = files.find(&FINAL_NORM);
    let gemma = model_type.starts_with("gemma");
    let (scale, layer_norm, norm_name) = match &norm {
        Some((t, p)) => {
            let mut g = t.to_f32(p)?;
            if g.len() != d {
                return Err(Error::shape(*p, &t.name, &t.shape, format!("[{d}]")));
            }
            if gemma {
                g.iter_mut().for_each(|v| *v += 1.0);
            }
            let bias = t.name.replace(".weight", ".bias");
            (
                Some(g),
                files.find(&[&bias]).is_some(),
                Some(t.name.clone()),
            )
        }
        None => (None, false, None),
    };
    let dirs: Vec<Vec<f32>> = latents
        .iter()
        .map(|l| {
            let (mut u, _) = super::steer::unit_direction(sae, *l)?;
            if layer_norm {
                let mean = u.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
                u.iter_mut().for_each(|v| *v -= mean as f32);
            }
            if let Some(g) = &scale {
                u.iter_mut().zip(g).for_each(|(v, g)| *v *= g);
            }
            Ok(u)
        })
        .collect::<Result<_>>()?;

    // logits[latent][token], a block of unembedding rows at a time.
    let mut logits = vec![vec![0f32; vocab_size]; latents.len()];
    let bytes = w_u.bytes.as_slice();
    let row_bytes = d * dt.size();
    let block = 1024usize;
    let mut rows = vec![0f32; block * d];
    for start in (0..vocab_size).step_by(block) {
        let n = block.min(vocab_size - start);
        let src = &bytes[start * row_bytes..(start + n) * row_bytes];
        crate::dtype::convert_to_f32(dt, src, &mut rows[..n * d]);
        for (r, row) in rows[..n * d].chunks_exact(d).enumerate() {
            for (out, u) in logits.iter_mut().zip(&dirs) {
                out[start + r] = row
                    .iter()
                    .zip(u)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>() as f32;
            }
        }
    }
    let token = |id: usize, logit: f32| TokenLogit {
        token_id: id as i64,
        token: vocab.map(|v| v.decode(&[id as i64])),
        logit: logit as f64,
    };
    let lens = latents
        .iter()
        .zip(&logits)
        .map(|(l, lg)| {
            let mut order: Vec<usize> = (0..vocab_size).collect();
            order.sort_by(|a, b| lg[*b].total_cmp(&lg[*a]).then(a.cmp(b)));
            let k = top.min(vocab_size);
            LatentLens {
                latent: *l,
                promoted: order[..k].iter().map(|i| token(*i, lg[*i])).collect(),
                suppressed: order
                    .iter()
                    .rev()
                    .take(k)
                    .map(|i| token(*i, lg[*i]))
                    .collect(),
            }
        })
        .collect();
    let method = format!(
        "logits = W_U ({}u), u = the latent's unit decoder direction{}, W_U = `{}`{}; the norm's 1/rms \
         (one positive factor per token) and any bias are left out, as they change no ranking",
        match (&norm_name, gemma) {
            (Some(_), true) => "(1 + g) * ",
            (Some(_), false) => "g * ",
            (None, _) => "",
        },
        match (&norm_name, layer_norm) {
            (Some(n), true) => format!(", centred (LayerNorm), g = `{n}`"),
            (Some(n), false) => format!(", g = `{n}` (the final norm's weight)"),
            (None, _) => " (no final norm weight found: the raw direction)".to_string(),
        },
        w_u.name,
        if tied {
            " (tied to the token embeddings)"
        } else {
            ""
        }
    );
    Ok(LogitLensReport {
        model_dir: model_dir.display().to_string(),
        unembedding: w_u.name.clone(),
        tied,
        final_norm: norm_name,
        method,
        vocab_size,
        latents: lens,
    })
}

/// The report as markdown: per latent, promoted and suppressed tokens side by side.
pub fn logit_lens_markdown(r: &LogitLensReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("# Decoder logit lens\n\n");
    let _ = writeln!(
        s,
        "Model `{}` ({} tokens). {}.\n",
        r.model_dir, r.vocab_size, r.method
    );
    let cell = |t: &TokenLogit| {
        let text = t
            .token
            .clone()
            .unwrap_or_else(|| format!("<{}>", t.token_id));
        format!(
            "`{}` {:+.3}",
            super::top_examples::markdown_cell(&text),
            t.logit
        )
    };
    for l in &r.latents {
        let _ = writeln!(s, "## Latent {}\n", l.latent);
        let _ = writeln!(s, "| rank | promoted | suppressed |\n|---|---|---|");
        for (i, (p, q)) in l.promoted.iter().zip(&l.suppressed).enumerate() {
            let _ = writeln!(s, "| {} | {} | {} |", i + 1, cell(p), cell(q));
        }
        s.push('\n');
    }
    s
}
