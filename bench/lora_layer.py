"""Item 2: what one LoraLinear costs next to the frozen base layer, a dense reference and a
trainable Linear, for square layers of typical widths (384 MiniLM, 768 BERT-base, 4096 7B models).

Variants of one (d -> d) layer on `rows` tokens, all timed alternating in one process:
    base      the frozen nn.Linear alone (input requires grad, as inside a network: dgrad only)
    lora      harness.lora.LoraLinear: its autograd Function keeps every thin GEMM laid out as
              (r, .) @ (., N) instead of (N, .) @ (., r), adds in place, sums dx in one buffer
    loralib   the plain wrapper of loralib: base(x) + (x @ A.T @ B.T) * s, autograd's backward
    dense     the reference y = x @ (W + s * B @ A).T + b, B @ A materialized
    full      a trainable nn.Linear: what full fine-tuning pays for the same layer
"forward" is a training forward (autograd records the graph); "fwd+bwd" adds backward of a fixed
upstream gradient. Each timed call repeats the op enough times to last >= ~40 ms, since this
machine's clock for short ops is coarse (steps of ~4-8 ms under load).

Structural checks (torch.profiler on one fwd+bwd): the adapter path launches no dropout op when
p=0 and never materializes B @ A; LoraLinear's output and adapter gradients match the dense
reference.

    python -m bench.lora_layer
    python -m bench.lora_layer --dims 384 768 --ranks 8 --steps 20
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import common
from harness.lora import LoraLinear

VARIANTS = ("base", "lora", "loralib", "dense", "full")


class _Over(nn.Module):
    """Another forward over a LoraLinear's own tensors, so the comparison shares weights exactly."""

    def __init__(self, lora: LoraLinear):
        super().__init__()
        self.lora = lora


class LoralibLinear(_Over):
    """loralib's layers.py forward: result = F.linear(x, W, b); result += (x @ A.T @ B.T) * scaling."""

    def forward(self, x):
        m = self.lora
        return m.base(x) + (x @ m.lora_A.weight.t() @ m.lora_B.weight.t()) * m.scaling


class DenseLinear(_Over):
    """The reference: x @ (W + s * B @ A).T + b with the (out, in) update materialized each call."""

    def forward(self, x):
        m = self.lora
        return F.linear(x, m.base.weight + m.scaling * (m.lora_B.weight @ m.lora_A.weight), m.base.bias)


def use_plain(model: nn.Module) -> int:
    """Swap the forward of every (unmerged, dropout-free) LoraLinear in `model` for loralib's plain
    wrapper, in place, so a whole training step can be timed with the layout LoraLinear replaced.
    Returns how many layers were swapped."""
    from harness.lora import lora_layers

    n = 0
    for layer in lora_layers(model).values():
        if isinstance(layer.dropout, nn.Dropout) or layer.merged:
            raise ValueError("the plain-wrapper comparison covers dropout=0, unmerged layers only")
        layer.forward = LoralibLinear(layer).forward
        n += 1
    return n


def make_layers(d: int, r: int, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    base = nn.Linear(d, d).requires_grad_(False)
    lora = LoraLinear(nn.Linear(d, d), r, alpha=2 * r)
    with torch.no_grad():
        lora.base.weight.copy_(base.weight)
        lora.base.bias.copy_(base.bias)
        nn.init.normal_(lora.lora_B.weight, std=0.02)  # a trained adapter, not the all-zero start
    full = nn.Linear(d, d)
    return {"base": base, "lora": lora, "loralib": LoralibLinear(lora), "dense": DenseLinear(lora), "full": full}


def call(module, x, grad, backward: bool, reps: int):
    def run():
        for _ in range(reps):
            y = module(x)
            if backward:
                y.backward(grad)
                for p in module.parameters():
                    p.grad = None
                x.grad = None
    return run


def check_against_dense(variant: str = "lora", d: int = 64, r: int = 8) -> float:
    """Max abs difference of a variant vs the dense reference in fp64: output, dx, dA, dB."""
    layers = make_layers(d, r)
    lora = layers["lora"].double()

    def run(name):
        x = torch.randn(5, 7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        g = torch.randn(5, 7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        lora.zero_grad(set_to_none=True)
        y = layers[name](x)
        y.backward(g)
        return [y, x.grad, lora.lora_A.weight.grad, lora.lora_B.weight.grad]

    return max((a - b).abs().max().item() for a, b in zip(run(variant), run("dense")))


def op_census(layer: nn.Module, d: int, r: int) -> dict:
    """aten ops of one fwd+bwd of a (d -> d, rank r) layer: count (top level), whether a dropout op
    ran, whether a matmul multiplied a (d, r) by an (r, d) operand, i.e. materialized B @ A."""
    from torch.profiler import profile

    x = torch.randn(4, 3, d, requires_grad=True)
    with profile(record_shapes=True) as prof:
        layer(x).sum().backward()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    dropout_ops = [e.name for e in events if "dropout" in e.name or "bernoulli" in e.name]
    ba = [e.name for e in events if e.name in ("aten::mm", "aten::matmul", "aten::addmm")
          and any(list(s) == [d, r] for s in e.input_shapes) and any(list(s) == [r, d] for s in e.input_shapes)]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"aten_ops": len(top), "dropout_op": bool(dropout_ops), "ba_materialized": bool(ba)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, steps=10, warmup=2)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768, 4096])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--rows", type=int, default=2048, help="tokens per call (B*T; default 2048 = 16 x 128)")
    parser.add_argument("--rows-wide", type=int, default=256,
                        help="tokens per call for widths >= 2048, whose GEMMs are ~100x dearer (default 256)")
    parser.add_argument("--min-call-s", type=float, default=0.04, help="repeat each op to last about this long")
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    if args.quick:
        args.dims, args.ranks, args.rows, args.rows_wide, args.steps, args.warmup, args.min_call_s = \
            [64], [8], 64, 64, 2, 1, 0.0
    record = common.Record("lora_layer", {k: v for k, v in vars(args).items() if k != "out"}, argv)
    fwd_rows, bwd_rows, raw = [], [], {}
    for d in args.dims:
        for r in args.ranks:
            rows = args.rows if d < 2048 else args.rows_wide
            layers = make_layers(d, r)
            x = torch.randn(rows, d, requires_grad=True)
            grad = torch.randn(rows, d)
            # calibrate: repeat the frozen base's fwd+bwd until a call lasts >= min_call_s
            t = common.interleave({"base": call(layers["base"], x, grad, True, 1)}, 2, 1)["base"]
            reps = max(1, math.ceil(args.min_call_s / max(min(t), 1e-6)))
            for backward, out in ((False, fwd_rows), (True, bwd_rows)):
                label = f"d={d} r={r} {'fwd+bwd' if backward else 'fwd'}"
                print(f"{label}: {rows} rows, {reps} reps per call, {len(VARIANTS)} variants alternating")
                times = common.interleave({v: call(layers[v], x, grad, backward, reps) for v in VARIANTS},
                                          args.steps, args.warmup)
                raw[label] = {"rows": rows, "reps": reps, "times": times}
                med = {v: common.summarize(times[v])["median"] / reps * 1e3 for v in VARIANTS}

                def vs(a, b):
                    return common.paired_ratio(times[a], times[b])["ratio"]

                out.append([d, r, rows, med["base"], med["lora"], vs("lora", "base"), vs("loralib", "base"),
                            vs("dense", "base"), vs("full", "base"), vs("lora", "full"),
                            f"±{common.summarize(times['lora'])['noise']:.0%}"])
    cols = ["d", "r", "rows", "base ms", "lora ms", "lora/base", "loralib/base", "dense/base",
            "full/base", "lora/full", "lora noise"]
    record.table("LoRA layer, training forward (graph recorded), ratios paired per round", cols, fwd_rows)
    record.table("LoRA layer, forward + backward", cols, bwd_rows,
                 note="base = frozen Linear; full = trainable Linear; loralib = plain two-Linear wrapper")
    d0, r0 = 48, 8  # any small shape: the census is structural; d != 4r so shapes cannot be confused
    census = []
    for name, p in (("LoraLinear", 0.0), ("LoraLinear", 0.1), ("loralib wrapper", 0.0), ("dense reference", 0.0)):
        torch.manual_seed(0)
        lora = LoraLinear(nn.Linear(d0, d0), r0, alpha=16, dropout=p)
        wrap = {"dense reference": DenseLinear, "loralib wrapper": LoralibLinear}.get(name, lambda m: m)
        c = op_census(wrap(lora), d0, r0)
        diff = {"LoraLinear": check_against_dense("lora") if p == 0 else None,
                "loralib wrapper": check_against_dense("loralib")}.get(name)
        census.append([name, p, c["aten_ops"], c["dropout_op"], c["ba_materialized"], diff])
    record.table("Structure of one fwd+bwd (torch.profiler); the dense row shows the B@A check can fire",
                 ["layer", "dropout", "top-level aten ops", "dropout op", "B@A materialized",
                  "max |diff| vs dense (fp64)"], census)
    record.data["raw"] = raw
    record.write(args.out)


if __name__ == "__main__":
    main()
