"""LoraFunction's hand-written backward: against finite differences, the dense formula, and what it saves."""

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from harness.lora import LoraFunction, LoraLinear


@pytest.mark.parametrize("fan_in_fan_out", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("separate_dropout_input", [False, True])
@pytest.mark.parametrize("frozen_base", [False, True])
def test_lora_function_gradcheck(fan_in_fan_out, separate_dropout_input, frozen_base):
    """The hand-written backward against finite differences (fp64), with every input differentiable
    and with the base frozen (then the Function saves fewer tensors)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad)

    x, a, b = t(6, 5), t(3, 5), t(4, 3)
    w, bias = t(*((5, 4) if fan_in_fan_out else (4, 5)), grad=not frozen_base), t(4, grad=not frozen_base)
    x_d = t(6, 5) if separate_dropout_input else None
    assert torch.autograd.gradcheck(lambda *args: LoraFunction.apply(*args, 1.7, fan_in_fan_out),
                                    (x, x_d, w, bias, a, b))


def _saved_bytes(fn) -> int:
    """Bytes of every tensor autograd saves for backward while `fn()` runs (saved_tensors_hooks)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().sum().backward()
    return sum(sizes)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("frozen_base", [True, False], ids=["frozen", "trainable-base"])
def test_saved_tensors_are_only_what_backward_reads(dropout, frozen_base):
    """N=512 tokens through a 384 -> 384 layer, r=8, fp32. The layer's own saves, counted by hand:
    weight W (a reference to the parameter, no new memory), A, B and hT = s A x_d^T; x_d, the
    dropped-out input, for dA; x itself only for dW (a trainable base) or as dA's input when there
    is no dropout; plus whatever dropout saves for itself (measured on its own below)."""
    N, d, r = 512, 384, 8
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(d, d), r=r, alpha=16, dropout=dropout).train()
    layer.base.requires_grad_(not frozen_base)
    x = torch.randn(N, d, requires_grad=True)
    act, weight, a, b, ht = 4 * N * d, 4 * d * d, 4 * r * d, 4 * d * r, 4 * r * N
    if dropout:
        dropout_own = _saved_bytes(lambda: nn.functional.dropout(x, dropout))  # its mask
        expected = weight + a + b + ht + act + (0 if frozen_base else act) + dropout_own  # x_d (+ x)
    else:
        expected = weight + a + b + ht + act  # x once, serving dA (and dW)
    assert _saved_bytes(lambda: layer(x)) == expected
    # the figures in the Function's docstring: 2.20 MB with dropout on and the base frozen (2.99 MB
    # before only backward's tensors were kept); 1.42 MB without dropout
    assert {(0.1, True): 2_203_648, (0.1, False): 2_990_080, (0.0, True): 1_417_216,
            (0.0, False): 1_417_216}[(dropout, frozen_base)] == expected


def test_frozen_base_with_dropout_gradients_match_dense_reference():
    """dx, dA, dB with dropout on and a frozen base (x itself not saved) equal the dense formula
    under the same dropout mask."""
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(7, 5).double(), r=3, alpha=6, dropout=0.5).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(9)
    layer(x).backward(gy)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]

    W, bias = layer.base.weight, layer.base.bias
    x2, A, B = (t.detach().clone().requires_grad_() for t in (x, layer.lora_A.weight, layer.lora_B.weight))
    torch.manual_seed(9)  # the same mask
    (x2 @ W.T + bias + 2.0 * nn.functional.dropout(x2, 0.5) @ A.T @ B.T).backward(gy)
    for mine, ref in zip(got, [x2.grad, A.grad, B.grad]):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("base", [nn.Linear(7, 5), Conv1D(nf=5, nx=7)], ids=["linear", "conv1d"])
def test_gradients_match_dense_reference(base):
    """dx, dA, dB of the layer (3-d input, frozen base) equal autograd through the dense formula."""
    torch.manual_seed(0)
    layer = LoraLinear(base.double(), r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 5, dtype=torch.float64)
    layer(x).backward(gy)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    assert base.weight.grad is None and base.bias.grad is None

    W = base.weight.T if isinstance(base, Conv1D) else base.weight
    x2, A, B = (t.detach().clone().requires_grad_() for t in (x, layer.lora_A.weight, layer.lora_B.weight))
    (x2 @ W.T + base.bias + 2.0 * x2 @ A.T @ B.T).backward(gy)
    for mine, ref in zip(got, [x2.grad, A.grad, B.grad]):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)
