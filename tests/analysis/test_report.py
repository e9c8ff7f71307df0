"""harness-report and harness.analysis.write_report on the fixture sweeps (numbers:
tests/analysis/sweeps.py): the page, its tables, every figure or the reason it is not drawn."""

import re
import shutil
from pathlib import Path

import pytest

from harness import analysis as A
from harness import report
from tests.analysis.sweeps import FIXTURES, LVF, OTHER
from tests.helpers import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["metric_vs_params.png", "metric_vs_rank.png", "memory.png", "throughput.png", "curves.png"]


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000, path


def test_report_folder_has_page_tables_and_every_figure(tmp_path):
    skipped = A.write_report([FIXTURES], tmp_path)
    no_probe = "no completed run has metrics.forget.final.perplexity (only tasks with task.forget set have a forgetting probe)"
    assert skipped == {**{name: None for name in FIGURES}, "learn_forget.png": no_probe}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index.html", *FIGURES])
    for name in FIGURES:
        assert_png(tmp_path / name)
    page = (tmp_path / "index.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == FIGURES  # relative paths: the folder moves as a whole
    assert "http" not in page  # self-contained
    assert page.count('<table class="results">') == 3  # summary, Table 2 layout, Table 6 layout
    assert "Methods × tasks (LoRA paper Table 2 layout)" in page and "Target modules × rank" in page
    assert "Main metric: accuracy on the test split, final weights." in page
    assert "<strong>0.8300 ± 0.0361</strong>" in page  # r=8 on the test split (tests/analysis/sweeps.py)
    assert "Task metrics: test split, final weights." in page  # every table's caption
    assert "9_lora-r8-qv-seed3</code>: failed: FloatingPointError" in page
    assert "2_lora-r4-qkvd-seed2</code>: preempted" in page
    assert "13 completed run(s), 2 not completed" in page


def test_missing_axes_are_skipped_and_said_on_the_page(tmp_path):
    stale = tmp_path / "metric_vs_rank.png"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(PNG)  # from an earlier report of another sweep: must not survive
    skipped = A.write_report([OTHER], tmp_path, split="eval")  # sst2 has no test split
    assert skipped["metric_vs_rank.png"] == "a single rank (r=8); nothing to plot against"
    assert skipped["curves.png"].startswith("no metrics.jsonl")
    assert not stale.exists() and not (tmp_path / "curves.png").exists()
    for name in ("metric_vs_params.png", "memory.png", "throughput.png"):
        assert skipped[name] is None
        assert_png(tmp_path / name)
    page = (tmp_path / "index.html").read_text()
    assert "Not drawn: a single rank (r=8); nothing to plot against." in page
    assert "Not drawn: no metrics.jsonl" in page


def test_full_finetuning_only_sweep_has_no_rank_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for run in LVF.glob("*_full-seed*"):
        shutil.copytree(run, sweep / run.name)
    skipped = A.write_report([sweep], tmp_path / "report")
    assert skipped["metric_vs_rank.png"] == "no completed LoRA runs"
    assert skipped["curves.png"] is None
    assert "Methods × tasks" not in (tmp_path / "report" / "index.html").read_text()


def test_cli(tmp_path, capsys):
    assert report.main([str(OTHER), "--out", str(tmp_path / "r0"), "--split", "test"]) == 2  # sst2 has no test split
    assert "no completed run has metrics.test.final.accuracy" in capsys.readouterr().err
    assert report.main([str(OTHER), "--out", str(tmp_path / "r1")]) == 0  # by default: validation, and the page says so
    assert "showing the validation split" in (tmp_path / "r1" / "index.html").read_text()
    capsys.readouterr()
    assert report.main([str(OTHER), "--out", str(tmp_path / "r"), "--title", "Other task", "--split", "eval"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(tmp_path / "r" / "index.html")
    assert "skipped metric_vs_rank.png: a single rank (r=8); nothing to plot against" in out
    assert "<title>Other task</title>" in (tmp_path / "r" / "index.html").read_text()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "harness-report: error: no such file or folder" in capsys.readouterr().err
    assert report.main([str(OTHER), "--out", str(tmp_path / "r3"), "--by", "nope", "--split", "eval"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_best_flag_uses_best_evaluation(tmp_path):
    A.write_report([LVF], tmp_path / "eval", best=True, split="eval")
    page = (tmp_path / "eval" / "index.html").read_text()
    assert "Main metric: accuracy (best) on the validation split, best evaluation." in page
    assert "<strong>0.8500 ± 0.0100</strong>" in page  # r=4 is best at its best evaluation
    A.write_report([LVF], tmp_path / "test", best=True)
    page = (tmp_path / "test" / "index.html").read_text()
    assert "Main metric: accuracy (best) on the test split, weights of the best validation evaluation." in page
    assert "<strong>0.8300 ± 0.0200</strong>" in page  # r=8 with its best-validation weights


@pytest.mark.slow
def test_publish_script_writes_a_study_folder(tmp_path):
    """experiments/publish.sh: every job's record and curve, the three table formats, the report."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", METRICS="main")
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "publish.sh"), str(LVF), str(tmp_path / "study"),
                           "method", "lora.r"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = tmp_path / "study"
    jobs = sorted(p.name for p in LVF.iterdir() if (p / "results.json").exists())
    assert sorted(p.name for p in (study / "results").iterdir()) == jobs
    assert all((study / "results" / j / "metrics.jsonl").exists() == (LVF / j / "metrics.jsonl").exists() for j in jobs)
    md = (study / "table.md").read_text()
    assert "| method | lora.r | n   | accuracy" in md and "0.8100 ± 0.0200" in md  # full FT test split, hand-computed
    assert "Task metrics: test split, final weights." in md
    assert "\\toprule" in (study / "table.tex").read_text()
    assert (study / "table.csv").read_text().startswith("method,lora.r,n,")
    assert (study / "report" / "index.html").exists() and (study / "report" / "metric_vs_rank.png").exists()
