"""The Trainer: builds a run from its config and loops batch -> objective -> backward -> step -> hooks.

It knows only the Objective contract (`forward(batch)` returns a dict with `loss`); every component
arrives through the registries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vfm.data.loader import build_loader
from vfm.data.sampler import ResumableSampler
from vfm.dist.collectives import all_reduce_mean, barrier, get_rank, get_world_size
from vfm.engine.checkpoint import FORMAT, CheckpointManager, all_finite, load_weights, save_safetensors
from vfm.engine.evaluate import evaluate, move_to_device
from vfm.engine.hooks import Hook
from vfm.engine.metrics_logger import MetricsLogger, peak_memory_mb
from vfm.engine.seeding import rng_state, seed_everything, set_rng_state
from vfm.engine.strategies import build_strategy
from vfm.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, VfmError
from vfm.registry import DATASETS, EVALUATORS, HOOKS, OBJECTIVES, OPTIMIZERS, SCHEDULERS, import_custom_modules

logger = logging.getLogger("vfm.train")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAINER_STRATEGIES = ("auto", "single", "ddp", "fsdp", "deepspeed")


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
    _expect(cfg.dist.strategy in TRAINER_STRATEGIES, "dist.strategy", cfg.dist.strategy,
            f"one of {', '.join(TRAINER_STRATEGIES)}")
    if cfg.dist.strategy == "fsdp":
        _expect(not cfg.ema.enabled, "ema.enabled", cfg.ema.enabled, "false with dist.strategy=fsdp (EMA of sharded weights is not supported yet)")
        _expect(train.precision != "fp16", "train.precision", train.precision, "fp32 or bf16 with dist.strategy=fsdp")
    if cfg.dist.strategy == "deepspeed":
        _expect(cfg.dist.zero_stage in (0, 1, 2, 3), "dist.zero_stage", cfg.dist.zero_stage, "0, 1, 2 or 3")
        _expect(not (cfg.ema.enabled and cfg.dist.zero_stage == 3), "ema.enabled", cfg.ema.enabled,
                "false with dist.zero_stage=3 (EMA of partitioned parameters is not supported)")
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

    def __init__(self, cfg: DictConfig, work_dir: str | Path) -> None:
        self.cfg, self.work_dir = cfg, Path(work_dir)
        validate_run_config(cfg)
        train = cfg.train
        # The process group (if any) is joined by the caller (vfm.cli via vfm.dist); the strategy reads it.
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        name = cfg.dist.strategy if cfg.dist.strategy != "auto" else ("ddp" if self.world_size > 1 else "single")
        engine_options = {
            "ddp": {"find_unused_parameters": cfg.dist.find_unused_parameters},
            "deepspeed": {"zero_stage": cfg.dist.zero_stage, "deepspeed_config": cfg.dist.deepspeed_config},
        }.get(name, {})
        self.strategy = build_strategy(name, precision=train.precision, grad_accum_steps=train.grad_accum_steps,
                                       micro_batch_size=cfg.data.batch_size, clip_grad_norm=train.clip_grad_norm,
                                       **engine_options)
        # The model is initialised from the same seed on every rank (FSDP shards it without a broadcast);
        # per-rank streams (dropout) start after the model is built.
        seed_everything(cfg.seed, cfg.deterministic)
        if train.device == "auto":
            self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(train.device)
        self.autocast_dtype = PRECISIONS[train.precision]
        self.accum = train.grad_accum_steps
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch (the data position)
        self.best: dict[str, Any] = {"metric": cfg.eval.metric, "value": None, "step": None}
        self.skipped_in_a_row = 0
        self._last_saved_step: int | None = None
        self._stop_signal: int | None = None

        # Model, data, optimizer, scheduler, scaler, EMA, evaluators, hooks: all from the registries.
        objective: nn.Module = OBJECTIVES.build(cfg.objective, "objective").to(self.device)
        if cfg.load_from:
            load_weights(objective, cfg.load_from)
        self.train_loader = build_loader(cfg.data.train, "data.train", cfg.data, cfg.seed, True, self.rank, self.world_size)
        self.val_loader = (
            build_loader(cfg.data.val, "data.val", cfg.data, cfg.seed, False, self.rank, self.world_size)
            if cfg.data.val is not None
            else None
        )
        if hasattr(objective, "check_dataset"):  # the objective refuses data it cannot use, before any work
            for path, loader in (("data.train", self.train_loader), ("data.val", self.val_loader)):
                if loader is not None:
                    objective.check_dataset(getattr(loader.dataset, "dataset", loader.dataset), path)
        steps_per_epoch = len(self.train_loader) // self.accum
        if steps_per_epoch == 0:
            raise DataError(
                f"data.train: {len(self.train_loader)} batches per epoch is fewer than train.grad_accum_steps={self.accum}"
            )
        self.max_steps = train.max_steps or train.max_epochs * steps_per_epoch
        # Parameter groups are built on the unwrapped module, so name patterns (lr_mult, no_weight_decay)
        # read the same with or without DDP's `module.` prefix.
        self.model, self.optimizer = self.strategy.wrap(
            objective, lambda wrapped: OPTIMIZERS.build(cfg.optim, "optim", model=self.strategy.unwrap(wrapped))
        )
        self.objective = self.strategy.unwrap(self.model)  # the user's module: attributes, EMA, export
        seed_everything(cfg.seed + self.rank, cfg.deterministic)
        self.scheduler = (
            SCHEDULERS.build(cfg.scheduler, "scheduler", optimizer=self.strategy.scheduler_optimizer(self.optimizer),
                             total_steps=self.max_steps)
            if cfg.scheduler is not None
            else None
        )
        fp16_scaler = train.precision == "fp16" and not self.strategy.scales_fp16_loss
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16_scaler else None
        self.ema = self._build_ema() if cfg.ema.enabled else None
        self.evaluators = [EVALUATORS.build(node, f"eval.evaluators.{i}") for i, node in enumerate(cfg.eval.evaluators)]
        self.hooks: list[Hook] = [HOOKS.build(node, f"hooks.{i}") for i, node in enumerate(cfg.hooks)]
        self.checkpoints = CheckpointManager(self.work_dir, cfg.checkpoint.keep_last)
        self._batches: Iterator[Any] | None = None

    # ----------------------------------------------------------------------------------------- build
    def _build_ema(self) -> nn.Module:
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.objective, decay=self.cfg.ema.decay, use_warmup=self.cfg.ema.warmup)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation and export use: the EMA copy when configured, else the model."""
        if self.ema is not None and self.cfg.ema.eval_with_ema:
            return self.ema.module
        return self.objective

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
        for micro in range(self.accum):
            batch = self._next_batch()
            # Gradients are reduced across ranks only on the last micro-batch of the step.
            with self.strategy.no_sync(self.model) if micro < self.accum - 1 else contextlib.nullcontext():
                with self.autocast():
                    outputs = self.model(batch)
                loss = outputs["loss"] / self.accum  # averaged so accumulation matches one large batch
                self.strategy.backward(self.scaler.scale(loss) if self.scaler else loss)
            for key, value in outputs.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    logs[key] = logs.get(key, 0) + value.detach().float() / self.accum

        # Averaged over ranks, so that every rank takes the same decision about a non-finite loss.
        names = sorted(logs)
        reduced = all_reduce_mean(torch.stack([logs[k] for k in names])).tolist()
        result = dict(zip(names, reduced, strict=True))
        # A non-finite loss must never reach the weights: stop (default) or drop this step.
        grad_norm = None
        if math.isfinite(result["loss"]):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.train.clip_grad_norm is not None:
                grad_norm = self.strategy.clip_grad_norm(self.model, self.cfg.train.clip_grad_norm)
        # With fp16 the scaler skips steps with inf gradients itself; otherwise check the norm too.
        if not math.isfinite(result["loss"]) or (self.scaler is None and grad_norm is not None and not torch.isfinite(grad_norm)):
            return self._non_finite(result["loss"])
        self.skipped_in_a_row = 0
        self.strategy.optimizer_step(self.optimizer, self.scaler)
        self.strategy.zero_grad(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.objective, step=self.step)
        if grad_norm is not None:
            result["grad_norm"] = grad_norm.item()
        elif self.cfg.train.clip_grad_norm is not None and (engine_norm := self.strategy.last_grad_norm()) is not None:
            result["grad_norm"] = engine_norm  # the engine clipped inside its step (DeepSpeed)
        return result

    def _non_finite(self, loss_value: float) -> None:
        what = f"step {self.step + 1}: loss is {loss_value}" if not math.isfinite(loss_value) else f"step {self.step + 1}: gradient norm is not finite"
        if self.cfg.train.nonfinite == "stop":
            raise NonFiniteLossError(f"{what}; stopping without writing a checkpoint (train.nonfinite=skip skips such steps)")
        self.strategy.zero_grad(self.optimizer)
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
        """Everything needed to continue exactly where this run is (collective: gathers full weights)."""
        return {
            "model": self.strategy.model_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            **self._trainer_state(),
        }

    def _trainer_state(self) -> dict[str, Any]:
        """The state besides model and optimizer (which sharded strategies write themselves)."""
        return {
            "step": self.step,
            "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "strategy": self.strategy.name,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "rng": self._gather_rng_states(),
            "best": dict(self.best),
            "skipped_in_a_row": self.skipped_in_a_row,
            "eval_weights": "ema" if self.eval_model is not self.objective else "model",
            "world_size": self.world_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` captured."""
        if state.get("sharded_dir"):
            self.strategy.load(Path(state["sharded_dir"]), self.model, self.optimizer)  # checks strategy, world size
        elif self.strategy.sharded_state:
            raise CheckpointError(f"resume: a {state.get('strategy', 'single')} checkpoint cannot resume under "
                                  f"dist.strategy={self.strategy.name}; start from its weights with load_from")
        else:
            self.strategy.load_model_state_dict(self.model, state["model"])
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
        self._restore_rng_states(state)
        self._batches = None

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states, in rank order (collective)."""
        states: list[Any] = [None] * self.world_size
        if self.world_size > 1:
            torch.distributed.all_gather_object(states, rng_state())
        else:
            states[0] = rng_state()
        return states

    def _restore_rng_states(self, state: dict[str, Any]) -> None:
        states = state["rng"]
        if isinstance(states, dict):  # a checkpoint written before RNG states were per rank
            states = [states]
        if len(states) != self.world_size:
            # The run continues correctly but not bit-for-bit: dropout streams are reseeded per rank.
            logger.warning("resume: checkpoint has RNG states for %d ranks, this run has %d; reseeding",
                           len(states), self.world_size)
            seed_everything(self.cfg.seed + 7919 * self.step + self.rank)
            return
        set_rng_state(states[self.rank])

    def _weights_finite(self) -> bool:
        """All ranks agree whether every weight (every rank's shard) is finite."""
        return bool(all_reduce_mean(torch.tensor([1.0 if all_finite(self.objective) else 0.0])).item() == 1.0)

    def save_checkpoint(self) -> Path | None:
        """Write a step checkpoint (collective; rank 0 writes); refuses weights that are not finite."""
        if not self._weights_finite():
            raise NonFiniteLossError(f"step {self.step}: weights are not finite; refusing to write a checkpoint")
        if self.strategy.sharded_state:
            # Every rank writes its shards into a temp folder; rank 0 renames it whole once all are done.
            tmp = self.checkpoints.dir / f".step_{self.step:08d}.tmp"
            if self.is_main and tmp.exists():
                shutil.rmtree(tmp)
            barrier()
            self.strategy.save(tmp, {"format": FORMAT, **self._trainer_state()}, self.model, self.optimizer)
            path = self.checkpoints.commit_folder(tmp, self.step) if self.is_main else None
        else:
            state = self.state_dict()
            path = self.checkpoints.save(state, self.step) if self.is_main else None
        barrier()
        self._last_saved_step = self.step
        if path is not None:
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
        previous_handlers = self._install_preemption_handlers()
        try:
            while self.step < self.max_steps:
                if self._preemption_requested():
                    return self._stop_for_preemption(last)
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
            if cfg.checkpoint.export_safetensors:
                weights = self.ema.module.state_dict() if self.eval_model is not self.objective else (
                    self.strategy.model_state_dict(self.model))  # collective: gathers shards
                if self.is_main:
                    save_safetensors(weights, self.work_dir / "model.safetensors")
            barrier()
        finally:
            metrics_log.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        return last

    # ------------------------------------------------------------------------------------ preemption
    def _install_preemption_handlers(self) -> dict[int, Any]:
        """On SIGUSR1/SIGTERM (Slurm's warning before preemption) finish the step, checkpoint, exit cleanly."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGUSR1, signal.SIGTERM)}

    def _preemption_requested(self) -> bool:
        """Whether any rank received a stop signal (collective, so all ranks stop at the same step)."""
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
        return bool(all_reduce_mean(flag).item() > 0)

    def _stop_for_preemption(self, last: dict[str, Any]) -> dict[str, Any]:
        name = signal.Signals(self._stop_signal).name if self._stop_signal is not None else "a signal on another rank"
        if self._last_saved_step != self.step:  # the same answer on every rank: saving is collective
            self.save_checkpoint()
        logger.warning("stopped by %s after step %d with a checkpoint; continue with resume=auto", name, self.step)
        return {**last, "preempted": True}

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
            if not self._weights_finite():
                raise NonFiniteLossError(f"step {self.step}: weights are not finite; refusing to write best.pt")
            if self.strategy.sharded_state:  # the best weights only, gathered; resume uses step checkpoints
                weights = self.strategy.model_state_dict(self.model)
                best_path = self.checkpoints.dir / "best.safetensors"
                if self.is_main:
                    save_safetensors(weights, best_path)
            else:
                state = self.state_dict()
                best_path = self.checkpoints.dir / "best.pt"
                if self.is_main:
                    self.checkpoints.save_best(state)
            if self.is_main:
                logger.info("new best %s %.4f at step %d -> %s", name, value, self.step, best_path)
            barrier()
        return metrics


__all__ = ["Trainer", "validate_run_config"]
