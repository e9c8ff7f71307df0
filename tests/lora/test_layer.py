"""LoraLinear against dense references: the formula, the inits, dropout, autocast, merge / unmerge."""

import math

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from harness.lora import LoraLinear


def test_linear_forward_matches_dense_reference():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = LoraLinear(base, r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 4, 7)
    W, b, A, B = base.weight, base.bias, layer.lora_A.weight, layer.lora_B.weight
    assert layer.scaling == 2.0  # 6 / 3
    ref = x @ W.T + b + 2.0 * x @ A.T @ B.T
    torch.testing.assert_close(layer(x), ref, atol=1e-6, rtol=0)
    assert layer(x).shape == (2, 4, 5)


def test_conv1d_forward_matches_dense_reference():
    torch.manual_seed(0)
    base = Conv1D(nf=5, nx=7)  # weight (in=7, out=5)
    layer = LoraLinear(base, r=3, alpha=6, rslora=True)
    nn.init.normal_(layer.lora_B.weight)
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (7, 5, True)
    assert layer.lora_A.weight.shape == (3, 7) and layer.lora_B.weight.shape == (5, 3)
    assert layer.scaling == pytest.approx(6 / math.sqrt(3))  # 3.4641
    x = torch.randn(3, 7)
    ref = x @ base.weight + base.bias + layer.scaling * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), ref, atol=1e-6, rtol=0)


def test_base_weight_is_held_not_copied():
    base = nn.Linear(8, 8)
    layer = LoraLinear(base, r=2, alpha=4)
    assert layer.base is base and layer.base.weight is base.weight
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad


def test_kaiming_init_statistics():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(256, 128), r=64, alpha=64)
    A, bound = layer.lora_A.weight, 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
    assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform std = bound/sqrt(3)
    assert abs(A.mean().item()) < 0.002


def test_gaussian_init_statistics():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(256, 128), r=16, alpha=32, init="gaussian")
    A = layer.lora_A.weight  # peft's "gaussian": N(0, std=1/r)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert A.std().item() == pytest.approx(1 / 16, rel=0.03)
    assert abs(A.mean().item()) < 0.002


def _residual_init(base, init):
    """(W0 as (out, in), an input, the base's output on it, the LoraLinear with `init`) for r=3, alpha=6."""
    torch.manual_seed(0)
    W0 = (base.weight.T if isinstance(base, Conv1D) else base.weight).detach().clone()  # (out, in)
    x = torch.randn(4, 12)
    y0 = base(x).detach()
    return W0, x, y0, LoraLinear(base, r=3, alpha=6, init=init)


@pytest.mark.parametrize("base", [nn.Linear(12, 9), Conv1D(nf=9, nx=12)], ids=["linear", "conv1d"])
def test_pissa_init_is_top_r_svd_and_keeps_output(base):
    W0, x, y0, layer = _residual_init(base, "pissa")
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    top = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    scaled_BA = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    torch.testing.assert_close(scaled_BA, top, atol=1e-5, rtol=0)
    W_res = base.weight.T if isinstance(base, Conv1D) else base.weight
    torch.testing.assert_close(torch.linalg.svdvals(W_res)[:6], S[3:9], atol=1e-5, rtol=0)  # residual spectrum
    torch.testing.assert_close(layer(x), y0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("base", [nn.Linear(12, 9), Conv1D(nf=9, nx=12)], ids=["linear", "conv1d"])
def test_olora_init_is_the_qr_of_w_and_keeps_output(base):
    """peft's olora_init: W = Q R, B = Q[:, :r], A = R[:r] (unscaled), residual W - s B A."""
    W0, x, y0, layer = _residual_init(base, "olora")
    Q, R = torch.linalg.qr(W0)
    torch.testing.assert_close(layer.lora_B.weight, Q[:, :3], atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.lora_A.weight, R[:3], atol=1e-6, rtol=0)
    W_res = base.weight.T if isinstance(base, Conv1D) else base.weight
    torch.testing.assert_close(W_res, W0 - 2.0 * Q[:, :3] @ R[:3], atol=1e-6, rtol=0)  # scaling 6 / 3
    torch.testing.assert_close(layer(x), y0, atol=1e-5, rtol=0)
    assert torch.equal(layer.init_A0, layer.lora_A.weight) and torch.equal(layer.init_B0, layer.lora_B.weight)


def test_dropout_only_on_adapter_input():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(64, 8), r=4, alpha=8, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(16, 64) + 3.0  # no exact zeros in x
    W, b, A, B = layer.base.weight, layer.base.bias, layer.lora_A.weight, layer.lora_B.weight

    layer.train()
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)  # the same draw: dropout is the layer's only random op
    x_d = nn.functional.dropout(x, 0.5)
    dropped = x_d == 0
    assert 0.3 < dropped.float().mean().item() < 0.7
    torch.testing.assert_close(x_d[~dropped], 2 * x[~dropped])  # inverted dropout: x / (1 - p)
    ref = x @ W.T + b + layer.scaling * x_d @ A.T @ B.T  # the base path sees the raw input
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)

    layer.eval()
    ref = layer.base(x) + layer.scaling * x @ A.T @ B.T
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=0)
    assert torch.equal(layer(x), layer(x))


def test_autocast_runs_the_adapter_in_bf16_and_keeps_fp32_grads():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(32, 16), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # as nn.Linear under autocast
    ref = layer.base(x) + layer.scaling * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.02)
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32 and layer.lora_B.weight.grad.dtype == torch.float32
    assert layer.lora_B.weight.grad.abs().sum() > 0


def test_zero_dropout_is_identity_module():
    assert isinstance(LoraLinear(nn.Linear(4, 4), r=2, alpha=2).dropout, nn.Identity)
    assert isinstance(LoraLinear(nn.Linear(4, 4), r=2, alpha=2, dropout=0.1).dropout, nn.Dropout)


def test_merge_twice_and_unmerge_unmerged_warn_and_do_nothing():
    layer = LoraLinear(nn.Linear(6, 6), r=2, alpha=2)
    nn.init.normal_(layer.lora_B.weight)
    W0 = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, W0)
    layer.merge()
    W1 = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, W1)


def test_bf16_merge_is_computed_in_fp32():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(64, 64).to(torch.bfloat16), r=8, alpha=16)
    assert layer.lora_A.weight.dtype == torch.bfloat16
    nn.init.normal_(layer.lora_B.weight)
    W, A, B = (t.detach().clone() for t in (layer.base.weight, layer.lora_A.weight, layer.lora_B.weight))
    s = layer.scaling  # 16 / 8 = 2
    fp32_ref = (W.float() + s * B.float() @ A.float()).to(torch.bfloat16)
    naive_bf16 = W + s * (B @ A)  # three bf16 roundings
    assert not torch.equal(naive_bf16, fp32_ref)  # the check below can tell the two apart
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    assert torch.equal(layer.base.weight, fp32_ref)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W, atol=0.02, rtol=0.01)  # one bf16 rounding away


def test_layer_rejects_bad_input():
    with pytest.raises(ValueError, match="Embedding.*nn.Linear or transformers Conv1D"):
        LoraLinear(nn.Embedding(5, 4), r=2, alpha=2)
    with pytest.raises(ValueError, match="r=0"):
        LoraLinear(nn.Linear(4, 4), r=0, alpha=2)
    with pytest.raises(ValueError, match=r"r=5: pissa needs r <= min\(in, out\) = 4"):
        LoraLinear(nn.Linear(4, 6), r=5, alpha=2, init="pissa")
