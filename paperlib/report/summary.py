"""``tables/summary.md``: the answer first (paired seeds), then every headline number of the paper beside
the reproduced one.

Reads the tables the notebooks wrote (``primary_paired_seeds``, ``primary_rate_matched``, ``convergence``,
Table 1, reconstruction, auto-interp, the second-model grid, ground truth) from
``paths.output_dirs(profile)``; a number whose stage has not run is shown as "not run". Every sentence
that judges a result is computed from the numbers in those tables. The published selection
(``selected.json``) is read with :func:`paperlib.stages.select.load_selection`, so a damaged file or one
naming a run outside the grid fails with the same message as the selection stage. Records the profile,
token counts, package versions and git revision.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from paperlib.config.io import provenance, write_text
from paperlib.config.paths import output_dirs, second_model_output_dirs
from paperlib.config.profiles import Profile, get_profile, second_model
from paperlib.data.lm import MODEL_NAMES
from paperlib.metrics.stats import paired
from paperlib.stages.compare import STATISTICS, mde_or_nan, overall_verdict
from paperlib.stages.select import load_selection

WELCH_CAVEAT = ("Welch over pairs is descriptive precision only: the pairs of one SAE are not independent "
                "samples (they share latents and tokens); the unit of inference is the training seed.")

PAPER = {
    "dphi_pct": "−7.5% (λ₂=0.3, σ²=1.0)",
    "dl2_pct": "+9.3%",
    "welch_t": "t = −53.1 over ~209M pairs, p < 1e−10",
    "noise_floor": "mean \\|φ\\| ≈ 2.15e−3 ± 1e−5 over 4 independent solo SAEs; joint−solo gap 1.7e−4",
    "grid_noise": "not reported (one run per configuration; no correction across the grid)",
    "ce_solo": "+2.5% over 3.47 nats (+0.087 nats)",
    "ce_joint": "+3.1% (+0.6 pp over solo)",
    "fuzz_means": "solo 0.230, joint 0.248",
    "fuzz_delta": "paired Δ = +0.0175 (+7.6%), t = 8.12, p = 5e−16",
    "fuzz_share": "51.6% of matched pairs higher for joint",
    "dead": "joint 0 vs solo 2 dead latents",
    "control": "λ₂ = 0 control: no systematic effect on \\|φ\\|, L2, fuzz",
    "gemma": "Gemma 2 9B: λ₂=0.3, σ²=1.0 only config with clearly positive ΔFuzz (+8.6%); ΔL2 +8.2%",
}


def _read(tables: Path, name: str) -> pd.DataFrame | None:
    path = tables / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def _fmt(x, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, numbers.Real) else str(x)


def _row(df: pd.DataFrame, run: str) -> pd.Series | None:
    hit = df[df["run"] == run]
    return hit.iloc[0] if len(hit) else None


def _get(row, name: str, spec=".4g", unit: str = "") -> str:
    if row is None:
        return "not run"
    return _fmt(row[name], spec) + unit if name in row.index else "n/a"


def gemma_text(gem: pd.DataFrame | None, paper_config: tuple[float, float] = (0.3, 1.0)) -> str:
    """Second-model row: Δ mean |φ| range, the paper's configuration, best absolute Δfuzz vs solo.

    Fuzz differences are absolute (2·acc−1 units): a relative ΔFuzz % is meaningless when the solo
    mean is near 0, as it is for small, short-trained SAEs."""
    if gem is None or not len(gem):
        return "not run"
    joint = gem[gem["run"] != "solo"]
    solo = gem[gem["run"] == "solo"]
    if not len(joint) or not len(solo):
        return "table present, no solo/joint rows"
    d = joint["dphi_pct"].astype(float)
    parts = [f"Δ mean \\|φ\\| {d.min():+.2f}% to {d.max():+.2f}% over {len(joint)} configurations" if len(joint) > 1
             else f"Δ mean \\|φ\\| {d.iloc[0]:+.2f}% (seed 0, one configuration)"]
    has_fuzz = "dfuzz" in gem and joint["dfuzz"].notna().any()
    pc = joint[(joint["lambda2"] == paper_config[0]) & (joint["sigma2"] == paper_config[1])]
    if len(pc):
        row = pc.iloc[0]
        txt = f"λ₂={paper_config[0]:g}, σ²={paper_config[1]:g}: ΔL2 {float(row['dl2_pct']):+.2f}%"
        if has_fuzz and math.isfinite(float(row["dfuzz"])):
            txt += f", Δfuzz {float(row['dfuzz']):+.3f}"
        parts.append(txt)
    if has_fuzz:
        best = joint.loc[joint["dfuzz"].astype(float).idxmax()]
        se = float(best.get("dfuzz_se", math.nan))
        parts.append(f"best Δfuzz {float(best['dfuzz']):+.3f}" + (f" ± {se:.3f} s.e." if math.isfinite(se) else "")
                     + f" at {best['run']} (solo fuzz {float(solo['fuzz_mean'].iloc[0]):.3f}; "
                     f"{int(best['n_fuzz'])} features per config)")
    return "; ".join(parts)


def grid_noise_text(t1: pd.DataFrame | None, selected: str | None = None, alpha: float = 0.05) -> str:
    """Table 1's grid sentence: how many exploratory grid configurations (one seed each) can be told apart from
    the solo seeds' run-to-run noise at Holm-adjusted p < ``alpha`` (``p_holm``, Holm over the grid's
    configurations), and the selected one's Δ with its unadjusted and adjusted p. "not run" without a table;
    a table from before these columns existed says so."""
    if t1 is None or not len(t1):
        return "not run"
    if "p_holm" not in t1 or "p_vs_solo_seeds" not in t1:
        return "Table 1 has no p against the solo seeds (made before the grid test existed; rerun notebook 04)"
    fam = t1[t1["p_vs_solo_seeds"].notna()]
    k = int((t1["arm"] == "solo").sum())
    if not len(fam):
        return f"not testable: {k} solo seed(s) in Table 1 (needs at least 2 and a grid configuration)"
    hits = fam[fam["p_holm"].astype(float) < alpha]
    txt = (f"{len(hits)} of {len(fam)} grid configurations differ from the {k} solo seeds' noise at Holm-adjusted "
           f"p < {alpha:g} (each configuration's mean \\|φ\\| against the solo seeds, prediction-interval t, "
           f"{k - 1} df; Holm over the {len(fam)})")
    if len(hits):
        txt += ": " + ", ".join(f"`{r}` ({float(d):+.2f}%, p_holm = {float(q):.2g})"
                                for r, d, q in zip(hits["run"], hits["delta_phi_pct"], hits["p_holm"], strict=True))
    sel = fam[fam["run"] == selected] if selected else fam.iloc[:0]
    if len(sel):
        r = sel.iloc[0]
        txt += (f"; selected `{selected}`: Δ {float(r['delta_phi_pct']):+.2f}%, p = {float(r['p_vs_solo_seeds']):.2g}, "
                f"Holm-adjusted p = {float(r['p_holm']):.2g}")
    return txt


def ground_truth_text(corr: pd.DataFrame | None, paired_df: pd.DataFrame | None = None,
                      per_sae: pd.DataFrame | None = None) -> str:
    """The ground-truth answer in words, from the tables of notebook 08: how many |φ|–atomicity rank
    correlations (across all SAEs) support, contradict or give no evidence for |φ| as an atomicity proxy, the
    strongest one, the within-seed tally, convergence, and the joint (λ₂ = 0.3) − solo paired differences."""
    if corr is None or not len(corr):
        return "not run"
    out = []
    if per_sae is not None and len(per_sae) and "converged" in per_sae:
        out.append(f"{len(per_sae)} SAEs ({per_sae['seed'].nunique()} data seeds × {per_sae['label'].nunique()} "
                   f"arms), {int(per_sae['converged'].astype(bool).sum())} converged")
    for scope in ("all SAEs", "within seed"):
        c = corr[corr["scope"] == scope]
        if not len(c):
            continue
        tally = c["verdict"].value_counts()
        top = c.loc[c["rho"].abs().idxmax()]
        out.append(f"{scope}: of {len(c)} Spearman ρ (|φ| statistic × atomicity metric, 95% bootstrap CI) "
                   f"{int(tally.get('supports |φ| as a proxy', 0))} support |φ| as a proxy, "
                   f"{int(tally.get('contradicts |φ| as a proxy', 0))} contradict it, "
                   f"{int(tally.get('no evidence', 0))} give no evidence (CI covers 0); strongest "
                   f"{top['phi_stat']} vs {top['metric']} ρ = {float(top['rho']):+.2f} "
                   f"[{float(top['ci_low']):+.2f}, {float(top['ci_high']):+.2f}]")
    if paired_df is not None and len(paired_df):
        sel = paired_df[paired_df["arm"].astype(str).str.startswith("λ₂=0.3")]
        bits = []
        for m in ("mean_abs_phi_all", "act_f1", "fvu"):
            r = sel[sel["metric"] == m]
            if len(r):
                r = r.iloc[0]
                bits.append(f"{m} Δ {float(r['delta']):+.4f} [{float(r['ci_low']):+.4f}, {float(r['ci_high']):+.4f}]"
                            f" ({r['verdict']}, MDE {float(r['mde80']):.4f})")
        if bits:
            out.append("joint λ₂=0.3 − solo, paired over data seeds: " + ", ".join(bits))
    return "; ".join(out)


def case_studies_text(null_df: pd.DataFrame | None) -> str:
    """Splitting/merging candidate counts (distinct partners) against the solo-vs-solo null, from
    ``case_studies_null``: both counts, difference and ratio per kind."""
    if null_df is None or not len(null_df):
        return "not run"
    parts = []
    for _, r in null_df.iterrows():
        ratio = float(r["ratio"])
        parts.append(f"{r['kind']} {int(r['treatment'])} (solo vs joint) vs {int(r['null'])} (solo vs solo, the null): "
                     f"difference {int(r['difference']):+d}, ratio "
                     + ("undefined" if math.isnan(ratio) else f"{ratio:.2f}"))
    return "; ".join(parts)


def _pct_ci(r) -> str:
    return (f"{float(r['delta_pct']):+.2f}% [{float(r['ci_low_pct']):+.2f}, {float(r['ci_high_pct']):+.2f}]"
            if "delta_pct" in r and math.isfinite(float(r["delta_pct"])) else "n/a")


def primary_lines(paired: pd.DataFrame | None, rate: pd.DataFrame | None,
                  pooled: pd.DataFrame | None = None) -> list[str]:
    """The primary comparison as Markdown: verdict sentence, one row per comparison and statistic."""
    if paired is None or not len(paired):
        return ["The primary comparison has not run (notebook 04)."]
    k = int(paired["K"].max())
    lines = [f"**{overall_verdict(paired)}**", ""]
    if rate is not None and len(rate):
        lines += rate_matched_lines(rate, pooled) + [""]
    lines += [
             f"Paired t-test over K = {k} training seeds (seed s shares initialisation and data order across "
             "arms; K − 1 df). Δ in % of the baseline mean with its 95% CI; MDE = smallest |Δ| detectable with "
             "80% power at α = 0.05 given the observed spread of the paired differences.", "",
             "| comparison | statistic | baseline | treatment | Δ % [95% CI] | p | MDE % | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in paired.iterrows():
        label = STATISTICS.get(r["statistic"], r["statistic"]).replace("|", "\\|")
        lines.append(f"| {r['comparison']} | {label} | "
                     f"{_fmt(r['mean_baseline'])} | {_fmt(r['mean_treatment'])} | {_pct_ci(r)} | "
                     f"{_fmt(r.get('p'), '.2g')} | {_fmt(r.get('mde_pct'), '.2f')} | {r['verdict']} |")
    return lines


def _seed_ci(values: pd.Series) -> tuple[float, float, float, float]:
    """Mean, 95% t-interval over seeds (the seed is the unit: the one-sample form of the paired test) and the
    minimum detectable |mean| at 80% power (:func:`paperlib.stages.compare.mde_or_nan`)."""
    v = values.astype(float).to_numpy()
    if len(v) < 2:
        return float(v.mean()), math.nan, math.nan, math.nan
    r = paired(v, np.zeros(len(v)))
    return r.mean_diff, r.ci_low, r.ci_high, mde_or_nan(r.std_diff, r.n)


def rate_matched_lines(rate: pd.DataFrame, pooled: pd.DataFrame | None = None) -> list[str]:
    """The firing-rate-matched estimates (regression and rate-cell strata) with their CIs over seeds and minimum
    detectable effects (80% power, α = 0.05), the regression pooled over seeds with pair-clustered errors (when
    ``pooled`` is given), and whether the estimates agree with the raw difference."""
    raw, reg, cell = (_seed_ci(rate[c]) for c in ("raw_rel_pct", "rel_diff_pct", "cell_rel_pct"))
    k = len(rate)

    def fmt(x):
        return f"{x[0]:+.2f}% [{x[1]:+.2f}, {x[2]:+.2f}] (MDE {_fmt(x[3], '.2f')}%)"

    out = [f"Firing-rate-matched comparison, joint vs solo, latent level (a latent's mean \\|φ\\| over alive "
           f"partners), mean over {k} seeds with 95% CI and the minimum detectable \\|Δ\\| (MDE: 80% power, α = 0.05): "
           f"raw {fmt(raw)}; adjusted by regression on arm and log "
           f"firing rate {fmt(reg)}; within firing-rate cells {fmt(cell)}."]
    if pooled is not None and len(pooled) and "pooled_rel_pct" in pooled:
        q = pooled.iloc[0]
        out.append(f"The same regression pooled over the {int(q['pooled_n_groups'])} seed pairs "
                   f"({int(q['pooled_n_latents']):,} latents, a fixed effect per pair, standard errors clustered by "
                   f"pair, t with {int(q['pooled_df'])} df): {q['pooled_rel_pct']:+.2f}% "
                   f"[{q['pooled_rel_ci_low_pct']:+.2f}, {q['pooled_rel_ci_high_pct']:+.2f}], "
                   f"p = {_fmt(q['pooled_p_arm'], '.2g')}.")
    signs = {"raw": raw, "regression": reg, "rate cells": cell}
    lower = [n for n, x in signs.items() if x[2] < 0]
    higher = [n for n, x in signs.items() if x[1] > 0]
    if lower and higher:
        out.append(f"The estimates disagree in sign ({', '.join(lower)} lower; {', '.join(higher)} higher, CIs "
                   "excluding 0): much of the raw difference goes with a change in firing rates, so it does not by "
                   "itself show more atomic latents.")
    return out


def convergence_lines(conv: pd.DataFrame | None) -> list[str]:
    """How many runs meet each convergence criterion, and how far the others are."""
    if conv is None or not len(conv):
        return ["Convergence diagnostics have not run (notebook 04)."]
    ok = conv["ok"].astype(bool)
    out = [f"{int(ok.sum())} of {len(conv)} runs meet every criterion (L2 change over the last 20% of steps < 3%, "
           f"dead latents < 1% of n on the {int(conv['dead_on_tokens'].max()):,} co-occurrence tokens, meta SAE "
           "error on a plateau).",
           f"Largest L2 change over the last 20%: {100 * conv['l2_change_last20'].max():.2f}%; most dead latents: "
           f"{int(conv['dead_eval'].max())} ({100 * conv['dead_frac'].max():.2f}% of n)."]
    meta = conv["meta_err_final"].dropna()
    if len(meta):
        lo, hi = 100 * (1 - meta.max()), 100 * (1 - meta.min())
        out.append(f"Meta SAE error on the unit decoder rows at the end: {meta.min():.2f}–{meta.max():.2f} "
                   f"(it explains {lo:.0f}–{hi:.0f}% of each row's squared norm).")
    bad = conv.loc[~ok, "run"].tolist()
    if bad:
        out.append("Runs missing a criterion (flagged in Table 1): " + ", ".join(f"`{b}`" for b in bad) + ".")
    return out


def _model_line(p: Profile) -> str:
    d = p.data
    return (f"- subject model: {MODEL_NAMES.get(d.model, d.model)}, layer {d.layer} (resid_pre), corpus `{d.corpus}`, "
            f"context {d.context}")


def write_summary(profile: str, stage_seconds: dict | None = None, matmul_gflops: float | None = None,
                  run_revision: str | None = None) -> Path:
    """Write ``<tables>/summary.md`` for ``profile`` and return its path. ``run_revision``: the commit of the
    run that made the tables, when this summary is re-rendered later from them."""
    p = get_profile(profile)
    figs, tables = output_dirs(p)
    sel_path = tables / "selected.json"
    sel_info = load_selection(sel_path, p) if sel_path.exists() else None  # a bad file fails naming it
    selected = sel_info.selected if sel_info else None
    t1 = _read(tables, "table1_grid")
    prov = provenance()
    d, s, m = p.data, p.sae, p.meta
    per_epoch = (d.tokens.train // d.context) * (d.context - int(d.drop_bos)) // s.batch_size
    steps = max(1, round(s.train_epochs * per_epoch))
    lines = [f"# Paper vs reproduction — profile `{p.name}`", "", _model_line(p),
             f"- SAE: n = {s.n_latents}, k = {s.k}, meta m = {m.n_meta}, k_meta = {m.k_meta}; batch {s.batch_size}, "
             f"{s.train_epochs:g} epochs over the training range (about {steps} steps), lr {s.lr:g} "
             f"(warm-up {s.lr_warmup_frac:g}, linear decay over the last {s.lr_decay_frac:g} of the steps), "
             f"penalty from {m.penalty_start_frac:g} of the steps (ramp {m.penalty_ramp_frac:g})",
             "- token ranges (disjoint): " + ", ".join(f"{k} {v:,}" for k, v in p.data.tokens.as_dict().items()),
             (f"- tables made by `make reproduce` at git `{run_revision}`, this summary rendered at `{prov['git']}`; "
              if run_revision else f"- git `{prov['git']}`; ")
             + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
             "", f"## The answer: does the penalty make latents co-fire less? (λ₂ = {p.grid.paper_lambda2:g}, "
             f"σ² = {p.grid.paper_sigma2:g}, fixed in advance)", ""]
    lines += primary_lines(_read(tables, "primary_paired_seeds"), _read(tables, "primary_rate_matched"),
                           _read(tables, "primary_rate_matched_pooled"))
    lines += ["", "## Are the SAEs trained?", ""] + convergence_lines(_read(tables, "convergence"))
    lines += ["", "## Paper vs reproduction (exploratory: one seed per grid configuration)", "",
              f"Selected configuration: `{selected or 'not selected yet'}`"
              + (f" (chosen on the first half of the co-occurrence tokens; Δ mean \\|φ\\| on the held-out half "
                 f"{sel_info.delta_phi_heldout_pct:+.2f}%)" if sel_info else ""), "", WELCH_CAVEAT, "",
              "| quantity | paper (GPT-2 large, layer 20) | reproduced (this profile) |", "|---|---|---|"]
    solo = _row(t1, "solo") if t1 is not None else None
    sel = _row(t1, selected) if (t1 is not None and selected) else None
    rows: list[tuple[str, str, str]] = []
    phis = f"solo {_get(solo, 'mean_abs_phi')}, joint {_get(sel, 'mean_abs_phi')}"
    rows.append(("Δ mean \\|φ\\| (selected vs solo, all tokens)", PAPER["dphi_pct"],
                 f"{_get(sel, 'delta_phi_pct', spec='+.2f', unit='%')} ({phis})"))
    rows.append(("ΔL2 (selected vs solo)", PAPER["dl2_pct"], _get(sel, "delta_l2_pct", spec="+.2f", unit="%")))
    p_txt = _get(sel, "welch_p", spec=".2g")
    if p_txt == "0" and sel is not None:  # fp64 underflow: show log10 p
        p_txt = f"10^{float(sel['welch_log10_p']):.0f}"
    rows.append(("Welch t, p over pairs (descriptive)", PAPER["welch_t"],
                 f"t = {_get(sel, 'welch_t', spec='.2f')}, p = {p_txt}, pairs = {_get(sel, 'n_pairs', spec=',.0f')}"))
    nf = "not run"
    if t1 is not None:
        solos = t1[t1["arm"] == "solo"]["mean_abs_phi"].astype(float)
        if len(solos) >= 2:
            nf = f"{solos.mean():.4g} ± {solos.std(ddof=1):.2g} over {len(solos)} independent solo SAEs"
    rows.append(("noise floor (independent solo seeds)", PAPER["noise_floor"], nf))
    rows.append(("grid vs the solo seeds' noise (one seed per configuration, Holm over the grid)",
                 PAPER["grid_noise"], grid_noise_text(t1, selected)))
    rows.append(("CE overhead, solo", PAPER["ce_solo"], _get(solo, "ce_overhead_pct", spec="+.2f", unit="%")))
    rows.append(("CE overhead, joint (selected)", PAPER["ce_joint"],
                 _get(sel, "ce_overhead_pct", spec="+.2f", unit="%")))
    tok = f" on {int(solo['dead_on_tokens']):,} co-occurrence tokens" if solo is not None else ""
    rows.append(("dead latents", PAPER["dead"], f"joint {_get(sel, 'dead_latents', spec='.0f')} "
                 f"vs solo {_get(solo, 'dead_latents', spec='.0f')}{tok}"))
    rows.append(("λ₂ = 0 control", PAPER["control"],
                 "identical to solo by construction (same seed, zero weight; a unit test); the reported control is "
                 "the random-critic arm above"))
    ai = _read(tables, "autointerp_summary")
    r = ai.iloc[0] if ai is not None and len(ai) else None
    rows.append(("fuzz means (ours: AUROC over 10 true + 10 fuzzed items, chance 0.5)", PAPER["fuzz_means"],
                 f"solo {_get(r, 'mean_solo', spec='.3f')}, joint {_get(r, 'mean_joint', spec='.3f')}"))
    rows.append(("paired Δfuzz", PAPER["fuzz_delta"], fuzz_delta_text(r)))
    rows.append(("fuzz judge check and reliability", "—", fuzz_checks_text(r)))
    share = _get(r, "pct_joint_higher", spec=".1f", unit="%")
    if r is not None and "pct_equal" in r.index:
        share += f" (ties {_get(r, 'pct_equal', spec='.1f')}%)"
    rows.append(("% pairs improved", PAPER["fuzz_share"], share))
    second = second_model(p.name)
    gem = _read(second_model_output_dirs(second)[1], "gemma_grid")
    rows.append(("second model (§6)", PAPER["gemma"], f"`{second}` profile: {gemma_text(gem)}"))
    lines += [f"| {q} | {paper} | {ours} |" for q, paper, ours in rows]
    gpaired = _read(second_model_output_dirs(second)[1], "gemma_paired_seeds")
    if gpaired is not None and len(gpaired):
        lines += ["", f"Second model, paired seeds (`{second}`):", ""] + primary_lines(gpaired, None)
    lines += ["", "Beyond the paper:", ""]
    lines.append("- ground-truth benchmark (notebook 08, `ground_truth_correlations.md`, `ground_truth_paired.md`): "
                 + ground_truth_text(_read(tables, "ground_truth_correlations"), _read(tables, "ground_truth_paired"),
                                     _read(tables, "ground_truth")))
    lines.append("- case studies against the solo-vs-solo null (notebook 06, `case_studies_null.md`): "
                 + case_studies_text(_read(tables, "case_studies_null")))
    if stage_seconds:
        done = {k: v for k, v in stage_seconds.items() if v is not None}
        lines += ["", "Stage run times of the last run of each stage (s): "
                  + ", ".join(f"{k} {v}" for k, v in done.items())
                  + f"; sum {sum(done.values()) / 60:.1f} min"
                  + (f" (machine: fp32 matmul {matmul_gflops:.0f} GFLOP/s)" if matmul_gflops else "")]
    lines += ["", "Numbers are regenerated by `make reproduce`; the paper's are quoted from its text.", ""]
    path = tables / "summary.md"
    write_text(path, "\n".join(lines))
    return path


README_START = "<!-- results:start (written by make reproduce from tables/; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def results_block(profile: str) -> str:
    """The README's results section for ``profile``: the verdict and the paired-seed rows of the primary
    comparison, convergence, and the second model's verdict, all from the published tables."""
    p = get_profile(profile)
    tables = output_dirs(p)[1]
    paired = _read(tables, "primary_paired_seeds")
    lines = primary_lines(paired, _read(tables, "primary_rate_matched"), _read(tables, "primary_rate_matched_pooled"))
    lines += ["", "Convergence: " + " ".join(convergence_lines(_read(tables, "convergence")))]
    second = second_model(p.name)
    gpaired = _read(second_model_output_dirs(second)[1], "gemma_paired_seeds")
    if gpaired is not None and len(gpaired):
        lines += ["", f"Second model (`{second}`, {int(gpaired['K'].max())} paired seeds): {overall_verdict(gpaired)}"]
    lines += ["", "Everything else (Table 1, the exploratory grid, auto-interp, case studies, ground truth) is in "
              "`tables/summary.md`."]
    return "\n".join(lines)


def write_readme_results(readme: Path, profile: str) -> bool:
    """Replace the text between :data:`README_START` and :data:`README_END` in ``readme`` with
    :func:`results_block`; False (and nothing written) when the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    write_text(readme, f"{head}{README_START}\n{results_block(profile)}\n{README_END}{tail}")
    return True


def fuzz_delta_text(r) -> str:
    """Paired Δ fuzz AUROC with its CI, p, the verdict read off the CI and the MDE at 80% power."""
    if r is None:
        return "not run"
    txt = (f"Δ = {_get(r, 'delta', spec='+.4f')} [95% CI {_get(r, 'ci_low', spec='+.4f')}, "
           f"{_get(r, 'ci_high', spec='+.4f')}], p = {_get(r, 'p', spec='.2g')}, "
           f"pairs = {_get(r, 'n_pairs', spec='.0f')}")
    lo, hi = float(r.get("ci_low", math.nan)), float(r.get("ci_high", math.nan))
    if math.isfinite(lo) and math.isfinite(hi):
        txt += "; no evidence of a difference" if lo <= 0 <= hi else "; the CI excludes 0"
    if "mde" in r.index:
        txt += f"; MDE at 80% power {_get(r, 'mde', spec='.4f')} AUROC"
    return txt


def fuzz_checks_text(r) -> str:
    """Shuffled-explanation control and test–retest reliability of the fuzz score."""
    if r is None or "shuffled_mean" not in r.index:
        return "not run"
    at = "at chance" if bool(r.get("at_chance")) else "NOT at chance"
    return (f"shuffled explanations {_get(r, 'shuffled_mean', spec='.3f')} ({at}) vs real "
            f"{_get(r, 'real_mean', spec='.3f')}; test–retest r = {_get(r, 'retest_r', spec='.2f')} "
            f"[{_get(r, 'retest_low', spec='.2f')}, {_get(r, 'retest_high', spec='.2f')}] "
            f"(n = {_get(r, 'retest_n', spec='.0f')})")
