"""Case-study tables, markdown and the cross-φ figure (docs/method.md §3.5; paper Tables 2–5).

Renders the result of :func:`paperlib.stages.case_studies.case_studies`; nothing is computed here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from paperlib.config.io import write_text
from paperlib.metrics.case_studies import CandidatePhi
from paperlib.report.figures import add_caption, styled
from paperlib.stages.case_studies import CaseStudy, Snippet

__all__ = ["case_study_markdown", "cross_phi_figure", "format_context", "null_frame", "null_text", "save_case_studies",
           "studies_frame"]

MARK_L, MARK_R = "«", "»"
"""Marks around the firing token of a context."""

STUDY_COLUMNS = ["candidate", "kind", "sae", "feature", "abs_phi", "firing_rate", "decoder_cos", "fuzz",
                 "explanation", "contexts"]
"""Columns of :func:`studies_frame` when there are no studies."""


def format_context(tokens: Sequence[str], peak: int | None) -> str:
    """Join per-token strings, marking the token at ``peak`` as «token» (newlines shown as ⏎, and
    ``|`` as ``¦`` so that a context fits in a markdown table)."""
    parts = []
    for i, t in enumerate(tokens):
        t = t.replace("\r", "").replace("\n", "⏎").replace("|", "¦")
        parts.append(f"{MARK_L}{t}{MARK_R}" if i == peak else t)
    return "".join(parts).strip()


def _contexts(study: CaseStudy, sae: str, feature: int) -> list[str]:
    snippets: list[Snippet] = study.contexts.get((sae, int(feature)), [])
    return [format_context(s.tokens, s.peak) for s in snippets]


def studies_frame(studies: Sequence[CaseStudy]) -> pd.DataFrame:
    """All case-study tables stacked (CSV form), with the contexts joined by " ‖ "."""
    frames = []
    for s in studies:
        t = s.table.copy()
        t["contexts"] = [" ‖ ".join(_contexts(s, r.sae, r.feature)) for r in t.itertuples()]
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STUDY_COLUMNS)


def null_frame(res: Mapping) -> pd.DataFrame:
    """One row per kind from a :func:`~paperlib.stages.case_studies.case_studies` result with a null run:
    candidates (distinct partners) between solo and the joint run, between the two solo seeds (the null),
    their difference and ratio, and the counts before the distinct-partner filter. Empty without a null."""
    cmp, c, nc = res.get("comparison"), res["counts"], res.get("null_counts")
    if cmp is None or nc is None:
        return pd.DataFrame(columns=["kind", "treatment", "null", "difference", "ratio", "treatment_any", "null_any"])
    return pd.DataFrame([dict(kind=k, **cmp[k], treatment_any=c[f"{k}_any"], null_any=nc[f"{k}_any"])
                         for k in ("splitting", "merging")])


def null_text(res: Mapping, treatment: str, null: str) -> str:
    """A sentence with both counts of each kind and their ratio and difference (computed, not typed)."""
    f = null_frame(res)
    if f.empty:
        c = res["counts"]
        return (f"{c['splitting']} splitting and {c['merging']} merging candidates with distinct partners "
                f"(solo vs {treatment}); no null run.")
    parts = []
    for r in f.itertuples():
        ratio = "undefined (null 0)" if math.isnan(r.ratio) else f"{r.ratio:.2f}×"
        parts.append(f"{r.kind}: {r.treatment} (solo vs {treatment}) vs {r.null} (solo vs {null}, the null), "
                     f"difference {r.difference:+d}, ratio {ratio}")
    return ("Candidates with distinct partners (φ between the two partners < "
            f"{res['max_partner_phi']:g}) — " + "; ".join(parts) + ".")


def _fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def case_study_markdown(studies: Sequence[CaseStudy], title: str, note: str = "") -> str:
    """Markdown with one paper-style table per candidate followed by its top contexts."""
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    if not studies:
        lines.append("No candidates met the criteria.")
    for i, s in enumerate(studies, 1):
        c = s.candidate
        base = s.table.iloc[0]["sae"]
        others = s.table["max_phi_other_partners"].dropna()
        worst = others.max() if len(others) else math.nan
        lines += [f"## {i}. {c.kind} candidate: {base} feature {c.feature} "
                  f"(firing rate {c.firing_rate:.4f}; "
                  f"distinct-split score {c.score:.3f}; max φ between its partners {_fmt(worst)})", "",
                  "| SAE | Feat | Fuzz | \\|φ\\| | Rate | Dec. cos | Description |",
                  "|---|---|---|---|---|---|---|"]
        for r in s.table.itertuples():
            lines.append(f"| {r.sae} | {r.feature} | {_fmt(r.fuzz, '+.3f')} | {_fmt(r.abs_phi)} | "
                         f"{r.firing_rate:.4f} | {_fmt(r.decoder_cos)} | {r.explanation} |")
        lines += ["", "Top activating contexts (peak token «marked»):", ""]
        for r in s.table.itertuples():
            cx = _contexts(s, r.sae, r.feature)
            lines.append(f"- **{r.sae} {r.feature}**")
            lines += [f"  - `{t}`" if "`" not in t else f"  - {t}" for t in cx] or ["  - (none)"]
        lines.append("")
    return "\n".join(lines) + "\n"


@styled
def cross_phi_figure(cross_phi: Mapping[str, CandidatePhi], solo_label: str = "solo",
                     joint_label: str = "joint", *, caption: str | None = None) -> plt.Figure:
    """Heatmaps of the exact cross-φ in ``cross_phi`` (the stage's ``"cross_phi"``): splitting
    candidates (rows, solo) × their joint partners, and merging candidates (rows, joint) × their solo
    partners. A kind without candidates gets no panel (one empty panel when neither has any)."""
    panels = [(cross_phi["splitting"], solo_label, joint_label, "splitting"),
              (cross_phi["merging"], joint_label, solo_label, "merging")]
    panels = [pp for pp in panels if pp[0].rows] or [panels[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (block, la, lb, kind) in zip(axes[0], panels, strict=True):
        if not block.rows:
            ax.text(0.5, 0.5, f"no {kind} candidates", ha="center", va="center")
            ax.set_axis_off()
            continue
        m = block.phi
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_yticks(range(len(block.rows)), [f"{la} {r}" for r in block.rows], fontsize=8)
        ax.set_xticks(range(len(block.cols)), [str(c) for c in block.cols], rotation=90, fontsize=7)
        ax.set_xlabel(f"{lb} partner features")
        ax.set_title(f"{kind} candidates: cross-φ")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if abs(m[i, j]) >= 0.1:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8, label="φ")
        ax.grid(False)
    add_caption(fig, caption, "Case studies: exact cross-φ between candidates and their partners")
    fig.tight_layout()
    return fig


def save_case_studies(studies: Sequence[CaseStudy], directory: str | Path, name: str, title: str,
                      note: str = "") -> list[Path]:
    """Write ``<name>.csv`` (stacked tables with contexts) and ``<name>.md`` (paper-style tables with
    the contexts), atomically."""
    d = Path(directory)
    csv, md = d / f"{name}.csv", d / f"{name}.md"
    write_text(csv, studies_frame(studies).to_csv(index=False))
    write_text(md, case_study_markdown(studies, title, note))
    return [csv, md]
