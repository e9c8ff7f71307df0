"""harness.table on hand-made sweeps (tests/fixtures/sweep_*), numbers worked out by hand.

sweep_lora_vs_full (rotten_tomatoes), final accuracy / tokens/s / peak RSS GiB per seed:
  full         .80 .82 .84 -> .82 ± .02      1000 1100 1200 -> 1100 ± 100   2.0 2.1 2.3 -> 2.1333 ± .152753
  lora r=4 qv  .79 .80 .84 -> .81 ± .026458  1500 1600 1700 -> 1600 ± 100   1.2 1.2 1.2 -> 1.2 ± 0
  lora r=8 qv  .81 .83 .85 -> .83 ± .02      1450 1550 1650 -> 1550 ± 100   1.25 1.3 1.35 -> 1.3 ± .05
  lora r=8 qv seed 3: failed (never averaged)
  (std of .79 .80 .84: deviations -.02 -.01 .03, squares sum .0014, / (3-1) = .0007, sqrt = .026458)
  best accuracy: full .82 .83 .84 -> .83 ± .01; r=4 .84 .85 .86 -> .85 ± .01; r=8 .82 .84 .86 -> .84 ± .02
  trainable params: full 22,713,216; r=4: 6 layers * 2 modules * 4 * (384 + 384) + head 148,610 = 185,474;
  r=8: 73,728 + 148,610 = 222,338
  test split (metrics.test), final weights: full .79 .81 .83 -> .81 ± .02; r=4 .78 .80 .82 -> .80 ± .02;
  r=8 .80 .82 .87 -> .83 ± .036056 (deviations -.03 -.01 .04, squares .0026, / 2 = .0013, sqrt .036056);
  best-validation weights: full .80 .82 .84 -> .82 ± .02; r=4 .79 .81 .83 -> .81 ± .02; r=8 .81 .83 .85 -> .83 ± .02
sweep_other_task (sst2, one seed): full .90, lora r=8 qv .91; no test split (metrics.test null)
sweep_targets (rotten_tomatoes, lora r=4 query,key,value,dense): .815 .825 -> .82 ± .0070711; seed 2 preempted;
  records from before test scoring (no metrics.test)
"""

import io
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness import table as T

FIXTURES = Path(__file__).parent / "fixtures"
LVF = FIXTURES / "sweep_lora_vs_full"
OTHER = FIXTURES / "sweep_other_task"
TARGETS = FIXTURES / "sweep_targets"
DEFAULT = ["metrics.final.accuracy", "params.trainable", "throughput.tokens_per_s", "memory.peak_rss_gib"]


def frame(*paths):
    return T.records_frame(T.load_records(paths or [FIXTURES]))


def row(summary, **keys):
    mask = pd.Series(True, index=summary.index)
    for k, v in keys.items():
        mask &= summary[k].isna() if v is None else summary[k] == v
    assert mask.sum() == 1, (keys, summary[list(keys)])
    return summary[mask].iloc[0]


# ----------------------------------------------------------------------------- loading


def test_load_records_recursive_and_flattened():
    records = T.load_records([FIXTURES])
    assert len(records) == 10 + 2 + 3
    df = T.records_frame(records)
    for column in ("lora.r", "lora.target_modules", "metrics.final.accuracy", "metrics.best.accuracy",
                   "params.trainable", "config.method.lr", "throughput.tokens_per_s", "memory.peak_rss_gib"):
        assert column in df, column
    assert "lora" not in df and "metrics.final" not in df  # null parents of lora.r / failed metrics dropped
    full = df[df["method"] == "full"]
    assert full["lora.r"].isna().all()
    assert set(df.loc[df["method"] == "lora", "lora.target_modules"]) == {"query,value", "query,key,value,dense"}
    assert df["config.method.lr"].dropna().tolist().count(5e-5) == len(full)
    assert (df["metrics.final.main"].dropna() == df["metrics.final.accuracy"].dropna()).all()


def test_load_records_file_and_unreadable(tmp_path):
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    one = LVF / "0_full-seed0" / "results.json"
    records = T.load_records([one, tmp_path])
    assert [r["status"] for r in records] == ["completed", "unreadable"]
    assert records[0]["path"] == str(one.parent)
    failed = T.failed_runs(T.records_frame(records))
    assert failed["path"].tolist() == [str(bad.parent)] and failed["error"][0].startswith("JSONDecodeError")


def test_load_records_errors(tmp_path):
    with pytest.raises(ValueError, match="no results.json found under"):
        T.load_records([tmp_path])
    with pytest.raises(ValueError, match="no such file or folder"):
        T.load_records([tmp_path / "missing"])


def test_default_by_is_what_varies_besides_seed():
    # alpha = 2r and the per-method lr are fixed by method and r: no column of their own
    assert T.default_by(frame(LVF)) == ["method", "task", "lora.r"]
    assert T.default_by(frame()) == ["method", "task", "lora.r", "lora.target_modules"]
    assert T.default_by(frame(), cols="task") == ["method", "lora.r", "lora.target_modules"]


def test_hidden_variation_names_what_a_coarse_grouping_averages():
    df = frame(LVF)
    assert T.hidden_variation(df, T.default_by(df)) == []
    hidden = T.hidden_variation(df, ["method"])
    assert {"lora.r", "lora.alpha", "config.method.r"} <= set(hidden)
    assert not any("seed" in h or "sweep_name" in h for h in hidden)


# ----------------------------------------------------------------------------- statistics


def test_summarize_groups_seeds_with_hand_computed_mean_std_n():
    df = frame(LVF)
    s = T.summarize(df, ["method", "task", "lora.r"], DEFAULT)
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
    s = T.summarize(frame(OTHER), ["method"], ["metrics.final.accuracy"])
    assert s["n"].tolist() == [1, 1] and s["metrics.final.accuracy.std"].isna().all()
    best = T.summarize(frame(LVF), ["method", "lora.r"], [T.resolve_metric(frame(LVF), "accuracy", best=True, split="eval")])
    assert best["metrics.best.accuracy.mean"].tolist() == pytest.approx([0.83, 0.85, 0.84])
    assert best["metrics.best.accuracy.std"].tolist() == pytest.approx([0.01, 0.01, 0.02])


def test_summarize_test_split_final_and_best_validation_weights():
    df = frame(LVF)
    s = T.summarize(df, ["method", "lora.r"], [T.resolve_metric(df, "accuracy"), T.resolve_metric(df, "accuracy", best=True)])
    assert s["metrics.test.final.accuracy.mean"].tolist() == pytest.approx([0.81, 0.80, 0.83])
    assert s["metrics.test.final.accuracy.std"].tolist() == pytest.approx([0.02, 0.02, 0.036056], abs=1e-6)
    assert s["metrics.test.best.accuracy.mean"].tolist() == pytest.approx([0.82, 0.81, 0.83])
    assert s["metrics.test.best.accuracy.std"].tolist() == pytest.approx([0.02, 0.02, 0.02])


def test_summarize_errors():
    df = frame(LVF)
    with pytest.raises(ValueError, match=r"unknown key 'nope'; available keys: .*lora\.r"):
        T.summarize(df, ["nope"], DEFAULT)
    with pytest.raises(ValueError, match="no completed runs"):
        T.summarize(df[df["status"] != "completed"], ["method"], DEFAULT)


def test_summarize_sorts_keys_of_mixed_types():
    records = T.load_records([LVF])
    records[0] = {**records[0], "lr": "5e-5"}  # a learning rate YAML left as text, next to floats
    s = T.summarize(T.records_frame(records), ["method", "lr"], ["metrics.final.accuracy"])
    assert s["lr"].tolist() == [5e-05, "5e-5", 0.001] and s["n"].tolist() == [2, 1, 6]  # "5e-05" < "5e-5"


def test_resolve_metric():
    df = frame()
    assert T.resolve_metric(df, "main") == "metrics.test.final.accuracy"  # the test split by default
    assert T.resolve_metric(df, "main", best=True) == "metrics.test.best.accuracy"
    assert T.resolve_metric(df, "f1") == "metrics.test.final.f1"
    assert T.resolve_metric(df, "main", split="eval") == "metrics.final.accuracy"  # one main metric in the sweep
    assert T.resolve_metric(df, "main", best=True, split="eval") == "metrics.best.accuracy"
    assert T.resolve_metric(df, "f1", split="eval") == "metrics.final.f1"
    assert T.resolve_metric(df, "params.trainable") == "params.trainable"
    with pytest.raises(ValueError, match="unknown metric 'bogus'; choose from: main, accuracy, f1, loss"):
        T.resolve_metric(df, "bogus")
    with pytest.raises(ValueError, match="split='val' is invalid: choose test or eval"):
        T.resolve_metric(df, "main", split="val")


def test_test_metrics_that_no_run_has_are_an_error_saying_why():
    other = frame(OTHER)  # sst2: GLUE hides its test labels, metrics.test is null
    with pytest.raises(ValueError, match=r"no completed run has metrics.test.final.accuracy \(metrics.test is null "
                                         r"for tasks without a labelled test split.*--split eval"):
        T.resolve_metric(other, "main")
    records = T.load_records([LVF])
    for r in records:  # runs without trainer.select_best keep no best weights
        if (r.get("metrics") or {}).get("test"):
            r["metrics"]["test"]["best"] = None
    with pytest.raises(ValueError, match=r"metrics.test.best.accuracy \(.*trainer.select_best=true; drop --best"):
        T.resolve_metric(T.records_frame(records), "accuracy", best=True)


def test_main_metric_column_spans_tasks_with_different_main_metrics():
    records = T.load_records([OTHER])
    records[1] = {**records[1], "metrics": {**records[1]["metrics"], "main_metric": "f1"}}
    df = T.records_frame(records)
    assert T.resolve_metric(df, "main", split="eval") == "metrics.final.main"
    assert df["metrics.final.main"].tolist() == pytest.approx([0.90, 0.915])
    assert T.summarize(df, ["method"], ["metrics.final.main"]).attrs["labels"]["metrics.final.main"] == "main metric"


def test_higher_is_better_rule():
    assert T.higher_is_better("metrics.final.accuracy")
    assert T.higher_is_better("throughput.tokens_per_s")
    assert not T.higher_is_better("memory.peak_rss_gib")
    assert not T.higher_is_better("params.trainable")
    assert not T.higher_is_better("metrics.final.loss")
    assert not T.higher_is_better("metrics.final.accuracy", main=True, flag=False)


def test_best_respects_greater_is_better_false():
    records = [{**r, "metrics": {**r["metrics"], "greater_is_better": False}} for r in T.load_records([LVF])]
    s = T.summarize(T.records_frame(records), ["method", "lora.r"], ["metrics.final.accuracy"])
    assert T.best_mask(s, "metrics.final.accuracy").tolist() == [False, True, False]  # r=4 has the lowest


# ----------------------------------------------------------------------------- rendering


def lvf_summary():
    df = frame(LVF)
    return T.summarize(df, T.default_by(df), DEFAULT)


MARKDOWN = """\
Mean ± sample std over seeds; best per column in bold. Task metrics: validation split, final evaluation. Metrics: accuracy, trainable params, tokens/s, peak RSS (GiB).

| method | task            | lora.r | n   | accuracy            | trainable params | tokens/s        | peak RSS (GiB) |
| :----- | :-------------- | :----- | --: | ------------------: | ---------------: | --------------: | -------------: |
| full   | rotten_tomatoes | —      | 3   | 0.8200 ± 0.0200     | 22,713,216       | 1,100 ± 100     | 2.133 ± 0.153  |
| lora   | rotten_tomatoes | 4      | 3   | 0.8100 ± 0.0265     | **185,474**      | **1,600 ± 100** | **1.200**      |
| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0200** | 222,338          | 1,550 ± 100     | 1.300 ± 0.050  |
"""


# What harness-table prints by default: the test split (hand-computed in the module docstring).
MARKDOWN_TEST = """\
Mean ± sample std over seeds; best per column in bold. Task metrics: test split, final weights. Metrics: accuracy, trainable params, tokens/s, peak RSS (GiB).

| method | task            | lora.r | n   | accuracy            | trainable params | tokens/s        | peak RSS (GiB) |
| :----- | :-------------- | :----- | --: | ------------------: | ---------------: | --------------: | -------------: |
| full   | rotten_tomatoes | —      | 3   | 0.8100 ± 0.0200     | 22,713,216       | 1,100 ± 100     | 2.133 ± 0.153  |
| lora   | rotten_tomatoes | 4      | 3   | 0.8000 ± 0.0200     | **185,474**      | **1,600 ± 100** | **1.200**      |
| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0361** | 222,338          | 1,550 ± 100     | 1.300 ± 0.050  |
"""


def test_caption_says_which_split_and_weights():
    df = frame(LVF)
    for name, best, split, text in [
            ("main", False, "test", "Task metrics: test split, final weights."),
            ("main", True, "test", "Task metrics: test split, weights of the best validation evaluation."),
            ("main", False, "eval", "Task metrics: validation split, final evaluation."),
            ("main", True, "eval", "Task metrics: validation split, best evaluation.")]:
        s = T.summarize(df, ["method"], [T.resolve_metric(df, name, best, split)])
        assert text in T.caption(s)
    assert "Task metrics" not in T.caption(T.summarize(df, ["method"], ["params.trainable"]))


def test_markdown_text_and_github_table_syntax():
    text = T.render(lvf_summary(), "md")
    assert text == MARKDOWN
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1
    assert all(re.fullmatch(r":?-+:?", cell.strip()) for cell in table[1].strip("|").split("|"))


def test_latex_booktabs_rows_and_bold_best():
    text = T.render(lvf_summary(), "latex")
    lines = text.splitlines()
    assert lines[1] == r"\begin{tabular}{lllrrrrr}" and lines[-1] == r"\end{tabular}"
    top, mid, bottom = lines.index(r"\toprule"), lines.index(r"\midrule"), lines.index(r"\bottomrule")
    assert top < mid < bottom
    assert lines[mid - 1] == r"method & task & lora.r & n & accuracy & trainable params & tokens/s & peak RSS (GiB) \\"
    rows = lines[mid + 1:bottom]
    assert rows == [
        r"full & rotten\_tomatoes & --- & 3 & 0.8200 $\pm$ 0.0200 & 22,713,216 & 1,100 $\pm$ 100 & 2.133 $\pm$ 0.153 \\",
        r"lora & rotten\_tomatoes & 4 & 3 & 0.8100 $\pm$ 0.0265 & \textbf{185,474} & \textbf{1,600 $\pm$ 100} & \textbf{1.200} \\",
        r"lora & rotten\_tomatoes & 8 & 3 & \textbf{0.8300 $\pm$ 0.0200} & 222,338 & 1,550 $\pm$ 100 & 1.300 $\pm$ 0.050 \\",
    ]
    for line in lines[mid - 1:bottom]:  # special characters escaped, and pdflatex-safe
        assert not re.search(r"[_%#]", line.replace(r"\_", "")) and "±" not in line and "—" not in line


def test_csv_has_separate_mean_std_n_columns():
    text = T.render(lvf_summary(), "csv")
    csv = pd.read_csv(io.StringIO(text))
    assert csv.columns.tolist() == ["method", "task", "lora.r", "n"] + [f"{m}.{s}" for m in DEFAULT for s in ("mean", "std", "n")]
    assert csv["lora.r"].isna().tolist() == [True, False, False] and csv["lora.r"].dropna().tolist() == [4, 8]
    assert csv["metrics.final.accuracy.std"].tolist() == pytest.approx([0.02, 0.026458, 0.02], abs=1e-6)
    assert ",4,3," in text  # ranks print as integers, not 4.0


def test_pivot_methods_by_tasks():
    df = frame(LVF, OTHER)
    s = T.summarize(df, ["method", "lora.r"], ["metrics.final.accuracy"], cols="task")
    lines = T.render(s, "md").splitlines()
    assert lines[0].startswith("Rows: method, lora.r; columns: task.") and "n = 3 per cell unless marked" in lines[0]
    assert lines[2:] == [
        "| method | lora.r | rotten_tomatoes     | sst2                 |",
        "| :----- | :----- | ------------------: | -------------------: |",
        "| full   | —      | 0.8200 ± 0.0200     | 0.9000 ± — (n=1)     |",
        "| lora   | 4      | 0.8100 ± 0.0265     | —                    |",
        "| lora   | 8      | **0.8300 ± 0.0200** | **0.9100 ± — (n=1)** |",
    ]


def test_pivot_rank_by_target_modules_and_two_level_latex_header():
    df = T.select(frame(), ["method=lora", "task=rotten_tomatoes"])
    s = T.summarize(df, ["lora.target_modules"], ["metrics.final.accuracy"], cols="lora.r")
    assert T.render(s, "md").splitlines()[2:] == [
        "| lora.target_modules   | r=4                       | r=8             |",
        "| :-------------------- | ------------------------: | --------------: |",
        "| query,key,value,dense | **0.8200 ± 0.0071 (n=2)** | —               |",
        "| query,value           | 0.8100 ± 0.0265           | 0.8300 ± 0.0200 |",
    ]
    s2 = T.summarize(df, ["lora.target_modules"], ["metrics.final.accuracy", "params.trainable"], cols="lora.r")
    latex = T.render(s2, "latex").splitlines()
    assert latex[3] == r" & \multicolumn{2}{c}{accuracy} & \multicolumn{2}{c}{trainable params} \\"
    assert latex[4] == r"\cmidrule(lr){2-3}\cmidrule(lr){4-5}"
    assert latex[5] == r"lora.target\_modules & r=4 & r=8 & r=4 & r=8 \\"


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'xls'; choose from: md, latex, csv, html"):
        T.render(lvf_summary(), "xls")


def test_failed_runs_listed_never_averaged():
    df = frame()
    failed = T.failed_runs(df)
    assert [Path(p).name for p in failed["path"]] == ["9_lora-r8-qv-seed3", "2_lora-r4-qkvd-seed2"]
    assert failed["status"].tolist() == ["failed", "preempted"]
    md = T.render_failed(failed, "md")
    assert "Not averaged: 2 run(s)" in md
    assert "9_lora-r8-qv-seed3`: failed: FloatingPointError: loss is nan at step 12" in md
    assert "2_lora-r4-qkvd-seed2`: preempted\n" in md
    assert all(line.startswith("%") for line in T.render_failed(failed, "latex").splitlines())
    assert T.render_failed(failed.iloc[:0], "md") == ""


# ----------------------------------------------------------------------------- W&B


class FakeSummary:
    """Quacks like wandb's HTTPSummary: nested sub-dicts reached through items()."""

    def __init__(self, data):
        self._data = data

    def items(self):
        return [(k, FakeSummary(v) if isinstance(v, dict) else v) for k, v in self._data.items()]


def fake_run(record, state="finished", run_id="abc"):
    summary = {k: v for k, v in record.items() if k != "config"}
    summary.update({"_step": 30, "_runtime": 61.2, "_wandb": {"runtime": 61}})
    return SimpleNamespace(summary=FakeSummary(summary), config={**record["config"], "_wandb": {}}, state=state,
                           path=["ent", "proj", run_id], name=record.get("run_name"), id=run_id)


def test_run_record_matches_local_results():
    local = T.load_records([LVF / "3_lora-r4-qv-seed0"])[0]
    record = T.run_record(fake_run(local))
    assert record["path"] == "wandb:ent/proj/abc" and "_step" not in record and "_wandb" not in record["config"]
    assert record["lora"]["target_modules"] == ["query", "value"]
    a = T.records_frame([local]).drop(columns="path").iloc[0]
    b = T.records_frame([record]).drop(columns="path").iloc[0]
    assert a.index.tolist() == b.index.tolist() and a.fillna("").tolist() == b.fillna("").tolist()


def test_run_record_status_from_state_when_summary_has_none():
    local = {k: v for k, v in T.load_records([LVF / "0_full-seed0"])[0].items() if k != "status"}
    assert T.run_record(fake_run(local, state="finished"))["status"] == "completed"
    assert T.run_record(fake_run(local, state="crashed"))["status"] == "crashed"


class FakeApi:
    calls = []
    runs_to_return = []

    def runs(self, path, filters=None):
        FakeApi.calls.append((path, filters))
        return FakeApi.runs_to_return


def test_cli_reads_wandb_group(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=FakeApi))
    FakeApi.calls.clear()
    FakeApi.runs_to_return = [fake_run(r, run_id=str(i)) for i, r in enumerate(T.load_records([LVF]))]
    assert T.main(["--wandb", "ent/proj", "--group", "lora_vs_full"]) == 0
    assert FakeApi.calls == [("ent/proj", {"group": "lora_vs_full"})]
    out = capsys.readouterr().out
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0361** |" in out  # test split
    assert "`wandb:ent/proj/9`: failed: FloatingPointError" in out
    FakeApi.runs_to_return = []
    assert T.main(["--wandb", "ent/proj", "--group", "nothing"]) == 2
    assert "no W&B runs in 'ent/proj' with group 'nothing'" in capsys.readouterr().err
    assert T.main(["--wandb", "just-a-project"]) == 2
    assert "--wandb wants ENTITY/PROJECT, got 'just-a-project'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- command line


def test_cli_markdown_with_failed_listing_under_the_table(capsys):
    assert T.main([str(LVF)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(MARKDOWN_TEST)
    assert T.main([str(LVF), "--split", "eval"]) == 0
    assert capsys.readouterr().out.startswith(MARKDOWN)
    assert captured.out.index("Not averaged: 1 run(s)") > captured.out.index("| lora   | rotten_tomatoes | 8")
    assert captured.err == ""


def test_cli_csv_keeps_listing_and_notes_on_stderr(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert T.main([str(LVF), "--format", "csv", "--by", "method", "--metric", "accuracy", "--out", str(out)]) == 0
    csv = pd.read_csv(out)
    assert csv.columns.tolist() == ["method", "n", "metrics.test.final.accuracy.mean", "metrics.test.final.accuracy.std",
                                    "metrics.test.final.accuracy.n"]
    assert csv["n"].tolist() == [3, 6]  # --by method averages both ranks, and says so:
    err = capsys.readouterr().err
    assert "note: runs averaged together differ in lora.r" in err and "9_lora-r8-qv-seed3" in err


def test_cli_pivot_best_and_where(capsys):
    assert T.main([str(FIXTURES), "--by", "lora.target_modules", "--cols", "lora.r", "--metric", "accuracy",
                   "--best", "--where", "method=lora", "task=rotten_tomatoes", "--format", "latex", "--split", "eval"]) == 0
    out = capsys.readouterr().out
    assert r"query,value & \textbf{0.8500 $\pm$ 0.0100} & 0.8400 $\pm$ 0.0200 \\" in out
    assert "% Not averaged: 2 run(s)" in out
    assert T.main([str(FIXTURES), "--by", "lora.target_modules", "--cols", "lora.r", "--metric", "accuracy",
                   "--best", "--where", "method=lora", "task=rotten_tomatoes", "--format", "latex"]) == 0
    out = capsys.readouterr().out  # test split, best-validation weights; sweep_targets predates test scoring
    assert r"query,key,value,dense & --- & --- \\" in out
    assert r"query,value & 0.8100 $\pm$ 0.0200 & 0.8300 $\pm$ 0.0200 \\" in out  # one value per column: no bold


def test_cli_keys_accept_the_override_spelling(capsys):
    """`method.lr` as typed on the harness-train command line finds the record's config.method.lr."""
    assert T.main([str(LVF), "--by", "method.lr", "--metric", "accuracy", "--where", "method.name=full"]) == 0
    out = capsys.readouterr().out
    assert "| config.method.lr |" in out and "0.8100 ± 0.0200" in out  # full FT, test split


@pytest.mark.parametrize("argv, message", [
    (["--by", "nope"], "unknown key 'nope'; available keys: status, error, method"),
    (["--cols", "lora.rank"], "unknown key 'lora.rank'"),
    (["--metric", "bogus"], "unknown metric 'bogus'; choose from: main, accuracy"),
    (["--where", "method"], "--where wants KEY=VALUE, got 'method'"),
    (["--where", "method=adapter"], "no completed runs among 0 results"),
    (["--by", "method", "--cols", "method"], "a key may appear once"),
    (["--split", "eval", "--metric", "bogus"], "unknown metric 'bogus'"),
])
def test_cli_bad_input_exits_2_with_clear_message(argv, message, capsys):
    assert T.main([str(LVF), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness-table: error: ") and message in err


def test_cli_no_results_exits_2(tmp_path, capsys):
    assert T.main([str(tmp_path)]) == 2
    assert f"no results.json found under: {tmp_path}" in capsys.readouterr().err
    assert T.main([]) == 2
    assert "give sweep folders (PATH ...) or --wandb ENTITY/PROJECT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.main([str(LVF), "--format", "xls"])
    assert e.value.code == 2


def test_cli_all_runs_failed_exits_2(tmp_path, capsys):
    shutil.copytree(LVF / "9_lora-r8-qv-seed3", tmp_path / "run")
    assert T.main([str(tmp_path)]) == 2
    assert "no completed runs among 1 results" in capsys.readouterr().err


def test_module_runs_as_script(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "harness.table", str(OTHER), "--format", "csv", "--split", "eval"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("method,task,n,metrics.final.accuracy.mean")
    assert len(done.stdout.splitlines()) == 3  # header + full + lora: nothing else on stdout


# ----------------------------------------------------------------------------- re-runs


def rewrite(path, **changes):
    record = json.loads(path.read_text())
    for dotted, value in changes.items():
        node, *keys, leaf = [record, *dotted.split("__")]
        for k in keys:
            node = node[k]
        node[leaf] = value
    path.write_text(json.dumps(record))


def test_reruns_of_one_config_and_seed_count_once_newest_completed_kept(tmp_path, capsys):
    """The sweep run again into a second folder: still 3 seeds per row, not 6. The re-run of r=8 seed 0
    is newer and scored .91, so its row is (.91 + .83 + .85) / 3 = .863333 (std: deviations .046667
    -.033333 -.013333, squares sum .0034667, / 2, sqrt = .041633);
    the re-run of full seed 0 was preempted, so the older completed one stays and no failure is listed."""
    first, again = tmp_path / "first", tmp_path / "again"
    shutil.copytree(LVF, first)
    shutil.copytree(LVF, again)
    for folder, when in ((first, "2026-11-01T10:00:00+00:00"), (again, "2026-11-02T10:00:00+00:00")):
        for path in folder.glob("*/results.json"):
            rewrite(path, finished_at=when, sweep__dir=str(folder))
    rewrite(again / "6_lora-r8-qv-seed0/results.json", metrics__final__accuracy=0.91)
    rewrite(again / "0_full-seed0/results.json", status="preempted", metrics=None)
    # what an attempt set aside inside a run folder holds is never read
    shutil.copytree(again / "1_full-seed1", again / "1_full-seed1" / "attempts" / "1")

    args = T.parser().parse_args([str(first), str(again), "--split", "eval"])  # the rewritten scores are validation's
    summary, failed, notes = T.build(args)
    assert summary["n"].tolist() == [3, 3, 3]
    r8 = row(summary, **{"lora.r": 8})
    assert r8["metrics.final.accuracy.mean"] == pytest.approx(0.863333, abs=1e-6)
    assert r8["metrics.final.accuracy.std"] == pytest.approx(0.041633, abs=1e-6)
    assert row(summary, **{"lora.r": None})["metrics.final.accuracy.mean"] == pytest.approx(0.82, abs=1e-6)
    assert [Path(p).name for p in failed["path"]] == ["9_lora-r8-qv-seed3"]  # one failure, not two
    assert str(Path(failed["path"][0]).parent) == str(again)  # the newer of the two failed records
    reruns = [n for n in notes if "count once" in n]
    assert len(reruns) == 10
    assert (f"note: 2 records of one configuration and seed count once: kept {again}/6_lora-r8-qv-seed0 "
            f"(the newest completed), not {first}/6_lora-r8-qv-seed0") in reruns
    assert f"kept {first}/0_full-seed0 (the newest completed), not {again}/0_full-seed0" in "\n".join(reruns)

    assert T.main([str(first), str(again), "--split", "eval"]) == 0
    captured = capsys.readouterr()
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8633 ± 0.0416** |" in captured.out
    assert "count once" in captured.err


def test_wandb_run_listed_twice_counts_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=FakeApi))
    records = T.load_records([LVF])
    FakeApi.runs_to_return = [fake_run(r, run_id=f"{i}{copy}") for copy in "ab" for i, r in enumerate(records)]
    assert T.main(["--wandb", "ent/proj", "--split", "eval"]) == 0
    captured = capsys.readouterr()
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0200** |" in captured.out
    assert captured.err.count("count once") == 10 and "kept wandb:ent/proj/6b" in captured.err
