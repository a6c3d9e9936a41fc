"""Assumption guards: the constants a last-iterate bound needs, refusing any setting where it would be unsound.

The bounds hold for convex losses whose gradient step is a contraction: m-strongly convex and M-smooth with
eta <= 2/M gives c = max(|1 - eta m|, |1 - eta M|). The supported models are binary and softmax logistic
regression on features of l2 norm <= R with an l2 penalty (lambda/2)||w||^2; a deep network is not convex and
gets no guarantee (Annamalai 2024), so a trainable module other than one linear layer is refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import nn

from vfm.errors import ConfigError

SCHEDULES = ("full", "cyclic", "poisson")


class NonConvexModelError(ConfigError):
    """The model or loss is not convex: last-iterate accounting does not apply."""


class SamplerMismatchError(ConfigError):
    """The batches a run draws are not those its privacy accounting assumes."""


def contraction_factor(m: float, M: float, eta: float) -> float:
    """c = max(|1 - eta m|, |1 - eta M|) for an m-strongly convex, M-smooth loss; refuses eta > 2/M and m < 0."""
    for name, value in (("m", m), ("M", M), ("eta", eta)):
        if not math.isfinite(value):
            raise ConfigError(f"{name}: got {value!r}, expected a finite number")
    if m < 0:
        raise NonConvexModelError(f"m: got {m!r} < 0: the loss is not convex, no last-iterate bound holds")
    if M <= 0 or M < m:
        raise ConfigError(f"M: got {M!r}, expected a smoothness constant > 0 and >= m = {m!r}")
    if eta <= 0:
        raise ConfigError(f"eta: got {eta!r}, expected a step size > 0")
    if eta > 2 / M:
        raise ConfigError(f"eta: got {eta!r} > 2/M = {2 / M:.6g}: the gradient step is not a contraction and the "
                          "last-iterate bound would be unsound; lower the step size")
    return max(abs(1 - eta * m), abs(1 - eta * M))


@dataclasses.dataclass(frozen=True)
class LogisticConstants:
    """Constants of an l2-regularised logistic loss on features of norm <= R."""

    lipschitz: float
    """L: a bound on the norm of one example's loss gradient (the penalty's gradient is data-independent)."""
    smoothness: float
    """M of the regularised loss: loss smoothness + lambda."""
    strong_convexity: float
    """m = lambda."""


def logistic_constants(feature_norm: float, l2: float, multiclass: bool) -> LogisticConstants:
    """L, M, m of binary (L = R, M = R^2/4) or softmax (L = sqrt(2) R, M = R^2/2) logistic loss + (l2/2)||w||^2."""
    if not math.isfinite(feature_norm) or feature_norm <= 0:
        raise ConfigError(f"feature_norm: got {feature_norm!r}, expected a bound R > 0 on the features' l2 norm")
    if not math.isfinite(l2) or l2 < 0:
        raise ConfigError(f"l2: got {l2!r}, expected a penalty >= 0")
    if multiclass:
        lipschitz, smooth = math.sqrt(2) * feature_norm, feature_norm**2 / 2
    else:
        lipschitz, smooth = feature_norm, feature_norm**2 / 4
    return LogisticConstants(lipschitz, smooth + l2, l2)


def check_convex_head(module: nn.Module) -> nn.Linear:
    """The single nn.Linear holding every trainable parameter of `module`; anything else is a NonConvexModelError."""
    owners = {name.rpartition(".")[0] for name, p in module.named_parameters() if p.requires_grad}
    layers = [module.get_submodule(owner) for owner in owners]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        kinds = ", ".join(sorted(f"{owner or '<root>'} ({type(layer).__name__})" for owner, layer in zip(owners, layers, strict=True)))
        raise NonConvexModelError(f"trainable parameters: {kinds or 'none'}; last-iterate accounting needs one linear "
                                  "layer on frozen features (a convex loss in its weights)")
    return layers[0]


def check_sampler(batch_sampler: Any, schedule: str, sample_rate: float | None = None) -> None:
    """Refuse a batch sampler whose batches are not the schedule's (fixed-size batches accounted as Poisson, ...)."""
    from vfm.data.sampler import PoissonBatchSampler, ResumableBatchSampler
    from vfm.theory.privacy.sampler import CyclicBatchSampler

    kind = type(batch_sampler).__name__
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: got {schedule!r}, expected one of {', '.join(SCHEDULES)}")
    if schedule == "poisson":
        if not isinstance(batch_sampler, PoissonBatchSampler):
            raise SamplerMismatchError(f"data.sampler: {kind} draws fixed-size batches but the accounting assumes Poisson "
                                       "subsampling; use data.sampler={type: poisson, sample_rate: ...}")
        if sample_rate is not None and not math.isclose(batch_sampler.sample_rate, sample_rate, rel_tol=1e-12):
            raise SamplerMismatchError(f"data.sampler.sample_rate: {batch_sampler.sample_rate} differs from the "
                                       f"accounting's {sample_rate}")
    elif schedule == "cyclic":
        if not isinstance(batch_sampler, CyclicBatchSampler):
            raise SamplerMismatchError(f"data.sampler: {kind} does not repeat one fixed partition in the same order every "
                                       "epoch, which cyclic accounting assumes; use data.sampler={type: cyclic}")
    else:
        full = (isinstance(batch_sampler, CyclicBatchSampler) and batch_sampler.batches_per_epoch == 1 and
                batch_sampler.dropped == 0) or (isinstance(batch_sampler, ResumableBatchSampler)
                                               and batch_sampler.samples.world_size == 1
                                               and batch_sampler.batch_size == batch_sampler.samples.size)
        if not full:
            raise SamplerMismatchError(f"data.sampler: {kind} does not put every record in every batch, which full-batch "
                                       "accounting assumes; set data.batch_size to the dataset size")
