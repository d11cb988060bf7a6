"""Prepare throughput: cohort SQL (seconds, peak memory) on ≥ 10^6 labevents rows, and signal records/s.

Builds a scaled raw MIMIC layout by hand (numpy → .csv.gz; the synthetic simulator is not used so the
table sizes are exact), then times the cohort SQL steps of `ecg_study.cohort` and `write_signals`.
Usage: .venv/bin/python benchmarks/bench_prepare.py [--stays 20000] [--labs-per-stay 50] [--records 400]
       [--memory-limit 2GB] [--jobs 2] [--out benchmarks/out/prepare]
"""
import argparse, json, platform, resource, shutil, time
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from ecg_study.core import LABS, MIMIC_LEADS, VITALS

def rss_mb(who=resource.RUSAGE_SELF) -> float: return resource.getrusage(who).ru_maxrss / 1024

def gz(df, path):
    path.parent.mkdir(parents=True, exist_ok=True); df.to_csv(path, index=False, compression="gzip")

def build(root: Path, n_stays: int, labs_per_stay: int, n_records: int, seed: int = 0) -> list[str]:
    "Raw MIMIC layout with n_stays ED stays (one ECG each); WFDB files for the first n_records. Returns record paths."
    rng = np.random.default_rng(seed)
    subj = 10_000_000 + np.arange(n_stays); hadm = 20_000_000 + np.arange(n_stays); stay = 30_000_000 + np.arange(n_stays)
    intime = pd.Timestamp("2150-01-01") + pd.to_timedelta(rng.integers(0, 30 * 365 * 24 * 60, n_stays), "m")
    gz(pd.DataFrame(dict(subject_id=subj, gender=rng.choice(["F", "M"], n_stays), anchor_age=rng.integers(18, 90, n_stays),
                         anchor_year=intime.year, anchor_year_group="2014 - 2016", dod="")), root / "hosp/patients.csv.gz")
    gz(pd.DataFrame(dict(subject_id=subj, hadm_id=hadm, admittime=intime)), root / "hosp/admissions.csv.gz")
    pool9, pool10 = ["4019", "4280", "42731", "41401", "25000", "5849", "486", "2724"], [
        f"{c}{rng.integers(0, 99):02d}" for c in rng.choice(list("IEJKNRZ"), 300)]
    n_dx = n_stays * 4
    i = rng.integers(0, n_stays, n_dx); v9 = rng.random(n_dx) < 0.3
    gz(pd.DataFrame(dict(subject_id=subj[i], hadm_id=hadm[i], seq_num=1, icd_code=np.where(v9, rng.choice(pool9, n_dx), rng.choice(pool10, n_dx)),
                         icd_version=np.where(v9, 9, 10))), root / "hosp/diagnoses_icd.csv.gz")
    items = pd.DataFrame(dict(itemid=[l.itemid for l in LABS] + [51097, 51082], label=[l.label for l in LABS] + ["Potassium", "Creatinine"],
                              fluid=["Blood"] * len(LABS) + ["Urine"] * 2, category="Chemistry"))
    gz(items, root / "hosp/d_labitems.csv.gz")
    n_le = n_stays * labs_per_stay
    i = rng.integers(0, n_stays, n_le); lab = rng.integers(0, len(items), n_le)
    lo = np.array([l.ref_low if l.ref_low is not None else np.nan for l in LABS] + [np.nan, np.nan])
    hi = np.array([l.ref_high if l.ref_high is not None else np.nan for l in LABS] + [np.nan, np.nan])
    val = np.round(np.nan_to_num(lo[lab], nan=1.0) * rng.uniform(0.7, 1.6, n_le) + 0.01, 3)
    text = rng.random(n_le) < 0.05   # real quirk: text results with no valuenum
    le = pd.DataFrame(dict(labevent_id=np.arange(n_le), subject_id=subj[i], hadm_id=hadm[i], specimen_id=np.arange(n_le),
                           itemid=items.itemid.values[lab], order_provider_id="",
                           charttime=intime[i] + pd.to_timedelta(rng.integers(-3 * 1440, 3 * 1440, n_le), "m"), storetime="",
                           value=np.where(text, "___", val.astype(str)), valuenum=np.where(text, np.nan, val), valueuom="",
                           ref_range_lower=lo[lab], ref_range_upper=hi[lab], flag="", priority="ROUTINE", comments=""))
    gz(le, root / "hosp/labevents.csv.gz")
    k = np.repeat(np.arange(n_stays), 3)
    gz(pd.DataFrame(dict(subject_id=subj[k], chartdate=(intime[k] - pd.to_timedelta(rng.integers(0, 60, len(k)), "D")).date,
                         seq_num=1, result_name=np.tile(["BMI (kg/m2)", "Weight (Lbs)", "Height (Inches)"], n_stays),
                         result_value=np.tile([27.0, 180.0, 68.0], n_stays))), root / "hosp/omr.csv.gz")
    gz(pd.DataFrame(dict(subject_id=subj, hadm_id=hadm, stay_id=stay, intime=intime, outtime=intime + pd.Timedelta(hours=6),
                         gender="", race=rng.choice(["WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN", "OTHER", "UNKNOWN"], n_stays),
                         arrival_transport="", disposition="")), root / "ed/edstays.csv.gz")
    gz(pd.DataFrame(dict(subject_id=subj, stay_id=stay, acuity=rng.integers(1, 6, n_stays))), root / "ed/triage.csv.gz")
    k = np.repeat(np.arange(n_stays), 6)
    vs = pd.DataFrame(dict(subject_id=subj[k], stay_id=stay[k], charttime=intime[k] + pd.to_timedelta(np.tile(np.arange(0, 120, 20), n_stays), "m")))
    for v, (m, s) in zip(VITALS, [(98.4, 1), (85, 15), (17, 3), (97, 2), (130, 20), (75, 12)]): vs[v] = np.round(rng.normal(m, s, len(vs)), 1)
    gz(vs, root / "ed/vitalsign.csv.gz")
    gz(pd.DataFrame(dict(subject_id=subj[:10], stay_id=stay[:10], seq_num=1, icd_code="R079", icd_version=10, icd_title="")), root / "ed/diagnosis.csv.gz")
    study = 40_000_000 + np.arange(n_stays)
    paths = [f"files/p{str(s)[:4]}/p{s}/s{st}/{st}" for s, st in zip(subj, study)]
    (root / "ecg").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(dict(subject_id=subj, study_id=study, file_name=study.astype(str), ecg_time=intime + pd.Timedelta(minutes=10),
                      path=paths)).to_csv(root / "ecg/record_list.csv", index=False)
    t = np.arange(5000) / 500
    for r in range(n_records):
        d = root / "ecg" / Path(paths[r]).parent; d.mkdir(parents=True, exist_ok=True)
        x = np.stack([0.5 * np.sin(2 * np.pi * (0.5 + j / 10) * t + r) for j in range(12)], 1)
        wfdb.wrsamp(str(study[r]), fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS, p_signal=x, fmt=["16"] * 12, write_dir=str(d))
    return [str(root / "ecg" / p) for p in paths[:n_records]]

def bench_sql(root: Path, work: Path, memory_limit: str) -> dict:
    "Seconds per cohort SQL step (the `mimic` path without signals) and peak RSS."
    from ecg_study import cohort as co
    steps, t0 = {}, time.time()
    def lap(name):
        nonlocal t0; steps[name] = round(time.time() - t0, 2); t0 = time.time()
    con = co.connect_raw(root, root / "ecg", memory_limit, work); lap("connect + layout checks")
    co.select_samples(con); lap("samples (ECG in ED window)")
    co.build_diagnoses(con, co.gem_icd9_to_icd10()); lap("diagnoses (GEM, ancestors)")
    thr = co.build_lab_tables(con); lap("lab fluids, ref-range medians, lab rows (2 labevents scans)")
    feats = co.build_features(con); lap("features (demographics, biometrics, vitals, lab stats)")
    vals = co.closest_lab_values(con); lap("closest lab value ±60 min")
    ids = con.sql("SELECT study_id FROM samples ORDER BY study_id").df()["study_id"]
    dx = co.diagnosis_matrix(con, pd.Index(ids), 10); lap("diagnosis label matrix")
    n_le = con.execute("SELECT count(*) FROM labevents").fetchall()[0][0]
    return {"labevents_rows": n_le, "samples": len(feats), "features": feats.shape[1], "diagnosis_labels": dx.shape[1],
            "steps_s": steps, "total_s": round(sum(steps.values()), 2), "peak_rss_mb": round(rss_mb(), 1),
            "duckdb_memory_limit": memory_limit}

def bench_signals(paths: list[str], work: Path, jobs: int) -> dict:
    from ecg_study.signals import write_signals
    t0 = time.time(); st = write_signals(paths, work / "signals.npy", n_jobs=jobs, progress=False)
    secs = time.time() - t0
    return {"records": len(paths), "ok": int((st.status == "ok").sum()), "seconds": round(secs, 2),
            "records_per_s": round(len(paths) / secs, 1), "n_jobs": jobs, "peak_rss_children_mb": round(rss_mb(resource.RUSAGE_CHILDREN), 1)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stays", type=int, default=20000); ap.add_argument("--labs-per-stay", type=int, default=50)
    ap.add_argument("--records", type=int, default=400); ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--jobs", type=int, default=2); ap.add_argument("--out", default="benchmarks/out/prepare")
    a = ap.parse_args()
    out = Path(a.out); shutil.rmtree(out, ignore_errors=True)
    t0 = time.time(); paths = build(out / "raw", a.stays, a.labs_per_stay, a.records)
    res = {"machine": f"{platform.machine()}, {platform.processor() or platform.platform()}, {__import__('os').cpu_count()} CPUs",
           "build_raw_s": round(time.time() - t0, 1)}
    (out / "work").mkdir(parents=True)
    res["cohort_sql"] = bench_sql(out / "raw", out / "work", a.memory_limit)
    res["signals"] = bench_signals(paths, out / "work", a.jobs)
    print(json.dumps(res, indent=1))
    (out / "result.json").write_text(json.dumps(res, indent=1))

if __name__ == "__main__":
    main()
