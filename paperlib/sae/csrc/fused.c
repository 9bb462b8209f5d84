/* Fused CPU kernels of the sparse SAE training step (see paperlib/sae/kernels.py).
 *
 * fused_impl.h is included once per element type: float (names ending in _f32) and double (_f64). Parallel
 * loops use a static schedule and every output element is written by one iteration, summed in a fixed
 * order, so results do not depend on the number of threads. Vectorised sums reassociate; nothing else
 * deviates from IEEE arithmetic (no -ffast-math: NaN and inf propagate).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
/* This thread's number q in its team of nq (0 and 1 without OpenMP). */
#define THREAD_IN_TEAM(q, nq) do { (q) = omp_get_thread_num(); (nq) = omp_get_num_threads(); } while (0)
#else
#define THREAD_IN_TEAM(q, nq) do { (q) = 0; (nq) = 1; } while (0)
#endif

#define TILE 16        /* latents per tile of latent_grads: one 64-byte line of float in W_enc's row */
#define TOKEN_BLOCK 64 /* tokens per work item of decode_residual */
#define PREFETCH_AHEAD 12 /* gathered row chunks are prefetched this many entries ahead */
/* Prefetch one 256-byte column chunk (four cache lines; short runs the hardware prefetcher misses). */
#define PREFETCH_CHUNK(p)                                          \
    do {                                                           \
        const char *c_ = (const char *)(p);                        \
        __builtin_prefetch(c_); __builtin_prefetch(c_ + 64);       \
        __builtin_prefetch(c_ + 128); __builtin_prefetch(c_ + 192); \
    } while (0)

#if defined(__AVX512F__)
#include <immintrin.h>
/* The entries >= t of a float row, in column order, by AVX-512 compress (masked stores only: nothing past the
 * row's own range is written, so rows gathered by other threads are never touched). */
static inline int64_t gather_row_avx512(const float *restrict row, int64_t n, float t, int64_t *restrict cols,
                                     float *restrict vals) {
    const __m512 tv = _mm512_set1_ps(t);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    int64_t o = 0, j = 0;
    for (; j + 16 <= n; j += 16, idx = _mm512_add_epi32(idx, step)) {
        const __m512 v = _mm512_loadu_ps(row + j);
        const __mmask16 k = _mm512_cmp_ps_mask(v, tv, _CMP_GE_OQ);
        if (!k) continue;
        const int c = __builtin_popcount((unsigned)k);
        _mm512_mask_storeu_ps(vals + o, (__mmask16)((1u << c) - 1), _mm512_maskz_compress_ps(k, v));
        const __m512i ci = _mm512_maskz_compress_epi32(k, idx);
        const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(ci));
        _mm512_mask_storeu_epi64(cols + o, (__mmask8)(c >= 8 ? 0xff : (1u << c) - 1), lo);
        if (c > 8) {
            const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(ci, 1));
            _mm512_mask_storeu_epi64(cols + o + 8, (__mmask8)((1u << (c - 8)) - 1), hi);
        }
        o += c;
    }
    for (; j < n; j++)
        if (row[j] >= t) { cols[o] = j; vals[o] = row[j]; o++; }
    return o;
}
#define GATHER_ROW gather_row_avx512 /* float rows only; n < 2^31 (column indices are compressed as int32) */
#endif

#define T float
#define S(name) name##_f32
#define CW 64 /* column chunk: 256 bytes */
#define HSUM_STEPS(v)                                                                                   \
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);           \
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);           \
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);           \
    v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#include "fused_impl.h"
#undef T
#undef S
#undef CW
#undef HSUM_STEPS
#undef GATHER_ROW

#define T double
#define S(name) name##_f64
#define CW 32
#define HSUM_STEPS(v)                                                         \
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);               \
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);               \
    v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6)
#include "fused_impl.h"
#undef T
#undef S
#undef CW
#undef HSUM_STEPS

/* Stable counting sort of the entries by latent: crow_t [n + 1], perm, rows_t = rows[perm]. Thread q of nq counts
 * and then places its block of entries [m q / nq, m (q + 1) / nq) with its own positions pos[q n : (q + 1) n]
 * (pos has nt n elements): the blocks are in entry order, so the result is that of one thread. */
void by_latent(const int64_t *restrict rows, const int64_t *restrict cols, int64_t m, int64_t n,
               int64_t *restrict crow_t, int64_t *restrict pos, int64_t *restrict perm,
               int64_t *restrict rows_t, int nt) {
    if (m < 4096) nt = 1; /* a parallel region costs more than sorting a few thousand entries */
#pragma omp parallel num_threads(nt)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        const int64_t e0 = m * q / nq, e1 = m * (q + 1) / nq;
        int64_t *restrict mine = pos + (int64_t)q * n;
        memset(mine, 0, (size_t)n * sizeof(int64_t));
        for (int64_t e = e0; e < e1; e++) mine[cols[e]]++;
#pragma omp barrier
#pragma omp single
        {
            crow_t[0] = 0;
            for (int64_t j = 0; j < n; j++) {
                int64_t at = crow_t[j];
                for (int r = 0; r < nq; r++) {
                    const int64_t c = pos[(int64_t)r * n + j];
                    pos[(int64_t)r * n + j] = at;
                    at += c;
                }
                crow_t[j + 1] = at;
            }
        }
        for (int64_t e = e0; e < e1; e++) {
            const int64_t at = mine[cols[e]]++;
            perm[at] = e;
            rows_t[at] = rows[e];
        }
    }
}

/* torch.quantile(v.double(), q) with linear interpolation, bit for bit: rank r = q (n - 1), below = floor(r),
 * above = ceil(r), w = r - below, then a + w (b - a) for w < 0.5 and b + (w - 1) (b - a) otherwise, each one fused
 * multiply-add as torch's lerp computes it. work holds n doubles; ranks are selected (select_rank) in ascending
 * order, each in the part right of the previous one. Returns -2 when a q is outside [0, 1], -1 when a value is not finite (nothing
 * written), else 0. */
int quantiles_f32(const float *restrict v, int64_t n, const double *restrict q, int64_t nq, double *restrict work,
                  double *restrict out) {
    for (int64_t s = 0; s < nq; s++)
        if (!(q[s] >= 0.0 && q[s] <= 1.0)) return -2;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) return -1;
        work[i] = (double)v[i];
    }
    int64_t done = 0; /* a[0..done) holds the smallest values, ranks below done are in place */
    for (;;) { /* the smallest rank not yet placed among all the quantiles' below/above ranks */
        int64_t next = n;
        for (int64_t s = 0; s < nq; s++) {
            const double r = q[s] * (double)(n - 1);
            const int64_t lo = (int64_t)r, hi = (int64_t)ceil(r);
            if (lo >= done && lo < next) next = lo;
            if (hi >= done && hi < next) next = hi;
        }
        if (next >= n) break;
        select_rank_f64(work, done, n, next);
        done = next + 1;
    }
    for (int64_t s = 0; s < nq; s++) {
        const double r = q[s] * (double)(n - 1);
        const int64_t lo = (int64_t)r, hi = (int64_t)ceil(r);
        const double w = r - (double)lo, a = work[lo], b = work[hi], diff = b - a;
        out[s] = w < 0.5 ? fma(w, diff, a) : fma(w - 1.0, diff, b);
    }
    return 0;
}

/* Radix selection of an order statistic of float32 values. A value's bits map to an unsigned key whose order is
 * the values' order (negative values: all bits flipped; others: the sign bit set), with -0 just below +0: the
 * keys' order refines the values', so the element of a given rank in key order equals (as a value) the element
 * of that rank in value order. Three histograms (12, 12 and 8 bits of the key) narrow the rank to one key. */
#define RADIX_HIST 4096
static inline uint32_t radix_key(uint32_t b) { return (b & 0x80000000u) ? ~b : (b | 0x80000000u); }
static inline float radix_value(uint32_t key) {
    const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
/* The bucket holding rank *r (ascending, 0-based) of the counts h[0..nb); *r becomes the rank within it. */
static inline uint32_t radix_bucket(const uint32_t *restrict h, uint32_t nb, int64_t *restrict r) {
    int64_t below = 0;
    uint32_t b = 0;
    for (; b + 1 < nb && below + h[b] <= *r; b++) below += h[b];
    *r -= below;
    return b;
}

/* The k-th largest (1 <= k <= m, m < 2^32) of v[0..m) into *out, v unchanged. work holds m uint32 (each thread
 * keeps the keys of the first histogram's bucket from its part of v in place of that part), hists 4 nt
 * RADIX_HIST uint32 (four histograms per thread, used in turn, so that runs of equal buckets do not wait on one
 * counter). The two passes over v run on nt threads. Returns 0, -1 when a value is NaN (nothing written: NaN has
 * no place in this order; numpy's partition puts it last), -2 for k or m out of range. The result is the order
 * statistic itself, so it does not depend on the thread count. */
int radix_kth_largest_f32(const float *restrict v, int64_t m, int64_t k, uint32_t *restrict work,
                          uint32_t *restrict hists, float *restrict out, int nt) {
    if (m < 1 || k < 1 || k > m || m >= ((int64_t)1 << 32)) return -2;
    const uint32_t *restrict u = (const uint32_t *)v;
    if (m < 16384) nt = 1; /* a team costs more than it saves on a few thousand values */
    int nan = 0;
    int64_t r = m - k, c = 0;
    uint32_t b1 = 0;
    int64_t kept[64];
    int bad_q[64];
    int team = 1; /* the team's actual size (OpenMP may grant fewer threads than asked) */
    if (nt > 64) nt = 64;
#pragma omp parallel num_threads(nt)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        uint32_t *restrict h = hists + (int64_t)q * 4 * RADIX_HIST;
        memset(h, 0, 4 * RADIX_HIST * sizeof(uint32_t));
        const int64_t i0 = m * q / nq, i1 = m * (q + 1) / nq;
        int bad = 0;
        int64_t i = i0;
        for (; i + 4 <= i1; i += 4)
            for (int s = 0; s < 4; s++) {
                const uint32_t b = u[i + s];
                bad |= (b & 0x7fffffffu) > 0x7f800000u;
                h[s * RADIX_HIST + (radix_key(b) >> 20)]++;
            }
        for (; i < i1; i++) {
            const uint32_t b = u[i];
            bad |= (b & 0x7fffffffu) > 0x7f800000u;
            h[radix_key(b) >> 20]++;
        }
        bad_q[q] = bad;
#pragma omp barrier
#pragma omp single
        {
            team = nq;
            for (int t = 0; t < nq; t++) nan |= bad_q[t];
            if (!nan) {
                for (int64_t t = 1; t < 4 * (int64_t)nq; t++)
                    for (int b = 0; b < RADIX_HIST; b++) hists[b] += hists[t * RADIX_HIST + b];
                b1 = radix_bucket(hists, RADIX_HIST, &r);
            }
        } /* implied barrier */
        if (!nan) {
            int64_t o = i0;
            for (int64_t j = i0; j < i1; j++) {
                const uint32_t key = radix_key(u[j]);
                work[o] = key;
                o += (key >> 20) == b1;
            }
            kept[q] = o - i0;
        }
    }
    if (nan) return -1;
    for (int q = 0; q < team; q++) { /* the threads' parts, moved together */
        const int64_t i0 = m * q / team;
        memmove(work + c, work + i0, (size_t)kept[q] * sizeof(uint32_t));
        c += kept[q];
    }
    memset(hists, 0, RADIX_HIST * sizeof(uint32_t));
    for (int64_t i = 0; i < c; i++) hists[(work[i] >> 8) & 0xfffu]++;
    const uint32_t b2 = radix_bucket(hists, RADIX_HIST, &r);
    int64_t c2 = 0;
    for (int64_t i = 0; i < c; i++) {
        const uint32_t key = work[i];
        work[c2] = key;
        c2 += ((key >> 8) & 0xfffu) == b2;
    }
    memset(hists, 0, 256 * sizeof(uint32_t));
    for (int64_t i = 0; i < c2; i++) hists[work[i] & 0xffu]++;
    const uint32_t b3 = radix_bucket(hists, 256, &r);
    *out = radix_value((b1 << 20) | (b2 << 8) | b3);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Screened BatchTopK encoder (float only; see paperlib/sae/screen.py): a bfloat16 product screens the entries,
 * exact float dot products are computed for the candidates only.
 * ------------------------------------------------------------------------------------------------------------ */

/* Round float bits to bfloat16 bits to nearest, ties to even, without branches (vectorisable). Zeros and
 * subnormals become (signed) zero: the matmul would flush them anyway, and the caller's error bound then sees
 * their whole value as rounding error. NaN stays NaN; values rounding past bfloat16's range become infinite (the
 * caller's norms then turn non-finite). */
static inline uint32_t to_bf16_bits(uint32_t b) {
    const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    const uint32_t nan = (b >> 16) | 0x0040u, zero = (b >> 16) & 0x8000u;
    const uint32_t h = (b & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
    return (b & 0x7f800000u) == 0 ? zero : h;
}

static inline float bits_to_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t float_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* Per row i of x [B, d]: xh[i] = bfloat16(x[i]), norm[i] = |x[i]| and dnorm[i] = |x[i] - xh[i]| (sums in
 * double; the difference of a float and its rounding is exact in float). */
void rows_to_bf16(const float *restrict x, int64_t B, int64_t d, uint16_t *restrict xh, double *restrict norm,
                  double *restrict dnorm, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) {
        const float *restrict xi = x + i * d;
        uint16_t *restrict hi = xh + i * d;
        double s = 0.0, q = 0.0;
#pragma omp simd reduction(+:s, q)
        for (int64_t t = 0; t < d; t++) {
            const uint32_t h = to_bf16_bits(float_to_bits(xi[t]));
            const float r = xi[t] - bits_to_float(h << 16);
            hi[t] = (uint16_t)h;
            s += (double)xi[t] * xi[t];
            q += (double)r * r;
        }
        norm[i] = sqrt(s);
        dnorm[i] = sqrt(q);
    }
}


/* 16 x 16 transpose of r[0..15] in registers: off-diagonal blocks of 8, 4, 2 and 1 swapped in turn. */
#define TSWAP8(x, y) do { const vec_f32 x_ = x, y_ = y; \
    x = __builtin_shufflevector(x_, y_, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23); \
    y = __builtin_shufflevector(x_, y_, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31); } while (0)
#define TSWAP4(x, y) do { const vec_f32 x_ = x, y_ = y; \
    x = __builtin_shufflevector(x_, y_, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27); \
    y = __builtin_shufflevector(x_, y_, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31); } while (0)
#define TSWAP2(x, y) do { const vec_f32 x_ = x, y_ = y; \
    x = __builtin_shufflevector(x_, y_, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29); \
    y = __builtin_shufflevector(x_, y_, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31); } while (0)
#define TSWAP1(x, y) do { const vec_f32 x_ = x, y_ = y; \
    x = __builtin_shufflevector(x_, y_, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30); \
    y = __builtin_shufflevector(x_, y_, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31); } while (0)
static inline void transpose16(vec_f32 r[16]) {
    for (int i = 0; i < 16; i++) if (!(i & 8)) TSWAP8(r[i], r[i + 8]);
    for (int i = 0; i < 16; i++) if (!(i & 4)) TSWAP4(r[i], r[i + 4]);
    for (int i = 0; i < 16; i++) if (!(i & 2)) TSWAP2(r[i], r[i + 2]);
    for (int i = 0; i < 16; i++) if (!(i & 1)) TSWAP1(r[i], r[i + 1]);
}

typedef uint32_t vec_u32 __attribute__((vector_size(64)));
typedef uint16_t vec_u16 __attribute__((vector_size(32)));
typedef double vec_f64x8 __attribute__((vector_size(64)));
typedef float vec_f32x8 __attribute__((vector_size(32)));

/* bfloat16 bits (as in to_bf16_bits) and the rounding residual of 16 floats. */
static inline vec_u32 to_bf16_vec(vec_f32 v, vec_f32 *resid) {
    vec_u32 bits;
    memcpy(&bits, &v, sizeof bits);
    const vec_u32 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const vec_u32 nan = (bits >> 16) | 0x0040u, zero = (bits >> 16) & 0x8000u;
    const vec_u32 is_nan = (vec_u32)((bits & 0x7fffffffu) > 0x7f800000u);
    const vec_u32 is_small = (vec_u32)((bits & 0x7f800000u) == 0);
    vec_u32 h = (nan & is_nan) | (rounded & ~is_nan);
    h = (zero & is_small) | (h & ~is_small);
    const vec_u32 back = h << 16;
    vec_f32 hf;
    memcpy(&hf, &back, sizeof hf);
    *resid = v - hf;
    return h;
}

/* s += v * v and q += r * r for 16 floats, in double (lanes 0-7 and 8-15 in separate accumulators). */
static inline void add_squares(vec_f32 v, vec_f32 r, vec_f64x8 s[2], vec_f64x8 q[2]) {
    const vec_f32x8 v0 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const vec_f32x8 v1 = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const vec_f32x8 r0 = __builtin_shufflevector(r, r, 0, 1, 2, 3, 4, 5, 6, 7);
    const vec_f32x8 r1 = __builtin_shufflevector(r, r, 8, 9, 10, 11, 12, 13, 14, 15);
    const vec_f64x8 a0 = __builtin_convertvector(v0, vec_f64x8), a1 = __builtin_convertvector(v1, vec_f64x8);
    const vec_f64x8 b0 = __builtin_convertvector(r0, vec_f64x8), b1 = __builtin_convertvector(r1, vec_f64x8);
    s[0] += a0 * a0; s[1] += a1 * a1; q[0] += b0 * b0; q[1] += b1 * b1;
}

/* Where cols_to_bf16_t puts W[t, j]'s bfloat16: WhT [n, d], or with vnni AMX's B tiles: for each block of 16
 * columns and 32 rows, 16 rows of 64 bytes (row r: rows 2r and 2r + 1 of the block, interleaved per column), the
 * tiles of a column block in row order, contiguous (d a multiple of 32, n of 16). */
#define WH_AT(t, j) (vnni ? ((((j) >> 4) * (d >> 5) + ((t) >> 5)) * 16 + (((t) & 31) >> 1)) * 32 + ((j) & 15) * 2 + ((t) & 1) \
                         : (j) * d + (t))
#ifndef CT
#define CT 64 /* columns per block of cols_to_bf16_t (a multiple of 16) */
#endif
/* Per column j of W [d, n]: WT[j] = W[:, j] (float) and WhT[j] = bfloat16(W[:, j]) as rows of [n, d] (with vnni:
 * AMX's B tiles instead, see WH_AT), with
 * norm[j] = |W[:, j]| and dnorm[j] = |W[:, j] - WhT[j]| (double sums over W's rows in order). Each thread takes
 * blocks of CT columns, read CT * 4 bytes a row; full 16 x 16 tiles are transposed in registers, a partial
 * last block element by element. */
void cols_to_bf16_t(const float *restrict W, int64_t d, int64_t n, float *restrict WT, uint16_t *restrict WhT,
                    double *restrict norm, double *restrict dnorm, int vnni, int nt) {
    const int64_t nb = (n + CT - 1) / CT;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t jb = 0; jb < nb; jb++) {
        const int64_t j0 = jb * CT, w = j0 + CT < n ? CT : n - j0;
        if (w == CT && d >= 16) {
            vec_f64x8 s[CT / 16][2] = {{{0}}}, q[CT / 16][2] = {{{0}}};
            int64_t t0 = 0;
            for (; t0 + 16 <= d; t0 += 16)
                for (int sb = 0; sb < CT / 16; sb++) {
                    const int64_t js = j0 + 16 * sb;
                    vec_f32 r[16];
                    vec_u32 hb[16];
                    for (int l = 0; l < 16; l++) {
                        r[l] = vload_f32(W + (t0 + l) * n + js);
                        vec_f32 res;
                        hb[l] = to_bf16_vec(r[l], &res);
                        add_squares(r[l], res, s[sb], q[sb]);
                    }
                    if (vnni) /* rows 2p and 2p + 1 interleaved: WhT is then [d / 2, n, 2], AMX's B layout */
                        for (int p = 0; p < 8; p++) {
                            const vec_u32 lo = hb[2 * p], hi = hb[2 * p + 1] << 16;
                            uint32_t packed[16];
                            for (int l = 0; l < 16; l++) packed[l] = lo[l] | hi[l];
                            memcpy(WhT + WH_AT(t0 + 2 * p, js), packed, sizeof packed);
                        }
                    transpose16(r);
                    for (int l = 0; l < 16; l++) vstore_f32(WT + (js + l) * d + t0, r[l]);
                    if (!vnni) { /* the bfloat16 bits transposed as they are (as floats: an exact move) */
                        vec_f32 hf[16];
                        memcpy(hf, hb, sizeof hf);
                        transpose16(hf);
                        for (int l = 0; l < 16; l++) {
                            vec_u32 bits;
                            memcpy(&bits, &hf[l], sizeof bits);
                            const vec_u16 h = __builtin_convertvector(bits, vec_u16);
                            memcpy(WhT + (js + l) * d + t0, &h, sizeof h);
                        }
                    }
                }
            for (; t0 < d; t0++)
                for (int sb = 0; sb < CT / 16; sb++) {
                    const int64_t js = j0 + 16 * sb;
                    const vec_f32 v = vload_f32(W + t0 * n + js);
                    vec_f32 res;
                    const vec_u32 h = to_bf16_vec(v, &res);
                    add_squares(v, res, s[sb], q[sb]);
                    for (int l = 0; l < 16; l++) {
                        WT[(js + l) * d + t0] = v[l];
                        WhT[WH_AT(t0, js + l)] = (uint16_t)h[l];
                    }
                }
            for (int l = 0; l < CT; l++) {
                norm[j0 + l] = sqrt(s[l >> 4][(l >> 3) & 1][l & 7]);
                dnorm[j0 + l] = sqrt(q[l >> 4][(l >> 3) & 1][l & 7]);
            }
            continue;
        }
        for (int64_t l = 0; l < w; l++) {
            double s = 0.0, q = 0.0;
            for (int64_t t = 0; t < d; t++) {
                const float v = W[t * n + j0 + l];
                const uint32_t h = to_bf16_bits(float_to_bits(v));
                const float r = v - bits_to_float(h << 16);
                WT[(j0 + l) * d + t] = v;
                WhT[WH_AT(t, j0 + l)] = (uint16_t)h;
                s += (double)v * v;
                q += (double)r * r;
            }
            norm[j0 + l] = sqrt(s);
            dnorm[j0 + l] = sqrt(q);
        }
    }
}

/* The screening bound of entry (i, j) with screened value p: e = a[i] b[j] + c[i] f[j] + rel |p| + 2^-100
 * (see screen.py: rel = 2^-20 for a product written in float32, 2^-7 + 2^-20 for one rounded to bfloat16);
 * upper = p + e, lower = p - e. */
#define SCREEN_E(p, ai, bj, ci, fj, rel) ((ai) * (bj) + (ci) * (fj) + (rel) * fabsf(p) + 0x1p-100f)

/* Entry j of a row of screened values: float32, or bfloat16 bits (exactly widened to float32). */
static inline float screened_value(const void *restrict row, int64_t j, int bf16) {
    return bf16 ? bits_to_float((uint32_t)((const uint16_t *)row)[j] << 16) : ((const float *)row)[j];
}

/* Row i of screened values P [B, n]: float32, or bfloat16 bits with bf16. */
static inline const void *screened_row(const void *restrict P, int64_t i, int64_t n, int bf16) {
    return (const char *)P + i * n * (int64_t)(bf16 ? sizeof(uint16_t) : sizeof(float));
}

/* cu / cl of one row (see screen_count); always inlined with a constant bf16, so each width gets its own
 * vectorised loop and never reads the row as the other width. */
static inline __attribute__((always_inline)) void count_row(const void *restrict row, const int bf16, float rel,
                                                            int64_t n, float ai, float ci, const float *restrict b,
                                                            const float *restrict f, float t, int64_t *restrict cu,
                                                            int64_t *restrict cl) {
    int u = 0, l = 0;
#pragma omp simd reduction(+:u, l)
    for (int64_t j = 0; j < n; j++) {
        const float p = screened_value(row, j, bf16), e = SCREEN_E(p, ai, b[j], ci, f[j], rel);
        u += p + e >= t;
        l += p - e >= t;
    }
    *cu = u;
    *cl = l;
}

/* Per row i of P [B, n] (float32, or bfloat16 bits with bf16): cu[i] = #{j: upper >= t}, cl[i] = #{j: lower >= t}. */
void screen_count(const void *restrict P, int bf16, float rel, int64_t B, int64_t n, const float *restrict a,
                  const float *restrict b, const float *restrict c, const float *restrict f, float t,
                  int64_t *restrict cu, int64_t *restrict cl, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) {
        const void *restrict row = screened_row(P, i, n, bf16);
        if (bf16)
            count_row(row, 1, rel, n, a[i], c[i], b, f, t, cu + i, cl + i);
        else
            count_row(row, 0, rel, n, a[i], c[i], b, f, t, cu + i, cl + i);
    }
}

#if defined(__AVX512F__)
/* The 16 entries at columns [j, j + 16) of a row (screened values p; bound terms av, cv of the row, b + j, f + j of
 * the columns): those with upper >= t are appended to cols (as tag + column) / lo / hi through masked stores, so
 * nothing past them is written; returns their number and adds the number with lower >= t to *low. Branch-free:
 * hits are rare and unpredictable (a branch on them cost the AMX screen 1.1 of 4.7 ms). */
static inline int screen_vec16(__m512 p, const float *restrict b, const float *restrict f, __m512 av, __m512 cv,
                               __m512 relv, __m512 tv, int64_t j, int64_t tag, int64_t *restrict cols, float *restrict lo,
                               float *restrict hi, int64_t *restrict low) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 e = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(av, _mm512_loadu_ps(b + j)),
                                                               _mm512_mul_ps(cv, _mm512_loadu_ps(f + j))),
                                                 _mm512_mul_ps(relv, _mm512_abs_ps(p))),
                                   _mm512_set1_ps(0x1p-100f));
    const __m512 up = _mm512_add_ps(p, e), down = _mm512_sub_ps(p, e);
    const __mmask16 k = _mm512_cmp_ps_mask(up, tv, _CMP_GE_OQ);
    *low += __builtin_popcount((unsigned)_mm512_mask_cmp_ps_mask(k, down, tv, _CMP_GE_OQ));
    const int m = __builtin_popcount((unsigned)k);
    const __mmask16 first = (__mmask16)((1u << m) - 1);
    _mm512_mask_storeu_ps(hi, first, _mm512_maskz_compress_ps(k, up));
    _mm512_mask_storeu_ps(lo, first, _mm512_maskz_compress_ps(k, down));
    /* indices compressed in a register, then widened and stored through masks (a compress with a memory
     * destination is microcoded) */
    const __m512i ci32 = _mm512_maskz_compress_epi32(k, _mm512_add_epi32(_mm512_set1_epi32((int)j), lane));
    const __m512i tv64 = _mm512_set1_epi64(tag);
    _mm512_mask_storeu_epi64(cols, (__mmask8)(m >= 8 ? 0xff : (1u << m) - 1),
                             _mm512_add_epi64(tv64, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(ci32))));
    if (m > 8)
        _mm512_mask_storeu_epi64(cols + 8, (__mmask8)((1u << (m - 8)) - 1),
                                 _mm512_add_epi64(tv64, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(ci32, 1))));
    return m;
}
#endif

#if defined(__AVX512F__)
/* 16 screened values of a row from column j, widened to float32 (exact for bfloat16 bits). */
static inline __m512 load_screened16(const void *restrict row, int64_t j, int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + j))), 16));
    return _mm512_loadu_ps((const float *)row + j);
}
#endif

/* The entries of one row (its bound terms ai, ci; values float32 or, with bf16, bfloat16 bits) with upper >= t,
 * in column order, into cols / lo / hi (their lower and upper bounds); returns their number and adds the number
 * with lower >= t to *cl. The AVX-512 path stores through masks only, so nothing past the row's own entries is
 * written. */
static inline int64_t screen_row(const void *restrict row, int bf16, float rel, int64_t n, float ai, float ci,
                                 const float *restrict b, const float *restrict f, float t, int64_t *restrict cols,
                                 float *restrict lo, float *restrict hi, int64_t *restrict cl) {
    int64_t o = 0, j = 0, l = 0;
#if defined(__AVX512F__)
    if (n < ((int64_t)1 << 31)) {
        const __m512 tv = _mm512_set1_ps(t), av = _mm512_set1_ps(ai), cv = _mm512_set1_ps(ci);
        const __m512 relv = _mm512_set1_ps(rel);
        for (; j + 16 <= n; j += 16)
            o += screen_vec16(load_screened16(row, j, bf16), b, f, av, cv, relv, tv, j, 0, cols + o, lo + o, hi + o,
                              &l);
    }
#endif
    for (; j < n; j++) {
        const float p = screened_value(row, j, bf16), e = SCREEN_E(p, ai, b[j], ci, f[j], rel);
        if (p + e >= t) { cols[o] = j; lo[o] = p - e; hi[o] = p + e; l += p - e >= t; o++; }
    }
    *cl += l;
    return o;
}

/* The entries of row i with upper >= t, in column order, into cols / lo / hi [offsets[i], offsets[i + 1]). */
void screen_gather(const void *restrict P, int bf16, float rel, int64_t B, int64_t n, const float *restrict a,
                   const float *restrict b, const float *restrict c, const float *restrict f, float t,
                   const int64_t *restrict offsets, int64_t *restrict cols, float *restrict lo, float *restrict hi,
                   int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) {
        int64_t unused = 0;
        const int64_t o = offsets[i];
        screen_row(screened_row(P, i, n, bf16), bf16, rel, n, a[i], c[i], b, f, t, cols + o, lo + o, hi + o,
                   &unused);
    }
}

/* Move the per-thread regions of cols / lo / hi (thread q's entries in [cap q / used, ends[q])) together, in
 * thread order; returns the number of entries. */
static int64_t join_regions(int64_t *restrict cols, float *restrict lo, float *restrict hi,
                            const int64_t *restrict ends, int64_t cap, int used) {
    int64_t m = ends[0];
    for (int q = 1; q < used; q++) {
        const int64_t from = cap * q / used, k = ends[q] - from;
        memmove(cols + m, cols + from, (size_t)k * sizeof(int64_t));
        memmove(lo + m, lo + from, (size_t)k * sizeof(float));
        memmove(hi + m, hi + from, (size_t)k * sizeof(float));
        m += k;
    }
    return m;
}

/* screen_count and screen_gather in one pass over P: thread q of nq gathers its block of rows into its own region
 * [cap q / nq, cap (q + 1) / nq) of cols / lo / hi (a row that might not fit goes through the row buffers rb_*
 * [nt n]); then the regions are moved together in row order. Writes cu and cl; returns the number of entries,
 * or -1 when a region was too small (then use the two passes). */
int64_t screen_gather_once(const void *restrict P, int bf16, float rel, int64_t B, int64_t n, const float *restrict a,
                           const float *restrict b, const float *restrict c, const float *restrict f, float t,
                           int64_t cap, int64_t *restrict cu, int64_t *restrict cl, int64_t *restrict cols,
                           float *restrict lo, float *restrict hi, int64_t *restrict rb_c, float *restrict rb_lo,
                           float *restrict rb_hi, int64_t *restrict ends, int nt) {
    int overflow = 0, used = 1;
#pragma omp parallel num_threads(nt) reduction(|:overflow)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        if (q == 0) used = nq;
        const int64_t i0 = B * q / nq, i1 = B * (q + 1) / nq, top = cap * (q + 1) / nq;
        int64_t o = cap * q / nq;
        for (int64_t i = i0; i < i1; i++) {
            const void *restrict row = screened_row(P, i, n, bf16);
            cl[i] = 0;
            if (top - o >= n) {
                cu[i] = screen_row(row, bf16, rel, n, a[i], c[i], b, f, t, cols + o, lo + o, hi + o, cl + i);
            } else {
                int64_t *restrict bc = rb_c + (int64_t)q * n;
                float *restrict bl = rb_lo + (int64_t)q * n, *restrict bh = rb_hi + (int64_t)q * n;
                const int64_t k = screen_row(row, bf16, rel, n, a[i], c[i], b, f, t, bc, bl, bh, cl + i);
                if (k > top - o) { overflow = 1; break; }
                memcpy(cols + o, bc, (size_t)k * sizeof(int64_t));
                memcpy(lo + o, bl, (size_t)k * sizeof(float));
                memcpy(hi + o, bh, (size_t)k * sizeof(float));
                cu[i] = k;
            }
            o += cu[i];
        }
        ends[q] = o;
    }
    if (overflow) return -1;
    return join_regions(cols, lo, hi, ends, cap, used);
}

/* The gathered entries (row i: [offsets[i], offsets[i + 1])) with hi >= t, in order: crow [B + 1], cols_o. */
void screen_compact(const int64_t *restrict offsets, const int64_t *restrict cols, const float *restrict hi,
                    int64_t B, float t, int64_t *restrict crow, int64_t *restrict cols_o) {
    int64_t o = 0;
    crow[0] = 0;
    for (int64_t i = 0; i < B; i++) {
        for (int64_t e = offsets[i]; e < offsets[i + 1]; e++) {  /* branch-free: the test is near 50/50 */
            cols_o[o] = cols[e];
            o += hi[e] >= t;
        }
        crow[i + 1] = o;
    }
}

/* Lane sums of 16 vectors at once: lane l of the result is v[l]'s lanes added in hsum_f32's tree (pairs 8 apart,
 * then 4, 2, 1, each addition with the same operands), so every entry's sum is the one hsum_f32 gives alone. */
static inline vec_f32 hsum16(vec_f32 v[16]) {
    vec_f32 u[8], w[4], z[2];
    for (int i = 0; i < 8; i++)
        u[i] = __builtin_shufflevector(v[i], v[i + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(v[i], v[i + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        w[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
               __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        z[i] = __builtin_shufflevector(w[i], w[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
               __builtin_shufflevector(w[i], w[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    return __builtin_shufflevector(z[0], z[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           __builtin_shufflevector(z[0], z[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

#define DOT_CW 64 /* floats per column chunk of dot_entries (256 bytes) */
#define DOT_FEW 4  /* a token's last group of at most this many entries skips hsum16's 16-vector transposition */
/* out[e] = x[i] . WT[cols[e]] for the entries e in [crow[i], crow[i + 1]) of every row i (x [B, d], WT [n, d]).
 * Work items are (column chunk, token block), chunk-major, so a thread's WT[:, chunk] (n * 256 bytes) stays in
 * its L2, as in decode_residual. Each dot product is summed in one fixed order: per chunk, four 16-lane vectors
 * added as (v0 + v1) + (v2 + v3) and their lanes as a tree (a partial, part [c m + e]); the partials in chunk
 * order; a last partial chunk (d not a multiple of 64) in element order. Up to 16 entries' partials are added
 * together (hsum16), each in hsum_f32's own order. */
void dot_entries(const int64_t *restrict crow, const int64_t *restrict cols, const float *restrict x,
                 const float *restrict WT, int64_t B, int64_t d, float *restrict part, float *restrict out, int nt) {
    const int64_t n_chunks = (d + DOT_CW - 1) / DOT_CW, m = crow[B];
    const int64_t n_blocks = (B + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t c = 0; c < n_chunks; c++)
            for (int64_t ib = 0; ib < n_blocks; ib++) {
                const int64_t t0 = c * DOT_CW, w = t0 + DOT_CW < d ? DOT_CW : d - t0;
                const int64_t i1 = (ib + 1) * TOKEN_BLOCK < B ? (ib + 1) * TOKEN_BLOCK : B;
                float *restrict pc = part + c * m;
                for (int64_t i = ib * TOKEN_BLOCK; i < i1; i++) {
                    const float *restrict xi = x + i * d + t0;
                    const int64_t e1 = crow[i + 1];
                    if (w == DOT_CW) {
                        const vec_f32 x0 = vload_f32(xi), x1 = vload_f32(xi + 16), x2 = vload_f32(xi + 32),
                                      x3 = vload_f32(xi + 48);
                        for (int64_t e0 = crow[i]; e0 < e1; e0 += 16) {
                            const int64_t g = e1 - e0 < 16 ? e1 - e0 : 16;
                            if (g <= DOT_FEW) { /* a few entries: hsum_f32 each (the same sums as hsum16's lanes) */
                                for (int64_t e = e0; e < e1; e++) {
                                    const float *restrict wr = WT + cols[e] * d + t0;
                                    pc[e] = hsum_f32((x0 * vload_f32(wr) + x1 * vload_f32(wr + 16)) +
                                                     (x2 * vload_f32(wr + 32) + x3 * vload_f32(wr + 48)));
                                }
                                break;
                            }
                            vec_f32 v[16];
                            for (int64_t u = 0; u < 16; u++) {
                                if (u >= g) { v[u] = vzero_f32(); continue; }
                                const int64_t e = e0 + u;
                                const float *restrict wr = WT + cols[e] * d + t0;
                                if (e + PREFETCH_AHEAD < e1) PREFETCH_CHUNK(WT + cols[e + PREFETCH_AHEAD] * d + t0);
                                v[u] = (x0 * vload_f32(wr) + x1 * vload_f32(wr + 16)) +
                                       (x2 * vload_f32(wr + 32) + x3 * vload_f32(wr + 48));
                            }
                            const vec_f32 sums = hsum16(v);
                            if (g == 16) vstore_f32(pc + e0, sums);
                            else for (int64_t u = 0; u < g; u++) pc[e0 + u] = sums[u];
                        }
                    } else {
                        for (int64_t e = crow[i]; e < e1; e++) {
                            const float *restrict wr = WT + cols[e] * d + t0;
                            float s = 0.0f;
                            for (int64_t t = 0; t < w; t++) s += xi[t] * wr[t];
                            pc[e] = s;
                        }
                    }
                }
            }
#pragma omp for schedule(static)
        for (int64_t e = 0; e < m; e++) {
            float s = part[e];
            for (int64_t c = 1; c < n_chunks; c++) s += part[c * m + e];
            out[e] = s;
        }
    }
}

/* The screened Gram matrices of the orthogonality penalty. Chunk q holds the rows [starts[q], starts[q + 1]) of
 * the gathered rows (m_q of them); G holds the chunks' screened Gram matrices one after another (m_q x m_q
 * bfloat16 bits each, rows u_i . u_j rounded to bfloat16), every entry bounded by SCREEN_E with the rows' (a, c)
 * and (b, f) terms. Per row i, s_i = max over j != i in its chunk of the lower bound |g| - e of |cos(i, j)| (at
 * least 0); its candidates are the j != i of its chunk whose upper bound |g| + e reaches s_i (1 - slack), in
 * column order, as row indices into cols [crow[i], crow[i + 1]) (crow [n + 1], n = starts[n_chunks]; cols holds
 * up to sum m_q (m_q - 1) entries). Rows of a chunk of one row have none. */
/* |g| of 16 bfloat16 bits at p, widened exactly to float32; and a vector's lanes as int32 (for masks). */
typedef int32_t vec_i32x16 __attribute__((vector_size(64)));
static inline vec_f32 bf16x16_abs(const uint16_t *p) {
    vec_u16 h;
    memcpy(&h, p, sizeof h);
    const vec_u32 w = (__builtin_convertvector(h, vec_u32) << 16) & 0x7fffffffu;
    vec_f32 f;
    memcpy(&f, &w, sizeof f);
    return f;
}

/* The bounds of 16 entries from column j: e = a b_j + c f_j + rel |g| + 2^-100 (SCREEN_E, lane by lane). */
static inline vec_f32 gram_e16(vec_f32 p, int64_t j, float ai, float ci, const float *restrict b,
                               const float *restrict f, float rel) {
    return ai * vload_f32(b + j) + ci * vload_f32(f + j) + rel * p + 0x1p-100f;
}

/* max over j in [j0, j1) of the lower bound |g| - e, at least s (explicit 16-lane vectors: GCC left the
 * auto-vectorised loop to its scalar version here). */
static inline float gram_max_lower(const uint16_t *restrict row, int64_t j0, int64_t j1, float ai, float ci,
                                   const float *restrict b, const float *restrict f, float rel, float s) {
    int64_t j = j0;
    if (j1 - j0 >= 16) {
        vec_f32 sv = vzero_f32() + s;
        for (; j + 16 <= j1; j += 16) {
            const vec_f32 p = bf16x16_abs(row + j), lo = p - gram_e16(p, j, ai, ci, b, f, rel);
            const vec_i32x16 gt = lo > sv;
            vec_i32x16 li, si;
            memcpy(&li, &lo, sizeof li);
            memcpy(&si, &sv, sizeof si);
            si = (li & gt) | (si & ~gt);
            memcpy(&sv, &si, sizeof sv);
        }
        for (int u = 0; u < 16; u++) s = sv[u] > s ? sv[u] : s;
    }
    for (; j < j1; j++) {
        const float p = fabsf(screened_value(row, j, 1)), lo = p - SCREEN_E(p, ai, b[j], ci, f[j], rel);
        s = lo > s ? lo : s;
    }
    return s;
}

/* #{j in [j0, j1): upper bound |g| + e >= t}. */
static inline int64_t gram_count_upper(const uint16_t *restrict row, int64_t j0, int64_t j1, float ai, float ci,
                                       const float *restrict b, const float *restrict f, float rel, float t) {
    int64_t k = 0, j = j0;
    vec_i32x16 acc = {0};
    for (; j + 16 <= j1; j += 16) {
        const vec_f32 p = bf16x16_abs(row + j);
        acc -= p + gram_e16(p, j, ai, ci, b, f, rel) >= t; /* a comparison's lanes are -1 (true) or 0 */
    }
    for (int u = 0; u < 16; u++) k += acc[u];
    for (; j < j1; j++) {
        const float p = fabsf(screened_value(row, j, 1));
        k += p + SCREEN_E(p, ai, b[j], ci, f[j], rel) >= t;
    }
    return k;
}

/* Whether some j in [j0, j1) (at most 16 columns) has upper bound |g| + e >= t. */
static inline int gram_any_upper(const uint16_t *restrict row, int64_t j0, int64_t j1, float ai, float ci,
                                 const float *restrict b, const float *restrict f, float rel, float t) {
    if (j1 - j0 < 16) return gram_count_upper(row, j0, j1, ai, ci, b, f, rel, t) > 0;
    const vec_f32 p = bf16x16_abs(row + j0);
    const vec_i32x16 hit = p + gram_e16(p, j0, ai, ci, b, f, rel) >= t, none = {0};
    return memcmp(&hit, &none, sizeof hit) != 0;
}

/* Row li of a chunk's screened Gram matrix (m entries; the chunk's b, f): the candidates' threshold
 * s (1 - slack), returned, and their number in *count. The loops leave out the diagonal by their ranges (a test
 * of the index inside them keeps GCC from vectorising them). */
static inline __attribute__((always_inline)) float gram_row_count(
        const uint16_t *restrict row, int64_t m, int64_t li, float ai, float ci, const float *restrict b,
        const float *restrict f, float rel, float slack, int64_t *restrict count) {
    float s = gram_max_lower(row, 0, li, ai, ci, b, f, rel, 0.0f);
    s = gram_max_lower(row, li + 1, m, ai, ci, b, f, rel, s);
    const float t = s * (1.0f - slack);
    *count = gram_count_upper(row, 0, li, ai, ci, b, f, rel, t) + gram_count_upper(row, li + 1, m, ai, ci, b, f, rel, t);
    return t;
}

/* The candidates of that row (threshold t) as r0 + their column, in column order, into cols; blocks of 16 columns
 * without one are skipped by a vector test (the diagonal's block is always scanned). */
static inline __attribute__((always_inline)) void gram_row_fill(
        const uint16_t *restrict row, int64_t m, int64_t li, int64_t r0, float ai, float ci, const float *restrict b,
        const float *restrict f, float rel, float t, int64_t *restrict cols) {
    int64_t o = 0;
    for (int64_t j0 = 0; j0 < m; j0 += 16) {
        const int64_t j1 = j0 + 16 < m ? j0 + 16 : m;
        if (!(li >= j0 && li < j1) && !gram_any_upper(row, j0, j1, ai, ci, b, f, rel, t)) continue;
        for (int64_t j = j0; j < j1; j++) {
            const float p = fabsf(screened_value(row, j, 1));
            if (j != li && p + SCREEN_E(p, ai, b[j], ci, f[j], rel) >= t) cols[o++] = r0 + j;
        }
    }
}

/* Where chunk q's m_q x m_q matrix starts in the chunks' Gram matrices stored one after another. */
static inline int64_t gram_offset(const int64_t *restrict starts, int64_t q) {
    int64_t off = 0;
    for (int64_t u = 0; u < q; u++) off += (starts[u + 1] - starts[u]) * (starts[u + 1] - starts[u]);
    return off;
}

void gram_candidates(const uint16_t *restrict G, const int64_t *restrict starts, int64_t n_chunks, float rel,
                     const float *restrict a, const float *restrict b, const float *restrict c,
                     const float *restrict f, float slack, float *restrict thr, int64_t *restrict crow,
                     int64_t *restrict cols, int nt) {
    const int64_t n = starts[n_chunks];
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t q = 0; q < n_chunks; q++) {
            const int64_t r0 = starts[q], m = starts[q + 1] - r0, off = gram_offset(starts, q);
            for (int64_t li = 0; li < m; li++)
                thr[r0 + li] = gram_row_count(G + off + li * m, m, li, a[r0 + li], c[r0 + li], b + r0, f + r0, rel,
                                              slack, crow + r0 + li + 1);
        }
#pragma omp single
        {
            crow[0] = 0;
            for (int64_t i = 0; i < n; i++) crow[i + 1] += crow[i];
        }
#pragma omp for schedule(static)
        for (int64_t q = 0; q < n_chunks; q++) {
            const int64_t r0 = starts[q], m = starts[q + 1] - r0, off = gram_offset(starts, q);
            for (int64_t li = 0; li < m; li++)
                gram_row_fill(G + off + li * m, m, li, r0, a[r0 + li], c[r0 + li], b + r0, f + r0, rel, thr[r0 + li],
                              cols + crow[r0 + li]);
        }
    }
}

/* Per row i of candidates (cols [crow[i], crow[i + 1]) in column order, values v): the candidate with the largest
 * v^2 (float32 product), the first in column order among equal ones, into jstar[i] / vstar[i]; -1 and 0 for a row
 * without candidates. */
void max_square_pick(const int64_t *restrict crow, const int64_t *restrict cols, const float *restrict v,
                     int64_t n, int64_t *restrict jstar, float *restrict vstar, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        float best = -1.0f, bv = 0.0f;
        int64_t bj = -1;
        for (int64_t e = crow[i]; e < crow[i + 1]; e++) {
            const float sq = v[e] * v[e];
            if (sq > best) { best = sq; bj = cols[e]; bv = v[e]; }
        }
        jstar[i] = bj;
        vstar[i] = bv;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * The screen fused with its bfloat16 product on AMX: the product's 32 x 32 blocks are screened while in L1, so the
 * [B, n] values are never written to memory (they would be 19 MB a step at the default geometry).
 * ------------------------------------------------------------------------------------------------------------ */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_AMX 1
#define AMX_ROWS 128 /* rows per block of amx_screen: its A operand (128 x d bfloat16) stays in L2 */

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Ask Linux for the AMX tile state (once per process; 1 when granted). */
int amx_request(void) {
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

/* The 32 x w block C = xh[i0:i0 + 32] . Wv[:, j0:j0 + w] (w = 16 or 32; float32 sums) into cbuf [32, 32]. */
static inline void amx_block(const uint16_t *restrict xh, const uint16_t *restrict Wv, int64_t d, int64_t n,
                             int64_t i0, int64_t j0, int64_t w, float *restrict cbuf) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < d; k0 += 32) {
        _tile_loadd(4, xh + i0 * d + k0, d * 2);
        _tile_loadd(5, xh + (i0 + 16) * d + k0, d * 2);
        _tile_loadd(6, Wv + ((j0 / 16) * (d / 32) + k0 / 32) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (w == 32) {
            _tile_loadd(7, Wv + ((j0 / 16 + 1) * (d / 32) + k0 / 32) * 512, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, cbuf, 128);
    _tile_stored(2, cbuf + 16 * 32, 128);
    if (w == 32) {
        _tile_stored(1, cbuf + 16, 128);
        _tile_stored(3, cbuf + 16 * 32 + 16, 128);
    }
}

/* The screened product of xh [B, d] and Wv (cols_to_bf16_t's vnni tiles), B and d multiples of 32,
 * n of 16. With P non-NULL, writes it ([B, n], no screen). Otherwise screens as screen_gather_once (same outputs,
 * same region scheme: cap slots, thread q's share [cap q / nq, cap (q + 1) / nq)), staging each block of AMX_ROWS
 * rows' entries in st_c / st_lo / st_hi ([nt AMX_ROWS n]) as they come (the row in st_c's upper 32 bits), then
 * moving them to the region sorted by row.
 * Returns the number of entries, -1 when a region was too small. */
int64_t amx_screen(const uint16_t *restrict xh, const uint16_t *restrict Wv, int64_t B, int64_t d, int64_t n,
                   const float *restrict a, const float *restrict b, const float *restrict c, const float *restrict f,
                   float t, int64_t cap, int64_t *restrict cu, int64_t *restrict cl, int64_t *restrict cols,
                   float *restrict lo, float *restrict hi, int64_t *restrict st_c, float *restrict st_lo,
                   float *restrict st_hi, int64_t *restrict ends, float *restrict P, int nt) {
    int overflow = 0, used = 1;
    const int64_t n_blocks = (B + AMX_ROWS - 1) / AMX_ROWS;
#pragma omp parallel num_threads(nt) reduction(|:overflow)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        if (q == 0) used = nq;
        tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette_id = 1;
        for (int r = 0; r < 8; r++) { cfg.rows[r] = 16; cfg.colsb[r] = 64; }
        _tile_loadconfig(&cfg);
        float cbuf[32 * 32] __attribute__((aligned(64)));
        int64_t *restrict sc = st_c + (int64_t)q * AMX_ROWS * n;
        float *restrict sl = st_lo + (int64_t)q * AMX_ROWS * n, *restrict sh = st_hi + (int64_t)q * AMX_ROWS * n;
        int64_t cnt[AMX_ROWS];
        const int64_t rb0 = n_blocks * q / nq, rb1 = n_blocks * (q + 1) / nq, top = cap * (q + 1) / nq;
        int64_t o = cap * q / nq;
        const __m512 tv = _mm512_set1_ps(t), relv = _mm512_set1_ps(0x1p-20f);
        for (int64_t rb = rb0; rb < rb1 && !overflow; rb++) {
            const int64_t r0 = rb * AMX_ROWS, nr = r0 + AMX_ROWS < B ? AMX_ROWS : B - r0;
            int64_t ns = 0;  /* entries staged for this block */
            for (int64_t r = 0; r < nr; r++) { cnt[r] = 0; if (!P) cl[r0 + r] = 0; }
            for (int64_t j0 = 0; j0 < n; j0 += 32) {
                const int64_t w = j0 + 32 <= n ? 32 : 16;
                for (int64_t s0 = 0; s0 < nr; s0 += 32) {
                    amx_block(xh, Wv, d, n, r0 + s0, j0, w, cbuf);
                    for (int64_t r = s0; r < s0 + 32; r++) {
                        const int64_t i = r0 + r;
                        if (P) {
                            memcpy(P + i * n + j0, cbuf + (r - s0) * 32, (size_t)w * sizeof(float));
                            continue;
                        }
                        const __m512 av = _mm512_set1_ps(a[i]), cv = _mm512_set1_ps(c[i]);
                        int64_t low = 0, got = 0;
                        for (int64_t h = 0; h < w; h += 16) {
                            /* appended in arrival order, tagged with the row (sorted by row after the block):
                             * sequential writes instead of one scattered stream per row */
                            const int m = screen_vec16(_mm512_loadu_ps(cbuf + (r - s0) * 32 + h), b, f, av, cv, relv,
                                                       tv, j0 + h, r << 32, sc + ns, sl + ns, sh + ns, &low);
                            ns += m;
                            got += m;
                        }
                        cl[i] += low;
                        cnt[r] += got;
                    }
                }
            }
            if (P) continue;
            if (ns > top - o) { overflow = 1; break; }
            int64_t pos[AMX_ROWS];  /* a stable counting sort by row: each row's entries stay in column order */
            for (int64_t r = 0, at = o; r < nr; r++) { pos[r] = at; at += cnt[r]; cu[r0 + r] = cnt[r]; }
            for (int64_t e = 0; e < ns; e++) {
                const int64_t r = sc[e] >> 32, at = pos[r]++;
                cols[at] = sc[e] & 0xffffffff;
                lo[at] = sl[e];
                hi[at] = sh[e];
            }
            o += ns;
        }
        _tile_release();
        ends[q] = o;
    }
    if (overflow) return -1;
    if (P) return 0;
    return join_regions(cols, lo, hi, ends, cap, used);
}
#else
int amx_request(void) { return 0; }
int64_t amx_screen(void) { return -2; }
#endif
