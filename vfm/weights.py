"""Weight-file I/O below models and engine: atomic writes, safe loading (weights_only), safetensors export.

Models (pretrained weights, converters) and the engine (checkpoints, load_from, export) both use these;
neither imports the other for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "vfm-checkpoint-v1"  # the tag of a vfm training checkpoint (a dict with model, optimizer, step, ...)


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:  # disk full, read-only or vanished folder: the previous file is untouched
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"{path.parent}: cannot write {path.name}: {error.strerror or error} "
                              "(files written earlier are intact)") from error
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
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise CheckpointError(f"{path}: refused: loading it would call {refused.group(1)}, and vfm loads only "
                                  "tensors and plain containers from checkpoints") from error
        # torch's text around the cause suggests weights_only=False, which would run the file's code: left out.
        detail = next((line for line in map(str.strip, str(error).splitlines()) if line and "weights_only" not in line
                       and "Weights only load failed" not in line and not line.startswith("Check the documentation")),
                      "unreadable pickle data")
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {detail}") from error
    except Exception as error:  # unpickling and zip errors come in many types; all mean unreadable
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {_first_line(error)}") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of tensors, got {type(state).__name__}")
    return dict(state)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def describe_mismatch(own: Mapping[str, torch.Tensor], loaded: Mapping[str, Any], ignore: Iterable[str] = ()) -> str | None:
    """How `loaded` weights fail to fit a model whose state dict is `own` (first keys named), or None when they fit."""
    ignore = set(ignore)
    missing = [k for k in own if k not in loaded and k not in ignore]
    unexpected = [k for k in loaded if k not in own]
    shapes = [k for k in own if k in loaded and isinstance(loaded[k], torch.Tensor) and loaded[k].shape != own[k].shape]

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if shapes:
        key = shapes[0]
        parts.append(f"shape of {key}: {tuple(loaded[key].shape)} in file, {tuple(own[key].shape)} in model"
                     + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"missing {first(missing)}")
    if unexpected:
        parts.append(f"unexpected {first(unexpected)}")
    return "; ".join(parts) or None


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


def align_single_values(weights: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reshape one-value tensors to the model's shape (a 0-d `logit_scale` saved before it became a 1-element
    vector, for FSDP2); every other entry is returned as is."""
    return {k: v.reshape(own[k].shape) if k in own and v.numel() == 1 == own[k].numel() and v.shape != own[k].shape
            else v for k, v in weights.items()}


def load_weights(model: nn.Module, path: str | Path, prefer_ema: bool = False) -> tuple[list[str], list[str]]:
    """Load weights only (for `load_from` and evaluation); logs and returns missing/unexpected keys."""
    own = model.state_dict()
    weights = align_single_values(extract_weights(load_state_dict_file(path), prefer_ema), own)
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


def fingerprint(tensors: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> str:
    """A sha256 over names, dtypes, shapes and bytes of `tensors` (or of `keys` among them), in sorted order."""
    digest = hashlib.sha256()
    for key in sorted(tensors if keys is None else keys):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
