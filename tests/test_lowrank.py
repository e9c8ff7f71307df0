"""harness/lowrank.py against constructed cases whose answers are known in closed form."""

import math

import pytest
import torch

from harness import lowrank


def orthonormal(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def rank_k(d_out, d_in, singular_values, seed=0):
    k = len(singular_values)
    return orthonormal(d_out, k, seed) @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) \
        @ orthonormal(d_in, k, seed + 1).T


@pytest.mark.parametrize("k", [1, 3, 8])
def test_effective_ranks_of_a_constructed_rank_k_matrix_are_k(k):
    equal = rank_k(40, 30, [2.0] * k)
    assert lowrank.energy_rank(lowrank.singular_values(equal), fraction=1.0) == k
    assert lowrank.entropy_rank(lowrank.singular_values(equal)) == pytest.approx(k, rel=1e-9)
    skewed = rank_k(40, 30, [10.0 / (i + 1) for i in range(k)], seed=5)
    assert lowrank.energy_rank(lowrank.singular_values(skewed), fraction=1.0) == k
    assert lowrank.entropy_rank(lowrank.singular_values(skewed)) < k or k == 1


def test_energy_rank_counts_by_hand():
    s = torch.tensor([3.0, 1.0, 1.0, 0.5])  # energy 9, 1, 1, 0.25 of 11.25: 80%, 88.9%, 97.8%, 100%
    assert lowrank.energy_rank(s, 0.8) == 1
    assert lowrank.energy_rank(s, 0.85) == 2
    assert lowrank.energy_rank(s, 0.9) == 3
    assert lowrank.energy_rank(torch.zeros(3), 0.9) == 0
    with pytest.raises(ValueError, match="fraction=1.5"):
        lowrank.energy_rank(s, 1.5)
    # exp(H) of p = (3, 1, 1, .5) / 5.5
    p = [3 / 5.5, 1 / 5.5, 1 / 5.5, 0.5 / 5.5]
    assert lowrank.entropy_rank(s) == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-12)


def test_similarity_of_a_matrix_with_itself_is_one_on_the_diagonal():
    a = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    grid = lowrank.similarity_grid(a, a)
    assert grid.shape == (8, 8)
    assert torch.allclose(grid.diagonal(), torch.ones(8, dtype=torch.float64), atol=1e-12)
    assert torch.all(grid <= 1 + 1e-12)
    for i, j in [(1, 1), (2, 5), (8, 3)]:
        assert lowrank.subspace_similarity(a, a, i, j) == pytest.approx(float(grid[i - 1, j - 1]), abs=1e-12)
        assert lowrank.subspace_similarity(a, a, i, j) == pytest.approx(1.0, abs=1e-12)  # nested subspaces


def test_similarity_of_independent_random_matrices_matches_its_expectation():
    d, draws = 48, 300
    g = torch.Generator().manual_seed(1)
    grids = torch.stack([lowrank.similarity_grid(torch.randn(4, d, generator=g), torch.randn(8, d, generator=g))
                         for _ in range(draws)])
    mean = grids.mean(0)
    for i in range(1, 5):
        for j in range(1, 9):
            expected = lowrank.random_similarity(i, j, d)
            stderr = float(grids[:, i - 1, j - 1].std()) / math.sqrt(draws)
            assert abs(float(mean[i - 1, j - 1]) - expected) < 4 * stderr + 1e-3, (i, j)


def test_subspace_similarity_rejects_out_of_range_indices():
    a = torch.randn(4, 16)
    with pytest.raises(ValueError, match="i=5"):
        lowrank.subspace_similarity(a, a, 5, 1)


def test_amplification_of_a_rank_one_update_equals_its_closed_form():
    """dW = c e_a e_b^T: its top directions are e_a, e_b, so U^T W V^T = W[a, b] and the factor is
    |c| / |W[a, b]|; W's own top-1 directions give its largest singular value."""
    n, a, b, c = 6, 1, 4, 5.0
    w = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    w[a, b] = 0.25
    dw = torch.zeros(n, n, dtype=torch.float64)
    dw[a, b] = c
    row = lowrank.amplification(w, dw, r=1)
    assert row["proj_dw"] == pytest.approx(0.25, abs=1e-12)
    assert row["amplification"] == pytest.approx(c / 0.25, rel=1e-12)
    assert row["dw_norm"] == pytest.approx(c)
    assert row["proj_w"] == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-12)
    assert row["w_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w)), rel=1e-12)
    assert 0 < row["proj_random"] < row["w_norm"]


def test_projection_norm_with_all_directions_is_the_frobenius_norm():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u, v = lowrank.top_directions(w, 5)
    assert lowrank.projection_norm(w, u, v) == pytest.approx(float(torch.linalg.matrix_norm(w)), rel=1e-12)


def test_spectrum_row_of_a_lora_update():
    g = torch.Generator().manual_seed(3)
    b, a = torch.randn(32, 4, generator=g), torch.randn(4, 24, generator=g)
    row = lowrank.spectrum_row(2.0 * b @ a)
    assert (row["d_out"], row["d_in"], row["max_rank"]) == (32, 24, 24)
    assert row["energy_rank_90"] <= 4  # a rank-4 update
    assert row["entropy_rank"] <= 4 + 1e-9
    assert row["frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(2.0 * b @ a)), rel=1e-6)
