//! Whether a comparison is paired (base and fine-tune measured on the same counted
//! tokens: same count and same token-id digest) or unpaired (two token sets, e.g. two
//! prompt sets, or each model's own generations). The per-latent arithmetic uses each
//! side's own mean and variance either way; pairing gates `--pairing paired` and labels
//! every report. Dumps and statistics files are judged by the same rule, on counted
//! tokens only (masked-out prompt tokens do not matter).

use crate::error::{Error, Result};

use super::Measured;

/// What the user asked for (`--pairing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingRequest {
    /// Paired when the counted tokens match, else unpaired.
    #[default]
    Auto,
    /// Refuse inputs whose counted tokens differ.
    Paired,
    /// Compare as two independent token sets even if they match.
    Unpaired,
}

impl PairingRequest {
    /// Command-line names.
    pub const NAMES: [&'static str; 3] = ["auto", "paired", "unpaired"];

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<PairingRequest> {
        match s {
            "auto" => Ok(PairingRequest::Auto),
            "paired" => Ok(PairingRequest::Paired),
            "unpaired" => Ok(PairingRequest::Unpaired),
            _ => Err(Error::invalid(format!(
                "unknown pairing `{s}`: expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// The mode that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingMode {
    /// Same counted tokens on both sides.
    Paired,
    /// Different (or deliberately independent) token sets.
    Unpaired,
}

impl std::fmt::Display for PairingMode {
    /// "paired" / "unpaired".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PairingMode::Paired => "paired",
            PairingMode::Unpaired => "unpaired",
        })
    }
}

/// The mode that ran and why (the `"pairing"` object of every report).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pairing {
    /// paired or unpaired.
    pub mode: PairingMode,
    /// Why, in words a reader can check (counts, hashes, the flag).
    pub reason: String,
}

/// A paired comparison, for unit tests that need a `Pairing` but not its reason.
#[cfg(test)]
pub(crate) fn paired_for_tests() -> Pairing {
    Pairing {
        mode: PairingMode::Paired,
        reason: "test".into(),
    }
}

/// One input against the base: (matches, why).
fn compare(base: &Measured, o: &Measured) -> (bool, String) {
    let (a, b) = (&base.stats, &o.stats);
    if a.n_tokens != b.n_tokens {
        return (
            false,
            format!(
                "{} counts {} tokens, {} counts {}",
                base.name, a.n_tokens, o.name, b.n_tokens
            ),
        );
    }
    let n = a.n_tokens;
    match (a.token_hash(), b.token_hash()) {
        (Some((ha, da)), Some((hb, db))) if da == db => {
            if ha == hb {
                (
                    true,
                    format!(
                        "{} and {}: same {n} counted tokens and token-id hash{}",
                        base.name,
                        o.name,
                        if da { " (with doc ids)" } else { "" }
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "{} and {}: {n} counted tokens each, but their token ids differ",
                        base.name, o.name
                    ),
                )
            }
        }
        (Some(_), Some(_)) => (
            true,
            format!(
                "{} and {}: same {n} counted tokens; paired by count only (one has doc ids, \
                 the other not, so their token-id hashes cannot be compared)",
                base.name, o.name
            ),
        ),
        (ha, _) => {
            let without = if ha.is_none() { base } else { o };
            (
                true,
                format!(
                    "{} and {}: same {n} counted tokens; paired by count only ({} has no token-id \
                     hash: a dump without token_ids, or a statistics file written before hashes)",
                    base.name, o.name, without.name
                ),
            )
        }
    }
}

/// Checks that `others` can be compared with `base` (same SAE, tokens counted on both
/// sides) and decides the pairing under `want`. `--pairing paired` refuses inputs whose
/// counted tokens differ, naming them.
pub fn pair(base: &Measured, others: &[Measured], want: PairingRequest) -> Result<Pairing> {
    for m in std::iter::once(base).chain(others) {
        if m.stats.fingerprint != base.stats.fingerprint {
            return Err(Error::Incompatible(format!(
                "{} and {}: statistics come from different SAEs (fingerprints {} and {})",
                base.path.display(),
                m.path.display(),
                base.stats.fingerprint,
                m.stats.fingerprint
            )));
        }
        if m.stats.n_latents() != base.stats.n_latents() {
            return Err(Error::Incompatible(format!(
                "{} and {}: {} and {} latents",
                base.path.display(),
                m.path.display(),
                base.stats.n_latents(),
                m.stats.n_latents()
            )));
        }
        if m.stats.n_tokens == 0 {
            return Err(Error::invalid(format!(
                "{}: no tokens counted (empty dump, or a mask that selects nothing)",
                m.path.display()
            )));
        }
    }
    let verdicts: Vec<(bool, String)> = others.iter().map(|o| compare(base, o)).collect();
    let all_match = verdicts.iter().all(|v| v.0);
    let why = |matching: bool| {
        verdicts
            .iter()
            .filter(|v| v.0 == matching)
            .map(|v| v.1.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok(match want {
        PairingRequest::Unpaired => Pairing {
            mode: PairingMode::Unpaired,
            reason: format!(
                "--pairing unpaired (auto would say: {})",
                if all_match { why(true) } else { why(false) }
            ),
        },
        _ if all_match => Pairing {
            mode: PairingMode::Paired,
            reason: why(true),
        },
        PairingRequest::Paired => {
            // The reasons use short names; the error names the files in full.
            let files: Vec<String> = std::iter::once(base)
                .chain(
                    others
                        .iter()
                        .zip(&verdicts)
                        .filter(|(_, v)| !v.0)
                        .map(|(o, _)| o),
                )
                .map(|m| m.path.display().to_string())
                .collect();
            return Err(Error::Incompatible(format!(
                "--pairing paired, but the counted tokens differ: {} ({}); drop --pairing \
                 paired to compare them as independent token sets",
                why(false),
                files.join(", ")
            )));
        }
        PairingRequest::Auto => Pairing {
            mode: PairingMode::Unpaired,
            reason: format!(
                "the counted tokens differ ({}), so the sides are compared as independent samples",
                why(false)
            ),
        },
    })
}
