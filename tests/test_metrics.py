"""GLUE metrics against values worked out by hand on tiny inputs."""

import math

import numpy as np
import pytest

from spikeprune.errors import SpikepruneError
from spikeprune.data._metrics import (
    accuracy,
    compute_metrics,
    f1,
    main_metric,
    matthews_corrcoef,
    pearson,
    spearman,
)

# preds vs labels: index 0 tp, 1 fn, 2 tp, 3 fp
PRED4, GOLD4 = [1, 0, 1, 1], [1, 1, 1, 0]


def test_accuracy():
    # right at indices 0 and 2: 2/4
    assert accuracy(PRED4, GOLD4) == 0.5


def test_f1():
    # tp=2, fp=1, fn=1: 2*2 / (2*2 + 1 + 1) = 4/6
    assert f1(PRED4, GOLD4) == pytest.approx(2 / 3)
    # all wrong: tp=0 -> 0; no positives anywhere: undefined -> 0
    assert f1([0, 1], [1, 0]) == 0.0
    assert f1([0, 0], [0, 0]) == 0.0


def test_mcc_binary():
    # pred [1,0,1,1,0,0] gold [1,0,0,1,0,1]: tp=2 (0,3), tn=2 (1,4), fp=1 (2), fn=1 (5)
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 - 1) / sqrt(3*3*3*3) = 3/9
    assert matthews_corrcoef([1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 0, 1]) == pytest.approx(1 / 3)
    assert matthews_corrcoef([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([0, 1, 0], [1, 0, 1]) == pytest.approx(-1.0)
    # one predicted class: denominator 0, defined as 0 (as sklearn)
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0


def test_mcc_multiclass():
    # gold [0,1,2,0] pred [0,2,2,0]: n=4, correct=3, true counts t=[2,1,1], predicted p=[2,0,2]
    # cov(y,p) = 3*4 - t.p = 12 - 6 = 6; cov(p,p) = 16 - p.p = 8; cov(y,y) = 16 - t.t = 10
    # mcc = 6 / sqrt(8 * 10)
    assert matthews_corrcoef([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / math.sqrt(80))


def test_pearson():
    # x=[1,2,3] y=[1,2,5]: dx=[-1,0,1], dy=[-5/3,-2/3,7/3]
    # sum dx*dy = 5/3 + 7/3 = 4; sum dx^2 = 2; sum dy^2 = 78/9 = 26/3; r = 4 / sqrt(2 * 26/3)
    assert pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / math.sqrt(52 / 3))
    assert pearson([1, 2, 3], [2, 2, 2]) == 0.0  # constant side: undefined -> 0


def test_spearman_with_ties():
    # ranks x=[1,2,3,4]; y=[10,20,20,5] -> [2,3.5,3.5,1] (tied 20s share rank 3.5)
    # dx=[-1.5,-.5,.5,1.5], dy=[-.5,1,1,-1.5]: sum dx*dy = .75-.5+.5-2.25 = -1.5
    # sum dx^2 = 5, sum dy^2 = 4.5: r = -1.5 / sqrt(22.5) = -1/sqrt(10)
    assert spearman([1, 2, 3, 4], [10, 20, 20, 5]) == pytest.approx(-1 / math.sqrt(10))


def test_agrees_with_scipy_and_sklearn_on_random_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200) + np.linspace(0, 3, 200)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    xt, yt = x.round(1), y.round(1)  # rounding makes ties
    assert spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0])
    skm = pytest.importorskip("sklearn.metrics")
    p, g = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert matthews_corrcoef(p, g) == pytest.approx(skm.matthews_corrcoef(g, p))
    assert f1(p % 2, g % 2) == pytest.approx(skm.f1_score(g % 2, p % 2))


def test_compute_metrics_per_task():
    assert compute_metrics("mrpc", PRED4, GOLD4) == pytest.approx({"f1": 2 / 3, "accuracy": 0.5})
    assert compute_metrics("rte", PRED4, GOLD4) == {"accuracy": 0.5}
    assert set(compute_metrics("cola", PRED4, GOLD4)) == {"mcc"}
    out = compute_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert out == pytest.approx({"pearson": 4 / math.sqrt(52 / 3), "spearman": 1.0})
    assert all(type(v) is float for v in out.values())


def test_main_metric():
    expected = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
                "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert {t: main_metric(t) for t in expected} == expected
    for task, key in expected.items():
        assert key in compute_metrics(task, [0, 1], [1, 1])


def test_bad_inputs():
    with pytest.raises(SpikepruneError, match="equal-length"):
        compute_metrics("sst2", [0, 1], [0, 1, 1])
    with pytest.raises(SpikepruneError, match="equal-length"):
        compute_metrics("sst2", [], [])
    with pytest.raises(SpikepruneError, match="class ids"):
        compute_metrics("sst2", [0.2, 0.9], [0, 1])
    with pytest.raises(SpikepruneError, match="unknown GLUE task 'glue'"):
        main_metric("glue")
