"""Forgetting in tables and the report: the `forget` columns of harness-table and the
learning-vs-forgetting figure of harness-report, on records written here (numbers by hand).

Forgetting perplexity after fine-tuning (final weights), per seed; the pretrained model's is 30.0:
  full        36.0 38.0  -> 37.0 ± 1.414214 (increase 7.0)
  lora r=8    31.0 31.5  -> 31.25 ± .353553 (increase 1.25)
  lora r=64   32.0 33.0  -> 32.5 ± .707107 (increase 2.5)
Test loss (learning): full 1.90 1.92, r=8 2.10 2.12, r=64 2.00 2.02.
"""

import json

import pytest

from harness import analysis as A
from harness import report, table
from tests.analysis.sweeps import LVF
from tests.analysis.test_report import assert_png

BEFORE = 30.0
RUNS = [("full", None, 0, 36.0, 1.90), ("full", None, 1, 38.0, 1.92), ("lora", 8, 0, 31.0, 2.10),
        ("lora", 8, 1, 31.5, 2.12), ("lora", 64, 0, 32.0, 2.00), ("lora", 64, 1, 33.0, 2.02)]


def record(method, r, seed, ppl, loss) -> dict:
    forget = {"before": {"nll": 3.4, "perplexity": BEFORE},
              "final": {"nll": 3.5, "perplexity": ppl, "perplexity_increase": ppl - BEFORE},
              "best": None, "best_step": None, "tokens": 7081, "chunks": 32}
    lora = {"r": r, "alpha": 2 * r, "target_modules": ["q_proj", "v_proj"]} if r else None
    return {"status": "completed", "method": method, "model": "smollm2_135m", "task": "chatterbot", "seed": seed,
            "lora": lora, "params": {"trainable": 1000 * (r or 1000)},
            "metrics": {"main_metric": "loss", "greater_is_better": False,
                        "final": {"loss": loss - 0.5, "perplexity": 1.0}, "best": {"loss": loss - 0.5},
                        "test": {"final": {"loss": loss, "perplexity": 1.0}, "best": None, "best_step": None},
                        "forget": forget},
            "config": {"seed": seed, "method": {"name": method, "r": r}, "task": {"name": "chatterbot"}}}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "learn_forget"
    for n, run in enumerate(RUNS):
        folder = root / f"{n}_run"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(record(*run)))
    return root


def test_the_table_shows_forgetting_by_default(sweep, capsys):
    assert table.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| forget ppl " in out and "Forgetting: perplexity on held-out general English" in out
    assert "37.000 ± 1.414" in out and "**31.250 ± 0.354**" in out and "32.500 ± 0.707" in out  # lower is better


def test_forget_names_resolve_to_their_columns(sweep, capsys):
    assert table.main([str(sweep), "--metric", "forget_increase", "forget_before", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    header, full, r8, r64 = out.splitlines()[:4]
    assert header.split(",")[4:9:3] == ["metrics.forget.final.perplexity_increase.mean",
                                         "metrics.forget.before.perplexity.mean"]  # CSV: the columns' own names
    assert full.split(",")[4:6] == ["7.0", "1.4142135623730951"] and r8.split(",")[4] == "1.25"
    df = A.records_frame(A.load_records([sweep]))
    assert A.resolve_metric(df, "forget") == "metrics.forget.final.perplexity"
    with pytest.raises(ValueError, match=r"no completed run has metrics.forget.best.perplexity .*select_best"):
        A.resolve_metric(df, "forget", best=True)
    assert {"forget", "forget_increase", "forget_before"} <= set(A.available_metrics(df))
    assert A.default_metrics(df)[:2] == ["main", "forget"]
    assert "forget" not in A.default_metrics(A.records_frame(A.load_records([LVF])))  # no probe: no column


def test_the_report_draws_learning_vs_forgetting(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    assert_png(out / "learn_forget.png")
    page = (out / "index.html").read_text()
    assert '<img src="learn_forget.png"' in page and "forget ppl increase" in page
    df = A.records_frame(A.load_records([sweep]))
    with pytest.raises(A.Skip, match="no completed run has metrics.final.loss"):
        A.plot_learning_vs_forgetting(df.drop(columns=["metrics.final.loss"]), out, split="eval")
    with pytest.raises(A.Skip, match=r"metrics.forget.best.perplexity \(the best-validation weights .*select_best"):
        A.plot_learning_vs_forgetting(df, out, best=True)
    assert A.plot_learning_vs_forgetting(df, out, split="eval") == "learn_forget.png"


def test_the_plot_puts_each_run_at_its_test_loss_and_perplexity_on_a_log_axis(sweep, tmp_path, monkeypatch):
    """The points are the records' (test loss, forgetting perplexity), read back from the figure;
    perplexity is on a log axis (a diverged run at hundreds would flatten a linear one)."""
    import harness.analysis.plots as plots

    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: drawn.setdefault("fig", fig) and name)
    A.plot_learning_vs_forgetting(A.records_frame(A.load_records([sweep])), tmp_path)
    (ax,) = drawn["fig"].axes
    assert ax.get_yscale() == "log"
    points = sorted(tuple(map(float, xy)) for c in ax.collections for xy in c.get_offsets())
    assert points == sorted((loss, ppl) for *_, ppl, loss in RUNS)
    assert [line.get_ydata()[0] for line in ax.lines] == [BEFORE]  # the pretrained model, dashed
