"""Bootstrap of ecg_study.metrics checked against explicit row resampling scored by scikit-learn."""
import numpy as np
import pytest
from functools import partial
from sklearn.metrics import roc_auc_score, roc_curve, auc
from ecg_study.metrics import bootstrap_ci, paired_bootstrap, macro_auroc


exact = partial(np.allclose, rtol=1e-12, atol=0)   # interpolation details move the curve value by ~1e-5


def sklearn_macro(y, s):
    "Mean and curve AUROC by scikit-learn over labels with both classes (NaN = masked)."
    aucs, curves = [], []
    for k in range(y.shape[1]):
        m = ~np.isnan(y[:, k])
        if len(np.unique(y[m, k])) < 2: continue
        aucs.append(roc_auc_score(y[m, k], s[m, k]))
        curves.append(roc_curve(y[m, k], s[m, k])[:2])
    grid = np.unique(np.concatenate([f for f, _ in curves]))
    return np.mean(aucs), auc(grid, np.mean([np.interp(grid, f, t) for f, t in curves], axis=0))


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 5)) < 0.3).astype(float)
    y[:, 4] = 0; y[:4, 4] = 1                      # rare label: single-class in some resamples
    y[rng.random(300) < 0.3, 3] = np.nan           # masked lab-style label
    s = np.round(rng.random(y.shape) + 0.4 * np.nan_to_num(y), 2)   # 2 decimals: many ties
    return y, s


@pytest.mark.parametrize("metric,col", [("mean_auroc", 0), ("curve_auroc", 1)])
def test_bootstrap_equals_explicit_resampling(data, metric, col):
    y, s = data
    n_boot, seed = 60, 7
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))   # the rows bootstrap_ci draws
    ref = np.array([sklearn_macro(y[i], s[i])[col] for i in idx])
    point, low, high = bootstrap_ci(y, s, metric=metric, n_boot=n_boot, seed=seed)
    assert exact(point, sklearn_macro(y, s)[col])
    assert exact([low, high], np.quantile(ref, [0.025, 0.975]))


def test_paired_bootstrap_shares_resamples(data):
    y, s = data
    s2 = np.round(s + np.random.default_rng(0).normal(0, 0.3, s.shape), 2)
    idx = np.random.default_rng(1).integers(0, len(y), (80, len(y)))
    d = np.array([sklearn_macro(y[i], s[i])[0] - sklearn_macro(y[i], s2[i])[0] for i in idx])
    r = paired_bootstrap(y, s, s2, n_boot=80, seed=1)
    assert exact(r["diff"], macro_auroc(y, s)["mean_auroc"] - macro_auroc(y, s2)["mean_auroc"])
    assert exact([r["low"], r["high"]], np.quantile(d, [0.025, 0.975]))
    assert np.isclose(r["p_value"], min(1, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def test_bad_inputs_are_refused(data):
    y, s = data
    with pytest.raises(ValueError, match="metric"): bootstrap_ci(y, s, metric="auprc")
    with pytest.raises(ValueError, match="shape"): macro_auroc(y, s[:, :3])
    with pytest.raises(ValueError, match="NaN"): macro_auroc(y, np.where(y == 1, np.nan, s))
    with pytest.raises(ValueError, match="0, 1"): macro_auroc(y * 2, s)
    with pytest.raises(ValueError, match="every resample"): bootstrap_ci(np.ones((10, 2)), np.ones((10, 2)), n_boot=5)
