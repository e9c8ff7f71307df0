"""The LoRA layer: one wrapper that holds a frozen Linear / Conv1D and owns the low-rank path.

Merging folds the adapter into the base weight for zero-latency inference, and happens only when
asked (`merge` / `unmerge`), never as a side effect of `.eval()`.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from harness.lora.config import RESIDUAL_INITS, check_alpha, check_dropout, check_init, check_r, lora_scaling
from harness.lora.function import LoraFunction

LINEAR_TYPES = (nn.Linear, Conv1D)


def in_out_features(base: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear (weight (out, in)) or Conv1D (weight (in, out))."""
    w = base.weight
    return (w.shape[0], w.shape[1]) if isinstance(base, Conv1D) else (w.shape[1], w.shape[0])


class LoraLinear(nn.Module):
    """A frozen Linear / Conv1D plus a trainable low-rank path:

        y = base(x) + scaling * B(A(dropout(x))),   A: (r, in), B: (out, r), scaling = alpha / r

    (alpha / sqrt(r) with rsLoRA). Dropout touches only the adapter input. Two small matmuls per
    call (`LoraFunction`, which reads base.weight / base.bias directly: base's own forward and
    its hooks run only while merged); B @ A is never materialized except by `merge`, which folds
    it into `base.weight` so that forward is just `base(x)` (adapters get no gradient while
    merged). Conv1D (GPT-2) stores its weight as (in, out); A and B keep the Linear layout either
    way, as peft's files do.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "kaiming", rslora: bool = False):
        super().__init__()
        if not isinstance(base, LINEAR_TYPES):
            raise ValueError(f"base={type(base).__name__}: LoRA wraps nn.Linear or transformers Conv1D only")
        check_r("r", r)
        check_alpha("alpha", alpha)
        dropout = check_dropout(dropout)
        check_init(init)
        self.base = base
        self.fan_in_fan_out = isinstance(base, Conv1D)
        w = base.weight
        self.in_features, self.out_features = in_out_features(base)
        self.r, self.alpha = r, alpha
        self.scaling = lora_scaling(r, alpha, rslora)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        # Identity, not Dropout(0): no kernel launch at all when dropout is off.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        base.requires_grad_(False)
        self.reset_lora_parameters(init)

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        """kaiming: A ~ U(+-1/sqrt(in)) (nn.Linear's default, a=sqrt(5)), B = 0. gaussian: A ~ N(0, std=1/r),
        B = 0 (peft's "gaussian"). pissa: A, B from the top-r SVD of W; olora: from its QR; for both
        base.weight := W - s B A (`_residual_init`). The first two leave the output unchanged because
        B = 0; the residual ones because the residual plus scaling * B @ A is W again."""
        check_init(init)
        if init in RESIDUAL_INITS:
            return self._residual_init(init)
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A.weight, std=1 / self.r)
        nn.init.zeros_(self.lora_B.weight)

    @torch.no_grad()
    def _residual_init(self, init: str) -> None:
        """Train a principal part of W, freeze the rest. PiSSA (Meng et al. 2024): the top-r SVD,
        s B A = U_r diag(S_r) Vh_r. OLoRA (Buyukakyuz 2024, peft's olora_init): W = Q R, B = Q[:, :r],
        A = R[:r] unscaled (so s B A = s Q_r R_r, not Q_r R_r: peft's arithmetic, kept so the numbers
        match). Either way base.weight := W - s B A."""
        if self.r > min(self.in_features, self.out_features):
            raise ValueError(f"r={self.r}: {init} needs r <= min(in, out) = "
                             f"{min(self.in_features, self.out_features)}")
        W = self.base.weight.float()
        W = W.T if self.fan_in_fan_out else W  # (out, in)
        if init == "pissa":
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            # sqrt(S_r / scaling) on each side, so scaling * B @ A == U_r diag(S_r) Vh_r exactly.
            root = (S[: self.r] / self.scaling).sqrt()
            self.lora_A.weight.copy_(root[:, None] * Vh[: self.r])  # (r, in)
            self.lora_B.weight.copy_(U[:, : self.r] * root)  # (out, r)
        else:  # olora; peft QRs the stored weight, which for Conv1D is (in, out): we QR (out, in) always
            Q, R = torch.linalg.qr(W)
            self.lora_A.weight.copy_(R[: self.r])  # (r, in)
            self.lora_B.weight.copy_(Q[:, : self.r])  # (out, r)
        # Residual from the A, B actually stored (possibly bf16), so W_res + delta == W up to one rounding.
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        # The starting factors, kept so a saved adapter can be a plain LoRA delta on the *original* W
        # (files.py: W_res + s B A = W + s [B, -B0] [A; A0]). Not persistent: they are a
        # function of W alone, recomputed whenever the init is applied to the same base (resume, load).
        self.register_buffer("init_A0", self.lora_A.weight.detach().clone(), persistent=False)
        self.register_buffer("init_B0", self.lora_B.weight.detach().clone(), persistent=False)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A in fp32, laid out like base.weight ((in, out) for Conv1D)."""
        delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.unmerged_forward(x, self.base.bias)

    def unmerged_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x W^T + bias + s B A dropout(x) through LoraFunction (DoraLinear calls it with bias=None)."""
        xd = self.dropout(x)  # Identity (the same tensor) when dropout is 0: no kernel at all
        same = xd is x
        w, a, b = self.base.weight, self.lora_A.weight, self.lora_B.weight
        if torch.is_autocast_enabled(x.device.type):
            # Cast here, where autograd sees it, so the Function's backward runs in one dtype.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w, a, b = (t.to(dtype) for t in (x, w, a, b))
            xd = x if same else xd.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        flat = x.reshape(-1, self.in_features)
        flat_d = None if same else xd.reshape(-1, self.in_features)
        y = LoraFunction.apply(flat, flat_d, w, bias, a, b, self.scaling, self.fan_in_fan_out)
        return y.view(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def merge(self) -> None:
        """base.weight += scaling * B @ A, summed in fp32 and cast back once. No-op + warning if merged."""
        if self.merged:
            warnings.warn("LoraLinear.merge: already merged; nothing done", stacklevel=2)
            return
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """base.weight -= scaling * B @ A (fp32; exact restore for fp32 weights up to float rounding,
        one bf16/fp16 rounding otherwise). No-op + warning if not merged."""
        if not self.merged:
            warnings.warn("LoraLinear.unmerge: not merged; nothing done", stacklevel=2)
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"
