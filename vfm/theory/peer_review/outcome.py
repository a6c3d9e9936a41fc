"""What a mechanism decides for a batch of authors, and the reported-ranking helpers every mechanism shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfm.errors import ConfigError


@dataclass(frozen=True)
class Outcome:
    """Decisions per paper, in paper order (not reported order); arrays are (draws, n_papers)."""

    accepted: np.ndarray
    reviewed: np.ndarray
    scores: np.ndarray  # the scores the decision used (isotonic: adjusted); NaN where not reviewed

    @property
    def n_reviews(self) -> np.ndarray:
        """Reviews spent per author, shape (draws,)."""
        return self.reviewed.sum(axis=-1)


@dataclass(frozen=True)
class Probabilities:
    """Exact P(accepted) and P(reviewed) per paper given qualities, shape (draws, n_papers)."""

    accept: np.ndarray
    review: np.ndarray


def check_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as a float (draws, n_papers) array, or a ConfigError naming the shape."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2:
        raise ConfigError(f"mechanism scores must be (draws, n_papers), got shape {scores.shape}")
    return scores


def as_order(order: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The reported ranking (paper indices, best first) broadcast to `shape`; None is 0, 1, ..., n - 1."""
    n_papers = shape[-1]
    if order is None:
        return np.broadcast_to(np.arange(n_papers), shape)
    order = np.asarray(order)
    if order.shape[-1] != n_papers or not np.array_equal(np.sort(order, axis=-1),
                                                          np.broadcast_to(np.arange(n_papers), order.shape)):
        raise ConfigError(f"reported order must be a permutation of 0..{n_papers - 1} per author, got {order.tolist()}")
    return np.broadcast_to(order, shape)


def truthful_order(quality: np.ndarray) -> np.ndarray:
    """The true ranking of each author's papers, best first, shape of `quality`."""
    return np.argsort(-np.asarray(quality), axis=-1, kind="stable")


def to_reported(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Reorder per-paper values into reported positions."""
    return np.take_along_axis(values, order, axis=-1)


def to_papers(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Inverse of `to_reported`: values by reported position back to paper order."""
    out = np.empty_like(values)
    np.put_along_axis(out, np.broadcast_to(order, values.shape), values, axis=-1)
    return out
