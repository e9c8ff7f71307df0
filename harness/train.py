"""harness-train: fine-tune one model on one task with LoRA or full fine-tuning, and record the result.

LoRA and full fine-tuning share every line of this loop; `method` only decides what is trainable
(`prepare_model`) and each method's learning rate comes from its own config. Every run, completed or
not, ends with `results.json` in its output folder (see harness/results.py).

    python -m harness.train                                   # default: LoRA r=8 q+v, MiniLM, Rotten Tomatoes
    python -m harness.train method=full
    python -m harness.train -m method.r=1,2,4,8 seed=0,1,2   # a sweep, one job per combination
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

# Ask NVML, not the CUDA runtime, whether a GPU exists: the runtime's device count poisons fork()
# (torch then refuses CUDA in a forked child), and sweep jobs run in forked children (run_forked).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from harness import checkpoint
from harness.adapters import save_adapter
from harness.config import CONF_DIR, ConfigError, MethodConfig, TrainerConfig, check_overrides, validate
from harness.lora import apply_lora, count_parameters, trainable_state_bytes
from harness.measure import (CudaPeaks, StepTimer, memory_row, memory_summary, model_flops, peak_bf16_flops,
                             release_cuda_memory, reset_peak_rss)
from harness.models import base_checkpoint, load_model, load_tokenizer
from harness.results import (Attempt, finish_attempt, fresh_attempt, git_state, new_run_id, next_attempt,
                             read_results, versions, write_results)
from harness.scoring import evaluate_model, generate_samples, loss_items, summed_loss
from harness.tasks import build_task
from harness.tracking import Tracker, install_secret_redaction, redact, redact_text, redact_yaml_file, run_name

log = logging.getLogger("harness")


class TrainingFailed(RuntimeError):
    """Training stopped on purpose (divergence); the message says where."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can continue later."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' is invalid: no CUDA device is available (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def warmup_linear_decay(warmup: int, total: int):
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at step `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def build_optimizer(tcfg: TrainerConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tcfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(tcfg.optimizer or {"_target_": "torch.optim.AdamW", "_partial_": True})
    if kwargs.get("fused") and not _fused_ok(params):
        kwargs["fused"] = None
    return instantiate(kwargs)([g for g in groups if g["params"]], lr=lr)


def _fused_ok(params) -> bool:
    """Fused AdamW needs floating-point params on one device type that it supports."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def prepare_model(cfg: DictConfig, method: MethodConfig, model: torch.nn.Module) -> list[str]:
    """Decide what trains: LoRA adapters + the model's head modules, or everything for full FT."""
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    lora = method.lora_config(head_modules=cfg.model.get("head_modules") or ())
    try:
        return apply_lora(model, **asdict(lora))
    except ValueError as e:  # a target / modules_to_save / pattern that this model does not have
        raise ConfigError(f"method.{e}") from None


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulate_gradients(model: torch.nn.Module, micro: list[dict], kind: str, device: torch.device,
                         autocast=contextlib.nullcontext) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimizer step; returns the step's loss.

    The loss is summed over every item of the step (examples; response tokens for causal LMs) and
    divided by the step's total item count, so the gradient is the one of a single batch holding
    all the micro-batches: a short last batch, or micro-batches with different numbers of response
    tokens, weigh by their items and not as whole micro-batches (transformers' `num_items_in_batch`
    fix). The summed loss comes from the logits (harness.scoring.summed_loss), not from the model.
    """
    items = sum(loss_items(kind, b["labels"]) for b in micro)  # on the host: no device sync
    total = torch.zeros((), device=device)
    for batch in micro:
        batch = _to(batch, device)
        labels = batch.pop("labels")
        with autocast():
            logits = model(**batch).logits
        loss = summed_loss(kind, logits, labels) / items
        loss.backward()
        total += loss.detach()
    return total


class _Signals:
    """Turn SIGTERM/SIGINT (what Slurm sends before preemption) into a flag the loop checks.

    With `immediate=True` the signal raises Preempted at once instead: what run_job installs around
    the whole of `fit`, so a signal outside the step loop (while loading, or during the final
    evaluation or save, where no step boundary comes to check a flag) still ends the run as
    preempted with its record written and its W&B run finished. The step loop's own handler
    replaces it while steps run and restores it after.
    """

    def __init__(self, immediate: bool = False):
        self.received: int | None = None
        self.immediate = immediate
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum
        if self.immediate:
            raise Preempted(f"signal {signum} outside a training step (while loading, in the final "
                            f"evaluation or while saving)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class BestWeights:
    """The trainable parameters at the best validation evaluation so far (`trainer.select_best`).

    Kept as a CPU copy, so CUDA memory figures are unaffected (it costs host memory: the adapter and
    head for LoRA, a whole model for full FT), and written to `checkpoints/best.safetensors` with
    its step, so a preempted run that resumes still has them. A resume whose checkpoint predates
    the file's step (a new best found after the last checkpoint) finds the step mismatched and
    keeps nothing: the replayed evaluations find that best again, or `metrics.test.best` is null.
    """

    def __init__(self, path: Path):
        self.path, self.step, self.tensors = path, None, None

    # safetensors is imported where used: `python -m harness.train` makes this module __main__, which
    # submitit's cloudpickle then pickles by value, and safetensors' Rust safe_open does not unpickle.
    def keep(self, model: torch.nn.Module, step: int) -> None:
        from safetensors.torch import save_file

        self.tensors = {n: p.detach().to("cpu", copy=True).contiguous()
                        for n, p in model.named_parameters() if p.requires_grad}
        self.step = step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file(self.tensors, tmp, metadata={"step": str(step)})
        os.replace(tmp, self.path)

    def restore(self, step: int) -> bool:
        """Load the file if it holds the weights of `step`; say why not otherwise."""
        from safetensors import safe_open

        if self.path.is_file():
            with safe_open(str(self.path), framework="pt") as f:
                if (f.metadata() or {}).get("step") == str(step):
                    self.tensors, self.step = {k: f.get_tensor(k) for k in f.keys()}, step
                    return True
        log.warning("select_best: no saved weights for the best step %d so far; a later best replaces it, "
                    "else metrics.test.best stays null", step)
        return False

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model holds the kept weights inside the block and its own again after it."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        own = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.tensors[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(own[n])


def _save_trained(model, method: MethodConfig, cfg: DictConfig, tokenizer, folder: Path) -> None:
    """LoRA: the adapter in peft's format; full FT: the whole model with its tokenizer."""
    if method.name == "lora":
        save_adapter(model, folder, base_model_name_or_path=base_checkpoint(cfg.model))
    else:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The progress bar as log lines, for runs without a terminal:

        step 40/323 (12%)  loss 0.6402  1,187 tokens/s  elapsed 0:00:31  ETA 0:03:40

    loss and tokens/s are the logging window's (the row metrics.jsonl gets); the ETA extrapolates
    this process's wall time per step, evaluations included, over the steps left."""

    def __init__(self, total: int, start_step: int):
        self.total, self.start_step, self.t0 = total, start_step, time.perf_counter()

    def log(self, step: int, loss: float | None, tokens_per_s: float) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(1, step - self.start_step) * (self.total - step)
        loss_text = f"{loss:.4f}" if loss is not None else "n/a"
        log.info("step %d/%d (%d%%)  loss %s  %s tokens/s  elapsed %s  ETA %s", step, self.total,
                 100 * step // self.total, loss_text, f"{tokens_per_s:,.0f}", _hms(elapsed), _hms(eta))


def fit(cfg: DictConfig, method: MethodConfig, tcfg: TrainerConfig, run_dir: Path, tracker: Tracker,
        record: dict, attempt: Attempt | None = None) -> None:
    """Train and evaluate; fill `record` in place as results become known (so a failure keeps them).

    `attempt` (from run_job) says which checkpoints to continue from and what they must carry;
    None trains from step 0 without resuming.
    """
    attempt = attempt or Attempt(run_dir, 1, tracker.metrics_path, None)
    device = pick_device(tcfg.device)
    record["device"] = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    autocast = _autocast(device, tcfg.precision)

    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    task = build_task(cfg.task, tokenizer, seed=cfg.seed)
    seed_everything(cfg.seed)  # the model init and LoRA's A must not depend on what data loading drew
    model = load_model(cfg.model, task.kind, task.num_labels, tokenizer)
    adapted = prepare_model(cfg, method, model)
    if adapted:
        log.info("LoRA on %d modules: %s", len(adapted), ", ".join(adapted[:6]) + (" ..." if len(adapted) > 6 else ""))
        targets = model.lora_config.target_modules  # "query+value" resolved for this model family
        record["lora"]["target_modules"] = list(targets) if isinstance(targets, tuple) else targets
    model.to(device)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    record["params"] = count_parameters(model)
    log.info("trainable params %(trainable)s / %(total)s (%(trainable_pct).3f%%)", record["params"])

    optimizer = build_optimizer(tcfg, model, method.lr)
    micro_per_epoch = len(task.train_batches(tcfg.batch_size, cfg.seed, 0))
    steps_per_epoch = math.ceil(micro_per_epoch / tcfg.grad_accum)
    total_steps = tcfg.max_steps or math.ceil(tcfg.epochs * steps_per_epoch)
    warmup = int(tcfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total_steps))

    ckpt_root = run_dir / "checkpoints"
    loop = {"step": 0, "best": None, "evals": [], "skipped_steps": 0}
    rng = None
    if attempt.checkpoints:
        path, state = checkpoint.load_newest(attempt.checkpoints, model, optimizer, scheduler,
                                             hint="add trainer.restart=true to start afresh")
        loop, rng = state["loop"], state["rng"]
        log.info("resumed from %s (step %d of %d)", path, loop["step"], total_steps)
        if tracker.rewind(loop["step"]):
            log.info("dropped the rows after step %d from %s (logged again now)", loop["step"], tracker.metrics_path)
    # One record per run, however many processes it took: each process is a segment; the
    # checkpoint carries the earlier segments and the step timer's sums (see save_checkpoint).
    prior = loop.get("segments", [])
    segment = {"from_step": loop["step"], "to_step": None, "train_time_s": None, "wall_time_s": None,
               "git_commit": (record.get("git") or {}).get("commit")}
    record["segments"] = prior + [segment]

    flops = model_flops(model)
    peaks = CudaPeaks(device)
    peaks.start()  # after the model is loaded: the CUDA peaks are those of training
    timer = StepTimer(tcfg.timing_warmup_steps, device)
    timer.load_state_dict(loop.get("timer") or {})
    prior_train_s = sum(s["train_time_s"] or 0.0 for s in prior)

    def segments_now() -> list[dict]:
        return prior + [{**segment, "to_step": step, "train_time_s": timer.total_s - prior_train_s,
                         "wall_time_s": time.perf_counter() - attempt.started}]

    def save_checkpoint() -> Path:
        loop["timer"], loop["segments"] = timer.state_dict(), segments_now()
        tracker.sync()  # the curve up to this step is on disk whenever the checkpoint is
        return checkpoint.save(ckpt_root, step, model, optimizer, scheduler, loop, tcfg.keep_checkpoints,
                               meta=attempt.meta())
    main_metric, greater = task.main_metric, task.greater_is_better
    best_weights = BestWeights(ckpt_root / "best.safetensors") if tcfg.select_best else None
    if best_weights is not None and loop["best"] is not None:  # resumed: the best so far is on disk
        best_weights.restore(loop["best"]["step"])

    def run_eval(step: int) -> dict:
        with peaks.evaluation(), torch.no_grad():
            metrics = evaluate_model(model, task, tcfg.eval_batch_size, device, autocast=autocast)
        epoch = step / steps_per_epoch
        loop["evals"].append({"step": step, "epoch": epoch, **metrics})
        best = loop["best"]
        value = metrics.get(main_metric)
        if value is not None and (best is None or (value > best[main_metric] if greater else value < best[main_metric])):
            loop["best"] = {"step": step, "epoch": epoch, **metrics}
            if best_weights is not None:
                best_weights.keep(model, step)
        tracker.log({"epoch": epoch, **{f"eval/{k}": v for k, v in metrics.items()}}, step=step)
        log.info("eval @ step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))
        return metrics

    step = loop["step"]
    window = loop.setdefault("window", {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0})
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=record["run_name"], dynamic_ncols=True, disable=None)
    # No terminal (Slurm, nohup, CI): tqdm turns the bar off, so the job log gets a progress line at
    # every logging step instead, and `tail -f train.log` shows the run is alive.
    progress = Progress(total_steps, step) if bar.disable or not sys.stdout.isatty() else None
    with _Signals() as signals:
        while step < total_steps:
            epoch = step // steps_per_epoch
            skip = (step % steps_per_epoch) * tcfg.grad_accum  # resuming mid-epoch
            timer.start()  # the loader's set-up (worker start-up) is data time of the next step
            batches = iter(task.train_loader(tcfg.batch_size, cfg.seed, epoch, skip_batches=skip,
                                             num_workers=tcfg.num_workers))
            if rng is not None:
                checkpoint.set_rng_state(rng)
                rng = None
            while step < total_steps:
                timer.start()  # the step: fetch + collate, forward/backward, update
                micro = [b for _, b in zip(range(tcfg.grad_accum), batches)]
                if not micro:
                    break  # epoch exhausted; the clock runs on into the next epoch's first step
                timer.data_ready()
                loss_value = float(accumulate_gradients(model, micro, task.kind, device, autocast))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], tcfg.max_grad_norm or float("inf")))
                if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
                    if tcfg.on_nan == "fail":
                        raise TrainingFailed(f"non-finite loss/grad norm ({loss_value}/{grad_norm}) at step {step + 1}")
                    log.warning("non-finite loss at step %d: step skipped", step + 1)
                    loop["skipped_steps"] += 1
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                else:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                tokens = sum(int(b["attention_mask"].sum()) for b in micro)
                padded = sum(b["attention_mask"].numel() for b in micro)
                step_flops = sum(flops.of_batch(b["attention_mask"]) for b in micro) if flops else 0.0
                dt = timer.stop(tokens, padded, sum(len(b["attention_mask"]) for b in micro), step_flops)
                step += 1
                loop["step"] = step
                bar.update(1)
                if math.isfinite(loss_value):
                    window["loss"] += loss_value
                    window["n"] += 1
                window["tokens"] += tokens
                window["time"] += dt
                if step % tcfg.log_every == 0 or step == total_steps:
                    row = {"epoch": step / steps_per_epoch,
                           "train/loss": window["loss"] / window["n"] if window["n"] else None,
                           "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                           "train/tokens_per_s": window["tokens"] / window["time"],
                           **memory_row(device, peaks)}
                    tracker.log(row, step=step)
                    loop["train_loss"] = row["train/loss"]
                    bar.set_postfix(loss=row["train/loss"], tok_s=f"{row['train/tokens_per_s']:.0f}")
                    if progress is not None:
                        progress.log(step, row["train/loss"], row["train/tokens_per_s"])
                    window = loop["window"] = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
                end_of_epoch = step % steps_per_epoch == 0
                if (tcfg.eval_every and step % tcfg.eval_every == 0) or (not tcfg.eval_every and end_of_epoch):
                    run_eval(step)
                if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0 and step < total_steps:
                    save_checkpoint()
                if signals.received is not None:
                    path = save_checkpoint()
                    record["segments"] = loop["segments"]
                    raise Preempted(f"signal {signals.received} at step {step}; checkpoint saved at {path}")
    bar.close()
    record["segments"] = segments_now()
    if tcfg.checkpoint_every and not (ckpt_root / f"{checkpoint.PREFIX}{step:07d}").exists():
        save_checkpoint()  # training is done: a preemption from here on only redoes the final evaluation
    if not loop["evals"] or loop["evals"][-1]["step"] != step:
        log.info("final evaluation at step %d", step)
        run_eval(step)

    final = {k: v for k, v in loop["evals"][-1].items() if k not in ("step", "epoch")}
    best = loop["best"] or loop["evals"][-1]
    have_best = best_weights is not None and best_weights.step == best["step"]
    record["metrics"] = {
        "main_metric": main_metric, "greater_is_better": greater, "final": final,
        "best": {k: v for k, v in best.items() if k not in ("step", "epoch")},
        "best_step": best["step"], "best_epoch": best["epoch"],
        "train_loss": loop.get("train_loss"), "skipped_steps": loop["skipped_steps"],
        "test": None,
    }
    # Selection (learning rate, best step) happens on the validation split; the test split is scored
    # once, here, and only reported.
    if task.test is not None:
        def score_test():
            with peaks.evaluation(), torch.no_grad():
                return evaluate_model(model, task, tcfg.eval_batch_size, device, autocast=autocast, split="test")

        test_final, test_best = score_test(), None
        if have_best:
            with best_weights.swapped_in(model):
                test_best = test_final if best["step"] == step else score_test()  # the same weights: same numbers
        record["metrics"]["test"] = {"final": test_final, "best": test_best,
                                     "best_step": best["step"] if have_best else None}
        log.info("test (final weights): %s", "  ".join(f"{k}={v:.4f}" for k, v in test_final.items() if v is not None))
    peak_flops = peak_bf16_flops(record["device"]) if device.type == "cuda" else None
    record["throughput"] = {**timer.summary(peak_flops), "peak_flops": peak_flops}
    record["memory"] = memory_summary(device, trainable_state_bytes(model), peaks)
    record["steps"], record["epochs"] = step, step / steps_per_epoch
    record["train_time_s"] = timer.total_s  # training steps, data path included, every segment of a resumed run
    if task.kind == "causal_lm":
        with peaks.evaluation():
            record["generations"] = generate_samples(model, tokenizer, task)
    if tcfg.save_model:
        kind = "adapter" if method.name == "lora" else "model"
        _save_trained(model, method, cfg, tokenizer, run_dir / kind)
        if have_best:
            with best_weights.swapped_in(model):
                _save_trained(model, method, cfg, tokenizer, run_dir / f"{kind}_best")
    # Checkpoints exist to resume; once completed, the same command must train afresh, not resume.
    shutil.rmtree(ckpt_root, ignore_errors=True)


def _job_info(cfg: DictConfig) -> tuple[Path, bool, dict]:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = {"dir": hc.sweep.dir if multirun else None, "job_num": hc.job.num if multirun else None,
             "overrides": list(hc.overrides.task)}
    return Path(hc.runtime.output_dir), multirun, sweep


def _log_traceback_to_file(text: str) -> None:
    """Full trace in the job log file only; the console gets one line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(redact_text(text))
            handler.flush()


def _redact_hydra_files(run_dir: Path, sweep: dict) -> None:
    """Hydra writes the overrides verbatim into `.hydra/` (and a sweep's `multirun.yaml`) before
    the job starts; rewrite them with secrets redacted before anything else happens."""
    files = [run_dir / ".hydra" / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if sweep["dir"]:
        files.append(Path(sweep["dir"]) / "multirun.yaml")
    for path in files:
        try:
            redact_yaml_file(path)
        except Exception as e:  # noqa: BLE001 - a file we cannot parse is left as Hydra wrote it
            log.warning("could not redact %s (%s: %s)", path, type(e).__name__, e)


def _begin_attempt(cfg: DictConfig, config: dict, run_dir: Path, git: dict, started: float) -> Attempt:
    """Continue the attempt of the newest readable checkpoint, or start a new attempt.

    Continuing needs the config the checkpoints were trained with: a changed value stops the job
    with one line naming it (ConfigError). `trainer.restart=true` starts afresh instead, setting
    the checkpoints and the unfinished attempt's curve aside in attempts/<n>/.
    """
    restart = OmegaConf.select(cfg, "trainer.restart", default=False)
    if not isinstance(restart, bool):
        raise ConfigError(f"trainer.restart={restart!r} is invalid: must be true or false")
    flat = checkpoint.resume_config(config)
    common = dict(started=started, config=flat, fingerprint=checkpoint.fingerprint(flat), git=git)
    found = checkpoint.resumable(run_dir / "checkpoints")
    if found and not restart:
        path, meta = found[0]
        if meta:
            checkpoint.check_config(path, meta, flat, restart_hint="trainer.restart=true")
        else:
            log.warning("checkpoint %s has no meta.json (an older harness): resuming without checking the config", path)
        old = (meta.get("git") or {}).get("commit")
        if old and old != git.get("commit"):
            log.warning("the code changed since checkpoint %s (commit %s, now %s)", path.name, old[:12],
                        (git.get("commit") or "unknown")[:12])
        return Attempt(run_dir, meta.get("attempt") or next_attempt(run_dir), run_dir / meta.get("curve", "metrics.jsonl"),
                       meta.get("wandb_run_id") or new_run_id(), [p for p, _ in found], **common)
    if found:
        log.info("trainer.restart=true: starting afresh; the checkpoints from step %d are set aside", found[0][1].get("step", -1))
    number, curve = fresh_attempt(run_dir, found[0][1] if found else None)
    return Attempt(run_dir, number, curve, new_run_id(), [], **common)


def job_run_name(cfg: DictConfig) -> str:
    """The run's display name; never the error for a bad method value (method.alpha=abc), which
    validate() reports in its own words a moment later."""
    try:
        return run_name(cfg.method, cfg.get("seed"))
    except (ValueError, TypeError):
        return f"{cfg.method.get('name')}-seed{cfg.get('seed')}"


def run_job(cfg: DictConfig) -> float:
    """One Hydra job. Returns the main eval metric (what the Optuna sweeper optimizes), NaN on failure."""
    t0 = time.perf_counter()
    reset_peak_rss()
    run_dir, multirun, sweep = _job_info(cfg)
    install_secret_redaction()  # already done by main(); a launcher's worker process may not run it
    _redact_hydra_files(run_dir, sweep)
    previous = read_results(run_dir)
    # `is True`: a bad value (resume=maybe) must not skip anything; validate() rejects it below.
    if cfg.get("resume") is True and previous and previous.get("status") == "completed":
        log.info("resume=true: %s already completed, skipping", run_dir)
        return float(previous["metrics"]["final"].get(previous["metrics"]["main_metric"]) or float("nan"))

    method_cfg = cfg.method
    record = {
        "status": "running", "error": None, "method": method_cfg.get("name"), "model": cfg.model.get("name"),
        "task": cfg.task.get("name"), "seed": cfg.get("seed"), "run_name": None, "lr": method_cfg.get("lr"),
        "lora": None, "params": None, "metrics": None, "throughput": None, "memory": None,
        "versions": versions(), "git": git_state(), "device": None, "sweep": sweep,
        "config": redact(OmegaConf.to_container(cfg, resolve=False)), "traceback": None,
        "attempt": None, "segments": None,
    }
    tracker = attempt = None
    try:
        config = record["config"] = redact(OmegaConf.to_container(cfg, resolve=True))
        record["run_name"] = job_run_name(cfg)
        attempt = _begin_attempt(cfg, config, run_dir, record["git"], t0)
        group = cfg.logger.get("group") or (cfg.sweep_name if multirun else None)
        # Started before validation, so a job with a bad value shows up as a failed W&B run too.
        tracker = Tracker.start(cfg.logger, run_dir, record["run_name"], group=group, job_type=record["method"],
                                config={**config, "versions": record["versions"], "git": record["git"]},
                                tags=[record["method"], record["model"], record["task"]],
                                main_metric=cfg.task.get("main_metric"),
                                greater_is_better=cfg.task.get("greater_is_better", True),
                                metrics_path=attempt.curve, run_id=attempt.wandb_run_id)
        method, tcfg = validate(cfg)
        if method.name == "lora":
            record["lora"] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(method).items()
                              if k in ("r", "alpha", "target_modules", "dropout", "init", "rslora")}
        seed_everything(cfg.seed)
        with _Signals(immediate=True):  # outside the step loop a signal stops at once, as preempted
            fit(cfg, method, tcfg, run_dir, tracker, record, attempt)
        record["status"] = "completed"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, never lost
        record["status"] = "preempted" if isinstance(e, Preempted) else "failed"
        record["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        record["traceback"] = traceback.format_exc()
        _log_traceback_to_file(record["traceback"])
        log.error("%s: %s", record["status"], record["error"])
    finally:
        wall = time.perf_counter() - t0
        if record["segments"]:  # a resumed run's wall time is the sum over its processes
            record["segments"][-1]["wall_time_s"] = wall
            wall = sum(s["wall_time_s"] or 0.0 for s in record["segments"])
        record["wall_time_s"] = wall
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = finish_attempt(run_dir, attempt, record) if attempt else write_results(run_dir, record)
        if tracker is not None:
            tracker.finish(record)
        release_cuda_memory()
        log.info("results: %s", path)
    if record["status"] != "completed":
        # A preempted sweep must stop (the machine is being taken away); a failed job must not stop it.
        if not multirun or record["status"] == "preempted":
            sys.exit(1)
        return float("nan")
    return float(record["metrics"]["final"].get(record["metrics"]["main_metric"]) or float("nan"))


_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def run_forked(job, cfg: DictConfig) -> float:
    """Run one job in a forked child process; return what `job(cfg)` returns there.

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
        multirun = _record_lost_job(cfg, status, preempted=bool(received))
        if received or not multirun:
            sys.exit(1)
        return float("nan")
    if report["exit"] != 0 or received:
        sys.exit(report["exit"] or 1)  # preempted (or stopped by a signal): the sweep stops too
    return float(report["value"])


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


def _record_lost_job(cfg: DictConfig, status: int, preempted: bool) -> bool:
    """The child ended without reporting (killed by a signal, or a crash in native code): it could
    not write its own record, so say what happened in one. Returns whether this is a sweep job."""
    run_dir, multirun, sweep = _job_info(cfg)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        reason = f"job process killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        reason = f"job process exited with code {os.waitstatus_to_exitcode(status)} without a result"
    record = {"status": "preempted" if preempted else "failed", "error": reason,
              "method": cfg.method.get("name"), "model": cfg.model.get("name"), "task": cfg.task.get("name"),
              "seed": cfg.get("seed"), "sweep": sweep, "config": redact(OmegaConf.to_container(cfg, resolve=False))}
    write_results(run_dir, record)
    log.error("%s: %s", record["status"], reason)
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
            if rec.get("status") != "completed":
                failed.append((path.parent.name, rec.get("status"), rec.get("error")))
        if failed:
            print(f"\n{len(failed)} job(s) did not complete:", file=sys.stderr)
            for name, status, error in failed:
                print(f"  {name}: {status}: {error}", file=sys.stderr)
            sys.exit(1)


# An absolute path: a relative one resolves against the `harness` package when run as a console script.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    # Imported here, once, and not lazily inside each job: every job runs in a forked child
    # (run_forked), and `evaluate` (with what it pulls in) costs ~3 s to import.
    import evaluate  # noqa: F401

    return run_forked(run_job, cfg)  # every job, single or in a sweep, in a process of its own


def main():
    """harness-train. Log lines are redacted from the start: Hydra's launcher logs every job's
    overrides, secrets included, before any job runs. What Hydra itself would reject while composing
    (an unknown group option or key, an unparsable override) is reported in one line first; then
    Hydra runs the job(s)."""
    install_secret_redaction()
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"harness-train: error: {redact_text(str(e))}", file=sys.stderr)
        sys.exit(1)
    except Exception:  # noqa: BLE001 - a check that cannot decide must not block: Hydra reports it then
        log.debug("check_overrides could not decide", exc_info=True)
    return _hydra_main()


if __name__ == "__main__":
    main()
