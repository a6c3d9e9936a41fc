"""vfm/theory/peer_review/isotonic.py: scipy's PAVA against brute-force constrained least squares."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vfm.theory.peer_review import IsotonicMechanism, isotonic_adjust


def brute_force_decreasing(y: np.ndarray) -> np.ndarray:
    """min ||y - r||^2 over non-increasing r, by trying every split into contiguous blocks.

    The optimum is block means over some contiguous partition, so the best feasible one among all 2^(n-1)
    partitions is the exact solution, with no solver in the loop.
    """
    n = len(y)
    best, best_cost = None, np.inf
    for cuts in itertools.product([False, True], repeat=n - 1):
        edges = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        r = np.concatenate([np.full(b - a, y[a:b].mean()) for a, b in itertools.pairwise(edges)])
        if np.all(np.diff(r) <= 1e-12) and (cost := np.sum((y - r) ** 2)) < best_cost:
            best, best_cost = r, cost
    return best


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_isotonic_equals_brute_force_least_squares(n):
    rng = np.random.default_rng(n)
    for _ in range(30):
        y = rng.normal(size=n) * 2
        np.testing.assert_allclose(isotonic_adjust(y), brute_force_decreasing(y), atol=1e-10)


def test_isotonic_follows_the_reported_order_not_the_index_order():
    rng = np.random.default_rng(1)
    y = rng.normal(size=6)
    order = rng.permutation(6)
    adjusted = isotonic_adjust(y, order)
    # Non-increasing along the reported ranking, and equal to brute force on the reordered scores.
    assert np.all(np.diff(adjusted[order]) <= 1e-12)
    np.testing.assert_allclose(adjusted[order], brute_force_decreasing(y[order]), atol=1e-10)


def test_isotonic_is_idempotent_and_keeps_block_means():
    y = np.array([1.0, 3.0, 2.0, 0.5, 0.7, -1.0])
    adjusted = isotonic_adjust(y)
    np.testing.assert_allclose(adjusted, [2.0, 2.0, 2.0, 0.6, 0.6, -1.0])
    np.testing.assert_allclose(isotonic_adjust(adjusted), adjusted)
    assert adjusted.sum() == pytest.approx(y.sum())


def test_isotonic_mechanism_accepts_on_adjusted_scores():
    # Pooling lifts the weak paper: scores (3, -0.5) under the true order stay; reversed they pool to 1.25.
    scores = np.array([[3.0, -0.5]])
    truthful = IsotonicMechanism(1.0).decide(scores, np.array([0, 1]))
    reversed_ = IsotonicMechanism(1.0).decide(scores, np.array([1, 0]))
    assert truthful.accepted.tolist() == [[True, False]]
    assert reversed_.accepted.tolist() == [[True, True]]
    np.testing.assert_allclose(reversed_.scores, [[1.25, 1.25]])
