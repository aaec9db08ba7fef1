//! SAELens's release table: release -> repository and conversion, SAE id -> path.
//!
//! The data is `data/saelens_releases.json`, generated from the `pretrained_saes.yaml` of
//! a published sae-lens wheel by `tools/hub/refresh_saelens_releases.py` (which documents
//! the format and how to refresh it); the SAELens version is recorded inside.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sae::Format;

/// The committed table.
const TABLE_JSON: &str = include_str!("../../data/saelens_releases.json");
/// Where the table lives in the repository (for messages).
pub const TABLE_PATH: &str = "data/saelens_releases.json";

/// SAELens conversion functions whose output a loader of ours reads.
pub const SUPPORTED_CONVERSIONS: &[&str] = &[
    "sae_lens (native)",
    "gemma_2",
    "gemma_3",
    "dictionary_learning_1",
    "sparsify",
];

/// The format a SAELens conversion function's files are in: `Ok(None)` for SAELens's
/// native layout (v6 or legacy, told apart by the files), `Err(name)` for a conversion
/// we have no loader for.
pub fn converter_format(conversion: &str) -> std::result::Result<Option<Format>, String> {
    match conversion {
        "sae_lens" => Ok(None),
        // Gemma Scope (params.npz) and Gemma Scope 2 (params.safetensors + config.json).
        "gemma_2" | "gemma_3" => Ok(Some(Format::GemmaScope)),
        "dictionary_learning_1" => Ok(Some(Format::DictionaryLearning)),
        "sparsify" => Ok(Some(Format::Sparsify)),
        other => Err(other.to_string()),
    }
}

/// The parsed table.
#[derive(Debug, Deserialize)]
pub struct Table {
    /// The sae-lens version the table was taken from.
    pub sae_lens_version: String,
    /// Release name -> release.
    pub releases: BTreeMap<String, Release>,
}

/// One release.
#[derive(Debug, Deserialize)]
pub struct Release {
    /// `ORG/NAME` on the Hub.
    pub repo: String,
    /// SAELens conversion function; None = SAELens's native layout.
    pub conversion: Option<String>,
    /// An SAE's path is `path_prefix + id` where its entry is empty.
    pub path_prefix: String,
    /// SAE id -> path in the repository ("" = `path_prefix + id`).
    pub saes: BTreeMap<String, String>,
    /// SAELens's `normalize_activations` config override for the release, if any.
    #[serde(default)]
    pub normalize_activations: Option<String>,
}

/// One SAE of a release, resolved to its place on the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `ORG/NAME`.
    pub repo: String,
    /// File or folder in the repository.
    pub path: String,
    /// Conversion function name (`sae_lens` for the native layout).
    pub conversion: String,
    /// Release-level `normalize_activations` override.
    pub normalize_activations: Option<String>,
}

/// The committed table, parsed once.
pub fn table() -> Result<&'static Table> {
    static TABLE: OnceLock<std::result::Result<Table, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| Table::parse(TABLE_JSON))
        .as_ref()
        .map_err(|e| Error::format(TABLE_PATH, e.clone()))
}

impl Table {
    /// Parses a table in the committed format.
    pub fn parse(json: &str) -> std::result::Result<Table, String> {
        serde_json::from_str(json).map_err(|e| format!("not a SAELens release table: {e}"))
    }

    /// The repository, path and conversion of `release`/`sae_id`; an unknown release or
    /// id is an error listing near names.
    pub fn lookup(&self, release: &str, sae_id: &str) -> Result<Entry> {
        let Some(r) = self.releases.get(release) else {
            let near = near(self.releases.keys(), release);
            return Err(Error::invalid(format!(
                "`{release}` is not a release in SAELens {}'s table ({} releases, {TABLE_PATH}){}",
                self.sae_lens_version,
                self.releases.len(),
                listing("releases", &near)
            )));
        };
        let Some(p) = r.saes.get(sae_id) else {
            let near = near(r.saes.keys(), sae_id);
            return Err(Error::invalid(format!(
                "SAELens release `{release}` has no SAE id `{sae_id}` ({} ids){}",
                r.saes.len(),
                listing("ids", &near)
            )));
        };
        Ok(Entry {
            repo: r.repo.clone(),
            path: if p.is_empty() {
                format!("{}{sae_id}", r.path_prefix)
            } else {
                p.clone()
            },
            conversion: r.conversion.clone().unwrap_or_else(|| "sae_lens".into()),
            normalize_activations: r.normalize_activations.clone(),
        })
    }
}

/// Up to 8 names sharing the longest prefix with `want` (a hint for a typo).
fn near<'a>(names: impl Iterator<Item = &'a String>, want: &str) -> Vec<&'a str> {
    let common = |n: &str| {
        n.bytes()
            .zip(want.bytes())
            .take_while(|(a, b)| a == b)
            .count()
    };
    let mut v: Vec<(usize, &str)> = names.map(|n| (common(n), n.as_str())).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    v.into_iter().take(8).map(|(_, n)| n).collect()
}

fn listing(what: &str, names: &[&str]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("; nearest {what}: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_table_maps_known_releases() {
        let t = table().unwrap();
        assert!(!t.sae_lens_version.is_empty());
        let e = t
            .lookup(
                "gemma-scope-2b-pt-res-canonical",
                "layer_20/width_16k/canonical",
            )
            .unwrap();
        assert_eq!(e.repo, "google/gemma-scope-2b-pt-res");
        assert_eq!(e.path, "layer_20/width_16k/average_l0_71");
        assert_eq!(e.conversion, "gemma_2");
        let e = t
            .lookup("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
            .unwrap();
        assert_eq!(e.repo, "jbloom/GPT2-Small-SAEs-Reformatted");
        assert_eq!(e.path, "blocks.8.hook_resid_pre");
        assert_eq!(e.conversion, "sae_lens");
        let e = t.lookup("llama_scope_lxr_8x", "l0r_8x").unwrap();
        assert_eq!(e.conversion, "llama_scope");
        assert!(converter_format(&e.conversion).is_err());
    }

    #[test]
    fn path_prefix_expands() {
        let t = Table::parse(
            r#"{"sae_lens_version":"x","releases":{"r":{"repo":"o/n","conversion":null,
               "path_prefix":"standard/","saes":{"a":"","b":"elsewhere/b"}}}}"#,
        )
        .unwrap();
        assert_eq!(t.lookup("r", "a").unwrap().path, "standard/a");
        assert_eq!(t.lookup("r", "b").unwrap().path, "elsewhere/b");
        let e = t.lookup("r", "c").unwrap_err().to_string();
        assert!(e.contains("no SAE id `c`") && e.contains("a, b"), "{e}");
        let e = t.lookup("q", "a").unwrap_err().to_string();
        assert!(e.contains("`q` is not a release") && e.contains("r"), "{e}");
    }
}
