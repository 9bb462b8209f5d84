"""Atomic file writes, JSON helpers and provenance (versions, git revision)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from paperlib.config.numerics import numerics_record

TRACKED_PACKAGES = (
    "torch", "transformers", "nnsight", "numpy", "scipy", "safetensors", "datasets",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception inside the block leaves any previous ``path`` untouched and no
    half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the file the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class LockedError(RuntimeError):
    """Another live process holds the lock of what this process wants to build (its pid in ``holder``)."""

    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` (``fcntl.flock``, with this process's pid written in it) while
    ``what`` is built; another process wanting it gets :class:`LockedError` naming the holder's pid. The kernel
    drops the lock when its holder dies, so a lock file left by a killed process is stale and simply reused."""
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"{what} is being built by another process (pid {holder}, lock {path}); wait for it "
                              "to finish, or stop it first", holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``directory`` when a process was killed mid-write
    (``.<name>.*.tmp``). Call it only while holding the directory's :func:`exclusive` lock."""
    d = Path(directory)
    stale = sorted(d.glob(".*.tmp")) if d.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if getattr(obj, "ndim", 0) > 0 and hasattr(obj, "tolist"):  # numpy / torch arrays
        return obj.tolist()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable, sort_keys=False) + "\n")


class ArtifactError(ValueError):
    """A stored artifact is missing, damaged or does not match its record; the message names the file and the fix."""


def damaged(path: str | os.PathLike, problem: str, delete: str | os.PathLike | None = None) -> ArtifactError:
    """The one error for a bad artifact: which file, what is wrong, and what to delete before re-running."""
    target = Path(delete) if delete is not None else Path(path)
    return ArtifactError(f"{path}: {problem}. Delete {target} and re-run to rebuild it")


def read_json(path: str | os.PathLike, delete: str | os.PathLike | None = None) -> Any:
    """Parse a JSON file; a damaged (unparsable) one raises :class:`ArtifactError` naming it and what to delete
    (``delete``, default the file itself)."""
    text = Path(path).read_text(errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise damaged(path, f"damaged JSON ({err})", delete) from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that determine numerical results."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(root: Path | None = None) -> str:
    """Current git commit of the project (``unknown`` outside a checkout), ``-dirty`` when tracked
    files other than the published outputs (``figures/``, ``tables/``, which a run rewrites) differ."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=root or Path(__file__).resolve().parent, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--",
             ":(top,exclude)figures", ":(top,exclude)tables"], capture_output=True,
            text=True, cwd=root or Path(__file__).resolve().parent, timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """Versions, revision and the arithmetic setting (:func:`~paperlib.config.numerics.numerics_record`) to
    record beside every artifact."""
    return {"versions": package_versions(), "git": git_revision(), "numerics": numerics_record()}
