//! How an SAE's latents are cut into contiguous shards, and each shard as an SAE of its
//! own that any backend can run.

use std::ops::Range;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::sae::{Activation, LatentScales, Normalization, Sae, SaeMeta};

/// Contiguous latent ranges `0..b1, b1..b2, ..., b(S-1)..L`, each non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatentSplit {
    /// Shard boundaries: `bounds[0] = 0`, strictly increasing, last = n_latents.
    bounds: Vec<usize>,
}

impl LatentSplit {
    /// `shards` ranges whose sizes differ by at most one (the first `L % shards` are one
    /// latent larger).
    pub fn even(n_latents: usize, shards: usize) -> Result<LatentSplit> {
        if shards == 0 || shards > n_latents {
            return Err(Error::invalid(format!(
                "cannot split {n_latents} latents into {shards} shards: need 1 to {n_latents} shards"
            )));
        }
        let (base, extra) = (n_latents / shards, n_latents % shards);
        LatentSplit::from_sizes(
            &(0..shards)
                .map(|i| base + usize::from(i < extra))
                .collect::<Vec<_>>(),
        )
    }

    /// Ranges of the given sizes, in order (every size at least 1).
    pub fn from_sizes(sizes: &[usize]) -> Result<LatentSplit> {
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(Error::invalid(format!(
                "latent shard sizes {sizes:?}: need at least one shard, each of at least one latent"
            )));
        }
        let mut bounds = vec![0];
        for s in sizes {
            let end = bounds[bounds.len() - 1] + s;
            bounds.push(end);
        }
        Ok(LatentSplit { bounds })
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Whether there are no shards (never: constructors refuse that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Latents covered (the SAE's n_latents).
    pub fn n_latents(&self) -> usize {
        self.bounds[self.bounds.len() - 1]
    }

    /// The shards' latent ranges, in order.
    pub fn ranges(&self) -> Vec<Range<usize>> {
        self.bounds.windows(2).map(|w| w[0]..w[1]).collect()
    }
}

/// Parses a `--latent-shards` value: a count N (N shards on `default`, e.g. several on one
/// GPU), or a comma-separated list of backends as `--backend` takes them (`cuda:0,cuda:1`,
/// `cpu,cpu`), one shard per entry; an entry may repeat (two shards on one device).
pub fn parse_shard_backends(spec: &str, default: BackendKind) -> Result<Vec<BackendKind>> {
    let spec = spec.trim();
    if let Ok(n) = spec.parse::<usize>() {
        if n == 0 {
            return Err(Error::invalid("--latent-shards 0: need at least one shard"));
        }
        return Ok(vec![default; n]);
    }
    spec.split(',')
        .map(|item| {
            let item = item.trim();
            BackendKind::parse(item, 0).map_err(|_| {
                Error::invalid(format!(
                    "--latent-shards `{spec}`: `{item}` is not a backend; expected a shard count \
                     or a comma-separated list of cpu, cuda, cuda:N, auto"
                ))
            })
        })
        .collect()
}

/// Latents `range` of `sae` as an SAE of their own: the encoder and decoder rows, biases,
/// thresholds and per-latent scales of that range, k capped at the shard's width. The
/// shard sees prepared input (its SAE neither normalizes nor subtracts b_dec) and decodes
/// without b_dec (zero), so the sharded engine normalizes once and adds b_dec once.
pub fn shard_sae(sae: &Sae, range: Range<usize>) -> Result<Sae> {
    let slice = |v: &Vec<f32>| v[range.clone()].to_vec();
    let activation = match sae.activation {
        Activation::TopK { k } => Activation::TopK {
            k: k.min(range.len()),
        },
        a => a,
    };
    let mut conventions = sae.meta.conventions.clone();
    conventions.push(format!(
        "latent shard {}..{} of {} latents (prepared input, no b_dec)",
        range.start,
        range.end,
        sae.n_latents()
    ));
    let shard = Sae {
        meta: SaeMeta {
            conventions,
            // The whole SAE's warnings are reported once, by whoever loaded it.
            warnings: Vec::new(),
            ..sae.meta.clone()
        },
        w_enc: sae.w_enc.row_range(range.clone())?,
        w_dec: sae.w_dec.row_range(range.clone())?,
        b_enc: slice(&sae.b_enc),
        b_dec: vec![0.0; sae.d_in()],
        threshold: sae.threshold.as_ref().map(slice),
        activation,
        subtract_b_dec: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: sae.rescale_acts_by_decoder_norm,
        scales: LatentScales {
            code_scale: sae.scales.code_scale.as_ref().map(slice),
            decode_scale: sae.scales.decode_scale.as_ref().map(slice),
        },
    };
    shard.validate()?;
    Ok(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_splits_cover_every_latent_once() {
        let s = LatentSplit::even(10, 3).unwrap();
        assert_eq!(s.ranges(), vec![0..4, 4..7, 7..10]);
        assert_eq!((s.len(), s.n_latents()), (3, 10));
        assert_eq!(LatentSplit::even(5, 5).unwrap().ranges().len(), 5);
        assert_eq!(LatentSplit::even(7, 1).unwrap().ranges(), vec![0..7]);
        assert!(LatentSplit::even(4, 5).is_err());
        assert!(LatentSplit::even(4, 0).is_err());
        assert_eq!(
            LatentSplit::from_sizes(&[1, 5, 2]).unwrap().ranges(),
            vec![0..1, 1..6, 6..8]
        );
        assert!(LatentSplit::from_sizes(&[3, 0]).is_err());
        assert!(LatentSplit::from_sizes(&[]).is_err());
    }

    #[test]
    fn shard_specs_are_counts_or_backend_lists() {
        let gpu = BackendKind::Cuda { device: 2 };
        assert_eq!(parse_shard_backends("3", gpu).unwrap(), vec![gpu; 3]);
        assert_eq!(
            parse_shard_backends("cuda:0, cuda:1,cuda:0", gpu).unwrap(),
            vec![
                BackendKind::Cuda { device: 0 },
                BackendKind::Cuda { device: 1 },
                BackendKind::Cuda { device: 0 }
            ]
        );
        assert_eq!(
            parse_shard_backends("cpu,cpu", gpu).unwrap(),
            vec![BackendKind::Cpu; 2]
        );
        assert!(parse_shard_backends("0", gpu).is_err());
        let e = parse_shard_backends("cuda:0,tpu", gpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tpu` is not a backend"), "{e}");
        assert!(parse_shard_backends("cpu,", gpu).is_err());
    }
}
