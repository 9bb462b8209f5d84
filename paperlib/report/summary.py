"""``tables/summary.md``: every headline number of the paper beside the reproduced one.

Reads the tables the notebooks wrote (Table 1, reconstruction, auto-interp, Gemma grid, ground
truth) from ``paths.output_dirs(profile)``; a number whose stage has not run is shown as
"not run". Records the profile, token counts, package versions and git revision.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import pandas as pd

from paperlib.config.io import provenance, read_json, write_text
from paperlib.config.paths import output_dirs, second_model_output_dirs
from paperlib.config.profiles import get_profile, second_model
from paperlib.stages.second_model import add_fuzz_deltas

PAPER = {
    "dphi_pct": "−7.5% (λ₂=0.3, σ²=1.0)",
    "dl2_pct": "+9.3%",
    "welch_t": "t = −53.1 over ~209M pairs, p < 1e−10",
    "noise_floor": "mean \\|φ\\| ≈ 2.15e−3 ± 1e−5 over 4 independent solo SAEs; joint−solo gap 1.7e−4",
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


def _col(df: pd.DataFrame, *names: str):
    for n in names:
        if n in df.columns:
            return n
    return None


def _fmt(x, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, numbers.Real) else str(x)


def _row(df: pd.DataFrame, run: str) -> pd.Series | None:
    c = _col(df, "run", "name", "config")
    if c is None:
        return None
    hit = df[df[c] == run]
    return hit.iloc[0] if len(hit) else None


def _get(row, *names, spec=".4g", unit: str = "") -> str:
    if row is None:
        return "not run"
    for n in names:
        if n in row.index:
            return _fmt(row[n], spec) + unit
    return "n/a"


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
    if "dfuzz" not in gem and "fuzz_mean" in gem:  # a table written before dfuzz / dfuzz_se existed

        gem = add_fuzz_deltas(gem.assign(fuzz_sem=gem.get("fuzz_sem", math.nan)))
        joint, solo = gem[gem["run"] != "solo"], gem[gem["run"] == "solo"]
    d = joint["dphi_pct"].astype(float)
    parts = [f"Δ mean \\|φ\\| {d.min():+.2f}% to {d.max():+.2f}% over {len(joint)} configs"]
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


def ground_truth_text(gt: pd.DataFrame | None) -> str:
    """One line per non-solo run: Δ mean |φ|, recovered and blended fractions vs solo."""
    if gt is None or not len(gt) or "solo" not in set(gt["run"]):
        return "not run"
    s = gt[gt["run"] == "solo"].iloc[0]
    out = []
    for _, r in gt[gt["run"] != "solo"].iterrows():
        out.append(f"{r['label']}: Δ\\|φ\\| {100 * (r['mean_abs_phi'] / s['mean_abs_phi'] - 1):+.1f}%, "
                   f"recovered {r['recovered_frac']:.3f} vs {s['recovered_frac']:.3f}, "
                   f"blending {r['blend_frac']:.3f} vs {s['blend_frac']:.3f}")
    return "; ".join(out) if out else "solo only"


def write_summary(profile: str, stage_seconds: dict | None = None) -> Path:
    """Write ``<tables>/summary.md`` for ``profile`` and return its path."""
    p = get_profile(profile)
    figs, tables = output_dirs(p)
    sel_path = tables / "selected.json"
    selected = read_json(sel_path)["selected"] if sel_path.exists() else None
    t1 = _read(tables, "table1_grid")
    lines = [f"# Paper vs reproduction — profile `{p.name}`", ""]
    prov = provenance()
    lines += [
        f"- model: `{p.model}`, layer {p.layer} (resid_pre), corpus `{p.corpus}`, context {p.context}",
        f"- SAE: n = {p.n_latents}, k = {p.k}, meta m = {p.n_meta}, k_meta = {p.k_meta}, "
        f"batch {p.batch_size}, {p.train_epochs:g} epoch(s) over the training range",
        "- token ranges (disjoint): " + ", ".join(f"{k} {v:,}" for k, v in p.tokens.as_dict().items()),
        f"- git `{prov['git']}`; " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
        f"- selected joint configuration: `{selected or 'not selected yet'}`",
        "",
        "| quantity | paper (GPT-2 large, layer 20) | reproduced (this profile) |",
        "|---|---|---|",
    ]
    solo = _row(t1, "solo") if t1 is not None else None
    sel = _row(t1, selected) if (t1 is not None and selected) else None
    ctrl = _row(t1, "control") if t1 is not None else None
    rows: list[tuple[str, str, str]] = []
    dphi = _get(sel, "dphi_pct", "delta_phi_pct", spec="+.2f", unit="%")
    phis = f"solo {_get(solo, 'mean_abs_phi')}, joint {_get(sel, 'mean_abs_phi')}"
    rows.append(("Δ mean \\|φ\\| (selected vs solo)", PAPER["dphi_pct"], f"{dphi} ({phis})"))
    dl2 = _get(sel, "dl2_pct", "delta_l2_pct", spec="+.2f", unit="%")
    rows.append(("ΔL2 (selected vs solo)", PAPER["dl2_pct"], dl2))
    p_txt = _get(sel, "welch_p", "p", spec=".2g")
    if p_txt == "0" and sel is not None and "welch_log10_p" in sel.index:  # fp64 underflow: show log10 p
        p_txt = f"10^{float(sel['welch_log10_p']):.0f}"
    welch = f"t = {_get(sel, 'welch_t', 't', spec='.2f')}, p = {p_txt}, pairs = {_get(sel, 'n_pairs', spec=',.0f')}"
    rows.append(("Welch t, p (mean \\|φ\\|, joint vs solo)", PAPER["welch_t"], welch))
    nf = "not run"
    if t1 is not None and "arm" in t1.columns:
        solos = t1[t1["arm"] == "solo"]["mean_abs_phi"].astype(float)
        if len(solos) >= 2:
            nf = f"{solos.mean():.4g} ± {solos.std(ddof=1):.2g} over {len(solos)} independent solo SAEs"
            if sel is not None:
                nf += f"; joint−solo gap {float(sel['mean_abs_phi']) - float(solo['mean_abs_phi']):+.3g}"
    rows.append(("noise floor (independent solo seeds)", PAPER["noise_floor"], nf))
    rows.append(("CE overhead, solo", PAPER["ce_solo"], _get(solo, "ce_overhead_pct", spec="+.2f", unit="%")))
    rows.append(("CE overhead, joint", PAPER["ce_joint"], _get(sel, "ce_overhead_pct", spec="+.2f", unit="%")))
    rows.append(("dead latents", PAPER["dead"],
                 f"joint {_get(sel, 'dead_latents', 'dead', spec='.0f')} "
                 f"vs solo {_get(solo, 'dead_latents', 'dead', spec='.0f')}"))
    rows.append(("λ₂ = 0 control", PAPER["control"],
                 f"Δ\\|φ\\| {_get(ctrl, 'dphi_pct', 'delta_phi_pct', spec='+.2f', unit='%')}, "
                 f"ΔL2 {_get(ctrl, 'dl2_pct', 'delta_l2_pct', spec='+.2f', unit='%')}"))
    ai = _read(tables, "autointerp_summary")
    r = ai.iloc[0] if ai is not None and len(ai) else None
    rows.append(("fuzz means (2·acc−1)", PAPER["fuzz_means"],
                 f"solo {_get(r, 'mean_solo', 'solo_mean', spec='.3f')}, "
                 f"joint {_get(r, 'mean_joint', 'joint_mean', spec='.3f')}"))
    rows.append(("paired Δfuzz", PAPER["fuzz_delta"],
                 f"Δ = {_get(r, 'delta', 'mean_delta', spec='+.4f')}, t = {_get(r, 't', spec='.2f')}, "
                 f"p = {_get(r, 'p', spec='.2g')}, pairs = {_get(r, 'n_pairs', 'n', spec='.0f')}"))
    share = _get(r, "pct_joint_higher", "share_joint_higher", spec=".1f", unit="%")
    if r is not None and "pct_equal" in r.index:
        share += f" (ties {_get(r, 'pct_equal', spec='.1f')}%)"
    rows.append(("% pairs improved", PAPER["fuzz_share"], share))
    gem = _read(second_model_output_dirs(second_model(p.name))[1], "gemma_grid")

    rows.append(("second model (§6)", PAPER["gemma"],
                 f"`{second_model(p.name)}` profile: {gemma_text(gem)}"))
    lines += [f"| {q} | {paper} | {ours} |" for q, paper, ours in rows]
    gt = _read(tables, "ground_truth")
    lines += ["", "Beyond the paper:", ""]
    lines.append("- ground-truth benchmark (notebook 08, `ground_truth.md`): " + ground_truth_text(gt))
    if stage_seconds:
        done = {k: v for k, v in stage_seconds.items() if v is not None}
        lines += ["", "Stage run times of the last run of each stage (s): "
                  + ", ".join(f"{k} {v}" for k, v in done.items())
                  + f"; sum {sum(done.values()) / 60:.1f} min"]
    lines += ["", "Numbers are regenerated by `make reproduce`; the paper's are quoted from its text.", ""]
    path = tables / "summary.md"
    write_text(path, "\n".join(lines))
    return path
