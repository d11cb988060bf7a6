"""Runs every library notebook's test cells (the nbdev notebooks are the library's source)."""
from pathlib import Path
import pytest
from nbdev.test import test_nb as run_nb_tests

NBS = sorted(p for p in (Path(__file__).parents[1] / "nbs").glob("[0-9]*.ipynb"))

@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(nb.parent)
    ok, _ = run_nb_tests(nb, skip_flags=["notest", "slow"])
    assert ok, f"notebook tests failed: {nb.name}"
