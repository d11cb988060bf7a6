"""Throughput of `ecg_study.signals.write_signals` (records/s) on 500 Hz 12-lead WFDB records.

Usage: .venv/bin/python benchmarks/bench_signals.py [--records 1000] [--jobs 1 2]
Records: the real PTB-XL 500 Hz sample (`data/ptbxl_sample/records500` under `$ECG_STUDY_SAMPLES`, 49 records) copied
round-robin into a temporary folder until --records files exist (distinct files, like a real cohort);
without the sample, synthetic 500 Hz records in MIMIC-IV-ECG lead order. Each run writes a fresh
store; the figure includes the process-pool start-up. Prints one JSON line per run.
"""
import argparse, json, os, platform, shutil, tempfile, time
from pathlib import Path
import numpy as np
import wfdb
from ecg_study.core import MIMIC_LEADS, sample_path
from ecg_study.signals import write_signals

SAMPLE = sample_path("data", "ptbxl_sample", "records500", "00000", required=False) or Path("/nonexistent")


def make_records(d: Path, n: int) -> list[Path]:
    "n distinct 500 Hz, 10 s records in d: copies of the PTB-XL sample, else synthetic."
    src = sorted(p.with_suffix("") for p in SAMPLE.glob("*_hr.hea")) if SAMPLE.exists() else []
    rng, out = np.random.default_rng(0), []
    for i in range(n):
        name = f"r{i:06d}"
        if src:
            for ext in (".hea", ".dat"):
                text = src[i % len(src)].with_suffix(ext).read_bytes()
                if ext == ".hea": text = text.replace(src[i % len(src)].name.encode(), name.encode())
                (d / f"{name}{ext}").write_bytes(text)
        else:
            wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS, fmt=["16"] * 12,
                        p_signal=np.cumsum(rng.normal(0, 0.02, (5000, 12)), 0), write_dir=str(d))
        out.append(d / name)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        paths = make_records(d, args.records)
        for n_jobs in args.jobs:
            out = d / f"signals_{n_jobs}.npy"
            t = time.perf_counter()
            table = write_signals(paths, out, n_jobs=n_jobs, progress=False, chunk_size=args.chunk_size)
            secs = time.perf_counter() - t
            print(json.dumps({"bench": "write_signals", "source": "ptbxl500" if SAMPLE.exists() else "synthetic",
                              "records": len(paths), "n_jobs": n_jobs, "chunk_size": args.chunk_size,
                              "ok": int((table.status == "ok").sum()), "seconds": round(secs, 2),
                              "records_per_s": round(len(paths) / secs, 1), "cpus": os.cpu_count(),
                              "machine": f"{platform.processor() or platform.machine()} {platform.system()}"}))
            for p in [out, *out.parent.glob(out.stem + ".status.*")]: p.unlink()


if __name__ == "__main__":
    main()
