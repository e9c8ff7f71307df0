"""harness.report on the fixture sweeps (see tests/test_table.py for their numbers).

Training curves in sweep_lora_vs_full: train/loss at steps 10, 20, 30 is l0, l0 - .1, l0 - .2 with
l0 = .70 .68 .66 for full FT (mean .68, std .02 at step 10) and .72 for each LoRA r=8 seed (std 0);
one eval row at step 30 carries the final accuracy.
"""

import re
import shutil
from pathlib import Path

import pytest

from harness import report as R
from harness import table as T

FIXTURES = Path(__file__).parent / "fixtures"
LVF = FIXTURES / "sweep_lora_vs_full"
OTHER = FIXTURES / "sweep_other_task"
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["metric_vs_params.png", "metric_vs_rank.png", "memory.png", "throughput.png", "curves.png"]


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000, path


def test_report_folder_has_page_tables_and_every_figure(tmp_path):
    skipped = R.write_report([FIXTURES], tmp_path)
    assert skipped == {name: None for name in FIGURES}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index.html", *FIGURES])
    for name in FIGURES:
        assert_png(tmp_path / name)
    page = (tmp_path / "index.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == FIGURES  # relative paths: the folder moves as a whole
    assert "http" not in page  # self-contained
    assert page.count('<table class="results">') == 3  # summary, Table 2 layout, Table 6 layout
    assert "Methods × tasks (LoRA paper Table 2 layout)" in page and "Target modules × rank" in page
    assert "Main metric: accuracy on the test split, final weights." in page
    assert "<strong>0.8300 ± 0.0361</strong>" in page  # r=8 on the test split (tests/test_table.py)
    assert "Task metrics: test split, final weights." in page  # every table's caption
    assert "9_lora-r8-qv-seed3</code>: failed: FloatingPointError" in page
    assert "2_lora-r4-qkvd-seed2</code>: preempted" in page
    assert "13 completed run(s), 2 not completed" in page


def test_missing_axes_are_skipped_and_said_on_the_page(tmp_path):
    stale = tmp_path / "metric_vs_rank.png"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(PNG)  # from an earlier report of another sweep: must not survive
    skipped = R.write_report([OTHER], tmp_path, split="eval")  # sst2 has no test split
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
    skipped = R.write_report([sweep], tmp_path / "report")
    assert skipped["metric_vs_rank.png"] == "no completed LoRA runs"
    assert skipped["curves.png"] is None
    assert "Methods × tasks" not in (tmp_path / "report" / "index.html").read_text()


def test_mean_curves_average_seeds_per_step():
    df = T.records_frame(T.load_records([LVF]))
    curves = R.load_curves(df)
    assert len(curves) == 9 * 4  # 9 completed runs x (3 train rows + 1 eval row); the failed run has no file
    stats = R.mean_curves(curves, df, ["method", "lora.r"], "train/loss")
    full = stats[stats["method"] == "full"].set_index("step")
    assert full["mean"].tolist() == pytest.approx([0.68, 0.58, 0.48])
    assert full["std"].tolist() == pytest.approx([0.02, 0.02, 0.02])
    assert full["n"].tolist() == [3, 3, 3]
    r8 = stats[stats["lora.r"] == 8].set_index("step")
    assert r8["mean"].tolist() == pytest.approx([0.72, 0.62, 0.52]) and r8["std"].tolist() == pytest.approx([0, 0, 0])
    acc = R.mean_curves(curves, df, ["method", "lora.r"], "eval/accuracy")
    assert acc["step"].tolist() == [30, 30, 30] and acc["mean"].tolist() == pytest.approx([0.82, 0.81, 0.83])


def test_load_curves_skips_a_truncated_line(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LVF / "0_full-seed0", run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "train/lo')  # killed mid-write
    curves = R.load_curves(T.records_frame(T.load_records([tmp_path])))
    assert curves["step"].tolist() == [10, 20, 30, 30]


def test_group_labels_name_only_what_varies():
    s = T.summarize(T.records_frame(T.load_records([FIXTURES])), ["method", "task", "lora.r", "lora.target_modules"],
                    ["metrics.final.accuracy"])
    labels = R.group_labels(s, ["method", "lora.r", "lora.target_modules"]).tolist()
    assert labels == ["full", "full", "lora r=4 [query,key,value,dense]", "lora r=4 [query,value]",
                      "lora r=8 [query,value]", "lora r=8 [query,value]"]


def test_cli(tmp_path, capsys):
    assert R.main([str(OTHER), "--out", str(tmp_path / "r0"), "--split", "test"]) == 2  # sst2 has no test split
    assert "no completed run has metrics.test.final.accuracy" in capsys.readouterr().err
    assert R.main([str(OTHER), "--out", str(tmp_path / "r1")]) == 0  # by default: validation, and the page says so
    assert "showing the validation split" in (tmp_path / "r1" / "index.html").read_text()
    capsys.readouterr()
    assert R.main([str(OTHER), "--out", str(tmp_path / "r"), "--title", "Other task", "--split", "eval"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(tmp_path / "r" / "index.html")
    assert "skipped metric_vs_rank.png: a single rank (r=8); nothing to plot against" in out
    assert "<title>Other task</title>" in (tmp_path / "r" / "index.html").read_text()
    assert R.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "harness-report: error: no such file or folder" in capsys.readouterr().err
    assert R.main([str(OTHER), "--out", str(tmp_path / "r3"), "--by", "nope", "--split", "eval"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_best_flag_uses_best_evaluation(tmp_path):
    R.write_report([LVF], tmp_path / "eval", best=True, split="eval")
    page = (tmp_path / "eval" / "index.html").read_text()
    assert "Main metric: accuracy (best) on the validation split, best evaluation." in page
    assert "<strong>0.8500 ± 0.0100</strong>" in page  # r=4 is best at its best evaluation
    R.write_report([LVF], tmp_path / "test", best=True)
    page = (tmp_path / "test" / "index.html").read_text()
    assert "Main metric: accuracy (best) on the test split, weights of the best validation evaluation." in page
    assert "<strong>0.8300 ± 0.0200</strong>" in page  # r=8 with its best-validation weights


def test_publish_script_writes_a_study_folder(tmp_path):
    """experiments/publish.sh: every job's record and curve, the three table formats, the report."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", METRICS="main")
    root = Path(__file__).parents[1]
    proc = subprocess.run(["bash", str(root / "experiments" / "publish.sh"), str(LVF), str(tmp_path / "study"),
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
