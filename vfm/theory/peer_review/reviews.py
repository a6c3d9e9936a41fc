"""Review noise: the score a reviewed paper receives given its true quality.

Every model offers `sample` (a score per paper) and `prob_at_least` (P(score >= threshold | quality)); the
second is what makes the closed forms of the threshold mechanisms exact for any model, not only Gaussian.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, ndtr

from vfm.errors import ConfigError
from vfm.theory.peer_review.priors import QualityPrior


class ReviewModel(Protocol):
    """A score distribution that depends only on the paper's own quality."""

    def sample(self, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One score per paper, same shape as `quality`."""
        ...

    def prob_at_least(self, quality: np.ndarray, threshold: float) -> np.ndarray:
        """P(score >= threshold | quality), same shape as `quality`."""
        ...


@dataclass(frozen=True)
class GaussianReview:
    """Score = quality + N(0, sigma^2)."""

    sigma: float

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"GaussianReview: sigma must be > 0, got {self.sigma}")

    def sample(self, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy scores, same shape as `quality`."""
        quality = np.asarray(quality, dtype=float)
        return quality + rng.normal(0.0, self.sigma, size=quality.shape)

    def prob_at_least(self, quality: np.ndarray, threshold: float) -> np.ndarray:
        """Phi((quality - threshold) / sigma)."""
        # ndtr directly: scipy.stats' sf wrapper costs 2x more than the arithmetic on 1e6 values.
        return ndtr((np.asarray(quality, dtype=float) - threshold) / self.sigma)


@dataclass(frozen=True)
class SoftmaxReview:
    """ICLR-like discrete reviews: P(s | q) proportional to exp(temperature * (s - q)^2), s in `scores`.

    A paper gets `k` independent reviews and its score is the MAP estimate of q under `prior` from them.
    `normalized=False` drops the log-partition term log Z(q) from the likelihood, as the official
    notebook's MAP does; the MAP is then the precision-weighted mean of the prior mean and the reviews.
    """

    prior: QualityPrior
    temperature: float = -0.513
    scores: tuple[int, ...] = tuple(range(1, 11))
    k: int = 3
    normalized: bool = True
    _grid_points: int = field(default=2001, repr=False)

    def __post_init__(self) -> None:
        if not self.temperature < 0:
            raise ConfigError(f"SoftmaxReview: temperature must be < 0 (scores concentrate near q), got {self.temperature}")
        if self.k < 1 or len(self.scores) < 2:
            raise ConfigError(f"SoftmaxReview: need k >= 1 and at least two scores, got k={self.k}, scores={self.scores}")

    def score_logprobs(self, quality: np.ndarray) -> np.ndarray:
        """log P(s | q) for every score, shape (*quality.shape, len(scores))."""
        values = np.asarray(self.scores, dtype=float)
        logits = self.temperature * (values - np.asarray(quality, dtype=float)[..., None]) ** 2
        return logits - logsumexp(logits, axis=-1, keepdims=True)

    def sample_reviews(self, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Indices into `scores` of k reviews per paper, shape (*quality.shape, k)."""
        probs = np.exp(self.score_logprobs(quality))
        cdf = np.cumsum(probs, axis=-1)
        uniform = rng.random(size=(*probs.shape[:-1], self.k))
        # Inverse-CDF sampling, vectorised over papers: count the CDF values below each uniform.
        index = (uniform[..., :, None] > cdf[..., None, :-1]).sum(axis=-1)
        return index

    def map_estimate(self, review_index: np.ndarray) -> np.ndarray:
        """MAP quality from reviews given as indices into `scores`, shape (..., k) -> (...)."""
        review_index = np.asarray(review_index)
        code = np.zeros(review_index.shape[:-1], dtype=np.int64)
        for j in range(self.k):
            code = code * len(self.scores) + review_index[..., j]
        return self._map_by_code[code]

    def sample(self, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The MAP estimate from k sampled reviews, same shape as `quality`."""
        return self.map_estimate(self.sample_reviews(quality, rng))

    def prob_at_least(self, quality: np.ndarray, threshold: float) -> np.ndarray:
        """Exact P(MAP >= threshold | q), summed over the multisets of k reviews."""
        quality = np.asarray(quality, dtype=float)
        counts, log_coef, map_values = self._multisets
        passing = map_values >= threshold
        if not passing.any():
            return np.zeros_like(quality)
        flat = quality.reshape(-1)
        out = np.empty_like(flat)
        for start in range(0, flat.size, 20_000):  # bounds the (chunk, multisets) matrix to ~35 MB
            logp = self.score_logprobs(flat[start:start + 20_000])
            log_multiset = logp @ counts[passing].T + log_coef[passing]
            out[start:start + 20_000] = np.exp(logsumexp(log_multiset, axis=-1))
        return out.reshape(quality.shape)

    def prob_at_least_all(self, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct MAP value t_j (ascending) and P(MAP >= t_j | q), shape (*quality.shape, len(t))."""
        quality = np.asarray(quality, dtype=float)
        counts, log_coef, map_values = self._multisets
        by_map = np.argsort(map_values)
        # Rounding merges MAP values that differ only by float error: the MAP depends on the reviews only through their sum.
        _, first = np.unique(np.round(map_values[by_map], 6), return_index=True)
        thresholds = map_values[by_map][first]
        logp = self.score_logprobs(quality)  # (..., scores)
        multiset_probs = np.exp(logp @ counts[by_map].T + log_coef[by_map])  # (..., multisets), MAP ascending
        # P(MAP >= t_j): the probability mass of multisets from the first one with MAP t_j upwards.
        tail = np.cumsum(multiset_probs[..., ::-1], axis=-1)[..., ::-1]
        return thresholds, tail[..., first]

    @cached_property
    def _multisets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts per score, log multinomial coefficient, MAP) for every multiset of k reviews."""
        n_scores = len(self.scores)
        combos = list(itertools.combinations_with_replacement(range(n_scores), self.k))
        counts = np.zeros((len(combos), n_scores))
        for row, combo in enumerate(combos):
            for index in combo:
                counts[row, index] += 1
        log_coef = np.array([math.lgamma(self.k + 1) - sum(math.lgamma(c + 1) for c in row) for row in counts])
        return counts, log_coef, self._solve_map(counts)

    @cached_property
    def _map_by_code(self) -> np.ndarray:
        """MAP for every ordered k-tuple of review indices, indexed by its base-len(scores) code."""
        n_scores = len(self.scores)
        counts, _, map_values = self._multisets
        lookup = {tuple(row.astype(int)): value for row, value in zip(counts, map_values, strict=True)}
        table = np.empty(n_scores**self.k)
        for code, ordered in enumerate(itertools.product(range(n_scores), repeat=self.k)):
            table[code] = lookup[tuple(np.bincount(ordered, minlength=n_scores))]
        return table

    def _solve_map(self, counts: np.ndarray) -> np.ndarray:
        """argmax_q log prior(q) + sum of log-likelihoods, one q per row of review counts."""
        values = np.asarray(self.scores, dtype=float)
        if not self.normalized:
            precision = -2.0 * self.temperature
            prior_precision = 1.0 / self.prior.std**2
            return (prior_precision * self.prior.mean + precision * counts @ values) / (
                prior_precision + precision * counts.sum(axis=1))
        low = min(values.min(), self.prior.mean) - 3 * self.prior.std
        high = max(values.max(), self.prior.mean) + 3 * self.prior.std
        grid = np.linspace(low, high, self._grid_points)
        log_post = counts @ self.score_logprobs(grid).T + self.prior.logpdf(grid)  # (multisets, grid)
        step = grid[1] - grid[0]
        out = np.empty(len(counts))
        # The log-partition term can make the posterior non-concave: locate the mode on a grid, then refine.
        for row, best in enumerate(np.argmax(log_post, axis=1)):
            def negative_log_post(q: float, row: int = row) -> float:
                return -float(counts[row] @ self.score_logprobs(np.array(q)) + self.prior.logpdf(q))
            result = minimize_scalar(negative_log_post, bounds=(grid[best] - step, grid[best] + step),
                                     method="bounded", options={"xatol": 1e-9})
            out[row] = result.x
        return out
