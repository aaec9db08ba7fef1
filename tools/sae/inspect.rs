//! `sae inspect SAE`: what an SAE is, without running it.

use std::path::PathBuf;

use sae_engine::hub::Resolved;
use sae_engine::{Activation, Format, Normalization, Result};
use serde_json::json;

use crate::common::{human_bytes, parse_format, Ctx, LoadFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SAE directory or file, or a name: hf:ORG/NAME/PATH[@REVISION] or
    /// saelens:RELEASE/SAE_ID (resolved in the Hugging Face cache, downloaded when allowed).
    pub sae: PathBuf,
    /// Force the format instead of detecting it.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub load: LoadFlags,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if a.format.is_none() && sae_engine::crosscoder::looks_like(&a.sae) {
        return crate::crosscoder::run_inspect(ctx, &a.sae);
    }
    let mut prov = ctx.provenance("inspect");
    let (sae, resolved) = ctx.load_sae_resolved(&a.sae, a.format, &a.load, &mut prov)?;
    let (activation, k) = match sae.activation {
        Activation::TopK { k } => ("topk", Some(k)),
        Activation::Relu => ("relu", None),
        Activation::JumpRelu => ("jumprelu", None),
    };
    let normalization = match sae.normalization {
        Normalization::None => "none".to_string(),
        Normalization::ConstantNormRescale => "constant_norm_rescale".to_string(),
        Normalization::LayerNorm { eps } => format!("layer_norm (eps {eps})"),
        Normalization::Scale { factor } => format!("scale by {factor} (expected_average_only_in)"),
    };
    let w_enc = sae.w_enc.size_bytes() as u64;
    let w_dec = sae.w_dec.size_bytes() as u64;
    let vectors = 4
        * (sae.b_enc.len() + sae.b_dec.len() + sae.threshold.as_ref().map_or(0, |t| t.len()))
            as u64;
    let fingerprint = sae.fingerprint();
    let m = &sae.meta;
    let json = json!({
        "path": a.sae.to_string_lossy(),
        "format": m.format.name(),
        "architecture": m.architecture,
        "d_in": sae.d_in(),
        "n_latents": sae.n_latents(),
        "activation": activation,
        "k": k,
        "dtype": m.dtype.name(),
        "hook_name": m.hook_name,
        "hook_layer": m.hook_layer,
        "model_name": m.model_name,
        "normalization": normalization,
        "subtract_b_dec": sae.subtract_b_dec,
        "rescale_acts_by_decoder_norm": sae.rescale_acts_by_decoder_norm,
        "sizes": {
            "w_enc": w_enc,
            "w_dec": w_dec,
            "vectors": vectors,
            "total": w_enc + w_dec + vectors,
        },
        "memory_mapped": sae.w_enc.bytes().is_mapped() && sae.w_dec.bytes().is_mapped(),
        "fingerprint": fingerprint,
        "conventions": m.conventions,
        "warnings": m.warnings,
        "resolved": resolved,
    });
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut human = format!(
        "path           {}\n\
         format         {} ({})\n\
         d_in           {}\n\
         n_latents      {}\n\
         activation     {}{}\n\
         dtype          {}\n\
         hook name      {}\n\
         model          {}\n\
         normalization  {}\n\
         b_dec on input {}\n\
         weights        W_enc {}, W_dec {}, vectors {} (total {})\n\
         fingerprint    {}{}",
        a.sae.display(),
        m.format.name(),
        m.architecture,
        sae.d_in(),
        sae.n_latents(),
        activation,
        k.map(|k| format!(" (k = {k})")).unwrap_or_default(),
        m.dtype,
        opt(&m.hook_name),
        opt(&m.model_name),
        normalization,
        if sae.subtract_b_dec {
            "subtracted"
        } else {
            "not subtracted"
        },
        human_bytes(w_enc),
        human_bytes(w_dec),
        human_bytes(vectors),
        human_bytes(w_enc + w_dec + vectors),
        fingerprint,
        resolved.as_ref().map(resolved_lines).unwrap_or_default(),
    );
    // Which of the source library's readings applies, when it has more than one.
    for c in &m.conventions {
        human.push_str(&format!("\nconvention     {c}"));
    }
    ctx.output(&prov, json, &human)
}

/// Where a name resolved, as extra `inspect` lines.
fn resolved_lines(r: &Resolved) -> String {
    let mut s = format!(
        "\nresolved from  {}\nrepository     {} (revision {}, commit {})\npath in repo   {}\nlocal path     {}",
        r.name,
        r.repo,
        r.revision,
        r.commit,
        r.path_in_repo,
        r.local.display()
    );
    if let Some(rel) = &r.release {
        s += &format!(
            "\nSAELens        release {}, SAE {} (conversion {}; table of sae-lens {})",
            rel.release, rel.sae_id, rel.conversion, rel.table_version
        );
    }
    if !r.downloaded.is_empty() {
        s += &format!("\ndownloaded     {}", r.downloaded.join(", "));
    }
    s
}
