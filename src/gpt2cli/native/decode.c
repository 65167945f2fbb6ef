/* One decoding step of GPT-2: the whole forward pass of one new token per row, in a single call.
 *
 * In PyTorch a decoding step of 124M is some 400 small operator calls; at batch 1 their overhead costs half
 * as much as streaming the weights. Here they run back to back in C, with the products on gemv.c's kernels.
 * The arithmetic is the model's (model.py), rounded where PyTorch rounds: in bfloat16 every operator's
 * result is rounded to bfloat16, the GELU in the model's four steps, so a step differs from PyTorch's only in
 * summation order.
 */
#include <math.h>

#include "native.h"

/* Each block's parameters, in the order of GPT.decode_parameters(). */
enum { LN_1_W, LN_1_B, ATTN_W, ATTN_B, ATTN_PROJ_W, ATTN_PROJ_B, LN_2_W, LN_2_B, FC_W, FC_B, MLP_PROJ_W, MLP_PROJ_B,
       PER_BLOCK };

static inline float rounded(float v, const int bf16) { return bf16 ? widen(round_to_bf16(v)) : v; }

/* e^x to float32 precision: 2^n e^r with |r| <= ln(2)/2, e^r by its Taylor series to r^7 (relative error
 * below 1e-8). Vectorizes, where libm's expf does not. Arguments are clamped to e^x's normal range. */
static inline float exp_approx(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  const float n = __builtin_rintf(x * 1.44269504f);
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f; /* ln 2 in two parts, the first exact in n * it */
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return p * scale;
}

static inline void store(void* p, int64_t i, float v, const int bf16) {
  if (bf16)
    ((uint16_t*)p)[i] = round_to_bf16(v);
  else
    ((float*)p)[i] = v;
}

static void layer_norm(const float* x, const void* w, const void* b, float* out, int64_t rows, int64_t C,
                       const int bf16) {
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * C;
    double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; c++) sum += xr[c];
    const double mean = sum / (double)C;
#pragma omp simd reduction(+ : squares)
    for (int64_t c = 0; c < C; c++) squares += (xr[c] - mean) * (xr[c] - mean);
    const float rstd = (float)(1.0 / sqrt(squares / (double)C + 1e-5)), m = (float)mean;
    for (int64_t c = 0; c < C; c++)
      out[r * C + c] = rounded((xr[c] - m) * rstd * element(w, c, bf16) + element(b, c, bf16), bf16);
  }
}

/* y = x W^T + b on gemv.c's kernels, x and y as float32 holding values of the model's dtype. `staging` holds
 * max(K, N) * rows bfloat16 values. */
static int project(const float* x, const void* w, const void* b, float* y, int64_t rows, int64_t N, int64_t K,
                   uint16_t* staging_in, uint16_t* staging_out, int threads, const int bf16) {
  if (!bf16) return gpt2_linear_f32(x, w, b, y, rows, N, K, threads);
  for (int64_t i = 0; i < rows * K; i++) staging_in[i] = round_to_bf16(x[i]); /* exact: x is bfloat16 already */
  if (gpt2_linear_bf16(staging_in, w, b, staging_out, rows, N, K, threads)) return 1;
  for (int64_t i = 0; i < rows * N; i++) y[i] = widen(staging_out[i]);
  return 0;
}

/* Lanes of a and b folded in half, in blocks of s: lane j (in block j / s of 2s lanes) holds a's or b's
 * lanes j' and j' + s alternately; log2(LANES) rounds of it leave sum(v[j]) in lane j of LANES vectors v. */
static inline __attribute__((always_inline)) vf fold(vf a, vf b, const int s) {
  vu lo, hi;
  _Pragma("GCC unroll 16") for (int j = 0; j < LANES; j++) {
    const int segment = j / (2 * s) * 2 * s, p = j % (2 * s);
    lo[j] = (uint32_t)(p < s ? segment + p : LANES + segment + p - s);
    hi[j] = lo[j] + (uint32_t)s;
  }
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

static inline float dot(const float* q, const void* k, int64_t D, const int bf16) {
  vf acc = {0};
  int64_t d = 0;
  for (; d + LANES <= D; d += LANES) acc += *(const vf*)(q + d) * weight_lanes(k, d, bf16);
  float s = lane_sum(acc);
  for (; d < D; d++) s += q[d] * element(k, d, bf16);
  return s;
}

/* softmax(q K^T / sqrt(D)) V for one query over positions 0..n-1 of one head's cache; scores: n floats. */
static inline __attribute__((always_inline)) void attend(const float* q, const void* k, const void* v, float* out,
                                                         float* scores, int64_t n, int64_t D, const int bf16) {
  const float scale = 1.0f / sqrtf((float)D);
  float max = -INFINITY, sum = 0.0f;
  int64_t t = 0;
  if (D % LANES == 0 && D <= 8 * LANES) { /* LANES positions at a time, their sums folded together */
    vf qv[8];
    for (int64_t c = 0; c < D / LANES; c++) qv[c] = *(const vf*)(q + c * LANES);
    for (; t + LANES <= n; t += LANES) {
      vf acc[LANES];
      _Pragma("GCC unroll 16") for (int i = 0; i < LANES; i++) {
        acc[i] = qv[0] * weight_lanes(k, (t + i) * D, bf16);
        for (int64_t c = 1; c < D / LANES; c++) acc[i] += qv[c] * weight_lanes(k, (t + i) * D + c * LANES, bf16);
      }
      _Pragma("GCC unroll 4") for (int s = LANES / 2; s >= 1; s /= 2)
        _Pragma("GCC unroll 8") for (int i = 0; i < s; i++) acc[i] = fold(acc[i], acc[i + s], s);
      *(vf*)(scores + t) = acc[0] * scale;
    }
  }
  for (; t < n; t++) scores[t] = dot(q, (const char*)k + t * D * (bf16 ? 2 : 4), D, bf16) * scale;
  for (t = 0; t < n; t++)
    if (scores[t] > max) max = scores[t];
#pragma omp simd reduction(+ : sum)
  for (t = 0; t < n; t++) sum += scores[t] = exp_approx(scores[t] - max);
  for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
  for (t = 0; t < n; t++) {
    const float p = scores[t] / sum;
    int64_t d = 0;
    for (; d + LANES <= D; d += LANES) *(vf*)(out + d) += p * weight_lanes(v, t * D + d, bf16);
    for (; d < D; d++) out[d] += p * element(v, t * D + d, bf16);
  }
  for (int64_t d = 0; d < D; d++) out[d] = rounded(out[d], bf16);
}

/* One per dtype: OpenMP outlines a parallel loop before inlining, so a dtype passed in stays a variable in it. */
static void attend_f32(const float* q, const void* k, const void* v, float* out, float* scores, int64_t n,
                       int64_t D) {
  attend(q, k, v, out, scores, n, D, 0);
}

static void attend_bf16(const float* q, const void* k, const void* v, float* out, float* scores, int64_t n,
                        int64_t D) {
  attend(q, k, v, out, scores, n, D, 1);
}

/* model.gelu: u = 2k + 2k 0.044715 x^2 (k = sqrt(2/pi)), then u x, sigmoid, times x, each step rounded. */
static void gelu(float* x, int64_t n, const int bf16) {
  const float k2 = rounded((float)(2.0 * sqrt(2.0 / M_PI)), bf16), cubic = (float)(2.0 * sqrt(2.0 / M_PI) * 0.044715);
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    float u = rounded(k2 + cubic * x[i] * x[i], bf16);
    u = rounded(u * x[i], bf16);
    u = rounded(1.0f / (1.0f + exp_approx(-u)), bf16);
    x[i] = rounded(u * x[i], bf16);
  }
}

static void add_residual(float* x, const float* delta, int64_t n, const int bf16) {
  for (int64_t i = 0; i < n; i++) x[i] = rounded(x[i] + delta[i], bf16);
}

static int step(const void* const* params, void* const* caches, const int64_t* ids, void* logits, int64_t B,
                int64_t pos, int64_t n_layer, int64_t H, int64_t C, int64_t V, int64_t cache_len, int threads,
                const struct head_screen* screen, const int bf16) {
  const int64_t D = C / H, positions = pos + 1;
  float* x = malloc(sizeof(float) * (size_t)(B * C * 6 + B * H * positions));
  uint16_t* staging = malloc(sizeof(uint16_t) * (size_t)(B * C * 8));
  if (!x || !staging) {
    free(x);
    free(staging);
    return 1;
  }
  float *h = x + B * C, *qkv = h + B * C, *att = qkv + 3 * B * C, *scores = att + B * C;
  float* f = qkv; /* 4C per row: the MLP reuses qkv and att once they are spent */
  uint16_t *staging_in = staging, *staging_out = staging + 4 * B * C;
  const size_t size = bf16 ? 2 : 4;
  int status = 0, unscreened = 0;

  const void *wte = params[0], *wpe = params[1];
  for (int64_t r = 0; r < B; r++)
    for (int64_t c = 0; c < C; c++)
      x[r * C + c] = rounded(element(wte, ids[r] * C + c, bf16) + element(wpe, pos * C + c, bf16), bf16);

  for (int64_t l = 0; l < n_layer && !status; l++) {
    const void* const* p = params + 2 + l * PER_BLOCK;
    char *k_cache = caches[2 * l], *v_cache = caches[2 * l + 1];
    layer_norm(x, p[LN_1_W], p[LN_1_B], h, B, C, bf16);
    status |= project(h, p[ATTN_W], p[ATTN_B], qkv, B, 3 * C, C, staging_in, staging_out, threads, bf16);
    for (int64_t r = 0; r < B; r++) /* this position's keys and values join the cache: (B, H, cache_len, D) */
      for (int64_t hd = 0; hd < H; hd++)
        for (int64_t d = 0; d < D; d++) {
          const int64_t at = ((r * H + hd) * cache_len + pos) * D + d;
          store(k_cache, at, qkv[r * 3 * C + C + hd * D + d], bf16);
          store(v_cache, at, qkv[r * 3 * C + 2 * C + hd * D + d], bf16);
        }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t rh = 0; rh < B * H; rh++) {
      const int64_t r = rh / H, hd = rh % H, head = rh * cache_len * D * (int64_t)size;
      (bf16 ? attend_bf16 : attend_f32)(qkv + r * 3 * C + hd * D, k_cache + head, v_cache + head,
                                        att + r * C + hd * D, scores + rh * positions, positions, D);
    }
    status |= project(att, p[ATTN_PROJ_W], p[ATTN_PROJ_B], h, B, C, C, staging_in, staging_out, threads, bf16);
    add_residual(x, h, B * C, bf16);
    layer_norm(x, p[LN_2_W], p[LN_2_B], h, B, C, bf16);
    status |= project(h, p[FC_W], p[FC_B], f, B, 4 * C, C, staging_in, staging_out, threads, bf16);
    gelu(f, B * 4 * C, bf16);
    status |= project(f, p[MLP_PROJ_W], p[MLP_PROJ_B], h, B, C, 4 * C, staging_in, staging_out, threads, bf16);
    add_residual(x, h, B * C, bf16);
  }
  if (!status) {
    const void* const* p = params + 2 + n_layer * PER_BLOCK;
    layer_norm(x, p[0], p[1], h, B, C, bf16);
    if (bf16)
      for (int64_t i = 0; i < B * C; i++) staging_in[i] = round_to_bf16(h[i]);
    const void* h_stored = bf16 ? (const void*)staging_in : h;
    status = screen ? gpt2_screened_head(h, h_stored, wte, screen, logits, B, V, C, threads, bf16) : -1;
    unscreened = screen && status < 0;
    if (status < 0)
      status = bf16 ? gpt2_linear_bf16(staging_in, wte, NULL, logits, B, V, C, threads)
                    : gpt2_linear_f32(h, wte, NULL, logits, B, V, C, threads);
  }
  free(x);
  free(staging);
  return status ? status : 2 * unscreened;
}

/* params: wte, wpe, each block's PER_BLOCK tensors, ln_f's weight and bias, all of one dtype; caches: each
 * block's keys and values, (B, H, cache_len, D), holding `pos` positions; ids: (B); logits: (B, V), the head
 * being wte's first V rows; screen: NULL, or the head's screen for top-k (head.c), when logits below each row's
 * k-th largest may come back as -inf. Writes the new position's keys and values into the caches. 0; 1 when out
 * of memory; 2 when the screen was given but left every logit to the whole head (see gpt2_screened_head). */
int gpt2_decode_f32(const void* const* params, void* const* caches, const int64_t* ids, float* logits, int64_t B,
                    int64_t pos, int64_t n_layer, int64_t H, int64_t C, int64_t V, int64_t cache_len, int threads,
                    const struct head_screen* screen) {
  return step(params, caches, ids, logits, B, pos, n_layer, H, C, V, cache_len, threads, screen, 0);
}

int gpt2_decode_bf16(const void* const* params, void* const* caches, const int64_t* ids, uint16_t* logits,
                     int64_t B, int64_t pos, int64_t n_layer, int64_t H, int64_t C, int64_t V, int64_t cache_len,
                     int threads, const struct head_screen* screen) {
  return step(params, caches, ids, logits, B, pos, n_layer, H, C, V, cache_len, threads, screen, 1);
}
