"""How many seeds a claim needs: its MDE on every subset of n seeds of a finished study, for each n.

Usage (after a `make study`, whose stored test predictions it reads; it trains nothing):
  .venv/bin/python benchmarks/bench_seed_subsets.py [--plan-dir reports/quick] [--claims C1 C4 C5]
      [--seeds-from PLAN.toml] [--target C1=0.01 --target C4=0.04 --target C5=0.04] [--min-seeds 3] [--n-boot 400]
      [--json out.json] [--project 8 10]
  .venv/bin/python benchmarks/bench_seed_subsets.py --from-claims reports/quick/claims.csv --project 8 10   (instant)

What it does: loads the diagnosis test predictions of the runs the claims read (the seeds each run has in
`--seeds-from`, by default the plan dir's copy `plan.toml` of the plan that wrote them), draws the patient-clustered resamples once, and scores each claim as the evaluate stage does
(`ecg_study.claims.evaluate_claim`: bootstrap over patients plus the seeds' spread, t with Satterthwaite's df) on
every combination of n of its shared seeds, n from `--min-seeds` to all. Prints per claim and n the number of
subsets, the median, 10th and 90th percentile and maximum MDE, the share of subsets above the target, and the
range of the estimate. The plan's seed counts are chosen from this table: the smallest n whose every subset meets
the target. Where even all the stored seeds miss it, `--project` gives the MDE at more seeds, assuming the seeds
spread as the stored ones do and the patient SE stays (the all-seeds evaluation, or a study's `claims.csv` with
`--from-claims`, which reads no predictions).
"""
import argparse, itertools, json, sys, tomllib
from pathlib import Path
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ecg_study import truth  # noqa: E402
from ecg_study.claims import Claim, ClaimEvaluator, Predictions, evaluate_claim, mde, seed_predictions, total_se  # noqa: E402
from ecg_study.datasets import load_prepared  # noqa: E402
from ecg_study.plans import load_plan, run_seeds  # noqa: E402
from ecg_study.study import stage_runs  # noqa: E402


def load(plan_dir: Path, claims: list[Claim], seeds_of: dict) -> tuple[dict, dict]:
    "(cohort, model) → Predictions over the plan's seeds of that run, for the runs the claims read; the visibility classes."
    runs = pd.DataFrame(stage_runs(plan_dir, ("finetune_dx", "baselines")))
    prep = {m["cohort"]: m for m in stage_runs(plan_dir, ("prepare",))}
    out = {}
    for cohort, model in {k for c in claims for k in c.models()}:
        g = runs[(runs.cohort == cohort) & (runs.model == model) & runs.seed.isin(seeds_of[cohort, model])]
        patients = load_prepared(prep[cohort]["data_dir"]).cohort["subject_id"].to_numpy()
        out[cohort, model] = seed_predictions([(s, d, "test") for s, d in zip(g.seed, g.dir)], patients, f"{cohort}/{model}")
    vis = json.loads((truth.truth_dir(prep["synthetic"]["data_dir"]) / "ecg_visibility.json").read_text())
    return out, vis


def projected_mde(res, n: int) -> float:
    """MDE of a claim at n seeds from its all-seeds result `res` (se_patients, se_seeds, n_seeds): the seed variance
    scaled to n, the patient SE kept, combined as `claims.summarise` combines them (`claims.total_se`)."""
    return mde(*total_se(res["se_patients"], res["se_seeds"] ** 2 * res["n_seeds"] / n, n))


def projections(full: dict, ns: list[int], targets: dict) -> pd.DataFrame:
    "Per claim (id → all-seeds result) and n: the projected MDE and whether it meets the target."
    return pd.DataFrame([dict(claim=c, n_seeds=n, seed_sd=r["se_seeds"] * np.sqrt(r["n_seeds"]), se_patients=r["se_patients"],
                              projected_mde=projected_mde(r, n), meets_target=projected_mde(r, n) <= float(targets[c]))
                         for c, r in full.items() for n in ns])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="quick")
    ap.add_argument("--plan-dir", type=Path, default=ROOT / "reports" / "quick")
    ap.add_argument("--claims", nargs="+", default=["C1", "C4", "C5"])
    ap.add_argument("--seeds-from", type=Path, help="plan TOML whose seed lists to read (default: PLAN_DIR/plan.toml)")
    ap.add_argument("--target", action="append", default=["C1=0.01", "C4=0.04", "C5=0.04"])
    ap.add_argument("--min-seeds", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--project", nargs="+", type=int, default=[], help="seed counts to project the MDE to")
    ap.add_argument("--from-claims", type=Path, help="a study's claims.csv: project from it, score no subsets")
    a = ap.parse_args()
    targets = dict(t.split("=") for t in a.target)
    if a.from_claims:
        full = pd.read_csv(a.from_claims).set_index("claim").loc[a.claims].to_dict("index")
        print(projections(full, a.project, targets).round(4).to_string(index=False))
        return
    spec = load_plan(a.plan)
    claims = [Claim.from_dict(d) for d in spec["claims"] if d["id"] in a.claims]
    # the seeds of each run as the plan that wrote the predictions lists them (its copy in the plan dir)
    copy = a.seeds_from or a.plan_dir / "plan.toml"
    stored = tomllib.loads(copy.read_text()) if copy.exists() else spec
    seeds_of = {(r.get("cohort", "synthetic"), r.get("model", r["name"])): run_seeds(r, stored) for r in stored["runs"]}
    preds, vis = load(a.plan_dir, claims, seeds_of)
    ev = ClaimEvaluator(preds, truth.label_visibility(next(iter(preds.values())).labels, vis), None, a.n_boot, 0)
    ev.prefetch(2)
    rows, full = [], {}
    for c in claims:
        shared = sorted(set.intersection(*(set(preds[k].scores) for k in c.models())))
        for n in range(a.min_seeds, len(shared) + 1):
            res = []
            for s in itertools.combinations(shared, n):
                # the claim reads the seeds its runs share: narrow them; the evaluator keeps its resamples and AUROCs
                ev.preds = {k: Predictions(p.labels, p.y, {x: p.scores[x] for x in s if x in p.scores}, p.groups, p.study_ids)
                            for k, p in preds.items()}
                res.append(evaluate_claim(c, ev))
            if n == len(shared): full[c.id] = res[0]
            m, e = np.array([r["mde"] for r in res]), np.array([r["estimate"] for r in res])
            rows.append(dict(claim=c.id, n_seeds=n, subsets=len(res), mde_median=np.median(m), mde_q10=np.quantile(m, .1),
                             mde_q90=np.quantile(m, .9), mde_max=m.max(), share_above_target=float((m > float(targets[c.id])).mean()),
                             estimate_min=e.min(), estimate_max=e.max()))
    df = pd.DataFrame(rows)
    print(df.round(4).to_string(index=False))
    if a.json: a.json.write_text(df.to_json(orient="records", indent=1))
    if a.project: print(projections(full, a.project, targets).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
