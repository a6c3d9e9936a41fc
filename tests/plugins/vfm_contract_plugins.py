"""Small components that exercise each extension point of the engine (loaded through `custom_imports`).

The data are generated records: `x` (4 features), `y` (2 targets), `tokens` (1-3 "tokens" per record, for
globally normalised losses), `label` (id % 3) and `id`. The objective is a linear model behind a "tower"
(Linear + Dropout) that tests freeze, filter or keep in eval mode.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vfm.dist.collectives import all_gather_objects, all_reduce_sum, gather_rows, get_rank, get_world_size
from vfm.engine.hooks import Hook
from vfm.engine.objective import Requirements
from vfm.errors import DataError
from vfm.evaluation.base import Evaluator
from vfm.registry import DATASETS, EVALUATORS, HOOKS, OBJECTIVES
from vfm.weights import fingerprint, load_state_dict_file


def make_record(index: int, seed: int = 0) -> dict[str, Any]:
    """Record `index`: a deterministic function of (seed, index)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + index)
    x = torch.randn(4, generator=generator)
    y = torch.stack([x[0] - 2 * x[1], x[2] * x[3]]) + 0.1 * torch.randn(2, generator=generator)
    return {"x": x, "y": y, "tokens": torch.tensor(1 + index % 3), "label": torch.tensor(index % 3),
            "id": torch.tensor(index)}


@DATASETS.register("test_records")
class Records(Dataset):
    """`size` generated records (map-style)."""

    def __init__(self, size: int = 96, seed: int = 0) -> None:
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_record(index, self.seed)


@DATASETS.register("test_failing_records")
class FailingRecords(Records):
    """Records that cannot be read: each raises a DataError (`kind: data`) or a plain ValueError (`kind: bug`)."""

    def __init__(self, kind: str = "data", size: int = 96, seed: int = 0) -> None:
        super().__init__(size, seed)
        self.kind = kind

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.kind == "data":
            raise DataError(f"test_failing_records: record {index} is unreadable")
        raise ValueError(f"record {index}: a bug in the dataset")


@DATASETS.register("test_record_stream")
class RecordStream(IterableDataset):
    """The same records as a stream: shuffled per epoch, split by rank then by worker; resumable per worker."""

    def __init__(self, size: int = 300, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.position = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def _mine(self) -> list[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return order[get_rank() :: get_world_size()][worker::workers]

    def __iter__(self):
        mine = self._mine()
        while self.position < len(mine):
            index = mine[self.position]
            self.position += 1  # counted before yielding: the state then says "this one is consumed"
            yield make_record(index, self.seed)


@OBJECTIVES.register("test_linear")
class LinearObjective(nn.Module):
    """y ~ net(tower(x)), with switches for each optional part of the Objective protocol."""

    def __init__(self, teacher_momentum: float | None = None, trainable: list[str] | None = None,
                 sum_count: bool = False, record_ids: bool = False, strategies: list[str] | None = None,
                 tower_dropout: float = 0.0, frozen_tower: str | None = None, per_sample_clip: float | None = None) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.Linear(4, 4), nn.Dropout(tower_dropout))
        self.net = nn.Linear(4, 2)
        self.teacher_momentum, self.sum_count, self.record_ids = teacher_momentum, sum_count, record_ids
        self.trainable, self.strategies, self.per_sample_clip = trainable, strategies, per_sample_clip
        self.frozen_tower = frozen_tower
        if frozen_tower is not None:  # the tower comes from a weights file and is never trained
            self.tower[0].load_state_dict({k.removeprefix("tower.0."): v for k, v in load_state_dict_file(frozen_tower).items()})
            self.tower.requires_grad_(False)
        self.teacher = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.teacher_updates: list[tuple[int, float]] = []
        self.seen: list[int] = []

    # ---------------------------------------------------------------------- the optional protocol
    def requirements(self) -> Requirements:
        return Requirements(strategies=tuple(self.strategies) if self.strategies else None,
                            owns_backward=self.per_sample_clip is not None, global_loss_normalisation=self.sum_count)

    def trainable_parameters(self) -> list[str]:
        return self.trainable if self.trainable is not None else [n for n, p in self.named_parameters() if p.requires_grad]

    def momentum(self, step: int, max_steps: int) -> float:
        """BYOL's cosine schedule from teacher_momentum to 1."""
        return 1 - (1 - self.teacher_momentum) * (math.cos(math.pi * step / max_steps) + 1) / 2

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        if self.teacher_momentum is None:
            return
        m = self.momentum(step, max_steps)
        for key, value in self.net.state_dict().items():
            self.teacher[key].mul_(m).add_(value.detach(), alpha=1 - m)
        self.teacher_updates.append((step, m))

    def extra_state(self) -> dict[str, Any]:
        seen = all_gather_objects(list(self.seen)) if self.record_ids else None
        return {"teacher": {k: v.clone() for k, v in self.teacher.items()}, "updates": list(self.teacher_updates),
                "seen": seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher = {k: v.clone() for k, v in state["teacher"].items()}
        self.teacher_updates = [tuple(u) for u in state["updates"]]
        if state["seen"] is not None:
            self.seen = list(state["seen"][get_rank()])

    def frozen_state_keys(self) -> list[str]:
        return ["tower.0.weight", "tower.0.bias"] if self.frozen_tower is not None else []

    # ---------------------------------------------------------------------------------- forward
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"pred": self.net(self.tower(batch["x"]))}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.record_ids:
            self.seen.extend(batch["id"].tolist())
        pred = self.net(self.tower(batch["x"]))
        logs = {"tower_training": torch.tensor(float(self.tower.training))}
        if get_rank() % 2 == 1:  # a key only some ranks log: merged by name, counted where present
            logs["odd_rank"] = torch.tensor(float(get_rank()))
        if self.sum_count:
            # Each record counts `tokens` times: the global mean is over all tokens of all micro-batches and ranks.
            per_record = ((pred - batch["y"]) ** 2).mean(dim=1) * batch["tokens"]
            return {"loss": (per_record.sum(), batch["tokens"].sum()), **logs}
        return {"loss": F.mse_loss(pred, batch["y"]), **logs}

    def forward_backward(self, batch: dict[str, Any], loss_scale: float) -> dict[str, Any]:
        """Per-sample gradients (torch.func), each clipped to per_sample_clip, averaged: DP-SGD's backward."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}

        def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            tower = {k.removeprefix("tower."): v for k, v in p.items() if k.startswith("tower.")}
            net = {k.removeprefix("net."): v for k, v in p.items() if k.startswith("net.")}
            features = torch.func.functional_call(self.tower, tower, (x[None],), strict=False)
            pred = torch.func.functional_call(self.net, net, (features,), strict=False)
            return F.mse_loss(pred, y[None])

        grads = torch.func.vmap(torch.func.grad(loss_of), in_dims=(None, 0, 0), randomness="different")(params, batch["x"], batch["y"])
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        factor = (self.per_sample_clip / (norms + 1e-12)).clamp(max=1.0)
        for name, param in params.items():
            clipped = (grads[name] * factor.view(-1, *[1] * (grads[name].dim() - 1))).mean(0)
            param.grad = clipped * loss_scale if param.grad is None else param.grad + clipped * loss_scale
        with torch.no_grad():
            loss = F.mse_loss(self.net(self.tower(batch["x"])), batch["y"])
        return {"loss": loss, "clipped_fraction": (factor < 1).float().mean()}


@OBJECTIVES.register("test_no_loss")
class NoLoss(LinearObjective):
    """Forgets the `loss` key."""

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"los": super().forward(batch)["loss"]}


@OBJECTIVES.register("test_nan_linear")
class NanLinear(LinearObjective):
    """Its training loss is NaN on the listed forward calls (1-based)."""

    def __init__(self, nan_calls: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = super().forward(batch)
        self.calls += 1
        if self.calls in self.nan_calls:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


# ---------------------------------------------------------------------------------------- hooks
@HOOKS.register("test_gradient_noise")
class GradientNoise(Hook):
    """Adds N(0, std^2) to every gradient at the gradient stage, from a generator seeded by (seed, step) alone,
    so every rank adds the same noise; after training each rank writes a fingerprint of its weights."""

    def __init__(self, std: float, seed: int = 0) -> None:
        self.std, self.seed, self.calls = std, seed, 0

    def after_backward(self, trainer: Any) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.step)
        for _, param in sorted(trainer.objective.named_parameters()):
            if param.grad is not None:
                param.grad.add_(torch.randn(param.grad.shape, generator=generator) * self.std)
        self.calls += 1

    def after_train(self, trainer: Any) -> None:
        if trainer.exit == "completed":
            digest = fingerprint(trainer.objective.state_dict())
            (trainer.work_dir / f"replica_{trainer.rank}.txt").write_text(digest)

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


@HOOKS.register("test_record_exit")
class RecordExit(Hook):
    """after_train writes `trainer.exit` to `<path>.rank<N>`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_train(self, trainer: Any) -> None:
        Path(f"{self.path}.rank{trainer.rank}").write_text(trainer.exit)


@HOOKS.register("test_fail_at_step")
class FailAtStep(Hook):
    """Raise a RuntimeError after step `step` (an unexpected failure mid-run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer: Any, outputs: dict[str, Any]) -> None:
        if trainer.step == self.step:
            raise RuntimeError(f"test failure after step {self.step}")


RECORDED: list[dict[str, Any]] = []  # what test_record_step saw, for in-process tests


@HOOKS.register("test_record_step")
class RecordStep(Hook):
    """Keeps a copy of the objective's `net` weights, its optimizer state keys and outputs after every step."""

    def after_step(self, trainer: Any, outputs: dict[str, Any]) -> None:
        RECORDED.append({"step": trainer.step, "outputs": dict(outputs),
                         "net": copy.deepcopy(trainer.objective.net.state_dict()),
                         "state": {k: v.detach().clone() for k, v in trainer.objective.state_dict().items()},
                         "optimizer_state_count": len(trainer.optimizer.state)})


# ----------------------------------------------------------------------------------- evaluators
@EVALUATORS.register("test_mse")
class MseEvaluator(Evaluator):
    """Mean squared error of `pred` against `y`, summed across ranks."""

    def reset(self) -> None:
        self.total = torch.zeros(2, dtype=torch.float64)

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.total += torch.tensor([((outputs["pred"] - batch["y"]) ** 2).sum().item(), batch["y"].numel()],
                                   dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        total = all_reduce_sum(self.total)
        return {"mse": (total[0] / total[1]).item()}


@EVALUATORS.register("test_prompt_accuracy")
class PromptAccuracy(Evaluator):
    """Embeds 3 fixed 'prompts' with the model in `begin`; a record is correct when its prediction is nearest
    to the prompt of its label. Reports accuracy (summed counts) and the median distance (gathered rows)."""

    def begin(self, model: nn.Module, loader: Any) -> None:
        prompts = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
        self.prompt_embeddings = model.predict({"x": prompts})["pred"]  # (3, 2)
        self.correct, self.total, self.distances = 0.0, 0.0, []

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        distances = torch.cdist(outputs["pred"], self.prompt_embeddings)  # (N, 3)
        self.correct += (distances.argmin(dim=1) == batch["label"]).sum().item()
        self.total += len(batch["label"])
        self.distances.append(distances.min(dim=1).values)

    def end(self) -> dict[str, float]:
        counts = all_reduce_sum(torch.tensor([self.correct, self.total], dtype=torch.float64))
        gathered = gather_rows(torch.cat(self.distances))
        return {"accuracy": (counts[0] / counts[1]).item(), "median_distance": gathered.median().item(),
                "count": float(len(gathered))}
