"""Packed jobs and their solo twins, in this process, on the tiny BERT (no Hydra launcher)."""

from pathlib import Path

from harness.pack import PackJob
from harness.train import JobRun, Signals, fit
from tests.helpers import compose

BASE = ("debug=tiny", "model.name=tiny_bert", "trainer.device=cpu", "trainer.log_every=1", "trainer.precision=fp32")

# A pack that mixes everything a job owns: r, alpha, lr (and LoRA+'s ratio), seed, target modules, init, rsLoRA.
MIX = (("method.r=4", "method.alpha=8", "method.lr=1e-2", "seed=0", "method.lr_ratio=4"),
       ("method.r=8", "method.alpha=32", "method.lr=5e-3", "seed=1", "method.target_modules=[query,key,value]"),
       ("method.r=2", "method.alpha=4", "method.lr=2e-2", "seed=2", "method.init=gaussian", "method.rslora=true",
        "method.target_modules=[value,dense]"))


def job_cfg(model_dir, *overrides):
    return compose(f"model.name_or_path={model_dir}", *BASE, *overrides)


def pack_jobs(model_dir, root: Path, jobs=MIX, extra=()) -> list[PackJob]:
    return [PackJob(job_cfg(model_dir, *o, *extra), root / f"{i}", True, {"dir": str(root), "job_num": i,
                                                                          "overrides": list(o)})
            for i, o in enumerate(jobs)]


def run_solo(job: PackJob, run_dir: Path) -> JobRun:
    """What run_job does for one job, without HydraConfig: the sequential reference."""
    import time

    wrapped = JobRun(job.cfg, run_dir, False, {**job.sweep}, time.perf_counter())
    try:
        method, tcfg = wrapped.begin(include_lr=False)
        with Signals(immediate=True):
            fit(job.cfg, method, tcfg, run_dir, wrapped.tracker, wrapped.record, wrapped.attempt)
        wrapped.record.status = "completed"
    except Exception as e:  # noqa: BLE001
        wrapped.fail(e)
    finally:
        wrapped.end()
    return wrapped
