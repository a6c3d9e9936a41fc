"""Components the end-to-end tests load through `custom_imports` (this also tests the plug-in path)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch

from vfm.engine import checkpoint as checkpoint_module
from vfm.engine.hooks import Hook
from vfm.objectives.classification import Classification
from vfm.registry import HOOKS, OBJECTIVES


@HOOKS.register("test_kill_at_step")
class KillAtStep(Hook):
    """SIGKILL the training process right after optimizer step `step` (no cleanup, like an OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer: Any, outputs: dict[str, Any]) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register("test_kill_during_checkpoint")
class KillDuringCheckpoint(Hook):
    """From step `step` on, the next torch.save writes half a file and then the process is SIGKILLed."""

    def __init__(self, step: int) -> None:
        self.step = step

    def before_step(self, trainer: Any) -> None:
        if trainer.step + 1 == self.step:

            def half_write_then_die(obj: Any, file: Any) -> None:
                file.write(b"PK\x03\x04 partial checkpoint bytes")
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            checkpoint_module.torch.save = half_write_then_die  # the module's view of torch.save


@OBJECTIVES.register("test_nan_classification")
class NanClassification(Classification):
    """Classification whose training loss is NaN on the listed forward calls (1-based)."""

    def __init__(self, nan_calls: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = super().forward(batch)
        self.calls += 1
        if self.calls in self.nan_calls:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


@HOOKS.register("test_signal_at_step")
class SignalAtStep(Hook):
    """Send `signal_name` (as Slurm does before preemption; SIGINT as Ctrl-C does) `times` times in a row to this
    process after optimizer step `step`."""

    def __init__(self, step: int, signal_name: str = "SIGTERM", only_rank: int | None = None, times: int = 1,
                 process_group: bool = False, during_step: bool = False) -> None:
        self.step, self.signum, self.only_rank, self.times = step, signal.Signals[signal_name], only_rank, times
        self.process_group = process_group  # signal the DataLoader workers too, as a terminal's Ctrl-C does
        self.during_step = during_step  # arrive before step `step` starts (it still needs batches), not after it

    def before_train(self, trainer: Any) -> None:
        if self.process_group:  # a group of our own (workers start later and join it), so the test runner is spared
            os.setpgid(0, 0)

    def before_step(self, trainer: Any) -> None:
        if self.during_step and trainer.step + 1 == self.step:
            self._send(trainer)

    def after_step(self, trainer: Any, outputs: dict[str, Any]) -> None:
        if not self.during_step and trainer.step == self.step:
            self._send(trainer)

    def _send(self, trainer: Any) -> None:
        if self.only_rank not in (None, trainer.rank):
            return
        for _ in range(self.times):
            if self.process_group:
                os.killpg(os.getpgrp(), self.signum)
            else:
                os.kill(os.getpid(), self.signum)


@HOOKS.register("test_wait_for_signal_at_step")
class WaitForSignalAtStep(Hook):
    """After optimizer step `step`, touch `marker`.rank<N> and wait (at most `timeout_s`) for a stop signal.

    Lets a test deliver a real signal (`scancel --signal=USR1`) at a known step instead of racing the run. Once the
    marker exists (a requeued or resumed run), it does nothing.
    """

    def __init__(self, step: int, marker: str, timeout_s: float = 60.0) -> None:
        self.step, self.marker, self.timeout_s = step, marker, timeout_s

    def after_step(self, trainer: Any, outputs: dict[str, Any]) -> None:
        marker = f"{self.marker}.rank{trainer.rank}"
        if trainer.step != self.step or os.path.exists(marker):
            return
        with open(marker, "w") as file:
            file.write(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while trainer._stop_signal is None and time.monotonic() < deadline:
            time.sleep(0.05)
