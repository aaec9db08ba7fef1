//! Checks a steering layer before a vector is written (`sae steer --layer`).
//!
//! One numbering throughout: layer N is the OUTPUT of transformer block N (0-based),
//! i.e. Hugging Face `hidden_states[N + 1]` and llama.cpp's `direction.N`. SAE hook
//! names are mapped onto it:
//!
//! | hook | site |
//! |---|---|
//! | `blocks.N.hook_resid_post` (TransformerLens, SAELens, Gemma Scope) | block N's output |
//! | `blocks.N.hook_resid_pre` | block N-1's output (N = 0: the embeddings) |
//! | `layers.N`, `model.layers.N`, `transformer.h.N`, `*.layers.N.output` (sparsify, HF modules) | block N's output |
//! | `resid_post_layer_N` (dictionary_learning) | block N's output |
//! | anything inside a block (`hook_resid_mid`, `hook_attn_out`, `hook_mlp_out`, `attn.hook_z`, `layers.N.mlp`, ...) | not the residual stream between blocks |
//!
//! A vector steers the residual stream between blocks, so an SAE on another site (or
//! on another layer) gives a vector for a place it was not learned at: refused unless
//! forced. Targets differ in what they accept: transformers (npy, safetensors via
//! `tools/python/steer_generate.py`) can hook every block, 0..n_layers; llama.cpp
//! adds `direction.N` to block N's output for N in 1..n_layers and has no slot for 0
//! (and silently ignores N >= n_layers).

use crate::dump::metadata::DumpMetadata;
use crate::error::{Error, Result};
use crate::sae::SaeMeta;

use super::steer::VectorFormat;

/// Where an SAE's hook reads the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookSite {
    /// The output of block N (the residual stream after it).
    BlockOutput(usize),
    /// The token embeddings (`blocks.0.hook_resid_pre`): before any block.
    Embeddings,
    /// A site inside a block (attention, MLP, mid-block residual, ...).
    NonResidual,
}

/// Maps a hook name onto [`HookSite`]; None when the name is not a form we know.
pub fn parse_hook(name: &str) -> Option<HookSite> {
    let parts: Vec<&str> = name.split('.').collect();
    // TransformerLens: blocks.N.<hook...>
    if let Some(i) = parts.iter().position(|p| *p == "blocks") {
        let n: usize = parts.get(i + 1)?.parse().ok()?;
        let rest = &parts[i + 2..];
        return Some(match rest {
            ["hook_resid_post"] => HookSite::BlockOutput(n),
            ["hook_resid_pre"] if n == 0 => HookSite::Embeddings,
            ["hook_resid_pre"] => HookSite::BlockOutput(n - 1),
            [] => return None,
            _ => HookSite::NonResidual,
        });
    }
    // HF module paths (sparsify hookpoints): [model.]layers.N, transformer.h.N, gpt_neox.layers.N
    if let Some(i) = parts.iter().position(|p| matches!(*p, "layers" | "h")) {
        let n: usize = parts.get(i + 1)?.parse().ok()?;
        return Some(match &parts[i + 2..] {
            [] | ["output"] => HookSite::BlockOutput(n),
            _ => HookSite::NonResidual,
        });
    }
    // dictionary_learning submodule names: resid_post_layer_N, attn_out_layer_N, mlp_out_layer_N
    if parts.len() == 1 {
        let (site, n) = name.rsplit_once("_layer_")?;
        let n: usize = n.parse().ok()?;
        return Some(match site {
            "resid_post" => HookSite::BlockOutput(n),
            "resid_pre" if n == 0 => HookSite::Embeddings,
            "resid_pre" => HookSite::BlockOutput(n - 1),
            _ => HookSite::NonResidual,
        });
    }
    None
}

/// Everything known when a layer is checked.
#[derive(Debug, Clone, Default)]
pub struct LayerInputs<'a> {
    /// The SAE's recorded hook and layer.
    pub sae: Option<&'a SaeMeta>,
    /// Metadata of the dump given with `--acts`, if any.
    pub dump: Option<&'a DumpMetadata>,
    /// `--n-layers` (overrides nothing: it must agree with the dump's when both exist).
    pub n_layers_flag: Option<usize>,
    /// `--force-layer`: accept a layer that disagrees with the SAE's hook or a
    /// non-residual hook (never a layer outside the model).
    pub force: bool,
}

/// The outcome of a passed check: what was compared, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerCheck {
    /// The layer asked for (`--layer`).
    pub layer: usize,
    /// The SAE's hook name, if it records one.
    pub sae_hook: Option<String>,
    /// The block whose output the SAE's hook is, when the hook maps onto one.
    pub sae_block: Option<usize>,
    /// The model's block count, if known, and where it came from.
    pub n_layers: Option<usize>,
    /// See `n_layers`.
    pub n_layers_from: Option<String>,
    /// Warnings: a forced mismatch, an unchecked hook, the post-norm last layer.
    pub notes: Vec<String>,
}

/// Checks `layer` for a vector written as `format`; see the module docs.
pub fn check_layer(layer: usize, format: VectorFormat, inp: &LayerInputs) -> Result<LayerCheck> {
    check_labelled(layer, &format!("--layer {layer}"), format, inp)
}

/// Checks the `--acts` dump's own recorded layer against the SAE's hook and the model
/// (a dry run without `--layer`); None when the dump records no layer.
pub fn check_dump_layer(inp: &LayerInputs) -> Result<Option<LayerCheck>> {
    match inp.dump.and_then(|m| m.layer) {
        Some(l) => check_labelled(
            l,
            &format!("the --acts dump's layer {l}"),
            VectorFormat::Safetensors,
            inp,
        )
        .map(Some),
        None => Ok(None),
    }
}

fn check_labelled(
    layer: usize,
    label: &str,
    format: VectorFormat,
    inp: &LayerInputs,
) -> Result<LayerCheck> {
    let mut notes = Vec::new();
    let (n_layers, n_layers_from) = model_layers(inp)?;
    if let Some(n) = n_layers {
        let from = n_layers_from.as_deref().unwrap_or("");
        if layer >= n {
            return Err(Error::invalid(match format {
                VectorFormat::Gguf => format!(
                    "--layer {layer}: the model has {n} blocks ({from}); llama.cpp adds direction.N to \
                     block N's output for N in 1..{n} and silently ignores direction.{layer}"
                ),
                _ => format!(
                    "{label}: the model has {n} blocks ({from}), so layers 0..{} exist",
                    n - 1
                ),
            }));
        }
    }
    if layer == 0 && format == VectorFormat::Gguf {
        return Err(Error::invalid(
            "--layer 0 cannot be written as a llama.cpp control vector: llama.cpp adds direction.N to \
             the output of block N (0-based) for N >= 1 and has no slot for block 0's output; use \
             --export-format npy or safetensors (tools/python/steer_generate.py hooks block 0), or a later layer",
        ));
    }
    let (sae_hook, sae_block) = sae_site(inp, layer, label, &mut notes)?;
    if let Some(md) = inp.dump {
        if let Some(dl) = md.layer {
            if dl != layer {
                mismatch(
                    inp.force,
                    &mut notes,
                    format!(
                        "--layer {layer} differs from the --acts dump's layer {dl} (block {dl}'s output, \
                         its metadata `layer`)"
                    ),
                )?;
            }
        }
    }
    if let Some(n) = n_layers.filter(|n| layer + 1 == *n) {
        let post_norm = inp
            .dump
            .is_some_and(|m| m.hf_hidden_states_index == Some(n) && m.layer == Some(layer));
        if post_norm {
            mismatch(
                inp.force,
                &mut notes,
                format!(
                    "{label} is the last block, and the --acts dump holds hidden_states[{n}]: in \
                     Llama-family transformers models that entry is the final norm's output, not block \
                     {layer}'s, so an SAE trained on it (and median-norm / max-act units measured on it) \
                     live after the final norm while the vector is added before it"
                ),
            )?;
        } else {
            notes.push(format!(
                "layer {layer} is the model's last block: its output goes through the final norm before \
                 the unembedding (and transformers' hidden_states[{n}] is that norm's output, not this \
                 layer's)"
            ));
        }
    }
    Ok(LayerCheck {
        layer,
        sae_hook,
        sae_block,
        n_layers,
        n_layers_from,
        notes,
    })
}

/// A disagreement that `--force-layer` may override: an error, or a note when forced.
fn mismatch(force: bool, notes: &mut Vec<String>, msg: String) -> Result<()> {
    if force {
        notes.push(format!("forced: {msg}"));
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{msg}; pass --force-layer to write it anyway"
        )))
    }
}

/// The model's block count from the dump's metadata and `--n-layers`, which must agree.
fn model_layers(inp: &LayerInputs) -> Result<(Option<usize>, Option<String>)> {
    let from_dump = inp.dump.and_then(|m| m.n_layers);
    match (from_dump, inp.n_layers_flag) {
        (Some(a), Some(b)) if a != b => Err(Error::invalid(format!(
            "--n-layers {b} disagrees with the --acts dump's metadata n_layers {a}"
        ))),
        (Some(a), _) => Ok((Some(a), Some("the --acts dump's metadata".into()))),
        (None, Some(0)) => Err(Error::invalid("--n-layers must be at least 1")),
        (None, Some(b)) => Ok((Some(b), Some("--n-layers".into()))),
        (None, None) => Ok((None, None)),
    }
}

/// The SAE's hook and the block it maps to, checked against `layer`.
fn sae_site(
    inp: &LayerInputs,
    layer: usize,
    label: &str,
    notes: &mut Vec<String>,
) -> Result<(Option<String>, Option<usize>)> {
    let Some(meta) = inp.sae else {
        return Ok((None, None));
    };
    let Some(hook) = meta.hook_name.clone() else {
        notes.push(match meta.hook_layer {
            Some(l) => format!(
                "the SAE records layer {l} but no hook name, so whether that is a block's output is \
                 unknown; {label} is not checked against it"
            ),
            None => format!("the SAE records no hook: {label} is not checked against it"),
        });
        return Ok((None, None));
    };
    let src = meta.source.display();
    match parse_hook(&hook) {
        Some(HookSite::BlockOutput(b)) => {
            if b != layer {
                mismatch(
                    inp.force,
                    notes,
                    format!(
                        "{label} but the SAE {src} was trained on `{hook}`, which is block {b}'s \
                         output (layer {b} in this numbering: blocks.N.hook_resid_post and layers.N are \
                         block N's output, blocks.N.hook_resid_pre is block N-1's)"
                    ),
                )?;
            }
            Ok((Some(hook), Some(b)))
        }
        Some(HookSite::Embeddings) => {
            mismatch(
                inp.force,
                notes,
                format!(
                    "the SAE {src} was trained on `{hook}`, the token embeddings before block 0; no \
                     block's output is that site"
                ),
            )?;
            Ok((Some(hook), None))
        }
        Some(HookSite::NonResidual) => {
            mismatch(
                inp.force,
                notes,
                format!(
                    "the SAE {src} was trained on `{hook}`, which is not the residual stream between \
                     blocks (attention, MLP or mid-block output); a steering vector is added to a \
                     block's output"
                ),
            )?;
            Ok((Some(hook), None))
        }
        None => {
            mismatch(
                inp.force,
                notes,
                format!(
                    "the SAE {src} records hook `{hook}`, which is not a form this tool maps to a block \
                     (blocks.N.hook_resid_post / hook_resid_pre, layers.N, resid_post_layer_N)"
                ),
            )?;
            Ok((Some(hook), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_map_to_block_outputs() {
        let cases = [
            ("blocks.15.hook_resid_post", Some(HookSite::BlockOutput(15))),
            ("blocks.15.hook_resid_pre", Some(HookSite::BlockOutput(14))),
            ("blocks.0.hook_resid_pre", Some(HookSite::Embeddings)),
            ("blocks.3.hook_resid_mid", Some(HookSite::NonResidual)),
            ("blocks.3.hook_mlp_out", Some(HookSite::NonResidual)),
            ("blocks.3.attn.hook_z", Some(HookSite::NonResidual)),
            ("layers.6", Some(HookSite::BlockOutput(6))),
            ("model.layers.10", Some(HookSite::BlockOutput(10))),
            ("model.layers.10.output", Some(HookSite::BlockOutput(10))),
            ("transformer.h.4", Some(HookSite::BlockOutput(4))),
            ("layers.6.mlp", Some(HookSite::NonResidual)),
            ("layers.6.self_attn", Some(HookSite::NonResidual)),
            ("resid_post_layer_3", Some(HookSite::BlockOutput(3))),
            ("attn_out_layer_3", Some(HookSite::NonResidual)),
            ("embed", None),
            ("blocks.x.hook_resid_post", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_hook(name), want, "{name}");
        }
    }

    fn meta(hook: Option<&str>) -> SaeMeta {
        SaeMeta {
            format: crate::sae::Format::SaeLens,
            source: "sae".into(),
            architecture: "topk".into(),
            hook_name: hook.map(str::to_string),
            hook_layer: None,
            model_name: None,
            dtype: crate::dtype::DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn layers_are_checked_against_the_hook_the_model_and_the_target() {
        let post = meta(Some("blocks.15.hook_resid_post"));
        let inp = |force| LayerInputs {
            sae: Some(&post),
            force,
            ..Default::default()
        };
        let ok = check_layer(15, VectorFormat::Gguf, &inp(false)).unwrap();
        assert_eq!(ok.sae_block, Some(15));
        assert!(ok.notes.is_empty());
        let e = check_layer(7, VectorFormat::Gguf, &inp(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force-layer") && e.contains("block 15"), "{e}");
        let forced = check_layer(7, VectorFormat::Gguf, &inp(true)).unwrap();
        assert!(forced.notes[0].starts_with("forced"));

        // the model's size: a flag, the dump's metadata, and they must agree
        let flag = LayerInputs {
            sae: Some(&post),
            n_layers_flag: Some(15),
            force: true,
            ..Default::default()
        };
        let e = check_layer(15, VectorFormat::Gguf, &flag)
            .unwrap_err()
            .to_string();
        assert!(e.contains("silently ignores direction.15"), "{e}");
        let e = check_layer(15, VectorFormat::Npy, &flag)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers 0..14"), "{e}");
        let md = DumpMetadata {
            layer: Some(15),
            n_layers: Some(30),
            ..Default::default()
        };
        let both = LayerInputs {
            sae: Some(&post),
            dump: Some(&md),
            n_layers_flag: Some(31),
            force: false,
        };
        assert!(check_layer(15, VectorFormat::Gguf, &both).is_err());
        let dump_only = LayerInputs {
            n_layers_flag: None,
            ..both.clone()
        };
        let c = check_layer(15, VectorFormat::Gguf, &dump_only).unwrap();
        assert_eq!(c.n_layers, Some(30));
        assert!(
            check_layer(14, VectorFormat::Gguf, &dump_only).is_err(),
            "the dump is layer 15"
        );
        assert_eq!(check_dump_layer(&dump_only).unwrap().unwrap().layer, 15);

        // the last block: a note, or a refusal when the dump holds the post-norm entry
        let last = DumpMetadata {
            layer: Some(29),
            n_layers: Some(30),
            hf_hidden_states_index: Some(30),
            ..Default::default()
        };
        let no_sae = LayerInputs {
            dump: Some(&last),
            ..Default::default()
        };
        let e = check_layer(29, VectorFormat::Npy, &no_sae)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_states[30]"), "{e}");
        let plain = LayerInputs {
            n_layers_flag: Some(30),
            ..Default::default()
        };
        let c = check_layer(29, VectorFormat::Npy, &plain).unwrap();
        assert!(c.notes.iter().any(|n| n.contains("last block")), "{c:?}");

        // layer 0: fine for transformers, impossible for llama.cpp
        let zero = meta(Some("layers.0"));
        let z = LayerInputs {
            sae: Some(&zero),
            ..Default::default()
        };
        check_layer(0, VectorFormat::Safetensors, &z).unwrap();
        let e = check_layer(0, VectorFormat::Gguf, &z)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no slot"), "{e}");

        // hooks that are not a block's output, or unknown, are refused unless forced
        for hook in [
            "blocks.3.hook_mlp_out",
            "blocks.0.hook_resid_pre",
            "encoder.out",
        ] {
            let m = meta(Some(hook));
            let i = LayerInputs {
                sae: Some(&m),
                ..Default::default()
            };
            assert!(check_layer(3, VectorFormat::Npy, &i).is_err(), "{hook}");
            let forced = LayerInputs { force: true, ..i };
            assert!(check_layer(3, VectorFormat::Npy, &forced).is_ok(), "{hook}");
        }
        // an SAE without a hook is not checked, and says so
        let none = meta(None);
        let c = check_layer(
            3,
            VectorFormat::Npy,
            &LayerInputs {
                sae: Some(&none),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.notes[0].contains("no hook"));
    }
}
