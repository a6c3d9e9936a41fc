"""The Trainer: builds a run from its config and loops batch -> objective -> backward -> step -> hooks.

It knows only the Objective contract (`forward(batch)` returns a dict with `loss`); every component
arrives through the registries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vfm.data.loader import build_loader
from vfm.data.sampler import ResumableSampler
from vfm.engine.checkpoint import CheckpointManager, all_finite, load_weights, save_safetensors
from vfm.engine.evaluate import evaluate, move_to_device
from vfm.engine.hooks import Hook
from vfm.engine.metrics_logger import MetricsLogger, peak_memory_mb
from vfm.engine.seeding import rng_state, seed_everything, set_rng_state
from vfm.errors import ConfigError, DataError, NonFiniteLossError, VfmError
from vfm.registry import DATASETS, EVALUATORS, HOOKS, OBJECTIVES, OPTIMIZERS, SCHEDULERS, import_custom_modules

logger = logging.getLogger("vfm.train")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def validate_run_config(cfg: DictConfig) -> None:
    """Check every node and setting of a run config before any work starts."""
    import_custom_modules(cfg.custom_imports)
    OBJECTIVES.validate(cfg.objective, "objective")
    DATASETS.validate(cfg.data.train, "data.train")
    if cfg.data.val is not None:
        DATASETS.validate(cfg.data.val, "data.val")
    OPTIMIZERS.validate(cfg.optim, "optim", provided={"model"})
    if cfg.scheduler is not None:
        SCHEDULERS.validate(cfg.scheduler, "scheduler", provided={"optimizer", "total_steps"})
    for i, node in enumerate(cfg.hooks):
        HOOKS.validate(node, f"hooks.{i}")
    for i, node in enumerate(cfg.eval.evaluators):
        EVALUATORS.validate(node, f"eval.evaluators.{i}")
    train = cfg.train
    _expect(train.precision in PRECISIONS, "train.precision", train.precision, f"one of {', '.join(PRECISIONS)}")
    _expect(train.nonfinite in ("stop", "skip"), "train.nonfinite", train.nonfinite, "stop or skip")
    _expect(train.progress_bar in ("auto", "always", "never"), "train.progress_bar", train.progress_bar, "auto, always or never")
    _expect((train.max_steps is None) != (train.max_epochs is None), "train.max_steps/max_epochs",
            (train.max_steps, train.max_epochs), "exactly one of them set")
    for key in ("max_steps", "max_epochs"):
        _expect(train[key] is None or train[key] > 0, f"train.{key}", train[key], "a positive integer")
    _expect(train.grad_accum_steps >= 1, "train.grad_accum_steps", train.grad_accum_steps, ">= 1")
    _expect(train.log_interval >= 1, "train.log_interval", train.log_interval, ">= 1")
    _expect(cfg.data.batch_size >= 1, "data.batch_size", cfg.data.batch_size, ">= 1")
    _expect(cfg.eval.mode in ("max", "min"), "eval.mode", cfg.eval.mode, "max or min")
    _expect(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", cfg.checkpoint.keep_last, ">= 1")
    if cfg.eval.metric is not None and (cfg.data.val is None or not cfg.eval.evaluators):
        raise ConfigError(f"eval.metric: {cfg.eval.metric!r} needs data.val and at least one eval.evaluators entry")
    if cfg.resume not in (None, "auto") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume: checkpoint {cfg.resume!r} not found (use resume=auto to pick the newest in work_dir)")
    if cfg.load_from is not None and not Path(cfg.load_from).is_file():
        raise ConfigError(f"load_from: weights file {cfg.load_from!r} not found")


def _expect(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


class Trainer:
    """One training run: `Trainer(cfg, work_dir).train()`."""

    def __init__(self, cfg: DictConfig, work_dir: str | Path, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.work_dir = cfg, Path(work_dir)
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        validate_run_config(cfg)
        seed_everything(cfg.seed + rank, cfg.deterministic)
        train = cfg.train
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if train.device == "auto" else train.device)
        self.autocast_dtype = PRECISIONS[train.precision]
        self.accum = train.grad_accum_steps
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch (the data position)
        self.best: dict[str, Any] = {"metric": cfg.eval.metric, "value": None, "step": None}
        self.skipped_in_a_row = 0

        # Model, data, optimizer, scheduler, scaler, EMA, evaluators, hooks: all from the registries.
        self.model: nn.Module = OBJECTIVES.build(cfg.objective, "objective").to(self.device)
        if cfg.load_from:
            load_weights(self.model, cfg.load_from)
        self.train_loader = build_loader(cfg.data.train, "data.train", cfg.data, cfg.seed, True, rank, world_size)
        self.val_loader = (
            build_loader(cfg.data.val, "data.val", cfg.data, cfg.seed, False, rank, world_size) if cfg.data.val is not None else None
        )
        steps_per_epoch = len(self.train_loader) // self.accum
        if steps_per_epoch == 0:
            raise DataError(
                f"data.train: {len(self.train_loader)} batches per epoch is fewer than train.grad_accum_steps={self.accum}"
            )
        self.max_steps = train.max_steps or train.max_epochs * steps_per_epoch
        self.optimizer = OPTIMIZERS.build(cfg.optim, "optim", model=self.model)
        self.scheduler = (
            SCHEDULERS.build(cfg.scheduler, "scheduler", optimizer=self.optimizer, total_steps=self.max_steps)
            if cfg.scheduler is not None
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if train.precision == "fp16" else None
        self.ema = self._build_ema() if cfg.ema.enabled else None
        self.evaluators = [EVALUATORS.build(node, f"eval.evaluators.{i}") for i, node in enumerate(cfg.eval.evaluators)]
        self.hooks: list[Hook] = [HOOKS.build(node, f"hooks.{i}") for i, node in enumerate(cfg.hooks)]
        self.checkpoints = CheckpointManager(self.work_dir, cfg.checkpoint.keep_last)
        self._batches: Iterator[Any] | None = None

    # ----------------------------------------------------------------------------------------- build
    def _build_ema(self) -> nn.Module:
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.ema.decay, use_warmup=self.cfg.ema.warmup)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation and export use: the EMA copy when configured, else the model."""
        if self.ema is not None and self.cfg.ema.eval_with_ema:
            return self.ema.module
        return self.model

    # ------------------------------------------------------------------------------------------ data
    def _next_batch(self) -> Any:
        """The next training micro-batch; crosses epochs and tracks the data position."""
        while True:
            if self._batches is None:
                sampler = self.train_loader.sampler
                assert isinstance(sampler, ResumableSampler)
                sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.train_loader.batch_size)
                self._batches = iter(self.train_loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
                continue
            self.batch_in_epoch += 1
            return move_to_device(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the configured precision (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------------ step
    def train_step(self) -> dict[str, float] | None:
        """One optimizer step over `grad_accum_steps` micro-batches; None when the step was skipped."""
        self.model.train()
        logs: dict[str, torch.Tensor] = {}
        for _ in range(self.accum):
            batch = self._next_batch()
            with self.autocast():
                outputs = self.model(batch)
            loss = outputs["loss"] / self.accum  # averaged so accumulation matches one large batch
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for key, value in outputs.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    logs[key] = logs.get(key, 0) + value.detach().float() / self.accum

        # A non-finite loss must never reach the weights: stop (default) or drop this step.
        loss_value = logs["loss"].item()
        grad_norm = None
        if math.isfinite(loss_value):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.train.clip_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        # With fp16 the scaler skips steps with inf gradients itself; otherwise check the norm too.
        if not math.isfinite(loss_value) or (self.scaler is None and grad_norm is not None and not torch.isfinite(grad_norm)):
            return self._non_finite(loss_value)
        self.skipped_in_a_row = 0
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        result = {k: v.item() for k, v in logs.items()}
        if grad_norm is not None:
            result["grad_norm"] = grad_norm.item()
        return result

    def _non_finite(self, loss_value: float) -> None:
        what = f"step {self.step + 1}: loss is {loss_value}" if not math.isfinite(loss_value) else f"step {self.step + 1}: gradient norm is not finite"
        if self.cfg.train.nonfinite == "stop":
            raise NonFiniteLossError(f"{what}; stopping without writing a checkpoint (train.nonfinite=skip skips such steps)")
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_in_a_row += 1
        logger.warning("%s; skipping the step (%d in a row)", what, self.skipped_in_a_row)
        if self.skipped_in_a_row >= self.cfg.train.max_skipped_steps:
            raise NonFiniteLossError(f"{what}; {self.skipped_in_a_row} consecutive steps skipped (train.max_skipped_steps)")
        self.step += 1  # the data position moved on; count the step so the schedule stays aligned
        if self.scheduler is not None:
            self.scheduler.step()
        return None

    # ------------------------------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run every evaluator over the validation set with `eval_model`."""
        if self.val_loader is None or not self.evaluators:
            return {}
        return evaluate(self.eval_model, self.val_loader, self.evaluators, self.device, self.autocast)

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this run is."""
        return {
            "step": self.step,
            "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "rng": rng_state(),
            "best": dict(self.best),
            "skipped_in_a_row": self.skipped_in_a_row,
            "eval_weights": "ema" if self.eval_model is not self.model else "model",
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` captured."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, part in (("scheduler", self.scheduler), ("scaler", self.scaler), ("ema", self.ema and self.ema.module)):
            if (part is None) != (state.get(name) is None):
                raise VfmError(f"resume: the checkpoint {'has' if state.get(name) is not None else 'lacks'} {name} state but this config {'does not use' if part is None else 'uses'} one")
            if part is not None:
                part.load_state_dict(state[name])
        self.step = state["step"]
        self.epoch, self.batch_in_epoch = state["data"]["epoch"], state["data"]["batch_in_epoch"]
        self.best = state["best"]
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        set_rng_state(state["rng"])
        self._batches = None

    def save_checkpoint(self) -> Path | None:
        """Write a step checkpoint (rank 0); refuses weights that are not finite."""
        if not self.is_main:
            return None
        if not all_finite(self.model):
            raise NonFiniteLossError(f"step {self.step}: weights are not finite; refusing to write a checkpoint")
        path = self.checkpoints.save(self.state_dict(), self.step)
        logger.info("saved checkpoint %s", path)
        return path

    # ------------------------------------------------------------------------------------------ loop
    def resume(self) -> None:
        """Apply `cfg.resume` (auto | path | null)."""
        found = self.checkpoints.resolve_resume(self.cfg.resume)
        if found is not None:
            path, state = found
            self.load_state_dict(state)
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def train(self, dry_run: bool = False) -> dict[str, Any]:
        """Run until `max_steps` (or one step with `dry_run`); returns the last logs and metrics."""
        self.resume()
        cfg = self.cfg
        if self.is_main and not dry_run:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        metrics_log = MetricsLogger(self.work_dir, self.is_main and not dry_run, cfg.train.tensorboard,
                                    cfg.train.progress_bar, self.max_steps, self.step)
        for hook in self.hooks:
            hook.before_train(self)
        last: dict[str, Any] = {}
        window_start, window_samples = time.perf_counter(), 0
        run_start_step, run_start = self.step, time.perf_counter()
        samples_per_step = self.cfg.data.batch_size * self.accum * self.world_size
        try:
            while self.step < self.max_steps:
                for hook in self.hooks:
                    hook.before_step(self)
                outputs = self.train_step()
                window_samples += samples_per_step
                for hook in self.hooks:
                    hook.after_step(self, outputs or {})
                if dry_run:
                    last = {"train": outputs, "val": self.evaluate()}
                    logger.info("dry run: one step done (%s), evaluation %s", outputs, last["val"])
                    return last
                if outputs is None:
                    continue
                last["train"] = outputs
                if self.step % cfg.train.log_interval == 0 or self.step == self.max_steps:
                    elapsed = time.perf_counter() - window_start
                    rate = (self.step - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
                    metrics_log.log(self.step, {
                        **outputs,
                        "lr": self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0),
                        "samples_per_s": window_samples / max(elapsed, 1e-9),
                        "eta_s": (self.max_steps - self.step) / max(rate, 1e-9),
                        "peak_mem_mb": peak_memory_mb(self.device),
                        "epoch": self.epoch,
                    })
                    window_start, window_samples = time.perf_counter(), 0
                metrics_log.advance(self.step)
                is_last = self.step == self.max_steps
                if (cfg.eval.interval and self.step % cfg.eval.interval == 0) or is_last:
                    last["val"] = self._evaluate_and_keep_best(metrics_log)
                if (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0) or is_last:
                    self.save_checkpoint()
            for hook in self.hooks:
                hook.after_train(self)
            if self.is_main and cfg.checkpoint.export_safetensors:
                save_safetensors(self.eval_model.state_dict(), self.work_dir / "model.safetensors")
        finally:
            metrics_log.close()
        return last

    def _evaluate_and_keep_best(self, metrics_log: MetricsLogger) -> dict[str, float]:
        metrics = self.evaluate()
        if not metrics:
            return metrics
        metrics_log.log(self.step, metrics, prefix="val")
        name = self.cfg.eval.metric
        if name is None:
            return metrics
        if name not in metrics:
            raise ConfigError(f"eval.metric: {name!r} is not among the computed metrics {sorted(metrics)}")
        value, best = metrics[name], self.best["value"]
        better = best is None or (value > best if self.cfg.eval.mode == "max" else value < best)
        if better:
            self.best = {"metric": name, "value": value, "step": self.step}
            if self.is_main:
                if not all_finite(self.model):
                    raise NonFiniteLossError(f"step {self.step}: weights are not finite; refusing to write best.pt")
                self.checkpoints.save_best(self.state_dict())
                logger.info("new best %s %.4f at step %d -> %s", name, value, self.step, self.checkpoints.dir / "best.pt")
        return metrics


__all__ = ["Trainer", "validate_run_config"]
