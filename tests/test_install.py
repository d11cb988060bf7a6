"""A non-editable install (`pip install .`) finds its stage notebooks and plans without the checkout and runs a plan
from another working directory, writing `reports/` and `data/` there."""
import json, os, shutil, subprocess, sys
from pathlib import Path

from test_study import TINY

REPO = Path(__file__).resolve().parents[1]
# the tiny plan's cohort, model sizes and its method and ECG-only runs: what the figures need, nothing more
_RUNS = TINY[TINY.index("[[runs]]"):TINY.index('[[runs]]\nname = "no_lab"')]
MICRO = TINY.split("[explain]")[0].replace('name = "tiny"', 'name = "micro"') + "[evaluate]\nn_boot = 20\nn_boot_curve = 0\n" + _RUNS

def _py(code: str, cwd: Path, env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)

def test_installed_package_runs_a_plan(tmp_path):
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__")
    top = lambda d, names: set(skip(d, names)) | ({"data", "reports"} & set(names) if Path(d) == REPO else set())
    shutil.copytree(REPO, src, ignore=top)          # the package's own data/ tables stay; the study's outputs do not
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(src)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.rmtree(src)                                    # nothing of the checkout is left to fall back on
    work.mkdir(); (work / "micro.toml").write_text(MICRO)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = _py("import ecg_study.plans as p; print(p.STAGES_DIR, p.plan_path('quick'))", work, env)
    assert where.returncode == 0 and where.stdout.startswith(str(site / "share" / "ecg_study" / "stages")), where
    run = _py("from ecg_study.cli import main; raise SystemExit(main())", work, env, "run", "--plan", "micro.toml")
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    for step in ("prepare_synthetic", "method_s0_pretrain", "method_s0_lab", "ecg_only_s0", "evaluate", "figures"):
        assert json.loads((work / "reports" / "micro" / step / "stamp.json").read_text())["status"] == "ok", step
    assert (work / "data" / "processed" / "micro_synthetic" / "manifest.json").exists()
    assert (work / "reports" / "micro" / "index.html").exists()

def test_the_lock_pins_every_dependency():
    "requirements.lock holds one exact version of every dependency of pyproject.toml (but torch), inside its range."
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    root = Path(__file__).resolve().parents[1]
    pins = [l.split("==") for l in (root / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    lock = {canonicalize_name(n): v for n, v in pins}
    assert len(lock) == len(pins) and "torch" not in lock
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
        r = Requirement(dep)
        if r.name == "torch": continue
        assert canonicalize_name(r.name) in lock and r.specifier.contains(lock[canonicalize_name(r.name)]), dep
