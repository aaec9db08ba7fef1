// Streaming top-k over encoder GEMM tiles.
//
// The GEMM writes one tile of pre-activations, scores[row, j] for latents
// latent0 + j, into scratch. topk_select_f32 then makes one pass over each row of
// the tile: a compare of the score plus its block's largest bias (times the largest
// decoder-norm scale) against the row's running k-th value rules out almost every
// score; the rest get bias, optional decoder-norm rescale and the exact key compare
// against the row's running k-th key. Rare survivors are merged into the row's sorted top-k
// (kept in `state` as composite keys, see common.cuh). When a tile yields more
// survivors than shared memory holds (typically the first tile), an exact radix
// select on the composite key picks exactly the tile's top k first.
#include "common.cuh"

#define TOPK_THREADS 256
#define TOPK_CAP 2048  // shared candidate slots (u64): kept k (<= 512) + survivors

// Pre-activation for tile column j; false when h is not > 0 (TopK keeps only positive
// values). A NaN or +inf h (bad weights, overflow) records the row in *bad, as the CPU
// reference reports it; the input itself was checked on the host.
__device__ __forceinline__ bool topk_h(float s, unsigned j, unsigned latent0, const float* __restrict__ b_enc,
                                       const float* __restrict__ scale, u64* key, int* bad) {
    unsigned l = latent0 + j;
    float h = s + b_enc[l];
    if (scale) h *= scale[l];
    if (h != h || h == __int_as_float(0x7f800000)) {
        atomicMin(bad, (int)blockIdx.x);
        return false;
    }
    if (!(h > 0.0f)) return false;
    *key = topk_key(h, l);
    return true;
}

// Score readers. The bf16 scratch (Fast mode, bf16 weights) holds the GEMM's f32 result
// rounded to nearest bf16, which is within 2^-8 |s| of it; the reader returns an upper bound
// s + 2^-7 |s|, so the selection is over bounds and the leftover 2^-8 |s| covers the
// summation-order difference of the f32 rescoring (topk_rescore_bf16).
struct ScoreF32 {
    typedef float T;
    enum { VEC = 4 };
    static __device__ __forceinline__ float get(const float* p, long long j) { return p[j]; }
    static __device__ __forceinline__ void vec(const float* p, float* s) {
        float4 v = *reinterpret_cast<const float4*>(p);
        s[0] = v.x; s[1] = v.y; s[2] = v.z; s[3] = v.w;
    }
};
__device__ __forceinline__ float bf16_upper(u16 b) {
    float s = bf16_to_f32(b);
    return s + fabsf(s) * 0.0078125f;
}
struct ScoreBF16Upper {
    typedef u16 T;
    enum { VEC = 8 };
    static __device__ __forceinline__ float get(const u16* p, long long j) { return bf16_upper(p[j]); }
    static __device__ __forceinline__ void vec(const u16* p, float* s) {
        uint4 v = *reinterpret_cast<const uint4*>(p);
        u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            s[2 * i] = bf16_upper((u16)(u[i] & 0xffffu));
            s[2 * i + 1] = bf16_upper((u16)(u[i] >> 16));
        }
    }
};

// Whether a score can be skipped without computing its key: `ub` bounds the pre-activation
// of every latent in the score's 128-latent block from above (block maxima of b_enc and of
// the scale, NaN when the block holds a non-finite one), so ub < thr_val proves h < the
// row's k-th value (or h < 0 while the row is not full). A -inf or NaN score always takes
// the full path, which reports non-finite pre-activations.
__device__ __forceinline__ bool topk_skip(float s, float bmax, const float* smax_blk, float thr_val) {
    float ub = s + bmax;
    if (smax_blk && ub > 0.0f) ub *= *smax_blk;
    return ub < thr_val && s > __int_as_float(0xff800000);
}

// Block-wide bitonic sort, descending, of buf[0..n) in shared memory: padded with 0 (below
// any real key) up to the next power of two, which must fit in buf. Every thread of the
// block calls it; it ends with the block synchronized.
__device__ __forceinline__ void block_sort_desc(u64* buf, int n, int tid) {
    int p = 1;
    while (p < n) p <<= 1;
    for (int i = n + tid; i < p; i += TOPK_THREADS) buf[i] = 0;
    __syncthreads();
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < p; i += TOPK_THREADS) {
                int j = i ^ stride;
                if (j > i) {
                    u64 a = buf[i], b = buf[j];
                    bool desc = (i & size) == 0;
                    if (desc ? (a < b) : (a > b)) { buf[i] = b; buf[j] = a; }
                }
            }
            __syncthreads();
        }
    }
}

template <class S>
__device__ __forceinline__ void topk_select(const typename S::T* __restrict__ scores, long long ld, int tile_len,
                                            unsigned latent0, const float* __restrict__ b_enc,
                                            const float* __restrict__ scale, const float* __restrict__ bmax,
                                            const float* __restrict__ smax, u64* __restrict__ state,
                                            int* __restrict__ count, int k, int* __restrict__ bad) {
    __shared__ u64 buf[TOPK_CAP];
    __shared__ unsigned hist[256];
    __shared__ int n_cand;
    __shared__ u64 sh_prefix;
    __shared__ int sh_need, sh_done;

    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const typename S::T* srow = scores + (long long)row * ld;
    u64* srow_state = state + (long long)row * k;
    const int kept = count[row];
    // Floor: only h > 0 ever qualifies; a full row raises the bar to its k-th key.
    const u64 floor_key = (((u64)0x80000000u) << 32) | 0xffffffffull;
    const u64 thr = (kept == k) ? srow_state[k - 1] : floor_key;
    const int cap_c = TOPK_CAP - kept;

    if (tid == 0) n_cand = 0;
    for (int i = tid; i < kept; i += TOPK_THREADS) buf[i] = srow_state[i];
    __syncthreads();

    // Pass 1: one compare per value against a per-block bound (b_enc and the scale are read
    // only for the rare scores that pass it); survivors appended in any order (sorted below).
    const float thr_val = (kept == k) ? topk_key_value(thr) : 0.0f;
    const int vec_end = tile_len & ~(S::VEC - 1);
    for (int j = tid * S::VEC; j < vec_end; j += TOPK_THREADS * S::VEC) {
        float sv[S::VEC];
        S::vec(srow + j, sv);
        // latent0 is a multiple of 64 and j of VEC (<= 8): the VEC latents share a block.
        const unsigned blk = (latent0 + j) >> 7;
        const float bm = bmax[blk];
        const float* sm = smax ? smax + blk : nullptr;
#pragma unroll
        for (int q = 0; q < S::VEC; q++) {
            if (topk_skip(sv[q], bm, sm, thr_val)) continue;
            u64 key;
            if (topk_h(sv[q], j + q, latent0, b_enc, scale, &key, bad) && key > thr) {
                int pos = atomicAdd(&n_cand, 1);
                if (pos < cap_c) buf[kept + pos] = key;
            }
        }
    }
    for (int j = vec_end + tid; j < tile_len; j += TOPK_THREADS) {
        const unsigned blk = (latent0 + j) >> 7;
        const float s = S::get(srow, j);
        if (topk_skip(s, bmax[blk], smax ? smax + blk : nullptr, thr_val)) continue;
        u64 key;
        if (topk_h(s, j, latent0, b_enc, scale, &key, bad) && key > thr) {
            int pos = atomicAdd(&n_cand, 1);
            if (pos < cap_c) buf[kept + pos] = key;
        }
    }
    __syncthreads();
    int m = n_cand;
    if (m == 0) return;

    if (m > cap_c) {
        // Overflow: exact radix select (8 bits at a time, most significant first) of the
        // tile's k best survivors. Keys are unique, so the result is exactly k keys >= lo.
        if (tid == 0) { sh_prefix = 0; sh_need = k; sh_done = 0; }
        __syncthreads();
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += TOPK_THREADS) hist[i] = 0;
            __syncthreads();
            const u64 prefix = sh_prefix;
            const u64 hi_mask = (shift == 56) ? 0ull : (~0ull << (shift + 8));
            for (int j = tid; j < tile_len; j += TOPK_THREADS) {
                u64 key;
                if (topk_h(S::get(srow, j), j, latent0, b_enc, scale, &key, bad) && key > thr && (key & hi_mask) == prefix)
                    atomicAdd(&hist[(unsigned)(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                int need = sh_need;
                unsigned above = 0;
                int b = 255;
                for (; b > 0; b--) {
                    if (above + hist[b] >= (unsigned)need) break;
                    above += hist[b];
                }
                need -= (int)above;
                sh_prefix = prefix | ((u64)b << shift);
                sh_done = (hist[b] == (unsigned)need);
                sh_need = need;
            }
            __syncthreads();
            if (sh_done) break;
        }
        const u64 lo = sh_prefix;
        if (tid == 0) n_cand = 0;
        __syncthreads();
        for (int j = tid; j < tile_len; j += TOPK_THREADS) {
            u64 key;
            if (topk_h(S::get(srow, j), j, latent0, b_enc, scale, &key, bad) && key > thr && key >= lo) {
                int pos = atomicAdd(&n_cand, 1);
                buf[kept + pos] = key;  // exactly k of them, and kept + k <= TOPK_CAP
            }
        }
        __syncthreads();
        m = n_cand;
    }

    // Merge: sort kept + survivors.
    const int total = kept + m;
    block_sort_desc(buf, total, tid);
    const int n_out = total < k ? total : k;
    for (int i = tid; i < n_out; i += TOPK_THREADS) srow_state[i] = buf[i];
    if (tid == 0) count[row] = n_out;
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
topk_select_f32(const float* __restrict__ scores, long long ld, int tile_len, unsigned latent0,
                const float* __restrict__ b_enc, const float* __restrict__ scale, const float* __restrict__ bmax,
                const float* __restrict__ smax, u64* __restrict__ state, int* __restrict__ count, int k,
                int* __restrict__ bad) {
    topk_select<ScoreF32>(scores, ld, tile_len, latent0, b_enc, scale, bmax, smax, state, count, k, bad);
}

// Selection over upper bounds of bf16 scores: `state` ends with the top `k` (here k2, the
// candidate count) upper-bound keys, to be rescored by topk_rescore_bf16.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
topk_select_bf16(const u16* __restrict__ scores, long long ld, int tile_len, unsigned latent0,
                 const float* __restrict__ b_enc, const float* __restrict__ scale, const float* __restrict__ bmax,
                 const float* __restrict__ smax, u64* __restrict__ state, int* __restrict__ count, int k,
                 int* __restrict__ bad) {
    topk_select<ScoreBF16Upper>(scores, ld, tile_len, latent0, b_enc, scale, bmax, smax, state, count, k, bad);
}

#define RESCORE_CAP 1024  // candidates per row (k2 <= 576)

// Rescoring of the bf16 path, one block per row. Candidates are the row's top-k2 latents by
// upper bound; each gets its pre-activation recomputed as an f32 dot product of the
// bf16-rounded input and the bf16 weights (the Fast GEMM's arithmetic), then + b_enc, times
// the decoder-norm scale, as topk_h. The k best rescored keys become the codes. The choice is
// provably the top k of the rescored values when fewer than k2 latents had a positive bound
// (every possible winner is a candidate) or when the k-th rescored value beats the smallest
// kept bound (no latent left out can exceed it); otherwise the row is recorded in *retry and
// the engine re-encodes the chunk with f32 scores.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
topk_rescore_bf16(const u64* __restrict__ state, const int* __restrict__ count, int k2, int k,
                  const u16* __restrict__ x, const u16* __restrict__ W, int d, long long rs, long long cs,
                  const float* __restrict__ b_enc, const float* __restrict__ scale, int* __restrict__ idx_out,
                  float* __restrict__ val_out, int* __restrict__ bad, int* __restrict__ retry) {
    __shared__ u64 buf[RESCORE_CAP];
    const int row = blockIdx.x, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = TOPK_THREADS / 32;
    const int n = count[row];
    const u64* st = state + (long long)row * k2;
    const u16* xr = x + (long long)row * d;
    for (int c = warp; c < n; c += nwarps) {
        const int l = topk_key_index(st[c]);
        const u16* w = W + (long long)l * rs;
        float acc = 0.0f;
        if (cs == 1 && (d & 7) == 0) {
            // Contiguous rows of a multiple of 8: 16-byte loads (rows start 16-byte aligned).
            for (int i = lane * 8; i < d; i += 256) {
                uint4 xv = *reinterpret_cast<const uint4*>(xr + i);
                uint4 wv = *reinterpret_cast<const uint4*>(w + i);
                u32 xa[4] = {xv.x, xv.y, xv.z, xv.w}, wa[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    acc = fmaf(bf16_to_f32((u16)(xa[q] & 0xffffu)), bf16_to_f32((u16)(wa[q] & 0xffffu)), acc);
                    acc = fmaf(bf16_to_f32((u16)(xa[q] >> 16)), bf16_to_f32((u16)(wa[q] >> 16)), acc);
                }
            }
        } else {
            for (int i = lane; i < d; i += 32) acc = fmaf(bf16_to_f32(xr[i]), bf16_to_f32(w[(long long)i * cs]), acc);
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) {
            float h = __fadd_rn(acc, b_enc[l]);
            if (scale) h = __fmul_rn(h, scale[l]);
            u64 key = 0;
            if (h != h || h == __int_as_float(0x7f800000)) atomicMin(bad, row);
            else if (h > 0.0f) key = topk_key(h, (u32)l);
            buf[c] = key;
        }
    }
    block_sort_desc(buf, n, tid);
    for (int j = tid; j < k; j += TOPK_THREADS) {
        long long e = (long long)row * k + j;
        u64 key = j < n ? buf[j] : 0;
        if (key != 0) {
            idx_out[e] = topk_key_index(key);
            val_out[e] = topk_key_value(key);
        } else {
            idx_out[e] = -1;
            val_out[e] = 0.0f;
        }
    }
    if (tid == 0 && n == k2) {
        // Zero keys are non-positive values: fewer than k positives among the candidates
        // cannot be certified when some latents were left out.
        const u64 kth = k <= n ? buf[k - 1] : 0;
        const float lo_bound = topk_key_value(st[k2 - 1]);
        if (kth == 0 || !(topk_key_value(kth) > lo_bound)) atomicMin(retry, row);
    }
}

// Turns the running keys into the codes layout of src/codes.rs: indices/values [rows, k],
// largest first, padded with index -1 and value 0.0 past the row's count.
extern "C" __global__ void topk_finish_f32(const u64* __restrict__ state, const int* __restrict__ count, int rows,
                                           int k, int* __restrict__ idx_out, float* __restrict__ val_out) {
    long long n = (long long)rows * k;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        int r = (int)(e / k), j = (int)(e % k);
        if (j < count[r]) {
            u64 key = state[e];
            idx_out[e] = topk_key_index(key);
            val_out[e] = topk_key_value(key);
        } else {
            idx_out[e] = -1;
            val_out[e] = 0.0f;
        }
    }
}
