"""Where a feature fires, and the text windows the judge is shown (docs/method.md §3.6).

:func:`collect_feature_activations` encodes a token range with per-token thresholds and keeps,
for each requested feature, only its sparse (activation row, value) list.
:func:`collect_contexts` then samples, per feature and seeded:

* ``explain`` — the top activating windows (non-overlapping), shown to the explainer;
* ``activating`` — test windows drawn evenly across activation quantiles (deciles by default)
  of the firing tokens outside the explanation windows;
* ``non_activating`` — random windows in which the feature never fires.

A window has ``window`` tokens and holds the sampled firing token ``n_after`` tokens before its
end (clipped to the row). Every :class:`Example` keeps its row, span, token ids and per-token
activations, and contexts round-trip through JSON (:func:`save_contexts` / :func:`load_contexts`),
so each score can be traced back to the text it was computed on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from paperlib.config.io import read_json, write_json
from paperlib.metrics.firing import iter_codes

Decoder = Callable[[Sequence[int]], list[str]]
"""Token ids → one string per token."""


# --------------------------------------------------------------------------- activations
@dataclass
class FeatureActivations:
    """Sparse activations of selected features: for feature f, activation rows ``idx[f]`` (int64,
    ascending) fire with values ``val[f]`` (float32); ``T`` activation rows in total."""

    T: int
    idx: dict[int, np.ndarray]
    val: dict[int, np.ndarray]


def collect_feature_activations(sae, acts, features: Sequence[int], thresholds,
                                chunk_size: int = 4096, show_progress: bool = True
                                ) -> FeatureActivations:
    """Encode ``acts [T, d]`` with per-token thresholds and keep only ``features``' firings.

    ``sae`` is duck-typed: ``sae.encode(x, thresholds=θ) -> [B, n]`` codes (torch); θ is passed as an
    fp32 tensor (:func:`paperlib.metrics.firing.iter_codes`).
    """
    if thresholds is None:
        raise ValueError("thresholds are required (per-token firing, method.md §3.1)")
    feats = np.asarray(list(features), dtype=np.int64)
    if feats.ndim != 1 or len(np.unique(feats)) != len(feats):
        raise ValueError("features must be a list of distinct ints")
    ft = torch.from_numpy(feats)
    T = int(acts.shape[0])
    idx_parts: list[list[np.ndarray]] = [[] for _ in feats]
    val_parts: list[list[np.ndarray]] = [[] for _ in feats]
    with torch.no_grad():
        for s, _, codes in iter_codes(sae, acts, thresholds, chunk_size, progress=show_progress):
            codes = codes[:, ft]
            rows, cols = torch.nonzero(codes > 0, as_tuple=True)
            vals = codes[rows, cols].float().numpy()
            rows, cols = rows.numpy() + s, cols.numpy()
            order = np.argsort(cols, kind="stable")
            rows, cols, vals = rows[order], cols[order], vals[order]
            bounds = np.searchsorted(cols, np.arange(len(feats) + 1))
            for c in range(len(feats)):
                a, b = bounds[c], bounds[c + 1]
                if b > a:
                    idx_parts[c].append(rows[a:b].astype(np.int64))
                    val_parts[c].append(vals[a:b].astype(np.float32))
    idx, val = {}, {}
    for c, f in enumerate(feats.tolist()):
        idx[f] = np.concatenate(idx_parts[c]) if idx_parts[c] else np.zeros(0, np.int64)
        val[f] = np.concatenate(val_parts[c]) if val_parts[c] else np.zeros(0, np.float32)
    return FeatureActivations(T=T, idx=idx, val=val)


# --------------------------------------------------------------------------- contexts
@dataclass
class Example:
    """One window ``token_ids[row, start:end]`` with the feature's per-token activations."""

    row: int
    start: int
    end: int
    token_ids: list[int]
    acts: list[float]
    kind: str  # "top" | "quantile" | "random"
    quantile: int | None = None
    peak: int | None = None  # index in the window of the sampled firing token

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    def active_mask(self) -> list[bool]:
        return [a > 0 for a in self.acts]


@dataclass
class FeatureContexts:
    feature: int
    n_firing: int
    T: int
    explain: list[Example] = field(default_factory=list)
    activating: list[Example] = field(default_factory=list)
    non_activating: list[Example] = field(default_factory=list)

    @property
    def firing_rate(self) -> float:
        return self.n_firing / self.T if self.T else float("nan")


def _token_map(token_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    rows, ctx = token_ids.shape
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError("positions must be [T, 2] (row, position)")
    if len(pos) and (pos[:, 0].min() < 0 or pos[:, 0].max() >= rows or pos[:, 1].min() < 0
                     or pos[:, 1].max() >= ctx):
        raise ValueError("positions out of range of token_ids")
    m = np.full((rows, ctx), -1, dtype=np.int64)
    m[pos[:, 0], pos[:, 1]] = np.arange(len(pos))
    return m


def _window(pos: int, ctx: int, window: int, n_after: int) -> tuple[int, int]:
    w = min(window, ctx)
    start = pos - (w - 1 - min(n_after, w - 1))
    start = max(0, min(start, ctx - w))
    return start, start + w


def collect_contexts(
    feature_acts: FeatureActivations, token_ids: np.ndarray, positions: np.ndarray, *,
    features: Sequence[int] | None = None, window: int = 32, n_after: int = 4,
    n_explain: int = 20, n_quantiles: int = 10, per_quantile: int = 4, n_non_activating: int = 20,
    seed: int = 0, explain_window: int | None = None,
) -> dict[int, FeatureContexts]:
    """Sample explanation, test (decile-stratified) and non-activating windows per feature.

    Explanation windows have ``explain_window`` tokens (default ``window``): longer ones show the explainer
    more of the preceding context without making the judge's test items longer.

    Activation rows with no entry in ``positions`` (e.g. dropped BOS tokens) count as 0.
    """
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2:
        raise ValueError("token_ids must be [rows, context]")
    rows_n, ctx = token_ids.shape
    tmap = _token_map(token_ids, positions)
    if len(positions) != feature_acts.T:
        raise ValueError(f"positions has {len(positions)} rows, activations {feature_acts.T}")
    pos = np.asarray(positions, dtype=np.int64)
    feats = list(feature_acts.idx) if features is None else [int(f) for f in features]
    out: dict[int, FeatureContexts] = {}
    for f in feats:
        rng = np.random.default_rng([seed, f])
        idx, val = feature_acts.idx[f], feature_acts.val[f]
        dense = np.zeros(feature_acts.T + 1, dtype=np.float32)  # last slot: "no activation row"
        dense[idx] = val

        def example(r: int, s: int, e: int, kind: str, q: int | None, peak: int | None,
                    _dense=dense) -> Example:
            a = _dense[tmap[r, s:e]]  # -1 → last slot (0)
            return Example(int(r), int(s), int(e), token_ids[r, s:e].tolist(),
                           [float(x) for x in a], kind, q, peak)

        fc = FeatureContexts(feature=f, n_firing=int(len(idx)), T=feature_acts.T)
        taken: dict[int, list[tuple[int, int]]] = {}

        def free(r: int, s: int, e: int, _taken=taken) -> bool:
            return all(e <= a or s >= b for a, b in _taken.get(r, []))

        # explanation set: top activations, non-overlapping windows
        order = np.argsort(-val, kind="stable")
        for t in order:
            if len(fc.explain) >= n_explain:
                break
            r, p = pos[idx[t]]
            s, e = _window(int(p), ctx, explain_window or window, n_after)
            if free(r, s, e):
                taken.setdefault(int(r), []).append((s, e))
                fc.explain.append(example(r, s, e, "top", None, int(p - s)))
        explain_spans = {r: list(v) for r, v in taken.items()}
        # test set: remaining firing tokens (outside explanation windows), by decile
        rest = [t for t in np.argsort(val, kind="stable")
                if all(not (a <= pos[idx[t]][1] < b) for a, b in explain_spans.get(int(pos[idx[t]][0]), []))]
        if rest and n_quantiles > 0:
            for q, grp in enumerate(np.array_split(np.asarray(rest), n_quantiles)):
                got = 0
                for t in rng.permutation(grp):
                    if got >= per_quantile:
                        break
                    r, p = pos[idx[int(t)]]
                    s, e = _window(int(p), ctx, window, n_after)
                    if free(r, s, e):
                        taken.setdefault(int(r), []).append((s, e))
                        fc.activating.append(example(r, s, e, "quantile", q, int(p - s)))
                        got += 1
        # non-activating: random windows with no firing token
        fired_row = np.zeros((rows_n, ctx), dtype=bool)
        valid = tmap >= 0
        fired_row[valid] = dense[tmap[valid]] > 0
        w = min(window, ctx)
        tries = 0
        while len(fc.non_activating) < n_non_activating and tries < 50 * max(1, n_non_activating):
            tries += 1
            r = int(rng.integers(rows_n))
            s = int(rng.integers(0, ctx - w + 1))
            if not fired_row[r, s:s + w].any() and free(r, s, s + w):
                taken.setdefault(r, []).append((s, s + w))
                fc.non_activating.append(example(r, s, s + w, "random", None, None))
        out[f] = fc
    return out


def save_contexts(path: str | os.PathLike, contexts: dict[int, FeatureContexts], meta: dict | None = None
                  ) -> None:
    write_json(path, {"meta": meta or {}, "features": [asdict(c) for c in contexts.values()]})


def load_contexts(path: str | os.PathLike) -> dict[int, FeatureContexts]:
    data = read_json(path)
    out = {}
    for c in data["features"]:
        fc = FeatureContexts(feature=c["feature"], n_firing=c["n_firing"], T=c["T"])
        for k in ("explain", "activating", "non_activating"):
            setattr(fc, k, [Example(**e) for e in c[k]])
        out[fc.feature] = fc
    return out


# --------------------------------------------------------------------------- tokens → strings
def token_decoder(tokenizer) -> Decoder:
    """Per-token strings (``tokenizer.decode([id])``), memoised per id."""
    memo: dict[int, str] = {}

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in memo:
                memo[i] = tokenizer.decode([i])
            out.append(memo[i])
        return out

    return decode
