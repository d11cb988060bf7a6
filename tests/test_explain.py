"""End-to-end tests of the explanation modules (bundle, explain, faithfulness, the `ecg-study explain` command):
a tiny model trained on a toy prepared dataset, bundled, and asked to explain synthetic, broken and real WFDB records."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
import wfdb
from ecg_study.core import MIMIC_LEADS, sample_path
from ecg_study.datasets import make_toy_prepared
from ecg_study.bundle import BUNDLE_VERSION, load_bundle, make_bundle
from ecg_study.cli import explain_cli, plan_model_dir, resolve_model, run_bundle
from ecg_study.explain import explain_records
from ecg_study.faithfulness import faithfulness, predict_split
from ecg_study.study import write_metrics
from ecg_study.synth.ecg import simulate_ecg
from ecg_study.wfdb_write import write_wfdb
from ecg_study.run_config import TrainConfig, load_predictions
from ecg_study.training import finetune_dx, finetune_lab

DATA = sample_path("data", required=False) or Path("/nonexistent")   # $ECG_STUDY_SAMPLES; tests needing it skip
PTBXL = DATA / "ptbxl_sample"
needs_data = pytest.mark.skipif(not PTBXL.exists(), reason="real data samples not available")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    "A plan-like folder reports/toyplan/ with prepare, finetune_dx and finetune_lab steps of a tiny model, and its bundle."
    root = tmp_path_factory.mktemp("explain")
    plan = root / "reports" / "toyplan"
    data = make_toy_prepared(root / "data", n=300, seed=0)
    cfg = TrainConfig(d_model=16, n_layers=1, d_state=4, epochs=2, batch_size=32, freeze_depth=0,
                      enable_progress_bar=False, num_threads=2)
    dx, lab = plan / "method_s0_dx", plan / "method_s0_lab"
    finetune_dx(data, dx, cfg)
    finetune_lab(data, lab, cfg, encoder_ckpt=dx / "checkpoint.pt")
    write_metrics(plan / "prepare_toy", stage="prepare", cohort="toy", data_dir=str(data))
    write_metrics(dx, stage="finetune_dx", run="method", cohort="toy", seed=0)
    write_metrics(lab, stage="finetune_lab", run="method", cohort="toy", seed=0, encoder_step="method_s0_dx")
    (root / "toyplan.toml").write_text('name = "toyplan"\n[cohorts.toy]\nsource = "toy"\n'
                                       '[defaults]\nseeds = [0]\n[[runs]]\nname = "method"\nkind = "method"\n')
    bundle = make_bundle(dx, lab, data, root / "bundle.pt")
    return {"root": root, "data": data, "dx": dx, "lab": lab, "bundle": bundle, "b": load_bundle(bundle)}


def ecg(seed=0, seconds=10.0, fs=500, **state):
    "A 12-lead ECG (MIMIC lead order, mV) from the synthetic cohort's simulator."
    return simulate_ecg({"morph_seed": [seed, 1], **state}, np.random.default_rng(seed), fs=fs, n=int(seconds * fs))


def wrsamp(d, name, sig, names=MIMIC_LEADS, fs=500, units="mV", digital=False):
    "Write a 16-bit WFDB record (digital=True: the samples as they are, for flat / all-NaN signals)."
    kw = (dict(d_signal=sig.astype(np.int16), adc_gain=[200.0] * len(names), baseline=[0] * len(names)) if digital
          else dict(p_signal=sig))
    wfdb.wrsamp(name, fs=fs, units=[units] * len(names), sig_name=list(names), fmt=["16"] * len(names),
                write_dir=str(d), **kw)
    return str(Path(d) / name)


def test_bundle_contents_and_reproduces_run_predictions(model):
    b = model["b"]
    assert b.meta["version"] == BUNDLE_VERSION and b.meta["preprocessing"]["fs"] == 100
    assert b.dx_codes == ["I48", "I4891", "N17", "R07"] and len(b.lab_names) == 8
    assert b.meta["counts"]["train"] + b.meta["counts"]["val"] + b.meta["counts"]["test"] == 300
    assert b.meta["val_check_max_abs_diff"] < 1e-4
    # the bundle scores the test fold exactly as the run did
    run, mine = load_predictions(model["dx"], "test"), predict_split(b, model["data"], "test")
    np.testing.assert_array_equal(run["rows"], mine["rows"])
    np.testing.assert_allclose(mine["p_dx"], run["y_score"], atol=1e-5)
    np.testing.assert_allclose(mine["p_lab"], load_predictions(model["lab"], "test")["y_score"], atol=1e-5)
    # the toy's planted link: creatinine > 1.5 → N17 and creatinine_high co-occur in training
    n17 = b.dx_codes.index("N17")
    assert b.lab_names[b.evidence[n17][0]] == "creatinine_high"


def test_explain_synthetic_record_end_to_end(model, tmp_path):
    write_wfdb(tmp_path / "s1", ecg(1, af=True, potassium=6.8), 500, "2150-01-01 10:00:00")
    [r] = explain_records([tmp_path / "s1"], model["b"], top_k=3)
    assert r["error"] is None and r["fs"] == 500 and r["windows"] == 4 and r["record"] == str(tmp_path / "s1")
    assert len(r["diagnoses"]) == 3 and len(r["lab_abnormalities"]) == 8
    for d in r["diagnoses"]:
        assert {"code", "probability", "positive", "threshold", "description"} <= d.keys() and 0 <= d["probability"] <= 1
    assert [e["code"] for e in r["evidence"]] == [d["code"] for d in r["diagnoses"]]
    probs = {l["label"]: l for l in r["lab_abnormalities"]}
    for e in r["evidence"]:
        for l in e["labs"]:
            assert l["lift"] > 1 and l["predicted"] == probs[l["label"]]["positive"]
    json.dumps(r)


def test_lead_permutation_does_not_change_output(model, tmp_path):
    sig = ecg(2)
    perm = np.random.default_rng(0).permutation(12)
    a = wrsamp(tmp_path, "mimic_order", sig)
    b = wrsamp(tmp_path, "permuted", sig[:, perm], [MIMIC_LEADS[i].upper() for i in perm])
    ra, rb = explain_records([a, b], model["b"])
    assert ra["error"] is None and rb["error"] is None
    assert {k: v for k, v in ra.items() if k != "record"} == {k: v for k, v in rb.items() if k != "record"}


def test_short_record_uses_its_whole_windows(model, tmp_path):
    sig = ecg(3, seconds=6.2)
    [r] = explain_records([wrsamp(tmp_path, "short6", sig)], model["b"])
    assert r["error"] is None and r["windows"] == 2 and r["seconds"] == 6.2
    from ecg_study.signals import preprocess, read_record     # a prepared dataset skips it (< 10 s); explain scores 2 windows
    p_dx, _ = model["b"].predict(preprocess(*read_record(tmp_path / "short6"))[None], n_windows=2)
    got = {d["code"]: d["probability"] for d in r["diagnoses"]}
    for k, code in enumerate(model["b"].dx_codes): assert abs(got[code] - p_dx[0, k]) < 1e-4


def bad_records(d):
    "name → (path, expected message fragment): one record per problem explain must name."
    sig = ecg(4)
    garbage = wrsamp(d, "garbage", sig)
    Path(garbage + ".hea").write_text("this is not\na header\n")
    return {
        "unreadable": (garbage, "unreadable header"),
        "missing file": (str(Path(d) / "nowhere" / "rec"), "missing header file"),
        "missing leads": (wrsamp(d, "eleven", sig[:, :11], MIMIC_LEADS[:11]), r"missing leads \['V6'\]"),
        "too short": (wrsamp(d, "short", sig[:1000]), r"too short \(2.00 s < 2.5 s\)"),
        "flat": (wrsamp(d, "flat", np.full((5000, 12), 7), digital=True), "flat signal"),
        "all-NaN": (wrsamp(d, "allnan", np.full((5000, 12), -32768), digital=True), "all-NaN signal"),
        "wrong units": (wrsamp(d, "mmhg", sig, units="mmHg"), r"wrong units \['mmHg'\]"),
    }


def test_bad_inputs_named_while_the_others_are_explained(model, tmp_path):
    bad = bad_records(tmp_path)
    good = [wrsamp(tmp_path, f"good{i}", ecg(10 + i)) for i in range(2)]
    paths = [good[0]] + [p for p, _ in bad.values()] + [good[1]]
    res = explain_records(paths, model["b"])
    assert res[0]["error"] is None and res[-1]["error"] is None and res[0]["diagnoses"] and res[-1]["diagnoses"]
    import re
    for r, (case, (path, msg)) in zip(res[1:-1], bad.items()):
        assert r["error"] and re.search(msg, r["error"]), (case, r["error"])
        assert Path(path).name in r["error"] and r["diagnoses"] == [], case


def test_bundle_version_mismatch_refused(model, tmp_path):
    meta = torch.load(model["bundle"], weights_only=True)
    meta["version"] = BUNDLE_VERSION + 98
    torch.save(meta, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=rf"old.pt: bundle version {BUNDLE_VERSION + 98}, this code reads version {BUNDLE_VERSION}"):
        load_bundle(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not an ecg_study model bundle"):
        load_bundle(model["dx"] / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable model bundle"):
        load_bundle(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="no model bundle"):
        load_bundle(tmp_path / "none.pt")


def test_lab_run_on_another_encoder_refused(model, tmp_path):
    cfg = TrainConfig(d_model=16, n_layers=1, d_state=4, epochs=1, freeze_depth=0, enable_progress_bar=False, seed=1)
    finetune_dx(model["data"], tmp_path / "other_dx", cfg)
    with pytest.raises(ValueError, match="not trained on the encoder of"):
        make_bundle(tmp_path / "other_dx", model["lab"], model["data"], tmp_path / "b.pt")


@needs_data
def test_real_ptbxl_and_ptb_records(model):
    recs = [PTBXL / "records100/00000/00001_lr", PTBXL / "records500/00000/00001_hr.hea", DATA / "wfdb_samples/s0010_re"]
    lo, hi, ptb = explain_records(recs, model["b"])
    assert lo["error"] is None and hi["error"] is None and ptb["error"] is None
    assert (lo["fs"], hi["fs"], ptb["fs"]) == (100, 500, 1000) and ptb["windows"] == 4 and ptb["seconds"] == 38.4
    p_lo = {d["code"]: d["probability"] for d in lo["diagnoses"]}
    p_hi = {d["code"]: d["probability"] for d in hi["diagnoses"]}
    assert p_lo.keys() == p_hi.keys() and all(abs(p_lo[c] - p_hi[c]) < 0.02 for c in p_lo)   # same record, two rates


def test_cli_json_html_and_model_resolution(model, tmp_path, capsys):
    good = wrsamp(tmp_path, "good", ecg(5))
    short = wrsamp(tmp_path, "tiny", ecg(5)[:500])
    assert explain_cli([good], str(model["bundle"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and {"record", "diagnoses", "lab_abnormalities", "error"} <= out[0].keys()
    assert {"code", "codes", "probability", "positive", "description"} <= out[0]["diagnoses"][0].keys()
    leads = [d["codes"][0] for d in out[0]["diagnoses"]]
    assert len(leads) == len(set(leads)) and out[0]["model"]["operating_point"]      # one row per diagnosis; the model named
    assert all(d["description"] for d in out[0]["diagnoses"]), out[0]["diagnoses"]   # every code described (CMS table)
    assert {"label", "probability"} <= out[0]["lab_abnormalities"][0].keys()
    # a finetune_lab run folder: the bundle is built into it on first use
    assert explain_cli([good, short], str(model["lab"])) == 1
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res[0]["error"] is None and "too short" in res[1]["error"] and "1 of 2 records failed" in cap.err
    assert (model["lab"] / "bundle.pt").exists() and resolve_model(model["lab"]) == model["lab"] / "bundle.pt"
    assert run_bundle(model["lab"]).stat().st_mtime == (model["lab"] / "bundle.pt").stat().st_mtime   # not rebuilt
    # a plan name → its headline method model
    assert plan_model_dir(str(model["root"] / "toyplan.toml"), reports=model["root"] / "reports") == model["lab"]
    unnamed = model["root"] / "copy" / "toyplan.toml"      # a plan file without `name`: its reports are under its stem
    unnamed.parent.mkdir(); unnamed.write_text((model["root"] / "toyplan.toml").read_text().replace('name = "toyplan"\n', ""))
    assert plan_model_dir(str(unnamed), reports=model["root"] / "reports") == model["lab"]
    # html: one self-contained page per record with the 12-lead plot
    assert explain_cli([good, short], str(model["bundle"]), out=str(tmp_path / "html"), fmt="html") == 1
    page = (tmp_path / "html" / "good.html").read_text()
    assert "data:image/png;base64," in page and "Diagnoses" in page and "lift" in page
    assert "<title>ECG explanation · good" in page and "For research only" in page and "operating point" in page
    assert str(tmp_path) not in page                                    # titled by the record's name, not its path
    flat = ecg(5); flat[:, 3] = 0.0                                       # a lead off: explained, with a warning
    assert explain_cli([wrsamp(tmp_path, "flat", flat)], str(model["bundle"]), out=str(tmp_path / "flat.html"), fmt="html") == 0
    assert "Signal quality: flat lead" in (tmp_path / "flat.html").read_text()
    assert "too short" in (tmp_path / "html" / "tiny.html").read_text()
    assert explain_cli([good], str(tmp_path / "nowhere.pt")) == 2
    # json into a named file, or a folder for explain.json
    assert explain_cli([good], str(model["bundle"]), out=str(tmp_path / "x.json")) == 0
    assert (tmp_path / "x.json").is_file() and json.loads((tmp_path / "x.json").read_text())[0]["error"] is None
    assert explain_cli([good], str(model["bundle"]), out=str(tmp_path / "js")) == 0 and (tmp_path / "js" / "explain.json").is_file()


def test_faithfulness_against_a_known_truth(model, tmp_path):
    b, data = model["b"], model["data"]
    pred = predict_split(b, data, "test")
    n17 = b.dx_codes.index("N17")
    calls = int((pred["p_dx"][:, n17] >= b.dx_threshold[n17]).sum())
    assert calls > 0
    def run(causes, indirect=()):
        (tmp_path / "label_causes.json").write_text(json.dumps(
            {"aki": {"icd10": ["N17"], "lab_abnormalities": list(causes), "lab_abnormalities_indirect": list(indirect)},
             "other": {"icd10": ["Z99"], "lab_abnormalities": ["potassium_high"]}}))
        return faithfulness(b, data, tmp_path, predictions=pred)
    f = run(["creatinine_high"])
    assert f["n_mapped_calls"] == f["n_cited"] == calls and f["explain_faithfulness"] == 1.0
    assert f["explain_faithfulness_direct"] == 1.0 and f["per_label"][0]["code"] == "N17"
    base = f["baseline_lab"]
    assert f["baseline_faithfulness"] == (1.0 if base == "creatinine_high" else 0.0)
    assert f["chance_faithfulness"] == pytest.approx(1 / 8)
    g = run(["hemoglobin_low"], indirect=["creatinine_high"])
    assert g["explain_faithfulness"] == 1.0 and g["explain_faithfulness_direct"] == 0.0
    h = run([base] if base != "creatinine_high" else ["potassium_low"])
    assert h["explain_faithfulness"] == 0.0 and h["baseline_faithfulness"] == (1.0 if base != "creatinine_high" else 0.0)
