"""The metric registry (harness.metrics) and every local evaluate metric module against values worked out by
hand (and sklearn/scipy as a check)."""

import math

import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from harness.metrics import available_metrics, load_metric


def score(name, predictions, references, **kwargs):
    return load_metric(name).compute(predictions=predictions, references=references, **kwargs)


def test_the_glue_metrics_are_available():
    assert available_metrics() == ["accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr"]


def test_accuracy():
    # 3 of 5 equal
    assert score("accuracy", [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == {"accuracy": 0.6}
    with pytest.raises(ValueError):
        score("accuracy", [], [])


def test_accuracy_streams_batches_like_any_evaluate_metric():
    metric = load_metric("accuracy")
    metric.add_batch(predictions=[0, 1], references=[0, 0])
    metric.add_batch(predictions=[2, 2], references=[2, 2])
    assert metric.compute() == {"accuracy": 0.75}


def test_f1_binary():
    # positives predicted at 1, 2, 4; true positive only 1: tp=1, fp=2, fn=0 -> 2/(2+2+0)
    assert score("f1", [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == {"f1": 0.5}
    # pos_label=0: tp=2 (0, 3), fp=0, fn=2 (2, 4) -> 4/(4+0+2)
    assert score("f1", [0, 1, 1, 0, 1], [0, 1, 0, 0, 0], pos_label=0)["f1"] == pytest.approx(2 / 3)
    # never predicted and never present: 0, not NaN
    assert score("f1", [0, 0], [0, 0]) == {"f1": 0.0}


def test_f1_macro_and_micro():
    preds, refs = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    # class 0: tp1 fp1 fn1 -> 1/2; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp2 fp1 fn0 -> 4/5
    macro = (1 / 2 + 2 / 3 + 4 / 5) / 3
    assert score("f1", preds, refs, average="macro")["f1"] == pytest.approx(macro)
    assert macro == pytest.approx(0.6555556)
    assert score("f1", preds, refs, average="micro")["f1"] == pytest.approx(4 / 6)  # = accuracy
    assert macro == pytest.approx(f1_score(refs, preds, average="macro"))
    with pytest.raises(ValueError, match="average='weighted'"):
        score("f1", preds, refs, average="weighted")


def test_matthews_correlation():
    preds, refs = [1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1, 0]
    # tp=3 tn=3 fp=1 fn=1: (3*3 - 1*1) / sqrt(4*4*4*4) = 8/16
    assert score("matthews_correlation", preds, refs) == {"matthews_correlation": 0.5}
    assert score("matthews_correlation", [1, 1, 1, 1], [0, 1, 0, 1]) == {"matthews_correlation": 0.0}
    multi_p, multi_r = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    # c=4 correct, s=6, p=(2,1,3), t=(2,2,2): (24 - 12) / sqrt((36-14)(36-12)) = 12/sqrt(528)
    expected = 12 / math.sqrt(528)
    assert score("matthews_correlation", multi_p, multi_r)["matthews_correlation"] == pytest.approx(expected)
    assert expected == pytest.approx(matthews_corrcoef(multi_r, multi_p))


def test_pearsonr():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # deviations (-1.5, -.5, .5, 1.5) and (-1.75, .25, 1.25, .25): sum xy 3.5, sum xx 5, sum yy 4.75
    expected = 3.5 / math.sqrt(5 * 4.75)
    assert score("pearsonr", x, y)["pearsonr"] == pytest.approx(expected)
    assert expected == pytest.approx(0.7181848) and expected == pytest.approx(pearsonr(x, y)[0])
    assert math.isnan(score("pearsonr", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearsonr"])


def test_spearmanr():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # ranks (1, 2, 3, 4) and (1, 2.5, 4, 2.5): deviations of y (-1.5, 0, 1.5, 0) -> 3 / sqrt(5 * 4.5)
    expected = 3 / math.sqrt(22.5)
    assert score("spearmanr", x, y)["spearmanr"] == pytest.approx(expected)
    assert expected == pytest.approx(0.6324555) and expected == pytest.approx(spearmanr(x, y)[0])
    # monotone but not linear: rank correlation 1, Pearson below 1
    assert score("spearmanr", [1.0, 2.0, 3.0], [1.0, 10.0, 100.0])["spearmanr"] == pytest.approx(1.0)


def test_load_metric_caches_and_rejects_unknown_names():
    assert load_metric("f1") is load_metric("f1")
    with pytest.raises(ValueError, match=r"unknown metric 'glue'; available: \['accuracy', 'f1'"):
        load_metric("glue")
