//! Per-latent statistics over host codes: accumulate, merge across shards, read out,
//! and the statistics files `sae stats` writes (so a Python shard job and the CLI's
//! `sae stats merge` interoperate).

use std::ffi::c_char;

use sae_engine::pipeline::{RowInfo, StatsStream};
use sae_engine::provenance::Provenance;
use sae_engine::{Codes, LatentStats};

use crate::guard::{
    checked_len, copy_out_str, in_slice, opt_in_slice, opt_out_slice, opt_str_arg, run, run_value,
    str_arg, write_out, Failure, FfiResult,
};
use crate::handle::{handle_arg, SaeHandle};
use crate::host::read_csr;
use crate::status::SaeStatus;

/// Statistics of one dump or shard under one SAE (n_tokens, per-latent sum, sum_sq,
/// n_active, max, and for rows fed with `sae_stats_accumulate_host` the token digest,
/// norm histogram and per-document sums `sae stats` records). Opaque to C. Not
/// synchronized: use one per thread, then merge.
pub struct SaeStats {
    inner: StatsStream,
}

/// A statistics argument; NULL is an error.
///
/// # Safety
/// `s` is NULL or live statistics from `sae_stats_new` / `sae_stats_read`.
unsafe fn stats_ref<'a>(s: *const SaeStats) -> FfiResult<&'a SaeStats> {
    // SAFETY: `s` is NULL or points to boxed statistics that outlive the call (the contract).
    unsafe { s.as_ref() }.ok_or_else(|| Failure::null("stats"))
}

/// A statistics argument to update; NULL is an error.
///
/// # Safety
/// `s` is NULL or live statistics that nothing else refers to during the call.
unsafe fn stats_mut<'a>(s: *mut SaeStats) -> FfiResult<&'a mut SaeStats> {
    // SAFETY: `s` is NULL or live and unaliased for the call (the contract).
    unsafe { s.as_mut() }.ok_or_else(|| Failure::null("stats"))
}

fn boxed(stats: LatentStats) -> *mut SaeStats {
    Box::into_raw(Box::new(SaeStats {
        inner: StatsStream::new(stats),
    }))
}

/// Empty statistics for the handle's SAE (its latent count and fingerprint).
/// Release with `sae_stats_free`. `*out_stats` is NULL on failure.
///
/// # Safety
/// `handle` is a live handle; `out_stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_new(
    handle: *const SaeHandle,
    out_stats: *mut *mut SaeStats,
) -> SaeStatus {
    run("sae_stats_new", || {
        // SAFETY: `out_stats` is NULL or writable (the contract).
        unsafe { write_out(out_stats, std::ptr::null_mut(), "out_stats") }?;
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        let s = LatentStats::new(h.sae.fingerprint(), h.sae.n_latents());
        // SAFETY: `out_stats` is NULL or writable (the contract).
        unsafe { write_out(out_stats, boxed(s), "out_stats") }
    })
}

/// Releases statistics. NULL is ignored.
///
/// # Safety
/// `stats` is NULL or live statistics not freed before.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_free(stats: *mut SaeStats) {
    if !stats.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: a non-NULL `stats` came from Box::into_raw in `boxed` and is freed
            // once (the contract).
            drop(unsafe { Box::from_raw(stats) });
        }));
    }
}

/// Checks the codes and the mask, then accumulates. Validation comes first so a
/// failed call leaves the statistics unchanged.
fn accumulate(s: &mut SaeStats, codes: &Codes, mask: Option<&[u8]>) -> FfiResult {
    codes.validate(s.inner.stats().n_latents())?;
    Ok(s.inner.stats_mut().accumulate(codes, mask)?)
}

/// Copies fixed-width codes `[rows, k]` from caller buffers.
///
/// # Safety
/// As `in_slice`.
unsafe fn read_topk(
    indices: *const i32,
    values: *const f32,
    rows: usize,
    k: usize,
) -> FfiResult<Codes> {
    let n = checked_len(rows, k, "codes")?;
    Ok(Codes::TopK {
        n: rows,
        k,
        // SAFETY: `indices` is valid for rows * k i32 (the contract).
        indices: unsafe { in_slice(indices, n, "indices") }?.to_vec(),
        // SAFETY: `values` is valid for rows * k f32 (the contract).
        values: unsafe { in_slice(values, n, "values") }?.to_vec(),
    })
}

/// Adds fixed-width codes (`[rows, k]`, index -1 = padding) to `stats`. `mask` is NULL
/// (every row counts) or uint8 `[rows]` (rows with 0 are skipped). Only values > 0 count
/// as active. On error the statistics are unchanged.
///
/// # Safety
/// `stats` is live; pointers are valid for the stated number of elements.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_accumulate_topk(
    stats: *mut SaeStats,
    indices: *const i32,
    values: *const f32,
    rows: usize,
    k: usize,
    mask: *const u8,
) -> SaeStatus {
    run("sae_stats_accumulate_topk", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_mut(stats) }?;
        // SAFETY: `indices`/`values` are valid for the stated rows * k elements.
        let codes = unsafe { read_topk(indices, values, rows, k) }?;
        // SAFETY: `mask` is NULL or valid for `rows` bytes (the contract).
        let mask = unsafe { opt_in_slice(mask, rows, "mask") }?;
        accumulate(s, &codes, mask)
    })
}

/// Adds CSR codes (`row_ptr` int64 `[rows + 1]`, `indices`/`values` of `row_ptr[rows]`
/// entries) to `stats`; `mask` as in `sae_stats_accumulate_topk`.
///
/// # Safety
/// As `sae_stats_accumulate_topk`.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_accumulate_csr(
    stats: *mut SaeStats,
    row_ptr: *const i64,
    indices: *const i32,
    values: *const f32,
    rows: usize,
    mask: *const u8,
) -> SaeStatus {
    run("sae_stats_accumulate_csr", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_mut(stats) }?;
        // SAFETY: the CSR arrays are valid for the stated lengths (the contract).
        let codes = unsafe { read_csr(row_ptr, indices, values, rows) }?;
        // SAFETY: `mask` is NULL or valid for `rows` bytes (the contract).
        let mask = unsafe { opt_in_slice(mask, rows, "mask") }?;
        accumulate(s, &codes, mask)
    })
}

/// Adds `src` into `dst` (same SAE, else `SAE_STATUS_INCOMPATIBLE`). `src` is unchanged;
/// `dst == src` doubles the statistics.
///
/// # Safety
/// Both are live statistics.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_merge(dst: *mut SaeStats, src: *const SaeStats) -> SaeStatus {
    run("sae_stats_merge", || {
        if std::ptr::eq(dst, src) {
            // Never hold &mut and & to the same object.
            // SAFETY: `dst` is live (the contract); `src` is the same object and is not
            // dereferenced here, so the &mut is the only reference.
            let d = unsafe { stats_mut(dst) }?;
            let copy = d.inner.snapshot();
            return Ok(d.inner.stats_mut().merge(&copy)?);
        }
        // The source's open document is closed in the copy merged (a document split
        // across the two counts as two clusters, as across two shard files).
        // SAFETY: `src` is live (the contract); the shared borrow ends with the snapshot.
        let other = unsafe { stats_ref(src) }?.inner.snapshot();
        // SAFETY: `dst` is live and, being a different object from `src`, unaliased.
        let d = unsafe { stats_mut(dst) }?;
        Ok(d.inner.stats_mut().merge(&other)?)
    })
}

/// Number of latents; 0 for NULL.
///
/// # Safety
/// `stats` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_n_latents(stats: *const SaeStats) -> usize {
    run_value(0, || {
        // SAFETY: `stats` is NULL or live (the contract).
        unsafe { stats.as_ref() }.map(|s| s.inner.stats().n_latents())
    })
}

/// Tokens counted so far; 0 for NULL.
///
/// # Safety
/// `stats` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_n_tokens(stats: *const SaeStats) -> u64 {
    run_value(0, || {
        // SAFETY: `stats` is NULL or live (the contract).
        unsafe { stats.as_ref() }.map(|s| s.inner.stats().n_tokens)
    })
}

/// Copies the per-latent arrays into caller buffers of `n_latents` elements each
/// (`n_latents` must equal `sae_stats_n_latents`). Any output may be NULL to skip it.
///
/// # Safety
/// `stats` is live; each non-NULL output is writable for `n_latents` elements.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_get(
    stats: *const SaeStats,
    n_latents: usize,
    out_sum: *mut f64,
    out_sum_sq: *mut f64,
    out_n_active: *mut u64,
    out_max: *mut f32,
) -> SaeStatus {
    run("sae_stats_get", || {
        // SAFETY: `stats` is NULL or live (the contract).
        let s = unsafe { stats_ref(stats) }?.inner.stats();
        if n_latents != s.n_latents() {
            return Err(Failure::new(
                SaeStatus::Shape,
                format!(
                    "buffers hold {n_latents} latents, the statistics have {}",
                    s.n_latents()
                ),
            ));
        }
        // SAFETY: `out_sum` is NULL or writable for `n_latents` f64 (the contract), and
        // `n_latents` matches the statistics (checked above).
        if let Some(o) = unsafe { opt_out_slice(out_sum, n_latents, "out_sum") }? {
            o.copy_from_slice(&s.sum);
        }
        // SAFETY: `out_sum_sq` is NULL or writable for `n_latents` f64 (the contract).
        if let Some(o) = unsafe { opt_out_slice(out_sum_sq, n_latents, "out_sum_sq") }? {
            o.copy_from_slice(&s.sum_sq);
        }
        // SAFETY: `out_n_active` is NULL or writable for `n_latents` u64 (the contract).
        if let Some(o) = unsafe { opt_out_slice(out_n_active, n_latents, "out_n_active") }? {
            o.copy_from_slice(&s.n_active);
        }
        // SAFETY: `out_max` is NULL or writable for `n_latents` f32 (the contract).
        if let Some(o) = unsafe { opt_out_slice(out_max, n_latents, "out_max") }? {
            o.copy_from_slice(&s.max);
        }
        Ok(())
    })
}

/// Copies the fingerprint of the SAE the statistics belong to into `buf`; returns the
/// size needed, NUL included (0 for NULL).
///
/// # Safety
/// `stats` is NULL or live; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_fingerprint(
    stats: *const SaeStats,
    buf: *mut c_char,
    len: usize,
) -> usize {
    run_value(0, || {
        // SAFETY: `stats` is NULL or live, and `buf` NULL or writable for `len` bytes
        // (the contract), which is what copy_out_str needs.
        unsafe { stats.as_ref() }
            .map(|s| unsafe { copy_out_str(&s.inner.stats().fingerprint, buf, len) })
    })
}

/// Writes the statistics file `sae stats` writes (safetensors), atomically.
///
/// # Safety
/// `stats` is live; `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_write(stats: *const SaeStats, path: *const c_char) -> SaeStatus {
    run("sae_stats_write", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_ref(stats) }?;
        // SAFETY: `path` is NULL or NUL-terminated (the contract).
        let path = unsafe { str_arg(path, "path") }?;
        Ok(sae_engine::io::stats_file::write(
            path.as_ref(),
            &s.inner.snapshot(),
        )?)
    })
}

/// Reads a statistics file (from `sae stats` or `sae_stats_write`). Release with
/// `sae_stats_free`; `*out_stats` is NULL on failure.
///
/// # Safety
/// `path` is a NUL-terminated string; `out_stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_read(
    path: *const c_char,
    out_stats: *mut *mut SaeStats,
) -> SaeStatus {
    run("sae_stats_read", || {
        // SAFETY: `out_stats` is NULL or writable (the contract).
        unsafe { write_out(out_stats, std::ptr::null_mut(), "out_stats") }?;
        // SAFETY: `path` is NULL or NUL-terminated (the contract).
        let path = unsafe { str_arg(path, "path") }?;
        let s = sae_engine::io::stats_file::read(path.as_ref())?;
        // SAFETY: `out_stats` is NULL or writable (the contract).
        unsafe { write_out(out_stats, boxed(s), "out_stats") }
    })
}

/// Reads the optional per-row columns of a batch of `rows` rows.
///
/// # Safety
/// As `opt_in_slice`.
unsafe fn row_info<'a>(
    mask: *const u8,
    token_ids: *const i64,
    doc_ids: *const i64,
    rows: usize,
) -> FfiResult<RowInfo<'a>> {
    Ok(RowInfo {
        // SAFETY: each pointer is NULL or readable for `rows` elements for 'a (the contract).
        keep: unsafe { opt_in_slice(mask, rows, "mask") }?,
        // SAFETY: as for `mask`.
        token_ids: unsafe { opt_in_slice(token_ids, rows, "token_ids") }?,
        // SAFETY: as for `mask`.
        doc_ids: unsafe { opt_in_slice(doc_ids, rows, "doc_ids") }?,
    })
}

/// Encodes and accumulates rows of activations the way `sae stats` does a dump's batch:
/// `x` f32 `[rows, d]` (d = d_in) is encoded with the handle's engine (only the rows
/// `mask` keeps), and besides the per-latent sums the counted rows' L2 norms (for the
/// median norm and outlier count), token ids and per-document sums are recorded, so
/// rows fed in the order of a dump give the statistics file `sae stats` writes for it.
///
/// - `mask`: NULL (every row counts) or uint8 `[rows]`, 0 = left out (a dump's `mask`).
/// - `token_ids`, `doc_ids`: NULL or int64 `[rows]` (a dump's `token_ids`, `doc_ids`);
///   a document may continue in the next call. Without doc ids the file has no
///   per-document sums; without token ids no token digest.
///
/// A non-finite value in any row is `SAE_STATUS_NON_FINITE` (the message names the
/// row). On error the statistics are unchanged.
///
/// # Safety
/// `stats` and `handle` are live; every non-NULL pointer is valid for the stated number
/// of elements.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_accumulate_host(
    stats: *mut SaeStats,
    handle: *const SaeHandle,
    x: *const f32,
    rows: usize,
    d: usize,
    mask: *const u8,
    token_ids: *const i64,
    doc_ids: *const i64,
) -> SaeStatus {
    run("sae_stats_accumulate_host", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_mut(stats) }?;
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        h.check_width(d)?;
        if s.inner.stats().fingerprint != h.sae.fingerprint() {
            return Err(Failure::new(
                SaeStatus::Incompatible,
                "the statistics belong to another SAE than the handle's",
            ));
        }
        // SAFETY: `x` is valid for the stated rows * d f32 (the contract).
        let x = unsafe { in_slice(x, checked_len(rows, d, "x")?, "x") }?;
        // SAFETY: the row columns are NULL or valid for `rows` elements (the contract).
        let info = unsafe { row_info(mask, token_ids, doc_ids, rows) }?;
        let engine = h.engine();
        s.inner
            .push_rows(engine.as_ref(), x, rows, 0, info)
            .map_err(|e| match e {
                sae_engine::Error::NonFinite { row, .. } => sae_engine::Error::NonFinite {
                    context: "x".into(),
                    row,
                },
                other => other,
            })?;
        Ok(())
    })
}

/// Accumulates rows encoded elsewhere (e.g. on a GPU with `sae_encode_topk_device`, the
/// codes then copied to the host): `indices`/`values` `[kept, k]` are the codes of the
/// rows `mask` keeps only (all rows when `mask` is NULL), in order; `norms` f64 `[rows]`
/// are the L2 norms of all `rows` rows. `mask`, `token_ids`, `doc_ids` as in
/// `sae_stats_accumulate_host`. On error the statistics are unchanged.
///
/// # Safety
/// `stats` is live; every non-NULL pointer is valid for the stated number of elements.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_accumulate_topk_rows(
    stats: *mut SaeStats,
    indices: *const i32,
    values: *const f32,
    kept: usize,
    k: usize,
    norms: *const f64,
    rows: usize,
    mask: *const u8,
    token_ids: *const i64,
    doc_ids: *const i64,
) -> SaeStatus {
    run("sae_stats_accumulate_topk_rows", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_mut(stats) }?;
        // SAFETY: `indices`/`values` are valid for the stated kept * k elements.
        let codes = unsafe { read_topk(indices, values, kept, k) }?;
        // SAFETY: `norms` is valid for `rows` f64 (the contract).
        let norms = unsafe { in_slice(norms, rows, "norms") }?;
        // SAFETY: the row columns are NULL or valid for `rows` elements (the contract).
        let info = unsafe { row_info(mask, token_ids, doc_ids, rows) }?;
        Ok(s.inner.push_codes(&codes, norms, rows, info)?)
    })
}

/// Sets T of the outlier rule recorded in the file (counted rows whose norm is above T
/// x the median are outliers; `sae stats --outlier-factor`, default 10). T must be a
/// finite number > 1.
///
/// # Safety
/// `stats` is live.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_set_outlier_factor(
    stats: *mut SaeStats,
    outlier_factor: f64,
) -> SaeStatus {
    run("sae_stats_set_outlier_factor", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_mut(stats) }?;
        let rule = sae_engine::stats::TokenRule {
            outlier_factor,
            ..Default::default()
        };
        rule.check()?;
        s.inner.stats_mut().outlier_factor = outlier_factor;
        Ok(())
    })
}

/// `sae_stats_write` with a provenance record in the file's metadata (as the CLI
/// writes): `command` (e.g. "stats hook") and `options_json`, NULL or a JSON object of
/// what produced the rows (model, layer, mask rule, ...). The process's command line is
/// recorded too.
///
/// # Safety
/// `stats` is live; `path` and `command` are NUL-terminated strings; `options_json` is
/// NULL or one.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_write_with_provenance(
    stats: *const SaeStats,
    path: *const c_char,
    command: *const c_char,
    options_json: *const c_char,
) -> SaeStatus {
    run("sae_stats_write_with_provenance", || {
        // SAFETY: `stats` is NULL or live statistics (the export's # Safety).
        let s = unsafe { stats_ref(stats) }?;
        // SAFETY: `path` is NULL or NUL-terminated (the contract).
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: `command` is NULL or NUL-terminated (the contract).
        let command = unsafe { str_arg(command, "command") }?;
        let mut prov = Provenance::new(command).with_process_argv();
        // SAFETY: `options_json` is NULL or NUL-terminated (the contract).
        if let Some(text) = unsafe { opt_str_arg(options_json, "options_json") }? {
            let v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| Failure::invalid(format!("options_json is not JSON: {e}")))?;
            let serde_json::Value::Object(map) = v else {
                return Err(Failure::invalid("options_json must be a JSON object"));
            };
            for (k, v) in map {
                prov.option(&k, v);
            }
        }
        Ok(sae_engine::io::stats_file::write_with_provenance(
            path.as_ref(),
            &s.inner.snapshot(),
            Some(&prov),
        )?)
    })
}
