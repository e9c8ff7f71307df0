"""DoRA (Liu et al. 2024): LoRA's update with the weight split into a magnitude and a direction.

Its own module because it is a different formula, not another init: the layer owns one more
trained tensor and its forward is no longer "base plus a low-rank path".
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.lora.layer import LoraLinear


class DoraLinear(LoraLinear):
    """LoraLinear whose adapted weight is re-normalised per output feature and rescaled by a trained
    magnitude m (`lora_magnitude_vector`, shape (out,), peft's name and file key):

        W' = m * V / ||V||_c,   V = W0 + s B A,   ||V||_c: the L2 norm of each output row of V (out,)

    m starts at ||W0 + s B0 A0||_c (= ||W0||_c when B0 = 0, and ||W|| for pissa/olora, whose residual
    plus s B0 A0 is W), so the layer starts equal to its base. The norm is detached (a constant in
    backward), as the paper's section 4.3 recommends and peft does: gradients reach m, A and B
    through m / ||V|| * (V x), not through ||V||. With g = m / ||V||_c (detached in the norm):

        y = g * (W0 x + s B A x) + b                              (no dropout, or in eval)
        y = W0 x + b + (g - 1) * (W0 x_d) + g * s * B A x_d       (training with dropout, x_d = dropout(x))

    The second is peft's arithmetic exactly (dora.py DoraLinearLayer.forward): dropout reaches the
    direction's correction through x_d while the base path keeps the clean x. The norm needs V
    densely every call ((out, in) extra memory and one GEMM of B A): DoRA's known cost. It is
    computed in fp32 even under autocast (peft computes it in the autocast dtype).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "kaiming", rslora: bool = False):
        super().__init__(base, r, alpha, dropout, init, rslora)
        w = self.base.weight
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().to(w.dtype))
        self._merged_norm: torch.Tensor | None = None  # ||V||_c at merge time, for unmerge

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B A||_c per output feature, fp32, detached: (out,)."""
        w = self.base.weight.detach().float()
        w = w.T if self.fan_in_fan_out else w  # (out, in)
        delta = self.scaling * (self.lora_B.weight.detach().float() @ self.lora_A.weight.detach().float())
        return torch.linalg.vector_norm(w + delta, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        g = self.lora_magnitude_vector.float() / self.weight_norm()  # (out,); the norm is a constant
        bias = self.base.bias
        if self.training and not isinstance(self.dropout, nn.Identity):
            w = self.base.weight.T if self.fan_in_fan_out else self.base.weight  # (out, in)
            xd = self.dropout(x)
            base = F.linear(x, w, bias)  # autocast, when on, casts these as it casts base(x)
            g = g.to(base.dtype)
            lora = F.linear(F.linear(xd, self.lora_A.weight), self.lora_B.weight) * self.scaling
            return base + (g - 1) * F.linear(xd, w) + g * lora
        y = self.unmerged_forward(x, None)  # V x = W0 x + s B A x, LoraLinear's kernel
        y = g.to(y.dtype) * y
        return y + bias.to(y.dtype) if bias is not None else y

    @torch.no_grad()
    def merge(self) -> None:
        """base.weight := m * V / ||V||_c (fp32, cast back once); ||V||_c is kept for unmerge, as peft
        does (it cannot be recovered from the merged weight, whose row norms are m)."""
        if self.merged:
            warnings.warn("DoraLinear.merge: already merged; nothing done", stacklevel=2)
            return
        norm = self.weight_norm()
        g = self.lora_magnitude_vector.float() / norm
        w = self.base.weight
        v = w.float() + self.delta_weight()
        w.copy_((v * (g[None, :] if self.fan_in_fan_out else g[:, None])).to(w.dtype))
        self._merged_norm = norm
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """base.weight := merged / g - s B A with the g of the merge (peft's unmerge)."""
        if not self.merged:
            warnings.warn("DoraLinear.unmerge: not merged; nothing done", stacklevel=2)
            return
        g = self.lora_magnitude_vector.float() / self._merged_norm
        w = self.base.weight
        v = w.float() / (g[None, :] if self.fan_in_fan_out else g[:, None])
        w.copy_((v - self.delta_weight()).to(w.dtype))
        self._merged_norm = None
        self.merged = False

    def extra_repr(self) -> str:
        return "dora, " + super().extra_repr()
