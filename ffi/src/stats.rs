//! Per-latent statistics over host codes: accumulate, merge across shards, read out,
//! and the statistics files `sae stats` writes (so a Python shard job and the CLI's
//! `sae stats merge` interoperate).

use std::ffi::c_char;

use sae_engine::{Codes, LatentStats};

use crate::guard::{
    checked_len, copy_out_str, in_slice, opt_in_slice, opt_out_slice, run, run_value, str_arg,
    write_out, Failure, FfiResult,
};
use crate::handle::{handle_arg, SaeHandle};
use crate::host::read_csr;
use crate::status::SaeStatus;

/// Statistics of one dump or shard under one SAE (n_tokens, per-latent sum, sum_sq,
/// n_active, max). Opaque to C. Not synchronized: use one per thread, then merge.
pub struct SaeStats {
    inner: LatentStats,
}

unsafe fn stats_ref<'a>(s: *const SaeStats) -> FfiResult<&'a SaeStats> {
    s.as_ref().ok_or_else(|| Failure::null("stats"))
}

unsafe fn stats_mut<'a>(s: *mut SaeStats) -> FfiResult<&'a mut SaeStats> {
    s.as_mut().ok_or_else(|| Failure::null("stats"))
}

fn boxed(inner: LatentStats) -> *mut SaeStats {
    Box::into_raw(Box::new(SaeStats { inner }))
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
        write_out(out_stats, std::ptr::null_mut(), "out_stats")?;
        let h = handle_arg(handle)?;
        let s = LatentStats::new(h.sae.fingerprint(), h.sae.n_latents());
        write_out(out_stats, boxed(s), "out_stats")
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
            drop(Box::from_raw(stats));
        }));
    }
}

/// Checks the codes and the mask, then accumulates. Validation comes first so a
/// failed call leaves the statistics unchanged.
fn accumulate(s: &mut SaeStats, codes: &Codes, mask: Option<&[u8]>) -> FfiResult {
    codes.validate(s.inner.n_latents())?;
    Ok(s.inner.accumulate(codes, mask)?)
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
        let s = stats_mut(stats)?;
        let n = checked_len(rows, k, "codes")?;
        let codes = Codes::TopK {
            n: rows,
            k,
            indices: in_slice(indices, n, "indices")?.to_vec(),
            values: in_slice(values, n, "values")?.to_vec(),
        };
        accumulate(s, &codes, opt_in_slice(mask, rows, "mask")?)
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
        let s = stats_mut(stats)?;
        let codes = read_csr(row_ptr, indices, values, rows)?;
        accumulate(s, &codes, opt_in_slice(mask, rows, "mask")?)
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
            let d = stats_mut(dst)?;
            let copy = d.inner.clone();
            return Ok(d.inner.merge(&copy)?);
        }
        let other = stats_ref(src)?;
        let d = stats_mut(dst)?;
        Ok(d.inner.merge(&other.inner)?)
    })
}

/// Number of latents; 0 for NULL.
///
/// # Safety
/// `stats` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_n_latents(stats: *const SaeStats) -> usize {
    run_value(0, || stats.as_ref().map(|s| s.inner.n_latents()))
}

/// Tokens counted so far; 0 for NULL.
///
/// # Safety
/// `stats` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_n_tokens(stats: *const SaeStats) -> u64 {
    run_value(0, || stats.as_ref().map(|s| s.inner.n_tokens))
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
        let s = &stats_ref(stats)?.inner;
        if n_latents != s.n_latents() {
            return Err(Failure::new(
                SaeStatus::Shape,
                format!(
                    "buffers hold {n_latents} latents, the statistics have {}",
                    s.n_latents()
                ),
            ));
        }
        if let Some(o) = opt_out_slice(out_sum, n_latents, "out_sum")? {
            o.copy_from_slice(&s.sum);
        }
        if let Some(o) = opt_out_slice(out_sum_sq, n_latents, "out_sum_sq")? {
            o.copy_from_slice(&s.sum_sq);
        }
        if let Some(o) = opt_out_slice(out_n_active, n_latents, "out_n_active")? {
            o.copy_from_slice(&s.n_active);
        }
        if let Some(o) = opt_out_slice(out_max, n_latents, "out_max")? {
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
        stats
            .as_ref()
            .map(|s| copy_out_str(&s.inner.fingerprint, buf, len))
    })
}

/// Writes the statistics file `sae stats` writes (safetensors), atomically.
///
/// # Safety
/// `stats` is live; `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn sae_stats_write(stats: *const SaeStats, path: *const c_char) -> SaeStatus {
    run("sae_stats_write", || {
        let s = stats_ref(stats)?;
        let path = str_arg(path, "path")?;
        Ok(sae_engine::io::stats_file::write(path.as_ref(), &s.inner)?)
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
        write_out(out_stats, std::ptr::null_mut(), "out_stats")?;
        let path = str_arg(path, "path")?;
        let s = sae_engine::io::stats_file::read(path.as_ref())?;
        write_out(out_stats, boxed(s), "out_stats")
    })
}
