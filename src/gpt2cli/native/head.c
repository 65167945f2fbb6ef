/* The output head when sampling needs only each row's k largest logits: top-k sampling, greedy decoding.
 *
 * The head is the largest matrix of the small models: 154 MB of the 497 MB that a float32 step of 124M reads.
 * Top-k sampling filters out every logit below the k-th largest, so those need not be exact. The head is first
 * read as int8 with a scale per row (a quarter of float32's bytes, half of bfloat16's), and each approximate
 * logit comes with a proven bound on its distance from the exact one. A row whose upper bound lies below the
 * k-th largest lower bound cannot be kept by top-k; the others, a few dozen to a few hundred rows, are
 * computed by gemv.c's kernels bit for bit as the whole head computes them, and the rest come back as -inf.
 * Sampling sees what it would have seen.
 *
 * One row of x is multiplied in float32 by vector FMAs, which keep up with the memory. For 2 to 16 rows those
 * multiplies would take as long as the whole head's, so there AMX multiplies int8 by int8: x is quantized too,
 * in two int8 levels (the second quantizes what the first leaves), and what both leave enters the bound.
 */
#include <math.h>
#include <omp.h>

#include "native.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define MARGIN 0x1p-20f     /* relative slack for the float32 rounding of the bounds themselves */
#define FLOOR 0x1p-80f      /* absolute slack: subnormal inputs and sums flushed to zero by vdpbf16ps and AMX */
#define PREFETCH_BYTES 4096 /* how far ahead in each row the int8 head is requested from memory */
#define MAX_Q_ROWS 4        /* vocabulary rows at a time at batch 1: four independent sums keep the FMAs busy */
#define AMX_ROWS 16         /* rows of x one AMX tile holds */

/* Per row i of w (V, C): q = rint(w / scale) with scale = max |w| / 127, and the two coefficients of the bound on
 * the distance between the exact float32 sum w . x that the kernels compute and the approximation
 * scale (q . x'), x' being x or its int8 levels (Cauchy-Schwarz):
 *   radius * |x|: the quantization error's norm, plus the float32 rounding of both sums in any order (Higham's
 *                 gamma_C for each, at most 3 C 2^-24 times the weights' norm; 8 C 2^-24 is used);
 *   reach * |x - x'|: reach = scale |q|.
 * Norms are Euclidean, computed in double and rounded up. Rows with a weight that is not finite get infinite
 * coefficients: they are always computed. */
void gpt2_screen_prepare(const void* w, int8_t* q, float* scale, float* radius, float* reach, int64_t V, int64_t C,
                         int threads, int bf16) {
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
    double error = 0.0, norm = 0.0, levels = 0.0;
    for (int64_t c = 0; c < C; c++) {
      const float v = element(w, i * C + c, bf16);
      float level = s > 0.0f ? rintf(v / s) : 0.0f;
      level = level > 127.0f ? 127.0f : level < -127.0f ? -127.0f : level;
      q[i * C + c] = (int8_t)level;
      error += ((double)s * level - v) * ((double)s * level - v);
      norm += (double)v * v;
      levels += (double)level * level;
    }
    const double up = 1 + 0x1p-20;
    scale[i] = s;
    radius[i] = finite ? (float)((sqrt(error) + 8.0 * (double)C * 0x1p-24 * (sqrt(norm) + sqrt(error))) * up) : INFINITY;
    reach[i] = finite ? (float)(s * sqrt(levels) * up) : INFINITY;
  }
}

/* The most rows of x screened at once: 1 with FMAs, AMX_ROWS where this CPU lends AMX's int8 tiles. */
int gpt2_screen_max_rows(void) {
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
  if (amx_permitted()) return AMX_ROWS;
#endif
  return 1;
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

/* One screening: the approximate logits, and per thread and row of x a heap of the k largest lower bounds. */
struct pass {
  const struct head_screen* screen;
  int64_t B, V, k;
  float norm[AMX_ROWS];     /* |x| per row, rounded up */
  float residual[AMX_ROWS]; /* |x - x'| per row, rounded up: 0 where x itself is multiplied */
  float* approx;            /* (B, V) */
  float* heaps;             /* (threads + 1, B, k): one per thread, then the merged one */
};

/* How far the exact logit of vocabulary row i for row m of x may lie from the approximate one, a. */
static inline float slack(const struct pass* p, int64_t i, int64_t m, float a) {
  return p->screen->radius[i] * p->norm[m] + p->screen->reach[i] * p->residual[m] + fabsf(a) * MARGIN + FLOOR;
}

static inline void record(struct pass* p, float* heap, int64_t i, int64_t m, float a) {
  p->approx[m * p->V + i] = a;
  if (a > heap[m * p->k]) offer(heap + m * p->k, p->k, a - slack(p, i, m, a)); /* the bound only when it can enter */
}

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

/* Batch 1: scale (q . x) in float32 for every vocabulary row, MAX_Q_ROWS at a time. */
static void approximate_one_row(struct pass* p, const float* x, int64_t C, int threads) {
  const int8_t* q = p->screen->q;
  const int64_t V = p->V;
#pragma omp parallel num_threads(threads)
  {
    float* heap = p->heaps + (omp_get_thread_num() + 1) * p->k;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < V; i += MAX_Q_ROWS) {
      int64_t row[MAX_Q_ROWS]; /* past the last row, the last again: computed twice, kept once */
      vf acc[MAX_Q_ROWS];
      _Pragma("GCC unroll 4") for (int j = 0; j < MAX_Q_ROWS; j++) {
        row[j] = i + j < V ? i + j : V - 1;
        acc[j] = (vf){0};
      }
      int64_t c = 0;
      for (; c + LANES <= C; c += LANES) {
        const vf xv = *(const vf*)(x + c);
        _Pragma("GCC unroll 4") for (int j = 0; j < MAX_Q_ROWS; j++) {
          __builtin_prefetch(q + row[j] * C + c + PREFETCH_BYTES);
          acc[j] += q_lanes(q + row[j] * C + c) * xv;
        }
      }
      for (int j = 0; j < MAX_Q_ROWS && i + j < V; j++) {
        float sum = lane_sum(acc[j]);
        for (int64_t t = c; t < C; t++) sum += (float)q[row[j] * C + t] * x[t];
        record(p, heap, row[j], 0, sum * p->screen->scale[row[j]]);
      }
    }
  }
}

#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
/* x (B, C) as x1 l1 + x2 l2 + what is left, l1 and l2 int8 levels of scales x1 and x2 per row; the norm of what is
 * left goes to p->residual. */
static void quantize_twice(struct pass* p, const float* x, int8_t* l1, int8_t* l2, double* x1, double* x2,
                           int64_t C) {
  for (int64_t m = 0; m < p->B; m++) {
    const float* xm = x + m * C;
    double left[C], max = 0.0, squares = 0.0;
    for (int64_t c = 0; c < C; c++) max = fabs(xm[c]) > max ? fabs(xm[c]) : max;
    x1[m] = max / 127.0;
    for (int64_t c = 0; c < C; c++) {
      l1[m * C + c] = (int8_t)(x1[m] > 0.0 ? rint(xm[c] / x1[m]) : 0.0);
      left[c] = xm[c] - x1[m] * l1[m * C + c];
    }
    max = 0.0;
    for (int64_t c = 0; c < C; c++) max = fabs(left[c]) > max ? fabs(left[c]) : max;
    x2[m] = max / 127.0;
    for (int64_t c = 0; c < C; c++) {
      double level = x2[m] > 0.0 ? rint(left[c] / x2[m]) : 0.0;
      level = level > 127.0 ? 127.0 : level < -127.0 ? -127.0 : level;
      l2[m * C + c] = (int8_t)level;
      squares += (left[c] - x2[m] * level) * (left[c] - x2[m] * level);
    }
    p->residual[m] = (float)(sqrt(squares) * (1 + 0x1p-20));
  }
}

/* The levels of x as tdpbssd reads its second operand: quads[k / 4][m] = l[m][k..k+3]. */
static void pack_quads(const int8_t* l, uint32_t* quads, int64_t B, int64_t C) {
  for (int64_t k = 0; k < C; k += 4)
    for (int64_t m = 0; m < B; m++) memcpy(quads + k / 4 * B + m, l + m * C + k, 4);
}

static inline float dequantize(const struct pass* p, int64_t i, int64_t m, int32_t dot1, int32_t dot2,
                               const double* x1, const double* x2) {
  return (float)(p->screen->scale[i] * (x1[m] * dot1 + x2[m] * dot2)); /* integer dots: exact */
}

/* 2 to 16 rows: scale (q . (x1 l1 + x2 l2)) on AMX, 16 vocabulary rows by 64 of C per tile, the rows past the
 * last whole block of 16 in plain integer arithmetic. 0, or 1 when out of memory. */
static int approximate_rows_amx(struct pass* p, const float* x, int64_t C, int threads) {
  const int64_t B = p->B, V = p->V;
  int8_t* levels = malloc((size_t)(2 * B * C));
  uint32_t* quads = malloc(sizeof(uint32_t) * (size_t)(2 * B * C / 4));
  double x1[AMX_ROWS], x2[AMX_ROWS];
  if (!levels || !quads) {
    free(levels);
    free(quads);
    return 1;
  }
  int8_t *l1 = levels, *l2 = levels + B * C;
  quantize_twice(p, x, l1, l2, x1, x2, C);
  pack_quads(l1, quads, B, C);
  pack_quads(l2, quads + B * C / 4, B, C);
  const int8_t* q = p->screen->q;
#pragma omp parallel num_threads(threads)
  {
    float* heap = p->heaps + (omp_get_thread_num() + 1) * B * p->k;
    struct tile_config config = {.palette = 1};
    config.rows[0] = config.rows[1] = config.rows[2] = config.rows[3] = config.rows[4] = 16;
    config.bytes_per_row[0] = config.bytes_per_row[2] = config.bytes_per_row[3] = config.bytes_per_row[4] =
        (uint16_t)(B * 4);
    config.bytes_per_row[1] = 64;
    _tile_loadconfig(&config);
    int32_t dots[2][16][16];
#pragma omp for schedule(static)
    for (int64_t block = 0; block < V / 16; block++) {
      const int64_t i0 = block * 16;
      _tile_zero(0);
      _tile_zero(4);
      for (int64_t k = 0; k < C; k += 64) {
        _tile_loadd(1, q + i0 * C + k, C);
        _tile_loadd(2, quads + k / 4 * B, B * 4);
        _tile_loadd(3, quads + B * C / 4 + k / 4 * B, B * 4);
        _tile_dpbssd(0, 1, 2);
        _tile_dpbssd(4, 1, 3);
      }
      _tile_stored(0, dots[0], 64);
      _tile_stored(4, dots[1], 64);
      for (int64_t r = 0; r < 16; r++) {
        float a[AMX_ROWS];
#pragma omp simd
        for (int64_t m = 0; m < B; m++) a[m] = dequantize(p, i0 + r, m, dots[0][r][m], dots[1][r][m], x1, x2);
        for (int64_t m = 0; m < B; m++) record(p, heap, i0 + r, m, a[m]);
      }
    }
    _tile_release();
#pragma omp for schedule(static)
    for (int64_t i = V / 16 * 16; i < V; i++)
      for (int64_t m = 0; m < B; m++) {
        int32_t dot1 = 0, dot2 = 0;
        for (int64_t c = 0; c < C; c++) {
          dot1 += q[i * C + c] * l1[m * C + c];
          dot2 += q[i * C + c] * l2[m * C + c];
        }
        record(p, heap, i, m, dequantize(p, i, m, dot1, dot2, x1, x2));
      }
  }
  free(levels);
  free(quads);
  return 0;
}
#endif

/* Whether the exact logit of vocabulary row i for row m of x could reach cut[m] (see gpt2_screened_head). */
static inline int reaches(const struct pass* p, int64_t i, int64_t m, const float* cut, const int bf16) {
  const float a = p->approx[m * p->V + i];
  float upper = a + slack(p, i, m, a);
  if (bf16) upper = widen(round_to_bf16(upper));
  return !(upper < cut[m]); /* NaN stays */
}

/* The vocabulary rows that could reach cut[m] for some row m of x, ascending, into cols; their count, or more than
 * V / 8 when there are more. A row whose approximation is below cut by more than the largest slack any row could
 * have is passed over without its own. */
static int64_t candidates(const struct pass* p, const float* cut, int64_t* cols, int threads, const int bf16) {
  const int64_t B = p->B, V = p->V, limit = V / 8;
  float wide[AMX_ROWS];
  for (int64_t m = 0; m < B; m++) /* rounded up past any other evaluation order of the same sum */
    wide[m] = (p->screen->max_radius * p->norm[m] + p->screen->max_reach * p->residual[m]) * (1 + 0x1p-20f);
  uint8_t* keep = malloc((size_t)V);
  if (!keep) return limit + 1; /* the whole head instead */
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i0 = 0; i0 < V; i0 += 1024) {
    const int64_t i1 = i0 + 1024 < V ? i0 + 1024 : V;
    memset(keep + i0, 0, (size_t)(i1 - i0));
    for (int64_t m = 0; m < B; m++) {
      const float* a = p->approx + m * V;
#pragma omp simd
      for (int64_t i = i0; i < i1; i++) { /* at least the row's own upper bound */
        float upper = a[i] + (wide[m] + fabsf(a[i]) * MARGIN + FLOOR);
        if (bf16) upper = widen(round_to_bf16(upper));
        keep[i] |= !(upper < cut[m]);
      }
    }
    for (int64_t i = i0; i < i1; i++)
      if (keep[i]) {
        keep[i] = 0;
        for (int64_t m = 0; m < B && !keep[i]; m++) keep[i] = reaches(p, i, m, cut, bf16);
      }
  }
  int64_t n = 0;
  for (int64_t i = 0; i < V && n <= limit; i++)
    if (keep[i]) cols[n++] = i;
  free(keep);
  return n;
}

/* Logits (B, V) of x (B, C; x_stored: the same values in the model's dtype) by the head w (V, C): exact for every
 * row that the screen cannot rule out of the k largest of some row of x, -inf for the others. 0; 1 when out of
 * memory; -1 when nothing was written because screening does not apply or pay (more rows than
 * gpt2_screen_max_rows, C not a multiple of 64 for AMX, over V / 8 rows left, x not finite): the caller computes
 * the whole head. */
int gpt2_screened_head(const float* x, const void* x_stored, const void* w, const struct head_screen* screen,
                       void* logits, int64_t B, int64_t V, int64_t C, int threads, int bf16) {
  const int64_t k = screen->top;
  if (B < 1 || B > gpt2_screen_max_rows() || (B > 1 && C % 64) || k < 1 || k > V) return -1;
  struct pass p = {.screen = screen, .B = B, .V = V, .k = k};
  for (int64_t m = 0; m < B; m++) {
    double squares = 0.0;
    for (int64_t c = 0; c < C; c++) squares += (double)x[m * C + c] * x[m * C + c];
    p.norm[m] = (float)(sqrt(squares) * (1 + 0x1p-20));
    p.residual[m] = 0.0f;
    if (!isfinite(p.norm[m])) return -1;
  }
  p.approx = malloc(sizeof(float) * (size_t)(B * V));
  p.heaps = malloc(sizeof(float) * (size_t)((threads + 1) * B * k));
  int64_t* cols = malloc(sizeof(int64_t) * (size_t)(V / 8 + 1));
  int status = !p.approx || !p.heaps || !cols;
  if (!status) {
    for (int64_t j = 0; j < (threads + 1) * B * k; j++) p.heaps[j] = -INFINITY;
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
    if (B > 1) status = approximate_rows_amx(&p, x, C, threads);
#endif
    if (B == 1) approximate_one_row(&p, x, C, threads);
  }
  if (status) {
    free(p.approx);
    free(p.heaps);
    free(cols);
    return 1;
  }
  /* A row is kept when its exact logit is at least the k-th largest, which is at least the k-th largest lower
   * bound. float32: rows below that bound by a relative MARGIN are dropped, so dividing by a temperature cannot
   * tie them with it. bfloat16: rows whose upper bound rounds below the bound's rounding are dropped. */
  float cut[AMX_ROWS];
  for (int64_t m = 0; m < B; m++) {
    float* merged = p.heaps + m * k;
    for (int64_t t = 1; t <= threads; t++)
      for (int64_t j = 0; j < k; j++) offer(merged, k, p.heaps[(t * B + m) * k + j]);
    const float kth = merged[0];
    cut[m] = bf16 ? widen(round_to_bf16(kth)) : kth - (fabsf(kth) * MARGIN + FLOOR);
  }
  int64_t n = candidates(&p, cut, cols, threads, bf16);
  status = -1;
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
  free(p.approx);
  free(p.heaps);
  free(cols);
  return status;
}
