"""The best checkpoint and the final weights export: hooks the Trainer adds from `eval.metric` and `checkpoint`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vfm.dist.collectives import barrier
from vfm.engine.hooks import Hook
from vfm.errors import ConfigError, NonFiniteLossError
from vfm.weights import save_safetensors

if TYPE_CHECKING:
    from vfm.engine.trainer import Trainer

logger = logging.getLogger("vfm.train")


class BestCheckpoint(Hook):
    """After an evaluation that improves `metric` (by `mode`), write checkpoints/best.pt (sharded strategies:
    best.safetensors, the gathered weights). Its state (the best value and step) is checkpointed."""

    def __init__(self, metric: str, mode: str = "max", eval_set: str = "") -> None:
        self.metric, self.mode, self.eval_set = metric, mode, eval_set
        self.best: dict[str, Any] = {"metric": metric, "value": None, "step": None}

    def after_step(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        evaluation = trainer.last_eval
        if evaluation is None or evaluation["step"] != trainer.step:
            return
        metrics = evaluation["metrics"]
        if self.eval_set not in evaluation["sets"]:
            return  # the metric's set runs at another interval
        if self.metric not in metrics:
            raise ConfigError(f"eval.metric: {self.metric!r} is not among the computed metrics {sorted(metrics)}")
        value, best = metrics[self.metric], self.best["value"]
        if best is not None and not (value > best if self.mode == "max" else value < best):
            return
        self.best = {"metric": self.metric, "value": value, "step": trainer.step}
        if not trainer.weights_finite():
            raise NonFiniteLossError(f"step {trainer.step}: weights are not finite; refusing to write the best checkpoint")
        if trainer.strategy.sharded_state:  # the best weights only, gathered; resume uses step checkpoints
            weights = trainer.strategy.model_state_dict(trainer.model)
            path = trainer.checkpoints.dir / "best.safetensors"
            if trainer.is_main:
                save_safetensors(weights, path)
        else:
            state = trainer.full_state_dict()
            path = trainer.checkpoints.dir / "best.pt"
            if trainer.is_main:
                trainer.checkpoints.save_best(state)
        if trainer.is_main:
            logger.info("new best %s %.4f at step %d -> %s", self.metric, value, trainer.step, path)
        barrier()

    def state_dict(self) -> dict[str, Any]:
        return dict(self.best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state)


class ExportWeights(Hook):
    """When training completes, export the evaluated weights (EMA when configured) as work_dir/model.safetensors."""

    def after_train(self, trainer: Trainer) -> None:
        if trainer.exit != "completed":
            return
        weights = trainer.eval_weights_state()  # collective: gathers shards
        if trainer.is_main:
            save_safetensors(weights, trainer.work_dir / "model.safetensors")
        barrier()
