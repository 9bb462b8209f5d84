"""Generate notebooks/06_case_studies.ipynb and notebooks/07_gemma.ipynb."""

from pathlib import Path

import nbformat

from tools.nbbuild import write_notebook

write_notebook(
    "notebooks/06_case_studies.ipynb",
    "06 · Qualitative case studies: splitting and merging candidates (§5.4, §6, App. E, Tables 2–5)",
    "Cross-SAE φ between every solo feature and every feature of the selected joint SAE, measured on "
    "the same co-occurrence tokens, finds **splitting candidates**: solo features (firing rate ≤ 5%) "
    "that co-fire strongly with two or more joint features, ranked by their second-highest cross-φ. "
    "**Merging candidates** are the symmetric case from the joint side. For the top candidates we show a "
    "table like the paper's Tables 2–5 — |φ|, firing rate, decoder cosine, fuzz score and explanation "
    "(auto-interp via `paperlib.stages.interp`; \"—\" when no judge is used) — and each feature's top "
    "activating contexts with the firing token marked «like this». A true split has partners that "
    "rarely co-fire with each other; the column `max_phi_other_partners` near 1 flags duplicates instead.",
    '''sae: str = "joint"                      # "joint": the selected configuration, or a run name (joint-l0.3-s1.0)
n_candidates: int = 5                   # candidates of each kind to show
max_partners: int = 3                   # partners listed per candidate
max_partner_phi: Optional[float] = 0.8  # skip candidates whose partners co-fire at φ ≥ this (duplicates); None: all
judge: str = "local"                    # local | openai | none (no fuzz scores / explanations)''',
    [
        '''from IPython.display import Markdown, display

from paperlib.report.case_studies import case_study_markdown, cross_phi_figure, save_case_studies
from paperlib.report.notebook import setup, save_figure
from paperlib.stages.case_studies import case_studies
from paperlib.stages.run import Run
from paperlib.stages.select import select_runs
from paperlib.stages.train import ensure_trained

ctx = setup(profile)
joint = select_runs(ctx.profile, sae)[0].name
ensure_trained(ctx.profile, ["solo", joint])
print("solo vs", joint)''',
        ("md", "## Judge (for fuzz scores and explanations) and its sanity check"),
        '''judge_obj = None
if judge and judge != "none":
    from paperlib.stages.interp import ensure_sanity, make_judge

    judge_obj = make_judge(judge, profile=ctx.profile)
    print("judge sanity check:", ensure_sanity(ctx.profile, judge_obj))
else:
    print("no judge: fuzz and explanation columns show —")''',
        ("md", "## Candidates from cross-SAE φ"),
        '''n_scored = 1 if ctx.profile.name == "smoke" else n_candidates  # judge cost: keep smoke fast
res = case_studies(Run.of(ctx.profile, "solo"), Run.of(ctx.profile, joint), n_candidates=n_candidates,
                   max_partners=max_partners,
                   judge=judge_obj, n_scored=n_scored, max_partner_phi=max_partner_phi)
print(f"{res['n_splitting']} splitting and {res['n_merging']} merging candidates "
      f"(rate ≤ 5%, ≥ 2 partners with φ ≥ 0.2); showing the top {n_candidates} of each")
print("skipped as near-duplicate partners (φ ≥ "
      f"{max_partner_phi} between any two of their partners):", res["n_skipped_duplicates"])''',
        '''note = (f"Solo vs {joint} on the co-occurrence range ({res['cross'].T} tokens), profile {ctx.profile.name}. "
        f"{res['n_splitting']} splitting / {res['n_merging']} merging candidates in total; "
        f"skipped as near-duplicate partners (φ ≥ {max_partner_phi} between any two partners): "
        f"{res['n_skipped_duplicates']['splitting']} / {res['n_skipped_duplicates']['merging']}. "
        + ("" if res["interp_available"] else "No auto-interp results: fuzz and explanations are —."))
save_case_studies(res["splitting"], ctx.tables, "case_studies_splitting", "Splitting case studies", note)
save_case_studies(res["merging"], ctx.tables, "case_studies_merging", "Merging case studies", note)''',
        ("md", "## Cross-φ structure of the candidates"),
        '''fig = cross_phi_figure(res["cross_phi"], solo_label="solo", joint_label=joint)
save_figure(fig, ctx.figures, "case_studies_cross_phi")''',
        ("md", "## Splitting case studies"),
        '''display(Markdown(case_study_markdown(res["splitting"], "Splitting", note)))''',
        ("md", "## Merging case studies"),
        '''display(Markdown(case_study_markdown(res["merging"], "Merging", note)))''',
    ],
)

GEMMA = "notebooks/07_gemma.ipynb"
write_notebook(
    GEMMA,
    "07 · Generalisation to a second model family (§6: Gemma)",
    "The paper's §6 on Gemma: first the paired-seed comparison of solo and the paper's configuration "
    "(the same statistics and test as notebook 04: the seed is the unit), then solo plus the λ₂ × σ² joint "
    "grid at one seed (exploratory), each evaluated against solo on mean "
    "|φ|, L2, CE overhead, and the fuzz score of a random sample of features per configuration "
    "(ΔFuzz %). The offline default is Gemma 3 270M (profile `gemma-3-270m`, BBC News); its outputs "
    "are part of the default run and go to the committed `figures/` and `tables/`. With "
    "`-p profile gemma-2-9b` this is the paper's experiment (GPU + hub). On `smoke` a single "
    "configuration is used.",
    '''lambda2: str = "0.1,0.3,1.0"           # λ₂ grid (the paper's §6 grid)
sigma2: str = "1.0"                    # σ² grid (the paper's §6 grid has 1.0,3.0; the offline default keeps 1.0)
n_fuzz_features: Optional[int] = None  # features scored per configuration (None: the profile's autointerp_features)
judge: str = "local"                   # local | openai | none''',
    [
        '''from paperlib.config.paths import second_model_output_dirs
from paperlib.report.notebook import setup, save_figure, save_table
from paperlib.report.figures import figure_caption, gemma_grid_figure
from paperlib.report.second_model import gemma_table
from paperlib.stages.second_model import fuzz_table, gemma_plan
from paperlib.stages import compare
from paperlib.stages.select import grid_table, select_configuration
from paperlib.stages.train import ensure_trained

ctx = setup(profile)
figures, tables = second_model_output_dirs(ctx.profile)
plan = gemma_plan(ctx.profile, lambda2, sigma2)
names = [r.name for r in plan]
print("outputs ->", figures, tables)
print(f"{len(plan)} runs:", ", ".join(names))''',
        ("md", "## Train (activations are extracted first if missing)"),
        '''run_dirs = ensure_trained(ctx.profile, plan)''',
        ("md", "## Paired seeds: solo vs the paper's configuration (the same statistics as notebook 04)"),
        '''paired = compare.paired_seed_table(ctx.profile)
save_table(paired, tables, "gemma_paired_seeds")
print(compare.overall_verdict(paired))
conv = compare.convergence_table([r for r in plan])
save_table(conv, tables, "gemma_convergence")
print(f"{int(conv['ok'].sum())} of {len(conv)} runs meet every convergence criterion")
paired[["comparison", "statistic", "K", "delta_pct", "ci_low_pct", "ci_high_pct", "p", "mde_pct", "verdict"]]''',
        ("md", "## Co-occurrence, reconstruction and CE per grid configuration (seed 0; exploratory)"),
        '''grid_names = [r.name for r in plan if r.spec.seed == 0]
grid = grid_table(ctx.profile, grid_names)
sel = select_configuration(grid, ctx.profile.grid.max_dl2_pct)
print("selection rule:", sel.rule, "->", sel.selected)''',
        ("md", "## Fuzz scores on a random sample of features per configuration"),
        '''judge_obj = None
if judge and judge != "none":
    from paperlib.stages.interp import ensure_sanity, make_judge

    judge_obj = make_judge(judge, profile=ctx.profile)
    print("judge sanity check:", ensure_sanity(ctx.profile, judge_obj))
if n_fuzz_features is None:  # smoke: a handful, to stay fast
    n_fuzz_features = 3 if ctx.profile.name == "smoke" else ctx.profile.eval.autointerp_features
n_fuzz = int(n_fuzz_features)
fuzz = fuzz_table(ctx.profile, grid_names, n_fuzz, judge_obj)
fuzz''',
        ("md", "## §6 table and figure"),
        '''table = gemma_table(grid, fuzz)
save_table(table, tables, "gemma_grid")
fig = gemma_grid_figure(table, caption=figure_caption(ctx.profile))
save_figure(fig, figures, "gemma_grid")
table''',
    ],
)

# notebook 07 defaults to the gemma-3-270m profile (not "default")
path = Path(GEMMA)
nb = nbformat.read(path, as_version=4)
cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
old = 'os.environ.get("PAPERLIB_PROFILE", "default")'
assert old in cell.source
cell.source = cell.source.replace(old, 'os.environ.get("PAPERLIB_PROFILE", "gemma-3-270m")')
path.write_text(nbformat.writes(nb))
