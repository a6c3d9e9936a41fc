"""Gaussian sweeps: best conference utility of parallel, sequential and oracle-isotonic review, gap closed, burden.

All three mechanisms are evaluated on the same draws of qualities (common random numbers), so the gap
closed (S - P) / (I - P) gets its standard error from the paired per-draw values by the delta method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from vfm.errors import ConfigError
from vfm.theory.peer_review.estimate import (
    Estimate,
    exact_reviews,
    exact_utility,
    parallel_optimal_threshold,
    parallel_prior_utility,
)
from vfm.theory.peer_review.mechanisms import SequentialThreshold
from vfm.theory.peer_review.priors import QualityPrior
from vfm.theory.peer_review.reviews import GaussianReview
from vfm.theory.peer_review.thresholds import (
    ThresholdResult,
    optimize_isotonic,
    optimize_parallel,
    optimize_sequential,
)


def gap_closed(parallel: np.ndarray, sequential: np.ndarray, isotonic: np.ndarray) -> Estimate:
    """(S - P) / (I - P) from paired per-draw values, with its delta-method standard error."""
    a, b = np.asarray(sequential) - np.asarray(parallel), np.asarray(isotonic) - np.asarray(parallel)
    if b.mean() == 0:
        return Estimate(float("nan"), float("nan"))
    ratio = a.mean() / b.mean()
    cov = np.cov(a, b)
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (b.mean() ** 2 * a.size)
    return Estimate(float(ratio), float(np.sqrt(max(var, 0.0))))


@dataclass(frozen=True)
class CellResult:
    """One Gaussian setting: each mechanism's best utility and thresholds, and the gap closed."""

    n_papers: int
    prior_mean: float
    prior_std: float
    noise: float
    n_draws: int
    parallel: ThresholdResult
    sequential: ThresholdResult
    sequential_tied: ThresholdResult
    isotonic_oracle: ThresholdResult
    gap_closed: Estimate
    gap_closed_tied: Estimate
    parallel_closed_form: float  # no sampling at all: a check on the Monte Carlo over qualities

    def to_dict(self) -> dict:
        """JSON-ready summary (values with their standard errors and thresholds)."""
        def entry(result: ThresholdResult) -> dict:
            out = {"value": result.value.mean, "se": result.value.se, "t_acc": result.t_acc}
            if result.t_rev is not None:
                out["t_rev"] = result.t_rev
            if result.reviews is not None:
                out["reviews"] = result.reviews.mean
            return out

        return {
            "setting": {"papers": self.n_papers, "prior_mean": self.prior_mean, "prior_std": self.prior_std,
                        "noise": self.noise, "draws": self.n_draws},
            "parallel": {**entry(self.parallel), "closed_form": self.parallel_closed_form},
            "sequential": entry(self.sequential),
            "sequential_tied": entry(self.sequential_tied),
            "isotonic_oracle": entry(self.isotonic_oracle),
            "gap_closed": {"value": self.gap_closed.mean, "se": self.gap_closed.se},
            "gap_closed_tied": {"value": self.gap_closed_tied.mean, "se": self.gap_closed_tied.se},
        }


def gaussian_cell(n_papers: int, prior_mean: float, prior_std: float, noise: float, n_draws: int = 200_000,
                  seed: int = 0, bounds: tuple[float, float] = (-4.0, 4.0)) -> CellResult:
    """Maximum conference utility (sum of accepted q) of each mechanism in one Gaussian setting."""
    if n_papers < 1 or n_draws < 2:
        raise ConfigError(f"gaussian_cell: need papers >= 1 and draws >= 2, got {n_papers}, {n_draws}")
    rng = np.random.default_rng(seed)
    review = GaussianReview(noise)
    quality = QualityPrior.normal(prior_mean, prior_std).sample(n_papers, n_draws, rng)
    parallel = optimize_parallel(quality, review, bounds=bounds)
    tied = optimize_sequential(quality, review, bounds=bounds, tied=True)
    sequential = optimize_sequential(quality, review, bounds=bounds, start=tied.t_acc)
    isotonic = optimize_isotonic(quality, review, rng, bounds=bounds)
    t_parallel = parallel_optimal_threshold(prior_mean, prior_std, noise)
    return CellResult(
        n_papers, prior_mean, prior_std, noise, n_draws, parallel, sequential, tied, isotonic,
        gap_closed(parallel.per_draw, sequential.per_draw, isotonic.per_draw),
        gap_closed(parallel.per_draw, tied.per_draw, isotonic.per_draw),
        parallel_prior_utility(n_papers, prior_mean, prior_std, noise, t_parallel),
    )


@dataclass(frozen=True)
class BurdenResult:
    """Fewest expected reviews per paper for which tied sequential review still matches the best parallel utility."""

    relative_burden: float  # E[#reviews] / n at that threshold
    threshold: float
    parallel_best: float
    sequential_at_threshold: float


def relative_burden(quality: np.ndarray, noise: float, bounds: tuple[float, float] = (-4.0, 4.0)) -> BurdenResult:
    """min E[#reviews]/n over t with S(t, t) >= max_t P(t): the largest such t, since reviews fall as t rises."""
    review = GaussianReview(noise)
    n_papers = np.shape(quality)[-1]
    best_parallel = optimize_parallel(quality, review, bounds=bounds).value.mean
    best_sequential = optimize_sequential(quality, review, bounds=bounds, tied=True)

    def surplus(t: float) -> float:
        return float(exact_utility(SequentialThreshold(t, t), quality, review).mean()) - best_parallel

    if surplus(best_sequential.t_acc) < 0:
        return BurdenResult(float("nan"), float("nan"), best_parallel, best_sequential.value.mean)
    if surplus(bounds[1]) >= 0:
        t = bounds[1]
    else:
        t = brentq(surplus, best_sequential.t_acc, bounds[1], xtol=1e-6)
    reviews = float(exact_reviews(SequentialThreshold(t, t), quality, review).mean())
    return BurdenResult(reviews / n_papers, float(t), best_parallel, best_parallel + surplus(t))


def gaussian_burden(n_papers: int, prior_mean: float, prior_std: float, noise: float, n_draws: int = 200_000,
                    seed: int = 0) -> BurdenResult:
    """`relative_burden` for qualities drawn from N(prior_mean, prior_std^2)."""
    quality = QualityPrior.normal(prior_mean, prior_std).sample(n_papers, n_draws, np.random.default_rng(seed))
    return relative_burden(quality, noise)
