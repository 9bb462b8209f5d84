"""The README's library example runs as written (on a tiny profile instead of ``default``)."""

from __future__ import annotations

import re
from pathlib import Path

from paperlib.config.profiles import TokenBudget, get_profile

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_artifacts):
    text = README.read_text()
    block = re.search(r"## Using the library\n```python\n(.*?)```", text, re.S)[1]
    tiny = get_profile("smoke", model="tiny-smollm2", layer=2, context=32, lm_batch_size=8, n_latents=64, k=4,
                       n_meta=8, k_meta=2, batch_size=128, train_epochs=1.0,
                       tokens=TokenBudget(train=2048, calibration=512, cooccurrence=512, autointerp=512, ce=256))
    code = block.replace('get_profile("default")', "TINY")
    assert code != block
    scope = {"TINY": tiny}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    assert scope["run"].name == "joint-l0.3-s1"
    assert scope["sae"].W_dec.shape == (64, scope["sae"].W_dec.shape[1])
    assert scope["stats"].all.n_pairs == 64 * 63 // 2
