"""The torch-free shared core: one softmax, one AUROC, one bootstrap interval, one estimate type and
its one text form, and the progress protocol."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from osteo_edge.core.progress import TerminalProgress, no_progress, progress_enabled
from osteo_edge.core.stats import Estimate, auroc, average_ranks, bootstrap, fmt_ci, percentile_interval, resample_indices, softmax


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    z = np.array([[2.0, 0.0, -1.0], [1000.0, 999.0, 0.0]])
    p = softmax(z)
    assert np.allclose(p.sum(axis=1), 1) and np.isfinite(p).all()  # stable for large logits
    assert softmax(z, 4.0)[0].max() < p[0].max()


def test_auroc_equals_sklearn_with_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y, s = rng.integers(0, 2, n), rng.integers(0, 5, n).astype(float)  # many ties
        if y.min() == y.max():
            assert math.isnan(auroc(y, s))
            continue
        assert auroc(y, s) == pytest.approx(sklearn.roc_auc_score(y, s), abs=1e-12)
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]


def test_group_bootstrap_resamples_whole_groups_and_rows_when_ungrouped():
    groups = [0, 0, 1, 1, 2]
    for idx in resample_indices(5, 10, seed=1, groups=groups):
        for pair in ([0, 1], [2, 3]):
            assert np.sum(np.isin(idx, pair[0])) == np.sum(np.isin(idx, pair[1]))  # copies travel together
    a = list(resample_indices(5, 3, seed=2))
    b = list(resample_indices(5, 3, seed=2, groups=range(5)))  # singleton groups == row bootstrap, same draws
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert list(resample_indices(0, 5)) == []


def test_percentile_interval_needs_twenty_valid_draws():
    lo, hi, valid = percentile_interval([0.5] * 19 + [float("nan")] * 5)
    assert math.isnan(lo) and math.isnan(hi) and valid == 19
    lo, hi, valid = percentile_interval(list(np.linspace(0, 1, 101)))
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975) and valid == 101


def test_bootstrap_gives_estimates_with_intervals():
    y = np.array([0, 1] * 30)
    est = bootstrap({"mean": float(y.mean())}, lambda idx: {"mean": float(y[idx].mean())}, len(y), 200, seed=0)
    e = est["mean"]
    assert e.low < e.value < e.high and e.n == 60 and e.valid_resamples == 200


def test_estimate_writes_ci95_and_reads_every_stored_shape():
    e = Estimate(0.8123, 0.7012, 0.9051, n=64)
    d = json.loads(json.dumps(e.to_dict()))
    assert d == {"value": 0.8123, "ci95": [0.7012, 0.9051], "n": 64}
    assert Estimate.from_dict(d) == e
    legacy = {"value": 0.8123, "ci_low": 0.7012, "ci_high": 0.9051, "n": 64, "valid_resamples": 990}
    assert Estimate.from_dict(legacy) == Estimate(0.8123, 0.7012, 0.9051, 64, 990)
    assert Estimate.from_dict({"point": 0.6, "lo": 0.5, "hi": 0.7}) == Estimate(0.6, 0.5, 0.7)
    assert Estimate.from_dict(0.5) == Estimate(0.5)
    assert Estimate.from_dict({"value": None}) is None and Estimate.from_dict({"files": 3}) is None
    assert e.to_row() == {"value": 0.8123, "ci_low": 0.7012, "ci_high": 0.9051, "n": 64}


def test_one_text_form():
    assert fmt_ci({"value": 0.8123, "ci95": [0.7012, 0.9051]}) == "0.812 [0.701, 0.905]"
    assert fmt_ci({"value": 0.8123, "ci_low": 0.7012, "ci_high": 0.9051}) == "0.812 [0.701, 0.905]"  # legacy shape
    assert fmt_ci(Estimate(0.8123, 0.7012, 0.9051)) == Estimate(0.8123, 0.7012, 0.9051).fmt() == "0.812 [0.701, 0.905]"
    assert fmt_ci({"value": 0.5, "ci95": [float("nan"), float("nan")]}) == "0.500"
    assert fmt_ci(None) == fmt_ci({}) == fmt_ci({"value": float("nan")}) == "n/a"
    assert fmt_ci(Estimate(0.6, 0.5, 0.7), style="words") == "0.600 (95% CI 0.500 to 0.700)"


def test_progress_protocol_implementations():
    no_progress("hashing", 1, 2, loss=0.5)  # the default does nothing and accepts everything
    assert not progress_enabled(io.StringIO())  # not a terminal: no bars
    with TerminalProgress("hashing", enabled=False) as p:
        p("hashing", 1, 3)
        p("epoch 1/2", 2, 3, loss=0.25)
    task = p.bar.tasks[0]
    assert task.completed == 2 and task.total == 3 and task.description == "epoch 1/2" and "loss 0.25" in task.fields["info"]
