//! Top-activating examples of a latent (docs/design.md, "The job", step 4): the K tokens
//! where it fires hardest with +-T tokens of context from the same document, and a
//! histogram of its positive activations.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::backend::Engine;
use crate::dump::Dump;
use crate::error::{Error, Result};

use super::tokenizer::Vocab;
use super::StatsOptions;

/// Options.
#[derive(Debug, Clone, Copy)]
pub struct TopExamplesOptions {
    /// Examples to keep.
    pub top: usize,
    /// Tokens of context on each side.
    pub context: usize,
    /// Histogram bins over (0, max].
    pub bins: usize,
    /// Token rule and batching of the pass over the dump.
    pub stats: StatsOptions,
}

impl Default for TopExamplesOptions {
    fn default() -> Self {
        TopExamplesOptions {
            top: 20,
            context: 8,
            bins: 20,
            stats: StatsOptions::default(),
        }
    }
}

/// One example.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Example {
    /// 1 for the highest activation (ranks count from 1 in every output).
    pub rank: usize,
    /// Row in the dump.
    pub row: u64,
    /// Its document id, when the dump has doc ids.
    pub doc_id: Option<i64>,
    /// The latent's activation on it.
    pub activation: f32,
    /// The token's id.
    pub token_id: i64,
    /// Token ids before it in the same document, oldest first.
    pub before: Vec<i64>,
    /// Token ids after it in the same document.
    pub after: Vec<i64>,
    /// Decoded token and context (with a tokenizer).
    pub token: Option<String>,
    /// See `token`.
    pub text_before: Option<String>,
    /// See `token`.
    pub text_after: Option<String>,
}

/// Histogram of the positive activations.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// bins + 1 edges from 0 to the maximum.
    pub edges: Vec<f64>,
    /// Counted tokens per bin.
    pub counts: Vec<u64>,
    /// Counted tokens where the latent is inactive.
    pub zeros: u64,
}

/// The result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopExamplesReport {
    /// The dump read.
    pub dump: String,
    /// The latent.
    pub latent: usize,
    /// Tokens counted.
    pub n_tokens: u64,
    /// Counted tokens where the latent is active.
    pub n_active: u64,
    /// Largest activation.
    pub max: f32,
    /// Highest activations first.
    pub examples: Vec<Example>,
    /// The activations' distribution.
    pub histogram: Histogram,
    /// The token rule's outliers in the dump (left out unless --keep-outliers).
    pub outliers: crate::stats::rule::OutlierSummary,
}

/// Reads one per-row integer tensor (token ids, doc ids) of a shard.
type RowReader = fn(&dyn crate::dump::Shard, usize, usize) -> Result<Option<Vec<i64>>>;

/// Reads `count` values of a per-row tensor starting at global row `start`, across shards.
fn read_ids(dump: &Dump, start: u64, count: usize, which: RowReader) -> Result<Option<Vec<i64>>> {
    let mut out = Vec::with_capacity(count);
    let mut base = 0u64;
    let end = start + count as u64;
    for shard in dump.shards() {
        let n = shard.n_rows() as u64;
        let (a, b) = (start.max(base), end.min(base + n));
        if a < b {
            match which(shard.as_ref(), (a - base) as usize, (b - a) as usize)? {
                Some(v) => out.extend(v),
                None => return Ok(None),
            }
        }
        base += n;
    }
    Ok(Some(out))
}

/// Finds the top examples of `latent` in `dump`. The dump must carry `token_ids`.
pub fn top_examples(
    engine: &dyn Engine,
    dump: &Dump,
    latent: usize,
    vocab: Option<&Vocab>,
    opts: &TopExamplesOptions,
) -> Result<TopExamplesReport> {
    top_examples_with_progress(engine, dump, latent, vocab, opts, &|_| {})
}

/// [`top_examples`] reporting each batch's rows to `progress` as it is taken up.
pub fn top_examples_with_progress(
    engine: &dyn Engine,
    dump: &Dump,
    latent: usize,
    vocab: Option<&Vocab>,
    opts: &TopExamplesOptions,
    progress: &dyn Fn(u64),
) -> Result<TopExamplesReport> {
    let sae = engine.sae();
    super::check_latents(&[latent], sae.n_latents())?;
    dump.check_width(sae.d_in())?;
    for shard in dump.shards() {
        if shard.n_rows() > 0 && shard.token_ids(0, 1)?.is_none() {
            return Err(Error::missing(
                shard.path(),
                "tensor `token_ids` (top-examples shows tokens; dump with token ids, e.g. \
                 tools/python/dump_activations.py)",
            ));
        }
    }
    // Min-heap of (activation, Reverse(row)): ties keep the earlier row.
    let mut heap: BinaryHeap<Reverse<(OrdF32, Reverse<u64>)>> = BinaryHeap::new();
    let mut values: Vec<f32> = Vec::new();
    let (mut n_tokens, mut zeros) = (0u64, 0u64);
    let filter = opts.stats.filter(dump)?;
    for batch in dump.batches(opts.stats.batch_rows) {
        let batch = batch?;
        progress(batch.rows as u64);
        let mask = filter.keep(dump, &batch)?;
        let mask = mask.as_deref();
        let enc = engine.encode(&batch.acts, batch.rows, batch.start)?;
        for r in 0..batch.rows {
            if mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            n_tokens += 1;
            let v = enc
                .codes
                .active(r)
                .find(|(i, _)| *i == latent)
                .map(|(_, v)| v)
                .unwrap_or(0.0);
            if v <= 0.0 {
                zeros += 1;
                continue;
            }
            values.push(v);
            let item = Reverse((OrdF32(v), Reverse(batch.start + r as u64)));
            if heap.len() < opts.top {
                heap.push(item);
            } else if heap.peek().is_some_and(|top| item < *top) {
                heap.pop();
                heap.push(item);
            }
        }
    }
    let mut best: Vec<(f32, u64)> = heap
        .into_iter()
        .map(|Reverse((v, Reverse(r)))| (v.0, r))
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let n_rows = dump.n_rows();
    let mut examples = Vec::with_capacity(best.len());
    for (rank, (act, row)) in best.into_iter().enumerate() {
        let lo = row.saturating_sub(opts.context as u64);
        let hi = (row + opts.context as u64 + 1).min(n_rows);
        let count = (hi - lo) as usize;
        let ids = read_ids(dump, lo, count, |s, a, n| s.token_ids(a, n))?
            .ok_or_else(|| Error::missing(dump.path(), "tensor `token_ids`"))?;
        let docs = read_ids(dump, lo, count, |s, a, n| s.doc_ids(a, n))?;
        let at = (row - lo) as usize;
        // Context stays inside the example's document when doc ids are known.
        let same = |j: usize| docs.as_ref().is_none_or(|d| d[j] == d[at]);
        let before: Vec<i64> = (0..at)
            .rev()
            .take_while(|j| same(*j))
            .map(|j| ids[j])
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let after: Vec<i64> = (at + 1..count)
            .take_while(|j| same(*j))
            .map(|j| ids[j])
            .collect();
        let token_id = ids[at];
        examples.push(Example {
            rank: rank + 1,
            row,
            doc_id: docs.as_ref().map(|d| d[at]),
            activation: act,
            token_id,
            token: vocab.map(|v| v.decode(&[token_id])),
            text_before: vocab.map(|v| v.decode(&before)),
            text_after: vocab.map(|v| v.decode(&after)),
            before,
            after,
        });
    }
    let max = values.iter().cloned().fold(0f32, f32::max);
    let bins = opts.bins.max(1);
    let mut counts = vec![0u64; bins];
    for v in &values {
        let b = ((*v as f64 / max as f64) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    Ok(TopExamplesReport {
        dump: dump.path().display().to_string(),
        latent,
        n_tokens,
        n_active: values.len() as u64,
        max,
        examples,
        histogram: Histogram {
            edges: (0..=bins)
                .map(|i| max as f64 * i as f64 / bins as f64)
                .collect(),
            counts,
            zeros,
        },
        outliers: filter.summary(),
    })
}

/// f32 with a total order (activations are finite here).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Text safe inside a markdown table cell: pipes escaped, line breaks and backticks shown.
pub fn markdown_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('`', "'")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// An example's context as one line: `before[[token]]after`, decoded when a tokenizer
/// was given, token ids otherwise.
pub fn example_text(e: &Example) -> String {
    match (&e.text_before, &e.token, &e.text_after) {
        (Some(b), Some(t), Some(a)) => format!("{b}[[{t}]]{a}"),
        _ => format!("{:?} [[{}]] {:?}", e.before, e.token_id, e.after),
    }
}

/// The same latent's top examples in a base and a tuned dump, side by side: one row per
/// rank, each side's activation and context in its own columns.
pub fn compare_markdown(base: &TopExamplesReport, tuned: &TopExamplesReport) -> String {
    use std::fmt::Write as _;
    let mut s = format!("# Latent {}: top examples, base and tuned\n\n", base.latent);
    for (name, r) in [("base", base), ("tuned", tuned)] {
        let _ = writeln!(
            s,
            "- {name} `{}`: active on {} of {} counted tokens ({:.4}%), max {:.4}",
            r.dump,
            r.n_active,
            r.n_tokens,
            100.0 * r.n_active as f64 / r.n_tokens.max(1) as f64,
            r.max
        );
    }
    let _ = writeln!(
        s,
        "\n| rank | base act | base context | tuned act | tuned context |\n|---|---|---|---|---|"
    );
    let side = |e: Option<&Example>| match e {
        Some(e) => (
            format!("{:.4}", e.activation),
            format!("`{}`", markdown_cell(&example_text(e))),
        ),
        None => (String::new(), String::new()),
    };
    for i in 0..base.examples.len().max(tuned.examples.len()) {
        let (ba, bc) = side(base.examples.get(i));
        let (ta, tc) = side(tuned.examples.get(i));
        let _ = writeln!(s, "| {} | {ba} | {bc} | {ta} | {tc} |", i + 1);
    }
    s
}
