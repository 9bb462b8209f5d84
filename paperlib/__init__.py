"""MetaSAE reproduction library.

Sub-packages follow the data path, and each imports only the ones listed before it:

- :mod:`paperlib.config` — profiles (what to run), paths (where results live), atomic I/O;
- :mod:`paperlib.data` — corpus → token rows, language models, the on-disk activation cache;
- :mod:`paperlib.sae` — BatchTopK / meta SAEs, penalties, the arm registry, the trainer, export;
- :mod:`paperlib.metrics` — pure array-in metrics: calibration, co-occurrence φ, reconstruction, CE,
  statistics, matching;
- :mod:`paperlib.autointerp` — contexts, explainers and fuzzing scorers, judges;
- :mod:`paperlib.stages` — the cached pipeline stages (the only layer that knows profiles, paths and
  caches at once);
- :mod:`paperlib.report` — figures, tables and the summary, computed from stage results;
- :mod:`paperlib.reproduce` — ``make reproduce``.

The public API below is importable from ``paperlib`` itself; ``paperlib.models``,
``paperlib.penalty``, ``paperlib.cooccurrence`` and ``paperlib.stats`` name the modules that define it.
"""

import sys

from paperlib.config.profiles import PROFILES, Profile, get_profile
from paperlib.metrics import cooccurrence, stats
from paperlib.metrics.cooccurrence import Counts, count, excess_abs_phi, null_abs_phi, phi, within_stats
from paperlib.metrics.stats import paired, welch
from paperlib.sae import models, penalty
from paperlib.sae.models import BatchTopKSAE, MetaSAE
from paperlib.sae.penalty import decomposability_penalty

for _name, _module in {"models": models, "penalty": penalty, "cooccurrence": cooccurrence, "stats": stats}.items():
    sys.modules[f"{__name__}.{_name}"] = _module

__all__ = [
    "PROFILES", "BatchTopKSAE", "Counts", "MetaSAE", "Profile", "count", "decomposability_penalty",
    "get_profile", "paired", "phi", "welch", "within_stats",
    "excess_abs_phi", "null_abs_phi",
]
__version__ = "0.2.0"
