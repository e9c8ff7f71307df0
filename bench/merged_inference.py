"""Item 3: inference latency of a merged LoRA model vs the base model (target: equal within noise),
and of the unmerged model (the adapter path still running).

Each LoRA model is built as `harness-train` builds it, given a non-zero B (a trained adapter, so
merging changes the weights), copied, and one copy merged with `merge_lora`. Forward passes in eval
mode under no_grad on packed Rotten Tomatoes batches, all configs alternating in one process.
The merged model's logits must match the unmerged model's: the table shows the largest difference.

    python -m bench.merged_inference
    python -m bench.merged_inference --batch 32 --seq-len 64 --steps 20
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench import common
from harness.lora import lora_layers, merge_lora

ADAPTERS = {"q+v r=8": {"target_modules": ["query", "value"]}, "all-linear r=8": {"target_modules": "all-linear"}}


def adapted(model_cfg, targets, device, seed: int = 0):
    """(unmerged, merged) copies of one LoRA model with random non-zero adapters."""
    model, _ = common.build_model(common.method_config("lora", **targets), model_cfg, device, optimizer=False)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(std=0.02)
    merged = copy.deepcopy(model)
    merge_lora(merged)
    return model.eval(), merged.eval()


def forward_fn(model, batches, device):
    batches = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches]
    calls = [0]

    @torch.no_grad()
    def run():
        batch = batches[calls[0] % len(batches)]
        calls[0] += 1
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(**batch).logits
        return model(**batch).logits

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, steps=10, warmup=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    common.quiet_transformers()
    if args.quick:
        args.steps, args.warmup, args.batch, args.seq_len = 2, 1, 2, 16
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg = common.model_config(args.quick)
    from harness.models import load_tokenizer

    batches = common.packed_batches(load_tokenizer(model_cfg), args.batch, args.seq_len, 4)
    record = common.Record("merged_inference", {"batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                                                "warmup": args.warmup, "device": str(device), "quick": args.quick},
                           argv)
    base, _ = common.build_model(common.method_config("full"), model_cfg, device, optimizer=False)
    models = {"base model": base.eval()}
    diffs = {}
    for name, targets in ADAPTERS.items():
        unmerged, merged = adapted(model_cfg, targets, device)
        models[f"LoRA {name} merged"], models[f"LoRA {name} unmerged"] = merged, unmerged
        with torch.no_grad():
            b = {k: v.to(device) for k, v in batches[0].items() if k != "labels"}
            diffs[name] = ((merged(**b).logits - unmerged(**b).logits).abs().max().item(),
                           (unmerged(**b).logits - base(**b).logits).abs().max().item())
    fns = {name: forward_fn(m, batches, device) for name, m in models.items()}
    print(f"timing {len(fns)} models x {args.steps} forwards (after {args.warmup} warm-up), alternating")
    times = common.interleave(fns, args.steps, args.warmup, device)
    record.data["raw"] = times
    rows = []
    for name in models:
        s = common.summarize(times[name])
        r = common.paired_ratio(times[name], times["base model"])
        key = next((k for k in ADAPTERS if k in name), None)
        rows.append([name, s["median"] * 1e3, f"±{s['noise']:.0%}", args.batch * args.seq_len / s["median"],
                     r["ratio"], f"{r['q1']:.2f}-{r['q3']:.2f}",
                     diffs[key][0] if key and "unmerged" not in name else None,
                     diffs[key][1] if key and "unmerged" in name else None])
    record.table(f"Inference forward, B={args.batch}, T={args.seq_len} ({device.type}, eval, no_grad)",
                 ["model", "ms", "noise", "tokens/s", "x base", "ratio IQR", "max |logit diff| merged vs unmerged",
                  "max |logit diff| vs base"], rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
