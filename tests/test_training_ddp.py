"""DDP by configuration: the stage functions run unchanged under Lightning's `ddp` strategy (2 CPU processes, gloo)."""
import json, subprocess, sys, textwrap
import numpy as np

SCRIPT = textwrap.dedent("""
    import sys, json
    from pathlib import Path
    from ecg_study.datasets import make_toy_prepared
    from ecg_study.run_config import TrainConfig
    from ecg_study.training import finetune_dx, finetune_lab, pretrain
    out = Path(sys.argv[1])
    data = out / "toy"
    if not (data / "manifest.json").exists(): make_toy_prepared(data, n=200)   # rank 0 runs first; ranks re-run the script
    cfg = TrainConfig(d_model=16, n_layers=1, d_state=4, tab_hidden=(16, 16), projector_dims=(32, 32), epochs=2,
                      freeze_depth=1, accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed",
                      enable_progress_bar=False, num_threads=1)
    pretrain(data, out / "pre", cfg)
    finetune_dx(data, out / "dx", cfg, out / "pre")
    finetune_lab(data, out / "lab", cfg, out / "dx")
""")

def test_ddp_two_cpu_processes(tmp_path):
    (tmp_path / "run.py").write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("pre", "dx", "lab"):
        assert (tmp_path / stage / "checkpoint.pt").exists() and (tmp_path / stage / "summary.json").exists(), stage
    dx = json.loads((tmp_path / "dx" / "summary.json").read_text())
    assert 0 <= dx["test_auroc"] <= 1 and dx["epochs"] == 2
    pred = np.load(tmp_path / "dx" / "test_predictions.npz")
    assert len(np.unique(pred["rows"])) == len(pred["rows"]) == pred["y_score"].shape[0]
