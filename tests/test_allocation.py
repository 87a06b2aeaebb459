"""Rank allocation (``--rank-alloc``): the greedy rule on hand-worked and brute-forced examples."""

from __future__ import annotations

import itertools
import random

import pytest

from svdtool.allocation import greedy, rank_gains


def test_hand_worked_example() -> None:
    """Two layers of cost 10 and one of cost 20, mean rank 2: budget 2·40 = 80 parameters.

    Gains per parameter: L0 .5 .3 .2 .1 | L1 .1 .05 | L2 .4 .2 .05 (gains 8 4 1 over cost 20).
    L0 .5 (70 left) → L2 .4 (50) → L0 .3 (40) → tie at .2: L2 has the lower rank (20) → L0 .2 (10)
    → tie at .1: L1 has the lower rank (0). Ranks 3, 1, 2: 30 + 10 + 40 = 80 parameters.
    """
    gains = [[5, 3, 2, 1], [1, 0.5], [8, 4, 1]]
    assert greedy(gains, [10, 10, 20], 2) == [3, 1, 2]


def test_uniform_gains_and_caps() -> None:
    # Equal gains everywhere: ties go to the earlier layer, the budget is spent exactly.
    assert greedy([[1.0] * 8] * 3, [4, 4, 4], 2) == [2, 2, 2]  # round robin by (gain, layer) order
    # A layer's gain list caps its rank; a budget no layer fits leaves ranks at 0.
    assert greedy([[9.0], [1.0, 1.0, 1.0]], [5, 5], 2) == [1, 3]
    assert greedy([[1.0]], [5], 0) == [0]
    with pytest.raises(ValueError):
        greedy([[1.0]], [0], 1)


@pytest.mark.parametrize("seed", range(5))
def test_equal_costs_is_optimal_against_brute_force(seed: int) -> None:
    """With equal costs and non-increasing gains the greedy choice is the best Σ gain (EVA's top-Σr rule)."""
    rng = random.Random(seed)
    gains = [sorted((rng.random() for _ in range(4)), reverse=True) for _ in range(4)]
    ranks = greedy(gains, [7] * 4, 2)
    assert sum(ranks) == 8
    best = max(
        sum(sum(g[:k]) for g, k in zip(gains, ks, strict=True))
        for ks in itertools.product(range(5), repeat=4)
        if sum(ks) <= 8
    )
    got = sum(sum(g[:k]) for g, k in zip(gains, ranks, strict=True))
    assert got == pytest.approx(best, rel=1e-12)


def test_rank_gains() -> None:
    sigma = [4.0, 3.0, 2.0, 1.0, 0.5]
    assert rank_gains(sigma, 1, 2.0, 3) == [8.0, 4.5, 2.0]
    assert rank_gains(sigma, 2, 1.0, 9) == [25.0, 5.0]  # LoRA-GA: one rank adds two directions
    assert rank_gains(sigma, 1, 0.0, 2) == [0.0, 0.0]
