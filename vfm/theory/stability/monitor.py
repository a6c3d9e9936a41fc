"""`sharpness_monitor`: a training hook that measures ||H||_F, Tr H, lambda_max(H) and mu every `every` steps.

Cost per call (defaults): probes + lanczos_iters + alignment_samples = 52 Hessian-vector products on a fixed
probe batch of `probe_size` samples (each product about two backward passes of that batch) and one vmap'd
backward of `alignment_samples` one-sample batches; `sharpness_seconds` in the logged values is the measured
wall time. The estimates are of the objective's own loss in eval mode (no dropout, running batch-norm
statistics) on the probe batch; the bound is about SGD without momentum on a square loss at interpolation
[V claim, D constant], so for other optimizers or losses the ratios are indications only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from vfm.engine.hooks import Hook
from vfm.registry import HOOKS
from vfm.theory.stability.problems import ObjectiveProbe
from vfm.theory.stability.sharpness import measure_sharpness

if TYPE_CHECKING:
    from vfm.engine.trainer import Trainer

logger = logging.getLogger(__name__)
PREFIX = "sharpness_"


def probe_batch(loader: Any, size: int, device: torch.device) -> dict[str, Any]:
    """The first `size` samples of a map-style loader's dataset, collated, without touching any RNG stream."""
    with torch.random.fork_rng(devices=[]):  # a data iterator would draw its base seed from torch's global RNG
        dataset = loader.dataset
        if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
            samples = [dataset[i] for i in range(min(size, len(dataset)))]
            batch = loader.collate_fn(samples)
        else:
            batch = next(iter(loader))
    return {k: v[:size].to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@HOOKS.register("sharpness_monitor")
class SharpnessMonitor(Hook):
    """Every `every` steps, measure the curvature of the loss on a fixed probe batch and the stability ratios.

    Values (prefixed `sharpness_`) are logged through `trainer.log_metrics` (metrics.jsonl records with split
    `sharpness`, TensorBoard) and kept in `history` (checkpointed) and `last`. B defaults to the run's global
    batch size (micro-batch x accumulation x ranks); eta is the first parameter group's learning rate.
    """

    def __init__(self, every: int = 100, probe_size: int = 64, probes: int = 16, lanczos_iters: int = 20,
                 alignment_samples: int = 16, batch_size: int | None = None, mu: float | None = None,
                 seed: int = 0) -> None:
        if every < 1 or probe_size < 2 or probes < 2 or lanczos_iters < 1:
            raise ValueError(f"sharpness_monitor: every={every}, probe_size={probe_size}, probes={probes}, "
                             f"lanczos_iters={lanczos_iters}; expected every >= 1, probe_size >= 2, probes >= 2, "
                             "lanczos_iters >= 1")
        self.every, self.probe_size, self.probes, self.lanczos_iters = every, probe_size, probes, lanczos_iters
        self.alignment_samples, self.batch_size, self.mu, self.seed = alignment_samples, batch_size, mu, seed
        self.batch: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def before_train(self, trainer: Trainer) -> None:
        self.batch = probe_batch(trainer.train_loader, self.probe_size, trainer.device)
        optimizer = trainer.optimizer
        if not isinstance(optimizer, torch.optim.SGD) or optimizer.param_groups[0].get("momentum", 0):
            logger.warning("sharpness_monitor: the bound sqrt(B/mu)/eta is for plain SGD; %s ratios are indicative",
                           type(optimizer).__name__)

    def after_step(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        if trainer.step % self.every != 0:
            return
        values = self.measure(trainer)
        self.history.append({"step": trainer.step, **values})
        self.last = values
        trainer.log_metrics(values, split="sharpness")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.last = dict(self.history[-1]) if self.history else {}

    def measure(self, trainer: Trainer) -> dict[str, float]:
        """One measurement at the trainer's current weights (restores the objective's train/eval mode)."""
        if self.batch is None:
            self.batch = probe_batch(trainer.train_loader, self.probe_size, trainer.device)
        objective = trainer.objective
        was_training = objective.training
        objective.eval()
        try:
            result = measure_sharpness(
                ObjectiveProbe(objective, self.batch),
                eta=trainer.optimizer.param_groups[0]["lr"],
                batch_size=self.batch_size or trainer.global_batch_size,
                probes=self.probes, lanczos_iters=self.lanczos_iters, alignment_samples=self.alignment_samples,
                mu=self.mu, seed=self.seed + trainer.step,
            )
        finally:
            objective.train(was_training)
        keys = ("loss", "hessian_frobenius", "hessian_frobenius_stderr", "trace", "top_eigenvalue", "mu",
                "frobenius_bound", "frobenius_ratio", "gd_ratio", "trace_ratio", "seconds")
        return {PREFIX + k: float(result[k]) for k in keys}
