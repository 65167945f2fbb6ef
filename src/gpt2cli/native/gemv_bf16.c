/* y = x W^T + b for a few rows x of bfloat16 activations: the matrix-vector products of decoding.
 *
 * Decoding one token reads every weight once, so it runs at the speed weights stream from memory. PyTorch's
 * CPU bfloat16 matrix-vector product reaches about half of that. Here a bfloat16 weight is widened to float32
 * in registers (it is the top half of a float32), products are summed in float32, and each output is
 * rounded to nearest-even bfloat16: the arithmetic of PyTorch's bf16 linear, in another summation order.
 * Written with GCC vector extensions, so -march=native picks AVX-512, AVX2 or NEON; CPUs with AVX512-BF16
 * multiply bfloat16 pairs directly (its products are exact; subnormal inputs count as zero).
 */
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
#define ROW_BLOCK 4          /* rows of x computed together: each weight is loaded once for all of them */
#define PREFETCH_BYTES 8192  /* how far ahead of the loads the weights are requested from memory */

/* Unaligned, aliasing vector types: dereferencing one is an unaligned vector load. */
typedef float vf __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
typedef uint32_t vu __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
typedef uint16_t vh __attribute__((vector_size(LANES * 2), aligned(2), may_alias));

static inline float widen(uint16_t h) {
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

static inline vf widen_lanes(const uint16_t* p) { return (vf)(__builtin_convertvector(*(const vh*)p, vu) << 16); }

typedef float vf_half __attribute__((vector_size(LANES * 2), aligned(4)));
typedef float vf_quarter __attribute__((vector_size(LANES), aligned(4)));

static inline float lane_sum(vf v) { /* halving, so the adds stay in vector registers */
  vf_half h[2];
  memcpy(h, &v, sizeof v);
  vf_half s2 = h[0] + h[1];
  vf_quarter q[2];
  memcpy(q, &s2, sizeof s2);
  vf_quarter s4 = q[0] + q[1];
  float s = 0.0f;
  for (int i = 0; i < LANES / 4; i++) s += s4[i];
  return s;
}

/* Dot products of two weight rows w0, w1 with `rows` rows of x (xf: the same rows widened to float32),
 * written to out[0][...] and out[1][...]. */
static inline __attribute__((always_inline)) void two_rows(const uint16_t* x, const float* xf, const uint16_t* w0,
                                                           const uint16_t* w1, int64_t K, const int rows,
                                                           float out[2][ROW_BLOCK]) {
  int64_t k = 0;
#if defined(__AVX512BF16__)
  /* One instruction multiplies 32 bfloat16 pairs and adds them, two by two, into 16 float32 sums. */
  __m512 acc0[ROW_BLOCK], acc1[ROW_BLOCK];
  _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    __builtin_prefetch((const char*)(w0 + k) + PREFETCH_BYTES);
    __builtin_prefetch((const char*)(w1 + k) + PREFETCH_BYTES);
    const __m512bh a = (__m512bh)_mm512_loadu_si512(w0 + k), b = (__m512bh)_mm512_loadu_si512(w1 + k);
    _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
      acc0[m] = _mm512_dpbf16_ps(acc0[m], a, xv);
      acc1[m] = _mm512_dpbf16_ps(acc1[m], b, xv);
    }
  }
  _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) {
    out[0][m] = _mm512_reduce_add_ps(acc0[m]);
    out[1][m] = _mm512_reduce_add_ps(acc1[m]);
  }
#else
  (void)x;
  vf acc0[ROW_BLOCK], acc1[ROW_BLOCK];
  _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) acc0[m] = acc1[m] = (vf){0};
  for (; k + LANES <= K; k += LANES) {
    __builtin_prefetch((const char*)(w0 + k) + PREFETCH_BYTES);
    __builtin_prefetch((const char*)(w1 + k) + PREFETCH_BYTES);
    const vf a = widen_lanes(w0 + k), b = widen_lanes(w1 + k);
    _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) {
      const vf xv = *(const vf*)(xf + m * K + k);
      acc0[m] += a * xv;
      acc1[m] += b * xv;
    }
  }
  _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) {
    out[0][m] = lane_sum(acc0[m]);
    out[1][m] = lane_sum(acc1[m]);
  }
#endif
  for (; k < K; k++)
    _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++) {
      out[0][m] += widen(w0[k]) * xf[m * K + k];
      out[1][m] += widen(w1[k]) * xf[m * K + k];
    }
}

/* x: (M, K), w: (N, K), b: (N) or NULL, y: (M, N); all bfloat16, contiguous. Returns 0, or 1 when out of memory. */
int gpt2_linear_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t M, int64_t N,
                     int64_t K, int threads) {
  float* xf = malloc(sizeof(float) * (size_t)(M * K));
  if (!xf) return 1;
  for (int64_t i = 0; i < M * K; i++) xf[i] = widen(x[i]);
  for (int64_t m0 = 0; m0 < M; m0 += ROW_BLOCK) {
    const int rows = M - m0 < ROW_BLOCK ? (int)(M - m0) : ROW_BLOCK;
    const float* xb = xf + m0 * K;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n += 2) {
      const int pair = n + 1 < N; /* an odd last row is computed twice and written once */
      const uint16_t *w0 = w + n * K, *w1 = w + (n + pair) * K;
      float out[2][ROW_BLOCK];
      switch (rows) { /* constant row counts let the compiler keep the accumulators in registers */
        case 1: two_rows(x + m0 * K, xb, w0, w1, K, 1, out); break;
        case 2: two_rows(x + m0 * K, xb, w0, w1, K, 2, out); break;
        case 3: two_rows(x + m0 * K, xb, w0, w1, K, 3, out); break;
        default: two_rows(x + m0 * K, xb, w0, w1, K, 4, out); break;
      }
      for (int r = 0; r <= pair; r++)
        _Pragma("GCC unroll 4") for (int m = 0; m < rows; m++)
          y[(m0 + m) * N + n + r] = round_to_bf16(out[r][m] + (b ? widen(b[n + r]) : 0.0f));
    }
  }
  free(xf);
  return 0;
}
