"""Generate notebooks/08_ground_truth.ipynb."""

from pathlib import Path

import nbformat

from tools.nbbuild import write_notebook

PATH = "notebooks/08_ground_truth.ipynb"

write_notebook(
    PATH,
    "08 · Ground-truth atomicity benchmark: does lower |φ| mean more atomic latents?",
    "Synthetic activations are sparse combinations of **known** true features (`paperlib.data.synthetic`), built "
    "so that the question can be answered either way:\n\n"
    "* every true direction is its own direction plus two of a few **shared compositional parts**, so the "
    "decoder rows of an SAE that finds the true features are decomposable by construction (what a meta SAE "
    "finds);\n"
    "* **parent/child hierarchies**: a child fires only with its parent, the setting in which SAEs absorb the "
    "parent into the child latents;\n"
    "* the remaining features fire independently.\n\n"
    "For each of several data seeds every arm — solo, joint at three λ₂, the random-critic control and "
    "OrtSAE — is trained on the same tokens with the same SAE seed (paired), calibrated and evaluated on "
    "held-out tokens (`paperlib.stages.ground_truth`). Each SAE gets the three |φ| statistics of the primary "
    "comparison (all pairs, alive pairs, null-corrected excess), its FVU against the data's noise floor and "
    "its dead latents (the convergence criteria), and atomicity metrics: per latent, precision / recall / F1 of "
    "its firing against the best-matching true feature's firing and `multi_share`, the share of its firings "
    "that a second true feature explains but the best one does not; and the decoder-geometry metrics "
    "(`mmcs_true`: mean over true directions of the best decoder cosine; `blend_frac`: latents whose row needs "
    "a second true direction).\n\n"
    "**Primary result:** the Spearman rank correlation, with a 95% bootstrap CI, between each |φ| statistic and "
    "each atomicity metric across all trained SAEs (and within data seed); then each arm minus solo, paired over "
    "data seeds, with CI and minimum detectable effect.\n\n"
    "The `profile` parameter is used only for the output folders. With `PAPERLIB_PROFILE=smoke` a tiny config "
    "with three seeds and two arms runs in seconds.",
    '''seeds: str = "0,1,2,3,4"  # data seeds (each also the SAE seed of every arm trained on it)
arms: str = "solo,joint-l0.1-s1,joint-l0.3-s1,joint-l1-s1,randcritic-l0.3-s1,ortho-g0.1"  # run names
n_resamples: int = 2000    # bootstrap resamples per correlation
workers: int = 2           # processes training data seeds in parallel (one torch thread each; 1 on smoke)''',
    [
        r'''import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.config import paths
from paperlib.data.synthetic import SyntheticConfig, generate, tiny_config
from paperlib.report.figures import ground_truth_figure
from paperlib.report.notebook import save_figure, save_table, setup
from paperlib.report.summary import ground_truth_text
from paperlib.sae.arms import parse_numbers
from paperlib.stages import ground_truth as gt

ctx = setup(profile)
smoke = ctx.profile.name == "smoke"
seed_list = [int(s) for s in parse_numbers("seeds", seeds)]
arm_list = [a.strip() for a in arms.split(",") if a.strip()]
if smoke:  # a tiny problem, three seeds, two arms: the notebook's code path in seconds
    config, seed_list, arm_list, workers = tiny_config(), seed_list[:3], arm_list[:1] + arm_list[2:3], 1
else:
    config = SyntheticConfig()
config''',
        ("md", "## The ground truth: declared structure, recovered from the generated data"),
        r'''data = generate(config.replace(seed=seed_list[0]))
F = (data.codes_eval != 0).toarray()
print(f"d={config.d}, true features={config.n_features}, expected L0={config.expected_l0:.2f}, "
      f"realised L0={F.sum(1).mean():.2f}, noise floor of the FVU={gt.noise_floor_fvu(data):.4f}")
kids = data.children.ravel()
print(f"hierarchies: {len(data.parents)} parents × {config.n_children} children; P(parent | child) = "
      f"{F[:, data.parent_of[kids]][F[:, kids]].mean():.3f} (1 by construction), "
      f"P(child | parent) = {F[:, kids].reshape(len(F), len(data.parents), -1).any(2)[F[:, data.parents]].mean():.3f} "
      f"(declared {config.child_prob})")
# every direction leans on its declared shared parts, not on the others
cos_parts = np.abs(data.directions @ data.parts.T)
mine = np.take_along_axis(cos_parts, data.part_sets, 1)
own_parts = mine.mean()
other = (cos_parts.sum() - mine.sum()) / (cos_parts.size - mine.size)
print(f"shared parts: {config.n_parts}, {config.parts_per_feature} per feature; mean |cos| of a direction with its "
      f"own parts {own_parts:.3f} vs with the other parts {other:.3f}")''',
        ("md", "## Train and evaluate every arm on every data seed"),
        r'''t0 = time.perf_counter()
runs_dir = paths.profile_dir(ctx.profile) / "synthetic"
df = gt.run_benchmark(config, arm_list, seeds=seed_list, out_dir=runs_dir, workers=workers)
bench_seconds = time.perf_counter() - t0
print(f"benchmark: {bench_seconds:.1f} s wall for {len(df)} SAEs with {workers} worker(s); per SAE (train + evaluate) "
      f"median {df['seconds'].median():.2f} s wall, {df['cpu_seconds'].median():.2f} s CPU")
cols = ["seed", "run", "label", *gt.PHI_STATS, "act_f1", "act_precision", "act_recall", "multi_share", "mmcs_true",
        "blend_frac", "recovered_parent", "recovered_child", "recovered_independent", "fvu", "fvu_floor", "fvu_gap",
        "n_dead", "dead_frac", "converged", "l0", "seconds", "cpu_seconds"]
table = df[cols]
save_table(table, ctx.tables, "ground_truth")
conv = gt.convergence_summary(df)
print(f"convergence: {conv['n_converged']}/{conv['n_saes']} SAEs with FVU − floor ≤ {conv['max_fvu_gap_allowed']} "
      f"and dead < {conv['max_dead_frac_allowed']:.0%} (largest gap {conv['max_fvu_gap']:.4f}, "
      f"largest dead share {conv['max_dead_frac']:.3f})")
table''',
        ("md", "## Primary result: rank correlation of |φ| with atomicity across SAEs\n"
               "`proxy_sign` is the sign that |φ| as an atomicity proxy predicts (−1: lower |φ| goes with a higher "
               "metric). `verdict` reads the 95% bootstrap CI: *no evidence* when it covers 0. *within seed* removes "
               "each data seed's mean first (only differences between arms trained on the same data)."),
        r'''corr = gt.correlations(df, n_resamples=n_resamples)
save_table(corr, ctx.tables, "ground_truth_correlations")
corr''',
        ("md", "## Paired arm differences (arm − solo, paired over data seeds)"),
        r'''pair = gt.paired_differences(df)
save_table(pair, ctx.tables, "ground_truth_paired")
pair''',
        ("md", "## Figure"),
        r'''fig = ground_truth_figure(df, corr, caption=(
    f"{len(seed_list)} data seeds × {len(arm_list)} arms · d={config.d}, {config.n_features} true features, "
    f"{config.n_latents} latents, k={config.k} · profile {ctx.profile.name} (output folders only)"))
save_figure(fig, ctx.figures, "ground_truth")
plt.show()''',
        ("md", "## Verdict\nComputed from the tables above (not hand-written), so it stays true on re-runs."),
        r'''print(ground_truth_text(corr, pair, df))''',
    ],
)

# The synthetic benchmark ignores the profile's model and data: say so where the profile is set.
path = Path(PATH)
nb = nbformat.read(path, as_version=4)
cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
old = "  # default | smoke | gemma-3-270m | gpt2-large | gemma-2-9b\n"
assert old in cell.source
cell.source = cell.source.replace(old, "  # output folders only (smoke: a tiny problem)\n")
path.write_text(nbformat.writes(nb))
