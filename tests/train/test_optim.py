"""The optimizer's parameter groups: no decay on 1-D tensors, LoRA+'s faster B."""

import pytest
import torch

from harness.config import TrainerConfig
from harness.lora import LoraConfig, apply_lora, lora_layers
from harness.train import build_optimizer, warmup_linear_decay
from tests.lora.helpers import ids, randomize_adapters


def adapted(tiny_bert, **kwargs):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, modules_to_save=["classifier"], **kwargs))
    randomize_adapters(tiny_bert)
    return tiny_bert


def test_lora_plus_groups_give_b_its_own_rate_and_keep_no_decay_on_1d(tiny_bert):
    model = adapted(tiny_bert)
    opt = build_optimizer(TrainerConfig(weight_decay=0.1), model, lr=1e-3, lr_ratio=16)
    b = {id(layer.lora_B.weight) for layer in lora_layers(model).values()}
    a = {id(layer.lora_A.weight) for layer in lora_layers(model).values()}
    groups = [(g["lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in opt.param_groups]
    assert [(lr, wd) for lr, wd, _ in groups] == [(1e-3, 0.1), (1e-3, 0.0), (pytest.approx(1.6e-2), 0.1)]
    assert groups[0][2] == a | {id(model.classifier.weight)} and groups[2][2] == b
    assert groups[1][2] == {id(model.classifier.bias)}
    # off (null or 1): the plain two groups
    for ratio in (None, 1):
        assert [g["lr"] for g in build_optimizer(TrainerConfig(), model, lr=1e-3, lr_ratio=ratio).param_groups] == \
            [1e-3, 1e-3]


def test_the_schedule_keeps_the_ratio_at_every_step(tiny_bert):
    model = adapted(tiny_bert)
    opt = build_optimizer(TrainerConfig(), model, lr=1e-3, lr_ratio=16)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(2, 10))
    for _ in range(5):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[2] == pytest.approx(16 * lrs[0]) and lrs[0] > 0
        opt.step()
        sched.step()


def test_one_lora_plus_step_equals_adamw_written_out(tiny_bert):
    """AdamW's first step by hand: m = (1-b1) g, v = (1-b2) g^2, bias-corrected to g and g^2, so
    p <- p (1 - lr wd) - lr g / (|g| + eps), with lr = 16 x for B and the decay off for 1-D tensors."""
    model = adapted(tiny_bert)
    tcfg = TrainerConfig(weight_decay=0.1)
    opt = build_optimizer(tcfg, model, lr=1e-3, lr_ratio=16)
    model(ids(), labels=torch.tensor([0, 1])).loss.backward()
    b = {id(layer.lora_B.weight) for layer in lora_layers(model).values()}
    expected = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = 1e-3 * (16 if id(p) in b else 1)
            wd = 0.0 if p.ndim < 2 else 0.1
            expected[name] = p.detach() * (1 - lr * wd) - lr * p.grad / (p.grad.abs() + 1e-8)
    opt.step()
    params = dict(model.named_parameters())
    assert len(expected) == 4 * 2 + 2
    for name, want in expected.items():
        torch.testing.assert_close(params[name].detach(), want, atol=1e-7, rtol=1e-6)
