"""Tests of ecg_study.signals on real PTB-XL / PTB records and on small WFDB records written here."""
import os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly
from ecg_study.core import CLIP_MV, MIMIC_LEADS, STUDY_LEADS, sample_path
from ecg_study.signals import (OK, PENDING, SKIPPED, RecordError, compact_signals, prepare_record, preprocess,
                               read_record, status_paths, write_signals)

DATA = sample_path("data", required=False) or Path("/nonexistent")   # $ECG_STUDY_SAMPLES; tests needing it skip
PTBXL = DATA / "ptbxl_sample"
needs_data = pytest.mark.skipif(not PTBXL.exists(), reason="real data samples not available")
IDX = {l: i for i, l in enumerate(STUDY_LEADS)}


def ecg_like(n, fs, seed=0):
    "Dipole-consistent 12-lead signal (mV, MIMIC order): I, II free; III, aVR, aVF, aVL derived; V1–V6 free."
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    def wave():
        beats = sum(np.exp(-((t - b) / 0.02) ** 2) for b in np.arange(0.3, t[-1], 0.8 + 0.1 * rng.random()))
        return rng.uniform(0.3, 1.0) * beats + 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t)
    I, II = wave(), wave()
    limb = {"I": I, "II": II, "III": II - I, "aVR": -(I + II) / 2, "aVF": II - I / 2, "aVL": I - II / 2}
    return np.stack([limb[l] if l in limb else wave() for l in MIMIC_LEADS], 1)


def write(dirpath, name, sig, names=MIMIC_LEADS, fs=500, units="mV"):
    "Write a 16-bit WFDB record; NaN become WFDB's invalid sample."
    wfdb.wrsamp(name, fs=fs, units=[units] * len(names), sig_name=list(names), p_signal=sig,
                fmt=["16"] * len(names), write_dir=str(dirpath))
    return Path(dirpath) / name


def write_digital(dirpath, name, d, names=MIMIC_LEADS, fs=500):
    "Write digital samples as they are (for signals wfdb cannot scale: flat, all-NaN)."
    n = len(names)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=list(names), d_signal=d.astype(np.int16),
                fmt=["16"] * n, adc_gain=[1000.0] * n, baseline=[0] * n, write_dir=str(dirpath))
    return Path(dirpath) / name


# --- real records -------------------------------------------------------------------------------

@needs_data
def test_ptbxl_100_and_500_hz_agree():
    """The 100 Hz and 500 Hz copies of PTB-XL ecg_id 1–49 give the same prepared signal.
    Tolerance: RMS difference ≤ 0.05 mV per record (median ≤ 0.03) and median per-lead correlation ≥ 0.97.
    PTB-XL made its 100 Hz copies with its own filter, so sharp QRS peaks differ by up to ~0.4 mV."""
    rms, corr = [], []
    for i in range(1, 50):
        lo = prepare_record(PTBXL / f"records100/00000/{i:05d}_lr")
        hi = prepare_record(PTBXL / f"records500/00000/{i:05d}_hr.hea")
        assert lo.shape == hi.shape == (1000, 12)
        d = (lo - hi)[20:-20]  # the edges depend on each filter's padding
        rms.append(np.sqrt((d ** 2).mean()))
        corr += [np.corrcoef(lo[:, j], hi[:, j])[0, 1] for j in range(12)]
    assert max(rms) <= 0.05 and np.median(rms) <= 0.03, (max(rms), np.median(rms))
    assert np.median(corr) >= 0.97, np.median(corr)


@needs_data
def test_ptbxl_leads_mapped_by_name():
    rec = wfdb.rdrecord(str(PTBXL / "records100/00000/00001_lr"))
    assert rec.sig_name[3:6] == ["AVR", "AVL", "AVF"]
    x, fs = read_record(PTBXL / "records100/00000/00001_lr.dat")
    assert fs == 100 and x.shape == (1000, 12)
    for lead in STUDY_LEADS:
        np.testing.assert_allclose(x[:, IDX[lead]], rec.p_signal[:, [n.lower() for n in rec.sig_name].index(lead.lower())], atol=1e-6)


@needs_data
def test_ptb_1000hz_15_channels():
    path = DATA / "wfdb_samples/s0010_re"
    rec = wfdb.rdrecord(str(path))
    assert rec.n_sig == 15 and rec.fs == 1000
    x, fs = read_record(path)
    assert x.shape == (38400, 12) and fs == 1000
    y = prepare_record(path)
    assert y.shape == (1000, 12) and y.dtype == np.float32
    names = [n.lower() for n in rec.sig_name]
    for lead in ("I", "aVL", "V6"):
        raw = np.clip(rec.p_signal[:, names.index(lead.lower())], -CLIP_MV, CLIP_MV)
        ref = np.clip(resample_poly(raw, 1, 10, padtype="line")[:1000], -CLIP_MV, CLIP_MV)
        np.testing.assert_allclose(y[:, IDX[lead]], ref, atol=1e-4)
    vx = resample_poly(rec.p_signal[:, names.index("vx")], 1, 10)[:1000]
    assert not any(np.allclose(y[:, j], vx, atol=1e-3) for j in range(12))  # Frank leads ignored


# --- lead order, units, NaN, clipping on written records -----------------------------------------

def test_permuted_leads_give_same_array(tmp_path):
    sig = ecg_like(5000, 500)
    perm = np.random.default_rng(1).permutation(12)
    a = prepare_record(write(tmp_path, "mimic", sig))
    b = prepare_record(write(tmp_path, "perm", sig[:, perm], [MIMIC_LEADS[i].upper() for i in perm]))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_limb_lead_identities_after_preprocessing(tmp_path):
    y = prepare_record(write(tmp_path, "dipole", ecg_like(5000, 500, seed=3)))
    assert np.abs(y).max() < CLIP_MV  # no clipping, so the linear identities must hold
    I, II = y[:, IDX["I"]], y[:, IDX["II"]]
    np.testing.assert_allclose(y[:, IDX["III"]], II - I, atol=1e-3)
    np.testing.assert_allclose(y[:, IDX["aVR"]], -(I + II) / 2, atol=1e-3)
    np.testing.assert_allclose(y[:, IDX["aVL"]], I - II / 2, atol=1e-3)
    np.testing.assert_allclose(y[:, IDX["aVF"]], II - I / 2, atol=1e-3)
    assert np.abs(II - I).max() > 0.2  # the identity is not trivially satisfied


@pytest.mark.parametrize("units,scale", [("uV", 1e3), ("µV", 1e3), ("V", 1e-3)])
def test_units_converted_to_mv(tmp_path, units, scale):
    sig = ecg_like(5000, 500)
    ref = prepare_record(write(tmp_path, "mv", sig))
    np.testing.assert_allclose(prepare_record(write(tmp_path, "other", sig * scale, units=units)), ref, atol=1e-4)


def test_micro_sign_in_latin1_header(tmp_path):
    "wfdb reads '/µV' as 'V'; the reader must still scale by 1e-3, whatever the header's encoding."
    sig = ecg_like(5000, 500)
    ref = prepare_record(write(tmp_path, "mv", sig))
    base = write(tmp_path, "latin", sig * 1e3, units="uV")
    hea = base.with_suffix(".hea")
    hea.write_bytes(hea.read_text().replace("/uV", "/\u00b5V").encode("latin-1"))
    assert wfdb.rdheader(str(base)).units[0] == "V"  # the wfdb quirk this guards against
    np.testing.assert_allclose(prepare_record(base), ref, atol=1e-4)


def test_nan_gap_is_interpolated_linearly(tmp_path):
    sig = ecg_like(5000, 500)
    sig[1000:1500, MIMIC_LEADS.index("V2")] = np.nan
    x, fs = read_record(write(tmp_path, "gap", sig))
    v2 = IDX["V2"]
    assert np.isnan(x[1000:1500, v2]).all() and not np.isnan(np.delete(x, v2, 1)).any()
    y = preprocess(x, fs)
    assert not np.isnan(y).any()
    inside = y[210:290, v2]  # 2.1–2.9 s lies well inside the 2–3 s gap: a straight line
    np.testing.assert_allclose(np.diff(inside, 2), 0, atol=1e-4)
    lo, hi = sorted((x[999, v2], x[1500, v2]))
    assert lo - 1e-3 <= inside.min() and inside.max() <= hi + 1e-3


def test_clipping(tmp_path):
    sig = ecg_like(5000, 500)
    sig[2000:2010, 0] = 8.0
    sig[:, MIMIC_LEADS.index("V5")] += 5.0
    y = prepare_record(write(tmp_path, "big", sig))
    assert np.abs(y).max() <= CLIP_MV
    np.testing.assert_allclose(y[:, IDX["V5"]], CLIP_MV)
    assert y[:, IDX["I"]].max() == pytest.approx(CLIP_MV)


def test_preprocess_other_rates_and_short_records():
    for fs in (100, 250, 257, 360, 500, 1000):
        x = ecg_like(int(10 * fs), fs)
        y = preprocess(x, fs)
        assert y.shape == (1000, 12)
        ref = preprocess(ecg_like(5000, 500), 500)  # same waveform (seeded), another rate
        assert np.corrcoef(y[50:-50, 0], ref[50:-50, 0])[0, 1] > 0.99, fs
    y = preprocess(ecg_like(1500, 500), 500)  # 3 s: zero-padded at the end
    assert y[:300].any() and not y[300:].any()


# --- bad inputs ------------------------------------------------------------------------------------

def test_truncated_dat(tmp_path):
    for n_bytes in (60000, 59999):  # a whole number of frames, and not
        base = write(tmp_path, f"trunc{n_bytes}", ecg_like(5000, 500))
        os.truncate(base.with_suffix(".dat"), n_bytes)
        with pytest.raises(RecordError, match=rf"{base}.*truncated") as e:
            read_record(base)
        assert e.value.kind == "truncated"


@needs_data
def test_truncated_real_record(tmp_path):
    for ext in ("hea", "dat"):
        shutil.copy(PTBXL / f"records500/00000/00001_hr.{ext}", tmp_path / f"r.{ext}")
    os.chmod(tmp_path / "r.dat", 0o644)
    os.truncate(tmp_path / "r.dat", 1000)
    with pytest.raises(RecordError, match="truncated"):
        read_record(tmp_path / "r")


def test_short_read_detected(tmp_path, monkeypatch):
    "wfdb may also return fewer samples than the header's sig_len instead of raising."
    base = write(tmp_path, "ok", ecg_like(5000, 500))
    real = wfdb.rdrecord
    def short(*a, **k):
        rec = real(*a, **k); rec.d_signal = rec.d_signal[:3000]; return rec
    monkeypatch.setattr(wfdb, "rdrecord", short)
    with pytest.raises(RecordError, match=r"truncated signal file \(3000 of 5000 samples\)"):
        read_record(base)


def bad_records(d):
    "name → (record path, expected message fragment)."
    sig = ecg_like(5000, 500)
    nan_all = np.full((5000, 12), -32768)
    return {
        "missing lead": (write(d, "eleven", sig[:, :11], MIMIC_LEADS[:11]), r"missing leads \['V6'\]"),
        "too short": (write(d, "short", sig[:1000]), r"too short \(2.00 s < 2.5 s\)"),
        "all-NaN": (write_digital(d, "allnan", nan_all), "all-NaN signal"),
        "flat": (write_digital(d, "flat", np.full((5000, 12), 7)), "flat signal"),
        "flat or NaN": (write_digital(d, "flatnan", np.where(np.arange(12) % 2, 7, -32768) + np.zeros((5000, 1))),
                        "flat signal"),
        "wrong units": (write(d, "mmhg", sig, units="mmHg"), r"wrong units \['mmHg'\]"),
        "missing file": (Path(d) / "nowhere/rec", r"missing header file"),
    }


@pytest.mark.parametrize("case", ["missing lead", "too short", "all-NaN", "flat", "flat or NaN", "wrong units", "missing file"])
def test_bad_input_errors(tmp_path, case):
    path, msg = bad_records(tmp_path)[case]
    with pytest.raises(RecordError, match=msg) as e:
        prepare_record(path)
    assert str(path) in str(e.value)


def test_missing_dat_and_garbage_header(tmp_path):
    base = write(tmp_path, "nodat", ecg_like(5000, 500))
    base.with_suffix(".dat").unlink()
    with pytest.raises(RecordError, match="nodat: missing signal file"):
        read_record(base)
    bad = write(tmp_path, "garbage", ecg_like(5000, 500))
    bad.with_suffix(".hea").write_text("this is not\na header\n")
    with pytest.raises(RecordError, match="garbage: unreadable header"):
        read_record(bad)


def test_one_all_nan_lead_names_lead_and_record(tmp_path):
    d = np.round(ecg_like(5000, 500) * 1000)
    d[:, MIMIC_LEADS.index("aVL")] = -32768
    base = write_digital(tmp_path, "novl", d)
    with pytest.raises(RecordError, match=r"novl: lead aVL is entirely NaN"):
        prepare_record(base)


# --- the memmap store ------------------------------------------------------------------------------

def make_records(d, n, bad=()):
    paths = []
    for i in range(n):
        paths.append(write(d, f"r{i:03d}", ecg_like(5000, 500, seed=i) if i not in bad else ecg_like(500, 500)))
    return paths


def test_write_signals_deterministic_and_counts_skips(tmp_path):
    paths = make_records(tmp_path, 10, bad={3, 7}) + [tmp_path / "absent"]
    t1 = write_signals(paths, tmp_path / "a.npy", n_jobs=1, progress=False, chunk_size=3)
    t2 = write_signals(paths, tmp_path / "b.npy", n_jobs=2, progress=False, chunk_size=2)
    assert t1.equals(t2) and list(t1.columns) == ["path", "status", "kind", "reason", "quality"]
    assert t1.status.tolist().count("skipped") == 3 and set(np.flatnonzero(t1.status == "skipped")) == {3, 7, 10}
    assert t1.kind[3] == "too short" and t1.kind[10] == "missing file" and "absent" in t1.reason[10]
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (11, 1000, 12) and np.array_equal(a, b)
    np.testing.assert_array_equal(a[5], prepare_record(paths[5]))
    assert not a[3].any()


def test_write_signals_resumes_without_touching_done_rows(tmp_path):
    paths = make_records(tmp_path, 8, bad={6})
    out = tmp_path / "signals.npy"
    ref = write_signals(paths, tmp_path / "ref.npy", n_jobs=1, progress=False)
    # an interrupted run: rows 0–3 done (holding sentinels), rows 4–7 to do with garbage in them
    write_signals(paths, out, n_jobs=1, progress=False)
    st_path, _ = status_paths(out)
    status = np.load(st_path); status[4:] = PENDING; np.save(st_path, status)
    m = np.load(out, mmap_mode="r+"); m[:4] = 42.0; m[4:] = -7.0; m.flush(); del m
    table = write_signals(paths, out, n_jobs=2, progress=False, chunk_size=2)
    got, want = np.load(out), np.load(tmp_path / "ref.npy")
    assert (got[:4] == 42.0).all()  # done rows untouched
    np.testing.assert_array_equal(got[4:], want[4:])  # to-do rows filled (row 6 skipped: zeros)
    assert table.status.tolist() == ref.status.tolist() == ["ok"] * 6 + ["skipped", "ok"]
    assert np.load(st_path).tolist() == [OK] * 6 + [SKIPPED, OK]


def test_write_signals_survives_kill_9(tmp_path):
    paths = make_records(tmp_path, 24)
    out = tmp_path / "signals.npy"
    code = textwrap.dedent(f"""
        import time, ecg_study.signals as s
        real = s.prepare_record
        def slow(p): time.sleep(0.05); return real(p)
        s.prepare_record = slow
        s.write_signals({[str(p) for p in paths]!r}, {str(out)!r}, n_jobs=1, progress=False, chunk_size=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    st_path, _ = status_paths(out)
    deadline = time.time() + 30
    while time.time() < deadline and not (st_path.exists() and np.load(st_path).sum() >= 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done = np.load(st_path)
    assert 0 < (done == OK).sum() < len(paths), done  # killed part way
    table = write_signals(paths, out, n_jobs=1, progress=False)
    assert (table.status == "ok").all()
    ref = np.stack([prepare_record(p) for p in paths])
    np.testing.assert_array_equal(np.load(out), ref)


def test_write_signals_refuses_other_paths_or_dtype(tmp_path):
    paths = make_records(tmp_path, 3)
    out = tmp_path / "s.npy"
    write_signals(paths, out, n_jobs=1, progress=False)
    with pytest.raises(ValueError, match="other record paths"):
        write_signals(paths[::-1], out, n_jobs=1, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        write_signals(paths, out, n_jobs=1, progress=False, dtype="float16")
    np.save(tmp_path / "orphan.npy", np.zeros(3))
    with pytest.raises(FileExistsError, match="orphan.npy"):
        write_signals(paths, tmp_path / "orphan.npy", n_jobs=1, progress=False)


def test_float16_store_and_compact(tmp_path):
    paths = make_records(tmp_path, 5, bad={1})
    out = tmp_path / "s16.npy"
    table = write_signals(paths, out, n_jobs=1, progress=False, dtype="float16")
    s = np.load(out)
    assert s.dtype == np.float16
    np.testing.assert_allclose(s[0], prepare_record(paths[0]), atol=2e-3)
    dst = compact_signals(out, table.status == "ok", tmp_path / "kept.npy", chunk_rows=2)
    kept = np.load(dst)
    assert kept.dtype == np.float16 and np.array_equal(kept, s[[0, 2, 3, 4]])
    with pytest.raises(ValueError, match="keep_mask"):
        compact_signals(out, [True], tmp_path / "x.npy")

def test_a_full_disk_is_refused_before_the_memmap(tmp_path, monkeypatch):
    "A store that does not fit on its disk is an OSError naming the file and the sizes, not a bus error later."
    import shutil
    paths = make_records(tmp_path, 2)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"full\.npy: needs 0\.1 MB, only 0\.0 MB free"):
        write_signals(paths, tmp_path / "full.npy", n_jobs=1, progress=False)
    assert not (tmp_path / "full.npy").exists()

def test_mains_hum_does_not_fold_into_the_100_hz_signal(tmp_path):
    "500 → 100 Hz is anti-aliased: 60 Hz hum (above the 50 Hz Nyquist) is filtered, not folded to 40 Hz at full size."
    t = np.arange(5000) / 500
    clean = ecg_like(5000, 500, seed=2)
    hum = clean + 0.5 * np.sin(2 * np.pi * 60 * t)[:, None]
    a, b = prepare_record(write(tmp_path, "clean", clean)), prepare_record(write(tmp_path, "hum", hum))
    assert np.abs(a - b)[50:-50].max() < 0.02          # plain decimation would leave a 0.5 mV, 40 Hz wave
