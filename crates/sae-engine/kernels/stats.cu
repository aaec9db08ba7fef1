// Batched per-latent statistics: the codes of several models (dumps) in one launch.
// One warp per row; rows of all models are concatenated and row_model[r] says whose they are.
// Sums are f64 (f32 values summed in f64: order effects sit at 1e-16 relative), counts u64,
// max as u32 bits (activations are > 0, so integer order of the bits is float order).
#include "common.cuh"

extern "C" __global__ void stats_f32(const long long* __restrict__ row_ptr, const int* __restrict__ idx,
                                     const float* __restrict__ val, const unsigned char* __restrict__ mask,
                                     const int* __restrict__ row_model, int total_rows, int n_latents,
                                     double* __restrict__ sum, double* __restrict__ sum_sq,
                                     u64* __restrict__ n_active, u32* __restrict__ max_bits) {
    const int lane = threadIdx.x & 31;
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r = warp; r < total_rows; r += nwarps) {
        if (mask && mask[r] == 0) continue;
        const long long base = (long long)row_model[r] * n_latents;
        for (long long e = row_ptr[r] + lane; e < row_ptr[r + 1]; e += 32) {
            int l = idx[e];
            float v = val[e];
            if (l < 0 || !(v > 0.0f)) continue;
            double v64 = (double)v;
            atomicAdd(&sum[base + l], v64);
            atomicAdd(&sum_sq[base + l], v64 * v64);
            atomicAdd(&n_active[base + l], 1ull);
            atomicMax(&max_bits[base + l], __float_as_uint(v));
        }
    }
}
