"""A test objective that writes the keys of every batch it trains on to a file of its process (survives kill -9)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.registry import OBJECTIVES


@OBJECTIVES.register("test_key_log")
class KeyLog(nn.Module):
    """loss = (w * mean pixel - 1)^2; appends the batch's keys to <log_dir>/<pid>.jsonl before returning."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.log_dir = Path(log_dir)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{os.getpid()}.jsonl", "a") as file:
            file.write(json.dumps(list(batch["key"])) + "\n")
            file.flush()
            os.fsync(file.fileno())
        return {"loss": (self.weight * batch["image"].mean() - 1.0) ** 2}
