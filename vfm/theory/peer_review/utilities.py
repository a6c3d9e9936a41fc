"""Utilities of an outcome: the conference's and the author's (count, quality, shifted quality, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vfm.theory.peer_review.outcome import Outcome


@dataclass(frozen=True)
class AdditiveUtility:
    """Sum over accepted papers of value(q_i); exact expectations need only P(accepted_i)."""

    name: str
    value: Callable[[np.ndarray], np.ndarray]

    def per_paper(self, quality: np.ndarray) -> np.ndarray:
        """What accepting each paper is worth, same shape as `quality`."""
        return np.broadcast_to(np.asarray(self.value(np.asarray(quality, dtype=float)), dtype=float),
                               np.shape(quality))

    def __call__(self, outcome: Outcome, quality: np.ndarray) -> np.ndarray:
        """Realised utility per author, shape (draws,)."""
        return (outcome.accepted * self.per_paper(quality)).sum(axis=-1)


@dataclass(frozen=True)
class ScoreUtility:
    """Sum over papers of U(decision score): Su's utility on isotonic-adjusted scores (truthful for convex U)."""

    name: str
    value: Callable[[np.ndarray], np.ndarray]

    def __call__(self, outcome: Outcome, quality: np.ndarray) -> np.ndarray:
        """Realised utility per author; unreviewed papers contribute nothing."""
        return np.where(outcome.reviewed, self.value(np.nan_to_num(outcome.scores)), 0.0).sum(axis=-1)


def count_utility() -> AdditiveUtility:
    """Number of accepted papers (the author utility the isotonic mechanism cannot elicit)."""
    return AdditiveUtility("count", np.ones_like)


def shifted_quality(baseline: float = 0.0) -> AdditiveUtility:
    """Sum of (q_i - baseline) over accepted papers: the conference utility (baseline 0, or 5.5 for ICLR)."""
    return AdditiveUtility(f"quality-{baseline:g}" if baseline else "quality", lambda q: q - baseline)


def above_utility(level: float = 0.0) -> AdditiveUtility:
    """Number of accepted papers with quality above `level`."""
    return AdditiveUtility(f"count(q>{level:g})", lambda q: (q > level).astype(float))


def exponential_score_utility() -> ScoreUtility:
    """U(x) = exp(x) on the decision scores: convex and increasing."""
    return ScoreUtility("exp(score)", np.exp)
