// Decode: gather-sum of decoder rows, one block per token.
//   out[r, c] = (b_dec[c] + sum_e (val_e / norm[idx_e]?) * W_dec[idx_e, c]) * scale[r] + shift[r]
// Vector kernels (decode_<dtype>) read 16 bytes per thread per row and need d % (16 / size) == 0;
// decode_strided_<dtype> serves other widths and decoders stored transposed. Row offsets are
// 64-bit (2^21 latents x 4096 columns overflows 32 bits). Accumulation is f32 in entry order.
// When x is given, per-row reconstruction sums [err, ||x||^2, ||x_hat||^2, x.x_hat] (f64)
// are written to metrics[r * 4 ..].
#include "common.cuh"

#define DEC_CHUNK 1024
#define DEC_G 4
#define DEC_U 4  // entries whose loads are in flight together (vector kernels)

__device__ __forceinline__ void dec_reduce_metrics(double m[4], double* __restrict__ metrics, int row) {
    __shared__ double part[32][4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int q = 0; q < 4; q++)
        for (int o = 16; o > 0; o >>= 1) m[q] += __shfl_down_sync(0xffffffffu, m[q], o);
    if (lane == 0)
        for (int q = 0; q < 4; q++) part[warp][q] = m[q];
    __syncthreads();
    if (threadIdx.x < 4) {
        double s = 0.0;
        for (int w = 0; w < nw; w++) s += part[w][threadIdx.x];
        metrics[(long long)row * 4 + threadIdx.x] = s;
    }
}

// Loads the row's entries into shared memory (value already divided by the decoder norm).
__device__ __forceinline__ int dec_stage(const long long* __restrict__ row_ptr, const int* __restrict__ idx,
                                         const float* __restrict__ val, const float* __restrict__ norm,
                                         long long e0, long long end, int* s_idx, float* s_val) {
    int n = (int)((end - e0) < DEC_CHUNK ? (end - e0) : DEC_CHUNK);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int l = idx[e0 + i];
        float v = val[e0 + i];
        if (l >= 0 && norm) v = norm[l] > 0.0f ? v / norm[l] : 0.0f;
        s_idx[i] = l;
        s_val[i] = v;
    }
    __syncthreads();
    return n;
}

__device__ __forceinline__ void dec_out(int row, long long c, int d, float acc, const float* __restrict__ b_dec,
                                        const float* __restrict__ scale, const float* __restrict__ shift,
                                        float* __restrict__ out, const float* __restrict__ x, double m[4]) {
    // acc started at b_dec[c]. No FMA contraction: the CPU reference rounds each product,
    // sum and rescale separately, so the GPU result is bit-identical for the same order.
    float y = acc;
    if (scale) y = __fadd_rn(__fmul_rn(y, scale[row]), shift[row]);
    long long o = (long long)row * d + c;
    out[o] = y;
    if (x) {
        double a = x[o], b = y;
        m[0] += (a - b) * (a - b);
        m[1] += a * a;
        m[2] += b * b;
        m[3] += a * b;
    }
}

// 16-byte loads of a decoder row segment, widened to f32.
__device__ __forceinline__ void load16(const float* p, float* w) {
    float4 v = *reinterpret_cast<const float4*>(p);
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
}
template <class D>
__device__ __forceinline__ void load16h(const u16* p, float* w) {
    uint4 v = *reinterpret_cast<const uint4*>(p);
    u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[2 * i] = D::load((const u16*)&u[i], 0);
        w[2 * i + 1] = D::load((const u16*)&u[i], 1);
    }
}

template <class D, int VEC>
__device__ __forceinline__ void decode_vec(const long long* __restrict__ row_ptr, const int* __restrict__ idx,
                                           const float* __restrict__ val, const typename D::T* __restrict__ W, int d,
                                           const float* __restrict__ norm, const float* __restrict__ b_dec,
                                           const float* __restrict__ scale, const float* __restrict__ shift,
                                           float* __restrict__ out, const float* __restrict__ x,
                                           double* __restrict__ metrics) {
    __shared__ int s_idx[DEC_CHUNK];
    __shared__ float s_val[DEC_CHUNK];
    const int row = blockIdx.x;
    const long long start = row_ptr[row], end = row_ptr[row + 1];
    const int ngroups = d / VEC;
    const int per_pass = DEC_G * blockDim.x;
    const int npasses = (ngroups + per_pass - 1) / per_pass;
    double m[4] = {0.0, 0.0, 0.0, 0.0};
    for (int pass = 0; pass < npasses; pass++) {
        float acc[DEC_G][VEC];
#pragma unroll
        for (int q = 0; q < DEC_G; q++)
#pragma unroll
            for (int t = 0; t < VEC; t++) {
                int g = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
                acc[q][t] = g < ngroups ? b_dec[(long long)g * VEC + t] : 0.0f;
            }
        for (long long e0 = start; e0 < end; e0 += DEC_CHUNK) {
            int n = dec_stage(row_ptr, idx, val, norm, e0, end, s_idx, s_val);
            // DEC_U entries at a time: all their 16-byte loads are issued before any is used,
            // so DEC_U * DEC_G loads are in flight per thread (bf16 rows are short: latency-bound
            // otherwise). The sums still run in entry order: bit-identical to one at a time.
            // f32 rows (16 KB) already stream at 4.4 TB/s one entry at a time: only 16-bit
            // rows take the grouped loop.
            int e = 0;
            for (; VEC == 8 && e + DEC_U <= n; e += DEC_U) {
                uint4 raw[DEC_U][DEC_G];
#pragma unroll
                for (int u = 0; u < DEC_U; u++) {
                    int l = s_idx[e + u];
                    const uint4* wrow = reinterpret_cast<const uint4*>(W + (long long)(l < 0 ? 0 : l) * d);
#pragma unroll
                    for (int q = 0; q < DEC_G; q++) {
                        int g = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
                        if (g < ngroups && l >= 0) raw[u][q] = wrow[g];
                    }
                }
#pragma unroll
                for (int u = 0; u < DEC_U; u++) {
                    if (s_idx[e + u] < 0) continue;
                    float v = s_val[e + u];
#pragma unroll
                    for (int q = 0; q < DEC_G; q++) {
                        int g = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
                        if (g < ngroups) {
                            float w[VEC];
                            if constexpr (VEC == 4) load16((const float*)&raw[u][q], w);
                            else load16h<D>((const u16*)&raw[u][q], w);
#pragma unroll
                            for (int t = 0; t < VEC; t++) acc[q][t] = __fadd_rn(acc[q][t], __fmul_rn(v, w[t]));
                        }
                    }
                }
            }
#pragma unroll 2
            for (; e < n; e++) {
                int l = s_idx[e];
                if (l < 0) continue;
                float v = s_val[e];
                const typename D::T* wrow = W + (long long)l * d;
#pragma unroll
                for (int q = 0; q < DEC_G; q++) {
                    int g = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
                    if (g < ngroups) {
                        float w[VEC];
                        if constexpr (VEC == 4) load16((const float*)(wrow) + g * 4, w);
                        else load16h<D>((const u16*)(wrow) + g * 8, w);
#pragma unroll
                        for (int t = 0; t < VEC; t++) acc[q][t] = __fadd_rn(acc[q][t], __fmul_rn(v, w[t]));
                    }
                }
            }
        }
#pragma unroll
        for (int q = 0; q < DEC_G; q++) {
            int g = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
            if (g < ngroups)
#pragma unroll
                for (int t = 0; t < VEC; t++) dec_out(row, (long long)g * VEC + t, d, acc[q][t], b_dec, scale, shift, out, x, m);
        }
    }
    if (metrics) dec_reduce_metrics(m, metrics, row);
}

// Any width, any layout: element (l, c) at l * row_stride + c * col_stride.
template <class D>
__device__ __forceinline__ void decode_strided(const long long* __restrict__ row_ptr, const int* __restrict__ idx,
                                               const float* __restrict__ val, const typename D::T* __restrict__ W,
                                               int d, long long row_stride, long long col_stride,
                                               const float* __restrict__ norm, const float* __restrict__ b_dec,
                                               const float* __restrict__ scale, const float* __restrict__ shift,
                                               float* __restrict__ out, const float* __restrict__ x,
                                               double* __restrict__ metrics) {
    __shared__ int s_idx[DEC_CHUNK];
    __shared__ float s_val[DEC_CHUNK];
    const int row = blockIdx.x;
    const long long start = row_ptr[row], end = row_ptr[row + 1];
    const int per_pass = DEC_G * blockDim.x;
    const int npasses = (d + per_pass - 1) / per_pass;
    double m[4] = {0.0, 0.0, 0.0, 0.0};
    for (int pass = 0; pass < npasses; pass++) {
        float acc[DEC_G];
#pragma unroll
        for (int q = 0; q < DEC_G; q++) {
            int c = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
            acc[q] = c < d ? b_dec[c] : 0.0f;
        }
        for (long long e0 = start; e0 < end; e0 += DEC_CHUNK) {
            int n = dec_stage(row_ptr, idx, val, norm, e0, end, s_idx, s_val);
            for (int e = 0; e < n; e++) {
                int l = s_idx[e];
                if (l < 0) continue;
                float v = s_val[e];
#pragma unroll
                for (int q = 0; q < DEC_G; q++) {
                    int c = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
                    if (c < d) acc[q] = __fadd_rn(acc[q], __fmul_rn(v, D::load(W, (long long)l * row_stride + (long long)c * col_stride)));
                }
            }
        }
#pragma unroll
        for (int q = 0; q < DEC_G; q++) {
            int c = (pass * DEC_G + q) * blockDim.x + threadIdx.x;
            if (c < d) dec_out(row, c, d, acc[q], b_dec, scale, shift, out, x, m);
        }
    }
    if (metrics) dec_reduce_metrics(m, metrics, row);
}

#define DEC_ARGS const long long *row_ptr, const int *idx, const float *val
#define DEC_TAIL const float *norm, const float *b_dec, const float *scale, const float *shift, float *out, \
                 const float *x, double *metrics
#define DEC_PASS row_ptr, idx, val
#define DEC_PASS_TAIL norm, b_dec, scale, shift, out, x, metrics

extern "C" __global__ void decode_f32(DEC_ARGS, const float* W, int d, DEC_TAIL) { decode_vec<F32, 4>(DEC_PASS, W, d, DEC_PASS_TAIL); }
extern "C" __global__ void __launch_bounds__(256, 2) decode_f16(DEC_ARGS, const u16* W, int d, DEC_TAIL) { decode_vec<F16, 8>(DEC_PASS, W, d, DEC_PASS_TAIL); }
extern "C" __global__ void __launch_bounds__(256, 2) decode_bf16(DEC_ARGS, const u16* W, int d, DEC_TAIL) { decode_vec<BF16, 8>(DEC_PASS, W, d, DEC_PASS_TAIL); }

extern "C" __global__ void decode_strided_f32(DEC_ARGS, const float* W, int d, long long rs, long long cs, DEC_TAIL) {
    decode_strided<F32>(DEC_PASS, W, d, rs, cs, DEC_PASS_TAIL);
}
extern "C" __global__ void decode_strided_f16(DEC_ARGS, const u16* W, int d, long long rs, long long cs, DEC_TAIL) {
    decode_strided<F16>(DEC_PASS, W, d, rs, cs, DEC_PASS_TAIL);
}
extern "C" __global__ void decode_strided_bf16(DEC_ARGS, const u16* W, int d, long long rs, long long cs, DEC_TAIL) {
    decode_strided<BF16>(DEC_PASS, W, d, rs, cs, DEC_PASS_TAIL);
}
