"""Throughput of the synthetic cohort: ECGs written per second (tables included), for N patients.

Usage: python benchmarks/bench_synth.py [--patients 2000] [--jobs 2]
Writes into a temporary folder that is removed afterwards; prints the figures only.
"""
import argparse, os, platform, shutil, tempfile, time
from pathlib import Path
from ecg_study.synth import synthesize


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        t0 = time.perf_counter()
        s = synthesize(tmp / "cohort", n_patients=args.patients, seed=args.seed, n_jobs=args.jobs, progress=False)
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (tmp / "cohort").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"patients={s['patients']} stays={s['stays']} ecgs={s['ecgs']} labevents={s['labevents']} n_jobs={args.jobs}")
    print(f"total {dt:.1f} s, {size / 1e6:.0f} MB written")
    print(f"ECGs/s: {s['ecgs'] / dt:.1f}")


if __name__ == "__main__":
    main()
