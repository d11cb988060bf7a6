"""The study runner end to end: a tiny plan through papermill, caching, a failing run, the privacy check."""
import json, shutil, subprocess, tomllib
from pathlib import Path
import nbformat
import pandas as pd
import pytest
import ecg_study.study as study
from ecg_study.plans import PLANS_DIR, STAGES_DIR

TINY = """
name = "tiny"
parallel = 2
[cohorts.synthetic]
source = "synthetic"
n_patients = 160
min_lab_pos = 1
min_label_count = 5
seed = 0
[defaults]
seeds = [0]
crossfit = 2
patience = 1
d_model = 8
n_layers = 1
d_state = 4
dropout = 0.0
projector_dims = [16, 16]
tab_hidden = [16]
batch_size = 32
epochs = 1
freeze_depth = 1
[explain]
runs = ["method"]
[intervene]
runs = ["method", "no_lab", "joint"]
n_records = 4
claim = { id = "C7", statement = "causal", a = "method", b = "no_lab" }
claims = [{ id = "C10c", statement = "joint more causal", a = "joint", b = "method" }]
[realism]
max_per_group = 20
max_real = 60
[evaluate]
n_boot = 50
n_boot_curve = 20
[[claims]]
id = "C1"
statement = "method beats ECG-only"
kind = "difference"
a = "method"
b = "ecg_only"
labels = "distinct"
[[claims]]
id = "C3a"
statement = "labs from the ECG"
kind = "level"
a = "method"
head = "lab"
null = 0.5
[[claims]]
id = "C3b"
statement = "ECG-tied labs from the ECG"
kind = "level"
a = "method"
head = "lab"
labels = "ecg_tied"
null = 0.5
[[claims]]
id = "C7"
stage = "intervene"
[[claims]]
id = "C9b"
statement = "joint beats the method on labs"
kind = "difference"
head = "lab"
a = "joint"
b = "method"
[[claims]]
id = "C10c"
stage = "intervene"
[[runs]]
name = "method"
kind = "method"
[[runs]]
name = "ecg_only"
kind = "supervised"
[[runs]]
name = "no_lab"
kind = "method"
tab_prefixes = ["demographics_", "vitals_"]
[[runs]]
name = "l2sp"                    # beyond the paper: the whole pre-trained encoder, pulled towards its start
kind = "method"
encoder_from = "method"
freeze_depth = 0
regularizer = "l2sp"
reg_weight = 0.01
lab = false
[[runs]]
name = "joint"
kind = "joint"
[[runs]]
name = "trimodal"                # the machine report as a third view in pre-training
kind = "method"
text = true
text_hidden = [16]
lab = false
[[runs]]
name = "broken"                  # crops longer than the records (valid to the plan check, fails in the stage): it must fail alone
kind = "supervised"
model = "ecg_only"
crop = 5000
"""

def test_plans_expand():
    for p in sorted(PLANS_DIR.glob("*.toml")):
        spec = tomllib.loads(p.read_text()); spec.setdefault("name", p.stem)
        steps = study.expand_plan(spec)
        names = [s.name for s in steps]
        assert len(names) == len(set(names)) and names[-2:] == ["evaluate", "figures"], p
        assert {"method_s0_dx", "ecg_only_s0"} <= set(names), p
        for s in steps: assert (STAGES_DIR / f"{s.stage}.ipynb").exists(), s.stage

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    plan = root / "tiny.toml"; plan.write_text(TINY)
    rc = study.run_plan(plan, reports=root / "reports")
    return root, plan, rc

def test_tiny_plan_end_to_end(tiny):
    root, plan, rc = tiny
    pd_ = root / "reports" / "tiny"
    assert rc == 1                                                   # the broken run fails the command …
    assert json.loads((pd_ / "broken_s0" / "stamp.json").read_text())["status"] == "failed"
    assert (pd_ / "broken_s0" / "baselines.ipynb").exists()          # … keeps its executed notebook with the error
    assert "longer than the records" in (pd_ / "broken_s0" / "baselines.html").read_text()
    for step in ("method_s0_pretrain", "method_s0_dx", "method_s0_lab", "method_s0_explain", "ecg_only_s0", "intervene", "joint_s0", "l2sp_s0_dx",
                 "trimodal_s0_pretrain", "trimodal_s0_dx",
                 "realism_synthetic", "evaluate", "figures"):
        st = json.loads((pd_ / step / "stamp.json").read_text())
        assert st["status"] == "ok", (step, st)                     # … and does not stop the independent runs
        assert list((pd_ / step).glob("*.html")), step
    res = pd.read_csv(pd_ / "results.csv")
    assert list(res.columns) == ["cohort", "model", "metric", "seed", "part", "value", "ci_low", "ci_high", "p_value", "n_seeds"]
    parts = res[(res.model == "method") & (res.metric == "dx_macro_auroc") & res.part.notna()]
    assert sorted(parts.part) == list(range(len(parts))) and parts.seed.notna().all()       # one row per cross-fitted part
    c1 = res[res.metric == "claim:C1"]
    assert c1.seed.notna().any() and c1[c1.seed.isna()].p_value.between(0, 1).all()         # per-seed contrasts and the test
    got = set(zip(res.model, res.metric))
    assert {("method", "dx_macro_auroc"), ("method", "dx_macro_auroc_distinct"), ("method", "dx_macro_auroc_curve"),
            ("method", "lab_macro_auroc"), ("ecg_only", "dx_macro_auroc"), ("joint", "dx_macro_auroc"), ("joint", "lab_macro_auroc"),
            ("l2sp", "dx_macro_auroc"), ("trimodal", "dx_macro_auroc")} <= got
    assert "## Stability and drift" in (pd_ / "results.md").read_text()
    agg = res[res.seed.isna() & ~res.metric.str.startswith("claim:")]
    assert ((agg.ci_low <= agg.value) & (agg.value <= agg.ci_high)).all() and agg.value.between(0, 1).all()
    claims = pd.read_csv(pd_ / "claims.csv")                         # every declared claim, in order, with a verdict
    assert claims.claim.tolist() == ["C1", "C3a", "C3b", "C7", "C9b", "C10c"]
    assert set(claims.verdict) <= {"supported", "contradicted", "inconclusive"}
    assert (claims.ci_low <= claims.estimate).all() and (claims.mde > 0).all()
    assert (pd_ / "results.md").read_text().index("## Claims") < (pd_ / "results.md").read_text().index("The paper's table")
    oracle = pd.read_csv(pd_ / "oracle.csv")                         # both ceilings, per label, on the records ECG-only scored
    assert {"oracle_auroc", "ecg_reader_auroc", "ecg_only_auroc", "margin_share", "reader_share"} <= set(oracle.columns)
    assert oracle.ecg_reader_auroc.dropna().between(0, 1).all() and oracle.ecg_reader_auroc.notna().any()
    index = (pd_ / "index.html").read_text()
    assert "broken_s0" in index and "failed" in index and "method_s0_dx/finetune_dx.html" in index
    assert "runs/method.html" in index and "method_s0_dx" in (pd_ / "runs" / "method.html").read_text()   # a page per run
    assert "Explanations by co-occurrence" in (pd_ / "results.md").read_text()
    assert (pd_ / "figures" / "crosscorr_before_after.png").exists() and (pd_ / "figures" / "claims_forest.svg").exists()
    nb = nbformat.read(pd_ / "method_s0_dx" / "finetune_dx.ipynb", as_version=4)    # notebooks show their plots
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    streams = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert any(o["name"] == "stdout" and " INFO " in o["text"] for o in streams)          # information in plain output,
    assert not any(o["name"] == "stderr" and " INFO " in o["text"] for o in streams)      # not in a red error box

def test_rerun_skips_current_steps(tiny):
    root, plan, _ = tiny
    pd_ = root / "reports" / "tiny"
    before = {p: p.stat().st_mtime_ns for p in pd_.glob("*/*.ipynb") if p.parent.name != "broken_s0"}
    assert study.run_plan(plan, reports=root / "reports") == 1       # broken is retried and fails again
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after                                           # everything else was current: nothing re-executed

def test_privacy_check_refuses_a_planted_subject_id(tmp_path, monkeypatch):
    (tmp_path / "nbs" / "stages").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("run_dir = '.'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import json, pathlib\nprint('first row subject', 10000032)\n"
                                  "pathlib.Path(run_dir, 'metrics.json').write_text('{}')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "nbs" / "stages" / "leak.ipynb")
    monkeypatch.setattr(study, "STAGES_DIR", tmp_path / "nbs" / "stages")
    plan_dir = tmp_path / "reports" / "p"
    res = study.execute_step(study.Step("leak", "leak", {}), plan_dir, identifiers={10000032})
    assert res.status == "failed" and "patient identifier" in res.error
    assert not list((plan_dir / "leak").glob("*.ipynb")) and not list((plan_dir / "leak").glob("*.html"))
    ok = study.execute_step(study.Step("leak", "leak", {}), plan_dir, identifiers={12345678})
    assert ok.status == "ok" and (plan_dir / "leak" / "leak.html").exists()

def test_privacy_check_covers_the_dataset_a_step_builds(tmp_path, monkeypatch):
    "A `prepare`-like step of a real source is checked against the identifiers of the dataset it has just written."
    (tmp_path / "nbs" / "stages").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("run_dir = '.'\ndata_dir = ''", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, pathlib, pandas as pd\nd = pathlib.Path(data_dir); d.mkdir(parents=True)\n"
            "pd.DataFrame({'subject_id': [10000032], 'study_id': [40689238], 'hadm_id': [22595853], 'stay_id': [33258284]}).to_parquet(d / 'cohort.parquet')\n"
            "(d / 'manifest.json').write_text(json.dumps({'source': 'mimic'}))\n"
            "print('first ECG', 40689238)\npathlib.Path(run_dir, 'metrics.json').write_text('{}')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "nbs" / "stages" / "build.ipynb")
    monkeypatch.setattr(study, "STAGES_DIR", tmp_path / "nbs" / "stages")
    res = study.execute_step(study.Step("prepare_mimic", "build", {"cohort": "mimic"}), tmp_path / "reports" / "p")
    assert res.status == "failed" and "patient identifier" in res.error

def test_a_failed_step_of_a_credentialed_source_shows_no_raw_row(tmp_path, monkeypatch):
    "A `prepare` of MIMIC that fails before its dataset exists: the notebook and the error name the cell, never the row."
    (tmp_path / "nbs" / "stages").mkdir(parents=True)
    row = tmp_path / "labevents_row.csv"; row.write_text("10000032,22595853,50912,abc")     # a raw row the error quotes
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("run_dir = '.'\nsource = 'mimic'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"print('reading labevents')\nraise ValueError('Could not convert row ' + open({str(row)!r}).read())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "nbs" / "stages" / "build.ipynb")
    monkeypatch.setattr(study, "STAGES_DIR", tmp_path / "nbs" / "stages")
    plan_dir = tmp_path / "reports" / "p"
    res = study.execute_step(study.Step("prepare_mimic", "build", {"cohort": "mimic", "source": "mimic"}), plan_dir)
    assert res.status == "failed" and "10000032" not in res.error and "ValueError in cell(s) [" in res.error
    saved = (plan_dir / "prepare_mimic" / "build.ipynb").read_text() + (plan_dir / "prepare_mimic" / "build.html").read_text()
    assert "10000032" not in saved and "reading labevents" in saved and "withheld" in saved

def test_every_notebook_that_draws_shows_its_plots(tiny):
    "Stage kernels draw inline (no Agg): an executed notebook that plots has image outputs."
    root, _, _ = tiny
    checked = 0
    for path in (root / "reports" / "tiny").glob("*/*.ipynb"):
        if path.parent.name == "broken_s0": continue                 # stopped at its error, before any plot
        if json.loads((path.parent / "metrics.json").read_text()).get("ptbxl_found") is False: continue   # realism: no sample to draw
        nb = nbformat.read(path, as_version=4)
        draws = any(k in c.source for c in nb.cells if c.cell_type == "code" for k in ("plt.", "plot_", "sns."))
        shows = any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert shows or not draws, path
        checked += draws
    assert checked >= 5

def _links(html_text: str) -> list[str]:
    from html.parser import HTMLParser
    out = []
    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            out.extend(v for k, v in attrs if k in ("href", "src") and v and not v.startswith(("http", "#", "data:", "mailto:")))
    P().feed(html_text)
    return out

def test_index_links_resolve_and_the_pages_render(tiny, tmp_path):
    "Every link of index.html and of a run page leads to a file; in headless Chromium (when installed) the index, a run page and a step's notebook render."
    root, _, _ = tiny
    pd_ = root / "reports" / "tiny"
    links = _links((pd_ / "index.html").read_text())
    assert len(links) > 20 and "plan.toml" in links and any(l.endswith("config.json") for l in links)
    missing = [l for l in links if not (pd_ / l).exists()]
    assert not missing, missing
    run_links = _links((pd_ / "runs" / "method.html").read_text())          # a run page: back to the index, its steps' files
    assert "../index.html" in run_links and not [l for l in run_links if not (pd_ / "runs" / l).resolve().exists()]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None: pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    for page in (pd_ / "index.html", pd_ / "runs" / "method.html", pd_ / "method_s0_dx" / "finetune_dx.html"):
        shot = tmp_path / f"{page.parent.name}.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000, page

def test_explain_reads_a_cross_fitted_run(tiny, capsys):
    "`explain --model <finetune_lab run>` of a cross-fitted plan uses part 0's models and names them."
    from ecg_study.cli import explain_cli
    root, _, _ = tiny
    rec = next((root / "data" / "synthetic" / "tiny_synthetic" / "ecg" / "files").rglob("*.hea")).with_suffix("")
    assert explain_cli([str(rec)], str(root / "reports" / "tiny" / "method_s0_lab")) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["error"] is None and res["model"]["dx_run"] == "method_s0_dx (part0)" and res["model"]["plan"] == "tiny"
