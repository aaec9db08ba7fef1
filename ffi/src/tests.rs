//! ABI tests against a naive dense engine, so the boundary (argument checks, copies,
//! sizing, status mapping) is tested independently of the real backends.

use std::ffi::CStr;
use std::ptr::{null, null_mut};
use std::sync::Arc;

use sae_engine::codes::{Codes, Denorm, Encoded};
use sae_engine::matrix::Matrix;
use sae_engine::sae::{Activation, Format, Normalization, Sae, SaeMeta};
use sae_engine::{DType, Engine, Error, Result};

use crate::device::*;
use crate::guard::sae_last_error_message;
use crate::handle::*;
use crate::host::*;
use crate::stats::*;
use crate::status::SaeStatus;
use sae_engine::cuda::device_ptr::{
    staged_decode_topk, staged_encode_topk, DecodeTopkDevice, DevicePtrOps, EncodeTopkDevice,
};

/// Dense reference: h = x W_enc^T + b_enc, then the activation; decode = f W_dec + b_dec.
struct Naive(Arc<Sae>);

impl Engine for Naive {
    fn name(&self) -> String {
        "naive".into()
    }
    fn sae(&self) -> &Sae {
        &self.0
    }
    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        let s = &self.0;
        let (d, l) = (s.d_in(), s.n_latents());
        let w = s.w_enc.to_f32_vec();
        let mut codes = Codes::empty(s.k());
        for r in 0..rows {
            let row = &x[r * d..(r + 1) * d];
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    context: "input".into(),
                    row: row_offset + r as u64,
                });
            }
            let h: Vec<f32> = (0..l)
                .map(|i| (0..d).map(|j| row[j] * w[i * d + j]).sum::<f32>() + s.b_enc[i])
                .collect();
            let one = match s.activation {
                Activation::TopK { k } => {
                    let mut order: Vec<usize> = (0..l).collect();
                    order.sort_by(|a, b| h[*b].total_cmp(&h[*a]).then(a.cmp(b)));
                    let (mut idx, mut val) = (vec![-1; k], vec![0.0; k]);
                    for (j, i) in order.into_iter().take(k).enumerate() {
                        if h[i] > 0.0 {
                            idx[j] = i as i32;
                            val[j] = h[i];
                        }
                    }
                    Codes::TopK {
                        n: 1,
                        k,
                        indices: idx,
                        values: val,
                    }
                }
                _ => {
                    let act: Vec<(i32, f32)> = (0..l)
                        .filter(|i| h[*i] > 0.0)
                        .map(|i| (i as i32, h[i]))
                        .collect();
                    Codes::Csr {
                        n: 1,
                        row_ptr: vec![0, act.len() as i64],
                        indices: act.iter().map(|a| a.0).collect(),
                        values: act.iter().map(|a| a.1).collect(),
                    }
                }
            };
            codes.append(&one)?;
        }
        Ok(Encoded {
            codes,
            denorm: None,
        })
    }
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        let s = &self.0;
        let d = s.d_in();
        let mut out = Vec::new();
        for r in 0..codes.n_rows() {
            let mut row = s.b_dec.clone();
            for (i, v) in codes.active(r) {
                for (o, w) in row.iter_mut().zip(s.w_dec.row_f32(i)) {
                    *o += v * w;
                }
            }
            if let Some(dn) = denorm {
                let c = dn.row(r);
                row.iter_mut().for_each(|o| *o = *o * c.scale + c.shift);
            }
            out.extend_from_slice(&row[..d]);
        }
        Ok(out)
    }
}

fn test_sae(activation: Activation) -> Arc<Sae> {
    let (l, d) = (5, 3);
    let enc: Vec<f32> = vec![
        1.0, 0.0, 0.0, //
        0.0, 1.0, 0.0, //
        0.0, 0.0, 1.0, //
        0.5, 0.5, 0.0, //
        -1.0, 0.0, 0.0,
    ];
    let dec: Vec<f32> = (0..l * d).map(|i| i as f32 * 0.1).collect();
    let sae = Sae {
        meta: SaeMeta {
            format: Format::SaeLens,
            source: "test".into(),
            architecture: "test".into(),
            hook_name: None,
            hook_layer: None,
            model_name: None,
            dtype: DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: Matrix::from_f32(&enc, l, d, DType::F32).unwrap(),
        w_dec: Matrix::from_f32(&dec, l, d, DType::F32).unwrap(),
        b_enc: vec![0.0, 0.0, 0.0, 0.1, 0.0],
        b_dec: vec![0.5, -0.5, 0.0],
        threshold: matches!(activation, Activation::JumpRelu).then(|| vec![0.0; l]),
        activation,
        subtract_b_dec: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    sae.validate().unwrap();
    Arc::new(sae)
}

fn handle(activation: Activation) -> *mut SaeHandle {
    let sae = test_sae(activation);
    Box::into_raw(Box::new(SaeHandle::new(sae.clone(), Box::new(Naive(sae)))))
}

fn last_error() -> String {
    let mut buf = vec![0 as std::ffi::c_char; 512];
    // SAFETY: `buf` is a live vector of `buf.len()` bytes.
    unsafe { sae_last_error_message(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: the call above NUL-terminated `buf` (len > 0).
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

const X: [f32; 6] = [1.0, 2.0, 0.5, -1.0, -2.0, 0.25];

#[test]
fn topk_encode_decode_roundtrip() {
    let h = handle(Activation::TopK { k: 2 });
    // SAFETY: `h` is a live handle freed once at the end; every buffer is a local array
    // of the length passed with it.
    unsafe {
        assert_eq!((sae_d_in(h), sae_n_latents(h), sae_k(h)), (3, 5, 2));
        assert!(sae_is_topk(h) && !sae_normalizes_input(h) && !sae_has_device_pointers(h));
        let (mut idx, mut val) = ([0i32; 4], [0f32; 4]);
        let (mut scale, mut shift) = ([0f32; 2], [9f32; 2]);
        let st = sae_encode_topk_host(
            h,
            X.as_ptr(),
            2,
            3,
            idx.as_mut_ptr(),
            val.as_mut_ptr(),
            2,
            scale.as_mut_ptr(),
            shift.as_mut_ptr(),
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        // Row 0: h = [1, 2, .5, 1.6, -1] -> 1 (2.0), 3 (1.6). Row 1: [-1,-2,.25,-1.4,1] -> 4, 2.
        assert_eq!(idx, [1, 3, 4, 2]);
        assert_eq!(val, [2.0, 1.6, 1.0, 0.25]);
        assert_eq!((scale, shift), ([1.0; 2], [0.0; 2]));
        let mut xhat = [0f32; 6];
        let st = sae_decode_topk_host(
            h,
            idx.as_ptr(),
            val.as_ptr(),
            2,
            2,
            null(),
            null(),
            xhat.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        let want0: Vec<f32> = (0..3)
            .map(|j| [0.5, -0.5, 0.0][j] + 2.0 * (3 + j) as f32 * 0.1 + 1.6 * (9 + j) as f32 * 0.1)
            .collect();
        for j in 0..3 {
            assert!((xhat[j] - want0[j]).abs() < 1e-5, "{xhat:?} vs {want0:?}");
        }
        sae_free(h);
    }
}

#[test]
fn csr_two_call_sizing_and_decode() {
    let h = handle(Activation::JumpRelu);
    // SAFETY: `h` is a live handle freed once at the end; every buffer is a local array
    // of at least the length passed with it, and NULLs go only where the ABI allows them.
    unsafe {
        assert!(!sae_is_topk(h) && sae_k(h) == 0);
        let (mut rp, mut nnz) = ([0i64; 3], 0usize);
        let st = sae_encode_csr_host(
            h,
            X.as_ptr(),
            2,
            3,
            rp.as_mut_ptr(),
            null_mut(),
            null_mut(),
            0,
            &mut nnz,
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::BufferTooSmall);
        assert_eq!((nnz, rp), (6, [0, 4, 6]));
        let (mut ci, mut cv) = (vec![0i32; nnz], vec![0f32; nnz]);
        let st = sae_encode_csr_host(
            h,
            X.as_ptr(),
            2,
            3,
            rp.as_mut_ptr(),
            ci.as_mut_ptr(),
            cv.as_mut_ptr(),
            nnz,
            &mut nnz,
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        assert_eq!(ci, [0, 1, 2, 3, 2, 4]);
        let mut xhat = [0f32; 6];
        let st = sae_decode_csr_host(
            h,
            rp.as_ptr(),
            ci.as_ptr(),
            cv.as_ptr(),
            2,
            null(),
            null(),
            xhat.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        // A decreasing row_ptr is refused before its last entry is trusted.
        let bad = [0i64, 5, 2];
        let st = sae_decode_csr_host(
            h,
            bad.as_ptr(),
            ci.as_ptr(),
            cv.as_ptr(),
            2,
            null(),
            null(),
            xhat.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::InvalidArgument);
        // Top-k entry points refuse a threshold SAE.
        let (mut idx, mut val) = ([0i32; 2], [0f32; 2]);
        let st = sae_encode_topk_host(
            h,
            X.as_ptr(),
            2,
            3,
            idx.as_mut_ptr(),
            val.as_mut_ptr(),
            1,
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::Unsupported);
        sae_free(h);
    }
}

#[test]
fn argument_errors_have_statuses_and_messages() {
    let h = handle(Activation::TopK { k: 2 });
    // SAFETY: `h` is a live handle freed once at the end; the bad arguments are NULLs,
    // wrong shapes and overflowing sizes that the exports reject before any access, and
    // the buffers actually read or written are local arrays of the lengths passed.
    unsafe {
        let (mut idx, mut val) = ([0i32; 4], [0f32; 4]);
        let val_ptr = val.as_mut_ptr();
        let enc = |x: *const f32, rows: usize, d: usize, k: usize, i: *mut i32| {
            sae_encode_topk_host(h, x, rows, d, i, val_ptr, k, null_mut(), null_mut())
        };
        assert_eq!(
            enc(null(), 2, 3, 2, idx.as_mut_ptr()),
            SaeStatus::NullArgument
        );
        assert!(last_error().contains("`x`"), "{}", last_error());
        assert_eq!(enc(X.as_ptr(), 2, 4, 2, idx.as_mut_ptr()), SaeStatus::Shape);
        assert!(last_error().contains("d_in = 3"), "{}", last_error());
        assert_eq!(enc(X.as_ptr(), 2, 3, 3, idx.as_mut_ptr()), SaeStatus::Shape);
        assert_eq!(
            enc(X.as_ptr(), usize::MAX, 3, 2, idx.as_mut_ptr()),
            SaeStatus::InvalidArgument
        );
        assert_eq!(
            enc(X.as_ptr(), 2, 3, 2, null_mut()),
            SaeStatus::NullArgument
        );
        // Zero rows need no buffers at all.
        assert_eq!(enc(null(), 0, 3, 2, null_mut()), SaeStatus::Ok);
        assert_eq!(last_error(), "");
        let mut nan = X;
        nan[4] = f32::NAN;
        assert_eq!(
            enc(nan.as_ptr(), 2, 3, 2, idx.as_mut_ptr()),
            SaeStatus::NonFinite
        );
        assert!(last_error().contains("row 1"), "{}", last_error());
        assert_eq!(
            sae_encode_topk_host(
                null(),
                X.as_ptr(),
                2,
                3,
                idx.as_mut_ptr(),
                val.as_mut_ptr(),
                2,
                null_mut(),
                null_mut()
            ),
            SaeStatus::NullArgument
        );
        // Device pointers on a host-only backend.
        let st = sae_encode_topk_device(
            h,
            X.as_ptr(),
            2,
            3,
            idx.as_mut_ptr(),
            val.as_mut_ptr(),
            2,
            null_mut(),
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::Unsupported);
        assert!(last_error().contains("naive"), "{}", last_error());
        // Out-of-range latent in codes to decode.
        let bad = [5i32, -1];
        let mut xhat = [0f32; 3];
        let st = sae_decode_topk_host(
            h,
            bad.as_ptr(),
            val.as_ptr(),
            1,
            2,
            null(),
            null(),
            xhat.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::InvalidArgument);
        // Only one of scale/shift.
        let ok = [1i32, -1];
        let st = sae_decode_topk_host(
            h,
            ok.as_ptr(),
            val.as_ptr(),
            1,
            2,
            val.as_ptr(),
            null(),
            xhat.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::InvalidArgument);
        // Bad strings in sae_open fail before any file is touched.
        // Non-NULL garbage: sae_open must reset it to NULL on failure.
        let mut out = std::ptr::NonNull::<SaeHandle>::dangling().as_ptr();
        let st = sae_open(c"/none".as_ptr(), c"nope".as_ptr(), null(), 0, &mut out);
        assert_eq!((st, out.is_null()), (SaeStatus::InvalidArgument, true));
        let st = sae_open(c"/none".as_ptr(), null(), c"tpu".as_ptr(), 0, &mut out);
        assert_eq!(st, SaeStatus::InvalidArgument);
        assert_eq!(
            sae_open(null(), null(), null(), 0, &mut out),
            SaeStatus::NullArgument
        );
        assert_eq!(
            sae_open(c"/none".as_ptr(), null(), null(), 0, null_mut()),
            SaeStatus::NullArgument
        );
        // Names go through the Hub resolver (no network: the release is refused by name).
        let st = sae_open(
            c"saelens:llama_scope_lxr_8x/l0r_8x".as_ptr(),
            null(),
            c"cpu".as_ptr(),
            0,
            &mut out,
        );
        assert_eq!(st, SaeStatus::InvalidArgument);
        assert!(
            last_error().contains("`llama_scope` converter"),
            "{}",
            last_error()
        );
        assert_eq!(sae_d_in(null()), 0);
        sae_free(h);
    }
}

#[test]
fn stats_accumulate_merge_get() {
    let h = handle(Activation::TopK { k: 2 });
    // SAFETY: `h` and the statistics are live until freed once at the end; every buffer
    // is a local array of the length passed with it.
    unsafe {
        let (mut a, mut b) = (null_mut(), null_mut());
        assert_eq!(sae_stats_new(h, &mut a), SaeStatus::Ok);
        assert_eq!(sae_stats_new(h, &mut b), SaeStatus::Ok);
        let idx = [1i32, 3, 4, -1];
        let val = [2.0f32, 1.5, 1.0, 0.0];
        let mask = [1u8, 0];
        assert_eq!(
            sae_stats_accumulate_topk(a, idx.as_ptr(), val.as_ptr(), 2, 2, mask.as_ptr()),
            SaeStatus::Ok
        );
        assert_eq!(
            sae_stats_accumulate_topk(b, idx.as_ptr(), val.as_ptr(), 2, 2, null()),
            SaeStatus::Ok
        );
        // A bad index leaves the statistics untouched.
        let bad = [9i32, 1];
        assert_eq!(
            sae_stats_accumulate_topk(b, bad.as_ptr(), val.as_ptr(), 1, 2, null()),
            SaeStatus::InvalidArgument
        );
        assert_eq!(sae_stats_n_tokens(b), 2);
        assert_eq!(sae_stats_merge(a, b), SaeStatus::Ok);
        assert_eq!(sae_stats_merge(a, a), SaeStatus::Ok);
        assert_eq!(sae_stats_n_tokens(a), 6);
        let n = sae_stats_n_latents(a);
        let (mut sum, mut act, mut mx) = (vec![0f64; n], vec![0u64; n], vec![0f32; n]);
        let st = sae_stats_get(
            a,
            n,
            sum.as_mut_ptr(),
            null_mut(),
            act.as_mut_ptr(),
            mx.as_mut_ptr(),
        );
        assert_eq!(st, SaeStatus::Ok);
        assert_eq!(sum, [0.0, 8.0, 0.0, 6.0, 2.0]);
        assert_eq!(act, [0, 4, 0, 4, 2]);
        assert_eq!(mx, [0.0, 2.0, 0.0, 1.5, 1.0]);
        assert_eq!(
            sae_stats_get(
                a,
                n + 1,
                sum.as_mut_ptr(),
                null_mut(),
                null_mut(),
                null_mut()
            ),
            SaeStatus::Shape
        );
        // Statistics of another SAE refuse to merge.
        let other = handle(Activation::JumpRelu);
        let mut c = null_mut();
        assert_eq!(sae_stats_new(other, &mut c), SaeStatus::Ok);
        assert_eq!(sae_stats_merge(a, c), SaeStatus::Incompatible);
        let mut fp = [0 as std::ffi::c_char; 64];
        let need = sae_stats_fingerprint(a, fp.as_mut_ptr(), fp.len());
        assert_eq!(need, 17);
        assert_eq!(sae_fingerprint(h, null_mut(), 0), need);
        for s in [a, b, c] {
            sae_stats_free(s);
        }
        sae_free(other);
        sae_free(h);
    }
}

#[test]
fn handle_is_shareable_across_threads() {
    let h = handle(Activation::TopK { k: 2 }) as usize;
    let results: Vec<[i32; 4]> = std::thread::scope(|s| {
        let joins: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    let (mut idx, mut val) = ([0i32; 4], [0f32; 4]);
                    // SAFETY: `h` is live until every thread is joined (handles are
                    // shareable); the buffers are this thread's arrays of 2 x 2 / 2 x 3.
                    let st = unsafe {
                        sae_encode_topk_host(
                            h as *const SaeHandle,
                            X.as_ptr(),
                            2,
                            3,
                            idx.as_mut_ptr(),
                            val.as_mut_ptr(),
                            2,
                            null_mut(),
                            null_mut(),
                        )
                    };
                    assert_eq!(st, SaeStatus::Ok);
                    idx
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| *r == [1, 3, 4, 2]));
    // SAFETY: all threads are joined, so nothing else uses `h`; freed once.
    unsafe { sae_free(h as *mut SaeHandle) };
}

/// The naive engine with the staged device-pointer helpers, as the CUDA engine can use them.
struct StagedNaive(Naive);

impl Engine for StagedNaive {
    fn name(&self) -> String {
        "staged-naive".into()
    }
    fn sae(&self) -> &Sae {
        self.0.sae()
    }
    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        self.0.encode(x, rows, row_offset)
    }
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        self.0.decode(codes, denorm)
    }
    fn device_ptr(&self) -> Option<&dyn DevicePtrOps> {
        Some(self)
    }
}

impl DevicePtrOps for StagedNaive {
    unsafe fn encode_topk_device(&self, args: &EncodeTopkDevice) -> Result<()> {
        // SAFETY: the caller meets the trait method's contract, which is the helper's.
        unsafe { staged_encode_topk(self, args) }
    }
    unsafe fn decode_topk_device(&self, args: &DecodeTopkDevice) -> Result<()> {
        // SAFETY: the caller meets the trait method's contract, which is the helper's.
        unsafe { staged_decode_topk(self, args) }
    }
}

/// Makes device 0's primary context current, or None without a driver or device.
fn gpu_context() -> Option<()> {
    use cudarc::driver::result;
    // With dynamic loading a missing libcuda panics on first use: ask first.
    // SAFETY: only probes for the driver library; no driver call is made through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    result::init().ok()?;
    let dev = result::device::get(0).ok()?;
    // SAFETY: the driver is initialized and `dev` is a device it returned.
    let ctx = unsafe { result::primary_ctx::retain(dev) }.ok()?;
    // SAFETY: `ctx` is the primary context just retained, never released in the test.
    unsafe { result::ctx::set_current(ctx) }.ok()
}

/// Device buffers through the ABI on a real GPU (run by ffi/tests/gpu_device_ptr.sh).
/// Without CUDA it says so and passes: CI has no GPU.
#[test]
fn device_pointer_abi_on_gpu() {
    use cudarc::driver::result::{free_sync, malloc_sync, memcpy_dtoh_sync, memcpy_htod_sync};
    if gpu_context().is_none() {
        eprintln!("device_pointer_abi_on_gpu: skipped, no CUDA driver or device here");
        return;
    }
    let sae = test_sae(Activation::TopK { k: 2 });
    let engine = StagedNaive(Naive(sae.clone()));
    let h = Box::into_raw(Box::new(SaeHandle::new(sae, Box::new(engine))));
    // SAFETY: the context is current (gpu_context); device buffers come from malloc_sync
    // with the byte sizes the calls state, are freed once, and `h` is live until freed.
    unsafe {
        assert!(sae_has_device_pointers(h));
        let x = malloc_sync(6 * 4).unwrap();
        let idx = malloc_sync(4 * 4).unwrap();
        let val = malloc_sync(4 * 4).unwrap();
        let scale = malloc_sync(2 * 4).unwrap();
        let out = malloc_sync(6 * 4).unwrap();
        memcpy_htod_sync(x, &X).unwrap();
        let st = sae_encode_topk_device(
            h,
            x as usize as *const f32,
            2,
            3,
            idx as usize as *mut i32,
            val as usize as *mut f32,
            2,
            scale as usize as *mut f32,
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        let (mut hi, mut hv, mut hs) = ([0i32; 4], [0f32; 4], [0f32; 2]);
        memcpy_dtoh_sync(&mut hi, idx).unwrap();
        memcpy_dtoh_sync(&mut hv, val).unwrap();
        memcpy_dtoh_sync(&mut hs, scale).unwrap();
        assert_eq!(hi, [1, 3, 4, 2]);
        assert_eq!(hv, [2.0, 1.6, 1.0, 0.25]);
        assert_eq!(hs, [1.0, 1.0]);
        let st = sae_decode_topk_device(
            h,
            idx as usize as *const i32,
            val as usize as *const f32,
            2,
            2,
            null(),
            null(),
            out as usize as *mut f32,
            3,
            null_mut(),
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        let mut dev_x = [0f32; 6];
        memcpy_dtoh_sync(&mut dev_x, out).unwrap();
        let mut host_x = [0f32; 6];
        let st = sae_decode_topk_host(
            h,
            hi.as_ptr(),
            hv.as_ptr(),
            2,
            2,
            null(),
            null(),
            host_x.as_mut_ptr(),
            3,
        );
        assert_eq!(st, SaeStatus::Ok);
        assert_eq!(dev_x, host_x);
        // NULL device input with rows > 0 is refused before any copy.
        let st = sae_encode_topk_device(
            h,
            null(),
            2,
            3,
            idx as usize as *mut i32,
            val as usize as *mut f32,
            2,
            null_mut(),
            null_mut(),
            null_mut(),
        );
        assert_eq!(st, SaeStatus::NullArgument);
        for p in [x, idx, val, scale, out] {
            free_sync(p).unwrap();
        }
        sae_free(h);
    }
}

/// Rows fed through `sae_stats_accumulate_host` (in batches that split a document) give
/// the statistics `sae stats` computes from a dump of the same rows: sums, norm
/// histogram, token digest and per-document sums alike; so do host codes with norms.
#[test]
fn stats_from_rows_equal_stats_of_a_dump() {
    use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
    let h = handle(Activation::TopK { k: 2 });
    let (n, d) = (7usize, 3usize);
    let x: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7 % 11) as f32 - 4.0) * 0.37)
        .collect();
    let mask = [0u8, 1, 1, 0, 1, 1, 1];
    let tok: Vec<i64> = (0..n as i64).map(|i| 100 + i * 3).collect();
    let doc = [0i64, 0, 0, 1, 1, 2, 2];
    let dir = tempfile::tempdir().unwrap();
    let dump_path = dir.path().join("dump.safetensors");
    let tensors = [
        ("activations", OwnedTensor::f32(vec![n, d], &x)),
        ("token_ids", OwnedTensor::i64(vec![n], &tok)),
        ("doc_ids", OwnedTensor::i64(vec![n], &doc)),
        ("mask", OwnedTensor::u8(vec![n], &mask)),
    ];
    write_safetensors(&dump_path, &tensors, Default::default()).unwrap();
    let dump = sae_engine::Dump::open(&dump_path).unwrap();
    // SAFETY: `h` is a live handle from `handle` (freed at the end of the test).
    let sae = unsafe { &*h }.sae.clone();
    let want =
        sae_engine::pipeline::stats_of_dump(&Naive(sae.clone()), &dump, 4, true, &|_| {}).unwrap();
    assert!(want.median_norm().is_some() && want.n_docs() == Some(3));
    let read_back = |s: *mut SaeStats, name: &str| {
        let p = dir.path().join(name);
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: `s` is live statistics and `c` a NUL-terminated path.
        assert_eq!(unsafe { sae_stats_write(s, c.as_ptr()) }, SaeStatus::Ok);
        sae_engine::io::stats_file::read(&p).unwrap()
    };
    // SAFETY: `h` and the statistics are live until freed once at the end; the rows,
    // columns and codes are slices of local vectors with the lengths passed.
    unsafe {
        let mut s = null_mut();
        assert_eq!(sae_stats_new(h, &mut s), SaeStatus::Ok);
        // Rows 0..3 then 3..7 (the dump pass read 0..4 then 4..7).
        for (a, b) in [(0, 3), (3, n)] {
            let st = sae_stats_accumulate_host(
                s,
                h,
                x[a * d..].as_ptr(),
                b - a,
                d,
                mask[a..].as_ptr(),
                tok[a..].as_ptr(),
                doc[a..].as_ptr(),
            );
            assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        }
        // A non-finite row fails, naming it, and changes nothing.
        let mut bad = x[..d].to_vec();
        bad[1] = f32::NAN;
        let st = sae_stats_accumulate_host(s, h, bad.as_ptr(), 1, d, null(), null(), null());
        assert_eq!(st, SaeStatus::NonFinite);
        assert!(last_error().contains("row 0"), "{}", last_error());
        // Statistics of another SAE refuse rows encoded by this handle.
        let other = handle(Activation::JumpRelu);
        let mut c = null_mut();
        assert_eq!(sae_stats_new(other, &mut c), SaeStatus::Ok);
        let st = sae_stats_accumulate_host(c, h, x.as_ptr(), 1, d, null(), null(), null());
        assert_eq!(st, SaeStatus::Incompatible);
        assert_eq!(read_back(s, "host.safetensors"), want);

        // The same rows as host codes of the counted rows plus every row's norm.
        let mut t = null_mut();
        assert_eq!(sae_stats_new(h, &mut t), SaeStatus::Ok);
        let kept: Vec<usize> = (0..n).filter(|r| mask[*r] != 0).collect();
        let xk: Vec<f32> = kept
            .iter()
            .flat_map(|r| x[r * d..(r + 1) * d].to_vec())
            .collect();
        let enc = Naive(sae.clone()).encode(&xk, kept.len(), 0).unwrap();
        let Codes::TopK {
            indices, values, k, ..
        } = enc.codes
        else {
            panic!("top-k codes expected")
        };
        let norms = sae_engine::stats::rule::row_norms_of(&x, d, 0).unwrap();
        let st = sae_stats_accumulate_topk_rows(
            t,
            indices.as_ptr(),
            values.as_ptr(),
            kept.len(),
            k,
            norms.as_ptr(),
            n,
            mask.as_ptr(),
            tok.as_ptr(),
            doc.as_ptr(),
        );
        assert_eq!(st, SaeStatus::Ok, "{}", last_error());
        // Codes for the wrong number of rows are refused.
        let st = sae_stats_accumulate_topk_rows(
            t,
            indices.as_ptr(),
            values.as_ptr(),
            1,
            k,
            norms.as_ptr(),
            n,
            mask.as_ptr(),
            null(),
            null(),
        );
        assert_eq!(st, SaeStatus::InvalidArgument);
        assert_eq!(read_back(t, "codes.safetensors"), want);
        assert_eq!(
            sae_stats_set_outlier_factor(t, 1.0),
            SaeStatus::InvalidArgument
        );
        assert_eq!(sae_stats_set_outlier_factor(t, 4.0), SaeStatus::Ok);
        assert_eq!(read_back(t, "t4.safetensors").outlier_factor, 4.0);
        for p in [s, t, c] {
            sae_stats_free(p);
        }
        sae_free(other);
    }
    // SAFETY: `h` is live and freed once, here.
    unsafe { sae_free(h) };
}
