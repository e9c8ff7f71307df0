"""What the LoRA tests share: token ids for the tiny models, and adapters given "trained" values."""

import copy

import torch

from harness.lora import LoraConfig, apply_lora, lora_layers

BERT_QV = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


def ids(batch=2, seq=7, seed=1):
    return torch.randint(0, 99, (batch, seq), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=2):
    """Give every B (and A) nonzero values, as after training, so the adapter path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)


def train_like(model, seed):
    """Stand-in for training: random nonzero values in every trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def adapted_bert(base, seed, **kwargs):
    """A copy of `base` with LoRA applied and 'trained'; `base` itself stays untouched."""
    model = copy.deepcopy(base)
    apply_lora(model, LoraConfig(**{"r": 4, "alpha": 8, "modules_to_save": ["classifier"], **kwargs}))
    train_like(model, seed)
    return model
