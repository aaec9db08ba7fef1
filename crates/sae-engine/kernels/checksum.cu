// Column sums of a GEMM result, used to check a cuBLASLt algorithm against cuBLAS's own
// result before the algorithm search may choose it (src/cuda/gemm.rs).
#include "common.cuh"

#define COLSUM_THREADS 256

// out[2c] = sum of column c, out[2c + 1] = sum of |x| (m elements at c * ld); one block per
// column, f32 accumulation in a fixed order, so two equal columns give equal sums.
template <class L>
__device__ __forceinline__ void colsum(const typename L::T* __restrict__ c, long long ld, int m,
                                       float* __restrict__ out) {
    __shared__ float s_sum[COLSUM_THREADS], s_abs[COLSUM_THREADS];
    const typename L::T* col = c + (long long)blockIdx.x * ld;
    float sum = 0.0f, abs_sum = 0.0f;
    for (int i = threadIdx.x; i < m; i += COLSUM_THREADS) {
        float v = L::load(col, i);
        sum += v;
        abs_sum += fabsf(v);
    }
    s_sum[threadIdx.x] = sum;
    s_abs[threadIdx.x] = abs_sum;
    __syncthreads();
    for (int half = COLSUM_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            s_sum[threadIdx.x] += s_sum[threadIdx.x + half];
            s_abs[threadIdx.x] += s_abs[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = s_sum[0];
        out[2 * blockIdx.x + 1] = s_abs[0];
    }
}

extern "C" __global__ void __launch_bounds__(COLSUM_THREADS)
colsum_f32(const float* __restrict__ c, long long ld, int m, float* __restrict__ out) {
    colsum<F32>(c, ld, m, out);
}

extern "C" __global__ void __launch_bounds__(COLSUM_THREADS)
colsum_bf16(const u16* __restrict__ c, long long ld, int m, float* __restrict__ out) {
    colsum<BF16>(c, ld, m, out);
}
