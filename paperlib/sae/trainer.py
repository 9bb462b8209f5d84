"""Training of the primary SAE, alone or jointly with a meta SAE (paper §3.3, method.md §1, §8).

What a run adds to the SAE loss is its arm's business (:mod:`paperlib.sae.arms`): every primary step
asks ``arm.penalty(...)`` for a loss term; arms with a meta SAE (``uses_meta``) get one, and those that
train it (``trains_meta``) run ``n_meta_steps`` meta steps on the detached current W_dec (own Adam)
after every block of ``n_primary_steps`` primary steps. Training starts with the primary.

Determinism: the seed fixes the primary init (seed), the meta init (seed + 1_000_003) and the data
order (a ``torch.randperm`` per epoch from a generator seeded by (seed, epoch)); solo seeds are
therefore fully independent. Step s of epoch e reads the permutation slice [j·B, (j+1)·B) (sorted,
for memmap locality), with j = s mod (T // B); the last partial batch of an epoch is dropped.
Total primary steps = max(1, round(train_epochs · (T // B))).

Checkpoints (every ``profile.sae.checkpoint_every`` primary steps, and when ``max_steps`` stops a run)
hold both models (with dead counters and running thresholds), both Adam states, the step counters,
the metrics line count and the torch RNG state, as one safetensors file plus a JSON pointer, each
written atomically. A run killed at any moment resumes from its last checkpoint and finishes with
weights bitwise identical to an uninterrupted run (data order and penalty partitions are stateless
functions of (seed, step)).

Input normalisation (``profile.sae.input_norm``): ``"token"`` is the reference per-token
standardisation. ``"dim+token"`` additionally standardises each dimension with the mean and
(population) std of the training activations, computed once before step 0 in fp64
(:func:`input_dim_stats`, chunked over the memory-mapped array) and stored in the primary SAE's
``input_mean`` / ``input_scale`` buffers, hence in every checkpoint and in ``sae/``. The meta SAE
never uses it. A finished run whose recorded configuration (``input_norm`` included) differs from
the profile's is rejected, not silently reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from paperlib.config.checks import NonFiniteError, nonfinite_error
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
from paperlib.config.memory import keep_freed_memory
from paperlib.config.profiles import INPUT_NORMS, Profile, get_profile
from paperlib.sae import kernels
from paperlib.sae.arms import PenaltyInputs, RunSpec, arm_of, parse_run
from paperlib.sae.models import BatchTopKSAE, MetaSAE

META_SEED_OFFSET = 1_000_003
TRAIN_PROFILE_FIELDS = ("n_latents", "k", "batch_size", "lr", "dead_after", "k_aux", "aux_alpha", "n_meta", "k_meta",
                        "n_primary_steps", "n_meta_steps", "ortho_chunks", "train_epochs", "input_norm",
                        "lr_warmup_frac", "lr_decay_frac", "meta_lr", "penalty_start_frac", "penalty_ramp_frac")
"""Profile fields that determine a run's weights (with the arm, the seed and the training data)."""
ADAM_BETAS = (0.9, 0.99)

# Test hook: called as _step_hook(step) after every completed primary step (incl. its meta steps).
_step_hook: Callable[[int], None] | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers (derived from Profile + RunSpec + data dim)."""

    arm: str
    lambda2: float
    sigma2: float
    gamma: float
    seed: int
    d_in: int
    n_latents: int
    k: int
    batch_size: int
    lr: float
    dead_after: int
    k_aux: int
    aux_alpha: float
    n_meta: int
    k_meta: int
    n_primary_steps: int
    n_meta_steps: int
    ortho_chunks: int
    train_epochs: float
    checkpoint_every: int
    input_norm: str = "token"
    lr_warmup_frac: float = 0.0
    """Linear learning-rate warm-up over this fraction of the primary steps (0: none)."""
    lr_decay_frac: float = 0.0
    """Linear decay of the learning rate to 0 over this final fraction of the primary steps (0: none)."""
    meta_lr: float | None = None
    """Adam learning rate of the meta SAE (None: the primary's ``lr``)."""
    penalty_start_frac: float = 0.0
    """The penalty weight is 0 before this fraction of the primary steps (the critic trains meanwhile)."""
    penalty_ramp_frac: float = 0.0
    """Then it rises linearly to its full value over this fraction of the primary steps."""

    @classmethod
    def from_profile(cls, profile: Profile, spec: RunSpec, d_in: int) -> TrainConfig:
        p = profile
        return cls(
            arm=spec.arm, lambda2=float(spec.lambda2), sigma2=float(spec.sigma2),
            gamma=float(spec.gamma), seed=int(spec.seed), d_in=int(d_in), n_latents=p.sae.n_latents,
            k=p.sae.k, batch_size=p.sae.batch_size, lr=p.sae.lr, dead_after=p.sae.dead_after, k_aux=p.sae.k_aux,
            aux_alpha=p.sae.aux_alpha, n_meta=p.meta.n_meta, k_meta=p.meta.k_meta,
            n_primary_steps=p.meta.n_primary_steps, n_meta_steps=p.meta.n_meta_steps,
            ortho_chunks=p.grid.ortho_chunks, train_epochs=p.sae.train_epochs,
            checkpoint_every=p.sae.checkpoint_every, input_norm=p.sae.input_norm,
            **{f: p.setting(f) for f in ("lr_warmup_frac", "lr_decay_frac", "meta_lr", "penalty_start_frac",
                                          "penalty_ramp_frac")},
        )

    @property
    def spec(self) -> RunSpec:
        return RunSpec(self.arm, lambda2=self.lambda2, sigma2=self.sigma2, gamma=self.gamma, seed=self.seed)

    @property
    def uses_meta(self) -> bool:
        return arm_of(self.arm).uses_meta

    def validate(self) -> None:
        """Raise ValueError listing every inconsistency (before any training happens)."""
        bad = []
        if self.d_in < 1:
            bad.append(f"d_in={self.d_in} must be >= 1")
        if not 1 <= self.k <= self.n_latents:
            bad.append(f"k={self.k} must be in [1, n_latents={self.n_latents}]")
        try:
            self.spec  # noqa: B018  (the arm validates its own hyper-parameters)
        except ValueError as err:
            bad.append(str(err))
        if self.batch_size < 1 or self.lr <= 0 or self.train_epochs <= 0:
            bad.append("batch_size, lr and train_epochs must be > 0")
        for f in ("lr_warmup_frac", "lr_decay_frac", "penalty_start_frac", "penalty_ramp_frac"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                bad.append(f"{f}={getattr(self, f)} must be in [0, 1]")
        if self.lr_warmup_frac + self.lr_decay_frac > 1.0:
            bad.append("lr_warmup_frac + lr_decay_frac must be <= 1")
        if self.meta_lr is not None and not self.meta_lr > 0:
            bad.append(f"meta_lr={self.meta_lr} must be > 0 (or None)")
        if self.checkpoint_every < 1 or self.dead_after < 1:
            bad.append("checkpoint_every and dead_after must be >= 1")
        if self.uses_meta:
            if not 1 <= self.k_meta <= self.n_meta:
                bad.append(f"k_meta={self.k_meta} must be in [1, n_meta={self.n_meta}]")
            if self.n_meta >= self.n_latents:
                bad.append(f"n_meta={self.n_meta} must be < n_latents={self.n_latents}")
            if self.n_primary_steps < 1 or self.n_meta_steps < 1:
                bad.append("n_primary_steps and n_meta_steps must be >= 1")
        if self.arm == "ortho" and self.ortho_chunks < 1:
            bad.append(f"ortho_chunks={self.ortho_chunks} must be >= 1")
        if self.input_norm not in INPUT_NORMS:
            bad.append(f"input_norm={self.input_norm!r} must be one of {', '.join(map(repr, INPUT_NORMS))}")
        if bad:
            raise ValueError("invalid training configuration: " + "; ".join(bad))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _recorded_config(rec: dict) -> dict:
    """A recorded TrainConfig dict, with fields added later filled with their old behaviour."""
    return {"input_norm": "token", **rec}


def input_dim_stats(acts: Any, chunk_rows: int | None = None,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population std (ddof = 0) of ``acts`` [T, d], both fp64 [d].

    Streams over row chunks (``acts`` may be a memmap / ndarray / tensor of any float dtype), each
    chunk converted to fp64 and merged with Chan et al.'s pairwise update (no E[x²] − E[x]²
    cancellation, which matters for dimensions whose mean is large against their std).
    """
    shape = tuple(acts.shape)
    if len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"activations must be a non-empty 2-D [T, d] array, got shape {shape}")
    T, d = shape
    rows = chunk_rows or max(1, (1 << 22) // max(d, 1))  # ~32 MB of fp64 per chunk
    n = 0
    mean = np.zeros(d, dtype=np.float64)
    m2 = np.zeros(d, dtype=np.float64)
    starts = range(0, T, rows)
    if progress:
        starts = tqdm(starts, desc="input stats", unit="chunk", leave=False)
    for s in starts:
        c = acts[s:s + rows]
        c = c.detach().cpu().double().numpy() if isinstance(c, torch.Tensor) else np.asarray(c, dtype=np.float64)
        nb = c.shape[0]
        mb = c.mean(axis=0)
        m2b = ((c - mb) ** 2).sum(axis=0)
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
        raise ValueError("activations contain non-finite values; cannot compute input statistics")
    return mean, np.sqrt(m2 / n)


def validate_data(acts: Any, cfg: TrainConfig) -> int:
    """Check the activation array against the config; return T (number of tokens)."""
    shape = tuple(acts.shape)
    if len(shape) != 2:
        raise ValueError(f"activations must be a 2-D [T, d] array, got shape {shape}")
    T, d = shape
    if d != cfg.d_in:
        raise ValueError(f"activation dim {d} != d_in {cfg.d_in} of the run configuration")
    if T < cfg.batch_size:
        raise ValueError(f"only {T} activation rows, fewer than one batch ({cfg.batch_size})")
    return T


class _Data:
    """Seed-determined, stateless batch order over an activation array [T, d]."""

    def __init__(self, acts: Any, seed: int, batch_size: int, device: torch.device) -> None:
        self.acts, self.seed, self.B, self.device = acts, seed, batch_size, device
        self.T = int(acts.shape[0])
        self.steps_per_epoch = self.T // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def perm(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch * 104_729 + 1)
            self._perm = (epoch, torch.randperm(self.T, generator=gen))
        return self._perm[1]

    def batch(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.steps_per_epoch)
        idx = np.sort(self.perm(epoch)[j * self.B:(j + 1) * self.B].numpy())
        if isinstance(self.acts, torch.Tensor):
            x = self.acts[torch.from_numpy(idx).to(self.acts.device)]
        else:
            x = torch.from_numpy(np.asarray(self.acts[idx]))
        return x.to(self.device, torch.float32)


def make_adam(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the project's betas, fused implementation (one pass over each parameter, about 5x
    faster than the multi-tensor default on CPU; the same update up to floating-point reassociation)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=ADAM_BETAS, fused=True)


def _adam_tensors(prefix: str, opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        st = opt.state.get(p, {})
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                out[f"{prefix}.{name}.{key}"] = val.detach().cpu().contiguous()
            else:  # older torch: python number step
                out[f"{prefix}.{name}.{key}"] = torch.tensor(float(val))
    return out


def _load_adam(prefix: str, opt: torch.optim.Optimizer, model: torch.nn.Module,
               tensors: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        st = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            full = f"{prefix}.{name}.{key}"
            if full in tensors:
                val = tensors[full]
                st[key] = val.to(p.device).clone()  # fused Adam keeps ``step`` beside the parameter
        if st:
            opt.state[p] = st


def lr_factor(step: int, total: int, warmup_frac: float, decay_frac: float) -> float:
    """Learning-rate multiplier at primary step ``step`` (0-based) of ``total``: a linear warm-up over the
    first ``round(warmup_frac·total)`` steps, 1, then a linear decay to 0 over the last
    ``round(decay_frac·total)`` steps. A stateless function of the step, so resuming is exact."""
    w, d = round(warmup_frac * total), round(decay_frac * total)
    if w and step < w:
        return (step + 1) / w
    if d and step >= total - d:
        return max(0.0, (total - step) / d)
    return 1.0


def penalty_factor(step: int, total: int, start_frac: float, ramp_frac: float) -> float:
    """Penalty-weight multiplier at primary step ``step``: 0 before ``round(start_frac·total)`` (the critic
    trains alone), then a linear ramp to 1 over ``round(ramp_frac·total)`` steps, then 1."""
    s, r = round(start_frac * total), round(ramp_frac * total)
    if step < s:
        return 0.0
    if r and step < s + r:
        return (step - s + 1) / r
    return 1.0


class Trainer:
    """One run's models, optimisers and step loop (use :func:`train_run`)."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        cfg.validate()
        keep_freed_memory()  # steps reuse the previous step's buffers' pages (~3 ms of page faults a step otherwise)
        self.cfg, self.device = cfg, device
        self.spec = cfg.spec
        self.arm = self.spec.arm_def
        self.primary = BatchTopKSAE(cfg.d_in, cfg.n_latents, cfg.k, seed=cfg.seed,
                                    dead_after=cfg.dead_after, k_aux=cfg.k_aux,
                                    aux_alpha=cfg.aux_alpha, device=device)
        self.opt_p = make_adam(self.primary, cfg.lr)
        self.meta: MetaSAE | None = None
        self.opt_m: torch.optim.Optimizer | None = None
        if cfg.uses_meta:
            self.meta = MetaSAE(cfg.d_in, cfg.n_meta, cfg.k_meta, seed=cfg.seed + META_SEED_OFFSET,
                                dead_after=cfg.dead_after, k_aux=cfg.k_aux,
                                aux_alpha=cfg.aux_alpha, device=device)
            self.opt_m = make_adam(self.meta, cfg.meta_lr or cfg.lr)
        self.step = 0  # completed primary steps
        self.total_steps = 0
        """Primary steps of the whole run (set by :func:`train_run`; schedules need it)."""
        self.meta_steps = 0
        self.last_meta_mse = float("nan")

    def init_input_standardisation(self, acts: Any, progress: bool = False) -> None:
        """For ``input_norm="dim+token"``: set the primary SAE's per-dimension standardisation from
        ``acts`` (:func:`input_dim_stats`; constant dimensions get scale 1). Must run before step 0;
        a no-op for ``"token"``."""
        if self.cfg.input_norm == "token":
            return
        if self.step != 0:
            raise RuntimeError("input standardisation must be set before the first training step")
        mean, std = input_dim_stats(acts, progress=progress)
        scale = np.where(std > 0, std, 1.0)
        self.primary.set_input_standardisation(torch.from_numpy(mean), torch.from_numpy(scale))

    def input_standardisation_summary(self) -> dict:
        """What the primary SAE's per-dim standardisation is (for the run's config.json)."""
        sae = self.primary
        if sae.input_standardisation == "none":
            return dict(kind="none")
        mean = sae.input_mean.detach().cpu().double().numpy()
        scale = sae.input_scale.detach().cpu().double().numpy()
        return dict(kind=sae.input_standardisation,
                    stats="per-dimension mean and population std (fp64) of the training activations",
                    mean_abs_max=float(np.abs(mean).max()), scale_min=float(scale.min()),
                    scale_median=float(np.median(scale)), scale_max=float(scale.max()))

    # -- steps ----------------------------------------------------------------------------------
    def penalty(self) -> tuple[torch.Tensor | None, dict[str, float], float]:
        """The arm's loss term on the current decoder (``None``: none), its log values and the schedule factor."""
        cfg = self.cfg
        scale = penalty_factor(self.step, self.total_steps, cfg.penalty_start_frac, cfg.penalty_ramp_frac)
        term, rec = self.arm.penalty(self.spec, PenaltyInputs(W_dec=self.primary.W_dec, meta=self.meta, step=self.step,
                                                                n_chunks=cfg.ortho_chunks, scale=scale))
        return term, rec, scale

    def primary_step(self, x: torch.Tensor) -> dict[str, float]:
        cfg, sae = self.cfg, self.primary
        self.opt_p.zero_grad(set_to_none=True)
        out = sae.training_loss(x)
        loss = out["loss"]
        term, rec, scale = self.penalty()
        if term is not None:
            loss = loss + term
        lr = cfg.lr * lr_factor(self.step, self.total_steps, cfg.lr_warmup_frac, cfg.lr_decay_frac)
        for group in self.opt_p.param_groups:
            group["lr"] = lr
        loss.backward()
        sae.project_decoder_grad()
        self.opt_p.step()
        sae.renorm_decoder()
        rec.update(lr=lr, penalty_scale=scale, loss=float(loss.detach()), mse=float(out["mse"]), aux=float(out["aux"]),
                   l0=float(out["l0"]), dead=int(sae.dead_mask().sum()))
        return rec

    def meta_step(self, rows: torch.Tensor | None = None) -> float:
        """One Adam step of the meta SAE on the detached decoder rows; ``rows``: their standardisation
        (:meth:`MetaSAE.standardise_rows`), which the meta phase computes once for its n_m steps."""
        assert self.meta is not None and self.opt_m is not None
        self.opt_m.zero_grad(set_to_none=True)
        out = self.meta.rows_loss(self.primary.W_dec, standardised=rows)
        out["loss"].backward()
        self.meta.project_decoder_grad()
        self.opt_m.step()
        self.meta.renorm_decoder()
        self.meta_steps += 1
        return float(out["mse"])

    def macro_step(self, x: torch.Tensor) -> dict[str, float]:
        """One primary step, followed by the meta phase when a block of n_p primary steps ends."""
        return self.end_step(self.primary_step(x))

    def end_step(self, rec: dict[str, float]) -> dict[str, float]:
        """Count a finished primary step; at the end of a block of n_p steps, the meta phase (logged in ``rec``)."""
        self.step += 1
        if self.meta is not None and self.arm.trains_meta and self.step % self.cfg.n_primary_steps == 0:
            rows = self.meta.standardise_rows(self.primary.W_dec)  # the rows stay fixed during the meta phase
            for _ in range(self.cfg.n_meta_steps):
                self.last_meta_mse = self.meta_step(rows)
            rec["meta_mse"] = self.last_meta_mse
            rec["meta_dead"] = int(self.meta.dead_mask().sum())
        return rec

    # -- checkpoints ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"primary.{k}": v.detach().cpu().contiguous() for k, v in self.primary.state_dict().items()}
        t.update(_adam_tensors("opt_p", self.opt_p, self.primary))
        if self.meta is not None:
            t.update({f"meta.{k}": v.detach().cpu().contiguous() for k, v in self.meta.state_dict().items()})
            t.update(_adam_tensors("opt_m", self.opt_m, self.meta))
        t["rng.torch"] = torch.get_rng_state()
        return t

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        self.primary.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("primary.")})
        _load_adam("opt_p", self.opt_p, self.primary, t)
        if self.meta is not None:
            self.meta.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("meta.")})
            _load_adam("opt_m", self.opt_m, self.meta, t)
        torch.set_rng_state(t["rng.torch"])

    def save_checkpoint(self, ckpt_dir: Path, metrics_lines: int) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        fname = f"state-{self.step:09d}.safetensors"
        with atomic_path(ckpt_dir / fname) as tmp:
            save_file(self.state_tensors(), str(tmp))
        write_json(ckpt_dir / "checkpoint.json", dict(
            file=fname, step=self.step, meta_steps=self.meta_steps, metrics_lines=metrics_lines,
            last_meta_mse=self.last_meta_mse, config=dataclasses.asdict(self.cfg),
        ))
        for old in ckpt_dir.glob("state-*.safetensors"):
            if old.name != fname:
                old.unlink(missing_ok=True)

    def load_checkpoint(self, ckpt_dir: Path) -> int:
        """Restore from ``ckpt_dir``; return the metrics line count recorded with it."""
        meta = read_json(ckpt_dir / "checkpoint.json", delete=ckpt_dir)
        if _recorded_config(meta["config"]) != dataclasses.asdict(self.cfg):
            raise ValueError(
                f"checkpoint in {ckpt_dir} was written with a different configuration; "
                "delete the run directory or pass resume=False"
            )
        path = ckpt_dir / str(meta.get("file"))
        try:
            self.load_state_tensors(load_file(str(path)))
        except (SafetensorError, OSError, KeyError, RuntimeError) as err:
            raise damaged(path, f"damaged checkpoint ({type(err).__name__}: {err}); the run restarts from step 0 "
                          "once it is gone", ckpt_dir) from None
        self.step, self.meta_steps = int(meta["step"]), int(meta["meta_steps"])
        self.last_meta_mse = float(meta["last_meta_mse"])
        return int(meta["metrics_lines"])


def _truncate_lines(path: Path, n_lines: int) -> None:
    """Cut ``metrics.jsonl`` back to the ``n_lines`` lines its checkpoint recorded (steps logged after the
    checkpoint are re-run). Fewer complete lines than that would leave a silent gap: refused, naming the file."""
    lines = path.read_text(errors="replace").splitlines(keepends=True) if path.exists() else []
    keep = [ln for ln in lines[:n_lines] if ln.endswith("\n")]
    if len(keep) < n_lines:
        raise damaged(path, f"{len(keep)} complete lines, but the checkpoint was written after {n_lines}; resuming "
                      "would leave a gap in the training log", path.parent)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(keep))


def is_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / "done.json").exists()


RESULT_NEUTRAL_FIELDS = ("checkpoint_every",)
"""TrainConfig fields that do not change a finished run's weights (ignored by the stale-run check)."""


def _check_done_data(out_dir: Path, recorded: Any, data_info: dict | None) -> None:
    """A finished run trained on other data (another model, layer, corpus or token range: ``data_info["data"]``)
    is refused, never evaluated on activations it was not trained for."""
    wanted = (data_info or {}).get("data")
    had = (recorded or {}).get("data") if isinstance(recorded, dict) else None
    if wanted is not None and had is not None and had != wanted:
        diff = sorted(k for k in set(had) | set(wanted) if had.get(k) != wanted.get(k))
        raise ValueError(f"finished run {out_dir} was trained on other activations ({', '.join(diff)} differ: "
                         f"trained {[had.get(k) for k in diff]}, requested {[wanted.get(k) for k in diff]}); "
                         "delete the run directory to retrain it for these settings")


def _check_done_config(out_dir: Path, profile: Profile, spec: RunSpec, data_info: dict | None = None) -> None:
    """A finished run trained with another configuration (profile edited since) or on other data is not reused
    silently: every recorded TrainConfig field except :data:`RESULT_NEUTRAL_FIELDS` must match, and so must
    the recorded data settings when ``data_info`` carries them."""
    cfg_path = out_dir / "config.json"
    record = read_config_file(out_dir) if cfg_path.exists() else {}
    _check_done_data(out_dir, record.get("tokens"), data_info)
    rec = record.get("train_config")
    if not isinstance(rec, dict):
        return
    recorded = _recorded_config(rec)  # fields missing from an old record: their old behaviour, or skipped
    wanted = dataclasses.asdict(TrainConfig.from_profile(profile, spec, int(recorded.get("d_in", 0))))
    diff = [k for k, v in wanted.items() if k in recorded and k not in RESULT_NEUTRAL_FIELDS and recorded[k] != v]
    if diff:
        raise ValueError(
            f"finished run {out_dir} was trained with "
            + ", ".join(f"{k}={recorded[k]!r}" for k in diff)
            + f", but profile {profile.name!r} now gives " + ", ".join(f"{k}={wanted[k]!r}" for k in diff)
            + "; delete the run directory (and its evaluation outputs) to retrain it"
        )


def check_batch(x: torch.Tensor, acts: Any, run: str, step: int) -> None:
    """Refuse a training batch holding NaN / inf before it reaches the weights: name the run, the step, the
    batch's bad rows and every bad row of ``acts`` (scanned only on this error path)."""
    if bool(torch.isfinite(x).all()):
        return
    n_bad = int((~torch.isfinite(x).all(dim=1)).sum())
    raise nonfinite_error(acts, f"run {run!r}, step {step}: {n_bad} rows of the training batch hold NaN or inf; "
                          "the training activations",
                          "nothing was marked done. Delete the activation cache and re-extract it (or fix the "
                          "array passed as acts)")


def check_loss(rec: dict, run: str, step: int) -> None:
    """Stop a run whose loss became NaN / inf (before the step is logged or checkpointed)."""
    bad = {k: rec[k] for k in ("loss", "mse") if k in rec and not np.isfinite(rec[k])}
    if bad:
        raise NonFiniteError(f"run {run!r}, step {step}: non-finite training loss ({bad}) from finite inputs; "
                             "the last checkpoint is kept and nothing was marked done. Lower lr or check the "
                             "profile, then delete the run directory and retrain")


def train_run(
    profile: str | Profile,
    spec: RunSpec | str,
    acts: Any,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    d_in: int | None = None,
    data_info: dict | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Train one run into ``out_dir`` (skipped when ``done.json`` exists); return ``out_dir``.

    ``acts``: [T, d] activations (np.memmap / ndarray / tensor, any float dtype). ``d_in``, when
    given, must equal d. ``max_steps`` stops after that many primary steps in total (a
    checkpoint is written; the run is not marked done). ``data_info`` is recorded in config.json
    (token range name, offsets, ...).
    """
    profile = get_profile(profile)
    spec = parse_run(spec) if isinstance(spec, str) else spec
    out_dir = Path(out_dir)
    if is_done(out_dir):
        _check_done_config(out_dir, profile, spec, data_info)
        return out_dir
    if len(tuple(acts.shape)) != 2:
        raise ValueError(f"activations must be a 2-D [T, d] array, got shape {tuple(acts.shape)}")
    d = int(acts.shape[1])
    if d_in is not None and d_in != d:
        raise ValueError(f"activation dim {d} != d_in {d_in}")
    cfg = TrainConfig.from_profile(profile, spec, d)
    cfg.validate()
    validate_data(acts, cfg)
    dev = torch.device(device) if device is not None else default_device()
    with exclusive(out_dir / ".lock", f"run {spec.name!r} ({out_dir})"):
        if is_done(out_dir):  # another process finished it while this one waited
            return out_dir
        for stale in (out_dir, out_dir / "checkpoint", out_dir / "sae", out_dir / "meta"):
            remove_stale_temporaries(stale)
        return _train_locked(profile, spec, cfg, acts, out_dir, dev, resume=resume, progress=progress,
                             max_steps=max_steps, data_info=data_info)


def metrics_line(step: int, steps_per_epoch: int, batch_size: int, rec: dict, seconds: float) -> dict:
    """One ``metrics.jsonl`` record: position in the data, the step's values, and its speed."""
    return dict(step=step, epoch=(step - 1) // steps_per_epoch, tokens=step * batch_size, **rec,
                tok_per_s=batch_size / max(seconds, 1e-9))


def penalty_start_step(cfg: TrainConfig, total: int) -> int:
    """Primary steps before the penalty schedule's factor first exceeds 0 (out of ``total``)."""
    s = 0
    while s < total and penalty_factor(s, total, cfg.penalty_start_frac, cfg.penalty_ramp_frac) == 0:
        s += 1
    return s


SHARED_STEP_FIELDS = ("lr", "penalty_scale", "loss", "mse", "aux", "l0", "dead")
"""Values a primary step logs about the primary SAE (the same for every run of a shared prefix)."""


def not_started(out_dir: str | Path) -> bool:
    """Neither finished nor checkpointed: a run that :func:`train_shared_prefix` may start."""
    out_dir = Path(out_dir)
    return not is_done(out_dir) and not (out_dir / "checkpoint" / "checkpoint.json").exists()


def train_shared_prefix(profile: str | Profile, specs: list[RunSpec | str], acts: Any, out_dirs: list[str | Path], *,
                        d_in: int | None = None, device: str | torch.device | None = None,
                        progress: bool = False) -> list[Path]:
    """Train the first steps that runs of one seed share, once, and leave each run a checkpoint at their end.

    Runs of one seed start from the same primary SAE and read the same batches. An arm whose penalty follows
    the schedule (``Arm.scheduled_penalty``: solo, joint, control, random critic) adds no loss term while the
    schedule's factor is 0, so its primary SAE takes exactly the solo run's steps until the penalty starts
    (step s0, :func:`penalty_start_step`). Here one primary SAE takes those s0 steps for all the runs, while
    each run's meta SAE computes its penalty log on the shared decoder before every step and trains after
    every block, as it would alone. Each run is left with a checkpoint at step s0 and its s0 metrics lines;
    :func:`train_run` resumes from there. Weights and metrics (bar the ``tok_per_s`` timing) equal those of
    training each run alone (tested). Runs already finished or with a checkpoint are left alone; with fewer
    than two fresh eligible runs nothing is done. A kill during the shared steps leaves nothing behind.
    Returns the run directories that received a checkpoint.
    """
    profile = get_profile(profile)
    specs = [parse_run(s) if isinstance(s, str) else s for s in specs]
    out_dirs = [Path(o) for o in out_dirs]
    if len(specs) != len(out_dirs):
        raise ValueError(f"{len(specs)} runs but {len(out_dirs)} output directories")
    if len({s.seed for s in specs}) > 1:
        raise ValueError(f"a shared prefix needs runs of one seed, got seeds {sorted({s.seed for s in specs})}")
    if len(tuple(acts.shape)) != 2:
        raise ValueError(f"activations must be a 2-D [T, d] array, got shape {tuple(acts.shape)}")
    d = int(acts.shape[1])
    if d_in is not None and d_in != d:
        raise ValueError(f"activation dim {d} != d_in {d_in}")
    group = [(s, TrainConfig.from_profile(profile, s, d), o) for s, o in zip(specs, out_dirs, strict=True)
             if s.arm_def.scheduled_penalty and not_started(o)]
    if len(group) < 2:
        return []
    for _, cfg, _ in group:
        cfg.validate()
    validate_data(acts, group[0][1])
    dev = torch.device(device) if device is not None else default_device()
    with ExitStack() as locks:
        for spec, _, o in group:
            o.mkdir(parents=True, exist_ok=True)
            locks.enter_context(exclusive(o / ".lock", f"run {spec.name!r} ({o})"))
        group = [g for g in group if not_started(g[2])]  # another process may have started one meanwhile
        if len(group) < 2:
            return []
        for _, _, o in group:
            for stale in (o, o / "checkpoint", o / "sae", o / "meta"):
                remove_stale_temporaries(stale)
        _shared_prefix_locked(group, acts, dev, progress)
    return [o for _, _, o in group]


def _shared_prefix_locked(group: list[tuple[RunSpec, TrainConfig, Path]], acts: Any, dev: torch.device,
                          progress: bool) -> None:
    """The body of :func:`train_shared_prefix`, run while holding every run's lock."""
    trainers = [Trainer(cfg, dev) for _, cfg, _ in group]
    lead, cfg, name = trainers[0], group[0][1], group[0][0].name
    data = _Data(acts, cfg.seed, cfg.batch_size, dev)
    total = max(1, round(cfg.train_epochs * data.steps_per_epoch))
    s0 = penalty_start_step(cfg, total)
    lead.init_input_standardisation(acts, progress=progress)
    for t in trainers:
        t.total_steps = total
    for t in trainers[1:]:  # one primary SAE and optimiser for all
        t.primary, t.opt_p = lead.primary, lead.opt_p
    lines: list[list[str]] = [[] for _ in trainers]
    with stop_after_step() as interrupt:
        for _ in tqdm(range(s0), desc=f"shared steps of seed {cfg.seed} ({len(trainers)} runs)",
                      disable=not progress):
            if interrupt.requested:  # nothing is written before the shared steps end: the runs start afresh
                raise KeyboardInterrupt(f"shared first steps of seed {cfg.seed} stopped by {interrupt.signal_name} "
                                        f"at step {lead.step} of {s0}; nothing was saved, the next call starts them "
                                        "again")
            _shared_step(trainers, data, acts, name, cfg, lines)
    for (_, _, o), t, out in zip(group, trainers, lines, strict=True):
        with atomic_path(o / "metrics.jsonl") as tmp:
            tmp.write_text("".join(out))
        t.save_checkpoint(o / "checkpoint", len(out))


def _shared_step(trainers: list[Trainer], data: Any, acts: Any, name: str, cfg: TrainConfig,
                 lines: list[list[str]]) -> None:
    """One shared primary step of :func:`_shared_prefix_locked`, logged for every run of the group."""
    lead = trainers[0]
    t0 = time.perf_counter()
    x = data.batch(lead.step)
    check_batch(x, acts, name, lead.step)
    logs = []
    for t in trainers[1:]:  # each run's penalty log on the decoder before this step's update
        term, log, scale = t.penalty()
        if term is not None or scale != 0:
            raise RuntimeError(f"run {t.spec.name}: a penalty term before the schedule starts (step {t.step})")
        logs.append(log)
    rec = lead.macro_step(x)
    check_loss(rec, name, lead.step)
    shared = {k: rec[k] for k in SHARED_STEP_FIELDS}
    recs = [rec] + [t.end_step({**log, **shared}) for t, log in zip(trainers[1:], logs, strict=True)]
    dt = time.perf_counter() - t0
    for out, r in zip(lines, recs, strict=True):
        out.append(json.dumps(metrics_line(lead.step, data.steps_per_epoch, cfg.batch_size, r, dt)) + "\n")


def _train_locked(profile: Profile, spec: RunSpec, cfg: TrainConfig, acts: Any, out_dir: Path, dev: torch.device, *,
                  resume: bool, progress: bool, max_steps: int | None, data_info: dict | None) -> Path:
    """The body of :func:`train_run`, run while holding the run's lock."""
    T = int(acts.shape[0])
    ckpt_dir, metrics_path = out_dir / "checkpoint", out_dir / "metrics.jsonl"
    if not resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        metrics_path.unlink(missing_ok=True)
    trainer = Trainer(cfg, dev)
    metrics_lines = 0
    if resume and (ckpt_dir / "checkpoint.json").exists():
        metrics_lines = trainer.load_checkpoint(ckpt_dir)  # incl. the input standardisation buffers
    else:
        trainer.init_input_standardisation(acts, progress=progress)
    if metrics_lines:
        _truncate_lines(metrics_path, metrics_lines)
    else:
        metrics_path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = _Data(acts, cfg.seed, cfg.batch_size, dev)
    total = max(1, round(cfg.train_epochs * data.steps_per_epoch))
    trainer.total_steps = total
    stop = total if max_steps is None else min(total, max_steps)
    bar = None
    if progress:
        bar = tqdm(total=total, initial=trainer.step, desc=spec.name, unit="step")
    with open(metrics_path, "a") as mf, stop_after_step() as interrupt:
        while trainer.step < stop:
            t0 = time.perf_counter()
            x = data.batch(trainer.step)
            check_batch(x, acts, spec.name, trainer.step)
            rec = trainer.macro_step(x)
            check_loss(rec, spec.name, trainer.step)
            rec = metrics_line(trainer.step, data.steps_per_epoch, cfg.batch_size, rec, time.perf_counter() - t0)
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            metrics_lines += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mse=f"{rec['mse']:.4f}", dead=rec["dead"],
                                tok_s=f"{rec['tok_per_s']:.0f}")
            if _step_hook is not None:
                _step_hook(trainer.step)
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == stop < total or interrupt.requested:
                trainer.save_checkpoint(ckpt_dir, metrics_lines)
            if interrupt.requested:
                if bar is not None:
                    bar.close()
                raise KeyboardInterrupt(f"run {spec.name} stopped by {interrupt.signal_name} after step {trainer.step} "
                                        f"of {total}; its checkpoint is saved in {ckpt_dir} and the next call resumes "
                                        "there")
    if bar is not None:
        bar.close()
    if trainer.step < total:
        return out_dir

    trainer.primary.save(out_dir / "sae")
    if trainer.meta is not None:
        trainer.meta.save(out_dir / "meta")
    write_json(out_dir / "config.json", dict(
        run=spec.name, spec=dataclasses.asdict(spec), seed=spec.seed, profile=profile.as_dict(),
        train_config=dataclasses.asdict(cfg), device=str(dev),
        input_standardisation=trainer.input_standardisation_summary(), kernels=kernels.describe(),
        tokens=dict(n_available=T, steps=total, tokens_seen=total * cfg.batch_size,
                    epochs=cfg.train_epochs, **(data_info or {})),
        **provenance(),
    ))
    write_json(out_dir / "done.json", dict(run=spec.name, steps=total, meta_steps=trainer.meta_steps))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir


def load_trained_sae(out_dir: str | Path, device: str | torch.device = "cpu") -> BatchTopKSAE:
    """The primary SAE of a finished run directory."""
    out_dir = Path(out_dir)
    if not is_done(out_dir):
        raise FileNotFoundError(f"run {out_dir} is not trained (no done.json)")
    return BatchTopKSAE.load(out_dir / "sae", device=device)


def load_trained_meta(out_dir: str | Path, device: str | torch.device = "cpu") -> MetaSAE:
    """The meta SAE of a finished run directory whose arm has one."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta" / "config.json").exists():
        raise FileNotFoundError(f"run {out_dir} has no meta SAE (its arm trains none, or it is not trained)")
    return MetaSAE.load(out_dir / "meta", device=device)


def read_metrics_file(out_dir: str | Path) -> list[dict]:
    """Per-step metrics records of a run directory (``metrics.jsonl``)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    try:
        records = [json.loads(ln) for ln in lines]
    except json.JSONDecodeError as err:
        raise damaged(path, f"damaged line in the training log ({err})", out_dir) from None
    done = Path(out_dir) / "done.json"
    steps = int(read_json(done, delete=out_dir).get("steps", 0)) if done.exists() else 0
    if len(records) < steps:
        raise damaged(path, f"{len(records)} records, but the finished run took {steps} steps (truncated log)",
                      out_dir)
    return records


def read_config_file(out_dir: str | Path) -> dict:
    """The ``config.json`` recorded next to a finished run (a damaged one raises, naming the run to delete)."""
    return read_json(Path(out_dir) / "config.json", delete=out_dir)
