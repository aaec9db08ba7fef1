// Dtype conversions on the device: activations into the weight dtype for the fast GEMM,
// and weight tiles widened to f32 for the exact GEMM (2-D strided, any layout).
#include "common.cuh"

extern "C" __global__ void narrow_bf16(const float* __restrict__ x, u16* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
}

extern "C" __global__ void narrow_f16(const float* __restrict__ x, u16* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = f32_to_f16(x[i]);
}

template <class D>
__device__ __forceinline__ void widen(const typename D::T* __restrict__ src, long long src_ld, float* __restrict__ dst,
                                      long long dst_ld, int rows, int cols) {
    long long n = (long long)rows * cols;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long r = e / cols, c = e % cols;
        dst[r * dst_ld + c] = D::load(src, r * src_ld + c);
    }
}

extern "C" __global__ void widen_bf16(const u16* src, long long src_ld, float* dst, long long dst_ld, int rows, int cols) {
    widen<BF16>(src, src_ld, dst, dst_ld, rows, cols);
}
extern "C" __global__ void widen_f16(const u16* src, long long src_ld, float* dst, long long dst_ld, int rows, int cols) {
    widen<F16>(src, src_ld, dst, dst_ld, rows, cols);
}

// Deterministic pseudo-random fill in [-scale, scale) (benchmarks generate multi-GB weights
// on the device instead of uploading them). splitmix64 of (seed, index).
__device__ __forceinline__ float rand_unit(u64 seed, long long i) {
    u64 z = seed + 0x9e3779b97f4a7c15ull * (u64)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

extern "C" __global__ void fill_random_f32(float* out, long long n, u64 seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = rand_unit(seed, i) * scale;
}
extern "C" __global__ void fill_random_bf16(u16* out, long long n, u64 seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(rand_unit(seed, i) * scale);
}
extern "C" __global__ void fill_random_f16(u16* out, long long n, u64 seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = f32_to_f16(rand_unit(seed, i) * scale);
}

// Device-pointer encode input: copies caller rows into the workspace, subtracting b_dec
// when given (the same single f32 subtraction as the host path), and records the
// smallest row with a non-finite input in bad[0] and with a non-finite result in bad[1].
extern "C" __global__ void prep_input_f32(const float* __restrict__ x, float* __restrict__ out, long long n, int d,
                                          const float* __restrict__ b_dec, int* __restrict__ bad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        int row = (int)(i / d);
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) atomicMin(&bad[0], row);
        if (b_dec) v = __fsub_rn(v, b_dec[i % d]);
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) atomicMin(&bad[1], row);
        out[i] = v;
    }
}
