"""Can the default study's ECG encoder see what the ECG-tied lab labels hang on, when it is trained for them?

The method's lab head (a head on the frozen diagnosis encoder) scores calcium high at chance where the noise-free
ECG reader scores 0.93. This separates the two possible causes: the encoder cannot measure the sign at this size
and crop (then a supervised model trained on the lab labels fails too), or the method's embedding does not keep it
(then the supervised model succeeds).

Usage (after a `make study`, whose prepared cohort and lab heads it reads):
  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
  .venv/bin/python benchmarks/bench_lab_capacity.py fit --name default [--set d_state=64 ...] [--part 0] [--seed 0]
  .venv/bin/python benchmarks/bench_lab_capacity.py table [--names default d_state64] [--json out.json]

`fit`: an S4 encoder of the plan's `[defaults]` (with `--set` overrides) trained from scratch, nothing frozen, on the
lab-abnormality labels of one cross-fitting part, by the study's own supervised stage (`training._supervised` with
`DiagnosisModule` over the `lababn_` columns: early stopping on validation, windows averaged at test), one torch
thread; it writes under `--out` (default /tmp/bench_lab_capacity/NAME).
`table`: test AUROC per ECG-tied lab label on that part's test records, for each fitted variant, the study's method
lab heads (the seeds of `reports/quick/method_s*_lab`) on the same records, and the noise-free ECG reader
(`truth.oracle_scores` on `truth.ecg_matrix`, fitted on the part's training folds).
"""
import argparse, json, sys
from pathlib import Path
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study import truth  # noqa: E402
from ecg_study.datamodule import PreparedDataModule  # noqa: E402
from ecg_study.datasets import LAB_PREFIX, label_matrix, load_prepared, split_indices  # noqa: E402
from ecg_study.metrics import per_label_auroc  # noqa: E402
from ecg_study.plans import stage_config  # noqa: E402
from ecg_study.run_config import load_predictions  # noqa: E402
from ecg_study.stage_modules import DiagnosisModule  # noqa: E402
from ecg_study.study import stage_runs  # noqa: E402
from ecg_study.training import _supervised  # noqa: E402

TIED = ["calcium,_total_high", "calcium,_total_low", "potassium_high", "potassium_low", "hemoglobin_low"]


def fit(a, data_dir: str):
    torch.set_num_threads(1)
    # the plan's [defaults] with the `--set` overrides (JSON values), checked as a stage checks them; one thread
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = stage_config(over | {"part": a.part, "freeze_depth": 0}, a.seed, 1, data_dir, "quick")
    out = _supervised(lambda dm: DiagnosisModule.build(cfg, dm.n_labels, None, 0),
                      PreparedDataModule(data_dir, cfg, LAB_PREFIX), a.out / a.name, cfg, "lab_from_scratch")
    print(json.dumps({k: out[k] for k in ("epoch_kept", "epochs", "seconds") if k in out}))


def aurocs(y: np.ndarray, s: np.ndarray, labels: list[str]) -> dict:
    "Per label AUROC (masked rows ignored)."
    return dict(zip(labels, per_label_auroc(y, s, labels)["auroc"]))


def table(a, data_dir: str, plan_dir: Path):
    data = load_prepared(data_dir)
    labels = [LAB_PREFIX + l for l in TIED]
    y = label_matrix(data.cohort, labels)
    split = split_indices(data.cohort, 2, a.part)
    test = np.sort(split["test"])
    rows = {}
    X = truth.ecg_matrix(data.cohort, json.loads((truth.truth_dir(data_dir) / "ecg_states.json").read_text()))
    reader = truth.oracle_scores(X, y, [(np.r_[split["train"], split["val"]], test)])
    rows["ECG reader (noise-free states)"] = aurocs(y[test], reader[test], labels)

    def scored(pred, name):
        "The prediction's scores for `labels` on the part's test rows."
        at = pd.Series(np.arange(len(pred["rows"])), index=pred["rows"]).reindex(test)
        if at.isna().any(): raise ValueError(f"{name}: {int(at.isna().sum())} test records of part {a.part} not scored")
        lacking = [l for l in labels if l not in pred["labels"]]
        if lacking: raise ValueError(f"{name}: no {', '.join(lacking)} predictions")
        return pred["y_score"][np.ix_(at.to_numpy(int), [pred["labels"].index(l) for l in labels])]
    for d in sorted(plan_dir.glob("method_s*_lab")):
        rows[f"method lab head, {d.name}"] = aurocs(y[test], scored(load_predictions(d, "test"), d.name), labels)
    for n in a.names:
        rows[f"supervised on labs, {n}"] = aurocs(y[test], scored(load_predictions(a.out / n, "test"), n), labels)
    rows["positives in test"] = {l: int(np.nansum(y[test, k])) for k, l in enumerate(labels)}
    df = pd.DataFrame(rows).T.rename(columns=lambda l: l.removeprefix(LAB_PREFIX))
    print(df.round(3).to_string())
    if a.json: a.json.write_text(df.to_json(orient="index", indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fit", "table"])
    ap.add_argument("--plan-dir", type=Path, default=ROOT / "reports" / "quick")
    ap.add_argument("--name", default="default")
    ap.add_argument("--names", nargs="*", default=[])
    ap.add_argument("--set", action="append", default=[], help="TrainConfig override key=value (JSON value)")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_lab_capacity"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    data_dir = {m["cohort"]: m for m in stage_runs(a.plan_dir, ("prepare",))}["synthetic"]["data_dir"]
    fit(a, data_dir) if a.what == "fit" else table(a, data_dir, a.plan_dir)


if __name__ == "__main__":
    main()
