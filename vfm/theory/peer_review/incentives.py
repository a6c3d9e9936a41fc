"""Best-response checker: search every reported ranking for one that beats the truthful ranking."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from vfm.errors import ConfigError
from vfm.theory.peer_review.estimate import Estimate, exact_utility, has_closed_form
from vfm.theory.peer_review.mechanisms import Mechanism
from vfm.theory.peer_review.outcome import truthful_order
from vfm.theory.peer_review.reviews import ReviewModel
from vfm.theory.peer_review.utilities import AdditiveUtility, ScoreUtility

MAX_PAPERS = 7  # 7! = 5,040 rankings; 8! is already 40,320 simulations per instance


@dataclass(frozen=True)
class BestResponse:
    """The truthful ranking's expected utility, the best ranking found, and the gain of the best over truthful."""

    truthful_order: tuple[int, ...]
    truthful_value: Estimate
    best_order: tuple[int, ...]
    best_value: Estimate
    gain: Estimate  # best - truthful, paired over the same noise draws
    values: dict[tuple[int, ...], float] = field(repr=False)

    def profitable(self, z: float = 3.0, tol: float = 1e-9) -> bool:
        """Whether some misreport beats truthful by more than z standard errors (and `tol`)."""
        return self.gain.mean > tol + z * self.gain.se


def best_response(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                  utility: AdditiveUtility | ScoreUtility, n_draws: int = 20_000,
                  rng: np.random.Generator | None = None) -> BestResponse:
    """Expected author utility of every ranking of one author's papers (exact when possible, else CRN Monte Carlo)."""
    quality = np.asarray(quality, dtype=float).reshape(-1)
    n_papers = quality.size
    if not 1 <= n_papers <= MAX_PAPERS:
        raise ConfigError(f"best_response: enumerates n! rankings, so 1 <= n_papers <= {MAX_PAPERS}; got {n_papers}")
    truthful = tuple(int(i) for i in truthful_order(quality))
    orders = list(itertools.permutations(range(n_papers)))
    if has_closed_form(mechanism, utility):
        per_order = {o: exact_utility(mechanism, quality[None], review, utility, np.array(o)) for o in orders}
    else:
        rng = rng or np.random.default_rng(0)
        # Common random numbers: every ranking meets the same scores and the same coin flips.
        scores = review.sample(np.broadcast_to(quality, (n_draws, n_papers)), rng)
        seed = int(rng.integers(2**63))
        per_order = {}
        for o in orders:
            outcome = mechanism.decide(scores, np.array(o), np.random.default_rng(seed))
            per_order[o] = utility(outcome, np.broadcast_to(quality, scores.shape))
    means = {o: float(v.mean()) for o, v in per_order.items()}
    best = max(orders, key=lambda o: (means[o], o == truthful))
    return BestResponse(truthful, Estimate.of(per_order[truthful]), best, Estimate.of(per_order[best]),
                        Estimate.of(per_order[best] - per_order[truthful]), means)


def is_truthful(mechanism: Mechanism, quality: np.ndarray, review: ReviewModel,
                utility: AdditiveUtility | ScoreUtility, n_draws: int = 20_000,
                rng: np.random.Generator | None = None, z: float = 3.0) -> bool:
    """True when no ranking beats the truthful one by more than z standard errors."""
    return not best_response(mechanism, quality, review, utility, n_draws, rng).profitable(z)
