"""Model FLOPs and MFU, counted the way the comparison needs them.

Model FLOPs (`model_flops`) count the matmuls the architecture needs per real token (the attention
mask's ones, not padding), so that MFU = FLOPs/token x real tokens/s / the device's dense bf16 peak.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from harness.lora import LINEAR_TYPES, LoraLinear, in_out_features

log = logging.getLogger(__name__)


# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, matched against
# torch.cuda.get_device_name by substring, most specific first. Unknown devices get no MFU.
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
    ("V100", 125e12),
)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The device's dense bf16 peak FLOP/s from PEAK_BF16_FLOPS; None for CPUs and unknown GPUs."""
    if not device_name:
        return None
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


@dataclass(frozen=True)
class ModelFlops:
    """Training FLOPs of a batch as a function of its real sequence lengths L_i:

        per_token * sum(L_i) + per_sequence * len(L) + attention * sum(L_i ** 2)

    Every matmul weight W (in x out) costs 2*in*out per row forward and as much backward for the
    activation gradient (counted on every layer, frozen or not), plus 2*in*out for the weight
    gradient only when W trains: 6x for full fine-tuning, 4x for a frozen base. A LoRA layer's
    base weight, A and B are each such a matmul. Attention's score (Q K^T) and context (P V)
    matmuls are 2 * L^2 * heads * head_dim each per layer forward, twice that backward: 12 L^2 d per
    layer, over the full L x L square (the PaLM convention, causal or not). Embedding lookups are
    not matmuls; recomputation under gradient checkpointing is not model FLOPs.
    """

    per_token: float           # matmuls applied to every token (encoder/decoder layers, LM head)
    per_sequence: float        # matmuls applied once per sequence (BERT's pooler and classifier)
    attention: float           # c: one sequence of L real tokens costs c * L^2 in attention
    matmul_params: int         # weights of the matmuls above, each counted once per use
    trainable_matmul_params: int

    def of_batch(self, attention_mask: torch.Tensor) -> float:
        """FLOPs of one training micro-batch, counting its real tokens only (padding is not model work)."""
        lengths = attention_mask.sum(-1).double()
        return float(self.per_token * lengths.sum() + self.per_sequence * len(lengths)
                     + self.attention * (lengths**2).sum())

    def as_dict(self) -> dict:
        return asdict(self)


def model_flops(model: torch.nn.Module, probe_len: int = 8) -> ModelFlops | None:
    """Count the model's training matmul FLOPs (see ModelFlops), or None when its shape is not one
    this count understands (then MFU is left out, with a warning; training goes on).

    Which matmuls run once per token and which once per sequence is read from one forward pass on a
    probe batch (2 sequences of `probe_len` ones) with hooks on every Linear, Conv1D and LoraLinear:
    rows = 2 * probe_len means per token, rows = 2 per sequence. Modules the probe never calls
    (an unused head) cost nothing.
    """
    batch = 2
    inside_lora = {id(c) for m in model.modules() if isinstance(m, LoraLinear) for c in m.modules() if c is not m}
    weights: dict[int, tuple[int, int]] = {}  # id(module) -> (matmul weights, trainable ones)
    rows: dict[int, int] = {}
    hooks = []
    for m in model.modules():
        if id(m) in inside_lora or not isinstance(m, (LoraLinear, *LINEAR_TYPES)):
            continue
        parts = [m.base.weight] if isinstance(m, LoraLinear) else [m.weight]
        if isinstance(m, LoraLinear) and not m.merged:
            parts += [m.lora_A.weight, m.lora_B.weight]
        weights[id(m)] = (sum(p.numel() for p in parts), sum(p.numel() for p in parts if p.requires_grad))
        in_features = in_out_features(m.base if isinstance(m, LoraLinear) else m)[0]
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, n=in_features: rows.__setitem__(id(mod), rows.get(id(mod), 0) + inp[0].numel() // n)))
    device = next(model.parameters()).device
    probe = torch.ones(batch, probe_len, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()  # no dropout: the probe must not draw from the RNG that training's masks come from
    try:
        with torch.no_grad():
            model(input_ids=probe, attention_mask=probe)
    except Exception as e:  # noqa: BLE001 - a model the probe cannot drive gets no MFU, and still trains
        log.warning("MFU left out: the FLOP-count probe failed (%s: %s)", type(e).__name__, e)
        return None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    per_token = per_sequence = 0.0
    n_all = n_trainable = 0
    for key, n in rows.items():
        total, trainable = weights[key]
        cost = 4 * total + 2 * trainable
        if n == batch * probe_len:
            per_token += cost
        elif n == batch:
            per_sequence += cost
        else:
            log.warning("MFU left out: a matmul saw %d rows for a probe of %d x %d tokens", n, batch, probe_len)
            return None
        n_all, n_trainable = n_all + total, n_trainable + trainable
    cfg = getattr(model, "config", None)
    try:
        layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    except AttributeError as e:
        log.warning("MFU left out: the model config has no attention shape (%s)", e)
        return None
    return ModelFlops(per_token=per_token, per_sequence=per_sequence, attention=12.0 * layers * heads * head_dim,
                      matmul_params=n_all, trainable_matmul_params=n_trainable)
