"""Automated interpretability: contexts, judges, explanations and their scores (docs/method.md §3.6).

Modules, lowest first: :mod:`~paperlib.autointerp.judge` (item, interface, shared helpers),
:mod:`~paperlib.autointerp.prompts` (prompt text and reply parsers), :mod:`~paperlib.autointerp.cache`
(on-disk call cache), :mod:`~paperlib.autointerp.client` (OpenAI-compatible judge),
:mod:`~paperlib.autointerp.local` (offline likelihood judge), :mod:`~paperlib.autointerp.sanity`
(judge against chance), :mod:`~paperlib.autointerp.contexts` (activation windows) and
:mod:`~paperlib.autointerp.scoring` (fuzzing, detection, Spearman, paired comparison),
:mod:`~paperlib.autointerp.reliability` (AUROC, test–retest, shuffled control, power, design) and
:mod:`~paperlib.autointerp.explain` (the offline context explainer).
"""

from paperlib.autointerp.cache import DiskCache
from paperlib.autointerp.client import OpenAIJudge
from paperlib.autointerp.contexts import (
    Example,
    FeatureActivations,
    FeatureContexts,
    collect_contexts,
    collect_feature_activations,
    load_contexts,
    save_contexts,
    token_decoder,
)
from paperlib.autointerp.explain import ContextExplainer
from paperlib.autointerp.judge import Judge, JudgeItem, JudgeStats, rank_decisions, template_explanation
from paperlib.autointerp.local import LocalLikelihoodJudge
from paperlib.autointerp.reliability import (
    auroc,
    paired_power,
    plan_design,
    retest_reliability,
    shuffled_control,
    unscored_rates,
)
from paperlib.autointerp.sanity import bbc_snippets, judge_sanity_check
from paperlib.autointerp.scoring import paired_comparison, score_contexts, score_features

__all__ = [
    "ContextExplainer", "auroc", "paired_power", "plan_design", "retest_reliability", "shuffled_control",
    "unscored_rates",
    "DiskCache", "Example", "FeatureActivations", "FeatureContexts", "Judge", "JudgeItem", "JudgeStats",
    "LocalLikelihoodJudge", "OpenAIJudge", "bbc_snippets", "collect_contexts", "collect_feature_activations",
    "judge_sanity_check", "load_contexts", "paired_comparison", "rank_decisions", "save_contexts",
    "score_contexts", "score_features", "template_explanation", "token_decoder",
]
