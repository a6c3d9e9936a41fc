"""`LastIterateAccountant`: the privacy of releasing only the last iterate of a noisy-gradient run, beside the
all-iterates (composition) accounting, from the run's constants and batch schedule; its state is checkpointed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vfm.errors import CheckpointError, ConfigError
from vfm.theory.privacy import bounds
from vfm.theory.privacy.composition import gaussian_composition_epsilons, poisson_composition_epsilon
from vfm.theory.privacy.gdp import gdp_epsilon
from vfm.theory.privacy.guards import SCHEDULES
from vfm.theory.privacy.poisson import poisson_sgd_last_iterate


@dataclasses.dataclass(frozen=True)
class PrivacyCurve:
    """Both accountings on a grid of step counts, at one delta."""

    steps: np.ndarray
    """Step counts T."""
    delta: float
    """The delta of every epsilon."""
    mu_last_iterate: np.ndarray
    """GDP of the last iterate (for Poisson: the CLT approximation)."""
    epsilon_last_iterate: np.ndarray
    """Epsilon of releasing the last iterate only."""
    epsilon_composition: np.ndarray
    """Epsilon of releasing every iterate (exact GDP composition; for Poisson: PLD, certified)."""
    last_iterate_approximate: bool
    """True for Poisson subsampling, whose last-iterate value is an approximation."""


class LastIterateAccountant:
    """Last-iterate f-DP by shifted interpolation for one run: full, cyclic or Poisson batches.

    mu0 is the GDP parameter of one step: `mu0`, or `gradient_sensitivity / sigma` (the l2-sensitivity of the
    step's mean gradient, e.g. 2L/b under replace-one neighbours, over the gradient noise std). `c` is the step's
    contraction factor (`contraction_factor`); c = 1 (merely convex) needs a `diameter` of the constraint set
    and the step size `eta`, else only composition applies. `steps` counts the steps taken so far (`step()`).
    """

    def __init__(self, schedule: str, c: float, mu0: float | None = None, gradient_sensitivity: float | None = None,
                 sigma: float | None = None, batches_per_epoch: int = 1, sample_rate: float | None = None,
                 eta: float | None = None, diameter: float | None = None, poisson_method: str = "clt") -> None:
        if schedule not in SCHEDULES:
            raise ConfigError(f"schedule: got {schedule!r}, expected one of {', '.join(SCHEDULES)}")
        if sigma is not None and (not math.isfinite(sigma) or sigma <= 0):
            raise ConfigError(f"sigma: got {sigma!r}, expected a noise std > 0 (no noise, no privacy)")
        if mu0 is None:
            if gradient_sensitivity is None or sigma is None:
                raise ConfigError("LastIterateAccountant: give mu0, or gradient_sensitivity and sigma")
            mu0 = gradient_sensitivity / sigma
        elif gradient_sensitivity is not None and sigma is not None and not math.isclose(mu0, gradient_sensitivity / sigma):
            raise ConfigError(f"mu0: got {mu0!r} but gradient_sensitivity / sigma = {gradient_sensitivity / sigma!r}")
        if not math.isfinite(mu0) or mu0 <= 0:
            raise ConfigError(f"mu0: got {mu0!r}, expected a finite value > 0")
        bounds._contraction(c)
        if schedule == "poisson" and (sample_rate is None or not 0 < sample_rate <= 1):
            raise ConfigError(f"sample_rate: got {sample_rate!r}, expected a probability in (0, 1] for Poisson batches")
        if schedule != "poisson" and sample_rate is not None:
            raise ConfigError(f"sample_rate: given for schedule={schedule!r}; only Poisson batches have one")
        if schedule == "full" and batches_per_epoch != 1:
            raise ConfigError(f"batches_per_epoch: got {batches_per_epoch} for full batches, expected 1")
        if diameter is not None and (eta is None or gradient_sensitivity is None or sigma is None):
            raise ConfigError("diameter: the constrained bound also needs eta, gradient_sensitivity and sigma")
        if diameter is not None and schedule == "poisson":
            raise ConfigError("diameter: the constrained Poisson bound is not implemented; drop diameter")
        self.schedule, self.c, self.mu0 = schedule, float(c), float(mu0)
        self.gradient_sensitivity, self.sigma, self.eta, self.diameter = gradient_sensitivity, sigma, eta, diameter
        self.batches_per_epoch = 1 if schedule == "full" else (
            max(1, round(1 / sample_rate)) if schedule == "poisson" else int(batches_per_epoch))
        self.sample_rate, self.poisson_method = sample_rate, poisson_method
        self.steps = 0

    @property
    def approximate(self) -> bool:
        """Whether the last-iterate numbers are approximations (Poisson subsampling)."""
        return self.schedule == "poisson"

    # ------------------------------------------------------------------------------------- accounting
    def _steps(self, steps: int | None) -> int:
        steps = self.steps if steps is None else steps
        if int(steps) != steps or steps < 1:
            raise ConfigError(f"steps: got {steps!r}, expected a whole number >= 1")
        return int(steps)

    def compositions(self, steps: int | None = None) -> int:
        """How many of the first T steps can touch one record (T for full and Poisson, ceil(T/l) for cyclic)."""
        steps = self._steps(steps)
        return -(-steps // self.batches_per_epoch) if self.schedule == "cyclic" else steps

    def composition_mu(self, steps: int | None = None) -> float:
        """GDP of all iterates for deterministic batches: mu0 sqrt(compositions) (Poisson: not a GDP value)."""
        if self.schedule == "poisson":
            raise ConfigError("composition_mu: Poisson composition is accounted by PLD, not by one GDP value")
        return float(bounds.composition_mu(self.mu0, self.compositions(steps)))

    def mu(self, steps: int | None = None) -> float:
        """GDP of the last iterate after T steps (default: the steps taken); an approximation for Poisson."""
        steps = self._steps(steps)
        if self.schedule == "poisson":
            # The minimising split of a GDP value does not depend on delta; 1e-5 only fills the epsilon field.
            found = poisson_sgd_last_iterate(self.mu0, self.sample_rate, steps, self.c, 1e-5, method="clt")
            return float(found.mu)
        best = self.composition_mu(steps)  # releasing every iterate covers releasing the last one
        if self.schedule == "full":
            if self.c < 1:
                best = min(best, bounds.noisy_gd_mu(self.mu0, self.c, steps))
            if self.diameter is not None:
                best = min(best, bounds.convex_gd_mu(self.gradient_sensitivity, self.sigma, self.eta, steps, self.diameter))
            return float(best)
        if steps % self.batches_per_epoch:
            return float(best)  # the cyclic bounds are for whole epochs; mid-epoch only composition is proven
        epochs = steps // self.batches_per_epoch
        if self.c < 1:
            best = min(best, bounds.noisy_cgd_mu(self.mu0, self.c, self.batches_per_epoch, epochs))
        if self.diameter is not None:
            best = min(best, bounds.convex_cgd_mu(self.gradient_sensitivity, self.sigma, self.eta,
                                                  self.batches_per_epoch, epochs, self.diameter))
        return float(best)

    def epsilon(self, delta: float, steps: int | None = None) -> float:
        """Epsilon at `delta` of the last iterate after T steps (default: the steps taken)."""
        if self.schedule == "poisson":
            # The approximation can exceed the certified all-iterates value at few steps (the CLT is loose there);
            # releasing every iterate covers the last one, so the smaller of the two stands.
            approximate = poisson_sgd_last_iterate(self.mu0, self.sample_rate, self._steps(steps), self.c, delta,
                                                   method=self.poisson_method).epsilon
            return min(approximate, self.composition_epsilon(delta, steps))
        return float(gdp_epsilon(self.mu(steps), delta))

    def composition_epsilon(self, delta: float, steps: int | None = None) -> float:
        """Epsilon at `delta` of all iterates (exact GDP composition; Poisson: PLD)."""
        if self.schedule == "poisson":
            return poisson_composition_epsilon(self.mu0, self.sample_rate, self._steps(steps), delta)
        return float(gdp_epsilon(self.composition_mu(steps), delta))

    def curve(self, steps: Sequence[int] | np.ndarray, delta: float) -> PrivacyCurve:
        """Both accountings at every T in `steps`."""
        grid = np.asarray(steps, dtype=np.int64)
        mus = np.array([self.mu(int(t)) for t in grid])
        last = np.array([self.epsilon(delta, int(t)) for t in grid])
        composed = np.array([self.composition_epsilon(delta, int(t)) for t in grid])
        return PrivacyCurve(grid, delta, mus, last, composed, self.approximate)

    def report(self, delta: float, steps: int | None = None,
               composition_methods: tuple[str, ...] = ("gdp", "rdp", "pld", "prv")) -> dict[str, Any]:
        """Both accountings side by side after T steps, labelled last-iterate vs all-iterates."""
        steps = self._steps(steps)
        last = {"label": "last-iterate" + (" (approximation)" if self.approximate else ""),
                "approximate": self.approximate, "mu": self.mu(steps), "epsilon": self.epsilon(delta, steps)}
        if self.schedule == "poisson":
            composed = {"label": "all-iterates", "pld": self.composition_epsilon(delta, steps)}
        else:
            composed = {"label": "all-iterates", "mu": self.composition_mu(steps),
                        **gaussian_composition_epsilons(self.mu0, self.compositions(steps), delta, composition_methods)}
        return {"steps": steps, "delta": delta, "last_iterate": last, "all_iterates": composed}

    # ------------------------------------------------------------------------------------------ state
    def step(self, count: int = 1) -> None:
        """Record `count` more noisy steps."""
        self.steps += int(count)

    def constants(self) -> dict[str, Any]:
        """What defines the accounting (a resume must have the same)."""
        return {"schedule": self.schedule, "c": self.c, "mu0": self.mu0, "batches_per_epoch": self.batches_per_epoch,
                "sample_rate": self.sample_rate, "eta": self.eta, "diameter": self.diameter, "sigma": self.sigma,
                "gradient_sensitivity": self.gradient_sensitivity, "poisson_method": self.poisson_method}

    def state_dict(self) -> dict[str, Any]:
        """The constants and the steps taken, for checkpoints."""
        return {"constants": self.constants(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; constants that differ are a CheckpointError (the accounting would lie)."""
        saved, mine = state["constants"], self.constants()
        differ = [k for k in mine if saved.get(k) != mine[k]]
        if differ:
            key = differ[0]
            raise CheckpointError(f"resume: privacy accountant {key} was {saved.get(key)!r}, this run has {mine[key]!r}")
        self.steps = int(state["steps"])


def noise_for_epsilon(epsilon: float, delta: float, steps: int, build: Callable[[float], LastIterateAccountant],
                      accounting: str = "last_iterate", tolerance: float = 1e-5) -> float:
    """The smallest sigma whose accountant `build(sigma)` reaches `epsilon` at `delta` after `steps` (bisection)."""
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"target_epsilon: got {epsilon!r}, expected a finite value > 0")
    if accounting not in ("last_iterate", "composition"):
        raise ConfigError(f"accounting: got {accounting!r}, expected 'last_iterate' or 'composition'")

    def spent(sigma: float) -> float:
        accountant = build(sigma)
        return accountant.epsilon(delta, steps) if accounting == "last_iterate" else accountant.composition_epsilon(delta, steps)

    # Bracket within a factor 4 first: accountants are slow (PLD) exactly where the noise is far too small.
    low, high = 0.25, 1.0
    while spent(high) > epsilon:  # epsilon falls as the noise grows
        low, high = high, high * 4
        if high > 1e12:
            raise ConfigError(f"target_epsilon: {epsilon} at delta={delta} is out of reach for any noise")
    while spent(low) <= epsilon:
        low, high = low / 4, low
        if low < 1e-12:
            raise ConfigError(f"target_epsilon: {epsilon} at delta={delta} is reached without noise; check the inputs")
    while high / low > 1 + tolerance:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if spent(middle) > epsilon else (low, middle)
    return high
