"""Item 4: switching adapters on one loaded base model vs loading a new model for each adapter.

Three adapters per kind (q+v r=8, the default, and all-linear r=64) with random non-zero weights
are saved in peft format with `save_adapter`. Per switch, alternating in one process:
    bank activate         AdapterBank.activate: in-place copy of tensors already in memory
    bank activate merged  the same on merged layers (unmerge the old delta, copy, merge the new)
    load_adapter          read + validate the safetensors file, copy into the adapted model
    new model + adapter   load_model (the packaged checkpoint) + load_adapter: what you pay without a bank
After the timing, the bank's model must give the same logits as a freshly loaded model with the
same adapter (column "max |diff|").

    python -m bench.adapter_switch
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench import common
from harness.lora import AdapterBank, load_adapter, lora_layers, merge_lora, save_adapter
from harness.models import load_model, load_tokenizer

KINDS = {"q+v r=8": {"target_modules": ["query", "value"], "r": 8, "alpha": 16},
         "all-linear r=64": {"target_modules": "all-linear", "r": 64, "alpha": 128}}
N_ADAPTERS = 3


def save_random_adapters(model_cfg, kind: dict, folder: Path, n: int) -> list[Path]:
    """n adapters of one kind with random B and head weights, saved under folder/0..n-1."""
    paths = []
    for i in range(n):
        model, _ = common.build_model(common.method_config("lora", **kind), model_cfg, optimizer=False, seed=i)
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.weight.normal_(std=0.02)
            model.classifier.weight.normal_(std=0.02)
        paths.append(save_adapter(model, folder / str(i), base_model_name_or_path=model_cfg.name_or_path))
    return paths


def cycler(fn, n: int):
    """A zero-argument callable applying fn(0), fn(1), ... fn(n-1), fn(0), ...: every call is a switch."""
    calls = [0]

    def run():
        fn(calls[0] % n)
        calls[0] += 1

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, steps=10, warmup=2)
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    common.quiet_transformers()
    if args.quick:
        args.steps, args.warmup = 2, 1
    model_cfg = common.model_config(args.quick)
    tokenizer = load_tokenizer(model_cfg)
    probe = {k: v for k, v in common.packed_batches(tokenizer, 2, 16, 1)[0].items() if k != "labels"}
    record = common.Record("adapter_switch", {"steps": args.steps, "warmup": args.warmup, "adapters": N_ADAPTERS,
                                              "quick": args.quick}, argv)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind_name, kind in KINDS.items():
            paths = save_random_adapters(model_cfg, kind, Path(tmp) / kind_name.replace(" ", "_"), N_ADAPTERS)
            size_mib = sum(f.stat().st_size for f in paths[0].iterdir()) / common.MIB
            banks = {}
            for merged in (False, True):
                bank = AdapterBank(load_model(model_cfg, "classification", 2).eval())
                for i, p in enumerate(paths):
                    bank.add(str(i), p)
                bank.activate("0")
                if merged:
                    merge_lora(bank.model)
                banks[merged] = bank
            target = load_model(model_cfg, "classification", 2).eval()
            load_adapter(target, paths[0])

            def reload(i):
                m = load_model(model_cfg, "classification", 2)
                load_adapter(m, paths[i])

            fns = {"bank activate": cycler(lambda i: banks[False].activate(str(i)), N_ADAPTERS),
                   "bank activate merged": cycler(lambda i: banks[True].activate(str(i)), N_ADAPTERS),
                   "load_adapter": cycler(lambda i: load_adapter(target, paths[i]), N_ADAPTERS),
                   "new model + adapter": cycler(reload, N_ADAPTERS)}
            print(f"{kind_name}: timing {len(fns)} ways to switch x {args.steps} switches, alternating")
            times = common.interleave(fns, args.steps, args.warmup)
            raw[kind_name] = times
            # correctness: switch every model to adapter 1 and compare with a fresh load of it
            fresh = load_model(model_cfg, "classification", 2).eval()
            load_adapter(fresh, paths[1])
            banks[False].activate("1")
            banks[True].activate("1")
            load_adapter(target, paths[1])
            with torch.no_grad():
                ref = fresh(**probe).logits
                diff = {"bank activate": banks[False].model(**probe).logits,
                        "bank activate merged": banks[True].model(**probe).logits,
                        "load_adapter": target(**probe).logits, "new model + adapter": ref}
            new = common.summarize(times["new model + adapter"])["median"]
            for name in fns:
                s = common.summarize(times[name])
                rows.append([kind_name, name, s["median"] * 1e3, f"±{s['noise']:.0%}", s["median"] / new,
                             (diff[name] - ref).abs().max().item(), size_mib])
    record.data["raw"] = raw
    record.table("Adapter switch on CPU: ms per switch (median), x = vs loading a new model",
                 ["adapter", "switch by", "ms/switch", "noise", "x new model", "max |diff| vs fresh load",
                  "adapter file MiB"], rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
