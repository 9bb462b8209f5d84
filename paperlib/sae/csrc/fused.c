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

/* Stable counting sort of the entries by latent: crow_t [n + 1], perm, rows_t = rows[perm]. */
void by_latent(const int64_t *restrict rows, const int64_t *restrict cols, int64_t m, int64_t n,
               int64_t *restrict crow_t, int64_t *restrict pos, int64_t *restrict perm,
               int64_t *restrict rows_t) {
    memset(crow_t, 0, (size_t)(n + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < m; e++) crow_t[cols[e] + 1]++;
    for (int64_t j = 0; j < n; j++) crow_t[j + 1] += crow_t[j];
    memcpy(pos, crow_t, (size_t)n * sizeof(int64_t));
    for (int64_t e = 0; e < m; e++) {
        int64_t q = pos[cols[e]]++;
        perm[q] = e;
        rows_t[q] = rows[e];
    }
}
