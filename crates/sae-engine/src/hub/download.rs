//! Downloading one SAE's files into the Hugging Face cache (hf-hub's sync API), when the
//! cache does not have them and the network is allowed.
//!
//! The repository listing at the revision decides what to fetch: the file itself, or the
//! files directly inside the folder (an SAE folder is flat: cfg.json + weights, params.npz,
//! ae.pt + config.json). A folder that only holds subfolders is refused with their names,
//! so a too-short path never downloads a whole release.

//!
//! Downloading is the cargo feature `hub-download` (on in the `sae` tools, the C ABI and the
//! Python package): hf-hub's blocking client brings a terminal progress-bar crate that a
//! library should not impose. Without it, a name missing from the cache is an error saying so.

use std::collections::BTreeSet;

#[cfg(feature = "hub-download")]
use hf_hub::api::sync::{ApiBuilder, ApiError};
#[cfg(feature = "hub-download")]
use hf_hub::{Cache, Repo, RepoType};

use super::HubOptions;
use crate::error::{Error, Result};

/// What a download brought into the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The commit the revision pointed at.
    pub commit: String,
    /// Paths (in the repository) of the files fetched.
    pub files: Vec<String>,
}

/// Fetches `path` (a file or a flat folder) of `repo` at `revision` into `opts.cache_dir`.
#[cfg(feature = "hub-download")]
pub fn fetch(opts: &HubOptions, repo: &str, revision: &str, path: &str) -> Result<Fetched> {
    let fail = |what: &str, e: ApiError| hub_error(opts, repo, revision, what, e);
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .build()
        .map_err(|e| fail("the client", e))?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = r.info().map_err(|e| fail("the file listing", e))?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let files = select(&names, path).map_err(|msg| {
        Error::missing(
            format!("{}/{repo}", opts.endpoint),
            format!(
                "`{path}` at revision {revision} (commit {}): {msg}",
                info.sha
            ),
        )
    })?;
    for f in &files {
        r.download(f).map_err(|e| fail(&format!("`{f}`"), e))?;
    }
    Ok(Fetched {
        commit: info.sha,
        files,
    })
}

/// Without the `hub-download` feature: the name is not in the cache and cannot be fetched.
#[cfg(not(feature = "hub-download"))]
pub fn fetch(opts: &HubOptions, repo: &str, revision: &str, path: &str) -> Result<Fetched> {
    Err(Error::missing(
        opts.cache_dir
            .join(format!("models--{}", repo.replace('/', "--"))),
        format!(
            "`{path}` of {repo} at revision {revision} in the Hugging Face cache; this build \
             cannot download it (the library was built without the `hub-download` feature)"
        ),
    ))
}

/// The files to fetch for `path` among the repository's `names`: the file itself, else the
/// files directly inside the folder; the error says what the listing has instead.
pub fn select(names: &[&str], path: &str) -> std::result::Result<Vec<String>, String> {
    if names.contains(&path) {
        return Ok(vec![path.to_string()]);
    }
    let prefix = format!("{path}/");
    let mut files = Vec::new();
    let mut subfolders = BTreeSet::new();
    for rest in names.iter().filter_map(|n| n.strip_prefix(&prefix)) {
        match rest.split_once('/') {
            None => files.push(format!("{prefix}{rest}")),
            Some((sub, _)) => {
                subfolders.insert(sub);
            }
        }
    }
    if !files.is_empty() {
        files.sort();
        return Ok(files);
    }
    if !subfolders.is_empty() {
        let list: Vec<&str> = subfolders.into_iter().take(12).collect();
        return Err(format!(
            "a folder of subfolders, not one SAE; choose one of: {}",
            list.join(", ")
        ));
    }
    Err("the repository has no such file or folder".to_string())
}

/// A download failure as an I/O error about the repository's address, with a hint for
/// the usual causes (token, name, network).
#[cfg(feature = "hub-download")]
fn hub_error(opts: &HubOptions, repo: &str, revision: &str, what: &str, e: ApiError) -> Error {
    let hint = match &e {
        ApiError::RequestError(re) => match re.as_ref() {
            ureq::Error::Status(401 | 403, _) if opts.token.is_none() => {
                "; a gated or private repository needs a token: set HF_TOKEN or run \
                 `huggingface-cli login` (HF_HOME/token)"
            }
            ureq::Error::Status(401 | 403, _) => {
                "; the token in use (HF_TOKEN or the token file) has no access: accept the \
                 repository's terms on the Hub or use another token"
            }
            ureq::Error::Status(404, _) => "; no such repository, revision or file",
            ureq::Error::Transport(_) => {
                "; the Hub cannot be reached: --offline (or HF_HUB_OFFLINE=1) uses only the \
                 cache"
            }
            _ => "",
        },
        _ => "",
    };
    Error::io(
        format!("{}/{repo}", opts.endpoint),
        std::io::Error::other(format!(
            "downloading {what} at revision {revision} into {}: {e}{hint}",
            opts.cache_dir.display()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::select;

    #[test]
    fn selects_a_file_or_a_flat_folder() {
        let names = [
            "README.md",
            "layer_20/width_16k/average_l0_71/params.npz",
            "layer_20/width_16k/average_l0_710/params.npz",
            "blocks.0/cfg.json",
            "blocks.0/sae_weights.safetensors",
            "blocks.0/extra/notes.txt",
        ];
        assert_eq!(
            select(&names, "layer_20/width_16k/average_l0_71").unwrap(),
            vec!["layer_20/width_16k/average_l0_71/params.npz"]
        );
        assert_eq!(
            select(&names, "blocks.0").unwrap(),
            vec!["blocks.0/cfg.json", "blocks.0/sae_weights.safetensors"]
        );
        assert_eq!(select(&names, "README.md").unwrap(), vec!["README.md"]);
        let e = select(&names, "layer_20/width_16k").unwrap_err();
        assert!(
            e.contains("average_l0_71, average_l0_710"),
            "subfolders listed: {e}"
        );
        assert!(select(&names, "nope").unwrap_err().contains("no such"));
    }
}
