//! Optional encode GEMM through the system OpenBLAS (`--features openblas`, needs
//! `libopenblas-dev`). Off by default so a fresh clone builds anywhere.

use std::os::raw::c_int;
use std::sync::Once;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "openblas")]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(n: c_int);
}

/// h[rows, t] = xp[rows, d] . tile, tile element (c, j) at `base[c * rs + j * cs]`
/// with `rs == 1` or `cs == 1`. Single-threaded: encode workers provide the parallelism.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_tile(
    xp: &[f32],
    rows: usize,
    d: usize,
    base: &[f32],
    rs: usize,
    cs: usize,
    t: usize,
    h: &mut [f32],
) {
    static ONE_THREAD: Once = Once::new();
    // SAFETY: plain setter of OpenBLAS's global thread count.
    ONE_THREAD.call_once(|| unsafe { openblas_set_num_threads(1) });
    assert!(xp.len() == rows * d && h.len() == rows * t && (rs == 1 || cs == 1));
    assert!((d - 1) * rs + (t - 1) * cs < base.len());
    let int = |v: usize| c_int::try_from(v).expect("GEMM dimension fits a C int");
    // BLAS wants a leading dimension at least the row length of the stored operand
    // (degenerate d = 1 or t = 1 views have both strides 1: pick the legal reading).
    let (tb, ldb) = if cs == 1 && rs >= t {
        (NO_TRANS, rs) // stored [d, t..]: depth steps are rows of `rs` latents
    } else {
        (TRANS, cs.max(d)) // stored [t, d..]: latents are rows of `cs` values
    };
    // SAFETY: shapes and strides checked above; `h` does not alias the inputs.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            NO_TRANS,
            tb,
            int(rows),
            int(t),
            int(d),
            1.0,
            xp.as_ptr(),
            int(d),
            base.as_ptr(),
            int(ldb),
            0.0,
            h.as_mut_ptr(),
            int(t),
        );
    }
}
