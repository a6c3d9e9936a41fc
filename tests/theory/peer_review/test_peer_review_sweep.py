"""vfm/theory/peer_review/sweep.py and thresholds.py on small Gaussian cells (the full sweep is in the docs)."""

from __future__ import annotations

import numpy as np
import pytest

from vfm.theory.peer_review import (
    GaussianReview,
    QualityPrior,
    gap_closed,
    gaussian_burden,
    gaussian_cell,
    optimize_sequential,
    parallel_optimal_threshold,
)


def test_small_cell_orders_mechanisms_and_closes_the_gap():
    cell = gaussian_cell(5, -2.0, 2.0, 1.0, n_draws=20_000, seed=1)
    parallel, sequential, isotonic = cell.parallel.value, cell.sequential.value, cell.isotonic_oracle.value
    # Monte Carlo over qualities agrees with the sampling-free closed form, at its closed-form threshold.
    assert abs(parallel.mean - cell.parallel_closed_form) < 3 * parallel.se
    assert cell.parallel.t_acc == pytest.approx(parallel_optimal_threshold(-2.0, 2.0, 1.0), abs=0.05)
    assert parallel.mean < sequential.mean < isotonic.mean + 3 * isotonic.se
    # Official arrays: 0.572 / 0.620 / 0.629, gap 0.84; a 20,000-draw cell is within ~4%.
    assert sequential.mean == pytest.approx(0.620, rel=0.05)
    assert 0.6 < cell.gap_closed.mean < 1.0 and cell.gap_closed.se < 0.1
    assert cell.sequential.reviews.mean < 0.5 * 5  # most authors stop after a weak first paper


def test_gap_closed_delta_method_matches_bootstrap_spread():
    rng = np.random.default_rng(0)
    p = rng.normal(1.0, 1.0, 4000)
    s = p + rng.normal(0.6, 0.5, 4000)
    i = p + rng.normal(1.0, 0.5, 4000)
    estimate = gap_closed(p, s, i)
    assert estimate.mean == pytest.approx(0.6, abs=0.03)
    boot = []
    for _ in range(300):
        idx = rng.integers(0, 4000, 4000)
        boot.append(gap_closed(p[idx], s[idx], i[idx]).mean)
    assert estimate.se == pytest.approx(np.std(boot), rel=0.2)


def test_joint_thresholds_never_lose_to_tied_ones():
    quality = QualityPrior.normal(1.0, 2.0).sample(4, 10_000, np.random.default_rng(2))
    tied = optimize_sequential(quality, GaussianReview(1.0), tied=True)
    joint = optimize_sequential(quality, GaussianReview(1.0), start=tied.t_acc)
    assert joint.t_rev <= joint.t_acc + 1e-12
    assert joint.value.mean >= tied.value.mean - 1e-12


def test_review_burden_near_the_notes_value():
    # Note (computed): sigma_q = 3, sigma_r = 1, n = 5, mu_q = 0: 0.64 of parallel's reviews.
    result = gaussian_burden(5, 0.0, 3.0, 1.0, n_draws=20_000, seed=4)
    assert result.relative_burden == pytest.approx(0.64, abs=0.03)
    assert result.sequential_at_threshold == pytest.approx(result.parallel_best, abs=1e-4)


def test_gap_closed_grows_with_review_noise():
    # Full runs: 0.655 at sigma_r = 0.5 and 0.916 at 2 (n = 5, mu_q = -1); the official arrays say 0.56 and 0.90.
    low = gaussian_cell(5, -1.0, 2.0, 0.5, n_draws=15_000, seed=5).gap_closed
    high = gaussian_cell(5, -1.0, 2.0, 2.0, n_draws=15_000, seed=5).gap_closed
    assert high.mean - low.mean > 3 * np.hypot(high.se, low.se)
    assert high.mean == pytest.approx(0.916, abs=0.06)
