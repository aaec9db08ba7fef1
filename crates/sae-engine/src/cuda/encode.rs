//! Tiled encode on the device: cuBLAS GEMM of one latent tile into scratch, then the
//! streaming top-k (TopK) or threshold compaction (ReLU, JumpReLU) over that tile.
//! Device memory beyond the weights is the workspace planned here from
//! `workspace_bytes`: rows per chunk and latents per tile shrink to fit it.

use cudarc::driver::PushKernelArg;

use super::device::{DevBuf, Gpu};
use super::gemm::{self, GemmMode, GemmPtrs, GemmSpec};
use super::weights::DeviceSae;
pub use crate::backend::Precision;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::Layout;
use crate::sae::Activation;
use cudarc::driver::CudaEvent;

const TOPK_THREADS: u32 = 256;
const THR_THREADS: u32 = 256;
/// The top-k kernel keeps kept + survivors in 2048 shared slots; k <= 512 leaves room.
pub const MAX_K: usize = 512;
const MAX_TILE: usize = 1 << 16;

/// Rows per chunk, latents per tile, and whether the scores scratch is bf16 (TopK only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Rows per chunk.
    pub rows: usize,
    /// Latents per GEMM tile.
    pub tile: usize,
    /// Scores kept in bf16 (TopK only); uncertified selections are re-encoded with f32 scores.
    pub bf16_scores: bool,
    /// Two score buffers: the top-k pass over one tile runs on a second stream while the
    /// GEMM fills the other (TopK only; see [`Plan::double_buffered`]).
    pub double_buffer: bool,
}

impl Plan {
    /// The same plan with two score buffers of half the tile each, so the scratch stays
    /// within the same workspace (a 128-latent tile stays 128).
    pub fn double_buffered(self) -> Plan {
        Plan {
            tile: (self.tile / 2).div_ceil(128).max(1) * 128,
            double_buffer: true,
            ..self
        }
    }
}

fn low_precision(dtype: DType) -> bool {
    dtype != DType::F32
}

/// Smallest SAE for which `bf16_scores` is chosen by default. The rescoring costs about
/// 2.2 ms per 4096 rows at d = 4096 whatever L is, while the saving grows with L: on the H200
/// the paper shape (L = 2^21) gained, L = 2^18 and below lost (BENCHMARKS.md, GPU).
pub const BF16_SCORES_MIN_LATENTS: usize = 1 << 20;

/// Whether the GEMM writes bf16 scores (Fast precision, bf16 encoder weights; `force`
/// overrides the size rule): half the scratch traffic of f32 scores. Selection then runs on
/// upper bounds of the rounded scores and the candidates are rescored in f32 (see
/// kernels/topk.cu). f16 weights keep f32 scores: f16's range (65504) could overflow.
pub fn bf16_scores(
    dtype: DType,
    precision: Precision,
    n_latents: usize,
    force: Option<bool>,
) -> bool {
    precision == Precision::Fast
        && dtype == DType::BF16
        && force.unwrap_or(n_latents >= BF16_SCORES_MIN_LATENTS)
}

/// Candidates kept per row on the bf16-score path: k plus a margin for the latents whose
/// rounded scores land near the k-th value.
pub fn candidates(k: usize) -> usize {
    k + (k / 2).clamp(16, 64)
}

/// What the workspace plan depends on of an SAE (known before it is uploaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileShape {
    /// Input width.
    pub d_in: usize,
    /// Number of latents L.
    pub n_latents: usize,
    /// k of a TopK SAE, 0 for threshold SAEs (CSR output).
    pub k: usize,
    /// The encoder's stored dtype.
    pub dtype: DType,
}

impl TileShape {
    /// The shape of an uploaded SAE.
    pub fn of(sae: &DeviceSae) -> TileShape {
        TileShape {
            d_in: sae.d_in,
            n_latents: sae.n_latents,
            k: match sae.activation {
                Activation::TopK { k } => k,
                _ => 0,
            },
            dtype: sae.w_enc.dtype,
        }
    }
}

/// [`plan_tiles`] for an uploaded SAE.
pub fn plan(
    sae: &DeviceSae,
    precision: Precision,
    workspace_bytes: usize,
    max_rows: usize,
    tile_override: Option<usize>,
    scores: Option<bool>,
) -> Result<Plan> {
    plan_tiles(
        &TileShape::of(sae),
        precision,
        workspace_bytes,
        max_rows,
        tile_override,
        scores,
    )
}

/// Chooses the largest tile (a power of two, at most 65536 latents) that fits the workspace
/// with up to `max_rows` rows per chunk, halving the rows when even 128 latents do not fit.
pub fn plan_tiles(
    shape: &TileShape,
    precision: Precision,
    workspace_bytes: usize,
    max_rows: usize,
    tile_override: Option<usize>,
    scores: Option<bool>,
) -> Result<Plan> {
    let (d, l, k) = (shape.d_in, shape.n_latents, shape.k);
    let csr = k == 0;
    let lp = low_precision(shape.dtype);
    let half = k > 0 && bf16_scores(shape.dtype, precision, l, scores);
    let k2 = if half { candidates(k) } else { k };
    // cuBLAS keeps its own workspace (tens of MB on Hopper); reserve it inside the budget.
    let margin = (64usize << 20).min(workspace_bytes / 8);
    let budget = workspace_bytes.saturating_sub(margin);
    let l_cap = l.div_ceil(128) * 128;
    let mut rows = max_rows.max(1);
    loop {
        let fixed = rows * d * 4
            + if precision == Precision::Fast && lp {
                rows * d * 2
            } else {
                0
            }
            + rows * (k2 * 8 + k * 8)
            + rows * 16;
        let per_col = rows * if half { 2 } else { 4 }
            + if precision == Precision::Exact && lp {
                d * 4
            } else {
                0
            }
            + if csr { rows * 2 } else { 0 };
        if budget > fixed {
            let cols = (budget - fixed) / per_col;
            let tile = match tile_override {
                Some(t) => t.div_ceil(128) * 128,
                None => {
                    let mut t = 128;
                    while t * 2 <= cols && t * 2 <= MAX_TILE {
                        t *= 2;
                    }
                    t
                }
            };
            if cols >= 128 && tile <= cols.max(128) {
                return Ok(Plan {
                    rows,
                    tile: tile.min(l_cap).max(128),
                    bf16_scores: half,
                    double_buffer: false,
                });
            }
        }
        if rows == 1 {
            return Err(Error::invalid(format!(
                "CUDA workspace of {workspace_bytes} bytes is too small for d_in = {d} (k = {k})"
            )));
        }
        rows = rows.div_ceil(2);
    }
}

/// Device buffers for one plan.
pub struct Workspace {
    /// The plan the buffers were sized for.
    pub plan: Plan,
    /// GEMM arithmetic of the encoder.
    pub precision: Precision,
    /// f32 [rows, d]: preprocessed activations.
    pub x32: DevBuf,
    /// [rows, d] in the weights' dtype (Fast with bf16/f16 weights).
    xlp: Option<DevBuf>,
    /// [rows, tile] GEMM output: f32, or bf16 when `half_scores`.
    scores: DevBuf,
    /// The GEMM writes bf16 scores (see [`bf16_scores`]).
    pub half_scores: bool,
    /// Running top-k keys kept per row: k, or [`candidates`]`(k)` with bf16 scores.
    pub k2: usize,
    /// f32 tile of the encoder (Exact with bf16/f16 weights).
    wtile: Option<DevBuf>,
    /// TopK running state: u64 keys [rows, k], i32 count [rows], outputs i32/f32 [rows, k].
    state: Option<DevBuf>,
    count: DevBuf,
    /// TopK output indices, i32 [rows, k].
    pub idx: Option<DevBuf>,
    /// TopK output values, f32 [rows, k].
    pub val: Option<DevBuf>,
    /// CSR: per-row counts (i32) and write offsets (i64), fragment buffers.
    offsets: DevBuf,
    /// Two i32 per staging slot: [smallest chunk row with a NaN / +inf pre-activation,
    /// smallest row whose bf16-path selection could not be certified] (i32::MAX: none).
    pub bad: DevBuf,
    frag_idx: Option<DevBuf>,
    frag_val: Option<DevBuf>,
    frag_cap: usize,
    /// How the encoder GEMM picks its algorithm.
    pub gemm_mode: GemmMode,
    /// The second score buffer and its events (TopK plans with `double_buffer`).
    overlap: Option<Overlap>,
}

/// Double buffering of the scores between the GEMM (on the main stream) and the top-k pass
/// (on `Gpu::aux`): tile i goes to buffer i % 2; the GEMM of tile i + 2 waits for the pass
/// over tile i, the pass over tile i waits for its GEMM.
struct Overlap {
    scores2: DevBuf,
    gemm_done: [CudaEvent; 2],
    select_done: [CudaEvent; 2],
    end: CudaEvent,
}

impl Overlap {
    fn new(gpu: &Gpu, bytes: usize) -> Result<Overlap> {
        let ev = || {
            gpu.ctx
                .new_event(None)
                .map_err(|e| Error::Cuda(format!("creating an event: {e}")))
        };
        Ok(Overlap {
            scores2: gpu.alloc(bytes)?,
            gemm_done: [ev()?, ev()?],
            select_done: [ev()?, ev()?],
            end: ev()?,
        })
    }
}

/// `bytes` of device memory when `cond` holds (buffers only some plans need).
fn alloc_if(gpu: &Gpu, cond: bool, bytes: usize) -> Result<Option<DevBuf>> {
    cond.then(|| gpu.alloc(bytes)).transpose()
}

impl Workspace {
    /// Allocates the buffers of `plan`; the encoder GEMM picks its algorithm by `gemm_mode`.
    pub fn new(
        gpu: &Gpu,
        sae: &DeviceSae,
        precision: Precision,
        plan: Plan,
        gemm_mode: GemmMode,
    ) -> Result<Workspace> {
        let (r, d, t) = (plan.rows, sae.d_in, plan.tile);
        let lp = low_precision(sae.w_enc.dtype);
        let k = match sae.activation {
            Activation::TopK { k } => k,
            _ => 0,
        };
        let frag_cap = if k == 0 { (r * t / 4).max(t) } else { 0 };
        // The planner decided (TopK, Fast, bf16 weights only).
        let half =
            k > 0 && plan.bf16_scores && bf16_scores(sae.w_enc.dtype, precision, 0, Some(true));
        let k2 = if half { candidates(k) } else { k };
        let scores_bytes = r * t * if half { 2 } else { 4 };
        Ok(Workspace {
            plan,
            precision,
            x32: gpu.alloc(r * d * 4)?,
            xlp: alloc_if(gpu, precision == Precision::Fast && lp, r * d * 2)?,
            scores: gpu.alloc(scores_bytes)?,
            half_scores: half,
            k2,
            wtile: alloc_if(gpu, precision == Precision::Exact && lp, t * d * 4)?,
            state: alloc_if(gpu, k > 0, r * k2 * 8)?,
            count: gpu.alloc(r * 4)?,
            idx: alloc_if(gpu, k > 0, r * k * 4)?,
            val: alloc_if(gpu, k > 0, r * k * 4)?,
            offsets: gpu.alloc(r * 8)?,
            bad: gpu.alloc(16)?,
            frag_idx: alloc_if(gpu, k == 0, frag_cap * 4)?,
            frag_val: alloc_if(gpu, k == 0, frag_cap * 4)?,
            frag_cap,
            gemm_mode,
            overlap: if k > 0 && plan.double_buffer {
                Some(Overlap::new(gpu, scores_bytes)?)
            } else {
                None
            },
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        [
            Some(&self.x32),
            self.xlp.as_ref(),
            Some(&self.scores),
            self.overlap.as_ref().map(|o| &o.scores2),
            self.wtile.as_ref(),
            self.state.as_ref(),
            Some(&self.count),
            self.idx.as_ref(),
            self.val.as_ref(),
            Some(&self.offsets),
            Some(&self.bad),
            self.frag_idx.as_ref(),
            self.frag_val.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|b| b.bytes)
        .sum()
    }
}

fn launch_err(name: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda(format!("launching {name}: {e}"))
}

/// Prepares the GEMM's B operand: rounds x32 into the weights' dtype for Fast.
pub fn prepare_x(gpu: &Gpu, sae: &DeviceSae, ws: &Workspace, rows: usize) -> Result<()> {
    if let Some(xlp) = &ws.xlp {
        let name = if sae.w_enc.dtype == DType::BF16 {
            "narrow_bf16"
        } else {
            "narrow_f16"
        };
        let f = gpu.kernel(name)?;
        let n = (rows * sae.d_in) as i64;
        let mut b = gpu.stream.launch_builder(f);
        b.arg(&ws.x32.ptr).arg(&xlp.ptr).arg(&n);
        // SAFETY: narrow_*(x f32*, out u16*, n): both buffers hold rows * d elements.
        unsafe { b.launch(gpu.grid_for(n as usize, 256)) }.map_err(launch_err("narrow"))?;
    }
    Ok(())
}

/// Where a GEMM tile's scores go: bf16 or f32, row stride `ld` elements.
#[derive(Debug, Clone, Copy)]
pub struct ScoresOut {
    /// True for bf16 scores, false for f32.
    pub bf16: bool,
    /// Row stride of the buffer, in elements.
    pub ld: usize,
    /// Device address of the buffer.
    pub buf: u64,
}

impl Workspace {
    /// The scratch as the normal path writes it: the workspace's score type, ld = tile.
    pub fn scores_out(&self) -> ScoresOut {
        ScoresOut {
            bf16: self.half_scores,
            ld: self.plan.tile,
            buf: self.scores.ptr,
        }
    }

    /// The same bytes as f32 scores of half-width tiles (the bf16 path's exact fallback).
    fn scores_out_f32(&self) -> ScoresOut {
        if self.half_scores {
            ScoresOut {
                bf16: false,
                ld: self.plan.tile / 2,
                buf: self.scores.ptr,
            }
        } else {
            self.scores_out()
        }
    }
}

/// scores[r, j] = x[r] . W_enc[l0 + j] for j < t, rows r < rows; row stride = out.ld.
pub fn gemm_tile(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    rows: usize,
    (l0, t): (usize, usize),
    out: ScoresOut,
) -> Result<()> {
    let (w, n_latents, d) = (&sae.w_enc, sae.n_latents, sae.d_in);
    let es = w.dtype.size();
    let lp = low_precision(w.dtype);
    // Column-major view: C [t, rows] = op(A) [t, d] x B [d, rows], B = x^T read as [d, rows].
    let (a_ptr, a_type, lda, trans_a, b_ptr, b_type, tf32) = match (ws.precision, lp) {
        (Precision::Exact, true) => {
            let wt = ws
                .wtile
                .as_ref()
                .ok_or_else(|| Error::Cuda("exact workspace lacks its weight tile".into()))?;
            // Widen the tile to f32 as [t, d] row-major (ld d): read transposed storage in place.
            let name = if w.dtype == DType::BF16 {
                "widen_bf16"
            } else {
                "widen_f16"
            };
            let (src, src_ld, dst_ld, wrows, wcols) = match w.layout {
                Layout::RowMajor => (
                    w.buf.at(l0 * d * es),
                    d as i64,
                    d as i64,
                    t as i32,
                    d as i32,
                ),
                Layout::Transposed => (
                    w.buf.at(l0 * es),
                    n_latents as i64,
                    t as i64,
                    d as i32,
                    t as i32,
                ),
            };
            let f = gpu.kernel(name)?;
            let mut b = gpu.stream.launch_builder(f);
            b.arg(&src)
                .arg(&src_ld)
                .arg(&wt.ptr)
                .arg(&dst_ld)
                .arg(&wrows)
                .arg(&wcols);
            // SAFETY: widen_*(src, src_ld, dst, dst_ld, rows, cols): src covers the tile in its
            // stored layout; dst (t * d f32) holds rows x cols at dst_ld.
            unsafe { b.launch(gpu.grid_for(t * d, 256)) }.map_err(launch_err("widen"))?;
            let (lda, trans) = match w.layout {
                Layout::RowMajor => (d, true),
                Layout::Transposed => (t, false),
            };
            (
                wt.ptr,
                DType::F32,
                lda,
                trans,
                ws.x32.ptr,
                DType::F32,
                false,
            )
        }
        (prec, _) => {
            let (a, lda, trans) = match w.layout {
                Layout::RowMajor => (w.buf.at(l0 * d * es), d, true),
                Layout::Transposed => (w.buf.at(l0 * es), n_latents, false),
            };
            let b = ws.xlp.as_ref().map(|b| b.ptr).unwrap_or(ws.x32.ptr);
            let b_type = if prec == Precision::Fast {
                w.dtype
            } else {
                DType::F32
            };
            (
                a,
                w.dtype,
                lda,
                trans,
                b,
                b_type,
                !lp && prec == Precision::Fast,
            )
        }
    };
    // bf16 output only with bf16 A and B (a cuBLAS-supported 16BF/16BF/16BF + 32F combination).
    let spec = GemmSpec {
        m: t,
        n: rows,
        k: d,
        trans_a,
        lda,
        ldb: d,
        ldc: out.ld,
        a_type,
        b_type,
        c_type: if out.bf16 { DType::BF16 } else { DType::F32 },
        tf32,
    };
    let ptrs = GemmPtrs {
        a: a_ptr,
        b: b_ptr,
        c: out.buf,
    };
    gemm::run(gpu, ws.gemm_mode, &spec, ptrs).map_err(|e| {
        Error::Cuda(format!(
            "encoder GEMM ({} weights, tile {l0}..{}): {e}",
            w.dtype,
            l0 + t
        ))
    })
}

/// Top-k codes of `rows` rows whose preprocessed activations are in `ws.x32`, left in
/// ws.idx / ws.val ([rows, k]). `gemm_only` skips the selection (the cuBLAS-only baseline).
/// `flags` (device, two i32) receives [smallest row with a non-finite pre-activation,
/// smallest row whose bf16-path selection was not certified]; i32::MAX means none. A
/// flagged second entry means the chunk's codes must be recomputed with
/// [`encode_topk_chunk_f32`] (the same rows still in ws.x32).
pub fn encode_topk_chunk(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    rows: usize,
    k: usize,
    gemm_only: bool,
    flags: u64,
) -> Result<()> {
    let double_buffer = !gemm_only && ws.overlap.is_some();
    topk_chunk(
        gpu,
        sae,
        ws,
        rows,
        k,
        gemm_only,
        flags,
        ws.scores_out(),
        double_buffer,
    )
}

/// [`encode_topk_chunk`] with f32 scores in half-width tiles: the exact fallback of the
/// bf16-score path (the same selection as Fast precision with f32 scratch). It never
/// flags a retry.
pub fn encode_topk_chunk_f32(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    rows: usize,
    k: usize,
    flags: u64,
) -> Result<()> {
    // Single-buffered: the fallback's half-width f32 tiles fill the first buffer.
    topk_chunk(
        gpu,
        sae,
        ws,
        rows,
        k,
        false,
        flags,
        ws.scores_out_f32(),
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn topk_chunk(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    rows: usize,
    k: usize,
    gemm_only: bool,
    flags: u64,
    out: ScoresOut,
    double_buffer: bool,
) -> Result<()> {
    let (state, idx, val) = match (&ws.state, &ws.idx, &ws.val) {
        (Some(s), Some(i), Some(v)) => (s, i, v),
        _ => {
            return Err(Error::Cuda(
                "top-k workspace missing its state buffers".into(),
            ))
        }
    };
    if rows == 0 {
        return Ok(());
    }
    if k == 0 || k > MAX_K {
        return Err(Error::invalid(format!("top-k with k = {k} (1..={MAX_K})")));
    }
    // Candidates kept per row: the rescoring margin only on the bf16 path.
    let kk = if out.bf16 { ws.k2 } else { k };
    if kk > ws.k2 {
        return Err(Error::Cuda("top-k state smaller than k".into()));
    }
    let retry = flags + 4;
    prepare_x(gpu, sae, ws, rows)?;
    gpu.zero(ws.count.ptr, rows * 4)?;
    gpu.htod(flags, &[i32::MAX, i32::MAX])?;
    let select = gpu.kernel(if out.bf16 {
        "topk_select_bf16"
    } else {
        "topk_select_f32"
    })?;
    let scale = sae.dec_norm.as_ref().map(|b| b.ptr).unwrap_or(0);
    let scale_bound = sae.scale_bound.as_ref().map(|b| b.ptr).unwrap_or(0);
    let ld = out.ld as i64;
    let kk32 = kk as i32;
    let k32 = k as i32;
    let ov = ws.overlap.as_ref().filter(|_| double_buffer);
    let ev_err = |e: cudarc::driver::DriverError| Error::Cuda(format!("stream event: {e}"));
    let mut l0 = 0;
    let mut i = 0usize;
    while l0 < sae.n_latents {
        let t = out.ld.min(sae.n_latents - l0);
        let slot = i % 2;
        let buf = match ov {
            Some(o) if slot == 1 => o.scores2.ptr,
            _ => out.buf,
        };
        if let (Some(o), true) = (ov, i >= 2) {
            // The pass over tile i - 2 must be done reading this buffer.
            gpu.stream.wait(&o.select_done[slot]).map_err(ev_err)?;
        }
        gemm_tile(gpu, sae, ws, rows, (l0, t), ScoresOut { buf, ..out })?;
        if !gemm_only {
            let stream = match ov {
                Some(o) => {
                    o.gemm_done[slot].record(&gpu.stream).map_err(ev_err)?;
                    gpu.aux.wait(&o.gemm_done[slot]).map_err(ev_err)?;
                    &gpu.aux
                }
                None => &gpu.stream,
            };
            let (t32, l032) = (t as i32, l0 as u32);
            let mut b = stream.launch_builder(select);
            b.arg(&buf)
                .arg(&ld)
                .arg(&t32)
                .arg(&l032)
                .arg(&sae.b_enc.ptr)
                .arg(&scale)
                .arg(&sae.bias_bound.ptr)
                .arg(&scale_bound)
                .arg(&state.ptr)
                .arg(&ws.count.ptr)
                .arg(&kk32)
                .arg(&flags);
            let cfg = Gpu::per_row(rows, TOPK_THREADS);
            // SAFETY: topk_select_<f32|bf16>(scores, ld, tile_len, latent0, b_enc, scale|null,
            // bmax, smax|null, state, count, k, bad): scores rows x ld (of the GEMM's output
            // type) with t valid columns; b_enc/scale cover latent0 + t and bmax/smax the
            // 128-latent blocks of the SAE (smax present exactly when scale is); state
            // rows x kk u64 (kk <= ws.k2) and count rows i32, zeroed before the first tile.
            // On the second stream, the launch is ordered after this tile's GEMM (gemm_done)
            // and before the GEMM that next overwrites `buf` (select_done).
            unsafe { b.launch(cfg) }.map_err(launch_err("topk_select"))?;
            if let Some(o) = ov {
                o.select_done[slot].record(&gpu.aux).map_err(ev_err)?;
            }
        }
        l0 += t;
        i += 1;
    }
    if let Some(o) = ov {
        // Everything after (rescoring, finishing, the next chunk) waits for the last pass.
        o.end.record(&gpu.aux).map_err(ev_err)?;
        gpu.stream.wait(&o.end).map_err(ev_err)?;
    }
    let r32 = rows as i32;
    if out.bf16 {
        let xlp = ws
            .xlp
            .as_ref()
            .ok_or_else(|| Error::Cuda("bf16 path without rounded activations".into()))?;
        let (rs, cs) = match sae.w_enc.layout {
            Layout::RowMajor => (sae.d_in as i64, 1i64),
            Layout::Transposed => (1i64, sae.n_latents as i64),
        };
        let d32 = sae.d_in as i32;
        let f = gpu.kernel("topk_rescore_bf16")?;
        let mut b = gpu.stream.launch_builder(f);
        b.arg(&state.ptr)
            .arg(&ws.count.ptr)
            .arg(&kk32)
            .arg(&k32)
            .arg(&xlp.ptr)
            .arg(&sae.w_enc.buf.ptr)
            .arg(&d32)
            .arg(&rs)
            .arg(&cs)
            .arg(&sae.b_enc.ptr)
            .arg(&scale)
            .arg(&idx.ptr)
            .arg(&val.ptr)
            .arg(&flags)
            .arg(&retry);
        let cfg = Gpu::per_row(rows, TOPK_THREADS);
        // SAFETY: topk_rescore_bf16(state, count, k2, k, x bf16 [rows, d], W bf16 with element
        // (l, i) at l * rs + i * cs, d, rs, cs, b_enc, scale|null, idx_out, val_out [rows, k],
        // bad, retry): state holds rows x k2 keys of valid latents written by the select above.
        unsafe { b.launch(cfg) }.map_err(launch_err("topk_rescore_bf16"))?;
        return Ok(());
    }
    let fin = gpu.kernel("topk_finish_f32")?;
    let mut b = gpu.stream.launch_builder(fin);
    b.arg(&state.ptr)
        .arg(&ws.count.ptr)
        .arg(&r32)
        .arg(&k32)
        .arg(&idx.ptr)
        .arg(&val.ptr);
    // SAFETY: topk_finish_f32(state, count, rows, k, idx_out, val_out): all [rows, k] / [rows].
    unsafe { b.launch(gpu.grid_for(rows * k, 256)) }.map_err(launch_err("topk_finish_f32"))?;
    Ok(())
}

/// CSR arrays of one chunk: row_ptr [rows + 1], latent indices, values.
pub type CsrParts = (Vec<i64>, Vec<i32>, Vec<f32>);

/// Threshold codes (ReLU / JumpReLU) of `rows` rows in ws.x32 as CSR (latents ascending),
/// or Err(row) with the smallest chunk row that has a non-finite pre-activation.
pub fn encode_csr_chunk(
    gpu: &Gpu,
    sae: &DeviceSae,
    ws: &Workspace,
    rows: usize,
) -> Result<std::result::Result<CsrParts, usize>> {
    let (fi, fv) = match (&ws.frag_idx, &ws.frag_val) {
        (Some(i), Some(v)) => (i, v),
        _ => {
            return Err(Error::Cuda(
                "CSR workspace missing its fragment buffers".into(),
            ))
        }
    };
    let mut per_row: Vec<(Vec<i32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); rows];
    if rows > 0 {
        prepare_x(gpu, sae, ws, rows)?;
        let thresh = match sae.activation {
            Activation::JumpRelu => sae
                .threshold
                .as_ref()
                .map(|b| b.ptr)
                .ok_or_else(|| Error::invalid("JumpReLU SAE without thresholds"))?,
            _ => 0,
        };
        let count_k = gpu.kernel("threshold_count_f32")?;
        let write_k = gpu.kernel("threshold_write_f32")?;
        let ld = ws.plan.tile as i64;
        let mut counts = vec![0i32; rows];
        gpu.htod(ws.bad.ptr, &[i32::MAX])?;
        let mut l0 = 0;
        while l0 < sae.n_latents {
            let t = ws.plan.tile.min(sae.n_latents - l0);
            gemm_tile(gpu, sae, ws, rows, (l0, t), ws.scores_out())?;
            let (t32, l032) = (t as i32, l0 as u32);
            let cfg = |n: usize| Gpu::per_row(n, THR_THREADS);
            let mut b = gpu.stream.launch_builder(count_k);
            b.arg(&ws.scores.ptr)
                .arg(&ld)
                .arg(&t32)
                .arg(&l032)
                .arg(&sae.b_enc.ptr)
                .arg(&thresh)
                .arg(&ws.count.ptr)
                .arg(&ws.bad.ptr);
            // SAFETY: threshold_count_f32(scores, ld, tile_len, latent0, b_enc, thresh|null,
            // counts, bad): one block per row, counts holds rows i32, bad one i32.
            unsafe { b.launch(cfg(rows)) }.map_err(launch_err("threshold_count_f32"))?;
            gpu.dtoh(&mut counts, ws.count.ptr)?;
            let mut bad = [0i32];
            gpu.dtoh(&mut bad, ws.bad.ptr)?;
            if bad[0] != i32::MAX {
                return Ok(Err(bad[0] as usize));
            }
            // Exact overflow path: rows go out in groups whose survivors fit the fragment
            // buffer (one row never exceeds it: frag_cap >= tile).
            let mut r0 = 0;
            while r0 < rows {
                let mut offsets = vec![0i64; rows];
                let mut total = 0usize;
                let mut r1 = r0;
                while r1 < rows && total + counts[r1] as usize <= ws.frag_cap {
                    offsets[r1] = total as i64;
                    total += counts[r1] as usize;
                    r1 += 1;
                }
                if total > 0 {
                    gpu.htod(ws.offsets.ptr, &offsets)?;
                    let r032 = r0 as i32;
                    let mut b = gpu.stream.launch_builder(write_k);
                    b.arg(&ws.scores.ptr)
                        .arg(&ld)
                        .arg(&t32)
                        .arg(&l032)
                        .arg(&sae.b_enc.ptr)
                        .arg(&thresh)
                        .arg(&r032)
                        .arg(&ws.offsets.ptr)
                        .arg(&fi.ptr)
                        .arg(&fv.ptr);
                    // SAFETY: threshold_write_f32(scores, ld, tile_len, latent0, b_enc, thresh|null,
                    // row0, offsets, idx_out, val_out): rows row0..row0+grid, offsets from the
                    // counts just read, total <= frag_cap entries.
                    unsafe { b.launch(cfg(r1 - r0)) }.map_err(launch_err("threshold_write_f32"))?;
                    let mut hi = vec![0i32; total];
                    let mut hv = vec![0f32; total];
                    gpu.dtoh(&mut hi, fi.ptr)?;
                    gpu.dtoh(&mut hv, fv.ptr)?;
                    for r in r0..r1 {
                        let (a, c) = (offsets[r] as usize, counts[r] as usize);
                        per_row[r].0.extend_from_slice(&hi[a..a + c]);
                        per_row[r].1.extend_from_slice(&hv[a..a + c]);
                    }
                }
                r0 = r1;
            }
            l0 += t;
        }
    }
    let mut row_ptr = Vec::with_capacity(rows + 1);
    row_ptr.push(0i64);
    let nnz: usize = per_row.iter().map(|r| r.0.len()).sum();
    let (mut idx, mut val) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
    for (i, v) in per_row {
        idx.extend(i);
        val.extend(v);
        row_ptr.push(idx.len() as i64);
    }
    Ok(Ok((row_ptr, idx, val)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_buffering_halves_the_tile_within_the_same_scratch() {
        let p = Plan {
            rows: 4096,
            tile: 65536,
            bf16_scores: true,
            double_buffer: false,
        };
        let d = p.double_buffered();
        assert_eq!(
            (d.rows, d.tile, d.bf16_scores, d.double_buffer),
            (4096, 32768, true, true)
        );
        // Two buffers of the new tile never exceed the old scratch, except at the 128 floor.
        for tile in [128usize, 256, 384, 640, 1024, 65536] {
            let h = Plan { tile, ..p }.double_buffered();
            assert_eq!(h.tile % 128, 0, "tile {tile}");
            assert!(h.tile >= 128);
            assert!(
                2 * h.tile <= tile.max(128) + 128,
                "tile {tile} -> {}",
                h.tile
            );
        }
    }

    #[test]
    fn candidates_leave_a_margin_within_the_kernel_caps() {
        for k in [1usize, 16, 64, 128, MAX_K] {
            let c = candidates(k);
            assert!(c > k && c <= k + 64, "k {k}: {c}");
        }
        // topk_rescore_bf16 keeps at most 1024 candidates per row in shared memory.
        assert!(candidates(MAX_K) <= 1024);
    }
}
