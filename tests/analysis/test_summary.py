"""harness.analysis.summary: seed groups with hand-computed mean ± std (n), key and metric
resolution, and which mean is best (numbers: tests/analysis/sweeps.py)."""

import pytest

from harness import analysis as A
from tests.analysis.sweeps import DEFAULT, LVF, OTHER, frame, row


def test_default_by_is_what_varies_besides_seed():
    # alpha = 2r and the per-method lr are fixed by method and r: no column of their own
    assert A.default_by(frame(LVF)) == ["method", "task", "lora.r"]
    assert A.default_by(frame()) == ["method", "task", "lora.r", "lora.target_modules"]
    assert A.default_by(frame(), cols="task") == ["method", "lora.r", "lora.target_modules"]


def test_hidden_variation_names_what_a_coarse_grouping_averages():
    df = frame(LVF)
    assert A.hidden_variation(df, A.default_by(df)) == []
    hidden = A.hidden_variation(df, ["method"])
    assert {"lora.r", "lora.alpha", "config.method.r"} <= set(hidden)
    assert not any("seed" in h or "sweep_name" in h for h in hidden)


def test_summarize_groups_seeds_with_hand_computed_mean_std_n():
    df = frame(LVF)
    s = A.summarize(df, ["method", "task", "lora.r"], DEFAULT)
    assert len(s) == 3 and s["n"].tolist() == [3, 3, 3]  # the failed 4th r=8 seed is not counted
    assert s["method"].tolist() == ["full", "lora", "lora"]  # full (no rank) sorts first
    expected = {  # (r, accuracy mean, std, tokens/s mean, std, rss mean, std, trainable)
        None: (0.82, 0.02, 1100, 100, 2.133333, 0.152753, 22_713_216),
        4: (0.81, 0.026458, 1600, 100, 1.2, 0.0, 185_474),
        8: (0.83, 0.02, 1550, 100, 1.3, 0.05, 222_338),
    }
    for r, (acc, acc_sd, tps, tps_sd, rss, rss_sd, trainable) in expected.items():
        got = row(s, **{"lora.r": r})
        assert got["metrics.final.accuracy.mean"] == pytest.approx(acc, abs=1e-6)
        assert got["metrics.final.accuracy.std"] == pytest.approx(acc_sd, abs=1e-6)
        assert got["throughput.tokens_per_s.mean"] == pytest.approx(tps)
        assert got["throughput.tokens_per_s.std"] == pytest.approx(tps_sd)
        assert got["memory.peak_rss_gib.mean"] == pytest.approx(rss, abs=1e-6)
        assert got["memory.peak_rss_gib.std"] == pytest.approx(rss_sd, abs=1e-6)
        assert got["params.trainable.mean"] == trainable and got["params.trainable.std"] == 0
        assert got["metrics.final.accuracy.n"] == 3


def test_summarize_single_run_has_no_std_and_best_metrics():
    s = A.summarize(frame(OTHER), ["method"], ["metrics.final.accuracy"])
    assert s["n"].tolist() == [1, 1] and s["metrics.final.accuracy.std"].isna().all()
    best = A.summarize(frame(LVF), ["method", "lora.r"], [A.resolve_metric(frame(LVF), "accuracy", best=True, split="eval")])
    assert best["metrics.best.accuracy.mean"].tolist() == pytest.approx([0.83, 0.85, 0.84])
    assert best["metrics.best.accuracy.std"].tolist() == pytest.approx([0.01, 0.01, 0.02])


def test_summarize_test_split_final_and_best_validation_weights():
    df = frame(LVF)
    s = A.summarize(df, ["method", "lora.r"], [A.resolve_metric(df, "accuracy"), A.resolve_metric(df, "accuracy", best=True)])
    assert s["metrics.test.final.accuracy.mean"].tolist() == pytest.approx([0.81, 0.80, 0.83])
    assert s["metrics.test.final.accuracy.std"].tolist() == pytest.approx([0.02, 0.02, 0.036056], abs=1e-6)
    assert s["metrics.test.best.accuracy.mean"].tolist() == pytest.approx([0.82, 0.81, 0.83])
    assert s["metrics.test.best.accuracy.std"].tolist() == pytest.approx([0.02, 0.02, 0.02])


def test_summarize_errors():
    df = frame(LVF)
    with pytest.raises(ValueError, match=r"unknown key 'nope'; available keys: .*lora\.r"):
        A.summarize(df, ["nope"], DEFAULT)
    with pytest.raises(ValueError, match="no completed runs"):
        A.summarize(df[df["status"] != "completed"], ["method"], DEFAULT)


def test_summarize_sorts_keys_of_mixed_types():
    records = A.load_records([LVF])
    records[0] = {**records[0], "lr": "5e-5"}  # a learning rate YAML left as text, next to floats
    s = A.summarize(A.records_frame(records), ["method", "lr"], ["metrics.final.accuracy"])
    assert s["lr"].tolist() == [5e-05, "5e-5", 0.001] and s["n"].tolist() == [2, 1, 6]  # "5e-05" < "5e-5"


def test_resolve_metric():
    df = frame()
    assert A.resolve_metric(df, "main") == "metrics.test.final.accuracy"  # the test split by default
    assert A.resolve_metric(df, "main", best=True) == "metrics.test.best.accuracy"
    assert A.resolve_metric(df, "f1") == "metrics.test.final.f1"
    assert A.resolve_metric(df, "main", split="eval") == "metrics.final.accuracy"  # one main metric in the sweep
    assert A.resolve_metric(df, "main", best=True, split="eval") == "metrics.best.accuracy"
    assert A.resolve_metric(df, "f1", split="eval") == "metrics.final.f1"
    assert A.resolve_metric(df, "params.trainable") == "params.trainable"
    with pytest.raises(ValueError, match="unknown metric 'bogus'; choose from: main, accuracy, f1, loss"):
        A.resolve_metric(df, "bogus")
    with pytest.raises(ValueError, match="split='val' is invalid: choose test or eval"):
        A.resolve_metric(df, "main", split="val")


def test_test_metrics_that_no_run_has_are_an_error_saying_why():
    other = frame(OTHER)  # sst2: GLUE hides its test labels, metrics.test is null
    with pytest.raises(ValueError, match=r"no completed run has metrics.test.final.accuracy \(metrics.test is null "
                                         r"for tasks without a labelled test split.*--split eval"):
        A.resolve_metric(other, "main")
    records = A.load_records([LVF])
    for r in records:  # runs without trainer.select_best keep no best weights
        if (r.get("metrics") or {}).get("test"):
            r["metrics"]["test"]["best"] = None
    with pytest.raises(ValueError, match=r"metrics.test.best.accuracy \(.*trainer.select_best=true; drop --best"):
        A.resolve_metric(A.records_frame(records), "accuracy", best=True)


def test_main_metric_column_spans_tasks_with_different_main_metrics():
    records = A.load_records([OTHER])
    records[1] = {**records[1], "metrics": {**records[1]["metrics"], "main_metric": "f1"}}
    df = A.records_frame(records)
    assert A.resolve_metric(df, "main", split="eval") == "metrics.final.main"
    assert df["metrics.final.main"].tolist() == pytest.approx([0.90, 0.915])
    assert A.summarize(df, ["method"], ["metrics.final.main"]).attrs["labels"]["metrics.final.main"] == "main metric"


def test_higher_is_better_rule():
    assert A.higher_is_better("metrics.final.accuracy")
    assert A.higher_is_better("throughput.tokens_per_s")
    assert not A.higher_is_better("memory.peak_rss_gib")
    assert not A.higher_is_better("params.trainable")
    assert not A.higher_is_better("metrics.final.loss")
    assert not A.higher_is_better("metrics.final.accuracy", main=True, flag=False)


def test_best_respects_greater_is_better_false():
    records = [{**r, "metrics": {**r["metrics"], "greater_is_better": False}} for r in A.load_records([LVF])]
    s = A.summarize(A.records_frame(records), ["method", "lora.r"], ["metrics.final.accuracy"])
    assert A.best_mask(s, "metrics.final.accuracy").tolist() == [False, True, False]  # r=4 has the lowest
