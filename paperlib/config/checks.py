"""Input checks shared by every layer: non-finite activation rows, reported with their count and location.

A NaN or ±inf activation row poisons whatever reads it (BatchTopK selections, histogram ranges, Adam
moments), usually without an error. Every consumer of activations therefore checks each chunk it reads
(``torch.isfinite(x).all()``, cheap next to the encoding) and, on a bad chunk, raises one
:class:`NonFiniteError` that counts and locates every bad row of the whole array (one extra pass, only
on the error path). Checks change no number, so this module is left out of stage code digests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CHECK_CHUNK_ROWS = 65_536


class NonFiniteError(ValueError):
    """An array holds NaN or ±inf where finite values are required."""


def nonfinite_rows(acts: Any, chunk_rows: int = CHECK_CHUNK_ROWS) -> np.ndarray:
    """int64 indices of the rows of ``acts [T, d]`` (memmap, ndarray or tensor) holding NaN or ±inf."""
    out = []
    for s in range(0, len(acts), chunk_rows):
        c = acts[s:s + chunk_rows]
        ok = torch.isfinite(c).all(dim=1).cpu().numpy() if isinstance(c, torch.Tensor) \
            else np.isfinite(np.asarray(c)).all(axis=1)
        out.append(np.flatnonzero(~ok) + s)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def describe_rows(rows: np.ndarray, shown: int = 5) -> str:
    """``"3 rows (0, 4, 9)"`` / ``"10 rows (first: 3, 4, 5, 6, 7)"``."""
    first = ", ".join(str(int(r)) for r in rows[:shown])
    return f"{len(rows)} row{'s' if len(rows) != 1 else ''} ({'first: ' if len(rows) > shown else ''}{first})"


def nonfinite_error(acts: Any, what: str, fix: str) -> NonFiniteError:
    """The error for ``acts`` holding non-finite rows: which array, how many rows, where, what to do."""
    rows = nonfinite_rows(acts)
    return NonFiniteError(f"{what}: {describe_rows(rows)} of {len(acts)} hold NaN or inf; {fix}")


def check_chunk(x: torch.Tensor, acts: Any, what: str, fix: str = "") -> None:
    """Raise :func:`nonfinite_error` for ``acts`` when its chunk ``x`` holds a non-finite value."""
    if not bool(torch.isfinite(x).all()):
        raise nonfinite_error(acts, what, fix or "the activation cache is corrupt: delete it and re-extract")
