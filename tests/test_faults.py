"""Fault injection at the command line: each case breaks one input and checks what a user sees (the exit code and a
message naming the file, or a skip counted in the manifest) and that a finished dataset is never lost."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecg_study.cli import main
from test_cohort import FILLERS, build_raw, gz

PREPARE = ["--source", "synthetic", "--min-label-count", "2", "--min-lab-pos", "0", "--jobs", "1", "--quiet"]

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "A raw layout and the dataset prepared from it (which no failing rebuild may touch)."
    root = tmp_path_factory.mktemp("faults")
    raw, out = build_raw(root / "raw"), root / "ds"
    assert main(["prepare", "--raw", str(raw), "--out", str(out), *PREPARE]) == 0
    return raw, out

def _snapshot(d: Path) -> dict: return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}

def _records(raw: Path) -> pd.DataFrame: return pd.read_csv(raw / "ecg" / "record_list.csv")

def _victim(raw: Path) -> pd.Series:
    "The record of a patient whose ECG is in the cohort."
    rl = _records(raw)
    return rl[rl.subject_id == FILLERS[0]].iloc[0]

def _rewrite_record(raw: Path, fn):
    "Rewrite the victim record with its signal passed through `fn`."
    r = _victim(raw)
    head = wfdb.rdrecord(str(raw / "ecg" / r.path))
    x, kw = fn(head.p_signal), {}
    if np.isnan(x).all():     # wfdb cannot scale an all-NaN signal: write WFDB's invalid sample as it is
        kw = dict(d_signal=np.full(x.shape, -32768, np.int16), adc_gain=[1000.0] * head.n_sig, baseline=[0] * head.n_sig)
    wfdb.wrsamp(str(r.study_id), fs=head.fs, units=head.units, sig_name=head.sig_name, fmt=["16"] * head.n_sig,
                write_dir=str(raw / "ecg" / Path(r.path).parent), **(kw or {"p_signal": x}))

# each fault: what it breaks, then (exit code, a fragment the message must hold)
REFUSED = {
    "missing table": (lambda r: (r / "ed" / "triage.csv.gz").unlink(), "triage.csv.gz"),
    "missing folder": (lambda r: shutil.rmtree(r / "ed"), "missing folder"),
    "missing column": (lambda r: gz(pd.read_csv(r / "ed" / "edstays.csv.gz").drop(columns="intime"), r / "ed" / "edstays.csv.gz"),
                       "lacks columns ['intime']"),
    "corrupt gzip": (lambda r: (r / "hosp" / "labevents.csv.gz").write_bytes(b"\x1f\x8b\x08 not gzip"), "labevents.csv.gz"),
    "record list without paths": (lambda r: _records(r).drop(columns="path").to_csv(r / "ecg" / "record_list.csv", index=False),
                                  "record_list.csv"),
    "no record list": (lambda r: (r / "ecg" / "record_list.csv").unlink(), "record_list"),
    "a bad byte deep in labevents": (lambda r: _bad_byte(r / "hosp" / "labevents.csv.gz"), "labevents.csv.gz, line"),
}

def _bad_byte(path: Path):
    "Append 30,000 good rows, then one that is not UTF-8 (past DuckDB's sniffing sample, so it surfaces mid-query)."
    import gzip
    with gzip.open(path, "rb") as f: body = f.read()
    last = body.rstrip(b"\n").rsplit(b"\n", 1)[1]
    gzip.open(path, "wb").write(body + (last + b"\n") * 30_000 + last.replace(b",", b",\xff\xfe", 1) + b"\n")

@pytest.mark.parametrize("fault", REFUSED)
def test_a_broken_source_is_refused_and_the_dataset_kept(fault, base, tmp_path, capsys):
    raw0, out = base
    raw = Path(shutil.copytree(raw0, tmp_path / "raw"))
    before = _snapshot(out)
    break_it, fragment = REFUSED[fault]
    break_it(raw)
    assert main(["prepare", "--raw", str(raw), "--out", str(out), *PREPARE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecg-study prepare: error:") and fragment in err and "Original Line" not in err, err   # no raw row
    assert _snapshot(out) == before                                 # the finished dataset is as it was

SKIPPED = {   # a bad record is skipped and counted by kind; the rest of the cohort is built
    "garbage header": (lambda r: (r / "ecg" / (_victim(r).path + ".hea")).write_text("not\na header\n"), "skipped", "unreadable header"),
    "all-NaN signal": (lambda r: _rewrite_record(r, lambda x: np.full_like(x, np.nan)), "skipped", "all-NaN"),
    "µV written as mV": (lambda r: _rewrite_record(r, lambda x: x * 1000), "skipped", "implausible amplitude"),
    "5 s record": (lambda r: _rewrite_record(r, lambda x: x[: len(x) // 2]), "skipped", "shorter than 10 s"),
    "header miscounts its signals": (lambda r: _miscount(raw_hea=r / "ecg" / (_victim(r).path + ".hea")), "skipped", "header mismatch"),
    "a lead off": (lambda r: _rewrite_record(r, lambda x: np.where(np.arange(x.shape[1]) == 2, 0.0, x)), "flagged", "flat lead"),
}

def _miscount(raw_hea: Path):
    "The header says 11 signals (its last signal line dropped) where the signal file holds 12: read, it would be garbage."
    h = raw_hea.read_text().splitlines()
    first = h[0].split(); first[1] = str(int(first[1]) - 1)
    raw_hea.write_text("\n".join([" ".join(first), *h[1:12]]) + "\n")

@pytest.mark.parametrize("fault", SKIPPED)
def test_a_bad_record_is_counted_and_named(fault, base, tmp_path):
    raw0, out0 = base
    raw = Path(shutil.copytree(raw0, tmp_path / "raw"))
    break_it, where, kind = SKIPPED[fault]
    break_it(raw)
    out = tmp_path / "ds"
    assert main(["prepare", "--raw", str(raw), "--out", str(out), *PREPARE]) == 0
    import json
    man, man0 = json.loads((out / "manifest.json").read_text()), json.loads((out0 / "manifest.json").read_text())
    assert man[where].get(kind, 0) == man0[where].get(kind, 0) + 1, (man[where], man0[where])
    issues = pd.read_csv(out / man["record_issues"])
    assert issues.reason.str.contains(kind, regex=False).any() or issues.kind.eq(kind).any()

def test_a_memory_limit_that_is_not_a_size_is_refused_before_any_work(base, capsys):
    raw, out = base
    before = _snapshot(out)
    assert main(["prepare", "--raw", str(raw), "--out", str(out), *PREPARE, "--memory-limit", "lots"]) == 2
    assert "memory_limit 'lots' is not a size" in capsys.readouterr().err and _snapshot(out) == before

def test_a_plan_with_a_typo_and_an_unknown_run_are_refused(tmp_path, capsys):
    from ecg_study.plans import plan_path
    bad = tmp_path / "typo.toml"; bad.write_text(plan_path("quick").read_text().replace("n_patients", "n_patiens", 1))
    assert main(["run", "--plan", str(bad)]) == 2 and "did you mean n_patients" in capsys.readouterr().err
    assert main(["run", "--plan", "quick", "--only", "methd"]) == 2 and "methd" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists() and not Path("reports/typo").exists()

def test_explain_with_a_file_that_is_not_a_model(tmp_path, capsys):
    junk = tmp_path / "model.pt"; junk.write_bytes(b"not a bundle")
    assert main(["explain", str(tmp_path / "r"), "--model", str(junk)]) == 2
    assert "model.pt" in capsys.readouterr().err
