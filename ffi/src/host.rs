//! Encode and decode on host buffers. Inputs are read in place; outputs are written
//! into the caller's buffers.

use sae_engine::{Codes, Denorm, Encoded};

use crate::guard::{
    checked_len, in_slice, opt_in_slice, opt_out_slice, out_slice, run, write_out, Failure,
    FfiResult,
};
use crate::handle::{handle_arg, SaeHandle};
use crate::status::SaeStatus;

/// Encodes `rows` rows of `x` (`[rows, d]` row-major, d = d_in) and checks the codes' kind.
fn encode(h: &SaeHandle, x: &[f32], rows: usize) -> FfiResult<Encoded> {
    let enc = h.engine().encode(x, rows, 0)?;
    if enc.codes.n_rows() != rows {
        return Err(Failure::new(
            SaeStatus::Panic,
            format!(
                "backend {} returned {} rows of codes for {rows} input rows",
                h.backend_name,
                enc.codes.n_rows()
            ),
        ));
    }
    Ok(enc)
}

/// Writes the per-row normalization constants (identity when the SAE does not normalize).
///
/// # Safety
/// As `opt_out_slice`.
unsafe fn write_denorm(
    denorm: Option<&Denorm>,
    rows: usize,
    out_scale: *mut f32,
    out_shift: *mut f32,
) -> FfiResult {
    // SAFETY: each pointer is NULL or writable for `rows` f32, aligned, unaliased (the contract).
    let scale = unsafe { opt_out_slice(out_scale, rows, "out_scale") }?;
    // SAFETY: as for `out_scale`.
    let shift = unsafe { opt_out_slice(out_shift, rows, "out_shift") }?;
    if let Some(d) = denorm {
        if d.scale.len() != rows || d.shift.len() != rows {
            return Err(Failure::new(
                SaeStatus::Panic,
                "backend returned normalization constants of the wrong length",
            ));
        }
    }
    if let Some(s) = scale {
        match denorm {
            Some(d) => s.copy_from_slice(&d.scale),
            None => s.fill(1.0),
        }
    }
    if let Some(s) = shift {
        match denorm {
            Some(d) => s.copy_from_slice(&d.shift),
            None => s.fill(0.0),
        }
    }
    Ok(())
}

/// Reads optional scale/shift inputs: both or neither.
///
/// # Safety
/// As `opt_in_slice`.
pub(crate) unsafe fn read_denorm(
    scale: *const f32,
    shift: *const f32,
    rows: usize,
) -> FfiResult<Option<Denorm>> {
    // SAFETY: each pointer is NULL or readable for `rows` f32, aligned (the contract).
    let scale = unsafe { opt_in_slice(scale, rows, "scale") }?;
    // SAFETY: as for `scale`.
    let shift = unsafe { opt_in_slice(shift, rows, "shift") }?;
    match (scale, shift) {
        (None, None) => Ok(None),
        (Some(a), Some(b)) => Ok(Some(Denorm {
            scale: a.to_vec(),
            shift: b.to_vec(),
        })),
        _ => Err(Failure::invalid(
            "pass both `scale` and `shift`, or neither",
        )),
    }
}

/// Encodes with a TopK SAE into fixed-width codes.
///
/// - `x`: f32 `[rows, d]`, row-major, `d` must equal `sae_d_in`.
/// - `out_indices` (int32) and `out_values` (f32): `[rows, k]`, `k` must equal `sae_k`.
///   Each row is ordered by value, largest first (ties: smaller latent index first); a row
///   with fewer than k positive pre-activations is padded with index -1 and value 0.
/// - `out_scale`, `out_shift`: NULL, or f32 `[rows]` receiving the constants that undo
///   input normalization (`x = decoded * scale + shift`; 1 and 0 when the SAE has none).
///
/// Returns `SAE_STATUS_UNSUPPORTED` for a threshold SAE (use `sae_encode_csr_host`),
/// `SAE_STATUS_NON_FINITE` for a NaN/inf in `x` (the message names the row).
///
/// # Safety
/// `handle` is a live handle; every non-NULL pointer is valid for the stated number of
/// elements and aligned; outputs do not overlap inputs.
#[no_mangle]
pub unsafe extern "C" fn sae_encode_topk_host(
    handle: *const SaeHandle,
    x: *const f32,
    rows: usize,
    d: usize,
    out_indices: *mut i32,
    out_values: *mut f32,
    k: usize,
    out_scale: *mut f32,
    out_shift: *mut f32,
) -> SaeStatus {
    run("sae_encode_topk_host", || {
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        h.check_topk_shape(
            d,
            k,
            "this SAE is not TopK: its codes are CSR, use sae_encode_csr_host",
        )?;
        // SAFETY: `x` is valid for the stated rows * d f32 (the contract).
        let x = unsafe { in_slice(x, checked_len(rows, d, "x")?, "x") }?;
        let n_out = checked_len(rows, k, "outputs")?;
        // SAFETY: the outputs are valid for the stated rows * k elements and overlap no
        // input (the contract).
        let out_i = unsafe { out_slice(out_indices, n_out, "out_indices") }?;
        // SAFETY: as for `out_indices`.
        let out_v = unsafe { out_slice(out_values, n_out, "out_values") }?;
        let enc = encode(h, x, rows)?;
        match &enc.codes {
            Codes::TopK {
                k: ck,
                indices,
                values,
                ..
            } if *ck == k && indices.len() == n_out && values.len() == n_out => {
                out_i.copy_from_slice(indices);
                out_v.copy_from_slice(values);
            }
            _ => {
                return Err(Failure::new(
                    SaeStatus::Panic,
                    format!(
                        "backend {} returned codes that are not [rows, k]",
                        h.backend_name
                    ),
                ))
            }
        }
        // SAFETY: `out_scale`/`out_shift` are NULL or valid for `rows` f32 (the contract).
        unsafe { write_denorm(enc.denorm.as_ref(), rows, out_scale, out_shift) }
    })
}

/// Encodes with any SAE into CSR codes (for TopK SAEs: the active entries of each row).
///
/// - `out_row_ptr`: int64 `[rows + 1]`, always written on success and on
///   `SAE_STATUS_BUFFER_TOO_SMALL`.
/// - `out_indices` (int32, ascending within a row) and `out_values` (f32, > 0): `capacity`
///   elements each (may be NULL when `capacity` is 0).
/// - `*out_nnz`: the number of entries, always written on success and on
///   `SAE_STATUS_BUFFER_TOO_SMALL`.
///
/// Two-call sizing: call with `capacity = 0` to learn `*out_nnz`, allocate, call again.
/// Each call encodes, so a caller that can bound nnz passes a generous capacity once.
///
/// # Safety
/// As `sae_encode_topk_host`.
#[no_mangle]
pub unsafe extern "C" fn sae_encode_csr_host(
    handle: *const SaeHandle,
    x: *const f32,
    rows: usize,
    d: usize,
    out_row_ptr: *mut i64,
    out_indices: *mut i32,
    out_values: *mut f32,
    capacity: usize,
    out_nnz: *mut usize,
    out_scale: *mut f32,
    out_shift: *mut f32,
) -> SaeStatus {
    run("sae_encode_csr_host", || {
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        h.check_width(d)?;
        if out_nnz.is_null() {
            return Err(Failure::null("out_nnz"));
        }
        // SAFETY: `x` is valid for the stated rows * d f32 (the contract).
        let x = unsafe { in_slice(x, checked_len(rows, d, "x")?, "x") }?;
        let ptr_len = rows
            .checked_add(1)
            .ok_or_else(|| Failure::invalid("rows + 1 overflows"))?;
        // SAFETY: `out_row_ptr` is valid for the stated rows + 1 i64 and overlaps no input.
        let row_ptr = unsafe { out_slice(out_row_ptr, ptr_len, "out_row_ptr") }?;
        let enc = encode(h, x, rows)?;
        let codes = &enc.codes;
        // Count first so a too-small buffer is reported before anything else is written.
        row_ptr[0] = 0;
        let mut nnz = 0usize;
        for r in 0..rows {
            nnz += codes.l0(r);
            row_ptr[r + 1] = nnz as i64;
        }
        // SAFETY: `out_nnz` is non-NULL (checked above) and writable (the contract).
        unsafe { write_out(out_nnz, nnz, "out_nnz") }?;
        if nnz > capacity {
            return Err(Failure::new(
                SaeStatus::BufferTooSmall,
                format!("the codes have {nnz} entries, but capacity is {capacity}"),
            ));
        }
        // SAFETY: the outputs are valid for `capacity` elements each (the contract).
        let out_i = unsafe { out_slice(out_indices, capacity, "out_indices") }?;
        // SAFETY: as for `out_indices`.
        let out_v = unsafe { out_slice(out_values, capacity, "out_values") }?;
        let mut at = 0;
        let mut row: Vec<(usize, f32)> = Vec::new();
        for r in 0..rows {
            row.clear();
            row.extend(codes.active(r));
            // CSR rows are ascending by latent; top-k rows come ordered by value.
            row.sort_unstable_by_key(|e| e.0);
            for (i, v) in &row {
                out_i[at] = *i as i32;
                out_v[at] = *v;
                at += 1;
            }
        }
        // SAFETY: `out_scale`/`out_shift` are NULL or valid for `rows` f32 (the contract).
        unsafe { write_denorm(enc.denorm.as_ref(), rows, out_scale, out_shift) }
    })
}

/// Decodes fixed-width codes (`indices` int32 / `values` f32, `[rows, k]`; index -1 =
/// padding) into `out_x` f32 `[rows, d]`, d = d_in. `scale`/`shift` (f32 `[rows]`, both
/// or neither) undo input normalization as reported by encoding. Any `k` is accepted.
/// Indices outside -1..n_latents are `SAE_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// As `sae_encode_topk_host`.
#[no_mangle]
pub unsafe extern "C" fn sae_decode_topk_host(
    handle: *const SaeHandle,
    indices: *const i32,
    values: *const f32,
    rows: usize,
    k: usize,
    scale: *const f32,
    shift: *const f32,
    out_x: *mut f32,
    d: usize,
) -> SaeStatus {
    run("sae_decode_topk_host", || {
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        h.check_width(d)?;
        let n = checked_len(rows, k, "codes")?;
        let codes = Codes::TopK {
            n: rows,
            k,
            // SAFETY: `indices` and `values` are valid for the stated rows * k elements.
            indices: unsafe { in_slice(indices, n, "indices") }?.to_vec(),
            // SAFETY: as for `indices`.
            values: unsafe { in_slice(values, n, "values") }?.to_vec(),
        };
        // SAFETY: `scale`/`shift` are NULL or valid for `rows` f32 (the contract).
        let denorm = unsafe { read_denorm(scale, shift, rows) }?;
        // SAFETY: `out_x` is valid for the stated rows * d f32 and overlaps no input.
        unsafe { decode_into(h, &codes, denorm, out_x, rows, d) }
    })
}

/// Decodes CSR codes (`row_ptr` int64 `[rows + 1]` starting at 0 and non-decreasing;
/// `indices` int32 and `values` f32 of `row_ptr[rows]` entries) into `out_x` f32
/// `[rows, d]`. `scale`/`shift` as in `sae_decode_topk_host`.
///
/// # Safety
/// As `sae_encode_topk_host`.
#[no_mangle]
pub unsafe extern "C" fn sae_decode_csr_host(
    handle: *const SaeHandle,
    row_ptr: *const i64,
    indices: *const i32,
    values: *const f32,
    rows: usize,
    scale: *const f32,
    shift: *const f32,
    out_x: *mut f32,
    d: usize,
) -> SaeStatus {
    run("sae_decode_csr_host", || {
        // SAFETY: `handle` is NULL or a live handle (the export's # Safety).
        let h = unsafe { handle_arg(handle) }?;
        h.check_width(d)?;
        // SAFETY: the CSR arrays are valid for the stated lengths (the contract).
        let codes = unsafe { read_csr(row_ptr, indices, values, rows) }?;
        // SAFETY: `scale`/`shift` are NULL or valid for `rows` f32 (the contract).
        let denorm = unsafe { read_denorm(scale, shift, rows) }?;
        // SAFETY: `out_x` is valid for the stated rows * d f32 and overlaps no input.
        unsafe { decode_into(h, &codes, denorm, out_x, rows, d) }
    })
}

/// Copies caller CSR arrays into codes, checking `row_ptr` before trusting its last entry.
///
/// # Safety
/// As `in_slice` for each array.
pub(crate) unsafe fn read_csr(
    row_ptr: *const i64,
    indices: *const i32,
    values: *const f32,
    rows: usize,
) -> FfiResult<Codes> {
    let ptr_len = rows
        .checked_add(1)
        .ok_or_else(|| Failure::invalid("rows + 1 overflows"))?;
    // SAFETY: `row_ptr` is valid for rows + 1 i64 (the contract).
    let row_ptr = unsafe { in_slice(row_ptr, ptr_len, "row_ptr") }?;
    if row_ptr[0] != 0 || row_ptr.windows(2).any(|w| w[1] < w[0]) {
        return Err(Failure::invalid(
            "row_ptr must start at 0 and never decrease",
        ));
    }
    let nnz = usize::try_from(row_ptr[rows])
        .ok()
        .filter(|n| checked_len(*n, 1, "nnz").is_ok())
        .ok_or_else(|| {
            Failure::invalid(format!("row_ptr[rows] = {} is too large", row_ptr[rows]))
        })?;
    Ok(Codes::Csr {
        n: rows,
        row_ptr: row_ptr.to_vec(),
        // SAFETY: `indices` is valid for row_ptr[rows] = nnz i32 (the contract; row_ptr
        // was checked to be monotone from 0 above).
        indices: unsafe { in_slice(indices, nnz, "indices") }?.to_vec(),
        // SAFETY: as for `indices`, with f32.
        values: unsafe { in_slice(values, nnz, "values") }?.to_vec(),
    })
}

/// Validates codes against the SAE, decodes, and copies into `out_x`.
///
/// # Safety
/// `out_x` as `out_slice`.
unsafe fn decode_into(
    h: &SaeHandle,
    codes: &Codes,
    denorm: Option<Denorm>,
    out_x: *mut f32,
    rows: usize,
    d: usize,
) -> FfiResult {
    codes.validate(h.sae.n_latents())?;
    // SAFETY: `out_x` is valid for rows * d f32, aligned, unaliased (the contract).
    let out = unsafe { out_slice(out_x, checked_len(rows, d, "out_x")?, "out_x") }?;
    let x = h.engine().decode(codes, denorm.as_ref())?;
    if x.len() != out.len() {
        return Err(Failure::new(
            SaeStatus::Panic,
            format!(
                "backend {} decoded {} values for {rows} x {d}",
                h.backend_name,
                x.len()
            ),
        ));
    }
    out.copy_from_slice(&x);
    Ok(())
}
