"""One measurement of a loss's curvature and SGD-noise alignment, with the stability bounds beside it.

Cost of one call with the defaults (probes=16, lanczos_iters=20, alignment_samples=16): 16 + 20 + 16 = 52
Hessian-vector products on the probe batch (each about two backward passes of that batch; the products of a
kind are batched with vmap) plus one vmap'd backward of 16 one-sample batches.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch

from vfm.theory.stability.alignment import alignment_from_gradients
from vfm.theory.stability.eigen import top_eigenvalue
from vfm.theory.stability.hutchinson import hutchinson
from vfm.theory.stability.operators import hessian_operator
from vfm.theory.stability.report import stability_report


class ProbedLoss(Protocol):
    """What `measure_sharpness` needs: the loss at theta and per-sample gradients."""

    count: int

    def theta(self) -> torch.Tensor: ...

    def loss(self, theta: torch.Tensor) -> torch.Tensor: ...

    def per_sample_grads(self, theta: torch.Tensor, index: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor: ...


def measure_sharpness(problem: ProbedLoss, eta: float, batch_size: int, probes: int = 16, lanczos_iters: int = 20,
                      alignment_samples: int = 16, mu: float | None = None, seed: int = 0,
                      batched: bool = True) -> dict[str, Any]:
    """||H||_F (with stderr), Tr H, lambda_max(H), mu and the report of `stability_report`, as plain floats.

    mu is measured on `alignment_samples` one-sample gradients (H stands in for G: for a square loss at an
    interpolating minimum they coincide) unless `mu` is given, or alignment_samples is 0.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    theta = problem.theta()
    operator = hessian_operator(problem.loss, theta, batched=batched)
    with torch.no_grad():
        loss = problem.loss(theta).item()
    estimate = hutchinson(operator, probes, "gaussian", generator)
    top = top_eigenvalue(operator, lanczos_iters, "lanczos", generator)
    result: dict[str, Any] = {
        "loss": loss,
        "hessian_frobenius_stderr": estimate.frobenius_stderr,
        "trace_stderr": estimate.trace_stderr,
    }
    if mu is None and alignment_samples >= 2:
        count = min(alignment_samples, problem.count)
        index = torch.randperm(problem.count, generator=generator)[:count].to(theta.device)
        grads = problem.per_sample_grads(theta, index)
        alignment = alignment_from_gradients(grads, operator, loss, estimate.frobenius_sq, population=problem.count)
        mu = alignment.mu
    report = stability_report(eta, batch_size, estimate.frobenius, mu if mu is not None else float("nan"),
                              top.value, estimate.trace)
    result.update(report)
    result["seconds"] = time.perf_counter() - start
    return result
