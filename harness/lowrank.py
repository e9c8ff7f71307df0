"""What a fine-tuning update looks like: its spectrum, its rank, and how it relates to W.

The LoRA paper's section 7 and Biderman et al. (2024) ask these questions of an update dW (LoRA:
`scaling * B @ A`; full fine-tuning: `W_finetuned - W_pretrained`). The definitions, exactly as used:

- **Energy rank** (Biderman et al. 2024, "the rank needed to explain 90% of the variance"): the
  smallest k with sum_{i<=k} s_i^2 >= fraction * sum_i s_i^2, s the singular values of dW.
- **Entropy effective rank** (Roy & Vetterli 2007): exp(H(p)), p_i = s_i / sum_j s_j, H the Shannon
  entropy (natural log). A matrix with k equal non-zero singular values has effective rank k.
- **Subspace similarity** (LoRA paper eq. 4): phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j), where
  U1_i holds the top-i right-singular vectors of A1 (A is (r, d_in), so they live in the input space),
  U2_j the top-j of A2. 1 means one subspace contains the other; for independent random subspaces
  of R^d its expectation is max(i, j) / d (`random_similarity`), the paper's Gaussian baseline.
- **Projection of W on dW's directions** (LoRA paper section 7.3, Table 7): ||U^T W V^T||_F with U, V
  the top-r left / right singular vectors of dW; the same with W's own top-r singular vectors and
  with random orthonormal ones; the **amplification factor** ||dW||_F / ||U^T W V^T||_F.

Everything is computed in float64 on CPU: singular values of small updates sit far below a float32
W's rounding.
"""

from __future__ import annotations

import math

import torch


def _f64(m: torch.Tensor) -> torch.Tensor:
    return m.detach().to("cpu", torch.float64)


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D matrix, descending (float64)."""
    if m.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(m.shape)}")
    return torch.linalg.svdvals(_f64(m))


def energy_rank(s: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest k whose top-k singular values hold `fraction` of sum s^2 (0 for an all-zero matrix)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} is invalid: must be in (0, 1]")
    energy = _f64(s) ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    # 1e-12: a fraction of 1.0 must not depend on the last bits of a float64 cumulative sum.
    return int((cumulative < fraction - 1e-12).sum()) + 1


def entropy_rank(s: torch.Tensor) -> float:
    """exp(Shannon entropy of s / sum s): Roy & Vetterli's effective rank (0 for an all-zero matrix)."""
    s = _f64(s)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def right_singular_vectors(a: torch.Tensor) -> torch.Tensor:
    """Columns = right-singular vectors of A (r, d) in order of singular value: (d, min(r, d))."""
    _, _, vh = torch.linalg.svd(_f64(a), full_matrices=False)
    return vh.T


def subspace_similarity(a1: torch.Tensor, a2: torch.Tensor, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j) over top right-singular vectors."""
    u1, u2 = right_singular_vectors(a1), right_singular_vectors(a2)
    if not (1 <= i <= u1.shape[1] and 1 <= j <= u2.shape[1]):
        raise ValueError(f"i={i}, j={j} are invalid: need 1 <= i <= {u1.shape[1]} and 1 <= j <= {u2.shape[1]}")
    return float((u1[:, :i].T @ u2[:, :j]).pow(2).sum()) / min(i, j)


def similarity_grid(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """phi(A1, A2, i, j) for every i <= rank(A1), j <= rank(A2): the paper's Figure 3 heatmap, (r1, r2)."""
    u1, u2 = right_singular_vectors(a1), right_singular_vectors(a2)
    overlap = (u1.T @ u2).pow(2)  # (r1, r2): squared cosines between singular directions
    cum = overlap.cumsum(0).cumsum(1)  # cum[i-1, j-1] = ||U1_i^T U2_j||_F^2
    i = torch.arange(1, cum.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, cum.shape[1] + 1, dtype=torch.float64)[None, :]
    return cum / torch.minimum(i, j)


def random_similarity(i: int, j: int, d: int) -> float:
    """E[phi] for independent uniformly random i- and j-dimensional subspaces of R^d: max(i, j) / d.

    E||U_i^T U_j||_F^2 = i * j / d (each of the i*j squared cosines has mean 1/d), over min(i, j).
    """
    return max(i, j) / d


def top_directions(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U (d_out, r) and V (r, d_in): the top-r left and right singular vectors of m."""
    u, _, vh = torch.linalg.svd(_f64(m), full_matrices=False)
    return u[:, :r], vh[:r]


def projection_norm(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """||U^T W V^T||_F: how much of W lies in the r-dimensional subspace given by U (d_out, r), V (r, d_in)."""
    return float(torch.linalg.matrix_norm(u.T @ _f64(w) @ v.T))


def random_directions(d_out: int, d_in: int, r: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random orthonormal U (d_out, r) and V (r, d_in): the paper's random baseline of Table 7."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))
    return u, v.T


def amplification(w: torch.Tensor, dw: torch.Tensor, r: int, seed: int = 0) -> dict[str, float]:
    """Table 7 of the LoRA paper for one layer: ||U^T W V^T||_F with U, V from dW, from W itself and
    random; ||W||_F, ||dW||_F and the amplification factor ||dW||_F / ||U^T W V^T||_F (dW's directions)."""
    if w.shape != dw.shape:
        raise ValueError(f"W {tuple(w.shape)} and dW {tuple(dw.shape)} must have one shape")
    along_dw = projection_norm(w, *top_directions(dw, r))
    dw_norm = float(torch.linalg.matrix_norm(_f64(dw)))
    return {
        "r": r,
        "w_norm": float(torch.linalg.matrix_norm(_f64(w))),
        "dw_norm": dw_norm,
        "proj_dw": along_dw,
        "proj_w": projection_norm(w, *top_directions(w, r)),
        "proj_random": projection_norm(w, *random_directions(*w.shape, r, seed)),
        "amplification": dw_norm / along_dw if along_dw > 0 else math.inf,
    }


def spectrum_row(dw: torch.Tensor, fraction: float = 0.9, s: torch.Tensor | None = None) -> dict[str, float]:
    """One layer's update in numbers: shape, ||dW||_F, top singular value, energy and entropy rank.
    `s`: dW's singular values when the caller already has them (one SVD per layer)."""
    s = singular_values(dw) if s is None else s
    return {"d_out": dw.shape[0], "d_in": dw.shape[1], "max_rank": min(dw.shape),
            "frobenius": float(s.pow(2).sum().sqrt()), "top_singular_value": float(s[0]),
            f"energy_rank_{round(fraction * 100)}": energy_rank(s, fraction), "entropy_rank": entropy_rank(s)}
