"""The ICLR-like model: a Gaussian prior of average scores, softmax reviews (k per paper, MAP score), and
a distribution of papers per author, all fitted by the caller (no OpenReview data ships here).

Conference utility is the sum of (q - baseline) over accepted papers, baseline 5.5. Both mechanisms are
exact in the review noise (the MAP takes finitely many values); only the qualities are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vfm.theory.peer_review.priors import PaperCountDist, QualityPrior
from vfm.theory.peer_review.reviews import SoftmaxReview


@dataclass(frozen=True)
class IclrLikeModel:
    """A fitted ICLR-like conference."""

    prior: QualityPrior
    review: SoftmaxReview
    counts: PaperCountDist
    baseline: float = 5.5


def iclr_like_model(prior_mean: float, prior_std: float, temperature: float, counts: PaperCountDist, k: int = 3,
                    baseline: float = 5.5, normalized: bool = False) -> IclrLikeModel:
    """Build the model from fitted parameters; `normalized=False` is the official notebook's MAP."""
    prior = QualityPrior.normal(prior_mean, prior_std)
    return IclrLikeModel(prior, SoftmaxReview(prior, temperature=temperature, k=k, normalized=normalized),
                         counts, baseline)


@dataclass(frozen=True)
class IclrBurden:
    """Utility and reviews per author at every candidate threshold (t_rev = t_acc), and the burden saved."""

    thresholds: np.ndarray = field(repr=False)
    parallel_utility: np.ndarray = field(repr=False)
    sequential_utility: np.ndarray = field(repr=False)
    sequential_reviews: np.ndarray = field(repr=False)  # expected reviews per author
    parallel_reviews: float  # = mean papers per author
    relative_burden: float  # fewest sequential reviews with utility >= parallel's best, over parallel's reviews
    utility_gain: float  # (best sequential - best parallel) / best parallel


def iclr_burden(model: IclrLikeModel, n_draws: int = 10_000, seed: int = 0, chunk: int = 1_000) -> IclrBurden:
    """Both mechanisms at every distinct MAP value as threshold, averaged over the paper-count distribution."""
    rng = np.random.default_rng(seed)
    thresholds = None
    parallel = sequential = reviews = 0.0
    for n_papers, share in zip(model.counts.counts, model.counts.probs, strict=True):
        sums = None
        for start in range(0, n_draws, chunk):
            quality = model.prior.sample(n_papers, min(chunk, n_draws - start), rng)
            thresholds, p_pass = model.review.prob_at_least_all(quality)  # (draws, n, thresholds)
            worth = (quality - model.baseline)[..., None]
            p_review = np.ones_like(p_pass)
            p_review[:, 1:] = np.cumprod(p_pass[:, :-1], axis=1)  # tied thresholds: pass = continue
            part = np.stack([(worth * p_pass).sum(axis=1).sum(axis=0),
                             (worth * p_review * p_pass).sum(axis=1).sum(axis=0),
                             p_review.sum(axis=1).sum(axis=0)])
            sums = part if sums is None else sums + part
        per_count = sums / n_draws
        parallel = parallel + share * per_count[0]
        sequential = sequential + share * per_count[1]
        reviews = reviews + share * per_count[2]
    best_parallel = float(np.max(parallel))
    feasible = sequential >= best_parallel
    burden = float(np.min(reviews[feasible]) / model.counts.mean) if feasible.any() else float("nan")
    return IclrBurden(thresholds, parallel, sequential, reviews, model.counts.mean, burden,
                      float((np.max(sequential) - best_parallel) / best_parallel))
