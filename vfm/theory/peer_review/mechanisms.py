"""Review mechanisms behind one interface: `decide(scores, order, rng) -> Outcome`.

`scores` holds, for every paper, the score it would get if reviewed (pre-drawn). Because scores are
independent across papers and depend only on each paper's own quality, this is the same in distribution
as reviewing on demand, and it lets every ranking be evaluated on the same noise (common random numbers).
A mechanism only reads the scores of papers it reviews. Threshold mechanisms also give exact acceptance
and review probabilities given the qualities (`exact_probabilities`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vfm.theory.peer_review.isotonic import isotonic_adjust
from vfm.theory.peer_review.outcome import Outcome, Probabilities, as_order, check_scores, to_papers, to_reported
from vfm.theory.peer_review.reviews import ReviewModel


class Mechanism(Protocol):
    """Decides which of each author's papers are reviewed and accepted."""

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """Decisions for scores (draws, n_papers) under the reported order (paper indices, best first)."""
        ...



@dataclass(frozen=True)
class ParallelMechanism:
    """Review every paper; accept those scoring at least `t_acc`. The ranking is ignored."""

    t_acc: float

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """Accept score >= t_acc."""
        scores = check_scores(scores)
        return Outcome(scores >= self.t_acc, np.ones(scores.shape, dtype=bool), scores)

    def exact_probabilities(self, quality: np.ndarray, review: ReviewModel,
                            order: np.ndarray | None = None) -> Probabilities:
        """P(accept_i) = P(s_i >= t_acc | q_i); every paper reviewed."""
        quality = np.atleast_2d(quality)
        return Probabilities(review.prob_at_least(quality, self.t_acc), np.ones(quality.shape))


@dataclass(frozen=True)
class IsotonicMechanism:
    """Adjust scores by isotonic regression under the reported ranking; accept adjusted >= `t_acc`."""

    t_acc: float

    def adjust(self, scores: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """Isotonic-adjusted scores in paper order."""
        return isotonic_adjust(scores, order)

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """Accept adjusted score >= t_acc; all papers reviewed."""
        adjusted = self.adjust(check_scores(scores), order)
        return Outcome(adjusted >= self.t_acc, np.ones(adjusted.shape, dtype=bool), adjusted)


@dataclass(frozen=True)
class SequentialThreshold:
    """Review in reported order while every earlier score is >= `t_rev`; accept reviewed papers >= `t_acc`."""

    t_acc: float
    t_rev: float

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """The first paper is always reviewed; a score below t_rev stops the review of the rest."""
        scores = check_scores(scores)
        order = as_order(order, scores.shape)
        ranked = to_reported(scores, order)
        passed = ranked >= self.t_rev
        reviewed = np.ones(ranked.shape, dtype=bool)
        reviewed[:, 1:] = np.cumprod(passed[:, :-1], axis=1).astype(bool)
        reviewed = to_papers(reviewed, order)
        return Outcome(reviewed & (scores >= self.t_acc), reviewed, np.where(reviewed, scores, np.nan))

    def exact_probabilities(self, quality: np.ndarray, review: ReviewModel,
                            order: np.ndarray | None = None) -> Probabilities:
        """P(review at position k) = prod_{j<k} P(s_j >= t_rev); P(accept) = P(review) P(s >= t_acc)."""
        quality = np.atleast_2d(np.asarray(quality, dtype=float))
        order = as_order(order, quality.shape)
        ranked = to_reported(quality, order)
        p_continue = review.prob_at_least(ranked, self.t_rev)
        p_review = np.ones(ranked.shape)
        p_review[:, 1:] = np.cumprod(p_continue[:, :-1], axis=1)
        p_review = to_papers(p_review, order)
        return Probabilities(p_review * review.prob_at_least(quality, self.t_acc), p_review)
