"""The lock-step pack loop: K LoRA jobs trained together over one frozen base, in one process.

Each job is what it is alone (harness.train's `Training`: its own LoopState, data order, optimizer
and schedule, clipping, NaN handling, evaluations, checkpoints, record and W&B run), and each step
is one forward/backward of the packed model over the concatenation of every live job's
micro-batch (`forward="concat"`), or one per job over its own micro-batch (`"per_job"`: no job's
rows are padded to another's length, which on a CPU costs more than one larger GEMM saves; `"auto"`
picks concat on CUDA, per_job elsewhere). With concat, one backward over the sum of the jobs'
losses gives each job exactly its own gradient: their trainable parameters are disjoint and every
row of the batch only ever meets its own job's parameters. A job that fails (a NaN loss, an error in its own finalize) fails alone and
leaves the pack; a signal preempts every job, each with its checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.data import build_task
from harness.models import load_tokenizer
from harness.scoring import loss_items, summed_loss
from harness.telemetry import reset_peak_rss
from harness.train import JobRun, Preempted, Signals, StepHook, Training, finalize, seed_everything, setup, to_device

from .layer import PackedModel, concat_batches, head_names, share_frozen
from .prune import PruneConfig, greater_is_better, survivors

log = logging.getLogger("harness")

FORWARDS = ("auto", "concat", "per_job")


@dataclass
class PackJob:
    """One job of a pack as the launcher composed it: its config and where its run goes."""
    cfg: DictConfig
    run_dir: Path
    multirun: bool
    sweep: dict
    include_lr: bool = False


def run_pack(jobs: list[PackJob], pack_id: str, prune: PruneConfig | None = None,
             on_step: StepHook | None = None, forward: str = "auto") -> list[float]:
    """Train the jobs as one pack; every job ends with its own record. Returns each job's main
    validation metric (NaN unless completed or pruned). Raises Preempted after recording every
    job as preempted when a signal arrived. `forward`: one of FORWARDS (module docstring)."""
    t0 = time.perf_counter()
    reset_peak_rss()
    wrapped = [JobRun(j.cfg, j.run_dir, j.multirun, j.sweep, t0) for j in jobs]
    values = [w.skipped if w.skipped is not None else float("nan") for w in wrapped]
    live: dict[int, tuple[JobRun, Training]] = {}
    with Signals(immediate=True):
        try:
            _build(jobs, wrapped, live, pack_id, forward)
            if live:
                _train(live, prune, on_step)
        except Preempted as e:
            for job, _ in live.values():
                _drop(job, e)
            raise
    for k, w in enumerate(wrapped):
        if w.skipped is None:
            values[k] = w.value()
    return values


def resolve_forward(forward: str, device: torch.device) -> str:
    """FORWARDS' "auto" made concrete for `device`: one GEMM over every job's rows pays on a GPU,
    where one job's batch leaves it idle; not on a CPU, where it only adds cross-job padding."""
    return ("concat" if device.type == "cuda" else "per_job") if forward == "auto" else forward


def _build(jobs, wrapped, live, pack_id, forward) -> None:
    """Each job's Training (its own model, whose frozen tensors become job 0's), then the pack."""
    started = [k for k, w in enumerate(wrapped) if w.skipped is None]
    configs = {}
    for k in started:
        try:
            configs[k] = wrapped[k].begin(include_lr=jobs[k].include_lr)
        except Exception as e:  # noqa: BLE001 - a bad job fails alone
            _drop(wrapped[k], e)
    if not configs:
        return
    first = jobs[next(iter(configs))].cfg
    seed_everything(first.seed)
    tokenizer = load_tokenizer(first.model)  # one tokenizer and one tokenization for the pack
    task = build_task(first.task, tokenizer, seed=first.seed)
    reference = None
    for k, (method, tcfg) in configs.items():
        job = wrapped[k]
        try:
            run = setup(jobs[k].cfg, method, tcfg, jobs[k].run_dir, job.tracker, job.record, job.attempt,
                        tokenizer=tokenizer, task=task)
            if reference is None:
                reference = run.model
            else:
                share_frozen(reference, run.model)  # this job's own copy of the base is freed here
            job.record.packed = {"size": len(configs), "pack_id": pack_id,
                                 "forward": resolve_forward(forward, run.device)}
            live[k] = (job, run)
        except Exception as e:  # noqa: BLE001
            _drop(job, e)
    if live:
        models = [run.model for _, run in live.values()]
        packed = PackedModel(models, head_names(models[0]))
        for index, (_, run) in enumerate(live.values()):
            run.packed, run.pack_index = packed, index  # the job's rows go through adapters number `index`
        log.info("pack %s: %d jobs over one base", pack_id, len(live))


def _drop(job: JobRun, e: BaseException) -> None:
    """The job leaves the pack with `e` recorded (failed, or preempted) and its record written."""
    job.fail(e)
    job.end()


def _train(live: dict, prune: PruneConfig | None, on_step: StepHook | None) -> None:
    any_run = next(iter(live.values()))[1]
    packed, kind, device, autocast = any_run.packed, any_run.task.kind, any_run.device, any_run.autocast
    pad = any_run.task.collate.pad_token_id
    concat = any_run.record.packed["forward"] == "concat"
    for _, run in live.values():
        run.begin_training(quiet=True)
    packed.train()
    done: list[int] = []
    with Signals() as signals:
        while True:
            for _, run in live.values():
                run.timer.start()  # every job's step is the pack's step, its data path included
            micros = {}
            for k, (_, run) in list(live.items()):
                micro = run.next_micro()
                if micro is None:
                    done.append(k)
                else:
                    micros[k] = micro
            if not micros:
                break
            rows = {k: (live[k][1].pack_index, m) for k, m in micros.items()}
            losses = {}
            for group in ([rows] if concat else [{k: r} for k, r in rows.items()]):
                losses.update(_forward_backward(packed, group, kind, device, autocast, pad))
            norms = {}
            for k in micros:
                job, run = live[k]
                try:
                    norms[k] = run.clip_and_update(losses[k])
                except Exception as e:  # noqa: BLE001 - a diverging job fails alone and leaves the pack
                    del live[k]
                    _drop(job, e)
            stopped = {k: live[k][1].stop_timer(micros[k]) for k in norms}
            for k, (tokens, dt) in stopped.items():
                job, run = live[k]
                try:
                    run.end_step(losses[k], norms[k], tokens, dt, on_step)
                except Exception as e:  # noqa: BLE001
                    del live[k]
                    _drop(job, e)
            if signals.received is not None:
                for job, run in list(live.values()):
                    try:
                        run.preempt(signals.received)
                    except Preempted as e:
                        _drop(job, e)
                live.clear()
                raise Preempted(f"signal {signals.received}: every job of the pack checkpointed")
            if prune is not None:
                _rung(live, prune)
    for k in done:
        if k in live:
            job, run = live.pop(k)
            _finish(job, run, "completed")


def _forward_backward(packed: PackedModel, micros: dict, kind, device, autocast, pad) -> dict[int, float]:
    """One step's micro-batches of these jobs through the pack as one batch; returns each job's step loss.
    Each job's loss is its own summed loss over its items (examples or response tokens) divided by
    its own item count, as `accumulate_gradients` computes it alone."""
    items = {k: sum(loss_items(kind, b["labels"]) for b in m) for k, (_, m) in micros.items()}
    totals = {k: torch.zeros((), device=device) for k in micros}
    for i in range(max(len(m) for _, m in micros.values())):
        order = [k for k, (_, m) in micros.items() if i < len(m)]
        parts = [micros[k][1][i] for k in order]
        batch = to_device(concat_batches(parts, pad), device)
        labels = batch.pop("labels")
        packed.set_rows([(micros[k][0], len(p["labels"])) for k, p in zip(order, parts)])
        with autocast():
            logits = packed(**batch).logits
        step_loss, start = 0.0, 0
        for k, part in zip(order, parts):
            rows = len(part["labels"])
            loss = summed_loss(kind, logits[start:start + rows], labels[start:start + rows]) / items[k]
            totals[k] += loss.detach()
            step_loss = step_loss + loss
            start += rows
        step_loss.backward()  # disjoint parameters: each job receives exactly its own gradient
    return {k: float(t) for k, t in totals.items()}


def _rung(live: dict, prune: PruneConfig) -> None:
    """At a rung step, score every live job (its own evaluation at this step) and stop the worst."""
    steps = {run.state.step for _, run in live.values()}
    if len(live) < 2 or len(steps) != 1:
        return
    step = steps.pop()
    any_run = next(iter(live.values()))[1]
    if not prune.is_rung(step) or step >= any_run.total_steps:
        return
    scores = {}
    for k, (_, run) in live.items():
        if not run.state.evals or run.state.evals[-1]["step"] != step:
            run.evaluate(step)
        value = run.state.evals[-1].get(prune.key)
        if value is None:
            raise ValueError(f"hydra.launcher.prune.metric={prune.metric} is invalid: the evaluation has "
                             f"{', '.join('eval/' + m for m in run.state.evals[-1] if m not in ('step', 'epoch'))}")
        scores[k] = float(value)
    keep = survivors(scores, prune.keep, greater_is_better(prune.key, any_run.task))
    for k in sorted(set(scores) - keep):
        job, run = live.pop(k)
        log.info("pruned %s at step %d (%s %.4f)", job.record.run_name, step, prune.metric, scores[k])
        _finish(job, run, "pruned")


def _finish(job: JobRun, run: Training, status: str) -> None:
    """A job leaves the pack at its end (or pruned): finalize alone, record, W&B run finished."""
    try:
        finalize(run, held_out=status != "pruned")
        job.record.status = status
    except Exception as e:  # noqa: BLE001
        job.fail(e)
    job.end()
