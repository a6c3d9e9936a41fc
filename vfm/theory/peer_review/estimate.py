"""Expected utility and review counts: exact given qualities where a closed form exists, Monte Carlo otherwise.

Given the qualities, a threshold mechanism's expectation is a closed form in P(score >= t | q) (see
`exact_probabilities`); the only randomness left is the draw of qualities, whose standard error is
reported. Other mechanisms (isotonic, the pending variants) and non-additive utilities are simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from vfm.theory.peer_review.mechanisms import Mechanism
from vfm.theory.peer_review.reviews import ReviewModel
from vfm.theory.peer_review.utilities import AdditiveUtility, ScoreUtility, shifted_quality


@dataclass(frozen=True)
class Estimate:
    """A mean with its Monte Carlo standard error (0 when exact)."""

    mean: float
    se: float

    def ci(self, z: float = 1.96) -> tuple[float, float]:
        """Normal confidence interval mean +- z * se."""
        return self.mean - z * self.se, self.mean + z * self.se

    @classmethod
    def of(cls, values: np.ndarray) -> Estimate:
        """Mean and standard error of i.i.d. per-draw values."""
        values = np.asarray(values, dtype=float).reshape(-1)
        se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
        return cls(float(values.mean()), se)


def has_closed_form(mechanism: Mechanism, utility: AdditiveUtility | ScoreUtility) -> bool:
    """Whether `exact_utility` applies: a threshold mechanism and an additive utility."""
    return hasattr(mechanism, "exact_probabilities") and isinstance(utility, AdditiveUtility)


def exact_utility(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                  utility: AdditiveUtility | None = None, order: np.ndarray | None = None) -> np.ndarray:
    """E[utility | q] per author, shape (draws,): sum_i value(q_i) P(accept_i | q)."""
    utility = utility or shifted_quality()
    quality = np.atleast_2d(quality)
    probs = mechanism.exact_probabilities(quality, review, order)
    return (probs.accept * utility.per_paper(quality)).sum(axis=-1)


def exact_reviews(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                  order: np.ndarray | None = None) -> np.ndarray:
    """E[number of reviews | q] per author, shape (draws,)."""
    return mechanism.exact_probabilities(np.atleast_2d(quality), review, order).review.sum(axis=-1)


def simulate(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel, rng: np.random.Generator,
             utility: AdditiveUtility | ScoreUtility | None = None, order: np.ndarray | None = None,
             scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One simulated outcome per author: (utility, number of reviews), each (draws,); pass `scores` to reuse noise."""
    utility = utility or shifted_quality()
    quality = np.atleast_2d(quality)
    scores = review.sample(quality, rng) if scores is None else scores
    outcome = mechanism.decide(scores, order, rng)
    return utility(outcome, quality), outcome.n_reviews.astype(float)


def expected_utility(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                     utility: AdditiveUtility | ScoreUtility | None = None, order: np.ndarray | None = None,
                     rng: np.random.Generator | None = None) -> Estimate:
    """Mean utility over the authors in `quality`: exact in the noise when possible, else one simulation each."""
    utility = utility or shifted_quality()
    if has_closed_form(mechanism, utility):
        return Estimate.of(exact_utility(mechanism, quality, review, utility, order))
    return Estimate.of(simulate(mechanism, quality, review, rng or np.random.default_rng(0), utility, order)[0])


def expected_reviews(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                     order: np.ndarray | None = None, rng: np.random.Generator | None = None) -> Estimate:
    """Mean number of reviews per author: exact in the noise when possible, else simulated."""
    if hasattr(mechanism, "exact_probabilities"):
        return Estimate.of(exact_reviews(mechanism, quality, review, order))
    return Estimate.of(simulate(mechanism, quality, review, rng or np.random.default_rng(0), order=order)[1])


def parallel_prior_utility(n_papers: int, prior_mean: float, prior_std: float, noise: float,
                           t_acc: float) -> float:
    """Exact E[sum of accepted q] for parallel review with Gaussian prior and noise (no sampling at all).

    With s = q + e, E[q 1(s >= t)] = mu Phi((mu - t)/tau) + (sigma_q^2 / tau) phi((mu - t)/tau),
    tau^2 = sigma_q^2 + sigma_r^2; papers are exchangeable, so the author's ranking does not enter.
    """
    tau = np.hypot(prior_std, noise)
    z = (prior_mean - t_acc) / tau
    return float(n_papers * (prior_mean * norm.cdf(z) + prior_std**2 / tau * norm.pdf(z)))


def parallel_optimal_threshold(prior_mean: float, prior_std: float, noise: float) -> float:
    """The t maximising `parallel_prior_utility`: where E[q | s = t] = 0, t = -mu sigma_r^2 / sigma_q^2."""
    return float(-prior_mean * noise**2 / prior_std**2)
