//! The encoder GEMM: cuBLAS's own algorithm choice (`cublasGemmEx`), or a cuBLASLt
//! algorithm picked by timing the candidates on the first call of each shape.
//!
//! Why a search: on the H200 our `cublasGemmEx` tiles of the paper shape took 104 ms where
//! torch's call (cuBLASLt) took 99 ms (BENCHMARKS.md). cuBLASLt lists several algorithms
//! for a problem; which is fastest depends on the card, the clocks under load and the tile,
//! so we measure instead of guessing. Every candidate's output is checked against the
//! `cublasGemmEx` result of the same call (per-column sums) before it can be chosen, so a
//! wrong descriptor or a misbehaving algorithm is dropped, never used.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::cublaslt::{result as lt, sys as lsys};
use cudarc::driver::PushKernelArg;

use super::device::{DevBuf, Gpu};
use super::loader::{self, Lib};
pub use crate::backend::GemmMode;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Below this many multiply-adds `Auto` does not search: the timing would cost more than
/// it could save (2^34 is about 50 us of bf16 tensor-core work on an H100).
pub const SEARCH_MIN_MACS: u128 = 1 << 34;

/// cuBLASLt candidates asked for per shape.
const MAX_CANDIDATES: usize = 8;

/// Timed runs per candidate (after one checked run).
const SEARCH_REPS: usize = 3;

/// One GEMM as cuBLAS sees it (column-major): C [m, n] (ld `ldc`) = op(A) [m, k] x B [k, n]
/// (ld `ldb`), op(A) = A^T when `trans_a` (A stored [k, m], ld `lda`), else A ([m, k]).
/// f32 accumulation; `tf32` allows TF32 tensor cores for f32 operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct GemmSpec {
    /// Rows of C (and of op(A)).
    pub m: usize,
    /// Columns of C (and of B).
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// A is stored transposed ([k, m]).
    pub trans_a: bool,
    /// Leading dimension of A.
    pub lda: usize,
    /// Leading dimension of B.
    pub ldb: usize,
    /// Leading dimension of C.
    pub ldc: usize,
    /// Element type of A.
    pub a_type: DType,
    /// Element type of B.
    pub b_type: DType,
    /// bf16 or f32 output.
    pub c_type: DType,
    /// Allow TF32 tensor cores for f32 operands.
    pub tf32: bool,
}

impl GemmSpec {
    fn macs(&self) -> u128 {
        self.m as u128 * self.n as u128 * self.k as u128
    }

    fn dims_i32(&self) -> Result<[i32; 6]> {
        let v = [self.m, self.n, self.k, self.lda, self.ldb, self.ldc];
        let mut out = [0i32; 6];
        for (o, x) in out.iter_mut().zip(v) {
            *o = i32::try_from(x).map_err(|_| {
                Error::invalid(format!("GEMM dimension {x} exceeds i32 ({self:?})"))
            })?;
        }
        Ok(out)
    }
}

/// Device addresses of A, B and C.
#[derive(Debug, Clone, Copy)]
pub struct GemmPtrs {
    /// Device address of A.
    pub a: u64,
    /// Device address of B.
    pub b: u64,
    /// Device address of C.
    pub c: u64,
}

fn blas_type(d: DType) -> bsys::cudaDataType {
    match d {
        DType::F32 => bsys::cudaDataType::CUDA_R_32F,
        DType::F16 => bsys::cudaDataType::CUDA_R_16F,
        DType::BF16 => bsys::cudaDataType::CUDA_R_16BF,
    }
}

fn lt_type(d: DType) -> lsys::cudaDataType {
    match d {
        DType::F32 => lsys::cudaDataType::CUDA_R_32F,
        DType::F16 => lsys::cudaDataType::CUDA_R_16F,
        DType::BF16 => lsys::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLASLt's handle and the workspace its algorithms may use.
struct LtHandle {
    handle: lsys::cublasLtHandle_t,
    workspace: DevBuf,
}

// SAFETY: a cuBLASLt handle may be used from any thread (one call at a time is all we do:
// every call goes through the owning Gpu, whose work is ordered on its one stream).
unsafe impl Send for LtHandle {}
// SAFETY: as for Send: shared references only reach the handle through the owning Gpu.
unsafe impl Sync for LtHandle {}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by lt::create_handle and destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// The descriptors of one GEMM shape, shared by its cuBLASLt candidates.
struct LtProblem {
    desc: lsys::cublasLtMatmulDesc_t,
    a: lsys::cublasLtMatrixLayout_t,
    b: lsys::cublasLtMatrixLayout_t,
    c: lsys::cublasLtMatrixLayout_t,
}

// SAFETY: descriptors are never modified after `LtProblem::new`; cuBLASLt only reads them.
unsafe impl Send for LtProblem {}
// SAFETY: as for Send: shared use only reads the descriptors.
unsafe impl Sync for LtProblem {}

impl Drop for LtProblem {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once in LtProblem::new and is destroyed once;
        // a null one (creation failed part way) is skipped.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
    }
}

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> Error + '_ {
    move |e| Error::Cuda(format!("cuBLASLt {what}: {e}"))
}

impl LtProblem {
    fn new(s: &GemmSpec) -> Result<LtProblem> {
        let compute = if s.tf32 {
            lsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            lsys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let mut p = LtProblem {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
        };
        p.desc = lt::create_matmul_desc(compute, lsys::cudaDataType::CUDA_R_32F)
            .map_err(lt_err("matmul descriptor"))?;
        // cublasOperation_t: 0 = N, 1 = T.
        let op_a: i32 = s.trans_a as i32;
        // SAFETY: desc is live; TRANSA takes one 32-bit cublasOperation_t.
        unsafe {
            lt::set_matmul_desc_attribute(
                p.desc,
                lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op_a as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(lt_err("TRANSA"))?;
        let (ar, ac) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
        p.a = lt::create_matrix_layout(lt_type(s.a_type), ar as u64, ac as u64, s.lda as i64)
            .map_err(lt_err("layout of A"))?;
        p.b = lt::create_matrix_layout(lt_type(s.b_type), s.k as u64, s.n as u64, s.ldb as i64)
            .map_err(lt_err("layout of B"))?;
        p.c = lt::create_matrix_layout(lt_type(s.c_type), s.m as u64, s.n as u64, s.ldc as i64)
            .map_err(lt_err("layout of C"))?;
        Ok(p)
    }
}

/// An algorithm for one shape.
#[derive(Clone)]
enum Choice {
    Cublas,
    Lt {
        problem: Arc<LtProblem>,
        algo: lsys::cublasLtMatmulAlgo_t,
        /// Rank in cuBLASLt's heuristic list.
        rank: usize,
    },
}

impl Choice {
    fn name(&self) -> String {
        match self {
            Choice::Cublas => "cublas".into(),
            Choice::Lt { rank, .. } => format!("lt#{rank}"),
        }
    }
}

/// What a search measured: kept for reports (`sae-bench run` prints it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchRecord {
    /// The GEMM searched.
    pub spec: GemmSpec,
    /// How the algorithm was to be picked.
    pub mode: GemmMode,
    /// (candidate, median ms of the timed runs, or why it was dropped).
    pub candidates: Vec<(String, std::result::Result<f64, String>)>,
    /// The candidate kept.
    pub chosen: String,
}

/// Per-device GEMM state: the cuBLASLt handle (created on first use) and the choices made.
#[derive(Default)]
pub struct Gemm {
    lt: OnceLock<std::result::Result<LtHandle, String>>,
    chosen: Mutex<HashMap<(GemmSpec, GemmMode), Choice>>,
    records: Mutex<Vec<SearchRecord>>,
}

impl Gemm {
    /// The searches run so far on this device.
    pub fn records(&self) -> Vec<SearchRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn lt_handle(gpu: &Gpu) -> Result<&LtHandle> {
    gpu.gemm
        .lt
        .get_or_init(|| {
            loader::ensure(Lib::CublasLt).map_err(|e| e.to_string())?;
            let handle =
                lt::create_handle().map_err(|e| format!("creating the cuBLASLt handle: {e}"))?;
            // NVIDIA's recommendation: 32 MiB on Hopper, 4 MiB before. The encode planner
            // reserves 64 MiB of the workspace budget for cuBLAS and this.
            let bytes = if gpu.info.compute_capability.0 >= 9 {
                32 << 20
            } else {
                4 << 20
            };
            let workspace = match gpu.alloc(bytes) {
                Ok(w) => w,
                Err(e) => {
                    // SAFETY: just created, not used.
                    let _ = unsafe { lt::destroy_handle(handle) };
                    return Err(e.to_string());
                }
            };
            Ok(LtHandle { handle, workspace })
        })
        .as_ref()
        .map_err(|e| Error::BackendUnavailable(format!("cuBLASLt: {e}")))
}

/// cuBLASLt's candidates for `s`, best-ranked first.
fn lt_candidates(gpu: &Gpu, s: &GemmSpec) -> Result<Vec<Choice>> {
    let h = lt_handle(gpu)?;
    let problem = Arc::new(LtProblem::new(s)?);
    let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
    let ws = h.workspace.bytes;
    // SAFETY: a plain C struct of integers and an integer enum whose 0 is a valid variant
    // (CUBLAS_STATUS_SUCCESS); cuBLASLt overwrites the entries it returns.
    let blank: lsys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
    let mut results = vec![blank; MAX_CANDIDATES];
    let mut count = 0i32;
    // SAFETY: pref and the problem's descriptors are live; `results` holds MAX_CANDIDATES
    // entries, the count we ask for; the workspace limit is a usize (u64) as documented.
    let r = unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            lsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const usize as *const c_void,
            std::mem::size_of::<usize>(),
        )
        .and_then(|_| {
            lsys::cublasLtMatmulAlgoGetHeuristic(
                h.handle,
                problem.desc,
                problem.a,
                problem.b,
                problem.c,
                problem.c,
                pref,
                MAX_CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut count,
            )
            .result()
        })
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { lt::destroy_matmul_pref(pref) };
    r.map_err(lt_err("heuristic"))?;
    Ok(results
        .iter()
        .take(count.clamp(0, MAX_CANDIDATES as i32) as usize)
        .enumerate()
        .filter(|(_, r)| {
            r.state == lsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= ws
        })
        .map(|(rank, r)| Choice::Lt {
            problem: problem.clone(),
            algo: r.algo,
            rank,
        })
        .collect())
}

fn execute(gpu: &Gpu, s: &GemmSpec, p: GemmPtrs, choice: &Choice) -> Result<()> {
    let alpha = 1.0f32;
    let beta = 0.0f32;
    match choice {
        Choice::Cublas => {
            let [m, n, k, lda, ldb, ldc] = s.dims_i32()?;
            let op_a = if s.trans_a {
                bsys::cublasOperation_t::CUBLAS_OP_T
            } else {
                bsys::cublasOperation_t::CUBLAS_OP_N
            };
            let compute = if s.tf32 {
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
            } else {
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F
            };
            // SAFETY: cublasGemmEx(handle, opA, opB=N, m, n, k, alpha, A, Atype, lda, B, Btype,
            // ldb, beta, C, Ctype, ldc, compute, algo): the caller's buffers hold op(A) m x k at
            // lda, B k x n at ldb and C m x n at ldc in the spec's types; alpha/beta are host
            // f32 scalars matching the 32F compute type; the handle is on gpu.stream.
            unsafe {
                blas::gemm_ex(
                    *gpu.blas.handle(),
                    op_a,
                    bsys::cublasOperation_t::CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    &alpha as *const f32 as *const c_void,
                    p.a as *const c_void,
                    blas_type(s.a_type),
                    lda,
                    p.b as *const c_void,
                    blas_type(s.b_type),
                    ldb,
                    &beta as *const f32 as *const c_void,
                    p.c as *mut c_void,
                    blas_type(s.c_type),
                    ldc,
                    compute,
                    bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| Error::Cuda(format!("cuBLAS GEMM {m}x{n}x{k}: {e}")))
        }
        Choice::Lt {
            problem,
            algo,
            rank,
            ..
        } => {
            let h = lt_handle(gpu)?;
            // SAFETY: cublasLtMatmul(handle, desc, alpha, A, Adesc, beta, C, Cdesc, D, Ddesc,
            // algo, workspace, size, stream): descriptors describe exactly the spec's A, B, C
            // (C doubles as D, beta = 0); the algorithm came from the heuristic for these
            // descriptors and needs no more workspace than we hold; the stream is gpu.stream.
            unsafe {
                lt::matmul(
                    h.handle,
                    problem.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    p.a as *const c_void,
                    problem.a,
                    p.b as *const c_void,
                    problem.b,
                    p.c as *const c_void,
                    problem.c,
                    p.c as *mut c_void,
                    problem.c,
                    algo,
                    h.workspace.ptr as *mut c_void,
                    h.workspace.bytes,
                    gpu.stream.cu_stream() as lsys::cudaStream_t,
                )
            }
            .map_err(|e| {
                Error::Cuda(format!(
                    "cuBLASLt GEMM {}x{}x{} (candidate {rank}): {e}",
                    s.m, s.n, s.k
                ))
            })
        }
    }
}

/// Runs C = op(A) B for `spec` with the algorithm `mode` calls for (searching once per
/// shape and mode when it has to).
pub fn run(gpu: &Gpu, mode: GemmMode, spec: &GemmSpec, p: GemmPtrs) -> Result<()> {
    if mode == GemmMode::Cublas || (mode == GemmMode::Auto && spec.macs() < SEARCH_MIN_MACS) {
        return execute(gpu, spec, p, &Choice::Cublas);
    }
    let key = (*spec, mode);
    let known = gpu
        .gemm
        .chosen
        .lock()
        .map_err(|_| Error::Cuda("GEMM choice cache poisoned".into()))?
        .get(&key)
        .cloned();
    let choice = match known {
        Some(c) => c,
        None => match search(gpu, mode, spec, p)? {
            Some(c) => {
                if let Ok(mut m) = gpu.gemm.chosen.lock() {
                    m.insert(key, c.clone());
                }
                c
            }
            // The reference output could not be checked (non-finite everywhere): this call
            // uses cuBLAS and the next one searches again.
            None => Choice::Cublas,
        },
    };
    execute(gpu, spec, p, &choice)
}

/// Per-column (sum, sum of |x|) of C, on the host.
fn column_sums(gpu: &Gpu, s: &GemmSpec, c: u64, out: &DevBuf) -> Result<Vec<f32>> {
    let name = if s.c_type == DType::BF16 {
        "colsum_bf16"
    } else {
        "colsum_f32"
    };
    let f = gpu.kernel(name)?;
    let (ld, m) = (s.ldc as i64, s.m as i32);
    let mut b = gpu.stream.launch_builder(f);
    b.arg(&c).arg(&ld).arg(&m).arg(&out.ptr);
    let cfg = Gpu::per_row(s.n, 256);
    // SAFETY: colsum_<f32|bf16>(c, ld, m, out): one block per column of C (n blocks), each
    // reading m elements at column stride ld; out holds 2n f32.
    unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda(format!("launching {name}: {e}")))?;
    let mut h = vec![0f32; 2 * s.n];
    gpu.dtoh(&mut h, out.ptr)?;
    Ok(h)
}

/// Whether `got`'s column sums agree with the reference's: both finite and within 2^-6 of
/// the column's absolute sum (bf16 output rounding and split-K order stay far below that;
/// a transposed or misplaced result, or an unwritten one, does not), or both non-finite.
fn sums_agree(reference: &[f32], got: &[f32]) -> std::result::Result<(), String> {
    for (c, (r, g)) in reference.chunks(2).zip(got.chunks(2)).enumerate() {
        let fin_r = r[0].is_finite() && r[1].is_finite();
        let fin_g = g[0].is_finite() && g[1].is_finite();
        if fin_r != fin_g {
            return Err(format!("column {c}: sums {g:?}, reference {r:?}"));
        }
        if fin_r {
            let tol = (r[1].abs().max(g[1].abs()) as f64) / 64.0 + 1e-30;
            if (r[0] as f64 - g[0] as f64).abs() > tol || (r[1] as f64 - g[1] as f64).abs() > tol {
                return Err(format!("column {c}: sums {g:?}, reference {r:?}"));
            }
        }
    }
    Ok(())
}

/// Times the candidates on the caller's buffers (C is overwritten; `run` computes it again
/// with the winner). None when the reference result cannot be checked.
fn search(gpu: &Gpu, mode: GemmMode, s: &GemmSpec, p: GemmPtrs) -> Result<Option<Choice>> {
    let mut record = SearchRecord {
        spec: *s,
        mode,
        candidates: Vec::new(),
        chosen: String::new(),
    };
    let lt = match lt_candidates(gpu, s) {
        Ok(v) => v,
        // In auto mode a missing cuBLASLt only means cuBLAS (recorded below).
        Err(e) if mode == GemmMode::Auto => {
            record.candidates.push(("lt".into(), Err(e.to_string())));
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let chosen = if lt.is_empty() {
        // Nothing to compare against cuBLAS (no algorithm for this shape, or no cuBLASLt).
        if record.candidates.is_empty() {
            let why = "no cuBLASLt algorithm for this shape".to_string();
            record.candidates.push(("lt".into(), Err(why)));
        }
        Choice::Cublas
    } else {
        let mut trial = DeviceTrial {
            gpu,
            s,
            p,
            sums: gpu.alloc(2 * s.n * 4)?,
            c_bytes: (s.ldc * (s.n - 1) + s.m) * s.c_type.size(),
        };
        let auto = (mode == GemmMode::Auto).then_some(Choice::Cublas);
        let named = auto.into_iter().chain(lt).map(|c| (c.name(), c)).collect();
        match pick(
            mode,
            named,
            Choice::Cublas,
            &mut trial,
            &mut record.candidates,
        ) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(Error::Cuda(m)) => return Err(Error::Cuda(format!("{m} (GEMM {s:?})"))),
            Err(e) => return Err(e),
        }
    };
    record.chosen = chosen.name();
    if let Ok(mut r) = gpu.gemm.records.lock() {
        r.push(record);
    }
    Ok(Some(chosen))
}

/// The device side of a search, behind a trait so that [`pick`]'s decisions are tested
/// without a GPU.
trait Trial<C> {
    /// cuBLAS's result of the call: its column sums.
    fn reference(&mut self) -> Result<Vec<f32>>;
    /// Runs `c` once into a poisoned C and returns C's column sums.
    fn check(&mut self, c: &C) -> Result<Vec<f32>>;
    /// Median ms of [`SEARCH_REPS`] timed runs of `c`.
    fn time(&mut self, c: &C) -> Result<f64>;
}

struct DeviceTrial<'a> {
    gpu: &'a Gpu,
    s: &'a GemmSpec,
    p: GemmPtrs,
    sums: DevBuf,
    c_bytes: usize,
}

impl Trial<Choice> for DeviceTrial<'_> {
    fn reference(&mut self) -> Result<Vec<f32>> {
        execute(self.gpu, self.s, self.p, &Choice::Cublas)?;
        column_sums(self.gpu, self.s, self.p.c, &self.sums)
    }

    fn check(&mut self, c: &Choice) -> Result<Vec<f32>> {
        // Poison C (all bits set: NaN in f32 and bf16) so an algorithm that writes nothing
        // cannot pass on the previous candidate's result.
        // SAFETY: p.c holds the c_bytes that C spans.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                self.p.c,
                0xff,
                self.c_bytes,
                self.gpu.stream.cu_stream(),
            )
        }
        .map_err(|e| Error::Cuda(format!("memset: {e}")))?;
        execute(self.gpu, self.s, self.p, c)?;
        column_sums(self.gpu, self.s, self.p.c, &self.sums)
    }

    fn time(&mut self, c: &Choice) -> Result<f64> {
        self.gpu
            .median_ms(SEARCH_REPS, || execute(self.gpu, self.s, self.p, c))
    }
}

/// Chooses among `cands` (named): each is run once and must reproduce the reference's column
/// sums, then timed; the fastest wins. Every outcome is appended to `log`. None when the
/// reference cannot be checked (non-finite in every column). When no candidate passes,
/// `Auto` falls back to `fallback` and `Lt` is an error.
fn pick<C: Clone>(
    mode: GemmMode,
    cands: Vec<(String, C)>,
    fallback: C,
    trial: &mut impl Trial<C>,
    log: &mut Vec<(String, std::result::Result<f64, String>)>,
) -> Result<Option<C>> {
    let reference = trial.reference()?;
    if reference
        .chunks(2)
        .all(|r| !(r[0].is_finite() && r[1].is_finite()))
    {
        return Ok(None);
    }
    let mut best: Option<(f64, C)> = None;
    for (name, c) in cands {
        let timed = trial
            .check(&c)
            .map_err(|e| e.to_string())
            .and_then(|got| sums_agree(&reference, &got))
            .and_then(|_| trial.time(&c).map_err(|e| e.to_string()));
        if let Ok(ms) = timed {
            if best.as_ref().is_none_or(|(b, _)| ms < *b) {
                best = Some((ms, c));
            }
        }
        log.push((name, timed));
    }
    match best {
        Some((_, c)) => Ok(Some(c)),
        None if mode == GemmMode::Auto => Ok(Some(fallback)),
        None => Err(Error::Cuda(format!(
            "no cuBLASLt algorithm reproduced cuBLAS's result: {log:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(GemmMode::parse("auto"), Some(GemmMode::Auto));
        assert_eq!(GemmMode::parse("cublas"), Some(GemmMode::Cublas));
        assert_eq!(GemmMode::parse("lt"), Some(GemmMode::Lt));
        assert_eq!(GemmMode::parse("cublaslt"), Some(GemmMode::Lt));
        assert_eq!(GemmMode::parse("fast"), None);
    }

    #[test]
    fn column_sum_check() {
        let r = [10.0, 20.0, -3.0, 5.0];
        assert!(sums_agree(&r, &[10.1, 20.0, -3.0, 5.05]).is_ok());
        // A transposed or stale result moves the sums far beyond 1/64 of the abs sum.
        assert!(sums_agree(&r, &[-3.0, 5.0, 10.0, 20.0]).is_err());
        // Poisoned (never written) output: NaN where the reference is finite.
        assert!(sums_agree(&r, &[f32::NAN, f32::NAN, -3.0, 5.0]).is_err());
        // Non-finite in both (an input row of NaN) counts as agreement for that column.
        assert!(sums_agree(
            &[f32::NAN, f32::NAN, 1.0, 1.0],
            &[f32::NAN, f32::INFINITY, 1.0, 1.0]
        )
        .is_ok());
    }

    /// A fake device: candidate i yields sums[i] when checked (None: the run fails) and
    /// takes ms[i] when timed.
    struct Fake {
        reference: Vec<f32>,
        sums: Vec<Option<Vec<f32>>>,
        ms: Vec<f64>,
        timed: Vec<usize>,
    }

    impl Trial<usize> for Fake {
        fn reference(&mut self) -> Result<Vec<f32>> {
            Ok(self.reference.clone())
        }
        fn check(&mut self, c: &usize) -> Result<Vec<f32>> {
            self.sums[*c]
                .clone()
                .ok_or_else(|| Error::Cuda("launch failed".into()))
        }
        fn time(&mut self, c: &usize) -> Result<f64> {
            self.timed.push(*c);
            Ok(self.ms[*c])
        }
    }

    fn named(n: usize) -> Vec<(String, usize)> {
        (0..n).map(|i| (format!("c{i}"), i)).collect()
    }

    #[test]
    fn pick_takes_the_fastest_candidate_that_reproduces_the_reference() {
        let good = vec![4.0, 8.0];
        let mut f = Fake {
            reference: good.clone(),
            // c1 is fastest but wrong (a transposed result), c3 fails to launch.
            sums: vec![
                Some(good.clone()),
                Some(vec![-4.0, 8.0]),
                Some(good.clone()),
                None,
            ],
            ms: vec![3.0, 1.0, 2.5, 0.5],
            timed: Vec::new(),
        };
        let mut log = Vec::new();
        let got = pick(GemmMode::Auto, named(4), 99, &mut f, &mut log).unwrap();
        assert_eq!(got, Some(2));
        // Only checked candidates are timed.
        assert_eq!(f.timed, vec![0, 2]);
        assert_eq!(log.len(), 4);
        assert!(log[1].1.is_err() && log[3].1.is_err());
        assert_eq!(log[2].1, Ok(2.5));
    }

    #[test]
    fn pick_falls_back_in_auto_and_fails_in_lt_when_nothing_passes() {
        let fake = || Fake {
            reference: vec![1.0, 1.0],
            sums: vec![Some(vec![f32::NAN, f32::NAN]), None],
            ms: vec![1.0, 1.0],
            timed: Vec::new(),
        };
        let mut log = Vec::new();
        assert_eq!(
            pick(GemmMode::Auto, named(2), 7, &mut fake(), &mut log).unwrap(),
            Some(7)
        );
        let mut log = Vec::new();
        let err = pick(GemmMode::Lt, named(2), 7, &mut fake(), &mut log).unwrap_err();
        assert!(err.to_string().contains("no cuBLASLt algorithm"), "{err}");
    }

    #[test]
    fn pick_declines_when_the_reference_cannot_be_checked() {
        let mut f = Fake {
            reference: vec![f32::NAN, f32::NAN, f32::INFINITY, 1.0],
            sums: vec![Some(vec![0.0; 4])],
            ms: vec![1.0],
            timed: Vec::new(),
        };
        let mut log = Vec::new();
        assert_eq!(
            pick(GemmMode::Lt, named(1), 0, &mut f, &mut log).unwrap(),
            None
        );
        assert!(f.timed.is_empty() && log.is_empty());
    }

    #[test]
    fn dims_must_fit_i32() {
        let s = GemmSpec {
            m: 1 << 31,
            n: 1,
            k: 1,
            trans_a: true,
            lda: 1,
            ldb: 1,
            ldc: 1,
            a_type: DType::BF16,
            b_type: DType::BF16,
            c_type: DType::F32,
            tf32: false,
        };
        assert!(s.dims_i32().is_err());
        assert_eq!(s.macs(), 1u128 << 31);
    }
}
