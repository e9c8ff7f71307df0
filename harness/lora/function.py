"""The LoRA layer's arithmetic as one autograd Function, so every GEMM runs in the fast layout.

Separate from the layer (layer.py) because this is the part that is about speed, not meaning:
LoraLinear's formula is the definition, this is how it is computed.
"""

from __future__ import annotations

import torch


class LoraFunction(torch.autograd.Function):
    """y = x W^T + b + (s A x_d^T)^T B^T, with hand-written backward for GEMM layout, not maths.

    x_d is the dropped-out adapter input (None: the same tensor as x). Every thin product keeps the
    rank r as its *row* count: hT = s A x_d^T is (r, N), never (N, r). On CPU, MKL runs (N, in) @
    (in, r) 2-6x slower than (r, in) @ (in, N) for the same FLOPs, and autograd's generic backward
    of two nn.Linear calls picks the slow layouts; bench/train_step.py --plain measures the
    difference (all-linear MiniLM step 0.98x full FT with loralib's plain wrapper, 0.79x with this). The adapter output is added into the base
    output in place (addmm_), and dx sums the base and adapter paths in one buffer. The scale is
    applied to the thin (r, N) tensors only.

    Only what backward will read is saved (None for the rest), decided from which inputs need a
    gradient: with dropout on and the base frozen, x itself is needed by nothing (dA reads x_d, dx
    reads W, A and B), and keeping it would hold one more (N, in) activation per layer until
    backward: 2.99 MB instead of 2.20 MB for N=512 tokens of a 384x384 layer.
    """

    @staticmethod
    def forward(ctx, x, x_d, weight, bias, a, b, scaling, fan_in_fan_out):
        w_t = weight if fan_in_fan_out else weight.t()  # (in, out) view, no copy
        y = torch.addmm(bias, x, w_t) if bias is not None else torch.mm(x, w_t)
        ht = torch.mm(a, (x if x_d is None else x_d).t()).mul_(scaling)  # (r, N)
        y.addmm_(ht.t(), b.t())
        need_x, need_xd, need_w, _, need_a, need_b = ctx.needs_input_grad[:6]
        need_input = need_x or need_xd  # dx / dx_d: W, A and B
        keep = lambda t, needed: t if needed else None  # noqa: E731
        ctx.save_for_backward(
            keep(x, need_w or (x_d is None and need_a)),  # dW = gy^T x; dA = ght x when x_d is x
            keep(x_d, need_a),                            # dA = ght x_d
            keep(weight, need_x),                         # dx = gy W
            keep(a, need_input),                          # dx (adapter path) = ght^T A
            keep(b, need_input or need_a),                # ght = s B^T gy^T
            keep(ht, need_b),                             # dB = (ht gy)^T
        )
        ctx.scaling, ctx.fan_in_fan_out, ctx.separate = scaling, fan_in_fan_out, x_d is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, x_d, weight, a, b, ht = ctx.saved_tensors
        need_x, need_xd, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        grad_x = grad_xd = grad_w = grad_bias = grad_a = grad_b = None
        # (r, N): d loss / d (A x_d^T); b is saved exactly when some gradient needs it
        ght = torch.mm(b.t(), gy.t()).mul_(ctx.scaling) if b is not None else None
        if need_a:
            grad_a = torch.mm(ght, x_d if ctx.separate else x)  # (r, in)
        if need_b:
            grad_b = torch.mm(ht, gy).t()  # (out, r), computed as (r, N) @ (N, out)
        if need_x:
            grad_x = torch.mm(gy, weight.t() if ctx.fan_in_fan_out else weight)  # base path
            if not ctx.separate:
                grad_x.addmm_(ght.t(), a)  # adapter path into the same buffer (else via grad_xd)
        if need_xd:
            grad_xd = torch.mm(ght.t(), a)
        if need_w:  # only when someone unfroze the base weight
            grad_w = torch.mm(x.t(), gy) if ctx.fan_in_fan_out else torch.mm(gy.t(), x)
        if need_bias:
            grad_bias = gy.sum(0)
        return grad_x, grad_xd, grad_w, grad_bias, grad_a, grad_b, None, None
