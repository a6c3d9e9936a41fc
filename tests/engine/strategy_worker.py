"""Worker for tests/engine/test_strategies.py: trains a tiny model through a strategy on a fixed global batch.

Run under `torchrun --nproc_per_node N strategy_worker.py OUT_DIR CASES_JSON` (gloo on CPU); the test
imports `run_case` for the one-process reference. Rank 0 writes `OUT_DIR/<case>.pt` with the full
weights after training (plus gradient norms, and the weights after a full-state-dict reload).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vfm.engine.strategies import build_strategy

GLOBAL_BATCH = 8  # samples per optimizer step, split over ranks and micro-batches
IN_DIM, WIDTH, OUT_DIM = 8, 16, 4


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.fc(x))


class TinyNet(nn.Module):
    """stem -> 2 residual blocks -> head: `blocks` is what FSDP2 shards one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(IN_DIM, WIDTH)
        self.blocks = nn.ModuleList([Block(WIDTH) for _ in range(2)])
        self.head = nn.Linear(WIDTH, OUT_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().state_dict()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator)
    targets = torch.randn(GLOBAL_BATCH, OUT_DIM, generator=generator)
    return inputs, targets


def run_case(case: dict[str, Any], out_dir: Path) -> None:
    """Train `case["steps"]` optimizer steps (resuming from `case["resume"]` if set); rank 0 writes the result."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    accum, clip = case.get("accum", 1), case.get("clip")
    model = TinyNet()
    model.load_state_dict(initial_weights())
    if case.get("resume"):
        torch.manual_seed(123)
        model = TinyNet()  # other weights: the checkpoint must overwrite them
    strategy = build_strategy(case["strategy"], precision=case.get("precision", "fp32"), grad_accum_steps=accum,
                              micro_batch_size=GLOBAL_BATCH // (world * accum), clip_grad_norm=clip,
                              **case.get("options", {}))
    model, optimizer = strategy.wrap(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    start = 0
    result: dict[str, Any] = {"norms": []}
    if case.get("resume"):
        try:
            start = strategy.load(case["resume"], model, optimizer)["step"]
        except Exception as error:  # the test checks the message
            result["load_error"] = f"{type(error).__name__}: {error}"
            if rank == 0:
                torch.save(result, out_dir / f"{case['name']}.pt")
            return
    for step in range(start, case["steps"]):
        inputs, targets = global_batch(step)
        per_rank = GLOBAL_BATCH // world
        inputs, targets = inputs[rank * per_rank:(rank + 1) * per_rank], targets[rank * per_rank:(rank + 1) * per_rank]
        for i, (x, y) in enumerate(zip(inputs.chunk(accum), targets.chunk(accum), strict=True)):
            with strategy.no_sync(model) if i < accum - 1 else contextlib.nullcontext():
                strategy.backward(F.mse_loss(model(x), y) / accum)
        norm = strategy.clip_grad_norm(model, clip) if clip is not None else None
        strategy.optimizer_step(optimizer)
        strategy.zero_grad(optimizer)
        if clip is not None:
            result["norms"].append(float(norm) if norm is not None else strategy.last_grad_norm())
        if case.get("save_at") == step + 1:
            strategy.save(case["save_dir"], {"step": step + 1}, model, optimizer)
    result["weights"] = strategy.model_state_dict(model)
    strategy.load_model_state_dict(model, initial_weights())
    result["reloaded"] = strategy.model_state_dict(model)
    if rank == 0:
        torch.save(result, out_dir / f"{case['name']}.pt")


def main() -> None:
    out_dir, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for case in cases:
            run_case(case, out_dir)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo/DeepSpeed threads have aborted exits before


if __name__ == "__main__":
    main()
