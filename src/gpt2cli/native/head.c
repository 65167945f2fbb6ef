/* The output head when sampling needs only each row's k largest logits: top-k sampling, greedy decoding.
 *
 * The head is the largest matrix of the small models: 154 MB of the 497 MB that a float32 step of 124M reads.
 * Top-k sampling filters out every logit below the k-th largest, so those need not be exact. The head is first
 * read as int8 with a scale per row (a quarter of float32's bytes, half of bfloat16's), and each approximate
 * logit comes with a proven bound on its distance from the exact one. A row whose upper bound lies below the
 * k-th largest lower bound cannot be kept by top-k; the others, a few dozen to a few hundred rows, are
 * computed by gemv.c's kernels bit for bit as the whole head computes them, and the rest come back as -inf.
 * Sampling sees what it would have seen.
 */
#include <math.h>
#include <omp.h>

#include "native.h"

#define MARGIN 0x1p-20f /* relative slack for the float32 rounding of the bounds themselves */
#define FLOOR 0x1p-80f  /* absolute slack: subnormal inputs and sums flushed to zero by vdpbf16ps and AMX */
#define PREFETCH_BYTES 4096 /* how far ahead in each row the int8 head is requested from memory */

#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* LANES int8 values as float32. GCC's __builtin_convertvector does this one lane at a time. */
static inline vf q_lanes(const int8_t* q) {
#if defined(__AVX512F__)
  return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q)));
#elif defined(__AVX2__)
  return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)q)));
#else
  vf v;
  for (int j = 0; j < LANES; j++) v[j] = q[j];
  return v;
#endif
}

/* Per row i of w (V, C): q = rint(w / scale) with scale = max |w| / 127, and radius, a bound per unit of |x|
 * (Euclidean norm) on the distance between the approximate logit scale (q . x) and the float32 sum that the
 * exact kernels compute. By Cauchy-Schwarz: the norm of the quantization error, plus the rounding of both sums
 * in any order (Higham's gamma_C for each, at most 3 C 2^-24 times the weights' norm; 8 C 2^-24 is used).
 * Rows with a weight that is not finite get an infinite radius. */
void gpt2_screen_prepare(const void* w, int8_t* q, float* scale, float* radius, int64_t V, int64_t C, int threads,
                         int bf16) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < V; i++) {
    float max = 0.0f;
    int finite = 1;
    for (int64_t c = 0; c < C; c++) {
      const float v = element(w, i * C + c, bf16);
      finite &= isfinite(v) != 0;
      max = fabsf(v) > max ? fabsf(v) : max;
    }
    const float s = finite ? max / 127.0f : 0.0f;
    double error = 0.0, norm = 0.0;
    for (int64_t c = 0; c < C; c++) {
      const float v = element(w, i * C + c, bf16);
      float level = s > 0.0f ? rintf(v / s) : 0.0f;
      level = level > 127.0f ? 127.0f : level < -127.0f ? -127.0f : level;
      q[i * C + c] = (int8_t)level;
      error += ((double)s * level - v) * ((double)s * level - v);
      norm += (double)v * v;
    }
    scale[i] = s;
    radius[i] = finite ? (float)((sqrt(error) + 8.0 * (double)C * 0x1p-24 * (sqrt(norm) + sqrt(error))) * (1 + 0x1p-20))
                       : INFINITY;
  }
}

#define MAX_Q_ROWS 4 /* vocabulary rows at a time: at batch 1, four independent sums keep the multipliers busy */

/* scale (q . x) of vocabulary rows row[0..nq-1] with `rows` rows of x, into out[j][m]. nq and rows are constants
 * wherever this is inlined, so the sums live in registers. */
static inline __attribute__((always_inline)) void approximate(const int8_t* q, const float* scale, const float* x,
                                                              const int64_t* row, int64_t C, const int nq,
                                                              const int rows, float out[MAX_Q_ROWS][8]) {
  vf acc[MAX_Q_ROWS][8];
  _Pragma("GCC unroll 4") for (int j = 0; j < nq; j++) _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++)
      acc[j][m] = (vf){0};
  int64_t c = 0;
  for (; c + LANES <= C; c += LANES) {
    vf a[MAX_Q_ROWS];
    _Pragma("GCC unroll 4") for (int j = 0; j < nq; j++) {
      __builtin_prefetch(q + row[j] * C + c + PREFETCH_BYTES);
      a[j] = q_lanes(q + row[j] * C + c);
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
      vf xv = *(const vf*)(x + m * C + c);
#if defined(__x86_64__)
      __asm__("" : "+v"(xv)); /* one load for all the products (see gemv.c) */
#endif
      _Pragma("GCC unroll 4") for (int j = 0; j < nq; j++) acc[j][m] += a[j] * xv;
    }
  }
  _Pragma("GCC unroll 4") for (int j = 0; j < nq; j++) _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
      float sum = lane_sum(acc[j][m]);
      for (int64_t t = c; t < C; t++) sum += (float)q[row[j] * C + t] * x[m * C + t];
      out[j][m] = sum * scale[row[j]];
    }
}

/* A min-heap of the k largest values offered: heap[0] is the smallest of them. */
static void offer(float* heap, int64_t k, float v) {
  if (!(v > heap[0])) return;
  int64_t i = 0;
  for (;;) {
    int64_t child = 2 * i + 1;
    if (child >= k) break;
    if (child + 1 < k && heap[child + 1] < heap[child]) child++;
    if (!(heap[child] < v)) break;
    heap[i] = heap[child];
    i = child;
  }
  heap[i] = v;
}

/* How far the exact logit may lie from the approximate one, a. */
static inline float slack(float a, float radius, float norm) { return radius * norm + fabsf(a) * MARGIN + FLOOR; }

/* Logits (B, V) of x (B, C; x_stored: the same values in the model's dtype) by the head w (V, C): exact for every
 * row that the screen cannot rule out of the k largest of some row of x, -inf for the others. 0; 1 when out of
 * memory; -1 when nothing was written because screening does not pay (over V / 8 rows left, or x not finite):
 * the caller computes the whole head. */
int gpt2_screened_head(const float* x, const void* x_stored, const void* w, const struct head_screen* screen,
                       void* logits, int64_t B, int64_t V, int64_t C, int threads, int bf16) {
  const int64_t k = screen->top;
  if (B > 8 || k < 1 || k > V) return -1;
  float norm[8];
  for (int64_t m = 0; m < B; m++) {
    double squares = 0.0;
    for (int64_t c = 0; c < C; c++) squares += (double)x[m * C + c] * x[m * C + c];
    norm[m] = (float)(sqrt(squares) * (1 + 0x1p-20));
    if (!isfinite(norm[m])) return -1;
  }
  float* approx = malloc(sizeof(float) * (size_t)(B * V));
  float* heaps = malloc(sizeof(float) * (size_t)((threads + 1) * B * k)); /* one per thread and row, then merged */
  int64_t* cols = malloc(sizeof(int64_t) * (size_t)(V / 8 + 1));
  if (!approx || !heaps || !cols) {
    free(approx);
    free(heaps);
    free(cols);
    return 1;
  }
  for (int64_t j = 0; j < (threads + 1) * B * k; j++) heaps[j] = -INFINITY;
#pragma omp parallel num_threads(threads)
  {
    float* heap = heaps + (omp_get_thread_num() + 1) * B * k;
    const int nq = B == 1 ? 4 : 2; /* with more rows of x, two vocabulary rows fill the registers */
#pragma omp for schedule(static)
    for (int64_t i = 0; i < V; i += nq) {
      int64_t row[MAX_Q_ROWS]; /* past the last row, the last again: computed twice, kept once */
      for (int j = 0; j < MAX_Q_ROWS; j++) row[j] = i + j < V ? i + j : V - 1;
      float out[MAX_Q_ROWS][8];
      const int8_t* q = screen->q;
      switch (B) { /* constant counts per call */
        case 1: approximate(q, screen->scale, x, row, C, 4, 1, out); break;
        case 2: approximate(q, screen->scale, x, row, C, 2, 2, out); break;
        case 3: approximate(q, screen->scale, x, row, C, 2, 3, out); break;
        case 4: approximate(q, screen->scale, x, row, C, 2, 4, out); break;
        case 5: approximate(q, screen->scale, x, row, C, 2, 5, out); break;
        case 6: approximate(q, screen->scale, x, row, C, 2, 6, out); break;
        case 7: approximate(q, screen->scale, x, row, C, 2, 7, out); break;
        default: approximate(q, screen->scale, x, row, C, 2, 8, out); break;
      }
      for (int j = 0; j < nq && i + j < V; j++)
        for (int64_t m = 0; m < B; m++) {
          const float a = out[j][m];
          approx[m * V + i + j] = a;
          offer(heap + m * k, k, a - slack(a, screen->radius[i + j], norm[m]));
        }
    }
  }
  /* A row is kept when its exact logit is at least the k-th largest, which is at least the k-th largest lower
   * bound. float32: rows below that bound by a relative MARGIN are dropped, so dividing by a temperature cannot
   * tie them with it. bfloat16: rows whose upper bound rounds below the bound's rounding are dropped. */
  float cut[8];
  for (int64_t m = 0; m < B; m++) {
    float* merged = heaps + m * k;
    for (int64_t t = 1; t <= threads; t++)
      for (int64_t j = 0; j < k; j++) offer(merged, k, heaps[(t * B + m) * k + j]);
    const float kth = merged[0];
    cut[m] = bf16 ? widen(round_to_bf16(kth)) : kth - (fabsf(kth) * MARGIN + FLOOR);
  }
  int64_t n = 0;
  for (int64_t i = 0; i < V && n <= V / 8; i++)
    for (int64_t m = 0; m < B; m++) {
      const float a = approx[m * V + i];
      float upper = a + slack(a, screen->radius[i], norm[m]);
      if (bf16) upper = widen(round_to_bf16(upper));
      if (!(upper < cut[m])) { /* NaN stays */
        cols[n++] = i;
        break;
      }
    }
  int status = -1;
  if (n <= V / 8) {
    const size_t size = bf16 ? 2 : 4;
    char* exact = malloc(size * (size_t)(B * n));
    status = !exact || gpt2_linear_columns(x_stored, w, cols, exact, B, n, V, C, threads, bf16);
    if (!status) {
      for (int64_t j = 0; j < B * V; j++) {
        if (bf16)
          ((uint16_t*)logits)[j] = 0xff80; /* -inf */
        else
          ((float*)logits)[j] = -INFINITY;
      }
      for (int64_t m = 0; m < B; m++)
        for (int64_t j = 0; j < n; j++)
          memcpy((char*)logits + (m * V + cols[j]) * size, exact + (m * n + j) * size, size);
    }
    free(exact);
  }
  free(approx);
  free(heaps);
  free(cols);
  return status;
}
