"""Item 5: real-token throughput of the batching strategies on the default task (Rotten Tomatoes,
max_length 128, trainer batch size 32): dynamic padding (the harness's Collator pads to the longest
review in the batch), length-grouped batching (`task.group_by_length=true`), and pad-to-max-length
(every batch padded to 128, what a fixed-shape pipeline does).

Two tables. The padding census is exact and free: real / padded tokens over every batch of one
epoch of each strategy. The timing table trains the default method (LoRA q+v r=8, model as built
by `harness-train`) on the k-th batch of each strategy in round k, alternating in one process,
and reports real tokens/s (attention-mask ones per second) and its paired ratio to pad-to-max.

    python -m bench.padding
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from bench import common


def pad_to(batch: dict, width: int, pad_id: int) -> dict:
    """Right-pad a collated batch to `width` columns (labels of classification stay as they are)."""
    out = dict(batch)
    extra = width - batch["input_ids"].shape[1]
    if extra > 0:
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in batch:
                out[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)
    return out


def strategies(task, batch_size: int, seed: int = 0) -> dict[str, list[dict]]:
    """Every batch of epoch 0 for each strategy, collated."""
    dynamic = list(task.train_loader(batch_size, seed, 0))
    grouped = list(dataclasses.replace(task, group_by_length=True).train_loader(batch_size, seed, 0))
    padded = [pad_to(b, task.max_length, task.collate.pad_token_id) for b in dynamic]
    return {"pad to max_length": padded, "dynamic padding": dynamic, "dynamic + group_by_length": grouped}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, steps=10, warmup=2)
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32, conf/trainer/default.yaml)")
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    common.quiet_transformers()
    if args.quick:
        args.steps, args.warmup, args.batch = 2, 1, 4
    model_cfg = common.model_config(args.quick)
    from harness.models import load_tokenizer
    from harness.data import build_task

    task = build_task(common.task_config(limit_train=256 if args.quick else None), load_tokenizer(model_cfg), seed=0)
    batches = strategies(task, args.batch)
    record = common.Record("padding", {"batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                                       "train_examples": len(task.train), "max_length": task.max_length,
                                       "quick": args.quick}, argv)
    census = []
    for name, bs in batches.items():
        real = sum(int(b["attention_mask"].sum()) for b in bs)
        padded = sum(b["attention_mask"].numel() for b in bs)
        census.append([name, len(bs), real, padded, real / padded,
                       sum(b["attention_mask"].shape[1] for b in bs) / len(bs)])
    record.table(f"Padding census: every batch of one epoch, {len(task.train):,} reviews, B={args.batch}",
                 ["batching", "batches", "real tokens", "padded tokens", "real fraction", "mean width"], census)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, opt = common.build_model(common.method_config("lora"), model_cfg, device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    real_tokens = {name: [] for name in batches}

    def stepper(name):
        calls = [0]

        def step():
            batch = {k: v.to(device) for k, v in batches[name][calls[0] % len(batches[name])].items()}
            calls[0] += 1
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            real_tokens[name].append(int(batch["attention_mask"].sum()))
        return step

    print(f"timing {len(batches)} strategies x {args.steps} steps (after {args.warmup} warm-up), alternating")
    times = common.interleave({n: stepper(n) for n in batches}, args.steps, args.warmup, device)
    timed = {n: real_tokens[n][args.warmup:] for n in batches}  # tokens of the timed calls only
    record.data["raw"] = {"times": times, "real_tokens": timed}
    rate = {n: [t / s for t, s in zip(timed[n], times[n])] for n in batches}
    rows = []
    for name in batches:
        ratio = common.quantiles([a / b for a, b in zip(rate[name], rate["pad to max_length"])])
        rows.append([name, common.summarize(times[name])["median"] * 1e3, sum(timed[name]) / sum(times[name]),
                     ratio[1], f"{ratio[0]:.2f}-{ratio[2]:.2f}"])
    record.table(f"Real-token throughput, LoRA q+v r=8, B={args.batch} ({device.type}); k-th batch of each in round k",
                 ["batching", "step ms (median)", "real tokens/s", "x pad-to-max (paired)", "ratio IQR"], rows,
                 note="grouped batches differ from the others in length (that is the point), so per-round "
                      "ratios scatter more than the mean rate")
    record.write(args.out)


if __name__ == "__main__":
    main()
