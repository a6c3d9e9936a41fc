"""Evaluation: named evaluation sets run over a model, in training or from saved checkpoints (tools/eval.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from vfm.data.loader import build_loader, underlying_dataset
from vfm.engine.seeding import seed_everything
from vfm.engine.validation import DEFAULT_SET, eval_set_names
from vfm.errors import CheckpointError, ConfigError
from vfm.registry import DATASETS, EVALUATORS, OBJECTIVES, import_custom_modules
from vfm.weights import (
    FORMAT,
    align_single_values,
    describe_mismatch,
    extract_weights,
    fingerprint,
    load_state_dict_file,
    load_weights,
)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


@dataclasses.dataclass
class EvalSet:
    """A named evaluation set: its loader, evaluators and interval (0: only at the end)."""

    name: str
    loader: DataLoader
    evaluators: list[Any]
    interval: int

    def metric_name(self, metric: str) -> str:
        """How a metric of this set is named in results and in eval.metric (`<set>/<metric>`; bare for data.val)."""
        return metric if self.name == DEFAULT_SET else f"{self.name}/{metric}"

    @property
    def log_prefix(self) -> str:
        """The metrics split it logs under: val (data.val) or val/<set>."""
        return "val" if self.name == DEFAULT_SET else f"val/{self.name}"


def wanted_eval_sets(cfg: DictConfig, only: list[str] | None = None) -> list[str]:
    """The names of the sets to run: all, or those in `only` (`val` is data.val's); an unknown name is an error."""
    available = eval_set_names(cfg)
    wanted = available if only is None else [DEFAULT_SET if n in ("val", DEFAULT_SET) else n for n in only]
    for name in wanted:
        if name not in available:
            shown = ", ".join("val" if n == DEFAULT_SET else n for n in available) or "none"
            raise ConfigError(f"--set {name}: no such evaluation set in eval.sets or data.val (available: {shown})")
    return wanted


def build_eval_sets(cfg: DictConfig, rank: int = 0, world_size: int = 1, only: list[str] | None = None) -> list[EvalSet]:
    """The run's evaluation sets (the default one from data.val, then eval.sets), or those named in `only`."""
    wanted = wanted_eval_sets(cfg, only)
    sets = []
    for name in wanted:
        if name == DEFAULT_SET:
            dataset, evaluators, interval, path = cfg.data.val, cfg.eval.evaluators, cfg.eval.interval, "data.val"
            batch_size = None
        else:
            node = cfg.eval.sets[name]
            dataset, evaluators, path = node.dataset, node.evaluators, f"eval.sets.{name}.dataset"
            interval = cfg.eval.interval if node.interval is None else node.interval
            batch_size = node.batch_size
        loader = build_loader(dataset, path, cfg.data, cfg.seed, train=False, rank=rank, world_size=world_size,
                              batch_size=batch_size)
        evaluator_path = "eval.evaluators" if name == DEFAULT_SET else f"eval.sets.{name}.evaluators"
        built = [EVALUATORS.build(node, f"{evaluator_path}.{i}") for i, node in enumerate(evaluators)]
        sets.append(EvalSet(name, loader, built, interval))
    return sets


def evaluate(model: nn.Module, eval_set: EvalSet, device: torch.device,
             autocast: Any = contextlib.nullcontext) -> dict[str, float]:
    """Run one set's evaluators over its loader with `model.predict` (or `model.forward`); metrics by full name."""
    was_training = model.training
    model.eval()
    predict = getattr(model, "predict", model)
    for evaluator in eval_set.evaluators:
        evaluator.begin(model, eval_set.loader)
    with torch.no_grad():
        for batch in eval_set.loader:
            batch = move_to_device(batch, device)
            with autocast():
                outputs = predict(batch)
            for evaluator in eval_set.evaluators:
                evaluator.process(batch, outputs)
    metrics: dict[str, float] = {}
    for evaluator in eval_set.evaluators:
        metrics.update({eval_set.metric_name(k): v for k, v in evaluator.end().items()})
    model.train(was_training)
    return metrics


def load_objective(cfg: DictConfig, checkpoint: str, weights: str = "auto") -> nn.Module:
    """Build the objective of `cfg` and load `checkpoint` into it (on the GPU when there is one, in eval mode).

    `weights`: model, ema, or auto (the weights the run itself evaluated, for vfm checkpoints). Keys an objective
    leaves out of step checkpoints (`frozen_state_keys`) come from its construction as in training: the same
    seed, then the config's `load_from`; a checkpoint that records their fingerprint is checked against it.
    """
    import_custom_modules(cfg.custom_imports)
    state = load_state_dict_file(checkpoint)
    is_run = state.get("format") == FORMAT
    if weights == "ema" and not (is_run and state.get("ema") is not None):
        raise CheckpointError(f"{checkpoint}: --weights ema, but the file holds no EMA weights")
    prefer_ema = weights == "ema" or (weights == "auto" and is_run and state.get("eval_weights") == "ema")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(cfg.seed, cfg.get("deterministic", False))
    model = OBJECTIVES.build(cfg.objective, "objective")
    weights = align_single_values(extract_weights(state, prefer_ema), model.state_dict())
    frozen = set(getattr(model, "frozen_state_keys", lambda: ())())
    rebuilt = frozen - set(weights)  # a step checkpoint leaves them out; best.pt and exports hold them
    if rebuilt and cfg.get("load_from"):
        load_weights(model, cfg.load_from)
    saved = state.get("frozen") if is_run and rebuilt else None
    own = model.state_dict()
    if saved and (not set(saved["keys"]) <= set(own) or fingerprint(own, saved["keys"]) != saved["fingerprint"]):
        raise CheckpointError(f"{checkpoint}: the frozen weights this config builds (frozen_state_keys, left out of the "
                              "checkpoint) differ from those the run trained with; use the run's config and load_from")
    mismatch = describe_mismatch(model.state_dict(), weights, ignore=frozen)
    if mismatch:
        raise CheckpointError(f"{checkpoint}: not a checkpoint of this config's model ({mismatch})")
    model.load_state_dict(weights, strict=False)  # strict but for the frozen keys, which come from construction
    return model.to(device).eval()


def evaluate_checkpoints(cfg: DictConfig, checkpoints: list[str], weights: str = "auto",
                         sets: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate each checkpoint on the evaluation sets of `cfg` (all, or those named); metrics per checkpoint.

    The datasets and evaluators are built once and reused: evaluators start each pass in `begin`.
    """
    import_custom_modules(cfg.custom_imports)
    if not eval_set_names(cfg):
        raise ConfigError("data.val / eval.evaluators / eval.sets: evaluation needs data.val with eval.evaluators, "
                          "or at least one eval.sets entry")
    for i, node in enumerate(cfg.eval.evaluators):
        EVALUATORS.validate(node, f"eval.evaluators.{i}")
    for name, node in cfg.eval.sets.items():
        DATASETS.validate(node.dataset, f"eval.sets.{name}.dataset")
    wanted_eval_sets(cfg, sets)  # before any checkpoint is read
    eval_sets: list[EvalSet] | None = None
    results: dict[str, dict[str, float]] = {}
    for checkpoint in checkpoints:
        model = load_objective(cfg, checkpoint, weights)
        if eval_sets is None:
            eval_sets = build_eval_sets(cfg, only=sets)
            check = getattr(model, "check_dataset", None)
            for eval_set in eval_sets if check is not None else []:
                check(underlying_dataset(eval_set.loader), eval_set.log_prefix)
        device = next(model.parameters()).device
        results[checkpoint] = {k: v for eval_set in eval_sets for k, v in evaluate(model, eval_set, device).items()}
    return results

