// Steering: x[r, c] += coeff * W_dec[latent, c] for every row, coeff = strength / ||W_dec[latent]||
// computed on the host. The decoder row is addressed with (row_offset, col_stride) so that
// decoders stored transposed are read in place.
#include "common.cuh"

template <class D>
__device__ __forceinline__ void steer(float* __restrict__ x, int rows, int d, const typename D::T* __restrict__ W,
                                      long long row_offset, long long col_stride, float coeff) {
    long long n = (long long)rows * d;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long c = e % d;
        x[e] = __fadd_rn(x[e], __fmul_rn(coeff, D::load(W, row_offset + c * col_stride)));
    }
}

extern "C" __global__ void steer_f32(float* x, int rows, int d, const float* W, long long off, long long cs, float coeff) {
    steer<F32>(x, rows, d, W, off, cs, coeff);
}
extern "C" __global__ void steer_f16(float* x, int rows, int d, const u16* W, long long off, long long cs, float coeff) {
    steer<F16>(x, rows, d, W, off, cs, coeff);
}
extern "C" __global__ void steer_bf16(float* x, int rows, int d, const u16* W, long long off, long long cs, float coeff) {
    steer<BF16>(x, rows, d, W, off, cs, coeff);
}
