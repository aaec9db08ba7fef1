//! SAEs by name: `hf:ORG/NAME/PATH[@REVISION]` and `saelens:RELEASE/SAE_ID`.
//!
//! A name is looked up in the local Hugging Face cache first (the layout `huggingface_hub`
//! and `hf-hub` share: `models--ORG--NAME/{refs/REV, snapshots/COMMIT/...}`), with no
//! network. Only when it is not there, and the network is allowed (no `--offline`, no
//! `HF_HUB_OFFLINE=1`), are the files of that one SAE folder downloaded into the same cache.
//!
//! SAELens release names map to a repository and a path through SAELens's own release
//! table (see [`releases`]); a release whose conversion we have no loader for is refused
//! by name. Everything that is not a name is a local path and goes straight to
//! [`crate::formats::load`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::env;
use crate::error::{Error, Result};
use crate::sae::{Format, Normalization, Sae};

pub mod cache;
pub mod download;
pub mod releases;

/// Prefix of a Hugging Face name (`hf:ORG/NAME/PATH[@REVISION]`).
pub const HF_PREFIX: &str = "hf:";
/// Prefix of a SAELens name (`saelens:RELEASE/SAE_ID`).
pub const SAELENS_PREFIX: &str = "saelens:";

/// A parsed SAE name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaeName {
    /// A path inside a Hugging Face model repository, at a revision (branch, tag or commit).
    Hf {
        /// `ORG/NAME`.
        repo: String,
        /// File or folder inside the repository.
        path: String,
        /// Branch, tag or full commit hash (default `main`).
        revision: String,
    },
    /// An SAE of a SAELens release.
    SaeLens {
        /// Release name (`gemma-scope-2b-pt-res-canonical`).
        release: String,
        /// SAE id inside the release (`layer_20/width_16k/canonical`).
        sae_id: String,
    },
}

impl SaeName {
    /// Parses `spec`: `Ok(None)` when it is not a name (a local path), an error when it
    /// starts like one but is malformed.
    pub fn parse(spec: &str) -> Result<Option<SaeName>> {
        if let Some(rest) = spec.strip_prefix(HF_PREFIX) {
            return parse_hf(spec, rest).map(Some);
        }
        if let Some(rest) = spec.strip_prefix(SAELENS_PREFIX) {
            let (release, sae_id) = rest
                .split_once('/')
                .filter(|(r, id)| !r.is_empty() && !id.is_empty())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "`{spec}`: expected saelens:RELEASE/SAE_ID, e.g. \
                         saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
                    ))
                })?;
            return Ok(Some(SaeName::SaeLens {
                release: release.to_string(),
                sae_id: sae_id.to_string(),
            }));
        }
        Ok(None)
    }
}

fn parse_hf(spec: &str, rest: &str) -> Result<SaeName> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "`{spec}`: {why}; expected hf:ORG/NAME/PATH[@REVISION], e.g. \
             hf:google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71@main"
        ))
    };
    // The revision follows the last '@' (SAE paths in the Hub do not use '@').
    let (body, revision) = match rest.rsplit_once('@') {
        Some((b, r)) if !r.is_empty() => (b, r.to_string()),
        Some(_) => return Err(bad("empty revision after `@`")),
        None => (rest, "main".to_string()),
    };
    let mut parts = body.splitn(3, '/');
    let (org, name, path) = (parts.next(), parts.next(), parts.next());
    let (Some(org), Some(name)) = (
        org.filter(|s| !s.is_empty()),
        name.filter(|s| !s.is_empty()),
    ) else {
        return Err(bad("no ORG/NAME"));
    };
    let path = path.unwrap_or("").trim_matches('/');
    if path.is_empty() {
        return Err(bad(
            "no path inside the repository (the SAE's file or folder)",
        ));
    }
    // The path is joined under a snapshot folder: it must stay inside it.
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` or `..` component in the path"));
    }
    Ok(SaeName::Hf {
        repo: format!("{org}/{name}"),
        path: path.to_string(),
        revision,
    })
}

/// Where the cache is and whether the network may be used; [`HubOptions::from_env`] reads
/// the variables `huggingface_hub` reads.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache folder (holding `models--ORG--NAME`).
    pub cache_dir: PathBuf,
    /// Never touch the network (resolve from the cache or fail).
    pub offline: bool,
    /// Hub address, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
    /// Show download progress bars on stderr.
    pub progress: bool,
}

/// The Hub's address when HF_ENDPOINT is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubOptions {
    /// From the environment: cache `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` is 1/true/yes/on; endpoint `HF_ENDPOINT`; token `HF_TOKEN`, else
    /// the file `HF_TOKEN_PATH`, else `HF_HOME/token` (what `huggingface-cli login` writes).
    pub fn from_env() -> HubOptions {
        let home = env::hf_home_or_default();
        let cache_dir = env::hf_hub_cache().unwrap_or_else(|| home.join("hub"));
        let offline = env::hf_hub_offline();
        let token = env::hf_token().or_else(|| {
            let file = env::hf_token_path().unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubOptions {
            cache_dir,
            offline,
            endpoint: env::hf_endpoint()
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token,
            progress: false,
        }
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
/// The SAELens release an SAE name went through.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseInfo {
    /// Release name.
    pub release: String,
    /// SAE id inside it.
    pub sae_id: String,
    /// SAELens's conversion function (`sae_lens` for its native layout).
    pub conversion: String,
    /// The SAELens version whose table mapped it.
    pub table_version: String,
}

/// Where a name resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    /// The name as given.
    pub name: String,
    /// `ORG/NAME`.
    pub repo: String,
    /// The revision asked for (branch, tag or commit).
    pub revision: String,
    /// The commit the revision pointed at.
    pub commit: String,
    /// File or folder inside the repository.
    pub path_in_repo: String,
    /// The local file or folder in the cache snapshot.
    pub local: PathBuf,
    /// Files fetched from the Hub by this resolution (empty: all from the cache).
    pub downloaded: Vec<String>,
    /// The SAELens release, for `saelens:` names.
    pub release: Option<ReleaseInfo>,
    /// The format the release's conversion implies (None: detect from the files).
    #[serde(skip)]
    pub format: Option<Format>,
    /// SAELens's `normalize_activations` override for this release, applied on load.
    pub normalize_activations: Option<String>,
}

/// Resolves a parsed name to local files: cache first, then (when allowed) a download.
pub fn resolve(spec: &str, name: &SaeName, opts: &HubOptions) -> Result<Resolved> {
    let (repo, path, revision, release, format, norm) = match name {
        SaeName::Hf {
            repo,
            path,
            revision,
        } => (
            repo.clone(),
            path.clone(),
            revision.clone(),
            None,
            None,
            None,
        ),
        SaeName::SaeLens { release, sae_id } => {
            let table = releases::table()?;
            let e = table.lookup(release, sae_id)?;
            let format = releases::converter_format(&e.conversion).map_err(|missing| {
                Error::invalid(format!(
                    "`{spec}`: SAELens release `{release}` needs the `{missing}` converter, which \
                     sae-engine does not have (it reads releases converted by: {})",
                    releases::SUPPORTED_CONVERSIONS.join(", ")
                ))
            })?;
            let info = ReleaseInfo {
                release: release.clone(),
                sae_id: sae_id.clone(),
                conversion: e.conversion.clone(),
                table_version: table.sae_lens_version.clone(),
            };
            (
                e.repo,
                e.path,
                "main".to_string(),
                Some(info),
                format,
                e.normalize_activations,
            )
        }
    };
    let mut r = Resolved {
        name: spec.to_string(),
        repo,
        revision,
        commit: String::new(),
        path_in_repo: path,
        local: PathBuf::new(),
        downloaded: Vec::new(),
        release,
        format,
        normalize_activations: norm,
    };
    let repo_dir = cache::repo_dir(&opts.cache_dir, &r.repo);
    let miss = match cache::lookup(&repo_dir, &r.revision, &r.path_in_repo)? {
        cache::Lookup::Found { commit, local } => {
            r.commit = commit;
            r.local = local;
            return Ok(r);
        }
        miss => miss,
    };
    if opts.offline {
        return Err(Error::missing(
            &opts.cache_dir,
            format!(
                "`{}` of {} at revision {}, needed for `{spec}`: {}; offline (--offline or \
                 HF_HUB_OFFLINE), so nothing is downloaded",
                r.path_in_repo,
                r.repo,
                r.revision,
                miss.describe()
            ),
        ));
    }
    let got = download::fetch(opts, &r.repo, &r.revision, &r.path_in_repo)?;
    r.commit = got.commit;
    r.downloaded = got.files;
    r.local = cache::snapshot_path(&repo_dir, &r.commit, &r.path_in_repo);
    if !r.local.exists() {
        return Err(Error::missing(
            &r.local,
            format!("the downloaded `{}` in the cache snapshot", r.path_in_repo),
        ));
    }
    Ok(r)
}

/// Loads an SAE from a local path or a name (`hf:...`, `saelens:...`). `format` forces the
/// format; otherwise a SAELens release's conversion decides it, else the files do.
pub fn load(
    spec: &Path,
    format: Option<Format>,
    opts: &HubOptions,
) -> Result<(Sae, Option<Resolved>)> {
    load_with(spec, format, &crate::formats::LoadOptions::default(), opts)
}

/// [`load`] reading the SAE with the loader options `load` (normalization constant,
/// dictionary_learning convention).
pub fn load_with(
    spec: &Path,
    format: Option<Format>,
    load: &crate::formats::LoadOptions,
    opts: &HubOptions,
) -> Result<(Sae, Option<Resolved>)> {
    let name = match spec.to_str() {
        Some(s) => SaeName::parse(s)?.map(|n| (s, n)),
        None => None,
    };
    let Some((s, name)) = name else {
        return Ok((crate::formats::load_with(spec, format, load)?, None));
    };
    let r = resolve(s, &name, opts)?;
    let mut sae = crate::formats::load_with(&r.local, format.or(r.format), load)?;
    if let Some(norm) = &r.normalize_activations {
        // SAELens applies the release's override on top of the SAE's own config.
        sae.normalization = match norm.as_str() {
            "none" => Normalization::None,
            "constant_norm_rescale" => Normalization::ConstantNormRescale,
            other => {
                return Err(Error::invalid(format!(
                    "`{s}`: the release overrides normalize_activations to `{other}`, which \
                     sae-engine cannot apply (it knows none and constant_norm_rescale)"
                )))
            }
        };
    }
    Ok((sae, Some(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_names_with_and_without_revision() {
        let n = SaeName::parse("hf:google/gemma-scope-2b-pt-res/layer_20/width_16k/x@v1.0")
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            SaeName::Hf {
                repo: "google/gemma-scope-2b-pt-res".into(),
                path: "layer_20/width_16k/x".into(),
                revision: "v1.0".into()
            }
        );
        let n = SaeName::parse("hf:a/b/c.pt").unwrap().unwrap();
        assert!(matches!(n, SaeName::Hf { revision, .. } if revision == "main"));
        assert_eq!(SaeName::parse("some/local/dir").unwrap(), None);
        assert_eq!(SaeName::parse("./hf:a/b/c").unwrap(), None);
    }

    #[test]
    fn parses_saelens_names_with_slashes_in_the_id() {
        let n =
            SaeName::parse("saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")
                .unwrap()
                .unwrap();
        assert_eq!(
            n,
            SaeName::SaeLens {
                release: "gemma-scope-2b-pt-res-canonical".into(),
                sae_id: "layer_20/width_16k/canonical".into()
            }
        );
    }

    #[test]
    fn malformed_names_say_what_was_expected() {
        for bad in [
            "hf:",
            "hf:org",
            "hf:org/name",
            "hf:org/name/",
            "hf:org/name/a/../../x",
            "hf:org/name/a@",
            "saelens:release-only",
            "saelens:/id",
        ] {
            let e = SaeName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("expected"), "{bad}: {e}");
        }
    }
}
