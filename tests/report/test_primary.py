"""Figures of the primary comparison."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from paperlib.report.primary import paired_seed_figure  # noqa: E402


def test_paired_seed_figure_marks_the_minimum_detectable_effect():
    table = pd.DataFrame({"comparison": ["joint vs solo", "joint vs solo"], "statistic": ["a", "b"],
                          "label": ["stat a", "stat b"], "K": [3, 3], "delta_pct": [-0.2, -4.0],
                          "ci_low_pct": [-1.0, -4.5], "ci_high_pct": [0.6, -3.5], "mde_pct": [1.7, np.nan]})
    fig = paired_seed_figure(table)
    ax = fig.axes[0]
    marks = [c for c in ax.collections if c.get_label() == "±MDE (80% power)"]
    assert len(marks) == 1  # one labelled set; the row without an MDE draws none
    np.testing.assert_allclose(sorted(marks[0].get_offsets()[:, 0]), [-1.7, 1.7])
    assert "minimum detectable effect" in ax.get_xlabel()
    plt.close(fig)
    paired_seed_figure(table.drop(columns=["mde_pct"]))  # older tables without the column still draw
    plt.close("all")
