"""Fused CPU kernels of the sparse training step: C with OpenMP, built on first use, called on numpy arrays.

The primary step's only dense O(B·n·d) work is the encoder product (MKL: float32, or a bfloat16 screen where
the screened encoder runs). What follows it is a dozen
torch ops, each a full pass over its data plus a temporary: the BatchTopK selection over the [B, n]
pre-activations, the decode, four sparse products, the decoder constraint. The kernels in
``csrc/fused.c`` fuse them into few passes:

- ``normalize_center``: per-token standardisation and x̃ − b_dec in one pass over the batch;
- ``count_at_least`` / ``gather_at_least`` / ``keep_top``: the exact BatchTopK selection as a counting and
  a gathering pass over the pre-activations, a linear-time selection among the candidates
  (``radix_kth_largest``) and one compaction pass;
- ``radix_kth_largest`` (float32 only): the k-th largest of a vector by three histograms of its values' bits
  (every selection threshold of the screened encoder and of the BatchTopK selection; numpy's introselect took
  up to 6.7x as long at the default step's sizes, ``benchmarks/selection.py``), linear also when many values are equal;
- ``by_latent``: the latent-major (transposed) layout of the selected entries, a stable counting sort;
- ``decode_residual``: per token, the decode, the residual and its squared norm, the MSE gradient of the
  reconstruction and the gradient of every selected code. Work goes by 256-byte column chunks, chunk-major,
  so the decoder columns a thread gathers stay in its L2 and a token's chunk accumulates in registers; the
  code gradients are sums of per-chunk partial dot products, added in chunk order;
- ``decode_rows``: the same decode without the residual, mapped back to each row's scale (the meta SAE's
  reconstruction of the decoder rows, every primary step);
- ``latent_grads``: per latent, the decoder-row gradient, the encoder-column gradient (written straight
  into W_enc's [d, n] layout through a 16-latent tile) and the column sum that b_dec's gradient needs,
  by column chunks in the same way;
- ``auxk_rows`` / ``auxk_grads``: the AuxK term over the dead latents, in one pass over the tokens (their
  dead pre-activations, the per-token top-k_aux by quickselect, the residual's error and the code gradients) and
  one over the dead latents (their encoder-column and decoder-row gradients, tokens in blocks);
- ``project_rows`` / ``renorm_rows``: the decoder constraint;
- ``row_penalty`` / ``row_penalty_grad``: the decomposability penalty's per-row terms and their gradient;
  ``quantiles`` (float32 only): the quantiles of those terms that the trainer logs every step, exactly as
  ``torch.quantile`` computes them (quickselect, then its interpolation as one fused multiply-add);
- ``ortho_backward``: the orthogonality penalty's gradient through each row's maximising pair;
  ``gram_candidates`` / ``max_square_pick`` (float32 only): its screened Gram matrices (the rows that can hold each
  row's largest |cosine|, from a bfloat16 product and the screen's bound; the largest square among their exact
  dot products);
- ``rows_to_bf16`` / ``cols_to_bf16_t`` / ``screen_count`` / ``screen_gather`` / ``screen_gather_once`` /
  ``screen_compact`` / ``dot_entries`` (float32 only): the screened encoder of :mod:`paperlib.sae.screen`, which
  replaces the float32 encoder matmul where the CPU has bfloat16 arithmetic. The operands' bfloat16 roundings
  and the norms of what rounding removed (W_enc also transposed, for the dot products), the screen over the
  bfloat16 product's [B, n] values with their error bounds, and the candidates' exact float32 dot products, in
  256-byte column chunks as in ``decode_residual``, each summed in one fixed order; ``amx_screen``: the
  bfloat16 product on AMX with the screen fused into it (the [B, n] values are never written).

Semantics are those of the torch path of :mod:`paperlib.sae.models` up to floating-point reassociation:
vectorised sums reassociate and multiply-adds are fused (``-ffp-contract=fast``); there is no
``-ffast-math``, so NaN and inf propagate as in torch. Every output element is written by one loop iteration
(static schedule) and summed in a fixed order, so results do not depend on the number of threads. The code
is compiled for the host CPU (``-march=native``; the candidate gathering uses AVX-512 where the CPU has it),
like MKL's own kernel choice, so its last bits may differ between CPU generations.

The library is built with the C compiler ``$CC`` (default ``cc``) into ``$PAPERLIB_KERNEL_CACHE`` (default
``~/.cache/paperlib/kernels``), once per source, flags, compiler version and CPU (about 1 s); a compiler without
OpenMP gives single-threaded kernels. Calls are not thread-safe (work arrays are shared); processes are.
Without a working compiler (or with ``PAPERLIB_FUSED=0``) :func:`available` is False and training runs the
torch path: the same results up to reassociation, slower (``benchmarks/train.py`` with ``PAPERLIB_FUSED=0``);
a warning says so once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch

from paperlib.sae import blas

NATIVE_SOURCES = ("csrc/fused.c", "csrc/fused_impl.h")
"""The C sources, relative to this module; the first is compiled (code digests of cached stage results include
them all)."""
SOURCES = tuple(Path(__file__).parent / rel for rel in NATIVE_SOURCES)
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC",
         "-std=gnu11")
ENABLED = True
"""Use the kernels where they apply (:func:`applies`); ``False`` makes training take the torch ops in this
process (the tests compare both). ``PAPERLIB_FUSED=0`` in the environment does the same without building."""


def cache_dir() -> Path:
    return Path(os.environ.get("PAPERLIB_KERNEL_CACHE", Path.home() / ".cache" / "paperlib" / "kernels"))


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU model and flags (a library built for one CPU may not run on
    another that shares the cache folder)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build() -> Path:
    """The compiled library for this source, flags, compiler and CPU (built atomically when missing). Without
    OpenMP support (e.g. Apple clang) it is built single-threaded."""
    cc = _compiler()
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler {cc!r} on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [f.read_text() for f in SOURCES]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, version, _cpu_signature()]).encode()).hexdigest()[:16]
    lib = cache_dir() / f"fused-{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        errors = []
        for flags in (FLAGS, tuple(f for f in FLAGS if f != "-fopenmp")):
            res = subprocess.run([cc, *flags, "-o", tmp, str(SOURCES[0]), "-lm"], capture_output=True, text=True)
            if res.returncode == 0:
                os.chmod(tmp, 0o777 & ~_umask())  # mkstemp's 0600 would hide it from other users of a shared cache
                os.replace(tmp, lib)
                return lib
            errors.append(res.stderr.strip()[-1500:])
        raise OSError(f"{cc} failed to build {SOURCES[0].name}: {errors[-1]}")
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disabled_by_environment() -> bool:
    return os.environ.get("PAPERLIB_FUSED", "1") == "0"


@cache
def _loaded() -> tuple[ctypes.CDLL, Path] | None:
    """The loaded library and its file, or ``None`` (disabled, or no working compiler: warned once)."""
    if _disabled_by_environment():
        return None
    try:
        path = _build()
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"fused CPU kernels unavailable ({err}); training uses the slower torch path "
                      "(same results up to floating-point reassociation). Install a C compiler with OpenMP "
                      "(gcc) to enable them.", RuntimeWarning, stacklevel=3)
        return None
    for s in ("f32", "f64"):
        getattr(lib, f"keep_top_{s}").restype = ctypes.c_int64
        getattr(lib, f"gather_at_least_once_{s}").restype = ctypes.c_int64
    lib.screen_gather_once.restype = ctypes.c_int64
    lib.amx_screen.restype = ctypes.c_int64
    return lib, path


def describe() -> dict[str, str | bool]:
    """How this process trains, for the run records: whether the fused kernels are used and which library."""
    loaded = _loaded()
    if loaded is None:
        return {"fused_cpu_kernels": False,
                "reason": "PAPERLIB_FUSED=0" if _disabled_by_environment() else "no C compiler"}
    return {"fused_cpu_kernels": True, "library": loaded[1].name, "bf16_screen": blas.available()}


def available() -> bool:
    """The kernels are built and loaded (a C compiler exists, ``PAPERLIB_FUSED`` is not 0)."""
    return _loaded() is not None


def applies(*tensors: torch.Tensor) -> bool:
    """The kernels are enabled and loaded and take these tensors: CPU, one float dtype (float32 or float64),
    contiguous."""
    if not (ENABLED and available()):
        return False
    dtype = tensors[0].dtype if tensors else torch.float32
    return all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors) and \
        dtype in (torch.float32, torch.float64)


def _lib() -> ctypes.CDLL:
    loaded = _loaded()
    if loaded is None:
        raise RuntimeError("fused CPU kernels are not available (see kernels.available())")
    return loaded[0]


def _suffix(a: np.ndarray) -> str:
    if a.dtype == np.float32:
        return "f32"
    if a.dtype == np.float64:
        return "f64"
    raise TypeError(f"fused kernels take float32 or float64 arrays, got {a.dtype}")


def _scalar_type(a: np.ndarray):
    return ctypes.c_float if a.dtype == np.float32 else ctypes.c_double


def _p(a: np.ndarray):
    if not a.flags.c_contiguous:
        raise ValueError("fused kernels need C-contiguous arrays")
    return a.ctypes.data_as(ctypes.c_void_p)


def _fn(name: str, a: np.ndarray):
    return getattr(_lib(), f"{name}_{_suffix(a)}")


def threads() -> int:
    """Threads per kernel: torch's intra-op count (1 in the training pool's workers)."""
    return max(1, torch.get_num_threads())


def normalize_center(x: np.ndarray, b: np.ndarray, xn: np.ndarray | None, xc: np.ndarray, means: np.ndarray,
                     scales: np.ndarray, eps: float) -> None:
    """xn[i] = (x[i] − mean_i) / scale_i with scale_i = std_i + eps (unbiased std over the row; statistics in
    fp64, written to ``means`` / ``scales``) and xc = xn − b (``xn=None``: only xc is written, same values)."""
    B, d = x.shape
    _fn("normalize_center", x)(_p(x), _p(b), None if xn is None else _p(xn), _p(xc), _p(means), _p(scales),
                               ctypes.c_int64(B), ctypes.c_int64(d), ctypes.c_double(eps), ctypes.c_int(threads()))


def count_at_least(pre: np.ndarray, t, counts: np.ndarray) -> None:
    """counts[i] = #{j: pre[i, j] ≥ t} (int64)."""
    B, n = pre.shape
    _fn("count_at_least", pre)(_p(pre), ctypes.c_int64(B), ctypes.c_int64(n), _scalar_type(pre)(t), _p(counts),
                               ctypes.c_int(threads()))


def gather_at_least(pre: np.ndarray, t, offsets: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    """The entries ≥ t of row i, in column order, into cols/vals[offsets[i]:offsets[i + 1]]."""
    B, n = pre.shape
    _fn("gather_at_least", pre)(_p(pre), ctypes.c_int64(B), ctypes.c_int64(n), _scalar_type(pre)(t),
                                _p(offsets), _p(cols), _p(vals), ctypes.c_int(threads()))


def gather_at_least_once(pre: np.ndarray, t, counts: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`count_at_least` and :func:`gather_at_least` in one pass over ``pre``: (cols, vals) of the entries ≥ t
    in row-major, column order (work arrays, valid until the next call), ``counts`` filled; ``None`` when more
    than about ``cap`` entries pass (use the two passes). Each thread gathers its block of rows into its own
    share of the ``cap`` slots."""
    B, n = pre.shape
    nt = threads()
    cap = max(int(cap), nt * n)
    cols, vals = scratch("once_cols", cap, np.int64), scratch("once_vals", cap, pre.dtype)
    buf_c, buf_v = scratch("once_rowbuf_c", nt * n, np.int64), scratch("once_rowbuf_v", nt * n, pre.dtype)
    ends = np.empty(nt, dtype=np.int64)
    m = _fn("gather_at_least_once", pre)(_p(pre), ctypes.c_int64(B), ctypes.c_int64(n), _scalar_type(pre)(t),
                                         ctypes.c_int64(cap), _p(counts), _p(cols), _p(vals), _p(buf_c), _p(buf_v),
                                         _p(ends), ctypes.c_int(nt))
    return None if m < 0 else (cols[:m], vals[:m])


def keep_top_count(offsets: np.ndarray, cols: np.ndarray, vals: np.ndarray, count: int):
    """Exactly ``count`` of the candidates (row-major order): every one above the count-th largest value v,
    then the first ones equal to v. Returns (crow [B + 1], rows, cols, vals) of the kept entries."""
    v = kth_largest(vals, count)
    need = count - int(np.count_nonzero(vals > v))
    B = offsets.size - 1
    crow = np.empty(B + 1, dtype=np.int64)
    rows_o, cols_o = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
    vals_o = np.empty(count, dtype=vals.dtype)
    got = _fn("keep_top", vals)(_p(offsets), _p(cols), _p(vals), ctypes.c_int64(B), _scalar_type(vals)(v),
                                ctypes.c_int64(need), _p(crow), _p(rows_o), _p(cols_o), _p(vals_o))
    if got != count:
        raise RuntimeError(f"BatchTopK selection kept {got} entries instead of {count} (non-finite values?)")
    return crow, rows_o, cols_o, vals_o


def by_latent(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable counting sort of the entries (int64 rows, cols) by latent: (crow_t [n + 1], perm, rows[perm])."""
    m = cols.size
    nt = threads()
    crow_t, pos = np.empty(n + 1, dtype=np.int64), np.empty(nt * n, dtype=np.int64)
    perm, rows_t = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    _lib().by_latent(_p(rows), _p(cols), ctypes.c_int64(m), ctypes.c_int64(n), _p(crow_t), _p(pos), _p(perm),
                     _p(rows_t), ctypes.c_int(nt))
    return crow_t, perm, rows_t


SCRATCH: dict[tuple[str, np.dtype], np.ndarray] = {}


def scratch(name: str, size: int, dtype) -> np.ndarray:
    """A work array of ``size`` elements, reused by later calls of the same name (a fresh multi-MB array per call
    costs a page fault per 4 KiB). Valid until the next call with this name."""
    key = (name, np.dtype(dtype))
    buf = SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = SCRATCH[key] = aligned_empty(max(size, 1), dtype)
    return buf[:max(size, 1)]


def aligned_empty(size: int, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised 1-D array whose data start on an ``alignment``-byte boundary (numpy guarantees 16; MKL's
    bfloat16 product runs ~1.5x slower on 16-byte-aligned operands)."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + size * dtype.itemsize].view(dtype)


CHUNK_BYTES = 256
"""Column chunk of decode_residual and latent_grads (64 float32 or 32 float64 columns; ``CW`` in the C source)."""


def decode_residual(crow, cols, vals, W, b, xn, scale, recon, g, gv, sq, with_grad: bool) -> None:
    """Per token i: recon[i] = b + Σ_e vals[e]·W[cols[e]] over its entries, sq[i] = ‖recon[i] − xn[i]‖² (fp64);
    with ``with_grad``: g[i] = scale·(recon[i] − xn[i]) and gv[e] = g[i] · W[cols[e]] (a sum of per-column-chunk
    partial dot products, added in chunk order)."""
    B, d = xn.shape
    n_chunks = -(-d // (CHUNK_BYTES // W.itemsize))
    gvp = scratch("gvp", n_chunks * int(crow[-1]) if with_grad else 1, W.dtype)
    sqp = scratch("sqp", n_chunks * B, np.float64)
    _fn("decode_residual", W)(_p(crow), _p(cols), _p(vals), _p(W), _p(b), _p(xn), ctypes.c_int64(B),
                              ctypes.c_int64(d), _scalar_type(W)(scale), _p(recon), _p(g), _p(gv), _p(gvp), _p(sqp),
                              _p(sq), ctypes.c_int(int(with_grad)), ctypes.c_int(threads()))


def decode_rows(crow, cols, vals, W, b, means, scales, out) -> None:
    """out[i] = (b + Σ_e vals[e]·W[cols[e]]) · scales[i] + means[i]: the decode of :func:`decode_residual` (same
    order, same bits) mapped back to each row's scale by a rounded product and a rounded sum, as the two array
    operations ``out * scales + means`` would compute them (never one fused multiply-add)."""
    B, d = out.shape
    if means.shape != (B,) or scales.shape != (B,) or means.dtype != W.dtype or scales.dtype != W.dtype:
        raise ValueError(f"decode_rows: means {means.shape} {means.dtype} and scales {scales.shape} {scales.dtype} "
                         f"must be [{B}] of the weights' dtype {W.dtype}")
    _fn("decode_rows", W)(_p(crow), _p(cols), _p(vals), _p(W), _p(b), _p(means), _p(scales), ctypes.c_int64(B),
                          ctypes.c_int64(d), _p(out), ctypes.c_int(threads()))


def latent_grads(crow_t, perm, rows_t, vals, gv, g, xc, gW_dec, gW_enc, colsum) -> None:
    """Per latent j (its entries e, token i): gW_dec[j] = Σ vals[e]·g[i]; with gs[e] = gv[e]·1[vals[e] > 0],
    gW_enc[:, j] = Σ gs[e]·xc[i] (W_enc's [d, n] layout) and colsum[j] = Σ gs[e] (fp64)."""
    n, d = gW_dec.shape
    entries = scratch("latent_entries", 2 * int(crow_t[-1]), g.dtype)  # values and masked gradients, latent-major
    _fn("latent_grads", g)(_p(crow_t), _p(perm), _p(rows_t), _p(vals), _p(gv), _p(g), _p(xc), ctypes.c_int64(n),
                           ctypes.c_int64(d), _p(gW_dec), _p(gW_enc), _p(colsum), _p(entries),
                           ctypes.c_int(threads()))


def auxk_rows(xc, xn, recon, We, Wd, ka: int, scale, ge, act, gpre, sq) -> None:
    """AuxK per token i over the D dead latents (We, Wd [D, d]: their encoder columns and decoder rows):
    pre_ij = xc_i · We_j; the ka largest per token are kept (ties: the lowest latents; all when ka ≥ D);
    act_ij = pre_ij where kept and positive, else 0 ([B, D]); e_i = Σ_j act_ij Wd_j − (xn_i − recon_i);
    sq[i] = ‖e_i‖² (fp64); ge_i = scale · e_i ([B, d]); gpre_ij = ge_i · Wd_j where act_ij > 0, else 0 ([B, D])."""
    B, d = xc.shape
    D = We.shape[0]
    nt = threads()
    work = scratch("auxk_work", 2 * nt * max(D, 1), xc.dtype)
    _fn("auxk_rows", xc)(_p(xc), _p(xn), _p(recon), _p(We), _p(Wd), ctypes.c_int64(B), ctypes.c_int64(d),
                         ctypes.c_int64(D), ctypes.c_int64(ka), _scalar_type(xc)(scale), _p(ge), _p(act), _p(gpre),
                         _p(sq), _p(work), ctypes.c_int(nt))


def auxk_grads(xc, ge, act, gpre, gWe, gWd, colsum) -> None:
    """Per dead latent j, over the tokens in order: gWd_j = Σ_i act_ij ge_i, gWe_j = Σ_i gpre_ij xc_i ([D, d]) and
    colsum[j] = Σ_i gpre_ij (fp64); each latent summed by one thread (independent of the thread count)."""
    B, d = xc.shape
    D = act.shape[1]
    _fn("auxk_grads", xc)(_p(xc), _p(ge), _p(act), _p(gpre), ctypes.c_int64(B), ctypes.c_int64(d),
                          ctypes.c_int64(D), _p(gWe), _p(gWd), _p(colsum), ctypes.c_int(threads()))


def row_penalty(W: np.ndarray, H: np.ndarray, sigma2: float, p: np.ndarray, e: np.ndarray) -> None:
    """Per row: e[i] = ‖W[i] − H[i]‖² and p[i] = exp(−e[i] / σ²)."""
    n, d = W.shape
    _fn("row_penalty", W)(_p(W), _p(H), ctypes.c_int64(n), ctypes.c_int64(d), ctypes.c_double(1.0 / sigma2), _p(p),
                          _p(e), ctypes.c_int(threads()))


def row_penalty_grad(W: np.ndarray, H: np.ndarray, coef: np.ndarray, G: np.ndarray) -> None:
    """G[i] = coef[i] · (W[i] − H[i])."""
    n, d = W.shape
    _fn("row_penalty_grad", W)(_p(W), _p(H), _p(coef), ctypes.c_int64(n), ctypes.c_int64(d), _p(G),
                               ctypes.c_int(threads()))


def ortho_backward(U, r, clamped, partner, cos, crow_r, src, scale: float, dW) -> None:
    """Gradient of the orthogonality penalty through each row's maximising pair (see :mod:`paperlib.sae.penalty`):
    U [n, d] unit rows, r [n] the (clamped) norms, clamped [n] uint8, partner [n] int64 (−1: none), cos [n],
    (crow_r, src) the rows whose partner is each row; writes dW [n, d]."""
    n, d = U.shape
    _fn("ortho_backward", U)(_p(U), _p(r), _p(clamped), _p(partner), _p(cos), _p(crow_r), _p(src), ctypes.c_int64(n),
                             ctypes.c_int64(d), _scalar_type(U)(scale), _p(dW), ctypes.c_int(threads()))


KTH_RADIX_MIN = 4096
"""Below this many values :func:`kth_largest` takes numpy's partition (the call would cost more than it saves)."""


def kth_largest(v: np.ndarray, k: int):
    """The k-th largest value of the 1-D array ``v`` (1 ≤ k ≤ v.size): ``np.partition(v, v.size − k)[v.size − k]``,
    the same value (a numpy scalar of v's dtype). For float32 by radix selection in the kernels (three histograms
    of the values' bits, the first counted by all threads; a few times faster than numpy's introselect, which the
    step's BatchTopK selection called three times per encoder); numpy's partition for other dtypes, without the
    kernels, and when a value is NaN. ``v`` is not changed."""
    m = v.size
    if not 1 <= k <= m or v.ndim != 1:
        raise ValueError(f"kth_largest: need a 1-D array and 1 <= k <= its size, got shape {v.shape}, k={k}")
    if v.dtype != np.float32 or m < KTH_RADIX_MIN or not (ENABLED and available()) or not v.flags.c_contiguous:
        return np.partition(v, m - k)[m - k]
    nt = min(threads(), 64)
    work, hists = scratch("kth_keys", m, np.uint32), scratch("kth_hists", 4 * nt * 4096, np.uint32)
    out = np.empty(1, dtype=np.float32)
    ok = _lib().radix_kth_largest_f32(_p(v), ctypes.c_int64(m), ctypes.c_int64(k), _p(work), _p(hists), _p(out),
                                ctypes.c_int(nt))
    if ok != 0:  # NaN: numpy's order (NaN last)
        return np.partition(v, m - k)[m - k]
    return out[0]


def quantiles(v: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """``torch.quantile(torch.from_numpy(v).double(), q)`` (linear interpolation) of a float32 vector, bit for bit,
    by selection instead of a sort; ``None`` when a value is not finite (the caller then asks torch). ``q``: float64
    in [0, 1]. The checks are attribute tests and the kernel's own (it runs every training step, where each small
    array operation costs tens of microseconds)."""
    _float32("quantiles", v)
    if v.ndim != 1 or v.size == 0 or q.dtype != np.float64 or q.ndim != 1:
        raise ValueError(f"quantiles: v must be a non-empty float32 vector and q a float64 vector, got v {v.shape}, "
                         f"q {q.dtype} {q.shape}")
    out = np.empty(q.size)
    work = scratch("quantiles", v.size, np.float64)
    ok = _lib().quantiles_f32(_p(v), ctypes.c_int64(v.size), _p(q), ctypes.c_int64(q.size), _p(work), _p(out))
    if ok == -2:
        raise ValueError(f"quantiles: q must lie in [0, 1], got {q.tolist()}")
    return out if ok == 0 else None


def project_rows(W: np.ndarray, G: np.ndarray) -> None:
    """G[j] −= (G[j] · ŵ_j) ŵ_j with ŵ_j = W[j] / max(‖W[j]‖, 1e-12), in place."""
    n, d = W.shape
    _fn("project_rows", W)(_p(W), _p(G), ctypes.c_int64(n), ctypes.c_int64(d), ctypes.c_int(threads()))


def renorm_rows(W: np.ndarray) -> None:
    """W[j] /= max(‖W[j]‖, 1e-12), in place."""
    n, d = W.shape
    _fn("renorm_rows", W)(_p(W), ctypes.c_int64(n), ctypes.c_int64(d), ctypes.c_int(threads()))


def _float32(name: str, *arrays: np.ndarray) -> None:
    """The screened encoder's kernels are compiled for float32 only: refuse anything else by name."""
    for a in arrays:
        if a.dtype != np.float32:
            raise TypeError(f"{name} takes float32 arrays, got {a.dtype}")


def rows_to_bf16(x: np.ndarray, xh: np.ndarray, norm: np.ndarray, dnorm: np.ndarray) -> None:
    """Per row of the float32 x [B, d]: xh = bfloat16(x) (uint16 bits; round to nearest even, subnormals to
    zero), norm = ‖x_i‖ and dnorm = ‖x_i − xh_i‖ (float64)."""
    _float32("rows_to_bf16", x)
    B, d = x.shape
    _lib().rows_to_bf16(_p(x), ctypes.c_int64(B), ctypes.c_int64(d), _p(xh), _p(norm), _p(dnorm),
                        ctypes.c_int(threads()))


def cols_to_bf16_t(W: np.ndarray, WT: np.ndarray, WhT: np.ndarray, norm: np.ndarray, dnorm: np.ndarray,
                   vnni: bool = False) -> None:
    """Per column j of the float32 W [d, n]: WT[j] = W[:, j], WhT[j] = bfloat16(W[:, j]) (rows of [n, d]; with
    ``vnni``, AMX's B tiles instead: per block of 16 columns, per 32 rows, 16 rows of 64 bytes holding rows 2r and
    2r + 1 interleaved per column; d a multiple of 32, n of 16), norm[j] = ‖W[:, j]‖ and
    dnorm[j] = ‖W[:, j] − bfloat16(W[:, j])‖ (float64)."""
    _float32("cols_to_bf16_t", W, WT)
    d, n = W.shape
    if vnni and (d % 32 or n % 16):
        raise ValueError(f"cols_to_bf16_t: AMX's tile layout (vnni) needs d a multiple of 32 and n of 16, got "
                         f"d={d}, n={n}")
    _lib().cols_to_bf16_t(_p(W), ctypes.c_int64(d), ctypes.c_int64(n), _p(WT), _p(WhT), _p(norm), _p(dnorm),
                          ctypes.c_int(int(vnni)), ctypes.c_int(threads()))


REL_FLOAT32 = 2.0 ** -20
"""The screening bound's relative term for screened values written in float32: it covers the float32 rounding
of e and of p ± e (see :mod:`paperlib.sae.screen`)."""
REL_BFLOAT16 = 2.0 ** -7 + 2.0 ** -20
"""The same for screened values rounded to bfloat16 by the product (to nearest, as oneDNN's conversion
instructions do; ``tests/sae/test_blas.py`` checks it): the rounding moved each value by at most
2⁻⁸/(1 − 2⁻⁸) of its rounded magnitude, which 2⁻⁷ covers, and 2⁻²⁰ covers the float32 rounding of e and p ± e."""


def _screened(name: str, P: np.ndarray) -> tuple[int, float]:
    """(bf16 flag, relative bound term) of screened values P: float32, or bfloat16 bits as uint16."""
    if P.dtype == np.float32:
        return 0, REL_FLOAT32
    if P.dtype == np.uint16:
        return 1, REL_BFLOAT16
    raise TypeError(f"{name} takes screened values as float32 or bfloat16 bits (uint16), got {P.dtype}")


def screen_count(P: np.ndarray, bound: tuple[np.ndarray, ...], t: float, cu: np.ndarray, cl: np.ndarray) -> None:
    """Per row of the screened values P [B, n] (float32, or bfloat16 bits as uint16): cu = #{upper ≥ t},
    cl = #{lower ≥ t}, where upper / lower = p ± e and e = a_i b_j + c_i f_j + rel·|p| + 2⁻¹⁰⁰ with ``bound`` =
    (a [B], b [n], c [B], f [n]) and rel = :data:`REL_FLOAT32` or :data:`REL_BFLOAT16` by P's dtype."""
    _float32("screen_count", *bound)
    bf16, rel = _screened("screen_count", P)
    B, n = P.shape
    _lib().screen_count(_p(P), ctypes.c_int(bf16), ctypes.c_float(rel), ctypes.c_int64(B), ctypes.c_int64(n),
                        *(_p(v) for v in bound), ctypes.c_float(t), _p(cu), _p(cl), ctypes.c_int(threads()))


def screen_gather(P: np.ndarray, bound: tuple[np.ndarray, ...], t: float, offsets: np.ndarray, cols: np.ndarray,
                  lo: np.ndarray, hi: np.ndarray) -> None:
    """The entries of row i with upper ≥ t (see :func:`screen_count`), in column order, into cols / lo / hi
    [offsets[i], offsets[i + 1]) with their lower and upper bounds."""
    _float32("screen_gather", lo, hi, *bound)
    bf16, rel = _screened("screen_gather", P)
    B, n = P.shape
    _lib().screen_gather(_p(P), ctypes.c_int(bf16), ctypes.c_float(rel), ctypes.c_int64(B), ctypes.c_int64(n),
                         *(_p(v) for v in bound), ctypes.c_float(t), _p(offsets), _p(cols), _p(lo), _p(hi),
                         ctypes.c_int(threads()))


def screen_gather_once(P: np.ndarray, bound: tuple[np.ndarray, ...], t, cu: np.ndarray, cl: np.ndarray, cap: int):
    """:func:`screen_count` and :func:`screen_gather` in one pass over P: (cols, lo, hi) of the entries with
    upper ≥ t in row-major, column order (work arrays, valid until the next call), ``cu`` / ``cl`` filled;
    ``None`` when more than about ``cap`` entries pass (use the two passes)."""
    _float32("screen_gather_once", *bound)
    bf16, rel = _screened("screen_gather_once", P)
    B, n = P.shape
    nt = threads()
    cap = max(int(cap), nt * n)
    cols = scratch("screen_cols", cap, np.int64)
    lo, hi = scratch("screen_lo", cap, np.float32), scratch("screen_hi", cap, np.float32)
    rb_c = scratch("screen_rb_c", nt * n, np.int64)
    rb_lo, rb_hi = scratch("screen_rb_lo", nt * n, np.float32), scratch("screen_rb_hi", nt * n, np.float32)
    ends = np.empty(nt, dtype=np.int64)
    m = _lib().screen_gather_once(_p(P), ctypes.c_int(bf16), ctypes.c_float(rel), ctypes.c_int64(B),
                                  ctypes.c_int64(n), *(_p(v) for v in bound), ctypes.c_float(t), ctypes.c_int64(cap),
                                  _p(cu), _p(cl), _p(cols), _p(lo), _p(hi), _p(rb_c), _p(rb_lo), _p(rb_hi), _p(ends),
                                  ctypes.c_int(nt))
    return None if m < 0 else (cols[:m], lo[:m], hi[:m])


@cache
def amx_ready() -> bool:
    """The kernels were built with AMX and Linux granted this process the tile state."""
    return available() and _lib().amx_request() == 1


AMX_ROWS = 128
"""Rows per block of :func:`amx_screen` (``AMX_ROWS`` in the C source)."""


def amx_screen(xh: np.ndarray, Wv: np.ndarray, n: int, bound: tuple[np.ndarray, ...] | None, t, cu: np.ndarray | None,
               cl: np.ndarray | None, cap: int, P: np.ndarray | None = None):
    """The bfloat16 product of xh [B, d] (uint16) and W in :func:`cols_to_bf16_t`'s vnni layout, on AMX
    (:func:`amx_ready`; B and d multiples of 32, n of 16), screened as :func:`screen_gather_once` (same results,
    ``None`` when more than about ``cap`` entries pass) without writing the product; with ``P`` [B, n] the
    product is written there instead (no screen; returns ``None``)."""
    B, d = xh.shape
    if not amx_ready():  # also what grants this process the tile state: an AMX instruction without it is fatal
        raise RuntimeError("amx_screen: no AMX here (the CPU, the compiler or the kernel lacks it); see amx_ready()")
    if B % 32 or d % 32 or n % 16:
        raise ValueError(f"amx_screen needs B and d multiples of 32 and n of 16, got B={B}, d={d}, n={n}")
    if xh.dtype != np.uint16 or Wv.dtype != np.uint16:
        raise TypeError(f"amx_screen takes bfloat16 bits as uint16, got {xh.dtype} and {Wv.dtype}")
    nt = threads()
    if P is not None:
        dummy = np.zeros(1, np.float32)
        idx = np.zeros(1, np.int64)
        _lib().amx_screen(_p(xh), _p(Wv), ctypes.c_int64(B), ctypes.c_int64(d), ctypes.c_int64(n),
                          *(_p(dummy) for _ in range(4)), ctypes.c_float(0), ctypes.c_int64(0), _p(idx), _p(idx),
                          _p(idx), _p(dummy), _p(dummy), _p(idx), _p(dummy), _p(dummy), _p(np.zeros(nt, np.int64)),
                          _p(P), ctypes.c_int(nt))
        return None
    cap = max(int(cap), nt * n)
    cols = scratch("screen_cols", cap, np.int64)
    lo, hi = scratch("screen_lo", cap, np.float32), scratch("screen_hi", cap, np.float32)
    st_c = scratch("amx_st_c", nt * AMX_ROWS * n, np.int64)
    st_lo, st_hi = (scratch(name, nt * AMX_ROWS * n, np.float32) for name in ("amx_st_lo", "amx_st_hi"))
    ends = np.empty(nt, dtype=np.int64)
    m = _lib().amx_screen(_p(xh), _p(Wv), ctypes.c_int64(B), ctypes.c_int64(d), ctypes.c_int64(n),
                          *(_p(v) for v in bound), ctypes.c_float(t), ctypes.c_int64(cap), _p(cu), _p(cl), _p(cols),
                          _p(lo), _p(hi), _p(st_c), _p(st_lo), _p(st_hi), _p(ends), None, ctypes.c_int(nt))
    return None if m < 0 else (cols[:m], lo[:m], hi[:m])


GRAM_SLACK = 2.0 ** -18
"""Relative slack of :func:`gram_candidates`' threshold: two cosines whose float32 squares round to the same value
differ by less than 2⁻²³ of their magnitude, so a first-index tie-break among equal squares can pick a cosine
that far below the largest one."""


def gram_candidates(G: np.ndarray, starts: np.ndarray, bound: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(crow [n + 1], cols) of the candidates of every row i of chunked screened Gram matrices. Chunk q is the rows
    [starts[q], starts[q + 1]) (n = starts[-1]); G holds the chunks' m_q × m_q matrices one after another
    (bfloat16 bits as uint16, flat); entry bounds e = a_i b_j + c_i f_j + rel·|g| + 2⁻¹⁰⁰ with ``bound`` = (a, b,
    c, f) [n] and rel = :data:`REL_BFLOAT16`. Row i's candidates are the j ≠ i of its chunk whose upper bound
    |g| + e reaches (1 − :data:`GRAM_SLACK`) times the largest lower bound |g| − e of the row (at least 0), as row
    indices in column order: every j that can hold the row's largest |cos| is among them. ``cols`` is a work
    array, valid until the next call."""
    _float32("gram_candidates", *bound)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    sizes = np.diff(starts)
    n = int(starts[-1])
    if starts[0] != 0 or (sizes < 0).any() or any(v.shape != (n,) for v in bound):
        raise ValueError(f"gram_candidates: starts must rise from 0 to n and the bound terms be [n], got starts "
                         f"{starts.tolist()} and terms {[v.shape for v in bound]}")
    if G.dtype != np.uint16 or G.shape != (int((sizes ** 2).sum()),):
        raise ValueError(f"gram_candidates: G must be the chunks' Gram matrices as flat bfloat16 bits (uint16, "
                         f"{int((sizes ** 2).sum())} entries), got {G.shape} {G.dtype}")
    crow = np.empty(n + 1, dtype=np.int64)
    cols = scratch("gram_cols", max(1, int((sizes * (sizes - 1)).sum())), np.int64)
    _lib().gram_candidates(_p(G), _p(starts), ctypes.c_int64(sizes.size), ctypes.c_float(REL_BFLOAT16),
                           *(_p(v) for v in bound), ctypes.c_float(GRAM_SLACK), _p(np.empty(n, np.float32)),
                           _p(crow), _p(cols), ctypes.c_int(threads()))
    return crow, cols[:crow[-1]]


def max_square_pick(crow: np.ndarray, cols: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row i (entries [crow[i], crow[i + 1]) in column order): (j*, v*) of the entry with the largest float32
    v², the first among equal ones (``torch.argmax``'s rule); (−1, 0) for a row without entries."""
    _float32("max_square_pick", v)
    n = crow.size - 1
    jstar, vstar = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
    _lib().max_square_pick(_p(crow), _p(cols), _p(v), ctypes.c_int64(n), _p(jstar), _p(vstar),
                           ctypes.c_int(threads()))
    return jstar, vstar


def dot_entries(crow: np.ndarray, cols: np.ndarray, x: np.ndarray, WT: np.ndarray, out: np.ndarray) -> None:
    """out[e] = x[i] · WT[cols[e]] (float32) for the entries [crow[i], crow[i + 1]) of each row i, every dot
    product summed in one fixed order (independent of the thread count)."""
    _float32("dot_entries", x, WT, out)
    B, d = x.shape
    part = scratch("dot_part", -(-d // 64) * int(crow[-1]), np.float32)
    _lib().dot_entries(_p(crow), _p(cols), _p(x), _p(WT), ctypes.c_int64(B), ctypes.c_int64(d), _p(part), _p(out),
                       ctypes.c_int(threads()))


def screen_compact(offsets: np.ndarray, cols: np.ndarray, hi: np.ndarray, t) -> tuple[np.ndarray, np.ndarray]:
    """The gathered entries (row i: [offsets[i], offsets[i + 1])) with hi ≥ t, in order: (crow [B + 1], cols)."""
    B = offsets.size - 1
    crow = np.empty(B + 1, dtype=np.int64)
    out = np.empty(cols.size, dtype=np.int64)
    _lib().screen_compact(_p(offsets), _p(cols), _p(hi), ctypes.c_int64(B), ctypes.c_float(t), _p(crow), _p(out))
    return crow, out[:int(crow[-1])]


if __name__ == "__main__":  # build the library ahead of time: python -m paperlib.sae.kernels
    print(_loaded()[1] if available() else "unavailable")
