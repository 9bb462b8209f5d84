/* Kernels for one element type T (see fused.c): names S(x), column chunk CW elements (256 bytes). */

/* A 64-byte vector of T (GCC / clang vector extension) and unaligned loads and stores of it. */
typedef T S(vec) __attribute__((vector_size(64)));
#define VT S(vec)
#define VL (64 / (int)sizeof(T))
#define NV (CW / VL)
static inline VT S(vload)(const T *p) { VT v; memcpy(&v, p, sizeof v); return v; }
static inline void S(vstore)(T *p, VT v) { memcpy(p, &v, sizeof v); }
static inline VT S(vzero)(void) { VT v = {0}; return v; }
/* Sum of the lanes as a tree of halves (HSUM_STEPS, defined per type in fused.c). */
static inline T S(hsum)(VT v) { HSUM_STEPS(v); return v[0]; }
#define vload S(vload)
#define vstore S(vstore)
#define vzero S(vzero)
#define hsum S(hsum)

void S(normalize_center)(const T *restrict x, const T *restrict b, T *restrict xn, T *restrict xc,
                         T *restrict means, T *restrict scales, int64_t B, int64_t d, double eps, int nt) {
    const double denom = d > 1 ? (double)(d - 1) : 1.0;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) {
        const T *restrict xi = x + i * d;
        double s = 0.0, q = 0.0;
#pragma omp simd reduction(+:s)
        for (int64_t t = 0; t < d; t++) s += xi[t];
        const double mean = s / (double)d;
#pragma omp simd reduction(+:q)
        for (int64_t t = 0; t < d; t++) { double c = xi[t] - mean; q += c * c; }
        const double sc = sqrt(q / denom) + eps, inv = 1.0 / sc;
        means[i] = (T)mean;
        scales[i] = (T)sc;
        T *restrict yc = xc + i * d;
        if (!xn) { /* x̃ stored and read back before b is subtracted, as below: no fused multiply-add */
#pragma omp simd
            for (int64_t t = 0; t < d; t++) yc[t] = (T)((xi[t] - mean) * inv);
            __asm__ volatile("" ::: "memory");
#pragma omp simd
            for (int64_t t = 0; t < d; t++) yc[t] = yc[t] - b[t];
            continue;
        }
        T *restrict yn = xn + i * d;
#pragma omp simd
        for (int64_t t = 0; t < d; t++) {
            T v = (T)((xi[t] - mean) * inv);
            yn[t] = v;
            yc[t] = v - b[t];
        }
    }
}

void S(count_at_least)(const T *restrict pre, int64_t B, int64_t n, T t, int64_t *restrict counts, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) {
        const T *restrict row = pre + i * n;
        int64_t c = 0;
#pragma omp simd reduction(+:c)
        for (int64_t j = 0; j < n; j++) c += row[j] >= t;
        counts[i] = c;
    }
}

/* The entries >= t of one row, in column order, into cols / vals; returns their number. Blocks of 16 without one
 * are skipped by a vector test. */
static inline int64_t S(gather_row)(const T *restrict row, int64_t n, T t, int64_t *restrict cols, T *restrict vals) {
#ifdef GATHER_ROW
    if (n < ((int64_t)1 << 31)) return GATHER_ROW(row, n, t, cols, vals);
#endif
    int64_t o = 0, j = 0;
    for (; j + 16 <= n; j += 16) {
        int64_t hits = 0;
#pragma omp simd reduction(+:hits)
        for (int64_t u = 0; u < 16; u++) hits += row[j + u] >= t;
        if (!hits) continue;
        for (int64_t u = j; u < j + 16; u++)
            if (row[u] >= t) { cols[o] = u; vals[o] = row[u]; o++; }
    }
    for (; j < n; j++)
        if (row[j] >= t) { cols[o] = j; vals[o] = row[j]; o++; }
    return o;
}

/* The entries >= t of each row, in column order, into cols / vals[offsets[i]:offsets[i + 1]]. */
void S(gather_at_least)(const T *restrict pre, int64_t B, int64_t n, T t, const int64_t *restrict offsets,
                        int64_t *restrict cols, T *restrict vals, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < B; i++) S(gather_row)(pre + i * n, n, t, cols + offsets[i], vals + offsets[i]);
}

/* count_at_least and gather_at_least in one pass over pre (which is read once instead of twice): thread q of nq
 * gathers its block of rows [B q / nq, B (q + 1) / nq) into its own region [cap q / nq, cap (q + 1) / nq) of
 * cols / vals, a row that might not fit through its row buffer (rowbuf_c / rowbuf_v [nt n]); then the regions
 * are moved together in row order. Writes counts[i] and returns the number of entries (cols / vals are then
 * those of the two-pass path), or -1 when a region was too small (cols / vals unusable; use the two passes). */
int64_t S(gather_at_least_once)(const T *restrict pre, int64_t B, int64_t n, T t, int64_t cap,
                                int64_t *restrict counts, int64_t *restrict cols, T *restrict vals,
                                int64_t *restrict rowbuf_c, T *restrict rowbuf_v, int64_t *restrict ends, int nt) {
    int overflow = 0, used = 1;
#pragma omp parallel num_threads(nt) reduction(|:overflow)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        if (q == 0) used = nq;
        const int64_t i0 = B * q / nq, i1 = B * (q + 1) / nq, hi = cap * (q + 1) / nq;
        int64_t o = cap * q / nq;
        for (int64_t i = i0; i < i1; i++) {
            const T *restrict row = pre + i * n;
            if (hi - o >= n) {
                counts[i] = S(gather_row)(row, n, t, cols + o, vals + o);
            } else {
                int64_t *restrict bc = rowbuf_c + (int64_t)q * n;
                T *restrict bv = rowbuf_v + (int64_t)q * n;
                const int64_t c = S(gather_row)(row, n, t, bc, bv);
                if (c > hi - o) { overflow = 1; break; }
                memcpy(cols + o, bc, (size_t)c * sizeof(int64_t));
                memcpy(vals + o, bv, (size_t)c * sizeof(T));
                counts[i] = c;
            }
            o += counts[i];
        }
        ends[q] = o;
    }
    if (overflow) return -1;
    int64_t m = ends[0];
    for (int q = 1; q < used; q++) {
        const int64_t lo = cap * q / used, c = ends[q] - lo;
        memmove(cols + m, cols + lo, (size_t)c * sizeof(int64_t));
        memmove(vals + m, vals + lo, (size_t)c * sizeof(T));
        m += c;
    }
    return m;
}

/* Keep every candidate above v and the first `need` equal to v (row-major order); returns the count. */
int64_t S(keep_top)(const int64_t *restrict offsets, const int64_t *restrict cols, const T *restrict vals,
                    int64_t B, T v, int64_t need, int64_t *restrict crow, int64_t *restrict rows_o,
                    int64_t *restrict cols_o, T *restrict vals_o) {
    int64_t o = 0;
    crow[0] = 0;
    for (int64_t i = 0; i < B; i++) {
        for (int64_t e = offsets[i]; e < offsets[i + 1]; e++) {
            T x = vals[e];
            int keep = x > v;
            if (!keep && x == v && need > 0) { keep = 1; need--; }
            if (keep) { rows_o[o] = i; cols_o[o] = cols[e]; vals_o[o] = x; o++; }
        }
        crow[i + 1] = o;
    }
    return o;
}

/* One token's full column chunk [t0, t0 + CW) of the decode, b + sum_e vals[e] W[cols[e]] over its entries
 * [e0, e1), into registers a: entries in pairs on two accumulators (the first starting from b), added at the end. */
static inline void S(decode_full_chunk)(const int64_t *restrict cols, const T *restrict vals, const T *restrict W,
                                        const T *restrict b, int64_t e0, int64_t e1, int64_t d, int64_t t0,
                                        VT a0[NV]) {
    VT a1[NV];
    for (int u = 0; u < NV; u++) { a0[u] = vload(b + t0 + u * VL); a1[u] = vzero(); }
    int64_t e = e0;
    for (; e + 1 < e1; e += 2) {
        const T v0 = vals[e], v1 = vals[e + 1];
        const T *restrict w0 = W + cols[e] * d + t0, *restrict w1 = W + cols[e + 1] * d + t0;
        if (e + PREFETCH_AHEAD + 1 < e1) {
            PREFETCH_CHUNK(W + cols[e + PREFETCH_AHEAD] * d + t0);
            PREFETCH_CHUNK(W + cols[e + PREFETCH_AHEAD + 1] * d + t0);
        }
        for (int u = 0; u < NV; u++) { a0[u] += v0 * vload(w0 + u * VL); a1[u] += v1 * vload(w1 + u * VL); }
    }
    if (e < e1) {
        const T v0 = vals[e];
        const T *restrict w0 = W + cols[e] * d + t0;
        for (int u = 0; u < NV; u++) a0[u] += v0 * vload(w0 + u * VL);
    }
    for (int u = 0; u < NV; u++) a0[u] += a1[u];
}

/* The same for a last partial chunk of w < CW columns, into r, entries in order. */
static inline void S(decode_part_chunk)(const int64_t *restrict cols, const T *restrict vals, const T *restrict W,
                                        const T *restrict b, int64_t e0, int64_t e1, int64_t d, int64_t t0,
                                        int64_t w, T *restrict r) {
    for (int64_t t = 0; t < w; t++) r[t] = b[t0 + t];
    for (int64_t e = e0; e < e1; e++) {
        const T v = vals[e];
        const T *restrict wr = W + cols[e] * d + t0;
        for (int64_t t = 0; t < w; t++) r[t] += v * wr[t];
    }
}

/* One token's columns [t0, t0 + w) of the decode (in registers when w == CW), its squared residual and, with
 * with_grad, g and the partial dot products gvp[e] = g[i, chunk] · W[cols[e], chunk]. */
static inline void S(decode_chunk)(const int64_t *restrict crow, const int64_t *restrict cols,
                                   const T *restrict vals, const T *restrict W, const T *restrict b,
                                   const T *restrict xn, int64_t i, int64_t d, int64_t t0, int64_t w, T scale,
                                   T *restrict recon, T *restrict g, T *restrict gvp, double *restrict sqp,
                                   int with_grad) {
    const int64_t e0 = crow[i], e1 = crow[i + 1];
    const T *restrict xi = xn + i * d + t0;
    T *restrict r = recon + i * d + t0;
    T *restrict gi = g + i * d + t0;
    double s = 0.0;
    if (w == CW) {
        VT a0[NV];
        S(decode_full_chunk)(cols, vals, W, b, e0, e1, d, t0, a0);
        VT sv = vzero();
        for (int u = 0; u < NV; u++) {
            vstore(r + u * VL, a0[u]);
            VT df = a0[u] - vload(xi + u * VL);
            sv += df * df;
            a0[u] = scale * df;
        }
        *sqp = (double)hsum(sv);
        if (!with_grad) return;
        for (int u = 0; u < NV; u++) vstore(gi + u * VL, a0[u]);
        for (int64_t e2 = e0; e2 < e1; e2++) {
            const T *restrict wr = W + cols[e2] * d + t0;
            VT dv = a0[0] * vload(wr);
            for (int u = 1; u < NV; u++) dv += a0[u] * vload(wr + u * VL);
            gvp[e2] = hsum(dv);
        }
        return;
    }
    S(decode_part_chunk)(cols, vals, W, b, e0, e1, d, t0, w, r);
    for (int64_t t = 0; t < w; t++) { T df = r[t] - xi[t]; s += (double)df * df; }
    *sqp = s;
    if (!with_grad) return;
    for (int64_t t = 0; t < w; t++) gi[t] = scale * (r[t] - xi[t]);
    for (int64_t e = e0; e < e1; e++) {
        const T *restrict wr = W + cols[e] * d + t0;
        T dot = 0;
        for (int64_t t = 0; t < w; t++) dot += gi[t] * wr[t];
        gvp[e] = dot;
    }
}

/* Per token: recon = b + sum_e vals[e] W[cols[e]], sq = |recon - xn|^2 and, with with_grad,
 * g = scale (recon - xn) and gv[e] = g . W[cols[e]]. Work items are (column chunk, token block), chunk-major,
 * so a thread's decoder columns W[:, chunk] (n * 256 bytes) stay in its L2 while tokens gather their rows.
 * gvp [n_chunks, m] and sqp [n_chunks, B] hold per-chunk partial sums, added in chunk order. */
void S(decode_residual)(const int64_t *restrict crow, const int64_t *restrict cols, const T *restrict vals,
                        const T *restrict W, const T *restrict b, const T *restrict xn, int64_t B, int64_t d,
                        T scale, T *restrict recon, T *restrict g, T *restrict gv, T *restrict gvp,
                        double *restrict sqp, double *restrict sq, int with_grad, int nt) {
    const int64_t n_chunks = (d + CW - 1) / CW, m = crow[B];
    const int64_t n_blocks = (B + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t c = 0; c < n_chunks; c++)
            for (int64_t ib = 0; ib < n_blocks; ib++) {
                const int64_t t0 = c * CW, w = t0 + CW < d ? CW : d - t0;
                const int64_t i1 = (ib + 1) * TOKEN_BLOCK < B ? (ib + 1) * TOKEN_BLOCK : B;
                for (int64_t i = ib * TOKEN_BLOCK; i < i1; i++)
                    S(decode_chunk)(crow, cols, vals, W, b, xn, i, d, t0, w, scale, recon, g, gvp + c * m,
                                    sqp + c * B + i, with_grad);
            }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B; i++) {
            double s = 0.0;
            for (int64_t c = 0; c < n_chunks; c++) s += sqp[c * B + i];
            sq[i] = s;
            if (!with_grad) continue;
            for (int64_t e = crow[i]; e < crow[i + 1]; e++) {
                T acc = gvp[e];
                for (int64_t c = 1; c < n_chunks; c++) acc += gvp[c * m + e];
                gv[e] = acc;
            }
        }
    }
}

/* The decode mapped back to each row's scale: out[i] = (b + sum_e vals[e] W[cols[e]]) * rscale[i] + rmean[i], the
 * decode in decode_residual's order, then a rounded product and a rounded sum (never one fused multiply-add, so the
 * result equals out * rscale + rmean computed as two array operations). Work items as in decode_residual. */
void S(decode_rows)(const int64_t *restrict crow, const int64_t *restrict cols, const T *restrict vals,
                    const T *restrict W, const T *restrict b, const T *restrict rmean, const T *restrict rscale,
                    int64_t B, int64_t d, T *restrict out, int nt) {
    const int64_t n_chunks = (d + CW - 1) / CW, n_blocks = (B + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
#pragma omp parallel for schedule(static) collapse(2) num_threads(nt)
    for (int64_t c = 0; c < n_chunks; c++)
        for (int64_t ib = 0; ib < n_blocks; ib++) {
            const int64_t t0 = c * CW, w = t0 + CW < d ? CW : d - t0;
            const int64_t i1 = (ib + 1) * TOKEN_BLOCK < B ? (ib + 1) * TOKEN_BLOCK : B;
            for (int64_t i = ib * TOKEN_BLOCK; i < i1; i++) {
                T *restrict r = out + i * d + t0;
                const T sc = rscale[i], mu = rmean[i];
                if (w == CW) {
                    VT a0[NV];
                    S(decode_full_chunk)(cols, vals, W, b, crow[i], crow[i + 1], d, t0, a0);
                    for (int u = 0; u < NV; u++) vstore(r + u * VL, a0[u] * sc);
                } else {
                    S(decode_part_chunk)(cols, vals, W, b, crow[i], crow[i + 1], d, t0, w, r);
                    for (int64_t t = 0; t < w; t++) r[t] = r[t] * sc;
                }
                __asm__ volatile("" ::: "memory"); /* the products are stored and read back: no contraction */
                for (int64_t t = 0; t < w; t++) r[t] = r[t] + mu;
            }
        }
}

/* Per latent j (entries e, token i): gW_dec[j] = sum vals[e] g[i]; with gs[e] = gv[e] 1[vals[e] > 0],
 * gW_enc[:, j] = sum gs[e] xc[i] (W_enc's [d, n] layout, through a TILE-latent tile) and colsum[j] = sum gs[e].
 * Work items are (column chunk, latent tile), chunk-major: a thread's g[:, chunk] and xc[:, chunk]
 * (B * 2 * 256 bytes) stay in its L2; a latent's chunk accumulates in registers. */
void S(latent_grads)(const int64_t *restrict crow_t, const int64_t *restrict perm, const int64_t *restrict rows_t,
                     const T *restrict vals, const T *restrict gv, const T *restrict g, const T *restrict xc,
                     int64_t n, int64_t d, T *restrict gW_dec, T *restrict gW_enc, double *restrict colsum,
                     T *restrict entries, int nt) {
    const int64_t n_chunks = (d + CW - 1) / CW, n_tiles = (n + TILE - 1) / TILE;
    /* entries [2 m]: the values and masked code gradients in latent-major order, read in order by every chunk */
    T *restrict vt = entries, *restrict st = entries + crow_t[n];
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            double cs = 0.0;
            for (int64_t q = crow_t[j]; q < crow_t[j + 1]; q++) {
                const int64_t e = perm[q];
                vt[q] = vals[e];
                st[q] = vals[e] > 0 ? gv[e] : (T)0;
                cs += st[q];
            }
            colsum[j] = cs;
        }
        T tile[TILE * CW];
#pragma omp for schedule(static) collapse(2)
        for (int64_t c = 0; c < n_chunks; c++)
            for (int64_t bt = 0; bt < n_tiles; bt++) {
                const int64_t t0 = c * CW, w = t0 + CW < d ? CW : d - t0;
                const int64_t j0 = bt * TILE, j1 = j0 + TILE < n ? j0 + TILE : n;
                for (int64_t j = j0; j < j1 && w == CW; j++) {
                    VT aa[NV], tt[NV];
                    for (int u = 0; u < NV; u++) { aa[u] = vzero(); tt[u] = vzero(); }
                    const int64_t q1 = crow_t[j + 1];
                    for (int64_t q = crow_t[j]; q < q1; q++) {
                        const T v = vt[q], gs = st[q];
                        const T *restrict gi = g + rows_t[q] * d + t0, *restrict xi = xc + rows_t[q] * d + t0;
                        if (q + PREFETCH_AHEAD < q1) {
                            PREFETCH_CHUNK(g + rows_t[q + PREFETCH_AHEAD] * d + t0);
                            PREFETCH_CHUNK(xc + rows_t[q + PREFETCH_AHEAD] * d + t0);
                        }
                        for (int u = 0; u < NV; u++) {
                            aa[u] += v * vload(gi + u * VL);
                            tt[u] += gs * vload(xi + u * VL);
                        }
                    }
                    T *restrict a = gW_dec + j * d + t0;
                    for (int u = 0; u < NV; u++) { vstore(a + u * VL, aa[u]); vstore(tile + (j - j0) * CW + u * VL, tt[u]); }
                }
                for (int64_t j = j0; j < j1 && w < CW; j++) {
                    T aa[CW], tt[CW];
                    for (int64_t t = 0; t < CW; t++) { aa[t] = 0; tt[t] = 0; }
                    for (int64_t q = crow_t[j]; q < crow_t[j + 1]; q++) {
                        const T v = vt[q], gs = st[q];
                        const T *restrict gi = g + rows_t[q] * d + t0, *restrict xi = xc + rows_t[q] * d + t0;
                        if (q + PREFETCH_AHEAD < crow_t[j + 1]) {
                            PREFETCH_CHUNK(g + rows_t[q + PREFETCH_AHEAD] * d + t0);
                            PREFETCH_CHUNK(xc + rows_t[q + PREFETCH_AHEAD] * d + t0);
                        }
                        for (int64_t t = 0; t < w; t++) { aa[t] += v * gi[t]; tt[t] += gs * xi[t]; }
                    }
                    T *restrict a = gW_dec + j * d + t0;
                    for (int64_t t = 0; t < w; t++) { a[t] = aa[t]; tile[(j - j0) * CW + t] = tt[t]; }
                }
                for (int64_t t = 0; t < w; t++)
                    for (int64_t j = j0; j < j1; j++) gW_enc[(t0 + t) * n + j] = tile[(j - j0) * CW + t];
            }
    }
}

/* Decomposability penalty per row: e[i] = |W[i] - H[i]|^2, p[i] = exp(-e[i] / sigma^2). */
void S(row_penalty)(const T *restrict W, const T *restrict H, int64_t n, int64_t d, double inv_sigma2,
                    T *restrict p, T *restrict e_out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const T *restrict w = W + i * d, *restrict h = H + i * d;
        T e = 0;
#pragma omp simd reduction(+:e)
        for (int64_t t = 0; t < d; t++) { T c = w[t] - h[t]; e += c * c; }
        e_out[i] = e;
        p[i] = (T)exp(-(double)e * inv_sigma2);
    }
}

/* Its gradient: G[i] = coef[i] (W[i] - H[i]). */
void S(row_penalty_grad)(const T *restrict W, const T *restrict H, const T *restrict coef, int64_t n, int64_t d,
                         T *restrict G, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const T *restrict w = W + i * d, *restrict h = H + i * d;
        T *restrict gi = G + i * d;
        const T c = coef[i];
#pragma omp simd
        for (int64_t t = 0; t < d; t++) gi[t] = c * (w[t] - h[t]);
    }
}

/* Backward of the orthogonality penalty through each row's maximising pair. U = W / r (unit rows), partner[p]
 * the maximising row of p (-1: none) with cosine cos[p]; rows q with partner[q] = p are src[crow_r[p]:crow_r[p+1]].
 * du_p = scale (cos_p U[partner_p] + sum_q cos_q U[q]); dW[p] = (du_p - (du_p . U[p]) U[p]) / r_p, or du_p / r_p
 * where the norm was clamped (clamped[p] != 0). */
void S(ortho_backward)(const T *restrict U, const T *restrict r, const uint8_t *restrict clamped,
                       const int64_t *restrict partner, const T *restrict cos, const int64_t *restrict crow_r,
                       const int64_t *restrict src, int64_t n, int64_t d, T scale, T *restrict dW, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < n; p++) {
        T *restrict out = dW + p * d;
        const T *restrict up = U + p * d;
        for (int64_t t = 0; t < d; t++) out[t] = 0;
        if (partner[p] >= 0) {
            const T a = scale * cos[p];
            const T *restrict uj = U + partner[p] * d;
#pragma omp simd
            for (int64_t t = 0; t < d; t++) out[t] += a * uj[t];
        }
        for (int64_t e = crow_r[p]; e < crow_r[p + 1]; e++) {
            const int64_t q = src[e];
            const T a = scale * cos[q];
            const T *restrict uq = U + q * d;
#pragma omp simd
            for (int64_t t = 0; t < d; t++) out[t] += a * uq[t];
        }
        T radial = 0;
        if (!clamped[p]) {
#pragma omp simd reduction(+:radial)
            for (int64_t t = 0; t < d; t++) radial += out[t] * up[t];
        }
        const T inv = (T)1 / r[p];
#pragma omp simd
        for (int64_t t = 0; t < d; t++) out[t] = (out[t] - radial * up[t]) * inv;
    }
}

/* Decoder constraint: G[j] -= (G[j] . u_j) u_j with u_j = W[j] / max(|W[j]|, 1e-12). */
void S(project_rows)(const T *restrict W, T *restrict G, int64_t n, int64_t d, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t j = 0; j < n; j++) {
        const T *restrict w = W + j * d;
        T *restrict gj = G + j * d;
        T ss = 0, dot = 0;
#pragma omp simd reduction(+:ss)
        for (int64_t t = 0; t < d; t++) ss += w[t] * w[t];
        T nrm = (T)sqrt((double)ss);
        const T inv = (T)1 / (nrm > (T)1e-12 ? nrm : (T)1e-12);
#pragma omp simd reduction(+:dot)
        for (int64_t t = 0; t < d; t++) dot += gj[t] * (w[t] * inv);
#pragma omp simd
        for (int64_t t = 0; t < d; t++) gj[t] -= dot * (w[t] * inv);
    }
}

/* W[j] /= max(|W[j]|, 1e-12). */
void S(renorm_rows)(T *restrict W, int64_t n, int64_t d, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t j = 0; j < n; j++) {
        T *restrict w = W + j * d;
        T ss = 0;
#pragma omp simd reduction(+:ss)
        for (int64_t t = 0; t < d; t++) ss += w[t] * w[t];
        T nrm = (T)sqrt((double)ss);
        nrm = nrm > (T)1e-12 ? nrm : (T)1e-12;
#pragma omp simd
        for (int64_t t = 0; t < d; t++) w[t] /= nrm;
    }
}

#undef VT
#undef VL
#undef NV
#undef vload
#undef vstore
#undef vzero
#undef hsum

/* a[k] becomes the value of rank k (ascending) of a[lo..hi), with a[lo..k) <= a[k] <= a(k..hi): quickselect with a
 * median-of-three pivot and Hoare's partition (which stays linear on many equal values). */
static void S(select_rank)(T *restrict a, int64_t lo, int64_t hi, int64_t k) {
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        const T x = a[lo], y = a[mid], z = a[hi - 1];
        const T pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi - 1;
        while (i <= j) { /* a[lo..i) <= pivot <= a(j..hi) */
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) { const T t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (k <= j) hi = j + 1;
        else if (k >= i) lo = i;
        else return; /* j < k < i: a[k] equals the pivot */
    }
}

/* The k-th largest (1 <= k <= m) of v[0..m); permutes v. */
static T S(kth_largest)(T *restrict v, int64_t m, int64_t k) {
    S(select_rank)(v, 0, m, m - k);
    return v[m - k];
}

/* AuxK over the D dead latents (We, Wd [D, d]: their encoder columns and decoder rows), per token i:
 * pre_ij = xc_i . We_j; kept: the ka largest pre_ij (ties: the lowest latents; all of them when ka >= D);
 * act_ij = pre_ij where kept and pre_ij > 0, else 0; e_i = sum_j act_ij Wd_j - (xn_i - recon_i) (the detached
 * residual); sq[i] = |e_i|^2 (double); ge_i = scale e_i; gpre_ij = ge_i . Wd_j where act_ij > 0, else 0.
 * act, gpre [B, D]; ge [B, d]; work [2 nt D]. */
void S(auxk_rows)(const T *restrict xc, const T *restrict xn, const T *restrict recon, const T *restrict We,
                  const T *restrict Wd, int64_t B, int64_t d, int64_t D, int64_t ka, T scale, T *restrict ge,
                  T *restrict act, T *restrict gpre, double *restrict sq, T *restrict work, int nt) {
#pragma omp parallel num_threads(nt)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        (void)nq;
        T *restrict pre = work + (int64_t)q * 2 * D, *restrict tmp = pre + D;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B; i++) {
            const T *restrict x = xc + i * d;
            for (int64_t j = 0; j < D; j++) {
                const T *restrict w = We + j * d;
                T s = 0;
#pragma omp simd reduction(+:s)
                for (int64_t t = 0; t < d; t++) s += x[t] * w[t];
                pre[j] = s;
            }
            T *restrict a = act + i * D, *restrict gp = gpre + i * D;
            if (ka >= D) {
                for (int64_t j = 0; j < D; j++) a[j] = pre[j] > 0 ? pre[j] : 0;
            } else {
                memcpy(tmp, pre, (size_t)D * sizeof(T));
                const T v = S(kth_largest)(tmp, D, ka);
                int64_t above = 0;
                for (int64_t j = 0; j < D; j++) above += pre[j] > v;
                int64_t ties = ka - above;
                for (int64_t j = 0; j < D; j++) {
                    const int keep = pre[j] > v || (pre[j] == v && ties-- > 0);
                    a[j] = keep && pre[j] > 0 ? pre[j] : 0;
                }
            }
            T *restrict g = ge + i * d;
            const T *restrict xi = xn + i * d, *restrict ri = recon + i * d;
            for (int64_t t = 0; t < d; t++) g[t] = 0;
            for (int64_t j = 0; j < D; j++) {
                if (!(a[j] > 0)) continue;
                const T aj = a[j];
                const T *restrict w = Wd + j * d;
#pragma omp simd
                for (int64_t t = 0; t < d; t++) g[t] += aj * w[t];
            }
            double s2 = 0.0;
#pragma omp simd reduction(+:s2)
            for (int64_t t = 0; t < d; t++) {
                const T e = g[t] - (xi[t] - ri[t]);
                s2 += (double)e * e;
                g[t] = scale * e;
            }
            sq[i] = s2;
            for (int64_t j = 0; j < D; j++) {
                T s = 0;
                if (a[j] > 0) {
                    const T *restrict w = Wd + j * d;
#pragma omp simd reduction(+:s)
                    for (int64_t t = 0; t < d; t++) s += g[t] * w[t];
                }
                gp[j] = s;
            }
        }
    }
}

/* AuxK's gradients per dead latent j, over the tokens in order (each latent summed by one thread: independent of
 * the thread count): gWd_j = sum_i act_ij ge_i, gWe_j = sum_i gpre_ij xc_i ([D, d]) and colsum[j] = sum_i gpre_ij
 * (double). Each thread takes a range of latents and walks the tokens in blocks of TOKEN_BLOCK, so a block's rows
 * are read from cache once for all its latents. */
void S(auxk_grads)(const T *restrict xc, const T *restrict ge, const T *restrict act, const T *restrict gpre,
                   int64_t B, int64_t d, int64_t D, T *restrict gWe, T *restrict gWd, double *restrict colsum, int nt) {
#pragma omp parallel num_threads(nt)
    {
        int q, nq;
        THREAD_IN_TEAM(q, nq);
        const int64_t j0 = D * q / nq, j1 = D * (q + 1) / nq;
        memset(gWe + j0 * d, 0, (size_t)((j1 - j0) * d) * sizeof(T));
        memset(gWd + j0 * d, 0, (size_t)((j1 - j0) * d) * sizeof(T));
        for (int64_t j = j0; j < j1; j++) colsum[j] = 0.0;
        for (int64_t i0 = 0; i0 < B; i0 += TOKEN_BLOCK) {
            const int64_t i1 = i0 + TOKEN_BLOCK < B ? i0 + TOKEN_BLOCK : B;
            for (int64_t j = j0; j < j1; j++) {
                T *restrict ae = gWe + j * d, *restrict ad = gWd + j * d;
                double cs = colsum[j];
                for (int64_t i = i0; i < i1; i++) {
                    const T av = act[i * D + j], gv = gpre[i * D + j];
                    if (av != 0) {
                        const T *restrict gi = ge + i * d;
#pragma omp simd
                        for (int64_t t = 0; t < d; t++) ad[t] += av * gi[t];
                    }
                    if (gv != 0) {
                        const T *restrict xi = xc + i * d;
#pragma omp simd
                        for (int64_t t = 0; t < d; t++) ae[t] += gv * xi[t];
                        cs += gv;
                    }
                }
                colsum[j] = cs;
            }
        }
    }
}
