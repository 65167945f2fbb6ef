/* What the native kernels share: bfloat16 conversions and GCC vector types for -march=native. */
#ifndef GPT2_NATIVE_H
#define GPT2_NATIVE_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif

/* Unaligned, aliasing vector types: dereferencing one is an unaligned vector load. */
typedef float vf __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
typedef uint32_t vu __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
typedef uint16_t vh __attribute__((vector_size(LANES * 2), aligned(2), may_alias));
typedef float vf_half __attribute__((vector_size(LANES * 2), aligned(4)));
typedef float vf_quarter __attribute__((vector_size(LANES), aligned(4)));

#if defined(__AMX_TILE__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Linux hands out AMX's tile registers to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). */
static inline int amx_permitted(void) {
  static int permitted = -1;
  if (permitted < 0) permitted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return permitted;
}

struct tile_config {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
#endif

static inline float widen(uint16_t h) { /* a bfloat16 is the top half of a float32 */
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t round_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays a quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float element(const void* w, int64_t i, const int bf16) {
  return bf16 ? widen(((const uint16_t*)w)[i]) : ((const float*)w)[i];
}

static inline vf weight_lanes(const void* w, int64_t i, const int bf16) {
  if (bf16) return (vf)(__builtin_convertvector(*(const vh*)((const uint16_t*)w + i), vu) << 16);
  return *(const vf*)((const float*)w + i);
}

static inline float lane_sum(vf v) { /* halving, so the adds stay in vector registers */
  vf_half h[2];
  memcpy(h, &v, sizeof v);
  const vf_half s2 = h[0] + h[1];
  vf_quarter q[2];
  memcpy(q, &s2, sizeof s2);
  const vf_quarter s4 = q[0] + q[1];
  float s = 0.0f;
  for (int i = 0; i < LANES / 4; i++) s += s4[i];
  return s;
}

/* The kernels of gemv.c: y = x W^T + b, for x (M, K), W (N, K), b (N) or NULL, y (M, N), contiguous; 0, or 1
 * when out of memory. */
int gpt2_linear_f32(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t N, int64_t K,
                    int threads);
int gpt2_linear_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t M, int64_t N,
                     int64_t K, int threads);
/* Columns cols[0..n-1] of that product, each exactly as the whole product computes it (gemv.c). */
int gpt2_linear_columns(const void* x, const void* w, const int64_t* cols, void* y, int64_t M, int64_t n, int64_t N,
                        int64_t K, int threads, int bf16);

/* head.c: the output head's int8 copy (V, C), per row its scale and the two coefficients of the bound, and the
 * k of top-k (see gpt2_screen_prepare). */
struct head_screen {
  const int8_t* q;
  const float* scale;
  const float* radius;
  const float* reach;
  float max_radius, max_reach; /* the largest of each */
  int64_t top;
};
int gpt2_screened_head(const float* x, const void* x_stored, const void* w, const struct head_screen* screen,
                       void* logits, int64_t B, int64_t V, int64_t C, int threads, int bf16);

#endif
