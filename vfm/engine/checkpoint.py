"""Checkpoints: atomic writes, keep-last-K, a `last_checkpoint` pointer, safe loading, auto-resume."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "vfm-checkpoint-v1"
POINTER = "last_checkpoint"
SHARDED_META = "strategy.pt"  # inside a sharded (FSDP/DeepSpeed) checkpoint folder: which strategy wrote it, and the Trainer's state
_STEP_FILE = re.compile(r"^step_(\d+)(\.pt)?$")  # step_00000100.pt (full state) or step_00000100/ (sharded)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call `write(file)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through `atomic_write`: readers see the old file or the whole new one."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Load a user-supplied .safetensors or torch file without executing code (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and zip errors come in many types; all mean unreadable
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {detail}") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of tensors, got {type(state).__name__}")
    return dict(state)


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


def extract_weights(state: Mapping[str, Any], prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights inside a vfm checkpoint or a plain/wrapped state dict."""
    if state.get("format") == FORMAT:
        if prefer_ema and state.get("ema") is not None:
            return dict(state["ema"])
        return dict(state["model"])
    for key in ("model", "state_dict", "module"):
        if key in state and isinstance(state[key], Mapping):
            return dict(state[key])
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, path: str | Path, prefer_ema: bool = False) -> tuple[list[str], list[str]]:
    """Load weights only (for `load_from` and evaluation); logs and returns missing/unexpected keys."""
    weights = extract_weights(load_state_dict_file(path), prefer_ema)
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        key = mismatched[0]
        raise CheckpointError(
            f"{path}: shape mismatch for {key}: {tuple(weights[key].shape)} in file, {tuple(own[key].shape)} in model"
            f" ({len(mismatched)} mismatched keys)"
        )
    if weights and not any(k in own for k in weights):
        raise CheckpointError(f"{path}: none of its {len(weights)} keys match the model (e.g. {next(iter(weights))!r})")
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys:
        logger.warning("load_from %s: %d missing keys: %s", path, len(result.missing_keys), ", ".join(result.missing_keys[:8]))
    if result.unexpected_keys:
        logger.warning("load_from %s: %d unexpected keys: %s", path, len(result.unexpected_keys), ", ".join(result.unexpected_keys[:8]))
    return list(result.missing_keys), list(result.unexpected_keys)


def save_safetensors(weights: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Export weights as safetensors atomically (shared storage is cloned, as safetensors requires)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    data = save(tensors, metadata={"format": "pt", "producer": "vfm"})
    return atomic_write(path, lambda file: file.write(data))


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
