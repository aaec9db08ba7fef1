//! The cheap half of [`super::measure`]: what is known about an input without encoding
//! it, so `diff`, `detect` and `monitor` refuse inputs that cannot be compared before
//! the long pass. A statistics file is read whole (it is small) and checked against
//! the SAE; a dump is opened (headers only), its width checked against the SAE, its
//! counted tokens taken from its mask and its token ids hashed as encoding would (a few
//! bytes per row against the row's activations). The result has empty statistics with
//! those counts, which is all [`super::pair`] looks at besides the fingerprint.

use std::path::Path;

use crate::backend::Engine;
use crate::dump::Dump;
use crate::error::{Error, Result};
use crate::stats::LatentStats;

use super::{display_name, is_stats_file, Measured, StatsOptions};

/// Rows of side columns (mask, token ids, doc ids) read at a time.
const CHUNK: usize = 1 << 20;

/// What is known about `path` before encoding (see the module doc). Errors are the
/// ones [`super::measure`] would give later: another SAE's statistics, a dump of
/// another width, a dump without a mask under the token rule's mask.
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
    // Only the counts and the token digest are known without encoding.
    stats.norms = None;
    stats.docs = None;
    let use_mask = opts.rule.use_mask;
    for shard in dump.shards() {
        let n = shard.n_rows();
        let mut start = 0;
        while start < n {
            let count = CHUNK.min(n - start);
            let mask = if use_mask {
                shard.mask(start, count)?
            } else {
                None
            };
            let ids = shard.token_ids(start, count)?;
            let docs = shard.doc_ids(start, count)?;
            for r in 0..count {
                if mask.as_ref().is_some_and(|m| m[r] == 0) {
                    continue;
                }
                stats.n_tokens += 1;
                if let (Some(t), Some(ids)) = (stats.tokens.as_mut(), &ids) {
                    t.add(ids[r], docs.as_ref().map(|d| d[r]));
                }
            }
            start += count;
        }
    }
    if stats.n_tokens == 0 && dump.n_rows() > 0 {
        return Err(Error::invalid(format!(
            "{}: no tokens counted (a mask that selects nothing; --no-mask counts every token)",
            path.display()
        )));
    }
    Ok(Measured {
        name: display_name(path),
        path: path.to_path_buf(),
        stats,
    })
}
