"""Evaluation: run evaluators over a loader, or over a saved checkpoint from the CLI."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from vfm.data.loader import build_loader
from vfm.engine.checkpoint import FORMAT, extract_weights, load_state_dict_file
from vfm.errors import CheckpointError, ConfigError
from vfm.registry import EVALUATORS, OBJECTIVES, import_custom_modules


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def evaluate(model: nn.Module, loader: DataLoader, evaluators: list[Any], device: torch.device,
             autocast: Any = contextlib.nullcontext) -> dict[str, float]:
    """Run `evaluators` over `loader` with `model.predict` (or `model.forward`); returns merged metrics."""
    was_training = model.training
    model.eval()
    predict = getattr(model, "predict", model)
    for evaluator in evaluators:
        evaluator.reset()
    with torch.no_grad():
        for batch in loader:
            batch = move_to_device(batch, device)
            with autocast():
                outputs = predict(batch)
            for evaluator in evaluators:
                evaluator.process(batch, outputs)
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        metrics.update(evaluator.compute())
    model.train(was_training)
    return metrics


def load_objective(cfg: DictConfig, checkpoint: str, weights: str = "auto") -> nn.Module:
    """Build the objective of `cfg` and load `checkpoint` into it (on the GPU when there is one, in eval mode).

    `weights`: model, ema, or auto (the weights the run itself evaluated, for vfm checkpoints).
    """
    import_custom_modules(cfg.custom_imports)
    state = load_state_dict_file(checkpoint)
    is_run = state.get("format") == FORMAT
    if weights == "ema" and not (is_run and state.get("ema") is not None):
        raise CheckpointError(f"{checkpoint}: --weights ema, but the file holds no EMA weights")
    prefer_ema = weights == "ema" or (weights == "auto" and is_run and state.get("eval_weights") == "ema")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = OBJECTIVES.build(cfg.objective, "objective")
    result = model.load_state_dict(extract_weights(state, prefer_ema), strict=False)
    if result.missing_keys:
        raise CheckpointError(
            f"{checkpoint}: {len(result.missing_keys)} model keys missing from the file (e.g. {result.missing_keys[0]!r});"
            " is it a checkpoint of this config?"
        )
    return model.to(device).eval()


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str, weights: str = "auto") -> dict[str, float]:
    """Build the objective and data.val of `cfg`, load `checkpoint` and evaluate it (`weights` as in load_objective)."""
    import_custom_modules(cfg.custom_imports)
    if cfg.data.val is None or not cfg.eval.evaluators:
        raise ConfigError("data.val / eval.evaluators: evaluation needs a validation dataset and at least one evaluator")
    for i, node in enumerate(cfg.eval.evaluators):
        EVALUATORS.validate(node, f"eval.evaluators.{i}")
    model = load_objective(cfg, checkpoint, weights)
    device = next(model.parameters()).device
    loader = build_loader(cfg.data.val, "data.val", cfg.data, cfg.seed, train=False)
    evaluators = [EVALUATORS.build(node, f"eval.evaluators.{i}") for i, node in enumerate(cfg.eval.evaluators)]
    return evaluate(model, loader, evaluators, device)
