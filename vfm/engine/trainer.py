"""The Trainer: builds a run from its config and loops batch -> objective -> backward -> step -> hooks.

It knows only the Objective contract (`vfm.engine.objective`); every component arrives through the
registries, and the strategy (single, ddp, fsdp, deepspeed) through its own interface.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vfm.data.loader import build_loader, is_stream, underlying_dataset
from vfm.data.train_data import make_train_data
from vfm.dist.collectives import all_gather_objects, all_reduce_mean, barrier, get_rank, get_world_size
from vfm.engine.checkpoint import CheckpointManager, all_finite, new_run_id
from vfm.engine.checkpoint_hooks import BestCheckpoint, ExportWeights
from vfm.engine.ema import TrainableEma
from vfm.engine.evaluate import build_eval_sets, evaluate, move_to_device
from vfm.engine.hooks import Hook
from vfm.engine.metrics_logger import MetricsLogger, peak_memory_mb
from vfm.engine.objective import check_requirements, frozen_to_eval, requirements_of, select_trainable, split_loss
from vfm.engine.seeding import rng_state, seed_everything, set_rng_state
from vfm.engine.step_logs import StepLogs
from vfm.engine.strategies import build_strategy, strategy_caps
from vfm.engine.validation import (
    DEFAULT_SET,
    PRECISIONS,
    metric_set_name,
    resolve_strategy_name,
    strategy_options,
    validate_run_config,
    validate_work_dir,
)
from vfm.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, VfmError
from vfm.registry import HOOKS, OBJECTIVES, OPTIMIZERS, SCHEDULERS
from vfm.weights import describe_mismatch, fingerprint, load_weights

logger = logging.getLogger("vfm.train")


class Trainer:
    """One training run: `Trainer(cfg, work_dir).train()`."""

    def __init__(self, cfg: DictConfig, work_dir: str | Path) -> None:
        self.cfg, self.work_dir = cfg, Path(work_dir)
        validate_run_config(cfg)
        validate_work_dir(cfg, self.work_dir)
        train = cfg.train
        # The process group (if any) is joined by the caller (vfm.cli via vfm.dist); the strategy reads it.
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        strategy_name = resolve_strategy_name(cfg, self.world_size)
        options = strategy_options(cfg, strategy_name)
        # The model is initialised from the same seed on every rank (FSDP shards it without a broadcast);
        # per-rank streams (dropout) start after the model is built.
        seed_everything(cfg.seed, cfg.deterministic)
        if train.device == "auto":
            self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(train.device)
        self.autocast_dtype = PRECISIONS[train.precision]
        self.accum = train.grad_accum_steps
        self.step = 0  # optimizer steps done (skipped steps included: the data and schedule moved on)
        self.skipped_in_a_row = 0
        self.last_eval: dict[str, Any] | None = None  # {"step", "sets", "metrics"} of the latest evaluation
        self.exit = "running"
        self._resumed = False
        self._last_saved_step: int | None = None
        self._stop_signal: int | None = None
        # Rank 0's id for every rank; a resume adopts the checkpoint's, so a run keeps its id across restarts.
        self.run_id: str = all_gather_objects(new_run_id())[0]

        # Objective, data, evaluation sets: from the registries; the objective refuses what it cannot run.
        objective: nn.Module = OBJECTIVES.build(cfg.objective, "objective").to(self.device)
        if cfg.load_from:
            load_weights(objective, cfg.load_from)
        self.requirements = requirements_of(objective)
        check_requirements(self.requirements, cfg.objective.type, strategy_name, train.precision, self.accum,
                           train.clip_grad_norm, strategy_caps(strategy_name, options))
        self.strategy = build_strategy(strategy_name, precision=train.precision, grad_accum_steps=train.grad_accum_steps,
                                       micro_batch_size=cfg.data.batch_size, clip_grad_norm=train.clip_grad_norm, **options)
        self.train_loader = build_loader(cfg.data.train, "data.train", cfg.data, cfg.seed, True, self.rank,
                                         self.world_size, sampler_node=cfg.data.sampler)
        self.data = make_train_data(self.train_loader, is_stream(self.train_loader.dataset))
        self.eval_sets = build_eval_sets(cfg, self.rank, self.world_size)
        if hasattr(objective, "check_dataset"):  # the objective refuses data it cannot use, before any work
            objective.check_dataset(underlying_dataset(self.train_loader), "data.train")
            for eval_set in self.eval_sets:
                path = "data.val" if eval_set.name == DEFAULT_SET else f"eval.sets.{eval_set.name}.dataset"
                objective.check_dataset(underlying_dataset(eval_set.loader), path)
        self.max_steps = self._max_steps()

        # Trainable selection and hooks' configure() come before the optimizer and the wrapper see the model.
        user_hooks: list[Hook] = [HOOKS.build(node, f"hooks.{i}") for i, node in enumerate(cfg.hooks)]
        for hook in user_hooks:
            hook.configure(objective)
        if callable(getattr(objective, "trainable_parameters", None)):
            select_trainable(objective, objective.trainable_parameters(), f"objective.type={cfg.objective.type}: trainable_parameters()")
        if not any(p.requires_grad for p in objective.parameters()):
            raise ConfigError("objective: no parameter is trainable (trainable_parameters() and freeze_parameters hooks"
                              " left none)")
        self.frozen_keys = tuple(getattr(objective, "frozen_state_keys", lambda: ())())
        self.frozen_fingerprint = fingerprint(objective.state_dict(), self.frozen_keys) if self.frozen_keys else None
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
        self.ema = (TrainableEma(self.objective, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
                    if cfg.ema.enabled else None)
        self.checkpoints = CheckpointManager(self.work_dir, cfg.checkpoint.keep_last, self.run_id)
        self.best = None
        default_hooks: list[Hook] = []
        if cfg.eval.metric is not None:
            self.best = BestCheckpoint(cfg.eval.metric, cfg.eval.mode, metric_set_name(cfg))
            default_hooks.append(self.best)
        if cfg.checkpoint.export_safetensors:
            default_hooks.append(ExportWeights())
        self.user_hooks = user_hooks
        self.hooks = default_hooks + user_hooks

    def _max_steps(self) -> int:
        train = self.cfg.train
        if train.max_steps:
            return train.max_steps
        batches = self.data.batches_per_epoch()
        if batches is None:
            raise ConfigError("train.max_epochs: the training stream has no length; set train.max_steps instead")
        steps_per_epoch = batches // self.accum
        if steps_per_epoch == 0:
            raise DataError(f"data.train: {batches} batches per epoch is fewer than train.grad_accum_steps={self.accum}")
        return train.max_epochs * steps_per_epoch

    # ----------------------------------------------------------------------------------------- views
    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation and export use: the EMA copy when configured, else the model."""
        if self.ema is not None and self.cfg.ema.eval_with_ema:
            return self.ema.module
        return self.objective

    def eval_weights_state(self) -> dict[str, torch.Tensor]:
        """The full evaluated weights (collective: a sharded strategy gathers them)."""
        if self.eval_model is not self.objective:
            return self.ema.module.state_dict()
        return self.strategy.model_state_dict(self.model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the configured precision (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scale(self) -> float:
        """The factor gradients carry at `after_backward` (the fp16 loss scale, else 1)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all ranks (micro-batch x accumulation x world size)."""
        return self.cfg.data.batch_size * self.accum * self.world_size

    def log_metrics(self, values: dict[str, float], split: str = "train") -> None:
        """Record scalars at the current step (for hooks): metrics.jsonl, TensorBoard and the console, on rank 0."""
        if getattr(self, "metrics_log", None) is None:
            raise VfmError("log_metrics: the trainer logs only while train() runs")
        self.metrics_log.log(self.step, values, prefix=split)

    def weights_finite(self) -> bool:
        """All ranks agree whether every weight (every rank's shard) is finite."""
        return bool(all_reduce_mean(torch.tensor([1.0 if all_finite(self.objective) else 0.0])).item() == 1.0)

    # ------------------------------------------------------------------------------------------ step
    def train_step(self) -> dict[str, float] | None:
        """One optimizer step over `grad_accum_steps` micro-batches; None when the step was skipped."""
        self.model.train()
        if not getattr(self.objective, "keep_frozen_train_mode", False):
            frozen_to_eval(self.objective)  # frozen towers: no dropout, fixed batch-norm statistics
        logs = StepLogs()
        for micro in range(self.accum):
            batch = move_to_device(self.data.next_batch(), self.device)
            # Gradients are reduced across ranks only on the last micro-batch of the step.
            with self.strategy.no_sync(self.model) if micro < self.accum - 1 else contextlib.nullcontext():
                outputs = self.forward_backward(batch)
            logs.add(outputs, *split_loss(outputs, self.cfg.objective.type))
        if self.requirements.owns_backward:
            self.strategy.reduce_manual_gradients(self.model)
        # Merged over micro-batches and ranks, so every rank takes the same decision about a non-finite loss.
        result, global_count = logs.reduce()
        if logs.loss_kind == "sum_count" and math.isfinite(result["loss"]):
            # Each rank backpropagated its raw sums and the strategy averaged over ranks: x world / global count.
            self.strategy.scale_gradients(self.model, self.world_size / max(global_count, 1e-12))
        for hook in self.hooks:
            hook.after_backward(self)
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
        if callable(getattr(self.objective, "on_optimizer_step", None)):
            self.objective.on_optimizer_step(self.step, self.max_steps)
        if grad_norm is not None:
            result["grad_norm"] = grad_norm.item()
        elif self.cfg.train.clip_grad_norm is not None and (engine_norm := self.strategy.last_grad_norm()) is not None:
            result["grad_norm"] = engine_norm  # the engine clipped inside its step (DeepSpeed)
        return result

    def forward_backward(self, batch: Any) -> dict[str, Any]:
        """Forward and backward of one micro-batch; the objective's own `forward_backward` when it owns it."""
        if self.requirements.owns_backward:
            with self.autocast():
                return self.objective.forward_backward(batch, 1.0 / self.accum)
        with self.autocast():
            outputs = self.model(batch)
        loss, count = split_loss(outputs, self.cfg.objective.type)
        # Plain losses are averaged so accumulation matches one large batch; (sum, count) losses are
        # backpropagated raw and divided by the global count once all micro-batches are in.
        loss = loss if count is not None else loss / self.accum
        self.strategy.backward(self.scaler.scale(loss) if self.scaler else loss)
        return outputs

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
    def evaluate(self, names: list[str] | None = None) -> dict[str, float]:
        """Run the named evaluation sets (default: all) with `eval_model`; metrics by full name."""
        metrics: dict[str, float] = {}
        for eval_set in self.eval_sets:
            if names is None or eval_set.name in names:
                metrics.update(evaluate(self.eval_model, eval_set, self.device, self.autocast))
        return metrics

    def _evaluate_due(self, metrics_log: MetricsLogger, is_last: bool) -> dict[str, float] | None:
        due = [s for s in self.eval_sets if is_last or (s.interval and self.step % s.interval == 0)]
        if not due:
            return None
        metrics: dict[str, float] = {}
        for eval_set in due:
            found = evaluate(self.eval_model, eval_set, self.device, self.autocast)
            prefix = len(eval_set.metric_name(""))
            metrics_log.log(self.step, {k[prefix:]: v for k, v in found.items()}, prefix=eval_set.log_prefix)
            metrics.update(found)
        self.last_eval = {"step": self.step, "sets": [s.name for s in due], "metrics": metrics}
        return metrics

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The run's named stateful parts besides model and optimizer (which the strategy adds); collective."""
        objective_state = self.objective.extra_state() if callable(getattr(self.objective, "extra_state", None)) else None
        return {
            "step": self.step,
            "run_id": self.run_id,
            "data": all_gather_objects(self.data.state_dict()),  # per rank: streams have a position each
            "strategy": self.strategy.name,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "rng": all_gather_objects(rng_state()),
            "best": self.best.state_dict() if self.best else None,
            "hooks": {f"hooks.{i}:{type(h).__name__}": s for i, h in enumerate(self.user_hooks) if (s := h.state_dict()) is not None},
            "objective": objective_state,
            "frozen": {"keys": list(self.frozen_keys), "fingerprint": self.frozen_fingerprint} if self.frozen_keys else None,
            "skipped_in_a_row": self.skipped_in_a_row,
            "eval_weights": "ema" if self.eval_model is not self.objective else "model",
            "world_size": self.world_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def full_state_dict(self) -> dict[str, Any]:
        """Everything, weights included (collective: gathers full weights): what best.pt holds."""
        return {**self.state_dict(), "model": self.strategy.model_state_dict(self.model), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every named part that `state_dict` (plus the strategy's model and optimizer) captured."""
        self._check_frozen(state)
        self.strategy.load_checkpoint(state, self.model, self.optimizer, self.frozen_keys)
        for name, part in (("scheduler", self.scheduler), ("scaler", self.scaler), ("ema", self.ema and self.ema.module)):
            if (part is None) != (state.get(name) is None):
                raise CheckpointError(f"resume: the checkpoint {'has' if state.get(name) is not None else 'lacks'} {name} state but this config {'does not use' if part is None else 'uses'} one")
            if part is not None:
                part.load_state_dict(state[name])
        self.step = state["step"]
        if state.get("run_id"):  # checkpoints written before run ids keep the fresh one
            self.run_id = self.checkpoints.run_id = state["run_id"]
        self._restore_data(state["data"])
        if self.best is not None and state.get("best"):
            self.best.load_state_dict(state["best"])
        saved_hooks = state.get("hooks") or {}
        for i, hook in enumerate(self.user_hooks):
            key = f"hooks.{i}:{type(hook).__name__}"
            if key in saved_hooks:
                hook.load_state_dict(saved_hooks[key])
            elif hook.state_dict() is not None and saved_hooks:
                logger.warning("resume: no saved state for hook %s; it starts fresh", key)
        if callable(getattr(self.objective, "load_extra_state", None)) and state.get("objective") is not None:
            self.objective.load_extra_state(state["objective"])
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        self._restore_rng_states(state)

    def _check_frozen(self, state: dict[str, Any]) -> None:
        saved = state.get("frozen")
        if saved is None:
            return
        if list(self.frozen_keys) != saved["keys"] or self.frozen_fingerprint != saved["fingerprint"]:
            raise CheckpointError("resume: the objective's frozen weights (frozen_state_keys, left out of step "
                                  "checkpoints) differ from those the run started with; rebuild them from the same source")

    def _restore_data(self, saved: Any) -> None:
        if isinstance(saved, dict):  # one position for every rank (written before positions were per rank)
            saved = [saved]
        if len(saved) == self.world_size:
            self.data.load_state_dict(saved[self.rank])
        elif all(s.get("stream") is None for s in saved) and all(s == saved[0] for s in saved):
            self.data.load_state_dict(saved[0])  # map-style: every rank shares one position
        else:
            raise CheckpointError(f"resume: the stream positions were saved by {len(saved)} ranks and cannot be split "
                                  f"over {self.world_size}; resume at the world size that wrote the checkpoint")

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

    def save_checkpoint(self) -> Path | None:
        """Write a step checkpoint (collective); refuses weights that are not finite."""
        if not self.weights_finite():
            raise NonFiniteLossError(f"step {self.step}: weights are not finite; refusing to write a checkpoint")
        path = self.strategy.save_checkpoint(self.checkpoints, self.step, self.state_dict(), self.model,
                                             self.optimizer, self.frozen_keys)
        self._last_saved_step = self.step
        if path is not None:
            logger.info("saved checkpoint %s", path)
        return path

    # ------------------------------------------------------------------------------------------ loop
    def resume(self) -> None:
        """Apply `cfg.resume` (auto | path | null), once: the CLI resumes before it writes to the work dir."""
        if self._resumed:
            return
        self._resumed = True
        found = self.checkpoints.resolve_resume(self.cfg.resume)
        if found is not None:
            path, state = found
            if not state.get("sharded_dir") and isinstance(state.get("model"), dict):
                mismatch = describe_mismatch(self.objective.state_dict(), state["model"], ignore=self.frozen_keys)
                if mismatch:
                    raise CheckpointError(f"resume: {path} is a checkpoint of another model ({mismatch})")
            self.load_state_dict(state)
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.data.epoch,
                        self.data.batch_in_epoch)

    def train(self, dry_run: bool = False) -> dict[str, Any]:
        """Run until `max_steps` (or one step with `dry_run`); returns the last logs and evaluation."""
        if self.is_main and not dry_run:
            self._prepare_work_dir()
        self.resume()
        cfg = self.cfg
        metrics_log = MetricsLogger(self.work_dir, self.is_main and not dry_run, cfg.train.tensorboard,
                                    cfg.train.progress_bar, self.max_steps, self.step)
        self.metrics_log = metrics_log
        last: dict[str, Any] = {}
        window_start, window_samples = time.perf_counter(), 0
        run_start_step, run_start = self.step, time.perf_counter()
        previous_handlers = self._install_preemption_handlers()
        self.exit = "error"  # until proven otherwise; after_train hooks read it
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.max_steps:
                if self._preemption_requested():
                    self.exit = "preempted"
                    return self._stop_for_preemption(last)
                for hook in self.hooks:
                    hook.before_step(self)
                outputs = self.train_step()
                window_samples += self.global_batch_size
                if dry_run:
                    for hook in self.hooks:
                        hook.after_step(self, outputs or {})
                    last = {"train": outputs, "val": self.evaluate(), "val_step": self.step}
                    logger.info("dry run: one step done (%s), evaluation %s", outputs, last["val"])
                    self.exit = "dry_run"
                    return last
                if outputs is not None:
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
                            "epoch": self.data.epoch,
                        })
                        window_start, window_samples = time.perf_counter(), 0
                metrics_log.advance(self.step)
                # A skipped step still counts: its evaluation and checkpoint are due as for any other step.
                is_last = self.step == self.max_steps
                metrics = self._evaluate_due(metrics_log, is_last)
                if metrics is not None:
                    last["val"], last["val_step"] = metrics, self.step
                for hook in self.hooks:
                    hook.after_step(self, outputs or {})
                if (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0) or is_last:
                    self.save_checkpoint()
            self.exit = "completed"
        finally:
            self._after_train()
            metrics_log.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        barrier()
        return last

    def _prepare_work_dir(self) -> None:
        """Create the work dir, remove temp files of killed writes and, under checkpoint.overwrite, the old run."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        removed = self.checkpoints.remove_stale_temp_files()
        if removed:
            logger.info("removed %d temp file(s) of interrupted writes: %s", len(removed), ", ".join(p.name for p in removed))
        if self.cfg.checkpoint.overwrite and self.cfg.resume is None:
            deleted = self.checkpoints.delete_all()
            if deleted:
                logger.warning("checkpoint.overwrite=true: deleted %d checkpoint file(s) of an earlier run in %s",
                               deleted, self.work_dir)

    def _after_train(self) -> None:
        """Every hook's after_train, however the run ended; on an error, a failing hook does not hide it."""
        for hook in self.hooks:
            try:
                hook.after_train(self)
            except Exception:
                if self.exit != "error":
                    raise
                logger.exception("after_train of %s failed while handling an earlier error", type(hook).__name__)

    # ------------------------------------------------------------------------------------ preemption
    def _install_preemption_handlers(self) -> dict[int, Any]:
        """On SIGUSR1/SIGTERM (Slurm's warning before preemption) or Ctrl-C (SIGINT) finish the step, checkpoint,
        exit cleanly; a second Ctrl-C aborts at once (KeyboardInterrupt, no checkpoint)."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if signum == signal.SIGINT:
                logger.warning("Ctrl-C: finishing step %d, then a checkpoint and exit; Ctrl-C again aborts at once",
                               self.step + 1)

        return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}

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


__all__ = ["Trainer", "VfmError", "validate_run_config"]
