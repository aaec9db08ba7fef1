//! Tiled encode: the N x L pre-activation matrix never exists.
//!
//! Workers (one per rayon thread) take latent tiles from a shared counter in
//! ascending order. For each tile a worker views (or converts) the encoder rows
//! as f32, runs one single-threaded GEMM into its own `rows x tile` scratch and
//! scans the scratch once into its running top-k (or its CSR pieces). Working on
//! different tiles keeps both cores busy without synchronizing inside a tile;
//! the per-worker results are merged at the end with the full tie rule, so the
//! codes do not depend on the tile size or the number of threads.
//!
//! Memory beyond the input: per worker `rows x tile` f32 scratch (capped by
//! shrinking the tile, see [`SCRATCH_CAP`]), one converted weight tile when the
//! weights are not directly usable f32, and O(rows x k) top-k state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::scan::{scan_threshold, scan_topk, BadValue, TileCsr};
use super::topk::{merge_states, TopKState};
use crate::backend::CpuGemm;
use crate::codes::{Codes, Encoded};
use crate::dtype::convert_to_f32;
use crate::error::Result;
use crate::matrix::{Layout, Matrix};
use crate::sae::{Activation, Sae};

/// Largest per-worker scratch, in f32 elements (32 MiB): big batches get narrower tiles.
const SCRATCH_CAP: usize = 1 << 23;
/// Narrowest tile chosen automatically (narrower tiles make the GEMM inefficient).
const MIN_AUTO_TILE: usize = 256;

/// What encode needs besides the SAE: precomputed once by the engine.
pub(crate) struct EncodeParams<'a> {
    pub(crate) sae: &'a Sae,
    /// Requested latents per tile.
    pub(crate) tile: usize,
    /// Decoder row norms, when the SAE rescales TopK pre-activations by them.
    pub(crate) dec_norms: Option<&'a [f32]>,
    /// JumpReLU cut-offs max(threshold, 0); None for ReLU and TopK.
    pub(crate) cuts: Option<&'a [f32]>,
    /// Worker threads.
    pub(crate) threads: usize,
    /// Buffers kept between calls (fresh multi-MB buffers cost a page fault per 4 KiB).
    pub(crate) pool: &'a BufferPool,
    /// Which GEMM computes the tiles.
    pub(crate) gemm: GemmKind,
}

/// The GEMM behind encode tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemmKind {
    /// The portable `gemm` crate.
    Crate,
    /// System OpenBLAS (`--features openblas`).
    #[cfg(feature = "openblas")]
    OpenBlas,
}

impl GemmKind {
    /// The GEMM `choice` names (`EngineOptions::cpu_gemm`); `Auto` is OpenBLAS in a build
    /// with the `openblas` feature, else the `gemm` crate. OpenBLAS in a build without the
    /// feature is an error rather than a silent substitute.
    pub(crate) fn select(choice: CpuGemm) -> Result<Self> {
        match choice {
            CpuGemm::Crate => Ok(GemmKind::Crate),
            #[cfg(feature = "openblas")]
            CpuGemm::Auto | CpuGemm::OpenBlas => Ok(GemmKind::OpenBlas),
            #[cfg(not(feature = "openblas"))]
            CpuGemm::Auto => Ok(GemmKind::Crate),
            #[cfg(not(feature = "openblas"))]
            CpuGemm::OpenBlas => Err(crate::error::Error::invalid(
                "the OpenBLAS CPU GEMM needs a build with the `openblas` cargo feature",
            )),
        }
    }
}

/// One worker's buffers: GEMM output scratch, converted weight tile.
type Buffers = (Vec<f32>, Vec<f32>);

/// Per-worker buffers kept between encode calls.
/// Holds at most one set per worker thread, so it stays within the documented bound.
#[derive(Default)]
pub(crate) struct BufferPool(Mutex<Vec<Buffers>>);

impl BufferPool {
    fn take(&self) -> Buffers {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }
    fn give(&self, bufs: Buffers) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(bufs);
    }
}

/// Encodes `rows` rows of `x` ([rows, d_in] row-major).
pub(crate) fn encode(p: &EncodeParams, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
    let sae = p.sae;
    let (l, d) = (sae.n_latents(), sae.d_in());
    let (xp, denorm) = sae.prepare_input(x, rows, row_offset)?;
    let codes = if rows == 0 {
        Codes::empty(sae.k())
    } else {
        let tile = tile_width(p.tile, l, rows, p.threads);
        let n_tiles = l.div_ceil(tile);
        let workers = p.threads.clamp(1, n_tiles);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let ctx = Worker {
            p,
            xp: &xp,
            rows,
            d,
            tile,
            n_tiles,
            next: &next,
            stop: &stop,
        };
        let outs: Vec<Result<WorkerOut, BadValue>> =
            (0..workers).into_par_iter().map(|_| ctx.run()).collect();
        let mut done = Vec::with_capacity(outs.len());
        let mut bad: Option<BadValue> = None;
        for o in outs {
            match o {
                Ok(w) => done.push(w),
                Err(e) => {
                    if bad.is_none_or(|b| (e.0, e.1) < (b.0, b.1)) {
                        bad = Some(e);
                    }
                }
            }
        }
        if let Some((r, latent, v)) = bad {
            // `prepare` refused non-finite input rows, so the SAE is at fault.
            return Err(sae.non_finite_preactivation(latent, v, row_offset + r as u64));
        }
        assemble(done, rows, sae.activation)
    };
    Ok(Encoded { codes, denorm })
}

/// Tile width: the requested one, narrowed so every thread gets a tile and the
/// scratch stays under [`SCRATCH_CAP`]; never below what the caller asked when
/// that is already small (tests use odd small tiles on purpose).
fn tile_width(requested: usize, l: usize, rows: usize, threads: usize) -> usize {
    let per_thread = l.div_ceil(threads.max(1));
    let by_memory = SCRATCH_CAP / rows.max(1);
    requested
        .min(per_thread.max(MIN_AUTO_TILE))
        .min(by_memory.max(MIN_AUTO_TILE))
        .clamp(1, l)
}

/// A tile of encoder rows as the GEMM's right-hand side [d, t]:
/// element (c, j) = W[t0 + j, c] = `base[c * rs + j * cs]`.
struct TileView<'a> {
    base: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Encoder rows `t0..t0 + t` as f32: read in place when the matrix is f32 and aligned
/// (either layout), else converted into `buf` keeping the stored layout's contiguous runs.
fn weight_tile<'a>(w: &'a Matrix, t0: usize, t: usize, buf: &'a mut Vec<f32>) -> TileView<'a> {
    let (l, d) = (w.rows(), w.cols());
    let direct: Option<&[f32]> = match w.dtype() {
        crate::dtype::DType::F32 => bytemuck::try_cast_slice(w.raw()).ok(),
        _ => None,
    };
    match (w.layout(), direct) {
        (Layout::RowMajor, Some(all)) => TileView {
            base: &all[t0 * d..(t0 + t) * d],
            rs: 1,
            cs: d,
        },
        (Layout::Transposed, Some(all)) => TileView {
            base: &all[t0..(d - 1) * l + t0 + t],
            rs: l,
            cs: 1,
        },
        (Layout::RowMajor, None) => {
            buf.resize(t * d, 0.0);
            w.rows_f32(t0..t0 + t, &mut buf[..t * d]);
            TileView {
                base: &buf[..t * d],
                rs: 1,
                cs: d,
            }
        }
        (Layout::Transposed, None) => {
            // Stored [d, L]: each stored row holds a contiguous run of this tile.
            let s = w.dtype().size();
            buf.resize(t * d, 0.0);
            for (c, dst) in buf[..t * d].chunks_exact_mut(t).enumerate() {
                let start = (c * l + t0) * s;
                convert_to_f32(w.dtype(), &w.raw()[start..start + t * s], dst);
            }
            TileView {
                base: &buf[..t * d],
                rs: t,
                cs: 1,
            }
        }
    }
}

/// h[rows, t] = xp[rows, d] . tile, single-threaded (parallelism comes from the workers).
fn gemm_tile(xp: &[f32], rows: usize, d: usize, w: &TileView, t: usize, h: &mut [f32]) {
    // The raw-pointer GEMM below reads exactly these ranges; check them once here.
    assert!(xp.len() == rows * d && h.len() == rows * t);
    assert!((d - 1) * w.rs + (t - 1) * w.cs < w.base.len());
    // SAFETY: dst is [rows, t] row-major in `h`, lhs [rows, d] row-major in `xp`,
    // rhs (c, j) at base[c * rs + j * cs]; all in bounds per the asserts above,
    // and `h` does not alias the inputs.
    unsafe {
        gemm::gemm(
            rows,
            t,
            d,
            h.as_mut_ptr(),
            1,
            t as isize,
            false,
            xp.as_ptr(),
            1,
            d as isize,
            w.base.as_ptr(),
            w.cs as isize,
            w.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// What one worker produced.
enum WorkerOut {
    TopK(TopKState),
    Csr(Vec<TileCsr>),
}

/// Shared, read-only context of the workers of one encode call.
struct Worker<'a> {
    p: &'a EncodeParams<'a>,
    xp: &'a [f32],
    rows: usize,
    d: usize,
    tile: usize,
    n_tiles: usize,
    next: &'a AtomicUsize,
    stop: &'a AtomicBool,
}

impl Worker<'_> {
    /// Takes tiles until none are left (or another worker failed).
    fn run(&self) -> Result<WorkerOut, BadValue> {
        let (mut scratch, mut wbuf) = self.p.pool.take();
        let need = self.rows * self.tile;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let out = self.run_with(&mut scratch, &mut wbuf);
        self.p.pool.give((scratch, wbuf));
        out
    }

    fn run_with(&self, scratch: &mut [f32], wbuf: &mut Vec<f32>) -> Result<WorkerOut, BadValue> {
        let sae = self.p.sae;
        let l = sae.n_latents();
        let mut out = match sae.activation {
            Activation::TopK { k } => WorkerOut::TopK(TopKState::new(self.rows, k)),
            Activation::Relu | Activation::JumpRelu => WorkerOut::Csr(Vec::new()),
        };
        while !self.stop.load(Ordering::Relaxed) {
            // The counter only grows, so each worker sees its tiles in ascending order
            // (the top-k state relies on that for ties).
            let ti = self.next.fetch_add(1, Ordering::Relaxed);
            if ti >= self.n_tiles {
                break;
            }
            let t0 = ti * self.tile;
            let t = self.tile.min(l - t0);
            let view = weight_tile(&sae.w_enc, t0, t, wbuf);
            let h = &mut scratch[..self.rows * t];
            match self.p.gemm {
                #[cfg(feature = "openblas")]
                GemmKind::OpenBlas => super::blas::gemm_tile(
                    self.xp, self.rows, self.d, view.base, view.rs, view.cs, t, h,
                ),
                GemmKind::Crate => gemm_tile(self.xp, self.rows, self.d, &view, t, h),
            }
            let b = &sae.b_enc[t0..t0 + t];
            let res = match &mut out {
                WorkerOut::TopK(state) => match self.p.dec_norms {
                    Some(n) => scan_topk::<true>(h, t, t0, b, &n[t0..t0 + t], state),
                    None => scan_topk::<false>(h, t, t0, b, &[], state),
                },
                WorkerOut::Csr(tiles) => {
                    let cuts = self.p.cuts.map(|c| &c[t0..t0 + t]);
                    scan_threshold(h, t, ti, t0, b, cuts).map(|tc| tiles.push(tc))
                }
            };
            if let Err(e) = res {
                self.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(out)
    }
}

/// Merges the workers' results into codes.
fn assemble(outs: Vec<WorkerOut>, rows: usize, activation: Activation) -> Codes {
    match activation {
        Activation::TopK { k } => {
            let states: Vec<TopKState> = outs
                .into_iter()
                .filter_map(|o| match o {
                    WorkerOut::TopK(s) => Some(s),
                    WorkerOut::Csr(_) => None,
                })
                .collect();
            merge_states(&states, rows, k)
        }
        Activation::Relu | Activation::JumpRelu => {
            let mut tiles: Vec<TileCsr> = outs
                .into_iter()
                .flat_map(|o| match o {
                    WorkerOut::Csr(t) => t,
                    WorkerOut::TopK(_) => Vec::new(),
                })
                .collect();
            tiles.sort_by_key(|t| t.tile);
            concat_tiles(&tiles, rows)
        }
    }
}

/// Concatenates per-tile CSR pieces row by row in tile order (so latents stay ascending).
fn concat_tiles(tiles: &[TileCsr], rows: usize) -> Codes {
    let nnz: usize = tiles.iter().map(|t| t.indices.len()).sum();
    let mut row_ptr = Vec::with_capacity(rows + 1);
    let mut indices = Vec::with_capacity(nnz);
    let mut values = Vec::with_capacity(nnz);
    row_ptr.push(0i64);
    for r in 0..rows {
        for t in tiles {
            let (a, b) = (t.row_ptr[r], t.row_ptr[r + 1]);
            indices.extend_from_slice(&t.indices[a..b]);
            values.extend_from_slice(&t.values[a..b]);
        }
        row_ptr.push(indices.len() as i64);
    }
    Codes::Csr {
        n: rows,
        row_ptr,
        indices,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_width_respects_request_threads_and_memory() {
        assert_eq!(tile_width(4096, 32768, 1024, 2), 4096);
        assert_eq!(tile_width(4096, 4096, 1024, 2), 2048);
        assert_eq!(tile_width(7, 100, 3, 2), 7);
        assert_eq!(tile_width(4096, 100, 3, 2), 100);
        assert_eq!(tile_width(1 << 20, 1 << 21, 1 << 16, 2), 256);
    }
}
