//! The cheap half of [`super::measure`]: what is known about an input without encoding
//! it, so `diff`, `detect` and `monitor` refuse inputs that cannot be compared before
//! the long pass. A statistics file is read whole (it is small) and checked against
//! the SAE; a dump is opened (headers only), its width checked against the SAE, its
//! counted tokens taken from its mask and its token ids hashed as encoding would (a few
//! bytes per row against the row's activations). The result has empty statistics with
//! those counts, which is all [`super::check_pairing`] looks at besides the fingerprint.

use std::path::Path;

use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::ops::Engine;
use crate::stats::LatentStats;

use super::{display_name, is_stats_file, Fnv, Measured, Pairing, StatsOptions};

/// Rows of side columns (mask, token ids) read at a time.
const CHUNK: usize = 1 << 20;

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
    let mut hash = Some(Fnv::new());
    for shard in dump.shards() {
        if opts.use_mask && shard.n_rows() > 0 && shard.mask(0, 1)?.is_none() {
            return Err(Error::missing(
                shard.path(),
                "tensor `mask` (--mask scopes to masked tokens)",
            ));
        }
        stats.n_tokens += crate::scaleout::counted_tokens(shard.as_ref(), opts.use_mask)?;
        if let Some(h) = hash.as_mut() {
            if !hash_token_ids(shard.as_ref(), h)? {
                hash = None;
            }
        }
    }
    Ok(Measured {
        name: display_name(path),
        path: path.to_path_buf(),
        stats,
        pairing: Pairing {
            n_rows: Some(dump.n_rows()),
            token_hash: hash.map(|h| h.finish()),
        },
    })
}

/// Feeds `shard`'s token ids to `h` in row order, as [`super::stats_of_dump`] does;
/// false when the shard has none (the dump then has no token hash).
fn hash_token_ids(shard: &dyn crate::dump::Shard, h: &mut Fnv) -> Result<bool> {
    let n = shard.n_rows();
    let mut start = 0;
    while start < n {
        let count = CHUNK.min(n - start);
        match shard.token_ids(start, count)? {
            Some(ids) => ids.iter().for_each(|t| h.write(&t.to_le_bytes())),
            None => return Ok(false),
        }
        start += count;
    }
    Ok(true)
}
