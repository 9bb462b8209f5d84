"""Chunk sources: the training range as a sequence of row blocks, read from the activation cache or produced by the
language model on the fly (issue 19, stream mode), for :mod:`paperlib.sae.multirun`.

The training range's token rows [rows, context] are cut into *chunks* of ``rows_per_chunk`` consecutive rows (the
last one may be shorter); a chunk's activations are the ``rows·(context − drop_bos)`` resid_pre rows of those
token rows, in the cache's row order. The *stream* visits the chunks epoch after epoch, each epoch in an order
drawn from ``stream_seed`` and the epoch (:class:`ChunkPlan`), so stream position g (chunks consumed so far) maps to
one chunk, whatever the source. Two sources give that chunk:

- :class:`CacheSource`: a slice of the cached fp16 array (memory-mapped; nothing is produced);
- :class:`LMSource`: the language model's forward pass over the chunk's token rows through the extraction code
  (:func:`~paperlib.data.activations.extract_rows`, LM batches of ``lm_batch_size`` rows counted from the chunk's
  first row), checked like a cache shard and rounded to fp16 like the cache, nothing written. With
  ``rows_per_chunk`` a multiple of ``lm_batch_size`` and of the cache's shard rows a multiple too, the batches are
  the extraction's, so both sources give the same bits (tested on a tiny model).

A source is stateless: chunk g is a function of g, so resuming a stream means asking for chunk g again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import check_shard, extract_rows
from paperlib.data.corpus import build_token_matrix, token_ranges
from paperlib.data.lm import load_lm

STREAM_SEED_OFFSET = 104_723
"""Added to ``stream_seed`` for the chunk-order generator (keeps it apart from the runs' own seeds)."""


@dataclass(frozen=True)
class ChunkPlan:
    """Which token rows stream position ``g`` reads (see the module docstring)."""

    n_rows: int
    """Token rows [context] of the training range."""
    rows_per_chunk: int
    per_row: int
    """Activation rows per token row (``context − drop_bos``)."""
    stream_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_rows < 1:
            raise ValueError(f"n_rows={self.n_rows} must be >= 1 (an empty training range)")
        if self.rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk={self.rows_per_chunk} must be >= 1")
        if self.per_row < 1:
            raise ValueError(f"per_row={self.per_row} must be >= 1")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_rows / self.rows_per_chunk)

    def order(self, epoch: int) -> np.ndarray:
        """The chunk order of ``epoch`` (a permutation of the chunk indices, shared by every run of a pass)."""
        gen = torch.Generator().manual_seed(self.stream_seed * 7919 + epoch * 31 + STREAM_SEED_OFFSET)
        return torch.randperm(self.n_chunks, generator=gen).numpy()

    def rows(self, g: int) -> tuple[int, int]:
        """Token rows [r0, r1) of the training range read at stream position ``g`` (0-based)."""
        if g < 0:
            raise ValueError(f"stream position g={g} must be >= 0")
        epoch, j = divmod(g, self.n_chunks)
        c = int(self.order(epoch)[j])
        r0 = c * self.rows_per_chunk
        return r0, min(r0 + self.rows_per_chunk, self.n_rows)

    def as_dict(self) -> dict[str, int]:
        return dict(n_rows=self.n_rows, rows_per_chunk=self.rows_per_chunk, per_row=self.per_row,
                    stream_seed=self.stream_seed)


class ChunkSource(Protocol):
    """What the one-pass trainer reads: the activation rows of token rows [r0, r1) of the training range."""

    kind: str
    d: int
    n_rows: int
    per_row: int

    def read(self, r0: int, r1: int) -> torch.Tensor:
        """fp16 [(r1 − r0)·per_row, d] activations (CPU)."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


class CacheSource:
    """Chunks sliced from a cached activation array [T, d] (T = n_rows · per_row rows, memory-mapped or in memory)."""

    kind = "cache"

    def __init__(self, acts: Any, per_row: int) -> None:
        shape = tuple(acts.shape)
        if len(shape) != 2 or shape[0] < 1:
            raise ValueError(f"acts must be a non-empty 2-D [T, d] array, got shape {shape}")
        if per_row < 1 or shape[0] % per_row:
            raise ValueError(f"per_row={per_row} must divide the {shape[0]} activation rows")
        self.acts, self.per_row = acts, int(per_row)
        self.n_rows, self.d = shape[0] // per_row, int(shape[1])

    def read(self, r0: int, r1: int) -> torch.Tensor:
        block = self.acts[r0 * self.per_row:r1 * self.per_row]
        if isinstance(block, torch.Tensor):
            return block.detach().to("cpu", torch.float16)
        return torch.from_numpy(np.array(block, dtype=np.float16))

    def describe(self) -> dict[str, Any]:
        return dict(kind=self.kind, n_rows=self.n_rows, per_row=self.per_row, d=self.d)


class LMSource:
    """Chunks produced by the profile's language model on the fly (stream mode: no activation cache)."""

    kind = "lm"

    def __init__(self, profile: str | Profile, lm: Any = None, tokens: np.ndarray | None = None,
                 progress: bool = False) -> None:
        p = get_profile(profile)
        self.profile = p
        self.lm = lm if lm is not None else load_lm(p.data.model, dtype=p.data.lm_dtype)
        self.tokens = train_tokens(p, self.lm.tokenizer, progress) if tokens is None else np.asarray(tokens)
        if self.tokens.ndim != 2 or self.tokens.shape[1] != p.data.context:
            raise ValueError(f"tokens must be [rows, context={p.data.context}], got shape {self.tokens.shape}")
        self.n_rows = int(self.tokens.shape[0])
        self.per_row = p.data.context - int(p.data.drop_bos)
        self.d = int(self.read(0, 1).shape[1])

    def read(self, r0: int, r1: int) -> torch.Tensor:
        p = self.profile
        h = extract_rows(self.lm, self.tokens[r0:r1], p.data.layer, p.data.drop_bos, p.data.lm_batch_size)
        check_shard(h, p, "train", r0)
        return torch.from_numpy(h.astype(np.float16))

    def describe(self) -> dict[str, Any]:
        p = self.profile
        return dict(kind=self.kind, n_rows=self.n_rows, per_row=self.per_row, d=self.d, model=p.data.model,
                    layer=p.data.layer, lm_batch_size=p.data.lm_batch_size, lm_dtype=p.data.lm_dtype)


def train_tokens(profile: str | Profile, tokenizer: Any, progress: bool = False) -> np.ndarray:
    """int32 [rows, context] token rows of the profile's training range (tokenised in memory, as the cache's
    ``tokens.npy`` would hold them)."""
    p = get_profile(profile)
    start, stop = token_ranges(p).spans["train"]
    return np.ascontiguousarray(build_token_matrix(p, tokenizer, progress=progress)[start:stop])


def default_rows_per_chunk(profile: str | Profile) -> int:
    """About one training batch of activations per chunk, rounded up to whole LM batches (so stream mode uses the
    extraction's batching)."""
    p = get_profile(profile)
    per_row = p.data.context - int(p.data.drop_bos)
    rows = math.ceil(p.sae.batch_size / per_row)
    return math.ceil(rows / p.data.lm_batch_size) * p.data.lm_batch_size
