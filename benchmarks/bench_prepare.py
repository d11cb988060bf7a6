"""Prepare throughput: cohort SQL (seconds, peak memory) on ≥ 10^6 labevents rows, and signal records/s.

Builds a scaled raw MIMIC layout by hand (numpy → .csv.gz, and `labevents` straight from DuckDB SQL; the synthetic
simulator is not used so the table sizes are exact), then times the cohort SQL steps of `ecg_study.cohort` and
`write_signals`. Usage: .venv/bin/python benchmarks/bench_prepare.py [--stays 20000] [--labs-per-stay 50]
       [--labevents-rows N] [--records 400] [--memory-limit 2GB] [--jobs 2] [--out benchmarks/out/prepare] [--json FILE]
MIMIC size: --stays 425000 --labevents-rows 100000000 --records 20000 --memory-limit 3GB
       --json benchmarks/results/prepare_scale.json
"""
import argparse, json, os, platform, shutil, threading, time
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from ecg_study.core import LABS, MIMIC_LEADS, VITALS

def gz(df, path):
    path.parent.mkdir(parents=True, exist_ok=True); df.to_csv(path, index=False, compression="gzip")

def write_labevents(path: Path, subj, hadm, intime, items: pd.DataFrame, n_rows: int, seed: int = 0, threads: int = 2):
    """hosp/labevents.csv.gz with `n_rows` rows written by DuckDB straight from SQL (10^8 rows never sit in pandas):
    a stay, an item and a value per row from hashes of the row number; 5 % text results (real quirk: no valuenum)."""
    import duckdb
    ref = {l.itemid: (l.ref_low, l.ref_high) for l in LABS}
    it = items.assign(k=np.arange(len(items)), lo=[ref.get(i, (None, None))[0] for i in items.itemid],
                      hi=[ref.get(i, (None, None))[1] for i in items.itemid])
    st = pd.DataFrame(dict(j=np.arange(len(subj)), subject_id=subj, hadm_id=hadm, intime=intime))
    con = duckdb.connect(); con.sql(f"SET threads={threads}"); con.sql("SET memory_limit='4GB'")
    con.register("stays", st); con.register("items", it[["k", "itemid", "lo", "hi"]])
    h = lambda salt: f"hash(i, {seed}, {salt})"      # a reproducible pseudo-random UBIGINT per row and purpose
    rows = f"""SELECT i, {h(1)} % {len(st)} AS j, {h(2)} % {len(it)} AS k, {h(4)} % 100 < 5 AS txt,
                      0.7 + ({h(5)} % 1000000) / 1e6 * 0.9 AS u, CAST({h(3)} % 8640 AS BIGINT) - 4320 AS dt
               FROM (SELECT range AS i FROM range({n_rows}))"""
    con.sql(f"""COPY (
      SELECT i AS labevent_id, subject_id, hadm_id, i AS specimen_id, itemid, '' AS order_provider_id,
             intime + to_minutes(dt) AS charttime, '' AS storetime,
             CASE WHEN txt THEN '___' ELSE CAST(v AS VARCHAR) END AS value, CASE WHEN txt THEN NULL ELSE v END AS valuenum,
             '' AS valueuom, lo AS ref_range_lower, hi AS ref_range_upper, '' AS flag, 'ROUTINE' AS priority, '' AS comments
      FROM (SELECT *, round(coalesce(t.lo, 1.0) * u + 0.01, 3) AS v FROM ({rows}) g JOIN stays s USING (j) JOIN items t USING (k))
    ) TO '{path}' (HEADER, COMPRESSION gzip)""")
    con.close()

def build(root: Path, n_stays: int, n_labevents: int, n_records: int, seed: int = 0) -> list[str]:
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
    write_labevents(root / "hosp/labevents.csv.gz", subj, hadm, intime, items, n_labevents, seed)
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

class DiskPeak(threading.Thread):
    "The largest size (MB) a folder reached, sampled every half second (DuckDB's spill files come and go)."
    def __init__(self, folder: Path):
        super().__init__(daemon=True); self.folder, self.peak_mb, self.done = folder, 0.0, threading.Event()
    def run(self):
        while not self.done.wait(0.5):
            try: mb = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file()) / 2**20
            except FileNotFoundError: continue      # a spill file removed while summing
            self.peak_mb = max(self.peak_mb, mb)

def status_kb(field: str, pid="self") -> int:
    "A memory field (kB) of /proc/<pid>/status; 0 where the process has none (a zombie has no VmRSS)."
    for l in Path(f"/proc/{pid}/status").read_text().splitlines():
        if l.startswith(f"{field}:"): return int(l.split()[1])
    return 0

def proc_rss_mb() -> dict:
    "This process's resident memory now and its peak so far (MB), after a step: which step sets the peak."
    return {"now": round(status_kb("VmRSS") / 1024, 1), "peak": round(status_kb("VmHWM") / 1024, 1)}

def folder_mb(path: Path) -> float: return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)

def bench_sql(root: Path, work: Path, memory_limit: str) -> dict:
    "Seconds per cohort SQL step (the `mimic` path without signals), peak RSS and the DuckDB temp folder's peak size."
    from ecg_study import cohort as co, raw_tables
    steps, t0 = {}, time.time()
    disk = DiskPeak(work); disk.start()
    rss = {}
    def lap(name):
        nonlocal t0; steps[name] = round(time.time() - t0, 2); t0 = time.time()
        rss[name] = proc_rss_mb()
    con = raw_tables.connect_raw(root, root / "ecg", memory_limit, work); lap("connect + layout checks")
    n_le = con.execute("SELECT count(*) FROM labevents").fetchall()[0][0]; t0 = time.time()   # not a prepare step: untimed,
    # and before the feature table exists (a scan beside it would add DuckDB's working set to the peak)
    raw_tables.quality_counts(con); lap("quality rules (one scan per table, labevents' plausibility limits)")
    co.select_samples(con); lap("samples (ECG in ED window)")
    co.build_diagnoses(con, co.gem_icd9_to_icd10()); lap("diagnoses (GEM, ancestors)")
    thr = co.build_lab_tables(con); lap("lab fluids, ref-range medians, lab rows (2 labevents scans)")
    feats = co.build_features(con, spill_dir=work, memory_limit=memory_limit); lap("features (demographics, biometrics, vitals, lab stats)")
    vals = co.closest_lab_values(con); lap("closest lab value ±60 min")
    ids = con.sql("SELECT study_id FROM samples ORDER BY study_id").df()["study_id"]
    dx = co.diagnosis_matrix(con, pd.Index(ids), 10); lap("diagnosis label matrix")
    pd.concat([feats.reset_index(), dx.reset_index(drop=True)], axis=1).to_parquet(work / "cohort.parquet", index=False)
    lap("cohort table (concat, parquet)")          # as prepare assembles and writes it
    disk.done.set(); disk.join()
    return {"labevents_rows": n_le, "samples": len(feats), "features": feats.shape[1], "diagnosis_labels": dx.shape[1],
            "steps_s": steps, "steps_rss_mb": rss, "total_s": round(sum(steps.values()), 2), "peak_rss_mb": proc_rss_mb()["peak"],
            "duckdb_memory_limit": memory_limit, "duckdb_temp_peak_mb": round(disk.peak_mb, 1)}

class TreeRssPeak(threading.Thread):
    """The largest resident memory (MB) of this process and its children together, sampled every 0.2 s. (The children's
    `ru_maxrss` is no measure: a spawned worker starts as a fork, and counts the whole parent until it execs.)"""
    def __init__(self):
        super().__init__(daemon=True); self.peak_mb, self.done = 0.0, threading.Event()
    def run(self):
        me = os.getpid()
        while not self.done.wait(0.2):
            kb = status_kb("VmRSS")
            for d in Path("/proc").iterdir():
                try:
                    if d.name.isdigit() and f"PPid:\t{me}\n" in (d / "status").read_text(): kb += status_kb("VmRSS", d.name)
                except (FileNotFoundError, ProcessLookupError): continue    # a process that ended while read
            self.peak_mb = max(self.peak_mb, kb / 1024)

def bench_signals(paths: list[str], work: Path, jobs: int) -> dict:
    "Records/s of `write_signals`, and the peak memory of this process and its workers while it runs."
    from ecg_study.signals import write_signals
    tree = TreeRssPeak(); tree.start()
    t0 = time.time(); st = write_signals(paths, work / "signals.npy", n_jobs=jobs, progress=False)
    secs = time.time() - t0
    tree.done.set(); tree.join()
    return {"records": len(paths), "ok": int((st.status == "ok").sum()), "seconds": round(secs, 2),
            "records_per_s": round(len(paths) / secs, 1), "n_jobs": jobs, "peak_rss_with_workers_mb": round(tree.peak_mb, 1)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stays", type=int, default=20000); ap.add_argument("--labs-per-stay", type=int, default=50)
    ap.add_argument("--labevents-rows", type=int, default=None, help="labevents rows (default: stays × labs per stay)")
    ap.add_argument("--build-only", action="store_true", help="build (or keep) the raw layout and stop")
    ap.add_argument("--json", default=None, help="also write the figures here (e.g. benchmarks/results/prepare_scale.json)")
    ap.add_argument("--records", type=int, default=400); ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--jobs", type=int, default=2); ap.add_argument("--out", default="benchmarks/out/prepare")
    a = ap.parse_args()
    out = Path(a.out)
    n_le = a.labevents_rows or a.stays * a.labs_per_stay
    spec = json.dumps([a.stays, n_le, a.records])      # a raw layout built for these sizes is reused (building is not measured)
    t0 = time.time()
    if (out / "raw" / "built.json").exists() and (out / "raw" / "built.json").read_text() == spec:
        paths = json.loads((out / "raw" / "paths.json").read_text()); shutil.rmtree(out / "work", ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
        paths = build(out / "raw", a.stays, n_le, a.records)
        (out / "raw" / "paths.json").write_text(json.dumps(paths)); (out / "raw" / "built.json").write_text(spec)
    if a.build_only: return
    res = {"machine": f"{platform.machine()}, {platform.processor() or platform.platform()}, {__import__('os').cpu_count()} CPUs",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_before": os.getloadavg()[0],
           "build_raw_s": round(time.time() - t0, 1),
           "raw_mb": {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted((out / "raw").rglob("*.csv*"))}}
    (out / "work").mkdir(parents=True)
    res["cohort_sql"] = bench_sql(out / "raw", out / "work", a.memory_limit)
    res["signals"] = bench_signals(paths, out / "work", a.jobs)
    sql, sig = res["cohort_sql"], res["signals"]
    res |= {"labevents_rows": sql["labevents_rows"], "seconds": round(sql["total_s"] + sig["seconds"], 1),
            "peak_rss_mb": max(sql["peak_rss_mb"], sig["peak_rss_with_workers_mb"]), "steps_s": {**sql["steps_s"], "signals": sig["seconds"]},
            "work_mb_after": folder_mb(out / "work"), "load_average_after": os.getloadavg()[0]}
    print(json.dumps(res, indent=1))
    (out / "result.json").write_text(json.dumps(res, indent=1))
    if a.json: Path(a.json).parent.mkdir(parents=True, exist_ok=True); Path(a.json).write_text(json.dumps(res, indent=1))

if __name__ == "__main__":
    main()
