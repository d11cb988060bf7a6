"""Seed variance of claim C1 (method − ECG-only, distinct diagnosis columns) with and without an EMA of the weights.

Usage (after a `make study`, whose pre-trained encoders and runs it reuses):
  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
  .venv/bin/python benchmarks/bench_seed_variance.py --decay 0.98 --seeds 0 1 2 3 4 5 6 7 [--check-seed 0] [--json out.json]

What it does: for every seed, the default (`quick`) plan's two C1 fits are trained again with `ema_decay = --decay`,
two at a time on one thread each (as `make study` runs them): `method` fine-tuning (`finetune_dx` on the stored
pre-trained encoder `reports/quick/method_s{seed}_pretrain/checkpoint.pt`, so pre-training is shared and only
fine-tuning differs) and `ecg_only`. Both are scored as claim C1 is (`ecg_study.claims.evaluate_claim`: patient-
clustered bootstrap plus the seeds' spread, MDE at 80 % power) against the same seeds of the stored runs, which have
no EMA. `--check-seed S` first retrains that seed's `method` fit without EMA and requires its test predictions to
equal the stored ones, so the comparison is against the code as it is now.

Prints, per arm: mean AUROCs, the per-seed C1 differences, their SD, se_seeds, se_patients, MDE, epochs run and
seconds per fit. Writes nothing under reports/ (the new runs go to benchmarks/out/seed_variance/).
"""
import argparse, json, multiprocessing, platform, sys, time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study.claims import Claim, ClaimEvaluator, evaluate_claim, seed_predictions  # noqa: E402
from ecg_study.datasets import load_prepared  # noqa: E402
from ecg_study.plans import load_plan, stage_config  # noqa: E402
from ecg_study.run_config import load_predictions  # noqa: E402

PLAN_DIR, DATA = ROOT / "reports" / "quick", ROOT / "data" / "processed" / "quick_synthetic"
OUT = ROOT / "benchmarks" / "out" / "seed_variance"
C1 = Claim("C1", "method − ECG-only", "difference", "method", "ecg_only", labels="distinct")


def fit(job: tuple) -> dict:
    "One fit in its own process (one torch thread): ('method' | 'ecg_only', seed, decay, run_dir)."
    from ecg_study.training import finetune_dx, train_baseline
    kind, seed, decay, run_dir = job
    defaults = {k: v for k, v in load_plan("quick")["defaults"].items() if k != "seeds"}
    cfg = stage_config({**defaults, "ema_decay": decay}, seed, 1, str(DATA))
    t0 = time.perf_counter()
    if kind == "method":
        s = finetune_dx(DATA, run_dir, cfg, encoder_ckpt=PLAN_DIR / f"method_s{seed}_pretrain" / "checkpoint.pt")
    else:
        s = train_baseline("ecg_only", DATA, run_dir, cfg)
    return {"kind": kind, "seed": seed, "seconds": time.perf_counter() - t0,
            "epochs": [p["epochs"] for p in s["parts"]], "epoch_kept": [p["epoch_kept"] for p in s["parts"]]}


def c1(dirs: dict, patients: np.ndarray, n_boot: int) -> dict:
    "Claim C1 on {(model, seed): run_dir}, as the evaluate stage scores it."
    preds = {}
    for model in ("method", "ecg_only"):
        preds["synthetic", model] = seed_predictions([(s, d, "test") for (m, s), d in dirs.items() if m == model], patients, model)
    row = evaluate_claim(C1, ClaimEvaluator(preds, n_boot=n_boot))
    keep = ("estimate", "ci_low", "ci_high", "mde", "se_seeds", "se_patients", "p_value", "n_seeds",
            "macro_synthetic/method", "macro_synthetic/ecg_only")
    return {**{k: row[k] for k in keep}, "per_seed": row["per_seed"], "sd_per_seed": float(np.std(row["per_seed"], ddof=1))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decay", type=float, default=0.98)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--check-seed", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    missing = [s for s in a.seeds if not (PLAN_DIR / f"method_s{s}_pretrain" / "part0" / "checkpoint.pt").exists()
               or not (PLAN_DIR / f"ecg_only_s{s}" / "test_predictions.npz").exists()]
    if missing: sys.exit(f"{PLAN_DIR}: no stored runs for seeds {missing}; run `make study` first")
    t_start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        if a.check_seed is not None:
            d = OUT / "check" / f"method_s{a.check_seed}"
            ex.submit(fit, ("method", a.check_seed, 0.0, d)).result()
            same = np.array_equal(load_predictions(d)["y_score"], load_predictions(PLAN_DIR / f"method_s{a.check_seed}_dx")["y_score"])
            print(f"check: seed {a.check_seed} without EMA reproduces the stored method run: {same}")
            if not same: sys.exit("the stored runs are not what this code trains: rerun `make study` first")
        tag = f"ema{a.decay:g}"
        jobs = [(k, s, a.decay, OUT / tag / f"{k}_s{s}") for s in a.seeds for k in ("ecg_only", "method")]
        fits = list(ex.map(fit, jobs))
    patients = load_prepared(DATA).cohort["subject_id"].to_numpy()
    stored = {("method", s): PLAN_DIR / f"method_s{s}_dx" for s in a.seeds} | {("ecg_only", s): PLAN_DIR / f"ecg_only_s{s}" for s in a.seeds}
    new = {(k, s): OUT / tag / f"{k}_s{s}" for s in a.seeds for k in ("method", "ecg_only")}
    res = {"machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "decay": a.decay, "seeds": a.seeds,
           "wall_s": time.perf_counter() - t_start, "fits": fits,
           "no_ema": c1(stored, patients, a.n_boot), tag: c1(new, patients, a.n_boot)}
    for arm in ("no_ema", tag):
        r = res[arm]
        print(f"{arm:>8}: method {r['macro_synthetic/method']:.4f}  ecg_only {r['macro_synthetic/ecg_only']:.4f}  "
              f"C1 {r['estimate']:+.4f} ({r['ci_low']:+.4f} … {r['ci_high']:+.4f})  per-seed SD {r['sd_per_seed']:.4f}  "
              f"se_seeds {r['se_seeds']:.4f}  se_patients {r['se_patients']:.4f}  MDE {r['mde']:.4f}")
        print("          per seed: " + " ".join(f"{x:+.3f}" for x in r["per_seed"]))
    for k in ("method", "ecg_only"):
        f = [x for x in fits if x["kind"] == k]
        print(f"{k}: {np.mean([x['seconds'] for x in f]):.0f} s per fit; epochs run {[x['epochs'] for x in f]}; kept {[x['epoch_kept'] for x in f]}")
    if a.json: a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
