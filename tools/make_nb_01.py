"""Generate notebooks/01_train.ipynb."""

from tools.nbbuild import write_notebook

write_notebook(
    "notebooks/01_train.ipynb",
    "01 · Train the SAE grid (solo, MetaSAE joint grid, λ₂ = 0 control, OrtSAE, noise-floor seeds)",
    "Trains the primary BatchTopK SAEs of the paper (§3, §5) on the profile's cached activations. "
    "`sae=all` trains the whole grid: solo, λ₂ × σ², the λ₂ = 0 control, the OrtSAE arm and the "
    "extra independent solo seeds. Finished runs are skipped; killed runs resume from their last "
    "checkpoint. Writes training curves and a table of final training metrics.",
    '''sae: str = "all"               # all | solo | joint | control | a run name such as joint-l0.3-s1.0
lambda2: Optional[str] = None  # e.g. "0.1,0.3" to train a custom joint grid instead of the profile's
sigma2: Optional[str] = None   # e.g. "1.0"
seeds: Optional[str] = None    # e.g. "0,1" to train every selected run once per seed''',
    [
        '''from paperlib.report.notebook import setup, save_figure, save_table
from paperlib.stages.select import training_plan
from paperlib.stages.train import ensure_trained
from paperlib.report.training import final_metrics, training_curves
from paperlib.report.figures import figure_caption

ctx = setup(profile)
plan = training_plan(ctx.profile, sae, lambda2=lambda2, sigma2=sigma2, seeds=seeds)
print(f"{len(plan)} runs:", ", ".join(r.name for r in plan))''',
        ("md", "## Train (cached activations are extracted first if missing)"),
        '''run_dirs = ensure_trained(ctx.profile, plan)''',
        ("md", "## Training curves and final metrics"),
        '''fig = training_curves(plan, caption=figure_caption(ctx.profile))
save_figure(fig, ctx.figures, "training_curves")''',
        '''table = final_metrics(plan)
save_table(table, ctx.tables, "training_final")
table''',
    ],
)
