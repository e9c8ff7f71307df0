"""Successive halving over a pack's jobs (`hydra.launcher.prune`): at every rung, keep the best.

    hydra.launcher.prune={metric: eval/loss, every: 50, keep: 0.5}
    hydra.launcher.prune={metric: eval/loss, every: 25, keep: 0.5, growth: 2}   # rungs at 25, 50, 100, 200, ...

At every rung each live job is scored on the validation split (its evaluation at that step, made
then if its own schedule did not make one); the best `ceil(keep * live)` go on (at least one), the
others end as `status: pruned` with their metrics so far. Rungs are every `every` steps (growth 1),
or at every * growth^k (growth 2 with keep 0.5 is Jamieson & Talwalkar's successive halving: each
rung doubles the budget of the half that survives, so every rung costs the same compute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.schema import check


@dataclass(frozen=True)
class PruneConfig:
    metric: str = "eval/loss"   # eval/<metric>: a validation metric the task computes, or eval/loss
    every: int = 50             # optimizer steps between rungs
    keep: float = 0.5           # the fraction of live jobs each rung keeps
    growth: float = 1           # rung k at every * growth^k steps (1: every `every` steps)

    def __post_init__(self):
        check(isinstance(self.metric, str) and self.metric.startswith("eval/"), "hydra.launcher.prune.metric",
              self.metric, "must be eval/<metric>, e.g. eval/loss or eval/accuracy")
        check(isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= 1,
              "hydra.launcher.prune.every", self.every, "must be an integer >= 1")
        check(isinstance(self.keep, (int, float)) and 0 < self.keep < 1, "hydra.launcher.prune.keep", self.keep,
              "must be a number between 0 and 1 (exclusive)")
        check(isinstance(self.growth, (int, float)) and not isinstance(self.growth, bool) and self.growth >= 1,
              "hydra.launcher.prune.growth", self.growth, "must be a number >= 1")

    def is_rung(self, step: int) -> bool:
        """Whether optimizer step `step` is a rung."""
        if self.growth == 1:
            return step % self.every == 0
        rung = self.every
        while rung < step:
            rung = max(rung + 1, round(rung * self.growth))
        return rung == step

    @classmethod
    def parse(cls, node) -> PruneConfig | None:
        """From the launcher's config node (a mapping or null)."""
        if node is None:
            return None
        fields = dict(node)
        unknown = set(fields) - set(cls.__dataclass_fields__)
        check(not unknown, "hydra.launcher.prune", sorted(unknown), "allowed keys: metric, every, keep, growth")
        return cls(**fields)

    @property
    def key(self) -> str:
        return self.metric.split("/", 1)[1]


def survivors(scores: dict[int, float], keep: float, greater_is_better: bool) -> set[int]:
    """The job indices a rung keeps: the best ceil(keep * n) scores (NaN counts as worst; ties
    keep the earlier job)."""
    def badness(k):
        v = scores[k]
        return (math.isnan(v), -v if greater_is_better else v, k)

    n_keep = max(1, math.ceil(keep * len(scores)))
    return set(sorted(scores, key=badness)[:n_keep])


def greater_is_better(metric: str, task) -> bool:
    """The task's own direction for its main metric; loss and perplexity go down; other metrics up."""
    if metric == task.main_metric:
        return task.greater_is_better
    return metric not in ("loss", "perplexity")
