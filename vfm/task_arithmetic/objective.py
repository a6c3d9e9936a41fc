"""The fine-tuning objective of task arithmetic: a pre-trained encoder, a frozen head, and a fine-tuning mode.

Modes (``finetune.mode``):

- ``standard``: every encoder parameter trains (rule ``all``);
- ``attn_only``: only the attention projections' weights train (rule ``attn_linear``; Jin et al. 2025);
- ``linearized``: the encoder is replaced by its first-order Taylor expansion around the pre-trained weights,
  f(x; theta0) + J(theta0)(theta - theta0) (Ortiz-Jimenez et al. 2023), over ``finetune.rule`` (default ``all``);
  theta0 is a set of frozen buffers, left out of step checkpoints and rebuilt from ``pretrained``;
- ``posthoc_linearized``: evaluation only: the same expansion applied to weights fine-tuned in another mode.

The head is fitted on the pre-trained encoder before any training and stays frozen (a buffer, not a parameter).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vfm.errors import CheckpointError, ConfigError, DataError
from vfm.registry import BACKBONES, DATASETS, OBJECTIVES
from vfm.requirements import Requirements
from vfm.task_arithmetic.heads import DEFAULT_TEMPLATES, build_head
from vfm.task_arithmetic.linearize import LinearizationPoint, linearized_call
from vfm.task_arithmetic.selectors import RULES, count_parameters, select_parameters

logger = logging.getLogger("vfm.task_arithmetic")

MODES = ("standard", "attn_only", "linearized", "posthoc_linearized")
MODE_RULES = {"standard": "all", "attn_only": "attn_linear", "linearized": "all", "posthoc_linearized": "all"}
LINEARIZED_MODES = ("linearized", "posthoc_linearized")
FINETUNE_KEYS = ("mode", "rule")
HEAD_KEYS = ("kind", "classnames", "templates", "probe_c", "logit_scale")
ENCODER_PREFIX, POINT_PREFIX, HEAD_PREFIX = "encoder.", "linearization_point.", "head."


def check_finetune(finetune: Any, path: str) -> tuple[str, str]:
    """(mode, rule) of a `finetune` node; unknown keys or values are a ConfigError naming them."""
    finetune = dict(finetune or {})
    unknown = [k for k in finetune if k not in FINETUNE_KEYS]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; expected {', '.join(FINETUNE_KEYS)}")
    mode = finetune.get("mode", "standard")
    if mode not in MODES:
        raise ConfigError(f"{path}.mode: got {mode!r}, expected one of {', '.join(MODES)}")
    rule = finetune.get("rule") or MODE_RULES[mode]
    if rule not in RULES:
        raise ConfigError(f"{path}.rule: got {rule!r}, expected one of {', '.join(RULES)}")
    if mode == "attn_only" and rule not in ("attn_linear", "attn_linear+bias"):
        raise ConfigError(f"{path}.rule: got {rule!r} with mode attn_only, expected attn_linear or attn_linear+bias")
    return mode, rule


def _check_objective(kwargs: dict[str, Any], path: str) -> None:
    check_finetune(kwargs.get("finetune"), f"{path}.finetune")
    head = dict(kwargs.get("head") or {})
    unknown = [k for k in head if k not in HEAD_KEYS]
    if unknown:
        raise ConfigError(f"{path}.head.{unknown[0]}: unknown key; expected {', '.join(HEAD_KEYS)}")
    if head.get("kind", "auto") not in ("auto", "zeroshot", "linear_probe"):
        raise ConfigError(f"{path}.head.kind: got {head['kind']!r}, expected auto, zeroshot or linear_probe")
    if head.get("kind", "auto") == "linear_probe" and kwargs.get("probe_data") is None:
        raise ConfigError(f"{path}.probe_data: head.kind linear_probe needs the task's training images")


def load_encoder_weights(encoder: nn.Module, path: str) -> list[str]:
    """Load the encoder part of a weights file (plain, `encoder.`- or `backbone.`-prefixed keys); returns the keys
    of the file left unused (heads of another task). A missing encoder key or a shape mismatch is an error."""
    from pathlib import Path

    from vfm.weights import extract_weights, load_state_dict_file

    if not Path(path).is_file():
        raise CheckpointError(f"objective.pretrained: weights file {path!r} not found (train the starting point first: "
                              "tools/train.py configs/task_arithmetic/pretrain_digits_vit.yaml)")
    weights = extract_weights(load_state_dict_file(path))
    own = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in (ENCODER_PREFIX, "backbone.", ""):
        found = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix) and k[len(prefix):] in own}
        if len(found) > len(best):
            best = found
    missing = [k for k in own if k not in best]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} encoder keys are missing, e.g. {missing[0]!r} (a checkpoint of "
                              f"another architecture? objective.backbone must match the pre-training run)")
    shapes = [k for k in own if best[k].shape != own[k].shape]
    if shapes:
        key = shapes[0]
        raise CheckpointError(f"{path}: shape of {key}: {tuple(best[key].shape)} in file, {tuple(own[key].shape)} in model")
    encoder.load_state_dict(best)
    return [k for k in weights if k not in best and not any(k.startswith(p) and k[len(p):] in best for p in (ENCODER_PREFIX, "backbone."))]


@OBJECTIVES.register("task_arithmetic", check=_check_objective)
class TaskArithmeticClassifier(nn.Module):
    """An encoder fine-tuned in one mode under a frozen task head; batch = {"image", "label"}."""

    inference_methods = ("predict",)

    def __init__(
        self,
        backbone: Annotated[dict, BACKBONES],
        task: str,
        pretrained: str | None = None,
        probe_data: Annotated[dict, DATASETS] | None = None,
        finetune: dict | None = None,
        head: dict | None = None,
        probe_batch_size: int = 256,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        self.task, self.image_key, self.label_key = task, image_key, label_key
        self.mode, self.rule = check_finetune(finetune, "objective.finetune")
        # num_classes 0: the backbone returns pooled features (as `classification` passes its class count).
        self.encoder = BACKBONES.build({**backbone, "num_classes": 0}, "objective.backbone")
        if pretrained:
            unused = load_encoder_weights(self.encoder, pretrained)
            if unused:
                logger.info("objective.pretrained: %d keys not used by the encoder (e.g. %s)", len(unused), unused[0])
        self.selected = select_parameters(self.encoder, self.rule)
        head = dict(head or {})
        dataset = DATASETS.build(probe_data, "objective.probe_data") if probe_data is not None else None
        classnames = head.get("classnames") or getattr(dataset, "classnames", None)
        if not classnames:
            raise ConfigError("objective.head.classnames: no class names given and objective.probe_data has none")

        def batches() -> DataLoader:
            return DataLoader(dataset, batch_size=probe_batch_size, shuffle=False)

        self.head = build_head(self.encoder, head.get("kind", "auto"), list(classnames),
                               batches if dataset is not None else None, head.get("templates") or DEFAULT_TEMPLATES,
                               head.get("probe_c", 1.0), head.get("logit_scale"))
        self.linearization_point = LinearizationPoint(self.encoder, self.selected) if self.mode in LINEARIZED_MODES else None

    # ------------------------------------------------------------------------------ engine contract
    def trainable_parameters(self) -> list[str]:
        """The encoder parameters the mode's rule selects (logged with their count)."""
        if self.mode == "posthoc_linearized":
            raise ConfigError("objective.finetune.mode: posthoc_linearized is evaluation only (tools/eval.py, "
                              "tools/task_arithmetic.py); train in standard, attn_only or linearized mode")
        trainable, total = count_parameters(self.encoder, self.selected), count_parameters(self)
        logger.info("task_arithmetic: mode %s, rule %s: %d tensors, %s of %s parameters trainable (%.1f%%)", self.mode,
                    self.rule, len(self.selected), f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))
        return [ENCODER_PREFIX + n for n in self.selected]

    def requirements(self) -> Requirements:
        """torch.func.jvp needs the full parameters in one piece: single or DDP for the linearised modes."""
        if self.mode in LINEARIZED_MODES:
            return Requirements(strategies=("single", "ddp"))
        return Requirements()

    def frozen_state_keys(self) -> list[str]:
        """theta0, rebuilt from `pretrained` at construction, stays out of step checkpoints."""
        if self.linearization_point is None:
            return []
        return [POINT_PREFIX + LinearizationPoint.buffer_name(n) for n in self.linearization_point.names]

    def check_dataset(self, dataset: Any, path: str) -> None:
        """Refuse data with another number of classes than the head's."""
        classes = getattr(dataset, "num_classes", None)
        if classes is not None and classes != self.head.num_classes:
            raise DataError(f"{path}: {classes} classes, but the objective's head for task {self.task!r} has "
                            f"{self.head.num_classes}")

    # ------------------------------------------------------------------------------ computation
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features in the objective's mode (linearised around theta0 in the linearised modes)."""
        if self.linearization_point is None:
            return self.encoder(images)
        return linearized_call(self.encoder, self.linearization_point.tensors(), (images,))

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits (N, num_classes)."""
        return {"logits": self.head(self.features(batch[self.image_key]))}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.head(self.features(batch[self.image_key]))
        labels = batch[self.label_key]
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return {"loss": loss, "train_accuracy": accuracy}


def encoder_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder part of an objective's state dict (or of a plain / `backbone.`-prefixed one), keys unprefixed;
    heads and the linearisation point are left out."""
    for prefix in (ENCODER_PREFIX, "backbone."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


__all__ = ["LINEARIZED_MODES", "MODES", "MODE_RULES", "TaskArithmeticClassifier", "check_finetune", "encoder_weights",
           "load_encoder_weights"]
