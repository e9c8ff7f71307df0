"""harness.analysis.render: Markdown, LaTeX, CSV and the failed-run listing, as text pinned whole
(numbers: tests/analysis/sweeps.py)."""

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from harness import analysis as A
from tests.analysis.sweeps import DEFAULT, LVF, MARKDOWN, OTHER, frame, lvf_summary


def test_caption_says_which_split_and_weights():
    df = frame(LVF)
    for name, best, split, text in [
            ("main", False, "test", "Task metrics: test split, final weights."),
            ("main", True, "test", "Task metrics: test split, weights of the best validation evaluation."),
            ("main", False, "eval", "Task metrics: validation split, final evaluation."),
            ("main", True, "eval", "Task metrics: validation split, best evaluation.")]:
        s = A.summarize(df, ["method"], [A.resolve_metric(df, name, best, split)])
        assert text in A.caption(s)
    assert "Task metrics" not in A.caption(A.summarize(df, ["method"], ["params.trainable"]))


def test_markdown_text_and_github_table_syntax():
    text = A.render(lvf_summary(), "md")
    assert text == MARKDOWN
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1
    assert all(re.fullmatch(r":?-+:?", cell.strip()) for cell in table[1].strip("|").split("|"))


def test_latex_booktabs_rows_and_bold_best():
    text = A.render(lvf_summary(), "latex")
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
    text = A.render(lvf_summary(), "csv")
    csv = pd.read_csv(io.StringIO(text))
    assert csv.columns.tolist() == ["method", "task", "lora.r", "n"] + [f"{m}.{s}" for m in DEFAULT for s in ("mean", "std", "n")]
    assert csv["lora.r"].isna().tolist() == [True, False, False] and csv["lora.r"].dropna().tolist() == [4, 8]
    assert csv["metrics.final.accuracy.std"].tolist() == pytest.approx([0.02, 0.026458, 0.02], abs=1e-6)
    assert ",4,3," in text  # ranks print as integers, not 4.0


def test_pivot_methods_by_tasks():
    df = frame(LVF, OTHER)
    s = A.summarize(df, ["method", "lora.r"], ["metrics.final.accuracy"], cols="task")
    lines = A.render(s, "md").splitlines()
    assert lines[0].startswith("Rows: method, lora.r; columns: task.") and "n = 3 per cell unless marked" in lines[0]
    assert lines[2:] == [
        "| method | lora.r | rotten_tomatoes     | sst2                 |",
        "| :----- | :----- | ------------------: | -------------------: |",
        "| full   | —      | 0.8200 ± 0.0200     | 0.9000 ± — (n=1)     |",
        "| lora   | 4      | 0.8100 ± 0.0265     | —                    |",
        "| lora   | 8      | **0.8300 ± 0.0200** | **0.9100 ± — (n=1)** |",
    ]


def test_pivot_rank_by_target_modules_and_two_level_latex_header():
    df = A.select(frame(), ["method=lora", "task=rotten_tomatoes"])
    s = A.summarize(df, ["lora.target_modules"], ["metrics.final.accuracy"], cols="lora.r")
    assert A.render(s, "md").splitlines()[2:] == [
        "| lora.target_modules   | r=4                       | r=8             |",
        "| :-------------------- | ------------------------: | --------------: |",
        "| query,key,value,dense | **0.8200 ± 0.0071 (n=2)** | —               |",
        "| query,value           | 0.8100 ± 0.0265           | 0.8300 ± 0.0200 |",
    ]
    s2 = A.summarize(df, ["lora.target_modules"], ["metrics.final.accuracy", "params.trainable"], cols="lora.r")
    latex = A.render(s2, "latex").splitlines()
    assert latex[3] == r" & \multicolumn{2}{c}{accuracy} & \multicolumn{2}{c}{trainable params} \\"
    assert latex[4] == r"\cmidrule(lr){2-3}\cmidrule(lr){4-5}"
    assert latex[5] == r"lora.target\_modules & r=4 & r=8 & r=4 & r=8 \\"


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'xls'; choose from: md, latex, csv, html"):
        A.render(lvf_summary(), "xls")


def test_failed_runs_listed_never_averaged():
    df = frame()
    failed = A.failed_runs(df)
    assert [Path(p).name for p in failed["path"]] == ["9_lora-r8-qv-seed3", "2_lora-r4-qkvd-seed2"]
    assert failed["status"].tolist() == ["failed", "preempted"]
    md = A.render_failed(failed, "md")
    assert "Not averaged: 2 run(s)" in md
    assert "9_lora-r8-qv-seed3`: failed: FloatingPointError: loss is nan at step 12" in md
    assert "2_lora-r4-qkvd-seed2`: preempted\n" in md
    assert all(line.startswith("%") for line in A.render_failed(failed, "latex").splitlines())
    assert A.render_failed(failed.iloc[:0], "md") == ""
    # runs a packed search pruned are listed apart from the ones that failed
    pruned = pd.concat([failed, pd.DataFrame({"path": ["5_lora-lr1e-3"], "status": ["pruned"], "error": [None]})],
                       ignore_index=True)
    md = A.render_failed(pruned, "md")
    assert md.index("Not averaged: 2 run(s) that did not complete") < md.index(
        "Not averaged: 1 run(s) pruned by successive halving") < md.index("`5_lora-lr1e-3`: pruned")
    assert "5_lora-lr1e-3" not in md[:md.index("pruned by successive halving")]
    csv = A.render_failed(pruned, "csv")
    assert csv.count("path,status,error") == 2 and "5_lora-lr1e-3,pruned," in csv
