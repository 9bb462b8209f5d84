"""Small profiles and helpers shared by tests."""

from __future__ import annotations

from paperlib.config.profiles import TokenBudget, get_profile


def tiny_profile(**changes):
    """A seconds-fast profile on the random tiny SmolLM2-architecture model."""
    base = dict(
        model="tiny-smollm2", layer=2, context=32, lm_batch_size=8,
        tokens=TokenBudget(train=2048, calibration=512, cooccurrence=512, autointerp=512, ce=256),
    )
    base.update(changes)
    return get_profile("smoke", **base)

