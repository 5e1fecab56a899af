/* The CPU kernels of our engine (AVX2 + FMA, float32 arithmetic), called through ctypes from
 * cpu_kernels.py; OpenMP threads are torch's own (libgomp resolves to the copy torch loaded).
 *
 * linear_bf16: out[M, N] = x[M, K] @ w^T + bias, w a bfloat16 matrix packed in panels of 16
 *   output columns, [N/16][K][16] (columns in the order widen16 reads). Widening bfloat16 to float32 is exact, so with a bfloat16
 *   checkpoint this is the float32 model's arithmetic from half the bytes; decode at small
 *   batches is bound by those bytes. Each panel is one sequential stream; each output is one
 *   FMA chain over k in order, so a row's result does not depend on the rows batched with it.
 *   A 6 x 16 register tile (12 accumulators) as in BLIS's AVX2 kernel; beyond 6 rows each panel
 *   is widened once into an L2-resident float32 buffer and reused for every block of rows.
 * rms_norm: transformers' LlamaRMSNorm in one pass.
 * decode_attention: for one new token per sequence: rotary embedding of q and k, the new k and
 *   v written into the slot cache, and attention over the sequence's own length, one
 *   (sequence, kv head) pair per work item with its query heads together (grouped-query).
 * decode_layers: every decoder layer of a decode step in one call, from the kernels above: at
 *   batch 1 the step's Python and ctypes overhead around some 300 kernel calls cost as much as
 *   the kernels themselves.
 *
 * Built with -ffp-contract=off: where torch multiplies and then adds, so do we, and the
 * rotary embedding is bit for bit transformers' own.
 */
#include <immintrin.h>
#include <omp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PANEL 16
#define TILE_ROWS 6
#define INLINE static inline __attribute__((always_inline))

INLINE __m256 widen8(const uint16_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

/* 16 bfloat16 weights of one k in a panel, stored in the order 0-3, 8-11, 4-7, 12-15 (see
 * pack_bf16), as columns 0-7 and 8-15 in float32: one load and two unpacks put each value in
 * the high half of a 32-bit lane, which is exactly its float32. */
INLINE void widen16(const uint16_t *p, __m256 *low, __m256 *high) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p), zero = _mm256_setzero_si256();
    *low = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
    *high = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- linear_bf16 ---- */

/* rows x [mr, K] (row stride ldx) times one panel, bf16 (wb) or already widened (wf). */
INLINE void tile(int mr, const float *x, int64_t ldx, int64_t K, const uint16_t *wb,
                 const float *wf, const float *bias, float *out, int64_t ldo, int valid) {
    __m256 acc[TILE_ROWS][2];
    for (int i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        __m256 w0, w1;
        if (wb) {
            widen16(wb + k * PANEL, &w0, &w1);
        } else {
            w0 = _mm256_loadu_ps(wf + k * PANEL);
            w1 = _mm256_loadu_ps(wf + k * PANEL + 8);
        }
        for (int i = 0; i < mr; ++i) {
            __m256 xb = _mm256_broadcast_ss(x + i * ldx + k);
            acc[i][0] = _mm256_fmadd_ps(xb, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(xb, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < mr; ++i) {
        if (bias) {
            acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(bias));
            acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(bias + 8));
        }
        if (valid == PANEL) {
            _mm256_storeu_ps(out + i * ldo, acc[i][0]);
            _mm256_storeu_ps(out + i * ldo + 8, acc[i][1]);
        } else {
            float row[PANEL];
            _mm256_storeu_ps(row, acc[i][0]);
            _mm256_storeu_ps(row + 8, acc[i][1]);
            memcpy(out + i * ldo, row, valid * sizeof(float));
        }
    }
}

/* rows [0, M) of x times one panel: the row count picks an unrolled tile. */
static void panel_rows(const float *x, int64_t M, int64_t K, const uint16_t *wb, const float *wf,
                       const float *bias, float *out, int64_t ldo, int valid) {
    for (int64_t m = 0; m < M; m += TILE_ROWS) {
        const float *xm = x + m * K;
        float *om = out + m * ldo;
        switch (M - m < TILE_ROWS ? M - m : TILE_ROWS) {
            case 1: tile(1, xm, K, K, wb, wf, bias, om, ldo, valid); break;
            case 2: tile(2, xm, K, K, wb, wf, bias, om, ldo, valid); break;
            case 3: tile(3, xm, K, K, wb, wf, bias, om, ldo, valid); break;
            case 4: tile(4, xm, K, K, wb, wf, bias, om, ldo, valid); break;
            case 5: tile(5, xm, K, K, wb, wf, bias, om, ldo, valid); break;
            default: tile(6, xm, K, K, wb, wf, bias, om, ldo, valid); break;
        }
    }
}

/* bias padded to a whole number of panels (or NULL); out [M, N]. Returns 0, or -1 when the
 * scratch memory cannot be allocated (nothing computed). */
int linear_bf16(const float *x, int64_t M, int64_t K, const uint16_t *packed, int64_t N,
                const float *bias, float *out, int num_threads) {
    const int64_t panels = (N + PANEL - 1) / PANEL;
    if (M <= TILE_ROWS) { /* the weights stream once, straight from memory */
#pragma omp parallel for schedule(static) num_threads(num_threads)
        for (int64_t p = 0; p < panels; ++p) {
            int valid = N - p * PANEL < PANEL ? (int)(N - p * PANEL) : PANEL;
            panel_rows(x, M, K, packed + p * PANEL * K, NULL, bias ? bias + p * PANEL : NULL,
                       out + p * PANEL, N, valid);
        }
        return 0;
    }
    /* Rows in blocks whose x stays in L2 while every panel passes over it. */
    int64_t block = (262144 / (K * (int64_t)sizeof(float))) / TILE_ROWS * TILE_ROWS;
    if (block < TILE_ROWS) block = TILE_ROWS;
    /* Each thread's widened panel, allocated before the parallel region so that a failure
     * can be returned. K * PANEL floats are a multiple of 64 bytes: every slice stays aligned. */
    const size_t wide_floats = (size_t)K * PANEL;
    float *wide_all = aligned_alloc(64, wide_floats * sizeof(float) * (size_t)num_threads);
    if (wide_all == NULL) return -1;
#pragma omp parallel num_threads(num_threads)
    {
        float *wide = wide_all + (size_t)omp_get_thread_num() * wide_floats;
        for (int64_t m0 = 0; m0 < M; m0 += block) {
            int64_t rows = M - m0 < block ? M - m0 : block;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < panels; ++p) {
                const uint16_t *src = packed + p * PANEL * K;
                for (int64_t i = 0; i < K * PANEL; i += PANEL) {
                    __m256 low, high;
                    widen16(src + i, &low, &high);
                    _mm256_store_ps(wide + i, low);
                    _mm256_store_ps(wide + i + 8, high);
                }
                int valid = N - p * PANEL < PANEL ? (int)(N - p * PANEL) : PANEL;
                panel_rows(x + m0 * K, rows, K, NULL, wide, bias ? bias + p * PANEL : NULL,
                           out + m0 * N + p * PANEL, N, valid);
            }
        }
    }
    free(wide_all);
    return 0;
}

/* ---- rms_norm ---- */

static void rms_norm_row(const float *x, int64_t K, const float *w, float eps, float *out) {
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
    }
    float sum = hsum(acc);
    for (; k < K; ++k) sum += x[k] * x[k];
    float scale = 1.0f / sqrtf(sum / (float)K + eps);
    __m256 s = _mm256_set1_ps(scale);
    for (k = 0; k + 8 <= K; k += 8)
        _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_loadu_ps(w + k),
                                                _mm256_mul_ps(_mm256_loadu_ps(x + k), s)));
    for (; k < K; ++k) out[k] = w[k] * (x[k] * scale);
}

void rms_norm(const float *x, int64_t M, int64_t K, const float *w, float eps, float *out,
              int num_threads) {
    if (M * K < 65536) num_threads = 1; /* waking threads costs more than the work */
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t m = 0; m < M; ++m) rms_norm_row(x + m * K, K, w, eps, out + m * K);
}

/* ---- decode_attention ---- */

/* e^x for x <= 0 (softmax after subtracting the max), Cephes' polynomial: about 1 ulp. */
INLINE __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* x [D] -> out [D], transformers' rotate-half rotary embedding: x * cos + rotate_half(x) * sin */
static void rotate(const float *x, const float *cos, const float *sin, int64_t D, float *out) {
    int64_t half = D / 2;
    for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    for (int64_t i = half; i < D; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

/* qkv [B, (H + 2 Hkv) D] rows of the new tokens (before rotary); cos, sin [B, D];
 * caches [S, Hkv, L, D]; positions [B] (row b writes position positions[b] of slot b and
 * attends over 0..positions[b]); out [B, H D]. scratch: per thread (H / Hkv) * (L + D) floats. */
int decode_attention(const float *qkv, int64_t B, int64_t H, int64_t Hkv, int64_t D,
                     const float *cos, const float *sin, float *k_cache, float *v_cache,
                     int64_t L, const int64_t *positions, float scale, float *out,
                     int num_threads) {
    const int64_t G = H / Hkv, row = (H + 2 * Hkv) * D;
    int64_t items = B * Hkv;
    if (num_threads > items) num_threads = (int)items;
    int64_t length_max = 0;
    for (int64_t b = 0; b < B; ++b)
        if (positions[b] + 1 > length_max) length_max = positions[b] + 1;
    /* Each thread's scores and rotated queries, allocated before the parallel region so that a
     * failure can be returned (-1, nothing written). */
    const size_t scratch_floats = (size_t)(G * (length_max + 8) + G * D);
    float *scratch_all = malloc(sizeof(float) * scratch_floats * (size_t)num_threads);
    if (scratch_all == NULL) return -1;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = scratch_all + (size_t)omp_get_thread_num() * scratch_floats;
        float *query = scores + G * (length_max + 8);
#pragma omp for schedule(static)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t b = item / Hkv, h = item % Hkv, pos = positions[b], len = pos + 1;
            const float *token = qkv + b * row, *c = cos + b * D, *s = sin + b * D;
            float *keys = k_cache + ((b * Hkv + h) * L) * D;
            float *values = v_cache + ((b * Hkv + h) * L) * D;
            rotate(token + (H + h) * D, c, s, D, keys + pos * D);
            memcpy(values + pos * D, token + (H + Hkv + h) * D, D * sizeof(float));
            for (int64_t g = 0; g < G; ++g) rotate(token + (h * G + g) * D, c, s, D, query + g * D);
            /* scores[g][j] = q_g . k_j * scale, four keys at a time (four independent FMA
             * chains, their sums gathered in one vector) */
            for (int64_t g = 0; g < G; ++g) {
                const float *q = query + g * D;
                float *p = scores + g * (length_max + 8);
                int64_t j = 0;
                for (; j + 4 <= len; j += 4) {
                    const float *k = keys + j * D;
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int64_t d = 0; d < D; d += 8) {
                        __m256 qv = _mm256_loadu_ps(q + d);
                        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + d), a0);
                        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + D + d), a1);
                        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * D + d), a2);
                        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * D + d), a3);
                    }
                    __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                    __m128 sums = _mm_add_ps(_mm256_castps256_ps128(pairs),
                                             _mm256_extractf128_ps(pairs, 1));
                    _mm_storeu_ps(p + j, _mm_mul_ps(sums, _mm_set1_ps(scale)));
                }
                for (; j < len; ++j) {
                    __m256 acc = _mm256_setzero_ps();
                    for (int64_t d = 0; d < D; d += 8)
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d),
                                              _mm256_loadu_ps(keys + j * D + d), acc);
                    p[j] = hsum(acc) * scale;
                }
            }
            for (int64_t g = 0; g < G; ++g) {
                float *p = scores + g * (length_max + 8);
                int64_t j8 = len & ~(int64_t)7, j;
                __m256 vmax = _mm256_set1_ps(-INFINITY);
                for (j = 0; j < j8; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p + j));
                float m = hmax(vmax);
                for (j = j8; j < len; ++j) m = p[j] > m ? p[j] : m;
                for (j = len; j < ((len + 7) & ~(int64_t)7); ++j) p[j] = -INFINITY;
                __m256 vsum = _mm256_setzero_ps(), vm = _mm256_set1_ps(m);
                const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
                for (j = 0; j < len; j += 8) {
                    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), vm));
                    /* lanes past the end (the last block) count for nothing */
                    __m256 inside = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps((float)j)),
                                                  _mm256_set1_ps((float)len), _CMP_LT_OQ);
                    e = _mm256_and_ps(e, inside);
                    _mm256_storeu_ps(p + j, e);
                    vsum = _mm256_add_ps(vsum, e);
                }
                const __m256 inverse = _mm256_set1_ps(1.0f / hsum(vsum));
                float *o = out + b * H * D + (h * G + g) * D;
                for (int64_t d0 = 0; d0 < D; d0 += 64) { /* 8 accumulators of 8 lanes */
                    const int64_t width = D - d0 < 64 ? (D - d0) / 8 : 8;
                    __m256 acc[8];
                    for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
                    for (j = 0; j < len; ++j) {
                        const __m256 weight = _mm256_set1_ps(p[j]);
                        const float *v = values + j * D + d0;
                        for (int t = 0; t < width; ++t)
                            acc[t] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + 8 * t), acc[t]);
                    }
                    for (int t = 0; t < width; ++t)
                        _mm256_storeu_ps(o + d0 + 8 * t, _mm256_mul_ps(acc[t], inverse));
                }
            }
        }
    }
    free(scratch_all);
    return 0;
}

/* ---- decode_layers ---- */

/* One decoder layer's weights, as model_runner.py packs them; NULL for what a family lacks. */
typedef struct {
    const float *input_norm, *post_norm, *q_norm, *k_norm; /* q_norm, k_norm: Qwen3's, [D] */
    const uint16_t *qkv, *o, *gate_up, *down;              /* packed by pack_bf16 */
    const float *qkv_bias, *o_bias, *gate_up_bias, *down_bias; /* padded to panels, or NULL */
    float *k_cache, *v_cache;                              /* [S, Hkv, L, D] */
} DecoderLayer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, max_len;
    float eps, scale;
} DecoderShape;

INLINE void add_rows(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] + y[i];
}

/* A kernel that could not allocate its scratch ends the step at once: -1, the step failed. */
#define OR_FAIL(call) do { if ((call) != 0) { free(scratch); return -1; } } while (0)

/* x [B, hidden], updated in place by every layer, as model_runner.py's layer loop does for a
 * step of decode rows only (row b is slot b at positions[b]); cos, sin [B, D]. The MLP's
 * activation is SiLU. Returns 0, or -1 when scratch memory cannot be allocated. */
int decode_layers(const DecoderLayer *layers, const DecoderShape *shape, float *x, int64_t B,
                  const float *cos, const float *sin, const int64_t *positions,
                  int num_threads) {
    const int64_t E = shape->hidden, H = shape->heads, Hkv = shape->kv_heads;
    const int64_t D = shape->head_dim, I = shape->intermediate;
    const int64_t qkv_width = (H + 2 * Hkv) * D;
    /* h and product [B, E]; qkv [B, qkv_width]; mixed [B, max(H D, I)], the attention's output
     * and later the MLP's activation; gate_up [B, 2 I] */
    const int64_t mixed_width = H * D > I ? H * D : I;
    const int64_t scratch_floats = B * (2 * E + qkv_width + mixed_width + 2 * I);
    float *scratch = malloc(sizeof(float) * (size_t)scratch_floats);
    if (scratch == NULL) return -1;
    float *h = scratch, *product = h + B * E, *qkv = product + B * E;
    float *mixed = qkv + B * qkv_width, *gate_up = mixed + B * mixed_width;
    for (int64_t index = 0; index < shape->layers; ++index) {
        const DecoderLayer *layer = layers + index;
        rms_norm(x, B, E, layer->input_norm, shape->eps, h, num_threads);
        OR_FAIL(linear_bf16(h, B, E, layer->qkv, qkv_width, layer->qkv_bias, qkv, num_threads));
        if (layer->q_norm != NULL && layer->k_norm != NULL) /* each head, before rotary */
            for (int64_t b = 0; b < B; ++b) {
                float *row = qkv + b * qkv_width;
                rms_norm(row, H, D, layer->q_norm, shape->eps, row, 1);
                rms_norm(row + H * D, Hkv, D, layer->k_norm, shape->eps, row + H * D, 1);
            }
        OR_FAIL(decode_attention(qkv, B, H, Hkv, D, cos, sin, layer->k_cache, layer->v_cache,
                                 shape->max_len, positions, shape->scale, mixed, num_threads));
        OR_FAIL(linear_bf16(mixed, B, H * D, layer->o, E, layer->o_bias, product, num_threads));
        add_rows(x, product, B * E);
        rms_norm(x, B, E, layer->post_norm, shape->eps, h, num_threads);
        OR_FAIL(linear_bf16(h, B, E, layer->gate_up, 2 * I, layer->gate_up_bias, gate_up,
                            num_threads));
        for (int64_t b = 0; b < B; ++b) /* silu(gate) * up, as torch computes silu */
            for (int64_t i = 0; i < I; ++i) {
                const float gate = gate_up[b * 2 * I + i], up = gate_up[b * 2 * I + I + i];
                mixed[b * I + i] = gate / (1.0f + expf(-gate)) * up;
            }
        OR_FAIL(linear_bf16(mixed, B, I, layer->down, E, layer->down_bias, product, num_threads));
        add_rows(x, product, B * E);
    }
#undef OR_FAIL
    free(scratch);
    return 0;
}
