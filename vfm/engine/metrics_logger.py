"""Rank-0 logging: a console line per interval, metrics.jsonl, TensorBoard scalars, a progress bar."""

from __future__ import annotations

import datetime
import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from vfm.errors import VfmError
from vfm.weights import atomic_write

logger = logging.getLogger("vfm.train")


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on GPUs, peak resident set size of the process on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def format_line(step: int, max_steps: int, values: dict[str, Any]) -> str:
    """`step 20/300 | loss 1.2345 | lr 1.00e-03 | 812.3 samples/s | eta 0:00:42 | mem 612 MiB | ...`."""
    parts = [f"step {step}/{max_steps}"]
    for key, value in values.items():
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "samples_per_s":
            parts.append(f"{value:.1f} samples/s")
        elif key == "eta_s":
            parts.append(f"eta {datetime.timedelta(seconds=int(value))}")
        elif key == "peak_mem_mb":
            parts.append(f"mem {value:.0f} MiB")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


def drop_records_after(path: Path, step: int) -> int:
    """Remove the records of steps after `step` from a metrics.jsonl (a resumed run logs them again); returns how many.

    Rewritten atomically; a torn last line (a kill mid-write) goes too.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write(path, lambda file: file.write("".join(f"{line}\n" for line in kept).encode()))
    return dropped


class MetricsLogger:
    """Writes metrics on rank 0 only; other ranks get a logger that does nothing."""

    def __init__(self, work_dir: Path, enabled: bool, tensorboard: bool, progress_bar: str, max_steps: int, start_step: int) -> None:
        self.enabled, self.max_steps = enabled, max_steps
        if enabled:
            drop_records_after(work_dir / "metrics.jsonl", start_step)
        self.jsonl = open(work_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115 - closed in close()
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(work_dir / "tensorboard"), purge_step=start_step + 1)
        show_bar = progress_bar == "always" or (progress_bar == "auto" and sys.stdout.isatty())
        self.bar = None
        if enabled and show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, dynamic_ncols=True, desc="train")

    def log(self, step: int, values: dict[str, Any], prefix: str = "train", console: bool = True) -> None:
        """Record `values` at `step` under `prefix` (train/val) in every sink."""
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, **values}
        assert self.jsonl is not None
        try:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        except OSError as error:  # disk full: one line naming the file, not a traceback
            raise VfmError(f"{self.jsonl.name}: cannot write metrics: {error.strerror or error}") from error
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
        if console:
            line = format_line(step, self.max_steps, values) if prefix == "train" else f"[{prefix}] step {step}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
            )
            if self.bar is not None:
                self.bar.write(line)
            else:
                logger.info(line)

    def advance(self, step: int) -> None:
        """Move the progress bar to `step`."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def close(self) -> None:
        """Flush and close every sink."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
