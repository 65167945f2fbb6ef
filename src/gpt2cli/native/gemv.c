/* y = x W^T + b for a few rows of x: the matrix-vector products of decoding, in float32 and bfloat16.
 *
 * Decoding one token reads every weight once, so it runs at the speed weights stream from memory. PyTorch's
 * CPU kernels fall short of it for these shapes: its bfloat16 matrix-vector product streams at about half
 * the memory's speed, and its float32 product of 3 to 8 rows takes two to three times as long as one row.
 * Here each pair of weight rows is read once for up to 8 rows of x, with float32 sums, and bfloat16 outputs
 * are rounded to nearest even: PyTorch's arithmetic, in another summation order. Written with GCC vector
 * extensions, so -march=native picks AVX-512, AVX2 or NEON; CPUs with AVX512-BF16 multiply bfloat16 pairs
 * directly (exact products; subnormal inputs count as zero), and CPUs with AMX multiply 2 to 16 bfloat16 rows
 * by 16 weight rows at a time in its tiles, where vdpbf16ps would be bound by its own throughput.
 */
#include "native.h"

#define ROW_BLOCK 8          /* rows of x computed together: each weight is loaded once for all of them */
#define PREFETCH_BYTES 8192  /* how far ahead of the loads the weights are requested from memory */
#define X_BLOCK_BYTES 32768  /* x is read in slices of K that stay in the L1 cache while the weights stream by */

/* Dot products of weight rows n0 and n1 with `rows` rows of xf (float32; x: the same rows as stored) over
 * k0..k1-1, into out[0][...] and out[1][...], requesting the weights `ahead` bytes further on. `rows` and
 * `bf16` are constants wherever this is inlined, so the accumulators live in registers. */
static inline __attribute__((always_inline)) void two_rows(const void* x, const float* xf, const void* w, int64_t n0,
                                                           int64_t n1, int64_t K, int64_t k0, int64_t k1,
                                                           int64_t ahead, const int rows, const int bf16,
                                                           float out[2][ROW_BLOCK]) {
  const size_t size = bf16 ? 2 : 4;
  const char *p0 = (const char*)w + n0 * K * size, *p1 = (const char*)w + n1 * K * size;
  int64_t k = k0;
#if defined(__AVX512BF16__)
  if (bf16) { /* one instruction multiplies 32 bfloat16 pairs and adds them, two by two, to 16 float32 sums */
    __m512 acc0[ROW_BLOCK], acc1[ROW_BLOCK];
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
    for (; k + 32 <= k1; k += 32) {
      __builtin_prefetch(p0 + k * 2 + ahead);
      __builtin_prefetch(p1 + k * 2 + ahead);
      const __m512bh a = (__m512bh)_mm512_loadu_si512(p0 + k * 2), b = (__m512bh)_mm512_loadu_si512(p1 + k * 2);
      _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512((const uint16_t*)x + m * K + k);
        acc0[m] = _mm512_dpbf16_ps(acc0[m], a, xv);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], b, xv);
      }
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
      out[0][m] = _mm512_reduce_add_ps(acc0[m]);
      out[1][m] = _mm512_reduce_add_ps(acc1[m]);
    }
  } else
#endif
  {
    (void)x;
    vf acc0[ROW_BLOCK], acc1[ROW_BLOCK];
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) acc0[m] = acc1[m] = (vf){0};
    for (; k + LANES <= k1; k += LANES) {
      __builtin_prefetch(p0 + k * size + ahead);
      __builtin_prefetch(p1 + k * size + ahead);
      const vf a = weight_lanes(w, n0 * K + k, bf16), b = weight_lanes(w, n1 * K + k, bf16);
      _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
        vf xv = *(const vf*)(xf + m * K + k);
#if defined(__x86_64__)
        __asm__("" : "+v"(xv)); /* one load for both products: folded into each, x's loads crowd out the weights' */
#endif
        acc0[m] += a * xv;
        acc1[m] += b * xv;
      }
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
      out[0][m] = lane_sum(acc0[m]);
      out[1][m] = lane_sum(acc1[m]);
    }
  }
  for (; k < k1; k++)
    _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
      out[0][m] += element(w, n0 * K + k, bf16) * xf[m * K + k];
      out[1][m] += element(w, n1 * K + k, bf16) * xf[m * K + k];
    }
}

/* Output columns n_begin..N-1 of y; 0, or 1 when out of memory. When the rows of x outgrow X_BLOCK_BYTES
 * (several rows of a long K), K is taken in slices, each over all the weight rows, with float32 partial sums
 * in between. */
static inline __attribute__((always_inline)) int linear(const void* x, const float* xf, const void* w, const void* b,
                                                        void* y, int64_t M, int64_t N, int64_t K, int64_t n_begin,
                                                        int threads, const int bf16) {
  const int64_t size = bf16 ? 2 : 4;
  for (int64_t m0 = 0; m0 < M; m0 += ROW_BLOCK) {
    const int rows = M - m0 < ROW_BLOCK ? (int)(M - m0) : ROW_BLOCK;
    const void* xb = (const char*)x + m0 * K * size;
    const float* xfb = xf + m0 * K;
    int64_t slice = X_BLOCK_BYTES / (rows * (bf16 ? 6 : 4)) / 32 * 32; /* bfloat16 rows: x and xf */
    if (slice >= K) slice = K;
    /* the same slice of the pair after next, or, in one slice, further on in these rows and the next */
    const int64_t ahead = slice < K ? 4 * K * size : PREFETCH_BYTES;
    float* partial = NULL;
    if (slice < K && !(partial = calloc((size_t)(rows * N), sizeof(float)))) return 1;
#pragma omp parallel num_threads(threads)
    for (int64_t k0 = 0; k0 < K; k0 += slice) {
      const int64_t k1 = K - k0 > slice ? k0 + slice : K;
#pragma omp for schedule(static)
      for (int64_t n = n_begin; n < N; n += 2) {
        const int pair = n + 1 < N; /* an odd last row is computed twice and written once */
        float out[2][ROW_BLOCK];
        switch (rows) { /* a constant row count per call of two_rows */
          case 1: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 1, bf16, out); break;
          case 2: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 2, bf16, out); break;
          case 3: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 3, bf16, out); break;
          case 4: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 4, bf16, out); break;
          case 5: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 5, bf16, out); break;
          case 6: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 6, bf16, out); break;
          case 7: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 7, bf16, out); break;
          default: two_rows(xb, xfb, w, n, n + pair, K, k0, k1, ahead, 8, bf16, out); break;
        }
        for (int r = 0; r <= pair; r++)
          _Pragma("GCC unroll 8") for (int m = 0; m < rows; m++) {
            float v = out[r][m];
            if (partial) {
              v += partial[m * N + n + r];
              if (k1 < K) {
                partial[m * N + n + r] = v;
                continue;
              }
            }
            v += b ? element(b, n + r, bf16) : 0.0f;
            if (bf16)
              ((uint16_t*)y)[(m0 + m) * N + n + r] = round_to_bf16(v);
            else
              ((float*)y)[(m0 + m) * N + n + r] = v;
          }
      }
    }
    free(partial);
  }
  return 0;
}

#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
#define AMX_MIN_ROWS 2 /* from here on AMX's tiles beat vdpbf16ps (BENCHMARKS.md, "Generation") */

static int amx_applies(int64_t M, int64_t K) {
  return M >= AMX_MIN_ROWS && M <= 16 && K % 32 == 0 && amx_permitted();
}

/* Columns 0..16*(N/16)-1 of y = x W^T + b on AMX, 16 weight rows at a time: tile 1 holds 16 rows of W by 32
 * of K as stored, tile 2 the same 32 of K for the M rows of x, paired as the instruction reads them, and
 * tile 0 sums their products in float32. Returns the columns done, or -1 when out of memory. */
static int64_t linear_amx(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t M, int64_t N,
                          int64_t K, int threads) {
  uint32_t* pairs = malloc(sizeof(uint32_t) * (size_t)(K / 2 * M)); /* pairs[k / 2][m] = x[m][k], x[m][k + 1] */
  if (!pairs) return -1;
  for (int64_t k = 0; k < K; k += 2)
    for (int64_t m = 0; m < M; m++) pairs[k / 2 * M + m] = x[m * K + k] | (uint32_t)x[m * K + k + 1] << 16;
  const int64_t blocks = N / 16;
#pragma omp parallel num_threads(threads)
  {
    struct tile_config config = {.palette = 1};
    config.rows[0] = config.rows[1] = config.rows[2] = 16;
    config.bytes_per_row[0] = config.bytes_per_row[2] = (uint16_t)(M * 4);
    config.bytes_per_row[1] = 64;
    _tile_loadconfig(&config);
    float out[16][16];
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {
      const int64_t n0 = block * 16;
      _tile_zero(0);
      for (int64_t k = 0; k < K; k += 32) {
        _tile_loadd(1, w + n0 * K + k, K * 2);
        _tile_loadd(2, pairs + k / 2 * M, M * 4);
        _tile_dpbf16ps(0, 1, 2);
      }
      _tile_stored(0, out, 64);
      for (int64_t n = 0; n < 16; n++)
        for (int64_t m = 0; m < M; m++) y[m * N + n0 + n] = round_to_bf16(out[n][m] + (b ? widen(b[n0 + n]) : 0.0f));
    }
    _tile_release();
  }
  free(pairs);
  return blocks * 16;
}
#endif

int gpt2_linear_f32(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t N, int64_t K,
                    int threads) {
  return linear(x, x, w, b, y, M, N, K, 0, threads, 0);
}

int gpt2_linear_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t M, int64_t N,
                     int64_t K, int threads) {
  float* xf = malloc(sizeof(float) * (size_t)(M * K));
  if (!xf) return 1;
  for (int64_t i = 0; i < M * K; i++) xf[i] = widen(x[i]);
  int64_t done = 0;
#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
  if (amx_applies(M, K)) done = linear_amx(x, w, b, y, M, N, K, threads);
  if (done < 0) {
    free(xf);
    return 1;
  }
#endif
  const int status = linear(x, xf, w, b, y, M, N, K, done, threads, 1);
  free(xf);
  return status;
}

/* Columns cols[0..n-1] (ascending, below N) of y = x W^T for W of N rows, into y (M, n), each computed bit for
 * bit as gpt2_linear_* computes it in the product of all N rows: in bfloat16 with AMX, the columns of whole
 * blocks of 16 go through the tiles again and the last N % 16 through `linear`. 0, or 1 when out of memory. */
int gpt2_linear_columns(const void* x, const void* w, const int64_t* cols, void* y, int64_t M, int64_t n, int64_t N,
                        int64_t K, int threads, int bf16) {
  const size_t size = bf16 ? 2 : 4;
  int64_t in_blocks = 0; /* columns AMX computes in the whole product */
#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
  if (bf16 && amx_applies(M, K))
    while (in_blocks < n && cols[in_blocks] < N / 16 * 16) in_blocks++;
#else
  (void)N;
#endif
  const int64_t padded = (in_blocks + 15) / 16 * 16, total = padded + n - in_blocks; /* AMX takes whole blocks */
  char* rows = malloc(size * (size_t)(total * K));
  char* out = malloc(size * (size_t)(M * total));
  int status = !rows || !out;
  if (!status) {
    for (int64_t i = 0; i < total; i++) {
      const int64_t col = i < in_blocks ? cols[i] : i < padded ? cols[in_blocks - 1] : cols[i - padded + in_blocks];
      memcpy(rows + i * K * size, (const char*)w + col * K * size, K * size);
    }
    status = bf16 ? gpt2_linear_bf16(x, (const uint16_t*)rows, NULL, (uint16_t*)out, M, total, K, threads)
                  : gpt2_linear_f32(x, (const float*)rows, NULL, (float*)out, M, total, K, threads);
  }
  if (!status)
    for (int64_t m = 0; m < M; m++)
      for (int64_t i = 0; i < n; i++)
        memcpy((char*)y + (m * n + i) * size, out + (m * total + (i < in_blocks ? i : padded + i - in_blocks)) * size,
               size);
  free(rows);
  free(out);
  return status;
}
