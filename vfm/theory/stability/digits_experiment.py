"""The digits reproduction: a grid of (eta, B) SGD runs and full-batch GD to interpolation, exact ||G||_F,
lambda_max, Tr G and mu from the closed-form NTK Gram along training, and SGD restarted at a GD minimum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vfm.theory.stability.alignment import alignment_from_jacobian
from vfm.theory.stability.digits_mlp import MLPStack, digits_regression, mlp_ntk_gram


@dataclass
class DigitsSetup:
    """Data and model of the reproduction."""

    count: int = 128
    """Digits used (n); n * 10 outputs against P = 65 * width + 10 * (width + 1) parameters."""
    width: int = 64
    seed: int = 0
    target_loss: float = 1e-3
    """A run stops once its full-data loss is below this."""
    max_steps: int = 20_000
    check_every: int = 250
    """Steps between full-data loss checks (and mu records)."""
    inputs: torch.Tensor = field(init=False)
    targets: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.inputs, self.targets = digits_regression(self.count, self.seed)


def gram_stats(stack: MLPStack, run: int, setup: DigitsSetup, spectrum: bool = True) -> dict[str, float]:
    """Exact ||G||_F, Tr G, mu (and lambda_max when `spectrum`) of one run from its closed-form Gram K."""
    gram = mlp_ntk_gram(stack, run, setup.inputs)
    count = setup.count
    residuals = (stack.outputs(setup.inputs)[run] - setup.targets).reshape(-1)
    # mu from K alone: alignment_from_jacobian with "J" = K^(1/2) would cost an eigendecomposition; this is the
    # sample-side formula of vfm.theory.stability.alignment written for K directly.
    loss = 0.5 * residuals.pow(2).sum().item() / count
    frobenius_sq = gram.pow(2).sum().item() / count**2
    blocks = gram.reshape(gram.shape[0], count, -1)
    per_sample = torch.einsum("aik,ik->ai", blocks, residuals.reshape(count, -1))
    noise = (per_sample.pow(2).sum() / count**2 - (gram @ residuals).pow(2).sum() / count**3).item()
    stats = {"loss": loss, "frobenius": math.sqrt(frobenius_sq), "trace": gram.diagonal().sum().item() / count,
             "mu": noise / (2 * loss * frobenius_sq) if loss > 0 else float("nan")}
    if spectrum:
        stats["top_eigenvalue"] = torch.linalg.eigvalsh(gram)[-1].item() / count
    return stats


def train(stack: MLPStack, etas: list[float], batch_size: int, setup: DigitsSetup, seed: int,
          max_steps: int | None = None, stop_at_target: bool = True) -> list[list[dict[str, float]]]:
    """Train every run of `stack` in place with its eta at one batch size (B = n: full-batch GD); per-run records.

    Batches are drawn with replacement (the theorem's sampling); a run freezes once it reaches the target loss.
    """
    generator = torch.Generator().manual_seed(seed)
    runs, count = len(etas), setup.count
    steps = max_steps or setup.max_steps
    step_size = torch.tensor(etas, dtype=torch.float64)[:, None].expand(runs, batch_size).clone() / batch_size
    active = torch.ones(runs, dtype=torch.bool)
    records: list[list[dict[str, float]]] = [[] for _ in range(runs)]
    full = batch_size >= count
    for step in range(steps + 1):
        if step % setup.check_every == 0 or step == steps:
            losses = stack.losses(setup.inputs, setup.targets)
            for run in range(runs):
                if active[run]:
                    stats = gram_stats(stack, run, setup, spectrum=False) if math.isfinite(losses[run]) else {"loss": float("inf")}
                    records[run].append({"step": step, **stats})
            if stop_at_target:
                active &= losses.isfinite() & (losses >= setup.target_loss)
            active &= losses.isfinite() & (losses < 1e6)
            if not active.any() or step == steps:
                break
        if full:
            index = torch.arange(count).expand(runs, count)
        else:
            index = torch.randint(0, count, (runs, batch_size), generator=generator)
        stack.sgd_step(setup.inputs[index], setup.targets[index], step_size * active[:, None])
    return records


def run_grid(setup: DigitsSetup, etas: list[float], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """Every (eta, B) from the same initialisation; B = n is GD. Final exact curvature and mu history per run."""
    results = []
    for batch_size in batch_sizes:
        stack = MLPStack.init(len(etas), setup.inputs.shape[1], setup.width, setup.targets.shape[1], setup.seed)
        records = train(stack, etas, min(batch_size, setup.count), setup, seed=setup.seed + batch_size)
        for run, eta in enumerate(etas):
            final = gram_stats(stack, run, setup) if math.isfinite(records[run][-1]["loss"]) else {}
            results.append({"eta": eta, "batch_size": min(batch_size, setup.count), "steps": records[run][-1]["step"],
                            "final": final, "history": records[run], "stack": stack.select([run])})
    return results


def escape(start: MLPStack, eta: float, batch_size: int, setup: DigitsSetup, steps: int) -> dict[str, Any]:
    """SGD with `batch_size` at `eta` from a (GD) minimum `start`: the loss along the way and the exact end point."""
    stack = start.select([0])
    saved_every = setup.check_every
    setup.check_every = max(1, steps // 200)
    try:
        records = train(stack, [eta], batch_size, setup, seed=setup.seed + 7, max_steps=steps, stop_at_target=False)[0]
    finally:
        setup.check_every = saved_every
    final = gram_stats(stack, 0, setup) if math.isfinite(records[-1]["loss"]) else {}
    return {"eta": eta, "batch_size": batch_size, "history": records, "final": final}


__all__ = ["DigitsSetup", "escape", "gram_stats", "run_grid", "train", "alignment_from_jacobian"]
