"""Jobs in processes of their own, and what a sweep reports at its end.

    python -m harness.train -m method.r=1,2,4,8 seed=0,1,2   # a sweep, one job per combination
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.results import LOST_KEYS, RunRecord, write_results

from .job import job_info

log = logging.getLogger("harness")


_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def run_forked(job, cfg: DictConfig, lost=None) -> float | list[float]:
    """Run one job in a forked child process; return what `job(cfg)` returns there (a float, or a
    list of floats for a pack of jobs, harness/pack). `lost(status, preempted) -> multirun` writes
    the records of a child that died without a word (default: `record_lost_job` for `cfg`).

    Why a process per job: memory figures. Jobs of a sequential sweep otherwise share one process,
    and its resident memory (allocator pools, caches, lazily imported modules) still holds what
    earlier jobs left; resetting the peak (clear_refs) only lowers it to that inflated level. A
    fork costs milliseconds where a fresh interpreter would re-import torch for 5-8 s: the child is
    a copy of this parent, which imported everything but never ran a job, never touched CUDA nor
    torch's thread pool. A single run is forked too, so that it and a sweep job start from the
    same baseline: a forked child does not map the parent's library code until it runs it (fork
    copies no page tables of file mappings), so its RSS starts ~200 MiB below the parent's, and an
    in-process solo run would count that code and a sweep job would not.

    Semantics stay those of in-process jobs: the returned value (the Optuna sweeper's objective)
    comes back through a pipe; a failed sweep job records itself and returns NaN, and the sweep
    goes on; SIGTERM/SIGINT are forwarded to the child, which checkpoints and ends as preempted,
    and then stop the sweep (exit 1). The child logs to the job's log file (Hydra opened it before
    the fork). A child that dies without a word (the kernel's OOM killer) gets a failed record
    written here. Where this process already initialized CUDA (a fork could not use it) or has no
    fork, the job runs in this process, with a warning.
    """
    if not hasattr(os, "fork") or torch.cuda.is_initialized():
        log.warning("job runs in the launcher's own process (%s): its memory figures include what "
                    "ran here before", "no os.fork" if not hasattr(os, "fork") else "CUDA initialized here")
        return job(cfg)
    received: list[int] = []
    child = 0

    def forward(signum, frame):
        received.append(signum)
        if child:
            os.kill(child, signum)

    handlers = {}
    for sig in _FORWARDED:
        try:
            handlers[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: whoever owns the signals delivers them
            pass
    read_fd, write_fd = os.pipe()
    _flush_output()
    _trim_heap()
    # Blocked across the fork: a signal in between waits until the child has its own handlers
    # and the parent knows the child's pid.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with_parent(parent)
        os.close(read_fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        code, value = 1, float("nan")
        try:
            value, code = job(cfg), 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:  # noqa: BLE001 - reported to the parent through the exit code
            traceback.print_exc()
        finally:
            try:
                os.write(write_fd, json.dumps({"value": value, "exit": code}).encode())
            finally:
                _flush_output()
                os._exit(code)
    os.close(write_fd)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    try:
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(child, 0)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    report = json.loads(b"".join(chunks)) if chunks else None
    if report is None:
        multirun = (lost or (lambda st, pre: record_lost_job(cfg, st, pre)))(status, bool(received))
        if received or not multirun:
            sys.exit(1)
        return float("nan")
    if report["exit"] != 0 or received:
        sys.exit(report["exit"] or 1)  # preempted (or stopped by a signal): the sweep stops too
    value = report["value"]
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGKILL when its parent dies, so killing the job's
    process (kill -9, a crash) never leaves its child training on as an orphan."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _trim_heap() -> None:
    """Free what this process's heap holds but no longer uses (glibc malloc_trim), so a child does not
    start with spare heap room that a single run's child lacks (a sweep's parent composed and
    dropped every job's config): each child then grows its resident memory the same way. (No
    gc.collect first: a full collection of what torch and transformers import takes ~0.4 s.)"""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _flush_output() -> None:
    """Flush what this process buffered, so a fork does not write it twice and an exit does not lose it."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for handler in logging.getLogger().handlers:
        handler.flush()


def record_lost_job(cfg: DictConfig, status: int, preempted: bool, where: tuple | None = None) -> bool:
    """The child ended without reporting (killed by a signal, or a crash in native code): it could
    not write its own record, so say what happened in one. Returns whether this is a sweep job.
    `where`: (run folder, multirun, sweep entry) when there is no HydraConfig (a pack's jobs)."""
    run_dir, multirun, sweep = where or job_info(cfg)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        reason = f"job process killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        reason = f"job process exited with code {os.waitstatus_to_exitcode(status)} without a result"
    record = RunRecord.start(cfg, sweep)
    record.status, record.error = "preempted" if preempted else "failed", reason
    write_results(run_dir, record.to_dict(LOST_KEYS))
    log.error("%s: %s", record.status, reason)
    return multirun


class SweepReport(Callback):
    """After a multirun: list the jobs that did not complete, and exit non-zero if any."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = []
        for path in sorted(Path(config.hydra.sweep.dir).glob("*/results.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                failed.append((path.parent.name, "unreadable", str(e)))
                continue
            if rec.get("status") not in ("completed", "pruned"):  # pruned: stopped by design (harness/pack)
                failed.append((path.parent.name, rec.get("status"), rec.get("error")))
        if failed:
            print(f"\n{len(failed)} job(s) did not complete:", file=sys.stderr)
            for name, status, error in failed:
                print(f"  {name}: {status}: {error}", file=sys.stderr)
            sys.exit(1)
