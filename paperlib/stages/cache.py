"""The one stage mechanism: cache keys that know which code, settings and inputs made a result.

A *stage* is a cached computation, per run (calibration, co-occurrence, ...) or per profile (the
selected configuration, the clean-model CE). It declares its name, the module that holds its code,
the profile settings it reads and the stages it depends on. Its key hashes

- the stage name;
- a digest of the source of its module and of every ``paperlib`` module that module imports,
  transitively (abstract syntax trees with docstrings removed, so a docstring or comment edit
  changes nothing, while any code change does). ``paperlib.config`` is left out: the settings a
  stage reads are keyed explicitly, and paths / atomic I/O do not change numbers;
- the run's key (its training key, :attr:`paperlib.stages.run.Run.key`), for per-run stages;
- the settings it reads from the profile;
- the keys of the stages it depends on.

A stage's outputs live in ``<run dir>/stages/<stage>/`` (or ``<profile dir>/stages/<stage>/``), with
``key.json`` written last: a result is fresh when ``key.json`` holds the key computed now and every
declared output exists. Keys are computed without running anything, so :func:`is_fresh` can tell
``reproduce`` (or a user) what would be recomputed.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from paperlib.config import paths
from paperlib.config.io import LockedError, exclusive, read_json, write_json
from paperlib.config.profiles import Profile, get_profile

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NEUTRAL_PREFIXES = ("paperlib.config",)
"""Modules left out of code digests (settings are keyed explicitly; paths and I/O change no number)."""


# ----------------------------------------------------------------------------------------------
# code digests
# ----------------------------------------------------------------------------------------------
def module_path(module: str) -> Path:
    """The source file of a ``paperlib`` module (``paperlib.metrics.ce`` → ``.../metrics/ce.py``)."""
    parts = module.split(".")
    if parts[0] != "paperlib":
        raise ValueError(f"{module!r} is not a paperlib module")
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    raise ValueError(f"no source file for module {module!r} under {PACKAGE_ROOT}")


def module_source(module: str) -> str:
    """The source text of a module (tests replace this to simulate an edit)."""
    return module_path(module).read_text()


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def native_sources(tree: ast.AST) -> tuple[str, ...]:
    """The files a module names in a top-level ``NATIVE_SOURCES = ("csrc/x.c", ...)`` (paths relative to it)."""
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NATIVE_SOURCES"
                                                for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


@functools.cache
def module_digest(module: str) -> str:
    """Digest of one module's code: its AST without docstrings (comments and layout never enter), and the bytes
    of the native sources it compiles (:func:`native_sources`)."""
    tree = _strip_docstrings(ast.parse(module_source(module)))
    h = hashlib.sha256(ast.dump(tree, include_attributes=False).encode())
    for rel in native_sources(tree):
        h.update(native_source(module, rel))
    return h.hexdigest()


def native_source(module: str, rel: str) -> bytes:
    """The bytes of a native source file named by ``module`` (tests replace this to simulate an edit)."""
    return module_path(module).parent.joinpath(rel).read_bytes()


def _is_module(name: str) -> bool:
    try:
        module_path(name)
        return True
    except ValueError:
        return False


@functools.cache
def package_imports(module: str) -> tuple[str, ...]:
    """The ``paperlib`` modules a module imports (``from paperlib.x import y`` counts ``paperlib.x.y``
    when that is a module, else ``paperlib.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(module_source(module))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("paperlib"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("paperlib"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if _is_module(sub) else node.module)
    return tuple(sorted(m for m in out if m != "paperlib" and _is_module(m)))


def code_closure(module: str) -> tuple[str, ...]:
    """``module`` and every ``paperlib`` module it imports transitively, minus :data:`NEUTRAL_PREFIXES`."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m.startswith(NEUTRAL_PREFIXES):
            continue
        seen.add(m)
        todo.extend(package_imports(m))
    return tuple(sorted(seen))


def code_digest(module: str) -> str:
    """Digest of the code a stage defined in ``module`` runs (:func:`code_closure`)."""
    h = hashlib.sha256()
    for m in code_closure(module):
        h.update(f"{m}:{module_digest(m)};".encode())
    return h.hexdigest()[:16]


def clear_digests() -> None:
    """Forget cached digests (after editing sources in a running process)."""
    module_digest.cache_clear()
    package_imports.cache_clear()


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """A cached computation, declared once (see the module docstring)."""

    name: str
    module: str
    settings: Callable[[Profile], dict[str, Any]]
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("result.json",)
    per_run: bool = True


STAGES: dict[str, Stage] = {}


def declare(name: str, module: str, settings: Callable[[Profile], dict[str, Any]], *, deps: tuple[str, ...] = (),
            outputs: tuple[str, ...] = ("result.json",), per_run: bool = True) -> Stage:
    """Register a stage (a module calls this at import time for each stage it defines)."""
    if name in STAGES and STAGES[name].module != module:
        raise ValueError(f"stage {name!r} is already declared by {STAGES[name].module}")
    unknown = [d for d in deps if d not in STAGES]
    if unknown:
        raise ValueError(f"stage {name!r} depends on undeclared stages {unknown}; declare those first")
    st = Stage(name, module, settings, tuple(deps), tuple(outputs), per_run)
    STAGES[name] = st
    return st


def _stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; declared stages: {', '.join(STAGES)}") from None


def _target(run: Any, profile: Profile | str | None) -> tuple[Profile, Any]:
    if run is not None:
        return run.profile, run
    if profile is None:
        raise ValueError("a per-profile stage needs the profile")
    return get_profile(profile), None


def stage_key(name: str, run: Any = None, profile: Profile | str | None = None) -> str:
    """The key stage ``name`` has now for ``run`` (per-run stages) or ``profile`` (per-profile stages)."""
    st = _stage(name)
    p, r = _target(run, profile)
    if st.per_run and r is None:
        raise ValueError(f"stage {name!r} is per run: pass the run")
    return digest({
        "stage": name, "code": code_digest(st.module), "run": r.key if st.per_run else None,
        "settings": st.settings(p),
        "deps": {d: stage_key(d, r if STAGES[d].per_run else None, p) for d in st.deps},
    })


def stage_dir(name: str, run: Any = None, profile: Profile | str | None = None) -> Path:
    """Where stage ``name``'s outputs live for ``run`` (or for ``profile`` if the stage is per profile)."""
    st = _stage(name)
    p, r = _target(run, profile)
    base = r.dir if st.per_run else paths.profile_dir(p)
    return base / "stages" / name


def is_fresh(name: str, run: Any = None, profile: Profile | str | None = None) -> bool:
    """True when the stored result was made by the current code, settings and inputs."""
    d = stage_dir(name, run, profile)
    key_path = d / "key.json"
    if not key_path.exists() or not all((d / f).exists() for f in _stage(name).outputs):
        return False
    try:
        return read_json(key_path).get("key") == stage_key(name, run, profile)
    except (ValueError, OSError):
        return False


def begin(name: str, run: Any = None, profile: Profile | str | None = None) -> Path:
    """Start (re)computing a stage: remove stale outputs and return the empty output directory."""
    d = stage_dir(name, run, profile)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


def commit(name: str, run: Any = None, profile: Profile | str | None = None, **info: Any) -> None:
    """Mark a stage's outputs complete: write ``key.json`` (last, atomically)."""
    d = stage_dir(name, run, profile)
    missing = [f for f in _stage(name).outputs if not (d / f).exists()]
    if missing:
        raise RuntimeError(f"stage {name!r} did not write its outputs {missing} in {d}")
    write_json(d / "key.json", {"key": stage_key(name, run, profile), "stage": name, **info})


T = TypeVar("T")
LOCK_POLL_S = 0.5
"""How often a process waiting for another process's stage lock tries again (seconds)."""


def lock_path(name: str, run: Any = None, profile: Profile | str | None = None) -> Path:
    """The lock file of stage ``name`` (beside its folder, which :func:`begin` empties)."""
    return stage_dir(name, run, profile).parent / f".{name}.lock"


@contextlib.contextmanager
def waiting_lock(path: Path, what: str, poll_s: float | None = None) -> Iterator[None]:
    """Hold :func:`~paperlib.config.io.exclusive` on ``path``, waiting (polling every ``poll_s`` s, default
    :data:`LOCK_POLL_S`) while another process holds it, instead of failing; says once on stderr whom it waits
    for (a silent wait looks like a hang)."""
    told = False
    while True:
        try:
            held = exclusive(path, what)
            held.__enter__()
        except LockedError as err:
            if not told:
                print(f"waiting for {what}: another process (pid {err.holder}) holds {path}; this one goes on when "
                      "it finishes", file=sys.stderr, flush=True)
                told = True
            time.sleep(LOCK_POLL_S if poll_s is None else poll_s)
            continue
        try:
            yield
        finally:
            held.__exit__(None, None, None)
        return


def ensure(name: str, run: Any, load: Callable[[Path], T], build: Callable[[], T], *,
           profile: Profile | str | None = None) -> T:
    """Stage ``name``'s result for ``run`` (or ``profile``): ``load(stage_dir)`` when fresh, else ``build()``
    (which computes, then writes between :func:`begin` and :func:`commit`) under the stage's lock, so two
    processes never build one result at once; one that waited for the other loads its result instead."""
    if is_fresh(name, run, profile):
        return load(stage_dir(name, run, profile))
    what = f"stage {name!r} of {run if run is not None else get_profile(profile).name}"
    with waiting_lock(lock_path(name, run, profile), what):
        if is_fresh(name, run, profile):  # built by the process we waited for
            return load(stage_dir(name, run, profile))
        return build()


def stale_stages(runs: list[Any], profile: Profile | str) -> dict[str, list[str]]:
    """For each declared stage, which of ``runs`` (or ``["<profile>"]``) would be recomputed."""
    p = get_profile(profile)
    out: dict[str, list[str]] = {}
    for name, st in STAGES.items():
        if st.per_run:
            out[name] = [r.name for r in runs if not is_fresh(name, r)]
        else:
            out[name] = [] if is_fresh(name, profile=p) else [p.name]
    return out
