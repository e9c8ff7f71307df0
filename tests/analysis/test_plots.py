"""harness.analysis.plots: the data behind the report's figures.

Training curves in sweep_lora_vs_full: train/loss at steps 10, 20, 30 is l0, l0 - .1, l0 - .2 with
l0 = .70 .68 .66 for full FT (mean .68, std .02 at step 10) and .72 for each LoRA r=8 seed (std 0);
one eval row at step 30 carries the final accuracy.
"""

import shutil

import pytest

from harness import analysis as A
from tests.analysis.sweeps import FIXTURES, LVF


def test_mean_curves_average_seeds_per_step():
    df = A.records_frame(A.load_records([LVF]))
    curves = A.load_curves(df)
    assert len(curves) == 9 * 4  # 9 completed runs x (3 train rows + 1 eval row); the failed run has no file
    stats = A.mean_curves(curves, df, ["method", "lora.r"], "train/loss")
    full = stats[stats["method"] == "full"].set_index("step")
    assert full["mean"].tolist() == pytest.approx([0.68, 0.58, 0.48])
    assert full["std"].tolist() == pytest.approx([0.02, 0.02, 0.02])
    assert full["n"].tolist() == [3, 3, 3]
    r8 = stats[stats["lora.r"] == 8].set_index("step")
    assert r8["mean"].tolist() == pytest.approx([0.72, 0.62, 0.52]) and r8["std"].tolist() == pytest.approx([0, 0, 0])
    acc = A.mean_curves(curves, df, ["method", "lora.r"], "eval/accuracy")
    assert acc["step"].tolist() == [30, 30, 30] and acc["mean"].tolist() == pytest.approx([0.82, 0.81, 0.83])


def test_load_curves_skips_a_truncated_line(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LVF / "0_full-seed0", run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "train/lo')  # killed mid-write
    curves = A.load_curves(A.records_frame(A.load_records([tmp_path])))
    assert curves["step"].tolist() == [10, 20, 30, 30]


def test_group_labels_name_only_what_varies():
    s = A.summarize(A.records_frame(A.load_records([FIXTURES])), ["method", "task", "lora.r", "lora.target_modules"],
                    ["metrics.final.accuracy"])
    labels = A.group_labels(s, ["method", "lora.r", "lora.target_modules"]).tolist()
    assert labels == ["full", "full", "lora r=4 [query,key,value,dense]", "lora r=4 [query,value]",
                      "lora r=8 [query,value]", "lora r=8 [query,value]"]
