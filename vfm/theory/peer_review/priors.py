"""Where papers come from: the quality prior of an author's papers and the number of papers per author."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from vfm.errors import ConfigError


@dataclass(frozen=True)
class QualityPrior:
    """Paper qualities i.i.d. N(mean, std^2); an author's papers are returned best first."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ConfigError(f"QualityPrior: std must be > 0, got {self.std}")

    @classmethod
    def normal(cls, mean: float, std: float) -> QualityPrior:
        """The Gaussian prior N(mean, std^2)."""
        return cls(float(mean), float(std))

    def sample(self, n_papers: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
        """Qualities of `n_draws` authors with `n_papers` each, shape (n_draws, n_papers), sorted descending."""
        if n_papers < 1 or n_draws < 1:
            raise ConfigError(f"QualityPrior.sample: need n_papers >= 1 and n_draws >= 1, got {n_papers}, {n_draws}")
        draws = rng.normal(self.mean, self.std, size=(n_draws, n_papers))
        # The author knows her ranking; index 0 is her best paper, which is the truthful report.
        return -np.sort(-draws, axis=1)

    def logpdf(self, quality: np.ndarray) -> np.ndarray:
        """Log density of the prior at `quality`."""
        return norm.logpdf(quality, self.mean, self.std)


@dataclass(frozen=True)
class PaperCountDist:
    """How many papers an author submits: counts with their probabilities."""

    counts: tuple[int, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.probs) or not self.counts:
            raise ConfigError(f"PaperCountDist: {len(self.counts)} counts but {len(self.probs)} probabilities")
        if min(self.counts) < 1 or min(self.probs) < 0 or abs(sum(self.probs) - 1) > 1e-9:
            raise ConfigError(f"PaperCountDist: counts must be >= 1 and probabilities sum to 1, got {self}")

    @classmethod
    def from_counts(cls, authors: Mapping[int, int] | Iterable[int]) -> PaperCountDist:
        """From {papers: number of authors} or from one paper count per author."""
        tally = Counter(dict(authors)) if isinstance(authors, Mapping) else Counter(int(c) for c in authors)
        total = sum(tally.values())
        if total <= 0:
            raise ConfigError("PaperCountDist.from_counts: no authors given")
        counts = tuple(sorted(tally))
        return cls(counts, tuple(tally[c] / total for c in counts))

    @property
    def mean(self) -> float:
        """Mean number of papers per author."""
        return float(np.dot(self.counts, self.probs))
