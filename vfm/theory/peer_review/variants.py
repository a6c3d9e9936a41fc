"""Two named instances of the general sequential framework. **Pending verification.**

The paper names a memoryless coin-flip mechanism and a credit-pool mechanism; their exact
parameterisations come from summaries ([secondary] in the method note), so these are readings of the
framework (monotone acceptance, review and transition mappings), not the paper's definitions. Both are
simulated only (no closed form here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vfm.errors import ConfigError
from vfm.theory.peer_review.outcome import Outcome, as_order, check_scores, to_papers, to_reported


@dataclass(frozen=True)
class MemorylessCoinFlip:
    """Pending verification. After a review with score s, review the next paper with probability p_continue(s).

    Accept reviewed papers scoring >= `t_acc`. Truthfulness needs p_continue non-decreasing.
    """

    t_acc: float
    p_continue: Callable[[np.ndarray], np.ndarray]

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """The first paper is always reviewed; each later one after a coin flip on the previous score."""
        if rng is None:
            raise ConfigError("MemorylessCoinFlip.decide needs an rng (the review mapping is random)")
        scores = check_scores(scores)
        order = as_order(order, scores.shape)
        ranked = to_reported(scores, order)
        go_on = rng.random(ranked.shape) < np.clip(self.p_continue(ranked), 0.0, 1.0)
        reviewed = np.ones(ranked.shape, dtype=bool)
        reviewed[:, 1:] = np.cumprod(go_on[:, :-1], axis=1).astype(bool)
        reviewed = to_papers(reviewed, order)
        return Outcome(reviewed & (scores >= self.t_acc), reviewed, np.where(reviewed, scores, np.nan))


@dataclass(frozen=True)
class CreditPool:
    """Pending verification. Reviews draw on a credit balance that good scores refill.

    The balance starts at `initial`; each review costs `cost` and then adds refund_fn(score); the next
    paper is reviewed while the balance stays > 0. Accept reviewed papers scoring >= `t_acc`.
    Truthfulness needs refund_fn non-decreasing.
    """

    t_acc: float
    initial: float
    cost: float
    refund_fn: Callable[[np.ndarray], np.ndarray]

    def decide(self, scores: np.ndarray, order: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> Outcome:
        """Review in reported order while the credit balance is positive."""
        scores = check_scores(scores)
        order = as_order(order, scores.shape)
        ranked = to_reported(scores, order)
        balance = np.full(ranked.shape[0], float(self.initial))
        reviewed = np.zeros(ranked.shape, dtype=bool)
        for position in range(ranked.shape[1]):
            reviewed[:, position] = balance > 0
            refund = np.asarray(self.refund_fn(ranked[:, position]), dtype=float)
            balance = np.where(reviewed[:, position], balance - self.cost + refund, balance)
        reviewed = to_papers(reviewed, order)
        return Outcome(reviewed & (scores >= self.t_acc), reviewed, np.where(reviewed, scores, np.nan))
