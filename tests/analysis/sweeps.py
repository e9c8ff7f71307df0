"""The hand-made sweeps (tests/fixtures/sweep_*) the analysis tests read, numbers worked out by hand.

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

What the analysis tests share: those sweeps, the tables harness-table prints for the first, and a
stand-in for wandb.Api serving the same records as W&B run summaries.
"""

from types import SimpleNamespace

import pandas as pd

from harness import analysis as A
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
LVF = FIXTURES / "sweep_lora_vs_full"
OTHER = FIXTURES / "sweep_other_task"
TARGETS = FIXTURES / "sweep_targets"
DEFAULT = ["metrics.final.accuracy", "params.trainable", "throughput.tokens_per_s", "memory.peak_rss_gib"]


def frame(*paths):
    return A.records_frame(A.load_records(paths or [FIXTURES]))


def row(summary, **keys):
    mask = pd.Series(True, index=summary.index)
    for k, v in keys.items():
        mask &= summary[k].isna() if v is None else summary[k] == v
    assert mask.sum() == 1, (keys, summary[list(keys)])
    return summary[mask].iloc[0]


def lvf_summary():
    df = frame(LVF)
    return A.summarize(df, A.default_by(df), DEFAULT)


def lvf_markdown(split: str, full: str, r4: str, r8: str) -> str:
    """The Markdown table of sweep_lora_vs_full by method, task and rank: only the caption's split
    and the accuracy cells differ between the splits (the other columns are not task metrics)."""
    return f"""\
Mean ± sample std over seeds; best per column in bold. Task metrics: {split}. Metrics: accuracy, trainable params, tokens/s, peak RSS (GiB).

| method | task            | lora.r | n   | accuracy            | trainable params | tokens/s        | peak RSS (GiB) |
| :----- | :-------------- | :----- | --: | ------------------: | ---------------: | --------------: | -------------: |
| full   | rotten_tomatoes | —      | 3   | {full:<19} | 22,713,216       | 1,100 ± 100     | 2.133 ± 0.153  |
| lora   | rotten_tomatoes | 4      | 3   | {r4:<19} | **185,474**      | **1,600 ± 100** | **1.200**      |
| lora   | rotten_tomatoes | 8      | 3   | {r8:<19} | 222,338          | 1,550 ± 100     | 1.300 ± 0.050  |
"""


MARKDOWN = lvf_markdown("validation split, final evaluation", "0.8200 ± 0.0200", "0.8100 ± 0.0265", "**0.8300 ± 0.0200**")
# What harness-table prints by default: the test split (hand-computed in the module docstring).
MARKDOWN_TEST = lvf_markdown("test split, final weights", "0.8100 ± 0.0200", "0.8000 ± 0.0200", "**0.8300 ± 0.0361**")


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


class FakeApi:
    calls = []
    runs_to_return = []

    def runs(self, path, filters=None):
        FakeApi.calls.append((path, filters))
        return FakeApi.runs_to_return
