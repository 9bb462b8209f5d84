"""Generate notebooks/05_autointerp.ipynb."""

from tools.nbbuild import write_notebook

write_notebook(
    "notebooks/05_autointerp.ipynb",
    "05 · Automated interpretability: fuzzing AUROC of matched solo ↔ joint features (§5.2, Fig. 2)",
    "Matches alive features of solo seed s and joint seed s (Hungarian, decoder cosine) for every paired seed, "
    "and fuzz-scores both sides of matched pairs drawn in one seeded, nested order. Each feature is explained "
    "from its top windows (offline: the firing tokens plus the distinctive words before them) and scored on "
    "10 test windows shown twice, correctly and randomly highlighted (10 true + 10 fuzzed items); the score is "
    "the judge's AUROC over those items (0.5 = chance). The judge check is a shuffled-explanation control "
    "(each feature scored with another feature's explanation must sit at chance), reliability is measured by "
    "scoring features again on disjoint windows, and the paired Δ comes with its CI, p and the minimum "
    "detectable effect. The number of pairs is chosen from the cost per feature measured on a pilot so that "
    "the notebook fits `budget_s`. Everything is cached per feature: a re-run or a killed run resumes.",
    '''sae: str = "joint"                 # primary arm compared with solo, seed by seed (joint | randcritic)
judge: str = "local"               # local (offline likelihood judge) | openai (OpenAI-compatible endpoint)
base_url: Optional[str] = None     # e.g. "http://127.0.0.1:8000/v1" when judge is "openai"
judge_model: Optional[str] = None  # judge model name (local default: smollm2-135m)
budget_s: Optional[float] = None   # wall-time budget of this notebook in s (None → 150; 25 on smoke)
n_features: Optional[int] = None   # fixed number of matched pairs (None → as many as fit budget_s)
n_seeds: Optional[int] = None      # paired seeds used (None → all primary seeds)
retest_share: float = 0.25         # share of pairs whose features are scored again on disjoint windows
shuffled_share: float = 0.5        # share of pairs whose features are scored with a shuffled explanation
seed: int = 0                      # seeds the pair order and the judge's fuzz items
min_answered: float = 0.9          # least share of features the judge must answer on each side
allow_partial: bool = False        # True keeps going with missing answers, reported per side''',
    [
        '''import time

t_start = time.perf_counter()
from paperlib.autointerp.judge import check_answered
from paperlib.report import figures
from paperlib.report.autointerp import cosine_figure, describe, pairs_summary_table
from paperlib.report.notebook import setup, save_figure, save_table
from paperlib.stages import interp
from paperlib.stages.train import ensure_trained

ctx = setup(profile)
runs = interp.seed_pairs(ctx.profile, sae, n_seeds)
ensure_trained(ctx.profile, [r for pair in runs for r in pair])
budget = budget_s or interp.default_budget_s(ctx.profile)
print(f"{len(runs)} seed pairs: " + ", ".join(f"{a.name} ↔ {b.name}" for a, b in runs)
      + f"; judge={judge}; notebook budget {budget:.0f} s")''',
        ("md", "## Matching (alive features only), per seed pair"),
        '''for a, b in runs:
    m = interp.ensure_matching(a, b)
    print(f"{a.name} ↔ {b.name}: {m.summary()}; median cosine {m.pairs['cosine'].median():.3f}")
save_figure(cosine_figure(interp.ensure_matching(*runs[0]), caption=figures.figure_caption(ctx.profile)),
            ctx.figures, "autointerp_match_cosine")''',
        ("md", "## Explain and fuzz-score matched pairs inside the budget\n\n"
               "A pilot of pairs measures the cost per feature; the number of pairs then fills what is left of the "
               "budget (minus a reserve for the figures), with the retest and shuffled-control shares on top."),
        '''jdg = interp.make_judge(judge, base_url, judge_model, profile=ctx.profile)
explainer = interp.make_explainer(jdg, ctx.profile)
left = budget - (time.perf_counter() - t_start) - interp.RESERVE_S
pairs, summary = interp.compare_seed_pairs(
    ctx.profile, jdg, arm=sae, n_seeds=n_seeds, budget_s=max(left, 1.0), n_pairs=n_features,
    pilot_pairs=interp.default_pilot_pairs(ctx.profile), retest_share=retest_share,
    shuffled_share=shuffled_share, explainer=explainer, seed=seed, plan_key=budget)
for side in ("solo", "joint"):
    check_answered(jdg, f"{side} features", int((~pairs[f"missing_{side}"]).sum()), len(pairs),
                   min_answered, allow_partial)
print("\\n".join(describe(summary)))''',
        ("md", "## Fig. 2: fuzz AUROC of matched pairs (joint − solo): densities, their difference, Δ with 95% CI"),
        '''fig = figures.fig2_autointerp(
    pairs, {"delta": summary["paired_delta"], "ci_low": summary["paired_ci_low"],
            "ci_high": summary["paired_ci_high"], "p": summary["paired_p"], "n_pairs": summary["paired_n_pairs"]},
    solo_label="solo", joint_label=runs[0][1].name, bin_width=0.05, columns=("auroc_solo", "auroc_joint"),
    value_range=(0.0, 1.0), what="fuzz AUROC", chance=0.5,
    caption=figures.figure_caption(ctx.profile, f"judge {summary['judge']}, explainer {summary['explainer']}"))
save_figure(fig, ctx.figures, "fig2_fuzz_density_diff")''',
        ("md", "## §5.2 table and per-pair table"),
        '''table = pairs_summary_table(summary)
save_table(table, ctx.tables, "autointerp_summary")
save_table(pairs, ctx.tables, "autointerp_pairs")
print(f"notebook wall time so far: {time.perf_counter() - t_start:.0f} s of {budget:.0f} s")
table.T''',
        '''pairs.sort_values("delta").head(10)''',
    ],
)
