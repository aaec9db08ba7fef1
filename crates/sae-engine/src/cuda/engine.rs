//! `CudaEngine`: the `Engine` trait on one CUDA device. Inputs are checked and normalized on
//! the host exactly as the CPU reference does (src/sae/mod.rs), then staged through pinned,
//! double-buffered host memory: while the device encodes chunk i, the host prepares chunk i+1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUstream};
use cudarc::driver::{result as drv, CudaEvent, PinnedHostSlice, PushKernelArg};

use super::device::{cuda_err, Gpu};
use super::device_ptr::{staged_encode_topk, DecodeTopkDevice, DevicePtrOps, EncodeTopkDevice};
use super::encode::{self, Plan, Precision, Workspace};
use super::gemm::GemmMode;
use super::launch::{self, DecodeExtras, DeviceCodes, DeviceStats};
use super::plan::{self, DeviceMemory, MemoryRequest};
use super::weights::{DeviceSae, BOUND_BLOCK};
use crate::backend::{Engine, EngineOptions, Workload};
use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
use crate::sae::{Activation, Normalization, Sae};

/// CUDA-specific settings.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// GEMM arithmetic (default Exact: same results as the CPU engine up to summation order).
    /// Through `cuda::engine`: `EngineOptions::precision`.
    pub precision: Precision,
    /// Latents per tile (rounded up to 128); None: the largest that fits the workspace.
    pub tile_latents: Option<usize>,
    /// Most rows encoded per chunk (the workspace may force fewer).
    pub max_rows: usize,
    /// Device memory beyond the weights, in bytes.
    pub workspace_bytes: usize,
    /// Fast precision with bf16 weights: write bf16 scores (Some(true)), f32 scores
    /// (Some(false)), or decide by size (None: see `encode::BF16_SCORES_MIN_LATENTS`).
    pub bf16_scores: Option<bool>,
    /// How the encoder GEMM picks its algorithm (`EngineOptions::cuda_gemm`).
    pub gemm: GemmMode,
    /// TopK: two half-width score buffers, the top-k pass of one tile on a second stream
    /// while the GEMM fills the other (`EngineOptions::cuda_overlap`; default off until
    /// measured faster, see BENCHMARKS.md).
    pub overlap: bool,
    /// Compile the embedded kernel sources with NVRTC even when fatbins are embedded
    /// (`EngineOptions::cuda_force_nvrtc`).
    pub force_nvrtc: bool,
}

impl CudaOptions {
    /// From the shared engine options (the tile width is planned from the workspace).
    pub fn from_engine(opts: &EngineOptions) -> CudaOptions {
        CudaOptions {
            precision: opts.precision,
            tile_latents: None,
            max_rows: 4096,
            workspace_bytes: opts.workspace_bytes,
            bf16_scores: None,
            gemm: opts.cuda_gemm,
            overlap: opts.cuda_overlap,
            force_nvrtc: opts.cuda_force_nvrtc,
        }
    }
}

/// Device-memory settings of a CUDA engine (see [`super::plan`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// What the engine will do: W_dec is uploaded only when it decodes.
    pub workload: Workload,
    /// Most device memory the engine may take, weights included.
    pub limit: Option<u64>,
}

impl MemoryOptions {
    /// From the shared engine options.
    pub fn from_engine(opts: &EngineOptions) -> MemoryOptions {
        MemoryOptions {
            workload: opts.workload,
            limit: opts.device_memory_limit,
        }
    }
}

/// What the memory plan needs of `sae` and the options, known before anything is uploaded.
fn memory_request(sae: &Sae, opts: &CudaOptions, mem: MemoryOptions) -> MemoryRequest {
    let l = sae.n_latents() as u64;
    let per_latent = 1 // b_enc
        + u64::from(sae.threshold.is_some())
        + u64::from(sae.rescale_acts_by_decoder_norm);
    let blocks = l.div_ceil(BOUND_BLOCK as u64) * (1 + u64::from(sae.rescale_acts_by_decoder_norm));
    MemoryRequest {
        shape: encode::TileShape {
            d_in: sae.d_in(),
            n_latents: sae.n_latents(),
            k: sae.k().unwrap_or(0),
            dtype: sae.w_enc.dtype(),
        },
        encoder_bytes: sae.w_enc.size_bytes() as u64,
        decoder_bytes: sae.w_dec.size_bytes() as u64,
        vector_bytes: 4 * (l * per_latent + sae.d_in() as u64 + blocks),
        workload: mem.workload,
        workspace_bytes: opts.workspace_bytes,
        max_rows: opts.max_rows,
        precision: opts.precision,
        tile_override: opts.tile_latents,
        bf16_scores: opts.bf16_scores,
        limit: mem.limit,
    }
}

/// Pinned staging for one chunk: input activations and the codes coming back.
struct Slot {
    x: PinnedHostSlice<f32>,
    idx: PinnedHostSlice<i32>,
    val: PinnedHostSlice<f32>,
    bad: PinnedHostSlice<i32>,
    done: CudaEvent,
}

struct State {
    ws: Workspace,
    slots: Vec<Slot>,
}

/// One model's codes in a statistics batch: (model index, codes, optional row mask).
pub type StatsPart<'a> = (usize, &'a Codes, Option<&'a [u8]>);

/// The CUDA engine bound to one SAE on one device.
pub struct CudaEngine {
    sae: Arc<Sae>,
    dsae: DeviceSae,
    opts: CudaOptions,
    state: Mutex<Option<State>>,
    /// Chunks re-encoded with f32 scores because a bf16-path selection was not certified.
    fallbacks: AtomicUsize,
    /// W_dec is on the device (false for encode-only engines: decoding is refused).
    decoder_resident: bool,
    // Declared last: dropped after the device buffers above.
    gpu: Gpu,
}

impl CudaEngine {
    /// Opens `device`, uploads the SAE's weights once (both matrices, no memory limit).
    pub fn new(device: usize, sae: Arc<Sae>, opts: CudaOptions) -> Result<CudaEngine> {
        CudaEngine::with_memory(device, sae, opts, MemoryOptions::default())
    }

    /// Opens `device` and plans its memory before uploading anything (see [`plan`]): the
    /// free memory (capped by `mem.limit`) must hold the weights `mem.workload` needs, else
    /// the SAE is refused naming the sizes; the workspace shrinks to what they leave.
    pub fn with_memory(
        device: usize,
        sae: Arc<Sae>,
        mut opts: CudaOptions,
        mem: MemoryOptions,
    ) -> Result<CudaEngine> {
        if let Some(k) = sae.k() {
            if k > encode::MAX_K {
                return Err(Error::invalid(format!(
                    "the CUDA backend supports k <= {} (this SAE has k = {k}); use --backend cpu",
                    encode::MAX_K
                )));
            }
        }
        if sae.n_latents() > i32::MAX as usize || sae.d_in() > i32::MAX as usize {
            return Err(Error::invalid("SAE dimensions exceed 2^31"));
        }
        let gpu = Gpu::open_with(device, opts.force_nvrtc)?;
        gpu.bind()?;
        let (free, total) = drv::mem_get_info().map_err(cuda_err("device memory query"))?;
        let memory = DeviceMemory {
            free: free as u64,
            total: total as u64,
        };
        let mplan = plan::plan_memory(&memory_request(&sae, &opts, mem), memory)
            .map_err(|e| Error::invalid(format!("cuda:{device} ({}): {e}", gpu.info.name)))?;
        opts.workspace_bytes = mplan.workspace_bytes;
        let dsae = DeviceSae::upload_for(&gpu, &sae, mplan.upload_decoder)?;
        Ok(CudaEngine {
            sae,
            dsae,
            opts,
            state: Mutex::new(None),
            fallbacks: AtomicUsize::new(0),
            decoder_resident: mplan.upload_decoder,
            gpu,
        })
    }

    /// Refuses decoder use on an encode-only engine (its W_dec stayed on the host).
    fn require_decoder(&self) -> Result<()> {
        if self.decoder_resident {
            return Ok(());
        }
        Err(Error::invalid(
            "this CUDA engine was opened to encode only (EngineOptions::workload): W_dec is \
             not on the device, so it cannot decode or steer",
        ))
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The SAE's device tensors.
    pub fn device_sae(&self) -> &DeviceSae {
        &self.dsae
    }

    /// How many chunks were re-encoded with f32 scores (bf16-score selection not certified).
    pub fn fallback_chunks(&self) -> usize {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The CUDA options in force.
    pub fn options(&self) -> &CudaOptions {
        &self.opts
    }

    /// The chunk/tile plan for this SAE and options.
    pub fn plan(&self) -> Result<Plan> {
        encode::plan(
            &self.dsae,
            self.opts.precision,
            self.opts.workspace_bytes,
            self.opts.max_rows,
            self.opts.tile_latents,
            self.opts.bf16_scores,
        )
        .map(|p| {
            if self.opts.overlap && self.sae.activation.is_topk() {
                p.double_buffered()
            } else {
                p
            }
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.gpu.bind()?;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| Error::Cuda("engine state poisoned by an earlier panic".into()))?;
        if guard.is_none() {
            let plan = self.plan()?;
            let ws = Workspace::new(
                &self.gpu,
                &self.dsae,
                self.opts.precision,
                plan,
                self.opts.gemm,
            )?;
            let k = self.sae.k().unwrap_or(0);
            let mut slots = Vec::new();
            for _ in 0..2 {
                // SAFETY: plain page-locked host allocations; the write-combined input is only
                // written by the host, the outputs are read back by the host (default flags).
                let slot = unsafe {
                    Slot {
                        x: self
                            .gpu
                            .ctx
                            .alloc_pinned::<f32>(plan.rows * self.dsae.d_in)
                            .map_err(cuda_err("pinned staging"))?,
                        idx: self
                            .gpu
                            .ctx
                            .alloc_pinned_with_flags::<i32>((plan.rows * k).max(1), 0)
                            .map_err(cuda_err("pinned staging"))?,
                        val: self
                            .gpu
                            .ctx
                            .alloc_pinned_with_flags::<f32>((plan.rows * k).max(1), 0)
                            .map_err(cuda_err("pinned staging"))?,
                        bad: self
                            .gpu
                            .ctx
                            .alloc_pinned_with_flags::<i32>(2, 0)
                            .map_err(cuda_err("pinned staging"))?,
                        done: self.gpu.ctx.new_event(None).map_err(cuda_err("event"))?,
                    }
                };
                slots.push(slot);
            }
            *guard = Some(State { ws, slots });
        }
        match guard.as_mut() {
            Some(s) => f(s),
            None => Err(Error::Cuda("engine state missing".into())),
        }
    }

    /// Normalizes and centers rows of `x` into `dst` exactly as the CPU engine does (same
    /// `Normalization::apply`, same f32 subtraction), appending to `denorm`. `first_row` is
    /// the global index of x's first row, for the error of a row that normalizes to non-finite.
    fn preprocess(
        &self,
        x: &[f32],
        dst: &mut [f32],
        denorm: &mut Option<Denorm>,
        first_row: u64,
    ) -> Result<()> {
        let d = self.sae.d_in();
        dst.copy_from_slice(x);
        for (r, row) in dst.chunks_exact_mut(d).enumerate() {
            if let Some(rd) = self.sae.normalization.apply(row) {
                if let Some(dn) = denorm.as_mut() {
                    dn.scale.push(rd.scale);
                    dn.shift.push(rd.shift);
                }
            }
            if self.sae.subtract_b_dec {
                for (v, b) in row.iter_mut().zip(&self.sae.b_dec) {
                    *v -= *b;
                }
            }
            // A constant row under layer_norm with eps = 0 divides by zero.
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    context: "encode input after normalization".into(),
                    row: first_row + r as u64,
                });
            }
        }
        Ok(())
    }

    /// A non-finite pre-activation flagged by a kernel for `row`, whose (finite) input is
    /// `x_row`: the latent is found by recomputing that one row on the host (O(L d), on
    /// the error path only), so the error names the SAE and the latent as the CPU's does.
    fn bad_preactivation(&self, row: u64, x_row: &[f32]) -> Error {
        match crate::cpu::reference::first_non_finite_latent(&self.sae, x_row) {
            Some((latent, value)) => self.sae.non_finite_preactivation(latent, value, row),
            // The device overflowed where the host's f64 sums did not.
            None => Error::NonFinite {
                context: format!(
                    "encode: {}: non-finite pre-activation on the device (f32 overflow in the \
                     SAE's encoder product)",
                    self.sae.meta.source.display()
                ),
                row,
            },
        }
    }

    fn encode_topk(
        &self,
        x: &[f32],
        rows: usize,
        k: usize,
        denorm: &mut Option<Denorm>,
        row_offset: u64,
    ) -> Result<Codes> {
        let d = self.sae.d_in();
        let mut indices = vec![0i32; rows * k];
        let mut values = vec![0f32; rows * k];
        self.with_state(|st| {
            let r = st.ws.plan.rows;
            let chunks: Vec<(usize, usize)> =
                (0..rows).step_by(r).map(|s| (s, r.min(rows - s))).collect();
            let stream = self.gpu.stream.cu_stream();
            let mut redo = Vec::new();
            let collect = |st: &mut State,
                           c: usize,
                           indices: &mut [i32],
                           values: &mut [f32],
                           redo: &mut Vec<usize>|
             -> Result<()> {
                let (s, n) = chunks[c];
                let slot = &st.slots[c % 2];
                slot.done
                    .synchronize()
                    .map_err(cuda_err("waiting for a chunk"))?;
                let flags = slot.bad.as_slice().map_err(cuda_err("pinned"))?;
                let (bad, retry) = (flags[0], flags[1]);
                if bad != i32::MAX {
                    let r = s + bad as usize;
                    return Err(
                        self.bad_preactivation(row_offset + r as u64, &x[r * d..(r + 1) * d])
                    );
                }
                if retry != i32::MAX {
                    redo.push(c);
                }
                indices[s * k..(s + n) * k]
                    .copy_from_slice(&slot.idx.as_slice().map_err(cuda_err("pinned"))?[..n * k]);
                values[s * k..(s + n) * k]
                    .copy_from_slice(&slot.val.as_slice().map_err(cuda_err("pinned"))?[..n * k]);
                Ok(())
            };
            for (c, &(s, n)) in chunks.iter().enumerate() {
                // The slot was last used by chunk c - 2, collected before chunk c - 1 was queued.
                let slot = &mut st.slots[c % 2];
                let xs = slot.x.as_mut_slice().map_err(cuda_err("pinned"))?;
                self.preprocess(
                    &x[s * d..(s + n) * d],
                    &mut xs[..n * d],
                    denorm,
                    row_offset + s as u64,
                )?;
                // SAFETY: x32 holds plan.rows * d f32; the pinned source stays untouched until
                // `done` of this slot has been waited for.
                unsafe { drv::memcpy_htod_async(st.ws.x32.ptr, &xs[..n * d], stream) }
                    .map_err(cuda_err("staging copy"))?;
                let bad_dev = st.ws.bad.at((c % 2) * 8);
                encode::encode_topk_chunk(&self.gpu, &self.dsae, &st.ws, n, k, false, bad_dev)?;
                let (idx, val) = match (&st.ws.idx, &st.ws.val) {
                    (Some(i), Some(v)) => (i.ptr, v.ptr),
                    _ => return Err(Error::Cuda("top-k workspace missing outputs".into())),
                };
                let slot = &mut st.slots[c % 2];
                // SAFETY: idx/val on the device hold n * k elements written by topk_finish on this
                // stream; the pinned destinations hold plan.rows * k.
                unsafe {
                    drv::memcpy_dtoh_async(
                        &mut slot.idx.as_mut_slice().map_err(cuda_err("pinned"))?[..n * k],
                        idx,
                        stream,
                    )
                    .map_err(cuda_err("codes copy"))?;
                    drv::memcpy_dtoh_async(
                        &mut slot.val.as_mut_slice().map_err(cuda_err("pinned"))?[..n * k],
                        val,
                        stream,
                    )
                    .map_err(cuda_err("codes copy"))?;
                    drv::memcpy_dtoh_async(
                        slot.bad.as_mut_slice().map_err(cuda_err("pinned"))?,
                        bad_dev,
                        stream,
                    )
                    .map_err(cuda_err("codes copy"))?;
                }
                slot.done
                    .record(&self.gpu.stream)
                    .map_err(cuda_err("event record"))?;
                if c > 0 {
                    collect(st, c - 1, &mut indices, &mut values, &mut redo)?;
                }
            }
            if let Some(last) = chunks.len().checked_sub(1) {
                collect(st, last, &mut indices, &mut values, &mut redo)?;
            }
            // Chunks whose bf16-score selection was not certified: again with f32 scores.
            for c in redo {
                let (s, n) = chunks[c];
                let xs = st.slots[0].x.as_mut_slice().map_err(cuda_err("pinned"))?;
                let mut scratch = denorm.as_ref().map(|_| Denorm::default());
                self.preprocess(
                    &x[s * d..(s + n) * d],
                    &mut xs[..n * d],
                    &mut scratch,
                    row_offset + s as u64,
                )?;
                self.gpu.htod(st.ws.x32.ptr, &xs[..n * d])?;
                let flags = st.ws.bad.ptr;
                encode::encode_topk_chunk_f32(&self.gpu, &self.dsae, &st.ws, n, k, flags)?;
                self.fetch_codes(
                    &st.ws,
                    n,
                    k,
                    flags,
                    &mut indices[s * k..(s + n) * k],
                    &mut values[s * k..(s + n) * k],
                    row_offset + s as u64,
                    &x[s * d..(s + n) * d],
                )?;
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(Codes::TopK {
            n: rows,
            k,
            indices,
            values,
        })
    }

    /// Copies a chunk's codes (ws.idx / ws.val) into host slices, synchronously, after
    /// checking its flags for a non-finite pre-activation.
    #[allow(clippy::too_many_arguments)]
    fn fetch_codes(
        &self,
        ws: &Workspace,
        n: usize,
        k: usize,
        flags: u64,
        indices: &mut [i32],
        values: &mut [f32],
        first_row: u64,
        x: &[f32],
    ) -> Result<()> {
        let mut f = [0i32; 2];
        self.gpu.dtoh(&mut f, flags)?;
        if f[0] != i32::MAX {
            let (r, d) = (f[0] as usize, self.sae.d_in());
            return Err(self.bad_preactivation(first_row + r as u64, &x[r * d..(r + 1) * d]));
        }
        let (idx, val) = match (&ws.idx, &ws.val) {
            (Some(i), Some(v)) => (i.ptr, v.ptr),
            _ => return Err(Error::Cuda("top-k workspace missing outputs".into())),
        };
        self.gpu.dtoh(&mut indices[..n * k], idx)?;
        self.gpu.dtoh(&mut values[..n * k], val)
    }

    fn encode_csr(
        &self,
        x: &[f32],
        rows: usize,
        denorm: &mut Option<Denorm>,
        row_offset: u64,
    ) -> Result<Codes> {
        let d = self.sae.d_in();
        let mut out = Codes::empty(None);
        self.with_state(|st| {
            let r = st.ws.plan.rows;
            for s in (0..rows).step_by(r) {
                let n = r.min(rows - s);
                let slot = &mut st.slots[0];
                let xs = slot.x.as_mut_slice().map_err(cuda_err("pinned"))?;
                self.preprocess(
                    &x[s * d..(s + n) * d],
                    &mut xs[..n * d],
                    denorm,
                    row_offset + s as u64,
                )?;
                self.gpu.htod(st.ws.x32.ptr, &xs[..n * d])?;
                let (row_ptr, indices, values) =
                    match encode::encode_csr_chunk(&self.gpu, &self.dsae, &st.ws, n)? {
                        Ok(c) => c,
                        Err(r) => {
                            let r = s + r;
                            return Err(self
                                .bad_preactivation(row_offset + r as u64, &x[r * d..(r + 1) * d]));
                        }
                    };
                out.append(&Codes::Csr {
                    n,
                    row_ptr,
                    indices,
                    values,
                })?;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Decodes and, when `x` (the original activations) is given, returns per-row
    /// [||x - x_hat||^2, ||x||^2, ||x_hat||^2, x . x_hat] computed in the same kernel.
    pub fn decode_with_metrics(
        &self,
        codes: &Codes,
        denorm: Option<&Denorm>,
        x: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Vec<[f64; 4]>)> {
        self.gpu.bind()?;
        let codes = &*self.sae.codes_for_decoding(codes);
        let d = self.sae.d_in();
        let n = codes.n_rows();
        codes.validate(self.sae.n_latents())?;
        if let Some(dn) = denorm {
            if dn.scale.len() != n || dn.shift.len() != n {
                return Err(Error::invalid(format!(
                    "denorm has {} scales for {n} rows of codes",
                    dn.scale.len()
                )));
            }
        }
        if let Some(x) = x {
            if x.len() != n * d {
                return Err(Error::invalid(format!(
                    "metrics input has {} values, expected {n} x {d}",
                    x.len()
                )));
            }
        }
        let mut out = vec![0f32; n * d];
        let mut metrics = vec![[0f64; 4]; if x.is_some() { n } else { 0 }];
        if n == 0 {
            return Ok((out, metrics));
        }
        // Row chunks bounded by the workspace: output (and x) f32 rows plus their codes.
        let per_row = d * 4 * if x.is_some() { 2 } else { 1 } + 64;
        let chunk = (self.opts.workspace_bytes / 2 / per_row).clamp(1, 65536);
        for s in (0..n).step_by(chunk) {
            let m = chunk.min(n - s);
            let part = slice_rows(codes, s, m);
            let dc = DeviceCodes::upload(&self.gpu, &part)?;
            let out_d = self.gpu.alloc(m * d * 4)?;
            let mut ex = DecodeExtras::default();
            // Buffers live until the end of this iteration (the decode below reads them).
            let mut keep = Vec::new();
            if let Some(dn) = denorm {
                let a = self.gpu.upload(&dn.scale[s..s + m])?;
                let b = self.gpu.upload(&dn.shift[s..s + m])?;
                ex.scale = a.ptr;
                ex.shift = b.ptr;
                keep.push(a);
                keep.push(b);
            }
            let metd = match x {
                Some(x) => {
                    let xd = self.gpu.upload(&x[s * d..(s + m) * d])?;
                    let md = self.gpu.alloc(m * 32)?;
                    ex.x = xd.ptr;
                    ex.metrics = md.ptr;
                    keep.push(xd);
                    Some(md)
                }
                None => None,
            };
            self.require_decoder()?;
            launch::decode(
                &self.gpu,
                &self.dsae,
                m,
                dc.row_ptr.ptr,
                dc.idx.ptr,
                dc.val.ptr,
                out_d.ptr,
                ex,
            )?;
            self.gpu.dtoh(&mut out[s * d..(s + m) * d], out_d.ptr)?;
            if let Some(md) = metd {
                let mut flat = vec![0f64; m * 4];
                self.gpu.dtoh(&mut flat, md.ptr)?;
                for (i, c) in flat.chunks_exact(4).enumerate() {
                    metrics[s + i] = [c[0], c[1], c[2], c[3]];
                }
            }
        }
        Ok((out, metrics))
    }

    /// Adds `strength * W_dec[latent] / ||W_dec[latent]||` to every row of `x` (`[rows, d]`).
    pub fn steer(&self, x: &mut [f32], rows: usize, latent: usize, strength: f32) -> Result<()> {
        self.gpu.bind()?;
        let d = self.sae.d_in();
        if x.len() != rows * d {
            return Err(Error::invalid(format!(
                "steer: {} values for {rows} rows of width {d}",
                x.len()
            )));
        }
        if latent >= self.sae.n_latents() {
            return Err(Error::invalid(format!(
                "steer: latent {latent} out of range 0..{}",
                self.sae.n_latents()
            )));
        }
        let norm = self
            .sae
            .w_dec
            .row_f32(latent)
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Err(Error::invalid(format!(
                "steer: decoder row {latent} is zero"
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        let xd = self.gpu.upload(x)?;
        self.require_decoder()?;
        launch::steer(
            &self.gpu,
            &self.dsae,
            xd.ptr,
            rows,
            latent,
            (strength as f64 / norm) as f32,
        )?;
        self.gpu.dtoh(x, xd.ptr)
    }

    /// Statistics of several models' codes in one launch per call (`parts[i] = (model, codes, mask)`).
    pub fn batched_stats(
        &self,
        n_models: usize,
        batches: &[Vec<StatsPart<'_>>],
    ) -> Result<Vec<crate::LatentStats>> {
        self.gpu.bind()?;
        let mut st = DeviceStats::new(&self.gpu, n_models, self.sae.n_latents())?;
        for b in batches {
            st.add(&self.gpu, b)?;
        }
        st.to_host(&self.gpu, &self.sae.fingerprint())
    }
}

/// Rows s..s+m of `codes` as their own codes (CSR offsets rebased).
fn slice_rows(codes: &Codes, s: usize, m: usize) -> Codes {
    match codes {
        Codes::TopK {
            k, indices, values, ..
        } => Codes::TopK {
            n: m,
            k: *k,
            indices: indices[s * k..(s + m) * k].to_vec(),
            values: values[s * k..(s + m) * k].to_vec(),
        },
        Codes::Csr {
            row_ptr,
            indices,
            values,
            ..
        } => {
            let (a, b) = (row_ptr[s] as usize, row_ptr[s + m] as usize);
            Codes::Csr {
                n: m,
                row_ptr: row_ptr[s..=s + m].iter().map(|p| p - a as i64).collect(),
                indices: indices[a..b].to_vec(),
                values: values[a..b].to_vec(),
            }
        }
    }
}

/// The first row of `x` holding a NaN or infinity.
pub fn first_non_finite(x: &[f32], d: usize) -> Option<usize> {
    if d == 0 {
        return None;
    }
    x.chunks_exact(d)
        .position(|r| r.iter().any(|v| !v.is_finite()))
}

impl Engine for CudaEngine {
    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {:?})",
            self.gpu.info.ordinal, self.gpu.info.name, self.opts.precision
        )
    }

    fn sae(&self) -> &Sae {
        &self.sae
    }

    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
        let d = self.sae.d_in();
        if x.len() != rows * d {
            return Err(Error::invalid(format!(
                "encode: {} values for {rows} rows of width {d}",
                x.len()
            )));
        }
        if let Some(r) = first_non_finite(x, d) {
            return Err(Error::NonFinite {
                context: "encode input".into(),
                row: row_offset + r as u64,
            });
        }
        let mut denorm = match self.sae.normalization {
            Normalization::None => None,
            _ => Some(Denorm::default()),
        };
        let codes = match self.sae.activation {
            Activation::TopK { k } if rows == 0 => Codes::empty(Some(k)),
            Activation::TopK { k } => self.encode_topk(x, rows, k, &mut denorm, row_offset)?,
            _ if rows == 0 => Codes::empty(None),
            _ => self.encode_csr(x, rows, &mut denorm, row_offset)?,
        };
        let mut codes = codes;
        self.sae.scale_codes(&mut codes);
        Ok(Encoded { codes, denorm })
    }

    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        Ok(self.decode_with_metrics(codes, denorm, None)?.0)
    }

    fn device_ptr(&self) -> Option<&dyn DevicePtrOps> {
        // Per-latent code scales are applied on the host; device-pointer callers
        // would get codes without them, so those SAEs have no device-pointer path.
        self.sae
            .scales
            .is_empty()
            .then_some(self as &dyn DevicePtrOps)
    }
}

/// An event recorded on `from` that `to` waits for: work queued on `to` afterwards starts
/// only once everything queued on `from` so far is done (no host synchronization).
///
/// # Safety
/// Both streams belong to the current context (0 = the legacy default stream).
unsafe fn order_after(from: CUstream, to: CUstream) -> Result<()> {
    let ev = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
        .map_err(cuda_err("event create"))?;
    // SAFETY: `ev` was just created in the current context; both streams belong to it
    // (this function's contract).
    let r = unsafe {
        drv::event::record(ev, from).and_then(|_| {
            drv::stream::wait_event(to, ev, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
        })
    }
    .map_err(cuda_err("stream ordering"));
    // SAFETY: `ev` is ours and destroyed once; destroying a recorded event is allowed, the
    // wait keeps its own reference.
    let _ = unsafe { drv::event::destroy(ev) };
    r
}

impl CudaEngine {
    /// [`CudaEngine::bad_preactivation`] for a row of the caller's device input `x`
    /// (f32 `[rows, d_in]`): that one row is copied to the host first.
    fn bad_preactivation_on_device(&self, x: u64, row: u64) -> Result<Error> {
        let d = self.sae.d_in();
        let mut host = vec![0f32; d];
        self.gpu.dtoh(&mut host, x + row * (d as u64) * 4)?;
        Ok(self.bad_preactivation(row, &host))
    }

    /// The in-place device encode: the caller's rows are copied device-to-device into the
    /// workspace (b_dec subtracted, finiteness checked on the device), encoded, and the codes
    /// copied into the caller's buffers; our stream first waits for the caller's and the
    /// caller's then waits for ours. SAEs that normalize go through the staged path.
    ///
    /// # Safety
    /// As [`DevicePtrOps::encode_topk_device`].
    unsafe fn encode_topk_inplace(&self, a: &EncodeTopkDevice, k: usize) -> Result<()> {
        let d = self.sae.d_in();
        let caller = a.stream as usize as CUstream;
        self.with_state(|st| {
            let ours = self.gpu.stream.cu_stream();
            // SAFETY: the caller's stream belongs to the current context (this function's
            // contract); ours is the engine's.
            unsafe { order_after(caller, ours)? };
            let r = st.ws.plan.rows;
            let chunks: Vec<(usize, usize)> = (0..a.rows)
                .step_by(r)
                .map(|s| (s, r.min(a.rows - s)))
                .collect();
            // Per chunk: [bad pre-activation, retry, non-finite input, non-finite after b_dec].
            let flags = self.gpu.alloc(chunks.len().max(1) * 16)?;
            let b_dec = if self.sae.subtract_b_dec {
                self.dsae.b_dec.ptr
            } else {
                0
            };
            let prep = self.gpu.kernel("prep_input_f32")?;
            let d32 = d as i32;
            let run_chunk = |c: usize, fallback: bool| -> Result<()> {
                let (s, n) = chunks[c];
                let f = flags.at(c * 16);
                self.gpu.htod(f + 8, &[i32::MAX, i32::MAX])?;
                let src = a.x + (s * d * 4) as u64;
                let len = (n * d) as i64;
                let in_flags = f + 8;
                let mut b = self.gpu.stream.launch_builder(prep);
                b.arg(&src)
                    .arg(&st.ws.x32.ptr)
                    .arg(&len)
                    .arg(&d32)
                    .arg(&b_dec)
                    .arg(&in_flags);
                // SAFETY: prep_input_f32(x, out, n, d, b_dec|null, bad[2]): the caller's x holds
                // rows * d f32 (this chunk is inside it), x32 holds plan.rows * d.
                unsafe { b.launch(self.gpu.grid_for(n * d, 256)) }
                    .map_err(cuda_err("launching prep_input_f32"))?;
                if fallback {
                    encode::encode_topk_chunk_f32(&self.gpu, &self.dsae, &st.ws, n, k, f)?;
                } else {
                    encode::encode_topk_chunk(&self.gpu, &self.dsae, &st.ws, n, k, false, f)?;
                }
                let (idx, val) = match (&st.ws.idx, &st.ws.val) {
                    (Some(i), Some(v)) => (i.ptr, v.ptr),
                    _ => return Err(Error::Cuda("top-k workspace missing outputs".into())),
                };
                let bytes = n * k * 4;
                // SAFETY: the caller's outputs hold rows * k elements (this function's
                // contract); ws idx/val hold n * k; both on this context, ordered on `ours`.
                unsafe {
                    drv::memcpy_dtod_async(a.out_indices + (s * k * 4) as u64, idx, bytes, ours)
                        .and_then(|_| {
                            drv::memcpy_dtod_async(
                                a.out_values + (s * k * 4) as u64,
                                val,
                                bytes,
                                ours,
                            )
                        })
                }
                .map_err(cuda_err("codes copy"))
            };
            for c in 0..chunks.len() {
                run_chunk(c, false)?;
            }
            // The flags decide errors and fallbacks: one synchronization per call.
            let mut host = vec![0i32; chunks.len() * 4];
            self.gpu.dtoh(&mut host, flags.ptr)?;
            let first = |slot: usize, what: &str| -> Result<()> {
                for (c, f) in host.chunks_exact(4).enumerate() {
                    if f[slot] != i32::MAX {
                        let row = (chunks[c].0 + f[slot] as usize) as u64;
                        return Err(match slot {
                            0 => self.bad_preactivation_on_device(a.x, row)?,
                            _ => Error::NonFinite {
                                context: what.into(),
                                row,
                            },
                        });
                    }
                }
                Ok(())
            };
            first(2, "encode input")?;
            first(3, "encode input after normalization")?;
            first(0, "")?;
            for (c, f) in host.chunks_exact(4).enumerate() {
                if f[1] != i32::MAX {
                    run_chunk(c, true)?;
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let mut g = [0i32; 1];
                    self.gpu.dtoh(&mut g, flags.at(c * 16))?;
                    if g[0] != i32::MAX {
                        let row = (chunks[c].0 + g[0] as usize) as u64;
                        return Err(self.bad_preactivation_on_device(a.x, row)?);
                    }
                }
            }
            // No normalization: the denorm constants are the identity.
            if a.out_scale != 0 {
                self.gpu.htod(a.out_scale, &vec![1.0f32; a.rows])?;
            }
            if a.out_shift != 0 {
                self.gpu.htod(a.out_shift, &vec![0.0f32; a.rows])?;
            }
            // SAFETY: as the first ordering above.
            unsafe { order_after(ours, caller) }
        })
    }
}

impl DevicePtrOps for CudaEngine {
    /// # Safety
    /// As [`DevicePtrOps::encode_topk_device`].
    unsafe fn encode_topk_device(&self, a: &EncodeTopkDevice) -> Result<()> {
        let k = self
            .sae
            .k()
            .ok_or_else(|| Error::invalid("device-pointer encoding covers TopK SAEs only"))?;
        self.gpu.bind()?;
        if a.rows == 0 {
            return Ok(());
        }
        match self.sae.normalization {
            // SAFETY: the caller upholds `encode_topk_device`'s contract, which is theirs;
            // `bind` above made this engine's context current.
            Normalization::None => unsafe { self.encode_topk_inplace(a, k) },
            // Normalization runs on the host (the CPU reference's arithmetic).
            // SAFETY: as above.
            _ => unsafe { staged_encode_topk(self, a) },
        }
    }

    /// # Safety
    /// As [`DevicePtrOps::decode_topk_device`].
    unsafe fn decode_topk_device(&self, a: &DecodeTopkDevice) -> Result<()> {
        self.gpu.bind()?;
        if a.k == 0 {
            return Err(Error::invalid("decode with k = 0"));
        }
        let mut ex = DecodeExtras::default();
        match (a.scale, a.shift) {
            (0, 0) => {}
            (s, h) if s != 0 && h != 0 => {
                ex.scale = s;
                ex.shift = h;
            }
            _ => return Err(Error::invalid("pass both scale and shift, or neither")),
        }
        if a.rows == 0 {
            return Ok(());
        }
        let row_ptr: Vec<i64> = (0..=a.rows).map(|r| (r * a.k) as i64).collect();
        let rp = self.gpu.upload(&row_ptr)?;
        let caller = a.stream as usize as CUstream;
        let ours = self.gpu.stream.cu_stream();
        self.require_decoder()?;
        // SAFETY: the caller's stream belongs to the bound context (this function's contract).
        unsafe { order_after(caller, ours)? };
        launch::decode(
            &self.gpu, &self.dsae, a.rows, rp.ptr, a.indices, a.values, a.out_x, ex,
        )?;
        // SAFETY: as above.
        unsafe { order_after(ours, caller)? };
        // row_ptr is freed on return: let the decode finish reading it first.
        self.gpu.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every CUDA knob comes from `EngineOptions` (no environment variable overrides one;
    /// src/env.rs checks that no code outside it reads the environment).
    #[test]
    fn cuda_options_come_from_engine_options() {
        let d = CudaOptions::from_engine(&EngineOptions::default());
        assert_eq!(
            (d.precision, d.gemm, d.overlap, d.force_nvrtc),
            (Precision::Exact, GemmMode::Auto, false, false)
        );
        let o = CudaOptions::from_engine(&EngineOptions {
            precision: Precision::Fast,
            cuda_gemm: GemmMode::Cublas,
            cuda_overlap: true,
            cuda_force_nvrtc: true,
            workspace_bytes: 123 << 20,
            ..EngineOptions::default()
        });
        assert_eq!(
            (
                o.precision,
                o.gemm,
                o.overlap,
                o.force_nvrtc,
                o.workspace_bytes
            ),
            (Precision::Fast, GemmMode::Cublas, true, true, 123 << 20)
        );
    }
}
