//! What a dump says about where it came from: the safetensors `__metadata__` keys that
//! `tools/python/dump_activations.py` writes (`model`, `layer`, `hook`,
//! `hf_hidden_states_index`, `n_layers`, `sink_positions`), read once over all shards.
//! Every shard of a dump must agree; a shard that disagrees (or lacks a key the others
//! have) is an error naming it, since its rows would come from another layer or model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The keys the engine reads; any other key is kept out of [`DumpMetadata`].
const KEYS: [&str; 6] = [
    "model",
    "layer",
    "hook",
    "hf_hidden_states_index",
    "n_layers",
    "sink_positions",
];

/// A dump's recorded provenance; each field is None when the dump does not record it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DumpMetadata {
    /// The model name or path the activations were taken from.
    pub model: Option<String>,
    /// The block whose output the rows are (0-based).
    pub layer: Option<usize>,
    /// The hook name, e.g. `blocks.15.hook_resid_post`.
    pub hook: Option<String>,
    /// The index into Hugging Face `hidden_states` that was dumped.
    pub hf_hidden_states_index: Option<usize>,
    /// The model's number of transformer blocks.
    pub n_layers: Option<usize>,
    /// Token positions left out of the mask (attention sinks), e.g. `[0]`.
    pub sink_positions: Option<Vec<usize>>,
}

impl DumpMetadata {
    /// Whether no key is recorded.
    pub fn is_empty(&self) -> bool {
        *self == DumpMetadata::default()
    }
}

/// Reads the recognised keys of one shard's map; a value that does not parse is an error
/// naming the shard and the key.
fn parse(path: &Path, raw: &HashMap<String, String>) -> Result<DumpMetadata> {
    let int = |key: &str| -> Result<Option<usize>> {
        raw.get(key)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    Error::format(
                        path,
                        format!("metadata `{key}` is {v:?}, expected a non-negative integer"),
                    )
                })
            })
            .transpose()
    };
    let sinks = raw
        .get("sink_positions")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::format(
                        path,
                        format!(
                            "metadata `sink_positions` is {v:?}, expected comma-separated positions"
                        ),
                    )
                })
        })
        .transpose()?;
    let m = DumpMetadata {
        model: raw.get("model").cloned(),
        layer: int("layer")?,
        hook: raw.get("hook").cloned(),
        hf_hidden_states_index: int("hf_hidden_states_index")?,
        n_layers: int("n_layers")?,
        sink_positions: sinks,
    };
    if let (Some(l), Some(n)) = (m.layer, m.n_layers) {
        if l >= n {
            return Err(Error::format(
                path,
                format!("metadata says layer {l} of a model with n_layers {n} (blocks 0..{n})"),
            ));
        }
    }
    Ok(m)
}

/// The metadata of a dump from its shards' raw maps (in read order; None = a shard
/// format without metadata, read as an empty map). Shards must agree key by key.
pub fn merge(shards: &[(PathBuf, Option<&HashMap<String, String>>)]) -> Result<DumpMetadata> {
    let empty = HashMap::new();
    let Some((first_path, first)) = shards.first() else {
        return Ok(DumpMetadata::default());
    };
    let first_raw = first.unwrap_or(&empty);
    for (path, raw) in &shards[1..] {
        let raw = raw.unwrap_or(&empty);
        for key in KEYS {
            let (a, b) = (first_raw.get(key), raw.get(key));
            if a != b {
                let show = |v: Option<&String>| match v {
                    Some(v) => format!("{v:?}"),
                    None => "nothing".to_string(),
                };
                return Err(Error::format(
                    path,
                    format!(
                        "metadata `{key}` is {} but the dump's first shard {} records {}; \
                         the shards of one dump must come from the same model and layer",
                        show(b),
                        first_path.display(),
                        show(a)
                    ),
                ));
            }
        }
    }
    parse(first_path, first_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_dump_tools_keys_and_ignores_others() {
        let m = map(&[
            ("model", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("layer", "15"),
            ("hook", "blocks.15.hook_resid_post"),
            ("hf_hidden_states_index", "16"),
            ("n_layers", "30"),
            ("sink_positions", "0, 1"),
            ("format", "pt"),
        ]);
        let md = merge(&[(PathBuf::from("a.safetensors"), Some(&m))]).unwrap();
        assert_eq!(md.layer, Some(15));
        assert_eq!(md.n_layers, Some(30));
        assert_eq!(md.hf_hidden_states_index, Some(16));
        assert_eq!(md.hook.as_deref(), Some("blocks.15.hook_resid_post"));
        assert_eq!(md.sink_positions, Some(vec![0, 1]));
        assert!(!md.is_empty());
        assert!(merge(&[(PathBuf::from("x.npy"), None)]).unwrap().is_empty());
    }

    #[test]
    fn bad_values_and_disagreeing_shards_name_the_shard() {
        let bad = map(&[("layer", "fifteen")]);
        let e = merge(&[(PathBuf::from("a.safetensors"), Some(&bad))]).unwrap_err();
        assert!(e.to_string().contains("a.safetensors") && e.to_string().contains("`layer`"));
        let past = map(&[("layer", "30"), ("n_layers", "30")]);
        assert!(merge(&[(PathBuf::from("a.safetensors"), Some(&past))]).is_err());
        let (a, b) = (map(&[("layer", "15")]), map(&[("layer", "7")]));
        let e = merge(&[
            (PathBuf::from("s0.safetensors"), Some(&a)),
            (PathBuf::from("s1.safetensors"), Some(&b)),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s1.safetensors") && e.contains("s0.safetensors"),
            "{e}"
        );
        // a shard without the key disagrees as well
        let e = merge(&[
            (PathBuf::from("s0.safetensors"), Some(&a)),
            (PathBuf::from("s1.npy"), None),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("s1.npy") && e.contains("nothing"), "{e}");
        // agreeing shards merge
        let md = merge(&[
            (PathBuf::from("s0.safetensors"), Some(&a)),
            (PathBuf::from("s1.safetensors"), Some(&a)),
        ])
        .unwrap();
        assert_eq!(md.layer, Some(15));
    }
}
