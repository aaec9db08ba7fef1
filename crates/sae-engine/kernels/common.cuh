// Shared helpers for every kernel family. No system headers on purpose: the same
// sources compile with nvcc at build time and with NVRTC at run time (where
// cuda_bf16.h may be absent), so conversions go through PTX `cvt` directly.
#pragma once

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

// bf16 -> f32 is exact: the bf16 bits are the high half of an f32.
__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// f32 -> bf16, round to nearest even (NaN kept quiet), matching half::bf16::from_f32.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u32 lsb = (u >> 16) & 1u;
    return (u16)((u + 0x7fffu + lsb) >> 16);
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Element loaders by storage type, so one template body serves f32 / f16 / bf16.
struct F32 { typedef float T; static __device__ __forceinline__ float load(const float* p, i64 i) { return p[i]; } };
struct F16 { typedef u16 T; static __device__ __forceinline__ float load(const u16* p, i64 i) { return f16_to_f32(p[i]); } };
struct BF16 { typedef u16 T; static __device__ __forceinline__ float load(const u16* p, i64 i) { return bf16_to_f32(p[i]); } };

// Order-preserving map of an f32 onto u32: unsigned comparison of keys equals
// float comparison of values (-0.0 sorts just below +0.0; NaN never gets here).
__device__ __forceinline__ u32 f32_key(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_f32(u32 k) {
    u32 u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    return __uint_as_float(u);
}

// Composite top-k key: value first, then the smaller latent index wins a tie.
// Larger key = ranked earlier. A unique total order makes the selection independent of tiling.
__device__ __forceinline__ u64 topk_key(float v, u32 latent) {
    return (((u64)f32_key(v)) << 32) | (u64)(0xffffffffu - latent);
}
__device__ __forceinline__ float topk_key_value(u64 k) { return key_f32((u32)(k >> 32)); }
__device__ __forceinline__ int topk_key_index(u64 k) { return (int)(0xffffffffu - (u32)(k & 0xffffffffull)); }
