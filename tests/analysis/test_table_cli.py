"""harness-table (harness/table.py): the command line over harness.analysis, on the fixture sweeps
and on W&B runs served by a stand-in for wandb.Api (numbers: tests/analysis/sweeps.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness import analysis as A
from harness import table
from tests.analysis.sweeps import FIXTURES, LVF, MARKDOWN, MARKDOWN_TEST, OTHER, FakeApi, fake_run, row
from tests.helpers import ROOT


def test_cli_reads_wandb_group(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=FakeApi))
    FakeApi.calls.clear()
    FakeApi.runs_to_return = [fake_run(r, run_id=str(i)) for i, r in enumerate(A.load_records([LVF]))]
    assert table.main(["--wandb", "ent/proj", "--group", "lora_vs_full"]) == 0
    assert FakeApi.calls == [("ent/proj", {"group": "lora_vs_full"})]
    out = capsys.readouterr().out
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0361** |" in out  # test split
    assert "`wandb:ent/proj/9`: failed: FloatingPointError" in out
    FakeApi.runs_to_return = []
    assert table.main(["--wandb", "ent/proj", "--group", "nothing"]) == 2
    assert "no W&B runs in 'ent/proj' with group 'nothing'" in capsys.readouterr().err
    assert table.main(["--wandb", "just-a-project"]) == 2
    assert "--wandb wants ENTITY/PROJECT, got 'just-a-project'" in capsys.readouterr().err


def test_cli_markdown_with_failed_listing_under_the_table(capsys):
    assert table.main([str(LVF)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(MARKDOWN_TEST)
    assert table.main([str(LVF), "--split", "eval"]) == 0
    assert capsys.readouterr().out.startswith(MARKDOWN)
    assert captured.out.index("Not averaged: 1 run(s)") > captured.out.index("| lora   | rotten_tomatoes | 8")
    assert captured.err == ""


def test_cli_csv_keeps_listing_and_notes_on_stderr(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert table.main([str(LVF), "--format", "csv", "--by", "method", "--metric", "accuracy", "--out", str(out)]) == 0
    csv = pd.read_csv(out)
    assert csv.columns.tolist() == ["method", "n", "metrics.test.final.accuracy.mean", "metrics.test.final.accuracy.std",
                                    "metrics.test.final.accuracy.n"]
    assert csv["n"].tolist() == [3, 6]  # --by method averages both ranks, and says so:
    err = capsys.readouterr().err
    assert "note: runs averaged together differ in lora.r" in err and "9_lora-r8-qv-seed3" in err


def test_cli_pivot_best_and_where(capsys):
    assert table.main([str(FIXTURES), "--by", "lora.target_modules", "--cols", "lora.r", "--metric", "accuracy",
                   "--best", "--where", "method=lora", "task=rotten_tomatoes", "--format", "latex", "--split", "eval"]) == 0
    out = capsys.readouterr().out
    assert r"query,value & \textbf{0.8500 $\pm$ 0.0100} & 0.8400 $\pm$ 0.0200 \\" in out
    assert "% Not averaged: 2 run(s)" in out
    assert table.main([str(FIXTURES), "--by", "lora.target_modules", "--cols", "lora.r", "--metric", "accuracy",
                   "--best", "--where", "method=lora", "task=rotten_tomatoes", "--format", "latex"]) == 0
    out = capsys.readouterr().out  # test split, best-validation weights; sweep_targets predates test scoring
    assert r"query,key,value,dense & --- & --- \\" in out
    assert r"query,value & 0.8100 $\pm$ 0.0200 & 0.8300 $\pm$ 0.0200 \\" in out  # one value per column: no bold


def test_cli_keys_accept_the_override_spelling(capsys):
    """`method.lr` as typed on the harness-train command line finds the record's config.method.lr."""
    assert table.main([str(LVF), "--by", "method.lr", "--metric", "accuracy", "--where", "method.name=full"]) == 0
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
    assert table.main([str(LVF), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness-table: error: ") and message in err


def test_cli_no_results_exits_2(tmp_path, capsys):
    assert table.main([str(tmp_path)]) == 2
    assert f"no results.json found under: {tmp_path}" in capsys.readouterr().err
    assert table.main([]) == 2
    assert "give sweep folders (PATH ...) or --wandb ENTITY/PROJECT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        table.main([str(LVF), "--format", "xls"])
    assert e.value.code == 2


def test_cli_all_runs_failed_exits_2(tmp_path, capsys):
    shutil.copytree(LVF / "9_lora-r8-qv-seed3", tmp_path / "run")
    assert table.main([str(tmp_path)]) == 2
    assert "no completed runs among 1 results" in capsys.readouterr().err


@pytest.mark.slow
def test_module_runs_as_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness.table", str(OTHER), "--format", "csv", "--split", "eval"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("method,task,n,metrics.final.accuracy.mean")
    assert len(done.stdout.splitlines()) == 3  # header + full + lora: nothing else on stdout


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

    args = table.parser().parse_args([str(first), str(again), "--split", "eval"])  # the rewritten scores are validation's
    summary, failed, notes = table.build(args)
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

    assert table.main([str(first), str(again), "--split", "eval"]) == 0
    captured = capsys.readouterr()
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8633 ± 0.0416** |" in captured.out
    assert "count once" in captured.err


def test_wandb_run_listed_twice_counts_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=FakeApi))
    records = A.load_records([LVF])
    FakeApi.runs_to_return = [fake_run(r, run_id=f"{i}{copy}") for copy in "ab" for i, r in enumerate(records)]
    assert table.main(["--wandb", "ent/proj", "--split", "eval"]) == 0
    captured = capsys.readouterr()
    assert "| lora   | rotten_tomatoes | 8      | 3   | **0.8300 ± 0.0200** |" in captured.out
    assert captured.err.count("count once") == 10 and "kept wandb:ent/proj/6b" in captured.err
