"""Checkpoints: atomic writes, keep-last-K, a `last_checkpoint` pointer, safe loading, auto-resume."""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
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
_TEMP_FILE = re.compile(r"^\..+\.tmp$")  # atomic_write's `.NAME.PID.tmp`, a sharded strategy's `.step_N.tmp/`
BEST_FILES = ("best.pt", "best.safetensors")


def new_run_id() -> str:
    """A fresh id for a training run; every checkpoint it writes carries it, so runs sharing a folder stay apart."""
    return uuid.uuid4().hex[:12]


def _step_of(path: Path) -> int:
    match = _STEP_FILE.match(path.name)
    return int(match.group(1)) if match else -1


def _writer_alive(name: str) -> bool:
    """Whether the process named in `.NAME.PID.tmp` is another live process (its write may be in flight)."""
    pid = name.rsplit(".", 2)[-2] if name.count(".") >= 3 else ""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    return True


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

    def __init__(self, work_dir: str | Path, keep_last: int = 3, run_id: str | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.dir = self.work_dir / "checkpoints"
        self.keep_last = keep_last
        self.pointer = self.work_dir / POINTER
        self.run_id = run_id  # stamped into each checkpoint; pruning only ever counts this run's files
        self._run_ids: dict[Path, tuple[tuple[int, int], str | None]] = {}  # path -> ((mtime_ns, size), run id)

    def step_path(self, step: int) -> Path:
        """Where the checkpoint of `step` lives."""
        return self.dir / f"step_{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write the checkpoint of `step`, move the pointer to it, and prune old ones."""
        path = atomic_torch_save({"format": FORMAT, "run_id": self.run_id, **state}, self.step_path(step))
        atomic_write(self.pointer, lambda file: file.write(os.path.relpath(path, self.work_dir).encode()))
        self._prune(path)
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
        self._prune(final)
        return final

    def run_id_of(self, path: Path) -> tuple[bool, str | None]:
        """(readable, run id) of a step checkpoint; only its small pickle is read (tensors are memory-mapped)."""
        try:
            stat = (path / SHARDED_META if path.is_dir() else path).stat()
        except OSError:
            return False, None
        signature = (stat.st_mtime_ns, stat.st_size)
        cached = self._run_ids.get(path)
        if cached is not None and cached[0] == signature:
            return True, cached[1]
        try:
            if path.is_dir():
                meta = torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
                state = meta.get("state") or {}
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                return False, None
        except Exception:  # unreadable (truncated, corrupt, foreign): it belongs to no run and never counts
            return False, None
        self._run_ids[path] = (signature, state.get("run_id"))
        return True, state.get("run_id")

    def _prune(self, written: Path) -> None:
        """Keep the newest `keep_last` checkpoints of this run, never the one just written; other runs' and
        unreadable files are not counted and not touched."""
        step = _step_of(written)
        own = [p for p in self.step_checkpoints() if p != written and self.run_id_of(p) == (True, self.run_id)]
        # This run's files beyond `step` were written before a rewind (a resume of an older checkpoint): pruned first.
        ranked = [p for p in own if _step_of(p) < step] + [p for p in own if _step_of(p) > step]
        for old in ranked[max(self.keep_last - 1, 0) :]:
            self._run_ids.pop(old, None)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

    def existing_checkpoints(self) -> list[Path]:
        """Step checkpoints (readable or not), best checkpoints and the pointer: what a run leaves in its work dir."""
        best = [self.dir / name for name in BEST_FILES if (self.dir / name).exists()]
        return self.step_checkpoints() + best + ([self.pointer] if self.pointer.exists() else [])

    def foreign_checkpoints(self, run_id: str | None) -> list[Path]:
        """Readable step checkpoints of a run other than `run_id`."""
        return [p for p in self.step_checkpoints() if (found := self.run_id_of(p))[0] and found[1] != run_id]

    def delete_all(self) -> int:
        """Delete every checkpoint and the pointer (checkpoint.overwrite=true); returns how many went."""
        found = self.existing_checkpoints()
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self._run_ids.clear()
        return len(found)

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove half-written temp files and folders of killed writes (`.*.tmp` in the work dir and checkpoints/)."""
        removed = []
        for folder in (self.work_dir, self.dir):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if not _TEMP_FILE.match(path.name) or _writer_alive(path.name):
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed

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
