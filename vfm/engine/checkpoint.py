"""Checkpoints: atomic writes, keep-last-K, a `last_checkpoint` pointer, safe loading, auto-resume."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.errors import CheckpointError
from vfm.weights import (  # noqa: F401 - re-exported: checkpoints are where users look for them
    FORMAT,
    _fsync_dir,
    atomic_torch_save,
    atomic_write,
    extract_weights,
    load_state_dict_file,
    load_weights,
    save_safetensors,
)

logger = logging.getLogger(__name__)

POINTER = "last_checkpoint"
SHARDED_META = "strategy.pt"  # inside a sharded (FSDP/DeepSpeed) checkpoint folder: which strategy wrote it, and the Trainer's state
_STEP_FILE = re.compile(r"^step_(\d+)(\.pt)?$")  # step_00000100.pt (full state) or step_00000100/ (sharded)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vfm training checkpoint: a file with everything, or a sharded folder's Trainer state.

    For a folder, the model and optimizer shards stay on disk: `sharded_dir` names the folder, which
    the strategy that wrote it loads (`Strategy.load`).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / SHARDED_META).is_file():
            raise CheckpointError(f"{path}: not a checkpoint folder ({SHARDED_META} missing: incomplete or not a checkpoint)")
        meta = load_state_dict_file(path / SHARDED_META)
        state = meta.get("state")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a vfm training checkpoint (no '{FORMAT}' format tag)")
        return {**state, "sharded_dir": str(path), "strategy": meta.get("strategy"), "world_size": meta.get("world_size")}
    state = load_state_dict_file(path)
    if state.get("format") != FORMAT or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a vfm training checkpoint (no '{FORMAT}' format tag); use load_from for weights")
    return state


def all_finite(module: nn.Module) -> bool:
    """True when every parameter and floating buffer of `module` is finite."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class CheckpointManager:
    """Writes step checkpoints under work_dir/checkpoints and finds the one to resume from."""

    def __init__(self, work_dir: str | Path, keep_last: int = 3) -> None:
        self.work_dir = Path(work_dir)
        self.dir = self.work_dir / "checkpoints"
        self.keep_last = keep_last
        self.pointer = self.work_dir / POINTER

    def step_path(self, step: int) -> Path:
        """Where the checkpoint of `step` lives."""
        return self.dir / f"step_{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write the checkpoint of `step`, move the pointer to it, and prune old ones."""
        path = atomic_torch_save({"format": FORMAT, **state}, self.step_path(step))
        atomic_write(self.pointer, lambda file: file.write(os.path.relpath(path, self.work_dir).encode()))
        self._prune()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        """Write checkpoints/best.pt (never pruned)."""
        return atomic_torch_save({"format": FORMAT, **state}, self.dir / "best.pt")

    def step_checkpoints(self) -> list[Path]:
        """Step checkpoints on disk, newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def commit_folder(self, tmp: Path, step: int) -> Path:
        """Move a fully written sharded checkpoint folder into place, then the pointer; prune old ones."""
        final = self.dir / f"step_{step:08d}"
        if final.exists():  # a rerun of the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        atomic_write(self.pointer, lambda file: file.write(os.path.relpath(final, self.work_dir).encode()))
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.step_checkpoints()[self.keep_last :]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

    def latest_valid(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest loadable checkpoint (pointer target first); corrupt ones are skipped with a warning."""
        candidates: list[Path] = []
        if self.pointer.is_file():
            target = self.work_dir / self.pointer.read_text().strip()
            candidates.append(target)
        candidates += [p for p in self.step_checkpoints() if p not in candidates]
        for path in candidates:
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                logger.warning("resume=auto: skipping %s", error)
        return None

    def resolve_resume(self, resume: str | None) -> tuple[Path, dict[str, Any]] | None:
        """Interpret `resume` (auto | path | None) and load the checkpoint it names."""
        if not resume:
            return None
        if resume == "auto":
            found = self.latest_valid()
            if found is None:
                logger.info("resume=auto: no checkpoint in %s, starting from scratch", self.work_dir)
            return found
        path = Path(resume)
        if path.is_dir() and not (path / SHARDED_META).exists():  # a work dir: its newest valid checkpoint
            found = CheckpointManager(path, self.keep_last).latest_valid()
            if found is None:
                raise CheckpointError(f"resume={resume}: no valid checkpoint in that folder")
            return found
        return path, load_checkpoint(path)
