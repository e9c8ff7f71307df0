"""Item 6: what the harness's own bookkeeping costs: `harness-train` (logging every 10 steps,
metrics.jsonl, offline W&B, progress bar, step timer) vs a bare PyTorch loop over the same batches
and model, and vs the transformers Trainer on the same work. Target: harness >= 0.95x bare.

All three run in this one process, in rotation (ABC, BCA, CAB, ...), `--rounds` times:
    harness   harness.train.run_job on a config composed from conf/ (what `python -m harness.train
              logger=wandb logger.mode=offline ...` runs after Hydra starts), LoRA q+v r=8
    bare      the same model, loader, fused AdamW, LR schedule and clipping in a plain loop
    trainer   transformers.Trainer: same model preparation, batch size and fused AdamW (its own
              shuffling, so other batches of the same data)
The work is the issue's: 512 Rotten Tomatoes reviews (max_length 128, dynamic padding), B=16, one
epoch = 32 steps. Throughput is wall clock over steps 11-30 (after warm-up, before the final
evaluation), so the harness's logging at steps 20 and 30 is inside the window. The harness's
steps are stamped by the loop's own step hook (`run_job(on_step=...)`, one perf_counter call
per step, after the step's logging); its own results.json `throughput` (StepTimer, which excludes the logging) is shown beside it.

    python -m bench.harness_overhead
    python -m bench.harness_overhead --rounds 5 --no-trainer
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench import common

WINDOW = (10, 30)  # steps (10, 30]: 20 steps after warm-up, ending before the end-of-epoch eval


def compose(overrides: list[str], run_dir: Path):
    """(job config, full config) composed from conf/ as `python -m harness.train` would, with
    HydraConfig set so harness.train.run_job finds its output folder."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(common.ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    return job


def run_harness(overrides: list[str], run_dir: Path) -> dict:
    """One real harness job in this process; returns {step: perf_counter at the end of that step}
    (the loop's own step hook, after the step's logging)."""
    from harness.train import run_job

    stamps: dict[int, float] = {}

    def stamp(end) -> None:
        stamps[end.step] = time.perf_counter()

    run_job(compose(overrides, run_dir), on_step=stamp)
    record = json.loads((run_dir / "results.json").read_text())
    if record["status"] != "completed":
        raise RuntimeError(f"harness run failed: {record['error']}")
    return {"stamps": stamps, "record": record}


def run_bare(model_cfg, task, batch_size: int, steps: int) -> dict:
    """The same work as a plain loop; stamps after every step."""
    from harness.train import warmup_linear_decay

    method = common.method_config("lora")
    tcfg = common.trainer_config()
    model, opt = common.build_model(method, model_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(int(tcfg.warmup_ratio * steps), steps))
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    stamps = {}
    for step, batch in enumerate(task.train_loader(batch_size, 0, 0), start=1):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, tcfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stamps[step] = time.perf_counter()
    return {"stamps": stamps}


def run_trainer(model_cfg, task, batch_size: int, steps: int, out_dir: Path) -> dict:
    """transformers.Trainer on the same data, model preparation and optimizer; stamps per step."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    method = common.method_config("lora")
    tcfg = common.trainer_config()
    model, _ = common.build_model(method, model_cfg, optimizer=False)
    stamps = {}

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=method.lr,
        weight_decay=tcfg.weight_decay, warmup_steps=int(tcfg.warmup_ratio * steps), max_grad_norm=tcfg.max_grad_norm,
        optim="adamw_torch_fused", logging_steps=tcfg.log_every, save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0, dataloader_num_workers=0)
    Trainer(model=model, args=targs, train_dataset=task.train, data_collator=task.collate,
            callbacks=[Stamp()]).train()
    return {"stamps": stamps}


def window_rate(stamps: dict, per_step: dict, window: tuple[int, int]) -> float:
    """Units (tokens or samples) per second over steps window[0]+1 .. window[1]."""
    a, b = window
    return sum(per_step[s] for s in range(a + 1, b + 1)) / (stamps[b] - stamps[a])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender, rotated (default 3)")
    parser.add_argument("--no-trainer", action="store_true", help="skip the transformers Trainer")
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    common.quiet_transformers()
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.pop("WANDB_API_KEY", None)
    n_train, batch_size, window, log_every = (64, 4, (5, 15), 5) if args.quick else (512, 16, WINDOW, 10)
    if args.quick:
        args.rounds = 1
    steps = n_train // batch_size
    model_cfg = common.model_config(args.quick)
    from harness.models import load_tokenizer
    from harness.data import build_task

    task = build_task(common.task_config(limit_train=n_train, limit_eval=64), load_tokenizer(model_cfg), seed=0)
    batches = task.train_batches(batch_size, 0, 0)
    lengths = task.train["length"]
    tokens = {s: sum(lengths[i] for i in idx) for s, idx in enumerate(batches, start=1)}
    samples = {s: len(idx) for s, idx in enumerate(batches, start=1)}
    overrides = [f"task.limit_train={n_train}", "task.limit_eval=64", f"trainer.batch_size={batch_size}",
                 "trainer.save_model=false", f"trainer.log_every={log_every}", "logger=wandb", "logger.mode=offline",
                 "seed=0", "trainer.precision=fp32"]  # fp32 like the bare loop and Trainer: bookkeeping, not precision
    if args.quick:
        overrides.append(f"model.name_or_path={model_cfg.name_or_path}")
    contenders = ["harness", "bare"] + ([] if args.no_trainer else ["trainer"])
    record = common.Record("harness_overhead", {"rounds": args.rounds, "examples": n_train, "batch_size": batch_size,
                                                "window": list(window), "harness_overrides": overrides,
                                                "quick": args.quick}, argv)
    results = {c: [] for c in contenders}
    harness_self = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            for c in order:
                print(f"round {r + 1}/{args.rounds}: {c}")
                if c == "harness":
                    out = run_harness(overrides, Path(tmp) / f"harness{r}")
                    harness_self.append(out["record"]["throughput"])
                elif c == "bare":
                    out = run_bare(model_cfg, task, batch_size, steps)
                else:
                    out = run_trainer(model_cfg, task, batch_size, steps, Path(tmp) / f"trainer{r}")
                results[c].append({"tokens_per_s": window_rate(out["stamps"], tokens, window),
                                   "samples_per_s": window_rate(out["stamps"], samples, window)})
    record.data["raw"] = {"results": results, "harness_self_reported": harness_self}
    rows = []
    for c in contenders:
        key = "samples_per_s"  # the Trainer draws other batches, so compare samples, not tokens
        rates = [x[key] for x in results[c]]
        ratios = [x[key] / b[key] for x, b in zip(results[c], results["bare"])]
        q1, med, q3 = common.quantiles(ratios)
        tok = common.quantiles([x["tokens_per_s"] for x in results[c]])[1]
        rows.append([c, common.quantiles(rates)[1], tok if c != "trainer" else None, med, f"{q1:.2f}-{q3:.2f}",
                     " ".join(f"{x:.2f}" for x in rates)])
    self_rate = common.quantiles([t["samples_per_s"] for t in harness_self])[1]
    self_tokens = common.quantiles([t["tokens_per_s"] for t in harness_self])[1]
    rows.append(["harness, its own StepTimer", self_rate, self_tokens,
                 None, None, "results.json throughput (excludes logging)"])
    record.table(f"Harness overhead: {n_train} reviews, B={batch_size}, steps {window[0] + 1}-{window[1]} wall clock, "
                 f"{args.rounds} rotated rounds in one process",
                 ["loop", "samples/s", "real tokens/s", "x bare (paired)", "ratio range", "per round"], rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
