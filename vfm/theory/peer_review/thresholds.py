"""Thresholds that maximise expected utility over a sample of authors, for each mechanism.

Threshold mechanisms are optimised on their exact-in-noise expectation (smooth in the thresholds): a
coarse grid, then a bounded scalar search (or Nelder-Mead for the joint (t_acc, t_rev) with
t_rev <= t_acc). The isotonic mechanism is simulated once and its utility, a step function of t, is
maximised on a grid. The standard error is that of the per-draw values at the chosen thresholds; it
ignores the (small) optimism of maximising a noisy curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from vfm.errors import ConfigError
from vfm.theory.peer_review.estimate import Estimate, exact_reviews, exact_utility
from vfm.theory.peer_review.isotonic import isotonic_adjust
from vfm.theory.peer_review.mechanisms import ParallelMechanism, SequentialThreshold
from vfm.theory.peer_review.reviews import ReviewModel
from vfm.theory.peer_review.utilities import AdditiveUtility, shifted_quality


@dataclass(frozen=True)
class ThresholdResult:
    """The best thresholds found, the utility there, and per-draw values (for paired comparisons)."""

    mechanism: str
    t_acc: float
    t_rev: float | None
    value: Estimate
    per_draw: np.ndarray = field(repr=False)
    reviews: Estimate | None = None


def _grid(bounds: tuple[float, float], step: float) -> np.ndarray:
    low, high = bounds
    if not high > low or step <= 0:
        raise ConfigError(f"threshold bounds must be (low, high) with high > low and step > 0, got {bounds}, {step}")
    return np.arange(low, high + step / 2, step)


def utility_curve(kind: str, quality: np.ndarray, review: ReviewModel, thresholds: np.ndarray,
                  utility: AdditiveUtility | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean utility and mean reviews of `parallel` or tied `sequential` (t_rev = t_acc) at each threshold."""
    utility = utility or shifted_quality()
    values, reviews = [], []
    for t in thresholds:
        mechanism = ParallelMechanism(t) if kind == "parallel" else SequentialThreshold(t, t)
        values.append(exact_utility(mechanism, quality, review, utility).mean())
        reviews.append(exact_reviews(mechanism, quality, review).mean())
    return np.array(values), np.array(reviews)


def _maximise_1d(objective, bounds: tuple[float, float], step: float) -> float:
    grid = _grid(bounds, step)
    best = grid[int(np.argmax([objective(t) for t in grid]))]
    low, high = max(bounds[0], best - step), min(bounds[1], best + step)
    result = minimize_scalar(lambda t: -objective(t), bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(result.x) if -result.fun >= objective(best) else float(best)


def optimize_parallel(quality: np.ndarray, review: ReviewModel, utility: AdditiveUtility | None = None,
                      bounds: tuple[float, float] = (-4.0, 4.0), step: float = 0.1) -> ThresholdResult:
    """Best acceptance threshold for parallel review."""
    utility = utility or shifted_quality()
    t_acc = _maximise_1d(lambda t: exact_utility(ParallelMechanism(t), quality, review, utility).mean(), bounds, step)
    per_draw = exact_utility(ParallelMechanism(t_acc), quality, review, utility)
    reviews = Estimate(float(np.shape(quality)[-1]), 0.0)
    return ThresholdResult("parallel", t_acc, None, Estimate.of(per_draw), per_draw, reviews)


def optimize_sequential(quality: np.ndarray, review: ReviewModel, utility: AdditiveUtility | None = None,
                        bounds: tuple[float, float] = (-4.0, 4.0), step: float = 0.1,
                        tied: bool = False, start: float | None = None) -> ThresholdResult:
    """Best (t_acc, t_rev) for the sequential threshold mechanism; `tied` forces t_rev = t_acc.

    `start` (the best tied threshold, if known) skips the tied search before the joint one.
    """
    utility = utility or shifted_quality()

    def value(t_acc: float, t_rev: float) -> float:
        return float(exact_utility(SequentialThreshold(t_acc, t_rev), quality, review, utility).mean())

    t_acc = _maximise_1d(lambda t: value(t, t), bounds, step) if start is None or tied else float(start)
    t_rev = t_acc
    if not tied:
        # t_rev = t_acc - gap^2 keeps t_rev <= t_acc (the note's constraint) without a constrained solver.
        start = [(t_acc, 0.0), (t_acc + step, 0.0), (t_acc, np.sqrt(step))]
        result = minimize(lambda x: -value(x[0], x[0] - x[1] ** 2), x0=np.array(start[0]), method="Nelder-Mead",
                          options={"initial_simplex": np.array(start), "xatol": 1e-4, "fatol": 1e-7})
        if -result.fun > value(t_acc, t_acc):
            t_acc, t_rev = float(result.x[0]), float(result.x[0] - result.x[1] ** 2)
    mechanism = SequentialThreshold(t_acc, t_rev)
    per_draw = exact_utility(mechanism, quality, review, utility)
    reviews = Estimate.of(exact_reviews(mechanism, quality, review))
    return ThresholdResult("sequential-tied" if tied else "sequential", t_acc, t_rev, Estimate.of(per_draw),
                           per_draw, reviews)


def _step_curve(adjusted: np.ndarray, worth: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.array([((adjusted >= t) * worth).sum(axis=1).mean() for t in thresholds])


def isotonic_curve(quality: np.ndarray, review: ReviewModel, rng: np.random.Generator, thresholds: np.ndarray,
                   utility: AdditiveUtility | None = None, order: np.ndarray | None = None) -> np.ndarray:
    """Simulated mean utility of the isotonic mechanism at each threshold (one noise draw per author, shared)."""
    utility = utility or shifted_quality()
    quality = np.atleast_2d(quality)
    adjusted = isotonic_adjust(review.sample(quality, rng), order)
    return _step_curve(adjusted, utility.per_paper(quality), thresholds)


def optimize_isotonic(quality: np.ndarray, review: ReviewModel, rng: np.random.Generator,
                      utility: AdditiveUtility | None = None, order: np.ndarray | None = None,
                      bounds: tuple[float, float] = (-4.0, 4.0), step: float = 0.05,
                      fine_step: float = 0.01) -> ThresholdResult:
    """Best threshold of the isotonic mechanism under `order` (None: the true order, the oracle)."""
    utility = utility or shifted_quality()
    quality = np.atleast_2d(quality)
    adjusted = isotonic_adjust(review.sample(quality, rng), order)
    worth = utility.per_paper(quality)

    coarse = _grid(bounds, step)
    best = coarse[int(np.argmax(_step_curve(adjusted, worth, coarse)))]
    fine = _grid((best - step, best + step), fine_step)
    t_acc = float(fine[int(np.argmax(_step_curve(adjusted, worth, fine)))])
    per_draw = ((adjusted >= t_acc) * worth).sum(axis=1)
    reviews = Estimate(float(quality.shape[-1]), 0.0)
    return ThresholdResult("isotonic", t_acc, None, Estimate.of(per_draw), per_draw, reviews)
