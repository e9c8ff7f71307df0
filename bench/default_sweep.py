"""The issue-12 sweep, timed end to end: what a user waits for when running a small LoRA sweep.

The sweep: LoRA q+v, r in {4, 8} x seeds {0, 1}, alpha = 2r, 3,000 training reviews (one epoch of
94 steps at batch 32), scored on 1,000 validation reviews and on the test split (1,000 reviews: task.limit_eval caps both)
after the last step, as a harness run scores both; MiniLM-L6, Rotten Tomatoes. Every arm does that
same work and reports both accuracies. Arms, each
the whole 4-job sweep, timed as the wall clock of its processes (start-up, loading, tokenizing,
training and evaluation included):

    harness              `python -m harness.train -m ...` with the harness's defaults (one process)
    harness_fp32         the same in fp32 (trainer.precision=fp32): what precision=auto's bf16 buys on
                         a CPU with native bf16 (on one without, auto is fp32 and the arms coincide)
    harness_before       the same with the defaults before issue 12: random batches
                         (task.group_by_length=false), the checkpoint's dropout (model.dropout=null)
                         and fp32 on CPU (trainer.precision=fp32)
    bare                 the same 4 jobs in a plain PyTorch loop in one process: the harness's data
                         (same batches, same defaults), model preparation and fused AdamW, no
                         logging, records, checkpoints or W&B; what the harness's plumbing costs
    trainer_peft         transformers Trainer + peft, one process per job (how such sweeps are
                         usually run), with their defaults: random batches, the checkpoint's dropout
    trainer_peft_fast    the same with Trainer's group_by_length and the checkpoint's dropout off

Arms run one after another in one window (the order rotating by round), since separate windows
on this machine disagree by up to 35%. peft is not a dependency of lora-harness (LoRA is written
here): the trainer arms need it on the path, e.g. `pip install --target /tmp/peft --no-deps peft`
and `--peft-path /tmp/peft`; without it they are skipped.

    python -m bench.default_sweep --peft-path /tmp/peft
    python -m bench.default_sweep --arms harness,bare --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

RANKS, SEEDS = (4, 8), (0, 1)
N_TRAIN, N_EVAL, BATCH = 3000, 1000, 32
QUICK = {"N_TRAIN": 64, "N_EVAL": 32, "BATCH": 8}  # --quick: a smoke test on the tiny BERT
ARMS = ("harness", "harness_fp32", "harness_before", "bare", "trainer_peft", "trainer_peft_fast")
BEFORE = ["task.group_by_length=false", "model.dropout=null", "trainer.precision=fp32"]  # the defaults before issue 12
EXTRA = {"harness": [], "harness_fp32": ["trainer.precision=fp32"], "harness_before": BEFORE}


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def use_quick() -> None:
    globals().update(QUICK)


def harness_arm(folder: Path, quick: bool, extra: list[str] = ()) -> dict:
    model = ["model.name=tiny_bert", f"model.name_or_path={common.tiny_model_dir()}"] if quick else []
    cmd = [sys.executable, "-m", "harness.train", "-m", *model, "method.r=" + ",".join(map(str, RANKS)),
           "method.alpha='${mul:${method.r},2}'", "seed=" + ",".join(map(str, SEEDS)),
           f"task.limit_train={N_TRAIN}", f"task.limit_eval={N_EVAL}", f"trainer.batch_size={BATCH}",
           "trainer.save_model=false", f"hydra.sweep.dir={folder}", *extra]
    wall = timed(cmd, common.child_env())
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json"))]
    return {"wall_s": wall, "precision": [r["precision"] for r in records], "attention": [r["attention"] for r in records],
            "accuracy": [r["metrics"]["final"]["accuracy"] for r in records],
            "test_accuracy": [r["metrics"]["test"]["final"]["accuracy"] for r in records],
            "loss": [r["metrics"]["final"]["loss"] for r in records],
            "tokens_per_s": [r["throughput"]["tokens_per_s"] for r in records], "command": cmd}


def child_arm(kind: str, jobs: list[tuple[int, int]], peft_path: str | None, quick: bool) -> dict:
    """One child process per call: `bare` gets all jobs in one process, the trainer arms one each."""
    results = []
    t0 = time.perf_counter()
    for group in ([jobs] if kind == "bare" else [[j] for j in jobs]):
        args = [f"{r}:{s}" for r, s in group]
        cmd = [sys.executable, "-m", "bench.default_sweep", "--child", kind, *args, *(["--quick"] if quick else [])]
        proc = subprocess.run(cmd, cwd=common.ROOT, env=common.child_env(peft_path), capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": time.perf_counter() - t0, "accuracy": [x["accuracy"] for x in results],
            "test_accuracy": [x["test_accuracy"] for x in results],
            "loss": [x.get("loss") for x in results],
            "tokens_per_s": [x.get("tokens_per_s") for x in results]}


# ------------------------------------------------------------------------------- in the child


def load_task(seed: int, quick: bool, group_by_length: bool | None = None):
    from harness.models import load_tokenizer
    from harness.data import build_task

    overrides = {"limit_train": N_TRAIN, "limit_eval": N_EVAL}
    if group_by_length is not None:
        overrides["group_by_length"] = group_by_length
    model_cfg = common.model_config(quick)
    tokenizer = load_tokenizer(model_cfg)
    return build_task(common.task_config(**overrides), tokenizer, seed=seed), model_cfg


def bare_job(r: int, seed: int, quick: bool) -> dict:
    """One job as a plain loop over the harness's own batches, with the harness's defaults."""
    import torch

    from harness.scoring import evaluate_model
    from harness.train import attention_for, autocast, pick_device, seed_everything, warmup_linear_decay

    seed_everything(seed)
    task, model_cfg = load_task(seed, quick)
    seed_everything(seed)
    tcfg, cpu = common.trainer_config(), pick_device("cpu")
    amp = autocast(cpu, tcfg.precision)  # the harness's default precision and attention on this CPU
    model, opt = common.build_model(common.method_config("lora", r=r, alpha=2 * r), model_cfg, seed=seed,
                                    attn_implementation=attention_for(model_cfg.get("attn_implementation"), cpu,
                                                                      tcfg.precision))
    steps = len(task.train_batches(BATCH, seed, 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(int(tcfg.warmup_ratio * steps), steps))
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for batch in task.train_loader(BATCH, seed, 0):
        labels = batch.pop("labels")
        with amp():
            logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()  # the loss in fp32, as the harness
        torch.nn.utils.clip_grad_norm_(trainable, tcfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    scores = evaluate_model(model, task, tcfg.eval_batch_size, "cpu", amp)
    test = evaluate_model(model, task, tcfg.eval_batch_size, "cpu", amp, split="test")
    return {"accuracy": scores["accuracy"], "loss": scores["loss"], "test_accuracy": test["accuracy"]}


def trainer_peft_job(r: int, seed: int, fast: bool, quick: bool) -> dict:
    """transformers Trainer + peft on the same tokenized reviews; Trainer's own batching."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from harness.models import resolve_path

    task, model_cfg = load_task(seed, quick, group_by_length=False)
    path = resolve_path(model_cfg.name_or_path)
    extra = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if fast else {}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **extra)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"],
                                             lora_dropout=0.0, modules_to_save=["classifier", "pooler"],
                                             task_type="SEQ_CLS"))
    tcfg = common.trainer_config()
    keep = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels", "length") if c in task.train.column_names]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=tcfg.eval_batch_size,
            num_train_epochs=1, learning_rate=common.method_config("lora").lr, weight_decay=tcfg.weight_decay,
            warmup_steps=int(tcfg.warmup_ratio * math.ceil(len(task.train) / BATCH)), max_grad_norm=tcfg.max_grad_norm, optim="adamw_torch_fused",
            save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, seed=seed,
            use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if fast else "random",
            length_column_name="length", logging_steps=10)
        trainer = Trainer(model=model, args=args, train_dataset=task.train.select_columns(keep),
                          data_collator=task.collate)
        trainer.train()
        scores = [trainer.predict(split.select_columns(keep)) for split in (task.eval, task.test)]

    def accuracy(out) -> float:
        return float((np.asarray(out.predictions).argmax(-1) == np.asarray(out.label_ids)).mean())

    return {"accuracy": accuracy(scores[0]), "test_accuracy": accuracy(scores[1])}


def child_main(kind: str, jobs: list[str], quick: bool) -> None:
    common.quiet_transformers()
    if quick:
        use_quick()
    results = []
    for job in jobs:
        r, seed = map(int, job.split(":"))
        if kind == "bare":
            results.append(bare_job(r, seed, quick))
        else:
            results.append(trainer_peft_job(r, seed, kind == "trainer_peft_fast", quick))
    print(json.dumps(results))


# ------------------------------------------------------------------------------------- driver


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("jobs", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every arm, order rotating (default 1)")
    parser.add_argument("--peft-path", default=None, help="a folder holding peft (for the trainer arms)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.jobs, args.quick)
    if args.quick:
        use_quick()
    common.apply_threads(args.threads)  # the arms' child processes inherit it through OMP_NUM_THREADS
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    if any(a.startswith("trainer") for a in arms):
        probe = subprocess.run([sys.executable, "-c", "import peft"], env=common.child_env(args.peft_path),
                               capture_output=True)
        if probe.returncode != 0:
            print("peft is not importable (give --peft-path): skipping the trainer arms", file=sys.stderr)
            arms = [a for a in arms if not a.startswith("trainer")]
    jobs = [(r, s) for r in RANKS for s in SEEDS]
    record = common.Record("default_sweep", {"ranks": RANKS, "seeds": SEEDS, "n_train": N_TRAIN, "n_eval": N_EVAL,
                                             "batch_size": BATCH, "arms": arms, "rounds": args.rounds,
                                             "quick": args.quick},
                           sys.argv[1:] if argv is None else argv)
    raw = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for arm in arms[rnd % len(arms):] + arms[:rnd % len(arms)]:
                print(f"round {rnd + 1}/{args.rounds}: {arm}", flush=True)
                if arm.startswith("harness"):
                    out = harness_arm(Path(tmp) / f"{arm}{rnd}", args.quick, EXTRA[arm])
                else:
                    out = child_arm(arm, jobs, args.peft_path, args.quick)
                print(f"  {out['wall_s']:.0f} s, accuracy {out['accuracy']}", flush=True)
                raw[arm].append(out)
    record.data["raw"] = raw
    ref = "trainer_peft" if "trainer_peft" in arms else None
    rows = []
    for arm in arms:
        walls = [x["wall_s"] for x in raw[arm]]
        accs = [a for x in raw[arm] for a in x["accuracy"]]
        tests = [a for x in raw[arm] for a in x["test_accuracy"]]
        ratio = (sum(walls) / sum(x["wall_s"] for x in raw[ref])) if ref else None
        rows.append([arm, common.quantiles(walls)[1], ratio, min(accs), max(accs), min(tests), max(tests),
                     " ".join(f"{w:.0f}" for w in walls)])
    record.table(f"The 4-job sweep: LoRA q+v r {RANKS} x seeds {SEEDS}, {N_TRAIN} reviews, 1 epoch at B={BATCH}, "
                 f"{N_EVAL} validation reviews and the test split scored at the end; {args.rounds} round(s) in one window",
                 ["arm", "wall s (median)", "x trainer_peft", "val acc min", "val acc max", "test acc min",
                  "test acc max", "wall s per round"], rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
