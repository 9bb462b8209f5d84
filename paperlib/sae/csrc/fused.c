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
        int q = 0, nq = 1;
#ifdef _OPENMP
        q = omp_get_thread_num();
        nq = omp_get_num_threads();
#endif
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
