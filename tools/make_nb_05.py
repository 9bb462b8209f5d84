"""Generate notebooks/05_autointerp.ipynb."""

from tools.nbbuild import write_notebook

write_notebook(
    "notebooks/05_autointerp.ipynb",
    "05 · Automated interpretability: fuzzing scores of matched solo ↔ joint features (§5.2, Fig. 2)",
    "Matches alive solo and joint features (Hungarian, decoder cosine), samples `n_features` "
    "matched pairs uniformly (seeded), explains and fuzz-scores both sides with a judge, and "
    "compares them (paired t-test). The judge's sanity check on labelled BBC snippets is shown "
    "first: trust Δfuzz only if the judge is clearly above chance. Lean defaults "
    "(`paperlib.stages.interp.LEAN_CONTEXT`): 6 test windows of 20 tokens per feature, no detection. "
    "Everything is cached per feature: a re-run or a killed run resumes.",
    '''sae: str = "joint"                 # joint run to compare against "solo" ("joint": the selected configuration)
judge: str = "local"               # local (offline likelihood judge) | openai (OpenAI-compatible endpoint)
base_url: Optional[str] = None     # e.g. "http://127.0.0.1:8000/v1" when judge is "openai"
judge_model: Optional[str] = None  # judge model name (local default: smollm2-135m)
n_features: Optional[int] = None   # matched pairs to score (None → profile.eval.autointerp_features)
sanity_n: Optional[int] = None     # sanity-check trials (None → 40; 20 on smoke)
seed: int = 0                      # seeds the pair sample, the sanity set and the judge's fuzz items
min_answered: float = 0.9          # least share of trials and features the judge must answer
allow_partial: bool = False        # True keeps going with missing answers, reported per side''',
    [
        '''import warnings

from paperlib.report import figures
from paperlib.report.autointerp import cosine_figure, summary_table
from paperlib.report.notebook import setup, save_figure, save_table
from paperlib.stages import interp
from paperlib.stages.run import Run
from paperlib.stages.select import select_runs
from paperlib.stages.train import ensure_trained

ctx = setup(profile)
joint_name = select_runs(ctx.profile, sae)[0].name
solo_name = "solo"
ensure_trained(ctx.profile, [solo_name, joint_name])
n_pairs_wanted = n_features or ctx.profile.eval.autointerp_features
print(f"comparing {solo_name} vs {joint_name}; {n_pairs_wanted} matched pairs; judge={judge}")''',
        ("md", "## Judge sanity check (read this first)\n\n"
               "Two-alternative forced choice on labelled BBC snippets: which snippet matches a "
               "category description? Chance = 0.5."),
        '''jdg = interp.make_judge(judge, base_url, judge_model, profile=ctx.profile)
sanity = interp.ensure_sanity(ctx.profile, jdg, n=sanity_n or interp.default_sanity_n(ctx.profile),
                              seed=seed, min_answered=min_answered, allow_partial=allow_partial)
print(f"judge {sanity['judge']}: {sanity['correct']}/{sanity['n']} = {sanity['accuracy']:.3f} "
      f"(95% Wilson CI [{sanity['wilson_low']:.3f}, {sanity['wilson_high']:.3f}]), "
      f"one-sided binomial p = {sanity['p_value']:.2g} vs chance 0.5; "
      f"{sanity.get('n_missing', 0)} trials unanswered")
if not sanity["significant"]:
    msg = ("WARNING: the judge is NOT significantly above chance on the sanity set; "
           "the fuzzing scores and Δfuzz below are not trustworthy.")
    print(msg)
    warnings.warn(msg, stacklevel=1)''',
        ("md", "## Matching (alive features only)"),
        '''match = interp.ensure_matching(Run.of(ctx.profile, solo_name), Run.of(ctx.profile, joint_name))
print(match.summary())
print(match.pairs["cosine"].describe(percentiles=[0.1, 0.25, 0.5, 0.75, 0.9]).to_string())
fig = cosine_figure(match)
save_figure(fig, ctx.figures, "autointerp_match_cosine")''',
        ("md", "## Explain and fuzz-score both sides of the sampled pairs"),
        '''solo_run, joint_run = Run.of(ctx.profile, solo_name), Run.of(ctx.profile, joint_name)
pairs, summary = interp.compare_runs(solo_run, joint_run, n_pairs_wanted, jdg,
                                     seed=seed, n_workers=1 if judge == "local" else 8,
                                     min_answered=min_answered, allow_partial=allow_partial)
print(f"scored {summary['n_new_features']} new features, "
      f"{summary['sec_per_feature']:.2f} s per feature (NaN = all cached)")
print(f"features with missing judge answers: solo {summary['n_missing_solo']}, "
      f"joint {summary['n_missing_joint']} of {summary['n_sampled']} sampled per side")
{k: summary[k] for k in ("n_sampled", "n_pairs", "mean_solo", "mean_joint", "delta", "t", "p")}''',
        ("md", "## Fig. 2: fuzz scores (joint − solo): densities, their difference, Δ with 95% CI and p"),
        '''fig = figures.fig2_autointerp(pairs, summary, solo_label=solo_name, joint_label=joint_name,
                              caption=figures.figure_caption(ctx.profile, f"judge {summary.get('judge', judge)}"))
save_figure(fig, ctx.figures, "fig2_fuzz_density_diff")''',
        ("md", "## §5.2 table and per-pair table"),
        '''table = summary_table(summary, sanity)
save_table(table, ctx.tables, "autointerp_summary")
save_table(pairs, ctx.tables, "autointerp_pairs")
table.T''',
        '''pairs.sort_values("delta").head(10)''',
    ],
)
