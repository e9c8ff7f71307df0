"""`hydra/launcher=packed`: a sweep's packable LoRA jobs trained in packs, the rest as ordinary jobs.

    harness-train -m method.r=4,8,16 method.lr=1e-3,2e-3 seed=0,1 hydra/launcher=packed
    harness-train -m method.lr=1e-3,2e-3,5e-3,1e-2 method.r=4,8 hydra/launcher=packed \\
        'hydra.launcher.prune={metric: eval/loss, every: 50, keep: 0.5}'

Every job's config is composed first; `group_jobs` forms the packs (at most `max_pack` jobs each).
Each job still gets Hydra's own job set-up (its run folder, `.hydra/`, `HydraConfig`), then each
pack trains in one forked child (`run_forked`, as every ordinary job does), and jobs that cannot be
packed (full fine-tuning, another model, PiSSA) run one by one exactly as the basic launcher runs
them. The plugin module hydra_plugins/harness_packed registers the config (`PackedLauncherConf`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

from harness.results import read_results
from harness.schema import check, choices
from harness.train import job_info, lr_is_swept, run_forked
from harness.train.sweep import record_lost_job

from .group import group_jobs
from .loop import FORWARDS, PackJob, run_pack
from .prune import PruneConfig

log = logging.getLogger("harness")


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.harness_packed.PackedLauncher"
    max_pack: int = 8                # jobs per pack at most (memory: each adds its activations)
    prune: Optional[Any] = None      # {metric: eval/loss, every: 50, keep: 0.5}: successive halving
    forward: str = "auto"            # concat (one batch of every job's rows) | per_job | auto: concat on CUDA only


class PackedLauncher(Launcher):
    def __init__(self, max_pack: int = 8, prune: Any = None, forward: str = "auto") -> None:
        check(isinstance(max_pack, int) and not isinstance(max_pack, bool) and max_pack >= 1,
              "hydra.launcher.max_pack", max_pack, "must be an integer >= 1")
        check(forward in FORWARDS, "hydra.launcher.forward", forward, choices(FORWARDS))
        self.max_pack, self.prune, self.forward = max_pack, PruneConfig.parse(prune), forward
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _compose(self, overrides, idx):
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        return cfg

    def _run(self, cfg, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        cfgs = [self._compose(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        packs, alone = group_jobs(cfgs, self.max_pack)
        log.info("packed launcher: %d jobs, %d pack(s) of %s, %d alone", len(cfgs), len(packs),
                 "/".join(str(len(p)) for p in packs) or "-", len(alone))
        returns: dict[int, JobReturn] = {}
        for n, members in enumerate(packs):
            returns.update(self._launch_pack(n, members, cfgs, job_overrides, initial_job_idx))
        for i, reason in sorted(alone.items()):
            log.info("\t#%d : %s (alone: %s)", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])), reason)
            returns[i] = self._run(cfgs[i], self.task_function)
        return [returns[i] for i in range(len(cfgs))]

    def _launch_pack(self, n, members, cfgs, job_overrides, initial_job_idx) -> dict[int, JobReturn]:
        """Hydra's own set-up of each member job (run folder, .hydra/), then the pack in one child."""
        pack_id = f"pack{n}"
        jobs, rets = [], {}
        for i in members:
            log.info("\t#%d : %s (%s)", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])), pack_id)

            def capture(cfg):
                run_dir, multirun, sweep = job_info(cfg)
                jobs.append(PackJob(cfg, run_dir, multirun, sweep, include_lr=lr_is_swept(HydraConfig.get())))

            rets[i] = self._run(cfgs[i], capture)
        prune, forward = self.prune, self.forward

        def train(_):
            _log_to_each(jobs)
            return run_pack(jobs, pack_id, prune, forward=forward)

        def lost(status, preempted):  # the pack's process died without a word: every unfinished job says so
            for j in jobs:
                if (read_results(j.run_dir) or {}).get("status") not in ("completed", "pruned"):
                    record_lost_job(j.cfg, status, preempted, (j.run_dir, j.multirun, j.sweep))
            return True

        values = run_forked(train, jobs[0].cfg, lost=lost)
        values = values if isinstance(values, list) else [values] * len(jobs)
        for i, value in zip(members, values):
            rets[i].return_value, rets[i].status = value, JobStatus.COMPLETED
        return rets


def _log_to_each(jobs: list[PackJob]) -> None:
    """The pack's log lines go to every member's train.log (one process trains them all)."""
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    for j in jobs:
        handler = logging.FileHandler(Path(j.run_dir) / "train.log")
        handler.setFormatter(fmt)
        root.addHandler(handler)
