"""End-to-end tests of ecg_study.cohort on hand-built raw MIMIC tables (expected values computed by hand)."""
import json, os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecg_study.core import LABS, LAB_LIMITS, MIMIC_LEADS, STUDY_LEADS, lab_stem
from ecg_study.cohort import prepare, read_prepared, label_columns, feature_columns
from ecg_study.raw_tables import raw_fingerprint, source_paths
from ecg_study.mds_ed import export_prepared

T0 = datetime(2150, 3, 1, 10, 0)
A, B, C, D, E = 1001, 1002, 1003, 1004, 1005          # special patients
FILLERS = list(range(2001, 2041))                      # 40 ordinary patients (folds, prevalences)

def t(minutes: float, base=T0) -> str: return (base + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")

def ecg_signal(seed: int) -> np.ndarray:
    "10 s, 500 Hz, MIMIC lead order, limb leads consistent (III = II − I, Goldberger), amplitudes < 3 mV."
    n = np.arange(5000) / 500
    i = 0.5 * np.sin(2 * np.pi * 1.1 * n + seed)
    ii = 0.8 * np.sin(2 * np.pi * 0.7 * n + 0.3 * seed) + 0.2
    lead = {"I": i, "II": ii, "III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    for k in range(1, 7): lead[f"V{k}"] = 0.1 * k * np.cos(2 * np.pi * 0.5 * k * n)
    return np.stack([lead[l] for l in MIMIC_LEADS], 1)

def write_record(ecg: Path, subject: int, study: int, leads=MIMIC_LEADS, truncate=False) -> str:
    rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
    d = ecg / Path(rel).parent; d.mkdir(parents=True, exist_ok=True)
    x = ecg_signal(study % 7)[:, [MIMIC_LEADS.index(l) for l in leads]]
    wfdb.wrsamp(str(study), fs=500, units=["mV"] * len(leads), sig_name=list(leads), p_signal=x,
                fmt=["16"] * len(leads), write_dir=str(d))
    if truncate:
        dat = d / f"{study}.dat"; dat.write_bytes(dat.read_bytes()[:1000])
    return rel

def gz(df: pd.DataFrame, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True); df.to_csv(path, index=False, compression="gzip")

LE_COLS = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime", "storetime",
           "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority", "comments"]

def build_raw(root: Path) -> Path:
    "Tiny raw MIMIC layout. Patient A carries the hand-checked edge cases."
    ecg = root / "ecg"
    subjects = [A, B, C, D, E] + FILLERS
    patients = pd.DataFrame({"subject_id": subjects, "gender": ["M" if s % 2 else "F" for s in subjects],
                             "anchor_age": [40 + (s % 40) for s in subjects], "anchor_year": 2148,
                             "anchor_year_group": "2014 - 2016", "dod": ""})
    stays, records, vitals, labs, dx_hosp, dx_ed, omr, triage = [], [], [], [], [], [], [], []
    for k, s in enumerate(subjects):
        stay, hadm = 30000 + k, (40000 + k if s not in (B, FILLERS[5]) else None)
        stays.append(dict(subject_id=s, hadm_id=hadm, stay_id=stay, intime=t(0), outtime=t(600), gender="",
                          race=["WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN - CHINESE", "HISPANIC/LATINO - CUBAN",
                                "UNKNOWN", "AMERICAN INDIAN/ALASKA NATIVE"][k % 6], arrival_transport="WALK IN",
                          disposition="HOME"))
        triage.append(dict(subject_id=s, stay_id=stay, temperature="", heartrate="", resprate="", o2sat="", sbp="",
                           dbp="", pain="", acuity=(k % 5) + 1, chiefcomplaint="CHEST PAIN"))
        study = 50000000 + k * 10
        if s == A:   # +90 min included, +91 excluded, +10 min included
            for j, m in enumerate([90, 91, 10]): records.append((s, study + j, m))
        else: records.append((s, study, 5))
        if s not in (B, C): dx_hosp += [(s, hadm, 1, "I2510", 10)] if s == A or k % 2 else [(s, hadm, 1, "4280", 9)]
        if s == A: dx_hosp.append((s, hadm, 2, "4019", 9)); dx_ed.append((s, stay, 1, "Z000", 10))
        if s in (B, FILLERS[5]): dx_ed.append((s, stay, 1, "R07.9", 10))
        if s == FILLERS[6]: dx_hosp.append((s, hadm, 2, "J189", 10))   # count 1 < min_label_count
        if s in FILLERS:   # potassium at +5 min, alternately low/normal/high
            labs.append(dict(subject_id=s, itemid=50971, charttime=t(5), value=str(v := [3.0, 4.0, 6.0][k % 3]), valuenum=v,
                             ref_range_lower=[3.2, 3.3, 3.6][k % 4 % 3], ref_range_upper=[5.0, 5.2, 5.4][k % 5 % 3]))
            vitals.append(dict(subject_id=s, stay_id=stay, charttime=t(1), temperature=98.6, heartrate=70 + k,
                               resprate=16, o2sat=98, sbp=120, dbp=80, rhythm="", pain=""))
    # patient A: vitals around the window edges (-1 and +91 excluded), SpO2 101 is an outlier
    stayA = 30000
    for m, hr, temp, o2 in [(-1, 200, 98.6, 97), (0, 80, 98.6, 97), (30, 100, 100.4, 101), (90, 90, 37.5, 99), (91, 300, 98.6, 90)]:
        vitals.append(dict(subject_id=A, stay_id=stayA, charttime=t(m), temperature=temp, heartrate=hr, resprate=18,
                           o2sat=o2, sbp=130, dbp=85, rhythm="", pain=""))
    # patient A: potassium (blood 50971) – window edges, ±60 min closest value with a tie, text quirks
    for m, v, lo, hi in [(-5, 3.0, 3.5, 5.3), (0, 4.0, 3.4, None), (60, 5.5, None, None), (90, 5.0, 3.3, 5.1),
                         (91, 9.0, None, None), (155, 2.0, None, None)]:
        labs.append(dict(subject_id=A, itemid=50971, charttime=t(m), value=str(v), valuenum=v, ref_range_lower=lo,
                         ref_range_upper=hi))
    labs += [dict(subject_id=A, itemid=50971, charttime=t(20), value="___", valuenum=None, ref_range_lower=3.3, ref_range_upper=5.1),
             dict(subject_id=A, itemid=50971, charttime=t(21), value=">10", valuenum=None, ref_range_lower=3.3, ref_range_upper=5.1)]
    # creatinine: urine item (51082) is more frequent than blood (50912) -> urine chosen
    labs += [dict(subject_id=A, itemid=51082, charttime=t(m), value=str(v), valuenum=v, ref_range_lower=None, ref_range_upper=None)
             for m, v in [(10, 100.0), (40, 130.0), (70, 160.0)]]
    labs.append(dict(subject_id=A, itemid=50912, charttime=t(10), value="1.0", valuenum=1.0, ref_range_lower=0.5, ref_range_upper=1.2))
    # biometrics of A: weight 200 lbs at -10 d (180 lbs at +40 d is outside ±30 d), BMI 150 outlier, BMI 28 at -20 d
    omr = [(A, "2150-02-19", 1, "Weight (Lbs)", "200"), (A, "2150-04-10", 1, "Weight (Lbs)", "180"),
           (A, "2150-02-27", 1, "Height (Inches)", "70"), (A, "2150-02-28", 1, "BMI (kg/m2)", "150"),
           (A, "2150-02-09", 1, "BMI (kg/m2)", "28"), (A, "2150-02-28", 1, "Blood Pressure", "120/80")]
    # write tables
    hosp, ed = root / "hosp", root / "ed"
    gz(patients, hosp / "patients.csv.gz")
    adm = pd.DataFrame([dict(subject_id=s["subject_id"], hadm_id=s["hadm_id"], admittime=t(120), dischtime=t(5000))
                        for s in stays if s["hadm_id"]])
    gz(adm, hosp / "admissions.csv.gz")
    gz(pd.DataFrame(dx_hosp, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]), hosp / "diagnoses_icd.csv.gz")
    gz(pd.DataFrame({"itemid": [50971, 51097, 50912, 51082], "label": ["Potassium", "Potassium", "Creatinine", "Creatinine"],
                     "fluid": ["Blood", "Urine", "Blood", "Urine"], "category": "Chemistry"}), hosp / "d_labitems.csv.gz")
    le = pd.DataFrame(labs); le["labevent_id"] = range(len(le)); le["hadm_id"] = ""; le["specimen_id"] = range(len(le))
    le["storetime"] = le["charttime"]
    for c in LE_COLS:
        if c not in le: le[c] = ""
    gz(le[LE_COLS], hosp / "labevents.csv.gz")
    gz(pd.DataFrame(omr, columns=["subject_id", "chartdate", "seq_num", "result_name", "result_value"]), hosp / "omr.csv.gz")
    gz(pd.DataFrame(stays), ed / "edstays.csv.gz")
    gz(pd.DataFrame(triage), ed / "triage.csv.gz")
    gz(pd.DataFrame(vitals), ed / "vitalsign.csv.gz")
    gz(pd.DataFrame(dx_ed, columns=["subject_id", "stay_id", "seq_num", "icd_code", "icd_version"]).assign(icd_title=""),
       ed / "diagnosis.csv.gz")
    rl = []
    for s, study, m in records:
        rel = write_record(ecg, s, study, leads=MIMIC_LEADS[:11] if s == E else MIMIC_LEADS, truncate=(s == D))
        rl.append(dict(subject_id=s, study_id=study, file_name=str(study), ecg_time=t(m), path=rel))
    pd.DataFrame(rl).to_csv(ecg / "record_list.csv", index=False)
    # the cart's report of every study but the first (which then has none), with the real file's report columns
    mm = pd.DataFrame([dict(subject_id=r["subject_id"], study_id=r["study_id"], report_0="Sinus rhythm", report_1=" Normal ECG")
                       for r in rl[1:]]).reindex(columns=["subject_id", "study_id"] + [f"report_{i}" for i in range(18)])
    mm.to_csv(ecg / "machine_measurements.csv", index=False)
    return root

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = build_raw(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("prep") / "ds"
    m = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    cohort, sig, m2 = read_prepared(out)
    return raw, out, m, cohort, sig

def row(cohort, subject, minutes=None):
    r = cohort[cohort.subject_id == subject]
    if minutes is not None: r = r[r.ecg_time == pd.Timestamp(t(minutes))]
    assert len(r) == 1, r
    return r.iloc[0]

def test_window_edges_and_counts(prepared):
    raw, out, m, cohort, sig = prepared
    a = cohort[cohort.subject_id == A]
    assert sorted(a.ecg_time) == [pd.Timestamp(t(10)), pd.Timestamp(t(90))]     # +91 min excluded
    assert sorted(a.ecg_no_within_stay) == [0, 1]
    c = m["counts"]
    n_rec = 3 + 4 + len(FILLERS)
    assert c["ecgs_seen"] == n_rec and c["ecgs_in_window"] == n_rec - 1
    assert c["ecgs_with_diagnoses"] == n_rec - 2                                 # C has no diagnoses
    assert C not in set(cohort.subject_id)
    assert c["ecgs_with_signal"] == n_rec - 4 == len(cohort) == len(sig)         # D truncated, E missing a lead
    assert sum(m["skipped"].values()) == 2 and {D, E}.isdisjoint(cohort.subject_id)
    skipped = pd.read_csv(out / m["record_issues"]).query("status == 'skipped'")     # named in the dataset (data), never printed
    assert len(skipped) == 2 and all(f"p{s}" in " ".join(skipped.path) for s in (D, E)) and skipped.reason.notna().all()

def test_skipped_records_are_not_printed(tmp_path, caplog):
    "A skipped record's path names its patient: the log counts skips and never shows the path."
    raw = build_raw(tmp_path / "raw")
    with caplog.at_level("INFO"): prepare("synthetic", raw, tmp_path / "ds", min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert "2 skipped" in caplog.text and f"p{D}" not in caplog.text and str(D) not in caplog.text

def test_vitals_stats_and_outliers(prepared):
    a = row(prepared[3], A, 10)
    # heart rate in window: (0, 80), (30, 100), (90, 90)
    assert a.vitals_heartrate_mean == 90 and a.vitals_heartrate_median == 90
    assert (a.vitals_heartrate_min, a.vitals_heartrate_max) == (80, 100)
    assert a.vitals_heartrate_std == pytest.approx(10.0)
    assert (a.vitals_heartrate_first, a.vitals_heartrate_last) == (80, 90)
    assert a.vitals_heartrate_rate_change == pytest.approx((90 - 80) / 80)
    x, y = np.array([0, 30, 90.]), np.array([80, 100, 90.])
    assert a.vitals_heartrate_coeff == pytest.approx(np.polyfit(x, y, 1)[0])
    # temperature °F -> °C; 37.5 is already °C
    assert a.vitals_temperature_first == pytest.approx(37.0) and a.vitals_temperature_max == pytest.approx(38.0)
    assert a.vitals_temperature_last == pytest.approx(37.5)
    # SpO2 101 -> NaN before the statistics
    assert (a.vitals_o2sat_max, a.vitals_o2sat_min, a.vitals_o2sat_mean) == (99, 97, 98)
    f = row(prepared[3], FILLERS[0])
    assert np.isnan(f.vitals_heartrate_std) and np.isnan(f.vitals_heartrate_coeff)   # one value
    assert f.vitals_acuity in (1, 2, 3, 4, 5)

def test_demographics_and_biometrics(prepared):
    a = row(prepared[3], A, 10)
    assert a.demographics_age == 40 + A % 40 + 2 and a.demographics_gender == 1
    assert a.demographics_ethnicity_white == 1 and a["demographics_ethnicity_black/african"] == 0
    assert a.biometrics_weight == pytest.approx(200 * 0.45359237)
    assert a.biometrics_height == pytest.approx(70 * 2.54)
    assert a.biometrics_bmi == 28                                           # 150 is an outlier
    e = prepared[3][prepared[3].subject_id == FILLERS[0]].iloc[0]
    assert np.isnan(e.biometrics_weight)

def test_lab_stats_fluid_and_quirks(prepared):
    a = row(prepared[3], A, 10)
    # potassium in [intime, +90]: (0, 4.0), (60, 5.5), (90, 5.0); -5, +91 excluded, text values ignored
    assert a["labvalues_potassium_mean"] == pytest.approx(14.5 / 3)
    assert (a.labvalues_potassium_first, a.labvalues_potassium_last) == (4.0, 5.0)
    assert a.labvalues_potassium_rate_change == pytest.approx(0.25)
    assert a.labvalues_potassium_coeff == pytest.approx(np.polyfit([0, 60, 90], [4.0, 5.5, 5.0], 1)[0])
    # creatinine: the urine item is the most frequent fluid
    assert a.labvalues_creatinine_mean == 130 and a.labvalues_creatinine_first == 100

def test_ref_range_medians_and_closest_labels(prepared):
    raw, out, m, cohort, sig = prepared
    thr = {r["stem"]: r for r in m["lab_thresholds"]}
    # potassium rows with ranges: the fillers' varying ranges, and A's: (3.5, 5.3), (3.4, -), (3.3, 5.1), 2 text rows (3.3, 5.1)
    ks = range(5, 5 + len(FILLERS))
    lows = [[3.2, 3.3, 3.6][k % 4 % 3] for k in ks] + [3.5, 3.4, 3.3, 3.3, 3.3]
    highs = [[5.0, 5.2, 5.4][k % 5 % 3] for k in ks] + [5.3, 5.1, 5.1, 5.1]
    assert np.median(lows) != 3.3 or np.median(highs) != 5.1          # the medians are not trivial
    assert thr["potassium"]["ref_low"] == np.median(lows) and thr["potassium"]["ref_high"] == np.median(highs)
    assert thr["creatinine"]["fluid"] == "Urine" and thr["creatinine"]["ref_low"] is None
    assert "lababn_creatinine_low" not in cohort                   # no reference range -> no label
    a10, a90 = row(cohort, A, 10), row(cohort, A, 90)
    # ECG +10: candidates -5 (3.0, 15 min), 0 (4.0, 10 min), 60 (5.5, 50 min) -> 4.0 normal
    assert (a10.lababn_potassium_low, a10.lababn_potassium_high) == (0, 0)
    # ECG +90: 60 (5.5) and 90 (5.0) and 91 (9.0); closest is 90 -> 5.0, not high
    assert a90.lababn_potassium_high == 0
    f = [row(cohort, s) for s in FILLERS[:3]]
    # fillers k = 5, 6, 7 have potassium 6.0, 3.0, 4.0
    assert [r.lababn_potassium_low for r in f] == [0, 1, 0] and [r.lababn_potassium_high for r in f] == [1, 0, 0]
    b = row(cohort, B)
    assert np.isnan(b.lababn_potassium_low)                        # not measured
    assert cohort["lababn_potassium_low"].dtype == np.float32

def test_closest_lab_tie(tmp_path):
    "Equidistant values before and after the ECG: the earlier one wins."
    import duckdb
    from ecg_study.cohort import closest_lab_values
    con = duckdb.connect()
    con.sql(f"""CREATE TABLE samples AS SELECT 1 AS study_id, 7 AS stay_id, TIMESTAMP '{t(30)}' AS ecg_time""")
    con.sql(f"""CREATE TABLE lab_rows AS SELECT * FROM (VALUES
      (7, 'potassium', TIMESTAMP '{t(20)}', 3.0), (7, 'potassium', TIMESTAMP '{t(40)}', 6.0),
      (7, 'sodium', TIMESTAMP '{t(35)}', 140.0), (7, 'sodium', TIMESTAMP '{t(35)}', 130.0),
      (7, 'glucose', TIMESTAMP '{t(91)}', 100.0)) t(stay_id, stem, charttime, v)""")
    v = closest_lab_values(con).loc[1]
    assert v["potassium"] == 3.0 and v["sodium"] == 135.0 and np.isnan(v["glucose"])   # +61 min: outside

def test_diagnoses_mapping_and_ancestors(prepared):
    cohort = prepared[3]
    a, b = row(cohort, A, 10), row(cohort, B)
    for code in ("i25", "i251", "i2510", "i10"): assert a[f"diagnoses_{code}"] == 1        # ICD-9 4019 -> I10
    assert "diagnoses_z000" not in cohort or a["diagnoses_z000"] == 0    # ED codes ignored when hosp codes exist
    assert b["diagnoses_r07"] == 1 and b["diagnoses_r079"] == 1          # ED codes (dots removed)
    assert row(cohort, FILLERS[5])["diagnoses_r079"] == 1 and cohort["diagnoses_r079"].sum() == 2
    assert "diagnoses_j18" not in cohort and "diagnoses_j189" not in cohort   # below min_label_count
    f = [row(cohort, s) for s in FILLERS[:2]]    # even k: ICD-9 4280 -> I509
    assert {f[0]["diagnoses_i509"], f[1]["diagnoses_i509"]} == {0, 1}
    assert all(cohort[c].dtype == np.int8 for c in label_columns(cohort))
    assert prepared[2]["counts"]["icd9_codes"] > 0

def test_folds_grouped(prepared):
    cohort = prepared[3]
    assert (cohort.groupby("subject_id")["fold"].nunique() == 1).all()
    assert cohort.fold.between(0, 19).all()

def test_lead_order(prepared):
    sig = prepared[4]
    L = {l: i for i, l in enumerate(STUDY_LEADS)}
    s = np.asarray(sig[:5], dtype=np.float64)
    assert np.abs(s[..., L["III"]] - (s[..., L["II"]] - s[..., L["I"]])).max() < 0.02
    assert np.abs(s[..., L["aVL"]] - (s[..., L["I"]] - s[..., L["II"]] / 2)).max() < 0.02
    assert np.abs(s[..., L["aVF"]] - (s[..., L["II"]] - s[..., L["I"]] / 2)).max() < 0.02
    assert sig.shape[1:] == (1000, 12) and sig.dtype == np.float32

def test_manifest_and_rerun_noop(prepared):
    raw, out, m, cohort, sig = prepared
    from ecg_study.cohort import sha256_file
    assert m["checksums"]["cohort.parquet"] == sha256_file(out / "cohort.parquet")
    assert set(m["labels"]["diagnoses"]) == set(label_columns(cohort))
    mt = (out / "cohort.parquet").stat().st_mtime_ns, (out / "signals.npy").stat().st_mtime_ns
    m2 = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert m2 == m and mt == ((out / "cohort.parquet").stat().st_mtime_ns, (out / "signals.npy").stat().st_mtime_ns)
    assert not (out / ".work").exists()
    (out / "manifest.json").unlink()          # an interrupted run leaves no manifest: the rerun rebuilds the same dataset
    m3 = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert m3["checksums"] == m["checksums"]
    # a dataset another build of the library prepared is prepared again, not reused
    (out / "manifest.json").write_text(json.dumps({**m3, "code": "an older library"}))
    mt = (out / "cohort.parquet").stat().st_mtime_ns
    m4 = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert m4["code"] == m3["code"] and (out / "cohort.parquet").stat().st_mtime_ns != mt

def test_machine_reports(prepared):
    raw, out, m, cohort, sig = prepared
    first = pd.read_csv(raw / "ecg" / "record_list.csv").study_id.iloc[0]
    rep = cohort.set_index("study_id").machine_report
    assert rep.get(first, "") == "" and (rep.drop(first, errors="ignore") == "Sinus rhythm; Normal ECG").all()
    assert m["counts"]["ecgs_with_machine_report"] == int((rep != "").sum()) > 0

def test_mds_ed_roundtrip(prepared, tmp_path):
    raw, out, m, cohort, sig = prepared
    csv = export_prepared(out, tmp_path / "mds_ed.csv")
    m2 = prepare("mds_ed", csv, tmp_path / "ds", ecg=raw / "ecg", min_lab_pos=0, n_jobs=1, progress=False)
    c2, s2, _ = read_prepared(tmp_path / "ds")
    feats, dx = feature_columns(cohort), label_columns(cohort)
    pd.testing.assert_frame_equal(c2[feats], cohort[feats], check_dtype=False)
    pd.testing.assert_frame_equal(c2[dx], cohort[dx])
    assert (c2.fold.values == cohort.fold.values).all() and np.array_equal(np.asarray(s2), np.asarray(sig))
    assert "lababn_potassium_high" in c2 and m2["source"] == "mds_ed"

def test_bad_input(tmp_path):
    raw = build_raw(tmp_path / "raw")
    (raw / "ed" / "triage.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="triage"): prepare("synthetic", raw, tmp_path / "o", progress=False)
    build_raw(raw)
    rl = pd.read_csv(raw / "ecg" / "record_list.csv").drop(columns="path"); rl.to_csv(raw / "ecg" / "record_list.csv", index=False)
    with pytest.raises(ValueError, match=r"record_list\.csv.*path"): prepare("synthetic", raw, tmp_path / "o", progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"): prepare("mimic", raw, tmp_path / "o", ecg=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="source"): prepare("ptbxl", raw, tmp_path / "o")

def test_synthetic_to_mds_ed_roundtrip(tmp_path):
    "synthetic → prepare (exporting mds_ed.csv) → prepare via the mds_ed path: same features, labels, folds, signals."
    from ecg_study.synth import synthesize
    synthesize(tmp_path / "raw", n_patients=60, seed=3, n_jobs=1, progress=False)
    m = prepare("synthetic", tmp_path / "raw", tmp_path / "a", min_label_count=3, min_lab_pos=0, n_jobs=1,
                progress=False, export_mds_ed=tmp_path / "mds_ed.csv")
    assert (tmp_path / "mds_ed.csv").exists() and m["counts"]["samples"] > 20
    prepare("mds_ed", tmp_path / "mds_ed.csv", tmp_path / "b", ecg=tmp_path / "raw" / "ecg", min_label_count=3,
            min_lab_pos=0, n_jobs=1, progress=False)
    (a, sa, _), (b, sb, _) = read_prepared(tmp_path / "a"), read_prepared(tmp_path / "b")
    feats, dx = feature_columns(a), label_columns(a)
    assert dx and feats and set(dx) == set(label_columns(b))
    pd.testing.assert_frame_equal(b[feats], a[feats], check_dtype=False)
    pd.testing.assert_frame_equal(b[dx], a[dx], check_dtype=False)
    assert (a.study_id.values == b.study_id.values).all() and (a.fold.values == b.fold.values).all()
    assert np.array_equal(np.asarray(sa), np.asarray(sb))

def test_rewritten_raw_tables_make_the_dataset_stale(tmp_path):
    "Same parameters but a rewritten raw table: the dataset is rebuilt, not reported current."
    raw = build_raw(tmp_path / "raw")
    out = tmp_path / "ds"
    m = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    before = read_prepared(out)[0]["vitals_heartrate_max"]
    vit = raw / "ed" / "vitalsign.csv.gz"
    df = pd.read_csv(vit)
    df["heartrate"] = df["heartrate"] + 7                                     # a changed source
    df.to_csv(vit, index=False)
    m2 = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert m2["parameters"]["raw_fingerprint"] != m["parameters"]["raw_fingerprint"]
    assert m2["checksums"]["cohort.parquet"] != m["checksums"]["cohort.parquet"]
    after = read_prepared(out)[0]["vitals_heartrate_max"]
    assert before.notna().any() and np.allclose(after.dropna(), before.dropna() + 7)

def test_prepare_refuses_a_missing_source_and_a_foreign_folder(prepared, tmp_path):
    "Input is checked before anything is written: a typo in --raw or --out destroys nothing."
    raw, out, m, cohort, sig = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare("synthetic", tmp_path / "no_such_raw", out, n_jobs=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before     # the finished dataset is untouched
    other = tmp_path / "my_notes"; other.mkdir(); (other / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        prepare("synthetic", raw, other, n_jobs=1, progress=False)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]

def test_a_failed_rebuild_leaves_the_finished_dataset(tmp_path):
    "The dataset is built beside `out` and swapped in when complete: a rebuild that fails part way changes nothing."
    raw, out = build_raw(tmp_path / "raw"), tmp_path / "ds"
    m = prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (raw / "ed" / "triage.csv.gz").unlink()                                   # the rebuild will fail
    with pytest.raises(FileNotFoundError, match="triage"):
        prepare("synthetic", raw, out, min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and read_prepared(out)[2]["checksums"] == m["checksums"]

def test_a_re_downloaded_record_changes_the_fingerprint(tmp_path):
    "Records count in what a dataset was built from (size and modification time), not only the tables."
    raw = build_raw(tmp_path / "raw")
    fp = raw_fingerprint(*source_paths("synthetic", raw))
    rec = next((raw / "ecg" / "files").rglob("*.dat"))
    os.utime(rec, ns=(rec.stat().st_atime_ns, rec.stat().st_mtime_ns + 10**9))
    assert raw_fingerprint(*source_paths("synthetic", raw)) != fp

def test_quality_rules_drop_or_blank_and_count(tmp_path):
    "Values no source should hold are kept out and counted in the manifest, never passed on silently."
    raw = build_raw(tmp_path / "raw")
    f0, f1, f2, f3 = FILLERS[:4]
    le = pd.read_csv(raw / "hosp" / "labevents.csv.gz")
    bad = le[le.subject_id == f0].iloc[:1].copy()
    lim = {l.itemid: LAB_LIMITS[lab_stem(l.label)] for l in LABS}
    known = le.valuenum.notna() & le.itemid.isin(lim)
    n_before = int((known & ~le[known].apply(lambda r: lim[r.itemid][0] <= r.valuenum <= lim[r.itemid][1], axis=1)).sum())
    assert bad.itemid.item() in lim
    le = pd.concat([le, bad.assign(valuenum=-4.0, value="-4.0", charttime=t(5)),                # below any lab's limits
                    bad.assign(valuenum=4.1e6, value="4.1e6", charttime=t(6)),                 # a unit error
                    bad.assign(ref_range_lower=6.0, ref_range_upper=3.0),                      # low above high
                    bad.assign(itemid=50802, valuenum=-6.0, value="-6.0")])                    # base excess may be negative
    gz(le, raw / "hosp" / "labevents.csv.gz")
    li = pd.read_csv(raw / "hosp" / "d_labitems.csv.gz")
    gz(pd.concat([li, pd.DataFrame([dict(itemid=50802, label="Base Excess", fluid="Blood", category="Blood Gas")])]), raw / "hosp" / "d_labitems.csv.gz")
    pa = pd.read_csv(raw / "hosp" / "patients.csv.gz"); pa.loc[pa.subject_id == f1, "anchor_age"] = 130; gz(pa, raw / "hosp" / "patients.csv.gz")
    rl = pd.read_csv(raw / "ecg" / "record_list.csv")
    rl = pd.concat([rl, rl[rl.subject_id == f2].assign(path="files/p9999/p9999/s1/1")])          # one study, two waveforms
    rl.to_csv(raw / "ecg" / "record_list.csv", index=False)
    st = pd.read_csv(raw / "ed" / "edstays.csv.gz"); st.loc[st.subject_id == f3, "intime"] = "soon"; gz(st, raw / "ed" / "edstays.csv.gz")
    vs = pd.read_csv(raw / "ed" / "vitalsign.csv.gz"); vs.loc[vs.index[0], "charttime"] = "25:99"; gz(vs, raw / "ed" / "vitalsign.csv.gz")
    f4 = rl[rl.subject_id == FILLERS[4]].iloc[0]                                                # lead V1 off: flagged, kept
    x = ecg_signal(int(f4.study_id) % 7); x[:, MIMIC_LEADS.index("V1")] = 0.0
    wfdb.wrsamp(str(f4.study_id), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=x, fmt=["16"] * 12,
                write_dir=str(raw / "ecg" / Path(f4.path).parent))
    m = prepare("synthetic", raw, tmp_path / "ds", min_label_count=2, min_lab_pos=0, n_jobs=1, progress=False)
    q, cohort = m["quality"], read_prepared(tmp_path / "ds")[0]
    assert q["labevents_implausible_value"] == n_before + 2 and q["labevents_reference_low_above_high"] == 1
    assert all(cohort[f"labvalues_{s}_{k}"].dropna().between(lo, hi).all()          # what prepare passes on is plausible
               for s, (lo, hi) in LAB_LIMITS.items() for k in ("min", "max")
               if f"labvalues_{s}_{k}" in cohort and s != "creatinine")                # build_raw's creatinine is urine's
    be = [c for c in cohort if c.startswith("labvalues_base_excess")]
    assert be and (cohort.loc[cohort.subject_id == f0, be].min(axis=1) < 0).all()           # kept as measured
    assert q["patients_age_outside_0_120"] == 1 and cohort.loc[cohort.subject_id == f1, "demographics_age"].isna().all()
    assert q["record_list_duplicate_study_id"] == 2 and f2 not in set(cohort.subject_id)
    assert q["edstays_intime_missing"] == 1 and f3 not in set(cohort.subject_id)
    assert q["vitalsign_charttime_missing"] == 1 and q["record_list_ecg_time_missing"] == 0
    issues = pd.read_csv(tmp_path / "ds" / m["record_issues"])
    assert m["flagged"] == {"flat lead": 1} and FILLERS[4] in set(cohort.subject_id)
    assert issues[issues.status == "flagged"].reason.tolist() == ["flat lead (V1)"]
    labs = cohort[[c for c in cohort if "potassium" in c and not c.startswith("lababn_")]]
    assert len(labs.columns) and (labs.fillna(0) >= 0).all().all()
