//! The cheap half of [`super::measure`]: what is known about an input without encoding
//! it, so `diff`, `detect` and `monitor` refuse inputs that cannot be compared before
//! the long pass. A statistics file is read whole (it is small) and checked against
//! the SAE; a dump is opened (headers only), its width checked against the SAE, and its
//! counted tokens taken from its mask. The result has empty statistics with those
//! counts, which is all [`super::check_pairing`] looks at besides the fingerprint.

use std::path::Path;

use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::ops::Engine;
use crate::stats::LatentStats;

use super::{display_name, is_stats_file, Measured, Pairing, StatsOptions};

/// What is known about `path` before encoding (see the module doc). Errors are the
/// ones [`super::measure`] would give later: another SAE's statistics, a dump of
/// another width, a dump without a mask under `opts.use_mask`.
pub fn probe(
    engine: &dyn Engine,
    fingerprint: &str,
    path: &Path,
    opts: &StatsOptions,
) -> Result<Measured> {
    if is_stats_file(path) {
        // Reading a statistics file is the whole of measuring it.
        return super::measure(engine, fingerprint, path, opts);
    }
    let dump = Dump::open(path)?;
    dump.check_width(engine.sae().d_in())?;
    let mut stats = LatentStats::new(fingerprint, engine.sae().n_latents());
    for shard in dump.shards() {
        if opts.use_mask && shard.n_rows() > 0 && shard.mask(0, 1)?.is_none() {
            return Err(Error::missing(
                shard.path(),
                "tensor `mask` (--mask scopes to masked tokens)",
            ));
        }
        stats.n_tokens += crate::scaleout::counted_tokens(shard.as_ref(), opts.use_mask)?;
    }
    Ok(Measured {
        name: display_name(path),
        path: path.to_path_buf(),
        stats,
        pairing: Pairing {
            n_rows: Some(dump.n_rows()),
            // Token ids are hashed while encoding; their check waits for it.
            token_hash: None,
        },
    })
}
