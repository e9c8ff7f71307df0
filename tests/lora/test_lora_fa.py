"""LoRA-FA: A frozen at its random init, only B trains; the counts and state bytes follow."""

import copy

import torch

from harness.config import TrainerConfig
from harness.lora import LoraConfig, apply_lora, count_parameters, load_adapter, lora_layers, save_adapter, \
    trainable_state_bytes
from harness.train import build_optimizer
from tests.lora.helpers import ids


def test_only_b_trains_and_a_stays_at_its_init(tiny_bert):
    torch.manual_seed(0)
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, freeze_a=True, modules_to_save=["classifier"]))
    layers = lora_layers(tiny_bert)
    a0 = {n: layer.lora_A.weight.detach().clone() for n, layer in layers.items()}
    b0 = {n: layer.lora_B.weight.detach().clone() for n, layer in layers.items()}
    assert all(torch.count_nonzero(a) > 0 for a in a0.values())  # a random projection, kaiming
    opt = build_optimizer(TrainerConfig(), tiny_bert, lr=1e-2)
    for _ in range(2):
        out = tiny_bert(ids(), labels=torch.tensor([0, 1]))
        out.loss.backward()
        for layer in layers.values():
            assert layer.lora_A.weight.grad is None and layer.lora_B.weight.grad is not None
        opt.step()
        opt.zero_grad()
    for n, layer in layers.items():
        assert torch.equal(layer.lora_A.weight, a0[n])
        assert not torch.equal(layer.lora_B.weight, b0[n])


def test_counts_and_state_bytes_count_b_alone(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, freeze_a=True, modules_to_save=["classifier"]))
    b_only = 4 * 32 * 4  # 4 layers x B (out=32, r=4); A's 4 x 4 x 32 are frozen
    total = 20044 + 4 * 4 * (32 + 32)  # base (test_params) + A and B
    assert count_parameters(tiny_bert) == {"trainable": b_only + 66, "total": total,
                                           "trainable_pct": 100 * (b_only + 66) / total, "adapter": b_only,
                                           "head": 66}
    assert trainable_state_bytes(tiny_bert) == {"param_bytes": 4 * total, "grad_bytes": 4 * (b_only + 66),
                                                "optimizer_bytes": 8 * (b_only + 66),
                                                "state_bytes": 4 * total + 12 * (b_only + 66)}


def test_the_file_holds_a_too_and_loads_as_plain_lora(tiny_bert, tmp_path):
    """The frozen A is part of the adapter (B A is the update), so the file is plain LoRA's."""
    trained = copy.deepcopy(tiny_bert)
    apply_lora(trained, LoraConfig(r=4, alpha=8, freeze_a=True, modules_to_save=["classifier"]))
    with torch.no_grad():
        for layer in lora_layers(trained).values():
            layer.lora_B.weight.normal_(std=0.3)
    save_adapter(trained, tmp_path)
    load_adapter(tiny_bert, tmp_path)
    x = ids()
    assert torch.equal(tiny_bert(x).logits, trained(x).logits)
