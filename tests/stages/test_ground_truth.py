"""The ground-truth benchmark driver on a tiny config (paperlib.stages.ground_truth)."""

from paperlib.data.synthetic import generate, tiny_config
from paperlib.stages import ground_truth as gt


def test_run_benchmark_tiny(tmp_path):
    cfg = tiny_config()
    df = gt.run_benchmark(cfg, arms=("solo", "joint"), out_dir=tmp_path, progress=False)
    assert list(df["arm"]) == ["solo", "joint"]
    for col in ("mmcs_true", "recovered_frac", "blend_frac", "mean_abs_phi", "fvu", "true_mean_abs_phi"):
        assert df[col].notna().all()
    assert ((df["blend_frac"] >= 0) & (df["blend_frac"] <= 1)).all()
    # a finished run is reused
    df2 = gt.run_benchmark(cfg, arms=("solo",), out_dir=tmp_path, progress=False)
    assert df2["mmcs_true"].iloc[0] == df["mmcs_true"].iloc[0]


def test_true_feature_stats_and_config_key():
    cfg = tiny_config()
    data = generate(cfg)
    F = (data.codes_eval != 0).toarray()
    s = gt.true_feature_stats(data)
    assert s["true_l0"] == F.sum(1).mean()
    assert gt.config_key(cfg) == gt.config_key(tiny_config()) != gt.config_key(cfg.replace(seed=1))
