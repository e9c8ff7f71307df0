"""DoraLinear against a dense W' = m * V / ||V||_c reference with the norm detached by hand."""

import copy

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from harness.lora import DoraLinear, LoraConfig, apply_lora, count_parameters, load_adapter, lora_layers, \
    read_adapter, save_adapter
from tests.lora.helpers import ids, train_like


def dense_reference(base, A, B, m, s, x, xd=None):
    """peft's DoRA, written out: y = W0 x + b + (g - 1) W0 x_d + g s B A x_d with g = m / ||W0 + s B A||_c
    and the norm a constant (.detach()); without dropout (xd None) this is g * (W0 + s B A) x + b."""
    W0 = base.weight.T if isinstance(base, Conv1D) else base.weight  # (out, in)
    g = m / (W0 + s * B @ A).norm(dim=1).detach()
    if xd is None:
        return (g[:, None] * (W0 + s * B @ A)) @ x.T + base.bias[:, None]
    return (x @ W0.T + base.bias + (g - 1) * (xd @ W0.T) + g * s * (xd @ A.T @ B.T)).T


def trained_layer(base, r=3, alpha=6, **kwargs):
    layer = DoraLinear(base, r=r, alpha=alpha, **kwargs)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (layer.lora_A.weight, layer.lora_B.weight):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        layer.lora_magnitude_vector.mul_(1 + 0.2 * torch.randn(layer.out_features, generator=g))
    return layer


@pytest.mark.parametrize("make_base", [lambda: nn.Linear(7, 5), lambda: Conv1D(nf=5, nx=7)], ids=["linear", "conv1d"])
def test_forward_and_gradients_match_the_dense_formula_with_a_detached_norm(make_base):
    torch.manual_seed(0)
    layer = trained_layer(make_base())
    x = torch.randn(4, 7)
    A, B, m = (t.detach().clone().requires_grad_(True) for t in
               (layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector))
    ref = dense_reference(layer.base, A, B, m, layer.scaling, x).T
    y = layer(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for got, want in [(layer.lora_A.weight.grad, A.grad), (layer.lora_B.weight.grad, B.grad),
                      (layer.lora_magnitude_vector.grad, m.grad)]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert layer.base.weight.grad is None
    # The detach matters: with the norm in the graph, A's gradient is another number.
    A2 = A.detach().clone().requires_grad_(True)
    W0 = layer.base.weight.T if isinstance(layer.base, Conv1D) else layer.base.weight
    V = W0 + layer.scaling * B.detach() @ A2
    ((m.detach() / V.norm(dim=1))[:, None] * V @ x.T).T.mul(upstream).sum().backward()
    assert (A2.grad - A.grad).abs().max() > 1e-3


class FixedMask(nn.Module):
    """A 'dropout' with a known mask, so the reference sees the same x_d."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def test_dropout_follows_peft_base_path_clean_direction_correction_dropped():
    torch.manual_seed(0)
    layer = trained_layer(nn.Linear(7, 5), dropout=0.5)
    x = torch.randn(4, 7)
    mask = (torch.rand(4, 7) > 0.5).float() * 2
    layer.dropout = FixedMask(mask)
    ref = dense_reference(layer.base, layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector,
                          layer.scaling, x, xd=x * mask).T
    torch.testing.assert_close(layer.train()(x), ref, atol=1e-5, rtol=0)
    layer.dropout = nn.Dropout(0.5)
    no_drop = dense_reference(layer.base, layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector,
                              layer.scaling, x).T
    torch.testing.assert_close(layer.eval()(x), no_drop, atol=1e-5, rtol=0)  # eval: no dropout at all


@pytest.mark.parametrize("init", ["kaiming", "gaussian", "pissa", "olora"])
def test_step_zero_equals_the_base_and_magnitude_starts_at_the_column_norms(init):
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    W0, x = base.weight.detach().clone(), torch.randn(4, 12)
    y0 = base(x).detach()
    layer = DoraLinear(base, r=3, alpha=6, init=init)
    torch.testing.assert_close(layer.lora_magnitude_vector.detach(), W0.norm(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), y0, atol=1e-5, rtol=0)
    assert layer.lora_magnitude_vector.requires_grad and layer.lora_magnitude_vector.shape == (9,)


@pytest.mark.parametrize("make_base", [lambda: nn.Linear(7, 5), lambda: Conv1D(nf=5, nx=7)], ids=["linear", "conv1d"])
def test_merge_gives_the_same_outputs_and_unmerge_restores_the_base(make_base):
    torch.manual_seed(0)
    layer = trained_layer(make_base())
    W0 = layer.base.weight.detach().clone()
    x = torch.randn(4, 7)
    y = layer(x).detach()
    layer.merge()
    merged = layer.base.weight.T if layer.fan_in_fan_out else layer.base.weight  # (out, in)
    torch.testing.assert_close(merged.norm(dim=1), layer.lora_magnitude_vector.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)


def test_apply_lora_with_dora_trains_magnitudes_and_counts_them(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, use_dora=True, modules_to_save=["classifier"]))
    layers = lora_layers(tiny_bert)
    assert len(layers) == 4 and all(isinstance(layer, DoraLinear) for layer in layers.values())
    adapter = 4 * (4 * (32 + 32) + 32)  # A, B and one magnitude per output feature, 4 layers
    c = count_parameters(tiny_bert)
    assert (c["adapter"], c["head"], c["trainable"]) == (adapter, 66, adapter + 66)


def test_dora_adapter_file_is_peft_shaped_and_round_trips(tiny_bert, tmp_path):
    trained = copy.deepcopy(tiny_bert)
    apply_lora(trained, LoraConfig(r=4, alpha=8, use_dora=True, dropout=0.1, modules_to_save=["classifier"]))
    train_like(trained, seed=3)  # magnitudes too: every trainable tensor
    save_adapter(trained, tmp_path)
    config, tensors = read_adapter(tmp_path)
    assert config["use_dora"] is True
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector"
    assert tensors[key].shape == (32,)
    assert sum(k.endswith("lora_magnitude_vector") for k in tensors) == 4
    load_adapter(tiny_bert, tmp_path)
    assert all(isinstance(layer, DoraLinear) for layer in lora_layers(tiny_bert).values())
    x = ids()
    torch.testing.assert_close(tiny_bert.eval()(x).logits, trained.eval()(x).logits, atol=0, rtol=0)


def test_dora_and_plain_adapters_do_not_share_one_base(tiny_bert, tmp_path):
    dora = copy.deepcopy(tiny_bert)
    apply_lora(dora, LoraConfig(r=4, alpha=8, use_dora=True, modules_to_save=["classifier"]))
    save_adapter(dora, tmp_path)
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, modules_to_save=["classifier"]))
    with pytest.raises(ValueError, match="use_dora=True but the model's LoRA layers have use_dora=False"):
        load_adapter(tiny_bert, tmp_path)


def test_autocast_runs_in_bf16_and_keeps_fp32_grads():
    torch.manual_seed(0)
    layer = trained_layer(nn.Linear(16, 8))
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert {p.grad.dtype for p in (layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector)} == \
        {torch.float32}
    torch.testing.assert_close(y.float(), layer(x).detach(), atol=0.05, rtol=0.02)  # bf16 rounding only
