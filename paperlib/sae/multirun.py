"""One pass over the activation stream trains many runs (issue 19, item 2).

Every run of a pass shares one stream of activation chunks (:mod:`paperlib.data.stream`): chunk g is read from
the cache, or produced by the language model, once, and handed to every run, so the read (or the LM's forward)
is paid once per pass instead of once per run. Each run keeps its own data order through a *shuffle buffer*:

- the buffer holds up to ``capacity = buffer_batches · B`` activation rows (fp16, as cached); each incoming chunk
  is appended, and while the buffer holds at least ``capacity`` rows a batch of B distinct rows is drawn uniformly
  (``torch.randperm`` from the run's own generator, seeded by the run's seed: runs that share a seed share their
  data order, as the per-run trainer does), the batch's slots are refilled from the buffer's tail (in sorted order:
  deterministic), and the run takes one macro step (:meth:`~paperlib.sae.trainer.Trainer.macro_step`, the per-run
  trainer's step);
- every run of a pass has the same B and capacity, so all buffers hold the same number of rows and the runs step in
  lock-step (each chunk gives every run the same number of steps);
- a run's result depends on its seed, the chunk stream and the pass settings only: training runs [A, B] in one
  pass gives A the bitwise same weights as a pass of [A] alone (tested). That is the *reference* for a one-pass
  run; its data order differs from :func:`~paperlib.sae.trainer.train_run`'s per-epoch permutation, so the two
  trainers' weights differ (statistically equivalent runs, not the same bits).

Length: ``total = max(1, round(train_epochs · (T // B)))`` primary steps, as the per-run trainer takes; the stream
runs over as many epochs of chunks as that needs (a run stops mid-chunk when it reaches ``total``; the buffer's
rows are the ``capacity`` rows read beyond the per-run trainer's epochs).

Checkpoints: after a chunk, a run whose step passed its last checkpoint by ``checkpoint_every`` saves one
safetensors file (its :meth:`~paperlib.sae.trainer.Trainer.state_tensors`, the buffer's rows and its generator
state) and then a JSON pointer (step, meta steps, stream position, metrics line count, configuration, pass
settings), both atomically. Runs resume independently: a pass restarts at the smallest stream position of its runs,
and a run whose checkpoint is further along waits for the stream to reach it. Resuming gives the bitwise same
weights as an uninterrupted pass in both modes (tested by interrupting). Ctrl-C (or the pool's stop signal) lets
the current chunk finish, checkpoints every unfinished run at the step it reached and then raises
:class:`KeyboardInterrupt` naming them; a second Ctrl-C stops at once (resume then starts from the last
checkpoints). Stream mode needs no activation cache;
``input_norm = "dim+token"`` needs statistics over the whole range before step 0 and is refused there.

Outputs per run (``<out_root>/<run>/``): ``sae/``, ``meta/``, ``metrics.jsonl``, ``config.json`` (with the pass's
settings under ``one_pass``), ``done.json``, the same files :func:`~paperlib.sae.trainer.train_run` writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from paperlib.config import paths
from paperlib.config.checks import NonFiniteError
from paperlib.config.interrupt import stop_after_step
from paperlib.config.io import (
    atomic_path,
    damaged,
    exclusive,
    provenance,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import cache_settings, load_cache
from paperlib.data.lm import load_lm
from paperlib.data.stream import (
    CacheSource,
    ChunkPlan,
    ChunkSource,
    LMSource,
    default_rows_per_chunk,
    train_tokens,
)
from paperlib.sae import kernels
from paperlib.sae.arms import RunSpec, parse_run
from paperlib.sae.trainer import TrainConfig, Trainer, check_loss, default_device, is_done

BUFFER_SEED_OFFSET = 3
"""The buffer generator of a run with seed s is seeded with ``s · 7919 + BUFFER_SEED_OFFSET``."""

_chunk_hook: Callable[[int], None] | None = None
"""Test hook: called as ``_chunk_hook(g)`` after stream position ``g`` was fed to every run (and checkpointed)."""


@dataclass(frozen=True)
class PassConfig:
    """The settings of a pass that change its runs' weights (with each run's own configuration)."""

    rows_per_chunk: int
    """Token rows per chunk (see :func:`paperlib.data.stream.default_rows_per_chunk`)."""
    buffer_batches: int = 8
    """Shuffle-buffer capacity in training batches (capacity = buffer_batches · batch_size rows per run)."""
    stream_seed: int = 0
    """Seed of the chunk order (shared by every run of the pass)."""

    def validate(self) -> None:
        bad = [f"{f}={getattr(self, f)} must be >= 1" for f in ("rows_per_chunk", "buffer_batches")
               if getattr(self, f) < 1]
        if self.stream_seed < 0:
            bad.append(f"stream_seed={self.stream_seed} must be >= 0")
        if bad:
            raise ValueError("invalid one-pass configuration: " + "; ".join(bad))


class ShuffleBuffer:
    """A run's shuffle buffer (see the module docstring); its state is its rows and its generator."""

    def __init__(self, capacity: int, batch_size: int, seed: int) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise ValueError(f"shuffle buffer: capacity={capacity} must be >= batch_size={batch_size} >= 1")
        self.capacity, self.B = int(capacity), int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed) * 7919 + BUFFER_SEED_OFFSET)
        self.rows: torch.Tensor | None = None
        self.n = 0

    def add(self, chunk: torch.Tensor) -> None:
        need = self.n + len(chunk)
        if self.rows is None or need > len(self.rows) or self.rows.shape[1:] != chunk.shape[1:]:
            grown = torch.empty((max(need, self.capacity + len(chunk)), *chunk.shape[1:]), dtype=chunk.dtype,
                                device=chunk.device)
            if self.rows is not None and self.n:
                grown[:self.n] = self.rows[:self.n]
            self.rows = grown
        self.rows[self.n:need] = chunk
        self.n = need

    def ready(self) -> bool:
        return self.n >= self.capacity

    def pop(self) -> torch.Tensor:
        """B distinct rows drawn uniformly (in buffer order); their slots are refilled from the tail."""
        if self.rows is None or self.n < self.B:
            raise RuntimeError(f"shuffle buffer holds {self.n} rows, fewer than a batch ({self.B})")
        n, keep = self.n, self.n - self.B
        sel = torch.randperm(n, generator=self.gen)[:self.B].sort().values
        dev = self.rows.device
        batch = self.rows[sel.to(dev)]
        holes = sel[sel < keep]
        tail_free = torch.ones(self.B, dtype=torch.bool)
        tail_free[sel[sel >= keep] - keep] = False
        movers = torch.arange(keep, n)[tail_free]
        self.rows[holes.to(dev)] = self.rows[movers.to(dev)]
        self.n = keep
        return batch

    def state_tensors(self) -> dict[str, torch.Tensor]:
        rows = self.rows[:self.n] if self.rows is not None else torch.empty(0, 0, dtype=torch.float16)
        return {"buffer.rows": rows.detach().cpu().contiguous().clone(), "buffer.rng": self.gen.get_state()}

    def load_state_tensors(self, t: dict[str, torch.Tensor], device: torch.device) -> None:
        rows = t["buffer.rows"].to(device)
        self.rows, self.n = (rows.clone(), len(rows)) if len(rows) else (None, 0)
        self.gen.set_state(t["buffer.rng"])


def _truncate_metrics(path: Path, n_lines: int) -> None:
    """Cut ``metrics.jsonl`` back to the lines its checkpoint recorded (fewer than that: a damaged log)."""
    lines = path.read_text(errors="replace").splitlines(keepends=True) if path.exists() else []
    keep = [ln for ln in lines[:n_lines] if ln.endswith("\n")]
    if len(keep) < n_lines:
        raise damaged(path, f"{len(keep)} complete lines, but the checkpoint was written after {n_lines}",
                      path.parent)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(keep))


class PassRun:
    """One run inside a pass: its trainer, buffer, stream position, log and checkpoints."""

    def __init__(self, spec: RunSpec, cfg: TrainConfig, out_dir: Path, pass_info: dict[str, Any],
                 capacity: int, total: int, device: torch.device) -> None:
        self.spec, self.cfg, self.dir, self.pass_info = spec, cfg, out_dir, pass_info
        self.trainer = Trainer(cfg, device)
        self.trainer.total_steps = total
        self.buffer = ShuffleBuffer(capacity, cfg.batch_size, cfg.seed)
        self.total, self.device = total, device
        self.position = 0
        self.metrics_lines = 0
        self.last_saved = 0
        self.log: Any = None

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoint"

    @property
    def done(self) -> bool:
        return self.trainer.step >= self.total

    def start(self, resume: bool, init_acts: Any) -> None:
        """Load the checkpoint (``resume``) or start fresh; open the training log."""
        metrics = self.dir / "metrics.jsonl"
        if not resume:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        if resume and (self.ckpt_dir / "checkpoint.json").exists():
            self.load_checkpoint()
            _truncate_metrics(metrics, self.metrics_lines)
        else:
            metrics.unlink(missing_ok=True)
            if self.cfg.input_norm != "token":
                if init_acts is None:
                    raise ValueError(f"run {self.spec.name!r}: input_norm={self.cfg.input_norm!r} needs the whole "
                                     "training range before step 0; train it from the activation cache, not in "
                                     "stream mode")
                self.trainer.init_input_standardisation(init_acts)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = open(metrics, "a")  # noqa: SIM115  (closed by finish / close)

    def feed(self, chunk: torch.Tensor, n_chunks: int) -> int:
        """Append a chunk and take every step it allows; return the number of steps taken."""
        self.buffer.add(chunk)
        steps = 0
        while self.buffer.ready() and not self.done:
            x = self.buffer.pop().to(self.device, torch.float32)
            t0 = time.perf_counter()
            rec = self.trainer.macro_step(x)
            check_loss(rec, self.spec.name, self.trainer.step)
            dt = time.perf_counter() - t0
            rec = dict(step=self.trainer.step, epoch=self.position // n_chunks, position=self.position,
                       tokens=self.trainer.step * self.cfg.batch_size, **rec,
                       tok_per_s=self.cfg.batch_size / max(dt, 1e-9))
            self.log.write(json.dumps(rec) + "\n")
            self.metrics_lines += 1
            steps += 1
        self.log.flush()
        self.position += 1
        return steps

    def checkpoint_due(self) -> bool:
        return self.trainer.step - self.last_saved >= self.cfg.checkpoint_every

    def save_checkpoint(self) -> None:
        t = self.trainer
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        fname = f"state-{t.step:09d}-{self.position:09d}.safetensors"
        with atomic_path(self.ckpt_dir / fname) as tmp:
            save_file({**t.state_tensors(), **self.buffer.state_tensors()}, str(tmp))
        write_json(self.ckpt_dir / "checkpoint.json", dict(
            file=fname, step=t.step, meta_steps=t.meta_steps, position=self.position,
            metrics_lines=self.metrics_lines, last_meta_mse=t.last_meta_mse,
            config=dataclasses.asdict(self.cfg), one_pass=self.pass_info))
        for old in self.ckpt_dir.glob("state-*.safetensors"):
            if old.name != fname:
                old.unlink(missing_ok=True)
        self.last_saved = t.step

    def load_checkpoint(self) -> None:
        meta = read_json(self.ckpt_dir / "checkpoint.json", delete=self.ckpt_dir)
        if meta.get("config") != dataclasses.asdict(self.cfg) or meta.get("one_pass") != self.pass_info:
            raise ValueError(f"checkpoint in {self.ckpt_dir} was written with another run or pass configuration; "
                             "delete it (or pass resume=False) to restart the run")
        path = self.ckpt_dir / str(meta.get("file"))
        try:
            tensors = load_file(str(path))
            self.trainer.load_state_tensors(tensors)
            self.buffer.load_state_tensors(tensors, self.device)
        except (SafetensorError, OSError, KeyError, RuntimeError) as err:
            raise damaged(path, f"damaged checkpoint ({type(err).__name__}: {err})", self.ckpt_dir) from None
        t = self.trainer
        t.step, t.meta_steps, t.last_meta_mse = int(meta["step"]), int(meta["meta_steps"]), float(meta["last_meta_mse"])
        self.position, self.metrics_lines = int(meta["position"]), int(meta["metrics_lines"])
        self.last_saved = t.step

    def finish(self, profile: Profile, source: ChunkSource) -> None:
        """Write the trained SAEs and the run's records (``done.json`` last); drop the checkpoint."""
        self.close()
        t = self.trainer
        t.primary.save(self.dir / "sae")
        if t.meta is not None:
            t.meta.save(self.dir / "meta")
        T = source.n_rows * source.per_row
        write_json(self.dir / "config.json", dict(
            run=self.spec.name, spec=dataclasses.asdict(self.spec), seed=self.spec.seed, profile=profile.as_dict(),
            train_config=dataclasses.asdict(self.cfg), device=str(self.device),
            input_standardisation=t.input_standardisation_summary(), one_pass=self.pass_info,
            kernels=kernels.describe(),
            tokens=dict(n_available=T, steps=self.total, tokens_seen=self.total * self.cfg.batch_size,
                        epochs=self.cfg.train_epochs, stream_positions=self.position, range="train"),
            **provenance()))
        write_json(self.dir / "done.json", dict(run=self.spec.name, steps=self.total, meta_steps=t.meta_steps,
                                                order="one-pass shuffle buffer"))
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def pass_info(pass_cfg: PassConfig, plan: ChunkPlan, source: ChunkSource) -> dict[str, Any]:
    """What a run's checkpoint and record say about its pass (a resume must find the same)."""
    return dict(**dataclasses.asdict(pass_cfg), plan=plan.as_dict(), source=source.kind, d=source.d)


def _check_done(out_dir: Path, cfg: TrainConfig, info: dict[str, Any]) -> None:
    rec = read_json(out_dir / "config.json", delete=out_dir) if (out_dir / "config.json").exists() else {}
    if rec.get("train_config", dataclasses.asdict(cfg)) != dataclasses.asdict(cfg) or \
            rec.get("one_pass", info) != info:
        raise ValueError(f"finished run {out_dir} was trained with another run or pass configuration; delete it to "
                         "retrain it")


def _read_chunk(source: ChunkSource, plan: ChunkPlan, g: int, device: torch.device) -> torch.Tensor:
    r0, r1 = plan.rows(g)
    chunk = source.read(r0, r1)
    if not bool(torch.isfinite(chunk).all()):
        bad = int((~torch.isfinite(chunk).all(dim=1)).sum())
        raise NonFiniteError(f"stream position {g} (token rows {r0}..{r1} of the training range, source "
                             f"{source.kind!r}): {bad} activation rows hold NaN or inf; nothing was marked done")
    return chunk.to(device)


def train_one_pass(profile: str | Profile, runs: Iterable[RunSpec | str], source: ChunkSource,
                   out_root: str | Path, *, pass_cfg: PassConfig, resume: bool = True, progress: bool = True,
                   max_steps: int | None = None, device: str | torch.device | None = None,
                   init_acts: Any = None) -> dict[str, Path]:
    """Train every run of ``runs`` not yet done in ``<out_root>/<run>/`` in one pass over ``source``; return run
    name → directory. ``max_steps`` stops at the first chunk boundary where every run reached it (checkpoints
    written, nothing marked done). ``init_acts`` (the cached training array) is needed only by runs with
    ``input_norm = "dim+token"``."""
    p = get_profile(profile)
    pass_cfg.validate()
    specs = list(dict.fromkeys(parse_run(r) if isinstance(r, str) else r for r in runs))
    if not specs:
        raise ValueError("runs: no run to train")
    plan = ChunkPlan(source.n_rows, pass_cfg.rows_per_chunk, source.per_row, pass_cfg.stream_seed)
    info = pass_info(pass_cfg, plan, source)
    out_root = Path(out_root)
    dev = torch.device(device) if device is not None else default_device()
    out = {s.name: out_root / s.name for s in specs}
    with contextlib.ExitStack() as stack:
        todo = []
        for s in specs:
            cfg = TrainConfig.from_profile(p, s, source.d)
            cfg.validate()
            d = out[s.name]
            if is_done(d):
                _check_done(d, cfg, info)
                continue
            stack.enter_context(exclusive(d / ".lock", f"run {s.name!r} ({d})"))
            for stale in (d, d / "checkpoint", d / "sae", d / "meta"):
                remove_stale_temporaries(stale)
            todo.append((s, cfg))
        if todo:
            _run_pass(p, todo, source, plan, info, pass_cfg, out, dev, resume, progress, max_steps, init_acts)
    return out


def _run_pass(p: Profile, todo: list[tuple[RunSpec, TrainConfig]], source: ChunkSource, plan: ChunkPlan,
              info: dict[str, Any], pass_cfg: PassConfig, out: dict[str, Path], dev: torch.device, resume: bool,
              progress: bool, max_steps: int | None, init_acts: Any) -> None:
    T = source.n_rows * source.per_row
    B = todo[0][1].batch_size
    if T < B:
        raise ValueError(f"only {T} activation rows in the training range, fewer than one batch ({B})")
    total = max(1, round(todo[0][1].train_epochs * (T // B)))
    states = [PassRun(s, cfg, out[s.name], info, pass_cfg.buffer_batches * B, total, dev) for s, cfg in todo]
    try:
        for st in states:
            st.start(resume, init_acts)
        _stream(p, states, source, plan, total, progress, max_steps)
    finally:
        for st in states:
            st.close()


def _stream(p: Profile, states: list[PassRun], source: ChunkSource, plan: ChunkPlan, total: int,
            progress: bool, max_steps: int | None) -> None:
    """The pass's loop: each stream position is read once and fed to every run that is at it."""
    g = min(st.position for st in states)
    bar = tqdm(total=total, initial=min(st.trainer.step for st in states), unit="step", disable=not progress,
               desc=f"one pass, {len(states)} runs ({source.kind})")
    active = list(states)
    with stop_after_step() as interrupt:
        while active:
            if max_steps is not None and all(st.trainer.step >= max_steps for st in active):
                _save_unsaved(active)
                break
            at_g = [st for st in active if st.position == g]
            if at_g:
                chunk = _read_chunk(source, plan, g, at_g[0].device)
                lead = max(st.trainer.step for st in active)
                for st in at_g:
                    st.feed(chunk, plan.n_chunks)
                    if st.done:
                        st.finish(p, source)
                    elif st.checkpoint_due():
                        st.save_checkpoint()
                bar.update(max(st.trainer.step for st in active) - lead)
            active = [st for st in active if not st.done]
            g += 1
            if _chunk_hook is not None:
                _chunk_hook(g)
            if interrupt.requested and active:  # at a chunk boundary: every unfinished run saves where it is
                _save_unsaved(active)
                bar.close()
                raise KeyboardInterrupt(
                    f"one pass stopped by {interrupt.signal_name} at stream position {g}: "
                    + ", ".join(f"{st.spec.name} after step {st.trainer.step} of {st.total}" for st in active)
                    + f"; their checkpoints are saved under {active[0].dir.parent} and the next call resumes there")
    bar.close()


def _save_unsaved(states: list[PassRun]) -> None:
    for st in states:
        if st.last_saved != st.trainer.step:
            st.save_checkpoint()


def profile_source(profile: str | Profile, *, stream: bool = False, progress: bool = True, lm: Any = None
                   ) -> ChunkSource:
    """The training range of ``profile`` as a chunk source: the activation cache (extracted first when missing) or,
    with ``stream``, the language model on the fly (no activation cache is read or written)."""
    p = get_profile(profile)
    if stream:
        model = lm if lm is not None else load_lm(p.data.model, dtype=p.data.lm_dtype)
        return LMSource(p, lm=model, tokens=stream_tokens(p, model.tokenizer, progress))
    return CacheSource(load_cache(p, progress=progress, lm=lm).acts("train"), p.data.context - int(p.data.drop_bos))


def stream_tokens(profile: str | Profile, tokenizer: Any, progress: bool = True) -> np.ndarray:
    """The training range's token rows for stream mode, tokenised once and kept in ``<one-pass dir>/tokens/``
    (int32, written atomically with the data settings they were made for; other settings rebuild them), so a
    resumed stream does not tokenise the corpus again. Small beside activations: 4 bytes per token."""
    p = get_profile(profile)
    root = one_pass_dir(p) / "tokens"
    settings = token_settings(p)
    rec = root / "tokens.json"
    if rec.exists() and read_json(rec, delete=root).get("settings") == settings:
        return np.load(root / "train.npy", mmap_mode="r")
    tokens = train_tokens(p, tokenizer, progress)
    with atomic_path(root / "train.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, tokens)
    write_json(rec, dict(settings=settings, shape=list(tokens.shape)))
    return np.load(root / "train.npy", mmap_mode="r")


def token_settings(profile: Profile) -> dict[str, Any]:
    """What determines the training range's tokens (the activation cache's settings minus the hook)."""
    s = cache_settings(profile)
    return {k: s[k] for k in ("model", "model_package_version", "corpus", "context", "row_spans")}


def default_pass_config(profile: str | Profile) -> PassConfig:
    """One training batch (rounded up to whole LM batches) per chunk, a buffer of 8 batches, chunk order seed 0."""
    return PassConfig(rows_per_chunk=default_rows_per_chunk(profile))


def one_pass_dir(profile: str | Profile) -> Path:
    """Where :func:`train_profile_one_pass` puts its runs by default: ``<profile dir>/one-pass/`` (apart from the
    per-run trainer's ``runs/``, whose results the pipeline's stages read: a one-pass run has another data order)."""
    return paths.profile_dir(profile) / "one-pass"


def train_profile_one_pass(profile: str | Profile, runs: Iterable[RunSpec | str], *, stream: bool = False,
                           out_root: str | Path | None = None, pass_cfg: PassConfig | None = None,
                           progress: bool = True, max_steps: int | None = None) -> dict[str, Path]:
    """:func:`train_one_pass` on the profile's training range (cache or stream mode, :func:`profile_source`)."""
    p = get_profile(profile)
    (pass_cfg := pass_cfg or default_pass_config(p)).validate()
    source = profile_source(p, stream=stream, progress=progress)
    init = source.acts if isinstance(source, CacheSource) else None
    return train_one_pass(p, runs, source, out_root or one_pass_dir(p), pass_cfg=pass_cfg,
                          progress=progress, max_steps=max_steps, init_acts=init)
