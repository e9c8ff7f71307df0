"""Item 1: one training step, LoRA vs full fine-tuning, on the default model (MiniLM-L6).

Every config is built the way `harness-train` builds it (`prepare_model`, fused AdamW from
conf/trainer/default.yaml, train mode) and steps on the same packed Rotten Tomatoes batches (B=16,
no padding). A step is what the trainer's loop does per optimizer step minus its bookkeeping:
forward, backward, clip_grad_norm_, AdamW, zero_grad. Configs alternate step by step in one
process (bench.common.interleave); peak RSS comes from one fresh subprocess per config.

Columns: step time (median) and its noise (half IQR / median), real tokens/s, the paired ratio to
full FT, the GEMM-FLOP floor of that ratio (`gemm_flops`), achieved GFLOP/s (MFU on CUDA),
trainable params, trainable state (params + grads + two fp32 AdamW moments of what trains), and
peak RSS / CUDA peaks per config.

Dropout: the checkpoint's own dropout (0.1 on hidden states and attention probabilities) is on in
the main rows, as `harness-train` had it before issue 12 (minilm now defaults to model.dropout=0.0); the dropout table re-times configs with it off, and with
LoRA's own `method.dropout=0.1`, so its cost per step is a paired difference.

    python -m bench.train_step                    # T=64 and 128, dropout table at 128, RSS children
    python -m bench.train_step --seq-lens 128 --steps 20 --no-rss
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import common

BATCH = 16


@dataclass(frozen=True)
class Config:
    """One row: a method as `harness-train` overrides would set it, plus the model's own dropout."""

    name: str
    method: str  # lora | full
    targets: str | tuple = ("query", "value")
    r: int = 8
    lora_dropout: float = 0.0
    model_dropout: bool = True  # False: the checkpoint's 0.1 hidden/attention dropout set to 0
    plain: bool = False  # True: LoraLinear forward swapped for loralib's plain wrapper (bench.lora_layer)
    extra: tuple = ()  # more method keys, as (key, value) pairs: the LoRA family's (use_dora, ...)

    def method_config(self):
        if self.method == "full":
            return common.method_config("full")
        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return common.method_config("lora", r=self.r, alpha=2 * self.r, dropout=self.lora_dropout,
                                    target_modules=targets, **dict(self.extra))


MAIN = (Config("full FT", "full"), Config("LoRA q+v r=8", "lora"),
        Config("LoRA all-linear r=8", "lora", "all-linear"), Config("LoRA all-linear r=64", "lora", "all-linear", 64))
DROPOUT = (Config("full FT, model dropout off", "full", model_dropout=False),
           Config("LoRA q+v r=8, model dropout off", "lora", model_dropout=False),
           Config("LoRA all-linear r=8, model dropout off", "lora", "all-linear", model_dropout=False),
           Config("LoRA q+v r=8, + LoRA dropout 0.1", "lora", lora_dropout=0.1))
PLAIN = (Config("LoRA q+v r=8, plain wrapper", "lora", plain=True),
         Config("LoRA all-linear r=8, plain wrapper", "lora", "all-linear", plain=True))
# The LoRA family (issue 17) as the defaults run them: q+v r=8, the checkpoint's dropout off. LoRA+
# and OLoRA compute exactly what LoRA does per step (a learning-rate ratio; an init): timed anyway,
# so the table shows it. DoRA adds the row norms of W0 + s B A every call; LoRA-FA skips A's gradient.
FAMILY_BASE = DROPOUT[:2]  # full FT and LoRA q+v r=8, model dropout off
FAMILY = FAMILY_BASE + tuple(
    Config(name, "lora", model_dropout=False, extra=extra) for name, extra in (
        ("DoRA q+v r=8", (("use_dora", True),)), ("LoRA+ q+v r=8, ratio 16", (("lr_ratio", 16),)),
        ("OLoRA q+v r=8", (("init", "olora"),)), ("LoRA-FA q+v r=8", (("freeze_a", True),))))
CONFIGS = {c.name: c for c in MAIN + DROPOUT + PLAIN + FAMILY}


def build(cfg: Config, model_cfg, device):
    model, opt = common.build_model(cfg.method_config(), model_cfg, device)
    # Explicit both ways: harness-train's own default for minilm is model.dropout=0.0 (since issue 12).
    common.set_model_dropout(model, 0.1 if cfg.model_dropout else 0.0)
    if cfg.plain:
        from bench.lora_layer import use_plain

        use_plain(model)
    model.train()
    return model, opt


def autocast(device: torch.device):
    """bf16 autocast on CUDA, as trainer.precision=auto does there; CPU runs fp32, as the harness
    with trainer.precision=fp32 (its default, auto, is bf16 on a bf16 CPU: bench/default_sweep.py)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model, opt, batches: list[dict], device: torch.device):
    """A closure running one optimizer step on the next batch (the k-th call uses batch k mod n)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    calls = [0]

    def step():
        batch = batches[calls[0] % len(batches)]
        calls[0] += 1
        with autocast(device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trainable_state_bytes(model) -> int:
    """Bytes that exist only because something trains: trainable params, their grads, AdamW's two
    fp32 moments. (harness.lora.trainable_state_bytes also counts the frozen weights.)"""
    return sum(p.numel() * (2 * p.element_size() + 8) for p in model.parameters() if p.requires_grad)


def gemm_flops(model, batch_size: int, seq_len: int) -> float:
    """Matmul FLOPs of one training step: what LoRA can save is the weight-gradient GEMM of every
    frozen layer (and the input-gradient GEMM where nothing upstream trains).

    Per Linear of rows x in -> out: forward 2*rows*in*out; input gradient the same when the input
    requires grad; weight gradient the same when the weight trains. A LoRA layer adds A (in -> r) and
    B (r -> out) with both gradients. Attention (QK^T and AV) costs 4*B*T^2*hidden per layer
    forward and twice that backward. Which inputs require grad is read from one tiny forward pass
    with hooks, so this follows the model as built (embeddings, pooler, classifier included).
    """
    from harness.lora import LoraLinear

    seen: dict[int, bool] = {}
    hooks = []
    lora_children = {id(c) for m in model.modules() if isinstance(m, LoraLinear) for c in m.modules() if c is not m}
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, LoraLinear)) and id(m) not in lora_children:
            hooks.append(m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(id(mod), inp[0].requires_grad)))
    device = next(model.parameters()).device
    probe = torch.ones(1, 2, dtype=torch.long, device=device)
    with torch.enable_grad():
        model(input_ids=probe, attention_mask=probe)
    for h in hooks:
        h.remove()
    tokens = batch_size * seq_len
    total = 0.0
    for m in model.modules():
        if id(m) not in seen:
            continue
        # pooler and classifier see one row per sequence, every other Linear one row per token
        rows = batch_size if m is getattr(model, "classifier", None) or "pooler" in _name_of(model, m) else tokens
        base = m.base if isinstance(m, LoraLinear) else m
        w = base.weight
        gemm = 2 * rows * w.shape[0] * w.shape[1]
        total += gemm * (1 + seen[id(m)] + w.requires_grad)
        if isinstance(m, LoraLinear):
            a = 2 * rows * m.in_features * m.r
            b = 2 * rows * m.r * m.out_features
            total += a * (2 + seen[id(m)]) + b * 3
    cfg = model.config
    total += 3 * 4 * batch_size * seq_len**2 * cfg.hidden_size * cfg.num_hidden_layers
    return total


def _name_of(model, module) -> str:
    return next((n for n, m in model.named_modules() if m is module), "")


def child(args) -> None:
    """--child NAME --batches FILE: build one config, run a few steps on the saved batches, print
    RSS after building and the peak as one JSON line. The batches come from a file so that loading
    the data set (pandas + datasets, ~2.4 GiB peak here) never sets this process's peak."""
    common.quiet_transformers()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = torch.load(args.batches)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, opt = build(CONFIGS[args.child], common.model_config(args.quick), device)
    loaded = common.rss_mib()
    step = make_step(model, opt, batches, device)
    for _ in range(args.child_steps):
        step()
    common.sync(device)
    print(json.dumps({"rss_loaded_mib": loaded, "peak_rss_mib": common.peak_rss_mib(), **common.cuda_peaks_mib()}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, steps=10, warmup=2)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--no-dropout-table", action="store_true", help="skip the dropout rows")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--plain", action="store_true",
                        help="at the longest T, also time LoRA with loralib's plain wrapper layout instead of LoraLinear's")
    parser.add_argument("--family", action="store_true",
                        help="at the longest T, also time the LoRA family (DoRA, LoRA+, OLoRA, LoRA-FA) and their peak RSS")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    if args.child:
        return child(args)
    common.quiet_transformers()
    if args.quick:
        args.steps, args.warmup, args.seq_lens = 2, 1, [16]
    batch = 2 if args.quick else BATCH
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg = common.model_config(args.quick)
    from harness.models import load_tokenizer

    tokenizer = load_tokenizer(model_cfg)
    record = common.Record("train_step", {"batch_size": batch, "seq_lens": args.seq_lens, "steps": args.steps,
                                          "warmup": args.warmup, "device": str(device), "quick": args.quick,
                                          "data": "packed Rotten Tomatoes train reviews, no padding"}, argv)
    dev_name = record.data["machine"]["cuda_device"]
    for seq_len in args.seq_lens:
        dropout_rows = not args.no_dropout_table and seq_len == max(args.seq_lens)
        plain_rows = args.plain and seq_len == max(args.seq_lens)
        family_rows = args.family and seq_len == max(args.seq_lens)
        configs = MAIN + (DROPOUT if dropout_rows else ()) + (PLAIN if plain_rows else ())
        configs += tuple(c for c in (FAMILY if family_rows else ()) if c not in configs)
        batches = common.packed_batches(tokenizer, batch, seq_len, 4)
        built = {c.name: build(c, model_cfg, device) for c in configs}
        steps = {name: make_step(m, o, batches, device) for name, (m, o) in built.items()}
        print(f"T={seq_len}: timing {len(configs)} configs x {args.steps} steps (after {args.warmup} warm-up), "
              "alternating")
        times = common.interleave(steps, args.steps, args.warmup, device)
        record.data["raw"][f"T={seq_len}"] = times
        info = {}
        for c in configs:
            model = built[c.name][0]
            info[c.name] = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                            "state": trainable_state_bytes(model), "flops": gemm_flops(model, batch, seq_len),
                            **common.summarize(times[c.name])}
        del built, steps
        full = info["full FT"]
        rows = []
        for c in MAIN:
            s = info[c.name]
            ratio = common.paired_ratio(times[c.name], times["full FT"])
            achieved = s["flops"] / s["median"]
            rows.append([c.name, s["median"] * 1e3, f"±{s['noise']:.0%}", batch * seq_len / s["median"],
                         ratio["ratio"], f"{ratio['q1']:.2f}-{ratio['q3']:.2f}", s["flops"] / full["flops"],
                         common.mfu(s["flops"], s["median"], dev_name) if dev_name else achieved / 1e9,
                         s["trainable"], s["state"] / common.MIB, s["state"] / full["state"]])
        record.table(f"Training step, B={batch}, T={seq_len} ({device.type}, fused AdamW, model dropout 0.1 on)",
                     ["config", "step ms", "noise", "tokens/s", "x full FT", "ratio IQR", "GEMM FLOPs x full",
                      "MFU" if dev_name else "GFLOP/s", "trainable", "train state MiB", "state x full"], rows)
        if dropout_rows:
            pairs = [("full FT, model dropout off", "full FT"), ("LoRA q+v r=8, model dropout off", "LoRA q+v r=8"),
                     ("LoRA all-linear r=8, model dropout off", "LoRA all-linear r=8")]
            rows = []
            for off, on in pairs:
                diff = [a - b for a, b in zip(times[on], times[off])]
                rows.append([off, info[off]["median"] * 1e3,
                             common.paired_ratio(times[off], times["full FT, model dropout off"])["ratio"],
                             common.quantiles(diff)[1] * 1e3, "model dropout 0.1 (checkpoint)"])
            lora_d = "LoRA q+v r=8, + LoRA dropout 0.1"
            diff = [a - b for a, b in zip(times[lora_d], times["LoRA q+v r=8"])]
            rows.append([lora_d, info[lora_d]["median"] * 1e3, None, common.quantiles(diff)[1] * 1e3,
                         "method.dropout=0.1 on top of the above"])
            record.table(f"Dropout cost, B={batch}, T={seq_len}: rows timed in the same alternation",
                         ["config", "step ms", "x full FT (dropout off)", "dropout ms/step (paired)", "what"], rows)
        if plain_rows:
            rows = []
            for cand, ref in zip(PLAIN, MAIN[1:3]):
                rows.append([cand.name, info[cand.name]["median"] * 1e3, info[ref.name]["median"] * 1e3,
                             common.paired_ratio(times[cand.name], times[ref.name])["ratio"],
                             common.paired_ratio(times[cand.name], times["full FT"])["ratio"],
                             common.paired_ratio(times[ref.name], times["full FT"])["ratio"]])
            record.table(f"LoRA layer layout: loralib's plain wrapper vs harness LoraLinear, B={batch}, T={seq_len}",
                         ["config", "step ms", "harness LoRA ms", "x harness LoRA", "plain x full FT",
                          "harness LoRA x full FT"], rows)
        if family_rows:
            full, lora = (c.name for c in FAMILY_BASE)
            rows = [[c.name, info[c.name]["median"] * 1e3, f"±{info[c.name]['noise']:.0%}",
                     common.paired_ratio(times[c.name], times[full])["ratio"],
                     common.paired_ratio(times[c.name], times[lora])["ratio"],
                     info[c.name]["trainable"], info[c.name]["state"] / common.MIB] for c in FAMILY]
            record.table(f"The LoRA family, B={batch}, T={seq_len} ({device.type}, model dropout off as the defaults): "
                         "rows timed in the same alternation",
                         ["config", "step ms", "noise", "x full FT", "x LoRA", "trainable", "train state MiB"], rows)
    if not args.no_rss:
        seq_len = max(args.seq_lens)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "batches.pt"
            torch.save(common.packed_batches(tokenizer, batch, seq_len, 2), path)
            measured = MAIN + (FAMILY if args.family else ())
            for c in measured[:1] if args.quick else measured:
                print(f"peak RSS: {c.name} in a fresh process")
                mem = common.run_child("bench.train_step", ["--child", c.name, "--batches", str(path)]
                                       + (["--quick"] if args.quick else []))
                rows.append([c.name, mem["rss_loaded_mib"], mem["peak_rss_mib"],
                             mem["peak_rss_mib"] - mem["rss_loaded_mib"], mem["cuda_peak_allocated_mib"],
                             mem["cuda_peak_reserved_mib"]])
        record.table(f"Memory, B={batch}, T={seq_len}, one fresh process per config (build, then 2 steps)",
                     ["config", "RSS built MiB", "peak RSS MiB", "peak - built MiB", "CUDA alloc MiB",
                      "CUDA reserved MiB"], rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
