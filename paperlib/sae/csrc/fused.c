/* Fused CPU kernels of the sparse SAE training step (see paperlib/sae/kernels.py).
 *
 * Every function exists for float (suffix _f32) and double (_f64). Parallel loops use a static
 * schedule and every output element is written by one iteration, summed in a fixed order, so results do
 * not depend on the number of threads. Vectorised sums (omp simd reductions) reassociate; nothing else
 * deviates from IEEE arithmetic (no -ffast-math: NaN and inf propagate).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TILE 16
#define CHUNK_BYTES 256
#define LINE_FLOATS(T) (64 / (int64_t)sizeof(T))
/* Prefetch the rows idx[0..1] of the [*, d] matrix M (the next entries' rows, gathered from L3). */
#define PREFETCH_ROWS(M, idx, d)                                                                      \
    do {                                                                                              \
        const char *p0_ = (const char *)((M) + (idx)[0] * (d));                                       \
        const char *p1_ = (const char *)((M) + (idx)[1] * (d));                                       \
        for (int64_t o_ = 0; o_ < (d) * (int64_t)sizeof(*(M)); o_ += 64) {                            \
            __builtin_prefetch(p0_ + o_); __builtin_prefetch(p1_ + o_);                               \
        }                                                                                             \
    } while (0)

#define DEFINE_KERNELS(T, S)                                                                          \
                                                                                                      \
void normalize_center_##S(const T *restrict x, const T *restrict b, T *restrict xn, T *restrict xc,   \
                          T *restrict means, T *restrict scales, int64_t B, int64_t d, double eps,    \
                          int nt) {                                                                   \
    const double denom = d > 1 ? (double)(d - 1) : 1.0;                                               \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < B; i++) {                                                                 \
        const T *restrict xi = x + i * d;                                                             \
        double s = 0.0, q = 0.0;                                                                      \
        _Pragma("omp simd reduction(+:s)")                                                            \
        for (int64_t t = 0; t < d; t++) s += xi[t];                                                   \
        const double mean = s / (double)d;                                                            \
        _Pragma("omp simd reduction(+:q)")                                                            \
        for (int64_t t = 0; t < d; t++) { double c = xi[t] - mean; q += c * c; }                      \
        const double sc = sqrt(q / denom) + eps, inv = 1.0 / sc;                                      \
        means[i] = (T)mean;                                                                           \
        scales[i] = (T)sc;                                                                            \
        T *restrict yn = xn + i * d, *restrict yc = xc + i * d;                                       \
        _Pragma("omp simd")                                                                           \
        for (int64_t t = 0; t < d; t++) {                                                             \
            T v = (T)((xi[t] - mean) * inv);                                                          \
            yn[t] = v;                                                                                \
            yc[t] = v - b[t];                                                                         \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
void count_at_least_##S(const T *restrict pre, int64_t B, int64_t n, T t, int64_t *restrict counts,   \
                        int nt) {                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < B; i++) {                                                                 \
        const T *restrict row = pre + i * n;                                                          \
        int64_t c = 0;                                                                                \
        _Pragma("omp simd reduction(+:c)")                                                            \
        for (int64_t j = 0; j < n; j++) c += row[j] >= t;                                             \
        counts[i] = c;                                                                                \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
void gather_at_least_##S(const T *restrict pre, int64_t B, int64_t n, T t,                            \
                         const int64_t *restrict offsets, int64_t *restrict cols, T *restrict vals,   \
                         int nt) {                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < B; i++) {                                                                 \
        const T *restrict row = pre + i * n;                                                          \
        int64_t o = offsets[i];                                                                       \
        for (int64_t j = 0; j < n; j++) {                                                             \
            if (row[j] >= t) { cols[o] = j; vals[o] = row[j]; o++; }                                  \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* Keep every candidate above v and the first `need` equal to v (row-major order); returns the count. */ \
int64_t keep_top_##S(const int64_t *restrict offsets, const int64_t *restrict cols,                   \
                     const T *restrict vals, int64_t B, T v, int64_t need, int64_t *restrict crow,    \
                     int64_t *restrict rows_o, int64_t *restrict cols_o, T *restrict vals_o) {        \
    int64_t o = 0;                                                                                    \
    crow[0] = 0;                                                                                      \
    for (int64_t i = 0; i < B; i++) {                                                                 \
        for (int64_t e = offsets[i]; e < offsets[i + 1]; e++) {                                       \
            T x = vals[e];                                                                            \
            int keep = x > v;                                                                         \
            if (!keep && x == v && need > 0) { keep = 1; need--; }                                    \
            if (keep) { rows_o[o] = i; cols_o[o] = cols[e]; vals_o[o] = x; o++; }                     \
        }                                                                                             \
        crow[i + 1] = o;                                                                              \
    }                                                                                                 \
    return o;                                                                                         \
}                                                                                                     \
                                                                                                      \
void decode_residual_##S(const int64_t *restrict crow, const int64_t *restrict cols,                  \
                         const T *restrict vals, const T *restrict W, const T *restrict b,            \
                         const T *restrict xn, int64_t B, int64_t d, T scale, T *restrict recon,      \
                         T *restrict g, T *restrict gv, double *restrict sq, int with_grad, int nt) { \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < B; i++) {                                                                 \
        T *restrict r = recon + i * d;                                                                \
        const T *restrict xi = xn + i * d;                                                            \
        const int64_t e0 = crow[i], e1 = crow[i + 1];                                                 \
        memcpy(r, b, (size_t)d * sizeof(T));                                                          \
        int64_t e = e0;                                                                               \
        for (; e + 4 <= e1; e += 4) {                                                                 \
            const T v0 = vals[e], v1 = vals[e + 1], v2 = vals[e + 2], v3 = vals[e + 3];               \
            const T *restrict w0 = W + cols[e] * d, *restrict w1 = W + cols[e + 1] * d;               \
            const T *restrict w2 = W + cols[e + 2] * d, *restrict w3 = W + cols[e + 3] * d;           \
            if (e + 8 <= e1) PREFETCH_ROWS(W, cols + e + 4, d);                                       \
            _Pragma("omp simd")                                                                       \
            for (int64_t t = 0; t < d; t++) r[t] += (v0 * w0[t] + v1 * w1[t]) + (v2 * w2[t] + v3 * w3[t]); \
        }                                                                                             \
        for (; e < e1; e++) {                                                                         \
            const T v = vals[e];                                                                      \
            const T *restrict w = W + cols[e] * d;                                                    \
            _Pragma("omp simd")                                                                       \
            for (int64_t t = 0; t < d; t++) r[t] += v * w[t];                                         \
        }                                                                                             \
        double s = 0.0;                                                                               \
        _Pragma("omp simd reduction(+:s)")                                                            \
        for (int64_t t = 0; t < d; t++) { T diff = r[t] - xi[t]; s += (double)diff * diff; }          \
        sq[i] = s;                                                                                    \
        if (!with_grad) continue;                                                                     \
        T *restrict gi = g + i * d;                                                                   \
        _Pragma("omp simd")                                                                           \
        for (int64_t t = 0; t < d; t++) gi[t] = scale * (r[t] - xi[t]);                               \
        e = e0;                                                                                       \
        for (; e + 4 <= e1; e += 4) {                                                                 \
            const T *restrict w0 = W + cols[e] * d, *restrict w1 = W + cols[e + 1] * d;               \
            const T *restrict w2 = W + cols[e + 2] * d, *restrict w3 = W + cols[e + 3] * d;           \
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                         \
            _Pragma("omp simd reduction(+:a0, a1, a2, a3)")                                           \
            for (int64_t t = 0; t < d; t++) {                                                         \
                const T gt = gi[t];                                                                   \
                a0 += gt * w0[t]; a1 += gt * w1[t]; a2 += gt * w2[t]; a3 += gt * w3[t];               \
            }                                                                                         \
            gv[e] = a0; gv[e + 1] = a1; gv[e + 2] = a2; gv[e + 3] = a3;                               \
        }                                                                                             \
        for (; e < e1; e++) {                                                                         \
            const T *restrict w = W + cols[e] * d;                                                    \
            T acc = 0;                                                                                \
            _Pragma("omp simd reduction(+:acc)")                                                      \
            for (int64_t t = 0; t < d; t++) acc += gi[t] * w[t];                                      \
            gv[e] = acc;                                                                              \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* Column chunks of CHUNK_BYTES: the rows of g and xc restricted to one chunk (B · 2 · 256 bytes) stay in the  \
 * core's L2 while the latents gather them; each (chunk, latent) output segment is written by one iteration. */ \
void latent_grads_##S(const int64_t *restrict crow_t, const int64_t *restrict perm,                   \
                      const int64_t *restrict rows_t, const T *restrict vals, const T *restrict gv,   \
                      const T *restrict g, const T *restrict xc, int64_t n, int64_t d,                \
                      T *restrict gW_dec, T *restrict gW_enc, double *restrict colsum, int nt) {      \
    const int64_t cw = CHUNK_BYTES / (int64_t)sizeof(T);                                              \
    const int64_t n_chunks = (d + cw - 1) / cw, n_tiles = (n + TILE - 1) / TILE;                      \
    for (int64_t j = 0; j < n; j++) {                                                                 \
        double cs = 0.0;                                                                              \
        for (int64_t q = crow_t[j]; q < crow_t[j + 1]; q++) {                                         \
            const int64_t e = perm[q];                                                                \
            cs += vals[e] > 0 ? gv[e] : (T)0;                                                         \
        }                                                                                             \
        colsum[j] = cs;                                                                               \
    }                                                                                                 \
    _Pragma("omp parallel num_threads(nt)")                                                           \
    {                                                                                                 \
        T tile[TILE * CHUNK_BYTES / sizeof(T)];                                                       \
        _Pragma("omp for schedule(static) collapse(2)")                                               \
        for (int64_t c = 0; c < n_chunks; c++) {                                                      \
            for (int64_t bt = 0; bt < n_tiles; bt++) {                                                \
                const int64_t t0 = c * cw, w = t0 + cw < d ? cw : d - t0;                             \
                const int64_t j0 = bt * TILE, j1 = j0 + TILE < n ? j0 + TILE : n;                     \
                for (int64_t j = j0; j < j1; j++) {                                                   \
                    T *restrict a = gW_dec + j * d + t0;                                              \
                    T *restrict te = tile + (j - j0) * cw;                                            \
                    for (int64_t t = 0; t < w; t++) { a[t] = 0; te[t] = 0; }                          \
                    for (int64_t q = crow_t[j]; q < crow_t[j + 1]; q++) {                             \
                        const int64_t e = perm[q];                                                    \
                        const T v = vals[e];                                                          \
                        const T gs = v > 0 ? gv[e] : (T)0;                                            \
                        const T *restrict gi = g + rows_t[q] * d + t0, *restrict xi = xc + rows_t[q] * d + t0; \
                        _Pragma("omp simd")                                                           \
                        for (int64_t t = 0; t < w; t++) { a[t] += v * gi[t]; te[t] += gs * xi[t]; }   \
                    }                                                                                 \
                }                                                                                     \
                for (int64_t t = 0; t < w; t++)                                                       \
                    for (int64_t j = j0; j < j1; j++) gW_enc[(t0 + t) * n + j] = tile[(j - j0) * cw + t]; \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* Decomposability penalty per row: e[i] = ‖W[i] − H[i]‖², p[i] = exp(−e[i] / σ²). */                  \
void row_penalty_##S(const T *restrict W, const T *restrict H, int64_t n, int64_t d, double inv_sigma2, \
                     T *restrict p, T *restrict e_out, int nt) {                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                                 \
        const T *restrict w = W + i * d, *restrict h = H + i * d;                                     \
        T e = 0;                                                                                      \
        _Pragma("omp simd reduction(+:e)")                                                            \
        for (int64_t t = 0; t < d; t++) { T c = w[t] - h[t]; e += c * c; }                            \
        e_out[i] = e;                                                                                 \
        p[i] = (T)exp(-(double)e * inv_sigma2);                                                       \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* Its gradient: G[i] = coef[i] · (W[i] − H[i]). */                                                   \
void row_penalty_grad_##S(const T *restrict W, const T *restrict H, const T *restrict coef, int64_t n, \
                          int64_t d, T *restrict G, int nt) {                                         \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                                 \
        const T *restrict w = W + i * d, *restrict h = H + i * d;                                     \
        T *restrict gi = G + i * d;                                                                   \
        const T c = coef[i];                                                                          \
        _Pragma("omp simd")                                                                           \
        for (int64_t t = 0; t < d; t++) gi[t] = c * (w[t] - h[t]);                                    \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
void project_rows_##S(const T *restrict W, T *restrict G, int64_t n, int64_t d, int nt) {             \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t j = 0; j < n; j++) {                                                                 \
        const T *restrict w = W + j * d;                                                              \
        T *restrict gj = G + j * d;                                                                   \
        T ss = 0, dot = 0;                                                                            \
        _Pragma("omp simd reduction(+:ss)")                                                           \
        for (int64_t t = 0; t < d; t++) ss += w[t] * w[t];                                            \
        T nrm = (T)sqrt((double)ss);                                                                  \
        const T inv = (T)1 / (nrm > (T)1e-12 ? nrm : (T)1e-12);                                       \
        _Pragma("omp simd reduction(+:dot)")                                                          \
        for (int64_t t = 0; t < d; t++) dot += gj[t] * (w[t] * inv);                                  \
        _Pragma("omp simd")                                                                           \
        for (int64_t t = 0; t < d; t++) gj[t] -= dot * (w[t] * inv);                                  \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
void renorm_rows_##S(T *restrict W, int64_t n, int64_t d, int nt) {                                   \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                      \
    for (int64_t j = 0; j < n; j++) {                                                                 \
        T *restrict w = W + j * d;                                                                    \
        T ss = 0;                                                                                     \
        _Pragma("omp simd reduction(+:ss)")                                                           \
        for (int64_t t = 0; t < d; t++) ss += w[t] * w[t];                                            \
        T nrm = (T)sqrt((double)ss);                                                                  \
        nrm = nrm > (T)1e-12 ? nrm : (T)1e-12;                                                        \
        _Pragma("omp simd")                                                                           \
        for (int64_t t = 0; t < d; t++) w[t] /= nrm;                                                  \
    }                                                                                                 \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

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
