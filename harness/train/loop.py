"""The training loop: setup, one loop, finalize.

LoRA and full fine-tuning share every line of it; `method` only decides what is trainable
(`prepare_model`) and each method's learning rate comes from its own config. `fit` fills the run's
RunRecord as results become known, so a run that fails keeps what it had.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from harness.config import ConfigError, MethodConfig, TrainerConfig
from harness.lora import apply_lora, count_parameters, trainable_state_bytes
from harness.telemetry import CudaPeaks, StepTimer, memory_row, memory_summary, model_flops, peak_bf16_flops
from harness.models import load_model, load_tokenizer
from harness.results import Attempt, RunRecord
from harness.scoring import evaluate_model, generate_samples
from harness.data import build_task
from harness.forgetting import ForgetProbe
from harness.telemetry import Tracker

from . import checkpoint
from .optim import build_optimizer, warmup_linear_decay
from .progress import Progress
from .runtime import (Preempted, Signals, TrainingFailed, attention_for, autocast, effective_precision, pick_device,
                      seed_everything)
from .state import LoopState, empty_window
from .step import StepEnd, StepHook, accumulate_gradients
from .weights import BestWeights, save_trained

log = logging.getLogger("harness")


def prepare_model(cfg: DictConfig, method: MethodConfig, model: torch.nn.Module) -> list[str]:
    """Decide what trains: LoRA adapters + the model's head modules, or everything for full FT.
    `method.lora` says it all; `cfg.model.head_modules` fills in `modules_to_save: null`."""
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    lora = method.with_head_modules(cfg.model.get("head_modules") or ()).lora
    try:
        return apply_lora(model, lora)
    except ValueError as e:  # a target / modules_to_save / pattern that this model does not have
        raise ConfigError(f"method.{e}") from None


def build_model(cfg: DictConfig, method: MethodConfig, tcfg: TrainerConfig, task, tokenizer,
                device: torch.device) -> tuple[torch.nn.Module, list[str]]:
    """The model as it trains: loaded with attention_for's kernel, `prepare_model`, on its device, with gradient
    checkpointing when trainer.gradient_checkpointing is set; and the LoRA-adapted modules' names ([] for full FT)."""
    attention = attention_for(cfg.model.get("attn_implementation"), device, tcfg.precision)
    model = load_model(cfg.model, task.kind, task.num_labels, tokenizer, attn_implementation=attention)
    adapted = prepare_model(cfg, method, model)
    model.to(device)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, adapted


class Training:
    """What one `fit` holds while it runs; `setup` builds it, `train` steps it, `finalize` reports."""

    def evaluate(self, step: int) -> dict:
        """Score the validation split; keep the best evaluation (and its weights, with select_best)."""
        with self.peaks.evaluation(), torch.no_grad():
            metrics = evaluate_model(self.model, self.task, self.tcfg.eval_batch_size, self.device,
                                     autocast=self.autocast)
        epoch = step / self.steps_per_epoch
        state, key = self.state, self.task.main_metric
        state.evals.append({"step": step, "epoch": epoch, **metrics})
        value, best = metrics.get(key), state.best
        if value is not None and (best is None or (value > best[key] if self.task.greater_is_better
                                                   else value < best[key])):
            state.best = {"step": step, "epoch": epoch, **metrics}
            if self.best_weights is not None:
                self.best_weights.keep(self.model, step)
        self.tracker.log({"epoch": epoch, **{f"eval/{k}": v for k, v in metrics.items()}}, step=step)
        log.info("eval @ step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))
        return metrics

    def begin_training(self, quiet: bool = False) -> None:
        """Before the first step: trainable parameters, train mode, the progress display (none
        when `quiet`: a pack reports for all its jobs)."""
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        self.batches = None
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc=self.record.run_name,
                        dynamic_ncols=True, disable=True if quiet else None)
        # No terminal (Slurm, nohup, CI): tqdm turns the bar off, so the job log gets a progress line at
        # every logging step instead, and `tail -f train.log` shows the run is alive.
        self.progress = (Progress(self.total_steps, self.state.step)
                         if not quiet and (self.bar.disable or not sys.stdout.isatty()) else None)

    def next_micro(self) -> list[dict] | None:
        """The next optimizer step's micro-batches, None once training is done. Starts the step
        timer: fetching and collating are part of the step."""
        state, tcfg = self.state, self.tcfg
        while state.step < self.total_steps:
            if self.batches is None:
                epoch = state.step // self.steps_per_epoch
                skip = (state.step % self.steps_per_epoch) * tcfg.grad_accum  # resuming mid-epoch
                self.timer.start()  # the loader's set-up (worker start-up) is data time of the next step
                self.batches = iter(self.task.train_loader(tcfg.batch_size, self.cfg.seed, epoch, skip_batches=skip,
                                                           num_workers=tcfg.num_workers))
                if self.rng is not None:
                    checkpoint.set_rng_state(self.rng)
                    self.rng = None
            self.timer.start()  # the step: fetch + collate, forward/backward, update
            micro = [b for _, b in zip(range(tcfg.grad_accum), self.batches)]
            if micro:
                self.timer.data_ready()
                return micro
            self.batches = None  # epoch exhausted; the clock runs on into the next epoch's first step
        return None

    def clip_and_update(self, loss: float) -> float:
        """Clip this run's gradients by their own norm, then step the optimizer and schedule, or
        handle a non-finite step (trainer.on_nan: fail raises TrainingFailed, skip drops it).
        Returns the gradient norm before clipping."""
        tcfg, state = self.tcfg, self.state
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, tcfg.max_grad_norm or float("inf")))
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            if tcfg.on_nan == "fail":
                raise TrainingFailed(f"non-finite loss/grad norm ({loss}/{grad_norm}) at step {state.step + 1}")
            log.warning("non-finite loss at step %d: step skipped", state.step + 1)
            state.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        else:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def stop_timer(self, micro: list[dict]) -> tuple[int, float]:
        """End the step's clock; returns (real tokens of the step, its seconds)."""
        tokens = sum(int(b["attention_mask"].sum()) for b in micro)
        padded = sum(b["attention_mask"].numel() for b in micro)
        step_flops = sum(self.flops.of_batch(b["attention_mask"]) for b in micro) if self.flops else 0.0
        return tokens, self.timer.stop(tokens, padded, sum(len(b["attention_mask"]) for b in micro), step_flops)

    def end_step(self, loss: float, grad_norm: float, tokens: int, dt: float, on_step: StepHook | None = None) -> None:
        """After the update: count the step, log its row, evaluate and checkpoint when due, call the hook."""
        tcfg, state = self.tcfg, self.state
        state.step += 1
        step = state.step
        self.bar.update(1)
        window = state.window
        if math.isfinite(loss):
            window["loss"] += loss
            window["n"] += 1
        window["tokens"] += tokens
        window["time"] += dt
        row = None
        if step % tcfg.log_every == 0 or step == self.total_steps:
            row = {"epoch": step / self.steps_per_epoch,
                   "train/loss": window["loss"] / window["n"] if window["n"] else None,
                   "train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                   "train/tokens_per_s": window["tokens"] / window["time"],
                   **memory_row(self.device, self.peaks)}
            self.tracker.log(row, step=step)
            state.train_loss = row["train/loss"]
            self.bar.set_postfix(loss=row["train/loss"], tok_s=f"{row['train/tokens_per_s']:.0f}")
            if self.progress is not None:
                self.progress.log(step, row["train/loss"], row["train/tokens_per_s"])
            state.window = empty_window()
        end_of_epoch = step % self.steps_per_epoch == 0
        if (tcfg.eval_every and step % tcfg.eval_every == 0) or (not tcfg.eval_every and end_of_epoch):
            self.evaluate(step)
        if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0 and step < self.total_steps:
            self.save_checkpoint()
        if on_step is not None:
            on_step(StepEnd(step, loss, grad_norm, tokens, dt, row))

    def preempt(self, signum: int) -> None:
        """A signal arrived during training: checkpoint, then end the run as preempted."""
        path = self.save_checkpoint()
        self.record.segments = self.state.segments
        raise Preempted(f"signal {signum} at step {self.state.step}; checkpoint saved at {path}")

    def segments_now(self) -> list[dict]:
        return self.prior + [{**self.segment, "to_step": self.state.step,
                              "train_time_s": self.timer.total_s - self.prior_train_s,
                              "wall_time_s": time.perf_counter() - self.attempt.started}]

    def save_checkpoint(self) -> Path:
        self.state.timer, self.state.segments = self.timer.state_dict(), self.segments_now()
        self.tracker.sync()  # the curve up to this step is on disk whenever the checkpoint is
        return checkpoint.save(self.ckpt_root, self.state.step, self.model, self.optimizer, self.scheduler,
                               self.state.state_dict(), self.tcfg.keep_checkpoints, meta=self.attempt.meta())


def fit(cfg: DictConfig, method: MethodConfig, tcfg: TrainerConfig, run_dir: Path, tracker: Tracker,
        record: RunRecord, attempt: Attempt | None = None, on_step: StepHook | None = None) -> None:
    """Train and evaluate; fill `record` in place as results become known (so a failure keeps them).

    `attempt` (from run_job) says which checkpoints to continue from and what they must carry;
    None trains from step 0 without resuming. `on_step` is called after every optimizer step.
    """
    run = setup(cfg, method, tcfg, run_dir, tracker, record, attempt or Attempt(run_dir, 1, tracker.metrics_path, None))
    train(run, on_step)
    finalize(run)


def setup(cfg, method, tcfg, run_dir, tracker, record, attempt, tokenizer=None, task=None) -> Training:
    """Data, model, optimizer and schedule, resumed from the newest checkpoint when there is one.
    A packed sweep (harness/pack) passes the pack's one `tokenizer` and `task`; the model is still
    built here, after the same seeding, so that its head and adapters draw what a solo run draws."""
    run = Training()
    run.cfg, run.method, run.tcfg, run.run_dir, run.tracker, run.record, run.attempt = (
        cfg, method, tcfg, run_dir, tracker, record, attempt)
    run.device = device = pick_device(tcfg.device)
    record.device = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    record.precision = effective_precision(device, tcfg.precision)
    run.autocast = autocast(device, tcfg.precision)

    seed_everything(cfg.seed)
    run.tokenizer = tokenizer or load_tokenizer(cfg.model)
    run.task = task = task or build_task(cfg.task, run.tokenizer, seed=cfg.seed)
    seed_everything(cfg.seed)  # the model init and LoRA's A must not depend on what data loading drew
    run.model, adapted = build_model(cfg, method, tcfg, task, run.tokenizer, device)
    record.attention = run.model.config._attn_implementation
    if adapted:
        log.info("LoRA on %d modules: %s", len(adapted), ", ".join(adapted[:6]) + (" ..." if len(adapted) > 6 else ""))
        targets = run.model.lora_config.target_modules  # "query+value" resolved for this model family
        record.lora["target_modules"] = list(targets) if isinstance(targets, tuple) else targets
    record.params = count_parameters(run.model)
    log.info("trainable params %(trainable)s / %(total)s (%(trainable_pct).3f%%)", record.params)

    run.optimizer = build_optimizer(tcfg, run.model, method.lr, method.lr_ratio)
    micro_per_epoch = len(task.train_batches(tcfg.batch_size, cfg.seed, 0))
    run.steps_per_epoch = math.ceil(micro_per_epoch / tcfg.grad_accum)
    run.total_steps = tcfg.max_steps or math.ceil(tcfg.epochs * run.steps_per_epoch)
    warmup = int(tcfg.warmup_ratio * run.total_steps)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, warmup_linear_decay(warmup, run.total_steps))

    run.ckpt_root = run_dir / "checkpoints"
    run.state, run.rng = LoopState(), None
    run.forget = ForgetProbe.for_task(task, run.tokenizer, run.model, device, run.autocast, tracker)  # None: no task.forget
    if run.forget is not None and not attempt.checkpoints:  # before the first step: the pretrained model
        run.state.forget_before = run.forget.score(run.model, step=0)
    if attempt.checkpoints:
        path, saved = checkpoint.load_newest(attempt.checkpoints, run.model, run.optimizer, run.scheduler,
                                             hint="add trainer.restart=true to start afresh")
        run.state.load_state_dict(saved["loop"])
        run.rng = saved["rng"]
        log.info("resumed from %s (step %d of %d)", path, run.state.step, run.total_steps)
        if tracker.rewind(run.state.step):
            log.info("dropped the rows after step %d from %s (logged again now)", run.state.step, tracker.metrics_path)
    # One record per run, however many processes it took: each process is a segment; the
    # checkpoint carries the earlier segments and the step timer's sums (see save_checkpoint).
    run.prior = list(run.state.segments)
    run.segment = {"from_step": run.state.step, "to_step": None, "train_time_s": None, "wall_time_s": None,
                   "git_commit": (record.git or {}).get("commit")}
    record.segments = run.prior + [run.segment]

    run.flops = model_flops(run.model)
    run.peaks = CudaPeaks(device)
    run.peaks.start()  # after the model is loaded: the CUDA peaks are those of training
    run.timer = StepTimer(tcfg.timing_warmup_steps, device)
    run.timer.load_state_dict(run.state.timer)
    run.prior_train_s = sum(s["train_time_s"] or 0.0 for s in run.prior)
    run.best_weights = BestWeights(run.ckpt_root / "best.safetensors") if tcfg.select_best else None
    if run.best_weights is not None and run.state.best is not None:  # resumed: the best so far is on disk
        run.best_weights.restore(run.state.best["step"])
    return run


def train(run: Training, on_step: StepHook | None = None) -> None:
    """The loop: one optimizer step per iteration, until trainer.max_steps (or the epochs) are done."""
    run.begin_training()
    with Signals() as signals:
        while (micro := run.next_micro()) is not None:
            # float(): syncs with the device, which the finiteness check needs anyway
            loss = float(accumulate_gradients(run.model, micro, run.task.kind, run.device, run.autocast))
            grad_norm = run.clip_and_update(loss)
            tokens, dt = run.stop_timer(micro)
            run.end_step(loss, grad_norm, tokens, dt, on_step)
            if signals.received is not None:
                run.preempt(signals.received)
    run.bar.close()


def finalize(run: Training, held_out: bool = True) -> None:
    """The last evaluation, the test split, the record's numbers, the saved weights. held_out=False
    (a job pruned by a packed search) skips the test split and the forgetting probe: a pruned
    configuration is compared on validation only and never reported."""
    state, record, task, tcfg, model, step = run.state, run.record, run.task, run.tcfg, run.model, run.state.step
    record.segments = run.segments_now()
    if tcfg.checkpoint_every and not (run.ckpt_root / f"{checkpoint.PREFIX}{step:07d}").exists():
        run.save_checkpoint()  # training is done: a preemption from here on only redoes the final evaluation
    if not state.evals or state.evals[-1]["step"] != step:
        log.info("final evaluation at step %d", step)
        run.evaluate(step)

    final = {k: v for k, v in state.evals[-1].items() if k not in ("step", "epoch")}
    best = state.best or state.evals[-1]
    have_best = run.best_weights is not None and run.best_weights.step == best["step"]
    record.metrics = {
        "main_metric": task.main_metric, "greater_is_better": task.greater_is_better, "final": final,
        "best": {k: v for k, v in best.items() if k not in ("step", "epoch")},
        "best_step": best["step"], "best_epoch": best["epoch"],
        "train_loss": state.train_loss, "skipped_steps": state.skipped_steps,
        "test": None,
    }
    # Selection (learning rate, best step) happens on the validation split; the test split is scored
    # once, here, and only reported.
    if task.test is not None and held_out:
        def score_test():
            with run.peaks.evaluation(), torch.no_grad():
                return evaluate_model(model, task, tcfg.eval_batch_size, run.device, autocast=run.autocast,
                                      split="test")

        test_final, test_best = score_test(), None
        if have_best:
            with run.best_weights.swapped_in(model):
                test_best = test_final if best["step"] == step else score_test()  # the same weights: same numbers
        record.metrics["test"] = {"final": test_final, "best": test_best,
                                  "best_step": best["step"] if have_best else None}
        log.info("test (final weights): %s", "  ".join(f"{k}={v:.4f}" for k, v in test_final.items() if v is not None))
    if run.forget is not None and held_out:  # the same weights as the test split, final and best
        with run.peaks.evaluation():
            record.metrics["forget"] = run.forget.report(
                model, state.forget_before, run.best_weights.swapped_in if have_best else None, best["step"], step)
    peak_flops = peak_bf16_flops(record.device) if run.device.type == "cuda" else None
    record.throughput = {**run.timer.summary(peak_flops), "peak_flops": peak_flops}
    record.memory = memory_summary(run.device, trainable_state_bytes(model), run.peaks)
    record.steps, record.epochs = step, step / run.steps_per_epoch
    record.train_time_s = run.timer.total_s  # training steps, data path included, every segment of a resumed run
    if task.kind == "causal_lm":
        with run.peaks.evaluation():
            record.generations = generate_samples(model, run.tokenizer, task)
    if tcfg.save_model:
        kind = "adapter" if run.method.name == "lora" else "model"
        save_trained(model, run.method, run.cfg.model, run.tokenizer, run.run_dir / kind)
        if have_best:
            with run.best_weights.swapped_in(model):
                save_trained(model, run.method, run.cfg.model, run.tokenizer, run.run_dir / f"{kind}_best")
    # Checkpoints exist to resume; once completed, the same command must train afresh, not resume.
    shutil.rmtree(run.ckpt_root, ignore_errors=True)
