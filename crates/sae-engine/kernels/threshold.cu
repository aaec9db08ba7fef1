// Threshold activations (ReLU, JumpReLU) compacted into CSR, one tile of latents at a time.
// Two passes per tile: count survivors per row, then (after the host has laid the rows out
// so that every chunk fits the output buffer) write them in ascending latent order.
// `thresh` is null for ReLU. JumpReLU keeps h where h > threshold (strict) and h > 0.
#include "common.cuh"

#define THR_THREADS 256

__device__ __forceinline__ bool thr_active(float s, unsigned l, const float* __restrict__ b_enc,
                                           const float* __restrict__ thresh, float* h_out, int* bad) {
    float h = s + b_enc[l];
    *h_out = h;
    // NaN / +inf pre-activations (bad weights) are reported with the row, like the CPU engine.
    if (bad && (h != h || h == __int_as_float(0x7f800000))) atomicMin(bad, (int)blockIdx.x);
    if (thresh && !(h > thresh[l])) return false;
    return h > 0.0f;
}

extern "C" __global__ void __launch_bounds__(THR_THREADS)
threshold_count_f32(const float* __restrict__ scores, long long ld, int tile_len, unsigned latent0,
                    const float* __restrict__ b_enc, const float* __restrict__ thresh, int* __restrict__ counts, int* __restrict__ bad) {
    __shared__ int total;
    const float* srow = scores + (long long)blockIdx.x * ld;
    if (threadIdx.x == 0) total = 0;
    __syncthreads();
    int c = 0;
    for (int j = threadIdx.x; j < tile_len; j += THR_THREADS) {
        float h;
        c += thr_active(srow[j], latent0 + j, b_enc, thresh, &h, bad) ? 1 : 0;
    }
    for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(&total, c);
    __syncthreads();
    if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

// Block row = row0 + blockIdx.x writes its survivors at offsets[row] (relative to the output
// buffer) in ascending latent order: each 256-wide segment is compacted with a ballot scan.
extern "C" __global__ void __launch_bounds__(THR_THREADS)
threshold_write_f32(const float* __restrict__ scores, long long ld, int tile_len, unsigned latent0,
                    const float* __restrict__ b_enc, const float* __restrict__ thresh, int row0,
                    const long long* __restrict__ offsets, int* __restrict__ idx_out, float* __restrict__ val_out) {
    __shared__ int warp_tot[THR_THREADS / 32];
    __shared__ int warp_base[THR_THREADS / 32];
    __shared__ int seg_total;
    const int row = row0 + blockIdx.x;
    const float* srow = scores + (long long)row * ld;
    long long base = offsets[row];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j0 = 0; j0 < tile_len; j0 += THR_THREADS) {
        int j = j0 + threadIdx.x;
        float h = 0.0f;
        bool a = j < tile_len && thr_active(srow[j], latent0 + j, b_enc, thresh, &h, nullptr);
        unsigned ball = __ballot_sync(0xffffffffu, a);
        if (lane == 0) warp_tot[warp] = __popc(ball);
        __syncthreads();
        if (threadIdx.x == 0) {
            int s = 0;
            for (int w = 0; w < THR_THREADS / 32; w++) { warp_base[w] = s; s += warp_tot[w]; }
            seg_total = s;
        }
        __syncthreads();
        if (a) {
            long long pos = base + warp_base[warp] + __popc(ball & ((1u << lane) - 1u));
            idx_out[pos] = (int)(latent0 + j);
            val_out[pos] = h;
        }
        base += seg_total;
        __syncthreads();
    }
}
