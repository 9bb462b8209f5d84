"""Generate notebooks/02_calibrate.ipynb, 03_cooccurrence.ipynb and 04_welch.ipynb."""

from tools.nbbuild import write_notebook

PARAMS = 'sae: str = "all"        # all | solo | joint (selected config) | control | a run name; comma lists OK'

SETUP = '''from paperlib.stages import calibrate, ce, cooccur, recon, select
from paperlib.stages.run import Run
from paperlib.stages.train import ensure_trained
from paperlib.report import figures
from paperlib.report.notebook import setup, save_figure, save_table
from paperlib.sae.arms import grid_runs
import pandas as pd

ctx = setup(profile)
caption = figures.figure_caption(ctx.profile)
runs = select.table_runs(ctx.profile, select.select_runs(ctx.profile, sae))  # solo first: the baseline
names = [r.name for r in runs]
print(f"{len(names)} runs:", ", ".join(names))
run_dirs = ensure_trained(ctx.profile, runs)'''

write_notebook(
    "notebooks/02_calibrate.ipynb",
    "02 · Firing thresholds (EER calibration, paper App. A)",
    "Calibrates per-feature thresholds θ (equal error rate between BatchTopK-selected and "
    "non-selected positive pre-activations) on the calibration token range, for every selected run, "
    "and checks that threshold firing rates match BatchTopK firing rates.",
    PARAMS,
    [
        SETUP,
        ("md", "## Calibrate (cached per run in `runs/<name>/eval/calibration`)"),
        '''cals = calibrate.ensure_calibrations(runs)  # missing runs computed in worker processes
summary = pd.DataFrame([{"run": n, **c.summary()} for n, c in cals.items()])
save_table(summary, ctx.tables, "calibration_summary")
summary''',
        '''fig = figures.calibration_firing_rates(cals, caption=caption)
save_figure(fig, ctx.figures, "calibration_firing_rates")''',
    ],
)

write_notebook(
    "notebooks/03_cooccurrence.ipynb",
    "03 · Co-occurrence: mean |φ|, Fig. 1a/1b, App. B, App. C",
    "Binary firing with the calibrated thresholds on the co-occurrence token range; within-SAE φ over "
    "all pairs i < j (exact counts), and over the pairs of alive latents (both fire, and stay silent, on at "
    "least 5 tokens: dead latents have φ = 0 by definition and would otherwise dominate a comparison). "
    "Fig. 1a compares solo with the paper's preregistered configuration (seed 0): φ densities on alive pairs, "
    "with the pairs that involve a dead or inactive latent counted apart; Fig. 1b (exploratory) needs the whole "
    "grid (skipped with a note otherwise).",
    PARAMS,
    [
        SETUP,
        ("md", "## Within-SAE φ per run (cached in `runs/<name>/eval/cooccurrence.json`)"),
        '''co = cooccur.ensure_cooccurrences(runs)  # missing runs computed in worker processes
cols = ["n_pairs", "mean_abs_phi", "std_abs_phi", "frac_negative", "median_phi", "max_phi", "n_dead", "n_always_on"]
phi_table = pd.DataFrame([{"run": n, **{c: getattr(co[n].all, c) for c in cols}} for n in names])
phi_table["delta_phi_pct"] = 100 * (phi_table["mean_abs_phi"] / co["solo"].all.mean_abs_phi - 1)
phi_table''',
        ("md", "## Fig. 1a: solo vs the paper's configuration (seed 0): alive pairs, dead pairs apart"),
        '''joint = select.paper_joint(ctx.profile).name
ensure_trained(ctx.profile, [joint])
co_joint = cooccur.ensure_cooccurrence(Run.of(ctx.profile, joint))
# densities and their difference on alive pairs; pairs with a dead or inactive latent counted apart
fig = figures.fig1a_phi_density(co["solo"].all, co_joint.all, joint_label=joint, solo_alive=co["solo"].alive,
                                joint_alive=co_joint.alive, caption=caption)
save_figure(fig, ctx.figures, "fig1a_phi_density_diff")''',
        ("md", "## App. C: φ sign and shape statistics (all pairs, alive pairs, pairs of a dead or rare latent)"),
        '''from paperlib.report.cooccurrence import phi_shape_table
appc = phi_shape_table({"solo": (co["solo"].all, co["solo"].alive), joint: (co_joint.all, co_joint.alive)})
save_table(appc, ctx.tables, "appC_phi_shape")
appc''',
        ("md", "## App. B: firing-rate distributions (thresholded encoder, co-occurrence range)"),
        '''rec = {n: recon.ensure_reconstruction(Run.of(ctx.profile, n)) for n in ["solo", joint]}
fig = figures.appb_firing_rates(rec, caption=caption)
save_figure(fig, ctx.figures, "appB_firing_rates")''',
        ("md", "## Fig. 1b: Δ mean |φ| vs ΔL2 over the grid"),
        '''grid = [r.name for r in grid_runs(ctx.profile)]
if set(grid) <= set(names):
    table = select.grid_table(ctx.profile, grid, with_ce=False)
    fig = figures.fig1b_grid_scatter(table, selected=select.selected_joint(ctx.profile),
                                     noise_floor=table.attrs["noise_floor"], paper=joint, caption=caption)
    save_figure(fig, ctx.figures, "fig1b_grid_scatter")
else:
    print(f"Fig. 1b skipped: needs the full grid (run with sae='all'); selected runs: {names}")''',
    ],
)

write_notebook(
    "notebooks/04_welch.ipynb",
    "04 · The primary comparison (paired seeds), convergence, Table 1 and the selected configuration",
    "The answer first: solo vs the paper's preregistered configuration (λ₂ = 0.3, σ² = 1) and vs a "
    "random-critic control, over K paired seeds (seed s: same initialisation and data order in every arm), "
    "on the paper's mean |φ| and on rate-robust statistics (alive pairs, excess over independent firing, "
    "positive tail), with a paired t-test over seeds (K − 1 df), 95% CIs and minimum detectable effects, and "
    "a firing-rate-matched estimate. Then the convergence diagnostics of every run, what the critic does, "
    "Table 1 over every run (the Welch test over pairs there is descriptive only: pairs are not independent "
    "samples), the exploratory selection (chosen on one half of the co-occurrence tokens, reported on the "
    "other) and the reconstruction summary (§5.3, App. D).",
    PARAMS,
    [
        SETUP + "\nfrom paperlib.stages import compare\nfrom paperlib.stages.train import read_metrics\n"
        "from paperlib.report import primary\n"
        "rec = recon.ensure_reconstructions(runs)  # missing runs computed in worker processes",
        ("md", "## Primary comparison: paired seeds"),
        '''paired = compare.paired_seed_table(ctx.profile)
save_table(paired, ctx.tables, "primary_paired_seeds")
verdict = compare.overall_verdict(paired)
print(verdict)
paired[["comparison", "statistic", "K", "mean_baseline", "mean_treatment", "delta_pct", "ci_low_pct",
        "ci_high_pct", "p", "mde_pct", "verdict"]] if "delta_pct" in paired else paired''',
        '''per_seed = {}
handles = compare.primary_run_handles(ctx.profile)
vals = {arm: [compare.run_statistics(r) for r in rs] for arm, rs in handles.items()}
for base, treat in compare.COMPARISONS:
    if base in vals and treat in vals:
        per_seed[f"{treat} vs {base}"] = {
            s: [100 * (b[s] - a[s]) / abs(a[s]) for a, b in zip(vals[base], vals[treat])] for s in compare.STATISTICS}
if "delta_pct" in paired:
    fig = primary.paired_seed_figure(paired, per_seed, caption=caption)
    save_figure(fig, ctx.figures, "primary_paired_seeds")''',
        ("md", "### Firing-rate-matched comparison (joint vs solo)"),
        '''rm_rows, rm = compare.rate_matched_table(ctx.profile)
save_table(rm_rows, ctx.tables, "primary_rate_matched")
pooled = pd.DataFrame([{k: v for k, v in rm.items() if k.startswith("pooled_")}])
save_table(pooled, ctx.tables, "primary_rate_matched_pooled")  # one regression, errors clustered by seed pair
print(rm)
rm_rows''',
        ("md", "## Convergence of every run\n\nCriteria: relative change of the smoothed training L2 over the "
               "last 20% of steps < 3%; dead latents (never firing on the co-occurrence tokens) < 1% of n; "
               "for arms that train a meta SAE, its error plateaued (change over the last 20% < 5%)."),
        '''conv = compare.convergence_table(runs)
save_table(conv, ctx.tables, "convergence")
print(f"{int(conv['ok'].sum())} of {len(conv)} runs meet every criterion")
conv[["run", "steps", "l2_change_last20", "dead_eval", "dead_frac", "meta_err_final", "meta_change_last20",
      "l2_ok", "dead_ok", "meta_ok", "ok"]]''',
        ("md", "## What the critic does: the per-row penalty over training"),
        '''show = {f"{r.label} (seed {r.spec.seed})": read_metrics(r) for arm in ("joint", "randcritic")
        for r in handles.get(arm, [])[:1]}
if show:
    fig = primary.critic_rows_figure(show, caption=caption)
    save_figure(fig, ctx.figures, "critic_penalty_rows")''',
        ("md", "## Table 1 (every run; Δ vs the paired solo seed)"),
        '''table = select.grid_table(ctx.profile, runs)
save_table(table, ctx.tables, "table1_grid")
nf = table.attrs["noise_floor"]
if nf:
    print(f"solo seeds: mean |φ| = {nf['mean']:.4g} ± {nf['std']:.2g} over {nf['runs']} "
          f"(rel. std {nf['rel_std_pct']:.2g}%; 95% prediction band for a new seed "
          f"{nf['pi_low_pct']:+.2f}% to {nf['pi_high_pct']:+.2f}% of solo seed 0)")
else:
    print("noise floor: needs solo and at least one solo-seedN run")
table''',
        ("md", "## Selected configuration (exploratory)"),
        '''if (table["arm"] == "joint").any():
    if set(r.name for r in grid_runs(ctx.profile) if r.arm == "joint") <= set(table["run"]):
        sel = select.ensure_selection(ctx.profile)
        select.publish_selection(ctx.profile, ctx.tables)
    else:
        sel = select.select_configuration(table, max_dl2_pct=ctx.profile.grid.max_dl2_pct)
        print("(partial grid: the selection shown is not published)")
    joint = sel.selected
    print(f"selected configuration: {joint}  ({sel.rule}; Δ mean|φ| on the selection half "
          f"{sel.delta_phi_selection_half_pct:+.2f}%, on the held-out half {sel.delta_phi_heldout_pct:+.2f}%, "
          f"ΔL2 {sel.delta_l2_pct:+.2f}%)")
else:
    joint = select.selected_joint(ctx.profile)
    ensure_trained(ctx.profile, [joint])
    print(f"no joint run selected; using {joint}")''',
        ("md", "## Reconstruction summary (§5.3, App. D): CE on the CE range, L2/L0/norms on the co-occurrence range"),
        '''paper = select.paper_joint(ctx.profile).name
pair = [Run.of(ctx.profile, n) for n in dict.fromkeys(["solo", paper, joint])]
ensure_trained(ctx.profile, pair)
ce_res = ce.ensure_ce(ctx.profile, pair, batchtopk_for=pair)
rows = []
for run in pair:
    n = run.name
    r, c = recon.ensure_reconstruction(run), ce_res[n]
    m = r.thresholded
    rows.append({"run": n, "ce_clean": c.ce_clean, "ce_spliced": c.ce_spliced,
                 "ce_overhead_pct": c.overhead_pct, "ce_batchtopk": c.ce_batchtopk,
                 "ce_overhead_batchtopk_pct": c.overhead_batchtopk_pct, "ce_zero": c.ce_zero,
                 "loss_recovered": c.recovered, "l2": m.mse, "fve": m.fve, "l0": m.l0,
                 "dead": r.n_dead, "dead_on_tokens": r.firing_n_tokens, "input_norm_mean": m.input_norm.get("mean"),
                 "input_norm_std": m.input_norm.get("std"), "recon_norm_ratio_mean": m.norm_ratio["mean"]})
recon_df = pd.DataFrame(rows)
save_table(recon_df, ctx.tables, "reconstruction_summary")
recon_df''',
        ("md", "## Export to SAELens\n\nThe primary pair (solo and the paper's configuration, seed 0) in SAELens' "
               "format, as `python -m paperlib.export` writes it: a JumpReLU SAE with the calibrated thresholds, the "
               "hook and model from the profile, and the log10 firing rates. `sae_lens.SAE.load_from_disk(folder)` "
               "reads each folder. SAEs that standardise per dimension and per token cannot take raw activations "
               "and are skipped here (see the README)."),
        '''from paperlib.config.paths import profile_dir
from paperlib.stages import export
if ctx.profile.sae.input_norm == "token":
    for folder in export.export_runs(ctx.profile, pair[:2], profile_dir(ctx.profile) / "exports", progress=False):
        print(folder)
else:
    print(f"input_norm={ctx.profile.sae.input_norm!r}: not exportable for raw activations (README, Export)")''',
    ],
)
